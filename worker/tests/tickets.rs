//! A real worker against a scripted operator: tasks whose tickets are forged, replayed,
//! expired, misaddressed or moved to another task are refused and reported as ticket errors;
//! a valid ticket is accepted (the task then runs and fails on its missing dataset).

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use tessera_core::ticket::{TicketBody, TicketSigner, task_digest};
use tessera_core::{KeyCase, ManualClock, PsiMode, TaskRole, TaskSpec, WorkerAttributes};
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_server::{Operator, OperatorServer};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

struct ScriptedOperator {
    key_hex: String,
    tasks: Mutex<Option<mpsc::Receiver<Result<pb::TaskEnvelope, Status>>>>,
    results: mpsc::Sender<pb::TaskResult>,
}

const REGISTRATION_TOKEN: &str =
    "tsr_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000001";
const WORKER_TOKEN: &str =
    "tsw_fedcba9876543210_0000000000000000000000000000000000000000000000000000000000000002";

fn token_of<T>(r: &Request<T>) -> Option<&str> {
    r.metadata()
        .get(tessera_proto::TOKEN_METADATA)
        .and_then(|v| v.to_str().ok())
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not scripted"))
}

#[tonic::async_trait]
impl Operator for ScriptedOperator {
    async fn register_worker(
        &self,
        r: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        // The worker presents its party's registration token, and only at registration.
        if token_of(&r) != Some(REGISTRATION_TOKEN) {
            return Err(Status::unauthenticated("no registration token"));
        }
        let id = r.into_inner().worker_id;
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: id,
            operator_key_hex: self.key_hex.clone(),
            heartbeat_interval_ms: 60_000,
            worker_token: WORKER_TOKEN.into(),
            ..pb::RegisterWorkerResponse::default()
        }))
    }
    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    async fn renew_certificate(
        &self,
        _: Request<pb::CertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        Err(Status::unimplemented("this scripted operator runs no CA"))
    }
    type DealerStream = Stream<pb::Frame>;
    async fn dealer(
        &self,
        _: Request<tonic::Streaming<pb::Frame>>,
    ) -> Result<Response<Self::DealerStream>, Status> {
        unimplemented()
    }
    async fn tee_challenge(
        &self,
        _: Request<pb::TeeChallengeRequest>,
    ) -> Result<Response<pb::TeeChallengeResponse>, Status> {
        unimplemented()
    }
    async fn tee_attest(
        &self,
        _: Request<pb::TeeAttestRequest>,
    ) -> Result<Response<pb::TeeAttestResponse>, Status> {
        unimplemented()
    }
    async fn release_dataset_key(
        &self,
        _: Request<pb::KeyReleaseRequest>,
    ) -> Result<Response<pb::ReleasedDatasetKey>, Status> {
        unimplemented()
    }
    async fn get_sealing_key(
        &self,
        _: Request<pb::DatasetRef>,
    ) -> Result<Response<pb::SealingKey>, Status> {
        unimplemented()
    }
    type PullTasksStream = Stream<pb::TaskEnvelope>;
    async fn pull_tasks(
        &self,
        r: Request<pb::PullTasksRequest>,
    ) -> Result<Response<Self::PullTasksStream>, Status> {
        // Every later call carries the credential issued at registration.
        if token_of(&r) != Some(WORKER_TOKEN) {
            return Err(Status::unauthenticated("no worker credential"));
        }
        let rx = self
            .tasks
            .lock()
            .await
            .take()
            .ok_or_else(|| Status::already_exists("one stream"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    async fn report_progress(
        &self,
        _: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        Ok(Response::new(pb::Ack::default()))
    }
    async fn report_delivered(
        &self,
        _: Request<pb::DeliveryReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        Ok(Response::new(pb::Ack::default()))
    }
    async fn report_result(&self, r: Request<pb::TaskResult>) -> Result<Response<pb::Ack>, Status> {
        if token_of(&r) != Some(WORKER_TOKEN) {
            return Err(Status::unauthenticated("no worker credential"));
        }
        let _ = self.results.send(r.into_inner()).await;
        Ok(Response::new(pb::Ack::default()))
    }
    async fn create_dataset(
        &self,
        _: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        unimplemented()
    }
    async fn create_licence(
        &self,
        _: Request<pb::CreateLicenceRequest>,
    ) -> Result<Response<pb::Licence>, Status> {
        unimplemented()
    }
    async fn data_item_log(
        &self,
        _: Request<pb::DatasetRef>,
    ) -> Result<Response<pb::OperationLog>, Status> {
        unimplemented()
    }
    async fn get_licence(
        &self,
        _: Request<pb::LicenceRef>,
    ) -> Result<Response<pb::Licence>, Status> {
        unimplemented()
    }
    async fn submit_job(
        &self,
        _: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        unimplemented()
    }
    async fn get_job(&self, _: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        unimplemented()
    }
    type WatchJobStream = Stream<pb::Job>;
    async fn watch_job(
        &self,
        _: Request<pb::JobRef>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        unimplemented()
    }
    async fn cancel_job(&self, _: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        unimplemented()
    }
    async fn deposit(&self, _: Request<pb::DepositRequest>) -> Result<Response<pb::Ack>, Status> {
        unimplemented()
    }
    async fn list_usage(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::UsageList>, Status> {
        unimplemented()
    }
    async fn list_balances(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::BalanceList>, Status> {
        unimplemented()
    }
    async fn list_transfers(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::TransferList>, Status> {
        unimplemented()
    }
    async fn verify_audit(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::AuditVerification>, Status> {
        unimplemented()
    }
    async fn subscribe(
        &self,
        _: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionView>, Status> {
        unimplemented()
    }
    async fn unsubscribe(
        &self,
        _: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionView>, Status> {
        unimplemented()
    }
    async fn set_credit_limit(
        &self,
        _: Request<pb::CreditLimitRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        unimplemented()
    }
    async fn list_bills(
        &self,
        _: Request<pb::BillQuery>,
    ) -> Result<Response<pb::BillList>, Status> {
        unimplemented()
    }
    async fn list_bill_lines(
        &self,
        _: Request<pb::BillRef>,
    ) -> Result<Response<pb::BillLineList>, Status> {
        unimplemented()
    }
    async fn close_due_bills(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::BillList>, Status> {
        unimplemented()
    }
    async fn list_statements(
        &self,
        _: Request<pb::StatementQuery>,
    ) -> Result<Response<pb::StatementList>, Status> {
        unimplemented()
    }
    async fn payout(
        &self,
        _: Request<pb::PayoutRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        unimplemented()
    }
    async fn set_limit(&self, _: Request<pb::LimitRequest>) -> Result<Response<pb::Ack>, Status> {
        unimplemented()
    }
    async fn set_whitelist(
        &self,
        _: Request<pb::WhitelistRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        unimplemented()
    }
    async fn set_freeze(&self, _: Request<pb::FreezeRequest>) -> Result<Response<pb::Ack>, Status> {
        unimplemented()
    }
    async fn get_account_status(
        &self,
        _: Request<pb::AccountQuery>,
    ) -> Result<Response<pb::AccountStatus>, Status> {
        unimplemented()
    }
    async fn list_jobs(&self, _: Request<pb::JobQuery>) -> Result<Response<pb::JobList>, Status> {
        unimplemented()
    }
    async fn list_datasets(
        &self,
        _: Request<pb::DatasetQuery>,
    ) -> Result<Response<pb::DatasetList>, Status> {
        unimplemented()
    }
    async fn list_licences(
        &self,
        _: Request<pb::LicenceQuery>,
    ) -> Result<Response<pb::LicenceList>, Status> {
        unimplemented()
    }
    async fn list_workers(
        &self,
        _: Request<pb::WorkerQuery>,
    ) -> Result<Response<pb::WorkerList>, Status> {
        unimplemented()
    }
    async fn get_operator_info(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::OperatorInfo>, Status> {
        unimplemented()
    }
    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        unimplemented()
    }
    async fn list_users(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::UserList>, Status> {
        unimplemented()
    }
    async fn disable_user(&self, _: Request<pb::UserRef>) -> Result<Response<pb::Ack>, Status> {
        unimplemented()
    }
    async fn enable_user(&self, _: Request<pb::UserRef>) -> Result<Response<pb::Ack>, Status> {
        unimplemented()
    }
    async fn add_group_member(
        &self,
        _: Request<pb::GroupMemberRequest>,
    ) -> Result<Response<pb::GroupMemberChange>, Status> {
        unimplemented()
    }
    async fn remove_group_member(
        &self,
        _: Request<pb::GroupMemberRequest>,
    ) -> Result<Response<pb::GroupMemberChange>, Status> {
        unimplemented()
    }
    async fn create_token(
        &self,
        _: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        unimplemented()
    }
    async fn list_tokens(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::TokenList>, Status> {
        unimplemented()
    }
    async fn revoke_token(&self, _: Request<pb::TokenRef>) -> Result<Response<pb::Ack>, Status> {
        unimplemented()
    }
    async fn create_party(
        &self,
        _: Request<pb::CreatePartyRequest>,
    ) -> Result<Response<pb::Party>, Status> {
        unimplemented()
    }
    async fn issue_registration_token(
        &self,
        _: Request<pb::RegistrationTokenRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        unimplemented()
    }
}

const NOW_MS: i64 = 1_800_000_000_000;

fn spec(task_id: &str, dataset: &str) -> Vec<u8> {
    spec_under(task_id, dataset, serde_json::json!({"useSence": "psi"}))
}

/// A task spec whose licence grants the scene `use_scene` (its JSON) around `NOW_MS`.
fn spec_under(task_id: &str, dataset: &str, use_scene: serde_json::Value) -> Vec<u8> {
    let s = TaskSpec {
        job_id: "job-1".into(),
        task_id: task_id.into(),
        scene: "psi".into(),
        role: TaskRole::Receiver,
        mode: PsiMode::Size,
        protocol: tessera_core::PsiProtocol::Ecdh,
        dataset_location: dataset.into(),
        key_columns: vec!["k".into()],
        key_case: KeyCase::Preserve,
        unicode_form: Default::default(),
        empty_keys: Default::default(),
        carry_columns: Vec::new(),
        dial_peer: false,
        peer_addr: String::new(),
        session_id: "s".into(),
        peer_party: String::new(),
        peer_worker_id: String::new(),
        output: String::new(),
        preview: None,
        mpc: None,
        tee: None,
        fl: None,
        join: None,
        licence: Some(tessera_core::LicenceGrant {
            licence_id: "lic".into(),
            dataset_id: "d".into(),
            not_before_ms: Some(NOW_MS - 3_600_000),
            not_after_ms: Some(NOW_MS + 3_600_000),
            use_scene,
        }),
    };
    serde_json::to_vec(&s).expect("spec")
}

fn assignment(
    signer: &TicketSigner,
    ticket_id: &str,
    worker: &str,
    signed_spec: &[u8],
    sent_spec: &[u8],
    expires_at_ms: i64,
) -> Result<pb::TaskEnvelope, Status> {
    let task_id = serde_json::from_slice::<TaskSpec>(signed_spec)
        .expect("spec")
        .task_id;
    let t = signer
        .sign(&TicketBody {
            ticket_id: ticket_id.into(),
            job_id: "job-1".into(),
            task_id,
            worker_id: worker.into(),
            issued_at_ms: NOW_MS - 1_000,
            expires_at_ms,
            task_digest: task_digest(signed_spec),
            audit_head: None,
        })
        .expect("sign");
    Ok(pb::TaskEnvelope {
        kind: Some(pb::task_envelope::Kind::Assign(pb::TaskAssignment {
            spec_json: sent_spec.to_vec().into(),
            ticket_body: t.body,
            ticket_signature_hex: t.signature_hex,
        })),
    })
}

#[tokio::test]
async fn the_worker_refuses_bad_tickets_and_accepts_a_good_one_once() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let signer = TicketSigner::generate(&mut rng);
    let forger = TicketSigner::generate(&mut rng);
    let (task_tx, task_rx) = mpsc::channel(16);
    let (res_tx, mut res_rx) = mpsc::channel(16);
    let op = ScriptedOperator {
        key_hex: signer.public_key_hex(),
        tasks: Mutex::new(Some(task_rx)),
        results: res_tx,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(OperatorServer::new(op))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // A worker refuses to start without its dataset directory.
    std::fs::create_dir(dir.path().join("datasets")).expect("mkdir datasets");
    let mut cfg = tessera_worker::WorkerConfig::new(
        format!("http://{addr}"),
        WorkerAttributes {
            party: "p".into(),
            ..WorkerAttributes::default()
        },
        dir.path().join("datasets"),
        dir.path().join("outputs"),
    );
    cfg.worker_id = Some("w1".into());
    cfg.operator_key_hex = signer.public_key_hex();
    cfg.registration = tessera_proto::TokenHeader::new(REGISTRATION_TOKEN).expect("ascii");
    // The scripted operator runs no certificate authority.
    cfg.insecure_plaintext_peer = true;
    cfg.insecure_plaintext_operator = true;
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let worker = tessera_worker::start(cfg, clock).await.expect("worker");

    let good = spec("t-1", "missing.csv");
    let later = NOW_MS + 60_000;
    let cases: Vec<(Result<pb::TaskEnvelope, Status>, &str, &str)> = vec![
        (
            assignment(&forger, "k1", "w1", &good, &good, later),
            "ticket",
            "signature",
        ),
        (
            assignment(&signer, "k2", "w1", &good, &good, NOW_MS - 1),
            "ticket",
            "expired",
        ),
        (
            assignment(&signer, "k3", "w2", &good, &good, later),
            "ticket",
            "worker",
        ),
        (
            assignment(&signer, "k4", "w1", &good, &spec("t-1", "other.csv"), later),
            "ticket",
            "match",
        ),
        // A genuine ticket whose licence allows another region than this worker's: the
        // worker checks the licence against itself and refuses.
        (
            {
                let elsewhere = spec_under(
                    "t-1",
                    "missing.csv",
                    serde_json::json!({"useSence": "psi", "visitArea": ["far-away"]}),
                );
                assignment(&signer, "k0", "w1", &elsewhere, &elsewhere, later)
            },
            "ticket",
            "outside its licence",
        ),
        (
            assignment(&signer, "k5", "w1", &good, &good, later),
            "input",
            "not found",
        ),
        (
            assignment(&signer, "k5", "w1", &good, &good, later),
            "ticket",
            "replay",
        ),
    ];
    for (i, (envelope, kind, text)) in cases.into_iter().enumerate() {
        task_tx.send(envelope).await.expect("send");
        let r = tokio::time::timeout(Duration::from_secs(20), res_rx.recv())
            .await
            .expect("a report")
            .expect("report");
        assert!(!r.ok, "case {i}: {r:?}");
        assert_eq!(r.error_kind, kind, "case {i}: {r:?}");
        assert!(
            r.error.contains(text),
            "case {i}: {:?} should mention {text:?}",
            r.error
        );
    }
    worker.abort();
}
