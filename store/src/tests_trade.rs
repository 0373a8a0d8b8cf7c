//! The trade flow's records on a real SQLite file: the flow's uniqueness rules, the
//! settlement's money in one transaction (and nothing written when it is refused), licences
//! superseded once, revocations.

use super::*;
use tessera_accounting::{TransferSpec, derive_id};

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("tessera.db"))
        .await
        .expect("open");
    (dir, store)
}

async fn deposit(store: &Store, account: &str, amount: i64) {
    store
        .post_transfers(
            &[TransferSpec {
                id: derive_id(&["dep", account, &amount.to_string()]),
                debit: "external".into(),
                credit: account.into(),
                amount_micros: amount,
                job_id: None,
                memo: "deposit".into(),
            }],
            1,
        )
        .await
        .expect("deposit");
}

async fn seeded() -> (tempfile::TempDir, Store) {
    let (dir, store) = open().await;
    store
        .create_dataset(
            &DatasetRecord {
                dataset_id: "customers".into(),
                owner_party: "acme".into(),
                location: "customers.csv".into(),
                description: String::new(),
                declared_rows: Some(10),
            },
            1,
        )
        .await
        .expect("dataset");
    store
        .trade_register(
            &RegistrationRow {
                registration_id: "reg-1".into(),
                owner: "acme".into(),
                data_id: "customers".into(),
                record_json: "{}".into(),
            },
            "pu",
            2,
        )
        .await
        .expect("register");
    store
        .trade_publish(
            &PublicationRow {
                registration_id: "reg-1".into(),
                data_id: "customers".into(),
                owner: "acme".into(),
                controlled: false,
                record_json: None,
                free: false,
                price_micros: 300_000_000,
                status: "YES".into(),
            },
            "pu",
            3,
        )
        .await
        .expect("publish");
    store
        .trade_register_demand(
            &DemandRow {
                demand_id: "dem-1".into(),
                demander: "u1".into(),
                record_json: "{}".into(),
                status: "registered".into(),
            },
            4,
        )
        .await
        .expect("demand");
    (dir, store)
}

fn settlement<'a>(licence: &'a str, key: &'a [u8; 32]) -> NewSettlement<'a> {
    NewSettlement {
        confirm_id: "conf-1",
        licenses_id: licence,
        licence_json: "{\"licensesID\":\"x\"}",
        sealed_key_json: "{}",
        delivery_key: key,
        term_start_ms: 10,
        term_end_ms: 1_000,
        operator_share_bps: 1_000,
    }
}

#[tokio::test]
async fn a_demand_is_confirmed_once_and_only_when_both_sides_are_published() {
    let (_d, store) = seeded().await;
    // Not yet published: refused by field.
    let err = store
        .trade_confirm("conf-0", "dem-1", "reg-1", "customers", 5)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "demandID",
                ..
            }
        ),
        "{err}"
    );
    store
        .trade_set_demand_status("dem-1", "published", 6)
        .await
        .expect("publish demand");
    let c = store
        .trade_confirm("conf-1", "dem-1", "reg-1", "customers", 7)
        .await
        .expect("confirm");
    assert_eq!(
        (c.owner.as_str(), c.demander.as_str(), c.price_micros),
        ("acme", "u1", 300_000_000)
    );
    // A second confirmation of the same demand is a conflict.
    assert!(matches!(
        store
            .trade_confirm("conf-2", "dem-1", "reg-1", "customers", 8)
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // A confirmed demand cannot be revoked.
    assert!(matches!(
        store.trade_set_demand_status("dem-1", "revoked", 9).await,
        Err(StoreError::Invalid {
            field: "demandID",
            ..
        })
    ));
    // Revoked data refuses new confirmations.
    store
        .trade_register_demand(
            &DemandRow {
                demand_id: "dem-2".into(),
                demander: "u1".into(),
                record_json: "{}".into(),
                status: "registered".into(),
            },
            10,
        )
        .await
        .unwrap();
    store
        .trade_set_demand_status("dem-2", "published", 11)
        .await
        .unwrap();
    store
        .trade_revoke_publication("reg-1", "customers", "pu", 12)
        .await
        .unwrap();
    assert!(matches!(
        store
            .trade_confirm("conf-3", "dem-2", "reg-1", "customers", 13)
            .await,
        Err(StoreError::Invalid {
            field: "registrationID",
            ..
        })
    ));
    assert_eq!(
        store
            .trade_publication("reg-1", "customers")
            .await
            .unwrap()
            .status,
        "NO"
    );
    // A dataset of another party cannot be registered by this owner.
    assert!(matches!(
        store
            .trade_register(
                &RegistrationRow {
                    registration_id: "reg-9".into(),
                    owner: "mal".into(),
                    data_id: "customers".into(),
                    record_json: "{}".into(),
                },
                "mallory",
                14,
            )
            .await,
        Err(StoreError::Invalid {
            field: "dataID",
            ..
        })
    ));
    assert!(
        store
            .verify_audit()
            .await
            .unwrap()
            .first_broken_seq
            .is_none()
    );
}

#[tokio::test]
async fn a_settlement_pays_once_in_one_transaction_and_a_refusal_writes_nothing() {
    let (_d, store) = seeded().await;
    store
        .trade_set_demand_status("dem-1", "published", 5)
        .await
        .unwrap();
    store
        .trade_confirm("conf-1", "dem-1", "reg-1", "customers", 6)
        .await
        .unwrap();
    let key = [9u8; 32];
    // Not enough money: refused, and nothing is written.
    deposit(&store, "customer:u1:cash", 100_000_000).await;
    let err = store
        .trade_settle(&settlement("lic-1", &key), 7)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err}");
    assert!(store.trade_settlement("conf-1").await.unwrap().is_none());
    assert!(matches!(
        store.trade_licence("lic-1").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.balance("customer:u1:cash").await.unwrap(),
        100_000_000
    );
    // Enough: paid from cash, split 90/10, licence valid.
    deposit(&store, "customer:u1:cash", 250_000_000).await;
    let s = store
        .trade_settle(&settlement("lic-1", &key), 8)
        .await
        .expect("settle");
    assert_eq!(s.licenses_id, "lic-1");
    assert_eq!(store.balance("customer:u1:cash").await.unwrap(), 50_000_000);
    assert_eq!(
        store.balance("provider:acme:receivable").await.unwrap(),
        270_000_000
    );
    assert_eq!(store.balance("operator:revenue").await.unwrap(), 30_000_000);
    let proof: serde_json::Value = serde_json::from_str(&s.payment_json).unwrap();
    assert_eq!(proof["amount_micros"], 300_000_000);
    assert!(!proof["ledger_transfers"].as_array().unwrap().is_empty());
    // A retry answers the first settlement: same licence, no second payment.
    let again = store
        .trade_settle(&settlement("lic-2", &key), 9)
        .await
        .unwrap();
    assert_eq!(again, s);
    assert_eq!(store.balance("customer:u1:cash").await.unwrap(), 50_000_000);
    assert!(matches!(
        store.trade_licence("lic-2").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.trade_delivery_key("conf-1").await.unwrap(), key);
    // Reissue: the old licence is superseded once; the settlement names the new one.
    store
        .trade_supersede_licence("lic-1", "lic-1b", "{\"licensesID\":\"lic-1b\"}", "pu", 10)
        .await
        .unwrap();
    assert_eq!(
        store.trade_licence("lic-1").await.unwrap().status,
        "superseded"
    );
    assert_eq!(
        store
            .trade_settlement("conf-1")
            .await
            .unwrap()
            .unwrap()
            .licenses_id,
        "lic-1b"
    );
    assert!(matches!(
        store
            .trade_supersede_licence("lic-1", "lic-1c", "{}", "pu", 11)
            .await,
        Err(StoreError::Invalid {
            field: "licensesID",
            ..
        })
    ));
    let valid = store.trade_valid_licences("customers").await.unwrap();
    assert_eq!(valid.len(), 1);
    assert_eq!(valid[0].licenses_id, "lic-1b");
    assert!(store.ledger_balanced().await.unwrap());
    let v = store.verify_audit().await.unwrap();
    assert!(
        v.first_broken_seq.is_none() && v.problems.is_empty(),
        "{}",
        v.detail
    );
}

#[tokio::test]
async fn a_licensor_key_is_made_once_and_files_and_deliveries_are_kept() {
    let (_d, store) = seeded().await;
    let k1 = store.licensor_key("acme", [1; 32], 5).await.unwrap();
    let k2 = store.licensor_key("acme", [2; 32], 6).await.unwrap();
    assert_eq!(k1, k2);
    assert_eq!(k1, [1; 32]);
    assert!(matches!(
        store.trade_file("reg-1").await,
        Err(StoreError::NotFound { .. })
    ));
    store
        .trade_put_file("reg-1", "abc", b"id\n1\n", "pu", 7)
        .await
        .unwrap();
    assert_eq!(store.trade_file("reg-1").await.unwrap().1, b"id\n1\n");
    assert!(matches!(
        store.trade_put_file("reg-x", "abc", b"", "pu", 8).await,
        Err(StoreError::NotFound { .. })
    ));
}
