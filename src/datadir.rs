//! The operator's data directory: created private (mode 0700) and locked for the lifetime of
//! the process, so that a second `tessera serve` on the same directory refuses to start instead
//! of "recovering" (failing) the first one's running jobs and voiding their holds.
//!
//! The lock is an OS advisory lock (`flock(2)`, through `nix::fcntl::Flock`) on the file
//! `tessera.lock` in the directory. The kernel drops it when the process ends, however
//! it ends (a crash or `kill -9` included), so a stale lock file never blocks a restart. The
//! file holds the pid of the process that holds the lock, so the refusal can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "tessera.lock";

/// Longest pid text read back from a lock file (bytes).
const PID_TEXT_BYTES_MAX: u64 = 32;

/// Why the data directory cannot be used.
#[derive(Debug)]
pub enum DataDirError {
    /// Another process holds the lock.
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The pid written by the holder, when it could be read.
        pid: Option<u32>,
    },
    /// The directory or the lock file could not be created, opened or written.
    Io {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl std::fmt::Display for DataDirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataDirError::InUse { dir, pid } => {
                write!(
                    f,
                    "data directory {} is in use by another tessera process (",
                    dir.display()
                )?;
                match pid {
                    Some(p) => write!(f, "pid {p}")?,
                    None => write!(f, "pid unknown")?,
                }
                write!(
                    f,
                    ", lock {}); stop it or choose another --data-dir",
                    dir.join(LOCK_FILE).display()
                )
            }
            DataDirError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for DataDirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataDirError::InUse { .. } => None,
            DataDirError::Io { source, .. } => Some(source),
        }
    }
}

/// The held lock on a data directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    #[cfg(unix)]
    _file: nix::fcntl::Flock<File>,
    #[cfg(not(unix))]
    _file: File,
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist, warns when an
/// existing one is readable by others, and takes its lock.
///
/// Errors: [`DataDirError::InUse`] when another process (or another lock in this one) holds
/// it; [`DataDirError::Io`] when the directory or lock file cannot be created or written.
pub fn lock(dir: &Path) -> Result<DataDirLock, DataDirError> {
    create_private_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| DataDirError::Io { what, source }
    };
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path).map_err(io("opening lock file"))?;
    #[cfg(unix)]
    let mut file = {
        use nix::errno::Errno;
        use nix::fcntl::{Flock, FlockArg};
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(DataDirError::InUse {
                    dir: dir.to_owned(),
                    pid: read_pid(&mut file),
                });
            }
            Err((_, e)) => return Err(io("locking")(std::io::Error::from(e))),
        }
    };
    #[cfg(not(unix))]
    let mut file = {
        tracing::warn!("data directory locking is only implemented on Unix");
        file
    };
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_all())
        .map_err(io("writing pid to"))?;
    Ok(DataDirLock { _file: file })
}

/// The pid the lock holder wrote, if it can be read.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(PID_TEXT_BYTES_MAX)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Creates `dir` and its missing parents with mode 0700 (owner only); an existing directory is
/// kept as it is, with a warning when group or others may read it.
fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    let existed = dir.is_dir();
    builder.create(dir).map_err(|source| DataDirError::Io {
        what: if dir.exists() && !existed {
            format!(
                "data directory {} exists but is not a directory",
                dir.display()
            )
        } else {
            format!("creating data directory {}", dir.display())
        },
        source,
    })?;
    #[cfg(unix)]
    if existed {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(dir) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{mode:03o}"),
                    "the data directory is accessible to other users; `chmod 700` it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = existed;
    Ok(())
}

/// A working directory a command made and marked as its own, locked for the run: an OS lock
/// (`flock(2)`) on the directory itself, so that a second run on it refuses instead of
/// clearing files under the first. Released when dropped or when the process ends.
#[derive(Debug)]
pub struct MarkedDir {
    _dir: nix::fcntl::Flock<File>,
}

/// Makes `dir` an empty working directory marked as `tessera {command}`'s (the file `marker`
/// in it), and locks it for the run. A directory that does not exist is created; an empty
/// one is used; one holding `marker` is emptied, after `before_clearing` agreed; any other
/// non-empty directory is refused, so the command never deletes files it did not write. The
/// directory is locked before anything in it is read or removed.
///
/// # Errors
/// Another run holds `dir`; `dir` is not empty and not marked, is not a directory, or cannot
/// be written; `before_clearing`'s.
pub fn prepare_marked(
    dir: &Path,
    marker: &str,
    command: &str,
    before_clearing: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<MarkedDir> {
    use anyhow::Context;
    if dir.exists() {
        anyhow::ensure!(
            dir.is_dir(),
            "{} exists and is not a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let handle = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let lock = match nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => anyhow::bail!(
            "another {command} is running on {}; wait for it or name another --dir",
            dir.display()
        ),
        Err((_, e)) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("locking {}", dir.display()));
        }
    };
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    if !entries.is_empty() {
        anyhow::ensure!(
            dir.join(marker).is_file(),
            "refusing to use {}: it is not empty and was not created by `tessera {command}` \
             (no {marker} file in it); name a new or empty directory with --dir",
            dir.display()
        );
        before_clearing()?;
        // On stderr: stdout may be a `--json` line that scripts parse.
        eprintln!(
            "clearing the earlier {command}'s files in {}",
            dir.display()
        );
        for e in entries {
            let path = e.path();
            let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
    }
    std::fs::write(
        dir.join(marker),
        format!(
            "created by `tessera {command}`; its next run on this directory deletes its contents\n"
        ),
    )
    .with_context(|| format!("writing {}", dir.join(marker).display()))?;
    Ok(MarkedDir { _dir: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_and_names_the_holder() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("op");
        let first = lock(&dir).expect("first lock");
        let err = lock(&dir).expect_err("second lock must be refused");
        match &err {
            DataDirError::InUse { dir: d, pid } => {
                assert_eq!(d, &dir);
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("unexpected error {other}"),
        }
        let text = err.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        lock(&dir).expect("free again once the holder is dropped");
    }

    #[cfg(unix)]
    #[test]
    fn a_new_data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        let _l = lock(&dir).expect("lock");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&dir.join(LOCK_FILE)), 0o600);
    }
}
