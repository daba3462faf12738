//! The WebSocket protocol: parsing of client messages into validated
//! commands, serialization of server messages, and the stable error and
//! close codes. Pure: no I/O, no session state; the session decides what a
//! valid message does (and answers the session-level errors built by the
//! [`ProtocolError`] constructors).
//!
//! # Client → server
//!
//! One JSON object per text frame, with a `type` member:
//!
//! - `{"type":"auth","token":"<API key or JWT>"}`
//! - `{"type":"subscribe","id":"s1","topic":"tables/**","topics":[…],
//!   "table":"public.orders","collection":"shop.orders","filter":{…},"from":42}`
//!   — `id` (1 to [`MAX_ID_BYTES`] bytes) names the subscription in its
//!   events; `topic` is one glob, `topics` a non-empty array of globs,
//!   `table` / `collection` one name or a non-empty array of names (a table
//!   must be captured); all of them together at most [`MAX_TOPICS`] globs,
//!   none = every topic; `filter` a filter object (see
//!   [`crate::subscription::filter`]); `from` the first seq to deliver
//!   (inclusive, a whole number ≥ 0; 0 and 1 both the start of the log, as
//!   on every transport: [`crate::log::position`]), none = live only.
//! - `{"type":"unsubscribe","id":"s1"}`
//! - `{"type":"publish","event":"order.shipped","data":{…},"subject":"order/42"}`
//!   — a custom event of the credential's tenant (a `tenant` member is
//!   accepted and ignored: the tenant always comes from the credential).
//! - `{"type":"ping"}`
//!
//! Any other member is an error naming it, and so is a member given twice.
//! An optional member set to `null` counts as absent. Before `auth` only
//! `auth` and `ping` are accepted (see [`parse_client_before_auth`]).
//!
//! # Server → client
//!
//! `auth_ok {tenant, role}`, `subscribed {id}`, `unsubscribed {id}`,
//! `event {sub, event}` (the envelope embedded verbatim), `published {seq}`,
//! `pong`, `error {id?, code, message}` (`id` whenever the message was an
//! object with a string `id`); see the `*_frame` functions. With
//! the [`CLOUDEVENTS_SUBPROTOCOL`] an event frame is the bare envelope.

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::auth::Role;
use crate::event::TenantId;
use crate::source::postgres::normalize::{valid_custom_name, MAX_CUSTOM_NAME};
use crate::subscription::MAX_TOPICS;
use crate::subscription::{collection_glob, table_glob, Filter, Selector, TopicGlob};

/// Longest subscription id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Longest `subject` of a published event, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;
/// The WebSocket subprotocol in which an event frame is the bare envelope
/// (a CloudEvents 1.0 structured-mode JSON event) rather than an `event`
/// message. Its frames carry no subscription id, so a client of it should
/// hold one subscription (or tell events apart by their `topic`); every
/// other message is the same as without it.
pub const CLOUDEVENTS_SUBPROTOCOL: &str = "cloudevents.json";
/// The client message types, in the order error messages list them.
pub const CLIENT_TYPES: &[&str] = &["auth", "subscribe", "unsubscribe", "publish", "ping"];

/// The stable error codes of `error` messages.
pub mod code {
    /// The text frame is not valid JSON.
    pub const INVALID_JSON: &str = "invalid_json";
    /// The message has the wrong shape: not an object, a missing, repeated
    /// or unknown member, or a member of the wrong type or value.
    pub const INVALID_MESSAGE: &str = "invalid_message";
    /// The `type` member names no known message type.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// Anything but `auth` or `ping` before a successful `auth`.
    pub const NOT_AUTHENTICATED: &str = "not_authenticated";
    /// A second `auth` on an authenticated connection.
    pub const ALREADY_AUTHENTICATED: &str = "already_authenticated";
    /// The credential of `auth` was refused (unknown, revoked, expired…).
    pub const AUTH_FAILED: &str = "auth_failed";
    /// The credential's role does not allow this (e.g. `publish` with anon).
    pub const FORBIDDEN: &str = "forbidden";
    /// `subscribe` with the id of a subscription still active.
    pub const DUPLICATE_ID: &str = "duplicate_id";
    /// `unsubscribe` with an id no active subscription has.
    pub const UNKNOWN_ID: &str = "unknown_id";
    /// `subscribe` beyond the connection's limit of subscriptions.
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
    /// A topic glob, table or collection name of `subscribe` is invalid, or
    /// there are too many of them.
    pub const INVALID_TOPIC: &str = "invalid_topic";
    /// The `filter` of `subscribe` is invalid.
    pub const INVALID_FILTER: &str = "invalid_filter";
    /// The `table` of `subscribe` is not a captured table.
    pub const UNKNOWN_TABLE: &str = "unknown_table";
    /// Retention removed events at or after the `from` of `subscribe`.
    pub const GAP: &str = "gap";
    /// The text frame is larger than the configured limit.
    pub const MESSAGE_TOO_LARGE: &str = "message_too_large";
    /// A binary frame was received; messages are JSON text frames.
    pub const BINARY_NOT_SUPPORTED: &str = "binary_not_supported";
    /// A failure on the server's side; retry shortly.
    pub const UNAVAILABLE: &str = "unavailable";
}

/// Every error code, with its meaning: code → meaning.
pub const ERROR_CODES: &[(&str, &str)] = &[
    (code::INVALID_JSON, "the text frame is not valid JSON"),
    (
        code::INVALID_MESSAGE,
        "the message has the wrong shape: not an object, a missing, repeated or unknown member, or a member of the wrong type or value",
    ),
    (code::UNKNOWN_TYPE, "the type member names no known message type"),
    (
        code::NOT_AUTHENTICATED,
        "only auth and ping are accepted before a successful auth",
    ),
    (
        code::ALREADY_AUTHENTICATED,
        "the connection is already authenticated; open another connection for another credential",
    ),
    (
        code::AUTH_FAILED,
        "the credential was refused (unknown, revoked, expired or malformed)",
    ),
    (
        code::FORBIDDEN,
        "the credential's role does not allow this (e.g. publish needs a service credential)",
    ),
    (
        code::DUPLICATE_ID,
        "a subscription with this id is already active on the connection",
    ),
    (code::UNKNOWN_ID, "no active subscription has this id"),
    (
        code::TOO_MANY_SUBSCRIPTIONS,
        "the connection already holds its limit of subscriptions",
    ),
    (
        code::INVALID_TOPIC,
        "a topic glob, table or collection name is invalid, or there are too many",
    ),
    (code::INVALID_FILTER, "the filter is invalid"),
    (code::UNKNOWN_TABLE, "the table is not one Sluice captures"),
    (
        code::GAP,
        "retention removed events at or after from; the message names the oldest seq available",
    ),
    (
        code::MESSAGE_TOO_LARGE,
        "the text frame is larger than the limit (up to 16 × the limit); the connection stays open",
    ),
    (
        code::BINARY_NOT_SUPPORTED,
        "binary frames are not accepted; send JSON text frames",
    ),
    (
        code::UNAVAILABLE,
        "a failure on the server's side (e.g. the log's database); retry shortly",
    ),
];

/// Close code: the connection ends normally (the client closed it, or the
/// server acknowledges the client's close).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is shutting down; reconnect (to another
/// instance) and resume with `from`.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a frame (or fragmented message) larger than 16 × the
/// message limit; the server does not read it.
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Close code: an unexpected failure of the server.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// Close code: no successful `auth` within the configured time after the
/// connection opened.
pub const CLOSE_AUTH_TIMEOUT: u16 = 4001;
/// Close code: the connection's credential was revoked or has expired.
pub const CLOSE_CREDENTIAL_REVOKED: u16 = 4003;

/// Every close code the server sends: (code, reason sent in the close
/// frame, meaning). A slow connection is never closed (it catches up from
/// the log); a message over the limit is answered with a
/// `message_too_large` error, the connection staying open, unless its
/// frame is beyond 16 × the limit (1009).
pub const CLOSE_CODES: &[(u16, &str, &str)] = &[
    (CLOSE_NORMAL, "normal", "the connection ends normally"),
    (
        CLOSE_GOING_AWAY,
        "server_shutting_down",
        "the server is shutting down; reconnect and resume with from",
    ),
    (
        CLOSE_MESSAGE_TOO_BIG,
        "message_too_big",
        "a frame larger than 16 × ws.max_message_bytes; the server does not read it",
    ),
    (
        CLOSE_INTERNAL_ERROR,
        "internal_error",
        "an unexpected failure of the server",
    ),
    (
        CLOSE_AUTH_TIMEOUT,
        "auth_timeout",
        "no successful auth within the configured time",
    ),
    (
        CLOSE_CREDENTIAL_REVOKED,
        "credential_revoked",
        "the connection's credential was revoked or has expired",
    ),
];

/// A client message, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Authenticate the connection.
    Auth {
        /// An API key or a JWT, as sent (non-empty).
        token: String,
    },
    /// Open a subscription.
    Subscribe {
        /// The client's name for the subscription (1 to [`MAX_ID_BYTES`]
        /// bytes), echoed as `sub` in its events.
        id: String,
        /// Topics (from `topic`, `topics`, `table` and `collection`, in that
        /// order) and filter.
        selector: Selector,
        /// The first seq to deliver (inclusive); `None` = live only.
        from: Option<i64>,
    },
    /// Close a subscription.
    Unsubscribe {
        /// The id given to `subscribe`.
        id: String,
    },
    /// Append a custom event for the credential's tenant.
    Publish {
        /// The custom event name, under the same rule as the custom events
        /// Postgres emits with `pg_logical_emit_message(…, 'sluice', …)`
        /// ([`valid_custom_name`]): 1 to [`MAX_CUSTOM_NAME`] characters of
        /// `A-Z a-z 0-9 _ . -`, so that it is exactly one topic segment
        /// (the event's topic is `custom/<event>`) and one type suffix (its
        /// type is `custom.<event>`). An event published here and one
        /// emitted from Postgres under the same name reach the same
        /// subscribers.
        event: String,
        /// The event's `data`.
        data: Map<String, Value>,
        /// The event's `subject`, if any.
        subject: Option<String>,
    },
    /// Ask for a `pong`.
    Ping,
}

impl ClientMessage {
    /// The message's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Auth { .. } => "auth",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::Publish { .. } => "publish",
            ClientMessage::Ping => "ping",
        }
    }
}

/// Why a client message was refused: sent back as an `error` message (see
/// [`error_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The `id` member of the message it answers, when that is a string
    /// (whatever the message's type, valid or not).
    pub id: Option<String>,
    /// One of [`ERROR_CODES`].
    pub code: &'static str,
    /// What is wrong, for the client's developer.
    pub message: String,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProtocolError {}

impl ProtocolError {
    /// An error without an id.
    pub fn new(code: &'static str, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            id: None,
            code,
            message: message.into(),
        }
    }

    /// The same error, answering the message with this id.
    pub fn with_id(mut self, id: impl Into<String>) -> ProtocolError {
        self.id = Some(id.into());
        self
    }

    /// `already_authenticated`: a second `auth`.
    pub fn already_authenticated() -> ProtocolError {
        ProtocolError::new(
            code::ALREADY_AUTHENTICATED,
            "this connection is already authenticated; open another connection to use another credential",
        )
    }

    /// `auth_failed`, with the reason the credential was refused.
    pub fn auth_failed(reason: impl fmt::Display) -> ProtocolError {
        ProtocolError::new(
            code::AUTH_FAILED,
            format!("authentication failed: {reason}"),
        )
    }

    /// `forbidden`: `what` (e.g. `"publish"`) needs a `need` credential and
    /// the connection's is `have`.
    pub fn forbidden(what: &str, need: Role, have: Role) -> ProtocolError {
        ProtocolError::new(
            code::FORBIDDEN,
            format!("{what} needs a {need} credential; this connection's credential is {have}"),
        )
    }

    /// `duplicate_id`: `subscribe` with the id of an active subscription.
    pub fn duplicate_id(id: &str) -> ProtocolError {
        ProtocolError::new(
            code::DUPLICATE_ID,
            format!(
                "a subscription with id {id:?} is already active on this connection; unsubscribe it first or choose another id"
            ),
        )
        .with_id(id)
    }

    /// `unknown_id`: `unsubscribe` with an id no active subscription has.
    pub fn unknown_id(id: &str) -> ProtocolError {
        ProtocolError::new(
            code::UNKNOWN_ID,
            format!("no active subscription has id {id:?}"),
        )
        .with_id(id)
    }

    /// `too_many_subscriptions`: `subscribe` beyond `max` per connection.
    pub fn too_many_subscriptions(id: &str, max: usize) -> ProtocolError {
        ProtocolError::new(
            code::TOO_MANY_SUBSCRIPTIONS,
            format!(
                "this connection already has {max} subscriptions, the limit; unsubscribe one first"
            ),
        )
        .with_id(id)
    }

    /// `gap`: retention removed events at or after `from`
    /// ([`crate::log::position::gap`]).
    pub fn gap(id: &str, requested: i64, oldest: i64) -> ProtocolError {
        ProtocolError::new(
            code::GAP,
            format!(
                "seq {requested} is older than the log's retention; the oldest available is {oldest}"
            ),
        )
        .with_id(id)
    }

    /// `binary_not_supported`: a binary frame.
    pub fn binary_not_supported() -> ProtocolError {
        ProtocolError::new(
            code::BINARY_NOT_SUPPORTED,
            "binary frames are not supported; send each message as a JSON text frame",
        )
    }

    /// `unavailable`: `what` (e.g. `"the log"`) failed on the server's
    /// side. The detail of the failure belongs in the server's log, not
    /// here.
    pub fn unavailable(what: &str) -> ProtocolError {
        ProtocolError::new(
            code::UNAVAILABLE,
            format!("{what} is unavailable; retry shortly"),
        )
    }
}

/// Parses and validates one client text frame on an authenticated
/// connection. `max_bytes` is the largest frame accepted; `captured_tables`
/// (`schema.table`) the tables a `table` member may name. The session
/// answers `auth` with [`ProtocolError::already_authenticated`].
pub fn parse_client(
    text: &str,
    max_bytes: usize,
    captured_tables: &[String],
) -> Result<ClientMessage, ProtocolError> {
    let Frame { kind, obj, id } = read_frame(text, max_bytes)?;
    parse_typed(kind, &obj, id, captured_tables)
}

/// Parses one client text frame before the connection is authenticated:
/// `auth` and `ping` are validated as by [`parse_client`]; any other known
/// type is `not_authenticated` without looking further into it (so nothing
/// about the server, such as its captured tables, reaches an
/// unauthenticated client).
pub fn parse_client_before_auth(
    text: &str,
    max_bytes: usize,
) -> Result<ClientMessage, ProtocolError> {
    let Frame { kind, obj, id } = read_frame(text, max_bytes)?;
    match kind {
        MessageType::Auth | MessageType::Ping => parse_typed(kind, &obj, id, &[]),
        _ => Err(ProtocolError {
            id,
            code: code::NOT_AUTHENTICATED,
            message: format!(
                "authenticate first: send {{\"type\":\"auth\",\"token\":\"…\"}} before {:?}",
                kind.name()
            ),
        }),
    }
}

/// Serializes `auth_ok`: `{"type":"auth_ok","tenant":…,"role":…}`.
/// Sent once per subscription when the server shuts down, before the close
/// frame: where to resume (`from`) on another connection.
pub fn shutdown_frame(sub: &str, resume_from: i64) -> String {
    let mut out = String::from("{\"type\":\"shutdown\",\"id\":");
    push_json_str(&mut out, sub);
    out.push_str(",\"resume_from\":");
    out.push_str(&resume_from.to_string());
    out.push('}');
    out
}

pub fn auth_ok_frame(tenant: &TenantId, role: Role) -> String {
    let mut out = String::from("{\"type\":\"auth_ok\",\"tenant\":");
    push_json_str(&mut out, tenant.as_str());
    out.push_str(",\"role\":");
    push_json_str(&mut out, role.as_str());
    out.push('}');
    out
}

/// Serializes `subscribed`: `{"type":"subscribed","id":…}`.
pub fn subscribed_frame(id: &str) -> String {
    id_frame("subscribed", id)
}

/// Serializes `unsubscribed`: `{"type":"unsubscribed","id":…}`.
pub fn unsubscribed_frame(id: &str) -> String {
    id_frame("unsubscribed", id)
}

/// Serializes `published`: `{"type":"published","seq":…}`, the seq the
/// published event got.
pub fn published_frame(seq: i64) -> String {
    format!("{{\"type\":\"published\",\"seq\":{seq}}}")
}

/// The `pong` message: `{"type":"pong"}`.
pub fn pong_frame() -> &'static str {
    "{\"type\":\"pong\"}"
}

/// Serializes `error`: `{"type":"error","id":…,"code":…,"message":…}`,
/// `id` only when the error has one.
pub fn error_frame(err: &ProtocolError) -> String {
    let mut out = String::with_capacity(err.message.len() + 64);
    out.push_str("{\"type\":\"error\"");
    if let Some(id) = &err.id {
        out.push_str(",\"id\":");
        push_json_str(&mut out, id);
    }
    out.push_str(",\"code\":");
    push_json_str(&mut out, err.code);
    out.push_str(",\"message\":");
    push_json_str(&mut out, &err.message);
    out.push('}');
    out
}

/// Serializes `event`: `{"type":"event","sub":<sub>,"event":<envelope>}`.
/// `sub` (the subscription's id) is JSON-escaped; `envelope` (the envelope
/// JSON as the log and the hub hold it) is embedded byte for byte, never
/// re-serialized, so the result is valid UTF-8 JSON whenever the envelope
/// is (envelopes always are).
pub fn event_frame(sub: &str, envelope: &[u8]) -> Bytes {
    let mut head = String::with_capacity(sub.len() + 40);
    head.push_str("{\"type\":\"event\",\"sub\":");
    push_json_str(&mut head, sub);
    head.push_str(",\"event\":");
    let mut out = Vec::with_capacity(head.len() + envelope.len() + 1);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(envelope);
    out.push(b'}');
    Bytes::from(out)
}

/// An event frame of the [`CLOUDEVENTS_SUBPROTOCOL`]: the bare envelope
/// (shared, not copied).
pub fn cloudevents_event_frame(envelope: &Bytes) -> Bytes {
    envelope.clone()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    Auth,
    Subscribe,
    Unsubscribe,
    Publish,
    Ping,
}

impl MessageType {
    fn parse(s: &str) -> Option<MessageType> {
        match s {
            "auth" => Some(MessageType::Auth),
            "subscribe" => Some(MessageType::Subscribe),
            "unsubscribe" => Some(MessageType::Unsubscribe),
            "publish" => Some(MessageType::Publish),
            "ping" => Some(MessageType::Ping),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MessageType::Auth => "auth",
            MessageType::Subscribe => "subscribe",
            MessageType::Unsubscribe => "unsubscribe",
            MessageType::Publish => "publish",
            MessageType::Ping => "ping",
        }
    }

    /// "an auth message", "a subscribe message", …
    fn article(self) -> &'static str {
        match self {
            MessageType::Auth => "an auth message",
            MessageType::Subscribe => "a subscribe message",
            MessageType::Unsubscribe => "an unsubscribe message",
            MessageType::Publish => "a publish message",
            MessageType::Ping => "a ping message",
        }
    }

    /// The members accepted besides `type`, as listed in errors.
    fn members(self) -> &'static [&'static str] {
        match self {
            MessageType::Auth => &["token"],
            MessageType::Subscribe => &[
                "id",
                "topic",
                "topics",
                "table",
                "collection",
                "filter",
                "from",
            ],
            MessageType::Unsubscribe => &["id"],
            MessageType::Publish => &["event", "data", "subject"],
            MessageType::Ping => &[],
        }
    }
}

/// A text frame read as a message object of a known type.
struct Frame {
    kind: MessageType,
    obj: Map<String, Value>,
    /// The id its errors carry (see [`message_id`]).
    id: Option<String>,
}

/// Size, JSON, object, no repeated member, known `type`. Every error once
/// the frame is known to be an object carries the message's id.
fn read_frame(text: &str, max_bytes: usize) -> Result<Frame, ProtocolError> {
    if text.len() > max_bytes {
        return Err(ProtocolError::new(
            code::MESSAGE_TOO_LARGE,
            format!(
                "message is {} bytes; the limit is {max_bytes} bytes",
                text.len()
            ),
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            code::INVALID_JSON,
            format!("message is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(ProtocolError::new(
            code::INVALID_MESSAGE,
            format!(
                "expected a JSON object with a \"type\" member, found {}",
                kind_of(&value)
            ),
        ));
    };
    let repeated = repeated_members(text);
    let id = message_id(&obj, &repeated);
    let with_id = |e: ProtocolError| ProtocolError {
        id: id.clone(),
        ..e
    };
    if let Some(name) = repeated.first() {
        return Err(with_id(ProtocolError::new(
            code::INVALID_MESSAGE,
            format!("member {} is given more than once", echo(name)),
        )));
    }
    let kind = match obj.get("type") {
        None => {
            return Err(with_id(ProtocolError::new(
                code::INVALID_MESSAGE,
                format!(
                    "missing member \"type\"; expected one of {}",
                    CLIENT_TYPES.join(", ")
                ),
            )))
        }
        Some(Value::String(s)) => MessageType::parse(s).ok_or_else(|| {
            with_id(ProtocolError::new(
                code::UNKNOWN_TYPE,
                format!(
                    "unknown message type {}; expected one of {}",
                    echo(s),
                    CLIENT_TYPES.join(", ")
                ),
            ))
        })?,
        Some(other) => {
            return Err(with_id(ProtocolError::new(
                code::INVALID_MESSAGE,
                format!(
                    "type: expected a string (one of {}), found {}",
                    CLIENT_TYPES.join(", "),
                    kind_of(other)
                ),
            )))
        }
    };
    Ok(Frame { kind, obj, id })
}

fn parse_typed(
    kind: MessageType,
    obj: &Map<String, Value>,
    id: Option<String>,
    captured_tables: &[String],
) -> Result<ClientMessage, ProtocolError> {
    let m = Members { kind, obj, id };
    m.check_known()?;
    match kind {
        MessageType::Auth => {
            let token = m.string(
                "token",
                "an API key or a JWT",
                "a non-empty string (an API key or a JWT)",
            )?;
            if token.is_empty() {
                return Err(m.invalid(
                    "token: expected a non-empty string (an API key or a JWT), found an empty string",
                ));
            }
            Ok(ClientMessage::Auth {
                token: token.to_owned(),
            })
        }
        MessageType::Subscribe => {
            let id = m.id()?;
            let selector = Selector {
                topics: m.topics(captured_tables)?,
                filter: match m.optional("filter") {
                    None => None,
                    Some(f) => Some(
                        Filter::parse(f)
                            .map_err(|e| m.error(code::INVALID_FILTER, e.to_string()))?,
                    ),
                },
            };
            // The one `from` rule of every transport (`log::position`).
            let from = match m.optional("from") {
                None => None,
                Some(Value::Number(n)) => match n.as_i64().map(crate::log::position::from_number) {
                    Some(Ok(seq)) => Some(seq),
                    _ => {
                        return Err(m.invalid(format!(
                            "from: expected a seq (a whole number >= 0), found {}",
                            echo_number(&n.to_string())
                        )))
                    }
                },
                Some(other) => {
                    return Err(m.invalid(format!(
                        "from: expected a seq (a whole number >= 0), found {}",
                        kind_of(other)
                    )))
                }
            };
            Ok(ClientMessage::Subscribe { id, selector, from })
        }
        MessageType::Unsubscribe => Ok(ClientMessage::Unsubscribe { id: m.id()? }),
        MessageType::Publish => {
            let what = format!(
                "an event name of 1 to {MAX_CUSTOM_NAME} characters of A-Z a-z 0-9 _ . -, e.g. \"order.shipped\""
            );
            let event = m.string("event", &what, &what)?;
            if !valid_custom_name(event) {
                let found = if event.is_empty() {
                    "an empty string".to_owned()
                } else if event.len() > MAX_CUSTOM_NAME {
                    format!("{} bytes", event.len())
                } else {
                    echo(event)
                };
                return Err(m.invalid(format!("event: expected {what}, found {found}")));
            }
            let data = match m.obj.get("data") {
                Some(Value::Object(d)) => d.clone(),
                Some(other) => {
                    return Err(m.invalid(format!(
                        "data: expected a JSON object, found {}",
                        kind_of(other)
                    )))
                }
                None => return Err(m.missing("data", "the event's data, a JSON object")),
            };
            let subject = match m.optional("subject") {
                None => None,
                Some(Value::String(s)) => {
                    if s.is_empty() || s.len() > MAX_SUBJECT_BYTES {
                        let found = if s.is_empty() {
                            "an empty string".to_owned()
                        } else {
                            format!("{} bytes", s.len())
                        };
                        return Err(m.invalid(format!(
                            "subject: expected a string of 1 to {MAX_SUBJECT_BYTES} bytes, found {found}"
                        )));
                    }
                    if let Some((at, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
                        return Err(m.invalid(format!(
                            "subject: contains a control character at byte {at}; only printable characters are allowed"
                        )));
                    }
                    Some(s.clone())
                }
                Some(other) => {
                    return Err(m.invalid(format!(
                        "subject: expected a string of 1 to {MAX_SUBJECT_BYTES} bytes, found {}",
                        kind_of(other)
                    )))
                }
            };
            Ok(ClientMessage::Publish {
                event: event.to_owned(),
                data,
                subject,
            })
        }
        MessageType::Ping => Ok(ClientMessage::Ping),
    }
}

/// The members of one message, and its id for errors.
struct Members<'a> {
    kind: MessageType,
    obj: &'a Map<String, Value>,
    id: Option<String>,
}

impl Members<'_> {
    fn error(&self, code: &'static str, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            id: self.id.clone(),
            code,
            message: message.into(),
        }
    }

    fn invalid(&self, message: impl Into<String>) -> ProtocolError {
        self.error(code::INVALID_MESSAGE, message)
    }

    fn missing(&self, name: &str, what: &str) -> ProtocolError {
        self.invalid(format!(
            "missing member \"{name}\" in {}; expected {what}",
            self.kind.article()
        ))
    }

    /// Every member is `type`, one of the type's members, or (publish) the
    /// ignored `tenant`.
    fn check_known(&self) -> Result<(), ProtocolError> {
        let allowed = self.kind.members();
        let ignored = |k: &str| self.kind == MessageType::Publish && k == "tenant";
        match self
            .obj
            .keys()
            .find(|k| *k != "type" && !allowed.contains(&k.as_str()) && !ignored(k))
        {
            None => Ok(()),
            Some(k) if allowed.is_empty() => Err(self.invalid(format!(
                "unknown member {} in {}; it has no member besides \"type\"",
                echo(k),
                self.kind.article()
            ))),
            Some(k) => Err(self.invalid(format!(
                "unknown member {} in {}; accepted: type, {}",
                echo(k),
                self.kind.article(),
                allowed.join(", ")
            ))),
        }
    }

    /// An optional member: absent or `null` is `None`.
    fn optional(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    /// A required string member; `missing` and `expected` describe it.
    fn string(&self, name: &str, missing: &str, expected: &str) -> Result<&str, ProtocolError> {
        match self.obj.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.invalid(format!(
                "{name}: expected {expected}, found {}",
                kind_of(other)
            ))),
            None => Err(self.missing(name, missing)),
        }
    }

    /// The subscription id: a string of 1 to [`MAX_ID_BYTES`] bytes.
    fn id(&self) -> Result<String, ProtocolError> {
        let expected = format!("a string of 1 to {MAX_ID_BYTES} bytes");
        let id = self.string(
            "id",
            &format!("the subscription's id, {expected}"),
            &expected,
        )?;
        if id.is_empty() {
            return Err(self.invalid(format!("id: expected {expected}, found an empty string")));
        }
        if id.len() > MAX_ID_BYTES {
            return Err(self.invalid(format!("id: expected {expected}, found {} bytes", id.len())));
        }
        Ok(id.to_owned())
    }

    /// The globs of `topic`, `topics`, `table` and `collection`.
    fn topics(&self, captured: &[String]) -> Result<Vec<TopicGlob>, ProtocolError> {
        let topic = match self.optional("topic") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![("topic".to_owned(), s.as_str())],
            Some(other) => {
                return Err(self.invalid(format!(
                    "topic: expected a topic glob (a string), found {}; to give several, use \"topics\": [...]",
                    kind_of(other)
                )))
            }
        };
        let topics = match self.optional("topics") {
            None => Vec::new(),
            Some(Value::Array(a)) => self.strings("topics", a, "a topic glob (a string)")?,
            Some(other) => {
                return Err(self.invalid(format!(
                    "topics: expected an array of topic globs, found {}",
                    kind_of(other)
                )))
            }
        };
        let tables = self.names("table", "\"schema.table\"")?;
        let collections = self.names("collection", "\"database.collection\"")?;
        let count = topic.len() + topics.len() + tables.len() + collections.len();
        if count > MAX_TOPICS {
            return Err(self.error(
                code::INVALID_TOPIC,
                format!(
                    "{count} topic globs given (topic, topics, table and collection together); at most {MAX_TOPICS} per subscription"
                ),
            ));
        }
        let mut globs = Vec::with_capacity(count);
        for (at, t) in topic.into_iter().chain(topics) {
            globs.push(
                TopicGlob::parse(t)
                    .map_err(|e| self.error(code::INVALID_TOPIC, format!("{at}: {e}")))?,
            );
        }
        for (at, t) in tables {
            if !captured.iter().any(|c| c == t) {
                let known = if captured.is_empty() {
                    "no tables are captured".to_owned()
                } else {
                    format!("captured tables: {}", captured.join(", "))
                };
                return Err(self.error(
                    code::UNKNOWN_TABLE,
                    format!("{at}: unknown table {}; {known}", echo(t)),
                ));
            }
            globs.push(
                table_glob(t).map_err(|e| self.error(code::INVALID_TOPIC, format!("{at}: {e}")))?,
            );
        }
        for (at, c) in collections {
            globs.push(
                collection_glob(c)
                    .map_err(|e| self.error(code::INVALID_TOPIC, format!("{at}: {e}")))?,
            );
        }
        Ok(globs)
    }

    /// `table` / `collection`: one name or a non-empty array of names.
    fn names<'v>(
        &'v self,
        name: &str,
        shape: &str,
    ) -> Result<Vec<(String, &'v str)>, ProtocolError> {
        match self.optional(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![(name.to_owned(), s.as_str())]),
            Some(Value::Array(a)) => {
                self.strings(name, a, &format!("a {name} name {shape} (a string)"))
            }
            Some(other) => Err(self.invalid(format!(
                "{name}: expected a {name} name {shape} or an array of them, found {}",
                kind_of(other)
            ))),
        }
    }

    /// A non-empty array of strings, each labelled `name[i]`.
    fn strings<'v>(
        &self,
        name: &str,
        items: &'v [Value],
        expected: &str,
    ) -> Result<Vec<(String, &'v str)>, ProtocolError> {
        if items.is_empty() {
            return Err(self.error(
                code::INVALID_TOPIC,
                format!("{name}: the array is empty; omit \"{name}\" to receive every topic"),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok((format!("{name}[{i}]"), s.as_str())),
                other => Err(self.invalid(format!(
                    "{name}[{i}]: expected {expected}, found {}",
                    kind_of(other)
                ))),
            })
            .collect()
    }
}

/// The id an error answering this message carries: its `id` member when
/// that is a string, whatever the type and whether the message is valid
/// (a client matches the answer to its request by it). Not when `id` is
/// given more than once: then no one value is the message's id.
fn message_id(obj: &Map<String, Value>, repeated: &[String]) -> Option<String> {
    match obj.get("id") {
        Some(Value::String(s)) if !repeated.iter().any(|r| r == "id") => Some(s.clone()),
        _ => None,
    }
}

/// The member names repeated in the top-level object of `text` (already
/// known to be a valid JSON object), in the order of their second
/// occurrence.
fn repeated_members(text: &str) -> Vec<String> {
    struct Repeated(Vec<String>);

    impl<'de> Deserialize<'de> for Repeated {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Repeated, D::Error> {
            d.deserialize_map(RepeatedVisitor)
        }
    }

    struct RepeatedVisitor;

    impl<'de> Visitor<'de> for RepeatedVisitor {
        type Value = Repeated;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Repeated, A::Error> {
            let mut seen = HashSet::new();
            let mut reported = HashSet::new();
            let mut repeated = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) && reported.insert(key.clone()) {
                    repeated.push(key);
                }
            }
            Ok(Repeated(repeated))
        }
    }

    serde_json::from_str::<Repeated>(text)
        .map(|r| r.0)
        .unwrap_or_default()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Longest client-supplied text quoted whole in an error message, in bytes.
const ECHO_BYTES: usize = 64;

/// `s` quoted for an error message, cut after [`ECHO_BYTES`] bytes.
fn echo(s: &str) -> String {
    if s.len() <= ECHO_BYTES {
        return format!("{s:?}");
    }
    let mut end = ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}

/// A number's text for an error message, unquoted; a long one only by its
/// length.
fn echo_number(n: &str) -> String {
    if n.len() <= ECHO_BYTES {
        n.to_owned()
    } else {
        format!("a number of {} characters", n.len())
    }
}

fn id_frame(kind: &str, id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 40);
    out.push_str("{\"type\":\"");
    out.push_str(kind);
    out.push_str("\",\"id\":");
    push_json_str(&mut out, id);
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal: `"` and `\` escaped, control
/// characters as `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let b = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[path = "ws_protocol_tests.rs"]
mod tests;
