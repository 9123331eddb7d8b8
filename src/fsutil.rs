//! Small file helpers for secrets at rest.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file in the same directory is
/// written, synced and renamed over the target, so a crash leaves either the old file or the new
/// one, never half of either, and the secret is never readable by others even briefly.
///
/// # Errors
/// Any I/O failure; the target is then unchanged.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` and its missing parents with exactly `mode`, whatever the process umask (the
/// umask can only remove bits at creation; the mode is set again afterwards so a strict umask
/// cannot make a directory that others must reach unreachable). Directories that already
/// exist are left as the operator made them.
///
/// # Errors
/// Any I/O failure, or a path component that exists and is not a directory.
pub fn create_dir_all_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mut missing = Vec::new();
    let mut p = path;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} is not a directory", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(p);
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?,
            // Another process created it meanwhile: it is theirs, leave it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a file meant to be read by others (certificates, bundles) with mode 0644 at most: never
/// group- or world-writable, whatever the umask (`std::fs::write` would give 0666 under
/// `umask 000`). A stricter umask still narrows it.
///
/// # Errors
/// Any I/O failure.
pub fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(path)?;
    let mode = f.metadata()?.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(mode & !0o022))?;
    }
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn create_dir_all_mode_sets_exact_mode_on_created_dirs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let existing = tmp.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o711)).unwrap();
        let deep = existing.join("a/b");
        create_dir_all_mode(&deep, 0o700).unwrap();
        assert_eq!(mode(&existing.join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        assert_eq!(mode(&existing), 0o711, "a directory that existed is left alone");
        // A mode wider than a strict umask would allow is still what the directory gets.
        let wide = tmp.path().join("wide");
        create_dir_all_mode(&wide, 0o755).unwrap();
        assert_eq!(mode(&wide), 0o755);
        // A file in the way is an error naming it.
        std::fs::write(tmp.path().join("f"), b"").unwrap();
        let err = create_dir_all_mode(&tmp.path().join("f/x"), 0o700).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("not a directory"), "{err}");
    }

    #[test]
    fn write_public_is_never_group_or_world_writable() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("cert.pem");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_public(&p, b"new").unwrap();
        assert_eq!(mode(&p), 0o644);
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
