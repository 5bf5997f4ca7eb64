//! Queries of the money read models: accounts, wallets with their ledgers, transfers and the
//! platform totals. Each handler checks the caller and the parameters, waits for
//! `X-Min-Position`, makes one call into `projections::money` and answers with `X-Position`.

use crate::error::Problem;
use crate::extract::Caller;
use crate::query::{
    fresh, not_found, page, reply, unavailable, MinPosition, Params, QueryHeaders, QueryProblems,
    Viewer,
};
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, NaiveDate, Utc};
use commands::Role;
use projections::money::{accounts, stats, wallets, QueryError};
use projections::page::Page;
use serde::Deserialize;
use std::future::Future;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(
        get_account,
        get_wallet,
        list_wallets,
        wallet_ledger,
        get_transfer,
        get_stats
    ),
    components(schemas(
        AccountView,
        WalletView,
        WalletPage,
        LedgerEntry,
        LedgerPage,
        TransferView,
        TransferLeg,
        PlatformStats,
        CurrencyTotals
    ))
)]
pub struct Api;

/// These routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/wallets", get(list_wallets))
        .route("/v1/wallets/{id}", get(get_wallet))
        .route("/v1/wallets/{id}/ledger", get(wallet_ledger))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route("/v1/stats", get(get_stats))
}

/// A path id, or a 400 naming it.
fn path_id(field: &str, raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::invalid(field, format!("{field} must be a UUID")))
}

/// Reads one row of read model `projector` once it has applied `X-Min-Position`; returns the
/// position it stood at and the row. Without `X-Min-Position`, a miss waits until the read
/// model has caught up with the log's head and reads again, so that a 404 means "no such id"
/// rather than "not applied yet" (an id a command just answered is never reported unknown);
/// a read model still behind after the wait answers 404 as well.
async fn one<T, F, Fut>(
    s: &AppState,
    projector: &str,
    min: MinPosition,
    what: &str,
    fetch: F,
) -> Result<(i64, T), Problem>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Option<T>, sqlx::Error>>,
{
    let at = fresh(s, projector, min).await?;
    if let Some(row) = fetch().await.map_err(unavailable)? {
        return Ok((at, row));
    }
    if min.0.is_none() {
        let head = projections::money::log_head(&s.pool)
            .await
            .map_err(unavailable)?;
        if let Some(head) = head {
            let at = match fresh(s, projector, MinPosition(Some(head))).await {
                Ok(at) => at,
                // Still behind after the wait: the id is unknown as far as it can tell.
                Err(p) if p.status == 504 => return Err(not_found(what)),
                Err(p) => return Err(p),
            };
            if let Some(row) = fetch().await.map_err(unavailable)? {
                return Ok((at, row));
            }
        }
    }
    Err(not_found(what))
}

/// A failed list query: a cursor of another list is the client's fault.
fn list_problem(e: QueryError) -> Problem {
    match e {
        QueryError::BadCursor => {
            Problem::invalid("cursor", "cursor is not one this list handed out")
        }
        QueryError::Db(e) => unavailable(e),
    }
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{id}",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the account"), QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the account's profile, KYC and lifecycle status (owner, admin, auditor); ETag is its version", body = AccountView,
         headers(("X-Position" = i64, description = "the position the read model had applied"), ("ETag" = String, description = "the account's version"))),
        QueryProblems
    )
)]
async fn get_account(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = path_id("id", &raw)?;
    let viewer = Viewer::of(&s, &actor).await?;
    let (at, account) = one(&s, accounts::NAME, min, "account", || {
        accounts::account(&s.pool, id)
    })
    .await?;
    viewer.check(&[account.id])?;
    Ok(reply(at, Some(account.version), &account))
}

#[utoipa::path(
    get,
    path = "/v1/wallets/{id}",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the wallet"), QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the wallet (owner, admin, auditor); ETag is its version", body = WalletView,
         headers(("X-Position" = i64, description = "the position the read model had applied"), ("ETag" = String, description = "the wallet's version"))),
        QueryProblems
    )
)]
async fn get_wallet(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = path_id("id", &raw)?;
    let viewer = Viewer::of(&s, &actor).await?;
    let (at, wallet) = one(&s, wallets::NAME, min, "wallet", || {
        wallets::wallet(&s.pool, id)
    })
    .await?;
    viewer.check(&[wallet.owner])?;
    Ok(reply(at, Some(wallet.version), &wallet))
}

/// GET /v1/wallets: whose wallets, which ones, which page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WalletsQuery {
    /// The owning account (default: the caller's own). Customers may only name their own.
    owner: Option<Uuid>,
    /// Only wallets in this ISO 4217 currency.
    currency: Option<String>,
    /// Only wallets in this status: `active`, `frozen` or `closed`.
    status: Option<String>,
    /// Items per page, 1-500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/wallets",
    tag = "queries",
    params(WalletsQuery, QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the owner's wallets in the order they were opened", body = WalletPage,
         headers(("X-Position" = i64, description = "the position the read model had applied"))),
        QueryProblems
    )
)]
async fn list_wallets(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Params(q): Params<WalletsQuery>,
) -> Result<Response, Problem> {
    let request = page(q.limit, q.cursor.as_deref())?;
    if let Some(c) = &q.currency {
        if !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(Problem::invalid(
                "currency",
                "currency must be an ISO 4217 code such as EUR",
            ));
        }
    }
    if let Some(st) = &q.status {
        if !matches!(st.as_str(), "active" | "frozen" | "closed") {
            return Err(Problem::invalid(
                "status",
                "status must be active, frozen or closed",
            ));
        }
    }
    let owner = match q.owner {
        Some(owner) => {
            Viewer::of(&s, &actor).await?.check(&[owner])?;
            Some(owner)
        }
        None => s
            .service
            .account_of(&actor.subject)
            .await
            .map_err(Problem::from)?,
    };
    let at = fresh(&s, wallets::NAME, min).await?;
    let answer = match owner {
        Some(owner) => {
            let filter = wallets::WalletFilter {
                owner,
                currency: q.currency,
                status: q.status,
            };
            wallets::wallets_of(&s.pool, &filter, &request)
                .await
                .map_err(list_problem)?
        }
        // No account yet: no wallets.
        None => Page {
            items: Vec::new(),
            next_cursor: None,
        },
    };
    Ok(reply(at, None, &answer))
}

/// GET /v1/wallets/{id}/ledger: which page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LedgerQuery {
    /// Items per page, 1-500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/wallets/{id}/ledger",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the wallet"), LedgerQuery, QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the wallet's money movements, newest first, with the running balance (owner, admin, auditor)", body = LedgerPage,
         headers(("X-Position" = i64, description = "the position the read model had applied"))),
        QueryProblems
    )
)]
async fn wallet_ledger(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
    Params(q): Params<LedgerQuery>,
) -> Result<Response, Problem> {
    let id = path_id("id", &raw)?;
    let request = page(q.limit, q.cursor.as_deref())?;
    let viewer = Viewer::of(&s, &actor).await?;
    let (at, wallet) = one(&s, wallets::NAME, min, "wallet", || {
        wallets::wallet(&s.pool, id)
    })
    .await?;
    viewer.check(&[wallet.owner])?;
    let entries = wallets::ledger(&s.pool, id, &request)
        .await
        .map_err(list_problem)?;
    Ok(reply(at, None, &entries))
}

#[utoipa::path(
    get,
    path = "/v1/transfers/{id}",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the transfer"), QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the transfer and its two legs (the owners of either wallet, admin, auditor)", body = TransferView,
         headers(("X-Position" = i64, description = "the position the read model had applied"))),
        QueryProblems
    )
)]
async fn get_transfer(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = path_id("id", &raw)?;
    let viewer = Viewer::of(&s, &actor).await?;
    let (at, transfer) = one(&s, wallets::NAME, min, "transfer", || {
        wallets::transfer(&s.pool, id)
    })
    .await?;
    let parties: Vec<Uuid> = [transfer.from_owner, transfer.to_owner]
        .into_iter()
        .flatten()
        .collect();
    viewer.check(&parties)?;
    Ok(reply(at, None, &transfer))
}

#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "queries",
    params(QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "platform totals per currency and the conservation check (admin, auditor)", body = PlatformStats,
         headers(("X-Position" = i64, description = "the position the read model had applied"))),
        QueryProblems
    )
)]
async fn get_stats(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
) -> Result<Response, Problem> {
    if !(actor.has(Role::Admin) || actor.has(Role::Auditor)) {
        return Err(Problem::new(
            403,
            "forbidden",
            "the platform totals are for admins and auditors",
        ));
    }
    let at = fresh(&s, stats::NAME, min).await?;
    let totals = stats::platform_stats(&s.pool).await.map_err(unavailable)?;
    Ok(reply(at, None, &totals))
}

// The wire shapes, for the OpenAPI description (the answers are the `projections::money`
// structs of the same names and fields).

/// An account.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AccountView {
    id: Uuid,
    /// The authentication subject bound to the account.
    subject: String,
    /// Null once personal data is erased.
    email: Option<String>,
    /// Null once personal data is erased.
    display_name: Option<String>,
    /// Null once personal data is erased.
    birth_date: Option<NaiveDate>,
    /// ISO 3166-1 alpha-2.
    country: Option<String>,
    /// Profile preferences, such as `{"birthday_pot": true}`.
    preferences: serde_json::Value,
    /// `none`, `pending`, `approved` or `rejected`.
    kyc_status: String,
    /// `active`, `suspended` or `closed`.
    status: String,
    personal_data_erased: bool,
    /// The account's version (the ETag).
    version: i64,
    opened_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
}

/// A wallet.
#[derive(ToSchema)]
#[allow(dead_code)]
struct WalletView {
    id: Uuid,
    /// The owning account.
    owner: Uuid,
    /// ISO 4217.
    currency: String,
    /// Minor units.
    balance: i64,
    /// Minor units reserved.
    held: i64,
    /// `balance - held`.
    available: i64,
    /// `active`, `frozen` or `closed`.
    status: String,
    /// The wallet's version (the ETag).
    version: i64,
}

/// A page of wallets.
#[derive(ToSchema)]
#[allow(dead_code)]
struct WalletPage {
    items: Vec<WalletView>,
    /// Pass as `?cursor=` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// One money movement of a wallet.
#[derive(ToSchema)]
#[allow(dead_code)]
struct LedgerEntry {
    /// The log position of the movement (the sort key, newest first).
    position: i64,
    /// The wallet's version the movement made.
    version: i64,
    at: DateTime<Utc>,
    /// `deposit`, `withdrawal`, `transfer_out`, `transfer_in`, or the reason of a debit or
    /// credit by an order, escrow or pot (`order_payment`, `order_refund`, `escrow_funding`,
    /// `escrow_release`, `escrow_refund`, `dispute_settlement`, `pot_contribution`,
    /// `pot_payout`, `contribution_refund`).
    kind: String,
    /// Minor units, signed: credits positive, debits negative.
    amount: i64,
    /// The balance right after the movement.
    balance_after: i64,
    /// The other wallet of a transfer.
    counterparty: Option<Uuid>,
    /// The transfer id, the provider's external reference, or the order, escrow or pot id.
    #[schema(rename = "ref")]
    reference: Option<String>,
}

/// A page of ledger entries.
#[derive(ToSchema)]
#[allow(dead_code)]
struct LedgerPage {
    items: Vec<LedgerEntry>,
    /// Pass as `?cursor=` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// One side of a transfer.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TransferLeg {
    /// `transfer_out` (the source's debit) or `transfer_in` (the destination's credit).
    kind: String,
    wallet: Uuid,
    /// The wallet's owner.
    owner: Option<Uuid>,
    /// Minor units, signed.
    amount: i64,
    /// The wallet's balance right after this leg.
    balance_after: i64,
    position: i64,
    version: i64,
    at: DateTime<Utc>,
}

/// A transfer.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TransferView {
    id: Uuid,
    from_wallet: Uuid,
    to_wallet: Uuid,
    from_owner: Option<Uuid>,
    to_owner: Option<Uuid>,
    currency: String,
    /// Minor units moved.
    amount: i64,
    memo: Option<String>,
    /// `completed` once both legs are applied.
    status: String,
    at: Option<DateTime<Utc>>,
    /// The debit, then the credit.
    legs: Vec<TransferLeg>,
}

/// One currency's totals, in minor units.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CurrencyTotals {
    /// Money that entered the platform.
    deposits: i128,
    /// Money that left the platform.
    withdrawals: i128,
    /// The sum of all wallet balances.
    balances: i128,
    /// Money in funded escrows.
    escrowed: i128,
    /// Money in pots (not paid out or refunded).
    in_pots: i128,
    /// `deposits - withdrawals`.
    net_deposits: i128,
    /// `balances + escrowed + in_pots == deposits - withdrawals`.
    conserved: bool,
}

/// The platform totals.
#[derive(ToSchema)]
#[allow(dead_code)]
struct PlatformStats {
    /// Per ISO 4217 currency code.
    currencies: std::collections::BTreeMap<String, CurrencyTotals>,
    /// Whether money is conserved in every currency.
    conserved: bool,
}
