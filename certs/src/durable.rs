//! Replacing a small file so that a reader or a crash never sees half of it.
//!
//! [`replace`] writes the new content to a temporary file in the same directory, created with
//! its final permissions (a private key is never readable by others, not even for a moment),
//! flushes it to disk, renames it over the target and syncs the directory so the rename itself
//! survives a crash. A hot-reload watcher reading the target sees the old file or the new one.
//! Used for generated keys and certificates and for the gateway's small state files.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Atomically and durably replaces `path` with `bytes`; a new file gets unix `mode`. On error
/// the target is unchanged and no temporary file is left behind.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = dir_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        // An existing temporary file keeps its old mode: set it again.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The content of a state file that [`replace`] keeps: `None` when it does not exist yet, as
/// long as its directory does (else [`replace`] could never write it: an error now).
pub fn read_state(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = dir_of(path);
            if dir.is_dir() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("directory {} does not exist", dir.display()),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

/// The directory `path` is in (`.` for a bare file name).
pub fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_replaced_whole_with_its_mode_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        std::fs::write(&p, "old").unwrap();
        replace(&p, b"new content", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new content");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.pem")]);
    }

    #[test]
    fn a_failed_write_leaves_the_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails.
        let p = dir.path().join("state");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), "x").unwrap();
        assert!(replace(&p, b"data", 0o644).is_err());
        assert!(p.join("inside").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state")]);
        // A missing directory is an error, not a panic.
        assert!(replace(&dir.path().join("no/such/file"), b"x", 0o644).is_err());
    }

    #[test]
    fn a_state_file_not_written_yet_is_none_unless_its_directory_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        assert_eq!(read_state(&p).unwrap(), None);
        replace(&p, b"x 1\n", 0o644).unwrap();
        assert_eq!(read_state(&p).unwrap().as_deref(), Some(&b"x 1\n"[..]));
        let e = read_state(&dir.path().join("gone/state")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
