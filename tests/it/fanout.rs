//! Event fan-out to NATS JetStream against the real server (`NATS_URL`, default
//! `nats://127.0.0.1:4222`): every committed event arrives once, in the log's order, with its
//! id as `Nats-Msg-Id`, across crashes of the publisher; the checkpoint never moves past an
//! event JetStream has not acknowledged. Each test uses its own stream and subjects and
//! deletes them at the end.

use crate::support::{small_batches, TestApp};
use async_nats::jetstream;
use projections::fanout::{ensure_stream, FanoutConfig, FanoutProjector};
use projections::{Projector, Step, Worker};
use schemas::{Cursor, RecordedEvent};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

async fn nats() -> async_nats::Client {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    async_nats::connect(&url)
        .await
        .expect("a NATS server with JetStream at NATS_URL")
}

fn own_config() -> FanoutConfig {
    let id = Uuid::now_v7().simple().to_string();
    FanoutConfig {
        stream: format!("EVENTS_{id}"),
        subject_prefix: format!("ev{id}"),
        duplicate_window: Duration::from_secs(600),
        max_in_flight: 8,
    }
}

async fn fanout_position(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = 'fanout'")
        .fetch_optional(pool)
        .await
        .expect("checkpoint")
        .unwrap_or(0)
}

/// Waits until every event of the log is readable by tailers: a transaction open anywhere in
/// the cluster (other tests) holds the readable horizon back for a moment.
async fn wait_readable(pool: &PgPool) {
    for _ in 0..3000 {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(pool)
            .await
            .expect("count");
        let readable = schemas::log::read_all(pool, Cursor::START, total + 1)
            .await
            .expect("read")
            .len() as i64;
        if readable == total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the log did not become readable");
}

/// A test app with a few customers' commands in its log, and a fan-out projector publishing
/// to a stream of its own.
async fn start(
    customers: usize,
) -> (
    TestApp,
    async_nats::Client,
    FanoutConfig,
    Arc<dyn Projector>,
) {
    let app = TestApp::new().await;
    app.customers_with_transfers(customers).await;
    let client = nats().await;
    let config = own_config();
    let projector: Arc<dyn Projector> = Arc::new(
        FanoutProjector::start(client.clone(), config.clone())
            .await
            .expect("the stream"),
    );
    (app, client, config, projector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_arrives_once_in_log_order_across_publisher_crashes() {
    let (app, client, config, projector) = start(4).await;
    let pool = app.db.pool.clone();

    // A publisher that died after JetStream acknowledged a batch but before its checkpoint
    // moved: the batch is published again by the next one.
    wait_readable(&pool).await;
    let first = schemas::log::read_all(&pool, Cursor::START, 5)
        .await
        .expect("read");
    assert_eq!(first.len(), 5);
    projector.deliver(&first).await.expect("published");
    assert_eq!(fanout_position(&pool).await, 0);

    // One killed between steps, after two small batches.
    let mut worker = Worker::live(pool.clone(), projector.clone(), small_batches(3));
    worker.load().await.expect("load");
    assert!(matches!(worker.step().await.expect("step"), Step::Took(_)));
    assert!(matches!(worker.step().await.expect("step"), Step::Took(_)));
    drop(worker);

    // One aborted at an arbitrary moment while running, commands still coming in.
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(
        Worker::live(pool.clone(), projector.clone(), small_batches(2)).run(None, stopped),
    );
    app.customers_with_transfers(2).await;
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 40)).await;
    running.abort();
    let _ = running.await;
    app.customers_with_transfers(2).await;

    // The last one runs to the end of the log.
    let mut worker = Worker::live(pool.clone(), projector.clone(), small_batches(7));
    worker.load().await.expect("load");
    worker.catch_up(|_, _| {}).await.expect("catch up");

    let log: Vec<(Uuid, String, String, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT event_id, stream_type, event_type, position, payload FROM events \
         ORDER BY tx, position",
    )
    .fetch_all(&pool)
    .await
    .expect("log");
    assert!(log.len() > 20, "the workload wrote {} events", log.len());
    let js = jetstream::new(client);
    let mut stream = js.get_stream(&config.stream).await.expect("stream");
    let messages = stream.info().await.expect("info").state.messages;
    assert_eq!(
        messages,
        log.len() as u64,
        "every event once, though some were published twice"
    );
    for (i, (event_id, stream_type, event_type, position, payload)) in log.iter().enumerate() {
        let m = stream.get_raw_message(i as u64 + 1).await.expect("message");
        assert_eq!(
            m.subject.as_str(),
            format!("{}.{stream_type}.{event_type}", config.subject_prefix),
            "message {} is event {position}",
            i + 1
        );
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(
            m.headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned()),
            Some(event_id.to_string())
        );
        assert_eq!(header("Chronicle-Position"), Some(position.to_string()));
        let body: RecordedEvent = serde_json::from_slice(&m.payload).expect("the event as JSON");
        assert_eq!(body.event_id, *event_id);
        assert_eq!(&body.payload, payload);
    }
    js.delete_stream(&config.stream).await.expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_never_moves_past_events_jetstream_did_not_acknowledge() {
    let (app, client, config, projector) = start(2).await;
    let pool = app.db.pool.clone();
    let js = jetstream::new(client);
    // The stream disappears: nothing can be acknowledged.
    js.delete_stream(&config.stream).await.expect("delete");
    let mut worker = Worker::live(pool.clone(), projector.clone(), small_batches(4));
    worker.load().await.expect("load");
    wait_readable(&pool).await;
    assert!(
        worker.step().await.is_err(),
        "an unacknowledged batch fails"
    );
    assert_eq!(fanout_position(&pool).await, 0, "and the checkpoint stays");
    // Back again: the same events go out.
    ensure_stream(&js, &config).await.expect("recreate");
    worker.load().await.expect("load");
    worker.catch_up(|_, _| {}).await.expect("catch up");
    let events = app.event_count().await;
    let mut stream = js.get_stream(&config.stream).await.expect("stream");
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        events as u64
    );
    assert_eq!(Some(fanout_position(&pool).await), app.log_head().await);
    js.delete_stream(&config.stream).await.expect("clean up");
}
