//! Timers that deliver a message to a server's `handle_info` (Erlang's `erlang:send_after/3`,
//! <https://www.erlang.org/doc/apps/erts/erlang.html#send_after/3>).
//!
//! Each server keeps its own timer heap and waits on its mailbox only until the next deadline, so
//! timers cost no extra thread. Timers die with the server instance that owns them, as in Erlang.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

const PENDING: u8 = 0;
const FIRED: u8 = 1;
const CANCELLED: u8 = 2;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A handle on one pending timer, returned by `send_after`. Cloneable and `Send`.
#[derive(Debug, Clone)]
pub struct TimerRef {
    state: Arc<AtomicU8>,
}

impl TimerRef {
    /// Cancels the timer (Erlang's `erlang:cancel_timer/1`). Returns true if the timer was still
    /// pending, so its message will never be delivered; false if it had already fired (or been
    /// cancelled).
    pub fn cancel(&self) -> bool {
        self.state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// True while the timer has neither fired nor been cancelled.
    pub fn is_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) == PENDING
    }
}

/// One timer in a server's heap.
pub(crate) struct TimerEntry<I> {
    deadline: Instant,
    seq: u64,
    state: Arc<AtomicU8>,
    info: I,
}

impl<I> TimerEntry<I> {
    /// A new pending timer and its handle.
    pub(crate) fn new(deadline: Instant, info: I) -> (Self, TimerRef) {
        let state = Arc::new(AtomicU8::new(PENDING));
        let entry = TimerEntry {
            deadline,
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
            state: state.clone(),
            info,
        };
        (entry, TimerRef { state })
    }
}

impl<I> PartialEq for TimerEntry<I> {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline && self.seq == other.seq
    }
}
impl<I> Eq for TimerEntry<I> {}
impl<I> PartialOrd for TimerEntry<I> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl<I> Ord for TimerEntry<I> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// The timers of one server instance.
pub(crate) struct TimerQueue<I> {
    heap: BinaryHeap<TimerEntry<I>>,
}

impl<I> TimerQueue<I> {
    pub(crate) fn new() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
        }
    }

    pub(crate) fn push(&mut self, e: TimerEntry<I>) {
        self.heap.push(e);
    }

    /// The earliest deadline, if any timer is queued (cancelled ones included).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.deadline)
    }

    /// Pops the next due, still-pending timer; cancelled ones are discarded on the way.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<I> {
        while let Some(top) = self.heap.peek() {
            if top.deadline > now {
                return None;
            }
            let e = self.heap.pop()?;
            if e.state
                .compare_exchange(PENDING, FIRED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(e.info);
            }
        }
        None
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_skips_cancelled() {
        let now = Instant::now();
        let mut q = TimerQueue::new();
        let (a, _ra) = TimerEntry::new(now + Duration::from_millis(2), "a");
        let (b, rb) = TimerEntry::new(now + Duration::from_millis(1), "b");
        let (c, _rc) = TimerEntry::new(now, "c");
        q.push(a);
        q.push(b);
        q.push(c);
        assert!(rb.cancel());
        assert!(!rb.cancel());
        assert_eq!(q.pop_due(now), Some("c"));
        assert_eq!(q.pop_due(now), None);
        let later = now + Duration::from_millis(5);
        assert_eq!(q.pop_due(later), Some("a"));
        assert!(q.is_empty());
    }

    #[test]
    fn fired_timer_cannot_be_cancelled() {
        let now = Instant::now();
        let mut q = TimerQueue::new();
        let (a, ra) = TimerEntry::new(now, 1);
        q.push(a);
        assert!(ra.is_pending());
        assert_eq!(q.pop_due(now), Some(1));
        assert!(!ra.is_pending());
        assert!(!ra.cancel());
    }
}
