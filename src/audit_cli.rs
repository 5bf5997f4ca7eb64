//! `chronicle audit verify`: the hash chain of the log, recomputed with a progress bar.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

/// Verifies the chain in one `REPEATABLE READ` snapshot and prints the report; true when the
/// chain holds.
pub async fn verify(pool: &PgPool) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM event_chain")
        .fetch_one(&mut *tx)
        .await?;
    let bar = ProgressBar::new(links.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("verify [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}")
            .context("progress style")?
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let report = projections::chain::verify(&mut tx, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    tx.rollback().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "checked {} events in {secs:.1} s ({:.0} events/s); sealed up to position {}; {} newer \
         events not sealed yet",
        report.checked,
        report.checked as f64 / secs.max(1e-9),
        report.sealed_position,
        report.unsealed
    );
    println!("head hash: {}", report.head_hash);
    match &report.first_break {
        None => println!("the chain holds"),
        Some(b) => println!(
            "BROKEN at position {} ({}): {}",
            b.position, b.kind, b.detail
        ),
    }
    Ok(report.ok)
}
