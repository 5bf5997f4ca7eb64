//! The event store behind a trait, so that another log backend can replace PostgreSQL.

use async_trait::async_trait;
use schemas::{Cursor, Metadata, NewEvent, RecordedEvent};
use uuid::Uuid;

/// A failure of the store itself (connection, query); the outcome of a write may be unknown.
#[derive(Debug, thiserror::Error)]
#[error("event store: {0}")]
pub struct StoreError(#[from] pub sqlx::Error);

/// Events for one stream, appended only if the stream is still at `expected_version`.
#[derive(Debug, Clone)]
pub struct StreamWrite {
    /// The aggregate type.
    pub stream_type: &'static str,
    /// The aggregate id.
    pub stream_id: Uuid,
    /// The version the decision was made on (0 for a new stream).
    pub expected_version: i64,
    /// The events, versions `expected_version + 1 ..`.
    pub events: Vec<NewEvent>,
}

/// A unique fact claimed with the event that establishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaim {
    /// The kind of fact (`account_email`, `wallet`, `deposit_ref`, ...).
    pub scope: &'static str,
    /// The unique key within the scope.
    pub key: String,
    /// The stream of the establishing event.
    pub stream_id: Uuid,
    /// The version of the establishing event.
    pub stream_version: i64,
}

/// A claimed fact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The unique key within the scope.
    pub key: String,
    /// The stream of the establishing event.
    pub stream_id: Uuid,
    /// The version of the establishing event.
    pub stream_version: i64,
    /// The global position of the establishing event.
    pub position: i64,
}

/// A snapshot of an aggregate's state at a version.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The aggregate type.
    pub stream_type: &'static str,
    /// The aggregate id.
    pub stream_id: Uuid,
    /// The version the state is at.
    pub version: i64,
    /// The serialized state.
    pub state: serde_json::Value,
}

/// An idempotency key recorded with a successful command's events.
#[derive(Debug, Clone)]
pub struct NewIdempotency {
    /// The subject the key belongs to.
    pub subject: String,
    /// The client's key.
    pub key: String,
    /// Hash of the request (method, path, body).
    pub request_hash: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The id the answer carries.
    pub result_id: Uuid,
    /// The version the answer carries.
    pub result_version: i64,
    /// The stream of the command's last event (its position is the answer's position).
    pub last_stream: Uuid,
    /// The version of the command's last event.
    pub last_version: i64,
}

/// The answer recorded for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Hash of the first request.
    pub request_hash: String,
    /// The first answer's HTTP status.
    pub status: u16,
    /// `(id, version, position)` of a success.
    pub result: Option<(Uuid, i64, i64)>,
    /// The problem body of a refusal.
    pub body: Option<serde_json::Value>,
}

/// Everything one command writes, in one transaction.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// The streams, each with its own expected version; events keep this order.
    pub streams: Vec<StreamWrite>,
    /// Metadata shared by all events of the command.
    pub metadata: Metadata,
    /// Unique facts established by the events.
    pub claims: Vec<NewClaim>,
    /// Snapshots to save with the events.
    pub snapshots: Vec<Snapshot>,
    /// The idempotency record, if the command carried a key.
    pub idempotency: Option<NewIdempotency>,
}

/// Where the appended events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The global position of each event, in request order.
    pub positions: Vec<i64>,
}

impl Appended {
    /// The position of the last event written.
    pub fn last_position(&self) -> i64 {
        self.positions.last().copied().unwrap_or(0)
    }
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// A stream moved past its expected version.
    #[error("a stream moved past the expected version")]
    Conflict,
    /// A unique fact was already claimed.
    #[error("a unique fact is already claimed")]
    ClaimTaken,
    /// The idempotency key was recorded by a concurrent request.
    #[error("the idempotency key is already recorded")]
    IdempotencyTaken,
    /// The store failed; the append may or may not have happened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An append-only log of events with optimistic concurrency per stream.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends a command's events to one or more streams atomically.
    async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError>;

    /// The events of a stream after `after_version`, in version order.
    async fn load(
        &self,
        stream_id: Uuid,
        after_version: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The events of a stream with `version` at most `up_to`, in version order.
    async fn load_until(
        &self,
        stream_id: Uuid,
        up_to: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The latest snapshot of a stream.
    async fn load_snapshot(
        &self,
        stream_id: Uuid,
    ) -> Result<Option<(i64, serde_json::Value)>, StoreError>;

    /// Up to `limit` events of the global log after `after`, in commit-safe order: a reader
    /// that follows the returned cursors never misses an event that commits late and never
    /// sees one twice.
    async fn read_all(&self, after: Cursor, limit: i64) -> Result<Vec<RecordedEvent>, StoreError>;

    /// A claimed fact, if any.
    async fn claim(&self, scope: &str, key: &str) -> Result<Option<ClaimRecord>, StoreError>;

    /// All claimed facts of a scope whose key starts with `prefix`.
    async fn claims_with_prefix(
        &self,
        scope: &str,
        prefix: &str,
    ) -> Result<Vec<ClaimRecord>, StoreError>;

    /// The answer recorded for an idempotency key.
    async fn idempotency(
        &self,
        subject: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, StoreError>;

    /// Records the answer of a command that appended nothing; false if the key was taken.
    async fn save_idempotency(
        &self,
        subject: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError>;
}
