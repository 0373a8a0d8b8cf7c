//! `mpc` jobs end to end (issue "Secret-sharing MPC"): a statistics query over both parties'
//! columns of PSI-aligned rows between two real worker processes, with the licence's output
//! controls, counted, metered and charged.

use std::collections::BTreeMap;

use tessera_proto::v1 as pb;

use crate::harness::{BUYER, Cluster, PROVIDER, USER, cash};

fn column(column: &str, abs_max: u64, levels: u32) -> pb::MpcColumn {
    pb::MpcColumn {
        column: column.into(),
        abs_max,
        levels,
    }
}

fn mpc_job(lic: &str, query: &str, output: &str) -> pb::SubmitJobRequest {
    mpc_job_on(
        lic,
        "bm",
        query,
        vec![
            column("buyer.region", 0, 3),
            column("buyer.age", 150, 0),
            column("provider.income", 100_000, 0),
        ],
        output,
    )
}

/// Every usage event the operator recorded (read as the operator).
pub(crate) async fn usage(c: &Cluster) -> Vec<pb::UsageEvent> {
    c.admin()
        .await
        .list_usage(pb::ListRequest {})
        .await
        .expect("usage")
        .into_inner()
        .events
}

/// The quantity of `metric` that `party`'s task of `job` reported (0 when none).
pub(crate) fn metric(usage: &[pb::UsageEvent], job: &str, party: &str, metric: &str) -> u64 {
    usage
        .iter()
        .find(|e| e.job_id == job && e.party == party && e.metric == metric)
        .map_or(0, |e| e.quantity)
}

/// An `mpc` job on the buyer's `dataset`, both keyed by `id`, reading `columns`.
fn mpc_job_on(
    lic: &str,
    dataset: &str,
    query: &str,
    columns: Vec<pb::MpcColumn>,
    output: &str,
) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        scene: "mpc".into(),
        buyer_columns: vec!["id".into()],
        provider_columns: vec!["id".into()],
        mpc_query: query.into(),
        mpc_columns: columns,
        ..Cluster::job(lic, dataset, "intersection", output)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_by_query_on_aligned_rows_suppresses_the_small_group_and_is_counted_and_charged() {
    let c = Cluster::start(10_000);
    c.fund(100_000_000, "fund").await;
    // The provider holds ids 1..=80 with an income; the buyer ids 21..=100 with a region and
    // an age, the ids in a different order and one id twice (its first row counts). Common:
    // 21..=80, 60 rows.
    let income = |i: u64| (i * 37 % 1000) as f64 * 10.0 + 0.5;
    let provider_rows: Vec<String> = (1..=80u64)
        .rev()
        .map(|i| format!("{i},{}", income(i)))
        .collect();
    c.dataset(&c.provider, "pm", "id,income", &provider_rows)
        .await;
    // Regions among the common ids: 0 for most, 1 for a third, 2 for just three rows.
    let region = |i: u64| {
        if i.is_multiple_of(20) {
            2
        } else if i.is_multiple_of(3) {
            1
        } else {
            0
        }
    };
    let age = |i: u64| 18 + i % 60;
    let mut buyer_rows: Vec<String> = (21..=100u64)
        .map(|i| format!("{i},{},{}", region(i), age(i)))
        .collect();
    buyer_rows.push("30,2,99".into());
    c.dataset(&c.buyer, "bm", "id,region,age", &buyer_rows)
        .await;
    let policy = format!(
        r#"{{"policyName":"m","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
            "useScenes":[{{"useSence":"mpc","counts":2,"minGroupSize":5,"aggregatesOnly":true,
                "protocols":["ot"],"visitArea":["r1"],"cpCenter":["c1"]}}]}}"#
    );
    let lic = c.licence_with_policy("pm", policy).await;
    let before = cash(&c).await;
    let mut client = c.client().await;

    let query = "SELECT count(*), sum(provider.income), mean(provider.income) \
                 WHERE buyer.age >= 20 GROUP BY buyer.region";
    let job = client
        .submit_job(mpc_job(&lic, query, "stats.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(job.state_text(), "admitted", "{job:?}");
    let done = c.wait(&job.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    // The result's rows (3 groups), not the 60 aligned rows: the aligned count would tell the
    // buyer the suppressed group's size.
    assert_eq!(done.result_size, Some(3), "{done:?}");

    // The clear computation on the same rows.
    let mut clear: BTreeMap<u32, (u64, f64)> = BTreeMap::new();
    for i in (21..=80u64).filter(|&i| age(i) >= 20) {
        let e = clear.entry(region(i)).or_default();
        e.0 += 1;
        e.1 += income(i);
    }
    assert!(
        clear[&2].0 < 5 && clear[&0].0 >= 5 && clear[&1].0 >= 5,
        "{clear:?}"
    );
    let (header, rows) = crate::harness::read_csv(&c.buyer.outputs.join("stats.csv"));
    assert_eq!(
        header,
        [
            "group",
            "reported",
            "count(*)",
            "sum(provider.income)",
            "mean(provider.income)"
        ]
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        let g: u32 = row[0].parse().expect("group");
        let (n, sum) = clear[&g];
        if n < 5 {
            // Suppressed inside the computation: nothing but the fact reached the buyer.
            assert_eq!(row[1..], ["false", "", "", ""], "group {g}");
            continue;
        }
        assert_eq!(row[1], "true", "group {g}");
        assert_eq!(row[2].parse::<u64>().expect("count"), n, "group {g}");
        let got_sum: f64 = row[3].parse().expect("sum");
        assert!(
            (got_sum - sum).abs() <= n as f64 * 2f64.powi(-16),
            "{got_sum} vs {sum}"
        );
        let got_mean: f64 = row[4].parse().expect("mean");
        let mean = sum / n as f64;
        assert!(
            (got_mean - mean).abs() <= mean * 2f64.powi(-11) + 0.01,
            "{got_mean} vs {mean}"
        );
    }

    // Counted once, charged, metered on both sides (triples drawn by each party).
    assert_eq!(c.remaining(&lic).await, Some(1));
    assert!(done.charge_micros > 0, "{done:?}");
    assert_eq!(cash(&c).await, before - done.charge_micros);
    let usage = usage(&c).await;
    for party in [PROVIDER, BUYER] {
        let triples = metric(&usage, &job.job_id, party, "triples");
        assert!(triples > 0, "{party}: {usage:?}");
    }

    // A row-level query under aggregatesOnly: refused at admission, nothing counted.
    let refused = client
        .submit_job(mpc_job(
            &lic,
            "SELECT provider.income WHERE buyer.age > 30",
            "rows.csv",
        ))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("aggregatesOnly")),
        "{refused:?}"
    );
    assert_eq!(c.remaining(&lic).await, Some(1));

    // A query that does not parse, or reads an undeclared column: refused before admission,
    // with the position.
    for (bad, says) in [
        ("SELECT count(*) GROUP BY", "parse"),
        ("SELECT mean(provider.tax)", "provider.tax"),
        ("SELECT count(*) GROUP BY provider.income", "GROUP BY"),
    ] {
        let e = client
            .submit_job(mpc_job(&lic, bad, "bad.csv"))
            .await
            .expect_err(bad);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains(says), "{bad}: {}", e.message());
    }

    // No common keys: the same answer every time — a result whose every group is empty and
    // unreported, counted and charged (it was the buyer's run) — not an error blamed on
    // whichever party reported first.
    let none_rows: Vec<String> = (1001..=1010u64).map(|i| format!("{i},1,40")).collect();
    c.dataset(&c.buyer, "bnone", "id,region,age", &none_rows)
        .await;
    let job = client
        .submit_job(mpc_job_on(
            &lic,
            "bnone",
            query,
            vec![
                column("buyer.region", 0, 3),
                column("buyer.age", 150, 0),
                column("provider.income", 100_000, 0),
            ],
            "none.csv",
        ))
        .await
        .expect("submit")
        .into_inner();
    let done = c.wait(&job.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    let (_, rows) = crate::harness::read_csv(&c.buyer.outputs.join("none.csv"));
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert_eq!(row[1..], ["false", "", "", ""], "{row:?}");
    }
    assert_eq!(c.remaining(&lic).await, Some(0));
    assert!(done.charge_micros > 0, "{done:?}");
    c.assert_audit_verifies().await;
}

/// A licence whose `mpc` scene allows only the dealer: the job draws its triples from the
/// operator's dealer over each worker's own link to it (no OT between the workers), and its
/// result matches the clear computation and the same query run dealer-free; a licence that
/// allows only `ot` refuses a job asking for the dealer, and the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dealer_job_draws_its_triples_from_the_operator_and_matches_the_dealer_free_one() {
    let c = Cluster::start(10_000);
    c.fund(100_000_000, "fund").await;
    let income = |i: u64| (i * 53 % 997) as f64 * 3.0 + 0.25;
    let provider_rows: Vec<String> = (1..=70u64).map(|i| format!("{i},{}", income(i))).collect();
    c.dataset(&c.provider, "pd", "id,income", &provider_rows)
        .await;
    let region = |i: u64| u32::from(i.is_multiple_of(4));
    let buyer_rows: Vec<String> = (31..=120u64)
        .map(|i| format!("{i},{},{}", region(i), 20 + i % 50))
        .collect();
    c.dataset(&c.buyer, "bd", "id,region,age", &buyer_rows)
        .await;
    let scene = |protocols: &str| {
        format!(
            r#"{{"useSence":"mpc","counts":3,"protocols":{protocols},"visitArea":["r1"],
                "cpCenter":["c1"]}}"#
        )
    };
    let dealer_only = c.licence_with_scene("pd", &scene(r#"["dealer"]"#)).await;
    let ot_only = c.licence_with_scene("pd", &scene(r#"["ot"]"#)).await;
    let mut client = c.client().await;
    let query = "SELECT count(*), sum(provider.income), var(provider.income), \
                 max(provider.income) GROUP BY buyer.region";
    let columns = || {
        vec![
            column("buyer.region", 0, 2),
            column("provider.income", 10_000, 0),
        ]
    };
    let job = |lic: &str, output: &str, triples: pb::MpcTriples| pb::SubmitJobRequest {
        mpc_triples: triples.into(),
        ..mpc_job_on(lic, "bd", query, columns(), output)
    };

    // Named no source: the scene allows only the dealer, so the dealer it is.
    let dealt = client
        .submit_job(job(&dealer_only, "dealt.csv", pb::MpcTriples::Unspecified))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(dealt.state_text(), "admitted", "{dealt:?}");
    let dealt = c.wait(&dealt.job_id).await;
    assert_eq!(dealt.state_text(), "succeeded", "{dealt:?}");
    // A request that leaves the mode unset (as a REST client may): an mpc job's only mode.
    let free = client
        .submit_job(pb::SubmitJobRequest {
            mode: pb::PsiMode::Unspecified.into(),
            ..job(&ot_only, "free.csv", pb::MpcTriples::Unspecified)
        })
        .await
        .expect("submit")
        .into_inner();
    let free = c.wait(&free.job_id).await;
    assert_eq!(free.state_text(), "succeeded", "{free:?}");

    // The clear computation on the common ids 31..=70.
    let mut clear: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for i in 31..=70u64 {
        clear.entry(region(i)).or_default().push(income(i));
    }
    // Both parties' views of a job say which source it drew from.
    assert_eq!(
        dealt.mpc_triples,
        pb::MpcTriples::Dealer as i32,
        "{dealt:?}"
    );
    assert_eq!(free.mpc_triples, pb::MpcTriples::Ot as i32, "{free:?}");
    let seen = c
        .provider_client()
        .await
        .get_job(pb::JobRef {
            job_id: dealt.job_id.clone(),
        })
        .await
        .expect("the provider's view")
        .into_inner();
    assert_eq!(seen.mpc_triples, pb::MpcTriples::Dealer as i32, "{seen:?}");
    let (header, dealt_rows) = crate::harness::read_csv(&c.buyer.outputs.join("dealt.csv"));
    assert_eq!(header[..2], ["group", "reported"]);
    let (_, free_rows) = crate::harness::read_csv(&c.buyer.outputs.join("free.csv"));
    assert_eq!(dealt_rows.len(), 2, "{dealt_rows:?}");
    for rows in [&dealt_rows, &free_rows] {
        for row in rows {
            let g: u32 = row[0].parse().expect("group");
            let xs = &clear[&g];
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            let max = xs.iter().copied().fold(f64::MIN, f64::max);
            assert_eq!(row[1], "true", "group {g}");
            assert_eq!(row[2].parse::<f64>().expect("count"), n, "group {g}");
            let sum: f64 = row[3].parse().expect("sum");
            assert!(
                (sum - mean * n).abs() <= n * 2f64.powi(-16),
                "{sum} vs {}",
                mean * n
            );
            let got_var: f64 = row[4].parse().expect("var");
            assert!(
                (got_var - var).abs() <= var * 2f64.powi(-10) + 1.0,
                "group {g}: var {got_var} vs {var}"
            );
            let got_max: f64 = row[5].parse().expect("max");
            assert!(
                (got_max - max).abs() <= 2f64.powi(-15),
                "{got_max} vs {max}"
            );
        }
    }
    // Counted and charged like any run; both parties metered, the dealer's triples included.
    assert_eq!(c.remaining(&dealer_only).await, Some(2));
    assert!(dealt.charge_micros > 0, "{dealt:?}");
    let usage = usage(&c).await;
    let metric = |job: &str, party: &str, m: &str| metric(&usage, job, party, m);
    // Both parties draw the same triples (the dealer refuses requests that differ); the
    // dealer's group sums use matrix triples, which OT does not make, so the counts of the
    // two sources differ.
    for job in [&dealt.job_id, &free.job_id] {
        let provider = metric(job, PROVIDER, "triples");
        assert!(provider > 0, "{job}: {usage:?}");
        assert_eq!(provider, metric(job, BUYER, "triples"), "{job}");
    }
    // Each party's usage counts its dealer link's bytes too: what one party received exceeds
    // what the other sent it over their peer link by the seeds (and, to the buyer, the
    // corrections) the dealer sent.
    let bytes = |party: &str, m: &str| metric(&dealt.job_id, party, m);
    assert!(
        bytes(BUYER, "bytes_received") > bytes(PROVIDER, "bytes_sent")
            && bytes(PROVIDER, "bytes_received") > bytes(BUYER, "bytes_sent"),
        "{usage:?}"
    );

    // The source a licence does not allow is refused at admission, nothing counted.
    for (lic, asked, allowed) in [
        (&ot_only, pb::MpcTriples::Dealer, "allowed: ot"),
        (&dealer_only, pb::MpcTriples::Ot, "allowed: dealer"),
    ] {
        let refused = client
            .submit_job(job(lic, "no.csv", asked))
            .await
            .expect("submit")
            .into_inner();
        assert_eq!(refused.state_text(), "refused", "{refused:?}");
        assert!(
            refused
                .refusal_reasons
                .iter()
                .any(|r| r.contains("protocol") && r.contains(allowed)),
            "{allowed}: {refused:?}"
        );
    }
    assert_eq!(c.remaining(&dealer_only).await, Some(2));
    assert_eq!(c.remaining(&ot_only).await, Some(2));
    // Triples name an mpc job's source only.
    let e = client
        .submit_job(pb::SubmitJobRequest {
            mpc_triples: pb::MpcTriples::Dealer.into(),
            ..Cluster::job(&ot_only, "bd", "intersection", "psi.csv")
        })
        .await
        .expect_err("a psi job draws no triples");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    c.assert_audit_verifies().await;
}

/// The clear training the MPC job does (`tessera_mpc::lr`): features scaled by their
/// declared bounds, the bias a constant column, full-batch gradient descent from zero with the
/// exact sigmoid; returns `[w | b]` in scaled units.
fn clear_training(x: &[Vec<f64>], y: &[f64], epochs: usize, lr: f64) -> Vec<f64> {
    let d1 = x[0].len() + 1;
    let n = x.len() as f64;
    let mut w = vec![0.0; d1];
    for _ in 0..epochs {
        let mut grad = vec![0.0; d1];
        for (row, &label) in x.iter().zip(y) {
            let z: f64 = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + w[d1 - 1];
            let e = (1.0 / (1.0 + (-z).exp()) - label) * lr / n;
            for (g, a) in grad.iter_mut().zip(row.iter().chain([1.0].iter())) {
                *g += a * e;
            }
        }
        for (wi, g) in w.iter_mut().zip(grad) {
            *wi -= g;
        }
    }
    w
}

/// The area under the ROC curve of `scores` against 0/1 `labels` (ties count half).
fn auc(scores: &[f64], labels: &[f64]) -> f64 {
    let (mut pairs, mut good) = (0.0, 0.0);
    for (s1, _) in scores.iter().zip(labels).filter(|(_, l)| **l == 1.0) {
        for (s0, _) in scores.iter().zip(labels).filter(|(_, l)| **l == 0.0) {
            pairs += 1.0;
            good += if s1 > s0 {
                1.0
            } else if s1 == s0 {
                0.5
            } else {
                0.0
            };
        }
    }
    good / pairs
}

/// A uniform draw in `[0, 1)` fixed by `(i, salt)`.
fn u(i: u64, salt: u64) -> f64 {
    let h = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn income(i: u64) -> f64 {
    (u(i, 1) * 90_000.0).round() + 1_000.0
}

fn score(i: u64) -> f64 {
    ((u(i, 2) - 0.5) * 10.0 * 100.0).round() / 100.0
}

fn age(i: u64) -> u64 {
    18 + (u(i, 3) * 60.0) as u64
}

/// Drawn from a logistic model of income, score and age.
fn label(i: u64) -> u64 {
    let z =
        3.0 * (income(i) / 100_000.0 - 0.5) - 0.6 * score(i) + 2.0 * (age(i) as f64 / 150.0 - 0.3);
    u64::from(u(i, 4) < 1.0 / (1.0 + (-z).exp()))
}

/// The features of id `i` scaled by their declared bounds, in the statement's order
/// (`provider.income, buyer.age, provider.score`).
fn scaled_row(i: u64) -> Vec<f64> {
    vec![income(i) / 100_000.0, age(i) as f64 / 150.0, score(i) / 5.0]
}

/// A pseudo-random but fixed sample: the provider's dataset `pm` holds ids 1..=400 with an
/// income and a score, the buyer's `bm` ids 101..=500 (in reverse) with an age and a label
/// drawn from a logistic model of all three. Common: 101..=400, 300 rows. Returns the
/// buyer's rows.
async fn lr_sample(c: &Cluster) -> Vec<String> {
    let provider_rows: Vec<String> = (1..=400u64)
        .map(|i| format!("{i},{},{}", income(i), score(i)))
        .collect();
    c.dataset(&c.provider, "pm", "id,income,score", &provider_rows)
        .await;
    let buyer_rows: Vec<String> = (101..=500u64)
        .rev()
        .map(|i| format!("{i},{},{}", age(i), label(i)))
        .collect();
    c.dataset(&c.buyer, "bm", "id,age,churned", &buyer_rows)
        .await;
    buyer_rows
}

/// The columns an `lr_sample` training declares.
fn lr_columns() -> Vec<pb::MpcColumn> {
    vec![
        column("provider.income", 100_000, 0),
        column("provider.score", 5, 0),
        column("buyer.age", 150, 0),
        column("buyer.churned", 0, 2),
    ]
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trained_on_aligned_rows_matches_the_clear_training_and_only_its_recipient_gets_it()
{
    let c = Cluster::start(10_000);
    c.fund(100_000_000, "fund").await;
    let buyer_rows = lr_sample(&c).await;
    let small: Vec<String> = (101..=103u64)
        .map(|i| format!("{i},{},{}", age(i), label(i)))
        .collect();
    c.dataset(&c.buyer, "bsmall", "id,age,churned", &small)
        .await;
    let lic = c
        .licence_with_scene(
            "pm",
            r#"{"useSence":"mpc","counts":3,"minGroupSize":5,"aggregatesOnly":true,
                "protocols":["ot"],"visitArea":["r1"],"cpCenter":["c1"]}"#,
        )
        .await;
    let before = cash(&c).await;
    let mut client = c.client().await;
    let train_job = |dataset: &str, query: &str, output: &str| {
        mpc_job_on(&lic, dataset, query, lr_columns(), output)
    };
    let (epochs, rate) = (12, 4.0);
    let query = format!(
        "TRAIN LOGISTIC_REGRESSION(provider.income, buyer.age, provider.score) \
         LABEL buyer.churned EPOCHS {epochs} LEARNING_RATE {rate} BATCH 1000"
    );
    let job = client
        .submit_job(train_job("bm", &query, "model.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(job.state_text(), "admitted", "{job:?}");
    let done = c.wait(&job.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    assert_eq!(done.result_size, Some(4), "the model's terms: {done:?}");

    // The clear training on the same rows (full batch: the row order does not matter).
    let common: Vec<u64> = (101..=400).collect();
    let x: Vec<Vec<f64>> = common.iter().map(|&i| scaled_row(i)).collect();
    let y: Vec<f64> = common.iter().map(|&i| label(i) as f64).collect();
    let clear = clear_training(&x, &y, epochs, rate);
    let (header, rows) = crate::harness::read_csv(&c.buyer.outputs.join("model.csv"));
    assert_eq!(header, ["term", "reported", "weight"]);
    let terms: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        terms,
        ["provider.income", "buyer.age", "provider.score", "(bias)"]
    );
    let bounds = [100_000.0, 150.0, 5.0, 1.0];
    let mut scaled = Vec::new();
    for ((row, bound), want) in rows.iter().zip(bounds).zip(&clear) {
        assert_eq!(row[1], "true", "{row:?}");
        let w: f64 = row[2].parse().expect("weight");
        // The weights are in the features' own units; scaled back they follow the clear
        // training up to the sigmoid's approximation and fixed-point rounding.
        let got = w * bound;
        assert!((got - want).abs() <= 0.05, "{}: {got} vs {want}", row[0]);
        scaled.push(got);
    }
    let score_of = |w: &[f64], row: &[f64]| {
        row.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + w[w.len() - 1]
    };
    let ours: Vec<f64> = x.iter().map(|r| score_of(&scaled, r)).collect();
    let theirs: Vec<f64> = x.iter().map(|r| score_of(&clear, r)).collect();
    let (a, b) = (auc(&ours, &y), auc(&theirs, &y));
    assert!((a - b).abs() <= 0.01, "AUC {a} vs clear {b}");
    assert!(b > 0.6, "the sample has signal: AUC {b}");
    // The provider's worker wrote nothing: the model is the buyer's only.
    assert!(
        crate::harness::walk_files(&c.provider.outputs)
            .iter()
            .all(|p| p.extension().is_none_or(|e| e != "csv")),
        "{:?}",
        crate::harness::walk_files(&c.provider.outputs)
    );
    assert_eq!(done.provider_result_file, None);
    assert_eq!(c.remaining(&lic).await, Some(2));
    assert!(done.charge_micros > 0, "{done:?}");
    assert_eq!(cash(&c).await, before - done.charge_micros);

    // A licence whose scene gives the model to the provider: the provider's worker writes
    // it (`model-<job id>.csv`, shown to the provider only), the buyer receives nothing.
    let lic2 = c
        .licence_with_scene(
            "pm",
            r#"{"useSence":"mpc","counts":1,"modelTo":"provider",
                "visitArea":["r1"],"cpCenter":["c1"]}"#,
        )
        .await;
    let to_provider = client
        .submit_job(pb::SubmitJobRequest {
            licence_id: lic2.clone(),
            ..train_job("bm", &query, "model2.csv")
        })
        .await
        .expect("submit")
        .into_inner();
    let seen_by_buyer = c.wait(&to_provider.job_id).await;
    assert_eq!(seen_by_buyer.state_text(), "succeeded", "{seen_by_buyer:?}");
    assert_eq!(seen_by_buyer.provider_result_file, None);
    assert_eq!(seen_by_buyer.result_file, None, "{seen_by_buyer:?}");
    assert!(!c.buyer.outputs.join("model2.csv").exists());
    let seen_by_provider = c.wait_as(&to_provider.job_id, Some(PROVIDER)).await;
    let file = seen_by_provider
        .provider_result_file
        .expect("the provider sees its model file");
    let name = format!("model-{}.csv", to_provider.job_id);
    assert_eq!(file.name, name);
    let (header, provider_rows) = crate::harness::read_csv(&c.provider.outputs.join(&name));
    assert_eq!(header, ["term", "reported", "weight"]);
    assert_eq!(provider_rows.len(), 4);
    for ((row, bound), want) in provider_rows.iter().zip(bounds).zip(&clear) {
        assert_eq!(row[1], "true", "{row:?}");
        let got = row[2].parse::<f64>().expect("weight") * bound;
        assert!((got - want).abs() <= 0.05, "{}: {got} vs {want}", row[0]);
    }
    assert_eq!(c.remaining(&lic2).await, Some(0));
    // Fewer aligned rows than minGroupSize: no model is trained (nothing shared); the buyer's
    // file says so; the run is counted as any run.
    let tiny = client
        .submit_job(train_job("bsmall", &query, "tiny.csv"))
        .await
        .expect("submit")
        .into_inner();
    let tiny = c.wait(&tiny.job_id).await;
    assert_eq!(tiny.state_text(), "succeeded", "{tiny:?}");
    assert_eq!(
        tiny.result_size,
        Some(4),
        "not the 3 aligned rows: {tiny:?}"
    );
    let (_, rows) = crate::harness::read_csv(&c.buyer.outputs.join("tiny.csv"));
    assert_eq!(rows.len(), 4, "{rows:?}");
    for row in &rows {
        assert_eq!(row[1..], ["false", ""], "{row:?}");
    }
    assert_eq!(c.remaining(&lic).await, Some(1));

    // A label the buyer's own file gets wrong: the buyer's input error, found before any link
    // opens (always the buyer's, never the peer's broken link), its run consumed, nothing
    // charged.
    let mut bad_rows = buyer_rows.clone();
    bad_rows[7] = format!("{},{},yes", 500 - 7, age(500 - 7));
    c.dataset(&c.buyer, "bbad", "id,age,churned", &bad_rows)
        .await;
    let cash_before_bad = cash(&c).await;
    let bad = client
        .submit_job(train_job("bbad", &query, "bad-label.csv"))
        .await
        .expect("submit")
        .into_inner();
    let bad = c.wait(&bad.job_id).await;
    assert_eq!(bad.state_text(), "failed", "{bad:?}");
    assert!(
        bad.error.contains("(input)")
            && bad
                .error
                .contains("column churned: the value of data row 8"),
        "{}",
        bad.error
    );
    assert_eq!(bad.charge_micros, 0);
    assert_eq!(cash(&c).await, cash_before_bad);
    assert_eq!(c.remaining(&lic).await, Some(0));

    // Statements the schema refuses: at submission, with what is wrong and where.
    for (bad, says) in [
        (
            "TRAIN LOGISTIC_REGRESSION(provider.income) EPOCHS 5",
            "LABEL",
        ),
        (
            "TRAIN LOGISTIC_REGRESSION(provider.income) LABEL buyer.age",
            "two levels",
        ),
        (
            "TRAIN LOGISTIC_REGRESSION(buyer.churned) LABEL buyer.churned",
            "categorical",
        ),
        (
            "TRAIN LOGISTIC_REGRESSION(provider.tax) LABEL buyer.churned",
            "provider.tax",
        ),
        (
            "TRAIN LOGISTIC_REGRESSION(provider.income, provider.income) LABEL buyer.churned",
            "twice",
        ),
        (
            "TRAIN LOGISTIC_REGRESSION(provider.income) LABEL buyer.churned EPOCHS 0",
            "EPOCHS",
        ),
        (
            "TRAIN LOGISTIC_REGRESSION(provider.income) LABEL buyer.churned EPOCHS 2 EPOCHS 3",
            "at most once",
        ),
    ] {
        let e = client
            .submit_job(train_job("bm", bad, "bad.csv"))
            .await
            .expect_err(bad);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains(says), "{bad}: {}", e.message());
    }
    assert_eq!(c.remaining(&lic).await, Some(0));
    c.assert_audit_verifies().await;
}

/// A licence whose `mpc` scene keeps models shared (`modelTo: "shared"`): the training leaves
/// each party's worker its share and nobody the model; a later job scores new rows of the
/// buyer's with it (`SCORE … MODEL job`) on the same workers, opening one probability per
/// aligned row to the buyer only, as the clear model would give them; each job is a counted,
/// charged run. A scoring that names an unusable model is refused with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_kept_shared_scores_new_rows_as_the_clear_model_and_nobody_holds_it() {
    let c = Cluster::start(10_000);
    c.fund(100_000_000, "fund").await;
    lr_sample(&c).await;
    // New customers of the buyer's: ids 301..=600, of which 301..=400 the provider holds.
    let new_rows: Vec<String> = (301..=600u64).map(|i| format!("{i},{}", age(i))).collect();
    c.dataset(&c.buyer, "bnew", "id,age", &new_rows).await;
    let lic = c
        .licence_with_scene(
            "pm",
            r#"{"useSence":"mpc","counts":6,"modelTo":"shared","protocols":["ot","dealer"],
                "visitArea":["r1"],"cpCenter":["c1"]}"#,
        )
        .await;
    let mut client = c.client().await;
    let (epochs, rate) = (12, 4.0);
    let training = format!(
        "TRAIN LOGISTIC_REGRESSION(provider.income, buyer.age, provider.score) \
         LABEL buyer.churned EPOCHS {epochs} LEARNING_RATE {rate} BATCH 1000"
    );
    let before = cash(&c).await;
    let trained = client
        .submit_job(mpc_job_on(&lic, "bm", &training, lr_columns(), "model.csv"))
        .await
        .expect("submit")
        .into_inner();
    let trained = c.wait(&trained.job_id).await;
    assert_eq!(trained.state_text(), "succeeded", "{trained:?}");
    assert_eq!(trained.result_file, None, "{trained:?}");
    assert!(trained.charge_micros > 0, "{trained:?}");
    // Each worker keeps its own share, and no model file exists anywhere.
    let share_name = format!("model-shares-{}.json", trained.job_id);
    for (side, dir) in [
        ("provider", &c.provider.outputs),
        ("buyer", &c.buyer.outputs),
    ] {
        let files = crate::harness::walk_files(dir);
        assert!(
            files
                .iter()
                .all(|p| p.extension().is_none_or(|e| e != "csv")),
            "{files:?}"
        );
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(&share_name)).expect("share file"))
                .expect("json");
        assert_eq!(stored["party"], side);
        assert_eq!(stored["shares"].as_array().map(Vec::len), Some(4));
    }

    // The model's probabilities on the new rows, from the clear training on the same rows.
    let common: Vec<u64> = (101..=400).collect();
    let x: Vec<Vec<f64>> = common.iter().map(|&i| scaled_row(i)).collect();
    let y: Vec<f64> = common.iter().map(|&i| label(i) as f64).collect();
    let clear = clear_training(&x, &y, epochs, rate);
    let clear_p = |i: u64| {
        let row = scaled_row(i);
        sigmoid(row.iter().zip(&clear).map(|(a, b)| a * b).sum::<f64>() + clear[3])
    };
    let score_columns = || {
        vec![
            column("provider.income", 100_000, 0),
            column("provider.score", 5, 0),
            column("buyer.age", 150, 0),
        ]
    };
    let scoring = |model: &str, features: &str| {
        format!("SCORE LOGISTIC_REGRESSION({features}) MODEL {model}")
    };
    let features = "provider.income, buyer.age, provider.score";
    // A scoring of the trained model's features, under `lic`, on the buyer's `dataset`.
    let score_job = |lic: &str, dataset: &str, query: &str, output: &str| {
        mpc_job_on(lic, dataset, query, score_columns(), output)
    };
    let scored = client
        .submit_job(score_job(
            &lic,
            "bnew",
            &scoring(&trained.job_id, features),
            "scores.csv",
        ))
        .await
        .expect("submit")
        .into_inner();
    let scored = c.wait(&scored.job_id).await;
    assert_eq!(scored.state_text(), "succeeded", "{scored:?}");
    assert_eq!(scored.result_size, Some(100), "{scored:?}");
    let (header, rows) = crate::harness::read_csv(&c.buyer.outputs.join("scores.csv"));
    assert_eq!(header, ["id", "probability"]);
    let mut ids: Vec<u64> = rows.iter().map(|r| r[0].parse().expect("id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, (301..=400).collect::<Vec<u64>>());
    let (mut ours, mut theirs, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for row in &rows {
        let i: u64 = row[0].parse().expect("id");
        let p: f64 = row[1].parse().expect("probability");
        // The sigmoid's approximation and the fixed-point weights: close to the clear model.
        assert!(
            (p - clear_p(i)).abs() <= 0.05,
            "id {i}: {p} vs {}",
            clear_p(i)
        );
        ours.push(p);
        theirs.push(clear_p(i));
        labels.push(label(i) as f64);
    }
    let (a, b) = (auc(&ours, &labels), auc(&theirs, &labels));
    assert!((a - b).abs() <= 0.01, "AUC {a} vs clear {b}");
    // The provider's worker wrote nothing but its share.
    assert_eq!(
        crate::harness::walk_files(&c.provider.outputs).len(),
        1,
        "{:?}",
        crate::harness::walk_files(&c.provider.outputs)
    );
    assert_eq!(c.remaining(&lic).await, Some(4));
    assert_eq!(
        cash(&c).await,
        before - trained.charge_micros - scored.charge_micros
    );

    // More rows than one step scores (`SCORE_CHUNK_ROWS`): the provider's file grows to
    // 70,000 ids (the first 400 as before), the buyer scores 301..=70,300, with the dealer's
    // triples (fast); 69,700 aligned rows in two steps, each as the clear model.
    let many: String = std::iter::once("id,income,score".to_string())
        .chain((1..=70_000u64).map(|i| format!("{i},{},{}", income(i), score(i))))
        .map(|r| r + "\n")
        .collect();
    std::fs::write(c.provider.datasets.join("pm.csv"), many).expect("grow pm");
    let crowd: Vec<String> = (301..=70_300u64)
        .map(|i| format!("{i},{}", age(i)))
        .collect();
    c.dataset(&c.buyer, "bcrowd", "id,age", &crowd).await;
    let big = client
        .submit_job(pb::SubmitJobRequest {
            mpc_triples: pb::MpcTriples::Dealer.into(),
            ..score_job(
                &lic,
                "bcrowd",
                &scoring(&trained.job_id, features),
                "crowd.csv",
            )
        })
        .await
        .expect("submit")
        .into_inner();
    let big = c.wait(&big.job_id).await;
    assert_eq!(big.state_text(), "succeeded", "{big:?}");
    assert_eq!(big.result_size, Some(69_700), "{big:?}");
    let (_, rows) = crate::harness::read_csv(&c.buyer.outputs.join("crowd.csv"));
    assert_eq!(rows.len(), 69_700);
    let mut seen = std::collections::BTreeSet::new();
    for row in &rows {
        let i: u64 = row[0].parse().expect("id");
        let p: f64 = row[1].parse().expect("probability");
        assert!(
            (p - clear_p(i)).abs() <= 0.05,
            "id {i}: {p} vs {}",
            clear_p(i)
        );
        seen.insert(i);
    }
    assert_eq!(seen.len(), 69_700);
    assert_eq!(c.remaining(&lic).await, Some(3));

    // Models a scoring cannot use: refused at admission with why, nothing counted.
    let other = c
        .licence_with_scene(
            "pm",
            r#"{"useSence":"mpc","counts":5,"modelTo":"shared","protocols":["ot"],
                "visitArea":["r1"],"cpCenter":["c1"]}"#,
        )
        .await;
    for (licence, query, says) in [
        (&lic, scoring("job-nosuchjob", features), "no job of party"),
        // Another licence's job is no job at all to this one.
        (
            &other,
            scoring(&trained.job_id, features),
            "no job of party",
        ),
        (
            &lic,
            // The provider's features in another order (across parties the order does not
            // matter: the model's weights are the provider's, then the buyer's).
            scoring(
                &trained.job_id,
                "provider.score, buyer.age, provider.income",
            ),
            "it was trained on provider.income, buyer.age, provider.score",
        ),
        (
            &lic,
            scoring(&scored.job_id, features),
            "it trained no model",
        ),
    ] {
        let refused = client
            .submit_job(score_job(licence, "bnew", &query, "x.csv"))
            .await
            .expect("submit")
            .into_inner();
        assert_eq!(refused.state_text(), "refused", "{query}: {refused:?}");
        assert!(
            refused.refusal_reasons.iter().any(|r| r.contains(says)),
            "{query}: {:?}",
            refused.refusal_reasons
        );
    }
    // Declared bounds other than the training's are other features.
    let wider = client
        .submit_job(mpc_job_on(
            &lic,
            "bnew",
            &scoring(&trained.job_id, features),
            vec![
                column("provider.income", 200_000, 0),
                column("provider.score", 5, 0),
                column("buyer.age", 150, 0),
            ],
            "x.csv",
        ))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(wider.state_text(), "refused", "{wider:?}");
    assert_eq!(c.remaining(&lic).await, Some(3));
    assert_eq!(c.remaining(&other).await, Some(5));

    // The buyer's worker lost its share: the buyer's input error, found before any link
    // opens; nothing charged.
    let kept = c.buyer.outputs.join(&share_name);
    let moved = c.buyer.outputs.join("moved-away.json");
    std::fs::rename(&kept, &moved).expect("move the share");
    let cash_before = cash(&c).await;
    let lost = client
        .submit_job(score_job(
            &lic,
            "bnew",
            &scoring(&trained.job_id, features),
            "lost.csv",
        ))
        .await
        .expect("submit")
        .into_inner();
    let lost = c.wait(&lost.job_id).await;
    assert_eq!(lost.state_text(), "failed", "{lost:?}");
    assert!(
        lost.error.contains("(input)") && lost.error.contains("keeps no share of it"),
        "{}",
        lost.error
    );
    assert_eq!(lost.charge_micros, 0);
    assert_eq!(cash(&c).await, cash_before);
    c.assert_audit_verifies().await;
}
