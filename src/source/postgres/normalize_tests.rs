use super::*;
use crate::source::postgres::pgoutput::{Column, ReplicaIdentity};
use bytes::Bytes;
use serde_json::Value;

fn rel(identity: ReplicaIdentity, fields_only: bool) -> ResolvedRelation {
    let col = |name: &str, oid: u32, key: bool| Column {
        is_key: key,
        name: name.into(),
        type_oid: oid,
        type_modifier: -1,
    };
    ResolvedRelation {
        relation: Relation {
            id: 7,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: identity,
            columns: vec![
                col("id", 23, true),
                col("tenant_id", 25, false),
                col("status", 25, false),
                col("blob", 25, false),
            ],
        },
        types: vec![PgType::Int, PgType::Text, PgType::Text, PgType::Text],
        key_columns: vec![0],
        rule: Some(TableRule {
            tenant_column: "tenant_id".into(),
            fields_only,
        }),
    }
}

fn t(vals: &[Option<&str>]) -> Tuple {
    Tuple(
        vals.iter()
            .map(|v| match v {
                None => Datum::Null,
                Some("<u>") => Datum::UnchangedToast,
                Some(s) => Datum::Text(Bytes::copy_from_slice(s.as_bytes())),
            })
            .collect(),
    )
}

fn tx() -> TxContext {
    TxContext::new(99, 0x100, 1_000_000)
}

fn one(n: &mut Normalizer, m: Message) -> Outcome {
    let mut out = Vec::new();
    n.change(&tx(), 1, &m, &mut out);
    assert_eq!(out.len(), 1);
    out.pop().expect("one outcome")
}

fn data(o: &Outcome) -> (PendingEvent, Value) {
    match o {
        Outcome::Event(e) => (e.clone(), serde_json::from_str(e.data.get()).expect("json")),
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn snapshot_rows_are_tagged_and_shaped_like_inserts() {
    let mut n = Normalizer::new("/sluice/pg/main");
    n.set_relation(rel(ReplicaIdentity::Default, false));
    let row = t(&[Some("42"), Some("acme"), Some("new"), None]);
    let o = n.snapshot(&tx(), 5, 7, &row);
    let (e, d) = data(&o);
    assert_eq!(
        e.audience,
        Audience::Tenant(TenantId::new("acme").expect("valid"))
    );
    assert_eq!(&*e.topic, "tables/public.orders/snapshot");
    assert_eq!(&*e.event_type, "row.snapshot");
    assert_eq!(e.subject.as_deref(), Some("public.orders/42"));
    assert_eq!(n.subject_of(7, &row).as_deref(), Some("public.orders/42"));
    assert_eq!(
        d,
        serde_json::json!({"op":"snapshot","schema":"public","table":"orders","key":{"id":42},
            "new":{"id":42,"tenant_id":"acme","status":"new","blob":null}})
    );
    // fields_only: the key only; no tenant: no event.
    let mut n = Normalizer::new("/sluice/pg/main");
    n.set_relation(rel(ReplicaIdentity::Default, true));
    let (_, d) = data(&n.snapshot(&tx(), 5, 7, &row));
    assert_eq!(
        d,
        serde_json::json!({"op":"snapshot","schema":"public","table":"orders","key":{"id":42}})
    );
    let orphan = t(&[Some("43"), None, Some("x"), None]);
    assert!(matches!(
        n.snapshot(&tx(), 6, 7, &orphan),
        Outcome::Dropped(_)
    ));
}

#[test]
fn insert_is_tagged_with_the_rows_tenant() {
    let mut n = Normalizer::new("/sluice/pg/main");
    n.set_relation(rel(ReplicaIdentity::Default, false));
    let o = one(
        &mut n,
        Message::Insert(Insert {
            relation_id: 7,
            new: t(&[Some("42"), Some("acme"), Some("new"), None]),
        }),
    );
    let (e, d) = data(&o);
    assert_eq!(
        e.audience,
        Audience::Tenant(TenantId::new("acme").expect("valid"))
    );
    assert_eq!(&*e.topic, "tables/public.orders/insert");
    assert_eq!(&*e.event_type, "row.inserted");
    assert_eq!(e.subject.as_deref(), Some("public.orders/42"));
    assert_eq!(e.position.ordinal, SUBS_PER_CHANGE);
    assert_eq!(e.txid, Some(99));
    assert_eq!(
        d,
        serde_json::json!({"op":"insert","schema":"public","table":"orders","key":{"id":42},
            "new":{"id":42,"tenant_id":"acme","status":"new","blob":null}})
    );
}

#[test]
fn null_tenant_is_dropped_not_delivered() {
    let mut n = Normalizer::new("s");
    n.set_relation(rel(ReplicaIdentity::Default, false));
    let o = one(
        &mut n,
        Message::Insert(Insert {
            relation_id: 7,
            new: t(&[Some("1"), None, Some("x"), None]),
        }),
    );
    match o {
        Outcome::Dropped(DropReason::NoTenant { table, key, .. }) => {
            assert_eq!(table, "public.orders");
            assert_eq!(key, r#"{"id":1}"#);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unchanged_toast_is_listed_not_sent_without_full_identity() {
    let mut n = Normalizer::new("s");
    n.set_relation(rel(ReplicaIdentity::Default, false));
    let o = one(
        &mut n,
        Message::Update(Update {
            relation_id: 7,
            old: None,
            new: t(&[Some("1"), Some("acme"), Some("paid"), Some("<u>")]),
        }),
    );
    let (_, d) = data(&o);
    assert_eq!(
        d["new"],
        serde_json::json!({"id":1,"tenant_id":"acme","status":"paid"})
    );
    assert_eq!(d["unchanged"], serde_json::json!(["blob"]));
    assert!(
        d.get("changed").is_none(),
        "changed is unknown without the old image"
    );
}

#[test]
fn full_identity_fills_toast_from_old_and_lists_changed() {
    let mut n = Normalizer::new("s");
    n.set_relation(rel(ReplicaIdentity::Full, false));
    let o = one(
        &mut n,
        Message::Update(Update {
            relation_id: 7,
            old: Some(OldTuple::Full(t(&[
                Some("1"),
                Some("acme"),
                Some("new"),
                Some("BIG"),
            ]))),
            new: t(&[Some("1"), Some("acme"), Some("paid"), Some("<u>")]),
        }),
    );
    let (_, d) = data(&o);
    assert_eq!(
        d["new"],
        serde_json::json!({"id":1,"tenant_id":"acme","status":"paid","blob":"BIG"})
    );
    assert_eq!(d["changed"], serde_json::json!(["status"]));
    assert!(d.get("unchanged").is_none());
}

#[test]
fn fields_only_sends_key_and_changed_names_only() {
    let mut n = Normalizer::new("s");
    n.set_relation(rel(ReplicaIdentity::Full, true));
    let o = one(
        &mut n,
        Message::Update(Update {
            relation_id: 7,
            old: Some(OldTuple::Full(t(&[
                Some("1"),
                Some("acme"),
                Some("new"),
                None,
            ]))),
            new: t(&[Some("1"), Some("acme"), Some("paid"), None]),
        }),
    );
    let (_, d) = data(&o);
    assert!(d.get("new").is_none() && d.get("old").is_none());
    assert_eq!(d["key"], serde_json::json!({"id":1}));
    assert_eq!(d["changed"], serde_json::json!(["status"]));
}

#[test]
fn delete_takes_tenant_from_old_image_and_keeps_only_key_of_key_tuple() {
    let mut n = Normalizer::new("s");
    let mut r = rel(ReplicaIdentity::Index, false);
    r.relation.columns[1].is_key = true;
    r.key_columns = vec![0];
    n.set_relation(r);
    let o = one(
        &mut n,
        Message::Delete(Delete {
            relation_id: 7,
            old: OldTuple::Key(t(&[Some("5"), Some("globex"), None, None])),
        }),
    );
    let (e, d) = data(&o);
    assert_eq!(
        e.audience,
        Audience::Tenant(TenantId::new("globex").expect("valid"))
    );
    assert_eq!(d["old"], serde_json::json!({"id":5,"tenant_id":"globex"}));
    assert_eq!(&*e.event_type, "row.deleted");
}

#[test]
fn uncaptured_and_unknown_relations() {
    let mut n = Normalizer::new("s");
    let mut r = rel(ReplicaIdentity::Default, false);
    r.rule = None;
    n.set_relation(r);
    let ins = |id| {
        Message::Insert(Insert {
            relation_id: id,
            new: t(&[Some("1"), Some("a"), None, None]),
        })
    };
    assert!(matches!(one(&mut n, ins(7)), Outcome::Ignored));
    assert!(matches!(
        one(&mut n, ins(8)),
        Outcome::Dropped(DropReason::UnknownRelation(8))
    ));
}

#[test]
fn truncate_of_two_tables_gives_distinct_positions() {
    let mut n = Normalizer::new("s");
    n.set_relation(rel(ReplicaIdentity::Default, false));
    let mut other = rel(ReplicaIdentity::Default, false);
    other.relation.id = 8;
    other.relation.name = "items".into();
    n.set_relation(other);
    let mut out = Vec::new();
    n.change(
        &tx(),
        3,
        &Message::Truncate(Truncate {
            cascade: true,
            restart_identity: false,
            relation_ids: vec![7, 8],
        }),
        &mut out,
    );
    let evs: Vec<PendingEvent> = out.iter().map(|o| data(o).0).collect();
    assert_eq!(evs.len(), 2);
    assert_ne!(evs[0].position, evs[1].position);
    assert_eq!(
        evs[1].audience,
        Audience::TenantsOfRelation("public.items".into())
    );
    assert_eq!(&*evs[1].topic, "tables/public.items/truncate");
}

#[test]
fn custom_messages_are_validated() {
    let n = Normalizer::new("s");
    let o = n.custom(
        &tx(),
        1,
        br#"{"tenant":"acme","type":"order.shipped","data":{"id":1}}"#,
    );
    let (e, d) = data(&o);
    assert_eq!(&*e.event_type, "custom.order.shipped");
    assert_eq!(&*e.topic, "custom/order.shipped");
    assert_eq!(d, serde_json::json!({"id":1}));
    for bad in [
        &b"not json"[..],
        br#"[1]"#,
        br#"{"type":"x"}"#,
        br#"{"tenant":"a"}"#,
        br#"{"tenant":"a","type":"has space"}"#,
        br#"{"tenant":"","type":"x"}"#,
        br#"{"tenant":7,"type":"x"}"#,
    ] {
        assert!(
            matches!(
                n.custom(&tx(), 1, bad),
                Outcome::Dropped(DropReason::MalformedCustom(_))
            ),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn tuple_shape_mismatch_is_dropped() {
    let mut n = Normalizer::new("s");
    n.set_relation(rel(ReplicaIdentity::Default, false));
    let o = one(
        &mut n,
        Message::Insert(Insert {
            relation_id: 7,
            new: t(&[Some("1"), Some("a")]),
        }),
    );
    assert!(matches!(
        o,
        Outcome::Dropped(DropReason::ShapeMismatch { .. })
    ));
}
