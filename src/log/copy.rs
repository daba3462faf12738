//! PostgreSQL binary COPY rows for `sluice.events` (ordinary rows and
//! record batches), encoded by hand straight into the appender's COPY
//! buffer. Pure.

use crate::event::{PendingEvent, TenantId, PG_EPOCH_OFFSET_MICROS};

/// Signature, flags, header extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A field count of -1 ends the data.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// The column list the rows are encoded for, in order.
pub const COPY_STATEMENT: &str =
    "COPY sluice.events (seq, tenant, tenant_hash, type, topic, source, subject, \
     txid, lsn, commit_time, data, first_seq, ext) FROM STDIN BINARY";

const FIELDS: i16 = 13;
/// Where rows are written: the appender's `BytesMut` COPY buffer, or a
/// `Vec<u8>`.
pub trait Out: std::ops::DerefMut<Target = [u8]> {
    fn put(&mut self, bytes: &[u8]);
    fn reserve_more(&mut self, n: usize);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn reserve_more(&mut self, n: usize) {
        self.reserve(n);
    }
}

impl Out for bytes::BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn reserve_more(&mut self, n: usize) {
        self.reserve(n);
    }
}

fn text(out: &mut impl Out, s: &str) {
    let len = i32::try_from(s.len()).unwrap_or(i32::MAX);
    out.put(&len.to_be_bytes());
    out.put(s.as_bytes());
}

fn int8(out: &mut impl Out, v: Option<i64>) {
    match v {
        Some(v) => {
            out.put(&8i32.to_be_bytes());
            out.put(&v.to_be_bytes());
        }
        None => out.put(&(-1i32).to_be_bytes()),
    }
}

/// Encodes one row of `event` for `tenant`, at `seq`.
pub fn encode_row(out: &mut impl Out, seq: i64, tenant: &TenantId, event: &PendingEvent) {
    out.reserve_more(event.approx_bytes() + 64);
    header(out, seq, tenant, event, event.subject.as_deref());
    text(out, event.data.get());
    int8(out, None);
    match &event.ext {
        Some(ext) => text(out, ext.as_str()),
        None => out.put(&(-1i32).to_be_bytes()),
    }
}

/// Encodes one record batch of `count` events of `tenant`, all sharing
/// `head`'s header (type, topic, source, txid, lsn, time), at the seqs
/// `first_seq..first_seq + count`, with `data` the batch's
/// `[[subject, data], …]` array in seq order ([`batch_element`]). The
/// row's `seq` is the last event's and `subject` is null
/// (sql/007_record_batches.sql).
pub fn encode_batch(
    out: &mut impl Out,
    first_seq: i64,
    tenant: &TenantId,
    head: &PendingEvent,
    count: usize,
    data: &[u8],
) {
    let last_seq = first_seq + i64::try_from(count).unwrap_or(i64::MAX) - 1;
    out.reserve_more(data.len() + 256);
    header(out, last_seq, tenant, head, None);
    let len = i32::try_from(data.len()).unwrap_or(i32::MAX);
    out.put(&len.to_be_bytes());
    out.put(data);
    int8(out, Some(first_seq));
    // A batch holds no event with extensions (`batch::Batcher`).
    out.put(&(-1i32).to_be_bytes());
}

/// Writes `[subject, data]`, one event's element of a batch's `data`.
pub fn batch_element(out: &mut Vec<u8>, event: &PendingEvent) {
    out.push(b'[');
    match &event.subject {
        Some(s) => crate::event::json::write_json_string(s, out),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    out.extend_from_slice(event.data.get().as_bytes());
    out.push(b']');
}

/// The fields before `data`.
fn header(
    out: &mut impl Out,
    seq: i64,
    tenant: &TenantId,
    event: &PendingEvent,
    subject: Option<&str>,
) {
    out.put(&FIELDS.to_be_bytes());
    int8(out, Some(seq));
    text(out, tenant.as_str());
    out.put(&4i32.to_be_bytes());
    out.put(&tenant.hash32().to_be_bytes());
    text(out, &event.event_type);
    text(out, &event.topic);
    text(out, &event.source);
    match subject {
        Some(s) => text(out, s),
        None => out.put(&(-1i32).to_be_bytes()),
    }
    int8(out, event.txid.and_then(|t| i64::try_from(t).ok()));
    int8(out, event.lsn.and_then(|l| i64::try_from(l).ok()));
    // timestamptz on the wire: microseconds since 2000-01-01.
    int8(
        out,
        Some(event.time_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)),
    );
}

/// A snapshot event of `tenant` for tests (here, `append` and `checkpoint`).
#[cfg(test)]
pub(super) fn test_event(tenant: &str, subject: Option<&str>, data: &str) -> PendingEvent {
    use crate::event::{Audience, SourcePosition};
    PendingEvent {
        audience: Audience::Tenant(TenantId::new(tenant).expect("valid")),
        position: SourcePosition::default(),
        source: "s".into(),
        event_type: "row.snapshot".into(),
        topic: "tables/public.t/snapshot".into(),
        subject: subject.map(str::to_owned),
        time_micros: PG_EPOCH_OFFSET_MICROS,
        time: "x".into(),
        txid: Some(7),
        lsn: Some(9),
        data: crate::event::JsonText::parse(data.into()).expect("json"),
        relation: None,
        ext: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Audience, SourcePosition};

    #[test]
    fn row_layout_matches_the_binary_copy_format() {
        let e = PendingEvent {
            audience: Audience::Tenant(TenantId::new("t").expect("valid")),
            position: SourcePosition::default(),
            source: "s".into(),
            event_type: "ty".into(),
            topic: "to".into(),
            subject: None,
            time_micros: PG_EPOCH_OFFSET_MICROS + 5,
            time: "x".into(),
            txid: Some(7),
            lsn: None,
            data: crate::event::JsonText::parse("{}".into()).expect("json"),
            relation: None,
            ext: None,
        };
        let mut row = Vec::new();
        let t = TenantId::new("t").expect("valid");
        encode_row(&mut row, 0x0102, &t, &e);
        let mut expected = vec![0, 13, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2];
        expected.extend_from_slice(&1i32.to_be_bytes());
        expected.push(b't');
        expected.extend_from_slice(&4i32.to_be_bytes());
        expected.extend_from_slice(&t.hash32().to_be_bytes());
        for s in ["ty", "to", "s"] {
            expected.extend_from_slice(&(s.len() as i32).to_be_bytes());
            expected.extend_from_slice(s.as_bytes());
        }
        expected.extend_from_slice(&(-1i32).to_be_bytes()); // subject
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&7i64.to_be_bytes()); // txid
        expected.extend_from_slice(&(-1i32).to_be_bytes()); // lsn
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&5i64.to_be_bytes()); // commit_time
        expected.extend_from_slice(&2i32.to_be_bytes());
        expected.extend_from_slice(b"{}");
        expected.extend_from_slice(&(-1i32).to_be_bytes()); // first_seq
        expected.extend_from_slice(&(-1i32).to_be_bytes()); // ext
        assert_eq!(row, expected);
        assert_eq!(HEADER.len(), 19);
    }

    /// The fields of one encoded row: (length or -1, bytes).
    fn fields(row: &[u8]) -> Vec<Option<Vec<u8>>> {
        let n = i16::from_be_bytes([row[0], row[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes(row[at..at + 4].try_into().expect("4 bytes"));
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(row[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        assert_eq!(at, row.len(), "no trailing bytes");
        out
    }

    #[test]
    fn a_record_batch_holds_its_events_as_subject_data_pairs() {
        let t = TenantId::new("acme").expect("valid");
        let a = test_event(
            "acme",
            Some("public.t/1"),
            r#"{"op":"snapshot","new":{"id":1}}"#,
        );
        let b = test_event(
            "acme",
            Some("public.t/\"2\"\n"),
            r#"{"op":"snapshot","new":{"id":"2"}}"#,
        );
        let c = test_event("acme", None, "[]");
        let mut data = Vec::new();
        for (i, e) in [&a, &b, &c].into_iter().enumerate() {
            data.push(if i == 0 { b'[' } else { b',' });
            batch_element(&mut data, e);
        }
        data.push(b']');
        let mut row = Vec::new();
        encode_batch(&mut row, 10, &t, &a, 3, &data);
        let f = fields(&row);
        assert_eq!(f.len(), 13);
        assert_eq!(f[12], None, "a batch row has no extensions");
        // seq is the last event's, first_seq the first's.
        assert_eq!(f[0], Some(12i64.to_be_bytes().to_vec()));
        assert_eq!(f[11], Some(10i64.to_be_bytes().to_vec()));
        assert_eq!(f[1], Some(b"acme".to_vec()));
        assert_eq!(f[6], None, "a batch row has no subject of its own");
        let data = String::from_utf8(f[10].clone().expect("data")).expect("utf-8");
        assert_eq!(
            data,
            r#"[["public.t/1",{"op":"snapshot","new":{"id":1}}],["public.t/\"2\"\n",{"op":"snapshot","new":{"id":"2"}}],[null,[]]]"#
        );
        let parsed: Vec<(Option<String>, serde_json::Value)> =
            serde_json::from_str(&data).expect("a JSON array of pairs");
        assert_eq!(parsed[1].0.as_deref(), Some("public.t/\"2\"\n"));
    }

    #[test]
    fn a_single_row_has_a_null_first_seq() {
        let t = TenantId::new("acme").expect("valid");
        let a = test_event("acme", Some("public.t/1"), "{}");
        let mut row = Vec::new();
        encode_row(&mut row, 5, &t, &a);
        let f = fields(&row);
        assert_eq!(f[0], Some(5i64.to_be_bytes().to_vec()));
        assert_eq!(f[6], Some(b"public.t/1".to_vec()));
        assert_eq!(f[11], None);
    }
}
