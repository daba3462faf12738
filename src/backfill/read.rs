//! Reading a chunk and turning its rows into snapshot events, off the
//! replication stream's task.
//!
//! Rows are read with `COPY (<chunk query>) TO STDOUT` in text format: the
//! same output functions (under the replication session's settings) as
//! pgoutput's text values, but one message per row with no per-column
//! framing to allocate, and values that need no unescaping are slices of
//! the message (`Bytes`), never copied.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::event::PendingEvent;
use crate::log::batch::{Batcher, PreBatch};
use crate::source::postgres::normalize::{DropReason, Normalizer, Outcome, TxContext};
use crate::source::postgres::pgoutput::{Datum, Tuple};

/// A chunk's rows as COPY text, not parsed yet: each part holds whole rows.
#[derive(Debug, Default)]
pub struct Raw {
    pub parts: Vec<Bytes>,
    pub rows: u64,
    /// The first row (its key must be past the previous chunk's last).
    pub first: Option<Tuple>,
    /// The last row (its key is where the next chunk starts).
    pub last: Option<Tuple>,
}

impl Raw {
    /// The last row's values at `columns` (its primary key: where the next
    /// chunk starts); `None` when the chunk is empty.
    pub fn last_key(&self, columns: &[usize]) -> Option<Vec<Option<String>>> {
        Some(key_of(self.last.as_ref()?, columns))
    }

    /// The first row's values at `columns`; `None` when the chunk is empty.
    pub fn first_key(&self, columns: &[usize]) -> Option<Vec<Option<String>>> {
        Some(key_of(self.first.as_ref()?, columns))
    }
}

fn key_of(row: &Tuple, columns: &[usize]) -> Vec<Option<String>> {
    columns
        .iter()
        .map(|&i| match row.0.get(i) {
            Some(Datum::Text(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

/// Reads the rows of `query` (a SELECT) without parsing them, so the
/// runner can read the next chunk while another thread turns these into
/// events ([`normalize`]).
pub async fn raw(client: &Client, query: &str) -> Result<Raw, tokio_postgres::Error> {
    let stream = client
        .copy_out(&format!("COPY ({query}) TO STDOUT"))
        .await?;
    futures_util::pin_mut!(stream);
    let mut raw = Raw::default();
    let mut partial = BytesMut::new();
    while let Some(data) = stream.next().await {
        let data = data?;
        if partial.is_empty() && data.ends_with(b"\n") {
            raw.parts.push(data);
        } else {
            // A row split across messages (the server sends one per row,
            // but the protocol does not promise it).
            partial.extend_from_slice(&data);
            if let Some(end) = memchr::memrchr(b'\n', &partial) {
                raw.parts.push(partial.split_to(end + 1).freeze());
            }
        }
    }
    if !partial.is_empty() {
        partial.extend_from_slice(b"\n");
        raw.parts.push(partial.freeze());
    }
    raw.rows = raw
        .parts
        .iter()
        .map(|p| memchr::memchr_iter(b'\n', p).count() as u64)
        .sum();
    if let Some(part) = raw.parts.first() {
        let end = memchr::memchr(b'\n', part).map_or(part.len(), |p| p + 1);
        let mut rows = Vec::new();
        parse_rows(&part.slice(..end), &mut rows);
        raw.first = rows.into_iter().next();
    }
    if let Some(part) = raw.parts.last() {
        let mut rows = Vec::new();
        parse_rows(part, &mut rows);
        raw.last = rows.pop();
    }
    Ok(raw)
}

/// A chunk's rows as events.
#[derive(Debug, Default)]
pub struct Normalized {
    /// The snapshot events of the rows, in their order. The stream stamps
    /// the high watermark's transaction on them.
    pub events: Vec<PendingEvent>,
    /// The rows that gave none, with the reason.
    pub dropped: Vec<DropReason>,
    /// The events' record batches, built as each event is written.
    pub batches: Vec<PreBatch>,
}

/// The snapshot events of a chunk's rows and their record batches.
pub fn normalize(normalizer: &mut Normalizer, relation_id: u32, raw: &Raw) -> Normalized {
    let ctx = TxContext::new(0, 0, 0);
    let mut events = Vec::with_capacity(usize::try_from(raw.rows).unwrap_or(0));
    let mut dropped = Vec::new();
    let mut batcher = Batcher::new();
    let mut row = Tuple(Vec::new());
    let mut n = 0;
    for part in &raw.parts {
        each_row(part, &mut row, |row| {
            n += 1;
            match normalizer.snapshot(&ctx, n, relation_id, row) {
                Outcome::Event(e) => {
                    batcher.push(events.len(), &e);
                    events.push(e);
                }
                Outcome::Dropped(r) => dropped.push(r),
                Outcome::Ignored => {}
            }
        });
    }
    Normalized {
        events,
        dropped,
        batches: batcher.finish(),
    }
}

/// Calls `f` with each row of COPY text `data` (each ending in a newline;
/// a raw newline never occurs inside a value, it is escaped as `\n`), in
/// one reused tuple.
pub fn each_row(data: &Bytes, row: &mut Tuple, mut f: impl FnMut(&Tuple)) {
    let mut start = 0;
    while start < data.len() {
        let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |p| start + p);
        row.0.clear();
        let mut field = start;
        loop {
            let stop = memchr::memchr(b'\t', &data[field..end]).map_or(end, |p| field + p);
            row.0.push(value(data, field, stop));
            if stop >= end {
                break;
            }
            field = stop + 1;
        }
        f(row);
        start = end + 1;
    }
}

/// Appends the rows of COPY text data.
pub fn parse_rows(data: &Bytes, out: &mut Vec<Tuple>) {
    let mut row = Tuple(Vec::new());
    each_row(data, &mut row, |r| out.push(r.clone()));
}

/// One field: `\N` is null; a value without backslashes is a slice.
fn value(data: &Bytes, from: usize, to: usize) -> Datum {
    let raw = &data[from..to];
    if raw == b"\\N" {
        return Datum::Null;
    }
    if memchr::memchr(b'\\', raw).is_none() {
        return Datum::Text(data.slice(from..to));
    }
    let mut v = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        i += 1;
        if b != b'\\' {
            v.push(b);
            continue;
        }
        let Some(&c) = raw.get(i) else {
            v.push(b'\\');
            break;
        };
        i += 1;
        match c {
            b'b' => v.push(8),
            b'f' => v.push(12),
            b'n' => v.push(b'\n'),
            b'r' => v.push(b'\r'),
            b't' => v.push(b'\t'),
            b'v' => v.push(11),
            b'0'..=b'7' => {
                let mut n = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            n = n * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                v.push((n & 0xff) as u8);
            }
            b'x' => {
                let mut n = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match raw.get(i).and_then(|&d| char::from(d).to_digit(16)) {
                        Some(d) => {
                            n = n * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    v.push(b'x');
                } else {
                    v.push((n & 0xff) as u8);
                }
            }
            other => v.push(other),
        }
    }
    Datum::Text(Bytes::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(t: &Tuple) -> Vec<Option<String>> {
        t.0.iter()
            .map(|d| match d {
                Datum::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rows_split_on_newlines_and_fields_on_tabs() {
        let data = Bytes::from_static(b"1\tacme\t\\N\n2\t\t{\"a\": 1}\n");
        let mut rows = Vec::new();
        parse_rows(&data, &mut rows);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            texts(&rows[0]),
            vec![Some("1".into()), Some("acme".into()), None]
        );
        assert_eq!(
            texts(&rows[1]),
            vec![
                Some("2".into()),
                Some(String::new()),
                Some("{\"a\": 1}".into())
            ]
        );
    }

    #[test]
    fn escapes_are_undone() {
        let data = Bytes::from_static(b"a\\tb\\nc\\\\d\\r\\b\\f\\v\t\\101\\x41\\q\t\\\\N\n");
        let mut rows = Vec::new();
        parse_rows(&data, &mut rows);
        assert_eq!(
            texts(&rows[0]),
            vec![
                Some("a\tb\nc\\d\r\u{8}\u{c}\u{b}".into()),
                Some("AAq".into()),
                // `\\N` is the two characters `\N`, not a null.
                Some("\\N".into()),
            ]
        );
    }

    #[test]
    fn a_single_empty_column_is_one_empty_value() {
        let data = Bytes::from_static(b"\n");
        let mut rows = Vec::new();
        parse_rows(&data, &mut rows);
        assert_eq!(texts(&rows[0]), vec![Some(String::new())]);
    }
}
