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
// Parsed once per process; the size of the submit variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Submit a PSI job.
    Submit {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
        /// Comma-separated groups the user belongs to.
        #[arg(long, default_value = "")]
        groups: String,
        #[arg(long)]
        licence: String,
        #[arg(long)]
        buyer_party: String,
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
        /// preserve | lower | upper
        #[arg(long, default_value = "preserve")]
        key_case: String,
        /// Result file name on the buyer's worker.
        #[arg(long, default_value = "")]
        output: String,
        /// Idempotency key per user: a retry gets the same job
        //  (no second count or hold); the same id with other parameters is refused.
        #[arg(long)]
        request_id: Option<String>,
        /// Follow the job until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Show a job.
    Get {
        #[command(flatten)]
        conn: Conn,
        id: String,
    },
    /// Follow a job until it ends.
    Watch {
        #[command(flatten)]
        conn: Conn,
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
pub async fn watch(client: &mut OperatorClient<Channel>, job_id: &str) -> anyhow::Result<pb::Job> {
    let mut stream = client
        .watch_job(pb::JobRef {
            job_id: job_id.into(),
        })
        .await?
        .into_inner();
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
            output,
            request_id,
            watch: follow,
        } => {
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
                    output,
                    user_groups: groups,
                    request_id: request_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("{}", job_line(&j));
            if follow && j.state() != pb::JobState::Refused {
                let j = watch(&mut c, &j.job_id).await?;
                println!("{}", job_line(&j));
            }
        }
        JobCmd::Get { conn, id } => {
            let j = conn
                .connect()
                .await?
                .get_job(pb::JobRef { job_id: id })
                .await?
                .into_inner();
            println!("{}", job_line(&j));
        }
        JobCmd::Watch { conn, id } => {
            let j = watch(&mut conn.connect().await?, &id).await?;
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
