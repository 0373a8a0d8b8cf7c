//! An `ecdh-oprf` PSI task ([`tessera_psi::ecdh_oprf`]): PSI for unbalanced sets, the larger
//! set encoded once and reused.
//!
//! The provider's worker keeps its dataset's encoded set (its OPRF key and the sorted
//! encodings, 16 bytes per distinct key) in `WORK/ecdh-oprf/sets/`, one file per **licence**
//! and **dataset content** (0600: it holds the key): the first job of a licence prepares it
//! (progress phase `prepare`), later jobs of that licence read it back; a file of the licence
//! made from other content (another dataset file, other key settings) is removed when the new
//! one is made, and no file is used for another licence, so no two buyers share a key. The
//! buyer's worker keeps the encodings it received in `WORK/ecdh-oprf/received/`, named by the
//! set's id: a later job against the same set receives none of them. Beside each encoded set
//! the provider's worker keeps its query index (`.query`, [`tessera_psi::oprf_query`]), built
//! right after the set (or at the next job, for a set prepared before the index existed),
//! through which a buyer with a small set looks its keys up instead of receiving the set: the
//! buyer's worker takes whichever moves fewer bytes ([`Lookup::Auto`]), and a copy it already
//! keeps. Files of either kind not used for [`ENCODED_SET_KEEP_SECS`] go when a task of this
//! kind starts.
//!
//! The receiver reads its keys (and carried columns) into memory, as a size-mode task does:
//! `ecdh-oprf` is for a small buyer set against a large one (or the reverse), not bucketed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use tessera_core::table::{
    KeySpec, TableError, read_keys_keeping, stream_keys, try_write_result_csv,
};
use tessera_core::{TaskRole, TaskSpec};
use tessera_psi::ecdh_oprf::{EncodedSet, Lookup};
use tessera_psi::oprf_query::QueryIndex;
use tessera_psi::{Mode, PsiError};

use crate::exec::{
    DeliverySink, ExecEnv, SinkGate, TaskError, TaskOutcome, open_link, private_dir, psi_config,
    psi_task_error, safe_name,
};

/// How long an encoded set (the provider's, or a buyer's copy) is kept unused: 30 days.
pub const ENCODED_SET_KEEP_SECS: u64 = 30 * 24 * 3600;
/// Progress phase: the provider's encoded set being prepared (`total` 0 until known).
pub const PHASE_PREPARE: &str = "prepare";
/// Progress phase: the provider's query index being built (rows of the index).
pub const PHASE_INDEX: &str = "index";
/// Rows fed to the encoder at once while a set is prepared.
const PREPARE_BATCH_ROWS: usize = 1 << 16;

/// The cache directory of `ecdh-oprf` under the worker's work directory.
pub(crate) fn cache_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("ecdh-oprf")
}

/// Runs an `ecdh-oprf` task (see the module docs).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    env: &ExecEnv,
    spec: &TaskSpec,
    path: PathBuf,
    key_spec: KeySpec,
    out_path: Option<PathBuf>,
    header: Vec<String>,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let cache = cache_dir(&env.work_dir);
    let made = private_dir(&cache.join("sets")).and_then(|()| private_dir(&cache.join("received")));
    made.map_err(|e| TaskError::Internal(format!("cannot make {}: {e}", cache.display())))?;
    sweep(&cache, ENCODED_SET_KEEP_SECS);
    let cfg = psi_config(spec, Mode::Intersection);
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    match spec.role {
        TaskRole::Sender => {
            let (set, index, rows, empty_keys) =
                prepared_set(&cache.join("sets"), spec, &path, &key_spec, &progress).await?;
            let link = open_link(env, spec).await?;
            let gate = SinkGate {
                sink: delivery,
                rows_in: rows,
            };
            let (p2, k2) = (path.clone(), key_spec.clone());
            let items: Box<dyn FnOnce() -> Result<Vec<Vec<u8>>, PsiError> + Send> =
                Box::new(move || {
                    read_keys_keeping(&p2, &k2, &[])
                        .map(|input| input.keys)
                        .map_err(|e| {
                            PsiError::InvalidConfig(format!("re-reading the dataset: {e}"))
                        })
                });
            let ran = tessera_psi::ecdh_oprf::run_sender(
                &link,
                &set,
                index.as_ref(),
                items,
                &cfg,
                &mut rng,
                progress.as_ref(),
                &gate,
            )
            .await;
            if let (Err(PsiError::Storage(e)), Some(ix)) = (&ran, &index) {
                // Damaged since it was checked: the next job builds it again.
                tracing::warn!(error = %e, "the query index was damaged: removing it");
                forget_checked(ix.path());
                let _ = std::fs::remove_file(ix.path());
            }
            ran.map_err(psi_task_error)?;
            Ok(TaskOutcome {
                rows_in: rows,
                empty_keys,
                link: tessera_core::Link::stats(&link),
                ..TaskOutcome::default()
            })
        }
        TaskRole::Receiver => {
            progress.report("read", 0, 0);
            let keep = header.clone();
            let input =
                tokio::task::spawn_blocking(move || read_keys_keeping(&path, &key_spec, &keep))
                    .await
                    .map_err(|e| TaskError::Internal(format!("reader task: {e}")))?
                    .map_err(|e| TaskError::Input(e.to_string()))?;
            progress.report("read", input.rows, input.rows);
            let link = open_link(env, spec).await?;
            let out = tessera_psi::ecdh_oprf::run_receiver(
                &link,
                &input.keys,
                &cache.join("received"),
                &cfg,
                Lookup::Auto,
                &mut rng,
                progress.as_ref(),
            )
            .await
            .map_err(psi_task_error)?;
            let mut outcome = TaskOutcome {
                rows_in: input.rows,
                empty_keys: input.empty_keys,
                result_size: Some(out.intersection_size),
                link: tessera_core::Link::stats(&link),
                ..TaskOutcome::default()
            };
            if let Some(out_path) = out_path {
                let common: std::collections::HashSet<Vec<u8>> = out
                    .intersection
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|i| input.keys.get(i).cloned())
                    .collect();
                let (keys, kept) = (input.keys, input.kept);
                let written = tokio::task::spawn_blocking(move || {
                    let rows = keys
                        .iter()
                        .zip(kept)
                        .filter(|(k, _)| common.contains(*k))
                        .map(|(_, v)| Ok::<_, TableError>(v));
                    try_write_result_csv(&out_path, &header, rows)
                })
                .await
                .map_err(|e| TaskError::Internal(format!("writer task: {e}")))?
                .map_err(crate::exec::result_write_error)?;
                outcome.result_file = Some(written);
                outcome.result_location = spec.output.clone();
            }
            Ok(outcome)
        }
    }
}

/// The provider's encoded set for this licence and dataset content: read back when it was
/// prepared before, else prepared now (and older ones of the licence removed), with its query
/// index (built if missing; `None`, with a warning, if it cannot be: the buyer then receives
/// the set). Returns the set, the index, the rows read and the empty keys (from the file's
/// sidecar, or from this read).
async fn prepared_set(
    dir: &Path,
    spec: &TaskSpec,
    path: &Path,
    key_spec: &KeySpec,
    progress: &Arc<dyn tessera_psi::Progress>,
) -> Result<(EncodedSet, Option<QueryIndex>, u64, u64), TaskError> {
    let stop = StopOnDrop(Arc::default());
    // The set's lock is held until its index is there too.
    let (set, file, rows, empty, _one_at_a_time) =
        encoded_set(dir, spec, path, key_spec, progress, &stop).await?;
    let set = Arc::new(set);
    let query = file.with_extension("query");
    let (set2, stopped, reporter) = (set.clone(), stop.0.clone(), progress.clone());
    let index = tokio::task::spawn_blocking(move || {
        if !tessera_psi::oprf_query::lookup_may_pay(set2.len()) {
            // A copy of so small a set always moves fewer bytes than a lookup.
            let _ = std::fs::remove_file(&query);
            return Ok(None);
        }
        match QueryIndex::open(&query, set2.id()) {
            Ok(Some(ix)) if checked(&query) => return Ok(Some(ix)),
            Ok(Some(ix)) => {
                // Not checked since the file last changed (or since this worker started):
                // damage is found here, before the run's delivery point, not after it.
                reporter.report(PHASE_INDEX, 0, u64::from(ix.rows()));
                match ix.verify() {
                    Ok(()) => {
                        mark_checked(&query);
                        reporter.report(PHASE_INDEX, u64::from(ix.rows()), u64::from(ix.rows()));
                        return Ok(Some(ix));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a damaged query index: building it again");
                        let _ = std::fs::remove_file(&query);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a damaged query index: building it again");
                let _ = std::fs::remove_file(&query);
            }
        }
        let t = std::time::Instant::now();
        let ix = set2.build_query_index(&query, &|done, total| {
            if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(PsiError::Internal("the task was stopped".into()));
            }
            reporter.report(PHASE_INDEX, done, total);
            Ok(())
        })?;
        tracing::info!(
            index_rows = ix.rows(),
            secs = t.elapsed().as_secs_f64(),
            "query index built"
        );
        mark_checked(&query);
        Ok::<_, PsiError>(Some(ix))
    })
    .await
    .map_err(|e| TaskError::Internal(format!("building the query index: {e}")))?;
    let index = match index {
        Ok(ix) => ix,
        Err(_) if stop.0.load(std::sync::atomic::Ordering::SeqCst) => {
            return Err(TaskError::Cancelled(
                "the task was stopped while its query index was built".into(),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no query index: a buyer receives the encoded set");
            None
        }
    };
    let set = Arc::try_unwrap(set)
        .map_err(|_| TaskError::Internal("the encoded set is shared".into()))?;
    Ok((set, index, rows, empty))
}

/// The encoded set of [`prepared_set`], its file, and the set's lock, held.
async fn encoded_set(
    dir: &Path,
    spec: &TaskSpec,
    path: &Path,
    key_spec: &KeySpec,
    progress: &Arc<dyn tessera_psi::Progress>,
    stop: &StopOnDrop,
) -> Result<PreparedSet, TaskError> {
    let licence = spec
        .licence
        .as_ref()
        .map(|l| l.licence_id.clone())
        .ok_or_else(|| TaskError::Ticket("an ecdh-oprf task names no licence".into()))?;
    let fingerprint = {
        let (spec2, path2) = (spec.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || crate::exec::input_fingerprint(0, &spec2, &path2))
            .await
            .map_err(|e| TaskError::Internal(format!("fingerprint task: {e}")))?
    };
    let prefix = format!("{}-", safe_name(&licence));
    let file = dir.join(format!("{prefix}{}.set", &fingerprint[..32]));
    // One preparation of a set at a time: a second job of the licence waits for it and reuses
    // it (rather than preparing the same set beside it).
    let lock = {
        let mut locks = PREPARING.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|(_, l)| Arc::strong_count(l) > 1);
        match locks.iter().find(|(p, _)| *p == file) {
            Some((_, l)) => l.clone(),
            None => {
                let l = Arc::new(tokio::sync::Mutex::new(()));
                locks.push((file.clone(), l.clone()));
                l
            }
        }
    };
    let one_at_a_time = lock.lock_owned().await;
    // A task dropped (cancelled) while it prepares stops the preparation at its next row.
    let counts = file.with_extension("counts");
    let (f2, c2) = (file.clone(), counts.clone());
    let kept = tokio::task::spawn_blocking(move || -> Option<(EncodedSet, u64, u64)> {
        let set = match EncodedSet::read(&f2) {
            Ok(Some(set)) => set,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "a damaged encoded set: preparing it again");
                return None;
            }
        };
        let counts = std::fs::read_to_string(&c2).ok();
        let Some((rows, empty)) = counts.and_then(|text| parse_counts(&text, set.id())) else {
            tracing::warn!("the encoded set's counts do not match it: preparing it again");
            return None;
        };
        // Its time is its last use (the sweep's clock).
        let _ = std::fs::File::options()
            .append(true)
            .open(&f2)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some((set, rows, empty))
    })
    .await
    .map_err(|e| TaskError::Internal(format!("reading the encoded set: {e}")))?;
    if let Some((set, rows, empty)) = kept {
        tracing::info!(job = %spec.job_id, encodings = set.len(), "the licence's encoded set is reused");
        progress.report(PHASE_PREPARE, rows, rows);
        return Ok((set, file, rows, empty, one_at_a_time));
    }
    progress.report(PHASE_PREPARE, 0, 0);
    let (path, key_spec, reporter) = (path.to_owned(), key_spec.clone(), progress.clone());
    let (dir2, file2) = (dir.to_owned(), file.clone());
    let stopped = stop.0.clone();
    tokio::task::spawn_blocking(move || {
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        let mut builder = EncodedSet::builder(&mut rng);
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(PREPARE_BATCH_ROWS);
        let mut failed = None;
        let mut done = 0u64;
        let read = stream_keys(&path, &key_spec, &[], |key, _| {
            if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(TableError::Io("the task was stopped".into()));
            }
            batch.push(key);
            if batch.len() == PREPARE_BATCH_ROWS {
                if let Err(e) = builder.add(&batch) {
                    failed = Some(e);
                    return Err(TableError::Io("encoding the dataset".into()));
                }
                done += batch.len() as u64;
                batch.clear();
                reporter.report(PHASE_PREPARE, done, 0);
            }
            Ok(())
        });
        if stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(TaskError::Cancelled(
                "the task was stopped while its encoded set was prepared".into(),
            ));
        }
        let counts = match (failed, read) {
            (Some(e), _) => return Err(TaskError::Input(format!("encoding the dataset: {e}"))),
            (None, Err(e)) => return Err(TaskError::Input(e.to_string())),
            (None, Ok(c)) => c,
        };
        builder
            .add(&batch)
            .map_err(|e| TaskError::Input(format!("encoding the dataset: {e}")))?;
        let set = builder.finish();
        // The licence's sets made from other content go: never two keys for one licence.
        if let Ok(entries) = std::fs::read_dir(&dir2) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        set.write(&file2)
            .map_err(|e| TaskError::Internal(format!("keeping the encoded set: {e}")))?;
        write_private(
            &file2.with_extension("counts"),
            &counts_text(counts.rows, counts.empty_keys, set.id()),
        )
        .map_err(|e| TaskError::Internal(format!("keeping the encoded set: {e}")))?;
        reporter.report(PHASE_PREPARE, counts.rows, counts.rows);
        Ok((set, counts.rows, counts.empty_keys))
    })
    .await
    .map_err(|e| TaskError::Internal(format!("preparing the encoded set: {e}")))?
    .map(|(set, rows, empty)| (set, file, rows, empty, one_at_a_time))
}

/// The sidecar of an encoded set: its rows and empty keys read, bound to the set's id.
fn counts_text(rows: u64, empty: u64, set_id: [u8; 16]) -> String {
    format!("{rows} {empty} {}\n", hex::encode(set_id))
}

/// The rows and empty keys of a sidecar written by [`counts_text`] for the set `set_id`;
/// `None` for any other text.
fn parse_counts(text: &str, set_id: [u8; 16]) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace();
    let rows = it.next()?.parse().ok()?;
    let empty = it.next()?.parse().ok()?;
    let id_ok = it.next()? == hex::encode(set_id);
    (id_ok && empty <= rows && it.next().is_none()).then_some((rows, empty))
}

/// Writes `text` to a new file at `path` (0600), replacing one there.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// What identifies a file's content since it was checked: device, inode, size and change
/// time (which every write moves and no caller can set back).
type FileStamp = (u64, u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.ctime(), m.ctime_nsec()))
}

/// Query indexes this worker built or checked against their digest, as they were then.
static CHECKED: std::sync::Mutex<Vec<(PathBuf, FileStamp)>> = std::sync::Mutex::new(Vec::new());

/// Whether the index at `path` was checked (or built) by this worker and has not changed
/// since.
fn checked(path: &Path) -> bool {
    let Some(now) = stamp(path) else {
        return false;
    };
    let list = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    list.iter().any(|(p, s)| p == path && *s == now)
}

fn mark_checked(path: &Path) {
    if let Some(s) = stamp(path) {
        let mut list = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
        // One entry an index that still exists: the list stays as long as the cache.
        list.retain(|(p, _)| p != path && p.exists());
        list.push((path.to_owned(), s));
    }
}

fn forget_checked(path: &Path) {
    let mut list = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|(p, _)| p != path);
}

/// An encoded set, its file, its rows and empty keys, and its lock held.
type PreparedSet = (
    EncodedSet,
    PathBuf,
    u64,
    u64,
    tokio::sync::OwnedMutexGuard<()>,
);

/// The encoded sets being prepared, each behind its own lock.
type SetLock = (PathBuf, Arc<tokio::sync::Mutex<()>>);
static PREPARING: std::sync::Mutex<Vec<SetLock>> = std::sync::Mutex::new(Vec::new());

/// Sets its flag when dropped: the blocking preparation sees it and stops.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Removes files under `cache/sets` and `cache/received` unused for `keep_secs`, and query
/// indexes whose encoded set is gone (an index's own time is when it was last written: its
/// set's is its last use).
fn sweep(cache: &Path, keep_secs: u64) {
    let now = std::time::SystemTime::now();
    for sub in ["sets", "received"] {
        let Ok(entries) = std::fs::read_dir(cache.join(sub)) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "query") {
                continue;
            }
            if crate::exec::unused_for(&e, now, keep_secs) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(cache.join("sets")) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "query") && !path.with_extension("set").exists() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_back_only_for_their_own_set() {
        let id = [7u8; 16];
        let text = counts_text(300_000, 4, id);
        assert_eq!(parse_counts(&text, id), Some((300_000, 4)));
        assert_eq!(parse_counts(&text, [8u8; 16]), None, "another set's");
        for bad in [
            "",
            "999999999 7",
            "12 3",
            &format!("3 12 {}", hex::encode(id)),
            &format!("12 3 {} extra", hex::encode(id)),
            &format!("-1 0 {}", hex::encode(id)),
        ] {
            assert_eq!(parse_counts(bad, id), None, "{bad:?}");
        }
    }

    #[test]
    fn a_file_is_checked_until_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.query");
        write_private(&path, "one").expect("write");
        assert!(!checked(&path));
        mark_checked(&path);
        assert!(checked(&path));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "two").expect("rewrite");
        assert!(!checked(&path), "a write moves the change time");
        mark_checked(&path);
        forget_checked(&path);
        assert!(!checked(&path));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
