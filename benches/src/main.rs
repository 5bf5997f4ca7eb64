//! `chronicle-bench`: Chronicle's benchmark command (not a test).
//!
//! It creates a fresh database, runs the release `chronicle` binary against it as a child
//! process, drives commands over HTTP, measures a raw PostgreSQL baseline in the same run, and
//! prints a table. The child is killed and the database dropped at the end, also on error or
//! Ctrl-C. Run it through `deploy/bench.sh`; see docs/benchmarks.md.

mod audit;
mod read_side;
mod telemetry;
mod telemetry_cpu;

/// mimalloc: the log is read and decoded into many small allocations across threads, where
/// it is markedly cheaper than the system allocator (docs/benchmarks.md, "Read side").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Deposits over HTTP at N concurrent clients, then raw single-row INSERTs.
    Deposits,
    /// Latency of a 10,000-event stream against a 10-event stream, warm and after a restart.
    LongStream,
    /// Both, in one database and one run.
    All,
    /// Load a realistic mix of commands (API only), then rebuild every read model from
    /// position 0 in-process, against a raw multi-row INSERT of the rebuilt rows.
    Rebuild,
    /// Live lag of the read models (all roles) while deposits load the server.
    Lag,
    /// Telemetry from simulated devices over NATS JetStream, then over HTTP batches, each
    /// against a raw binary COPY of the same rows into a same-shaped table.
    Telemetry,
    /// Load the rebuild's mix, then time `chronicle audit export` (NDJSON, CSV), the NDJSON
    /// route and verify against a raw COPY of the same rows; the export's peak RSS at
    /// --rss-events and at --events.
    Audit,
    /// The NATS ingest worker's own CPU per reading (decompress, parse, check, COPY encoding,
    /// rollup delta) on one thread, without NATS or PostgreSQL.
    TelemetryCpu,
}

/// Chronicle's benchmark: commands over HTTP against a raw PostgreSQL baseline.
#[derive(Parser, Debug)]
#[command(name = "chronicle-bench", version, about, long_about = None)]
struct Args {
    /// What to run.
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
    /// Seconds of measurement for each throughput phase (commands, then raw inserts).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Concurrent clients (deposits: one customer and one wallet each; raw: pool size).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// long-stream: events pre-filled into the long wallet.
    #[arg(long, default_value_t = 10_000)]
    long_events: usize,
    /// long-stream: events pre-filled into the short wallet.
    #[arg(long, default_value_t = 10)]
    short_events: usize,
    /// long-stream: timed sequential deposits on each wallet (interleaved).
    #[arg(long, default_value_t = 2_000)]
    samples: usize,
    /// long-stream: concurrent clients filling the long wallet (they serialize on it).
    #[arg(long, default_value_t = 4)]
    prefill_concurrency: usize,
    /// long-stream: server restarts for the cold first-command measurement.
    #[arg(long, default_value_t = 2)]
    restarts: usize,
    /// rebuild, audit: events to load into the log before measuring (at least this many).
    #[arg(long, default_value_t = 1_000_000)]
    events: i64,
    /// audit: the smaller log the export's peak RSS is also measured at (then loaded on up
    /// to --events).
    #[arg(long, default_value_t = 100_000)]
    rss_events: i64,
    /// audit: rounds of the measurements (each round runs every one once; medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// rebuild, audit: customer accounts (each with one EUR wallet) the command mix runs
    /// between.
    #[arg(long, default_value_t = 2_000)]
    accounts: usize,
    /// lag: milliseconds between two probes (each one deposit, then polling its visibility).
    #[arg(long, default_value_t = 20)]
    probe_interval_ms: u64,
    /// telemetry: simulated devices (registered and activated over HTTP).
    #[arg(long, default_value_t = 1_000)]
    devices: usize,
    /// telemetry: NATS server the server's ingest workers and the publishers use.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// telemetry: publisher tasks (each with its own NATS connection).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// telemetry: unacknowledged JetStream publishes each publisher keeps in flight.
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
    /// telemetry: readings/s all publishers together aim at (0: as fast as acks come back).
    #[arg(long, default_value_t = 0)]
    nats_rate: u64,
    /// telemetry: readings the NATS consumer may have pending (published, not yet acknowledged
    /// by the workers) before the publishers wait: the stream's backlog, read every 100 ms
    /// (0: no limit; then a fast publisher builds a backlog that the end-to-end figure mostly
    /// drains afterwards).
    #[arg(long, default_value_t = 500_000)]
    max_backlog: u64,
    /// telemetry: publish with `Nats-Msg-Id: <device>:<seq>` (server-side deduplication).
    #[arg(long)]
    nats_msg_id: bool,
    /// telemetry: also time the raw COPY of the NATS rows while the simulated devices publish
    /// at the NATS path's end-to-end rate into a stream of their own, whose messages are
    /// acknowledged unread: the bare COPY sharing the machine with the devices and nats-server
    /// as the ingest does (a diagnostic; the targets stay against the COPY on a quiet machine).
    #[arg(long)]
    raw_under_load: bool,
    /// telemetry: readings per NATS message (1: one reading; more, as by default: a gateway's
    /// batch `{"readings": [...]}` of one device).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    readings_per_message: u64,
    /// telemetry: compress each NATS message with zstd at this level (1 to 22), sent with
    /// `Content-Encoding: zstd` (the probe's readings stay plain).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    zstd: Option<i32>,
    /// telemetry: HTTP clients posting batches (1,000 readings of one device each; many
    /// devices post at once, so the default keeps 64 requests open).
    #[arg(long, default_value_t = 64)]
    http_clients: usize,
    /// telemetry: CHRONICLE_INGEST_WORKERS for the server (default: the server's own).
    #[arg(long)]
    ingest_workers: Option<usize>,
    /// telemetry: connections of the raw COPY baseline.
    #[arg(long, default_value_t = 2)]
    raw_connections: usize,
    /// telemetry: rows per COPY statement (one transaction each) of the raw baseline.
    #[arg(long, default_value_t = 10_000)]
    copy_rows: usize,
    /// PostgreSQL server to create the benchmark database on (any database of it).
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// The chronicle binary (default: `chronicle` next to this binary).
    #[arg(long)]
    chronicle_bin: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// Latencies of one phase, in microseconds.
#[derive(Default)]
struct Stats {
    name: String,
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    cpu: Option<CpuShare>,
    /// WAL flushes (fsyncs) and WAL bytes written during the phase, cluster-wide.
    wal: Option<(i64, i64)>,
}

impl Stats {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
        self.latencies_us.sort_unstable();
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    /// Successful operations per second.
    fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.latencies_us.len() as f64 / secs
        } else {
            0.0
        }
    }

    /// The q-quantile (nearest rank) in milliseconds; the latencies must be sorted.
    fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.latencies_us[rank - 1] as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.latencies_us
            .last()
            .map_or(f64::NAN, |v| *v as f64 / 1000.0)
    }
}

/// CPU time spent during a phase, as a share of the whole machine (all cores), from /proc.
#[derive(Clone, Copy)]
struct CpuShare {
    chronicle: f64,
    postgres: f64,
    bench: f64,
    other_busy: f64,
    iowait: f64,
    idle: f64,
}

#[derive(Default)]
struct CpuSample {
    total: u64,
    idle: u64,
    iowait: u64,
    chronicle: u64,
    bench: u64,
    postgres: HashMap<u32, u64>,
}

/// utime + stime of a process, in clock ticks.
fn proc_ticks(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After "pid (comm) ": state is field 0, utime field 11, stime field 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn cpu_sample(chronicle_pid: Option<u32>) -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is included in user).
    let total: u64 = v.iter().take(8).sum();
    let mut s = CpuSample {
        total,
        idle: *v.get(3)?,
        iowait: *v.get(4)?,
        ..CpuSample::default()
    };
    if let Some(pid) = chronicle_pid {
        s.chronicle = proc_ticks(&pid.to_string()).map_or(0, |(_, t)| t);
    }
    s.bench = proc_ticks("self").map_or(0, |(_, t)| t);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((comm, t)) = proc_ticks(&pid.to_string()) {
            if comm == "postgres" {
                s.postgres.insert(pid, t);
            }
        }
    }
    Some(s)
}

fn cpu_share(before: &Option<CpuSample>, after: &Option<CpuSample>) -> Option<CpuShare> {
    let (b, a) = (before.as_ref()?, after.as_ref()?);
    let total = a.total.checked_sub(b.total)? as f64;
    if total <= 0.0 {
        return None;
    }
    let pg: u64 = a
        .postgres
        .iter()
        .map(|(pid, t)| t.saturating_sub(b.postgres.get(pid).copied().unwrap_or(0)))
        .sum();
    let chronicle = a.chronicle.saturating_sub(b.chronicle) as f64 / total;
    let postgres = pg as f64 / total;
    let bench = a.bench.saturating_sub(b.bench) as f64 / total;
    let idle = a.idle.saturating_sub(b.idle) as f64 / total;
    let iowait = a.iowait.saturating_sub(b.iowait) as f64 / total;
    let other_busy = (1.0 - idle - iowait - chronicle - postgres - bench).max(0.0);
    Some(CpuShare {
        chronicle,
        postgres,
        bench,
        other_busy,
        iowait,
        idle,
    })
}

/// `pg_stat_wal`'s (wal_sync, wal_bytes): WAL flushes and bytes, cluster-wide (PostgreSQL 14+).
async fn wal_sample(url: &str) -> Option<(i64, i64)> {
    let mut c = sqlx::PgConnection::connect(url).await.ok()?;
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT wal_sync, wal_bytes::bigint FROM pg_stat_wal")
            .fetch_one(&mut c)
            .await
            .ok();
    let _ = c.close().await;
    row
}

fn wal_delta(before: Option<(i64, i64)>, after: Option<(i64, i64)>) -> Option<(i64, i64)> {
    let (b, a) = (before?, after?);
    Some((a.0 - b.0, a.1 - b.1))
}

// ---------------------------------------------------------------------------------------------
// The chronicle child process

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

/// A running `chronicle serve`; dropping it stops the process.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts `chronicle serve` with `roles` (`--roles`), or with BENCH_SERVER_ROLES when
    /// `roles` is `None`, or with the server's default roles when neither is set; `env` is
    /// added to its environment.
    async fn start(
        bin: &Path,
        database_url: &str,
        secret: &str,
        log: &Path,
        roles: Option<&str>,
        env: &[(String, String)],
    ) -> anyhow::Result<Server> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut args = vec!["serve".to_owned(), "--listen".to_owned(), addr.clone()];
        // BENCH_SERVER_ROLES (e.g. `api`) runs only some parts of the server.
        let roles = roles
            .map(str::to_owned)
            .or_else(|| std::env::var("BENCH_SERVER_ROLES").ok());
        if let Some(roles) = roles {
            args.extend(["--roles".to_owned(), roles]);
        }
        let child = Command::new(bin)
            .args(&args)
            .env("DATABASE_URL", database_url)
            .env("CHRONICLE_JWT_SECRET", secret)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut server = Server {
            child,
            base: format!("http://{addr}"),
        };
        let client = http_client(1)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "chronicle serve exited with {status} before it was ready (log: {})",
                    log.display()
                );
            }
            if let Ok(r) = client.get(format!("{}/ready", server.base)).send().await {
                if r.status().is_success() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                server.stop();
                bail!(
                    "chronicle serve not ready after 60 s (log: {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 10 s.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn mint_token(bin: &Path, secret: &str, sub: &str, role: &str) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(["token", "--sub", sub, "--role", role, "--ttl", "1d"])
        .env("CHRONICLE_JWT_SECRET", secret)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} token", bin.display()))?;
    if !out.status.success() {
        bail!(
            "chronicle token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn http_client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections.max(1))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// An HTTP answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn describe(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }

    fn json(&self) -> anyhow::Result<Value> {
        if !self.ok() {
            bail!("unexpected answer: {}", self.describe());
        }
        Ok(serde_json::from_slice(&self.body)?)
    }
}

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(&self, path: &str, token: &str, body: String) -> anyhow::Result<Answer> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = r.status().as_u16();
        let body = r.bytes().await?.to_vec();
        Ok(Answer { status, body })
    }

    async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<Answer> {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = r.status().as_u16();
        let body = r.bytes().await?.to_vec();
        Ok(Answer { status, body })
    }

    async fn deposit(
        &self,
        token: &str,
        wallet: Uuid,
        external_ref: &str,
    ) -> anyhow::Result<Answer> {
        let body = json!({"amount": 100, "external_ref": external_ref}).to_string();
        self.post(&format!("/v1/wallets/{wallet}/deposits"), token, body)
            .await
    }

    /// One deposit, timed into `stats` (a transport failure ends the run).
    async fn timed_deposit(
        &self,
        token: &str,
        wallet: Uuid,
        external_ref: &str,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let a = self.deposit(token, wallet, external_ref).await?;
        let us = t0.elapsed().as_micros() as u64;
        if a.ok() {
            stats.latencies_us.push(us);
        } else {
            stats.error(a.describe());
        }
        Ok(())
    }

    /// Opens an account for the token's subject and one EUR wallet; returns the wallet id.
    async fn open_customer_wallet(&self, token: &str, n: &str) -> anyhow::Result<Uuid> {
        let account = json!({"email": format!("bench-{n}@example.com"),
                             "display_name": format!("Bench customer {n}")});
        self.post("/v1/accounts", token, account.to_string())
            .await?
            .json()
            .context("opening an account")?;
        let wallet = self
            .post("/v1/wallets", token, json!({"currency": "EUR"}).to_string())
            .await?
            .json()
            .context("opening a wallet")?;
        let id = wallet
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("no wallet id in {wallet}"))?;
        Ok(id.parse()?)
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Ctx {
    args: Args,
    bin: PathBuf,
    db_url: String,
    secret: String,
    log: PathBuf,
    run_id: String,
    /// The database is an existing one (BENCH_REUSE_DATABASE), neither created nor dropped.
    reused: bool,
}

impl Ctx {
    fn token(&self, sub: &str, role: &str) -> anyhow::Result<String> {
        mint_token(&self.bin, &self.secret, sub, role)
    }

    async fn start_server(&self) -> anyhow::Result<Server> {
        Server::start(&self.bin, &self.db_url, &self.secret, &self.log, None, &[]).await
    }

    /// Starts the server with exactly these `--roles` (BENCH_SERVER_ROLES is not consulted).
    async fn start_server_with_roles(&self, roles: &str) -> anyhow::Result<Server> {
        self.start_server_with_env(roles, &[]).await
    }

    /// Starts the server with exactly these `--roles` and `env` added to its environment.
    async fn start_server_with_env(
        &self,
        roles: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<Server> {
        Server::start(
            &self.bin,
            &self.db_url,
            &self.secret,
            &self.log,
            Some(roles),
            env,
        )
        .await
    }
}

struct DepositsReport {
    commands: Stats,
    raw: Stats,
}

struct LongStreamReport {
    prefill: Duration,
    long: Stats,
    short: Stats,
    /// Per restart: (which wallet went first, long ms, short ms).
    cold: Vec<(&'static str, f64, f64)>,
}

async fn run_deposits(ctx: &Ctx, server: &Server) -> anyhow::Result<DepositsReport> {
    let n = ctx.args.concurrency.max(1);
    let duration = Duration::from_secs(ctx.args.duration.max(1));
    let api = Api {
        client: http_client(n)?,
        base: server.base.clone(),
    };
    let payments = Arc::new(ctx.token("bench-payments", "payments")?);

    eprintln!("deposits: opening {n} customers with one EUR wallet each");
    let wallets = open_deposit_wallets(ctx, &api, n).await?;

    eprintln!(
        "deposits: {n} clients posting deposits for {} s",
        duration.as_secs()
    );
    let wal0 = wal_sample(&ctx.db_url).await;
    let cpu0 = cpu_sample(Some(server.pid()));
    let mut commands = deposit_load(&api, wallets, payments, duration).await?;
    commands.cpu = cpu_share(&cpu0, &cpu_sample(Some(server.pid())));
    commands.wal = wal_delta(wal0, wal_sample(&ctx.db_url).await);
    eprintln!(
        "deposits: {} commands, {:.0}/s, {} errors",
        commands.latencies_us.len(),
        commands.rate(),
        commands.errors
    );

    let raw = run_raw_inserts(ctx, server, n, duration).await?;
    Ok(DepositsReport { commands, raw })
}

/// Opens `n` customers (`bench-customer-<i>`) with one EUR wallet each; returns the wallets.
async fn open_deposit_wallets(ctx: &Ctx, api: &Api, n: usize) -> anyhow::Result<Vec<Uuid>> {
    let mut wallets = Vec::with_capacity(n);
    for i in 0..n {
        let sub = format!("bench-customer-{i}");
        let token = ctx.token(&sub, "customer")?;
        wallets.push(
            api.open_customer_wallet(&token, &format!("{}-{i}", ctx.run_id))
                .await?,
        );
    }
    Ok(wallets)
}

/// One task per wallet posting deposits to it, one at a time, for `duration`; the merged
/// latencies (named "deposit commands (HTTP)"), finished with the elapsed time.
async fn deposit_load(
    api: &Api,
    wallets: Vec<Uuid>,
    payments: Arc<String>,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = JoinSet::new();
    for (i, wallet) in wallets.into_iter().enumerate() {
        let api = api.clone();
        let token = payments.clone();
        set.spawn(async move {
            let mut stats = Stats::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let r = format!("bench-{i}-{seq}");
                api.timed_deposit(&token, wallet, &r, &mut stats).await?;
            }
            anyhow::Ok(stats)
        });
    }
    let mut commands = Stats::new("deposit commands (HTTP)");
    while let Some(r) = set.join_next().await {
        commands.merge(r??);
    }
    commands.finish(start.elapsed());
    Ok(commands)
}

/// The raw baseline's table: `events` as the migrations made it (columns, defaults, identity,
/// constraints and indexes), without its triggers, which `LIKE` never copies.
const RAW_TABLE_SQL: &str = "CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)";

const RAW_INSERT_SQL: &str = r#"
INSERT INTO bench_raw_events (event_id, stream_type, stream_id, stream_version, event_type,
                              schema_version, payload, actor_sub, actor_role, command_id,
                              correlation_id, causation_id, occurred_at)
VALUES ($1, 'wallet', $2, $3, 'FundsDeposited', 1, $4, 'bench-payments', 'payments', $5, $6,
        NULL, now())"#;

/// Single-row INSERT transactions (autocommit) into a copy of `events`, at `n` clients.
async fn run_raw_inserts(
    ctx: &Ctx,
    server: &Server,
    n: usize,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let pool = PgPoolOptions::new()
        .max_connections(n as u32)
        .min_connections(n as u32)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&ctx.db_url)
        .await
        .context("cannot connect the raw-insert pool")?;
    sqlx::query(RAW_TABLE_SQL).execute(&pool).await?;
    // Open every connection before the clock starts.
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    drop(held);

    eprintln!(
        "raw: {n} clients inserting single rows for {} s",
        duration.as_secs()
    );
    let wal0 = wal_sample(&ctx.db_url).await;
    let cpu0 = cpu_sample(Some(server.pid()));
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = JoinSet::new();
    for i in 0..n {
        let pool = pool.clone();
        set.spawn(async move {
            let mut stats = Stats::default();
            let stream = Uuid::now_v7();
            let mut version = 0i64;
            while Instant::now() < deadline {
                version += 1;
                let payload =
                    json!({"amount": 100, "external_ref": format!("bench-raw-{i}-{version}")});
                let t0 = Instant::now();
                let r = sqlx::query(RAW_INSERT_SQL)
                    .bind(Uuid::now_v7())
                    .bind(stream)
                    .bind(version)
                    .bind(&payload)
                    .bind(Uuid::now_v7())
                    .bind(Uuid::now_v7())
                    .execute(&pool)
                    .await;
                let us = t0.elapsed().as_micros() as u64;
                match r {
                    Ok(_) => stats.latencies_us.push(us),
                    Err(e) => stats.error(e.to_string()),
                }
            }
            stats
        });
    }
    let mut raw = Stats::new("raw INSERT (sqlx, autocommit)");
    while let Some(r) = set.join_next().await {
        raw.merge(r?);
    }
    raw.finish(start.elapsed());
    raw.cpu = cpu_share(&cpu0, &cpu_sample(Some(server.pid())));
    raw.wal = wal_delta(wal0, wal_sample(&ctx.db_url).await);
    pool.close().await;
    eprintln!(
        "raw: {} inserts, {:.0}/s, {} errors",
        raw.latencies_us.len(),
        raw.rate(),
        raw.errors
    );
    Ok(raw)
}

async fn run_long_stream(ctx: &Ctx, server: &mut Server) -> anyhow::Result<LongStreamReport> {
    let a = &ctx.args;
    let api = Api {
        client: http_client(a.prefill_concurrency)?,
        base: server.base.clone(),
    };
    let payments = Arc::new(ctx.token("bench-payments", "payments")?);
    let long_owner = ctx.token("bench-long-owner", "customer")?;
    let short_owner = ctx.token("bench-short-owner", "customer")?;
    let long = api
        .open_customer_wallet(&long_owner, &format!("{}-long", ctx.run_id))
        .await?;
    let short = api
        .open_customer_wallet(&short_owner, &format!("{}-short", ctx.run_id))
        .await?;

    eprintln!(
        "long-stream: filling one wallet with {} deposits ({} clients) and one with {}",
        a.long_events, a.prefill_concurrency, a.short_events
    );
    let t0 = Instant::now();
    let clients = a.prefill_concurrency.max(1);
    let mut set = JoinSet::new();
    for c in 0..clients {
        let api = api.clone();
        let token = payments.clone();
        let count = a.long_events / clients + usize::from(c < a.long_events % clients);
        set.spawn(async move {
            let mut stats = Stats::default();
            for k in 0..count {
                api.timed_deposit(&token, long, &format!("fill-{c}-{k}"), &mut stats)
                    .await?;
            }
            anyhow::Ok(stats)
        });
    }
    let mut fill = Stats::default();
    while let Some(r) = set.join_next().await {
        fill.merge(r??);
    }
    for k in 0..a.short_events {
        api.timed_deposit(&payments, short, &format!("fill-{k}"), &mut fill)
            .await?;
    }
    let prefill = t0.elapsed();
    if fill.errors > 0 {
        bail!(
            "{} pre-fill deposits failed, first: {}",
            fill.errors,
            fill.first_error.unwrap_or_default()
        );
    }
    let version = |answer: Answer| -> Option<i64> {
        answer.json().ok()?.get("version").and_then(Value::as_i64)
    };
    let long_version = version(
        api.get(&format!("/v1/wallets/{long}"), Some(&long_owner))
            .await?,
    );
    let short_version = version(
        api.get(&format!("/v1/wallets/{short}"), Some(&short_owner))
            .await?,
    );
    eprintln!(
        "long-stream: filled in {:.1} s (versions {long_version:?} and {short_version:?}); \
         {} interleaved deposits on each",
        prefill.as_secs_f64(),
        a.samples
    );

    let name = |v: Option<i64>| {
        v.map_or("wallet at version ?".to_owned(), |v| {
            format!("wallet at version {v}")
        })
    };
    let mut long_stats = Stats::new(&name(long_version));
    let mut short_stats = Stats::new(&name(short_version));
    let t0 = Instant::now();
    for k in 0..a.samples {
        let r = format!("sample-{k}");
        api.timed_deposit(&payments, long, &r, &mut long_stats)
            .await?;
        api.timed_deposit(&payments, short, &r, &mut short_stats)
            .await?;
    }
    let elapsed = t0.elapsed();
    long_stats.finish(elapsed);
    short_stats.finish(elapsed);

    // Cold caches: restart the server; the long wallet loads from its snapshot plus the tail.
    let mut cold = Vec::new();
    for restart in 0..a.restarts {
        eprintln!("long-stream: restart {} of {}", restart + 1, a.restarts);
        server.stop();
        *server = ctx.start_server().await?;
        let api = Api {
            client: http_client(1)?,
            base: server.base.clone(),
        };
        // Open the HTTP connection (and a database connection) before timing.
        api.get("/ready", None).await?;
        let long_first = restart % 2 == 0;
        let order = if long_first {
            [(long, "long"), (short, "short")]
        } else {
            [(short, "short"), (long, "long")]
        };
        let mut ms = HashMap::new();
        for (wallet, name) in order {
            let t0 = Instant::now();
            let answer = api
                .deposit(&payments, wallet, &format!("cold-{restart}"))
                .await?;
            let took = t0.elapsed().as_secs_f64() * 1000.0;
            if !answer.ok() {
                bail!("cold deposit failed: {}", answer.describe());
            }
            ms.insert(name, took);
        }
        cold.push((
            if long_first {
                "long first"
            } else {
                "short first"
            },
            ms.get("long").copied().unwrap_or(f64::NAN),
            ms.get("short").copied().unwrap_or(f64::NAN),
        ));
    }
    Ok(LongStreamReport {
        prefill,
        long: long_stats,
        short: short_stats,
        cold,
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn stats_row(s: &Stats) -> String {
    format!(
        "{:<32} {:>9} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>7}",
        s.name,
        s.latencies_us.len(),
        s.rate(),
        s.quantile_ms(0.50),
        s.quantile_ms(0.99),
        s.max_ms(),
        s.errors
    )
}

fn stats_header() -> String {
    format!(
        "{:<32} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "", "ok ops", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
    )
}

fn cpu_line(s: &Stats) -> Option<String> {
    let c = s.cpu?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Some(format!(
        "  CPU during \"{}\" ({} cores = 100%): postgres {:.0}%, chronicle {:.0}%, bench client {:.0}%, other {:.0}%, iowait {:.0}%, idle {:.0}%",
        s.name,
        cores,
        c.postgres * 100.0,
        c.chronicle * 100.0,
        c.bench * 100.0,
        c.other_busy * 100.0,
        c.iowait * 100.0,
        c.idle * 100.0
    ))
}

fn print_report(
    ctx: &Ctx,
    setup: &str,
    deposits: Option<&DepositsReport>,
    long: Option<&LongStreamReport>,
) {
    let a = &ctx.args;
    println!();
    println!("==== Chronicle benchmark ====");
    println!("{setup}");
    if let Some(d) = deposits {
        println!();
        println!(
            "Deposits: {} clients, {} s each phase, same database",
            a.concurrency, a.duration
        );
        println!("{}", stats_header());
        println!("{}", stats_row(&d.commands));
        println!("{}", stats_row(&d.raw));
        let ratio = d.commands.rate() / d.raw.rate();
        println!("ratio commands/s / raw inserts/s: {ratio:.3}");
        for s in [&d.commands, &d.raw] {
            if let Some(line) = cpu_line(s) {
                println!("{line}");
            }
            if let Some((syncs, bytes)) = s.wal {
                let ops = s.latencies_us.len().max(1) as f64;
                println!(
                    "  WAL during \"{}\": {:.0} flushes/s ({:.1} operations per flush), {:.0} bytes per operation",
                    s.name,
                    syncs as f64 / s.elapsed.as_secs_f64(),
                    ops / (syncs.max(1) as f64),
                    bytes as f64 / ops
                );
            }
            if let Some(e) = &s.first_error {
                println!("  {} errors in \"{}\", first: {e}", s.errors, s.name);
            }
        }
    }
    if let Some(l) = long {
        println!();
        println!(
            "Long stream: {} sequential deposits on each wallet, alternating (pre-fill took {:.1} s)",
            a.samples,
            l.prefill.as_secs_f64()
        );
        println!("{}", stats_header());
        println!(
            "{}  (ops/s: both wallets share the clock)",
            stats_row(&l.long)
        );
        println!("{}", stats_row(&l.short));
        let ratio = l.long.quantile_ms(0.99) / l.short.quantile_ms(0.99);
        let verdict = if ratio <= 1.2 { "met" } else { "NOT met" };
        println!("p99(long) / p99(short): {ratio:.3} (target <= 1.2: {verdict})");
        for s in [&l.long, &l.short] {
            if let Some(e) = &s.first_error {
                println!("  {} errors in \"{}\", first: {e}", s.errors, s.name);
            }
        }
        println!(
            "Cold first command after a server restart (snapshot + tail for the long wallet):"
        );
        for (i, (order, long_ms, short_ms)) in l.cold.iter().enumerate() {
            println!(
                "  restart {} ({order}): long wallet {long_ms:.2} ms, short wallet {short_ms:.2} ms",
                i + 1
            );
        }
    }
}

async fn describe_setup(admin_url: &str, ctx: &Ctx) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = write!(out, "machine: {cores} cores");
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let l: Vec<&str> = load.split_whitespace().take(3).collect();
        let _ = write!(out, ", load average at the end {}", l.join(" "));
    }
    if let Ok(mut c) = sqlx::PgConnection::connect(admin_url).await {
        let mut settings = Vec::new();
        for name in [
            "server_version",
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "shared_buffers",
            "autovacuum",
        ] {
            let v: Result<String, _> = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(&mut c)
                .await;
            settings.push(format!("{name}={}", v.unwrap_or_else(|_| "?".into())));
        }
        let _ = write!(out, "\nPostgreSQL: {}", settings.join(", "));
        let _ = c.close().await;
    }
    let _ = write!(out, "\nchronicle: {}", ctx.bin.display());
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(rev) = git(&["rev-parse", "--short", "HEAD"]) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let _ = write!(
            out,
            " (work tree at {rev}{})",
            if dirty { ", with local changes" } else { "" }
        );
    }
    out
}

async fn run(ctx: &Ctx, admin_url: &str) -> anyhow::Result<()> {
    let scenario = ctx.args.scenario;
    match scenario {
        Scenario::Rebuild => return read_side::run_rebuild(ctx, admin_url).await,
        Scenario::Lag => return read_side::run_lag(ctx, admin_url).await,
        Scenario::Telemetry => return telemetry::run_telemetry(ctx, admin_url).await,
        Scenario::Audit => return audit::run_audit(ctx, admin_url).await,
        // Runs in `bench`, before any database or server is made.
        Scenario::TelemetryCpu => return Ok(()),
        Scenario::Deposits | Scenario::LongStream | Scenario::All => {}
    }
    let mut server = ctx.start_server().await?;
    eprintln!(
        "chronicle is serving at {} (pid {})",
        server.base,
        server.pid()
    );
    let deposits = if matches!(scenario, Scenario::Deposits | Scenario::All) {
        Some(run_deposits(ctx, &server).await?)
    } else {
        None
    };
    let long = if matches!(scenario, Scenario::LongStream | Scenario::All) {
        Some(run_long_stream(ctx, &mut server).await?)
    } else {
        None
    };
    server.stop();
    let setup = describe_setup(admin_url, ctx).await;
    print_report(ctx, &setup, deposits.as_ref(), long.as_ref());
    Ok(())
}

async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut c = sqlx::PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to {admin_url}"))?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut c)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    c.close().await?;
    Ok(())
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut c = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut c)
        .await?;
    c.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match bench(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chronicle-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    if args.scenario == Scenario::TelemetryCpu {
        return telemetry_cpu::run(args.duration, args.readings_per_message as usize, args.zstd);
    }
    if args.concurrency == 0 || args.duration == 0 {
        bail!("--concurrency and --duration must be at least 1");
    }
    if args.scenario == Scenario::Rebuild && (args.events < 1 || args.accounts < 2) {
        bail!("rebuild needs --events >= 1 and --accounts >= 2");
    }
    if args.scenario == Scenario::Audit
        && (args.events < 1 || args.accounts < 2 || args.rss_events < 1 || args.rounds == 0)
    {
        bail!("audit needs --events >= 1, --accounts >= 2, --rss-events >= 1 and --rounds >= 1");
    }
    if args.scenario == Scenario::Telemetry
        && (args.devices < 2
            || args.publishers == 0
            || args.in_flight == 0
            || args.http_clients == 0
            || args.raw_connections == 0
            || args.copy_rows == 0)
    {
        bail!(
            "telemetry needs --devices >= 2 and at least 1 of --publishers, --in-flight, \
             --http-clients, --raw-connections, --copy-rows"
        );
    }
    let bin = match &args.chronicle_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("chronicle"),
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p chronicle` or pass --chronicle-bin",
            bin.display()
        );
    }
    let admin_url = args.database_url.clone();
    let run_id = random_hex(6)?;
    let reuse = std::env::var("BENCH_REUSE_DATABASE")
        .ok()
        .filter(|n| !n.is_empty());
    let reused = reuse.is_some();
    let db_name = reuse.unwrap_or_else(|| format!("chronicle_bench_{run_id}"));
    let mut url = reqwest::Url::parse(&admin_url).context("BENCH_DATABASE_URL is not a URL")?;
    url.set_path(&format!("/{db_name}"));
    let log = std::env::temp_dir().join(format!("{db_name}.log"));
    let ctx = Ctx {
        args,
        bin,
        db_url: url.to_string(),
        secret: random_hex(32)?,
        log,
        run_id,
        reused,
    };

    if reused {
        eprintln!("using the existing database {db_name} (BENCH_REUSE_DATABASE)");
    } else {
        create_database(&admin_url, &db_name).await?;
        eprintln!(
            "created database {db_name}; server log: {}",
            ctx.log.display()
        );
    }
    let outcome = tokio::select! {
        r = run(&ctx, &admin_url) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // The server (owned by `run`) is stopped by now: dropped on return or on interruption.
    if reused || std::env::var_os("BENCH_KEEP_DATABASE").is_some_and(|v| v == "1") {
        eprintln!("kept database {db_name}: drop it when done");
        return outcome;
    }
    match drop_database(&admin_url, &db_name).await {
        Ok(()) => eprintln!("dropped database {db_name}"),
        Err(e) => eprintln!("could not drop database {db_name}: {e:#}"),
    }
    if outcome.is_err() {
        eprintln!("chronicle's log: {}", ctx.log.display());
    } else {
        let _ = std::fs::remove_file(&ctx.log);
    }
    outcome
}
