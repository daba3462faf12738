//! The common start of a handler: the query string checked against the
//! parameters it accepts, the credential authenticated and its role
//! checked, the tenant it acts for decided; and JSON bodies parsed with the
//! member at fault named.

use axum::http::HeaderMap;

use super::params;
use super::{ApiError, AppState};
use crate::auth::{self, Identity, Role};
use crate::event::TenantId;

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
