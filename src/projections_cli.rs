//! `chronicle projections status | rebuild <name|all> | retry <name|all>`, and the projector
//! workers `serve` runs.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use projections::{rebuild, Projector, Worker, WorkerConfig};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::watch;

/// Starts one worker per projector; each waits as a standby while another process holds its
/// lease.
pub fn spawn_workers(
    pool: &PgPool,
    wake: watch::Receiver<std::collections::BTreeMap<&'static str, u64>>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    projections::all()
        .into_iter()
        .map(|projector| {
            let worker = Worker::live(pool.clone(), projector, WorkerConfig::default());
            tokio::spawn(worker.run(Some(wake.clone()), shutdown.clone()))
        })
        .collect()
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
    for projector in select(name)? {
        let pname = projector.name();
        let types: Vec<String> = projector
            .stream_types()
            .iter()
            .map(|t| t.to_string())
            .collect();
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_type = ANY($1)")
                .bind(&types)
                .fetch_one(pool)
                .await?;
        let start = rebuild::prepare(pool, projector.as_ref()).await?;
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE (tx, position) <= ($1, $2)")
                .bind(start.tx)
                .bind(start.position)
                .fetch_one(pool)
                .await?;
        if done > 0 {
            eprintln!(
                "{pname}: resuming an interrupted rebuild at position {}",
                start.position
            );
        }
        let bar = ProgressBar::new(total.max(0) as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}",
            )
            .context("progress style")?
            .progress_chars("=> "),
        );
        bar.set_prefix(pname);
        bar.set_position(done.max(0) as u64);
        let begun = std::time::Instant::now();
        rebuild::build_shadow(pool, projector.clone(), |n, _| {
            if bar.position() + n as u64 > bar.length().unwrap_or(0) {
                bar.set_length(bar.position() + n as u64);
            }
            bar.inc(n as u64)
        })
        .await
        .with_context(|| format!("rebuilding {pname}"))?;
        bar.finish();
        let at = rebuild::swap(pool, projector.clone())
            .await
            .with_context(|| format!("swapping the rebuilt {pname} tables in"))?;
        let secs = begun.elapsed().as_secs_f64();
        println!(
            "{pname}: rebuilt from {} events of its streams in {secs:.1} s ({:.0} events/s), live at position {}",
            bar.position().saturating_sub(done.max(0) as u64),
            bar.position().saturating_sub(done.max(0) as u64) as f64 / secs.max(1e-9),
            at.position
        );
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
