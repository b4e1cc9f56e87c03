//! Files the engine writes for a user (logits, per-token NLLs, session states): whole or not
//! at all.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Whether [`write_atomically`] may write `path`: `Ok(false)` when nothing is there,
/// `Ok(true)` for a regular file (which the write replaces), and an error naming `path` for
/// anything else: a directory, a symbolic link (the rename would replace the link, not its
/// target), a device, FIFO or socket (it would become a regular file), or a missing parent
/// directory (known before any work, not after it).
pub fn check_target(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(m) => {
            let what = if m.is_dir() {
                "a directory"
            } else if m.file_type().is_symlink() {
                "a symbolic link (a write would replace the link, not its target)"
            } else {
                "not a regular file (a device, FIFO or socket)"
            };
            Err(Error::file(
                path,
                format!("is {what}; give the path of a regular file"),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // `dir/`, `dir/.`, `dir/..`: a directory whatever exists (Path's components hide
            // the trailing separator and `.`).
            let text = path.as_os_str().to_string_lossy();
            let last = text.rsplit(std::path::is_separator).next().unwrap_or("");
            if matches!(last, "" | "." | "..") {
                return Err(Error::file(
                    path,
                    "names a directory (it ends in a path separator, '.' or '..'); give the \
                     path of a file",
                ));
            }
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if parent.is_dir() {
                Ok(false)
            } else {
                Err(Error::file(
                    path,
                    format!(
                        "cannot be written: the directory {} does not exist",
                        parent.display()
                    ),
                ))
            }
        }
        Err(e) => Err(Error::file(path, format!("cannot examine: {e}"))),
    }
}

/// Writes `data` to `path` whole or not at all: into a hidden file beside it, synced to
/// disk, then renamed over `path`. A full disk or a crash leaves whatever was at `path`
/// untouched, never a truncated file, and the error names `path`. Only a regular file is
/// replaced ([`check_target`]).
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let Some(name) = path.file_name() else {
        return Err(Error::file(path, "not a file path"));
    };
    check_target(path)?;
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
            err.contains("blocked") && err.contains("is a directory"),
            "{err}"
        );
        // Links, devices and FIFOs are not replaced by a regular file; a missing directory
        // is named.
        #[cfg(unix)]
        {
            let link = dir.join("link");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            let err = write_atomically(&link, b"x").unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), b"second");
            let dangling = dir.join("dangling");
            std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
            assert!(check_target(&dangling).is_err());
            let err = check_target(Path::new("/dev/null"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        let err = check_target(&dir.join("missing/out.bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        for end in ["/", "/.", "/.."] {
            let named = format!("{}{end}", dir.join("newdir").display());
            let err = check_target(Path::new(&named)).unwrap_err().to_string();
            assert!(err.contains("names a directory"), "{err}");
        }
        assert!(!check_target(&dir.join("new.bin")).unwrap());
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
