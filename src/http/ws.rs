//! `GET /v1/ws`: the upgrade. A credential in the URL (`apikey`) or the
//! headers authenticates at once; otherwise the session's first message
//! must. The session itself (subscriptions, publishing) is `deliver::ws`.

use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::params::Params;
use super::{authorize, ApiError, AppState};
use crate::auth::Role;
use crate::deliver::ws::{self, WsContext};
use crate::deliver::ws_protocol as proto;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/ws", get(upgrade))
}

/// What a session needs from the state.
fn context(state: &AppState) -> WsContext {
    WsContext {
        streams: state.streams(),
        auth: state.auth.clone(),
        publisher: state.publisher(),
        config: state.config.ws.clone(),
        revocation_check: Duration::from_secs(state.config.auth.revocation_check_secs),
        captured_tables: state.captured_tables(),
        policies: state.policies.clone(),
        groups: state.groups.clone(),
        groups_pool: state.groups_pool.clone(),
        live: state.live.clone(),
        max_top_rows: state.config.http.max_top_rows,
    }
}

async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let p = Params::parse(
        raw.as_deref(),
        &["apikey", "tenant"],
        state.config.http.max_query_bytes,
    )?;
    let has_header = headers.contains_key("apikey") || headers.contains_key("authorization");
    // A credential in the URL or headers authenticates at once; otherwise
    // the first message must.
    let pre = if p.one("apikey")?.is_some() || has_header {
        let (identity, tenant) = authorize(
            &state,
            &headers,
            p.one("apikey")?,
            p.one("tenant")?,
            Role::Anon,
        )
        .await?;
        Some((identity, tenant))
    } else {
        None
    };
    let cloudevents = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == proto::CLOUDEVENTS_SUBPROTOCOL);
    let ws = if cloudevents {
        ws.protocols([proto::CLOUDEVENTS_SUBPROTOCOL])
    } else {
        ws
    };
    // Frames up to 16 × the limit are read and answered `message_too_large`
    // (the connection stays). A larger one is refused by the library at its
    // header, before its payload is buffered, and the session closes with
    // 1009 (see `deliver::ws`).
    let limit = state.config.ws.max_message_bytes;
    let ws = ws
        .max_message_size(limit.saturating_mul(16))
        .max_frame_size(limit.saturating_mul(16))
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let ctx = context(&state);
    Ok(ws.on_upgrade(move |socket| ws::run(socket, ctx, pre, cloudevents)))
}
