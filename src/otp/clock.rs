//! The supervisor's restart clock: the monotonic time its restart-intensity window and its
//! restart backoff are measured in. (Not to be confused with the allocator's lease clock,
//! `freq::LeaseClock`, which is wall time in milliseconds.)

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Wakes a waiter when a clock moves; returns false once the waiter is gone (it is then
/// forgotten).
pub type ClockWaker = Box<dyn Fn() -> bool + Send + Sync>;

/// A source of monotonic time for a supervisor's restart-intensity window ("more than `N`
/// restarts in `T`") and its restart backoff, so tests can move time without sleeping.
///
/// A supervisor waiting for a delayed restart waits on its mailbox (it stays responsive), for
/// as long as [`RestartClock::wait_hint`] says, and also wakes whenever the clock calls the
/// waker it registered with [`RestartClock::on_advance`].
pub trait RestartClock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;

    /// How long, in real time, a waiter for `deadline` (an instant of this clock) may block
    /// before it looks at the clock again; `None`: until its waker is called. The default
    /// suits a clock that moves with real time: the time left until `deadline`.
    fn wait_hint(&self, deadline: Instant) -> Option<Duration> {
        Some(deadline.saturating_duration_since(self.now()))
    }

    /// Registers `wake`, to be called every time the clock moves other than with real time
    /// (a [`ManualRestartClock::advance`]). The default never calls it.
    fn on_advance(&self, wake: ClockWaker) {
        drop(wake);
    }
}

/// The real monotonic clock ([`Instant::now`]); the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRestartClock;

impl RestartClock for SystemRestartClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A restart clock that moves only when told to ([`ManualRestartClock::advance`]). Waiters
/// (a supervisor delaying a restart) block until an `advance` wakes them, never on real time.
pub struct ManualRestartClock {
    base: Instant,
    offset: Mutex<Duration>,
    wakers: Mutex<Vec<ClockWaker>>,
}

impl std::fmt::Debug for ManualRestartClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualRestartClock")
            .field("offset", &*self.offset.lock())
            .field("waiters", &self.wakers.lock().len())
            .finish()
    }
}

impl ManualRestartClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        ManualRestartClock {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// Moves the clock forward by `d`, then wakes every waiter (each looks at the clock again).
    pub fn advance(&self, d: Duration) {
        *self.offset.lock() += d;
        self.wakers.lock().retain(|wake| wake());
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

    fn wait_hint(&self, _deadline: Instant) -> Option<Duration> {
        None
    }

    fn on_advance(&self, wake: ClockWaker) {
        self.wakers.lock().push(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn advance_moves_time_and_wakes_waiters_until_they_are_gone() {
        let clock = ManualRestartClock::new();
        let t0 = clock.now();
        assert_eq!(clock.wait_hint(t0 + Duration::from_secs(1)), None);
        let woken = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        clock.on_advance(Box::new(move || w.fetch_add(1, Ordering::SeqCst) == 0));
        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.now() - t0, Duration::from_millis(5));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        // The waker said it is gone the second time: it is not called a third.
        clock.advance(Duration::from_millis(5));
        clock.advance(Duration::from_millis(5));
        assert_eq!(woken.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_system_clock_hints_the_time_left() {
        let c = SystemRestartClock;
        let past = c.now();
        assert_eq!(c.wait_hint(past), Some(Duration::ZERO));
        let hint = c.wait_hint(c.now() + Duration::from_secs(60)).unwrap();
        assert!(hint > Duration::from_secs(59) && hint <= Duration::from_secs(60));
    }
}
