//! Given/when/then tests for every Order rule in DOMAIN.md ("Common rules", "Order",
//! "Processes": the 14-day cancellation).

// The package is `chronicle-domain`; dependants rename it to `domain` in the workspace.
use chronicle_domain as domain;
use chrono::{DateTime, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};
use domain::order::{
    validate_lines, CancelledBy, Order, OrderCommand, OrderError, OrderEvent, OrderLine,
    OrderStatus,
};
use domain::values::{InvalidInput, MAX_AMOUNT};
use domain::{Amount, Currency, RuleCode};
use proptest::prelude::*;
use uuid::Uuid;

type OrderTest = TestFramework<Order>;

fn order_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0d01)
}

fn buyer_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a1)
}

fn seller_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a2)
}

fn wallet_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0b01)
}

fn escrow_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0e01)
}

fn eur() -> Currency {
    Currency::parse("currency", "EUR").expect("an ISO 4217 currency")
}

fn amount(minor: i64) -> Amount {
    Amount::parse("amount", minor).expect("an amount in range")
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("2026-01-01T00:00:00Z")
}

fn line(sku: &str, quantity: i64, unit_price: i64) -> OrderLine {
    OrderLine {
        sku: sku.to_owned(),
        description: format!("item {sku}"),
        quantity,
        unit_price,
    }
}

/// Two lines: 2 x 12.50 + 1 x 5.00 = 30.00.
fn basket() -> Vec<OrderLine> {
    vec![line("MUG-1", 2, 1_250), line("CARD-7", 1, 500)]
}

const BASKET_TOTAL: i64 = 3_000;

fn place_with(lines: Vec<OrderLine>, use_escrow: bool) -> OrderCommand {
    OrderCommand::Place {
        order_id: order_id(),
        buyer: buyer_id(),
        seller: seller_id(),
        currency: eur(),
        lines,
        use_escrow,
        seller_active: true,
    }
}

fn place(lines: Vec<OrderLine>) -> OrderCommand {
    place_with(lines, false)
}

fn placed_with(use_escrow: bool) -> OrderEvent {
    OrderEvent::OrderPlaced {
        order_id: order_id(),
        buyer: buyer_id(),
        seller: seller_id(),
        currency: eur(),
        lines: basket(),
        total: BASKET_TOTAL,
        use_escrow,
    }
}

fn placed() -> OrderEvent {
    placed_with(false)
}

fn pay(escrow_id: Option<Uuid>) -> OrderCommand {
    OrderCommand::Pay {
        wallet: wallet_id(),
        escrow_id,
        now: now(),
    }
}

fn paid_with(escrow_id: Option<Uuid>) -> OrderEvent {
    OrderEvent::OrderPaid {
        wallet: wallet_id(),
        amount: BASKET_TOTAL,
        escrow_id,
        paid_at: now(),
    }
}

fn paid() -> OrderEvent {
    paid_with(None)
}

fn ship() -> OrderCommand {
    OrderCommand::Ship {
        carrier: "DHL".to_owned(),
        tracking: "JD0146000033".to_owned(),
    }
}

fn shipped() -> OrderEvent {
    OrderEvent::OrderShipped {
        carrier: "DHL".to_owned(),
        tracking: "JD0146000033".to_owned(),
    }
}

fn delivered() -> OrderEvent {
    OrderEvent::OrderDelivered { escrow_id: None }
}

fn cancel(by: CancelledBy) -> OrderCommand {
    OrderCommand::Cancel {
        reason: "changed my mind".to_owned(),
        by,
    }
}

fn cancelled(by: CancelledBy, refund: i64) -> OrderEvent {
    OrderEvent::OrderCancelled {
        reason: "changed my mind".to_owned(),
        by,
        refund,
    }
}

fn refund(minor: i64) -> OrderCommand {
    OrderCommand::Refund {
        amount: amount(minor),
        reason: "damaged".to_owned(),
    }
}

fn refunded(minor: i64) -> OrderEvent {
    OrderEvent::OrderRefunded {
        amount: minor,
        reason: "damaged".to_owned(),
    }
}

fn replay(events: Vec<OrderEvent>) -> Order {
    let mut order = Order::default();
    for event in events {
        order.apply(event);
    }
    order
}

fn invalid_lines(lines: Vec<OrderLine>) -> InvalidInput {
    validate_lines(&lines).expect_err("the lines are invalid")
}

/// Every command, for "refuses everything" checks.
fn every_command() -> Vec<OrderCommand> {
    vec![
        place(basket()),
        pay(None),
        pay(Some(escrow_id())),
        ship(),
        OrderCommand::ConfirmDelivery,
        cancel(CancelledBy::Buyer),
        cancel(CancelledBy::Seller),
        cancel(CancelledBy::System),
        refund(1),
    ]
}

// ---------------------------------------------------------------------------------------------
// PlaceOrder
// ---------------------------------------------------------------------------------------------

#[test]
fn an_order_is_placed_with_the_total_computed_from_its_lines() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(basket()))
        .then_expect_events(vec![placed()]);
}

#[test]
fn an_order_placed_for_escrow_remembers_it() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(place_with(basket(), true))
        .then_expect_events(vec![placed_with(true)]);
}

#[test]
fn a_placed_order_records_its_parties_lines_and_total_and_is_unpaid() {
    let order = replay(vec![placed()]);
    assert_eq!(order.id, order_id());
    assert_eq!(order.buyer, buyer_id());
    assert_eq!(order.seller, seller_id());
    assert_eq!(order.currency, Some(eur()));
    assert_eq!(order.lines, basket());
    assert_eq!(order.total, BASKET_TOTAL);
    assert!(!order.use_escrow);
    assert_eq!(order.status, OrderStatus::Placed);
    assert_eq!(order.paid_amount, 0);
    assert_eq!(order.refunded_amount, 0);
    assert_eq!(order.remaining_paid(), 0);
    assert_eq!(order.paid_wallet, None);
    assert_eq!(order.paid_at, None);
}

#[test]
fn a_buyer_cannot_order_from_themselves() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(OrderCommand::Place {
            order_id: order_id(),
            buyer: buyer_id(),
            seller: buyer_id(),
            currency: eur(),
            lines: basket(),
            use_escrow: false,
            seller_active: true,
        })
        .then_expect_error(OrderError::SellerIsBuyer);
}

#[test]
fn an_order_from_an_inactive_seller_is_refused() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(OrderCommand::Place {
            order_id: order_id(),
            buyer: buyer_id(),
            seller: seller_id(),
            currency: eur(),
            lines: basket(),
            use_escrow: false,
            seller_active: false,
        })
        .then_expect_error(OrderError::SellerInactive);
}

#[test]
fn an_order_cannot_be_placed_twice() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(place(basket()))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Placed));
}

#[test]
fn invalid_lines_are_reported_as_invalid_input_before_any_rule() {
    let command = OrderCommand::Place {
        order_id: order_id(),
        buyer: buyer_id(),
        seller: buyer_id(),
        currency: eur(),
        lines: vec![],
        use_escrow: false,
        seller_active: false,
    };
    let error = Order::default()
        .decide(command)
        .expect_err("no lines is invalid input");
    assert_eq!(error.code(), "invalid_input");
    match error {
        OrderError::InvalidInput(input) => assert_eq!(input.field, "lines"),
        other => panic!("expected invalid input, got {other:?}"),
    }
}

#[test]
fn an_order_without_lines_is_refused() {
    assert_eq!(invalid_lines(vec![]).field, "lines");
    OrderTest::with(())
        .given_no_previous_events()
        .when(place(vec![]))
        .then_expect_error(OrderError::InvalidInput(invalid_lines(vec![])));
}

#[test]
fn an_order_of_one_hundred_lines_is_accepted() {
    let lines: Vec<OrderLine> = (0..100).map(|i| line(&format!("SKU-{i}"), 1, 10)).collect();
    assert_eq!(validate_lines(&lines), Ok(1_000));
}

#[test]
fn an_order_of_one_hundred_and_one_lines_is_refused() {
    let lines: Vec<OrderLine> = (0..101).map(|i| line(&format!("SKU-{i}"), 1, 10)).collect();
    assert_eq!(invalid_lines(lines).field, "lines");
}

#[test]
fn a_quantity_from_one_to_ten_thousand_is_accepted() {
    assert_eq!(validate_lines(&[line("A", 1, 7)]), Ok(7));
    assert_eq!(validate_lines(&[line("A", 10_000, 7)]), Ok(70_000));
}

#[test]
fn a_quantity_of_zero_negative_or_over_ten_thousand_is_refused() {
    for quantity in [0, -1, 10_001, i64::MIN, i64::MAX] {
        assert_eq!(
            invalid_lines(vec![line("A", quantity, 7)]).field,
            "lines.quantity",
            "quantity {quantity}"
        );
    }
}

#[test]
fn a_negative_unit_price_is_refused() {
    assert_eq!(
        invalid_lines(vec![line("A", 1, -1)]).field,
        "lines.unit_price"
    );
    assert_eq!(
        invalid_lines(vec![line("A", 1, i64::MIN)]).field,
        "lines.unit_price"
    );
}

#[test]
fn a_unit_price_over_the_largest_movement_is_refused() {
    assert_eq!(
        invalid_lines(vec![line("A", 1, MAX_AMOUNT + 1)]).field,
        "lines.unit_price"
    );
}

#[test]
fn a_free_line_is_accepted_beside_paid_ones() {
    assert_eq!(
        validate_lines(&[line("GIFT", 1, 0), line("MUG", 3, 100)]),
        Ok(300)
    );
}

#[test]
fn an_order_whose_total_is_zero_is_refused() {
    assert_eq!(invalid_lines(vec![line("GIFT", 5, 0)]).field, "lines");
}

#[test]
fn a_total_of_exactly_the_largest_movement_is_accepted() {
    assert_eq!(
        validate_lines(&[line("A", 1, MAX_AMOUNT - 10), line("B", 2, 5)]),
        Ok(MAX_AMOUNT)
    );
}

#[test]
fn a_total_over_the_largest_movement_is_refused() {
    assert_eq!(
        invalid_lines(vec![line("A", 1, MAX_AMOUNT), line("B", 1, 1)]).field,
        "lines"
    );
    assert_eq!(
        invalid_lines(vec![line("A", 2, MAX_AMOUNT / 2 + 1)]).field,
        "lines"
    );
}

#[test]
fn a_line_amount_that_would_overflow_is_refused_without_panicking() {
    // 10,000 x 10^15 does not fit an i64.
    assert_eq!(
        invalid_lines(vec![line("A", 10_000, MAX_AMOUNT)]).field,
        "lines"
    );
}

#[test]
fn a_sum_of_lines_that_would_overflow_is_refused_without_panicking() {
    let lines: Vec<OrderLine> = (0..100)
        .map(|i| line(&format!("SKU-{i}"), 10_000, MAX_AMOUNT / 10_000))
        .collect();
    assert_eq!(invalid_lines(lines).field, "lines");
}

#[test]
fn a_sku_must_have_one_to_sixty_four_characters() {
    assert!(validate_lines(&[line(&"S".repeat(64), 1, 1)]).is_ok());
    assert_eq!(invalid_lines(vec![line("", 1, 1)]).field, "lines.sku");
    assert_eq!(invalid_lines(vec![line("   ", 1, 1)]).field, "lines.sku");
    assert_eq!(
        invalid_lines(vec![line(&"S".repeat(65), 1, 1)]).field,
        "lines.sku"
    );
    assert_eq!(invalid_lines(vec![line("A\u{7}", 1, 1)]).field, "lines.sku");
}

#[test]
fn a_description_must_have_one_to_two_hundred_characters() {
    let with_description = |d: &str| OrderLine {
        description: d.to_owned(),
        ..line("A", 1, 1)
    };
    assert!(validate_lines(&[with_description(&"d".repeat(200))]).is_ok());
    assert_eq!(
        invalid_lines(vec![with_description("")]).field,
        "lines.description"
    );
    assert_eq!(
        invalid_lines(vec![with_description(&"d".repeat(201))]).field,
        "lines.description"
    );
    assert_eq!(
        invalid_lines(vec![with_description("two\nlines")]).field,
        "lines.description"
    );
}

#[test]
fn a_line_error_names_the_line() {
    let error = invalid_lines(vec![line("A", 1, 1), line("B", 0, 1)]);
    assert_eq!(error.field, "lines.quantity");
    assert!(error.reason.starts_with("line 2:"), "{}", error.reason);
}

#[test]
fn a_single_line_checks_and_prices_itself() {
    assert_eq!(line("A", 3, 250).validate(), Ok(750));
    assert_eq!(
        line("A", 0, 250).validate().map_err(|e| e.field),
        Err("lines.quantity")
    );
}

// ---------------------------------------------------------------------------------------------
// PayOrder
// ---------------------------------------------------------------------------------------------

#[test]
fn a_placed_direct_order_is_paid_for_its_total() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(pay(None))
        .then_expect_events(vec![paid()]);
}

#[test]
fn a_placed_escrow_order_is_paid_through_its_escrow() {
    OrderTest::with(())
        .given(vec![placed_with(true)])
        .when(pay(Some(escrow_id())))
        .then_expect_events(vec![paid_with(Some(escrow_id()))]);
}

#[test]
fn a_paid_order_records_the_wallet_amount_escrow_and_time() {
    let order = replay(vec![placed_with(true), paid_with(Some(escrow_id()))]);
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.paid_wallet, Some(wallet_id()));
    assert_eq!(order.paid_amount, BASKET_TOTAL);
    assert_eq!(order.remaining_paid(), BASKET_TOTAL);
    assert_eq!(order.escrow_id, Some(escrow_id()));
    assert_eq!(order.paid_at, Some(now()));
}

#[test]
fn an_escrow_order_cannot_be_paid_without_an_escrow() {
    OrderTest::with(())
        .given(vec![placed_with(true)])
        .when(pay(None))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Placed));
}

#[test]
fn a_direct_order_cannot_be_paid_through_an_escrow() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(pay(Some(escrow_id())))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Placed));
}

#[test]
fn an_unplaced_order_cannot_be_paid() {
    OrderTest::with(())
        .given_no_previous_events()
        .when(pay(None))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Unplaced));
}

#[test]
fn an_order_cannot_be_paid_twice() {
    OrderTest::with(())
        .given(vec![placed(), paid()])
        .when(pay(None))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Paid));
}

#[test]
fn a_shipped_or_delivered_order_cannot_be_paid() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped()])
        .when(pay(None))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Shipped));
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped(), delivered()])
        .when(pay(None))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Delivered));
}

// ---------------------------------------------------------------------------------------------
// ShipOrder
// ---------------------------------------------------------------------------------------------

#[test]
fn a_paid_order_is_shipped() {
    OrderTest::with(())
        .given(vec![placed(), paid()])
        .when(ship())
        .then_expect_events(vec![shipped()]);
}

#[test]
fn a_shipped_order_records_the_carrier_and_tracking() {
    let order = replay(vec![placed(), paid(), shipped()]);
    assert_eq!(order.status, OrderStatus::Shipped);
    assert_eq!(order.carrier.as_deref(), Some("DHL"));
    assert_eq!(order.tracking.as_deref(), Some("JD0146000033"));
}

#[test]
fn an_unpaid_order_cannot_be_shipped() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(ship())
        .then_expect_error(OrderError::InvalidState(OrderStatus::Placed));
    OrderTest::with(())
        .given_no_previous_events()
        .when(ship())
        .then_expect_error(OrderError::InvalidState(OrderStatus::Unplaced));
}

#[test]
fn an_order_cannot_be_shipped_twice() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped()])
        .when(ship())
        .then_expect_error(OrderError::InvalidState(OrderStatus::Shipped));
}

#[test]
fn a_delivered_order_cannot_be_shipped() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped(), delivered()])
        .when(ship())
        .then_expect_error(OrderError::InvalidState(OrderStatus::Delivered));
}

#[test]
fn a_partly_refunded_paid_order_can_still_be_shipped() {
    OrderTest::with(())
        .given(vec![placed(), paid(), refunded(500)])
        .when(ship())
        .then_expect_events(vec![shipped()]);
}

// ---------------------------------------------------------------------------------------------
// ConfirmDelivery
// ---------------------------------------------------------------------------------------------

#[test]
fn a_shipped_direct_order_is_delivered_without_an_escrow() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped()])
        .when(OrderCommand::ConfirmDelivery)
        .then_expect_events(vec![OrderEvent::OrderDelivered { escrow_id: None }]);
}

#[test]
fn a_shipped_escrow_order_is_delivered_naming_the_escrow_to_release() {
    OrderTest::with(())
        .given(vec![
            placed_with(true),
            paid_with(Some(escrow_id())),
            shipped(),
        ])
        .when(OrderCommand::ConfirmDelivery)
        .then_expect_events(vec![OrderEvent::OrderDelivered {
            escrow_id: Some(escrow_id()),
        }]);
}

#[test]
fn a_delivered_order_is_delivered() {
    assert_eq!(
        replay(vec![placed(), paid(), shipped(), delivered()]).status,
        OrderStatus::Delivered
    );
}

#[test]
fn an_order_not_shipped_cannot_be_confirmed_delivered() {
    OrderTest::with(())
        .given(vec![placed(), paid()])
        .when(OrderCommand::ConfirmDelivery)
        .then_expect_error(OrderError::InvalidState(OrderStatus::Paid));
    OrderTest::with(())
        .given(vec![placed()])
        .when(OrderCommand::ConfirmDelivery)
        .then_expect_error(OrderError::InvalidState(OrderStatus::Placed));
}

#[test]
fn delivery_cannot_be_confirmed_twice() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped(), delivered()])
        .when(OrderCommand::ConfirmDelivery)
        .then_expect_error(OrderError::InvalidState(OrderStatus::Delivered));
}

// ---------------------------------------------------------------------------------------------
// CancelOrder and the 14-day process
// ---------------------------------------------------------------------------------------------

#[test]
fn the_buyer_cancels_an_unpaid_order_with_nothing_to_refund() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(cancel(CancelledBy::Buyer))
        .then_expect_events(vec![cancelled(CancelledBy::Buyer, 0)]);
}

#[test]
fn the_buyer_cannot_cancel_a_paid_order() {
    OrderTest::with(())
        .given(vec![placed(), paid()])
        .when(cancel(CancelledBy::Buyer))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Paid));
}

#[test]
fn the_seller_cancels_an_unpaid_order_with_nothing_to_refund() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(cancel(CancelledBy::Seller))
        .then_expect_events(vec![cancelled(CancelledBy::Seller, 0)]);
}

#[test]
fn the_seller_cancels_a_paid_order_and_refunds_all_of_it() {
    OrderTest::with(())
        .given(vec![placed(), paid()])
        .when(cancel(CancelledBy::Seller))
        .then_expect_events(vec![cancelled(CancelledBy::Seller, BASKET_TOTAL)]);
}

#[test]
fn the_seller_cannot_cancel_a_shipped_or_delivered_order() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped()])
        .when(cancel(CancelledBy::Seller))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Shipped));
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped(), delivered()])
        .when(cancel(CancelledBy::Seller))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Delivered));
}

#[test]
fn the_process_cancels_a_paid_unshipped_order_and_refunds_all_of_it() {
    OrderTest::with(())
        .given(vec![placed_with(true), paid_with(Some(escrow_id()))])
        .when(cancel(CancelledBy::System))
        .then_expect_events(vec![cancelled(CancelledBy::System, BASKET_TOTAL)]);
}

#[test]
fn the_process_does_not_cancel_an_unpaid_order() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(cancel(CancelledBy::System))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Placed));
}

#[test]
fn the_process_does_not_cancel_a_shipped_order() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped()])
        .when(cancel(CancelledBy::System))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Shipped));
}

#[test]
fn nobody_cancels_an_unplaced_order() {
    for by in [CancelledBy::Buyer, CancelledBy::Seller, CancelledBy::System] {
        OrderTest::with(())
            .given_no_previous_events()
            .when(cancel(by))
            .then_expect_error(OrderError::InvalidState(OrderStatus::Unplaced));
    }
}

#[test]
fn cancelling_a_partly_refunded_order_refunds_only_the_rest() {
    OrderTest::with(())
        .given(vec![placed(), paid(), refunded(1_000)])
        .when(cancel(CancelledBy::Seller))
        .then_expect_events(vec![cancelled(CancelledBy::Seller, BASKET_TOTAL - 1_000)]);
}

#[test]
fn a_cancelled_order_has_refunded_everything_paid() {
    let order = replay(vec![
        placed(),
        paid(),
        refunded(1_000),
        cancelled(CancelledBy::Seller, BASKET_TOTAL - 1_000),
    ]);
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(order.cancelled_by, Some(CancelledBy::Seller));
    assert_eq!(order.refunded_amount, BASKET_TOTAL);
    assert_eq!(order.remaining_paid(), 0);
}

#[test]
fn a_cancelled_order_refuses_every_command() {
    for history in [
        vec![placed(), cancelled(CancelledBy::Buyer, 0)],
        vec![
            placed(),
            paid(),
            cancelled(CancelledBy::System, BASKET_TOTAL),
        ],
    ] {
        for command in every_command() {
            OrderTest::with(())
                .given(history.clone())
                .when(command)
                .then_expect_error(OrderError::InvalidState(OrderStatus::Cancelled));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RefundOrder
// ---------------------------------------------------------------------------------------------

#[test]
fn a_paid_order_is_partly_refunded() {
    OrderTest::with(())
        .given(vec![placed(), paid()])
        .when(refund(1_000))
        .then_expect_events(vec![refunded(1_000)]);
}

#[test]
fn a_shipped_order_is_refunded() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped()])
        .when(refund(1_000))
        .then_expect_events(vec![refunded(1_000)]);
}

#[test]
fn a_delivered_order_is_refunded_in_full() {
    OrderTest::with(())
        .given(vec![placed(), paid(), shipped(), delivered()])
        .when(refund(BASKET_TOTAL))
        .then_expect_events(vec![refunded(BASKET_TOTAL)]);
}

#[test]
fn a_refund_over_the_amount_paid_is_refused() {
    OrderTest::with(())
        .given(vec![placed(), paid()])
        .when(refund(BASKET_TOTAL + 1))
        .then_expect_error(OrderError::RefundExceedsPaid);
}

#[test]
fn refunds_in_total_never_exceed_the_amount_paid() {
    OrderTest::with(())
        .given(vec![placed(), paid(), refunded(1_000), refunded(1_500)])
        .when(refund(501))
        .then_expect_error(OrderError::RefundExceedsPaid);
    OrderTest::with(())
        .given(vec![placed(), paid(), refunded(1_000), refunded(1_500)])
        .when(refund(500))
        .then_expect_events(vec![refunded(500)]);
}

#[test]
fn a_fully_refunded_order_refuses_any_further_refund() {
    OrderTest::with(())
        .given(vec![placed(), paid(), refunded(BASKET_TOTAL)])
        .when(refund(1))
        .then_expect_error(OrderError::RefundExceedsPaid);
}

#[test]
fn refunds_accumulate_and_leave_the_status_unchanged() {
    let order = replay(vec![
        placed(),
        paid(),
        shipped(),
        refunded(1_000),
        refunded(700),
    ]);
    assert_eq!(order.refunded_amount, 1_700);
    assert_eq!(order.remaining_paid(), BASKET_TOTAL - 1_700);
    assert_eq!(order.status, OrderStatus::Shipped);
}

#[test]
fn an_unpaid_order_cannot_be_refunded() {
    OrderTest::with(())
        .given(vec![placed()])
        .when(refund(1))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Placed));
    OrderTest::with(())
        .given_no_previous_events()
        .when(refund(1))
        .then_expect_error(OrderError::InvalidState(OrderStatus::Unplaced));
}

// ---------------------------------------------------------------------------------------------
// Rule codes, stored form
// ---------------------------------------------------------------------------------------------

#[test]
fn every_order_error_reports_its_stable_rule_code() {
    for status in [
        OrderStatus::Unplaced,
        OrderStatus::Placed,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ] {
        assert_eq!(OrderError::InvalidState(status).code(), "invalid_state");
    }
    assert_eq!(OrderError::SellerIsBuyer.code(), "seller_is_buyer");
    assert_eq!(OrderError::SellerInactive.code(), "seller_inactive");
    assert_eq!(OrderError::RefundExceedsPaid.code(), "refund_exceeds_paid");
    assert_eq!(
        OrderError::InvalidInput(InvalidInput::new("lines", "x")).code(),
        "invalid_input"
    );
}

#[test]
fn events_are_stored_under_their_names_at_version_one() {
    let events = vec![
        (placed(), "OrderPlaced"),
        (paid(), "OrderPaid"),
        (shipped(), "OrderShipped"),
        (delivered(), "OrderDelivered"),
        (cancelled(CancelledBy::System, 1), "OrderCancelled"),
        (refunded(1), "OrderRefunded"),
    ];
    for (event, name) in events {
        assert_eq!(event.event_type(), name);
        assert_eq!(event.event_version(), "1");
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["type"], name);
        let back: OrderEvent = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, event);
    }
}

#[test]
fn stored_events_with_unknown_fields_are_refused() {
    let mut json = serde_json::to_value(refunded(5)).expect("serializes");
    json["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<OrderEvent>(json).is_err());
    let mut json = serde_json::to_value(placed()).expect("serializes");
    json["lines"][0]["discount"] = serde_json::json!(1);
    assert!(serde_json::from_value::<OrderEvent>(json).is_err());
}

#[test]
fn cancellation_parties_are_stored_in_snake_case() {
    let json = serde_json::to_value(cancelled(CancelledBy::System, 0)).expect("serializes");
    assert_eq!(json["by"], "system");
}

#[test]
fn an_order_snapshot_round_trips_through_json() {
    let order = replay(vec![
        placed_with(true),
        paid_with(Some(escrow_id())),
        shipped(),
        refunded(10),
    ]);
    let json = serde_json::to_string(&order).expect("serializes");
    let back: Order = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, order);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn any_line() -> impl Strategy<Value = OrderLine> {
    (1_i64..=10_000, 0_i64..=1_000_000).prop_map(|(q, p)| line("SKU", q, p))
}

proptest! {
    #[test]
    fn the_total_is_the_sum_of_quantity_times_unit_price(
        lines in prop::collection::vec(any_line(), 1..=100),
    ) {
        let expected: i64 = lines.iter().map(|l| l.quantity * l.unit_price).sum();
        let result = validate_lines(&lines);
        if expected >= 1 {
            prop_assert_eq!(result, Ok(expected));
        } else {
            prop_assert_eq!(result.map_err(|e| e.field), Err("lines"));
        }
    }

    #[test]
    fn validation_never_panics_on_any_numbers(
        quantity in any::<i64>(),
        unit_price in any::<i64>(),
        count in 1_usize..=100,
    ) {
        let lines = vec![line("A", quantity, unit_price); count];
        if let Ok(total) = validate_lines(&lines) {
            prop_assert!((1..=MAX_AMOUNT).contains(&total));
        }
    }

    #[test]
    fn random_refunds_never_exceed_what_was_paid(
        refunds in prop::collection::vec(1_i64..=2_000, 0..20),
        then_cancel in any::<bool>(),
    ) {
        let mut order = replay(vec![placed(), paid()]);
        let mut accepted = 0_i64;
        for minor in refunds {
            let decided = order.decide(refund(minor));
            if accepted + minor <= BASKET_TOTAL {
                prop_assert_eq!(&decided, &Ok(vec![refunded(minor)]));
                accepted += minor;
            } else {
                prop_assert_eq!(&decided, &Err(OrderError::RefundExceedsPaid));
            }
            for event in decided.unwrap_or_default() {
                order.apply(event);
            }
            prop_assert_eq!(order.refunded_amount, accepted);
            prop_assert_eq!(order.remaining_paid(), BASKET_TOTAL - accepted);
        }
        if then_cancel {
            let events = order.decide(cancel(CancelledBy::System)).expect("a paid order is cancellable");
            prop_assert_eq!(&events, &vec![cancelled(CancelledBy::System, BASKET_TOTAL - accepted)]);
            for event in events {
                order.apply(event);
            }
            prop_assert_eq!(order.refunded_amount, BASKET_TOTAL);
            prop_assert_eq!(order.remaining_paid(), 0);
        }
    }
}
