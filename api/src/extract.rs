//! Extractors: the authenticated caller, and a command request (auth, JSON body,
//! `Idempotency-Key`, `If-Match`) turned into an envelope and a typed body.

use crate::error::Problem;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
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

/// Parses a JSON body; a failure names the offending field where there is one.
fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
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
        let headers = req.headers().clone();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
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
}
