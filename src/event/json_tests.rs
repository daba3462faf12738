use super::*;

#[test]
fn json_strings_are_escaped_as_serde_json_escapes_them() {
    let mut cases: Vec<String> = vec![
        String::new(),
        "plain ascii, longer than one word".into(),
        "\"quoted\" and \\ back\\slash".into(),
        "tab\tnew\nline\rcr\u{8}\u{c}\u{1}\u{1f}\u{7f} end".into(),
        "ünïcödé — 日本語 \u{10ffff}\"".into(),
    ];
    // Every byte position within and across 8-byte words.
    for pos in 0..20 {
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', ' ', '~', 'é'] {
            let mut s: String = "abcdefghijklmnopqrstu".chars().take(pos).collect();
            s.push(special);
            s.push_str("xyz0123456789");
            cases.push(s);
        }
    }
    for s in cases {
        let mut out = Vec::new();
        write_json_string(&s, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&s).unwrap(),
            "{s:?}"
        );
    }
}

proptest::proptest! {
    #[test]
    fn any_string_is_escaped_as_serde_json_escapes_it(s in "\\PC*|[\\x00-\\x7f]*") {
        let mut out = Vec::new();
        write_json_string(&s, &mut out);
        proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
    }
}
