//! The telemetry-cpu scenario: the NATS ingest worker's own CPU per reading, without NATS or
//! PostgreSQL. Messages shaped like the telemetry scenario's publishers' (one reading, or a
//! gateway batch of `--readings-per-message`, optionally zstd-compressed) are made before
//! the clock starts; then, on one thread for `--duration` seconds, each is decompressed,
//! parsed and checked as the worker does, and every batch of about 5,000 readings is encoded
//! as the binary COPY stream and reduced to its rollup delta. Prints nanoseconds per reading
//! for each step: the figure to compare before and after a change to the ingest's parsing or
//! encoding, on a machine that is otherwise quiet.

use crate::telemetry::message_json;
use chrono::{SecondsFormat, Utc};
use ingest::reading::{self, Reading, WireMessage};
use ingest::rollup::Delta;
use std::hint::black_box;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Readings per worker batch (a worker's batch holds a few thousand readings).
const BATCH: usize = 5_000;
/// Distinct messages made before the clock starts (cycled over).
const MESSAGES: usize = 1_000;

pub(crate) fn run(duration: u64, per_message: usize, zstd: Option<i32>) -> anyhow::Result<()> {
    let per_message = per_message.max(1);
    let device = Uuid::now_v7();
    let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut compressor = zstd.map(zstd::bulk::Compressor::new).transpose()?;
    let mut json_bytes = 0usize;
    let mut messages: Vec<bytes::Bytes> = Vec::with_capacity(MESSAGES);
    for m in 0..MESSAGES {
        let seq = (m * per_message) as i64;
        let mut payload = String::new();
        message_json(&mut payload, seq, per_message, &ts);
        json_bytes += payload.len();
        messages.push(bytes::Bytes::from(match compressor.as_mut() {
            Some(c) => c.compress(payload.as_bytes())?,
            None => payload.into_bytes(),
        }));
    }
    let mut decompressor = zstd::bulk::Decompressor::new()?;
    let (mut t_parse, mut t_copy, mut t_delta) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut readings_done = 0u64;
    let mut rejected = 0u64;
    let mut batch: Vec<Reading> = Vec::with_capacity(BATCH + per_message);
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(duration);
    let mut m = 0usize;
    while Instant::now() < stop_at {
        let t0 = Instant::now();
        while batch.len() < BATCH {
            let raw = &messages[m % MESSAGES];
            m += 1;
            // As the workers read them: from the message's (or the decompressed) bytes,
            // each reading keeping its metrics' text for the COPY.
            let json = if compressor.is_some() {
                bytes::Bytes::from(decompressor.decompress(raw, 1 << 20)?)
            } else {
                raw.clone()
            };
            let now = Utc::now();
            match reading::parse_message_shared(&json) {
                Ok(WireMessage::One(w)) => match reading::check(w, device, now) {
                    Ok(r) => batch.push(r),
                    Err(_) => rejected += 1,
                },
                Ok(WireMessage::Batch(ws)) => {
                    for w in ws {
                        match reading::check(w, device, now) {
                            Ok(r) => batch.push(r),
                            Err(_) => rejected += 1,
                        }
                    }
                }
                Err(_) => rejected += 1,
            }
        }
        let t1 = Instant::now();
        let all: Vec<usize> = (0..batch.len()).collect();
        black_box(ingest::store::encode_copy(&batch, &all, Utc::now()));
        let t2 = Instant::now();
        let delta = Delta::of(batch.iter());
        black_box(delta.columns());
        drop(delta);
        let t3 = Instant::now();
        readings_done += batch.len() as u64;
        batch.clear();
        let t4 = Instant::now();
        t_parse += t1 - t0 + (t4 - t3);
        t_copy += t2 - t1;
        t_delta += t3 - t2;
    }
    if rejected > 0 {
        anyhow::bail!(
            "{rejected} readings or messages were refused: the generated ones must all pass"
        );
    }
    let elapsed = start.elapsed();
    let ns = |d: Duration| d.as_nanos() as f64 / readings_done.max(1) as f64;
    println!(
        "telemetry-cpu: {readings_done} readings in {:.1} s on one thread, {} per message{}, \
         {} bytes of JSON per reading",
        elapsed.as_secs_f64(),
        per_message,
        zstd.map(|l| format!(", zstd level {l}"))
            .unwrap_or_default(),
        json_bytes / (MESSAGES * per_message)
    );
    println!(
        "  per reading: decompress + parse + check {:.0} ns, COPY encoding {:.0} ns, rollup delta {:.0} ns, total {:.0} ns",
        ns(t_parse),
        ns(t_copy),
        ns(t_delta),
        ns(elapsed)
    );
    println!(
        "  one core: {:.0} readings/s",
        readings_done as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
