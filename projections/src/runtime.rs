//! The projector runtime: named projectors tail the log through [`schemas::log::read_all`],
//! apply events in batches and move their checkpoint in the same transaction as their
//! read-model writes, so each event takes effect exactly once.
//!
//! - **One active instance** of each projector across processes: a session advisory lock
//!   (the lease) held on a dedicated connection. Every batch also locks the checkpoint row and
//!   checks it still holds the cursor the batch was read from, so even two instances that both
//!   believe they hold the lease can never apply an event twice.
//! - **Wake-up**: an in-process signal from the command service after each commit, and a short
//!   poll for commits made by other processes. The cursor, not the wake-up, decides what is read.
//! - **Poison events**: a batch that fails with a deterministic error is re-applied event by
//!   event; an event that still fails after [`WorkerConfig::attempts`] tries is parked in
//!   `projection_parked` with its error, together with every later event of its stream, while
//!   the projector goes on with other streams. [`retry_parked`] applies them after a fix.
//! - **Transient failures** (connection lost, serialization failure, ...) are retried with
//!   backoff for as long as they last; they never park anything.

use async_trait::async_trait;
use schemas::{Cursor, RecordedEvent};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// Why a projector could not apply a batch.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The events cannot be applied as they are (an undecodable payload, a violated
    /// read-model constraint): retrying will not help until the code or data is fixed.
    #[error("{0}")]
    Poison(String),
    /// The database failed; whether retrying helps depends on the error.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl ApplyError {
    /// True for failures that a later attempt can get past without any fix (connection,
    /// serialization, deadlock, resources).
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Poison(_) => false,
            ApplyError::Db(e) => is_transient(e),
        }
    }
}

/// True for database errors that a later attempt can get past without any fix.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // 22 data exception, 23 integrity violation, 42 syntax or undefined object,
            // P0 raised by a function, XX internal: the same events fail again.
            !(code.starts_with("22")
                || code.starts_with("23")
                || code.starts_with("42")
                || code.starts_with("P0")
                || code.starts_with("XX"))
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => false,
        _ => true,
    }
}

/// A read model kept from the log.
///
/// `apply` runs inside the batch's transaction with `search_path` set to the schema being
/// written (the live tables, or a rebuild's shadow tables), so its SQL names its tables
/// unqualified. It must depend on the events alone (never on `now()` or randomness), so that
/// a rebuild produces the same rows as the live projector.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The stable name: checkpoint, lease, metrics and CLI all use it.
    fn name(&self) -> &'static str;

    /// The tables it owns, in the order a rebuild creates and swaps them.
    fn tables(&self) -> &'static [&'static str];

    /// The stream types (`wallet`, `order`, ...) whose events it reads; the checkpoint moves
    /// past all others without calling `apply`.
    fn stream_types(&self) -> &'static [&'static str];

    /// Applies `events` (in log order, all of `stream_types`) to the read model.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError>;

    /// Hands a batch to a receiver outside the database before the batch's transaction
    /// (the event fan-out publishes here); the checkpoint moves past the batch only once this
    /// returned `Ok`, so a batch may be delivered again after a failure or a crash, never
    /// skipped. It runs outside any transaction, so a slow or failing receiver never holds
    /// back the log's readable horizon for the other readers; a failure is retried with
    /// backoff for as long as it lasts and never parks anything. By default, nothing.
    async fn deliver(&self, _events: &[RecordedEvent]) -> Result<(), String> {
        Ok(())
    }

    /// Whether it takes events as stored, personal fields sealed (the fan-out: personal data
    /// never leaves the database in the clear), rather than opened. By default, opened.
    fn takes_sealed(&self) -> bool {
        false
    }

    /// Indexes of its tables (their names in the live schema) that `apply` neither needs for
    /// its look-ups nor for an `ON CONFLICT`: a rebuild creates them only after the shadow
    /// tables are filled ([`crate::rebuild::finish`]), one sorted build each instead of an
    /// index entry per row on the way. A primary key may be named here only for a table
    /// `apply` appends to and never reads, updates or upserts. By default, none.
    fn indexes_built_last(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Up to `limit` events of `projector`'s stream types after `after` (see
/// [`schemas::log::read_types`]), personal fields opened unless it takes them sealed.
pub(crate) async fn read_for(
    conn: &mut PgConnection,
    after: Cursor,
    limit: i64,
    projector: &dyn Projector,
) -> Result<(Vec<RecordedEvent>, Cursor), sqlx::Error> {
    let (mut events, end) =
        schemas::log::read_types(&mut *conn, after, limit, projector.stream_types()).await?;
    if !projector.takes_sealed() {
        schemas::personal::open(&mut *conn, &mut events).await?;
    }
    Ok((events, end))
}

/// How a worker reads and retries.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Events read and applied per transaction.
    pub batch: i64,
    /// How often an idle worker looks for commits of other processes.
    pub idle_poll: Duration,
    /// How often an event is tried before it is parked.
    pub attempts: u32,
    /// The pause before the first retry (doubled each time).
    pub backoff: Duration,
    /// After a commit signal wakes an idle worker, how long it lets further commits gather
    /// before it reads: fewer, larger batches under load, at a bounded cost in latency.
    pub coalesce: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch: 1000,
            idle_poll: Duration::from_millis(50),
            attempts: 3,
            backoff: Duration::from_millis(50),
            coalesce: Duration::from_millis(10),
        }
    }
}

/// The live tables' schema.
pub const LIVE_SCHEMA: &str = "public";

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing new in the log.
    Idle,
    /// This many events were taken in (applied or parked).
    Took(usize),
    /// Another instance moved the checkpoint; the worker now stands where it does.
    Moved,
}

/// One projector applying the log to one set of tables.
pub struct Worker {
    pool: PgPool,
    projector: Arc<dyn Projector>,
    /// The checkpoint (and parking) key: the projector's name, or `rebuild:<name>`.
    key: String,
    /// The schema written to.
    schema: String,
    config: WorkerConfig,
    cursor: Cursor,
    /// The next batch, being read from the cursor it names.
    prefetched: Option<(Cursor, ReadAhead)>,
}

type ReadAhead = tokio::task::JoinHandle<Result<(Vec<RecordedEvent>, Cursor), sqlx::Error>>;

/// The checkpoint key of a projector's rebuild.
pub fn rebuild_key(name: &str) -> String {
    format!("rebuild:{name}")
}

impl Worker {
    /// A worker on the live tables.
    pub fn live(pool: PgPool, projector: Arc<dyn Projector>, config: WorkerConfig) -> Self {
        let key = projector.name().to_owned();
        Self::new(pool, projector, key, LIVE_SCHEMA.to_owned(), config)
    }

    /// A worker writing `schema` under checkpoint `key`.
    pub fn new(
        pool: PgPool,
        projector: Arc<dyn Projector>,
        key: String,
        schema: String,
        config: WorkerConfig,
    ) -> Self {
        Self {
            pool,
            projector,
            key,
            schema,
            config,
            cursor: Cursor::START,
            prefetched: None,
        }
    }

    /// The projector's name.
    pub fn name(&self) -> &'static str {
        self.projector.name()
    }

    /// Where the worker stands.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Creates the checkpoint row if missing and loads the cursor from it.
    pub async fn load(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO public.projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(&self.key)
        .execute(&self.pool)
        .await?;
        let (tx, position): (i64, i64) = sqlx::query_as(
            "SELECT tx, position FROM public.projection_checkpoints WHERE name = $1",
        )
        .bind(&self.key)
        .fetch_one(&self.pool)
        .await?;
        self.cursor = Cursor { tx, position };
        Ok(())
    }

    /// Reads the next batch and takes it in. Transient failures come back as errors (nothing
    /// was applied); deterministic ones end in parking, never in an error.
    ///
    /// Only events of the projector's stream types are read; the cursor also moves past the
    /// others. While a full batch is being applied, the next one is already being read on
    /// another connection.
    pub async fn step(&mut self) -> Result<Step, sqlx::Error> {
        let (events, end) = match self.prefetched.take() {
            Some((from, handle)) if from == self.cursor => match handle.await {
                Ok(read) => read?,
                Err(_) => self.read(self.cursor).await?,
            },
            Some((_, handle)) => {
                handle.abort();
                self.read(self.cursor).await?
            }
            None => self.read(self.cursor).await?,
        };
        if events.is_empty() && end <= self.cursor {
            return Ok(Step::Idle);
        }
        if events.len() as i64 >= self.config.batch {
            let pool = self.pool.clone();
            let projector = self.projector.clone();
            let batch = self.config.batch;
            let handle = tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                read_for(&mut conn, end, batch, projector.as_ref()).await
            });
            self.prefetched = Some((end, handle));
        }
        let step = self.take(&events, end).await?;
        if let Step::Took(_) = step {
            record_metrics(self.projector.name(), &self.key, &events, self.config.batch);
        }
        Ok(step)
    }

    /// Takes in a batch that a shared reader read for several workers: `events` are the
    /// batch's events of this projector's stream types, `end` the cursor the reader reached
    /// (every event up to it was in this batch or an earlier one). Events at or before the
    /// worker's cursor (a resumed worker) are skipped.
    pub async fn feed(
        &mut self,
        events: &[RecordedEvent],
        end: Cursor,
    ) -> Result<Step, sqlx::Error> {
        if end <= self.cursor {
            return Ok(Step::Idle);
        }
        let skip = events.partition_point(|e| e.cursor() <= self.cursor);
        let events = &events[skip..];
        let step = self.take(events, end).await?;
        if let Step::Took(_) = step {
            record_metrics(self.projector.name(), &self.key, events, self.config.batch);
        }
        Ok(step)
    }

    async fn read(&self, after: Cursor) -> Result<(Vec<RecordedEvent>, Cursor), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        read_for(&mut conn, after, self.config.batch, self.projector.as_ref()).await
    }

    /// Steps until the worker has taken in every event committed when it was called;
    /// `progress` gets each batch's size and the cursor reached. (An empty read alone does
    /// not mean the end: any transaction open anywhere in the cluster holds the readable
    /// horizon back for a moment.)
    pub async fn catch_up(
        &mut self,
        mut progress: impl FnMut(usize, Cursor),
    ) -> Result<(), sqlx::Error> {
        let head = schemas::log::head(&self.pool).await?;
        loop {
            match self.step().await? {
                Step::Idle => match head {
                    Some(h) if self.cursor < h => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    _ => return Ok(()),
                },
                Step::Took(n) => progress(n, self.cursor),
                Step::Moved => {}
            }
        }
    }

    async fn take(&mut self, events: &[RecordedEvent], end: Cursor) -> Result<Step, sqlx::Error> {
        if !events.is_empty() {
            if let Err(e) = self.projector.deliver(events).await {
                return Err(sqlx::Error::Protocol(format!("delivery failed: {e}")));
            }
        }
        match self.commit(events, end, None).await? {
            Ok(step) => Ok(step),
            Err(error) if events.len() == 1 => self.retry_or_park(&events[0], end, error).await,
            Err(_) => {
                // Find the poison: every event on its own, each with its own retries.
                let mut took = 0;
                for event in events {
                    let at = event.cursor();
                    let step = match self.commit(std::slice::from_ref(event), at, None).await? {
                        Ok(step) => step,
                        Err(error) => self.retry_or_park(event, at, error).await?,
                    };
                    match step {
                        Step::Took(n) => took += n,
                        Step::Moved => return Ok(Step::Moved),
                        Step::Idle => {}
                    }
                }
                if end > self.cursor {
                    match self.commit(&[], end, None).await? {
                        Ok(Step::Moved) => return Ok(Step::Moved),
                        Ok(_) => {}
                        Err(e) => return Err(sqlx::Error::Protocol(e)),
                    }
                }
                Ok(Step::Took(took))
            }
        }
    }

    async fn retry_or_park(
        &mut self,
        event: &RecordedEvent,
        end: Cursor,
        mut error: String,
    ) -> Result<Step, sqlx::Error> {
        let mut pause = self.config.backoff;
        for _ in 1..self.config.attempts.max(1) {
            tokio::time::sleep(pause).await;
            pause *= 2;
            match self.commit(std::slice::from_ref(event), end, None).await? {
                Ok(step) => return Ok(step),
                Err(e) => error = e,
            }
        }
        tracing::error!(
            projector = self.projector.name(),
            position = event.position,
            stream_id = %event.stream_id,
            event_type = %event.event_type,
            %error,
            "parking an event that keeps failing, with the later events of its stream"
        );
        let parked = (error, self.config.attempts.max(1) as i32);
        match self
            .commit(std::slice::from_ref(event), end, Some(parked))
            .await?
        {
            Ok(step) => Ok(step),
            // Parking writes no read-model rows, so it cannot fail deterministically.
            Err(e) => Err(sqlx::Error::Protocol(format!("parking failed: {e}"))),
        }
    }

    /// One transaction: check the checkpoint, apply (or park) `events`, move the checkpoint.
    /// The outer error is transient; the inner one is a deterministic failure of `apply`.
    async fn commit(
        &mut self,
        events: &[RecordedEvent],
        end: Cursor,
        park: Option<(String, i32)>,
    ) -> Result<Result<Step, String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let outcome = take_in(
            &mut tx,
            self.projector.as_ref(),
            (&self.key, &self.schema),
            self.cursor,
            events,
            end,
            park,
        )
        .await;
        match outcome {
            Ok(TakeIn::Took(cursor, n)) => {
                tx.commit().await?;
                self.cursor = cursor;
                Ok(Ok(Step::Took(n)))
            }
            Ok(TakeIn::Moved(cursor)) => {
                drop(tx);
                self.cursor = cursor;
                Ok(Ok(Step::Moved))
            }
            Err(e) if e.is_transient() => match e {
                ApplyError::Db(e) => Err(e),
                ApplyError::Poison(p) => Err(sqlx::Error::Protocol(p)),
            },
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// Runs until `shutdown`: holds the lease (waiting as a standby while another process
    /// holds it), steps while there is work, and waits for a commit signal or the idle poll.
    pub async fn run(
        mut self,
        mut wake: Option<watch::Receiver<std::collections::BTreeMap<&'static str, u64>>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let name = self.projector.name();
        let mut pause = self.config.backoff;
        'lease: while !*shutdown.borrow() {
            let mut lease = match Lease::acquire(&self.pool, &self.key).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(projector = name, %error, "cannot take the projector's lease; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            tracing::info!(projector = name, "projector active");
            if let Err(error) = self.load().await {
                tracing::warn!(projector = name, %error, "cannot load the checkpoint; retrying");
                continue;
            }
            let mut last_check = tokio::time::Instant::now();
            while !*shutdown.borrow() {
                if last_check.elapsed() > Duration::from_secs(5) {
                    if let Err(error) = lease.check().await {
                        tracing::warn!(projector = name, %error, "lost the projector's lease");
                        continue 'lease;
                    }
                    last_check = tokio::time::Instant::now();
                }
                match self.step().await {
                    Ok(Step::Took(_)) | Ok(Step::Moved) => {
                        pause = self.config.backoff;
                        continue;
                    }
                    Ok(Step::Idle) => {
                        let poll = tokio::time::sleep(self.config.idle_poll);
                        tokio::pin!(poll);
                        let types = self.projector.stream_types();
                        let relevant = |counts: &std::collections::BTreeMap<&'static str, u64>| {
                            types
                                .iter()
                                .map(|t| counts.get(t).copied().unwrap_or(0))
                                .sum::<u64>()
                        };
                        match wake.as_mut() {
                            Some(w) => {
                                let seen = relevant(&w.borrow_and_update());
                                // Commits of other stream types do not wake this projector.
                                loop {
                                    tokio::select! {
                                        _ = &mut poll => break,
                                        r = w.changed() => match r {
                                            Ok(()) => {
                                                if relevant(&w.borrow_and_update()) != seen {
                                                    tokio::time::sleep(self.config.coalesce).await;
                                                    break;
                                                }
                                            }
                                            Err(_) => {
                                                wake = None;
                                                break;
                                            }
                                        },
                                        _ = shutdown.changed() => break,
                                    }
                                }
                            }
                            None => tokio::select! {
                                _ = &mut poll => {}
                                _ = shutdown.changed() => {}
                            },
                        }
                    }
                    Err(error) => {
                        tracing::warn!(projector = name, %error, "projector step failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.changed() => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What [`take_in`] did.
pub(crate) enum TakeIn {
    /// Took in this many events and stands at the cursor.
    Took(Cursor, usize),
    /// The checkpoint was elsewhere.
    Moved(Cursor),
}

/// Inside `conn`'s transaction, for checkpoint `key` writing `schema`: lock the checkpoint,
/// check it is still at `cursor`, apply the events of the projector's streams that are not
/// parked, park the rest (or all of them, with `park`), and move the checkpoint to `end`
/// (at least past the last event).
pub(crate) async fn take_in(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    (key, schema): (&str, &str),
    cursor: Cursor,
    events: &[RecordedEvent],
    end: Cursor,
    park: Option<(String, i32)>,
) -> Result<TakeIn, ApplyError> {
    // One round trip: lock the checkpoint, read the parked streams, and commit without
    // waiting for the disk (read models are derived data: a commit lost in a crash is lost
    // together with its checkpoint, and the events are simply applied again).
    let (tx, position, parked, _): (i64, i64, Option<Vec<Uuid>>, String) = sqlx::query_as(
        "SELECT tx, position, \
                (SELECT array_agg(DISTINCT stream_id) FROM public.projection_parked \
                  WHERE projector = $1), \
                set_config('synchronous_commit', 'off', true) \
         FROM public.projection_checkpoints WHERE name = $1 FOR UPDATE",
    )
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    let stored = Cursor { tx, position };
    if stored != cursor {
        return Ok(TakeIn::Moved(stored));
    }
    let end = events
        .last()
        .map(RecordedEvent::cursor)
        .unwrap_or(end)
        .max(end);
    if end <= cursor {
        return Ok(TakeIn::Took(cursor, 0));
    }
    let parked: HashSet<Uuid> = parked.unwrap_or_default().into_iter().collect();
    let types = projector.stream_types();
    let own = |e: &&RecordedEvent| types.contains(&e.stream_type.as_str());
    let mut held: Vec<(&RecordedEvent, String, i32)> = Vec::new();
    // The usual batch (only the projector's own events, none parked) is applied as it is;
    // otherwise the events to apply are picked out.
    let picked: Option<Vec<RecordedEvent>> = if park.is_none()
        && events
            .iter()
            .all(|e| own(&e) && !parked.contains(&e.stream_id))
    {
        None
    } else {
        let mut apply = Vec::with_capacity(events.len());
        for e in events.iter().filter(own) {
            if let Some((error, attempts)) = &park {
                held.push((e, error.clone(), *attempts));
            } else if parked.contains(&e.stream_id) {
                held.push((
                    e,
                    "held back: an earlier event of its stream is parked".into(),
                    0,
                ));
            } else {
                apply.push(e.clone());
            }
        }
        Some(apply)
    };
    let apply = picked.as_deref().unwrap_or(events);
    if !apply.is_empty() {
        // Everything the runtime writes after this names its schema.
        sqlx::query(&format!("SET LOCAL search_path TO {schema}"))
            .execute(&mut *conn)
            .await?;
        projector.apply(&mut *conn, apply).await?;
    }
    if !held.is_empty() {
        park_events(&mut *conn, key, &held).await?;
    }
    sqlx::query(
        "UPDATE public.projection_checkpoints \
         SET tx = $2, position = $3, applied = applied + $4, updated_at = now() WHERE name = $1",
    )
    .bind(key)
    .bind(end.tx)
    .bind(end.position)
    .bind(events.len() as i64)
    .execute(&mut *conn)
    .await?;
    Ok(TakeIn::Took(end, events.len()))
}

async fn park_events(
    conn: &mut PgConnection,
    key: &str,
    held: &[(&RecordedEvent, String, i32)],
) -> Result<(), sqlx::Error> {
    let mut txs = Vec::with_capacity(held.len());
    let mut positions = Vec::with_capacity(held.len());
    let mut streams = Vec::with_capacity(held.len());
    let mut ids = Vec::with_capacity(held.len());
    let mut types = Vec::with_capacity(held.len());
    let mut errors = Vec::with_capacity(held.len());
    let mut attempts = Vec::with_capacity(held.len());
    for (e, error, n) in held {
        txs.push(e.tx);
        positions.push(e.position);
        streams.push(e.stream_id);
        ids.push(e.event_id);
        types.push(e.event_type.clone());
        errors.push(error.clone());
        attempts.push(*n);
    }
    sqlx::query(
        "INSERT INTO public.projection_parked \
         (projector, tx, position, stream_id, event_id, event_type, error, attempts) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::uuid[], $5::uuid[], $6::text[], \
                                  $7::text[], $8::int[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(key)
    .bind(&txs)
    .bind(&positions)
    .bind(&streams)
    .bind(&ids)
    .bind(&types)
    .bind(&errors)
    .bind(&attempts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn record_metrics(name: &'static str, key: &str, events: &[RecordedEvent], batch: i64) {
    if key != name {
        return;
    }
    let Some(last) = events.last() else { return };
    let now = chrono::Utc::now();
    let age = (now - last.metadata.occurred_at)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1e6;
    metrics::gauge!("chronicle_projection_position", "projector" => name).set(last.position as f64);
    metrics::counter!("chronicle_projection_events_total", "projector" => name)
        .increment(events.len() as u64);
    // Commit-to-visibility: how old the newest event was when its batch became visible.
    metrics::histogram!("chronicle_projection_visibility_seconds", "projector" => name)
        .record(age.max(0.0));
    let behind = if events.len() as i64 >= batch {
        age.max(0.0)
    } else {
        0.0
    };
    metrics::gauge!("chronicle_projection_lag_seconds", "projector" => name).set(behind);
}

/// The lease that makes one instance of a projector active: a session advisory lock held on a
/// dedicated connection for as long as the worker runs.
struct Lease {
    conn: PgConnection,
}

impl Lease {
    async fn acquire(pool: &PgPool, key: &str) -> Result<Option<Lease>, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext('chronicle.projector'), hashtext($1))",
        )
        .bind(key)
        .fetch_one(&mut conn)
        .await?;
        Ok(got.then_some(Lease { conn }))
    }

    async fn check(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .map(|_| ())
    }
}

/// What [`retry_parked`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// Parked events now applied.
    pub applied: usize,
    /// Parked events still parked (their stream failed again).
    pub still_parked: usize,
}

/// Applies a projector's parked events in log order, each in a savepoint: those that now
/// apply leave the parking table, and a stream whose event fails again keeps that event and
/// all its later ones parked. Runs under the checkpoint's row lock, so it never interleaves
/// with a batch of the worker.
pub async fn retry_parked(
    pool: &PgPool,
    projector: &dyn Projector,
    key: &str,
    schema: &str,
) -> Result<RetryReport, sqlx::Error> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    sqlx::query("SELECT 1 FROM public.projection_checkpoints WHERE name = $1 FOR UPDATE")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    let sql = format!(
        "SELECT {} FROM public.events e JOIN public.projection_parked p \
           ON p.position = e.position AND p.projector = $1 \
         ORDER BY p.tx, p.position",
        schemas::log::EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows: Vec<schemas::log::EventRow> =
        sqlx::query_as(&sql).bind(key).fetch_all(&mut *tx).await?;
    let events: Vec<RecordedEvent> = rows.into_iter().map(Into::into).collect();
    let mut report = RetryReport::default();
    let mut failed: HashSet<Uuid> = HashSet::new();
    for event in &events {
        if failed.contains(&event.stream_id) {
            report.still_parked += 1;
            continue;
        }
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
        sqlx::query(&format!("SET LOCAL search_path TO {schema}"))
            .execute(&mut *savepoint)
            .await?;
        let outcome = projector
            .apply(&mut savepoint, std::slice::from_ref(event))
            .await;
        match outcome {
            Ok(()) => {
                sqlx::query("SET LOCAL search_path TO public")
                    .execute(&mut *savepoint)
                    .await?;
                savepoint.commit().await?;
                sqlx::query(
                    "DELETE FROM public.projection_parked WHERE projector = $1 AND position = $2",
                )
                .bind(key)
                .bind(event.position)
                .execute(&mut *tx)
                .await?;
                report.applied += 1;
            }
            Err(e) if e.is_transient() => {
                drop(savepoint);
                return Err(match e {
                    ApplyError::Db(e) => e,
                    ApplyError::Poison(p) => sqlx::Error::Protocol(p),
                });
            }
            Err(e) => {
                savepoint.rollback().await?;
                sqlx::query(
                    "UPDATE public.projection_parked SET error = $3, attempts = attempts + 1 \
                     WHERE projector = $1 AND position = $2",
                )
                .bind(key)
                .bind(event.position)
                .bind(e.to_string())
                .execute(&mut *tx)
                .await?;
                failed.insert(event.stream_id);
                report.still_parked += 1;
            }
        }
    }
    sqlx::query("SET LOCAL search_path TO public")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(report)
}
