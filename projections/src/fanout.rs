//! Event fan-out: a projector that publishes every committed event to the JetStream stream
//! `EVENTS`, subject `events.<stream_type>.<event_type>`, in log order, with `Nats-Msg-Id` =
//! the event's id, so that other services can subscribe.
//!
//! It runs on the projector runtime like every read model (lease, wake-up, checkpoint,
//! status), but writes no tables: its [`Projector::deliver`] publishes the batch
//! asynchronously with at most [`FanoutConfig::max_in_flight`] acknowledgements outstanding
//! and returns once JetStream has acknowledged every message; only then does the checkpoint
//! move past the batch. A batch cut short by a failure or a crash is published again from its
//! first event; JetStream drops the repeats it still remembers (its duplicate window) and
//! every message carries its log position (`Chronicle-Position`), so a subscriber can drop
//! any older repeat itself. Publishing happens outside any database transaction.

use crate::{ApplyError, Projector};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use schemas::RecordedEvent;
use sqlx::PgConnection;
use std::collections::VecDeque;
use std::time::Duration;

/// The projector's name (checkpoint, lease, status).
pub const NAME: &str = "fanout";

/// Every stream type of the log.
pub const STREAM_TYPES: &[&str] = &["account", "wallet", "order", "escrow", "pot", "device"];

/// Where and how events are published.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// The JetStream stream (`EVENTS`).
    pub stream: String,
    /// Subjects are `<prefix>.<stream_type>.<event_type>` (`events`).
    pub subject_prefix: String,
    /// How long JetStream remembers message ids to drop repeats.
    pub duplicate_window: Duration,
    /// Publishes awaiting their acknowledgement at most.
    pub max_in_flight: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            stream: "EVENTS".to_owned(),
            subject_prefix: "events".to_owned(),
            duplicate_window: Duration::from_secs(600),
            max_in_flight: 256,
        }
    }
}

/// Publishes the log to JetStream.
pub struct FanoutProjector {
    js: jetstream::Context,
    config: FanoutConfig,
}

/// Creates the stream, or updates it to this configuration (file storage, limits retention,
/// the duplicate window).
pub async fn ensure_stream(js: &jetstream::Context, config: &FanoutConfig) -> Result<(), String> {
    js.create_or_update_stream(stream::Config {
        name: config.stream.clone(),
        description: Some("Chronicle's committed events, in log order".to_owned()),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: config.duplicate_window,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("cannot create or update the stream {}: {e}", config.stream))
}

impl FanoutProjector {
    /// Makes sure the stream exists, then returns the projector.
    pub async fn start(client: async_nats::Client, config: FanoutConfig) -> Result<Self, String> {
        let js = jetstream::new(client);
        ensure_stream(&js, &config).await?;
        Ok(Self { js, config })
    }

    /// The subject of `event`.
    pub fn subject(&self, event: &RecordedEvent) -> String {
        format!(
            "{}.{}.{}",
            self.config.subject_prefix, event.stream_type, event.event_type
        )
    }

    async fn publish(&self, event: &RecordedEvent) -> Result<PublishAckFuture, String> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
        headers.insert("Chronicle-Position", event.position.to_string().as_str());
        headers.insert("Chronicle-Stream-Id", event.stream_id.to_string().as_str());
        headers.insert(
            "Chronicle-Stream-Version",
            event.stream_version.to_string().as_str(),
        );
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        self.js
            .publish_with_headers(self.subject(event), headers, body.into())
            .await
            .map_err(|e| format!("publishing event {}: {e}", event.position))
    }
}

#[async_trait]
impl Projector for FanoutProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        STREAM_TYPES
    }

    async fn apply(
        &self,
        _conn: &mut PgConnection,
        _events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        // Everything happened in `deliver`; the runtime now moves the checkpoint.
        Ok(())
    }

    fn takes_sealed(&self) -> bool {
        true
    }

    async fn deliver(&self, events: &[RecordedEvent]) -> Result<(), String> {
        let mut in_flight: VecDeque<(i64, PublishAckFuture)> = VecDeque::new();
        let mut published = 0u64;
        for event in events {
            if in_flight.len() >= self.config.max_in_flight.max(1) {
                if let Some((position, ack)) = in_flight.pop_front() {
                    ack.await
                        .map_err(|e| format!("event {position} not acknowledged: {e}"))?;
                }
            }
            in_flight.push_back((event.position, self.publish(event).await?));
            published += 1;
        }
        for (position, ack) in in_flight {
            ack.await
                .map_err(|e| format!("event {position} not acknowledged: {e}"))?;
        }
        metrics::counter!("chronicle_fanout_published_total").increment(published);
        Ok(())
    }
}
