//! Every gRPC method against the real operator, for every kind of caller (issue "Who is
//! calling", must show): no token, a revoked token, an expired token, the wrong role, someone
//! else's resource, and the rightful caller. The methods come from `tessera_auth::Operation`
//! (the table's own list) through an exhaustive `match`, so an operation added without a case
//! here does not compile, and one without a rule does not compile in the table.

use std::time::Duration;

use tessera_auth::{Caller, Operation, Principal, Role, Roles, Scope, Target, Who, authorize};
use tessera_proto::v1 as pb;
use tonic::Code;

use crate::harness::{
    BUYER, Client, Cluster, PROVIDER, PROVIDER_USER, USER, connect_anonymous, connect_as, is_trade,
    keys, tai, trade_as,
};

/// Whose resources a call names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whose {
    /// The caller's own (or, for the operator, the buyer `u1`'s).
    Own,
    /// The buyer `u1`'s and the provider `pu`'s, called by `mallory`, who holds every role
    /// but the operator's and owns party `mal`.
    Others,
}

/// What the calls name.
pub(crate) struct Fixture {
    pub(crate) licence: String,
    pub(crate) job: String,
    pub(crate) bill: String,
    /// A worker of `buy` registered by this test, with its credential.
    pub(crate) worker_id: String,
    pub(crate) worker_token: String,
    /// The registration token of `buy`.
    pub(crate) registration: String,
    /// An API token of `u1`, for `RevokeToken`.
    pub(crate) spare_token_id: String,
    /// A live token of `mallory`.
    pub(crate) mallory: String,
    /// The trade flow's records the trade operations name.
    pub(crate) trade: TradeFixture,
}

/// Records of the T/AI 123.12 trade flow, made by `pu` (provider `prov`) and `u1`.
pub(crate) struct TradeFixture {
    /// A published registration of dataset `p`, with an uploaded file.
    pub(crate) reg: String,
    /// A published registration that `RevokePublishedData` revokes.
    pub(crate) reg_revoke: String,
    /// A published demand, confirmed against `reg`, settled and delivered.
    pub(crate) demand: String,
    /// A published demand that is not confirmed yet (for `ConfirmDemand`).
    pub(crate) demand_confirm: String,
    /// A published demand that `RevokeDemand` revokes.
    pub(crate) demand_revoke: String,
    /// The confirmation of `demand`.
    pub(crate) confirm: String,
    /// The licence its settlement issued (JSON).
    pub(crate) licence: serde_json::Value,
    /// The licence of a controlled dataset (`pc`), settled.
    pub(crate) controlled_licence: serde_json::Value,
    /// Another settled licence of `pc`, that `RevokeLicenses` revokes.
    pub(crate) licence_revoke: String,
}

pub(crate) fn job_request(
    licence: &str,
    user: &str,
    buyer_party: &str,
    dataset: &str,
) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        user: user.into(),
        buyer_party: buyer_party.into(),
        ..Cluster::job(licence, dataset, "size", "")
    }
}

pub(crate) fn worker_attrs(party: &str) -> Option<pb::WorkerAttributes> {
    Some(pb::WorkerAttributes {
        party: party.into(),
        region: "r9".into(),
        ..pb::WorkerAttributes::default()
    })
}

/// The request messages of the operations that carry arguments, naming `whose` resources: one
/// home, so that the gRPC and the REST run of the table send the very same requests.
pub(crate) mod requests {
    use tessera_proto::v1 as pb;

    use super::{Fixture, Whose, job_request, rand_suffix};
    use crate::harness::{BUYER, PROVIDER, USER};

    fn pick(whose: Whose, mine: &str, theirs: &str) -> String {
        if whose == Whose::Own { mine } else { theirs }.to_owned()
    }

    pub(crate) fn create_dataset(whose: Whose) -> pb::CreateDatasetRequest {
        pb::CreateDatasetRequest {
            dataset_id: format!("ds-{}", rand_suffix()),
            owner_party: pick(whose, BUYER, PROVIDER),
            location: "x.csv".into(),
            description: String::new(),
            declared_rows: Some(1),
        }
    }

    pub(crate) fn create_licence() -> pb::CreateLicenceRequest {
        pb::CreateLicenceRequest {
            licensor: PROVIDER.into(),
            licensee: USER.into(),
            dataset_id: "p".into(),
            policy_json: format!(
                r#"{{"policyName":"t","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
                    "useScenes":[{{"useSence":"psi","counts":1}}]}}"#
            ),
            price_per_job_micros: 1,
            price_per_1k_rows_micros: 0,
            operator_share_bps: 0,
            monthly_price_micros: 0,
        }
    }

    /// Mallory's own buyer party and dataset exist; the licence is u1's.
    pub(crate) fn submission(f: &Fixture, whose: Whose) -> pb::SubmitJobRequest {
        if whose == Whose::Own {
            job_request(&f.licence, "", BUYER, "b")
        } else {
            job_request(&f.licence, "", "mal", "mal-ds")
        }
    }

    pub(crate) fn deposit(whose: Whose) -> pb::DepositRequest {
        pb::DepositRequest {
            account: pick(whose, "", USER),
            amount_micros: 1,
            idempotency_key: format!("k-{}", rand_suffix()),
            into: String::new(),
        }
    }

    pub(crate) fn credit_limit() -> pb::CreditLimitRequest {
        pb::CreditLimitRequest {
            customer: USER.into(),
            limit_micros: 0,
        }
    }

    /// No month is closed: the payout itself is refused, past the gate.
    pub(crate) fn payout() -> pb::PayoutRequest {
        pb::PayoutRequest {
            provider: PROVIDER.into(),
            period: "2020-01".into(),
        }
    }

    pub(crate) fn limit() -> pb::LimitRequest {
        pb::LimitRequest {
            scope: "platform".into(),
            enabled: false,
            ..pb::LimitRequest::default()
        }
    }

    pub(crate) fn whitelist() -> pb::WhitelistRequest {
        pb::WhitelistRequest {
            customer: "nobody".into(),
            listed: false,
        }
    }

    pub(crate) fn freeze() -> pb::FreezeRequest {
        pb::FreezeRequest {
            customer: "nobody".into(),
            action: "clear".into(),
            reason: String::new(),
        }
    }

    /// The licence is not sold by the month: refused past the gate.
    pub(crate) fn subscription(f: &Fixture, whose: Whose, months: u32) -> pb::SubscriptionRequest {
        pb::SubscriptionRequest {
            licence_id: f.licence.clone(),
            customer: pick(whose, "", USER),
            months,
        }
    }

    pub(crate) fn create_user() -> pb::CreateUserRequest {
        pb::CreateUserRequest {
            user_id: format!("user-{}", rand_suffix()),
            roles: "buyer".into(),
        }
    }

    pub(crate) fn create_token() -> pb::CreateTokenRequest {
        pb::CreateTokenRequest {
            user_id: USER.into(),
            label: "t".into(),
            ttl_ms: 60_000,
        }
    }

    pub(crate) fn create_party() -> pb::CreatePartyRequest {
        pb::CreatePartyRequest {
            party_id: format!("party-{}", rand_suffix()),
            owner_user_id: USER.into(),
        }
    }

    pub(crate) fn registration_token(whose: Whose) -> pb::RegistrationTokenRequest {
        pb::RegistrationTokenRequest {
            party_id: pick(whose, BUYER, PROVIDER),
            ttl_ms: 0,
        }
    }
}

/// Calls `op` with arguments naming `whose` resources; `Ok` or the call's status.
async fn call(
    c: &mut Client,
    op: Operation,
    f: &Fixture,
    whose: Whose,
) -> Result<(), tonic::Status> {
    let own = whose == Whose::Own;
    let pick = |mine: &str, theirs: &str| {
        if own {
            mine.to_owned()
        } else {
            theirs.to_owned()
        }
    };
    let worker_id = pick(&f.worker_id, "w-someone-else");
    let empty = || pb::ListRequest {};
    match op {
        Operation::RegisterWorker => c
            .register_worker(pb::RegisterWorkerRequest {
                worker_id: String::new(),
                attributes: worker_attrs(&pick(BUYER, PROVIDER)),
                peer_addr: "127.0.0.1:1".into(),
                csr_pem: String::new(),
            })
            .await
            .map(drop),
        Operation::RenewCertificate => c
            .renew_certificate(pb::CertificateRequest {
                worker_id,
                csr_pem: tessera_pki::worker_key_and_csr().expect("csr").1,
            })
            .await
            .map(drop),
        Operation::Heartbeat => c
            .heartbeat(pb::HeartbeatRequest { worker_id })
            .await
            .map(drop),
        Operation::PullTasks => c
            .pull_tasks(pb::PullTasksRequest {
                worker_id,
                running_task_ids: Vec::new(),
            })
            .await
            .map(drop),
        Operation::ReportProgress => c
            .report_progress(pb::ProgressReport {
                worker_id,
                task_id: "t-none".into(),
                ..pb::ProgressReport::default()
            })
            .await
            .map(drop),
        Operation::ReportResult => c
            .report_result(pb::TaskResult {
                worker_id,
                task_id: "t-none".into(),
                usage: Some(pb::Usage::default()),
                ..pb::TaskResult::default()
            })
            .await
            .map(drop),
        Operation::ReportDelivered => c
            .report_delivered(pb::DeliveryReport {
                worker_id,
                task_id: "t-none".into(),
                rows_in: 0,
            })
            .await
            .map(drop),
        Operation::TeeChallenge => c
            .tee_challenge(pb::TeeChallengeRequest { worker_id })
            .await
            .map(drop),
        Operation::TeeAttest => c
            .tee_attest(pb::TeeAttestRequest {
                worker_id,
                kind: "insecure-simulated-tee".into(),
                evidence: br#"{"insecure_simulated_tee": true, "measurement": "m"}"#
                    .to_vec()
                    .into(),
                nonce_hex: "00".repeat(32),
                enclave_key_hex: "11".repeat(32),
                ..pb::TeeAttestRequest::default()
            })
            .await
            .map(drop),
        Operation::ReleaseDatasetKey => c
            .release_dataset_key(pb::KeyReleaseRequest {
                worker_id,
                task_id: "t-none".into(),
            })
            .await
            .map(drop),
        Operation::Dealer => {
            let mut req = tonic::Request::new(futures::stream::iter(Vec::<pb::Frame>::new()));
            req.metadata_mut().insert(
                "x-tessera-worker",
                worker_id.parse().expect("worker id metadata"),
            );
            req.metadata_mut()
                .insert("x-tessera-task", "t-none".parse().expect("task metadata"));
            c.dealer(req).await.map(drop)
        }
        Operation::GetSealingKey => c
            .get_sealing_key(pb::DatasetRef {
                dataset_id: pick("bs", "ps"),
            })
            .await
            .map(drop),
        Operation::CreateDataset => c
            .create_dataset(requests::create_dataset(whose))
            .await
            .map(drop),
        Operation::DataItemLog => c
            .data_item_log(pb::DatasetRef {
                dataset_id: pick("b", "p"),
            })
            .await
            .map(drop),
        Operation::CreateLicence => c.create_licence(requests::create_licence()).await.map(drop),
        Operation::GetLicence => c
            .get_licence(pb::LicenceRef {
                licence_id: f.licence.clone(),
            })
            .await
            .map(drop),
        // Mallory's own buyer party and dataset exist; the licence is u1's.
        Operation::SubmitJob => c.submit_job(requests::submission(f, whose)).await.map(drop),
        Operation::GetJob => c
            .get_job(pb::JobRef {
                job_id: f.job.clone(),
            })
            .await
            .map(drop),
        Operation::WatchJob => c
            .watch_job(pb::JobRef {
                job_id: f.job.clone(),
            })
            .await
            .map(drop),
        Operation::CancelJob => c
            .cancel_job(pb::JobRef {
                job_id: f.job.clone(),
            })
            .await
            .map(drop),
        Operation::Deposit => c.deposit(requests::deposit(whose)).await.map(drop),
        Operation::ListUsage => c.list_usage(empty()).await.map(drop),
        Operation::ListBalances => c.list_balances(empty()).await.map(drop),
        Operation::ListTransfers => c.list_transfers(empty()).await.map(drop),
        Operation::VerifyAudit => c.verify_audit(empty()).await.map(drop),
        Operation::SetCreditLimit => c.set_credit_limit(requests::credit_limit()).await.map(drop),
        Operation::ListBills => c.list_bills(pb::BillQuery::default()).await.map(drop),
        Operation::ListBillLines => c
            .list_bill_lines(pb::BillRef {
                bill_id: f.bill.clone(),
            })
            .await
            .map(drop),
        Operation::CloseDueBills => c.close_due_bills(empty()).await.map(drop),
        Operation::ListStatements => c
            .list_statements(pb::StatementQuery::default())
            .await
            .map(drop),
        // No month is closed: the payout itself is refused, past the gate.
        Operation::Payout => c.payout(requests::payout()).await.map(drop),
        Operation::SetLimit => c.set_limit(requests::limit()).await.map(drop),
        Operation::SetWhitelist => c.set_whitelist(requests::whitelist()).await.map(drop),
        Operation::SetFreeze => c.set_freeze(requests::freeze()).await.map(drop),
        Operation::GetAccountStatus => c
            .get_account_status(pb::AccountQuery {
                customer: pick("", USER),
                product: "psi".into(),
            })
            .await
            .map(drop),
        // The licence is not sold by the month: refused past the gate.
        Operation::Subscribe => c
            .subscribe(requests::subscription(f, whose, 1))
            .await
            .map(drop),
        Operation::Unsubscribe => c
            .unsubscribe(requests::subscription(f, whose, 0))
            .await
            .map(drop),
        Operation::ListJobs => c.list_jobs(pb::JobQuery::default()).await.map(drop),
        Operation::ListDatasets => c.list_datasets(pb::DatasetQuery::default()).await.map(drop),
        Operation::ListLicences => c.list_licences(pb::LicenceQuery::default()).await.map(drop),
        Operation::ListWorkers => c.list_workers(pb::WorkerQuery::default()).await.map(drop),
        Operation::GetOperatorInfo => c.get_operator_info(empty()).await.map(drop),
        Operation::CreateUser => c.create_user(requests::create_user()).await.map(drop),
        Operation::ListUsers => c.list_users(empty()).await.map(drop),
        // Enabling an enabled user changes nothing.
        Operation::EnableUser => c
            .enable_user(pb::UserRef {
                user_id: USER.into(),
            })
            .await
            .map(drop),
        Operation::DisableUser => c
            .disable_user(pb::UserRef {
                user_id: "throwaway".into(),
            })
            .await
            .map(drop),
        Operation::AddGroupMember => c
            .add_group_member(pb::GroupMemberRequest {
                group_id: "team".into(),
                user_id: USER.into(),
            })
            .await
            .map(drop),
        Operation::RemoveGroupMember => c
            .remove_group_member(pb::GroupMemberRequest {
                group_id: "team".into(),
                user_id: USER.into(),
            })
            .await
            .map(drop),
        Operation::CreateToken => c.create_token(requests::create_token()).await.map(drop),
        Operation::ListTokens => c.list_tokens(empty()).await.map(drop),
        Operation::RevokeToken => c
            .revoke_token(pb::TokenRef {
                token_id: f.spare_token_id.clone(),
            })
            .await
            .map(drop),
        Operation::CreateParty => c.create_party(requests::create_party()).await.map(drop),
        Operation::IssueRegistrationToken => c
            .issue_registration_token(requests::registration_token(whose))
            .await
            .map(drop),
        // The trade operations are methods of the `Trade` service (`call_via` calls them).
        Operation::RegisterData
        | Operation::PublishData
        | Operation::PublishDatasets
        | Operation::QueryPublishedData
        | Operation::RevokePublishedData
        | Operation::RegisterDemand
        | Operation::PublishDemand
        | Operation::QueryPublishedDemand
        | Operation::RevokeDemand
        | Operation::QueryMatches
        | Operation::ConfirmDemand
        | Operation::QueryDemandForSettlement
        | Operation::Settlement
        | Operation::QuerySettlement
        | Operation::Deliver
        | Operation::QueryDeliverResult
        | Operation::DeliverDatasets
        | Operation::UpdateLicenses
        | Operation::UploadData
        | Operation::RevokeLicenses => unreachable!("{op:?} is a method of the Trade service"),
    }
}

pub(crate) fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The principals of the cluster, as the table sees them.
fn principal(user: &str, roles: &[Role]) -> Caller {
    Caller::User(Principal {
        user: user.into(),
        roles: Roles::of(roles),
        groups: Default::default(),
        token_expires_at_ms: None,
    })
}

/// The cluster's callers, in the order a wrong-role caller is looked for.
fn callers() -> Vec<(&'static str, Caller)> {
    vec![
        (USER, principal(USER, &[Role::Buyer])),
        (PROVIDER_USER, principal(PROVIDER_USER, &[Role::Provider])),
        ("admin", principal("admin", &[Role::Operator])),
        (
            "worker",
            Caller::Worker {
                party: BUYER.into(),
                worker_id: "w".into(),
            },
        ),
    ]
}

/// The rightful caller of `op` on its own resources, by the table's rule.
fn rightful(op: Operation) -> &'static str {
    match op.rule().who {
        Who::Operator => "admin",
        Who::Roles(r) if r.contains(&Role::Buyer) => USER,
        Who::Roles(_) => PROVIDER_USER,
        Who::OnlyRoles(_) | Who::AnyUser => USER,
        Who::Worker => "worker",
        Who::Registrant => "registrant",
    }
}

/// A caller the table refuses `op` for its role (`None`: every kind of caller passes the gate).
fn wrong_role(op: Operation) -> Option<&'static str> {
    callers()
        .into_iter()
        .find(|(_, caller)| {
            matches!(
                authorize(op, caller, &Target::default()),
                Err(tessera_auth::Denied::Role { .. })
            )
        })
        .map(|(name, _)| name)
}

/// The token of caller `who`.
pub(crate) fn token_of<'a>(c: &'a Cluster, f: &'a Fixture, who: &str) -> &'a str {
    match who {
        USER => c.buyer_token.as_str(),
        PROVIDER_USER => c.provider_token.as_str(),
        "admin" => c.admin_token.as_str(),
        "worker" => f.worker_token.as_str(),
        "registrant" => f.registration.as_str(),
        "mallory" => f.mallory.as_str(),
        other => panic!("no caller {other}"),
    }
}

/// The API an operation is called through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Grpc,
    Rest,
}

/// Calls `op` through `api` with `token` (none: anonymous) on `whose` resources; `Ok`, or the
/// failure as a status (a REST failure's envelope code mapped back through the API code
/// table). `None`: the operation has no REST route (the worker protocol).
async fn call_via(
    c: &Cluster,
    f: &Fixture,
    api: Api,
    token: Option<&str>,
    op: Operation,
    whose: Whose,
) -> Option<Result<(), tonic::Status>> {
    match api {
        Api::Grpc if is_trade(op) => {
            let mut t = trade_as(c, token).await;
            Some(tai(&mut t, op, &trade_request(op, f)).await.map(drop))
        }
        Api::Grpc => {
            let mut client = match token {
                Some(t) => connect_as(c, t).await,
                None => connect_anonymous(c).await,
            };
            Some(call(&mut client, op, f, whose).await)
        }
        Api::Rest => crate::rest::call(c, f, token, op, whose),
    }
}

pub(crate) async fn fixture(c: &Cluster) -> Fixture {
    c.dataset(&c.provider, "p", "k", &keys("k", 0..50)).await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 25..75)).await;
    // Sealed datasets (`.tseal`), whose keys only their owners get.
    for (client, id, party) in [
        (c.client().await, "bs", crate::harness::BUYER),
        (c.provider_client().await, "ps", crate::harness::PROVIDER),
    ] {
        let mut client = client;
        client
            .create_dataset(pb::CreateDatasetRequest {
                dataset_id: id.into(),
                owner_party: party.into(),
                location: format!("{id}.tseal"),
                description: String::new(),
                declared_rows: None,
            })
            .await
            .expect("sealed dataset");
    }
    c.fund(10_000_000, "fund").await;
    let licence = c.licence("p", None).await;
    let job = c
        .client()
        .await
        .submit_job(Cluster::job(&licence, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    assert_eq!(c.wait(&job).await.state_text(), "succeeded");
    let mut admin = c.admin().await;
    let bill = admin
        .list_bills(pb::BillQuery::default())
        .await
        .expect("bills")
        .into_inner()
        .bills
        .into_iter()
        .find(|b| b.customer == USER)
        .expect("u1's bill")
        .bill_id;
    for (user, roles) in [
        ("mallory", "provider,buyer,developer"),
        ("throwaway", "buyer"),
    ] {
        admin
            .create_user(pb::CreateUserRequest {
                user_id: user.into(),
                roles: roles.into(),
            })
            .await
            .expect("user");
    }
    let mallory = admin
        .create_token(pb::CreateTokenRequest {
            user_id: "mallory".into(),
            label: "m".into(),
            ttl_ms: 0,
        })
        .await
        .expect("token")
        .into_inner()
        .secret_token;
    let mut m = connect_as(c, &mallory).await;
    m.create_party(pb::CreatePartyRequest {
        party_id: "mal".into(),
        owner_user_id: "mallory".into(),
    })
    .await
    .expect("mallory's party");
    m.create_dataset(pb::CreateDatasetRequest {
        dataset_id: "mal-ds".into(),
        owner_party: "mal".into(),
        location: "m.csv".into(),
        description: String::new(),
        declared_rows: Some(1),
    })
    .await
    .expect("mallory's dataset");
    let spare_token_id = admin
        .create_token(pb::CreateTokenRequest {
            user_id: USER.into(),
            label: "spare".into(),
            ttl_ms: 0,
        })
        .await
        .expect("token")
        .into_inner()
        .info
        .expect("info")
        .token_id;
    let registration = c
        .client()
        .await
        .issue_registration_token(pb::RegistrationTokenRequest {
            party_id: BUYER.into(),
            ttl_ms: 0,
        })
        .await
        .expect("registration token")
        .into_inner()
        .secret_token;
    // A worker of `buy` registered here, never connected (so never placed on a job).
    let reg = connect_as(c, &registration)
        .await
        .register_worker(pb::RegisterWorkerRequest {
            worker_id: String::new(),
            attributes: worker_attrs(BUYER),
            peer_addr: "127.0.0.1:1".into(),
            csr_pem: String::new(),
        })
        .await
        .expect("register")
        .into_inner();
    assert!(reg.worker_token.starts_with("tsw_"));
    Fixture {
        licence,
        job,
        bill,
        worker_id: reg.worker_id,
        worker_token: reg.worker_token,
        registration,
        spare_token_id,
        mallory,
        trade: trade_fixture(c).await,
    }
}

/// A buyer X25519 key pair for the trade fixture (the private key opens sealed delivery
/// keys).
pub(crate) fn buyer_keys() -> (
    tessera_trade::seal::BuyerPrivateKey,
    tessera_trade::seal::BuyerPublicKey,
) {
    tessera_trade::seal::BuyerPrivateKey::derive(&[42; 32])
}

/// A `/registerData` body for dataset `data_id` of the provider party.
pub(crate) fn registration(data_id: &str) -> serde_json::Value {
    serde_json::json!({
        "owner": PROVIDER, "key_words": ["credit", "risk"], "dataID": data_id,
        "description": "customer records", "data_type": "dataset", "data_format": "csv",
        "data_size": 1.5, "data_category": ["finance"], "collection_time": "2026-10-01 08:00:00",
        "country": "CN", "resource_url": format!("tessera://prov/{data_id}"),
        "ownership_confirm": "https://prov.example/ownership", "public_key": "provider-key",
    })
}

/// A `/registerDemand` body of u1 with its public key.
pub(crate) fn demand() -> serde_json::Value {
    serde_json::json!({
        "demander": USER, "data_category": ["finance"], "key_words": ["credit"],
        "data_type": "dataset", "public_key": buyer_keys().1.to_text(),
    })
}

async fn trade_fixture(c: &Cluster) -> TradeFixture {
    use Operation as O;
    use serde_json::json;
    c.dataset(&c.provider, "pc", "k", &keys("k", 0..20)).await;
    let mut pu = trade_as(c, Some(&c.provider_token)).await;
    let mut u1 = trade_as(c, Some(&c.buyer_token)).await;
    let reg_of = |v: serde_json::Value| v["registrationID"].as_str().expect("id").to_owned();
    let reg = reg_of(
        tai(&mut pu, O::RegisterData, &registration("p"))
            .await
            .expect("register"),
    );
    let reg_revoke = reg_of(
        tai(&mut pu, O::RegisterData, &registration("p"))
            .await
            .expect("register"),
    );
    for (r, free) in [(&reg, false), (&reg_revoke, true)] {
        let mut body = json!({"owner": PROVIDER, "registrationID": r, "free": free});
        if !free {
            body["price"] = json!(1.5);
        }
        tai(&mut pu, O::PublishData, &body).await.expect("publish");
    }
    tai(
        &mut pu,
        O::UploadData,
        &json!({"registrationID": reg, "data_file": "aWQsYWdlCjEsMzAK"}),
    )
    .await
    .expect("upload");
    tai(&mut pu, O::PublishDatasets, &controlled_publication())
        .await
        .expect("publish controlled");
    let mut demands = Vec::new();
    for _ in 0..5 {
        let id = tai(&mut u1, O::RegisterDemand, &demand())
            .await
            .expect("demand")["demandID"]
            .as_str()
            .expect("id")
            .to_owned();
        tai(
            &mut u1,
            O::PublishDemand,
            &json!({"demander": USER, "demandID": id}),
        )
        .await
        .expect("publish demand");
        demands.push(id);
    }
    let confirm = |demand: &str, reg: &str, data: Option<&str>| {
        let mut b = json!({"demander": USER, "demandID": demand, "registrationID": reg});
        if let Some(d) = data {
            b["dataID"] = json!(d);
        }
        b
    };
    let c1 = tai(&mut u1, O::ConfirmDemand, &confirm(&demands[0], &reg, None))
        .await
        .expect("confirm")["confirmID"]
        .as_str()
        .expect("id")
        .to_owned();
    let c2 = tai(
        &mut u1,
        O::ConfirmDemand,
        &confirm(
            &demands[1],
            tessera_trade::CONTROLLED_REGISTRATION_ID,
            Some("pc"),
        ),
    )
    .await
    .expect("confirm controlled")["confirmID"]
        .as_str()
        .expect("id")
        .to_owned();
    let c3 = tai(
        &mut u1,
        O::ConfirmDemand,
        &confirm(
            &demands[4],
            tessera_trade::CONTROLLED_REGISTRATION_ID,
            Some("pc"),
        ),
    )
    .await
    .expect("confirm controlled")["confirmID"]
        .as_str()
        .expect("id")
        .to_owned();
    let s3 = tai(&mut u1, O::Settlement, &json!({"confirmID": c3}))
        .await
        .expect("settle");
    let s1 = tai(&mut u1, O::Settlement, &json!({"confirmID": c1}))
        .await
        .expect("settle");
    let s2 = tai(&mut u1, O::Settlement, &json!({"confirmID": c2}))
        .await
        .expect("settle");
    tai(&mut u1, O::Deliver, &json!({"licenses": s1["licenses"]}))
        .await
        .expect("deliver");
    TradeFixture {
        reg,
        reg_revoke,
        demand: demands[0].clone(),
        demand_confirm: demands[2].clone(),
        demand_revoke: demands[3].clone(),
        confirm: c1,
        licence: s1["licenses"].clone(),
        controlled_licence: s2["licenses"].clone(),
        licence_revoke: s3["licenses"]["licensesID"]
            .as_str()
            .expect("id")
            .to_owned(),
    }
}

/// The `/publishDatasets` body of the controlled dataset `pc`.
pub(crate) fn controlled_publication() -> serde_json::Value {
    serde_json::json!({
        "owner": tessera_trade::CONTROLLED_OWNER, "dataID": "pc",
        "registrationID": tessera_trade::CONTROLLED_REGISTRATION_ID,
        "protocol": "tessera-usage-v1", "key_words": ["credit"], "free": true,
    })
}

/// The request of trade operation `op` on the fixture's records: the same for every caller
/// (the rightful one owns them; mallory does not).
pub(crate) fn trade_request(op: Operation, f: &Fixture) -> serde_json::Value {
    use Operation as O;
    use serde_json::json;
    let t = &f.trade;
    match op {
        O::RegisterData => registration("p"),
        O::PublishData => {
            json!({"owner": PROVIDER, "registrationID": t.reg, "free": false, "price": 1.5})
        }
        O::PublishDatasets => controlled_publication(),
        O::QueryPublishedData => json!({"registrationID": t.reg}),
        O::RevokePublishedData => json!({"registrationID": t.reg_revoke}),
        // Not `reg`: a sold registration's file cannot be replaced.
        O::UploadData => json!({"registrationID": t.reg_revoke, "data_file": "aWQsYWdlCjEsMzAK"}),
        O::RegisterDemand => demand(),
        O::PublishDemand => json!({"demander": USER, "demandID": t.demand}),
        O::QueryPublishedDemand | O::QueryMatches => json!({"demandID": t.demand}),
        O::RevokeDemand => json!({"demander": USER, "demandID": t.demand_revoke}),
        O::ConfirmDemand => {
            json!({"demander": USER, "demandID": t.demand_confirm, "registrationID": t.reg})
        }
        O::QueryDemandForSettlement
        | O::Settlement
        | O::QuerySettlement
        | O::QueryDeliverResult => {
            json!({"confirmID": t.confirm})
        }
        O::Deliver => json!({"licenses": t.licence}),
        O::DeliverDatasets => json!({
            "licenses": t.controlled_licence, "dataID": "pc", "policyName": "p",
            "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
            "useScenes": [{"useSence": "psi", "counts": 5}],
        }),
        O::UpdateLicenses => json!({"owner": PROVIDER, "dataID": "p",
            "licensesID": t.licence["licensesID"]}),
        O::RevokeLicenses => json!({"owner": PROVIDER, "licensesID": t.licence_revoke,
            "reason": "authz table"}),
        other => panic!("{other:?} is not a trade operation"),
    }
}

fn denied(r: &Result<(), tonic::Status>) -> bool {
    matches!(r, Err(s) if s.code() == Code::PermissionDenied)
}

fn unauthenticated(r: &Result<(), tonic::Status>) -> bool {
    matches!(r, Err(s) if s.code() == Code::Unauthenticated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_checks_the_token_the_role_and_the_owner() {
    every_operation_checks_the_token_the_role_and_the_owner(Api::Grpc).await;
}

/// The same for every REST route, through HTTPS: the same table, the same answers (the
/// envelope's code is the API code of the gRPC status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_route_checks_the_token_the_role_and_the_owner() {
    every_operation_checks_the_token_the_role_and_the_owner(Api::Rest).await;
}

async fn every_operation_checks_the_token_the_role_and_the_owner(api: Api) {
    let c = Cluster::start(10_000);
    let f = fixture(&c).await;
    let mut admin = c.admin().await;
    // Only the worker protocol has no REST route.
    for &op in Operation::ALL {
        let worker_side = matches!(op.rule().who, Who::Worker | Who::Registrant);
        assert_eq!(
            tessera_gateway::rest::route_of(op).is_none(),
            worker_side,
            "{op:?}"
        );
    }

    // No token, a malformed one, a revoked one, an expired one: UNAUTHENTICATED everywhere.
    let revoked = admin
        .create_token(pb::CreateTokenRequest {
            user_id: USER.into(),
            label: "revoked".into(),
            ttl_ms: 0,
        })
        .await
        .expect("token")
        .into_inner();
    admin
        .revoke_token(pb::TokenRef {
            token_id: revoked.info.expect("info").token_id,
        })
        .await
        .expect("revoke");
    let expired = admin
        .create_token(pb::CreateTokenRequest {
            user_id: USER.into(),
            label: "expired".into(),
            ttl_ms: 1,
        })
        .await
        .expect("token")
        .into_inner()
        .secret_token;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let bad_callers = [
        ("none", None),
        ("revoked", Some(revoked.secret_token.as_str())),
        ("expired", Some(expired.as_str())),
        ("malformed", Some("tsk_0123456789abcdef_not-a-secret")),
    ];
    for &op in Operation::ALL {
        for (name, token) in bad_callers {
            let Some(r) = call_via(&c, &f, api, token, op, Whose::Own).await else {
                continue;
            };
            assert!(unauthenticated(&r), "{op:?} with {name} token: {r:?}");
        }
    }

    // The wrong role: PERMISSION_DENIED, whatever the resource.
    for &op in Operation::ALL {
        let Some(who) = wrong_role(op) else {
            panic!("{op:?}: every caller passes the role gate");
        };
        let Some(r) = call_via(&c, &f, api, Some(token_of(&c, &f, who)), op, Whose::Own).await
        else {
            continue;
        };
        assert!(denied(&r), "{op:?} by {who} (wrong role): {r:?}");
    }

    // Someone else's resource: denied (or, for listings, none of their rows; a token of
    // someone else's is "not found", so token ids cannot be probed).
    for &op in Operation::ALL {
        let rule = op.rule();
        let who = match rule.who {
            Who::Operator => continue, // owns nothing: the wrong-role case covers it
            Who::Worker | Who::Registrant => rightful(op),
            _ => "mallory",
        };
        let Some(r) = call_via(&c, &f, api, Some(token_of(&c, &f, who)), op, Whose::Others).await
        else {
            continue;
        };
        match rule.scope {
            Scope::Global => assert!(r.is_ok(), "{op:?}: {r:?}"),
            Scope::OwnRows => assert!(r.is_ok(), "{op:?}: {r:?}"),
            // Records named by id that the caller may not even see answer as unknown ids
            // do, so others' ids cannot be probed.
            _ if matches!(
                op,
                Operation::RevokeToken
                    | Operation::GetJob
                    | Operation::WatchJob
                    | Operation::CancelJob
                    | Operation::GetLicence
                    | Operation::ListBillLines
                    | Operation::DataItemLog
                    | Operation::GetSealingKey
                    | Operation::QueryDemandForSettlement
                    | Operation::Settlement
                    | Operation::QuerySettlement
                    | Operation::QueryDeliverResult
            ) =>
            {
                assert!(
                    matches!(&r, Err(s) if s.code() == Code::NotFound),
                    "{op:?}: {r:?}"
                )
            }
            _ => assert!(denied(&r), "{op:?} on someone else's: {r:?}"),
        }
    }
    // A term on a licence one may not see is refused as an unknown licence: neither its
    // licensee nor its prices show.
    for op in [Operation::Subscribe, Operation::Unsubscribe] {
        let r = call_via(&c, &f, api, Some(&f.mallory), op, Whose::Own)
            .await
            .expect("a route");
        assert!(
            matches!(&r, Err(s) if s.code() == Code::NotFound && !s.message().contains(USER)),
            "{op:?}: {r:?}"
        );
    }
    let mut mallory = connect_as(&c, &f.mallory).await;
    // Mallory's listings hold nothing of u1's or pu's.
    let jobs = mallory
        .list_jobs(pb::JobQuery::default())
        .await
        .expect("jobs")
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "{jobs:?}");
    let bills = mallory
        .list_bills(pb::BillQuery {
            customer: USER.into(),
            period: String::new(),
        })
        .await
        .expect("bills")
        .into_inner()
        .bills;
    assert!(bills.is_empty(), "{bills:?}");
    let balances = mallory
        .list_balances(pb::ListRequest {})
        .await
        .expect("balances")
        .into_inner()
        .balances;
    assert!(balances.is_empty(), "{balances:?}");
    let licences = mallory
        .list_licences(pb::LicenceQuery::default())
        .await
        .expect("licences")
        .into_inner()
        .licences;
    assert!(licences.is_empty(), "{licences:?}");
    let datasets = mallory
        .list_datasets(pb::DatasetQuery::default())
        .await
        .expect("datasets")
        .into_inner()
        .datasets;
    assert_eq!(
        datasets
            .iter()
            .map(|d| d.dataset_id.as_str())
            .collect::<Vec<_>>(),
        ["mal-ds"]
    );
    for (what, n) in [
        (
            "usage",
            mallory
                .list_usage(pb::ListRequest {})
                .await
                .expect("usage")
                .into_inner()
                .events
                .len(),
        ),
        (
            "transfers",
            mallory
                .list_transfers(pb::ListRequest {})
                .await
                .expect("transfers")
                .into_inner()
                .transfers
                .len(),
        ),
        (
            "statements",
            mallory
                .list_statements(pb::StatementQuery::default())
                .await
                .expect("statements")
                .into_inner()
                .statements
                .len(),
        ),
        (
            "workers",
            mallory
                .list_workers(pb::WorkerQuery::default())
                .await
                .expect("workers")
                .into_inner()
                .workers
                .len(),
        ),
    ] {
        assert_eq!(n, 0, "mallory sees {n} {what}");
    }

    // The rightful caller passes every gate. Some calls then fail for reasons of their own
    // (no closed month to pay out, a licence not sold by the month, no such task): never for
    // want of a token or a permission.
    for &op in Operation::ALL {
        let who = rightful(op);
        let Some(r) = call_via(&c, &f, api, Some(token_of(&c, &f, who)), op, Whose::Own).await
        else {
            continue;
        };
        let gate = unauthenticated(&r) || denied(&r);
        assert!(!gate, "{op:?} by {who}: {r:?}");
        let expected_refusal = matches!(
            op,
            Operation::Payout
                | Operation::Subscribe
                | Operation::Unsubscribe
                | Operation::ReportProgress
                | Operation::ReportResult
                | Operation::ReportDelivered
                | Operation::TeeAttest
                | Operation::ReleaseDatasetKey
                | Operation::Dealer
        );
        assert!(r.is_ok() || expected_refusal, "{op:?} by {who}: {r:?}");
    }
    // The operator acts for anyone but submits for no one.
    let r = call_via(
        &c,
        &f,
        api,
        Some(&c.admin_token),
        Operation::SubmitJob,
        Whose::Own,
    )
    .await
    .expect("a route");
    assert!(denied(&r), "{r:?}");

    // The worker credential and the registration token are stored as hashes only: their
    // secrets are nowhere in the database or its write-ahead log (the audit chain included).
    let data = c.dir.path().join("operator");
    let db = std::fs::read(data.join("tessera.db")).expect("db");
    let wal = std::fs::read(data.join("tessera.db-wal")).unwrap_or_default();
    for token in [&f.worker_token, &f.registration, &f.mallory] {
        let secret = token.rsplit('_').next().expect("secret").as_bytes();
        assert_eq!(secret.len(), 64);
        assert!(
            !db.windows(64).any(|w| w == secret) && !wal.windows(64).any(|w| w == secret),
            "a secret is stored in clear"
        );
    }
}

/// Runs `tessera worker` for `party` with `registration` (a file path, or none) and the
/// operator's key, and returns its exit status and stderr (it must not keep running).
fn worker_exits(
    c: &Cluster,
    party: &str,
    registration: Option<&std::path::Path>,
) -> (Option<i32>, String) {
    let dir = c
        .dir
        .path()
        .join(format!("refused-{party}-{}", rand_suffix()));
    std::fs::create_dir_all(dir.join("datasets")).expect("mkdir");
    let mut cmd = std::process::Command::new(crate::harness::BIN);
    cmd.args(["worker", "--operator", &c.url, "--party", party])
        .args(["--ca-file", &c.ca_file])
        .arg("--datasets")
        .arg(dir.join("datasets"))
        .arg("--outputs")
        .arg(dir.join("outputs"))
        .arg("--operator-key-file")
        .arg(c.dir.path().join("operator").join("operator.pub"))
        .env_remove("TESSERA_REGISTRATION_TOKEN")
        .env("RUST_LOG", "warn");
    if let Some(path) = registration {
        cmd.arg("--registration-token-file").arg(path);
    }
    let out = cmd.output().expect("run worker");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_register_only_with_their_partys_token_and_keep_their_ids() {
    let c = Cluster::start(10_000);
    // No registration token: the worker refuses to start, naming what it needs.
    let (code, err) = worker_exits(&c, BUYER, None);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("registration token is required"), "{err}");
    // Another party's token: the operator refuses it.
    let buy_token = crate::harness::registration_token_file(c.dir.path(), BUYER);
    let (code, err) = worker_exits(&c, PROVIDER, Some(&buy_token));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("PERMISSION_DENIED") || err.contains("another party"),
        "{err}"
    );
    // A token that is no token.
    let junk = c.dir.path().join("junk.token");
    std::fs::write(&junk, "tsr_0123456789abcdef_nothex").expect("write");
    let (code, err) = worker_exits(&c, BUYER, Some(&junk));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a Tessera registration token"), "{err}");
    // Without the operator's key a worker does not start either.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["worker", "--operator", &c.url, "--party", BUYER])
        .args(["--ca-file", &c.ca_file])
        .arg("--datasets")
        .arg(&c.buyer.datasets)
        .arg("--outputs")
        .arg(&c.buyer.outputs)
        .arg("--registration-token-file")
        .arg(&buy_token)
        .env_remove("TESSERA_OPERATOR_KEY")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("public key is required"), "{err}");

    // A live worker's id cannot be taken over, not even with its own party's token; and
    // another party's worker id is never registered to this party.
    let token = std::fs::read_to_string(&buy_token).expect("token");
    let mut registrant = connect_as(&c, &token).await;
    for (id, party, code) in [
        (&c.buyer.worker_id, BUYER, Code::AlreadyExists),
        (&c.provider.worker_id, BUYER, Code::PermissionDenied),
    ] {
        let e = registrant
            .register_worker(pb::RegisterWorkerRequest {
                worker_id: id.clone(),
                attributes: worker_attrs(party),
                peer_addr: "127.0.0.1:1".into(),
                csr_pem: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "{id}: {e:?}");
    }
    // The buyer's worker still runs jobs under its id.
    c.dataset(&c.provider, "p", "k", &keys("k", 0..20)).await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 10..30)).await;
    c.fund(1_000_000, "f").await;
    let lic = c.licence("p", None).await;
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{}", j.error);
    assert_eq!(j.result_size, Some(10));

    // An anonymous call (the junk token above never left the worker).
    let e = connect_anonymous(&c)
        .await
        .list_jobs(pb::JobQuery::default())
        .await
        .expect_err("anonymous");
    assert_eq!(e.code(), Code::Unauthenticated);
    // What happened shows in /metrics, on the gRPC port, in the Prometheus text format.
    let text = http_get(&c, "/metrics");
    for line in [
        "tessera_jobs_admitted_total{scene=\"psi\"} 1",
        "tessera_job_ends_total{scene=\"psi\",state=\"succeeded\"} 1",
        "tessera_jobs{state=\"succeeded\"} 1",
        "tessera_workers_live{party=\"buy\"} 1",
        "tessera_workers_live{party=\"prov\"} 1",
        "tessera_auth_failures_total{kind=\"unauthenticated\"} 1",
        "tessera_ledger_transfers{kind=\"posted\"}",
        "tessera_engine_bytes_total{engine=\"psi\",direction=\"sent\"}",
        "tessera_engine_rounds_total{engine=\"psi\"}",
        "tessera_job_duration_seconds_count{scene=\"psi\",state=\"succeeded\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    // Denials counted: the registrations above were refused for another party's worker id
    // (the table allowed them; the scheduler refused) and by the table for another party.
    assert!(
        text.contains("tessera_auth_failures_total{kind=\"permission_denied\"}"),
        "{text}"
    );
}

/// `GET path` over HTTPS (HTTP/1.1 or 2, as negotiated) on the operator's port; the body.
fn http_get(c: &Cluster, path: &str) -> String {
    let mut r = c
        .https()
        .get(format!("{}{path}", c.url))
        .call()
        .expect("GET");
    assert_eq!(r.status(), 200);
    r.body_mut().read_to_string().expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_group_claim_grants_nothing_and_a_recorded_group_does() {
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "p", "k", &keys("k", 0..20)).await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 10..30)).await;
    c.fund(1_000_000, "f").await;
    let mut admin = c.admin().await;
    // The group needs a member before a licence can name it.
    admin
        .create_user(pb::CreateUserRequest {
            user_id: "ana".into(),
            roles: "buyer".into(),
        })
        .await
        .expect("user");
    admin
        .add_group_member(pb::GroupMemberRequest {
            group_id: "analysts".into(),
            user_id: "ana".into(),
        })
        .await
        .expect("group");
    let lic = c
        .provider_client()
        .await
        .create_licence(pb::CreateLicenceRequest {
            licensor: PROVIDER.into(),
            licensee: "analysts".into(),
            dataset_id: "p".into(),
            policy_json:
                r#"{"policyName":"g","relUsers":[{"userId":"analysts","userName":"A","isGroup":1}],
                "useScenes":[{"useSence":"psi","visitArea":["r1"],"cpCenter":["c1"]}]}"#
                    .into(),
            price_per_job_micros: 1_000,
            price_per_1k_rows_micros: 0,
            operator_share_bps: 0,
            monthly_price_micros: 0,
        })
        .await
        .expect("licence")
        .into_inner()
        .licence_id;
    let mut buyer = c.client().await;
    // Claiming the group in the request: refused outright.
    let forged = pb::SubmitJobRequest {
        user_groups: "analysts".into(),
        ..Cluster::job(&lic, "b", "size", "")
    };
    let e = buyer.submit_job(forged).await.expect_err("forged");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Without the claim, u1 is not in the group: denied.
    let e = buyer
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect_err("not a member");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Nor can a submission name another user.
    let e = buyer
        .submit_job(pb::SubmitJobRequest {
            user: "ana".into(),
            ..Cluster::job(&lic, "b", "size", "")
        })
        .await
        .expect_err("as someone else");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Once the operator records u1 in the group, the same request is admitted and runs.
    admin
        .add_group_member(pb::GroupMemberRequest {
            group_id: "analysts".into(),
            user_id: USER.into(),
        })
        .await
        .expect("group");
    let j = buyer
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("member")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{}", j.error);
    assert_eq!(j.result_size, Some(10));
}

/// Every link to the operator is TLS checked against the operator's CA: a client or worker
/// trusting another CA never gets as far as sending its token, a plain `http://` URL is
/// refused unless the insecure option says so, and the operator answers nobody in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_is_reached_only_over_tls_checked_against_its_ca() {
    let c = Cluster::start(10_000);
    let cli = |args: &[&str]| {
        std::process::Command::new(crate::harness::BIN)
            .args(args)
            .env("TESSERA_TOKEN", &c.admin_token)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tessera")
    };
    let ok = cli(&[
        "user",
        "list",
        "--operator",
        &c.url,
        "--ca-file",
        &c.ca_file,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Another CA (an impostor's operator, or a stale file): the handshake fails, and the
    // message says which file to use; exit 1 (waiting will not help), not 6.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("seconds");
    let rogue = tessera_pki::CertificateAuthority::generate("rogue", now).expect("CA");
    let rogue_file = c.dir.path().join("rogue-ca.pem");
    std::fs::write(&rogue_file, rogue.cert_pem()).expect("write");
    let rogue_path = rogue_file.to_str().expect("utf8");
    let out = cli(&[
        "user",
        "list",
        "--operator",
        &c.url,
        "--ca-file",
        rogue_path,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not chain to the CA") && err.contains("ca.pem"),
        "{err}"
    );
    // A listener that accepts and never answers the handshake: given up on at the deadline,
    // exit 6.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("https://{}", silent.local_addr().expect("addr"));
    let out = cli(&[
        "user",
        "list",
        "--operator",
        &silent_url,
        "--ca-file",
        &c.ca_file,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("did not complete a connection"), "{err}");
    // A worker facing the same silence gives up within its start window, saying so.
    let dir = c.dir.path().join("silent-worker");
    std::fs::create_dir_all(dir.join("datasets")).expect("mkdir");
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["worker", "--operator", &silent_url, "--party", BUYER])
        .args(["--ca-file", &c.ca_file])
        .arg("--datasets")
        .arg(dir.join("datasets"))
        .arg("--outputs")
        .arg(dir.join("outputs"))
        .arg("--operator-key-file")
        .arg(c.dir.path().join("operator").join("operator.pub"))
        .arg("--registration-token-file")
        .arg(crate::harness::registration_token_file(c.dir.path(), BUYER))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not complete a connection"), "{err}");
    drop(silent);

    // No CA at all for an https URL, and a plain URL without the insecure option: refused
    // before any connection, each saying what to do.
    let out = cli(&["user", "list", "--operator", &c.url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--ca-file"), "{err}");
    let plain = c.url.replace("https://", "http://");
    let out = cli(&["user", "list", "--operator", &plain]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("plain TCP"), "{err}");
    // Even with the insecure option, a TLS operator does not answer in clear.
    let out = cli(&["user", "list", "--operator", &plain, "--insecure-plaintext"]);
    assert!(!out.status.success(), "a TLS port answered plain gRPC");

    // A worker trusting another CA does not register (its token never leaves it).
    let dir = c.dir.path().join("rogue-worker");
    std::fs::create_dir_all(dir.join("datasets")).expect("mkdir");
    let token = crate::harness::registration_token_file(c.dir.path(), BUYER);
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["worker", "--operator", &c.url, "--party", BUYER])
        .args(["--ca-file", rogue_path])
        .arg("--datasets")
        .arg(dir.join("datasets"))
        .arg("--outputs")
        .arg(dir.join("outputs"))
        .arg("--operator-key-file")
        .arg(c.dir.path().join("operator").join("operator.pub"))
        .arg("--registration-token-file")
        .arg(&token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not chain to the CA"), "{err}");
    // ... and one without any CA refuses to start, naming the option.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["worker", "--operator", &c.url, "--party", BUYER])
        .arg("--datasets")
        .arg(dir.join("datasets"))
        .arg("--outputs")
        .arg(dir.join("outputs"))
        .arg("--operator-key-file")
        .arg(c.dir.path().join("operator").join("operator.pub"))
        .arg("--registration-token-file")
        .arg(&token)
        .env_remove("TESSERA_CA_FILE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--ca-file"), "{err}");
    // No registration happened: the party's only workers are the cluster's.
    let workers = c
        .admin()
        .await
        .list_workers(pb::WorkerQuery {
            party: BUYER.into(),
            ..Default::default()
        })
        .await
        .expect("workers")
        .into_inner()
        .workers;
    assert_eq!(workers.len(), 1, "{workers:?}");
}

/// `serve --insecure-plaintext` with clients and workers that say `--insecure-plaintext`
/// too: the whole flow still works over plain TCP, for tests.
#[test]
fn the_insecure_plaintext_option_serves_in_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("op");
    let serve = crate::harness::Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("utf8"),
        "--insecure-plaintext",
    ]);
    let url = serve
        .first_line
        .trim()
        .strip_prefix("operator listening on ")
        .expect("banner")
        .to_owned();
    assert!(url.starts_with("http://"), "{url}");
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["user", "list", "--operator", &url, "--insecure-plaintext"])
        .arg("--token-file")
        .arg(data.join("admin.token"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin"));
}

/// Running workers renew their peer-link certificates (here every second) with the worker
/// credential, without re-registering (which would fail their tasks), and jobs keep forming
/// links with the renewed certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_workers_renew_their_certificates_and_keep_working() {
    let c = Cluster::start_with(10_000, &["--cert-renew-secs", "1"]);
    c.dataset(&c.provider, "p", "k", &keys("k", 0..30)).await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 20..40)).await;
    c.fund(10_000_000, "fund").await;
    let lic = c.licence("p", None).await;
    let renewals = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("tessera_certificates_issued_total{kind=\"renewal\"} "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while renewals(&http_get(&c, "/metrics")) < 4 {
        assert!(std::time::Instant::now() < deadline, "no renewals seen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..2 {
        let j = c
            .client()
            .await
            .submit_job(Cluster::job(&lic, "b", "size", ""))
            .await
            .expect("submit")
            .into_inner();
        let j = c.wait(&j.job_id).await;
        assert_eq!(j.state_text(), "succeeded", "job {i}: {}", j.error);
        assert_eq!(j.result_size, Some(10));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Both workers are the ones that registered at start: renewal never re-registers.
    let text = http_get(&c, "/metrics");
    assert!(
        text.contains("tessera_certificates_issued_total{kind=\"registration\"} 2"),
        "{text}"
    );
}
