//! Standard Webhooks signing
//! (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>).
//!
//! A secret is `whsec_` followed by the standard base64 (padded) of the raw
//! key bytes. A delivery is signed with HMAC-SHA256 over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, and the `webhook-signature`
//! header carries one or more space-separated `v1,<base64>` entries: during a
//! secret rotation both the old and the new key sign, so receivers holding
//! either secret accept the delivery.
//!
//! Key length: the spec asks for secrets of 24 to 64 random bytes.
//! [`secret_key`] refuses keys shorter than [`MIN_SECRET_BYTES`] (the
//! spec's own example secret is exactly 24 bytes, so it passes) and
//! accepts longer ones; [`generate_secret`] makes
//! [`GENERATED_SECRET_BYTES`]-byte keys.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Shortest key accepted by [`secret_key`], in bytes (the spec's minimum).
pub const MIN_SECRET_BYTES: usize = 24;

/// Length of the keys made by [`generate_secret`], in bytes.
pub const GENERATED_SECRET_BYTES: usize = 32;

/// Version tag of the (only) signature scheme: symmetric HMAC-SHA256.
const SIGNATURE_VERSION: &str = "v1";

/// Standard alphabet, padding optional when decoding (receivers and other
/// implementations differ on whether secrets keep their `=` padding).
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The part after the optional `whsec_` prefix is not standard base64.
    #[error("webhook secret is not valid base64 after the optional \"whsec_\" prefix: {0}")]
    NotBase64(#[from] base64::DecodeError),
    /// The secret decodes to fewer bytes than required.
    #[error("webhook secret decodes to {len} bytes; at least {min} random bytes are required")]
    TooShort {
        /// Decoded length, in bytes.
        len: usize,
        /// Required minimum, in bytes.
        min: usize,
    },
}

/// A fresh secret: `whsec_` + standard base64 (padded) of
/// [`GENERATED_SECRET_BYTES`] bytes from the operating system's RNG.
pub fn generate_secret() -> String {
    let mut key = [0u8; GENERATED_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The key bytes of `secret`: strips an optional `whsec_` prefix and
/// base64-decodes the rest (padding optional). Refuses invalid base64 and
/// keys shorter than [`MIN_SECRET_BYTES`].
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SignError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = LENIENT_STANDARD.decode(encoded)?;
    if key.len() < MIN_SECRET_BYTES {
        return Err(SignError::TooShort {
            len: key.len(),
            min: MIN_SECRET_BYTES,
        });
    }
    Ok(key)
}

/// HMAC-SHA256 keyed with `key`, fed the signed content of one delivery.
fn signed_mac(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    mac
}

/// One signature entry: `v1,<base64 of HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = signed_mac(key, msg_id, timestamp, body)
        .finalize()
        .into_bytes();
    format!("{SIGNATURE_VERSION},{}", STANDARD.encode(tag))
}

/// The `webhook-signature` header value: the [`sign`] entry of each key, in
/// order, joined by single spaces.
pub fn signature_header(keys: &[Vec<u8>], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| sign(key, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any space-separated `v1,` entry of `header` is the signature of
/// this delivery under `key` (tags compared in constant time). Other
/// versions and malformed entries are skipped. The timestamp's freshness is
/// not checked: that is the receiver's policy, not the signature's.
pub fn verify(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let mac = signed_mac(key, msg_id, timestamp, body);
    header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn spec_key() -> Vec<u8> {
        secret_key(SPEC_SECRET).expect("spec secret decodes")
    }

    #[test]
    fn known_answer_vector_from_the_spec() {
        let key = spec_key();
        assert_eq!(
            sign(&key, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert!(verify(
            &key,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
    }

    #[test]
    fn spec_secret_is_exactly_the_minimum_length() {
        assert_eq!(spec_key().len(), MIN_SECRET_BYTES);
    }

    #[test]
    fn prefix_is_optional() {
        let bare = SPEC_SECRET.trim_start_matches(SECRET_PREFIX);
        assert_eq!(secret_key(bare).expect("bare secret decodes"), spec_key());
    }

    #[test]
    fn padding_is_optional_when_decoding() {
        let secret = generate_secret();
        let unpadded = secret.trim_end_matches('=');
        assert_ne!(secret, unpadded, "32 bytes encode with padding");
        assert_eq!(
            secret_key(unpadded).expect("unpadded decodes"),
            secret_key(&secret).expect("padded decodes")
        );
    }

    #[test]
    fn invalid_secrets_are_refused() {
        assert!(matches!(
            secret_key("whsec_not base64!"),
            Err(SignError::NotBase64(_))
        ));
        assert!(matches!(
            secret_key("whsec_"),
            Err(SignError::TooShort { len: 0, min: 24 })
        ));
        // 23 bytes: one short of the minimum.
        let short = format!("{SECRET_PREFIX}{}", STANDARD.encode([7u8; 23]));
        let message = secret_key(&short).expect_err("too short").to_string();
        assert_eq!(
            message,
            "webhook secret decodes to 23 bytes; at least 24 random bytes are required"
        );
        let long = format!("{SECRET_PREFIX}{}", STANDARD.encode([7u8; 64]));
        assert_eq!(secret_key(&long).expect("64 bytes are fine").len(), 64);
    }

    #[test]
    fn generated_secrets_are_well_formed_and_distinct() {
        let first = generate_secret();
        let second = generate_secret();
        assert_ne!(first, second);
        assert!(first.starts_with(SECRET_PREFIX));
        assert!(first.ends_with('='), "standard base64 keeps its padding");
        let key = secret_key(&first).expect("generated secret decodes");
        assert_eq!(key.len(), GENERATED_SECRET_BYTES);
    }

    #[test]
    fn header_joins_one_signature_per_key() {
        let old = spec_key();
        let new = secret_key(&generate_secret()).expect("generated secret decodes");
        let keys = vec![old.clone(), new.clone()];
        let header = signature_header(&keys, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], SPEC_SIGNATURE);
        assert_eq!(
            entries[1],
            sign(&new, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY)
        );
        for key in [&old, &new] {
            assert!(verify(key, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, &header));
        }
        assert_eq!(
            signature_header(&[], SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            ""
        );
    }

    #[test]
    fn verify_refuses_tampering_and_other_keys() {
        let key = spec_key();
        let other = secret_key(&generate_secret()).expect("generated secret decodes");
        let ok = |k: &[u8], id: &str, ts: i64, body: &[u8], header: &str| {
            verify(k, id, ts, body, header)
        };
        assert!(!ok(
            &other,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
        assert!(!ok(
            &key,
            "msg_other",
            SPEC_TIMESTAMP,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
        assert!(!ok(
            &key,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP + 1,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
        assert!(!ok(
            &key,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            b"{}",
            SPEC_SIGNATURE
        ));
        let v2 = SPEC_SIGNATURE.replacen("v1,", "v2,", 1);
        assert!(!ok(&key, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, &v2));
        let truncated = &SPEC_SIGNATURE[..SPEC_SIGNATURE.len() - 4];
        assert!(!ok(&key, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, truncated));
        assert!(!ok(&key, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, ""));
    }

    #[test]
    fn verify_finds_the_matching_entry_among_others() {
        let key = spec_key();
        let header = format!("v1a,xyz v1,AAAA v1,not-base64 {SPEC_SIGNATURE}");
        assert!(verify(
            &key,
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            &header
        ));
    }

    #[test]
    fn body_is_signed_as_raw_bytes() {
        let key = spec_key();
        let body = [0xff, 0x00, b'x'];
        let header = sign(&key, SPEC_MSG_ID, SPEC_TIMESTAMP, &body);
        assert!(verify(&key, SPEC_MSG_ID, SPEC_TIMESTAMP, &body, &header));
    }
}
