//! Operation through the real binary (issue 8, "CLI and operation"): one operator per data
//! directory, private files, exit statuses of followed jobs, listings (closed pipes, dates, no
//! escape codes, bounded pages), names and dataset locations refused up front with clean API
//! errors, a worker without its dataset directory, the demo's working directory.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tessera_proto::v1 as pb;

use crate::harness::{BIN, BUYER, Cluster, PROVIDER, USER, keys};

/// Runs `tessera ARGS --operator URL` and returns its output, whatever its status.
fn run(c: &Cluster, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--operator", &c.url, "--ca-file", &c.ca_file])
        .env("TESSERA_TOKEN", c.cli_token(args))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tessera")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits (bounded) for a child to exit and returns its status code.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s.code();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tessera did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`-TERM`, `-INT`, …) to `child` with `kill`, waits (bounded) for it to exit,
/// and returns its status code and what it wrote on stderr.
#[cfg(unix)]
fn signal_and_collect(child: &mut std::process::Child, signal: &str) -> (Option<i32>, String) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let code = wait_exit(child, Duration::from_secs(30));
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    (code, err)
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_operator_on_a_data_directory_in_use_refuses_to_start() {
    let c = Cluster::start(10_000);
    let data = c.dir.path().join("operator");
    c.dataset(&c.provider, "dsp", "k", &keys("k", 0..50)).await;
    c.dataset(&c.buyer, "dsb", "k", &keys("k", 25..75)).await;
    let lic = c.licence("dsp", None).await;
    c.fund(10_000_000, "t1").await;

    let mut second = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let code = wait_exit(&mut second, Duration::from_secs(20));
    let mut err = String::new();
    second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert_eq!(code, Some(1), "the second operator must refuse: {err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(
        err.contains(&format!("pid {}", c.operator.pid())),
        "the holder's pid is named: {err}"
    );

    // The first operator is untouched: a job runs to the end and is charged.
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "dsb", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    let done = c.wait(&j.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    assert_eq!(done.result_size, Some(25));

    // Item 22: the data directory is private, and so is every file in it.
    #[cfg(unix)]
    {
        assert_eq!(mode(&data), 0o700);
        for f in [
            "tessera.db",
            "tessera.db-wal",
            "tessera.db-shm",
            "operator.key",
            "tessera.lock",
        ] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    }
}

/// Submits through the CLI with `--watch` and returns (exit code, stdout, stderr).
fn submit_watch(
    c: &Cluster,
    lic: &str,
    dataset: &str,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let mut args = vec![
        "job",
        "submit",
        "--licence",
        lic,
        "--buyer-party",
        BUYER,
        "--buyer-dataset",
        dataset,
        "--buyer-columns",
        "k",
        "--provider-columns",
        "k",
        "--watch",
    ];
    args.extend_from_slice(extra);
    let out = run(c, &args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Starts `job submit --mode size --watch` on dataset `dsb` in the background and reads its
/// first line (the job as submitted); returns the process, the rest of its stdout, that line.
fn spawn_followed_size_job(
    c: &Cluster,
    lic: &str,
) -> (std::process::Child, std::process::ChildStdout, String) {
    let mut follow = Command::new(BIN)
        .args([
            "job",
            "submit",
            "--licence",
            lic,
            "--buyer-party",
            BUYER,
            "--buyer-dataset",
            "dsb",
            "--buyer-columns",
            "k",
            "--provider-columns",
            "k",
            "--mode",
            "size",
            "--watch",
            "--operator",
            &c.url,
            "--ca-file",
            &c.ca_file,
        ])
        .env("TESSERA_TOKEN", &c.buyer_token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = follow.stdout.take().expect("stdout");
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    (follow, stdout, text(&first))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_jobs_end_only_in_a_terminal_state_with_a_distinct_exit_status() {
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "dsp", "k", &keys("k", 0..100_000))
        .await;
    c.dataset(&c.buyer, "dsb", "k", &keys("k", 50..150)).await;
    c.fund(100_000_000, "t1").await;
    let lic = c.licence("dsp", Some(3)).await;

    // Succeeded: 0, and the last line is the terminal state.
    let (code, out, err) = submit_watch(&c, &lic, "dsb", &["--mode", "size"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let last = out.lines().last().expect("a line");
    assert!(last.contains(" succeeded "), "{out}");
    assert!(last.contains("result_size=100"), "{out}");

    // Failed (the buyer's file is missing): 4.
    c.client()
        .await
        .create_dataset(pb::CreateDatasetRequest {
            dataset_id: "ghost".into(),
            owner_party: BUYER.into(),
            location: "ghost.csv".into(),
            description: String::new(),
            declared_rows: None,
        })
        .await
        .expect("dataset");
    let (code, out, err) = submit_watch(&c, &lic, "ghost", &["--mode", "size"]);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        out.lines().last().expect("line").contains(" failed "),
        "{out}"
    );
    assert!(err.contains("failed"), "{err}");

    // Cancelled while followed: 5.
    let (mut follow, mut stdout, first) = spawn_followed_size_job(&c, &lic);
    let job_id = first.split_whitespace().next().expect("job id").to_string();
    assert!(
        first.contains(" admitted ") || first.contains(" running "),
        "{first}"
    );
    let cancel = run(&c, &["job", "cancel", &job_id]);
    assert!(cancel.status.success(), "{}", text(&cancel.stderr));
    assert_eq!(wait_exit(&mut follow, Duration::from_secs(60)), Some(5));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read");
    assert!(rest.contains(" cancelled"), "{rest}");
    // `job watch` on the ended job says the same.
    let w = run(&c, &["job", "watch", &job_id]);
    assert_eq!(w.status.code(), Some(5), "{}", text(&w.stderr));

    // Refused (the licence's 3 runs are spent): 3, at once.
    let (code, out, err) = submit_watch(&c, &lic, "dsb", &["--mode", "size"]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.contains(" refused "), "{out}");

    // The operator unreachable: 6.
    let out = Command::new(BIN)
        .args([
            "job",
            "watch",
            "j-none",
            "--operator",
            "https://127.0.0.1:1",
        ])
        .args(["--ca-file", &c.ca_file])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_loses_the_operator_ends_with_connection_lost() {
    let mut c = Cluster::start(10_000);
    c.dataset(&c.provider, "dsp", "k", &keys("k", 0..200_000))
        .await;
    c.dataset(&c.buyer, "dsb", "k", &keys("k", 0..200_000))
        .await;
    c.fund(100_000_000, "t1").await;
    let lic = c.licence("dsp", None).await;
    let (mut follow, mut stdout, _first) = spawn_followed_size_job(&c, &lic);
    c.operator.kill();
    let code = wait_exit(&mut follow, Duration::from_secs(60));
    let mut err = String::new();
    follow
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("connection lost"), "{err}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read");
    assert!(
        !rest.contains("running"),
        "no non-terminal end is printed: {rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_paged_dated_plain_and_survive_a_closed_pipe() {
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "dsp", "k", &keys("k", 0..40)).await;
    c.dataset(&c.buyer, "dsb", "k", &keys("k", 20..60)).await;
    c.fund(100_000_000, "t1").await;
    let lic = c.licence("dsp", Some(5)).await;
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "dsb", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    c.wait(&j.job_id).await;

    // Jobs: the state, RFC 3339 dates in the operator's zone (+08:00 by default), no escape
    // codes in a pipe.
    let out = run(&c, &["job", "list", "--user", USER]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(!t.contains('\u{1b}'), "{t:?}");
    let row = t
        .lines()
        .find(|l| l.starts_with(&j.job_id))
        .expect("job row");
    assert!(row.contains("succeeded"), "{row}");
    let dates: Vec<&str> = row
        .split_whitespace()
        .filter(|w| w.ends_with("+08:00"))
        .collect();
    assert_eq!(dates.len(), 2, "created and finished as dates: {row}");
    assert!(
        !row.contains(&j.created_at_ms.to_string()),
        "no epoch milliseconds: {row}"
    );
    let out = run(&c, &["job", "list", "--state", "failed", "--csv"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "header only: {}",
        text(&out.stdout)
    );
    let bad = run(&c, &["job", "list", "--state", "finished"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));

    // Datasets, licences, workers.
    let t = text(&run(&c, &["dataset", "list", "--party", PROVIDER, "--csv"]).stdout);
    assert_eq!(
        t,
        "dataset,party,location,rows,description\ndsp,prov,dsp.csv,40,\n"
    );
    let t = text(&run(&c, &["licence", "list", "--licensee", USER]).stdout);
    assert!(t.contains(&lic) && t.contains("psi 4/5"), "{t}");
    let t = text(&run(&c, &["worker", "list"]).stdout);
    let live: Vec<&str> = t.lines().filter(|l| l.contains(" yes ")).collect();
    assert_eq!(live.len(), 2, "{t}");
    assert!(t.contains("+08:00"), "{t}");

    // Pages are bounded and follow each other.
    for i in 0..5 {
        c.provider_client()
            .await
            .create_dataset(pb::CreateDatasetRequest {
                dataset_id: format!("extra-{i}"),
                owner_party: PROVIDER.into(),
                location: format!("e{i}.csv"),
                description: String::new(),
                declared_rows: None,
            })
            .await
            .expect("dataset");
    }
    let page = |token: &str| pb::DatasetQuery {
        page: Some(pb::PageQuery {
            page_size: 3,
            page_token: token.into(),
        }),
        owner_party: String::new(),
    };
    // The operator lists every party's datasets.
    let mut client = c.admin().await;
    let p1 = client
        .list_datasets(page(""))
        .await
        .expect("p1")
        .into_inner();
    let p2 = client
        .list_datasets(page(&p1.next_page_token))
        .await
        .expect("p2")
        .into_inner();
    let p3 = client
        .list_datasets(page(&p2.next_page_token))
        .await
        .expect("p3")
        .into_inner();
    let ids: Vec<String> = [p1.datasets, p2.datasets, p3.datasets]
        .concat()
        .into_iter()
        .map(|d| d.dataset_id)
        .collect();
    assert_eq!(ids.len(), 7, "{ids:?}");
    assert!(p3.next_page_token.is_empty());
    let too_big = client
        .list_datasets(pb::DatasetQuery {
            page: Some(pb::PageQuery {
                page_size: 5_000,
                page_token: String::new(),
            }),
            owner_party: String::new(),
        })
        .await
        .expect_err("page too large");
    assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
    let t = text(&run(&c, &["dataset", "list", "--page-size", "3"]).stderr);
    assert!(t.contains("--page-token"), "the next page is offered: {t}");
    let all = text(
        &run(
            &c,
            &["dataset", "list", "--page-size", "3", "--all", "--csv"],
        )
        .stdout,
    );
    assert_eq!(all.lines().count(), 8, "{all}");

    // A reader that has gone away: no panic, status 0.
    for args in [
        &["job", "list"][..],
        &["dataset", "list"][..],
        &["licence", "list"][..],
        &["worker", "list"][..],
        &["job", "get", &j.job_id][..],
    ] {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--operator", &c.url, "--ca-file", &c.ca_file])
            .env("TESSERA_TOKEN", c.cli_token(args))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take()); // closed before anything is written
        let code = wait_exit(&mut child, Duration::from_secs(20));
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read");
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confusing_names_and_unreadable_locations_are_refused_with_clean_errors() {
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "dsp", "k", &keys("k", 0..10)).await;
    c.dataset(&c.buyer, "dsb", "k", &keys("k", 0..10)).await;
    c.fund(10_000_000, "t1").await;
    let lic = c.licence("dsp", None).await;

    // A dataset location without a supported extension: refused at creation.
    let out = run(
        &c,
        &[
            "dataset",
            "create",
            "--id",
            "d1",
            "--party",
            PROVIDER,
            "--location",
            "customers",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
    assert!(err.contains(".csv, .parquet, .pq, or .tseal"), "{err}");
    assert!(
        !err.contains("metadata") && !err.contains("details"),
        "no raw status: {err}"
    );

    // Output names that would confuse: refused at submission, naming the value and why.
    for (name, why) in [
        ("x.csv ", "whitespace"),
        (" x.csv", "whitespace"),
        ("..", "not . or .."),
        (".", "not . or .."),
        ("out/x.csv", "path separator"),
        (".x.csv", "hidden"),
    ] {
        let out = run(
            &c,
            &[
                "job",
                "submit",
                "--licence",
                &lic,
                "--buyer-party",
                BUYER,
                "--buyer-dataset",
                "dsb",
                "--buyer-columns",
                "k",
                "--provider-columns",
                "k",
                "--output",
                name,
            ],
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name:?}: {err}");
        assert!(
            err.contains("INVALID_ARGUMENT") && err.contains(why),
            "{name:?}: {err}"
        );
    }

    // An output directory that vanished: the job fails naming the user's path and the cause,
    // never a hidden temporary file.
    std::fs::remove_dir_all(&c.buyer.outputs).expect("rm outputs");
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "dsb", "intersection", "r.csv"))
        .await
        .expect("submit")
        .into_inner();
    let done = c.wait(&j.job_id).await;
    assert_eq!(done.state_text(), "failed", "{done:?}");
    assert!(done.error.contains("r.csv"), "{}", done.error);
    assert!(done.error.contains("does not exist"), "{}", done.error);
    assert!(!done.error.contains("/.r.csv."), "{}", done.error);
}

#[test]
fn a_worker_without_its_dataset_directory_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir");
    let out = Command::new(BIN)
        .args([
            "worker",
            "--operator",
            "http://127.0.0.1:1",
            "--party",
            "p",
            "--datasets",
        ])
        .arg(&missing)
        .arg("--outputs")
        .arg(dir.path().join("out"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn the_demo_refuses_a_directory_it_did_not_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), "mine").expect("write");
    let out = Command::new(BIN)
        .args(["demo", "--rows", "10", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not created by `tessera demo`"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).expect("kept"),
        "mine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_seen_by_a_watcher_never_goes_backwards() {
    use tokio_stream::StreamExt;
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "dsp", "k", &keys("k", 0..60_000))
        .await;
    c.dataset(&c.buyer, "dsb", "k", &keys("k", 30_000..90_000))
        .await;
    c.fund(100_000_000, "t1").await;
    let lic = c.licence("dsp", None).await;
    let mut client = c.client().await;
    let j = client
        .submit_job(Cluster::job(&lic, "dsb", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    // Watched as the buyer, who alone may see the result.
    let req = pb::JobRef {
        job_id: j.job_id.clone(),
    };
    let mut stream = client.watch_job(req).await.expect("watch").into_inner();
    let mut last: std::collections::HashMap<(String, String), u64> = Default::default();
    let mut updates = 0;
    let mut end = None;
    while let Some(v) = stream.next().await {
        let v = v.expect("update");
        for p in &v.progress {
            let key = (p.party.clone(), p.phase.clone());
            let before = last.get(&key).copied().unwrap_or(0);
            assert!(
                p.done >= before,
                "{key:?} went back from {before} to {}",
                p.done
            );
            last.insert(key, p.done);
            updates += 1;
        }
        end = Some(v);
    }
    let end = end.expect("a final state");
    assert_eq!(end.state_text(), "succeeded", "{end:?}");
    assert_eq!(end.result_size, Some(30_000));
    assert!(updates > 2, "progress was reported ({updates} updates)");
}

#[test]
fn serve_on_an_address_in_use_fails_naming_it_and_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("fresh");
    let mut serve = Command::new(BIN)
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let code = wait_exit(&mut serve, Duration::from_secs(20));
    let mut err = String::new();
    serve
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(
        !data.exists(),
        "a start that failed left {} behind",
        data.display()
    );
    drop(taken);
}

#[cfg(unix)]
#[test]
fn serve_stops_cleanly_on_sigterm_and_folds_its_log_into_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("op");
    let mut serve = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait (bounded) for the banner, then ask it to stop as a service manager would.
    let mut out = serve.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    out.read_exact(&mut first).expect("banner");
    let (code, err) = signal_and_collect(&mut serve, "-TERM");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("stopped"), "{err}");
    let wal = data.join("tessera.db-wal");
    let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        wal_bytes, 0,
        "the write-ahead log was folded back: {wal_bytes} bytes left"
    );
    // And the data directory opens again at once (the lock went with the process).
    let verify = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

/// `bench admission` at a tiny size: its figures come out as JSON and its exactly-once checks
/// (the licence's count, every job ended, the ledger, the audit chain) hold.
#[test]
fn the_admission_benchmark_runs_and_checks_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "bench",
            "admission",
            "--jobs",
            "6",
            "--concurrency",
            "3",
            "--json",
        ])
        .arg("--dir")
        .arg(dir.path().join("b"))
        .env("RUST_LOG", "error")
        .output()
        .expect("run");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a line")).expect("json");
    for check in ["count_exact", "ledger_balanced", "audit_verified"] {
        assert_eq!(v[check], true, "{check}: {v}");
    }
    assert_eq!(v["succeeded"], 6);
    assert_eq!(v["failures"], serde_json::json!([]), "{v}");
    assert!(v["admissions_per_s"].as_f64().expect("rate") > 0.0);
    assert!(
        !text(&out.stderr).contains("admin account"),
        "the benchmark reads the admin token itself: {}",
        text(&out.stderr)
    );
    // The kept directory's chain ends under a signed checkpoint, as a stopped operator's.
    let verify = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path().join("b").join("operator"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("verify");
    let report = text(&verify.stdout);
    assert!(verify.status.success(), "{report}{}", text(&verify.stderr));
    assert!(report.contains("audit chain OK"), "{report}");
    assert!(
        !report.contains("after the latest signed checkpoint"),
        "{report}"
    );
}

/// The `tessera worker` processes a benchmark started, found by the benchmark's directory on
/// their command line.
#[cfg(target_os = "linux")]
fn workers_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "worker") && args.iter().any(|a| a.contains(&needle)) {
            found.push(pid);
        }
    }
    found
}

/// Starts a long `bench admission` in `dir` and waits (bounded) for its two worker processes.
#[cfg(target_os = "linux")]
fn long_benchmark(dir: &Path) -> std::process::Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["bench", "admission", "--jobs", "1000000", "--json"]);
    if dir.file_name().is_some_and(|n| n == "KILL") {
        // Its own scratch directory, under `dir` as the temporary directory.
        std::fs::create_dir_all(dir).expect("temp");
        cmd.env("TMPDIR", dir);
    } else {
        cmd.arg("--dir").arg(dir);
    }
    let child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while workers_under(dir).len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the benchmark's workers did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Waits (bounded) until no worker process of the benchmark in `dir` is left.
#[cfg(target_os = "linux")]
fn until_no_worker_under(dir: &Path, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let left = workers_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "worker processes {left:?} outlived their benchmark"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A benchmark stopped part-way: SIGINT and SIGTERM end it with 130 and 143 (128 + the
/// signal, as a shell says of a process the signal killed), naming the signal; SIGKILL,
/// which it cannot see, still takes its worker processes with it (their standard input
/// closes).
#[cfg(target_os = "linux")]
#[test]
fn an_interrupted_admission_benchmark_says_so_and_leaves_no_worker_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (signal, status, said) in [("-INT", 130, "SIGINT"), ("-TERM", 143, "SIGTERM")] {
        let run = dir.path().join(&signal[1..]);
        let mut bench = long_benchmark(&run);
        let (code, err) = signal_and_collect(&mut bench, signal);
        assert_eq!(code, Some(status), "{err}");
        assert!(err.contains(said), "{err}");
        until_no_worker_under(&run, Duration::from_secs(10));
    }
    let run = dir.path().join("KILL");
    let mut bench = long_benchmark(&run);
    let scratch = run.join(format!("tessera-bench-admission-{}", bench.id()));
    bench.kill().expect("SIGKILL");
    let _ = bench.wait();
    until_no_worker_under(&run, Duration::from_secs(10));
    // Its scratch directory (with that run's operator key) is left; the next run removes it.
    assert!(scratch.is_dir(), "{}", scratch.display());
    let next = Command::new(BIN)
        .args(["bench", "admission", "--jobs", "2", "--json"])
        .env("TMPDIR", &run)
        .env("RUST_LOG", "error")
        .output()
        .expect("run");
    let err = text(&next.stderr);
    assert!(next.status.success(), "{err}");
    assert!(err.contains("left by a run that was killed"), "{err}");
    assert!(!scratch.exists(), "{}", scratch.display());
}

/// `bench admission --workers in-process --worker-nice N` is a usage error (status 2, naming
/// both options): there are no worker processes to give a priority to.
#[test]
fn the_admission_benchmark_refuses_a_worker_priority_without_worker_processes() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "admission",
            "--workers",
            "in-process",
            "--worker-nice",
            "5",
        ])
        .env("RUST_LOG", "error")
        .output()
        .expect("run");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--worker-nice") && stderr.contains("--workers in-process"),
        "{stderr}"
    );
    // The usage line is the benchmark's own.
    assert!(
        stderr.contains("Usage: tessera bench admission"),
        "{stderr}"
    );
}
