//! The credential of an open stream, watched: one future that every
//! long-lived reader (SSE, NDJSON tails and exports, WebSocket) waits on
//! beside its events, which resolves when the credential is revoked,
//! deleted or expires.
//!
//! An API key is re-checked every `auth.revocation_check_secs` through
//! [`Authenticator::key_still_active`], whose answers are shared per key,
//! so the streams of one key cost one lookup a second between them. A JWT
//! needs no lookup: the watch sleeps until its `exp` (plus
//! [`JWT_LEEWAY_SECS`], the leeway a new request gets) has passed.
//!
//! Boundary: the watch says *that* and *why* a stream must end; how the end
//! is told to the client (an SSE frame, an NDJSON line, a close code) is the
//! transport's business.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::{jwt, Authenticator, CredentialId, Identity, JWT_LEEWAY_SECS};

/// Why a watched credential stopped being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialEnd {
    /// The API key was revoked or deleted.
    Revoked,
    /// The JWT's `exp` (plus leeway) has passed.
    Expired,
}

impl CredentialEnd {
    /// The code transports send: `revoked` or `expired` (the same codes a
    /// new request with the credential gets in its 401).
    pub fn code(&self) -> &'static str {
        match self {
            CredentialEnd::Revoked => "revoked",
            CredentialEnd::Expired => "expired",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            CredentialEnd::Revoked => "the API key of this stream was revoked",
            CredentialEnd::Expired => "the token of this stream has expired",
        }
    }
}

type Check = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Resolves (through [`CredentialWatch::ended`]) once the credential it
/// watches is no longer valid. Cancel-safe: a re-check in flight when the
/// caller's `select!` picks another branch is kept and resumed by the next
/// call, so a busy stream cannot starve its own re-checks.
pub struct CredentialWatch {
    auth: Arc<Authenticator>,
    credential: CredentialId,
    period: Duration,
    /// The next re-check (API key) or the expiry (JWT).
    timer: Pin<Box<Sleep>>,
    check: Option<Check>,
}

impl std::fmt::Debug for CredentialWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialWatch")
            .field("credential", &self.credential)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// Whole seconds until a JWT expiring at `expires_at_unix` is refused, at
/// the wall-clock time `now_unix`; 0 once it is.
fn secs_until_expired(expires_at_unix: i64, now_unix: i64) -> u64 {
    // Valid while now <= exp + leeway (as `Authenticator::authenticate`).
    let refused_at = expires_at_unix
        .saturating_add(JWT_LEEWAY_SECS as i64)
        .saturating_add(1);
    u64::try_from(refused_at.saturating_sub(now_unix)).unwrap_or(0)
}

impl CredentialWatch {
    /// Watches `identity`'s credential; API keys are re-checked every
    /// `period` (at least a second).
    pub fn new(auth: Arc<Authenticator>, identity: &Identity, period: Duration) -> CredentialWatch {
        let period = period.max(Duration::from_secs(1));
        let first = match identity.credential {
            CredentialId::ApiKey { .. } => period,
            CredentialId::Jwt { expires_at_unix } => {
                Duration::from_secs(secs_until_expired(expires_at_unix, jwt::now_unix()))
            }
        };
        CredentialWatch {
            auth,
            credential: identity.credential.clone(),
            period,
            timer: Box::pin(tokio::time::sleep(first)),
            check: None,
        }
    }

    /// Waits until the credential is no longer valid. While the state
    /// database cannot be reached a key counts as valid (the stream cannot
    /// receive anything new then either); the first re-check after it
    /// answers again sees a revocation.
    pub async fn ended(&mut self) -> CredentialEnd {
        std::future::poll_fn(|cx| self.poll_ended(cx)).await
    }

    /// The answer of [`Self::ended`] if the credential is already known to
    /// be invalid, without waiting (a re-check due is started, and finished
    /// by a later call).
    pub fn ended_now(&mut self) -> Option<CredentialEnd> {
        let waker = futures_util::task::noop_waker_ref();
        match self.poll_ended(&mut Context::from_waker(waker)) {
            Poll::Ready(end) => Some(end),
            Poll::Pending => None,
        }
    }

    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<CredentialEnd> {
        loop {
            if let Some(check) = self.check.as_mut() {
                let valid = ready!(check.as_mut().poll(cx));
                self.check = None;
                if !valid {
                    return Poll::Ready(CredentialEnd::Revoked);
                }
                self.timer.as_mut().reset(Instant::now() + self.period);
                continue;
            }
            ready!(self.timer.as_mut().poll(cx));
            match self.credential {
                CredentialId::Jwt { expires_at_unix } => {
                    match secs_until_expired(expires_at_unix, jwt::now_unix()) {
                        0 => return Poll::Ready(CredentialEnd::Expired),
                        // The wall clock was set back meanwhile: wait again.
                        left => self
                            .timer
                            .as_mut()
                            .reset(Instant::now() + Duration::from_secs(left)),
                    }
                }
                CredentialId::ApiKey { id } => {
                    let auth = self.auth.clone();
                    self.check = Some(Box::pin(async move { auth.key_still_active(id).await }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_is_refused_from_the_second_after_its_leeway() {
        let exp = 1_000;
        let leeway = JWT_LEEWAY_SECS as i64;
        assert_eq!(
            secs_until_expired(exp, exp),
            JWT_LEEWAY_SECS + 1,
            "valid for the leeway after exp"
        );
        assert_eq!(secs_until_expired(exp, exp + leeway), 1);
        assert_eq!(secs_until_expired(exp, exp + leeway + 1), 0);
        assert_eq!(secs_until_expired(exp, exp + 10_000), 0);
        assert_eq!(secs_until_expired(i64::MAX, 0), i64::MAX as u64);
    }

    #[test]
    fn end_codes_match_the_401_codes_of_new_requests() {
        assert_eq!(
            CredentialEnd::Revoked.code(),
            super::super::AuthError::Revoked.code()
        );
        assert_eq!(
            CredentialEnd::Expired.code(),
            super::super::AuthError::Expired.code()
        );
    }
}
