//! The HTTP API, the top layer: the state handlers share, the error they
//! return, the credential step, and one module of handlers per resource,
//! each with its `router()`; they are merged and served here.
//!
//! Boundary: nothing below `http` imports it. Handlers parse and authorize
//! a request, then call domain code (`deliver`, `webhooks`, `backfill`,
//! `log`) with plain arguments or that module's own context struct.

pub mod backfills;
pub mod conn;
pub mod cors;
mod error;
mod extract;
pub mod groups;
pub mod health;
pub mod ndjson;
pub mod params;
pub mod policies;
pub mod publish;
pub mod sse;
mod state;
pub mod webhooks;
pub mod ws;

use axum::Router;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use extract::{authorize, json_body, request};
pub use state::AppState;

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(sse::router())
        .merge(ndjson::router())
        .merge(publish::router())
        .merge(health::router())
        .merge(webhooks::router())
        .merge(backfills::router())
        .merge(policies::router())
        .merge(groups::router())
        .merge(ws::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::layer,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` (see `conn`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state.clone());
    conn::serve(listener, state, app, shutdown).await
}
