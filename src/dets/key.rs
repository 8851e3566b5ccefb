//! The order-preserving, prefix-free key encoding ("memcomparable" bytes).
//!
//! sled orders keys by their bytes; an `OrderedSet` must be traversed in the key type's `Ord`.
//! This serde `Serializer` writes bytes whose lexicographic order is the order of the values:
//!
//! | type | bytes |
//! |---|---|
//! | `bool`, unsigned ints, `char` | big-endian, fixed width (`char` as `u32`) |
//! | signed ints | big-endian with the sign bit flipped, so negatives sort first |
//! | `str`, byte strings | each `0x00` escaped as `0x00 0xFF`, then the terminator `0x00 0x01` |
//! | `()`, unit structs | nothing |
//! | tuples, structs, newtypes | the fields concatenated |
//! | `Option` | `0x00` for `None`, `0x01` then the value for `Some` |
//! | sequences | `0x01` before each element, `0x00` at the end |
//! | enums | the variant index as `u32`, then the fields |
//!
//! Every encoding is *prefix-free*: no key's bytes are a proper prefix of another key's. So a
//! bag can append a sequence number to the key bytes and find a key's objects by a prefix scan.
//! Floats and maps have no such encoding here; they are [`DetsError::UnsupportedKey`].
//!
//! Architecture Invariant: the encoding is a pure function of the value; it never depends on
//! the table, the platform's endianness or the codec of values.

use serde::ser::{self, Serialize};

use super::error::DetsError;

/// Appends the encoding of `key` to `out`.
pub(crate) fn encode_key<K: Serialize + ?Sized>(
    key: &K,
    out: &mut Vec<u8>,
) -> Result<(), DetsError> {
    key.serialize(&mut KeyEncoder { out })
}

struct KeyEncoder<'a> {
    out: &'a mut Vec<u8>,
}

impl KeyEncoder<'_> {
    fn escaped(&mut self, bytes: &[u8]) {
        self.out.reserve(bytes.len() + 2);
        for &b in bytes {
            self.out.push(b);
            if b == 0 {
                self.out.push(0xFF);
            }
        }
        self.out.extend_from_slice(&[0x00, 0x01]);
    }
}

fn unsupported(what: &str) -> DetsError {
    DetsError::UnsupportedKey {
        detail: format!("{what} has no order-preserving key encoding"),
    }
}

macro_rules! unsigned {
    ($($f:ident: $t:ty),*) => {$(
        fn $f(self, v: $t) -> Result<(), DetsError> {
            self.out.extend_from_slice(&v.to_be_bytes());
            Ok(())
        }
    )*};
}

macro_rules! signed {
    ($($f:ident: $t:ty => $u:ty),*) => {$(
        fn $f(self, v: $t) -> Result<(), DetsError> {
            let flipped = (v as $u) ^ (1 << (<$u>::BITS - 1));
            self.out.extend_from_slice(&flipped.to_be_bytes());
            Ok(())
        }
    )*};
}

impl<'a> ser::Serializer for &mut KeyEncoder<'a> {
    type Ok = ();
    type Error = DetsError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = ser::Impossible<(), DetsError>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    unsigned!(serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64,
        serialize_u128: u128);
    signed!(serialize_i8: i8 => u8, serialize_i16: i16 => u16, serialize_i32: i32 => u32,
        serialize_i64: i64 => u64, serialize_i128: i128 => u128);

    fn serialize_bool(self, v: bool) -> Result<(), DetsError> {
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), DetsError> {
        Err(unsupported("f32"))
    }
    fn serialize_f64(self, _: f64) -> Result<(), DetsError> {
        Err(unsupported("f64"))
    }
    fn serialize_char(self, v: char) -> Result<(), DetsError> {
        self.serialize_u32(u32::from(v))
    }
    fn serialize_str(self, v: &str) -> Result<(), DetsError> {
        self.escaped(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), DetsError> {
        self.escaped(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), DetsError> {
        self.out.push(0);
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), DetsError> {
        self.out.push(1);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), DetsError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), DetsError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), DetsError> {
        self.serialize_u32(index)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), DetsError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), DetsError> {
        self.out.extend_from_slice(&index.to_be_bytes());
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, DetsError> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, DetsError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, DetsError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, DetsError> {
        self.out.extend_from_slice(&index.to_be_bytes());
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, DetsError> {
        Err(unsupported("a map"))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, DetsError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, DetsError> {
        self.out.extend_from_slice(&index.to_be_bytes());
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut KeyEncoder<'_> {
    type Ok = ();
    type Error = DetsError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), DetsError> {
        // A marker before each element makes a shorter sequence sort before its extensions.
        self.out.push(1);
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), DetsError> {
        self.out.push(0);
        Ok(())
    }
}

macro_rules! concatenated {
    ($($tr:ident :: $f:ident),*) => {$(
        impl ser::$tr for &mut KeyEncoder<'_> {
            type Ok = ();
            type Error = DetsError;
            fn $f<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), DetsError> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), DetsError> {
                Ok(())
            }
        }
    )*};
}
concatenated!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

macro_rules! concatenated_fields {
    ($($tr:ident),*) => {$(
        impl ser::$tr for &mut KeyEncoder<'_> {
            type Ok = ();
            type Error = DetsError;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                _: &'static str,
                value: &T,
            ) -> Result<(), DetsError> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), DetsError> {
                Ok(())
            }
        }
    )*};
}
concatenated_fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::fmt::Debug;

    fn enc<K: Serialize>(k: &K) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key(k, &mut out).expect("encodable key");
        out
    }

    /// Sorting by `Ord` and sorting by encoded bytes give the same sequence, and no encoding is
    /// a proper prefix of another (the property bags rely on).
    fn check_order<K: Ord + Serialize + Debug>(keys: Vec<K>) -> Result<(), TestCaseError> {
        let set: BTreeSet<K> = keys.into_iter().collect();
        let by_ord: Vec<&K> = set.iter().collect();
        let mut by_bytes: Vec<(Vec<u8>, &K)> = set.iter().map(|k| (enc(k), k)).collect();
        by_bytes.sort_by(|a, b| a.0.cmp(&b.0));
        for w in by_bytes.windows(2) {
            prop_assert!(
                w[0].0 != w[1].0,
                "two keys encode alike: {:?} {:?}",
                w[0].1,
                w[1].1
            );
            prop_assert!(
                !w[1].0.starts_with(&w[0].0),
                "prefix: {:?} {:?}",
                w[0].1,
                w[1].1
            );
        }
        let by_bytes: Vec<&K> = by_bytes.into_iter().map(|(_, k)| k).collect();
        prop_assert_eq!(by_ord, by_bytes);
        Ok(())
    }

    /// Strings from a tiny alphabet that includes NUL and 0xFF-ish chars, so prefixes and
    /// escapes are common.
    fn small_string() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('\0'),
                Just('a'),
                Just('b'),
                Just('\u{ff}'),
                Just('\u{1}')
            ],
            0..5,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1), Just(0xFF), Just(0x61)],
            0..5,
        )
    }

    proptest! {
        #[test]
        fn u64_order(keys in proptest::collection::vec(any::<u64>(), 0..40)) {
            check_order(keys)?;
        }
        #[test]
        fn small_ints_order(keys in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u32>(), any::<u128>()), 0..40)) {
            check_order(keys)?;
        }
        #[test]
        fn i64_order(keys in proptest::collection::vec(prop_oneof![any::<i64>(), -3i64..3, Just(i64::MIN), Just(i64::MAX)], 0..40)) {
            check_order(keys)?;
        }
        #[test]
        fn small_signed_order(keys in proptest::collection::vec((any::<i8>(), any::<i16>(), any::<i32>(), any::<i128>()), 0..40)) {
            check_order(keys)?;
        }
        #[test]
        fn string_order(keys in proptest::collection::vec(prop_oneof![small_string(), any::<String>()], 0..40)) {
            check_order(keys)?;
        }
        #[test]
        fn byte_string_order(keys in proptest::collection::vec(small_bytes(), 0..40)) {
            // Vec<u8> serializes as a sequence; serde_bytes-style byte strings go through
            // serialize_bytes, tested below.
            check_order(keys)?;
        }
        #[test]
        fn bytes_order(keys in proptest::collection::vec(small_bytes(), 0..40)) {
            #[derive(PartialEq, Eq, PartialOrd, Ord, Debug)]
            struct Bytes(Vec<u8>);
            impl Serialize for Bytes {
                fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&self.0)
                }
            }
            check_order(keys.into_iter().map(Bytes).collect())?;
        }
        #[test]
        fn tuple_i64_string_order(keys in proptest::collection::vec((-3i64..3, small_string()), 0..40)) {
            check_order(keys)?;
        }
        #[test]
        fn tuple_string_u8_order(keys in proptest::collection::vec((small_string(), 0u8..3, small_bytes()), 0..40)) {
            check_order(keys)?;
        }
        #[test]
        fn unit_bool_char_option_order(keys in proptest::collection::vec((Just(()), any::<bool>(), any::<char>(), proptest::option::of(-2i32..2)), 0..40)) {
            check_order(keys)?;
        }
        #[test]
        fn derived_enum_and_struct_order(keys in proptest::collection::vec((0u8..4, -2i16..2, small_string()), 0..40)) {
            #[derive(PartialEq, Eq, PartialOrd, Ord, Debug, serde::Serialize)]
            enum E { A, B(i16), C { s: String, n: i16 }, D(i16, String) }
            let keys: Vec<E> = keys.into_iter().map(|(v, n, s)| match v {
                0 => E::A, 1 => E::B(n), 2 => E::C { s, n }, _ => E::D(n, s),
            }).collect();
            check_order(keys)?;
        }
    }

    #[test]
    fn floats_and_maps_are_typed_errors() {
        let mut out = Vec::new();
        assert!(matches!(
            encode_key(&1.5f64, &mut out),
            Err(DetsError::UnsupportedKey { .. })
        ));
        let m: std::collections::BTreeMap<u8, u8> = [(1, 2)].into();
        assert!(matches!(
            encode_key(&m, &mut out),
            Err(DetsError::UnsupportedKey { .. })
        ));
    }

    #[test]
    fn negative_numbers_sort_first() {
        assert!(enc(&-1i64) < enc(&0i64));
        assert!(enc(&i64::MIN) < enc(&-1i64));
        assert!(enc(&"a") < enc(&"ab"));
        assert!(enc(&"a") < enc(&"a\0"));
        assert!(enc(&"a\0") < enc(&"a\u{1}"));
    }
}
