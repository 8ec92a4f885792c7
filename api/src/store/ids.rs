//! The row ids the store hands out and takes back: one type per table, so that a task id
//! cannot be passed where a robot session id is meant.
//!
//! Each is the row's `BIGINT` key and nothing more: it serializes as the same JSON number
//! (`#[serde(transparent)]`), prints as the number, and is bound in SQL through
//! [`get`](CallId::get). Ids that arrive from outside (an agent's `session_id`, a path's
//! `{id}`) are wrapped with `new` where they enter; the store answers `NotFound` (or
//! nothing) for an id that names no row, as it did for a bare integer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares one id type: the newtype, its constructor, its value, `Display`, and its
/// binding as a SQL value.
macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// The id of row `id`.
            pub const fn new(id: i64) -> Self {
                Self(id)
            }

            /// The row id, for SQL binds and the wire.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<$name> for super::db::Value<'_> {
            fn from(v: $name) -> Self {
                v.get().into()
            }
        }
    };
}

row_id!(
    /// A call (`calls.id`).
    CallId
);
row_id!(
    /// A robot session (`robot_sessions.id`), the agent protocol's `session_id`.
    SessionId
);
row_id!(
    /// A scheduled call (`calltasks.id`), `calltask`'s `id`.
    TaskId
);
row_id!(
    /// A voicemail recording (`recordings.id`).
    RecordingId
);
row_id!(
    /// A job of the push outbox (`push_jobs.id`).
    PushJobId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_numbers_on_the_wire_and_in_text() {
        let id = SessionId::new(42);
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
        assert_eq!(serde_json::from_str::<SessionId>("42").unwrap(), id);
        assert_eq!(id.to_string(), "42");
        assert_eq!(id.get(), 42);
        assert!(TaskId::new(1) < TaskId::new(2));
    }
}
