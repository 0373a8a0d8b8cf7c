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
    pb::SubmitJobRequest {
        scene: "mpc".into(),
        buyer_columns: vec!["id".into()],
        provider_columns: vec!["id".into()],
        mpc_query: query.into(),
        mpc_columns: vec![
            column("buyer.region", 0, 3),
            column("buyer.age", 150, 0),
            column("provider.income", 100_000, 0),
        ],
        ..Cluster::job(lic, "bm", "intersection", output)
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
        if i % 20 == 0 {
            2
        } else if i % 3 == 0 {
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
    assert_eq!(done.result_size, Some(60), "the aligned rows: {done:?}");

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
    let usage = c
        .admin()
        .await
        .list_usage(pb::ListRequest {})
        .await
        .expect("usage")
        .into_inner()
        .events;
    for party in [PROVIDER, BUYER] {
        let triples = usage
            .iter()
            .find(|e| e.job_id == job.job_id && e.party == party && e.metric == "triples")
            .map(|e| e.quantity);
        assert!(triples.is_some_and(|t| t > 0), "{party}: {usage:?}");
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
    c.assert_audit_verifies().await;
}
