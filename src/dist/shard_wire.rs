//! The shard protocol between the nodes of a cluster, as Erlang terms (so that a shell on a
//! BEAM node can call a shard: `gen_server:call({freq_shard, 'b@localhost'}, {shard_call, 1,
//! {allocate, <<"me">>, undefined}})`).
//!
//! | request                                   | reply                                     |
//! |-------------------------------------------|-------------------------------------------|
//! | `{shard_call, Shard, Call}`               | `{Result, Free, Allocated, Stamp}`        |
//! | `{held, Shard, Owner}`                    | `{ok, [F]}` or `{error, ...}`             |
//! | `{hello, Fingerprint, Node, Loads}`       | `{ok, Loads}` or `{error, layout_mismatch, Ours}` |
//! | `status`                                  | `{ok, [{Shard, Free, Allocated, Alive}]}` |
//! | `{loads, Node, Loads}` (a message, no reply) |                                        |
//!
//! `Loads` is `[{Shard, Free, Allocated, Stamp}]` (with replicas `[{Shard, Free, Allocated,
//! Stamp, Lag}]`, `Lag` the backup's distance behind or `undefined`) for the shards the sender
//! serves. With replicas the service also answers the replication protocol (`{link, ...}`, see
//! `replica_wire.rs`), `{control_propose, CommandBytes, Fingerprint}` (a non-leader's proposal
//! to the control log, answered by its leader: `ok` or `{error, rejected | not_leader |
//! unknown, Text}`), and takes `{link_nudge, Shard, Fingerprint}` messages (a backup asking its
//! primary to catch it up); a shard call to a replica that is not primary answers
//! `{error, shard_unreachable, Shard, Text}`.
//!
//! `Stamp` is `{Incarnation, Seq}`: when the node read the load (its start, and a number it
//! raises at each read), so that a receiver keeps the latest of a reply and a `loads` message.
//!
//! `Call` is `{allocate, Owner, LeaseMs | undefined}`, `{deallocate, F, Owner}`,
//! `{release_all, Owner}`, `reap`, `check` or `{inject, panic | panic_primary | panic_backup}`;
//! `Result` is `{allocated, F}`, `deallocated`, `{released, [F]}`, `{reaped, [{F, Owner}]}`,
//! `{checked, [Text]}` or `{error, Kind, ...}` for a [`FreqError`]. Owners and texts are binaries.
//!
//! Architecture Invariant: decoding never panics; a term of an unexpected shape is an error.

use eetf::Term;

use super::term::{as_atom, as_list, as_text, as_tuple, as_u64, atom, binary, list, tuple, uint};
use crate::freq::{ClientCall, ClientReply, Fault, FreqError};

/// The registered name of a node's shard service.
pub const SHARD_SERVICE: &str = "freq_shard";

fn text(s: &str) -> Term {
    binary(s.as_bytes())
}

/// A client call as a term.
pub(crate) fn call_term(call: &ClientCall) -> Term {
    match call {
        ClientCall::Allocate { owner, lease_ms } => tuple(vec![
            atom("allocate"),
            text(owner),
            lease_ms.map_or_else(|| atom("undefined"), uint),
        ]),
        ClientCall::Deallocate { freq, owner } => {
            tuple(vec![atom("deallocate"), uint(*freq), text(owner)])
        }
        ClientCall::ReleaseAll { owner } => tuple(vec![atom("release_all"), text(owner)]),
        ClientCall::Reap => atom("reap"),
        ClientCall::Check => atom("check"),
        ClientCall::Inject(f) => tuple(vec![
            atom("inject"),
            atom(match f {
                Fault::PanicPrimary => "panic_primary",
                Fault::PanicBackup => "panic_backup",
                _ => "panic",
            }),
        ]),
    }
}

/// A client call from a term.
pub(crate) fn parse_call(t: &Term) -> Option<ClientCall> {
    if let Some(a) = as_atom(t) {
        return match a {
            "reap" => Some(ClientCall::Reap),
            "check" => Some(ClientCall::Check),
            _ => None,
        };
    }
    let el = as_tuple(t)?;
    match (as_atom(el.first()?)?, el.len()) {
        ("allocate", 3) => Some(ClientCall::Allocate {
            owner: as_text(&el[1])?,
            lease_ms: match as_atom(&el[2]) {
                Some("undefined") => None,
                _ => Some(as_u64(&el[2])?),
            },
        }),
        ("deallocate", 3) => Some(ClientCall::Deallocate {
            freq: as_u64(&el[1])?,
            owner: as_text(&el[2])?,
        }),
        ("release_all", 2) => Some(ClientCall::ReleaseAll {
            owner: as_text(&el[1])?,
        }),
        ("inject", 2) => Some(ClientCall::Inject(match as_atom(&el[1])? {
            "panic" => Fault::Panic,
            "panic_primary" => Fault::PanicPrimary,
            "panic_backup" => Fault::PanicBackup,
            _ => return None,
        })),
        _ => None,
    }
}

fn freqs(v: &[u64]) -> Term {
    list(v.iter().map(|&f| uint(f)).collect())
}

fn parse_freqs(t: &Term) -> Option<Vec<u64>> {
    as_list(t)?.iter().map(as_u64).collect()
}

/// A call's result as a term.
pub(crate) fn result_term(r: &Result<ClientReply, FreqError>) -> Term {
    match r {
        Ok(ClientReply::Allocated(f)) => tuple(vec![atom("allocated"), uint(*f)]),
        Ok(ClientReply::Deallocated) => atom("deallocated"),
        Ok(ClientReply::Released(v)) => tuple(vec![atom("released"), freqs(v)]),
        Ok(ClientReply::Reaped(v)) => tuple(vec![
            atom("reaped"),
            list(
                v.iter()
                    .map(|(f, o)| tuple(vec![uint(*f), text(o)]))
                    .collect(),
            ),
        ]),
        Ok(ClientReply::Checked(v)) => tuple(vec![
            atom("checked"),
            list(v.iter().map(|s| text(s)).collect()),
        ]),
        Err(e) => error_term(e),
    }
}

/// A typed error as `{error, Kind, ...}`; kinds without a place of their own travel as
/// `{error, failed, Text}`.
pub(crate) fn error_term(e: &FreqError) -> Term {
    let e2 = |kind: &str, rest: Vec<Term>| {
        let mut v = vec![atom("error"), atom(kind)];
        v.extend(rest);
        tuple(v)
    };
    match e {
        FreqError::NoFrequency { pool_size } => e2("no_frequency", vec![uint(*pool_size)]),
        FreqError::NotAllocated(f) => e2("not_allocated", vec![uint(*f)]),
        FreqError::UnknownFrequency(f) => e2("unknown_frequency", vec![uint(*f)]),
        FreqError::NotOwner {
            freq,
            owner,
            client,
        } => e2("not_owner", vec![uint(*freq), text(owner), text(client)]),
        FreqError::LimitReached { client, limit } => e2(
            "limit_reached",
            vec![
                text(client),
                uint(u64::try_from(*limit).unwrap_or(u64::MAX)),
            ],
        ),
        FreqError::BadClientName(n) => e2("bad_client_name", vec![text(n)]),
        FreqError::BadLease => e2("bad_lease", vec![]),
        FreqError::NoBackup { shard } => e2("no_backup", vec![uint(*shard as u64)]),
        FreqError::ShardFailed { shard, reason } => {
            e2("shard_failed", vec![uint(*shard as u64), text(reason)])
        }
        FreqError::ShardUnreachable { shard, reason } => {
            e2("shard_unreachable", vec![uint(*shard as u64), text(reason)])
        }
        FreqError::Stopped => e2("stopped", vec![]),
        other => e2("failed", vec![text(&other.to_string())]),
    }
}

fn index(t: &Term) -> Option<usize> {
    usize::try_from(as_u64(t)?).ok()
}

/// A typed error from `{error, Kind, ...}` (of shard `shard`, for the kinds that carry none).
pub(crate) fn parse_error(t: &Term, shard: usize) -> Option<FreqError> {
    let el = as_tuple(t)?;
    if el.len() < 2 || as_atom(&el[0])? != "error" {
        return None;
    }
    let rest = &el[2..];
    Some(match (as_atom(&el[1])?, rest) {
        ("no_frequency", [p]) => FreqError::NoFrequency {
            pool_size: as_u64(p)?,
        },
        ("not_allocated", [f]) => FreqError::NotAllocated(as_u64(f)?),
        ("unknown_frequency", [f]) => FreqError::UnknownFrequency(as_u64(f)?),
        ("not_owner", [f, o, c]) => FreqError::NotOwner {
            freq: as_u64(f)?,
            owner: as_text(o)?,
            client: as_text(c)?,
        },
        ("limit_reached", [c, l]) => FreqError::LimitReached {
            client: as_text(c)?,
            limit: usize::try_from(as_u64(l)?).unwrap_or(usize::MAX),
        },
        ("bad_client_name", [n]) => FreqError::BadClientName(as_text(n)?),
        ("bad_lease", []) => FreqError::BadLease,
        ("no_backup", [s]) => FreqError::NoBackup { shard: index(s)? },
        ("shard_failed", [s, r]) => FreqError::ShardFailed {
            shard: index(s)?,
            reason: as_text(r)?,
        },
        ("shard_unreachable", [s, r]) => FreqError::ShardUnreachable {
            shard: index(s)?,
            reason: as_text(r)?,
        },
        ("stopped", []) => FreqError::Stopped,
        ("failed", [r]) => FreqError::ShardFailed {
            shard,
            reason: as_text(r)?,
        },
        _ => return None,
    })
}

/// A call's result from a term, read as the answer to `call`.
pub(crate) fn parse_result(
    t: &Term,
    call: &ClientCall,
    shard: usize,
) -> Option<Result<ClientReply, FreqError>> {
    if let Some(e) = parse_error(t, shard) {
        return Some(Err(e));
    }
    if as_atom(t) == Some("deallocated") {
        return matches!(call, ClientCall::Deallocate { .. })
            .then_some(Ok(ClientReply::Deallocated));
    }
    let el = as_tuple(t)?;
    if el.len() != 2 {
        return None;
    }
    let reply = match (as_atom(&el[0])?, call) {
        ("allocated", ClientCall::Allocate { .. }) => ClientReply::Allocated(as_u64(&el[1])?),
        ("released", ClientCall::ReleaseAll { .. }) => ClientReply::Released(parse_freqs(&el[1])?),
        ("reaped", ClientCall::Reap) => ClientReply::Reaped(
            as_list(&el[1])?
                .iter()
                .map(|p| {
                    let p = as_tuple(p)?;
                    match p {
                        [f, o] => Some((as_u64(f)?, as_text(o)?)),
                        _ => None,
                    }
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        ("checked", ClientCall::Check) => ClientReply::Checked(
            as_list(&el[1])?
                .iter()
                .map(as_text)
                .collect::<Option<Vec<_>>>()?,
        ),
        _ => return None,
    };
    Some(Ok(reply))
}

/// A list of frequencies from `{ok, [F]}`.
pub(crate) fn parse_ok_freqs(t: &Term, shard: usize) -> Option<Result<Vec<u64>, FreqError>> {
    if let Some(e) = parse_error(t, shard) {
        return Some(Err(e));
    }
    match as_tuple(t)? {
        [tag, v] if as_atom(tag) == Some("ok") => Some(Ok(parse_freqs(v)?)),
        _ => None,
    }
}

/// `{ok, [F]}`.
pub(crate) fn ok_freqs(v: &[u64]) -> Term {
    tuple(vec![atom("ok"), freqs(v)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn calls() -> Vec<ClientCall> {
        vec![
            ClientCall::Allocate {
                owner: "pid:a@h:1.0.3".into(),
                lease_ms: None,
            },
            ClientCall::Allocate {
                owner: "c".into(),
                lease_ms: Some(u64::MAX),
            },
            ClientCall::Deallocate {
                freq: u64::MAX,
                owner: "c".into(),
            },
            ClientCall::ReleaseAll { owner: "c".into() },
            ClientCall::Reap,
            ClientCall::Check,
            ClientCall::Inject(Fault::PanicBackup),
        ]
    }

    #[test]
    fn every_call_round_trips() {
        for c in calls() {
            let back = parse_call(&call_term(&c)).expect("parses");
            assert_eq!(format!("{back:?}"), format!("{c:?}"));
        }
    }

    #[test]
    fn results_round_trip_as_answers_to_their_calls() {
        let cases: Vec<(ClientCall, Result<ClientReply, FreqError>)> = vec![
            (calls()[0].clone(), Ok(ClientReply::Allocated(7))),
            (calls()[2].clone(), Ok(ClientReply::Deallocated)),
            (calls()[3].clone(), Ok(ClientReply::Released(vec![1, 2]))),
            (
                ClientCall::Reap,
                Ok(ClientReply::Reaped(vec![(3, "x".into())])),
            ),
            (
                ClientCall::Check,
                Ok(ClientReply::Checked(vec!["bad".into()])),
            ),
            (
                calls()[2].clone(),
                Err(FreqError::NotOwner {
                    freq: 4,
                    owner: "a".into(),
                    client: "b".into(),
                }),
            ),
            (
                calls()[0].clone(),
                Err(FreqError::NoFrequency { pool_size: 12 }),
            ),
            (
                calls()[0].clone(),
                Err(FreqError::LimitReached {
                    client: "c".into(),
                    limit: 2,
                }),
            ),
            (
                calls()[0].clone(),
                Err(FreqError::ShardUnreachable {
                    shard: 3,
                    reason: "r".into(),
                }),
            ),
        ];
        for (call, r) in cases {
            let back = parse_result(&result_term(&r), &call, 0).expect("parses");
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
        // An answer of another call's shape is refused, not misread.
        let t = result_term(&Ok(ClientReply::Released(vec![1])));
        assert!(parse_result(&t, &ClientCall::Check, 0).is_none());
    }

    #[test]
    fn other_errors_travel_as_their_text() {
        let e = FreqError::Corrupt("torn record".into());
        match parse_error(&error_term(&e), 5) {
            Some(FreqError::ShardFailed { shard: 5, reason }) => {
                assert_eq!(reason, e.to_string())
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Nothing a peer sends makes the decoders panic.
        #[test]
        fn decoding_arbitrary_terms_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = vec![131u8];
            b.extend(bytes);
            if let Ok(t) = super::super::term::decode(&b) {
                let _ = parse_call(&t);
                let _ = parse_error(&t, 0);
                for c in calls() {
                    let _ = parse_result(&t, &c, 0);
                }
                let _ = parse_ok_freqs(&t, 0);
            }
        }
    }
}
