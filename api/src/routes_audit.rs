//! Audit and replay (roles `auditor` or `admin`): a stream's history with full metadata, the
//! global log in commit order (JSON pages, or every matching event as NDJSON in constant
//! memory), and an aggregate rebuilt from its events as of a version or a time.
//!
//! The log is ordered by `(tx, position)` (commit order, see docs/architecture.md). Its
//! cursor is the text `<tx>-<position>` of the last event seen; `?after=` also takes a bare
//! position `P`, meaning "after the event at position P in commit order".

use crate::error::Problem;
use crate::extract::Caller;
use crate::query::Params;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::audit::{self, AsOf, LogFilter, STREAM_TYPES};
use commands::repo::LoadError;
use commands::Role;
use cqrs_es::Aggregate;
use domain::account::Account;
use domain::device::Device;
use domain::escrow::Escrow;
use domain::order::Order;
use domain::pot::Pot;
use domain::wallet::Wallet;
use futures::TryStreamExt;
use schemas::{Cursor, RecordedEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

/// Events per page of a stream's history when the client names no limit.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page of events.
pub const MAX_LIMIT: i64 = 1000;
/// Events per batch read from the database while streaming NDJSON.
pub const EXPORT_BATCH: i64 = 1000;
/// The most event types one `?types=` may name.
pub const MAX_TYPES: usize = 50;
/// The longest event type name, actor subject or cursor accepted.
const MAX_NAME_LEN: usize = 200;

/// The OpenAPI description of these routes.
#[derive(OpenApi)]
#[openapi(
    paths(
        stream_history,
        global_log,
        account_as_of,
        wallet_as_of,
        order_as_of,
        escrow_as_of,
        pot_as_of,
        device_as_of,
        verify_chain
    ),
    components(schemas(
        AuditEvent,
        StreamHistory,
        LogPage,
        AsOfState,
        Verification,
        ChainBreak
    ))
)]
pub struct Api;

/// These routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/streams/{type}/{id}", get(stream_history))
        .route("/v1/audit/events", get(global_log))
        .route("/v1/audit/verify", get(verify_chain))
        .route("/v1/accounts/{id}/as-of", get(account_as_of))
        .route("/v1/wallets/{id}/as-of", get(wallet_as_of))
        .route("/v1/orders/{id}/as-of", get(order_as_of))
        .route("/v1/escrows/{id}/as-of", get(escrow_as_of))
        .route("/v1/pots/{id}/as-of", get(pot_as_of))
        .route("/v1/devices/{id}/as-of", get(device_as_of))
}

/// A caller holding `auditor` or `admin`: 401 without credentials, 403 for anyone else.
/// It runs before the query string is parsed, so a customer learns nothing from a 400.
pub struct Auditor;

impl FromRequestParts<AppState> for Auditor {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Caller(actor) = Caller::from_request_parts(parts, state).await?;
        if actor.has(Role::Auditor) || actor.has(Role::Admin) {
            Ok(Auditor)
        } else {
            Err(Problem::new(
                403,
                "forbidden",
                "audit routes need the auditor or admin role",
            ))
        }
    }
}

/// An event as stored, with every column of the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// The global position (assigned at insert; the log's order is `(tx, position)`).
    pub position: i64,
    /// The id of the transaction that wrote the event: the first key of commit order.
    pub tx: i64,
    /// The event's id (UUIDv7).
    pub event_id: Uuid,
    /// The aggregate type: account, wallet, order, escrow, pot or device.
    pub stream_type: String,
    /// The aggregate id.
    pub stream_id: Uuid,
    /// The version of the stream this event made (1, 2, ...).
    pub stream_version: i64,
    /// The stored event type name.
    pub event_type: String,
    /// The stored schema version of the payload.
    pub schema_version: i32,
    /// The payload as stored (without the type tag).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The subject that issued the command (`system:<process>` for processes).
    pub actor_sub: String,
    /// The role under which the command was allowed.
    pub actor_role: String,
    /// The command's id.
    pub command_id: Uuid,
    /// The correlation id (the first command of a chain).
    pub correlation_id: Uuid,
    /// The causing command or event, if any.
    pub causation_id: Option<Uuid>,
    /// When the command was accepted.
    pub occurred_at: DateTime<Utc>,
}

impl From<RecordedEvent> for AuditEvent {
    fn from(e: RecordedEvent) -> Self {
        AuditEvent {
            position: e.position,
            tx: e.tx,
            event_id: e.event_id,
            stream_type: e.stream_type,
            stream_id: e.stream_id,
            stream_version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            payload: e.payload.into_value(),
            actor_sub: e.metadata.actor_sub,
            actor_role: e.metadata.actor_role,
            command_id: e.metadata.command_id,
            correlation_id: e.metadata.correlation_id,
            causation_id: e.metadata.causation_id,
            occurred_at: e.metadata.occurred_at,
        }
    }
}

/// The cursor of the global log as text: `<tx>-<position>`.
pub fn encode_cursor(c: Cursor) -> String {
    format!("{}-{}", c.tx, c.position)
}

fn limit_of(limit: Option<i64>) -> Result<i64, Problem> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(_) => Err(Problem::invalid(
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

fn path_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::invalid("id", "id must be a UUID"))
}

fn stream_type_of(field: &str, raw: &str) -> Result<&'static str, Problem> {
    let singular = raw.strip_suffix('s').unwrap_or(raw);
    STREAM_TYPES
        .iter()
        .find(|t| **t == raw || **t == singular)
        .copied()
        .ok_or_else(|| {
            Problem::invalid(
                field,
                format!("{field} must be one of {}", STREAM_TYPES.join(", ")),
            )
        })
}

fn time_of(field: &str, raw: &str) -> Result<DateTime<Utc>, Problem> {
    // A `+` of an offset arrives as a space when the client did not percent-encode it.
    DateTime::parse_from_rfc3339(&raw.replace(' ', "+"))
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Problem::invalid(
                field,
                format!("{field} must be an RFC 3339 time such as 2026-01-31T12:00:00Z"),
            )
        })
}

/// The answer when the log cannot be read.
fn unavailable(e: sqlx::Error) -> Problem {
    tracing::error!(error = %e, "reading the log failed");
    Problem::new(503, "unavailable", "the log could not be read; retry")
}

fn store_problem(e: LoadError) -> Problem {
    match e {
        LoadError::Store(e) => unavailable(e.0),
        e => {
            tracing::error!(error = %e, "stored events could not be replayed");
            Problem::new(500, "internal", "the aggregate could not be rebuilt")
        }
    }
}

/// GET /v1/audit/streams/{type}/{id}: which part of the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// The first version to return (default 1).
    from_version: Option<i64>,
    /// Events per page, 1-1000 (default 100).
    limit: Option<i64>,
}

/// A page of a stream's history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamHistory {
    /// The aggregate type.
    pub stream_type: String,
    /// The aggregate id.
    pub stream_id: Uuid,
    /// The events from `from_version` on, in version order.
    pub events: Vec<AuditEvent>,
    /// Pass as `?from_version=` for the next page; null when this page reaches the end.
    pub next_from_version: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/audit/streams/{type}/{id}",
    tag = "audit",
    params(
        ("type" = String, Path, description = "account, wallet, order, escrow, pot or device"),
        ("id" = Uuid, Path, description = "the aggregate"),
        StreamQuery
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the stream's events with full metadata, in version order (auditor, admin)", body = StreamHistory),
        (status = 400, description = "unknown type, a bad id, from_version or limit (the problem names it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no or bad credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not auditor or admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no stream of this type and id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the log could not be read; retry", body = Problem, content_type = "application/problem+json")
    )
)]
async fn stream_history(
    State(s): State<AppState>,
    _: Auditor,
    Path((raw_type, raw_id)): Path<(String, String)>,
    Params(q): Params<StreamQuery>,
) -> Result<Response, Problem> {
    let stream_type = stream_type_of("type", &raw_type)?;
    let id = path_id(&raw_id)?;
    let limit = limit_of(q.limit)?;
    let from_version = match q.from_version {
        None => 1,
        Some(v) if v >= 1 => v,
        Some(_) => {
            return Err(Problem::invalid(
                "from_version",
                "from_version must be a stream version (1 or more)",
            ))
        }
    };
    let page = audit::stream_page(&s.pool, stream_type, id, from_version, limit)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::new(404, "not_found", format!("no such {stream_type} stream")))?;
    Ok(Json(StreamHistory {
        stream_type: stream_type.to_owned(),
        stream_id: id,
        events: page.events.into_iter().map(Into::into).collect(),
        next_from_version: page.next_version,
    })
    .into_response())
}

/// GET /v1/audit/events: where to start and which events.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LogQuery {
    /// Start after this point of the log: the `next` of a previous page (`<tx>-<position>`),
    /// or a bare position P (after the event at position P in commit order). Default: the
    /// beginning.
    after: Option<String>,
    /// Only these event types, comma-separated (at most 50), e.g. `FundsDeposited,WalletOpened`.
    types: Option<String>,
    /// Only this stream type: account, wallet, order, escrow, pot or device.
    stream_type: Option<String>,
    /// Only events of commands by this subject (`actor_sub`).
    actor: Option<String>,
    /// Only events that occurred at or after this RFC 3339 time.
    from: Option<String>,
    /// Only events that occurred before this RFC 3339 time.
    to: Option<String>,
    /// Events per page, 1-1000 (default 100). With `Accept: application/x-ndjson`: optional,
    /// the most events to stream (default: all).
    limit: Option<i64>,
}

/// A page of the global log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    /// The matching events after `after`, in commit order `(tx, position)`.
    pub events: Vec<AuditEvent>,
    /// Pass as `?after=` for the next page (with the same filters): the cursor of the last
    /// event returned, or the `after` given if none was.
    pub next: String,
    /// Whether the page was full, so that more matching events may follow right away.
    pub has_more: bool,
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-ndjson"))
        })
}

/// `?after=` as a cursor: `<tx>-<position>`, or a bare position looked up in the log.
async fn after_of(s: &AppState, raw: Option<&str>) -> Result<Cursor, Problem> {
    let Some(raw) = raw else {
        return Ok(Cursor::START);
    };
    match audit::cursor_from_text(&s.pool, raw)
        .await
        .map_err(unavailable)?
    {
        Ok(cursor) => Ok(cursor),
        Err(audit::CursorTextError::Malformed) => Err(Problem::invalid(
            "after",
            "after must be the `next` of a page (<tx>-<position>) or a log position",
        )),
        Err(audit::CursorTextError::NoEvent(_)) => {
            Err(Problem::invalid("after", "after names no event in the log"))
        }
    }
}

fn filter_of(q: &LogQuery) -> Result<LogFilter, Problem> {
    let mut filter = LogFilter::default();
    if let Some(types) = &q.types {
        for t in types.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if t.len() > MAX_NAME_LEN || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(Problem::invalid(
                    "types",
                    "types must be event type names (letters, digits, _) separated by commas",
                ));
            }
            filter.event_types.push(t.to_owned());
        }
        if filter.event_types.len() > MAX_TYPES {
            return Err(Problem::invalid(
                "types",
                format!("types may name at most {MAX_TYPES} event types"),
            ));
        }
    }
    if let Some(t) = &q.stream_type {
        filter.stream_type = Some(stream_type_of("stream_type", t)?.to_owned());
    }
    if let Some(a) = &q.actor {
        if a.is_empty() || a.len() > MAX_NAME_LEN || a.chars().any(char::is_control) {
            return Err(Problem::invalid(
                "actor",
                "actor must be a subject of 1-200 characters, none of them a control character",
            ));
        }
        filter.actor = Some(a.clone());
    }
    filter.from = q.from.as_deref().map(|t| time_of("from", t)).transpose()?;
    filter.to = q.to.as_deref().map(|t| time_of("to", t)).transpose()?;
    Ok(filter)
}

#[utoipa::path(
    get,
    path = "/v1/audit/events",
    tag = "audit",
    params(LogQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "a page of the global log in commit order (auditor, admin); with `Accept: application/x-ndjson`, every matching event, one JSON object (an AuditEvent) per line",
         content((LogPage = "application/json"), (AuditEvent = "application/x-ndjson"))),
        (status = 400, description = "a bad cursor, filter or limit (the problem names it)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no or bad credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not auditor or admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the log could not be read; retry", body = Problem, content_type = "application/problem+json")
    )
)]
async fn global_log(
    State(s): State<AppState>,
    _: Auditor,
    headers: HeaderMap,
    Params(q): Params<LogQuery>,
) -> Result<Response, Problem> {
    let filter = filter_of(&q)?;
    let after = after_of(&s, q.after.as_deref()).await?;
    if wants_ndjson(&headers) {
        let limit = match q.limit {
            None => None,
            Some(l) if l >= 1 => Some(l),
            Some(_) => return Err(Problem::invalid("limit", "limit must be 1 or more")),
        };
        return Ok(ndjson(&s, after, filter, limit));
    }
    let limit = limit_of(q.limit)?;
    let mut events = audit::log_page(&s.pool, after, &filter, limit + 1)
        .await
        .map_err(unavailable)?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next = events.last().map(RecordedEvent::cursor).unwrap_or(after);
    Ok(Json(LogPage {
        events: events.into_iter().map(Into::into).collect(),
        next: encode_cursor(next),
        has_more,
    })
    .into_response())
}

/// Streams every matching event as NDJSON, one batch of the log at a time: each batch is
/// read, written out as lines and dropped before the next is read. A failure of the store
/// mid-way ends the body with an error (the client sees a truncated transfer, never a
/// well-formed short answer).
fn ndjson(s: &AppState, after: Cursor, filter: LogFilter, limit: Option<i64>) -> Response {
    let batches = audit::export(s.pool.clone(), after, filter, limit, EXPORT_BATCH);
    let body = batches
        .map_ok(|events| {
            let mut chunk = Vec::with_capacity(events.len() * 512);
            for e in events {
                // Serializing plain data into a Vec cannot fail.
                if serde_json::to_writer(&mut chunk, &AuditEvent::from(e)).is_ok() {
                    chunk.push(b'\n');
                }
            }
            Bytes::from(chunk)
        })
        .inspect_err(|e| tracing::error!(error = %e, "the NDJSON export of the log failed"));
    let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// `?at=` or `?version=`: exactly one.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AsOfQuery {
    /// An RFC 3339 time: the state after every event of the stream, in version order, that
    /// occurred at or before it.
    at: Option<String>,
    /// A stream version (1 or more): the state after that event.
    version: Option<i64>,
}

/// An aggregate's state rebuilt from its events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AsOfState {
    /// The aggregate type.
    pub stream_type: String,
    /// The aggregate id.
    pub id: Uuid,
    /// The version of the last event applied.
    pub version: i64,
    /// When the last event applied occurred: the state held from then on (until the next
    /// event).
    pub as_of: DateTime<Utc>,
    /// The global position of the last event applied.
    pub position: i64,
    /// The aggregate's state as the domain holds it.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
}

async fn rebuild<A: Aggregate>(
    s: &AppState,
    raw_id: &str,
    q: AsOfQuery,
) -> Result<Response, Problem> {
    let id = path_id(raw_id)?;
    let bound = match (q.at.as_deref(), q.version) {
        (Some(at), None) => AsOf::At(time_of("at", at)?),
        (None, Some(v)) if v >= 1 => AsOf::Version(v),
        (None, Some(_)) => {
            return Err(Problem::invalid(
                "version",
                "version must be a stream version (1 or more)",
            ))
        }
        _ => {
            return Err(Problem::invalid(
                "at",
                "give exactly one of at (an RFC 3339 time) or version",
            ))
        }
    };
    let rebuilt = audit::as_of::<A>(&s.pool, id, bound)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| {
            let when = match bound {
                AsOf::Version(v) => format!("version {v}"),
                AsOf::At(t) => t.to_rfc3339(),
            };
            Problem::new(404, "not_found", format!("no such {} at {when}", A::TYPE))
        })?;
    let state = serde_json::to_value(&rebuilt.state).map_err(|e| {
        tracing::error!(error = %e, "cannot serialize a rebuilt aggregate");
        Problem::new(500, "internal", "the aggregate could not be rebuilt")
    })?;
    Ok(Json(AsOfState {
        stream_type: A::TYPE.to_owned(),
        id,
        version: rebuilt.version,
        as_of: rebuilt.occurred_at,
        position: rebuilt.position,
        state,
    })
    .into_response())
}

macro_rules! as_of_route {
    ($name:ident, $aggregate:ty, $path:literal, $what:literal) => {
        #[utoipa::path(
            get,
            path = $path,
            tag = "audit",
            params(("id" = Uuid, Path, description = $what), AsOfQuery),
            security(("bearer" = [])),
            responses(
                (status = 200, description = "the state rebuilt from the stream's events up to the version or time (auditor, admin)", body = AsOfState),
                (status = 400, description = "neither or both of at and version, or a bad value (the problem names it)", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "no or bad credentials", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "not auditor or admin", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "no such stream, no event by that time, or the version was never reached", body = Problem, content_type = "application/problem+json"),
                (status = 503, description = "the log could not be read; retry", body = Problem, content_type = "application/problem+json")
            )
        )]
        async fn $name(
            State(s): State<AppState>,
            _: Auditor,
            Path(raw): Path<String>,
            Params(q): Params<AsOfQuery>,
        ) -> Result<Response, Problem> {
            rebuild::<$aggregate>(&s, &raw, q).await
        }
    };
}

as_of_route!(
    account_as_of,
    Account,
    "/v1/accounts/{id}/as-of",
    "the account"
);
as_of_route!(wallet_as_of, Wallet, "/v1/wallets/{id}/as-of", "the wallet");
as_of_route!(order_as_of, Order, "/v1/orders/{id}/as-of", "the order");
as_of_route!(escrow_as_of, Escrow, "/v1/escrows/{id}/as-of", "the escrow");
as_of_route!(pot_as_of, Pot, "/v1/pots/{id}/as-of", "the pot");
as_of_route!(device_as_of, Device, "/v1/devices/{id}/as-of", "the device");

/// The outcome of recomputing the log's hash chain (docs/tamper-evidence.md).
#[derive(Debug, Serialize, ToSchema)]
pub struct Verification {
    /// True when every sealed event matched its link.
    pub ok: bool,
    /// Events whose links were checked.
    pub checked: u64,
    /// The position of the last link (0 when none).
    pub sealed_position: i64,
    /// The last link's hash (hex); keep it outside the database.
    pub head_hash: String,
    /// Events after the last link, not sealed yet.
    pub unsealed: i64,
    /// The first break, if any.
    pub first_break: Option<ChainBreak>,
}

/// Where the chain first breaks.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChainBreak {
    /// The position of the first event or link that does not match.
    pub position: i64,
    /// `changed`, `missing` or `inserted`.
    pub kind: String,
    /// In words.
    pub detail: String,
}

/// GET /v1/audit/verify: the hash chain recomputed from the events in one snapshot.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the chain recomputed from the events: ok, or the first break (auditor, admin); the whole sealed log is read, so it takes about a second per 250,000 events", body = Verification),
        (status = 401, description = "no or bad credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not auditor or admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the log could not be read; retry", body = Problem, content_type = "application/problem+json")
    )
)]
async fn verify_chain(State(s): State<AppState>, _: Auditor) -> Result<Response, Problem> {
    let r = projections::chain::verify_snapshot(&s.pool, |_| {})
        .await
        .map_err(unavailable)?;
    Ok(Json(Verification {
        ok: r.ok,
        checked: r.checked,
        sealed_position: r.sealed_position,
        head_hash: r.head_hash,
        unsealed: r.unsealed,
        first_break: r.first_break.map(|b| ChainBreak {
            position: b.position,
            kind: b.kind.to_owned(),
            detail: b.detail,
        }),
    })
    .into_response())
}
