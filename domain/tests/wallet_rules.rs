//! Given/when/then tests for every Wallet rule in DOMAIN.md ("Common rules", "Wallet").

// The package is `chronicle-domain`; dependants rename it to `domain` in the workspace.
use chronicle_domain as domain;
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use domain::wallet::{Wallet, WalletCommand, WalletError, WalletEvent, WalletStatus};
use domain::{Amount, Currency, RuleCode};
use proptest::prelude::*;
use uuid::Uuid;

type WalletTest = TestFramework<Wallet>;

fn wallet_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0b01)
}

fn other_wallet_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0b02)
}

fn owner_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a1)
}

fn transfer_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0c01)
}

fn currency(code: &str) -> Currency {
    Currency::parse("currency", code).expect("an ISO 4217 currency")
}

fn amount(minor: i64) -> Amount {
    Amount::parse("amount", minor).expect("an amount in range")
}

fn opened_in(code: &str) -> WalletEvent {
    WalletEvent::WalletOpened {
        wallet_id: wallet_id(),
        owner: owner_id(),
        currency: currency(code),
    }
}

fn opened() -> WalletEvent {
    opened_in("EUR")
}

fn deposited(minor: i64) -> WalletEvent {
    WalletEvent::FundsDeposited {
        amount: minor,
        external_ref: "psp-in-1".to_owned(),
    }
}

fn withdrawn(minor: i64) -> WalletEvent {
    WalletEvent::FundsWithdrawn {
        amount: minor,
        external_ref: "psp-out-1".to_owned(),
    }
}

fn frozen() -> WalletEvent {
    WalletEvent::WalletFrozen {
        reason: "fraud check".to_owned(),
    }
}

fn unfrozen() -> WalletEvent {
    WalletEvent::WalletUnfrozen {
        reason: "cleared".to_owned(),
    }
}

fn deposit(minor: i64) -> WalletCommand {
    WalletCommand::Deposit {
        amount: amount(minor),
        external_ref: "psp-in-1".to_owned(),
    }
}

fn withdraw(minor: i64, owner_kyc_approved: bool) -> WalletCommand {
    WalletCommand::Withdraw {
        amount: amount(minor),
        external_ref: "psp-out-1".to_owned(),
        owner_kyc_approved,
    }
}

fn send(to_wallet: Uuid, to_currency: &str, minor: i64) -> WalletCommand {
    WalletCommand::SendTransfer {
        transfer_id: transfer_id(),
        to_wallet,
        to_currency: currency(to_currency),
        amount: amount(minor),
        memo: Some("rent".to_owned()),
    }
}

fn receive(from_wallet: Uuid, minor: i64) -> WalletCommand {
    WalletCommand::ReceiveTransfer {
        transfer_id: transfer_id(),
        from_wallet,
        amount: amount(minor),
        memo: Some("rent".to_owned()),
    }
}

fn replay(events: Vec<WalletEvent>) -> Wallet {
    let mut wallet = Wallet::default();
    for event in events {
        wallet.apply(event);
    }
    wallet
}

// ---------------------------------------------------------------------------------------------
// OpenWallet
// ---------------------------------------------------------------------------------------------

#[test]
fn a_new_wallet_is_opened_in_its_currency() {
    WalletTest::with(())
        .given_no_previous_events()
        .when(WalletCommand::Open {
            wallet_id: wallet_id(),
            owner: owner_id(),
            currency: currency("EUR"),
        })
        .then_expect_events(vec![opened()]);
}

#[test]
fn an_opened_wallet_is_active_and_empty() {
    let wallet = replay(vec![opened()]);
    assert_eq!(wallet.id, wallet_id());
    assert_eq!(wallet.owner, owner_id());
    assert_eq!(wallet.currency, Some(currency("EUR")));
    assert_eq!(wallet.status, WalletStatus::Active);
    assert_eq!(wallet.balance, 0);
    assert_eq!(wallet.held, 0);
    assert_eq!(wallet.available(), 0);
}

#[test]
fn a_wallet_cannot_be_opened_twice() {
    WalletTest::with(())
        .given(vec![opened()])
        .when(WalletCommand::Open {
            wallet_id: wallet_id(),
            owner: owner_id(),
            currency: currency("USD"),
        })
        .then_expect_error(WalletError::InvalidState(WalletStatus::Active));
}

#[test]
fn a_closed_wallet_cannot_be_opened_again() {
    WalletTest::with(())
        .given(vec![opened(), WalletEvent::WalletClosed])
        .when(WalletCommand::Open {
            wallet_id: wallet_id(),
            owner: owner_id(),
            currency: currency("EUR"),
        })
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
}

// ---------------------------------------------------------------------------------------------
// Deposit
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_wallet_accepts_deposits() {
    WalletTest::with(())
        .given(vec![opened()])
        .when(deposit(2_500))
        .then_expect_events(vec![deposited(2_500)]);
}

#[test]
fn a_deposit_raises_the_balance() {
    let wallet = replay(vec![opened(), deposited(2_500), deposited(500)]);
    assert_eq!(wallet.balance, 3_000);
    assert_eq!(wallet.available(), 3_000);
}

#[test]
fn a_deposit_of_the_largest_movement_is_accepted() {
    WalletTest::with(())
        .given(vec![opened()])
        .when(deposit(domain::values::MAX_AMOUNT))
        .then_expect_events(vec![deposited(domain::values::MAX_AMOUNT)]);
}

#[test]
fn a_frozen_wallet_accepts_deposits() {
    WalletTest::with(())
        .given(vec![opened(), frozen()])
        .when(deposit(700))
        .then_expect_events(vec![deposited(700)]);
}

#[test]
fn a_closed_wallet_refuses_deposits() {
    WalletTest::with(())
        .given(vec![opened(), WalletEvent::WalletClosed])
        .when(deposit(700))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
}

#[test]
fn an_unopened_wallet_refuses_deposits() {
    WalletTest::with(())
        .given_no_previous_events()
        .when(deposit(700))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Unopened));
}

// ---------------------------------------------------------------------------------------------
// Withdraw
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_wallet_pays_out_a_withdrawal() {
    WalletTest::with(())
        .given(vec![opened(), deposited(5_000)])
        .when(withdraw(1_200, false))
        .then_expect_events(vec![withdrawn(1_200)]);
    assert_eq!(
        replay(vec![opened(), deposited(5_000), withdrawn(1_200)]).balance,
        3_800
    );
}

#[test]
fn the_whole_balance_can_be_withdrawn() {
    WalletTest::with(())
        .given(vec![opened(), deposited(5_000)])
        .when(withdraw(5_000, false))
        .then_expect_events(vec![withdrawn(5_000)]);
}

#[test]
fn a_withdrawal_over_the_balance_is_refused_for_insufficient_funds() {
    WalletTest::with(())
        .given(vec![opened(), deposited(5_000)])
        .when(withdraw(5_001, false))
        .then_expect_error(WalletError::InsufficientFunds);
}

#[test]
fn an_empty_wallet_refuses_withdrawals_for_insufficient_funds() {
    WalletTest::with(())
        .given(vec![opened()])
        .when(withdraw(1, false))
        .then_expect_error(WalletError::InsufficientFunds);
}

#[test]
fn a_frozen_wallet_refuses_withdrawals() {
    WalletTest::with(())
        .given(vec![opened(), deposited(5_000), frozen()])
        .when(withdraw(100, true))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Frozen));
}

#[test]
fn an_unfrozen_wallet_accepts_withdrawals_again() {
    WalletTest::with(())
        .given(vec![opened(), deposited(5_000), frozen(), unfrozen()])
        .when(withdraw(100, false))
        .then_expect_events(vec![withdrawn(100)]);
}

#[test]
fn a_closed_wallet_refuses_withdrawals() {
    WalletTest::with(())
        .given(vec![opened(), WalletEvent::WalletClosed])
        .when(withdraw(100, true))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
}

#[test]
fn an_unopened_wallet_refuses_withdrawals() {
    WalletTest::with(())
        .given_no_previous_events()
        .when(withdraw(100, true))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Unopened));
}

#[test]
fn a_euro_withdrawal_of_exactly_one_thousand_needs_no_kyc() {
    WalletTest::with(())
        .given(vec![opened_in("EUR"), deposited(500_000)])
        .when(withdraw(100_000, false))
        .then_expect_events(vec![withdrawn(100_000)]);
}

#[test]
fn a_euro_withdrawal_over_one_thousand_is_refused_without_kyc() {
    WalletTest::with(())
        .given(vec![opened_in("EUR"), deposited(500_000)])
        .when(withdraw(100_001, false))
        .then_expect_error(WalletError::KycRequired);
}

#[test]
fn a_euro_withdrawal_over_one_thousand_is_allowed_with_approved_kyc() {
    WalletTest::with(())
        .given(vec![opened_in("EUR"), deposited(500_000)])
        .when(withdraw(100_001, true))
        .then_expect_events(vec![withdrawn(100_001)]);
}

#[test]
fn a_yen_withdrawal_of_exactly_one_thousand_yen_needs_no_kyc() {
    WalletTest::with(())
        .given(vec![opened_in("JPY"), deposited(5_000)])
        .when(withdraw(1_000, false))
        .then_expect_events(vec![withdrawn(1_000)]);
}

#[test]
fn a_yen_withdrawal_over_one_thousand_yen_is_refused_without_kyc() {
    WalletTest::with(())
        .given(vec![opened_in("JPY"), deposited(5_000)])
        .when(withdraw(1_001, false))
        .then_expect_error(WalletError::KycRequired);
}

#[test]
fn a_yen_withdrawal_over_one_thousand_yen_is_allowed_with_approved_kyc() {
    WalletTest::with(())
        .given(vec![opened_in("JPY"), deposited(5_000)])
        .when(withdraw(1_001, true))
        .then_expect_events(vec![withdrawn(1_001)]);
}

#[test]
fn a_dinar_withdrawal_limit_uses_three_decimal_places() {
    WalletTest::with(())
        .given(vec![opened_in("KWD"), deposited(2_000_000)])
        .when(withdraw(1_000_000, false))
        .then_expect_events(vec![withdrawn(1_000_000)]);
    WalletTest::with(())
        .given(vec![opened_in("KWD"), deposited(2_000_000)])
        .when(withdraw(1_000_001, false))
        .then_expect_error(WalletError::KycRequired);
}

// ---------------------------------------------------------------------------------------------
// Transfer: SendTransfer (source) + ReceiveTransfer (destination)
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_wallet_sends_a_transfer_in_its_currency() {
    WalletTest::with(())
        .given(vec![opened(), deposited(10_000)])
        .when(send(other_wallet_id(), "EUR", 4_000))
        .then_expect_events(vec![WalletEvent::TransferSent {
            transfer_id: transfer_id(),
            to_wallet: other_wallet_id(),
            amount: 4_000,
            memo: Some("rent".to_owned()),
        }]);
}

#[test]
fn an_active_wallet_receives_a_transfer() {
    WalletTest::with(())
        .given(vec![opened()])
        .when(receive(other_wallet_id(), 4_000))
        .then_expect_events(vec![WalletEvent::TransferReceived {
            transfer_id: transfer_id(),
            from_wallet: other_wallet_id(),
            amount: 4_000,
            memo: Some("rent".to_owned()),
        }]);
}

#[test]
fn a_transfer_moves_money_without_creating_or_destroying_it() {
    let source = replay(vec![
        opened(),
        deposited(10_000),
        WalletEvent::TransferSent {
            transfer_id: transfer_id(),
            to_wallet: other_wallet_id(),
            amount: 4_000,
            memo: None,
        },
    ]);
    let destination = replay(vec![
        WalletEvent::WalletOpened {
            wallet_id: other_wallet_id(),
            owner: owner_id(),
            currency: currency("EUR"),
        },
        WalletEvent::TransferReceived {
            transfer_id: transfer_id(),
            from_wallet: wallet_id(),
            amount: 4_000,
            memo: None,
        },
    ]);
    assert_eq!(source.balance, 6_000);
    assert_eq!(destination.balance, 4_000);
    assert_eq!(source.balance + destination.balance, 10_000);
}

#[test]
fn the_whole_balance_can_be_transferred() {
    WalletTest::with(())
        .given(vec![opened(), deposited(10_000)])
        .when(send(other_wallet_id(), "EUR", 10_000))
        .then_expect_events(vec![WalletEvent::TransferSent {
            transfer_id: transfer_id(),
            to_wallet: other_wallet_id(),
            amount: 10_000,
            memo: Some("rent".to_owned()),
        }]);
}

#[test]
fn a_wallet_cannot_send_a_transfer_to_itself() {
    WalletTest::with(())
        .given(vec![opened(), deposited(10_000)])
        .when(send(wallet_id(), "EUR", 100))
        .then_expect_error(WalletError::SameWallet);
}

#[test]
fn a_wallet_cannot_receive_a_transfer_from_itself() {
    WalletTest::with(())
        .given(vec![opened(), deposited(10_000)])
        .when(receive(wallet_id(), 100))
        .then_expect_error(WalletError::SameWallet);
}

#[test]
fn a_transfer_to_a_wallet_in_another_currency_is_refused() {
    WalletTest::with(())
        .given(vec![opened_in("EUR"), deposited(10_000)])
        .when(send(other_wallet_id(), "USD", 100))
        .then_expect_error(WalletError::CurrencyMismatch);
}

#[test]
fn a_transfer_over_the_available_balance_is_refused() {
    WalletTest::with(())
        .given(vec![opened(), deposited(10_000)])
        .when(send(other_wallet_id(), "EUR", 10_001))
        .then_expect_error(WalletError::InsufficientFunds);
}

#[test]
fn a_frozen_wallet_cannot_send_a_transfer() {
    WalletTest::with(())
        .given(vec![opened(), deposited(10_000), frozen()])
        .when(send(other_wallet_id(), "EUR", 100))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Frozen));
}

#[test]
fn a_closed_wallet_cannot_send_a_transfer() {
    WalletTest::with(())
        .given(vec![opened(), WalletEvent::WalletClosed])
        .when(send(other_wallet_id(), "EUR", 100))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
}

#[test]
fn an_unopened_wallet_cannot_send_a_transfer() {
    WalletTest::with(())
        .given_no_previous_events()
        .when(send(other_wallet_id(), "EUR", 100))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Unopened));
}

#[test]
fn a_frozen_wallet_cannot_receive_a_transfer() {
    WalletTest::with(())
        .given(vec![opened(), frozen()])
        .when(receive(other_wallet_id(), 100))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Frozen));
}

#[test]
fn a_closed_wallet_cannot_receive_a_transfer() {
    WalletTest::with(())
        .given(vec![opened(), WalletEvent::WalletClosed])
        .when(receive(other_wallet_id(), 100))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
}

#[test]
fn an_unopened_wallet_cannot_receive_a_transfer() {
    WalletTest::with(())
        .given_no_previous_events()
        .when(receive(other_wallet_id(), 100))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Unopened));
}

// ---------------------------------------------------------------------------------------------
// Freeze / Unfreeze
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_wallet_is_frozen_with_a_reason() {
    WalletTest::with(())
        .given(vec![opened()])
        .when(WalletCommand::Freeze {
            reason: "fraud check".to_owned(),
        })
        .then_expect_events(vec![frozen()]);
    assert_eq!(
        replay(vec![opened(), frozen()]).status,
        WalletStatus::Frozen
    );
}

#[test]
fn a_frozen_wallet_cannot_be_frozen_again() {
    WalletTest::with(())
        .given(vec![opened(), frozen()])
        .when(WalletCommand::Freeze {
            reason: "again".to_owned(),
        })
        .then_expect_error(WalletError::InvalidState(WalletStatus::Frozen));
}

#[test]
fn a_closed_wallet_cannot_be_frozen() {
    WalletTest::with(())
        .given(vec![opened(), WalletEvent::WalletClosed])
        .when(WalletCommand::Freeze {
            reason: "too late".to_owned(),
        })
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
}

#[test]
fn an_unopened_wallet_cannot_be_frozen() {
    WalletTest::with(())
        .given_no_previous_events()
        .when(WalletCommand::Freeze {
            reason: "no wallet".to_owned(),
        })
        .then_expect_error(WalletError::InvalidState(WalletStatus::Unopened));
}

#[test]
fn a_frozen_wallet_is_unfrozen_with_a_reason() {
    WalletTest::with(())
        .given(vec![opened(), frozen()])
        .when(WalletCommand::Unfreeze {
            reason: "cleared".to_owned(),
        })
        .then_expect_events(vec![unfrozen()]);
    assert_eq!(
        replay(vec![opened(), frozen(), unfrozen()]).status,
        WalletStatus::Active
    );
}

#[test]
fn an_active_wallet_cannot_be_unfrozen() {
    WalletTest::with(())
        .given(vec![opened()])
        .when(WalletCommand::Unfreeze {
            reason: "nothing to lift".to_owned(),
        })
        .then_expect_error(WalletError::InvalidState(WalletStatus::Active));
}

#[test]
fn a_closed_wallet_cannot_be_unfrozen() {
    WalletTest::with(())
        .given(vec![opened(), frozen(), WalletEvent::WalletClosed])
        .when(WalletCommand::Unfreeze {
            reason: "too late".to_owned(),
        })
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
}

#[test]
fn freezing_keeps_the_balance() {
    let wallet = replay(vec![opened(), deposited(1_234), frozen(), deposited(1)]);
    assert_eq!(wallet.balance, 1_235);
    assert_eq!(wallet.available(), 1_235);
}

// ---------------------------------------------------------------------------------------------
// CloseWallet
// ---------------------------------------------------------------------------------------------

#[test]
fn an_empty_wallet_is_closed() {
    WalletTest::with(())
        .given(vec![opened()])
        .when(WalletCommand::Close)
        .then_expect_events(vec![WalletEvent::WalletClosed]);
    assert_eq!(
        replay(vec![opened(), WalletEvent::WalletClosed]).status,
        WalletStatus::Closed
    );
}

#[test]
fn a_wallet_emptied_by_a_withdrawal_can_be_closed() {
    WalletTest::with(())
        .given(vec![opened(), deposited(5_000), withdrawn(5_000)])
        .when(WalletCommand::Close)
        .then_expect_events(vec![WalletEvent::WalletClosed]);
}

#[test]
fn an_empty_frozen_wallet_can_be_closed() {
    WalletTest::with(())
        .given(vec![opened(), frozen()])
        .when(WalletCommand::Close)
        .then_expect_events(vec![WalletEvent::WalletClosed]);
}

#[test]
fn a_wallet_with_money_cannot_be_closed() {
    WalletTest::with(())
        .given(vec![opened(), deposited(1)])
        .when(WalletCommand::Close)
        .then_expect_error(WalletError::NotEmpty);
}

#[test]
fn a_wallet_with_holds_cannot_be_closed() {
    let wallet = Wallet {
        held: 1,
        balance: 0,
        ..replay(vec![opened()])
    };
    assert_eq!(
        wallet.decide(WalletCommand::Close),
        Err(WalletError::NotEmpty)
    );
}

#[test]
fn a_wallet_cannot_be_closed_twice() {
    WalletTest::with(())
        .given(vec![opened(), WalletEvent::WalletClosed])
        .when(WalletCommand::Close)
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
}

#[test]
fn an_unopened_wallet_cannot_be_closed() {
    WalletTest::with(())
        .given_no_previous_events()
        .when(WalletCommand::Close)
        .then_expect_error(WalletError::InvalidState(WalletStatus::Unopened));
}

// ---------------------------------------------------------------------------------------------
// available()
// ---------------------------------------------------------------------------------------------

#[test]
fn available_is_zero_for_a_new_wallet() {
    assert_eq!(Wallet::default().available(), 0);
    assert_eq!(replay(vec![opened()]).available(), 0);
}

#[test]
fn available_follows_every_credit_and_debit() {
    let wallet = replay(vec![
        opened(),
        deposited(10_000),
        withdrawn(2_500),
        WalletEvent::TransferReceived {
            transfer_id: transfer_id(),
            from_wallet: other_wallet_id(),
            amount: 700,
            memo: None,
        },
        WalletEvent::TransferSent {
            transfer_id: transfer_id(),
            to_wallet: other_wallet_id(),
            amount: 1_200,
            memo: None,
        },
    ]);
    assert_eq!(wallet.balance, 7_000);
    assert_eq!(wallet.available(), 7_000);
}

#[test]
fn available_is_the_balance_minus_holds() {
    let wallet = Wallet {
        balance: 1_000,
        held: 300,
        ..replay(vec![opened()])
    };
    assert_eq!(wallet.available(), 700);
}

#[test]
fn held_money_cannot_be_withdrawn_or_transferred() {
    let wallet = Wallet {
        balance: 1_000,
        held: 300,
        ..replay(vec![opened()])
    };
    assert_eq!(
        wallet.decide(withdraw(701, false)),
        Err(WalletError::InsufficientFunds)
    );
    assert_eq!(
        wallet.decide(send(other_wallet_id(), "EUR", 701)),
        Err(WalletError::InsufficientFunds)
    );
    assert_eq!(
        wallet.decide(withdraw(700, false)),
        Ok(vec![withdrawn(700)])
    );
}

// ---------------------------------------------------------------------------------------------
// Rule codes
// ---------------------------------------------------------------------------------------------

#[test]
fn every_wallet_error_reports_its_stable_rule_code() {
    for status in [
        WalletStatus::Unopened,
        WalletStatus::Active,
        WalletStatus::Frozen,
        WalletStatus::Closed,
    ] {
        assert_eq!(WalletError::InvalidState(status).code(), "invalid_state");
    }
    assert_eq!(WalletError::InsufficientFunds.code(), "insufficient_funds");
    assert_eq!(WalletError::KycRequired.code(), "kyc_required");
    assert_eq!(WalletError::CurrencyMismatch.code(), "currency_mismatch");
    assert_eq!(WalletError::SameWallet.code(), "same_wallet");
    assert_eq!(WalletError::NotEmpty.code(), "wallet_not_empty");
}

// ---------------------------------------------------------------------------------------------
// Property: balance bookkeeping over random command sequences
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Deposit(i64),
    Withdraw(i64, bool),
    /// Withdraw exactly what is available (one minor unit when nothing is).
    WithdrawAll(bool),
    Freeze,
    Unfreeze,
}

/// Movement sizes: mostly random, often right at a KYC limit (JPY 1,000; EUR 100,000;
/// KWD 1,000,000 minor units) or one minor unit over it.
fn movement() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => 1_i64..=1_200_000,
        1 => prop::sample::select(vec![1_000_i64, 1_001, 100_000, 100_001, 1_000_000, 1_000_001]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => movement().prop_map(Op::Deposit),
        4 => (movement(), any::<bool>()).prop_map(|(a, kyc)| Op::Withdraw(a, kyc)),
        1 => any::<bool>().prop_map(Op::WithdrawAll),
        1 => Just(Op::Freeze),
        1 => Just(Op::Unfreeze),
    ]
}

proptest! {
    #[test]
    fn random_deposits_withdrawals_and_freezes_keep_the_books_balanced(
        code in prop::sample::select(vec!["EUR", "JPY", "KWD"]),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        let mut wallet = replay(vec![opened_in(code)]);
        let limit = 1_000 * currency(code).minor_per_major();
        let mut deposits = 0_i64;
        let mut withdrawals = 0_i64;
        let mut is_frozen = false;

        for op in ops {
            let op = match op {
                Op::WithdrawAll(kyc) => Op::Withdraw(wallet.available().max(1), kyc),
                other => other,
            };
            let (command, expected) = match op {
                Op::Deposit(a) => (
                    deposit(a),
                    Ok(vec![deposited(a)]),
                ),
                Op::Withdraw(a, kyc) => (
                    withdraw(a, kyc),
                    if is_frozen {
                        Err(WalletError::InvalidState(WalletStatus::Frozen))
                    } else if a > wallet.available() {
                        Err(WalletError::InsufficientFunds)
                    } else if a > limit && !kyc {
                        Err(WalletError::KycRequired)
                    } else {
                        Ok(vec![withdrawn(a)])
                    },
                ),
                Op::Freeze => (
                    WalletCommand::Freeze { reason: "fraud check".to_owned() },
                    if is_frozen {
                        Err(WalletError::InvalidState(WalletStatus::Frozen))
                    } else {
                        Ok(vec![frozen()])
                    },
                ),
                Op::WithdrawAll(_) => unreachable!("rewritten into Op::Withdraw above"),
                Op::Unfreeze => (
                    WalletCommand::Unfreeze { reason: "cleared".to_owned() },
                    if is_frozen {
                        Ok(vec![unfrozen()])
                    } else {
                        Err(WalletError::InvalidState(WalletStatus::Active))
                    },
                ),
            };

            let decided = wallet.decide(command);
            prop_assert_eq!(&decided, &expected);
            if let Ok(events) = decided {
                for event in events {
                    match &event {
                        WalletEvent::FundsDeposited { amount, .. } => deposits += amount,
                        WalletEvent::FundsWithdrawn { amount, .. } => withdrawals += amount,
                        WalletEvent::WalletFrozen { .. } => is_frozen = true,
                        WalletEvent::WalletUnfrozen { .. } => is_frozen = false,
                        other => prop_assert!(false, "unexpected event {:?}", other),
                    }
                    wallet.apply(event);
                }
            }

            prop_assert!(wallet.available() >= 0, "available went negative: {}", wallet.available());
            prop_assert_eq!(wallet.balance, deposits - withdrawals);
            prop_assert_eq!(
                wallet.status,
                if is_frozen { WalletStatus::Frozen } else { WalletStatus::Active }
            );
        }
    }
}

#[test]
fn a_credit_that_would_pass_the_balance_limit_is_refused() {
    let max = domain::wallet::MAX_BALANCE;
    let full: Vec<WalletEvent> = std::iter::once(opened())
        .chain((0..1000).map(|_| deposited(1_000_000_000_000_000)))
        .collect();
    TestFramework::<Wallet>::with(())
        .given(full.clone())
        .when(deposit(1))
        .then_expect_error(WalletError::BalanceLimit);
    let incoming = WalletCommand::ReceiveTransfer {
        transfer_id: transfer_id(),
        from_wallet: other_wallet_id(),
        amount: amount(1),
        memo: None,
    };
    TestFramework::<Wallet>::with(())
        .given(full)
        .when(incoming)
        .then_expect_error(WalletError::BalanceLimit);
    assert_eq!(WalletError::BalanceLimit.code(), "balance_limit");
    assert_eq!(max, 1000 * 1_000_000_000_000_000);
}

fn debit(minor: i64) -> WalletCommand {
    WalletCommand::Debit {
        amount: amount(minor),
        reason: domain::wallet::MoneyReason::OrderPayment,
        reference: transfer_id(),
    }
}

fn credit(minor: i64) -> WalletCommand {
    WalletCommand::Credit {
        amount: amount(minor),
        reason: domain::wallet::MoneyReason::EscrowRelease,
        reference: transfer_id(),
    }
}

#[test]
fn a_debit_for_another_aggregate_needs_an_active_wallet_and_enough_money() {
    TestFramework::<Wallet>::with(())
        .given(vec![opened(), deposited(500)])
        .when(debit(500))
        .then_expect_events(vec![WalletEvent::WalletDebited {
            amount: 500,
            reason: domain::wallet::MoneyReason::OrderPayment,
            reference: transfer_id(),
        }]);
    TestFramework::<Wallet>::with(())
        .given(vec![opened(), deposited(500)])
        .when(debit(501))
        .then_expect_error(WalletError::InsufficientFunds);
    TestFramework::<Wallet>::with(())
        .given(vec![opened(), deposited(500), frozen()])
        .when(debit(1))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Frozen));
}

#[test]
fn a_credit_from_another_aggregate_reaches_frozen_wallets_but_not_closed_ones() {
    let credited = WalletEvent::WalletCredited {
        amount: 700,
        reason: domain::wallet::MoneyReason::EscrowRelease,
        reference: transfer_id(),
    };
    TestFramework::<Wallet>::with(())
        .given(vec![opened(), frozen()])
        .when(credit(700))
        .then_expect_events(vec![credited.clone()]);
    TestFramework::<Wallet>::with(())
        .given(vec![opened(), WalletEvent::WalletClosed])
        .when(credit(700))
        .then_expect_error(WalletError::InvalidState(WalletStatus::Closed));
    let mut w = Wallet::default();
    for e in [opened(), deposited(100), credited] {
        w.apply(e);
    }
    w.apply(WalletEvent::WalletDebited {
        amount: 300,
        reason: domain::wallet::MoneyReason::PotContribution,
        reference: transfer_id(),
    });
    assert_eq!(w.balance, 500);
}
