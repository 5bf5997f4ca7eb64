//! A reading on the wire and its validation: `{"seq", "ts", "metrics": {name: number}}`, with
//! an optional `device_id` that must name the device the transport authenticated (the HTTP
//! credential, or the NATS subject). Every refusal has a stable [`Rejection`] code.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// How far in the future a reading's `ts` may be (the device's clock may run ahead).
pub const MAX_FUTURE: Duration = Duration::minutes(5);
/// The most metrics one reading may carry.
pub const MAX_METRICS: usize = 64;
/// The longest metric name.
pub const MAX_METRIC_NAME: usize = 64;

/// A valid reading of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device.
    pub device_id: Uuid,
    /// The device's own counter: `(device_id, seq)` identifies the reading.
    pub seq: i64,
    /// When it was measured.
    pub ts: DateTime<Utc>,
    /// 1 to 64 finite values by name.
    pub metrics: BTreeMap<String, f64>,
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

/// Checks one reading of `device` received at `now`.
pub fn validate(value: &Value, device: Uuid, now: DateTime<Utc>) -> Result<Reading, Rejection> {
    let Some(object) = value.as_object() else {
        return Err(Rejection::new(
            Code::BadReading,
            None,
            "a reading is a JSON object {\"seq\", \"ts\", \"metrics\"}",
        ));
    };
    let seq = object
        .get("seq")
        .and_then(Value::as_i64)
        .filter(|s| *s >= 0);
    let bad = |detail: String| Err(Rejection::new(Code::BadReading, seq, detail));
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "seq" | "ts" | "metrics" | "device_id"))
    {
        return bad(format!("unknown field `{unknown}`"));
    }
    let Some(seq) = seq else {
        return bad("seq must be an integer from 0 to 9223372036854775807".to_owned());
    };
    let ts = match object.get("ts").and_then(Value::as_str) {
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(ts) => ts.with_timezone(&Utc),
            Err(e) => return bad(format!("ts is not an RFC 3339 time: {e}")),
        },
        None => return bad("ts must be an RFC 3339 time such as 2025-01-31T12:00:00Z".to_owned()),
    };
    let Some(raw_metrics) = object.get("metrics").and_then(Value::as_object) else {
        return bad("metrics must be an object of {name: number}".to_owned());
    };
    match object.get("device_id") {
        None => {}
        Some(Value::String(s)) if Uuid::try_parse(s).ok() == Some(device) => {}
        Some(Value::String(s)) if Uuid::try_parse(s).is_ok() => {
            return Err(Rejection::new(
                Code::DeviceMismatch,
                Some(seq),
                format!("device_id {s} is not the sending device {device}"),
            ))
        }
        Some(_) => return bad("device_id must be the device's UUID".to_owned()),
    }
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
    let mut metrics = BTreeMap::new();
    for (name, value) in raw_metrics {
        if !is_metric_name(name) {
            return Err(Rejection::new(
                Code::BadMetricName,
                Some(seq),
                format!("metric names are 1-64 of a-z 0-9 _ . (got {name:?})"),
            ));
        }
        match value.as_f64() {
            Some(v) if v.is_finite() => {
                metrics.insert(name.clone(), v);
            }
            _ => {
                return Err(Rejection::new(
                    Code::NotFinite,
                    Some(seq),
                    format!("metric {name} is not a finite number"),
                ))
            }
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
        metrics,
    })
}

/// Parses and checks a NATS payload: one reading of `device` as JSON.
pub fn parse(payload: &[u8], device: Uuid, now: DateTime<Utc>) -> Result<Reading, Rejection> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        // serde_json refuses numbers beyond f64 instead of making them infinite.
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
    })?;
    validate(&value, device, now)
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
        assert_eq!(r.and_then(|r| r.metrics.get("rssi").copied()), Some(-70.0));
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
