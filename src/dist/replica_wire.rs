//! The replication protocol between the two nodes of a replicated shard, as Erlang terms, so
//! that a shell on a BEAM node can look at what a backup holds:
//! `gen_server:call({freq_shard, 'b@localhost'}, {link, 0, Epoch, dump, Fingerprint})`.
//!
//! | request (to `freq_shard`)                  | reply                                      |
//! |--------------------------------------------|--------------------------------------------|
//! | `{link, Shard, Epoch, applied, Fp}`        | `{ok, Seq}`                                |
//! | `{link, Shard, Epoch, {append, [Entry]}, Fp}` | `{ok, Seq}`                             |
//! | `{link, Shard, Epoch, {install, Seq, [Alloc]}, Fp}` | `{ok, Seq}`                       |
//! | `{link, Shard, Epoch, dump, Fp}`           | `{ok, {dump, Replica, Seq, [Alloc], [{First, Last}], [Text]}}` |
//! | `{link_nudge, Shard, Fp}` (a message)      |                                            |
//!
//! `Entry` is `{Seq, {allocated, F, Owner, SinceMs, LeaseUntilMs | undefined}}` or
//! `{Seq, {released, F}}`; `Alloc` is `{F, Owner, SinceMs, LeaseUntilMs | undefined}`. A
//! refusal is `{error, Kind, Text}`: `fenced` (an older epoch than the replica knows, or a
//! backup waiting for a full transfer), `not_backup`, `gap`, `failed`.
//!
//! Architecture Invariant: decoding never panics; a term of an unexpected shape is `None`.

use eetf::Term;

use super::term::{
    as_atom, as_list, as_text, as_tuple, as_u64, atom, binary, list, short, tuple, uint,
};
use crate::freq::{Allocation, Change, FreqRange, LinkCall, LinkReply, LogEntry, ReplicaDump};
use crate::freq::{ShardError, Snapshot};

fn text(s: &str) -> Term {
    binary(s.as_bytes())
}

fn opt(v: Option<u64>) -> Term {
    v.map_or_else(|| atom("undefined"), uint)
}

fn parse_opt(t: &Term) -> Option<Option<u64>> {
    match as_atom(t) {
        Some("undefined") => Some(None),
        _ => Some(Some(as_u64(t)?)),
    }
}

fn alloc_term(f: u64, a: &Allocation) -> Term {
    tuple(vec![
        uint(f),
        text(&a.owner),
        uint(a.since_ms),
        opt(a.lease_until_ms),
    ])
}

fn parse_alloc(t: &Term) -> Option<(u64, Allocation)> {
    match as_tuple(t)? {
        [f, owner, since, lease] => Some((
            as_u64(f)?,
            Allocation {
                owner: as_text(owner)?,
                since_ms: as_u64(since)?,
                lease_until_ms: parse_opt(lease)?,
            },
        )),
        _ => None,
    }
}

fn allocs_term(v: &[(u64, Allocation)]) -> Term {
    list(v.iter().map(|(f, a)| alloc_term(*f, a)).collect())
}

fn parse_allocs(t: &Term) -> Option<Vec<(u64, Allocation)>> {
    as_list(t)?.iter().map(parse_alloc).collect()
}

fn entry_term(e: &LogEntry) -> Term {
    let change = match &e.change {
        Change::Allocated(f, a) => tuple(vec![
            atom("allocated"),
            uint(*f),
            text(&a.owner),
            uint(a.since_ms),
            opt(a.lease_until_ms),
        ]),
        Change::Released(f) => tuple(vec![atom("released"), uint(*f)]),
    };
    tuple(vec![uint(e.seq), change])
}

fn parse_entry(t: &Term) -> Option<LogEntry> {
    let [seq, change] = as_tuple(t)? else {
        return None;
    };
    let c = as_tuple(change)?;
    let change = match (as_atom(c.first()?)?, c) {
        ("allocated", [_, f, owner, since, lease]) => Change::Allocated(
            as_u64(f)?,
            Allocation {
                owner: as_text(owner)?,
                since_ms: as_u64(since)?,
                lease_until_ms: parse_opt(lease)?,
            },
        ),
        ("released", [_, f]) => Change::Released(as_u64(f)?),
        _ => return None,
    };
    Some(LogEntry {
        seq: as_u64(seq)?,
        change,
    })
}

/// `{append, [Entry]}`: the `Call` of a shipment, built from the batch in place.
pub(crate) fn append_term(entries: &[LogEntry]) -> Term {
    tuple(vec![
        atom("append"),
        list(entries.iter().map(entry_term).collect()),
    ])
}

/// A replication request as the `Call` of `{link, Shard, Epoch, Call, Fp}`.
pub(crate) fn link_call_term(call: &LinkCall) -> Term {
    match call {
        LinkCall::Applied => atom("applied"),
        LinkCall::Append(entries) => append_term(entries),
        LinkCall::Install(s) => tuple(vec![
            atom("install"),
            uint(s.seq),
            allocs_term(&s.allocations),
        ]),
        LinkCall::Dump => atom("dump"),
    }
}

/// A replication request from its term.
pub(crate) fn parse_link_call(t: &Term) -> Option<LinkCall> {
    match as_atom(t) {
        Some("applied") => return Some(LinkCall::Applied),
        Some("dump") => return Some(LinkCall::Dump),
        Some(_) => return None,
        None => {}
    }
    let el = as_tuple(t)?;
    match (as_atom(el.first()?)?, el) {
        ("append", [_, entries]) => Some(LinkCall::Append(
            as_list(entries)?
                .iter()
                .map(parse_entry)
                .collect::<Option<_>>()?,
        )),
        ("install", [_, seq, allocs]) => Some(LinkCall::Install(Snapshot {
            seq: as_u64(seq)?,
            allocations: parse_allocs(allocs)?,
        })),
        _ => None,
    }
}

/// A replication answer (or refusal) as a term.
pub(crate) fn link_reply_term(r: &Result<LinkReply, ShardError>) -> Term {
    match r {
        Ok(LinkReply::Applied(seq)) => tuple(vec![atom("ok"), uint(*seq)]),
        Ok(LinkReply::Dumped(d)) => tuple(vec![
            atom("ok"),
            tuple(vec![
                atom("dump"),
                uint(d.replica as u64),
                uint(d.seq),
                allocs_term(&d.allocations),
                list(
                    d.free
                        .iter()
                        .map(|r| tuple(vec![uint(r.first), uint(r.last)]))
                        .collect(),
                ),
                list(d.violations.iter().map(|v| text(v)).collect()),
            ]),
        ]),
        Err(e) => {
            let kind = match e {
                ShardError::Fenced(_) => "fenced",
                ShardError::NotBackup => "not_backup",
                ShardError::ReplicaGap { .. } => "gap",
                _ => "failed",
            };
            tuple(vec![atom("error"), atom(kind), text(&e.to_string())])
        }
    }
}

/// A replication answer from its term: `Err` carries the refusal's text (or says the answer
/// had another shape).
pub(crate) fn parse_link_reply(t: &Term, dump: bool) -> Result<LinkReply, String> {
    let bad = || format!("unexpected answer {}", short(t));
    let el = as_tuple(t).ok_or_else(bad)?;
    match (el.first().and_then(as_atom), el) {
        (Some("ok"), [_, seq]) if !dump => as_u64(seq).map(LinkReply::Applied).ok_or_else(bad),
        (Some("ok"), [_, d]) if dump => parse_dump(d)
            .map(|d| LinkReply::Dumped(Box::new(d)))
            .ok_or_else(bad),
        (Some("error"), [_, kind, why]) => Err(format!(
            "{} ({})",
            as_text(why).unwrap_or_default(),
            as_atom(kind).unwrap_or("?")
        )),
        (Some("error"), [_, kind, ..]) => Err(format!("refused: {}", as_atom(kind).unwrap_or("?"))),
        _ => Err(bad()),
    }
}

fn parse_dump(t: &Term) -> Option<ReplicaDump> {
    let [tag, replica, seq, allocs, free, violations] = as_tuple(t)? else {
        return None;
    };
    if as_atom(tag)? != "dump" {
        return None;
    }
    Some(ReplicaDump {
        replica: usize::try_from(as_u64(replica)?).ok()?,
        seq: as_u64(seq)?,
        allocations: parse_allocs(allocs)?,
        free: as_list(free)?
            .iter()
            .map(|r| match as_tuple(r)? {
                [a, b] => FreqRange::new(as_u64(a)?, as_u64(b)?).ok(),
                _ => None,
            })
            .collect::<Option<_>>()?,
        violations: as_list(violations)?
            .iter()
            .map(as_text)
            .collect::<Option<_>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn allocation(owner: &str, lease: Option<u64>) -> Allocation {
        Allocation {
            owner: owner.into(),
            since_ms: 17,
            lease_until_ms: lease,
        }
    }

    #[test]
    fn every_request_round_trips() {
        let calls = vec![
            LinkCall::Applied,
            LinkCall::Dump,
            LinkCall::Append(vec![
                LogEntry {
                    seq: 1,
                    change: Change::Allocated(5, allocation("pid:a@h:1.0.3", None)),
                },
                LogEntry {
                    seq: 2,
                    change: Change::Released(u64::MAX - 1),
                },
            ]),
            LinkCall::Install(Snapshot {
                seq: 9,
                allocations: vec![(3, allocation("x", Some(u64::MAX)))],
            }),
        ];
        for c in calls {
            let back = parse_link_call(&link_call_term(&c)).expect("parses");
            assert_eq!(format!("{back:?}"), format!("{c:?}"));
        }
    }

    #[test]
    fn answers_and_refusals_round_trip() {
        let t = link_reply_term(&Ok(LinkReply::Applied(42)));
        assert!(matches!(
            parse_link_reply(&t, false),
            Ok(LinkReply::Applied(42))
        ));
        let dump = ReplicaDump {
            replica: 1,
            seq: 4,
            allocations: vec![(1, allocation("o", None))],
            free: vec![FreqRange::new(2, 9).unwrap()],
            violations: vec!["odd".into()],
        };
        let t = link_reply_term(&Ok(LinkReply::Dumped(Box::new(dump.clone()))));
        match parse_link_reply(&t, true) {
            Ok(LinkReply::Dumped(d)) => assert_eq!(*d, dump),
            other => panic!("{other:?}"),
        }
        let t = link_reply_term(&Err(ShardError::Fenced("old epoch".into())));
        let e = parse_link_reply(&t, false).unwrap_err();
        assert!(e.contains("old epoch") && e.contains("fenced"), "{e}");
        // A dump where a sequence number was expected is refused, not misread.
        let t = link_reply_term(&Ok(LinkReply::Dumped(Box::new(dump))));
        assert!(parse_link_reply(&t, false).is_err());
    }

    proptest! {
        /// Nothing a peer sends makes the decoders panic.
        #[test]
        fn decoding_arbitrary_terms_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = vec![131u8];
            b.extend(bytes);
            if let Ok(t) = super::super::term::decode(&b) {
                let _ = parse_link_call(&t);
                let _ = parse_link_reply(&t, false);
                let _ = parse_link_reply(&t, true);
            }
        }
    }
}
