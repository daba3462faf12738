//! What every value test file uses: the entry points, the types and the
//! `ok` / `ser` / `bad` / `arr` shorthands.

pub(super) use super::{builtin_type, to_json, PgType, ValueError};
pub(super) use proptest::prelude::*;
pub(super) use serde_json::{json, Value};

pub(super) fn ok(ty: &PgType, text: &str) -> Value {
    match to_json(ty, text.as_bytes()) {
        Ok(v) => v,
        Err(e) => panic!("{ty:?} {text:?}: {e}"),
    }
}

/// The serialized JSON, to check exact digits.
pub(super) fn ser(ty: &PgType, text: &str) -> String {
    serde_json::to_string(&ok(ty, text)).unwrap()
}

pub(super) fn bad(ty: &PgType, text: &str) -> ValueError {
    match to_json(ty, text.as_bytes()) {
        Ok(v) => panic!("{ty:?} {text:?} unexpectedly gave {v}"),
        Err(e) => e,
    }
}

pub(super) fn arr(elem: PgType) -> PgType {
    PgType::Array {
        elem: Box::new(elem),
        delim: b',',
    }
}
