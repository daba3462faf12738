//! `ApiError`: the error every handler returns, as a status, a stable
//! code, the parameter at fault and a message.
//!
//! Boundary: `ApiError` never carries database text to a client; database
//! failures are logged and answered 503 with a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;

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

    /// 403 `forbidden`: the credential is valid but its access policy
    /// does not allow this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
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
