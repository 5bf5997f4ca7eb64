//! The Escrow aggregate: money held by the platform between a buyer and a seller until
//! delivery, released to the seller, refunded to the buyer, or split by an arbiter.
//!
//! The escrow records the decisions; the buyer's debit and the credits are wallet events the
//! command layer commits with the escrow's.

use crate::values::{Amount, Currency};
use crate::RuleCode;
use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An escrow's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscrowStatus {
    /// Not opened yet (no events).
    #[default]
    Unopened,
    /// Opened, waiting for the buyer's money.
    Opened,
    /// Holds the buyer's money.
    Funded,
    /// Paid to the seller. Terminal.
    Released,
    /// Paid back to the buyer. Terminal.
    Refunded,
    /// Split by an arbiter after a dispute. Terminal.
    Resolved,
}

impl EscrowStatus {
    /// Whether no command is accepted any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Released | Self::Refunded | Self::Resolved)
    }
}

/// Who acts on an escrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    /// The buyer, who pays.
    Buyer,
    /// The seller, who is paid.
    Seller,
    /// The deadline process (release at `release_after`, refund at `expires_at`).
    System,
}

/// A dispute raised by one of the parties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dispute {
    /// Who raised it (buyer or seller).
    pub raised_by: Party,
    /// Why.
    pub reason: String,
}

/// The state of one escrow, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escrow {
    /// The escrow's id.
    pub id: Uuid,
    /// The paying account.
    pub buyer: Uuid,
    /// The buyer's wallet that funds the escrow and receives refunds.
    pub buyer_wallet: Uuid,
    /// The account to be paid.
    pub seller: Uuid,
    /// The escrow's currency (set when opened).
    pub currency: Option<Currency>,
    /// The amount held, in minor units.
    pub amount: i64,
    /// What the parties agreed.
    pub terms: String,
    /// When the process may release the money to the seller, if ever.
    pub release_after: Option<DateTime<Utc>>,
    /// When the process refunds the buyer if the money was neither released nor refunded.
    pub expires_at: Option<DateTime<Utc>>,
    /// The order the escrow pays for, if any.
    pub order_id: Option<Uuid>,
    /// Lifecycle state.
    pub status: EscrowStatus,
    /// The dispute, once raised (open while the escrow is funded; kept after resolution).
    pub dispute: Option<Dispute>,
    /// The arbiter's split `(to_seller, to_buyer)`, once resolved.
    pub resolution: Option<(i64, i64)>,
}

impl Escrow {
    /// Whether a dispute is open (raised and not resolved): release and refund are frozen.
    pub fn dispute_open(&self) -> bool {
        self.dispute.is_some() && self.status == EscrowStatus::Funded
    }
}

/// What an escrow can be asked to do. Facts from other aggregates come with the command.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub enum EscrowCommand {
    /// OpenEscrow (the buyer wallet's owner and currency are checked by the caller).
    Open {
        /// The new escrow's id.
        escrow_id: Uuid,
        /// The paying account.
        buyer: Uuid,
        /// The buyer's wallet.
        buyer_wallet: Uuid,
        /// The account to be paid.
        seller: Uuid,
        /// The escrow's currency (the buyer wallet's).
        currency: Currency,
        /// How much is held.
        amount: Amount,
        /// What the parties agreed.
        terms: String,
        /// When the process may release the money, if ever; after `now`, not after `expires_at`.
        release_after: Option<DateTime<Utc>>,
        /// When the process refunds the buyer; after `now`.
        expires_at: DateTime<Utc>,
        /// The order the escrow pays for, if any.
        order_id: Option<Uuid>,
        /// Whether the seller's account is active.
        seller_active: bool,
        /// Fund it in the same command (an order paid through escrow).
        fund: bool,
        /// The current time.
        now: DateTime<Utc>,
    },
    /// FundEscrow (the buyer wallet's debit is committed with it by the caller).
    Fund,
    /// ReleaseEscrow: pay the seller.
    Release {
        /// Who releases: the buyer, or the process at `release_after`.
        by: Party,
        /// The current time.
        now: DateTime<Utc>,
    },
    /// RefundEscrow: pay the buyer back.
    Refund {
        /// Who refunds: the seller, or the process at `expires_at`.
        by: Party,
        /// The current time.
        now: DateTime<Utc>,
    },
    /// RaiseDispute: freeze release and refund until an arbiter decides.
    RaiseDispute {
        /// Who raises it: the buyer or the seller.
        by: Party,
        /// Why.
        reason: String,
    },
    /// ResolveDispute (by an arbiter): split the amount between the parties.
    ResolveDispute {
        /// Minor units to the seller.
        to_seller: i64,
        /// Minor units back to the buyer.
        to_buyer: i64,
    },
}

/// What happened to an escrow. Stored names are the variant names, schema version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum EscrowEvent {
    /// The escrow was opened.
    EscrowOpened {
        /// The escrow's id.
        escrow_id: Uuid,
        /// The paying account.
        buyer: Uuid,
        /// The buyer's wallet.
        buyer_wallet: Uuid,
        /// The account to be paid.
        seller: Uuid,
        /// The escrow's currency.
        currency: Currency,
        /// How much is held, in minor units.
        amount: i64,
        /// What the parties agreed.
        terms: String,
        /// When the process may release the money, if ever.
        release_after: Option<DateTime<Utc>>,
        /// When the process refunds the buyer.
        expires_at: DateTime<Utc>,
        /// The order the escrow pays for, if any.
        order_id: Option<Uuid>,
    },
    /// The buyer's money arrived.
    EscrowFunded {
        /// How much, in minor units.
        amount: i64,
    },
    /// The money went to the seller.
    EscrowReleased {
        /// How much, in minor units.
        amount: i64,
        /// Who released it.
        by: Party,
    },
    /// The money went back to the buyer.
    EscrowRefunded {
        /// How much, in minor units.
        amount: i64,
        /// Who refunded it.
        by: Party,
    },
    /// A party disputed the escrow.
    DisputeRaised {
        /// Who.
        by: Party,
        /// Why.
        reason: String,
    },
    /// An arbiter split the money.
    DisputeResolved {
        /// Minor units to the seller.
        to_seller: i64,
        /// Minor units back to the buyer.
        to_buyer: i64,
    },
}

impl DomainEvent for EscrowEvent {
    fn event_type(&self) -> String {
        match self {
            Self::EscrowOpened { .. } => "EscrowOpened",
            Self::EscrowFunded { .. } => "EscrowFunded",
            Self::EscrowReleased { .. } => "EscrowReleased",
            Self::EscrowRefunded { .. } => "EscrowRefunded",
            Self::DisputeRaised { .. } => "DisputeRaised",
            Self::DisputeResolved { .. } => "DisputeResolved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why an escrow refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscrowError {
    /// The escrow's state forbids the command.
    #[error("the escrow is {0:?}, which forbids this")]
    InvalidState(EscrowStatus),
    /// ResolveDispute without an open dispute.
    #[error("no dispute is open")]
    NoDisputeOpen,
    /// A dispute is open: release, refund and a second dispute wait for the arbiter.
    #[error("a dispute is open")]
    DisputeOpen,
    /// The party may not do this (only the buyer releases, only the seller refunds, only
    /// the buyer or the seller disputes; the process acts at its deadlines).
    #[error("{0:?} may not do this")]
    PartyNotAllowed(Party),
    /// The seller is the buyer.
    #[error("a buyer cannot open an escrow with themselves")]
    SellerIsBuyer,
    /// The seller's account is not active.
    #[error("the seller's account is not active")]
    SellerInactive,
    /// `expires_at` is not in the future.
    #[error("expires_at must be in the future")]
    ExpiryInPast,
    /// `release_after` is not in the future or is after `expires_at`.
    #[error("release_after must be in the future and not after expires_at")]
    InvalidDeadline,
    /// The process acted before its deadline.
    #[error("the deadline has not passed yet")]
    NotDue,
    /// The arbiter's split does not add up to the amount held.
    #[error("to_seller and to_buyer must be non-negative and add up to the amount held")]
    SplitMismatch,
}

impl RuleCode for EscrowError {
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidState(_) | Self::NoDisputeOpen => "invalid_state",
            Self::DisputeOpen => "dispute_open",
            Self::PartyNotAllowed(_) => "party_not_allowed",
            Self::SellerIsBuyer => "seller_is_buyer",
            Self::SellerInactive => "seller_inactive",
            Self::ExpiryInPast => "expires_in_past",
            Self::InvalidDeadline => "invalid_deadline",
            Self::NotDue => "not_due",
            Self::SplitMismatch => "split_mismatch",
        }
    }
}

impl Escrow {
    /// Decides a command against the current state: the events to append, or a rejection.
    pub fn decide(&self, command: EscrowCommand) -> Result<Vec<EscrowEvent>, EscrowError> {
        use EscrowCommand as C;
        use EscrowEvent as E;
        use EscrowStatus as S;
        match command {
            C::Open {
                escrow_id,
                buyer,
                buyer_wallet,
                seller,
                currency,
                amount,
                terms,
                release_after,
                expires_at,
                order_id,
                seller_active,
                fund,
                now,
            } => {
                self.require(S::Unopened)?;
                if seller == buyer {
                    return Err(EscrowError::SellerIsBuyer);
                }
                if !seller_active {
                    return Err(EscrowError::SellerInactive);
                }
                if expires_at <= now {
                    return Err(EscrowError::ExpiryInPast);
                }
                if release_after.is_some_and(|r| r <= now || r > expires_at) {
                    return Err(EscrowError::InvalidDeadline);
                }
                let mut events = vec![E::EscrowOpened {
                    escrow_id,
                    buyer,
                    buyer_wallet,
                    seller,
                    currency,
                    amount: amount.get(),
                    terms,
                    release_after,
                    expires_at,
                    order_id,
                }];
                if fund {
                    events.push(E::EscrowFunded {
                        amount: amount.get(),
                    });
                }
                Ok(events)
            }
            C::Fund => {
                self.require(S::Opened)?;
                Ok(vec![E::EscrowFunded {
                    amount: self.amount,
                }])
            }
            C::Release { by, now } => {
                self.require(S::Funded)?;
                if by == Party::Seller {
                    return Err(EscrowError::PartyNotAllowed(by));
                }
                self.require_no_dispute()?;
                if by == Party::System && self.release_after.is_none_or(|r| now < r) {
                    return Err(EscrowError::NotDue);
                }
                Ok(vec![E::EscrowReleased {
                    amount: self.amount,
                    by,
                }])
            }
            C::Refund { by, now } => {
                self.require(S::Funded)?;
                if by == Party::Buyer {
                    return Err(EscrowError::PartyNotAllowed(by));
                }
                self.require_no_dispute()?;
                if by == Party::System && self.expires_at.is_none_or(|e| now < e) {
                    return Err(EscrowError::NotDue);
                }
                Ok(vec![E::EscrowRefunded {
                    amount: self.amount,
                    by,
                }])
            }
            C::RaiseDispute { by, reason } => {
                self.require(S::Funded)?;
                if by == Party::System {
                    return Err(EscrowError::PartyNotAllowed(by));
                }
                self.require_no_dispute()?;
                Ok(vec![E::DisputeRaised { by, reason }])
            }
            C::ResolveDispute {
                to_seller,
                to_buyer,
            } => {
                self.require(S::Funded)?;
                if !self.dispute_open() {
                    return Err(EscrowError::NoDisputeOpen);
                }
                let adds_up = to_seller >= 0
                    && to_buyer >= 0
                    && to_seller.checked_add(to_buyer) == Some(self.amount);
                if !adds_up {
                    return Err(EscrowError::SplitMismatch);
                }
                Ok(vec![E::DisputeResolved {
                    to_seller,
                    to_buyer,
                }])
            }
        }
    }

    fn require(&self, status: EscrowStatus) -> Result<(), EscrowError> {
        if self.status == status {
            Ok(())
        } else {
            Err(EscrowError::InvalidState(self.status))
        }
    }

    fn require_no_dispute(&self) -> Result<(), EscrowError> {
        if self.dispute_open() {
            Err(EscrowError::DisputeOpen)
        } else {
            Ok(())
        }
    }
}

impl Aggregate for Escrow {
    const TYPE: &'static str = "escrow";
    type Command = EscrowCommand;
    type Event = EscrowEvent;
    type Error = EscrowError;
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
        use EscrowEvent as E;
        match event {
            E::EscrowOpened {
                escrow_id,
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
                self.id = escrow_id;
                self.buyer = buyer;
                self.buyer_wallet = buyer_wallet;
                self.seller = seller;
                self.currency = Some(currency);
                self.amount = amount;
                self.terms = terms;
                self.release_after = release_after;
                self.expires_at = Some(expires_at);
                self.order_id = order_id;
                self.status = EscrowStatus::Opened;
            }
            E::EscrowFunded { .. } => self.status = EscrowStatus::Funded,
            E::EscrowReleased { .. } => self.status = EscrowStatus::Released,
            E::EscrowRefunded { .. } => self.status = EscrowStatus::Refunded,
            E::DisputeRaised { by, reason } => {
                self.dispute = Some(Dispute {
                    raised_by: by,
                    reason,
                });
            }
            E::DisputeResolved {
                to_seller,
                to_buyer,
            } => {
                self.resolution = Some((to_seller, to_buyer));
                self.status = EscrowStatus::Resolved;
            }
        }
    }
}
