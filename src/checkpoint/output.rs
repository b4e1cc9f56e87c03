//! Files the engine writes for a user (logits, per-token NLLs, session states): whole or not
//! at all.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `data` to `path` whole or not at all: into a hidden file beside it, synced to
/// disk, then renamed over `path`. A full disk or a crash leaves whatever was at `path`
/// untouched, never a truncated file, and the error names `path`.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let Some(name) = path.file_name() else {
        return Err(Error::file(path, "not a file path"));
    };
    let partial = path.with_file_name(format!(".{}.moxe-partial", name.to_string_lossy()));
    let written = std::fs::File::create(&partial).and_then(|mut file| {
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    });
    written.map_err(|e| {
        // Best effort: the write's own error is the one to report.
        let _ = std::fs::remove_file(&partial);
        Error::file(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_partial_one() {
        let dir = std::env::temp_dir().join(format!("moxe-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.bin");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        // A directory where the file should go: the rename fails, nothing is left behind.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let err = write_atomically(&blocked, b"x").unwrap_err().to_string();
        assert!(
            err.contains("blocked") && err.contains("cannot write"),
            "{err}"
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.ends_with(".moxe-partial")),
            "{names:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
