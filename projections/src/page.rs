//! Keyset pagination: `?limit=` (default 50, at most 500) and an opaque `?cursor=` that
//! carries the sort key of the last item returned.

use serde::Serialize;

/// Items per page when the client names no limit.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest page.
pub const MAX_LIMIT: i64 = 500;
/// The longest cursor accepted.
pub const MAX_CURSOR_LEN: usize = 512;

/// Which page to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// How many items at most.
    pub limit: i64,
    /// The sort key of the last item of the previous page (decoded cursor), if any.
    pub after: Option<Vec<String>>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// A page of items and the cursor of the next one.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows read: the extra row only tells that there is
    /// a next page, whose cursor is the key of the last item kept.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Vec<String>) -> Self {
        let limit = limit.max(0) as usize;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more {
            rows.last().map(|last| encode_cursor(&key(last)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

/// Encodes a sort key as an opaque cursor.
pub fn encode_cursor(key: &[String]) -> String {
    hex::encode(serde_json::to_vec(key).unwrap_or_default())
}

/// Decodes a cursor made by [`encode_cursor`]; `None` for anything else.
pub fn decode_cursor(cursor: &str) -> Option<Vec<String>> {
    if cursor.len() > MAX_CURSOR_LEN {
        return None;
    }
    let bytes = hex::decode(cursor).ok()?;
    serde_json::from_slice(&bytes).ok()
}
