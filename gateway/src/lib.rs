//! The operator's gRPC service: transport only. Each RPC parses its request (wire strings and
//! enums into domain types, once), calls a domain service — the [`Scheduler`] for workers and
//! jobs, [`RecordService`] for datasets and licences, [`BillingService`] for money,
//! [`AuditService`] for the audit chain — and maps the result, or the error through the single
//! [`ApiCode`] table. The gateway never touches the store.
//!
//! Every RPC authenticates its caller first (`accounts::authenticate`: the `x-auth-token`
//! metadata into a `tessera_auth::Caller`, or `UNAUTHENTICATED`), then has the account service
//! check the operation on the resource it names against the one table (`tessera_auth`,
//! through `AccountService::check_*`), before it calls anything else.
//!
//! One module per service area: `workers`, `jobs`, `records`, `billing`, `audit`, `lists`,
//! `accounts`; `convert` turns domain records into wire messages, `error` holds the code table.

mod accounts;
mod audit;
mod billing;
mod convert;
mod error;
pub mod http;
mod jobs;
mod lists;
mod records;
pub mod rest;
pub mod serve;
pub mod tai;
pub mod trade;
mod workers;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tessera_auth::{Caller, Operation, Viewer};
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_server::{Operator, OperatorServer};
use tessera_scheduler::{AccountService, AuditService, BillingService, RecordService, Scheduler};
use tonic::{Request, Response, Status};

pub use accounts::TOKEN_METADATA;
pub use convert::job_to_pb;
pub use error::{ApiCode, refusal_code, status, store_code};

/// The `Operator` gRPC service.
#[derive(Debug, Clone)]
pub struct OperatorService {
    jobs: Arc<Scheduler>,
    records: RecordService,
    billing: BillingService,
    audit: AuditService,
    accounts: AccountService,
    /// The `Trade` service the T/AI REST routes call.
    pub(crate) trade: trade::TradeGrpc,
}

impl OperatorService {
    /// A service over `scheduler` and the record, billing and audit services that share its
    /// store and clock.
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self {
            records: scheduler.records(),
            billing: scheduler.billing(),
            audit: scheduler.audit(),
            accounts: scheduler.accounts(),
            trade: trade::TradeGrpc::new(scheduler.trade(), scheduler.accounts()),
            jobs: scheduler,
        }
    }

    /// The `Trade` gRPC service beside it (the T/AI 123.12 trade flow).
    pub fn trade_server(&self) -> tessera_proto::v1::trade_server::TradeServer<trade::TradeGrpc> {
        self.trade.clone().into_server()
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> OperatorServer<Self> {
        OperatorServer::new(self)
    }

    /// The authenticated caller of `req` (`UNAUTHENTICATED` otherwise).
    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        accounts::authenticate(&self.accounts, req).await
    }

    /// The caller, after the one table allowed `op` on nothing owned.
    async fn allowed<T>(&self, op: Operation, req: &Request<T>) -> Result<Caller, Status> {
        let who = self.caller(req).await?;
        self.accounts
            .check(op, &who)
            .await
            .map_err(|e| status(&e))?;
        Ok(who)
    }

    /// The caller, after the one table allowed `op` acting for user `user`; `user` is filled
    /// with the caller's own id when the request left it empty.
    async fn allowed_for_user<T>(
        &self,
        op: Operation,
        req: &Request<T>,
        user: &mut String,
    ) -> Result<Caller, Status> {
        let who = self.caller(req).await?;
        for_self(&who, user);
        self.accounts
            .check_user(op, &who, user)
            .await
            .map_err(|e| status(&e))?;
        Ok(who)
    }

    /// The caller, after the one table allowed worker operation `op` about `worker_id`.
    async fn allowed_worker<T>(
        &self,
        op: Operation,
        req: &Request<T>,
        worker_id: &str,
    ) -> Result<(), Status> {
        let who = self.caller(req).await?;
        self.accounts
            .check_worker(op, &who, worker_id)
            .await
            .map_err(|e| status(&e))
    }

    /// The caller and the rows it sees, after the one table allowed listing `op`.
    async fn viewer<T>(&self, op: Operation, req: &Request<T>) -> Result<Viewer, Status> {
        let who = self.allowed(op, req).await?;
        self.accounts.viewer(&who).await.map_err(|e| status(&e))
    }

    /// The rows the authorised caller `who` sees.
    async fn viewer_of(&self, who: &Caller) -> Result<Viewer, Status> {
        self.accounts.viewer(who).await.map_err(|e| status(&e))
    }
}

/// Fills an empty user field of a request with the calling user's id (a request acts for
/// its caller unless it names someone).
fn for_self(who: &Caller, user: &mut String) {
    if user.is_empty()
        && let Caller::User(p) = who
    {
        user.clone_from(&p.user);
    }
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ack(r: Result<(), Status>) -> Result<Response<pb::Ack>, Status> {
    r.map(|()| Response::new(pb::Ack::default()))
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let who = self.caller(&req).await?;
        let attrs = workers::attributes(req.get_ref())?;
        self.accounts
            .check_registration(&who, &attrs.party, &req.get_ref().worker_id)
            .await
            .map_err(|e| status(&e))?;
        workers::register(&self.jobs, &who, attrs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.allowed_worker(Operation::Heartbeat, &req, &req.get_ref().worker_id)
            .await?;
        workers::heartbeat(&self.jobs, req.into_inner()).await?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type PullTasksStream = BoxStream<pb::TaskEnvelope>;

    async fn pull_tasks(
        &self,
        req: Request<pb::PullTasksRequest>,
    ) -> Result<Response<Self::PullTasksStream>, Status> {
        self.allowed_worker(Operation::PullTasks, &req, &req.get_ref().worker_id)
            .await?;
        workers::pull_tasks(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn report_progress(
        &self,
        req: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.allowed_worker(Operation::ReportProgress, &req, &req.get_ref().worker_id)
            .await?;
        ack(workers::report_progress(&self.jobs, req.into_inner()).await)
    }

    async fn report_result(
        &self,
        req: Request<pb::TaskResult>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.allowed_worker(Operation::ReportResult, &req, &req.get_ref().worker_id)
            .await?;
        ack(workers::report_result(&self.jobs, req.into_inner()).await)
    }

    type DealerStream = BoxStream<pb::Frame>;

    async fn dealer(
        &self,
        req: Request<tonic::Streaming<pb::Frame>>,
    ) -> Result<Response<Self::DealerStream>, Status> {
        let (worker_id, task_id) = workers::dealer_metadata(&req)?;
        self.allowed_worker(Operation::Dealer, &req, &worker_id)
            .await?;
        workers::dealer(&self.jobs, &worker_id, &task_id, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_dataset(
        &self,
        req: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_party(Operation::CreateDataset, &who, &req.get_ref().owner_party)
            .await
            .map_err(|e| status(&e))?;
        records::create_dataset(&self.records, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_licence(
        &self,
        req: Request<pb::CreateLicenceRequest>,
    ) -> Result<Response<pb::Licence>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_party(Operation::CreateLicence, &who, &req.get_ref().licensor)
            .await
            .map_err(|e| status(&e))?;
        records::create_licence(&self.records, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn data_item_log(
        &self,
        req: Request<pb::DatasetRef>,
    ) -> Result<Response<pb::OperationLog>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_dataset(Operation::DataItemLog, &who, &req.get_ref().dataset_id)
            .await
            .map_err(|e| status(&e))?;
        let full = matches!(&who, Caller::User(p) if p.is_operator());
        audit::data_item_log(&self.audit, req.into_inner(), full)
            .await
            .map(Response::new)
    }

    async fn get_licence(
        &self,
        req: Request<pb::LicenceRef>,
    ) -> Result<Response<pb::Licence>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_licence(Operation::GetLicence, &who, &req.get_ref().licence_id)
            .await
            .map_err(|e| status(&e))?;
        records::get_licence(&self.records, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = self.caller(&req).await?;
        jobs::submit(&self.jobs, &self.accounts, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_job(Operation::GetJob, &who, &req.get_ref().job_id)
            .await
            .map_err(|e| status(&e))?;
        let viewer = self.viewer_of(&who).await?;
        jobs::get(&self.jobs, req.into_inner(), &viewer)
            .await
            .map(Response::new)
    }

    type WatchJobStream = BoxStream<pb::Job>;

    async fn watch_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_job(Operation::WatchJob, &who, &req.get_ref().job_id)
            .await
            .map_err(|e| status(&e))?;
        let viewer = self.viewer_of(&who).await?;
        jobs::watch(&self.jobs, req.into_inner(), viewer)
            .await
            .map(Response::new)
    }

    async fn cancel_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_job(Operation::CancelJob, &who, &req.get_ref().job_id)
            .await
            .map_err(|e| status(&e))?;
        let viewer = self.viewer_of(&who).await?;
        jobs::cancel(&self.jobs, req.into_inner(), &who, &viewer)
            .await
            .map(Response::new)
    }

    async fn report_delivered(
        &self,
        req: Request<pb::DeliveryReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.allowed_worker(Operation::ReportDelivered, &req, &req.get_ref().worker_id)
            .await?;
        ack(workers::report_delivered(&self.jobs, req.into_inner()).await)
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::CertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        self.allowed_worker(Operation::RenewCertificate, &req, &req.get_ref().worker_id)
            .await?;
        workers::renew_certificate(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn tee_challenge(
        &self,
        req: Request<pb::TeeChallengeRequest>,
    ) -> Result<Response<pb::TeeChallengeResponse>, Status> {
        self.allowed_worker(Operation::TeeChallenge, &req, &req.get_ref().worker_id)
            .await?;
        workers::tee_challenge(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn tee_attest(
        &self,
        req: Request<pb::TeeAttestRequest>,
    ) -> Result<Response<pb::TeeAttestResponse>, Status> {
        self.allowed_worker(Operation::TeeAttest, &req, &req.get_ref().worker_id)
            .await?;
        workers::tee_attest(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn release_dataset_key(
        &self,
        req: Request<pb::KeyReleaseRequest>,
    ) -> Result<Response<pb::ReleasedDatasetKey>, Status> {
        self.allowed_worker(Operation::ReleaseDatasetKey, &req, &req.get_ref().worker_id)
            .await?;
        workers::release_dataset_key(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_sealing_key(
        &self,
        req: Request<pb::DatasetRef>,
    ) -> Result<Response<pb::SealingKey>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_dataset(Operation::GetSealingKey, &who, &req.get_ref().dataset_id)
            .await
            .map_err(|e| status(&e))?;
        if matches!(&who, Caller::User(p) if p.is_operator()) {
            // The operator runs the key broker; it never takes a key out of it.
            return Err(Status::permission_denied(
                "only the owner of the dataset's party receives its sealing key",
            ));
        }
        let dataset_id = req.into_inner().dataset_id;
        let by = match &who {
            Caller::User(p) => p.user.clone(),
            other => other.describe(),
        };
        let (key_hex, created) = self
            .jobs
            .tee_sealing_key(&dataset_id, &by)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::SealingKey {
            dataset_id,
            key_hex,
            created,
        }))
    }

    async fn deposit(
        &self,
        mut req: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_mut();
        for_self(&who, &mut r.account);
        // An unknown target is refused as invalid by the deposit itself.
        let voucher = !r.into.is_empty()
            && tessera_scheduler::billing::parse_deposit_into(&r.into)
                .is_ok_and(|d| d != tessera_scheduler::billing::DepositInto::Cash);
        self.accounts
            .check_deposit(&who, &r.account, voucher)
            .await
            .map_err(|e| status(&e))?;
        let mut ack = billing::deposit(&self.billing, req.into_inner()).await?;
        // The depositor's receipt: a signed head covering the deposit.
        ack.audit_head = audit::receipt_head(&self.audit).await?;
        Ok(Response::new(ack))
    }

    async fn list_usage(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::UsageList>, Status> {
        let viewer = self.viewer(Operation::ListUsage, &req).await?;
        billing::usage(&self.billing, &viewer)
            .await
            .map(Response::new)
    }

    async fn list_balances(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::BalanceList>, Status> {
        let viewer = self.viewer(Operation::ListBalances, &req).await?;
        billing::balances(&self.billing, &viewer)
            .await
            .map(Response::new)
    }

    async fn list_transfers(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::TransferList>, Status> {
        let viewer = self.viewer(Operation::ListTransfers, &req).await?;
        billing::transfers(&self.billing, &viewer)
            .await
            .map(Response::new)
    }

    async fn verify_audit(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::AuditVerification>, Status> {
        self.allowed(Operation::VerifyAudit, &req).await?;
        audit::verify(&self.audit).await.map(Response::new)
    }

    async fn set_credit_limit(
        &self,
        req: Request<pb::CreditLimitRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.allowed(Operation::SetCreditLimit, &req).await?;
        ack(billing::set_credit_limit(&self.billing, req.into_inner()).await)
    }

    async fn list_bills(
        &self,
        req: Request<pb::BillQuery>,
    ) -> Result<Response<pb::BillList>, Status> {
        let viewer = self.viewer(Operation::ListBills, &req).await?;
        billing::bills(&self.billing, req.into_inner(), &viewer)
            .await
            .map(Response::new)
    }

    async fn list_bill_lines(
        &self,
        req: Request<pb::BillRef>,
    ) -> Result<Response<pb::BillLineList>, Status> {
        let who = self.caller(&req).await?;
        self.accounts
            .check_bill(Operation::ListBillLines, &who, &req.get_ref().bill_id)
            .await
            .map_err(|e| status(&e))?;
        billing::bill_lines(&self.billing, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn close_due_bills(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::BillList>, Status> {
        self.allowed(Operation::CloseDueBills, &req).await?;
        billing::close_due_bills(&self.billing)
            .await
            .map(Response::new)
    }

    async fn list_statements(
        &self,
        req: Request<pb::StatementQuery>,
    ) -> Result<Response<pb::StatementList>, Status> {
        let viewer = self.viewer(Operation::ListStatements, &req).await?;
        billing::statements(&self.billing, req.into_inner(), &viewer)
            .await
            .map(Response::new)
    }

    async fn payout(
        &self,
        req: Request<pb::PayoutRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        self.allowed(Operation::Payout, &req).await?;
        let mut statement = billing::payout(&self.billing, req.into_inner()).await?;
        statement.audit_head = audit::receipt_head(&self.audit).await?;
        Ok(Response::new(statement))
    }

    async fn set_limit(&self, req: Request<pb::LimitRequest>) -> Result<Response<pb::Ack>, Status> {
        self.allowed(Operation::SetLimit, &req).await?;
        ack(billing::set_limit(&self.billing, req.into_inner()).await)
    }

    async fn set_whitelist(
        &self,
        req: Request<pb::WhitelistRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.allowed(Operation::SetWhitelist, &req).await?;
        ack(billing::set_whitelist(&self.billing, req.into_inner()).await)
    }

    async fn set_freeze(
        &self,
        req: Request<pb::FreezeRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.allowed(Operation::SetFreeze, &req).await?;
        ack(billing::set_freeze(&self.billing, req.into_inner()).await)
    }

    async fn get_account_status(
        &self,
        mut req: Request<pb::AccountQuery>,
    ) -> Result<Response<pb::AccountStatus>, Status> {
        let mut customer = std::mem::take(&mut req.get_mut().customer);
        self.allowed_for_user(Operation::GetAccountStatus, &req, &mut customer)
            .await?;
        req.get_mut().customer = customer;
        billing::account_status(&self.billing, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn subscribe(
        &self,
        mut req: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionView>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_mut();
        for_self(&who, &mut r.customer);
        self.accounts
            .check_term(Operation::Subscribe, &who, &r.customer, &r.licence_id)
            .await
            .map_err(|e| status(&e))?;
        let mut view = billing::subscribe(&self.billing, req.into_inner()).await?;
        view.audit_head = audit::receipt_head(&self.audit).await?;
        Ok(Response::new(view))
    }

    async fn unsubscribe(
        &self,
        mut req: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionView>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_mut();
        for_self(&who, &mut r.customer);
        self.accounts
            .check_term(Operation::Unsubscribe, &who, &r.customer, &r.licence_id)
            .await
            .map_err(|e| status(&e))?;
        let mut view = billing::unsubscribe(&self.billing, req.into_inner()).await?;
        view.audit_head = audit::receipt_head(&self.audit).await?;
        Ok(Response::new(view))
    }

    async fn list_jobs(&self, req: Request<pb::JobQuery>) -> Result<Response<pb::JobList>, Status> {
        let viewer = self.viewer(Operation::ListJobs, &req).await?;
        lists::jobs(&self.jobs, req.into_inner(), &viewer)
            .await
            .map(Response::new)
    }

    async fn list_datasets(
        &self,
        req: Request<pb::DatasetQuery>,
    ) -> Result<Response<pb::DatasetList>, Status> {
        let viewer = self.viewer(Operation::ListDatasets, &req).await?;
        lists::datasets(&self.records, req.into_inner(), &viewer)
            .await
            .map(Response::new)
    }

    async fn list_licences(
        &self,
        req: Request<pb::LicenceQuery>,
    ) -> Result<Response<pb::LicenceList>, Status> {
        let viewer = self.viewer(Operation::ListLicences, &req).await?;
        lists::licences(&self.records, req.into_inner(), &viewer)
            .await
            .map(Response::new)
    }

    async fn list_workers(
        &self,
        req: Request<pb::WorkerQuery>,
    ) -> Result<Response<pb::WorkerList>, Status> {
        let viewer = self.viewer(Operation::ListWorkers, &req).await?;
        lists::workers(&self.jobs, req.into_inner(), &viewer)
            .await
            .map(Response::new)
    }

    async fn get_operator_info(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::OperatorInfo>, Status> {
        self.allowed(Operation::GetOperatorInfo, &req).await?;
        Ok(Response::new(lists::info(&self.jobs)))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        accounts::create_user(&self.accounts, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_users(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::UserList>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        accounts::list_users(&self.accounts, &who)
            .await
            .map(Response::new)
    }

    async fn disable_user(&self, req: Request<pb::UserRef>) -> Result<Response<pb::Ack>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        ack(accounts::disable_user(&self.accounts, &who, req.into_inner()).await)
    }

    async fn enable_user(&self, req: Request<pb::UserRef>) -> Result<Response<pb::Ack>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        ack(accounts::enable_user(&self.accounts, &who, req.into_inner()).await)
    }

    async fn add_group_member(
        &self,
        req: Request<pb::GroupMemberRequest>,
    ) -> Result<Response<pb::GroupMemberChange>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        accounts::group_member(&self.accounts, &who, req.into_inner(), true)
            .await
            .map(Response::new)
    }

    async fn remove_group_member(
        &self,
        req: Request<pb::GroupMemberRequest>,
    ) -> Result<Response<pb::GroupMemberChange>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        accounts::group_member(&self.accounts, &who, req.into_inner(), false)
            .await
            .map(Response::new)
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        accounts::create_token(&self.accounts, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::TokenList>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        accounts::list_tokens(&self.accounts, &who)
            .await
            .map(Response::new)
    }

    async fn revoke_token(&self, req: Request<pb::TokenRef>) -> Result<Response<pb::Ack>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        ack(accounts::revoke_token(&self.accounts, &who, req.into_inner()).await)
    }

    async fn create_party(
        &self,
        req: Request<pb::CreatePartyRequest>,
    ) -> Result<Response<pb::Party>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        accounts::create_party(&self.accounts, &who, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn issue_registration_token(
        &self,
        req: Request<pb::RegistrationTokenRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        let who = accounts::authenticate(&self.accounts, &req).await?;
        accounts::registration_token(&self.accounts, &who, req.into_inner())
            .await
            .map(Response::new)
    }
}
