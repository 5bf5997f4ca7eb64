//! Compressed NATS messages (`Content-Encoding: zstd`): stored exactly like plain ones, and
//! refused whole, once, when they cannot be read. A child of `telemetry`, whose site, bus
//! and helpers it uses.

use super::*;
use futures::StreamExt;
use ingest::nats::{CONTENT_ENCODING, ZSTD};

/// Publishes `payload` with `Content-Encoding: <encoding>` and waits for the stream's ack.
async fn publish_encoded(bus: &Bus, subject: String, encoding: &str, payload: Vec<u8>) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(CONTENT_ENCODING, encoding);
    bus.js
        .publish_with_headers(subject, headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored by the stream");
}

fn zstd(json: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(json, 3).expect("compress")
}

/// The same JSON as one zstd frame that does not declare its size (as a streaming
/// compressor writes it).
fn zstd_streamed(json: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    e.include_contentsize(false).expect("no content size");
    e.write_all(json).expect("write");
    e.finish().expect("finish")
}

#[tokio::test]
async fn a_compressed_batch_is_stored_like_the_plain_one_and_its_bad_readings_have_their_own_text()
{
    let s = site().await;
    let (device, _) = s.active("T-zstd").await;
    let bus = Bus::new(|_| {}).await;
    let (worker, stop) = bus.worker(s.pool()).await;
    let now = Utc::now();
    let readings = full_batch(now);
    let plain = batch(&readings);
    let packed = zstd(&plain);
    assert!(packed.len() * 4 < plain.len(), "the batch compresses");
    // Compressed, then the same readings again compressed without a declared size, then
    // plain: every reading is one row.
    publish_encoded(&bus, bus.subject(device), ZSTD, packed).await;
    publish_encoded(&bus, bus.subject(device), "ZSTD", zstd_streamed(&plain)).await;
    bus.publish(vec![(bus.subject(device), plain)]).await;
    bus.drained().await;
    let total = readings.len() as i64;
    assert_eq!(s.stored().await, total);
    // A bad reading in a compressed batch: the good ones stored, the bad one's letter
    // carries its own (decompressed) text.
    let bad = json!({"seq": 5000, "ts": rfc3339(now), "metrics": {"Temp": 1}});
    let mixed = batch(&[reading(5001, now, json!({"temp": 3})), bad.clone()]);
    publish_encoded(&bus, bus.subject(device), ZSTD, zstd(&mixed)).await;
    bus.drained().await;
    assert_eq!(s.stored().await, total + 1);
    let got = letters(s.pool()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let (_, index, reason, text, deliveries) = &got[0];
    assert_eq!(
        (*index, reason.as_str(), *deliveries),
        (Some(1), "bad_metric_name", 1)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(text).expect("the reading's JSON"),
        bad
    );
    s.roll_up().await;
    assert_eq!(
        count(s.pool(), "SELECT sum(count)::int8 FROM telemetry_minute").await,
        2 * total + 1,
        "each stored reading counted once in the rollups (two metrics each, one for 5001)"
    );
    let (_, _, redelivered) = bus.consumer_state().await;
    assert_eq!(redelivered, 0);
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

#[tokio::test]
async fn unreadable_compressed_messages_are_dead_lettered_once_and_terminated() {
    let s = site().await;
    let (good, _) = s.active("T-zstd-ok").await;
    let limit = 100_000;
    let bus = Bus::new(|c| c.max_message_bytes = limit).await;
    let (worker, stop) = bus.worker(s.pool()).await;
    let now = Utc::now();
    let ok = batch(&[reading(1, now, json!({"temp": 1}))]);
    // Valid JSON that decompresses past the limit although it is small on the wire, once
    // with its size declared and once without.
    let mut large = ok.clone();
    large.resize(limit + 1, b' ');
    let mut truncated = zstd(&ok);
    truncated.truncate(truncated.len() - 3);
    let refused: Vec<(&str, Vec<u8>, &str)> = vec![
        (ZSTD, zstd(&large), "message_too_large"),
        (ZSTD, zstd_streamed(&large), "message_too_large"),
        (ZSTD, ok.clone(), "bad_encoding"),
        (ZSTD, truncated, "bad_encoding"),
        ("gzip", ok.clone(), "bad_encoding"),
        (ZSTD, zstd(b"{\"readings\": [{\"seq\": 1,"), "bad_json"),
    ];
    assert!(refused[0].1.len() < 1000 && refused[1].1.len() < 1000);
    for (encoding, payload, _) in &refused {
        publish_encoded(&bus, bus.subject(good), encoding, payload.clone()).await;
    }
    let n = refused.len();
    eventually("every dead letter", || async {
        letters(s.pool()).await.len() == n
    })
    .await;
    tokio::time::sleep(bus.config.ack_wait + Duration::from_secs(1)).await;
    // The worker still takes messages; what it terminated never comes again.
    publish_encoded(&bus, bus.subject(good), "identity", ok).await;
    eventually("the later reading", || async { s.stored().await == 1 }).await;
    one_letter_per_message(s.pool(), &bus, refused.iter().map(|(_, p, c)| (&p[..], *c))).await;
    let _ = stop.send(true);
    worker.await.expect("the worker stops on shutdown");
}

// ----- The consumer -----

#[tokio::test]
async fn the_ingest_consumer_has_no_subject_filter_and_an_old_filter_is_removed_in_place() {
    let bus = Bus::new(|_| {}).await;
    let stream = bus.js.get_stream(&bus.config.stream).await.expect("stream");
    let info = stream
        .consumer_info(&bus.config.consumer)
        .await
        .expect("consumer info");
    assert_eq!(info.config.filter_subject, "");
    // A consumer made by an earlier version, filtered on the stream's own subjects, with a
    // message acknowledged: setup removes the filter and keeps the consumer's place.
    let name = "chronicle-ingest-old";
    let old = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
        filter_subject: format!("{}.>", bus.config.subject_prefix),
        ..Default::default()
    };
    let consumer = stream.create_consumer(old).await.expect("old consumer");
    bus.publish(vec![
        (bus.subject(Uuid::now_v7()), b"1".to_vec()),
        (bus.subject(Uuid::now_v7()), b"2".to_vec()),
    ])
    .await;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let first = batch.next().await.expect("a message").expect("message");
    first.double_ack().await.expect("acked");
    let config = NatsConfig {
        consumer: name.to_owned(),
        ..bus.config.clone()
    };
    ingest::nats::setup(&bus.js, &config)
        .await
        .expect("the old consumer updated");
    let info = stream.consumer_info(name).await.expect("consumer info");
    assert_eq!(info.config.filter_subject, "");
    assert_eq!((info.num_pending, info.ack_floor.stream_sequence), (1, 1));
}
