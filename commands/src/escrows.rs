//! Escrow use cases: open, fund, release, refund, raise and resolve a dispute. Every money
//! move is one commit over the escrow and the wallets it pays.

use crate::service::{CommandError, CommandResult, CommandService, Envelope, Refusal, Role};
use crate::unit::{change, Decision, Locks, Unit};
use chrono::{DateTime, Utc};
use domain::account::AccountStatus;
use domain::escrow::{Escrow, EscrowCommand, Party};
use domain::values::bounded_text;
use domain::wallet::{MoneyReason, Wallet, WalletCommand};
use domain::Amount;
use uuid::Uuid;

/// OpenEscrow input.
#[derive(Debug, Clone)]
pub struct OpenEscrow {
    /// The buyer's wallet that will fund it.
    pub buyer_wallet: Uuid,
    /// The selling account.
    pub seller: Uuid,
    /// Minor units, in the wallet's currency.
    pub amount: i64,
    /// What the parties agreed.
    pub terms: String,
    /// When the process may release it to the seller (no dispute open).
    pub release_after: Option<DateTime<Utc>>,
    /// When the process refunds it to the buyer if not released.
    pub expires_at: DateTime<Utc>,
}

/// Escrow commands on an existing escrow.
#[derive(Debug, Clone)]
pub enum EscrowAction {
    /// FundEscrow (buyer).
    Fund,
    /// ReleaseEscrow (buyer).
    Release,
    /// RefundEscrow (seller).
    Refund,
    /// RaiseDispute (buyer or seller).
    RaiseDispute {
        /// Why.
        reason: String,
    },
    /// ResolveDispute (arbiter).
    Resolve {
        /// Minor units to the seller.
        to_seller: i64,
        /// Minor units to the buyer.
        to_buyer: i64,
    },
}

impl CommandService {
    /// OpenEscrow: the caller (buyer) opens an escrow towards `seller`.
    pub async fn open_escrow(
        &self,
        env: &Envelope,
        input: OpenEscrow,
    ) -> Result<CommandResult, CommandError> {
        let amount = Amount::parse("amount", input.amount)?;
        let terms = bounded_text("terms", &input.terms, 1, 2000)?;
        let me = self.acting_account(env).await?.state.id;
        let seller = self
            .accounts
            .read(self.store.as_ref(), input.seller)
            .await?;
        if seller.version == 0 {
            return Err(Refusal::new(404, "not_found", "no such seller account").into());
        }
        let seller_active = seller.state.status == AccountStatus::Active;
        let wallet = input.buyer_wallet;
        let id = Uuid::now_v7();
        let now = self.clock.now();
        let unit = Unit {
            role: Role::Customer,
            primary: id,
            created: true,
        };
        let locks = Locks::default()
            .new_aggregate::<Escrow>(id)
            .existing::<Wallet>(wallet);
        self.run_unit(env, unit, locks, |locked| {
            let w = locked.existing::<Wallet>(wallet, "wallet")?;
            if w.state.owner != me {
                return Err(Refusal::forbidden("not your wallet").into());
            }
            let currency = w
                .state
                .currency
                .ok_or_else(|| Refusal::not_found("wallet"))?;
            let open = EscrowCommand::Open {
                escrow_id: id,
                buyer: me,
                buyer_wallet: wallet,
                seller: input.seller,
                currency,
                amount,
                terms: terms.clone(),
                release_after: input.release_after,
                expires_at: input.expires_at,
                order_id: None,
                seller_active,
                fund: false,
                now,
            };
            Ok(Decision {
                changes: vec![change::<Escrow>(id, open)],
                claims: crate::accounts::escrow_parties(id, me, input.seller),
                result_id: None,
            })
        })
        .await
    }

    /// Every other escrow command.
    pub async fn escrow_command(
        &self,
        env: &Envelope,
        id: Uuid,
        action: EscrowAction,
    ) -> Result<CommandResult, CommandError> {
        let escrow = self.escrows.read(self.store.as_ref(), id).await?;
        if escrow.version == 0 {
            return Err(Refusal::not_found("escrow").into());
        }
        let e = escrow.state;
        let currency = e.currency.ok_or_else(|| Refusal::not_found("escrow"))?;
        let now = self.clock.now();
        let forbidden = || {
            CommandError::from(Refusal::forbidden(
                "not a party to this escrow that may do this",
            ))
        };
        if let EscrowAction::Resolve {
            to_seller,
            to_buyer,
        } = action
        {
            if !env.actor.has(Role::Arbiter) {
                return Err(
                    Refusal::forbidden("resolving a dispute needs the arbiter role").into(),
                );
            }
            let unit = Unit {
                role: Role::Arbiter,
                primary: id,
                created: false,
            };
            let seller = self.payee(e.seller, currency).await?;
            let mut locks = Locks::default().existing::<Escrow>(id);
            if to_buyer > 0 {
                locks = locks.existing::<Wallet>(e.buyer_wallet);
            }
            if to_seller > 0 {
                locks = seller.locks(locks);
            }
            return self
                .run_unit(env, unit, locks, |_| {
                    let mut changes = vec![change::<Escrow>(
                        id,
                        EscrowCommand::ResolveDispute {
                            to_seller,
                            to_buyer,
                        },
                    )];
                    let mut claims = Vec::new();
                    if to_seller > 0 {
                        changes.push(seller.credit(
                            Amount::parse("to_seller", to_seller)?,
                            MoneyReason::DisputeSettlement,
                            id,
                        ));
                        claims = seller.claims();
                    }
                    if to_buyer > 0 {
                        let credit = WalletCommand::Credit {
                            amount: Amount::parse("to_buyer", to_buyer)?,
                            reason: MoneyReason::DisputeSettlement,
                            reference: id,
                        };
                        changes.push(change::<Wallet>(e.buyer_wallet, credit));
                    }
                    Ok(Decision {
                        changes,
                        claims,
                        result_id: None,
                    })
                })
                .await;
        }
        let me = self.acting_account(env).await?.state.id;
        let party = if me == e.buyer {
            Party::Buyer
        } else if me == e.seller {
            Party::Seller
        } else {
            return Err(forbidden());
        };
        let unit = Unit {
            role: Role::Customer,
            primary: id,
            created: false,
        };
        let amount = Amount::parse("amount", e.amount)?;
        match action {
            EscrowAction::Fund if party == Party::Buyer => {
                let wallet = e.buyer_wallet;
                let locks = Locks::default()
                    .existing::<Escrow>(id)
                    .existing::<Wallet>(wallet);
                self.run_unit(env, unit, locks, |_| {
                    let debit = WalletCommand::Debit {
                        amount,
                        reason: MoneyReason::EscrowFunding,
                        reference: id,
                    };
                    Ok(Decision::of(vec![
                        change::<Escrow>(id, EscrowCommand::Fund),
                        change::<Wallet>(wallet, debit),
                    ]))
                })
                .await
            }
            EscrowAction::Release if party == Party::Buyer => {
                self.settle_escrow(env, unit, &e, Settle::Release, party, now)
                    .await
            }
            EscrowAction::Refund if party == Party::Seller => {
                self.settle_escrow(env, unit, &e, Settle::Refund, party, now)
                    .await
            }
            EscrowAction::RaiseDispute { reason } => {
                let reason = bounded_text("reason", &reason, 1, 500)?;
                let command = EscrowCommand::RaiseDispute { by: party, reason };
                self.run_unit(env, unit, Locks::default().existing::<Escrow>(id), |_| {
                    Ok(Decision::of(vec![change::<Escrow>(id, command.clone())]))
                })
                .await
            }
            _ => Err(forbidden()),
        }
    }
}

/// How a funded escrow pays out in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// To the seller's wallet in the escrow's currency (opened on the fly if missing).
    Release,
    /// Back to the buyer's wallet that funded it.
    Refund,
}

impl CommandService {
    /// Releases or refunds a funded escrow in one commit with the wallet it credits; the
    /// escrow checks that `by` may do it now.
    pub(crate) async fn settle_escrow(
        &self,
        env: &Envelope,
        unit: Unit,
        escrow: &Escrow,
        settle: Settle,
        by: Party,
        now: DateTime<Utc>,
    ) -> Result<CommandResult, CommandError> {
        let id = escrow.id;
        let amount = Amount::parse("amount", escrow.amount)?;
        match settle {
            Settle::Release => {
                let currency = escrow
                    .currency
                    .ok_or_else(|| Refusal::not_found("escrow"))?;
                let seller = self.payee(escrow.seller, currency).await?;
                let locks = seller.locks(Locks::default().existing::<Escrow>(id));
                self.run_unit(env, unit, locks, |_| {
                    Ok(Decision {
                        changes: vec![
                            change::<Escrow>(id, EscrowCommand::Release { by, now }),
                            seller.credit(amount, MoneyReason::EscrowRelease, id),
                        ],
                        claims: seller.claims(),
                        result_id: None,
                    })
                })
                .await
            }
            Settle::Refund => {
                let wallet = escrow.buyer_wallet;
                let locks = Locks::default()
                    .existing::<Escrow>(id)
                    .existing::<Wallet>(wallet);
                self.run_unit(env, unit, locks, |_| {
                    let credit = WalletCommand::Credit {
                        amount,
                        reason: MoneyReason::EscrowRefund,
                        reference: id,
                    };
                    Ok(Decision::of(vec![
                        change::<Escrow>(id, EscrowCommand::Refund { by, now }),
                        change::<Wallet>(wallet, credit),
                    ]))
                })
                .await
            }
        }
    }
}
