//! Restart backoff: how long a supervisor waits before restarting a child that keeps failing.
//!
//! OTP's supervisor has no backoff
//! (<https://www.erlang.org/doc/apps/stdlib/supervisor.html>, "Restart intensity and period"):
//! it restarts a child at once and, after more than `MaxR` restarts in `MaxT` seconds, gives up
//! and leaves the decision to its own supervisor, up to the application. That fits faults that a
//! fresh process cures. A child that fails because of its surroundings (a full disk, a peer
//! gone) fails again at once: OTP burns its intensity in milliseconds and the whole tree stops,
//! though the disk may have room again a minute later. Erlang programs handle that inside the
//! child (a `{backoff, ...}` state, a `timer:sleep` in `init`); we put it in the supervisor, so
//! that every child gets it and the supervisor stays responsive while it waits.

use std::time::Duration;

/// Exponential restart backoff for a [`SupervisorSpec`](crate::otp::SupervisorSpec) (see
/// [`SupervisorSpec::backoff`](crate::otp::SupervisorSpec::backoff)).
///
/// The `n`-th consecutive restart of a child waits `min(initial * 2^(n-1), max)`. The count is
/// per child, and starts again from 1 once the child has run for
/// [`healthy_after`](RestartBackoff::healthy_after) (default: `max`) without failing. A restart
/// whose start fails counts as the next consecutive restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBackoff {
    initial: Duration,
    max: Duration,
    healthy_after: Duration,
}

impl RestartBackoff {
    /// Doubles from `initial` up to `max` (a `max` below `initial` is taken as `initial`). A
    /// child that ran for `max` without failing starts again from `initial`.
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < initial.as_nanos() {
            initial
        } else {
            max
        };
        RestartBackoff {
            initial,
            max,
            healthy_after: max,
        }
    }

    /// A child that ran this long without failing has its count reset: its next restart waits
    /// `initial` again.
    pub const fn healthy_after(mut self, healthy_after: Duration) -> Self {
        self.healthy_after = healthy_after;
        self
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// How long a child must run without failing for its count to reset.
    pub fn healthy_run(&self) -> Duration {
        self.healthy_after
    }

    /// The wait before the `attempt`-th consecutive restart (1 for the first; 0 is taken as 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The most restarts one child can make within any window of `period` under this backoff,
    /// however it fails: what a supervisor's intensity must allow per child so that a child
    /// failing forever is retried forever (at the capped rate) instead of ending the supervisor.
    /// `u32::MAX` when `initial` is zero (no bound).
    ///
    /// Within one run of consecutive restarts the gaps between exits are at least the delays,
    /// which only grow, so the densest window starts at the run's first exit and holds
    /// `1 + max{k : delay(1) + ... + delay(k) <= period}` of them. A new run starts only after
    /// the child ran [`healthy_run`](RestartBackoff::healthy_run) without failing, so a window
    /// meets at most `ceil(period / healthy_run)` runs (1 when `healthy_run >= period`).
    pub fn max_restarts_within(&self, period: Duration) -> u32 {
        if self.initial.is_zero() {
            return u32::MAX;
        }
        let mut per_run: u64 = 1;
        let mut spent = Duration::ZERO;
        let mut attempt = 1u32;
        // The ramp: at most 32 doublings before the cap (or saturation).
        while self.delay(attempt) < self.max {
            match spent.checked_add(self.delay(attempt)) {
                Some(s) if s <= period => {
                    spent = s;
                    per_run += 1;
                    attempt += 1;
                }
                _ => return self.times_runs(per_run, period),
            }
        }
        // At the cap: one more restart per `max`.
        let left = period.saturating_sub(spent).as_nanos();
        per_run += u64::try_from(left / self.max.as_nanos()).unwrap_or(u64::MAX);
        self.times_runs(per_run, period)
    }

    fn times_runs(&self, per_run: u64, period: Duration) -> u32 {
        let runs = if self.healthy_after >= period {
            1
        } else if self.healthy_after.is_zero() {
            return u32::MAX;
        } else {
            u64::try_from(period.as_nanos().div_ceil(self.healthy_after.as_nanos()))
                .unwrap_or(u64::MAX)
        };
        u32::try_from(per_run.saturating_mul(runs)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_and_cap() {
        let b = RestartBackoff::exponential(10 * MS, 1000 * MS);
        let d: Vec<u128> = (1..=9).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.delay(0), 10 * MS);
        assert_eq!(b.delay(u32::MAX), 1000 * MS);
        assert_eq!(b.healthy_run(), 1000 * MS);
    }

    #[test]
    fn a_max_below_initial_is_initial() {
        let b = RestartBackoff::exponential(50 * MS, MS);
        assert_eq!(b.max(), 50 * MS);
        assert_eq!(b.delay(5), 50 * MS);
    }

    #[test]
    fn max_restarts_within_a_period() {
        let b = RestartBackoff::exponential(10 * MS, 1000 * MS).healthy_after(10_000 * MS);
        // Exits at 0, 10, 30, 70, 150, 310, 630, 1270 ms, then every second up to 9270 ms.
        assert_eq!(b.max_restarts_within(10_000 * MS), 8 + 8);
        assert_eq!(b.max_restarts_within(Duration::ZERO), 1);
        assert_eq!(b.max_restarts_within(30 * MS), 3);
        // Resets every second: up to ten runs meet a 10 s window.
        let b = RestartBackoff::exponential(10 * MS, 1000 * MS);
        assert_eq!(b.max_restarts_within(10_000 * MS), 16 * 10);
        assert_eq!(
            RestartBackoff::exponential(Duration::ZERO, MS).max_restarts_within(MS),
            u32::MAX
        );
    }
}
