//! `fl` jobs (issue "Federated learning with secure aggregation that survives dropouts"): one
//! buyer trains a model on several providers' datasets, each under its own licence, without
//! any party seeing another's rows (FedAvg with SecAgg+, crate `tessera-fl`).
//!
//! * **Request**: [`FlRequest`] in [`JobRequest::fl`]: every provider's licence in order (the
//!   first is the job's `licence_id`, the others its further licences), the model, the feature
//!   and label columns (the same names in every provider's table) and the training settings.
//! * **Admission**: every licence must exist, allow the `fl` scene for this buyer now (its
//!   policy, window, count and paid term), and cover its dataset; each is counted once, all or
//!   none ([`tessera_store::NewJob::co_licences`]); each has holds of its own estimated maximum
//!   cost (its price on its dataset's declared rows), drawn one licence after the other from
//!   the buyer's funds. A federation takes each provider party once.
//! * **Placement**: one `sender` task per licence on a live worker of its provider that fits
//!   that licence's scene lists (region, centre, hardware, software and `aiFrame`: the worker
//!   declares the frameworks it runs and the scene must allow one of them); the `receiver`
//!   task — the aggregator — on a live worker of the buyer that fits **every** licence's
//!   scene. The model goes to the aggregator's worker only.
//! * **Counting a provider that drops out**: every licence is counted with the job — committed
//!   when it succeeds or ends after its delivery point, released when it fails before. A
//!   provider whose worker drops out mid-run is still counted (the model may carry its earlier
//!   rounds) and still charged on its licence's price.
//! * **Delivery point**: the first provider to record it, before its first unmasking shares
//!   leave (from then on the aggregator can learn a sum including its data).
//! * **Charge**: one settlement per licence (its price on its provider's rows, paid to its
//!   provider), each with its own bill line; the job's charge is their sum.

use std::collections::HashSet;

use tessera_core::{FlDp, FlModel, FlSeat, FlSpec};

use super::*;

/// Most providers (licences) in one `fl` job.
pub const FL_PROVIDERS_MAX: usize = 64;
/// Most feature columns in one `fl` job.
pub const FL_FEATURES_MAX: usize = 256;
/// Most rounds of one `fl` job (`tessera_fl::fedavg::ROUNDS_MAX`).
pub const FL_ROUNDS_MAX: u32 = tessera_fl::fedavg::ROUNDS_MAX;
/// FedAvg's public row bound `N_max` when a provider's dataset declares no row count.
pub const FL_ROWS_MAX_DEFAULT: u64 = 1_000_000;

/// An `fl` job's training (the buyer's part of the request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlRequest {
    /// Every provider's licence, in order; the first is the job's `licence_id`.
    pub licences: Vec<String>,
    /// The model.
    pub model: FlModel,
    /// Feature columns (numeric), in model order.
    pub features: Vec<String>,
    /// The 0/1 label column.
    pub label: String,
    /// FedAvg rounds.
    pub rounds: u32,
    /// Local epochs per round.
    pub epochs: u32,
    /// Rows per local SGD step.
    pub batch_size: u32,
    /// Local SGD step size.
    pub learning_rate: f64,
    /// Fraction of the providers sampled each round, `(0, 1]`.
    pub sample_fraction: f64,
    /// SecAgg+'s threshold `t` (the fewest providers a round needs).
    pub threshold: u32,
    /// SecAgg+'s share-group size `k` (`None`: complete graph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbours: Option<u32>,
    /// Standardise the features by their global moments (one secure round) first.
    #[serde(default)]
    pub standardise: bool,
    /// Client-level DP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<FlDp>,
}

impl FlRequest {
    /// The signed training every task carries (the seats and index are added per task).
    pub(crate) fn spec(&self, rows_max: u64) -> FlSpec {
        FlSpec {
            model: self.model,
            features: self.features.clone(),
            label: self.label.clone(),
            rounds: self.rounds,
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            sample_fraction: self.sample_fraction,
            threshold: self.threshold,
            neighbours: self.neighbours,
            standardise: self.standardise,
            dp: self.dp,
            rows_max,
            providers: self.licences.len() as u32,
            seats: Vec::new(),
            index: None,
        }
    }
}

/// The part of a settlement a licence is (see `tessera_accounting::settle::FinishedJob::part`):
/// the job's own licence keeps the ids of a one-licence job; each further licence is named.
pub(crate) fn part_of(i: usize, licence_id: &str) -> Option<&str> {
    (i > 0).then_some(licence_id)
}

impl JobRequest {
    /// Whether this is an `fl` job.
    pub fn is_fl(&self) -> bool {
        self.scene == tessera_core::job::scene::FL
    }

    /// An `fl` job's shape: its training, 2 ..= [`FL_PROVIDERS_MAX`] distinct licences (the
    /// first the job's `licence_id`), 1 ..= [`FL_FEATURES_MAX`] distinct feature columns and a
    /// label not among them, an output, the settings `tessera_fl` accepts for that many
    /// providers, a model whose parameters fit one frame; none of the PSI-shaped fields.
    pub(super) fn validate_fl(&self) -> Result<(), SchedulerError> {
        let bad = |m: String| Err(SchedulerError::Invalid(m));
        let Some(fl) = &self.fl else {
            return bad(
                "fl: an fl job needs its training (licences, model, features, label)".into(),
            );
        };
        let n = fl.licences.len();
        if !(2..=FL_PROVIDERS_MAX).contains(&n) {
            return bad(format!(
                "fl.licences: a federation needs 2 to {FL_PROVIDERS_MAX} providers' licences, \
                 not {n}"
            ));
        }
        let mut seen = HashSet::new();
        for l in &fl.licences {
            check_field("fl.licences", l, true)?;
            if !seen.insert(l) {
                return bad(format!("fl.licences: licence {l} is named twice"));
            }
        }
        if fl.licences[0] != self.licence_id {
            return bad(format!(
                "licence_id {:?} must be the first of fl.licences ({:?})",
                self.licence_id, fl.licences[0]
            ));
        }
        if fl.features.is_empty() || fl.features.len() > FL_FEATURES_MAX {
            return bad(format!(
                "fl.features must name 1 to {FL_FEATURES_MAX} columns"
            ));
        }
        let mut seen = HashSet::new();
        for f in &fl.features {
            check_field("fl.features", f, true)?;
            if !seen.insert(f) {
                return bad(format!("fl.features: column {f} is named twice"));
            }
        }
        check_field("fl.label", &fl.label, true)?;
        if seen.contains(&fl.label) {
            return bad(format!("fl.label: {} is also a feature column", fl.label));
        }
        file_name("output", &self.output, true)?;
        let unused = [
            (!self.buyer_dataset_id.is_empty(), "buyer_dataset_id"),
            (!self.buyer_columns.is_empty(), "buyer_columns"),
            (!self.provider_columns.is_empty(), "provider_columns"),
            (!self.carry_columns.is_empty(), "carry_columns"),
            (self.protocol.is_some(), "protocol"),
            (self.mpc.is_some(), "mpc_query"),
            (self.mpc_triples.is_some(), "mpc_triples"),
            (self.join.is_some(), "join"),
            (!self.payload_columns.is_empty(), "payload_columns"),
            (self.preview_rows.is_some(), "preview_rows"),
        ];
        if let Some((_, name)) = unused.iter().find(|(set, _)| *set) {
            return bad(format!(
                "{name}: an fl job reads each provider's licensed dataset and no dataset of the \
                 buyer's; drop {name}"
            ));
        }
        if let Some(k) = fl.neighbours
            && (k < 3 || k % 2 == 0)
        {
            return bad(format!(
                "fl.neighbours {k}: SecAgg+'s share-group size is odd and at least 3 (leave it \
                 unset for the complete graph)"
            ));
        }
        if let FlModel::Mlp { hidden } = fl.model
            && !(1..=tessera_fl::model::HIDDEN_MAX).contains(&(hidden as usize))
        {
            return bad(format!(
                "fl.hidden {hidden}: an mlp has 1 to {} hidden units",
                tessera_fl::model::HIDDEN_MAX
            ));
        }
        // A round samples ⌈f·n⌉ providers: fewer than t would skip every round.
        let sampled = ((fl.sample_fraction * n as f64).ceil() as usize).clamp(1, n);
        if fl.sample_fraction > 0.0 && (sampled as u32) < fl.threshold {
            return bad(format!(
                "fl.sample_fraction {}: {sampled} of {n} providers a round, below the threshold \
                 {} a round needs: every round would be skipped",
                fl.sample_fraction, fl.threshold
            ));
        }
        let spec = fl.spec(FL_ROWS_MAX_DEFAULT);
        tessera_fl::federation::config_of(&spec, "validate")
            .map_err(|e| SchedulerError::Invalid(format!("fl: {e}")))?;
        let d = fl.features.len();
        let params = match fl.model {
            FlModel::Logistic => d + 1,
            FlModel::Mlp { hidden } => {
                let h = hidden as usize;
                h.saturating_mul(d).saturating_add(2 * h + 1)
            }
        };
        let frame = params
            .saturating_mul(8)
            .saturating_add(tessera_fl::wire::MASKED_HEADER_BYTES + 64);
        if frame > tessera_core::limits::FRAME_BYTES_MAX {
            return bad(format!(
                "fl.model: {params} parameters do not fit one {} MiB frame; use fewer hidden \
                 units or features",
                tessera_core::limits::FRAME_BYTES_MAX >> 20
            ));
        }
        Ok(())
    }
}

/// What admission read before its transaction for each provider licence, in order.
#[derive(Debug, Clone)]
pub(super) struct FlProvider {
    /// The licence's dataset (`None`: the licence or its dataset is unknown).
    pub(super) dataset: Option<tessera_store::DatasetRecord>,
    /// The provider's task id and the peer session its worker dials the aggregator with.
    pub(super) task_id: String,
    pub(super) session_id: String,
}

impl Admission {
    /// The decision on an `fl` job (see the module docs).
    pub(super) fn decide_fl(&self, ctx: &AdmitContext<'_>) -> Result<Decision, SchedulerError> {
        let req = &self.req;
        let job_id = &self.job_id;
        let Some(fl) = &req.fl else {
            return Err(SchedulerError::Invalid("fl: missing".into()));
        };
        let mut reasons = self.pre_reasons.clone();
        let freeze = ctx.freeze.decide(&req.user, &req.scene, ctx.cash_micros);
        let auto_frozen = (freeze.auto_frozen != ctx.freeze.auto_frozen)
            .then(|| (freeze.auto_frozen, freeze.notice.clone()));
        if let Err(reason) = freeze.admit_job() {
            reasons.push(Refusal::AccountFrozen { reason });
        }
        let named: Vec<(&str, Option<&LicenceRecord>, &Result<(), String>)> =
            std::iter::once((req.licence_id.as_str(), ctx.licence, &ctx.term))
                .chain(
                    ctx.co_licences
                        .iter()
                        .map(|c| (c.licence_id.as_str(), c.licence.as_ref(), &c.term)),
                )
                .collect();
        let mut funds = ctx.funds.clone();
        let available: i64 = funds.iter().map(|(_, m)| (*m).max(0)).sum();
        let mut needed = 0i64;
        let mut short = false;
        let mut holds = Vec::new();
        let mut checks = Vec::new();
        let mut licensors = HashSet::new();
        let mut fitting = Vec::new();
        for (i, (id, licence, term)) in named.iter().enumerate() {
            let Some(l) = licence else {
                reasons.push(Refusal::LicenceNotFound {
                    licence_id: (*id).to_string(),
                });
                continue;
            };
            if !licensors.insert(l.licensor.clone()) {
                return Err(SchedulerError::Invalid(format!(
                    "fl.licences: two licences are of provider {}; a federation takes each \
                     provider once",
                    l.licensor
                )));
            }
            let scene = l.policy.scene(&req.scene);
            let verdict = evaluate(
                &l.policy,
                &Request {
                    user: &req.user,
                    groups: &req.user_groups,
                    scene: &req.scene,
                    protocol: None,
                    now_ms: self.now,
                    zone: &self.zone,
                    preview: None,
                    mpc_row_level: None,
                    join: None,
                },
                scene.and_then(|s| s.remaining_counts),
            );
            for c in verdict.checks.iter().filter(|c| !c.ok) {
                reasons.push(match c.constraint {
                    Constraint::Count => Refusal::QuotaExhausted {
                        scene: format!("{} of licence {id}", req.scene),
                    },
                    constraint => Refusal::PolicyDenied {
                        constraint,
                        reason: format!("licence {id}: {}", c.reason),
                    },
                });
            }
            checks.push(serde_json::json!({"licence_id": id, "checks": verdict.checks}));
            if let Err(reason) = term {
                reasons.push(Refusal::NoPaidTerm {
                    reason: format!("licence {id}: {reason}"),
                });
            }
            let declared = self
                .fl_providers
                .get(i)
                .and_then(|p| p.dataset.as_ref())
                .and_then(|d| d.declared_rows);
            match settle::estimate_max_cost(&l.price, declared) {
                Ok(max) => {
                    needed = needed.saturating_add(max);
                    match settle::admission_holds_of(
                        job_id,
                        part_of(i, id),
                        &req.user,
                        &req.scene,
                        max,
                        &funds,
                    ) {
                        Ok(hs) => {
                            for h in &hs {
                                if let Some(f) = funds.iter_mut().find(|(a, _)| a.name() == h.debit)
                                {
                                    f.1 = f.1.saturating_sub(h.amount_micros);
                                }
                            }
                            holds.extend(hs);
                        }
                        Err(SettleError::InsufficientFunds { .. }) => short = true,
                        Err(why) => reasons.push(Refusal::Unpriced {
                            licence_id: l.licence_id.clone(),
                            error: why.to_string(),
                        }),
                    }
                }
                Err(why) => reasons.push(Refusal::Unpriced {
                    licence_id: l.licence_id.clone(),
                    error: why.to_string(),
                }),
            }
            if let Some(scene) = scene {
                fitting.push((i, *l, scene));
            }
        }
        if short {
            reasons.push(Refusal::InsufficientFunds {
                needed_micros: needed,
                available_micros: available,
                funds: ctx.funds.iter().map(|(a, m)| (a.name(), *m)).collect(),
            });
        }
        if let Some(job_id) = &ctx.output_taken_by {
            reasons.push(Refusal::OutputTaken {
                output: req.output.clone(),
                job_id: job_id.clone(),
            });
        }
        let mut detail = serde_json::json!({
            "licences": checks, "funds": ctx.funds.iter().map(|(a, m)| (a.name(), *m)).collect::<Vec<_>>(),
            "cash_micros": ctx.cash_micros,
        });
        let mut tasks = Vec::new();
        if reasons.is_empty() && fitting.len() == named.len() {
            let rows_max = self
                .fl_providers
                .iter()
                .map(|p| p.dataset.as_ref().and_then(|d| d.declared_rows))
                .try_fold(0u64, |m, d| d.map(|d| m.max(d)))
                .filter(|&m| m > 0)
                .unwrap_or(FL_ROWS_MAX_DEFAULT);
            let mut placement = Vec::new();
            let mut providers = Vec::new();
            for (i, l, scene) in &fitting {
                match place(&self.workers, &l.licensor, scene) {
                    Ok(p) => providers.push((*i, *l, *scene, p)),
                    Err((refusal, misfits)) => {
                        reasons.push(refusal);
                        placement.extend(misfits);
                    }
                }
            }
            // The aggregator: a buyer's worker that fits every licence's scene.
            let scenes: Vec<&tessera_policy::UseScene> =
                fitting.iter().map(|(_, _, s)| *s).collect();
            let fits_all: Vec<crate::WorkerView> = self
                .workers
                .iter()
                .filter(|w| scenes.iter().all(|s| worker_fits(s, &w.attributes).is_ok()))
                .cloned()
                .collect();
            let aggregator = match scenes.first() {
                Some(first) => match place(&fits_all, &req.buyer_party, first) {
                    Ok(p) => Some(p),
                    Err((_, _)) => {
                        let live = self
                            .workers
                            .iter()
                            .filter(|w| w.attributes.party == req.buyer_party && w.live)
                            .count();
                        reasons.push(Refusal::NoWorker {
                            reason: format!(
                                "no live worker of party {} fits every licence's environment \
                                 lists, as the aggregator must ({live} live worker(s) checked)",
                                req.buyer_party
                            ),
                        });
                        None
                    }
                },
                None => None,
            };
            if let Some(d) = detail.as_object_mut() {
                d.insert("placement".into(), serde_json::json!(placement));
            }
            if let (Some(agg), true) = (aggregator, reasons.is_empty()) {
                let base = fl.spec(rows_max);
                let grant = |l: &LicenceRecord, scene: &tessera_policy::UseScene| {
                    licence_grant(l, scene, &self.zone)
                };
                let mut seats = Vec::new();
                let mut specs = Vec::new();
                for (i, l, scene, p) in &providers {
                    let pre = self.fl_providers.get(*i).ok_or_else(|| {
                        SchedulerError::Invalid("fl: a provider without its pre-read".into())
                    })?;
                    let location = pre
                        .dataset
                        .as_ref()
                        .map(|d| d.location.clone())
                        .unwrap_or_default();
                    seats.push(FlSeat {
                        session_id: pre.session_id.clone(),
                        party: l.licensor.clone(),
                        worker_id: p.worker_id.clone(),
                    });
                    specs.push((
                        TaskSpec {
                            job_id: job_id.clone(),
                            task_id: pre.task_id.clone(),
                            scene: req.scene.clone(),
                            role: TaskRole::Sender,
                            mode: req.mode,
                            protocol: req.protocol(),
                            dataset_location: location,
                            key_columns: Vec::new(),
                            key_case: req.key_case,
                            unicode_form: req.unicode_form,
                            empty_keys: req.empty_keys,
                            carry_columns: Vec::new(),
                            dial_peer: true,
                            peer_addr: agg.peer_addr.clone(),
                            session_id: pre.session_id.clone(),
                            peer_party: req.buyer_party.clone(),
                            peer_worker_id: agg.worker_id.clone(),
                            output: String::new(),
                            preview: None,
                            licence: Some(grant(l, scene)?),
                            mpc: None,
                            tee: None,
                            fl: Some(FlSpec {
                                index: Some(*i as u32),
                                ..base.clone()
                            }),
                            join: None,
                        },
                        p.worker_id.clone(),
                        l.licensor.clone(),
                    ));
                }
                let (_, first, first_scene, _) = providers
                    .first()
                    .ok_or_else(|| SchedulerError::Invalid("fl: no provider placed".into()))?;
                specs.push((
                    TaskSpec {
                        job_id: job_id.clone(),
                        task_id: self.task_ids[0].clone(),
                        scene: req.scene.clone(),
                        role: TaskRole::Receiver,
                        mode: req.mode,
                        protocol: req.protocol(),
                        dataset_location: String::new(),
                        key_columns: Vec::new(),
                        key_case: req.key_case,
                        unicode_form: req.unicode_form,
                        empty_keys: req.empty_keys,
                        carry_columns: Vec::new(),
                        dial_peer: false,
                        peer_addr: String::new(),
                        session_id: self.session_id.clone(),
                        peer_party: String::new(),
                        peer_worker_id: String::new(),
                        output: req.output.clone(),
                        preview: None,
                        // The aggregator's worker fits every licence's scene (checked above);
                        // its own check is against the first.
                        licence: Some(grant(first, first_scene)?),
                        mpc: None,
                        tee: None,
                        fl: Some(FlSpec { seats, ..base }),
                        join: None,
                    },
                    agg.worker_id.clone(),
                    req.buyer_party.clone(),
                ));
                for (spec, worker_id, party) in specs {
                    let spec_json =
                        serde_json::to_string(&spec).map_err(|source| SchedulerError::Encode {
                            what: "task spec",
                            source,
                        })?;
                    tasks.push(NewTask {
                        task_id: spec.task_id.clone(),
                        worker_id,
                        party,
                        role: spec.role,
                        spec_json,
                    });
                }
            }
        }
        Ok(Decision {
            allowed: reasons.is_empty(),
            reasons,
            detail,
            tasks,
            holds,
            auto_frozen,
            mpc_triples: None,
        })
    }
}
