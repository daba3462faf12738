use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeSet;

const MAX: usize = 4096;

fn captured() -> Vec<String> {
    vec!["public.orders".to_owned(), "public.items".to_owned()]
}

fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
    parse_client(text, MAX, &captured())
}

fn globs(list: &[&str]) -> Vec<TopicGlob> {
    list.iter()
        .map(|g| TopicGlob::parse(g).expect("valid glob"))
        .collect()
}

fn filter(v: Value) -> Filter {
    Filter::parse(&v).expect("valid filter")
}

fn filter_error(v: Value) -> String {
    Filter::parse(&v).expect_err("invalid filter").to_string()
}

fn subscribe(
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
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn valid_messages_of_every_type() {
    let paid = json!({"field": "status", "op": "eq", "value": "paid"});
    let cases: Vec<(String, ClientMessage)> = vec![
        (
            r#"{"type":"auth","token":"sk_live_abc"}"#.into(),
            ClientMessage::Auth {
                token: "sk_live_abc".into(),
            },
        ),
        (r#"{"type":"ping"}"#.into(), ClientMessage::Ping),
        // Members in any order, whitespace anywhere.
        (
            " {\n \"id\" : \"s1\", \"type\" : \"subscribe\" } ".into(),
            subscribe("s1", &[], None, None),
        ),
        (
            r#"{"type":"subscribe","id":"s1","topic":"tables/**"}"#.into(),
            subscribe("s1", &["tables/**"], None, None),
        ),
        (
            r#"{"type":"subscribe","id":"s1","topics":["custom/*","tables/public.orders/update"]}"#
                .into(),
            subscribe(
                "s1",
                &["custom/*", "tables/public.orders/update"],
                None,
                None,
            ),
        ),
        // Every topic source at once, in the order topic, topics,
        // table, collection (whatever the members' order).
        (
            r#"{"collection":["shop.orders","shop.carts"],"table":"public.orders","topics":["a/*"],"topic":"b","type":"subscribe","id":"s2"}"#
                .into(),
            subscribe(
                "s2",
                &[
                    "b",
                    "a/*",
                    "tables/public.orders/*",
                    "collections/shop.orders/*",
                    "collections/shop.carts/*",
                ],
                None,
                None,
            ),
        ),
        (
            r#"{"type":"subscribe","id":"s3","table":["public.orders","public.items"],"collection":"shop.orders"}"#
                .into(),
            subscribe(
                "s3",
                &[
                    "tables/public.orders/*",
                    "tables/public.items/*",
                    "collections/shop.orders/*",
                ],
                None,
                None,
            ),
        ),
        (
            format!(r#"{{"type":"subscribe","id":"f","filter":{paid},"from":0}}"#),
            subscribe("f", &[], Some(filter(paid.clone())), Some(0)),
        ),
        (
            r#"{"type":"subscribe","id":"f","from":9223372036854775807}"#.into(),
            subscribe("f", &[], None, Some(i64::MAX)),
        ),
        // Optional members set to null are absent.
        (
            r#"{"type":"subscribe","id":"n","topic":null,"topics":null,"table":null,"collection":null,"filter":null,"from":null}"#
                .into(),
            subscribe("n", &[], None, None),
        ),
        // Ids: any string of 1 to 64 bytes.
        (
            format!(r#"{{"type":"subscribe","id":"{}"}}"#, "é".repeat(32)),
            subscribe(&"é".repeat(32), &[], None, None),
        ),
        (
            r#"{"type":"subscribe","id":"a \"quoted\"\n id"}"#.into(),
            subscribe("a \"quoted\"\n id", &[], None, None),
        ),
        (
            r#"{"type":"unsubscribe","id":"s1"}"#.into(),
            ClientMessage::Unsubscribe { id: "s1".into() },
        ),
        (
            r#"{"type":"publish","event":"order.shipped","data":{"id":42,"total":"150.00"}}"#
                .into(),
            ClientMessage::Publish {
                event: "order.shipped".into(),
                data: object(json!({"id": 42, "total": "150.00"})),
                subject: None,
            },
        ),
        (
            r#"{"type":"publish","event":"Order-Shipped_2","data":{},"subject":"order/42"}"#
                .into(),
            ClientMessage::Publish {
                event: "Order-Shipped_2".into(),
                data: Map::new(),
                subject: Some("order/42".into()),
            },
        ),
        // A forged tenant is accepted and dropped: the tenant comes
        // from the credential.
        (
            r#"{"type":"publish","tenant":"someone-else","event":"x","data":{"tenant":"kept in data"},"subject":null}"#
                .into(),
            ClientMessage::Publish {
                event: "x".into(),
                data: object(json!({"tenant": "kept in data"})),
                subject: None,
            },
        ),
        (
            format!(
                r#"{{"type":"publish","event":"{}","data":{{}},"subject":"{}"}}"#,
                "e".repeat(MAX_CUSTOM_NAME),
                "s".repeat(MAX_SUBJECT_BYTES)
            ),
            ClientMessage::Publish {
                event: "e".repeat(MAX_CUSTOM_NAME),
                data: Map::new(),
                subject: Some("s".repeat(MAX_SUBJECT_BYTES)),
            },
        ),
    ];
    for (text, want) in cases {
        let got = parse(&text);
        assert_eq!(got.as_ref(), Ok(&want), "{text}");
        assert_eq!(want.type_name(), json_type(&text), "type_name of {text}");
    }
}

fn json_type(text: &str) -> String {
    let v: Value = serde_json::from_str(text).expect("json");
    v["type"].as_str().expect("type").to_owned()
}

#[test]
fn publish_data_keeps_numbers_exactly() {
    let Ok(ClientMessage::Publish { data, .. }) = parse(
        r#"{"type":"publish","event":"x","data":{"big":12345678901234567890.000000000000000001,"f":1.50}}"#,
    ) else {
        panic!("valid publish");
    };
    assert_eq!(
        Value::Object(data).to_string(),
        r#"{"big":12345678901234567890.000000000000000001,"f":1.50}"#
    );
}

#[test]
fn size_limit_is_inclusive() {
    let ping = r#"{"type":"ping"}"#;
    assert_eq!(parse_client(ping, ping.len(), &[]), Ok(ClientMessage::Ping));
    assert_eq!(
        parse_client(ping, ping.len() - 1, &[]),
        Err(ProtocolError::new(
            code::MESSAGE_TOO_LARGE,
            "message is 15 bytes; the limit is 14 bytes"
        ))
    );
}

/// (message, code, id, error message): every error code parsing can
/// return.
fn error_cases() -> Vec<(String, &'static str, Option<&'static str>, String)> {
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
            "missing member \"type\"; expected one of auth, subscribe, unsubscribe, publish, ping"
                .into(),
        ),
        (
            r#"{"type":["ping"]}"#.into(),
            code::INVALID_MESSAGE,
            None,
            "type: expected a string (one of auth, subscribe, unsubscribe, publish, ping), found an array"
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
            "missing member \"type\"; expected one of auth, subscribe, unsubscribe, publish, ping"
                .into(),
        ),
        (
            r#"{"type":"nope","id":"u1"}"#.into(),
            code::UNKNOWN_TYPE,
            Some("u1"),
            "unknown message type \"nope\"; expected one of auth, subscribe, unsubscribe, publish, ping"
                .into(),
        ),
        (
            r#"{"type":7,"id":"t1"}"#.into(),
            code::INVALID_MESSAGE,
            Some("t1"),
            "type: expected a string (one of auth, subscribe, unsubscribe, publish, ping), found a number"
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
            "unknown message type \"subscribe_all\"; expected one of auth, subscribe, unsubscribe, publish, ping"
                .into(),
        ),
        (
            r#"{"type":"PING"}"#.into(),
            code::UNKNOWN_TYPE,
            None,
            "unknown message type \"PING\"; expected one of auth, subscribe, unsubscribe, publish, ping"
                .into(),
        ),
        (
            format!(r#"{{"type":"{long}"}}"#),
            code::UNKNOWN_TYPE,
            None,
            format!(
                "unknown message type \"{}\"… (70 bytes); expected one of auth, subscribe, unsubscribe, publish, ping",
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
            "unknown member \"topicz\" in a subscribe message; accepted: type, id, topic, topics, table, collection, filter, from"
                .into(),
        ),
        (
            r#"{"type":"subscribe","id":"s1","tenant":"other"}"#.into(),
            code::INVALID_MESSAGE,
            Some("s1"),
            "unknown member \"tenant\" in a subscribe message; accepted: type, id, topic, topics, table, collection, filter, from"
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

#[test]
fn invalid_messages_get_precise_errors() {
    for (text, code, id, message) in error_cases() {
        let want = ProtocolError {
            id: id.map(str::to_owned),
            code,
            message,
        };
        assert_eq!(parse(&text), Err(want), "{text}");
    }
}

#[test]
fn unknown_table_with_nothing_captured() {
    assert_eq!(
        parse_client(
            r#"{"type":"subscribe","id":"s1","table":"public.orders"}"#,
            MAX,
            &[]
        ),
        Err(ProtocolError::new(
            code::UNKNOWN_TABLE,
            "table: unknown table \"public.orders\"; no tables are captured"
        )
        .with_id("s1"))
    );
}

#[test]
fn before_auth_only_auth_and_ping_are_parsed() {
    let not_auth = |id: Option<&str>, ty: &str| ProtocolError {
        id: id.map(str::to_owned),
        code: code::NOT_AUTHENTICATED,
        message: format!(
            "authenticate first: send {{\"type\":\"auth\",\"token\":\"…\"}} before \"{ty}\""
        ),
    };
    let cases: Vec<(&str, Result<ClientMessage, ProtocolError>)> = vec![
        (
            r#"{"type":"auth","token":"k"}"#,
            Ok(ClientMessage::Auth { token: "k".into() }),
        ),
        (r#"{"type":"ping"}"#, Ok(ClientMessage::Ping)),
        // Nothing else is looked into: no captured tables are revealed.
        (
            r#"{"type":"subscribe","id":"s1","table":"public.nope"}"#,
            Err(not_auth(Some("s1"), "subscribe")),
        ),
        (
            r#"{"type":"subscribe","id":"","bogus":1}"#,
            Err(not_auth(Some(""), "subscribe")),
        ),
        (
            r#"{"type":"publish","id":"p1","event":"x","data":{}}"#,
            Err(not_auth(Some("p1"), "publish")),
        ),
        // Errors before the type is known carry the id too.
        (
            r#"{"id":"m1"}"#,
            Err(ProtocolError::new(
                code::INVALID_MESSAGE,
                "missing member \"type\"; expected one of auth, subscribe, unsubscribe, publish, ping",
            )
            .with_id("m1")),
        ),
        (
            r#"{"type":"nope","id":"u1"}"#,
            Err(ProtocolError::new(
                code::UNKNOWN_TYPE,
                "unknown message type \"nope\"; expected one of auth, subscribe, unsubscribe, publish, ping",
            )
            .with_id("u1")),
        ),
        (
            r#"{"type":"ping","id":"p2"}"#,
            Err(ProtocolError::new(
                code::INVALID_MESSAGE,
                "unknown member \"id\" in a ping message; it has no member besides \"type\"",
            )
            .with_id("p2")),
        ),
        (
            r#"{"type":"unsubscribe","id":"s1"}"#,
            Err(not_auth(Some("s1"), "unsubscribe")),
        ),
        (
            r#"{"type":"publish","event":"x","data":{}}"#,
            Err(not_auth(None, "publish")),
        ),
        // Frame-level errors and auth's own errors come first.
        (
            r#"{"type":"auth","token":""}"#,
            Err(ProtocolError::new(
                code::INVALID_MESSAGE,
                "token: expected a non-empty string (an API key or a JWT), found an empty string",
            )),
        ),
        (
            r#"{"type":"ping","x":1}"#,
            Err(ProtocolError::new(
                code::INVALID_MESSAGE,
                "unknown member \"x\" in a ping message; it has no member besides \"type\"",
            )),
        ),
        (
            r#"{"type":"hello"}"#,
            Err(ProtocolError::new(
                code::UNKNOWN_TYPE,
                "unknown message type \"hello\"; expected one of auth, subscribe, unsubscribe, publish, ping",
            )),
        ),
        (
            "not json",
            Err(ProtocolError::new(
                code::INVALID_JSON,
                "message is not valid JSON: expected ident at line 1 column 2",
            )),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(parse_client_before_auth(text, MAX), want, "{text}");
    }
    assert_eq!(
        parse_client_before_auth(r#"{"type":"ping"}"#, 10),
        Err(ProtocolError::new(
            code::MESSAGE_TOO_LARGE,
            "message is 15 bytes; the limit is 10 bytes"
        ))
    );
}

/// (error, code, id, message): the errors the session builds.
fn session_errors() -> Vec<(
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
    ]
}

#[test]
fn session_error_constructors() {
    for (err, code, id, message) in session_errors() {
        assert_eq!(err.code, code, "{err}");
        assert_eq!(err.id.as_deref(), id, "{err}");
        assert_eq!(err.message, message, "{err}");
        assert_eq!(err.to_string(), format!("{code}: {message}"));
    }
}

#[test]
fn every_error_code_is_documented_and_produced() {
    let documented: BTreeSet<&str> = ERROR_CODES.iter().map(|(c, _)| *c).collect();
    assert_eq!(documented.len(), ERROR_CODES.len(), "codes are unique");
    for (c, meaning) in ERROR_CODES {
        assert!(
            !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{c}"
        );
        assert!(!meaning.is_empty(), "{c}");
    }
    let mut produced: BTreeSet<&str> = error_cases().iter().map(|c| c.1).collect();
    produced.insert(code::NOT_AUTHENTICATED);
    produced.extend(session_errors().iter().map(|c| c.1));
    assert_eq!(produced, documented);
}

#[test]
fn close_codes_are_documented() {
    let want: &[(u16, &str)] = &[
        (1000, "normal"),
        (1001, "server_shutting_down"),
        (1009, "message_too_big"),
        (1011, "internal_error"),
        (4001, "auth_timeout"),
        (4003, "credential_revoked"),
    ];
    let got: Vec<(u16, &str)> = CLOSE_CODES.iter().map(|(c, r, _)| (*c, *r)).collect();
    assert_eq!(got, want);
    for (c, reason, meaning) in CLOSE_CODES {
        // A close frame's reason is at most 123 bytes.
        assert!(reason.len() <= 123 && !meaning.is_empty(), "{c}");
    }
    assert_eq!(
        [
            CLOSE_NORMAL,
            CLOSE_GOING_AWAY,
            CLOSE_MESSAGE_TOO_BIG,
            CLOSE_INTERNAL_ERROR,
            CLOSE_AUTH_TIMEOUT,
            CLOSE_CREDENTIAL_REVOKED
        ],
        [1000, 1001, 1009, 1011, 4001, 4003]
    );
}

#[test]
fn server_frames() {
    let acme = TenantId::new("acme \"corp\"").expect("valid tenant");
    let cases: Vec<(String, &str)> = vec![
        (
            auth_ok_frame(&acme, Role::Service),
            r#"{"type":"auth_ok","tenant":"acme \"corp\"","role":"service"}"#,
        ),
        (subscribed_frame("s1"), r#"{"type":"subscribed","id":"s1"}"#),
        (
            unsubscribed_frame("a\\b"),
            r#"{"type":"unsubscribed","id":"a\\b"}"#,
        ),
        (published_frame(42), r#"{"type":"published","seq":42}"#),
        (pong_frame().to_owned(), r#"{"type":"pong"}"#),
        (
            error_frame(&ProtocolError::unknown_id("s1")),
            r#"{"type":"error","id":"s1","code":"unknown_id","message":"no active subscription has id \"s1\""}"#,
        ),
        (
            error_frame(&ProtocolError::new(code::INVALID_JSON, "bad\nline")),
            r#"{"type":"error","code":"invalid_json","message":"bad\nline"}"#,
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
        let v: Value = serde_json::from_str(&got).expect("valid JSON");
        assert!(v["type"].is_string(), "{got}");
    }
}

#[test]
fn event_frame_escapes_the_sub_id() {
    let cases: &[(&str, &str)] = &[
        ("s1", r#""s1""#),
        ("a\"b", r#""a\"b""#),
        ("back\\slash", r#""back\\slash""#),
        ("line\nfeed\r\t", r#""line\nfeed\r\t""#),
        ("\u{8}\u{c}\u{0}\u{1f}", r#""\b\f\u0000\u001f""#),
        ("</script>", r#""</script>""#),
        ("é ☃ 😀", "\"é ☃ 😀\""),
        ("\u{7f}\u{2028}", "\"\u{7f}\u{2028}\""),
    ];
    let envelope = br#"{"seq":1}"#;
    for (sub, escaped) in cases {
        let frame = event_frame(sub, envelope);
        let want = format!(r#"{{"type":"event","sub":{escaped},"event":{{"seq":1}}}}"#);
        assert_eq!(frame, want.as_bytes(), "{sub:?}");
        let v: Value = serde_json::from_slice(&frame).expect("valid JSON");
        assert_eq!(v["sub"], *sub);
    }
}

#[test]
fn event_frame_embeds_the_envelope_verbatim() {
    // Spacing, member order and number spellings that any
    // re-serialization would change.
    let envelopes: &[&str] = &[
        r#"{"specversion":"1.0","id":"7","seq":7,"type":"row.updated","data":{"total":150.00,"n":1e2}}"#,
        "{ \"seq\" : 8 ,\n \"data\" : { \"z\":1, \"a\":\"\\u00e9\" } }",
        r#"{"seq":9,"data":{"s":"\"}{\""}}"#,
    ];
    for envelope in envelopes {
        let frame = event_frame("sub-1", envelope.as_bytes());
        let prefix = br#"{"type":"event","sub":"sub-1","event":"#;
        assert!(frame.starts_with(prefix), "{envelope}");
        assert_eq!(&frame[prefix.len()..frame.len() - 1], envelope.as_bytes());
        assert_eq!(frame.last(), Some(&b'}'));
        let v: Value = serde_json::from_slice(&frame).expect("valid JSON");
        let inner: Value = serde_json::from_str(envelope).expect("valid JSON");
        assert_eq!(v["event"], inner);
    }
}

#[test]
fn cloudevents_frame_is_the_bare_envelope() {
    let envelope = Bytes::from_static(br#"{"specversion":"1.0","id":"1","seq":1}"#);
    let frame = cloudevents_event_frame(&envelope);
    assert_eq!(frame, envelope);
    assert_eq!(frame.as_ptr(), envelope.as_ptr(), "shared, not copied");
    assert_eq!(CLOUDEVENTS_SUBPROTOCOL, "cloudevents.json");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn sub_ids_round_trip(sub in "\\PC{0,20}|[\\x00-\\x7f]{0,20}") {
        let frame = event_frame(&sub, b"{}");
        let v: Value = serde_json::from_slice(&frame).expect("valid JSON");
        prop_assert_eq!(v["sub"].as_str(), Some(sub.as_str()));
        let v: Value = serde_json::from_str(&subscribed_frame(&sub)).expect("valid JSON");
        prop_assert_eq!(v["id"].as_str(), Some(sub.as_str()));
    }

    #[test]
    fn parsing_never_panics(text in ".{0,200}") {
        let _ = parse_client(&text, 100, &captured());
        let _ = parse_client_before_auth(&text, 100);
    }

    #[test]
    fn parsing_json_like_text_never_panics(
        parts in prop::collection::vec(prop::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\"type\"", "\"subscribe\"", "\"publish\"",
            "\"id\"", "\"s\"", "\"topics\"", "\"table\"", "\"from\"", "\"filter\"",
            "\"event\"", "\"data\"", "-1", "1.5", "null", "true", "\"public.orders\"",
        ]), 0..30),
    ) {
        let text = parts.concat();
        let _ = parse_client(&text, 4096, &captured());
        let _ = parse_client_before_auth(&text, 4096);
    }
}
