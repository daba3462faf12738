use super::*;
use crate::source::postgres::value::test_support::*;

#[test]
fn bytea_is_base64() {
    let ty = PgType::Bytea;
    assert_eq!(ok(&ty, "\\x"), json!(""));
    assert_eq!(ok(&ty, "\\x0a0b"), json!("Cgs="));
    assert_eq!(ok(&ty, "\\x00"), json!("AA=="));
    assert_eq!(ok(&ty, "\\xDEADbeef"), json!("3q2+7w=="));
    let all: Vec<u8> = (0..=255).collect();
    let hex: String = all.iter().map(|b| format!("{b:02x}")).collect();
    let want = base64::engine::general_purpose::STANDARD.encode(&all);
    assert_eq!(ok(&ty, &format!("\\x{hex}")), json!(want));
    for t in [
        "", "\\x0", "\\xzz", "\\x0g", "abc", "\\001", "\\X00", "\\x 00",
    ] {
        bad(&ty, t);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn bytea_matches_base64(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let want = base64::engine::general_purpose::STANDARD.encode(&bytes);
        prop_assert_eq!(to_json(&PgType::Bytea, format!("\\x{hex}").as_bytes()), Ok(json!(want)));
    }
}
