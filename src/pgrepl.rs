//! Sluice's own replication connection: the streaming-replication
//! sub-protocol of Postgres' wire protocol, spoken over TCP, a unix socket
//! or TLS (the same rustls settings as every other connection,
//! `pgconn`).
//!
//! Why our own: the replication options decide what Sluice can read
//! (`proto_version` 2–4 with `streaming`, `two_phase`, `binary`), and the
//! connection string decides where (several hosts, `target_session_attrs`
//! for a failover pair). Both are ours to choose, so the client is too:
//! framing, authentication (trust, password, MD5, SCRAM-SHA-256 through
//! `postgres-protocol`'s implementation), simple queries on a replication
//! session, and the copy-both stream with its standby status updates.
//!
//! One connection is a [`ReplConn`] (authenticated, before
//! `START_REPLICATION`: replication commands and plain SQL as simple
//! queries); [`ReplConn::start`] turns it into a [`ReplStream`], whose
//! worker task reads the socket, hands the server's messages over a
//! bounded channel and sends the acknowledged position (raised with
//! [`ReplStream::update_applied_lsn`]) back at most once per status
//! interval, at once when the server asks for a reply, and at least once
//! per wakeup interval while idle. A consumer that falls behind stops the
//! reading (the channel is bounded), never the status updates, so the
//! server's `wal_sender_timeout` is not hit by a slow appender.
//!
//! Invariant: every length on the wire is checked before it is used; a
//! message over [`MAX_MESSAGE`] ends the connection with a precise error
//! instead of an allocation of that size.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_postgres::config::{Host, TargetSessionAttrs};
use tokio_util::sync::CancellationToken;

use crate::pgconn::{PgError, SslMode, Target, TlsSettings};

/// The largest backend message accepted (a row change is one message; a
/// row over this cannot be a row Postgres stores, 1 GiB per value).
pub const MAX_MESSAGE: usize = 1 << 30;

/// Microseconds between the Unix and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A failure of a replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("{0}")]
    Url(String),
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: String },
    #[error("TLS with {addr}: {error}")]
    Tls { addr: String, error: String },
    #[error("{addr}: {error}")]
    Server {
        addr: String,
        error: Box<ServerError>,
    },
    #[error("authentication with {addr}: {error}")]
    Auth { addr: String, error: String },
    #[error("{addr}: {what} (the connection was closed)")]
    Io { addr: String, what: String },
    #[error("{addr}: protocol violation: {what}")]
    Protocol { addr: String, what: String },
    #[error("{addr}: {why}")]
    Unsuitable { addr: String, why: String },
    #[error("no server of the connection string could be used: {}", .0.join("; "))]
    NoHost(Vec<String>),
    #[error("the replication connection was closed")]
    Closed,
}

impl ReplError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

impl From<PgError> for ReplError {
    fn from(e: PgError) -> Self {
        ReplError::Url(e.to_string())
    }
}

/// An `ErrorResponse`, in the server's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; DETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; HINT: {h}")?;
        }
        Ok(())
    }
}

fn parse_error(payload: &[u8]) -> ServerError {
    let mut e = ServerError {
        severity: "ERROR".into(),
        code: "XX000".into(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut rest = payload;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        rest = tail.get(end + 1..).unwrap_or_default();
        match kind {
            b'V' => e.severity = value,
            b'S' if e.severity == "ERROR" => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

/// One server of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `connect` is the `hostaddr` when given, else the host name; `name`
    /// is the host name (checked against the certificate by
    /// `verify-full`).
    Tcp {
        connect: String,
        name: String,
        port: u16,
    },
    /// A unix-domain socket directory.
    Unix { dir: std::path::PathBuf, port: u16 },
}

impl Endpoint {
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Tcp {
                connect,
                name,
                port,
            } => {
                let at = if connect.contains(':') {
                    format!("[{connect}]:{port}")
                } else {
                    format!("{connect}:{port}")
                };
                if connect == name {
                    at
                } else {
                    format!("{at} ({name})")
                }
            }
            Endpoint::Unix { dir, port } => format!("{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// Where and as whom a replication connection connects: every server of
/// the connection string, tried in order.
#[derive(Clone)]
pub struct ReplTarget {
    pub endpoints: Vec<Endpoint>,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub database: String,
    pub tls: TlsSettings,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    /// `target_session_attrs`: `read-write` skips a standby, `read-only`
    /// a primary.
    pub session_attrs: TargetSessionAttrs,
    pub connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for ReplTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplTarget")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("tls", &self.tls)
            .field("session_attrs", &self.session_attrs)
            .finish_non_exhaustive()
    }
}

impl ReplTarget {
    /// Reads a connection string (URL or `key=value`), with the same
    /// meaning as every other connection of Sluice's.
    pub fn parse(conninfo: &str) -> Result<ReplTarget, ReplError> {
        let target = Target::parse(conninfo)?;
        let pc = &target.config;
        let hosts = pc.get_hosts();
        let addrs = pc.get_hostaddrs();
        let ports = pc.get_ports();
        let n = hosts.len().max(addrs.len()).max(1);
        if ports.len() > 1 && ports.len() != n {
            return Err(ReplError::Url(format!(
                "{} ports for {n} hosts: give one port, or one per host",
                ports.len()
            )));
        }
        let port = |i: usize| {
            ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432)
        };
        let mut endpoints = Vec::with_capacity(n);
        for i in 0..n {
            let ep = match (addrs.get(i), hosts.get(i)) {
                (Some(a), Some(Host::Tcp(h))) => Endpoint::Tcp {
                    connect: a.to_string(),
                    name: h.clone(),
                    port: port(i),
                },
                (Some(a), _) => Endpoint::Tcp {
                    connect: a.to_string(),
                    name: a.to_string(),
                    port: port(i),
                },
                (None, Some(Host::Tcp(h))) => Endpoint::Tcp {
                    connect: h.clone(),
                    name: h.clone(),
                    port: port(i),
                },
                (None, Some(Host::Unix(p))) => Endpoint::Unix {
                    dir: p.clone(),
                    port: port(i),
                },
                (None, None) => Endpoint::Tcp {
                    connect: "localhost".into(),
                    name: "localhost".into(),
                    port: port(i),
                },
            };
            endpoints.push(ep);
        }
        let tls_config = match target.tls.mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(
                crate::pgconn::client_config(&target.tls).map_err(ReplError::from)?,
            )),
        };
        let user = pc.get_user().unwrap_or("postgres").to_owned();
        Ok(ReplTarget {
            database: pc.get_dbname().unwrap_or(&user).to_owned(),
            password: pc.get_password().map(<[u8]>::to_vec),
            user,
            endpoints,
            tls: target.tls.clone(),
            tls_config,
            session_attrs: pc.get_target_session_attrs(),
            connect_timeout: pc.get_connect_timeout().copied(),
        })
    }

    /// `host:port` of each server, for messages.
    pub fn addresses(&self) -> String {
        self.endpoints
            .iter()
            .map(Endpoint::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The byte stream under a connection.
enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// How a session is started.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub application_name: String,
    /// The startup `options` (`-c name=value …`).
    pub options: Option<String>,
}

/// One row of a simple query's answer: each column's text, `None` for
/// NULL.
pub type Row = Vec<Option<Bytes>>;

/// An authenticated replication session (`replication=database`).
pub struct ReplConn {
    io: Io,
    rbuf: BytesMut,
    wbuf: BytesMut,
    addr: String,
    /// `server_version_num` (e.g. 160004), from the `server_version`
    /// the server reported at startup.
    pub server_version_num: u32,
    /// The server's own `server_version` text.
    pub server_version: String,
    /// The server's run-time parameters reported at startup.
    pub parameters: HashMap<String, String>,
}

impl ReplConn {
    /// Connects to the first server of `target` that accepts and suits
    /// `target_session_attrs`; the error names every server tried and why
    /// each was not used.
    pub async fn connect(target: &ReplTarget, session: &Session) -> Result<ReplConn, ReplError> {
        let mut failures = Vec::new();
        for ep in &target.endpoints {
            match Self::connect_endpoint(target, ep, session).await {
                Ok(conn) => return Ok(conn),
                Err(e) if target.endpoints.len() == 1 => return Err(e),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(ReplError::NoHost(failures))
    }

    async fn connect_endpoint(
        target: &ReplTarget,
        ep: &Endpoint,
        session: &Session,
    ) -> Result<ReplConn, ReplError> {
        let mut conn = match target.tls.mode {
            SslMode::Prefer => match Self::open(target, ep, session, true).await {
                // libpq's `prefer`: a server that turns the TLS session
                // away (pg_hba `hostnossl`) is asked again in plain.
                Err(ReplError::Server { .. }) | Err(ReplError::Auth { .. }) => {
                    Self::open(target, ep, session, false).await?
                }
                other => other?,
            },
            SslMode::Disable => Self::open(target, ep, session, false).await?,
            _ => Self::open(target, ep, session, true).await?,
        };
        let wanted = match target.session_attrs {
            TargetSessionAttrs::Any => return Ok(conn),
            TargetSessionAttrs::ReadWrite => "off",
            TargetSessionAttrs::ReadOnly => "on",
            _ => return Ok(conn),
        };
        let rows = conn.simple_query("SHOW transaction_read_only").await?;
        let value = rows
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        if value == wanted {
            Ok(conn)
        } else {
            let why = if wanted == "off" {
                "is read-only (a standby), and target_session_attrs=read-write asks for a primary"
            } else {
                "is read-write (a primary), and target_session_attrs=read-only asks for a standby"
            };
            conn.close().await;
            Err(ReplError::Unsuitable {
                addr: ep.describe(),
                why: why.into(),
            })
        }
    }

    /// Opens one session to `ep`, with TLS when `tls` (and the mode allows
    /// a refusal under `prefer`).
    async fn open(
        target: &ReplTarget,
        ep: &Endpoint,
        session: &Session,
        tls: bool,
    ) -> Result<ReplConn, ReplError> {
        let addr = ep.describe();
        let connect = async {
            match ep {
                Endpoint::Tcp { connect, port, .. } => {
                    let s = TcpStream::connect((connect.as_str(), *port))
                        .await
                        .map_err(|e| ReplError::Connect {
                            addr: addr.clone(),
                            error: e.to_string(),
                        })?;
                    let _ = s.set_nodelay(true);
                    Ok(Io::Tcp(s))
                }
                Endpoint::Unix { dir, port } => {
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    UnixStream::connect(&path)
                        .await
                        .map(Io::Unix)
                        .map_err(|e| ReplError::Connect {
                            addr: addr.clone(),
                            error: e.to_string(),
                        })
                }
            }
        };
        let io = match target.connect_timeout {
            Some(t) => {
                tokio::time::timeout(t, connect)
                    .await
                    .map_err(|_| ReplError::Connect {
                        addr: addr.clone(),
                        error: format!("timed out after {} ms (connect_timeout)", t.as_millis()),
                    })??
            }
            None => connect.await?,
        };
        let io = match (io, tls, &target.tls_config, ep) {
            (Io::Tcp(s), true, Some(config), Endpoint::Tcp { name, .. }) => {
                Self::negotiate_tls(s, config, name, &addr, target.tls.mode).await?
            }
            (io, _, _, _) => io,
        };
        let mut conn = ReplConn {
            io,
            rbuf: BytesMut::with_capacity(128 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            addr,
            server_version_num: 0,
            server_version: String::new(),
            parameters: HashMap::new(),
        };
        conn.startup(target, session).await?;
        Ok(conn)
    }

    async fn negotiate_tls(
        mut s: TcpStream,
        config: &Arc<rustls::ClientConfig>,
        name: &str,
        addr: &str,
        mode: SslMode,
    ) -> Result<Io, ReplError> {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        let io_err = |e: std::io::Error| ReplError::Io {
            addr: addr.to_owned(),
            what: e.to_string(),
        };
        s.write_all(&buf).await.map_err(io_err)?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.map_err(io_err)?;
        match answer[0] {
            b'S' => {}
            b'N' if mode == SslMode::Prefer => return Ok(Io::Tcp(s)),
            b'N' => {
                return Err(ReplError::Tls {
                    addr: addr.to_owned(),
                    error: format!(
                        "the server does not accept TLS, and sslmode={} requires it",
                        mode.as_str()
                    ),
                })
            }
            other => {
                return Err(ReplError::Protocol {
                    addr: addr.to_owned(),
                    what: format!("unexpected answer {other:#04x} to the SSL request"),
                })
            }
        }
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| ReplError::Tls {
            addr: addr.to_owned(),
            error: format!("{name:?} is not a valid TLS server name"),
        })?;
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(server_name, s)
            .await
            .map(|t| Io::Tls(Box::new(t)))
            .map_err(|e| ReplError::Tls {
                addr: addr.to_owned(),
                error: format!("handshake failed (sslmode={}): {e}", mode.as_str()),
            })
    }

    async fn startup(&mut self, target: &ReplTarget, session: &Session) -> Result<(), ReplError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &target.user),
            ("database", &target.database),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
        ];
        if !session.application_name.is_empty() {
            params.push(("application_name", &session.application_name));
        }
        if let Some(o) = session.options.as_deref() {
            params.push(("options", o));
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut buf)
            .map_err(|e| ReplError::Url(format!("a startup parameter cannot be sent: {e}")))?;
        self.write(&buf).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, payload) = self.read_message().await?;
            match tag {
                b'R' => {
                    let mut p = payload.clone();
                    if p.len() < 4 {
                        return Err(self.protocol("short authentication request"));
                    }
                    let code = p.get_i32();
                    match code {
                        0 => {}
                        3 => {
                            let pw = self.password(target)?;
                            self.send_password(&pw).await?;
                        }
                        5 => {
                            if p.len() < 4 {
                                return Err(self.protocol("MD5 request without a salt"));
                            }
                            let salt = [p[0], p[1], p[2], p[3]];
                            let pw = self.password(target)?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                target.user.as_bytes(),
                                &pw,
                                salt,
                            );
                            self.send_password(hash.as_bytes()).await?;
                        }
                        10 => {
                            let offered: Vec<&[u8]> =
                                p.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                            if !offered.contains(&sasl::SCRAM_SHA_256.as_bytes()) {
                                return Err(self.auth(format!(
                                    "the server offers only SASL mechanisms {:?}; SCRAM-SHA-256 is supported",
                                    offered
                                        .iter()
                                        .map(|m| String::from_utf8_lossy(m).into_owned())
                                        .collect::<Vec<_>>()
                                )));
                            }
                            let pw = self.password(target)?;
                            // No channel binding (`n`), as Sluice's other
                            // sessions: stating support while not binding
                            // would be refused by a server that offers it.
                            let s = ScramSha256::new(&pw, ChannelBinding::unsupported());
                            let mut out = BytesMut::new();
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                s.message(),
                                &mut out,
                            )
                            .map_err(|e| self.auth(e.to_string()))?;
                            self.write(&out).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.protocol("SASL continue before SASL start"))?;
                            s.update(&p).map_err(|e| self.auth(format!("SCRAM: {e}")))?;
                            let mut out = BytesMut::new();
                            frontend::sasl_response(s.message(), &mut out)
                                .map_err(|e| self.auth(e.to_string()))?;
                            self.write(&out).await?;
                        }
                        12 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| self.protocol("SASL final before SASL start"))?;
                            s.finish(&p)
                                .map_err(|e| self.auth(format!("SCRAM: the server's proof: {e}")))?;
                        }
                        other => {
                            return Err(self.auth(format!(
                                "authentication method {other} is not supported (trust, password, md5 and scram-sha-256 are)"
                            )))
                        }
                    }
                }
                b'S' => {
                    let mut parts = payload.split(|&b| b == 0);
                    let name = parts.next().unwrap_or_default();
                    let value = parts.next().unwrap_or_default();
                    let (name, value) = (
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    );
                    if name == "server_version" {
                        self.server_version_num = version_num(&value);
                        self.server_version = value.clone();
                    }
                    self.parameters.insert(name, value);
                }
                b'K' | b'N' => {}
                b'Z' => return Ok(()),
                b'E' => return Err(self.server(&payload)),
                other => {
                    return Err(self.protocol(&format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )))
                }
            }
        }
    }

    fn password(&self, target: &ReplTarget) -> Result<Vec<u8>, ReplError> {
        target.password.clone().ok_or_else(|| {
            self.auth("the server asks for a password and the connection string gives none".into())
        })
    }

    async fn send_password(&mut self, pw: &[u8]) -> Result<(), ReplError> {
        let mut out = BytesMut::new();
        frontend::password_message(pw, &mut out).map_err(|e| self.auth(e.to_string()))?;
        self.write(&out).await
    }

    /// Which server this is, for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's major version (14 for 14.x).
    pub fn major(&self) -> u32 {
        self.server_version_num / 10_000
    }

    /// Runs one simple query (a replication command such as
    /// `IDENTIFY_SYSTEM`, or SQL) and returns its rows' text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ReplError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| ReplError::Url(e.to_string()))?;
        self.write(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, payload) = self.read_message().await?;
            match tag {
                b'D' => rows.push(self.data_row(payload)?),
                b'E' => error = Some(self.server(&payload)),
                b'Z' => break,
                // Copy-out answers (BASE_BACKUP, …) are not ours to take.
                b'H' | b'G' | b'W' => {
                    return Err(self.protocol("a simple query answered with a copy stream"))
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    fn data_row(&self, mut p: Bytes) -> Result<Row, ReplError> {
        if p.len() < 2 {
            return Err(self.protocol("short DataRow"));
        }
        let n = p.get_u16() as usize;
        let mut row = Vec::with_capacity(n.min(p.len() / 4 + 1));
        for _ in 0..n {
            if p.len() < 4 {
                return Err(self.protocol("truncated DataRow"));
            }
            let len = p.get_i32();
            if len < 0 {
                row.push(None);
                continue;
            }
            let len = len as usize;
            if p.len() < len {
                return Err(self.protocol("truncated DataRow value"));
            }
            row.push(Some(p.split_to(len)));
        }
        Ok(row)
    }

    /// Sends `command` (`START_REPLICATION …`) and, once the server
    /// answers with the copy-both stream, hands the connection to a worker.
    pub async fn start(
        mut self,
        command: &str,
        cfg: StreamConfig,
    ) -> Result<ReplStream, ReplError> {
        let mut out = BytesMut::new();
        frontend::query(command, &mut out).map_err(|e| ReplError::Url(e.to_string()))?;
        self.write(&out).await?;
        loop {
            let (tag, payload) = self.read_message().await?;
            match tag {
                b'W' => break,
                b'E' => return Err(self.server(&payload)),
                b'N' | b'S' => {}
                other => {
                    return Err(self.protocol(&format!(
                        "unexpected message {:?} answering START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
        let (tx, rx) = mpsc::channel(cfg.buffer.max(16));
        let (applied_tx, applied_rx) = watch::channel(cfg.start_ack);
        let stop = CancellationToken::new();
        let worker = Worker {
            conn: self,
            tx,
            applied: applied_rx,
            stop: stop.clone(),
            cfg,
        };
        let task = tokio::spawn(worker.run());
        Ok(ReplStream {
            rx,
            applied: applied_tx,
            stop,
            task: Some(task),
        })
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.io.write_all(&out).await;
        let _ = self.io.shutdown().await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ReplError> {
        self.io.write_all(bytes).await.map_err(|e| ReplError::Io {
            addr: self.addr.clone(),
            what: format!("write: {e}"),
        })?;
        self.io.flush().await.map_err(|e| ReplError::Io {
            addr: self.addr.clone(),
            what: format!("write: {e}"),
        })
    }

    /// A whole message from the buffer, if one is there.
    fn take_message(&mut self) -> Result<Option<(u8, Bytes)>, ReplError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        if len < 4 {
            return Err(self.protocol(&format!("message length {len}")));
        }
        let len = len as usize;
        if len - 4 > MAX_MESSAGE {
            return Err(self.protocol(&format!(
                "a message of {} bytes is over the {MAX_MESSAGE}-byte limit",
                len - 4
            )));
        }
        if self.rbuf.len() < len + 1 {
            self.rbuf.reserve(len + 1 - self.rbuf.len());
            return Ok(None);
        }
        let tag = self.rbuf[0];
        let mut frame = self.rbuf.split_to(len + 1);
        frame.advance(5);
        Ok(Some((tag, frame.freeze())))
    }

    /// Reads into the buffer; an error or end of stream is the connection's.
    async fn fill(&mut self) -> Result<(), ReplError> {
        if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
            self.rbuf.reserve(128 * 1024);
        }
        match self.io.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(ReplError::Io {
                addr: self.addr.clone(),
                what: "the server closed the connection".into(),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(ReplError::Io {
                addr: self.addr.clone(),
                what: format!("read: {e}"),
            }),
        }
    }

    async fn read_message(&mut self) -> Result<(u8, Bytes), ReplError> {
        loop {
            if let Some(m) = self.take_message()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    fn server(&self, payload: &[u8]) -> ReplError {
        ReplError::Server {
            addr: self.addr.clone(),
            error: Box::new(parse_error(payload)),
        }
    }

    fn protocol(&self, what: &str) -> ReplError {
        ReplError::Protocol {
            addr: self.addr.clone(),
            what: what.to_owned(),
        }
    }

    fn auth(&self, error: String) -> ReplError {
        ReplError::Auth {
            addr: self.addr.clone(),
            error,
        }
    }
}

/// `server_version_num` from a `server_version` text ("16.4 (Debian …)",
/// "17beta1", "9.6.24").
fn version_num(v: &str) -> u32 {
    let digits: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = digits.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if major >= 10 {
        major.saturating_mul(10_000).saturating_add(minor)
    } else {
        major
            .saturating_mul(10_000)
            .saturating_add(minor.saturating_mul(100))
            .saturating_add(parts.next().unwrap_or(0))
    }
}

/// How the stream's worker reads and acknowledges.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Shortest time between two status updates that raise the position.
    pub status_interval: Duration,
    /// Longest time without a status update while idle.
    pub wakeup_interval: Duration,
    /// Messages buffered between the socket and the consumer.
    pub buffer: usize,
    /// The position acknowledged until [`ReplStream::update_applied_lsn`]
    /// raises it.
    pub start_ack: u64,
}

/// What the server sends on the stream.
#[derive(Debug, Clone)]
pub enum ReplEvent {
    /// A pgoutput message.
    XLogData {
        wal_start: u64,
        wal_end: u64,
        server_time: i64,
        data: Bytes,
    },
    /// The server's position, when it has nothing else to say.
    KeepAlive { wal_end: u64, server_time: i64 },
}

/// A started replication stream.
pub struct ReplStream {
    rx: mpsc::Receiver<Result<ReplEvent, ReplError>>,
    applied: watch::Sender<u64>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ReplStream {
    /// The next message; `Ok(None)` when the server ended the stream.
    pub async fn recv(&mut self) -> Result<Option<ReplEvent>, ReplError> {
        match self.rx.recv().await {
            Some(Ok(ev)) => Ok(Some(ev)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    /// Raises the acknowledged position (never lowers it).
    pub fn update_applied_lsn(&self, lsn: u64) {
        self.applied.send_if_modified(|cur| {
            if lsn > *cur {
                *cur = lsn;
                true
            } else {
                false
            }
        });
    }

    /// Sends a last status update and ends the stream.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops and waits for the worker to have sent its last status
    /// update.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ReplStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Worker {
    conn: ReplConn,
    tx: mpsc::Sender<Result<ReplEvent, ReplError>>,
    applied: watch::Receiver<u64>,
    stop: CancellationToken,
    cfg: StreamConfig,
}

/// What ended a worker.
enum End {
    /// Stop asked, or the consumer is gone.
    Stopped,
    Failed(ReplError),
}

impl Worker {
    async fn run(mut self) {
        match self.stream().await {
            End::Stopped => {
                let _ = self.feedback(false).await;
                let mut out = BytesMut::new();
                frontend::copy_done(&mut out);
                frontend::terminate(&mut out);
                let _ = self.conn.io.write_all(&out).await;
                let _ = self.conn.io.flush().await;
            }
            End::Failed(e) => {
                let _ = self.tx.send(Err(e)).await;
            }
        }
    }

    async fn stream(&mut self) -> End {
        let mut sent = *self.applied.borrow_and_update();
        let mut last_status = tokio::time::Instant::now();
        if let Err(e) = self.feedback(false).await {
            return End::Failed(e);
        }
        loop {
            // Everything already buffered goes out first.
            loop {
                let msg = match self.conn.take_message() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => return End::Failed(e),
                };
                let ev = match self.message(msg) {
                    Ok(Some(ev)) => ev,
                    Ok(None) => continue,
                    Err(End::Failed(e)) => return End::Failed(e),
                    Err(End::Stopped) => return End::Stopped,
                };
                let reply = matches!(&ev, Step::Reply(_));
                let ev = match ev {
                    Step::Reply(ev) | Step::Event(ev) => ev,
                };
                if reply {
                    if let Err(e) = self.feedback(false).await {
                        return End::Failed(e);
                    }
                    sent = *self.applied.borrow();
                    last_status = tokio::time::Instant::now();
                }
                // A full channel waits, still answering on time.
                let tx = self.tx.clone();
                let permit = loop {
                    let deadline = last_status + self.cfg.wakeup_interval;
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return End::Stopped,
                        p = tx.reserve() => match p {
                            Ok(p) => break p,
                            Err(_) => return End::Stopped,
                        },
                        _ = tokio::time::sleep_until(deadline) => {
                            if let Err(e) = self.feedback(false).await {
                                return End::Failed(e);
                            }
                            sent = *self.applied.borrow();
                            last_status = tokio::time::Instant::now();
                        }
                    }
                };
                permit.send(Ok(ev));
                // A raised position between messages of a burst.
                let applied = *self.applied.borrow();
                if applied > sent && last_status.elapsed() >= self.cfg.status_interval {
                    if let Err(e) = self.feedback(false).await {
                        return End::Failed(e);
                    }
                    sent = applied;
                    last_status = tokio::time::Instant::now();
                }
            }
            let applied = *self.applied.borrow();
            let deadline = if applied > sent {
                last_status + self.cfg.status_interval
            } else {
                last_status + self.cfg.wakeup_interval
            };
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return End::Stopped,
                changed = self.applied.changed() => {
                    if changed.is_err() {
                        return End::Stopped;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Err(e) = self.feedback(false).await {
                        return End::Failed(e);
                    }
                    sent = *self.applied.borrow();
                    last_status = tokio::time::Instant::now();
                }
                r = self.conn.fill() => {
                    if let Err(e) = r {
                        return End::Failed(e);
                    }
                }
            }
        }
    }

    /// One message of the copy-both stream.
    fn message(&mut self, (tag, mut p): (u8, Bytes)) -> Result<Option<Step>, End> {
        match tag {
            b'd' => {
                if p.is_empty() {
                    return Err(End::Failed(self.conn.protocol("empty CopyData")));
                }
                match p.get_u8() {
                    b'w' => {
                        if p.len() < 24 {
                            return Err(End::Failed(self.conn.protocol("short XLogData header")));
                        }
                        let wal_start = p.get_u64();
                        let wal_end = p.get_u64();
                        let server_time = p.get_i64();
                        Ok(Some(Step::Event(ReplEvent::XLogData {
                            wal_start,
                            wal_end,
                            server_time,
                            data: p,
                        })))
                    }
                    b'k' => {
                        if p.len() < 17 {
                            return Err(End::Failed(self.conn.protocol("short keepalive")));
                        }
                        let wal_end = p.get_u64();
                        let server_time = p.get_i64();
                        let reply = p.get_u8() == 1;
                        let ev = ReplEvent::KeepAlive {
                            wal_end,
                            server_time,
                        };
                        Ok(Some(if reply {
                            Step::Reply(ev)
                        } else {
                            Step::Event(ev)
                        }))
                    }
                    other => Err(End::Failed(self.conn.protocol(&format!(
                        "unknown replication message {:?}",
                        other as char
                    )))),
                }
            }
            b'E' => Err(End::Failed(self.conn.server(&p))),
            // The server ended the stream (a stop point, a shutdown).
            b'c' => Err(End::Failed(ReplError::Io {
                addr: self.conn.addr.clone(),
                what: "the server ended the replication stream".into(),
            })),
            b'N' => {
                let n = parse_error(&p);
                tracing::debug!(addr = %self.conn.addr, notice = %n, "replication connection notice");
                Ok(None)
            }
            b'S' | b'A' => Ok(None),
            other => Err(End::Failed(self.conn.protocol(&format!(
                "unexpected message {:?} on the replication stream",
                other as char
            )))),
        }
    }

    /// A standby status update at the applied position.
    async fn feedback(&mut self, reply: bool) -> Result<(), ReplError> {
        let lsn = *self.applied.borrow();
        let now = chrono::Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_MICROS;
        let mut body = Vec::with_capacity(34);
        body.push(b'r');
        body.extend_from_slice(&lsn.to_be_bytes());
        body.extend_from_slice(&lsn.to_be_bytes());
        body.extend_from_slice(&lsn.to_be_bytes());
        body.extend_from_slice(&now.to_be_bytes());
        body.push(u8::from(reply));
        self.conn.wbuf.clear();
        frontend::CopyData::new(&body[..])
            .map_err(|e| self.conn.protocol(&e.to_string()))?
            .write(&mut self.conn.wbuf);
        let buf = std::mem::take(&mut self.conn.wbuf);
        let r = self.conn.write(&buf).await;
        self.conn.wbuf = buf;
        r
    }
}

enum Step {
    Event(ReplEvent),
    /// The server asked for an answer at once.
    Reply(ReplEvent),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_version_numbers() {
        assert_eq!(version_num("16.4 (Debian 16.4-1.pgdg120+1)"), 160004);
        assert_eq!(version_num("17beta1"), 170000);
        assert_eq!(version_num("15.18"), 150018);
        assert_eq!(version_num("9.6.24"), 90624);
        // A server's text is not trusted to be small.
        assert_eq!(version_num("4294967295.4294967295"), u32::MAX);
    }

    #[test]
    fn error_responses_keep_the_servers_words() {
        let mut p = Vec::new();
        for (k, v) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "42704"),
            (b'M', "replication slot \"x\" does not exist"),
            (b'H', "create it first"),
        ] {
            p.push(k);
            p.extend_from_slice(v.as_bytes());
            p.push(0);
        }
        p.push(0);
        let e = parse_error(&p);
        assert_eq!(e.code, "42704");
        assert_eq!(
            e.to_string(),
            "FATAL: replication slot \"x\" does not exist (SQLSTATE 42704); HINT: create it first"
        );
    }

    #[test]
    fn every_host_of_the_connection_string_is_an_endpoint() {
        let t = ReplTarget::parse(
            "host=a.example,b.example port=5433,5434 user=u dbname=d target_session_attrs=read-write sslmode=disable",
        )
        .unwrap();
        assert_eq!(t.addresses(), "a.example:5433, b.example:5434");
        assert_eq!(t.session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(t.database, "d");
        let t = ReplTarget::parse("postgres://u:pw@h1:1,h2:2/db?sslmode=disable").unwrap();
        assert_eq!(t.addresses(), "h1:1, h2:2");
        assert_eq!(t.password.as_deref(), Some(&b"pw"[..]));
        let e = ReplTarget::parse("host=a,b,c port=1,2 sslmode=disable").unwrap_err();
        assert!(e.to_string().contains("2 ports for 3 hosts"), "{e}");
        let t =
            ReplTarget::parse("host=db.example hostaddr=127.0.0.1 port=7 sslmode=disable").unwrap();
        assert_eq!(t.addresses(), "127.0.0.1:7 (db.example)");
    }
}
