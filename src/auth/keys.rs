//! API keys: `sk_<role>_<43 base62 characters>`, the 43 characters encoding
//! 32 bytes from the operating system's CSPRNG (256 bits). Only the key's
//! SHA-256 (hex) and its first 12 characters (for display) are stored in
//! `sluice.api_keys`; the key itself is returned once, at creation.
//!
//! A key also carries the claims access policies compare rows with
//! (exactly what was given at creation, within [`check_claims`]'s limits)
//! and, for anon keys only, a custom policy role (`member`, `viewer`, …)
//! whose privilege stays anon's.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde_json::{Map, Value};
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

/// At most this many claims on a key.
pub const MAX_CLAIMS: usize = 32;
/// At most this many bytes of compact JSON for a key's claims.
pub const MAX_CLAIMS_JSON_BYTES: usize = 4096;
/// A claim's name is 1 to this many bytes of `[A-Za-z0-9_.-]`.
pub const MAX_CLAIM_NAME_LEN: usize = 64;
/// A custom role's name is `[a-z][a-z0-9_-]` of at most this many bytes.
pub const MAX_CUSTOM_ROLE_LEN: usize = 63;

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
    /// The claims given at creation (empty when none were).
    pub claims: Map<String, Value>,
    /// A custom role policies are chosen by (anon keys only); None: the
    /// key's role.
    pub policy_role: Option<String>,
}

impl KeyInfo {
    /// The role policies are chosen by: the custom role, else the key's role.
    pub fn effective_policy_role(&self) -> &str {
        self.policy_role
            .as_deref()
            .unwrap_or_else(|| self.role.as_str())
    }
}

/// Refuses claims past the limits: more than [`MAX_CLAIMS`], more than
/// [`MAX_CLAIMS_JSON_BYTES`] of JSON, or a name that is not 1 to
/// [`MAX_CLAIM_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`.
pub fn check_claims(claims: &Map<String, Value>) -> Result<(), AuthError> {
    if claims.len() > MAX_CLAIMS {
        return Err(AuthError::InvalidKeyRequest(format!(
            "{} claims given; a key takes at most {MAX_CLAIMS}",
            claims.len()
        )));
    }
    for name in claims.keys() {
        check_claim_name(name)?;
    }
    let bytes = Value::Object(claims.clone()).to_string().len();
    if bytes > MAX_CLAIMS_JSON_BYTES {
        return Err(AuthError::InvalidKeyRequest(format!(
            "the claims are {bytes} bytes of JSON; a key takes at most {MAX_CLAIMS_JSON_BYTES}"
        )));
    }
    Ok(())
}

/// A claim name: 1 to [`MAX_CLAIM_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`.
pub fn check_claim_name(name: &str) -> Result<(), AuthError> {
    if name.is_empty() || name.len() > MAX_CLAIM_NAME_LEN {
        return Err(AuthError::InvalidKeyRequest(format!(
            "claim name {name:?} is {} bytes; it must be 1 to {MAX_CLAIM_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(AuthError::InvalidKeyRequest(format!(
            "claim name {name:?} contains {c:?}; use letters, digits, `_`, `.` and `-`"
        )));
    }
    Ok(())
}

/// A custom role's name: `[a-z][a-z0-9_-]{0,62}` and none of anon, service,
/// admin. (Whether the config's policies define it is the caller's check.)
pub fn check_custom_role(name: &str) -> Result<(), AuthError> {
    if Role::parse(name).is_some() {
        return Err(AuthError::InvalidKeyRequest(format!(
            "{name:?} is a built-in role, not a custom one"
        )));
    }
    let mut bytes = name.bytes();
    let shaped = bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name.len() <= MAX_CUSTOM_ROLE_LEN;
    if !shaped {
        return Err(AuthError::InvalidKeyRequest(format!(
            "custom role {name:?}: expected a lower-case letter, then up to {} of a-z, 0-9, `_`, `-`",
            MAX_CUSTOM_ROLE_LEN - 1
        )));
    }
    Ok(())
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

const COLUMNS: &str = "id, tenant, role, name, prefix, created_at, revoked_at, claims, policy_role";

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
        claims: claims_object(row.try_get(7)?)?,
        policy_role: row.try_get(8)?,
    })
}

/// The stored claims as a map (the table's CHECK keeps them an object).
pub(crate) fn claims_object(value: Value) -> Result<Map<String, Value>, AuthError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(AuthError::Unavailable(format!(
            "sluice.api_keys has claims that are not a JSON object: {other}"
        ))),
    }
}

/// Creates a key; returns it with its plaintext, which is not stored and
/// cannot be shown again. Admin keys take no tenant; anon and service keys
/// need one. `claims` are stored as given (see [`check_claims`]);
/// `policy_role` is a custom role (see [`check_custom_role`]), for anon
/// keys only.
pub async fn create_key(
    client: &Client,
    tenant: Option<&TenantId>,
    role: Role,
    name: Option<&str>,
    claims: &Map<String, Value>,
    policy_role: Option<&str>,
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
    if let Some(custom) = policy_role {
        if role != Role::Anon {
            return Err(AuthError::InvalidKeyRequest(format!(
                "custom role {custom:?} is for anon keys only; a {role} key's policies are those of role {role}"
            )));
        }
        check_custom_role(custom)?;
    }
    check_claims(claims)?;
    let key = generate_key(role);
    let row = client
        .query_one(
            &format!(
                "INSERT INTO sluice.api_keys (tenant, role, name, prefix, key_hash, claims, policy_role)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
            ),
            &[
                &tenant.map(TenantId::as_str),
                &role.as_str(),
                &name,
                &display_prefix(&key),
                &hash_key(&key),
                &Value::Object(claims.clone()),
                &policy_role,
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

    fn claims(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn refusal(claims: &Map<String, Value>) -> String {
        match check_claims(claims) {
            Err(AuthError::InvalidKeyRequest(m)) => m,
            other => panic!("expected InvalidKeyRequest, got {other:?}"),
        }
    }

    #[test]
    fn claims_within_the_limits_are_accepted() {
        use serde_json::json;
        check_claims(&Map::new()).unwrap();
        check_claims(&claims(&[
            ("sub", json!("u_42")),
            ("teams", json!(["t1", "t2"])),
            ("org.id-2_x", json!({"nested": [1, true, null]})),
            (&"a".repeat(MAX_CLAIM_NAME_LEN), json!("")),
        ]))
        .unwrap();
        let many: Vec<(String, Value)> = (0..MAX_CLAIMS)
            .map(|i| (format!("c{i}"), json!(i)))
            .collect();
        check_claims(&many.into_iter().collect()).unwrap();
        // Exactly at the byte limit: {"v":"…"} is 8 bytes around the value.
        let at_limit = claims(&[("v", json!("x".repeat(MAX_CLAIMS_JSON_BYTES - 8)))]);
        assert_eq!(
            Value::Object(at_limit.clone()).to_string().len(),
            MAX_CLAIMS_JSON_BYTES
        );
        check_claims(&at_limit).unwrap();
    }

    #[test]
    fn claims_past_the_limits_are_refused_by_name() {
        use serde_json::json;
        let many: Map<String, Value> = (0..=MAX_CLAIMS)
            .map(|i| (format!("c{i}"), json!(i)))
            .collect();
        assert_eq!(refusal(&many), "33 claims given; a key takes at most 32");
        let big = claims(&[("v", json!("x".repeat(MAX_CLAIMS_JSON_BYTES - 7)))]);
        assert_eq!(
            refusal(&big),
            "the claims are 4097 bytes of JSON; a key takes at most 4096"
        );
        assert!(refusal(&claims(&[("", json!(1))])).contains("1 to 64"));
        let long = "a".repeat(MAX_CLAIM_NAME_LEN + 1);
        assert!(refusal(&claims(&[(&long, json!(1))])).contains("is 65 bytes"));
        for bad in ["a b", "sub!", "é", "a/b", "x\n"] {
            let m = refusal(&claims(&[(bad, json!(1))]));
            assert!(
                m.starts_with(&format!("claim name {bad:?} contains")),
                "{m}"
            );
        }
    }

    #[test]
    fn custom_role_names_are_shaped_and_not_built_in() {
        for good in ["member", "viewer", "a", "team-lead_2", &"r".repeat(63)] {
            check_custom_role(good).unwrap();
        }
        for bad in ["anon", "service", "admin"] {
            let err = check_custom_role(bad).unwrap_err().to_string();
            assert!(err.contains("built-in role"), "{err}");
        }
        for bad in [
            "",
            "Member",
            "2nd",
            "-x",
            "_x",
            "a b",
            "mémber",
            &"r".repeat(64),
        ] {
            let err = check_custom_role(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("custom role {bad:?}")), "{err}");
        }
    }

    #[test]
    fn effective_policy_role_falls_back_to_the_key_role() {
        let mut info = KeyInfo {
            id: 1,
            tenant: Some("acme".into()),
            role: Role::Anon,
            name: None,
            prefix: "sk_anon_abcd".into(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            revoked_at: None,
            claims: Map::new(),
            policy_role: None,
        };
        assert_eq!(info.effective_policy_role(), "anon");
        info.policy_role = Some("member".into());
        assert_eq!(info.effective_policy_role(), "member");
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
