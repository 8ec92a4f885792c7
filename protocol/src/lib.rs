//! Wire types shared by `api`, `robot-agent` and the end-to-end tests.
//!
//! ```text
//!  app / robot  --(signaling: /rtc)-->  api  <--(agent link: /agent)--  robot-agent
//! ```
//!
//! The messages are fixed by the "Wire protocols" section of `DESIGN.md`; outside
//! tools are written against them, so they change only together with that document.
//!
//! - [`signaling`]: the `/rtc` channel messages (`join`, `joined`, `peer_joined`,
//!   `peer_left`, `signal`, `leave`, `error`, `kicked`), with parsers that never panic.
//! - [`agent`]: the `/agent` link between the API and robot agents.
//! - [`backoff`]: the one retry backoff both sides use.
//! - [`secret`]: [`Secret`], the keys both binaries are configured with.

pub mod agent;
pub mod backoff;
pub mod secret;
pub mod signaling;

pub use secret::Secret;
