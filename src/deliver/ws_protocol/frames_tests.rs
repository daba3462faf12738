use super::*;
use crate::deliver::ws_protocol::test_support::*;

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
}
