//! Files that hold a party's secrets.

use std::path::Path;

/// Creates `path`, which must not exist, readable and writable by the owner only (mode 0600
/// from the moment it exists, never wider; on other systems, the platform's default).
///
/// # Errors
/// The file system's, including `AlreadyExists` when `path` exists.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}
