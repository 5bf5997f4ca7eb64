//! Query plumbing shared by every GET of a read model: read-your-writes (`X-Min-Position`),
//! `X-Position` and `ETag` on the answer, query-string parsing with named fields, pagination
//! and the caller's view (own aggregates, or everything for `admin` and `auditor`).

use crate::error::Problem;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::{Actor, Role};
use projections::page::{decode_cursor, PageRequest, MAX_LIMIT};
use projections::Freshness;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use utoipa::IntoParams;
use uuid::Uuid;

/// How long a query waits for its read model to reach `X-Min-Position`.
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(5);

/// The `X-Min-Position` header: the position a read model must have applied before the query
/// answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MinPosition(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for MinPosition {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("x-min-position") else {
            return Ok(MinPosition(None));
        };
        let text = value
            .to_str()
            .map_err(|_| Problem::invalid("X-Min-Position", "X-Min-Position must be text"))?;
        match text.trim().parse::<i64>() {
            Ok(p) if p >= 0 => Ok(MinPosition(Some(p))),
            _ => Err(Problem::invalid(
                "X-Min-Position",
                "X-Min-Position must be a log position (a non-negative integer)",
            )),
        }
    }
}

/// Waits until read model `projector` has applied the `X-Min-Position` (if any) and returns
/// the position it stands at, for `X-Position`.
pub async fn fresh(s: &AppState, projector: &str, min: MinPosition) -> Result<i64, Problem> {
    let outcome = match min.0 {
        None | Some(0) => projections::applied_position(&s.pool, projector)
            .await
            .map(Freshness::Fresh),
        Some(p) => projections::wait_for(&s.pool, projector, p, MIN_POSITION_WAIT).await,
    };
    match outcome {
        Ok(Freshness::Fresh(at)) => Ok(at),
        Ok(Freshness::Behind(at)) => {
            let mut p = Problem::new(
                504,
                "read_model_behind",
                format!(
                    "the {projector} read model had not applied position {} within {} s; it stands at {at}",
                    min.0.unwrap_or(0),
                    MIN_POSITION_WAIT.as_secs()
                ),
            );
            p.field = None;
            Err(p)
        }
        Ok(Freshness::UnknownPosition) => Err(Problem::invalid(
            "X-Min-Position",
            "X-Min-Position names no event in the log",
        )),
        Err(e) => Err(unavailable(e)),
    }
}

/// The answer to a failed read-model query.
pub fn unavailable(e: sqlx::Error) -> Problem {
    tracing::error!(error = %e, "read-model query failed");
    Problem::new(
        503,
        "unavailable",
        "the read model could not be queried; retry",
    )
}

/// 200 with `body`, `X-Position` and, for a single aggregate, `ETag: "<version>"`.
pub fn reply<T: Serialize>(position: i64, version: Option<i64>, body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a query answer");
            return Problem::new(500, "internal", "the answer could not be built").into_response();
        }
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-position", HeaderValue::from(position));
    if let Some(v) = version {
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{v}\"")) {
            headers.insert(header::ETAG, etag);
        }
    }
    response
}

/// The query string parsed into `T` (which should deny unknown fields); a bad or unknown
/// parameter is a 400 naming it.
pub fn params<T: DeserializeOwned>(parts_query: Option<&str>) -> Result<T, Problem> {
    let raw = parts_query.unwrap_or("");
    if raw.len() > 4096 {
        return Err(Problem::invalid("query", "the query string is too long"));
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if field == "." {
            // serde names an unknown or missing field only in its message.
            inner
                .split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "query".to_owned())
        } else {
            field
        };
        Problem::invalid(&field, format!("bad query parameter: {inner}"))
    })
}

/// The query string of a request, parsed with [`params`].
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        params(parts.uri.query()).map(Params)
    }
}

/// `?limit=` and `?cursor=` checked: limit 1-500 (default 50), a cursor this API made.
pub fn page(limit: Option<i64>, cursor: Option<&str>) -> Result<PageRequest, Problem> {
    let limit = match limit {
        None => projections::page::DEFAULT_LIMIT,
        Some(l) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            return Err(Problem::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ))
        }
    };
    let after =
        match cursor {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                Problem::invalid("cursor", "cursor is not one this API handed out")
            })?),
        };
    Ok(PageRequest { limit, after })
}

/// Whose aggregates a caller may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// `admin` or `auditor`: everything.
    All,
    /// The caller's own account (none yet: they own nothing).
    Account(Option<Uuid>),
}

impl Viewer {
    /// The caller's view.
    pub async fn of(s: &AppState, actor: &Actor) -> Result<Viewer, Problem> {
        if actor.has(Role::Admin) || actor.has(Role::Auditor) {
            return Ok(Viewer::All);
        }
        s.service
            .account_of(&actor.subject)
            .await
            .map(Viewer::Account)
            .map_err(Problem::from)
    }

    /// Whether the caller may read an aggregate of one of `parties`.
    pub fn may_read(&self, parties: &[Uuid]) -> bool {
        match self {
            Viewer::All => true,
            Viewer::Account(Some(me)) => parties.contains(me),
            Viewer::Account(None) => false,
        }
    }

    /// 403 unless the caller may read an aggregate of one of `parties`.
    pub fn check(&self, parties: &[Uuid]) -> Result<(), Problem> {
        if self.may_read(parties) {
            Ok(())
        } else {
            Err(Problem::new(
                403,
                "forbidden",
                "this aggregate belongs to another account",
            ))
        }
    }
}

/// 404 for an id no read model row has.
pub fn not_found(what: &str) -> Problem {
    Problem::new(404, "not_found", format!("no such {what}"))
}

/// The headers every query accepts.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct QueryHeaders {
    /// Read-your-writes: wait (up to 5 s, then 504) until the read model has applied this log
    /// position, such as the `position` a command answered.
    #[param(rename = "X-Min-Position")]
    min_position: Option<i64>,
}

/// What a query answers when it fails.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum QueryProblems {
    /// 400.
    #[response(
        status = 400,
        description = "a bad path or query parameter, cursor or X-Min-Position (the problem names it)",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
    /// 401.
    #[response(
        status = 401,
        description = "no or bad credentials",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    /// 403.
    #[response(
        status = 403,
        description = "another owner's aggregate, or not allowed for this subject",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    /// 404.
    #[response(
        status = 404,
        description = "unknown id",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    /// 503.
    #[response(
        status = 503,
        description = "the read model could not be queried; retry",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
    /// 504.
    #[response(
        status = 504,
        description = "the read model had not applied X-Min-Position within 5 s",
        content_type = "application/problem+json"
    )]
    Behind(Problem),
}
