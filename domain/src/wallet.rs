//! The Wallet aggregate: a stored-value balance in one currency, owned by one account.

use crate::values::{Amount, Currency};
use crate::RuleCode;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The most a wallet may hold, in minor units (10^18: a thousand maximal movements, far
/// inside `i64`, so sums of balances never overflow either).
pub const MAX_BALANCE: i64 = 1_000_000_000_000_000_000;

/// The amount above which a withdrawal needs the owner's approved KYC, in major units.
pub const KYC_FREE_WITHDRAWAL_MAJOR: i64 = 1_000;

/// A wallet's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalletStatus {
    /// Not opened yet (no events).
    #[default]
    Unopened,
    /// Accepts credits and debits.
    Active,
    /// Accepts credits, refuses debits.
    Frozen,
    /// Terminal.
    Closed,
}

/// The state of one wallet, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    /// The wallet's id.
    pub id: Uuid,
    /// The owning account.
    pub owner: Uuid,
    /// The wallet's currency (set when opened).
    pub currency: Option<Currency>,
    /// Money in the wallet, in minor units.
    pub balance: i64,
    /// Money reserved and not available for debits.
    pub held: i64,
    /// Lifecycle state.
    pub status: WalletStatus,
}

impl Wallet {
    /// `balance - held`; never negative.
    pub fn available(&self) -> i64 {
        self.balance - self.held
    }
}

/// What a wallet can be asked to do. Facts from other aggregates come with the command.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub enum WalletCommand {
    /// OpenWallet (the owner's activity and the one-per-currency rule are checked by the caller).
    Open {
        /// The new wallet's id.
        wallet_id: Uuid,
        /// The owning account.
        owner: Uuid,
        /// The wallet's currency.
        currency: Currency,
    },
    /// Deposit from a payment provider.
    Deposit {
        /// How much.
        amount: Amount,
        /// The provider's reference (unique per wallet, checked by the caller).
        external_ref: String,
    },
    /// Withdraw to a payment provider.
    Withdraw {
        /// How much.
        amount: Amount,
        /// The provider's reference.
        external_ref: String,
        /// Whether the owner's KYC is approved.
        owner_kyc_approved: bool,
    },
    /// The debit leg of a transfer, on the source wallet.
    SendTransfer {
        /// The transfer's id.
        transfer_id: Uuid,
        /// The destination wallet.
        to_wallet: Uuid,
        /// The destination's currency.
        to_currency: Currency,
        /// How much.
        amount: Amount,
        /// An optional note.
        memo: Option<String>,
    },
    /// The credit leg of a transfer, on the destination wallet.
    ReceiveTransfer {
        /// The transfer's id.
        transfer_id: Uuid,
        /// The source wallet.
        from_wallet: Uuid,
        /// How much.
        amount: Amount,
        /// An optional note.
        memo: Option<String>,
    },
    /// Freeze: debits refused until unfrozen.
    Freeze {
        /// Why.
        reason: String,
    },
    /// Lift a freeze.
    Unfreeze {
        /// Why.
        reason: String,
    },
    /// Close an empty wallet for good.
    Close,
    /// A debit for another aggregate's money move (an order payment, escrow funding, ...).
    Debit {
        /// How much.
        amount: Amount,
        /// Why.
        reason: MoneyReason,
        /// The order, escrow or pot (or contribution) the money goes to.
        reference: Uuid,
    },
    /// A credit from another aggregate's money move (a refund, a release, a payout, ...).
    Credit {
        /// How much.
        amount: Amount,
        /// Why.
        reason: MoneyReason,
        /// The order, escrow or pot (or contribution) the money comes from.
        reference: Uuid,
    },
}

/// What happened to a wallet. Stored names are the variant names, schema version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum WalletEvent {
    /// The wallet was opened.
    WalletOpened {
        /// The wallet's id.
        wallet_id: Uuid,
        /// The owning account.
        owner: Uuid,
        /// The wallet's currency.
        currency: Currency,
    },
    /// Money entered from a payment provider.
    FundsDeposited {
        /// How much.
        amount: i64,
        /// The provider's reference.
        external_ref: String,
    },
    /// Money left to a payment provider.
    FundsWithdrawn {
        /// How much.
        amount: i64,
        /// The provider's reference.
        external_ref: String,
    },
    /// Money left for another wallet.
    TransferSent {
        /// The transfer's id.
        transfer_id: Uuid,
        /// The destination wallet.
        to_wallet: Uuid,
        /// How much.
        amount: i64,
        /// An optional note.
        memo: Option<String>,
    },
    /// Money arrived from another wallet.
    TransferReceived {
        /// The transfer's id.
        transfer_id: Uuid,
        /// The source wallet.
        from_wallet: Uuid,
        /// How much.
        amount: i64,
        /// An optional note.
        memo: Option<String>,
    },
    /// Debits are refused from now on.
    WalletFrozen {
        /// Why.
        reason: String,
    },
    /// Debits are accepted again.
    WalletUnfrozen {
        /// Why.
        reason: String,
    },
    /// The wallet is closed for good.
    WalletClosed,
    /// Money left for another aggregate (an order, an escrow, a pot).
    WalletDebited {
        /// How much.
        amount: i64,
        /// Why.
        reason: MoneyReason,
        /// The order, escrow or pot the money went to.
        reference: Uuid,
    },
    /// Money arrived from another aggregate (a refund, a release, a payout).
    WalletCredited {
        /// How much.
        amount: i64,
        /// Why.
        reason: MoneyReason,
        /// The order, escrow or pot the money came from.
        reference: Uuid,
    },
}

/// Why money moves between a wallet and another aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoneyReason {
    /// A buyer pays an order directly (debit), a seller receives it (credit).
    OrderPayment,
    /// An order's payment goes back to the buyer.
    OrderRefund,
    /// A buyer funds an escrow.
    EscrowFunding,
    /// An escrow pays the seller.
    EscrowRelease,
    /// An escrow pays the buyer back.
    EscrowRefund,
    /// An arbiter's split of a disputed escrow.
    DisputeSettlement,
    /// A contribution to a pot.
    PotContribution,
    /// A pot pays its beneficiary.
    PotPayout,
    /// A contribution goes back to its contributor.
    ContributionRefund,
}

impl DomainEvent for WalletEvent {
    fn event_type(&self) -> String {
        match self {
            Self::WalletOpened { .. } => "WalletOpened",
            Self::FundsDeposited { .. } => "FundsDeposited",
            Self::FundsWithdrawn { .. } => "FundsWithdrawn",
            Self::TransferSent { .. } => "TransferSent",
            Self::TransferReceived { .. } => "TransferReceived",
            Self::WalletFrozen { .. } => "WalletFrozen",
            Self::WalletUnfrozen { .. } => "WalletUnfrozen",
            Self::WalletClosed => "WalletClosed",
            Self::WalletDebited { .. } => "WalletDebited",
            Self::WalletCredited { .. } => "WalletCredited",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a wallet refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    /// The wallet's state forbids the command.
    #[error("the wallet is {0:?}, which forbids this")]
    InvalidState(WalletStatus),
    /// Not enough available money.
    #[error("the amount exceeds the available balance")]
    InsufficientFunds,
    /// The amount needs the owner's approved KYC.
    #[error("withdrawals over 1,000.00 need an approved KYC")]
    KycRequired,
    /// The wallets' currencies differ.
    #[error("the wallets' currencies differ")]
    CurrencyMismatch,
    /// A transfer to the same wallet.
    #[error("a wallet cannot transfer to itself")]
    SameWallet,
    /// CloseWallet with money left.
    #[error("the wallet still holds money")]
    NotEmpty,
    /// A credit would take the balance over the most a wallet may hold.
    #[error("the credit would take the balance over 10^18 minor units")]
    BalanceLimit,
}

impl RuleCode for WalletError {
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidState(_) => "invalid_state",
            Self::InsufficientFunds => "insufficient_funds",
            Self::KycRequired => "kyc_required",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::SameWallet => "same_wallet",
            Self::NotEmpty => "wallet_not_empty",
            Self::BalanceLimit => "balance_limit",
        }
    }
}

impl Wallet {
    /// Decides a command against the current state: the events to append, or a rejection.
    pub fn decide(&self, command: WalletCommand) -> Result<Vec<WalletEvent>, WalletError> {
        use WalletCommand as C;
        use WalletEvent as E;
        let opened = self.status != WalletStatus::Unopened;
        match command {
            C::Open {
                wallet_id,
                owner,
                currency,
            } => {
                if opened {
                    return Err(WalletError::InvalidState(self.status));
                }
                Ok(vec![E::WalletOpened {
                    wallet_id,
                    owner,
                    currency,
                }])
            }
            C::Deposit {
                amount,
                external_ref,
            } => {
                self.require_credit()?;
                self.require_room(amount)?;
                Ok(vec![E::FundsDeposited {
                    amount: amount.get(),
                    external_ref,
                }])
            }
            C::Withdraw {
                amount,
                external_ref,
                owner_kyc_approved,
            } => {
                self.require_debit(amount)?;
                let limit = KYC_FREE_WITHDRAWAL_MAJOR * self.minor_per_major();
                if amount.get() > limit && !owner_kyc_approved {
                    return Err(WalletError::KycRequired);
                }
                Ok(vec![E::FundsWithdrawn {
                    amount: amount.get(),
                    external_ref,
                }])
            }
            C::SendTransfer {
                transfer_id,
                to_wallet,
                to_currency,
                amount,
                memo,
            } => {
                if to_wallet == self.id {
                    return Err(WalletError::SameWallet);
                }
                if self.status != WalletStatus::Active {
                    return Err(WalletError::InvalidState(self.status));
                }
                if self.currency != Some(to_currency) {
                    return Err(WalletError::CurrencyMismatch);
                }
                self.require_debit(amount)?;
                Ok(vec![E::TransferSent {
                    transfer_id,
                    to_wallet,
                    amount: amount.get(),
                    memo,
                }])
            }
            C::ReceiveTransfer {
                transfer_id,
                from_wallet,
                amount,
                memo,
            } => {
                if from_wallet == self.id {
                    return Err(WalletError::SameWallet);
                }
                // A transfer needs both wallets active (a frozen wallet takes other credits).
                if self.status != WalletStatus::Active {
                    return Err(WalletError::InvalidState(self.status));
                }
                self.require_room(amount)?;
                Ok(vec![E::TransferReceived {
                    transfer_id,
                    from_wallet,
                    amount: amount.get(),
                    memo,
                }])
            }
            C::Freeze { reason } => match self.status {
                WalletStatus::Active => Ok(vec![E::WalletFrozen { reason }]),
                s => Err(WalletError::InvalidState(s)),
            },
            C::Unfreeze { reason } => match self.status {
                WalletStatus::Frozen => Ok(vec![E::WalletUnfrozen { reason }]),
                s => Err(WalletError::InvalidState(s)),
            },
            C::Debit {
                amount,
                reason,
                reference,
            } => {
                self.require_debit(amount)?;
                Ok(vec![E::WalletDebited {
                    amount: amount.get(),
                    reason,
                    reference,
                }])
            }
            C::Credit {
                amount,
                reason,
                reference,
            } => {
                self.require_credit()?;
                self.require_room(amount)?;
                Ok(vec![E::WalletCredited {
                    amount: amount.get(),
                    reason,
                    reference,
                }])
            }
            C::Close => {
                if !matches!(self.status, WalletStatus::Active | WalletStatus::Frozen) {
                    return Err(WalletError::InvalidState(self.status));
                }
                if self.balance != 0 || self.held != 0 {
                    return Err(WalletError::NotEmpty);
                }
                Ok(vec![E::WalletClosed])
            }
        }
    }

    fn minor_per_major(&self) -> i64 {
        self.currency.map_or(100, |c| c.minor_per_major())
    }

    fn require_credit(&self) -> Result<(), WalletError> {
        match self.status {
            WalletStatus::Active | WalletStatus::Frozen => Ok(()),
            s => Err(WalletError::InvalidState(s)),
        }
    }

    fn require_room(&self, amount: Amount) -> Result<(), WalletError> {
        match self.balance.checked_add(amount.get()) {
            Some(b) if b <= MAX_BALANCE => Ok(()),
            _ => Err(WalletError::BalanceLimit),
        }
    }

    fn require_debit(&self, amount: Amount) -> Result<(), WalletError> {
        if self.status != WalletStatus::Active {
            return Err(WalletError::InvalidState(self.status));
        }
        if amount.get() > self.available() {
            return Err(WalletError::InsufficientFunds);
        }
        Ok(())
    }
}

impl Aggregate for Wallet {
    const TYPE: &'static str = "wallet";
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Error = WalletError;
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
        use WalletEvent as E;
        match event {
            E::WalletOpened {
                wallet_id,
                owner,
                currency,
            } => {
                self.id = wallet_id;
                self.owner = owner;
                self.currency = Some(currency);
                self.status = WalletStatus::Active;
            }
            E::FundsDeposited { amount, .. } | E::TransferReceived { amount, .. } => {
                // `decide` keeps balances within MAX_BALANCE; never wrap on stored data.
                self.balance = self.balance.saturating_add(amount);
            }
            E::FundsWithdrawn { amount, .. } | E::TransferSent { amount, .. } => {
                self.balance = self.balance.saturating_sub(amount);
            }
            E::WalletFrozen { .. } => self.status = WalletStatus::Frozen,
            E::WalletUnfrozen { .. } => self.status = WalletStatus::Active,
            E::WalletClosed => self.status = WalletStatus::Closed,
            E::WalletDebited { amount, .. } => self.balance = self.balance.saturating_sub(amount),
            E::WalletCredited { amount, .. } => self.balance = self.balance.saturating_add(amount),
        }
    }
}
