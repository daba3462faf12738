use super::*;
use crate::source::postgres::value::test_support::*;

#[test]
fn builtin_types() {
    use PgType::*;
    let cases = [
        (16, Bool),
        (17, Bytea),
        (20, Int),
        (21, Int),
        (23, Int),
        (26, Int),
        (28, Int),
        (5069, Int),
        (700, Float),
        (701, Float),
        (1700, Numeric),
        (790, Money),
        (25, Text),
        (1043, Text),
        (1042, Text),
        (18, Text),
        (19, Text),
        (2950, Text),
        (869, Text),
        (650, Text),
        (829, Text),
        (774, Text),
        (142, Text),
        (114, Json),
        (3802, Jsonb),
        (1082, Date),
        (1114, Timestamp),
        (1184, Timestamptz),
        (1083, Other),
        (1266, Other),
        (1186, Other),
        (22, Other),
        (30, Other),
        (603, Other),
        (3904, Other),
    ];
    for (oid, want) in cases {
        assert_eq!(builtin_type(oid), Some(want.clone()), "oid {oid}");
    }
    let arrays = [
        (1000, Bool),
        (1001, Bytea),
        (1005, Int),
        (1007, Int),
        (1016, Int),
        (1028, Int),
        (1009, Text),
        (1015, Text),
        (1014, Text),
        (2951, Text),
        (1041, Text),
        (199, Json),
        (3807, Jsonb),
        (1021, Float),
        (1022, Float),
        (1231, Numeric),
        (791, Money),
        (1182, Date),
        (1115, Timestamp),
        (1185, Timestamptz),
        (1183, Other),
        (1187, Other),
        (1006, Other),
    ];
    for (oid, elem) in arrays {
        assert_eq!(builtin_type(oid), Some(arr(elem)), "oid {oid}");
    }
    assert_eq!(
        builtin_type(1020),
        Some(PgType::Array {
            elem: Box::new(Other),
            delim: b';'
        })
    );
    for oid in [0, 1, 16384, 16385, 99999, u32::MAX] {
        assert_eq!(builtin_type(oid), None, "oid {oid}");
    }
}
