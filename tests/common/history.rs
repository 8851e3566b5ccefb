//! Checking a store after a SIGKILL against the `--history` that `load` wrote: every
//! acknowledged operation survives, nothing is held twice, nothing unacknowledged appears
//! beyond what was in flight.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// What a client's acknowledged history says it must hold, and what may be in flight.
#[derive(Default, Debug)]
pub struct Belief {
    /// Frequencies whose allocation was acknowledged and whose deallocation was not.
    pub held: BTreeSet<u64>,
    /// An allocation invoked with no reply seen: it may have happened.
    pub alloc_in_flight: bool,
    /// A deallocation invoked with no reply seen: the frequency may be free or still held.
    pub dealloc_in_flight: Option<u64>,
}

/// Each client's [`Belief`] after the JSON-lines `history` of a `load --history` run.
pub fn beliefs(history: &str) -> BTreeMap<String, Belief> {
    let mut out: BTreeMap<String, Belief> = BTreeMap::new();
    for line in history.lines() {
        // A SIGKILL may cut the very last line short; only whole lines count.
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let b = out
            .entry(v["client"].as_str().unwrap().to_string())
            .or_default();
        let freq = v["freq"].as_u64();
        match (v["op"].as_str().unwrap(), v["phase"].as_str().unwrap()) {
            ("allocate", "invoke") => b.alloc_in_flight = true,
            ("allocate", "ok") => {
                b.alloc_in_flight = false;
                b.held.insert(freq.unwrap());
            }
            ("allocate", _) => b.alloc_in_flight = false,
            ("deallocate", "invoke") => b.dealloc_in_flight = freq,
            ("deallocate", "ok") => {
                b.dealloc_in_flight = None;
                b.held.remove(&freq.unwrap());
            }
            ("deallocate", _) => b.dealloc_in_flight = None,
            other => panic!("unexpected history line {other:?}"),
        }
    }
    out
}

/// Asserts that `status` (a `status --json --list-free` of a pool of `pool_size` frequencies)
/// keeps what `history` acknowledged: no frequency held twice, free + allocated = pool, every
/// acknowledged allocation still held by its client (unless its deallocation was in flight),
/// at most the one in-flight allocation beyond that, and no allocation to a client that never
/// ran. `context` ("round 2") starts each failure message.
pub fn assert_status_keeps_history(status: &Value, pool_size: usize, history: &str, context: &str) {
    let mut actual: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for a in status["allocations"].as_array().unwrap() {
        let f = a["freq"].as_u64().unwrap();
        assert!(seen.insert(f), "{context}: frequency {f} held twice");
        actual
            .entry(a["owner"].as_str().unwrap().to_string())
            .or_default()
            .insert(f);
    }
    assert_eq!(
        seen.len() + status["free"].as_array().unwrap().len(),
        pool_size,
        "free + allocated = pool"
    );
    for (client, b) in &beliefs(history) {
        let has = actual.remove(client).unwrap_or_default();
        for f in &b.held {
            assert!(
                has.contains(f) || b.dealloc_in_flight == Some(*f),
                "{context}: acknowledged allocation of {f} to {client} was lost (holds {has:?})"
            );
        }
        let extra: Vec<_> = has.difference(&b.held).collect();
        assert!(
            extra.is_empty() || (extra.len() == 1 && b.alloc_in_flight),
            "{context}: {client} holds {extra:?} it was never acknowledged (belief {b:?})"
        );
    }
    assert!(
        actual.is_empty(),
        "allocations to clients that never ran: {actual:?}"
    );
}
