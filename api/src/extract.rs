//! Extractors: the authenticated caller, and a command request (auth, JSON body,
//! `Idempotency-Key`, `If-Match`) turned into an envelope and a typed body.

use crate::error::Problem;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::devices::AuthenticatedDevice;
use commands::{Actor, Envelope, IdempotencyKey};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The authenticated caller of a query.
pub struct Caller(pub Actor);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(&parts.headers, state).map(Caller)
    }
}

fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Actor, Problem> {
    let value = match headers.get(header::AUTHORIZATION) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Problem::unauthorized("the Authorization header is not text"))?,
        ),
        None => None,
    };
    state.auth.authenticate(value)
}

/// A command: who sends it, with which key and precondition, and its body.
pub struct CommandRequest<T> {
    /// Actor, ids, idempotency key, If-Match.
    pub env: Envelope,
    /// The parsed body.
    pub body: T,
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Problem> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| Problem::invalid(name, format!("{name} must be text"))),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(key) = header_text(headers, "idempotency-key")? else {
        return Ok(None);
    };
    if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::invalid(
            "Idempotency-Key",
            "must be 1-200 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(value) = header_text(headers, "if-match")? else {
        return Ok(None);
    };
    if value.trim() == "*" {
        // "Any current version": every command but the creating ones needs the aggregate anyway.
        return Ok(None);
    }
    let v = value.trim().trim_start_matches("W/").trim_matches('"');
    v.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| Problem::invalid("If-Match", "must be an ETag such as \"3\""))
}

fn uuid_header(headers: &HeaderMap, name: &str) -> Result<Option<Uuid>, Problem> {
    match header_text(headers, name)? {
        None => Ok(None),
        Some(v) => Uuid::parse_str(v)
            .map(Some)
            .map_err(|_| Problem::invalid(name, format!("{name} must be a UUID"))),
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        })
}

/// Parses a JSON body; a failure names the offending field where there is one.
pub(crate) fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = parsed.map_err(|e| {
        let inner = e.inner().to_string();
        let path = e.path().to_string();
        let named = inner
            .split_once("unknown field `")
            .or_else(|| inner.split_once("missing field `"));
        let field = match named {
            // Unknown and missing fields are reported on their parent: name the field itself.
            Some((_, rest)) => {
                let name = rest.split('`').next().unwrap_or_default();
                if path == "." {
                    name.to_owned()
                } else if path.ends_with(name) {
                    path
                } else {
                    format!("{path}.{name}")
                }
            }
            None => path,
        };
        let detail = format!("the JSON body is invalid: {inner}");
        if field == "." || field.is_empty() || e.inner().is_syntax() || e.inner().is_eof() {
            Problem::new(400, "invalid_input", detail)
        } else {
            Problem::invalid(&field, detail)
        }
    })?;
    de.end().map_err(|e| {
        Problem::new(
            400,
            "invalid_input",
            format!("the JSON body is invalid: {e}"),
        )
    })?;
    Ok(value)
}

impl<T: DeserializeOwned> FromRequest<AppState> for CommandRequest<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let actor = authenticate(req.headers(), state)?;
        command_request(actor, req, state).await
    }
}

/// The rest of a command once its actor is known: body, idempotency key, If-Match and the
/// correlation headers.
async fn command_request<T: DeserializeOwned>(
    actor: Actor,
    req: Request,
    state: &AppState,
) -> Result<CommandRequest<T>, Problem> {
    let headers = req.headers().clone();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let is_json = is_json(&headers);
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        let status = rejection.status().as_u16();
        if status == 413 {
            Problem::new(413, "body_too_large", "the body is larger than 64 KiB")
        } else {
            Problem::new(
                400,
                "invalid_input",
                format!("the body could not be read: {rejection}"),
            )
        }
    })?;
    // A command without parameters may come with no body at all.
    let body: T = if bytes.is_empty() {
        serde_json::from_slice(b"{}").map_err(|e| {
            Problem::new(
                400,
                "invalid_input",
                format!("a JSON body is required: {e}"),
            )
        })?
    } else {
        if !is_json {
            return Err(Problem::new(
                415,
                "unsupported_media_type",
                "send Content-Type: application/json",
            ));
        }
        parse_body(&bytes)?
    };
    let idempotency = idempotency_key(&headers)?.map(|key| {
        let mut h = Sha256::new();
        h.update(method.as_str().as_bytes());
        h.update(b" ");
        h.update(path.as_bytes());
        h.update(b"\n");
        h.update(&bytes);
        IdempotencyKey {
            key,
            request_hash: hex::encode(h.finalize()),
        }
    });
    let mut env = Envelope::new(actor);
    env.idempotency = idempotency;
    env.if_match = if_match(&headers)?;
    env.correlation_id = uuid_header(&headers, "x-correlation-id")?;
    env.causation_id = uuid_header(&headers, "x-causation-id")?;
    Ok(CommandRequest { env, body })
}

/// A command a device sends itself, authenticated with its device credential
/// (`Authorization: Device <device_id>.<secret>`) instead of a bearer token. The body, the
/// `Idempotency-Key` (scoped to the subject `device:<id>`) and `If-Match` are handled as for
/// every command.
pub struct DeviceCommandRequest<T> {
    /// The device that proved itself.
    pub device: AuthenticatedDevice,
    /// Actor (`device:<id>`), ids, idempotency key, If-Match.
    pub env: Envelope,
    /// The parsed body.
    pub body: T,
}

/// The longest secret accepted in a device credential before it is even hashed.
const MAX_DEVICE_SECRET_CHARS: usize = 256;

/// Parses `Authorization: Device <device_id>.<secret>` (the scheme case-insensitively).
fn device_credential(headers: &HeaderMap) -> Result<(Uuid, String), Problem> {
    let expected = "send Authorization: Device <device_id>.<secret>";
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized(expected))?
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not text"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| Problem::unauthorized(expected))?;
    if !scheme.eq_ignore_ascii_case("Device") {
        return Err(Problem::unauthorized(format!(
            "this route takes a device credential, not {scheme}: {expected}"
        )));
    }
    let (id, secret) = rest
        .trim()
        .split_once('.')
        .ok_or_else(|| Problem::unauthorized(expected))?;
    let id = Uuid::try_parse(id).map_err(|_| {
        Problem::unauthorized("the device credential must start with the device's id")
    })?;
    if secret.is_empty()
        || secret.len() > MAX_DEVICE_SECRET_CHARS
        || !secret.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Problem::unauthorized(
            "the device credential's secret is missing or malformed",
        ));
    }
    Ok((id, secret.to_owned()))
}

/// An error answer of a device-authenticated route: a 401 challenges for a device credential.
pub(crate) fn device_challenge(response: Response) -> Response {
    let mut response = response;
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Device"));
    }
    response
}

impl<T: DeserializeOwned> FromRequest<AppState> for DeviceCommandRequest<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let refuse = |p: Problem| device_challenge(p.into_response());
        let (id, secret) = device_credential(req.headers()).map_err(refuse)?;
        let device = state
            .service
            .authenticate_device(id, &secret)
            .await
            .map_err(|e| refuse(Problem::from(e)))?;
        let CommandRequest { env, body } = command_request(device.actor(), req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(DeviceCommandRequest { device, env, body })
    }
}

/// A device proving itself with its credential (`Authorization: Device <device_id>.<secret>`)
/// on a route that is not a command (telemetry). Refused exactly as for device commands: 401
/// `invalid_credential` for an unknown device or a wrong secret (also a decommissioned or
/// never-activated device, which holds no credential), 403 `device_not_active` for the right
/// credential of a suspended device.
pub struct DeviceCaller(pub AuthenticatedDevice);

impl FromRequestParts<AppState> for DeviceCaller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let refuse = |p: Problem| device_challenge(p.into_response());
        let (id, secret) = device_credential(&parts.headers).map_err(refuse)?;
        state
            .service
            .authenticate_device(id, &secret)
            .await
            .map(DeviceCaller)
            .map_err(|e| refuse(Problem::from(e)))
    }
}
