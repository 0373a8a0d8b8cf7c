//! `tessera audit verify` and `tessera audit export`, offline on a data directory's store.
//!
//! `verify` recomputes the hash chain, checks it against every signed checkpoint (the store's
//! and those in `--checkpoints` files an auditor kept), checks their signatures under the
//! node's public key, re-derives the ledger tables from the transfers the chain recorded and
//! the licence scene counters, jobs, bills and bill lines from the entries that changed them;
//! it names every finding once (a truncated chain, a rewritten one, a forged checkpoint, a
//! ledger or records row that differs, naming its table, row and field) and exits 1 if there
//! is one. `export` signs the current head with the
//! node's key and writes every checkpoint to a file ([`CheckpointFile`]) for the auditor.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use tessera_core::checkpoint::{NodeKey, SignedHead};
use tessera_core::{Clock, SystemClock};
use tessera_scheduler::AuditService;
use tessera_store::Store;

/// The format tag of an export file.
pub const CHECKPOINT_FILE_FORMAT: &str = "tessera-audit-checkpoints/1";

/// Largest checkpoints file read (64 MiB; a checkpoint is about 250 bytes).
const CHECKPOINT_FILE_MAX_BYTES: u64 = 64 << 20;

/// `tessera audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the chain, its signed checkpoints, the ledger tables, licence counters, jobs,
    /// bills and bill lines; name what broke (exit status 1 if anything did).
    Verify {
        /// Operator data directory.
        #[arg(long, default_value = ".tessera/operator")]
        data_dir: PathBuf,
        /// A checkpoints file written by `tessera audit export` (repeatable): the chain must
        /// still have every head it holds.
        #[arg(long = "checkpoints", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// The node's public key (64 hex digits) to check signatures under; default: the key
        /// of the data directory's `operator.key`.
        #[arg(long, value_name = "HEX")]
        node_key: Option<String>,
    },
    /// Sign the chain's current head and write every signed checkpoint to FILE (JSON), for an
    /// auditor to keep outside the operator.
    Export {
        /// Operator data directory (its `operator.key` signs the head).
        #[arg(long, default_value = ".tessera/operator")]
        data_dir: PathBuf,
        /// The file to write (never replaced: an existing file is an error).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// What `tessera audit export` writes: every checkpoint of the chain, the head signed at
/// export, and the key they verify under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointFile {
    /// [`CHECKPOINT_FILE_FORMAT`].
    pub format: String,
    /// The node's public key, hex.
    pub node_key_hex: String,
    /// When the file was written, ms since epoch (UTC).
    pub exported_at_ms: i64,
    /// The chain's head signed at export (`None` for an empty chain).
    pub head: Option<SignedHead>,
    /// Every checkpoint recorded by the node, by entry.
    pub checkpoints: Vec<SignedHead>,
}

/// Runs one audit command; a verification that finds anything exits the process with
/// status 1.
///
/// Errors: no store in the data directory, the store or a checkpoints file cannot be read,
/// no key to sign with (export).
pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            data_dir,
            checkpoints,
            node_key,
        } => {
            let ok = verify(&data_dir, &checkpoints, node_key.as_deref()).await?;
            if !ok {
                std::process::exit(1);
            }
        }
        AuditCommand::Export { data_dir, out } => export(&data_dir, &out).await?,
    }
    Ok(())
}

/// The data directory's store: read-only for a verification (an auditor's copy may be on a
/// read-only disk, and nothing of it may change), read-write for an export (which appends a
/// signed checkpoint).
async fn open_store(data_dir: &Path, read_only: bool) -> anyhow::Result<Store> {
    let path = data_dir.join("tessera.db");
    if !path.exists() {
        anyhow::bail!("no store at {}", path.display());
    }
    let store = if read_only {
        Store::open_read_only(&path)
    } else {
        Store::open(&path).await
    };
    store.with_context(|| format!("opening the store {}", path.display()))
}

/// Reads a checkpoints file (bounded), refusing one signed for another key.
fn read_checkpoint_file(path: &Path, key: &NodeKey) -> anyhow::Result<Vec<SignedHead>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > CHECKPOINT_FILE_MAX_BYTES {
        anyhow::bail!(
            "{} is {len} bytes, more than a checkpoints file may be ({CHECKPOINT_FILE_MAX_BYTES})",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: CheckpointFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a checkpoints file", path.display()))?;
    if file.format != CHECKPOINT_FILE_FORMAT {
        anyhow::bail!(
            "{} has format {:?}, not {CHECKPOINT_FILE_FORMAT:?}",
            path.display(),
            file.format
        );
    }
    if !file.node_key_hex.eq_ignore_ascii_case(&key.to_hex()) {
        anyhow::bail!(
            "{} holds checkpoints of the key {}, not of the node's key {}",
            path.display(),
            file.node_key_hex,
            key.to_hex()
        );
    }
    // The head signed at export is normally in the list too: keep one copy of each.
    let mut heads = file.checkpoints;
    if let Some(h) = file.head
        && !heads.contains(&h)
    {
        heads.push(h);
    }
    Ok(heads)
}

/// Prints the verification; returns whether everything verified.
async fn verify(
    data_dir: &Path,
    files: &[PathBuf],
    node_key: Option<&str>,
) -> anyhow::Result<bool> {
    let key = match node_key {
        Some(hex) => Some(NodeKey::from_hex(hex).context("--node-key")?),
        None => crate::operator::load_key(data_dir)?
            .map(|s| NodeKey::from_hex(&s.public_key_hex()))
            .transpose()?,
    };
    let mut external = Vec::new();
    for f in files {
        let Some(key) = &key else {
            anyhow::bail!(
                "checking {} needs the node's key: give --node-key or a data directory with its operator.key",
                f.display()
            );
        };
        let label = f.display().to_string();
        external.extend(
            read_checkpoint_file(f, key)?
                .into_iter()
                .map(|c| (label.clone(), c)),
        );
    }
    let store = open_store(data_dir, true).await?;
    let v = store.verify_audit_with(key.as_ref(), &external).await?;
    store.close().await;
    println!("{}", v.summary());
    if v.ok() {
        if key.is_none() {
            println!("signatures NOT checked: no node key (give --node-key)");
        }
        if v.unsealed_entries > 0 {
            println!(
                "{} entries after the latest signed checkpoint",
                v.unsealed_entries
            );
        }
        return Ok(true);
    }
    for p in &v.problems {
        println!("- {p}");
    }
    if v.more_problems > 0 {
        println!("- and {} more", v.more_problems);
    }
    Ok(false)
}

/// Signs the head, then writes the file through a temporary file renamed into place.
async fn export(data_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let signer = crate::operator::load_key(data_dir)?.with_context(|| {
        format!(
            "no operator.key in {}: nothing can sign the head",
            data_dir.display()
        )
    })?;
    let node_key_hex = signer.public_key_hex();
    let store = open_store(data_dir, false).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let audit = AuditService::new(store.clone(), Arc::new(signer), clock.clone());
    let head = audit.seal().await?;
    let file = CheckpointFile {
        format: CHECKPOINT_FILE_FORMAT.into(),
        node_key_hex,
        exported_at_ms: clock.now_ms(),
        head,
        checkpoints: audit.checkpoints().await?,
    };
    store.close().await;
    let text = serde_json::to_string_pretty(&file)?;
    let name = out
        .file_name()
        .with_context(|| format!("{} names no file", out.display()))?;
    let tmp = out.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    // Never over an earlier export: it may be the only proof that the chain was cut short.
    // A hard link publishes the file only if the name is free.
    let published = std::fs::hard_link(&tmp, out);
    let _ = std::fs::remove_file(&tmp);
    match published {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "{} exists: an export never replaces a file (an earlier one may be the only \
             proof of a truncated chain); choose a new name",
            out.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("writing {}", out.display())),
    }
    match &file.head {
        Some(h) => println!(
            "exported {} checkpoints to {}; head: entry {} {}",
            file.checkpoints.len(),
            out.display(),
            h.seq,
            h.head_hash
        ),
        None => println!("the audit chain is empty; wrote {}", out.display()),
    }
    Ok(())
}
