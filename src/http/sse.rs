//! `GET /v1/events/subscribe`: Server-Sent Events for browsers (anon key in
//! the query string) and backends. This is the request side: credential,
//! parameters (`topic`, `table`, `collection`, `filter`, `from`, `mode`,
//! `Last-Event-ID`) and the gap check, answered as an `ApiError` before any
//! stream starts; the stream itself is `deliver::sse::SseSession`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{stream, StreamExt};

use super::params::Params;
use super::{request, ApiError, AppState};
use crate::auth::Role;
use crate::deliver::follow::Start;
use crate::deliver::sse::{FrameMode, LivePhase, SseSession, RESPONSE_HEADERS};

const PARAMS: &[&str] = &[
    "topic",
    "table",
    "collection",
    "filter",
    "from",
    "mode",
    "snapshot",
    "order_by",
    "limit",
];

/// The SSE route (the lean connection path in `conn` serves it too).
pub const SUBSCRIBE_PATH: &str = "/v1/events/subscribe";

pub fn router() -> Router<AppState> {
    Router::new().route(SUBSCRIBE_PATH, get(subscribe))
}

fn frame_mode(params: &Params) -> Result<FrameMode, ApiError> {
    match params.one("mode")? {
        None | Some("typed") => Ok(FrameMode::Typed),
        Some("message") => Ok(FrameMode::Message),
        Some(other) => Err(ApiError::bad_param(
            "mode",
            format!("expected typed (event: <type> on each frame) or message (no event: line), got {other:?}"),
        )),
    }
}

/// The start position: `Last-Event-ID` (exclusive) wins over `from`.
fn start(headers: &HeaderMap, params: &Params) -> Result<Start, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let text = v.to_str().unwrap_or("");
        return match text.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Start::At(n + 1)),
            _ => Err(ApiError::bad_param(
                "Last-Event-ID",
                format!("expected the seq of the last event received, got {text:?}"),
            )),
        };
    }
    Ok(params.from("from")?.map_or(Start::Live, Start::At))
}

async fn subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let session = open(&state, &headers, raw.as_deref()).await?;
    let first = session.retry_hint();
    let rest = stream::unfold(session, |mut s| async move {
        let frame = s.next_frame().await?;
        Some((Ok::<Bytes, Infallible>(frame), s))
    });
    let body = stream::once(async move { Ok(first) }).chain(rest);
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    for (name, value) in RESPONSE_HEADERS {
        h.insert(*name, HeaderValue::from_static(value));
    }
    Ok(resp)
}

/// Authenticates and validates a subscription request and opens its
/// session, positioned where it asked. Every client error is an `ApiError`
/// (answered before any stream starts). Used by the handler above and by
/// `conn`'s lean path.
pub async fn open(
    state: &AppState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<SseSession, ApiError> {
    let (params, identity, tenant) = request(state, headers, raw_query, PARAMS, Role::Anon).await?;
    let snapshot = params.bool("snapshot")?;
    let live_table = if snapshot {
        let tables = params.list("table");
        let others = params.list("topic").len() + params.list("collection").len();
        Some(state.live_table("table", &tables, others)?)
    } else {
        None
    };
    let limit = match params.one("limit")? {
        None => None,
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            ApiError::bad_param("limit", format!("expected a whole number, got {v:?}"))
        })?),
    };
    let top = state.top_spec(params.one("order_by")?, limit, snapshot, "limit")?;
    let mut access = state.access(&identity, params.selector(&state.captured_tables())?)?;
    // A live query's filter keeps its view exact (rows leave it too),
    // whether it starts with the rows or resumes after `synced`.
    access.membership = snapshot;
    let access = Arc::new(access);
    let mode = frame_mode(&params)?;
    let resumed = headers.contains_key("last-event-id") || params.one("from")?.is_some();
    let start = start(headers, &params)?;
    if let Start::At(from) = start {
        let client = state.log_db().await?;
        let gap = crate::log::gap_at(&**client, from)
            .await
            .map_err(|e| ApiError::unavailable("the log", &e))?;
        if let Some(g) = gap {
            return Err(ApiError::gap(g.requested, g.oldest));
        }
    }
    let streams = state.streams();
    let credential = state.auth.watch(
        &identity,
        Duration::from_secs(state.config.auth.revocation_check_secs),
    );
    if let (Some(table), Some(spec)) = (&live_table, top) {
        // A top-N query's window lives in its task: a reconnect, resumed or
        // not, starts it over with its rows.
        let items = state.live.start_top(
            streams.clone(),
            tenant.clone(),
            access.clone(),
            table.clone(),
            spec,
        );
        let idle = streams.follower(tenant, access, Start::At(i64::MAX));
        let session = SseSession::new(&streams, idle, credential, mode, state.config.http.retry_ms);
        return Ok(session.with_live(LivePhase {
            items,
            then: None,
            synced: false,
        }));
    }
    let live = match live_table {
        // A resumed live query goes on with changes only.
        Some(table) if !resumed => Some(table),
        _ => None,
    };
    let Some(table) = live else {
        let follower = streams.follower(tenant, access, start);
        return Ok(SseSession::new(
            &streams,
            follower,
            credential,
            mode,
            state.config.http.retry_ms,
        ));
    };
    let items = state.live.start(tenant.clone(), access.clone(), table);
    // Not read: the session follows from the hand-over once it is known.
    let idle = streams.follower(tenant.clone(), access.clone(), Start::At(i64::MAX));
    let then_streams = streams.clone();
    let session = SseSession::new(&streams, idle, credential, mode, state.config.http.retry_ms);
    Ok(session.with_live(LivePhase {
        items,
        then: Some(Box::new(move |from| {
            then_streams.follower(tenant, access, Start::At(from))
        })),
        synced: false,
    }))
}
