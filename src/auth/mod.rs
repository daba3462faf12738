//! Who is asking: API keys (random, shown once, stored as SHA-256 in
//! `sluice.api_keys`) and signed JWTs carrying a tenant claim.
//!
//! Roles are ordered `anon < service < admin`. `anon` reads and subscribes
//! and is the one role that may travel in a query string (browsers' SSE
//! cannot send headers); `service` is a tenant's backend; `admin` is the
//! operator, cross-tenant, and exists only as an API key (a JWT can never
//! be admin). Every identity but an admin's carries exactly one tenant, and
//! that tenant comes from the credential, never from the request.
//!
//! Every identity also carries what access policies need: its *policy
//! role* (the built-in role's name, or a custom role such as `member`,
//! which has anon's privilege) and its *claims* (a JWT's verified payload,
//! an API key's stored claims). Custom roles are the names the config's
//! policies define; a credential naming another is refused.
//!
//! API keys are looked up on every request, so a revocation applies to new
//! requests at once; open streams wait on a [`CredentialWatch`] (`watch`),
//! which re-checks keys every `auth.revocation_check_secs` and ends at a
//! JWT's expiry.

pub mod jwt;
pub mod keys;
pub mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::config::AuthConfig;
use crate::event::TenantId;

pub use jwt::{JwtVerifier, JWT_LEEWAY_SECS};
pub use keys::{create_key, get_key, list_keys, revoke_key, KeyInfo};
pub use watch::{CredentialEnd, CredentialWatch};

/// A credential's privilege. The order is the privilege order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Anon,
    Service,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Anon, Role::Service, Role::Admin];

    /// `anon`, `service` or `admin` (exactly, lower case).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "anon" => Some(Role::Anon),
            "service" => Some(Role::Service),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Anon => "anon",
            Role::Service => "service",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is asking. `tenant` is None only for admin keys (operator, cross-tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: Option<TenantId>,
    /// The privilege (`require` compares it).
    pub role: Role,
    /// The role policies are chosen by: "anon", "service", "admin", or a
    /// custom role (privilege anon) named by the JWT's role claim or the key.
    pub policy_role: Arc<str>,
    /// The credential's claims: a JWT's whole verified payload; an API key's
    /// stored claims (only what was given at creation: no implied "sub").
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
    pub credential: CredentialId,
}

/// What to re-check while a stream stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialId {
    /// A row of `sluice.api_keys`.
    ApiKey { id: i64 },
    /// A JWT, valid until its `exp` (plus [`JWT_LEEWAY_SECS`]).
    Jwt { expires_at_unix: i64 },
}

/// Where the credential came from: only anon credentials may come in the
/// query string (it ends up in access logs, proxies and browser history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// The `apikey` query parameter.
    Query,
    /// The `apikey` header.
    Header,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send an API key in the apikey header (anon keys may use the apikey query parameter) or Authorization: Bearer <token>")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(String),
    #[error("unknown API key")]
    UnknownKey,
    #[error("this API key has been revoked")]
    Revoked,
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("invalid token: {0}")]
    InvalidJwt(String),
    #[error("JWTs are not accepted here: neither auth.jwt_hs256_secret nor auth.jwt_rs256_public_key is configured")]
    JwtNotConfigured,
    #[error("only anon keys may be passed in the query string; send service and admin keys in the apikey header or Authorization: Bearer")]
    QueryStringNotAnon,
    #[error("forbidden: this needs a {need} credential, and this one is {have}")]
    Forbidden { need: Role, have: Role },
    #[error("the credential names no tenant")]
    NoTenant,
    /// An API key whose custom role the config's policies no longer define.
    #[error(
        "this API key's role {role:?} is not a custom role of this Sluice's policies ({known})"
    )]
    UnknownRole { role: String, known: String },
    #[error("state database unavailable: {0}")]
    Unavailable(String),
    /// `auth.*` settings that cannot work (an unreadable PEM, an empty secret).
    #[error("config key `{key}`: {message}")]
    Config { key: &'static str, message: String },
    /// A key request that makes no sense (an admin key with a tenant, a
    /// tenant key without one, an unknown role).
    #[error("{0}")]
    InvalidKeyRequest(String),
}

impl AuthError {
    /// 401 for missing/invalid/expired/revoked credentials, 403 for Forbidden
    /// and QueryStringNotAnon, 503 for Unavailable.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::UnknownKey
            | AuthError::Revoked
            | AuthError::Expired
            | AuthError::BadSignature
            | AuthError::InvalidJwt(_)
            | AuthError::JwtNotConfigured
            | AuthError::NoTenant
            | AuthError::UnknownRole { .. } => 401,
            AuthError::Forbidden { .. } | AuthError::QueryStringNotAnon => 403,
            AuthError::Unavailable(_) => 503,
            AuthError::InvalidKeyRequest(_) => 400,
            AuthError::Config { .. } => 500,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::Malformed(_) => "malformed_credentials",
            AuthError::UnknownKey => "invalid_key",
            AuthError::Revoked => "revoked",
            AuthError::Expired => "expired",
            AuthError::BadSignature => "bad_signature",
            AuthError::InvalidJwt(_) => "invalid_token",
            AuthError::JwtNotConfigured => "jwt_not_configured",
            AuthError::QueryStringNotAnon => "key_not_allowed_in_query",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::NoTenant => "no_tenant",
            AuthError::UnknownRole { .. } => "unknown_role",
            AuthError::Unavailable(_) => "unavailable",
            AuthError::Config { .. } => "auth_misconfigured",
            AuthError::InvalidKeyRequest(_) => "invalid_request",
        }
    }
}

impl From<tokio_postgres::Error> for AuthError {
    fn from(e: tokio_postgres::Error) -> Self {
        AuthError::Unavailable(describe_db_error(&e))
    }
}

impl From<crate::pgconn::PgError> for AuthError {
    fn from(e: crate::pgconn::PgError) -> Self {
        AuthError::Unavailable(e.to_string())
    }
}

/// tokio-postgres's `Display` says only "db error"; operators need the
/// server's message.
pub(crate) fn describe_db_error(e: &tokio_postgres::Error) -> String {
    crate::pgconn::describe(e)
}

/// Picks the credential: `apikey` header, else `apikey` query parameter,
/// else `Authorization: Bearer <token>`. (Both apikey header and query
/// present: the header wins.) An `Authorization` that is not Bearer, when
/// it is the credential used, is Malformed; so is an empty one.
pub fn extract(
    query_apikey: Option<&str>,
    header_apikey: Option<&str>,
    authorization: Option<&str>,
) -> Result<(String, CredentialSource), AuthError> {
    fn nonempty(v: &str, what: &str) -> Result<String, AuthError> {
        let v = v.trim();
        if v.is_empty() {
            return Err(AuthError::Malformed(format!("{what} is empty")));
        }
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthError::Malformed(format!(
                "{what} contains whitespace or control characters"
            )));
        }
        Ok(v.to_owned())
    }
    if let Some(h) = header_apikey {
        return Ok((nonempty(h, "the apikey header")?, CredentialSource::Header));
    }
    if let Some(q) = query_apikey {
        return Ok((
            nonempty(q, "the apikey query parameter")?,
            CredentialSource::Query,
        ));
    }
    if let Some(a) = authorization {
        let a = a.trim();
        let (scheme, rest) = a.split_once(' ').unwrap_or((a, ""));
        // Auth schemes are case-insensitive (RFC 9110 §11.1).
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed(
                "the Authorization header must be `Bearer <token>`".to_owned(),
            ));
        }
        return Ok((
            nonempty(rest, "the Bearer token")?,
            CredentialSource::Bearer,
        ));
    }
    Err(AuthError::Missing)
}

/// 403 unless `identity.role >= need`.
pub fn require(identity: &Identity, need: Role) -> Result<(), AuthError> {
    if identity.role >= need {
        Ok(())
    } else {
        Err(AuthError::Forbidden {
            need,
            have: identity.role,
        })
    }
}

/// How long to wait for the state database before answering 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

const LOOKUP_BY_HASH: &str = "SELECT id, tenant, role, revoked_at IS NOT NULL, claims, policy_role
     FROM sluice.api_keys WHERE key_hash = $1";
const ACTIVE_BY_ID: &str = "SELECT 1 FROM sluice.api_keys WHERE id = $1 AND revoked_at IS NULL";

/// The Authenticator's own session on the state database, with its
/// statements prepared once.
struct StateConn {
    client: Client,
    by_hash: Statement,
    active_by_id: Statement,
}

/// Verifies credentials. Cheap to share (`Arc<Authenticator>`); requests
/// share its one connection (tokio-postgres pipelines them).
pub struct Authenticator {
    state_url: String,
    conn: tokio::sync::Mutex<Option<Arc<StateConn>>>,
    jwt: Option<JwtVerifier>,
    /// The custom roles of the config's policies: a key naming another is
    /// refused (its role's policies are gone; failing closed).
    custom_roles: Vec<String>,
    /// Recent answers of `key_still_active` per key id: every open stream
    /// re-checks its key, and streams sharing a key share one lookup.
    rechecks: std::sync::Mutex<std::collections::HashMap<i64, (std::time::Instant, bool)>>,
}

/// How long a `key_still_active` answer is reused.
const RECHECK_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Bound on remembered answers; stale ones are dropped past it.
const RECHECK_MAX: usize = 100_000;

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Checks the JWT settings (an unusable key fails here, not at the first
    /// request) and connects to the state database, whose migrations must
    /// have run (`sluice.api_keys` must exist). `custom_roles` are the role
    /// names the config's policies define.
    pub async fn new(
        state_url: &str,
        cfg: &AuthConfig,
        custom_roles: &[String],
    ) -> Result<Authenticator, AuthError> {
        let jwt = JwtVerifier::from_config(cfg, custom_roles)?;
        let auth = Authenticator {
            state_url: state_url.to_owned(),
            conn: tokio::sync::Mutex::new(None),
            jwt,
            custom_roles: custom_roles.to_vec(),
            rechecks: std::sync::Mutex::default(),
        };
        auth.conn().await?;
        Ok(auth)
    }

    /// Whether JWTs are accepted (a JWT key is configured).
    pub fn accepts_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// Verifies a credential. API keys are looked up by their SHA-256 on
    /// every call; JWTs are verified by signature and `exp`. Credentials
    /// from the query string must be anon.
    pub async fn authenticate(
        &self,
        token: &str,
        from: CredentialSource,
    ) -> Result<Identity, AuthError> {
        if token.starts_with(keys::KEY_PREFIX) {
            self.authenticate_key(token, from).await
        } else if jwt::looks_like_jwt(token) {
            let verifier = self.jwt.as_ref().ok_or(AuthError::JwtNotConfigured)?;
            let claims = verifier.verify(token, jwt::now_unix())?;
            if from == CredentialSource::Query && claims.role != Role::Anon {
                return Err(AuthError::QueryStringNotAnon);
            }
            Ok(Identity {
                tenant: Some(claims.tenant),
                role: claims.role,
                policy_role: claims.policy_role,
                claims: claims.claims,
                credential: CredentialId::Jwt {
                    expires_at_unix: claims.expires_at_unix,
                },
            })
        } else {
            Err(AuthError::Malformed(
                "expected an API key (sk_…) or a JWT".to_owned(),
            ))
        }
    }

    async fn authenticate_key(
        &self,
        token: &str,
        from: CredentialSource,
    ) -> Result<Identity, AuthError> {
        let claimed = keys::parse_key(token).ok_or_else(|| {
            AuthError::Malformed("not a Sluice API key (sk_<role>_<43 characters>)".to_owned())
        })?;
        // Refuse before the lookup: the answer must not depend on whether
        // the (now leaked) key exists.
        if from == CredentialSource::Query && claimed != Role::Anon {
            return Err(AuthError::QueryStringNotAnon);
        }
        let hash = keys::hash_key(token);
        let row = self
            .query_opt(|c| &c.by_hash, &[&hash])
            .await?
            .ok_or(AuthError::UnknownKey)?;
        let id: i64 = row.get(0);
        let tenant: Option<String> = row.get(1);
        let role: String = row.get(2);
        let revoked: bool = row.get(3);
        let claims = keys::claims_object(row.get(4))?;
        let custom_role: Option<String> = row.get(5);
        if revoked {
            return Err(AuthError::Revoked);
        }
        let role = Role::parse(&role).ok_or_else(|| {
            AuthError::Unavailable(format!(
                "sluice.api_keys row {id} has unknown role {role:?}"
            ))
        })?;
        if from == CredentialSource::Query && role != Role::Anon {
            return Err(AuthError::QueryStringNotAnon);
        }
        let tenant = match role {
            // Admin keys are cross-tenant (the table's CHECK keeps them
            // without a tenant).
            Role::Admin => None,
            _ => {
                let t = tenant.ok_or(AuthError::NoTenant)?;
                Some(TenantId::new(&t).map_err(|_| AuthError::NoTenant)?)
            }
        };
        let policy_role = match custom_role {
            None => Arc::from(role.as_str()),
            Some(custom) => self.configured_custom_role(custom)?,
        };
        Ok(Identity {
            tenant,
            role,
            policy_role,
            claims: Arc::new(claims),
            credential: CredentialId::ApiKey { id },
        })
    }

    /// A key's custom role, if the config's policies still define it. (The
    /// table's CHECK keeps custom roles on anon keys only.)
    fn configured_custom_role(&self, custom: String) -> Result<Arc<str>, AuthError> {
        if self.custom_roles.contains(&custom) {
            return Ok(Arc::from(custom));
        }
        let known = if self.custom_roles.is_empty() {
            "they define none".to_owned()
        } else {
            format!("they define {}", self.custom_roles.join(", "))
        };
        Err(AuthError::UnknownRole {
            role: custom,
            known,
        })
    }

    /// Whether `identity`'s credential is still valid: false once the key
    /// is revoked or deleted, or the JWT expired. While the state database
    /// cannot be reached the answer is true (see [`Self::key_still_active`]).
    pub async fn still_valid(&self, identity: &Identity) -> bool {
        match identity.credential {
            CredentialId::Jwt { expires_at_unix } => {
                jwt::now_unix() <= expires_at_unix.saturating_add(JWT_LEEWAY_SECS as i64)
            }
            CredentialId::ApiKey { id } => self.key_still_active(id).await,
        }
    }

    /// A watch on `identity`'s credential for an open stream, re-checking
    /// an API key every `auth.revocation_check_secs` (`period`).
    pub fn watch(self: &Arc<Self>, identity: &Identity, period: Duration) -> CredentialWatch {
        CredentialWatch::new(self.clone(), identity, period)
    }

    /// False once API key `id` is revoked or deleted. Answers are shared by
    /// every caller for a second (open streams of one key cost one lookup
    /// between them). While the state database cannot be reached the answer
    /// is true: a stream cannot receive anything new then either, and the
    /// next check after it is back sees the revocation.
    pub async fn key_still_active(&self, id: i64) -> bool {
        let now = std::time::Instant::now();
        if let Some((at, valid)) = self.recheck_cache().get(&id) {
            if now.duration_since(*at) < RECHECK_TTL {
                return *valid;
            }
        }
        let valid = match self.query_opt(|c| &c.active_by_id, &[&id]).await {
            Ok(row) => row.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, key_id = id, "cannot re-check an API key; keeping the stream open");
                return true;
            }
        };
        let mut cache = self.recheck_cache();
        if cache.len() >= RECHECK_MAX {
            cache.retain(|_, (at, _)| now.duration_since(*at) < RECHECK_TTL);
        }
        cache.insert(id, (now, valid));
        valid
    }

    fn recheck_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, (std::time::Instant, bool)>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (it holds plain values), so a poisoned lock is still usable.
        self.rechecks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current session, connecting if there is none or it broke.
    async fn conn(&self) -> Result<Arc<StateConn>, AuthError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.client.is_closed() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let fresh = Arc::new(
            tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
                .await
                .map_err(|_| {
                    AuthError::Unavailable(format!(
                        "no connection within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ))
                })??,
        );
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    async fn connect(&self) -> Result<StateConn, AuthError> {
        let client = crate::log::connect_as(&self.state_url, "sluice-auth").await?;
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                client.prepare(sql).await.map_err(|e| {
                    let mut msg = describe_db_error(&e);
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                        msg.push_str("; run `sluice migrate` first");
                    }
                    AuthError::Unavailable(msg)
                })
            }
        };
        let by_hash = prepare(LOOKUP_BY_HASH).await?;
        let active_by_id = prepare(ACTIVE_BY_ID).await?;
        Ok(StateConn {
            client,
            by_hash,
            active_by_id,
        })
    }

    /// Forgets `broken` (unless a newer session replaced it already).
    async fn forget(&self, broken: &Arc<StateConn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            *slot = None;
        }
    }

    /// Runs a prepared statement; a broken session is replaced and the
    /// query tried once more.
    async fn query_opt(
        &self,
        statement: fn(&StateConn) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, AuthError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.conn().await?;
            let result = tokio::time::timeout(
                QUERY_TIMEOUT,
                conn.client.query_opt(statement(&conn), params),
            )
            .await;
            match result {
                Ok(Ok(row)) => return Ok(row),
                Ok(Err(e)) => {
                    let retryable = crate::log::db_error_is_retryable(&e);
                    if retryable {
                        self.forget(&conn).await;
                    }
                    if !retryable || attempt >= 2 {
                        return Err(e.into());
                    }
                }
                Err(_) => {
                    self.forget(&conn).await;
                    return Err(AuthError::Unavailable(format!(
                        "no answer within {}s",
                        QUERY_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(role: Role) -> Identity {
        Identity {
            tenant: Some(TenantId::new("acme").unwrap()),
            role,
            policy_role: role.as_str().into(),
            claims: Arc::default(),
            credential: CredentialId::ApiKey { id: 1 },
        }
    }

    #[test]
    fn roles_are_ordered_by_privilege_and_round_trip() {
        assert!(Role::Anon < Role::Service && Role::Service < Role::Admin);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(r.to_string(), r.as_str());
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        for bad in [
            "",
            "Anon",
            "ADMIN",
            "service_role",
            "authenticated",
            " anon",
        ] {
            assert_eq!(Role::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn require_compares_roles() {
        assert!(require(&identity(Role::Admin), Role::Service).is_ok());
        assert!(require(&identity(Role::Service), Role::Service).is_ok());
        assert!(require(&identity(Role::Anon), Role::Anon).is_ok());
        let err = require(&identity(Role::Anon), Role::Service).unwrap_err();
        assert!(matches!(
            err,
            AuthError::Forbidden {
                need: Role::Service,
                have: Role::Anon
            }
        ));
        assert_eq!(err.status(), 403);
        assert_eq!(err.code(), "forbidden");
        assert!(require(&identity(Role::Service), Role::Admin).is_err());
    }

    #[test]
    fn extract_prefers_header_then_query_then_bearer() {
        use CredentialSource::*;
        let ok = |q, h, a| extract(q, h, a).unwrap();
        assert_eq!(ok(Some("q"), None, None), ("q".into(), Query));
        assert_eq!(ok(None, Some("h"), None), ("h".into(), Header));
        assert_eq!(ok(Some("q"), Some("h"), None), ("h".into(), Header));
        assert_eq!(ok(None, None, Some("Bearer t")), ("t".into(), Bearer));
        assert_eq!(ok(None, None, Some("bearer  t ")), ("t".into(), Bearer));
        assert_eq!(ok(Some("q"), None, Some("Bearer t")), ("q".into(), Query));
        assert_eq!(ok(None, Some("h"), Some("Bearer t")), ("h".into(), Header));
        // The apikey wins even over an Authorization it does not use.
        assert_eq!(ok(None, Some("h"), Some("Basic abc")), ("h".into(), Header));
    }

    #[test]
    fn extract_rejects_missing_empty_and_non_bearer() {
        assert!(matches!(extract(None, None, None), Err(AuthError::Missing)));
        for auth in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer   ",
            "Token abc",
            "abc",
        ] {
            let err = extract(None, None, Some(auth)).unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "{auth:?}: {err:?}");
            assert_eq!(err.status(), 401);
        }
        assert!(matches!(
            extract(Some(""), None, None),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            extract(None, Some("  "), None),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            extract(None, Some("a b"), None),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn statuses_and_codes() {
        let cases: Vec<(AuthError, u16, &str)> = vec![
            (AuthError::Missing, 401, "missing_credentials"),
            (
                AuthError::Malformed("x".into()),
                401,
                "malformed_credentials",
            ),
            (AuthError::UnknownKey, 401, "invalid_key"),
            (AuthError::Revoked, 401, "revoked"),
            (AuthError::Expired, 401, "expired"),
            (AuthError::BadSignature, 401, "bad_signature"),
            (AuthError::InvalidJwt("x".into()), 401, "invalid_token"),
            (AuthError::JwtNotConfigured, 401, "jwt_not_configured"),
            (AuthError::NoTenant, 401, "no_tenant"),
            (
                AuthError::UnknownRole {
                    role: "member".into(),
                    known: "they define none".into(),
                },
                401,
                "unknown_role",
            ),
            (
                AuthError::QueryStringNotAnon,
                403,
                "key_not_allowed_in_query",
            ),
            (
                AuthError::Forbidden {
                    need: Role::Admin,
                    have: Role::Service,
                },
                403,
                "forbidden",
            ),
            (AuthError::Unavailable("down".into()), 503, "unavailable"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status(), status, "{err}");
            assert_eq!(err.code(), code, "{err}");
        }
        assert_eq!(
            AuthError::QueryStringNotAnon.to_string(),
            "only anon keys may be passed in the query string; send service and admin keys in the apikey header or Authorization: Bearer"
        );
    }
}
