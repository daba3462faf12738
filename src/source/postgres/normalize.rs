//! Normalize + tenant-tag: decoded pgoutput changes become [`PendingEvent`]s.
//!
//! Pure: the relation cache is filled by the caller with relations whose
//! column types and key columns were already resolved (that needs the
//! catalog, which is I/O). The tenant is read from the row itself, never
//! from anything a client sent; a row whose tenant cannot be read is not
//! given to anyone and is reported as [`Dropped`](Outcome::Dropped).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::pgoutput::{
    Datum, Delete, Insert, Message, OldTuple, Relation, Truncate, Tuple, Update,
};
use super::value::{to_json, PgType};
use crate::event::{types, Audience, PendingEvent, SourcePosition, TenantId};

/// How one captured table is tagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRule {
    pub tenant_column: String,
    pub fields_only: bool,
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
    topics: [Arc<str>; 4],
}

/// The transaction a change belongs to.
#[derive(Debug, Clone, Copy)]
pub struct TxContext {
    pub xid: u32,
    pub commit_lsn: u64,
    /// Microseconds since the Unix epoch.
    pub commit_time_micros: i64,
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
}

impl Normalizer {
    pub fn new(source: &str) -> Normalizer {
        Normalizer {
            source: source.into(),
            relations: HashMap::new(),
            stats: NormalizeStats::default(),
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
        ];
        self.relations.insert(
            rel.id,
            CachedRelation {
                qualified: qualified.clone(),
                tenant_index,
                topics,
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

    fn insert(&mut self, tx: &TxContext, pos: u64, m: &Insert) -> Outcome {
        let Some(rel) = self.relations.get(&m.relation_id) else {
            return Outcome::Dropped(DropReason::UnknownRelation(m.relation_id));
        };
        let Some(rule) = &rel.resolved.rule else {
            return Outcome::Ignored;
        };
        let mut row = RowImage::default();
        if let Err(o) = row.fill(rel, &m.new, &mut self.stats) {
            return Outcome::Dropped(o);
        }
        let tenant = match tenant_of(rel, Some(&m.new), None, &row) {
            Ok(t) => t,
            Err(o) => return Outcome::Dropped(o),
        };
        let key = row.key(rel);
        let mut data = Map::new();
        head(&mut data, "insert", &rel.resolved.relation);
        data.insert("key".into(), Value::Object(key.clone()));
        if !rule.fields_only {
            data.insert("new".into(), Value::Object(row.values));
        }
        if !row.unchanged.is_empty() {
            data.insert("unchanged".into(), names(row.unchanged));
        }
        let topic = rel.topics[0].clone();
        let subject = subject(&rel.qualified, &key);
        self.event(tx, pos, tenant, types::INSERTED, topic, Some(subject), data)
    }

    fn update(&mut self, tx: &TxContext, pos: u64, m: &Update) -> Outcome {
        let Some(rel) = self.relations.get(&m.relation_id) else {
            return Outcome::Dropped(DropReason::UnknownRelation(m.relation_id));
        };
        let Some(rule) = &rel.resolved.rule else {
            return Outcome::Ignored;
        };
        let (old_tuple, old_is_full) = match &m.old {
            Some(OldTuple::Full(t)) => (Some(t), true),
            Some(OldTuple::Key(t)) => (Some(t), false),
            None => (None, false),
        };
        let mut old = RowImage::default();
        if let Some(t) = old_tuple {
            if let Err(o) = old.fill_partial(rel, t, old_is_full, &mut self.stats) {
                return Outcome::Dropped(o);
            }
        }
        let mut new = RowImage::default();
        if let Err(o) = new.fill(rel, &m.new, &mut self.stats) {
            return Outcome::Dropped(o);
        }
        // An unchanged TOASTed value is never sent as a wrong value: it is
        // taken from the full old image when there is one.
        if old_is_full && !new.unchanged.is_empty() {
            let mut still = Vec::new();
            for name in std::mem::take(&mut new.unchanged) {
                match old.values.get(name) {
                    Some(v) => {
                        new.values.insert(name.to_owned(), v.clone());
                    }
                    None => still.push(name),
                }
            }
            new.unchanged = still;
            reorder_like_relation(&mut new.values, &rel.resolved.relation);
        }
        let tenant = match tenant_of(rel, Some(&m.new), old_tuple, &new) {
            Ok(t) => t,
            Err(o) => return Outcome::Dropped(o),
        };
        let key = new.key(rel);
        let mut data = Map::new();
        head(&mut data, "update", &rel.resolved.relation);
        data.insert("key".into(), Value::Object(key.clone()));
        if !rule.fields_only {
            data.insert("new".into(), Value::Object(new.values.clone()));
            if old_tuple.is_some() {
                data.insert("old".into(), Value::Object(old.values.clone()));
            }
        }
        if old_is_full {
            let changed: Vec<&str> = rel
                .resolved
                .relation
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .filter(|n| new.values.get(*n) != old.values.get(*n) && !new.unchanged.contains(n))
                .collect();
            data.insert("changed".into(), names(changed));
        }
        if !new.unchanged.is_empty() {
            data.insert("unchanged".into(), names(new.unchanged));
        }
        let topic = rel.topics[1].clone();
        let subject = subject(&rel.qualified, &key);
        self.event(tx, pos, tenant, types::UPDATED, topic, Some(subject), data)
    }

    fn delete(&mut self, tx: &TxContext, pos: u64, m: &Delete) -> Outcome {
        let Some(rel) = self.relations.get(&m.relation_id) else {
            return Outcome::Dropped(DropReason::UnknownRelation(m.relation_id));
        };
        let Some(rule) = &rel.resolved.rule else {
            return Outcome::Ignored;
        };
        let (tuple, full) = match &m.old {
            OldTuple::Full(t) => (t, true),
            OldTuple::Key(t) => (t, false),
        };
        let mut old = RowImage::default();
        if let Err(o) = old.fill_partial(rel, tuple, full, &mut self.stats) {
            return Outcome::Dropped(o);
        }
        let tenant = match tenant_of(rel, None, Some(tuple), &old) {
            Ok(t) => t,
            Err(o) => return Outcome::Dropped(o),
        };
        let key = old.key(rel);
        let mut data = Map::new();
        head(&mut data, "delete", &rel.resolved.relation);
        data.insert("key".into(), Value::Object(key.clone()));
        if !rule.fields_only {
            data.insert("old".into(), Value::Object(old.values));
        }
        let topic = rel.topics[2].clone();
        let subject = subject(&rel.qualified, &key);
        self.event(tx, pos, tenant, types::DELETED, topic, Some(subject), data)
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
            let mut data = Map::new();
            head(&mut data, "truncate", &rel.resolved.relation);
            data.insert("cascade".into(), Value::Bool(m.cascade));
            data.insert("restart_identity".into(), Value::Bool(m.restart_identity));
            let audience = Audience::TenantsOfRelation(rel.qualified.clone());
            let topic = rel.topics[3].clone();
            let subject = Some(rel.qualified.to_string());
            let pos = base.saturating_add(i as u64);
            out.push(self.event_for(tx, pos, audience, types::TRUNCATED, topic, subject, data));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        tx: &TxContext,
        pos: u64,
        tenant: TenantId,
        event_type: &'static str,
        topic: Arc<str>,
        subject: Option<String>,
        data: Map<String, Value>,
    ) -> Outcome {
        self.event_for(
            tx,
            pos,
            Audience::Tenant(tenant),
            event_type,
            topic,
            subject,
            data,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn event_for(
        &self,
        tx: &TxContext,
        pos: u64,
        audience: Audience,
        event_type: &'static str,
        topic: Arc<str>,
        subject: Option<String>,
        data: Map<String, Value>,
    ) -> Outcome {
        let data = raw(&Value::Object(data));
        Outcome::Event(PendingEvent {
            audience,
            position: SourcePosition {
                commit_lsn: tx.commit_lsn,
                ordinal: pos,
            },
            source: self.source.clone(),
            event_type: event_type.into(),
            topic,
            subject,
            time_micros: tx.commit_time_micros,
            txid: Some(u64::from(tx.xid)),
            lsn: Some(tx.commit_lsn),
            data,
        })
    }

    /// A logical decoding message with prefix `sluice`: content
    /// `{"tenant": …, "type": …, "data": …}` becomes `custom.<type>`.
    pub fn custom(&self, tx: &TxContext, pos: u64, content: &[u8]) -> Outcome {
        match parse_custom(content) {
            Ok((tenant, name, data)) => Outcome::Event(PendingEvent {
                audience: Audience::Tenant(tenant),
                position: SourcePosition {
                    commit_lsn: tx.commit_lsn,
                    ordinal: pos,
                },
                source: self.source.clone(),
                event_type: format!("{}{name}", types::CUSTOM_PREFIX).into(),
                topic: format!("custom/{name}").into(),
                subject: None,
                time_micros: tx.commit_time_micros,
                txid: (tx.xid != 0).then_some(u64::from(tx.xid)),
                lsn: Some(tx.commit_lsn),
                data: raw(&data),
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

fn parse_custom(content: &[u8]) -> Result<(TenantId, String, Value), String> {
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
    let data = obj.remove("data").unwrap_or(Value::Null);
    Ok((tenant, name, data))
}

fn raw(v: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).expect("a serde_json::Value always serializes")
}

fn head(data: &mut Map<String, Value>, op: &str, rel: &Relation) {
    data.insert("op".into(), Value::String(op.into()));
    data.insert("schema".into(), Value::String(rel.namespace.clone()));
    data.insert("table".into(), Value::String(rel.name.clone()));
}

fn names(list: Vec<&str>) -> Value {
    Value::Array(
        list.into_iter()
            .map(|s| Value::String(s.to_owned()))
            .collect(),
    )
}

fn subject(qualified: &str, key: &Map<String, Value>) -> String {
    if key.is_empty() {
        return qualified.to_owned();
    }
    let mut s = String::with_capacity(qualified.len() + 16);
    s.push_str(qualified);
    s.push('/');
    for (i, v) in key.values().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match v {
            Value::String(t) => s.push_str(t),
            other => s.push_str(&other.to_string()),
        }
    }
    s
}

fn reorder_like_relation(values: &mut Map<String, Value>, rel: &Relation) {
    let mut ordered = Map::with_capacity(values.len());
    for c in &rel.columns {
        if let Some(v) = values.remove(&c.name) {
            ordered.insert(c.name.clone(), v);
        }
    }
    *values = ordered;
}

/// One row image as JSON, plus the columns that were unchanged TOAST.
#[derive(Default)]
struct RowImage<'r> {
    values: Map<String, Value>,
    unchanged: Vec<&'r str>,
}

impl<'r> RowImage<'r> {
    fn fill(
        &mut self,
        rel: &'r CachedRelation,
        t: &Tuple,
        stats: &mut NormalizeStats,
    ) -> Result<(), DropReason> {
        self.fill_partial(rel, t, true, stats)
    }

    /// Converts `t`. When the image is not `full` (a key-only old tuple),
    /// only the key columns are kept: the other columns arrive as NULL
    /// placeholders, and a NULL there says nothing about the row.
    fn fill_partial(
        &mut self,
        rel: &'r CachedRelation,
        t: &Tuple,
        full: bool,
        stats: &mut NormalizeStats,
    ) -> Result<(), DropReason> {
        let r = &rel.resolved;
        if t.0.len() != r.relation.columns.len() || r.types.len() != r.relation.columns.len() {
            return Err(DropReason::ShapeMismatch {
                table: rel.qualified.to_string(),
            });
        }
        self.values = Map::with_capacity(t.0.len());
        for (i, ((col, ty), datum)) in r
            .relation
            .columns
            .iter()
            .zip(&r.types)
            .zip(&t.0)
            .enumerate()
        {
            if !full && !col.is_key && !r.key_columns.contains(&i) {
                continue;
            }
            let v = match datum {
                Datum::Null => Value::Null,
                Datum::UnchangedToast => {
                    self.unchanged.push(&col.name);
                    continue;
                }
                Datum::Text(b) => match to_json(ty, b) {
                    Ok(v) => v,
                    Err(_) => {
                        stats.value_fallbacks += 1;
                        Value::String(String::from_utf8_lossy(&b[..]).into_owned())
                    }
                },
                Datum::Binary(b) => {
                    use base64::Engine as _;
                    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
                }
            };
            self.values.insert(col.name.clone(), v);
        }
        Ok(())
    }

    fn key(&self, rel: &CachedRelation) -> Map<String, Value> {
        let r = &rel.resolved;
        let mut key = Map::with_capacity(r.key_columns.len());
        for &i in &r.key_columns {
            if let Some(c) = r.relation.columns.get(i) {
                if let Some(v) = self.values.get(&c.name) {
                    key.insert(c.name.clone(), v.clone());
                }
            }
        }
        key
    }
}

/// The tenant of a change: from the new row, else from the old image.
fn tenant_of(
    rel: &CachedRelation,
    new: Option<&Tuple>,
    old: Option<&Tuple>,
    image: &RowImage,
) -> Result<TenantId, DropReason> {
    let drop = |why: &str| DropReason::NoTenant {
        table: rel.qualified.to_string(),
        key: serde_json::to_string(&image.key(rel)).unwrap_or_default(),
        why: why.to_owned(),
    };
    let Some(idx) = rel.tenant_index else {
        return Err(drop("the tenant column is not in the table"));
    };
    let pick = |t: Option<&Tuple>| match t.and_then(|t| t.0.get(idx)) {
        Some(Datum::Text(b)) | Some(Datum::Binary(b)) => Some(b.clone()),
        _ => None,
    };
    let Some(bytes) = pick(new).or_else(|| pick(old)) else {
        return Err(drop("the tenant value is NULL or not in the row image"));
    };
    let s = std::str::from_utf8(&bytes).map_err(|_| drop("the tenant value is not UTF-8"))?;
    TenantId::new(s).map_err(|e| drop(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::postgres::pgoutput::{Column, ReplicaIdentity};
    use bytes::Bytes;

    fn rel(identity: ReplicaIdentity, fields_only: bool) -> ResolvedRelation {
        let col = |name: &str, oid: u32, key: bool| Column {
            is_key: key,
            name: name.into(),
            type_oid: oid,
            type_modifier: -1,
        };
        ResolvedRelation {
            relation: Relation {
                id: 7,
                namespace: "public".into(),
                name: "orders".into(),
                replica_identity: identity,
                columns: vec![
                    col("id", 23, true),
                    col("tenant_id", 25, false),
                    col("status", 25, false),
                    col("blob", 25, false),
                ],
            },
            types: vec![PgType::Int, PgType::Text, PgType::Text, PgType::Text],
            key_columns: vec![0],
            rule: Some(TableRule {
                tenant_column: "tenant_id".into(),
                fields_only,
            }),
        }
    }

    fn t(vals: &[Option<&str>]) -> Tuple {
        Tuple(
            vals.iter()
                .map(|v| match v {
                    None => Datum::Null,
                    Some("<u>") => Datum::UnchangedToast,
                    Some(s) => Datum::Text(Bytes::copy_from_slice(s.as_bytes())),
                })
                .collect(),
        )
    }

    const TX: TxContext = TxContext {
        xid: 99,
        commit_lsn: 0x100,
        commit_time_micros: 1_000_000,
    };

    fn one(n: &mut Normalizer, m: Message) -> Outcome {
        let mut out = Vec::new();
        n.change(&TX, 1, &m, &mut out);
        assert_eq!(out.len(), 1);
        out.pop().expect("one outcome")
    }

    fn data(o: &Outcome) -> (PendingEvent, Value) {
        match o {
            Outcome::Event(e) => (e.clone(), serde_json::from_str(e.data.get()).expect("json")),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn insert_is_tagged_with_the_rows_tenant() {
        let mut n = Normalizer::new("/sluice/pg/main");
        n.set_relation(rel(ReplicaIdentity::Default, false));
        let o = one(
            &mut n,
            Message::Insert(Insert {
                relation_id: 7,
                new: t(&[Some("42"), Some("acme"), Some("new"), None]),
            }),
        );
        let (e, d) = data(&o);
        assert_eq!(
            e.audience,
            Audience::Tenant(TenantId::new("acme").expect("valid"))
        );
        assert_eq!(&*e.topic, "tables/public.orders/insert");
        assert_eq!(&*e.event_type, "row.inserted");
        assert_eq!(e.subject.as_deref(), Some("public.orders/42"));
        assert_eq!(e.position.ordinal, SUBS_PER_CHANGE);
        assert_eq!(e.txid, Some(99));
        assert_eq!(
            d,
            serde_json::json!({"op":"insert","schema":"public","table":"orders","key":{"id":42},
                "new":{"id":42,"tenant_id":"acme","status":"new","blob":null}})
        );
    }

    #[test]
    fn null_tenant_is_dropped_not_delivered() {
        let mut n = Normalizer::new("s");
        n.set_relation(rel(ReplicaIdentity::Default, false));
        let o = one(
            &mut n,
            Message::Insert(Insert {
                relation_id: 7,
                new: t(&[Some("1"), None, Some("x"), None]),
            }),
        );
        match o {
            Outcome::Dropped(DropReason::NoTenant { table, key, .. }) => {
                assert_eq!(table, "public.orders");
                assert_eq!(key, r#"{"id":1}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unchanged_toast_is_listed_not_sent_without_full_identity() {
        let mut n = Normalizer::new("s");
        n.set_relation(rel(ReplicaIdentity::Default, false));
        let o = one(
            &mut n,
            Message::Update(Update {
                relation_id: 7,
                old: None,
                new: t(&[Some("1"), Some("acme"), Some("paid"), Some("<u>")]),
            }),
        );
        let (_, d) = data(&o);
        assert_eq!(
            d["new"],
            serde_json::json!({"id":1,"tenant_id":"acme","status":"paid"})
        );
        assert_eq!(d["unchanged"], serde_json::json!(["blob"]));
        assert!(
            d.get("changed").is_none(),
            "changed is unknown without the old image"
        );
    }

    #[test]
    fn full_identity_fills_toast_from_old_and_lists_changed() {
        let mut n = Normalizer::new("s");
        n.set_relation(rel(ReplicaIdentity::Full, false));
        let o = one(
            &mut n,
            Message::Update(Update {
                relation_id: 7,
                old: Some(OldTuple::Full(t(&[
                    Some("1"),
                    Some("acme"),
                    Some("new"),
                    Some("BIG"),
                ]))),
                new: t(&[Some("1"), Some("acme"), Some("paid"), Some("<u>")]),
            }),
        );
        let (_, d) = data(&o);
        assert_eq!(
            d["new"],
            serde_json::json!({"id":1,"tenant_id":"acme","status":"paid","blob":"BIG"})
        );
        assert_eq!(d["changed"], serde_json::json!(["status"]));
        assert!(d.get("unchanged").is_none());
    }

    #[test]
    fn fields_only_sends_key_and_changed_names_only() {
        let mut n = Normalizer::new("s");
        n.set_relation(rel(ReplicaIdentity::Full, true));
        let o = one(
            &mut n,
            Message::Update(Update {
                relation_id: 7,
                old: Some(OldTuple::Full(t(&[
                    Some("1"),
                    Some("acme"),
                    Some("new"),
                    None,
                ]))),
                new: t(&[Some("1"), Some("acme"), Some("paid"), None]),
            }),
        );
        let (_, d) = data(&o);
        assert!(d.get("new").is_none() && d.get("old").is_none());
        assert_eq!(d["key"], serde_json::json!({"id":1}));
        assert_eq!(d["changed"], serde_json::json!(["status"]));
    }

    #[test]
    fn delete_takes_tenant_from_old_image_and_keeps_only_key_of_key_tuple() {
        let mut n = Normalizer::new("s");
        let mut r = rel(ReplicaIdentity::Index, false);
        r.relation.columns[1].is_key = true;
        r.key_columns = vec![0];
        n.set_relation(r);
        let o = one(
            &mut n,
            Message::Delete(Delete {
                relation_id: 7,
                old: OldTuple::Key(t(&[Some("5"), Some("globex"), None, None])),
            }),
        );
        let (e, d) = data(&o);
        assert_eq!(
            e.audience,
            Audience::Tenant(TenantId::new("globex").expect("valid"))
        );
        assert_eq!(d["old"], serde_json::json!({"id":5,"tenant_id":"globex"}));
        assert_eq!(&*e.event_type, "row.deleted");
    }

    #[test]
    fn uncaptured_and_unknown_relations() {
        let mut n = Normalizer::new("s");
        let mut r = rel(ReplicaIdentity::Default, false);
        r.rule = None;
        n.set_relation(r);
        let ins = |id| {
            Message::Insert(Insert {
                relation_id: id,
                new: t(&[Some("1"), Some("a"), None, None]),
            })
        };
        assert!(matches!(one(&mut n, ins(7)), Outcome::Ignored));
        assert!(matches!(
            one(&mut n, ins(8)),
            Outcome::Dropped(DropReason::UnknownRelation(8))
        ));
    }

    #[test]
    fn truncate_of_two_tables_gives_distinct_positions() {
        let mut n = Normalizer::new("s");
        n.set_relation(rel(ReplicaIdentity::Default, false));
        let mut other = rel(ReplicaIdentity::Default, false);
        other.relation.id = 8;
        other.relation.name = "items".into();
        n.set_relation(other);
        let mut out = Vec::new();
        n.change(
            &TX,
            3,
            &Message::Truncate(Truncate {
                cascade: true,
                restart_identity: false,
                relation_ids: vec![7, 8],
            }),
            &mut out,
        );
        let evs: Vec<PendingEvent> = out.iter().map(|o| data(o).0).collect();
        assert_eq!(evs.len(), 2);
        assert_ne!(evs[0].position, evs[1].position);
        assert_eq!(
            evs[1].audience,
            Audience::TenantsOfRelation("public.items".into())
        );
        assert_eq!(&*evs[1].topic, "tables/public.items/truncate");
    }

    #[test]
    fn custom_messages_are_validated() {
        let n = Normalizer::new("s");
        let o = n.custom(
            &TX,
            1,
            br#"{"tenant":"acme","type":"order.shipped","data":{"id":1}}"#,
        );
        let (e, d) = data(&o);
        assert_eq!(&*e.event_type, "custom.order.shipped");
        assert_eq!(&*e.topic, "custom/order.shipped");
        assert_eq!(d, serde_json::json!({"id":1}));
        for bad in [
            &b"not json"[..],
            br#"[1]"#,
            br#"{"type":"x"}"#,
            br#"{"tenant":"a"}"#,
            br#"{"tenant":"a","type":"has space"}"#,
            br#"{"tenant":"","type":"x"}"#,
            br#"{"tenant":7,"type":"x"}"#,
        ] {
            assert!(
                matches!(
                    n.custom(&TX, 1, bad),
                    Outcome::Dropped(DropReason::MalformedCustom(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn tuple_shape_mismatch_is_dropped() {
        let mut n = Normalizer::new("s");
        n.set_relation(rel(ReplicaIdentity::Default, false));
        let o = one(
            &mut n,
            Message::Insert(Insert {
                relation_id: 7,
                new: t(&[Some("1"), Some("a")]),
            }),
        );
        assert!(matches!(
            o,
            Outcome::Dropped(DropReason::ShapeMismatch { .. })
        ));
    }
}
