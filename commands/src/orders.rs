//! Order use cases: place, pay (directly or through an escrow), ship, confirm delivery,
//! cancel and refund. Every money move is one commit over every stream it touches.

use crate::service::{CommandError, CommandResult, CommandService, Envelope, Refusal, Role};
use crate::unit::{change, Decision, Locked, Locks, Unit};
use crate::wallets::WALLET_SCOPE;
use chrono::Duration;
use domain::account::AccountStatus;
use domain::escrow::{Escrow, EscrowCommand, EscrowStatus, Party};
use domain::order::{validate_lines, CancelledBy, Order, OrderCommand, OrderLine, OrderStatus};
use domain::values::bounded_text;
use domain::wallet::{MoneyReason, Wallet, WalletCommand};
use domain::{Amount, Currency};
use uuid::Uuid;

/// How long the escrow of an order paid through escrow runs before it may be refunded.
pub const ORDER_ESCROW_DAYS: i64 = 30;

/// PlaceOrder input.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    /// The selling account.
    pub seller: Uuid,
    /// The order's currency.
    pub currency: String,
    /// What is bought.
    pub lines: Vec<OrderLine>,
    /// Whether payment goes through an escrow.
    pub use_escrow: bool,
}

/// Order commands on an existing order.
#[derive(Debug, Clone)]
pub enum OrderAction {
    /// PayOrder from one of the buyer's wallets.
    Pay {
        /// The paying wallet.
        wallet: Uuid,
    },
    /// ShipOrder.
    Ship {
        /// The carrier.
        carrier: String,
        /// The tracking reference.
        tracking: String,
    },
    /// ConfirmDelivery.
    ConfirmDelivery,
    /// CancelOrder.
    Cancel {
        /// Why.
        reason: String,
    },
    /// RefundOrder.
    Refund {
        /// Minor units.
        amount: i64,
        /// Why.
        reason: String,
    },
}

fn amount_of(value: i64) -> Result<Amount, CommandError> {
    Ok(Amount::parse("amount", value)?)
}

impl CommandService {
    /// PlaceOrder: the caller buys from `seller`.
    pub async fn place_order(
        &self,
        env: &Envelope,
        input: PlaceOrder,
    ) -> Result<CommandResult, CommandError> {
        let currency = Currency::parse("currency", &input.currency)?;
        validate_lines(&input.lines)?;
        let me = self.acting_account(env).await?;
        let seller = self
            .accounts
            .read(self.store.as_ref(), input.seller)
            .await?;
        if seller.version == 0 {
            return Err(Refusal::new(404, "not_found", "no such seller account").into());
        }
        let id = Uuid::now_v7();
        let command = OrderCommand::Place {
            order_id: id,
            buyer: me.state.id,
            seller: input.seller,
            currency,
            lines: input.lines,
            use_escrow: input.use_escrow,
            seller_active: seller.state.status == AccountStatus::Active,
        };
        let unit = Unit {
            role: Role::Customer,
            primary: id,
            created: true,
        };
        let locks = Locks::default().new_aggregate::<Order>(id);
        self.run_unit(env, unit, locks, |_| {
            Ok(Decision::of(vec![change::<Order>(id, command.clone())]))
        })
        .await
    }

    /// Every other order command.
    pub async fn order_command(
        &self,
        env: &Envelope,
        id: Uuid,
        action: OrderAction,
    ) -> Result<CommandResult, CommandError> {
        // A first look (unlocked) tells which other aggregates the command needs; the plan
        // checks everything again on the locked states.
        let order = self.orders.read(self.store.as_ref(), id).await?;
        if order.version == 0 {
            return Err(Refusal::not_found("order").into());
        }
        let order = order.state;
        let currency = order.currency.ok_or_else(|| Refusal::not_found("order"))?;
        let admin = env.actor.has(Role::Admin);
        let me = if admin && matches!(action, OrderAction::Refund { .. }) {
            None
        } else {
            Some(self.acting_account(env).await?.state.id)
        };
        let is_buyer = me == Some(order.buyer);
        let is_seller = me == Some(order.seller);
        let forbidden = || {
            CommandError::from(Refusal::forbidden(
                "not a party to this order that may do this",
            ))
        };
        let now = self.clock.now();
        match action {
            OrderAction::Pay { wallet } => {
                if !is_buyer {
                    return Err(forbidden());
                }
                let buyer = order.buyer;
                let unit = Unit {
                    role: Role::Customer,
                    primary: id,
                    created: false,
                };
                if order.use_escrow {
                    let escrow = Uuid::now_v7();
                    let locks = Locks::default()
                        .existing::<Order>(id)
                        .existing::<Wallet>(wallet)
                        .new_aggregate::<Escrow>(escrow);
                    let seller_active = self
                        .accounts
                        .read(self.store.as_ref(), order.seller)
                        .await?
                        .state
                        .status
                        == AccountStatus::Active;
                    self.run_unit(env, unit, locks, |locked| {
                        let (o, total) = paying(locked, id, wallet, buyer, currency)?;
                        let open = EscrowCommand::Open {
                            escrow_id: escrow,
                            buyer,
                            buyer_wallet: wallet,
                            seller: o.seller,
                            currency,
                            amount: total,
                            terms: format!("payment of order {id}"),
                            release_after: None,
                            expires_at: now + Duration::days(ORDER_ESCROW_DAYS),
                            order_id: Some(id),
                            seller_active,
                            fund: true,
                            now,
                        };
                        Ok(Decision {
                            changes: vec![
                                change::<Order>(
                                    id,
                                    OrderCommand::Pay {
                                        wallet,
                                        escrow_id: Some(escrow),
                                        now,
                                    },
                                ),
                                change::<Wallet>(
                                    wallet,
                                    debit(total, MoneyReason::EscrowFunding, escrow),
                                ),
                                change::<Escrow>(escrow, open),
                            ],
                            claims: crate::accounts::escrow_parties(escrow, buyer, o.seller),
                            result_id: None,
                        })
                    })
                    .await
                } else {
                    let payee = self.payee(order.seller, currency).await?;
                    let locks = payee.locks(
                        Locks::default()
                            .existing::<Order>(id)
                            .existing::<Wallet>(wallet),
                    );
                    self.run_unit(env, unit, locks, |locked| {
                        let (_, total) = paying(locked, id, wallet, buyer, currency)?;
                        Ok(Decision {
                            changes: vec![
                                change::<Order>(
                                    id,
                                    OrderCommand::Pay {
                                        wallet,
                                        escrow_id: None,
                                        now,
                                    },
                                ),
                                change::<Wallet>(
                                    wallet,
                                    debit(total, MoneyReason::OrderPayment, id),
                                ),
                                payee.credit(total, MoneyReason::OrderPayment, id),
                            ],
                            claims: payee.claims(),
                            result_id: None,
                        })
                    })
                    .await
                }
            }
            OrderAction::Ship { carrier, tracking } => {
                if !is_seller {
                    return Err(forbidden());
                }
                let carrier = bounded_text("carrier", &carrier, 1, 100)?;
                let tracking = bounded_text("tracking", &tracking, 1, 200)?;
                let unit = Unit {
                    role: Role::Customer,
                    primary: id,
                    created: false,
                };
                let command = OrderCommand::Ship { carrier, tracking };
                self.run_unit(env, unit, Locks::default().existing::<Order>(id), |_| {
                    Ok(Decision::of(vec![change::<Order>(id, command.clone())]))
                })
                .await
            }
            OrderAction::ConfirmDelivery => {
                if !is_buyer {
                    return Err(forbidden());
                }
                let unit = Unit {
                    role: Role::Customer,
                    primary: id,
                    created: false,
                };
                match order.escrow_id {
                    None => {
                        self.run_unit(env, unit, Locks::default().existing::<Order>(id), |_| {
                            Ok(Decision::of(vec![change::<Order>(
                                id,
                                OrderCommand::ConfirmDelivery,
                            )]))
                        })
                        .await
                    }
                    Some(escrow) => {
                        let payee = self.payee(order.seller, currency).await?;
                        let locks = payee.locks(
                            Locks::default()
                                .existing::<Order>(id)
                                .existing::<Escrow>(escrow),
                        );
                        self.run_unit(env, unit, locks, |locked| {
                            let amount = amount_of(
                                locked.existing::<Escrow>(escrow, "escrow")?.state.amount,
                            )?;
                            Ok(Decision {
                                changes: vec![
                                    change::<Order>(id, OrderCommand::ConfirmDelivery),
                                    change::<Escrow>(
                                        escrow,
                                        EscrowCommand::Release {
                                            by: Party::Buyer,
                                            now,
                                        },
                                    ),
                                    payee.credit(amount, MoneyReason::EscrowRelease, escrow),
                                ],
                                claims: payee.claims(),
                                result_id: None,
                            })
                        })
                        .await
                    }
                }
            }
            OrderAction::Cancel { reason } => {
                let reason = bounded_text("reason", &reason, 1, 500)?;
                let by = if is_buyer {
                    CancelledBy::Buyer
                } else if is_seller {
                    CancelledBy::Seller
                } else {
                    return Err(forbidden());
                };
                let cancel = OrderCommand::Cancel { reason, by };
                let unit = Unit {
                    role: Role::Customer,
                    primary: id,
                    created: false,
                };
                self.refund_plan(env, unit, &order, currency, cancel, None, now)
                    .await
            }
            OrderAction::Refund { amount, reason } => {
                let amount = amount_of(amount)?;
                let reason = bounded_text("reason", &reason, 1, 500)?;
                let role = if admin { Role::Admin } else { Role::Customer };
                if !(admin || is_seller) {
                    return Err(forbidden());
                }
                let refund = OrderCommand::Refund { amount, reason };
                let unit = Unit {
                    role,
                    primary: id,
                    created: false,
                };
                self.refund_plan(env, unit, &order, currency, refund, Some(amount), now)
                    .await
            }
        }
    }

    /// A cancellation or refund with the money going back to the buyer's paying wallet: out
    /// of the order's escrow while it holds the payment, else out of the seller's wallet.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn refund_plan(
        &self,
        env: &Envelope,
        unit: Unit,
        order: &Order,
        currency: Currency,
        command: OrderCommand,
        partial: Option<Amount>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<CommandResult, CommandError> {
        let id = order.id;
        let escrow = match order.escrow_id {
            Some(e)
                if self
                    .escrows
                    .read(self.store.as_ref(), e)
                    .await?
                    .state
                    .status
                    == EscrowStatus::Funded =>
            {
                Some(e)
            }
            _ => None,
        };
        let Some(buyer_wallet) = order.paid_wallet else {
            // Nothing was paid: only the order changes (the domain refuses a refund).
            return self
                .run_unit(env, unit, Locks::default().existing::<Order>(id), |_| {
                    Ok(Decision::of(vec![change::<Order>(id, command.clone())]))
                })
                .await;
        };
        if let Some(escrow) = escrow {
            let locks = Locks::default()
                .existing::<Order>(id)
                .existing::<Escrow>(escrow)
                .existing::<Wallet>(buyer_wallet);
            return self
                .run_unit(env, unit, locks, |locked| {
                    let held = locked.existing::<Escrow>(escrow, "escrow")?.state.amount;
                    if partial.is_some_and(|a| a.get() != held) {
                        return Err(Refusal::new(
                            422,
                            "escrow_holds_payment",
                            "the payment is held in escrow: refund all of it, or after delivery",
                        )
                        .into());
                    }
                    Ok(Decision::of(vec![
                        change::<Order>(id, command.clone()),
                        change::<Escrow>(
                            escrow,
                            EscrowCommand::Refund {
                                by: Party::Seller,
                                now,
                            },
                        ),
                        change::<Wallet>(
                            buyer_wallet,
                            credit(amount_of(held)?, MoneyReason::EscrowRefund, escrow),
                        ),
                    ]))
                })
                .await;
        }
        let seller_wallet = match self
            .store
            .claim(WALLET_SCOPE, &format!("{}:{currency}", order.seller))
            .await?
        {
            Some(c) => c.stream_id,
            None => {
                return Err(Refusal::new(
                    422,
                    "insufficient_funds",
                    "the seller has no wallet to refund from",
                )
                .into())
            }
        };
        let locks = Locks::default()
            .existing::<Order>(id)
            .existing::<Wallet>(seller_wallet)
            .existing::<Wallet>(buyer_wallet);
        self.run_unit(env, unit, locks, |locked| {
            let o = locked.existing::<Order>(id, "order")?;
            // A cancellation refunds what is left; a refund its amount (the order checks the
            // total never exceeds what was paid).
            let back = match partial {
                Some(a) => a,
                None if o.state.status == OrderStatus::Paid => amount_of(o.state.remaining_paid())?,
                None => return Ok(Decision::of(vec![change::<Order>(id, command.clone())])),
            };
            Ok(Decision::of(vec![
                change::<Order>(id, command.clone()),
                change::<Wallet>(seller_wallet, debit(back, MoneyReason::OrderRefund, id)),
                change::<Wallet>(buyer_wallet, credit(back, MoneyReason::OrderRefund, id)),
            ]))
        })
        .await
    }

    /// GET an order: its buyer, its seller, admins and auditors may read it.
    pub async fn get_order(
        &self,
        env: &Envelope,
        id: Uuid,
    ) -> Result<crate::repo::Loaded<Order>, CommandError> {
        let order = self.orders.read(self.store.as_ref(), id).await?;
        if order.version == 0 {
            return Err(Refusal::not_found("order").into());
        }
        if !(env.actor.has(Role::Admin) || env.actor.has(Role::Auditor)) {
            let me = self.account_of(&env.actor.subject).await?;
            if me != Some(order.state.buyer) && me != Some(order.state.seller) {
                return Err(Refusal::forbidden("not a party to this order").into());
            }
        }
        Ok(order)
    }

    /// GET an escrow: its parties, admins, auditors and arbiters may read it.
    pub async fn get_escrow(
        &self,
        env: &Envelope,
        id: Uuid,
    ) -> Result<crate::repo::Loaded<Escrow>, CommandError> {
        let escrow = self.escrows.read(self.store.as_ref(), id).await?;
        if escrow.version == 0 {
            return Err(Refusal::not_found("escrow").into());
        }
        let staff = [Role::Admin, Role::Auditor, Role::Arbiter]
            .iter()
            .any(|r| env.actor.has(*r));
        if !staff {
            let me = self.account_of(&env.actor.subject).await?;
            if me != Some(escrow.state.buyer) && me != Some(escrow.state.seller) {
                return Err(Refusal::forbidden("not a party to this escrow").into());
            }
        }
        Ok(escrow)
    }
}

/// Checks a payment on the locked states: the caller's wallet, in the order's currency.
fn paying(
    locked: &Locked,
    id: Uuid,
    wallet: Uuid,
    buyer: Uuid,
    currency: Currency,
) -> Result<(Order, Amount), CommandError> {
    let o = locked.existing::<Order>(id, "order")?;
    let w = locked.existing::<Wallet>(wallet, "wallet")?;
    if w.state.owner != buyer {
        return Err(Refusal::forbidden("not your wallet").into());
    }
    if w.state.currency != Some(currency) {
        return Err(Refusal::new(
            422,
            "currency_mismatch",
            "the wallet's currency is not the order's",
        )
        .into());
    }
    let total = amount_of(o.state.total)?;
    Ok((o.state.clone(), total))
}

fn debit(amount: Amount, reason: MoneyReason, reference: Uuid) -> WalletCommand {
    WalletCommand::Debit {
        amount,
        reason,
        reference,
    }
}

fn credit(amount: Amount, reason: MoneyReason, reference: Uuid) -> WalletCommand {
    WalletCommand::Credit {
        amount,
        reason,
        reference,
    }
}
