use super::*;
use crate::auth::{CredentialId, Identity};
use serde_json::json;

fn cfg(v: Value) -> Vec<PolicyConfig> {
    serde_json::from_value(v).expect("policy config")
}

fn tables() -> Vec<String> {
    vec!["public.todos".into(), "public.notes".into()]
}

fn compile(v: Value) -> Result<Policies, PolicyError> {
    Policies::compile(&cfg(v), &tables(), &["app.docs".into()])
}

pub(super) fn identity(role: Role, policy_role: &str, claims: Value) -> Identity {
    let Value::Object(claims) = claims else {
        panic!("claims are an object")
    };
    Identity {
        tenant: Some(crate::event::TenantId::new("acme").expect("tenant")),
        role,
        policy_role: policy_role.into(),
        claims: Arc::new(claims),
        credential: CredentialId::ApiKey { id: 1 },
    }
}

#[test]
fn bad_policies_fail_naming_the_key() {
    let cases = [
        (
            json!([{"role": "admin", "table": "public.todos"}]),
            "policies[0].role",
        ),
        (
            json!([{"role": "Member", "table": "public.todos"}]),
            "policies[0].role",
        ),
        (json!([{"role": "member"}]), "policies[0]"),
        (
            json!([{"role": "member", "table": "public.todos", "topics": ["custom/x"]}]),
            "policies[0]",
        ),
        (
            json!([{"role": "member", "table": "public.nope"}]),
            "policies[0].table",
        ),
        (
            json!([{"role": "member", "collection": "app.nope"}]),
            "policies[0].collection",
        ),
        (
            json!([{"role": "member", "topics": ["tables/public.todos/*"]}]),
            "policies[0].topics[0]",
        ),
        (
            json!([{"role": "member", "topics": []}]),
            "policies[0].topics",
        ),
        (
            json!([{"role": "member", "table": "public.todos", "publish": true}]),
            "policies[0].publish",
        ),
        (
            json!([{"role": "member", "table": "public.todos", "rows": {"field": "owner_id", "op": "eq", "claim": ""}}]),
            "policies[0].rows",
        ),
        (
            json!([{"role": "member", "table": "public.todos", "rows": "{not json"}]),
            "policies[0].rows",
        ),
        (
            json!([{"role": "member", "table": "public.todos", "columns": ["a"], "hide_columns": ["b"]}]),
            "policies[0]",
        ),
        (
            json!([{"role": "member", "table": "public.todos", "columns": ["a", "a"]}]),
            "policies[0].columns[1]",
        ),
        (
            json!([{"role": "member", "topics": ["custom/x"], "rows": {"field": "a", "op": "eq", "value": 1}}]),
            "policies[0].rows",
        ),
        (
            json!([{"role": "member", "table": "public.todos"}, {"role": "member", "table": "public.todos"}]),
            "policies[1]",
        ),
    ];
    for (v, key) in cases {
        let e = compile(v.clone()).expect_err(&v.to_string());
        assert_eq!(e.key, key, "{v}: {e}");
    }
    let e = compile(json!([{"role": "member", "table": "public.nope"}])).expect_err("unknown");
    assert_eq!(
        e.to_string(),
        "config key `policies[0].table`: \"public.nope\" is not a captured table; captured: public.todos, public.notes"
    );
    let e = compile(json!([{"role": "member", "table": "public.todos", "rows": {"field": "old.owner_id", "op": "eq", "claim": "sub"}}]))
        .expect_err("old");
    assert!(e.message.contains("filter.field"), "{e}");
}

#[test]
fn custom_roles_are_the_named_ones() {
    let p = compile(json!([
        {"role": "member", "table": "public.todos"},
        {"role": "anon", "table": "public.notes"},
        {"role": "viewer", "table": "public.todos"},
        {"role": "member", "table": "public.notes", "rows": "{\"field\":\"owner_id\",\"op\":\"eq\",\"claim\":\"sub\"}"},
    ]))
    .expect("valid");
    assert!(p.active());
    assert_eq!(
        p.custom_roles(),
        vec!["member".to_owned(), "viewer".to_owned()]
    );
}

#[test]
fn defaults_deny_anon_and_custom_roles_and_allow_service_and_admin() {
    let p = compile(json!([{"role": "member", "table": "public.todos"}])).expect("valid");
    let anon = p.viewer(&identity(Role::Anon, "anon", json!({})));
    assert!(!anon.may_subscribe_anything());
    assert!(!anon.may_subscribe_route("tables/public.todos"));
    let member = p.viewer(&identity(Role::Anon, "member", json!({})));
    assert!(member.may_subscribe_route("tables/public.todos"));
    assert!(!member.may_subscribe_route("tables/public.notes"));
    let service = p.viewer(&identity(Role::Service, "service", json!({})));
    assert!(service.may_subscribe_route("tables/public.notes"));
    assert!(service.may_publish("custom/x"));
    assert!(!member.may_publish("custom/x"));
    let admin = p.viewer(&identity(Role::Admin, "admin", json!({})));
    assert!(admin.is_open());
    // Nothing configured: open to everyone.
    let none = Policies::default();
    assert!(none
        .viewer(&identity(Role::Anon, "anon", json!({})))
        .is_open());
}

#[test]
fn described_per_table_and_role() {
    let p = compile(json!([
        {"role": "member", "table": "public.todos", "rows": {"field": "owner_id", "op": "eq", "claim": "sub"}, "hide_columns": ["secret"]},
        {"role": "member", "topics": ["custom/chat.message"], "publish": true},
    ]))
    .expect("valid");
    let d = p.describe(&tables(), &[]);
    assert_eq!(d["active"], true);
    let todos = &d["policies"][0];
    assert_eq!(todos["table"], "public.todos");
    assert_eq!(todos["roles"]["anon"]["subscribe"], false);
    assert_eq!(todos["roles"]["service"]["rows"], "all");
    assert_eq!(todos["roles"]["member"]["rows"]["claim"], "sub");
    assert_eq!(todos["roles"]["member"]["columns"]["hide"][0], "secret");
    assert_eq!(todos["roles"]["member"]["why"], "policies[0]");
    let chat = &d["policies"][2];
    assert_eq!(chat["topics"][0], "custom/chat.message");
    assert_eq!(chat["roles"]["member"]["publish"], true);
}

#[test]
fn a_selector_naming_a_denied_table_is_refused() {
    let p = compile(json!([{"role": "member", "table": "public.todos"}])).expect("valid");
    let member = p.viewer(&identity(Role::Anon, "member", json!({})));
    let sel = |g: &str| crate::subscription::Selector {
        topics: vec![TopicGlob::parse(g).expect("glob")],
        filter: None,
    };
    assert!(check_selector(&member, &sel("tables/public.todos/*"), "member").is_ok());
    assert!(check_selector(&member, &sel("tables/**"), "member").is_ok());
    assert_eq!(
        check_selector(&member, &sel("tables/public.notes/*"), "member").unwrap_err(),
        "role \"member\" may not subscribe to table public.notes: no access policy grants it"
    );
    let anon = p.viewer(&identity(Role::Anon, "anon", json!({})));
    assert!(
        check_selector(&anon, &crate::subscription::Selector::default(), "anon")
            .unwrap_err()
            .contains("may not subscribe")
    );
}
