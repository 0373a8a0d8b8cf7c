//! The operator's gRPC service: transport only. Each RPC parses its request (wire strings and
//! enums into domain types, once), calls a domain service — the [`Scheduler`] for workers and
//! jobs, [`RecordService`] for datasets and licences, [`BillingService`] for money,
//! [`AuditService`] for the audit chain — and maps the result, or the error through the single
//! [`ApiCode`] table. The gateway never touches the store.
//!
//! One module per service area: `workers`, `jobs`, `records`, `billing`, `audit`, `lists`; `convert`
//! turns domain records into wire messages, `error` holds the code table.

mod accounts;
mod audit;
mod billing;
mod convert;
mod error;
mod jobs;
mod lists;
mod records;
mod workers;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_server::{Operator, OperatorServer};
use tessera_scheduler::{AccountService, AuditService, BillingService, RecordService, Scheduler};
use tonic::{Request, Response, Status};

pub use accounts::TOKEN_METADATA;
pub use convert::job_to_pb;
pub use error::{ApiCode, refusal_code, status, store_code};

/// The metadata key naming the calling user (no authentication yet; see ARCHITECTURE.md).
pub const USER_METADATA: &str = "x-tessera-user";

/// The calling user named by the [`USER_METADATA`] metadata, if any (what a job answer shows
/// depends on it: `tessera_scheduler::redact`).
fn caller<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(USER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The `Operator` gRPC service.
#[derive(Debug, Clone)]
pub struct OperatorService {
    jobs: Arc<Scheduler>,
    records: RecordService,
    billing: BillingService,
    audit: AuditService,
    accounts: AccountService,
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
            jobs: scheduler,
        }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> OperatorServer<Self> {
        OperatorServer::new(self)
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
        workers::register(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        workers::heartbeat(&self.jobs, req.into_inner()).await?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type PullTasksStream = BoxStream<pb::TaskEnvelope>;

    async fn pull_tasks(
        &self,
        req: Request<pb::PullTasksRequest>,
    ) -> Result<Response<Self::PullTasksStream>, Status> {
        workers::pull_tasks(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn report_progress(
        &self,
        req: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        ack(workers::report_progress(&self.jobs, req.into_inner()).await)
    }

    async fn report_result(
        &self,
        req: Request<pb::TaskResult>,
    ) -> Result<Response<pb::Ack>, Status> {
        ack(workers::report_result(&self.jobs, req.into_inner()).await)
    }

    async fn create_dataset(
        &self,
        req: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        records::create_dataset(&self.records, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_licence(
        &self,
        req: Request<pb::CreateLicenceRequest>,
    ) -> Result<Response<pb::Licence>, Status> {
        records::create_licence(&self.records, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_licence(
        &self,
        req: Request<pb::LicenceRef>,
    ) -> Result<Response<pb::Licence>, Status> {
        records::get_licence(&self.records, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        jobs::submit(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let caller = caller(&req);
        jobs::get(&self.jobs, req.into_inner(), caller.as_deref())
            .await
            .map(Response::new)
    }

    type WatchJobStream = BoxStream<pb::Job>;

    async fn watch_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&req);
        jobs::watch(&self.jobs, req.into_inner(), caller)
            .await
            .map(Response::new)
    }

    async fn cancel_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let user = req
            .metadata()
            .get(USER_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .ok_or_else(|| {
                Status::new(
                    ApiCode::PermissionDenied.grpc(),
                    format!("cancelling a job needs the {USER_METADATA} metadata"),
                )
            })?;
        jobs::cancel(&self.jobs, req.into_inner(), &user)
            .await
            .map(Response::new)
    }

    async fn report_delivered(
        &self,
        req: Request<pb::DeliveryReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        ack(workers::report_delivered(&self.jobs, req.into_inner()).await)
    }

    async fn deposit(&self, req: Request<pb::DepositRequest>) -> Result<Response<pb::Ack>, Status> {
        let mut ack = billing::deposit(&self.billing, req.into_inner()).await?;
        // The depositor's receipt: a signed head covering the deposit.
        ack.audit_head = audit::seal(&self.audit).await?;
        Ok(Response::new(ack))
    }

    async fn list_usage(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::UsageList>, Status> {
        billing::usage(&self.billing).await.map(Response::new)
    }

    async fn list_balances(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::BalanceList>, Status> {
        billing::balances(&self.billing).await.map(Response::new)
    }

    async fn list_transfers(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::TransferList>, Status> {
        billing::transfers(&self.billing).await.map(Response::new)
    }

    async fn verify_audit(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::AuditVerification>, Status> {
        audit::verify(&self.audit).await.map(Response::new)
    }

    async fn set_credit_limit(
        &self,
        req: Request<pb::CreditLimitRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        ack(billing::set_credit_limit(&self.billing, req.into_inner()).await)
    }

    async fn list_bills(
        &self,
        req: Request<pb::BillQuery>,
    ) -> Result<Response<pb::BillList>, Status> {
        billing::bills(&self.billing, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_bill_lines(
        &self,
        req: Request<pb::BillRef>,
    ) -> Result<Response<pb::BillLineList>, Status> {
        billing::bill_lines(&self.billing, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn close_due_bills(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::BillList>, Status> {
        billing::close_due_bills(&self.billing)
            .await
            .map(Response::new)
    }

    async fn list_statements(
        &self,
        req: Request<pb::StatementQuery>,
    ) -> Result<Response<pb::StatementList>, Status> {
        billing::statements(&self.billing, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn payout(
        &self,
        req: Request<pb::PayoutRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        let mut statement = billing::payout(&self.billing, req.into_inner()).await?;
        statement.audit_head = audit::seal(&self.audit).await?;
        Ok(Response::new(statement))
    }

    async fn set_limit(&self, req: Request<pb::LimitRequest>) -> Result<Response<pb::Ack>, Status> {
        ack(billing::set_limit(&self.billing, req.into_inner()).await)
    }

    async fn set_whitelist(
        &self,
        req: Request<pb::WhitelistRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        ack(billing::set_whitelist(&self.billing, req.into_inner()).await)
    }

    async fn set_freeze(
        &self,
        req: Request<pb::FreezeRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        ack(billing::set_freeze(&self.billing, req.into_inner()).await)
    }

    async fn get_account_status(
        &self,
        req: Request<pb::AccountQuery>,
    ) -> Result<Response<pb::AccountStatus>, Status> {
        billing::account_status(&self.billing, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionView>, Status> {
        let mut view = billing::subscribe(&self.billing, req.into_inner()).await?;
        view.audit_head = audit::seal(&self.audit).await?;
        Ok(Response::new(view))
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionView>, Status> {
        let mut view = billing::unsubscribe(&self.billing, req.into_inner()).await?;
        view.audit_head = audit::seal(&self.audit).await?;
        Ok(Response::new(view))
    }

    async fn list_jobs(&self, req: Request<pb::JobQuery>) -> Result<Response<pb::JobList>, Status> {
        let caller = caller(&req);
        lists::jobs(&self.jobs, req.into_inner(), caller.as_deref())
            .await
            .map(Response::new)
    }

    async fn list_datasets(
        &self,
        req: Request<pb::DatasetQuery>,
    ) -> Result<Response<pb::DatasetList>, Status> {
        lists::datasets(&self.records, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_licences(
        &self,
        req: Request<pb::LicenceQuery>,
    ) -> Result<Response<pb::LicenceList>, Status> {
        lists::licences(&self.records, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_workers(
        &self,
        req: Request<pb::WorkerQuery>,
    ) -> Result<Response<pb::WorkerList>, Status> {
        lists::workers(&self.jobs, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_operator_info(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::OperatorInfo>, Status> {
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
