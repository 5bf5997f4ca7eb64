//! The `stats` read model: platform totals per currency and the conservation check.
//!
//! Money is created and destroyed only by deposits and withdrawals, so for every currency
//! `balances + escrowed + in_pots = deposits - withdrawals`, where `balances` sums the wallets,
//! `escrowed` the funded escrows and `in_pots` the pots' money not yet paid out or refunded.
//!
//! A money move spans several streams in one transaction of the log (a transfer's two legs, a
//! funding's debit and escrow event), while a batch may end inside a transaction. The totals
//! therefore take in whole transactions only: what a cut transaction contributed so far waits
//! in `platform_totals_pending` until its last event is applied, so the totals balance at every
//! checkpoint.

use crate::{ApplyError, Projector};
use async_trait::async_trait;
use domain::escrow::EscrowEvent;
use domain::pot::PotEvent;
use domain::wallet::WalletEvent;
use schemas::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

use super::decode;

/// The projector's name (checkpoint, lease, `X-Position`).
pub const NAME: &str = "stats";

/// Keeps `platform_totals` (with `platform_totals_pending` and `stream_currencies`) from the
/// wallet, escrow and pot streams.
pub struct StatsProjector;

/// Platform totals of one currency, in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CurrencyTotals {
    /// Money that entered the platform (`FundsDeposited`).
    pub deposits: i128,
    /// Money that left the platform (`FundsWithdrawn`).
    pub withdrawals: i128,
    /// The sum of all wallet balances.
    pub balances: i128,
    /// Money held by funded escrows.
    pub escrowed: i128,
    /// Money held by pots (contributions not paid out or refunded).
    pub in_pots: i128,
    /// `deposits - withdrawals`: what the platform must hold.
    pub net_deposits: i128,
    /// Whether `balances + escrowed + in_pots == deposits - withdrawals`.
    pub conserved: bool,
}

/// The platform totals, as GET /v1/stats shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlatformStats {
    /// The totals per ISO 4217 currency code.
    pub currencies: BTreeMap<String, CurrencyTotals>,
    /// Whether money is conserved in every currency.
    pub conserved: bool,
}

/// The platform totals of every currency seen so far.
pub async fn platform_stats(pool: &PgPool) -> Result<PlatformStats, sqlx::Error> {
    let rows: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
        "SELECT currency, deposits::text, withdrawals::text, balances::text, escrowed::text, \
                in_pots::text \
         FROM platform_totals ORDER BY currency",
    )
    .fetch_all(pool)
    .await?;
    let mut stats = PlatformStats {
        currencies: BTreeMap::new(),
        conserved: true,
    };
    for (currency, d, w, b, e, p) in rows {
        let delta = Delta {
            deposits: number(&d)?,
            withdrawals: number(&w)?,
            balances: number(&b)?,
            escrowed: number(&e)?,
            in_pots: number(&p)?,
        };
        let net = delta.deposits - delta.withdrawals;
        let conserved = delta.balances + delta.escrowed + delta.in_pots == net;
        stats.conserved &= conserved;
        stats.currencies.insert(
            currency,
            CurrencyTotals {
                deposits: delta.deposits,
                withdrawals: delta.withdrawals,
                balances: delta.balances,
                escrowed: delta.escrowed,
                in_pots: delta.in_pots,
                net_deposits: net,
                conserved,
            },
        );
    }
    Ok(stats)
}

fn number(text: &str) -> Result<i128, sqlx::Error> {
    text.parse::<i128>()
        .map_err(|e| sqlx::Error::Decode(format!("a total is not a whole number: {e}").into()))
}

/// What events add to one currency's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Delta {
    deposits: i128,
    withdrawals: i128,
    balances: i128,
    escrowed: i128,
    in_pots: i128,
}

impl Delta {
    fn add(&mut self, o: &Delta) {
        self.deposits += o.deposits;
        self.withdrawals += o.withdrawals;
        self.balances += o.balances;
        self.escrowed += o.escrowed;
        self.in_pots += o.in_pots;
    }

    fn balances(amount: i64) -> Delta {
        Delta {
            balances: amount.into(),
            ..Delta::default()
        }
    }

    fn escrowed(amount: i64) -> Delta {
        Delta {
            escrowed: amount.into(),
            ..Delta::default()
        }
    }

    fn in_pots(amount: i64) -> Delta {
        Delta {
            in_pots: amount.into(),
            ..Delta::default()
        }
    }
}

/// What one event does to the totals.
enum Effect {
    /// A wallet, escrow or pot opened in this currency.
    Opened(String),
    /// Money moved in the stream's currency.
    Money(Delta),
    /// Nothing.
    None,
}

fn effect(event: &RecordedEvent) -> Result<Effect, ApplyError> {
    Ok(match event.stream_type.as_str() {
        "wallet" => {
            use WalletEvent as E;
            match decode::<WalletEvent>(event)? {
                E::WalletOpened { currency, .. } => Effect::Opened(currency.as_str().to_owned()),
                E::FundsDeposited { amount, .. } => Effect::Money(Delta {
                    deposits: amount.into(),
                    balances: amount.into(),
                    ..Delta::default()
                }),
                E::FundsWithdrawn { amount, .. } => Effect::Money(Delta {
                    withdrawals: amount.into(),
                    balances: -i128::from(amount),
                    ..Delta::default()
                }),
                E::TransferReceived { amount, .. } | E::WalletCredited { amount, .. } => {
                    Effect::Money(Delta::balances(amount))
                }
                E::TransferSent { amount, .. } | E::WalletDebited { amount, .. } => {
                    Effect::Money(Delta::balances(-amount))
                }
                E::WalletFrozen { .. } | E::WalletUnfrozen { .. } | E::WalletClosed => Effect::None,
            }
        }
        "escrow" => {
            use EscrowEvent as E;
            match decode::<EscrowEvent>(event)? {
                E::EscrowOpened { currency, .. } => Effect::Opened(currency.as_str().to_owned()),
                E::EscrowFunded { amount } => Effect::Money(Delta::escrowed(amount)),
                E::EscrowReleased { amount, .. } | E::EscrowRefunded { amount, .. } => {
                    Effect::Money(Delta::escrowed(-amount))
                }
                E::DisputeResolved {
                    to_seller,
                    to_buyer,
                } => Effect::Money(Delta {
                    escrowed: -(i128::from(to_seller) + i128::from(to_buyer)),
                    ..Delta::default()
                }),
                E::DisputeRaised { .. } => Effect::None,
            }
        }
        "pot" => {
            use PotEvent as E;
            match decode::<PotEvent>(event)? {
                E::PotCreated { currency, .. } => Effect::Opened(currency.as_str().to_owned()),
                E::ContributionReceived { amount, .. } => Effect::Money(Delta::in_pots(amount)),
                E::PotPaidOut { amount, .. } | E::ContributionRefunded { amount, .. } => {
                    Effect::Money(Delta::in_pots(-amount))
                }
                E::PotInvitationSent { .. } | E::PotClosed { .. } | E::PotCancelled { .. } => {
                    Effect::None
                }
            }
        }
        _ => Effect::None,
    })
}

/// Rows of `platform_totals_pending`: the transaction and what it added so far, per currency.
type Pending = (Option<i64>, HashMap<String, Delta>);

async fn load_pending(conn: &mut PgConnection) -> Result<Pending, ApplyError> {
    let rows: Vec<(String, i64, String, String, String, String, String)> = sqlx::query_as(
        "SELECT currency, tx, deposits::text, withdrawals::text, balances::text, \
                escrowed::text, in_pots::text \
         FROM platform_totals_pending",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut tx = None;
    let mut deltas = HashMap::with_capacity(rows.len());
    for (currency, t, d, w, b, e, p) in rows {
        tx = Some(t);
        deltas.insert(
            currency,
            Delta {
                deposits: number(&d)?,
                withdrawals: number(&w)?,
                balances: number(&b)?,
                escrowed: number(&e)?,
                in_pots: number(&p)?,
            },
        );
    }
    Ok((tx, deltas))
}

/// Per-currency deltas as text columns (numeric in SQL: sums may pass bigint).
#[derive(Default)]
struct Columns {
    currency: Vec<String>,
    deposits: Vec<String>,
    withdrawals: Vec<String>,
    balances: Vec<String>,
    escrowed: Vec<String>,
    in_pots: Vec<String>,
}

impl Columns {
    fn of(deltas: HashMap<String, Delta>) -> Columns {
        let mut c = Columns::default();
        for (currency, d) in deltas {
            c.currency.push(currency);
            c.deposits.push(d.deposits.to_string());
            c.withdrawals.push(d.withdrawals.to_string());
            c.balances.push(d.balances.to_string());
            c.escrowed.push(d.escrowed.to_string());
            c.in_pots.push(d.in_pots.to_string());
        }
        c
    }
}

/// Whether the log holds an event of these streams after `position` in transaction `tx`
/// (the transaction was cut by the batch's end). The log is `public.events` whichever schema
/// the read model is written to.
async fn continues(
    conn: &mut PgConnection,
    tx: i64,
    position: i64,
    stream_types: &[&str],
) -> Result<bool, ApplyError> {
    let more: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM public.events \
                        WHERE tx = $1 AND position > $2 AND stream_type = ANY($3))",
    )
    .bind(tx)
    .bind(position)
    .bind(stream_types)
    .fetch_one(&mut *conn)
    .await?;
    Ok(more)
}

#[async_trait]
impl Projector for StatsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "platform_totals",
            "platform_totals_pending",
            "stream_currencies",
        ]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &["wallet", "escrow", "pot"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let effects = events
            .iter()
            .map(|e| effect(e).map(|f| (e, f)))
            .collect::<Result<Vec<_>, _>>()?;

        // The currency of every stream that moves money: opened in this batch, or stored.
        let mut opened: Vec<(Uuid, String)> = Vec::new();
        let mut currencies: HashMap<Uuid, String> = HashMap::new();
        for (e, f) in &effects {
            if let Effect::Opened(c) = f {
                opened.push((e.stream_id, c.clone()));
                currencies.insert(e.stream_id, c.clone());
            }
        }
        let mut unknown: Vec<Uuid> = effects
            .iter()
            .filter(|(e, f)| {
                matches!(f, Effect::Money(_)) && !currencies.contains_key(&e.stream_id)
            })
            .map(|(e, _)| e.stream_id)
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            let stored: Vec<(Uuid, String)> = sqlx::query_as(
                "SELECT stream_id, currency FROM stream_currencies WHERE stream_id = ANY($1)",
            )
            .bind(&unknown)
            .fetch_all(&mut *conn)
            .await?;
            currencies.extend(stored);
        }

        // Fold whole transactions into `done`; the last one may be cut by the batch's end.
        let (pending_tx, pending) = load_pending(conn).await?;
        let had_pending = pending_tx.is_some();
        let mut done: HashMap<String, Delta> = HashMap::new();
        let mut group_tx = pending_tx;
        let mut group = pending;
        for (e, f) in effects {
            if group_tx != Some(e.tx) {
                for (c, d) in group.drain() {
                    done.entry(c).or_default().add(&d);
                }
                group_tx = Some(e.tx);
            }
            match f {
                Effect::Opened(c) => {
                    group.entry(c).or_default();
                }
                Effect::Money(d) => {
                    let Some(c) = currencies.get(&e.stream_id) else {
                        return Err(ApplyError::Poison(format!(
                            "{} at position {} for {} {}, which was never opened",
                            e.event_type, e.position, e.stream_type, e.stream_id
                        )));
                    };
                    group.entry(c.clone()).or_default().add(&d);
                }
                Effect::None => {}
            }
        }
        let cut = !group.is_empty()
            && continues(conn, last.tx, last.position, self.stream_types()).await?;
        let still_pending = if cut {
            group
        } else {
            for (c, d) in group.drain() {
                done.entry(c).or_default().add(&d);
            }
            HashMap::new()
        };

        if !opened.is_empty() {
            let (ids, cur): (Vec<Uuid>, Vec<String>) = opened.into_iter().unzip();
            sqlx::query(
                "INSERT INTO stream_currencies (stream_id, currency) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[])",
            )
            .bind(&ids)
            .bind(&cur)
            .execute(&mut *conn)
            .await?;
        }
        if had_pending {
            sqlx::query("DELETE FROM platform_totals_pending")
                .execute(&mut *conn)
                .await?;
        }
        if !still_pending.is_empty() {
            let c = Columns::of(still_pending);
            sqlx::query(
                "INSERT INTO platform_totals_pending \
                   (currency, tx, deposits, withdrawals, balances, escrowed, in_pots) \
                 SELECT c, $7, d::numeric, w::numeric, b::numeric, e::numeric, p::numeric \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                             $6::text[]) AS u(c, d, w, b, e, p)",
            )
            .bind(&c.currency)
            .bind(&c.deposits)
            .bind(&c.withdrawals)
            .bind(&c.balances)
            .bind(&c.escrowed)
            .bind(&c.in_pots)
            .bind(last.tx)
            .execute(&mut *conn)
            .await?;
        }
        if !done.is_empty() {
            let c = Columns::of(done);
            sqlx::query(
                "INSERT INTO platform_totals \
                   (currency, deposits, withdrawals, balances, escrowed, in_pots) \
                 SELECT c, d::numeric, w::numeric, b::numeric, e::numeric, p::numeric \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                             $6::text[]) AS u(c, d, w, b, e, p) \
                 ON CONFLICT (currency) DO UPDATE SET \
                   deposits = platform_totals.deposits + EXCLUDED.deposits, \
                   withdrawals = platform_totals.withdrawals + EXCLUDED.withdrawals, \
                   balances = platform_totals.balances + EXCLUDED.balances, \
                   escrowed = platform_totals.escrowed + EXCLUDED.escrowed, \
                   in_pots = platform_totals.in_pots + EXCLUDED.in_pots",
            )
            .bind(&c.currency)
            .bind(&c.deposits)
            .bind(&c.withdrawals)
            .bind(&c.balances)
            .bind(&c.escrowed)
            .bind(&c.in_pots)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
