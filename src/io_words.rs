//! I/O errors in words: the one place that turns an `std::io::Error` (or a storage engine's
//! debug dump of one) into the short text every error message of the crate uses.
//!
//! `std::io::Error`'s own `Display` ends in `(os error 28)`, and its `Debug` (which sled puts in
//! some of its messages) is `Os { code: 28, kind: StorageFull, .. }`; users get "disk full".

use std::io::{Error, ErrorKind};

/// The words for an I/O error: "disk full", "permission denied", ..., or the system's message
/// without its `(os error N)` suffix.
pub fn io_words(e: &Error) -> String {
    if let Some(w) = kind_words(e.kind()) {
        return w.to_string();
    }
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn kind_words(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::StorageFull => "disk full",
        ErrorKind::QuotaExceeded => "disk quota exceeded",
        ErrorKind::PermissionDenied => "permission denied",
        ErrorKind::NotFound => "no such file or directory",
        ErrorKind::ReadOnlyFilesystem => "read-only file system",
        ErrorKind::AlreadyExists => "already exists",
        ErrorKind::IsADirectory => "is a directory",
        ErrorKind::NotADirectory => "not a directory",
        ErrorKind::BrokenPipe => "broken pipe",
        ErrorKind::UnexpectedEof => "unexpected end of file",
        _ => return None,
    })
}

/// A storage engine's message in words: sled's `backtrace ()` tails are cut, an embedded
/// `Os { code: N, .. }` debug dump becomes its words, `Some(Inline(N))` offsets become `N`.
pub fn engine_words(detail: &str) -> String {
    let mut text = match detail.find(" backtrace") {
        Some(i) => detail[..i].to_string(),
        None => detail.to_string(),
    };
    if let Some(i) = text.find("Os { code: ") {
        let code: String = text[i + 11..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let words = code
            .parse::<i32>()
            .map(|c| io_words(&Error::from_raw_os_error(c)))
            .unwrap_or_else(|_| "I/O error".to_string());
        // The dump runs to its closing brace.
        let end = text[i..].find('}').map_or(text.len(), |j| i + j + 1);
        text.replace_range(i..end, &words);
    }
    for (from, to) in [("Read corrupted data", "damaged data"), ("IO error: ", "")] {
        text = text.replace(from, to);
    }
    // sled's file offsets print as `Some(Inline(96))`: keep the number.
    for wrapper in ["Some(", "Inline("] {
        while let Some(i) = text.find(wrapper) {
            let Some(j) = closing(&text[i..]) else {
                break;
            };
            let inner = text[i + wrapper.len()..i + j].to_string();
            text.replace_range(i..i + j + 1, &inner);
        }
    }
    text.trim().to_string()
}

/// The offset in `text` of the parenthesis closing its first `(`.
fn closing(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_in_words() {
        let e = Error::from_raw_os_error(28);
        assert_eq!(io_words(&e), "disk full");
        let dbg = format!("IO error: {e:?}");
        assert!(dbg.contains("Os { code: 28"), "{dbg}");
        assert_eq!(engine_words(&dbg), "disk full");
    }

    #[test]
    fn no_os_error_suffix_or_backtrace() {
        let e = Error::from_raw_os_error(5); // EIO
        assert!(!io_words(&e).contains("os error"), "{}", io_words(&e));
        assert_eq!(
            engine_words("Read corrupted data at file offset Some(4096) backtrace ()"),
            "damaged data at file offset 4096"
        );
        assert_eq!(
            engine_words("Read corrupted data at file offset Some(Inline(96)) backtrace ()"),
            "damaged data at file offset 96"
        );
        assert_eq!(
            engine_words("at Some(Inline(96)) (while reading)"),
            "at 96 (while reading)"
        );
    }
}
