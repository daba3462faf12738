use super::*;
use crate::deliver::ws_protocol::test_support::*;

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
