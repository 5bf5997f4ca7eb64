//! The Device aggregate: an IoT device, its credential and its firmware (over-the-air updates).
//!
//! The device credential itself never reaches the domain: the command layer issues it, shows
//! it once and passes only its hash. Telemetry is not part of this stream. Who may issue a
//! command (owner, admin, the device, the firmware-timeout process) is checked by the command
//! layer; input shapes are checked with the validation helpers below before a command is built.

use crate::values::{bounded_text, InvalidInput};
use crate::RuleCode;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How long a device has to report on a scheduled update before the process marks it failed.
pub const FIRMWARE_REPORT_TIMEOUT_HOURS: i64 = 24;

/// The detail recorded when an update times out.
pub const TIMEOUT_DETAIL: &str = "no report within 24 hours";

/// The longest serial number, in characters.
pub const MAX_SERIAL_CHARS: usize = 64;

/// The longest model name, in characters.
pub const MAX_MODEL_CHARS: usize = 100;

/// The longest firmware version, in characters.
pub const MAX_VERSION_CHARS: usize = 50;

/// The longest artifact URL, in characters.
pub const MAX_ARTIFACT_URL_CHARS: usize = 2_000;

/// Checks a serial number: 1-64 characters of `A-Z a-z 0-9 . _ -`.
pub fn serial(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    let len = value.chars().count();
    if len == 0 || len > MAX_SERIAL_CHARS {
        return Err(InvalidInput::new(
            field,
            format!("must have 1 to {MAX_SERIAL_CHARS} characters"),
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(InvalidInput::new(
            field,
            "may contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(value.to_owned())
}

/// Checks a model name: 1-100 characters (trimmed), no control characters.
pub fn model(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    bounded_text(field, value, 1, MAX_MODEL_CHARS)
}

/// Checks a firmware version: 1-50 characters, no whitespace or control characters.
pub fn version(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    let len = value.chars().count();
    if len == 0 || len > MAX_VERSION_CHARS {
        return Err(InvalidInput::new(
            field,
            format!("must have 1 to {MAX_VERSION_CHARS} characters"),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidInput::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Checks a firmware artifact URL: `https://` followed by at least one character, at most
/// 2,000 characters in all, no whitespace or control characters.
pub fn artifact_url(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    const SCHEME: &str = "https://";
    if !value.starts_with(SCHEME) || value.len() == SCHEME.len() {
        return Err(InvalidInput::new(field, "must be an https:// URL"));
    }
    if value.chars().count() > MAX_ARTIFACT_URL_CHARS {
        return Err(InvalidInput::new(
            field,
            format!("must have at most {MAX_ARTIFACT_URL_CHARS} characters"),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidInput::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Checks a SHA-256 digest: exactly 64 lower-case hexadecimal characters.
pub fn sha256(field: &'static str, value: &str) -> Result<String, InvalidInput> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(value.to_owned())
    } else {
        Err(InvalidInput::new(
            field,
            "must be 64 lower-case hexadecimal characters",
        ))
    }
}

/// A device's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Not registered yet (no events).
    #[default]
    Unregistered,
    /// Registered, no credential issued yet.
    Registered,
    /// Holds a working credential.
    Active,
    /// Its credential does not work until it is activated again.
    Suspended,
    /// Terminal.
    Decommissioned,
}

/// A firmware update waiting for the device's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareUpdate {
    /// The version to install.
    pub target_version: String,
    /// Where the device downloads it (https).
    pub artifact_url: String,
    /// The artifact's SHA-256, lower-case hex.
    pub sha256: String,
    /// When it was scheduled (the 24-hour report timeout counts from here).
    pub scheduled_at: DateTime<Utc>,
}

impl FirmwareUpdate {
    /// When the update is marked failed if the device has not reported.
    pub fn times_out_at(&self) -> DateTime<Utc> {
        self.scheduled_at + Duration::hours(FIRMWARE_REPORT_TIMEOUT_HOURS)
    }
}

/// How a device reports a firmware update went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareOutcome {
    /// The target version is installed and running.
    Applied,
    /// The update did not install.
    Failed,
}

/// The state of one device, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device's id.
    pub id: Uuid,
    /// The owning account.
    pub owner: Uuid,
    /// The manufacturer's serial number (unique, checked by the caller).
    pub serial: String,
    /// The model name.
    pub model: String,
    /// The firmware version running on the device.
    pub firmware_version: String,
    /// The hash of the current credential; `None` before activation and after decommissioning.
    pub credential_hash: Option<String>,
    /// Lifecycle state.
    pub status: DeviceStatus,
    /// The update awaiting the device's report, if any.
    pub pending_update: Option<FirmwareUpdate>,
    /// How the last update ended: `"applied"` or `"failed"`.
    pub last_update_outcome: Option<String>,
}

impl Device {
    /// Whether a credential with this hash may act for the device: only an active device's
    /// current credential. A plain equality on hashes; the command layer compares secrets in
    /// constant time before it gets here.
    pub fn accepts_credential_hash(&self, hash: &str) -> bool {
        self.status == DeviceStatus::Active && self.credential_hash.as_deref() == Some(hash)
    }
}

/// What a device can be asked to do. Facts from outside (the clock) come with the command.
#[derive(Debug, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub enum DeviceCommand {
    /// RegisterDevice (serial uniqueness and the owner's activity are checked by the caller).
    Register {
        /// The new device's id.
        device_id: Uuid,
        /// The owning account.
        owner: Uuid,
        /// The serial number.
        serial: String,
        /// The model name.
        model: String,
        /// The firmware version it ships with.
        firmware_version: String,
    },
    /// ActivateDevice: a new credential, of which only the hash is kept.
    Activate {
        /// The new credential's hash.
        credential_hash: String,
    },
    /// RotateDeviceCredential: the old credential stops working at once.
    RotateCredential {
        /// The new credential's hash.
        credential_hash: String,
    },
    /// ScheduleFirmwareUpdate.
    ScheduleFirmwareUpdate {
        /// The version to install.
        target_version: String,
        /// Where the device downloads it.
        artifact_url: String,
        /// The artifact's SHA-256.
        sha256: String,
        /// The current time.
        now: DateTime<Utc>,
    },
    /// ReportFirmware, by the device itself.
    ReportFirmware {
        /// The version the device reports.
        version: String,
        /// Applied or failed.
        outcome: FirmwareOutcome,
        /// Optional detail (an error message on failure).
        detail: Option<String>,
    },
    /// The firmware-timeout process: an update not reported within 24 hours fails.
    TimeOutFirmwareUpdate {
        /// The current time.
        now: DateTime<Utc>,
    },
    /// SuspendDevice.
    Suspend {
        /// Why.
        reason: String,
    },
    /// DecommissionDevice (terminal).
    Decommission {
        /// Why.
        reason: String,
    },
}

/// What happened to a device. Stored names are the variant names, schema version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum DeviceEvent {
    /// The device was registered.
    DeviceRegistered {
        /// The device's id.
        device_id: Uuid,
        /// The owning account.
        owner: Uuid,
        /// The serial number.
        serial: String,
        /// The model name.
        model: String,
        /// The firmware version it ships with.
        firmware_version: String,
    },
    /// A credential was issued and the device is active.
    DeviceActivated {
        /// The credential's hash.
        credential_hash: String,
    },
    /// The credential was replaced.
    DeviceCredentialRotated {
        /// The new credential's hash.
        credential_hash: String,
    },
    /// A firmware update was scheduled.
    FirmwareUpdateScheduled {
        /// The version to install.
        target_version: String,
        /// Where the device downloads it.
        artifact_url: String,
        /// The artifact's SHA-256.
        sha256: String,
        /// When it was scheduled.
        scheduled_at: DateTime<Utc>,
    },
    /// The device runs the target version.
    FirmwareUpdateApplied {
        /// The version now running.
        version: String,
    },
    /// The update failed (reported by the device, or timed out).
    FirmwareUpdateFailed {
        /// The version reported (the target version on a timeout).
        version: String,
        /// Optional detail.
        detail: Option<String>,
    },
    /// The device was suspended.
    DeviceSuspended {
        /// Why.
        reason: String,
    },
    /// The device was decommissioned for good.
    DeviceDecommissioned {
        /// Why.
        reason: String,
    },
}

impl DomainEvent for DeviceEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DeviceRegistered { .. } => "DeviceRegistered",
            Self::DeviceActivated { .. } => "DeviceActivated",
            Self::DeviceCredentialRotated { .. } => "DeviceCredentialRotated",
            Self::FirmwareUpdateScheduled { .. } => "FirmwareUpdateScheduled",
            Self::FirmwareUpdateApplied { .. } => "FirmwareUpdateApplied",
            Self::FirmwareUpdateFailed { .. } => "FirmwareUpdateFailed",
            Self::DeviceSuspended { .. } => "DeviceSuspended",
            Self::DeviceDecommissioned { .. } => "DeviceDecommissioned",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a device refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The device's state forbids the command.
    #[error("the device is {0:?}, which forbids this")]
    InvalidState(DeviceStatus),
    /// An update to the version already running.
    #[error("the device already runs this version")]
    SameVersion,
    /// An update while another awaits its report.
    #[error("another firmware update is pending")]
    UpdatePending,
    /// A report or timeout with no update pending.
    #[error("no firmware update is pending")]
    NoUpdatePending,
    /// An `applied` report of a version other than the target.
    #[error("the reported version is not the update's target version")]
    VersionMismatch,
    /// The timeout process before 24 hours have passed.
    #[error("the firmware update has not timed out yet")]
    NotDue,
}

impl RuleCode for DeviceError {
    fn code(&self) -> &'static str {
        match self {
            Self::InvalidState(_) => "invalid_state",
            Self::SameVersion => "same_version",
            Self::UpdatePending => "update_pending",
            Self::NoUpdatePending => "no_update_pending",
            Self::VersionMismatch => "version_mismatch",
            Self::NotDue => "not_due",
        }
    }
}

impl Device {
    /// Decides a command against the current state: the events to append, or a rejection.
    pub fn decide(&self, command: DeviceCommand) -> Result<Vec<DeviceEvent>, DeviceError> {
        use DeviceCommand as C;
        use DeviceEvent as E;
        use DeviceStatus as S;
        let require = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(DeviceError::InvalidState(self.status))
            }
        };
        // Decommissioned is terminal and an unregistered device has nothing to act on: only
        // Register gets past this for the latter.
        if self.status == S::Decommissioned {
            return Err(DeviceError::InvalidState(self.status));
        }
        match command {
            C::Register {
                device_id,
                owner,
                serial,
                model,
                firmware_version,
            } => {
                require(self.status == S::Unregistered)?;
                Ok(vec![E::DeviceRegistered {
                    device_id,
                    owner,
                    serial,
                    model,
                    firmware_version,
                }])
            }
            C::Activate { credential_hash } => {
                require(matches!(self.status, S::Registered | S::Suspended))?;
                Ok(vec![E::DeviceActivated { credential_hash }])
            }
            C::RotateCredential { credential_hash } => {
                require(self.status == S::Active)?;
                Ok(vec![E::DeviceCredentialRotated { credential_hash }])
            }
            C::ScheduleFirmwareUpdate {
                target_version,
                artifact_url,
                sha256,
                now,
            } => {
                require(self.status == S::Active)?;
                if target_version == self.firmware_version {
                    return Err(DeviceError::SameVersion);
                }
                if self.pending_update.is_some() {
                    return Err(DeviceError::UpdatePending);
                }
                Ok(vec![E::FirmwareUpdateScheduled {
                    target_version,
                    artifact_url,
                    sha256,
                    scheduled_at: now,
                }])
            }
            C::ReportFirmware {
                version,
                outcome,
                detail,
            } => {
                require(self.status != S::Unregistered)?;
                let pending = self
                    .pending_update
                    .as_ref()
                    .ok_or(DeviceError::NoUpdatePending)?;
                match outcome {
                    FirmwareOutcome::Applied => {
                        if version != pending.target_version {
                            return Err(DeviceError::VersionMismatch);
                        }
                        Ok(vec![E::FirmwareUpdateApplied { version }])
                    }
                    FirmwareOutcome::Failed => {
                        Ok(vec![E::FirmwareUpdateFailed { version, detail }])
                    }
                }
            }
            C::TimeOutFirmwareUpdate { now } => {
                require(self.status != S::Unregistered)?;
                let pending = self
                    .pending_update
                    .as_ref()
                    .ok_or(DeviceError::NoUpdatePending)?;
                if now < pending.times_out_at() {
                    return Err(DeviceError::NotDue);
                }
                Ok(vec![E::FirmwareUpdateFailed {
                    version: pending.target_version.clone(),
                    detail: Some(TIMEOUT_DETAIL.to_owned()),
                }])
            }
            C::Suspend { reason } => {
                require(matches!(self.status, S::Active | S::Registered))?;
                Ok(vec![E::DeviceSuspended { reason }])
            }
            C::Decommission { reason } => {
                require(self.status != S::Unregistered)?;
                Ok(vec![E::DeviceDecommissioned { reason }])
            }
        }
    }
}

impl Aggregate for Device {
    const TYPE: &'static str = "device";
    type Command = DeviceCommand;
    type Event = DeviceEvent;
    type Error = DeviceError;
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
        use DeviceEvent as E;
        match event {
            E::DeviceRegistered {
                device_id,
                owner,
                serial,
                model,
                firmware_version,
            } => {
                self.id = device_id;
                self.owner = owner;
                self.serial = serial;
                self.model = model;
                self.firmware_version = firmware_version;
                self.status = DeviceStatus::Registered;
            }
            E::DeviceActivated { credential_hash } => {
                self.credential_hash = Some(credential_hash);
                self.status = DeviceStatus::Active;
            }
            E::DeviceCredentialRotated { credential_hash } => {
                self.credential_hash = Some(credential_hash);
            }
            E::FirmwareUpdateScheduled {
                target_version,
                artifact_url,
                sha256,
                scheduled_at,
            } => {
                self.pending_update = Some(FirmwareUpdate {
                    target_version,
                    artifact_url,
                    sha256,
                    scheduled_at,
                });
            }
            E::FirmwareUpdateApplied { version } => {
                self.firmware_version = version;
                self.pending_update = None;
                self.last_update_outcome = Some("applied".to_owned());
            }
            E::FirmwareUpdateFailed { .. } => {
                self.pending_update = None;
                self.last_update_outcome = Some("failed".to_owned());
            }
            E::DeviceSuspended { .. } => self.status = DeviceStatus::Suspended,
            E::DeviceDecommissioned { .. } => {
                self.credential_hash = None;
                self.pending_update = None;
                self.status = DeviceStatus::Decommissioned;
            }
        }
    }
}
