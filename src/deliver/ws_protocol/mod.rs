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
//!
//! Files: `codes` (error and close codes), `parse` (client → server
//! messages and their validation), `frames` (server → client messages);
//! this file holds the shared types ([`ClientMessage`], [`ProtocolError`]).

use std::fmt;

use serde_json::{Map, Value};

use crate::auth::Role;
use crate::subscription::Selector;
use crate::subscription::MAX_TOPICS;

mod codes;
mod frames;
mod parse;

pub use codes::{
    code, CLOSE_AUTH_TIMEOUT, CLOSE_CODES, CLOSE_CREDENTIAL_REVOKED, CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR, CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL, ERROR_CODES,
};
pub use frames::{
    auth_ok_frame, cloudevents_event_frame, error_frame, event_frame, group_event_frame,
    pong_frame, published_frame, settled_frame, shutdown_frame, subscribed_frame, synced_frame,
    unsubscribed_frame,
};
pub(crate) use parse::echo;
pub use parse::{parse_client, parse_client_before_auth};

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
pub const CLIENT_TYPES: &[&str] = &[
    "auth",
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "ack",
    "nack",
];

/// A subscription to a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSubscription {
    pub name: String,
    /// Unacknowledged messages this subscription holds at most (1 to
    /// 1000, default 100).
    pub max_in_flight: i64,
}

/// Most deliveries in one `ack` or `nack`.
pub const MAX_SETTLE: usize = 1000;

/// What a live query subscription asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSubscription {
    /// The one table (`schema.table`).
    pub table: String,
    /// A top-N query's `order_by` and `limit`, as given (checked against
    /// the table when it starts).
    pub order_by: Option<String>,
    pub limit: Option<i64>,
}

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
        /// A consumer group to take work from (then no topics, filter or
        /// `from`: the group has its own), and how many of its messages may
        /// be unacknowledged on this subscription at once.
        group: Option<GroupSubscription>,
        /// A live query (`"snapshot": true`): its current rows, `synced`,
        /// then its changes (with `from`: changes only).
        snapshot: Option<LiveSubscription>,
    },
    /// Acknowledge deliveries of a group subscription.
    Ack {
        /// The subscription they came on.
        id: String,
        deliveries: Vec<String>,
    },
    /// Give deliveries of a group subscription back (again after
    /// `delay_ms`).
    Nack {
        id: String,
        deliveries: Vec<String>,
        delay_ms: Option<i64>,
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
            ClientMessage::Ack { .. } => "ack",
            ClientMessage::Nack { .. } => "nack",
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

    /// A live query of subscription `id` that could not start.
    pub fn live(id: &str, e: &crate::deliver::live::LiveError) -> ProtocolError {
        use crate::deliver::live::LiveError;
        let c = match e {
            LiveError::TooLarge(_) => code::SNAPSHOT_TOO_LARGE,
            LiveError::Table(_) => code::UNKNOWN_TABLE,
            LiveError::Unavailable(_) => code::UNAVAILABLE,
        };
        ProtocolError::new(c, e.to_string()).with_id(id)
    }
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
