//! The NATS JetStream ingest worker.
//!
//! A device (or a gateway) publishes to `<prefix>.<device_id>` one reading as JSON, or a
//! batch of that device's readings in the HTTP body's shape, `{"readings": [...]}` (1 to
//! 1,000); stream `TELEMETRY` captures `<prefix>.>` and a durable pull consumer shares the
//! messages among every worker of every process. A worker takes what has arrived, up to
//! `batch_max` messages or `batch_wait` after the first one, checks them, and writes all their
//! readings in one transaction; only after the commit does it acknowledge them. What can never
//! be accepted is dead-lettered in that same transaction: a whole message (bad JSON, a bad
//! single reading, a malformed, empty, oversized or too large batch, an unknown or inactive
//! device, a subject that disagrees with the payload) is then terminated, so it is not
//! delivered again; a refused reading of a batch gets a letter of its own and the rest of its
//! message is stored and acknowledged. A message may be compressed: with the header
//! `Content-Encoding: zstd` its payload is one zstd frame of the JSON, decompressed by the
//! worker (at most `max_message_bytes` once decompressed). When the database fails, the batch
//! is NAKed with a delay that grows with the delivery count, and the worker pauses as long
//! before it takes more. Device status comes
//! from the event store; a device found active is remembered as such for `active_for`.

use crate::reading::{self, Code, Reading, Rejection, WireMessage};
use crate::store::{self, DeadLetter, DeviceState};
use async_nats::jetstream::consumer::pull::{Config as ConsumerConfig, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::jetstream::{AckKind, Context, Message};
use chrono::Utc;
use futures::StreamExt;
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

/// The largest payload the worker takes by default: the HTTP body's limit, which 1,000
/// readings of a dozen metrics fit several times over (the benchmark's 1,000 readings of four
/// metrics are about 117 KB).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The header that names a payload's compression, and the one compression taken.
pub const CONTENT_ENCODING: &str = "Content-Encoding";
/// A payload that is one zstd frame of the JSON.
pub const ZSTD: &str = "zstd";

/// Room for a message's headers (`Nats-Msg-Id` and the like) in the stream's size limit,
/// which counts them with the payload.
pub const HEADER_ALLOWANCE: usize = 4096;

/// Where telemetry arrives on NATS and how the worker takes it.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The JetStream stream (`TELEMETRY`).
    pub stream: String,
    /// The subject prefix: devices publish to `<prefix>.<device_id>` (`telemetry`).
    pub subject_prefix: String,
    /// The durable consumer every worker shares (`chronicle-ingest`).
    pub consumer: String,
    /// Worker tasks in this process.
    pub workers: usize,
    /// The most messages in one batch (one transaction).
    pub batch_max: usize,
    /// The most payload bytes in one batch: a batch closes once its messages reach this
    /// (gateway batches of hundreds of readings would otherwise make transactions of a million
    /// readings). Pulls ask the server for at most twice this many bytes at a time.
    pub batch_max_bytes: usize,
    /// How long a batch waits for more messages after its first one.
    pub batch_wait: Duration,
    /// How long a device found active stays known as active to a worker without asking the
    /// event store again (a device found inactive or unknown is asked about every time, so
    /// an activation takes effect at once; a suspension within this long).
    pub active_for: Duration,
    /// How long the server waits for an acknowledgement before it delivers again.
    pub ack_wait: Duration,
    /// The most deliveries of one message.
    pub max_deliver: i64,
    /// The stream's window for `Nats-Msg-Id` deduplication.
    pub duplicate_window: Duration,
    /// How long the stream keeps messages.
    pub max_age: Duration,
    /// The largest payload the worker takes (a larger one is dead-lettered whole); the stream
    /// refuses messages over this plus [`HEADER_ALLOWANCE`] at publish time.
    pub max_message_bytes: usize,
    /// The first NAK delay after a database failure; it doubles with each delivery.
    pub nak_delay: Duration,
    /// The longest NAK delay.
    pub nak_delay_max: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            stream: "TELEMETRY".to_owned(),
            subject_prefix: "telemetry".to_owned(),
            consumer: "chronicle-ingest".to_owned(),
            workers: 2,
            batch_max: 10_000,
            batch_max_bytes: 2 * 1024 * 1024,
            batch_wait: Duration::from_millis(50),
            active_for: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
            max_deliver: 50,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_message_bytes: MAX_MESSAGE_BYTES,
            nak_delay: Duration::from_millis(500),
            nak_delay_max: Duration::from_secs(60),
        }
    }
}

/// A failure of the NATS side (the database side is `sqlx::Error`).
#[derive(Debug, thiserror::Error)]
#[error("NATS: {0}")]
pub struct NatsError(String);

impl NatsError {
    /// Any NATS client error, by its message.
    pub fn from_display(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// Connects to `url`; credentials in it are used (`nats://user:password@host:4222`, or
/// `nats://token@host:4222`), which the client would otherwise ignore.
pub async fn connect(url: &str) -> Result<async_nats::Client, NatsError> {
    connect_with(url, async_nats::ConnectOptions::new()).await
}

/// [`connect`] with more `options` (an event callback, say).
pub async fn connect_with(
    url: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, NatsError> {
    let addr: async_nats::ServerAddr = url.parse().map_err(NatsError::from_display)?;
    let options = options.name("chronicle-ingest");
    let options = match (addr.username().map(percent_decode), addr.password()) {
        (Some(user), Some(pass)) => options.user_and_password(user, percent_decode(pass)),
        (Some(token), None) => options.token(token),
        _ => options,
    };
    options.connect(addr).await.map_err(NatsError::from_display)
}

/// Decodes `%XX` escapes of a URL's user or password.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates or updates the stream and the durable pull consumer, and returns the consumer.
pub async fn setup(js: &Context, config: &NatsConfig) -> Result<PullConsumer, NatsError> {
    let subjects = format!("{}.>", config.subject_prefix);
    js.create_or_update_stream(StreamConfig {
        name: config.stream.clone(),
        description: Some("Device telemetry readings (Chronicle)".to_owned()),
        subjects: vec![subjects],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_age: config.max_age,
        duplicate_window: config.duplicate_window,
        max_message_size: i32::try_from(config.max_message_bytes + HEADER_ALLOWANCE)
            .unwrap_or(i32::MAX),
        ..Default::default()
    })
    .await
    .map_err(NatsError::from_display)?;
    let stream = js
        .get_stream(&config.stream)
        .await
        .map_err(NatsError::from_display)?;
    stream
        .create_consumer(ConsumerConfig {
            durable_name: Some(config.consumer.clone()),
            description: Some("Chronicle's telemetry ingest workers".to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            // No filter: the stream holds only `<prefix>.>`, so the consumer sees the same
            // messages, and nats-server 2.9 counts an unfiltered consumer's pending messages
            // in constant time, where a filtered one's consumer info scans the stream (8.6 ms
            // per call at 20,000 messages of 11.7 KB, measured; monitoring polls it). An
            // existing consumer's filter is removed in place.
            max_ack_pending: i64::try_from(
                config.batch_max.saturating_mul(config.workers.max(1)) * 4,
            )
            .unwrap_or(i64::MAX),
            ..Default::default()
        })
        .await
        .map_err(NatsError::from_display)
}

/// The messages of `consumer` as a worker pulls them: at most `batch_max` messages and
/// twice `batch_max_bytes` (or room for two of the largest messages, which the server
/// requires) per pull. The byte bound also keeps what the server has in flight to the client
/// well below nats-server's `max_pending` (64 MB), over which it closes the connection as a
/// slow consumer.
pub async fn pull(consumer: &PullConsumer, config: &NatsConfig) -> Result<Messages, NatsError> {
    let pull_bytes =
        (2 * config.batch_max_bytes).max(2 * (config.max_message_bytes + HEADER_ALLOWANCE));
    consumer
        .stream()
        .max_messages_per_batch(config.batch_max)
        .max_bytes_per_batch(pull_bytes)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(NatsError::from_display)
}

/// One worker: takes batches from the shared consumer until `shutdown` turns true.
pub struct Worker {
    /// Devices found active, and until when that holds without asking again.
    active: HashMap<Uuid, Instant>,
    pool: PgPool,
    client: async_nats::Client,
    consumer: PullConsumer,
    config: NatsConfig,
    /// Reused for every compressed message this worker takes.
    decompressor: zstd::bulk::Decompressor<'static>,
}

/// What becomes of a message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its readings (one, or a batch's) go to the write, its refused ones to their letters;
    /// acknowledged after the commit.
    Readings,
    /// Refused whole: dead-lettered and terminated.
    Dead,
    /// Not a JetStream message: terminated without a letter.
    Stray,
}

/// A message of a batch as the worker holds it until it is acknowledged.
struct Held {
    fate: Fate,
    /// The device its subject names (for [`Fate::Readings`]).
    device: Uuid,
    /// Its readings' letters in `Parsed::reading_letters`.
    letters: Range<usize>,
    stream_seq: i64,
    delivered: i64,
}

/// A batch of messages after parsing and validation.
struct Parsed {
    held: Vec<Held>,
    /// The valid readings of every message, in order.
    readings: Vec<Reading>,
    /// For each reading: its message, and its index in its batch message (`None` for a
    /// single-reading message).
    origin: Vec<(usize, Option<i32>)>,
    /// Letters of whole messages.
    letters: Vec<DeadLetter>,
    /// Letters of refused readings of batch messages (kept only if their message is not
    /// refused whole later, for its device).
    reading_letters: Vec<DeadLetter>,
    /// The decompressed JSON of each compressed message, by its index in the batch.
    decompressed: HashMap<usize, bytes::Bytes>,
}

/// The JSON of message `i` of `batch`: its payload, or that decompressed.
fn json<'a>(
    decompressed: &'a HashMap<usize, bytes::Bytes>,
    batch: &'a [Message],
    i: usize,
) -> &'a [u8] {
    decompressed
        .get(&i)
        .map_or(&batch[i].payload[..], |b| &b[..])
}

/// How a message's payload is encoded.
enum Encoding {
    /// Plain JSON.
    Json,
    /// One zstd frame of the JSON.
    Zstd,
    /// Something the worker does not take (the header's value).
    Other(String),
}

fn encoding(msg: &Message) -> Encoding {
    let value = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(CONTENT_ENCODING))
        .map(|v| v.as_str().trim());
    match value {
        None => Encoding::Json,
        Some(v) if v.is_empty() || v.eq_ignore_ascii_case("identity") => Encoding::Json,
        Some(v) if v.eq_ignore_ascii_case(ZSTD) => Encoding::Zstd,
        Some(v) => Encoding::Other(v.to_owned()),
    }
}

/// The bytes a message counts for in a batch's byte limit: its JSON's size, which for a zstd
/// frame is the size the frame declares (or the largest message taken, if it declares none).
fn weight(msg: &Message, max_message_bytes: usize) -> usize {
    match encoding(msg) {
        Encoding::Zstd => zstd::zstd_safe::get_frame_content_size(&msg.payload)
            .ok()
            .flatten()
            .map_or(max_message_bytes, |n| {
                usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(max_message_bytes)
            })
            .max(msg.payload.len()),
        _ => msg.payload.len(),
    }
}

/// Decompresses one zstd frame of at most `limit` bytes.
fn decompress(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    payload: &[u8],
    limit: usize,
) -> Result<Vec<u8>, Rejection> {
    let too_large = || Rejection {
        code: Code::MessageTooLarge,
        seq: None,
        detail: format!("more than {limit} bytes once decompressed; at most {limit} per message"),
    };
    let bad = |e: std::io::Error| Rejection {
        code: Code::BadEncoding,
        seq: None,
        detail: format!("Content-Encoding is zstd but the payload is not one zstd frame: {e}"),
    };
    match zstd::zstd_safe::get_frame_content_size(payload) {
        // The frame says how large it is: refused at once if too large, else decompressed
        // into exactly that room (a frame that does not keep its word fails).
        Ok(Some(n)) if n > limit as u64 => Err(too_large()),
        Ok(Some(n)) => decompressor.decompress(payload, n as usize).map_err(bad),
        // A frame of unknown size (a streaming compressor's) is read until one byte past the
        // limit.
        _ => {
            use std::io::Read;
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(payload)
                .and_then(|d| {
                    d.single_frame()
                        .take(limit as u64 + 1)
                        .read_to_end(&mut out)
                })
                .map_err(bad)?;
            if out.len() > limit {
                Err(too_large())
            } else {
                Ok(out)
            }
        }
    }
}

impl Worker {
    /// A worker on `consumer`.
    pub fn new(
        pool: PgPool,
        client: async_nats::Client,
        consumer: PullConsumer,
        config: NatsConfig,
    ) -> Self {
        Self {
            active: HashMap::new(),
            pool,
            client,
            consumer,
            config,
            decompressor: zstd::bulk::Decompressor::new()
                .unwrap_or_else(|e| panic!("a zstd decompression context: {e}")),
        }
    }

    /// Runs until `shutdown` turns true; the batch in hand is finished first.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut messages: Option<Messages> = None;
        while !*shutdown.borrow() {
            let stream = match messages.as_mut() {
                Some(s) => s,
                None => match self.pull().await {
                    Ok(s) => messages.insert(s),
                    Err(error) => {
                        tracing::warn!(%error, consumer = %self.config.consumer, "cannot pull telemetry; retrying");
                        pause(&mut shutdown, Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let first = tokio::select! {
                m = stream.next() => m,
                _ = shutdown.changed() => break,
            };
            let first = match first {
                Some(Ok(m)) => m,
                Some(Err(error)) => {
                    tracing::warn!(%error, "telemetry pull failed; pulling again");
                    messages = None;
                    pause(&mut shutdown, Duration::from_millis(200)).await;
                    continue;
                }
                None => {
                    messages = None;
                    continue;
                }
            };
            let max = self.config.max_message_bytes;
            let mut bytes = weight(&first, max);
            let mut batch = vec![first];
            let deadline = Instant::now() + self.config.batch_wait;
            while batch.len() < self.config.batch_max && bytes < self.config.batch_max_bytes {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(m))) => {
                        bytes += weight(&m, max);
                        batch.push(m);
                    }
                    Ok(Some(Err(error))) => {
                        tracing::warn!(%error, "telemetry pull failed; pulling again");
                        messages = None;
                        break;
                    }
                    Ok(None) => {
                        messages = None;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Err(pause_for) = self.handle(batch).await {
                pause(&mut shutdown, pause_for).await;
            }
        }
    }

    async fn pull(&self) -> Result<Messages, NatsError> {
        pull(&self.consumer, &self.config).await
    }

    /// Checks, writes and acknowledges one batch. On a database failure every message is
    /// NAKed and the worker should pause for the returned delay.
    pub async fn handle(&mut self, batch: Vec<Message>) -> Result<(), Duration> {
        let started = Instant::now();
        let mut parsed = self.parse(&batch);
        let readings = parsed.readings.len();
        let parsed_at = Instant::now();
        let result = self.write(&batch, &mut parsed).await;
        let written = Instant::now();
        match result {
            Ok(()) => {
                for (msg, held) in batch.iter().zip(&parsed.held) {
                    let kind = match held.fate {
                        Fate::Readings => AckKind::Ack,
                        Fate::Dead | Fate::Stray => AckKind::Term,
                    };
                    if let Err(error) = msg.ack_with(kind).await {
                        tracing::warn!(%error, "cannot acknowledge a telemetry message; it comes again");
                    }
                }
                if let Err(error) = self.client.flush().await {
                    tracing::warn!(%error, "cannot flush acknowledgements; the messages come again");
                }
                tracing::debug!(
                    messages = batch.len(),
                    readings,
                    parse_us = (parsed_at - started).as_micros() as u64,
                    write_us = (written - parsed_at).as_micros() as u64,
                    ack_us = written.elapsed().as_micros() as u64,
                    "telemetry batch"
                );
                Ok(())
            }
            Err(error) => {
                let most = parsed.held.iter().map(|h| h.delivered).max().unwrap_or(1);
                let delay = self.nak_delay(most);
                tracing::warn!(%error, messages = batch.len(), delay_ms = delay.as_millis() as u64, "telemetry batch not stored; NAKed for redelivery");
                for msg in &batch {
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
                let _ = self.client.flush().await;
                Err(delay)
            }
        }
    }

    /// Parses and checks every message: the valid readings, and letters for what is refused
    /// (whole messages, and single readings of batch messages).
    fn parse(&mut self, batch: &[Message]) -> Parsed {
        let now = Utc::now();
        let prefix = format!("{}.", self.config.subject_prefix);
        let mut p = Parsed {
            held: Vec::with_capacity(batch.len()),
            readings: Vec::with_capacity(batch.len()),
            origin: Vec::with_capacity(batch.len()),
            letters: Vec::new(),
            reading_letters: Vec::new(),
            decompressed: HashMap::new(),
        };
        for (i, msg) in batch.iter().enumerate() {
            let Ok(info) = msg.info() else {
                tracing::warn!(subject = %msg.subject, "a message without JetStream metadata; terminated");
                p.held.push(Held {
                    fate: Fate::Stray,
                    device: Uuid::nil(),
                    letters: 0..0,
                    stream_seq: 0,
                    delivered: 1,
                });
                continue;
            };
            let mut held = Held {
                fate: Fate::Dead,
                device: Uuid::nil(),
                letters: 0..0,
                stream_seq: i64::try_from(info.stream_sequence).unwrap_or(i64::MAX),
                delivered: info.delivered,
            };
            let device = msg
                .subject
                .as_str()
                .strip_prefix(prefix.as_str())
                .and_then(|id| Uuid::try_parse(id).ok());
            let message = match device {
                None => Err(Rejection {
                    code: Code::BadSubject,
                    seq: None,
                    detail: format!("the subject must be {prefix}<device_id>"),
                }),
                Some(_) if msg.payload.len() > self.config.max_message_bytes => Err(Rejection {
                    code: Code::MessageTooLarge,
                    seq: None,
                    detail: format!(
                        "{} bytes; at most {} per message",
                        msg.payload.len(),
                        self.config.max_message_bytes
                    ),
                }),
                Some(_) => match encoding(msg) {
                    Encoding::Json => reading::parse_message_shared(&msg.payload),
                    Encoding::Zstd => {
                        match decompress(
                            &mut self.decompressor,
                            &msg.payload,
                            self.config.max_message_bytes,
                        ) {
                            Ok(json) => {
                                let json = p.decompressed.entry(i).or_insert(json.into());
                                reading::parse_message_shared(json)
                            }
                            Err(r) => Err(r),
                        }
                    }
                    Encoding::Other(value) => Err(Rejection {
                        code: Code::BadEncoding,
                        seq: None,
                        detail: format!("Content-Encoding {value:?}: only zstd is taken"),
                    }),
                },
            };
            let device = device.unwrap_or_default();
            held.device = device;
            match message {
                Err(r) => p.letters.push(self.letter(msg, &held, None, r, None)),
                Ok(WireMessage::One(wire)) => match reading::check(wire, device, now) {
                    Ok(r) => {
                        held.fate = Fate::Readings;
                        p.origin.push((i, None));
                        p.readings.push(r);
                    }
                    Err(r) => p.letters.push(self.letter(msg, &held, None, r, None)),
                },
                Ok(WireMessage::Batch(wires)) => {
                    held.fate = Fate::Readings;
                    let first_letter = p.reading_letters.len();
                    // The readings' own texts, read only if one of them is refused.
                    let mut texts: Option<Vec<&[u8]>> = None;
                    for (j, wire) in wires.into_iter().enumerate() {
                        let j = i32::try_from(j).unwrap_or(i32::MAX);
                        match reading::check(wire, device, now) {
                            Ok(r) => {
                                p.origin.push((i, Some(j)));
                                p.readings.push(r);
                            }
                            Err(r) => {
                                let texts = texts
                                    .get_or_insert_with(|| {
                                        reading::batch_texts(json(&p.decompressed, batch, i))
                                            .unwrap_or_default()
                                    })
                                    .as_slice();
                                let text = usize::try_from(j).ok().and_then(|j| texts.get(j));
                                p.reading_letters.push(self.letter(
                                    msg,
                                    &held,
                                    Some(j),
                                    r,
                                    text.copied(),
                                ));
                            }
                        }
                    }
                    held.letters = first_letter..p.reading_letters.len();
                }
            }
            p.held.push(held);
        }
        p
    }

    /// The dead letter of `msg` (whole), or of its reading `index` (with its own `text`).
    fn letter(
        &self,
        msg: &Message,
        held: &Held,
        index: Option<i32>,
        r: Rejection,
        text: Option<&[u8]>,
    ) -> DeadLetter {
        DeadLetter {
            stream: self.config.stream.clone(),
            stream_seq: held.stream_seq,
            reading_index: index,
            subject: msg.subject.to_string(),
            payload: text.unwrap_or(&msg.payload).to_vec(),
            reason: r.code,
            detail: r.detail,
            deliveries: i32::try_from(held.delivered).unwrap_or(i32::MAX),
        }
    }

    /// Refuses the messages of unknown and inactive devices whole (as letters), then writes
    /// the readings of the others with every letter in one transaction.
    async fn write(&mut self, batch: &[Message], p: &mut Parsed) -> Result<(), sqlx::Error> {
        // The event store is asked about the devices not known to be active just now.
        let now = Instant::now();
        self.active.retain(|_, until| *until > now);
        let devices: Vec<Uuid> = p
            .held
            .iter()
            .filter(|h| h.fate == Fate::Readings && !self.active.contains_key(&h.device))
            .map(|h| h.device)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let states = if devices.is_empty() {
            HashMap::new()
        } else {
            store::device_states(&self.pool, &devices).await?
        };
        tracing::trace!(
            devices = devices.len(),
            states_us = now.elapsed().as_micros() as u64,
            "telemetry device states"
        );
        let until = now + self.config.active_for;
        for (device, state) in &states {
            if *state == DeviceState::Active {
                self.active.insert(*device, until);
            }
        }
        // Messages of devices that may not send are refused whole; the letters of the others'
        // refused readings are kept.
        let mut letters = std::mem::take(&mut p.letters);
        for (i, held) in p.held.iter_mut().enumerate() {
            if held.fate != Fate::Readings {
                continue;
            }
            let state = if self.active.contains_key(&held.device) {
                Some(&DeviceState::Active)
            } else {
                states.get(&held.device)
            };
            let (code, detail) = match state {
                Some(DeviceState::Active) => {
                    letters.extend_from_slice(&p.reading_letters[held.letters.clone()]);
                    continue;
                }
                Some(DeviceState::Inactive) => (
                    Code::DeviceInactive,
                    format!("device {} is not active", held.device),
                ),
                _ => (Code::UnknownDevice, format!("no device {}", held.device)),
            };
            held.fate = Fate::Dead;
            let r = Rejection {
                code,
                seq: None,
                detail,
            };
            letters.push(self.letter(&batch[i], held, None, r, None));
        }
        // The readings of messages still accepted, each mapped back to its origin.
        let mut kept: Vec<Reading> = Vec::with_capacity(p.readings.len());
        let mut kept_origin: Vec<(usize, Option<i32>)> = Vec::with_capacity(p.readings.len());
        for (reading, origin) in p.readings.drain(..).zip(p.origin.drain(..)) {
            if p.held[origin.0].fate == Fate::Readings {
                kept.push(reading);
                kept_origin.push(origin);
            }
        }
        // The texts of batch messages that have readings behind the retention horizon.
        let mut texts: HashMap<usize, Vec<&[u8]>> = HashMap::new();
        let held = &p.held;
        let decompressed = &p.decompressed;
        let written = store::write(&self.pool, &kept, &letters, |k| {
            let (i, index) = kept_origin[k];
            let msg = &batch[i];
            let text = index.and_then(|j| {
                let texts = texts.entry(i).or_insert_with(|| {
                    reading::batch_texts(json(decompressed, batch, i)).unwrap_or_default()
                });
                usize::try_from(j).ok().and_then(|j| texts.get(j).copied())
            });
            let r = Rejection {
                code: Code::TsTooOld,
                seq: Some(kept[k].seq),
                detail: "ts is before the retention horizon".to_owned(),
            };
            Some(self.letter(msg, &held[i], index, r, text))
        })
        .await?;
        // A single reading behind the horizon is its whole message: terminated. A batch's
        // readings have their own letters; the message is acknowledged.
        for k in &written.too_old {
            let (i, index) = kept_origin[*k];
            if index.is_none() {
                p.held[i].fate = Fate::Dead;
            }
        }
        let refused = letters.len() + written.too_old.len();
        metrics::counter!("chronicle_telemetry_readings_total", "path" => "nats", "outcome" => "accepted")
            .increment(written.accepted);
        metrics::counter!("chronicle_telemetry_readings_total", "path" => "nats", "outcome" => "duplicate")
            .increment(written.duplicates);
        metrics::counter!("chronicle_telemetry_readings_total", "path" => "nats", "outcome" => "rejected")
            .increment(refused as u64);
        Ok(())
    }

    fn nak_delay(&self, delivered: i64) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
        self.config
            .nak_delay
            .saturating_mul(1 << doublings)
            .min(self.config.nak_delay_max)
    }
}

/// Sleeps for `d` unless `shutdown` turns true first.
async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn url_credentials_are_percent_decoded() {
        assert_eq!(percent_decode("p%40ss%2Fw0rd"), "p@ss/w0rd");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("50%"), "50%");
    }
}
