//! PostgreSQL binary COPY rows for `sluice.events`, encoded by hand so the
//! work happens on the sending source's task and the appender only patches
//! in the `seq` and copies bytes. Pure.

use crate::event::{PendingEvent, TenantId, PG_EPOCH_OFFSET_MICROS};

/// Signature, flags, header extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A field count of -1 ends the data.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// The column list the rows are encoded for, in order.
pub const COPY_STATEMENT: &str =
    "COPY sluice.events (seq, tenant, tenant_hash, type, topic, source, subject, \
     txid, lsn, commit_time, data) FROM STDIN BINARY";

const FIELDS: i16 = 11;
/// Where the `seq` value sits in an encoded row: after the field count (2)
/// and the field length (4).
const SEQ_AT: usize = 6;

fn text(out: &mut Vec<u8>, s: &str) {
    let len = i32::try_from(s.len()).unwrap_or(i32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int8(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&v.to_be_bytes());
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// Encodes one row of `event` for `tenant`, at `seq`.
pub fn encode_row(out: &mut Vec<u8>, seq: i64, tenant: &TenantId, event: &PendingEvent) {
    out.reserve(event.approx_bytes() + 64);
    out.extend_from_slice(&FIELDS.to_be_bytes());
    int8(out, Some(seq));
    text(out, tenant.as_str());
    out.extend_from_slice(&4i32.to_be_bytes());
    out.extend_from_slice(&tenant.hash32().to_be_bytes());
    text(out, &event.event_type);
    text(out, &event.topic);
    text(out, &event.source);
    match &event.subject {
        Some(s) => text(out, s),
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    int8(out, event.txid.and_then(|t| i64::try_from(t).ok()));
    int8(out, event.lsn.and_then(|l| i64::try_from(l).ok()));
    // timestamptz on the wire: microseconds since 2000-01-01.
    int8(
        out,
        Some(event.time_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)),
    );
    text(out, event.data.get());
}

/// Sets the `seq` of a row made by [`encode_row`].
pub fn patch_seq(row: &mut [u8], seq: i64) {
    if let Some(slot) = row.get_mut(SEQ_AT..SEQ_AT + 8) {
        slot.copy_from_slice(&seq.to_be_bytes());
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
        };
        let mut row = Vec::new();
        let t = TenantId::new("t").expect("valid");
        encode_row(&mut row, 0, &t, &e);
        patch_seq(&mut row, 0x0102);
        let mut expected = vec![0, 11, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2];
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
        assert_eq!(row, expected);
        assert_eq!(HEADER.len(), 19);
    }
}
