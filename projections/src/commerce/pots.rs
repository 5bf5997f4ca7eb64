//! The `pots` read model (tables `pots`, `pot_contributions`, `pot_invitations`): every pot
//! with its raised total, contributor count and contributions, and who was invited.
//!
//! The tables keep every contributor (the projector needs them for the counts); the queries
//! hide an anonymous contribution's contributor and wallet from every reader but the
//! contributor, admins and auditors.

use super::{
    cursor_i64, cursor_key, cursor_parts, cursor_uuid, decode_all, ids_to_load, load_rows, HasId,
    Lookup, QueryError, Reader, Touched,
};
use crate::page::{Page, PageRequest};
use crate::runtime::{ApplyError, Projector};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::pot::{PotEvent, PotStatus, Visibility};
use schemas::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use std::collections::HashMap;
use uuid::Uuid;

/// The projector's name (checkpoint, `X-Position`, CLI).
pub const NAME: &str = "pots";

/// The most recent contributions a single pot's answer shows.
pub const RECENT_CONTRIBUTIONS: i64 = 100;

/// The most recent contributions each pot of a list shows.
pub const LIST_RECENT_CONTRIBUTIONS: i64 = 5;

/// The `pots` projector.
#[derive(Debug, Clone, Copy, Default)]
pub struct PotsProjector;

/// A pot's status as stored and shown (`open`, `closed`, `paid_out`, `cancelled`).
pub fn status_name(status: PotStatus) -> &'static str {
    match status {
        PotStatus::Uncreated => "uncreated",
        PotStatus::Open => "open",
        PotStatus::Closed => "closed",
        PotStatus::PaidOut => "paid_out",
        PotStatus::Cancelled => "cancelled",
    }
}

/// A pot's visibility as stored and shown (`public`, `private`).
pub fn visibility_name(v: Visibility) -> &'static str {
    match v {
        Visibility::Public => "public",
        Visibility::Private => "private",
    }
}

/// One row of `pots`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct PotRow {
    id: Uuid,
    owner: Uuid,
    beneficiary: Uuid,
    title: String,
    currency: String,
    target_amount: Option<i64>,
    closes_at: DateTime<Utc>,
    visibility: String,
    status: String,
    raised: i64,
    paid_out: i64,
    contributor_count: i32,
    contribution_count: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
    position: i64,
}

impl HasId for PotRow {
    fn id(&self) -> Uuid {
        self.id
    }
}

/// A contribution as the projector needs it to apply a refund.
#[derive(Debug, Clone)]
struct Known {
    pot_id: Uuid,
    contributor: Uuid,
    amount: i64,
    refunded: bool,
    /// Its index among the batch's new contributions; `None` when it is already stored.
    new_index: Option<usize>,
}

/// The contributions received in a batch, as columns.
#[derive(Default)]
struct ContributionColumns {
    contribution_id: Vec<Uuid>,
    pot_id: Vec<Uuid>,
    position: Vec<i64>,
    contributor: Vec<Uuid>,
    wallet: Vec<Uuid>,
    amount: Vec<i64>,
    anonymous: Vec<bool>,
    message: Vec<Option<String>>,
    refunded: Vec<bool>,
    received_at: Vec<DateTime<Utc>>,
}

/// The invitations of a batch, as columns.
#[derive(Default)]
struct InvitationColumns {
    pot_id: Vec<Uuid>,
    account: Vec<Uuid>,
    invited_at: Vec<DateTime<Utc>>,
    position: Vec<i64>,
}

#[async_trait]
impl Projector for PotsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["pots", "pot_contributions", "pot_invitations"]
    }

    // They serve queries only (`apply` finds contributions by id and by contributor).
    fn indexes_built_last(&self) -> &'static [&'static str] {
        &["pots_raised", "pots_closes_at", "pot_contributions_recent"]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        // Accounts for one event: a contributor's erased personal data erases the messages.
        &["pot", "account"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        if events.iter().all(|e| e.stream_type == "pot") {
            return self.apply_pots(conn, events).await;
        }
        let pots: Vec<RecordedEvent> = events
            .iter()
            .filter(|e| e.stream_type == "pot")
            .cloned()
            .collect();
        self.apply_pots(conn, &pots).await?;
        // A contributor's erasure comes after every contribution it made (an erased account
        // is closed and contributes nothing more), so erasing after the batch's pot events
        // is the log's order.
        let erased: Vec<Uuid> = events
            .iter()
            .filter(|e| e.stream_type == "account" && e.event_type == "PersonalDataErased")
            .map(|e| e.stream_id)
            .collect();
        if !erased.is_empty() {
            sqlx::query(
                "UPDATE pot_contributions SET message = $2 \
                 WHERE contributor = ANY($1) AND message IS NOT NULL",
            )
            .bind(&erased)
            .bind(schemas::personal::ERASED)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

impl PotsProjector {
    async fn apply_pots(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        if events.is_empty() {
            return Ok(());
        }
        let decoded = decode_all::<PotEvent>(events)?;
        let to_load = ids_to_load(events);
        let loaded = load_rows::<PotRow>(conn, "pots", &to_load).await?;

        // What the counts need from before the batch: the stored contributions the batch
        // refunds, and how many live (not refunded) contributions each (pot, contributor)
        // pair of the batch already has.
        let mut refunded_ids = Vec::new();
        let mut pairs: Vec<(Uuid, Uuid)> = Vec::new();
        for (e, event) in events.iter().zip(&decoded) {
            match event {
                PotEvent::ContributionReceived { contributor, .. }
                    if loaded.contains_key(&e.stream_id) =>
                {
                    pairs.push((e.stream_id, *contributor));
                }
                PotEvent::ContributionRefunded {
                    contribution_id, ..
                } if loaded.contains_key(&e.stream_id) => refunded_ids.push(*contribution_id),
                _ => {}
            }
        }
        let mut known = stored_contributions(conn, &refunded_ids).await?;
        pairs.extend(known.values().map(|k| (k.pot_id, k.contributor)));
        let mut live = live_counts(conn, &pairs).await?;

        let mut rows = Touched::new(loaded);
        let mut contributions = ContributionColumns::default();
        let mut invitations = InvitationColumns::default();
        let mut refunded_stored: Vec<Uuid> = Vec::new();
        for (e, event) in events.iter().zip(decoded) {
            let at = e.metadata.occurred_at;
            let row = match event {
                PotEvent::PotCreated {
                    pot_id: _,
                    owner,
                    beneficiary,
                    title,
                    currency,
                    target_amount,
                    closes_at,
                    visibility,
                } => {
                    rows.create(
                        e.stream_id,
                        PotRow {
                            id: e.stream_id,
                            owner,
                            beneficiary,
                            title,
                            currency: currency.as_str().to_owned(),
                            target_amount,
                            closes_at,
                            visibility: visibility_name(visibility).to_owned(),
                            status: status_name(PotStatus::Open).to_owned(),
                            raised: 0,
                            paid_out: 0,
                            contributor_count: 0,
                            contribution_count: 0,
                            created_at: at,
                            updated_at: at,
                            version: 0,
                            position: 0,
                        },
                    );
                    rows.row(e)?
                }
                PotEvent::ContributionReceived {
                    contribution_id,
                    contributor,
                    wallet,
                    amount,
                    message,
                    anonymous,
                } => {
                    let row = rows.row(e)?;
                    row.raised = row.raised.saturating_add(amount);
                    row.contribution_count = row.contribution_count.saturating_add(1);
                    let n = live.entry((e.stream_id, contributor)).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        row.contributor_count = row.contributor_count.saturating_add(1);
                    }
                    known.insert(
                        contribution_id,
                        Known {
                            pot_id: e.stream_id,
                            contributor,
                            amount,
                            refunded: false,
                            new_index: Some(contributions.contribution_id.len()),
                        },
                    );
                    contributions.contribution_id.push(contribution_id);
                    contributions.pot_id.push(e.stream_id);
                    contributions.position.push(e.position);
                    contributions.contributor.push(contributor);
                    contributions.wallet.push(wallet);
                    contributions.amount.push(amount);
                    contributions.anonymous.push(anonymous);
                    contributions.message.push(message);
                    contributions.refunded.push(false);
                    contributions.received_at.push(at);
                    row
                }
                PotEvent::PotInvitationSent { account } => {
                    invitations.pot_id.push(e.stream_id);
                    invitations.account.push(account);
                    invitations.invited_at.push(at);
                    invitations.position.push(e.position);
                    rows.row(e)?
                }
                PotEvent::PotClosed { .. } => {
                    let row = rows.row(e)?;
                    row.status = status_name(PotStatus::Closed).to_owned();
                    row
                }
                PotEvent::PotPaidOut { amount, .. } => {
                    let row = rows.row(e)?;
                    row.paid_out = row.paid_out.saturating_add(amount);
                    row.status = status_name(PotStatus::PaidOut).to_owned();
                    row
                }
                PotEvent::PotCancelled { .. } => {
                    let row = rows.row(e)?;
                    row.status = status_name(PotStatus::Cancelled).to_owned();
                    row
                }
                PotEvent::ContributionRefunded {
                    contribution_id, ..
                } => {
                    let row = rows.row(e)?;
                    // As the aggregate does: a contribution of this pot not refunded yet goes
                    // back by its own amount; anything else changes nothing.
                    if let Some(k) = known
                        .get_mut(&contribution_id)
                        .filter(|k| k.pot_id == e.stream_id && !k.refunded)
                    {
                        k.refunded = true;
                        row.raised = row.raised.saturating_sub(k.amount);
                        match k.new_index {
                            Some(i) => contributions.refunded[i] = true,
                            None => refunded_stored.push(contribution_id),
                        }
                        let n = live.entry((k.pot_id, k.contributor)).or_insert(0);
                        *n -= 1;
                        if *n == 0 {
                            row.contributor_count = row.contributor_count.saturating_sub(1);
                        }
                    }
                    row
                }
            };
            row.version = e.stream_version;
            row.position = e.position;
            row.updated_at = at;
        }
        write_pots(conn, &rows).await?;
        write_contributions(conn, &contributions).await?;
        if !refunded_stored.is_empty() {
            sqlx::query(
                "UPDATE pot_contributions SET refunded = true \
                 WHERE contribution_id = ANY($1)",
            )
            .bind(&refunded_stored)
            .execute(&mut *conn)
            .await?;
        }
        write_invitations(conn, &invitations).await?;
        Ok(())
    }
}

/// The stored contributions with these ids.
async fn stored_contributions(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Known>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Uuid, Uuid, i64, bool)> = sqlx::query_as(
        "SELECT contribution_id, pot_id, contributor, amount, refunded FROM pot_contributions \
         WHERE contribution_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, pot_id, contributor, amount, refunded)| {
            (
                id,
                Known {
                    pot_id,
                    contributor,
                    amount,
                    refunded,
                    new_index: None,
                },
            )
        })
        .collect())
}

/// How many stored contributions not refunded each (pot, contributor) pair has.
async fn live_counts(
    conn: &mut PgConnection,
    pairs: &[(Uuid, Uuid)],
) -> Result<HashMap<(Uuid, Uuid), i64>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (pots, contributors): (Vec<Uuid>, Vec<Uuid>) = pairs.iter().copied().unzip();
    let rows: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
        "SELECT c.pot_id, c.contributor, count(*) FROM pot_contributions c \
         JOIN (SELECT DISTINCT * FROM UNNEST($1::uuid[], $2::uuid[])) AS k(pot_id, contributor) \
           ON c.contributor = k.contributor AND c.pot_id = k.pot_id \
         WHERE NOT c.refunded GROUP BY c.pot_id, c.contributor",
    )
    .bind(&pots)
    .bind(&contributors)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(p, c, n)| ((p, c), n)).collect())
}

async fn write_pots(conn: &mut PgConnection, rows: &Touched<PotRow>) -> Result<(), sqlx::Error> {
    if rows.len() == 0 {
        return Ok(());
    }
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut owner = Vec::with_capacity(n);
    let mut beneficiary = Vec::with_capacity(n);
    let mut title = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut target_amount = Vec::with_capacity(n);
    let mut closes_at = Vec::with_capacity(n);
    let mut visibility = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut raised = Vec::with_capacity(n);
    let mut paid_out = Vec::with_capacity(n);
    let mut contributor_count = Vec::with_capacity(n);
    let mut contribution_count = Vec::with_capacity(n);
    let mut created_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut position = Vec::with_capacity(n);
    for r in rows.changed() {
        id.push(r.id);
        owner.push(r.owner);
        beneficiary.push(r.beneficiary);
        title.push(r.title.as_str());
        currency.push(r.currency.as_str());
        target_amount.push(r.target_amount);
        closes_at.push(r.closes_at);
        visibility.push(r.visibility.as_str());
        status.push(r.status.as_str());
        raised.push(r.raised);
        paid_out.push(r.paid_out);
        contributor_count.push(r.contributor_count);
        contribution_count.push(r.contribution_count);
        created_at.push(r.created_at);
        updated_at.push(r.updated_at);
        version.push(r.version);
        position.push(r.position);
    }
    sqlx::query(
        "INSERT INTO pots (id, owner, beneficiary, title, currency, target_amount, closes_at, \
           visibility, status, raised, paid_out, contributor_count, contribution_count, \
           created_at, updated_at, version, position) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
           $6::bigint[], $7::timestamptz[], $8::text[], $9::text[], $10::bigint[], \
           $11::bigint[], $12::int[], $13::int[], $14::timestamptz[], $15::timestamptz[], \
           $16::bigint[], $17::bigint[]) \
         ON CONFLICT (id) DO UPDATE SET \
           status = EXCLUDED.status, raised = EXCLUDED.raised, paid_out = EXCLUDED.paid_out, \
           contributor_count = EXCLUDED.contributor_count, \
           contribution_count = EXCLUDED.contribution_count, \
           updated_at = EXCLUDED.updated_at, version = EXCLUDED.version, \
           position = EXCLUDED.position",
    )
    .bind(&id)
    .bind(&owner)
    .bind(&beneficiary)
    .bind(&title)
    .bind(&currency)
    .bind(&target_amount)
    .bind(&closes_at)
    .bind(&visibility)
    .bind(&status)
    .bind(&raised)
    .bind(&paid_out)
    .bind(&contributor_count)
    .bind(&contribution_count)
    .bind(&created_at)
    .bind(&updated_at)
    .bind(&version)
    .bind(&position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_contributions(
    conn: &mut PgConnection,
    c: &ContributionColumns,
) -> Result<(), sqlx::Error> {
    if c.contribution_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO pot_contributions (contribution_id, pot_id, position, contributor, wallet, \
           amount, anonymous, message, refunded, received_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::uuid[], \
           $6::bigint[], $7::bool[], $8::text[], $9::bool[], $10::timestamptz[])",
    )
    .bind(&c.contribution_id)
    .bind(&c.pot_id)
    .bind(&c.position)
    .bind(&c.contributor)
    .bind(&c.wallet)
    .bind(&c.amount)
    .bind(&c.anonymous)
    .bind(&c.message)
    .bind(&c.refunded)
    .bind(&c.received_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_invitations(
    conn: &mut PgConnection,
    i: &InvitationColumns,
) -> Result<(), sqlx::Error> {
    if i.pot_id.is_empty() {
        return Ok(());
    }
    // The aggregate keeps a set: a repeated invitation changes nothing.
    sqlx::query(
        "INSERT INTO pot_invitations (pot_id, account, invited_at, position) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bigint[]) \
         ON CONFLICT (pot_id, account) DO NOTHING",
    )
    .bind(&i.pot_id)
    .bind(&i.account)
    .bind(&i.invited_at)
    .bind(&i.position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One contribution as queries show it: contributor and wallet are null when the contribution
/// is anonymous, except to the contributor, admins and auditors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContributionView {
    /// The contribution's id.
    pub contribution_id: Uuid,
    /// The contributing account; null when hidden.
    pub contributor: Option<Uuid>,
    /// The debited wallet; null when hidden.
    pub wallet: Option<Uuid>,
    /// How much, in minor units.
    pub amount: i64,
    /// Whether the contribution is anonymous.
    pub anonymous: bool,
    /// An optional message to the beneficiary.
    pub message: Option<String>,
    /// Whether it went back to its wallet.
    pub refunded: bool,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// A pot as `GET /v1/pots/{id}` and `GET /v1/pots` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PotView {
    /// The pot's id.
    pub id: Uuid,
    /// The account that created it.
    pub owner: Uuid,
    /// The account the money is for.
    pub beneficiary: Uuid,
    /// The title.
    pub title: String,
    /// The currency.
    pub currency: String,
    /// An optional goal, in minor units.
    pub target_amount: Option<i64>,
    /// When contributions stop.
    pub closes_at: DateTime<Utc>,
    /// `public` or `private`.
    pub visibility: String,
    /// `open`, `closed`, `paid_out` or `cancelled`.
    pub status: String,
    /// Contributions not refunded, in minor units.
    pub raised: i64,
    /// What went to the beneficiary.
    pub paid_out: i64,
    /// What the pot holds now (`raised - paid_out`).
    pub held: i64,
    /// Distinct accounts with contributions not refunded (anonymous ones counted, not named).
    pub contributor_count: i32,
    /// Every contribution ever received.
    pub contribution_count: i32,
    /// The most recent contributions, newest first (100 for one pot, 5 per pot in a list).
    pub contributions: Vec<ContributionView>,
    /// Invited accounts: shown to the owner, admins and auditors, in one pot's answer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invited: Option<Vec<Uuid>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last event happened.
    pub updated_at: DateTime<Utc>,
    /// The pot's stream version (its ETag).
    pub version: i64,
}

impl PotView {
    fn from_row(r: PotRow, contributions: Vec<ContributionView>) -> Self {
        Self {
            id: r.id,
            owner: r.owner,
            beneficiary: r.beneficiary,
            title: r.title,
            currency: r.currency,
            target_amount: r.target_amount,
            closes_at: r.closes_at,
            visibility: r.visibility,
            status: r.status,
            raised: r.raised,
            paid_out: r.paid_out,
            held: r.raised.saturating_sub(r.paid_out),
            contributor_count: r.contributor_count,
            contribution_count: r.contribution_count,
            contributions,
            invited: None,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// A stored contribution, before hiding.
#[derive(sqlx::FromRow)]
struct ContributionRow {
    pot_id: Uuid,
    contribution_id: Uuid,
    contributor: Uuid,
    wallet: Uuid,
    amount: i64,
    anonymous: bool,
    message: Option<String>,
    refunded: bool,
    received_at: DateTime<Utc>,
}

impl ContributionRow {
    /// The contribution as `reader` may see it.
    fn shown_to(self, reader: Reader) -> ContributionView {
        let named =
            !self.anonymous || reader.is_all() || reader.account() == Some(self.contributor);
        ContributionView {
            contribution_id: self.contribution_id,
            contributor: named.then_some(self.contributor),
            wallet: named.then_some(self.wallet),
            amount: self.amount,
            anonymous: self.anonymous,
            message: self.message,
            refunded: self.refunded,
            received_at: self.received_at,
        }
    }
}

/// The most recent `per_pot` contributions of each pot, newest first, as `reader` may see them.
async fn recent_contributions(
    conn: &mut PgConnection,
    pots: &[Uuid],
    per_pot: i64,
    reader: Reader,
) -> Result<HashMap<Uuid, Vec<ContributionView>>, sqlx::Error> {
    if pots.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<ContributionRow> = sqlx::query_as(
        "SELECT c.pot_id, c.contribution_id, c.contributor, c.wallet, c.amount, c.anonymous, \
                c.message, c.refunded, c.received_at \
         FROM UNNEST($1::uuid[]) AS p(id) \
         CROSS JOIN LATERAL (SELECT * FROM pot_contributions \
                             WHERE pot_id = p.id ORDER BY position DESC LIMIT $2) AS c",
    )
    .bind(pots)
    .bind(per_pot)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: HashMap<Uuid, Vec<ContributionView>> = HashMap::with_capacity(pots.len());
    for r in rows {
        out.entry(r.pot_id).or_default().push(r.shown_to(reader));
    }
    Ok(out)
}

/// The SQL condition (on `pots p`) of the pots `reader` may see: public pots for everyone;
/// a private pot for its owner, its beneficiary, invited accounts and contributors; all for
/// admins and auditors.
fn push_visible(q: &mut QueryBuilder<'_, Postgres>, reader: Reader) {
    match reader {
        Reader::All => {}
        Reader::Account(None) => {
            q.push(" AND p.visibility = 'public'");
        }
        Reader::Account(Some(me)) => {
            q.push(" AND (p.visibility = 'public' OR p.owner = ")
                .push_bind(me)
                .push(" OR p.beneficiary = ")
                .push_bind(me)
                .push(" OR EXISTS (SELECT 1 FROM pot_invitations i WHERE i.pot_id = p.id AND i.account = ")
                .push_bind(me)
                .push(") OR EXISTS (SELECT 1 FROM pot_contributions c WHERE c.pot_id = p.id AND c.contributor = ")
                .push_bind(me)
                .push("))");
        }
    }
}

/// The pot `id` as `reader` may see it: 100 recent contributions (anonymous contributors
/// hidden), and the invitations for its owner, admins and auditors.
pub async fn pot(pool: &PgPool, id: Uuid, reader: Reader) -> Result<Lookup<PotView>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let row: Option<PotRow> = sqlx::query_as("SELECT * FROM pots WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Ok(Lookup::NotFound);
    };
    let mut q: QueryBuilder<Postgres> =
        QueryBuilder::new("SELECT EXISTS (SELECT 1 FROM pots p WHERE p.id = ");
    q.push_bind(id);
    push_visible(&mut q, reader);
    q.push(")");
    let visible: bool = q.build_query_scalar().fetch_one(&mut *tx).await?;
    if !visible {
        return Ok(Lookup::Forbidden);
    }
    let mut recent = recent_contributions(&mut tx, &[id], RECENT_CONTRIBUTIONS, reader).await?;
    let show_invited = reader.is_all() || reader.account() == Some(row.owner);
    let invited = if show_invited {
        let accounts: Vec<Uuid> = sqlx::query_scalar(
            "SELECT account FROM pot_invitations WHERE pot_id = $1 ORDER BY account",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        Some(accounts)
    } else {
        None
    };
    tx.commit().await?;
    let mut view = PotView::from_row(row, recent.remove(&id).unwrap_or_default());
    view.invited = invited;
    Ok(Lookup::Found(view))
}

/// How `GET /v1/pots` sorts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PotSort {
    /// Newest first (the default).
    #[default]
    Newest,
    /// Largest raised total first.
    Raised,
    /// Soonest `closes_at` first.
    ClosesAt,
}

/// Which pots `GET /v1/pots` lists (always only those the reader may see).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PotFilter {
    /// Only public or only private pots.
    pub visibility: Option<Visibility>,
    /// Only in this status.
    pub status: Option<PotStatus>,
    /// The order.
    pub sort: PotSort,
}

/// A page of the pots `reader` may see, in `filter.sort` order, each with its 5 most recent
/// contributions (anonymous contributors hidden).
pub async fn pots(
    pool: &PgPool,
    filter: &PotFilter,
    reader: Reader,
    page: &PageRequest,
) -> Result<Page<PotView>, QueryError> {
    let tag = match filter.sort {
        PotSort::Newest => "pots.newest",
        PotSort::Raised => "pots.raised",
        PotSort::ClosesAt => "pots.closes_at",
    };
    let arity = if filter.sort == PotSort::Newest { 1 } else { 2 };
    let after = cursor_parts(&page.after, tag, arity)?;
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT p.* FROM pots p WHERE true");
    push_visible(&mut q, reader);
    if let Some(v) = filter.visibility {
        q.push(" AND p.visibility = ").push_bind(visibility_name(v));
    }
    if let Some(s) = filter.status {
        q.push(" AND p.status = ").push_bind(status_name(s));
    }
    match (filter.sort, after) {
        (PotSort::Newest, Some(key)) => {
            q.push(" AND p.id < ").push_bind(cursor_uuid(&key[0])?);
        }
        (PotSort::Raised, Some(key)) => {
            q.push(" AND (p.raised, p.id) < (")
                .push_bind(cursor_i64(&key[0])?)
                .push(", ")
                .push_bind(cursor_uuid(&key[1])?)
                .push(")");
        }
        (PotSort::ClosesAt, Some(key)) => {
            let at = DateTime::<Utc>::from_timestamp_micros(cursor_i64(&key[0])?)
                .ok_or(QueryError::BadCursor)?;
            q.push(" AND (p.closes_at, p.id) > (")
                .push_bind(at)
                .push(", ")
                .push_bind(cursor_uuid(&key[1])?)
                .push(")");
        }
        (_, None) => {}
    }
    q.push(match filter.sort {
        PotSort::Newest => " ORDER BY p.id DESC",
        PotSort::Raised => " ORDER BY p.raised DESC, p.id DESC",
        PotSort::ClosesAt => " ORDER BY p.closes_at, p.id",
    });
    q.push(" LIMIT ").push_bind(page.limit + 1);
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<PotRow> = q.build_query_as().fetch_all(&mut *tx).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut recent = recent_contributions(&mut tx, &ids, LIST_RECENT_CONTRIBUTIONS, reader).await?;
    tx.commit().await?;
    let views = rows
        .into_iter()
        .map(|r| {
            let c = recent.remove(&r.id).unwrap_or_default();
            PotView::from_row(r, c)
        })
        .collect();
    let sort = filter.sort;
    Ok(Page::from_rows(views, page.limit, move |p: &PotView| {
        let parts = match sort {
            PotSort::Newest => vec![p.id.to_string()],
            PotSort::Raised => vec![p.raised.to_string(), p.id.to_string()],
            PotSort::ClosesAt => vec![p.closes_at.timestamp_micros().to_string(), p.id.to_string()],
        };
        cursor_key(tag, &parts)
    }))
}
