//! The operator's HTTP routes beside gRPC, on the same port: `GET /metrics` (the Prometheus
//! text format, `tessera_scheduler::metrics`), the REST facade under `/api/v1` and its
//! OpenAPI document at `/openapi.json` ([`crate::rest`]). gRPC requests go to the `Operator` service as
//! before; the routes share its listener through tonic's axum router.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tessera_scheduler::Scheduler;

use crate::OperatorService;

/// The content type of what `prometheus-client` writes: the OpenMetrics text format (which
/// Prometheus scrapes natively; counters end in `_total`, the exposition in `# EOF`).
const PROMETHEUS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// gRPC (`Operator`) and the HTTP routes, as one router.
pub fn router(service: OperatorService, scheduler: Arc<Scheduler>) -> axum::Router {
    let metrics = axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(scheduler);
    let rest = crate::rest::router(service.clone());
    let trade = service.trade_server();
    tonic::service::Routes::new(service.into_server())
        .add_service(trade)
        .into_axum_router()
        .merge(metrics)
        .merge(rest)
        .fallback(unrouted)
}

/// A request no route serves: a gRPC `UNIMPLEMENTED` to a gRPC client, else the REST API's
/// 404 envelope.
async fn unrouted(request: axum::extract::Request) -> axum::response::Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no method {}", request.uri().path()))
            .into_http();
    }
    crate::rest::not_found(request.method(), request.uri().path())
}

async fn metrics(State(s): State<Arc<Scheduler>>) -> impl IntoResponse {
    match s.render_metrics().await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            text,
        ),
        Err(e) => {
            tracing::error!(error = %e, "could not read the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "metrics unavailable\n".to_owned(),
            )
        }
    }
}
