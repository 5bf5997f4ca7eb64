//! The Pot aggregate: a crowdfunding pot for a beneficiary (birthday pots, group gifts).
//!
//! Money in a pot is `raised - paid_out`: contributions debit the contributors' wallets and
//! sit in the pot until it is paid out to the beneficiary's wallet or refunded on cancellation.
//! Who may issue a command (owner, beneficiary, admin, the deadline process) is checked by the
//! command layer; the pot receives what it needs to know as flags (`by_system`, `by_admin`).

use crate::values::MAX_AMOUNT;
use crate::values::{bounded_text, Amount, Currency, InvalidInput};
use crate::RuleCode;
use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

/// The longest pot title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// The longest contribution message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// Checks a pot title: 1-200 characters (trimmed), no control characters.
pub fn title(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    bounded_text(field, value, 1, MAX_TITLE_CHARS)
}

/// Checks a contribution message: 1-500 characters (trimmed), no control characters.
pub fn message(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    bounded_text(field, value, 1, MAX_MESSAGE_CHARS)
}

/// Who may see and contribute to a pot.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Any active account may contribute.
    #[default]
    Public,
    /// Only the owner, the beneficiary and invited accounts may contribute.
    Private,
}

/// A pot's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PotStatus {
    /// Not created yet (no events).
    #[default]
    Uncreated,
    /// Accepts contributions until `closes_at`.
    Open,
    /// No more contributions; awaits payout (or an admin's cancellation).
    Closed,
    /// Terminal: the money went to the beneficiary.
    PaidOut,
    /// Terminal: the money went back to the contributors.
    Cancelled,
}

/// One contribution, as the pot remembers it (the audit view: the contributor is always known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// The contribution's id.
    pub contribution_id: Uuid,
    /// The contributing account.
    pub contributor: Uuid,
    /// The wallet that was debited (and is credited back on a refund).
    pub wallet: Uuid,
    /// How much, in minor units.
    pub amount: i64,
    /// Whether the contributor is hidden in public read models.
    pub anonymous: bool,
    /// An optional message to the beneficiary.
    pub message: Option<String>,
    /// Whether the contribution has been refunded.
    pub refunded: bool,
}

/// A contribution as public read models may show it: contributor and wallet hidden when the
/// contribution is anonymous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicContribution {
    /// The contribution's id.
    pub contribution_id: Uuid,
    /// The contributing account; `None` when anonymous.
    pub contributor: Option<Uuid>,
    /// The debited wallet; `None` when anonymous.
    pub wallet: Option<Uuid>,
    /// How much, in minor units.
    pub amount: i64,
    /// Whether the contribution is anonymous.
    pub anonymous: bool,
    /// An optional message to the beneficiary.
    pub message: Option<String>,
    /// Whether the contribution has been refunded.
    pub refunded: bool,
}

/// The state of one pot, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pot {
    /// The pot's id.
    pub id: Uuid,
    /// The account that created the pot.
    pub owner: Uuid,
    /// The account the money is for.
    pub beneficiary: Uuid,
    /// The pot's title.
    pub title: String,
    /// The pot's currency (set when created).
    pub currency: Option<Currency>,
    /// An optional goal, in minor units (informational: reaching it closes nothing).
    pub target_amount: Option<i64>,
    /// When contributions stop and the deadline process closes the pot.
    pub closes_at: Option<DateTime<Utc>>,
    /// Public or private.
    pub visibility: Visibility,
    /// Accounts invited to a private pot.
    pub invited: BTreeSet<Uuid>,
    /// Every contribution, in the order received.
    pub contributions: Vec<Contribution>,
    /// The sum of the contributions not refunded, in minor units.
    pub raised: i64,
    /// What was paid out to the beneficiary, in minor units.
    pub paid_out: i64,
    /// Lifecycle state.
    pub status: PotStatus,
}

impl Pot {
    /// Money the pot holds right now (`raised - paid_out`): what counts towards conservation.
    pub fn held(&self) -> i64 {
        self.raised - self.paid_out
    }

    /// Whether `account` may contribute to this pot as far as visibility goes: anyone for a
    /// public pot; the owner, the beneficiary and invited accounts for a private one.
    pub fn admits(&self, account: Uuid) -> bool {
        match self.visibility {
            Visibility::Public => true,
            Visibility::Private => {
                account == self.owner
                    || account == self.beneficiary
                    || self.invited.contains(&account)
            }
        }
    }

    /// The contributions as public read models may show them: contributor and wallet hidden
    /// (`None`) when anonymous. The audit log and [`Pot::contributions`] keep them.
    pub fn public_contributions(&self) -> Vec<PublicContribution> {
        self.contributions
            .iter()
            .map(|c| PublicContribution {
                contribution_id: c.contribution_id,
                contributor: (!c.anonymous).then_some(c.contributor),
                wallet: (!c.anonymous).then_some(c.wallet),
                amount: c.amount,
                anonymous: c.anonymous,
                message: c.message.clone(),
                refunded: c.refunded,
            })
            .collect()
    }
}

/// What a pot can be asked to do. Facts from outside (the clock, who is asking, the
/// beneficiary's KYC) come with the command.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub enum PotCommand {
    /// CreatePot (the owner's activity and the one-open-pot-per-beneficiary-and-date rule are
    /// checked by the caller).
    Create {
        /// The new pot's id.
        pot_id: Uuid,
        /// The creating account.
        owner: Uuid,
        /// The account the money is for.
        beneficiary: Uuid,
        /// The title.
        title: String,
        /// The currency contributions are made in.
        currency: Currency,
        /// An optional goal.
        target_amount: Option<Amount>,
        /// When contributions stop; must be after `now`.
        closes_at: DateTime<Utc>,
        /// Public or private.
        visibility: Visibility,
        /// The current time.
        now: DateTime<Utc>,
    },
    /// Contribute (the contributor's activity and wallet debit are handled by the caller).
    Contribute {
        /// The contribution's id.
        contribution_id: Uuid,
        /// The contributing account.
        contributor: Uuid,
        /// The wallet to debit.
        wallet: Uuid,
        /// How much.
        amount: Amount,
        /// An optional message to the beneficiary.
        message: Option<String>,
        /// Whether to hide the contributor in public read models.
        anonymous: bool,
        /// The current time.
        now: DateTime<Utc>,
    },
    /// InviteToPot.
    Invite {
        /// The invited account.
        account: Uuid,
    },
    /// ClosePot: by the owner at any time while open, or by the deadline process.
    Close {
        /// Whether the deadline process issues it (then `closes_at` must have passed).
        by_system: bool,
        /// The current time.
        now: DateTime<Utc>,
    },
    /// PayOutPot.
    PayOut {
        /// The beneficiary's wallet in the pot's currency, to credit.
        beneficiary_wallet: Uuid,
        /// Whether the beneficiary is a minor today.
        beneficiary_is_minor: bool,
        /// Whether the beneficiary's KYC is approved.
        beneficiary_kyc_approved: bool,
    },
    /// CancelPot: the owner while open; an admin while open or closed.
    Cancel {
        /// Why.
        reason: String,
        /// Whether an admin issues it (otherwise the owner).
        by_admin: bool,
    },
}

/// What happened to a pot. Stored names are the variant names; the stored versions are in
/// `schemas::registry` (`ContributionReceived` is stored with its message sealed, version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum PotEvent {
    /// The pot was created and is open.
    PotCreated {
        /// The pot's id.
        pot_id: Uuid,
        /// The creating account.
        owner: Uuid,
        /// The account the money is for.
        beneficiary: Uuid,
        /// The title.
        title: String,
        /// The currency.
        currency: Currency,
        /// An optional goal, in minor units.
        target_amount: Option<i64>,
        /// When contributions stop.
        closes_at: DateTime<Utc>,
        /// Public or private.
        visibility: Visibility,
    },
    /// Money arrived from a contributor's wallet.
    ContributionReceived {
        /// The contribution's id.
        contribution_id: Uuid,
        /// The contributing account.
        contributor: Uuid,
        /// The debited wallet.
        wallet: Uuid,
        /// How much.
        amount: i64,
        /// An optional message.
        message: Option<String>,
        /// Whether the contributor is hidden in public read models.
        anonymous: bool,
    },
    /// An account was invited to a private pot.
    PotInvitationSent {
        /// The invited account.
        account: Uuid,
    },
    /// The pot stopped taking contributions.
    PotClosed {
        /// Whether the deadline process closed it.
        by_system: bool,
    },
    /// Everything raised went to the beneficiary's wallet.
    PotPaidOut {
        /// How much.
        amount: i64,
        /// The credited wallet.
        wallet: Uuid,
    },
    /// The pot was cancelled; refunds follow as separate events.
    PotCancelled {
        /// Why.
        reason: String,
    },
    /// One contribution went back to its wallet.
    ContributionRefunded {
        /// The contribution's id.
        contribution_id: Uuid,
        /// The credited wallet.
        wallet: Uuid,
        /// How much.
        amount: i64,
    },
}

impl DomainEvent for PotEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PotCreated { .. } => "PotCreated",
            Self::ContributionReceived { .. } => "ContributionReceived",
            Self::PotInvitationSent { .. } => "PotInvitationSent",
            Self::PotClosed { .. } => "PotClosed",
            Self::PotPaidOut { .. } => "PotPaidOut",
            Self::PotCancelled { .. } => "PotCancelled",
            Self::ContributionRefunded { .. } => "ContributionRefunded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a pot refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PotError {
    /// The pot's state forbids the command.
    #[error("the pot is {0:?}, which forbids this")]
    InvalidState(PotStatus),
    /// An invitation to a public pot (only private pots take invitations).
    #[error("only private pots take invitations")]
    NotPrivate,
    /// CreatePot with `closes_at` not in the future.
    #[error("closes_at must be in the future")]
    ClosesInPast,
    /// A contribution at or after `closes_at` (before the deadline process closed the pot).
    #[error("the pot no longer takes contributions")]
    PastClose,
    /// A contribution to a private pot by an account not invited.
    #[error("only invited accounts may contribute to a private pot")]
    NotInvited,
    /// The account is already invited (or is the owner or the beneficiary).
    #[error("the account is already invited")]
    AlreadyInvited,
    /// The deadline process closing a pot before `closes_at`.
    #[error("the pot's closing time has not come yet")]
    NotDue,
    /// PayOutPot on a pot that raised nothing.
    #[error("the pot holds no money to pay out")]
    PotEmpty,
    /// A payout to a minor beneficiary without approved KYC.
    #[error("a minor beneficiary needs an approved KYC")]
    KycRequired,
    /// A contribution would take the pot over the largest single movement (10^15 minor
    /// units), so that its payout could not be made in one credit.
    #[error("the contribution would take the pot over 10^15 minor units")]
    RaisedLimit,
}

impl RuleCode for PotError {
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidState(_) | Self::NotPrivate => "invalid_state",
            Self::ClosesInPast => "closes_in_past",
            Self::PastClose => "pot_closed_for_contributions",
            Self::NotInvited => "not_invited",
            Self::AlreadyInvited => "already_invited",
            Self::NotDue => "not_due",
            Self::PotEmpty => "pot_empty",
            Self::KycRequired => "kyc_required",
            Self::RaisedLimit => "balance_limit",
        }
    }
}

impl Pot {
    /// Decides a command against the current state: the events to append, or a rejection.
    pub fn decide(&self, command: PotCommand) -> Result<Vec<PotEvent>, PotError> {
        use PotCommand as C;
        use PotEvent as E;
        let require = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(PotError::InvalidState(self.status))
            }
        };
        match command {
            C::Create {
                pot_id,
                owner,
                beneficiary,
                title,
                currency,
                target_amount,
                closes_at,
                visibility,
                now,
            } => {
                require(self.status == PotStatus::Uncreated)?;
                if closes_at <= now {
                    return Err(PotError::ClosesInPast);
                }
                Ok(vec![E::PotCreated {
                    pot_id,
                    owner,
                    beneficiary,
                    title,
                    currency,
                    target_amount: target_amount.map(Amount::get),
                    closes_at,
                    visibility,
                }])
            }
            C::Contribute {
                contribution_id,
                contributor,
                wallet,
                amount,
                message,
                anonymous,
                now,
            } => {
                require(self.status == PotStatus::Open)?;
                if self.closes_at.is_none_or(|closes_at| now >= closes_at) {
                    return Err(PotError::PastClose);
                }
                if !self.admits(contributor) {
                    return Err(PotError::NotInvited);
                }
                match self.raised.checked_add(amount.get()) {
                    Some(total) if total <= MAX_AMOUNT => {}
                    _ => return Err(PotError::RaisedLimit),
                }
                Ok(vec![E::ContributionReceived {
                    contribution_id,
                    contributor,
                    wallet,
                    amount: amount.get(),
                    message,
                    anonymous,
                }])
            }
            C::Invite { account } => {
                require(self.status == PotStatus::Open)?;
                if self.visibility != Visibility::Private {
                    return Err(PotError::NotPrivate);
                }
                if self.admits(account) {
                    return Err(PotError::AlreadyInvited);
                }
                Ok(vec![E::PotInvitationSent { account }])
            }
            C::Close { by_system, now } => {
                require(self.status == PotStatus::Open)?;
                if by_system && self.closes_at.is_some_and(|closes_at| now < closes_at) {
                    return Err(PotError::NotDue);
                }
                Ok(vec![E::PotClosed { by_system }])
            }
            C::PayOut {
                beneficiary_wallet,
                beneficiary_is_minor,
                beneficiary_kyc_approved,
            } => {
                require(self.status == PotStatus::Closed)?;
                if self.held() <= 0 {
                    return Err(PotError::PotEmpty);
                }
                if beneficiary_is_minor && !beneficiary_kyc_approved {
                    return Err(PotError::KycRequired);
                }
                Ok(vec![E::PotPaidOut {
                    amount: self.held(),
                    wallet: beneficiary_wallet,
                }])
            }
            C::Cancel { reason, by_admin } => {
                require(match self.status {
                    PotStatus::Open => true,
                    PotStatus::Closed => by_admin,
                    PotStatus::Uncreated | PotStatus::PaidOut | PotStatus::Cancelled => false,
                })?;
                let refunds = self.contributions.iter().filter(|c| !c.refunded).map(|c| {
                    E::ContributionRefunded {
                        contribution_id: c.contribution_id,
                        wallet: c.wallet,
                        amount: c.amount,
                    }
                });
                Ok(std::iter::once(E::PotCancelled { reason })
                    .chain(refunds)
                    .collect())
            }
        }
    }
}

impl Aggregate for Pot {
    const TYPE: &'static str = "pot";
    type Command = PotCommand;
    type Event = PotEvent;
    type Error = PotError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = self.decide(command)?;
        crate::emit(self, events, sink).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        use PotEvent as E;
        match event {
            E::PotCreated {
                pot_id,
                owner,
                beneficiary,
                title,
                currency,
                target_amount,
                closes_at,
                visibility,
            } => {
                self.id = pot_id;
                self.owner = owner;
                self.beneficiary = beneficiary;
                self.title = title;
                self.currency = Some(currency);
                self.target_amount = target_amount;
                self.closes_at = Some(closes_at);
                self.visibility = visibility;
                self.status = PotStatus::Open;
            }
            E::ContributionReceived {
                contribution_id,
                contributor,
                wallet,
                amount,
                message,
                anonymous,
            } => {
                // `decide` keeps `raised` within MAX_AMOUNT; never wrap on stored data.
                self.raised = self.raised.saturating_add(amount);
                self.contributions.push(Contribution {
                    contribution_id,
                    contributor,
                    wallet,
                    amount,
                    anonymous,
                    message,
                    refunded: false,
                });
            }
            E::PotInvitationSent { account } => {
                self.invited.insert(account);
            }
            E::PotClosed { .. } => self.status = PotStatus::Closed,
            E::PotPaidOut { amount, .. } => {
                self.paid_out = self.paid_out.saturating_add(amount);
                self.status = PotStatus::PaidOut;
            }
            E::PotCancelled { .. } => self.status = PotStatus::Cancelled,
            E::ContributionRefunded {
                contribution_id, ..
            } => {
                if let Some(c) = self
                    .contributions
                    .iter_mut()
                    .find(|c| c.contribution_id == contribution_id && !c.refunded)
                {
                    c.refunded = true;
                    self.raised = self.raised.saturating_sub(c.amount);
                }
            }
        }
    }
}
