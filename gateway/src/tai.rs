//! The T/AI 123.12 REST interfaces of appendix A.1–A.3, at the resource path the standard
//! prescribes, `{api-version}/{module}/{function}`: `/v1/provider/…` (A.1, data provider),
//! `/v1/consumer/…` (A.2, data user), `/v1/trade/…` (A.3, circulation and trade), with the
//! standard's methods, field names, `X-Auth-Token` header and `{status, code, errorMsg, data}`
//! envelope. Each route calls its method of the `Trade` gRPC service (`crate::trade`): a
//! `POST` route passes its JSON body, a `GET` route its query parameters as an object of
//! strings. Tessera's additions, named as such: `/v1/provider/uploadData` (the file `/deliver`
//! hands out) and `/v1/trade/queryMatches` (keyword and category matching).

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use tessera_proto::v1 as pb;
use tessera_proto::v1::trade_server::Trade;
use utoipa::ToSchema;

use crate::rest::{Body, BodyBound, fail, fail_status, ok, read_body, request};
use crate::{ApiCode, OperatorService};

/// Largest `/uploadData` body, in bytes (a 64 MiB file in base64, and the JSON around it).
pub const UPLOAD_BODY_BYTES_MAX: usize = 90 << 20;
/// Largest body of every other T/AI route, in bytes.
pub const TAI_BODY_BYTES_MAX: usize = 1 << 20;

/// A JSON object with the standard's field names (the route's table in T/AI 123.12
/// appendix A).
#[derive(Debug, ToSchema)]
pub struct TaiObject(pub serde_json::Value);

fn body_text(body: &Body) -> Result<String, Box<Response>> {
    match body {
        Ok(b) => String::from_utf8(b.to_vec()).map_err(|_| {
            Box::new(fail(
                ApiCode::InvalidArgument,
                "the request body is not UTF-8",
            ))
        }),
        Err(e) => Err(Box::new(fail(
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiCode::TooLarge
            } else {
                ApiCode::InvalidArgument
            },
            &format!("the request body could not be read: {}", e.body_text()),
        ))),
    }
}

fn query_object(uri: &axum::http::Uri) -> Result<String, Box<Response>> {
    let pairs = url_pairs(uri).map_err(|e| {
        Box::new(fail(
            ApiCode::InvalidArgument,
            &format!("the query string cannot be read: {e}"),
        ))
    })?;
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        if map
            .insert(k.clone(), serde_json::Value::String(v))
            .is_some()
        {
            return Err(Box::new(fail(
                ApiCode::InvalidArgument,
                &format!("the query parameter {k:?} is given twice"),
            )));
        }
    }
    Ok(serde_json::Value::Object(map).to_string())
}

/// The `application/x-www-form-urlencoded` pairs of a URI's query string.
fn url_pairs(uri: &axum::http::Uri) -> Result<Vec<(String, String)>, String> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| e.body_text())
}

async fn answer(r: Result<tonic::Response<pb::TaiReply>, tonic::Status>) -> Response {
    match r {
        Ok(reply) => match serde_json::from_str::<serde_json::Value>(&reply.into_inner().json) {
            Ok(v) => ok(v),
            Err(e) => fail(
                ApiCode::Internal,
                &format!("an answer that is not JSON: {e}"),
            ),
        },
        Err(s) => fail_status(&s),
    }
}

/// A `POST` route: the JSON body is the request.
macro_rules! post_route {
    ($fn:ident, $rpc:ident, $path:literal, $table:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "T/AI 123.12",
            request_body(content = TaiObject, description = $table),
            responses((status = 200, description = "The standard's `data`, in the envelope", body = crate::rest::Envelope<TaiObject>), (status = "default", description = "A failure, in the envelope", body = crate::rest::ErrorEnvelope)),
            security(("token" = [])))]
        pub(crate) async fn $fn(
            State(s): State<OperatorService>,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            let json = match body_text(&body) {
                Ok(t) => t,
                Err(r) => return *r,
            };
            answer(s.trade.$rpc(request(&headers, pb::TaiRequest { json })).await).await
        }
    };
}

/// A `GET` route: the query parameters are the request.
macro_rules! get_route {
    ($fn:ident, $rpc:ident, $path:literal, $table:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(get, path = $path, tag = "T/AI 123.12", description = $table,
            responses((status = 200, description = "The standard's `data`, in the envelope", body = crate::rest::Envelope<TaiObject>), (status = "default", description = "A failure, in the envelope", body = crate::rest::ErrorEnvelope)),
            security(("token" = [])))]
        pub(crate) async fn $fn(
            State(s): State<OperatorService>,
            headers: HeaderMap,
            uri: axum::http::Uri,
        ) -> Response {
            let json = match query_object(&uri) {
                Ok(t) => t,
                Err(r) => return *r,
            };
            answer(s.trade.$rpc(request(&headers, pb::TaiRequest { json })).await).await
        }
    };
}

post_route!(
    register_data,
    register_data,
    "/v1/provider/registerData",
    "Table A.2: owner, key_words, dataID, description, data_type, data_format, data_size, data_category, collection_time, country, provider_url?, resource_url, ownership_confirm, public_key, subscribe_confirm?",
    "A.1.1: registers a dataset of a party the provider owns; answers `registrationID`."
);
post_route!(
    publish_data,
    publish_data,
    "/v1/provider/publishData",
    "Table A.5: owner, registrationID, free, price?",
    "A.1.2: publishes a registration; answers `publish_status`."
);
post_route!(
    publish_datasets,
    publish_datasets,
    "/v1/provider/publishDatasets",
    "Table A.8: owner (the fixed `tessera-trusted-data-space`), dataID, registrationID (the fixed `TDS-CONTROLLED`), description?, protocol, isOpen?, source?, key_words, free, price?",
    "A.1.3: publishes a controlled dataset; answers `publish_status`."
);
get_route!(
    query_published_data,
    query_published_data,
    "/v1/provider/queryPublishedData",
    "Table A.11: registrationID, dataID (required for controlled data)",
    "A.1.4: a published item: owner, publish_status, free, price (and Tessera's key_words, data_category, data_type, description, licensor_public_key)."
);
post_route!(
    revoke_published_data,
    revoke_published_data,
    "/v1/provider/revokePublishedData",
    "Table A.14: registrationID, dataID (required for controlled data)",
    "A.1.5: revokes a publication; running jobs under its controlled deliveries end as the provider's doing; answers `publish_status` and `ended_jobs`."
);
post_route!(
    upload_data,
    upload_data,
    "/v1/provider/uploadData",
    "Tessera: registrationID, data_file (base64, at most 64 MiB)",
    "Tessera's addition: the file `/deliver` hands out for a registration."
);
post_route!(
    register_demand,
    register_demand,
    "/v1/consumer/registerDemand",
    "Table A.17: demander, data_category, key_words, description?, data_type, subscribe_confirm?, and Tessera's public_key (X25519, base64) for the delivery key",
    "A.2.1: registers a demand; answers `demandID`."
);
post_route!(
    publish_demand,
    publish_demand,
    "/v1/consumer/publishDemand",
    "Table A.20: demander, demandID",
    "A.2.2: publishes a demand; answers `publish_status`."
);
get_route!(
    query_published_demand,
    query_published_demand,
    "/v1/consumer/queryPublishedDemand",
    "Table A.23: demandID",
    "A.2.3: a demand: publish_status, data_category, key_words, description, data_type."
);
post_route!(
    revoke_demand,
    revoke_demand,
    "/v1/consumer/revokeDemand",
    "Table A.26: demander, demandID",
    "A.2.4: revokes a demand (not once confirmed); answers `publish_status`."
);
get_route!(
    query_matches,
    query_matches,
    "/v1/trade/queryMatches",
    "Tessera: demandID",
    "Tessera's addition: the published data matching a demand by key words and categories, best first."
);
post_route!(
    confirm_demand,
    confirm_demand,
    "/v1/trade/confirmDemand",
    "Table A.29: demander, demandID, registrationID, dataID (required for controlled data)",
    "A.3.1: binds one published dataset to the demand; answers confirmID, owner, demander, dataID, demandID, price."
);
get_route!(
    query_demand_for_settlement,
    query_demand_for_settlement,
    "/v1/trade/queryDemandForSettlement",
    "Table A.32: confirmID",
    "A.3.2: a confirmation with its settlement_status."
);
post_route!(
    settlement,
    settlement,
    "/v1/trade/settlement",
    "Table A.35: confirmID",
    "A.3.3: pays the confirmed price; answers payment_proof, settlement_status, licenses (table A.37), private_key (the delivery key sealed to the buyer with HPKE)."
);
get_route!(
    query_settlement,
    query_settlement,
    "/v1/trade/querySettlement",
    "Table A.39: confirmID",
    "A.3.4: the settlement, as `/settlement` answered it."
);
post_route!(
    deliver,
    deliver,
    "/v1/trade/deliver",
    "Table A.42: licenses (the licence of table A.37)",
    "A.3.5: the data file encrypted for the licensee (data_file, base64) and the signed delivery_proof."
);
get_route!(
    query_deliver_result,
    query_deliver_result,
    "/v1/trade/queryDeliverResult",
    "Table A.45: confirmID",
    "A.3.6: the latest delivery proof."
);
post_route!(
    deliver_datasets,
    deliver_datasets,
    "/v1/trade/deliverDatasets",
    "Table A.48: licenses, dataID, policyName, relUsers, startDate?, endDate?, useScenes (and Tessera's price_per_job?, price_per_1k_rows?, operator_share_bps?)",
    "A.3.7: the usage policy of a controlled dataset; answers the policy of table A.52 and `licenceID`, the licence jobs run under."
);
post_route!(
    revoke_licenses,
    revoke_licenses,
    "/v1/trade/revokeLicenses",
    "Tessera: owner, licensesID or policyId (exactly one), reason?",
    "Tessera's addition: the licensor's owner revokes a licence (with every policy delivered under it) or one policy, for good; jobs running under it end at once as the provider's doing, new ones are refused; answers `revoked`, `kind`, `licences`, `ended_jobs`."
);
post_route!(
    update_licenses,
    update_licenses,
    "/v1/trade/updateLicenses",
    "Table A.54: owner, dataID, and Tessera's licensesID?, license_term?",
    "A.3.8: reissues a licence (the old one is superseded); answers `licenses`."
);

/// The T/AI routes (nested under `/v1`).
pub(crate) fn router(service: OperatorService) -> Router {
    Router::new()
        .route("/provider/registerData", post(register_data))
        .route("/provider/publishData", post(publish_data))
        .route("/provider/publishDatasets", post(publish_datasets))
        .route("/provider/queryPublishedData", get(query_published_data))
        .route("/provider/revokePublishedData", post(revoke_published_data))
        .route("/consumer/registerDemand", post(register_demand))
        .route("/consumer/publishDemand", post(publish_demand))
        .route(
            "/consumer/queryPublishedDemand",
            get(query_published_demand),
        )
        .route("/consumer/revokeDemand", post(revoke_demand))
        .route("/trade/queryMatches", get(query_matches))
        .route("/trade/confirmDemand", post(confirm_demand))
        .route(
            "/trade/queryDemandForSettlement",
            get(query_demand_for_settlement),
        )
        .route("/trade/settlement", post(settlement))
        .route("/trade/querySettlement", get(query_settlement))
        .route("/trade/deliver", post(deliver))
        .route("/trade/queryDeliverResult", get(query_deliver_result))
        .route("/trade/deliverDatasets", post(deliver_datasets))
        .route("/trade/updateLicenses", post(update_licenses))
        .route("/trade/revokeLicenses", post(revoke_licenses))
        .fallback(no_route)
        .layer(axum::extract::DefaultBodyLimit::max(TAI_BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            BodyBound(TAI_BODY_BYTES_MAX),
            read_body,
        ))
        // The upload route is merged after the 1 MiB layers so that only its own apply.
        .merge(
            Router::new()
                .route("/provider/uploadData", post(upload_data))
                .layer(axum::extract::DefaultBodyLimit::max(UPLOAD_BODY_BYTES_MAX))
                .layer(axum::middleware::from_fn_with_state(
                    BodyBound(UPLOAD_BODY_BYTES_MAX),
                    read_body,
                )),
        )
        .layer(axum::middleware::map_response(crate::rest::enveloped))
        .with_state(service)
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    crate::rest::not_found(&method, &format!("/v1{}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_like_forms() {
        let uri: axum::http::Uri = "/q?registrationID=reg-1&dataID=a%20b+c&x=".parse().unwrap();
        assert_eq!(
            url_pairs(&uri).unwrap(),
            vec![
                ("registrationID".into(), "reg-1".into()),
                ("dataID".into(), "a b c".into()),
                ("x".into(), String::new()),
            ]
        );
        assert!(url_pairs(&"/q".parse().unwrap()).unwrap().is_empty());
    }
}
