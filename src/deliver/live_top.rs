//! Top-N live queries (`order_by` and `limit` beside `snapshot=true`): the
//! first N rows of the subscriber's view in one column's order, then
//! `row.entered` / `row.left` / `row.updated` that keep the client's view
//! equal to re-running `ORDER BY <column>, <key> LIMIT N`.
//!
//! The server keeps a window of the view's first rows, at most twice the
//! limit (`TopView`), with this invariant: the window is exactly the first
//! `len` rows of the view in order, and when it is not `complete` every
//! row outside it orders after its last row. A change (already held to the
//! subscriber's policy and filter, as membership) moves, adds or removes a
//! row in the window; a row that would land past the window's end while
//! rows outside it are unknown is dropped from it (the window shrinks, the
//! invariant holds). When the window holds fewer rows than the limit and is
//! not complete, the table is read again at a new snapshot and hand-over
//! (the same exact hand-over as every live query) and the client is sent
//! the difference. The client's view is the window's first `limit` rows;
//! after each change the difference to before goes out: `row.left` first,
//! then `row.entered` / `row.updated`, all with the change's seq.
//!
//! Rows whose order column is null are not in a top-N view. Order columns
//! and key columns must be numbers (exact decimal order), text (byte order:
//! the read orders `COLLATE "C"`), uuids, or dates and timestamps
//! (chronological).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::follow::{FollowError, Start};
use super::live::{
    handover, Live, LiveConfig, LiveError, LiveItem, LiveTable, Snapshot, PAGE_ROWS,
};
use super::Streams;
use crate::event::types::{DELETED, ENTERED, INSERTED, LEFT, SNAPSHOT, TRUNCATED, UPDATED};
use crate::event::{Committed, TenantId};
use crate::policy::Access;
use crate::sql::quote_ident;
use crate::subscription::filter::{compare_numbers, compare_times};

/// How many times a read may be redone because the changes up to its own
/// hand-over emptied its window, before the live query gives up.
const REREADS: usize = 5;

/// A top-N query: the column, its direction, and N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopSpec {
    pub column: String,
    pub descending: bool,
    pub limit: usize,
}

impl TopSpec {
    /// `order_by` (`created_at`, or `-created_at` for descending) and
    /// `limit` (1 to `max`); the error names what is wrong.
    pub fn parse(order_by: &str, limit: Option<i64>, max: usize) -> Result<TopSpec, String> {
        let (descending, column) = match order_by.strip_prefix('-') {
            Some(c) => (true, c),
            None => (false, order_by),
        };
        if column.is_empty() || column.len() > 63 {
            return Err(format!(
                "expected a column name (1 to 63 bytes), optionally after - for descending; got {order_by:?}"
            ));
        }
        let Some(limit) = limit else {
            return Err("order_by needs limit (the N of the top N)".to_owned());
        };
        let limit = usize::try_from(limit)
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| {
                format!("limit: expected 1 to {max} (http.max_top_rows), got {limit}")
            })?;
        Ok(TopSpec {
            column: column.to_owned(),
            descending,
            limit,
        })
    }

    /// Rows the window keeps: the limit, and as many again so that rows
    /// leaving the view are replaced without a read.
    fn capacity(&self) -> usize {
        self.limit.saturating_mul(2)
    }
}

/// How a column's values order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
    Time,
}

impl Kind {
    /// The kind of a column of type `type_name` (`format_type`), if it can
    /// order a top-N query.
    fn of(type_name: &str) -> Option<Kind> {
        let base = type_name.split('(').next().unwrap_or(type_name).trim();
        match base {
            "smallint" | "integer" | "bigint" | "numeric" => Some(Kind::Number),
            "text" | "character varying" | "uuid" => Some(Kind::Text),
            "date" => Some(Kind::Time),
            b if b.starts_with("timestamp") => Some(Kind::Time),
            _ => None,
        }
    }

    /// ` COLLATE "C"` where SQL must order as bytes.
    fn collate(self) -> &'static str {
        match self {
            Kind::Text => " COLLATE \"C\"",
            Kind::Number | Kind::Time => "",
        }
    }

    fn compare(self, a: &Value, b: &Value) -> Ordering {
        match self {
            Kind::Number => compare_numbers(a, b).unwrap_or_else(|| rank(a).cmp(&rank(b))),
            Kind::Text => text_of(a).cmp(&text_of(b)),
            Kind::Time => compare_times(&text_of(a), &text_of(b)),
        }
    }
}

/// Postgres orders `-Infinity` < numbers < `Infinity` < `NaN`.
fn rank(v: &Value) -> u8 {
    match v.as_str() {
        Some("-Infinity") => 0,
        Some("Infinity") => 2,
        Some("NaN") => 3,
        _ => 1,
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A row's place in the view: its order value, then its key, in the
/// query's direction.
#[derive(Debug, Clone)]
struct Place {
    descending: bool,
    parts: Vec<(Kind, Value)>,
}

impl Ord for Place {
    fn cmp(&self, other: &Place) -> Ordering {
        let ord = self
            .parts
            .iter()
            .zip(&other.parts)
            .map(|((k, a), (_, b))| k.compare(a, b))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal);
        if self.descending {
            ord.reverse()
        } else {
            ord
        }
    }
}

impl PartialOrd for Place {
    fn partial_cmp(&self, other: &Place) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Place {
    fn eq(&self, other: &Place) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Place {}

/// A row in the window: its key, its row, and the envelope it last came
/// in (the template of what is sent about it).
#[derive(Debug, Clone)]
struct Member {
    key: Value,
    row: Value,
    last: Arc<Committed>,
}

/// The window of a top-N view (the module doc has its invariant).
pub struct TopView {
    spec: TopSpec,
    order: Kind,
    keys: Vec<(String, Kind)>,
    rows: BTreeMap<Place, Member>,
    places: HashMap<String, Place>,
    complete: bool,
}

/// What a change did to the window.
enum Applied {
    Done,
    /// Fewer rows than the limit and more exist: read again.
    Refill,
}

impl TopView {
    fn new(spec: TopSpec, order: Kind, keys: Vec<(String, Kind)>) -> TopView {
        TopView {
            spec,
            order,
            keys,
            rows: BTreeMap::new(),
            places: HashMap::new(),
            complete: false,
        }
    }

    fn place(&self, key: &Value, row: &Value) -> Option<Place> {
        let value = row.get(&self.spec.column).filter(|v| !v.is_null())?;
        let mut parts = vec![(self.order, value.clone())];
        for (name, kind) in &self.keys {
            parts.push((*kind, key.get(name)?.clone()));
        }
        Some(Place {
            descending: self.spec.descending,
            parts,
        })
    }

    fn remove(&mut self, key: &str) {
        if let Some(p) = self.places.remove(key) {
            self.rows.remove(&p);
        }
    }

    fn insert(&mut self, id: String, place: Place, member: Member) {
        self.places.insert(id, place.clone());
        self.rows.insert(place, member);
        if self.rows.len() > self.spec.capacity() {
            if let Some((p, _)) = self.rows.pop_last() {
                self.places.retain(|_, q| *q != p);
            }
            self.complete = false;
        }
    }

    /// A row of the initial read, in order.
    fn load(&mut self, event: Arc<Committed>) {
        let Some(data) = event.data() else { return };
        let (Some(key), Some(row)) = (data.get("key"), data.get("new")) else {
            return;
        };
        if let Some(place) = self.place(key, row) {
            let member = Member {
                key: key.clone(),
                row: row.clone(),
                last: event.clone(),
            };
            self.insert(key.to_string(), place, member);
        }
    }

    /// One change, as the subscriber's access admitted it.
    fn apply(&mut self, event: &Arc<Committed>) -> Applied {
        let Some(data) = event.data() else {
            return Applied::Done;
        };
        let key = data.get("key").cloned().unwrap_or(Value::Null);
        let id = key.to_string();
        match &*event.event_type {
            INSERTED | UPDATED | ENTERED | SNAPSHOT => {
                self.remove(&id);
                let row = data.get("new").cloned().unwrap_or(Value::Null);
                if let Some(place) = self.place(&key, &row) {
                    let within = self.complete
                        || self
                            .rows
                            .last_key_value()
                            .is_some_and(|(last, _)| place < *last);
                    if within {
                        let member = Member {
                            key,
                            row,
                            last: event.clone(),
                        };
                        self.insert(id, place, member);
                    }
                }
            }
            DELETED | LEFT => self.remove(&id),
            TRUNCATED => {
                self.rows.clear();
                self.places.clear();
                self.complete = true;
            }
            _ => {}
        }
        if !self.complete && self.rows.len() < self.spec.limit {
            Applied::Refill
        } else {
            Applied::Done
        }
    }

    /// The client's view: the window's first `limit` rows.
    fn visible(&self) -> Vec<(String, Member)> {
        self.rows
            .values()
            .take(self.spec.limit)
            .map(|m| (m.key.to_string(), m.clone()))
            .collect()
    }
}

/// What to send to go from view `before` to view `after`, stamped with
/// `trigger`'s seq, time and transaction: `row.left` first, then
/// `row.entered` and `row.updated` in view order.
fn difference(
    before: &[(String, Member)],
    after: &[(String, Member)],
    trigger: &Committed,
) -> Vec<Arc<Committed>> {
    let was: HashMap<&str, &Member> = before.iter().map(|(k, m)| (k.as_str(), m)).collect();
    let now: HashMap<&str, &Member> = after.iter().map(|(k, m)| (k.as_str(), m)).collect();
    let mut out = Vec::new();
    for (k, m) in before {
        if !now.contains_key(k.as_str()) {
            out.extend(envelope(m, LEFT, trigger));
        }
    }
    for (k, m) in after {
        match was.get(k.as_str()) {
            None => out.extend(envelope(m, ENTERED, trigger)),
            Some(old) if old.row != m.row => out.extend(envelope(m, UPDATED, trigger)),
            Some(_) => {}
        }
    }
    out
}

/// An envelope about `m` of type `kind`, on `trigger`'s position.
fn envelope(m: &Member, kind: &str, trigger: &Committed) -> Option<Arc<Committed>> {
    let mut env: Value = serde_json::from_slice(&m.last.body).ok()?;
    let at: Value = serde_json::from_slice(&trigger.body).ok()?;
    let obj = env.as_object_mut()?;
    let old_data = obj.get("data").cloned().unwrap_or(Value::Null);
    let mut data = Map::new();
    let op = match kind {
        LEFT => "left",
        ENTERED => "entered",
        UPDATED => "update",
        _ => "snapshot",
    };
    data.insert("op".into(), op.into());
    for k in ["schema", "table"] {
        if let Some(v) = old_data.get(k) {
            data.insert(k.into(), v.clone());
        }
    }
    data.insert("key".into(), m.key.clone());
    data.insert(
        if kind == LEFT { "old" } else { "new" }.into(),
        m.row.clone(),
    );
    obj.insert("data".into(), Value::Object(data));
    obj.insert("type".into(), kind.into());
    obj.insert("seq".into(), json!(trigger.seq));
    obj.insert("id".into(), json!(trigger.seq.to_string()));
    // The change's moment (a read's stand-ins have none: the row's own
    // stays).
    for k in ["time", "txid", "lsn"] {
        if let Some(v) = at.get(k) {
            obj.insert(k.into(), v.clone());
        }
    }
    Some(Arc::new(Committed {
        seq: trigger.seq,
        tenant: trigger.tenant.clone(),
        topic: m.last.topic.clone(),
        event_type: Arc::from(kind),
        body: Bytes::from(serde_json::to_vec(&env).ok()?),
        commit_micros: trigger.commit_micros,
    }))
}

/// The seq-0 stand-in a read's rows are stamped with (`row.snapshot`).
fn snapshot_stamp(tenant: &TenantId) -> Committed {
    Committed {
        seq: 0,
        tenant: tenant.clone(),
        topic: Arc::from(""),
        event_type: Arc::from(SNAPSHOT),
        body: Bytes::from_static(b"{}"),
        commit_micros: 0,
    }
}

/// A hand-over's stand-in: the difference a new read makes goes out at
/// its seq.
fn handover_stamp(tenant: &TenantId, seq: i64) -> Committed {
    Committed {
        seq,
        tenant: tenant.clone(),
        topic: Arc::from(""),
        event_type: Arc::from(UPDATED),
        body: Bytes::from(
            json!({"time": crate::event::format_time_micros(chrono::Utc::now().timestamp_micros())})
                .to_string(),
        ),
        commit_micros: chrono::Utc::now().timestamp_micros(),
    }
}

impl Live {
    /// Starts a top-N live query: its rows, `Synced`, then its changes,
    /// all on the receiver (it never hands over to a follower: the window
    /// lives in its task).
    pub fn start_top(
        self: &Arc<Live>,
        streams: Streams,
        tenant: TenantId,
        access: Arc<Access>,
        table: LiveTable,
        spec: TopSpec,
    ) -> mpsc::Receiver<Result<LiveItem, LiveError>> {
        let (tx, rx) = mpsc::channel(256);
        let live = self.clone();
        live.metrics
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = live
                .run_top(&streams, &tenant, &access, &table, &spec, &tx)
                .await
            {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn run_top(
        &self,
        streams: &Streams,
        tenant: &TenantId,
        access: &Arc<Access>,
        table: &LiveTable,
        spec: &TopSpec,
        out: &mpsc::Sender<Result<LiveItem, LiveError>>,
    ) -> Result<(), LiveError> {
        let (mut view, handover) = self.read_top(tenant, access, table, spec).await?;
        let stamp = snapshot_stamp(tenant);
        for (_, m) in view.visible() {
            if let Some(row) = envelope(&m, SNAPSHOT, &stamp) {
                if out.send(Ok(LiveItem::Row(row))).await.is_err() {
                    return Ok(());
                }
            }
        }
        if out.send(Ok(LiveItem::Synced(handover))).await.is_err() {
            return Ok(());
        }
        let mut follower =
            streams.follower(tenant.clone(), access.clone(), Start::At(handover + 1));
        loop {
            let next = tokio::select! {
                next = follower.next() => next,
                () = out.closed() => return Ok(()),
            };
            let event = match next {
                Ok(e) => e,
                Err(FollowError::Gap { .. }) => {
                    return Err(LiveError::Unavailable(
                        "the log (retention passed this live query's position)",
                    ))
                }
                Err(FollowError::Db(_)) => return Err(LiveError::Unavailable("the log")),
            };
            let before = view.visible();
            let sent = match view.apply(&event) {
                Applied::Done => difference(&before, &view.visible(), &event),
                Applied::Refill => {
                    let (fresh, at) = self.read_top(tenant, access, table, spec).await?;
                    view = fresh;
                    follower = streams.follower(tenant.clone(), access.clone(), Start::At(at + 1));
                    difference(&before, &view.visible(), &handover_stamp(tenant, at))
                }
            };
            for e in sent {
                if out.send(Ok(LiveItem::Change(e))).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// A window of the view at a new snapshot, brought to its hand-over.
    async fn read_top(
        &self,
        tenant: &TenantId,
        access: &Access,
        table: &LiveTable,
        spec: &TopSpec,
    ) -> Result<(TopView, i64), LiveError> {
        for _ in 0..REREADS {
            let (mut view, handover, changes) =
                self.read_window(tenant, access, table, spec).await?;
            let mut emptied = false;
            for c in &changes {
                if let Some(seen) = access.admit_one(c) {
                    emptied |= matches!(view.apply(&seen), Applied::Refill);
                }
            }
            if !emptied || view.complete || view.rows.len() >= spec.limit {
                return Ok((view, handover));
            }
        }
        Err(LiveError::Unavailable(
            "the top-N window (rows leave it faster than it can be read); retry",
        ))
    }

    async fn read_window(
        &self,
        tenant: &TenantId,
        access: &Access,
        table: &LiveTable,
        spec: &TopSpec,
    ) -> Result<(TopView, i64, Vec<Arc<Committed>>), LiveError> {
        let ctx: &LiveConfig = self.config();
        self.metrics
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut snap = Snapshot::begin(ctx, table).await?;
        let route = format!("tables/{}.{}", table.schema, table.table);
        let info = &snap.info;
        let cols = &info.relation.columns;
        let Some(at) = cols.iter().position(|c| c.name == spec.column) else {
            return Err(LiveError::Table(format!(
                "order_by: table {}.{} has no column {:?}",
                table.schema, table.table, spec.column
            )));
        };
        if !access.shows_column(&route, &spec.column) {
            return Err(LiveError::Table(format!(
                "order_by: column {:?} is hidden from this credential",
                spec.column
            )));
        }
        let kind_at = |i: usize| {
            Kind::of(&info.type_names[i]).ok_or_else(|| {
                LiveError::Table(format!(
                    "order_by: column {} is {}; a top-N query orders numbers, text, uuids, dates and timestamps",
                    cols[i].name, info.type_names[i]
                ))
            })
        };
        let order = kind_at(at)?;
        let mut ordered = vec![(at, order)];
        let mut keys = Vec::new();
        for &i in &info.primary_key {
            let k = kind_at(i)?;
            ordered.push((i, k));
            keys.push((cols[i].name.clone(), k));
        }
        let shows = |c: &str| access.shows_column(&route, c);
        let first_param = 2 + ordered.len();
        let pushed = {
            let columns = snap.columns(table, &shows);
            access
                .selector
                .filter
                .as_ref()
                .and_then(|f| f.pushdown(&columns, first_param))
        };
        let dir = if spec.descending { " DESC" } else { "" };
        let cmp = if spec.descending { "<" } else { ">" };
        let lhs: Vec<String> = ordered
            .iter()
            .map(|(i, k)| format!("t.{}{}", quote_ident(&cols[*i].name), k.collate()))
            .collect();
        let rhs: Vec<String> = ordered
            .iter()
            .enumerate()
            .map(|(n, (i, k))| format!("${}::text::{}{}", n + 2, info.type_names[*i], k.collate()))
            .collect();
        let unused: Vec<String> = (0..ordered.len())
            .map(|n| format!("${}::text IS NULL", n + 2))
            .collect();
        let order_by: Vec<String> = lhs.iter().map(|l| format!("{l}{dir}")).collect();
        let mut base = format!(
            "{} WHERE t.{} = $1::text::{} AND t.{} IS NOT NULL",
            snap.select_from(),
            quote_ident(&cols[snap.tenant_at].name),
            info.type_names[snap.tenant_at],
            quote_ident(&spec.column),
        );
        if let Some(p) = &pushed {
            base.push_str(&format!(" AND ({})", p.sql));
        }
        let tail = format!(" ORDER BY {} LIMIT {PAGE_ROWS}", order_by.join(", "));
        let first = format!("{base} AND {}{tail}", unused.join(" AND "));
        let next = format!(
            "{base} AND ({}) {cmp} ({}){tail}",
            lhs.join(", "),
            rhs.join(", ")
        );
        let pushed_params: Vec<Option<String>> = pushed
            .as_ref()
            .map(|p| p.params.iter().cloned().map(Some).collect())
            .unwrap_or_default();
        let mut view = TopView::new(spec.clone(), order, keys);
        let bound: Vec<usize> = ordered.iter().map(|(i, _)| *i).collect();
        let params = |after: Option<&[Option<String>]>| {
            let mut p: Vec<Option<String>> = vec![Some(tenant.as_str().to_owned())];
            match after {
                Some(a) => p.extend(a.iter().cloned()),
                None => p.extend(bound.iter().map(|_| None)),
            }
            p.extend(pushed_params.iter().cloned());
            p
        };
        let max_rows = self.config().max_rows;
        let mut read: u64 = 0;
        let mut full = false;
        // The log catches up with the snapshot while its pages are read.
        let ((), handover) = tokio::try_join!(
            snap.pages(&first, &next, &bound, params, tenant, |event| {
                read += 1;
                if read > max_rows {
                    return Err(LiveError::TooLarge(max_rows));
                }
                if let Some(seen) = event.and_then(|e| access.admit_one(&e)) {
                    view.load(seen);
                }
                full = view.rows.len() >= spec.capacity();
                Ok(!full)
            }),
            handover(ctx)
        )?;
        // Every row was read unless the window filled first.
        view.complete = !full;
        self.metrics
            .rows_read
            .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        let changes = snap.finish(ctx, tenant, table, handover).await?;
        Ok((view, handover, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, kind: &str, id: i64, row: Option<Value>) -> Arc<Committed> {
        let mut data = json!({"op": "x", "schema": "public", "table": "t", "key": {"id": id}});
        if let Some(r) = row {
            data["new"] = r;
        }
        let body = json!({"seq": seq, "id": seq.to_string(), "type": kind, "tenant": "acme",
                          "topic": "tables/public.t/update", "time": "2026-01-01T00:00:00Z", "data": data});
        Arc::new(Committed {
            seq,
            tenant: TenantId::new("acme").expect("tenant"),
            topic: Arc::from("tables/public.t/update"),
            event_type: Arc::from(kind),
            body: Bytes::from(body.to_string()),
            commit_micros: 0,
        })
    }

    fn view(limit: usize, descending: bool) -> TopView {
        TopView::new(
            TopSpec {
                column: "score".into(),
                descending,
                limit,
            },
            Kind::Number,
            vec![("id".into(), Kind::Number)],
        )
    }

    fn ids(v: &TopView) -> Vec<i64> {
        v.visible()
            .iter()
            .map(|(_, m)| m.key["id"].as_i64().expect("id"))
            .collect()
    }

    #[test]
    fn a_window_keeps_the_first_rows_and_asks_for_more_when_it_runs_short() {
        let mut v = view(2, true);
        // The initial read, in order: four of more rows (capacity 4).
        for (id, score) in [(1, 90), (2, 80), (3, 70), (4, 60)] {
            v.load(event(
                0,
                SNAPSHOT,
                id,
                Some(json!({"id": id, "score": score})),
            ));
        }
        assert_eq!(ids(&v), [1, 2]);
        // A row past the window's end while more rows exist: not taken.
        assert!(matches!(
            v.apply(&event(5, INSERTED, 9, Some(json!({"id": 9, "score": 10})))),
            Applied::Done
        ));
        assert_eq!(v.rows.len(), 4);
        // A new top row: enters, and the window stays at its capacity.
        let before = v.visible();
        v.apply(&event(6, INSERTED, 5, Some(json!({"id": 5, "score": 95}))));
        let sent = difference(&before, &v.visible(), &event(6, INSERTED, 5, None));
        let kinds: Vec<(String, i64)> = sent
            .iter()
            .map(|e| {
                (
                    e.event_type.to_string(),
                    e.data().expect("data")["key"]["id"].as_i64().expect("id"),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [("row.left".to_owned(), 2), ("row.entered".to_owned(), 5)]
        );
        assert!(sent.iter().all(|e| e.seq == 6));
        assert_eq!(ids(&v), [5, 1]);
        // Numbers compare as decimals: "85.5" between 90 and 80.
        v.apply(&event(
            7,
            UPDATED,
            2,
            Some(json!({"id": 2, "score": "95.50"})),
        ));
        assert_eq!(ids(&v), [2, 5]);
        // Rows leave until fewer than the limit remain known: read again.
        for (seq, id) in [(8, 2), (9, 5), (10, 1)] {
            let step = v.apply(&event(seq, DELETED, id, None));
            assert_eq!(
                matches!(step, Applied::Refill),
                seq == 10,
                "after deleting {id}"
            );
        }
        // A null order value is not in the view.
        v.apply(&event(
            11,
            UPDATED,
            3,
            Some(json!({"id": 3, "score": null})),
        ));
        assert!(v.rows.values().all(|m| m.key["id"] != 3));
    }

    #[test]
    fn a_complete_window_takes_every_row_and_ties_order_by_key() {
        let mut v = view(3, false);
        v.complete = true;
        for (seq, id, score) in [(1, 3, 5), (2, 1, 5), (3, 2, 1)] {
            v.apply(&event(
                seq,
                INSERTED,
                id,
                Some(json!({"id": id, "score": score})),
            ));
        }
        assert_eq!(ids(&v), [2, 1, 3]);
        v.apply(&event(4, TRUNCATED, 0, None));
        assert!(ids(&v).is_empty() && v.complete);
    }

    #[test]
    fn specs_are_parsed_with_precise_errors() {
        assert_eq!(
            TopSpec::parse("-created_at", Some(10), 1000),
            Ok(TopSpec {
                column: "created_at".into(),
                descending: true,
                limit: 10
            })
        );
        assert!(TopSpec::parse("score", None, 1000)
            .unwrap_err()
            .contains("needs limit"));
        assert!(TopSpec::parse("score", Some(0), 1000)
            .unwrap_err()
            .contains("1 to 1000"));
        assert!(TopSpec::parse("-", Some(5), 1000).is_err());
    }

    #[test]
    fn kinds_follow_the_column_types() {
        assert_eq!(Kind::of("numeric(12,2)"), Some(Kind::Number));
        assert_eq!(Kind::of("timestamp with time zone"), Some(Kind::Time));
        assert_eq!(Kind::of("timestamp(3) without time zone"), Some(Kind::Time));
        assert_eq!(Kind::of("character varying(20)"), Some(Kind::Text));
        assert_eq!(Kind::of("jsonb"), None);
        assert_eq!(
            Kind::Time.compare(
                &json!("2026-01-01T00:00:30Z"),
                &json!("2026-01-01T00:00:30.5Z")
            ),
            Ordering::Less
        );
        assert_eq!(
            Kind::Number.compare(&json!("NaN"), &json!(1e9)),
            Ordering::Greater
        );
    }
}
