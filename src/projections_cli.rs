//! `chronicle projections status | rebuild <name|all> | retry <name|all>`, and the projector
//! workers `serve` runs.

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use projections::fanout::{FanoutConfig, FanoutProjector};
use projections::{rebuild, Projector, Worker, WorkerConfig};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Starts one worker per projector; each waits as a standby while another process holds its
/// lease.
pub fn spawn_workers(
    pool: &PgPool,
    wake: watch::Receiver<std::collections::BTreeMap<&'static str, u64>>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let mut projectors = projections::all();
    // The hash chain of the log is kept like a read model, but never rebuilt.
    projectors.push(Arc::new(projections::chain::ChainProjector));
    projectors
        .into_iter()
        .map(|projector| {
            let worker = Worker::live(pool.clone(), projector, WorkerConfig::default());
            tokio::spawn(worker.run(Some(wake.clone()), shutdown.clone()))
        })
        .collect()
}

/// Starts the event fan-out to NATS JetStream: connects (retrying while NATS is away), makes
/// sure the `EVENTS` stream exists, then runs the `fanout` projector like the others (its
/// lease makes one process publish at a time).
pub fn spawn_fanout(
    pool: PgPool,
    url: String,
    wake: watch::Receiver<std::collections::BTreeMap<&'static str, u64>>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = std::time::Duration::from_secs(1);
        let projector = loop {
            let started = match ingest::nats::connect(&url).await {
                Ok(client) => FanoutProjector::start(client, FanoutConfig::default()).await,
                Err(e) => Err(e.to_string()),
            };
            match started {
                Ok(p) => break p,
                Err(error) => {
                    tracing::warn!(%error, "event fan-out cannot start yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => return,
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(30));
                }
            }
        };
        tracing::info!("event fan-out to NATS JetStream (stream EVENTS) is running");
        let worker = Worker::live(pool, Arc::new(projector), WorkerConfig::default());
        if let Err(error) = worker.run(Some(wake), shutdown).await {
            tracing::error!(%error, "the event fan-out stopped");
        }
    })
}

fn select(name: &str) -> anyhow::Result<Vec<Arc<dyn Projector>>> {
    if name == "all" {
        return Ok(projections::all());
    }
    match projections::by_name(name) {
        Some(p) => Ok(vec![p]),
        None => {
            let names: Vec<_> = projections::all().iter().map(|p| p.name()).collect();
            anyhow::bail!("no projector {name:?}; known: {}, or all", names.join(", "))
        }
    }
}

/// Prints every projector's position, lag and parked events.
pub async fn status(pool: &PgPool) -> anyhow::Result<()> {
    let rows = projections::status::status(pool).await?;
    println!(
        "{:<22} {:>12} {:>12} {:>10} {:>10} {:>8}",
        "projector", "position", "applied", "lag", "lag (s)", "parked"
    );
    for name in projections::all().iter().map(|p| p.name()) {
        if !rows.iter().any(|r| r.name == name) {
            println!("{name:<22} {:>12} (not started)", "-");
        }
    }
    for r in rows {
        println!(
            "{:<22} {:>12} {:>12} {:>10} {:>10.1} {:>8}",
            r.name, r.position, r.applied, r.lag_events, r.lag_seconds, r.parked
        );
    }
    Ok(())
}

/// Rebuilds `name` (or all) into shadow tables with a progress bar, then swaps them in.
pub async fn rebuild_cmd(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let projectors = select(name)?;
    // The shared reader, one connection per projector applying, and one to spare.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(projectors.len() as u32 + 2)
        .connect_with((*pool.connect_options()).clone())
        .await
        .context("cannot connect to PostgreSQL")?;
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}",
    )
    .context("progress style")?
    .progress_chars("=> ");
    let mut by_name = HashMap::new();
    let mut resumed_from = HashMap::new();
    for projector in &projectors {
        let pname = projector.name();
        let types: Vec<String> = projector
            .stream_types()
            .iter()
            .map(|t| t.to_string())
            .collect();
        let start = rebuild::prepare(&pool, projector.as_ref()).await?;
        let (total, done): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE (tx, position) <= ($2, $3)) \
             FROM events WHERE stream_type = ANY($1)",
        )
        .bind(&types)
        .bind(start.tx)
        .bind(start.position)
        .fetch_one(&pool)
        .await?;
        if done > 0 {
            bars.println(format!(
                "{pname}: resuming an interrupted rebuild at position {}",
                start.position
            ))?;
        }
        let bar = bars.add(ProgressBar::new(total.max(0) as u64));
        bar.set_style(style.clone());
        bar.set_prefix(pname);
        bar.set_position(done.max(0) as u64);
        resumed_from.insert(pname, done.max(0) as u64);
        by_name.insert(pname, bar);
    }
    let begun = std::time::Instant::now();
    let bars_of = by_name.clone();
    rebuild::build_all(&pool, projectors.clone(), move |pname, n, _| {
        if let Some(bar) = bars_of.get(pname) {
            if bar.position() + n as u64 > bar.length().unwrap_or(0) {
                bar.set_length(bar.position() + n as u64);
            }
            bar.inc(n as u64);
        }
    })
    .await
    .with_context(|| format!("rebuilding {name}"))?;
    let secs = begun.elapsed().as_secs_f64();
    for bar in by_name.values() {
        bar.finish();
    }
    let read: u64 = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?
        .max(0) as u64;
    println!(
        "rebuilt {} projector(s) in {secs:.1} s, reading the log of {read} events once ({:.0} events/s)",
        projectors.len(),
        read as f64 / secs.max(1e-9)
    );
    let mut parked_in_all = 0;
    for projector in projectors {
        let pname = projector.name();
        let at = rebuild::swap(&pool, projector.clone())
            .await
            .with_context(|| format!("swapping the rebuilt {pname} tables in"))?;
        let took = by_name[pname].position() - resumed_from[pname];
        println!(
            "{pname}: took in {took} events of its streams, live at position {}",
            at.position
        );
        // Events that failed to apply (an event this build cannot decode, say) are parked,
        // with the later events of their streams: the rebuilt read model lacks them.
        let parked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM projection_parked WHERE projector = $1")
                .bind(pname)
                .fetch_one(&pool)
                .await?;
        if parked > 0 {
            eprintln!(
                "{pname}: {parked} events are parked (each failed to apply, or follows one \
                 that did in its stream) and missing from the read model: see \
                 `chronicle projections status` and the projection_parked table; after a \
                 fix, `chronicle projections retry {pname}`"
            );
            parked_in_all += parked;
        }
    }
    pool.close().await;
    if parked_in_all > 0 {
        anyhow::bail!("the rebuilt read models are live, but {parked_in_all} events are parked");
    }
    Ok(())
}

/// Re-applies the parked events of `name` (or all).
pub async fn retry_cmd(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    for projector in select(name)? {
        let report = projections::retry_parked(
            pool,
            projector.as_ref(),
            projector.name(),
            projections::runtime::LIVE_SCHEMA,
        )
        .await?;
        println!(
            "{}: {} parked events applied, {} still parked",
            projector.name(),
            report.applied,
            report.still_parked
        );
    }
    Ok(())
}
