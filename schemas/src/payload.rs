//! A stored event's payload as a reader of the log holds it: the JSON text as PostgreSQL
//! returned it, turned into a [`serde_json::Value`] only when something looks at it as one.
//!
//! Replaying the log decodes most payloads straight into their domain events
//! ([`crate::RecordedEvent::decode`]); going through a `Value` first (a map with an allocation
//! per key and per string, then dropped) was most of a rebuild's client-side cost. Everything
//! else sees the same `Value` as before, parsed once on first use: [`Payload`] dereferences
//! to it, compares, clones, prints and serializes as it (so the hash chain, the audit export
//! and the fan-out write exactly the bytes they wrote before).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

/// A stored event's payload (see the module's documentation).
#[derive(Clone, Default)]
pub struct Payload {
    /// The JSON text as read, while nothing has changed the value.
    raw: Option<Box<RawValue>>,
    /// The value, once parsed (or as given).
    value: OnceLock<Value>,
}

impl Payload {
    /// A payload from the JSON text of the log (valid JSON: [`RawValue`] checked it).
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self {
            raw: Some(raw),
            value: OnceLock::new(),
        }
    }

    /// The value (parsed from the text on first use).
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| match &self.raw {
            // The text is valid JSON, so this parses; `Null` only as a last resort.
            Some(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            None => Value::Null,
        })
    }

    /// The value, taken out.
    pub fn into_value(self) -> Value {
        self.value();
        self.value.into_inner().unwrap_or(Value::Null)
    }

    /// The payload as a domain event enum internally tagged by `type` = `event_type`,
    /// decoded from the JSON text without building a `Value` when the text is at hand and
    /// decodes; otherwise (a payload already parsed or changed, or one the direct way
    /// refuses) exactly as [`crate::decode_payload`] decodes the value, so the outcome and
    /// its errors are those of the value.
    pub fn decode_tagged<E: serde::de::DeserializeOwned>(
        &self,
        event_type: &str,
    ) -> Result<E, serde_json::Error> {
        if let (Some(raw), None) = (&self.raw, self.value.get()) {
            if let Some(tagged) = tagged_text(event_type, raw.get()) {
                if let Ok(event) = serde_json::from_str::<E>(&tagged) {
                    return Ok(event);
                }
            }
        }
        crate::decode_payload(event_type, self.value())
    }
}

/// `{"type": <event_type>, <the payload object's members>}` as text, if the payload is an
/// object; `None` otherwise.
fn tagged_text(event_type: &str, raw: &str) -> Option<String> {
    let body = raw.trim_start().strip_prefix('{')?;
    let tag = serde_json::to_string(event_type).ok()?;
    let mut out = String::with_capacity(raw.len() + tag.len() + 10);
    out.push_str("{\"type\":");
    out.push_str(&tag);
    if body.trim_start().starts_with('}') {
        out.push('}');
    } else {
        out.push(',');
        out.push_str(body);
    }
    Some(out)
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self {
            raw: None,
            value: OnceLock::from(value),
        }
    }
}

impl Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl DerefMut for Payload {
    fn deref_mut(&mut self) -> &mut Value {
        self.value();
        // The text no longer says what the value says.
        self.raw = None;
        // `value()` initialised it.
        self.value.get_mut().expect("payload parsed just above")
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value()
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl PartialEq<Payload> for Value {
    fn eq(&self, other: &Payload) -> bool {
        self == other.value()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value().fmt(f)
    }
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value().fmt(f)
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "type")]
    enum Ev {
        Opened { owner: String, limit: i64 },
        Closed,
        Noted { note: Option<String> },
    }

    fn raw(text: &str) -> Payload {
        Payload::from_raw(RawValue::from_string(text.to_owned()).expect("valid JSON"))
    }

    #[test]
    fn decodes_from_the_text_as_from_the_value() {
        let cases = [
            ("Opened", r#"{"owner": "a\"b", "limit": 5}"#),
            ("Closed", "{}"),
            ("Closed", " { } "),
            ("Noted", r#"{"note": null}"#),
            ("Noted", r#"{}"#),
            // A payload's own `type` is replaced by the stored type, as decode_payload does.
            ("Opened", r#"{"type": "Closed", "owner": "x", "limit": -1}"#),
        ];
        for (ty, text) in cases {
            let from_text: Ev = raw(text).decode_tagged(ty).expect(text);
            let value: Value = serde_json::from_str(text).expect("json");
            let from_value: Ev = crate::decode_payload(ty, &value).expect(text);
            assert_eq!(from_text, from_value, "{ty} {text}");
        }
    }

    #[test]
    fn refuses_what_the_value_refuses_with_the_same_error() {
        for (ty, text) in [
            ("Opened", r#"{"owner": "x"}"#),
            ("Opened", r#"{"owner": 1, "limit": 1}"#),
            ("Unknown", r#"{"owner": "x", "limit": 1}"#),
            ("Opened", "[1, 2]"),
            ("Opened", "7"),
        ] {
            let from_text = raw(text).decode_tagged::<Ev>(ty).expect_err(text);
            let value: Value = serde_json::from_str(text).expect("json");
            let from_value = crate::decode_payload::<Ev>(ty, &value).expect_err(text);
            assert_eq!(from_text.to_string(), from_value.to_string(), "{ty} {text}");
        }
    }

    #[test]
    fn reads_changes_and_serializes_as_the_value() {
        let text = r#"{"b": [1, 2.5, "x"], "a": {"z": null, "y": true}}"#;
        let value: Value = serde_json::from_str(text).expect("json");
        let mut p = raw(text);
        assert_eq!(p, value);
        assert_eq!(p["b"][1], json!(2.5));
        // Serialized as the value is: compact, keys sorted.
        assert_eq!(
            serde_json::to_string(&p).expect("serialize"),
            serde_json::to_string(&value).expect("serialize")
        );
        p["a"]["y"] = json!(false);
        // A changed payload no longer decodes from its old text.
        #[derive(Debug, Deserialize)]
        #[serde(tag = "type")]
        enum Flag {
            F { a: Value },
        }
        let Flag::F { a } = p.decode_tagged("F").expect("decode");
        assert_eq!(a, json!({"z": null, "y": false}));
        assert_eq!(p.clone().into_value()["a"]["y"], json!(false));
        let back: Payload =
            serde_json::from_str(&serde_json::to_string(&p).expect("ser")).expect("deserialize");
        assert_eq!(back, p);
    }
}
