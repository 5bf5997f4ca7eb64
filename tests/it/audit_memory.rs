//! `chronicle audit export` runs in constant memory: the peak resident set of the export
//! process (the built binary, a child of the test) on a log ten times longer is no larger,
//! give or take allocator noise. No timing is asserted.

use crate::support::TestDb;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Appends `n` events after the `done` already there: streams of 10 deposits-like events
/// each, with payloads of a realistic size (about 300 bytes), in one statement.
async fn append_events(pool: &sqlx::PgPool, done: i64, n: i64) {
    sqlx::query(
        "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, \
         schema_version, payload, actor_sub, actor_role, command_id, correlation_id, \
         causation_id, occurred_at) \
         SELECT gen_random_uuid(), 'wallet', lpad(to_hex(v / 10), 32, '0')::uuid, v % 10 + 1, \
                'FundsDeposited', 1, \
                jsonb_build_object('amount', 100 + v % 5000, 'currency', 'EUR', \
                    'external_ref', 'psp-' || md5(v::text), 'balance_after', v * 7, \
                    'memo', 'a deposit of the memory test, number ' || v, \
                    'meta', jsonb_build_object('channel', 'sepa', 'batch', v / 1000, \
                        'note', repeat('x', 80))), \
                'psp-memory-test', 'payments', gen_random_uuid(), gen_random_uuid(), \
                CASE WHEN v % 3 = 0 THEN gen_random_uuid() END, \
                now() + v * interval '1 millisecond' \
         FROM generate_series($1, $2 - 1) AS v",
    )
    .bind(done)
    .bind(done + n)
    .execute(pool)
    .await
    .expect("insert events");
}

/// Waits until no event of the log is above the horizon (other tests' transactions in the
/// shared cluster hold it back for a while), so the export reads all of them.
async fn settle(pool: &sqlx::PgPool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events \
             WHERE tx >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(pool)
        .await
        .expect("the horizon");
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} events stay above the horizon"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `VmHWM` of /proc/<pid>/status in kB (absent once the process has exited).
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `chronicle audit export --format ndjson --output <file>` to its end; its peak RSS
/// in kB (the last VmHWM read before it exited, every 2 ms: VmHWM only grows) and the lines
/// it wrote.
fn export(url: &str, file: &Path, stderr: &Path) -> (u64, u64) {
    let err = std::fs::File::create(stderr).expect("a file for the export's stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(["audit", "export", "--format", "ndjson", "--output"])
        .arg(file)
        .env("DATABASE_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start chronicle audit export");
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak = kb;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        status.success(),
        "the export failed: {}",
        std::fs::read_to_string(stderr).unwrap_or_default()
    );
    assert!(peak > 0, "the export's VmHWM was read");
    let text = std::fs::read(file).expect("the export file");
    let lines = text.iter().filter(|b| **b == b'\n').count() as u64;
    (peak, lines)
}

/// Removes the export's files at the end, also when the test fails.
struct Files(Vec<PathBuf>);

impl Drop for Files {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ndjson_export_of_a_ten_times_longer_log_needs_no_more_memory() {
    let db = TestDb::with_pool_size(2).await;
    let file = std::env::temp_dir().join(format!("{}.ndjson", db.name));
    let cursor = std::env::temp_dir().join(format!("{}.ndjson.cursor", db.name));
    let stderr = std::env::temp_dir().join(format!("{}.stderr", db.name));
    let _files = Files(vec![file.clone(), cursor, stderr.clone()]);

    append_events(&db.pool, 0, 20_000).await;
    settle(&db.pool).await;
    let (small, lines) = export(&db.url, &file, &stderr);
    assert_eq!(lines, 20_000);

    append_events(&db.pool, 20_000, 180_000).await;
    settle(&db.pool).await;
    let (large, lines) = export(&db.url, &file, &stderr);
    assert_eq!(lines, 200_000);

    // Held in memory, 180,000 more events of ~600 bytes of NDJSON would be over 100 MB.
    let bound = small + small / 2 + 8 * 1024;
    assert!(
        large <= bound,
        "peak RSS {large} kB at 200,000 events against {small} kB at 20,000 (bound {bound} kB)"
    );
    eprintln!("export peak RSS: {small} kB at 20,000 events, {large} kB at 200,000 events");
}
