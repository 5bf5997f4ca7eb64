//! The `escrows` read model (tables `escrows` and `escrow_decisions`): every escrow with its
//! state and dispute, and the history of its decisions (opened, funded, released, refunded,
//! dispute raised and resolved: by which party, which subject, when, how much).

use super::{
    cursor_key, cursor_parts, cursor_uuid, decode_all, ids_to_load, load_rows, HasId, QueryError,
    Touched,
};
use crate::page::{Page, PageRequest};
use crate::runtime::{ApplyError, Projector};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::escrow::{EscrowEvent, EscrowStatus, Party};
use schemas::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

/// The projector's name (checkpoint, `X-Position`, CLI).
pub const NAME: &str = "escrows";

/// The `escrows` projector.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscrowsProjector;

/// An escrow's status as stored and shown (`opened`, `funded`, `released`, `refunded`,
/// `resolved`).
pub fn status_name(status: EscrowStatus) -> &'static str {
    match status {
        EscrowStatus::Unopened => "unopened",
        EscrowStatus::Opened => "opened",
        EscrowStatus::Funded => "funded",
        EscrowStatus::Released => "released",
        EscrowStatus::Refunded => "refunded",
        EscrowStatus::Resolved => "resolved",
    }
}

fn party_name(p: Party) -> &'static str {
    match p {
        Party::Buyer => "buyer",
        Party::Seller => "seller",
        Party::System => "system",
    }
}

/// One row of `escrows`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct EscrowRow {
    id: Uuid,
    buyer: Uuid,
    buyer_wallet: Uuid,
    seller: Uuid,
    currency: String,
    amount: i64,
    terms: String,
    release_after: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    order_id: Option<Uuid>,
    status: String,
    dispute_raised_by: Option<String>,
    dispute_reason: Option<String>,
    dispute_raised_at: Option<DateTime<Utc>>,
    resolved_to_seller: Option<i64>,
    resolved_to_buyer: Option<i64>,
    opened_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
    position: i64,
}

impl HasId for EscrowRow {
    fn id(&self) -> Uuid {
        self.id
    }
}

/// The decisions of a batch, as columns.
#[derive(Default)]
struct DecisionColumns {
    escrow_id: Vec<Uuid>,
    version: Vec<i64>,
    position: Vec<i64>,
    kind: Vec<&'static str>,
    party: Vec<&'static str>,
    actor_sub: Vec<String>,
    actor_role: Vec<String>,
    at: Vec<DateTime<Utc>>,
    amount: Vec<Option<i64>>,
    to_seller: Vec<Option<i64>>,
    to_buyer: Vec<Option<i64>>,
    reason: Vec<Option<String>>,
}

/// What one decision records beyond its event's metadata.
struct Decision {
    kind: &'static str,
    party: &'static str,
    amount: Option<i64>,
    to_seller: Option<i64>,
    to_buyer: Option<i64>,
    reason: Option<String>,
}

impl DecisionColumns {
    fn push(&mut self, e: &RecordedEvent, d: Decision) {
        self.escrow_id.push(e.stream_id);
        self.version.push(e.stream_version);
        self.position.push(e.position);
        self.kind.push(d.kind);
        self.party.push(d.party);
        self.actor_sub.push(e.metadata.actor_sub.clone());
        self.actor_role.push(e.metadata.actor_role.clone());
        self.at.push(e.metadata.occurred_at);
        self.amount.push(d.amount);
        self.to_seller.push(d.to_seller);
        self.to_buyer.push(d.to_buyer);
        self.reason.push(d.reason);
    }
}

#[async_trait]
impl Projector for EscrowsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["escrows", "escrow_decisions"]
    }

    // The buyer and seller indexes serve queries only, and decisions are only appended.
    fn indexes_built_last(&self) -> &'static [&'static str] {
        &["escrows_buyer", "escrows_seller", "escrow_decisions_pkey"]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &["escrow"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        let decoded = decode_all::<EscrowEvent>(events)?;
        let loaded = load_rows::<EscrowRow>(conn, "escrows", &ids_to_load(events)).await?;
        let mut rows = Touched::new(loaded);
        let mut decisions = DecisionColumns::default();
        for (e, event) in events.iter().zip(decoded) {
            let at = e.metadata.occurred_at;
            let (row, decision) = match event {
                EscrowEvent::EscrowOpened {
                    escrow_id: _,
                    buyer,
                    buyer_wallet,
                    seller,
                    currency,
                    amount,
                    terms,
                    release_after,
                    expires_at,
                    order_id,
                } => {
                    rows.create(
                        e.stream_id,
                        EscrowRow {
                            id: e.stream_id,
                            buyer,
                            buyer_wallet,
                            seller,
                            currency: currency.as_str().to_owned(),
                            amount,
                            terms,
                            release_after,
                            expires_at,
                            order_id,
                            status: status_name(EscrowStatus::Opened).to_owned(),
                            dispute_raised_by: None,
                            dispute_reason: None,
                            dispute_raised_at: None,
                            resolved_to_seller: None,
                            resolved_to_buyer: None,
                            opened_at: at,
                            updated_at: at,
                            version: 0,
                            position: 0,
                        },
                    );
                    let decision = Decision {
                        kind: "opened",
                        party: "buyer",
                        amount: Some(amount),
                        to_seller: None,
                        to_buyer: None,
                        reason: None,
                    };
                    (rows.row(e)?, decision)
                }
                EscrowEvent::EscrowFunded { amount } => {
                    let row = rows.row(e)?;
                    row.status = status_name(EscrowStatus::Funded).to_owned();
                    let decision = Decision {
                        kind: "funded",
                        party: "buyer",
                        amount: Some(amount),
                        to_seller: None,
                        to_buyer: None,
                        reason: None,
                    };
                    (row, decision)
                }
                EscrowEvent::EscrowReleased { amount, by } => {
                    let row = rows.row(e)?;
                    row.status = status_name(EscrowStatus::Released).to_owned();
                    let decision = Decision {
                        kind: "released",
                        party: party_name(by),
                        amount: Some(amount),
                        to_seller: Some(amount),
                        to_buyer: None,
                        reason: None,
                    };
                    (row, decision)
                }
                EscrowEvent::EscrowRefunded { amount, by } => {
                    let row = rows.row(e)?;
                    row.status = status_name(EscrowStatus::Refunded).to_owned();
                    let decision = Decision {
                        kind: "refunded",
                        party: party_name(by),
                        amount: Some(amount),
                        to_seller: None,
                        to_buyer: Some(amount),
                        reason: None,
                    };
                    (row, decision)
                }
                EscrowEvent::DisputeRaised { by, reason } => {
                    let row = rows.row(e)?;
                    row.dispute_raised_by = Some(party_name(by).to_owned());
                    row.dispute_reason = Some(reason.clone());
                    row.dispute_raised_at = Some(at);
                    let decision = Decision {
                        kind: "dispute_raised",
                        party: party_name(by),
                        amount: None,
                        to_seller: None,
                        to_buyer: None,
                        reason: Some(reason),
                    };
                    (row, decision)
                }
                EscrowEvent::DisputeResolved {
                    to_seller,
                    to_buyer,
                } => {
                    let row = rows.row(e)?;
                    row.resolved_to_seller = Some(to_seller);
                    row.resolved_to_buyer = Some(to_buyer);
                    row.status = status_name(EscrowStatus::Resolved).to_owned();
                    let decision = Decision {
                        kind: "dispute_resolved",
                        party: "arbiter",
                        amount: Some(to_seller.saturating_add(to_buyer)),
                        to_seller: Some(to_seller),
                        to_buyer: Some(to_buyer),
                        reason: None,
                    };
                    (row, decision)
                }
            };
            row.version = e.stream_version;
            row.position = e.position;
            row.updated_at = at;
            decisions.push(e, decision);
        }
        write_escrows(conn, &rows).await?;
        write_decisions(conn, &decisions).await?;
        Ok(())
    }
}

async fn write_escrows(
    conn: &mut PgConnection,
    rows: &Touched<EscrowRow>,
) -> Result<(), sqlx::Error> {
    if rows.len() == 0 {
        return Ok(());
    }
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut buyer = Vec::with_capacity(n);
    let mut buyer_wallet = Vec::with_capacity(n);
    let mut seller = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut amount = Vec::with_capacity(n);
    let mut terms = Vec::with_capacity(n);
    let mut release_after = Vec::with_capacity(n);
    let mut expires_at = Vec::with_capacity(n);
    let mut order_id = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut dispute_raised_by = Vec::with_capacity(n);
    let mut dispute_reason = Vec::with_capacity(n);
    let mut dispute_raised_at = Vec::with_capacity(n);
    let mut resolved_to_seller = Vec::with_capacity(n);
    let mut resolved_to_buyer = Vec::with_capacity(n);
    let mut opened_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut position = Vec::with_capacity(n);
    for r in rows.changed() {
        id.push(r.id);
        buyer.push(r.buyer);
        buyer_wallet.push(r.buyer_wallet);
        seller.push(r.seller);
        currency.push(r.currency.as_str());
        amount.push(r.amount);
        terms.push(r.terms.as_str());
        release_after.push(r.release_after);
        expires_at.push(r.expires_at);
        order_id.push(r.order_id);
        status.push(r.status.as_str());
        dispute_raised_by.push(r.dispute_raised_by.as_deref());
        dispute_reason.push(r.dispute_reason.as_deref());
        dispute_raised_at.push(r.dispute_raised_at);
        resolved_to_seller.push(r.resolved_to_seller);
        resolved_to_buyer.push(r.resolved_to_buyer);
        opened_at.push(r.opened_at);
        updated_at.push(r.updated_at);
        version.push(r.version);
        position.push(r.position);
    }
    sqlx::query(
        "INSERT INTO escrows (id, buyer, buyer_wallet, seller, currency, amount, terms, \
           release_after, expires_at, order_id, status, dispute_raised_by, dispute_reason, \
           dispute_raised_at, resolved_to_seller, resolved_to_buyer, opened_at, updated_at, \
           version, position) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], \
           $6::bigint[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::uuid[], \
           $11::text[], $12::text[], $13::text[], $14::timestamptz[], $15::bigint[], \
           $16::bigint[], $17::timestamptz[], $18::timestamptz[], $19::bigint[], $20::bigint[]) \
         ON CONFLICT (id) DO UPDATE SET \
           status = EXCLUDED.status, dispute_raised_by = EXCLUDED.dispute_raised_by, \
           dispute_reason = EXCLUDED.dispute_reason, \
           dispute_raised_at = EXCLUDED.dispute_raised_at, \
           resolved_to_seller = EXCLUDED.resolved_to_seller, \
           resolved_to_buyer = EXCLUDED.resolved_to_buyer, updated_at = EXCLUDED.updated_at, \
           version = EXCLUDED.version, position = EXCLUDED.position",
    )
    .bind(&id)
    .bind(&buyer)
    .bind(&buyer_wallet)
    .bind(&seller)
    .bind(&currency)
    .bind(&amount)
    .bind(&terms)
    .bind(&release_after)
    .bind(&expires_at)
    .bind(&order_id)
    .bind(&status)
    .bind(&dispute_raised_by)
    .bind(&dispute_reason)
    .bind(&dispute_raised_at)
    .bind(&resolved_to_seller)
    .bind(&resolved_to_buyer)
    .bind(&opened_at)
    .bind(&updated_at)
    .bind(&version)
    .bind(&position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_decisions(conn: &mut PgConnection, d: &DecisionColumns) -> Result<(), sqlx::Error> {
    if d.escrow_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO escrow_decisions (escrow_id, version, position, kind, party, actor_sub, \
           actor_role, at, amount, to_seller, to_buyer, reason) \
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], \
           $6::text[], $7::text[], $8::timestamptz[], $9::bigint[], $10::bigint[], $11::bigint[], \
           $12::text[])",
    )
    .bind(&d.escrow_id)
    .bind(&d.version)
    .bind(&d.position)
    .bind(&d.kind)
    .bind(&d.party)
    .bind(&d.actor_sub)
    .bind(&d.actor_role)
    .bind(&d.at)
    .bind(&d.amount)
    .bind(&d.to_seller)
    .bind(&d.to_buyer)
    .bind(&d.reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A dispute as queries show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DisputeView {
    /// `buyer` or `seller`.
    pub raised_by: String,
    /// Why.
    pub reason: String,
    /// When it was raised.
    pub raised_at: Option<DateTime<Utc>>,
    /// Whether it still freezes release and refund (raised, not resolved).
    pub open: bool,
}

/// One decision in an escrow's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DecisionView {
    /// The escrow's version this decision made.
    pub version: i64,
    /// The decision's global log position.
    pub position: i64,
    /// `opened`, `funded`, `released`, `refunded`, `dispute_raised` or `dispute_resolved`.
    pub kind: String,
    /// On whose behalf: `buyer`, `seller`, `system` (a deadline) or `arbiter`.
    pub party: String,
    /// The subject that issued it (`system:<process>` for processes).
    pub actor: String,
    /// The role it was allowed under.
    pub actor_role: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The amount moved or held, in minor units.
    pub amount: Option<i64>,
    /// What went to the seller.
    pub to_seller: Option<i64>,
    /// What went back to the buyer.
    pub to_buyer: Option<i64>,
    /// Why (a dispute's reason).
    pub reason: Option<String>,
}

/// An escrow as `GET /v1/escrows/{id}` and `GET /v1/escrows` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscrowView {
    /// The escrow's id.
    pub id: Uuid,
    /// The paying account.
    pub buyer: Uuid,
    /// The buyer's wallet that funds the escrow and receives refunds.
    pub buyer_wallet: Uuid,
    /// The account to be paid.
    pub seller: Uuid,
    /// The escrow's currency.
    pub currency: String,
    /// The amount held, in minor units.
    pub amount: i64,
    /// What the parties agreed.
    pub terms: String,
    /// When the process may release the money to the seller, if ever.
    pub release_after: Option<DateTime<Utc>>,
    /// When the process refunds the buyer if the money was neither released nor refunded.
    pub expires_at: DateTime<Utc>,
    /// The order the escrow pays for, if any.
    pub order_id: Option<Uuid>,
    /// `opened`, `funded`, `released`, `refunded` or `resolved`.
    pub status: String,
    /// The dispute, once raised.
    pub dispute: Option<DisputeView>,
    /// The arbiter's split `[to_seller, to_buyer]`, once resolved.
    pub resolution: Option<(i64, i64)>,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// When its last event happened.
    pub updated_at: DateTime<Utc>,
    /// The escrow's stream version (its ETag).
    pub version: i64,
    /// Every decision, oldest first (single-escrow answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<DecisionView>>,
}

impl EscrowView {
    fn from_row(r: EscrowRow) -> Self {
        let open = r.status == status_name(EscrowStatus::Funded);
        let dispute = match (r.dispute_raised_by, r.dispute_reason) {
            (Some(raised_by), Some(reason)) => Some(DisputeView {
                raised_by,
                reason,
                raised_at: r.dispute_raised_at,
                open,
            }),
            _ => None,
        };
        let resolution = r.resolved_to_seller.zip(r.resolved_to_buyer);
        Self {
            id: r.id,
            buyer: r.buyer,
            buyer_wallet: r.buyer_wallet,
            seller: r.seller,
            currency: r.currency,
            amount: r.amount,
            terms: r.terms,
            release_after: r.release_after,
            expires_at: r.expires_at,
            order_id: r.order_id,
            status: r.status,
            dispute,
            resolution,
            opened_at: r.opened_at,
            updated_at: r.updated_at,
            version: r.version,
            history: None,
        }
    }
}

/// Which escrows `GET /v1/escrows` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EscrowFilter {
    /// Only escrows where this account buys or sells (the `?party=` of the request).
    pub party: Option<Uuid>,
    /// Only in this status.
    pub status: Option<EscrowStatus>,
    /// Only escrows this account is party to: a customer's own view.
    pub viewer: Option<Uuid>,
}

/// The escrow `id` with its history; `None` when there is no such escrow.
pub async fn escrow(pool: &PgPool, id: Uuid) -> Result<Option<EscrowView>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let row: Option<EscrowRow> = sqlx::query_as("SELECT * FROM escrows WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let history: Vec<DecisionView> = sqlx::query_as(
        "SELECT version, position, kind, party, actor_sub AS actor, actor_role, at, amount, \
                to_seller, to_buyer, reason \
         FROM escrow_decisions WHERE escrow_id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut view = EscrowView::from_row(row);
    view.history = Some(history);
    Ok(Some(view))
}

const LIST_TAG: &str = "escrows";

/// A page of escrows, newest first.
pub async fn escrows(
    pool: &PgPool,
    filter: &EscrowFilter,
    page: &PageRequest,
) -> Result<Page<EscrowView>, QueryError> {
    let after = match cursor_parts(&page.after, LIST_TAG, 1)? {
        Some(parts) => Some(cursor_uuid(&parts[0])?),
        None => None,
    };
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT * FROM escrows WHERE true");
    for p in [filter.party, filter.viewer].into_iter().flatten() {
        q.push(" AND (buyer = ")
            .push_bind(p)
            .push(" OR seller = ")
            .push_bind(p)
            .push(")");
    }
    if let Some(s) = filter.status {
        q.push(" AND status = ").push_bind(status_name(s));
    }
    if let Some(a) = after {
        q.push(" AND id < ").push_bind(a);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit + 1);
    let rows: Vec<EscrowRow> = q.build_query_as().fetch_all(pool).await?;
    let views = rows.into_iter().map(EscrowView::from_row).collect();
    Ok(Page::from_rows(views, page.limit, |e: &EscrowView| {
        cursor_key(LIST_TAG, &[e.id.to_string()])
    }))
}
