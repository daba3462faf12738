//! JWT verification: HS256 with `auth.jwt_hs256_secret` (its UTF-8 bytes,
//! as given), RS256 with `auth.jwt_rs256_public_key` (PEM). The token's
//! `alg` picks the key; any other algorithm, `none` included, is refused.
//!
//! Claims: `exp` is required (a NumericDate; a token without it never
//! expires and is refused), enforced with [`JWT_LEEWAY_SECS`] of leeway, as
//! is `nbf` when present. The tenant comes from `auth.jwt_tenant_claim` (a
//! string, required) and the role from `auth.jwt_role_claim`: `anon` or
//! `service`, `anon` when absent, never `admin` (admin credentials are API
//! keys only), or one of the custom roles of the config's policies, which
//! grants anon's privilege and picks that role's policies. `aud` and `iss`
//! are not checked: whoever holds the key is trusted to mint tokens for
//! this Sluice.
//!
//! The whole verified payload travels on as the credential's claims (for
//! policies' `"claim": "sub"`); nothing of an unverified token does.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{AuthError, Role};
use crate::config::AuthConfig;
use crate::event::{TenantError, TenantId};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const JWT_LEEWAY_SECS: u64 = 5;

/// Shortest RSA modulus accepted (ring refuses shorter ones at verification).
const MIN_RSA_BITS: usize = 2048;

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Three non-empty base64url segments separated by dots.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        {
            return false;
        }
    }
    parts == 3
}

/// What a verified JWT grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub tenant: TenantId,
    /// The privilege: anon or service (anon for a custom role).
    pub role: Role,
    /// `role`'s name, or the custom role the role claim names.
    pub policy_role: Arc<str>,
    pub expires_at_unix: i64,
    /// The whole verified payload.
    pub claims: Arc<Map<String, Value>>,
}

/// The configured JWT keys, claim names and custom roles.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    tenant_claim: String,
    role_claim: String,
    custom_roles: Vec<String>,
}

impl JwtVerifier {
    /// None when no JWT key is configured (JWTs are then refused).
    /// `custom_roles` are the role names the config's policies define.
    pub fn from_config(
        cfg: &AuthConfig,
        custom_roles: &[String],
    ) -> Result<Option<JwtVerifier>, AuthError> {
        JwtVerifier::new(
            cfg.jwt_hs256_secret.as_deref(),
            cfg.jwt_rs256_public_key.as_deref(),
            &cfg.jwt_tenant_claim,
            &cfg.jwt_role_claim,
            custom_roles,
        )
    }

    pub fn new(
        hs256_secret: Option<&str>,
        rs256_public_pem: Option<&str>,
        tenant_claim: &str,
        role_claim: &str,
        custom_roles: &[String],
    ) -> Result<Option<JwtVerifier>, AuthError> {
        let hs256 = match hs256_secret {
            None => None,
            Some("") => {
                return Err(AuthError::Config {
                    key: "auth.jwt_hs256_secret",
                    message: "is empty; unset it to refuse HS256 tokens".to_owned(),
                })
            }
            Some(secret) => {
                if secret.len() < 32 {
                    tracing::warn!(
                        "auth.jwt_hs256_secret is shorter than 32 bytes; HS256 tokens signed with it can be forged by guessing it"
                    );
                }
                Some(DecodingKey::from_secret(secret.as_bytes()))
            }
        };
        let rs256 = match rs256_public_pem {
            None => None,
            Some(pem) => Some(rsa_public_key(pem).map_err(|message| AuthError::Config {
                key: "auth.jwt_rs256_public_key",
                message,
            })?),
        };
        if hs256.is_none() && rs256.is_none() {
            return Ok(None);
        }
        for (key, claim) in [
            ("auth.jwt_tenant_claim", tenant_claim),
            ("auth.jwt_role_claim", role_claim),
        ] {
            if claim.is_empty() {
                return Err(AuthError::Config {
                    key,
                    message: "is empty; name the claim".to_owned(),
                });
            }
        }
        Ok(Some(JwtVerifier {
            hs256,
            rs256,
            tenant_claim: tenant_claim.to_owned(),
            role_claim: role_claim.to_owned(),
            custom_roles: custom_roles.to_vec(),
        }))
    }

    /// Verifies `token` at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<JwtClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::InvalidJwt(format!("unreadable header: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().ok_or_else(|| {
                AuthError::InvalidJwt(
                    "HS256 tokens are not accepted (auth.jwt_hs256_secret is not set)".to_owned(),
                )
            })?,
            Algorithm::RS256 => self.rs256.as_ref().ok_or_else(|| {
                AuthError::InvalidJwt(
                    "RS256 tokens are not accepted (auth.jwt_rs256_public_key is not set)"
                        .to_owned(),
                )
            })?,
            other => {
                return Err(AuthError::InvalidJwt(format!(
                    "algorithm {other:?} is not accepted; use HS256 or RS256"
                )))
            }
        };
        // The library checks the signature and the algorithm only; the time
        // claims are checked below against `now`.
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::InvalidJwt(e.to_string()),
            },
        )?;
        let claims = data.claims;
        let leeway = JWT_LEEWAY_SECS as i64;

        let exp = match claims.get("exp") {
            None | Some(Value::Null) => {
                return Err(AuthError::InvalidJwt(
                    "the exp claim is required".to_owned(),
                ))
            }
            Some(v) => numeric_date(v).ok_or_else(|| {
                AuthError::InvalidJwt("the exp claim must be a number of seconds".to_owned())
            })?,
        };
        if now > exp.saturating_add(leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(v) = claims.get("nbf").filter(|v| !v.is_null()) {
            let nbf = numeric_date(v).ok_or_else(|| {
                AuthError::InvalidJwt("the nbf claim must be a number of seconds".to_owned())
            })?;
            if now < nbf.saturating_sub(leeway) {
                return Err(AuthError::InvalidJwt(
                    "the token is not valid yet (nbf)".to_owned(),
                ));
            }
        }

        let (role, policy_role) = self.role_of(&claims)?;

        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => return Err(AuthError::NoTenant),
            Some(Value::String(s)) => TenantId::new(s).map_err(|e| match e {
                TenantError::Empty => AuthError::NoTenant,
                e => AuthError::InvalidJwt(format!("claim `{}`: {e}", self.tenant_claim)),
            })?,
            Some(_) => {
                return Err(AuthError::InvalidJwt(format!(
                    "claim `{}` must be a string",
                    self.tenant_claim
                )))
            }
        };

        Ok(JwtClaims {
            tenant,
            role,
            policy_role,
            expires_at_unix: exp,
            claims: Arc::new(claims),
        })
    }

    /// The privilege and policy role the role claim names: anon when it is
    /// absent, anon with the custom role when it names one; never admin.
    fn role_of(&self, claims: &Map<String, Value>) -> Result<(Role, Arc<str>), AuthError> {
        let name = match claims.get(&self.role_claim) {
            None | Some(Value::Null) => return Ok((Role::Anon, Role::Anon.as_str().into())),
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(AuthError::InvalidJwt(format!(
                    "claim `{}` must be a string",
                    self.role_claim
                )))
            }
        };
        // Built-in names first: a custom role can never be called admin.
        match Role::parse(name) {
            Some(Role::Admin) => Err(AuthError::InvalidJwt(
                "a JWT cannot carry role admin; admin credentials are API keys".to_owned(),
            )),
            Some(r) => Ok((r, r.as_str().into())),
            None if self.custom_roles.iter().any(|c| c == name) => {
                Ok((Role::Anon, name.as_str().into()))
            }
            None => Err(AuthError::InvalidJwt(format!(
                "claim `{}`: unknown role {name:?}; expected {}",
                self.role_claim,
                expected_roles(&self.custom_roles)
            ))),
        }
    }
}

/// "anon or service", or with the custom roles: "anon, service or a custom
/// role (member, viewer)".
fn expected_roles(custom_roles: &[String]) -> String {
    if custom_roles.is_empty() {
        "anon or service".to_owned()
    } else {
        format!(
            "anon, service or a custom role ({})",
            custom_roles.join(", ")
        )
    }
}

/// A NumericDate: seconds, possibly fractional (rounded down).
fn numeric_date(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64().filter(|f| f.is_finite())?;
    // `as` saturates at the i64 range.
    Some(f.floor() as i64)
}

/// Parses the RS256 verification key, refusing what cannot work: a private
/// key, a non-RSA key, a modulus under 2048 bits.
fn rsa_public_key(pem: &str) -> Result<DecodingKey, String> {
    let pem = pem.trim();
    if pem.contains("PRIVATE KEY") {
        return Err(
            "holds a private key; configure its public half (`openssl pkey -in key.pem -pubout`)"
                .to_owned(),
        );
    }
    let key = DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM RSA public key ({e})"))?;
    let der = pem_body(pem).ok_or("not a PEM RSA public key (unreadable base64)")?;
    let bits = der::rsa_modulus_bits(&der).ok_or("not a PEM RSA public key (unreadable DER)")?;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are needed"
        ));
    }
    Ok(key)
}

/// The DER inside the first PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let mut inside = false;
    let mut b64 = String::new();
    for line in pem.lines().map(str::trim) {
        if line.starts_with("-----BEGIN ") {
            inside = true;
        } else if line.starts_with("-----END ") {
            break;
        } else if inside {
            b64.push_str(line);
        }
    }
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Just enough DER to find an RSA modulus, in PKCS#1 (`RSA PUBLIC KEY`) or
/// SubjectPublicKeyInfo (`PUBLIC KEY`) form.
mod der {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;

    /// (tag, content, rest)
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, input) = input.split_first()?;
        let (&first, mut input) = input.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || input.len() < n {
                return None;
            }
            let len = input[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            input = &input[n..];
            len
        };
        (input.len() >= len).then(|| (tag, &input[..len], &input[len..]))
    }

    pub fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
        let (tag, seq, _) = tlv(der)?;
        if tag != SEQUENCE {
            return None;
        }
        let (tag, first, rest) = tlv(seq)?;
        match tag {
            // PKCS#1 RSAPublicKey: SEQUENCE { modulus INTEGER, exponent INTEGER }
            INTEGER => {
                let first_nonzero = first.iter().position(|&b| b != 0)?;
                let m = &first[first_nonzero..];
                Some((m.len() - 1) * 8 + (8 - m[0].leading_zeros() as usize))
            }
            // SubjectPublicKeyInfo: SEQUENCE { AlgorithmIdentifier, BIT STRING }
            SEQUENCE => {
                let (tag, bits, _) = tlv(rest)?;
                if tag != BIT_STRING || bits.first() != Some(&0) {
                    return None;
                }
                rsa_modulus_bits(&bits[1..])
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(Some(SECRET), None, "tenant", "role", &[])
            .unwrap()
            .unwrap()
    }

    fn hs(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn accepts_tenant_and_role() {
        let c = verifier()
            .verify(
                &hs(json!({"tenant": "acme", "role": "service", "exp": NOW + 60})),
                NOW,
            )
            .unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        assert_eq!(c.role, Role::Service);
        assert_eq!(c.expires_at_unix, NOW + 60);
        let c = verifier()
            .verify(&hs(json!({"tenant": "acme", "exp": NOW + 60})), NOW)
            .unwrap();
        assert_eq!(c.role, Role::Anon, "no role claim means anon");
        let c = verifier()
            .verify(
                &hs(json!({"tenant": "acme", "exp": (NOW + 60) as f64 + 0.5})),
                NOW,
            )
            .unwrap();
        assert_eq!(c.expires_at_unix, NOW + 60);
    }

    #[test]
    fn custom_claim_names() {
        let v = JwtVerifier::new(Some(SECRET), None, "org_id", "sluice_role", &[])
            .unwrap()
            .unwrap();
        let c = v
            .verify(
                &hs(json!({"org_id": "o1", "sluice_role": "service", "tenant": "x", "exp": NOW + 9})),
                NOW,
            )
            .unwrap();
        assert_eq!((c.tenant.as_str(), c.role), ("o1", Role::Service));
    }

    fn with_custom_roles(roles: &[&str]) -> JwtVerifier {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        JwtVerifier::new(Some(SECRET), None, "tenant", "role", &roles)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn the_whole_payload_travels_as_claims() {
        let payload = json!({
            "tenant": "acme", "role": "service", "exp": NOW + 60,
            "sub": "u_42", "teams": ["t1", "t2"], "meta": {"plan": "pro"}
        });
        let c = verifier().verify(&hs(payload.clone()), NOW).unwrap();
        assert_eq!(Value::Object((*c.claims).clone()), payload);
        assert_eq!(&*c.policy_role, "service");
        let c = verifier()
            .verify(&hs(json!({"tenant": "acme", "exp": NOW + 60})), NOW)
            .unwrap();
        assert_eq!((c.role, &*c.policy_role), (Role::Anon, "anon"));
    }

    #[test]
    fn a_custom_role_is_anon_with_its_policy_role() {
        let v = with_custom_roles(&["member", "viewer"]);
        let c = v
            .verify(
                &hs(json!({"tenant": "acme", "role": "member", "sub": "u_1", "exp": NOW + 60})),
                NOW,
            )
            .unwrap();
        assert_eq!((c.role, &*c.policy_role), (Role::Anon, "member"));
        assert_eq!(c.claims.get("sub"), Some(&json!("u_1")));
        // Built-in roles keep their meaning.
        let c = v
            .verify(
                &hs(json!({"tenant": "acme", "role": "service", "exp": NOW + 60})),
                NOW,
            )
            .unwrap();
        assert_eq!((c.role, &*c.policy_role), (Role::Service, "service"));
    }

    #[test]
    fn unknown_roles_are_refused_naming_the_custom_roles() {
        let msg = |v: &JwtVerifier, role: &str| match v.verify(
            &hs(json!({"tenant": "a", "role": role, "exp": NOW + 60})),
            NOW,
        ) {
            Err(AuthError::InvalidJwt(m)) => m,
            other => panic!("{role}: expected InvalidJwt, got {other:?}"),
        };
        assert_eq!(
            msg(&verifier(), "member"),
            "claim `role`: unknown role \"member\"; expected anon or service"
        );
        let v = with_custom_roles(&["member", "viewer"]);
        assert_eq!(
            msg(&v, "owner"),
            "claim `role`: unknown role \"owner\"; expected anon, service or a custom role (member, viewer)"
        );
        assert_eq!(
            msg(&v, "Member"),
            "claim `role`: unknown role \"Member\"; expected anon, service or a custom role (member, viewer)"
        );
        // Admin stays refused, even if a custom role were called admin.
        let v = with_custom_roles(&["admin"]);
        assert!(msg(&v, "admin").contains("cannot carry role admin"));
    }

    #[test]
    fn a_forged_token_with_claims_and_a_custom_role_is_refused() {
        let v = with_custom_roles(&["member"]);
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"tenant": "acme", "role": "member", "sub": "u_1", "exp": NOW + 60}),
            &EncodingKey::from_secret(b"another secret, also 32 bytes long"),
        )
        .unwrap();
        assert!(matches!(
            v.verify(&forged, NOW),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn exp_is_required_and_enforced_with_a_small_leeway() {
        let v = verifier();
        let at = |exp: i64| v.verify(&hs(json!({"tenant": "a", "exp": exp})), NOW);
        assert!(at(NOW).is_ok());
        assert!(at(NOW - JWT_LEEWAY_SECS as i64).is_ok());
        assert!(matches!(
            at(NOW - JWT_LEEWAY_SECS as i64 - 1),
            Err(AuthError::Expired)
        ));
        assert!(matches!(at(0), Err(AuthError::Expired)));
        for claims in [
            json!({"tenant": "a"}),
            json!({"tenant": "a", "exp": null}),
            json!({"tenant": "a", "exp": "2099-01-01"}),
            json!({"tenant": "a", "exp": "4102444800"}),
        ] {
            assert!(
                matches!(
                    v.verify(&hs(claims.clone()), NOW),
                    Err(AuthError::InvalidJwt(_))
                ),
                "{claims}"
            );
        }
        let nbf = |nbf: i64| {
            v.verify(
                &hs(json!({"tenant": "a", "exp": NOW + 60, "nbf": nbf})),
                NOW,
            )
        };
        assert!(nbf(NOW + 5).is_ok());
        assert!(matches!(nbf(NOW + 60), Err(AuthError::InvalidJwt(_))));
    }

    #[test]
    fn refuses_admin_unknown_roles_and_missing_tenants() {
        let v = verifier();
        let check = |claims: Value| v.verify(&hs(claims), NOW).unwrap_err();
        let exp = NOW + 60;
        assert!(matches!(
            check(json!({"tenant": "a", "role": "admin", "exp": exp})),
            AuthError::InvalidJwt(_)
        ));
        assert!(matches!(
            check(json!({"tenant": "a", "role": "service_role", "exp": exp})),
            AuthError::InvalidJwt(_)
        ));
        assert!(matches!(
            check(json!({"tenant": "a", "role": 2, "exp": exp})),
            AuthError::InvalidJwt(_)
        ));
        assert!(matches!(check(json!({"exp": exp})), AuthError::NoTenant));
        assert!(matches!(
            check(json!({"tenant": "", "exp": exp})),
            AuthError::NoTenant
        ));
        assert!(matches!(
            check(json!({"tenant": null, "exp": exp})),
            AuthError::NoTenant
        ));
        assert!(matches!(
            check(json!({"tenant": 42, "exp": exp})),
            AuthError::InvalidJwt(_)
        ));
        assert!(matches!(
            check(json!({"tenant": "a\nb", "exp": exp})),
            AuthError::InvalidJwt(_)
        ));
    }

    #[test]
    fn refuses_bad_signatures_and_other_algorithms() {
        let v = verifier();
        let claims = json!({"tenant": "a", "exp": NOW + 60});
        let other = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"another secret, also 32 bytes long"),
        )
        .unwrap();
        assert!(matches!(
            v.verify(&other, NOW),
            Err(AuthError::BadSignature)
        ));
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            v.verify(&hs384, NOW),
            Err(AuthError::InvalidJwt(_))
        ));
        // alg "none", unsigned.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&claims.to_string())
        );
        assert!(v.verify(&none, NOW).is_err());
        let none_sig = format!("{none}c2ln");
        assert!(v.verify(&none_sig, NOW).is_err());
        // Tampered payload.
        let good = hs(claims);
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil = b64(&json!({"tenant": "b", "exp": NOW + 60}).to_string());
        parts[1] = &evil;
        assert!(matches!(
            v.verify(&parts.join("."), NOW),
            Err(AuthError::BadSignature)
        ));
        // RS256 without an RS256 key configured.
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        let rs_header = b64(&serde_json::to_string(&header).unwrap());
        let fake = format!("{rs_header}.{}.c2ln", &parts[1]);
        assert!(matches!(
            v.verify(&fake, NOW),
            Err(AuthError::InvalidJwt(_))
        ));
    }

    #[test]
    fn config_is_checked_at_start() {
        assert!(JwtVerifier::new(None, None, "tenant", "role", &[])
            .unwrap()
            .is_none());
        assert!(matches!(
            JwtVerifier::new(Some(""), None, "tenant", "role", &[]),
            Err(AuthError::Config {
                key: "auth.jwt_hs256_secret",
                ..
            })
        ));
        assert!(matches!(
            JwtVerifier::new(Some(SECRET), None, "", "role", &[]),
            Err(AuthError::Config {
                key: "auth.jwt_tenant_claim",
                ..
            })
        ));
        for pem in [
            "not a pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(
                matches!(
                    JwtVerifier::new(None, Some(pem), "tenant", "role", &[]),
                    Err(AuthError::Config {
                        key: "auth.jwt_rs256_public_key",
                        ..
                    })
                ),
                "{pem}"
            );
        }
    }

    #[test]
    fn rs256_with_the_fixture_keys() {
        let public = include_str!("../../tests/fixtures/jwt/rs256_public.pem");
        let private = include_str!("../../tests/fixtures/jwt/rs256_private.pem");
        let other = include_str!("../../tests/fixtures/jwt/rs256_other_private.pem");
        assert_eq!(
            der::rsa_modulus_bits(&pem_body(public).unwrap()),
            Some(2048)
        );
        let v = JwtVerifier::new(None, Some(public), "tenant", "role", &[])
            .unwrap()
            .unwrap();
        let claims = json!({"tenant": "acme", "role": "anon", "exp": NOW + 60});
        let sign = |pem: &str| {
            encode(
                &Header::new(Algorithm::RS256),
                &claims,
                &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            v.verify(&sign(private), NOW).unwrap().tenant.as_str(),
            "acme"
        );
        assert!(matches!(
            v.verify(&sign(other), NOW),
            Err(AuthError::BadSignature)
        ));
        // HS256 signed with the public key's text (algorithm confusion) is
        // refused: HS256 is not configured here.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert!(v.verify(&confused, NOW).is_err());

        let short = include_str!("../../tests/fixtures/jwt/rs1024_public.pem");
        for pem in [short, private] {
            assert!(matches!(
                JwtVerifier::new(None, Some(pem), "tenant", "role", &[]),
                Err(AuthError::Config {
                    key: "auth.jwt_rs256_public_key",
                    ..
                })
            ));
        }
    }

    #[test]
    fn looks_like_jwt_needs_three_segments() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("eyJh-_.eyJ0.sig_-"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b c.d"));
        assert!(!looks_like_jwt("sk_anon_abc"));
    }

    #[test]
    fn der_modulus_bits() {
        // SEQUENCE { INTEGER 0x00 0x80 0x00 (16 bits), INTEGER 3 }
        let pkcs1 = [0x30, 0x08, 0x02, 0x03, 0x00, 0x80, 0x00, 0x02, 0x01, 0x03];
        assert_eq!(der::rsa_modulus_bits(&pkcs1), Some(16));
        assert_eq!(der::rsa_modulus_bits(&[0x30, 0x05, 0x02]), None);
        assert_eq!(der::rsa_modulus_bits(&[]), None);
    }
}
