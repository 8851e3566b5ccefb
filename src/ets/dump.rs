//! `tab2file`/`file2tab`: the dump file format.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  b"FQETSTAB"
//! 8       4     format version, u32 little-endian (1)
//! 12      4     header length H, u32 little-endian
//! 16      H     header, crate::codec encoding of `Header`
//! 16+H    ...   `Header::objects` objects, each the crate::codec encoding of (K, V)
//! end-4   4     CRC32 (crc32fast) of every byte before it, u32 little-endian
//! ```
//!
//! Reading checks, in order: length, magic, version, checksum, header, key/value type names,
//! each object, object count, trailing bytes. Each failure is its own [`EtsError`] variant.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::EtsError;
use crate::codec;
use crate::table::TableType;

pub(crate) const MAGIC: [u8; 8] = *b"FQETSTAB";
pub(crate) const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) table_type: TableType,
    pub(crate) name: Option<String>,
    pub(crate) key_type: String,
    pub(crate) value_type: String,
    pub(crate) objects: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EtsError + '_ {
    move |source| EtsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the dump to `path.tmp`, syncs it, then renames it over `path`: a crash leaves the
/// old dump or the new one, never half of one.
pub(crate) fn write<K: Serialize, V: Serialize>(
    path: &Path,
    header: &Header,
    objects: &[(K, V)],
) -> Result<(), EtsError> {
    let mut bytes = Vec::with_capacity(64 + objects.len() * 8);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    let head = codec::encode(header)?;
    let head_len = u32::try_from(head.len()).map_err(|_| EtsError::Corrupt("header too long"))?;
    bytes.extend_from_slice(&head_len.to_le_bytes());
    bytes.extend_from_slice(&head);
    for obj in objects {
        codec::encode_into(obj, &mut bytes)?;
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());

    let mut tmp = PathBuf::from(path);
    let mut file_name = path.file_name().unwrap_or_default().to_os_string();
    file_name.push(".tmp");
    tmp.set_file_name(file_name);
    {
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        w.write_all(&bytes).map_err(io_err(&tmp))?;
        let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

/// Reads and verifies a dump of `(K, V)` objects.
pub(crate) fn read<K: DeserializeOwned, V: DeserializeOwned>(
    path: &Path,
) -> Result<(Header, Vec<(K, V)>), EtsError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let n = bytes.len();
    let magic_part = &bytes[..n.min(MAGIC.len())];
    if magic_part != &MAGIC[..magic_part.len()] {
        return Err(EtsError::BadMagic);
    }
    if n < 16 + 4 {
        return Err(EtsError::Truncated("shorter than the fixed header"));
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[8..12]);
    let version = u32::from_le_bytes(version);
    if version != VERSION {
        return Err(EtsError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let (body, crc_bytes) = bytes.split_at(n - 4);
    let mut stored = [0u8; 4];
    stored.copy_from_slice(crc_bytes);
    let stored = u32::from_le_bytes(stored);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(EtsError::ChecksumMismatch { stored, computed });
    }
    let mut head_len = [0u8; 4];
    head_len.copy_from_slice(&body[12..16]);
    let head_len = u32::from_le_bytes(head_len) as usize;
    let head_end = 16usize
        .checked_add(head_len)
        .filter(|&e| e <= body.len())
        .ok_or(EtsError::Truncated("header runs past the end"))?;
    let header: Header = codec::decode(&body[16..head_end])?;
    let key_type = std::any::type_name::<K>();
    let value_type = std::any::type_name::<V>();
    if header.key_type != key_type || header.value_type != value_type {
        return Err(EtsError::WrongType {
            expected: format!("<{key_type}, {value_type}>"),
            found: format!(
                "{}<{}, {}>",
                header.table_type, header.key_type, header.value_type
            ),
        });
    }
    let mut rest = &body[head_end..];
    // Never trust the count for a pre-allocation: each object takes at least one byte.
    let cap = usize::try_from(header.objects)
        .unwrap_or(usize::MAX)
        .min(rest.len());
    let mut objects = Vec::with_capacity(cap);
    for _ in 0..header.objects {
        if rest.is_empty() {
            return Err(EtsError::Corrupt("fewer objects than the header declares"));
        }
        let (obj, used): ((K, V), usize) = codec::decode_prefix(rest)?;
        objects.push(obj);
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        return Err(EtsError::Corrupt("bytes after the declared objects"));
    }
    Ok((header, objects))
}
