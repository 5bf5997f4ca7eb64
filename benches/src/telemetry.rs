//! The telemetry scenario: simulated devices send readings over NATS JetStream, then over
//! HTTP batches, into a server running `--roles api,ingest`; each path is compared with a raw
//! binary COPY of the very rows it stored into a same-shaped table, in the same run.
//!
//! 1. `chronicle serve --roles api,ingest` with `NATS_URL` and a stream, subject prefix and
//!    consumer of this run only (`BENCH_TELEMETRY_<run>`, `bench.<run>.telemetry`,
//!    `bench-ingest-<run>`); the stream is deleted at the end (also on an error or Ctrl-C).
//! 2. `--devices` devices registered and activated over HTTP (one customer owns them all),
//!    each with its device credential.
//! 3. NATS: `--publishers` tasks, each on its own connection with a share of the devices,
//!    publish one reading per message (or, with `--readings-per-message N`, batches
//!    `{"readings": [...]}` of N readings of one device, as a gateway does) to
//!    `<prefix>.<device_id>` for `--duration` seconds,
//!    keeping `--in-flight` publishes unacknowledged; then the bench waits until the consumer
//!    has nothing pending or unacknowledged (the workers acknowledge after the commit). One more
//!    device is the probe: one reading every 10 ms, polled for in `telemetry` every 5 ms.
//! 4. HTTP: `--http-clients` clients post batches of 1,000 readings of one device (its
//!    credential) for `--duration` seconds; the 202's `accepted` counts.
//! 5. After each path, the rows it stored are copied out of `telemetry` (binary, untimed)
//!    and COPYed back, timed, into `bench_raw_telemetry` (`LIKE telemetry INCLUDING ALL`,
//!    partitioned by day like it, each day with the same `(device_id, seq)` unique index),
//!    `--copy-rows` rows per COPY statement, on `--raw-connections` connections.
//! 6. During each path, the rollup queue is sampled every 100 ms (the age of the oldest
//!    queued delta: how far the rollups are behind), and after it the bench waits until the
//!    rollup worker has applied every delta.

use crate::{
    cpu_line, cpu_sample, cpu_share, describe_setup, http_client, proc_ticks, stats_header,
    stats_row, wal_delta, wal_sample, Api, CpuSample, Ctx, Stats,
};
use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

/// HTTP readings use seqs from here on, so that the two paths' rows can be told apart.
const HTTP_SEQ_BASE: i64 = 1 << 40;
/// Readings per HTTP request.
const HTTP_BATCH: usize = 1_000;
/// One probe reading every this long.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// The probe poller's interval.
const PROBE_POLL: Duration = Duration::from_millis(5);
/// A probe not seen this long after its publish counts as a timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest wait for the ingest workers to drain the stream after publishing stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the load's consumers hold each batch before acknowledging it: about what an
/// ingest worker's write of a 2 MB batch took in the NATS phase (150-200 ms, from its batch
/// log), so that nats-server delivers and stores as it does for the ingest.
const LOAD_HOLD_MS: u64 = 170;

/// Names of this run on the shared NATS server.
#[derive(Clone)]
struct Names {
    url: String,
    stream: String,
    prefix: String,
    consumer: String,
}

/// Deletes the run's stream when dropped (on an error or Ctrl-C), unless already deleted.
struct StreamGuard {
    names: Names,
    deleted: bool,
}

async fn delete_stream(names: &Names) -> anyhow::Result<()> {
    let client = ingest::nats::connect(&names.url).await?;
    let js = async_nats::jetstream::new(client.clone());
    // A stream that was never created has nothing to delete.
    if js.get_stream(&names.stream).await.is_ok() {
        js.delete_stream(&names.stream)
            .await
            .map_err(|e| anyhow!("cannot delete stream {}: {e}", names.stream))?;
    }
    let _ = client.drain().await;
    Ok(())
}

impl StreamGuard {
    async fn delete(&mut self) {
        match tokio::time::timeout(Duration::from_secs(10), delete_stream(&self.names)).await {
            Ok(Ok(())) => eprintln!("telemetry: deleted NATS stream {}", self.names.stream),
            Ok(Err(e)) => eprintln!("telemetry: {e:#}"),
            Err(_) => eprintln!(
                "telemetry: could not delete NATS stream {} within 10 s",
                self.names.stream
            ),
        }
        self.deleted = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let names = self.names.clone();
        // Drop cannot await: a thread with its own runtime deletes the stream.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let r = tokio::time::timeout(Duration::from_secs(10), delete_stream(&names)).await;
                if !matches!(r, Ok(Ok(()))) {
                    eprintln!(
                        "telemetry: could not delete NATS stream {}; delete it by hand",
                        names.stream
                    );
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------------
// Readings

/// One reading as a device sends it: four metrics derived from `seq`. The metrics depend on
/// `seq` modulo 1,000 only, so their JSON is formatted once per value of that and reused:
/// the publishers, which share the machine with what they measure, spend their time sending
/// rather than formatting floats.
fn reading_json(out: &mut String, seq: i64, ts: &str) {
    static METRICS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let metrics = METRICS.get_or_init(|| {
        (0..1000i64)
            .map(|k| {
                format!(
                    "{{\"temp\":{:.2},\"humidity\":{:.1},\"battery\":{:.3},\"rssi\":{}}}",
                    15.0 + (k % 200) as f64 * 0.05,
                    40.0 + (k % 50) as f64 * 0.5,
                    3.0 + k as f64 / 1000.0,
                    -40 - (k % 50)
                )
            })
            .collect()
    });
    let k = seq.rem_euclid(1000) as usize;
    let _ = write!(
        out,
        "{{\"seq\":{seq},\"ts\":\"{ts}\",\"metrics\":{}}}",
        metrics[k]
    );
}

/// A batch `{"readings": [...]}` of `n` readings from `seq` on, all at `ts` (an HTTP body,
/// or a gateway's NATS message).
fn batch_json(out: &mut String, seq: i64, n: usize, ts: &str) {
    out.push_str("{\"readings\":[");
    for i in 0..n as i64 {
        if i > 0 {
            out.push(',');
        }
        reading_json(out, seq + i, ts);
    }
    out.push_str("]}");
}

/// A NATS message of `per_message` readings from `seq` on: the reading itself for one, a
/// batch for more.
pub(crate) fn message_json(out: &mut String, seq: i64, per_message: usize, ts: &str) {
    if per_message == 1 {
        reading_json(out, seq, ts);
    } else {
        batch_json(out, seq, per_message, ts);
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A device and its credential (`<device_id>.<secret>`).
#[derive(Clone)]
struct Device {
    id: Uuid,
    credential: String,
}

/// Opens an account for a customer and registers and activates `n` devices it owns.
async fn open_devices(
    ctx: &Ctx,
    api: &Api,
    n: usize,
    clients: usize,
) -> anyhow::Result<Vec<Device>> {
    let owner = Arc::new(ctx.token("bench-telemetry-owner", "customer")?);
    let account = json!({"email": format!("bench-telemetry-{}@example.com", ctx.run_id),
                         "display_name": "Bench device owner"});
    api.post("/v1/accounts", &owner, account.to_string())
        .await?
        .json()
        .context("opening the device owner's account")?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..clients.max(1) {
        let (api, owner, next, run) =
            (api.clone(), owner.clone(), next.clone(), ctx.run_id.clone());
        set.spawn(async move {
            let mut devices = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let body = json!({"serial": format!("BENCH-{run}-{i}"), "model": "Thermo 3",
                                  "firmware_version": "1.0.0"});
                let registered = api
                    .post("/v1/devices", &owner, body.to_string())
                    .await?
                    .json()
                    .context("registering a device")?;
                let id: Uuid = registered
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("no device id in {registered}"))?
                    .parse()?;
                let activated = api
                    .post(
                        &format!("/v1/devices/{id}/activate"),
                        &owner,
                        "{}".to_owned(),
                    )
                    .await?
                    .json()
                    .context("activating a device")?;
                let credential = activated
                    .get("credential")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("no credential in {activated}"))?
                    .to_owned();
                devices.push((i, Device { id, credential }));
            }
            anyhow::Ok(devices)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, d)| d).collect())
}

// ---------------------------------------------------------------------------------------------
// CPU of nats-server (shared with other users of the server: counted as "other" otherwise)

fn nats_server_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| proc_ticks(&pid))
        .filter(|(comm, _)| comm == "nats-server")
        .map(|(_, t)| t)
        .sum()
}

/// CPU, nats-server ticks and WAL at a moment.
struct Probe0 {
    cpu: Option<CpuSample>,
    nats: u64,
    wal: Option<(i64, i64)>,
}

impl Probe0 {
    async fn take(ctx: &Ctx, pid: u32) -> Self {
        let wal = wal_sample(&ctx.db_url).await;
        Self {
            cpu: cpu_sample(Some(pid)),
            nats: nats_server_ticks(),
            wal,
        }
    }

    /// Fills `stats.cpu` and `stats.wal`; returns nats-server's share of the machine.
    async fn finish(self, ctx: &Ctx, pid: u32, stats: &mut Stats) -> Option<f64> {
        let after = cpu_sample(Some(pid));
        let nats = nats_server_ticks();
        stats.cpu = cpu_share(&self.cpu, &after);
        stats.wal = wal_delta(self.wal, wal_sample(&ctx.db_url).await);
        let total = after
            .as_ref()?
            .total
            .checked_sub(self.cpu.as_ref()?.total)? as f64;
        (total > 0.0).then(|| nats.saturating_sub(self.nats) as f64 / total)
    }
}

fn print_cpu_wal(s: &Stats, rows: i64, nats: Option<f64>) {
    if let Some(line) = cpu_line(s) {
        println!("{line}");
    }
    if let Some(n) = nats {
        println!(
            "    of which nats-server {:.0}% (machine-wide: other users' traffic counts too)",
            n * 100.0
        );
    }
    if let Some((syncs, bytes)) = s.wal {
        let secs = s.elapsed.as_secs_f64();
        println!(
            "  WAL during \"{}\": {:.0} flushes/s, {:.1} MB = {:.0} bytes per reading",
            s.name,
            syncs as f64 / secs,
            bytes as f64 / 1e6,
            bytes as f64 / rows.max(1) as f64
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rollups: how far behind the raw readings the rollup worker is

/// The rollup queue during a phase and after it.
struct RollupReport {
    /// Age of the oldest queued delta, sampled every 100 ms (as latencies, microseconds).
    lag: Stats,
    /// The most readings waiting in the queue at a sample.
    max_queued: i64,
    /// From the end of the phase (the last reading committed) until the queue was empty.
    caught_up_after: Duration,
}

/// Samples the rollup queue every 100 ms until `stop` turns true.
async fn rollup_sampler(
    db_url: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(Stats, i64)> {
    let mut c = PgConnection::connect(&db_url).await?;
    let mut lag = Stats::new("rollup lag");
    let mut max_queued = 0i64;
    let start = Instant::now();
    while !*stop.borrow() {
        let (age_ms, queued): (f64, i64) = sqlx::query_as(
            "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(queued_at))::float8 * 1000, 0), \
                    coalesce(sum(readings), 0)::int8 FROM telemetry_rollup_queue",
        )
        .fetch_one(&mut c)
        .await?;
        lag.latencies_us.push((age_ms.max(0.0) * 1000.0) as u64);
        max_queued = max_queued.max(queued);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => {}
        }
    }
    lag.finish(start.elapsed());
    let _ = c.close().await;
    Ok((lag, max_queued))
}

/// Started at the beginning of a phase: samples until [`RollupWatch::finish`].
struct RollupWatch {
    stop: tokio::sync::watch::Sender<bool>,
    sampler: tokio::task::JoinHandle<anyhow::Result<(Stats, i64)>>,
}

impl RollupWatch {
    fn start(db_url: &str) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(rollup_sampler(db_url.to_owned(), stopped));
        Self { stop, sampler }
    }

    /// Waits until the queue is empty (`ended`: when the phase's last reading was committed).
    async fn finish(self, db_url: &str, ended: Instant) -> anyhow::Result<RollupReport> {
        let mut c = PgConnection::connect(db_url).await?;
        loop {
            let empty: bool =
                sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM telemetry_rollup_queue)")
                    .fetch_one(&mut c)
                    .await?;
            if empty {
                break;
            }
            if ended.elapsed() > DRAIN_TIMEOUT {
                bail!("the rollup worker did not empty its queue");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let caught_up_after = ended.elapsed();
        let _ = c.close().await;
        let _ = self.stop.send(true);
        let (lag, max_queued) = self.sampler.await??;
        Ok(RollupReport {
            lag,
            max_queued,
            caught_up_after,
        })
    }
}

fn print_rollups(r: &RollupReport) {
    println!(
        "  rollups (applied behind the writers): age of the oldest queued delta, sampled every \
         100 ms: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples); at most {} readings \
         queued; queue empty {:.2} s after the last reading was committed",
        r.lag.quantile_ms(0.5),
        r.lag.quantile_ms(0.99),
        r.lag.max_ms(),
        r.lag.latencies_us.len(),
        r.max_queued,
        r.caught_up_after.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// NATS

struct Published {
    /// The last seq published of each device that published any.
    last: Vec<(Uuid, i64)>,
    /// Messages acknowledged by JetStream (each carries `per_message` readings).
    acked: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Publishes readings of `devices` round-robin until `stop_at`, `in_flight` acks outstanding:
/// one reading per message, or (`per_message` > 1, a gateway) batches `{"readings": [...]}`
/// of `per_message` readings of one device. `rate` counts readings. With `zstd` (a level),
/// each payload is sent as one zstd frame with `Content-Encoding: zstd`.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    url: String,
    prefix: String,
    devices: Vec<Uuid>,
    start: Instant,
    stop_at: Instant,
    rate: f64,
    in_flight: usize,
    msg_id: bool,
    per_message: usize,
    zstd: Option<i32>,
    backlog: Backlog,
) -> anyhow::Result<Published> {
    let mut compressor = zstd.map(zstd::bulk::Compressor::new).transpose()?;
    let client = ingest::nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let subjects: Vec<async_nats::Subject> = devices
        .iter()
        .map(|d| async_nats::Subject::from(format!("{prefix}.{d}")))
        .collect();
    let mut seqs = vec![0i64; devices.len()];
    let mut pending = VecDeque::with_capacity(in_flight);
    let mut out = Published {
        last: Vec::new(),
        acked: 0,
        errors: 0,
        first_error: None,
    };
    let note = |out: &mut Published, e: String| {
        out.errors += 1;
        if out.first_error.is_none() {
            out.first_error = Some(e);
        }
    };
    let mut sent = 0u64;
    let mut k = 0usize;
    let per_message = per_message.max(1);
    let mut payload = String::with_capacity(160 * per_message + 16);
    loop {
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        if (rate > 0.0 && sent as f64 >= (now - start).as_secs_f64() * rate) || backlog.full() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        if pending.len() >= in_flight {
            if let Some(ack) = pending.pop_front() {
                match ack.await {
                    Ok(_) => out.acked += 1,
                    Err(e) => note(&mut out, format!("publish ack: {e}")),
                }
            }
        }
        let d = k % devices.len();
        k += 1;
        let seq = seqs[d];
        seqs[d] += per_message as i64;
        payload.clear();
        message_json(&mut payload, seq, per_message, &now_rfc3339());
        let body: Vec<u8> = match compressor.as_mut() {
            Some(c) => c.compress(payload.as_bytes())?,
            None => payload.as_bytes().to_vec(),
        };
        let r = if msg_id || compressor.is_some() {
            let mut headers = async_nats::HeaderMap::new();
            if msg_id {
                headers.insert("Nats-Msg-Id", format!("{}:{seq}", devices[d]).as_str());
            }
            if compressor.is_some() {
                headers.insert(ingest::nats::CONTENT_ENCODING, ingest::nats::ZSTD);
            }
            js.publish_with_headers(subjects[d].clone(), headers, body.into())
                .await
        } else {
            js.publish(subjects[d].clone(), body.into()).await
        };
        match r {
            Ok(ack) => pending.push_back(ack),
            Err(e) => note(&mut out, format!("publish: {e}")),
        }
        sent += per_message as u64;
    }
    while let Some(ack) = pending.pop_front() {
        match ack.await {
            Ok(_) => out.acked += 1,
            Err(e) => note(&mut out, format!("publish ack: {e}")),
        }
    }
    let _ = client.flush().await;
    out.last = devices
        .iter()
        .zip(&seqs)
        .filter(|(_, s)| **s > 0)
        .map(|(d, s)| (*d, s - 1))
        .collect();
    Ok(out)
}

/// Probe lags (publish to first poll finding the reading committed), in microseconds.
struct ProbeOut {
    lags: Stats,
    timeouts: u64,
    sent: u64,
}

/// Publishes one reading of `device` every [`PROBE_EVERY`] until `stop_at` and hands
/// `(seq, publish instant)` to the poller.
async fn probe_publisher(
    url: String,
    subject: String,
    stop_at: Instant,
    seen: mpsc::UnboundedSender<(i64, Instant)>,
) -> anyhow::Result<u64> {
    let client = ingest::nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0i64;
    let mut payload = String::new();
    while Instant::now() < stop_at {
        tick.tick().await;
        payload.clear();
        let at = Instant::now();
        reading_json(&mut payload, seq, &now_rfc3339());
        let ack = js
            .publish(subject.clone(), payload.as_bytes().to_vec().into())
            .await
            .map_err(|e| anyhow!("probe publish: {e}"))?;
        ack.await.map_err(|e| anyhow!("probe publish ack: {e}"))?;
        let _ = seen.send((seq, at));
        seq += 1;
    }
    Ok(seq as u64)
}

/// Polls `telemetry` every [`PROBE_POLL`] for the probe's readings until the publisher
/// is done and every reading has been seen (or timed out).
async fn probe_poller(
    db_url: String,
    device: Uuid,
    mut published: mpsc::UnboundedReceiver<(i64, Instant)>,
) -> anyhow::Result<ProbeOut> {
    let mut c = PgConnection::connect(&db_url).await?;
    let mut pending: BTreeMap<i64, Instant> = BTreeMap::new();
    let mut out = ProbeOut {
        lags: Stats::new("probe readings"),
        timeouts: 0,
        sent: 0,
    };
    let mut open = true;
    let start = Instant::now();
    while open || !pending.is_empty() {
        loop {
            match published.try_recv() {
                Ok((seq, at)) => {
                    pending.insert(seq, at);
                    out.sent += 1;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            let seqs: Vec<i64> = pending.keys().copied().collect();
            let found: Vec<i64> = sqlx::query_scalar(
                "SELECT seq FROM telemetry WHERE device_id = $1 AND seq = ANY($2)",
            )
            .bind(device)
            .bind(&seqs)
            .fetch_all(&mut c)
            .await?;
            let now = Instant::now();
            for seq in found {
                if let Some(at) = pending.remove(&seq) {
                    out.lags.latencies_us.push((now - at).as_micros() as u64);
                }
            }
            pending.retain(|_, at| {
                let keep = now - *at < PROBE_TIMEOUT;
                if !keep {
                    out.timeouts += 1;
                }
                keep
            });
        }
        tokio::time::sleep(PROBE_POLL).await;
    }
    out.lags.finish(start.elapsed());
    let _ = c.close().await;
    Ok(out)
}

struct NatsReport {
    publishers: usize,
    /// Readings acknowledged by JetStream (probes included).
    published: u64,
    /// Messages acknowledged by JetStream (probes included).
    messages: u64,
    publish_errors: u64,
    first_error: Option<String>,
    publish_took: Duration,
    /// First publish to the moment the consumer had nothing pending or unacknowledged.
    end_to_end: Duration,
    committed: i64,
    committed_while_publishing: i64,
    backlog_at_stop: Option<u64>,
    /// The largest backlog (messages) read while publishing.
    most_backlog: u64,
    /// received_at - ts over every reading: p50, p90, p99, max (ms).
    written_lag_ms: (f64, f64, f64, f64),
    probes: ProbeOut,
    stats: Stats,
    nats_cpu: Option<f64>,
    rollups: RollupReport,
}

/// The consumer's backlog as last read (messages pending or unacknowledged), against the
/// limit in messages (`u64::MAX`: none).
#[derive(Clone)]
struct Backlog {
    messages: Arc<AtomicU64>,
    limit: u64,
}

impl Backlog {
    fn unlimited() -> Self {
        Backlog {
            messages: Arc::new(AtomicU64::new(0)),
            limit: u64::MAX,
        }
    }

    fn full(&self) -> bool {
        self.messages.load(Ordering::Relaxed) >= self.limit
    }
}

/// Reads the consumer's backlog into `backlog` every 100 ms until `stop_at`; returns the
/// largest seen.
async fn watch_backlog(
    js: async_nats::jetstream::Context,
    names: Names,
    backlog: Backlog,
    stop_at: Instant,
) -> u64 {
    let mut most = 0;
    while Instant::now() < stop_at {
        if let Ok(i) = consumer_info(&js, &names).await {
            let n = i.num_pending + i.num_ack_pending as u64;
            most = most.max(n);
            backlog.messages.store(n, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    most
}

async fn consumer_info(
    js: &async_nats::jetstream::Context,
    names: &Names,
) -> anyhow::Result<async_nats::jetstream::consumer::Info> {
    let stream = js
        .get_stream(&names.stream)
        .await
        .map_err(|e| anyhow!("stream {}: {e}", names.stream))?;
    stream
        .consumer_info(&names.consumer)
        .await
        .map_err(|e| anyhow!("consumer {}: {e}", names.consumer))
}

async fn run_nats(
    ctx: &Ctx,
    server_pid: u32,
    names: &Names,
    devices: &[Device],
) -> anyhow::Result<NatsReport> {
    let a = &ctx.args;
    let duration = Duration::from_secs(a.duration.max(1));
    let client = ingest::nats::connect(&names.url).await?;
    let js = async_nats::jetstream::new(client.clone());
    // The server creates the stream and the consumer when its ingest role starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer_info(&js, names).await.is_err() {
        if Instant::now() > deadline {
            bail!(
                "the server did not create stream {} and consumer {} within 60 s",
                names.stream,
                names.consumer
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (probe, load) = devices.split_first().ok_or_else(|| anyhow!("no devices"))?;
    let shares = publisher_shares(devices, a.publishers);
    let p = shares.len();
    let rate = a.nats_rate as f64 / p as f64;
    let per_message = a.readings_per_message as usize;

    sqlx::query("CHECKPOINT")
        .execute(&mut PgConnection::connect(&ctx.db_url).await?)
        .await?;
    eprintln!(
        "nats: {p} publishers ({} in flight each{}, {per_message} readings per message{}) over {} \
         devices for {} s, probe on {}",
        a.in_flight,
        if a.nats_rate > 0 {
            format!(", {} readings/s in all", a.nats_rate)
        } else {
            String::new()
        },
        a.zstd
            .map(|l| format!(", zstd level {l}"))
            .unwrap_or_default(),
        load.len(),
        duration.as_secs(),
        probe.id
    );
    let before = Probe0::take(ctx, server_pid).await;
    let rollups = RollupWatch::start(&ctx.db_url);
    let start = Instant::now();
    let stop_at = start + duration;
    let (tx, rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(probe_poller(ctx.db_url.clone(), probe.id, rx));
    let prober = tokio::spawn(probe_publisher(
        names.url.clone(),
        format!("{}.{}", names.prefix, probe.id),
        stop_at,
        tx,
    ));
    let backlog = Backlog {
        limit: match a.max_backlog {
            0 => u64::MAX,
            n => n.div_ceil(per_message as u64),
        },
        ..Backlog::unlimited()
    };
    let watcher = tokio::spawn(watch_backlog(
        js.clone(),
        names.clone(),
        backlog.clone(),
        stop_at,
    ));
    let mut set = JoinSet::new();
    for share in shares {
        set.spawn(publisher(
            names.url.clone(),
            names.prefix.clone(),
            share,
            start,
            stop_at,
            rate,
            a.in_flight,
            a.nats_msg_id,
            per_message,
            a.zstd,
            backlog.clone(),
        ));
    }
    let mut messages = 0u64;
    let mut publish_errors = 0u64;
    let mut first_error = None;
    let mut last: Vec<(Uuid, i64)> = Vec::new();
    while let Some(r) = set.join_next().await {
        let r = r??;
        last.extend(r.last);
        messages += r.acked;
        publish_errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let probes_sent = prober.await??;
    let most_backlog = watcher.await?;
    let published = messages * per_message as u64;
    let publish_took = start.elapsed();
    let wall_stop: DateTime<Utc> = Utc::now();
    let backlog_at_stop = consumer_info(&js, names)
        .await
        .ok()
        .map(|i| i.num_pending + i.num_ack_pending as u64);
    eprintln!(
        "nats: {published} readings in {messages} messages published in {:.1} s ({:.0}/s), \
         {publish_errors} errors; backlog {backlog_at_stop:?} messages; waiting for the workers",
        publish_took.as_secs_f64(),
        published as f64 / publish_took.as_secs_f64()
    );
    if probes_sent > 0 {
        last.push((probe.id, probes_sent as i64 - 1));
    }
    // Drained: the consumer has nothing pending or unacknowledged (asked every 100 ms: the
    // workers acknowledge after the commit; each consumer info costs nats-server CPU), then the last reading of every device is found
    // committed (key look-ups, polled every 10 ms), then the exact count. Workers may commit
    // out of order, so the count may still be short: then it is polled until right. The key
    // look-ups are forced onto the (device_id, seq) indexes: the partitions are never analyzed
    // here (autovacuum off), and a hash join over every stored reading took seconds per poll
    // once millions were stored, competing with the workers for PostgreSQL.
    let expected = published + probes_sent;
    let (ids, seqs): (Vec<Uuid>, Vec<i64>) = last.into_iter().unzip();
    let mut c = PgConnection::connect(&ctx.db_url).await?;
    let mut last_note = Instant::now();
    loop {
        match consumer_info(&js, names).await {
            Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 => break,
            Ok(i) if last_note.elapsed() > Duration::from_secs(10) => {
                eprintln!(
                    "nats: {} messages pending, {} unacknowledged",
                    i.num_pending, i.num_ack_pending
                );
                last_note = Instant::now();
            }
            _ => {}
        }
        if start.elapsed() > duration + DRAIN_TIMEOUT {
            bail!("the ingest workers did not drain the consumer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::raw_sql(
        "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
    )
    .execute(&mut c)
    .await?;
    loop {
        let found: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM telemetry s \
             JOIN UNNEST($1::uuid[], $2::int8[]) k(d, q) ON s.device_id = k.d AND s.seq = k.q",
        )
        .bind(&ids)
        .bind(&seqs)
        .fetch_one(&mut c)
        .await?;
        if found == ids.len() as i64 {
            break;
        }
        if start.elapsed() > duration + DRAIN_TIMEOUT {
            bail!(
                "the ingest workers did not store the last readings: {found} of {} devices",
                ids.len()
            );
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "nats: last readings of {found} of {} devices stored",
                ids.len()
            );
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::raw_sql("RESET ALL").execute(&mut c).await?;
    let mut end_to_end = start.elapsed();
    let mut counts = 0;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry")
            .fetch_one(&mut c)
            .await?;
        counts += 1;
        if n >= expected as i64 {
            break;
        }
        if start.elapsed() > duration + DRAIN_TIMEOUT {
            bail!("only {n} of {expected} readings stored");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if counts > 1 {
        end_to_end = start.elapsed();
    }
    let drained = Instant::now();
    let mut stats = Stats::new("NATS readings (end to end)");
    stats.elapsed = end_to_end;
    let nats_cpu = before.finish(ctx, server_pid, &mut stats).await;
    let rollups = rollups.finish(&ctx.db_url, drained).await?;
    let probes = poller.await??;
    let _ = client.drain().await;

    let (committed, committed_while_publishing): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(*) FILTER (WHERE received_at < $1) FROM telemetry \
         WHERE seq < {HTTP_SEQ_BASE}"
    ))
    .bind(wall_stop)
    .fetch_one(&mut c)
    .await?;
    let lag: (Option<Vec<f64>>, Option<f64>) = sqlx::query_as(&format!(
        "SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY x), max(x) FROM \
         (SELECT extract(epoch FROM received_at - ts)::float8 * 1000 AS x FROM telemetry \
          WHERE seq < {HTTP_SEQ_BASE}) q"
    ))
    .fetch_one(&mut c)
    .await?;
    let q = lag.0.unwrap_or_default();
    let at = |i: usize| q.get(i).copied().unwrap_or(f64::NAN);
    let _ = c.close().await;
    if committed != expected as i64 {
        eprintln!(
            "nats: WARNING {committed} readings stored, {expected} publishes acknowledged \
             (an ack lost after the store counts as an error but is stored)"
        );
    }
    Ok(NatsReport {
        publishers: p,
        published: expected,
        messages: messages + probes_sent,
        publish_errors,
        first_error,
        publish_took,
        end_to_end,
        committed,
        committed_while_publishing,
        backlog_at_stop,
        most_backlog,
        written_lag_ms: (at(0), at(1), at(2), lag.1.unwrap_or(f64::NAN)),
        probes,
        stats,
        nats_cpu,
        rollups,
    })
}

// ---------------------------------------------------------------------------------------------
// The NATS floor: JetStream alone, no database (BENCH_TELEMETRY_NATS_FLOOR=1)

/// How the floor's consumer acknowledges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FloorAck {
    /// Every message (as the ingest workers do), pull consumer with explicit acks.
    Each,
    /// The last message of every 1,000 (and of each pause), one pull consumer with AckAll.
    All,
}

struct FloorReport {
    ack: FloorAck,
    /// Readings per message; `published` and `consumed` count messages.
    per_message: usize,
    published: u64,
    publish_took: Duration,
    consumed: u64,
    /// AckAll: messages the consumer never handed over (a later acknowledgement covered
    /// them, so the server never sent them again).
    skipped: u64,
    /// Deliveries of a message seen before.
    redelivered: u64,
    /// Times the consumers' connection was lost (and made again).
    disconnects: u64,
    end_to_end: Duration,
    stats: Stats,
    nats_cpu: Option<f64>,
}

/// The same publishers as the NATS phase, into a stream of its own shaped like the ingest's,
/// consumed by two tasks (one with AckAll) that parse each reading (`ingest::reading::parse`)
/// and acknowledge it, writing nothing: what JetStream, the publishers and the parsing cost on
/// this machine without the database.
async fn run_nats_floor(
    ctx: &Ctx,
    server_pid: u32,
    url: &str,
    devices: &[Device],
    ack: FloorAck,
) -> anyhow::Result<FloorReport> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let a = &ctx.args;
    let tag = format!(
        "{}{}",
        ctx.run_id,
        if ack == FloorAck::All { "all" } else { "each" }
    );
    let (config, mut guard) = side_stream(url, &tag, "floor");
    let names = guard.names.clone();
    // Each loss of the connection (nats-server closing it as a slow consumer, say).
    let disconnects = Arc::new(AtomicU64::new(0));
    let client = {
        let disconnects = disconnects.clone();
        let options = async_nats::ConnectOptions::new().event_callback(move |event| {
            if matches!(event, async_nats::Event::Disconnected) {
                disconnects.fetch_add(1, Ordering::Relaxed);
            }
            async {}
        });
        ingest::nats::connect_with(url, options).await?
    };
    let js = async_nats::jetstream::new(client.clone());
    let consumer = match ack {
        FloorAck::Each => ingest::nats::setup(&js, &config).await?,
        FloorAck::All => {
            ingest::nats::setup(&js, &config).await?;
            let stream = js.get_stream(&config.stream).await?;
            let _ = stream.delete_consumer(&config.consumer).await;
            stream
                .create_consumer(pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::All,
                    ack_wait: config.ack_wait,
                    max_ack_pending: 80_000,
                    ..Default::default()
                })
                .await?
        }
    };
    let load = devices.get(1..).unwrap_or_default();
    let shares = publisher_shares(devices, a.publishers);
    let p = shares.len();
    let duration = Duration::from_secs(a.duration.max(1));
    let consumed = Arc::new(AtomicUsize::new(0));
    // The highest stream sequence a consumer has seen: the stream is this phase's own, so
    // every published message is at or below the published count.
    let highest = Arc::new(AtomicU64::new(0));
    // The stream sequences seen (`consumed` counts them) and every delivery, redeliveries too.
    let seen = Arc::new(std::sync::Mutex::new(HashSet::<u64>::new()));
    let deliveries = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers = if ack == FloorAck::All { 1 } else { 2 };
    let mut consumers = JoinSet::new();
    for _ in 0..readers {
        let (consumer, consumed, highest, seen, deliveries, prefix, mut stop, config) = (
            consumer.clone(),
            consumed.clone(),
            highest.clone(),
            seen.clone(),
            deliveries.clone(),
            format!("{}.", config.subject_prefix),
            stop_rx.clone(),
            config.clone(),
        );
        consumers.spawn(async move {
            // As the workers pull (bounded in bytes: a pull of 10,000 gateway batches, 117 MB,
            // overflowed nats-server's buffer for the client, which closed the connection).
            let mut messages = ingest::nats::pull(&consumer, &config).await?;
            let mut unacked: Option<async_nats::jetstream::Message> = None;
            let mut n = 0u64;
            loop {
                let next = tokio::select! {
                    m = tokio::time::timeout(Duration::from_millis(20), messages.next()) => m,
                    _ = stop.changed() => break,
                };
                let msg = match next {
                    Ok(Some(m)) => m.map_err(|e| anyhow!("floor pull: {e}"))?,
                    Ok(None) => break,
                    Err(_) => {
                        if let Some(m) = unacked.take() {
                            m.ack().await.map_err(|e| anyhow!("floor ack: {e}"))?;
                        }
                        continue;
                    }
                };
                let device = msg
                    .subject
                    .as_str()
                    .strip_prefix(prefix.as_str())
                    .and_then(|d| Uuid::try_parse(d).ok())
                    .unwrap_or_default();
                let now = Utc::now();
                match ingest::reading::parse_message_shared(&msg.payload) {
                    Ok(ingest::reading::WireMessage::One(w)) => {
                        let _ = ingest::reading::check(w, device, now);
                    }
                    Ok(ingest::reading::WireMessage::Batch(ws)) => {
                        for w in ws {
                            let _ = ingest::reading::check(w, device, now);
                        }
                    }
                    Err(_) => {}
                }
                n += 1;
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                highest.fetch_max(seq, Ordering::Relaxed);
                deliveries.fetch_add(1, Ordering::Relaxed);
                // A redelivery is counted once.
                if seen.lock().map(|mut s| s.insert(seq)).unwrap_or(false) {
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
                match ack {
                    FloorAck::Each => msg.ack().await.map_err(|e| anyhow!("floor ack: {e}"))?,
                    FloorAck::All if n.is_multiple_of(1000) => {
                        unacked = None;
                        msg.ack().await.map_err(|e| anyhow!("floor ack: {e}"))?;
                    }
                    FloorAck::All => unacked = Some(msg),
                }
            }
            anyhow::Ok(())
        });
    }
    eprintln!(
        "floor ({}): {p} publishers over {} devices for {} s, no database",
        if ack == FloorAck::All {
            "AckAll"
        } else {
            "explicit acks"
        },
        load.len(),
        duration.as_secs()
    );
    let before = Probe0::take(ctx, server_pid).await;
    let start = Instant::now();
    let stop_at = start + duration;
    let mut set = side_publishers(ctx, url, &names.prefix, shares, start, stop_at, 0.0);
    let mut published = 0u64;
    while let Some(r) = set.join_next().await {
        published += r??.acked;
    }
    let publish_took = start.elapsed();
    // With explicit acks every message is handed over at last (one not acknowledged comes
    // again after the ack wait). With AckAll a message the consumer never got is covered by
    // a later acknowledgement and never sent again: there the phase ends once the last
    // published message has been seen and nothing new came for a second, and the summary
    // says how many were never seen.
    let mut last = (0usize, Instant::now());
    loop {
        let now = consumed.load(Ordering::Relaxed);
        if now as u64 >= published {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if ack == FloorAck::All
            && highest.load(Ordering::Relaxed) >= published
            && last.1.elapsed() > Duration::from_secs(1)
        {
            break;
        }
        if start.elapsed() > duration + DRAIN_TIMEOUT {
            bail!("the floor consumers did not get every message");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end_to_end = start.elapsed();
    let mut stats = Stats::new(if ack == FloorAck::All {
        "NATS floor, AckAll"
    } else {
        "NATS floor, explicit acks"
    });
    stats.elapsed = end_to_end;
    let nats_cpu = before.finish(ctx, server_pid, &mut stats).await;
    let _ = stop_tx.send(true);
    while let Some(r) = consumers.join_next().await {
        r??;
    }
    let _ = client.drain().await;
    guard.delete().await;
    Ok(FloorReport {
        ack,
        per_message: a.readings_per_message as usize,
        published,
        publish_took,
        consumed: consumed.load(Ordering::Relaxed) as u64,
        skipped: published.saturating_sub(consumed.load(Ordering::Relaxed) as u64),
        redelivered: deliveries
            .load(Ordering::Relaxed)
            .saturating_sub(consumed.load(Ordering::Relaxed) as u64),
        disconnects: disconnects.load(Ordering::Relaxed),
        end_to_end,
        stats,
        nats_cpu,
    })
}

fn print_floor(f: &FloorReport) {
    println!();
    println!(
        "NATS floor ({}): the same publishers, consumed by {} parsing and \
         acknowledging every reading, no database",
        if f.ack == FloorAck::All {
            "one pull consumer with AckAll, an ack per 1,000 messages"
        } else {
            "two pull consumers with explicit acks, an ack per message"
        },
        if f.ack == FloorAck::All {
            "one task"
        } else {
            "two tasks"
        }
    );
    println!(
        "  published {} messages in {:.2} s = {:.0}/s; consumed {} by {:.2} s = {:.0} \
         messages/s end to end = {:.0} readings/s ({} per message)",
        f.published,
        f.publish_took.as_secs_f64(),
        f.published as f64 / f.publish_took.as_secs_f64(),
        f.consumed,
        f.end_to_end.as_secs_f64(),
        f.consumed as f64 / f.end_to_end.as_secs_f64(),
        (f.consumed * f.per_message as u64) as f64 / f.end_to_end.as_secs_f64(),
        f.per_message
    );
    if f.skipped > 0 {
        println!(
            "  {} messages never reached the consumer (covered by a later AckAll \
             acknowledgement, so never sent again)",
            f.skipped
        );
    }
    if f.redelivered > 0 {
        println!(
            "  {} deliveries were of messages seen before",
            f.redelivered
        );
    }
    if f.disconnects > 0 {
        println!(
            "  the consumers' connection was lost {} times (nats-server closes a client whose \
             unread data exceeds its max_pending; what was in flight comes again only after \
             the ack wait, or never with AckAll)",
            f.disconnects
        );
    }
    print_cpu_wal(
        &f.stats,
        (f.consumed * f.per_message as u64) as i64,
        f.nats_cpu,
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct HttpReport {
    requests: Stats,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    nats_cpu: Option<f64>,
    rollups: RollupReport,
}

async fn run_http(
    ctx: &Ctx,
    server: &crate::Server,
    devices: &[Device],
) -> anyhow::Result<HttpReport> {
    let a = &ctx.args;
    let duration = Duration::from_secs(a.duration.max(1));
    let load = devices.get(1..).unwrap_or_default();
    let n = a.http_clients.max(1).min(load.len());
    let api = Api {
        client: http_client(n)?,
        base: server.base.clone(),
    };
    sqlx::query("CHECKPOINT")
        .execute(&mut PgConnection::connect(&ctx.db_url).await?)
        .await?;
    eprintln!(
        "http: {n} clients posting {HTTP_BATCH} readings per request for {} s",
        duration.as_secs()
    );
    let before = Probe0::take(ctx, server.pid()).await;
    let rollups = RollupWatch::start(&ctx.db_url);
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = JoinSet::new();
    for i in 0..n {
        let api = api.clone();
        let mine: Vec<Device> = load.iter().skip(i).step_by(n).cloned().collect();
        set.spawn(async move {
            let mut stats = Stats::default();
            let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
            let mut next = vec![HTTP_SEQ_BASE; mine.len()];
            let mut k = 0usize;
            let mut body = String::with_capacity(HTTP_BATCH * 130);
            while Instant::now() < deadline {
                let d = k % mine.len();
                k += 1;
                body.clear();
                batch_json(&mut body, next[d], HTTP_BATCH, &now_rfc3339());
                next[d] += HTTP_BATCH as i64;
                let t0 = Instant::now();
                let r = api
                    .client
                    .post(format!("{}/v1/telemetry", api.base))
                    .header(
                        reqwest::header::AUTHORIZATION,
                        format!("Device {}", mine[d].credential),
                    )
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .context("POST /v1/telemetry")?;
                let status = r.status().as_u16();
                let bytes = r.bytes().await?;
                let us = t0.elapsed().as_micros() as u64;
                if status != 202 {
                    stats.error(format!("{status} {}", String::from_utf8_lossy(&bytes)));
                    continue;
                }
                let v: Value = serde_json::from_slice(&bytes)?;
                let count = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                accepted += count("accepted");
                duplicates += count("duplicates");
                let refused = v
                    .get("rejected")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                if refused > 0 {
                    rejected += refused as u64;
                    stats.error(format!("rejected readings: {}", v["rejected"]));
                }
                stats.latencies_us.push(us);
            }
            anyhow::Ok((stats, accepted, duplicates, rejected))
        });
    }
    let mut requests = Stats::new("HTTP requests (1,000 readings)");
    let (mut accepted, mut duplicates, mut rejected) = (0, 0, 0);
    while let Some(r) = set.join_next().await {
        let (s, acc, dup, rej) = r??;
        requests.merge(s);
        accepted += acc;
        duplicates += dup;
        rejected += rej;
    }
    requests.finish(start.elapsed());
    let ended = Instant::now();
    let nats_cpu = before.finish(ctx, server.pid(), &mut requests).await;
    let rollups = rollups.finish(&ctx.db_url, ended).await?;
    eprintln!(
        "http: {} requests, {accepted} readings accepted in {:.1} s ({:.0}/s), {} errors",
        requests.latencies_us.len(),
        requests.elapsed.as_secs_f64(),
        accepted as f64 / requests.elapsed.as_secs_f64(),
        requests.errors
    );
    Ok(HttpReport {
        requests,
        accepted,
        duplicates,
        rejected,
        nats_cpu,
        rollups,
    })
}

// ---------------------------------------------------------------------------------------------
// The raw baseline: binary COPY of the same rows

const RAW_COPY_SQL: &str = "COPY bench_raw_telemetry (device_id, seq, ts, metrics, received_at) \
                            FROM STDIN (FORMAT binary)";
const COPY_TRAILER: [u8; 2] = [0xff, 0xff];

struct RawReport {
    rows: i64,
    statements: usize,
    stats: Stats,
    nats_cpu: Option<f64>,
}

/// Splits a binary COPY stream into its header and runs of `per` tuples (byte ranges).
fn split_copy(data: &[u8], per: usize) -> anyhow::Result<(usize, Vec<(usize, usize)>)> {
    let be32 = |at: usize| -> anyhow::Result<i32> {
        let b = data
            .get(at..at + 4)
            .ok_or_else(|| anyhow!("truncated COPY data at {at}"))?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if data.get(..11) != Some(b"PGCOPY\n\xff\r\n\0".as_slice()) {
        bail!("not a binary COPY stream");
    }
    let ext = usize::try_from(be32(15)?)?;
    let header = 19 + ext;
    let mut runs = Vec::new();
    let (mut at, mut run_start, mut in_run) = (header, header, 0usize);
    loop {
        let b = data
            .get(at..at + 2)
            .ok_or_else(|| anyhow!("truncated COPY data at {at}"))?;
        let fields = i16::from_be_bytes([b[0], b[1]]);
        if fields == -1 {
            break;
        }
        at += 2;
        for _ in 0..fields {
            let len = be32(at)?;
            at += 4 + usize::try_from(len.max(0))?;
        }
        in_run += 1;
        if in_run == per {
            runs.push((run_start, at));
            run_start = at;
            in_run = 0;
        }
    }
    if in_run > 0 {
        runs.push((run_start, at));
    }
    Ok((header, runs))
}

async fn run_raw_copy(
    ctx: &Ctx,
    server_pid: u32,
    filter: &str,
    name: &str,
) -> anyhow::Result<RawReport> {
    let a = &ctx.args;
    let mut c = PgConnection::connect(&ctx.db_url).await?;
    sqlx::query("DROP TABLE IF EXISTS bench_raw_telemetry")
        .execute(&mut c)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_raw_telemetry (LIKE telemetry INCLUDING ALL) PARTITION BY RANGE (ts)",
    )
    .execute(&mut c)
    .await?;
    let (lo, hi): (Option<NaiveDate>, Option<NaiveDate>) = sqlx::query_as(&format!(
        "SELECT min(ts AT TIME ZONE 'UTC')::date, max(ts AT TIME ZONE 'UTC')::date \
         FROM telemetry WHERE {filter}"
    ))
    .fetch_one(&mut c)
    .await?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        bail!("no rows to copy ({filter})");
    };
    let mut day = lo;
    while day <= hi {
        let next = day.succ_opt().ok_or_else(|| anyhow!("date overflow"))?;
        let part = format!("bench_raw_telemetry_p{}", day.format("%Y%m%d"));
        sqlx::query(&format!(
            "CREATE TABLE {part} PARTITION OF bench_raw_telemetry \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')"
        ))
        .execute(&mut c)
        .await?;
        // The same key as telemetry's day partitions (made per partition, so LIKE does not
        // copy it): the COPY pays for it as the ingest does.
        sqlx::query(&format!(
            "CREATE UNIQUE INDEX {part}_key ON {part} (device_id, seq)"
        ))
        .execute(&mut c)
        .await?;
        day = next;
    }
    // The rows, exactly as stored, in PostgreSQL's binary format (not timed).
    let mut data = Vec::new();
    {
        let mut out = c
            .copy_out_raw(&format!(
                "COPY (SELECT device_id, seq, ts, metrics, received_at FROM telemetry \
                 WHERE {filter}) TO STDOUT (FORMAT binary)"
            ))
            .await?;
        while let Some(chunk) = out.try_next().await? {
            data.extend_from_slice(&chunk);
        }
    }
    let (header, runs) = split_copy(&data, a.copy_rows.max(1))?;
    let data = Arc::new(data);
    let runs = Arc::new(runs);
    let mut conns = Vec::with_capacity(a.raw_connections);
    for _ in 0..a.raw_connections.max(1) {
        conns.push(PgConnection::connect(&ctx.db_url).await?);
    }
    sqlx::query("CHECKPOINT").execute(&mut c).await?;
    eprintln!(
        "raw: COPY of {} MB in {} statements on {} connections ({name})",
        data.len() / 1_000_000,
        runs.len(),
        conns.len()
    );
    let before = Probe0::take(ctx, server_pid).await;
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for mut conn in conns {
        let (data, runs, next) = (data.clone(), runs.clone(), next.clone());
        set.spawn(async move {
            let mut rows = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(from, to)) = runs.get(i) else {
                    break;
                };
                let mut copy = conn.copy_in_raw(RAW_COPY_SQL).await?;
                copy.send(&data[..header]).await?;
                copy.send(&data[from..to]).await?;
                copy.send(COPY_TRAILER.as_slice()).await?;
                rows += copy.finish().await?;
            }
            anyhow::Ok((rows, conn))
        });
    }
    let mut rows = 0u64;
    let mut done = Vec::new();
    while let Some(r) = set.join_next().await {
        let (n, conn) = r??;
        rows += n;
        done.push(conn);
    }
    let mut stats = Stats::new(name);
    stats.elapsed = start.elapsed();
    // Sampled before the connections close: an exited backend's CPU would count as "other".
    let nats_cpu = before.finish(ctx, server_pid, &mut stats).await;
    for conn in done {
        let _ = conn.close().await;
    }
    let (stored, source): (i64, i64) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM bench_raw_telemetry), \
                (SELECT count(*) FROM telemetry WHERE {filter})"
    ))
    .fetch_one(&mut c)
    .await?;
    if stored != source || stored != rows as i64 {
        bail!("raw COPY stored {stored} rows ({rows} reported) of {source}");
    }
    sqlx::query("DROP TABLE bench_raw_telemetry")
        .execute(&mut c)
        .await?;
    let _ = c.close().await;
    eprintln!(
        "raw: {rows} rows in {:.2} s ({:.0}/s)",
        stats.elapsed.as_secs_f64(),
        rows as f64 / stats.elapsed.as_secs_f64()
    );
    Ok(RawReport {
        rows: stored,
        statements: runs.len(),
        stats,
        nats_cpu,
    })
}

/// The load devices (all but the probe, device 0) dealt round-robin to `publishers` publishers
/// (at least one, at most one per device).
fn publisher_shares(devices: &[Device], publishers: usize) -> Vec<Vec<Uuid>> {
    let load = devices.get(1..).unwrap_or_default();
    let p = publishers.max(1).min(load.len().max(1));
    (0..p)
        .map(|i| load.iter().skip(i).step_by(p).map(|d| d.id).collect())
        .collect()
}

/// The publishers of a side phase (floor, load), one per share: plain JSON (the side
/// consumers read it as such), no `Nats-Msg-Id`, no backlog limit, at `rate` readings/s in
/// all (0: unpaced).
fn side_publishers(
    ctx: &Ctx,
    url: &str,
    prefix: &str,
    shares: Vec<Vec<Uuid>>,
    start: Instant,
    stop_at: Instant,
    rate: f64,
) -> JoinSet<anyhow::Result<Published>> {
    let a = &ctx.args;
    let per_publisher = rate / shares.len().max(1) as f64;
    let mut set = JoinSet::new();
    for share in shares {
        set.spawn(publisher(
            url.to_owned(),
            prefix.to_owned(),
            share,
            start,
            stop_at,
            per_publisher,
            a.in_flight,
            false,
            a.readings_per_message as usize,
            None,
            Backlog::unlimited(),
        ));
    }
    set
}

/// A stream, subjects and consumer of this run for a side phase (`kind`: `floor`, `load`),
/// shaped like the ingest's, and the guard that deletes the stream.
fn side_stream(url: &str, tag: &str, kind: &str) -> (ingest::nats::NatsConfig, StreamGuard) {
    let config = ingest::nats::NatsConfig {
        stream: format!(
            "BENCH_{}_{}",
            kind.to_ascii_uppercase(),
            tag.to_ascii_uppercase()
        ),
        subject_prefix: format!("bench.{tag}.{kind}"),
        consumer: format!("bench-{kind}-{tag}"),
        ..Default::default()
    };
    let guard = StreamGuard {
        names: Names {
            url: url.to_owned(),
            stream: config.stream.clone(),
            prefix: config.subject_prefix.clone(),
            consumer: config.consumer.clone(),
        },
        deleted: false,
    };
    (config, guard)
}

// ---------------------------------------------------------------------------------------------
// The simulated devices as load only (--raw-under-load)

/// Devices publishing at a set rate into a stream of their own, whose messages two tasks
/// acknowledge unread: the devices' and nats-server's share of the machine without the ingest.
struct DeviceLoad {
    guard: StreamGuard,
    client: async_nats::Client,
    publishers: JoinSet<anyhow::Result<Published>>,
    consumers: JoinSet<anyhow::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl DeviceLoad {
    /// Starts `--publishers` publishers over `devices` (the probe left out) at `rate`
    /// readings/s in all, in the shape of the NATS phase.
    async fn start(ctx: &Ctx, url: &str, devices: &[Device], rate: f64) -> anyhow::Result<Self> {
        let a = &ctx.args;
        let tag = format!("{}load", ctx.run_id);
        let (config, guard) = side_stream(url, &tag, "load");
        let client = ingest::nats::connect(url).await?;
        let js = async_nats::jetstream::new(client.clone());
        let consumer = ingest::nats::setup(&js, &config).await?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut consumers = JoinSet::new();
        // As the ingest workers take them: two consumers pulling as they do, each taking a
        // batch (up to the workers' byte limit or their wait after the first message), then
        // holding it as long as a worker's write took in the NATS phase (`hold`), then
        // acknowledging it with one flush.
        let hold = Duration::from_millis(LOAD_HOLD_MS);
        for _ in 0..2 {
            let (consumer, mut stop, config, client) = (
                consumer.clone(),
                stop_rx.clone(),
                config.clone(),
                client.clone(),
            );
            consumers.spawn(async move {
                let mut messages = ingest::nats::pull(&consumer, &config).await?;
                loop {
                    let first = tokio::select! {
                        m = messages.next() => m,
                        _ = stop.changed() => break,
                    };
                    let Some(first) = first else { break };
                    let first = first.map_err(|e| anyhow!("load pull: {e}"))?;
                    let mut bytes = first.payload.len();
                    let mut batch = vec![first];
                    let deadline = tokio::time::Instant::now() + config.batch_wait;
                    while bytes < config.batch_max_bytes {
                        match tokio::time::timeout_at(deadline, messages.next()).await {
                            Ok(Some(m)) => {
                                let m = m.map_err(|e| anyhow!("load pull: {e}"))?;
                                bytes += m.payload.len();
                                batch.push(m);
                            }
                            _ => break,
                        }
                    }
                    tokio::time::sleep(hold).await;
                    for m in &batch {
                        m.ack().await.map_err(|e| anyhow!("load ack: {e}"))?;
                    }
                    client.flush().await?;
                }
                anyhow::Ok(())
            });
        }
        let start = Instant::now();
        let publishers = side_publishers(
            ctx,
            url,
            &config.subject_prefix,
            publisher_shares(devices, a.publishers),
            start,
            // Stopped by `finish`, long before this.
            start + DRAIN_TIMEOUT,
            rate,
        );
        Ok(Self {
            guard,
            client,
            publishers,
            consumers,
            stop,
        })
    }

    /// Stops the publishers and the consumers and deletes the stream.
    async fn finish(mut self) {
        self.publishers.abort_all();
        while self.publishers.join_next().await.is_some() {}
        let _ = self.stop.send(true);
        while let Some(r) = self.consumers.join_next().await {
            if let Ok(Err(e)) = r {
                eprintln!("load: a consumer failed: {e}");
            }
        }
        let _ = self.client.drain().await;
        self.guard.delete().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario

pub(crate) async fn run_telemetry(ctx: &Ctx, admin_url: &str) -> anyhow::Result<()> {
    let run = ctx.run_id.to_ascii_uppercase();
    let names = Names {
        url: ctx.args.nats_url.clone(),
        stream: format!("BENCH_TELEMETRY_{run}"),
        prefix: format!("bench.{}.telemetry", ctx.run_id),
        consumer: format!("bench-ingest-{}", ctx.run_id),
    };
    let mut guard = StreamGuard {
        names: names.clone(),
        deleted: false,
    };
    let outcome = telemetry(ctx, admin_url, &names).await;
    guard.delete().await;
    outcome
}

async fn telemetry(ctx: &Ctx, admin_url: &str, names: &Names) -> anyhow::Result<()> {
    let a = &ctx.args;
    let mut env = vec![
        ("NATS_URL".to_owned(), names.url.clone()),
        (
            "CHRONICLE_TELEMETRY_STREAM".to_owned(),
            names.stream.clone(),
        ),
        (
            "CHRONICLE_TELEMETRY_SUBJECT_PREFIX".to_owned(),
            names.prefix.clone(),
        ),
        (
            "CHRONICLE_TELEMETRY_CONSUMER".to_owned(),
            names.consumer.clone(),
        ),
    ];
    if let Some(w) = a.ingest_workers {
        env.push(("CHRONICLE_INGEST_WORKERS".to_owned(), w.to_string()));
    }
    let mut server = ctx.start_server_with_env("api,ingest", &env).await?;
    eprintln!(
        "telemetry: chronicle (--roles api,ingest, stream {}, subjects {}.>) is serving at {} (pid {})",
        names.stream,
        names.prefix,
        server.base,
        server.pid()
    );
    let api = Api {
        client: http_client(16)?,
        base: server.base.clone(),
    };
    let t0 = Instant::now();
    let devices = open_devices(ctx, &api, a.devices, 16).await?;
    let devices_took = t0.elapsed();
    eprintln!(
        "telemetry: {} devices registered and activated in {:.1} s",
        devices.len(),
        devices_took.as_secs_f64()
    );

    // What JetStream itself costs here, without the database (opt-in: two more phases).
    let mut floors = Vec::new();
    if std::env::var("BENCH_TELEMETRY_NATS_FLOOR").is_ok_and(|v| v == "1") {
        for ack in [FloorAck::Each, FloorAck::All] {
            floors.push(run_nats_floor(ctx, server.pid(), &names.url, &devices, ack).await?);
        }
    }
    let nats = run_nats(ctx, server.pid(), names, &devices).await?;
    let nats_raw = run_raw_copy(
        ctx,
        server.pid(),
        &format!("seq < {HTTP_SEQ_BASE}"),
        "raw binary COPY (NATS rows)",
    )
    .await?;
    let loaded_raw = if a.raw_under_load {
        let pace = nats.committed as f64 / nats.end_to_end.as_secs_f64();
        let load = DeviceLoad::start(ctx, &names.url, &devices, pace).await?;
        // Let the publishers reach their pace before the COPY is timed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let raw = run_raw_copy(
            ctx,
            server.pid(),
            &format!("seq < {HTTP_SEQ_BASE}"),
            "raw binary COPY (NATS rows), devices publishing",
        )
        .await;
        load.finish().await;
        Some((pace, raw?))
    } else {
        None
    };
    let http = run_http(ctx, &server, &devices).await?;
    let http_raw = run_raw_copy(
        ctx,
        server.pid(),
        &format!("seq >= {HTTP_SEQ_BASE}"),
        "raw binary COPY (HTTP rows)",
    )
    .await?;
    server.stop();

    // Report.
    let setup = describe_setup(admin_url, ctx).await;
    let workers = a
        .ingest_workers
        .map_or("the server's default".to_owned(), |w| w.to_string());
    println!();
    println!("==== Chronicle benchmark: telemetry ====");
    println!("{setup}");
    println!(
        "chronicle serve --roles api,ingest; NATS stream {} (subjects {}.>), ingest workers: {workers}",
        names.stream, names.prefix
    );
    println!(
        "{} devices registered and activated over HTTP in {:.1} s; readings carry 4 metrics \
         (about {} bytes of JSON each)",
        devices.len(),
        devices_took.as_secs_f64(),
        {
            let mut s = String::new();
            reading_json(&mut s, 123_456, &now_rfc3339());
            s.len()
        }
    );
    let rate = |rows: i64, d: Duration| rows as f64 / d.as_secs_f64();

    println!();
    println!(
        "NATS: {} publishers x {} publishes in flight{}{}, {} reading(s) per message{}, over {} \
         devices, {} s; one probe device with a reading (one per message) every {} ms",
        nats.publishers,
        a.in_flight,
        if a.nats_rate > 0 {
            format!(", paced at {} readings/s", a.nats_rate)
        } else {
            ", unpaced".to_owned()
        },
        if a.nats_msg_id {
            ", Nats-Msg-Id set"
        } else {
            ", no Nats-Msg-Id"
        },
        a.readings_per_message,
        match (a.readings_per_message > 1, a.zstd) {
            (true, Some(l)) =>
                format!(" (gateway batches {{\"readings\": [...]}} of one device, zstd level {l})"),
            (true, None) => " (gateway batches {\"readings\": [...]} of one device)".to_owned(),
            (false, Some(l)) => format!(" (zstd level {l})"),
            (false, None) => String::new(),
        },
        devices.len() - 1,
        a.duration,
        PROBE_EVERY.as_millis()
    );
    println!(
        "  published (acknowledged by JetStream): {} readings in {} messages in {:.2} s = {:.0} \
         readings/s, {:.0} messages/s, {} errors",
        nats.published,
        nats.messages,
        nats.publish_took.as_secs_f64(),
        nats.published as f64 / nats.publish_took.as_secs_f64(),
        nats.messages as f64 / nats.publish_took.as_secs_f64(),
        nats.publish_errors
    );
    if let Some(e) = &nats.first_error {
        println!("    first error: {e}");
    }
    println!(
        "  committed: {} readings; first publish -> consumer drained (all acknowledged after \
         their commit): {:.2} s = {:.0} readings/s end to end ({:.0} messages/s)",
        nats.committed,
        nats.end_to_end.as_secs_f64(),
        rate(nats.committed, nats.end_to_end),
        rate(nats.messages as i64, nats.end_to_end)
    );
    let drain = nats.end_to_end.saturating_sub(nats.publish_took);
    println!(
        "  written while publishing: {} = {:.0}/s; backlog while publishing at most {} \
         messages ({}), when publishing stopped: {} messages; then \
         {} more in {:.2} s = {:.0}/s (publishers idle)",
        nats.committed_while_publishing,
        rate(nats.committed_while_publishing, nats.publish_took),
        nats.most_backlog,
        match a.max_backlog {
            0 => "no --max-backlog".to_owned(),
            n => format!("publishers wait above --max-backlog {n} readings"),
        },
        nats.backlog_at_stop
            .map_or("?".to_owned(), |b| b.to_string()),
        nats.committed - nats.committed_while_publishing,
        drain.as_secs_f64(),
        rate(nats.committed - nats.committed_while_publishing, drain)
    );
    let p = &nats.probes.lags;
    println!(
        "  ingest lag, probes (publish -> first poll of telemetry, every {} ms, finding it \
         committed): {} probes, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} timeouts",
        PROBE_POLL.as_millis(),
        p.latencies_us.len(),
        p.quantile_ms(0.5),
        p.quantile_ms(0.9),
        p.quantile_ms(0.99),
        p.max_ms(),
        nats.probes.timeouts
    );
    let (l50, l90, l99, lmax) = nats.written_lag_ms;
    println!(
        "  ingest lag, every reading (received_at - ts: publish -> the worker's write statement, \
         before its commit): p50 {l50:.1} ms, p90 {l90:.1} ms, p99 {l99:.1} ms, max {lmax:.1} ms"
    );
    print_cpu_wal(&nats.stats, nats.committed, nats.nats_cpu);
    print_rollups(&nats.rollups);

    for f in &floors {
        print_floor(f);
    }

    println!();
    println!(
        "HTTP: {} clients, POST /v1/telemetry of {HTTP_BATCH} readings of one device each \
         (device credential), {} s",
        a.http_clients.min(devices.len() - 1),
        a.duration
    );
    println!("{}", stats_header());
    println!("{}", stats_row(&http.requests));
    println!(
        "  accepted {} readings = {:.0} readings/s; duplicates {}, rejected {}",
        http.accepted,
        http.accepted as f64 / http.requests.elapsed.as_secs_f64(),
        http.duplicates,
        http.rejected
    );
    if let Some(e) = &http.requests.first_error {
        println!("  {} errors, first: {e}", http.requests.errors);
    }
    print_cpu_wal(&http.requests, http.accepted as i64, http.nats_cpu);
    print_rollups(&http.rollups);

    println!();
    println!(
        "Raw baseline: the rows each path stored, copied out of telemetry (binary, not timed) \
         and COPYed (FORMAT binary) into bench_raw_telemetry (LIKE telemetry INCLUDING ALL, \
         partitioned by day like it, with the same (device_id, seq) key per day), {} rows per \
         COPY statement (autocommit), {} connections:",
        a.copy_rows, a.raw_connections
    );
    for r in [&nats_raw, &http_raw] {
        println!(
            "  {:<30} {:>9} rows in {:>3} COPYs, {:.2} s = {:.0} rows/s",
            r.stats.name,
            r.rows,
            r.statements,
            r.stats.elapsed.as_secs_f64(),
            rate(r.rows, r.stats.elapsed)
        );
        print_cpu_wal(&r.stats, r.rows, r.nats_cpu);
    }
    if let Some((pace, r)) = &loaded_raw {
        println!(
            "  {:<30} {:>9} rows in {:>3} COPYs, {:.2} s = {:.0} rows/s, while the simulated \
             devices published {:.0} readings/s (the NATS path's end-to-end rate) into a stream \
             of their own, acknowledged unread",
            r.stats.name,
            r.rows,
            r.statements,
            r.stats.elapsed.as_secs_f64(),
            rate(r.rows, r.stats.elapsed),
            pace
        );
        print_cpu_wal(&r.stats, r.rows, r.nats_cpu);
    }

    println!();
    println!(
        "{:<6} {:>18} {:>16} {:>7}   targets: ratio >= 0.8, >= 150,000 readings/s \
         (NATS: {} reading(s) per message)",
        "path", "chronicle rdg/s", "raw COPY rows/s", "ratio", a.readings_per_message
    );
    let http_rate = http.accepted as f64 / http.requests.elapsed.as_secs_f64();
    let paths = [
        (
            "NATS",
            rate(nats.committed, nats.end_to_end),
            &nats.stats,
            nats.committed,
            &nats_raw,
        ),
        (
            "HTTP",
            http_rate,
            &http.requests,
            http.accepted as i64,
            &http_raw,
        ),
    ];
    for (path, chronicle, _, _, raw) in paths {
        let raw_rate = rate(raw.rows, raw.stats.elapsed);
        let ratio = chronicle / raw_rate;
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "{path:<6} {chronicle:>18.0} {raw_rate:>16.0} {ratio:>7.3}   ratio {}, rate {}",
            verdict(ratio >= 0.8),
            verdict(chronicle >= 150_000.0)
        );
    }
    if let Some((pace, r)) = &loaded_raw {
        // `pace` is the NATS path's end-to-end rate.
        let raw_rate = rate(r.rows, r.stats.elapsed);
        println!(
            "NATS against the raw COPY with the devices publishing (a diagnostic, not the \
             target): {pace:.0} / {raw_rate:.0} = {:.3}",
            pace / raw_rate
        );
    }
    println!(
        "what each ratio is made of: PostgreSQL's share of the machine (path / raw COPY) x its \
         CPU per row (raw COPY / path)"
    );
    for (path, _, stats, rows, raw) in paths {
        if let (Some(p), Some(r)) = (
            postgres_use(stats, rows),
            postgres_use(&raw.stats, raw.rows),
        ) {
            println!(
                "{path:<6} share {:.0}% / {:.0}% = {:.3}  x  cost {:.2} / {:.2} us per row = {:.3}  \
                 (product {:.3})",
                p.0 * 100.0,
                r.0 * 100.0,
                p.0 / r.0,
                r.1,
                p.1,
                r.1 / p.1,
                (p.0 / r.0) * (r.1 / p.1)
            );
        }
    }
    Ok(())
}

/// PostgreSQL's share of the machine during a phase, and its CPU per row in microseconds
/// (every PostgreSQL process of the cluster: the rollup worker's statements count too).
fn postgres_use(stats: &Stats, rows: i64) -> Option<(f64, f64)> {
    let share = stats.cpu?.postgres;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let us = share * cores * stats.elapsed.as_secs_f64() * 1e6 / rows.max(1) as f64;
    (share > 0.0).then_some((share, us))
}
