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
