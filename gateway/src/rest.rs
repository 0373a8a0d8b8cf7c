//! The REST facade (issue "Who is calling", item 6): every operation a user calls, as JSON
//! under `/api/v1/...`, on the operator's port beside gRPC, and the OpenAPI 3 document of it at
//! `GET /openapi.json` (generated from this code by `utoipa`).
//!
//! Transport only, like the gRPC service, and through it: each route parses its path, query
//! and body into the very request message of its RPC, hands it to [`OperatorService`] with the
//! `X-Auth-Token` header as the `x-auth-token` metadata, and answers in the T/AI 123.12
//! envelope (appendix A, e.g. table A.3): `{status, code, errorMsg, data}`, where `status` is
//! the HTTP status, `code` the error type (`OK` on success; otherwise the envelope code of the
//! one [`ApiCode`] table, which the status carries), `errorMsg` the message (empty on success)
//! and `data` the answer (`null` on failure). So authentication, the table of rules, the
//! services and the error codes are exactly those of gRPC.
//!
//! JSON follows the proto3 JSON mapping: lowerCamelCase field names, enums by name
//! (`"JOB_STATE_SUCCEEDED"`; on input also `"succeeded"`), a missing field is its default.
//! Money is integer micros. A body is at most [`BODY_BYTES_MAX`] bytes.
//!
//! `GET /api/v1/jobs/{jobId}/events` follows a job as server-sent events: one `job` event per
//! update (the job as `GET /api/v1/jobs/{jobId}` shows it) until a terminal state, or one
//! `error` event holding an envelope.
//!
//! The worker protocol (registration, heartbeats, tasks, reports) stays gRPC only: [`route_of`]
//! says which route serves each operation, and `None` for those.

use std::future::Future;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_auth::Operation;
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_server::Operator;
use tonic::Status;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::{ApiCode, OperatorService, TOKEN_METADATA, tai};

/// Largest request body accepted, in bytes.
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// The HTTP header carrying the caller's token (T/AI 123.12, table 4).
pub const TOKEN_HEADER: &str = "x-auth-token";

/// The envelope `code` of a success.
pub const OK_CODE: &str = "OK";

/// The T/AI 123.12 response envelope (appendix A, e.g. table A.3).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    /// The HTTP status.
    pub status: u16,
    /// `OK`, or the error type (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `QUOTA_EXHAUSTED`, ...).
    pub code: String,
    /// What went wrong (empty on success).
    pub error_msg: String,
    /// The answer (`null` on failure).
    pub data: Option<T>,
}

/// An envelope of a failure (`data` is `null`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEnvelope {
    /// The HTTP status.
    pub status: u16,
    /// The error type: an envelope code of the API code table.
    pub code: String,
    /// What went wrong.
    pub error_msg: String,
    /// Always `null`.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

fn envelope_response<T: Serialize>(status: u16, body: &Envelope<T>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match serde_json::to_vec(body) {
        Ok(bytes) => (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not encode an answer as JSON");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A success: 200 with `data`.
pub(crate) fn ok<T: Serialize>(data: T) -> Response {
    envelope_response(
        200,
        &Envelope {
            status: 200,
            code: OK_CODE.into(),
            error_msg: String::new(),
            data: Some(data),
        },
    )
}

/// The envelope of a failure of `code` with `message`.
fn error_envelope(code: ApiCode, message: &str) -> Envelope<()> {
    Envelope {
        status: code.http_status(),
        code: code.envelope_code().into(),
        error_msg: message.into(),
        data: None,
    }
}

/// A failure, mapped through the one [`ApiCode`] table.
pub(crate) fn fail(code: ApiCode, message: &str) -> Response {
    envelope_response(code.http_status(), &error_envelope(code, message))
}

/// A gRPC status as a REST failure.
pub(crate) fn fail_status(s: &Status) -> Response {
    fail(ApiCode::of_status(s), s.message())
}

/// The RPC's request with the caller's token (if the header holds a usable one).
pub(crate) fn request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(v) = headers.get(TOKEN_HEADER)
        && let Ok(m) = tonic::metadata::MetadataValue::try_from(v.as_bytes())
    {
        r.metadata_mut().insert(TOKEN_METADATA, m);
    }
    r
}

/// Calls a unary RPC with `message` and answers with its result.
async fn unary<T, R, F, Fut>(headers: &HeaderMap, message: T, call: F) -> Response
where
    R: Serialize,
    F: FnOnce(tonic::Request<T>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, Status>>,
{
    match call(request(headers, message)).await {
        Ok(r) => ok(r.into_inner()),
        Err(s) => fail_status(&s),
    }
}

/// How many bytes past a route's limit are still read (and discarded) before the 413 is sent.
///
/// A client such as `ureq` or `curl` writes its whole body before it reads the answer. Had the
/// operator answered and closed with the rest unread, the kernel would reset the connection and
/// the client would see `Broken pipe` or `Connection reset` instead of the 413.
pub const BODY_DRAIN_BYTES_MAX: u64 = 16 << 20;

/// How long a whole request body may take to arrive, and how long the discarding past the
/// limit may go on.
const BODY_READ_TIME: std::time::Duration = std::time::Duration::from_secs(120);
const BODY_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// The most bytes a route's body may hold (the state of [`read_body`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyBound(pub usize);

/// Middleware: reads the request body whole before the route sees it, at most `bound` bytes.
///
/// A longer body gets a 413 naming the limit, after the rest was read and discarded (up to
/// [`BODY_DRAIN_BYTES_MAX`] more bytes and [`BODY_DRAIN_TIME`]) so that the client gets the
/// answer rather than a reset connection; a body that cannot be read (the client went away, or
/// took longer than [`BODY_READ_TIME`]) a 400. Routes without a body (GET, or a path no route
/// serves) read an empty one.
pub(crate) async fn read_body(
    State(BodyBound(bound)): State<BodyBound>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen: u64 = 0;
    let deadline = tokio::time::Instant::now() + BODY_READ_TIME;
    let mut drain_deadline = None;
    let over = loop {
        let until = drain_deadline.unwrap_or(deadline);
        match tokio::time::timeout_at(until, stream.next()).await {
            Ok(None) => break seen > bound as u64,
            Ok(Some(Ok(chunk))) => {
                seen = seen.saturating_add(chunk.len() as u64);
                if seen <= bound as u64 {
                    kept.extend_from_slice(&chunk);
                } else if drain_deadline.is_none() {
                    kept = Vec::new();
                    drain_deadline = Some(tokio::time::Instant::now() + BODY_DRAIN_TIME);
                }
                if seen > (bound as u64).saturating_add(BODY_DRAIN_BYTES_MAX) {
                    break true;
                }
            }
            Ok(Some(Err(e))) => {
                return fail(
                    ApiCode::InvalidArgument,
                    &format!("the request body could not be read: {e}"),
                );
            }
            Err(_) if drain_deadline.is_some() => break true,
            Err(_) => {
                return fail(
                    ApiCode::InvalidArgument,
                    &format!(
                        "the request body did not arrive within {} s",
                        BODY_READ_TIME.as_secs()
                    ),
                );
            }
        }
    };
    if over {
        return fail(
            ApiCode::TooLarge,
            &format!("the request body is longer than this route takes (at most {bound} bytes)"),
        );
    }
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(kept));
    next.run(request).await
}

/// A request body as read, or why it could not be (e.g. over [`BODY_BYTES_MAX`]).
pub(crate) type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// A JSON body as `T` (`{}` when empty), or a 400 naming what is wrong.
fn parse_body<T: DeserializeOwned>(body: &Body) -> Result<T, Box<Response>> {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiCode::TooLarge
            } else {
                ApiCode::InvalidArgument
            };
            return Err(Box::new(fail(
                code,
                &format!(
                    "the request body could not be read (at most {BODY_BYTES_MAX} bytes): {}",
                    e.body_text()
                ),
            )));
        }
    };
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let bad = |e: &dyn std::fmt::Display| {
        Box::new(fail(
            ApiCode::InvalidArgument,
            &format!("the request body is not the JSON this route takes: {e}"),
        ))
    };
    // Only an object: serde would also map an array onto the fields by position, so no field
    // name would be checked.
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| bad(&e))?;
    if !value.is_object() {
        return Err(bad(&"it must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| bad(&e))
}

/// A query string as `T`, or a 400 naming what is wrong.
fn parse_query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, Box<Response>> {
    Query::<T>::try_from_uri(
        &format!("/?{}", raw.unwrap_or_default())
            .parse()
            .unwrap_or_default(),
    )
    .map(|q| q.0)
    .map_err(|e| {
        Box::new(fail(
            ApiCode::InvalidArgument,
            &format!(
                "the query string is not what this route takes: {}",
                e.body_text()
            ),
        ))
    })
}

/// Refuses a body field that names something other than the path does (empty: the path's).
fn agree(field: &mut String, from_path: String, name: &str) -> Result<(), Box<Response>> {
    if !field.is_empty() && *field != from_path {
        return Err(Box::new(fail(
            ApiCode::InvalidArgument,
            &format!("the body's {name} {field:?} differs from the path's {from_path:?}"),
        )));
    }
    *field = from_path;
    Ok(())
}

/// Unwraps a parse result or returns its failure response.
macro_rules! try_parse {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
}

/// A `POST` route whose JSON body is the RPC's request message.
macro_rules! body_route {
    ($fn:ident, $rpc:ident, $method:ident, $path:literal, $tag:literal, $req:ty => $resp:ty, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path($method, path = $path, tag = $tag, request_body = $req,
            responses((status = 200, description = "The answer, in the envelope", body = Envelope<$resp>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
            security(("token" = [])))]
        async fn $fn(State(s): State<OperatorService>, headers: HeaderMap, body: Body) -> Response {
            let message: $req = try_parse!(parse_body(&body));
            unary(&headers, message, |r| async move { s.$rpc(r).await }).await
        }
    };
}

/// A route whose one path parameter is the whole request message (`pb::$msg { $field }`).
macro_rules! path_route {
    ($fn:ident, $rpc:ident, $method:ident, $path:literal, $tag:literal, $param:literal: $what:literal,
     $msg:ident { $field:ident } => $resp:ty, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path($method, path = $path, tag = $tag,
            params(($param = String, Path, description = $what)),
            responses((status = 200, description = "The answer, in the envelope", body = Envelope<$resp>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
            security(("token" = [])))]
        async fn $fn(
            State(s): State<OperatorService>,
            headers: HeaderMap,
            Path($field): Path<String>,
        ) -> Response {
            unary(&headers, pb::$msg { $field }, |r| async move { s.$rpc(r).await }).await
        }
    };
}

/// A `GET` route of an RPC whose request carries nothing.
macro_rules! empty_route {
    ($fn:ident, $rpc:ident, $path:literal, $tag:literal, $resp:ty, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(get, path = $path, tag = $tag,
            responses((status = 200, description = "The answer, in the envelope", body = Envelope<$resp>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
            security(("token" = [])))]
        async fn $fn(State(s): State<OperatorService>, headers: HeaderMap) -> Response {
            unary(&headers, pb::ListRequest {}, |r| async move { s.$rpc(r).await }).await
        }
    };
}

// ---- operator, datasets, licences ----

empty_route!(
    get_operator_info,
    get_operator_info,
    "/api/v1/operator",
    "operator",
    pb::OperatorInfo,
    "The operator's calendar zone and version."
);

body_route!(
    create_dataset,
    create_dataset,
    post,
    "/api/v1/datasets",
    "datasets",
    pb::CreateDatasetRequest => pb::Dataset,
    "Registers a dataset of a party the caller owns."
);

path_route!(
    data_item_log,
    data_item_log,
    get,
    "/api/v1/datasets/{datasetId}/log",
    "datasets",
    "datasetId": "The dataset",
    DatasetRef { dataset_id } => pb::OperationLog,
    "A data item's operation log (trusted data space manual §4.3): every audit entry about the dataset, its licences and their jobs, with a head signed now that covers them and the node's key."
);

path_route!(
    get_sealing_key,
    get_sealing_key,
    post,
    "/api/v1/datasets/{datasetId}/sealing-key",
    "datasets",
    "datasetId": "The dataset",
    DatasetRef { dataset_id } => pb::SealingKey,
    "The dataset's sealing key for the tee scene (AES-256-GCM, 32 bytes hex), made on the first call and the same after, to the owner of the dataset's party; the file sealed with it opens only inside an attested enclave the licence allows (`tessera dataset seal`)."
);

/// Paging of a listing: `pageSize` (0: 100; at most 1000) and the `nextPageToken` of the
/// previous page.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DatasetParams {
    /// Only this party's datasets.
    owner_party: String,
    /// Rows per page (0: 100; at most 1000).
    page_size: u32,
    /// The previous page's `nextPageToken`.
    page_token: String,
}

/// The datasets the caller may see, a page at a time.
#[utoipa::path(get, path = "/api/v1/datasets", tag = "datasets", params(DatasetParams),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::DatasetList>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn list_datasets(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let p: DatasetParams = try_parse!(parse_query(uri.query()));
    let message = pb::DatasetQuery {
        page: Some(pb::PageQuery {
            page_size: p.page_size,
            page_token: p.page_token,
        }),
        owner_party: p.owner_party,
    };
    unary(
        &headers,
        message,
        |r| async move { s.list_datasets(r).await },
    )
    .await
}

body_route!(
    create_licence,
    create_licence,
    post,
    "/api/v1/licences",
    "licences",
    pb::CreateLicenceRequest => pb::Licence,
    "Licenses a dataset of the caller's party to a user or group under a usage policy (T/AI 123.12 A.48-A.50 shape)."
);

/// Filters of the licence listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LicenceParams {
    /// Only licences granted by this party.
    licensor: String,
    /// Only licences granted to this user or group.
    licensee: String,
    /// Only licences of this dataset.
    dataset_id: String,
    /// Rows per page (0: 100; at most 1000).
    page_size: u32,
    /// The previous page's `nextPageToken`.
    page_token: String,
}

/// The licences the caller may see, a page at a time.
#[utoipa::path(get, path = "/api/v1/licences", tag = "licences", params(LicenceParams),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::LicenceList>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn list_licences(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let p: LicenceParams = try_parse!(parse_query(uri.query()));
    let message = pb::LicenceQuery {
        page: Some(pb::PageQuery {
            page_size: p.page_size,
            page_token: p.page_token,
        }),
        licensor: p.licensor,
        licensee: p.licensee,
        dataset_id: p.dataset_id,
    };
    unary(
        &headers,
        message,
        |r| async move { s.list_licences(r).await },
    )
    .await
}

path_route!(
    get_licence,
    get_licence,
    get,
    "/api/v1/licences/{licenceId}",
    "licences",
    "licenceId": "The licence id",
    LicenceRef { licence_id } => pb::Licence,
    "A licence with its policy and remaining counts."
);

/// Orders or renews a monthly term of a licence (operations manual §1.4.5); `licenceId` in
/// the body may be left out.
#[utoipa::path(post, path = "/api/v1/licences/{licenceId}/subscription", tag = "licences",
    params(("licenceId" = String, Path, description = "The licence id")),
    request_body = pb::SubscriptionRequest,
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::SubscriptionView>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn subscribe(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    Path(licence_id): Path<String>,
    body: Body,
) -> Response {
    let mut message: pb::SubscriptionRequest = try_parse!(parse_body(&body));
    try_parse!(agree(&mut message.licence_id, licence_id, "licenceId"));
    unary(&headers, message, |r| async move { s.subscribe(r).await }).await
}

/// Whose term a cancellation ends.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CustomerParams {
    /// The customer (empty: the caller).
    customer: String,
}

/// Ends a licence's monthly term, refunding what the manual says.
#[utoipa::path(delete, path = "/api/v1/licences/{licenceId}/subscription", tag = "licences",
    params(("licenceId" = String, Path, description = "The licence id"), CustomerParams),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::SubscriptionView>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn unsubscribe(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    Path(licence_id): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let p: CustomerParams = try_parse!(parse_query(uri.query()));
    let message = pb::SubscriptionRequest {
        licence_id,
        customer: p.customer,
        months: 0,
    };
    unary(&headers, message, |r| async move { s.unsubscribe(r).await }).await
}

// ---- jobs ----

body_route!(
    submit_job,
    submit_job,
    post,
    "/api/v1/jobs",
    "jobs",
    pb::SubmitJobRequest => pb::Job,
    "Submits a job as the caller under a licence; a refusal is a job in state JOB_STATE_REFUSED with its reasons."
);

/// Filters of the job listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JobParams {
    /// Only this user's jobs.
    user: String,
    /// Only jobs in this state (`succeeded` or `JOB_STATE_SUCCEEDED`, ...).
    state: String,
    /// Only jobs under this licence.
    licence_id: String,
    /// Rows per page (0: 100; at most 1000).
    page_size: u32,
    /// The previous page's `nextPageToken`.
    page_token: String,
}

/// The jobs the caller may see, newest last, a page at a time.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobParams),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::JobList>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn list_jobs(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let p: JobParams = try_parse!(parse_query(uri.query()));
    let state = if p.state.is_empty() {
        0
    } else {
        let wrapped = serde_json::json!({ "state": p.state });
        match serde_json::from_value::<pb::JobQuery>(wrapped) {
            Ok(q) => q.state,
            Err(e) => return fail(ApiCode::InvalidArgument, &e.to_string()),
        }
    };
    let message = pb::JobQuery {
        page: Some(pb::PageQuery {
            page_size: p.page_size,
            page_token: p.page_token,
        }),
        user: p.user,
        state,
        licence_id: p.licence_id,
    };
    unary(&headers, message, |r| async move { s.list_jobs(r).await }).await
}

path_route!(
    get_job,
    get_job,
    get,
    "/api/v1/jobs/{jobId}",
    "jobs",
    "jobId": "The job id",
    JobRef { job_id } => pb::Job,
    "A job as the caller may see it."
);

path_route!(
    cancel_job,
    cancel_job,
    post,
    "/api/v1/jobs/{jobId}/cancel",
    "jobs",
    "jobId": "The job id",
    JobRef { job_id } => pb::Job,
    "Cancels a job (its buyer only); a job past its delivery point is still charged."
);

/// Follows a job as server-sent events: a `job` event (the job as JSON) per update until a
/// terminal state, or an `error` event holding an envelope. A failure before the stream
/// starts (no token, not the caller's job) is an ordinary envelope.
#[utoipa::path(get, path = "/api/v1/jobs/{jobId}/events", tag = "jobs",
    params(("jobId" = String, Path, description = "The job id")),
    responses((status = 200, content_type = "text/event-stream", body = String,
        description = "`event: job` with `data:` a Job as JSON, per update; `event: error` with an envelope"),
        (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn watch_job(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Response {
    let stream = match s.watch_job(request(&headers, pb::JobRef { job_id })).await {
        Ok(r) => r.into_inner(),
        Err(st) => return fail_status(&st),
    };
    let events = stream.map(|item| {
        let (name, text) = match item {
            Ok(job) => ("job", serde_json::to_string(&job)),
            Err(st) => {
                let code = ApiCode::of_status(&st);
                (
                    "error",
                    serde_json::to_string(&error_envelope(code, st.message())),
                )
            }
        };
        let text = text.unwrap_or_else(|e| {
            format!(r#"{{"status":500,"code":"INTERNAL","errorMsg":"{e}","data":null}}"#)
        });
        Ok::<_, std::convert::Infallible>(Event::default().event(name).data(text))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

// ---- money ----

body_route!(
    deposit,
    deposit,
    post,
    "/api/v1/deposits",
    "money",
    pb::DepositRequest => pb::Ack,
    "Deposits cash into the caller's account (vouchers: the operator), once per idempotency key."
);
empty_route!(
    list_balances,
    list_balances,
    "/api/v1/balances",
    "money",
    pb::BalanceList,
    "The balances of the caller's accounts (the operator: all)."
);
empty_route!(
    list_transfers,
    list_transfers,
    "/api/v1/transfers",
    "money",
    pb::TransferList,
    "The ledger transfers of the caller's accounts (the operator: all)."
);
empty_route!(
    list_usage,
    list_usage,
    "/api/v1/usage",
    "money",
    pb::UsageList,
    "The usage events of the caller's jobs and parties (the operator: all)."
);

/// Filters of the bill listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct BillParams {
    /// Only this customer's bills.
    customer: String,
    /// Only this month's (`YYYY-MM`).
    period: String,
}

/// Monthly bills the caller may see.
#[utoipa::path(get, path = "/api/v1/bills", tag = "bills", params(BillParams),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::BillList>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn list_bills(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let p: BillParams = try_parse!(parse_query(uri.query()));
    let message = pb::BillQuery {
        customer: p.customer,
        period: p.period,
    };
    unary(&headers, message, |r| async move { s.list_bills(r).await }).await
}

path_route!(
    list_bill_lines,
    list_bill_lines,
    get,
    "/api/v1/bills/{billId}/lines",
    "bills",
    "billId": "The bill id (`YYYY-MM:customer`)",
    BillRef { bill_id } => pb::BillLineList,
    "The lines of one of the caller's bills."
);

/// Closes the bills whose month and late window have passed (the operator).
#[utoipa::path(post, path = "/api/v1/bills/close-due", tag = "bills",
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::BillList>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn close_due_bills(State(s): State<OperatorService>, headers: HeaderMap) -> Response {
    unary(&headers, pb::ListRequest {}, |r| async move {
        s.close_due_bills(r).await
    })
    .await
}

/// Whose statements.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StatementParams {
    /// Only this provider party's statements.
    provider: String,
}

/// Provider statements of closed months the caller may see.
#[utoipa::path(get, path = "/api/v1/statements", tag = "bills", params(StatementParams),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::StatementList>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn list_statements(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let p: StatementParams = try_parse!(parse_query(uri.query()));
    unary(
        &headers,
        pb::StatementQuery {
            provider: p.provider,
        },
        |r| async move { s.list_statements(r).await },
    )
    .await
}

body_route!(
    payout,
    payout,
    post,
    "/api/v1/payouts",
    "bills",
    pb::PayoutRequest => pb::Statement,
    "Pays a provider its part of a closed month, once (the operator)."
);
body_route!(
    set_credit_limit,
    set_credit_limit,
    post,
    "/api/v1/credit-limits",
    "limits",
    pb::CreditLimitRequest => pb::Ack,
    "Sets a customer's credit line (the operator)."
);
body_route!(
    set_limit,
    set_limit,
    post,
    "/api/v1/limits",
    "limits",
    pb::LimitRequest => pb::Ack,
    "Sets a minimum purchase or freeze amount, platform, product or customer wide (the operator; manual §3.6.5)."
);
body_route!(
    set_whitelist,
    set_whitelist,
    post,
    "/api/v1/whitelist",
    "limits",
    pb::WhitelistRequest => pb::Ack,
    "Puts a customer on or off the freeze white list (the operator)."
);
body_route!(
    set_freeze,
    set_freeze,
    post,
    "/api/v1/freezes",
    "limits",
    pb::FreezeRequest => pb::Ack,
    "Freezes or clears a customer's account by hand (the operator)."
);

/// Whose account status.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AccountParams {
    /// The customer (empty: the caller).
    customer: String,
    /// The product whose limits apply (e.g. `psi`).
    product: String,
}

/// A customer's cash and freeze state.
#[utoipa::path(get, path = "/api/v1/account-status", tag = "limits", params(AccountParams),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::AccountStatus>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn get_account_status(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let p: AccountParams = try_parse!(parse_query(uri.query()));
    let message = pb::AccountQuery {
        customer: p.customer,
        product: p.product,
    };
    unary(&headers, message, |r| async move {
        s.get_account_status(r).await
    })
    .await
}

empty_route!(
    verify_audit,
    verify_audit,
    "/api/v1/audit/verify",
    "audit",
    pb::AuditVerification,
    "Verifies the audit chain, its signed heads and the tables it re-derives (the operator)."
);

/// Which workers.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WorkerParams {
    /// Only this party's workers.
    party: String,
    /// Rows per page (0: 100; at most 1000).
    page_size: u32,
    /// The previous page's `nextPageToken`.
    page_token: String,
}

/// The workers of the caller's parties (the operator: all), with liveness.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", params(WorkerParams),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::WorkerList>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn list_workers(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let p: WorkerParams = try_parse!(parse_query(uri.query()));
    let message = pb::WorkerQuery {
        page: Some(pb::PageQuery {
            page_size: p.page_size,
            page_token: p.page_token,
        }),
        party: p.party,
    };
    unary(
        &headers,
        message,
        |r| async move { s.list_workers(r).await },
    )
    .await
}

// ---- accounts ----

body_route!(
    create_user,
    create_user,
    post,
    "/api/v1/users",
    "accounts",
    pb::CreateUserRequest => pb::User,
    "Creates a user with roles (the operator)."
);
empty_route!(
    list_users,
    list_users,
    "/api/v1/users",
    "accounts",
    pb::UserList,
    "The users (the operator; others see themselves)."
);

path_route!(
    disable_user,
    disable_user,
    post,
    "/api/v1/users/{userId}/disable",
    "accounts",
    "userId": "The user id",
    UserRef { user_id } => pb::Ack,
    "Disables a user: its tokens, its parties' registration tokens and workers stop at once."
);

path_route!(
    enable_user,
    enable_user,
    post,
    "/api/v1/users/{userId}/enable",
    "accounts",
    "userId": "The user id",
    UserRef { user_id } => pb::Ack,
    "Enables a disabled user again."
);

/// Adds a user to a group (the operator records memberships; a request never claims one).
#[utoipa::path(put, path = "/api/v1/groups/{groupId}/members/{userId}", tag = "accounts",
    params(("groupId" = String, Path, description = "The group id"),
        ("userId" = String, Path, description = "The user id")),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::GroupMemberChange>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn add_group_member(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    Path((group_id, user_id)): Path<(String, String)>,
) -> Response {
    unary(
        &headers,
        pb::GroupMemberRequest { group_id, user_id },
        |r| async move { s.add_group_member(r).await },
    )
    .await
}

/// Removes a user from a group.
#[utoipa::path(delete, path = "/api/v1/groups/{groupId}/members/{userId}", tag = "accounts",
    params(("groupId" = String, Path, description = "The group id"),
        ("userId" = String, Path, description = "The user id")),
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::GroupMemberChange>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn remove_group_member(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    Path((group_id, user_id)): Path<(String, String)>,
) -> Response {
    unary(
        &headers,
        pb::GroupMemberRequest { group_id, user_id },
        |r| async move { s.remove_group_member(r).await },
    )
    .await
}

body_route!(
    create_token,
    create_token,
    post,
    "/api/v1/tokens",
    "accounts",
    pb::CreateTokenRequest => pb::IssuedToken,
    "Issues an API token (shown once in `secretToken`; stored as a hash)."
);
empty_route!(
    list_tokens,
    list_tokens,
    "/api/v1/tokens",
    "accounts",
    pb::TokenList,
    "The caller's tokens and its parties' registration tokens, without secrets."
);

path_route!(
    revoke_token,
    revoke_token,
    delete,
    "/api/v1/tokens/{tokenId}",
    "accounts",
    "tokenId": "The token id",
    TokenRef { token_id } => pb::Ack,
    "Revokes a token of the caller's (or of its parties'; the operator: any)."
);

body_route!(
    create_party,
    create_party,
    post,
    "/api/v1/parties",
    "accounts",
    pb::CreatePartyRequest => pb::Party,
    "Creates a party owned by a user (the operator)."
);

/// Issues a registration token for a party the caller owns; its workers present it once.
/// `partyId` in the body may be left out.
#[utoipa::path(post, path = "/api/v1/parties/{partyId}/registration-tokens", tag = "accounts",
    params(("partyId" = String, Path, description = "The party id")),
    request_body = pb::RegistrationTokenRequest,
    responses((status = 200, description = "The answer, in the envelope", body = Envelope<pb::IssuedToken>), (status = "default", description = "A failure, in the envelope", body = ErrorEnvelope)),
    security(("token" = [])))]
async fn issue_registration_token(
    State(s): State<OperatorService>,
    headers: HeaderMap,
    Path(party_id): Path<String>,
    body: Body,
) -> Response {
    let mut message: pb::RegistrationTokenRequest = try_parse!(parse_body(&body));
    try_parse!(agree(&mut message.party_id, party_id, "partyId"));
    unary(&headers, message, |r| async move {
        s.issue_registration_token(r).await
    })
    .await
}

/// The route serving `op`: method and path template (`None`: gRPC only, the worker
/// protocol). An exhaustive match, so a new operation must say.
pub fn route_of(op: Operation) -> Option<(Method, &'static str)> {
    use Operation as O;
    let r = |m: Method, p: &'static str| Some((m, p));
    match op {
        O::RegisterWorker
        | O::Heartbeat
        | O::PullTasks
        | O::ReportProgress
        | O::ReportResult
        | O::ReportDelivered
        | O::RenewCertificate
        | O::TeeChallenge
        | O::TeeAttest
        | O::ReleaseDatasetKey
        | O::Dealer => None,
        O::GetOperatorInfo => r(Method::GET, "/api/v1/operator"),
        O::CreateDataset => r(Method::POST, "/api/v1/datasets"),
        O::ListDatasets => r(Method::GET, "/api/v1/datasets"),
        O::DataItemLog => r(Method::GET, "/api/v1/datasets/{datasetId}/log"),
        O::GetSealingKey => r(Method::POST, "/api/v1/datasets/{datasetId}/sealing-key"),
        O::CreateLicence => r(Method::POST, "/api/v1/licences"),
        O::ListLicences => r(Method::GET, "/api/v1/licences"),
        O::GetLicence => r(Method::GET, "/api/v1/licences/{licenceId}"),
        O::Subscribe => r(Method::POST, "/api/v1/licences/{licenceId}/subscription"),
        O::Unsubscribe => r(Method::DELETE, "/api/v1/licences/{licenceId}/subscription"),
        O::SubmitJob => r(Method::POST, "/api/v1/jobs"),
        O::ListJobs => r(Method::GET, "/api/v1/jobs"),
        O::GetJob => r(Method::GET, "/api/v1/jobs/{jobId}"),
        O::CancelJob => r(Method::POST, "/api/v1/jobs/{jobId}/cancel"),
        O::WatchJob => r(Method::GET, "/api/v1/jobs/{jobId}/events"),
        O::Deposit => r(Method::POST, "/api/v1/deposits"),
        O::ListBalances => r(Method::GET, "/api/v1/balances"),
        O::ListTransfers => r(Method::GET, "/api/v1/transfers"),
        O::ListUsage => r(Method::GET, "/api/v1/usage"),
        O::ListBills => r(Method::GET, "/api/v1/bills"),
        O::ListBillLines => r(Method::GET, "/api/v1/bills/{billId}/lines"),
        O::CloseDueBills => r(Method::POST, "/api/v1/bills/close-due"),
        O::ListStatements => r(Method::GET, "/api/v1/statements"),
        O::Payout => r(Method::POST, "/api/v1/payouts"),
        O::SetCreditLimit => r(Method::POST, "/api/v1/credit-limits"),
        O::SetLimit => r(Method::POST, "/api/v1/limits"),
        O::SetWhitelist => r(Method::POST, "/api/v1/whitelist"),
        O::SetFreeze => r(Method::POST, "/api/v1/freezes"),
        O::GetAccountStatus => r(Method::GET, "/api/v1/account-status"),
        O::VerifyAudit => r(Method::GET, "/api/v1/audit/verify"),
        O::ListWorkers => r(Method::GET, "/api/v1/workers"),
        O::CreateUser => r(Method::POST, "/api/v1/users"),
        O::ListUsers => r(Method::GET, "/api/v1/users"),
        O::DisableUser => r(Method::POST, "/api/v1/users/{userId}/disable"),
        O::EnableUser => r(Method::POST, "/api/v1/users/{userId}/enable"),
        O::AddGroupMember => r(Method::PUT, "/api/v1/groups/{groupId}/members/{userId}"),
        O::RemoveGroupMember => r(Method::DELETE, "/api/v1/groups/{groupId}/members/{userId}"),
        O::CreateToken => r(Method::POST, "/api/v1/tokens"),
        O::ListTokens => r(Method::GET, "/api/v1/tokens"),
        O::RevokeToken => r(Method::DELETE, "/api/v1/tokens/{tokenId}"),
        O::CreateParty => r(Method::POST, "/api/v1/parties"),
        O::IssueRegistrationToken => r(
            Method::POST,
            "/api/v1/parties/{partyId}/registration-tokens",
        ),
        O::RegisterData => r(Method::POST, "/v1/provider/registerData"),
        O::PublishData => r(Method::POST, "/v1/provider/publishData"),
        O::PublishDatasets => r(Method::POST, "/v1/provider/publishDatasets"),
        O::QueryPublishedData => r(Method::GET, "/v1/provider/queryPublishedData"),
        O::RevokePublishedData => r(Method::POST, "/v1/provider/revokePublishedData"),
        O::UploadData => r(Method::POST, "/v1/provider/uploadData"),
        O::RegisterDemand => r(Method::POST, "/v1/consumer/registerDemand"),
        O::PublishDemand => r(Method::POST, "/v1/consumer/publishDemand"),
        O::QueryPublishedDemand => r(Method::GET, "/v1/consumer/queryPublishedDemand"),
        O::RevokeDemand => r(Method::POST, "/v1/consumer/revokeDemand"),
        O::QueryMatches => r(Method::GET, "/v1/trade/queryMatches"),
        O::ConfirmDemand => r(Method::POST, "/v1/trade/confirmDemand"),
        O::QueryDemandForSettlement => r(Method::GET, "/v1/trade/queryDemandForSettlement"),
        O::Settlement => r(Method::POST, "/v1/trade/settlement"),
        O::QuerySettlement => r(Method::GET, "/v1/trade/querySettlement"),
        O::Deliver => r(Method::POST, "/v1/trade/deliver"),
        O::QueryDeliverResult => r(Method::GET, "/v1/trade/queryDeliverResult"),
        O::DeliverDatasets => r(Method::POST, "/v1/trade/deliverDatasets"),
        O::UpdateLicenses => r(Method::POST, "/v1/trade/updateLicenses"),
        O::RevokeLicenses => r(Method::POST, "/v1/trade/revokeLicenses"),
    }
}

/// The OpenAPI document of the REST facade.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Tessera operator API",
        description = "Every user operation of the Tessera operator as JSON, each answer in the \
            T/AI 123.12 envelope {status, code, errorMsg, data}. Authenticate with the \
            X-Auth-Token header (an API token, `tessera token create`).",
    ),
    paths(
        get_operator_info, create_dataset, list_datasets, data_item_log, get_sealing_key,
        create_licence, list_licences,
        get_licence, subscribe, unsubscribe, submit_job, list_jobs, get_job, cancel_job,
        watch_job, deposit, list_balances, list_transfers, list_usage, list_bills,
        list_bill_lines, close_due_bills, list_statements, payout, set_credit_limit, set_limit,
        set_whitelist, set_freeze, get_account_status, verify_audit, list_workers, create_user,
        list_users, disable_user, enable_user, add_group_member, remove_group_member, create_token,
        list_tokens, revoke_token, create_party, issue_registration_token,
        tai::register_data, tai::publish_data, tai::publish_datasets, tai::query_published_data,
        tai::revoke_published_data, tai::register_demand, tai::publish_demand,
        tai::query_published_demand, tai::revoke_demand, tai::query_matches, tai::confirm_demand,
        tai::query_demand_for_settlement, tai::settlement, tai::query_settlement, tai::deliver,
        tai::query_deliver_result, tai::deliver_datasets, tai::update_licenses, tai::upload_data,
        tai::revoke_licenses,
    ),
    components(schemas(ErrorEnvelope, tai::TaiObject)),
    modifiers(&TokenScheme),
)]
pub struct ApiDoc;

/// Declares the `X-Auth-Token` header as the `token` security scheme.
struct TokenScheme;

impl utoipa::Modify for TokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Token"))),
        );
    }
}

/// The OpenAPI document as JSON.
async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response(),
        Err(e) => fail(ApiCode::Internal, &format!("the OpenAPI document: {e}")),
    }
}

/// Anything else under `/api/v1`: a 404 envelope.
async fn no_route(method: Method, uri: axum::http::Uri) -> Response {
    // Inside the nest, the path comes without its prefix.
    not_found(&method, &format!("/api/v1{}", uri.path()))
}

/// The 404 envelope of a request no route serves.
pub(crate) fn not_found(method: &Method, path: &str) -> Response {
    let shown: String = path.chars().take(200).collect();
    fail(
        ApiCode::NotFound,
        &format!("no route {method} {shown} (the REST API is under /api/v1; see /openapi.json)"),
    )
}

/// Any failure of the API not already in the envelope (an extractor's plain-text rejection,
/// e.g. a path that is not UTF-8 or a body that is not UTF-8) becomes the envelope of the
/// nearest code, with the rejection's text as the message.
pub(crate) async fn enveloped(response: Response) -> Response {
    let typed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/event-stream"));
    if typed || response.status().is_success() {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let code = match response.status().as_u16() {
        401 => ApiCode::Unauthenticated,
        403 => ApiCode::PermissionDenied,
        404 => ApiCode::NotFound,
        405 => ApiCode::MethodNotAllowed,
        413 => ApiCode::TooLarge,
        500..=599 => ApiCode::Internal,
        _ => ApiCode::InvalidArgument,
    };
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = match (&allow, text.trim()) {
        (Some(a), "") => format!("this route takes {}", a.to_str().unwrap_or_default()),
        (_, t) => t.to_owned(),
    };
    let mut enveloped = fail(code, &message);
    if let Some(a) = allow {
        enveloped.headers_mut().insert(header::ALLOW, a);
    }
    enveloped
}

/// The REST routes and `/openapi.json`, over `service`.
pub fn router(service: OperatorService) -> Router {
    let service_for_tai = service.clone();
    let api = Router::new()
        .route("/operator", get(get_operator_info))
        .route("/datasets", post(create_dataset).get(list_datasets))
        .route("/datasets/{datasetId}/log", get(data_item_log))
        .route("/datasets/{datasetId}/sealing-key", post(get_sealing_key))
        .route("/licences", post(create_licence).get(list_licences))
        .route("/licences/{licenceId}", get(get_licence))
        .route(
            "/licences/{licenceId}/subscription",
            post(subscribe).delete(unsubscribe),
        )
        .route("/jobs", post(submit_job).get(list_jobs))
        .route("/jobs/{jobId}", get(get_job))
        .route("/jobs/{jobId}/cancel", post(cancel_job))
        .route("/jobs/{jobId}/events", get(watch_job))
        .route("/deposits", post(deposit))
        .route("/balances", get(list_balances))
        .route("/transfers", get(list_transfers))
        .route("/usage", get(list_usage))
        .route("/bills", get(list_bills))
        .route("/bills/close-due", post(close_due_bills))
        .route("/bills/{billId}/lines", get(list_bill_lines))
        .route("/statements", get(list_statements))
        .route("/payouts", post(payout))
        .route("/credit-limits", post(set_credit_limit))
        .route("/limits", post(set_limit))
        .route("/whitelist", post(set_whitelist))
        .route("/freezes", post(set_freeze))
        .route("/account-status", get(get_account_status))
        .route("/audit/verify", get(verify_audit))
        .route("/workers", get(list_workers))
        .route("/users", post(create_user).get(list_users))
        .route("/users/{userId}/disable", post(disable_user))
        .route("/users/{userId}/enable", post(enable_user))
        .route(
            "/groups/{groupId}/members/{userId}",
            put(add_group_member).delete(remove_group_member),
        )
        .route("/tokens", post(create_token).get(list_tokens))
        .route("/tokens/{tokenId}", delete(revoke_token))
        .route("/parties", post(create_party))
        .route(
            "/parties/{partyId}/registration-tokens",
            post(issue_registration_token),
        )
        .fallback(no_route)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            BodyBound(BODY_BYTES_MAX),
            read_body,
        ))
        .layer(axum::middleware::map_response(enveloped))
        .with_state(service);
    Router::new()
        .nest("/api/v1", api)
        .nest("/v1", crate::tai::router(service_for_tai))
        .route("/openapi.json", get(openapi_json))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the table is in the OpenAPI document with its method, and the document
    /// names no route the table lacks.
    #[test]
    fn the_document_and_the_route_table_agree() {
        let doc = ApiDoc::openapi();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (m, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
            ] {
                if op.is_some() {
                    documented.insert(format!("{m} {path}"));
                }
            }
        }
        let routed: std::collections::BTreeSet<String> = Operation::ALL
            .iter()
            .filter_map(|&op| route_of(op))
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        assert_eq!(documented, routed);
    }
}
