//! Job commands: submit a PSI job, show, follow and cancel one.

use std::collections::BTreeMap;

use clap::Subcommand;
use tessera_proto::v1 as pb;
use tokio_stream::StreamExt;

use super::conn::Conn;
use super::output::{Out, fmt_micros};
use crate::exit::{ConnectionLost, JobEnded};
use crate::progress::{self, PhaseBar};

/// `tessera job …`.
// Parsed once per process from the command line; boxing `Submit` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Submit a PSI job (scene psi), or a PSI with the provider's payload columns (scene
    /// psi_payload: --payload, --join).
    Submit {
        #[command(flatten)]
        conn: Conn,
        /// The licence the job runs under: licensed to the caller (the token's user) or to a
        /// group the operator recorded it in; its relUsers must admit the caller or one of
        /// those groups.
        #[arg(long)]
        licence: String,
        /// The buyer's party, owned by the caller (its worker runs the receiver and writes the
        /// result).
        #[arg(long)]
        buyer_party: String,
        /// The buyer's own dataset id (a dataset of the buyer party).
        #[arg(long)]
        buyer_dataset: String,
        /// Key columns in the buyer's dataset, comma-separated.
        #[arg(long, value_delimiter = ',')]
        buyer_columns: Vec<String>,
        /// Key columns in the provider's dataset, comma-separated.
        #[arg(long, value_delimiter = ',')]
        provider_columns: Vec<String>,
        /// intersection (the buyer learns which of its keys are common) | size (only how many)
        /// | both (the buyer and the provider each learn which of their own keys are common:
        /// the provider's worker writes the key columns of its rows whose key is common to
        /// `psi-<job id>.csv` in its output directory, shown to the provider in `job get`)
        #[arg(long, default_value = "intersection", value_parser = clap::builder::PossibleValuesParser::new(["intersection", "size", "both"]), ignore_case = true)]
        mode: String,
        /// PSI protocol: rr22 (VOLE-based, the fast one; intersection and both modes), ecdh
        /// (public-key; fewer bytes than rr22 only for small sets, where rr22's ~600 KB fixed
        /// cost dominates; the only one for size mode) or ecdh-oprf (a small buyer set against
        /// a large provider dataset, e.g. a thousand keys against ten million: the provider's set
        /// is encoded once per licence on its worker and reused, the buyer's worker keeps what it
        /// received, so later jobs of the licence cost the buyer its own set only; intersection
        /// mode; no gain when the buyer's set is the larger: its worker then encodes it at every
        /// job, use rr22) [default: rr22, ecdh for size mode]
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["rr22", "ecdh", "ecdh-oprf"]), ignore_case = true)]
        protocol: Option<String>,
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
        /// Result file name in the buyer worker's output directory (intersection and both
        /// modes; a bare name: no directory, no leading dot or surrounding spaces; empty: no
        /// file). A result never replaces a file: a name already recorded by another job of the
        /// buyer party is refused.
        #[arg(long, default_value = "")]
        output: String,
        /// Idempotency key per user: a retry with the same id gets the same job (no second
        /// count or hold); the same id with other parameters is refused.
        #[arg(long)]
        request_id: Option<String>,
        /// Further columns of the buyer's own dataset written next to the key columns in the
        /// result, comma-separated (the provider's columns are written only by a join,
        /// `--payload`).
        #[arg(long, value_delimiter = ',')]
        carry_columns: Vec<String>,
        /// A PSI with the provider's payload columns (the licence's psi_payload scene, rr22):
        /// the provider's columns written for the buyer's matched rows, comma-separated (each
        /// must be in the scene's payloadColumns). With --join, or alone for an inner join.
        #[arg(long, value_delimiter = ',')]
        payload: Vec<String>,
        /// The shape of a PSI with payload (scene psi_payload): inner (the buyer's rows whose
        /// key the provider has, with the payload columns), left (every buyer row, a `matched`
        /// column true/false, the payload empty where false) or difference (the buyer's rows
        /// the provider does not have, no payload) [default: inner when --payload is given].
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["inner", "left", "difference"]))]
        join: Option<String>,
        /// Follow the job until it ends; the exit status then tells how it ended (0
        /// succeeded, 3 refused, 4 failed, 5 cancelled, 6 connection lost).
        #[arg(long)]
        watch: bool,
    },
    /// Submit a preview job: rows of the licensed dataset, at most what the licence's preview
    /// scene allows (its `viewRowsRange` / `viewPageRange`), written by the buyer's worker as
    /// a CSV file. Counted and charged like any run.
    Preview {
        #[command(flatten)]
        conn: Conn,
        /// The licence (its policy must have a `preview` scene).
        #[arg(long)]
        licence: String,
        /// The buyer's party, owned by the caller (its worker writes the rows).
        #[arg(long)]
        buyer_party: String,
        /// Rows to show, `FIRST-LAST`, numbered from 1 (the header excluded) [default: the
        /// whole window the licence allows].
        #[arg(long, value_parser = parse_rows)]
        rows: Option<(u64, u64)>,
        /// Columns to show, comma-separated [default: those the licence allows, or all].
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// File name in the buyer worker's output directory (a bare name; never replaces a
        /// file).
        #[arg(long)]
        output: String,
        /// Idempotency key per user (as for `job submit`).
        #[arg(long)]
        request_id: Option<String>,
        /// Follow the job until it ends (exit status as for `job submit --watch`).
        #[arg(long)]
        watch: bool,
    },
    /// Submit an mpc job: a statistics query over the buyer's and the provider's columns of
    /// the rows they have in common (aligned by a PSI on the key columns first), computed by
    /// two-party secret sharing and opened to the buyer only; the buyer's worker writes the
    /// result as a CSV file. Counted and charged like any run; the licence's mpc scene may
    /// suppress small groups (minGroupSize) and allow only aggregates (aggregatesOnly).
    Mpc(QueryJobArgs),
    /// Submit a tee job, computed in the clear inside an attested enclave on the provider's
    /// worker: the buyer's worker seals its rows to the enclave's attested key, the
    /// operator's key broker releases the provider's dataset key only to that enclave, and
    /// the result is sealed back to the buyer. It computes either a statistics query
    /// (`--query`, as for `job mpc`) or a join, a PSI with the provider's payload columns
    /// (`--join`, `--payload`): the buyer's rows with the provider's columns for those whose
    /// key matched. The licence's tee scene names the TEE it accepts in envHard (tee:sgx,
    /// tee:tdx, tee:sev-snp, tee:insecure-simulated-tee for development), may set
    /// minGroupSize and aggregatesOnly for queries, and lists the provider's columns a join
    /// may deliver (payloadColumns) and the joins it allows (joins).
    Tee(TeeJobArgs),
    /// Submit an fl job: a model trained by federated averaging on several providers'
    /// datasets (one licence each, every licence's fl scene counted once), every average one
    /// round of secure aggregation (SecAgg+), so that no party sees another's rows or
    /// updates; the buyer's worker aggregates and writes the model as parameter,value CSV.
    /// A provider that drops out mid-run leaves the others training.
    Fl(FlJobArgs),
    /// Show a job as the caller may see it (exit status 0 whatever its state): its buyer
    /// sees the result and its own side's errors, the provider's owner its own side's, the
    /// operator the state and summaries.
    Get {
        #[command(flatten)]
        conn: Conn,
        /// The job id.
        id: String,
    },
    /// Follow a job until it ends, as the caller may see it; exit status 0 succeeded,
    /// 3 refused, 4 failed, 5 cancelled, 6 connection lost.
    Watch {
        #[command(flatten)]
        conn: Conn,
        /// The job id.
        id: String,
    },
    /// List jobs, oldest first, with their state, dates, charge and progress.
    List(super::lists::JobListArgs),
    /// Cancel a job (its buyer, or the operator).
    Cancel {
        #[command(flatten)]
        conn: Conn,
        /// The job id.
        id: String,
    },
}

/// What every job that aligns the two datasets on their keys names (`job mpc`, `job tee`).
#[derive(Debug, clap::Args)]
pub struct KeyedJobArgs {
    #[command(flatten)]
    conn: Conn,
    /// The licence (its policy must have the job's scene: `mpc` or `tee`).
    #[arg(long)]
    licence: String,
    /// The buyer's party, owned by the caller (its worker writes the result).
    #[arg(long)]
    buyer_party: String,
    /// The buyer's own dataset id.
    #[arg(long)]
    buyer_dataset: String,
    /// Key columns in the buyer's dataset, comma-separated (the join key).
    #[arg(long, value_delimiter = ',', required = true)]
    buyer_columns: Vec<String>,
    /// Key columns in the provider's dataset, comma-separated, in the same order.
    #[arg(long, value_delimiter = ',', required = true)]
    provider_columns: Vec<String>,
    /// Case rule for keys on both sides (as for `job submit`).
    #[arg(long, default_value = "preserve")]
    key_case: String,
    /// Unicode normalisation of keys on both sides (as for `job submit`).
    #[arg(long = "unicode", default_value = "none")]
    unicode_form: String,
    /// Rows whose key is empty (as for `job submit`).
    #[arg(long, default_value = "skip")]
    empty_keys: String,
    /// Result file name in the buyer worker's output directory (a bare name; never
    /// replaces a file).
    #[arg(long)]
    output: String,
    /// Idempotency key per user (as for `job submit`).
    #[arg(long)]
    request_id: Option<String>,
    /// Follow the job until it ends (exit status as for `job submit --watch`).
    #[arg(long)]
    watch: bool,
}

/// The arguments of a statistics-query job (`job mpc`).
#[derive(Debug, clap::Args)]
pub struct QueryJobArgs {
    #[command(flatten)]
    keyed: KeyedJobArgs,
    /// The query, e.g. `SELECT count(*), mean(provider.income) WHERE buyer.age >= 30
    /// GROUP BY buyer.region` (aggregates count, sum, mean, var, min, max, histogram;
    /// WHERE and GROUP BY on the buyer's own columns), or a model training, e.g. `TRAIN
    /// LOGISTIC_REGRESSION(provider.age, buyer.income) LABEL buyer.defaulted EPOCHS 5
    /// LEARNING_RATE 1 L2 0.001 BATCH 1000` (numeric features, a label of two categories
    /// with cells 0 or 1; EPOCHS 1-100, LEARNING_RATE (0, 1000], L2 [0, 1000], BATCH >= 1;
    /// the result file holds the model: term, reported, weight; a licence whose mpc scene
    /// says modelTo "provider" gives the model to the provider instead, "shared" to nobody:
    /// each worker keeps its share), or a scoring with such a shared model, e.g. `SCORE
    /// LOGISTIC_REGRESSION(provider.age, buyer.income) MODEL job-…` (the training's features
    /// and bounds; the result file holds the buyer's key columns and probability per aligned
    /// row).
    #[arg(long)]
    query: String,
    /// A column the query reads, repeated: `buyer.NAME=numeric:BOUND` (values with |x| <=
    /// BOUND, a whole number >= 1; larger ones are clipped to it) or
    /// `buyer.NAME=categorical:LEVELS` (integer codes 0 to LEVELS-1); `provider.NAME=…`
    /// likewise.
    #[arg(long = "column", value_parser = parse_mpc_column)]
    columns: Vec<pb::MpcColumn>,
    /// Where the Beaver triples come from: `ot` (dealer-free, made between the two workers:
    /// RLWE homomorphic encryption for products, OT for comparisons; no third party trusted,
    /// but several times slower, most for comparisons and training) or `dealer`
    /// (dealt by the operator, which then must not collude with either party). Default: `ot`
    /// if the licence's mpc scene allows it (its `protocols`), else `dealer`.
    #[arg(long, value_parser = ["ot", "dealer"])]
    triples: Option<String>,
}

/// The arguments of a `tee` job: a statistics query or a join.
#[derive(Debug, clap::Args)]
pub struct TeeJobArgs {
    #[command(flatten)]
    keyed: KeyedJobArgs,
    /// A statistics query (as for `job mpc`); without it the job is a join.
    #[arg(long, conflicts_with_all = ["join", "payload", "carry_columns"])]
    query: Option<String>,
    /// A column the query reads (as for `job mpc`).
    #[arg(long = "column", value_parser = parse_mpc_column, requires = "query")]
    columns: Vec<pb::MpcColumn>,
    /// A join's shape: inner (the buyer's rows whose key the provider has, with the payload
    /// columns), left (every buyer row, a `matched` column true/false, the payload columns
    /// empty where false) or difference (the buyer's rows the provider does not have).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["inner", "left", "difference"]), default_value = "inner")]
    join: String,
    /// The provider's columns written for the buyer's matched rows, comma-separated (each
    /// must be in the licence's payloadColumns; none with a difference).
    #[arg(long, value_delimiter = ',')]
    payload: Vec<String>,
    /// Further columns of the buyer's own dataset written next to its key columns in a
    /// join's result, comma-separated.
    #[arg(long, value_delimiter = ',')]
    carry_columns: Vec<String>,
}

/// The arguments of a federated-learning job (`job fl`).
#[derive(Debug, clap::Args)]
pub struct FlJobArgs {
    #[command(flatten)]
    conn: Conn,
    /// A provider's licence, repeated, one per provider (2 to 64; each licence's policy must
    /// have the fl scene; the first is the job's licence).
    #[arg(long = "licence", required = true)]
    licences: Vec<String>,
    /// The buyer's party, owned by the caller (its worker aggregates and writes the model).
    #[arg(long)]
    buyer_party: String,
    /// Feature columns, comma-separated (numeric; the same names in every provider's table).
    #[arg(long, value_delimiter = ',', required = true)]
    features: Vec<String>,
    /// The label column (cells 0/1 or true/false).
    #[arg(long)]
    label: String,
    /// The model: logistic (logistic regression) or mlp (one hidden ReLU layer).
    #[arg(long, value_parser = ["logistic", "mlp"], default_value = "logistic")]
    model: String,
    /// Hidden units of an mlp (default 16).
    #[arg(long)]
    hidden: Option<u32>,
    /// FedAvg rounds.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Local epochs per round.
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// Rows per local SGD step.
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// Local SGD step size.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    learning_rate: f64,
    /// Fraction of the providers sampled each round, (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    sample_fraction: f64,
    /// SecAgg+'s threshold t: the fewest providers a round needs (default: more than half,
    /// at least 2).
    #[arg(long)]
    threshold: Option<u32>,
    /// SecAgg+'s share-group size k (odd; default: the complete graph).
    #[arg(long)]
    neighbours: Option<u32>,
    /// Standardise the features by their global mean and standard deviation (computed
    /// through one secure round) before training; the model file then holds them.
    #[arg(long)]
    standardise: bool,
    /// Client-level differential privacy: the noise multiplier z (with --dp-clip and
    /// --dp-delta); the model file reports epsilon.
    #[arg(long, requires_all = ["dp_clip", "dp_delta"], allow_negative_numbers = true)]
    dp_noise: Option<f64>,
    /// DP: each update's L2 clipping norm C.
    #[arg(long, requires = "dp_noise", allow_negative_numbers = true)]
    dp_clip: Option<f64>,
    /// DP: the delta epsilon is reported at.
    #[arg(long, requires = "dp_noise", allow_negative_numbers = true)]
    dp_delta: Option<f64>,
    /// The model file's name in the buyer worker's output directory (never replaces a file).
    #[arg(long)]
    output: String,
    /// Idempotency key per user (as for `job submit`).
    #[arg(long)]
    request_id: Option<String>,
    /// Follow the job until it ends (exit status as for `job submit --watch`).
    #[arg(long)]
    watch: bool,
}

/// Submits a `job fl`.
async fn fl_job(a: FlJobArgs) -> anyhow::Result<()> {
    let mut c = a.conn.connect().await?;
    let dp = match (a.dp_noise, a.dp_clip, a.dp_delta) {
        (Some(noise_multiplier), Some(clip_norm), Some(delta)) => Some(pb::FlPrivacy {
            noise_multiplier,
            clip_norm,
            delta,
        }),
        _ => None,
    };
    let j = send_submission(
        &mut c,
        pb::SubmitJobRequest {
            licence_id: a.licences.first().cloned().unwrap_or_default(),
            scene: tessera_core::job::scene::FL.into(),
            buyer_party: a.buyer_party,
            output: a.output,
            request_id: a.request_id.unwrap_or_default(),
            fl: Some(pb::FlTraining {
                licences: a.licences,
                model: a.model,
                hidden: a.hidden,
                features: a.features,
                label: a.label,
                rounds: Some(a.rounds),
                epochs: Some(a.epochs),
                batch_size: Some(a.batch_size),
                learning_rate: Some(a.learning_rate),
                sample_fraction: Some(a.sample_fraction),
                threshold: a.threshold,
                neighbours: a.neighbours,
                standardise: a.standardise,
                dp,
            }),
            ..pb::SubmitJobRequest::default()
        },
    )
    .await?;
    print_and_follow(&mut c, j, a.watch).await
}

/// Submits a job that aligns the two datasets on their keys, with the scene's own fields.
async fn keyed_job(
    scene: &str,
    args: KeyedJobArgs,
    fill: pb::SubmitJobRequest,
) -> anyhow::Result<()> {
    let KeyedJobArgs {
        conn,
        licence,
        buyer_party,
        buyer_dataset,
        buyer_columns,
        provider_columns,
        key_case,
        unicode_form,
        empty_keys,
        output,
        request_id,
        watch: follow,
    } = args;
    let mut c = conn.connect().await?;
    let j = send_submission(
        &mut c,
        pb::SubmitJobRequest {
            licence_id: licence,
            scene: scene.into(),
            buyer_party,
            buyer_dataset_id: buyer_dataset,
            buyer_columns,
            provider_columns,
            mode: pb::PsiMode::Intersection.into(),
            key_case: pb::KeyCase::from(key_case.parse::<tessera_core::KeyCase>()?).into(),
            unicode_form: pb::UnicodeForm::from(unicode_form.parse::<tessera_core::UnicodeForm>()?)
                .into(),
            empty_keys: pb::EmptyKeys::from(empty_keys.parse::<tessera_core::EmptyKeys>()?).into(),
            output,
            request_id: request_id.unwrap_or_default(),
            ..fill
        },
    )
    .await?;
    print_and_follow(&mut c, j, follow).await
}

/// Sends a submission. Without a request id the CLI gives it one (`cli-` and 16 random hex
/// digits), so that a submission whose answer is lost — the connection broke, the operator
/// stopped — can be sent again without a second admission; the error then says how.
///
/// Errors: the operator's answer, or the transport's with that hint.
async fn send_submission(
    c: &mut super::conn::Client,
    mut req: pb::SubmitJobRequest,
) -> anyhow::Result<pb::Job> {
    if req.request_id.is_empty() {
        let mut bytes = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        req.request_id = format!("cli-{}", hex::encode(bytes));
    }
    let request_id = req.request_id.clone();
    match c.submit_job(req).await {
        Ok(answer) => Ok(answer.into_inner()),
        Err(s) if answer_may_be_lost(&s) => Err(anyhow::Error::new(s).context(format!(
            "no answer to the submission, and the operator may have admitted it: run the same \
             command again with --request-id {request_id} to get that job (never a second one)"
        ))),
        Err(s) => Err(s.into()),
    }
}

/// Whether a failed call may have been carried out with its answer lost on the way back.
fn answer_may_be_lost(s: &tonic::Status) -> bool {
    crate::exit::is_transport(s)
        || matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
        )
}

/// Prints a submitted job's line and, with `follow`, follows it to its end and prints that
/// too; the exit status then tells how it ended ([`job_outcome`]).
async fn print_and_follow(
    c: &mut super::conn::Client,
    j: pb::Job,
    follow: bool,
) -> anyhow::Result<()> {
    let mut out = Out::stdout();
    out.line(job_line(&j))?;
    let j = if follow && !is_terminal(&j) {
        let j = watch(c, &j.job_id).await?;
        out.line(job_line(&j))?;
        j
    } else {
        j
    };
    job_outcome(&j)?;
    Ok(())
}

/// Submits a `job tee`: its query, or its join.
async fn tee_job(args: TeeJobArgs) -> anyhow::Result<()> {
    let fill = match args.query {
        Some(query) => pb::SubmitJobRequest {
            mpc_query: query,
            mpc_columns: args.columns,
            ..pb::SubmitJobRequest::default()
        },
        None => pb::SubmitJobRequest {
            join: pb::JoinKind::from(args.join.parse::<tessera_core::JoinKind>()?).into(),
            payload_columns: args.payload,
            carry_columns: args.carry_columns,
            ..pb::SubmitJobRequest::default()
        },
    };
    keyed_job(tessera_core::job::scene::TEE, args.keyed, fill).await
}

/// `side.NAME=numeric:BOUND` or `side.NAME=categorical:LEVELS`.
fn parse_mpc_column(s: &str) -> Result<pb::MpcColumn, String> {
    let bad = || {
        format!(
            "{s:?}: expected buyer.NAME=numeric:BOUND or buyer.NAME=categorical:LEVELS \
             (provider.NAME likewise)"
        )
    };
    let (column, kind) = s.rsplit_once('=').ok_or_else(bad)?;
    let (kind, n) = kind.split_once(':').ok_or_else(bad)?;
    let mut c = pb::MpcColumn {
        column: column.trim().to_string(),
        ..pb::MpcColumn::default()
    };
    let whole = |what: &str| {
        format!("{s:?}: {what} is a whole number of at least 1 (e.g. numeric:150, categorical:3)")
    };
    let at_least_one = |what: &str| {
        n.trim()
            .parse::<u64>()
            .ok()
            .filter(|&v| v >= 1)
            .ok_or_else(|| whole(what))
    };
    match kind.trim() {
        "numeric" => c.abs_max = at_least_one("a numeric BOUND")?,
        "categorical" => {
            c.levels = u32::try_from(at_least_one("LEVELS")?).map_err(|_| whole("LEVELS"))?
        }
        _ => return Err(bad()),
    }
    Ok(c)
}

/// `FIRST-LAST` rows, numbered from 1.
fn parse_rows(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{text:?}: rows are FIRST-LAST, numbered from 1 (e.g. 1-20)");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

/// One line describing a job: id, state, scene, mode, then what is known of its end.
pub fn job_line(j: &pb::Job) -> String {
    // A preview has no PSI mode or protocol, and a tee job aligns its rows in the enclave; an
    // mpc job aligns by a PSI (its protocol is shown) but its output is no intersection.
    let preview = j.scene == tessera_core::job::scene::PREVIEW
        || j.scene == tessera_core::job::scene::TEE
        || j.scene == tessera_core::job::scene::FL;
    let mut s = if preview || j.scene == tessera_core::job::scene::MPC {
        format!("{} {} [{}]", j.job_id, j.state_text(), j.scene)
    } else {
        format!(
            "{} {} [{} {}]",
            j.job_id,
            j.state_text(),
            j.scene,
            j.mode_text()
        )
    };
    if j.protocol != 0 && !preview {
        s.push_str(&format!(" protocol={}", j.protocol_text()));
    }
    if let Ok(t) = tessera_proto::decode::<tessera_core::MpcTriples>(j.mpc_triples) {
        s.push_str(&format!(" triples={t}"));
    }
    if !j.co_licences.is_empty() {
        // An fl job's licences after the first (`licence_id`).
        s.push_str(&format!(" co_licences={}", j.co_licences.join(",")));
    }
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
    if let Some(f) = &j.provider_result_file {
        s.push_str(&format!(
            " provider_result={} provider_result_bytes={} provider_result_rows={} \
             provider_result_sha256={}",
            f.name, f.bytes, f.rows, f.sha256_hex
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

/// How many times a watch is re-opened after its stream broke or ended early, before the
/// connection is declared lost.
const WATCH_RETRIES_MAX: u32 = 20;
/// Pause between two attempts to re-open a watch.
const WATCH_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether the job can no longer change (`tessera_core::JobState::is_terminal`; an unknown
/// state is not terminal).
fn is_terminal(j: &pb::Job) -> bool {
    tessera_proto::decode::<tessera_core::JobState>(j.state).is_ok_and(|s| s.is_terminal())
}

/// Follows a job until it reaches a terminal state (succeeded, failed, refused, cancelled),
/// drawing one progress bar per party on stderr when it is a terminal (see
/// [`crate::progress`]), and returns that final state. A watch stream that breaks or ends
/// before the job does is re-opened (at most [`WATCH_RETRIES_MAX`] times); this never
/// returns a job that can still change.
///
/// Errors: the operator answers with an error (e.g. `NOT_FOUND`); [`ConnectionLost`] when
/// it stops answering before the job ends.
pub async fn watch(client: &mut super::conn::Client, job_id: &str) -> anyhow::Result<pb::Job> {
    let multi = progress::multi();
    let mut bars: BTreeMap<String, PhaseBar> = BTreeMap::new();
    let mut failures = 0u32;
    let end = loop {
        match follow_once(client, job_id, &multi, &mut bars).await {
            Ok(Some(j)) => break Ok(j),
            Ok(None) => failures += 1,
            Err(s) if !crate::exit::is_transport(&s) && s.code() != tonic::Code::Unavailable => {
                break Err(anyhow::Error::new(s).context(format!("watching job {job_id}")));
            }
            Err(_) => failures += 1,
        }
        if failures > WATCH_RETRIES_MAX {
            break Err(anyhow::Error::new(ConnectionLost {
                what: format!("the operator stopped reporting on job {job_id} before it ended"),
            }));
        }
        tokio::time::sleep(WATCH_RETRY_PAUSE).await;
    };
    for bar in bars.values() {
        bar.finish();
    }
    end
}

fn job_ref(job_id: &str) -> pb::JobRef {
    pb::JobRef {
        job_id: job_id.into(),
    }
}

/// One watch stream, read to its end: the terminal job if it came, `None` if the stream
/// ended first.
async fn follow_once(
    client: &mut super::conn::Client,
    job_id: &str,
    multi: &indicatif::MultiProgress,
    bars: &mut BTreeMap<String, PhaseBar>,
) -> Result<Option<pb::Job>, tonic::Status> {
    let mut stream = client.watch_job(job_ref(job_id)).await?.into_inner();
    while let Some(j) = stream.next().await {
        let j = j?;
        for p in &j.progress {
            bars.entry(p.party.clone())
                .or_insert_with(|| PhaseBar::new(multi, &p.party))
                .update_with_eta(&p.phase, p.done, p.total, p.eta_ms);
        }
        if is_terminal(&j) {
            return Ok(Some(j));
        }
    }
    // The stream ended early (the operator restarted, a proxy cut it): ask once directly.
    let j = client.get_job(job_ref(job_id)).await?.into_inner();
    Ok(is_terminal(&j).then_some(j))
}

/// `Ok` for a succeeded (or still running, when not followed) job; [`JobEnded`] for a
/// refused, failed or cancelled one, whose exit status says which (see [`crate::exit`]).
fn job_outcome(j: &pb::Job) -> anyhow::Result<()> {
    match j.state() {
        s @ (pb::JobState::Refused | pb::JobState::Failed | pb::JobState::Cancelled) => {
            Err(anyhow::Error::new(JobEnded {
                job_id: j.job_id.clone(),
                state: s,
            }))
        }
        _ => Ok(()),
    }
}

/// Runs one job command.
pub async fn run(cmd: JobCmd) -> anyhow::Result<()> {
    match cmd {
        JobCmd::Submit {
            conn,
            licence,
            buyer_party,
            buyer_dataset,
            buyer_columns,
            provider_columns,
            mode,
            protocol,
            key_case,
            unicode_form,
            empty_keys,
            output,
            request_id,
            carry_columns,
            payload,
            join,
            watch: follow,
        } => {
            // A join (a PSI with payload) runs under the licence's psi_payload scene.
            let join = match (join, payload.is_empty()) {
                (Some(j), _) => Some(j),
                (None, false) => Some("inner".to_string()),
                (None, true) => None,
            };
            let scene = if join.is_some() {
                tessera_core::job::scene::PSI_PAYLOAD
            } else {
                tessera_core::job::scene::PSI
            };
            let join = match join {
                Some(j) => pb::JoinKind::from(j.parse::<tessera_core::JoinKind>()?).into(),
                None => pb::JoinKind::Unspecified.into(),
            };
            let protocol = match protocol {
                Some(p) => pb::PsiProtocol::from(
                    p.to_ascii_lowercase()
                        .parse::<tessera_core::PsiProtocol>()?,
                )
                .into(),
                None => pb::PsiProtocol::Unspecified.into(),
            };
            let mut c = conn.connect().await?;
            let j = send_submission(
                &mut c,
                pb::SubmitJobRequest {
                    user: String::new(),
                    licence_id: licence,
                    scene: scene.into(),
                    buyer_party,
                    buyer_dataset_id: buyer_dataset,
                    buyer_columns,
                    provider_columns,
                    mode: pb::PsiMode::from(
                        mode.to_ascii_lowercase().parse::<tessera_core::PsiMode>()?,
                    )
                    .into(),
                    key_case: pb::KeyCase::from(key_case.parse::<tessera_core::KeyCase>()?).into(),
                    unicode_form: pb::UnicodeForm::from(
                        unicode_form.parse::<tessera_core::UnicodeForm>()?,
                    )
                    .into(),
                    empty_keys: pb::EmptyKeys::from(empty_keys.parse::<tessera_core::EmptyKeys>()?)
                        .into(),
                    carry_columns,
                    output,
                    user_groups: String::new(),
                    request_id: request_id.unwrap_or_default(),
                    protocol,
                    preview_first_row: 0,
                    preview_last_row: 0,
                    mpc_query: String::new(),
                    mpc_columns: Vec::new(),
                    join,
                    payload_columns: payload,
                    mpc_triples: pb::MpcTriples::Unspecified.into(),
                    fl: None,
                },
            )
            .await?;
            print_and_follow(&mut c, j, follow).await?;
        }
        JobCmd::Preview {
            conn,
            licence,
            buyer_party,
            rows,
            columns,
            output,
            request_id,
            watch: follow,
        } => {
            let (first, last) = rows.unwrap_or((0, 0));
            let mut c = conn.connect().await?;
            let j = send_submission(
                &mut c,
                pb::SubmitJobRequest {
                    licence_id: licence,
                    scene: tessera_core::job::scene::PREVIEW.into(),
                    buyer_party,
                    provider_columns: columns,
                    output,
                    request_id: request_id.unwrap_or_default(),
                    preview_first_row: first,
                    preview_last_row: last,
                    mpc_query: String::new(),
                    mpc_columns: Vec::new(),
                    ..pb::SubmitJobRequest::default()
                },
            )
            .await?;
            print_and_follow(&mut c, j, follow).await?;
        }
        JobCmd::Mpc(args) => {
            let mpc_triples = match args.triples {
                Some(t) => pb::MpcTriples::from(t.parse::<tessera_core::MpcTriples>()?).into(),
                None => pb::MpcTriples::Unspecified.into(),
            };
            let fill = pb::SubmitJobRequest {
                mpc_query: args.query,
                mpc_columns: args.columns,
                mpc_triples,
                ..pb::SubmitJobRequest::default()
            };
            keyed_job(tessera_core::job::scene::MPC, args.keyed, fill).await?
        }
        JobCmd::Tee(args) => tee_job(args).await?,
        JobCmd::Fl(args) => fl_job(args).await?,
        JobCmd::Get { conn, id } => {
            let j = conn
                .connect()
                .await?
                .get_job(job_ref(&id))
                .await?
                .into_inner();
            Out::stdout().line(job_line(&j))?;
        }
        JobCmd::Watch { conn, id } => {
            let j = watch(&mut conn.connect().await?, &id).await?;
            Out::stdout().line(job_line(&j))?;
            job_outcome(&j)?;
        }
        JobCmd::List(a) => super::lists::jobs(a).await?,
        JobCmd::Cancel { conn, id } => {
            let j = conn
                .connect()
                .await?
                .cancel_job(job_ref(&id))
                .await?
                .into_inner();
            Out::stdout().line(job_line(&j))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_mpc_column;

    #[test]
    fn mpc_columns_need_a_bound_or_levels_of_at_least_one() {
        let c = parse_mpc_column("provider.income=numeric:100000").expect("numeric");
        assert_eq!((c.column.as_str(), c.abs_max), ("provider.income", 100_000));
        let c = parse_mpc_column("buyer.region=categorical:3").expect("categorical");
        assert_eq!(c.levels, 3);
        for bad in [
            "buyer.x=numeric:0",
            "buyer.x=categorical:0",
            "buyer.x=numeric:-5",
            "buyer.x=numeric:1e300",
            "buyer.x=categorical:4294967296",
            "buyer.x=text:3",
            "buyer.x",
        ] {
            assert!(parse_mpc_column(bad).is_err(), "{bad}");
        }
    }
}
