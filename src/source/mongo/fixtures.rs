//! Change events in the shapes MongoDB documents for each operation type
//! (<https://www.mongodb.com/docs/manual/reference/change-events/>), built
//! as BSON the way the server sends them. Test-only.

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document, Timestamp};

pub const DB: &str = "engineering";

/// A resume token as the server writes it (`_data` is KeyString hex).
pub fn token(n: u32) -> Document {
    doc! { "_data": format!("8263501{n:03}A0000000012B042C0100296E5A1004AB1154ACACD849A48C61756D70D3B21F463C6F7065726174696F6E54797065003C696E7365727400") }
}

fn cluster_time(t: u32, i: u32) -> Bson {
    Bson::Timestamp(Timestamp {
        time: t,
        increment: i,
    })
}

fn uuid() -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: vec![
            0xab, 0x11, 0x54, 0xac, 0xac, 0xd8, 0x49, 0xa4, 0x8c, 0x61, 0x75, 0x6d, 0x70, 0xd3,
            0xb2, 0x1f,
        ],
    })
}

pub fn oid() -> ObjectId {
    ObjectId::parse_str("635019a078be67426d7cf4d2").expect("valid")
}

fn wall() -> bson::DateTime {
    // 2022-10-19T15:37:04.604Z
    bson::DateTime::from_millis(1_666_193_824_604)
}

pub fn insert(coll: &str, full: Document) -> Document {
    let id = full.get("_id").cloned().unwrap_or(Bson::ObjectId(oid()));
    doc! {
        "_id": token(1),
        "operationType": "insert",
        "clusterTime": cluster_time(1_666_193_824, 1),
        "collectionUUID": uuid(),
        "wallTime": wall(),
        "fullDocument": full,
        "ns": { "db": DB, "coll": coll },
        "documentKey": { "_id": id },
    }
}

/// An update; `full` is the `updateLookup` post-image (`None`: the
/// document was deleted before the lookup, so the server sends null).
pub fn update(coll: &str, full: Option<Document>, pre: Option<Document>) -> Document {
    let mut d = doc! {
        "_id": token(2),
        "operationType": "update",
        "clusterTime": cluster_time(1_666_193_830, 1),
        "wallTime": wall(),
        "ns": { "db": DB, "coll": coll },
        "documentKey": { "_id": oid() },
        "updateDescription": {
            "updatedFields": { "email": "alice@10gen.com", "address.city": "Rome" },
            "removedFields": ["phoneNumber"],
            "truncatedArrays": [ { "field": "vacation_time", "newSize": 36_i32 } ],
            "disambiguatedPaths": {},
        },
        "fullDocument": full.map_or(Bson::Null, Bson::Document),
    };
    if let Some(pre) = pre {
        d.insert("fullDocumentBeforeChange", pre);
    }
    d
}

pub fn replace(coll: &str, full: Document, pre: Option<Document>) -> Document {
    let mut d = doc! {
        "_id": token(3),
        "operationType": "replace",
        "clusterTime": cluster_time(1_666_193_840, 1),
        "wallTime": wall(),
        "ns": { "db": DB, "coll": coll },
        "documentKey": { "_id": oid() },
        "fullDocument": full,
    };
    if let Some(pre) = pre {
        d.insert("fullDocumentBeforeChange", pre);
    }
    d
}

/// A delete; `key` is the documentKey (a sharded collection adds its
/// shard key fields), `pre` the pre-image when the collection records them.
pub fn delete(coll: &str, key: Document, pre: Option<Document>) -> Document {
    let mut d = doc! {
        "_id": token(4),
        "operationType": "delete",
        "clusterTime": cluster_time(1_666_193_850, 1),
        "wallTime": wall(),
        "ns": { "db": DB, "coll": coll },
        "documentKey": key,
    };
    if let Some(pre) = pre {
        d.insert("fullDocumentBeforeChange", pre);
    }
    d
}

pub fn drop(coll: &str) -> Document {
    doc! {
        "_id": token(5),
        "operationType": "drop",
        "clusterTime": cluster_time(1_666_193_860, 1),
        "wallTime": wall(),
        "ns": { "db": DB, "coll": coll },
    }
}

pub fn rename(coll: &str, to: &str) -> Document {
    doc! {
        "_id": token(6),
        "operationType": "rename",
        "clusterTime": cluster_time(1_666_193_870, 1),
        "wallTime": wall(),
        "ns": { "db": DB, "coll": coll },
        "to": { "db": DB, "coll": to },
    }
}

pub fn drop_database() -> Document {
    doc! {
        "_id": token(7),
        "operationType": "dropDatabase",
        "clusterTime": cluster_time(1_666_193_880, 1),
        "wallTime": wall(),
        "ns": { "db": DB },
    }
}

pub fn invalidate() -> Document {
    doc! {
        "_id": token(8),
        "operationType": "invalidate",
        "clusterTime": cluster_time(1_666_193_880, 2),
        "wallTime": wall(),
    }
}
