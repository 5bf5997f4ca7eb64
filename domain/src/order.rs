//! The Order aggregate: a buyer's purchase from a seller, paid directly or through an escrow.
//!
//! The order records what was bought, what was paid and what was refunded. The money itself
//! moves through wallets and escrows; the command layer commits their events with the order's.

use crate::values::{bounded_text, Amount, Currency, InvalidInput, MAX_AMOUNT};
use crate::RuleCode;
use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The fewest lines an order may have.
pub const MIN_LINES: usize = 1;
/// The most lines an order may have.
pub const MAX_LINES: usize = 100;
/// The longest SKU, in characters.
pub const MAX_SKU_CHARS: usize = 64;
/// The longest line description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 200;
/// The largest quantity of one line.
pub const MAX_QUANTITY: i64 = 10_000;

/// An order's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not placed yet (no events).
    #[default]
    Unplaced,
    /// Placed, waiting for payment.
    Placed,
    /// Paid, waiting for shipment.
    Paid,
    /// Shipped, waiting for the buyer's confirmation.
    Shipped,
    /// Delivered (terminal for the lifecycle; refunds remain possible).
    Delivered,
    /// Terminal.
    Cancelled,
}

/// Who cancelled an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    /// The buyer, before payment.
    Buyer,
    /// The seller, before shipping.
    Seller,
    /// The process that cancels paid orders not shipped within 14 days.
    System,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// The seller's stock-keeping unit, 1-64 characters.
    pub sku: String,
    /// What is bought, 1-200 characters.
    pub description: String,
    /// How many, 1-10,000.
    pub quantity: i64,
    /// The price of one unit in minor units of the order's currency, `0..=10^15`.
    pub unit_price: i64,
}

impl OrderLine {
    /// Checks the line's fields and returns its amount (`quantity * unit_price`, checked).
    pub fn validate(&self) -> Result<i64, InvalidInput> {
        bounded_text("lines.sku", &self.sku, 1, MAX_SKU_CHARS)?;
        bounded_text(
            "lines.description",
            &self.description,
            1,
            MAX_DESCRIPTION_CHARS,
        )?;
        if !(1..=MAX_QUANTITY).contains(&self.quantity) {
            return Err(InvalidInput::new(
                "lines.quantity",
                "must be between 1 and 10,000",
            ));
        }
        if !(0..=MAX_AMOUNT).contains(&self.unit_price) {
            return Err(InvalidInput::new(
                "lines.unit_price",
                "must be between 0 and 10^15 minor units",
            ));
        }
        self.quantity
            .checked_mul(self.unit_price)
            .filter(|amount| *amount <= MAX_AMOUNT)
            .ok_or_else(|| {
                InvalidInput::new("lines", "the total must be at most 10^15 minor units")
            })
    }
}

/// Checks an order's lines (1-100, each valid) and computes the total, which must be
/// `1..=10^15` minor units. Errors name the line (1-based) in their reason.
pub fn validate_lines(lines: &[OrderLine]) -> Result<i64, InvalidInput> {
    if !(MIN_LINES..=MAX_LINES).contains(&lines.len()) {
        return Err(InvalidInput::new(
            "lines",
            "must have between 1 and 100 lines",
        ));
    }
    let mut total: i64 = 0;
    for (index, line) in lines.iter().enumerate() {
        let amount = line.validate().map_err(|e| InvalidInput {
            field: e.field,
            reason: format!("line {}: {}", index + 1, e.reason),
        })?;
        total = total
            .checked_add(amount)
            .filter(|t| *t <= MAX_AMOUNT)
            .ok_or_else(|| {
                InvalidInput::new("lines", "the total must be at most 10^15 minor units")
            })?;
    }
    if total < 1 {
        return Err(InvalidInput::new(
            "lines",
            "the total must be at least one minor unit",
        ));
    }
    Ok(total)
}

/// The state of one order, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id.
    pub id: Uuid,
    /// The buying account.
    pub buyer: Uuid,
    /// The selling account.
    pub seller: Uuid,
    /// The order's currency (set when placed).
    pub currency: Option<Currency>,
    /// What is bought.
    pub lines: Vec<OrderLine>,
    /// The sum of the lines, in minor units.
    pub total: i64,
    /// Whether payment goes through an escrow.
    pub use_escrow: bool,
    /// The escrow holding the payment, when paid through one.
    pub escrow_id: Option<Uuid>,
    /// The buyer's wallet that paid.
    pub paid_wallet: Option<Uuid>,
    /// What was paid, in minor units.
    pub paid_amount: i64,
    /// What was refunded so far (refunds and the refund of a cancellation), in minor units.
    pub refunded_amount: i64,
    /// When the order was paid (the 14-day shipping deadline runs from here).
    pub paid_at: Option<DateTime<Utc>>,
    /// Lifecycle state.
    pub status: OrderStatus,
    /// The carrier, once shipped.
    pub carrier: Option<String>,
    /// The carrier's tracking reference, once shipped.
    pub tracking: Option<String>,
    /// Who cancelled the order, once cancelled.
    pub cancelled_by: Option<CancelledBy>,
}

impl Order {
    /// What was paid and not refunded yet, in minor units.
    pub fn remaining_paid(&self) -> i64 {
        self.paid_amount - self.refunded_amount
    }
}

/// What an order can be asked to do. Facts from other aggregates come with the command.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub enum OrderCommand {
    /// PlaceOrder (the buyer's activity is checked by the caller).
    Place {
        /// The new order's id.
        order_id: Uuid,
        /// The buying account.
        buyer: Uuid,
        /// The selling account.
        seller: Uuid,
        /// The order's currency.
        currency: Currency,
        /// What is bought; the total is computed from them.
        lines: Vec<OrderLine>,
        /// Whether payment goes through an escrow.
        use_escrow: bool,
        /// Whether the seller's account is active.
        seller_active: bool,
    },
    /// PayOrder (the wallet debit or escrow opening is committed with it by the caller).
    Pay {
        /// The buyer's wallet that pays.
        wallet: Uuid,
        /// The escrow opened and funded for the total; `Some` exactly when the order uses one.
        escrow_id: Option<Uuid>,
        /// The current time.
        now: DateTime<Utc>,
    },
    /// ShipOrder.
    Ship {
        /// The carrier.
        carrier: String,
        /// The carrier's tracking reference.
        tracking: String,
    },
    /// ConfirmDelivery (releases the order's escrow, if any).
    ConfirmDelivery,
    /// CancelOrder, or the 14-day process (`by: System`).
    Cancel {
        /// Why.
        reason: String,
        /// Who cancels.
        by: CancelledBy,
    },
    /// RefundOrder.
    Refund {
        /// How much.
        amount: Amount,
        /// Why.
        reason: String,
    },
}

/// What happened to an order. Stored names are the variant names, schema version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum OrderEvent {
    /// The order was placed.
    OrderPlaced {
        /// The order's id.
        order_id: Uuid,
        /// The buying account.
        buyer: Uuid,
        /// The selling account.
        seller: Uuid,
        /// The order's currency.
        currency: Currency,
        /// What is bought.
        lines: Vec<OrderLine>,
        /// The sum of the lines, in minor units.
        total: i64,
        /// Whether payment goes through an escrow.
        use_escrow: bool,
    },
    /// The order was paid.
    OrderPaid {
        /// The buyer's wallet that paid.
        wallet: Uuid,
        /// How much (the total).
        amount: i64,
        /// The escrow holding the payment, when paid through one.
        escrow_id: Option<Uuid>,
        /// When.
        paid_at: DateTime<Utc>,
    },
    /// The order was shipped.
    OrderShipped {
        /// The carrier.
        carrier: String,
        /// The carrier's tracking reference.
        tracking: String,
    },
    /// The buyer confirmed delivery.
    OrderDelivered {
        /// The escrow to release, when paid through one.
        escrow_id: Option<Uuid>,
    },
    /// The order was cancelled.
    OrderCancelled {
        /// Why.
        reason: String,
        /// Who cancelled.
        by: CancelledBy,
        /// What goes back to the buyer: paid and not yet refunded, in minor units.
        refund: i64,
    },
    /// Part or all of the payment was refunded.
    OrderRefunded {
        /// How much.
        amount: i64,
        /// Why.
        reason: String,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OrderPlaced { .. } => "OrderPlaced",
            Self::OrderPaid { .. } => "OrderPaid",
            Self::OrderShipped { .. } => "OrderShipped",
            Self::OrderDelivered { .. } => "OrderDelivered",
            Self::OrderCancelled { .. } => "OrderCancelled",
            Self::OrderRefunded { .. } => "OrderRefunded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why an order refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order's state forbids the command.
    #[error("the order is {0:?}, which forbids this")]
    InvalidState(OrderStatus),
    /// The lines fail validation (reported as invalid input, with the field).
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The seller is the buyer.
    #[error("a buyer cannot order from themselves")]
    SellerIsBuyer,
    /// The seller's account is not active.
    #[error("the seller's account is not active")]
    SellerInactive,
    /// The refund would take refunds over the amount paid.
    #[error("refunds in total cannot exceed the amount paid")]
    RefundExceedsPaid,
}

impl RuleCode for OrderError {
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidState(_) => "invalid_state",
            Self::InvalidInput(_) => "invalid_input",
            Self::SellerIsBuyer => "seller_is_buyer",
            Self::SellerInactive => "seller_inactive",
            Self::RefundExceedsPaid => "refund_exceeds_paid",
        }
    }
}

impl Order {
    /// Decides a command against the current state: the events to append, or a rejection.
    pub fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderCommand as C;
        use OrderEvent as E;
        use OrderStatus as S;
        let require = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(OrderError::InvalidState(self.status))
            }
        };
        match command {
            C::Place {
                order_id,
                buyer,
                seller,
                currency,
                lines,
                use_escrow,
                seller_active,
            } => {
                // Input is checked before any rule; the total is always the server's.
                let total = validate_lines(&lines)?;
                require(self.status == S::Unplaced)?;
                if seller == buyer {
                    return Err(OrderError::SellerIsBuyer);
                }
                if !seller_active {
                    return Err(OrderError::SellerInactive);
                }
                Ok(vec![E::OrderPlaced {
                    order_id,
                    buyer,
                    seller,
                    currency,
                    lines,
                    total,
                    use_escrow,
                }])
            }
            C::Pay {
                wallet,
                escrow_id,
                now,
            } => {
                require(self.status == S::Placed)?;
                require(escrow_id.is_some() == self.use_escrow)?;
                Ok(vec![E::OrderPaid {
                    wallet,
                    amount: self.total,
                    escrow_id,
                    paid_at: now,
                }])
            }
            C::Ship { carrier, tracking } => {
                require(self.status == S::Paid)?;
                Ok(vec![E::OrderShipped { carrier, tracking }])
            }
            C::ConfirmDelivery => {
                require(self.status == S::Shipped)?;
                Ok(vec![E::OrderDelivered {
                    escrow_id: self.escrow_id,
                }])
            }
            C::Cancel { reason, by } => {
                require(match by {
                    CancelledBy::Buyer => self.status == S::Placed,
                    CancelledBy::Seller => matches!(self.status, S::Placed | S::Paid),
                    CancelledBy::System => self.status == S::Paid,
                })?;
                Ok(vec![E::OrderCancelled {
                    reason,
                    by,
                    refund: self.remaining_paid(),
                }])
            }
            C::Refund { amount, reason } => {
                require(matches!(self.status, S::Paid | S::Shipped | S::Delivered))?;
                if amount.get() > self.remaining_paid() {
                    return Err(OrderError::RefundExceedsPaid);
                }
                Ok(vec![E::OrderRefunded {
                    amount: amount.get(),
                    reason,
                }])
            }
        }
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
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
        use OrderEvent as E;
        match event {
            E::OrderPlaced {
                order_id,
                buyer,
                seller,
                currency,
                lines,
                total,
                use_escrow,
            } => {
                self.id = order_id;
                self.buyer = buyer;
                self.seller = seller;
                self.currency = Some(currency);
                self.lines = lines;
                self.total = total;
                self.use_escrow = use_escrow;
                self.status = OrderStatus::Placed;
            }
            E::OrderPaid {
                wallet,
                amount,
                escrow_id,
                paid_at,
            } => {
                self.paid_wallet = Some(wallet);
                self.paid_amount = amount;
                self.escrow_id = escrow_id;
                self.paid_at = Some(paid_at);
                self.status = OrderStatus::Paid;
            }
            E::OrderShipped { carrier, tracking } => {
                self.carrier = Some(carrier);
                self.tracking = Some(tracking);
                self.status = OrderStatus::Shipped;
            }
            E::OrderDelivered { .. } => self.status = OrderStatus::Delivered,
            E::OrderCancelled { by, refund, .. } => {
                // `decide` keeps refunds within the amount paid; never wrap on stored data.
                self.refunded_amount = self.refunded_amount.saturating_add(refund);
                self.cancelled_by = Some(by);
                self.status = OrderStatus::Cancelled;
            }
            E::OrderRefunded { amount, .. } => {
                self.refunded_amount = self.refunded_amount.saturating_add(amount);
            }
        }
    }
}
