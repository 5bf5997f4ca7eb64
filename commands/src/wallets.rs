//! Wallet use cases: open, deposit, withdraw, transfer, freeze, close.

use crate::repo::Loaded;
use crate::service::{CommandError, CommandResult, CommandService, Envelope, Refusal, Role};
use crate::unit::{change, changes, ClaimSpec, Decision, Locks, OnTaken, Unit};
use domain::account::{AccountStatus, KycStatus};
use domain::values::bounded_text;
use domain::wallet::MoneyReason;
use domain::wallet::{Wallet, WalletCommand};
use domain::{Amount, Currency};
use uuid::Uuid;

/// Claim scope: one wallet per owner and currency (`<owner>:<currency>`).
pub const WALLET_SCOPE: &str = "wallet";
/// Claim scope: deposit references, unique per wallet (`<wallet>:<ref>`).
pub const DEPOSIT_REF_SCOPE: &str = "deposit_ref";

/// Where a credit to an account lands: its wallet in the currency, or one opened on the fly.
pub(crate) struct Payee {
    /// The wallet credited.
    pub wallet: Uuid,
    open: Option<(Uuid, Currency, ClaimSpec)>,
}

impl Payee {
    /// Adds the wallet to a command's locks.
    pub fn locks(&self, locks: Locks) -> Locks {
        match &self.open {
            Some(_) => locks.new_aggregate::<Wallet>(self.wallet),
            None => locks.existing::<Wallet>(self.wallet),
        }
    }

    /// The wallet's change: opened first if needed, then credited.
    pub fn credit(
        &self,
        amount: Amount,
        reason: MoneyReason,
        reference: Uuid,
    ) -> Box<dyn crate::unit::Change> {
        let credit = WalletCommand::Credit {
            amount,
            reason,
            reference,
        };
        match &self.open {
            Some((owner, currency, _)) => changes::<Wallet>(
                self.wallet,
                vec![
                    WalletCommand::Open {
                        wallet_id: self.wallet,
                        owner: *owner,
                        currency: *currency,
                    },
                    credit,
                ],
            ),
            None => change::<Wallet>(self.wallet, credit),
        }
    }

    /// The wallet's claim when it is opened here.
    pub fn claims(&self) -> Vec<ClaimSpec> {
        self.open.iter().map(|(_, _, c)| c.clone()).collect()
    }
}

/// Wallet commands on an existing wallet.
#[derive(Debug, Clone)]
pub enum WalletAction {
    /// Deposit.
    Deposit {
        /// Minor units.
        amount: i64,
        /// The payment provider's reference.
        external_ref: String,
    },
    /// Withdraw.
    Withdraw {
        /// Minor units.
        amount: i64,
        /// The payment provider's reference.
        external_ref: String,
    },
    /// Freeze.
    Freeze {
        /// Why.
        reason: String,
    },
    /// Unfreeze.
    Unfreeze {
        /// Why.
        reason: String,
    },
    /// CloseWallet.
    Close,
}

/// Transfer input.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Source wallet.
    pub from_wallet: Uuid,
    /// Destination wallet.
    pub to_wallet: Uuid,
    /// Minor units.
    pub amount: i64,
    /// An optional note.
    pub memo: Option<String>,
}

fn external_ref(value: &str) -> Result<String, CommandError> {
    Ok(bounded_text("external_ref", value, 1, 100)?)
}

fn reason(value: &str) -> Result<String, CommandError> {
    Ok(bounded_text("reason", value, 1, 500)?)
}

fn exists(view_version: i64) -> Result<(), CommandError> {
    if view_version == 0 {
        Err(Refusal::not_found("wallet").into())
    } else {
        Ok(())
    }
}

impl CommandService {
    /// The account's wallet in `currency`, or a new one to open in the same commit.
    pub(crate) async fn payee(
        &self,
        owner: Uuid,
        currency: Currency,
    ) -> Result<Payee, CommandError> {
        let key = format!("{owner}:{currency}");
        if let Some(claim) = self.store.claim(WALLET_SCOPE, &key).await? {
            return Ok(Payee {
                wallet: claim.stream_id,
                open: None,
            });
        }
        let wallet = Uuid::now_v7();
        let raced = Refusal::new(
            409,
            "concurrency_conflict",
            "the payee's wallet was opened concurrently; try again",
        );
        let claim = ClaimSpec {
            scope: WALLET_SCOPE,
            key,
            stream: wallet,
            on_taken: OnTaken::Refuse(raced),
        };
        Ok(Payee {
            wallet,
            open: Some((owner, currency, claim)),
        })
    }

    /// OpenWallet: for the caller's own account, or (admin) for `owner`.
    pub async fn open_wallet(
        &self,
        env: &Envelope,
        currency: &str,
        owner: Option<Uuid>,
    ) -> Result<CommandResult, CommandError> {
        let currency = Currency::parse("currency", currency)?;
        let (owner, role) = match owner {
            Some(o) if env.actor.has(Role::Admin) => (o, Role::Admin),
            _ => {
                let me = self.acting_account(env).await?;
                if owner.is_some_and(|o| o != me.state.id) {
                    return Err(Refusal::forbidden(
                        "only an admin opens a wallet for another account",
                    )
                    .into());
                }
                (me.state.id, Role::Customer)
            }
        };
        let account = self.accounts.read(self.store.as_ref(), owner).await?;
        if account.version == 0 {
            return Err(Refusal::not_found("account").into());
        }
        if account.state.status != AccountStatus::Active {
            return Err(
                Refusal::new(422, "invalid_state", "the owner's account is not active").into(),
            );
        }
        let key = format!("{owner}:{currency}");
        let exists = Refusal::new(
            409,
            "wallet_exists",
            format!("the account already has a {currency} wallet"),
        );
        if self.store.claim(WALLET_SCOPE, &key).await?.is_some() {
            return Err(exists.into());
        }
        let id = Uuid::now_v7();
        let claims = vec![ClaimSpec {
            scope: WALLET_SCOPE,
            key,
            stream: id,
            on_taken: OnTaken::Refuse(exists),
        }];
        let command = WalletCommand::Open {
            wallet_id: id,
            owner,
            currency,
        };
        let unit = Unit {
            role,
            primary: id,
            created: true,
        };
        let locks = Locks::default().new_aggregate::<Wallet>(id);
        self.run_unit(env, unit, locks, |_| {
            Ok(Decision {
                changes: vec![change::<Wallet>(id, command.clone())],
                claims: claims.clone(),
                result_id: None,
            })
        })
        .await
    }

    /// Deposit, withdraw, freeze, unfreeze and close.
    pub async fn wallet_command(
        &self,
        env: &Envelope,
        id: Uuid,
        action: WalletAction,
    ) -> Result<CommandResult, CommandError> {
        let mut claims = Vec::new();
        let mut deposit_ref = None;
        let (role, command, owner_check) = match action {
            WalletAction::Deposit {
                amount,
                external_ref: r,
            } => {
                let amount = Amount::parse("amount", amount)?;
                let r = external_ref(&r)?;
                let role = if env.actor.has(Role::Payments) {
                    Role::Payments
                } else if env.actor.has(Role::Admin) {
                    Role::Admin
                } else {
                    return Err(
                        Refusal::forbidden("deposits need the payments or admin role").into(),
                    );
                };
                // A repeated provider reference is a no-op that answers with the first deposit.
                // The claim is checked at commit (no read on the hot path); when the reference
                // is taken, the command answers with the first deposit's result.
                let key = format!("{id}:{r}");
                deposit_ref = Some(key.clone());
                claims.push(ClaimSpec {
                    scope: DEPOSIT_REF_SCOPE,
                    key,
                    stream: id,
                    on_taken: OnTaken::ReturnFirst,
                });
                (
                    role,
                    WalletCommand::Deposit {
                        amount,
                        external_ref: r,
                    },
                    None,
                )
            }
            WalletAction::Withdraw {
                amount,
                external_ref: r,
            } => {
                let amount = Amount::parse("amount", amount)?;
                let r = external_ref(&r)?;
                let me = self.acting_account(env).await?;
                let kyc = me.state.kyc == KycStatus::Approved;
                let command = WalletCommand::Withdraw {
                    amount,
                    external_ref: r,
                    owner_kyc_approved: kyc,
                };
                (Role::Customer, command, Some(me.state.id))
            }
            WalletAction::Freeze { reason: r } | WalletAction::Unfreeze { reason: r }
                if !env.actor.has(Role::Admin) =>
            {
                let _ = r;
                return Err(Refusal::forbidden("freezing needs the admin role").into());
            }
            WalletAction::Freeze { reason: r } => (
                Role::Admin,
                WalletCommand::Freeze {
                    reason: reason(&r)?,
                },
                None,
            ),
            WalletAction::Unfreeze { reason: r } => (
                Role::Admin,
                WalletCommand::Unfreeze {
                    reason: reason(&r)?,
                },
                None,
            ),
            WalletAction::Close => {
                let me = self.acting_account(env).await?;
                (Role::Customer, WalletCommand::Close, Some(me.state.id))
            }
        };
        let unit = Unit {
            role,
            primary: id,
            created: false,
        };
        let locks = Locks::default().existing::<Wallet>(id);
        let outcome = self
            .run_unit(env, unit, locks, |locked| {
                let w = locked.existing::<Wallet>(id, "wallet")?;
                if owner_check.is_some_and(|me| me != w.state.owner) {
                    return Err(Refusal::forbidden("not your wallet").into());
                }
                Ok(Decision {
                    changes: vec![change::<Wallet>(id, command.clone())],
                    claims: claims.clone(),
                    result_id: None,
                })
            })
            .await;
        match outcome {
            // A repeat of a deposit to a wallet that has since been closed is still a no-op.
            Err(CommandError::Refused(refusal)) => match deposit_ref {
                Some(key) => match self.store.claim(DEPOSIT_REF_SCOPE, &key).await? {
                    Some(first) => Ok(CommandResult {
                        id: first.stream_id,
                        version: first.stream_version,
                        position: first.position,
                        created: false,
                        recorded: false,
                    }),
                    None => Err(refusal.into()),
                },
                None => Err(refusal.into()),
            },
            other => other,
        }
    }

    /// Transfer: the source's debit and the destination's credit in one commit.
    pub async fn transfer(
        &self,
        env: &Envelope,
        input: Transfer,
    ) -> Result<CommandResult, CommandError> {
        let amount = Amount::parse("amount", input.amount)?;
        let memo = input
            .memo
            .as_deref()
            .map(|m| bounded_text("memo", m, 0, 200))
            .transpose()?;
        let me = self.acting_account(env).await?;
        let (from, to) = (input.from_wallet, input.to_wallet);
        if from == to {
            return Err(
                Refusal::new(422, "same_wallet", "a wallet cannot transfer to itself").into(),
            );
        }
        // The destination's owner must be able to receive (not suspended or closed).
        let destination = self.wallets.read(self.store.as_ref(), to).await?;
        exists(destination.version)?;
        let receiver = self
            .accounts
            .read(self.store.as_ref(), destination.state.owner)
            .await?;
        if receiver.state.status != AccountStatus::Active {
            return Err(Refusal::new(
                422,
                "invalid_state",
                "the destination account cannot receive transfers",
            )
            .into());
        }
        let transfer_id = Uuid::now_v7();
        let me_id = me.state.id;
        let unit = Unit {
            role: Role::Customer,
            primary: from,
            created: true,
        };
        let locks = Locks::default()
            .existing::<Wallet>(from)
            .existing::<Wallet>(to);
        self.run_unit(env, unit, locks, |locked| {
            let source = locked.existing::<Wallet>(from, "wallet")?;
            if source.state.owner != me_id {
                return Err(Refusal::forbidden("not your wallet").into());
            }
            let destination = locked.existing::<Wallet>(to, "wallet")?;
            let to_currency = destination
                .state
                .currency
                .ok_or_else(|| Refusal::not_found("wallet"))?;
            let send = WalletCommand::SendTransfer {
                transfer_id,
                to_wallet: to,
                to_currency,
                amount,
                memo: memo.clone(),
            };
            let receive = WalletCommand::ReceiveTransfer {
                transfer_id,
                from_wallet: from,
                amount,
                memo: memo.clone(),
            };
            Ok(Decision {
                changes: vec![change::<Wallet>(from, send), change::<Wallet>(to, receive)],
                claims: Vec::new(),
                result_id: Some(transfer_id),
            })
        })
        .await
    }

    /// GET a wallet: its owner, admins and auditors may read it.
    pub async fn get_wallet(
        &self,
        env: &Envelope,
        id: Uuid,
    ) -> Result<Loaded<Wallet>, CommandError> {
        let wallet = self.wallets.read(self.store.as_ref(), id).await?;
        exists(wallet.version)?;
        if !(env.actor.has(Role::Admin) || env.actor.has(Role::Auditor))
            && self.account_of(&env.actor.subject).await? != Some(wallet.state.owner)
        {
            return Err(Refusal::forbidden("not your wallet").into());
        }
        Ok(wallet)
    }
}
