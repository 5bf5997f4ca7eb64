//! A reading on the wire and its validation: `{"seq", "ts", "metrics": {name: number}}`, with
//! an optional `device_id` that must name the device the transport authenticated (the HTTP
//! credential, or the NATS subject). Every refusal has a stable [`Rejection`] code.

use bytes::Bytes;
use chrono::{DateTime, Duration, NaiveDate, Utc};
pub use compact_str::CompactString;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use uuid::Uuid;

mod fast;

/// How far in the future a reading's `ts` may be (the device's clock may run ahead).
pub const MAX_FUTURE: Duration = Duration::minutes(5);
/// The most metrics one reading may carry.
pub const MAX_METRICS: usize = 64;
/// The longest metric name.
pub const MAX_METRIC_NAME: usize = 64;
/// The most readings in one batch: an HTTP request, or a NATS message `{"readings": [...]}`.
pub const MAX_READINGS: usize = 1000;

/// A valid reading of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device.
    pub device_id: Uuid,
    /// The device's own counter: `(device_id, seq)` identifies the reading.
    pub seq: i64,
    /// When it was measured.
    pub ts: DateTime<Utc>,
    /// 1 to 64 finite values, sorted by name, each name once. Names up to 24 bytes are held
    /// inline ([`CompactString`]): no allocation per metric.
    pub metrics: Vec<(CompactString, f64)>,
    /// The metrics object as the device sent it, when the direct reader read it (names
    /// without escapes, plain decimals): a slice of the payload, stored as the jsonb text
    /// instead of writing `metrics` out again. jsonb reads it to the same object (a repeated
    /// name keeps its last value, as `metrics` does; keys are sorted by jsonb); a number keeps
    /// its decimal digits as sent (`21.50` stays `21.50`, where `metrics` holds the f64 21.5).
    pub metrics_text: Option<Bytes>,
}

/// Why a reading was refused: a stable code (the `code` of `rejected` entries and the
/// `reason` of dead letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Not a JSON object of the reading's shape: a field missing, unknown or of the wrong
    /// type, `seq` not an integer in 0..=2^63-1, `ts` not RFC 3339.
    BadReading,
    /// The payload is not JSON at all (NATS).
    BadJson,
    /// A metric name outside `[a-z0-9_.]{1,64}`.
    BadMetricName,
    /// No metrics.
    NoMetrics,
    /// More than 64 metrics.
    TooManyMetrics,
    /// A metric value that is not a finite number.
    NotFinite,
    /// `ts` more than 5 minutes ahead of the service's clock.
    TsInFuture,
    /// `ts` before the retention horizon: it would be dropped at once.
    TsTooOld,
    /// The reading's `device_id` is not the device of the credential or subject.
    DeviceMismatch,
    /// The device is registered but not active (suspended, decommissioned, never activated).
    DeviceInactive,
    /// No such device.
    UnknownDevice,
    /// The NATS subject is not `<prefix>.<device_id>`.
    BadSubject,
    /// A NATS batch message that is not `{"readings": [...]}` and nothing else.
    BadBatch,
    /// A NATS batch message without readings.
    NoReadings,
    /// A NATS batch message of more than 1,000 readings.
    TooManyReadings,
    /// A NATS message larger than the worker takes (compressed or once decompressed).
    MessageTooLarge,
    /// A NATS message whose `Content-Encoding` is not `zstd`, or whose zstd frame does not
    /// decompress.
    BadEncoding,
}

impl Code {
    /// The code as the wire and the dead letters spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadReading => "bad_reading",
            Code::BadJson => "bad_json",
            Code::BadMetricName => "bad_metric_name",
            Code::NoMetrics => "no_metrics",
            Code::TooManyMetrics => "too_many_metrics",
            Code::NotFinite => "not_finite",
            Code::TsInFuture => "ts_in_future",
            Code::TsTooOld => "ts_too_old",
            Code::DeviceMismatch => "device_mismatch",
            Code::DeviceInactive => "device_inactive",
            Code::UnknownDevice => "unknown_device",
            Code::BadSubject => "bad_subject",
            Code::BadBatch => "bad_batch",
            Code::NoReadings => "no_readings",
            Code::TooManyReadings => "too_many_readings",
            Code::MessageTooLarge => "message_too_large",
            Code::BadEncoding => "bad_encoding",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused reading: its code, its `seq` when it had a readable one, and a human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub code: Code,
    /// The reading's `seq`, if it could be read.
    pub seq: Option<i64>,
    /// For a human (dead letters, logs).
    pub detail: String,
}

impl Rejection {
    fn new(code: Code, seq: Option<i64>, detail: impl Into<String>) -> Self {
        Self {
            code,
            seq,
            detail: detail.into(),
        }
    }
}

/// Whether `name` is a metric name: `[a-z0-9_.]{1,64}`.
pub fn is_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METRIC_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// A reading as it arrived, before its checks: what each field held. Deserializing one
/// succeeds for any JSON value (an object of any fields, or not an object at all); only a
/// JSON syntax error or a number beyond f64 fails. [`check`] then gives the verdict. Parsing
/// straight into this shape, instead of into a `serde_json::Value` first, is what keeps
/// parsing cheap on the ingest paths (no map of owned keys per reading).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WireReading {
    /// Whether the value was a JSON object.
    object: bool,
    /// `seq` if it was an integer that fits an i64 (negative ones are refused by the check).
    seq: Option<i64>,
    /// `ts`: absent or not a string (`None`), or the result of reading it as RFC 3339.
    ts: Option<Result<DateTime<Utc>, String>>,
    /// `metrics` if it was an object: its entries, a value being NaN when it was not a
    /// number (a JSON number is never NaN), so that [`check`] turns the entries into the
    /// reading's metrics in place.
    metrics: Option<Vec<(CompactString, f64)>>,
    /// `device_id` if present: `Some(id)` when it was a string holding a UUID.
    device_id: Option<Option<Uuid>>,
    /// The first (by name) field that is not one of the reading's.
    unknown: Option<String>,
    /// `metrics` as sent, when the direct reader read the payload from [`Bytes`]
    /// ([`Reading::metrics_text`]).
    metrics_text: Option<Bytes>,
}

/// Checks one reading of `device` received at `now` (any JSON value).
pub fn validate(value: &Value, device: Uuid, now: DateTime<Utc>) -> Result<Reading, Rejection> {
    match WireReading::deserialize(value) {
        Ok(wire) => check(wire, device, now),
        Err(e) => Err(Rejection::new(Code::BadReading, None, e.to_string())),
    }
}

/// Checks one reading of `device` received at `now`. The checks run in a fixed order, so a
/// reading with several faults always gets the same code.
pub fn check(wire: WireReading, device: Uuid, now: DateTime<Utc>) -> Result<Reading, Rejection> {
    if !wire.object {
        return Err(Rejection::new(
            Code::BadReading,
            None,
            "a reading is a JSON object {\"seq\", \"ts\", \"metrics\"}",
        ));
    }
    let seq = wire.seq.filter(|s| *s >= 0);
    let bad = |detail: String| Err(Rejection::new(Code::BadReading, seq, detail));
    if let Some(unknown) = wire.unknown {
        return bad(format!("unknown field `{unknown}`"));
    }
    let Some(seq) = seq else {
        return bad("seq must be an integer from 0 to 9223372036854775807".to_owned());
    };
    let ts = match wire.ts {
        Some(Ok(ts)) => ts,
        Some(Err(e)) => return bad(format!("ts is not an RFC 3339 time: {e}")),
        None => return bad("ts must be an RFC 3339 time such as 2025-01-31T12:00:00Z".to_owned()),
    };
    let Some(mut raw_metrics) = wire.metrics else {
        return bad("metrics must be an object of {name: number}".to_owned());
    };
    match wire.device_id {
        None => {}
        Some(Some(id)) if id == device => {}
        Some(Some(id)) => {
            return Err(Rejection::new(
                Code::DeviceMismatch,
                Some(seq),
                format!("device_id {id} is not the sending device {device}"),
            ))
        }
        Some(None) => return bad("device_id must be the device's UUID".to_owned()),
    }
    // By name, a repeated name counting once with its last value (as a JSON object reads).
    raw_metrics.reverse();
    raw_metrics.sort_by(|a, b| a.0.cmp(&b.0));
    raw_metrics.dedup_by(|later, kept| later.0 == kept.0);
    if raw_metrics.is_empty() {
        return Err(Rejection::new(
            Code::NoMetrics,
            Some(seq),
            "a reading carries at least one metric",
        ));
    }
    if raw_metrics.len() > MAX_METRICS {
        return Err(Rejection::new(
            Code::TooManyMetrics,
            Some(seq),
            format!(
                "{} metrics; at most {MAX_METRICS} per reading",
                raw_metrics.len()
            ),
        ));
    }
    for (name, value) in &raw_metrics {
        if !is_metric_name(name) {
            return Err(Rejection::new(
                Code::BadMetricName,
                Some(seq),
                format!(
                    "metric names are 1-64 of a-z 0-9 _ . (got {:?})",
                    name.as_str()
                ),
            ));
        }
        if !value.is_finite() {
            return Err(Rejection::new(
                Code::NotFinite,
                Some(seq),
                format!("metric {name} is not a finite number"),
            ));
        }
    }
    if ts > now + MAX_FUTURE {
        return Err(Rejection::new(
            Code::TsInFuture,
            Some(seq),
            format!("ts {ts} is more than 5 minutes ahead of {now}"),
        ));
    }
    Ok(Reading {
        device_id: device,
        seq,
        ts,
        metrics: raw_metrics,
        metrics_text: wire.metrics_text,
    })
}

/// Parses and checks a NATS payload: one reading of `device` as JSON.
pub fn parse(payload: &[u8], device: Uuid, now: DateTime<Utc>) -> Result<Reading, Rejection> {
    let wire: WireReading = serde_json::from_slice(payload).map_err(not_json)?;
    check(wire, device, now)
}

/// A payload serde_json could not read: not JSON, or (its only other refusal) a number
/// beyond f64, which it refuses instead of making infinite.
fn not_json(e: serde_json::Error) -> Rejection {
    let code = if e.to_string().starts_with("number out of range") {
        Code::NotFinite
    } else {
        Code::BadJson
    };
    Rejection::new(
        code,
        None,
        format!("the payload is not a JSON reading: {e}"),
    )
}

/// What a NATS message carries, before its readings are checked (each with [`check`]).
#[derive(Debug, Clone, PartialEq)]
pub enum WireMessage {
    /// One reading: the message is the reading (any JSON value; [`check`] gives the verdict).
    One(WireReading),
    /// A batch, `{"readings": [...]}` exactly as the HTTP body: 1 to [`MAX_READINGS`]
    /// readings of the subject's device, each checked on its own.
    Batch(Vec<WireReading>),
}

/// Reads a NATS payload: one reading, or a batch `{"readings": [...]}`. A payload that is
/// not JSON, or a batch that is not of that shape (another top-level field, `readings` not
/// an array) or holds no readings or more than [`MAX_READINGS`], is refused whole.
pub fn parse_message(payload: &[u8]) -> Result<WireMessage, Rejection> {
    parse_message_in(payload, None)
}

/// [`parse_message`] of a payload held as [`Bytes`]: the readings the direct reader reads
/// keep their metrics' text ([`Reading::metrics_text`]).
pub fn parse_message_shared(payload: &Bytes) -> Result<WireMessage, Rejection> {
    parse_message_in(payload, Some(payload))
}

fn parse_message_in(payload: &[u8], shared: Option<&Bytes>) -> Result<WireMessage, Rejection> {
    if let Some(message) = fast::message(payload, shared) {
        return Ok(message);
    }
    let top: TopLevel = serde_json::from_slice(payload).map_err(not_json)?;
    let Some(readings) = top.readings else {
        return Ok(WireMessage::One(top.reading));
    };
    let whole = |code, detail: String| Err(Rejection::new(code, None, detail));
    if top.fields > 1 {
        return whole(
            Code::BadBatch,
            "a batch is {\"readings\": [...]} with no other field".to_owned(),
        );
    }
    match readings {
        ReadingsField { readings: None, .. } => whole(
            Code::BadBatch,
            "readings must be an array of readings".to_owned(),
        ),
        ReadingsField { total: 0, .. } => whole(
            Code::NoReadings,
            "a batch carries at least one reading".to_owned(),
        ),
        ReadingsField { total, .. } if total > MAX_READINGS => whole(
            Code::TooManyReadings,
            format!("{total} readings; at most {MAX_READINGS} per message"),
        ),
        ReadingsField {
            readings: Some(readings),
            ..
        } => Ok(WireMessage::Batch(readings)),
    }
}

/// Reads an HTTP body `{"readings": [...]}` of the common shape directly, as serde_json
/// would read it into [`WireReading`]s, each keeping its metrics' text
/// ([`Reading::metrics_text`]); `None` for anything else, to be read by serde_json.
pub fn parse_batch_common(body: &Bytes) -> Option<Vec<WireReading>> {
    fast::batch(body)
}

/// The readings of a batch message as they were sent, each its own JSON text (for the dead
/// letter of a refused one). `None` if `payload` is not a batch.
pub fn batch_texts(payload: &[u8]) -> Option<Vec<&[u8]>> {
    #[derive(Deserialize)]
    struct Texts<'a> {
        #[serde(borrow)]
        readings: Vec<&'a serde_json::value::RawValue>,
    }
    let texts: Texts = serde_json::from_slice(payload).ok()?;
    Some(texts.readings.iter().map(|r| r.get().as_bytes()).collect())
}

// ----- Deserializing a WireReading: every JSON shape is a value, faults are kept for `check`.

/// A field name of a reading, read without allocating for the known ones.
enum Key {
    Seq,
    Ts,
    Metrics,
    DeviceId,
    Readings,
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "seq" => Key::Seq,
                    "ts" => Key::Ts,
                    "metrics" => Key::Metrics,
                    "device_id" => Key::DeviceId,
                    "readings" => Key::Readings,
                    other => Key::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Consumes the elements of a JSON array or object that is not what a field expects.
fn drain_seq<'de, A: SeqAccess<'de>>(mut a: A) -> Result<(), A::Error> {
    while a.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut a: A) -> Result<(), A::Error> {
    while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the visitor methods of the JSON shapes a field does not expect: each gives
/// `$none` after consuming the value.
macro_rules! other_shapes {
    ($none:expr, except_numbers) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
            drain_seq(a).map(|()| $none)
        }
    };
    ($none:expr) => {
        other_shapes!($none, except_numbers);
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// `seq`: an integer that fits an i64, else `None`.
struct SeqField(Option<i64>);

impl<'de> Deserialize<'de> for SeqField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeqField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SeqField, E> {
                Ok(SeqField(Some(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SeqField, E> {
                Ok(SeqField(i64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<SeqField, E> {
                Ok(SeqField(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SeqField, E> {
                Ok(SeqField(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<SeqField, A::Error> {
                drain_map(a).map(|()| SeqField(None))
            }
            other_shapes!(SeqField(None), except_numbers);
        }
        d.deserialize_any(V)
    }
}

/// Reads `ts` as RFC 3339, as `DateTime::parse_from_rfc3339` reads it, in UTC. The common
/// form, `YYYY-MM-DDTHH:MM:SS[.fraction]` with `Z` or `±HH:MM`, is read here directly (chrono's
/// general parser and offset conversion were a tenth of the NATS worker's CPU); anything else
/// (lowercase or space separators, a leap second, an out-of-range field, more than nine
/// fraction digits) goes to chrono, whose verdict and error text stand.
pub fn parse_ts(s: &str) -> Result<DateTime<Utc>, String> {
    match parse_ts_common(s.as_bytes()) {
        Some(ts) => Ok(ts),
        None => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| e.to_string()),
    }
}

/// The common form of an RFC 3339 time, or `None` to leave it to chrono.
fn parse_ts_common(b: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let date = NaiveDate::from_ymd_opt(year as i32, digits(&b[5..7])?, digits(&b[8..10])?)?;
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&rest[1..=n])? * 10u32.pow(9 - n as u32);
        rest = &rest[1 + n..];
    }
    // Seconds of 60 (a leap second) are chrono's to read.
    if second > 59 {
        return None;
    }
    let local = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    let offset = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let utc = local.checked_sub_signed(Duration::seconds(offset))?;
    Some(DateTime::from_naive_utc_and_offset(utc, Utc))
}

/// `ts`: a string read as RFC 3339, else `None`.
struct TsField(Option<Result<DateTime<Utc>, String>>);

impl<'de> Deserialize<'de> for TsField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TsField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TsField, E> {
                Ok(TsField(Some(parse_ts(s))))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<TsField, A::Error> {
                drain_map(a).map(|()| TsField(None))
            }
            other_shapes!(TsField(None));
        }
        d.deserialize_any(V)
    }
}

/// `device_id`: a string holding a UUID (`Some(Some)`), or anything else (`Some(None)`).
struct DeviceField(Option<Uuid>);

impl<'de> Deserialize<'de> for DeviceField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DeviceField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DeviceField, E> {
                Ok(DeviceField(Uuid::try_parse(s).ok()))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<DeviceField, A::Error> {
                drain_map(a).map(|()| DeviceField(None))
            }
            other_shapes!(DeviceField(None));
        }
        d.deserialize_any(V)
    }
}

/// A metric's value: a number as f64, else NaN (which no JSON number reads as).
struct MetricValue(f64);

impl<'de> Deserialize<'de> for MetricValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetricValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MetricValue, E> {
                Ok(MetricValue(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MetricValue, E> {
                Ok(MetricValue(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MetricValue, E> {
                Ok(MetricValue(v))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<MetricValue, E> {
                Ok(MetricValue(f64::NAN))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<MetricValue, A::Error> {
                drain_map(a).map(|()| MetricValue(f64::NAN))
            }
            other_shapes!(MetricValue(f64::NAN), except_numbers);
        }
        d.deserialize_any(V)
    }
}

/// A metric's name as it arrived, held inline up to 24 bytes (any string: [`check`] judges
/// it).
struct MetricName(CompactString);

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MetricName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a metric name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MetricName, E> {
                Ok(MetricName(CompactString::from(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `metrics`: the entries of an object, else `None`.
struct MetricsField(Option<Vec<(CompactString, f64)>>);

impl<'de> Deserialize<'de> for MetricsField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetricsField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<MetricsField, A::Error> {
                let mut entries = Vec::with_capacity(a.size_hint().unwrap_or(4).min(MAX_METRICS));
                while let Some(name) = a.next_key::<MetricName>()? {
                    let value: MetricValue = a.next_value()?;
                    entries.push((name.0, value.0));
                }
                Ok(MetricsField(Some(entries)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<MetricsField, E> {
                Ok(MetricsField(None))
            }
            other_shapes!(MetricsField(None));
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for WireReading {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireReading;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<WireReading, A::Error> {
                let mut w = WireReading {
                    object: true,
                    ..WireReading::default()
                };
                while let Some(key) = a.next_key::<Key>()? {
                    match key {
                        Key::Seq => w.seq = a.next_value::<SeqField>()?.0,
                        Key::Ts => w.ts = a.next_value::<TsField>()?.0,
                        Key::Metrics => w.metrics = a.next_value::<MetricsField>()?.0,
                        Key::DeviceId => w.device_id = Some(a.next_value::<DeviceField>()?.0),
                        Key::Readings => {
                            a.next_value::<IgnoredAny>()?;
                            w.unknown_field("readings");
                        }
                        Key::Other(name) => {
                            a.next_value::<IgnoredAny>()?;
                            w.unknown_field(&name);
                        }
                    }
                }
                Ok(w)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<WireReading, E> {
                Ok(WireReading::default())
            }
            other_shapes!(WireReading::default());
        }
        d.deserialize_any(V)
    }
}

impl WireReading {
    /// Remembers a field that is not one of the reading's: the first by name is reported.
    fn unknown_field(&mut self, name: &str) {
        if self.unknown.as_deref().is_none_or(|u| name < u) {
            self.unknown = Some(name.to_owned());
        }
    }
}

/// `readings` of a batch: up to [`MAX_READINGS`] readings kept, all of them counted; `None`
/// if it was not an array.
struct ReadingsField {
    readings: Option<Vec<WireReading>>,
    total: usize,
}

impl<'de> Deserialize<'de> for ReadingsField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReadingsField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<ReadingsField, A::Error> {
                let mut readings =
                    Vec::with_capacity(a.size_hint().unwrap_or(16).min(MAX_READINGS));
                let mut total = 0;
                while total < MAX_READINGS {
                    match a.next_element::<WireReading>()? {
                        Some(r) => readings.push(r),
                        None => break,
                    }
                    total += 1;
                }
                // Past the limit the rest is only counted (the message is refused whole).
                while a.next_element::<IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(ReadingsField {
                    readings: Some(readings),
                    total,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<ReadingsField, A::Error> {
                drain_map(a).map(|()| ReadingsField {
                    readings: None,
                    total: 0,
                })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<ReadingsField, E> {
                Ok(ReadingsField {
                    readings: None,
                    total: 0,
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<ReadingsField, E> {
                self.visit_str("")
            }
            fn visit_unit<E: de::Error>(self) -> Result<ReadingsField, E> {
                self.visit_str("")
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<ReadingsField, E> {
                self.visit_str("")
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<ReadingsField, E> {
                self.visit_str("")
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<ReadingsField, E> {
                self.visit_str("")
            }
        }
        d.deserialize_any(V)
    }
}

/// A NATS payload's top level: the fields of a single reading, or `readings` (a batch);
/// `fields` counts the object's fields, so that a batch with another field is told apart.
struct TopLevel {
    reading: WireReading,
    readings: Option<ReadingsField>,
    fields: usize,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<TopLevel, A::Error> {
                let mut w = WireReading {
                    object: true,
                    ..WireReading::default()
                };
                let mut readings = None;
                let mut fields = 0;
                while let Some(key) = a.next_key::<Key>()? {
                    fields += 1;
                    match key {
                        Key::Seq => w.seq = a.next_value::<SeqField>()?.0,
                        Key::Ts => w.ts = a.next_value::<TsField>()?.0,
                        Key::Metrics => w.metrics = a.next_value::<MetricsField>()?.0,
                        Key::DeviceId => w.device_id = Some(a.next_value::<DeviceField>()?.0),
                        // A repeated `readings` counts as another field: refused whole.
                        Key::Readings => readings = Some(a.next_value::<ReadingsField>()?),
                        Key::Other(name) => {
                            a.next_value::<IgnoredAny>()?;
                            w.unknown_field(&name);
                        }
                    }
                }
                Ok(TopLevel {
                    reading: w,
                    readings,
                    fields,
                })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel, E> {
                Ok(TopLevel::not_an_object())
            }
            other_shapes!(TopLevel::not_an_object());
        }
        d.deserialize_any(V)
    }
}

impl TopLevel {
    fn not_an_object() -> Self {
        TopLevel {
            reading: WireReading::default(),
            readings: None,
            fields: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn code(v: Value) -> Option<Code> {
        validate(&v, Uuid::nil(), now()).err().map(|r| r.code)
    }

    #[test]
    fn a_good_reading_is_accepted_with_its_values() {
        let r = validate(
            &json!({"seq": 7, "ts": "2025-03-01T12:04:59+00:00", "metrics": {"temp.c": 21.5, "rssi": -70}}),
            Uuid::nil(),
            now(),
        );
        let r = r.ok();
        assert_eq!(r.as_ref().map(|r| r.seq), Some(7));
        assert_eq!(r.as_ref().map(|r| r.metrics.len()), Some(2));
        assert_eq!(
            r.map(|r| r.metrics),
            Some(vec![("rssi".into(), -70.0), ("temp.c".into(), 21.5)])
        );
    }

    #[test]
    fn each_fault_has_its_code() {
        let ts = "2025-03-01T12:00:00Z";
        assert_eq!(code(json!([1])), Some(Code::BadReading));
        assert_eq!(
            code(json!({"seq": -1, "ts": ts, "metrics": {"a": 1}})),
            Some(Code::BadReading)
        );
        assert_eq!(
            code(json!({"seq": 1.5, "ts": ts, "metrics": {"a": 1}})),
            Some(Code::BadReading)
        );
        assert_eq!(
            code(json!({"seq": 1, "ts": "yesterday", "metrics": {"a": 1}})),
            Some(Code::BadReading)
        );
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "metrics": {"a": 1}, "x": 1})),
            Some(Code::BadReading)
        );
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "metrics": {}})),
            Some(Code::NoMetrics)
        );
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "metrics": {"Temp": 1}})),
            Some(Code::BadMetricName)
        );
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "metrics": {"a-b": 1}})),
            Some(Code::BadMetricName)
        );
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "metrics": {"a": "1"}})),
            Some(Code::NotFinite)
        );
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "metrics": {"a": null}})),
            Some(Code::NotFinite)
        );
        assert_eq!(
            code(json!({"seq": 1, "ts": "2025-03-01T12:05:01Z", "metrics": {"a": 1}})),
            Some(Code::TsInFuture)
        );
        let other = Uuid::now_v7().to_string();
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "device_id": other, "metrics": {"a": 1}})),
            Some(Code::DeviceMismatch)
        );
        let many: serde_json::Map<String, Value> =
            (0..65).map(|i| (format!("m{i}"), json!(i))).collect();
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "metrics": many})),
            Some(Code::TooManyMetrics)
        );
        let long = "a".repeat(65);
        assert_eq!(
            code(json!({"seq": 1, "ts": ts, "metrics": {long: 1}})),
            Some(Code::BadMetricName)
        );
    }

    #[test]
    fn bytes_and_json_values_read_alike() {
        let ts = "2025-03-01T12:00:00Z";
        let cases = [
            format!(r#"{{"seq": 1, "ts": "{ts}", "metrics": {{"b": 1, "a": 2, "b": 3}}}}"#),
            format!(r#"{{"seq": 18446744073709551615, "ts": "{ts}", "metrics": {{"a": 1}}}}"#),
            format!(r#"{{"seq": 1.0, "ts": "{ts}", "metrics": {{"a": 1}}}}"#),
            format!(r#"{{"seq": 1, "ts": "{ts}", "metrics": {{"a": {{"x": [1, 2]}}}}}}"#),
            format!(r#"{{"seq": 1, "ts": "{ts}", "metrics": [1, 2]}}"#),
            format!(r#"{{"seq": 1, "ts": "{ts}", "metrics": {{"a": 1}}, "device_id": 7}}"#),
            r#"{"seq": 1, "ts": 5, "metrics": {"a": 1}}"#.to_string(),
            format!(r#"{{"zz": 1, "seq": 2, "ts": "{ts}", "metrics": {{"a": 1}}, "aa": [{{}}]}}"#),
            format!(r#"{{"seq": {{"n": 1}}, "ts": "{ts}", "metrics": {{"a": 1}}}}"#),
            format!(r#"{{"seq": 1, "seq": 2, "ts": "{ts}", "metrics": {{"Bad": 1, "a": null}}}}"#),
            format!(r#"{{"seq": 3, "ts": "{ts}", "metrics": {{"a\u0062": -0.0}}}}"#),
            r#"[{"seq": 1}]"#.to_owned(),
            r#""text""#.to_owned(),
            "null".to_owned(),
        ];
        for case in &cases {
            let from_bytes = parse(case.as_bytes(), Uuid::nil(), now());
            let value: Value = serde_json::from_str(case).unwrap_or(Value::Null);
            let from_value = validate(&value, Uuid::nil(), now());
            assert_eq!(from_bytes, from_value, "{case}");
        }
        // A repeated name counts once, with its last value; names come sorted.
        let r = parse(cases[0].as_bytes(), Uuid::nil(), now()).ok();
        assert_eq!(
            r.map(|r| r.metrics),
            Some(vec![("a".into(), 2.0), ("b".into(), 3.0)])
        );
        // The first unknown field by name is the one reported; an escaped name is read.
        let e = parse(cases[7].as_bytes(), Uuid::nil(), now()).err();
        assert_eq!(
            e.map(|e| (e.code, e.seq, e.detail)),
            Some((Code::BadReading, Some(2), "unknown field `aa`".to_owned()))
        );
        let r = parse(cases[10].as_bytes(), Uuid::nil(), now()).ok();
        assert_eq!(r.map(|r| r.metrics), Some(vec![("ab".into(), -0.0)]));
        // Seq: too large, or a float, is not an integer of the reading.
        for case in &cases[1..3] {
            let e = parse(case.as_bytes(), Uuid::nil(), now()).err();
            assert_eq!(e.map(|e| (e.code, e.seq)), Some((Code::BadReading, None)));
        }
    }

    #[test]
    fn a_message_is_one_reading_or_a_batch_of_them() {
        let ts = "2025-03-01T12:00:00Z";
        let one = format!(r#"{{"seq": 1, "ts": "{ts}", "metrics": {{"a": 1}}}}"#);
        let batch = format!(r#"{{"readings": [{one}, {{"seq": 2}}, 7]}}"#);
        let whole = |s: &str| parse_message(s.as_bytes()).err().map(|r| r.code);
        // One reading reads exactly as `parse` reads it.
        let m = parse_message(one.as_bytes());
        let Ok(WireMessage::One(wire)) = m else {
            panic!("one reading: {m:?}")
        };
        assert_eq!(
            check(wire, Uuid::nil(), now()),
            parse(one.as_bytes(), Uuid::nil(), now())
        );
        // A batch: each reading checked on its own, as over HTTP.
        let m = parse_message(batch.as_bytes());
        let Ok(WireMessage::Batch(wires)) = m else {
            panic!("a batch: {m:?}")
        };
        let codes: Vec<Option<Code>> = wires
            .into_iter()
            .map(|w| check(w, Uuid::nil(), now()).err().map(|r| r.code))
            .collect();
        assert_eq!(
            codes,
            vec![None, Some(Code::BadReading), Some(Code::BadReading)]
        );
        let texts = batch_texts(batch.as_bytes()).unwrap_or_default();
        assert_eq!(texts, vec![one.as_bytes(), br#"{"seq": 2}"#, b"7"]);
        // Refused whole.
        assert_eq!(whole(r#"{"readings": []}"#), Some(Code::NoReadings));
        assert_eq!(whole(r#"{"readings": {}}"#), Some(Code::BadBatch));
        assert_eq!(whole(r#"{"readings": null}"#), Some(Code::BadBatch));
        assert_eq!(
            whole(&format!(r#"{{"readings": [{one}], "seq": 1}}"#)),
            Some(Code::BadBatch)
        );
        assert_eq!(
            whole(&format!(r#"{{"readings": [{one}], "readings": [{one}]}}"#)),
            Some(Code::BadBatch)
        );
        assert_eq!(whole(r#"{"readings": [1, "#), Some(Code::BadJson));
        assert_eq!(
            whole(&format!(
                r#"{{"readings": [{one}, {{"metrics": {{"a": 1e999}}}}]}}"#
            )),
            Some(Code::NotFinite)
        );
        let full = |n: usize| format!(r#"{{"readings": [{}]}}"#, vec![one.as_str(); n].join(","));
        let m = parse_message(full(MAX_READINGS).as_bytes());
        assert!(
            matches!(m, Ok(WireMessage::Batch(ref w)) if w.len() == MAX_READINGS),
            "{m:?}"
        );
        let over = parse_message(full(MAX_READINGS + 1).as_bytes()).err();
        assert_eq!(
            over.map(|r| (r.code, r.detail)),
            Some((
                Code::TooManyReadings,
                "1001 readings; at most 1000 per message".to_owned()
            ))
        );
        // Not an object: a (bad) single reading, as before.
        let m = parse_message(b"[1]");
        assert!(
            matches!(m, Ok(WireMessage::One(ref w)) if !w.object),
            "{m:?}"
        );
    }

    fn chrono_ts(s: &str) -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_common_ts_form_reads_as_chrono_reads_it() {
        let cases = [
            "2025-03-01T12:00:00Z",
            "2025-03-01T12:00:00.5Z",
            "2025-03-01T12:00:00.123456789Z",
            "2025-03-01T12:00:00.1234567891Z",
            "2025-03-01T12:00:00+05:30",
            "2025-03-01T00:10:00-23:59",
            "2025-03-01T12:00:00-00:00",
            "2024-02-29T23:59:59.999999+00:00",
            "2025-02-29T12:00:00Z",
            "2025-12-31T23:59:60Z",
            "2025-03-01t12:00:00z",
            "2025-03-01 12:00:00Z",
            "2025-03-01T24:00:00Z",
            "2025-03-01T12:00:00.Z",
            "2025-03-01T12:00:00+24:00",
            "2025-03-01T12:00:00+0530",
            "0000-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2025-03-01T12:00:00",
            "+025-03-01T12:00:00Z",
            "2025-03-01T12:00:00Z ",
        ];
        for case in cases {
            assert_eq!(parse_ts(case), chrono_ts(case), "{case}");
        }
    }

    proptest::proptest! {
        /// Any string of the RFC 3339 shape, with any digits, separators and offsets, reads
        /// as chrono reads it: the same time, or a refusal with chrono's text.
        #[test]
        fn any_ts_reads_as_chrono_reads_it(
            date in "[0-9+]{4}-[0-9]{2}-[0-9]{2}",
            sep in "[Tt ]",
            time in "[0-9]{2}:[0-9]{2}:[0-9]{2}",
            fraction in "(\\.[0-9]{0,11})?",
            offset in "(Z|z|[+-][0-9]{2}:[0-9]{2}|[+-][0-9]{4}|)",
        ) {
            let s = format!("{date}{sep}{time}{fraction}{offset}");
            proptest::prop_assert_eq!(parse_ts(&s), chrono_ts(&s), "{}", s);
        }

        #[test]
        fn plausible_ts_reads_as_chrono_reads_it(
            y in 0i32..=9999, mo in 1u32..=13, d in 1u32..=31,
            h in 0u32..=24, mi in 0u32..=60, sec in 0u32..=60,
            frac in proptest::option::of(0u32..1_000_000_000), digits in 1usize..=9,
            off in proptest::option::of((proptest::bool::ANY, 0u32..=24, 0u32..=60)),
        ) {
            let fraction = frac
                .map(|f| format!(".{:09}", f)[..=digits].to_owned())
                .unwrap_or_default();
            let offset = match off {
                None => "Z".to_owned(),
                Some((neg, oh, om)) => format!("{}{oh:02}:{om:02}", if neg { '-' } else { '+' }),
            };
            let s = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}{fraction}{offset}");
            proptest::prop_assert_eq!(parse_ts(&s), chrono_ts(&s), "{}", s);
        }
    }

    #[test]
    fn payloads_that_are_not_json_or_overflow_are_told_apart() {
        let p = |s: &str| {
            parse(s.as_bytes(), Uuid::nil(), now())
                .err()
                .map(|r| r.code)
        };
        assert_eq!(p("{not json"), Some(Code::BadJson));
        assert_eq!(
            p(r#"{"seq": 1, "ts": "2025-03-01T12:00:00Z", "metrics": {"a": 1e999}}"#),
            Some(Code::NotFinite)
        );
    }
}
