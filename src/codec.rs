//! The one place that knows the byte encoding of stored values: serde + bincode 2.0.1.
//!
//! Both [`crate::ets`] (`tab2file`) and [`crate::dets`] (every stored value) encode through here,
//! so changing the codec is a one-file change. The configuration is bincode's `standard()`
//! (little-endian, variable-length integers) with a decode limit, so a damaged length prefix is
//! a typed error instead of an attempt to allocate gigabytes.
//!
//! Keys of ordered disk tables need an *order-preserving* encoding, which bincode is not; that
//! lives in `dets` and does not use this module.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest single value we decode: 256 MiB. Larger claims are treated as corruption.
pub const DECODE_LIMIT: usize = 256 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Errors of encoding or decoding a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded (for example a map whose length serde cannot tell).
    #[error("cannot encode value: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not a valid encoding of the expected type (damaged, truncated, or written
    /// for another type).
    #[error("cannot decode value: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The bytes held a valid value followed by bytes that belong to nothing.
    #[error("{trailing} unexpected trailing byte(s) after a decoded value")]
    TrailingBytes {
        /// How many bytes were left over.
        trailing: usize,
    },
}

/// Encodes `value` into a fresh buffer.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Appends the encoding of `value` to `buf` (reuse one buffer on hot paths).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())?;
    buf.extend_from_slice(&bytes);
    Ok(())
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            trailing: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Decodes one value from the front of `bytes`; returns it and how many bytes it used.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    Ok(bincode::serde::decode_from_slice(bytes, config())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let v: (u64, String, Vec<i32>) = (7, "radio-7".into(), vec![-1, 2]);
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String, Vec<i32>)>(&bytes).unwrap(), v);
        assert!(decode::<(u64, String, Vec<i32>)>(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<(u64, String, Vec<i32>)>(&longer),
            Err(CodecError::TrailingBytes { trailing: 1 })
        ));
    }

    #[test]
    fn a_huge_length_claim_is_an_error_not_an_allocation() {
        // A Vec<u8> whose varint length prefix claims u64::MAX bytes.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
