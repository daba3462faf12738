use crate::deliver::ws_protocol::test_support::*;

#[test]
fn session_error_constructors() {
    for (err, code, id, message) in session_errors() {
        assert_eq!(err.code, code, "{err}");
        assert_eq!(err.id.as_deref(), id, "{err}");
        assert_eq!(err.message, message, "{err}");
        assert_eq!(err.to_string(), format!("{code}: {message}"));
    }
}
