//! Given/when/then tests for every Pot rule in DOMAIN.md ("Common rules", "Pot", "Processes").

// The package is `chronicle-domain`; dependants rename it to `domain` in the workspace.
use chronicle_domain as domain;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};
use domain::pot::{
    Contribution, Pot, PotCommand, PotError, PotEvent, PotStatus, PublicContribution, Visibility,
};
use domain::{Amount, Currency, RuleCode};
use proptest::prelude::*;
use std::collections::BTreeSet;
use uuid::Uuid;

type PotTest = TestFramework<Pot>;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

fn pot_id() -> Uuid {
    id(0x0f01)
}

fn owner() -> Uuid {
    id(0x00a1)
}

fn beneficiary() -> Uuid {
    id(0x00b1)
}

fn friend() -> Uuid {
    id(0x00c1)
}

fn stranger() -> Uuid {
    id(0x00d1)
}

fn wallet_of(account: Uuid) -> Uuid {
    id(0x0b00 | (account.as_u128() & 0xff))
}

fn contribution_id(n: u128) -> Uuid {
    id(0x0c00 | n)
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

/// When the pot is created.
fn created_at() -> DateTime<Utc> {
    at("2030-03-01T12:00:00Z")
}

/// The pot's deadline.
fn closes_at() -> DateTime<Utc> {
    at("2030-03-31T00:00:00Z")
}

fn before_close() -> DateTime<Utc> {
    closes_at() - Duration::seconds(1)
}

fn eur() -> Currency {
    Currency::parse("currency", "EUR").expect("an ISO 4217 currency")
}

fn amount(minor: i64) -> Amount {
    Amount::parse("amount", minor).expect("an amount in range")
}

fn create(visibility: Visibility, closes_at: DateTime<Utc>, now: DateTime<Utc>) -> PotCommand {
    PotCommand::Create {
        pot_id: pot_id(),
        owner: owner(),
        beneficiary: beneficiary(),
        title: "Birthday gift for Ada".to_owned(),
        currency: eur(),
        target_amount: Some(amount(50_000)),
        closes_at,
        visibility,
        now,
    }
}

fn created_with(visibility: Visibility) -> PotEvent {
    PotEvent::PotCreated {
        pot_id: pot_id(),
        owner: owner(),
        beneficiary: beneficiary(),
        title: "Birthday gift for Ada".to_owned(),
        currency: eur(),
        target_amount: Some(50_000),
        closes_at: closes_at(),
        visibility,
    }
}

fn created() -> PotEvent {
    created_with(Visibility::Public)
}

fn created_private() -> PotEvent {
    created_with(Visibility::Private)
}

fn contribute_as(n: u128, contributor: Uuid, minor: i64, now: DateTime<Utc>) -> PotCommand {
    PotCommand::Contribute {
        contribution_id: contribution_id(n),
        contributor,
        wallet: wallet_of(contributor),
        amount: amount(minor),
        message: Some("Happy birthday!".to_owned()),
        anonymous: false,
        now,
    }
}

fn contribute(minor: i64) -> PotCommand {
    contribute_as(1, friend(), minor, before_close())
}

fn received_from(n: u128, contributor: Uuid, minor: i64, anonymous: bool) -> PotEvent {
    PotEvent::ContributionReceived {
        contribution_id: contribution_id(n),
        contributor,
        wallet: wallet_of(contributor),
        amount: minor,
        message: Some("Happy birthday!".to_owned()),
        anonymous,
    }
}

fn received(n: u128, minor: i64) -> PotEvent {
    received_from(n, friend(), minor, false)
}

fn invited(account: Uuid) -> PotEvent {
    PotEvent::PotInvitationSent { account }
}

fn closed() -> PotEvent {
    PotEvent::PotClosed { by_system: false }
}

fn paid_out(minor: i64) -> PotEvent {
    PotEvent::PotPaidOut {
        amount: minor,
        wallet: wallet_of(beneficiary()),
    }
}

fn cancelled() -> PotEvent {
    PotEvent::PotCancelled {
        reason: "changed our minds".to_owned(),
    }
}

fn refunded(n: u128, contributor: Uuid, minor: i64) -> PotEvent {
    PotEvent::ContributionRefunded {
        contribution_id: contribution_id(n),
        wallet: wallet_of(contributor),
        amount: minor,
    }
}

fn close(by_system: bool, now: DateTime<Utc>) -> PotCommand {
    PotCommand::Close { by_system, now }
}

fn pay_out(minor: bool, kyc: bool) -> PotCommand {
    PotCommand::PayOut {
        beneficiary_wallet: wallet_of(beneficiary()),
        beneficiary_is_minor: minor,
        beneficiary_kyc_approved: kyc,
    }
}

fn cancel(by_admin: bool) -> PotCommand {
    PotCommand::Cancel {
        reason: "changed our minds".to_owned(),
        by_admin,
    }
}

fn replay(events: Vec<PotEvent>) -> Pot {
    let mut pot = Pot::default();
    for event in events {
        pot.apply(event);
    }
    pot
}

// ---------------------------------------------------------------------------------------------
// CreatePot
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pot_is_created_with_its_terms() {
    PotTest::with(())
        .given_no_previous_events()
        .when(create(Visibility::Public, closes_at(), created_at()))
        .then_expect_events(vec![created()]);
}

#[test]
fn a_private_pot_without_a_target_is_created() {
    PotTest::with(())
        .given_no_previous_events()
        .when(PotCommand::Create {
            pot_id: pot_id(),
            owner: owner(),
            beneficiary: beneficiary(),
            title: "Leaving gift".to_owned(),
            currency: eur(),
            target_amount: None,
            closes_at: closes_at(),
            visibility: Visibility::Private,
            now: created_at(),
        })
        .then_expect_events(vec![PotEvent::PotCreated {
            pot_id: pot_id(),
            owner: owner(),
            beneficiary: beneficiary(),
            title: "Leaving gift".to_owned(),
            currency: eur(),
            target_amount: None,
            closes_at: closes_at(),
            visibility: Visibility::Private,
        }]);
}

#[test]
fn a_created_pot_is_open_and_empty() {
    let pot = replay(vec![created()]);
    assert_eq!(pot.id, pot_id());
    assert_eq!(pot.owner, owner());
    assert_eq!(pot.beneficiary, beneficiary());
    assert_eq!(pot.title, "Birthday gift for Ada");
    assert_eq!(pot.currency, Some(eur()));
    assert_eq!(pot.target_amount, Some(50_000));
    assert_eq!(pot.closes_at, Some(closes_at()));
    assert_eq!(pot.visibility, Visibility::Public);
    assert_eq!(pot.status, PotStatus::Open);
    assert!(pot.invited.is_empty());
    assert!(pot.contributions.is_empty());
    assert_eq!(pot.raised, 0);
    assert_eq!(pot.paid_out, 0);
    assert_eq!(pot.held(), 0);
}

#[test]
fn a_pot_closing_in_the_past_is_refused() {
    PotTest::with(())
        .given_no_previous_events()
        .when(create(
            Visibility::Public,
            created_at() - Duration::days(1),
            created_at(),
        ))
        .then_expect_error(PotError::ClosesInPast);
}

#[test]
fn a_pot_closing_right_now_is_refused() {
    PotTest::with(())
        .given_no_previous_events()
        .when(create(Visibility::Public, created_at(), created_at()))
        .then_expect_error(PotError::ClosesInPast);
}

#[test]
fn a_pot_closing_one_second_from_now_is_accepted() {
    PotTest::with(())
        .given_no_previous_events()
        .when(create(Visibility::Public, closes_at(), before_close()))
        .then_expect_events(vec![created()]);
}

#[test]
fn a_pot_cannot_be_created_twice() {
    PotTest::with(())
        .given(vec![created()])
        .when(create(Visibility::Public, closes_at(), created_at()))
        .then_expect_error(PotError::InvalidState(PotStatus::Open));
}

#[test]
fn a_cancelled_pot_cannot_be_created_again() {
    PotTest::with(())
        .given(vec![created(), cancelled()])
        .when(create(Visibility::Public, closes_at(), created_at()))
        .then_expect_error(PotError::InvalidState(PotStatus::Cancelled));
}

// ---------------------------------------------------------------------------------------------
// Contribute
// ---------------------------------------------------------------------------------------------

#[test]
fn a_public_pot_accepts_a_contribution_from_any_account() {
    PotTest::with(())
        .given(vec![created()])
        .when(contribute_as(1, stranger(), 2_500, created_at()))
        .then_expect_events(vec![received_from(1, stranger(), 2_500, false)]);
}

#[test]
fn an_anonymous_contribution_is_recorded_with_its_contributor() {
    PotTest::with(())
        .given(vec![created()])
        .when(PotCommand::Contribute {
            contribution_id: contribution_id(1),
            contributor: friend(),
            wallet: wallet_of(friend()),
            amount: amount(700),
            message: None,
            anonymous: true,
            now: created_at(),
        })
        .then_expect_events(vec![PotEvent::ContributionReceived {
            contribution_id: contribution_id(1),
            contributor: friend(),
            wallet: wallet_of(friend()),
            amount: 700,
            message: None,
            anonymous: true,
        }]);
}

#[test]
fn contributions_add_up_in_the_order_received() {
    let pot = replay(vec![
        created(),
        received(1, 2_500),
        received_from(2, stranger(), 1_000, true),
    ]);
    assert_eq!(pot.raised, 3_500);
    assert_eq!(pot.held(), 3_500);
    assert_eq!(
        pot.contributions,
        vec![
            Contribution {
                contribution_id: contribution_id(1),
                contributor: friend(),
                wallet: wallet_of(friend()),
                amount: 2_500,
                anonymous: false,
                message: Some("Happy birthday!".to_owned()),
                refunded: false,
            },
            Contribution {
                contribution_id: contribution_id(2),
                contributor: stranger(),
                wallet: wallet_of(stranger()),
                amount: 1_000,
                anonymous: true,
                message: Some("Happy birthday!".to_owned()),
                refunded: false,
            },
        ]
    );
}

#[test]
fn a_contribution_one_second_before_closes_at_is_accepted() {
    PotTest::with(())
        .given(vec![created()])
        .when(contribute(2_500))
        .then_expect_events(vec![received(1, 2_500)]);
}

#[test]
fn a_contribution_at_closes_at_is_refused_even_before_the_process_closes_the_pot() {
    PotTest::with(())
        .given(vec![created()])
        .when(contribute_as(1, friend(), 2_500, closes_at()))
        .then_expect_error(PotError::PastClose);
}

#[test]
fn a_contribution_after_closes_at_is_refused() {
    PotTest::with(())
        .given(vec![created()])
        .when(contribute_as(
            1,
            friend(),
            2_500,
            closes_at() + Duration::hours(3),
        ))
        .then_expect_error(PotError::PastClose);
}

#[test]
fn a_closed_pot_refuses_contributions() {
    PotTest::with(())
        .given(vec![created(), closed()])
        .when(contribute(2_500))
        .then_expect_error(PotError::InvalidState(PotStatus::Closed));
}

#[test]
fn a_paid_out_pot_refuses_contributions() {
    PotTest::with(())
        .given(vec![created(), received(1, 100), closed(), paid_out(100)])
        .when(contribute(2_500))
        .then_expect_error(PotError::InvalidState(PotStatus::PaidOut));
}

#[test]
fn a_cancelled_pot_refuses_contributions() {
    PotTest::with(())
        .given(vec![created(), cancelled()])
        .when(contribute(2_500))
        .then_expect_error(PotError::InvalidState(PotStatus::Cancelled));
}

#[test]
fn an_uncreated_pot_refuses_contributions() {
    PotTest::with(())
        .given_no_previous_events()
        .when(contribute(2_500))
        .then_expect_error(PotError::InvalidState(PotStatus::Uncreated));
}

#[test]
fn a_private_pot_refuses_an_account_not_invited() {
    PotTest::with(())
        .given(vec![created_private(), invited(friend())])
        .when(contribute_as(1, stranger(), 2_500, created_at()))
        .then_expect_error(PotError::NotInvited);
}

#[test]
fn a_private_pot_accepts_an_invited_account() {
    PotTest::with(())
        .given(vec![created_private(), invited(friend())])
        .when(contribute(2_500))
        .then_expect_events(vec![received(1, 2_500)]);
}

#[test]
fn a_private_pot_accepts_its_owner_and_its_beneficiary_without_invitation() {
    PotTest::with(())
        .given(vec![created_private()])
        .when(contribute_as(1, owner(), 2_500, created_at()))
        .then_expect_events(vec![received_from(1, owner(), 2_500, false)]);
    PotTest::with(())
        .given(vec![created_private()])
        .when(contribute_as(2, beneficiary(), 300, created_at()))
        .then_expect_events(vec![received_from(2, beneficiary(), 300, false)]);
}

#[test]
fn a_private_pot_past_closes_at_reports_the_deadline_before_the_invitation() {
    PotTest::with(())
        .given(vec![created_private()])
        .when(contribute_as(1, stranger(), 2_500, closes_at()))
        .then_expect_error(PotError::PastClose);
}

#[test]
fn a_contribution_taking_the_pot_over_the_largest_payout_is_refused() {
    let max = domain::values::MAX_AMOUNT;
    let full: Vec<PotEvent> = std::iter::once(created())
        .chain((0..4).map(|n| received(n, max / 4)))
        .collect();
    let pot = replay(full.clone());
    assert_eq!(pot.raised, max, "a pot may hold exactly one maximal payout");
    PotTest::with(())
        .given(full)
        .when(contribute_as(5_000, friend(), 1, created_at()))
        .then_expect_error(PotError::RaisedLimit);
}

// ---------------------------------------------------------------------------------------------
// InviteToPot
// ---------------------------------------------------------------------------------------------

#[test]
fn an_open_private_pot_sends_an_invitation() {
    PotTest::with(())
        .given(vec![created_private()])
        .when(PotCommand::Invite { account: friend() })
        .then_expect_events(vec![invited(friend())]);
}

#[test]
fn an_invitation_is_remembered() {
    let pot = replay(vec![
        created_private(),
        invited(friend()),
        invited(stranger()),
    ]);
    assert_eq!(pot.invited, BTreeSet::from([friend(), stranger()]));
    assert!(pot.admits(friend()));
    assert!(pot.admits(stranger()));
}

#[test]
fn a_public_pot_takes_no_invitations() {
    PotTest::with(())
        .given(vec![created()])
        .when(PotCommand::Invite { account: friend() })
        .then_expect_error(PotError::NotPrivate);
    assert_eq!(PotError::NotPrivate.code(), "invalid_state");
}

#[test]
fn a_closed_private_pot_takes_no_invitations() {
    PotTest::with(())
        .given(vec![created_private(), closed()])
        .when(PotCommand::Invite { account: friend() })
        .then_expect_error(PotError::InvalidState(PotStatus::Closed));
}

#[test]
fn a_cancelled_private_pot_takes_no_invitations() {
    PotTest::with(())
        .given(vec![created_private(), cancelled()])
        .when(PotCommand::Invite { account: friend() })
        .then_expect_error(PotError::InvalidState(PotStatus::Cancelled));
}

#[test]
fn an_uncreated_pot_takes_no_invitations() {
    PotTest::with(())
        .given_no_previous_events()
        .when(PotCommand::Invite { account: friend() })
        .then_expect_error(PotError::InvalidState(PotStatus::Uncreated));
}

#[test]
fn an_account_cannot_be_invited_twice() {
    PotTest::with(())
        .given(vec![created_private(), invited(friend())])
        .when(PotCommand::Invite { account: friend() })
        .then_expect_error(PotError::AlreadyInvited);
}

#[test]
fn the_owner_and_the_beneficiary_count_as_already_invited() {
    for account in [owner(), beneficiary()] {
        PotTest::with(())
            .given(vec![created_private()])
            .when(PotCommand::Invite { account })
            .then_expect_error(PotError::AlreadyInvited);
    }
}

// ---------------------------------------------------------------------------------------------
// ClosePot
// ---------------------------------------------------------------------------------------------

#[test]
fn the_owner_may_close_an_open_pot_before_closes_at() {
    PotTest::with(())
        .given(vec![created(), received(1, 100)])
        .when(close(false, created_at()))
        .then_expect_events(vec![closed()]);
}

#[test]
fn the_owner_may_close_an_open_pot_after_closes_at() {
    PotTest::with(())
        .given(vec![created()])
        .when(close(false, closes_at() + Duration::days(2)))
        .then_expect_events(vec![closed()]);
}

#[test]
fn the_deadline_process_closes_the_pot_at_closes_at() {
    PotTest::with(())
        .given(vec![created()])
        .when(close(true, closes_at()))
        .then_expect_events(vec![PotEvent::PotClosed { by_system: true }]);
}

#[test]
fn the_deadline_process_closes_a_pot_whose_deadline_passed_while_down() {
    PotTest::with(())
        .given(vec![created()])
        .when(close(true, closes_at() + Duration::days(3)))
        .then_expect_events(vec![PotEvent::PotClosed { by_system: true }]);
}

#[test]
fn the_deadline_process_cannot_close_a_pot_before_closes_at() {
    PotTest::with(())
        .given(vec![created()])
        .when(close(true, before_close()))
        .then_expect_error(PotError::NotDue);
}

#[test]
fn a_closed_pot_is_closed_and_keeps_its_money() {
    let pot = replay(vec![created(), received(1, 100), closed()]);
    assert_eq!(pot.status, PotStatus::Closed);
    assert_eq!(pot.raised, 100);
    assert_eq!(pot.held(), 100);
}

#[test]
fn a_closed_pot_cannot_be_closed_again() {
    PotTest::with(())
        .given(vec![created(), closed()])
        .when(close(true, closes_at()))
        .then_expect_error(PotError::InvalidState(PotStatus::Closed));
}

#[test]
fn a_cancelled_or_paid_out_or_uncreated_pot_cannot_be_closed() {
    PotTest::with(())
        .given(vec![created(), cancelled()])
        .when(close(false, created_at()))
        .then_expect_error(PotError::InvalidState(PotStatus::Cancelled));
    PotTest::with(())
        .given(vec![created(), received(1, 100), closed(), paid_out(100)])
        .when(close(false, created_at()))
        .then_expect_error(PotError::InvalidState(PotStatus::PaidOut));
    PotTest::with(())
        .given_no_previous_events()
        .when(close(true, closes_at()))
        .then_expect_error(PotError::InvalidState(PotStatus::Uncreated));
}

// ---------------------------------------------------------------------------------------------
// PayOutPot
// ---------------------------------------------------------------------------------------------

#[test]
fn a_closed_pot_pays_everything_raised_to_the_beneficiary_wallet() {
    PotTest::with(())
        .given(vec![
            created(),
            received(1, 2_500),
            received(2, 1_000),
            closed(),
        ])
        .when(pay_out(false, false))
        .then_expect_events(vec![paid_out(3_500)]);
}

#[test]
fn a_paid_out_pot_holds_no_money_and_is_terminal() {
    let pot = replay(vec![
        created(),
        received(1, 2_500),
        received(2, 1_000),
        closed(),
        paid_out(3_500),
    ]);
    assert_eq!(pot.status, PotStatus::PaidOut);
    assert_eq!(pot.raised, 3_500);
    assert_eq!(pot.paid_out, 3_500);
    assert_eq!(pot.held(), 0);
}

#[test]
fn an_open_pot_cannot_be_paid_out() {
    PotTest::with(())
        .given(vec![created(), received(1, 2_500)])
        .when(pay_out(false, true))
        .then_expect_error(PotError::InvalidState(PotStatus::Open));
}

#[test]
fn a_pot_cannot_be_paid_out_twice() {
    PotTest::with(())
        .given(vec![
            created(),
            received(1, 2_500),
            closed(),
            paid_out(2_500),
        ])
        .when(pay_out(false, true))
        .then_expect_error(PotError::InvalidState(PotStatus::PaidOut));
}

#[test]
fn a_cancelled_or_uncreated_pot_cannot_be_paid_out() {
    PotTest::with(())
        .given(vec![
            created(),
            received(1, 2_500),
            cancelled(),
            refunded(1, friend(), 2_500),
        ])
        .when(pay_out(false, true))
        .then_expect_error(PotError::InvalidState(PotStatus::Cancelled));
    PotTest::with(())
        .given_no_previous_events()
        .when(pay_out(false, true))
        .then_expect_error(PotError::InvalidState(PotStatus::Uncreated));
}

#[test]
fn a_closed_pot_that_raised_nothing_cannot_be_paid_out() {
    PotTest::with(())
        .given(vec![created(), closed()])
        .when(pay_out(false, true))
        .then_expect_error(PotError::PotEmpty);
}

#[test]
fn a_minor_beneficiary_without_approved_kyc_cannot_be_paid() {
    PotTest::with(())
        .given(vec![created(), received(1, 2_500), closed()])
        .when(pay_out(true, false))
        .then_expect_error(PotError::KycRequired);
}

#[test]
fn a_minor_beneficiary_with_approved_kyc_is_paid() {
    PotTest::with(())
        .given(vec![created(), received(1, 2_500), closed()])
        .when(pay_out(true, true))
        .then_expect_events(vec![paid_out(2_500)]);
}

#[test]
fn an_adult_beneficiary_is_paid_without_kyc() {
    PotTest::with(())
        .given(vec![created(), received(1, 2_500), closed()])
        .when(pay_out(false, false))
        .then_expect_events(vec![paid_out(2_500)]);
}

#[test]
fn an_empty_pot_reports_pot_empty_before_kyc() {
    PotTest::with(())
        .given(vec![created(), closed()])
        .when(pay_out(true, false))
        .then_expect_error(PotError::PotEmpty);
}

// ---------------------------------------------------------------------------------------------
// CancelPot
// ---------------------------------------------------------------------------------------------

#[test]
fn the_owner_cancels_an_open_pot_and_every_contribution_is_refunded_in_order() {
    PotTest::with(())
        .given(vec![
            created(),
            received(1, 2_500),
            received_from(2, stranger(), 1_000, true),
            received(3, 40),
        ])
        .when(cancel(false))
        .then_expect_events(vec![
            cancelled(),
            refunded(1, friend(), 2_500),
            refunded(2, stranger(), 1_000),
            refunded(3, friend(), 40),
        ]);
}

#[test]
fn cancelling_a_pot_without_contributions_refunds_nothing() {
    PotTest::with(())
        .given(vec![created()])
        .when(cancel(false))
        .then_expect_events(vec![cancelled()]);
}

#[test]
fn an_admin_cancels_an_open_pot() {
    PotTest::with(())
        .given(vec![created(), received(1, 2_500)])
        .when(cancel(true))
        .then_expect_events(vec![cancelled(), refunded(1, friend(), 2_500)]);
}

#[test]
fn an_admin_cancels_a_closed_pot_before_payout() {
    PotTest::with(())
        .given(vec![created(), received(1, 2_500), closed()])
        .when(cancel(true))
        .then_expect_events(vec![cancelled(), refunded(1, friend(), 2_500)]);
}

#[test]
fn the_owner_cannot_cancel_a_closed_pot() {
    PotTest::with(())
        .given(vec![created(), received(1, 2_500), closed()])
        .when(cancel(false))
        .then_expect_error(PotError::InvalidState(PotStatus::Closed));
}

#[test]
fn nobody_cancels_a_paid_out_pot() {
    for by_admin in [false, true] {
        PotTest::with(())
            .given(vec![
                created(),
                received(1, 2_500),
                closed(),
                paid_out(2_500),
            ])
            .when(cancel(by_admin))
            .then_expect_error(PotError::InvalidState(PotStatus::PaidOut));
    }
}

#[test]
fn nobody_cancels_a_pot_twice() {
    for by_admin in [false, true] {
        PotTest::with(())
            .given(vec![
                created(),
                received(1, 2_500),
                cancelled(),
                refunded(1, friend(), 2_500),
            ])
            .when(cancel(by_admin))
            .then_expect_error(PotError::InvalidState(PotStatus::Cancelled));
    }
}

#[test]
fn nobody_cancels_an_uncreated_pot() {
    for by_admin in [false, true] {
        PotTest::with(())
            .given_no_previous_events()
            .when(cancel(by_admin))
            .then_expect_error(PotError::InvalidState(PotStatus::Uncreated));
    }
}

#[test]
fn a_contribution_already_refunded_is_not_refunded_again() {
    PotTest::with(())
        .given(vec![
            created(),
            received(1, 2_500),
            received(2, 1_000),
            refunded(1, friend(), 2_500),
        ])
        .when(cancel(true))
        .then_expect_events(vec![cancelled(), refunded(2, friend(), 1_000)]);
}

#[test]
fn a_cancelled_pot_has_refunded_everything_and_holds_nothing() {
    let pot = replay(vec![
        created(),
        received(1, 2_500),
        received(2, 1_000),
        cancelled(),
        refunded(1, friend(), 2_500),
        refunded(2, friend(), 1_000),
    ]);
    assert_eq!(pot.status, PotStatus::Cancelled);
    assert_eq!(pot.raised, 0);
    assert_eq!(pot.held(), 0);
    assert!(pot.contributions.iter().all(|c| c.refunded));
}

#[test]
fn a_refund_applied_twice_or_for_an_unknown_contribution_changes_nothing() {
    let once = replay(vec![
        created(),
        received(1, 2_500),
        refunded(1, friend(), 2_500),
    ]);
    let twice = replay(vec![
        created(),
        received(1, 2_500),
        refunded(1, friend(), 2_500),
        refunded(1, friend(), 2_500),
        refunded(9, friend(), 700),
    ]);
    assert_eq!(once, twice);
    assert_eq!(twice.raised, 0);
}

// ---------------------------------------------------------------------------------------------
// Public view of contributions
// ---------------------------------------------------------------------------------------------

#[test]
fn public_contributions_hide_the_anonymous_contributor_and_wallet() {
    let pot = replay(vec![
        created(),
        received(1, 2_500),
        received_from(2, stranger(), 1_000, true),
        cancelled(),
        refunded(1, friend(), 2_500),
    ]);
    assert_eq!(
        pot.public_contributions(),
        vec![
            PublicContribution {
                contribution_id: contribution_id(1),
                contributor: Some(friend()),
                wallet: Some(wallet_of(friend())),
                amount: 2_500,
                anonymous: false,
                message: Some("Happy birthday!".to_owned()),
                refunded: true,
            },
            PublicContribution {
                contribution_id: contribution_id(2),
                contributor: None,
                wallet: None,
                amount: 1_000,
                anonymous: true,
                message: Some("Happy birthday!".to_owned()),
                refunded: false,
            },
        ]
    );
    // The audit view keeps who gave.
    assert_eq!(pot.contributions[1].contributor, stranger());
    assert_eq!(pot.contributions[1].wallet, wallet_of(stranger()));
}

#[test]
fn the_public_view_of_an_anonymous_contribution_names_nobody_when_serialized() {
    let pot = replay(vec![created(), received_from(1, stranger(), 1_000, true)]);
    let json = serde_json::to_string(&pot.public_contributions()).expect("serializable");
    assert!(!json.contains(&stranger().to_string()));
    assert!(!json.contains(&wallet_of(stranger()).to_string()));
}

// ---------------------------------------------------------------------------------------------
// Input helpers
// ---------------------------------------------------------------------------------------------

#[test]
fn titles_and_messages_are_bounded_text() {
    assert!(domain::pot::title("title", "Birthday gift").is_ok());
    assert!(domain::pot::title("title", "   ").is_err());
    assert!(domain::pot::title("title", &"x".repeat(200)).is_ok());
    assert!(domain::pot::title("title", &"x".repeat(201)).is_err());
    assert!(domain::pot::title("title", "a\nb").is_err());
    assert!(domain::pot::message("message", "Happy birthday!").is_ok());
    assert!(domain::pot::message("message", &"x".repeat(500)).is_ok());
    assert!(domain::pot::message("message", &"x".repeat(501)).is_err());
    assert_eq!(
        domain::pot::message("message", "").map_err(|e| e.field),
        Err("message")
    );
}

// ---------------------------------------------------------------------------------------------
// Events, state and rule codes
// ---------------------------------------------------------------------------------------------

#[test]
fn every_pot_event_is_stored_under_its_variant_name_at_version_one() {
    let events = vec![
        (created(), "PotCreated"),
        (received(1, 100), "ContributionReceived"),
        (invited(friend()), "PotInvitationSent"),
        (closed(), "PotClosed"),
        (paid_out(100), "PotPaidOut"),
        (cancelled(), "PotCancelled"),
        (refunded(1, friend(), 100), "ContributionRefunded"),
    ];
    for (event, name) in events {
        assert_eq!(event.event_type(), name);
        assert_eq!(event.event_version(), "1");
        let json = serde_json::to_value(&event).expect("serializable");
        assert_eq!(json["type"], name);
        let back: PotEvent = serde_json::from_value(json).expect("deserializable");
        assert_eq!(back, event);
    }
}

#[test]
fn pot_events_have_a_stable_json_shape() {
    let json = serde_json::to_value(created_private()).expect("serializable");
    assert_eq!(json["visibility"], "private");
    assert_eq!(json["currency"], "EUR");
    assert_eq!(json["target_amount"], 50_000);
    assert_eq!(json["closes_at"], "2030-03-31T00:00:00Z");
}

#[test]
fn pot_events_with_unknown_fields_are_refused() {
    let json = serde_json::json!({"type": "PotClosed", "by_system": true, "extra": 1});
    assert!(serde_json::from_value::<PotEvent>(json).is_err());
}

#[test]
fn a_pot_snapshot_round_trips_through_json() {
    let pot = replay(vec![
        created_private(),
        invited(friend()),
        received(1, 2_500),
        received_from(2, owner(), 1_000, true),
        closed(),
    ]);
    let json = serde_json::to_value(&pot).expect("serializable");
    assert_eq!(json["status"], "closed");
    let back: Pot = serde_json::from_value(json).expect("deserializable");
    assert_eq!(back, pot);
}

#[test]
fn every_pot_error_reports_its_stable_rule_code() {
    for status in [
        PotStatus::Uncreated,
        PotStatus::Open,
        PotStatus::Closed,
        PotStatus::PaidOut,
        PotStatus::Cancelled,
    ] {
        assert_eq!(PotError::InvalidState(status).code(), "invalid_state");
    }
    assert_eq!(PotError::NotPrivate.code(), "invalid_state");
    assert_eq!(PotError::ClosesInPast.code(), "closes_in_past");
    assert_eq!(PotError::PastClose.code(), "pot_closed_for_contributions");
    assert_eq!(PotError::NotInvited.code(), "not_invited");
    assert_eq!(PotError::AlreadyInvited.code(), "already_invited");
    assert_eq!(PotError::NotDue.code(), "not_due");
    assert_eq!(PotError::PotEmpty.code(), "pot_empty");
    assert_eq!(PotError::KycRequired.code(), "kyc_required");
    assert_eq!(PotError::RaisedLimit.code(), "balance_limit");
}

// ---------------------------------------------------------------------------------------------
// Property: money in a pot is conserved whatever happens to it
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Ending {
    StayOpen,
    Close,
    CloseAndPayOut,
    Cancel { by_admin: bool },
    CloseAndCancel,
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        Just(Ending::StayOpen),
        Just(Ending::Close),
        Just(Ending::CloseAndPayOut),
        any::<bool>().prop_map(|by_admin| Ending::Cancel { by_admin }),
        Just(Ending::CloseAndCancel),
    ]
}

fn run(pot: &mut Pot, command: PotCommand) -> Result<Vec<PotEvent>, PotError> {
    let events = pot.decide(command)?;
    for event in events.clone() {
        pot.apply(event);
    }
    Ok(events)
}

proptest! {
    #[test]
    fn contributions_end_either_in_the_pot_with_the_beneficiary_or_back_with_contributors(
        amounts in prop::collection::vec((1_i64..=1_000_000, any::<bool>()), 0..20),
        ending in ending(),
    ) {
        let mut pot = Pot::default();
        run(&mut pot, create(Visibility::Public, closes_at(), created_at())).expect("created");
        let mut contributed = 0;
        for (n, (minor, anonymous)) in amounts.iter().enumerate() {
            let events = run(&mut pot, PotCommand::Contribute {
                contribution_id: contribution_id(n as u128),
                contributor: friend(),
                wallet: wallet_of(friend()),
                amount: amount(*minor),
                message: None,
                anonymous: *anonymous,
                now: created_at(),
            }).expect("contribution accepted");
            prop_assert_eq!(events.len(), 1);
            contributed += minor;
        }
        prop_assert_eq!(pot.raised, contributed);
        let mut to_beneficiary = 0;
        let mut refunded_total = 0;
        let mut commands = Vec::new();
        match ending {
            Ending::StayOpen => {}
            Ending::Close => commands.push(close(true, closes_at())),
            Ending::CloseAndPayOut => {
                commands.push(close(true, closes_at()));
                commands.push(pay_out(false, false));
            }
            Ending::Cancel { by_admin } => commands.push(cancel(by_admin)),
            Ending::CloseAndCancel => {
                commands.push(close(false, created_at()));
                commands.push(cancel(true));
            }
        }
        for command in commands {
            match run(&mut pot, command) {
                Ok(events) => {
                    for event in events {
                        match event {
                            PotEvent::PotPaidOut { amount, .. } => to_beneficiary += amount,
                            PotEvent::ContributionRefunded { amount, .. } => refunded_total += amount,
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    // Only an empty pot refuses a payout here.
                    prop_assert_eq!(e, PotError::PotEmpty);
                    prop_assert_eq!(contributed, 0);
                }
            }
        }
        prop_assert_eq!(pot.held() + to_beneficiary + refunded_total, contributed);
        prop_assert!(pot.held() >= 0);
        if matches!(pot.status, PotStatus::PaidOut | PotStatus::Cancelled) {
            prop_assert_eq!(pot.held(), 0);
        }
    }
}
