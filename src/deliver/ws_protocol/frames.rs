//! Server → client messages, serialized by hand into their exact bytes
//! (an event frame embeds the envelope verbatim, never re-serialized).

use bytes::Bytes;

use crate::auth::Role;
use crate::event::json::push_json_str;
use crate::event::TenantId;

use super::ProtocolError;

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

/// Serializes `auth_ok`: `{"type":"auth_ok","tenant":…,"role":…}`.
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

/// Serializes `synced` of a live query: `{"type":"synced","id":…,"seq":N}`;
/// its changes follow from `N + 1` (resume with `from: N + 1`).
pub fn synced_frame(id: &str, seq: i64) -> String {
    let mut out = String::with_capacity(id.len() + 48);
    out.push_str("{\"type\":\"synced\",\"id\":");
    push_json_str(&mut out, id);
    out.push_str(",\"seq\":");
    out.push_str(&seq.to_string());
    out.push('}');
    out
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
    event_frame_with(sub, "", envelope)
}

/// `{"type":"event","sub":…<extra>,"event":<envelope>}`; `extra` is
/// serialized members, each starting with a comma.
fn event_frame_with(sub: &str, extra: &str, envelope: &[u8]) -> Bytes {
    let mut head = String::with_capacity(sub.len() + extra.len() + 40);
    head.push_str("{\"type\":\"event\",\"sub\":");
    push_json_str(&mut head, sub);
    head.push_str(extra);
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

fn id_frame(kind: &str, id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 40);
    out.push_str("{\"type\":\"");
    out.push_str(kind);
    out.push_str("\",\"id\":");
    push_json_str(&mut out, id);
    out.push('}');
    out
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;

/// A consumer group's message on a group subscription:
/// `{"type":"event","sub":…,"delivery":…,"attempt":…,"seq":…,"event":<envelope>}`.
pub fn group_event_frame(
    sub: &str,
    delivery: &str,
    attempt: i32,
    seq: i64,
    envelope: &[u8],
) -> Bytes {
    let mut extra = String::from(",\"delivery\":");
    push_json_str(&mut extra, delivery);
    extra.push_str(&format!(",\"attempt\":{attempt},\"seq\":{seq}"));
    event_frame_with(sub, &extra, envelope)
}

/// The answer to `ack`/`nack`: `{"type":"acked"|"nacked","id":…,"count":n,"unknown":[…]}`
/// (`unknown`: tokens that matched nothing in flight: expired, settled, or
/// not this group's).
pub fn settled_frame(kind: &str, id: &str, count: usize, unknown: &[String]) -> String {
    serde_json::json!({"type": kind, "id": id, "count": count, "unknown": unknown}).to_string()
}
