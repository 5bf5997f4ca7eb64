//! Chronicle's HTTP surface: routes of API.md, JWT auth, problem+json errors, body limits.
//! Handlers make one call into the command service; this crate holds no SQL of its own
//! beyond the readiness probe.

// A problem is the answer itself, built once per failed request: boxing it gains nothing.
#![allow(clippy::result_large_err)]

pub mod audit_export;
pub mod auth;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
mod queries_commerce;
mod queries_money;
pub mod query;
mod routes;
mod routes_audit;
mod routes_devices;
mod routes_escrows;
mod routes_pots;
mod routes_telemetry;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};
use axum::Router;
use commands::CommandService;
use sqlx::PgPool;
use std::sync::Arc;
use tower_http::limit::RequestBodyLimitLayer;

pub use auth::AuthConfig;
pub use routes_audit::AuditEvent;

/// The largest command body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The command service.
    pub service: Arc<CommandService>,
    /// Token checking.
    pub auth: Arc<AuthConfig>,
    /// The database (readiness).
    pub pool: PgPool,
    /// Group commit of `POST /v1/telemetry`.
    pub telemetry: ingest::group::GroupWriter,
}

/// The whole HTTP router.
pub fn router(state: AppState) -> Router {
    use routes::*;
    let _ = metrics::handle();
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .route("/v1/accounts", post(open_account))
        .route("/v1/accounts/{id}/profile", patch(update_profile))
        .route("/v1/accounts/{id}/kyc", post(submit_kyc))
        .route("/v1/accounts/{id}/kyc/approve", post(approve_kyc))
        .route("/v1/accounts/{id}/kyc/reject", post(reject_kyc))
        .route("/v1/accounts/{id}/suspend", post(suspend_account))
        .route("/v1/accounts/{id}/reinstate", post(reinstate_account))
        .route("/v1/accounts/{id}/close", post(close_account))
        .route(
            "/v1/accounts/{id}/personal-data",
            delete(erase_personal_data),
        )
        .route("/v1/wallets", post(open_wallet))
        .route("/v1/wallets/{id}/deposits", post(deposit))
        .route("/v1/wallets/{id}/withdrawals", post(withdraw))
        .route("/v1/wallets/{id}/freeze", post(freeze))
        .route("/v1/wallets/{id}/unfreeze", post(unfreeze))
        .route("/v1/wallets/{id}/close", post(close_wallet))
        .route("/v1/transfers", post(transfer))
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{id}/pay", post(pay_order))
        .route("/v1/orders/{id}/ship", post(ship_order))
        .route("/v1/orders/{id}/confirm-delivery", post(confirm_delivery))
        .route("/v1/orders/{id}/cancel", post(cancel_order))
        .route("/v1/orders/{id}/refunds", post(refund_order))
        .merge(routes_escrows::router())
        .merge(routes_pots::router())
        .merge(routes_devices::router())
        .merge(queries_money::router())
        .merge(queries_commerce::router())
        .merge(routes_audit::router())
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(4 * MAX_BODY_BYTES))
        // Telemetry batches carry their own, larger body limit.
        .merge(routes_telemetry::router())
        // Outermost, so that every error answer, the body limit's included, is problem+json.
        .layer(axum::middleware::map_response(error::problems_everywhere))
        .with_state(state)
}
