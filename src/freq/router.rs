//! Router strategies: pure functions from the shards' loads to a shard.
//!
//! The router is not a process. Every caller decides in its own thread from counts the shards
//! publish (atomics any thread may read), so no single thread sits on every request — the
//! bottleneck the course warns of. A strategy only *proposes* a shard; the allocator falls through
//! to the others when the proposed one turns out to be empty (see [`fallback_order`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::FreqError;

/// How the front end picks a shard for an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Routing {
    /// Alternate between shards: the course's first option. An allocator's rotation starts at
    /// the number of allocations held when it opens, so successive one-shot processes alternate
    /// too.
    RoundRobin,
    /// The shard with the most free frequencies: the course's "larger number". Ties go to the
    /// shard after the one picked last (round robin among the tied), so two equal shards
    /// alternate rather than one taking every tie.
    MostFree,
    /// Two shards drawn at random; the one with more free frequencies wins (ties: the first
    /// drawn). Near `MostFree`'s balance at a fraction of the reads on many shards.
    PowerOfTwoChoices,
    /// A shard chosen by hashing the client's name: a client keeps to one shard (affinity) while
    /// it has free frequencies.
    Hash,
}

impl Routing {
    /// Every strategy, for benchmarks and tests.
    pub const ALL: [Routing; 4] = [
        Routing::RoundRobin,
        Routing::MostFree,
        Routing::PowerOfTwoChoices,
        Routing::Hash,
    ];

    /// The CLI name: `round-robin`, `most-free`, `p2c`, `hash`.
    pub fn name(self) -> &'static str {
        match self {
            Routing::RoundRobin => "round-robin",
            Routing::MostFree => "most-free",
            Routing::PowerOfTwoChoices => "p2c",
            Routing::Hash => "hash",
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Routing {
    type Err = FreqError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round-robin" | "rr" | "alternate" => Ok(Routing::RoundRobin),
            "most-free" => Ok(Routing::MostFree),
            "p2c" | "power-of-two" | "power-of-two-choices" => Ok(Routing::PowerOfTwoChoices),
            "hash" => Ok(Routing::Hash),
            other => Err(FreqError::BadRouting(other.to_string())),
        }
    }
}

/// What a strategy may look at when it picks: everything is a plain value, so tests can drive
/// every decision.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    /// Free frequencies per shard, as last published.
    pub free: &'a [u64],
    /// A counter the caller increments once per allocation (shared by all callers).
    pub ticket: u64,
    /// A random number (for `PowerOfTwoChoices`).
    pub random: u64,
    /// The client's name (for `Hash`).
    pub client: &'a str,
}

/// The shard `strategy` proposes, or `None` when there are no shards.
pub fn choose(strategy: Routing, pick: Pick<'_>) -> Option<usize> {
    let n = pick.free.len();
    if n == 0 {
        return None;
    }
    let start = (pick.ticket % n as u64) as usize;
    Some(match strategy {
        Routing::RoundRobin => start,
        Routing::MostFree => {
            // Scan from `start` so ties rotate; strict `>` keeps the first maximum seen.
            let mut best = start;
            for k in 1..n {
                let i = (start + k) % n;
                if pick.free[i] > pick.free[best] {
                    best = i;
                }
            }
            best
        }
        Routing::PowerOfTwoChoices => {
            let a = (pick.random % n as u64) as usize;
            let b = ((pick.random >> 32) % n as u64) as usize;
            if pick.free[b] > pick.free[a] {
                b
            } else {
                a
            }
        }
        Routing::Hash => (hash_name(pick.client) % n as u64) as usize,
    })
}

/// The order in which to try shards when the proposed one is empty: the proposed shard, then
/// the others by most free first (ties by index). An allocation fails with `NoFrequency` only
/// after every shard in this order has said it has none.
pub fn fallback_order(proposed: usize, free: &[u64]) -> Vec<usize> {
    let mut rest: Vec<usize> = (0..free.len()).filter(|&i| i != proposed).collect();
    rest.sort_by_key(|&i| (std::cmp::Reverse(free[i]), i));
    let mut order = Vec::with_capacity(free.len());
    if proposed < free.len() {
        order.push(proposed);
    }
    order.extend(rest);
    order
}

/// A stable hash of a client name (FxHash: fast, and the same in every process and run, which
/// the client affinity needs).
pub fn hash_name(name: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    name.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick<'a>(free: &'a [u64], ticket: u64) -> Pick<'a> {
        Pick {
            free,
            ticket,
            random: 0,
            client: "c",
        }
    }

    #[test]
    fn round_robin_alternates() {
        let free = [6, 6];
        let picks: Vec<_> = (0..4)
            .map(|t| choose(Routing::RoundRobin, pick(&free, t)).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn most_free_takes_the_larger_and_rotates_ties() {
        assert_eq!(choose(Routing::MostFree, pick(&[2, 5], 0)), Some(1));
        assert_eq!(choose(Routing::MostFree, pick(&[5, 2], 1)), Some(0));
        assert_eq!(choose(Routing::MostFree, pick(&[4, 4], 0)), Some(0));
        assert_eq!(choose(Routing::MostFree, pick(&[4, 4], 1)), Some(1));
        assert_eq!(choose(Routing::MostFree, pick(&[4, 4, 1], 2)), Some(0));
    }

    #[test]
    fn p2c_prefers_the_freer_of_two() {
        let free = [1, 9, 3];
        let p = Pick {
            free: &free,
            ticket: 0,
            random: 1u64 << 32,
            client: "c",
        };
        assert_eq!(choose(Routing::PowerOfTwoChoices, p), Some(1));
        let p = Pick { random: 2, ..p };
        assert_eq!(choose(Routing::PowerOfTwoChoices, p), Some(2));
    }

    #[test]
    fn hash_is_sticky_per_client() {
        let free = [3, 3, 3, 3];
        let a = |t| {
            choose(
                Routing::Hash,
                Pick {
                    client: "radio-7",
                    ..pick(&free, t)
                },
            )
        };
        assert_eq!(a(0), a(17));
        assert_eq!(hash_name("radio-7"), hash_name("radio-7"));
    }

    #[test]
    fn no_shards_no_choice_and_fallback_covers_all() {
        assert_eq!(choose(Routing::MostFree, pick(&[], 0)), None);
        assert_eq!(fallback_order(1, &[0, 0, 7, 3]), vec![1, 2, 3, 0]);
        assert_eq!(fallback_order(0, &[5]), vec![0]);
    }

    #[test]
    fn strategy_names_parse() {
        for s in Routing::ALL {
            assert_eq!(s.name().parse::<Routing>().unwrap(), s);
        }
        assert!("fastest".parse::<Routing>().is_err());
    }
}
