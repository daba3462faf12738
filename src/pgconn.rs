//! Connections to Postgres: the one place Sluice opens them (state and
//! source sessions, the HTTP readers' pools, and the settings of the
//! replication connections), and the one renderer of their errors.
//!
//! A connection string (URL or `key=value` form) is read with libpq's TLS
//! parameters, which tokio-postgres' own parser does not know or rejects:
//! `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`),
//! `sslrootcert`, `sslcert` and `sslkey`. [`Target::parse`] takes them out
//! and hands the rest to tokio-postgres; the rustls connector for a string
//! is built once per process and reused by every session and pool on it.
//!
//! Invariant: libpq's meaning of each mode. `prefer` tries TLS and falls
//! back to plain when the server refuses it (or its `pg_hba.conf` turns
//! the TLS session away); `require` encrypts without
//! verifying, unless `sslrootcert` is given, when it verifies the chain like
//! `verify-ca` (libpq's rule); `verify-ca` checks the chain against
//! `sslrootcert` (without it, or with `sslrootcert=system`, against the
//! system's CA bundle, see [`system_bundle`]); `verify-full` also checks
//! that the certificate names the host (a DNS name, or an IP address in its
//! SAN).
//!
//! Invariant: a Postgres error is shown with the server's own words
//! ([`describe`]: severity, message, SQLSTATE, DETAIL, HINT; the whole cause
//! of an I/O or TLS failure), and a failed connection names the address.
//! Server NOTICEs on Sluice's sessions go to `tracing` at debug level, never
//! to an operator's terminal.
//!
//! Boundary: knows nothing of what a session is for; callers name it
//! (`application_name`) and add their session `options`.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Connection, Notification, Socket};

/// The TLS parameters this module reads itself (libpq's names).
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`, without `allow` (plain first, TLS if refused), which
/// no managed service needs and which is refused with a precise message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, PgError> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(PgError::Url(format!(
                    "sslmode={other:?}: expected disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where verified certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's CA bundle ([`system_bundle`]), else the Mozilla root
    /// set built in (`webpki-roots`).
    System,
    /// The PEM file named by `sslrootcert`.
    File(PathBuf),
}

/// What a connection string asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode as given (default `prefer`, as libpq).
    pub mode: SslMode,
    /// `sslrootcert`, if given.
    pub root_cert: Option<Roots>,
    /// `sslcert` and `sslkey`: a client certificate.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// The mode that applies: `require` with `sslrootcert` verifies the
    /// chain (libpq's rule).
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }

    fn roots(&self) -> Roots {
        self.root_cert.clone().unwrap_or(Roots::System)
    }

    /// How verification was configured, for error messages.
    fn describe(&self) -> String {
        let mode = self.effective_mode();
        let roots = match self.roots() {
            Roots::System => match system_bundle() {
                Some(p) => format!("the system's CA bundle {}", p.display()),
                None => "the built-in Mozilla roots".to_owned(),
            },
            Roots::File(p) => format!("sslrootcert={}", p.display()),
        };
        match mode {
            SslMode::VerifyCa | SslMode::VerifyFull if mode != self.mode => {
                format!(
                    "sslmode={} with sslrootcert verifies like verify-ca, against {roots}",
                    self.mode.as_str()
                )
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                format!("sslmode={}, against {roots}", mode.as_str())
            }
            _ => format!("sslmode={}", mode.as_str()),
        }
    }
}

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct Target {
    /// tokio-postgres' settings (its `sslmode` is `disable`, `prefer` or
    /// `require`: whether TLS is attempted or demanded; verification is
    /// the connector's).
    pub config: tokio_postgres::Config,
    pub tls: TlsSettings,
}

impl Target {
    /// Reads a connection string (no I/O: certificate files are read when
    /// the connector is built).
    pub fn parse(conninfo: &str) -> Result<Target, PgError> {
        let (rest, params) = split_tls_params(conninfo)?;
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e: tokio_postgres::Error| {
                // Its Display is "invalid connection string"; the cause says what.
                PgError::Url(
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |c| c.to_string()),
                )
            })?;
        let mut tls = TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
        };
        let (mut cert, mut key) = (None, None);
        for (k, v) in params {
            match k.as_str() {
                "sslmode" => tls.mode = SslMode::parse(&v)?,
                "sslrootcert" if v == "system" => tls.root_cert = Some(Roots::System),
                "sslrootcert" => tls.root_cert = Some(Roots::File(PathBuf::from(v))),
                "sslcert" => cert = Some(PathBuf::from(v)),
                "sslkey" => key = Some(PathBuf::from(v)),
                _ => unreachable!("split_tls_params returns only TLS_PARAMS"),
            }
        }
        tls.client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(PgError::Url(
                    "sslcert is given without sslkey: a client certificate needs both".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(PgError::Url(
                    "sslkey is given without sslcert: a client certificate needs both".into(),
                ))
            }
        };
        config.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Target { config, tls })
    }

    /// `host:port` of each server the string names (its `hostaddr` where
    /// given), for messages.
    pub fn addresses(&self) -> String {
        let ports = self.config.get_ports();
        let port = |i: usize| {
            ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432)
        };
        let hosts = self.config.get_hosts();
        let addrs = self.config.get_hostaddrs();
        let n = hosts.len().max(addrs.len());
        let list: Vec<String> = (0..n)
            .map(|i| {
                let with_port = |h: &str| {
                    if h.contains(':') {
                        format!("[{h}]:{}", port(i))
                    } else {
                        format!("{h}:{}", port(i))
                    }
                };
                match (addrs.get(i), hosts.get(i)) {
                    (Some(a), Some(tokio_postgres::config::Host::Tcp(h))) => {
                        format!("{} ({h})", with_port(&a.to_string()))
                    }
                    (Some(a), _) => with_port(&a.to_string()),
                    (None, Some(tokio_postgres::config::Host::Tcp(h))) => with_port(h),
                    (None, Some(tokio_postgres::config::Host::Unix(p))) => {
                        format!("{}/.s.PGSQL.{}", p.display(), port(i))
                    }
                    (None, None) => with_port("localhost"),
                }
            })
            .collect();
        if list.is_empty() {
            "localhost:5432".to_owned()
        } else {
            list.join(", ")
        }
    }
}

/// A Postgres failure, as the operator should read it.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string is not valid.
    #[error("invalid connection string: {0}")]
    Url(String),
    /// A certificate or key file named by the string cannot be used.
    #[error("{0}")]
    TlsSetup(String),
    /// Connecting failed (the address, then what failed).
    #[error("connecting to {addr}: {}", describe(.error))]
    Connect {
        addr: String,
        error: tokio_postgres::Error,
    },
    /// A statement failed or the session broke.
    #[error("{}", describe(.0))]
    Postgres(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Postgres(e)
    }
}

impl PgError {
    /// The driver's error, when there is one.
    pub fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            PgError::Connect { error, .. } | PgError::Postgres(error) => Some(error),
            _ => None,
        }
    }

    /// The server's SQLSTATE, when the server answered with an error.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.postgres().and_then(|e| e.code())
    }

    /// Whether reconnecting and retrying can succeed (the database went
    /// away, or a transaction lost a race), as opposed to a fault that
    /// needs an operator (a bad string, certificate, password or grant).
    pub fn is_retryable(&self) -> bool {
        self.postgres().is_some_and(is_retryable)
    }
}

/// Whether retrying after reconnecting can succeed.
pub fn is_retryable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: the connection broke (or a handshake failed, which
        // may be a reset as well as a certificate: retried, and logged).
        None => true,
        Some(code) => {
            let c = code.code();
            // 08 connection exception, 40 transaction rollback, 53 insufficient
            // resources, 57P01..57P03 admin shutdown / crash / cannot connect now
            c.starts_with("08")
                || c.starts_with("40")
                || c.starts_with("53")
                || c.starts_with("57P")
        }
    }
}

/// A tokio-postgres error in the server's own words: for an error the
/// server sent, `SEVERITY: message (SQLSTATE code)` and its DETAIL and
/// HINT; otherwise what failed and each cause (`error connecting to server:
/// Connection refused (os error 111)`). tokio-postgres' own `Display` says
/// only "db error" for the first kind.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            text.push_str("; DETAIL: ");
            text.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            text.push_str("; HINT: ");
            text.push_str(hint);
        }
        return text;
    }
    causes(e.to_string(), std::error::Error::source(e))
}

/// An error and each of its causes, `: `-separated, for an operator: a
/// tokio-postgres error anywhere in the chain in the server's own words
/// ([`describe`]), and a cause whose text its parent already shows (a
/// `{0}` in the parent's message) not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<tokio_postgres::Error>() {
        Some(pg) => describe(pg),
        None => causes(e.to_string(), e.source()),
    }
}

fn causes(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(s) = source {
        let more = match s.downcast_ref::<tokio_postgres::Error>() {
            Some(pg) => describe(pg),
            None => s.to_string(),
        };
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        if s.is::<tokio_postgres::Error>() {
            break;
        }
        source = s.source();
    }
    text
}

/// A parsed string and its connector, built once per string per process.
struct Prepared {
    target: Target,
    tls: RustlsConnect,
}

/// Strings are few (the source's and the state's); their connectors are
/// kept for the process's life, so certificate files are read once.
fn prepared(conninfo: &str) -> Result<Arc<Prepared>, PgError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Prepared>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(conninfo)
    {
        return Ok(p.clone());
    }
    let target = Target::parse(conninfo)?;
    let tls = RustlsConnect::new(&target.tls)?;
    let p = Arc::new(Prepared { target, tls });
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(conninfo.to_owned(), p.clone());
    Ok(p)
}

/// What a session is for.
#[derive(Debug, Clone, Copy)]
pub struct Session<'a> {
    /// `application_name`, unless the string sets one (so an operator can
    /// tell Sluice's sessions apart in `pg_stat_activity`).
    pub application_name: &'a str,
    /// `-c name=value …`, added after the string's own `options`.
    pub options: Option<&'a str>,
}

impl<'a> Session<'a> {
    pub fn named(application_name: &'a str) -> Session<'a> {
        Session {
            application_name,
            options: None,
        }
    }

    pub fn with_options(self, options: &'a str) -> Session<'a> {
        Session {
            options: Some(options),
            ..self
        }
    }
}

fn session_config(target: &Target, session: Session<'_>) -> tokio_postgres::Config {
    let mut config = target.config.clone();
    if config.get_application_name().is_none() {
        config.application_name(session.application_name);
    }
    if let Some(extra) = session.options {
        let options = match config.get_options() {
            Some(own) if !own.trim().is_empty() => format!("{own} {extra}"),
            _ => extra.to_owned(),
        };
        config.options(options);
    }
    config
}

/// A connection whose messages the caller drives.
pub type PgConnection = Connection<Socket, RustlsStream>;

/// Connects; the caller must drive the connection (see [`connect`] and
/// [`connect_listening`], which do).
pub async fn connect_raw(
    conninfo: &str,
    session: Session<'_>,
) -> Result<(Client, PgConnection), PgError> {
    let p = prepared(conninfo)?;
    let config = session_config(&p.target, session);
    connect_config(&p.tls, p.target.tls.mode, &config)
        .await
        .map_err(|error| PgError::Connect {
            addr: p.target.addresses(),
            error,
        })
}

/// Connects with `config`. Under `sslmode=prefer`, a failure after a TLS
/// handshake began is followed by one plain attempt, as libpq does (a
/// server whose `pg_hba.conf` has `hostnossl` lines rejects the TLS
/// session). When both fail, the error reported is the first, unless the
/// first was `pg_hba.conf` turning TLS away (SQLSTATE 28000): then the
/// plain attempt's says more.
async fn connect_config(
    tls: &RustlsConnect,
    mode: SslMode,
    config: &tokio_postgres::Config,
) -> Result<(Client, PgConnection), tokio_postgres::Error> {
    let attempt = tls.attempt();
    match config.connect(attempt.clone()).await {
        Err(first) if mode == SslMode::Prefer && attempt.handshake_began() => {
            let mut plain = config.clone();
            plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
            plain.connect(tls.clone()).await.map_err(|second| {
                let hba = tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION;
                if first.code() == Some(&hba) {
                    second
                } else {
                    first
                }
            })
        }
        other => other,
    }
}

/// Connects; the connection runs in the background (server notices to
/// debug logs) and ends when the client is dropped.
pub async fn connect(conninfo: &str, session: Session<'_>) -> Result<Client, PgError> {
    let (client, conn) = connect_raw(conninfo, session).await?;
    tokio::spawn(drive(conn, |_| {}));
    Ok(client)
}

/// Connects, calling `on_notification` for each `NOTIFY` the session
/// receives (after its `LISTEN`); the returned task ends with the
/// connection.
pub async fn connect_listening(
    conninfo: &str,
    session: Session<'_>,
    on_notification: impl FnMut(Notification) + Send + 'static,
) -> Result<(Client, tokio::task::JoinHandle<()>), PgError> {
    let (client, conn) = connect_raw(conninfo, session).await?;
    Ok((client, tokio::spawn(drive(conn, on_notification))))
}

/// Polls a connection to its end: notices to debug logs, notifications to
/// `on_notification`.
async fn drive(mut conn: PgConnection, mut on_notification: impl FnMut(Notification)) {
    let ended = std::future::poll_fn(|cx| loop {
        match conn.poll_message(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(Some(Ok(AsyncMessage::Notice(n)))) => {
                tracing::debug!(
                    severity = n.severity(),
                    message = n.message(),
                    "postgres notice"
                );
            }
            Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => on_notification(n),
            Poll::Ready(Some(Ok(_))) => {}
        }
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %describe(&e), "postgres connection ended");
    }
}

/// A deadpool manager whose connections are made here (TLS, notices to
/// debug logs), each session with `session`'s name and options.
pub fn pool_manager(
    conninfo: &str,
    session: Session<'_>,
    recycling: deadpool_postgres::ManagerConfig,
) -> Result<deadpool_postgres::Manager, PgError> {
    let p = prepared(conninfo)?;
    let config = session_config(&p.target, session);
    Ok(deadpool_postgres::Manager::from_connect(
        config,
        PoolConnect(p.tls.clone(), p.target.tls.mode),
        recycling,
    ))
}

struct PoolConnect(RustlsConnect, SslMode);

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let (tls, mode) = (self.0.clone(), self.1);
        let config = pg_config.clone();
        Box::pin(async move {
            let (client, conn) = connect_config(&tls, mode, &config).await?;
            Ok((client, tokio::spawn(drive(conn, |_| {}))))
        })
    }
}

// ---- the connection string ----

/// Splits libpq's TLS parameters out of a connection string: the rest
/// (for tokio-postgres) and the TLS parameters' decoded values, in order.
fn split_tls_params(conninfo: &str) -> Result<(String, Vec<(String, String)>), PgError> {
    let s = conninfo.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let Some((base, query)) = s.split_once('?') else {
            return Ok((s.to_owned(), Vec::new()));
        };
        let mut kept = Vec::new();
        let mut tls = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k)?;
            if TLS_PARAMS.contains(&key.as_str()) {
                tls.push((key, percent_decode(v)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, tls));
    }
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for (key, value, raw) in key_values(s)? {
        if TLS_PARAMS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            kept.push(raw);
        }
    }
    Ok((kept.join(" "), tls))
}

fn percent_decode(s: &str) -> Result<String, PgError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PgError::Url(format!("invalid percent-encoding in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PgError::Url(format!("{s:?} is not UTF-8 once decoded")))
}

/// The `key = value` pairs of a libpq keyword/value string: key, decoded
/// value, and the pair as written.
fn key_values(s: &str) -> Result<Vec<(String, String, &str)>, PgError> {
    let bytes = s.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= bytes.len() {
            return Ok(pairs);
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_owned();
        i = skip_ws(i);
        if bytes.get(i) != Some(&b'=') {
            return Err(PgError::Url(format!(
                "missing \"=\" after {key:?} in connection string"
            )));
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(PgError::Url(format!(
                            "unterminated quoted value of {key:?} in connection string"
                        )))
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    value.push(bytes[i + 1]);
                    i += 2;
                } else {
                    value.push(bytes[i]);
                    i += 1;
                }
            }
        }
        let value = String::from_utf8(value)
            .map_err(|_| PgError::Url(format!("the value of {key:?} is not UTF-8")))?;
        pairs.push((key, value, &s[start..i]));
    }
}

// ---- TLS for tokio-postgres (rustls) ----

/// Builds the rustls client configuration for `tls`: the verifier its mode
/// asks for, the roots, the client certificate.
pub(crate) fn client_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, PgError> {
    // Explicit provider: both of rustls' providers are compiled in (other
    // crates enable aws-lc-rs), so there is no unambiguous default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::TlsSetup(format!("TLS: {e}")))?;
    let roots = Arc::new(root_store(&tls.roots())?);
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match tls.effective_mode() {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(NoVerification {
            algorithms: provider.signature_verification_algorithms,
        }),
        mode => {
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| PgError::TlsSetup(format!("TLS verifier: {e}")))?;
            Arc::new(Verification {
                webpki,
                check_name: mode == SslMode::VerifyFull,
            })
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs("sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                PgError::TlsSetup(format!(
                    "sslkey {}: cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| PgError::TlsSetup(format!("sslcert/sslkey: {e}")))?
        }
    };
    // Postgres 17 requires this ALPN name for `sslnegotiation=direct`;
    // older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn read_certs(param: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PgError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            PgError::TlsSetup(format!(
                "{param} {}: cannot read PEM certificates: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(PgError::TlsSetup(format!(
            "{param} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Where the usual distributions keep the system's CA bundle (Debian and
/// Ubuntu, RHEL and Fedora, Alpine, SUSE), the same places OpenSSL (and so
/// libpq's `sslrootcert=system`) looks.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The system's CA bundle: `$SSL_CERT_FILE`, else the first of
/// [`SYSTEM_BUNDLES`] that exists; None when there is none (a minimal
/// image), and the built-in Mozilla roots are used. A file, so that the
/// replication connection (which takes a path) uses the same roots.
pub fn system_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

fn root_store(roots: &Roots) -> Result<rustls::RootCertStore, PgError> {
    let mut store = rustls::RootCertStore::empty();
    let file = match roots {
        Roots::System => system_bundle().map(|p| ("system CA bundle", p)),
        Roots::File(p) => Some(("sslrootcert", p.clone())),
    };
    match file {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some((param, path)) => {
            let (added, _) = store.add_parsable_certificates(read_certs(param, &path)?);
            if added == 0 {
                return Err(PgError::TlsSetup(format!(
                    "{param} {}: no usable CA certificate in the file",
                    path.display()
                )));
            }
        }
    }
    Ok(store)
}

/// `verify-ca` and `verify-full`: the chain must lead to a root; the name
/// only for `verify-full`.
#[derive(Debug)]
struct Verification {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl rustls::client::danger::ServerCertVerifier for Verification {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encrypted, the certificate not verified
/// (libpq's meaning: protects against eavesdropping, not against a server
/// in the middle). The handshake's signatures are still checked, so the
/// server holds the key of the certificate it shows.
#[derive(Debug)]
struct NoVerification {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tokio-postgres' TLS hook, backed by rustls. With `sslmode=disable`
/// tokio-postgres never asks it for TLS, and nothing is built.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Option<Arc<rustls::ClientConfig>>,
    /// How verification was configured, for error messages.
    described: Arc<str>,
    /// Set when a handshake of this attempt began (the server accepted
    /// TLS); see [`RustlsConnect::attempt`].
    began: Arc<AtomicBool>,
}

impl RustlsConnect {
    fn new(tls: &TlsSettings) -> Result<RustlsConnect, PgError> {
        let config = match tls.mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(client_config(tls)?)),
        };
        Ok(RustlsConnect {
            config,
            described: tls.describe().into(),
            began: Arc::default(),
        })
    }

    /// The same connector, tracking one connection attempt.
    fn attempt(&self) -> RustlsConnect {
        RustlsConnect {
            began: Arc::default(),
            ..self.clone()
        }
    }

    fn handshake_began(&self) -> bool {
        self.began.load(Ordering::Relaxed)
    }
}

/// Why TLS could not be set up with a server.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsHandshake;
    type Error = TlsError;

    /// Called for every connection, also under `sslmode=disable` and for
    /// unix sockets (domain ""), where no handshake follows; so nothing
    /// fails here.
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsHandshake, TlsError> {
        Ok(RustlsHandshake {
            config: self.config.clone(),
            domain: domain.to_owned(),
            described: self.described.clone(),
            began: self.began.clone(),
        })
    }
}

pub struct RustlsHandshake {
    /// None under `sslmode=disable`.
    config: Option<Arc<rustls::ClientConfig>>,
    domain: String,
    described: Arc<str>,
    began: Arc<AtomicBool>,
}

impl TlsConnect<Socket> for RustlsHandshake {
    type Stream = RustlsStream;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, TlsError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            self.began.store(true, Ordering::Relaxed);
            let name = self.domain;
            let config = self
                .config
                .ok_or_else(|| TlsError("TLS is disabled (sslmode=disable)".into()))?;
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| TlsError(format!("{name:?} is not a valid TLS server name")))?;
            tokio_rustls::TlsConnector::from(config)
                .connect(server_name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
                .map_err(|e| {
                    let certificate = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .is_some_and(|r| {
                            matches!(
                                r,
                                rustls::Error::InvalidCertificate(_)
                                    | rustls::Error::NoCertificatesPresented
                            )
                        });
                    if certificate {
                        TlsError(format!(
                            "the server's certificate failed verification for host {name:?} ({}): {e}",
                            self.described
                        ))
                    } else {
                        TlsError(format!("TLS handshake with {name:?} failed ({}): {e}", self.described))
                    }
                })
        })
    }
}

/// A TLS session with a Postgres server.
pub struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl tokio_postgres::tls::TlsStream for RustlsStream {
    /// No `tls-server-end-point` binding: SCRAM runs without `-PLUS`
    /// (tokio-postgres' default `channel_binding=prefer` accepts that).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_params_are_taken_out_and_the_rest_kept() {
        let t = Target::parse(
            "postgres://u:p@db.example:6543/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(t.tls.mode, SslMode::VerifyFull);
        assert_eq!(t.tls.root_cert, Some(Roots::File("/p/ca.pem".into())));
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_dbname(), Some("app"));
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(t.addresses(), "db.example:6543");
    }

    #[test]
    fn key_value_tls_params_are_taken_out_with_quotes_and_escapes() {
        let t = Target::parse(
            r"host=127.0.0.1 port=5433 user=me dbname = 'my db' sslmode=verify-ca sslrootcert='/a b/ca\'s.pem' sslcert=/c.pem sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(t.tls.mode, SslMode::VerifyCa);
        assert_eq!(t.tls.root_cert, Some(Roots::File("/a b/ca's.pem".into())));
        assert_eq!(t.tls.client_cert, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(t.config.get_dbname(), Some("my db"));
        assert_eq!(t.addresses(), "127.0.0.1:5433");
        let t = Target::parse("host=db.example,::1 hostaddr=10.0.0.1,::1 port=1,2").unwrap();
        assert_eq!(t.addresses(), "10.0.0.1:1 (db.example), [::1]:2 (::1)");
    }

    #[test]
    fn require_with_a_root_certificate_verifies_like_verify_ca() {
        let t = Target::parse("postgres://h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(t.tls.effective_mode(), SslMode::VerifyCa);
        let t = Target::parse("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(t.tls.effective_mode(), SslMode::Require);
    }

    #[test]
    fn default_mode_is_prefer_as_in_libpq() {
        let t = Target::parse("postgres://h/db").unwrap();
        assert_eq!(t.tls.mode, SslMode::Prefer);
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
    }

    #[test]
    fn bad_mode_and_half_a_client_certificate_are_refused_precisely() {
        let e = Target::parse("postgres://h/db?sslmode=allow").unwrap_err();
        assert!(
            e.to_string().contains(
                "sslmode=\"allow\": expected disable, prefer, require, verify-ca or verify-full"
            ),
            "{e}"
        );
        let e = Target::parse("host=h sslcert=/c.pem").unwrap_err();
        assert!(
            e.to_string().contains("sslcert is given without sslkey"),
            "{e}"
        );
        let e = Target::parse("host=h sslmode='verify-full").unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = Target::parse("postgres://h/db?sslcrl=/crl.pem").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid connection string: unknown option `sslcrl`"
        );
    }
}
