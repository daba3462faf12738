//! Credentials against a real state database: API keys created, listed,
//! revoked and verified; JWTs (HS256, RS256) accepted and refused; the
//! query-string rule; revocation seen by new requests at once and by open
//! streams through `still_valid`; claims and custom roles carried into the
//! `Identity`.

mod common;

use std::collections::BTreeMap;

use common::TestDb;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sluice::auth::{
    self, create_key, list_keys, revoke_key, AuthError, Authenticator, CredentialId,
    CredentialSource, Identity, Role,
};
use sluice::config::Config;
use sluice::event::TenantId;
use tokio_postgres::Client;

const HS_SECRET: &str = "test-secret-test-secret-test-secret!";
const RS_PUBLIC: &str = include_str!("fixtures/jwt/rs256_public.pem");
const RS_PRIVATE: &str = include_str!("fixtures/jwt/rs256_private.pem");
const RS_OTHER_PRIVATE: &str = include_str!("fixtures/jwt/rs256_other_private.pem");

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).expect("valid tenant")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn config(db: &TestDb, extra: &[(&str, &str)]) -> Config {
    let mut env: BTreeMap<String, String> =
        [("SLUICE_STATE_URL".to_owned(), db.url.clone())].into();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::load(None, &env).expect("valid test config")
}

/// A fresh, migrated state database and a client on it.
async fn setup(prefix: &str) -> (TestDb, Client) {
    let db = TestDb::new(prefix);
    let mut client = db.client().await;
    sluice::log::migrate::migrate(&mut client)
        .await
        .expect("migrate");
    (db, client)
}

async fn authenticator(db: &TestDb, extra: &[(&str, &str)]) -> Authenticator {
    authenticator_with_roles(db, extra, &[]).await
}

/// An authenticator that knows `custom_roles` (the config's policies will
/// name them).
async fn authenticator_with_roles(
    db: &TestDb,
    extra: &[(&str, &str)],
    custom_roles: &[&str],
) -> Authenticator {
    let roles: Vec<String> = custom_roles.iter().map(|r| (*r).to_owned()).collect();
    // The roles a config's policies would name (the server takes them from
    // config.policies; these tests exercise the authenticator alone).
    Authenticator::new(&db.url, &config(db, extra).auth, &roles)
        .await
        .expect("authenticator starts")
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .expect("sign HS256")
}

fn rs256(claims: &Value, private_pem: &str) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("fixture private key"),
    )
    .expect("sign RS256")
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked() {
    let (_db, c) = setup("auth_keys").await;
    let acme = tenant("acme");
    let (anon, anon_key) = create_key(
        &c,
        Some(&acme),
        Role::Anon,
        Some("web"),
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create anon");
    let (service, service_key) = create_key(
        &c,
        Some(&acme),
        Role::Service,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create service");
    let (admin, admin_key) = create_key(
        &c,
        None,
        Role::Admin,
        Some("ops"),
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create admin");
    let (_other, _) = create_key(
        &c,
        Some(&tenant("globex")),
        Role::Service,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create other tenant's key");

    assert!(anon_key.starts_with("sk_anon_"), "{anon_key}");
    assert!(service_key.starts_with("sk_service_"), "{service_key}");
    assert!(admin_key.starts_with("sk_admin_"), "{admin_key}");
    assert_eq!(anon.prefix, &anon_key[..12]);
    assert_eq!(anon.tenant.as_deref(), Some("acme"));
    assert_eq!(anon.name.as_deref(), Some("web"));
    assert_eq!(anon.role, Role::Anon);
    assert!(anon.revoked_at.is_none());
    assert_eq!(admin.tenant, None);
    assert_eq!(service.name, None);

    // Only hashes and 12-character prefixes are stored: no row holds the
    // secret part of any key.
    let rows = c
        .query("SELECT t::text FROM sluice.api_keys t", &[])
        .await
        .expect("read keys");
    assert_eq!(rows.len(), 4);
    for row in &rows {
        let text: String = row.get(0);
        for key in [&anon_key, &service_key, &admin_key] {
            assert!(!text.contains(&key[12..]), "{text} holds {key}");
        }
    }
    let stored: i64 = c
        .query_one(
            "SELECT count(*) FROM sluice.api_keys WHERE key_hash = $1",
            &[&auth::keys::hash_key(&service_key)],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 1);

    let acme_keys = list_keys(&c, Some(&acme)).await.expect("list acme");
    assert_eq!(
        acme_keys.iter().map(|k| k.id).collect::<Vec<_>>(),
        vec![anon.id, service.id]
    );
    let all = list_keys(&c, None).await.expect("list all");
    assert_eq!(all.len(), 4);
    assert!(all.iter().any(|k| k.id == admin.id && k.tenant.is_none()));
    assert!(list_keys(&c, Some(&tenant("nobody")))
        .await
        .expect("list none")
        .is_empty());

    assert!(revoke_key(&c, service.id).await.expect("revoke"));
    assert!(
        !revoke_key(&c, service.id).await.expect("revoke again"),
        "a second revoke changes nothing"
    );
    assert!(!revoke_key(&c, 999_999).await.expect("revoke unknown"));
    let after = auth::get_key(&c, service.id)
        .await
        .expect("get")
        .expect("still listed");
    assert!(after.revoked_at.is_some());
    assert!(auth::get_key(&c, 999_999).await.expect("get").is_none());
}

#[tokio::test]
async fn key_tenant_rules_are_enforced_by_the_api_and_the_table() {
    let (_db, c) = setup("auth_rules").await;
    let err = create_key(
        &c,
        Some(&tenant("acme")),
        Role::Admin,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AuthError::InvalidKeyRequest(_)), "{err}");
    for role in [Role::Anon, Role::Service] {
        let err = create_key(&c, None, role, None, &serde_json::Map::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::InvalidKeyRequest(_)), "{err}");
    }
    // The table holds the same rule for anyone writing to it directly.
    let hash = "0".repeat(64);
    for (tenant, role) in [
        (Some("acme"), "admin"),
        (None, "service"),
        (None, "anon"),
        (Some("acme"), "root"),
    ] {
        let r = c
            .execute(
                "INSERT INTO sluice.api_keys (tenant, role, prefix, key_hash) VALUES ($1, $2, 'sk_', $3)",
                &[&tenant, &role, &hash],
            )
            .await;
        assert!(r.is_err(), "{tenant:?} {role} was accepted");
    }
    let count: i64 = c
        .query_one("SELECT count(*) FROM sluice.api_keys", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn api_keys_authenticate_with_their_role_and_tenant() {
    let (db, c) = setup("auth_authn").await;
    let acme = tenant("acme");
    let (anon, anon_key) = create_key(
        &c,
        Some(&acme),
        Role::Anon,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create");
    let (service, service_key) = create_key(
        &c,
        Some(&acme),
        Role::Service,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create");
    let (admin, admin_key) = create_key(&c, None, Role::Admin, None, &serde_json::Map::new(), None)
        .await
        .expect("create");
    let a = authenticator(&db, &[]).await;

    let id = a
        .authenticate(&anon_key, CredentialSource::Query)
        .await
        .expect("anon key in the query string");
    assert_eq!(
        id,
        Identity {
            tenant: Some(acme.clone()),
            role: Role::Anon,
            policy_role: "anon".into(),
            claims: Default::default(),
            credential: CredentialId::ApiKey { id: anon.id },
        }
    );
    let id = a
        .authenticate(&service_key, CredentialSource::Header)
        .await
        .expect("service key in the header");
    assert_eq!(
        (id.tenant.as_ref(), id.role, id.credential.clone()),
        (
            Some(&acme),
            Role::Service,
            CredentialId::ApiKey { id: service.id }
        )
    );
    assert!(auth::require(&id, Role::Service).is_ok());
    assert!(auth::require(&id, Role::Admin).is_err());
    let id = a
        .authenticate(&admin_key, CredentialSource::Bearer)
        .await
        .expect("admin key as bearer");
    assert_eq!(
        (id.tenant, id.role, id.credential),
        (None, Role::Admin, CredentialId::ApiKey { id: admin.id })
    );

    // The whole path from request parts.
    let (token, from) = auth::extract(Some(&anon_key), Some(&service_key), None).expect("extract");
    assert_eq!(
        a.authenticate(&token, from)
            .await
            .expect("header wins")
            .role,
        Role::Service
    );

    // A well-formed key that was never issued, and garbage.
    let unknown = auth::keys::generate_key(Role::Service);
    let err = a
        .authenticate(&unknown, CredentialSource::Header)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::UnknownKey), "{err}");
    assert_eq!((err.status(), err.code()), (401, "invalid_key"));
    let mut tampered = service_key.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'a' { 'b' } else { 'a' });
    assert!(matches!(
        a.authenticate(&tampered, CredentialSource::Header).await,
        Err(AuthError::UnknownKey)
    ));
    for garbage in ["sk_anon_short", "hello", "sk_root_x", "a.b", ""] {
        let err = a
            .authenticate(garbage, CredentialSource::Header)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 401, "{garbage:?}: {err}");
    }
}

#[tokio::test]
async fn a_revoked_key_fails_at_once_and_open_streams_see_it() {
    let (db, c) = setup("auth_revoke").await;
    let (info, key) = create_key(
        &c,
        Some(&tenant("acme")),
        Role::Service,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create");
    let (other, other_key) = create_key(
        &c,
        Some(&tenant("acme")),
        Role::Anon,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create");
    let a = authenticator(&db, &[]).await;
    let id = a
        .authenticate(&key, CredentialSource::Header)
        .await
        .expect("valid before revocation");
    assert!(a.still_valid(&id).await);

    assert!(revoke_key(&c, info.id).await.expect("revoke"));
    let err = a
        .authenticate(&key, CredentialSource::Header)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Revoked), "{err}");
    assert_eq!((err.status(), err.code()), (401, "revoked"));
    assert!(eventually_invalid(&a, &id).await, "revocation not seen");

    // Other keys are unaffected; a deleted key is invalid too.
    let other_id = a
        .authenticate(&other_key, CredentialSource::Query)
        .await
        .expect("other key");
    assert!(a.still_valid(&other_id).await);
    c.execute("DELETE FROM sluice.api_keys WHERE id = $1", &[&other.id])
        .await
        .expect("delete");
    assert!(eventually_invalid(&a, &other_id).await, "deletion not seen");
    assert!(matches!(
        a.authenticate(&other_key, CredentialSource::Query).await,
        Err(AuthError::UnknownKey)
    ));
}

#[tokio::test]
async fn only_anon_credentials_may_come_in_the_query_string() {
    let (db, c) = setup("auth_query").await;
    let acme = tenant("acme");
    let (_, service_key) = create_key(
        &c,
        Some(&acme),
        Role::Service,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create");
    let (_, admin_key) = create_key(&c, None, Role::Admin, None, &serde_json::Map::new(), None)
        .await
        .expect("create");
    let a = authenticator(&db, &[("SLUICE_AUTH_JWT_HS256_SECRET", HS_SECRET)]).await;

    let never_issued = auth::keys::generate_key(Role::Service);
    for key in [&service_key, &admin_key, &never_issued] {
        let err = a
            .authenticate(key, CredentialSource::Query)
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::QueryStringNotAnon), "{err}");
        assert_eq!(err.status(), 403);
        assert!(err.to_string().contains("apikey header"), "{err}");
    }
    let service_jwt = hs256(&json!({"tenant": "acme", "role": "service", "exp": now() + 60}));
    assert!(matches!(
        a.authenticate(&service_jwt, CredentialSource::Query).await,
        Err(AuthError::QueryStringNotAnon)
    ));
    assert_eq!(
        a.authenticate(&service_jwt, CredentialSource::Bearer)
            .await
            .expect("service JWT as bearer")
            .role,
        Role::Service
    );
    let anon_jwt = hs256(&json!({"tenant": "acme", "role": "anon", "exp": now() + 60}));
    assert_eq!(
        a.authenticate(&anon_jwt, CredentialSource::Query)
            .await
            .expect("anon JWT in the query string")
            .role,
        Role::Anon
    );
}

#[tokio::test]
async fn hs256_jwts_are_verified() {
    let (db, _c) = setup("auth_hs256").await;
    let a = authenticator(&db, &[("SLUICE_AUTH_JWT_HS256_SECRET", HS_SECRET)]).await;
    let exp = now() + 120;

    let payload = json!({"tenant": "acme", "role": "service", "sub": "u_7", "exp": exp});
    let id = a
        .authenticate(&hs256(&payload), CredentialSource::Bearer)
        .await
        .expect("valid HS256");
    assert_eq!(
        id,
        Identity {
            tenant: Some(tenant("acme")),
            role: Role::Service,
            policy_role: "service".into(),
            claims: std::sync::Arc::new(payload.as_object().expect("object").clone()),
            credential: CredentialId::Jwt {
                expires_at_unix: exp
            },
        }
    );
    assert!(a.still_valid(&id).await);
    let expired_identity = Identity {
        credential: CredentialId::Jwt {
            expires_at_unix: now() - 60,
        },
        ..id
    };
    assert!(!a.still_valid(&expired_identity).await);

    let refused = |token: String| {
        let a = &a;
        async move {
            a.authenticate(&token, CredentialSource::Bearer)
                .await
                .unwrap_err()
        }
    };
    let err = refused(hs256(&json!({"tenant": "acme", "exp": now() - 60}))).await;
    assert!(matches!(err, AuthError::Expired), "{err}");
    assert_eq!((err.status(), err.code()), (401, "expired"));

    // Forged (wrong key), with or without claims: refused before any
    // claim is read.
    for claims in [
        json!({"tenant": "acme", "exp": exp}),
        json!({"tenant": "acme", "role": "service", "sub": "u_1", "teams": ["t1"], "exp": exp}),
    ] {
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"not-the-secret-not-the-secret-!!"),
        )
        .expect("sign");
        let err = refused(forged).await;
        assert!(matches!(err, AuthError::BadSignature), "{claims}: {err}");
        assert_eq!(err.status(), 401);
    }

    let err = refused(hs256(&json!({"role": "anon", "exp": exp}))).await;
    assert!(matches!(err, AuthError::NoTenant), "{err}");
    assert_eq!(err.status(), 401);

    let err = refused(hs256(
        &json!({"tenant": "acme", "role": "admin", "exp": exp}),
    ))
    .await;
    assert!(matches!(err, AuthError::InvalidJwt(_)), "{err}");
    assert_eq!(err.status(), 401);

    let err = refused(hs256(&json!({"tenant": "acme", "role": "service"}))).await;
    assert!(matches!(err, AuthError::InvalidJwt(_)), "no exp: {err}");

    // RS256 is not configured here.
    let err = refused(rs256(&json!({"tenant": "acme", "exp": exp}), RS_PRIVATE)).await;
    assert!(matches!(err, AuthError::InvalidJwt(_)), "{err}");
}

#[tokio::test]
async fn rs256_jwts_are_verified_with_custom_claim_names() {
    let (db, _c) = setup("auth_rs256").await;
    let a = authenticator(
        &db,
        &[
            ("SLUICE_AUTH_JWT_RS256_PUBLIC_KEY", RS_PUBLIC),
            ("SLUICE_AUTH_JWT_TENANT_CLAIM", "org"),
            ("SLUICE_AUTH_JWT_ROLE_CLAIM", "sluice_role"),
        ],
    )
    .await;
    let exp = now() + 120;
    let id = a
        .authenticate(
            &rs256(
                &json!({"org": "acme", "sluice_role": "service", "tenant": "other", "exp": exp}),
                RS_PRIVATE,
            ),
            CredentialSource::Bearer,
        )
        .await
        .expect("valid RS256");
    assert_eq!((id.tenant, id.role), (Some(tenant("acme")), Role::Service));

    let refused = |token: String| {
        let a = &a;
        async move {
            a.authenticate(&token, CredentialSource::Bearer)
                .await
                .unwrap_err()
        }
    };
    let err = refused(rs256(&json!({"org": "acme", "exp": exp}), RS_OTHER_PRIVATE)).await;
    assert!(matches!(err, AuthError::BadSignature), "{err}");
    let err = refused(rs256(
        &json!({"org": "acme", "exp": now() - 60}),
        RS_PRIVATE,
    ))
    .await;
    assert!(matches!(err, AuthError::Expired), "{err}");
    let err = refused(rs256(&json!({"tenant": "acme", "exp": exp}), RS_PRIVATE)).await;
    assert!(matches!(err, AuthError::NoTenant), "{err}");
    let err = refused(rs256(
        &json!({"org": "acme", "sluice_role": "admin", "exp": exp}),
        RS_PRIVATE,
    ))
    .await;
    assert!(matches!(err, AuthError::InvalidJwt(_)), "{err}");
    // An HS256 token keyed with the public key's text (algorithm confusion).
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({"org": "acme", "exp": exp}),
        &EncodingKey::from_secret(RS_PUBLIC.as_bytes()),
    )
    .expect("sign");
    assert_eq!(refused(confused).await.status(), 401);
}

#[tokio::test]
async fn jwts_are_refused_when_none_is_configured_and_bad_keys_fail_at_start() {
    let (db, _c) = setup("auth_jwtcfg").await;
    let a = authenticator(&db, &[]).await;
    let token = hs256(&json!({"tenant": "acme", "exp": now() + 60}));
    let err = a
        .authenticate(&token, CredentialSource::Bearer)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::JwtNotConfigured), "{err}");
    assert_eq!(err.status(), 401);

    for pem in [
        "garbage",
        RS_PRIVATE,
        include_str!("fixtures/jwt/rs1024_public.pem"),
    ] {
        let cfg = config(&db, &[("SLUICE_AUTH_JWT_RS256_PUBLIC_KEY", pem)]);
        let err = Authenticator::new(&db.url, &cfg.auth, &[])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::Config {
                    key: "auth.jwt_rs256_public_key",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[tokio::test]
async fn the_authenticator_reconnects_and_reports_an_unreachable_database() {
    let (db, c) = setup("auth_reconnect").await;
    let (_, key) = create_key(
        &c,
        Some(&tenant("acme")),
        Role::Anon,
        None,
        &serde_json::Map::new(),
        None,
    )
    .await
    .expect("create");
    let a = authenticator(&db, &[]).await;
    let id = a
        .authenticate(&key, CredentialSource::Query)
        .await
        .expect("first");

    // Kill the authenticator's session: the next call reconnects.
    let killed: i64 = c
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'sluice-auth'",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1);
    a.authenticate(&key, CredentialSource::Query)
        .await
        .expect("after its session was killed");
    assert!(a.still_valid(&id).await);

    // Nothing listens on port 1.
    let err = Authenticator::new(
        "postgres://sluice@127.0.0.1:1/nothing",
        &Default::default(),
        &[],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AuthError::Unavailable(_)), "{err}");
    assert_eq!((err.status(), err.code()), (503, "unavailable"));
}

#[tokio::test]
async fn an_unmigrated_database_is_named_at_start() {
    let db = TestDb::new("auth_nomigrate");
    let err = Authenticator::new(&db.url, &Default::default(), &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sluice migrate"), "{err}");
}

#[tokio::test]
async fn keys_carry_claims_and_custom_roles_into_the_identity() {
    let (db, c) = setup("auth_claims").await;
    let acme = tenant("acme");
    let claims = json!({"sub": "u_42", "teams": ["t1", "t2"], "plan": {"tier": 2}});
    let claims = claims.as_object().expect("object").clone();
    let (member, member_key) = create_key(
        &c,
        Some(&acme),
        Role::Anon,
        Some("web"),
        &claims,
        Some("member"),
    )
    .await
    .expect("create a member key");
    assert_eq!(member.claims, claims);
    assert_eq!(member.policy_role.as_deref(), Some("member"));
    assert_eq!(member.effective_policy_role(), "member");
    let (service, service_key) = create_key(
        &c,
        Some(&acme),
        Role::Service,
        None,
        &json!({"sub": "backend"})
            .as_object()
            .expect("object")
            .clone(),
        None,
    )
    .await
    .expect("create a service key with claims");
    let listed = list_keys(&c, Some(&acme)).await.expect("list");
    assert_eq!(listed, vec![member.clone(), service.clone()]);

    let a = authenticator_with_roles(&db, &[], &["member", "viewer"]).await;
    let id = a
        .authenticate(&member_key, CredentialSource::Query)
        .await
        .expect("a custom-role key is anon: the query string is fine");
    assert_eq!(
        id,
        Identity {
            tenant: Some(acme.clone()),
            role: Role::Anon,
            policy_role: "member".into(),
            claims: std::sync::Arc::new(claims.clone()),
            credential: CredentialId::ApiKey { id: member.id },
        }
    );
    assert!(auth::require(&id, Role::Service).is_err());
    let id = a
        .authenticate(&service_key, CredentialSource::Header)
        .await
        .expect("service key");
    assert_eq!((id.role, &*id.policy_role), (Role::Service, "service"));
    assert_eq!(id.claims.get("sub"), Some(&json!("backend")));
    assert!(!id.claims.contains_key("tenant"), "only the given claims");

    // A key whose custom role the policies no longer define fails closed.
    let a = authenticator_with_roles(&db, &[], &["viewer"]).await;
    let err = a
        .authenticate(&member_key, CredentialSource::Header)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::UnknownRole { .. }), "{err}");
    assert_eq!((err.status(), err.code()), (401, "unknown_role"));
    assert_eq!(
        err.to_string(),
        r#"this API key's role "member" is not a custom role of this Sluice's policies (they define viewer)"#
    );
}

#[tokio::test]
async fn a_jwt_with_a_custom_role_is_anon_and_carries_its_payload() {
    let (db, _c) = setup("auth_jwt_custom").await;
    let a = authenticator_with_roles(
        &db,
        &[("SLUICE_AUTH_JWT_HS256_SECRET", HS_SECRET)],
        &["member"],
    )
    .await;
    let payload = json!({"tenant": "acme", "role": "member", "sub": "u_9", "exp": now() + 60});
    let id = a
        .authenticate(&hs256(&payload), CredentialSource::Query)
        .await
        .expect("a custom role travels like anon");
    assert_eq!((id.role, &*id.policy_role), (Role::Anon, "member"));
    assert_eq!(Value::Object((*id.claims).clone()), payload);
    let err = a
        .authenticate(
            &hs256(&json!({"tenant": "acme", "role": "viewer", "exp": now() + 60})),
            CredentialSource::Bearer,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::InvalidJwt(_)), "{err}");
    assert!(
        err.to_string()
            .contains("expected anon, service or a custom role (member)"),
        "{err}"
    );
}

#[tokio::test]
async fn custom_roles_and_claims_are_checked_by_the_api_and_the_table() {
    let (_db, c) = setup("auth_claim_rules").await;
    let acme = tenant("acme");
    let none = serde_json::Map::new();
    for (t, role) in [(Some(&acme), Role::Service), (None, Role::Admin)] {
        let err = create_key(&c, t, role, None, &none, Some("member"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::InvalidKeyRequest(_)), "{err}");
        assert!(err.to_string().contains("for anon keys only"), "{err}");
    }
    for bad in ["admin", "Member", "a b"] {
        let err = create_key(&c, Some(&acme), Role::Anon, None, &none, Some(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidKeyRequest(_)),
            "{bad}: {err}"
        );
    }
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("c{i}"), json!(i))).collect();
    let err = create_key(&c, Some(&acme), Role::Anon, None, &many, None)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "33 claims given; a key takes at most 32");

    // The table holds the same rules for anyone writing to it directly.
    for (role, policy_role, claims) in [
        ("service", Some("member"), "{}"),
        ("anon", Some("admin"), "{}"),
        ("anon", Some("Member"), "{}"),
        ("anon", None, "[1]"),
        ("anon", None, "\"sub\""),
    ] {
        let r = c
            .execute(
                "INSERT INTO sluice.api_keys (tenant, role, prefix, key_hash, policy_role, claims)
                 VALUES ('acme', $1, 'sk_', $2, $3, $4::text::jsonb)",
                &[&role, &"0".repeat(64), &policy_role, &claims],
            )
            .await;
        assert!(r.is_err(), "{role} {policy_role:?} {claims} was accepted");
    }
    // The same statement with a valid row is accepted: the refusals above
    // are the CHECKs', not the statement's.
    c.execute(
        "INSERT INTO sluice.api_keys (tenant, role, prefix, key_hash, policy_role, claims)
         VALUES ('acme', $1, 'sk_', $2, $3, $4::text::jsonb)",
        &[&"anon", &"0".repeat(64), &Some("member"), &r#"{"sub":"x"}"#],
    )
    .await
    .expect("a valid row");
    let count: i64 = c
        .query_one("SELECT count(*) FROM sluice.api_keys", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 1);
}

/// Whether `still_valid` turns false within a few seconds: answers are
/// reused for up to a second, and open streams only need "within seconds".
async fn eventually_invalid(a: &sluice::auth::Authenticator, id: &sluice::auth::Identity) -> bool {
    for _ in 0..50 {
        if !a.still_valid(id).await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
