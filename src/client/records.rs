//! Record commands: datasets and licences (with their usage policies). Licence terms
//! (subscribe, unsubscribe) are billing and live in [`super::bills`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use tessera_proto::v1 as pb;

use super::conn::Conn;

/// `tessera dataset …`.
#[derive(Debug, Subcommand)]
pub enum DatasetCmd {
    /// Register a dataset held by a party's workers.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// New dataset id.
        #[arg(long)]
        id: String,
        /// Owning party.
        #[arg(long)]
        party: String,
        /// File name inside the owning workers' dataset directory, ending in .csv, .parquet
        /// or .pq, or .tseal for a CSV file sealed with `dataset seal` (the tee scene's; a
        /// bare name: no directory, no leading dot or surrounding spaces).
        #[arg(long)]
        location: String,
        /// Free text shown in listings.
        #[arg(long, default_value = "")]
        description: String,
        /// Rows in the dataset: a job's hold, and so its maximum row charge, is sized on it.
        #[arg(long)]
        rows: Option<u64>,
    },
    /// Seal a CSV file for the tee scene: asks the operator's key broker for the dataset's
    /// key (made on the first call; the owner of the dataset's party only) and writes the file
    /// encrypted with it (AES-256-GCM in 1 MiB chunks, bound to the dataset id). Copy the
    /// sealed file into the provider workers' dataset directory under the dataset's location
    /// (ending in .tseal) and delete the clear file there: only an attested enclave the
    /// licence allows receives the key.
    Seal {
        #[command(flatten)]
        conn: Conn,
        /// The dataset id (registered with `dataset create`, location ending in .tseal).
        #[arg(long)]
        dataset: String,
        /// The clear CSV file.
        #[arg(long)]
        input: PathBuf,
        /// The sealed file to write (never replaced).
        #[arg(long)]
        output: PathBuf,
    },
    /// List datasets, oldest first.
    List(super::lists::DatasetListArgs),
    /// A data item's operation log (trusted data space manual §4.3): every audit entry about
    /// the dataset, its licences and their jobs, and a head of the chain signed now. JSON by
    /// default; `--csv` writes the entries as CSV followed by one `checkpoint` row (subject:
    /// the node's key, detail: the signed head).
    Log {
        #[command(flatten)]
        conn: Conn,
        /// The dataset id.
        id: String,
        /// CSV instead of JSON.
        #[arg(long)]
        csv: bool,
        /// Write to this new file instead of stdout (never replaced).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `tessera licence …`.
#[derive(Debug, Subcommand)]
pub enum LicenceCmd {
    /// Create a licence with a usage policy (T/AI 123.12 JSON).
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Provider party (must own the dataset).
        #[arg(long)]
        licensor: String,
        /// Buyer user.
        #[arg(long)]
        licensee: String,
        /// The licensed dataset (owned by the licensor).
        #[arg(long)]
        dataset: String,
        /// Policy JSON file.
        #[arg(long)]
        policy: PathBuf,
        /// Price of each job, micro-units (1 yuan = 1,000,000).
        #[arg(long, default_value_t = 0)]
        price_per_job_micros: i64,
        /// Price per 1,000 rows of the provider's dataset, micro-units.
        #[arg(long, default_value_t = 0)]
        price_per_1k_rows_micros: i64,
        /// The operator's share of each charge, basis points (1000 = 10%).
        #[arg(long, default_value_t = 0)]
        operator_share_bps: u32,
        /// Monthly price of a licence term; when set, jobs run only inside a paid term.
        #[arg(long, default_value_t = 0)]
        monthly_price_micros: i64,
    },
    /// Buy (or renew) months of a licence term, paid from recharge voucher, cash and credit.
    Subscribe {
        #[command(flatten)]
        conn: Conn,
        /// The licence (sold by the month).
        #[arg(long)]
        licence: String,
        /// The subscribing customer [default: the caller].
        #[arg(long, default_value = "")]
        user: String,
        /// Months to buy.
        #[arg(long, default_value_t = 1)]
        months: u32,
    },
    /// End a licence subscription; refunds cash paid − monthly price × months used (≥ 0).
    Unsubscribe {
        #[command(flatten)]
        conn: Conn,
        /// The licence.
        #[arg(long)]
        licence: String,
        /// The subscribing customer [default: the caller].
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Verify a T/AI 123.12 licence (table A.37) with the licensor's public key alone: its
    /// signature and its buyer watermark. FILE is the licence JSON, or a settlement answer
    /// holding it under `licenses`.
    Verify {
        /// The licence file.
        file: PathBuf,
        /// The licensor's ed25519 public key, base64 (`queryPublishedData` shows it)
        /// [default: the key the licence names, with a warning].
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Show a licence with its remaining counts.
    Get {
        #[command(flatten)]
        conn: Conn,
        /// The licence id.
        id: String,
    },
    /// List licences with their remaining counts, oldest first.
    List(super::lists::LicenceListArgs),
}

/// Runs one dataset command.
pub async fn dataset(cmd: DatasetCmd) -> anyhow::Result<()> {
    match cmd {
        DatasetCmd::Create {
            conn,
            id,
            party,
            location,
            description,
            rows,
        } => {
            let d = conn
                .connect()
                .await?
                .create_dataset(pb::CreateDatasetRequest {
                    dataset_id: id,
                    owner_party: party,
                    location,
                    description,
                    declared_rows: rows,
                })
                .await?
                .into_inner();
            super::output::Out::stdout().line(format_args!(
                "dataset {} ({} : {})",
                d.dataset_id, d.owner_party, d.location
            ))?;
            if d.declared_rows.is_none() {
                eprintln!(
                    "note: no --rows declared: if this dataset is licensed, a job's hold, and \
                     so its charge, covers the per-job price only (the row price needs the row \
                     count); declare --rows to bill rows"
                );
            }
        }
        DatasetCmd::Seal {
            conn,
            dataset,
            input,
            output,
        } => {
            if !output
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("tseal"))
            {
                anyhow::bail!(
                    "--output {}: a sealed file's name is NAME.tseal (the dataset's location)",
                    output.display()
                );
            }
            check_clear_csv(&input)?;
            let mut clear = std::fs::File::open(&input)
                .with_context(|| format!("opening {}", input.display()))?;
            let key = conn
                .connect()
                .await?
                .get_sealing_key(pb::DatasetRef {
                    dataset_id: dataset.clone(),
                })
                .await?
                .into_inner();
            let bytes: [u8; 32] = hex::decode(key.key_hex.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("the operator's sealing key is not 32 bytes of hex")?;
            let key = tessera_tee::DatasetKey::from_bytes(bytes);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            let file = options
                .open(&output)
                .with_context(|| format!("creating {} (never replaced)", output.display()))?;
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
            let mut w = std::io::BufWriter::new(file);
            let sealed = tessera_tee::seal_stream(
                &key,
                &dataset,
                1,
                &mut std::io::BufReader::new(&mut clear),
                &mut w,
                seed,
            )
            .and_then(|n| {
                use std::io::Write;
                w.flush()?;
                w.get_ref().sync_all()?;
                Ok(n)
            });
            let n = match sealed {
                Ok(n) => n,
                Err(e) => {
                    drop(w);
                    let _ = std::fs::remove_file(&output);
                    return Err(anyhow::anyhow!("sealing {}: {e}", input.display()));
                }
            };
            super::output::Out::stdout().line(format_args!(
                "sealed {} ({n} bytes) for dataset {dataset} into {}",
                input.display(),
                output.display()
            ))?;
        }
        DatasetCmd::List(a) => super::lists::datasets(a).await?,
        DatasetCmd::Log { conn, id, csv, out } => {
            let log = conn
                .connect()
                .await?
                .data_item_log(pb::DatasetRef { dataset_id: id })
                .await?
                .into_inner();
            let text = if csv {
                operation_log_csv(&log)?
            } else {
                serde_json::to_string_pretty(&log)? + "\n"
            };
            match out {
                Some(path) => super::trade::write_new(&path, text.as_bytes(), false)?,
                None => {
                    use std::io::Write as _;
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(text.as_bytes())
                        .and_then(|()| stdout.flush())
                        .map_err(super::output::stdout_error)?;
                }
            }
            if log.truncated {
                eprintln!(
                    "warning: the log holds only the first {} entries",
                    log.entries.len()
                );
            }
        }
    }
    Ok(())
}

/// A data item's log as CSV (RFC 4180): `seq,at_ms,kind,subject,detail_json,prev_hash,hash`,
/// then a `checkpoint` row whose subject is the node's key and whose detail is the signed head.
fn operation_log_csv(log: &pb::OperationLog) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "seq",
        "at_ms",
        "kind",
        "subject",
        "detail_json",
        "prev_hash",
        "hash",
    ])?;
    for e in &log.entries {
        w.write_record([
            e.seq.to_string(),
            e.at_ms.to_string(),
            e.kind.clone(),
            e.subject.clone(),
            e.detail_json.clone(),
            e.prev_hash.clone(),
            e.hash.clone(),
        ])?;
    }
    if let Some(h) = &log.audit_head {
        w.write_record([
            h.seq.to_string(),
            h.at_ms.to_string(),
            "checkpoint".to_owned(),
            log.node_key_hex.clone(),
            serde_json::to_string(h)?,
            String::new(),
            h.head_hash.clone(),
        ])?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// Runs one licence command.
pub async fn licence(cmd: LicenceCmd) -> anyhow::Result<()> {
    match cmd {
        LicenceCmd::Verify { file, public_key } => {
            super::trade::verify_file(&file, public_key.as_deref())?
        }
        LicenceCmd::Create {
            conn,
            licensor,
            licensee,
            dataset,
            policy,
            price_per_job_micros,
            price_per_1k_rows_micros,
            operator_share_bps,
            monthly_price_micros,
        } => {
            let policy_json = std::fs::read_to_string(&policy)
                .with_context(|| format!("reading {}", policy.display()))?;
            let l = conn
                .connect()
                .await?
                .create_licence(pb::CreateLicenceRequest {
                    licensor,
                    licensee,
                    dataset_id: dataset,
                    policy_json,
                    price_per_job_micros,
                    price_per_1k_rows_micros,
                    operator_share_bps,
                    monthly_price_micros,
                })
                .await?
                .into_inner();
            super::output::Out::stdout().line(&l.licence_id)?;
        }
        LicenceCmd::Subscribe {
            conn,
            licence,
            user,
            months,
        } => super::bills::subscribe(conn, licence, user, months).await?,
        LicenceCmd::Unsubscribe {
            conn,
            licence,
            user,
        } => super::bills::unsubscribe(conn, licence, user).await?,
        LicenceCmd::Get { conn, id } => {
            let l = conn
                .connect()
                .await?
                .get_licence(pb::LicenceRef { licence_id: id })
                .await?
                .into_inner();
            let mut out = super::output::Out::stdout();
            out.line(format_args!(
                "licence {} {} -> {} dataset {}",
                l.licence_id, l.licensor, l.licensee, l.dataset_id
            ))?;
            if !l.withdrawn.is_empty() {
                out.line(format_args!("withdrawn: {}", l.withdrawn))?;
            }
            out.line(&l.policy_json)?;
        }
        LicenceCmd::List(a) => super::lists::licences(a).await?,
    }
    Ok(())
}

/// Checks, before anything is sealed, that `path` is what a tee job's enclave can read: a
/// CSV file (RFC 4180, UTF-8) with a header and rows of the header's width, no larger than
/// the enclave opens (`tessera_worker::tee::DATASET_BYTES_MAX` less the sealing overhead).
fn check_clear_csv(path: &std::path::Path) -> anyhow::Result<()> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("opening {shown}"))?;
    if !meta.is_file() {
        anyhow::bail!("{shown} is not a file");
    }
    // The sealed file adds 16 bytes of tag per 1 MiB chunk and a header.
    let max = tessera_worker::tee::DATASET_BYTES_MAX
        - (tessera_worker::tee::DATASET_BYTES_MAX >> 16)
        - 4096;
    if meta.len() > max {
        anyhow::bail!(
            "{shown} has {} bytes; an enclave opens sealed datasets of at most {} bytes",
            meta.len(),
            tessera_worker::tee::DATASET_BYTES_MAX
        );
    }
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .with_context(|| format!("opening {shown}"))?;
    let header = r
        .headers()
        .with_context(|| format!("{shown} is not a CSV file with a header"))?
        .clone();
    if header.is_empty() || header.iter().all(|h| h.trim().is_empty()) {
        anyhow::bail!("{shown} has no header row (a sealed dataset is a CSV file with one)");
    }
    let mut names = std::collections::HashSet::new();
    if let Some(dup) = header.iter().find(|h| !names.insert(h.trim())) {
        anyhow::bail!("{shown}: the header names column {dup:?} twice");
    }
    let mut record = csv::StringRecord::new();
    let mut row = 0u64;
    loop {
        match r.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => anyhow::bail!("{shown} is not a CSV file a tee job can read: {e}"),
        }
        row += 1;
        let bytes = record.as_byte_record().as_slice().len();
        if bytes > tessera_core::table::CSV_RECORD_BYTES_MAX {
            anyhow::bail!(
                "{shown}: data row {row} has {bytes} bytes, more than the {} a job reads per \
                 record",
                tessera_core::table::CSV_RECORD_BYTES_MAX
            );
        }
    }
    Ok(())
}
