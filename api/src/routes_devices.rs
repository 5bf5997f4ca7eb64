//! Device routes: register, activate, rotate the credential, schedule a firmware update, the
//! device's own firmware report, suspend, decommission, and GET a device.
//!
//! Activation and rotation answer 200 with `{id, version, position, credential}`: the
//! credential (`<device_id>.<secret>`) is shown in that answer only. Replaying the request
//! with the same `Idempotency-Key` returns the first answer without the `credential` field
//! (the secret is not kept anywhere); a lost credential is replaced by rotating it.
//! `POST /v1/devices/{id}/firmware/report` takes the device's own credential
//! (`Authorization: Device <device_id>.<secret>`), not a bearer token.

use crate::error::Problem;
use crate::extract::{device_challenge, CommandRequest, DeviceCommandRequest};
use crate::routes::{answer, CommandHeaders, CommandResponses, NoBody, ReasonBody};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use commands::devices::{DeviceAction, IssuedCredential, RegisterDevice, ReportFirmware};
use commands::{CommandError, CommandResult, Envelope};
use domain::device::FirmwareOutcome;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

struct DeviceAuth;

impl Modify for DeviceAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "device",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "a device credential: `Device <device_id>.<secret>`",
            ))),
        );
    }
}

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(
        register_device,
        activate_device,
        rotate_device_credential,
        schedule_firmware_update,
        report_firmware,
        suspend_device,
        decommission_device
    ),
    modifiers(&DeviceAuth)
)]
pub struct Api;

/// These routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/devices", post(register_device))
        .route("/v1/devices/{id}/activate", post(activate_device))
        .route(
            "/v1/devices/{id}/credentials/rotate",
            post(rotate_device_credential),
        )
        .route("/v1/devices/{id}/firmware", post(schedule_firmware_update))
        .route("/v1/devices/{id}/firmware/report", post(report_firmware))
        .route("/v1/devices/{id}/suspend", post(suspend_device))
        .route("/v1/devices/{id}/decommission", post(decommission_device))
}

/// POST /v1/devices.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDeviceBody {
    /// The manufacturer's serial number: 1-64 of `A-Z a-z 0-9 . _ -`, unique
    /// case-insensitively.
    serial: String,
    /// The model name.
    model: String,
    /// The firmware version it ships with.
    firmware_version: String,
    /// Admin only: the owning account (defaults to the caller's).
    #[serde(default)]
    owner: Option<Uuid>,
}

#[utoipa::path(post, path = "/v1/devices", tag = "commands", request_body = RegisterDeviceBody, params(CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn register_device(
    State(s): State<AppState>,
    req: CommandRequest<RegisterDeviceBody>,
) -> Response {
    let b = req.body;
    let input = RegisterDevice {
        serial: b.serial,
        model: b.model,
        firmware_version: b.firmware_version,
        owner: b.owner,
    };
    let env = &req.env;
    answer(
        s.service
            .idempotent(env, || s.service.register_device(env, input))
            .await,
    )
}

/// The answer of an activation or a rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialAnswer {
    /// The device's id.
    id: Uuid,
    /// The device's version after the command.
    version: i64,
    /// The global log position of the last event written.
    position: i64,
    /// `<device_id>.<secret>`, to send as `Authorization: Device <credential>`. Present only
    /// in the answer that issued it, never in an idempotent replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

fn same_result(a: &CommandResult, b: &CommandResult) -> bool {
    (a.id, a.version, a.position) == (b.id, b.version, b.position)
}

/// Runs an activation or a rotation under its idempotency key and answers with the new
/// credential when this very request issued it.
async fn issue(s: &AppState, env: &Envelope, id: Uuid, rotate: bool) -> Response {
    let issued: Mutex<Option<IssuedCredential>> = Mutex::new(None);
    let result: Result<CommandResult, CommandError> = s
        .service
        .idempotent(env, || async {
            let fresh = if rotate {
                s.service.rotate_device_credential(env, id).await?
            } else {
                s.service.activate_device(env, id).await?
            };
            let result = fresh.result.clone();
            *issued.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
            Ok(result)
        })
        .await;
    let r = match result {
        Ok(r) => r,
        Err(e) => return Problem::from(e).into_response(),
    };
    // A replay (or an answer recorded by a concurrent twin) did not issue this credential.
    let credential = issued
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .filter(|i| same_result(&i.result, &r))
        .map(|i| i.credential().to_owned());
    let body = CredentialAnswer {
        id: r.id,
        version: r.version,
        position: r.position,
        credential,
    };
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::OK);
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", r.version)) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[utoipa::path(post, path = "/v1/devices/{id}/activate", tag = "commands", params(("id" = Uuid, Path, description = "device id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses, (status = 200, description = "activated: id, version, position and the device credential, shown once (an idempotent replay answers without it)", body = CredentialAnswer)))]
async fn activate_device(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    issue(&s, &req.env, id, false).await
}

#[utoipa::path(post, path = "/v1/devices/{id}/credentials/rotate", tag = "commands", params(("id" = Uuid, Path, description = "device id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses, (status = 200, description = "rotated: id, version, position and the new device credential, shown once (an idempotent replay answers without it); the old one no longer works", body = CredentialAnswer)))]
async fn rotate_device_credential(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<NoBody>,
) -> Response {
    issue(&s, &req.env, id, true).await
}

async fn act(s: &AppState, env: &Envelope, id: Uuid, action: DeviceAction) -> Response {
    answer(
        s.service
            .idempotent(env, || s.service.device_command(env, id, action))
            .await,
    )
}

/// POST /v1/devices/{id}/firmware.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFirmwareBody {
    /// The version to install (differs from the running one).
    target_version: String,
    /// Where the device downloads it: an https:// URL.
    artifact_url: String,
    /// The artifact's SHA-256: 64 lower-case hexadecimal characters.
    sha256: String,
}

#[utoipa::path(post, path = "/v1/devices/{id}/firmware", tag = "commands", request_body = ScheduleFirmwareBody, params(("id" = Uuid, Path, description = "device id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn schedule_firmware_update(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ScheduleFirmwareBody>,
) -> Response {
    let b = req.body;
    let action = DeviceAction::ScheduleFirmwareUpdate {
        target_version: b.target_version,
        artifact_url: b.artifact_url,
        sha256: b.sha256,
    };
    act(&s, &req.env, id, action).await
}

/// POST /v1/devices/{id}/firmware/report.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportFirmwareBody {
    /// The version the device now reports (the target version when applied).
    version: String,
    /// `applied` or `failed`.
    #[schema(value_type = String, example = "applied")]
    outcome: FirmwareOutcome,
    /// Optional detail, 1-1,000 characters (an error message on failure).
    #[serde(default)]
    detail: Option<String>,
}

#[utoipa::path(post, path = "/v1/devices/{id}/firmware/report", tag = "commands", request_body = ReportFirmwareBody, params(("id" = Uuid, Path, description = "device id"), CommandHeaders), security(("device" = [])), responses(CommandResponses))]
async fn report_firmware(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: DeviceCommandRequest<ReportFirmwareBody>,
) -> Response {
    let b = req.body;
    let input = ReportFirmware {
        version: b.version,
        outcome: b.outcome,
        detail: b.detail,
    };
    let env = &req.env;
    let device = &req.device;
    device_challenge(answer(
        s.service
            .idempotent(env, || s.service.report_firmware(env, device, id, input))
            .await,
    ))
}

#[utoipa::path(post, path = "/v1/devices/{id}/suspend", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "device id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn suspend_device(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    let action = DeviceAction::Suspend {
        reason: req.body.reason,
    };
    act(&s, &req.env, id, action).await
}

#[utoipa::path(post, path = "/v1/devices/{id}/decommission", tag = "commands", request_body = ReasonBody, params(("id" = Uuid, Path, description = "device id"), CommandHeaders), security(("bearer" = [])), responses(CommandResponses))]
async fn decommission_device(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    req: CommandRequest<ReasonBody>,
) -> Response {
    let action = DeviceAction::Decommission {
        reason: req.body.reason,
    };
    act(&s, &req.env, id, action).await
}
