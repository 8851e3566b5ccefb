//! The high-water mark beside a disk table: how many times [`DiskTable::sync`](super::DiskTable::sync)
//! has completed, kept in a small file of its own (`freqalloc-dets.mark`) and, in the same
//! counter, as a record in sled's log.
//!
//! Why: sled recovers a damaged or truncated log by cutting it at the first bad entry, silently.
//! After a clean close the state file's counts reveal that; after a crash (SIGKILL) there are no
//! counts to compare. Each `sync` therefore writes the next sync number into the log *before*
//! flushing it, and only after the flush and `fdatasync` writes the same number to the mark file
//! (and `fdatasync`s it). At open the log's number can be ahead of the file's (a crash between the
//! two writes: nothing acknowledged is missing) but never behind it: behind means the log lost
//! writes that a completed sync had made durable, and the table refuses to open.
//!
//! The file is 16 bytes, written in place: the number and its complement, so a torn or zeroed
//! file is told apart from a real mark.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::DetsError;

/// The mark file's name inside a table's directory.
pub(super) const MARK_FILE: &str = "freqalloc-dets.mark";
/// The key of the sync number in the meta tree.
pub(super) const MARK_KEY: &[u8] = b"synced";

/// The open mark file.
pub(super) struct MarkFile {
    file: File,
}

fn io(path: &Path, source: std::io::Error) -> DetsError {
    DetsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl MarkFile {
    /// Opens (creating if absent) the mark file of the table in `dir`; returns it with the mark
    /// it holds (0 for a new or empty file). A non-regular file there is refused.
    pub(super) fn open(dir: &Path) -> Result<(MarkFile, u64), DetsError> {
        let path = dir.join(MARK_FILE);
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_file() {
                return Err(super::corrupted(
                    dir,
                    format!("{MARK_FILE} is not a regular file"),
                ));
            }
        }
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(dir, e))?;
        if !existed {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(dir, e))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io(dir, e))?;
        let mark = decode(&bytes).ok_or_else(|| {
            super::corrupted(
                dir,
                format!("{MARK_FILE} is damaged ({} bytes)", bytes.len()),
            )
        })?;
        Ok((MarkFile { file }, mark))
    }

    /// Records `mark` durably (in place, then `fdatasync`).
    pub(super) fn write(&self, mark: u64) -> std::io::Result<()> {
        self.file.write_all_at(&encode(mark), 0)?;
        self.file.sync_data()
    }
}

fn encode(mark: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&mark.to_le_bytes());
    out[8..].copy_from_slice(&(!mark).to_le_bytes());
    out
}

/// The mark in `bytes`: `Some(0)` for an empty file, `None` when damaged.
fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return Some(0);
    }
    let bytes: &[u8; 16] = bytes.try_into().ok()?;
    let mark = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let check = u64::from_le_bytes(bytes[8..].try_into().ok()?);
    (check == !mark).then_some(mark)
}

/// The sync number recorded in the log (0 when none is).
pub(super) fn decode_logged(bytes: Option<&[u8]>) -> Option<u64> {
    match bytes {
        None => Some(0),
        Some(b) => Some(u64::from_le_bytes(b.try_into().ok()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_damage_is_seen() {
        for m in [0, 1, 77, u64::MAX] {
            assert_eq!(decode(&encode(m)), Some(m));
        }
        assert_eq!(decode(&[]), Some(0));
        assert_eq!(decode(&[0u8; 16]), None);
        assert_eq!(decode(&encode(5)[..9]), None);
        assert_eq!(decode_logged(Some(&[1, 2])), None);
        assert_eq!(decode_logged(Some(&9u64.to_le_bytes())), Some(9));
    }
}
