//! Client → server messages: one text frame read as a JSON object of a
//! known `type` and validated member by member into a [`ClientMessage`], or
//! a [`ProtocolError`] that names the member and carries the message's id.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::event::json::kind_of;

use crate::subscription::{collection_glob, table_glob, Filter, Selector, TopicGlob};

use super::{code, ClientMessage, ProtocolError, CLIENT_TYPES, MAX_ID_BYTES, MAX_TOPICS};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    Auth,
    Subscribe,
    Unsubscribe,
    Publish,
    Ping,
    Ack,
    Nack,
}

impl MessageType {
    fn parse(s: &str) -> Option<MessageType> {
        match s {
            "auth" => Some(MessageType::Auth),
            "subscribe" => Some(MessageType::Subscribe),
            "unsubscribe" => Some(MessageType::Unsubscribe),
            "publish" => Some(MessageType::Publish),
            "ping" => Some(MessageType::Ping),
            "ack" => Some(MessageType::Ack),
            "nack" => Some(MessageType::Nack),
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
            MessageType::Ack => "ack",
            MessageType::Nack => "nack",
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
            MessageType::Ack => "an ack message",
            MessageType::Nack => "a nack message",
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
                "group",
                "max_in_flight",
                "snapshot",
                "order_by",
                "limit",
            ],
            MessageType::Unsubscribe => &["id"],
            MessageType::Publish => &["event", "data", "subject"],
            MessageType::Ping => &[],
            MessageType::Ack => &["id", "deliveries"],
            MessageType::Nack => &["id", "deliveries", "delay_ms"],
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
            let group = match m.optional("group") {
                None => None,
                Some(Value::String(name)) => {
                    let shaped = !name.is_empty()
                        && name.len() <= 64
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                    if !shaped {
                        return Err(m.invalid(format!(
                            "group: expected a group name (1 to 64 of A-Z a-z 0-9 _ . -), found {}",
                            echo(name)
                        )));
                    }
                    if !selector.topics.is_empty() || selector.filter.is_some() || from.is_some() {
                        return Err(m.invalid(
                            "a group subscription takes no topic, topics, table, collection, filter or from: the group has its own (PATCH /v1/groups/{name} changes them)",
                        ));
                    }
                    let max_in_flight = match m.optional("max_in_flight") {
                        None => 100,
                        Some(v) => match v.as_i64() {
                            Some(n) if (1..=1000).contains(&n) => n,
                            _ => {
                                return Err(m.invalid(
                                    "max_in_flight: expected a whole number from 1 to 1000",
                                ))
                            }
                        },
                    };
                    Some(super::GroupSubscription {
                        name: name.clone(),
                        max_in_flight,
                    })
                }
                Some(other) => {
                    return Err(m.invalid(format!(
                        "group: expected a group name, found {}",
                        kind_of(other)
                    )))
                }
            };
            if group.is_none() && m.optional("max_in_flight").is_some() {
                return Err(m.invalid("max_in_flight: only with group"));
            }
            let snapshot = match m.optional("snapshot") {
                None | Some(Value::Bool(false)) => None,
                Some(Value::Bool(true)) => {
                    let tables = m.names("table", "\"schema.table\"")?;
                    let others = ["topic", "topics", "collection", "group"]
                        .iter()
                        .any(|k| m.optional(k).is_some());
                    match tables.as_slice() {
                        [(_, table)] if !others => Some(super::LiveSubscription {
                            table: (*table).to_owned(),
                            order_by: match m.optional("order_by") {
                                None => None,
                                Some(Value::String(s)) => Some(s.clone()),
                                Some(other) => {
                                    return Err(m.invalid(format!(
                                        "order_by: expected a column name (with - for descending), found {}",
                                        kind_of(other)
                                    )))
                                }
                            },
                            limit: match m.optional("limit") {
                                None => None,
                                Some(v) => match v.as_i64() {
                                    Some(n) => Some(n),
                                    None => {
                                        return Err(m.invalid(format!(
                                            "limit: expected a whole number, found {}",
                                            kind_of(v)
                                        )))
                                    }
                                },
                            },
                        }),
                        _ => {
                            return Err(m.invalid(
                                "snapshot: a live query reads exactly one table: give one \"table\" and no topic, topics, collection or group",
                            ))
                        }
                    }
                }
                Some(other) => {
                    return Err(m.invalid(format!(
                        "snapshot: expected true or false, found {}",
                        kind_of(other)
                    )))
                }
            };
            if snapshot.is_none()
                && (m.optional("order_by").is_some() || m.optional("limit").is_some())
            {
                return Err(
                    m.invalid("order_by and limit are for live queries: add \"snapshot\": true")
                );
            }
            Ok(ClientMessage::Subscribe {
                id,
                selector,
                from,
                group,
                snapshot,
            })
        }
        MessageType::Ack | MessageType::Nack => {
            let id = m.id()?;
            let deliveries = match m.optional("deliveries") {
                Some(Value::Array(items))
                    if !items.is_empty()
                        && items.len() <= super::MAX_SETTLE
                        && items.iter().all(Value::is_string) =>
                {
                    items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                }
                _ => {
                    return Err(m.invalid(format!(
                        "deliveries: expected an array of 1 to {} delivery tokens (strings)",
                        super::MAX_SETTLE
                    )))
                }
            };
            if kind == MessageType::Ack {
                return Ok(ClientMessage::Ack { id, deliveries });
            }
            let delay_ms = match m.optional("delay_ms") {
                None => None,
                Some(v) => match v.as_i64() {
                    Some(n) if (0..=43_200_000).contains(&n) => Some(n),
                    _ => {
                        return Err(m.invalid(
                            "delay_ms: expected a whole number of milliseconds from 0 to 43200000 (12 h)",
                        ))
                    }
                },
            };
            Ok(ClientMessage::Nack {
                id,
                deliveries,
                delay_ms,
            })
        }
        MessageType::Unsubscribe => Ok(ClientMessage::Unsubscribe { id: m.id()? }),
        MessageType::Publish => {
            let name_wanted = crate::deliver::publish::NAME_WANTED;
            let event = m.string("event", name_wanted, name_wanted)?;
            crate::deliver::publish::check_name(event)
                .map_err(|e| m.invalid(format!("event: {e}")))?;
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
                Some(v) => Some(
                    crate::deliver::publish::check_subject(v)
                        .map_err(|e| m.invalid(format!("subject: {e}")))?,
                ),
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

/// Longest client-supplied text quoted whole in an error message, in bytes.
const ECHO_BYTES: usize = 64;

/// `s` quoted for an error message, cut after [`ECHO_BYTES`] bytes.
pub(crate) fn echo(s: &str) -> String {
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

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
