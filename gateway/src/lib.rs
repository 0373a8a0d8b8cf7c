//! The operator's gRPC services over the scheduler and the store, and the one place where
//! domain errors become API error codes (gRPC status codes here; the T/AI 123.12 REST
//! envelope will map from the same [`ApiCode`] set).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tessera_accounting::freeze::{LimitConfig, ManualFreeze};
use tessera_accounting::{AccountKind, JobPrice, TransferSpec, derive_id};
use tessera_core::WorkerAttributes;
use tessera_policy::UsagePolicy;
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_server::{Operator, OperatorServer};
use tessera_scheduler::{
    Delivery, JobRequest, JobView, Scheduler, SchedulerError, TaskReport, TaskUsage,
};
use tessera_store::{
    Amounts, BillLineRecord, BillRecord, DatasetRecord, LicenceRecord, LimitScope, Split,
    StatementRecord, StoreError, SubscriptionView,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tonic::{Request, Response, Status};

/// The closed set of API error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiCode {
    /// The request is malformed.
    InvalidArgument,
    /// A named record does not exist.
    NotFound,
    /// The record exists already.
    AlreadyExists,
    /// The caller may not do this.
    PermissionDenied,
    /// The request conflicts with stored state (e.g. an idempotency key reused).
    Conflict,
    /// Something failed on our side.
    Internal,
}

impl ApiCode {
    /// The gRPC status code.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ApiCode::InvalidArgument => tonic::Code::InvalidArgument,
            ApiCode::NotFound => tonic::Code::NotFound,
            ApiCode::AlreadyExists => tonic::Code::AlreadyExists,
            ApiCode::PermissionDenied => tonic::Code::PermissionDenied,
            ApiCode::Conflict => tonic::Code::FailedPrecondition,
            ApiCode::Internal => tonic::Code::Internal,
        }
    }
}

fn store_code(e: &StoreError) -> ApiCode {
    match e {
        StoreError::NotFound { .. } => ApiCode::NotFound,
        StoreError::Conflict { .. } => ApiCode::AlreadyExists,
        StoreError::IdempotencyMismatch { .. }
        | StoreError::Ledger(_)
        | StoreError::Refused(_)
        | StoreError::Bill(_)
        | StoreError::PeriodOpen { .. } => ApiCode::Conflict,
        StoreError::Invalid { .. } => ApiCode::InvalidArgument,
        _ => ApiCode::Internal,
    }
}

/// Maps a domain error to a status, logging internal failures here where they are handled.
pub fn status(e: &SchedulerError) -> Status {
    let code = match e {
        SchedulerError::Invalid(_) => ApiCode::InvalidArgument,
        SchedulerError::NotFound(_) => ApiCode::NotFound,
        SchedulerError::Forbidden(_) => ApiCode::PermissionDenied,
        SchedulerError::Store(s) => store_code(s),
    };
    if code == ApiCode::Internal {
        tracing::error!(error = %e, "internal error");
    }
    Status::new(code.grpc(), e.to_string())
}

fn store_status(e: StoreError) -> Status {
    status(&SchedulerError::Store(e))
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// The `Operator` gRPC service.
#[derive(Debug, Clone)]
pub struct OperatorService {
    scheduler: Arc<Scheduler>,
}

impl OperatorService {
    /// A service over `scheduler`.
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> OperatorServer<Self> {
        OperatorServer::new(self)
    }

    fn now(&self) -> i64 {
        self.scheduler.now_ms()
    }
}

/// Converts a job view to its wire form.
pub fn job_to_pb(v: &JobView) -> pb::Job {
    let j = &v.job;
    pb::Job {
        job_id: j.job_id.clone(),
        state: j.state.clone(),
        licence_id: j.licence_id.clone(),
        scene: j.scene.clone(),
        mode: j.mode.clone(),
        user: j.user.clone(),
        refusal_reasons: if j.state == "refused" {
            j.reasons.clone()
        } else {
            Vec::new()
        },
        error: j.error.clone(),
        result_size: j.result_size,
        result_location: j.result_location.clone(),
        progress: v
            .progress
            .iter()
            .map(|p| pb::PhaseProgress {
                party: p.party.clone(),
                phase: p.phase.clone(),
                done: p.done,
                total: p.total,
            })
            .collect(),
        charge_micros: j.charge_micros,
        created_at_ms: j.created_at_ms,
        finished_at_ms: j.finished_at_ms.unwrap_or(0),
    }
}

fn licence_to_pb(l: &LicenceRecord) -> pb::Licence {
    pb::Licence {
        licence_id: l.licence_id.clone(),
        licensor: l.licensor.clone(),
        licensee: l.licensee.clone(),
        dataset_id: l.dataset_id.clone(),
        policy_json: serde_json::to_string(&l.policy).unwrap_or_default(),
        price_per_job_micros: l.price.per_job_micros,
        price_per_1k_rows_micros: l.price.per_1k_rows_micros,
        operator_share_bps: l.price.operator_share_bps,
        monthly_price_micros: l.monthly_price_micros,
    }
}

fn required(name: &str, v: &str) -> Result<(), Status> {
    if v.trim().is_empty() {
        return Err(invalid(format!("{name} is required")));
    }
    if v.len() > 256 || v.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{name} must be at most 256 bytes without control characters"
        )));
    }
    Ok(())
}

/// A customer id: a required field that also may not contain `:` (the account-name
/// separator), so one customer's accounts can never be named through another's id.
fn customer(name: &str, v: &str) -> Result<(), Status> {
    required(name, v)?;
    if v.contains(':') {
        return Err(invalid(format!("{name} must not contain ':'")));
    }
    Ok(())
}

fn amounts_to_pb(a: &Amounts, s: &Split) -> pb::LineAmounts {
    pb::LineAmounts {
        original_micros: a.original,
        platform_discount_micros: a.platform_discount,
        customer_discount_micros: a.customer_discount,
        coupon_micros: a.coupon,
        deduction_voucher_micros: a.deduction_voucher,
        recharge_voucher_micros: a.recharge_voucher,
        cash_micros: a.cash,
        credit_micros: a.credit,
        arrears_micros: a.arrears,
        provider_micros: s.provider_micros,
        operator_micros: s.operator_micros,
    }
}

fn bill_to_pb(b: BillRecord) -> pb::Bill {
    pb::Bill {
        bill_id: b.bill_id,
        customer: b.customer,
        period: b.period,
        state: b.state,
        lines: b.lines,
        totals: Some(amounts_to_pb(&b.totals, &b.split)),
        closed_at_ms: b.closed_at_ms,
    }
}

fn line_to_pb(l: BillLineRecord) -> pb::BillLine {
    pb::BillLine {
        line_id: l.line.line_id,
        bill_id: l.bill_id,
        customer: l.line.customer,
        job_id: l.line.job_id.unwrap_or_default(),
        kind: l.line.kind.name().to_string(),
        product: l.line.product,
        provider: l.line.provider,
        event_time_ms: l.line.event_time_ms,
        arrival_time_ms: l.arrival_time_ms,
        service_start_ms: l.line.service_start_ms,
        service_end_ms: l.line.service_end_ms,
        amounts: Some(amounts_to_pb(&l.line.amounts, &l.line.split)),
        corrects_period: l.corrects_period.unwrap_or_default(),
        note: l.line.note,
    }
}

fn statement_to_pb(s: StatementRecord) -> pb::Statement {
    pb::Statement {
        provider: s.provider,
        period: s.period,
        lines: s.lines,
        paid_micros: s.paid_micros,
        operator_micros: s.operator_micros,
        provider_micros: s.provider_micros,
        paid_out_at_ms: s.paid_out_at_ms,
        payout_transfer_id: s.payout_transfer_id.unwrap_or_default(),
    }
}

fn subscription_to_pb(v: SubscriptionView) -> pb::SubscriptionView {
    pb::SubscriptionView {
        licence_id: v.licence_id,
        customer: v.customer,
        status: v.status,
        start_ms: v.start_ms,
        end_ms: v.end_ms,
        months_total: v.months_total,
        charged_micros: v.charged_micros,
        refund_micros: v.refund_micros,
    }
}

fn optional_filter(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let r = req.into_inner();
        let a = r
            .attributes
            .ok_or_else(|| invalid("attributes are required"))?;
        let attrs = WorkerAttributes {
            party: a.party,
            region: a.region,
            compute_centre: a.compute_centre,
            hardware: a.hardware,
            ai_frameworks: a.ai_frameworks,
            software_env: a.software_env,
        };
        let id = self
            .scheduler
            .register_worker(Some(r.worker_id), attrs, r.peer_addr)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: id,
            operator_key_hex: self.scheduler.operator_key_hex(),
            heartbeat_interval_ms: self.scheduler.config().heartbeat_interval_ms,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.scheduler
            .heartbeat(&req.into_inner().worker_id)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type PullTasksStream = BoxStream<pb::TaskEnvelope>;

    async fn pull_tasks(
        &self,
        req: Request<pb::PullTasksRequest>,
    ) -> Result<Response<Self::PullTasksStream>, Status> {
        let rx = self
            .scheduler
            .connect(&req.into_inner().worker_id)
            .await
            .map_err(|e| status(&e))?;
        let stream = ReceiverStream::new(rx).map(|d| {
            Ok(pb::TaskEnvelope {
                kind: Some(match d {
                    Delivery::Assign { spec_json, ticket } => {
                        pb::task_envelope::Kind::Assign(pb::TaskAssignment {
                            spec_json: spec_json.into_bytes().into(),
                            ticket_body: ticket.body,
                            ticket_signature_hex: ticket.signature_hex,
                        })
                    }
                    Delivery::Cancel { task_id, reason } => {
                        pb::task_envelope::Kind::Cancel(pb::TaskCancel { task_id, reason })
                    }
                }),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_progress(
        &self,
        req: Request<pb::ProgressReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        self.scheduler
            .report_progress(&r.worker_id, &r.task_id, &r.phase, r.done, r.total)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_result(
        &self,
        req: Request<pb::TaskResult>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let u = r.usage.unwrap_or_default();
        let report = TaskReport {
            ok: r.ok,
            error_kind: r.error_kind.chars().take(32).collect(),
            error: r.error.chars().take(4096).collect(),
            usage: TaskUsage {
                cpu_ms: u.cpu_ms,
                wall_ms: u.wall_ms,
                rows_in: u.rows_in,
                bytes_sent: u.bytes_sent,
                bytes_received: u.bytes_received,
                frames_sent: u.frames_sent,
                frames_received: u.frames_received,
                peak_rss_kb: u.peak_rss_kb,
            },
            result_size: r.result_size,
            result_location: r.result_location.chars().take(256).collect(),
        };
        self.scheduler
            .report_result(&r.worker_id, &r.task_id, report)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn create_dataset(
        &self,
        req: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let r = req.into_inner();
        required("dataset_id", &r.dataset_id)?;
        required("owner_party", &r.owner_party)?;
        required("location", &r.location)?;
        if r.location.contains('/') || r.location.contains('\\') || r.location.starts_with('.') {
            return Err(invalid(
                "location must be a plain file name inside the worker's dataset directory",
            ));
        }
        let d = DatasetRecord {
            dataset_id: r.dataset_id,
            owner_party: r.owner_party,
            location: r.location,
            description: r.description.chars().take(1024).collect(),
            declared_rows: r.declared_rows,
        };
        self.scheduler
            .store()
            .create_dataset(&d, self.now())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::Dataset {
            dataset_id: d.dataset_id,
            owner_party: d.owner_party,
            location: d.location,
            description: d.description,
            declared_rows: d.declared_rows,
        }))
    }

    async fn create_licence(
        &self,
        req: Request<pb::CreateLicenceRequest>,
    ) -> Result<Response<pb::Licence>, Status> {
        let r = req.into_inner();
        required("licensor", &r.licensor)?;
        required("licensee", &r.licensee)?;
        required("dataset_id", &r.dataset_id)?;
        let policy = UsagePolicy::from_json(&r.policy_json).map_err(|e| invalid(e.to_string()))?;
        let price = JobPrice {
            per_job_micros: r.price_per_job_micros,
            per_1k_rows_micros: r.price_per_1k_rows_micros,
            operator_share_bps: r.operator_share_bps,
        };
        price.validate().map_err(|e| invalid(e.to_string()))?;
        let dataset = self
            .scheduler
            .store()
            .dataset(&r.dataset_id)
            .await
            .map_err(store_status)?;
        if dataset.owner_party != r.licensor {
            return Err(invalid(format!(
                "dataset {} belongs to {}, who alone can license it",
                dataset.dataset_id, dataset.owner_party
            )));
        }
        if r.monthly_price_micros < 0 {
            return Err(invalid("monthly_price_micros must not be negative"));
        }
        let licence_id = self.scheduler.new_id("lic-");
        let l = LicenceRecord {
            licence_id: licence_id.clone(),
            licensor: r.licensor,
            licensee: r.licensee,
            dataset_id: r.dataset_id,
            policy,
            price,
            monthly_price_micros: r.monthly_price_micros,
        };
        let store = self.scheduler.store();
        store
            .create_licence(&l, self.now())
            .await
            .map_err(store_status)?;
        let l = store.licence(&licence_id).await.map_err(store_status)?;
        Ok(Response::new(licence_to_pb(&l)))
    }

    async fn get_licence(
        &self,
        req: Request<pb::LicenceRef>,
    ) -> Result<Response<pb::Licence>, Status> {
        let l = self
            .scheduler
            .store()
            .licence(&req.into_inner().licence_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(licence_to_pb(&l)))
    }

    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = req.into_inner();
        let groups = r
            .user_groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        let job = JobRequest {
            user: r.user,
            user_groups: groups,
            licence_id: r.licence_id,
            scene: if r.scene.is_empty() {
                "psi".into()
            } else {
                r.scene
            },
            buyer_party: r.buyer_party,
            buyer_dataset_id: r.buyer_dataset_id,
            buyer_columns: r.buyer_columns,
            provider_columns: r.provider_columns,
            mode: if r.mode.is_empty() {
                "intersection".into()
            } else {
                r.mode
            },
            key_case: if r.key_case.is_empty() {
                "preserve".into()
            } else {
                r.key_case
            },
            output: r.output,
        };
        let view = self.scheduler.submit(job).await.map_err(|e| status(&e))?;
        Ok(Response::new(job_to_pb(&view)))
    }

    async fn get_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let v = self
            .scheduler
            .job(&req.into_inner().job_id)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(job_to_pb(&v)))
    }

    type WatchJobStream = BoxStream<pb::Job>;

    async fn watch_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let rx = self
            .scheduler
            .watch(&req.into_inner().job_id)
            .await
            .map_err(|e| status(&e))?;
        // Ends after the first terminal state.
        let stream = futures::StreamExt::scan(WatchStream::new(rx), false, |done, v| {
            let out = if *done {
                None
            } else {
                *done = v.job.is_terminal();
                Some(Ok(job_to_pb(&v)))
            };
            futures::future::ready(out)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let user = req
            .metadata()
            .get("x-tessera-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let v = self
            .scheduler
            .cancel(&req.into_inner().job_id, &user)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(job_to_pb(&v)))
    }

    async fn deposit(&self, req: Request<pb::DepositRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        customer("account", &r.account)?;
        required("idempotency_key", &r.idempotency_key)?;
        if r.amount_micros <= 0 {
            return Err(invalid("amount_micros must be positive"));
        }
        let c = r.account.clone();
        // Vouchers are funded by the operator's marketing account; cash comes from outside.
        let (debit, credit) = match r.into.as_str() {
            "" | "cash" => (AccountKind::External, AccountKind::CustomerCash(c)),
            "recharge_voucher" => (
                AccountKind::OperatorMarketing,
                AccountKind::CustomerRechargeVoucher(c),
            ),
            "deduction_voucher" => (
                AccountKind::OperatorMarketing,
                AccountKind::CustomerDeductionVoucher(c),
            ),
            other => {
                return Err(invalid(format!(
                    "into {other:?} must be cash, recharge_voucher or deduction_voucher"
                )));
            }
        };
        let t = TransferSpec {
            id: derive_id(&["deposit", &r.idempotency_key]),
            debit: debit.name(),
            credit: credit.name(),
            amount_micros: r.amount_micros,
            job_id: None,
            memo: format!("deposit {}", r.idempotency_key),
        };
        self.scheduler
            .store()
            .post_transfers(&[t], self.now())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn list_usage(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::UsageList>, Status> {
        let events = self
            .scheduler
            .store()
            .usage_events()
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::UsageList {
            events: events
                .into_iter()
                .map(|e| pb::UsageEvent {
                    event_id: e.event_id,
                    job_id: e.job_id,
                    party: e.party,
                    metric: e.metric,
                    quantity: u64::try_from(e.quantity).unwrap_or(0),
                })
                .collect(),
        }))
    }

    async fn list_balances(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::BalanceList>, Status> {
        let store = self.scheduler.store();
        let balances = store.balances().await.map_err(store_status)?;
        let balanced = store.ledger_balanced().await.map_err(store_status)?;
        Ok(Response::new(pb::BalanceList {
            balances: balances
                .into_iter()
                .map(|b| pb::Balance {
                    account: b.account,
                    balance_micros: b.balance_micros,
                    held_micros: b.held_micros,
                })
                .collect(),
            balanced,
        }))
    }

    async fn list_transfers(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::TransferList>, Status> {
        let transfers = self
            .scheduler
            .store()
            .transfers()
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::TransferList {
            transfers: transfers
                .into_iter()
                .map(|t| pb::Transfer {
                    transfer_id: t.spec.id,
                    debit_account: t.spec.debit,
                    credit_account: t.spec.credit,
                    amount_micros: t.spec.amount_micros,
                    job_id: t.spec.job_id.unwrap_or_default(),
                    memo: t.spec.memo,
                    kind: t.kind,
                    pending_id: t.pending_id.unwrap_or_default(),
                    created_at_ms: t.created_at_ms,
                })
                .collect(),
        }))
    }

    async fn verify_audit(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::AuditVerification>, Status> {
        let v = self
            .scheduler
            .store()
            .verify_audit()
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::AuditVerification {
            ok: v.ok(),
            entries: v.entries,
            first_broken_seq: v.first_broken_seq.map(|s| u64::try_from(s).unwrap_or(0)),
            detail: v.detail,
        }))
    }

    async fn set_credit_limit(
        &self,
        req: Request<pb::CreditLimitRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        customer("customer", &r.customer)?;
        if r.limit_micros < 0 {
            return Err(invalid("limit_micros must not be negative"));
        }
        let store = self.scheduler.store();
        let account = AccountKind::CustomerCredit(r.customer.clone()).name();
        store
            .set_account_limit(&account, Some(-r.limit_micros))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn list_bills(
        &self,
        req: Request<pb::BillQuery>,
    ) -> Result<Response<pb::BillList>, Status> {
        let r = req.into_inner();
        let bills = self
            .scheduler
            .store()
            .bills(optional_filter(&r.customer), optional_filter(&r.period))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::BillList {
            bills: bills.into_iter().map(bill_to_pb).collect(),
        }))
    }

    async fn list_bill_lines(
        &self,
        req: Request<pb::BillRef>,
    ) -> Result<Response<pb::BillLineList>, Status> {
        let r = req.into_inner();
        required("bill_id", &r.bill_id)?;
        let lines = self
            .scheduler
            .store()
            .bill_lines(&r.bill_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::BillLineList {
            lines: lines.into_iter().map(line_to_pb).collect(),
        }))
    }

    async fn close_due_bills(
        &self,
        _req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::BillList>, Status> {
        let store = self.scheduler.store();
        let closed = store
            .close_due_bills(self.now())
            .await
            .map_err(store_status)?;
        let mut bills = Vec::new();
        for b in store.bills(None, None).await.map_err(store_status)? {
            if closed.contains(&b.bill_id) {
                bills.push(bill_to_pb(b));
            }
        }
        Ok(Response::new(pb::BillList { bills }))
    }

    async fn list_statements(
        &self,
        req: Request<pb::StatementQuery>,
    ) -> Result<Response<pb::StatementList>, Status> {
        let r = req.into_inner();
        let statements = self
            .scheduler
            .store()
            .statements(optional_filter(&r.provider))
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::StatementList {
            statements: statements.into_iter().map(statement_to_pb).collect(),
        }))
    }

    async fn payout(
        &self,
        req: Request<pb::PayoutRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        let r = req.into_inner();
        customer("provider", &r.provider)?;
        required("period", &r.period)?;
        tessera_accounting::bill::parse_period(&r.period).map_err(|e| invalid(e.to_string()))?;
        let st = self
            .scheduler
            .store()
            .payout(&r.provider, &r.period, self.now())
            .await
            .map_err(store_status)?;
        Ok(Response::new(statement_to_pb(st)))
    }

    async fn set_limit(&self, req: Request<pb::LimitRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let scope = match r.scope.as_str() {
            "platform" => LimitScope::Platform,
            "product" => {
                required("product", &r.product)?;
                LimitScope::Product(r.product)
            }
            "customer" => {
                customer("customer", &r.customer)?;
                if !r.product.is_empty() {
                    required("product", &r.product)?;
                }
                LimitScope::Customer(r.customer, optional_filter(&r.product).map(String::from))
            }
            other => {
                return Err(invalid(format!(
                    "scope {other:?} must be platform, product or customer"
                )));
            }
        };
        let config = LimitConfig {
            min_purchase_micros: r.min_purchase_micros,
            min_freeze_micros: r.min_freeze_micros,
            enabled: r.enabled,
        };
        self.scheduler
            .store()
            .set_limit(&scope, &config, self.now())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn set_whitelist(
        &self,
        req: Request<pb::WhitelistRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        customer("customer", &r.customer)?;
        self.scheduler
            .store()
            .set_whitelisted(&r.customer, r.listed, self.now())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn set_freeze(
        &self,
        req: Request<pb::FreezeRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        customer("customer", &r.customer)?;
        let manual = match r.action.as_str() {
            "freeze" => {
                required("reason", &r.reason)?;
                ManualFreeze::Frozen(r.reason)
            }
            "thaw" => ManualFreeze::Thawed,
            "clear" => ManualFreeze::None,
            other => {
                return Err(invalid(format!(
                    "action {other:?} must be freeze, thaw or clear"
                )));
            }
        };
        self.scheduler
            .store()
            .set_manual_freeze(&r.customer, &manual, self.now())
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn get_account_status(
        &self,
        req: Request<pb::AccountQuery>,
    ) -> Result<Response<pb::AccountStatus>, Status> {
        let r = req.into_inner();
        customer("customer", &r.customer)?;
        let product = if r.product.is_empty() {
            "psi".to_string()
        } else {
            r.product
        };
        let s = self
            .scheduler
            .store()
            .account_status(&r.customer, &product)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::AccountStatus {
            customer: s.customer,
            product: s.product,
            cash_micros: s.cash_micros,
            frozen: s.frozen,
            reason: s.reason,
            manual: s.manual,
        }))
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionView>, Status> {
        let r = req.into_inner();
        required("licence_id", &r.licence_id)?;
        customer("customer", &r.customer)?;
        let v = self
            .scheduler
            .store()
            .subscribe(&r.licence_id, &r.customer, r.months, self.now())
            .await
            .map_err(store_status)?;
        Ok(Response::new(subscription_to_pb(v)))
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::SubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionView>, Status> {
        let r = req.into_inner();
        required("licence_id", &r.licence_id)?;
        customer("customer", &r.customer)?;
        let v = self
            .scheduler
            .store()
            .unsubscribe(&r.licence_id, &r.customer, self.now())
            .await
            .map_err(store_status)?;
        Ok(Response::new(subscription_to_pb(v)))
    }
}
