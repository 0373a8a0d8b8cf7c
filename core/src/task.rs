//! The task specification the operator sends to a worker, and the attributes a worker
//! declares. Both travel as JSON; the ticket signs the exact spec bytes. A worker parses the
//! spec once into these strict types: an unknown role, mode or key case is refused there.

use serde::{Deserialize, Serialize};

use crate::job::{JoinKind, PsiMode, PsiProtocol, TaskRole};
use crate::table::{EmptyKeys, KeyCase, UnicodeForm};

/// What a worker declares about itself at registration; matched against licence policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAttributes {
    /// The party (organisation) the worker acts for.
    pub party: String,
    /// Run region (T/AI `visitArea`).
    pub region: String,
    /// Compute centre (T/AI `cpCenter`).
    pub compute_centre: String,
    /// Hardware class (T/AI `envHard`).
    pub hardware: String,
    /// AI frameworks available (T/AI `aiFrame`).
    pub ai_frameworks: Vec<String>,
    /// Software environment (T/AI `envSoft`).
    pub software_env: String,
}

fn ecdh() -> PsiProtocol {
    PsiProtocol::Ecdh
}

/// One party's part of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The job.
    pub job_id: String,
    /// This task.
    pub task_id: String,
    /// The scene (engine) to run, e.g. `psi`.
    pub scene: String,
    /// Role within the engine (`sender` or `receiver` in the JSON).
    pub role: TaskRole,
    /// Engine mode (`intersection` or `size` in the JSON).
    pub mode: PsiMode,
    /// PSI protocol (`rr22` or `ecdh`); both tasks of a job carry the same. Specs made before
    /// the protocol was chosen per job ran ECDH, hence that default.
    #[serde(default = "ecdh")]
    pub protocol: PsiProtocol,
    /// Dataset file name inside the worker's dataset directory.
    pub dataset_location: String,
    /// Key columns to read.
    pub key_columns: Vec<String>,
    /// Key case normalisation (`preserve`, `lower`, `upper` or `fold` in the JSON).
    pub key_case: KeyCase,
    /// Unicode normalisation form of keys (`none`, `nfc` or `nfkc`); both tasks carry the same.
    #[serde(default)]
    pub unicode_form: UnicodeForm,
    /// What rows with an empty key do (`skip` or `fail`); both tasks carry the same.
    #[serde(default)]
    pub empty_keys: EmptyKeys,
    /// Further columns of this party's own dataset written next to the key columns in the
    /// result (receiver only; empty otherwise).
    #[serde(default)]
    pub carry_columns: Vec<String>,
    /// Whether this side dials the peer (`true`) or waits for it.
    pub dial_peer: bool,
    /// Peer worker's address (host:port) when dialling.
    pub peer_addr: String,
    /// Random shared secret naming the peer session; known only to the two workers.
    pub session_id: String,
    /// The peer's party and worker id: the names its TLS certificate must carry on the peer
    /// link (empty in specs made before peer links used TLS).
    #[serde(default)]
    pub peer_party: String,
    /// See [`TaskSpec::peer_party`].
    #[serde(default)]
    pub peer_worker_id: String,
    /// Output file name inside the worker's output directory, if this side writes a result.
    pub output: String,
    /// For a `preview` task (both sides carry the same): the rows and columns the provider's
    /// worker reads and sends, and the most the buyer's worker accepts and writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewSpec>,
    /// The licence the task runs under, as admission checked it; the worker checks it again
    /// against itself before it runs anything (issue "Licences and usage control": the
    /// worker re-checks its signed ticket against the licence it names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<LicenceGrant>,
    /// For an `mpc` task (both sides carry the same): the computation, its public schema and
    /// the output controls the licence's scene sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpc: Option<MpcSpec>,
    /// For a `tee` task (both sides carry the same): the enclave it runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tee: Option<TeeSpec>,
    /// For an `fl` task: the training every task of the job runs (the aggregator's also lists
    /// the providers' seats; a provider's names its own index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fl: Option<FlSpec>,
    /// For a join task (both sides carry the same; a `tee` job that computes no query): the
    /// result's shape and the provider's columns that cross for matched rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
}

/// An `fl` job's federated training (FedAvg, McMahan et al. AISTATS 2017, every average one
/// SecAgg+ round: crate `tessera-fl`), signed with each task. The providers' workers are the
/// job's `sender` tasks (each trains on its own table and dials the aggregator), the buyer's
/// worker its one `receiver` task: the aggregator, which alone learns the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlSpec {
    /// The model trained.
    pub model: FlModel,
    /// Feature columns, in order (numeric; the same names in every provider's table).
    pub features: Vec<String>,
    /// The label column (0/1, `true`/`false`).
    pub label: String,
    /// `R`: FedAvg rounds.
    pub rounds: u32,
    /// `E`: local epochs per round.
    pub epochs: u32,
    /// `B`: rows per local SGD step.
    pub batch_size: u32,
    /// `η`: the local SGD step size.
    pub learning_rate: f64,
    /// The fraction of providers sampled each round, in `(0, 1]`.
    pub sample_fraction: f64,
    /// `t`: SecAgg+'s reconstruction threshold, the fewest providers a round needs.
    pub threshold: u32,
    /// `k`: SecAgg+'s share-group size, for a sparse graph (`None`: complete graph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbours: Option<u32>,
    /// Whether the features are standardised by their global mean and standard deviation
    /// (computed through one secure round) before training.
    #[serde(default)]
    pub standardise: bool,
    /// Client-level differential privacy, if asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<FlDp>,
    /// Most rows a provider's table may hold (also FedAvg's public weighting bound `N_max`).
    pub rows_max: u64,
    /// `K`: the providers of the job.
    pub providers: u32,
    /// The aggregator's task only: each provider's seat, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seats: Vec<FlSeat>,
    /// A provider's task only: its index among the job's providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

/// The model of an `fl` job (binary classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FlModel {
    /// Logistic regression.
    Logistic,
    /// One hidden ReLU layer of `hidden` units.
    Mlp {
        /// Hidden units.
        hidden: u32,
    },
}

/// DP-FedAvg's settings (McMahan et al. ICLR 2018): each update clipped to L2 norm
/// `clip_norm`, Gaussian noise of multiplier `noise_multiplier`, ε reported at `delta`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FlDp {
    /// `z`.
    pub noise_multiplier: f64,
    /// `C`.
    pub clip_norm: f64,
    /// `δ`.
    pub delta: f64,
}

/// One provider's seat at an `fl` job's aggregator: the peer session its worker dials with and
/// the names its TLS certificate must carry. The session id is a secret of the two workers:
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlSeat {
    /// The peer session (random, known to this provider's worker and the aggregator's).
    pub session_id: String,
    /// The provider's party.
    pub party: String,
    /// The provider's worker.
    pub worker_id: String,
}

impl std::fmt::Debug for FlSeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlSeat")
            .field("party", &self.party)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

/// The column of a left join's result that says whether the row's key matched (`true` /
/// `false`).
pub const JOIN_MATCHED_COLUMN: &str = "matched";

/// A join (a PSI with the provider's payload columns), signed with the task: which of the
/// buyer's rows the result holds and which of the provider's columns it carries for matched
/// rows — columns the licence's scene lists in its `payloadColumns`, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSpec {
    /// The result's shape.
    pub kind: JoinKind,
    /// The provider's columns written for matched rows, in order (none for `difference`).
    #[serde(default)]
    pub payload_columns: Vec<String>,
}

/// The enclave a `tee` job runs in, as the operator appraised it when it placed the job: the
/// provider's worker, whose attestation result (an EAR-shaped compact JWS signed by the
/// operator, `tessera_tee::verify_result`) binds the enclave's X25519 key. The buyer's worker
/// encrypts its rows to that key (HPKE, RFC 9180); the provider's worker asks the operator's
/// key broker for its dataset's key, wrapped to the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeeSpec {
    /// The enclave's X25519 public key (64 hex digits).
    pub enclave_public_key: String,
    /// The TEE kind (`sgx`, `tdx`, `sev-snp`, `insecure-simulated-tee`).
    pub kind: String,
    /// The attestation result the placement relied on (compact JWS).
    pub attestation_result: String,
    /// The provider's dataset whose key the enclave asks for.
    pub dataset_id: String,
}

/// A column an `mpc` computation reads, declared by the buyer in its request and public to
/// both parties: `buyer.NAME` or `provider.NAME`, numeric with a bound on magnitudes or
/// categorical with a number of category codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpcColumn {
    /// `buyer.NAME` or `provider.NAME` (the name of a column of that party's dataset).
    pub column: String,
    /// Numeric: values are reals with `|x| ≤ abs_max` (the owner's worker clips larger ones
    /// to ±`abs_max` and counts them); 0 for a categorical column.
    #[serde(default)]
    pub abs_max: u64,
    /// Categorical: values are the integer codes `0 .. levels` (for `GROUP BY` and `WHERE`);
    /// 0 for a numeric column.
    #[serde(default)]
    pub levels: u32,
}

/// What an `mpc` job computes (the buyer's part of the request): a statistics query in the
/// language of `tessera_mpc::query` over the declared columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpcQuery {
    /// The query text, e.g. `SELECT count(*), mean(provider.income) GROUP BY buyer.region`.
    pub query: String,
    /// Every column the query reads, with its kind (the public schema).
    pub columns: Vec<MpcColumn>,
}

/// An `mpc` task's computation, signed with the task: the buyer's query and the output
/// controls of the licence's `mpc` scene, enforced inside the computation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpcSpec {
    /// The query and its schema.
    pub query: MpcQuery,
    /// Groups with fewer rows than this are suppressed before anything is opened
    /// (`minGroupSize` of the scene; `None`: no minimum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_group_size: Option<u64>,
    /// Only aggregates may leave the computation (`aggregatesOnly` of the scene).
    #[serde(default)]
    pub aggregates_only: bool,
    /// Fractional bits of the fixed-point encoding.
    pub fraction_bits: u32,
    /// Who receives a trained model (`modelTo` of the scene; a query's outputs always go to
    /// the buyer).
    #[serde(default)]
    pub model_to: ModelRecipient,
    /// Where the triples come from (resolved at admission against the scene's `protocols`;
    /// a spec without it ran dealer-free).
    #[serde(default = "ot_triples")]
    pub triples: crate::MpcTriples,
}

fn ot_triples() -> crate::MpcTriples {
    crate::MpcTriples::Ot
}

/// The party a trained model is opened to (`modelTo` of a licence's `mpc` scene): the buyer
/// (default) or the data provider — the other party learns nothing of it —, or nobody: the
/// model stays secret-shared between the two parties' workers, for later scoring jobs
/// (`SCORE … MODEL job`) under the same licence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRecipient {
    /// The buyer (the job's submitter).
    #[default]
    Buyer,
    /// The provider of the licensed dataset.
    Provider,
    /// Nobody: each party's worker keeps its share of the model (`shared`).
    Shared,
}

/// What a task's licence allows, signed with the task: the licence and dataset, the
/// validity window as UTC instants, and the scene's settings (T/AI 123.12 table A.50, the
/// JSON of `tessera_policy::UseScene`: its region, centre, hardware, framework and software
/// lists and the preview window). The worker refuses a task outside any of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceGrant {
    /// The licence.
    pub licence_id: String,
    /// The licensed dataset.
    pub dataset_id: String,
    /// Start of validity, ms since epoch (`startDate` read in the operator's zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
    /// End of validity (exclusive), ms since epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<i64>,
    /// The scene's settings as in the licence's policy.
    pub use_scene: serde_json::Value,
}

/// The part of the provider's dataset a `preview` task shows: rows `first_row..=last_row`
/// (1-based, the header excluded) of `columns` (empty: every column). Decided at admission
/// inside the licence's window (`tessera_policy::PreviewWindow`) and signed with the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewSpec {
    /// First row.
    pub first_row: u64,
    /// Last row (inclusive).
    pub last_row: u64,
    /// Columns, in order; empty: all of the file's.
    #[serde(default)]
    pub columns: Vec<String>,
}

impl PreviewSpec {
    /// The most rows the preview shows.
    pub fn rows_max(&self) -> u64 {
        self.last_row
            .saturating_sub(self.first_row)
            .saturating_add(1)
    }
}
