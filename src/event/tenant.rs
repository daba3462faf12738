//! `TenantId`: the one thing every read of the log and every hub match is
//! keyed by. It is only ever built from a row, a message or a credential,
//! never from a subscriber's request.

use std::fmt;
use std::sync::Arc;

/// Longest tenant id accepted, in bytes.
pub const MAX_TENANT_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_BYTES} bytes")]
    TooLong,
    #[error("tenant id contains a control character")]
    Control,
}

impl TenantId {
    pub fn new(s: &str) -> Result<TenantId, TenantError> {
        if s.is_empty() {
            return Err(TenantError::Empty);
        }
        if s.len() > MAX_TENANT_BYTES {
            return Err(TenantError::TooLong);
        }
        if s.chars().any(char::is_control) {
            return Err(TenantError::Control);
        }
        Ok(TenantId(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert_eq!(TenantId::new(""), Err(TenantError::Empty));
        assert_eq!(TenantId::new(&"a".repeat(257)), Err(TenantError::TooLong));
        assert_eq!(TenantId::new("a\nb"), Err(TenantError::Control));
        assert_eq!(
            TenantId::new("acme-42").map(|t| t.to_string()),
            Ok("acme-42".into())
        );
    }
}
