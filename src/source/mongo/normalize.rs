//! Normalize + tenant-tag for MongoDB: change-stream event documents become
//! [`PendingEvent`]s.
//!
//! Pure. Input is the raw change event as the server sends it (documented
//! at <https://www.mongodb.com/docs/manual/reference/change-events/>); the
//! tenant is read from the document itself at the collection's configured
//! field path: from `fullDocument`, else `fullDocumentBeforeChange`, else
//! `documentKey` (a sharded collection whose shard key holds the tenant).
//! A change whose tenant cannot be read is given to no one and reported as
//! [`Outcome::Dropped`], like a Postgres row without a tenant.
//!
//! Every outcome carries the event's resume token (`_id`), so the caller
//! can checkpoint past changes that produce no event too.

use std::collections::HashMap;
use std::sync::Arc;

use bson::{Bson, Document};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::value;
use crate::config::CollectionConfig;
use crate::event::{
    format_time_micros, types, Audience, JsonText, PendingEvent, SourcePosition, TenantId,
};

/// What one change event became.
#[derive(Debug)]
pub struct Normalized {
    pub outcome: Outcome,
    /// The event's resume token (`_id`), as BSON bytes.
    pub token: Bytes,
    /// `clusterTime` as `seconds << 32 | increment`, and the index of the
    /// event among those sharing it (a transaction's changes share one).
    pub position: SourcePosition,
}

#[derive(Debug)]
pub enum Outcome {
    Event(Box<PendingEvent>),
    /// A change of a captured collection that is delivered to no one.
    Dropped(DropReason),
    /// A change of a collection that is not captured (the stream's filter
    /// normally keeps these away).
    Ignored,
    /// Something happened to the stream or a captured collection.
    Control(Control),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// No tenant: missing at the path in every image, or not a usable id.
    NoTenant {
        collection: String,
        op: String,
        key: String,
        why: String,
    },
    /// A delete whose tenant is not in its key and that has no pre-image
    /// (the collection does not record them, or they expired).
    DeleteWithoutPreImage { collection: String, key: String },
    /// An operation type Sluice does not turn into events.
    Unsupported { op: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The stream ended (database dropped or renamed); it can be restarted
    /// after this token with `startAfter`.
    Invalidate,
    /// A captured collection was dropped.
    Drop { collection: String },
    /// A captured collection was renamed to `to` (`db.coll`).
    Rename { collection: String, to: String },
    /// The watched database was dropped (an `invalidate` follows).
    DropDatabase,
}

/// A change event that does not have the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed change event: {0}")]
pub struct Malformed(pub String);

/// How one captured collection is tagged.
#[derive(Debug, Clone)]
struct Rule {
    tenant_path: Vec<String>,
    fields_only: bool,
    /// `collections/<db>.<coll>/<op>` for insert, update, replace, delete.
    topics: [Arc<str>; 4],
}

pub struct Normalizer {
    source: Arc<str>,
    database: String,
    rules: HashMap<String, Rule>,
    last_cluster_time: u64,
    ordinal: u64,
}

impl Normalizer {
    /// `source` is the events' `source` attribute (`/sluice/mongo/<name>`).
    pub fn new(source: &str, database: &str, collections: &[CollectionConfig]) -> Normalizer {
        let rules = collections
            .iter()
            .map(|c| {
                let topic = |op: &str| -> Arc<str> {
                    format!("collections/{database}.{}/{op}", c.collection).into()
                };
                (
                    c.collection.clone(),
                    Rule {
                        tenant_path: c.tenant_field.split('.').map(str::to_owned).collect(),
                        fields_only: c.fields_only,
                        topics: [
                            topic("insert"),
                            topic("update"),
                            topic("replace"),
                            topic("delete"),
                        ],
                    },
                )
            })
            .collect();
        Normalizer {
            source: source.into(),
            database: database.to_owned(),
            rules,
            last_cluster_time: 0,
            ordinal: 0,
        }
    }

    /// Normalizes one change event.
    pub fn normalize(&mut self, doc: &Document) -> Result<Normalized, Malformed> {
        let token = match doc.get("_id") {
            Some(Bson::Document(t)) => t,
            _ => return Err(Malformed("no resume token (_id)".into())),
        };
        let token =
            Bytes::from(bson::to_vec(token).map_err(|e| Malformed(format!("resume token: {e}")))?);
        let op = doc
            .get_str("operationType")
            .map_err(|_| Malformed("no operationType".into()))?;
        let cluster_time = match doc.get("clusterTime") {
            Some(Bson::Timestamp(ts)) => (u64::from(ts.time) << 32) | u64::from(ts.increment),
            _ => 0,
        };
        if cluster_time != self.last_cluster_time {
            self.last_cluster_time = cluster_time;
            self.ordinal = 0;
        }
        self.ordinal += 1;
        let position = SourcePosition {
            commit_lsn: cluster_time,
            ordinal: self.ordinal,
        };
        let outcome = self.outcome(doc, op, cluster_time)?;
        Ok(Normalized {
            outcome,
            token,
            position,
        })
    }

    fn outcome(&self, doc: &Document, op: &str, cluster_time: u64) -> Result<Outcome, Malformed> {
        let ns = doc.get_document("ns").ok();
        let db = ns.and_then(|n| n.get_str("db").ok());
        let coll = ns.and_then(|n| n.get_str("coll").ok());
        match op {
            "invalidate" => return Ok(Outcome::Control(Control::Invalidate)),
            "dropDatabase" => return Ok(Outcome::Control(Control::DropDatabase)),
            _ => {}
        }
        if db != Some(self.database.as_str()) {
            return Ok(Outcome::Ignored);
        }
        let Some(coll) = coll else {
            return Err(Malformed(format!("{op} event without ns.coll")));
        };
        let Some(rule) = self.rules.get(coll) else {
            return Ok(Outcome::Ignored);
        };
        let index = match op {
            "insert" => 0,
            "update" => 1,
            "replace" => 2,
            "delete" => 3,
            "drop" => {
                return Ok(Outcome::Control(Control::Drop {
                    collection: coll.to_owned(),
                }))
            }
            "rename" => {
                let to = doc
                    .get_document("to")
                    .ok()
                    .map(|t| {
                        format!(
                            "{}.{}",
                            t.get_str("db").unwrap_or("?"),
                            t.get_str("coll").unwrap_or("?")
                        )
                    })
                    .unwrap_or_else(|| "?".to_owned());
                return Ok(Outcome::Control(Control::Rename {
                    collection: coll.to_owned(),
                    to,
                }));
            }
            other => {
                return Ok(Outcome::Dropped(DropReason::Unsupported {
                    op: other.to_owned(),
                }))
            }
        };
        let key = match doc.get("documentKey") {
            Some(Bson::Document(k)) => k,
            _ => return Err(Malformed(format!("{op} event without documentKey"))),
        };
        let id = key
            .get("_id")
            .ok_or_else(|| Malformed(format!("{op} event whose documentKey has no _id")))?;
        let post = image(doc, "fullDocument");
        let pre = image(doc, "fullDocumentBeforeChange");

        let tenant = match tenant_of(&rule.tenant_path, [post, pre, Some(key)]) {
            Ok(t) => t,
            Err(_) if op == "delete" && pre.is_none() => {
                return Ok(Outcome::Dropped(DropReason::DeleteWithoutPreImage {
                    collection: coll.to_owned(),
                    key: value::subject_text(id),
                }))
            }
            Err(why) => {
                return Ok(Outcome::Dropped(DropReason::NoTenant {
                    collection: coll.to_owned(),
                    op: op.to_owned(),
                    key: value::subject_text(id),
                    why,
                }))
            }
        };

        let mut data = Map::new();
        data.insert("op".into(), Value::String(op.to_owned()));
        data.insert("db".into(), Value::String(self.database.clone()));
        data.insert("collection".into(), Value::String(coll.to_owned()));
        let mut key_json = Map::new();
        key_json.insert("_id".into(), value::to_json(id));
        data.insert("key".into(), Value::Object(key_json));
        if !rule.fields_only {
            if let Some(post) = post.filter(|_| op != "delete") {
                data.insert("new".into(), Value::Object(value::document(post)));
            }
            if let Some(pre) = pre {
                data.insert("old".into(), Value::Object(value::document(pre)));
            }
        }
        if op == "update" {
            let desc = doc
                .get_document("updateDescription")
                .map_err(|_| Malformed("update event without updateDescription".into()))?;
            let updated = desc.get_document("updatedFields").ok();
            let removed: Vec<&str> = desc
                .get_array("removedFields")
                .map(|a| a.iter().filter_map(Bson::as_str).collect())
                .unwrap_or_default();
            let mut changed: Vec<Value> = Vec::new();
            for name in updated
                .into_iter()
                .flat_map(|u| u.keys())
                .map(String::as_str)
            {
                changed.push(Value::String(name.to_owned()));
            }
            for name in &removed {
                changed.push(Value::String((*name).to_owned()));
            }
            data.insert("changed".into(), Value::Array(changed));
            if !rule.fields_only {
                let mut update = Map::new();
                update.insert(
                    "updated_fields".into(),
                    Value::Object(updated.map(value::document).unwrap_or_default()),
                );
                update.insert(
                    "removed_fields".into(),
                    Value::Array(
                        removed
                            .iter()
                            .map(|r| Value::String((*r).to_owned()))
                            .collect(),
                    ),
                );
                if let Ok(truncated) = desc.get_array("truncatedArrays") {
                    let list = truncated
                        .iter()
                        .filter_map(Bson::as_document)
                        .map(|t| {
                            let mut m = Map::new();
                            m.insert(
                                "field".into(),
                                t.get("field").map(value::to_json).unwrap_or(Value::Null),
                            );
                            m.insert(
                                "new_size".into(),
                                t.get("newSize").map(value::to_json).unwrap_or(Value::Null),
                            );
                            Value::Object(m)
                        })
                        .collect();
                    update.insert("truncated_arrays".into(), Value::Array(list));
                }
                data.insert("update".into(), Value::Object(update));
            }
        }

        let time_micros = match doc.get("wallTime") {
            Some(Bson::DateTime(d)) => d.timestamp_millis().saturating_mul(1000),
            _ => i64::try_from(cluster_time >> 32).unwrap_or(0) * 1_000_000,
        };
        let event_type = match index {
            0 => types::DOC_INSERTED,
            1 => types::DOC_UPDATED,
            2 => types::DOC_REPLACED,
            _ => types::DOC_DELETED,
        };
        Ok(Outcome::Event(Box::new(PendingEvent {
            audience: Audience::Tenant(tenant),
            position: SourcePosition::default(),
            source: self.source.clone(),
            event_type: event_type.into(),
            topic: rule.topics[index].clone(),
            subject: Some(format!(
                "{}.{}/{}",
                self.database,
                coll,
                value::subject_text(id)
            )),
            time_micros,
            time: format_time_micros(time_micros).into(),
            txid: None,
            lsn: None,
            data: JsonText::from_value(&Value::Object(data)),
            relation: None,
            ext: None,
        })))
    }
}

/// A document image, when the event carries one (not absent, not null).
fn image<'a>(doc: &'a Document, field: &str) -> Option<&'a Document> {
    match doc.get(field) {
        Some(Bson::Document(d)) => Some(d),
        _ => None,
    }
}

/// The tenant at `path` in the first image that has one.
fn tenant_of<const N: usize>(
    path: &[String],
    images: [Option<&Document>; N],
) -> Result<TenantId, String> {
    for img in images.into_iter().flatten() {
        let Some(v) = lookup(img, path) else { continue };
        let text = match v {
            Bson::String(s) => s.clone(),
            Bson::ObjectId(id) => id.to_hex(),
            Bson::Int32(i) => i.to_string(),
            Bson::Int64(i) => i.to_string(),
            Bson::Null | Bson::Undefined => continue,
            other => {
                return Err(format!(
                    "the tenant field holds a {:?}, not a string, ObjectId or integer",
                    other.element_type()
                ))
            }
        };
        return TenantId::new(&text)
            .map_err(|e| format!("the tenant value is not a valid tenant id: {e}"));
    }
    Err(format!(
        "no {} value in the document, its pre-image or its key",
        path.join(".")
    ))
}

/// The value at a dotted path (no array traversal: a tenant is one value).
pub fn lookup<'a>(doc: &'a Document, path: &[String]) -> Option<&'a Bson> {
    let (last, parents) = path.split_last()?;
    let mut cur = doc;
    for p in parents {
        cur = cur.get_document(p).ok()?;
    }
    cur.get(last)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self as fx, DB};
    use super::*;
    use bson::doc;
    use serde_json::json;

    fn rules() -> Vec<CollectionConfig> {
        vec![
            CollectionConfig {
                collection: "users".into(),
                tenant_field: "tenantId".into(),
                fields_only: false,
            },
            CollectionConfig {
                collection: "notes".into(),
                tenant_field: "owner.org".into(),
                fields_only: true,
            },
        ]
    }

    fn normalizer() -> Normalizer {
        Normalizer::new("/sluice/mongo/app", DB, &rules())
    }

    fn event(doc: &Document) -> PendingEvent {
        match normalizer().normalize(doc).expect("well formed").outcome {
            Outcome::Event(e) => *e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn data(e: &PendingEvent) -> Value {
        serde_json::from_str(e.data.get()).expect("json")
    }

    fn tenant(e: &PendingEvent) -> &str {
        match &e.audience {
            Audience::Tenant(t) => t.as_str(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn insert_becomes_doc_inserted_tagged_with_the_documents_tenant() {
        let full =
            doc! { "_id": fx::oid(), "tenantId": "acme", "name": "Giovanni Verga", "n": 5_i64 };
        let e = event(&fx::insert("users", full));
        assert_eq!(&*e.event_type, "doc.inserted");
        assert_eq!(&*e.topic, "collections/engineering.users/insert");
        assert_eq!(&*e.source, "/sluice/mongo/app");
        assert_eq!(tenant(&e), "acme");
        assert_eq!(
            e.subject.as_deref(),
            Some("engineering.users/635019a078be67426d7cf4d2")
        );
        assert_eq!(&*e.time, "2022-10-19T15:37:04.604000Z");
        assert_eq!(e.txid, None);
        assert_eq!(e.lsn, None);
        assert_eq!(
            data(&e),
            json!({
                "op": "insert", "db": "engineering", "collection": "users",
                "key": {"_id": "635019a078be67426d7cf4d2"},
                "new": {"_id": "635019a078be67426d7cf4d2", "tenantId": "acme", "name": "Giovanni Verga", "n": 5}
            })
        );
    }

    #[test]
    fn update_lists_updated_and_removed_fields_as_changed() {
        let full = doc! { "_id": fx::oid(), "tenantId": "acme", "email": "alice@10gen.com" };
        let e = event(&fx::update("users", Some(full), None));
        assert_eq!(&*e.event_type, "doc.updated");
        assert_eq!(&*e.topic, "collections/engineering.users/update");
        assert_eq!(tenant(&e), "acme");
        let d = data(&e);
        assert_eq!(
            d["changed"],
            json!(["email", "address.city", "phoneNumber"])
        );
        assert_eq!(
            d["update"],
            json!({
                "updated_fields": {"email": "alice@10gen.com", "address.city": "Rome"},
                "removed_fields": ["phoneNumber"],
                "truncated_arrays": [{"field": "vacation_time", "new_size": 36}]
            })
        );
        assert_eq!(d["new"]["email"], json!("alice@10gen.com"));
        assert!(d.get("old").is_none());
    }

    #[test]
    fn update_whose_lookup_found_nothing_takes_the_tenant_from_the_pre_image() {
        let pre = doc! { "_id": fx::oid(), "tenantId": "globex", "email": "old@x" };
        let e = event(&fx::update("users", None, Some(pre)));
        assert_eq!(tenant(&e), "globex");
        let d = data(&e);
        assert!(
            d.get("new").is_none(),
            "a null post-image is not sent as new"
        );
        assert_eq!(d["old"]["email"], json!("old@x"));
    }

    #[test]
    fn update_with_no_image_and_no_tenant_in_the_key_is_dropped() {
        let out = normalizer()
            .normalize(&fx::update("users", None, None))
            .expect("well formed");
        assert!(
            matches!(&out.outcome, Outcome::Dropped(DropReason::NoTenant { op, .. }) if op == "update"),
            "{out:?}"
        );
    }

    #[test]
    fn replace_carries_new_and_old_images() {
        let full = doc! { "_id": fx::oid(), "tenantId": "acme", "v": 2_i32 };
        let pre = doc! { "_id": fx::oid(), "tenantId": "acme", "v": 1_i32 };
        let e = event(&fx::replace("users", full, Some(pre)));
        assert_eq!(&*e.event_type, "doc.replaced");
        assert_eq!(&*e.topic, "collections/engineering.users/replace");
        let d = data(&e);
        assert_eq!(d["new"]["v"], json!(2));
        assert_eq!(d["old"]["v"], json!(1));
        assert!(d.get("changed").is_none());
    }

    #[test]
    fn delete_with_a_pre_image_is_delivered_to_that_tenant() {
        let pre = doc! { "_id": fx::oid(), "tenantId": "acme", "name": "x" };
        let e = event(&fx::delete("users", doc! { "_id": fx::oid() }, Some(pre)));
        assert_eq!(&*e.event_type, "doc.deleted");
        assert_eq!(&*e.topic, "collections/engineering.users/delete");
        assert_eq!(tenant(&e), "acme");
        let d = data(&e);
        assert_eq!(d["key"], json!({"_id": "635019a078be67426d7cf4d2"}));
        assert_eq!(d["old"]["name"], json!("x"));
        assert!(d.get("new").is_none());
    }

    #[test]
    fn delete_without_a_pre_image_is_never_delivered() {
        let out = normalizer()
            .normalize(&fx::delete("users", doc! { "_id": fx::oid() }, None))
            .expect("well formed");
        match out.outcome {
            Outcome::Dropped(DropReason::DeleteWithoutPreImage { collection, key }) => {
                assert_eq!(collection, "users");
                assert_eq!(key, "635019a078be67426d7cf4d2");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn delete_of_a_sharded_collection_takes_the_tenant_from_the_shard_key() {
        let key = doc! { "tenantId": "initech", "_id": fx::oid() };
        let e = event(&fx::delete("users", key, None));
        assert_eq!(tenant(&e), "initech");
        assert_eq!(data(&e)["key"], json!({"_id": "635019a078be67426d7cf4d2"}));
    }

    #[test]
    fn nested_tenant_paths_and_fields_only_collections() {
        let full = doc! { "_id": "n1", "owner": { "org": "acme", "user": 7_i32 }, "secret": "s" };
        let e = event(&fx::insert("notes", full));
        assert_eq!(tenant(&e), "acme");
        assert_eq!(e.subject.as_deref(), Some("engineering.notes/n1"));
        // fields_only: only the key (and names of changed fields) leave.
        assert_eq!(
            data(&e),
            json!({"op": "insert", "db": "engineering", "collection": "notes", "key": {"_id": "n1"}})
        );
        let pre = doc! { "_id": "n1", "owner": { "org": "acme" }, "secret": "s" };
        let u = event(&fx::update("notes", None, Some(pre)));
        let d = data(&u);
        assert_eq!(
            d["changed"],
            json!(["email", "address.city", "phoneNumber"])
        );
        assert!(d.get("update").is_none() && d.get("old").is_none() && d.get("new").is_none());
    }

    #[test]
    fn object_id_and_integer_tenants_are_read_as_text() {
        let full = doc! { "_id": 1_i32, "tenantId": fx::oid() };
        assert_eq!(
            tenant(&event(&fx::insert("users", full))),
            "635019a078be67426d7cf4d2"
        );
        let full = doc! { "_id": 2_i32, "tenantId": 42_i64 };
        assert_eq!(tenant(&event(&fx::insert("users", full))), "42");
    }

    #[test]
    fn unusable_tenants_are_dropped_with_the_reason() {
        for (value, why) in [
            (Bson::Null, "no tenantId value"),
            (Bson::Boolean(true), "not a string"),
            (Bson::String(String::new()), "not a valid tenant id"),
            (Bson::Array(vec![Bson::String("a".into())]), "not a string"),
        ] {
            let full = doc! { "_id": 1_i32, "tenantId": value.clone() };
            let out = normalizer()
                .normalize(&fx::insert("users", full))
                .expect("well formed");
            match out.outcome {
                Outcome::Dropped(DropReason::NoTenant { why: got, .. }) => {
                    assert!(got.contains(why), "{value:?}: {got}")
                }
                other => panic!("{value:?}: {other:?}"),
            }
        }
        let out = normalizer()
            .normalize(&fx::insert(
                "users",
                doc! { "_id": 1_i32, "name": "no tenant" },
            ))
            .expect("well formed");
        assert!(matches!(
            out.outcome,
            Outcome::Dropped(DropReason::NoTenant { .. })
        ));
    }

    #[test]
    fn other_collections_and_databases_are_ignored() {
        let full = doc! { "_id": 1_i32, "tenantId": "acme" };
        let out = normalizer()
            .normalize(&fx::insert("audit", full.clone()))
            .expect("ok");
        assert!(matches!(out.outcome, Outcome::Ignored));
        let mut other_db = fx::insert("users", full);
        other_db.insert("ns", doc! { "db": "other", "coll": "users" });
        let out = normalizer().normalize(&other_db).expect("ok");
        assert!(matches!(out.outcome, Outcome::Ignored));
    }

    #[test]
    fn stream_events_become_controls() {
        let mut n = normalizer();
        let cases = [
            (
                fx::drop("users"),
                Control::Drop {
                    collection: "users".into(),
                },
            ),
            (
                fx::rename("users", "users_old"),
                Control::Rename {
                    collection: "users".into(),
                    to: "engineering.users_old".into(),
                },
            ),
            (fx::drop_database(), Control::DropDatabase),
            (fx::invalidate(), Control::Invalidate),
        ];
        for (doc, want) in cases {
            match n.normalize(&doc).expect("well formed").outcome {
                Outcome::Control(c) => assert_eq!(c, want),
                other => panic!("{other:?}"),
            }
        }
        // A drop of a collection that is not captured is not a condition.
        assert!(matches!(
            n.normalize(&fx::drop("audit")).expect("ok").outcome,
            Outcome::Ignored
        ));
    }

    #[test]
    fn every_outcome_carries_the_events_resume_token() {
        let mut n = normalizer();
        for doc in [
            fx::insert("users", doc! { "_id": 1_i32, "tenantId": "a" }),
            fx::delete("users", doc! { "_id": 1_i32 }, None),
            fx::insert("audit", doc! { "_id": 1_i32 }),
            fx::invalidate(),
        ] {
            let out = n.normalize(&doc).expect("well formed");
            let token: Document = bson::from_slice(&out.token).expect("bson");
            assert_eq!(&token, doc.get_document("_id").expect("_id"));
        }
    }

    #[test]
    fn changes_sharing_a_cluster_time_get_increasing_ordinals() {
        // The changes of one transaction share its clusterTime.
        let mut n = normalizer();
        let a = n
            .normalize(&fx::insert("users", doc! { "_id": 1_i32, "tenantId": "a" }))
            .expect("ok");
        let b = n
            .normalize(&fx::insert("users", doc! { "_id": 2_i32, "tenantId": "a" }))
            .expect("ok");
        let c = n.normalize(&fx::update("users", None, None)).expect("ok");
        let ct = (1_666_193_824_u64 << 32) | 1;
        assert_eq!((a.position.commit_lsn, a.position.ordinal), (ct, 1));
        assert_eq!((b.position.commit_lsn, b.position.ordinal), (ct, 2));
        assert_eq!(c.position.ordinal, 1);
        assert!(c.position > b.position);
    }

    #[test]
    fn malformed_events_are_errors_not_guesses() {
        let mut n = normalizer();
        let mut no_token = fx::insert("users", doc! { "_id": 1_i32, "tenantId": "a" });
        no_token.remove("_id");
        assert!(n.normalize(&no_token).is_err());
        let mut no_key = fx::insert("users", doc! { "_id": 1_i32, "tenantId": "a" });
        no_key.remove("documentKey");
        assert!(n.normalize(&no_key).is_err());
        let mut no_desc = fx::update("users", Some(doc! { "_id": 1_i32, "tenantId": "a" }), None);
        no_desc.remove("updateDescription");
        assert!(n.normalize(&no_desc).is_err());
        let mut no_op = fx::invalidate();
        no_op.remove("operationType");
        assert!(n.normalize(&no_op).is_err());
    }

    #[test]
    fn time_falls_back_to_the_cluster_time_before_wall_time_existed() {
        let mut d = fx::insert("users", doc! { "_id": 1_i32, "tenantId": "a" });
        d.remove("wallTime");
        let e = event(&d);
        assert_eq!(&*e.time, "2022-10-19T15:37:04.000000Z");
    }

    #[test]
    fn the_envelope_is_the_same_shape_as_for_postgres() {
        let e = event(&fx::insert(
            "users",
            doc! { "_id": 1_i32, "tenantId": "acme" },
        ));
        let tenant = TenantId::new("acme").expect("valid");
        let env: Value = serde_json::from_str(&e.envelope_json(7, &tenant)).expect("json");
        assert_eq!(env["seq"], json!(7));
        assert_eq!(env["type"], json!("doc.inserted"));
        assert_eq!(env["tenant"], json!("acme"));
        assert_eq!(env["subject"], json!("engineering.users/1"));
        assert!(env.get("lsn").is_none() && env.get("txid").is_none());
    }
}
