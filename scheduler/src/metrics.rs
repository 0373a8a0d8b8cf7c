//! The operator's metrics in the Prometheus text format (`GET /metrics`), with the
//! `prometheus-client` crate: one [`Metrics`] per scheduler (no global registry), recorded where
//! the decisions are made and rendered on request together with what is read at that moment
//! (live workers per party, jobs per state, ledger transfers per kind: counted from the store,
//! so they survive restarts).
//!
//! Names (all prefixed `tessera_`):
//! - `jobs_admitted_total{scene}`, `jobs_refused_total{scene,reason}` (reason: the typed
//!   refusal's kind: `policy_denied`, `quota_exhausted`, `insufficient_funds`, ...);
//! - `job_ends_total{scene,state}` and `job_duration_seconds{scene,state}` (admission to end);
//! - `jobs{state}`: jobs per state in the store (a gauge);
//! - `engine_bytes_total{engine,direction}`, `engine_rounds_total{engine}`: what the workers
//!   reported for finished tasks;
//! - `ledger_transfers{kind}`: transfers in the ledger per kind (`posted`, `pending`,
//!   `post_pending`, `void_pending`; a gauge read from the append-only table);
//! - `auth_failures_total{kind}`: `unauthenticated` (no or a bad token) and
//!   `permission_denied` (the table refused);
//! - `workers_live{party}`: live workers per party.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SceneLabel {
    scene: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabel {
    scene: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    scene: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabel {
    engine: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabel {
    engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartyLabel {
    party: String,
}

fn histogram() -> Histogram {
    // 0.1 s .. 2 h, written out: bounds computed in floating point print as
    // `le="0.30000000000000004"`.
    Histogram::new([
        0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
    ])
}

/// The operator's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    admitted: Family<SceneLabel, Counter>,
    refused: Family<RefusalLabel, Counter>,
    ends: Family<EndLabel, Counter>,
    durations: Family<EndLabel, Histogram, fn() -> Histogram>,
    jobs: Family<StateLabel, Gauge>,
    bytes: Family<BytesLabel, Counter>,
    rounds: Family<EngineLabel, Counter>,
    transfers: Family<KindLabel, Gauge>,
    auth_failures: Family<KindLabel, Counter>,
    workers: Family<PartyLabel, Gauge>,
    certificates: Family<KindLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What an authentication or authorisation failure was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token, or one that is not live.
    Unauthenticated,
    /// The table refused the call.
    PermissionDenied,
}

impl Metrics {
    /// Empty metrics, registered under their names.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("tessera")),
            admitted: Family::default(),
            refused: Family::default(),
            ends: Family::default(),
            durations: Family::new_with_constructor(histogram),
            jobs: Family::default(),
            bytes: Family::default(),
            rounds: Family::default(),
            transfers: Family::default(),
            auth_failures: Family::default(),
            workers: Family::default(),
            certificates: Family::default(),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register("jobs_admitted", "Jobs admitted", m.admitted.clone());
            r.register(
                "jobs_refused",
                "Jobs refused, by the refusal's kind",
                m.refused.clone(),
            );
            r.register("job_ends", "Jobs ended, by final state", m.ends.clone());
            r.register(
                "job_duration_seconds",
                "Time from admission to the end of a job",
                m.durations.clone(),
            );
            r.register("jobs", "Jobs in the store, by state", m.jobs.clone());
            r.register(
                "engine_bytes",
                "Bytes the engines' tasks sent and received",
                m.bytes.clone(),
            );
            r.register(
                "engine_rounds",
                "Protocol rounds (frames sent) of the engines' tasks",
                m.rounds.clone(),
            );
            r.register(
                "ledger_transfers",
                "Transfers in the ledger, by kind",
                m.transfers.clone(),
            );
            r.register(
                "auth_failures",
                "Calls refused for want of a valid token or a permission",
                m.auth_failures.clone(),
            );
            r.register("workers_live", "Live workers, by party", m.workers.clone());
            r.register(
                "certificates_issued",
                "Peer-link certificates signed, at registration or renewal",
                m.certificates.clone(),
            );
        }
        m
    }

    /// A job admitted.
    pub fn admitted(&self, scene: &str) {
        self.admitted
            .get_or_create(&SceneLabel {
                scene: scene.into(),
            })
            .inc();
    }

    /// A job refused, with the refusal's kind.
    pub fn refused(&self, scene: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusalLabel {
                scene: scene.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A job ended in `state` after `seconds` from its admission.
    pub fn ended(&self, scene: &str, state: &str, seconds: f64) {
        let label = EndLabel {
            scene: scene.into(),
            state: state.into(),
        };
        self.ends.get_or_create(&label).inc();
        self.durations
            .get_or_create(&label)
            .observe(seconds.max(0.0));
    }

    /// A finished task's traffic.
    pub fn engine_usage(&self, engine: &str, sent: u64, received: u64, rounds: u64) {
        for (direction, n) in [("sent", sent), ("received", received)] {
            self.bytes
                .get_or_create(&BytesLabel {
                    engine: engine.into(),
                    direction: direction.into(),
                })
                .inc_by(n);
        }
        self.rounds
            .get_or_create(&EngineLabel {
                engine: engine.into(),
            })
            .inc_by(rounds);
    }

    /// A peer-link certificate signed: `renewal` true for a running worker's renewal.
    pub fn certificate_issued(&self, renewal: bool) {
        let kind = if renewal { "renewal" } else { "registration" };
        self.certificates
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// A call refused by authentication or authorisation.
    pub fn auth_failure(&self, kind: AuthFailure) {
        let kind = match kind {
            AuthFailure::Unauthenticated => "unauthenticated",
            AuthFailure::PermissionDenied => "permission_denied",
        };
        self.auth_failures
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// The text exposition, with the gauges set from what is read now.
    pub fn render(
        &self,
        workers_live: &[(String, i64)],
        jobs_by_state: &[(String, i64)],
        transfers_by_kind: &[(String, i64)],
    ) -> String {
        // One render at a time: two scrapes never see each other's half-set gauges.
        let Ok(registry) = self.registry.lock() else {
            return String::new();
        };
        self.workers.clear();
        for (party, n) in workers_live {
            self.workers
                .get_or_create(&PartyLabel {
                    party: party.clone(),
                })
                .set(*n);
        }
        self.jobs.clear();
        for (state, n) in jobs_by_state {
            self.jobs
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
        self.transfers.clear();
        for (kind, n) in transfers_by_kind {
            self.transfers
                .get_or_create(&KindLabel { kind: kind.clone() })
                .set(*n);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}
