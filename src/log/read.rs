//! Reads of the log. Every read names its scope: one tenant, or the
//! operator's cross-tenant view, which is spelled out as such.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use crate::event::{format_time_micros, Committed, Envelope, TenantId};

/// Whose events a read may return.
#[derive(Debug, Clone)]
pub enum ReadScope {
    Tenant(TenantId),
    /// Every tenant: only for operator tools (`sluice tail` without
    /// `--tenant`, admin keys).
    Operator,
}

/// What to read besides the scope.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// First seq (inclusive).
    pub from: i64,
    /// Last seq (inclusive), if any.
    pub to: Option<i64>,
    pub limit: i64,
    /// Only these event types.
    pub types: Option<Vec<String>>,
    /// Commit time bounds (inclusive since, exclusive until).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

const COLUMNS: &str =
    "seq, first_seq, tenant, type, topic, source, subject, txid, lsn, commit_time, data, ext";

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

/// The column values of one `sluice.events` row: one event, or a record
/// batch of several (`first_seq` set; see sql/007_record_batches.sql).
#[derive(Debug, Clone, Copy)]
struct RowParts<'a> {
    seq: i64,
    first_seq: Option<i64>,
    tenant: &'a str,
    event_type: &'a str,
    topic: &'a str,
    source: &'a str,
    subject: Option<&'a str>,
    txid: Option<i64>,
    lsn: Option<i64>,
    /// Source commit time, µs since the Unix epoch.
    commit_micros: i64,
    data: &'a str,
    /// A custom event's extra members (never on a batch row).
    ext: Option<&'a str>,
}

impl<'a> RowParts<'a> {
    fn of(r: &'a Row) -> RowParts<'a> {
        let time: chrono::DateTime<chrono::Utc> = r.get(9);
        RowParts {
            seq: r.get(0),
            first_seq: r.get(1),
            tenant: r.get(2),
            event_type: r.get(3),
            topic: r.get(4),
            source: r.get(5),
            subject: r.get(6),
            txid: r.get(7),
            lsn: r.get(8),
            commit_micros: time.timestamp_micros(),
            data: r.get(10),
            ext: r.get(11),
        }
    }
}

/// One element of a batch row's `data`: `[subject, data]`.
type BatchItem<'a> = (Option<Cow<'a, str>>, &'a RawValue);

/// A batch row's events, checked against its seq range.
fn batch_items<'a>(first_seq: i64, seq: i64, data: &'a str) -> Result<Vec<BatchItem<'a>>, String> {
    if first_seq > seq {
        return Err(format!("first_seq {first_seq} is after seq"));
    }
    let items: Vec<BatchItem<'a>> = serde_json::from_str(data)
        .map_err(|e| format!("data is not an array of [subject, data] pairs: {e}"))?;
    let want = seq - first_seq + 1;
    if i64::try_from(items.len()).ok() != Some(want) {
        return Err(format!(
            "data holds {} events, first_seq..=seq spans {want}",
            items.len()
        ));
    }
    Ok(items)
}

/// Pushes the events of `row` whose seq `keep` accepts, in seq order, each
/// with its envelope rebuilt. A malformed batch row is logged and skipped.
fn expand_row(row: &RowParts<'_>, mut keep: impl FnMut(i64) -> bool, out: &mut Vec<Committed>) {
    let Ok(tenant) = TenantId::new(row.tenant) else {
        // Every tenant was a `TenantId` when appended; a row that breaks
        // that was not written by Sluice.
        tracing::error!(
            seq = row.seq,
            "sluice.events row with an invalid tenant id; its events are skipped"
        );
        return;
    };
    let time = format_time_micros(row.commit_micros);
    let topic: Arc<str> = row.topic.into();
    let event_type: Arc<str> = row.event_type.into();
    let ext = row.ext.map(crate::event::Extensions::stored);
    let event = |seq: i64, subject: Option<&str>, data: &str| Committed {
        seq,
        tenant: tenant.clone(),
        event_type: event_type.clone(),
        topic: topic.clone(),
        body: Bytes::from(
            Envelope {
                seq,
                tenant: row.tenant,
                event_type: row.event_type,
                topic: row.topic,
                source: row.source,
                subject,
                txid: to_u64(row.txid),
                lsn: to_u64(row.lsn),
                time: &time,
                ext: ext.as_ref(),
                data,
            }
            .to_json(),
        ),
        commit_micros: row.commit_micros,
    };
    let Some(first_seq) = row.first_seq else {
        if keep(row.seq) {
            out.push(event(row.seq, row.subject, row.data));
        }
        return;
    };
    let items = match batch_items(first_seq, row.seq, row.data) {
        Ok(items) => items,
        Err(reason) => {
            tracing::error!(
                seq = row.seq,
                first_seq,
                %reason,
                "malformed record batch in sluice.events; its events are skipped"
            );
            return;
        }
    };
    for (seq, (subject, data)) in (first_seq..).zip(&items) {
        if keep(seq) {
            out.push(event(seq, subject.as_deref(), data.get()));
        }
    }
}

/// Events of `scope` matching `q`, in seq order.
pub async fn query_events(
    client: &impl GenericClient,
    scope: &ReadScope,
    q: &LogQuery,
) -> Result<Vec<Committed>, tokio_postgres::Error> {
    // `seq` is a row's last event, so `seq >= from` finds every row that
    // holds an event at or after `from`.
    let mut sql = format!("SELECT {COLUMNS} FROM sluice.events WHERE seq >= $1");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&q.from];
    let hash;
    let tenant;
    if let ReadScope::Tenant(t) = scope {
        hash = t.hash32();
        tenant = t.as_str();
        params.push(&hash);
        params.push(&tenant);
        sql.push_str(&format!(
            " AND tenant_hash = ${} AND tenant = ${}",
            params.len() - 1,
            params.len()
        ));
    }
    let mut to_at = None;
    if let Some(to) = &q.to {
        params.push(to);
        let n = params.len();
        to_at = Some(n);
        // Rows whose first event is at or before `to`. Rows never overlap,
        // so none of them lies past the row holding `to` (or the next one):
        // that bound on `seq` keeps the index scan from running to the head.
        sql.push_str(&format!(
            " AND coalesce(first_seq, seq) <= ${n} AND seq <= coalesce(\
             (SELECT seq FROM sluice.events WHERE seq >= ${n} ORDER BY seq LIMIT 1), ${n})"
        ));
    }
    if let Some(types) = &q.types {
        params.push(types);
        sql.push_str(&format!(" AND type = ANY(${})", params.len()));
    }
    if let Some(since) = &q.since {
        params.push(since);
        sql.push_str(&format!(" AND commit_time >= ${}", params.len()));
    }
    if let Some(until) = &q.until {
        params.push(until);
        sql.push_str(&format!(" AND commit_time < ${}", params.len()));
    }
    // A row holds one event or more (at least one within from..=to), so
    // `limit` rows hold at least `limit` wanted events; but a record batch
    // holds up to hundreds, so only the rows up to the one that reaches
    // `limit` wanted events are sent (`data` of the others is never read,
    // let alone decompressed and shipped). A batch's events have
    // consecutive seqs `first_seq..=seq`, all of its one type and commit.
    params.push(&q.limit);
    let n = params.len();
    let last = match to_at {
        Some(t) => format!("least(seq, ${t})"),
        None => "seq".to_owned(),
    };
    let wanted = format!("({last} - greatest(coalesce(first_seq, seq), $1) + 1)");
    let inner = sql.replacen(
        &format!("SELECT {COLUMNS} FROM"),
        &format!("SELECT {COLUMNS}, {wanted} AS wanted, sum({wanted}) OVER (ORDER BY seq)::bigint AS upto FROM"),
        1,
    );
    let sql = format!(
        "SELECT {COLUMNS} FROM ({inner} ORDER BY seq LIMIT ${n}) e WHERE upto - wanted < ${n} ORDER BY seq"
    );
    let rows = client.query(&sql, &params).await?;
    let to = q.to.unwrap_or(i64::MAX);
    let limit = usize::try_from(q.limit).unwrap_or(0);
    let mut out = Vec::with_capacity(rows.len().min(limit));
    for r in &rows {
        if out.len() >= limit {
            break;
        }
        expand_row(&RowParts::of(r), |s| s >= q.from && s <= to, &mut out);
    }
    out.truncate(limit);
    Ok(out)
}

/// Events with `seq >= from`, in seq order, at most `limit`.
pub async fn read_events(
    client: &impl GenericClient,
    scope: &ReadScope,
    from: i64,
    limit: i64,
) -> Result<Vec<Committed>, tokio_postgres::Error> {
    query_events(
        client,
        scope,
        &LogQuery {
            from,
            limit,
            ..LogQuery::default()
        },
    )
    .await
}

/// The events with these seqs, in seq order, any tenant (the webhook
/// dispatcher: each delivery was matched to its tenant when written).
pub async fn events_by_seq(
    client: &impl GenericClient,
    seqs: &[i64],
) -> Result<Vec<Committed>, tokio_postgres::Error> {
    let mut wanted = seqs.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    // Per wanted seq, the one row that can hold it: the first whose last
    // event is at or after it, if its first event is at or before it.
    let sql = format!(
        "SELECT e.* FROM unnest($1::bigint[]) AS w(s)
         CROSS JOIN LATERAL (SELECT {COLUMNS} FROM sluice.events
                             WHERE seq >= w.s ORDER BY seq LIMIT 1) e
         WHERE coalesce(e.first_seq, e.seq) <= w.s
         ORDER BY e.seq"
    );
    let rows = client.query(&sql, &[&wanted]).await?;
    let mut out = Vec::with_capacity(wanted.len());
    let mut last_row = None;
    for r in &rows {
        let row = RowParts::of(r);
        // A batch holding several wanted seqs comes once per seq.
        if last_row == Some(row.seq) {
            continue;
        }
        last_row = Some(row.seq);
        expand_row(&row, |s| wanted.binary_search(&s).is_ok(), &mut out);
    }
    Ok(out)
}

/// SQL for the log's head: the highest seq ever handed out, the log's own or
/// one retention already pruned (0 for a new log). An expression, so an
/// INSERT can take the head in its own statement (`sluice.backfills`).
pub const HEAD_SQL: &str = "greatest((SELECT coalesce(max(seq), 0) FROM sluice.events),
         (SELECT coalesce(max(pruned_through), 0) FROM sluice.retention))";

/// The log's head ([`HEAD_SQL`]): every seq handed out so far is at or
/// below it, so the next event gets a higher one.
pub async fn head(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(&format!("SELECT {HEAD_SQL}"), &[])
        .await?
        .get(0))
}

/// The seqs of `tenant`'s custom events after `after` from the source
/// transaction `xid` (its 32-bit id, as the log stores it), in order: what
/// one publish appended. A record batch contributes each event it holds.
pub async fn custom_seqs_of_txid(
    client: &deadpool_postgres::Client,
    tenant: &TenantId,
    after: i64,
    xid: i64,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    // Prepared once per pooled connection: a publish looks here per wait.
    let stmt = client
        .prepare_cached(
            "SELECT s FROM sluice.events e,
                    generate_series(greatest(coalesce(e.first_seq, e.seq), $1::bigint + 1), e.seq) s
             WHERE e.seq > $1 AND e.tenant_hash = $2 AND e.tenant = $3 AND e.txid = $4
               AND e.type LIKE 'custom.%'
             ORDER BY s",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&after, &tenant.hash32(), &tenant.as_str(), &xid])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How many events of the tenant, per (type, topic), committed in the last
/// `window_secs` seconds, ordered by type then topic; a record batch counts
/// as the events it holds.
pub async fn counts_by_type_topic(
    client: &impl GenericClient,
    tenant: &TenantId,
    window_secs: f64,
) -> Result<Vec<(String, String, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            // A record batch row holds seq - first_seq + 1 events.
            "SELECT type, topic, sum(seq - coalesce(first_seq, seq) + 1)::bigint FROM sluice.events
             WHERE tenant_hash = $1 AND tenant = $2 AND commit_time >= now() - make_interval(secs => $3)
             GROUP BY type, topic ORDER BY type, topic",
            &[&tenant.hash32(), &tenant.as_str(), &window_secs],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Which of `seqs` are events of the tenant in the log (a seq may lie inside
/// a record batch), each once, in no particular order.
pub async fn tenant_seqs_present(
    client: &impl GenericClient,
    tenant: &TenantId,
    seqs: &[i64],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            // The one row that can hold a seq is the tenant's first whose
            // last seq is >= it.
            "SELECT DISTINCT w.s FROM unnest($1::bigint[]) AS w(s)
             CROSS JOIN LATERAL (
                 SELECT seq, first_seq FROM sluice.events
                 WHERE seq >= w.s AND tenant_hash = $2 AND tenant = $3
                 ORDER BY seq LIMIT 1) e
             WHERE coalesce(e.first_seq, e.seq) <= w.s",
            &[&seqs, &tenant.hash32(), &tenant.as_str()],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The highest seq pruned by retention (0 when nothing was): positions at or
/// below it are gone.
pub async fn pruned_through(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT pruned_through FROM sluice.retention", &[])
        .await?
        .map_or(0, |r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(
        seq: i64,
        first_seq: Option<i64>,
        subject: Option<&'a str>,
        data: &'a str,
    ) -> RowParts<'a> {
        RowParts {
            seq,
            first_seq,
            tenant: "acme",
            event_type: "row.insert",
            topic: "public.orders",
            source: "pg/main",
            subject,
            txid: Some(731),
            lsn: Some(0x1_6B37_4D48),
            commit_micros: 1_700_000_000_123_456,
            data,
            ext: None,
        }
    }

    fn expand(r: &RowParts<'_>, from: i64, to: i64) -> Vec<Committed> {
        let mut out = Vec::new();
        expand_row(r, |s| s >= from && s <= to, &mut out);
        out
    }

    fn all(r: &RowParts<'_>) -> Vec<Committed> {
        expand(r, i64::MIN, i64::MAX)
    }

    fn seqs(events: &[Committed]) -> Vec<i64> {
        events.iter().map(|e| e.seq).collect()
    }

    /// The same event, stored as an ordinary one-event row.
    fn single(seq: i64, subject: Option<&str>, data: &str) -> Committed {
        let mut v = all(&row(seq, None, subject, data));
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn a_single_row_is_one_event_with_the_envelope_as_before() {
        let data = r#"{"new": {"id": 7, "price": 1.50}}"#;
        let events = all(&row(42, None, Some("7"), data));
        assert_eq!(seqs(&events), [42]);
        let e = &events[0];
        let time = format_time_micros(1_700_000_000_123_456);
        let expected = Envelope {
            seq: 42,
            source: "pg/main",
            event_type: "row.insert",
            subject: Some("7"),
            time: &time,
            tenant: "acme",
            topic: "public.orders",
            txid: Some(731),
            lsn: Some(0x1_6B37_4D48),
            ext: None,
            data,
        }
        .to_json();
        assert_eq!(e.body, expected);
        assert_eq!(
            (e.tenant.as_str(), &*e.event_type, &*e.topic),
            ("acme", "row.insert", "public.orders")
        );
        assert_eq!(e.commit_micros, 1_700_000_000_123_456);
        assert_eq!(e.data(), serde_json::from_str(data).ok());
        // Bounds apply to single rows too.
        assert!(expand(&row(42, None, None, "1"), 43, 50).is_empty());
        assert!(expand(&row(42, None, None, "1"), 1, 41).is_empty());
    }

    #[test]
    fn a_batch_row_is_its_events_byte_for_byte_as_single_rows() {
        let data = r#"[["1", {"id": 1, "n": 1.50e3}], ["2",{"id":2}] , [null, null], ["4", "x"]]"#;
        let events = all(&row(13, Some(10), None, data));
        assert_eq!(seqs(&events), [10, 11, 12, 13]);
        assert_eq!(
            events[0],
            single(10, Some("1"), r#"{"id": 1, "n": 1.50e3}"#)
        );
        assert_eq!(events[1], single(11, Some("2"), r#"{"id":2}"#));
        assert_eq!(events[2], single(12, None, "null"));
        assert_eq!(events[3], single(13, Some("4"), r#""x""#));
        assert!(!String::from_utf8_lossy(&events[2].body).contains("\"subject\""));
    }

    #[test]
    fn from_and_to_cut_a_batch_per_event() {
        let data = r#"[["a",1],["b",2],["c",3],["d",4],["e",5]]"#;
        let r = row(104, Some(100), None, data);
        assert_eq!(seqs(&expand(&r, 102, i64::MAX)), [102, 103, 104]);
        assert_eq!(seqs(&expand(&r, 0, 101)), [100, 101]);
        assert_eq!(seqs(&expand(&r, 101, 103)), [101, 102, 103]);
        assert_eq!(seqs(&expand(&r, 103, 103)), [103]);
        assert!(expand(&r, 105, 200).is_empty());
        assert!(expand(&r, 0, 99).is_empty());
        assert_eq!(expand(&r, 103, 103)[0], single(103, Some("d"), "4"));
    }

    #[test]
    fn subjects_with_escapes_and_unicode_come_back_decoded() {
        let subject = "a\"b\\c/d\u{0001}\n é ü 😀 \u{2028}";
        let data = r#"[["a\"b\\c\/d\u0001\n \u00e9 ü \ud83d\ude00 \u2028", {"k": "v"}]]"#;
        let events = all(&row(5, Some(5), None, data));
        assert_eq!(events, [single(5, Some(subject), r#"{"k": "v"}"#)]);
        let v: serde_json::Value = serde_json::from_slice(&events[0].body).expect("json");
        assert_eq!(v["subject"], subject);
    }

    #[test]
    fn malformed_batches_are_skipped_without_panicking() {
        for (seq, first, data) in [
            (3, 1, r#"{"not": "an array"}"#),
            (3, 1, "not json"),
            (3, 1, ""),
            // Too short, too long.
            (3, 1, r#"[["a",1],["b",2]]"#),
            (3, 1, r#"[["a",1],["b",2],["c",3],["d",4]]"#),
            // A pair missing its data, a triple, a subject that is no string.
            (3, 1, r#"[["a",1],["b"],["c",3]]"#),
            (3, 1, r#"[["a",1],["b",2,9],["c",3]]"#),
            (3, 1, r#"[["a",1],[7,2],["c",3]]"#),
            // Trailing garbage.
            (3, 1, r#"[["a",1],["b",2],["c",3]] x"#),
            // first_seq after seq.
            (1, 3, r#"[["a",1]]"#),
        ] {
            assert!(all(&row(seq, Some(first), None, data)).is_empty(), "{data}");
        }
        // Other rows are still read.
        let mut out = Vec::new();
        expand_row(&row(1, None, None, "1"), |_| true, &mut out);
        expand_row(&row(3, Some(2), None, "[1]"), |_| true, &mut out);
        expand_row(
            &row(5, Some(4), None, r#"[["x",4],["y",5]]"#),
            |_| true,
            &mut out,
        );
        assert_eq!(seqs(&out), [1, 4, 5]);
    }
}
