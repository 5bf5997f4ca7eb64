//! Devices over HTTP: registration with unique serials, activation and rotation of the device
//! credential (shown once, stored only as a hash), firmware updates reported by the device
//! itself with its own credential, suspension and decommissioning, and who may do what.

use crate::support::{Answer, TestApp};
use axum::http::{Method, StatusCode};
use commands::Role;
use serde_json::{json, Value};
use uuid::Uuid;

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Fleet {
    app: TestApp,
    owner: Uuid,
    owner_token: String,
    stranger_token: String,
    admin: String,
    auditor: String,
}

async fn fleet() -> Fleet {
    let app = TestApp::new().await;
    let (owner, owner_token) = app.customer("owner").await;
    let (_, stranger_token) = app.customer("stranger").await;
    let admin = app.token("admin", &[Role::Admin]);
    let auditor = app.token("auditor", &[Role::Auditor]);
    Fleet {
        app,
        owner,
        owner_token,
        stranger_token,
        admin,
        auditor,
    }
}

fn firmware(target: &str) -> Value {
    json!({
        "target_version": target,
        "artifact_url": format!("https://firmware.example.com/t3/{target}.bin"),
        "sha256": SHA,
    })
}

impl Fleet {
    async fn register(&self, serial: &str) -> Uuid {
        let a = self.register_as(&self.owner_token, serial).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        a.id()
    }

    async fn register_as(&self, token: &str, serial: &str) -> Answer {
        self.app
            .post(
                "/v1/devices",
                token,
                json!({"serial": serial, "model": "Thermo 3", "firmware_version": "1.0.0"}),
            )
            .await
    }

    async fn act(&self, device: Uuid, what: &str, token: &str, body: Value) -> Answer {
        self.app
            .post(&format!("/v1/devices/{device}/{what}"), token, body)
            .await
    }

    /// Activates (or rotates) and returns the credential from the answer.
    async fn credential(&self, device: Uuid, what: &str) -> String {
        let a = self.act(device, what, &self.owner_token, json!({})).await;
        assert_eq!(a.status, StatusCode::OK, "{what}: {:?}", a.body);
        a.body["credential"]
            .as_str()
            .expect("a credential in the answer")
            .to_owned()
    }

    /// A registered, active device and its credential.
    async fn active(&self, serial: &str) -> (Uuid, String) {
        let device = self.register(serial).await;
        let credential = self.credential(device, "activate").await;
        (device, credential)
    }

    /// POST /firmware/report with a raw `Authorization` header value (or none).
    async fn report(&self, device: Uuid, authorization: Option<&str>, body: Value) -> Answer {
        let mut headers = Vec::new();
        if let Some(a) = authorization {
            headers.push(("authorization", a));
        }
        self.app
            .send(
                Method::POST,
                &format!("/v1/devices/{device}/firmware/report"),
                None,
                Some(body),
                &headers,
            )
            .await
    }

    async fn report_with(&self, device: Uuid, credential: &str, body: Value) -> Answer {
        let header = format!("Device {credential}");
        self.report(device, Some(&header), body).await
    }

    async fn view(&self, device: Uuid) -> Value {
        let a = self
            .app
            .get(&format!("/v1/devices/{device}"), &self.owner_token)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a.body
    }

    async fn count(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.app.db.pool)
            .await
            .expect("count")
    }
}

fn assert_refused(a: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(a.status.as_u16(), status, "{what}: {:?}", a.body);
    assert_eq!(a.body["code"], code, "{what}: {:?}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_is_registered_activated_and_reports_its_firmware_update_itself() {
    let f = fleet().await;
    let reg = f.register_as(&f.owner_token, "SN-0001").await;
    assert_eq!(reg.status, StatusCode::CREATED, "{:?}", reg.body);
    assert_eq!(reg.body["version"], 1);
    let device = reg.id();
    let got = f
        .app
        .get(&format!("/v1/devices/{device}"), &f.owner_token)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["etag"], "\"1\"");
    assert_eq!(got.body["status"], "registered");
    assert_eq!(got.body["owner"], json!(f.owner));
    assert_eq!(got.body["serial"], "SN-0001");
    assert_eq!(got.body["model"], "Thermo 3");
    assert_eq!(got.body["firmware_version"], "1.0.0");

    let activated = f.act(device, "activate", &f.owner_token, json!({})).await;
    assert_eq!(activated.status, StatusCode::OK, "{:?}", activated.body);
    assert_eq!(activated.body["id"], json!(device));
    assert_eq!(activated.body["version"], 2);
    assert_eq!(activated.headers["cache-control"], "no-store");
    let credential = activated.body["credential"].as_str().expect("a credential");
    let (id, secret) = credential.split_once('.').expect("<id>.<secret>");
    assert_eq!(id, device.to_string());
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(f.view(device).await["status"], "active");

    let scheduled = f
        .act(device, "firmware", &f.owner_token, firmware("1.1.0"))
        .await;
    assert_eq!(scheduled.status, StatusCode::OK, "{:?}", scheduled.body);
    assert_eq!(scheduled.body["version"], 3);
    let view = f.view(device).await;
    let pending = &view["pending_update"];
    assert_eq!(pending["target_version"], "1.1.0");
    assert_eq!(
        pending["artifact_url"],
        "https://firmware.example.com/t3/1.1.0.bin"
    );
    assert_eq!(pending["sha256"], SHA);
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time")).expect("RFC 3339")
    };
    assert_eq!(
        at(&pending["times_out_at"]) - at(&pending["scheduled_at"]),
        chrono::Duration::hours(24)
    );

    let applied = f
        .report_with(
            device,
            credential,
            json!({"version": "1.1.0", "outcome": "applied"}),
        )
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{:?}", applied.body);
    assert_eq!(applied.body["version"], 4);
    let view = f.view(device).await;
    assert_eq!(view["firmware_version"], "1.1.0");
    assert_eq!(view["pending_update"], Value::Null);
    assert_eq!(view["last_update_outcome"], "applied");
    assert_eq!(view["version"], 4);
    let (sub, role): (String, String) = sqlx::query_as(
        "SELECT actor_sub, actor_role FROM events WHERE event_type = 'FirmwareUpdateApplied'",
    )
    .fetch_one(&f.app.db.pool)
    .await
    .expect("the applied event");
    assert_eq!(sub, format!("device:{device}"));
    assert_eq!(role, "device");

    // A failed update leaves the running version alone.
    f.act(device, "firmware", &f.owner_token, firmware("1.2.0"))
        .await;
    let failed = f
        .report_with(
            device,
            credential,
            json!({"version": "1.2.0", "outcome": "failed", "detail": "checksum mismatch"}),
        )
        .await;
    assert_eq!(failed.status, StatusCode::OK, "{:?}", failed.body);
    let view = f.view(device).await;
    assert_eq!(view["firmware_version"], "1.1.0");
    assert_eq!(view["last_update_outcome"], "failed");
    assert_eq!(f.count("FirmwareUpdateFailed").await, 1);

    // The device's business rules, each refused with nothing appended.
    let before = f.app.event_count().await;
    let same = f
        .act(device, "firmware", &f.owner_token, firmware("1.1.0"))
        .await;
    assert_refused(&same, 422, "same_version", "the running version");
    let none = f
        .report_with(
            device,
            credential,
            json!({"version": "1.1.0", "outcome": "applied"}),
        )
        .await;
    assert_refused(&none, 422, "no_update_pending", "a report of nothing");
    let again = f.act(device, "activate", &f.owner_token, json!({})).await;
    assert_refused(&again, 422, "invalid_state", "activating an active device");
    assert_eq!(f.app.event_count().await, before);
    f.act(device, "firmware", &f.owner_token, firmware("1.3.0"))
        .await;
    let before = f.app.event_count().await;
    let second = f
        .act(device, "firmware", &f.owner_token, firmware("1.4.0"))
        .await;
    assert_refused(&second, 422, "update_pending", "a second update");
    let other = f
        .report_with(
            device,
            credential,
            json!({"version": "9.9.9", "outcome": "applied"}),
        )
        .await;
    assert_refused(&other, 422, "version_mismatch", "applied another version");
    assert_eq!(f.app.event_count().await, before);

    // The device's idempotent retry gets the first answer, without a second effect.
    let header = format!("Device {credential}");
    let headers = [
        ("idempotency-key", "report-1.3.0"),
        ("authorization", header.as_str()),
    ];
    let path = format!("/v1/devices/{device}/firmware/report");
    let report = || {
        f.app.send(
            Method::POST,
            &path,
            None,
            Some(json!({"version": "1.3.0", "outcome": "applied"})),
            &headers,
        )
    };
    let first = report().await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let replay = report().await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body, first.body);
    assert_eq!(f.count("FirmwareUpdateApplied").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_stops_the_old_credential_at_once_and_the_new_one_works() {
    let f = fleet().await;
    let (device, old) = f.active("SN-ROT").await;
    f.act(device, "firmware", &f.owner_token, firmware("2.0.0"))
        .await;
    let report = json!({"version": "2.0.0", "outcome": "applied"});

    let rotated = f
        .act(device, "credentials/rotate", &f.owner_token, json!({}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{:?}", rotated.body);
    assert_eq!(rotated.headers["cache-control"], "no-store");
    let new = rotated.body["credential"]
        .as_str()
        .expect("a new credential")
        .to_owned();
    assert_ne!(new, old);
    assert!(new.starts_with(&format!("{device}.")));

    let before = f.app.event_count().await;
    let stale = f.report_with(device, &old, report.clone()).await;
    assert_refused(
        &stale,
        401,
        "invalid_credential",
        "the rotated-out credential",
    );
    assert_eq!(stale.headers["www-authenticate"], "Device");
    assert_eq!(f.app.event_count().await, before, "nothing appended");

    let fresh = f.report_with(device, &new, report).await;
    assert_eq!(fresh.status, StatusCode::OK, "{:?}", fresh.body);
    assert_eq!(f.view(device).await["firmware_version"], "2.0.0");

    // Only the owner rotates, and only an active device.
    let before = f.app.event_count().await;
    for (who, token) in [
        ("stranger", &f.stranger_token),
        ("admin", &f.admin),
        ("auditor", &f.auditor),
    ] {
        let a = f.act(device, "credentials/rotate", token, json!({})).await;
        assert_refused(&a, 403, "forbidden", who);
        assert!(a.body.get("credential").is_none());
    }
    let registered = f.register("SN-ROT-2").await;
    let before_registered = f.app.event_count().await;
    let early = f
        .act(registered, "credentials/rotate", &f.owner_token, json!({}))
        .await;
    assert_refused(&early, 422, "invalid_state", "rotating before activation");
    assert_eq!(f.app.event_count().await, before_registered);
    assert_eq!(
        f.app.event_count().await,
        before + 1,
        "only the registration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_commands_refuse_bad_wrong_and_foreign_credentials_and_inactive_devices() {
    let f = fleet().await;
    let (a, cred_a) = f.active("SN-A").await;
    let (b, cred_b) = f.active("SN-B").await;
    f.act(a, "firmware", &f.owner_token, firmware("1.1.0"))
        .await;
    f.act(b, "firmware", &f.owner_token, firmware("1.1.0"))
        .await;
    let body = json!({"version": "1.1.0", "outcome": "applied"});
    let secret_a = cred_a.split_once('.').expect("a secret").1.to_owned();
    let wrong = "f".repeat(64);
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no Authorization", None, 401, "unauthorized"),
        (
            "the owner's bearer token",
            Some(format!("Bearer {}", f.owner_token)),
            401,
            "unauthorized",
        ),
        (
            "an admin's bearer token",
            Some(format!("Bearer {}", f.admin)),
            401,
            "unauthorized",
        ),
        (
            "Basic",
            Some("Basic YWxpY2U6c2VjcmV0".into()),
            401,
            "unauthorized",
        ),
        (
            "the scheme alone",
            Some("Device".into()),
            401,
            "unauthorized",
        ),
        (
            "no secret",
            Some(format!("Device {a}")),
            401,
            "unauthorized",
        ),
        (
            "an empty secret",
            Some(format!("Device {a}.")),
            401,
            "unauthorized",
        ),
        (
            "not a device id",
            Some(format!("Device not-a-uuid.{secret_a}")),
            401,
            "unauthorized",
        ),
        (
            "a secret with a space",
            Some(format!("Device {a}.ab cd")),
            401,
            "unauthorized",
        ),
        (
            "an overlong secret",
            Some(format!("Device {a}.{}", "a".repeat(300))),
            401,
            "unauthorized",
        ),
        (
            "a wrong secret",
            Some(format!("Device {a}.{wrong}")),
            401,
            "invalid_credential",
        ),
        (
            "the secret without its last character",
            Some(format!("Device {a}.{}", &secret_a[..63])),
            401,
            "invalid_credential",
        ),
        (
            "A's secret under another id",
            Some(format!("Device {b}.{secret_a}")),
            401,
            "invalid_credential",
        ),
        (
            "an unknown device",
            Some(format!("Device {}.{secret_a}", Uuid::now_v7())),
            401,
            "invalid_credential",
        ),
        (
            "another device's credential",
            Some(format!("Device {cred_b}")),
            403,
            "forbidden",
        ),
    ];
    let before = f.app.event_count().await;
    for (label, auth, status, code) in &cases {
        let r = f.report(a, auth.as_deref(), body.clone()).await;
        assert_refused(&r, *status, code, label);
        if *status == 401 {
            assert_eq!(r.headers["www-authenticate"], "Device", "{label}");
        }
    }
    // A device credential is no bearer token: it opens neither a query nor an owner's command.
    let header = format!("Device {cred_a}");
    let get = f
        .app
        .send(
            Method::GET,
            &format!("/v1/devices/{a}"),
            None,
            None,
            &[("authorization", header.as_str())],
        )
        .await;
    assert_refused(&get, 401, "unauthorized", "a device credential on GET");
    let suspend = f
        .app
        .send(
            Method::POST,
            &format!("/v1/devices/{a}/suspend"),
            None,
            Some(json!({"reason": "self"})),
            &[("authorization", header.as_str())],
        )
        .await;
    assert_refused(&suspend, 401, "unauthorized", "a device suspending itself");
    assert_eq!(f.app.event_count().await, before, "nothing appended");

    // Suspended: the right credential is refused until the device is activated again, which
    // issues a new credential and retires the old one.
    assert_eq!(
        f.act(a, "suspend", &f.owner_token, json!({"reason": "lost"}))
            .await
            .status,
        StatusCode::OK
    );
    let before = f.app.event_count().await;
    let suspended = f.report_with(a, &cred_a, body.clone()).await;
    assert_refused(&suspended, 403, "device_not_active", "a suspended device");
    assert_eq!(f.app.event_count().await, before);
    let reactivated = f.credential(a, "activate").await;
    assert_ne!(reactivated, cred_a);
    let before = f.app.event_count().await;
    let old = f.report_with(a, &cred_a, body.clone()).await;
    assert_refused(
        &old,
        401,
        "invalid_credential",
        "the pre-suspension credential",
    );
    assert_eq!(f.app.event_count().await, before);
    let ok = f.report_with(a, &reactivated, body.clone()).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);

    // Decommissioned: the credential is gone for good.
    assert_eq!(
        f.act(b, "decommission", &f.admin, json!({"reason": "scrapped"}))
            .await
            .status,
        StatusCode::OK
    );
    let before = f.app.event_count().await;
    let gone = f.report_with(b, &cred_b, body).await;
    assert_refused(&gone, 401, "invalid_credential", "a decommissioned device");
    assert_eq!(f.app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serial_is_registered_once_even_by_concurrent_requests() {
    let f = fleet().await;
    f.register("SN-0042").await;
    let before = f.app.event_count().await;
    for (token, serial) in [
        (&f.owner_token, "SN-0042"),
        (&f.owner_token, "sn-0042"),
        (&f.stranger_token, "SN-0042"),
    ] {
        let a = f.register_as(token, serial).await;
        assert_refused(&a, 409, "serial_taken", serial);
    }
    let admin = f
        .app
        .post(
            "/v1/devices",
            &f.admin,
            json!({"serial": "SN-0042", "model": "m", "firmware_version": "1", "owner": f.owner}),
        )
        .await;
    assert_refused(&admin, 409, "serial_taken", "an admin's registration");
    assert_eq!(f.app.event_count().await, before, "nothing appended");

    let racers = (0..6).map(|_| f.register_as(&f.owner_token, "SN-RACE"));
    let answers = futures::future::join_all(racers).await;
    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    for a in answers.iter().filter(|a| a.status != StatusCode::CREATED) {
        assert_refused(a, 409, "serial_taken", "a concurrent twin");
    }
    let registered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'DeviceRegistered' \
         AND payload->>'serial' = 'SN-RACE'",
    )
    .fetch_one(&f.app.db.pool)
    .await
    .expect("count");
    assert_eq!(registered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_owner_or_an_admin_acts_on_a_device_and_auditors_only_read() {
    let f = fleet().await;
    let device = f.register("SN-AUTH").await;
    let no_account = f.app.token("newcomer", &[Role::Customer]);
    let before = f.app.event_count().await;
    let reason = json!({"reason": "because"});
    let writes = [
        ("activate", json!({})),
        ("credentials/rotate", json!({})),
        ("firmware", firmware("2.0.0")),
        ("suspend", reason.clone()),
        ("decommission", reason.clone()),
    ];
    for (what, body) in &writes {
        for (who, token) in [("stranger", &f.stranger_token), ("auditor", &f.auditor)] {
            let a = f.act(device, what, token, body.clone()).await;
            assert_refused(&a, 403, "forbidden", &format!("{who} {what}"));
        }
        let a = f.act(device, what, &no_account, body.clone()).await;
        assert_refused(&a, 403, "no_account", &format!("no account {what}"));
    }
    let admin_activates = f.act(device, "activate", &f.admin, json!({})).await;
    assert_refused(&admin_activates, 403, "forbidden", "admin activate");
    let auditor_registers = f.register_as(&f.auditor, "SN-AUDIT").await;
    assert_refused(&auditor_registers, 403, "forbidden", "auditor register");
    let for_other = f
        .app
        .post(
            "/v1/devices",
            &f.stranger_token,
            json!({"serial": "SN-X", "model": "m", "firmware_version": "1", "owner": f.owner}),
        )
        .await;
    assert_refused(&for_other, 403, "forbidden", "a customer for another owner");
    let admin_without_owner = f.register_as(&f.admin, "SN-ADM").await;
    assert_refused(
        &admin_without_owner,
        400,
        "invalid_input",
        "admin, no owner",
    );
    assert_eq!(admin_without_owner.body["field"], "owner");
    let unknown_owner = f
        .app
        .post(
            "/v1/devices",
            &f.admin,
            json!({"serial": "SN-ADM", "model": "m", "firmware_version": "1", "owner": Uuid::now_v7()}),
        )
        .await;
    assert_refused(&unknown_owner, 404, "not_found", "an unknown owner");
    let stranger_get = f
        .app
        .get(&format!("/v1/devices/{device}"), &f.stranger_token)
        .await;
    assert_refused(&stranger_get, 403, "forbidden", "stranger GET");
    let unknown = Uuid::now_v7();
    let get_unknown = f
        .app
        .get(&format!("/v1/devices/{unknown}"), &f.owner_token)
        .await;
    assert_refused(&get_unknown, 404, "not_found", "GET an unknown device");
    for (what, body) in &writes {
        let a = f.act(unknown, what, &f.owner_token, body.clone()).await;
        assert_refused(&a, 404, "not_found", &format!("{what} an unknown device"));
    }
    assert_eq!(f.app.event_count().await, before, "nothing appended");

    // Auditors and admins read; admins register for an owner and act on any device.
    let audited = f
        .app
        .get(&format!("/v1/devices/{device}"), &f.auditor)
        .await;
    assert_eq!(audited.status, StatusCode::OK, "{:?}", audited.body);
    let by_admin = f
        .app
        .post(
            "/v1/devices",
            &f.admin,
            json!({"serial": "SN-ADM", "model": "m", "firmware_version": "1", "owner": f.owner}),
        )
        .await;
    assert_eq!(by_admin.status, StatusCode::CREATED, "{:?}", by_admin.body);
    assert_eq!(f.view(by_admin.id()).await["owner"], json!(f.owner));
    let role: String = sqlx::query_scalar(
        "SELECT actor_role FROM events WHERE stream_id = $1 AND event_type = 'DeviceRegistered'",
    )
    .bind(by_admin.id())
    .fetch_one(&f.app.db.pool)
    .await
    .expect("the registration");
    assert_eq!(role, "admin");

    f.credential(device, "activate").await;
    let scheduled = f.act(device, "firmware", &f.admin, firmware("2.0.0")).await;
    assert_eq!(scheduled.status, StatusCode::OK, "{:?}", scheduled.body);
    // If-Match: a stale version is 412, the current one goes through.
    let stale = f
        .app
        .send(
            Method::POST,
            &format!("/v1/devices/{device}/suspend"),
            Some(&f.admin),
            Some(reason.clone()),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_refused(&stale, 412, "precondition_failed", "a stale If-Match");
    let etag = f
        .app
        .get(&format!("/v1/devices/{device}"), &f.admin)
        .await
        .headers["etag"]
        .to_str()
        .expect("an ETag")
        .to_owned();
    assert_eq!(etag, "\"3\"");
    let suspended = f
        .app
        .send(
            Method::POST,
            &format!("/v1/devices/{device}/suspend"),
            Some(&f.admin),
            Some(reason.clone()),
            &[("if-match", etag.as_str())],
        )
        .await;
    assert_eq!(suspended.status, StatusCode::OK, "{:?}", suspended.body);
    assert_eq!(f.view(device).await["status"], "suspended");
    let decommissioned = f
        .act(device, "decommission", &f.owner_token, reason.clone())
        .await;
    assert_eq!(
        decommissioned.status,
        StatusCode::OK,
        "{:?}",
        decommissioned.body
    );
    assert_eq!(f.view(device).await["status"], "decommissioned");

    // Decommissioned is terminal.
    let before = f.app.event_count().await;
    for (what, body) in &writes {
        let a = f.act(device, what, &f.owner_token, body.clone()).await;
        assert_refused(&a, 422, "invalid_state", what);
    }
    let a = f.act(device, "suspend", &f.admin, reason).await;
    assert_refused(&a, 422, "invalid_state", "admin suspend");
    assert_eq!(f.app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_device_route_refuses_bad_input_with_the_field_and_appends_nothing() {
    let f = fleet().await;
    let (device, credential) = f.active("SN-INPUT").await;
    f.act(device, "firmware", &f.owner_token, firmware("1.1.0"))
        .await;
    let long = |n: usize| "a".repeat(n);
    let reg = |serial: Value, model: Value, fw: Value| json!({"serial": serial, "model": model, "firmware_version": fw});
    let register: Vec<(Value, &str)> = vec![
        (json!({"model": "m", "firmware_version": "1"}), "serial"),
        (reg(json!(""), json!("m"), json!("1")), "serial"),
        (reg(json!("has space"), json!("m"), json!("1")), "serial"),
        (reg(json!("sn/1"), json!("m"), json!("1")), "serial"),
        (reg(json!(long(65)), json!("m"), json!("1")), "serial"),
        (reg(json!(5), json!("m"), json!("1")), "serial"),
        (reg(json!("S1"), json!(""), json!("1")), "model"),
        (reg(json!("S1"), json!("   "), json!("1")), "model"),
        (reg(json!("S1"), json!(long(101)), json!("1")), "model"),
        (reg(json!("S1"), json!("m\u{0}"), json!("1")), "model"),
        (reg(json!("S1"), json!("m"), json!("")), "firmware_version"),
        (
            reg(json!("S1"), json!("m"), json!("1 0")),
            "firmware_version",
        ),
        (
            reg(json!("S1"), json!("m"), json!(long(51))),
            "firmware_version",
        ),
        (json!({"serial": "S1", "model": "m"}), "firmware_version"),
        (
            json!({"serial": "S1", "model": "m", "firmware_version": "1", "owner": "nope"}),
            "owner",
        ),
        (
            json!({"serial": "S1", "model": "m", "firmware_version": "1", "extra": 1}),
            "extra",
        ),
    ];
    let fw =
        |t: Value, u: Value, s: Value| json!({"target_version": t, "artifact_url": u, "sha256": s});
    let url = json!("https://firmware.example.com/x.bin");
    let schedule: Vec<(Value, &str)> = vec![
        (fw(json!(""), url.clone(), json!(SHA)), "target_version"),
        (fw(json!("2 0"), url.clone(), json!(SHA)), "target_version"),
        (
            fw(json!(long(51)), url.clone(), json!(SHA)),
            "target_version",
        ),
        (
            fw(
                json!("2.0"),
                json!("http://firmware.example.com/x.bin"),
                json!(SHA),
            ),
            "artifact_url",
        ),
        (
            fw(json!("2.0"), json!("https://"), json!(SHA)),
            "artifact_url",
        ),
        (
            fw(json!("2.0"), json!("https://a b"), json!(SHA)),
            "artifact_url",
        ),
        (
            fw(
                json!("2.0"),
                json!(format!("https://{}", long(2000))),
                json!(SHA),
            ),
            "artifact_url",
        ),
        (
            fw(json!("2.0"), url.clone(), json!(SHA.to_uppercase())),
            "sha256",
        ),
        (fw(json!("2.0"), url.clone(), json!(&SHA[..63])), "sha256"),
        (
            fw(json!("2.0"), url.clone(), json!(format!("{}g", &SHA[..63]))),
            "sha256",
        ),
        (
            json!({"target_version": "2.0", "artifact_url": url}),
            "sha256",
        ),
        (
            json!({"target_version": "2.0", "artifact_url": url, "sha256": SHA, "extra": true}),
            "extra",
        ),
    ];
    let report: Vec<(Value, &str)> = vec![
        (json!({"version": "", "outcome": "applied"}), "version"),
        (json!({"version": "1 1", "outcome": "applied"}), "version"),
        (json!({"outcome": "applied"}), "version"),
        (json!({"version": "1.1.0", "outcome": "maybe"}), "outcome"),
        (json!({"version": "1.1.0"}), "outcome"),
        (
            json!({"version": "1.1.0", "outcome": "failed", "detail": ""}),
            "detail",
        ),
        (
            json!({"version": "1.1.0", "outcome": "failed", "detail": long(1001)}),
            "detail",
        ),
        (
            json!({"version": "1.1.0", "outcome": "failed", "detail": "a\u{7}b"}),
            "detail",
        ),
        (
            json!({"version": "1.1.0", "outcome": "applied", "extra": 1}),
            "extra",
        ),
    ];
    let reasons: Vec<(Value, &str)> = vec![
        (json!({"reason": ""}), "reason"),
        (json!({"reason": "  "}), "reason"),
        (json!({"reason": long(501)}), "reason"),
        (json!({}), "reason"),
        (json!({"reason": "x", "extra": 1}), "extra"),
    ];
    let before = f.app.event_count().await;
    let mut checked = 0;
    let mut check = |a: Answer, field: &str, what: String| {
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {:?}", a.body);
        assert_eq!(a.body["code"], "invalid_input", "{what}: {:?}", a.body);
        assert_eq!(a.body["field"], field, "{what}: {:?}", a.body);
        checked += 1;
    };
    for (body, field) in register {
        let a = f
            .app
            .post("/v1/devices", &f.owner_token, body.clone())
            .await;
        check(a, field, format!("register {body}"));
    }
    for (body, field) in schedule {
        let a = f
            .act(device, "firmware", &f.owner_token, body.clone())
            .await;
        check(a, field, format!("schedule {body}"));
    }
    for (body, field) in report {
        let a = f.report_with(device, &credential, body.clone()).await;
        check(a, field, format!("report {body}"));
    }
    for what in ["suspend", "decommission"] {
        for (body, field) in &reasons {
            let a = f.act(device, what, &f.owner_token, body.clone()).await;
            check(a, field, format!("{what} {body}"));
        }
    }
    for what in ["activate", "credentials/rotate"] {
        let a = f.act(device, what, &f.owner_token, json!({"x": 1})).await;
        check(a, "x", what.to_owned());
    }
    let path = f
        .app
        .post("/v1/devices/not-a-uuid/activate", &f.owner_token, json!({}))
        .await;
    assert_eq!(path.status, StatusCode::BAD_REQUEST, "{:?}", path.body);
    assert_eq!(checked, 16 + 12 + 9 + 10 + 2);
    assert_eq!(f.app.event_count().await, before, "nothing appended");
    assert_eq!(f.view(device).await["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_credential_is_shown_once_and_only_its_hash_is_stored_never_answered() {
    let f = fleet().await;
    let mut answers: Vec<String> = Vec::new();
    let mut keep = |a: &Answer| {
        answers.push(format!("{:?} {}", a.headers, a.body));
    };
    let reg = f.register_as(&f.owner_token, "SN-HASH").await;
    keep(&reg);
    let device = reg.id();

    // Activation with an Idempotency-Key: the replay answers the same, without the credential.
    let path = format!("/v1/devices/{device}/activate");
    let key = [("idempotency-key", "activate-once")];
    let activate = || {
        f.app
            .send(Method::POST, &path, Some(&f.owner_token), None, &key)
    };
    let first = activate().await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    keep(&first);
    let credential = first.body["credential"]
        .as_str()
        .expect("the credential")
        .to_owned();
    let replay = activate().await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    keep(&replay);
    for field in ["id", "version", "position"] {
        assert_eq!(replay.body[field], first.body[field], "{field}");
    }
    assert!(
        replay.body.get("credential").is_none(),
        "a replay never shows the credential again: {:?}",
        replay.body
    );
    assert_eq!(f.count("DeviceActivated").await, 1);

    for a in [
        f.act(device, "firmware", &f.owner_token, firmware("1.1.0"))
            .await,
        f.report_with(
            device,
            &credential,
            json!({"version": "1.1.0", "outcome": "applied"}),
        )
        .await,
        f.app
            .get(&format!("/v1/devices/{device}"), &f.owner_token)
            .await,
        f.app.get(&format!("/v1/devices/{device}"), &f.admin).await,
        f.app
            .get(&format!("/v1/devices/{device}"), &f.auditor)
            .await,
    ] {
        assert!(a.status.is_success(), "{:?}", a.body);
        keep(&a);
    }
    let rotated = f
        .act(device, "credentials/rotate", &f.owner_token, json!({}))
        .await;
    keep(&rotated);
    let rotated = rotated.body["credential"]
        .as_str()
        .expect("a new credential")
        .to_owned();
    for a in [
        f.act(
            device,
            "suspend",
            &f.owner_token,
            json!({"reason": "audit"}),
        )
        .await,
        f.app
            .get(&format!("/v1/devices/{device}"), &f.owner_token)
            .await,
        f.act(
            device,
            "decommission",
            &f.owner_token,
            json!({"reason": "end"}),
        )
        .await,
        f.app
            .get(&format!("/v1/devices/{device}"), &f.owner_token)
            .await,
    ] {
        assert!(a.status.is_success(), "{:?}", a.body);
        keep(&a);
    }

    // The log keeps SHA-256(secret), never the secret.
    let pool = &f.app.db.pool;
    let mut hashes = Vec::new();
    for (event, cred) in [
        ("DeviceActivated", &credential),
        ("DeviceCredentialRotated", &rotated),
    ] {
        let secret = cred.split_once('.').expect("<id>.<secret>").1;
        let (stored, expected): (String, String) = sqlx::query_as(
            "SELECT payload->>'credential_hash', encode(sha256(convert_to($2, 'UTF8')), 'hex') \
             FROM events WHERE event_type = $1",
        )
        .bind(event)
        .bind(secret)
        .fetch_one(pool)
        .await
        .expect("the event");
        assert_eq!(stored, expected, "{event} keeps the secret's SHA-256");
        let leaks: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM events WHERE strpos(payload::text, $1) > 0) \
             + (SELECT count(*) FROM idempotency WHERE strpos(coalesce(body::text, ''), $1) > 0) \
             + (SELECT count(*) FROM snapshots WHERE strpos(state::text, $1) > 0)",
        )
        .bind(secret)
        .fetch_one(pool)
        .await
        .expect("search");
        assert_eq!(leaks, 0, "the secret is stored nowhere");
        hashes.push(stored);
    }
    for answer in &answers {
        assert!(!answer.contains("credential_hash"), "{answer}");
        for hash in &hashes {
            assert!(!answer.contains(hash.as_str()), "a hash in {answer}");
        }
    }
    assert_eq!(answers.len(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_device_routes_are_described_in_openapi() {
    let app = TestApp::new().await;
    let token = app.token("reader", &[Role::Auditor]);
    let doc = app.get("/openapi.json", &token).await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in [
        "/v1/devices",
        "/v1/devices/{id}",
        "/v1/devices/{id}/activate",
        "/v1/devices/{id}/credentials/rotate",
        "/v1/devices/{id}/firmware",
        "/v1/devices/{id}/firmware/report",
        "/v1/devices/{id}/suspend",
        "/v1/devices/{id}/decommission",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} is described");
    }
    let report = &doc.body["paths"]["/v1/devices/{id}/firmware/report"]["post"];
    assert_eq!(report["security"], json!([{"device": []}]));
    assert!(doc.body["components"]["securitySchemes"]["device"].is_object());
    let activate = &doc.body["paths"]["/v1/devices/{id}/activate"]["post"]["responses"]["200"];
    assert!(
        activate.to_string().contains("CredentialAnswer"),
        "{activate}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_beats_a_device_command_already_past_authentication() {
    let f = fleet().await;
    let (device, credential) = f.active("SN-INFLIGHT").await;
    f.act(device, "firmware", &f.owner_token, firmware("3.0.0"))
        .await;
    let service = &f.app.state.service;
    let secret = credential.split_once('.').expect("<id>.<secret>").1;
    let authenticated = service
        .authenticate_device(device, secret)
        .await
        .expect("the current credential authenticates");
    // The owner rotates while the device's request is between authentication and commit.
    f.credential(device, "credentials/rotate").await;
    let before = f.app.event_count().await;
    let env = commands::Envelope::new(authenticated.actor());
    let input = commands::devices::ReportFirmware {
        version: "3.0.0".into(),
        outcome: domain::device::FirmwareOutcome::Applied,
        detail: None,
    };
    match service
        .report_firmware(&env, &authenticated, device, input)
        .await
    {
        Err(commands::CommandError::Refused(r)) => {
            assert_eq!((r.status, r.code.as_str()), (401, "invalid_credential"));
        }
        other => panic!("refused expected, got {other:?}"),
    }
    assert_eq!(f.app.event_count().await, before, "nothing appended");
    assert!(matches!(
        service.authenticate_device(device, secret).await,
        Err(commands::CommandError::Refused(r)) if r.status == 401
    ));
}
