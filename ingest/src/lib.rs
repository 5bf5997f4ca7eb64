//! Chronicle's telemetry ingestion over HTTP and NATS JetStream into the time-series log.
//!
//! - [`reading`]: the wire shape of a reading and its validation codes.
//! - [`store`]: the batch writer (one transaction: the raw rows by binary COPY, deduplicated
//!   by the day partitions' `(device_id, seq)` key, the batch's rollup delta, dead letters),
//!   device status for the NATS path, partitions and retention.
//! - [`group`]: group commit of concurrent `POST /v1/telemetry` requests.
//! - [`rollup`]: rollup deltas and the worker that applies them to the per-minute rollups and
//!   the latest values, exactly once, behind the writers.
//! - [`query`]: per-minute and per-hour statistics, latest values.
//! - [`nats`]: the JetStream stream, its durable consumer and the workers.
//! - [`run`]: the `ingest` role of `chronicle serve`: partitions ahead, retention, the rollup
//!   worker, and the NATS workers when a NATS URL is configured.
//!
//! The design is described in `docs/telemetry.md`.

pub mod group;
pub mod nats;
pub mod query;
pub mod reading;
pub mod rollup;
pub mod store;

use chrono::Utc;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;

/// The ingest role's settings (flattened into `chronicle serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Whole days of telemetry kept before today; older day partitions are dropped.
    #[arg(
        long,
        env = "CHRONICLE_TELEMETRY_RETENTION_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=3650)
    )]
    pub telemetry_retention_days: u32,
    /// The JetStream stream that captures telemetry.
    #[arg(long, env = "CHRONICLE_TELEMETRY_STREAM", default_value = "TELEMETRY")]
    pub telemetry_stream: String,
    /// Devices publish readings to `<prefix>.<device_id>`.
    #[arg(
        long,
        env = "CHRONICLE_TELEMETRY_SUBJECT_PREFIX",
        default_value = "telemetry"
    )]
    pub telemetry_subject_prefix: String,
    /// The durable consumer shared by every ingest worker.
    #[arg(
        long,
        env = "CHRONICLE_TELEMETRY_CONSUMER",
        default_value = "chronicle-ingest"
    )]
    pub telemetry_consumer: String,
    /// NATS ingest workers in this process.
    #[arg(long, env = "CHRONICLE_INGEST_WORKERS", default_value_t = 2)]
    pub ingest_workers: usize,
    /// How long the rollup worker waits after finding no rollup delta queued: the usual lag
    /// of per-minute statistics and latest values behind the stored readings.
    #[arg(
        long,
        env = "CHRONICLE_TELEMETRY_ROLLUP_INTERVAL_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub telemetry_rollup_interval_ms: u64,
    /// How long a NATS worker waits for more messages after the first one of a batch (a
    /// batch also closes at 10,000 messages): larger batches cost less per reading, later.
    #[arg(
        long,
        env = "CHRONICLE_TELEMETRY_BATCH_WAIT_MS",
        default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub telemetry_batch_wait_ms: u64,
    /// Writer tasks of `POST /v1/telemetry` (api role): each writes every request waiting when
    /// it becomes free in one transaction (group commit), so this many transactions at most
    /// are writing HTTP readings at a time.
    #[arg(
        long,
        env = "CHRONICLE_TELEMETRY_HTTP_WRITERS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u64).range(1..=64)
    )]
    pub telemetry_http_writers: u64,
}

impl IngestArgs {
    /// The NATS side of these settings.
    pub fn nats(&self) -> nats::NatsConfig {
        nats::NatsConfig {
            stream: self.telemetry_stream.clone(),
            subject_prefix: self.telemetry_subject_prefix.clone(),
            consumer: self.telemetry_consumer.clone(),
            workers: self.ingest_workers.max(1),
            batch_wait: Duration::from_millis(self.telemetry_batch_wait_ms),
            ..Default::default()
        }
    }

    /// The rollup worker's side of these settings.
    pub fn rollup(&self) -> rollup::RollupConfig {
        rollup::RollupConfig {
            interval: Duration::from_millis(self.telemetry_rollup_interval_ms),
            ..Default::default()
        }
    }
}

/// How often the maintenance task creates partitions ahead and applies retention.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

/// The `ingest` role: the maintenance task (day partitions for today and the next two days,
/// retention), the rollup worker and, with a NATS URL, the JetStream workers. Runs until
/// `shutdown` turns true; failures are logged and retried, never returned.
pub async fn run(
    pool: PgPool,
    nats_url: Option<String>,
    args: IngestArgs,
    shutdown: watch::Receiver<bool>,
) {
    let maintenance = tokio::spawn(maintain(
        pool.clone(),
        args.telemetry_retention_days,
        shutdown.clone(),
    ));
    let rollups = tokio::spawn(rollup::run(pool.clone(), args.rollup(), shutdown.clone()));
    match nats_url {
        None => tracing::info!(
            retention_days = args.telemetry_retention_days,
            "the ingest role keeps telemetry partitions and retention; no NATS workers without NATS_URL"
        ),
        Some(url) => run_nats(pool, &url, args.nats(), shutdown).await,
    }
    let _ = maintenance.await;
    let _ = rollups.await;
}

/// Connects (retrying), sets up the stream and consumer (retrying), and runs the workers.
async fn run_nats(
    pool: PgPool,
    url: &str,
    config: nats::NatsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let (client, consumer) = loop {
        let attempt = async {
            let client = nats::connect(url).await?;
            let js = async_nats::jetstream::new(client.clone());
            let consumer = nats::setup(&js, &config).await?;
            Ok::<_, nats::NatsError>((client, consumer))
        };
        match attempt.await {
            Ok(ready) => break ready,
            Err(error) => {
                tracing::warn!(%error, "cannot set up the telemetry stream; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    };
    tracing::info!(
        stream = %config.stream,
        subjects = %format!("{}.>", config.subject_prefix),
        consumer = %config.consumer,
        workers = config.workers,
        "the NATS telemetry workers are running"
    );
    let workers: Vec<_> = (0..config.workers)
        .map(|_| {
            let worker = nats::Worker::new(
                pool.clone(),
                client.clone(),
                consumer.clone(),
                config.clone(),
            );
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let _ = client.drain().await;
}

/// Creates tomorrow's partitions ahead and applies retention, at start and then hourly.
pub async fn maintain(pool: PgPool, retention_days: u32, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        let wait = match maintain_once(&pool, retention_days).await {
            Ok(dropped) => {
                if dropped > 0 {
                    tracing::info!(
                        dropped_partitions = dropped,
                        retention_days,
                        "telemetry retention"
                    );
                }
                MAINTENANCE_EVERY
            }
            Err(error) => {
                tracing::warn!(%error, "telemetry maintenance failed; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// One round of maintenance: partitions for today and the next two days, then retention.
/// Returns how many partitions retention dropped.
pub async fn maintain_once(pool: &PgPool, retention_days: u32) -> Result<i32, sqlx::Error> {
    store::prepare_partitions(pool, Utc::now(), 2).await?;
    store::apply_retention(pool, retention_days).await
}
