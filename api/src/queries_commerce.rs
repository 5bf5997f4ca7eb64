//! Queries of the commerce read models: orders, escrows, pots and devices. Each handler checks
//! the caller and the parameters, waits for `X-Min-Position`, makes one call into
//! `projections::commerce` and answers with `X-Position` (and `ETag` for one aggregate).

use crate::error::Problem;
use crate::extract::Caller;
use crate::query::{
    fresh, not_found, page, reply, unavailable, MinPosition, Params, QueryHeaders, QueryProblems,
    Viewer,
};
use crate::routes_pots::PotVisibility;
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use commands::{Actor, Role};
use domain::device::DeviceStatus;
use domain::escrow::EscrowStatus;
use domain::order::OrderStatus;
use domain::pot::PotStatus;
use projections::commerce::{devices, escrows, orders, pots, Lookup, QueryError, Reader};
use projections::page::Page;
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(
        get_order,
        list_orders,
        get_escrow,
        list_escrows,
        get_pot,
        list_pots,
        get_device,
        list_devices
    ),
    components(schemas(
        OrderView,
        OrderLineView,
        OrderPage,
        EscrowView,
        DisputeView,
        DecisionView,
        EscrowPage,
        PotView,
        ContributionView,
        PotPage,
        DeviceView,
        LatestReadingView,
        PendingUpdateView,
        DevicePage
    ))
)]
pub struct Api;

/// These routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orders", get(list_orders))
        .route("/v1/orders/{id}", get(get_order))
        .route("/v1/escrows", get(list_escrows))
        .route("/v1/escrows/{id}", get(get_escrow))
        .route("/v1/pots", get(list_pots))
        .route("/v1/pots/{id}", get(get_pot))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", get(get_device))
}

/// A path id, or a 400 naming it.
fn path_id(field: &str, raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::invalid(field, format!("{field} must be a UUID")))
}

/// A failed list query: a cursor of another list (or sort) is the client's fault.
fn list_problem(e: QueryError) -> Problem {
    match e {
        QueryError::BadCursor => {
            Problem::invalid("cursor", "cursor is not one this list handed out")
        }
        QueryError::Db(e) => unavailable(e),
    }
}

/// An empty page (a caller without an account owns nothing).
fn empty<T>() -> Page<T> {
    Page {
        items: Vec::new(),
        next_cursor: None,
    }
}

/// The pot reader of a viewer.
fn reader(viewer: Viewer) -> Reader {
    match viewer {
        Viewer::All => Reader::All,
        Viewer::Account(a) => Reader::Account(a),
    }
}

/// Escrows are also read in full by arbiters, who decide their disputes.
async fn escrow_viewer(s: &AppState, actor: &Actor) -> Result<Viewer, Problem> {
    if actor.has(Role::Arbiter) {
        return Ok(Viewer::All);
    }
    Viewer::of(s, actor).await
}

// ----- orders -----

/// An order's lifecycle status, as a filter.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum OrderStatusFilter {
    Placed,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl From<OrderStatusFilter> for OrderStatus {
    fn from(s: OrderStatusFilter) -> Self {
        match s {
            OrderStatusFilter::Placed => OrderStatus::Placed,
            OrderStatusFilter::Paid => OrderStatus::Paid,
            OrderStatusFilter::Shipped => OrderStatus::Shipped,
            OrderStatusFilter::Delivered => OrderStatus::Delivered,
            OrderStatusFilter::Cancelled => OrderStatus::Cancelled,
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the order"), QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the order with its lines, total, paid and refunded amounts (buyer, seller, admin, auditor); ETag is its version", body = OrderView,
         headers(("X-Position" = i64, description = "the position the read model had applied"), ("ETag" = String, description = "the order's version"))),
        QueryProblems
    )
)]
async fn get_order(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = path_id("id", &raw)?;
    let viewer = Viewer::of(&s, &actor).await?;
    let at = fresh(&s, orders::NAME, min).await?;
    let order = orders::order(&s.pool, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found("order"))?;
    viewer.check(&[order.buyer, order.seller])?;
    Ok(reply(at, Some(order.version), &order))
}

/// GET /v1/orders: which orders, which page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct OrdersQuery {
    /// Only this buyer's orders.
    buyer: Option<Uuid>,
    /// Only this seller's orders.
    seller: Option<Uuid>,
    /// Only orders in this status.
    status: Option<OrderStatusFilter>,
    /// Items per page, 1-500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "queries",
    params(OrdersQuery, QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "orders newest first: a customer's are those they buy or sell, admins and auditors see all", body = OrderPage,
         headers(("X-Position" = i64, description = "the position the read model had applied"))),
        QueryProblems
    )
)]
async fn list_orders(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Params(q): Params<OrdersQuery>,
) -> Result<Response, Problem> {
    let request = page(q.limit, q.cursor.as_deref())?;
    let viewer = Viewer::of(&s, &actor).await?;
    let at = fresh(&s, orders::NAME, min).await?;
    let party = match viewer {
        Viewer::All => None,
        Viewer::Account(Some(me)) => Some(me),
        Viewer::Account(None) => return Ok(reply(at, None, &empty::<()>())),
    };
    let filter = orders::OrderFilter {
        buyer: q.buyer,
        seller: q.seller,
        status: q.status.map(Into::into),
        party,
    };
    let answer = orders::orders(&s.pool, &filter, &request)
        .await
        .map_err(list_problem)?;
    Ok(reply(at, None, &answer))
}

// ----- escrows -----

/// An escrow's lifecycle status, as a filter.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum EscrowStatusFilter {
    Opened,
    Funded,
    Released,
    Refunded,
    Resolved,
}

impl From<EscrowStatusFilter> for EscrowStatus {
    fn from(s: EscrowStatusFilter) -> Self {
        match s {
            EscrowStatusFilter::Opened => EscrowStatus::Opened,
            EscrowStatusFilter::Funded => EscrowStatus::Funded,
            EscrowStatusFilter::Released => EscrowStatus::Released,
            EscrowStatusFilter::Refunded => EscrowStatus::Refunded,
            EscrowStatusFilter::Resolved => EscrowStatus::Resolved,
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/escrows/{id}",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the escrow"), QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the escrow's state, dispute and history of decisions (buyer, seller, admin, auditor, arbiter); ETag is its version", body = EscrowView,
         headers(("X-Position" = i64, description = "the position the read model had applied"), ("ETag" = String, description = "the escrow's version"))),
        QueryProblems
    )
)]
async fn get_escrow(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = path_id("id", &raw)?;
    let viewer = escrow_viewer(&s, &actor).await?;
    let at = fresh(&s, escrows::NAME, min).await?;
    let escrow = escrows::escrow(&s.pool, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found("escrow"))?;
    viewer.check(&[escrow.buyer, escrow.seller])?;
    Ok(reply(at, Some(escrow.version), &escrow))
}

/// GET /v1/escrows: which escrows, which page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EscrowsQuery {
    /// Only escrows where this account is the buyer or the seller.
    party: Option<Uuid>,
    /// Only escrows in this status.
    status: Option<EscrowStatusFilter>,
    /// Items per page, 1-500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/escrows",
    tag = "queries",
    params(EscrowsQuery, QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "escrows newest first (without their history): a customer's are those they are party to; admins, auditors and arbiters see all", body = EscrowPage,
         headers(("X-Position" = i64, description = "the position the read model had applied"))),
        QueryProblems
    )
)]
async fn list_escrows(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Params(q): Params<EscrowsQuery>,
) -> Result<Response, Problem> {
    let request = page(q.limit, q.cursor.as_deref())?;
    let viewer = escrow_viewer(&s, &actor).await?;
    let at = fresh(&s, escrows::NAME, min).await?;
    let own = match viewer {
        Viewer::All => None,
        Viewer::Account(Some(me)) => Some(me),
        Viewer::Account(None) => return Ok(reply(at, None, &empty::<()>())),
    };
    let filter = escrows::EscrowFilter {
        party: q.party,
        status: q.status.map(Into::into),
        viewer: own,
    };
    let answer = escrows::escrows(&s.pool, &filter, &request)
        .await
        .map_err(list_problem)?;
    Ok(reply(at, None, &answer))
}

// ----- pots -----

/// A pot's lifecycle status, as a filter.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum PotStatusFilter {
    Open,
    Closed,
    PaidOut,
    Cancelled,
}

impl From<PotStatusFilter> for PotStatus {
    fn from(s: PotStatusFilter) -> Self {
        match s {
            PotStatusFilter::Open => PotStatus::Open,
            PotStatusFilter::Closed => PotStatus::Closed,
            PotStatusFilter::PaidOut => PotStatus::PaidOut,
            PotStatusFilter::Cancelled => PotStatus::Cancelled,
        }
    }
}

/// How pots are listed.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum PotSortOrder {
    /// Newest first.
    #[default]
    Newest,
    /// Largest raised total first.
    Raised,
    /// Soonest `closes_at` first.
    ClosesAt,
}

impl From<PotSortOrder> for pots::PotSort {
    fn from(s: PotSortOrder) -> Self {
        match s {
            PotSortOrder::Newest => pots::PotSort::Newest,
            PotSortOrder::Raised => pots::PotSort::Raised,
            PotSortOrder::ClosesAt => pots::PotSort::ClosesAt,
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/pots/{id}",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the pot"), QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the pot: raised total, contributor count, the 100 most recent contributions (anonymous contributors hidden); a private pot for its owner, beneficiary, invited accounts, contributors, admins and auditors; ETag is its version", body = PotView,
         headers(("X-Position" = i64, description = "the position the read model had applied"), ("ETag" = String, description = "the pot's version"))),
        QueryProblems
    )
)]
async fn get_pot(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = path_id("id", &raw)?;
    let viewer = Viewer::of(&s, &actor).await?;
    let at = fresh(&s, pots::NAME, min).await?;
    match pots::pot(&s.pool, id, reader(viewer))
        .await
        .map_err(unavailable)?
    {
        Lookup::Found(pot) => Ok(reply(at, Some(pot.version), &pot)),
        Lookup::NotFound => Err(not_found("pot")),
        Lookup::Forbidden => Err(Problem::new(403, "forbidden", "this pot is private")),
    }
}

/// GET /v1/pots: which pots, in which order, which page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PotsQuery {
    /// Only public or only private pots (private ones only as far as the caller may see them).
    visibility: Option<PotVisibility>,
    /// Only pots in this status.
    status: Option<PotStatusFilter>,
    /// `newest` (default), `raised` (largest first) or `closes_at` (soonest first).
    sort: Option<PotSortOrder>,
    /// Items per page, 1-500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page (of the same sort).
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/pots",
    tag = "queries",
    params(PotsQuery, QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the pots the caller may see (public ones, and private ones they own, benefit from, are invited to or gave to; all for admins and auditors), each with its 5 most recent contributions (anonymous contributors hidden)", body = PotPage,
         headers(("X-Position" = i64, description = "the position the read model had applied"))),
        QueryProblems
    )
)]
async fn list_pots(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Params(q): Params<PotsQuery>,
) -> Result<Response, Problem> {
    let request = page(q.limit, q.cursor.as_deref())?;
    let viewer = Viewer::of(&s, &actor).await?;
    let at = fresh(&s, pots::NAME, min).await?;
    let filter = pots::PotFilter {
        visibility: q.visibility.map(Into::into),
        status: q.status.map(Into::into),
        sort: q.sort.unwrap_or_default().into(),
    };
    let answer = pots::pots(&s.pool, &filter, reader(viewer), &request)
        .await
        .map_err(list_problem)?;
    Ok(reply(at, None, &answer))
}

// ----- devices -----

/// A device's lifecycle status, as a filter.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum DeviceStatusFilter {
    Registered,
    Active,
    Suspended,
    Decommissioned,
}

impl From<DeviceStatusFilter> for DeviceStatus {
    fn from(s: DeviceStatusFilter) -> Self {
        match s {
            DeviceStatusFilter::Registered => DeviceStatus::Registered,
            DeviceStatusFilter::Active => DeviceStatus::Active,
            DeviceStatusFilter::Suspended => DeviceStatus::Suspended,
            DeviceStatusFilter::Decommissioned => DeviceStatus::Decommissioned,
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/devices/{id}",
    tag = "queries",
    params(("id" = Uuid, Path, description = "the device"), QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the device: status, firmware, pending update, last seen, latest readings (owner, admin, auditor; never its credential); ETag is its version", body = DeviceView,
         headers(("X-Position" = i64, description = "the position the read model had applied"), ("ETag" = String, description = "the device's version"))),
        QueryProblems
    )
)]
async fn get_device(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    let id = path_id("id", &raw)?;
    let viewer = Viewer::of(&s, &actor).await?;
    let at = fresh(&s, devices::NAME, min).await?;
    let device = devices::device(&s.pool, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found("device"))?;
    viewer.check(&[device.owner])?;
    let latest_readings = ingest::query::latest(&s.pool, id)
        .await
        .map_err(unavailable)?;
    let version = device.version;
    let answer = DeviceWithReadings {
        device,
        latest_readings,
    };
    Ok(reply(at, Some(version), &answer))
}

/// One device with the latest value of each of its metrics (telemetry, outside the log).
#[derive(serde::Serialize)]
struct DeviceWithReadings {
    #[serde(flatten)]
    device: devices::DeviceView,
    latest_readings: std::collections::BTreeMap<String, ingest::query::Latest>,
}

/// GET /v1/devices: which devices, which page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DevicesQuery {
    /// The owning account (default: the caller's own; all devices for admins and auditors).
    /// Customers may only name their own.
    owner: Option<Uuid>,
    /// Only devices in this status.
    status: Option<DeviceStatusFilter>,
    /// Only devices of this model (the exact name).
    model: Option<String>,
    /// Items per page, 1-500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "queries",
    params(DevicesQuery, QueryHeaders),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "devices newest first", body = DevicePage,
         headers(("X-Position" = i64, description = "the position the read model had applied"))),
        QueryProblems
    )
)]
async fn list_devices(
    State(s): State<AppState>,
    Caller(actor): Caller,
    min: MinPosition,
    Params(q): Params<DevicesQuery>,
) -> Result<Response, Problem> {
    let request = page(q.limit, q.cursor.as_deref())?;
    if let Some(m) = &q.model {
        if m.is_empty() || m.chars().count() > domain::device::MAX_MODEL_CHARS {
            return Err(Problem::invalid(
                "model",
                "model must have 1 to 100 characters",
            ));
        }
    }
    let viewer = Viewer::of(&s, &actor).await?;
    let owner = match (viewer, q.owner) {
        (Viewer::All, owner) => owner,
        (viewer, Some(owner)) => {
            viewer.check(&[owner])?;
            Some(owner)
        }
        (Viewer::Account(Some(me)), None) => Some(me),
        (Viewer::Account(None), None) => {
            let at = fresh(&s, devices::NAME, min).await?;
            return Ok(reply(at, None, &empty::<()>()));
        }
    };
    let at = fresh(&s, devices::NAME, min).await?;
    let filter = devices::DeviceFilter {
        owner,
        status: q.status.map(Into::into),
        model: q.model,
    };
    let answer = devices::devices(&s.pool, &filter, &request)
        .await
        .map_err(list_problem)?;
    Ok(reply(at, None, &answer))
}

// The wire shapes, for the OpenAPI description (the answers are the `projections::commerce`
// structs of the same names and fields; a test compares them with real answers).

/// One line of an order.
#[derive(ToSchema)]
#[allow(dead_code)]
struct OrderLineView {
    sku: String,
    description: String,
    quantity: i64,
    /// Minor units.
    unit_price: i64,
    /// `quantity * unit_price`, minor units.
    amount: i64,
}

/// An order.
#[derive(ToSchema)]
#[allow(dead_code)]
struct OrderView {
    id: Uuid,
    /// The buying account.
    buyer: Uuid,
    /// The selling account.
    seller: Uuid,
    /// ISO 4217.
    currency: String,
    /// In the order placed.
    lines: Vec<OrderLineView>,
    /// The sum of the lines, minor units.
    total: i64,
    use_escrow: bool,
    /// The escrow holding the payment, when paid through one.
    escrow_id: Option<Uuid>,
    /// The buyer's wallet that paid.
    paid_wallet: Option<Uuid>,
    /// Minor units.
    paid_amount: i64,
    /// Refunds and a cancellation's refund, minor units.
    refunded_amount: i64,
    paid_at: Option<DateTime<Utc>>,
    /// `placed`, `paid`, `shipped`, `delivered` or `cancelled`.
    status: String,
    carrier: Option<String>,
    tracking: Option<String>,
    /// `buyer`, `seller` or `system`.
    cancelled_by: Option<String>,
    cancel_reason: Option<String>,
    placed_at: DateTime<Utc>,
    shipped_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    /// The order's version (the ETag).
    version: i64,
}

/// A page of orders.
#[derive(ToSchema)]
#[allow(dead_code)]
struct OrderPage {
    items: Vec<OrderView>,
    /// Pass as `?cursor=` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// An escrow's dispute.
#[derive(ToSchema)]
#[allow(dead_code)]
struct DisputeView {
    /// `buyer` or `seller`.
    raised_by: String,
    reason: String,
    raised_at: Option<DateTime<Utc>>,
    /// Whether it still freezes release and refund.
    open: bool,
}

/// One decision on an escrow.
#[derive(ToSchema)]
#[allow(dead_code)]
struct DecisionView {
    /// The escrow's version this decision made.
    version: i64,
    /// Its global log position.
    position: i64,
    /// `opened`, `funded`, `released`, `refunded`, `dispute_raised` or `dispute_resolved`.
    kind: String,
    /// `buyer`, `seller`, `system` (a deadline) or `arbiter`.
    party: String,
    /// The subject that issued it.
    actor: String,
    /// The role it was allowed under.
    actor_role: String,
    at: DateTime<Utc>,
    /// Minor units moved or held.
    amount: Option<i64>,
    to_seller: Option<i64>,
    to_buyer: Option<i64>,
    /// A dispute's reason.
    reason: Option<String>,
}

/// An escrow.
#[derive(ToSchema)]
#[allow(dead_code)]
struct EscrowView {
    id: Uuid,
    buyer: Uuid,
    buyer_wallet: Uuid,
    seller: Uuid,
    /// ISO 4217.
    currency: String,
    /// Minor units held.
    amount: i64,
    terms: String,
    release_after: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    order_id: Option<Uuid>,
    /// `opened`, `funded`, `released`, `refunded` or `resolved`.
    status: String,
    dispute: Option<DisputeView>,
    /// The arbiter's split `[to_seller, to_buyer]`.
    resolution: Option<Vec<i64>>,
    opened_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The escrow's version (the ETag).
    version: i64,
    /// Every decision, oldest first (GET /v1/escrows/{id} only).
    history: Option<Vec<DecisionView>>,
}

/// A page of escrows.
#[derive(ToSchema)]
#[allow(dead_code)]
struct EscrowPage {
    items: Vec<EscrowView>,
    /// Pass as `?cursor=` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// One contribution to a pot.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ContributionView {
    contribution_id: Uuid,
    /// Null when the contribution is anonymous (except to the contributor, admins, auditors).
    contributor: Option<Uuid>,
    /// Null when the contributor is hidden.
    wallet: Option<Uuid>,
    /// Minor units.
    amount: i64,
    anonymous: bool,
    message: Option<String>,
    refunded: bool,
    received_at: DateTime<Utc>,
}

/// A pot.
#[derive(ToSchema)]
#[allow(dead_code)]
struct PotView {
    id: Uuid,
    owner: Uuid,
    beneficiary: Uuid,
    title: String,
    /// ISO 4217.
    currency: String,
    target_amount: Option<i64>,
    closes_at: DateTime<Utc>,
    /// `public` or `private`.
    visibility: String,
    /// `open`, `closed`, `paid_out` or `cancelled`.
    status: String,
    /// Contributions not refunded, in minor units.
    raised: i64,
    /// What went to the beneficiary.
    paid_out: i64,
    /// What the pot holds now (`raised - paid_out`).
    held: i64,
    /// Distinct accounts with contributions not refunded (anonymous ones counted, not named).
    contributor_count: i32,
    /// Every contribution ever received.
    contribution_count: i32,
    /// The most recent contributions, newest first (100 for one pot, 5 per pot in a list).
    contributions: Vec<ContributionView>,
    /// Invited accounts: shown to the owner, admins and auditors, in one pot's answer only.
    invited: Option<Vec<Uuid>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The pot's version (the ETag).
    version: i64,
}

/// A page of pots.
#[derive(ToSchema)]
#[allow(dead_code)]
struct PotPage {
    items: Vec<PotView>,
    /// Pass as `?cursor=` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// A firmware update awaiting the device's report.
#[derive(ToSchema)]
#[allow(dead_code)]
struct PendingUpdateView {
    target_version: String,
    /// https.
    artifact_url: String,
    /// Lower-case hex.
    sha256: String,
    scheduled_at: DateTime<Utc>,
    /// When the update is marked failed if the device has not reported.
    times_out_at: DateTime<Utc>,
}

/// A device (never its credential).
#[derive(ToSchema)]
#[allow(dead_code)]
struct DeviceView {
    id: Uuid,
    /// The owning account.
    owner: Uuid,
    serial: String,
    model: String,
    firmware_version: String,
    /// `registered`, `active`, `suspended` or `decommissioned`.
    status: String,
    pending_update: Option<PendingUpdateView>,
    /// `applied` or `failed`.
    last_update_outcome: Option<String>,
    /// The last failure's detail.
    last_update_detail: Option<String>,
    /// When the device itself last reported.
    last_seen_at: Option<DateTime<Utc>>,
    registered_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The device's version (the ETag).
    version: i64,
    /// GET of one device only: the latest telemetry value of each metric, by name (from the
    /// telemetry rollups, which do not follow X-Position).
    latest_readings: Option<std::collections::BTreeMap<String, LatestReadingView>>,
}

/// The latest value of a metric.
#[derive(ToSchema)]
#[allow(dead_code)]
struct LatestReadingView {
    value: f64,
    /// The reading's time.
    ts: DateTime<Utc>,
    /// The reading's seq.
    seq: i64,
}

/// A page of devices.
#[derive(ToSchema)]
#[allow(dead_code)]
struct DevicePage {
    items: Vec<DeviceView>,
    /// Pass as `?cursor=` for the next page; null on the last.
    next_cursor: Option<String>,
}
