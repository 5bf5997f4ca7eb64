//! Given/when/then tests for every Escrow rule in DOMAIN.md ("Common rules", "Escrow",
//! "Processes": release at `release_after`, refund at `expires_at`).

// The package is `chronicle-domain`; dependants rename it to `domain` in the workspace.
use chronicle_domain as domain;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};
use domain::escrow::{
    Dispute, Escrow, EscrowCommand, EscrowError, EscrowEvent, EscrowStatus, Party,
};
use domain::{Amount, Currency, RuleCode};
use proptest::prelude::*;
use uuid::Uuid;

type EscrowTest = TestFramework<Escrow>;

const AMOUNT: i64 = 50_000;

fn escrow_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0e01)
}

fn buyer_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a1)
}

fn seller_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a2)
}

fn buyer_wallet() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0b01)
}

fn order_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0d01)
}

fn eur() -> Currency {
    Currency::parse("currency", "EUR").expect("an ISO 4217 currency")
}

fn amount(minor: i64) -> Amount {
    Amount::parse("amount", minor).expect("an amount in range")
}

/// When the escrow is opened.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("2026-01-01T00:00:00Z")
}

fn release_after() -> DateTime<Utc> {
    now() + Duration::days(7)
}

fn expires_at() -> DateTime<Utc> {
    now() + Duration::days(30)
}

fn open_with(
    release_after: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    fund: bool,
) -> EscrowCommand {
    EscrowCommand::Open {
        escrow_id: escrow_id(),
        buyer: buyer_id(),
        buyer_wallet: buyer_wallet(),
        seller: seller_id(),
        currency: eur(),
        amount: amount(AMOUNT),
        terms: "one used bicycle".to_owned(),
        release_after,
        expires_at,
        order_id: None,
        seller_active: true,
        fund,
        now: now(),
    }
}

/// An open command with the given seller and seller activity.
fn open_for(seller: Uuid, seller_active: bool) -> EscrowCommand {
    EscrowCommand::Open {
        escrow_id: escrow_id(),
        buyer: buyer_id(),
        buyer_wallet: buyer_wallet(),
        seller,
        currency: eur(),
        amount: amount(AMOUNT),
        terms: "one used bicycle".to_owned(),
        release_after: Some(release_after()),
        expires_at: expires_at(),
        order_id: None,
        seller_active,
        fund: false,
        now: now(),
    }
}

fn open() -> EscrowCommand {
    open_with(Some(release_after()), expires_at(), false)
}

fn opened_with(release_after: Option<DateTime<Utc>>, expires_at: DateTime<Utc>) -> EscrowEvent {
    EscrowEvent::EscrowOpened {
        escrow_id: escrow_id(),
        buyer: buyer_id(),
        buyer_wallet: buyer_wallet(),
        seller: seller_id(),
        currency: eur(),
        amount: AMOUNT,
        terms: "one used bicycle".to_owned(),
        release_after,
        expires_at,
        order_id: None,
    }
}

fn opened() -> EscrowEvent {
    opened_with(Some(release_after()), expires_at())
}

fn funded() -> EscrowEvent {
    EscrowEvent::EscrowFunded { amount: AMOUNT }
}

fn release(by: Party, at: DateTime<Utc>) -> EscrowCommand {
    EscrowCommand::Release { by, now: at }
}

fn released(by: Party) -> EscrowEvent {
    EscrowEvent::EscrowReleased { amount: AMOUNT, by }
}

fn refund(by: Party, at: DateTime<Utc>) -> EscrowCommand {
    EscrowCommand::Refund { by, now: at }
}

fn refunded(by: Party) -> EscrowEvent {
    EscrowEvent::EscrowRefunded { amount: AMOUNT, by }
}

fn raise(by: Party) -> EscrowCommand {
    EscrowCommand::RaiseDispute {
        by,
        reason: "not as described".to_owned(),
    }
}

fn dispute_raised(by: Party) -> EscrowEvent {
    EscrowEvent::DisputeRaised {
        by,
        reason: "not as described".to_owned(),
    }
}

fn resolve(to_seller: i64, to_buyer: i64) -> EscrowCommand {
    EscrowCommand::ResolveDispute {
        to_seller,
        to_buyer,
    }
}

fn resolved(to_seller: i64, to_buyer: i64) -> EscrowEvent {
    EscrowEvent::DisputeResolved {
        to_seller,
        to_buyer,
    }
}

fn replay(events: Vec<EscrowEvent>) -> Escrow {
    let mut escrow = Escrow::default();
    for event in events {
        escrow.apply(event);
    }
    escrow
}

/// Every command, each at a moment when every deadline has passed.
fn every_command() -> Vec<EscrowCommand> {
    let late = expires_at() + Duration::days(1);
    let mut commands = vec![
        open(),
        open_with(None, expires_at(), true),
        EscrowCommand::Fund,
        raise(Party::Buyer),
        raise(Party::Seller),
        resolve(AMOUNT, 0),
        resolve(0, AMOUNT),
    ];
    for by in [Party::Buyer, Party::Seller, Party::System] {
        commands.push(release(by, late));
        commands.push(refund(by, late));
    }
    commands
}

// ---------------------------------------------------------------------------------------------
// OpenEscrow
// ---------------------------------------------------------------------------------------------

#[test]
fn a_buyer_opens_an_escrow_with_deadlines() {
    EscrowTest::with(())
        .given_no_previous_events()
        .when(open())
        .then_expect_events(vec![opened()]);
}

#[test]
fn an_escrow_without_a_release_date_is_opened() {
    EscrowTest::with(())
        .given_no_previous_events()
        .when(open_with(None, expires_at(), false))
        .then_expect_events(vec![opened_with(None, expires_at())]);
}

#[test]
fn an_escrow_for_an_order_is_opened_and_funded_in_one_command() {
    let command = EscrowCommand::Open {
        escrow_id: escrow_id(),
        buyer: buyer_id(),
        buyer_wallet: buyer_wallet(),
        seller: seller_id(),
        currency: eur(),
        amount: amount(AMOUNT),
        terms: "order".to_owned(),
        release_after: None,
        expires_at: expires_at(),
        order_id: Some(order_id()),
        seller_active: true,
        fund: true,
        now: now(),
    };
    EscrowTest::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_events(vec![
            EscrowEvent::EscrowOpened {
                escrow_id: escrow_id(),
                buyer: buyer_id(),
                buyer_wallet: buyer_wallet(),
                seller: seller_id(),
                currency: eur(),
                amount: AMOUNT,
                terms: "order".to_owned(),
                release_after: None,
                expires_at: expires_at(),
                order_id: Some(order_id()),
            },
            funded(),
        ]);
}

#[test]
fn an_opened_escrow_records_its_terms_and_waits_for_money() {
    let escrow = replay(vec![opened()]);
    assert_eq!(escrow.id, escrow_id());
    assert_eq!(escrow.buyer, buyer_id());
    assert_eq!(escrow.buyer_wallet, buyer_wallet());
    assert_eq!(escrow.seller, seller_id());
    assert_eq!(escrow.currency, Some(eur()));
    assert_eq!(escrow.amount, AMOUNT);
    assert_eq!(escrow.terms, "one used bicycle");
    assert_eq!(escrow.release_after, Some(release_after()));
    assert_eq!(escrow.expires_at, Some(expires_at()));
    assert_eq!(escrow.order_id, None);
    assert_eq!(escrow.status, EscrowStatus::Opened);
    assert_eq!(escrow.dispute, None);
    assert!(!escrow.dispute_open());
    assert_eq!(escrow.resolution, None);
}

#[test]
fn a_buyer_cannot_open_an_escrow_with_themselves() {
    EscrowTest::with(())
        .given_no_previous_events()
        .when(open_for(buyer_id(), true))
        .then_expect_error(EscrowError::SellerIsBuyer);
}

#[test]
fn an_escrow_with_an_inactive_seller_is_refused() {
    EscrowTest::with(())
        .given_no_previous_events()
        .when(open_for(seller_id(), false))
        .then_expect_error(EscrowError::SellerInactive);
}

#[test]
fn an_escrow_expiring_now_or_in_the_past_is_refused() {
    for expiry in [
        now(),
        now() - Duration::seconds(1),
        now() - Duration::days(400),
    ] {
        EscrowTest::with(())
            .given_no_previous_events()
            .when(open_with(None, expiry, false))
            .then_expect_error(EscrowError::ExpiryInPast);
    }
}

#[test]
fn an_escrow_expiring_one_second_from_now_is_opened() {
    let expiry = now() + Duration::seconds(1);
    EscrowTest::with(())
        .given_no_previous_events()
        .when(open_with(None, expiry, false))
        .then_expect_events(vec![opened_with(None, expiry)]);
}

#[test]
fn a_release_date_now_or_in_the_past_is_refused() {
    for release in [now(), now() - Duration::hours(1)] {
        EscrowTest::with(())
            .given_no_previous_events()
            .when(open_with(Some(release), expires_at(), false))
            .then_expect_error(EscrowError::InvalidDeadline);
    }
}

#[test]
fn a_release_date_after_the_expiry_is_refused() {
    EscrowTest::with(())
        .given_no_previous_events()
        .when(open_with(
            Some(expires_at() + Duration::seconds(1)),
            expires_at(),
            false,
        ))
        .then_expect_error(EscrowError::InvalidDeadline);
}

#[test]
fn a_release_date_equal_to_the_expiry_is_accepted() {
    EscrowTest::with(())
        .given_no_previous_events()
        .when(open_with(Some(expires_at()), expires_at(), false))
        .then_expect_events(vec![opened_with(Some(expires_at()), expires_at())]);
}

#[test]
fn an_escrow_cannot_be_opened_twice() {
    EscrowTest::with(())
        .given(vec![opened()])
        .when(open())
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Opened));
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(open_with(None, expires_at(), true))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Funded));
}

// ---------------------------------------------------------------------------------------------
// FundEscrow
// ---------------------------------------------------------------------------------------------

#[test]
fn an_opened_escrow_is_funded_with_exactly_its_amount() {
    EscrowTest::with(())
        .given(vec![opened()])
        .when(EscrowCommand::Fund)
        .then_expect_events(vec![funded()]);
}

#[test]
fn a_funded_escrow_holds_the_money() {
    assert_eq!(
        replay(vec![opened(), funded()]).status,
        EscrowStatus::Funded
    );
}

#[test]
fn an_unopened_escrow_cannot_be_funded() {
    EscrowTest::with(())
        .given_no_previous_events()
        .when(EscrowCommand::Fund)
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Unopened));
}

#[test]
fn an_escrow_cannot_be_funded_twice() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(EscrowCommand::Fund)
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Funded));
}

// ---------------------------------------------------------------------------------------------
// ReleaseEscrow
// ---------------------------------------------------------------------------------------------

#[test]
fn the_buyer_releases_a_funded_escrow_to_the_seller_at_any_time() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(release(Party::Buyer, now()))
        .then_expect_events(vec![released(Party::Buyer)]);
}

#[test]
fn the_process_releases_a_funded_escrow_at_its_release_date() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(release(Party::System, release_after()))
        .then_expect_events(vec![released(Party::System)]);
}

#[test]
fn the_process_releases_a_funded_escrow_after_its_release_date() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(release(Party::System, release_after() + Duration::days(2)))
        .then_expect_events(vec![released(Party::System)]);
}

#[test]
fn the_process_does_not_release_before_the_release_date() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(release(
            Party::System,
            release_after() - Duration::seconds(1),
        ))
        .then_expect_error(EscrowError::NotDue);
}

#[test]
fn the_process_never_releases_an_escrow_without_a_release_date() {
    EscrowTest::with(())
        .given(vec![opened_with(None, expires_at()), funded()])
        .when(release(Party::System, expires_at() + Duration::days(100)))
        .then_expect_error(EscrowError::NotDue);
}

#[test]
fn the_seller_cannot_release_money_to_themselves() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(release(Party::Seller, release_after()))
        .then_expect_error(EscrowError::PartyNotAllowed(Party::Seller));
}

#[test]
fn an_unfunded_escrow_cannot_be_released() {
    EscrowTest::with(())
        .given(vec![opened()])
        .when(release(Party::Buyer, now()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Opened));
    EscrowTest::with(())
        .given_no_previous_events()
        .when(release(Party::Buyer, now()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Unopened));
}

#[test]
fn an_open_dispute_freezes_release() {
    for by in [Party::Buyer, Party::System] {
        EscrowTest::with(())
            .given(vec![opened(), funded(), dispute_raised(Party::Seller)])
            .when(release(by, release_after()))
            .then_expect_error(EscrowError::DisputeOpen);
    }
}

#[test]
fn a_released_escrow_is_released() {
    assert_eq!(
        replay(vec![opened(), funded(), released(Party::Buyer)]).status,
        EscrowStatus::Released
    );
}

#[test]
fn an_escrow_is_released_at_most_once() {
    EscrowTest::with(())
        .given(vec![opened(), funded(), released(Party::Buyer)])
        .when(release(Party::System, release_after()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Released));
    EscrowTest::with(())
        .given(vec![opened(), funded(), released(Party::Buyer)])
        .when(release(Party::Buyer, now()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Released));
}

#[test]
fn a_released_escrow_cannot_be_refunded() {
    EscrowTest::with(())
        .given(vec![opened(), funded(), released(Party::System)])
        .when(refund(Party::Seller, now()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Released));
    EscrowTest::with(())
        .given(vec![opened(), funded(), released(Party::System)])
        .when(refund(Party::System, expires_at()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Released));
}

// ---------------------------------------------------------------------------------------------
// RefundEscrow
// ---------------------------------------------------------------------------------------------

#[test]
fn the_seller_refunds_a_funded_escrow_to_the_buyer_at_any_time() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(refund(Party::Seller, now()))
        .then_expect_events(vec![refunded(Party::Seller)]);
}

#[test]
fn the_process_refunds_a_funded_escrow_at_its_expiry() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(refund(Party::System, expires_at()))
        .then_expect_events(vec![refunded(Party::System)]);
}

#[test]
fn the_process_refunds_a_funded_escrow_after_its_expiry() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(refund(Party::System, expires_at() + Duration::days(3)))
        .then_expect_events(vec![refunded(Party::System)]);
}

#[test]
fn the_process_does_not_refund_before_the_expiry() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(refund(Party::System, expires_at() - Duration::seconds(1)))
        .then_expect_error(EscrowError::NotDue);
}

#[test]
fn the_buyer_cannot_take_the_money_back_alone() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(refund(Party::Buyer, expires_at()))
        .then_expect_error(EscrowError::PartyNotAllowed(Party::Buyer));
}

#[test]
fn an_unfunded_escrow_cannot_be_refunded() {
    EscrowTest::with(())
        .given(vec![opened()])
        .when(refund(Party::System, expires_at()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Opened));
}

#[test]
fn an_open_dispute_freezes_refund() {
    for by in [Party::Seller, Party::System] {
        EscrowTest::with(())
            .given(vec![opened(), funded(), dispute_raised(Party::Buyer)])
            .when(refund(by, expires_at()))
            .then_expect_error(EscrowError::DisputeOpen);
    }
}

#[test]
fn a_refunded_escrow_is_refunded() {
    assert_eq!(
        replay(vec![opened(), funded(), refunded(Party::Seller)]).status,
        EscrowStatus::Refunded
    );
}

#[test]
fn an_escrow_is_refunded_at_most_once() {
    EscrowTest::with(())
        .given(vec![opened(), funded(), refunded(Party::Seller)])
        .when(refund(Party::System, expires_at()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Refunded));
}

#[test]
fn a_refunded_escrow_cannot_be_released() {
    EscrowTest::with(())
        .given(vec![opened(), funded(), refunded(Party::System)])
        .when(release(Party::Buyer, now()))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Refunded));
}

// ---------------------------------------------------------------------------------------------
// RaiseDispute
// ---------------------------------------------------------------------------------------------

#[test]
fn the_buyer_disputes_a_funded_escrow() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(raise(Party::Buyer))
        .then_expect_events(vec![dispute_raised(Party::Buyer)]);
}

#[test]
fn the_seller_disputes_a_funded_escrow() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(raise(Party::Seller))
        .then_expect_events(vec![dispute_raised(Party::Seller)]);
}

#[test]
fn a_raised_dispute_is_open_and_recorded() {
    let escrow = replay(vec![opened(), funded(), dispute_raised(Party::Buyer)]);
    assert!(escrow.dispute_open());
    assert_eq!(
        escrow.dispute,
        Some(Dispute {
            raised_by: Party::Buyer,
            reason: "not as described".to_owned(),
        })
    );
    assert_eq!(escrow.status, EscrowStatus::Funded);
}

#[test]
fn the_process_cannot_raise_a_dispute() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(raise(Party::System))
        .then_expect_error(EscrowError::PartyNotAllowed(Party::System));
}

#[test]
fn an_unfunded_escrow_cannot_be_disputed() {
    EscrowTest::with(())
        .given(vec![opened()])
        .when(raise(Party::Buyer))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Opened));
}

#[test]
fn a_second_dispute_is_refused_while_one_is_open() {
    for by in [Party::Buyer, Party::Seller] {
        EscrowTest::with(())
            .given(vec![opened(), funded(), dispute_raised(Party::Buyer)])
            .when(raise(by))
            .then_expect_error(EscrowError::DisputeOpen);
    }
}

// ---------------------------------------------------------------------------------------------
// ResolveDispute
// ---------------------------------------------------------------------------------------------

#[test]
fn an_arbiter_splits_a_disputed_escrow() {
    EscrowTest::with(())
        .given(vec![opened(), funded(), dispute_raised(Party::Buyer)])
        .when(resolve(30_000, 20_000))
        .then_expect_events(vec![resolved(30_000, 20_000)]);
}

#[test]
fn an_arbiter_may_give_everything_to_one_party() {
    EscrowTest::with(())
        .given(vec![opened(), funded(), dispute_raised(Party::Buyer)])
        .when(resolve(AMOUNT, 0))
        .then_expect_events(vec![resolved(AMOUNT, 0)]);
    EscrowTest::with(())
        .given(vec![opened(), funded(), dispute_raised(Party::Seller)])
        .when(resolve(0, AMOUNT))
        .then_expect_events(vec![resolved(0, AMOUNT)]);
}

#[test]
fn a_resolved_escrow_records_the_split_and_closes_the_dispute() {
    let escrow = replay(vec![
        opened(),
        funded(),
        dispute_raised(Party::Buyer),
        resolved(30_000, 20_000),
    ]);
    assert_eq!(escrow.status, EscrowStatus::Resolved);
    assert_eq!(escrow.resolution, Some((30_000, 20_000)));
    assert!(!escrow.dispute_open());
    assert!(escrow.dispute.is_some(), "the dispute stays on record");
}

#[test]
fn a_split_that_does_not_add_up_to_the_amount_is_refused() {
    for (to_seller, to_buyer) in [(30_000, 19_999), (30_000, 20_001), (0, 0)] {
        EscrowTest::with(())
            .given(vec![opened(), funded(), dispute_raised(Party::Buyer)])
            .when(resolve(to_seller, to_buyer))
            .then_expect_error(EscrowError::SplitMismatch);
    }
}

#[test]
fn a_split_with_a_negative_share_is_refused() {
    for (to_seller, to_buyer) in [(-1, AMOUNT + 1), (AMOUNT + 1, -1)] {
        EscrowTest::with(())
            .given(vec![opened(), funded(), dispute_raised(Party::Buyer)])
            .when(resolve(to_seller, to_buyer))
            .then_expect_error(EscrowError::SplitMismatch);
    }
}

#[test]
fn a_split_that_would_overflow_is_refused_without_panicking() {
    EscrowTest::with(())
        .given(vec![opened(), funded(), dispute_raised(Party::Buyer)])
        .when(resolve(i64::MAX, i64::MAX))
        .then_expect_error(EscrowError::SplitMismatch);
}

#[test]
fn an_escrow_without_a_dispute_cannot_be_resolved() {
    EscrowTest::with(())
        .given(vec![opened(), funded()])
        .when(resolve(AMOUNT, 0))
        .then_expect_error(EscrowError::NoDisputeOpen);
    EscrowTest::with(())
        .given(vec![opened()])
        .when(resolve(AMOUNT, 0))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Opened));
}

#[test]
fn a_dispute_is_resolved_at_most_once() {
    EscrowTest::with(())
        .given(vec![
            opened(),
            funded(),
            dispute_raised(Party::Buyer),
            resolved(30_000, 20_000),
        ])
        .when(resolve(30_000, 20_000))
        .then_expect_error(EscrowError::InvalidState(EscrowStatus::Resolved));
}

// ---------------------------------------------------------------------------------------------
// Terminal states
// ---------------------------------------------------------------------------------------------

#[test]
fn released_refunded_and_resolved_escrows_refuse_every_command() {
    let terminal = [
        (
            vec![opened(), funded(), released(Party::Buyer)],
            EscrowStatus::Released,
        ),
        (
            vec![opened(), funded(), refunded(Party::System)],
            EscrowStatus::Refunded,
        ),
        (
            vec![
                opened(),
                funded(),
                dispute_raised(Party::Seller),
                resolved(1, AMOUNT - 1),
            ],
            EscrowStatus::Resolved,
        ),
    ];
    for (history, status) in terminal {
        assert!(status.is_terminal());
        for command in every_command() {
            EscrowTest::with(())
                .given(history.clone())
                .when(command)
                .then_expect_error(EscrowError::InvalidState(status));
        }
    }
}

#[test]
fn only_released_refunded_and_resolved_are_terminal() {
    assert!(!EscrowStatus::Unopened.is_terminal());
    assert!(!EscrowStatus::Opened.is_terminal());
    assert!(!EscrowStatus::Funded.is_terminal());
}

// ---------------------------------------------------------------------------------------------
// Rule codes, stored form
// ---------------------------------------------------------------------------------------------

#[test]
fn every_escrow_error_reports_its_stable_rule_code() {
    for status in [
        EscrowStatus::Unopened,
        EscrowStatus::Opened,
        EscrowStatus::Funded,
        EscrowStatus::Released,
        EscrowStatus::Refunded,
        EscrowStatus::Resolved,
    ] {
        assert_eq!(EscrowError::InvalidState(status).code(), "invalid_state");
    }
    assert_eq!(EscrowError::NoDisputeOpen.code(), "invalid_state");
    assert_eq!(EscrowError::DisputeOpen.code(), "dispute_open");
    assert_eq!(
        EscrowError::PartyNotAllowed(Party::Seller).code(),
        "party_not_allowed"
    );
    assert_eq!(EscrowError::SellerIsBuyer.code(), "seller_is_buyer");
    assert_eq!(EscrowError::SellerInactive.code(), "seller_inactive");
    assert_eq!(EscrowError::ExpiryInPast.code(), "expires_in_past");
    assert_eq!(EscrowError::InvalidDeadline.code(), "invalid_deadline");
    assert_eq!(EscrowError::NotDue.code(), "not_due");
    assert_eq!(EscrowError::SplitMismatch.code(), "split_mismatch");
}

#[test]
fn events_are_stored_under_their_names_at_version_one() {
    let events = vec![
        (opened(), "EscrowOpened"),
        (funded(), "EscrowFunded"),
        (released(Party::System), "EscrowReleased"),
        (refunded(Party::Seller), "EscrowRefunded"),
        (dispute_raised(Party::Buyer), "DisputeRaised"),
        (resolved(1, 2), "DisputeResolved"),
    ];
    for (event, name) in events {
        assert_eq!(event.event_type(), name);
        assert_eq!(event.event_version(), "1");
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["type"], name);
        let back: EscrowEvent = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, event);
    }
}

#[test]
fn stored_events_with_unknown_fields_are_refused() {
    let mut json = serde_json::to_value(funded()).expect("serializes");
    json["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<EscrowEvent>(json).is_err());
}

#[test]
fn parties_are_stored_in_snake_case() {
    let json = serde_json::to_value(released(Party::System)).expect("serializes");
    assert_eq!(json["by"], "system");
}

#[test]
fn an_escrow_snapshot_round_trips_through_json() {
    let escrow = replay(vec![
        opened(),
        funded(),
        dispute_raised(Party::Buyer),
        resolved(30_000, 20_000),
    ]);
    let json = serde_json::to_string(&escrow).expect("serializes");
    let back: Escrow = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, escrow);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn any_party() -> impl Strategy<Value = Party> {
    prop::sample::select(vec![Party::Buyer, Party::Seller, Party::System])
}

fn any_command() -> impl Strategy<Value = EscrowCommand> {
    let at = (-2_i64..=40).prop_map(|days| now() + Duration::days(days));
    prop_oneof![
        Just(EscrowCommand::Fund),
        (any_party(), at.clone()).prop_map(|(by, now)| EscrowCommand::Release { by, now }),
        (any_party(), at).prop_map(|(by, now)| EscrowCommand::Refund { by, now }),
        any_party().prop_map(raise),
        (0_i64..=AMOUNT).prop_map(|s| resolve(s, AMOUNT - s)),
        (any::<i64>(), any::<i64>()).prop_map(|(s, b)| resolve(s, b)),
    ]
}

proptest! {
    #[test]
    fn a_split_is_accepted_exactly_when_it_adds_up_to_the_amount(
        to_seller in any::<i64>(),
        to_buyer in any::<i64>(),
    ) {
        let escrow = replay(vec![opened(), funded(), dispute_raised(Party::Buyer)]);
        let decided = escrow.decide(resolve(to_seller, to_buyer));
        let adds_up = to_seller >= 0
            && to_buyer >= 0
            && i128::from(to_seller) + i128::from(to_buyer) == i128::from(AMOUNT);
        if adds_up {
            prop_assert_eq!(decided, Ok(vec![resolved(to_seller, to_buyer)]));
        } else {
            prop_assert_eq!(decided, Err(EscrowError::SplitMismatch));
        }
    }

    #[test]
    fn held_money_leaves_an_escrow_once_and_in_full(
        commands in prop::collection::vec(any_command(), 0..30),
    ) {
        let mut escrow = replay(vec![opened()]);
        let mut funded_total = 0_i64;
        let mut paid_out = 0_i64;
        let mut endings = 0;
        for command in commands {
            let Ok(events) = escrow.decide(command) else { continue };
            for event in events {
                match &event {
                    EscrowEvent::EscrowFunded { amount } => funded_total += amount,
                    EscrowEvent::EscrowReleased { amount, .. }
                    | EscrowEvent::EscrowRefunded { amount, .. } => {
                        paid_out += amount;
                        endings += 1;
                    }
                    EscrowEvent::DisputeResolved { to_seller, to_buyer } => {
                        paid_out += to_seller + to_buyer;
                        endings += 1;
                    }
                    EscrowEvent::DisputeRaised { by, .. } => {
                        prop_assert_ne!(*by, Party::System);
                    }
                    other => prop_assert!(false, "unexpected event {:?}", other),
                }
                escrow.apply(event);
            }
            prop_assert!(funded_total <= AMOUNT);
            prop_assert!(endings <= 1);
            if endings == 1 {
                prop_assert_eq!(paid_out, funded_total);
                prop_assert!(escrow.status.is_terminal());
            } else {
                prop_assert_eq!(paid_out, 0);
            }
        }
    }
}
