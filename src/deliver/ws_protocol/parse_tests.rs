use super::*;
use crate::deliver::ws_protocol::test_support::*;
use crate::source::postgres::normalize::MAX_CUSTOM_NAME;

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
                "missing member \"type\"; expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack",
            )
            .with_id("m1")),
        ),
        (
            r#"{"type":"nope","id":"u1"}"#,
            Err(ProtocolError::new(
                code::UNKNOWN_TYPE,
                "unknown message type \"nope\"; expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack",
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
                "unknown message type \"hello\"; expected one of auth, subscribe, unsubscribe, publish, ping, ack, nack",
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

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
