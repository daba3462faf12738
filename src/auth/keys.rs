//! API keys: `sk_<role>_<43 base62 characters>`, the 43 characters encoding
//! 32 bytes from the operating system's CSPRNG (256 bits). Only the key's
//! SHA-256 (hex) and its first 12 characters (for display) are stored in
//! `sluice.api_keys`; the key itself is returned once, at creation.

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, Row};

use super::{AuthError, Role};
use crate::event::TenantId;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "sk_";
/// Characters after `sk_<role>_`: 62^43 > 2^256.
pub const KEY_BODY_LEN: usize = 43;
/// Random bytes in a key.
pub const KEY_RANDOM_BYTES: usize = 32;
/// Stored, displayable start of a key.
pub const DISPLAY_PREFIX_LEN: usize = 12;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key as listed: everything but the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: i64,
    /// None for admin keys.
    pub tenant: Option<String>,
    pub role: Role,
    pub name: Option<String>,
    /// The key's first 12 characters, e.g. `sk_anon_4fZq`.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new random key for `role`.
pub fn generate_key(role: Role) -> String {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}_{}", role.as_str(), base62_fixed(&bytes))
}

/// `bytes` as a big-endian number in base 62, exactly [`KEY_BODY_LEN`] digits.
fn base62_fixed(bytes: &[u8; KEY_RANDOM_BYTES]) -> String {
    let mut num = *bytes;
    let mut digits = [0u8; KEY_BODY_LEN];
    for d in digits.iter_mut().rev() {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        *d = BASE62[rem as usize];
    }
    debug_assert!(num.iter().all(|&b| b == 0));
    String::from_utf8(digits.to_vec()).expect("base62 digits are ASCII")
}

/// The role a well-formed key names in its prefix, or None when `key` is
/// not shaped like a Sluice key. (The stored role is what counts; this only
/// lets obviously wrong input be refused without a lookup.)
pub fn parse_key(key: &str) -> Option<Role> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (role, body) = rest.split_once('_')?;
    let role = Role::parse(role)?;
    (body.len() == KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(role)
}

/// What is stored for a key: SHA-256 of its text, lower-case hex.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key's first [`DISPLAY_PREFIX_LEN`] characters.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_PREFIX_LEN).collect()
}

const COLUMNS: &str = "id, tenant, role, name, prefix, created_at, revoked_at";

fn key_info(row: &Row) -> Result<KeyInfo, AuthError> {
    let role: String = row.try_get(2)?;
    Ok(KeyInfo {
        id: row.try_get(0)?,
        tenant: row.try_get(1)?,
        role: Role::parse(&role).ok_or_else(|| {
            AuthError::Unavailable(format!("sluice.api_keys has unknown role {role:?}"))
        })?,
        name: row.try_get(3)?,
        prefix: row.try_get(4)?,
        created_at: row.try_get(5)?,
        revoked_at: row.try_get(6)?,
    })
}

/// Creates a key; returns it with its plaintext, which is not stored and
/// cannot be shown again. Admin keys take no tenant; anon and service keys
/// need one.
pub async fn create_key(
    client: &Client,
    tenant: Option<&TenantId>,
    role: Role,
    name: Option<&str>,
) -> Result<(KeyInfo, String), AuthError> {
    match (role, tenant) {
        (Role::Admin, Some(_)) => {
            return Err(AuthError::InvalidKeyRequest(
                "an admin key is cross-tenant and takes no tenant".to_owned(),
            ))
        }
        (Role::Anon | Role::Service, None) => {
            return Err(AuthError::InvalidKeyRequest(format!(
                "{} key belongs to one tenant: give its tenant",
                if role == Role::Anon {
                    "an anon"
                } else {
                    "a service"
                }
            )))
        }
        _ => {}
    }
    let key = generate_key(role);
    let row = client
        .query_one(
            &format!(
                "INSERT INTO sluice.api_keys (tenant, role, name, prefix, key_hash)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
            ),
            &[
                &tenant.map(TenantId::as_str),
                &role.as_str(),
                &name,
                &display_prefix(&key),
                &hash_key(&key),
            ],
        )
        .await?;
    Ok((key_info(&row)?, key))
}

/// Keys of `tenant` (None: every key, admin keys included), oldest first,
/// revoked ones included.
pub async fn list_keys(
    client: &Client,
    tenant: Option<&TenantId>,
) -> Result<Vec<KeyInfo>, AuthError> {
    let rows = match tenant {
        Some(t) => {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM sluice.api_keys WHERE tenant = $1 ORDER BY id"),
                    &[&t.as_str()],
                )
                .await?
        }
        None => {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM sluice.api_keys ORDER BY id"),
                    &[],
                )
                .await?
        }
    };
    rows.iter().map(key_info).collect()
}

/// One key by id.
pub async fn get_key(client: &Client, id: i64) -> Result<Option<KeyInfo>, AuthError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM sluice.api_keys WHERE id = $1"),
            &[&id],
        )
        .await?;
    row.as_ref().map(key_info).transpose()
}

/// Revokes key `id`: true if this call revoked it, false if there is no such
/// key or it was revoked already. New requests with it fail at once; open
/// streams end at their next check.
pub async fn revoke_key(client: &Client, id: i64) -> Result<bool, AuthError> {
    let n = client
        .execute(
            "UPDATE sluice.api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        for role in Role::ALL {
            let key = generate_key(role);
            let head = format!("sk_{}_", role.as_str());
            assert!(key.starts_with(&head), "{key}");
            let body = &key[head.len()..];
            assert_eq!(body.len(), KEY_BODY_LEN, "{key}");
            assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
            assert_eq!(parse_key(&key), Some(role));
            assert_eq!(display_prefix(&key).len(), DISPLAY_PREFIX_LEN);
            assert!(key.starts_with(&display_prefix(&key)));
        }
    }

    #[test]
    fn keys_are_random() {
        let keys: std::collections::BTreeSet<String> =
            (0..200).map(|_| generate_key(Role::Anon)).collect();
        assert_eq!(keys.len(), 200);
    }

    #[test]
    fn base62_is_a_fixed_width_big_endian_encoding() {
        assert_eq!(base62_fixed(&[0; 32]), "0".repeat(43));
        let mut one = [0u8; 32];
        one[31] = 61;
        assert_eq!(base62_fixed(&one), format!("{}z", "0".repeat(42)));
        one[31] = 62;
        assert_eq!(base62_fixed(&one), format!("{}10", "0".repeat(41)));
        // 2^256 - 1 still fits in 43 digits (reference value from Python).
        assert_eq!(
            base62_fixed(&[0xff; 32]),
            "yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1"
        );
    }

    #[test]
    fn parse_key_rejects_other_shapes() {
        let body = "a".repeat(KEY_BODY_LEN);
        assert_eq!(
            parse_key(&format!("sk_service_{body}")),
            Some(Role::Service)
        );
        for bad in [
            format!("sk_root_{body}"),
            format!("sk_anon_{}", &body[1..]),
            format!("sk_anon_{body}a"),
            format!("sk_anon_{}-", &body[1..]),
            format!("pk_anon_{body}"),
            format!("sk_Anon_{body}"),
            "sk_anon".to_owned(),
            String::new(),
        ] {
            assert_eq!(parse_key(&bad), None, "{bad}");
        }
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let key = generate_key(Role::Service);
        assert_eq!(hash_key(&key).len(), 64);
        assert_ne!(hash_key(&key), hash_key(&generate_key(Role::Service)));
    }
}
