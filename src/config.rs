//! Configuration: one TOML file, every key overridable by a `SLUICE_…`
//! environment variable, validated completely before anything starts.
//!
//! The environment name of a key is its dotted path upper-cased with dots
//! turned into underscores: `source.postgres.url` is
//! `SLUICE_SOURCE_POSTGRES_URL`. Values from the environment are read as
//! the key's type (a number, `true`/`false`, a string, or for
//! `source.postgres.tables` a TOML array such as
//! `[{table="public.orders", tenant_column="tenant_id"}]`).
//!
//! Every error names the key (`source.postgres.tables[1].tenant_column`) and
//! what was expected, because an operator reading a start-up failure should
//! not have to guess which of forty settings is wrong.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Environment variables with the `SLUICE_` prefix that are not config keys.
const NON_KEY_VARS: &[&str] = &[
    "SLUICE_CONFIG",
    "SLUICE_LOG",
    "SLUICE_LOG_FORMAT",
    "SLUICE_PG_BIN",
    "SLUICE_PG_CACHE",
    "SLUICE_PG_COMPAT",
];

/// How a key's environment value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Taken as it is.
    Str,
    /// A whole number.
    Int,
    /// `true`/`false` (or `1`/`0`).
    Bool,
    /// A TOML array of tables (`source.postgres.tables`, `source.mongo`).
    TableList,
}

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Dotted path in the TOML file (`source.postgres.url`).
    pub path: &'static str,
    pub kind: Kind,
    /// The default as shown to operators (`(required)`, `sluice_<name>`, or
    /// the value itself, which the serde defaults read).
    pub default: &'static str,
    /// What the key does (the README's description column).
    pub doc: &'static str,
}

impl Key {
    const fn new(path: &'static str, kind: Kind, default: &'static str, doc: &'static str) -> Key {
        Key {
            path,
            kind,
            default,
            doc,
        }
    }
    const fn str(path: &'static str, default: &'static str, doc: &'static str) -> Key {
        Key::new(path, Kind::Str, default, doc)
    }
    const fn int(path: &'static str, default: &'static str, doc: &'static str) -> Key {
        Key::new(path, Kind::Int, default, doc)
    }
    const fn bool(path: &'static str, default: &'static str, doc: &'static str) -> Key {
        Key::new(path, Kind::Bool, default, doc)
    }
    const fn list(path: &'static str, default: &'static str, doc: &'static str) -> Key {
        Key::new(path, Kind::TableList, default, doc)
    }
}

/// Every key, declared once: its path, its kind (how an environment value
/// is read), its default (as shown to operators; the serde defaults read it
/// through [`default_int`] and friends at compile time) and what it does.
/// The README's configuration reference is checked against this list.
pub const KEYS: &[Key] = &[
    Key::str(
        "source.postgres.name",
        "main",
        "name of the source; events carry `source = /sluice/pg/<name>`",
    ),
    Key::str(
        "source.postgres.url",
        "(required)",
        "connection URL of the captured database (`postgres://user:pass@host:port/db`)",
    ),
    Key::str(
        "source.postgres.slot",
        "sluice_<name>",
        "logical replication slot (pgoutput)",
    ),
    Key::str(
        "source.postgres.publication",
        "sluice_<name>",
        "publication listing the captured tables",
    ),
    Key::list(
        "source.postgres.tables",
        "(required)",
        "captured tables: `[{table=\"schema.table\", tenant_column=\"col\", fields_only=false, snapshot=\"never\"}]` (`snapshot=\"initial\"`: existing rows as events when the slot is created)",
    ),
    Key::int(
        "source.postgres.status_interval_ms",
        "50",
        "how soon a durable append is acknowledged to Postgres (standby status update)",
    ),
    Key::int(
        "source.postgres.reconnect_max_backoff_ms",
        "10000",
        "longest wait between reconnection attempts",
    ),
    Key::int(
        "source.postgres.heartbeat_secs",
        "10",
        "interval of the heartbeat message that keeps the slot moving while captured tables are quiet (0: off)",
    ),
    Key::int(
        "source.postgres.queue_messages",
        "1024",
        "bound on raw replication messages buffered from the server",
    ),
    Key::bool(
        "source.postgres.streaming",
        "true",
        "read a large transaction while it runs (pgoutput protocol 2–4 with `streaming`, Postgres 14+), staged until its commit; `false`: protocol 1, each transaction sent whole at its commit",
    ),
    Key::int(
        "source.postgres.stream_memory_mb",
        "64",
        "memory for streamed transactions not yet committed; past it they spill to unlinked files in `spill_dir`",
    ),
    Key::str(
        "source.postgres.spill_dir",
        "(system temp dir)",
        "directory of the spill files of streamed transactions",
    ),
    Key::int(
        "source.postgres.backfill_statement_timeout_ms",
        "300000",
        "longest a backfill's chunk query may run on the source before the backfill fails (0: no limit)",
    ),
    Key::list(
        "source.mongo",
        "(none)",
        "MongoDB sources, an array: `[{name=\"app\", uri=\"mongodb://…/?replicaSet=rs0\", database=\"app\", collections=[{collection=\"orders\", tenant_field=\"tenantId\", fields_only=false}], full_document=\"updateLookup\", enable_pre_images=true, reconnect_max_backoff_ms=10000}]`",
    ),
    Key::str(
        "state.url",
        "source.postgres.url",
        "database holding the log (schema `sluice`); defaults to the source database",
    ),
    Key::int(
        "appender.max_batch_events",
        "20000",
        "most events appended in one transaction",
    ),
    Key::int(
        "appender.max_batch_bytes",
        "16777216",
        "most envelope bytes appended in one transaction",
    ),
    Key::int(
        "appender.queue_events",
        "50000",
        "bound on normalized events waiting for the appender",
    ),
    Key::bool(
        "appender.group_by_tenant",
        "true",
        "store a source transaction's events grouped by tenant, each tenant's in the transaction's order (false: the transaction's exact order across tenants)",
    ),
    Key::str(
        "http.listen",
        "127.0.0.1:8787",
        "address the HTTP API listens on",
    ),
    Key::int(
        "http.heartbeat_secs",
        "15",
        "idle seconds before an SSE comment or NDJSON heartbeat line",
    ),
    Key::int(
        "http.retry_ms",
        "2000",
        "the SSE `retry:` hint sent to clients",
    ),
    Key::int(
        "http.max_query_bytes",
        "8192",
        "longest accepted query string (at most 32768)",
    ),
    Key::int(
        "http.max_snapshot_rows",
        "100000",
        "most rows the initial read of one live query (`snapshot=true`) may return; more is a `snapshot_too_large` error",
    ),
    Key::int(
        "http.max_top_rows",
        "1000",
        "largest limit of a top-N live query (order_by and limit); its window holds at most twice that many rows",
    ),
    Key::int(
        "http.live_share_ms",
        "2000",
        "how long a finished live-query read is handed to new subscribers of the same table, tenant and filter (0: never shared once done)",
    ),
    Key::int(
        "http.page_limit",
        "1000",
        "most events in one JSON page or one catch-up read",
    ),
    Key::int(
        "http.db_pool_size",
        "16",
        "state-database connections shared by HTTP readers",
    ),
    Key::str(
        "http.cors_origins",
        "*",
        "origins browsers may call the API from, comma-separated (`*`: any; keys are never cookies); empty: none",
    ),
    Key::int(
        "webhooks.timeout_ms",
        "15000",
        "a webhook attempt that has no answer after this long fails",
    ),
    Key::str(
        "webhooks.retry_schedule",
        "0s,5s,5m,30m,2h,5h,10h,10h",
        "delay before each attempt (units ms, s, m, h), the last repeating; jittered ±20 %",
    ),
    Key::int(
        "webhooks.max_attempts",
        "8",
        "attempts before a delivery is dead, for endpoints that do not set `max_attempts`",
    ),
    Key::int(
        "webhooks.concurrency",
        "64",
        "webhook requests in flight at once, per process",
    ),
    Key::int(
        "webhooks.endpoint_concurrency",
        "8",
        "requests in flight to one endpoint, per process (ordered endpoints: 1)",
    ),
    Key::int(
        "webhooks.poll_interval_ms",
        "1000",
        "how often dispatchers look for due retries and other nodes' deliveries",
    ),
    Key::int(
        "webhooks.secret_overlap_secs",
        "86400",
        "how long the previous secret keeps signing after a rotation",
    ),
    Key::int(
        "webhooks.batch_max_bytes",
        "5242880",
        "most envelope bytes in one batched webhook request; the events past it go in the next request (one larger event still goes alone)",
    ),
    Key::int(
        "webhooks.template_max_bytes",
        "262144",
        "longest body an endpoint's template may render; a longer one makes that delivery dead",
    ),
    Key::bool(
        "webhooks.allow_private_addresses",
        "false",
        "let endpoints resolve to loopback, private, link-local or metadata addresses",
    ),
    Key::list(
        "webhooks.endpoints",
        "[] (none)",
        "webhook endpoints declared as code, reconciled at start: `[{name=\"billing\", tenant=\"acme\", url=\"https://…\", topics=[\"tables/public.orders/*\"], secret_env=\"BILLING_WEBHOOK_SECRET\"}]` (and every option of `POST /v1/webhooks`; see Endpoints as code)",
    ),
    Key::int(
        "ws.auth_timeout_secs",
        "10",
        "a WebSocket that has not authenticated after this long is closed (4001)",
    ),
    Key::int(
        "ws.max_subscriptions",
        "100",
        "subscriptions one WebSocket connection may hold",
    ),
    Key::int(
        "ws.max_message_bytes",
        "65536",
        "largest client message accepted (larger ones get a `message_too_large` error)",
    ),
    Key::int(
        "ws.queue",
        "256",
        "frames waiting to be written to one WebSocket; when full, its subscriptions fall back to the log",
    ),
    Key::int(
        "ws.ping_secs",
        "30",
        "interval of server pings; a connection silent for two intervals is closed",
    ),
    Key::int(
        "hub.subscriber_queue",
        "1024",
        "events buffered per live subscriber before it catches up from the log",
    ),
    Key::int(
        "log.retention_hours",
        "168",
        "events older than this are pruned",
    ),
    Key::int(
        "log.prune_interval_secs",
        "60",
        "how often retention pruning runs",
    ),
    Key::str(
        "auth.jwt_hs256_secret",
        "(none)",
        "secret for HS256 JWTs (set it from the environment)",
    ),
    Key::str(
        "auth.jwt_rs256_public_key",
        "(none)",
        "PEM public key for RS256 JWTs",
    ),
    Key::str(
        "auth.jwt_tenant_claim",
        "tenant",
        "JWT claim holding the tenant id",
    ),
    Key::str(
        "auth.jwt_role_claim",
        "role",
        "JWT claim holding the role (anon or service)",
    ),
    Key::int(
        "auth.revocation_check_secs",
        "2",
        "how often open streams re-check that their key is still valid",
    ),
    Key::list(
        "policies",
        "[] (none: every credential sees its whole tenant)",
        "access policies: `[{role=\"member\", table=\"public.todos\", rows={field=\"new.owner_id\", op=\"eq\", claim=\"sub\"}, columns=[\"id\", \"title\"]}]` (also `collection`, `topics`, `subscribe`, `publish`, `hide_columns`; see Access policies)",
    ),
];

/// The kind of the key at `path` (`Str` for a path that is not a key).
fn kind_of(path: &str) -> Kind {
    KEYS.iter()
        .find(|k| k.path == path)
        .map_or(Kind::Str, |k| k.kind)
}

/// The default of the key at `path`, as declared in [`KEYS`]. A `const fn`
/// so that the serde defaults below read it at compile time: a missing key
/// fails the build, not a start-up.
const fn default_of(path: &str) -> &'static str {
    let mut i = 0;
    while i < KEYS.len() {
        if const_str_eq(KEYS[i].path, path) {
            return KEYS[i].default;
        }
        i += 1;
    }
    panic!("not a key in KEYS")
}

/// The default of an `Int` key (digits only; checked at compile time).
pub const fn default_int(path: &str) -> u64 {
    let digits = default_of(path).as_bytes();
    assert!(!digits.is_empty(), "an Int default is digits");
    let mut v: u64 = 0;
    let mut i = 0;
    while i < digits.len() {
        assert!(digits[i].is_ascii_digit(), "an Int default is digits");
        v = v * 10 + (digits[i] - b'0') as u64;
        i += 1;
    }
    v
}

/// The default of a `Bool` key (`true` or `false`; checked at compile time).
const fn default_bool(path: &str) -> bool {
    let text = default_of(path);
    if const_str_eq(text, "true") {
        true
    } else {
        assert!(
            const_str_eq(text, "false"),
            "a Bool default is true or false"
        );
        false
    }
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The environment variable that overrides `path`.
pub fn env_name(path: &str) -> String {
    format!("SLUICE_{}", path.to_ascii_uppercase().replace('.', "_"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("environment variable {var} (key `{key}`): expected {expected}, got {got:?}")]
    Env {
        var: String,
        key: String,
        expected: &'static str,
        got: String,
    },
    #[error("unknown environment variable {var}: no config key `{guess}`; keys are listed in the README's configuration reference")]
    UnknownEnv { var: String, guess: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub source: SourcesConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub appender: AppenderConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub hub: HubConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub ws: WsConfig,
    /// Access policies (`[[policies]]`); none: every credential of a
    /// tenant sees all of it.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
}

/// A key's default from [`KEYS`], read at compile time: a path that is not
/// a key, or a default that is not of the key's type, fails the build.
macro_rules! key_default {
    (str $path:literal) => {
        const { default_of($path) }.to_owned()
    };
    (bool $path:literal) => {
        const { default_bool($path) }
    };
    (int $path:literal) => {
        const { default_int($path) }
    };
    (int $path:literal as $ty:ty) => {
        const { default_int($path) as $ty }
    };
}

/// Declares a config section whose every key has a default.
macro_rules! section {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty = $default:expr),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty),* }
        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default),* }
            }
        }
    };
}

section!(
    /// The HTTP API.
    HttpConfig {
        listen: String = key_default!(str "http.listen"),
        heartbeat_secs: u64 = key_default!(int "http.heartbeat_secs"),
        retry_ms: u64 = key_default!(int "http.retry_ms"),
        max_query_bytes: usize = key_default!(int "http.max_query_bytes" as usize),
        page_limit: i64 = key_default!(int "http.page_limit" as i64),
        max_snapshot_rows: u64 = key_default!(int "http.max_snapshot_rows"),
        live_share_ms: u64 = key_default!(int "http.live_share_ms"),
        max_top_rows: usize = key_default!(int "http.max_top_rows" as usize),
        db_pool_size: usize = key_default!(int "http.db_pool_size" as usize),
        cors_origins: String = key_default!(str "http.cors_origins"),
    }
);

section!(
    /// WebSocket sessions.
    WsConfig {
        auth_timeout_secs: u64 = key_default!(int "ws.auth_timeout_secs"),
        max_subscriptions: usize = key_default!(int "ws.max_subscriptions" as usize),
        max_message_bytes: usize = key_default!(int "ws.max_message_bytes" as usize),
        queue: usize = key_default!(int "ws.queue" as usize),
        ping_secs: u64 = key_default!(int "ws.ping_secs"),
    }
);

section!(
    /// Webhook delivery.
    WebhooksConfig {
        timeout_ms: u64 = key_default!(int "webhooks.timeout_ms"),
        retry_schedule: String = key_default!(str "webhooks.retry_schedule"),
        max_attempts: usize = key_default!(int "webhooks.max_attempts" as usize),
        concurrency: usize = key_default!(int "webhooks.concurrency" as usize),
        endpoint_concurrency: usize = key_default!(int "webhooks.endpoint_concurrency" as usize),
        poll_interval_ms: u64 = key_default!(int "webhooks.poll_interval_ms"),
        secret_overlap_secs: u64 = key_default!(int "webhooks.secret_overlap_secs"),
        batch_max_bytes: usize = key_default!(int "webhooks.batch_max_bytes" as usize),
        template_max_bytes: usize = key_default!(int "webhooks.template_max_bytes" as usize),
        allow_private_addresses: bool = key_default!(bool "webhooks.allow_private_addresses"),
        /// Endpoints declared in the configuration (`[[webhooks.endpoints]]`).
        endpoints: Vec<WebhookEndpointConfig> = Vec::new(),
    }
);

/// One `[[webhooks.endpoints]]` entry: an endpoint kept in the
/// configuration (and so in git), reconciled with the stored endpoints at
/// start (`webhooks::declared`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct WebhookEndpointConfig {
    /// Its name, unique within its tenant: what identifies it across
    /// restarts and edits.
    pub name: String,
    pub tenant: String,
    /// The environment variable holding its signing secret (`whsec_…`);
    /// none: Sluice generates one (see it with `rotate-secret`).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The secret read from `secret_env` when the configuration was loaded.
    #[serde(skip)]
    pub secret: Option<Redacted>,
    /// Every other member: the endpoint's settings, as `POST /v1/webhooks`
    /// takes them (checked by `webhooks::spec::EndpointSpec`).
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redacted(…)")
    }
}

section!(
    /// The live fan-out.
    HubConfig {
        subscriber_queue: usize = key_default!(int "hub.subscriber_queue" as usize),
    }
);

section!(
    /// The log's retention.
    LogConfig {
        retention_hours: u64 = key_default!(int "log.retention_hours"),
        prune_interval_secs: u64 = key_default!(int "log.prune_interval_secs"),
    }
);

section!(
    /// Credentials: API keys live in the state database; JWTs are verified
    /// with these settings.
    AuthConfig {
        jwt_hs256_secret: Option<String> = None,
        jwt_rs256_public_key: Option<String> = None,
        jwt_tenant_claim: String = key_default!(str "auth.jwt_tenant_claim"),
        jwt_role_claim: String = key_default!(str "auth.jwt_role_claim"),
        revocation_check_secs: u64 = key_default!(int "auth.revocation_check_secs"),
    }
);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    pub postgres: Option<PgSourceConfig>,
    #[serde(default)]
    pub mongo: Vec<MongoSourceConfig>,
}

/// A MongoDB change-stream source: one database-level stream, filtered to
/// `collections`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    pub name: String,
    /// `mongodb://…` or `mongodb+srv://…`; change streams need a replica
    /// set or a sharded cluster.
    pub uri: String,
    pub database: String,
    pub collections: Vec<CollectionConfig>,
    /// `updateLookup`, `whenAvailable` or `required`.
    #[serde(default = "default_full_document")]
    pub full_document: String,
    /// Try `collMod … changeStreamPreAndPostImages` on each collection at
    /// start (MongoDB 6.0+), so deletes carry the tenant.
    #[serde(default = "default_true")]
    pub enable_pre_images: bool,
    #[serde(default = "default_reconnect_max_backoff_ms")]
    pub reconnect_max_backoff_ms: u64,
}

impl MongoSourceConfig {
    /// The `source` attribute of this source's events.
    pub fn event_source(&self) -> String {
        format!("/sluice/mongo/{}", self.name)
    }
    /// The checkpoint key of this source in `sluice.checkpoints`.
    pub fn checkpoint_key(&self) -> String {
        format!("mongo/{}", self.name)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub collection: String,
    /// Dotted path of the field holding the tenant id (`tenantId`,
    /// `owner.org`).
    pub tenant_field: String,
    #[serde(default)]
    pub fields_only: bool,
}

fn default_full_document() -> String {
    "updateLookup".to_owned()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSourceConfig {
    #[serde(default = "default_source_name")]
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub slot: Option<String>,
    #[serde(default)]
    pub publication: Option<String>,
    pub tables: Vec<TableConfig>,
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    #[serde(default = "default_reconnect_max_backoff_ms")]
    pub reconnect_max_backoff_ms: u64,
    #[serde(default = "default_queue_messages")]
    pub queue_messages: usize,
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// `statement_timeout` of a backfill's chunk queries (0: none).
    #[serde(default = "default_backfill_statement_timeout_ms")]
    pub backfill_statement_timeout_ms: u64,
    /// Streamed transactions (protocol 2+), staged until commit.
    #[serde(default = "default_streaming")]
    pub streaming: bool,
    #[serde(default = "default_stream_memory_mb")]
    pub stream_memory_mb: usize,
    /// Where staged transactions spill (None: the system's temp dir).
    #[serde(default)]
    pub spill_dir: Option<std::path::PathBuf>,
}

fn default_streaming() -> bool {
    key_default!(bool "source.postgres.streaming")
}

fn default_stream_memory_mb() -> usize {
    key_default!(int "source.postgres.stream_memory_mb" as usize)
}

fn default_backfill_statement_timeout_ms() -> u64 {
    key_default!(int "source.postgres.backfill_statement_timeout_ms")
}

fn default_heartbeat_secs() -> u64 {
    key_default!(int "source.postgres.heartbeat_secs")
}

impl PgSourceConfig {
    pub fn slot(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("sluice_{}", self.name))
    }
    pub fn publication(&self) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| format!("sluice_{}", self.name))
    }
    /// The `source` attribute of this source's events.
    pub fn event_source(&self) -> String {
        format!("/sluice/pg/{}", self.name)
    }
    /// The checkpoint key of this source in `sluice.checkpoints`.
    pub fn checkpoint_key(&self) -> String {
        format!("pg/{}", self.name)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table`
    pub table: String,
    pub tenant_column: String,
    #[serde(default)]
    pub fields_only: bool,
    /// `"initial"`: when the slot is created, the table's existing rows
    /// become `row.snapshot` events before any change (`"never"`: the
    /// default).
    #[serde(default)]
    pub snapshot: Option<String>,
}

impl TableConfig {
    /// The table's schema and name. Validation guarantees exactly one dot.
    pub fn schema_and_name(&self) -> (&str, &str) {
        self.table
            .split_once('.')
            .unwrap_or(("public", &self.table))
    }
}

/// One `[[policies]]` entry as configured.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `anon`, `service`, or a custom role.
    pub role: String,
    /// A captured table, `schema.table`.
    #[serde(default)]
    pub table: Option<String>,
    /// A MongoDB collection, `database.collection`.
    #[serde(default)]
    pub collection: Option<String>,
    /// Custom-event topic globs (`custom/chat.*`).
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// Whether the role receives these events (default true).
    #[serde(default = "default_true")]
    pub subscribe: bool,
    /// Whether the role may publish custom events on `topics` (default
    /// false; only with `topics`).
    #[serde(default)]
    pub publish: bool,
    /// Row predicate: a filter object, or its JSON text.
    #[serde(default)]
    pub rows: Option<serde_json::Value>,
    /// The only columns the role sees.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Columns the role never sees.
    #[serde(default)]
    pub hide_columns: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppenderConfig {
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    #[serde(default = "default_queue_events")]
    pub queue_events: usize,
    /// Whether a source transaction's events are grouped by tenant in the
    /// log (so each tenant's become a few record batches) rather than kept
    /// in the transaction's exact order across tenants.
    #[serde(default = "default_group_by_tenant")]
    pub group_by_tenant: bool,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        AppenderConfig {
            max_batch_events: default_max_batch_events(),
            max_batch_bytes: default_max_batch_bytes(),
            queue_events: default_queue_events(),
            group_by_tenant: default_group_by_tenant(),
        }
    }
}

fn default_group_by_tenant() -> bool {
    key_default!(bool "appender.group_by_tenant")
}

fn default_source_name() -> String {
    key_default!(str "source.postgres.name")
}
fn default_status_interval_ms() -> u64 {
    key_default!(int "source.postgres.status_interval_ms")
}
fn default_reconnect_max_backoff_ms() -> u64 {
    key_default!(int "source.postgres.reconnect_max_backoff_ms")
}
fn default_queue_messages() -> usize {
    key_default!(int "source.postgres.queue_messages" as usize)
}
fn default_max_batch_events() -> usize {
    key_default!(int "appender.max_batch_events" as usize)
}
fn default_max_batch_bytes() -> usize {
    key_default!(int "appender.max_batch_bytes" as usize)
}
fn default_queue_events() -> usize {
    key_default!(int "appender.queue_events" as usize)
}

impl Config {
    /// Loads `path` (if any), applies `SLUICE_…` overrides from `env`, and
    /// validates the result.
    pub fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut doc = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: p.display().to_string(),
                        message: e.to_string().trim().replace('\n', " "),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut doc, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(doc))
            .map_err(|e| {
                let key = e.path().to_string();
                let message = e
                    .inner()
                    .to_string()
                    .replace("expected usize", "expected a whole number")
                    .replace("expected u64", "expected a whole number");
                ConfigError::key(if key == "." { String::new() } else { key }, message)
            })?;
        config.read_webhook_secrets(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads each declared endpoint's `secret_env` from `env`.
    fn read_webhook_secrets(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        for (i, e) in self.webhooks.endpoints.iter_mut().enumerate() {
            let Some(var) = &e.secret_env else { continue };
            let key = format!("webhooks.endpoints[{i}].secret_env");
            let value = env
                .get(var)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    ConfigError::key(&key, format!("environment variable {var} is not set"))
                })?;
            crate::webhooks::sign::secret_key(value.trim()).map_err(|err| {
                ConfigError::key(
                    &key,
                    format!("{var} is not a webhook secret (whsec_ and base64): {err}"),
                )
            })?;
            e.secret = Some(Redacted(value.trim().to_owned()));
        }
        Ok(())
    }

    /// The endpoints declared in the configuration, each checked as the API
    /// checks a new one (errors name `webhooks.endpoints[i].<member>`).
    pub fn declared_webhooks(
        &self,
    ) -> Result<Vec<crate::webhooks::declared::Declared>, ConfigError> {
        let policies = self.compiled_policies()?;
        crate::webhooks::declared::compile(
            &self.webhooks.endpoints,
            &policies,
            i32::try_from(self.webhooks.max_attempts).unwrap_or(i32::MAX),
        )
        .map_err(|(key, message)| ConfigError::Key { key, message })
    }

    /// Loads with the process environment.
    pub fn from_process(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Config::load(path, &env)
    }

    pub fn postgres(&self) -> Result<&PgSourceConfig, ConfigError> {
        self.source.postgres.as_ref().ok_or_else(|| {
            ConfigError::key(
                "source.postgres",
                "missing: this command needs a Postgres source (set source.postgres.url and source.postgres.tables)",
            )
        })
    }

    /// The database holding the log: `state.url`, else the source's URL.
    pub fn state_url(&self) -> Result<&str, ConfigError> {
        if let Some(url) = &self.state.url {
            return Ok(url);
        }
        self.source
            .postgres
            .as_ref()
            .map(|p| p.url.as_str())
            .ok_or_else(|| {
                ConfigError::key("state.url", "missing: set state.url or source.postgres.url")
            })
    }

    /// The captured tables (`schema.table`).
    pub fn captured_tables(&self) -> Vec<String> {
        self.source
            .postgres
            .as_ref()
            .map(|p| p.tables.iter().map(|t| t.table.clone()).collect())
            .unwrap_or_default()
    }

    /// The captured MongoDB collections (`database.collection`).
    pub fn captured_collections(&self) -> Vec<String> {
        self.source
            .mongo
            .iter()
            .flat_map(|m| {
                m.collections
                    .iter()
                    .map(move |c| format!("{}.{}", m.database, c.collection))
            })
            .collect()
    }

    /// The compiled access policies (validated when the config was read).
    pub(crate) fn compiled_policies(&self) -> Result<crate::policy::Policies, ConfigError> {
        crate::policy::Policies::compile(
            &self.policies,
            &self.captured_tables(),
            &self.captured_collections(),
        )
        .map_err(|e| ConfigError::Key {
            key: e.key,
            message: e.message,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_keys()?;
        // Last: policies name tables and collections checked above, and
        // declared endpoints may name the policies' roles.
        self.compiled_policies()?;
        self.declared_webhooks().map(|_| ())
    }

    fn validate_keys(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.state.url {
            check_url("state.url", url)?;
        }
        if let Some(pg) = &self.source.postgres {
            check_identifier("source.postgres.name", &pg.name, 40)?;
            check_url("source.postgres.url", &pg.url)?;
            check_identifier("source.postgres.slot", &pg.slot(), 63)?;
            check_identifier("source.postgres.publication", &pg.publication(), 63)?;
            if pg.tables.is_empty() {
                return Err(ConfigError::key(
                    "source.postgres.tables",
                    "expected at least one table, e.g. [{table=\"public.orders\", tenant_column=\"tenant_id\"}]",
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, t) in pg.tables.iter().enumerate() {
                let key = format!("source.postgres.tables[{i}]");
                match t.table.split_once('.') {
                    Some((s, n)) if !s.is_empty() && !n.is_empty() && !n.contains('.') => {
                        if s == "sluice" {
                            return Err(ConfigError::key(
                                format!("{key}.table"),
                                "schema `sluice` holds Sluice's own log and cannot be captured",
                            ));
                        }
                    }
                    _ => {
                        return Err(ConfigError::key(
                            format!("{key}.table"),
                            format!("expected `schema.table`, got {:?}", t.table),
                        ))
                    }
                }
                if t.tenant_column.is_empty() {
                    return Err(ConfigError::key(
                        format!("{key}.tenant_column"),
                        "expected the name of the column holding the tenant id",
                    ));
                }
                if !matches!(
                    t.snapshot.as_deref(),
                    None | Some("initial") | Some("never")
                ) {
                    return Err(ConfigError::key(
                        format!("{key}.snapshot"),
                        format!(
                            "expected \"initial\" or \"never\", got {:?}",
                            t.snapshot.as_deref().unwrap_or("")
                        ),
                    ));
                }
                if !seen.insert(t.table.clone()) {
                    return Err(ConfigError::key(
                        format!("{key}.table"),
                        format!("{} is listed twice", t.table),
                    ));
                }
            }
            positive(
                "source.postgres.status_interval_ms",
                pg.status_interval_ms as usize,
            )?;
            positive("source.postgres.queue_messages", pg.queue_messages)?;
            positive("source.postgres.stream_memory_mb", pg.stream_memory_mb)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.source.mongo.iter().enumerate() {
            validate_mongo(&format!("source.mongo[{i}]"), m)?;
            if !names.insert(m.name.clone()) {
                return Err(ConfigError::key(
                    format!("source.mongo[{i}].name"),
                    format!("{:?} is used by two Mongo sources", m.name),
                ));
            }
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::key(
                "http.listen",
                format!(
                    "expected an address like 127.0.0.1:8787, got {:?}",
                    self.http.listen
                ),
            ));
        }
        positive("http.heartbeat_secs", self.http.heartbeat_secs as usize)?;
        positive("http.max_query_bytes", self.http.max_query_bytes)?;
        if self.http.max_query_bytes > MAX_QUERY_BYTES_LIMIT {
            return Err(ConfigError::key(
                "http.max_query_bytes",
                format!(
                    "at most {MAX_QUERY_BYTES_LIMIT}: a request's line and headers together are limited to {} bytes, got {}",
                    MAX_HEAD_BYTES,
                    self.http.max_query_bytes
                ),
            ));
        }
        positive("http.db_pool_size", self.http.db_pool_size)?;
        positive(
            "http.page_limit",
            usize::try_from(self.http.page_limit).unwrap_or(0),
        )?;
        positive("hub.subscriber_queue", self.hub.subscriber_queue)?;
        positive("log.retention_hours", self.log.retention_hours as usize)?;
        positive(
            "log.prune_interval_secs",
            self.log.prune_interval_secs as usize,
        )?;
        positive(
            "auth.revocation_check_secs",
            self.auth.revocation_check_secs as usize,
        )?;
        positive("appender.max_batch_events", self.appender.max_batch_events)?;
        positive("appender.max_batch_bytes", self.appender.max_batch_bytes)?;
        positive("appender.queue_events", self.appender.queue_events)?;
        positive("ws.auth_timeout_secs", self.ws.auth_timeout_secs as usize)?;
        positive("ws.max_subscriptions", self.ws.max_subscriptions)?;
        positive("ws.max_message_bytes", self.ws.max_message_bytes)?;
        positive("ws.queue", self.ws.queue)?;
        positive("ws.ping_secs", self.ws.ping_secs as usize)?;
        positive("webhooks.timeout_ms", self.webhooks.timeout_ms as usize)?;
        positive("webhooks.max_attempts", self.webhooks.max_attempts)?;
        positive("webhooks.concurrency", self.webhooks.concurrency)?;
        positive(
            "webhooks.endpoint_concurrency",
            self.webhooks.endpoint_concurrency,
        )?;
        positive(
            "webhooks.poll_interval_ms",
            self.webhooks.poll_interval_ms as usize,
        )?;
        positive("webhooks.batch_max_bytes", self.webhooks.batch_max_bytes)?;
        positive(
            "webhooks.template_max_bytes",
            self.webhooks.template_max_bytes,
        )?;
        crate::webhooks::schedule::parse_schedule(&self.webhooks.retry_schedule)
            .map_err(|e| ConfigError::key("webhooks.retry_schedule", e))?;
        Ok(())
    }
}

fn validate_mongo(key: &str, m: &MongoSourceConfig) -> Result<(), ConfigError> {
    check_identifier(&format!("{key}.name"), &m.name, 40)?;
    if !(m.uri.starts_with("mongodb://") || m.uri.starts_with("mongodb+srv://")) {
        return Err(ConfigError::key(
            format!("{key}.uri"),
            "expected a MongoDB connection string starting with mongodb:// or mongodb+srv://",
        ));
    }
    // Database names: no empty name, none of /\. "$ and space, under 64 bytes.
    if m.database.is_empty()
        || m.database.len() >= 64
        || m.database.contains(['/', '\\', '.', ' ', '"', '$', '\0'])
    {
        return Err(ConfigError::key(
            format!("{key}.database"),
            format!("{:?} is not a valid MongoDB database name", m.database),
        ));
    }
    if m.collections.is_empty() {
        return Err(ConfigError::key(
            format!("{key}.collections"),
            "expected at least one collection, e.g. [{collection=\"orders\", tenant_field=\"tenantId\"}]",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (j, c) in m.collections.iter().enumerate() {
        let ckey = format!("{key}.collections[{j}]");
        if c.collection.is_empty()
            || c.collection.contains(['$', '\0'])
            || c.collection.starts_with("system.")
        {
            return Err(ConfigError::key(
                format!("{ckey}.collection"),
                format!("{:?} is not a capturable collection name", c.collection),
            ));
        }
        let path_ok = !c.tenant_field.is_empty()
            && c.tenant_field
                .split('.')
                .all(|part| !part.is_empty() && !part.starts_with('$') && !part.contains('\0'));
        if !path_ok {
            return Err(ConfigError::key(
                format!("{ckey}.tenant_field"),
                format!(
                    "expected a dotted field path like tenantId or owner.org, got {:?}",
                    c.tenant_field
                ),
            ));
        }
        if !seen.insert(c.collection.clone()) {
            return Err(ConfigError::key(
                format!("{ckey}.collection"),
                format!("{} is listed twice", c.collection),
            ));
        }
    }
    if !matches!(
        m.full_document.as_str(),
        "updateLookup" | "whenAvailable" | "required"
    ) {
        return Err(ConfigError::key(
            format!("{key}.full_document"),
            format!(
                "expected updateLookup, whenAvailable or required, got {:?}",
                m.full_document
            ),
        ));
    }
    positive(
        &format!("{key}.reconnect_max_backoff_ms"),
        m.reconnect_max_backoff_ms as usize,
    )
}

/// The largest request head (request line and headers) the HTTP server
/// accepts (`http::conn`).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The largest `http.max_query_bytes`: half the request head limit, which
/// leaves the other half for the path and the headers.
pub const MAX_QUERY_BYTES_LIMIT: usize = MAX_HEAD_BYTES / 2;

fn positive(key: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::key(key, "expected a number greater than 0"));
    }
    Ok(())
}

fn check_identifier(key: &str, v: &str, max: usize) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !v.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(ConfigError::key(
            key,
            format!("expected 1 to {max} characters of a-z, 0-9 and _ (not starting with a digit), got {v:?}"),
        ))
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    crate::pgconn::Target::parse(url).map(|_| ()).map_err(|e| {
        ConfigError::key(
            key,
            format!("expected a Postgres URL like postgres://user:password@host:5432/db?sslmode=verify-full ({e})"),
        )
    })
}

fn apply_env(doc: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let known: BTreeMap<String, &str> = KEYS.iter().map(|k| (env_name(k.path), k.path)).collect();
    for (var, raw) in env {
        if !var.starts_with("SLUICE_") || NON_KEY_VARS.contains(&var.as_str()) {
            continue;
        }
        let Some(path) = known.get(var) else {
            return Err(ConfigError::UnknownEnv {
                var: var.clone(),
                guess: var["SLUICE_".len()..]
                    .to_ascii_lowercase()
                    .replace('_', "."),
            });
        };
        let err = |expected| ConfigError::Env {
            var: var.clone(),
            key: (*path).to_owned(),
            expected,
            got: raw.clone(),
        };
        let value = match kind_of(path) {
            Kind::Str => toml::Value::String(raw.clone()),
            Kind::Int => toml::Value::Integer(
                raw.trim()
                    .parse::<i64>()
                    .map_err(|_| err("a whole number"))?,
            ),
            Kind::Bool => match raw.trim() {
                "true" | "1" => toml::Value::Boolean(true),
                "false" | "0" => toml::Value::Boolean(false),
                _ => return Err(err("true or false")),
            },
            Kind::TableList => {
                let wrapped = format!("v = {raw}");
                let parsed: toml::Table = wrapped
                    .parse()
                    .map_err(|_| err("a TOML array like [{table=\"public.orders\", tenant_column=\"tenant_id\"}] (see the README)"))?;
                parsed
                    .get("v")
                    .cloned()
                    .ok_or_else(|| err("a TOML array"))?
            }
        };
        set_path(doc, path, value);
    }
    Ok(())
}

fn set_path(doc: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut table = doc;
    for part in parts {
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(t) = entry else { return };
        table = t;
    }
    table.insert(last.to_owned(), value);
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
