//! The operator's dealer seats (`tessera_scheduler::dealer`): only a worker's own live task of
//! an `mpc` job signed for dealer triples gets one, as the party its role plays.

mod common;

use tessera_core::{JobState, MpcTriples, PsiMode, TaskSpec};
use tessera_mpc::Party;
use tessera_scheduler::{Delivery, JobRequest, SchedulerError};

#[tokio::test]
async fn only_a_workers_own_live_dealer_task_gets_a_seat_as_its_roles_party() {
    let (scheduler, mut inboxes, psi_licence) = common::node().await;
    let licence = common::licence(
        &scheduler,
        r#"{"policyName":"m","relUsers":[{"userId":"u1","userName":"U","isGroup":0}],
        "useScenes":[{"useSence":"mpc","counts":5,"protocols":["ot","dealer"],
        "visitArea":["r1"],"cpCenter":["c1"]}]}"#,
    )
    .await;
    let mpc_request = |triples: Option<MpcTriples>, output: &str| JobRequest {
        scene: "mpc".into(),
        mode: PsiMode::Intersection,
        output: output.into(),
        mpc: Some(tessera_core::MpcQuery {
            query: "SELECT sum(provider.x)".into(),
            columns: vec![tessera_core::MpcColumn {
                column: "provider.x".into(),
                abs_max: 10,
                levels: 0,
            }],
        }),
        mpc_triples: triples,
        ..common::request(&licence)
    };
    // Submits and takes both tasks off the workers' inboxes: (provider's, buyer's) task ids
    // and the triples their specs name.
    let mut run = async |req: JobRequest| {
        let view = scheduler.submit(req).await.expect("submit");
        assert_eq!(view.job.state, JobState::Admitted, "{view:?}");
        let mut ids = Vec::new();
        for inbox in inboxes.iter_mut() {
            let Some(Delivery::Assign { spec_json, .. }) = inbox.recv().await else {
                panic!("expected a task");
            };
            let spec: TaskSpec = serde_json::from_str(&spec_json).expect("spec");
            ids.push((spec.task_id, spec.mpc.map(|m| m.triples)));
        }
        ids
    };
    // Named nothing: the scene allows ot, so ot (no third party trusted).
    let free = run(mpc_request(None, "free.csv")).await;
    assert!(
        free.iter().all(|(_, t)| *t == Some(MpcTriples::Ot)),
        "{free:?}"
    );
    let dealt = run(mpc_request(Some(MpcTriples::Dealer), "dealt.csv")).await;
    assert!(
        dealt.iter().all(|(_, t)| *t == Some(MpcTriples::Dealer)),
        "{dealt:?}"
    );
    let psi = run(JobRequest {
        mode: PsiMode::Size,
        ..common::request(&psi_licence)
    })
    .await;

    let (seat, _) = scheduler
        .dealer_seat("w-prov", &dealt[0].0)
        .await
        .expect("the provider's task");
    assert_eq!(seat.party, Party::P0);
    let (seat, seed) = scheduler
        .dealer_seat("w-buy", &dealt[1].0)
        .await
        .expect("the buyer's task");
    assert_eq!(seat.party, Party::P1);
    let (_, again) = scheduler
        .dealer_seat("w-buy", &dealt[1].0)
        .await
        .expect("again");
    assert_ne!(seed, again, "a fresh seed for every seat");

    // Another worker's task, a dealer-free job's, a PSI job's, no task at all.
    for (worker, task, forbidden) in [
        ("w-prov", &dealt[1].0, false),
        ("w-buy", &free[1].0, true),
        ("w-prov", &free[0].0, true),
        ("w-buy", &psi[1].0, false),
        ("w-buy", &"t-none".to_string(), false),
    ] {
        let e = scheduler
            .dealer_seat(worker, task)
            .await
            .expect_err("no seat");
        if forbidden {
            assert!(matches!(e, SchedulerError::Forbidden(_)), "{e:?}");
        } else {
            assert!(matches!(e, SchedulerError::NotFound(_)), "{e:?}");
        }
    }
}
