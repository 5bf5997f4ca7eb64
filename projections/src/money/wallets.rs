//! The `wallets` read models: one row per wallet (balance, held, available, status), its ledger
//! (one row per money movement with the running balance) and one row per transfer with both
//! legs.

use super::{cursor_key, decode, ids_to_load, single_key, QueryError};
use crate::page::{Page, PageRequest};
use crate::{ApplyError, Projector};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::wallet::{MoneyReason, WalletEvent, WalletStatus};
use schemas::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use uuid::Uuid;

/// The projector's name (checkpoint, lease, `X-Position`).
pub const NAME: &str = "wallets";

/// Keeps `wallets`, `wallet_ledger` and `transfers` from the wallet streams.
pub struct WalletsProjector;

/// A wallet as stored; GET /v1/wallets/{id} shows exactly
/// `{id, owner, currency, balance, held, available, status, version}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct WalletView {
    /// The wallet's id.
    pub id: Uuid,
    /// The owning account.
    pub owner: Uuid,
    /// ISO 4217 code.
    pub currency: String,
    /// Money in the wallet, in minor units.
    pub balance: i64,
    /// Money reserved and not available for debits.
    pub held: i64,
    /// `balance - held`.
    pub available: i64,
    /// `active`, `frozen` or `closed`.
    pub status: String,
    /// The wallet stream's version (the `ETag`).
    pub version: i64,
    /// The global position of the wallet's last event (stored, not shown: the answer's
    /// `X-Position` tells how current it is).
    #[serde(skip)]
    pub position: i64,
    /// When the wallet was opened (stored, not shown: API.md fixes the wallet's fields).
    #[serde(skip)]
    pub opened_at: DateTime<Utc>,
    /// When the wallet last changed (stored, not shown).
    #[serde(skip)]
    pub updated_at: DateTime<Utc>,
}

const WALLET_COLUMNS: &str =
    "id, owner, currency, balance, held, available, status, version, position, opened_at, updated_at";

/// One money movement of a wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LedgerEntry {
    /// The global position of the movement's event (the ledger's sort key).
    pub position: i64,
    /// The wallet stream's version the movement made.
    pub version: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `deposit`, `withdrawal`, `transfer_out`, `transfer_in`, or the reason of a debit or credit
    /// by another aggregate (`order_payment`, `order_refund`, `escrow_funding`,
    /// `escrow_release`, `escrow_refund`, `dispute_settlement`, `pot_contribution`,
    /// `pot_payout`, `contribution_refund`).
    pub kind: String,
    /// Minor units, signed: credits positive, debits negative.
    pub amount: i64,
    /// The balance right after the movement.
    pub balance_after: i64,
    /// The other wallet of a transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<Uuid>,
    /// The transfer id, the provider's external reference, or the order, escrow or pot.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    #[sqlx(rename = "reference")]
    pub reference: Option<String>,
}

/// One side of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferLeg {
    /// `transfer_out` (the debit of the source) or `transfer_in` (the credit of the destination).
    pub kind: &'static str,
    /// The wallet.
    pub wallet: Uuid,
    /// The wallet's owner (null if the wallet is unknown to the read model).
    pub owner: Option<Uuid>,
    /// Minor units, signed: negative for the debit, positive for the credit.
    pub amount: i64,
    /// The wallet's balance right after this leg.
    pub balance_after: i64,
    /// The global position of the leg's event.
    pub position: i64,
    /// The wallet stream's version the leg made.
    pub version: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// A transfer with its legs, as GET /v1/transfers/{id} shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferView {
    /// The transfer's id.
    pub id: Uuid,
    /// The debited wallet.
    pub from_wallet: Uuid,
    /// The credited wallet.
    pub to_wallet: Uuid,
    /// The source wallet's owner.
    pub from_owner: Option<Uuid>,
    /// The destination wallet's owner.
    pub to_owner: Option<Uuid>,
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units moved.
    pub amount: i64,
    /// The sender's note.
    pub memo: Option<String>,
    /// `completed` once both legs are applied (they commit together), else `pending`.
    pub status: &'static str,
    /// When the money left the source.
    pub at: Option<DateTime<Utc>>,
    /// The debit and the credit, in that order (a leg not applied yet is left out).
    pub legs: Vec<TransferLeg>,
}

/// Which wallets to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalletFilter {
    /// The owning account.
    pub owner: Uuid,
    /// Only wallets in this currency.
    pub currency: Option<String>,
    /// Only wallets in this status (`active`, `frozen`, `closed`).
    pub status: Option<String>,
}

/// The wallet `id`, if the read model has it.
pub async fn wallet(pool: &PgPool, id: Uuid) -> Result<Option<WalletView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {WALLET_COLUMNS} FROM wallets WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// An owner's wallets in the order they were opened, one page.
pub async fn wallets_of(
    pool: &PgPool,
    filter: &WalletFilter,
    page: &PageRequest,
) -> Result<Page<WalletView>, QueryError> {
    let after: Option<Uuid> = single_key(page, "wallets")?;
    let rows: Vec<WalletView> = sqlx::query_as(&format!(
        "SELECT {WALLET_COLUMNS} FROM wallets \
         WHERE owner = $1 AND ($2::uuid IS NULL OR id > $2) \
           AND ($3::text IS NULL OR currency = $3) AND ($4::text IS NULL OR status = $4) \
         ORDER BY id LIMIT $5"
    ))
    .bind(filter.owner)
    .bind(after)
    .bind(&filter.currency)
    .bind(&filter.status)
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Page::from_rows(rows, page.limit, |w| {
        cursor_key("wallets", w.id.to_string())
    }))
}

/// A wallet's ledger, newest first, one page (keyset on the position).
pub async fn ledger(
    pool: &PgPool,
    wallet: Uuid,
    page: &PageRequest,
) -> Result<Page<LedgerEntry>, QueryError> {
    let before: Option<i64> = single_key(page, "ledger")?;
    let rows: Vec<LedgerEntry> = sqlx::query_as(
        "SELECT position, version, at, kind, amount, balance_after, counterparty, reference \
         FROM wallet_ledger WHERE wallet_id = $1 AND ($2::bigint IS NULL OR position < $2) \
         ORDER BY position DESC LIMIT $3",
    )
    .bind(wallet)
    .bind(before)
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Page::from_rows(rows, page.limit, |e| {
        cursor_key("ledger", e.position.to_string())
    }))
}

/// A `transfers` row with the owners of its wallets.
#[derive(sqlx::FromRow)]
struct TransferRecord {
    id: Uuid,
    from_wallet: Uuid,
    to_wallet: Uuid,
    currency: String,
    amount: i64,
    memo: Option<String>,
    sent_position: Option<i64>,
    sent_version: Option<i64>,
    sent_at: Option<DateTime<Utc>>,
    from_balance_after: Option<i64>,
    received_position: Option<i64>,
    received_version: Option<i64>,
    received_at: Option<DateTime<Utc>>,
    to_balance_after: Option<i64>,
    from_owner: Option<Uuid>,
    to_owner: Option<Uuid>,
}

/// The transfer `id` with its legs and the wallets' owners, if the read model has it.
pub async fn transfer(pool: &PgPool, id: Uuid) -> Result<Option<TransferView>, sqlx::Error> {
    let row: Option<TransferRecord> = sqlx::query_as(
        "SELECT t.id, t.from_wallet, t.to_wallet, t.currency, t.amount, t.memo, \
                t.sent_position, t.sent_version, t.sent_at, t.from_balance_after, \
                t.received_position, t.received_version, t.received_at, t.to_balance_after, \
                f.owner AS from_owner, d.owner AS to_owner \
         FROM transfers t \
         LEFT JOIN wallets f ON f.id = t.from_wallet \
         LEFT JOIN wallets d ON d.id = t.to_wallet \
         WHERE t.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(transfer_view))
}

fn transfer_view(r: TransferRecord) -> TransferView {
    let mut legs = Vec::with_capacity(2);
    if let (Some(position), Some(version), Some(at), Some(balance_after)) = (
        r.sent_position,
        r.sent_version,
        r.sent_at,
        r.from_balance_after,
    ) {
        legs.push(TransferLeg {
            kind: "transfer_out",
            wallet: r.from_wallet,
            owner: r.from_owner,
            amount: -r.amount,
            balance_after,
            position,
            version,
            at,
        });
    }
    if let (Some(position), Some(version), Some(at), Some(balance_after)) = (
        r.received_position,
        r.received_version,
        r.received_at,
        r.to_balance_after,
    ) {
        legs.push(TransferLeg {
            kind: "transfer_in",
            wallet: r.to_wallet,
            owner: r.to_owner,
            amount: r.amount,
            balance_after,
            position,
            version,
            at,
        });
    }
    TransferView {
        id: r.id,
        from_wallet: r.from_wallet,
        to_wallet: r.to_wallet,
        from_owner: r.from_owner,
        to_owner: r.to_owner,
        currency: r.currency,
        amount: r.amount,
        memo: r.memo,
        status: if legs.len() == 2 {
            "completed"
        } else {
            "pending"
        },
        at: r.sent_at.or(r.received_at),
        legs,
    }
}

fn status_name(s: WalletStatus) -> &'static str {
    match s {
        WalletStatus::Unopened => "unopened",
        WalletStatus::Active => "active",
        WalletStatus::Frozen => "frozen",
        WalletStatus::Closed => "closed",
    }
}

fn reason_name(r: MoneyReason) -> &'static str {
    match r {
        MoneyReason::OrderPayment => "order_payment",
        MoneyReason::OrderRefund => "order_refund",
        MoneyReason::EscrowFunding => "escrow_funding",
        MoneyReason::EscrowRelease => "escrow_release",
        MoneyReason::EscrowRefund => "escrow_refund",
        MoneyReason::DisputeSettlement => "dispute_settlement",
        MoneyReason::PotContribution => "pot_contribution",
        MoneyReason::PotPayout => "pot_payout",
        MoneyReason::ContributionRefund => "contribution_refund",
    }
}

/// The ledger rows of a batch, column by column.
#[derive(Default)]
struct LedgerRows {
    wallet_id: Vec<Uuid>,
    position: Vec<i64>,
    version: Vec<i64>,
    at: Vec<DateTime<Utc>>,
    kind: Vec<&'static str>,
    amount: Vec<i64>,
    balance_after: Vec<i64>,
    counterparty: Vec<Option<Uuid>>,
    reference: Vec<Option<String>>,
}

/// One leg of a transfer as the batch saw it.
struct Leg {
    position: i64,
    version: i64,
    at: DateTime<Utc>,
    balance_after: i64,
}

/// A transfer row as the batch saw it: what either leg tells, and the legs applied.
struct PartialTransfer {
    from_wallet: Uuid,
    to_wallet: Uuid,
    currency: String,
    amount: i64,
    memo: Option<String>,
    sent: Option<Leg>,
    received: Option<Leg>,
}

/// What one wallet event does to money: (kind, signed amount, counterparty, reference).
fn movement(e: &WalletEvent) -> Option<(&'static str, i64, Option<Uuid>, Option<String>)> {
    use WalletEvent as E;
    Some(match e {
        E::FundsDeposited {
            amount,
            external_ref,
        } => ("deposit", *amount, None, Some(external_ref.clone())),
        E::FundsWithdrawn {
            amount,
            external_ref,
        } => ("withdrawal", -*amount, None, Some(external_ref.clone())),
        E::TransferSent {
            transfer_id,
            to_wallet,
            amount,
            ..
        } => (
            "transfer_out",
            -*amount,
            Some(*to_wallet),
            Some(transfer_id.to_string()),
        ),
        E::TransferReceived {
            transfer_id,
            from_wallet,
            amount,
            ..
        } => (
            "transfer_in",
            *amount,
            Some(*from_wallet),
            Some(transfer_id.to_string()),
        ),
        E::WalletDebited {
            amount,
            reason,
            reference,
        } => (
            reason_name(*reason),
            -*amount,
            None,
            Some(reference.to_string()),
        ),
        E::WalletCredited {
            amount,
            reason,
            reference,
        } => (
            reason_name(*reason),
            *amount,
            None,
            Some(reference.to_string()),
        ),
        E::WalletOpened { .. }
        | E::WalletFrozen { .. }
        | E::WalletUnfrozen { .. }
        | E::WalletClosed => return None,
    })
}

#[async_trait]
impl Projector for WalletsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["wallets", "wallet_ledger", "transfers"]
    }

    // The owner index serves queries only, and the ledger is only appended to.
    fn indexes_built_last(&self) -> &'static [&'static str] {
        &["wallets_owner", "wallet_ledger_pkey"]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &["wallet"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        let decoded = events
            .iter()
            .map(|e| decode::<WalletEvent>(e).map(|d| (e, d)))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = ids_to_load(events);
        let loaded: Vec<WalletView> = if ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(&format!(
                "SELECT {WALLET_COLUMNS} FROM wallets WHERE id = ANY($1)"
            ))
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
        };
        let mut wallets: HashMap<Uuid, WalletView> =
            loaded.into_iter().map(|w| (w.id, w)).collect();
        let mut ledger = LedgerRows::default();
        let mut transfers: HashMap<Uuid, PartialTransfer> = HashMap::new();

        for (event, e) in decoded {
            let at = event.metadata.occurred_at;
            if let WalletEvent::WalletOpened {
                owner, currency, ..
            } = &e
            {
                wallets.insert(
                    event.stream_id,
                    WalletView {
                        id: event.stream_id,
                        owner: *owner,
                        currency: currency.as_str().to_owned(),
                        balance: 0,
                        held: 0,
                        available: 0,
                        status: status_name(WalletStatus::Active).to_owned(),
                        version: event.stream_version,
                        position: event.position,
                        opened_at: at,
                        updated_at: at,
                    },
                );
                continue;
            }
            let Some(w) = wallets.get_mut(&event.stream_id) else {
                return Err(ApplyError::Poison(format!(
                    "{} at position {} for wallet {}, which was never opened",
                    event.event_type, event.position, event.stream_id
                )));
            };
            w.version = event.stream_version;
            w.position = event.position;
            w.updated_at = at;
            match &e {
                WalletEvent::WalletFrozen { .. } => {
                    w.status = status_name(WalletStatus::Frozen).into()
                }
                WalletEvent::WalletUnfrozen { .. } => {
                    w.status = status_name(WalletStatus::Active).into()
                }
                WalletEvent::WalletClosed => w.status = status_name(WalletStatus::Closed).into(),
                _ => {}
            }
            let Some((kind, amount, counterparty, reference)) = movement(&e) else {
                continue;
            };
            // The domain keeps balances within MAX_BALANCE; never wrap on stored data.
            w.balance = w.balance.saturating_add(amount);
            w.available = w.balance - w.held;
            ledger.wallet_id.push(w.id);
            ledger.position.push(event.position);
            ledger.version.push(event.stream_version);
            ledger.at.push(at);
            ledger.kind.push(kind);
            ledger.amount.push(amount);
            ledger.balance_after.push(w.balance);
            ledger.counterparty.push(counterparty);
            ledger.reference.push(reference);

            let leg = Leg {
                position: event.position,
                version: event.stream_version,
                at,
                balance_after: w.balance,
            };
            match e {
                WalletEvent::TransferSent {
                    transfer_id,
                    to_wallet,
                    amount,
                    memo,
                } => {
                    transfers
                        .entry(transfer_id)
                        .or_insert_with(|| PartialTransfer {
                            from_wallet: w.id,
                            to_wallet,
                            currency: w.currency.clone(),
                            amount,
                            memo,
                            sent: None,
                            received: None,
                        })
                        .sent = Some(leg);
                }
                WalletEvent::TransferReceived {
                    transfer_id,
                    from_wallet,
                    amount,
                    memo,
                } => {
                    transfers
                        .entry(transfer_id)
                        .or_insert_with(|| PartialTransfer {
                            from_wallet,
                            to_wallet: w.id,
                            currency: w.currency.clone(),
                            amount,
                            memo,
                            sent: None,
                            received: None,
                        })
                        .received = Some(leg);
                }
                _ => {}
            }
        }
        write_wallets(conn, wallets.into_values().collect()).await?;
        write_ledger(conn, ledger).await?;
        write_transfers(conn, transfers).await
    }
}

/// One UNNEST upsert of the touched wallets.
async fn write_wallets(conn: &mut PgConnection, rows: Vec<WalletView>) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut owner = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut balance = Vec::with_capacity(n);
    let mut held = Vec::with_capacity(n);
    let mut available = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut position = Vec::with_capacity(n);
    let mut opened_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    for w in rows {
        id.push(w.id);
        owner.push(w.owner);
        currency.push(w.currency);
        balance.push(w.balance);
        held.push(w.held);
        available.push(w.available);
        status.push(w.status);
        version.push(w.version);
        position.push(w.position);
        opened_at.push(w.opened_at);
        updated_at.push(w.updated_at);
    }
    sqlx::query(&format!(
        "INSERT INTO wallets ({WALLET_COLUMNS}) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[], \
                              $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], \
                              $10::timestamptz[], $11::timestamptz[]) \
         ON CONFLICT (id) DO UPDATE SET \
           owner = EXCLUDED.owner, currency = EXCLUDED.currency, balance = EXCLUDED.balance, \
           held = EXCLUDED.held, available = EXCLUDED.available, status = EXCLUDED.status, \
           version = EXCLUDED.version, position = EXCLUDED.position, \
           opened_at = EXCLUDED.opened_at, updated_at = EXCLUDED.updated_at"
    ))
    .bind(&id)
    .bind(&owner)
    .bind(&currency)
    .bind(&balance)
    .bind(&held)
    .bind(&available)
    .bind(&status)
    .bind(&version)
    .bind(&position)
    .bind(&opened_at)
    .bind(&updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One UNNEST insert of the batch's ledger rows (append-only).
async fn write_ledger(conn: &mut PgConnection, l: LedgerRows) -> Result<(), ApplyError> {
    if l.wallet_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO wallet_ledger \
           (wallet_id, position, version, at, kind, amount, balance_after, counterparty, reference) \
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::timestamptz[], \
                              $5::text[], $6::bigint[], $7::bigint[], $8::uuid[], $9::text[])",
    )
    .bind(&l.wallet_id)
    .bind(&l.position)
    .bind(&l.version)
    .bind(&l.at)
    .bind(&l.kind)
    .bind(&l.amount)
    .bind(&l.balance_after)
    .bind(&l.counterparty)
    .bind(&l.reference)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One UNNEST upsert of the batch's transfers: a leg already stored is kept, a new one added,
/// whichever leg came first.
async fn write_transfers(
    conn: &mut PgConnection,
    rows: HashMap<Uuid, PartialTransfer>,
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut from_wallet = Vec::with_capacity(n);
    let mut to_wallet = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut amount = Vec::with_capacity(n);
    let mut memo = Vec::with_capacity(n);
    let mut sent_position = Vec::with_capacity(n);
    let mut sent_version = Vec::with_capacity(n);
    let mut sent_at = Vec::with_capacity(n);
    let mut from_balance_after = Vec::with_capacity(n);
    let mut received_position = Vec::with_capacity(n);
    let mut received_version = Vec::with_capacity(n);
    let mut received_at = Vec::with_capacity(n);
    let mut to_balance_after = Vec::with_capacity(n);
    for (tid, t) in rows {
        id.push(tid);
        from_wallet.push(t.from_wallet);
        to_wallet.push(t.to_wallet);
        currency.push(t.currency);
        amount.push(t.amount);
        memo.push(t.memo);
        sent_position.push(t.sent.as_ref().map(|l| l.position));
        sent_version.push(t.sent.as_ref().map(|l| l.version));
        sent_at.push(t.sent.as_ref().map(|l| l.at));
        from_balance_after.push(t.sent.as_ref().map(|l| l.balance_after));
        received_position.push(t.received.as_ref().map(|l| l.position));
        received_version.push(t.received.as_ref().map(|l| l.version));
        received_at.push(t.received.as_ref().map(|l| l.at));
        to_balance_after.push(t.received.as_ref().map(|l| l.balance_after));
    }
    sqlx::query(
        "INSERT INTO transfers \
           (id, from_wallet, to_wallet, currency, amount, memo, \
            sent_position, sent_version, sent_at, from_balance_after, \
            received_position, received_version, received_at, to_balance_after) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], \
                              $6::text[], $7::bigint[], $8::bigint[], $9::timestamptz[], \
                              $10::bigint[], $11::bigint[], $12::bigint[], $13::timestamptz[], \
                              $14::bigint[]) \
         ON CONFLICT (id) DO UPDATE SET \
           sent_position = coalesce(EXCLUDED.sent_position, transfers.sent_position), \
           sent_version = coalesce(EXCLUDED.sent_version, transfers.sent_version), \
           sent_at = coalesce(EXCLUDED.sent_at, transfers.sent_at), \
           from_balance_after = coalesce(EXCLUDED.from_balance_after, transfers.from_balance_after), \
           received_position = coalesce(EXCLUDED.received_position, transfers.received_position), \
           received_version = coalesce(EXCLUDED.received_version, transfers.received_version), \
           received_at = coalesce(EXCLUDED.received_at, transfers.received_at), \
           to_balance_after = coalesce(EXCLUDED.to_balance_after, transfers.to_balance_after)",
    )
    .bind(&id)
    .bind(&from_wallet)
    .bind(&to_wallet)
    .bind(&currency)
    .bind(&amount)
    .bind(&memo)
    .bind(&sent_position)
    .bind(&sent_version)
    .bind(&sent_at)
    .bind(&from_balance_after)
    .bind(&received_position)
    .bind(&received_version)
    .bind(&received_at)
    .bind(&to_balance_after)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
