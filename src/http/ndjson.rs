//! The tenant's log over HTTP: `GET /v1/events` as JSON pages or NDJSON
//! (export a range, or `follow=true` to tail), `GET /v1/events/{seq}`, and
//! `GET /v1/stats`.
//!
//! Every form takes the selector SSE takes (`topic`/`topics` globs,
//! `table`, `collection`, `filter`) besides `types`, `since` and `until`.
//! A JSON page reads at most `http.page_limit` log rows, and its
//! `next_from` is past every row it read, matched or not: a client paging
//! through a selective filter never reads a row twice or skips one.
//!
//! NDJSON (one envelope per line, with heartbeat, shutdown and credential
//! lines for a tail) is streamed by `deliver::ndjson`; this module parses
//! and checks the request and answers its errors.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{request, ApiError, AppState};
use crate::auth::Role;
use crate::deliver::ndjson::{self, EventRange};
use crate::log::{self, LogQuery, ReadScope};

const LIST_PARAMS: &[&str] = &[
    "from",
    "to",
    "limit",
    "types",
    "topics",
    "topic",
    "table",
    "collection",
    "filter",
    "since",
    "until",
    "format",
    "follow",
    "snapshot",
    "order_by",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(list))
        .route("/v1/events/{seq}", get(one))
        .route("/v1/stats", get(stats))
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (p, identity, tenant) =
        request(&state, &headers, raw.as_deref(), LIST_PARAMS, Role::Anon).await?;
    let accept_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let ndjson = match p.one("format")? {
        None => accept_ndjson,
        Some("ndjson") => true,
        Some("json") => false,
        Some(f) => {
            return Err(ApiError::bad_param(
                "format",
                format!("expected json or ndjson, got {f:?}"),
            ))
        }
    };
    let follow = p.bool("follow")?;
    if follow && !ndjson {
        return Err(ApiError::bad_param(
            "follow",
            "follow=true streams NDJSON: add format=ndjson",
        ));
    }
    let limit = match p.one("limit")? {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(ApiError::bad_param(
                    "limit",
                    format!("expected a whole number >= 1, got {v:?}"),
                ))
            }
        },
    };
    if !ndjson && limit.is_some_and(|l| l > state.config.http.page_limit) {
        return Err(ApiError::bad_param(
            "limit",
            format!(
                "at most {} events per page; use format=ndjson to export more",
                state.config.http.page_limit
            ),
        ));
    }
    let types = p.list("types");
    let mut selector = p.selector(&state.captured_tables())?;
    for t in p.list("topics") {
        selector.topics.push(
            crate::subscription::TopicGlob::parse(&t)
                .map_err(|e| ApiError::bad_param("topics", e.to_string()))?,
        );
    }
    let snapshot = p.bool("snapshot")?;
    let live_table = if snapshot {
        if !ndjson {
            return Err(ApiError::bad_param(
                "snapshot",
                "snapshot=true streams NDJSON: add format=ndjson",
            ));
        }
        for bounded in ["to", "limit", "types", "since", "until"] {
            // With order_by, limit is the N of a top-N query.
            if bounded == "limit" && p.one("order_by")?.is_some() {
                continue;
            }
            if p.one(bounded)?.is_some() {
                return Err(ApiError::bad_param(
                    bounded,
                    "a live query (snapshot=true) returns the table's current rows: it takes no to, limit, types, since or until",
                ));
            }
        }
        let others = p.list("topic").len() + p.list("topics").len() + p.list("collection").len();
        Some(state.live_table("table", &p.list("table"), others)?)
    } else {
        None
    };
    let top = state.top_spec(p.one("order_by")?, limit, snapshot, "limit")?;
    let mut access = state.access(&identity, selector)?;
    // A live query's filter keeps its view exact, resumed or not.
    access.membership = snapshot;
    // A top-N query starts with its rows, resumed or not.
    let resumed = p.one("from")?.is_some() && top.is_none();
    let req = EventRange {
        tenant,
        from: p.from("from")?.unwrap_or(1),
        to: p.seq("to")?,
        limit,
        types: (!types.is_empty()).then_some(types),
        access,
        since: p.time("since")?,
        until: p.time("until")?,
    };
    if let (Some(table), false) = (live_table, resumed) {
        let credential = state.auth.watch(
            &identity,
            Duration::from_secs(state.config.auth.revocation_check_secs),
        );
        let access = std::sync::Arc::new(req.access.clone());
        let (items, top) = match top {
            Some(spec) => (
                state
                    .live
                    .start_top(state.streams(), req.tenant.clone(), access, table, spec),
                true,
            ),
            None => (state.live.start(req.tenant.clone(), access, table), false),
        };
        let body = Body::from_stream(ndjson::live(
            state.streams(),
            req,
            items,
            follow,
            top,
            credential,
        ));
        let mut resp = body.into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        return Ok(resp);
    }
    if follow && (req.to.is_some() || req.until.is_some()) {
        return Err(ApiError::bad_param(
            "follow",
            "a tail has no end: drop to/until, or follow",
        ));
    }
    let client = state.log_db().await?;
    let gap = log::gap_at(&**client, req.from)
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    if let Some(g) = gap {
        return Err(ApiError::gap(g.requested, g.oldest));
    }
    drop(client);
    if !ndjson {
        return page(&state, &req).await;
    }
    let credential = state.auth.watch(
        &identity,
        Duration::from_secs(state.config.auth.revocation_check_secs),
    );
    let body = if follow {
        Body::from_stream(ndjson::tail(state.streams(), req, credential))
    } else {
        Body::from_stream(ndjson::export(state.streams(), req, credential))
    };
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

/// One JSON page: `{"events": [...], "next_from": N}`. Reads `limit` rows,
/// then twice as many as read so far (a selective filter costs a few
/// queries, not one per `limit` rows), until `limit` events matched, the
/// range ended, or `http.page_limit` rows were read. `next_from` is the seq
/// after the last row read (an unmatched row is read too), so pages never
/// overlap or miss.
async fn page(state: &AppState, req: &EventRange) -> Result<Response, ApiError> {
    let page_limit = state.config.http.page_limit;
    let limit = req.limit.unwrap_or(100).min(page_limit);
    let client = state.log_db().await?;
    let scope = ReadScope::Tenant(req.tenant.clone());
    let mut next_from = req.from;
    let mut scanned = 0i64;
    let mut events = 0i64;
    let mut body = b"{\"events\":[".to_vec();
    'pages: while events < limit && scanned < page_limit {
        let want = limit.max(scanned).min(page_limit - scanned);
        let rows = log::query_events(&**client, &scope, &req.query(next_from, want))
            .await
            .map_err(|e| ApiError::unavailable("the log", &e))?;
        let exhausted = (rows.len() as i64) < want;
        scanned += rows.len() as i64;
        for r in &rows {
            if let Some(shown) = req.shows(r) {
                if events == limit {
                    // Full: this row starts the next page.
                    break 'pages;
                }
                if events > 0 {
                    body.push(b',');
                }
                events += 1;
                body.extend_from_slice(&shown.body);
            }
            next_from = r.seq + 1;
        }
        if exhausted {
            break;
        }
    }
    body.extend_from_slice(format!("],\"next_from\":{next_from}}}").as_bytes());
    let mut resp = Body::from(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(seq): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (_p, identity, tenant) = request(&state, &headers, raw.as_deref(), &[], Role::Anon).await?;
    let access = state.access(&identity, crate::subscription::Selector::default())?;
    let seq: i64 = match seq.parse() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(ApiError::bad_param(
                "seq",
                format!("expected a seq (a whole number >= 1), got {seq:?}"),
            ))
        }
    };
    let client = state.log_db().await?;
    let q = LogQuery {
        from: seq,
        to: Some(seq),
        limit: 1,
        ..LogQuery::default()
    };
    let rows = log::query_events(&**client, &ReadScope::Tenant(tenant), &q)
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    // Another tenant's event is "not found", not "forbidden": its existence is not ours to tell.
    // An event the credential's policy hides is just as absent.
    let Some(row) = rows
        .into_iter()
        .find_map(|r| access.admit_one(&std::sync::Arc::new(r)))
    else {
        return Err(ApiError::not_found(format!(
            "no event {seq} for this tenant"
        )));
    };
    let mut resp = Body::from(row.body.clone()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Parses `30s`, `15m`, `24h`, `7d`.
fn window(s: &str) -> Option<i64> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|s| *s <= 366 * 86_400)
}

async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (p, identity, tenant) =
        request(&state, &headers, raw.as_deref(), &["window"], Role::Anon).await?;
    if !state.policies.viewer(&identity).is_open() && identity.role < Role::Service {
        return Err(ApiError::forbidden(
            "stats count every event of the tenant; with access policies configured they need a service key",
        ));
    }
    let secs = match p.one("window")? {
        None => 86_400,
        Some(w) => window(w).ok_or_else(|| {
            ApiError::bad_param(
                "window",
                format!("expected a duration like 30s, 15m, 24h or 7d (at most 366d), got {w:?}"),
            )
        })?,
    };
    let client = state.log_db().await?;
    let rows = log::counts_by_type_topic(&**client, &tenant, secs as f64)
        .await
        .map_err(|e| ApiError::unavailable("the log", &e))?;
    let mut by_type = serde_json::Map::new();
    let mut by_topic = serde_json::Map::new();
    let mut total = 0i64;
    for (t, topic, n) in rows {
        total += n;
        let bump = |m: &mut serde_json::Map<String, serde_json::Value>, k: String| {
            let v = m.get(&k).and_then(|v| v.as_i64()).unwrap_or(0) + n;
            m.insert(k, v.into());
        };
        bump(&mut by_type, t);
        bump(&mut by_topic, topic);
    }
    Ok(axum::Json(serde_json::json!({
        "tenant": tenant.as_str(),
        "window_seconds": secs,
        "total": total,
        "by_type": by_type,
        "by_topic": by_topic,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::window;

    #[test]
    fn windows_parse_with_units_and_bounds() {
        assert_eq!(window("30s"), Some(30));
        assert_eq!(window("15m"), Some(900));
        assert_eq!(window("24h"), Some(86_400));
        assert_eq!(window("7d"), Some(604_800));
        for bad in ["", "h", "0h", "-1h", "1w", "367d", "abc"] {
            assert_eq!(window(bad), None, "{bad}");
        }
    }
}
