//! A range of frequencies: plain data that the pool layout and the errors both name.
//!
//! Checked construction ([`FreqRange::new`]) and parsing (`FromStr`) live in `layout.rs`, beside
//! the pool parser and its error type, so that this file imports nothing of the module and
//! `error.rs` can name ranges without an import cycle.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An inclusive range of frequencies `first..=last`, written `first-last` (or a single `f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FreqRange {
    /// The first frequency of the range.
    pub first: u64,
    /// The last frequency of the range (inclusive).
    pub last: u64,
}

impl FreqRange {
    /// How many frequencies the range holds, exactly: the whole `u64` range holds 2^64, one
    /// more than a `u64` can count.
    pub fn count(&self) -> u128 {
        u128::from(self.last - self.first) + 1
    }

    /// How many frequencies the range holds, saturated at `u64::MAX` (only the whole `u64`
    /// range, 2^64 frequencies, saturates); [`FreqRange::count`] is exact.
    pub fn len(&self) -> u64 {
        // Cannot overflow unless the range is 0..=u64::MAX, which we saturate.
        (self.last - self.first).saturating_add(1)
    }

    /// Never true: a `FreqRange` holds at least one frequency.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `f` lies in the range.
    pub fn contains(&self, f: u64) -> bool {
        self.first <= f && f <= self.last
    }

    pub(super) fn overlaps(&self, other: &FreqRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for FreqRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}
