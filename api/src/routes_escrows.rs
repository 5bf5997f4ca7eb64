//! Escrow routes: open, fund, release, refund, raise and resolve a dispute.

use crate::extract::CommandRequest;
use crate::routes::{answer, CommandHeaders, CommandResponses, NoBody, ReasonBody};
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use commands::escrows::{EscrowAction, OpenEscrow};
use commands::Envelope;
use serde::Deserialize;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(paths(
    open_escrow,
    fund_escrow,
    release_escrow,
    refund_escrow,
    raise_dispute,
    resolve_dispute
))]
pub struct Api;

/// These routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/escrows", post(open_escrow))
        .route("/v1/escrows/{id}/fund", post(fund_escrow))
        .route("/v1/escrows/{id}/release", post(release_escrow))
        .route("/v1/escrows/{id}/refund", post(refund_escrow))
        .route("/v1/escrows/{id}/disputes", post(raise_dispute))
        .route("/v1/escrows/{id}/disputes/resolve", post(resolve_dispute))
}

/// POST /v1/escrows.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenEscrowBody {
    buyer_wallet: Uuid,
    seller: Uuid,
    amount: i64,
    terms: String,
    #[serde(default)]
    release_after: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/v1/escrows", tag = "commands", request_body = OpenEscrowBody, params(CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn open_escrow(State(s): State<AppState>, req: CommandRequest<OpenEscrowBody>) -> Response {
    let b = req.body;
    let input = OpenEscrow {
        buyer_wallet: b.buyer_wallet,
        seller: b.seller,
        amount: b.amount,
        terms: b.terms,
        release_after: b.release_after,
        expires_at: b.expires_at,
    };
    let env = &req.env;
    answer(
        s.service
            .idempotent(env, || s.service.open_escrow(env, input))
            .await,
    )
}

async fn act(s: &AppState, env: &Envelope, id: Uuid, action: EscrowAction) -> Response {
    answer(
        s.service
            .idempotent(env, || s.service.escrow_command(env, id, action))
            .await,
    )
}

#[utoipa::path(post, path = "/v1/escrows/{id}/fund", tag = "commands", params(("id" = Uuid, Path), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn fund_escrow(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    act(&s, &req.env, id, EscrowAction::Fund).await
}

#[utoipa::path(post, path = "/v1/escrows/{id}/release", tag = "commands", params(("id" = Uuid, Path), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn release_escrow(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    act(&s, &req.env, id, EscrowAction::Release).await
}

#[utoipa::path(post, path = "/v1/escrows/{id}/refund", tag = "commands", params(("id" = Uuid, Path), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn refund_escrow(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    act(&s, &req.env, id, EscrowAction::Refund).await
}

#[utoipa::path(post, path = "/v1/escrows/{id}/disputes", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn raise_dispute(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    act(
        &s,
        &req.env,
        id,
        EscrowAction::RaiseDispute {
            reason: req.body.reason,
        },
    )
    .await
}

/// POST /v1/escrows/{id}/disputes/resolve.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    to_seller: i64,
    to_buyer: i64,
}

#[utoipa::path(post, path = "/v1/escrows/{id}/disputes/resolve", tag = "commands", request_body = ResolveBody, params(("id" = Uuid, Path), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn resolve_dispute(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ResolveBody>,
) -> Response {
    let action = EscrowAction::Resolve {
        to_seller: req.body.to_seller,
        to_buyer: req.body.to_buyer,
    };
    act(&s, &req.env, id, action).await
}
