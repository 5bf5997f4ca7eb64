//! Chronicle's stored formats: the event envelope as it is written to and read from the log,
//! and the PostgreSQL migrations (`schemas/migrations`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod log;

/// The PostgreSQL migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A (transaction id, position) pair: where a reader of the global log stands.
///
/// Rows are ordered by `tx` first, then `position`; resuming on position alone could skip
/// rows at batch edges, so a reader always keeps both.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cursor {
    /// The writing transaction's id.
    pub tx: i64,
    /// The global position.
    pub position: i64,
}

impl Cursor {
    /// Before the first event.
    pub const START: Cursor = Cursor { tx: 0, position: 0 };
}

/// Who did it and why: the metadata every event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
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

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The event's id (UUIDv7).
    pub event_id: Uuid,
    /// The stored event type name.
    pub event_type: String,
    /// The stored schema version.
    pub schema_version: i32,
    /// The stored payload.
    pub payload: serde_json::Value,
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Global position.
    pub position: i64,
    /// The writing transaction's id.
    pub tx: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// The aggregate type (`account`, `wallet`, ...).
    pub stream_type: String,
    /// The aggregate id.
    pub stream_id: Uuid,
    /// The version of the stream this event made (1, 2, ...).
    pub stream_version: i64,
    /// The stored event type name.
    pub event_type: String,
    /// The stored schema version.
    pub schema_version: i32,
    /// The payload.
    pub payload: serde_json::Value,
    /// Who, when, why.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// The cursor just past this event.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            tx: self.tx,
            position: self.position,
        }
    }

    /// The payload as a domain event enum tagged by `type` (the stored event type name).
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        let mut payload = self.payload.clone();
        if let Some(obj) = payload.as_object_mut() {
            obj.insert(
                "type".into(),
                serde_json::Value::String(self.event_type.clone()),
            );
        }
        serde_json::from_value(payload)
    }
}
