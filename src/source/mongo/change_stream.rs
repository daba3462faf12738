//! What Sluice asks the server for: the change stream's `$match` stage
//! (tenant isolation at the source), its options, and the resume-token
//! checkpoint encoding. Pure.

use bson::{doc, Bson, Document};
use bytes::Bytes;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use serde::{Deserialize, Serialize};

use crate::config::CollectionConfig;

/// Server error codes the source treats specially.
pub mod codes {
    /// The resume point fell off the oplog.
    pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
    /// Resuming is impossible (e.g. the token names a later topology).
    pub const CHANGE_STREAM_FATAL_ERROR: i32 = 280;
    /// The token cannot be used on this stream.
    pub const INVALID_RESUME_TOKEN: i32 = 260;
    /// `collMod` on a collection that does not exist.
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
}

/// Change types that become events.
const DATA_OPS: [&str; 4] = ["insert", "update", "replace", "delete"];

/// The stream's one `$match` stage.
///
/// It keeps, per captured collection, the data changes whose tenant field
/// is present in the post-image, the pre-image or the document key, plus
/// the updates and deletes that carry no image at all (the normalizer
/// counts those as undeliverable; they are never delivered). Other
/// collections' changes and changes of documents without a tenant never
/// leave the server. Stream-level events (`invalidate`, `dropDatabase`) and
/// drops or renames of captured collections pass, so the source can report
/// them.
pub fn match_stage(database: &str, collections: &[CollectionConfig]) -> Document {
    let names: Vec<Bson> = collections
        .iter()
        .map(|c| Bson::String(c.collection.clone()))
        .collect();
    let mut branches: Vec<Bson> = vec![
        Bson::Document(doc! { "operationType": { "$in": ["invalidate", "dropDatabase"] } }),
        Bson::Document(doc! {
            "ns.db": database,
            "ns.coll": { "$in": names },
            "operationType": { "$in": ["drop", "rename"] },
        }),
    ];
    for c in collections {
        let present = |image: &str| -> Bson {
            let mut d = Document::new();
            d.insert(format!("{image}.{}", c.tenant_field), doc! { "$ne": null });
            Bson::Document(d)
        };
        branches.push(Bson::Document(doc! {
            "ns.db": database,
            "ns.coll": &c.collection,
            "operationType": { "$in": DATA_OPS.to_vec() },
            "$or": [
                present("fullDocument"),
                present("fullDocumentBeforeChange"),
                present("documentKey"),
            ],
        }));
        branches.push(Bson::Document(doc! {
            "ns.db": database,
            "ns.coll": &c.collection,
            "operationType": { "$in": ["update", "delete"] },
            "fullDocument": null,
            "fullDocumentBeforeChange": null,
        }));
    }
    doc! { "$match": { "$or": branches } }
}

/// The `fullDocument` option for a configured value (validated by config).
pub fn full_document(configured: &str) -> FullDocumentType {
    match configured {
        "whenAvailable" => FullDocumentType::WhenAvailable,
        "required" => FullDocumentType::Required,
        _ => FullDocumentType::UpdateLookup,
    }
}

/// Whether a server of `version` (from `buildInfo.versionArray`) records
/// pre-images (`changeStreamPreAndPostImages`, MongoDB 6.0).
pub fn supports_pre_images(version: &[i32]) -> bool {
    version.first().copied().unwrap_or(0) >= 6
}

#[derive(Serialize)]
struct WrapRef<'a> {
    t: &'a ResumeToken,
}

#[derive(Deserialize)]
struct Wrap {
    t: ResumeToken,
}

/// A resume token as stored in the checkpoint: the BSON of the token
/// document (`{"_data": "…"}`), the same bytes as the change event's `_id`.
pub fn encode_token(token: &ResumeToken) -> Result<Bytes, String> {
    let wrapped = bson::to_document(&WrapRef { t: token }).map_err(|e| e.to_string())?;
    match wrapped.get("t") {
        Some(Bson::Document(d)) => bson::to_vec(d).map(Bytes::from).map_err(|e| e.to_string()),
        other => Err(format!("a resume token that is not a document: {other:?}")),
    }
}

/// The token stored by [`encode_token`] (or taken from an event's `_id`).
pub fn decode_token(stored: &[u8]) -> Result<ResumeToken, String> {
    let token: Document = bson::from_slice(stored)
        .map_err(|e| format!("the stored resume token is not BSON: {e}"))?;
    let wrapped = bson::to_vec(&doc! { "t": token }).map_err(|e| e.to_string())?;
    bson::from_slice::<Wrap>(&wrapped)
        .map(|w| w.t)
        .map_err(|e| format!("the stored resume token is not a token: {e}"))
}

/// The token's `_data` string, for logs.
pub fn describe_token(stored: &[u8]) -> String {
    bson::from_slice::<Document>(stored)
        .ok()
        .and_then(|d| d.get_str("_data").ok().map(str::to_owned))
        .unwrap_or_else(|| format!("{} bytes", stored.len()))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self as fx, DB};
    use super::*;

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
                fields_only: false,
            },
        ]
    }

    /// The value at a dotted path (missing: None).
    fn at<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
        let mut cur = doc;
        let mut parts = path.split('.').peekable();
        while let Some(p) = parts.next() {
            let v = cur.get(p)?;
            if parts.peek().is_none() {
                return Some(v);
            }
            cur = v.as_document()?;
        }
        None
    }

    /// MongoDB query semantics for the operators `match_stage` uses:
    /// `$or`, `$in`, `$ne: null`, equality, and `null` matching missing.
    fn matches(query: &Document, doc: &Document) -> bool {
        query.iter().all(|(k, cond)| {
            if k == "$or" {
                let branches = cond.as_array().expect("$or takes an array");
                return branches
                    .iter()
                    .any(|b| matches(b.as_document().expect("branch"), doc));
            }
            let v = at(doc, k);
            let is_null = matches!(v, None | Some(Bson::Null));
            match cond {
                Bson::Null => is_null,
                Bson::Document(ops) => ops.iter().all(|(op, arg)| match op.as_str() {
                    "$in" => {
                        v.is_some_and(|v| arg.as_array().expect("$in takes an array").contains(v))
                    }
                    "$ne" if *arg == Bson::Null => !is_null,
                    other => panic!("operator {other} is not modelled"),
                }),
                lit => v == Some(lit),
            }
        })
    }

    fn passes(event: &Document) -> bool {
        let stage = match_stage(DB, &rules());
        matches(stage.get_document("$match").expect("$match"), event)
    }

    #[test]
    fn the_match_stage_keeps_changes_whose_tenant_can_be_read() {
        assert!(passes(&fx::insert(
            "users",
            doc! { "_id": 1, "tenantId": "a" }
        )));
        assert!(passes(&fx::insert(
            "notes",
            doc! { "_id": 1, "owner": { "org": "a" } }
        )));
        assert!(passes(&fx::update(
            "users",
            Some(doc! { "_id": 1, "tenantId": "a" }),
            None
        )));
        assert!(passes(&fx::replace(
            "users",
            doc! { "_id": 1, "tenantId": "a" },
            None
        )));
        assert!(passes(&fx::delete(
            "users",
            doc! { "_id": 1 },
            Some(doc! { "_id": 1, "tenantId": "a" })
        )));
        // Sharded on the tenant: the key holds it.
        assert!(passes(&fx::delete(
            "users",
            doc! { "tenantId": "a", "_id": 1 },
            None
        )));
    }

    #[test]
    fn the_match_stage_filters_out_what_no_tenant_may_receive() {
        // Documents without a tenant never leave the server.
        assert!(!passes(&fx::insert(
            "users",
            doc! { "_id": 1, "name": "x" }
        )));
        assert!(!passes(&fx::insert(
            "users",
            doc! { "_id": 1, "tenantId": null }
        )));
        assert!(!passes(&fx::insert(
            "notes",
            doc! { "_id": 1, "owner": "a" }
        )));
        assert!(!passes(&fx::replace("users", doc! { "_id": 1 }, None)));
        // Another collection, another database.
        assert!(!passes(&fx::insert(
            "audit",
            doc! { "_id": 1, "tenantId": "a" }
        )));
        let mut elsewhere = fx::insert("users", doc! { "_id": 1, "tenantId": "a" });
        elsewhere.insert("ns", doc! { "db": "other", "coll": "users" });
        assert!(!passes(&elsewhere));
        // Drops and renames of other collections.
        assert!(!passes(&fx::drop("audit")));
    }

    #[test]
    fn the_match_stage_lets_through_what_must_be_counted_or_reported() {
        // No image at all: passed on to be counted (never delivered).
        assert!(passes(&fx::delete("users", doc! { "_id": 1 }, None)));
        assert!(passes(&fx::update("users", None, None)));
        // Stream conditions.
        assert!(passes(&fx::drop("users")));
        assert!(passes(&fx::rename("notes", "notes_old")));
        assert!(passes(&fx::drop_database()));
        assert!(passes(&fx::invalidate()));
    }

    #[test]
    fn the_match_stage_is_one_match_document() {
        let stage = match_stage(DB, &rules());
        assert_eq!(stage.keys().collect::<Vec<_>>(), ["$match"]);
        let text = bson::Bson::Document(stage)
            .into_relaxed_extjson()
            .to_string();
        for path in [
            "fullDocument.tenantId",
            "fullDocumentBeforeChange.tenantId",
            "documentKey.tenantId",
            "fullDocument.owner.org",
            "fullDocumentBeforeChange.owner.org",
            "documentKey.owner.org",
        ] {
            assert!(text.contains(&format!("\"{path}\"")), "{path} in {text}");
        }
    }

    #[test]
    fn tokens_round_trip_through_the_checkpoint_bytes() {
        let raw = bson::to_vec(&fx::token(42)).expect("bson");
        let token = decode_token(&raw).expect("decodes");
        assert_eq!(
            encode_token(&token).expect("encodes").as_ref(),
            raw.as_slice()
        );
        assert!(describe_token(&raw).starts_with("8263501042"));
        assert!(decode_token(b"not bson").is_err());
    }

    #[test]
    fn options_follow_the_configuration_and_the_server_version() {
        assert!(matches!(
            full_document("updateLookup"),
            FullDocumentType::UpdateLookup
        ));
        assert!(matches!(
            full_document("whenAvailable"),
            FullDocumentType::WhenAvailable
        ));
        assert!(matches!(
            full_document("required"),
            FullDocumentType::Required
        ));
        assert!(supports_pre_images(&[6, 0, 3, 0]));
        assert!(supports_pre_images(&[7, 0, 0, 0]));
        assert!(!supports_pre_images(&[5, 0, 9, 0]));
        assert!(!supports_pre_images(&[]));
    }
}
