//! `tessera audit verify`: recompute the audit hash chain of a data directory (offline, on the
//! store file) and name the first broken entry.

use std::path::PathBuf;

use clap::Subcommand;

/// `tessera audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain.
    Verify {
        /// Operator data directory.
        #[arg(long, default_value = ".tessera/operator")]
        data_dir: PathBuf,
    },
}

/// Runs one audit command; a broken chain exits the process with status 1.
///
/// Errors: no store in the data directory, or the store cannot be read.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { data_dir } => {
            let path = data_dir.join("tessera.db");
            if !path.exists() {
                anyhow::bail!("no store at {}", path.display());
            }
            let store = tessera_store::Store::open(&path).await?;
            let v = store.verify_audit().await?;
            store.close().await;
            if v.ok() {
                println!("audit chain OK: {}", v.detail);
            } else {
                println!(
                    "audit chain BROKEN at entry {}: {}",
                    v.first_broken_seq.unwrap_or(0),
                    v.detail
                );
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
