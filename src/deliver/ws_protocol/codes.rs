//! The stable codes of the protocol: `error` message codes (module
//! [`code`], documented in [`ERROR_CODES`]) and the close codes the server
//! sends ([`CLOSE_CODES`]). Clients match on them: never renamed.

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
    /// A live query's initial read would return more rows than
    /// `http.max_snapshot_rows`.
    pub const SNAPSHOT_TOO_LARGE: &str = "snapshot_too_large";
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
    (
        code::SNAPSHOT_TOO_LARGE,
        "a live query's initial read would return more rows than http.max_snapshot_rows; narrow its filter",
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

#[cfg(test)]
#[path = "codes_tests.rs"]
mod tests;
