//! Deadline processes: a scheduler that turns events into durable timers, and a runner that
//! fires the timers that are due with commands of the actor `system:deadlines`.
//!
//! The scheduler reads the log through `read_all` and moves its checkpoint in the same
//! transaction as the timers it writes, so every event is scheduled exactly once. The runner
//! performs each due timer as a command whose `step` (`<kind>:<aggregate>:<due>`) is claimed
//! in the same commit as its events: after a crash between the commit and marking the timer
//! done, the repeat finds the claim and performs nothing. A deadline that passed while
//! Chronicle was down is simply due when it comes back.

use crate::escrows::Settle;
use crate::service::{Actor, CommandError, CommandService, Envelope, Refusal, Role};
use crate::store::StoreError;
use crate::unit::{change, ClaimSpec, Decision, Locks, OnTaken, Unit};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use domain::account::{Account, AccountStatus};
use domain::device::{Device, DeviceCommand};
use domain::escrow::Party;
use domain::order::CancelledBy;
use domain::pot::{Pot, PotCommand, Visibility};
use domain::wallet::{Wallet, WalletCommand};
use domain::Currency;
use schemas::Cursor;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// The scheduler's checkpoint name.
const SCHEDULER: &str = "deadline_scheduler";
/// How long a paid order may stay unshipped before it is cancelled and refunded.
pub const UNSHIPPED_DAYS: i64 = 14;
/// How long a firmware update may go unreported before it is marked failed.
pub const FIRMWARE_TIMEOUT_HOURS: i64 = 24;

/// The kinds of timers.
pub mod kind {
    /// Release an escrow to the seller at `release_after`.
    pub const ESCROW_RELEASE: &str = "escrow_release";
    /// Refund an escrow to the buyer at `expires_at`.
    pub const ESCROW_REFUND: &str = "escrow_refund";
    /// Cancel and refund a paid order not shipped within 14 days.
    pub const ORDER_UNSHIPPED: &str = "order_unshipped";
    /// Close a pot at `closes_at`.
    pub const POT_CLOSE: &str = "pot_close";
    /// Fail a firmware update not reported within 24 hours.
    pub const FIRMWARE_TIMEOUT: &str = "firmware_timeout";
    /// Close a closed account's wallets and decommission its devices.
    pub const ACCOUNT_CLOSURE: &str = "account_closure";
    /// Create an opted-in account's birthday pot 30 days before its birthday (recurring).
    pub const BIRTHDAY_POT: &str = "birthday_pot";
}

/// A timer the scheduler derived from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// What to do.
    pub kind: &'static str,
    /// To which aggregate.
    pub aggregate_id: Uuid,
    /// When.
    pub due_at: DateTime<Utc>,
}

fn at(payload: &serde_json::Value, field: &str) -> Option<DateTime<Utc>> {
    payload
        .get(field)
        .and_then(|v| v.as_str())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
}

/// The timers an event starts.
pub fn timers_for(event: &schemas::RecordedEvent) -> Vec<Timer> {
    timers_of(
        event.stream_id,
        &event.event_type,
        &event.payload,
        event.metadata.occurred_at,
    )
}

fn timers_of(
    id: Uuid,
    event_type: &str,
    p: &serde_json::Value,
    occurred_at: DateTime<Utc>,
) -> Vec<Timer> {
    let timer = |kind, due_at| Timer {
        kind,
        aggregate_id: id,
        due_at,
    };
    match event_type {
        "EscrowOpened" => {
            let mut t = Vec::new();
            if let Some(r) = at(p, "release_after") {
                t.push(timer(kind::ESCROW_RELEASE, r));
            }
            if let Some(e) = at(p, "expires_at") {
                t.push(timer(kind::ESCROW_REFUND, e));
            }
            t
        }
        "OrderPaid" => at(p, "paid_at")
            .map(|d| timer(kind::ORDER_UNSHIPPED, d + Duration::days(UNSHIPPED_DAYS)))
            .into_iter()
            .collect(),
        "PotCreated" => at(p, "closes_at")
            .map(|d| timer(kind::POT_CLOSE, d))
            .into_iter()
            .collect(),
        "AccountClosed" => vec![timer(kind::ACCOUNT_CLOSURE, occurred_at)],
        // The birthday process looks at the account when it fires and plans its next run.
        "AccountOpened" if !p.get("birth_date").is_none_or(|b| b.is_null()) => {
            vec![timer(kind::BIRTHDAY_POT, occurred_at)]
        }
        "ProfileUpdated" if !p.get("preferences").is_none_or(|b| b.is_null()) => {
            vec![timer(kind::BIRTHDAY_POT, occurred_at)]
        }
        "FirmwareUpdateScheduled" => at(p, "scheduled_at")
            .map(|d| {
                timer(
                    kind::FIRMWARE_TIMEOUT,
                    d + Duration::hours(FIRMWARE_TIMEOUT_HOURS),
                )
            })
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// The event types that start a deadline (see `timers_for`).
const SCHEDULING_EVENTS: &[&str] = &[
    "EscrowOpened",
    "OrderPaid",
    "PotCreated",
    "FirmwareUpdateScheduled",
    "AccountClosed",
    "AccountOpened",
    "ProfileUpdated",
];

type ScheduleRow = (
    i64,
    i64,
    Uuid,
    String,
    Option<serde_json::Value>,
    DateTime<Utc>,
);

/// Schedules the timers of up to `batch` new events; returns how many events it read.
///
/// It follows the reading rule of `EventStore::read_all` (final rows only, in (tx, position)
/// order, resumed from a (tx, position) cursor), but fetches the payload only of the few event
/// types that start a deadline: the scheduler tails every event and should cost the log little.
pub async fn schedule_step(pool: &PgPool, batch: i64) -> Result<usize, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO process_checkpoints (name, tx, position) VALUES ($1, 0, 0) ON CONFLICT DO NOTHING")
        .bind(SCHEDULER)
        .execute(&mut *tx)
        .await?;
    // The row lock makes one scheduler at a time across processes.
    let (ctx, cpos): (i64, i64) =
        sqlx::query_as("SELECT tx, position FROM process_checkpoints WHERE name = $1 FOR UPDATE")
            .bind(SCHEDULER)
            .fetch_one(&mut *tx)
            .await?;
    let rows: Vec<ScheduleRow> = sqlx::query_as(
        "SELECT tx, position, stream_id, event_type, \
                CASE WHEN event_type = ANY($4) THEN payload END, occurred_at \
         FROM events \
         WHERE (tx, position) > ($1, $2) \
           AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
         ORDER BY tx, position LIMIT $3",
    )
    .bind(ctx)
    .bind(cpos)
    .bind(batch)
    .bind(SCHEDULING_EVENTS)
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = rows.last().map(|r| Cursor {
        tx: r.0,
        position: r.1,
    }) else {
        tx.rollback().await?;
        return Ok(0);
    };
    let read = rows.len();
    for (_, _, stream_id, event_type, payload, occurred_at) in rows {
        let Some(payload) = payload else { continue };
        for timer in timers_of(stream_id, &event_type, &payload, occurred_at) {
            sqlx::query(
                "INSERT INTO timers (kind, aggregate_id, due_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, aggregate_id) DO UPDATE SET due_at = EXCLUDED.due_at, done_at = NULL, outcome = NULL",
            )
            .bind(timer.kind)
            .bind(timer.aggregate_id)
            .bind(timer.due_at)
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query("UPDATE process_checkpoints SET tx = $2, position = $3 WHERE name = $1")
        .bind(SCHEDULER)
        .bind(last.tx)
        .bind(last.position)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(read)
}

/// Fires up to `batch` timers due at `now`; returns how many it settled.
pub async fn fire_due(
    service: &CommandService,
    pool: &PgPool,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<usize, StoreError> {
    let due: Vec<(String, Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT kind, aggregate_id, due_at FROM timers WHERE done_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT $2",
    )
    .bind(now)
    .bind(batch)
    .fetch_all(pool)
    .await?;
    let mut settled = 0;
    for (kind, id, due_at) in due {
        let outcome = match service.fire(&kind, id, due_at).await {
            Ok(Some(r)) => format!("done at position {}", r.position),
            Ok(None) => continue, // not a timer this version performs yet
            // The aggregate moved on (released by hand, shipped, ...): nothing left to do.
            // A 409 (a race with another command) is transient: the timer stays due.
            Err(CommandError::Refused(r)) if r.status != 409 => {
                format!("nothing to do: {}", r.code)
            }
            Err(e) => {
                tracing::warn!(error = %e, kind, %id, "a deadline failed; it is retried");
                continue;
            }
        };
        if kind == kind::BIRTHDAY_POT {
            let next = match service.next_birthday_pot(id, now).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, %id, "cannot plan the next birthday pot; retried");
                    continue;
                }
            };
            if let Some(next) = next {
                // A recurring timer: it moves to its next due time instead of ending.
                sqlx::query("UPDATE timers SET due_at = $4, outcome = $5 WHERE kind = $1 AND aggregate_id = $2 AND due_at = $3")
                    .bind(&kind)
                    .bind(id)
                    .bind(due_at)
                    .bind(next)
                    .bind(&outcome)
                    .execute(pool)
                    .await?;
                settled += 1;
                continue;
            }
        }
        sqlx::query("UPDATE timers SET done_at = now(), outcome = $4 WHERE kind = $1 AND aggregate_id = $2 AND due_at = $3")
            .bind(&kind)
            .bind(id)
            .bind(due_at)
            .bind(outcome)
            .execute(pool)
            .await?;
        settled += 1;
    }
    Ok(settled)
}

/// Runs the scheduler and the runner until `shutdown` resolves.
pub async fn run(
    service: Arc<CommandService>,
    pool: PgPool,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let mut busy = false;
        match schedule_step(&pool, 5_000).await {
            Ok(n) => busy |= n > 0,
            Err(e) => tracing::warn!(error = %e, "the deadline scheduler failed; retrying"),
        }
        match fire_due(&service, &pool, service.now(), 50).await {
            Ok(n) => busy |= n > 0,
            Err(e) => tracing::warn!(error = %e, "the deadline runner failed; retrying"),
        }
        // Deadlines need no millisecond precision: a few rounds a second keep the scheduler's own
        // commits (one per round) off the log's hot path.
        let pause = std::time::Duration::from_millis(if busy { 100 } else { 500 });
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

impl CommandService {
    /// The service's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Performs one timer as the actor `system:deadlines`. `Ok(None)`: not a timer this
    /// version performs.
    pub async fn fire(
        &self,
        kind: &str,
        id: Uuid,
        due_at: DateTime<Utc>,
    ) -> Result<Option<crate::CommandResult>, CommandError> {
        let step = format!("{kind}:{id}:{}", due_at.timestamp_micros());
        if let Some(done) = self
            .store
            .claim(crate::unit::PROCESS_STEP_SCOPE, &step)
            .await?
        {
            // Performed before (the runner stopped before marking the timer done).
            return Ok(Some(crate::CommandResult {
                id: done.stream_id,
                version: done.stream_version,
                position: done.position,
                created: false,
                recorded: false,
            }));
        }
        let mut env = Envelope::new(Actor {
            subject: "system:deadlines".into(),
            roles: vec![Role::System],
        });
        env.step = Some(step);
        let now = self.clock.now();
        let unit = Unit {
            role: Role::System,
            primary: id,
            created: false,
        };
        match kind {
            kind::ESCROW_RELEASE | kind::ESCROW_REFUND => {
                let e = self.escrows.read(self.store.as_ref(), id).await?;
                if e.version == 0 {
                    return Err(Refusal::not_found("escrow").into());
                }
                let settle = if kind == kind::ESCROW_RELEASE {
                    Settle::Release
                } else {
                    Settle::Refund
                };
                self.settle_escrow(&env, unit, &e.state, settle, Party::System, now)
                    .await
                    .map(Some)
            }
            kind::ORDER_UNSHIPPED => self.cancel_unshipped(&env, id).await.map(Some),
            kind::ACCOUNT_CLOSURE => self.closure_cascade(&env, id).await.map(Some),
            kind::BIRTHDAY_POT => self.birthday_pot(&env, id).await.map(Some),
            kind::POT_CLOSE => {
                let locks = Locks::default().existing::<Pot>(id);
                self.run_unit(&env, unit, locks, |locked| {
                    locked.existing::<Pot>(id, "pot")?;
                    Ok(Decision::of(vec![change::<Pot>(
                        id,
                        PotCommand::Close {
                            by_system: true,
                            now,
                        },
                    )]))
                })
                .await
                .map(Some)
            }
            kind::FIRMWARE_TIMEOUT => {
                let locks = Locks::default().existing::<Device>(id);
                self.run_unit(&env, unit, locks, |locked| {
                    locked.existing::<Device>(id, "device")?;
                    Ok(Decision::of(vec![change::<Device>(
                        id,
                        DeviceCommand::TimeOutFirmwareUpdate { now },
                    )]))
                })
                .await
                .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The account-closure cascade: close the account's (empty) wallets, decommission its
    /// devices. Each part is a step of its own, so a restart resumes where it stopped; parts
    /// already done are refused by their aggregates and skipped.
    async fn closure_cascade(
        &self,
        env: &Envelope,
        account: Uuid,
    ) -> Result<crate::CommandResult, CommandError> {
        let mut last = None;
        let prefix = format!("{account}:");
        let wallets = self
            .store
            .claims_with_prefix(crate::wallets::WALLET_SCOPE, &prefix)
            .await?;
        let devices = self
            .store
            .claims_with_prefix(crate::devices::OWNER_SCOPE, &prefix)
            .await?;
        let parts = wallets
            .iter()
            .map(|c| (c.stream_id, true))
            .chain(devices.iter().map(|c| (c.stream_id, false)));
        for (id, is_wallet) in parts {
            let mut part = env.clone();
            part.step = env.step.as_ref().map(|s| format!("{s}:{id}"));
            if let Some(step) = &part.step {
                if self
                    .store
                    .claim(crate::unit::PROCESS_STEP_SCOPE, step)
                    .await?
                    .is_some()
                {
                    continue;
                }
            }
            let unit = Unit {
                role: Role::System,
                primary: id,
                created: false,
            };
            let outcome = if is_wallet {
                self.run_unit(&part, unit, Locks::default().existing::<Wallet>(id), |_| {
                    Ok(Decision::of(vec![change::<Wallet>(
                        id,
                        WalletCommand::Close,
                    )]))
                })
                .await
            } else {
                let reason = "the owner's account was closed".to_owned();
                self.run_unit(&part, unit, Locks::default().existing::<Device>(id), |_| {
                    Ok(Decision::of(vec![change::<Device>(
                        id,
                        DeviceCommand::Decommission {
                            reason: reason.clone(),
                        },
                    )]))
                })
                .await
            };
            match outcome {
                Ok(r) => last = Some(r),
                // Already closed or decommissioned (by hand, or before a restart).
                Err(CommandError::Refused(r)) if r.status == 422 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(last.unwrap_or(crate::CommandResult {
            id: account,
            version: 0,
            position: 0,
            created: false,
            recorded: false,
        }))
    }

    /// The birthday that an opted-in, active account's next pot is for (`None`: no pot to
    /// plan), looking from `today`.
    async fn birthday_for(
        &self,
        account: Uuid,
        today: NaiveDate,
    ) -> Result<Option<(Account, NaiveDate)>, CommandError> {
        let a = self.accounts.read(self.store.as_ref(), account).await?;
        let opted = a.state.preferences.birthday_pot == Some(true);
        match a.state.birth_date {
            Some(birth) if opted && a.state.status == AccountStatus::Active => {
                Ok(next_birthday(birth, today).map(|b| (a.state, b)))
            }
            _ => Ok(None),
        }
    }

    /// When the birthday process of `account` runs next, if it still has something to do.
    pub async fn next_birthday_pot(
        &self,
        account: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, CommandError> {
        let today = now.date_naive();
        let Some((_, birthday)) = self.birthday_for(account, today).await? else {
            return Ok(None);
        };
        let due = midnight(birthday - Duration::days(BIRTHDAY_POT_DAYS));
        if due > now {
            return Ok(Some(due));
        }
        // This year's pot is made: next year's.
        Ok(next_birthday(birthday, birthday)
            .map(|b| midnight(b - Duration::days(BIRTHDAY_POT_DAYS))))
    }

    /// Creates the account's public birthday pot, closing at the end of the birthday, when the
    /// birthday is at most 30 days away; the pot is in the currency of the account's first
    /// wallet.
    async fn birthday_pot(
        &self,
        env: &Envelope,
        account: Uuid,
    ) -> Result<crate::CommandResult, CommandError> {
        let now = self.clock.now();
        let not_now = |why: &str| CommandError::from(Refusal::new(422, "not_due", why));
        let Some((a, birthday)) = self.birthday_for(account, now.date_naive()).await? else {
            return Err(not_now("the account does not want a birthday pot"));
        };
        if now < midnight(birthday - Duration::days(BIRTHDAY_POT_DAYS)) {
            return Err(not_now("the birthday is more than 30 days away"));
        }
        let wallets = self
            .store
            .claims_with_prefix(crate::wallets::WALLET_SCOPE, &format!("{account}:"))
            .await?;
        let currency = wallets
            .first()
            .and_then(|c| c.key.rsplit(':').next())
            .and_then(|code| Currency::parse("currency", code).ok())
            .ok_or_else(|| not_now("the account has no wallet to name a currency"))?;
        let slot = match self.pot_slot(account, birthday).await {
            Ok(slot) => slot,
            // The account already has an open pot closing that day.
            Err(CommandError::Refused(r)) => {
                return Err(Refusal::new(422, "not_due", r.detail).into())
            }
            Err(e) => return Err(e),
        };
        let id = Uuid::now_v7();
        let closes_at = midnight(birthday) + Duration::days(1) - Duration::seconds(1);
        let title = match &a.display_name {
            Some(name) => format!("{name}'s birthday"),
            None => "Birthday".to_owned(),
        };
        let create = PotCommand::Create {
            pot_id: id,
            owner: account,
            beneficiary: account,
            title: title.chars().take(200).collect(),
            currency,
            target_amount: None,
            closes_at,
            visibility: Visibility::Public,
            now,
        };
        let raced = Refusal::new(409, "concurrency_conflict", "try again");
        let claims = vec![
            ClaimSpec {
                scope: crate::pots::POT_SCOPE,
                key: slot,
                stream: id,
                on_taken: OnTaken::Refuse(raced.clone()),
            },
            ClaimSpec {
                scope: crate::accounts::OBLIGATION_SCOPE,
                key: format!("{account}:pot:{id}"),
                stream: id,
                on_taken: OnTaken::Refuse(raced),
            },
        ];
        let unit = Unit {
            role: Role::System,
            primary: id,
            created: true,
        };
        self.run_unit(env, unit, Locks::default().new_aggregate::<Pot>(id), |_| {
            Ok(Decision {
                changes: vec![change::<Pot>(id, create.clone())],
                claims: claims.clone(),
                result_id: None,
            })
        })
        .await
    }

    /// The 14-day process: a paid order not shipped is cancelled and refunded.
    async fn cancel_unshipped(
        &self,
        env: &Envelope,
        id: Uuid,
    ) -> Result<crate::CommandResult, CommandError> {
        let order = self.orders.read(self.store.as_ref(), id).await?;
        if order.version == 0 {
            return Err(Refusal::not_found("order").into());
        }
        let currency = order
            .state
            .currency
            .ok_or_else(|| Refusal::not_found("order"))?;
        let cancel = domain::order::OrderCommand::Cancel {
            reason: format!("not shipped within {UNSHIPPED_DAYS} days"),
            by: CancelledBy::System,
        };
        let unit = Unit {
            role: Role::System,
            primary: id,
            created: false,
        };
        self.refund_plan(
            env,
            unit,
            &order.state,
            currency,
            cancel,
            None,
            self.clock.now(),
        )
        .await
    }
}

/// How many days before a birthday its pot is created.
pub const BIRTHDAY_POT_DAYS: i64 = 30;

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0)
        .map_or_else(Utc::now, |d| d.and_utc())
}

/// The first birthday strictly after `after` of someone born on `birth` (29 February falls on
/// 28 February in other years).
pub fn next_birthday(birth: NaiveDate, after: NaiveDate) -> Option<NaiveDate> {
    (after.year()..=after.year() + 1).find_map(|year| {
        let day = NaiveDate::from_ymd_opt(year, birth.month(), birth.day())
            .or_else(|| NaiveDate::from_ymd_opt(year, 2, 28))?;
        (day > after).then_some(day)
    })
}
