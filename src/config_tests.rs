use super::*;

fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, toml_text).expect("write");
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::load(Some(&path), &env)
}

const GOOD: &str = r#"
[source.postgres]
url = "postgres://u@localhost/app"
tables = [{ table = "public.orders", tenant_column = "tenant_id" }]
"#;

const MONGO: &str = r#"
[[source.mongo]]
name = "app"
uri = "mongodb://localhost:27017/?replicaSet=rs0"
database = "shop"
collections = [
  { collection = "orders", tenant_field = "tenantId" },
  { collection = "notes", tenant_field = "owner.org", fields_only = true },
]
"#;

#[test]
fn mongo_sources_load_with_defaults() {
    let c = load(&format!("{GOOD}{MONGO}"), &[]).expect("valid");
    let m = &c.source.mongo[0];
    assert_eq!(m.event_source(), "/sluice/mongo/app");
    assert_eq!(m.checkpoint_key(), "mongo/app");
    assert_eq!(m.full_document, "updateLookup");
    assert!(m.enable_pre_images);
    assert_eq!(m.collections[1].tenant_field, "owner.org");
    assert!(m.collections[1].fields_only);
}

#[test]
fn broken_mongo_sources_name_the_key() {
    let cases = [
        (
            "uri = \"mongodb://",
            "uri = \"http://",
            "source.mongo[0].uri",
        ),
        (
            "database = \"shop\"",
            "database = \"a.b\"",
            "source.mongo[0].database",
        ),
        (
            "owner.org",
            "owner..org",
            "source.mongo[0].collections[1].tenant_field",
        ),
        (
            "\"notes\"",
            "\"orders\"",
            "source.mongo[0].collections[1].collection",
        ),
        ("name = \"app\"", "name = \"App!\"", "source.mongo[0].name"),
        (
            "database = \"shop\"",
            "database = \"shop\"\nfull_document = \"always\"",
            "source.mongo[0].full_document",
        ),
    ];
    for (from, to, key) in cases {
        let text = format!("{GOOD}{MONGO}").replacen(from, to, 1);
        let err = load(&text, &[]).expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let empty = format!("{GOOD}{MONGO}").replace(
        "collections = [\n  { collection = \"orders\", tenant_field = \"tenantId\" },\n  { collection = \"notes\", tenant_field = \"owner.org\", fields_only = true },\n]",
        "collections = []",
    );
    let err = load(&empty, &[]).expect_err("empty").to_string();
    assert!(err.contains("source.mongo[0].collections"), "{err}");
    let twice = format!("{GOOD}{MONGO}{MONGO}");
    let err = load(&twice, &[]).expect_err("twice").to_string();
    assert!(err.contains("source.mongo[1].name"), "{err}");
}

#[test]
fn defaults_fill_every_optional_key() {
    let c = load(GOOD, &[]).expect("valid");
    let pg = c.postgres().expect("pg");
    assert_eq!(pg.slot(), "sluice_main");
    assert_eq!(pg.publication(), "sluice_main");
    assert_eq!(pg.event_source(), "/sluice/pg/main");
    assert_eq!(c.state_url().expect("state"), "postgres://u@localhost/app");
    assert_eq!(c.appender.max_batch_events, 20_000);
}

#[test]
fn environment_overrides_file_values_of_every_kind() {
    let c = load(
        GOOD,
        &[
            ("SLUICE_SOURCE_POSTGRES_URL", "postgres://other@db/x"),
            ("SLUICE_APPENDER_MAX_BATCH_EVENTS", "7"),
            (
                "SLUICE_SOURCE_POSTGRES_TABLES",
                r#"[{table="s.t", tenant_column="org", fields_only=true}]"#,
            ),
            ("SLUICE_LOG", "debug"),
        ],
    )
    .expect("valid");
    let pg = c.postgres().expect("pg");
    assert_eq!(pg.url, "postgres://other@db/x");
    assert_eq!(c.appender.max_batch_events, 7);
    assert_eq!(
        pg.tables,
        vec![TableConfig {
            table: "s.t".into(),
            tenant_column: "org".into(),
            fields_only: true,
            snapshot: None,
        }]
    );
}

#[test]
fn environment_alone_is_a_complete_config() {
    let env: BTreeMap<String, String> = [
        ("SLUICE_SOURCE_POSTGRES_URL", "postgres://u@h/d"),
        (
            "SLUICE_SOURCE_POSTGRES_TABLES",
            r#"[{table="a.b", tenant_column="t"}]"#,
        ),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let c = Config::load(None, &env).expect("valid");
    assert_eq!(c.postgres().expect("pg").tables.len(), 1);
}

#[test]
fn missing_key_is_named_with_its_path() {
    let err = load(
        "[source.postgres]\nurl = \"postgres://u@h/d\"\ntables = [{ table = \"public.orders\" }]\n",
        &[],
    )
    .expect_err("missing tenant_column");
    let msg = err.to_string();
    assert!(msg.contains("source.postgres.tables[0]"), "{msg}");
    assert!(msg.contains("tenant_column"), "{msg}");
}

#[test]
fn wrong_type_names_key_and_expectation() {
    let err = load(
        &format!("{GOOD}\n[appender]\nmax_batch_events = \"many\"\n"),
        &[],
    )
    .expect_err("wrong type");
    let msg = err.to_string();
    assert!(msg.contains("appender.max_batch_events"), "{msg}");
    assert!(msg.contains("expected a whole number"), "{msg}");
}

#[test]
fn unknown_key_in_file_is_rejected() {
    let err = load(&format!("{GOOD}\n[appender]\nmax_batch = 3\n"), &[]).expect_err("unknown");
    let msg = err.to_string();
    assert!(msg.contains("appender"), "{msg}");
    assert!(msg.contains("max_batch"), "{msg}");
}

#[test]
fn bad_environment_values_name_the_variable() {
    let err = load(GOOD, &[("SLUICE_APPENDER_QUEUE_EVENTS", "lots")]).expect_err("bad int");
    let msg = err.to_string();
    assert!(msg.contains("SLUICE_APPENDER_QUEUE_EVENTS"), "{msg}");
    assert!(msg.contains("whole number"), "{msg}");
    let err = load(GOOD, &[("SLUICE_APPENDER_QUEUE", "1")]).expect_err("unknown var");
    assert!(err.to_string().contains("SLUICE_APPENDER_QUEUE"));
}

#[test]
fn max_query_bytes_is_bounded_by_the_request_head_limit() {
    let ok = load(GOOD, &[("SLUICE_HTTP_MAX_QUERY_BYTES", "32768")]).expect("at the bound");
    assert_eq!(ok.http.max_query_bytes, MAX_QUERY_BYTES_LIMIT);
    let err = load(GOOD, &[("SLUICE_HTTP_MAX_QUERY_BYTES", "32769")])
        .expect_err("past the bound")
        .to_string();
    assert!(err.contains("http.max_query_bytes"), "{err}");
    assert!(err.contains("at most 32768"), "{err}");
}

#[test]
fn invalid_values_are_explained() {
    for (text, key) in [
        (
            GOOD.replace("public.orders", "orders"),
            "source.postgres.tables[0].table",
        ),
        (
            GOOD.replace("public.orders", "sluice.events"),
            "source.postgres.tables[0].table",
        ),
        (
            GOOD.replace("postgres://u@localhost/app", "not a url"),
            "source.postgres.url",
        ),
        (
            format!("{GOOD}slot = \"Bad-Slot\"\n"),
            "source.postgres.slot",
        ),
        (
            format!("{GOOD}\n[appender]\nqueue_events = 0\n"),
            "appender.queue_events",
        ),
        (
            GOOD.replace(
                "tables = [",
                "tables = [{ table = \"public.orders\", tenant_column = \"t\" },",
            ),
            "source.postgres.tables[1].table",
        ),
    ] {
        let err = load(&text, &[]).expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let err = load("[source.postgres\n", &[]).expect_err("syntax");
    assert!(err.to_string().contains("not valid TOML"), "{err}");
}

#[test]
fn policies_come_from_toml_and_the_environment_and_fail_naming_the_key() {
    let toml = format!(
        "{GOOD}\n[[policies]]\nrole = \"member\"\ntable = \"public.orders\"\nrows = {{ field = \"new.owner_id\", op = \"eq\", claim = \"sub\" }}\nhide_columns = [\"secret\"]\n"
    );
    let c = load(&toml, &[]).expect("valid");
    assert_eq!(c.policies.len(), 1);
    assert_eq!(c.policies[0].hide_columns, Some(vec!["secret".to_owned()]));
    let p = c.compiled_policies().expect("compiles");
    assert_eq!(p.custom_roles(), vec!["member".to_owned()]);
    let err = load(
        GOOD,
        &[(
            "SLUICE_POLICIES",
            r#"[{role="member", table="public.invoices"}]"#,
        )],
    )
    .expect_err("not captured");
    assert_eq!(
        err.to_string(),
        "config key `policies[0].table`: \"public.invoices\" is not a captured table; captured: public.orders"
    );
    let err = load(
        GOOD,
        &[(
            "SLUICE_POLICIES",
            r#"[{role="member", table="public.orders", rows={field="owner_id", op="like", claim="sub"}}]"#,
        )],
    )
    .expect_err("bad operator");
    assert!(
        err.to_string()
            .starts_with("config key `policies[0].rows`: filter.op: unknown operator \"like\""),
        "{err}"
    );
}

#[test]
fn readme_lists_every_key_with_its_env_var_and_default() {
    let readme = include_str!("../README.md");
    for &Key {
        path: key, default, ..
    } in KEYS
    {
        let row = format!("| `{key}` | `{}` |", env_name(key));
        let line = readme
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("README has no row for {key}"));
        assert!(
            line.contains(default),
            "README row for {key} lacks default {default}: {line}"
        );
    }
}

#[test]
fn documented_numeric_defaults_are_the_real_defaults() {
    let c = load(GOOD, &[]).expect("valid");
    let pg = c.postgres().expect("pg");
    let actual = [
        (
            "source.postgres.status_interval_ms",
            pg.status_interval_ms as usize,
        ),
        (
            "source.postgres.reconnect_max_backoff_ms",
            pg.reconnect_max_backoff_ms as usize,
        ),
        ("source.postgres.queue_messages", pg.queue_messages),
        ("source.postgres.heartbeat_secs", pg.heartbeat_secs as usize),
        (
            "source.postgres.backfill_statement_timeout_ms",
            pg.backfill_statement_timeout_ms as usize,
        ),
        ("appender.max_batch_events", c.appender.max_batch_events),
        ("appender.max_batch_bytes", c.appender.max_batch_bytes),
        ("appender.queue_events", c.appender.queue_events),
        ("http.heartbeat_secs", c.http.heartbeat_secs as usize),
        ("http.retry_ms", c.http.retry_ms as usize),
        ("http.max_query_bytes", c.http.max_query_bytes),
        ("http.page_limit", c.http.page_limit as usize),
        ("http.max_snapshot_rows", c.http.max_snapshot_rows as usize),
        ("http.live_share_ms", c.http.live_share_ms as usize),
        ("http.max_top_rows", c.http.max_top_rows),
        ("http.db_pool_size", c.http.db_pool_size),
        ("hub.subscriber_queue", c.hub.subscriber_queue),
        ("ws.auth_timeout_secs", c.ws.auth_timeout_secs as usize),
        ("ws.max_subscriptions", c.ws.max_subscriptions),
        ("ws.max_message_bytes", c.ws.max_message_bytes),
        ("ws.queue", c.ws.queue),
        ("ws.ping_secs", c.ws.ping_secs as usize),
        ("webhooks.timeout_ms", c.webhooks.timeout_ms as usize),
        ("webhooks.max_attempts", c.webhooks.max_attempts),
        ("webhooks.concurrency", c.webhooks.concurrency),
        (
            "webhooks.endpoint_concurrency",
            c.webhooks.endpoint_concurrency,
        ),
        (
            "webhooks.poll_interval_ms",
            c.webhooks.poll_interval_ms as usize,
        ),
        (
            "webhooks.secret_overlap_secs",
            c.webhooks.secret_overlap_secs as usize,
        ),
        ("webhooks.batch_max_bytes", c.webhooks.batch_max_bytes),
        ("webhooks.template_max_bytes", c.webhooks.template_max_bytes),
        ("log.retention_hours", c.log.retention_hours as usize),
        (
            "log.prune_interval_secs",
            c.log.prune_interval_secs as usize,
        ),
        (
            "auth.revocation_check_secs",
            c.auth.revocation_check_secs as usize,
        ),
    ];
    for (key, value) in actual {
        let documented = KEYS
            .iter()
            .find(|k| k.path == key)
            .map(|k| k.default)
            .expect("documented");
        assert_eq!(documented, value.to_string(), "{key}");
    }
}

#[test]
fn every_key_has_a_kind_and_env_name() {
    for &Key { path: key, .. } in KEYS {
        let var = env_name(key);
        assert!(var.starts_with("SLUICE_"));
        // Setting each variable to a value of its kind must be accepted by the parser.
        let value = match kind_of(key) {
            Kind::Int => "5",
            Kind::Bool => "true",
            Kind::Str if key.ends_with("schedule") => "0s,1s",
            Kind::TableList if key == "source.mongo" => {
                r#"[{name="m", uri="mongodb://h/?replicaSet=rs0", database="app", collections=[{collection="c", tenant_field="t"}]}]"#
            }
            Kind::TableList if key == "policies" => {
                r#"[{role="member", table="public.orders", rows={field="new.owner_id", op="eq", claim="sub"}}]"#
            }
            Kind::TableList if key == "webhooks.endpoints" => {
                r#"[{name="n", tenant="acme", url="https://example.com/hook"}]"#
            }
            Kind::TableList => r#"[{table="a.b", tenant_column="t"}]"#,
            Kind::Str if key.ends_with("url") => "postgres://u@h/d",
            Kind::Str if key.ends_with("listen") => "127.0.0.1:1",
            Kind::Str => "abc",
        };
        load(GOOD, &[(&var, value)]).unwrap_or_else(|e| panic!("{var}: {e}"));
    }
}

#[test]
fn declared_webhook_endpoints_load_from_the_file_and_the_environment() {
    let secret = crate::webhooks::sign::generate_secret();
    let file = format!(
        r#"{GOOD}
[[webhooks.endpoints]]
name = "billing"
tenant = "acme"
url = "https://billing.example.com/hooks"
topics = ["tables/public.orders/*"]
secret_env = "BILLING_SECRET"
headers = {{ "X-Team" = "billing" }}
batch = {{ max_events = 50 }}
"#
    );
    let c = load(&file, &[("BILLING_SECRET", &secret)]).expect("valid");
    let e = &c.webhooks.endpoints[0];
    assert_eq!(
        e.secret.as_ref().map(|s| s.0.as_str()),
        Some(secret.as_str())
    );
    assert!(
        !format!("{c:?}").contains(&secret),
        "the secret never shows in Debug"
    );
    let declared = c.declared_webhooks().expect("valid");
    assert_eq!(declared[0].spec.batch.map(|b| b.max_events), Some(50));
    assert_eq!(declared[0].spec.headers["X-Team"], "billing");
    // The same from SLUICE_WEBHOOKS_ENDPOINTS.
    let c = load(
        GOOD,
        &[(
            "SLUICE_WEBHOOKS_ENDPOINTS",
            r#"[{name="b", tenant="acme", url="https://e.com", timeout_ms=2000}]"#,
        )],
    )
    .expect("valid");
    assert_eq!(
        c.declared_webhooks().expect("valid")[0].spec.timeout_ms,
        Some(2000)
    );

    let entry = |extra: &str| {
        format!("{GOOD}\n[[webhooks.endpoints]]\nname = \"b\"\ntenant = \"acme\"\n{extra}\n")
    };
    let cases = [
        (
            entry("url = \"https://e.com\"\nsecret_env = \"NOT_SET\""),
            &[][..],
            "webhooks.endpoints[0].secret_env",
            "NOT_SET is not set",
        ),
        (
            entry("url = \"https://e.com\"\nsecret_env = \"S\""),
            &[("S", "plain")][..],
            "webhooks.endpoints[0].secret_env",
            "not a webhook secret",
        ),
        (
            entry("url = \"https://e.com\"\nretry_schedule = \"soon\""),
            &[][..],
            "webhooks.endpoints[0].retry_schedule",
            "",
        ),
        (
            entry("url = \"https://e.com\"\nrole = \"nobody\""),
            &[][..],
            "webhooks.endpoints[0].role",
            "",
        ),
        (
            entry("topics = []"),
            &[][..],
            "webhooks.endpoints[0]",
            "url",
        ),
    ];
    for (text, env, key, message) in cases {
        match load(&text, env) {
            Err(ConfigError::Key { key: k, message: m }) => {
                assert_eq!(k, key, "{m}");
                assert!(m.contains(message), "{k}: {m}");
            }
            other => panic!("{key}: expected a key error, got {other:?}"),
        }
    }
}
