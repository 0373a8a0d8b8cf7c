//! Admission: one PSI job submitted to the scheduler and dispatched (policy check, holds,
//! count reservation and job record in one transaction, two signed tickets carrying the
//! signed audit head, the dispatch recorded with its checkpoint), on a SQLite file synced
//! like the operator's (`Store::open`). Two in-process workers take the tasks and never
//! report, so each iteration is exactly one admission.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera_accounting::JobPrice;
use tessera_core::ticket::TicketSigner;
use tessera_core::{KeyCase, PsiMode, SystemClock, WorkerAttributes};
use tessera_scheduler::billing::{Deposit, DepositInto};
use tessera_scheduler::records::{NewDataset, NewLicence};
use tessera_scheduler::{JobRequest, Scheduler, SchedulerConfig};
use tessera_store::Store;

/// A scheduler with two connected workers, two datasets, a licence (its id returned) and a
/// funded buyer.
async fn cluster(dir: &std::path::Path) -> (Arc<Scheduler>, String) {
    let store = Store::open(&dir.join("tessera.db")).await.expect("store");
    let scheduler = Scheduler::new(
        store,
        Arc::new(SystemClock),
        TicketSigner::from_seed(&[3u8; 32]),
        SchedulerConfig {
            heartbeat_timeout_ms: 3_600_000,
            ..SchedulerConfig::default()
        },
        [5u8; 32],
    );
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
        let mut rx = scheduler.connect(&id, &[]).await.expect("connect");
        // Take every task so the bounded delivery queue never fills.
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
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
                declared_rows: Some(1_000),
            })
            .await
            .expect("dataset");
    }
    let licence = records
        .create_licence(NewLicence {
            licensor: "prov".into(),
            licensee: "u1".into(),
            dataset_id: "p".into(),
            policy_json:
                r#"{"policyName":"b","relUsers":[{"userId":"u1","userName":"U","isGroup":0}],
                "useScenes":[{"useSence":"psi","visitArea":["r1"],"cpCenter":["c1"]}]}"#
                    .into(),
            price: JobPrice {
                per_job_micros: 1_000,
                per_1k_rows_micros: 10,
                operator_share_bps: 2_000,
            },
            monthly_price_micros: 0,
        })
        .await
        .expect("licence")
        .licence_id;
    scheduler
        .billing()
        .deposit(Deposit {
            customer: "u1".into(),
            amount_micros: 1_000_000_000_000,
            idempotency_key: "bench".into(),
            into: DepositInto::Cash,
        })
        .await
        .expect("deposit");
    (scheduler, licence)
}

fn admission(c: &mut Criterion) {
    // Set-up failures end the bench run loudly: a bench that silently skips measures nothing.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let (scheduler, licence) = rt.block_on(cluster(dir.path()));
    let request = JobRequest {
        user: "u1".into(),
        user_groups: Vec::new(),
        licence_id: licence,
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
    };
    let mut group = c.benchmark_group("admission");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("submit_and_dispatch", |b| {
        b.iter(|| {
            let view = rt
                .block_on(scheduler.submit(request.clone()))
                .expect("submit");
            assert_eq!(view.job.state, tessera_core::JobState::Admitted, "{view:?}");
        });
    });
    group.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
