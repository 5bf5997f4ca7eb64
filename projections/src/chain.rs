//! Tamper evidence: a hash chain over the whole log in commit order.
//!
//! The `chain` projector takes in every event exactly once, in commit order (the runtime's
//! guarantee), and stores one link per event in `event_chain`:
//! `hash = sha256(previous hash || canonical encoding of the stored event)`, with 32 zero
//! bytes before the first event. [`verify`] recomputes the chain from the events and compares
//! it with the stored links: a changed event (any column, any byte of its payload), a removed
//! one, an inserted one or a reordering breaks the chain at the first event concerned.
//!
//! The canonical encoding ([`canonical`]) is versioned and length-prefixed: every column of
//! the stored event, the payload as compact JSON with its object keys in sorted order, and
//! `occurred_at` in microseconds.

use crate::{ApplyError, Projector};
use async_trait::async_trait;
use schemas::log::{EventRow, EVENT_COLUMNS};
use schemas::{Cursor, RecordedEvent};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

/// The projector's name (checkpoint, lease, status).
pub const NAME: &str = "chain";

/// The link before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Events read per round trip by [`verify`].
pub const VERIFY_BATCH: i64 = 5_000;

/// Writes `event_chain`.
pub struct ChainProjector;

/// The canonical encoding of a stored event that the chain hashes.
pub fn canonical(e: &RecordedEvent) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let payload = serde_json::to_vec(&e.payload).unwrap_or_default();
    let m = &e.metadata;
    let mut out = Vec::with_capacity(payload.len() + 320);
    field(&mut out, b"chronicle-event-v1");
    field(&mut out, &e.position.to_be_bytes());
    field(&mut out, &e.tx.to_be_bytes());
    field(&mut out, e.event_id.as_bytes());
    field(&mut out, e.stream_type.as_bytes());
    field(&mut out, e.stream_id.as_bytes());
    field(&mut out, &e.stream_version.to_be_bytes());
    field(&mut out, e.event_type.as_bytes());
    field(&mut out, &e.schema_version.to_be_bytes());
    field(&mut out, &payload);
    field(&mut out, m.actor_sub.as_bytes());
    field(&mut out, m.actor_role.as_bytes());
    field(&mut out, m.command_id.as_bytes());
    field(&mut out, m.correlation_id.as_bytes());
    field(
        &mut out,
        m.causation_id
            .as_ref()
            .map(|c| c.as_bytes().as_slice())
            .unwrap_or(&[]),
    );
    field(&mut out, &m.occurred_at.timestamp_micros().to_be_bytes());
    out
}

/// The link of `event` after `previous`.
pub fn link(previous: &[u8; 32], event: &RecordedEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(canonical(event));
    h.finalize().into()
}

/// The last stored link: its cursor and hash.
async fn last_link(conn: &mut PgConnection) -> Result<Option<(Cursor, [u8; 32])>, sqlx::Error> {
    let row: Option<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT tx, position, hash FROM event_chain ORDER BY tx DESC, position DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(tx, position, hash)| {
        let mut h = [0u8; 32];
        if hash.len() == 32 {
            h.copy_from_slice(&hash);
        }
        (Cursor { tx, position }, h)
    }))
}

#[async_trait]
impl Projector for ChainProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The chain links the events as stored: sealed personal fields stay sealed, so erasing
    /// a key changes nothing the chain covers.
    fn takes_sealed(&self) -> bool {
        true
    }

    fn tables(&self) -> &'static [&'static str] {
        &["event_chain"]
    }

    fn stream_types(&self) -> &'static [&'static str] {
        crate::fanout::STREAM_TYPES
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        let mut previous = match last_link(conn).await? {
            Some((at, hash)) => {
                if events.first().is_some_and(|e| e.cursor() <= at) {
                    return Err(ApplyError::Poison(format!(
                        "event {} is at or before the chain's last link {}",
                        events[0].position, at.position
                    )));
                }
                hash
            }
            None => GENESIS,
        };
        let n = events.len();
        let mut tx = Vec::with_capacity(n);
        let mut position = Vec::with_capacity(n);
        let mut event_id = Vec::with_capacity(n);
        let mut hash = Vec::with_capacity(n);
        for e in events {
            previous = link(&previous, e);
            tx.push(e.tx);
            position.push(e.position);
            event_id.push(e.event_id);
            hash.push(previous.to_vec());
        }
        sqlx::query(
            "INSERT INTO event_chain (tx, position, event_id, hash) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::uuid[], $4::bytea[])",
        )
        .bind(&tx)
        .bind(&position)
        .bind(&event_id)
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// [`verify`] in one `REPEATABLE READ, READ ONLY` transaction of its own: the consistent view
/// every caller wants while the chain projector goes on sealing.
pub async fn verify_snapshot(
    pool: &sqlx::PgPool,
    progress: impl FnMut(u64),
) -> Result<Report, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let report = verify(&mut tx, progress).await?;
    tx.rollback().await?;
    Ok(report)
}

/// What broke the chain first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Break {
    /// The position of the first event (or link) that does not match.
    pub position: i64,
    /// `changed` (the event's link does not match: it or an earlier event was altered or
    /// reordered), `missing` (a link without its event: the event was removed) or
    /// `inserted` (an event inside the sealed part of the log without a link).
    pub kind: &'static str,
    /// In words.
    pub detail: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// True when every sealed event matched its link.
    pub ok: bool,
    /// Events whose links were checked.
    pub checked: u64,
    /// The position of the last link (0 when none).
    pub sealed_position: i64,
    /// The last link's hash (hex): kept outside the database, it lets a later verification
    /// show that the chain itself was not rewritten.
    pub head_hash: String,
    /// Events after the last link, not sealed yet (the chain projector is behind).
    pub unsealed: i64,
    /// The first break, if any.
    pub first_break: Option<Break>,
}

/// Recomputes the chain from the events and compares it with the stored links, in commit
/// order, stopping at the first break. `progress` gets the number of events checked in each
/// round trip. Runs on `conn`; run it inside a `REPEATABLE READ` transaction so that the links,
/// the events and the chain projector's checkpoint are read from one snapshot while the
/// projector goes on sealing.
pub async fn verify(
    conn: &mut PgConnection,
    mut progress: impl FnMut(u64),
) -> Result<Report, sqlx::Error> {
    let last = last_link(conn).await?;
    let sealed: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(applied), 0) FROM projection_checkpoints WHERE name = $1",
    )
    .bind(NAME)
    .fetch_one(&mut *conn)
    .await?;
    let Some((head, head_hash)) = last else {
        let unsealed: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&mut *conn)
            .await?;
        let first_break = (sealed > 0).then(|| Break {
            position: 0,
            kind: "missing",
            detail: format!("the chain projector sealed {sealed} events but no link is left"),
        });
        return Ok(Report {
            ok: first_break.is_none(),
            checked: 0,
            sealed_position: 0,
            head_hash: hex::encode(GENESIS),
            unsealed,
            first_break,
        });
    };
    let events_sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE (tx, position) > ($1, $2) \
           AND (tx, position) <= ($3, $4) ORDER BY tx, position LIMIT $5"
    );
    let mut cursor = Cursor::START;
    let mut expected = GENESIS;
    let mut checked = 0u64;
    let mut first_break = None;
    'outer: loop {
        let events: Vec<EventRow> = sqlx::query_as(&events_sql)
            .bind(cursor.tx)
            .bind(cursor.position)
            .bind(head.tx)
            .bind(head.position)
            .bind(VERIFY_BATCH)
            .fetch_all(&mut *conn)
            .await?;
        let links: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT tx, position, hash FROM event_chain WHERE (tx, position) > ($1, $2) \
             ORDER BY tx, position LIMIT $3",
        )
        .bind(cursor.tx)
        .bind(cursor.position)
        .bind(VERIFY_BATCH)
        .fetch_all(&mut *conn)
        .await?;
        if events.is_empty() && links.is_empty() {
            break;
        }
        let events: Vec<RecordedEvent> = events.into_iter().map(Into::into).collect();
        let (mut i, mut j) = (0, 0);
        let mut took = 0u64;
        // Walk both lists in commit order up to where both are known.
        let full_events = events.len() as i64 == VERIFY_BATCH;
        let full_links = links.len() as i64 == VERIFY_BATCH;
        loop {
            let e = events.get(i);
            let l = links.get(j);
            let ec = e.map(RecordedEvent::cursor);
            let lc = l.map(|(tx, position, _)| Cursor {
                tx: *tx,
                position: *position,
            });
            match (ec, lc) {
                (None, None) => break,
                (Some(_), None) if full_links => break,
                (None, Some(_)) if full_events => break,
                (Some(ec), lc) if lc.is_none_or(|lc| ec < lc) => {
                    first_break = Some(Break {
                        position: ec.position,
                        kind: "inserted",
                        detail: format!(
                            "event {} (tx {}) is in the sealed part of the log but has no link",
                            ec.position, ec.tx
                        ),
                    });
                    break 'outer;
                }
                (ec, Some(lc)) if ec.is_none_or(|ec| lc < ec) => {
                    first_break = Some(Break {
                        position: lc.position,
                        kind: "missing",
                        detail: format!(
                            "the link of event {} (tx {}) has no event: it was removed or moved",
                            lc.position, lc.tx
                        ),
                    });
                    break 'outer;
                }
                (Some(ec), Some(_)) => {
                    let (Some(e), Some((_, _, stored))) = (e, l) else {
                        break;
                    };
                    expected = link(&expected, e);
                    if stored.as_slice() != expected.as_slice() {
                        first_break = Some(Break {
                            position: ec.position,
                            kind: "changed",
                            detail: format!(
                                "event {} does not match its link: it, or its place in the log, \
                                 was altered",
                                ec.position
                            ),
                        });
                        break 'outer;
                    }
                    cursor = ec;
                    checked += 1;
                    took += 1;
                    i += 1;
                    j += 1;
                }
                _ => break,
            }
        }
        progress(took);
        if took == 0 {
            // Neither list moved on although rows remain: cannot happen with a consistent
            // pair of keyset reads; stop rather than loop.
            break;
        }
    }
    if first_break.is_none() {
        // Every transaction up to the last link's had ended when it was sealed: an event of
        // such a transaction after the last link was slipped in later.
        let slipped: Option<i64> = sqlx::query_scalar(
            "SELECT min(position) FROM events WHERE (tx, position) > ($1, $2) AND tx <= $1",
        )
        .bind(head.tx)
        .bind(head.position)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(position) = slipped {
            first_break = Some(Break {
                position,
                kind: "inserted",
                detail: format!(
                    "event {position} belongs to a transaction that had ended when the chain \
                     was sealed past it, but has no link"
                ),
            });
        }
    }
    if first_break.is_none() && sealed as u64 != checked {
        first_break = Some(Break {
            position: head.position,
            kind: "missing",
            detail: format!(
                "the chain projector sealed {sealed} events but {checked} links are left: links \
                 at the end were removed"
            ),
        });
    }
    let unsealed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE (tx, position) > ($1, $2)")
            .bind(head.tx)
            .bind(head.position)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Report {
        ok: first_break.is_none(),
        checked,
        sealed_position: head.position,
        head_hash: hex::encode(head_hash),
        unsealed,
        first_break,
    })
}
