//! What the scheduler's integration tests share: a node on a real store with one worker per
//! party (`w-prov`, `w-buy`), a provider dataset licensed to `u1` for one PSI run at 1,000
//! per job, and `u1` funded.

#![allow(dead_code)] // each test binary uses its own part

use std::sync::Arc;

use tessera_accounting::JobPrice;
use tessera_core::ticket::TicketSigner;
use tessera_core::{KeyCase, ManualClock, PsiMode, WorkerAttributes};
use tessera_scheduler::billing::{Deposit, DepositInto};
use tessera_scheduler::records::{NewDataset, NewLicence};
use tessera_scheduler::{Delivery, JobRequest, Scheduler, SchedulerConfig};
use tessera_store::Store;
use tokio::sync::mpsc;

pub const SEED: [u8; 32] = [3u8; 32];

pub async fn node() -> (Arc<Scheduler>, Vec<mpsc::Receiver<Delivery>>, String) {
    let store = Store::open_temporary().await.expect("store");
    node_on(store, Arc::new(ManualClock::new(1_000_000))).await
}

pub async fn node_on(
    store: Store,
    clock: Arc<ManualClock>,
) -> (Arc<Scheduler>, Vec<mpsc::Receiver<Delivery>>, String) {
    node_with(store, clock, SchedulerConfig::default()).await
}

pub async fn node_with(
    store: Store,
    clock: Arc<ManualClock>,
    config: SchedulerConfig,
) -> (Arc<Scheduler>, Vec<mpsc::Receiver<Delivery>>, String) {
    let scheduler = Scheduler::new(
        store,
        clock,
        TicketSigner::from_seed(&SEED),
        config,
        [5u8; 32],
    );
    let mut inboxes = Vec::new();
    for (party, port) in [("prov", 9001), ("buy", 9002)] {
        let id = scheduler
            .register_worker(
                &tessera_auth::Caller::Registrant {
                    party: party.into(),
                },
                Some(format!("w-{party}")),
                WorkerAttributes {
                    party: party.into(),
                    region: "r1".into(),
                    compute_centre: "c1".into(),
                    ..WorkerAttributes::default()
                },
                format!("127.0.0.1:{port}"),
                None,
            )
            .await
            .expect("register")
            .worker_id;
        inboxes.push(scheduler.connect(&id, &[]).await.expect("connect"));
    }
    // The licensee is a user the operator recorded.
    scheduler
        .store()
        .create_user(
            "u1",
            tessera_auth::Roles::of(&[tessera_auth::Role::Buyer]),
            0,
            "test",
        )
        .await
        .expect("user");
    let records = scheduler.records();
    for (id, party) in [("p", "prov"), ("b", "buy")] {
        records
            .create_dataset(NewDataset {
                dataset_id: id.into(),
                owner_party: party.into(),
                location: format!("{id}.csv"),
                description: String::new(),
                declared_rows: Some(100),
            })
            .await
            .expect("dataset");
    }
    let licence = licence(
        &scheduler,
        r#"{"policyName":"t","relUsers":[{"userId":"u1","userName":"U","isGroup":0}],
        "useScenes":[{"useSence":"psi","counts":1,"visitArea":["r1"],"cpCenter":["c1"]}]}"#,
    )
    .await;
    scheduler
        .billing()
        .deposit(Deposit {
            customer: "u1".into(),
            amount_micros: 1_000_000,
            idempotency_key: "fund".into(),
            into: DepositInto::Cash,
        })
        .await
        .expect("deposit");
    (scheduler, inboxes, licence)
}

/// A licence of the provider's dataset `p` to `u1` under `policy_json`, at 1,000 per job.
pub async fn licence(scheduler: &Scheduler, policy_json: &str) -> String {
    scheduler
        .records()
        .create_licence(NewLicence {
            licensor: "prov".into(),
            licensee: "u1".into(),
            dataset_id: "p".into(),
            policy_json: policy_json.into(),
            price: JobPrice {
                per_job_micros: 1_000,
                per_1k_rows_micros: 0,
                operator_share_bps: 0,
            },
            monthly_price_micros: 0,
        })
        .await
        .expect("licence")
        .licence_id
}

pub fn request(licence: &str) -> JobRequest {
    JobRequest {
        user: "u1".into(),
        user_groups: Vec::new(),
        licence_id: licence.into(),
        scene: "psi".into(),
        buyer_party: "buy".into(),
        buyer_dataset_id: "b".into(),
        buyer_columns: vec!["k".into()],
        provider_columns: vec!["k".into()],
        mode: PsiMode::Size,
        protocol: None,
        key_case: KeyCase::Preserve,
        output: String::new(),
        unicode_form: tessera_core::UnicodeForm::None,
        empty_keys: tessera_core::EmptyKeys::Skip,
        carry_columns: Vec::new(),
        request_id: None,
        preview_rows: None,
        mpc: None,
        join: None,
        payload_columns: Vec::new(),
        mpc_triples: None,
        fl: None,
    }
}
