//! The HTTP API: shared state, the error type every handler returns, the
//! credential step, and the server. Each resource exposes its own
//! `router()`; they are merged here.
//!
//! Boundary: `ApiError` never carries database text to a client; database
//! failures are logged and answered 503 with a generic message.

pub mod conn;
pub mod cors;
pub mod health;
pub mod params;

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, AuthError, Authenticator, Identity, Role};
use crate::config::Config;
use crate::event::TenantId;
use crate::hub::Hub;
use crate::log::Durable;
use crate::source::postgres::stats::SourceStats;

/// Everything a handler may use.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: deadpool_postgres::Pool,
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub durable: watch::Receiver<Arc<Durable>>,
    pub source: Arc<SourceStats>,
    /// One per configured MongoDB source.
    pub mongo: Vec<Arc<crate::source::mongo::MongoStatus>>,
    /// Whether this process leads (runs the sources) or stands by.
    pub role: Arc<crate::leader::Role>,
    /// Events this process appended, per source and type.
    pub appended: Arc<crate::log::AppendCounts>,
    pub backfill_metrics: Arc<crate::backfill::runner::BackfillMetrics>,
    pub metrics: Arc<crate::metrics::HttpMetrics>,
    /// Fires on shutdown: open streams end with their resume position.
    pub shutdown: CancellationToken,
    /// The webhook outbox (to wake the dispatcher after a replay).
    pub outbox: crate::webhooks::Outbox,
    pub webhook_metrics: Arc<crate::webhooks::dispatch::WebhookMetrics>,
    /// Connections to the source database, for publishing custom events.
    pub publish_pool: deadpool_postgres::Pool,
}

impl AppState {
    /// The captured tables (`schema.table`).
    pub fn captured_tables(&self) -> Vec<String> {
        self.config
            .source
            .postgres
            .as_ref()
            .map(|p| p.tables.iter().map(|t| t.table.clone()).collect())
            .unwrap_or_default()
    }

    /// The log's last seq now.
    pub fn head(&self) -> i64 {
        self.durable.borrow().last_seq
    }
}

/// An error answered to a client: status, stable code, the parameter at
/// fault (if any) and what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub param: Option<String>,
    pub message: String,
    /// Extra members of the error object (e.g. `oldest` for a gap).
    pub extra: Option<Box<serde_json::Value>>,
}

impl ApiError {
    pub fn bad_param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_parameter",
            param: Some(param.to_owned()),
            message: message.into(),
            extra: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            param: None,
            message: message.into(),
            extra: None,
        }
    }

    pub fn gap(requested: i64, oldest: i64) -> ApiError {
        ApiError {
            status: StatusCode::GONE,
            code: "gap",
            param: Some("from".to_owned()),
            message: format!(
                "seq {requested} is older than the log's retention; the oldest available is {oldest}"
            ),
            extra: Some(Box::new(json!({ "oldest": oldest }))),
        }
    }

    /// A failure of ours; the detail goes to the log, not the client.
    /// A failure on the server's side: logged with its whole cause (a
    /// Postgres error in the server's words), answered without it.
    pub fn unavailable(what: &str, detail: &(dyn std::error::Error + 'static)) -> ApiError {
        tracing::error!(error = %crate::pgconn::error_chain(detail), what, "request failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            param: None,
            message: format!("{what} is unavailable; retry shortly"),
            extra: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut err = json!({
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
        });
        if let Some(p) = &self.param {
            err["param"] = json!(p);
        }
        if let Some(serde_json::Value::Object(extra)) = self.extra.as_deref() {
            for (k, v) in extra {
                err[k] = v.clone();
            }
        }
        json!({ "error": err })
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        if matches!(e, AuthError::Unavailable(_)) {
            return ApiError::unavailable("authentication", &e);
        }
        ApiError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            code: e.code(),
            param: None,
            message: e.to_string(),
            extra: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Authenticates a request (query `apikey`, `apikey` header or Bearer) and
/// checks its role. Returns the identity and the tenant it acts for: its
/// own, or for an admin credential the `tenant` parameter it named.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query_apikey: Option<&str>,
    tenant_param: Option<&str>,
    need: Role,
) -> Result<(Identity, TenantId), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (token, from) = auth::extract(query_apikey, header("apikey"), header("authorization"))?;
    let identity = state.auth.authenticate(&token, from).await?;
    auth::require(&identity, need)?;
    let tenant =
        match (&identity.tenant, tenant_param) {
            (Some(own), None) => own.clone(),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_param(
                    "tenant",
                    "the tenant comes from the credential; only admin credentials may name one",
                ))
            }
            (None, Some(t)) => {
                TenantId::new(t).map_err(|e| ApiError::bad_param("tenant", e.to_string()))?
            }
            (None, None) => return Err(ApiError::bad_param(
                "tenant",
                "admin credentials are cross-tenant: name the tenant to act for with tenant=<id>",
            )),
        };
    Ok((identity, tenant))
}

/// The common start of a handler: the query string parsed against
/// `allowed` (plus `apikey` and `tenant`), then the credential checked for
/// `need`.
pub async fn request(
    state: &AppState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
    allowed: &[&str],
    need: Role,
) -> Result<(params::Params, Identity, TenantId), ApiError> {
    let mut names: Vec<&str> = allowed.to_vec();
    names.extend(["apikey", "tenant"]);
    let p = params::Params::parse(raw_query, &names, state.config.http.max_query_bytes)?;
    let (identity, tenant) =
        authorize(state, headers, p.one("apikey")?, p.one("tenant")?, need).await?;
    Ok((p, identity, tenant))
}

/// Parses a JSON body, naming the member at fault.
pub fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." || path.is_empty() {
            "body".to_owned()
        } else {
            path
        };
        ApiError::bad_param(&param, e.inner().to_string())
    })
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::deliver::sse::router())
        .merge(crate::deliver::ndjson::router())
        .merge(health::router())
        .merge(crate::webhooks::api::router())
        .merge(crate::backfill::api::router())
        .merge(crate::deliver::ws::router())
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
