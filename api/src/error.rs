//! problem+json errors (RFC 9457) with stable codes: the one place that maps errors to HTTP.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::CommandError;
use serde::Serialize;

/// An error answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// The stable machine-readable code.
    pub code: String,
    /// The offending input field, for 400s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    /// A problem with `status`, `code` and `detail`.
    pub fn new(status: u16, code: &str, detail: impl Into<String>) -> Self {
        let title = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
            .to_owned();
        Self {
            kind: format!("/problems/{code}"),
            title,
            status,
            detail: detail.into(),
            code: code.to_owned(),
            field: None,
        }
    }

    /// 400 for a field.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        let mut p = Self::new(400, "invalid_input", detail);
        p.field = Some(field.to_owned());
        p
    }

    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<CommandError> for Problem {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(i) => Problem::invalid(i.field, i.to_string()),
            CommandError::Refused(r) => Problem::new(r.status, &r.code, r.detail),
            CommandError::Conflict | CommandError::IdempotencyRace => Problem::new(
                409,
                "concurrency_conflict",
                "the aggregate kept changing while the command was retried; try again",
            ),
            CommandError::IdempotencyKeyReused => Problem::new(
                422,
                "idempotency_key_reused",
                "the Idempotency-Key was already used with a different request",
            ),
            CommandError::Load(commands::repo::LoadError::Store(e)) => {
                tracing::error!(error = %e, "command failed in the store");
                Problem::new(503, "unavailable", "the service could not complete the command; retry with the same Idempotency-Key")
            }
            CommandError::Internal(e) => {
                tracing::error!(error = %e, "command layer defect");
                Problem::new(500, "internal", "the command could not be handled")
            }
            CommandError::Load(e) => {
                tracing::error!(error = %e, "stored events could not be replayed");
                Problem::new(500, "internal", "the aggregate could not be loaded")
            }
        }
    }
}

/// Turns any 4xx/5xx answer that is not problem+json yet (unknown route, wrong method, a bad
/// path parameter, a body over the limit) into one, so every error has the same shape.
pub async fn problems_everywhere(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return response;
    }
    let (code, detail) = match status {
        StatusCode::BAD_REQUEST => (
            "invalid_input",
            "the request is malformed (check the path parameters)",
        ),
        StatusCode::NOT_FOUND => ("not_found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "the method is not allowed here"),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the body is larger than allowed"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "send application/json"),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
        s if s.is_server_error() => ("internal", "the service failed"),
        _ => ("error", "the request failed"),
    };
    let mut p = Problem::new(status.as_u16(), code, detail);
    if let Some(allow) = response.headers().get(header::ALLOW).cloned() {
        let mut r = std::mem::take(&mut p).into_response();
        r.headers_mut().insert(header::ALLOW, allow);
        return r;
    }
    p.into_response()
}

impl Default for Problem {
    fn default() -> Self {
        Problem::new(500, "internal", "")
    }
}
