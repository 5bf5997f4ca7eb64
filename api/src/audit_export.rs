//! The compliance export of the global log (`chronicle audit export`): every event matching a
//! filter, in commit order, read in batches (memory bounded by one batch) and written as
//! NDJSON (the audit routes' event objects, one per line) or CSV (a header row, then one row
//! per event with the payload as JSON text). After each batch is written and flushed the
//! caller is told the cursor of its last event: resuming after that cursor neither repeats
//! nor skips an event.

use crate::routes_audit::{encode_cursor, AuditEvent, EXPORT_BATCH};
use commands::audit::{self, LogFilter};
use futures::TryStreamExt;
use schemas::Cursor;
use sqlx::PgPool;
use std::io::Write;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            _ => Err(format!("unknown format {s:?}: use ndjson or csv")),
        }
    }
}

/// The CSV columns, in order: the fields of an audit event.
pub const CSV_COLUMNS: [&str; 15] = [
    "position",
    "tx",
    "event_id",
    "stream_type",
    "stream_id",
    "stream_version",
    "event_type",
    "schema_version",
    "payload",
    "actor_sub",
    "actor_role",
    "command_id",
    "correlation_id",
    "causation_id",
    "occurred_at",
];

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The log could not be read.
    #[error("reading the log: {0}")]
    Store(#[from] sqlx::Error),
    /// The output could not be written.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// A bad argument (cursor, time range).
    #[error("{0}")]
    Invalid(String),
}

/// The cursor as text: `<tx>-<position>` (as in the audit routes' `next`).
pub fn format_cursor(c: Cursor) -> String {
    encode_cursor(c)
}

/// A cursor from text: `<tx>-<position>`, or a bare log position looked up in the log (0 is
/// the start).
pub async fn parse_cursor(pool: &PgPool, raw: &str) -> Result<Cursor, ExportError> {
    match audit::cursor_from_text(pool, raw).await? {
        Ok(cursor) => Ok(cursor),
        Err(audit::CursorTextError::Malformed) => Err(ExportError::Invalid(format!(
            "bad cursor {:?}: use <tx>-<position> (as printed by an export) or a log position",
            raw.trim()
        ))),
        Err(audit::CursorTextError::NoEvent(position)) => Err(ExportError::Invalid(format!(
            "no event at position {position} in the log"
        ))),
    }
}

/// Quotes one CSV field when it holds a comma, a quote, CR or LF (quotes doubled).
pub fn csv_field(out: &mut Vec<u8>, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

fn csv_row<'a>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = &'a str>) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(out, f);
    }
    out.extend_from_slice(b"\r\n");
}

/// The CSV header row.
pub fn csv_header() -> Vec<u8> {
    let mut out = Vec::new();
    csv_row(&mut out, CSV_COLUMNS);
    out
}

/// Appends one event in `format` to `out`.
pub fn encode_event(
    out: &mut Vec<u8>,
    format: Format,
    event: AuditEvent,
) -> Result<(), ExportError> {
    match format {
        Format::Ndjson => {
            serde_json::to_writer(&mut *out, &event).map_err(std::io::Error::from)?;
            out.push(b'\n');
        }
        Format::Csv => {
            let value = serde_json::to_value(&event).map_err(std::io::Error::from)?;
            let cells: Vec<String> = CSV_COLUMNS
                .iter()
                .map(|c| match &value[*c] {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            csv_row(out, cells.iter().map(String::as_str));
        }
    }
    Ok(())
}

/// Writes every event after `after` matching `filter` (at most `limit`) to `out` in `format`,
/// one batch at a time; `on_batch(events written, cursor after them)` is called once each
/// batch is written and flushed. Returns the cursor after the last event written (`after` if
/// none). The CSV header is written only when `header` is true (not when appending).
#[allow(clippy::too_many_arguments)]
pub async fn export_to<W: Write>(
    pool: &PgPool,
    after: Cursor,
    filter: LogFilter,
    limit: Option<i64>,
    format: Format,
    header: bool,
    out: &mut W,
    mut on_batch: impl FnMut(u64, Cursor),
) -> Result<Cursor, ExportError> {
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from >= to {
            return Err(ExportError::Invalid(format!(
                "--from ({from}) must be before --to ({to})"
            )));
        }
    }
    if header && format == Format::Csv {
        out.write_all(&csv_header())?;
        out.flush()?;
    }
    let mut cursor = after;
    let mut batches = std::pin::pin!(audit::export(
        pool.clone(),
        after,
        filter,
        limit,
        EXPORT_BATCH
    ));
    while let Some(events) = batches.try_next().await? {
        // From here to the callback nothing awaits: a cancelled export has written either
        // the whole batch and reported its cursor, or none of it.
        let n = events.len() as u64;
        let last = events.last().map(|e| e.cursor()).unwrap_or(cursor);
        let mut chunk = Vec::with_capacity(events.len() * 512);
        for e in events {
            encode_event(&mut chunk, format, AuditEvent::from(e))?;
        }
        out.write_all(&chunk)?;
        out.flush()?;
        cursor = last;
        on_batch(n, cursor);
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        csv_row(
            &mut out,
            ["plain", "a,b", "say \"hi\"", "two\nlines", "", "{\"k\":1}"],
        );
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",,\"{\"\"k\"\":1}\"\r\n"
        );
    }

    #[test]
    fn formats_parse() {
        assert_eq!("csv".parse::<Format>(), Ok(Format::Csv));
        assert_eq!("ndjson".parse::<Format>(), Ok(Format::Ndjson));
        assert!("json".parse::<Format>().is_err());
    }
}
