//! Given/when/then tests for every Account rule in DOMAIN.md ("Common rules", "Account").

// The package is `chronicle-domain`; dependants rename it to `domain` in the workspace.
use chronicle_domain as domain;
use chrono::NaiveDate;
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use domain::account::{
    Account, AccountCommand, AccountError, AccountEvent, AccountStatus, KycStatus, Obligations,
    Preferences,
};
use domain::RuleCode;
use uuid::Uuid;

type AccountTest = TestFramework<Account>;

fn account_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a1)
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("a valid calendar date")
}

fn opened() -> AccountEvent {
    AccountEvent::AccountOpened {
        account_id: account_id(),
        subject: "auth0|alice".to_owned(),
        email: "alice@example.com".to_owned(),
        display_name: "Alice".to_owned(),
        birth_date: Some(date(1990, 5, 17)),
        country: Some("DE".to_owned()),
    }
}

fn open_command() -> AccountCommand {
    AccountCommand::Open {
        account_id: account_id(),
        subject: "auth0|alice".to_owned(),
        email: "alice@example.com".to_owned(),
        display_name: "Alice".to_owned(),
        birth_date: Some(date(1990, 5, 17)),
        country: Some("DE".to_owned()),
    }
}

fn kyc_submitted() -> AccountEvent {
    AccountEvent::KycSubmitted {
        document_ref: "doc-1".to_owned(),
    }
}

fn suspended() -> AccountEvent {
    AccountEvent::AccountSuspended {
        reason: "chargeback review".to_owned(),
    }
}

fn closed() -> AccountEvent {
    AccountEvent::AccountClosed {
        reason: "moving away".to_owned(),
    }
}

fn close_command(obligations: Obligations) -> AccountCommand {
    AccountCommand::Close {
        reason: "moving away".to_owned(),
        obligations,
    }
}

fn update_name(name: &str) -> AccountCommand {
    AccountCommand::UpdateProfile {
        display_name: Some(name.to_owned()),
        preferences: None,
    }
}

fn replay(events: Vec<AccountEvent>) -> Account {
    let mut account = Account::default();
    for event in events {
        account.apply(event);
    }
    account
}

// ---------------------------------------------------------------------------------------------
// OpenAccount
// ---------------------------------------------------------------------------------------------

#[test]
fn a_new_account_is_opened_with_its_profile() {
    AccountTest::with(())
        .given_no_previous_events()
        .when(open_command())
        .then_expect_events(vec![opened()]);
}

#[test]
fn an_account_without_optional_fields_can_be_opened() {
    let command = AccountCommand::Open {
        account_id: account_id(),
        subject: "auth0|bob".to_owned(),
        email: "bob@example.com".to_owned(),
        display_name: "Bob".to_owned(),
        birth_date: None,
        country: None,
    };
    AccountTest::with(())
        .given_no_previous_events()
        .when(command)
        .then_expect_events(vec![AccountEvent::AccountOpened {
            account_id: account_id(),
            subject: "auth0|bob".to_owned(),
            email: "bob@example.com".to_owned(),
            display_name: "Bob".to_owned(),
            birth_date: None,
            country: None,
        }]);
}

#[test]
fn an_opened_account_is_active_and_holds_its_profile() {
    let account = replay(vec![opened()]);
    assert_eq!(account.id, account_id());
    assert_eq!(account.subject, "auth0|alice");
    assert_eq!(account.email.as_deref(), Some("alice@example.com"));
    assert_eq!(account.display_name.as_deref(), Some("Alice"));
    assert_eq!(account.birth_date, Some(date(1990, 5, 17)));
    assert_eq!(account.country.as_deref(), Some("DE"));
    assert_eq!(account.status, AccountStatus::Active);
    assert_eq!(account.kyc, KycStatus::None);
    assert_eq!(account.preferences, Preferences::default());
    assert!(!account.erased);
}

#[test]
fn an_account_cannot_be_opened_twice() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(open_command())
        .then_expect_error(AccountError::InvalidState(AccountStatus::Active));
}

#[test]
fn a_closed_account_cannot_be_opened_again() {
    AccountTest::with(())
        .given(vec![opened(), closed()])
        .when(open_command())
        .then_expect_error(AccountError::InvalidState(AccountStatus::Closed));
}

// ---------------------------------------------------------------------------------------------
// UpdateProfile
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_account_updates_its_profile() {
    let prefs = Preferences {
        birthday_pot: Some(true),
    };
    AccountTest::with(())
        .given(vec![opened()])
        .when(AccountCommand::UpdateProfile {
            display_name: Some("Alice A.".to_owned()),
            preferences: Some(prefs.clone()),
        })
        .then_expect_events(vec![AccountEvent::ProfileUpdated {
            display_name: Some("Alice A.".to_owned()),
            preferences: Some(prefs),
        }]);
}

#[test]
fn a_profile_update_changes_only_the_fields_given() {
    let prefs = Preferences {
        birthday_pot: Some(true),
    };
    let account = replay(vec![
        opened(),
        AccountEvent::ProfileUpdated {
            display_name: None,
            preferences: Some(prefs.clone()),
        },
    ]);
    assert_eq!(account.display_name.as_deref(), Some("Alice"));
    assert_eq!(account.preferences, prefs);

    let account = replay(vec![
        opened(),
        AccountEvent::ProfileUpdated {
            display_name: None,
            preferences: Some(prefs.clone()),
        },
        AccountEvent::ProfileUpdated {
            display_name: Some("Ally".to_owned()),
            preferences: None,
        },
    ]);
    assert_eq!(account.display_name.as_deref(), Some("Ally"));
    assert_eq!(account.preferences, prefs);
}

#[test]
fn an_unopened_account_cannot_update_its_profile() {
    AccountTest::with(())
        .given_no_previous_events()
        .when(update_name("Ghost"))
        .then_expect_error(AccountError::InvalidState(AccountStatus::Unopened));
}

#[test]
fn a_suspended_account_cannot_update_its_profile() {
    AccountTest::with(())
        .given(vec![opened(), suspended()])
        .when(update_name("Alice B."))
        .then_expect_error(AccountError::InvalidState(AccountStatus::Suspended));
}

#[test]
fn a_closed_account_cannot_update_its_profile() {
    AccountTest::with(())
        .given(vec![opened(), closed()])
        .when(update_name("Alice B."))
        .then_expect_error(AccountError::InvalidState(AccountStatus::Closed));
}

#[test]
fn a_reinstated_account_can_update_its_profile_again() {
    AccountTest::with(())
        .given(vec![opened(), suspended(), AccountEvent::AccountReinstated])
        .when(update_name("Alice B."))
        .then_expect_events(vec![AccountEvent::ProfileUpdated {
            display_name: Some("Alice B.".to_owned()),
            preferences: None,
        }]);
}

// ---------------------------------------------------------------------------------------------
// KYC: SubmitKyc / ApproveKyc / RejectKyc
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_account_submits_kyc_documents() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(AccountCommand::SubmitKyc {
            document_ref: "doc-1".to_owned(),
        })
        .then_expect_events(vec![kyc_submitted()]);
}

#[test]
fn a_kyc_submission_makes_the_kyc_pending_with_its_document() {
    let account = replay(vec![opened(), kyc_submitted()]);
    assert_eq!(account.kyc, KycStatus::Pending);
    assert_eq!(account.kyc_document_ref.as_deref(), Some("doc-1"));
}

#[test]
fn a_pending_kyc_is_approved() {
    AccountTest::with(())
        .given(vec![opened(), kyc_submitted()])
        .when(AccountCommand::ApproveKyc)
        .then_expect_events(vec![AccountEvent::KycApproved]);
    assert_eq!(
        replay(vec![opened(), kyc_submitted(), AccountEvent::KycApproved]).kyc,
        KycStatus::Approved
    );
}

#[test]
fn a_pending_kyc_is_rejected_with_a_reason() {
    AccountTest::with(())
        .given(vec![opened(), kyc_submitted()])
        .when(AccountCommand::RejectKyc {
            reason: "blurry scan".to_owned(),
        })
        .then_expect_events(vec![AccountEvent::KycRejected {
            reason: "blurry scan".to_owned(),
        }]);
    let account = replay(vec![
        opened(),
        kyc_submitted(),
        AccountEvent::KycRejected {
            reason: "blurry scan".to_owned(),
        },
    ]);
    assert_eq!(account.kyc, KycStatus::Rejected);
}

#[test]
fn kyc_cannot_be_approved_without_a_pending_submission() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(AccountCommand::ApproveKyc)
        .then_expect_error(AccountError::InvalidKycState(KycStatus::None));
}

#[test]
fn kyc_cannot_be_rejected_without_a_pending_submission() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(AccountCommand::RejectKyc {
            reason: "nothing to reject".to_owned(),
        })
        .then_expect_error(AccountError::InvalidKycState(KycStatus::None));
}

#[test]
fn an_approved_kyc_cannot_be_approved_again() {
    AccountTest::with(())
        .given(vec![opened(), kyc_submitted(), AccountEvent::KycApproved])
        .when(AccountCommand::ApproveKyc)
        .then_expect_error(AccountError::InvalidKycState(KycStatus::Approved));
}

#[test]
fn an_approved_kyc_cannot_be_rejected_afterwards() {
    AccountTest::with(())
        .given(vec![opened(), kyc_submitted(), AccountEvent::KycApproved])
        .when(AccountCommand::RejectKyc {
            reason: "changed my mind".to_owned(),
        })
        .then_expect_error(AccountError::InvalidKycState(KycStatus::Approved));
}

#[test]
fn a_rejected_kyc_cannot_be_approved_without_a_new_submission() {
    AccountTest::with(())
        .given(vec![
            opened(),
            kyc_submitted(),
            AccountEvent::KycRejected {
                reason: "blurry scan".to_owned(),
            },
        ])
        .when(AccountCommand::ApproveKyc)
        .then_expect_error(AccountError::InvalidKycState(KycStatus::Rejected));
}

#[test]
fn kyc_cannot_be_submitted_after_approval() {
    AccountTest::with(())
        .given(vec![opened(), kyc_submitted(), AccountEvent::KycApproved])
        .when(AccountCommand::SubmitKyc {
            document_ref: "doc-2".to_owned(),
        })
        .then_expect_error(AccountError::InvalidKycState(KycStatus::Approved));
}

#[test]
fn kyc_can_be_resubmitted_after_a_rejection() {
    AccountTest::with(())
        .given(vec![
            opened(),
            kyc_submitted(),
            AccountEvent::KycRejected {
                reason: "blurry scan".to_owned(),
            },
        ])
        .when(AccountCommand::SubmitKyc {
            document_ref: "doc-2".to_owned(),
        })
        .then_expect_events(vec![AccountEvent::KycSubmitted {
            document_ref: "doc-2".to_owned(),
        }]);
}

#[test]
fn a_resubmission_after_rejection_can_then_be_approved() {
    AccountTest::with(())
        .given(vec![
            opened(),
            kyc_submitted(),
            AccountEvent::KycRejected {
                reason: "blurry scan".to_owned(),
            },
            AccountEvent::KycSubmitted {
                document_ref: "doc-2".to_owned(),
            },
        ])
        .when(AccountCommand::ApproveKyc)
        .then_expect_events(vec![AccountEvent::KycApproved]);
}

#[test]
fn a_suspended_account_cannot_submit_kyc() {
    AccountTest::with(())
        .given(vec![opened(), suspended()])
        .when(AccountCommand::SubmitKyc {
            document_ref: "doc-1".to_owned(),
        })
        .then_expect_error(AccountError::InvalidState(AccountStatus::Suspended));
}

#[test]
fn a_closed_account_cannot_submit_kyc() {
    AccountTest::with(())
        .given(vec![opened(), closed()])
        .when(AccountCommand::SubmitKyc {
            document_ref: "doc-1".to_owned(),
        })
        .then_expect_error(AccountError::InvalidState(AccountStatus::Closed));
}

#[test]
fn kyc_cannot_be_decided_for_an_unopened_account() {
    AccountTest::with(())
        .given_no_previous_events()
        .when(AccountCommand::ApproveKyc)
        .then_expect_error(AccountError::InvalidState(AccountStatus::Unopened));
    AccountTest::with(())
        .given_no_previous_events()
        .when(AccountCommand::RejectKyc {
            reason: "no account".to_owned(),
        })
        .then_expect_error(AccountError::InvalidState(AccountStatus::Unopened));
}

// ---------------------------------------------------------------------------------------------
// SuspendAccount / ReinstateAccount
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_account_is_suspended_with_a_reason() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(AccountCommand::Suspend {
            reason: "chargeback review".to_owned(),
        })
        .then_expect_events(vec![suspended()]);
    assert_eq!(
        replay(vec![opened(), suspended()]).status,
        AccountStatus::Suspended
    );
}

#[test]
fn a_suspended_account_cannot_be_suspended_again() {
    AccountTest::with(())
        .given(vec![opened(), suspended()])
        .when(AccountCommand::Suspend {
            reason: "again".to_owned(),
        })
        .then_expect_error(AccountError::InvalidState(AccountStatus::Suspended));
}

#[test]
fn a_closed_account_cannot_be_suspended() {
    AccountTest::with(())
        .given(vec![opened(), closed()])
        .when(AccountCommand::Suspend {
            reason: "too late".to_owned(),
        })
        .then_expect_error(AccountError::InvalidState(AccountStatus::Closed));
}

#[test]
fn an_unopened_account_cannot_be_suspended() {
    AccountTest::with(())
        .given_no_previous_events()
        .when(AccountCommand::Suspend {
            reason: "no account".to_owned(),
        })
        .then_expect_error(AccountError::InvalidState(AccountStatus::Unopened));
}

#[test]
fn a_suspended_account_is_reinstated() {
    AccountTest::with(())
        .given(vec![opened(), suspended()])
        .when(AccountCommand::Reinstate)
        .then_expect_events(vec![AccountEvent::AccountReinstated]);
    assert_eq!(
        replay(vec![opened(), suspended(), AccountEvent::AccountReinstated]).status,
        AccountStatus::Active
    );
}

#[test]
fn an_active_account_cannot_be_reinstated() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(AccountCommand::Reinstate)
        .then_expect_error(AccountError::InvalidState(AccountStatus::Active));
}

#[test]
fn a_closed_account_cannot_be_reinstated() {
    AccountTest::with(())
        .given(vec![opened(), suspended(), closed()])
        .when(AccountCommand::Reinstate)
        .then_expect_error(AccountError::InvalidState(AccountStatus::Closed));
}

// ---------------------------------------------------------------------------------------------
// CloseAccount
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_account_without_obligations_is_closed() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(close_command(Obligations::default()))
        .then_expect_events(vec![closed()]);
    assert_eq!(
        replay(vec![opened(), closed()]).status,
        AccountStatus::Closed
    );
}

#[test]
fn a_suspended_account_without_obligations_can_be_closed() {
    AccountTest::with(())
        .given(vec![opened(), suspended()])
        .when(close_command(Obligations::default()))
        .then_expect_events(vec![closed()]);
}

#[test]
fn an_account_with_a_non_empty_wallet_cannot_be_closed() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(close_command(Obligations {
            non_empty_wallets: 1,
            ..Obligations::default()
        }))
        .then_expect_error(AccountError::HasObligations);
}

#[test]
fn an_account_party_to_a_funded_escrow_cannot_be_closed() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(close_command(Obligations {
            funded_escrows: 2,
            ..Obligations::default()
        }))
        .then_expect_error(AccountError::HasObligations);
}

#[test]
fn an_account_owning_an_open_pot_cannot_be_closed() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(close_command(Obligations {
            open_pots: 1,
            ..Obligations::default()
        }))
        .then_expect_error(AccountError::HasObligations);
}

#[test]
fn a_suspended_account_with_obligations_cannot_be_closed() {
    let obligations = Obligations {
        non_empty_wallets: 1,
        funded_escrows: 1,
        open_pots: 1,
    };
    AccountTest::with(())
        .given(vec![opened(), suspended()])
        .when(close_command(obligations))
        .then_expect_error(AccountError::HasObligations);
}

#[test]
fn closing_with_obligations_is_reported_as_account_has_obligations() {
    let result = TestFramework::<Account>::with(())
        .given(vec![opened()])
        .when(close_command(Obligations {
            non_empty_wallets: 3,
            ..Obligations::default()
        }))
        .inspect_result();
    let error = result.expect_err("closing with a non-empty wallet must be refused");
    assert_eq!(error, AccountError::HasObligations);
    assert_eq!(error.code(), "account_has_obligations");
}

#[test]
fn an_account_cannot_be_closed_twice() {
    AccountTest::with(())
        .given(vec![opened(), closed()])
        .when(close_command(Obligations::default()))
        .then_expect_error(AccountError::InvalidState(AccountStatus::Closed));
}

#[test]
fn an_unopened_account_cannot_be_closed() {
    AccountTest::with(())
        .given_no_previous_events()
        .when(close_command(Obligations::default()))
        .then_expect_error(AccountError::InvalidState(AccountStatus::Unopened));
}

// ---------------------------------------------------------------------------------------------
// ErasePersonalData
// ---------------------------------------------------------------------------------------------

#[test]
fn a_closed_accounts_personal_data_is_erased() {
    AccountTest::with(())
        .given(vec![opened(), closed()])
        .when(AccountCommand::ErasePersonalData)
        .then_expect_events(vec![AccountEvent::PersonalDataErased]);
}

#[test]
fn an_active_accounts_personal_data_cannot_be_erased() {
    AccountTest::with(())
        .given(vec![opened()])
        .when(AccountCommand::ErasePersonalData)
        .then_expect_error(AccountError::InvalidState(AccountStatus::Active));
}

#[test]
fn a_suspended_accounts_personal_data_cannot_be_erased() {
    AccountTest::with(())
        .given(vec![opened(), suspended()])
        .when(AccountCommand::ErasePersonalData)
        .then_expect_error(AccountError::InvalidState(AccountStatus::Suspended));
}

#[test]
fn an_unopened_accounts_personal_data_cannot_be_erased() {
    AccountTest::with(())
        .given_no_previous_events()
        .when(AccountCommand::ErasePersonalData)
        .then_expect_error(AccountError::InvalidState(AccountStatus::Unopened));
}

#[test]
fn personal_data_cannot_be_erased_twice() {
    AccountTest::with(())
        .given(vec![opened(), closed(), AccountEvent::PersonalDataErased])
        .when(AccountCommand::ErasePersonalData)
        .then_expect_error(AccountError::InvalidState(AccountStatus::Closed));
}

#[test]
fn erasing_personal_data_clears_the_personal_fields() {
    let account = replay(vec![
        opened(),
        kyc_submitted(),
        AccountEvent::KycApproved,
        AccountEvent::ProfileUpdated {
            display_name: Some("Alice A.".to_owned()),
            preferences: None,
        },
        closed(),
        AccountEvent::PersonalDataErased,
    ]);
    assert!(account.erased);
    assert_eq!(account.email, None);
    assert_eq!(account.display_name, None);
    assert_eq!(account.birth_date, None);
    assert_eq!(account.kyc_document_ref, None);
    // The account itself stays what it was: closed, same id.
    assert_eq!(account.status, AccountStatus::Closed);
    assert_eq!(account.id, account_id());
}

#[test]
fn an_erased_account_is_no_longer_a_minor() {
    let child = AccountEvent::AccountOpened {
        account_id: account_id(),
        subject: "auth0|kid".to_owned(),
        email: "kid@example.com".to_owned(),
        display_name: "Kid".to_owned(),
        birth_date: Some(date(2015, 1, 1)),
        country: None,
    };
    let today = date(2025, 1, 1);
    assert!(replay(vec![child.clone(), closed()]).is_minor(today));
    assert!(!replay(vec![child, closed(), AccountEvent::PersonalDataErased]).is_minor(today));
}

#[test]
fn a_closed_account_refuses_every_other_command() {
    let closed_account = || AccountTest::with(()).given(vec![opened(), closed()]);
    let refused = AccountError::InvalidState(AccountStatus::Closed);
    closed_account()
        .when(update_name("x"))
        .then_expect_error(refused.clone());
    closed_account()
        .when(AccountCommand::SubmitKyc {
            document_ref: "doc".to_owned(),
        })
        .then_expect_error(refused.clone());
    closed_account()
        .when(AccountCommand::Suspend {
            reason: "x".to_owned(),
        })
        .then_expect_error(refused.clone());
    closed_account()
        .when(AccountCommand::Reinstate)
        .then_expect_error(refused.clone());
    closed_account()
        .when(close_command(Obligations::default()))
        .then_expect_error(refused);
}

// ---------------------------------------------------------------------------------------------
// is_minor
// ---------------------------------------------------------------------------------------------

fn born(birth_date: Option<NaiveDate>) -> Account {
    replay(vec![AccountEvent::AccountOpened {
        account_id: account_id(),
        subject: "auth0|someone".to_owned(),
        email: "someone@example.com".to_owned(),
        display_name: "Someone".to_owned(),
        birth_date,
        country: None,
    }])
}

#[test]
fn an_account_holder_under_eighteen_is_a_minor() {
    let account = born(Some(date(2010, 6, 15)));
    assert!(account.is_minor(date(2025, 1, 1)));
    assert!(account.is_minor(date(2028, 6, 14)));
}

#[test]
fn an_account_holder_is_an_adult_from_the_eighteenth_birthday() {
    let account = born(Some(date(2010, 6, 15)));
    assert!(!account.is_minor(date(2028, 6, 15)));
    assert!(!account.is_minor(date(2040, 1, 1)));
}

#[test]
fn an_account_holder_born_on_a_leap_day_is_a_minor_until_late_february() {
    let account = born(Some(date(2008, 2, 29)));
    assert!(account.is_minor(date(2026, 2, 27)));
    assert!(!account.is_minor(date(2026, 3, 1)));
}

#[test]
fn an_account_without_a_birth_date_is_not_a_minor() {
    assert!(!born(None).is_minor(date(2025, 1, 1)));
    assert!(!Account::default().is_minor(date(2025, 1, 1)));
}

// ---------------------------------------------------------------------------------------------
// Rule codes
// ---------------------------------------------------------------------------------------------

#[test]
fn every_account_error_reports_its_stable_rule_code() {
    for status in [
        AccountStatus::Unopened,
        AccountStatus::Active,
        AccountStatus::Suspended,
        AccountStatus::Closed,
    ] {
        assert_eq!(AccountError::InvalidState(status).code(), "invalid_state");
    }
    for kyc in [
        KycStatus::None,
        KycStatus::Pending,
        KycStatus::Approved,
        KycStatus::Rejected,
    ] {
        assert_eq!(AccountError::InvalidKycState(kyc).code(), "invalid_state");
    }
    assert_eq!(
        AccountError::HasObligations.code(),
        "account_has_obligations"
    );
}
