//! Job commands: submit a PSI job, show, follow and cancel one.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Subcommand;
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_client::OperatorClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::conn::Conn;
use super::output::fmt_micros;
use crate::progress::{self, PhaseBar};

/// `tessera job …`.
// Parsed once per process from the command line; boxing `Submit` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Submit a PSI job.
    Submit {
        #[command(flatten)]
        conn: Conn,
        /// The submitting user (the buyer; pays and sees the result).
        #[arg(long)]
        user: String,
        /// Comma-separated groups the user belongs to.
        #[arg(long, default_value = "")]
        groups: String,
        /// The licence to run under.
        #[arg(long)]
        licence: String,
        /// The buyer's party (its worker runs the receiver and writes the result).
        #[arg(long)]
        buyer_party: String,
        /// The buyer's own dataset id.
        #[arg(long)]
        buyer_dataset: String,
        /// Key columns in the buyer's dataset, comma-separated.
        #[arg(long, value_delimiter = ',')]
        buyer_columns: Vec<String>,
        /// Key columns in the provider's dataset, comma-separated.
        #[arg(long, value_delimiter = ',')]
        provider_columns: Vec<String>,
        /// intersection | size
        #[arg(long, default_value = "intersection")]
        mode: String,
        /// Case rule for keys on both sides: preserve (as in the file), lower, upper (Unicode
        /// full mappings; they disagree on e.g. ß), or fold (Unicode full case folding: the
        /// one for caseless matching, `straße` = `STRASSE`).
        #[arg(long, default_value = "preserve")]
        key_case: String,
        /// Unicode normalisation of keys on both sides: none (code points as they are), nfc
        /// (canonical: precomposed `é` = `e` + U+0301) or nfkc (also compatibility variants:
        /// full-width `Ａ` = `A`, `ﬁ` = `fi`). Applied after trimming, before the case rule.
        #[arg(long = "unicode", default_value = "none")]
        unicode_form: String,
        /// Rows whose key is empty after normalisation (with several key columns: ANY column
        /// empty) are no identifier: skip leaves them out and counts them in the job's summary
        /// (each party sees its own count); fail makes the job fail.
        #[arg(long, default_value = "skip")]
        empty_keys: String,
        /// Result file name on the buyer's worker (intersection mode). A result never replaces
        /// a file: a name already recorded by another job of the buyer party is refused.
        #[arg(long, default_value = "")]
        output: String,
        /// Idempotency key per user: a retry gets the same job
        //  (no second count or hold); the same id with other parameters is refused.
        #[arg(long)]
        request_id: Option<String>,
        /// Further columns of the buyer's own dataset written next to the key columns in the
        /// result, comma-separated (the provider's columns are never written).
        #[arg(long, value_delimiter = ',')]
        carry_columns: Vec<String>,
        /// Follow the job until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Show a job, as the calling user may see it.
    Get {
        #[command(flatten)]
        conn: Conn,
        /// The calling user or party: the buyer sees the result and its own side's errors,
        /// the provider its own side's; anyone else only the state.
        #[arg(long, env = "TESSERA_USER")]
        user: Option<String>,
        id: String,
    },
    /// Follow a job until it ends, as the calling user may see it.
    Watch {
        #[command(flatten)]
        conn: Conn,
        /// The calling user or party (as for `job get`).
        #[arg(long, env = "TESSERA_USER")]
        user: Option<String>,
        id: String,
    },
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        conn: Conn,
        /// The user who submitted it.
        #[arg(long)]
        user: String,
        id: String,
    },
}

/// One line describing a job: id, state, scene, mode, then what is known of its end.
pub fn job_line(j: &pb::Job) -> String {
    let mut s = format!(
        "{} {} [{} {}]",
        j.job_id,
        j.state_text(),
        j.scene,
        j.mode_text()
    );
    if let Some(n) = j.result_size {
        s.push_str(&format!(" result_size={n}"));
    }
    if !j.result_location.is_empty() {
        s.push_str(&format!(" result={}", j.result_location));
    }
    if j.delivered_at_ms.is_some() && j.state() != pb::JobState::Succeeded {
        // Past its delivery point: whatever happens now, the run is consumed and charged.
        s.push_str(" delivered");
    }
    if let Some(f) = &j.result_file {
        s.push_str(&format!(
            " result_bytes={} result_rows={} result_sha256={}",
            f.bytes, f.rows, f.sha256_hex
        ));
    }
    if let Some(n) = j.buyer_empty_keys {
        s.push_str(&format!(" buyer_empty_keys={n}"));
    }
    if let Some(n) = j.provider_empty_keys {
        s.push_str(&format!(" provider_empty_keys={n}"));
    }
    if j.charge_micros != 0 {
        s.push_str(&format!(" charge={}", fmt_micros(j.charge_micros)));
    }
    if !j.refusal_reasons.is_empty() {
        s.push_str(&format!(" refused: {}", j.refusal_reasons.join("; ")));
    }
    if !j.error.is_empty() {
        s.push_str(&format!(" error: {}", j.error));
    }
    s
}

/// Follows a job, drawing one progress bar per party on stderr when it is a terminal (see
/// [`crate::progress`]), and returns its final state.
///
/// Errors: the watch stream fails, or ends before sending the job once.
pub async fn watch(
    client: &mut OperatorClient<Channel>,
    job_id: &str,
    user: Option<&str>,
) -> anyhow::Result<pb::Job> {
    let req = as_user(
        pb::JobRef {
            job_id: job_id.into(),
        },
        user,
    )?;
    let mut stream = client.watch_job(req).await?.into_inner();
    let multi = progress::multi();
    let mut bars: BTreeMap<String, PhaseBar> = BTreeMap::new();
    let mut last = None;
    while let Some(j) = stream.next().await {
        let j = j?;
        for p in &j.progress {
            bars.entry(p.party.clone())
                .or_insert_with(|| PhaseBar::new(&multi, &p.party))
                .update(&p.phase, p.done, p.total);
        }
        last = Some(j);
    }
    for bar in bars.values() {
        bar.finish();
    }
    last.ok_or_else(|| anyhow::anyhow!("watch ended without a job"))
}

/// A request naming the calling user in its metadata (what a job answer shows depends on it).
fn as_user<T>(msg: T, user: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(user) = user {
        req.metadata_mut().insert(
            "x-tessera-user",
            user.parse().context("user is not valid metadata")?,
        );
    }
    Ok(req)
}

/// Runs one job command.
pub async fn run(cmd: JobCmd) -> anyhow::Result<()> {
    match cmd {
        JobCmd::Submit {
            conn,
            user,
            groups,
            licence,
            buyer_party,
            buyer_dataset,
            buyer_columns,
            provider_columns,
            mode,
            key_case,
            unicode_form,
            empty_keys,
            output,
            request_id,
            carry_columns,
            watch: follow,
        } => {
            let caller = user.clone();
            let mut c = conn.connect().await?;
            let j = c
                .submit_job(pb::SubmitJobRequest {
                    user,
                    licence_id: licence,
                    scene: "psi".into(),
                    buyer_party,
                    buyer_dataset_id: buyer_dataset,
                    buyer_columns,
                    provider_columns,
                    mode: pb::PsiMode::from(mode.parse::<tessera_core::PsiMode>()?).into(),
                    key_case: pb::KeyCase::from(key_case.parse::<tessera_core::KeyCase>()?).into(),
                    unicode_form: pb::UnicodeForm::from(
                        unicode_form.parse::<tessera_core::UnicodeForm>()?,
                    )
                    .into(),
                    empty_keys: pb::EmptyKeys::from(empty_keys.parse::<tessera_core::EmptyKeys>()?)
                        .into(),
                    carry_columns,
                    output,
                    user_groups: groups,
                    request_id: request_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("{}", job_line(&j));
            if follow && j.state() != pb::JobState::Refused {
                let j = watch(&mut c, &j.job_id, Some(&caller)).await?;
                println!("{}", job_line(&j));
            }
        }
        JobCmd::Get { conn, user, id } => {
            let req = as_user(pb::JobRef { job_id: id }, user.as_deref())?;
            let j = conn.connect().await?.get_job(req).await?.into_inner();
            println!("{}", job_line(&j));
        }
        JobCmd::Watch { conn, user, id } => {
            let j = watch(&mut conn.connect().await?, &id, user.as_deref()).await?;
            println!("{}", job_line(&j));
        }
        JobCmd::Cancel { conn, user, id } => {
            let mut req = tonic::Request::new(pb::JobRef { job_id: id });
            req.metadata_mut().insert(
                "x-tessera-user",
                user.parse().context("user is not valid metadata")?,
            );
            let j = conn.connect().await?.cancel_job(req).await?.into_inner();
            println!("{}", job_line(&j));
        }
    }
    Ok(())
}
