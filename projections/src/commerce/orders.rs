//! The `orders` read model (tables `orders` and `order_lines`): every order with its lines,
//! total, paid and refunded amounts, lifecycle and shipping; listed by buyer, seller and status.

use super::{
    cursor_key, cursor_parts, cursor_uuid, decode_all, ids_to_load, load_rows, HasId, QueryError,
    Touched,
};
use crate::page::{Page, PageRequest};
use crate::runtime::{ApplyError, Projector};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::order::{CancelledBy, OrderEvent, OrderStatus};
use schemas::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use std::collections::HashMap;
use uuid::Uuid;

/// The projector's name (checkpoint, `X-Position`, CLI).
pub const NAME: &str = "orders";

/// The `orders` projector.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrdersProjector;

/// An order's status as stored and shown (`placed`, `paid`, `shipped`, `delivered`,
/// `cancelled`).
pub fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Unplaced => "unplaced",
        OrderStatus::Placed => "placed",
        OrderStatus::Paid => "paid",
        OrderStatus::Shipped => "shipped",
        OrderStatus::Delivered => "delivered",
        OrderStatus::Cancelled => "cancelled",
    }
}

fn cancelled_by_name(by: CancelledBy) -> &'static str {
    match by {
        CancelledBy::Buyer => "buyer",
        CancelledBy::Seller => "seller",
        CancelledBy::System => "system",
    }
}

/// One row of `orders`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    buyer: Uuid,
    seller: Uuid,
    currency: String,
    total: i64,
    line_count: i32,
    use_escrow: bool,
    escrow_id: Option<Uuid>,
    paid_wallet: Option<Uuid>,
    paid_amount: i64,
    refunded_amount: i64,
    paid_at: Option<DateTime<Utc>>,
    status: String,
    carrier: Option<String>,
    tracking: Option<String>,
    cancelled_by: Option<String>,
    cancel_reason: Option<String>,
    placed_at: DateTime<Utc>,
    shipped_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    version: i64,
    position: i64,
}

impl HasId for OrderRow {
    fn id(&self) -> Uuid {
        self.id
    }
}

/// The lines placed in a batch, as columns.
#[derive(Default)]
struct LineColumns {
    order_id: Vec<Uuid>,
    line_no: Vec<i32>,
    sku: Vec<String>,
    description: Vec<String>,
    quantity: Vec<i64>,
    unit_price: Vec<i64>,
    amount: Vec<i64>,
}

#[async_trait]
impl Projector for OrdersProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["orders", "order_lines"]
    }

    // The buyer and seller indexes serve queries only, and lines are only appended.
    fn indexes_built_last(&self) -> &'static [&'static str] {
        &["orders_buyer", "orders_seller", "order_lines_pkey"]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &["order"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        let decoded = decode_all::<OrderEvent>(events)?;
        let loaded = load_rows::<OrderRow>(conn, "orders", &ids_to_load(events)).await?;
        let mut rows = Touched::new(loaded);
        let mut lines = LineColumns::default();
        for (e, event) in events.iter().zip(decoded) {
            let at = e.metadata.occurred_at;
            let row = match event {
                OrderEvent::OrderPlaced {
                    order_id: _,
                    buyer,
                    seller,
                    currency,
                    lines: placed,
                    total,
                    use_escrow,
                } => {
                    let line_count = placed.len() as i32;
                    for (i, l) in placed.into_iter().enumerate() {
                        lines.order_id.push(e.stream_id);
                        lines.line_no.push(i as i32 + 1);
                        lines.amount.push(l.quantity.saturating_mul(l.unit_price));
                        lines.quantity.push(l.quantity);
                        lines.unit_price.push(l.unit_price);
                        lines.sku.push(l.sku);
                        lines.description.push(l.description);
                    }
                    rows.create(
                        e.stream_id,
                        OrderRow {
                            id: e.stream_id,
                            buyer,
                            seller,
                            currency: currency.as_str().to_owned(),
                            total,
                            line_count,
                            use_escrow,
                            escrow_id: None,
                            paid_wallet: None,
                            paid_amount: 0,
                            refunded_amount: 0,
                            paid_at: None,
                            status: status_name(OrderStatus::Placed).to_owned(),
                            carrier: None,
                            tracking: None,
                            cancelled_by: None,
                            cancel_reason: None,
                            placed_at: at,
                            shipped_at: None,
                            delivered_at: None,
                            cancelled_at: None,
                            updated_at: at,
                            version: 0,
                            position: 0,
                        },
                    );
                    rows.row(e)?
                }
                OrderEvent::OrderPaid {
                    wallet,
                    amount,
                    escrow_id,
                    paid_at,
                } => {
                    let row = rows.row(e)?;
                    row.paid_wallet = Some(wallet);
                    row.paid_amount = amount;
                    row.escrow_id = escrow_id;
                    row.paid_at = Some(paid_at);
                    row.status = status_name(OrderStatus::Paid).to_owned();
                    row
                }
                OrderEvent::OrderShipped { carrier, tracking } => {
                    let row = rows.row(e)?;
                    row.carrier = Some(carrier);
                    row.tracking = Some(tracking);
                    row.shipped_at = Some(at);
                    row.status = status_name(OrderStatus::Shipped).to_owned();
                    row
                }
                OrderEvent::OrderDelivered { .. } => {
                    let row = rows.row(e)?;
                    row.delivered_at = Some(at);
                    row.status = status_name(OrderStatus::Delivered).to_owned();
                    row
                }
                OrderEvent::OrderCancelled { reason, by, refund } => {
                    let row = rows.row(e)?;
                    row.refunded_amount = row.refunded_amount.saturating_add(refund);
                    row.cancelled_by = Some(cancelled_by_name(by).to_owned());
                    row.cancel_reason = Some(reason);
                    row.cancelled_at = Some(at);
                    row.status = status_name(OrderStatus::Cancelled).to_owned();
                    row
                }
                OrderEvent::OrderRefunded { amount, .. } => {
                    let row = rows.row(e)?;
                    row.refunded_amount = row.refunded_amount.saturating_add(amount);
                    row
                }
            };
            row.version = e.stream_version;
            row.position = e.position;
            row.updated_at = at;
        }
        write_orders(conn, &rows).await?;
        write_lines(conn, lines).await?;
        Ok(())
    }
}

async fn write_orders(
    conn: &mut PgConnection,
    rows: &Touched<OrderRow>,
) -> Result<(), sqlx::Error> {
    if rows.len() == 0 {
        return Ok(());
    }
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut buyer = Vec::with_capacity(n);
    let mut seller = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    let mut line_count = Vec::with_capacity(n);
    let mut use_escrow = Vec::with_capacity(n);
    let mut escrow_id = Vec::with_capacity(n);
    let mut paid_wallet = Vec::with_capacity(n);
    let mut paid_amount = Vec::with_capacity(n);
    let mut refunded_amount = Vec::with_capacity(n);
    let mut paid_at = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut carrier = Vec::with_capacity(n);
    let mut tracking = Vec::with_capacity(n);
    let mut cancelled_by = Vec::with_capacity(n);
    let mut cancel_reason = Vec::with_capacity(n);
    let mut placed_at = Vec::with_capacity(n);
    let mut shipped_at = Vec::with_capacity(n);
    let mut delivered_at = Vec::with_capacity(n);
    let mut cancelled_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut position = Vec::with_capacity(n);
    for r in rows.changed() {
        id.push(r.id);
        buyer.push(r.buyer);
        seller.push(r.seller);
        currency.push(r.currency.as_str());
        total.push(r.total);
        line_count.push(r.line_count);
        use_escrow.push(r.use_escrow);
        escrow_id.push(r.escrow_id);
        paid_wallet.push(r.paid_wallet);
        paid_amount.push(r.paid_amount);
        refunded_amount.push(r.refunded_amount);
        paid_at.push(r.paid_at);
        status.push(r.status.as_str());
        carrier.push(r.carrier.as_deref());
        tracking.push(r.tracking.as_deref());
        cancelled_by.push(r.cancelled_by.as_deref());
        cancel_reason.push(r.cancel_reason.as_deref());
        placed_at.push(r.placed_at);
        shipped_at.push(r.shipped_at);
        delivered_at.push(r.delivered_at);
        cancelled_at.push(r.cancelled_at);
        updated_at.push(r.updated_at);
        version.push(r.version);
        position.push(r.position);
    }
    sqlx::query(
        "INSERT INTO orders (id, buyer, seller, currency, total, line_count, use_escrow, \
           escrow_id, paid_wallet, paid_amount, refunded_amount, paid_at, status, carrier, \
           tracking, cancelled_by, cancel_reason, placed_at, shipped_at, delivered_at, \
           cancelled_at, updated_at, version, position) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], \
           $6::int[], $7::bool[], $8::uuid[], $9::uuid[], $10::bigint[], $11::bigint[], \
           $12::timestamptz[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], \
           $18::timestamptz[], $19::timestamptz[], $20::timestamptz[], $21::timestamptz[], \
           $22::timestamptz[], $23::bigint[], $24::bigint[]) \
         ON CONFLICT (id) DO UPDATE SET \
           escrow_id = EXCLUDED.escrow_id, paid_wallet = EXCLUDED.paid_wallet, \
           paid_amount = EXCLUDED.paid_amount, refunded_amount = EXCLUDED.refunded_amount, \
           paid_at = EXCLUDED.paid_at, status = EXCLUDED.status, carrier = EXCLUDED.carrier, \
           tracking = EXCLUDED.tracking, cancelled_by = EXCLUDED.cancelled_by, \
           cancel_reason = EXCLUDED.cancel_reason, shipped_at = EXCLUDED.shipped_at, \
           delivered_at = EXCLUDED.delivered_at, cancelled_at = EXCLUDED.cancelled_at, \
           updated_at = EXCLUDED.updated_at, version = EXCLUDED.version, \
           position = EXCLUDED.position",
    )
    .bind(&id)
    .bind(&buyer)
    .bind(&seller)
    .bind(&currency)
    .bind(&total)
    .bind(&line_count)
    .bind(&use_escrow)
    .bind(&escrow_id)
    .bind(&paid_wallet)
    .bind(&paid_amount)
    .bind(&refunded_amount)
    .bind(&paid_at)
    .bind(&status)
    .bind(&carrier)
    .bind(&tracking)
    .bind(&cancelled_by)
    .bind(&cancel_reason)
    .bind(&placed_at)
    .bind(&shipped_at)
    .bind(&delivered_at)
    .bind(&cancelled_at)
    .bind(&updated_at)
    .bind(&version)
    .bind(&position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_lines(conn: &mut PgConnection, lines: LineColumns) -> Result<(), sqlx::Error> {
    if lines.order_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_no, sku, description, quantity, unit_price, amount) \
         SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[], $5::bigint[], \
                              $6::bigint[], $7::bigint[])",
    )
    .bind(&lines.order_id)
    .bind(&lines.line_no)
    .bind(&lines.sku)
    .bind(&lines.description)
    .bind(&lines.quantity)
    .bind(&lines.unit_price)
    .bind(&lines.amount)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One line of an order as queries show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct OrderLineView {
    /// The seller's stock-keeping unit.
    pub sku: String,
    /// What is bought.
    pub description: String,
    /// How many.
    pub quantity: i64,
    /// The price of one unit, in minor units.
    pub unit_price: i64,
    /// `quantity * unit_price`, in minor units.
    pub amount: i64,
}

/// An order as `GET /v1/orders/{id}` and `GET /v1/orders` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    /// The order's id.
    pub id: Uuid,
    /// The buying account.
    pub buyer: Uuid,
    /// The selling account.
    pub seller: Uuid,
    /// The order's currency.
    pub currency: String,
    /// What is bought, in the order placed.
    pub lines: Vec<OrderLineView>,
    /// The sum of the lines, in minor units.
    pub total: i64,
    /// Whether payment goes through an escrow.
    pub use_escrow: bool,
    /// The escrow holding the payment, when paid through one.
    pub escrow_id: Option<Uuid>,
    /// The buyer's wallet that paid.
    pub paid_wallet: Option<Uuid>,
    /// What was paid, in minor units.
    pub paid_amount: i64,
    /// What was refunded so far (refunds and a cancellation's refund), in minor units.
    pub refunded_amount: i64,
    /// When it was paid.
    pub paid_at: Option<DateTime<Utc>>,
    /// `placed`, `paid`, `shipped`, `delivered` or `cancelled`.
    pub status: String,
    /// The carrier, once shipped.
    pub carrier: Option<String>,
    /// The carrier's tracking reference, once shipped.
    pub tracking: Option<String>,
    /// `buyer`, `seller` or `system`, once cancelled.
    pub cancelled_by: Option<String>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// When it was placed.
    pub placed_at: DateTime<Utc>,
    /// When it was shipped.
    pub shipped_at: Option<DateTime<Utc>>,
    /// When the buyer confirmed delivery.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// When its last event happened.
    pub updated_at: DateTime<Utc>,
    /// The order's stream version (its ETag).
    pub version: i64,
}

impl OrderView {
    fn from_row(r: OrderRow, lines: Vec<OrderLineView>) -> Self {
        Self {
            id: r.id,
            buyer: r.buyer,
            seller: r.seller,
            currency: r.currency,
            lines,
            total: r.total,
            use_escrow: r.use_escrow,
            escrow_id: r.escrow_id,
            paid_wallet: r.paid_wallet,
            paid_amount: r.paid_amount,
            refunded_amount: r.refunded_amount,
            paid_at: r.paid_at,
            status: r.status,
            carrier: r.carrier,
            tracking: r.tracking,
            cancelled_by: r.cancelled_by,
            cancel_reason: r.cancel_reason,
            placed_at: r.placed_at,
            shipped_at: r.shipped_at,
            delivered_at: r.delivered_at,
            cancelled_at: r.cancelled_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// Which orders `GET /v1/orders` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    /// Only this buyer's.
    pub buyer: Option<Uuid>,
    /// Only this seller's.
    pub seller: Option<Uuid>,
    /// Only in this status.
    pub status: Option<OrderStatus>,
    /// Only orders this account is party to (buyer or seller): a customer's own view.
    pub party: Option<Uuid>,
}

/// The order `id`, with its lines; `None` when there is no such order.
pub async fn order(pool: &PgPool, id: Uuid) -> Result<Option<OrderView>, sqlx::Error> {
    // Lines never change after the order is placed, in the same transaction as its row: two
    // plain reads see a consistent order.
    let mut conn = pool.acquire().await?;
    let row: Option<OrderRow> = sqlx::query_as("SELECT * FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut lines = lines_of(&mut conn, &[id]).await?;
    let lines = lines.remove(&id).unwrap_or_default();
    Ok(Some(OrderView::from_row(row, lines)))
}

const LIST_TAG: &str = "orders";

/// A page of orders, newest first.
pub async fn orders(
    pool: &PgPool,
    filter: &OrderFilter,
    page: &PageRequest,
) -> Result<Page<OrderView>, QueryError> {
    let after = match cursor_parts(&page.after, LIST_TAG, 1)? {
        Some(parts) => Some(cursor_uuid(&parts[0])?),
        None => None,
    };
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT * FROM orders WHERE true");
    if let Some(b) = filter.buyer {
        q.push(" AND buyer = ").push_bind(b);
    }
    if let Some(s) = filter.seller {
        q.push(" AND seller = ").push_bind(s);
    }
    if let Some(s) = filter.status {
        q.push(" AND status = ").push_bind(status_name(s));
    }
    if let Some(p) = filter.party {
        q.push(" AND (buyer = ")
            .push_bind(p)
            .push(" OR seller = ")
            .push_bind(p)
            .push(")");
    }
    if let Some(a) = after {
        q.push(" AND id < ").push_bind(a);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit + 1);
    let mut conn = pool.acquire().await?;
    let rows: Vec<OrderRow> = q.build_query_as().fetch_all(&mut *conn).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut lines = lines_of(&mut conn, &ids).await?;
    let views = rows
        .into_iter()
        .map(|r| {
            let l = lines.remove(&r.id).unwrap_or_default();
            OrderView::from_row(r, l)
        })
        .collect();
    Ok(Page::from_rows(views, page.limit, |o: &OrderView| {
        cursor_key(LIST_TAG, &[o.id.to_string()])
    }))
}

async fn lines_of(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<OrderLineView>>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Line {
        order_id: Uuid,
        #[sqlx(flatten)]
        line: OrderLineView,
    }
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<Line> = sqlx::query_as(
        "SELECT order_id, sku, description, quantity, unit_price, amount FROM order_lines \
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: HashMap<Uuid, Vec<OrderLineView>> = HashMap::with_capacity(ids.len());
    for l in rows {
        out.entry(l.order_id).or_default().push(l.line);
    }
    Ok(out)
}
