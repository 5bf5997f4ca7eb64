//! Pot use cases: create, contribute, invite, close, pay out and cancel; GET a pot. Every money
//! move is one commit over the pot and every wallet it touches.

use crate::repo::Loaded;
use crate::service::{CommandError, CommandResult, CommandService, Envelope, Refusal, Role};
use crate::unit::{change, changes, ClaimSpec, Decision, Locks, OnTaken, Unit};
use chrono::{DateTime, NaiveDate, Utc};
use domain::account::{AccountStatus, KycStatus};
use domain::pot::{self, Pot, PotCommand, PotError, PotStatus, PublicContribution, Visibility};
use domain::wallet::{MoneyReason, Wallet, WalletCommand};
use domain::{Amount, Currency};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Claim scope: at most one open pot per beneficiary and `closes_at` date. The first pot of a
/// beneficiary and date claims `<beneficiary>:<YYYY-MM-DD>`; once that pot is no longer open,
/// the next one claims `<beneficiary>:<YYYY-MM-DD>#2`, then `#3`, and so on.
pub const POT_SCOPE: &str = "pot_beneficiary_date";

/// How many contributions GET /v1/pots/{id} shows (the most recent first).
pub const RECENT_CONTRIBUTIONS: usize = 100;

/// How often CancelPot re-plans when contributions from wallets it had not locked arrive
/// between its first look and its commit.
const CANCEL_ATTEMPTS: usize = 8;

/// CreatePot input.
#[derive(Debug, Clone)]
pub struct CreatePot {
    /// The account the money is for.
    pub beneficiary: Uuid,
    /// The title (1-200 characters).
    pub title: String,
    /// The currency contributions are made in.
    pub currency: String,
    /// An optional goal, in minor units.
    pub target_amount: Option<i64>,
    /// When contributions stop; in the future.
    pub closes_at: DateTime<Utc>,
    /// Public or private.
    pub visibility: Visibility,
}

/// Pot commands on an existing pot.
#[derive(Debug, Clone)]
pub enum PotAction {
    /// Contribute from one of the caller's wallets.
    Contribute {
        /// The wallet to debit (the caller's, in the pot's currency).
        wallet: Uuid,
        /// Minor units.
        amount: i64,
        /// An optional message to the beneficiary (0-500 characters; blank means none).
        message: Option<String>,
        /// Whether to hide the contributor in public reads.
        anonymous: bool,
    },
    /// InviteToPot (owner).
    Invite {
        /// The invited account.
        account: Uuid,
    },
    /// ClosePot (owner).
    Close,
    /// PayOutPot (owner or beneficiary).
    PayOut,
    /// CancelPot (owner while open; admin before payout).
    Cancel {
        /// Why (1-500 characters).
        reason: String,
    },
}

/// A pot as its reader may see it.
#[derive(Debug, Clone)]
pub struct PotRead {
    /// The pot and its version.
    pub pot: Loaded<Pot>,
    /// The most recent contributions, newest first (at most [`RECENT_CONTRIBUTIONS`]), with
    /// anonymous contributors hidden unless the reader is that contributor, an admin or an
    /// auditor.
    pub contributions: Vec<PublicContribution>,
    /// How many distinct accounts have contributions that were not refunded.
    pub contributor_count: usize,
    /// Whether the reader may see the invited accounts (the owner, admins, auditors).
    pub show_invited: bool,
}

fn amount_of(value: i64) -> Result<Amount, CommandError> {
    Ok(Amount::parse("amount", value)?)
}

fn reason(value: &str) -> Result<String, CommandError> {
    Ok(domain::values::bounded_text("reason", value, 1, 500)?)
}

/// A contribution message: 0-500 characters, no control characters; blank means none.
fn contribution_message(value: Option<String>) -> Result<Option<String>, CommandError> {
    let Some(m) = value else {
        return Ok(None);
    };
    let m = domain::values::bounded_text("message", &m, 0, pot::MAX_MESSAGE_CHARS)?;
    if m.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(pot::message("message", &m)?))
}

fn pot_exists() -> Refusal {
    Refusal::new(
        409,
        "pot_exists",
        "the beneficiary already has an open pot closing on that date",
    )
}

/// The wallets that receive a refund when the pot is cancelled now (none when the pot can no
/// longer be cancelled: the pot's refusal then needs no wallet).
fn refund_wallets(pot: &Pot) -> BTreeSet<Uuid> {
    if !matches!(pot.status, PotStatus::Open | PotStatus::Closed) {
        return BTreeSet::new();
    }
    pot.contributions
        .iter()
        .filter(|c| !c.refunded)
        .map(|c| c.wallet)
        .collect()
}

/// A contribution with its contributor shown.
fn shown(c: &pot::Contribution) -> PublicContribution {
    PublicContribution {
        contribution_id: c.contribution_id,
        contributor: Some(c.contributor),
        wallet: Some(c.wallet),
        amount: c.amount,
        anonymous: c.anonymous,
        message: c.message.clone(),
        refunded: c.refunded,
    }
}

impl CommandService {
    /// The claim key for a new pot of `beneficiary` closing on `date`, or `pot_exists` when a
    /// pot of that beneficiary and date is still open. Claims are never released, so a pot
    /// that is no longer open passes the slot on to a next key (`#2`, `#3`, ...); two creators
    /// racing for the same slot compute the same key and the second one's claim fails.
    pub(crate) async fn pot_slot(
        &self,
        beneficiary: Uuid,
        date: NaiveDate,
    ) -> Result<String, CommandError> {
        let base = format!("{beneficiary}:{date}");
        let taken = self.store.claims_with_prefix(POT_SCOPE, &base).await?;
        for claim in &taken {
            let existing = self.pots.read(self.store.as_ref(), claim.stream_id).await?;
            if existing.state.status == PotStatus::Open {
                return Err(pot_exists().into());
            }
        }
        Ok(match taken.len() {
            0 => base,
            n => format!("{base}#{}", n + 1),
        })
    }

    /// CreatePot: the caller's account owns a new pot for `beneficiary`.
    pub async fn create_pot(
        &self,
        env: &Envelope,
        input: CreatePot,
    ) -> Result<CommandResult, CommandError> {
        let title = pot::title("title", &input.title)?;
        let currency = Currency::parse("currency", &input.currency)?;
        let target_amount = input
            .target_amount
            .map(|a| Amount::parse("target_amount", a))
            .transpose()?;
        let me = self.acting_account(env).await?.state.id;
        let beneficiary = self
            .accounts
            .read(self.store.as_ref(), input.beneficiary)
            .await?;
        if beneficiary.version == 0 {
            return Err(Refusal::new(404, "not_found", "no such beneficiary account").into());
        }
        if beneficiary.state.status != AccountStatus::Active {
            return Err(Refusal::new(
                422,
                "invalid_state",
                "the beneficiary's account is not active",
            )
            .into());
        }
        let now = self.clock.now();
        if input.closes_at <= now {
            // Refused before the slot is looked at: a past date is never a clash.
            return Err(Refusal::rule(&PotError::ClosesInPast).into());
        }
        let key = self
            .pot_slot(input.beneficiary, input.closes_at.date_naive())
            .await?;
        let id = Uuid::now_v7();
        let claims = vec![
            ClaimSpec {
                scope: POT_SCOPE,
                key,
                stream: id,
                on_taken: OnTaken::Refuse(pot_exists()),
            },
            // The owner's pots, for CloseAccount's obligations.
            ClaimSpec {
                scope: crate::accounts::OBLIGATION_SCOPE,
                key: format!("{me}:pot:{id}"),
                stream: id,
                on_taken: OnTaken::Refuse(Refusal::new(409, "concurrency_conflict", "try again")),
            },
        ];
        let command = PotCommand::Create {
            pot_id: id,
            owner: me,
            beneficiary: input.beneficiary,
            title,
            currency,
            target_amount,
            closes_at: input.closes_at,
            visibility: input.visibility,
            now,
        };
        let unit = Unit {
            role: Role::Customer,
            primary: id,
            created: true,
        };
        let locks = Locks::default().new_aggregate::<Pot>(id);
        self.run_unit(env, unit, locks, |_| {
            Ok(Decision {
                changes: vec![change::<Pot>(id, command.clone())],
                claims: claims.clone(),
                result_id: None,
            })
        })
        .await
    }

    /// Every other pot command.
    pub async fn pot_command(
        &self,
        env: &Envelope,
        id: Uuid,
        action: PotAction,
    ) -> Result<CommandResult, CommandError> {
        // Input first: bad input is a 400 whatever the pot and the caller.
        let action = match action {
            PotAction::Contribute {
                wallet,
                amount,
                message,
                anonymous,
            } => PotAction::Contribute {
                wallet,
                amount: amount_of(amount)?.get(),
                message: contribution_message(message)?,
                anonymous,
            },
            PotAction::Cancel { reason: r } => PotAction::Cancel {
                reason: reason(&r)?,
            },
            other => other,
        };
        // A first look (unlocked) tells who may act and which other aggregates the command
        // needs; the plan checks the rules again on the locked states.
        let pot = self.pots.read(self.store.as_ref(), id).await?;
        if pot.version == 0 {
            return Err(Refusal::not_found("pot").into());
        }
        let pot = pot.state;
        let currency = pot.currency.ok_or_else(|| Refusal::not_found("pot"))?;
        let now = self.clock.now();
        let customer = Unit {
            role: Role::Customer,
            primary: id,
            created: false,
        };
        let owner_only = |me: Uuid| {
            if me == pot.owner {
                Ok(())
            } else {
                Err(CommandError::from(Refusal::forbidden(
                    "only the pot's owner may do this",
                )))
            }
        };
        match action {
            PotAction::Contribute {
                wallet,
                amount,
                message,
                anonymous,
            } => {
                let me = self.acting_account(env).await?.state.id;
                let amount = amount_of(amount)?;
                let contribution_id = Uuid::now_v7();
                let locks = Locks::default()
                    .existing::<Pot>(id)
                    .existing::<Wallet>(wallet);
                self.run_unit(env, customer, locks, |locked| {
                    let p = locked.existing::<Pot>(id, "pot")?;
                    let w = locked.existing::<Wallet>(wallet, "wallet")?;
                    if w.state.owner != me {
                        return Err(Refusal::forbidden("not your wallet").into());
                    }
                    if w.state.currency != p.state.currency {
                        return Err(Refusal::new(
                            422,
                            "currency_mismatch",
                            "the wallet's currency is not the pot's",
                        )
                        .into());
                    }
                    let contribute = PotCommand::Contribute {
                        contribution_id,
                        contributor: me,
                        wallet,
                        amount,
                        message: message.clone(),
                        anonymous,
                        now,
                    };
                    let debit = WalletCommand::Debit {
                        amount,
                        reason: MoneyReason::PotContribution,
                        reference: id,
                    };
                    Ok(Decision::of(vec![
                        change::<Pot>(id, contribute),
                        change::<Wallet>(wallet, debit),
                    ]))
                })
                .await
            }
            PotAction::Invite { account } => {
                let me = self.acting_account(env).await?.state.id;
                owner_only(me)?;
                let invited = self.accounts.read(self.store.as_ref(), account).await?;
                if invited.version == 0 {
                    return Err(Refusal::not_found("account").into());
                }
                if invited.state.status != AccountStatus::Active {
                    return Err(Refusal::new(
                        422,
                        "invalid_state",
                        "the invited account is not active",
                    )
                    .into());
                }
                let command = PotCommand::Invite { account };
                self.run_unit(env, customer, Locks::default().existing::<Pot>(id), |_| {
                    Ok(Decision::of(vec![change::<Pot>(id, command.clone())]))
                })
                .await
            }
            PotAction::Close => {
                let me = self.acting_account(env).await?.state.id;
                owner_only(me)?;
                let command = PotCommand::Close {
                    by_system: false,
                    now,
                };
                self.run_unit(env, customer, Locks::default().existing::<Pot>(id), |_| {
                    Ok(Decision::of(vec![change::<Pot>(id, command.clone())]))
                })
                .await
            }
            PotAction::PayOut => {
                let me = self.acting_account(env).await?.state.id;
                if me != pot.owner && me != pot.beneficiary {
                    return Err(Refusal::forbidden(
                        "only the pot's owner or beneficiary may pay it out",
                    )
                    .into());
                }
                let beneficiary = self
                    .accounts
                    .read(self.store.as_ref(), pot.beneficiary)
                    .await?;
                if beneficiary.state.status == AccountStatus::Closed {
                    return Err(Refusal::new(
                        422,
                        "invalid_state",
                        "the beneficiary's account is closed: cancel the pot to refund it",
                    )
                    .into());
                }
                let is_minor = beneficiary.state.is_minor(now.date_naive());
                let kyc_approved = beneficiary.state.kyc == KycStatus::Approved;
                let payee = self.payee(pot.beneficiary, currency).await?;
                let locks = payee.locks(Locks::default().existing::<Pot>(id));
                self.run_unit(env, customer, locks, |locked| {
                    let p = locked.existing::<Pot>(id, "pot")?;
                    let payout = PotCommand::PayOut {
                        beneficiary_wallet: payee.wallet,
                        beneficiary_is_minor: is_minor,
                        beneficiary_kyc_approved: kyc_approved,
                    };
                    // The pot's rules first (state, empty, KYC), so that their refusal wins.
                    p.state
                        .decide(payout.clone())
                        .map_err(|e| Refusal::rule(&e))?;
                    let amount = Amount::parse("amount", p.state.held()).map_err(|_| {
                        Refusal::new(
                            422,
                            "amount_limit",
                            "the pot holds more than one movement may carry (10^15 minor units)",
                        )
                    })?;
                    Ok(Decision {
                        changes: vec![
                            change::<Pot>(id, payout),
                            payee.credit(amount, MoneyReason::PotPayout, id),
                        ],
                        claims: payee.claims(),
                        result_id: None,
                    })
                })
                .await
            }
            PotAction::Cancel { reason } => {
                let (role, by_admin) = if env.actor.has(Role::Admin) {
                    (Role::Admin, true)
                } else {
                    let me = self.acting_account(env).await?.state.id;
                    owner_only(me)?;
                    (Role::Customer, false)
                };
                let cancel = PotCommand::Cancel { reason, by_admin };
                self.cancel_pot(env, id, role, cancel, refund_wallets(&pot))
                    .await
            }
        }
    }

    /// CancelPot: the pot's cancellation and one credit per contribution not yet refunded, to
    /// the wallet it came from, all in one commit. Every such wallet is locked; if the locked
    /// pot shows contributions from a wallet that was not (one arrived after the first look),
    /// the command locks again with the new set.
    async fn cancel_pot(
        &self,
        env: &Envelope,
        id: Uuid,
        role: Role,
        cancel: PotCommand,
        mut wallets: BTreeSet<Uuid>,
    ) -> Result<CommandResult, CommandError> {
        for _ in 0..CANCEL_ATTEMPTS {
            let locks = wallets
                .iter()
                .fold(Locks::default().existing::<Pot>(id), |l, w| {
                    l.existing::<Wallet>(*w)
                });
            let unit = Unit {
                role,
                primary: id,
                created: false,
            };
            let mut needed = None;
            let outcome = self
                .run_unit(env, unit, locks, |locked| {
                    let p = locked.existing::<Pot>(id, "pot")?;
                    let wanted = refund_wallets(&p.state);
                    if !wanted.is_subset(&wallets) {
                        needed = Some(wanted);
                        return Err(CommandError::Conflict);
                    }
                    let mut credits: BTreeMap<Uuid, Vec<WalletCommand>> = BTreeMap::new();
                    let refunded = p
                        .state
                        .contributions
                        .iter()
                        .filter(|c| !c.refunded && wanted.contains(&c.wallet));
                    for c in refunded {
                        credits
                            .entry(c.wallet)
                            .or_default()
                            .push(WalletCommand::Credit {
                                amount: amount_of(c.amount)?,
                                reason: MoneyReason::ContributionRefund,
                                reference: id,
                            });
                    }
                    let mut all = vec![change::<Pot>(id, cancel.clone())];
                    all.extend(
                        credits
                            .into_iter()
                            .map(|(wallet, commands)| changes::<Wallet>(wallet, commands)),
                    );
                    Ok(Decision::of(all))
                })
                .await;
            match needed {
                Some(more) => wallets = more,
                None => return outcome,
            }
        }
        Err(CommandError::Conflict)
    }

    /// GET a pot: a public pot is readable by any authenticated caller; a private one by its
    /// owner, its beneficiary, invited accounts, contributors, admins and auditors.
    pub async fn get_pot(&self, env: &Envelope, id: Uuid) -> Result<PotRead, CommandError> {
        let pot = self.pots.read(self.store.as_ref(), id).await?;
        if pot.version == 0 {
            return Err(Refusal::not_found("pot").into());
        }
        let staff = env.actor.has(Role::Admin) || env.actor.has(Role::Auditor);
        let me = self.account_of(&env.actor.subject).await?;
        let p = &pot.state;
        let party = me.is_some_and(|m| {
            m == p.owner
                || m == p.beneficiary
                || p.invited.contains(&m)
                || p.contributions.iter().any(|c| c.contributor == m)
        });
        if !(staff || party || p.visibility == Visibility::Public) {
            return Err(Refusal::forbidden("this pot is private").into());
        }
        let contributions = p
            .contributions
            .iter()
            .zip(p.public_contributions())
            .rev()
            .take(RECENT_CONTRIBUTIONS)
            .map(|(full, public)| {
                if staff || me == Some(full.contributor) {
                    shown(full)
                } else {
                    public
                }
            })
            .collect();
        let contributor_count = p
            .contributions
            .iter()
            .filter(|c| !c.refunded)
            .map(|c| c.contributor)
            .collect::<BTreeSet<_>>()
            .len();
        let show_invited = staff || me == Some(p.owner);
        Ok(PotRead {
            pot,
            contributions,
            contributor_count,
            show_invited,
        })
    }
}
