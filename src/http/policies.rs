//! `GET /v1/policies` (admin): the access policies in force, as the
//! effective policy of every captured table, collection and custom-topic
//! policy per role, the same view `sluice check` prints.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/policies", get(list))
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    super::backfills::admin(&state, &headers, raw.as_deref()).await?;
    let described = state.policies.describe(
        &state.config.captured_tables(),
        &state.config.captured_collections(),
    );
    Ok(axum::Json(described).into_response())
}
