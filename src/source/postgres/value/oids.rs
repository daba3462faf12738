//! Built-in type OIDs → [`PgType`]: the scalars and their array types
//! (`pg_type.dat`); everything else is left to the catalog.

use super::PgType;

/// The type for a built-in type OID: scalars and their array types.
///
/// `None` for OIDs that are not built in (user types start at 16384) or not
/// known here; the caller resolves those from the catalog (enum → Text,
/// domain → its base type, array of X → `Array { elem: X }`).
pub fn builtin_type(oid: u32) -> Option<PgType> {
    if let Some(t) = builtin_scalar(oid) {
        return Some(t);
    }
    let elem = builtin_array_elem(oid)?;
    Some(PgType::Array {
        elem: Box::new(builtin_scalar(elem)?),
        // box is the only built-in type whose typdelim is not ','.
        delim: if elem == 603 { b';' } else { b',' },
    })
}

fn builtin_scalar(oid: u32) -> Option<PgType> {
    Some(match oid {
        16 => PgType::Bool,
        17 => PgType::Bytea,
        // int8, int2, int4, oid, xid, cid, xid8
        20 | 21 | 23 | 26 | 28 | 29 | 5069 => PgType::Int,
        700 | 701 => PgType::Float,
        1700 => PgType::Numeric,
        790 => PgType::Money,
        // char, name, text, xml, unknown, inet, cidr, macaddr, macaddr8,
        // bpchar, varchar, bit, varbit, refcursor, uuid, pg_lsn, tsvector,
        // tsquery, jsonpath, cstring, and the reg* types (printed as names).
        18 | 19 | 25 | 142 | 705 | 869 | 650 | 829 | 774 | 1042 | 1043 | 1560 | 1562 | 1790
        | 2950 | 3220 | 3614 | 3615 | 4072 | 2275 | 24 | 2202 | 2203 | 2204 | 2205 | 2206
        | 4191 | 4096 | 4089 | 3734 | 3769 => PgType::Text,
        114 => PgType::Json,
        3802 => PgType::Jsonb,
        1082 => PgType::Date,
        1114 => PgType::Timestamp,
        1184 => PgType::Timestamptz,
        // time, timetz, interval; int2vector and oidvector (space-separated,
        // not array literals); tid; catalog row types; pg_node_tree and the
        // statistics types; geometry; aclitem; gtsvector; snapshots; ranges
        // and multiranges; record.
        1083 | 1266 | 1186 | 22 | 30 | 27 | 71 | 75 | 81 | 83 | 194 | 3361 | 3402 | 5017 | 600
        | 601 | 602 | 603 | 604 | 628 | 718 | 1033 | 3642 | 2970 | 5038 | 3904 | 3906 | 3908
        | 3910 | 3912 | 3926 | 4451 | 4532 | 4533 | 4534 | 4535 | 4536 | 2249 => PgType::Other,
        _ => return None,
    })
}

/// The element type OID of a built-in array type OID.
fn builtin_array_elem(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1016 => 20,
        1005 => 21,
        1006 => 22,
        1007 => 23,
        1008 => 24,
        1009 => 25,
        1028 => 26,
        1010 => 27,
        1011 => 28,
        1012 => 29,
        1013 => 30,
        210 => 71,
        270 => 75,
        272 => 81,
        273 => 83,
        199 => 114,
        143 => 142,
        271 => 5069,
        1017 => 600,
        1018 => 601,
        1019 => 602,
        1020 => 603,
        1027 => 604,
        629 => 628,
        1021 => 700,
        1022 => 701,
        719 => 718,
        791 => 790,
        1040 => 829,
        1041 => 869,
        651 => 650,
        775 => 774,
        1034 => 1033,
        1014 => 1042,
        1015 => 1043,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        1231 => 1700,
        2201 => 1790,
        2207 => 2202,
        2208 => 2203,
        2209 => 2204,
        2210 => 2205,
        4192 => 4191,
        2211 => 2206,
        4097 => 4096,
        4090 => 4089,
        2951 => 2950,
        3221 => 3220,
        3643 => 3614,
        3644 => 3642,
        3645 => 3615,
        3735 => 3734,
        3770 => 3769,
        3807 => 3802,
        4073 => 4072,
        2949 => 2970,
        5039 => 5038,
        3905 => 3904,
        3907 => 3906,
        3909 => 3908,
        3911 => 3910,
        3913 => 3912,
        3927 => 3926,
        6150 => 4451,
        6151 => 4532,
        6152 => 4533,
        6153 => 4534,
        6155 => 4535,
        6157 => 4536,
        2287 => 2249,
        1263 => 2275,
        _ => return None,
    })
}

#[cfg(test)]
#[path = "oids_tests.rs"]
mod tests;
