//! The Account aggregate: the person or business behind everything else.

use crate::RuleCode;
use chrono::NaiveDate;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An account's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Not opened yet (no events).
    #[default]
    Unopened,
    /// Normal operation.
    Active,
    /// Issues no command and receives no transfer.
    Suspended,
    /// Terminal.
    Closed,
}

/// Where the account's KYC stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KycStatus {
    /// Nothing submitted.
    #[default]
    None,
    /// A submission awaits a decision.
    Pending,
    /// Approved.
    Approved,
    /// Rejected (a new submission is allowed).
    Rejected,
}

/// Profile preferences an owner may set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Opt in to a public pot created 30 days before each birthday.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday_pot: Option<bool>,
}

/// The state of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account's id.
    pub id: Uuid,
    /// The authentication subject bound to the account.
    pub subject: String,
    /// Contact e-mail (personal data).
    pub email: Option<String>,
    /// Display name (personal data).
    pub display_name: Option<String>,
    /// Birth date (personal data); under 18 makes a minor.
    pub birth_date: Option<NaiveDate>,
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
    /// Preferences.
    pub preferences: Preferences,
    /// KYC state.
    pub kyc: KycStatus,
    /// The pending or last KYC document reference (personal data).
    pub kyc_document_ref: Option<String>,
    /// Lifecycle state.
    pub status: AccountStatus,
    /// Whether personal data has been erased.
    pub erased: bool,
}

/// What an account still holds, checked by CloseAccount (resolved by the command layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct Obligations {
    /// Owned wallets with a non-zero balance or holds.
    pub non_empty_wallets: u32,
    /// Funded escrows the account is a party to.
    pub funded_escrows: u32,
    /// Open pots the account owns.
    pub open_pots: u32,
}

/// What an account can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub enum AccountCommand {
    /// OpenAccount (subject and e-mail uniqueness are checked by the caller).
    Open {
        /// The new account's id.
        account_id: Uuid,
        /// The subject to bind.
        subject: String,
        /// Contact e-mail.
        email: String,
        /// Display name.
        display_name: String,
        /// Birth date.
        birth_date: Option<NaiveDate>,
        /// Country.
        country: Option<String>,
    },
    /// UpdateProfile.
    UpdateProfile {
        /// New display name.
        display_name: Option<String>,
        /// New preferences.
        preferences: Option<Preferences>,
    },
    /// SubmitKyc.
    SubmitKyc {
        /// Reference of the submitted document.
        document_ref: String,
    },
    /// ApproveKyc.
    ApproveKyc,
    /// RejectKyc.
    RejectKyc {
        /// Why.
        reason: String,
    },
    /// SuspendAccount.
    Suspend {
        /// Why.
        reason: String,
    },
    /// ReinstateAccount.
    Reinstate,
    /// CloseAccount.
    Close {
        /// Why.
        reason: String,
        /// What the account still holds.
        obligations: Obligations,
    },
    /// ErasePersonalData.
    ErasePersonalData,
}

/// What happened to an account. Stored names are the variant names; the stored versions are
/// in `schemas::registry` (the events with personal fields are stored sealed, version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AccountEvent {
    /// The account was opened.
    AccountOpened {
        /// The account's id.
        account_id: Uuid,
        /// The bound subject.
        subject: String,
        /// Contact e-mail.
        email: String,
        /// Display name.
        display_name: String,
        /// Birth date.
        birth_date: Option<NaiveDate>,
        /// Country.
        country: Option<String>,
    },
    /// The profile changed.
    ProfileUpdated {
        /// New display name.
        display_name: Option<String>,
        /// New preferences.
        preferences: Option<Preferences>,
    },
    /// KYC documents were submitted.
    KycSubmitted {
        /// The document reference.
        document_ref: String,
    },
    /// KYC was approved.
    KycApproved,
    /// KYC was rejected.
    KycRejected {
        /// Why.
        reason: String,
    },
    /// The account was suspended.
    AccountSuspended {
        /// Why.
        reason: String,
    },
    /// The account was reinstated.
    AccountReinstated,
    /// The account was closed.
    AccountClosed {
        /// Why.
        reason: String,
    },
    /// The account's personal data was erased.
    PersonalDataErased,
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AccountOpened { .. } => "AccountOpened",
            Self::ProfileUpdated { .. } => "ProfileUpdated",
            Self::KycSubmitted { .. } => "KycSubmitted",
            Self::KycApproved => "KycApproved",
            Self::KycRejected { .. } => "KycRejected",
            Self::AccountSuspended { .. } => "AccountSuspended",
            Self::AccountReinstated => "AccountReinstated",
            Self::AccountClosed { .. } => "AccountClosed",
            Self::PersonalDataErased => "PersonalDataErased",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why an account refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account's state forbids the command.
    #[error("the account is {0:?}, which forbids this")]
    InvalidState(AccountStatus),
    /// The KYC state forbids the command.
    #[error("the KYC state is {0:?}, which forbids this")]
    InvalidKycState(KycStatus),
    /// CloseAccount while money or obligations remain.
    #[error("the account still has non-empty wallets, funded escrows or open pots")]
    HasObligations,
}

impl RuleCode for AccountError {
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidState(_) | Self::InvalidKycState(_) => "invalid_state",
            Self::HasObligations => "account_has_obligations",
        }
    }
}

impl Account {
    /// Decides a command against the current state.
    pub fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand as C;
        use AccountEvent as E;
        let require = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(AccountError::InvalidState(self.status))
            }
        };
        match command {
            C::Open {
                account_id,
                subject,
                email,
                display_name,
                birth_date,
                country,
            } => {
                require(self.status == AccountStatus::Unopened)?;
                Ok(vec![E::AccountOpened {
                    account_id,
                    subject,
                    email,
                    display_name,
                    birth_date,
                    country,
                }])
            }
            C::UpdateProfile {
                display_name,
                preferences,
            } => {
                require(self.status == AccountStatus::Active)?;
                Ok(vec![E::ProfileUpdated {
                    display_name,
                    preferences,
                }])
            }
            C::SubmitKyc { document_ref } => {
                require(self.status == AccountStatus::Active)?;
                if self.kyc == KycStatus::Approved {
                    return Err(AccountError::InvalidKycState(self.kyc));
                }
                Ok(vec![E::KycSubmitted { document_ref }])
            }
            C::ApproveKyc | C::RejectKyc { .. } => {
                require(matches!(
                    self.status,
                    AccountStatus::Active | AccountStatus::Suspended
                ))?;
                if self.kyc != KycStatus::Pending {
                    return Err(AccountError::InvalidKycState(self.kyc));
                }
                Ok(vec![match command {
                    C::RejectKyc { reason } => E::KycRejected { reason },
                    _ => E::KycApproved,
                }])
            }
            C::Suspend { reason } => {
                require(self.status == AccountStatus::Active)?;
                Ok(vec![E::AccountSuspended { reason }])
            }
            C::Reinstate => {
                require(self.status == AccountStatus::Suspended)?;
                Ok(vec![E::AccountReinstated])
            }
            C::Close {
                reason,
                obligations,
            } => {
                require(matches!(
                    self.status,
                    AccountStatus::Active | AccountStatus::Suspended
                ))?;
                if obligations != Obligations::default() {
                    return Err(AccountError::HasObligations);
                }
                Ok(vec![E::AccountClosed { reason }])
            }
            C::ErasePersonalData => {
                require(self.status == AccountStatus::Closed && !self.erased)?;
                Ok(vec![E::PersonalDataErased])
            }
        }
    }

    /// Whether the account holder is under 18 on `today`.
    pub fn is_minor(&self, today: NaiveDate) -> bool {
        self.birth_date
            .and_then(|b| b.checked_add_months(chrono::Months::new(18 * 12)))
            .is_some_and(|adult| today < adult)
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
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
        use AccountEvent as E;
        match event {
            E::AccountOpened {
                account_id,
                subject,
                email,
                display_name,
                birth_date,
                country,
            } => {
                self.id = account_id;
                self.subject = subject;
                self.email = Some(email);
                self.display_name = Some(display_name);
                self.birth_date = birth_date;
                self.country = country;
                self.status = AccountStatus::Active;
            }
            E::ProfileUpdated {
                display_name,
                preferences,
            } => {
                if let Some(name) = display_name {
                    self.display_name = Some(name);
                }
                if let Some(p) = preferences {
                    self.preferences = p;
                }
            }
            E::KycSubmitted { document_ref } => {
                self.kyc = KycStatus::Pending;
                self.kyc_document_ref = Some(document_ref);
            }
            E::KycApproved => self.kyc = KycStatus::Approved,
            E::KycRejected { .. } => self.kyc = KycStatus::Rejected,
            E::AccountSuspended { .. } => self.status = AccountStatus::Suspended,
            E::AccountReinstated => self.status = AccountStatus::Active,
            E::AccountClosed { .. } => self.status = AccountStatus::Closed,
            E::PersonalDataErased => {
                self.erased = true;
                self.email = None;
                self.display_name = None;
                self.birth_date = None;
                self.kyc_document_ref = None;
            }
        }
    }
}
