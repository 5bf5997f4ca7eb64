//! The audit scenario (`deploy/bench.sh audit`): reading the whole log out, as the export,
//! the NDJSON route and verification do, against a raw COPY of the same rows in the same run,
//! and the export's peak memory on a small and a large log.
//!
//! 1. Loads the rebuild's command mix (`read_side`'s load tasks) over HTTP into `chronicle
//!    serve --roles api` up to `--rss-events` events and runs `chronicle audit export` (the
//!    release binary, as a child process) once per round in each format, reading its peak
//!    RSS; then loads on up to `--events` and stops the server.
//! 2. Seals the hash chain of the log (`read_side::chain_figures`, as the rebuild bench;
//!    it also reads the log once through verify and once through COPY, which warms the
//!    caches for what follows).
//! 3. `--rounds` rounds, each of: the raw `COPY (SELECT <the columns> FROM events ORDER BY
//!    tx, position) TO STDOUT`, in text and in CSV, read by this process; the export to a
//!    file as NDJSON and as CSV (child processes; peak RSS and CPU read from /proc); the
//!    NDJSON route `GET /v1/audit/events` read to its end by an HTTP client, from a server
//!    started for it; `verify` in one snapshot, in-process.
//! 4. Prints the medians in events/s and each one's ratio against the raw text COPY.

use crate::read_side::{
    chain_figures, connect, count_events, merge_outcomes, mix_round, open_people, print_outcomes,
    start_load_server, wait_for_horizon, Outcome, Shared,
};
use crate::{cpu_sample, cpu_share, describe_setup, proc_ticks, CpuSample, CpuShare, Ctx, Server};
use anyhow::{anyhow, bail, Context};
use futures::TryStreamExt;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a child's /proc entries are read while it runs.
const POLL: Duration = Duration::from_millis(2);

/// One timed read of the whole log.
struct Run {
    took: Duration,
    events: u64,
    bytes: u64,
    /// The reading process's peak resident set (VmHWM), in kB, where it was measured.
    peak_rss_kb: Option<u64>,
    cpu: Option<CpuShare>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// The ways of reading the log out, in the order a round runs them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Way {
    CopyText,
    CopyCsv,
    ExportNdjson,
    ExportCsv,
    Route,
    Verify,
}

impl Way {
    const ALL: [Way; 6] = [
        Way::CopyText,
        Way::CopyCsv,
        Way::ExportNdjson,
        Way::ExportCsv,
        Way::Route,
        Way::Verify,
    ];

    fn label(self) -> &'static str {
        match self {
            Way::CopyText => "raw COPY ... TO STDOUT (text)",
            Way::CopyCsv => "raw COPY ... TO STDOUT (FORMAT csv)",
            Way::ExportNdjson => "chronicle audit export --format ndjson",
            Way::ExportCsv => "chronicle audit export --format csv",
            Way::Route => "GET /v1/audit/events (x-ndjson)",
            Way::Verify => "verify (one snapshot, in-process)",
        }
    }
}

/// Files written by the exports, removed when dropped (also on an error).
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `VmHWM` of /proc/<pid>/status, in kB (absent once the process has exited).
fn vm_hwm_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU split of a phase in which a child process (not sampled by `cpu_sample`, since it
/// is gone by the end) used `child_ticks`: those are moved from "other" to "chronicle".
fn with_child(
    before: &Option<CpuSample>,
    after: &Option<CpuSample>,
    child_ticks: u64,
) -> Option<CpuShare> {
    let mut share = cpu_share(before, after)?;
    let total = after.as_ref()?.total.checked_sub(before.as_ref()?.total)? as f64;
    let child = child_ticks as f64 / total.max(1.0);
    share.chronicle += child;
    share.other_busy = (share.other_busy - child).max(0.0);
    Some(share)
}

/// Runs `chronicle audit export --format <format> --output <file>` on the bench database and
/// waits for it, reading /proc/<pid>/status and /proc/<pid>/stat every [`POLL`]: its peak RSS
/// is the last VmHWM read before it exited (VmHWM only grows). The export must write
/// `expect` events.
fn export_child(ctx: &Ctx, format: &str, file: &Path, expect: i64) -> anyhow::Result<Run> {
    let err_path = file.with_extension(format!("{format}.stderr"));
    let err = std::fs::File::create(&err_path)
        .with_context(|| format!("cannot create {}", err_path.display()))?;
    let cpu0 = cpu_sample(None);
    let start = Instant::now();
    let mut child = Command::new(&ctx.bin)
        .args(["audit", "export", "--format", format, "--output"])
        .arg(file)
        .env("DATABASE_URL", &ctx.db_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {} audit export", ctx.bin.display()))?;
    let pid = child.id().to_string();
    let (mut peak, mut ticks) = (None, 0);
    // The child's own PostgreSQL backends end with it, before the last sample: their CPU
    // is read on the way (every 50 polls) so that it counts as postgres, not as other.
    let mut backends: HashMap<u32, u64> = HashMap::new();
    let mut polls = 0u64;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(&pid) {
            peak = Some(kb);
        }
        if let Some((_, t)) = proc_ticks(&pid) {
            ticks = t;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        polls += 1;
        if polls.is_multiple_of(50) {
            if let Some(s) = cpu_sample(None) {
                backends.extend(s.postgres);
            }
        }
        std::thread::sleep(POLL);
    };
    let took = start.elapsed();
    let mut cpu1 = cpu_sample(None);
    if let Some(after) = cpu1.as_mut() {
        for (pid, t) in backends {
            after.postgres.entry(pid).or_insert(t);
        }
    }
    let cpu = with_child(&cpu0, &cpu1, ticks);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    if !status.success() {
        bail!("chronicle audit export --format {format} failed ({status}): {stderr}");
    }
    // "exported N events; last cursor ..."
    let events: u64 = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("exported "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("the export did not say how many events it wrote: {stderr}"))?;
    if events != expect as u64 {
        bail!("the {format} export wrote {events} events, the log holds {expect}");
    }
    let bytes = std::fs::metadata(file)?.len();
    Ok(Run {
        took,
        events,
        bytes,
        peak_rss_kb: peak,
        cpu,
    })
}

/// The raw baseline: the same columns of every event in the same order, COPYed to this
/// process (text or CSV with a header), counted and dropped.
async fn copy_out(pool: &PgPool, csv: bool, total: i64) -> anyhow::Result<Run> {
    let mut conn = pool.acquire().await?;
    let sql = format!(
        "COPY (SELECT {} FROM events ORDER BY tx, position) TO STDOUT{}",
        schemas::log::EVENT_COLUMNS,
        if csv { " (FORMAT csv, HEADER)" } else { "" }
    );
    let cpu0 = cpu_sample(None);
    let start = Instant::now();
    let mut out = conn.copy_out_raw(&sql).await?;
    let mut bytes = 0u64;
    while let Some(chunk) = out.try_next().await? {
        bytes += chunk.len() as u64;
    }
    let took = start.elapsed();
    Ok(Run {
        took,
        events: total as u64,
        bytes,
        peak_rss_kb: None,
        cpu: cpu_share(&cpu0, &cpu_sample(None)),
    })
}

/// The NDJSON route read to its end by a client: events = lines received.
async fn route(server: &Server, client: &reqwest::Client, token: &str) -> anyhow::Result<Run> {
    let cpu0 = cpu_sample(Some(server.pid()));
    let start = Instant::now();
    let mut r = client
        .get(format!("{}/v1/audit/events", server.base))
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "application/x-ndjson")
        .send()
        .await
        .context("GET /v1/audit/events")?;
    if !r.status().is_success() {
        let status = r.status();
        bail!("GET /v1/audit/events: {status} {}", r.text().await?);
    }
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(chunk) = r.chunk().await? {
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let took = start.elapsed();
    Ok(Run {
        took,
        events: lines,
        bytes,
        peak_rss_kb: None,
        cpu: cpu_share(&cpu0, &cpu_sample(Some(server.pid()))),
    })
}

/// `verify` in one REPEATABLE READ snapshot, as `chronicle audit verify` and the route do.
async fn verify(pool: &PgPool, total: i64) -> anyhow::Result<Run> {
    let cpu0 = cpu_sample(None);
    let start = Instant::now();
    let report = projections::chain::verify_snapshot(pool, |_| {}).await?;
    let took = start.elapsed();
    if !report.ok || report.checked != total as u64 {
        bail!(
            "verify: ok {}, checked {} of {total} events",
            report.ok,
            report.checked
        );
    }
    Ok(Run {
        took,
        events: report.checked,
        bytes: 0,
        peak_rss_kb: None,
        cpu: cpu_share(&cpu0, &cpu_sample(None)),
    })
}

/// Runs the mix until the log holds at least `target` events (positions of rolled-back
/// inserts leave gaps, so it goes on for the missing ones, as the rebuild's load does).
async fn load_up_to(
    shared: &Arc<Shared>,
    pool: &PgPool,
    clients: usize,
    target: i64,
    round: &mut u64,
    outcomes: &mut BTreeMap<&'static str, Outcome>,
) -> anyhow::Result<i64> {
    let mut total = count_events(pool).await?;
    let mut until = shared.max_position.load(Ordering::SeqCst) + (target - total);
    while total < target {
        let o = mix_round(shared, clients, until, 0x5EED + *round).await?;
        merge_outcomes(outcomes, o);
        total = count_events(pool).await?;
        until += target - total;
        *round += 1;
    }
    Ok(total)
}

fn median(runs: &[Run]) -> Option<&Run> {
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by_key(|r| r.took);
    sorted.get(sorted.len() / 2).copied()
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Mean of the CPU splits of `runs`, as "postgres / chronicle / bench / other / idle".
fn cpu_text(runs: &[Run]) -> String {
    let shares: Vec<CpuShare> = runs.iter().filter_map(|r| r.cpu).collect();
    if shares.is_empty() {
        return "?".to_owned();
    }
    let n = shares.len() as f64;
    let mean = |f: fn(&CpuShare) -> f64| shares.iter().map(f).sum::<f64>() / n * 100.0;
    format!(
        "{:.0} / {:.0} / {:.0} / {:.0} / {:.0}%",
        mean(|c| c.postgres),
        mean(|c| c.chronicle),
        mean(|c| c.bench),
        mean(|c| c.other_busy),
        mean(|c| c.idle + c.iowait)
    )
}

fn rss_list(runs: &[Run]) -> String {
    runs.iter()
        .map(|r| {
            r.peak_rss_kb
                .map_or("?".to_owned(), |kb| format!("{:.1}", mb(kb)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) async fn run_audit(ctx: &Ctx, admin_url: &str) -> anyhow::Result<()> {
    let a = &ctx.args;
    let clients = a.concurrency.max(1);
    let rounds = a.rounds.max(1);
    let small = a.rss_events.min(a.events);
    let dir = std::env::temp_dir();
    let ndjson_file = dir.join(format!("chronicle_bench_{}_audit.ndjson", ctx.run_id));
    let csv_file = dir.join(format!("chronicle_bench_{}_audit.csv", ctx.run_id));
    let _scratch = Scratch(vec![ndjson_file.clone(), csv_file.clone()]);

    // 1. The load, as the rebuild bench's: API only.
    let (mut server, minter, shared) = start_load_server(ctx, clients, "audit").await?;
    eprintln!(
        "audit: opening {} customers (account, EUR wallet, deposit; half with KYC)",
        a.accounts
    );
    let (people, mut outcomes) = open_people(&shared, &minter, a.accounts, clients).await?;
    let shared = Arc::new(shared.with_people(people));
    let pool = connect(&ctx.db_url, 4).await?;
    let load_start = Instant::now();
    let mut round = 0u64;
    eprintln!("audit: loading the mix from {clients} clients up to {small} events");
    let small_total = load_up_to(&shared, &pool, clients, small, &mut round, &mut outcomes).await?;
    let waited_small = wait_for_horizon(&pool, small_total).await?;
    let mut load_took = load_start.elapsed();

    // The export's memory on the smaller log (the server is idle meanwhile).
    eprintln!("audit: {rounds} NDJSON and CSV exports of {small_total} events");
    let mut small_ndjson = Vec::new();
    let mut small_csv = Vec::new();
    for _ in 0..rounds {
        small_ndjson.push(export_child(ctx, "ndjson", &ndjson_file, small_total)?);
        small_csv.push(export_child(ctx, "csv", &csv_file, small_total)?);
    }

    let mut total = small_total;
    let mut waited = waited_small;
    if a.events > small_total {
        eprintln!("audit: loading on up to {} events", a.events);
        let t0 = Instant::now();
        total = load_up_to(&shared, &pool, clients, a.events, &mut round, &mut outcomes).await?;
        load_took += t0.elapsed();
        waited += wait_for_horizon(&pool, total).await?;
    }
    server.stop();
    drop(server);
    sqlx::query("ANALYZE events").execute(&pool).await?;
    let per_type: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_type, count(*) FROM events GROUP BY stream_type ORDER BY 2 DESC",
    )
    .fetch_all(&pool)
    .await?;
    eprintln!(
        "audit: {total} events loaded in {:.1} s; sealing the chain",
        load_took.as_secs_f64()
    );

    // 2. The chain, sealed as the rebuild bench does it (plus one verify and one COPY).
    let chain = chain_figures(&pool, total).await?;
    if !chain.ok {
        bail!("the freshly sealed chain does not verify");
    }

    // 3. The rounds, against a fresh API server for the route.
    let server = ctx.start_server_with_roles("api").await?;
    let auditor = minter.mint("bench-auditor", &["auditor"])?;
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut runs: BTreeMap<Way, Vec<Run>> = BTreeMap::new();
    for r in 0..rounds {
        eprintln!("audit: round {} of {rounds} over {total} events", r + 1);
        for way in Way::ALL {
            let run = match way {
                Way::CopyText => copy_out(&pool, false, total).await?,
                Way::CopyCsv => copy_out(&pool, true, total).await?,
                Way::ExportNdjson => export_child(ctx, "ndjson", &ndjson_file, total)?,
                Way::ExportCsv => export_child(ctx, "csv", &csv_file, total)?,
                Way::Route => route(&server, &client, &auditor).await?,
                Way::Verify => verify(&pool, total).await?,
            };
            if run.events != total as u64 {
                bail!("{} read {} of {total} events", way.label(), run.events);
            }
            eprintln!(
                "audit:   {:<40} {:>7.2} s  {:>9.0} events/s",
                way.label(),
                run.took.as_secs_f64(),
                run.rate()
            );
            runs.entry(way).or_default().push(run);
        }
    }
    let server_hwm = vm_hwm_kb(&server.pid().to_string());
    drop(server);
    pool.close().await;

    // 4. Report.
    let setup = describe_setup(admin_url, ctx).await;
    println!();
    println!("==== Chronicle benchmark: audit ====");
    println!("{setup}");
    println!();
    let types: Vec<String> = per_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "Load (the rebuild's mix, chronicle serve --roles api, {clients} clients, {} customers): \
         {total} events in {:.1} s ({})",
        a.accounts,
        load_took.as_secs_f64(),
        types.join(", ")
    );
    if waited > Duration::from_millis(100) {
        println!(
            "  waited {:.1} s for a transaction elsewhere in the cluster holding the log's \
             horizon back",
            waited.as_secs_f64()
        );
    }
    print_outcomes(&outcomes);
    println!();
    println!(
        "Chain sealed from position 0 in {:.2} s ({:.0} events/s); first verify {:.2} s, first \
         COPY {:.2} s ({:.1} MB), not counted below",
        chain.seal.as_secs_f64(),
        total as f64 / chain.seal.as_secs_f64(),
        chain.verify.as_secs_f64(),
        chain.copy.as_secs_f64(),
        chain.copy_bytes as f64 / 1e6
    );
    println!();
    println!(
        "Peak RSS of the export process (VmHWM of /proc/<pid>/status read every {} ms until it \
         exited), MB per round:",
        POLL.as_millis()
    );
    let peak = |runs: &[Run]| runs.iter().filter_map(|r| r.peak_rss_kb).max();
    let rows = [
        ("ndjson", small_total, &small_ndjson[..]),
        ("csv", small_total, &small_csv[..]),
        (
            "ndjson",
            total,
            runs.get(&Way::ExportNdjson).map_or(&[][..], |v| &v[..]),
        ),
        (
            "csv",
            total,
            runs.get(&Way::ExportCsv).map_or(&[][..], |v| &v[..]),
        ),
    ];
    for (format, events, r) in rows {
        let rate = median(r).map_or(0.0, Run::rate);
        println!(
            "  --format {format:<6} {events:>9} events: {}  (max {:.1} MB; {rate:.0} events/s)",
            rss_list(r),
            peak(r).map_or(f64::NAN, mb)
        );
    }
    for (format, small_runs, way) in [
        ("ndjson", &small_ndjson, Way::ExportNdjson),
        ("csv", &small_csv, Way::ExportCsv),
    ] {
        if let (Some(s), Some(l)) = (peak(small_runs), runs.get(&way).and_then(|r| peak(r))) {
            println!(
                "  {format}: peak at {total} events / peak at {small_total} events = {:.3}",
                l as f64 / s as f64
            );
        }
    }
    if let Some(kb) = server_hwm {
        println!(
            "  (the API server that streamed the route {rounds} times: peak RSS {:.1} MB over its life)",
            mb(kb)
        );
    }
    println!();
    println!(
        "Reading all {total} events, {rounds} rounds (median round; ratio = events/s / raw COPY \
         text events/s; CPU = mean share of the 2 cores: postgres / chronicle / bench / other / \
         idle):"
    );
    println!(
        "  {:<40} {:>8} {:>10} {:>9} {:>7}  {:<24} rounds (s)",
        "", "median s", "events/s", "MB", "ratio", "CPU"
    );
    let base = runs
        .get(&Way::CopyText)
        .and_then(|r| median(r))
        .map_or(f64::NAN, Run::rate);
    for (way, r) in &runs {
        let Some(m) = median(r) else { continue };
        let each: Vec<String> = r
            .iter()
            .map(|x| format!("{:.2}", x.took.as_secs_f64()))
            .collect();
        println!(
            "  {:<40} {:>8.2} {:>10.0} {:>9.1} {:>7.3}  {:<24} {}",
            way.label(),
            m.took.as_secs_f64(),
            m.rate(),
            m.bytes as f64 / 1e6,
            m.rate() / base,
            cpu_text(r),
            each.join(", ")
        );
    }
    for way in [Way::ExportNdjson, Way::ExportCsv, Way::Route, Way::Verify] {
        let ratio = runs
            .get(&way)
            .and_then(|r| median(r))
            .map_or(f64::NAN, |m| m.rate() / base);
        println!(
            "ratio {} / raw COPY text: {ratio:.3} (target >= 0.5: {})",
            way.label(),
            if ratio >= 0.5 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
