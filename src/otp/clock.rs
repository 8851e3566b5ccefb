//! The supervisor's restart clock: the monotonic time its restart-intensity window is measured
//! in. (Not to be confused with the allocator's lease clock, `freq::LeaseClock`, which is wall
//! time in milliseconds.)

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A source of monotonic time for a supervisor's restart-intensity window ("more than `N`
/// restarts in `T`"), so tests can move time without sleeping.
pub trait RestartClock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock ([`Instant::now`]); the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRestartClock;

impl RestartClock for SystemRestartClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A restart clock that moves only when told to ([`ManualRestartClock::advance`]).
#[derive(Debug)]
pub struct ManualRestartClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualRestartClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        ManualRestartClock {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.offset.lock() += d;
    }
}

impl Default for ManualRestartClock {
    fn default() -> Self {
        Self::new()
    }
}

impl RestartClock for ManualRestartClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock()
    }
}
