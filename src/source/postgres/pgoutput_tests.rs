use super::*;
use proptest::prelude::*;

/// Every captured fixture, by scenario name.
const FIXTURES: &[(&str, &str)] = &[
    (
        "insert",
        include_str!("../../../tests/fixtures/pgoutput/insert.txt"),
    ),
    (
        "update_default",
        include_str!("../../../tests/fixtures/pgoutput/update_default.txt"),
    ),
    (
        "update_key",
        include_str!("../../../tests/fixtures/pgoutput/update_key.txt"),
    ),
    (
        "update_full",
        include_str!("../../../tests/fixtures/pgoutput/update_full.txt"),
    ),
    (
        "update_toast",
        include_str!("../../../tests/fixtures/pgoutput/update_toast.txt"),
    ),
    (
        "delete_default",
        include_str!("../../../tests/fixtures/pgoutput/delete_default.txt"),
    ),
    (
        "delete_full",
        include_str!("../../../tests/fixtures/pgoutput/delete_full.txt"),
    ),
    (
        "truncate",
        include_str!("../../../tests/fixtures/pgoutput/truncate.txt"),
    ),
    (
        "type",
        include_str!("../../../tests/fixtures/pgoutput/type.txt"),
    ),
    (
        "add_column",
        include_str!("../../../tests/fixtures/pgoutput/add_column.txt"),
    ),
    (
        "message_transactional",
        include_str!("../../../tests/fixtures/pgoutput/message_transactional.txt"),
    ),
    (
        "message_nontransactional",
        include_str!("../../../tests/fixtures/pgoutput/message_nontransactional.txt"),
    ),
    (
        "origin",
        include_str!("../../../tests/fixtures/pgoutput/origin.txt"),
    ),
    (
        "binary",
        include_str!("../../../tests/fixtures/pgoutput/binary.txt"),
    ),
];

// Built-in type OIDs (pg_type.dat); stable across versions.
const BYTEA: u32 = 17;
const INT8: u32 = 20;
const INT4: u32 = 23;
const TEXT: u32 = 25;

fn unhex(line: &str) -> Vec<u8> {
    assert!(line.len() % 2 == 0, "odd hex line {line:?}");
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
        .collect()
}

fn raw(name: &str) -> Vec<Bytes> {
    let (_, text) = FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Bytes::from(unhex(l)))
        .collect()
}

fn fixture(name: &str) -> Vec<Message> {
    raw(name)
        .iter()
        .map(|b| decode(b).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

fn all_raw() -> Vec<Bytes> {
    FIXTURES.iter().flat_map(|(n, _)| raw(n)).collect()
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// Kinds in order, e.g. "B R I C", to pin what the server emitted.
fn shape(msgs: &[Message]) -> String {
    msgs.iter()
        .map(|m| match m {
            Message::Begin(_) => "B",
            Message::Commit(_) => "C",
            Message::Origin(_) => "O",
            Message::Relation(_) => "R",
            Message::Type(_) => "Y",
            Message::Insert(_) => "I",
            Message::Update(_) => "U",
            Message::Delete(_) => "D",
            Message::Truncate(_) => "T",
            Message::Message(_) => "M",
            Message::StreamStart(_) => "S",
            Message::StreamStop => "E",
            Message::StreamCommit(_) => "c",
            Message::StreamAbort(_) => "A",
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn relations(msgs: &[Message]) -> Vec<&Relation> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Relation(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn col(name: &str, type_oid: u32, is_key: bool) -> Column {
    Column {
        is_key,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    }
}

#[test]
fn fixtures_all_decode_and_pair_begin_with_commit() {
    for (name, _) in FIXTURES {
        let msgs = fixture(name);
        assert!(!msgs.is_empty(), "{name} is empty");
        let mut open: Option<&Begin> = None;
        for m in &msgs {
            match m {
                Message::Begin(b) => {
                    assert!(open.is_none(), "{name}: nested begin");
                    open = Some(b);
                }
                Message::Commit(c) => {
                    let b = open.take().expect("commit without begin");
                    assert_eq!(b.final_lsn, c.commit_lsn, "{name}");
                    assert_eq!(b.commit_time, c.commit_time, "{name}");
                    assert!(c.end_lsn > c.commit_lsn, "{name}");
                    assert_eq!(c.flags, 0, "{name}");
                }
                Message::Message(LogicalMessage {
                    transactional: false,
                    ..
                }) => {}
                _ => assert!(open.is_some(), "{name}: {m:?} outside a transaction"),
            }
        }
        assert!(open.is_none(), "{name}: unterminated transaction");
    }
}

#[test]
fn insert_fixture_has_relation_values_and_null() {
    let msgs = fixture("insert");
    assert_eq!(shape(&msgs), "B R I I C");
    let Message::Relation(rel) = &msgs[1] else {
        panic!()
    };
    assert_eq!(rel.namespace, "public");
    assert_eq!(rel.name, "users");
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        rel.columns,
        vec![
            col("id", INT4, true),
            col("name", TEXT, false),
            col("note", TEXT, false)
        ]
    );
    let Message::Insert(first) = &msgs[2] else {
        panic!()
    };
    assert_eq!(first.relation_id, rel.id);
    assert_eq!(
        first.new,
        Tuple(vec![text("1"), text("alice"), text("first user")])
    );
    let Message::Insert(second) = &msgs[3] else {
        panic!()
    };
    assert_eq!(second.new, Tuple(vec![text("2"), text("bob"), Datum::Null]));
    let (Message::Begin(b), Message::Commit(c)) = (&msgs[0], &msgs[4]) else {
        panic!()
    };
    assert_eq!(b.final_lsn, c.commit_lsn);
    assert!(b.xid > 0);
}

#[test]
fn column_values_are_slices_of_the_input() {
    let buf = raw("insert")[2].clone();
    let Message::Insert(ins) = decode(&buf).unwrap() else {
        panic!()
    };
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    for d in &ins.new.0 {
        let Datum::Text(b) = d else { panic!() };
        assert!(range.contains(&(b.as_ptr() as usize)), "copied, not sliced");
    }
}

#[test]
fn update_default_identity_has_no_old_tuple() {
    let msgs = fixture("update_default");
    assert_eq!(shape(&msgs), "B R U C");
    let Message::Update(u) = &msgs[2] else {
        panic!()
    };
    assert_eq!(u.relation_id, relations(&msgs)[0].id);
    assert_eq!(u.old, None);
    assert_eq!(
        u.new,
        Tuple(vec![text("1"), text("alicia"), text("first user")])
    );
}

#[test]
fn update_changing_key_sends_k_tuple_with_only_key_values() {
    let msgs = fixture("update_key");
    assert_eq!(shape(&msgs), "B R U C");
    let Message::Update(u) = &msgs[2] else {
        panic!()
    };
    // Non-key columns of a K tuple are 'n' even though they were not NULL.
    assert_eq!(
        u.old,
        Some(OldTuple::Key(Tuple(vec![
            text("1"),
            Datum::Null,
            Datum::Null
        ])))
    );
    assert_eq!(
        u.new,
        Tuple(vec![text("10"), text("alicia"), text("first user")])
    );
}

#[test]
fn update_under_replica_identity_full_sends_o_tuple() {
    let msgs = fixture("update_full");
    // The setup insert is its own transaction; the relation is not resent
    // for the second one within the same decoding session.
    assert_eq!(shape(&msgs), "B R I C B U C");
    let rel = relations(&msgs)[0];
    assert_eq!(rel.name, "accounts");
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    // FULL marks every column as part of the key.
    assert_eq!(
        rel.columns,
        vec![
            col("id", INT4, true),
            col("owner", TEXT, true),
            col("balance", INT8, true)
        ]
    );
    let Message::Update(u) = &msgs[5] else {
        panic!()
    };
    assert_eq!(u.relation_id, rel.id);
    assert_eq!(
        u.old,
        Some(OldTuple::Full(Tuple(vec![
            text("1"),
            text("carol"),
            text("100")
        ])))
    );
    assert_eq!(u.new, Tuple(vec![text("1"), text("carol"), text("250")]));
}

#[test]
fn update_keeping_toasted_column_sends_unchanged_toast() {
    let msgs = fixture("update_toast");
    assert_eq!(shape(&msgs), "B R U C");
    let rel = relations(&msgs)[0];
    assert_eq!(rel.name, "docs");
    assert_eq!(rel.columns[2], col("body", TEXT, false));
    let Message::Update(u) = &msgs[2] else {
        panic!()
    };
    assert_eq!(u.old, None);
    assert_eq!(
        u.new,
        Tuple(vec![text("1"), text("second"), Datum::UnchangedToast])
    );
}

#[test]
fn delete_default_identity_sends_key_only() {
    let msgs = fixture("delete_default");
    assert_eq!(shape(&msgs), "B R D C");
    let Message::Delete(d) = &msgs[2] else {
        panic!()
    };
    assert_eq!(d.relation_id, relations(&msgs)[0].id);
    assert_eq!(
        d.old,
        OldTuple::Key(Tuple(vec![text("10"), Datum::Null, Datum::Null]))
    );
}

#[test]
fn delete_under_replica_identity_full_sends_whole_row() {
    let msgs = fixture("delete_full");
    assert_eq!(shape(&msgs), "B R D C");
    let Message::Delete(d) = &msgs[2] else {
        panic!()
    };
    assert_eq!(
        d.old,
        OldTuple::Full(Tuple(vec![text("1"), text("carol"), text("250")]))
    );
}

#[test]
fn truncate_two_tables_with_cascade_and_restart_identity() {
    let msgs = fixture("truncate");
    assert_eq!(shape(&msgs), "B R R T C");
    let rels = relations(&msgs);
    assert_eq!(rels[0].name, "orders");
    assert_eq!(rels[1].name, "order_lines");
    let Message::Truncate(t) = &msgs[3] else {
        panic!()
    };
    assert!(t.cascade);
    assert!(t.restart_identity);
    assert_eq!(t.relation_ids, vec![rels[0].id, rels[1].id]);
}

#[test]
fn enum_and_domain_columns_bring_type_messages() {
    let msgs = fixture("type");
    assert_eq!(shape(&msgs), "B Y Y R I C");
    let (Message::Type(mood), Message::Type(posint)) = (&msgs[1], &msgs[2]) else {
        panic!()
    };
    assert_eq!(mood.namespace, "public");
    assert_eq!(mood.name, "mood");
    // A domain is announced under its own OID but with its base type's
    // name, in pg_catalog (sent as the empty namespace).
    assert_eq!(posint.namespace, "");
    assert_eq!(posint.name, "int4");
    let rel = relations(&msgs)[0];
    assert_eq!(rel.name, "moods");
    assert_eq!(
        rel.columns,
        vec![
            col("id", INT4, true),
            col("m", mood.oid, false),
            col("p", posint.oid, false)
        ]
    );
    let Message::Insert(i) = &msgs[4] else {
        panic!()
    };
    assert_eq!(i.new, Tuple(vec![text("1"), text("happy"), text("42")]));
}

#[test]
fn add_column_mid_stream_resends_relation() {
    let msgs = fixture("add_column");
    // The ALTER TABLE transaction itself publishes nothing and is skipped.
    assert_eq!(shape(&msgs), "B R I C B R I C");
    let rels = relations(&msgs);
    assert_eq!(rels[0].id, rels[1].id);
    assert_eq!(rels[0].columns.len(), 3);
    assert_eq!(rels[1].columns.len(), 4);
    assert_eq!(rels[1].columns[3], col("email", TEXT, false));
    let Message::Insert(before) = &msgs[2] else {
        panic!()
    };
    assert_eq!(before.new.0.len(), 3);
    let Message::Insert(after) = &msgs[6] else {
        panic!()
    };
    assert_eq!(
        after.new,
        Tuple(vec![
            text("4"),
            text("erin"),
            text("n"),
            text("erin@example.com")
        ])
    );
}

#[test]
fn transactional_message_inside_its_transaction() {
    let msgs = fixture("message_transactional");
    assert_eq!(shape(&msgs), "B R I M C");
    let Message::Message(m) = &msgs[3] else {
        panic!()
    };
    assert!(m.transactional);
    assert_eq!(m.prefix, "sluice");
    assert_eq!(
        &m.content[..],
        br#"{"tenant":"a","type":"x","data":{}}"#.as_slice()
    );
    let Message::Begin(b) = &msgs[0] else {
        panic!()
    };
    // The message's LSN is the end of its WAL record, here right where
    // the commit record starts.
    assert!(m.lsn <= b.final_lsn);
    assert!(m.lsn > 0);
}

#[test]
fn non_transactional_message_stands_alone() {
    let msgs = fixture("message_nontransactional");
    assert_eq!(shape(&msgs), "M");
    let Message::Message(m) = &msgs[0] else {
        panic!()
    };
    assert!(!m.transactional);
    assert_eq!(m.prefix, "sluice");
    assert_eq!(&m.content[..], b"not in a transaction".as_slice());
}

#[test]
fn origin_follows_begin_and_carries_origin_lsn_and_time() {
    let msgs = fixture("origin");
    assert_eq!(shape(&msgs), "B O R I C");
    let Message::Origin(o) = &msgs[1] else {
        panic!()
    };
    assert_eq!(o.name, "sluice_origin");
    assert_eq!(o.commit_lsn, parse_lsn("0/ABCDEF").unwrap());
    // pg_replication_origin_xact_setup's timestamp replaces the local
    // commit time: 2024-01-02 03:04:05 UTC in µs since 2000-01-01.
    let Message::Begin(b) = &msgs[0] else {
        panic!()
    };
    let days = 8767; // 2000-01-01 .. 2024-01-02
    let want = ((days * 86_400) + 3 * 3600 + 4 * 60 + 5) * 1_000_000_i64;
    assert_eq!(b.commit_time, want);
}

#[test]
fn binary_option_sends_b_datums() {
    let msgs = fixture("binary");
    assert_eq!(shape(&msgs), "B R I C");
    let rel = relations(&msgs)[0];
    assert_eq!(
        rel.columns,
        vec![
            col("id", INT4, true),
            col("n", INT4, false),
            col("b", BYTEA, false)
        ]
    );
    let Message::Insert(i) = &msgs[2] else {
        panic!()
    };
    let bin = |b: &[u8]| Datum::Binary(Bytes::copy_from_slice(b));
    assert_eq!(
        i.new,
        Tuple(vec![
            bin(&1i32.to_be_bytes()),
            bin(&7i32.to_be_bytes()),
            bin(&[0xde, 0xad, 0xbe, 0xef])
        ])
    );
}

#[test]
fn errors_are_precise() {
    let d = |b: &[u8]| decode(&Bytes::copy_from_slice(b));
    assert_eq!(
        d(b""),
        Err(DecodeError::Truncated {
            field: "message tag",
            offset: 0,
            needed: 1,
            available: 0
        })
    );
    assert_eq!(d(b"Z"), Err(DecodeError::UnknownMessageTag { tag: b'Z' }));
    // Two-phase messages come only to a `two_phase` session.
    assert_eq!(d(b"P"), Err(DecodeError::UnknownMessageTag { tag: b'P' }));
    assert_eq!(
        d(b"B\0\0\0\0\0\0\0\x01\0\0"),
        Err(DecodeError::Truncated {
            field: "begin commit time",
            offset: 9,
            needed: 8,
            available: 2
        })
    );
    assert_eq!(
        d(b"O\0\0\0\0\0\0\0\x01abc"),
        Err(DecodeError::UnterminatedString {
            field: "origin name",
            offset: 9
        })
    );
    assert_eq!(
        d(b"O\0\0\0\0\0\0\0\x01\xff\0"),
        Err(DecodeError::InvalidUtf8 {
            field: "origin name",
            offset: 9
        })
    );
    assert_eq!(
        d(b"O\0\0\0\0\0\0\0\x01a\0x"),
        Err(DecodeError::TrailingBytes {
            offset: 11,
            count: 1
        })
    );
    assert_eq!(
        d(b"R\0\0\0\x01ns\0t\0x\0\0"),
        Err(DecodeError::UnknownReplicaIdentity {
            value: b'x',
            offset: 10
        })
    );
    assert_eq!(
        d(b"R\0\0\0\x01ns\0t\0d\xff\xff"),
        Err(DecodeError::NegativeCount {
            field: "relation column count",
            value: -1,
            offset: 11
        })
    );
    assert_eq!(
        d(b"I\0\0\0\x01X\0\0"),
        Err(DecodeError::UnknownTupleKind {
            kind: b'X',
            offset: 5,
            expected: "N"
        })
    );
    assert_eq!(
        d(b"U\0\0\0\x01K\0\0O\0\0"),
        Err(DecodeError::UnknownTupleKind {
            kind: b'O',
            offset: 8,
            expected: "N"
        })
    );
    assert_eq!(
        d(b"D\0\0\0\x01N\0\0"),
        Err(DecodeError::UnknownTupleKind {
            kind: b'N',
            offset: 5,
            expected: "K or O"
        })
    );
    assert_eq!(
        d(b"I\0\0\0\x01N\0\x01x"),
        Err(DecodeError::UnknownDatumKind {
            kind: b'x',
            offset: 8
        })
    );
    assert_eq!(
        d(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xfe"),
        Err(DecodeError::NegativeCount {
            field: "column value length",
            value: -2,
            offset: 9
        })
    );
    assert_eq!(
        d(b"T\x80\0\0\0\x03"),
        Err(DecodeError::NegativeCount {
            field: "truncate relation count",
            value: i32::MIN,
            offset: 1
        })
    );
    // A huge count with nothing behind it: an error, not an allocation.
    assert_eq!(
        d(b"T\x7f\xff\xff\xff\x03\0\0\0\x01"),
        Err(DecodeError::Truncated {
            field: "truncate relation id",
            offset: 10,
            needed: 4,
            available: 0
        })
    );
    assert_eq!(
        d(b"I\0\0\0\x01N\x7f\xff"),
        Err(DecodeError::Truncated {
            field: "column value kind",
            offset: 8,
            needed: 1,
            available: 0
        })
    );
    assert_eq!(
        d(b"M\x01\0\0\0\0\0\0\0\x01p\0\x7f\xff\xff\xffab").unwrap_err(),
        DecodeError::Truncated {
            field: "message content",
            offset: 16,
            needed: i32::MAX as usize,
            available: 2
        }
    );
    let msg = DecodeError::UnknownMessageTag { tag: b'Z' }.to_string();
    assert_eq!(msg, "unknown message tag 0x5a");
}

#[test]
fn handmade_messages_round_out_the_fixtures() {
    // Update under REPLICA IDENTITY NOTHING/INDEX and a Relation with an
    // index identity and a typmod, which the fixtures do not exercise.
    let rel = decode(&Bytes::from_static(
        b"R\0\0\x30\x39\0t\0i\0\x02\x01k\0\0\0\0\x17\xff\xff\xff\xff\0v\0\0\0\x04\x13\0\0\0\x0e",
    ))
    .unwrap();
    assert_eq!(
        rel,
        Message::Relation(Relation {
            id: 12345,
            namespace: String::new(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Index,
            columns: vec![
                col("k", INT4, true),
                Column {
                    is_key: false,
                    name: "v".into(),
                    type_oid: 1043,
                    type_modifier: 14
                }
            ],
        })
    );
    let nothing = decode(&Bytes::from_static(b"R\0\0\0\x01a\0b\0n\0\0")).unwrap();
    let Message::Relation(r) = nothing else {
        panic!()
    };
    assert_eq!(r.replica_identity, ReplicaIdentity::Nothing);
    assert!(r.columns.is_empty());
    let t = decode(&Bytes::from_static(b"T\0\0\0\0\x00")).unwrap();
    assert_eq!(
        t,
        Message::Truncate(Truncate {
            cascade: false,
            restart_identity: false,
            relation_ids: vec![]
        })
    );
}

#[test]
fn lsn_format_and_parse() {
    assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    assert_eq!(format_lsn(0), "0/0");
    assert_eq!(format_lsn(0x0000_0001_0000_000A), "1/A");
    assert_eq!(format_lsn(u64::MAX), "FFFFFFFF/FFFFFFFF");
    assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
    assert_eq!(parse_lsn("16/b374d848"), Some(0x16_B374_D848));
    assert_eq!(parse_lsn("0/0"), Some(0));
    assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
    for bad in [
        "",
        "/",
        "16/",
        "/1",
        "16",
        "1/2/3",
        "+1/2",
        "1/-2",
        " 1/2",
        "1/2 ",
        "g/1",
        "123456789/0",
        "0/123456789",
        "1//2",
    ] {
        assert_eq!(parse_lsn(bad), None, "{bad:?}");
    }
}

#[test]
fn every_truncation_of_every_fixture_is_an_error() {
    for buf in all_raw() {
        for len in 0..buf.len() {
            // A strict prefix of a valid message is never itself valid:
            // every message ends with a field that is then cut.
            assert!(decode(&buf.slice(..len)).is_err(), "{buf:?} cut at {len}");
        }
    }
}

#[test]
fn every_single_byte_mutation_of_every_fixture_is_decoded_without_panic() {
    for buf in all_raw() {
        let mut v = buf.to_vec();
        for i in 0..v.len() {
            let orig = v[i];
            for b in 0..=255u8 {
                v[i] = b;
                let _ = decode(&Bytes::copy_from_slice(&v));
            }
            v[i] = orig;
        }
    }
}

#[test]
fn every_fixture_message_with_trailing_byte_is_rejected() {
    for buf in all_raw() {
        let mut v = buf.to_vec();
        v.push(0);
        assert_eq!(
            decode(&Bytes::from(v)),
            Err(DecodeError::TrailingBytes {
                offset: buf.len(),
                count: 1
            })
        );
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&Bytes::from(v));
    }

    #[test]
    fn random_bytes_after_a_valid_tag_never_panic(
        tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
        v in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut buf = vec![tag];
        buf.extend(v);
        let _ = decode(&Bytes::from(buf));
    }

    #[test]
    fn mutated_and_truncated_fixtures_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let all = all_raw();
        let mut v = pick.get(&all).to_vec();
        for (at, b) in edits {
            let i = at.index(v.len());
            v[i] = b;
        }
        let len = cut.index(v.len() + 1);
        v.truncate(len);
        let _ = decode(&Bytes::from(v));
    }

    #[test]
    fn lsn_round_trips(lsn in any::<u64>()) {
        prop_assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
    }
}

#[test]
fn stream_messages_and_the_xid_inside_a_block() {
    let b = |v: &[u8]| Bytes::copy_from_slice(v);
    assert_eq!(
        decode_with(&b(b"S\0\0\x02\x00\x01"), false).unwrap(),
        (
            None,
            Message::StreamStart(StreamStart {
                xid: 512,
                first_segment: true
            })
        )
    );
    assert_eq!(
        decode_with(&b(b"E"), true).unwrap(),
        (None, Message::StreamStop)
    );
    let mut commit = vec![b'c', 0, 0, 2, 0, 0];
    commit.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
    commit.extend_from_slice(&0x1_0000_0040u64.to_be_bytes());
    commit.extend_from_slice(&77i64.to_be_bytes());
    assert_eq!(
        decode_with(&b(&commit), false).unwrap().1,
        Message::StreamCommit(StreamCommit {
            xid: 512,
            flags: 0,
            commit_lsn: 0x1_0000_0010,
            end_lsn: 0x1_0000_0040,
            commit_time: 77
        })
    );
    // `streaming = on`, then `parallel` (abort LSN and time follow).
    let abort = b"A\0\0\x02\0\0\0\x02\x05";
    assert_eq!(
        decode_with(&b(abort), false).unwrap().1,
        Message::StreamAbort(StreamAbort {
            xid: 512,
            subxid: 517
        })
    );
    let mut parallel = abort.to_vec();
    parallel.extend_from_slice(&[0u8; 16]);
    assert!(decode_with(&b(&parallel), false).is_ok());
    // Inside a block, an insert carries its subtransaction's xid first.
    let mut insert = vec![
        b'I', 0, 0, 2, 5, 0, 0, 0x40, 0, b'N', 0, 1, b't', 0, 0, 0, 1, b'7',
    ];
    let (xid, msg) = decode_with(&b(&insert), true).unwrap();
    assert_eq!(xid, Some(517));
    assert!(matches!(msg, Message::Insert(i) if i.relation_id == 0x4000));
    // The same bytes outside a block are misaligned, and refused.
    assert!(decode_with(&b(&insert), false).is_err());
    insert.drain(1..5);
    assert_eq!(decode_with(&b(&insert), false).unwrap().0, None);
}
