//! `POST /v1/backfills`, `GET /v1/backfills`, `GET /v1/backfills/{id}`:
//! operator routes (admin credentials only), since a backfill reads every
//! tenant's rows of a table.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{json_body, params, ApiError, AppState};
use crate::auth::{self, Role};
use crate::backfill::{self, BackfillError, Request};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/backfills", post(create).get(list))
        .route("/v1/backfills/{id}", get(read))
        .route("/v1/backfills/{id}/cancel", post(cancel))
}

/// Only an admin credential passes; no other query parameter is accepted.
pub(super) async fn admin(
    state: &AppState,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<(), ApiError> {
    let p = params::Params::parse(raw, &["apikey"], state.config.http.max_query_bytes)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (token, from) = auth::extract(p.one("apikey")?, header("apikey"), header("authorization"))?;
    let identity = state.auth.authenticate(&token, from).await?;
    auth::require(&identity, Role::Admin)?;
    Ok(())
}

fn api_error(e: BackfillError) -> ApiError {
    match e {
        BackfillError::UnknownTable(_)
        | BackfillError::NotCaptured(_)
        | BackfillError::NoPrimaryKey(_) => ApiError::bad_param("table", e.to_string()),
        BackfillError::InvalidPredicate(_) => ApiError::bad_param("where", e.to_string()),
        BackfillError::InvalidRequest(ref m) => {
            let param = m.split(':').next().unwrap_or("body").to_owned();
            ApiError::bad_param(&param, e.to_string())
        }
        BackfillError::NotFound(id) => ApiError::not_found(format!("no backfill {id}")),
        BackfillError::Db(e) => ApiError::unavailable("the database", &e),
    }
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    bytes: Bytes,
) -> Result<(StatusCode, Json<backfill::Backfill>), ApiError> {
    admin(&state, &headers, raw.as_deref()).await?;
    let req: Request = json_body(&bytes)?;
    let pg = state
        .config
        .postgres()
        .map_err(|e| ApiError::unavailable("the Postgres source", &e))?;
    let source = state
        .publish_pool
        .get()
        .await
        .map_err(|e| ApiError::unavailable("the source database", &e))?;
    let db = state.state_db().await?;
    let b = backfill::create(&db, &source, pg, &req, "backfill")
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(b)))
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&state, &headers, raw.as_deref()).await?;
    let db = state.state_db().await?;
    let all = backfill::list(&db).await.map_err(api_error)?;
    Ok(Json(serde_json::json!({ "backfills": all })))
}

async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<backfill::Backfill>, ApiError> {
    admin(&state, &headers, raw.as_deref()).await?;
    let id = backfill_id(&id)?;
    let db = state.state_db().await?;
    match backfill::cancel(&db, id).await.map_err(api_error)? {
        Some(b) => Ok(Json(b)),
        None => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "not_running",
            param: None,
            message: format!("backfill {id} is not running"),
            extra: None,
        }),
    }
}

async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<backfill::Backfill>, ApiError> {
    admin(&state, &headers, raw.as_deref()).await?;
    let id = backfill_id(&id)?;
    let db = state.state_db().await?;
    Ok(Json(backfill::get(&db, id).await.map_err(api_error)?))
}

/// A backfill id from the path; one that is not a number names no backfill.
fn backfill_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no backfill {id:?}")))
}
