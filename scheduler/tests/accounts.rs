//! Accounts through the scheduler on a real SQLite store: the first start's admin token, and
//! every way a token stops working (revoked, expired, disabled user, wrong secret, another
//! kind, malformed); admin operations only by the operator, denials audited.

use std::sync::Arc;

use tessera_auth::{Caller, Role, TokenKind};
use tessera_core::ManualClock;
use tessera_core::ticket::TicketSigner;
use tessera_scheduler::{Scheduler, SchedulerConfig, SchedulerError};
use tessera_store::Store;

async fn node() -> (Arc<Scheduler>, Arc<ManualClock>) {
    let store = Store::open_temporary().await.expect("store");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let s = Scheduler::new(
        store,
        clock.clone(),
        TicketSigner::from_seed(&[1u8; 32]),
        SchedulerConfig::default(),
        [2u8; 32],
    );
    (s, clock)
}

#[tokio::test]
async fn tokens_authenticate_until_revoked_expired_or_disabled() {
    let (s, clock) = node().await;
    let acc = s.accounts();
    let admin = acc.bootstrap("admin").await.expect("boot").expect("first");
    assert!(
        acc.bootstrap("admin2").await.expect("boot").is_none(),
        "only an empty store gets a default credential"
    );
    let root = acc
        .authenticate(&admin.token.reveal())
        .await
        .expect("admin token works");
    assert!(matches!(&root, Caller::User(p) if p.is_operator() && p.user == "admin"));

    acc.create_user(&root, "alice", "buyer")
        .await
        .expect("alice");
    acc.create_user(&root, "bob", "provider")
        .await
        .expect("bob");
    acc.add_group_member(&root, "analysts", "alice")
        .await
        .expect("group");
    let t = acc
        .create_token(&root, "alice", "laptop", Some(60_000))
        .await
        .expect("token");
    let text = t.token.reveal();
    let alice = acc.authenticate(&text).await.expect("alice");
    let Caller::User(p) = &alice else {
        panic!("a user")
    };
    assert!(p.roles.has(Role::Buyer) && p.groups.contains("analysts"));

    // Malformed, unknown, wrong secret, or a registration-kind prefix: all the same answer.
    let mut wrong_secret = text.to_string();
    let last = wrong_secret.pop().expect("non-empty");
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    for bad in [
        String::new(),
        "tsk_nope".into(),
        wrong_secret,
        text.replacen("tsk_", "tsr_", 1),
        format!("tsk_{}_{}", "0".repeat(16), "0".repeat(64)),
    ] {
        assert!(acc.authenticate(&bad).await.is_err(), "{bad}");
    }

    // Alice may not make users, nor tokens for bob; she may for herself.
    let denied = acc.create_user(&alice, "eve", "operator").await;
    assert!(
        matches!(denied, Err(SchedulerError::Forbidden(_))),
        "{denied:?}"
    );
    assert!(matches!(
        acc.create_token(&alice, "bob", "x", None).await,
        Err(SchedulerError::Forbidden(_))
    ));
    let own = acc
        .create_token(&alice, "alice", "second", None)
        .await
        .expect("own token");
    // Minted with a token that had a minute left, it expires with it, not in 90 days.
    assert_eq!(own.record.expires_at_ms, t.record.expires_at_ms, "{own:?}");
    assert_eq!(acc.tokens(&alice).await.expect("list").len(), 2);
    assert_eq!(acc.tokens(&root).await.expect("all").len(), 3);

    // Bob cannot revoke (or even find) alice's token; alice can.
    let bob_t = acc
        .create_token(&root, "bob", "b", None)
        .await
        .expect("bob");
    let bob = acc.authenticate(&bob_t.token.reveal()).await.expect("bob");
    assert!(matches!(
        acc.revoke_token(&bob, own.token.id()).await,
        Err(SchedulerError::NotFound(_))
    ));
    // Authenticated once, the token is cached; its revocation still stops it at once (the
    // accounts version moved, so the cache is dropped).
    acc.authenticate(&own.token.reveal())
        .await
        .expect("own token, now cached");
    let version = s.store().accounts_version().await.expect("version");
    acc.revoke_token(&alice, own.token.id())
        .await
        .expect("revoke");
    assert!(s.store().accounts_version().await.expect("version") > version);
    assert!(acc.authenticate(&own.token.reveal()).await.is_err());

    // Expiry: the 60 s token dies after 60 s.
    clock.advance_ms(60_000);
    assert!(acc.authenticate(&text).await.is_err(), "expired");

    // Disabling a user stops its tokens at once.
    acc.disable_user(&root, "bob").await.expect("disable");
    assert!(acc.authenticate(&bob_t.token.reveal()).await.is_err());

    // The denials of admin operations are in the audit chain, without any secret.
    let entries = s.store().audit_entries().await.expect("audit");
    let denials: Vec<_> = entries.iter().filter(|e| e.kind == "denied").collect();
    assert!(
        denials.iter().any(|e| e.subject == "CreateUser"),
        "{denials:?}"
    );
    assert!(
        denials.iter().any(|e| e.subject == "RevokeToken"),
        "bob's attempt on alice's token is audited: {denials:?}"
    );
    for e in &entries {
        assert!(!e.detail_json.contains(&text[21..]), "secret in {e:?}");
    }
}

#[tokio::test]
async fn registration_tokens_are_issued_to_a_partys_owner_only() {
    let (s, _clock) = node().await;
    let acc = s.accounts();
    let admin = acc.bootstrap("admin").await.expect("boot").expect("first");
    let root = acc.authenticate(&admin.token.reveal()).await.expect("root");
    acc.create_user(&root, "alice", "provider")
        .await
        .expect("alice");
    acc.create_user(&root, "mallory", "provider,buyer")
        .await
        .expect("m");
    let alice_t = acc
        .create_token(&root, "alice", "a", None)
        .await
        .expect("t");
    let alice = acc.authenticate(&alice_t.token.reveal()).await.expect("a");
    let m_t = acc
        .create_token(&root, "mallory", "m", None)
        .await
        .expect("t");
    let mallory = acc.authenticate(&m_t.token.reveal()).await.expect("m");

    acc.create_party(&alice, "shop", "alice")
        .await
        .expect("own party");
    // A party name that records already use (made before parties had owners) is given an
    // owner by the operator only: a user cannot take over a provider's party by naming it.
    s.store()
        .create_dataset(
            &tessera_store::DatasetRecord {
                dataset_id: "old".into(),
                owner_party: "legacy".into(),
                location: "old.csv".into(),
                description: String::new(),
                declared_rows: None,
            },
            1,
        )
        .await
        .expect("dataset");
    assert!(matches!(
        acc.create_party(&mallory, "legacy", "mallory").await,
        Err(SchedulerError::Forbidden(_))
    ));
    acc.create_party(&root, "legacy", "alice")
        .await
        .expect("the operator assigns it");
    assert!(matches!(
        acc.create_party(&mallory, "fake", "alice").await,
        Err(SchedulerError::Forbidden(_))
    ));
    let reg = acc
        .issue_registration_token(&alice, "shop", None)
        .await
        .expect("reg");
    assert_eq!(reg.record.kind, TokenKind::Registration);
    assert_eq!(
        acc.authenticate(&reg.token.reveal()).await.expect("reg"),
        Caller::Registrant {
            party: "shop".into()
        }
    );
    // Another party's owner, or a party that does not exist: forbidden alike.
    assert!(matches!(
        acc.issue_registration_token(&mallory, "shop", None).await,
        Err(SchedulerError::Forbidden(_))
    ));
    assert!(matches!(
        acc.issue_registration_token(&mallory, "nowhere", None)
            .await,
        Err(SchedulerError::Forbidden(_))
    ));
    assert!(matches!(
        acc.issue_registration_token(&root, "nowhere", None).await,
        Err(SchedulerError::NotFound(_))
    ));
    assert!(matches!(
        acc.issue_registration_token(&root, "shop", Some(0)).await,
        Err(SchedulerError::Invalid(_))
    ));
}
