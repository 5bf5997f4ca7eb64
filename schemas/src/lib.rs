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
    ///
    /// The payload is read in place: the tag is put in front of its fields (replacing any
    /// `type` field of its own) without copying them.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        use serde::de::value::MapDeserializer;
        let Some(fields) = self.payload.as_object() else {
            return serde_json::from_value(self.payload.clone());
        };
        let tag = serde_json::Value::String(self.event_type.clone());
        let entries = std::iter::once(("type", &tag)).chain(
            fields
                .iter()
                .filter(|(name, _)| name.as_str() != "type")
                .map(|(name, value)| (name.as_str(), value)),
        );
        E::deserialize(MapDeserializer::<_, serde_json::Error>::new(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "type")]
    enum Sample {
        Opened { owner: Uuid, amount: i64 },
        Closed,
        Renamed { name: String },
    }

    fn event(event_type: &str, payload: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            position: 1,
            tx: 1,
            event_id: Uuid::nil(),
            stream_type: "sample".into(),
            stream_id: Uuid::nil(),
            stream_version: 1,
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Metadata {
                actor_sub: "s".into(),
                actor_role: "r".into(),
                command_id: Uuid::nil(),
                correlation_id: Uuid::nil(),
                causation_id: None,
                occurred_at: chrono::DateTime::UNIX_EPOCH,
            },
        }
    }

    #[test]
    fn decode_tags_the_payload_with_the_stored_event_type() {
        let owner = Uuid::now_v7();
        let got: Sample = event("Opened", serde_json::json!({"owner": owner, "amount": 5}))
            .decode()
            .expect("decodes");
        assert_eq!(got, Sample::Opened { owner, amount: 5 });
        let got: Sample = event("Closed", serde_json::json!({}))
            .decode()
            .expect("unit");
        assert_eq!(got, Sample::Closed);
        // A `type` field inside the payload never overrides the stored event type.
        let got: Sample = event(
            "Renamed",
            serde_json::json!({"type": "Closed", "name": "x"}),
        )
        .decode()
        .expect("stored type wins");
        assert_eq!(got, Sample::Renamed { name: "x".into() });
    }

    #[test]
    fn decode_refuses_unknown_types_missing_fields_and_non_objects() {
        assert!(event("Vanished", serde_json::json!({}))
            .decode::<Sample>()
            .is_err());
        assert!(event("Opened", serde_json::json!({"amount": 5}))
            .decode::<Sample>()
            .is_err());
        assert!(event("Opened", serde_json::json!([1, 2]))
            .decode::<Sample>()
            .is_err());
        assert!(event(
            "Opened",
            serde_json::json!({"owner": "not a uuid", "amount": 5})
        )
        .decode::<Sample>()
        .is_err());
    }
}
