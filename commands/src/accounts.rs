//! Account use cases: who may do what, and the facts each command needs.

use crate::repo::Loaded;
use crate::service::{CommandError, CommandResult, CommandService, Envelope, Refusal, Role};
use crate::unit::{change, ClaimSpec, Decision, Locks, OnTaken, Unit};
use chrono::NaiveDate;
use domain::account::{Account, AccountCommand, AccountStatus, Obligations, Preferences};
use domain::values::{bounded_text, country, email};
use domain::InvalidInput;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Claim scope: one account per subject.
pub const SUBJECT_SCOPE: &str = "account_subject";
/// Claim scope: what may keep an account from closing (`<account>:pot:<id>` for owned
/// pots, `<account>:escrow:<id>` for escrows it is a party to).
pub const OBLIGATION_SCOPE: &str = "obligation";

/// Claim scope: e-mail addresses, unique case-insensitively (stored as a hash).
pub const EMAIL_SCOPE: &str = "account_email";

/// OpenAccount input.
#[derive(Debug, Clone)]
pub struct OpenAccount {
    /// The subject to bind (admin only; defaults to the caller).
    pub subject: Option<String>,
    /// Contact e-mail.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Birth date.
    pub birth_date: Option<NaiveDate>,
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<String>,
}

/// Account commands on an existing account.
#[derive(Debug, Clone)]
pub enum AccountAction {
    /// UpdateProfile.
    UpdateProfile {
        /// New display name.
        display_name: Option<String>,
        /// New preferences.
        preferences: Option<Preferences>,
    },
    /// SubmitKyc.
    SubmitKyc {
        /// Document reference.
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
    },
    /// ErasePersonalData.
    ErasePersonalData,
}

fn email_key(email: &str) -> String {
    hex::encode(Sha256::digest(email.trim().to_lowercase().as_bytes()))
}

fn reason(value: &str) -> Result<String, InvalidInput> {
    bounded_text("reason", value, 1, 500)
}

impl CommandService {
    /// The caller's own account, which must be active, for a command issued as its owner.
    pub(crate) async fn acting_account(
        &self,
        env: &Envelope,
    ) -> Result<Loaded<Account>, CommandError> {
        if !env.actor.has(Role::Customer) {
            return Err(Refusal::forbidden("this needs the customer role").into());
        }
        let Some(id) = self.account_of(&env.actor.subject).await? else {
            return Err(Refusal::new(403, "no_account", "the subject has no account yet").into());
        };
        let account = self.accounts.read(self.store.as_ref(), id).await?;
        if account.state.status != AccountStatus::Active {
            return Err(Refusal::new(
                403,
                "account_not_active",
                "the caller's account is not active",
            )
            .into());
        }
        Ok(account)
    }

    /// OpenAccount.
    pub async fn open_account(
        &self,
        env: &Envelope,
        input: OpenAccount,
    ) -> Result<CommandResult, CommandError> {
        let email = email("email", &input.email)?;
        let display_name = bounded_text("display_name", &input.display_name, 1, 100)?;
        let country = input
            .country
            .as_deref()
            .map(|c| country("country", c))
            .transpose()?;
        let (subject, role) = match input.subject {
            Some(s) if env.actor.has(Role::Admin) => {
                (bounded_text("subject", &s, 1, 200)?, Role::Admin)
            }
            Some(_) => {
                return Err(Refusal::forbidden(
                    "only an admin opens an account for another subject",
                )
                .into())
            }
            None if env.actor.has(Role::Customer) || env.actor.has(Role::Admin) => {
                let role = if env.actor.has(Role::Customer) {
                    Role::Customer
                } else {
                    Role::Admin
                };
                (env.actor.subject.clone(), role)
            }
            None => return Err(Refusal::forbidden("this needs the customer or admin role").into()),
        };
        let account_exists =
            Refusal::new(409, "account_exists", "the subject already has an account");
        let email_taken = Refusal::new(409, "email_taken", "the e-mail address is taken");
        if self.account_of(&subject).await?.is_some() {
            return Err(account_exists.into());
        }
        if self
            .store
            .claim(EMAIL_SCOPE, &email_key(&email))
            .await?
            .is_some()
        {
            return Err(email_taken.into());
        }
        let id = Uuid::now_v7();
        let command = AccountCommand::Open {
            account_id: id,
            subject: subject.clone(),
            email: email.clone(),
            display_name,
            birth_date: input.birth_date,
            country,
        };
        let claims = vec![
            ClaimSpec {
                scope: SUBJECT_SCOPE,
                key: subject.clone(),
                stream: id,
                on_taken: OnTaken::Refuse(account_exists),
            },
            ClaimSpec {
                scope: EMAIL_SCOPE,
                key: email_key(&email),
                stream: id,
                on_taken: OnTaken::Refuse(email_taken),
            },
        ];
        let unit = Unit {
            role,
            primary: id,
            created: true,
        };
        let locks = Locks::default().new_aggregate::<Account>(id);
        let result = self
            .run_unit(env, unit, locks, |_| {
                Ok(Decision {
                    changes: vec![change::<Account>(id, command.clone())],
                    claims: claims.clone(),
                    result_id: None,
                })
            })
            .await?;
        self.remember_subject(&subject, id);
        Ok(result)
    }

    /// Every other account command.
    pub async fn account_command(
        &self,
        env: &Envelope,
        id: Uuid,
        action: AccountAction,
    ) -> Result<CommandResult, CommandError> {
        let admin = env.actor.has(Role::Admin);
        let owner_only = |env: Envelope| async move {
            let me = self.acting_account(&env).await?;
            if me.state.id == id {
                Ok(Role::Customer)
            } else {
                Err(CommandError::from(Refusal::forbidden("not your account")))
            }
        };
        let admin_only = || {
            if admin {
                Ok(Role::Admin)
            } else {
                Err(CommandError::from(Refusal::forbidden(
                    "this needs the admin role",
                )))
            }
        };
        let (role, command) = match action {
            AccountAction::UpdateProfile {
                display_name,
                preferences,
            } => {
                let display_name = display_name
                    .map(|n| bounded_text("display_name", &n, 1, 100))
                    .transpose()?;
                (
                    owner_only(env.clone()).await?,
                    AccountCommand::UpdateProfile {
                        display_name,
                        preferences,
                    },
                )
            }
            AccountAction::SubmitKyc { document_ref } => {
                let document_ref = bounded_text("document_ref", &document_ref, 1, 200)?;
                (
                    owner_only(env.clone()).await?,
                    AccountCommand::SubmitKyc { document_ref },
                )
            }
            AccountAction::ApproveKyc => (admin_only()?, AccountCommand::ApproveKyc),
            AccountAction::RejectKyc { reason: r } => (
                admin_only()?,
                AccountCommand::RejectKyc {
                    reason: reason(&r)?,
                },
            ),
            AccountAction::Suspend { reason: r } => (
                admin_only()?,
                AccountCommand::Suspend {
                    reason: reason(&r)?,
                },
            ),
            AccountAction::Reinstate => (admin_only()?, AccountCommand::Reinstate),
            AccountAction::ErasePersonalData => (admin_only()?, AccountCommand::ErasePersonalData),
            AccountAction::Close { reason: r } => {
                let r = reason(&r)?;
                let role = if admin {
                    Role::Admin
                } else {
                    owner_only(env.clone()).await?
                };
                let obligations = self.obligations(id).await?;
                (
                    role,
                    AccountCommand::Close {
                        reason: r,
                        obligations,
                    },
                )
            }
        };
        let unit = Unit {
            role,
            primary: id,
            created: false,
        };
        let locks = Locks::default().existing::<Account>(id);
        self.run_unit(env, unit, locks, |locked| {
            locked.existing::<Account>(id, "account")?;
            Ok(Decision::of(vec![change::<Account>(id, command.clone())]))
        })
        .await
    }

    /// What an account still holds (CloseAccount's facts): non-empty wallets, funded escrows
    /// it is a party to, open pots it owns.
    async fn obligations(&self, account: Uuid) -> Result<Obligations, CommandError> {
        let mut o = Obligations::default();
        let prefix = format!("{account}:");
        for claim in self
            .store
            .claims_with_prefix(crate::wallets::WALLET_SCOPE, &prefix)
            .await?
        {
            let w = self
                .wallets
                .read(self.store.as_ref(), claim.stream_id)
                .await?;
            if w.state.balance != 0 || w.state.held != 0 {
                o.non_empty_wallets += 1;
            }
        }
        for claim in self
            .store
            .claims_with_prefix(OBLIGATION_SCOPE, &prefix)
            .await?
        {
            if claim.key.contains(":escrow:") {
                let e = self
                    .escrows
                    .read(self.store.as_ref(), claim.stream_id)
                    .await?;
                if e.state.status == domain::escrow::EscrowStatus::Funded {
                    o.funded_escrows += 1;
                }
            } else if claim.key.contains(":pot:") {
                let p = self.pots.read(self.store.as_ref(), claim.stream_id).await?;
                if p.state.status == domain::pot::PotStatus::Open {
                    o.open_pots += 1;
                }
            }
        }
        Ok(o)
    }

    /// GET an account: its owner, admins and auditors may read it.
    pub async fn get_account(
        &self,
        env: &Envelope,
        id: Uuid,
    ) -> Result<Loaded<Account>, CommandError> {
        let account = self.accounts.read(self.store.as_ref(), id).await?;
        if account.version == 0 {
            return Err(Refusal::not_found("account").into());
        }
        let staff = env.actor.has(Role::Admin) || env.actor.has(Role::Auditor);
        if !staff && account.state.subject != env.actor.subject {
            return Err(Refusal::forbidden("not your account").into());
        }
        Ok(account)
    }
}

/// The obligation claims of an escrow's two parties.
pub(crate) fn escrow_parties(
    escrow: Uuid,
    buyer: Uuid,
    seller: Uuid,
) -> Vec<crate::unit::ClaimSpec> {
    [buyer, seller]
        .into_iter()
        .map(|party| crate::unit::ClaimSpec {
            scope: OBLIGATION_SCOPE,
            key: format!("{party}:escrow:{escrow}"),
            stream: escrow,
            on_taken: crate::unit::OnTaken::Refuse(Refusal::new(
                409,
                "concurrency_conflict",
                "try again",
            )),
        })
        .collect()
}
