//! Wire types shared by `api`, `robot-agent` and the end-to-end tests.
//!
//! ```text
//!  app / robot  --(signaling: /rtc)-->  api  <--(agent link: /agent)--  robot-agent
//! ```
//!
//! The messages are fixed by the "Wire protocols" section of `DESIGN.md`; outside
//! tools are written against them, so they change only together with that document.

pub mod agent;
