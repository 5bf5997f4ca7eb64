//! `chronicle audit verify`: the hash chain of the log, recomputed with a progress bar;
//! `chronicle audit export`: the log (filtered) as NDJSON or CSV, resumable.

use anyhow::Context;
use api::audit_export::{self, Format};
use commands::audit::{self, LogFilter, STREAM_TYPES};
use indicatif::{ProgressBar, ProgressStyle};
use schemas::Cursor;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Verifies the chain in one `REPEATABLE READ` snapshot and prints the report; true when the
/// chain holds.
pub async fn verify(pool: &PgPool) -> anyhow::Result<bool> {
    // The bar's length is read before the snapshot; it grows if the chain has grown since.
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM event_chain")
        .fetch_one(pool)
        .await?;
    let bar = ProgressBar::new(links.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("verify [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}")
            .context("progress style")?
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let report = projections::chain::verify_snapshot(pool, |n| {
        if bar.position() + n > bar.length().unwrap_or(0) {
            bar.set_length(bar.position() + n);
        }
        bar.inc(n)
    })
    .await?;
    bar.finish_and_clear();
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

/// The arguments of `chronicle audit export`.
pub struct ExportArgs {
    /// Only events that occurred at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only events that occurred before this time (RFC 3339).
    pub to: Option<String>,
    /// Only this stream type.
    pub stream_type: Option<String>,
    /// ndjson or csv.
    pub format: Format,
    /// Start after this cursor (`<tx>-<position>`) or log position.
    pub after: Option<String>,
    /// Write here instead of stdout (with a `<output>.cursor` file beside it).
    pub output: Option<PathBuf>,
    /// Append to `output` after the cursor in `<output>.cursor`.
    pub resume: bool,
    /// Stop after this many events.
    pub limit: Option<i64>,
}

fn time_arg(name: &str, raw: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| anyhow::anyhow!("--{name} {raw:?} is not an RFC 3339 time ({e})"))
}

fn cursor_path(output: &Path) -> PathBuf {
    let mut p = output.as_os_str().to_owned();
    p.push(".cursor");
    PathBuf::from(p)
}

/// Exports the log with a progress bar on stderr; prints the last cursor to stderr at the end
/// and on Ctrl-C, and keeps it in `<output>.cursor` after every batch.
pub async fn export(pool: &PgPool, args: ExportArgs) -> anyhow::Result<()> {
    let mut filter = LogFilter {
        from: args
            .from
            .as_deref()
            .map(|t| time_arg("from", t))
            .transpose()?,
        to: args.to.as_deref().map(|t| time_arg("to", t)).transpose()?,
        ..LogFilter::default()
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        anyhow::ensure!(from < to, "--from must be before --to");
    }
    if let Some(t) = &args.stream_type {
        anyhow::ensure!(
            STREAM_TYPES.contains(&t.as_str()),
            "unknown stream type {t:?}: use one of {}",
            STREAM_TYPES.join(", ")
        );
        filter.stream_type = Some(t.clone());
    }
    let cursor_file = args.output.as_deref().map(cursor_path);
    let mut after = match &args.after {
        Some(raw) => audit_export::parse_cursor(pool, raw).await?,
        None => Cursor::START,
    };
    let mut append = false;
    if args.resume {
        anyhow::ensure!(args.output.is_some(), "--resume needs --output");
        anyhow::ensure!(
            args.after.is_none(),
            "use either --resume or --after, not both"
        );
        if let Some(path) = cursor_file.as_deref().filter(|p| p.exists()) {
            let raw = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            after = audit_export::parse_cursor(pool, &raw).await?;
            append = true;
        }
    }
    if !append {
        // A fresh export: a cursor left by an earlier one must not be resumed into it.
        if let Some(path) = cursor_file.as_deref().filter(|p| p.exists()) {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            Box::new(std::io::BufWriter::new(file))
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("export [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}")
            .context("progress style")?
            .progress_chars("=> "),
    );
    // The bar's total is a count(*) of the range, which costs a scan of it: taken on the
    // side while the export runs, and only when the bar is drawn at all (stderr a terminal).
    if std::io::stderr().is_terminal() {
        let (pool, filter, bar, limit) = (pool.clone(), filter.clone(), bar.clone(), args.limit);
        tokio::spawn(async move {
            if let Ok(total) = audit::log_count(&pool, after, &filter).await {
                let total = limit.map_or(total, |l| total.min(l)).max(0) as u64;
                bar.set_length(total.max(bar.position()));
            }
        });
    }
    let last = Cell::new(after);
    // Events written (the bar's position is set to its length when it is finished).
    let written = Cell::new(0u64);
    let mut cursor_error = None;
    let run = audit_export::export_to(
        pool,
        after,
        filter,
        args.limit,
        args.format,
        !append,
        &mut out,
        |n, c| {
            bar.inc(n);
            written.set(written.get() + n);
            last.set(c);
            if let Some(path) = &cursor_file {
                if let Err(e) = std::fs::write(path, audit_export::format_cursor(c)) {
                    cursor_error.get_or_insert(e);
                }
            }
        },
    );
    let result = tokio::select! {
        r = run => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    bar.finish_and_clear();
    let cursor = audit_export::format_cursor(last.get());
    if let Some(e) = cursor_error {
        eprintln!("could not keep the cursor file: {e}");
    }
    match result {
        None => {
            eprintln!("interrupted; resume with --after {cursor}");
            std::process::exit(130);
        }
        Some(Err(e)) => {
            eprintln!("export stopped; resume with --after {cursor}");
            Err(e.into())
        }
        Some(Ok(end)) => {
            if let Some(path) = &cursor_file {
                std::fs::write(path, audit_export::format_cursor(end))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!("exported {} events; last cursor {cursor}", written.get());
            Ok(())
        }
    }
}
