//! The `Trade` gRPC service: the T/AI 123.12 trade flow (appendix A.1–A.3) as transport only.
//! Each method authenticates its caller and hands the JSON body to the scheduler's trade
//! service (`TradeService::call`), which parses it into the standard's request shape and asks
//! the one table (`tessera_auth`) about the resource the request names before it does
//! anything; the answer is the standard's `data` object as JSON. The REST routes
//! (`crate::tai`) call these methods.

use tessera_auth::Operation;
use tessera_proto::v1 as pb;
use tessera_proto::v1::trade_server::{Trade, TradeServer};
use tessera_scheduler::AccountService;
use tessera_scheduler::trade::TradeService;
use tonic::{Request, Response, Status};

use crate::error::{internal, status};

/// The `Trade` gRPC service.
#[derive(Debug, Clone)]
pub struct TradeGrpc {
    trade: TradeService,
    accounts: AccountService,
}

impl TradeGrpc {
    /// A service over the scheduler's trade and account services.
    pub fn new(trade: TradeService, accounts: AccountService) -> Self {
        Self { trade, accounts }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> TradeServer<Self> {
        TradeServer::new(self)
    }

    async fn call(
        &self,
        op: Operation,
        req: Request<pb::TaiRequest>,
    ) -> Result<Response<pb::TaiReply>, Status> {
        let who = crate::accounts::authenticate(&self.accounts, &req).await?;
        let v = self
            .trade
            .call(op, &who, req.get_ref().json.as_bytes())
            .await
            .map_err(|e| status(&e))?;
        serde_json::to_string(&v)
            .map(|json| Response::new(pb::TaiReply { json }))
            .map_err(internal)
    }
}

/// The trait's methods, each the operation of its name.
macro_rules! methods {
    ($($name:ident => $op:ident,)*) => {
        #[tonic::async_trait]
        impl Trade for TradeGrpc {
            $(
                async fn $name(
                    &self,
                    req: Request<pb::TaiRequest>,
                ) -> Result<Response<pb::TaiReply>, Status> {
                    self.call(Operation::$op, req).await
                }
            )*
        }
    };
}

methods! {
    register_data => RegisterData,
    publish_data => PublishData,
    publish_datasets => PublishDatasets,
    query_published_data => QueryPublishedData,
    revoke_published_data => RevokePublishedData,
    register_demand => RegisterDemand,
    publish_demand => PublishDemand,
    query_published_demand => QueryPublishedDemand,
    revoke_demand => RevokeDemand,
    query_matches => QueryMatches,
    confirm_demand => ConfirmDemand,
    query_demand_for_settlement => QueryDemandForSettlement,
    settlement => Settlement,
    query_settlement => QuerySettlement,
    deliver => Deliver,
    query_deliver_result => QueryDeliverResult,
    deliver_datasets => DeliverDatasets,
    update_licenses => UpdateLicenses,
    upload_data => UploadData,
    revoke_licenses => RevokeLicenses,
}

/// Calls trade operation `op` on a `Trade` client with the JSON body `json`: the one mapping
/// from an [`Operation`] to its `Trade` method on the client side (the CLI's `trade call`
/// and the tests use it).
///
/// # Errors
/// The call's status; `INVALID_ARGUMENT` for an operation that is not a trade operation.
pub async fn call_client<T>(
    t: &mut pb::trade_client::TradeClient<T>,
    op: Operation,
    json: String,
) -> Result<Response<pb::TaiReply>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let req = pb::TaiRequest { json };
    use Operation as O;
    match op {
        O::RegisterData => t.register_data(req).await,
        O::PublishData => t.publish_data(req).await,
        O::PublishDatasets => t.publish_datasets(req).await,
        O::QueryPublishedData => t.query_published_data(req).await,
        O::RevokePublishedData => t.revoke_published_data(req).await,
        O::RegisterDemand => t.register_demand(req).await,
        O::PublishDemand => t.publish_demand(req).await,
        O::QueryPublishedDemand => t.query_published_demand(req).await,
        O::RevokeDemand => t.revoke_demand(req).await,
        O::QueryMatches => t.query_matches(req).await,
        O::ConfirmDemand => t.confirm_demand(req).await,
        O::QueryDemandForSettlement => t.query_demand_for_settlement(req).await,
        O::Settlement => t.settlement(req).await,
        O::QuerySettlement => t.query_settlement(req).await,
        O::Deliver => t.deliver(req).await,
        O::QueryDeliverResult => t.query_deliver_result(req).await,
        O::DeliverDatasets => t.deliver_datasets(req).await,
        O::UpdateLicenses => t.update_licenses(req).await,
        O::UploadData => t.upload_data(req).await,
        O::RevokeLicenses => t.revoke_licenses(req).await,
        other => Err(Status::invalid_argument(format!(
            "{} is not a trade operation",
            other.name()
        ))),
    }
}
