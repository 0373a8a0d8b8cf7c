//! `tessera trade …`: the T/AI 123.12 trade flow from the command line. `call` sends one
//! operation of appendix A.1–A.3 (its body as JSON, the standard's field names) to the
//! operator's `Trade` service and prints the `data` it answers; `keygen`, `open` and
//! `licence verify` work offline, on the buyer's side: a key pair for the sealed delivery key,
//! opening a delivery, and checking a licence's signature with the licensor's public key.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use tessera_auth::Operation;
use tessera_proto::v1 as pb;
use tessera_trade::licence::{Licence, parse_verifying_key};
use tessera_trade::proof::DeliveryProof;
use tessera_trade::seal::{BuyerPrivateKey, SealedKey, open_delivery_key, open_package};
use zeroize::Zeroizing;

use super::conn::{Conn, TradeClient};

/// Largest JSON document these commands read, in bytes (a delivery of a 64 MiB file in
/// base64 and its proof).
pub const DOCUMENT_BYTES_MAX: u64 = 96 << 20;

/// `tessera trade …`.
#[derive(Debug, Subcommand)]
pub enum TradeCmd {
    /// Call one T/AI 123.12 operation and print its `data` as JSON.
    Call(CallArgs),
    /// Make the buyer's X25519 key pair: the private key into a new file (mode 0600), the
    /// public key (for `/registerDemand`'s `public_key`) on stdout.
    Keygen {
        /// The private key file to create (never replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// Open a delivery: the licence and sealed key from the settlement's answer, the package
    /// from `/deliver`'s; checks the licence and the delivery proof, writes the data file.
    Open {
        /// The `/settlement` (or `/querySettlement`) answer, JSON.
        #[arg(long)]
        settlement: PathBuf,
        /// The `/deliver` answer, JSON.
        #[arg(long)]
        delivery: PathBuf,
        /// The buyer's private key file (from `trade keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The licensor's public key (base64), e.g. `queryPublishedData`'s
        /// `licensor_public_key` [default: the key the licence names, with a warning].
        #[arg(long)]
        licensor_key: Option<String>,
        /// The data file to write (never replaced).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `tessera trade call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    #[command(flatten)]
    conn: Conn,
    /// The operation, by its T/AI 123.12 function name (`registerData`, `publishData`,
    /// `publishDatasets`, `queryPublishedData`, `revokePublishedData`, `registerDemand`,
    /// `publishDemand`, `queryPublishedDemand`, `revokeDemand`, `confirmDemand`,
    /// `queryDemandForSettlement`, `settlement`, `querySettlement`, `deliver`,
    /// `queryDeliverResult`, `deliverDatasets`, `updateLicenses`) or Tessera's
    /// (`uploadData`, `queryMatches`, `revokeLicenses`).
    operation: String,
    /// The request body: a JSON file, or `-` for stdin [default: `{}`].
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The operation a T/AI function name stands for.
pub fn operation_of(function: &str) -> Option<Operation> {
    let name = function.trim_start_matches('/');
    Operation::ALL.iter().copied().find(|op| {
        tessera_gateway::rest::route_of(*op)
            .is_some_and(|(_, p)| p.starts_with("/v1/") && p.rsplit('/').next() == Some(name))
    })
}

fn read_document(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(DOCUMENT_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(DOCUMENT_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if bytes.len() as u64 > DOCUMENT_BYTES_MAX {
        bail!(
            "{} is larger than {DOCUMENT_BYTES_MAX} bytes",
            path.display()
        );
    }
    Ok(bytes)
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(&read_document(path)?)
        .with_context(|| format!("{} is not JSON", path.display()))
}

/// Creates `path` (never replacing a file), with mode 0600 on Unix, and writes `bytes`.
pub(crate) fn write_new(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let created = if private {
        tessera_core::fs::create_private(path)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    let mut f =
        created.with_context(|| format!("creating {} (it must not exist)", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Calls trade operation `op` with the JSON body `json`.
pub async fn call_trade(
    t: &mut TradeClient,
    op: Operation,
    json: String,
) -> Result<tonic::Response<pb::TaiReply>, tonic::Status> {
    tessera_gateway::trade::call_client(t, op, json).await
}

/// Calls trade operation `op` with `body` and parses the `data` it answers.
///
/// Errors: the call fails (its status), or the answer is not JSON.
pub async fn call_json(
    t: &mut TradeClient,
    op: Operation,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let reply = call_trade(t, op, body.to_string())
        .await
        .with_context(|| op.name().to_string())?
        .into_inner();
    serde_json::from_str(&reply.json).context("the operator's answer is not JSON")
}

/// Runs a `trade` command.
pub async fn run(cmd: TradeCmd) -> anyhow::Result<()> {
    match cmd {
        TradeCmd::Call(a) => {
            let Some(op) = operation_of(&a.operation) else {
                bail!(
                    "unknown operation {:?}: one of the T/AI 123.12 function names (registerData, publishData, …; see `tessera trade call --help`)",
                    a.operation
                );
            };
            let body = match &a.json {
                Some(p) => String::from_utf8(read_document(p)?)
                    .with_context(|| format!("{} is not UTF-8", p.display()))?,
                None => "{}".to_owned(),
            };
            let mut t = a.conn.connect_trade().await?;
            let reply = call_trade(&mut t, op, body).await?.into_inner();
            let v: serde_json::Value =
                serde_json::from_str(&reply.json).context("the operator's answer is not JSON")?;
            let mut out = super::output::Out::stdout();
            out.line(&serde_json::to_string_pretty(&v)?)?;
        }
        TradeCmd::Keygen { out } => {
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
            let (private, public) = BuyerPrivateKey::derive(&seed);
            write_new(
                &out,
                format!("{}\n", private.to_text().as_str()).as_bytes(),
                true,
            )?;
            super::output::Out::stdout().line(public.to_text())?;
        }
        TradeCmd::Open {
            settlement,
            delivery,
            key,
            licensor_key,
            out,
        } => {
            let s = read_json(&settlement)?;
            let d = read_json(&delivery)?;
            let licence: Licence = serde_json::from_value(s["licenses"].clone())
                .context("the settlement has no licence (`licenses`)")?;
            let sealed: SealedKey = serde_json::from_value(s["private_key"].clone())
                .context("the settlement has no sealed key (`private_key`)")?;
            let verifying = check_licence(&licence, licensor_key.as_deref(), "--licensor-key")?;
            let proof: DeliveryProof = serde_json::from_value(d["delivery_proof"].clone())
                .context("the delivery has no `delivery_proof`")?;
            proof
                .verify(&verifying)
                .context("the delivery proof does not verify under the licensor's key")?;
            if proof.licenses_id != licence.licenses_id {
                bail!(
                    "the delivery was made under licence {}, not {}",
                    proof.licenses_id,
                    licence.licenses_id
                );
            }
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let private = BuyerPrivateKey::parse(text.trim())?;
            let delivery_key = open_delivery_key(&sealed, &private, &licence.licenses_id)?;
            let package = B64
                .decode(d["data_file"].as_str().unwrap_or_default())
                .context("`data_file` is not base64")?;
            let data = open_package(
                &delivery_key,
                &licence.licenses_id,
                &licence.digital_watermarking,
                &package,
            )?;
            write_new(&out, &data, false)?;
            eprintln!(
                "wrote {} ({} bytes) from licence {}",
                out.display(),
                data.len(),
                licence.licenses_id
            );
        }
    }
    Ok(())
}

/// Verifies a licence under `key` (base64), or under the key it names (with a warning that
/// this proves only that the key's holder signed it).
///
/// Errors: the licence does not verify, or the key is malformed.
pub fn check_licence(
    licence: &Licence,
    key: Option<&str>,
    flag: &str,
) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    match key {
        Some(k) => {
            let k = parse_verifying_key(k).map_err(|_| {
                anyhow::anyhow!("{flag}: not an ed25519 public key (32 bytes of base64)")
            })?;
            licence.verify(&k)?;
            Ok(k)
        }
        None => {
            eprintln!(
                "warning: checked against the key the licence names ({}); pass the licensor's key ({flag}) to know who signed it",
                licence.licensor_public_key
            );
            Ok(licence.verify_self_signed()?)
        }
    }
}

/// `tessera licence verify FILE`: a licence document (or a settlement answer holding one under
/// `licenses`), checked with the public key alone.
///
/// Errors: unreadable, not a licence, or it does not verify (the reason named).
pub fn verify_file(file: &Path, key: Option<&str>) -> anyhow::Result<()> {
    let v = read_json(file)?;
    let doc = if v.get("licenses").is_some() {
        v["licenses"].clone()
    } else {
        v
    };
    let licence: Licence = serde_json::from_value(doc)
        .with_context(|| format!("{} is not a licence", file.display()))?;
    check_licence(&licence, key, "--public-key")?;
    let mut out = super::output::Out::stdout();
    out.line(format!(
        "valid: licence {} of dataset {} from {} to {}, {} – {}",
        licence.licenses_id,
        licence.data_id,
        licence.licensor,
        licence.licensee,
        licence.license_term.start_date,
        licence.license_term.end_date
    ))?;
    Ok(())
}
