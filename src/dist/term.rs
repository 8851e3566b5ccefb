//! The external term format, bounded: decode what a peer sends without trusting its counts,
//! encode what we send straight into the frame buffer.
//!
//! eetf's own decoder sizes vectors from the counts on the wire (`Vec::with_capacity(count)`), so a
//! 10-byte frame claiming 4 billion list elements would abort the process, and it recurses without
//! limit. This decoder checks every count against the bytes left and caps nesting depth; it builds
//! the same [`eetf::Term`] values. The encoder writes into one `Vec<u8>` (one buffer per message).
//!
//! See <https://www.erlang.org/doc/apps/erts/erl_ext_dist.html>.

use std::collections::HashMap;

use eetf::{
    Atom, BigInteger, Binary, BitBinary, ByteList, ExternalFun, FixInteger, Float, ImproperList,
    List, Map, Pid, Port, Reference, Term, Tuple,
};

use super::error::DistError;

/// The version byte that opens every encoded term.
pub const VERSION: u8 = 131;
/// Deepest nesting of lists, tuples and maps a decoded term may have.
pub const MAX_DEPTH: usize = 128;

const NEW_FLOAT_EXT: u8 = 70;
const BIT_BINARY_EXT: u8 = 77;
const NEW_PID_EXT: u8 = 88;
const NEW_PORT_EXT: u8 = 89;
const NEWER_REFERENCE_EXT: u8 = 90;
const SMALL_INTEGER_EXT: u8 = 97;
const INTEGER_EXT: u8 = 98;
const ATOM_EXT: u8 = 100;
const PORT_EXT: u8 = 102;
const PID_EXT: u8 = 103;
const SMALL_TUPLE_EXT: u8 = 104;
const LARGE_TUPLE_EXT: u8 = 105;
const NIL_EXT: u8 = 106;
const STRING_EXT: u8 = 107;
const LIST_EXT: u8 = 108;
const BINARY_EXT: u8 = 109;
const SMALL_BIG_EXT: u8 = 110;
const LARGE_BIG_EXT: u8 = 111;
const EXPORT_EXT: u8 = 113;
const NEW_REFERENCE_EXT: u8 = 114;
const SMALL_ATOM_EXT: u8 = 115;
const MAP_EXT: u8 = 116;
const ATOM_UTF8_EXT: u8 = 118;
const SMALL_ATOM_UTF8_EXT: u8 = 119;
const V4_PORT_EXT: u8 = 120;

/// A cursor over one frame's bytes.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(what: &str) -> DistError {
    DistError::BadTerm(what.to_string())
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DistError> {
        if n > self.remaining() {
            return Err(bad("truncated term"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DistError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DistError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DistError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DistError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A count of elements that each take at least `min` bytes: refused when the frame cannot
    /// hold that many.
    fn count(&mut self, n: usize, min: usize) -> Result<usize, DistError> {
        if n.saturating_mul(min) > self.remaining() {
            return Err(bad("element count larger than the frame"));
        }
        Ok(n)
    }

    /// One versioned term (`131` then the term).
    pub(crate) fn term(&mut self) -> Result<Term, DistError> {
        if self.u8()? != VERSION {
            return Err(bad("missing version byte 131"));
        }
        self.inner(0)
    }

    fn atom_body(&mut self, len: usize) -> Result<Atom, DistError> {
        let bytes = self.take(len)?;
        // Latin-1 atoms (ATOM_EXT) are ASCII in practice; non-UTF-8 bytes map one to one.
        let name = match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            Err(_) => bytes.iter().map(|&b| b as char).collect(),
        };
        Ok(Atom::from(name))
    }

    fn atom(&mut self) -> Result<Atom, DistError> {
        match self.u8()? {
            ATOM_EXT | ATOM_UTF8_EXT => {
                let n = self.u16()? as usize;
                self.atom_body(n)
            }
            SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => {
                let n = self.u8()? as usize;
                self.atom_body(n)
            }
            _ => Err(bad("expected an atom")),
        }
    }

    fn inner(&mut self, depth: usize) -> Result<Term, DistError> {
        if depth > MAX_DEPTH {
            return Err(bad("term nested too deeply"));
        }
        let tag = self.u8()?;
        Ok(match tag {
            SMALL_INTEGER_EXT => Term::from(FixInteger::from(self.u8()?)),
            INTEGER_EXT => Term::from(FixInteger::from(self.u32()? as i32)),
            NEW_FLOAT_EXT => {
                let v = f64::from_bits(self.u64()?);
                Term::from(Float::try_from(v).map_err(|_| bad("non-finite float"))?)
            }
            ATOM_EXT | ATOM_UTF8_EXT | SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => {
                self.pos -= 1;
                Term::from(self.atom()?)
            }
            SMALL_TUPLE_EXT | LARGE_TUPLE_EXT => {
                let n = if tag == SMALL_TUPLE_EXT {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                let n = self.count(n, 1)?;
                let mut elements = Vec::with_capacity(n);
                for _ in 0..n {
                    elements.push(self.inner(depth + 1)?);
                }
                Term::from(Tuple::from(elements))
            }
            NIL_EXT => Term::from(List::nil()),
            STRING_EXT => {
                let n = self.u16()? as usize;
                Term::from(ByteList::from(self.take(n)?.to_vec()))
            }
            LIST_EXT => {
                let n = self.u32()? as usize;
                let n = self.count(n, 1)?;
                let mut elements = Vec::with_capacity(n);
                for _ in 0..n {
                    elements.push(self.inner(depth + 1)?);
                }
                let tail = self.inner(depth + 1)?;
                match tail {
                    Term::List(l) if l.elements.is_empty() => Term::from(List::from(elements)),
                    last => Term::from(ImproperList::from((elements, last))),
                }
            }
            BINARY_EXT => {
                let n = self.u32()? as usize;
                Term::from(Binary::from(self.take(n)?))
            }
            BIT_BINARY_EXT => {
                let n = self.u32()? as usize;
                let bits = self.u8()?;
                Term::from(BitBinary::from((self.take(n)?.to_vec(), bits)))
            }
            SMALL_BIG_EXT | LARGE_BIG_EXT => {
                let n = if tag == SMALL_BIG_EXT {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                let sign = self.u8()?;
                let digits = self.take(n)?;
                if digits.iter().skip(8).any(|&d| d != 0) {
                    return Err(bad("integer wider than 64 bits"));
                }
                let mut mag: u64 = 0;
                for (i, &d) in digits.iter().take(8).enumerate() {
                    mag |= u64::from(d) << (8 * i);
                }
                int_term(sign != 0, mag)?
            }
            NEW_PID_EXT | PID_EXT => {
                let node = self.atom()?;
                let id = self.u32()?;
                let serial = self.u32()?;
                let creation = if tag == NEW_PID_EXT {
                    self.u32()?
                } else {
                    u32::from(self.u8()?)
                };
                Term::from(Pid::new(node.name, id, serial, creation))
            }
            NEW_PORT_EXT | V4_PORT_EXT | PORT_EXT => {
                let node = self.atom()?;
                let id = if tag == V4_PORT_EXT {
                    self.u64()?
                } else {
                    u64::from(self.u32()?)
                };
                let creation = if tag == PORT_EXT {
                    u32::from(self.u8()?)
                } else {
                    self.u32()?
                };
                Term::from(Port { node, id, creation })
            }
            NEW_REFERENCE_EXT | NEWER_REFERENCE_EXT => {
                let n = self.u16()? as usize;
                if n > 5 {
                    return Err(bad("reference with more than 5 ids"));
                }
                let node = self.atom()?;
                let creation = if tag == NEWER_REFERENCE_EXT {
                    self.u32()?
                } else {
                    u32::from(self.u8()?)
                };
                let mut id = Vec::with_capacity(n);
                for _ in 0..n {
                    id.push(self.u32()?);
                }
                Term::from(Reference { node, id, creation })
            }
            MAP_EXT => {
                let n = self.u32()? as usize;
                let n = self.count(n, 2)?;
                let mut map = HashMap::with_capacity(n);
                for _ in 0..n {
                    let k = self.inner(depth + 1)?;
                    let v = self.inner(depth + 1)?;
                    map.insert(k, v);
                }
                Term::from(Map::from(map))
            }
            EXPORT_EXT => {
                let module = self.atom()?;
                let function = self.atom()?;
                let arity = match self.inner(depth + 1)? {
                    Term::FixInteger(i) => {
                        u8::try_from(i.value).map_err(|_| bad("bad export arity"))?
                    }
                    _ => return Err(bad("bad export arity")),
                };
                Term::from(ExternalFun {
                    module,
                    function,
                    arity,
                })
            }
            _ => return Err(DistError::BadTerm(format!("unsupported term tag {tag}"))),
        })
    }
}

/// An integer term from a sign and a 64-bit magnitude.
fn int_term(negative: bool, mag: u64) -> Result<Term, DistError> {
    if negative {
        if mag <= (i32::MAX as u64) + 1 {
            return Ok(Term::from(FixInteger::from(
                (mag as i64).wrapping_neg() as i32
            )));
        }
        if mag <= (i64::MAX as u64) + 1 {
            return Ok(Term::from(BigInteger::from((mag as i64).wrapping_neg())));
        }
        return Err(bad("integer below i64::MIN"));
    }
    Ok(uint(mag))
}

/// Decodes one versioned term that fills `bytes` exactly.
pub fn decode(bytes: &[u8]) -> Result<Term, DistError> {
    let mut d = Decoder::new(bytes);
    let t = d.term()?;
    if d.remaining() != 0 {
        return Err(bad("trailing bytes after the term"));
    }
    Ok(t)
}

/// Appends one versioned term to `out`.
pub fn encode_into(term: &Term, out: &mut Vec<u8>) -> Result<(), DistError> {
    out.push(VERSION);
    encode_inner(term, out)
}

/// Appends `{First, Second}` as one versioned term, without building the tuple (a reply
/// `{Tag, Reply}` is encoded from its parts).
pub(crate) fn encode_pair_into(
    first: &Term,
    second: &Term,
    out: &mut Vec<u8>,
) -> Result<(), DistError> {
    out.extend_from_slice(&[VERSION, SMALL_TUPLE_EXT, 2]);
    encode_inner(first, out)?;
    encode_inner(second, out)
}

/// Appends the control message of a `SEND` to `to`, `{2, '', To}`, as one versioned term
/// (the same bytes as encoding that tuple, without building it).
pub(crate) fn encode_send_control_into(
    op: u8,
    to: &Pid,
    out: &mut Vec<u8>,
) -> Result<(), DistError> {
    out.extend_from_slice(&[VERSION, SMALL_TUPLE_EXT, 3, SMALL_INTEGER_EXT, op]);
    out.extend_from_slice(&[SMALL_ATOM_UTF8_EXT, 0]);
    encode_pid(to, out)
}

/// Appends the control message of a `REG_SEND` from `from` to `name`, `{6, From, '', Name}`,
/// and the message `{'$gen_call', {From, Ref}, Request}`, as two versioned terms (the same bytes
/// as encoding those tuples, without building them).
pub(crate) fn encode_reg_send_call_into(
    op: u8,
    from: &Pid,
    name: &str,
    reference: &Reference,
    request: &Term,
    out: &mut Vec<u8>,
) -> Result<(), DistError> {
    out.extend_from_slice(&[VERSION, SMALL_TUPLE_EXT, 4, SMALL_INTEGER_EXT, op]);
    encode_pid(from, out)?;
    out.extend_from_slice(&[SMALL_ATOM_UTF8_EXT, 0]);
    encode_atom_str(name, out)?;
    out.extend_from_slice(&[VERSION, SMALL_TUPLE_EXT, 3]);
    encode_atom_str("$gen_call", out)?;
    out.extend_from_slice(&[SMALL_TUPLE_EXT, 2]);
    encode_pid(from, out)?;
    encode_ref(reference, out)?;
    encode_inner(request, out)
}

fn encode_ref(r: &Reference, out: &mut Vec<u8>) -> Result<(), DistError> {
    out.push(NEWER_REFERENCE_EXT);
    let n = u16::try_from(r.id.len()).map_err(|_| bad("reference too long"))?;
    out.extend_from_slice(&n.to_be_bytes());
    encode_atom(&r.node, out)?;
    out.extend_from_slice(&r.creation.to_be_bytes());
    for w in &r.id {
        out.extend_from_slice(&w.to_be_bytes());
    }
    Ok(())
}

fn encode_pid(p: &Pid, out: &mut Vec<u8>) -> Result<(), DistError> {
    out.push(NEW_PID_EXT);
    encode_atom(&p.node, out)?;
    out.extend_from_slice(&p.id.to_be_bytes());
    out.extend_from_slice(&p.serial.to_be_bytes());
    out.extend_from_slice(&p.creation.to_be_bytes());
    Ok(())
}

/// Encodes one versioned term into a new buffer.
pub fn encode(term: &Term) -> Result<Vec<u8>, DistError> {
    let mut out = Vec::with_capacity(64);
    encode_into(term, &mut out)?;
    Ok(out)
}

fn encode_atom(a: &Atom, out: &mut Vec<u8>) -> Result<(), DistError> {
    encode_atom_str(&a.name, out)
}

fn encode_atom_str(name: &str, out: &mut Vec<u8>) -> Result<(), DistError> {
    let b = name.as_bytes();
    if let Ok(n) = u8::try_from(b.len()) {
        out.push(SMALL_ATOM_UTF8_EXT);
        out.push(n);
    } else if let Ok(n) = u16::try_from(b.len()) {
        out.push(ATOM_UTF8_EXT);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        return Err(bad("atom longer than 65535 bytes"));
    }
    out.extend_from_slice(b);
    Ok(())
}

fn len32(n: usize) -> Result<[u8; 4], DistError> {
    u32::try_from(n)
        .map(u32::to_be_bytes)
        .map_err(|_| bad("term too large to encode"))
}

fn encode_inner(term: &Term, out: &mut Vec<u8>) -> Result<(), DistError> {
    match term {
        Term::Atom(a) => encode_atom(a, out)?,
        Term::FixInteger(i) => {
            if (0..=255).contains(&i.value) {
                out.push(SMALL_INTEGER_EXT);
                out.push(i.value as u8);
            } else {
                out.push(INTEGER_EXT);
                out.extend_from_slice(&i.value.to_be_bytes());
            }
        }
        Term::Pid(p) => encode_pid(p, out)?,
        Term::Reference(r) => encode_ref(r, out)?,
        Term::Binary(b) => {
            out.push(BINARY_EXT);
            out.extend_from_slice(&len32(b.bytes.len())?);
            out.extend_from_slice(&b.bytes);
        }
        Term::List(l) => {
            if l.elements.is_empty() {
                out.push(NIL_EXT);
            } else {
                out.push(LIST_EXT);
                out.extend_from_slice(&len32(l.elements.len())?);
                for e in &l.elements {
                    encode_inner(e, out)?;
                }
                out.push(NIL_EXT);
            }
        }
        Term::ImproperList(l) => {
            out.push(LIST_EXT);
            out.extend_from_slice(&len32(l.elements.len())?);
            for e in &l.elements {
                encode_inner(e, out)?;
            }
            encode_inner(&l.last, out)?;
        }
        Term::Tuple(t) => {
            if let Ok(n) = u8::try_from(t.elements.len()) {
                out.push(SMALL_TUPLE_EXT);
                out.push(n);
            } else {
                out.push(LARGE_TUPLE_EXT);
                out.extend_from_slice(&len32(t.elements.len())?);
            }
            for e in &t.elements {
                encode_inner(e, out)?;
            }
        }
        Term::Map(m) => {
            out.push(MAP_EXT);
            out.extend_from_slice(&len32(m.map.len())?);
            for (k, v) in &m.map {
                encode_inner(k, out)?;
                encode_inner(v, out)?;
            }
        }
        other => {
            // Rare kinds (big integers, floats, funs, ports, byte lists): eetf's encoder.
            let mut tmp = Vec::new();
            other
                .encode(&mut tmp)
                .map_err(|e| DistError::BadTerm(format!("cannot encode: {e}")))?;
            out.extend_from_slice(&tmp[1..]);
        }
    }
    Ok(())
}

/// An atom term.
pub fn atom(name: &str) -> Term {
    Term::from(Atom::from(name))
}

/// A tuple term.
pub fn tuple(elements: Vec<Term>) -> Term {
    Term::from(Tuple::from(elements))
}

/// A proper list term.
pub fn list(elements: Vec<Term>) -> Term {
    Term::from(List::from(elements))
}

/// A binary term.
pub fn binary(bytes: &[u8]) -> Term {
    Term::from(Binary::from(bytes))
}

/// A non-negative integer term (a small integer when it fits, else a bignum).
pub fn uint(v: u64) -> Term {
    match i32::try_from(v) {
        Ok(i) => Term::from(FixInteger::from(i)),
        Err(_) => Term::from(BigInteger::from(v)),
    }
}

/// `{ok, T}`.
pub fn ok(t: Term) -> Term {
    tuple(vec![atom("ok"), t])
}

/// `{error, Reason}` with an atom reason.
pub fn error(reason: &str) -> Term {
    tuple(vec![atom("error"), atom(reason)])
}

/// The atom's name, when `t` is an atom.
pub fn as_atom(t: &Term) -> Option<&str> {
    match t {
        Term::Atom(a) => Some(a.name.as_str()),
        _ => None,
    }
}

/// The tuple's elements, when `t` is a tuple.
pub fn as_tuple(t: &Term) -> Option<&[Term]> {
    match t {
        Term::Tuple(x) => Some(&x.elements),
        _ => None,
    }
}

/// The list's elements, when `t` is a proper list (a byte list counts).
pub fn as_list(t: &Term) -> Option<Vec<Term>> {
    match t {
        Term::List(l) => Some(l.elements.clone()),
        Term::ByteList(b) => Some(b.bytes.iter().map(|&x| uint(u64::from(x))).collect()),
        _ => None,
    }
}

/// The value, when `t` is an integer in `0..=u64::MAX`.
pub fn as_u64(t: &Term) -> Option<u64> {
    match t {
        Term::FixInteger(i) => u64::try_from(i.value).ok(),
        Term::BigInteger(b) => {
            use num_traits::ToPrimitive;
            b.to_u64()
        }
        _ => None,
    }
}

/// A text: a binary, an atom, or a string (byte list) — what Erlang callers pass as a name.
pub fn as_text(t: &Term) -> Option<String> {
    match t {
        Term::Binary(b) => String::from_utf8(b.bytes.clone()).ok(),
        Term::Atom(a) => Some(a.name.clone()),
        Term::ByteList(b) => String::from_utf8(b.bytes.clone()).ok(),
        _ => None,
    }
}

/// A term's text, cut to 200 bytes (for errors).
pub(crate) fn short(t: &Term) -> String {
    let mut text = t.to_string();
    if text.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(t: Term) {
        let bytes = encode(&t).unwrap();
        assert_eq!(decode(&bytes).unwrap(), t);
        // eetf's own decoder agrees with our encoder.
        assert_eq!(Term::decode(&bytes[..]).unwrap(), t);
    }

    #[test]
    fn terms_round_trip_and_match_eetf() {
        roundtrip(atom("allocate"));
        roundtrip(uint(7));
        roundtrip(uint(70_000));
        roundtrip(uint(u64::MAX));
        roundtrip(Term::from(FixInteger::from(-5)));
        roundtrip(tuple(vec![
            atom("request"),
            Term::from(Pid::new("a@b", 1, 2, 3)),
            atom("x"),
        ]));
        roundtrip(list(vec![uint(1), uint(2)]));
        roundtrip(list(vec![]));
        roundtrip(binary(b"radio-7"));
        roundtrip(Term::from(ImproperList::from((
            vec![atom("alias")],
            Term::from(Reference::from(("n@h", vec![1, 2, 3]))),
        ))));
        let mut m = HashMap::new();
        m.insert(atom("pool"), uint(12));
        roundtrip(Term::from(Map::from(m)));
    }

    #[test]
    fn eetf_encoded_terms_decode() {
        let t = tuple(vec![
            atom("ok"),
            Term::from(Float::try_from(1.5).unwrap()),
            Term::from(ByteList::from("abc")),
        ]);
        let mut bytes = Vec::new();
        t.encode(&mut bytes).unwrap();
        assert_eq!(decode(&bytes).unwrap(), t);
    }

    #[test]
    fn hostile_counts_and_depth_are_refused_not_allocated() {
        // A list claiming u32::MAX elements in a 7-byte frame.
        assert!(decode(&[131, LIST_EXT, 0xff, 0xff, 0xff, 0xff, NIL_EXT]).is_err());
        // A map claiming 2^31 pairs.
        assert!(decode(&[131, MAP_EXT, 0x80, 0, 0, 0]).is_err());
        // A binary longer than the frame.
        assert!(decode(&[131, BINARY_EXT, 0, 0, 1, 0, 1, 2]).is_err());
        // Nesting past the limit.
        let mut deep = vec![131];
        for _ in 0..(MAX_DEPTH + 10) {
            deep.extend_from_slice(&[SMALL_TUPLE_EXT, 1]);
        }
        deep.push(NIL_EXT);
        assert!(decode(&deep).is_err());
        // Truncated, unknown tag, no version, trailing bytes.
        assert!(decode(&[131, SMALL_TUPLE_EXT, 2, NIL_EXT]).is_err());
        assert!(decode(&[131, 250]).is_err());
        assert!(decode(&[NIL_EXT]).is_err());
        assert!(decode(&[131, NIL_EXT, NIL_EXT]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn every_prefix_of_a_valid_term_is_an_error_not_a_panic() {
        let bytes = encode(&tuple(vec![
            atom("$gen_call"),
            tuple(vec![
                Term::from(Pid::new("a@b", 1, 2, 3)),
                Term::from(Reference::from(("a@b", vec![1, 2, 3]))),
            ]),
            tuple(vec![atom("deallocate"), uint(12)]),
        ]))
        .unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err());
        }
        // Every single-byte corruption decodes or fails, without panicking.
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = decode(&b);
            }
        }
    }

    #[test]
    fn accessors() {
        assert_eq!(as_u64(&uint(u64::MAX)), Some(u64::MAX));
        assert_eq!(as_u64(&Term::from(FixInteger::from(-1))), None);
        assert_eq!(as_text(&binary(b"x")), Some("x".into()));
        assert_eq!(as_atom(&atom("ok")), Some("ok"));
    }
}
