//! The time source. Handlers and the sweeper read time here, never from the system
//! clock directly, so tests can set it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock time in unix milliseconds: the system's, or a manual one for tests.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock that moves only when told to.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::System
    }

    /// A manual clock starting at `start_ms`.
    pub fn manual(start_ms: i64) -> Self {
        Self::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    /// Now, unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Self::System => chrono::Utc::now().timestamp_millis(),
            Self::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Now, unix seconds.
    pub fn now_secs(&self) -> u64 {
        u64::try_from(self.now_ms() / 1000).unwrap_or(0)
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance_ms(&self, ms: i64) {
        if let Self::Manual(t) = self {
            t.fetch_add(ms, Ordering::SeqCst);
        }
    }
}
