//! Reading a model directory's text files (configs, indexes, tokenizers) safely: only a
//! regular file is opened (a FIFO or device would block or never end) and at most a limit
//! of bytes is read, so a damaged or hostile directory gets a clear error, not a hang or
//! the memory exhausted.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest JSON side file read (configs, indexes, tokenizer configs with chat templates).
pub const JSON_LIMIT: u64 = 64 << 20;
/// Largest tokenizer.json read (the largest vocabularies' are tens of MiB).
pub const TOKENIZER_LIMIT: u64 = 1 << 30;

/// Whether anything is at `path`: a file, a directory, or a link, also one to nothing (a
/// Hugging Face snapshot is links into its cache: one whose blob is gone is a file to report
/// as broken, not one to skip as absent).
pub fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Checks that `path` is a regular file (following links) of at most `limit` bytes.
pub fn check_regular(path: &Path, limit: u64) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dangling = std::fs::symlink_metadata(path).is_ok();
            return Err(Error::file(
                path,
                match dangling {
                    true => "is a symbolic link to nothing (broken or looping)".to_string(),
                    false => "file not found".to_string(),
                },
            ));
        }
        Err(e) => return Err(Error::file(path, format!("cannot read: {e}"))),
    };
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a pipe, socket or device)"
        };
        return Err(Error::file(
            path,
            format!("is {kind}, where a file was expected"),
        ));
    }
    if meta.len() > limit {
        return Err(Error::file(
            path,
            format!(
                "is {} bytes, more than the {} such a file may have",
                meta.len(),
                limit
            ),
        ));
    }
    Ok(())
}

/// The UTF-8 text of the regular file `path`, of at most `limit` bytes, without a leading
/// byte-order mark (some editors save JSON with one; it is no part of the text).
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    check_regular(path, limit)?;
    let file =
        std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    // The size was checked; a file growing meanwhile is cut at the limit.
    let text = read_utf8(file, limit).map_err(|message| Error::file(path, message))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Parses JSON `text` read from `path`; an error names the file, and says whether the
/// text is not JSON or holds the wrong content (serde_json gives the line and column).
pub fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "unexpected content",
            _ => "invalid JSON",
        };
        Error::file(path, format!("{what}: {e}"))
    })
}

/// At most `limit` bytes of UTF-8 text from `reader` (a file, a pipe, standard input: an
/// endless source is cut at the limit, never unbounded memory); else what is wrong, for the
/// caller to name the source.
pub fn read_utf8(reader: impl Read, limit: u64) -> std::result::Result<String, String> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "holds more than {limit} bytes ({} MiB), the most read from it",
            limit >> 20
        ));
    }
    if let [a @ (0xff | 0xfe), b @ (0xff | 0xfe), ..] = bytes[..] {
        if a != b {
            return Err(format!(
                "is UTF-16 text (byte-order mark {a:02X} {b:02X}), not UTF-8: save it as UTF-8"
            ));
        }
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = std::env::temp_dir().join(format!("moxe-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok.json");
        std::fs::write(&ok, "{}").unwrap();
        assert_eq!(read_text(&ok, 2).unwrap(), "{}");
        let marked = dir.join("bom.json");
        std::fs::write(&marked, "\u{feff}{}").unwrap();
        assert_eq!(read_text(&marked, 5).unwrap(), "{}", "the mark is dropped");
        let err = read_text(&ok, 1).unwrap_err().to_string();
        assert!(err.contains("2 bytes, more than the 1"), "{err}");
        let err = read_text(&dir, 10).unwrap_err().to_string();
        assert!(err.contains("a directory"), "{err}");
        let err = read_text(&dir.join("none"), 10).unwrap_err().to_string();
        assert!(err.contains("file not found"), "{err}");
        #[cfg(unix)]
        {
            let link = dir.join("dangling");
            std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
            let err = read_text(&link, 10).unwrap_err().to_string();
            assert!(err.contains("symbolic link to nothing"), "{err}");
            let fifo = dir.join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if made.is_ok_and(|s| s.success()) {
                let err = read_text(&fifo, 10).unwrap_err().to_string();
                assert!(err.contains("not a regular file"), "{err}");
            }
        }
        let bad = dir.join("latin1.json");
        std::fs::write(&bad, b"{\"a\": \"\xe9\"}").unwrap();
        let err = read_text(&bad, 100).unwrap_err().to_string();
        assert!(
            err.contains("not UTF-8") && err.contains("offset 7"),
            "{err}"
        );
        let wide = dir.join("utf16.txt");
        std::fs::write(&wide, b"\xff\xfeH\0i\0").unwrap();
        let err = read_text(&wide, 100).unwrap_err().to_string();
        assert!(
            err.contains("is UTF-16 text (byte-order mark FF FE)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
