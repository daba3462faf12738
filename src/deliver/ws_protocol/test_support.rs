//! What the protocol tests share: the parse shorthands and the tables of
//! every error the protocol produces (client messages in `error_cases`,
//! session-level errors in `session_errors`), which the error-code check
//! compares with `ERROR_CODES`.

pub(super) use super::*;
pub(super) use crate::auth::Role;
use crate::source::postgres::normalize::MAX_CUSTOM_NAME;
pub(super) use crate::subscription::{Filter, Selector, TopicGlob};
pub(super) use proptest::prelude::*;
pub(super) use serde_json::{json, Map, Value};
pub(super) use std::collections::BTreeSet;

pub(super) const MAX: usize = 4096;

pub(super) fn captured() -> Vec<String> {
    vec!["public.orders".to_owned(), "public.items".to_owned()]
}

pub(super) fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
    parse_client(text, MAX, &captured())
}

pub(super) fn globs(list: &[&str]) -> Vec<TopicGlob> {
    list.iter()
        .map(|g| TopicGlob::parse(g).expect("valid glob"))
        .collect()
}

pub(super) fn filter(v: Value) -> Filter {
    Filter::parse(&v).expect("valid filter")
}

pub(super) fn filter_error(v: Value) -> String {
    Filter::parse(&v).expect_err("invalid filter").to_string()
}

pub(super) fn subscribe(
    id: &str,
    topics: &[&str],
    filter: Option<Filter>,
    from: Option<i64>,
) -> ClientMessage {
    ClientMessage::Subscribe {
        id: id.to_owned(),
        selector: Selector {
            topics: globs(topics),
            filter,
        },
        from,
        group: None,
        snapshot: None,
    }
}

pub(super) fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// (message, code, id, error message): every error code parsing can
/// return.
pub(super) fn error_cases() -> Vec<(String, &'static str, Option<&'static str>, String)> {
    const LONG_ID: &str = "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii";
    assert_eq!(LONG_ID.len(), 65);
    let long = "x".repeat(70);
    let many: Vec<String> = (0..=MAX_TOPICS).map(|i| format!("t/{i}")).collect();
    let bad_filter = json!({"and": [{"field": "a", "op": "like", "value": 1}]});
    let mut cases: Vec<(String, &'static str, Option<&'static str>, String)> = vec![
        // message_too_large
        (
            format!(r#"{{"type":"ping","pad":"{}"}}"#, "p".repeat(MAX)),
            code::MESSAGE_TOO_LARGE,
            None,
            format!("message is {} bytes; the limit is {MAX} bytes", MAX + 24),
        ),
        // invalid_json
        (
            "".into(),
            code::INVALID_JSON,
            None,
            "message is not valid JSON: EOF while parsing a value at line 1 column 0".into(),
        ),
        (
            r#"{"type":"ping""#.into(),
            code::INVALID_JSON,
            None,
            "message is not valid JSON: EOF while parsing an object at line 1 column 14".into(),
        ),
        (
            r#"{"type":"ping"} {}"#.into(),
            code::INVALID_JSON,
            None,
            "message is not valid JSON: trailing characters at line 1 column 17".into(),
        ),
        (
            "{type:\"ping\"}".into(),
            code::INVALID_JSON,
            None,
            "message is not valid JSON: key must be a string at line 1 column 2".into(),
        ),
        // invalid_message: the frame's shape
        (
            r#"["ping"]"#.into(),
            code::INVALID_MESSAGE,
            None,
            "expected a JSON object with a \"type\" member, found an array".into(),
        ),
        (
            "42".into(),
            code::INVALID_MESSAGE,
            None,
            "expected a JSON object with a \"type\" member, found a number".into(),
        ),
        (
            "null".into(),
            code::INVALID_MESSAGE,
            None,
            "expected a JSON object with a \"type\" member, found null".into(),
        ),
        (
            "{}".into(),
            code::INVALID_MESSAGE,
            None,
            "missing member \"type\"; expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack"
                .into(),
        ),
        (
            r#"{"type":["ping"]}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "type: expected a string (one of auth, subscribe, unsubscribe, publish, ping, ack, nack), found an array"
                .into(),
        ),
        (
            r#"{"type":"ping","type":"publish"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "member \"type\" is given more than once".into(),
        ),
        // Two ids: neither is the message's, so the error has none.
        (
            r#"{"type":"subscribe","id":"a","id":"b"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "member \"id\" is given more than once".into(),
        ),
        // An error answering an object with a string id carries it,
        // whatever is wrong with the object.
        (
            r#"{"id":"m1"}"#.into(),
            code::INVALID_MESSAGE,
            Some("m1"),
            "missing member \"type\"; expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack"
                .into(),
        ),
        (
            r#"{"type":"nope","id":"u1"}"#.into(),
            code::UNKNOWN_TYPE,
            Some("u1"),
            "unknown message type \"nope\"; expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack"
                .into(),
        ),
        (
            r#"{"type":7,"id":"t1"}"#.into(),
            code::INVALID_MESSAGE,
            Some("t1"),
            "type: expected a string (one of auth, subscribe, unsubscribe, publish, ping, ack, nack), found a number"
                .into(),
        ),
        (
            r#"{"type":"ping","type":"publish","id":"r1"}"#.into(),
            code::INVALID_MESSAGE,
            Some("r1"),
            "member \"type\" is given more than once".into(),
        ),
        (
            r#"{"type":"auth","token":"k","id":"a1"}"#.into(),
            code::INVALID_MESSAGE,
            Some("a1"),
            "unknown member \"id\" in an auth message; accepted: type, token".into(),
        ),
        (
            r#"{"type":"ping","id":"p1"}"#.into(),
            code::INVALID_MESSAGE,
            Some("p1"),
            "unknown member \"id\" in a ping message; it has no member besides \"type\"".into(),
        ),
        // unknown_type
        (
            r#"{"type":"subscribe_all"}"#.into(),
            code::UNKNOWN_TYPE,
            None,
            "unknown message type \"subscribe_all\"; expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack"
                .into(),
        ),
        (
            r#"{"type":"PING"}"#.into(),
            code::UNKNOWN_TYPE,
            None,
            "unknown message type \"PING\"; expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack"
                .into(),
        ),
        (
            format!(r#"{{"type":"{long}"}}"#),
            code::UNKNOWN_TYPE,
            None,
            format!(
                "unknown message type \"{}\"… (70 bytes); expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack",
                "x".repeat(64)
            ),
        ),
        // auth
        (
            r#"{"type":"auth"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "missing member \"token\" in an auth message; expected an API key or a JWT".into(),
        ),
        (
            r#"{"type":"auth","token":null}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "token: expected a non-empty string (an API key or a JWT), found null".into(),
        ),
        (
            r#"{"type":"auth","token":""}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "token: expected a non-empty string (an API key or a JWT), found an empty string"
                .into(),
        ),
        (
            r#"{"type":"auth","token":"k","tenant":"acme"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "unknown member \"tenant\" in an auth message; accepted: type, token".into(),
        ),
        // subscribe: id
        (
            r#"{"type":"subscribe"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "missing member \"id\" in a subscribe message; expected the subscription's id, a string of 1 to 64 bytes"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":7}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "id: expected a string of 1 to 64 bytes, found a number".into(),
        ),
        (
            r#"{"type":"subscribe","id":""}"#.into(),
            code::INVALID_MESSAGE,
            Some(""),
            "id: expected a string of 1 to 64 bytes, found an empty string".into(),
        ),
        (
            format!(r#"{{"type":"subscribe","id":"{LONG_ID}"}}"#),
            code::INVALID_MESSAGE,
            Some(LONG_ID),
            "id: expected a string of 1 to 64 bytes, found 65 bytes".into(),
        ),
        // subscribe: members (the id, once valid, is in the error)
        (
            r#"{"type":"subscribe","id":"s1","topicz":"a"}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "unknown member \"topicz\" in a subscribe message; accepted: type, id, topic, topics, table, collection, filter, from, group, max_in_flight, snapshot, order_by, limit"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","table":"public.orders","snapshot":"yes"}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "snapshot: expected true or false, found a string".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","table":["public.orders","public.items"],"snapshot":true}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "snapshot: a live query reads exactly one table: give one \"table\" and no topic, topics, collection or group".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","snapshot":true}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "snapshot: a live query reads exactly one table: give one \"table\" and no topic, topics, collection or group".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","tenant":"other"}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "unknown member \"tenant\" in a subscribe message; accepted: type, id, topic, topics, table, collection, filter, from, group, max_in_flight, snapshot, order_by, limit"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","topic":["a","b"]}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "topic: expected a topic glob (a string), found an array; to give several, use \"topics\": [...]"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","topics":"a"}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "topics: expected an array of topic globs, found a string".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","topics":["a",3]}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "topics[1]: expected a topic glob (a string), found a number".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","table":{"name":"public.orders"}}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "table: expected a table name \"schema.table\" or an array of them, found an object"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","collection":["shop.orders",true]}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "collection[1]: expected a collection name \"database.collection\" (a string), found a boolean"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","from":-1}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "from: expected a seq (a whole number >= 0), found -1".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","from":1.0}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "from: expected a seq (a whole number >= 0), found 1.0".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","from":1e3}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "from: expected a seq (a whole number >= 0), found 1e+3".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","from":9223372036854775808}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "from: expected a seq (a whole number >= 0), found 9223372036854775808".into(),
        ),
        (
            format!(r#"{{"type":"subscribe","id":"s1","from":{}}}"#, "9".repeat(65)),
            code::INVALID_MESSAGE,
            Some("s1"),
            "from: expected a seq (a whole number >= 0), found a number of 65 characters"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","from":"42"}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "from: expected a seq (a whole number >= 0), found a string".into(),
        ),
        // invalid_topic
        (
            r#"{"type":"subscribe","id":"s1","topic":"tables/public.*/update"}"#.into(),
            code::INVALID_TOPIC,
            Some("s1"),
            format!(
                "topic: {}",
                TopicGlob::parse("tables/public.*/update").expect_err("invalid")
            ),
        ),
        (
            r#"{"type":"subscribe","id":"s1","topics":["tables/**","a//b"]}"#.into(),
            code::INVALID_TOPIC,
            Some("s1"),
            "topics[1]: topic glob segment 2 is empty; segments are separated by a single \"/\" and the glob cannot start or end with \"/\""
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","topics":[]}"#.into(),
            code::INVALID_TOPIC,
            Some("s1"),
            "topics: the array is empty; omit \"topics\" to receive every topic".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","table":[]}"#.into(),
            code::INVALID_TOPIC,
            Some("s1"),
            "table: the array is empty; omit \"table\" to receive every topic".into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","collection":"orders"}"#.into(),
            code::INVALID_TOPIC,
            Some("s1"),
            "collection: collection name \"orders\" is not qualified; expected \"database.collection\", e.g. \"shop.orders\""
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","collection":["shop.orders","shop/x"]}"#.into(),
            code::INVALID_TOPIC,
            Some("s1"),
            "collection[1]: collection name \"shop/x\" contains \"/\"; expected \"database.collection\", e.g. \"shop.orders\" (no \"/\" and no wildcards; to match several, use a topic glob)"
                .into(),
        ),
        (
            json!({"type": "subscribe", "id": "s1", "topic": "a", "topics": many})
                .to_string(),
            code::INVALID_TOPIC,
            Some("s1"),
            "34 topic globs given (topic, topics, table and collection together); at most 32 per subscription"
                .into(),
        ),
        // unknown_table
        (
            r#"{"type":"subscribe","id":"s1","table":"public.nope"}"#.into(),
            code::UNKNOWN_TABLE,
            Some("s1"),
            "table: unknown table \"public.nope\"; captured tables: public.orders, public.items"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","table":["public.items","orders"]}"#.into(),
            code::UNKNOWN_TABLE,
            Some("s1"),
            "table[1]: unknown table \"orders\"; captured tables: public.orders, public.items"
                .into(),
        ),
        // invalid_filter
        (
            json!({"type": "subscribe", "id": "s1", "filter": bad_filter}).to_string(),
            code::INVALID_FILTER,
            Some("s1"),
            filter_error(bad_filter.clone()),
        ),
        (
            r#"{"type":"subscribe","id":"s1","filter":"{\"field\":\"a\",\"op\":\"eq\",\"value\":1}"}"#
                .into(),
            code::INVALID_FILTER,
            Some("s1"),
            filter_error(json!("{}")),
        ),
        // unsubscribe
        (
            r#"{"type":"unsubscribe"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "missing member \"id\" in an unsubscribe message; expected the subscription's id, a string of 1 to 64 bytes"
                .into(),
        ),
        (
            r#"{"type":"unsubscribe","id":"s1","topic":"a"}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "unknown member \"topic\" in an unsubscribe message; accepted: type, id".into(),
        ),
        (
            r#"{"type":"unsubscribe","id":["s1"]}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "id: expected a string of 1 to 64 bytes, found an array".into(),
        ),
        // publish
        (
            r#"{"type":"publish","data":{}}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "missing member \"event\" in a publish message; expected an event name of 1 to 128 characters of A-Z a-z 0-9 _ . -, e.g. \"order.shipped\""
                .into(),
        ),
        (
            r#"{"type":"publish","event":7,"data":{}}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "event: expected an event name of 1 to 128 characters of A-Z a-z 0-9 _ . -, e.g. \"order.shipped\", found a number"
                .into(),
        ),
        (
            r#"{"type":"publish","event":"order shipped","data":{}}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "event: expected an event name of 1 to 128 characters of A-Z a-z 0-9 _ . -, e.g. \"order.shipped\", found \"order shipped\""
                .into(),
        ),
        (
            r#"{"type":"publish","event":"order/shipped","data":{}}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "event: expected an event name of 1 to 128 characters of A-Z a-z 0-9 _ . -, e.g. \"order.shipped\", found \"order/shipped\""
                .into(),
        ),
        (
            r#"{"type":"publish","event":"","data":{}}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "event: expected an event name of 1 to 128 characters of A-Z a-z 0-9 _ . -, e.g. \"order.shipped\", found an empty string"
                .into(),
        ),
        (
            format!(
                r#"{{"type":"publish","event":"{}","data":{{}}}}"#,
                "e".repeat(MAX_CUSTOM_NAME + 1)
            ),
            code::INVALID_MESSAGE,
            None,
            "event: expected an event name of 1 to 128 characters of A-Z a-z 0-9 _ . -, e.g. \"order.shipped\", found 129 bytes"
                .into(),
        ),
        (
            r#"{"type":"publish","event":"x"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "missing member \"data\" in a publish message; expected the event's data, a JSON object"
                .into(),
        ),
        (
            r#"{"type":"publish","event":"x","data":[1]}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "data: expected a JSON object, found an array".into(),
        ),
        (
            r#"{"type":"publish","event":"x","data":"{}"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "data: expected a JSON object, found a string".into(),
        ),
        (
            r#"{"type":"publish","event":"x","data":null}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "data: expected a JSON object, found null".into(),
        ),
        (
            r#"{"type":"publish","event":"x","data":{},"subject":""}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "subject: expected a string of 1 to 256 bytes, found an empty string".into(),
        ),
        (
            format!(
                r#"{{"type":"publish","event":"x","data":{{}},"subject":"{}"}}"#,
                "s".repeat(MAX_SUBJECT_BYTES + 1)
            ),
            code::INVALID_MESSAGE,
            None,
            "subject: expected a string of 1 to 256 bytes, found 257 bytes".into(),
        ),
        (
            r#"{"type":"publish","event":"x","data":{},"subject":"order\n42"}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "subject: contains a control character at byte 5; only printable characters are allowed"
                .into(),
        ),
        (
            r#"{"type":"publish","event":"x","data":{},"subject":42}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "subject: expected a string of 1 to 256 bytes, found a number".into(),
        ),
        (
            r#"{"type":"publish","id":"p1","event":"x","data":{}}"#.into(),
            code::INVALID_MESSAGE,
            Some("p1"),
            "unknown member \"id\" in a publish message; accepted: type, event, data, subject"
                .into(),
        ),
    ];
    // A long unknown member name is cut in the message.
    cases.push((
        format!(r#"{{"type":"auth","token":"k","{}é":1}}"#, "m".repeat(63)),
        code::INVALID_MESSAGE,
        None,
        format!(
            "unknown member \"{}\"… (65 bytes) in an auth message; accepted: type, token",
            "m".repeat(63)
        ),
    ));
    cases
}

/// (error, code, id, message): the errors the session builds.
pub(super) fn session_errors() -> Vec<(
    ProtocolError,
    &'static str,
    Option<&'static str>,
    &'static str,
)> {
    vec![
        (
            ProtocolError::already_authenticated(),
            code::ALREADY_AUTHENTICATED,
            None,
            "this connection is already authenticated; open another connection to use another credential",
        ),
        (
            ProtocolError::auth_failed("this API key has been revoked"),
            code::AUTH_FAILED,
            None,
            "authentication failed: this API key has been revoked",
        ),
        (
            ProtocolError::forbidden("publish", Role::Service, Role::Anon),
            code::FORBIDDEN,
            None,
            "publish needs a service credential; this connection's credential is anon",
        ),
        (
            ProtocolError::duplicate_id("s1"),
            code::DUPLICATE_ID,
            Some("s1"),
            "a subscription with id \"s1\" is already active on this connection; unsubscribe it first or choose another id",
        ),
        (
            ProtocolError::unknown_id("s\"2"),
            code::UNKNOWN_ID,
            Some("s\"2"),
            "no active subscription has id \"s\\\"2\"",
        ),
        (
            ProtocolError::too_many_subscriptions("s9", 8),
            code::TOO_MANY_SUBSCRIPTIONS,
            Some("s9"),
            "this connection already has 8 subscriptions, the limit; unsubscribe one first",
        ),
        (
            ProtocolError::gap("s1", 5, 1200),
            code::GAP,
            Some("s1"),
            "seq 5 is older than the log's retention; the oldest available is 1200",
        ),
        (
            ProtocolError::binary_not_supported(),
            code::BINARY_NOT_SUPPORTED,
            None,
            "binary frames are not supported; send each message as a JSON text frame",
        ),
        (
            ProtocolError::unavailable("the log"),
            code::UNAVAILABLE,
            None,
            "the log is unavailable; retry shortly",
        ),
        (
            ProtocolError::live(
                "s1",
                &crate::deliver::live::LiveError::TooLarge(10),
            ),
            code::SNAPSHOT_TOO_LARGE,
            Some("s1"),
            "the initial read would return more than 10 rows (http.max_snapshot_rows); narrow the filter",
        ),
    ]
}
