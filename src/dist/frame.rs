//! Framing of the connected phase: `[len:u32][112][control term][message term]`, a zero-length
//! frame is a tick. Our own framing (not erl_dist's channel): read through a buffered reader;
//! encoded into the connection's outbox (the `*_into` encoders write a reply or a call in place,
//! without building its terms) and written once per batch.
//!
//! See "Protocol between connected nodes" in the ERTS distribution protocol chapter.

use std::io::Read;

use eetf::{Pid, Reference, Term};

use super::error::DistError;
use super::term::{self, as_atom, as_tuple, atom, tuple, Decoder};

/// The pass-through tag that opens every data frame (no atom cache).
pub const PASS_THROUGH: u8 = 112;
/// Default bound of one frame: longer frames close the connection (a huge term is refused
/// before it is read into memory).
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

const LINK: i32 = 1;
const SEND: i32 = 2;
const EXIT: i32 = 3;
const UNLINK: i32 = 4;
const REG_SEND: i32 = 6;
const EXIT2: i32 = 8;
const SEND_TT: i32 = 12;
const REG_SEND_TT: i32 = 16;
const MONITOR_P: i32 = 19;
const DEMONITOR_P: i32 = 20;
const MONITOR_P_EXIT: i32 = 21;
const SEND_SENDER: i32 = 22;
const ALIAS_SEND: i32 = 33;
const UNLINK_ID: i32 = 35;
const UNLINK_ID_ACK: i32 = 36;

/// A decoded control message (the subset a node acts on; the rest is [`Control::Ignored`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// `SEND` / `SEND_TT` / `SEND_SENDER`: a message to a pid.
    Send {
        /// The sender, when the control message carries it.
        from: Option<Pid>,
        /// The receiver.
        to: Pid,
        /// The message.
        msg: Term,
    },
    /// `REG_SEND` / `REG_SEND_TT`: a message to a registered name.
    RegSend {
        /// The sender.
        from: Pid,
        /// The name.
        to: String,
        /// The message.
        msg: Term,
    },
    /// `MONITOR_P`: `from` monitors `target` (a pid, or a registered name as an atom).
    Monitor {
        /// The monitoring process.
        from: Pid,
        /// A pid or an atom.
        target: Term,
        /// The monitor's reference.
        reference: Reference,
    },
    /// `DEMONITOR_P`.
    Demonitor {
        /// The monitoring process.
        from: Pid,
        /// A pid or an atom.
        target: Term,
        /// The monitor's reference.
        reference: Reference,
    },
    /// `MONITOR_P_EXIT`: a monitored process (or name) is gone.
    MonitorExit {
        /// The monitored process (a pid, or the atom for a name).
        from: Term,
        /// The monitoring process.
        to: Pid,
        /// The monitor's reference.
        reference: Reference,
        /// The exit reason.
        reason: Term,
    },
    /// `UNLINK_ID`: must be acknowledged.
    UnlinkId {
        /// The unlink id.
        id: Term,
        /// Who unlinks.
        from: Pid,
        /// Whom.
        to: Pid,
    },
    /// Links, exits, alias sends and other operations this node does not act on.
    Ignored(i32),
}

fn pid(t: &Term) -> Result<Pid, DistError> {
    match t {
        Term::Pid(p) => Ok(p.clone()),
        _ => Err(DistError::BadFrame(
            "expected a pid in the control message".into(),
        )),
    }
}

fn reference(t: &Term) -> Result<Reference, DistError> {
    match t {
        Term::Reference(r) => Ok((**r).clone()),
        _ => Err(DistError::BadFrame(
            "expected a reference in the control message".into(),
        )),
    }
}

/// Parses one data frame's body (after the length): the pass-through tag, the control term and
/// the message term when the operation has one.
pub fn parse(body: &[u8]) -> Result<Control, DistError> {
    if body.first() != Some(&PASS_THROUGH) {
        return Err(DistError::BadFrame(format!(
            "expected pass-through tag 112, got {:?}",
            body.first()
        )));
    }
    let mut d = Decoder::new(&body[1..]);
    let control = d.term()?;
    let el = as_tuple(&control)
        .ok_or_else(|| DistError::BadFrame("control message is not a tuple".into()))?;
    let op = match el.first() {
        Some(Term::FixInteger(i)) => i.value,
        _ => {
            return Err(DistError::BadFrame(
                "control message without an operation".into(),
            ))
        }
    };
    let need = |n: usize| {
        if el.len() < n {
            Err(DistError::BadFrame(format!(
                "control {op}: {} elements",
                el.len()
            )))
        } else {
            Ok(())
        }
    };
    let msg = |d: &mut Decoder| -> Result<Term, DistError> {
        let m = d.term()?;
        if d.remaining() != 0 {
            return Err(DistError::BadFrame("bytes after the message".into()));
        }
        Ok(m)
    };
    Ok(match op {
        SEND | SEND_TT => {
            need(3)?;
            Control::Send {
                from: None,
                to: pid(&el[2])?,
                msg: msg(&mut d)?,
            }
        }
        SEND_SENDER => {
            need(3)?;
            Control::Send {
                from: Some(pid(&el[1])?),
                to: pid(&el[2])?,
                msg: msg(&mut d)?,
            }
        }
        REG_SEND | REG_SEND_TT => {
            need(4)?;
            let to = as_atom(&el[3])
                .ok_or_else(|| DistError::BadFrame("REG_SEND to a non-atom".into()))?
                .to_string();
            Control::RegSend {
                from: pid(&el[1])?,
                to,
                msg: msg(&mut d)?,
            }
        }
        MONITOR_P | DEMONITOR_P => {
            need(4)?;
            let (from, target, reference) = (pid(&el[1])?, el[2].clone(), reference(&el[3])?);
            if op == MONITOR_P {
                Control::Monitor {
                    from,
                    target,
                    reference,
                }
            } else {
                Control::Demonitor {
                    from,
                    target,
                    reference,
                }
            }
        }
        MONITOR_P_EXIT => {
            need(5)?;
            Control::MonitorExit {
                from: el[1].clone(),
                to: pid(&el[2])?,
                reference: reference(&el[3])?,
                reason: el[4].clone(),
            }
        }
        UNLINK_ID => {
            need(4)?;
            Control::UnlinkId {
                id: el[1].clone(),
                from: pid(&el[2])?,
                to: pid(&el[3])?,
            }
        }
        LINK | EXIT | UNLINK | EXIT2 | ALIAS_SEND => Control::Ignored(op),
        other => Control::Ignored(other),
    })
}

fn int(v: i32) -> Term {
    Term::from(eetf::FixInteger::from(v))
}

/// Starts a frame in `out`: 4 length bytes (patched by [`finish`]) and the pass-through tag.
fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, PASS_THROUGH]);
    start
}

fn finish(out: &mut [u8], start: usize) -> Result<(), DistError> {
    let len = u32::try_from(out.len() - start - 4)
        .map_err(|_| DistError::BadFrame("frame longer than 4 GiB".into()))?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Encodes a whole frame: a control term and an optional message, in one buffer.
pub fn encode(control: &Term, msg: Option<&Term>) -> Result<Vec<u8>, DistError> {
    let mut out = Vec::with_capacity(96);
    let start = begin(&mut out);
    term::encode_into(control, &mut out)?;
    if let Some(m) = msg {
        term::encode_into(m, &mut out)?;
    }
    finish(&mut out, start)?;
    Ok(out)
}

/// `SEND` to a pid.
pub fn send(to: &Pid, msg: &Term) -> Result<Vec<u8>, DistError> {
    encode(
        &tuple(vec![int(SEND), atom(""), Term::from(to.clone())]),
        Some(msg),
    )
}

/// Appends a `SEND` frame to `to` of the message `{First, Second}` (a reply `{Tag, Reply}`)
/// to `out`, encoded in place: the same bytes as [`send`] of that tuple, without building the
/// tuple or the control term. On error `out` may hold a partial frame: the caller truncates.
pub fn send_pair_into(
    out: &mut Vec<u8>,
    to: &Pid,
    first: &Term,
    second: &Term,
) -> Result<(), DistError> {
    let start = begin(out);
    term::encode_send_control_into(SEND as u8, to, out)?;
    term::encode_pair_into(first, second, out)?;
    finish(out, start)
}

/// `REG_SEND` to a name on the peer.
pub fn reg_send(from: &Pid, to: &str, msg: &Term) -> Result<Vec<u8>, DistError> {
    encode(
        &tuple(vec![
            int(REG_SEND),
            Term::from(from.clone()),
            atom(""),
            atom(to),
        ]),
        Some(msg),
    )
}

/// Appends a `REG_SEND` frame from `from` to the name `to` of the gen_server call
/// `{'$gen_call', {From, Ref}, Request}` to `out`, encoded in place: the same bytes as
/// [`reg_send`] of that tuple, without building it. On error `out` may hold a partial frame:
/// the caller truncates.
pub fn reg_send_call_into(
    out: &mut Vec<u8>,
    from: &Pid,
    to: &str,
    reference: &Reference,
    request: &Term,
) -> Result<(), DistError> {
    let start = begin(out);
    term::encode_reg_send_call_into(REG_SEND as u8, from, to, reference, request, out)?;
    finish(out, start)
}

/// `MONITOR_P`: `from` (ours) monitors `target` (a pid or a name atom on the peer).
pub fn monitor(from: &Pid, target: &Term, r: &Reference) -> Result<Vec<u8>, DistError> {
    encode(
        &tuple(vec![
            int(MONITOR_P),
            Term::from(from.clone()),
            target.clone(),
            Term::from(r.clone()),
        ]),
        None,
    )
}

/// `DEMONITOR_P`.
pub fn demonitor(from: &Pid, target: &Term, r: &Reference) -> Result<Vec<u8>, DistError> {
    encode(
        &tuple(vec![
            int(DEMONITOR_P),
            Term::from(from.clone()),
            target.clone(),
            Term::from(r.clone()),
        ]),
        None,
    )
}

/// `MONITOR_P_EXIT`: our process or name `from` is gone; tell the monitoring `to`.
pub fn monitor_exit(
    from: &Term,
    to: &Pid,
    r: &Reference,
    reason: &Term,
) -> Result<Vec<u8>, DistError> {
    encode(
        &tuple(vec![
            int(MONITOR_P_EXIT),
            from.clone(),
            Term::from(to.clone()),
            Term::from(r.clone()),
            reason.clone(),
        ]),
        None,
    )
}

/// `UNLINK_ID_ACK` answering an `UNLINK_ID`.
pub fn unlink_id_ack(id: &Term, from: &Pid, to: &Pid) -> Result<Vec<u8>, DistError> {
    encode(
        &tuple(vec![
            int(UNLINK_ID_ACK),
            id.clone(),
            Term::from(from.clone()),
            Term::from(to.clone()),
        ]),
        None,
    )
}

/// A tick: a zero-length frame.
pub const TICK: [u8; 4] = [0, 0, 0, 0];

/// Reads one frame into `buf` (cleared first). `Ok(false)` means a tick (empty body). A length
/// above `max` is refused before anything is allocated.
pub fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> Result<bool, DistError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| DistError::io("reading a frame length", e))?;
    let n = u32::from_be_bytes(len) as usize;
    buf.clear();
    if n == 0 {
        return Ok(false);
    }
    if n > max {
        return Err(DistError::BadFrame(format!(
            "frame of {n} bytes exceeds the limit of {max}"
        )));
    }
    buf.resize(n, 0);
    r.read_exact(buf)
        .map_err(|e| DistError::io("reading a frame body", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u32) -> Pid {
        Pid::new("me@host", n, 0, 1)
    }

    #[test]
    fn frames_round_trip() {
        let r = Reference::from(("me@host", vec![1, 2, 3]));
        let f = reg_send(&p(1), "frequency", &atom("allocate")).unwrap();
        assert_eq!(
            u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize,
            f.len() - 4
        );
        assert_eq!(
            parse(&f[4..]).unwrap(),
            Control::RegSend {
                from: p(1),
                to: "frequency".into(),
                msg: atom("allocate")
            }
        );
        let f = send(&p(2), &atom("x")).unwrap();
        assert_eq!(
            parse(&f[4..]).unwrap(),
            Control::Send {
                from: None,
                to: p(2),
                msg: atom("x")
            }
        );
        let f = monitor(&p(1), &atom("frequency"), &r).unwrap();
        assert_eq!(
            parse(&f[4..]).unwrap(),
            Control::Monitor {
                from: p(1),
                target: atom("frequency"),
                reference: r.clone()
            }
        );
        let f = monitor_exit(&atom("frequency"), &p(1), &r, &atom("noproc")).unwrap();
        assert_eq!(
            parse(&f[4..]).unwrap(),
            Control::MonitorExit {
                from: atom("frequency"),
                to: p(1),
                reference: r,
                reason: atom("noproc")
            }
        );
    }

    #[test]
    fn a_pair_encoded_in_place_is_the_same_frame() {
        let tag = Term::from(eetf::ImproperList::from((
            vec![atom("alias")],
            Term::from(Reference::from(("peer@host", vec![7, 8, 9]))),
        )));
        let reply = tuple(vec![atom("ok"), term::uint(42)]);
        let mut out = vec![1, 2, 3]; // appended after what is there
        send_pair_into(&mut out, &p(9), &tag, &reply).unwrap();
        let whole = send(&p(9), &tuple(vec![tag.clone(), reply.clone()])).unwrap();
        assert_eq!(&out[3..], &whole[..]);
        assert_eq!(
            parse(&out[7..]).unwrap(),
            Control::Send {
                from: None,
                to: p(9),
                msg: tuple(vec![tag, reply])
            }
        );
    }

    #[test]
    fn a_call_encoded_in_place_is_the_same_frame() {
        let r = Reference::from(("me@host", vec![1, 2, 3]));
        let req = tuple(vec![atom("allocate_as"), term::binary(b"radio-7")]);
        let mut out = vec![9]; // appended after what is there
        reg_send_call_into(&mut out, &p(4), "frequency", &r, &req).unwrap();
        let call = tuple(vec![
            atom("$gen_call"),
            tuple(vec![Term::from(p(4)), Term::from(r)]),
            req,
        ]);
        assert_eq!(&out[1..], &reg_send(&p(4), "frequency", &call).unwrap()[..]);
    }

    #[test]
    fn read_frame_bounds_and_ticks() {
        let mut buf = Vec::new();
        let mut tick = &TICK[..];
        assert!(!read_frame(&mut tick, &mut buf, 100).unwrap());
        let huge = [0xff, 0xff, 0xff, 0xff, 112];
        assert!(matches!(
            read_frame(&mut &huge[..], &mut buf, 1 << 20),
            Err(DistError::BadFrame(_))
        ));
        assert!(buf.capacity() < 1 << 20);
        let short = [0, 0, 0, 9, 112, 131];
        assert!(read_frame(&mut &short[..], &mut buf, 100).is_err());
    }

    #[test]
    fn garbage_bodies_are_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[1, 2, 3]).is_err());
        assert!(parse(&[112, 131, 106]).is_err()); // control is [] not a tuple
                                                   // A SEND without its message.
        let f = encode(&tuple(vec![int(SEND), atom(""), Term::from(p(1))]), None).unwrap();
        assert!(parse(&f[4..]).is_err());
        // An unknown operation is ignored, not an error.
        let f = encode(&tuple(vec![int(99)]), None).unwrap();
        assert_eq!(parse(&f[4..]).unwrap(), Control::Ignored(99));
    }
}
