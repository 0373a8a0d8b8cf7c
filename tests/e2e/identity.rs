//! Who is calling (issue 9, first part): the first start writes the admin's token (0600) and
//! no other credential exists; account commands need a valid token, the operator's role for
//! admin operations, and ownership for the rest; revoked and disabled tokens stop at once;
//! no secret reaches the operator's log or the audit chain.

use std::process::{Command, Output};

use crate::harness::{BIN, Cluster};

fn run(c: &Cluster, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--operator", &c.url, "--ca-file", &c.ca_file])
        .env("RUST_LOG", "warn")
        .env_remove("TESSERA_TOKEN");
    if let Some(t) = token {
        cmd.env("TESSERA_TOKEN", t);
    }
    cmd.output().expect("run tessera")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn refused(o: &Output, code: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should have failed: {err}");
    assert!(err.contains(code), "expected {code}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_need_a_valid_token_the_right_role_and_ownership() {
    let c = Cluster::start(10_000);
    let data = c.dir.path().join("operator");
    let token_file = data.join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("admin.token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let admin = std::fs::read_to_string(&token_file)
        .expect("read")
        .trim()
        .to_owned();
    assert!(admin.starts_with("tsk_"), "{admin}");

    // No token or an unknown one: UNAUTHENTICATED. A malformed one never leaves the client,
    // whatever its size (a 5 MB line once ended the command silently).
    refused(&run(&c, None, &["user", "list"]), "UNAUTHENTICATED");
    refused(
        &run(&c, Some("nonsense"), &["user", "list"]),
        "not a Tessera api token",
    );
    let huge = data.join("huge.token");
    std::fs::write(&huge, "t".repeat(5 << 20)).expect("write");
    let o = run(
        &c,
        None,
        &[
            "user",
            "list",
            "--token-file",
            huge.to_str().expect("utf-8"),
        ],
    );
    refused(&o, "a token is 85 characters");
    assert_eq!(o.status.code(), Some(1));
    // A device that never ends is read no further than a token's room.
    #[cfg(unix)]
    {
        let o = run(&c, None, &["user", "list", "--token-file", "/dev/zero"]);
        refused(&o, "holds more than");
        assert_eq!(o.status.code(), Some(1));
    }
    let unknown = format!("tsk_{}_{}", "0".repeat(16), "1".repeat(64));
    refused(
        &run(&c, Some(&unknown), &["user", "list"]),
        "UNAUTHENTICATED",
    );

    // The admin makes users, groups and tokens; --token-file works too.
    let tf = token_file.to_str().expect("utf-8");
    ok(&run(
        &c,
        None,
        &[
            "user",
            "create",
            "alice",
            "--roles",
            "buyer,provider",
            "--token-file",
            tf,
        ],
    ));
    ok(&run(
        &c,
        Some(&admin),
        &["user", "create", "bob", "--roles", "buyer"],
    ));
    refused(
        &run(
            &c,
            Some(&admin),
            &["user", "create", "carol", "--roles", "root"],
        ),
        "INVALID_ARGUMENT",
    );
    ok(&run(
        &c,
        Some(&admin),
        &["group", "add", "analysts", "alice"],
    ));
    let alice = ok(&run(
        &c,
        Some(&admin),
        &["token", "create", "--user", "alice", "--label", "cli"],
    ));
    let bob = ok(&run(
        &c,
        Some(&admin),
        &["token", "create", "--user", "bob"],
    ));
    assert!(alice.starts_with("tsk_") && bob.starts_with("tsk_"));
    let users = ok(&run(&c, Some(&admin), &["user", "list", "--csv"]));
    assert!(
        users.contains("alice,\"provider,buyer\",analysts"),
        "{users}"
    );

    // Alice is no operator: admin operations are denied (and audited); her own are not.
    refused(
        &run(&c, Some(&alice), &["user", "list"]),
        "PERMISSION_DENIED",
    );
    refused(
        &run(&c, Some(&alice), &["group", "add", "analysts", "bob"]),
        "PERMISSION_DENIED",
    );
    refused(
        &run(&c, Some(&alice), &["token", "create", "--user", "bob"]),
        "PERMISSION_DENIED",
    );
    let second = ok(&run(
        &c,
        Some(&alice),
        &["token", "create", "--user", "alice", "--days", "1"],
    ));
    ok(&run(
        &c,
        Some(&alice),
        &["party", "create", "shop", "--owner", "alice"],
    ));
    refused(
        &run(
            &c,
            Some(&bob),
            &["party", "create", "fake", "--owner", "alice"],
        ),
        "PERMISSION_DENIED",
    );
    let reg = ok(&run(
        &c,
        Some(&alice),
        &["party", "registration-token", "shop"],
    ));
    assert!(reg.starts_with("tsr_"), "{reg}");
    refused(
        &run(&c, Some(&bob), &["party", "registration-token", "shop"]),
        "PERMISSION_DENIED",
    );
    // A registration token is for registration only: the client does not even send it as
    // an API token (the operator would refuse it: PERMISSION_DENIED, see authz.rs).
    refused(
        &run(&c, Some(&reg), &["token", "list"]),
        "not a Tessera api token",
    );

    // Listings show one's own tokens only, never a secret.
    let mine = ok(&run(&c, Some(&alice), &["token", "list", "--csv"]));
    assert_eq!(
        mine.lines().count(),
        4,
        "header + alice's two API tokens + her party's registration token: {mine}"
    );
    assert!(mine.contains(",registration,,shop,"), "{mine}");
    assert!(
        !mine.contains(&alice[21..]) && !mine.contains("bob"),
        "{mine}"
    );
    let all = ok(&run(&c, Some(&admin), &["token", "list", "--csv"]));
    assert!(all.contains("bob") && all.contains("bootstrap"), "{all}");

    // Bob cannot revoke alice's token (not even learn it exists); alice can.
    let second_id = &second[4..20];
    refused(
        &run(&c, Some(&bob), &["token", "revoke", second_id]),
        "NOT_FOUND",
    );
    ok(&run(&c, Some(&alice), &["token", "revoke", second_id]));
    refused(
        &run(&c, Some(&second), &["token", "list"]),
        "UNAUTHENTICATED",
    );

    // Disabling bob stops his token at once.
    ok(&run(&c, Some(&admin), &["user", "disable", "bob"]));
    refused(&run(&c, Some(&bob), &["token", "list"]), "UNAUTHENTICATED");
    // Enabled again, his token works again; then disabled for what follows.
    assert!(ok(&run(&c, Some(&admin), &["user", "enable", "bob"])).contains("enabled user bob"));
    ok(&run(&c, Some(&bob), &["token", "list"]));
    refused(
        &run(&c, Some(&bob), &["user", "enable", "bob"]),
        "PERMISSION_DENIED",
    );
    ok(&run(&c, Some(&admin), &["user", "disable", "bob"]));
    refused(&run(&c, Some(&bob), &["token", "list"]), "UNAUTHENTICATED");

    // The admin token file is lost: with the operator stopped, `admin-token` issues a new
    // one offline and revokes the old; while it runs, the data directory is in use and the
    // command refuses.
    let data_s = data.to_str().expect("utf-8");
    let busy = Command::new(BIN)
        .args(["admin-token", "--data-dir", data_s])
        .output()
        .expect("admin-token");
    assert!(!busy.status.success(), "refused while the operator runs");
    let mut c = c;
    c.operator.kill();
    std::fs::remove_file(&token_file).expect("lose the file");
    let issued = Command::new(BIN)
        .args(["admin-token", "--data-dir", data_s, "--days", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("admin-token");
    ok(&issued);
    c.restart_operator();
    let fresh = std::fs::read_to_string(&token_file)
        .expect("new file")
        .trim()
        .to_owned();
    assert_ne!(fresh, admin);
    let users = ok(&run(&c, Some(&fresh), &["user", "list", "--csv"]));
    assert!(users.contains("alice"), "{users}");
    refused(&run(&c, Some(&admin), &["user", "list"]), "UNAUTHENTICATED");

    // A profile of the client configuration names the operator and the token file; an
    // explicit token (here bob's, disabled) takes precedence over it.
    let config = c.dir.path().join("client.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.ops]\noperator = \"{}\"\nca_file = \"{}\"\ntoken_file = \"{}\"\n",
            c.url,
            c.ca_file,
            token_file.display()
        ),
    )
    .expect("config");
    let with_profile = |profile: &str, token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["user", "list", "--profile", profile])
            .env("TESSERA_CLIENT_CONFIG", &config)
            .env("RUST_LOG", "warn")
            .env_remove("TESSERA_TOKEN");
        if let Some(t) = token {
            cmd.env("TESSERA_TOKEN", t);
        }
        cmd.output().expect("run")
    };
    assert!(ok(&with_profile("ops", None)).contains("alice"));
    refused(&with_profile("ops", Some(&bob)), "UNAUTHENTICATED");
    refused(&with_profile("nope", None), "no profile \"nope\"");
    // A profile named is read even when the operator and the token come from elsewhere: its
    // CA file still applies; and a named profile that does not exist is an error.
    let explicit = |profile: &str| {
        Command::new(BIN)
            .args(["user", "list", "--profile", profile, "--operator", &c.url])
            .env("TESSERA_CLIENT_CONFIG", &config)
            .env("TESSERA_TOKEN", &fresh)
            .env("RUST_LOG", "warn")
            .env_remove("TESSERA_CA_FILE")
            .output()
            .expect("run")
    };
    assert!(ok(&explicit("ops")).contains("alice"));
    refused(&explicit("nope"), "no profile \"nope\"");

    // No secret is stored in clear: not in any table (the audit chain included), nor in
    // the write-ahead log.
    let db = std::fs::read(data.join("tessera.db")).expect("db");
    let wal = std::fs::read(data.join("tessera.db-wal")).unwrap_or_default();
    for secret in [&admin, &alice, &bob, &reg] {
        let s = secret.as_bytes();
        let tail = &s[21..];
        assert!(
            !db.windows(tail.len()).any(|w| w == tail)
                && !wal.windows(tail.len()).any(|w| w == tail),
            "a token secret is stored in clear"
        );
    }
}
