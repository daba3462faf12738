use super::*;
use crate::auth::Role;
use crate::event::TenantId;
use crate::policy::tests::identity;
use crate::policy::Policies;
use serde_json::json;

fn policies(v: Value) -> Policies {
    let cfgs: Vec<crate::config::PolicyConfig> = serde_json::from_value(v).expect("config");
    Policies::compile(&cfgs, &["public.todos".into()], &["app.docs".into()]).expect("valid")
}

fn event(seq: i64, event_type: &str, topic: &str, data: Value) -> Arc<Committed> {
    let body = json!({"specversion": "1.0", "id": seq.to_string(), "seq": seq, "type": event_type,
        "tenant": "acme", "topic": topic, "data": data});
    Arc::new(Committed {
        seq,
        tenant: TenantId::new("acme").expect("tenant"),
        topic: topic.into(),
        event_type: event_type.into(),
        body: Bytes::from(body.to_string()),
        commit_micros: 0,
    })
}

fn row(op: &str, new: Option<Value>, old: Option<Value>) -> Value {
    let mut d = json!({"op": op, "schema": "public", "table": "todos", "key": {"id": 1}});
    if let Some(n) = new {
        d["new"] = n;
    }
    if let Some(o) = old {
        d["old"] = o;
    }
    if op == "update" {
        d["changed"] = json!(["owner_id", "secret"]);
    }
    d
}

fn member(p: &Policies, sub: &str) -> Access {
    Access {
        viewer: p.viewer(&identity(Role::Anon, "member", json!({"sub": sub}))),
        selector: Selector::default(),
        membership: false,
    }
}

fn shown(a: &Access, e: &Arc<Committed>) -> Option<Value> {
    a.admit_one(e)
        .map(|e| serde_json::from_slice(&e.body).expect("json"))
}

fn own_rows() -> Policies {
    policies(json!([{"role": "member", "table": "public.todos",
        "rows": {"field": "new.owner_id", "op": "eq", "claim": "sub"},
        "hide_columns": ["secret"]}]))
}

#[test]
fn inserts_and_deletes_reach_only_the_owner_without_hidden_columns() {
    let p = own_rows();
    let (u1, u2) = (member(&p, "u1"), member(&p, "u2"));
    let ins = event(
        1,
        "row.inserted",
        "tables/public.todos/insert",
        row(
            "insert",
            Some(json!({"id": 1, "owner_id": "u1", "secret": "s", "title": "t"})),
            None,
        ),
    );
    let got = shown(&u1, &ins).expect("owner sees it");
    assert_eq!(
        got["data"]["new"],
        json!({"id": 1, "owner_id": "u1", "title": "t"})
    );
    assert_eq!(got["data"]["key"], json!({"id": 1}));
    assert_eq!(got["type"], "row.inserted");
    assert_eq!(got["seq"], 1);
    assert!(shown(&u2, &ins).is_none());
    let del = event(
        2,
        "row.deleted",
        "tables/public.todos/delete",
        row(
            "delete",
            None,
            Some(json!({"id": 1, "owner_id": "u1", "secret": "s"})),
        ),
    );
    assert_eq!(
        shown(&u1, &del).expect("owner")["data"]["old"],
        json!({"id": 1, "owner_id": "u1"})
    );
    assert!(shown(&u2, &del).is_none());
}

#[test]
fn updates_that_move_a_row_give_left_and_entered() {
    let p = own_rows();
    let (u1, u2, u3) = (member(&p, "u1"), member(&p, "u2"), member(&p, "u3"));
    let upd = event(
        3,
        "row.updated",
        "tables/public.todos/update",
        row(
            "update",
            Some(json!({"id": 1, "owner_id": "u2", "secret": "new", "title": "t"})),
            Some(json!({"id": 1, "owner_id": "u1", "secret": "old", "title": "t"})),
        ),
    );
    let left = shown(&u1, &upd).expect("old owner");
    assert_eq!(left["type"], "row.left");
    assert_eq!(left["data"]["op"], "left");
    assert_eq!(left["data"]["key"], json!({"id": 1}));
    assert_eq!(
        left["data"]["old"],
        json!({"id": 1, "owner_id": "u1", "title": "t"})
    );
    assert!(left["data"].get("new").is_none() && left["data"].get("changed").is_none());
    let entered = shown(&u2, &upd).expect("new owner");
    assert_eq!(entered["type"], "row.entered");
    assert_eq!(
        entered["data"]["new"],
        json!({"id": 1, "owner_id": "u2", "title": "t"})
    );
    assert!(
        entered["data"].get("old").is_none(),
        "the old row was not theirs to see"
    );
    assert!(shown(&u3, &upd).is_none());
    // An update within one owner's rows stays an update, masked.
    let same = event(
        4,
        "row.updated",
        "tables/public.todos/update",
        row(
            "update",
            Some(json!({"id": 1, "owner_id": "u2", "secret": "x", "title": "t2"})),
            Some(json!({"id": 1, "owner_id": "u2", "secret": "y", "title": "t"})),
        ),
    );
    let got = shown(&u2, &same).expect("owner");
    assert_eq!(got["type"], "row.updated");
    assert_eq!(got["data"]["changed"], json!(["owner_id"]));
    assert!(got["data"]["old"].get("secret").is_none());
}

#[test]
fn missing_or_forged_claims_see_nothing_and_truncates_reach_every_viewer_of_the_table() {
    let p = own_rows();
    let nobody = Access {
        viewer: p.viewer(&identity(Role::Anon, "member", json!({}))),
        selector: Selector::default(),
        membership: false,
    };
    let wrong_type = Access {
        viewer: p.viewer(&identity(
            Role::Anon,
            "member",
            json!({"sub": {"id": "u1"}}),
        )),
        selector: Selector::default(),
        membership: false,
    };
    let ins = event(
        1,
        "row.inserted",
        "tables/public.todos/insert",
        row("insert", Some(json!({"id": 1, "owner_id": "u1"})), None),
    );
    assert!(shown(&nobody, &ins).is_none());
    assert!(shown(&wrong_type, &ins).is_none());
    let trunc = event(
        2,
        "row.truncated",
        "tables/public.todos/truncate",
        json!({"op": "truncate", "schema": "public", "table": "todos"}),
    );
    assert!(shown(&member(&p, "u9"), &trunc).is_some());
}

#[test]
fn the_client_selector_applies_after_the_policy() {
    let p = own_rows();
    let mut a = member(&p, "u1");
    a.selector.filter = Some(
        Filter::parse(&json!({"field": "new.secret", "op": "is_null", "value": false}))
            .expect("filter"),
    );
    let ins = event(
        1,
        "row.inserted",
        "tables/public.todos/insert",
        row(
            "insert",
            Some(json!({"id": 1, "owner_id": "u1", "secret": "s"})),
            None,
        ),
    );
    // The secret is masked before the client's filter sees the row: a
    // filter cannot probe hidden columns.
    assert!(shown(&a, &ins).is_none());
}

#[test]
fn rewritten_forms_are_built_once_per_event_and_shared() {
    let p = own_rows();
    let (a, b) = (member(&p, "u1"), member(&p, "u1"));
    let ins = event(
        1,
        "row.inserted",
        "tables/public.todos/insert",
        row(
            "insert",
            Some(json!({"id": 1, "owner_id": "u1", "secret": "s"})),
            None,
        ),
    );
    let mut view = EventView::new(&ins);
    let x = a.admit(&mut view).expect("a");
    let y = b.admit(&mut view).expect("b");
    assert!(Arc::ptr_eq(&x, &y));
    assert!(!Arc::ptr_eq(&x, &ins));
}

#[test]
fn unmasked_visible_events_are_passed_as_they_are() {
    let p = policies(json!([{"role": "member", "table": "public.todos",
        "rows": {"field": "owner_id", "op": "eq", "claim": "sub"}}]));
    let ins = event(
        1,
        "row.inserted",
        "tables/public.todos/insert",
        row("insert", Some(json!({"id": 1, "owner_id": "u1"})), None),
    );
    let got = member(&p, "u1").admit_one(&ins).expect("owner");
    assert!(Arc::ptr_eq(&got, &ins));
}

#[test]
fn topic_policies_govern_custom_events_and_publishing() {
    let p = policies(json!([
        {"role": "member", "topics": ["custom/chat.message"], "publish": true},
        {"role": "viewer", "topics": ["custom/chat.message"]},
    ]));
    let chat = event(
        1,
        "custom.chat.message",
        "custom/chat.message",
        json!({"text": "hi"}),
    );
    let other = event(2, "custom.billing.paid", "custom/billing.paid", json!({}));
    let m = member(&p, "u1");
    assert!(m.admit_one(&chat).is_some());
    assert!(m.admit_one(&other).is_none());
    assert!(m.viewer.may_publish("custom/chat.message"));
    assert!(!m.viewer.may_publish("custom/billing.paid"));
    let v = Access {
        viewer: p.viewer(&identity(Role::Anon, "viewer", json!({}))),
        selector: Selector::default(),
        membership: false,
    };
    assert!(v.admit_one(&chat).is_some());
    assert!(!v.viewer.may_publish("custom/chat.message"));
    // A table nobody granted: denied to both.
    let ins = event(
        3,
        "row.inserted",
        "tables/public.todos/insert",
        row("insert", Some(json!({"id": 1})), None),
    );
    assert!(m.admit_one(&ins).is_none());
}

#[test]
fn routes_name_the_index_key() {
    let p = own_rows();
    assert_eq!(
        member(&p, "u1").viewer.routes(),
        Routes::Some {
            targets: vec![(
                "tables/public.todos".into(),
                Some(("owner_id".into(), vec!["u1".into()]))
            )],
            custom: false
        }
    );
    let none = Access {
        viewer: p.viewer(&identity(Role::Anon, "member", json!({}))),
        selector: Selector::default(),
        membership: false,
    };
    assert_eq!(
        none.viewer.routes(),
        Routes::Some {
            targets: vec![],
            custom: false
        }
    );
    let service = p.viewer(&identity(Role::Service, "service", json!({})));
    assert_eq!(service.routes(), Routes::Everything);
}

#[test]
fn document_updates_mask_their_update_description() {
    let p =
        policies(json!([{"role": "member", "collection": "app.docs", "hide_columns": ["secret"]}]));
    let e = event(
        1,
        "doc.updated",
        "collections/app.docs/update",
        json!({
        "op": "update", "db": "app", "collection": "docs", "key": {"_id": 1},
        "changed": ["secret", "title"],
        "update": {"updated_fields": {"secret.x": 1, "title": "t"}, "removed_fields": ["secret"], "truncated_arrays": [{"field": "secret.list", "new_size": 1}]},
        "new": {"_id": 1, "secret": {"x": 1}, "title": "t"}}),
    );
    let got = shown(&member(&p, "u"), &e).expect("visible");
    assert_eq!(got["data"]["changed"], json!(["title"]));
    assert_eq!(
        got["data"]["update"],
        json!({"updated_fields": {"title": "t"}, "removed_fields": [], "truncated_arrays": []})
    );
    assert_eq!(got["data"]["new"], json!({"_id": 1, "title": "t"}));
}
