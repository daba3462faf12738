//! Cross-origin access for browsers (`http.cors_origins`).
//!
//! Credentials are API keys and JWTs sent explicitly (query string or
//! headers), never cookies, so answering `*` is safe: a page on another
//! origin can only act with a key it already holds. Operators who want to
//! restrict which sites may embed their keys list the origins instead.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const ALLOW_HEADERS: &str = "apikey, authorization, content-type, last-event-id, accept";
const MAX_AGE_SECS: &str = "600";

/// The `Access-Control-Allow-Origin` value for a request from these
/// headers: `None` when it names no origin or one that is not allowed.
pub fn allow_origin(origins: &str, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let origin_text = origin.to_str().ok()?;
    let mut allowed = origins.split(',').map(str::trim).filter(|o| !o.is_empty());
    let mut wildcard = false;
    let matched = allowed.any(|o| {
        wildcard |= o == "*";
        o == "*" || o.eq_ignore_ascii_case(origin_text)
    });
    match (matched, wildcard) {
        (false, _) => None,
        (true, true) => Some(HeaderValue::from_static("*")),
        (true, false) => Some(origin.clone()),
    }
}

/// Answers preflight requests and marks allowed responses.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let origins = state.config.http.cors_origins.as_str();
    let allow = allow_origin(origins, req.headers());
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(allow) = allow else {
            return ApiError {
                status: StatusCode::FORBIDDEN,
                code: "origin_not_allowed",
                param: None,
                message: "this origin is not in the server's http.cors_origins".to_owned(),
                extra: None,
            }
            .into_response();
        };
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECS),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        return resp;
    }
    let mut resp = next.run(req).await;
    if let Some(allow) = allow {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_str(origin).expect("valid"),
        );
        h
    }

    #[test]
    fn origins_are_matched_exactly_or_by_wildcard() {
        let app = from("https://app.example.com");
        assert_eq!(allow_origin("*", &app), Some(HeaderValue::from_static("*")));
        assert_eq!(
            allow_origin("https://a.test, https://app.example.com", &app),
            Some(HeaderValue::from_static("https://app.example.com"))
        );
        assert_eq!(allow_origin("https://a.test", &app), None);
        assert_eq!(allow_origin("", &app), None);
        assert_eq!(allow_origin("*", &HeaderMap::new()), None);
    }
}
