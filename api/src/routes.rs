//! Route handlers: extract, build the command, call the service, map the result.

use crate::error::Problem;
use crate::extract::{Caller, CommandRequest};
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
use uuid::Uuid;

fn answer(result: Result<CommandResult, CommandError>) -> Response {
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

fn with_etag(version: i64, body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// An empty command body (`{}` or nothing).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

/// A body with a reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: String,
}

/// POST /v1/accounts.
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    preferences: Option<Preferences>,
}

/// POST /v1/accounts/{id}/kyc.
#[derive(Debug, Deserialize)]
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

pub(crate) async fn approve_kyc(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    account_action(&s, &req.env, id, AccountAction::ApproveKyc).await
}

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

pub(crate) async fn reinstate_account(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    account_action(&s, &req.env, id, AccountAction::Reinstate).await
}

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

pub(crate) async fn erase_personal_data(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    account_action(&s, &req.env, id, AccountAction::ErasePersonalData).await
}

pub(crate) async fn get_account(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Caller(actor): Caller,
) -> Response {
    match s.service.get_account(&Envelope::new(actor), id).await {
        Ok(a) => {
            let st = &a.state;
            with_etag(
                a.version,
                json!({
                    "id": st.id,
                    "subject": st.subject,
                    "email": st.email,
                    "display_name": st.display_name,
                    "birth_date": st.birth_date,
                    "country": st.country,
                    "preferences": st.preferences,
                    "kyc_status": st.kyc,
                    "status": st.status,
                    "personal_data_erased": st.erased,
                    "version": a.version,
                }),
            )
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

/// POST /v1/wallets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenWalletBody {
    currency: String,
    #[serde(default)]
    owner: Option<Uuid>,
}

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
#[derive(Debug, Deserialize)]
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

pub(crate) async fn close_wallet(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    wallet_action(&s, &req.env, id, WalletAction::Close).await
}

/// A wallet as GET /v1/wallets/{id} returns it.
#[derive(Debug, Serialize)]
pub struct WalletView {
    id: Uuid,
    owner: Uuid,
    currency: String,
    balance: i64,
    held: i64,
    available: i64,
    status: domain::wallet::WalletStatus,
    version: i64,
}

pub(crate) async fn get_wallet(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Caller(actor): Caller,
) -> Response {
    match s.service.get_wallet(&Envelope::new(actor), id).await {
        Ok(w) => {
            let st = &w.state;
            let view = WalletView {
                id: st.id,
                owner: st.owner,
                currency: st.currency.map(String::from).unwrap_or_default(),
                balance: st.balance,
                held: st.held,
                available: st.available(),
                status: st.status,
                version: w.version,
            };
            with_etag(w.version, serde_json::to_value(view).unwrap_or_default())
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

/// POST /v1/transfers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    from_wallet: Uuid,
    to_wallet: Uuid,
    amount: i64,
    #[serde(default)]
    memo: Option<String>,
}

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

pub(crate) async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

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
        Ok(n) if n >= expected => Json(json!({"status": "ready", "migrations": n})).into_response(),
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
