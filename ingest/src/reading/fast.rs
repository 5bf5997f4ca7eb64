//! A direct reader for the common shape of a payload: one reading `{"seq", "ts", "metrics"}`
//! or a batch `{"readings": [...]}` of them, with plain strings (no escapes), a non-negative
//! integer `seq`, and metric values that are plain decimals of at most 15 digits. It reads
//! what serde_json would read into the same [`WireReading`]s, about three times as fast;
//! anything else (escapes, exponents, long numbers, other fields or types, repeated fields,
//! a batch of 0 or more than [`MAX_READINGS`] readings, anything malformed) gives `None`, and
//! the caller reads the payload through serde_json, whose verdict stands. The property tests
//! below hold the two readers to the same result on every payload the fast one accepts.

use super::{parse_ts, CompactString, WireMessage, WireReading, MAX_READINGS};
use bytes::Bytes;

/// Powers of ten that an f64 holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Reads a NATS payload of the common shape (one reading, or a batch), or `None`. With
/// `shared` (the payload itself, as [`Bytes`]), each reading keeps its metrics object as
/// sent ([`WireReading::metrics_text`]), a slice of it.
pub(crate) fn message(payload: &[u8], shared: Option<&Bytes>) -> Option<WireMessage> {
    let mut p = Parser {
        b: payload,
        i: 0,
        shared,
    };
    p.eat(b'{')?;
    let message = if p.peek_key(b"readings") {
        p.key()?;
        let readings = p.readings()?;
        p.eat(b'}')?;
        WireMessage::Batch(readings)
    } else {
        // From the top again: the payload is the reading.
        p.i = 0;
        WireMessage::One(p.reading()?)
    };
    p.end()?;
    Some(message)
}

/// Reads an HTTP body of the common shape, `{"readings": [...]}`, or `None`; its readings
/// keep their metrics' text, as with [`message`].
pub(crate) fn batch(body: &Bytes) -> Option<Vec<WireReading>> {
    match message(body, Some(body))? {
        WireMessage::Batch(readings) => Some(readings),
        WireMessage::One(_) => None,
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    /// `b` as [`Bytes`], when the readings are to keep their metrics' text.
    shared: Option<&'a Bytes>,
}

impl<'a> Parser<'a> {
    /// Skips JSON whitespace; the next byte, if any.
    fn peek(&mut self) -> Option<u8> {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                return Some(*c);
            }
        }
        None
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    /// Whether the next string (after whitespace) is exactly `"<key>"`.
    fn peek_key(&mut self, key: &[u8]) -> bool {
        self.peek() == Some(b'"')
            && self.b.get(self.i + 1..self.i + 1 + key.len()) == Some(key)
            && self.b.get(self.i + 1 + key.len()) == Some(&b'"')
    }

    /// A string without escapes or control characters, as UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if self.b[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        std::str::from_utf8(&self.b[start..start + len]).ok()
    }

    /// After an element of an object or array: `Some(false)` past a comma (another comes),
    /// `Some(true)` past `close` (the end), `None` for anything else.
    fn after_element(&mut self, close: u8) -> Option<bool> {
        let c = self.peek()?;
        self.i += 1;
        match c {
            b',' => Some(false),
            c if c == close => Some(true),
            _ => None,
        }
    }

    /// An object key and its colon.
    fn key(&mut self) -> Option<&'a str> {
        let k = self.string()?;
        self.eat(b':')?;
        Some(k)
    }

    /// The digits of a JSON number's integer part (no leading zero unless alone), as a
    /// value and a count.
    fn digits(&mut self, mut m: u64, mut n: usize, leading: bool) -> (u64, usize) {
        while let Some(c) = self.b.get(self.i).filter(|c| c.is_ascii_digit()) {
            m = m.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            n += 1;
            self.i += 1;
            if leading && n == 1 && m == 0 {
                break;
            }
        }
        (m, n)
    }

    /// The byte after a number must end it (not a digit, fraction or exponent).
    fn number_ends(&self) -> Option<()> {
        match self.b.get(self.i) {
            Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'-' | b'+') => None,
            _ => Some(()),
        }
    }

    /// A non-negative integer of at most 18 digits.
    fn seq(&mut self) -> Option<i64> {
        self.peek()?;
        let (m, n) = self.digits(0, 0, true);
        if n == 0 || n > 18 {
            return None;
        }
        self.number_ends()?;
        i64::try_from(m).ok()
    }

    /// A number `-?int(.frac)?` of at most 15 digits, read as serde_json reads it: the
    /// digits as an integer, divided by the power of ten of the fraction (exact inputs, one
    /// rounding).
    fn value(&mut self) -> Option<f64> {
        let negative = self.peek()? == b'-';
        if negative {
            self.i += 1;
        }
        let (mut m, mut n) = self.digits(0, 0, true);
        if n == 0 {
            return None;
        }
        let mut fraction = 0;
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            let before = n;
            (m, n) = self.digits(m, n, false);
            fraction = n - before;
            if fraction == 0 {
                return None;
            }
        }
        if n > 15 {
            return None;
        }
        self.number_ends()?;
        let f = m as f64 / POW10[fraction];
        Some(if negative { -f } else { f })
    }

    /// `{"name": number, ...}`, in the order given.
    fn metrics(&mut self) -> Option<Vec<(CompactString, f64)>> {
        self.eat(b'{')?;
        let mut entries = Vec::with_capacity(8);
        if self.eat(b'}').is_some() {
            return Some(entries);
        }
        loop {
            let name = self.key()?;
            entries.push((CompactString::from(name), self.value()?));
            if self.after_element(b'}')? {
                return Some(entries);
            }
        }
    }

    /// `{"seq", "ts", "metrics"}` in any order, each once; no other field.
    fn reading(&mut self) -> Option<WireReading> {
        self.eat(b'{')?;
        let mut w = WireReading {
            object: true,
            ..WireReading::default()
        };
        if self.eat(b'}').is_some() {
            return None;
        }
        loop {
            match self.key()? {
                "seq" if w.seq.is_none() => w.seq = Some(self.seq()?),
                "ts" if w.ts.is_none() => w.ts = Some(parse_ts(self.string()?)),
                "metrics" if w.metrics.is_none() => {
                    self.peek()?;
                    let start = self.i;
                    w.metrics = Some(self.metrics()?);
                    // Names without escapes and plain decimals: valid jsonb text as it is.
                    w.metrics_text = self.shared.map(|b| b.slice(start..self.i));
                }
                _ => return None,
            }
            if self.after_element(b'}')? {
                return Some(w);
            }
        }
    }

    /// `[reading, ...]`: 1 to [`MAX_READINGS`] readings.
    fn readings(&mut self) -> Option<Vec<WireReading>> {
        self.eat(b'[')?;
        let mut readings = Vec::with_capacity(16);
        loop {
            readings.push(self.reading()?);
            if readings.len() > MAX_READINGS {
                return None;
            }
            if self.after_element(b']')? {
                return Some(readings);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_message, TopLevel};
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    /// What serde_json reads (the reader every payload falls back to).
    fn serde(payload: &[u8]) -> Option<WireMessage> {
        let top: TopLevel = serde_json::from_slice(payload).ok()?;
        match top.readings {
            None => Some(WireMessage::One(top.reading)),
            Some(r) if top.fields == 1 => r.readings.map(WireMessage::Batch),
            Some(_) => None,
        }
    }

    fn bits(m: &WireMessage) -> Vec<u64> {
        let readings = match m {
            WireMessage::One(r) => std::slice::from_ref(r),
            WireMessage::Batch(rs) => rs.as_slice(),
        };
        readings
            .iter()
            .flat_map(|r| r.metrics.iter().flatten().map(|(_, v)| v.to_bits()))
            .collect()
    }

    /// The two readers agree wherever the fast one answers. NaN never comes from either.
    fn agree(payload: &[u8]) -> Result<bool, TestCaseError> {
        match message(payload, None) {
            None => Ok(false),
            Some(fast) => {
                let text = String::from_utf8_lossy(payload);
                let slow = serde(payload);
                prop_assert_eq!(Some(&fast), slow.as_ref(), "{}", text);
                // Bit for bit (f64 equality takes -0.0 for 0.0).
                prop_assert_eq!(Some(bits(&fast)), slow.as_ref().map(bits), "{}", text);
                prop_assert_eq!(Ok(fast.clone()), parse_message(payload));
                kept_texts_agree(payload, &fast)?;
                Ok(true)
            }
        }
    }

    fn readings(m: WireMessage) -> Vec<WireReading> {
        match m {
            WireMessage::One(r) => vec![r],
            WireMessage::Batch(rs) => rs,
        }
    }

    /// Read from [`Bytes`], the same readings, each keeping its metrics object as sent: a
    /// text that a JSON reader (last value of a repeated name, as jsonb keeps it) reads to
    /// the same names and the same f64s, bit for bit.
    fn kept_texts_agree(payload: &[u8], fast: &WireMessage) -> Result<(), TestCaseError> {
        let text = String::from_utf8_lossy(payload);
        let shared = Bytes::copy_from_slice(payload);
        let kept = message(payload, Some(&shared));
        prop_assert!(kept.is_some(), "{}", text);
        let kept = readings(kept.unwrap_or(WireMessage::Batch(Vec::new())));
        let plain = readings(fast.clone());
        prop_assert_eq!(kept.len(), plain.len());
        for (k, p) in kept.into_iter().zip(plain) {
            let Some(metrics) = &p.metrics else {
                prop_assert_eq!(k.metrics_text, None);
                continue;
            };
            let want: std::collections::BTreeMap<&str, u64> = metrics
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_bits()))
                .collect();
            let sent = k.metrics_text.clone().unwrap_or_default();
            let read: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&sent).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: std::collections::BTreeMap<&str, u64> = read
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_f64().unwrap_or(f64::NAN).to_bits()))
                .collect();
            prop_assert_eq!(got, want, "{}", text);
            prop_assert_eq!(
                WireReading {
                    metrics_text: None,
                    ..k
                },
                p
            );
        }
        Ok(())
    }

    #[test]
    fn common_payloads_take_the_fast_reader() {
        let ts = "2025-03-01T12:00:00.123456Z";
        let one =
            format!(r#"{{"seq":7,"ts":"{ts}","metrics":{{"temp":21.5,"rssi":-70,"b":0.001}}}}"#);
        let spaced = format!(
            "{{ \"metrics\" : {{ \"a\" : 1 , \"a\" : 2.50 }} ,\n\t\"ts\" : \"{ts}\" , \"seq\" : 0 }} "
        );
        let batch = format!(r#"{{"readings":[{one},{spaced}]}}"#);
        for p in [&one, &spaced, &batch] {
            assert_eq!(agree(p.as_bytes()).ok(), Some(true), "{p}");
        }
    }

    #[test]
    fn uncommon_payloads_are_left_to_serde_json() {
        let ts = "2025-03-01T12:00:00Z";
        let cases = [
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":1e3}}}}"#),
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":1234567890123456}}}}"#),
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":01}}}}"#),
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":1.}}}}"#),
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":-}}}}"#),
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":null}}}}"#),
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a\u0062":1}}}}"#),
            format!(r#"{{"seq":-1,"ts":"{ts}","metrics":{{"a":1}}}}"#),
            format!(r#"{{"seq":1.0,"ts":"{ts}","metrics":{{"a":1}}}}"#),
            format!(r#"{{"seq":1,"seq":2,"ts":"{ts}","metrics":{{"a":1}}}}"#),
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":1}},"device_id":"x"}}"#),
            format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":1}}}} x"#),
            format!(r#"{{"readings":[{{"seq":1,"ts":"{ts}","metrics":{{"a":1}}}}],"x":1}}"#),
            r#"{"readings":[]}"#.to_owned(),
            r#"{}"#.to_owned(),
            r#"[1]"#.to_owned(),
            "{\"seq\":1,\"ts\":\"\u{7}\",\"metrics\":{}}".to_owned(),
        ];
        for case in &cases {
            assert_eq!(message(case.as_bytes(), None), None, "{case}");
        }
        let one = format!(r#"{{"seq":1,"ts":"{ts}","metrics":{{"a":1}}}}"#);
        let full = |n: usize| format!(r#"{{"readings":[{}]}}"#, vec![one.as_str(); n].join(","));
        assert!(message(full(MAX_READINGS).as_bytes(), None).is_some());
        assert_eq!(message(full(MAX_READINGS + 1).as_bytes(), None), None);
    }

    /// A JSON number as a device might write it: any digits, signs, fractions, exponents.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?(0|[1-9][0-9]{0,17})(\\.[0-9]{1,12})?",
            "-?[0-9]{1,4}(\\.[0-9]{0,3})?([eE][+-]?[0-9]{1,3})?",
            "-?0[0-9]{1,3}",
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            Just("-0".to_owned()),
            Just("-0.0".to_owned()),
            Just("null".to_owned()),
            Just("\"1\"".to_owned()),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_.]{1,30}",
            "[A-Za-z\\-]{0,4}",
            Just("a\\\"b".to_owned()),
            Just("é".to_owned()),
        ]
    }

    fn reading() -> impl Strategy<Value = String> {
        let ws = "[ \n\t]{0,2}";
        (
            prop_oneof![8 => "[1-9][0-9]{0,17}", 1 => "[0-9]{1,20}", 1 => "-[0-9]{1,3}", 1 => Just("1.5".to_owned())],
            prop_oneof![
                2 => Just("2025-03-01T12:00:00Z".to_owned()),
                1 => "20[0-9]{2}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,10})?(Z|z|[+-][0-2][0-9]:[0-5][0-9])",
            ],
            proptest::collection::vec(
                (
                    prop_oneof![6 => "[a-z0-9_.]{1,30}", 1 => name()],
                    prop_oneof![6 => "-?(0|[1-9][0-9]{0,12})(\\.[0-9]{1,2})?", 1 => number()],
                ),
                0..6,
            ),
            proptest::sample::select(vec![0usize, 1, 2, 3, 4, 5]),
            ws,
        )
            .prop_map(|(seq, ts, metrics, order, w)| {
                let m: Vec<String> = metrics
                    .iter()
                    .map(|(n, v)| format!("{w}\"{n}\"{w}:{w}{v}{w}"))
                    .collect();
                let fields = [
                    format!("\"seq\":{w}{seq}"),
                    format!("\"ts\":{w}\"{ts}\""),
                    format!("\"metrics\":{w}{{{}}}", m.join(",")),
                ];
                let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
                let f: Vec<&str> = orders[order].iter().map(|&k| fields[k].as_str()).collect();
                format!("{w}{{{w}{}{w}}}{w}", f.join(&format!("{w},{w}")))
            })
    }

    #[test]
    fn the_generated_readings_take_both_readers() {
        // The properties below only compare where the fast reader answers: it must answer
        // for many of the generated payloads, and leave many to serde_json.
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = reading();
        let (mut fast, mut total) = (0, 0);
        for _ in 0..1000 {
            let Ok(tree) = strategy.new_tree(&mut runner) else {
                continue;
            };
            total += 1;
            if message(tree.current().as_bytes(), None).is_some() {
                fast += 1;
            }
        }
        assert!(
            fast >= total / 10 && fast <= total * 9 / 10,
            "{fast} of {total}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_reading_reads_as_serde_json_reads_it(r in reading()) {
            agree(r.as_bytes())?;
        }

        #[test]
        fn a_batch_reads_as_serde_json_reads_it(rs in proptest::collection::vec(reading(), 1..5)) {
            let payload = format!("{{\"readings\":[{}]}}", rs.join(","));
            agree(payload.as_bytes())?;
        }

        #[test]
        fn any_number_reads_as_serde_json_reads_it(v in number()) {
            let payload = format!(r#"{{"seq":1,"ts":"2025-03-01T12:00:00Z","metrics":{{"a":{v}}}}}"#);
            let common = v.trim_start_matches('-');
            let took = agree(payload.as_bytes())?;
            // The plain decimals of up to 15 digits are all read here.
            let plain = !common.contains(['e', 'E', 'n', '"'])
                && !common.ends_with('.')
                // No leading zero before other digits ("0" and "0.x" are fine).
                && (common.len() == 1 || !common.starts_with('0') || common.starts_with("0."))
                && common.chars().filter(char::is_ascii_digit).count() <= 15;
            prop_assert_eq!(took, plain, "{}", v);
        }

        #[test]
        fn any_text_is_read_alike_or_left_alone(s in "[{}\\[\\]\":,a-z0-9.\\- ]{0,40}") {
            agree(s.as_bytes())?;
        }
    }
}
