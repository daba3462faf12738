//! Delivery of the log to clients: SSE, NDJSON (and later WebSocket and
//! webhooks). Every path reads the same envelopes, scoped to the tenant of
//! the credential.

pub mod follow;
pub mod ndjson;
pub mod publish;
pub mod sse;
pub mod ws;
pub mod ws_protocol;
