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
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    TableList,
}

/// Every key, its kind, its default (as shown to operators) and what it does.
/// The README's configuration reference is checked against this list.
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "source.postgres.name",
        "main",
        "name of the source; events carry `source = /sluice/pg/<name>`",
    ),
    (
        "source.postgres.url",
        "(required)",
        "connection URL of the captured database (`postgres://user:pass@host:port/db`)",
    ),
    (
        "source.postgres.slot",
        "sluice_<name>",
        "logical replication slot (pgoutput)",
    ),
    (
        "source.postgres.publication",
        "sluice_<name>",
        "publication listing the captured tables",
    ),
    (
        "source.postgres.tables",
        "(required)",
        "captured tables: `[{table=\"schema.table\", tenant_column=\"col\", fields_only=false, snapshot=\"never\"}]` (`snapshot=\"initial\"`: existing rows as events when the slot is created)",
    ),
    (
        "source.postgres.status_interval_ms",
        "200",
        "how soon a durable append is acknowledged to Postgres (standby status update)",
    ),
    (
        "source.postgres.reconnect_max_backoff_ms",
        "10000",
        "longest wait between reconnection attempts",
    ),
    (
        "source.postgres.heartbeat_secs",
        "10",
        "interval of the heartbeat message that keeps the slot moving while captured tables are quiet (0: off)",
    ),
    (
        "source.postgres.queue_messages",
        "1024",
        "bound on raw replication messages buffered from the server",
    ),
    (
        "source.postgres.backfill_statement_timeout_ms",
        "300000",
        "longest a backfill's chunk query may run on the source before the backfill fails (0: no limit)",
    ),
    (
        "source.mongo",
        "(none)",
        "MongoDB sources, an array: `[{name=\"app\", uri=\"mongodb://…/?replicaSet=rs0\", database=\"app\", collections=[{collection=\"orders\", tenant_field=\"tenantId\", fields_only=false}], full_document=\"updateLookup\", enable_pre_images=true, reconnect_max_backoff_ms=10000}]`",
    ),
    (
        "state.url",
        "source.postgres.url",
        "database holding the log (schema `sluice`); defaults to the source database",
    ),
    (
        "appender.max_batch_events",
        "20000",
        "most events appended in one transaction",
    ),
    (
        "appender.max_batch_bytes",
        "16777216",
        "most envelope bytes appended in one transaction",
    ),
    (
        "appender.queue_events",
        "50000",
        "bound on normalized events waiting for the appender",
    ),
    (
        "http.listen",
        "127.0.0.1:8787",
        "address the HTTP API listens on",
    ),
    (
        "http.heartbeat_secs",
        "15",
        "idle seconds before an SSE comment or NDJSON heartbeat line",
    ),
    (
        "http.retry_ms",
        "2000",
        "the SSE `retry:` hint sent to clients",
    ),
    (
        "http.max_query_bytes",
        "8192",
        "longest accepted query string (at most 32768)",
    ),
    (
        "http.page_limit",
        "1000",
        "most events in one JSON page or one catch-up read",
    ),
    (
        "http.db_pool_size",
        "16",
        "state-database connections shared by HTTP readers",
    ),
    (
        "http.cors_origins",
        "*",
        "origins browsers may call the API from, comma-separated (`*`: any; keys are never cookies); empty: none",
    ),
    (
        "webhooks.timeout_ms",
        "15000",
        "a webhook attempt that has no answer after this long fails",
    ),
    (
        "webhooks.retry_schedule",
        "0s,5s,5m,30m,2h,5h,10h,10h",
        "delay before each attempt (units ms, s, m, h), the last repeating; jittered ±20 %",
    ),
    (
        "webhooks.max_attempts",
        "8",
        "attempts before a delivery is dead, for endpoints that do not set `max_attempts`",
    ),
    (
        "webhooks.concurrency",
        "64",
        "webhook requests in flight at once, per process",
    ),
    (
        "webhooks.endpoint_concurrency",
        "8",
        "requests in flight to one endpoint, per process (ordered endpoints: 1)",
    ),
    (
        "webhooks.poll_interval_ms",
        "1000",
        "how often dispatchers look for due retries and other nodes' deliveries",
    ),
    (
        "webhooks.secret_overlap_secs",
        "86400",
        "how long the previous secret keeps signing after a rotation",
    ),
    (
        "webhooks.allow_private_addresses",
        "false",
        "let endpoints resolve to loopback, private, link-local or metadata addresses",
    ),
    (
        "ws.auth_timeout_secs",
        "10",
        "a WebSocket that has not authenticated after this long is closed (4001)",
    ),
    (
        "ws.max_subscriptions",
        "100",
        "subscriptions one WebSocket connection may hold",
    ),
    (
        "ws.max_message_bytes",
        "65536",
        "largest client message accepted (larger ones get a `message_too_large` error)",
    ),
    (
        "ws.queue",
        "256",
        "frames waiting to be written to one WebSocket; when full, its subscriptions fall back to the log",
    ),
    (
        "ws.ping_secs",
        "30",
        "interval of server pings; a connection silent for two intervals is closed",
    ),
    (
        "hub.subscriber_queue",
        "1024",
        "events buffered per live subscriber before it catches up from the log",
    ),
    (
        "log.retention_hours",
        "168",
        "events older than this are pruned",
    ),
    (
        "log.prune_interval_secs",
        "60",
        "how often retention pruning runs",
    ),
    (
        "auth.jwt_hs256_secret",
        "(none)",
        "secret for HS256 JWTs (set it from the environment)",
    ),
    (
        "auth.jwt_rs256_public_key",
        "(none)",
        "PEM public key for RS256 JWTs",
    ),
    (
        "auth.jwt_tenant_claim",
        "tenant",
        "JWT claim holding the tenant id",
    ),
    (
        "auth.jwt_role_claim",
        "role",
        "JWT claim holding the role (anon or service)",
    ),
    (
        "auth.revocation_check_secs",
        "2",
        "how often open streams re-check that their key is still valid",
    ),
];

fn kind_of(path: &str) -> Kind {
    match path {
        "source.postgres.tables" | "source.mongo" => Kind::TableList,
        "source.postgres.status_interval_ms"
        | "source.postgres.reconnect_max_backoff_ms"
        | "source.postgres.queue_messages"
        | "source.postgres.heartbeat_secs"
        | "source.postgres.backfill_statement_timeout_ms"
        | "appender.max_batch_events"
        | "appender.max_batch_bytes"
        | "appender.queue_events"
        | "http.heartbeat_secs"
        | "http.retry_ms"
        | "http.max_query_bytes"
        | "http.page_limit"
        | "http.db_pool_size"
        | "webhooks.timeout_ms"
        | "webhooks.max_attempts"
        | "webhooks.concurrency"
        | "webhooks.endpoint_concurrency"
        | "webhooks.poll_interval_ms"
        | "webhooks.secret_overlap_secs"
        | "ws.auth_timeout_secs"
        | "ws.max_subscriptions"
        | "ws.max_message_bytes"
        | "ws.queue"
        | "ws.ping_secs"
        | "hub.subscriber_queue"
        | "log.retention_hours"
        | "log.prune_interval_secs"
        | "auth.revocation_check_secs" => Kind::Int,
        "webhooks.allow_private_addresses" => Kind::Bool,
        _ => Kind::Str,
    }
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
        listen: String = "127.0.0.1:8787".to_owned(),
        heartbeat_secs: u64 = 15,
        retry_ms: u64 = 2000,
        max_query_bytes: usize = 8192,
        page_limit: i64 = 1000,
        db_pool_size: usize = 16,
        cors_origins: String = "*".to_owned(),
    }
);

section!(
    /// WebSocket sessions.
    WsConfig {
        auth_timeout_secs: u64 = 10,
        max_subscriptions: usize = 100,
        max_message_bytes: usize = 65536,
        queue: usize = 256,
        ping_secs: u64 = 30,
    }
);

section!(
    /// Webhook delivery.
    WebhooksConfig {
        timeout_ms: u64 = 15000,
        retry_schedule: String = "0s,5s,5m,30m,2h,5h,10h,10h".to_owned(),
        max_attempts: usize = 8,
        concurrency: usize = 64,
        endpoint_concurrency: usize = 8,
        poll_interval_ms: u64 = 1000,
        secret_overlap_secs: u64 = 86400,
        allow_private_addresses: bool = false,
    }
);

section!(
    /// The live fan-out.
    HubConfig {
        subscriber_queue: usize = 1024,
    }
);

section!(
    /// The log's retention.
    LogConfig {
        retention_hours: u64 = 168,
        prune_interval_secs: u64 = 60,
    }
);

section!(
    /// Credentials: API keys live in the state database; JWTs are verified
    /// with these settings.
    AuthConfig {
        jwt_hs256_secret: Option<String> = None,
        jwt_rs256_public_key: Option<String> = None,
        jwt_tenant_claim: String = "tenant".to_owned(),
        jwt_role_claim: String = "role".to_owned(),
        revocation_check_secs: u64 = 2,
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
}

fn default_backfill_statement_timeout_ms() -> u64 {
    300_000
}

fn default_heartbeat_secs() -> u64 {
    10
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
}

impl Default for AppenderConfig {
    fn default() -> Self {
        AppenderConfig {
            max_batch_events: default_max_batch_events(),
            max_batch_bytes: default_max_batch_bytes(),
            queue_events: default_queue_events(),
        }
    }
}

fn default_source_name() -> String {
    "main".to_owned()
}
fn default_status_interval_ms() -> u64 {
    200
}
fn default_reconnect_max_backoff_ms() -> u64 {
    10_000
}
fn default_queue_messages() -> usize {
    1024
}
fn default_max_batch_events() -> usize {
    20_000
}
fn default_max_batch_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_queue_events() -> usize {
    50_000
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
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
                let key = e.path().to_string();
                let message = e
                    .inner()
                    .to_string()
                    .replace("expected usize", "expected a whole number")
                    .replace("expected u64", "expected a whole number");
                ConfigError::key(if key == "." { String::new() } else { key }, message)
            })?;
        config.validate()?;
        Ok(config)
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

    fn validate(&self) -> Result<(), ConfigError> {
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
    let known: BTreeMap<String, &str> = KEYS.iter().map(|(k, _, _)| (env_name(k), *k)).collect();
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
