//! The `accounts` read model: one row per account with its profile, KYC and lifecycle status.
//! `PersonalDataErased` blanks the personal fields (e-mail, display name, birth date).

use super::{decode, ids_to_load};
use crate::{ApplyError, Projector};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use domain::account::{AccountEvent, AccountStatus, KycStatus};
use schemas::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use uuid::Uuid;

/// The projector's name (checkpoint, lease, `X-Position`).
pub const NAME: &str = "accounts";

/// Keeps `accounts` from the account streams.
pub struct AccountsProjector;

/// An account as stored and as GET /v1/accounts/{id} shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AccountView {
    /// The account's id.
    pub id: Uuid,
    /// The authentication subject bound to the account.
    pub subject: String,
    /// Contact e-mail; null once personal data is erased.
    pub email: Option<String>,
    /// Display name; null once personal data is erased.
    pub display_name: Option<String>,
    /// Birth date; null once personal data is erased.
    pub birth_date: Option<NaiveDate>,
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
    /// Profile preferences (`{"birthday_pot": true}`, ...).
    pub preferences: serde_json::Value,
    /// `none`, `pending`, `approved` or `rejected`.
    pub kyc_status: String,
    /// `active`, `suspended` or `closed`.
    pub status: String,
    /// Whether the personal data has been erased.
    pub personal_data_erased: bool,
    /// The account stream's version (the `ETag`).
    pub version: i64,
    /// The global position of the account's last event (stored, not shown: the answer's
    /// `X-Position` tells how current it is).
    #[serde(skip)]
    pub position: i64,
    /// When the account was opened.
    pub opened_at: DateTime<Utc>,
    /// When the account last changed.
    pub updated_at: DateTime<Utc>,
    /// When the account was closed, if it was.
    pub closed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, subject, email, display_name, birth_date, country, preferences, \
     kyc_status, status, personal_data_erased, version, position, opened_at, updated_at, closed_at";

/// The account `id`, if the read model has it.
pub async fn account(pool: &PgPool, id: Uuid) -> Result<Option<AccountView>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM accounts WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

fn kyc_name(k: KycStatus) -> &'static str {
    match k {
        KycStatus::None => "none",
        KycStatus::Pending => "pending",
        KycStatus::Approved => "approved",
        KycStatus::Rejected => "rejected",
    }
}

fn status_name(s: AccountStatus) -> &'static str {
    match s {
        AccountStatus::Unopened => "unopened",
        AccountStatus::Active => "active",
        AccountStatus::Suspended => "suspended",
        AccountStatus::Closed => "closed",
    }
}

/// Folds one event into the account's row (`None` before AccountOpened).
fn fold(
    row: Option<AccountView>,
    event: &RecordedEvent,
    e: AccountEvent,
) -> Result<AccountView, ApplyError> {
    use AccountEvent as E;
    let at = event.metadata.occurred_at;
    let mut row = match (row, e) {
        (
            _,
            E::AccountOpened {
                account_id: _,
                subject,
                email,
                display_name,
                birth_date,
                country,
            },
        ) => AccountView {
            id: event.stream_id,
            subject,
            email: Some(email),
            display_name: Some(display_name),
            birth_date,
            country,
            preferences: serde_json::json!({}),
            kyc_status: kyc_name(KycStatus::None).to_owned(),
            status: status_name(AccountStatus::Active).to_owned(),
            personal_data_erased: false,
            version: 0,
            position: 0,
            opened_at: at,
            updated_at: at,
            closed_at: None,
        },
        (None, _) => {
            return Err(ApplyError::Poison(format!(
                "{} at position {} for account {}, which was never opened",
                event.event_type, event.position, event.stream_id
            )))
        }
        (Some(mut row), e) => {
            match e {
                E::AccountOpened { .. } => {}
                E::ProfileUpdated {
                    display_name,
                    preferences,
                } => {
                    if let Some(name) = display_name {
                        row.display_name = Some(name);
                    }
                    if let Some(p) = preferences {
                        row.preferences = serde_json::to_value(p).map_err(|e| {
                            ApplyError::Poison(format!("cannot encode preferences: {e}"))
                        })?;
                    }
                }
                E::KycSubmitted { .. } => row.kyc_status = kyc_name(KycStatus::Pending).into(),
                E::KycApproved => row.kyc_status = kyc_name(KycStatus::Approved).into(),
                E::KycRejected { .. } => row.kyc_status = kyc_name(KycStatus::Rejected).into(),
                E::AccountSuspended { .. } => {
                    row.status = status_name(AccountStatus::Suspended).into()
                }
                E::AccountReinstated => row.status = status_name(AccountStatus::Active).into(),
                E::AccountClosed { .. } => {
                    row.status = status_name(AccountStatus::Closed).into();
                    row.closed_at = Some(at);
                }
                E::PersonalDataErased => {
                    row.personal_data_erased = true;
                    row.email = None;
                    row.display_name = None;
                    row.birth_date = None;
                }
            }
            row
        }
    };
    row.version = event.stream_version;
    row.position = event.position;
    row.updated_at = at;
    Ok(row)
}

#[async_trait]
impl Projector for AccountsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["accounts"]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &["account"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        let decoded = events
            .iter()
            .map(|e| decode::<AccountEvent>(e).map(|d| (e, d)))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = ids_to_load(events);
        let loaded: Vec<AccountView> = if ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM accounts WHERE id = ANY($1)"
            ))
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
        };
        let mut rows: HashMap<Uuid, AccountView> = loaded.into_iter().map(|r| (r.id, r)).collect();
        for (event, e) in decoded {
            let row = fold(rows.remove(&event.stream_id), event, e)?;
            rows.insert(row.id, row);
        }
        write(conn, rows.into_values().collect()).await
    }
}

/// One UNNEST upsert of the touched rows.
async fn write(conn: &mut PgConnection, rows: Vec<AccountView>) -> Result<(), ApplyError> {
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut subject = Vec::with_capacity(n);
    let mut email = Vec::with_capacity(n);
    let mut display_name = Vec::with_capacity(n);
    let mut birth_date = Vec::with_capacity(n);
    let mut country = Vec::with_capacity(n);
    let mut preferences = Vec::with_capacity(n);
    let mut kyc_status = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut erased = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut position = Vec::with_capacity(n);
    let mut opened_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut closed_at = Vec::with_capacity(n);
    for r in rows {
        id.push(r.id);
        subject.push(r.subject);
        email.push(r.email);
        display_name.push(r.display_name);
        birth_date.push(r.birth_date);
        country.push(r.country);
        preferences.push(r.preferences);
        kyc_status.push(r.kyc_status);
        status.push(r.status);
        erased.push(r.personal_data_erased);
        version.push(r.version);
        position.push(r.position);
        opened_at.push(r.opened_at);
        updated_at.push(r.updated_at);
        closed_at.push(r.closed_at);
    }
    sqlx::query(&format!(
        "INSERT INTO accounts ({COLUMNS}) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::date[], \
                              $6::text[], $7::jsonb[], $8::text[], $9::text[], $10::bool[], \
                              $11::bigint[], $12::bigint[], $13::timestamptz[], \
                              $14::timestamptz[], $15::timestamptz[]) \
         ON CONFLICT (id) DO UPDATE SET \
           subject = EXCLUDED.subject, email = EXCLUDED.email, \
           display_name = EXCLUDED.display_name, birth_date = EXCLUDED.birth_date, \
           country = EXCLUDED.country, preferences = EXCLUDED.preferences, \
           kyc_status = EXCLUDED.kyc_status, status = EXCLUDED.status, \
           personal_data_erased = EXCLUDED.personal_data_erased, version = EXCLUDED.version, \
           position = EXCLUDED.position, opened_at = EXCLUDED.opened_at, \
           updated_at = EXCLUDED.updated_at, closed_at = EXCLUDED.closed_at"
    ))
    .bind(&id)
    .bind(&subject)
    .bind(&email)
    .bind(&display_name)
    .bind(&birth_date)
    .bind(&country)
    .bind(&preferences)
    .bind(&kyc_status)
    .bind(&status)
    .bind(&erased)
    .bind(&version)
    .bind(&position)
    .bind(&opened_at)
    .bind(&updated_at)
    .bind(&closed_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
