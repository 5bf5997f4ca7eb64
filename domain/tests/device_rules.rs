//! Given/when/then tests for every Device rule in DOMAIN.md ("Device", "Processes").

// The package is `chronicle-domain`; dependants rename it to `domain` in the workspace.
use chronicle_domain as domain;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};
use domain::device::{
    self, Device, DeviceCommand, DeviceError, DeviceEvent, DeviceStatus, FirmwareOutcome,
    FirmwareUpdate,
};
use domain::RuleCode;
use uuid::Uuid;

type DeviceTest = TestFramework<Device>;

fn device_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0d01)
}

fn owner_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00a1)
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

fn scheduled_at() -> DateTime<Utc> {
    at("2030-05-01T08:00:00Z")
}

const HASH_1: &str = "hash-of-credential-one";
const HASH_2: &str = "hash-of-credential-two";
const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const URL: &str = "https://updates.example.com/sensor-x/2.0.0.bin";

fn registered() -> DeviceEvent {
    DeviceEvent::DeviceRegistered {
        device_id: device_id(),
        owner: owner_id(),
        serial: "SN-0001_a.b".to_owned(),
        model: "Sensor X".to_owned(),
        firmware_version: "1.0.0".to_owned(),
    }
}

fn register() -> DeviceCommand {
    DeviceCommand::Register {
        device_id: device_id(),
        owner: owner_id(),
        serial: "SN-0001_a.b".to_owned(),
        model: "Sensor X".to_owned(),
        firmware_version: "1.0.0".to_owned(),
    }
}

fn activated(hash: &str) -> DeviceEvent {
    DeviceEvent::DeviceActivated {
        credential_hash: hash.to_owned(),
    }
}

fn activate(hash: &str) -> DeviceCommand {
    DeviceCommand::Activate {
        credential_hash: hash.to_owned(),
    }
}

fn rotated(hash: &str) -> DeviceEvent {
    DeviceEvent::DeviceCredentialRotated {
        credential_hash: hash.to_owned(),
    }
}

fn rotate(hash: &str) -> DeviceCommand {
    DeviceCommand::RotateCredential {
        credential_hash: hash.to_owned(),
    }
}

fn schedule(target: &str) -> DeviceCommand {
    DeviceCommand::ScheduleFirmwareUpdate {
        target_version: target.to_owned(),
        artifact_url: URL.to_owned(),
        sha256: DIGEST.to_owned(),
        now: scheduled_at(),
    }
}

fn scheduled(target: &str) -> DeviceEvent {
    DeviceEvent::FirmwareUpdateScheduled {
        target_version: target.to_owned(),
        artifact_url: URL.to_owned(),
        sha256: DIGEST.to_owned(),
        scheduled_at: scheduled_at(),
    }
}

fn report(version: &str, outcome: FirmwareOutcome, detail: Option<&str>) -> DeviceCommand {
    DeviceCommand::ReportFirmware {
        version: version.to_owned(),
        outcome,
        detail: detail.map(str::to_owned),
    }
}

fn applied(version: &str) -> DeviceEvent {
    DeviceEvent::FirmwareUpdateApplied {
        version: version.to_owned(),
    }
}

fn failed(version: &str, detail: Option<&str>) -> DeviceEvent {
    DeviceEvent::FirmwareUpdateFailed {
        version: version.to_owned(),
        detail: detail.map(str::to_owned),
    }
}

fn time_out(now: DateTime<Utc>) -> DeviceCommand {
    DeviceCommand::TimeOutFirmwareUpdate { now }
}

fn suspended() -> DeviceEvent {
    DeviceEvent::DeviceSuspended {
        reason: "lost".to_owned(),
    }
}

fn suspend() -> DeviceCommand {
    DeviceCommand::Suspend {
        reason: "lost".to_owned(),
    }
}

fn decommissioned() -> DeviceEvent {
    DeviceEvent::DeviceDecommissioned {
        reason: "end of life".to_owned(),
    }
}

fn decommission() -> DeviceCommand {
    DeviceCommand::Decommission {
        reason: "end of life".to_owned(),
    }
}

fn active() -> Vec<DeviceEvent> {
    vec![registered(), activated(HASH_1)]
}

fn with(
    mut events: Vec<DeviceEvent>,
    more: impl IntoIterator<Item = DeviceEvent>,
) -> Vec<DeviceEvent> {
    events.extend(more);
    events
}

fn replay(events: Vec<DeviceEvent>) -> Device {
    let mut device = Device::default();
    for event in events {
        device.apply(event);
    }
    device
}

// ---------------------------------------------------------------------------------------------
// RegisterDevice
// ---------------------------------------------------------------------------------------------

#[test]
fn a_new_device_is_registered() {
    DeviceTest::with(())
        .given_no_previous_events()
        .when(register())
        .then_expect_events(vec![registered()]);
}

#[test]
fn a_registered_device_has_no_credential_and_no_update() {
    let device = replay(vec![registered()]);
    assert_eq!(device.id, device_id());
    assert_eq!(device.owner, owner_id());
    assert_eq!(device.serial, "SN-0001_a.b");
    assert_eq!(device.model, "Sensor X");
    assert_eq!(device.firmware_version, "1.0.0");
    assert_eq!(device.status, DeviceStatus::Registered);
    assert_eq!(device.credential_hash, None);
    assert_eq!(device.pending_update, None);
    assert_eq!(device.last_update_outcome, None);
}

#[test]
fn a_device_cannot_be_registered_twice() {
    DeviceTest::with(())
        .given(active())
        .when(register())
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Active));
}

// ---------------------------------------------------------------------------------------------
// ActivateDevice
// ---------------------------------------------------------------------------------------------

#[test]
fn a_registered_device_is_activated_with_a_credential_hash() {
    DeviceTest::with(())
        .given(vec![registered()])
        .when(activate(HASH_1))
        .then_expect_events(vec![activated(HASH_1)]);
}

#[test]
fn an_activated_device_keeps_only_the_credential_hash() {
    let device = replay(active());
    assert_eq!(device.status, DeviceStatus::Active);
    assert_eq!(device.credential_hash.as_deref(), Some(HASH_1));
}

#[test]
fn a_suspended_device_is_activated_again_with_a_new_credential() {
    DeviceTest::with(())
        .given(with(active(), [suspended()]))
        .when(activate(HASH_2))
        .then_expect_events(vec![activated(HASH_2)]);
    let device = replay(with(active(), [suspended(), activated(HASH_2)]));
    assert!(device.accepts_credential_hash(HASH_2));
    assert!(!device.accepts_credential_hash(HASH_1));
}

#[test]
fn an_active_device_cannot_be_activated_again() {
    DeviceTest::with(())
        .given(active())
        .when(activate(HASH_2))
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Active));
}

#[test]
fn an_unregistered_device_cannot_be_activated() {
    DeviceTest::with(())
        .given_no_previous_events()
        .when(activate(HASH_1))
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Unregistered));
}

// ---------------------------------------------------------------------------------------------
// RotateDeviceCredential
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_device_rotates_its_credential() {
    DeviceTest::with(())
        .given(active())
        .when(rotate(HASH_2))
        .then_expect_events(vec![rotated(HASH_2)]);
}

#[test]
fn the_old_credential_stops_working_at_once_after_a_rotation() {
    let device = replay(with(active(), [rotated(HASH_2)]));
    assert_eq!(device.status, DeviceStatus::Active);
    assert!(!device.accepts_credential_hash(HASH_1));
    assert!(device.accepts_credential_hash(HASH_2));
}

#[test]
fn a_registered_or_suspended_device_cannot_rotate_its_credential() {
    DeviceTest::with(())
        .given(vec![registered()])
        .when(rotate(HASH_2))
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Registered));
    DeviceTest::with(())
        .given(with(active(), [suspended()]))
        .when(rotate(HASH_2))
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Suspended));
}

// ---------------------------------------------------------------------------------------------
// Credential check
// ---------------------------------------------------------------------------------------------

#[test]
fn only_an_active_device_accepts_its_current_credential_hash() {
    assert!(!replay(vec![]).accepts_credential_hash(HASH_1));
    assert!(!replay(vec![registered()]).accepts_credential_hash(HASH_1));
    assert!(replay(active()).accepts_credential_hash(HASH_1));
    assert!(!replay(active()).accepts_credential_hash(HASH_2));
    assert!(!replay(active()).accepts_credential_hash(""));
    assert!(!replay(with(active(), [suspended()])).accepts_credential_hash(HASH_1));
    assert!(!replay(with(active(), [decommissioned()])).accepts_credential_hash(HASH_1));
}

// ---------------------------------------------------------------------------------------------
// ScheduleFirmwareUpdate
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_device_gets_a_firmware_update_scheduled() {
    DeviceTest::with(())
        .given(active())
        .when(schedule("2.0.0"))
        .then_expect_events(vec![scheduled("2.0.0")]);
}

#[test]
fn a_scheduled_update_is_pending_from_now() {
    let device = replay(with(active(), [scheduled("2.0.0")]));
    let pending = device.pending_update.expect("an update pending");
    assert_eq!(
        pending,
        FirmwareUpdate {
            target_version: "2.0.0".to_owned(),
            artifact_url: URL.to_owned(),
            sha256: DIGEST.to_owned(),
            scheduled_at: scheduled_at(),
        }
    );
    assert_eq!(pending.times_out_at(), scheduled_at() + Duration::hours(24));
    assert_eq!(device.firmware_version, "1.0.0");
}

#[test]
fn an_update_to_the_running_version_is_refused() {
    DeviceTest::with(())
        .given(active())
        .when(schedule("1.0.0"))
        .then_expect_error(DeviceError::SameVersion);
}

#[test]
fn a_second_update_while_one_is_pending_is_refused() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0")]))
        .when(schedule("2.0.1"))
        .then_expect_error(DeviceError::UpdatePending);
}

#[test]
fn a_new_update_may_be_scheduled_once_the_last_one_ended() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0"), failed("2.0.0", None)]))
        .when(schedule("2.0.0"))
        .then_expect_events(vec![scheduled("2.0.0")]);
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0"), applied("2.0.0")]))
        .when(schedule("2.1.0"))
        .then_expect_events(vec![scheduled("2.1.0")]);
}

#[test]
fn a_device_that_is_not_active_gets_no_update() {
    DeviceTest::with(())
        .given(vec![registered()])
        .when(schedule("2.0.0"))
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Registered));
    DeviceTest::with(())
        .given(with(active(), [suspended()]))
        .when(schedule("2.0.0"))
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Suspended));
    DeviceTest::with(())
        .given_no_previous_events()
        .when(schedule("2.0.0"))
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Unregistered));
}

// ---------------------------------------------------------------------------------------------
// ReportFirmware
// ---------------------------------------------------------------------------------------------

#[test]
fn the_device_reports_the_target_version_applied() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0")]))
        .when(report("2.0.0", FirmwareOutcome::Applied, None))
        .then_expect_events(vec![applied("2.0.0")]);
}

#[test]
fn an_applied_update_changes_the_running_version_and_ends_the_update() {
    let device = replay(with(active(), [scheduled("2.0.0"), applied("2.0.0")]));
    assert_eq!(device.firmware_version, "2.0.0");
    assert_eq!(device.pending_update, None);
    assert_eq!(device.last_update_outcome.as_deref(), Some("applied"));
}

#[test]
fn an_applied_report_of_another_version_is_refused() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0")]))
        .when(report("1.9.9", FirmwareOutcome::Applied, None))
        .then_expect_error(DeviceError::VersionMismatch);
}

#[test]
fn the_device_reports_a_failed_update_with_detail() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0")]))
        .when(report(
            "2.0.0",
            FirmwareOutcome::Failed,
            Some("checksum mismatch"),
        ))
        .then_expect_events(vec![failed("2.0.0", Some("checksum mismatch"))]);
}

#[test]
fn a_failed_update_keeps_the_running_version_and_ends_the_update() {
    let device = replay(with(
        active(),
        [
            scheduled("2.0.0"),
            failed("2.0.0", Some("checksum mismatch")),
        ],
    ));
    assert_eq!(device.firmware_version, "1.0.0");
    assert_eq!(device.pending_update, None);
    assert_eq!(device.last_update_outcome.as_deref(), Some("failed"));
}

#[test]
fn a_report_without_a_pending_update_is_refused() {
    DeviceTest::with(())
        .given(active())
        .when(report("2.0.0", FirmwareOutcome::Applied, None))
        .then_expect_error(DeviceError::NoUpdatePending);
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0"), applied("2.0.0")]))
        .when(report("2.0.0", FirmwareOutcome::Failed, None))
        .then_expect_error(DeviceError::NoUpdatePending);
}

#[test]
fn a_suspended_device_may_still_report_the_update_it_was_given() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0"), suspended()]))
        .when(report("2.0.0", FirmwareOutcome::Applied, None))
        .then_expect_events(vec![applied("2.0.0")]);
}

#[test]
fn an_unregistered_device_cannot_report() {
    DeviceTest::with(())
        .given_no_previous_events()
        .when(report("2.0.0", FirmwareOutcome::Applied, None))
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Unregistered));
}

// ---------------------------------------------------------------------------------------------
// Firmware timeout process
// ---------------------------------------------------------------------------------------------

#[test]
fn an_update_not_reported_within_24_hours_is_marked_failed() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0")]))
        .when(time_out(scheduled_at() + Duration::hours(24)))
        .then_expect_events(vec![failed("2.0.0", Some("no report within 24 hours"))]);
}

#[test]
fn an_update_whose_timeout_passed_while_down_is_marked_failed_when_back() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0")]))
        .when(time_out(scheduled_at() + Duration::days(5)))
        .then_expect_events(vec![failed("2.0.0", Some(device::TIMEOUT_DETAIL))]);
}

#[test]
fn the_timeout_cannot_fire_before_24_hours() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0")]))
        .when(time_out(
            scheduled_at() + Duration::hours(24) - Duration::seconds(1),
        ))
        .then_expect_error(DeviceError::NotDue);
}

#[test]
fn the_timeout_has_nothing_to_do_once_the_device_reported() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0"), applied("2.0.0")]))
        .when(time_out(scheduled_at() + Duration::days(2)))
        .then_expect_error(DeviceError::NoUpdatePending);
}

#[test]
fn the_timeout_applies_to_a_suspended_device_too() {
    DeviceTest::with(())
        .given(with(active(), [scheduled("2.0.0"), suspended()]))
        .when(time_out(scheduled_at() + Duration::days(2)))
        .then_expect_events(vec![failed("2.0.0", Some("no report within 24 hours"))]);
}

// ---------------------------------------------------------------------------------------------
// SuspendDevice
// ---------------------------------------------------------------------------------------------

#[test]
fn an_active_device_is_suspended_and_its_credential_stops_working() {
    DeviceTest::with(())
        .given(active())
        .when(suspend())
        .then_expect_events(vec![suspended()]);
    let device = replay(with(active(), [suspended()]));
    assert_eq!(device.status, DeviceStatus::Suspended);
    assert!(!device.accepts_credential_hash(HASH_1));
}

#[test]
fn a_registered_device_is_suspended() {
    DeviceTest::with(())
        .given(vec![registered()])
        .when(suspend())
        .then_expect_events(vec![suspended()]);
}

#[test]
fn a_suspended_or_unregistered_device_cannot_be_suspended() {
    DeviceTest::with(())
        .given(with(active(), [suspended()]))
        .when(suspend())
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Suspended));
    DeviceTest::with(())
        .given_no_previous_events()
        .when(suspend())
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Unregistered));
}

// ---------------------------------------------------------------------------------------------
// DecommissionDevice
// ---------------------------------------------------------------------------------------------

#[test]
fn registered_active_and_suspended_devices_are_decommissioned() {
    for given in [
        vec![registered()],
        active(),
        with(active(), [suspended()]),
        with(active(), [scheduled("2.0.0")]),
    ] {
        DeviceTest::with(())
            .given(given)
            .when(decommission())
            .then_expect_events(vec![decommissioned()]);
    }
}

#[test]
fn a_decommissioned_device_loses_its_credential_and_pending_update() {
    let device = replay(with(active(), [scheduled("2.0.0"), decommissioned()]));
    assert_eq!(device.status, DeviceStatus::Decommissioned);
    assert_eq!(device.credential_hash, None);
    assert_eq!(device.pending_update, None);
    assert_eq!(device.firmware_version, "1.0.0");
}

#[test]
fn an_unregistered_device_cannot_be_decommissioned() {
    DeviceTest::with(())
        .given_no_previous_events()
        .when(decommission())
        .then_expect_error(DeviceError::InvalidState(DeviceStatus::Unregistered));
}

#[test]
fn a_decommissioned_device_refuses_everything() {
    let commands = vec![
        register(),
        activate(HASH_2),
        rotate(HASH_2),
        schedule("2.0.0"),
        report("2.0.0", FirmwareOutcome::Applied, None),
        report("2.0.0", FirmwareOutcome::Failed, None),
        time_out(scheduled_at() + Duration::days(2)),
        suspend(),
        decommission(),
    ];
    for command in commands {
        DeviceTest::with(())
            .given(with(active(), [scheduled("2.0.0"), decommissioned()]))
            .when(command)
            .then_expect_error(DeviceError::InvalidState(DeviceStatus::Decommissioned));
    }
}

// ---------------------------------------------------------------------------------------------
// Input helpers
// ---------------------------------------------------------------------------------------------

#[test]
fn serials_are_1_to_64_letters_digits_dots_underscores_and_hyphens() {
    assert!(device::serial("serial", "SN-0001_a.b").is_ok());
    assert!(device::serial("serial", &"A".repeat(64)).is_ok());
    assert!(device::serial("serial", &"A".repeat(65)).is_err());
    assert!(device::serial("serial", "").is_err());
    assert!(device::serial("serial", "SN 0001").is_err());
    assert!(device::serial("serial", "SN/0001").is_err());
    assert!(device::serial("serial", "SNé").is_err());
    assert_eq!(
        device::serial("serial", "").map_err(|e| e.field),
        Err("serial")
    );
}

#[test]
fn models_are_1_to_100_characters_of_text() {
    assert!(device::model("model", "Sensor X (rev. 2)").is_ok());
    assert!(device::model("model", &"m".repeat(100)).is_ok());
    assert!(device::model("model", &"m".repeat(101)).is_err());
    assert!(device::model("model", "   ").is_err());
    assert!(device::model("model", "a\tb").is_err());
}

#[test]
fn versions_are_1_to_50_characters_without_whitespace() {
    assert!(device::version("firmware_version", "1.0.0-rc.1+build.7").is_ok());
    assert!(device::version("firmware_version", &"1".repeat(50)).is_ok());
    assert!(device::version("firmware_version", &"1".repeat(51)).is_err());
    assert!(device::version("firmware_version", "").is_err());
    assert!(device::version("firmware_version", "1.0 beta").is_err());
    assert!(device::version("firmware_version", " 1.0").is_err());
    assert!(device::version("firmware_version", "1.0\u{0}").is_err());
    assert_eq!(
        device::version("target_version", "").map_err(|e| e.field),
        Err("target_version")
    );
}

#[test]
fn artifact_urls_are_https_at_most_2000_characters_without_whitespace() {
    assert!(device::artifact_url("artifact_url", URL).is_ok());
    assert!(device::artifact_url("artifact_url", "http://updates.example.com/a.bin").is_err());
    assert!(device::artifact_url("artifact_url", "ftp://updates.example.com/a.bin").is_err());
    assert!(device::artifact_url("artifact_url", "HTTPS://updates.example.com/a.bin").is_err());
    assert!(device::artifact_url("artifact_url", "https://").is_err());
    assert!(device::artifact_url("artifact_url", "https://example.com/a b.bin").is_err());
    let longest = format!("https://example.com/{}", "a".repeat(2_000 - 20));
    assert_eq!(longest.chars().count(), 2_000);
    assert!(device::artifact_url("artifact_url", &longest).is_ok());
    assert!(device::artifact_url("artifact_url", &format!("{longest}a")).is_err());
}

#[test]
fn digests_are_64_lower_case_hex_characters() {
    assert!(device::sha256("sha256", DIGEST).is_ok());
    assert!(device::sha256("sha256", &DIGEST.to_uppercase()).is_err());
    assert!(device::sha256("sha256", &DIGEST[..63]).is_err());
    assert!(device::sha256("sha256", &format!("{DIGEST}0")).is_err());
    assert!(device::sha256("sha256", &"g".repeat(64)).is_err());
    assert!(device::sha256("sha256", "").is_err());
}

// ---------------------------------------------------------------------------------------------
// Events, state and rule codes
// ---------------------------------------------------------------------------------------------

#[test]
fn every_device_event_is_stored_under_its_variant_name_at_version_one() {
    let events = vec![
        (registered(), "DeviceRegistered"),
        (activated(HASH_1), "DeviceActivated"),
        (rotated(HASH_2), "DeviceCredentialRotated"),
        (scheduled("2.0.0"), "FirmwareUpdateScheduled"),
        (applied("2.0.0"), "FirmwareUpdateApplied"),
        (failed("2.0.0", Some("boom")), "FirmwareUpdateFailed"),
        (suspended(), "DeviceSuspended"),
        (decommissioned(), "DeviceDecommissioned"),
    ];
    for (event, name) in events {
        assert_eq!(event.event_type(), name);
        assert_eq!(event.event_version(), "1");
        let json = serde_json::to_value(&event).expect("serializable");
        assert_eq!(json["type"], name);
        let back: DeviceEvent = serde_json::from_value(json).expect("deserializable");
        assert_eq!(back, event);
    }
}

#[test]
fn device_events_with_unknown_fields_are_refused() {
    let json = serde_json::json!({"type": "DeviceSuspended", "reason": "x", "extra": 1});
    assert!(serde_json::from_value::<DeviceEvent>(json).is_err());
}

#[test]
fn a_device_snapshot_round_trips_through_json() {
    let device = replay(with(active(), [scheduled("2.0.0")]));
    let json = serde_json::to_value(&device).expect("serializable");
    assert_eq!(json["status"], "active");
    assert_eq!(
        json["pending_update"]["scheduled_at"],
        "2030-05-01T08:00:00Z"
    );
    let back: Device = serde_json::from_value(json).expect("deserializable");
    assert_eq!(back, device);
}

#[test]
fn firmware_outcomes_are_snake_case_on_the_wire() {
    assert_eq!(
        serde_json::to_value(FirmwareOutcome::Applied).expect("serializable"),
        "applied"
    );
    assert_eq!(
        serde_json::to_value(FirmwareOutcome::Failed).expect("serializable"),
        "failed"
    );
}

#[test]
fn every_device_error_reports_its_stable_rule_code() {
    for status in [
        DeviceStatus::Unregistered,
        DeviceStatus::Registered,
        DeviceStatus::Active,
        DeviceStatus::Suspended,
        DeviceStatus::Decommissioned,
    ] {
        assert_eq!(DeviceError::InvalidState(status).code(), "invalid_state");
    }
    assert_eq!(DeviceError::SameVersion.code(), "same_version");
    assert_eq!(DeviceError::UpdatePending.code(), "update_pending");
    assert_eq!(DeviceError::NoUpdatePending.code(), "no_update_pending");
    assert_eq!(DeviceError::VersionMismatch.code(), "version_mismatch");
    assert_eq!(DeviceError::NotDue.code(), "not_due");
}
