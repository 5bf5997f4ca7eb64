//! Route handlers: extract, build the command, call the service, map the result.

use crate::error::Problem;
use crate::extract::CommandRequest;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use commands::accounts::{AccountAction, OpenAccount};
use commands::wallets::{Transfer, WalletAction};
use commands::{CommandError, CommandResult, Envelope};
use domain::account::Preferences;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

pub(crate) fn answer(result: Result<CommandResult, CommandError>) -> Response {
    match result {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::OK);
            let mut response = (status, Json(&r)).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", r.version)) {
                response.headers_mut().insert(header::ETAG, v);
            }
            response
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

/// An empty command body (`{}` or nothing).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

/// A body with a reason.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why.
    pub reason: String,
}

/// POST /v1/accounts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountBody {
    email: String,
    display_name: String,
    #[serde(default)]
    birth_date: Option<NaiveDate>,
    #[serde(default)]
    country: Option<String>,
    /// Admin only: the subject to bind the account to.
    #[serde(default)]
    subject: Option<String>,
}

#[utoipa::path(post, path = "/v1/accounts", tag = "commands", request_body = OpenAccountBody, params(CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn open_account(
    State(s): State<AppState>,
    req: CommandRequest<OpenAccountBody>,
) -> Response {
    let b = req.body;
    let input = OpenAccount {
        subject: b.subject,
        email: b.email,
        display_name: b.display_name,
        birth_date: b.birth_date,
        country: b.country,
    };
    let env = &req.env;
    answer(
        s.service
            .idempotent(env, || s.service.open_account(env, input))
            .await,
    )
}

/// PATCH /v1/accounts/{id}/profile.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    preferences: Option<Preferences>,
}

/// POST /v1/accounts/{id}/kyc.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KycBody {
    document_ref: String,
}

async fn account_action(s: &AppState, env: &Envelope, id: Uuid, action: AccountAction) -> Response {
    answer(
        s.service
            .idempotent(env, || s.service.account_command(env, id, action))
            .await,
    )
}

#[utoipa::path(patch, path = "/v1/accounts/{id}/profile", tag = "commands", request_body = ProfileBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn update_profile(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ProfileBody>,
) -> Response {
    let action = AccountAction::UpdateProfile {
        display_name: req.body.display_name,
        preferences: req.body.preferences,
    };
    account_action(&s, &req.env, id, action).await
}

#[utoipa::path(post, path = "/v1/accounts/{id}/kyc", tag = "commands", request_body = KycBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn submit_kyc(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<KycBody>,
) -> Response {
    account_action(
        &s,
        &req.env,
        id,
        AccountAction::SubmitKyc {
            document_ref: req.body.document_ref,
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/accounts/{id}/kyc/approve", tag = "commands", params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn approve_kyc(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    account_action(&s, &req.env, id, AccountAction::ApproveKyc).await
}

#[utoipa::path(post, path = "/v1/accounts/{id}/kyc/reject", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn reject_kyc(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    account_action(
        &s,
        &req.env,
        id,
        AccountAction::RejectKyc {
            reason: req.body.reason,
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/accounts/{id}/suspend", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn suspend_account(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    account_action(
        &s,
        &req.env,
        id,
        AccountAction::Suspend {
            reason: req.body.reason,
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/accounts/{id}/reinstate", tag = "commands", params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn reinstate_account(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    account_action(&s, &req.env, id, AccountAction::Reinstate).await
}

#[utoipa::path(post, path = "/v1/accounts/{id}/close", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn close_account(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    account_action(
        &s,
        &req.env,
        id,
        AccountAction::Close {
            reason: req.body.reason,
        },
    )
    .await
}

#[utoipa::path(delete, path = "/v1/accounts/{id}/personal-data", tag = "commands", params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn erase_personal_data(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    account_action(&s, &req.env, id, AccountAction::ErasePersonalData).await
}

/// POST /v1/wallets.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenWalletBody {
    currency: String,
    #[serde(default)]
    owner: Option<Uuid>,
}

#[utoipa::path(post, path = "/v1/wallets", tag = "commands", request_body = OpenWalletBody, params(CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn open_wallet(
    State(s): State<AppState>,
    req: CommandRequest<OpenWalletBody>,
) -> Response {
    let env = &req.env;
    let b = &req.body;
    answer(
        s.service
            .idempotent(env, || s.service.open_wallet(env, &b.currency, b.owner))
            .await,
    )
}

/// Deposits and withdrawals.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyBody {
    amount: i64,
    external_ref: String,
}

async fn wallet_action(s: &AppState, env: &Envelope, id: Uuid, action: WalletAction) -> Response {
    answer(
        s.service
            .idempotent(env, || s.service.wallet_command(env, id, action))
            .await,
    )
}

#[utoipa::path(post, path = "/v1/wallets/{id}/deposits", tag = "commands", request_body = MoneyBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn deposit(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<MoneyBody>,
) -> Response {
    let action = WalletAction::Deposit {
        amount: req.body.amount,
        external_ref: req.body.external_ref,
    };
    wallet_action(&s, &req.env, id, action).await
}

#[utoipa::path(post, path = "/v1/wallets/{id}/withdrawals", tag = "commands", request_body = MoneyBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn withdraw(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<MoneyBody>,
) -> Response {
    let action = WalletAction::Withdraw {
        amount: req.body.amount,
        external_ref: req.body.external_ref,
    };
    wallet_action(&s, &req.env, id, action).await
}

#[utoipa::path(post, path = "/v1/wallets/{id}/freeze", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn freeze(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    wallet_action(
        &s,
        &req.env,
        id,
        WalletAction::Freeze {
            reason: req.body.reason,
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/wallets/{id}/unfreeze", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn unfreeze(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    wallet_action(
        &s,
        &req.env,
        id,
        WalletAction::Unfreeze {
            reason: req.body.reason,
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/wallets/{id}/close", tag = "commands", params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn close_wallet(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    wallet_action(&s, &req.env, id, WalletAction::Close).await
}

/// POST /v1/transfers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    from_wallet: Uuid,
    to_wallet: Uuid,
    amount: i64,
    #[serde(default)]
    memo: Option<String>,
}

#[utoipa::path(post, path = "/v1/transfers", tag = "commands", request_body = TransferBody, params(CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn transfer(
    State(s): State<AppState>,
    req: CommandRequest<TransferBody>,
) -> Response {
    let b = req.body;
    let input = Transfer {
        from_wallet: b.from_wallet,
        to_wallet: b.to_wallet,
        amount: b.amount,
        memo: b.memo,
    };
    let env = &req.env;
    answer(
        s.service
            .idempotent(env, || s.service.transfer(env, input))
            .await,
    )
}

#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "the process is up")))]
pub(crate) async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

#[utoipa::path(get, path = "/ready", tag = "operations", responses((status = 200, description = "database reachable, migrations applied; each projector's position and parked events"), (status = 503, description = "not ready", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn ready(State(s): State<AppState>) -> Response {
    let expected = schemas::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64;
    let applied: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&s.pool)
            .await;
    match applied {
        Ok(n) if n >= expected => {
            // Parked events do not make the service unready (other streams stay current),
            // but they show here so that an operator sees them.
            let projectors = projections::status::brief(&s.pool)
                .await
                .unwrap_or_default();
            let parked: i64 = projectors.iter().map(|(_, _, p)| p).sum();
            let detail: serde_json::Map<String, serde_json::Value> = projectors
                .into_iter()
                .map(|(name, position, parked)| {
                    (name, json!({"position": position, "parked": parked}))
                })
                .collect();
            Json(json!({
                "status": "ready",
                "migrations": n,
                "parked_events": parked,
                "projections": detail,
            }))
            .into_response()
        }
        Ok(n) => Problem::new(
            503,
            "not_ready",
            format!("{n} of {expected} migrations applied"),
        )
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Problem::new(503, "not_ready", "the database is not reachable").into_response()
        }
    }
}

/// The headers every command accepts.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct CommandHeaders {
    /// Makes the command safe to retry: a repeat with the same key and body gets the first
    /// answer; the same key with another body is 422 `idempotency_key_reused`.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
    /// The version (ETag) the aggregate must be at, or 412.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

/// What a command answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum CommandResponses {
    /// Done.
    #[response(status = 200, description = "done: id, version and position")]
    Done(CommandAnswer),
    /// Created.
    #[response(status = 201, description = "created: id, version and position")]
    Created(CommandAnswer),
    /// 400.
    #[response(
        status = 400,
        description = "invalid input (with the field)",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
    /// 401.
    #[response(
        status = 401,
        description = "no or bad credentials",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    /// 403.
    #[response(
        status = 403,
        description = "not allowed for this subject",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    /// 404.
    #[response(
        status = 404,
        description = "unknown id",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    /// 409.
    #[response(
        status = 409,
        description = "concurrency conflict or uniqueness clash",
        content_type = "application/problem+json"
    )]
    Conflict(Problem),
    /// 412.
    #[response(
        status = 412,
        description = "If-Match failed",
        content_type = "application/problem+json"
    )]
    PreconditionFailed(Problem),
    /// 413.
    #[response(
        status = 413,
        description = "body over 64 KiB",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    /// 415.
    #[response(
        status = 415,
        description = "not application/json",
        content_type = "application/problem+json"
    )]
    UnsupportedMediaType(Problem),
    /// 422.
    #[response(
        status = 422,
        description = "business rule (code names it)",
        content_type = "application/problem+json"
    )]
    Rule(Problem),
}

/// A command's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandAnswer {
    /// The aggregate's (or transfer's) id.
    id: Uuid,
    /// The aggregate's version after the command.
    version: i64,
    /// The global log position of the last event written.
    position: i64,
}

/// One line of POST /v1/orders.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineBody {
    sku: String,
    description: String,
    quantity: i64,
    unit_price: i64,
}

/// POST /v1/orders.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    seller: Uuid,
    currency: String,
    lines: Vec<OrderLineBody>,
    #[serde(default)]
    use_escrow: bool,
}

/// Most lines an order body may carry before it is even looked at (the rule allows 100).
const MAX_LINES_READ: usize = 1_000;

#[utoipa::path(post, path = "/v1/orders", tag = "commands", request_body = PlaceOrderBody, params(CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn place_order(
    State(s): State<AppState>,
    req: CommandRequest<PlaceOrderBody>,
) -> Response {
    let b = req.body;
    if b.lines.len() > MAX_LINES_READ {
        return Problem::invalid("lines", "must have between 1 and 100 lines").into_response();
    }
    let lines = b
        .lines
        .into_iter()
        .map(|l| domain::order::OrderLine {
            sku: l.sku,
            description: l.description,
            quantity: l.quantity,
            unit_price: l.unit_price,
        })
        .collect();
    let input = commands::orders::PlaceOrder {
        seller: b.seller,
        currency: b.currency,
        lines,
        use_escrow: b.use_escrow,
    };
    let env = &req.env;
    answer(
        s.service
            .idempotent(env, || s.service.place_order(env, input))
            .await,
    )
}

async fn order_action(
    s: &AppState,
    env: &Envelope,
    id: Uuid,
    action: commands::orders::OrderAction,
) -> Response {
    answer(
        s.service
            .idempotent(env, || s.service.order_command(env, id, action))
            .await,
    )
}

/// POST /v1/orders/{id}/pay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayOrderBody {
    wallet: Uuid,
}

#[utoipa::path(post, path = "/v1/orders/{id}/pay", tag = "commands", request_body = PayOrderBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn pay_order(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<PayOrderBody>,
) -> Response {
    order_action(
        &s,
        &req.env,
        id,
        commands::orders::OrderAction::Pay {
            wallet: req.body.wallet,
        },
    )
    .await
}

/// POST /v1/orders/{id}/ship.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipOrderBody {
    carrier: String,
    tracking: String,
}

#[utoipa::path(post, path = "/v1/orders/{id}/ship", tag = "commands", request_body = ShipOrderBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn ship_order(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ShipOrderBody>,
) -> Response {
    let action = commands::orders::OrderAction::Ship {
        carrier: req.body.carrier,
        tracking: req.body.tracking,
    };
    order_action(&s, &req.env, id, action).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/confirm-delivery", tag = "commands", params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn confirm_delivery(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    order_action(
        &s,
        &req.env,
        id,
        commands::orders::OrderAction::ConfirmDelivery,
    )
    .await
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn cancel_order(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    order_action(
        &s,
        &req.env,
        id,
        commands::orders::OrderAction::Cancel {
            reason: req.body.reason,
        },
    )
    .await
}

/// POST /v1/orders/{id}/refunds.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    amount: i64,
    reason: String,
}

#[utoipa::path(post, path = "/v1/orders/{id}/refunds", tag = "commands", request_body = RefundBody, params(("id" = Uuid, Path, description = "aggregate id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
pub(crate) async fn refund_order(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<RefundBody>,
) -> Response {
    let action = commands::orders::OrderAction::Refund {
        amount: req.body.amount,
        reason: req.body.reason,
    };
    order_action(&s, &req.env, id, action).await
}
