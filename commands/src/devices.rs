//! Device use cases: register, activate, rotate the credential, schedule a firmware update,
//! the device's own firmware report, suspend and decommission; and device authentication.
//!
//! A device credential is `<device_id>.<secret>`, where the secret is 32 random bytes from the
//! operating system, hex-encoded. It is shown once, in the answer of the command that issued
//! it; the log keeps only the SHA-256 of the secret. A device proves itself by sending the
//! credential: its hash is compared with the stored one in constant time, and only an active
//! device's current credential is accepted. The check runs again on the locked device inside
//! the command, so a rotation, a suspension or a decommissioning committed before a device
//! command takes effect at once.

use crate::repo::Loaded;
use crate::service::{Actor, CommandError, CommandResult, CommandService, Envelope, Refusal, Role};
use crate::unit::{change, ClaimSpec, Decision, Locks, OnTaken, Unit};
use domain::account::AccountStatus;
use domain::device::{
    artifact_url, model, serial, sha256, version, Device, DeviceCommand, FirmwareOutcome,
};
use domain::values::bounded_text;
use domain::InvalidInput;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Claim scope: serial numbers, unique case-insensitively (the key is the lower-cased serial).
pub const SERIAL_SCOPE: &str = "device_serial";
/// Claim scope: an owner's devices (`<owner>:<device>`).
pub const OWNER_SCOPE: &str = "device_owner";

/// How many random bytes a device secret has.
pub const SECRET_BYTES: usize = 32;

/// The longest detail a firmware report may carry, in characters.
pub const MAX_REPORT_DETAIL_CHARS: usize = 1_000;

/// The prefix of the subject a device's own commands are recorded under (`device:<id>`).
pub const DEVICE_SUBJECT_PREFIX: &str = "device:";

/// RegisterDevice input.
#[derive(Debug, Clone)]
pub struct RegisterDevice {
    /// The manufacturer's serial number.
    pub serial: String,
    /// The model name.
    pub model: String,
    /// The firmware version it ships with.
    pub firmware_version: String,
    /// The owning account (admin only; defaults to the caller's account).
    pub owner: Option<Uuid>,
}

/// Commands on an existing device that its owner or an admin may issue.
#[derive(Debug, Clone)]
pub enum DeviceAction {
    /// ScheduleFirmwareUpdate.
    ScheduleFirmwareUpdate {
        /// The version to install.
        target_version: String,
        /// Where the device downloads it (https).
        artifact_url: String,
        /// The artifact's SHA-256, lower-case hex.
        sha256: String,
    },
    /// SuspendDevice.
    Suspend {
        /// Why.
        reason: String,
    },
    /// DecommissionDevice.
    Decommission {
        /// Why.
        reason: String,
    },
}

/// ReportFirmware input, sent by the device itself.
#[derive(Debug, Clone)]
pub struct ReportFirmware {
    /// The version the device reports.
    pub version: String,
    /// Applied or failed.
    pub outcome: FirmwareOutcome,
    /// Optional detail (an error message on failure).
    pub detail: Option<String>,
}

/// A command's answer with a freshly issued device credential, to be shown once.
pub struct IssuedCredential {
    /// The command's answer.
    pub result: CommandResult,
    credential: String,
}

impl IssuedCredential {
    /// The credential, `<device_id>.<secret>`: what the device sends as
    /// `Authorization: Device <credential>`.
    pub fn credential(&self) -> &str {
        &self.credential
    }
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredential")
            .field("result", &self.result)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// A device that proved itself with its current credential. Only
/// [`CommandService::authenticate_device`] makes one.
#[derive(Clone)]
pub struct AuthenticatedDevice {
    /// The device.
    pub device_id: Uuid,
    /// Its owning account.
    pub owner: Uuid,
    credential_hash: String,
}

impl AuthenticatedDevice {
    /// The actor the device's commands are recorded under: subject `device:<id>`, no roles.
    pub fn actor(&self) -> Actor {
        Actor {
            subject: format!("{DEVICE_SUBJECT_PREFIX}{}", self.device_id),
            roles: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuthenticatedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticatedDevice")
            .field("device_id", &self.device_id)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a secret, lower-case hex: what the log keeps.
fn hash_of(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random secret, hex-encoded.
fn new_secret() -> String {
    let mut bytes = [0_u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn invalid_credential() -> Refusal {
    Refusal::new(
        401,
        "invalid_credential",
        "the device credential was refused",
    )
}

/// Whether `hash` is the device's current credential (compared in constant time) and the
/// device is active. A wrong or unknown credential is 401; the right credential of a device
/// that is not active (suspended) is 403 `device_not_active`.
fn check_credential(device: &Device, hash: &str) -> Result<(), Refusal> {
    let stored = device.credential_hash.as_deref().unwrap_or_default();
    let matches = bool::from(stored.as_bytes().ct_eq(hash.as_bytes()));
    if !matches {
        return Err(invalid_credential());
    }
    if !device.accepts_credential_hash(hash) {
        return Err(Refusal::new(
            403,
            "device_not_active",
            "the device is suspended: its owner activates it again, which issues a new credential",
        ));
    }
    Ok(())
}

fn reason(value: &str) -> Result<String, InvalidInput> {
    bounded_text("reason", value, 1, 500)
}

fn unit(role: Role, id: Uuid) -> Unit {
    Unit {
        role,
        primary: id,
        created: false,
    }
}

impl CommandService {
    /// A device's state for a command on it: 404 when it was never registered.
    async fn device(&self, id: Uuid) -> Result<Loaded<Device>, CommandError> {
        let device = self.devices.read(self.store.as_ref(), id).await?;
        if device.version == 0 {
            return Err(Refusal::not_found("device").into());
        }
        Ok(device)
    }

    /// The caller as the device's owner (customer role, active account), or 403.
    async fn device_owner(&self, env: &Envelope, device: &Device) -> Result<Role, CommandError> {
        let me = self.acting_account(env).await?;
        if me.state.id != device.owner {
            return Err(Refusal::forbidden("not your device").into());
        }
        Ok(Role::Customer)
    }

    /// RegisterDevice: for the caller's own account, or (admin) for `owner`.
    pub async fn register_device(
        &self,
        env: &Envelope,
        input: RegisterDevice,
    ) -> Result<CommandResult, CommandError> {
        let serial = serial("serial", &input.serial)?;
        let model = model("model", &input.model)?;
        let firmware_version = version("firmware_version", &input.firmware_version)?;
        let admin = env.actor.has(Role::Admin);
        let (owner, role) = match input.owner {
            Some(o) if admin => (o, Role::Admin),
            None if admin && !env.actor.has(Role::Customer) => {
                return Err(InvalidInput::new(
                    "owner",
                    "is required when an admin registers a device",
                )
                .into())
            }
            _ => {
                let me = self.acting_account(env).await?;
                if input.owner.is_some_and(|o| o != me.state.id) {
                    return Err(Refusal::forbidden(
                        "only an admin registers a device for another account",
                    )
                    .into());
                }
                (me.state.id, Role::Customer)
            }
        };
        if role == Role::Admin {
            let account = self.accounts.read(self.store.as_ref(), owner).await?;
            if account.version == 0 {
                return Err(Refusal::not_found("account").into());
            }
            if account.state.status != AccountStatus::Active {
                return Err(Refusal::new(
                    422,
                    "invalid_state",
                    "the owner's account is not active",
                )
                .into());
            }
        }
        let key = serial.to_ascii_lowercase();
        let taken = Refusal::new(
            409,
            "serial_taken",
            "a device with this serial number is already registered",
        );
        if self.store.claim(SERIAL_SCOPE, &key).await?.is_some() {
            return Err(taken.into());
        }
        let id = Uuid::now_v7();
        let claims = vec![
            ClaimSpec {
                scope: SERIAL_SCOPE,
                key,
                stream: id,
                on_taken: OnTaken::Refuse(taken),
            },
            // The owner's devices, for the account-closure cascade.
            ClaimSpec {
                scope: OWNER_SCOPE,
                key: format!("{owner}:{id}"),
                stream: id,
                on_taken: OnTaken::Refuse(Refusal::new(409, "concurrency_conflict", "try again")),
            },
        ];
        let command = DeviceCommand::Register {
            device_id: id,
            owner,
            serial,
            model,
            firmware_version,
        };
        let unit = Unit {
            role,
            primary: id,
            created: true,
        };
        let locks = Locks::default().new_aggregate::<Device>(id);
        self.run_unit(env, unit, locks, |_| {
            Ok(Decision {
                changes: vec![change::<Device>(id, command.clone())],
                claims: claims.clone(),
                result_id: None,
            })
        })
        .await
    }

    /// ActivateDevice (owner): issues a new credential; the answer carries it, once.
    pub async fn activate_device(
        &self,
        env: &Envelope,
        id: Uuid,
    ) -> Result<IssuedCredential, CommandError> {
        self.issue_credential(env, id, false).await
    }

    /// RotateDeviceCredential (owner): a new credential; the old one stops working at once.
    pub async fn rotate_device_credential(
        &self,
        env: &Envelope,
        id: Uuid,
    ) -> Result<IssuedCredential, CommandError> {
        self.issue_credential(env, id, true).await
    }

    async fn issue_credential(
        &self,
        env: &Envelope,
        id: Uuid,
        rotate: bool,
    ) -> Result<IssuedCredential, CommandError> {
        let device = self.device(id).await?;
        let role = self.device_owner(env, &device.state).await?;
        let secret = new_secret();
        let credential_hash = hash_of(&secret);
        let command = if rotate {
            DeviceCommand::RotateCredential { credential_hash }
        } else {
            DeviceCommand::Activate { credential_hash }
        };
        let locks = Locks::default().existing::<Device>(id);
        let result = self
            .run_unit(env, unit(role, id), locks, |locked| {
                locked.existing::<Device>(id, "device")?;
                Ok(Decision::of(vec![change::<Device>(id, command.clone())]))
            })
            .await?;
        Ok(IssuedCredential {
            result,
            credential: format!("{id}.{secret}"),
        })
    }

    /// ScheduleFirmwareUpdate, SuspendDevice and DecommissionDevice: the owner or an admin.
    pub async fn device_command(
        &self,
        env: &Envelope,
        id: Uuid,
        action: DeviceAction,
    ) -> Result<CommandResult, CommandError> {
        let now = self.clock.now();
        let command = match action {
            DeviceAction::ScheduleFirmwareUpdate {
                target_version,
                artifact_url: url,
                sha256: digest,
            } => DeviceCommand::ScheduleFirmwareUpdate {
                target_version: version("target_version", &target_version)?,
                artifact_url: artifact_url("artifact_url", &url)?,
                sha256: sha256("sha256", &digest)?,
                now,
            },
            DeviceAction::Suspend { reason: r } => DeviceCommand::Suspend {
                reason: reason(&r)?,
            },
            DeviceAction::Decommission { reason: r } => DeviceCommand::Decommission {
                reason: reason(&r)?,
            },
        };
        let device = self.device(id).await?;
        let role = if env.actor.has(Role::Admin) {
            Role::Admin
        } else {
            self.device_owner(env, &device.state).await?
        };
        let locks = Locks::default().existing::<Device>(id);
        self.run_unit(env, unit(role, id), locks, |locked| {
            locked.existing::<Device>(id, "device")?;
            Ok(Decision::of(vec![change::<Device>(id, command.clone())]))
        })
        .await
    }

    /// Checks a device credential (`<id>.<secret>` split in two): the device must exist, be
    /// active and hold this credential (compared in constant time). Any failure is 401
    /// `invalid_credential`, except the right credential of a suspended device (403
    /// `device_not_active`). For device commands and telemetry.
    pub async fn authenticate_device(
        &self,
        id: Uuid,
        secret: &str,
    ) -> Result<AuthenticatedDevice, CommandError> {
        let hash = hash_of(secret);
        let device = self.devices.read(self.store.as_ref(), id).await?;
        // An unknown device is refused like a wrong secret: the answer tells nothing about
        // which ids exist.
        check_credential(&device.state, &hash)?;
        Ok(AuthenticatedDevice {
            device_id: id,
            owner: device.state.owner,
            credential_hash: hash,
        })
    }

    /// ReportFirmware: only the device itself, with its current credential, for itself.
    pub async fn report_firmware(
        &self,
        env: &Envelope,
        device: &AuthenticatedDevice,
        id: Uuid,
        input: ReportFirmware,
    ) -> Result<CommandResult, CommandError> {
        if device.device_id != id {
            return Err(Refusal::forbidden("the credential is another device's").into());
        }
        let command = DeviceCommand::ReportFirmware {
            version: version("version", &input.version)?,
            outcome: input.outcome,
            detail: input
                .detail
                .as_deref()
                .map(|d| bounded_text("detail", d, 1, MAX_REPORT_DETAIL_CHARS))
                .transpose()?,
        };
        let hash = device.credential_hash.clone();
        // Recorded under subject `device:<id>` with the role `device`.
        let locks = Locks::default().existing::<Device>(id);
        self.run_unit(env, unit(Role::Device, id), locks, |locked| {
            let d = locked.existing::<Device>(id, "device")?;
            // Again on the locked state: a rotation or suspension that committed since the
            // credential was checked wins.
            check_credential(&d.state, &hash)?;
            Ok(Decision::of(vec![change::<Device>(id, command.clone())]))
        })
        .await
    }

    /// GET a device: its owner, admins and auditors may read it.
    pub async fn get_device(
        &self,
        env: &Envelope,
        id: Uuid,
    ) -> Result<Loaded<Device>, CommandError> {
        let device = self.device(id).await?;
        if !(env.actor.has(Role::Admin) || env.actor.has(Role::Auditor))
            && self.account_of(&env.actor.subject).await? != Some(device.state.owner)
        {
            return Err(Refusal::forbidden("not your device").into());
        }
        Ok(device)
    }
}
