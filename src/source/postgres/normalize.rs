//! Normalize + tenant-tag: decoded pgoutput changes become [`PendingEvent`]s.
//!
//! Pure: the relation cache is filled by the caller with relations whose
//! column types and key columns were already resolved (that needs the
//! catalog, which is I/O). The tenant is read from the row itself, never
//! from anything a client sent; a row whose tenant cannot be read is not
//! given to anyone and is reported as [`Dropped`](Outcome::Dropped).
//!
//! This runs for every change, so `data` is written straight from the
//! tuple's datums into one buffer (no intermediate JSON tree); column keys
//! are escaped once per relation.

use std::collections::HashMap;
use std::sync::Arc;

use super::pgoutput::{
    Datum, Delete, Insert, Message, OldTuple, Relation, Truncate, Tuple, Update,
};
use super::value::{write_json, PgType};
use crate::event::json::write_json_string;
use crate::event::{
    format_time_micros, types, Audience, JsonText, PendingEvent, SourcePosition, TenantId,
};

/// How one captured table is tagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRule {
    pub tenant_column: String,
    pub fields_only: bool,
}

impl From<&crate::config::TableConfig> for TableRule {
    fn from(t: &crate::config::TableConfig) -> TableRule {
        TableRule {
            tenant_column: t.tenant_column.clone(),
            fields_only: t.fields_only,
        }
    }
}

/// A relation with everything the normalizer needs to know about it.
#[derive(Debug, Clone)]
pub struct ResolvedRelation {
    pub relation: Relation,
    /// One per column of `relation`.
    pub types: Vec<PgType>,
    /// Indexes of the columns that identify a row: the primary key, else the
    /// replica identity columns.
    pub key_columns: Vec<usize>,
    /// `None` when the table is not captured (its changes are ignored).
    pub rule: Option<TableRule>,
}

/// Per-relation values computed once, not per row.
#[derive(Debug)]
struct CachedRelation {
    resolved: ResolvedRelation,
    qualified: Arc<str>,
    tenant_index: Option<usize>,
    /// insert, update, delete, truncate, snapshot.
    topics: [Arc<str>; 5],
    /// `"column":` per column, escaped.
    keys: Vec<Vec<u8>>,
    /// `{"op":"…","schema":"…","table":"…"` minus the op, which varies.
    head: String,
}

/// The transaction a change belongs to.
#[derive(Debug, Clone)]
pub struct TxContext {
    pub xid: u32,
    pub commit_lsn: u64,
    /// Microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    /// `commit_time_micros` formatted, shared by the transaction's events.
    pub time: Arc<str>,
}

impl TxContext {
    pub fn new(xid: u32, commit_lsn: u64, commit_time_micros: i64) -> TxContext {
        TxContext {
            xid,
            commit_lsn,
            commit_time_micros,
            time: format_time_micros(commit_time_micros).into(),
        }
    }
}

/// Why a change produced no event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// The row has no usable tenant value (NULL, missing from the old image,
    /// or not a valid tenant id).
    NoTenant {
        table: String,
        key: String,
        why: String,
    },
    /// A relation id that no Relation message introduced.
    UnknownRelation(u32),
    /// The tuple does not have one value per column of its relation.
    ShapeMismatch { table: String },
    /// A `sluice` logical message whose content is not a valid custom event.
    MalformedCustom(String),
}

#[derive(Debug)]
pub enum Outcome {
    Event(PendingEvent),
    /// The change belongs to a table Sluice does not capture.
    Ignored,
    Dropped(DropReason),
}

/// Counts of values that did not convert under the documented mapping and
/// were sent as their Postgres text instead.
#[derive(Debug, Default, Clone, Copy)]
pub struct NormalizeStats {
    pub value_fallbacks: u64,
}

/// Maximum sub-events of one change (a TRUNCATE names several relations).
/// Event positions are `change_index * SUBS + sub_index`, so every event of
/// a transaction has its own deterministic position.
pub const SUBS_PER_CHANGE: u64 = 1 << 16;

pub struct Normalizer {
    source: Arc<str>,
    relations: HashMap<u32, CachedRelation>,
    pub stats: NormalizeStats,
    /// Size of the last `data` written, to size the next buffer.
    last_len: usize,
    /// The event types used so far, shared by their events.
    types: Vec<Arc<str>>,
    /// Tenant ids seen lately, by their bytes: events of one tenant share
    /// one id rather than allocating and checking it per event.
    tenants: TenantCache,
}

/// Tenant values → their checked ids, emptied when it reaches
/// [`TenantCache::MAX`] entries.
#[derive(Default)]
struct TenantCache(HashMap<Box<[u8]>, TenantId>);

impl TenantCache {
    const MAX: usize = 4096;

    fn get(&mut self, bytes: &[u8]) -> Result<TenantId, String> {
        if let Some(t) = self.0.get(bytes) {
            return Ok(t.clone());
        }
        let s =
            std::str::from_utf8(bytes).map_err(|_| "the tenant value is not UTF-8".to_owned())?;
        let t = TenantId::new(s).map_err(|e| e.to_string())?;
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(bytes.into(), t.clone());
        Ok(t)
    }
}

/// Which columns of a tuple to write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Image {
    /// Every column (a new row, or a full old row).
    Full,
    /// Only the key columns (a `K` old tuple sends the others as NULL
    /// placeholders, which say nothing about the row).
    KeyOnly,
}

impl Normalizer {
    pub fn new(source: &str) -> Normalizer {
        Normalizer {
            source: source.into(),
            relations: HashMap::new(),
            stats: NormalizeStats::default(),
            last_len: 256,
            types: Vec::new(),
            tenants: TenantCache::default(),
        }
    }

    /// Forgets every relation (a new replication session re-sends them).
    pub fn clear_relations(&mut self) {
        self.relations.clear();
    }

    /// Adds or replaces a relation (a schema change sends a new Relation).
    pub fn set_relation(&mut self, resolved: ResolvedRelation) {
        let rel = &resolved.relation;
        let qualified: Arc<str> = format!("{}.{}", rel.namespace, rel.name).into();
        let tenant_index = resolved
            .rule
            .as_ref()
            .and_then(|r| rel.columns.iter().position(|c| c.name == r.tenant_column));
        let topic = |op: &str| -> Arc<str> { format!("tables/{qualified}/{op}").into() };
        let topics = [
            topic("insert"),
            topic("update"),
            topic("delete"),
            topic("truncate"),
            topic("snapshot"),
        ];
        let keys = rel
            .columns
            .iter()
            .map(|c| {
                let mut k = Vec::with_capacity(c.name.len() + 3);
                write_json_string(&c.name, &mut k);
                k.push(b':');
                k
            })
            .collect();
        let mut head = Vec::new();
        head.extend_from_slice(b",\"schema\":");
        write_json_string(&rel.namespace, &mut head);
        head.extend_from_slice(b",\"table\":");
        write_json_string(&rel.name, &mut head);
        let head = String::from_utf8(head).expect("JSON written from strs is UTF-8");
        self.relations.insert(
            rel.id,
            CachedRelation {
                qualified,
                tenant_index,
                topics,
                keys,
                head,
                resolved,
            },
        );
    }

    pub fn relation(&self, id: u32) -> Option<&ResolvedRelation> {
        self.relations.get(&id).map(|c| &c.resolved)
    }

    /// Normalizes one change message (`change_index` counts the changes of
    /// the transaction from 1) into `out`.
    pub fn change(
        &mut self,
        tx: &TxContext,
        change_index: u64,
        msg: &Message,
        out: &mut Vec<Outcome>,
    ) {
        let base = change_index.saturating_mul(SUBS_PER_CHANGE);
        match msg {
            Message::Insert(m) => out.push(self.insert(tx, base, m)),
            Message::Update(m) => out.push(self.update(tx, base, m)),
            Message::Delete(m) => out.push(self.delete(tx, base, m)),
            Message::Truncate(m) => self.truncate(tx, base, m, out),
            _ => {}
        }
    }

    fn buffer(&self) -> Vec<u8> {
        Vec::with_capacity(self.last_len + self.last_len / 4)
    }

    fn insert(&mut self, tx: &TxContext, pos: u64, m: &Insert) -> Outcome {
        self.insert_like(tx, pos, m.relation_id, &m.new, false)
    }

    /// A row read by a snapshot or backfill (text values in the relation's
    /// column order): a `row.snapshot` event, tagged and shaped like an
    /// insert of the row.
    pub fn snapshot(&mut self, tx: &TxContext, pos: u64, relation_id: u32, row: &Tuple) -> Outcome {
        self.insert_like(tx, pos, relation_id, row, true)
    }

    /// The subject (`schema.table/key`) a row of `relation_id` has.
    pub fn subject_of(&self, relation_id: u32, row: &Tuple) -> Option<String> {
        self.relations
            .get(&relation_id)
            .map(|rel| subject(rel, row))
    }

    fn insert_like(
        &mut self,
        tx: &TxContext,
        pos: u64,
        relation_id: u32,
        new: &Tuple,
        snapshot: bool,
    ) -> Outcome {
        let Some(rel) = self.relations.get(&relation_id) else {
            return Outcome::Dropped(DropReason::UnknownRelation(relation_id));
        };
        let Some(rule) = &rel.resolved.rule else {
            return Outcome::Ignored;
        };
        if let Err(r) = check_shape(rel, new) {
            return Outcome::Dropped(r);
        }
        let tenant = match tenant_of(&mut self.tenants, rel, Some(new), None) {
            Ok(t) => t,
            Err(r) => return Outcome::Dropped(r),
        };
        let mut w = Writer::new(self.buffer(), &mut self.stats);
        w.head(if snapshot { "snapshot" } else { "insert" }, rel);
        w.key(rel, new);
        let mut unchanged = Vec::new();
        if !rule.fields_only {
            w.raw(b",\"new\":");
            w.row(rel, new, Image::Full, None, &mut unchanged);
        }
        w.names(rel, b"unchanged", &unchanged);
        let data = w.finish();
        let subject = subject(rel, new);
        let topic = rel.topics[if snapshot { 4 } else { 0 }].clone();
        let relation = rel.qualified.clone();
        self.event(
            tx,
            pos,
            Audience::Tenant(tenant),
            if snapshot {
                types::SNAPSHOT
            } else {
                types::INSERTED
            },
            topic,
            Some(subject),
            data,
            relation,
        )
    }

    fn update(&mut self, tx: &TxContext, pos: u64, m: &Update) -> Outcome {
        let Some(rel) = self.relations.get(&m.relation_id) else {
            return Outcome::Dropped(DropReason::UnknownRelation(m.relation_id));
        };
        let Some(rule) = &rel.resolved.rule else {
            return Outcome::Ignored;
        };
        let (old, old_image) = match &m.old {
            Some(OldTuple::Full(t)) => (Some(t), Image::Full),
            Some(OldTuple::Key(t)) => (Some(t), Image::KeyOnly),
            None => (None, Image::KeyOnly),
        };
        if let Err(r) =
            check_shape(rel, &m.new).and_then(|()| old.map_or(Ok(()), |t| check_shape(rel, t)))
        {
            return Outcome::Dropped(r);
        }
        let tenant = match tenant_of(&mut self.tenants, rel, Some(&m.new), old) {
            Ok(t) => t,
            Err(r) => return Outcome::Dropped(r),
        };
        // An unchanged TOASTed value is never sent as a wrong value: it is
        // taken from the full old image when there is one.
        let full_old = old.filter(|_| old_image == Image::Full);
        let mut w = Writer::new(self.buffer(), &mut self.stats);
        w.head("update", rel);
        w.key(rel, &m.new);
        let mut unchanged = Vec::new();
        if !rule.fields_only {
            w.raw(b",\"new\":");
            w.row(rel, &m.new, Image::Full, full_old, &mut unchanged);
            if let Some(o) = old {
                w.raw(b",\"old\":");
                w.row(rel, o, old_image, None, &mut Vec::new());
            }
        } else {
            unchanged = unchanged_columns(&m.new, full_old);
        }
        if let Some(o) = full_old {
            let changed: Vec<usize> = (0..m.new.0.len())
                .filter(|&i| match (m.new.0.get(i), o.0.get(i)) {
                    (Some(Datum::UnchangedToast), _) => false,
                    (a, b) => a != b,
                })
                .collect();
            w.names(rel, b"changed", &changed);
            if changed.is_empty() {
                w.raw(b",\"changed\":[]");
            }
        }
        w.names(rel, b"unchanged", &unchanged);
        let data = w.finish();
        let subject = subject(rel, &m.new);
        let topic = rel.topics[1].clone();
        let relation = rel.qualified.clone();
        self.event(
            tx,
            pos,
            Audience::Tenant(tenant),
            types::UPDATED,
            topic,
            Some(subject),
            data,
            relation,
        )
    }

    fn delete(&mut self, tx: &TxContext, pos: u64, m: &Delete) -> Outcome {
        let Some(rel) = self.relations.get(&m.relation_id) else {
            return Outcome::Dropped(DropReason::UnknownRelation(m.relation_id));
        };
        let Some(rule) = &rel.resolved.rule else {
            return Outcome::Ignored;
        };
        let (tuple, image) = match &m.old {
            OldTuple::Full(t) => (t, Image::Full),
            OldTuple::Key(t) => (t, Image::KeyOnly),
        };
        if let Err(r) = check_shape(rel, tuple) {
            return Outcome::Dropped(r);
        }
        let tenant = match tenant_of(&mut self.tenants, rel, None, Some(tuple)) {
            Ok(t) => t,
            Err(r) => return Outcome::Dropped(r),
        };
        let mut w = Writer::new(self.buffer(), &mut self.stats);
        w.head("delete", rel);
        w.key(rel, tuple);
        if !rule.fields_only {
            w.raw(b",\"old\":");
            w.row(rel, tuple, image, None, &mut Vec::new());
        }
        let data = w.finish();
        let subject = subject(rel, tuple);
        let topic = rel.topics[2].clone();
        let relation = rel.qualified.clone();
        self.event(
            tx,
            pos,
            Audience::Tenant(tenant),
            types::DELETED,
            topic,
            Some(subject),
            data,
            relation,
        )
    }

    fn truncate(&mut self, tx: &TxContext, base: u64, m: &Truncate, out: &mut Vec<Outcome>) {
        for (i, id) in m.relation_ids.iter().enumerate() {
            let Some(rel) = self.relations.get(id) else {
                out.push(Outcome::Dropped(DropReason::UnknownRelation(*id)));
                continue;
            };
            if rel.resolved.rule.is_none() {
                out.push(Outcome::Ignored);
                continue;
            }
            let mut w = Writer::new(Vec::with_capacity(128), &mut self.stats);
            w.head("truncate", rel);
            w.raw(if m.cascade {
                b",\"cascade\":true"
            } else {
                b",\"cascade\":false"
            });
            w.raw(if m.restart_identity {
                b",\"restart_identity\":true"
            } else {
                b",\"restart_identity\":false"
            });
            let data = w.finish();
            let audience = Audience::TenantsOfRelation(rel.qualified.clone());
            let topic = rel.topics[3].clone();
            let relation = rel.qualified.clone();
            let subject = Some(rel.qualified.to_string());
            let pos = base.saturating_add(i as u64);
            out.push(self.event(
                tx,
                pos,
                audience,
                types::TRUNCATED,
                topic,
                subject,
                data,
                relation,
            ));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        tx: &TxContext,
        pos: u64,
        audience: Audience,
        event_type: &'static str,
        topic: Arc<str>,
        subject: Option<String>,
        data: JsonText,
        relation: Arc<str>,
    ) -> Outcome {
        self.last_len = data.get().len();
        let event_type = match self.types.iter().find(|t| &***t == event_type) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = event_type.into();
                self.types.push(t.clone());
                t
            }
        };
        Outcome::Event(PendingEvent {
            audience,
            position: SourcePosition {
                commit_lsn: tx.commit_lsn,
                ordinal: pos,
            },
            source: self.source.clone(),
            event_type,
            topic,
            subject,
            time_micros: tx.commit_time_micros,
            time: tx.time.clone(),
            txid: Some(u64::from(tx.xid)),
            lsn: Some(tx.commit_lsn),
            data,
            relation: Some(relation),
            ext: None,
        })
    }

    /// A logical decoding message with prefix `sluice`: content
    /// `{"tenant": …, "type": …, "data": …, "subject": …,
    /// "correlation_id": …, "attributes": …}` (all but tenant and type
    /// optional) becomes `custom.<type>`.
    pub fn custom(&self, tx: &TxContext, pos: u64, content: &[u8]) -> Outcome {
        match parse_custom(content) {
            Ok(Custom {
                tenant,
                name,
                data,
                subject,
                ext,
            }) => Outcome::Event(PendingEvent {
                audience: Audience::Tenant(tenant),
                position: SourcePosition {
                    commit_lsn: tx.commit_lsn,
                    ordinal: pos,
                },
                source: self.source.clone(),
                event_type: format!("{}{name}", types::CUSTOM_PREFIX).into(),
                topic: format!("custom/{name}").into(),
                subject,
                time_micros: tx.commit_time_micros,
                time: tx.time.clone(),
                txid: (tx.xid != 0).then_some(u64::from(tx.xid)),
                lsn: Some(tx.commit_lsn),
                data: JsonText::from_value(&data),
                relation: None,
                ext,
            }),
            Err(why) => Outcome::Dropped(DropReason::MalformedCustom(why)),
        }
    }
}

/// Longest custom event name.
pub const MAX_CUSTOM_NAME: usize = 128;

/// Checks a custom event name: 1 to 128 of `A-Z a-z 0-9 _ . -`, so it is
/// one topic segment and one `type` suffix.
pub fn valid_custom_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CUSTOM_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A custom event's content, checked.
struct Custom {
    tenant: TenantId,
    name: String,
    data: serde_json::Value,
    subject: Option<String>,
    ext: Option<crate::event::Extensions>,
}

fn parse_custom(content: &[u8]) -> Result<Custom, String> {
    use serde_json::Value;
    let v: Value =
        serde_json::from_slice(content).map_err(|e| format!("content is not JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err("content must be a JSON object {\"tenant\",\"type\",\"data\"}".into());
    };
    let tenant = match obj.get("tenant") {
        Some(Value::String(s)) => TenantId::new(s).map_err(|e| format!("tenant: {e}"))?,
        Some(_) => return Err("tenant must be a string".into()),
        None => return Err("tenant is missing".into()),
    };
    let name = match obj.get("type") {
        Some(Value::String(s)) if valid_custom_name(s) => s.clone(),
        Some(Value::String(s)) => {
            return Err(format!(
                "type {s:?} must be 1 to {MAX_CUSTOM_NAME} characters of A-Z a-z 0-9 _ . -"
            ))
        }
        Some(_) => return Err("type must be a string".into()),
        None => return Err("type is missing".into()),
    };
    let subject = match obj.get("subject") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("subject must be a string".into()),
    };
    let ext = crate::event::Extensions::new(obj.get("correlation_id"), obj.get("attributes"))?;
    let data = obj.remove("data").unwrap_or(Value::Null);
    Ok(Custom {
        tenant,
        name,
        data,
        subject,
        ext,
    })
}

fn check_shape(rel: &CachedRelation, t: &Tuple) -> Result<(), DropReason> {
    let n = rel.resolved.relation.columns.len();
    if t.0.len() != n || rel.resolved.types.len() != n {
        return Err(DropReason::ShapeMismatch {
            table: rel.qualified.to_string(),
        });
    }
    Ok(())
}

fn is_key_column(rel: &CachedRelation, i: usize) -> bool {
    rel.resolved.key_columns.contains(&i)
        || rel
            .resolved
            .relation
            .columns
            .get(i)
            .is_some_and(|c| c.is_key)
}

/// Columns that are unchanged TOAST in `new` and cannot be filled from `old`.
fn unchanged_columns(new: &Tuple, full_old: Option<&Tuple>) -> Vec<usize> {
    new.0
        .iter()
        .enumerate()
        .filter(|(i, d)| {
            **d == Datum::UnchangedToast
                && !matches!(
                    full_old.and_then(|o| o.0.get(*i)),
                    Some(Datum::Text(_) | Datum::Binary(_) | Datum::Null)
                )
        })
        .map(|(i, _)| i)
        .collect()
}

/// Builds one event's `data` object.
struct Writer<'s> {
    out: Vec<u8>,
    stats: &'s mut NormalizeStats,
}

impl<'s> Writer<'s> {
    fn new(out: Vec<u8>, stats: &'s mut NormalizeStats) -> Writer<'s> {
        Writer { out, stats }
    }

    fn raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    fn head(&mut self, op: &str, rel: &CachedRelation) {
        self.out.extend_from_slice(b"{\"op\":\"");
        self.out.extend_from_slice(op.as_bytes());
        self.out.push(b'"');
        self.out.extend_from_slice(rel.head.as_bytes());
    }

    fn value(&mut self, ty: &PgType, datum: &Datum) {
        match datum {
            Datum::Null | Datum::UnchangedToast => self.out.extend_from_slice(b"null"),
            Datum::Text(b) => {
                if write_json(ty, b, &mut self.out).is_err() {
                    self.stats.value_fallbacks += 1;
                    write_json_string(&String::from_utf8_lossy(b), &mut self.out);
                }
            }
            Datum::Binary(b) => {
                use base64::Engine as _;
                self.out.push(b'"');
                let encoded = base64::engine::general_purpose::STANDARD.encode(b);
                self.out.extend_from_slice(encoded.as_bytes());
                self.out.push(b'"');
            }
        }
    }

    /// Writes `{"col":value,…}` for `t`. Unchanged TOAST values are taken
    /// from `fill` when it has them, otherwise left out and listed in
    /// `unchanged`.
    fn row(
        &mut self,
        rel: &CachedRelation,
        t: &Tuple,
        image: Image,
        fill: Option<&Tuple>,
        unchanged: &mut Vec<usize>,
    ) {
        self.out.push(b'{');
        let mut first = true;
        for (i, datum) in t.0.iter().enumerate() {
            if image == Image::KeyOnly && !is_key_column(rel, i) {
                continue;
            }
            let datum = match datum {
                Datum::UnchangedToast => match fill.and_then(|f| f.0.get(i)) {
                    Some(d) if *d != Datum::UnchangedToast => d,
                    _ => {
                        unchanged.push(i);
                        continue;
                    }
                },
                d => d,
            };
            self.member(&mut first, rel, i, datum);
        }
        self.out.push(b'}');
    }

    /// Writes `"col":value` for column `i`, after a comma unless it is the
    /// object's first member.
    fn member(&mut self, first: &mut bool, rel: &CachedRelation, i: usize, datum: &Datum) {
        let (Some(key), Some(ty)) = (rel.keys.get(i), rel.resolved.types.get(i)) else {
            return;
        };
        if !*first {
            self.out.push(b',');
        }
        *first = false;
        self.out.extend_from_slice(key);
        self.value(ty, datum);
    }

    /// Writes `,"key":{…}` from the key columns of `t`.
    fn key(&mut self, rel: &CachedRelation, t: &Tuple) {
        self.out.extend_from_slice(b",\"key\":{");
        let mut first = true;
        for &i in &rel.resolved.key_columns {
            match t.0.get(i) {
                Some(Datum::UnchangedToast) | None => {}
                Some(datum) => self.member(&mut first, rel, i, datum),
            }
        }
        self.out.push(b'}');
    }

    /// Writes `,"<member>":["col",…]` when `cols` is not empty.
    fn names(&mut self, rel: &CachedRelation, member: &[u8], cols: &[usize]) {
        if cols.is_empty() {
            return;
        }
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(member);
        self.out.extend_from_slice(b"\":[");
        for (n, &i) in cols.iter().enumerate() {
            if n > 0 {
                self.out.push(b',');
            }
            if let Some(c) = rel.resolved.relation.columns.get(i) {
                write_json_string(&c.name, &mut self.out);
            }
        }
        self.out.push(b']');
    }

    fn finish(mut self) -> JsonText {
        self.out.push(b'}');
        let text = String::from_utf8(self.out).expect("the writer only writes UTF-8 JSON");
        JsonText::from_trusted(text)
    }
}

/// `schema.table/<key values joined by ','>`.
fn subject(rel: &CachedRelation, t: &Tuple) -> String {
    let mut s = String::with_capacity(rel.qualified.len() + 16);
    s.push_str(&rel.qualified);
    let mut first = true;
    for &i in &rel.resolved.key_columns {
        let text = match t.0.get(i) {
            Some(Datum::Text(b)) => String::from_utf8_lossy(b),
            Some(Datum::Null) => "null".into(),
            _ => continue,
        };
        s.push(if first { '/' } else { ',' });
        first = false;
        s.push_str(&text);
    }
    s
}

/// The key of `t` as compact JSON text, for log lines about dropped rows.
fn key_text(rel: &CachedRelation, t: &Tuple) -> String {
    let mut stats = NormalizeStats::default();
    let mut w = Writer::new(Vec::new(), &mut stats);
    w.key(rel, t);
    let mut out = w.out;
    // `w.key` writes `,"key":{…}`; keep the object.
    let start = out.iter().position(|&b| b == b'{').unwrap_or(0);
    out.drain(..start);
    String::from_utf8(out).unwrap_or_default()
}

/// The tenant of a change: from the new row, else from the old image.
fn tenant_of(
    cache: &mut TenantCache,
    rel: &CachedRelation,
    new: Option<&Tuple>,
    old: Option<&Tuple>,
) -> Result<TenantId, DropReason> {
    let drop = |why: &str| DropReason::NoTenant {
        table: rel.qualified.to_string(),
        key: new.or(old).map(|t| key_text(rel, t)).unwrap_or_default(),
        why: why.to_owned(),
    };
    let Some(idx) = rel.tenant_index else {
        return Err(drop("the tenant column is not in the table"));
    };
    fn pick(t: Option<&Tuple>, idx: usize) -> Option<&[u8]> {
        match t.and_then(|t| t.0.get(idx)) {
            Some(Datum::Text(b)) | Some(Datum::Binary(b)) => Some(b),
            _ => None,
        }
    }
    let Some(bytes) = pick(new, idx).or_else(|| pick(old, idx)) else {
        return Err(drop("the tenant value is NULL or not in the row image"));
    };
    cache.get(bytes).map_err(|why| drop(&why))
}

#[cfg(test)]
#[path = "normalize_tests.rs"]
mod tests;
