//! `sluice keys create|list|revoke`: API keys in the state database. Each
//! command applies the migrations first, so it works on a fresh database.
//!
//! `create` also takes the key's claims (`--claim name=value`, a value with
//! a comma being an array of strings; `--claim-json name=<json>`) and a
//! custom role in `--role` (the key's privilege is then anon).

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio_postgres::Client;

use super::CliError;
use crate::auth::{self, AuthError, KeyInfo, Role};
use crate::config::Config;
use crate::event::TenantId;

async fn state_client(config: Option<&Path>) -> Result<Client, CliError> {
    let config = Config::from_process(config)?;
    Ok(crate::pipeline::migrated_state(&config).await?.0)
}

/// Writes `text` to stdout; a closed pipe is not an error.
fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Stdout(e)),
        _ => Ok(()),
    }
}

fn timestamp(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// The key's privilege and custom role from `--role`: a built-in role, or
/// a custom role, whose privilege is anon.
/// `custom_roles` are those the config's policies name: a key with any
/// other custom role could never be used (it is refused when presented).
pub fn parse_role(arg: &str, custom_roles: &[String]) -> Result<(Role, Option<String>), AuthError> {
    let arg = arg.trim();
    if let Some(role) = Role::parse(arg) {
        return Ok((role, None));
    }
    auth::keys::check_custom_role(arg).map_err(|_| {
        AuthError::InvalidKeyRequest(format!(
            "--role {arg:?}: expected anon, service, admin or a custom role (a lower-case letter, then a-z, 0-9, `_`, `-`)"
        ))
    })?;
    if !custom_roles.iter().any(|r| r == arg) {
        return Err(AuthError::InvalidKeyRequest(format!(
            "--role {arg:?}: no access policy names this custom role (the config's policies name: {}); add a [[policies]] entry with role = {arg:?}",
            if custom_roles.is_empty() { "none".to_owned() } else { custom_roles.join(", ") }
        )));
    }
    Ok((Role::Anon, Some(arg.to_owned())))
}

/// The claims of `--claim name=value` (a value with a comma is an array of
/// strings, `name=` the empty string) and `--claim-json name=<json>`,
/// within the limits of [`auth::keys::check_claims`]. A name given twice is
/// refused.
pub fn parse_claims(plain: &[String], json: &[String]) -> Result<Map<String, Value>, AuthError> {
    let mut claims = Map::new();
    let mut add = |flag: &str, name: &str, value: Value| {
        auth::keys::check_claim_name(name)?;
        if claims.insert(name.to_owned(), value).is_some() {
            return Err(AuthError::InvalidKeyRequest(format!(
                "{flag} {name}: claim {name:?} is given twice"
            )));
        }
        Ok(())
    };
    for arg in plain {
        let (name, value) = split_claim("--claim", arg)?;
        add("--claim", name, plain_claim_value(value))?;
    }
    for arg in json {
        let (name, value) = split_claim("--claim-json", arg)?;
        let value = serde_json::from_str(value).map_err(|e| {
            AuthError::InvalidKeyRequest(format!("--claim-json {name}: not JSON ({e}): {value}"))
        })?;
        add("--claim-json", name, value)?;
    }
    auth::keys::check_claims(&claims)?;
    Ok(claims)
}

/// `name=value`, split at the first `=`.
fn split_claim<'a>(flag: &str, arg: &'a str) -> Result<(&'a str, &'a str), AuthError> {
    arg.split_once('=')
        .ok_or_else(|| AuthError::InvalidKeyRequest(format!("{flag} {arg:?}: expected name=value")))
}

/// A string, or an array of strings when the value has a comma.
fn plain_claim_value(value: &str) -> Value {
    if value.contains(',') {
        Value::Array(
            value
                .split(',')
                .map(|v| Value::String(v.to_owned()))
                .collect(),
        )
    } else {
        Value::String(value.to_owned())
    }
}

/// `member (anon)` for a custom role, else the role.
fn role_label(info: &KeyInfo) -> String {
    match &info.policy_role {
        Some(custom) => format!("{custom} ({})", info.role),
        None => info.role.to_string(),
    }
}

/// The claims as compact JSON, `-` when there are none.
fn claims_label(claims: &Map<String, Value>) -> String {
    if claims.is_empty() {
        "-".to_owned()
    } else {
        Value::Object(claims.clone()).to_string()
    }
}

/// Creates a key and prints it, once.
pub async fn create(
    config: Option<&Path>,
    tenant: Option<String>,
    role: String,
    name: Option<String>,
    claims: &[String],
    claims_json: &[String],
) -> Result<(), CliError> {
    let loaded = Config::from_process(config)?;
    let custom_roles = loaded
        .compiled_policies()
        .map(|p| p.custom_roles())
        .unwrap_or_default();
    let (role, custom_role) = parse_role(&role, &custom_roles)?;
    let claims = parse_claims(claims, claims_json)?;
    let tenant = match (role, tenant) {
        (Role::Admin, Some(_)) => {
            return Err(AuthError::InvalidKeyRequest(
                "an admin key is the operator's and cross-tenant: drop --tenant".to_owned(),
            )
            .into())
        }
        (_, Some(t)) => Some(TenantId::new(&t)?),
        (Role::Admin, None) => None,
        (_, None) => {
            return Err(AuthError::InvalidKeyRequest(format!(
                "{} key belongs to one tenant: give --tenant",
                if role == Role::Anon {
                    "an anon"
                } else {
                    "a service"
                }
            ))
            .into())
        }
    };
    let name = name.filter(|n| !n.trim().is_empty());
    let client = state_client(config).await?;
    let (info, key) = auth::create_key(
        &client,
        tenant.as_ref(),
        role,
        name.as_deref(),
        &claims,
        custom_role.as_deref(),
    )
    .await?;
    let mut text = format!(
        "created {} key {} for {}{}{}\n",
        role_label(&info),
        info.id,
        info.tenant
            .as_deref()
            .map_or_else(|| "all tenants".to_owned(), |t| format!("tenant {t}")),
        info.name
            .as_deref()
            .map(|n| format!(", named {n:?}"))
            .unwrap_or_default(),
        if info.claims.is_empty() {
            String::new()
        } else {
            format!(", with claims {}", claims_label(&info.claims))
        },
    );
    text.push_str(&key);
    text.push('\n');
    text.push_str(
        "This key is shown only once: store it now. Sluice keeps only its hash and cannot show it again.\n",
    );
    if role == Role::Anon {
        text.push_str(
            "(An anon key may be used from browsers, also as the apikey query parameter.)\n",
        );
    } else {
        text.push_str(
            "(Send it in the apikey header or as Authorization: Bearer, never in a URL.)\n",
        );
    }
    print(&text)
}

fn table(keys: &[KeyInfo]) -> String {
    let header = [
        "id", "tenant", "role", "name", "prefix", "created", "revoked", "claims",
    ];
    let rows: Vec<[String; 8]> = keys
        .iter()
        .map(|k| {
            [
                k.id.to_string(),
                k.tenant.clone().unwrap_or_else(|| "-".to_owned()),
                role_label(k),
                k.name.clone().unwrap_or_else(|| "-".to_owned()),
                format!("{}…", k.prefix),
                timestamp(&k.created_at),
                k.revoked_at
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), timestamp),
                claims_label(&k.claims),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            if i + 1 < widths.len() {
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&mut header.iter().copied());
    for row in &rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Lists the keys (of one tenant, or all), revoked ones included.
pub async fn list(config: Option<&Path>, tenant: Option<String>) -> Result<(), CliError> {
    let tenant = tenant.map(|t| TenantId::new(&t)).transpose()?;
    let client = state_client(config).await?;
    let keys = auth::list_keys(&client, tenant.as_ref()).await?;
    if keys.is_empty() {
        return print(match tenant {
            Some(_) => "no keys for this tenant\n",
            None => "no keys; create one with `sluice keys create`\n",
        });
    }
    print(&table(&keys))
}

/// Revokes a key: new requests with it fail at once, open streams end at
/// their next check (`auth.revocation_check_secs`).
pub async fn revoke(config: Option<&Path>, id: i64) -> Result<(), CliError> {
    let client = state_client(config).await?;
    let revoked = auth::revoke_key(&client, id).await?;
    match auth::get_key(&client, id).await? {
        Some(k) if revoked => print(&format!("revoked key {id} ({}…)\n", k.prefix)),
        Some(k) => print(&format!(
            "key {id} ({}…) was already revoked at {}\n",
            k.prefix,
            k.revoked_at.as_ref().map_or_else(String::new, timestamp)
        )),
        None => Err(AuthError::InvalidKeyRequest(format!("no API key with id {id}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let keys = vec![
            KeyInfo {
                id: 1,
                tenant: Some("acme".into()),
                role: Role::Service,
                name: Some("backend".into()),
                prefix: "sk_service_A".into(),
                created_at: t("2026-01-02T03:04:05Z"),
                revoked_at: None,
                claims: Map::new(),
                policy_role: None,
            },
            KeyInfo {
                id: 12,
                tenant: None,
                role: Role::Admin,
                name: None,
                prefix: "sk_admin_xyz".into(),
                created_at: t("2026-01-02T03:04:05Z"),
                revoked_at: Some(t("2026-02-01T00:00:00Z")),
                claims: Map::new(),
                policy_role: None,
            },
            KeyInfo {
                id: 13,
                tenant: Some("acme".into()),
                role: Role::Anon,
                name: None,
                prefix: "sk_anon_abcd".into(),
                created_at: t("2026-01-02T03:04:05Z"),
                revoked_at: None,
                claims: parse_claims(&["sub=u_42".into(), "teams=t1,t2".into()], &[]).unwrap(),
                policy_role: Some("member".into()),
            },
        ];
        let out = table(&keys);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("id  tenant  role           name     prefix"));
        assert!(lines[0].ends_with("  claims"));
        assert!(lines[1].starts_with("1   acme    service        backend  sk_service_A…"));
        assert!(lines[2].starts_with("12  -       admin          -        sk_admin_xyz…"));
        assert!(lines[2].ends_with("2026-02-01 00:00:00Z  -"));
        let tail: Vec<&str> = lines[1].split_whitespace().rev().take(2).collect();
        assert_eq!(tail, ["-", "-"], "not revoked, no claims: {}", lines[1]);
        assert!(lines[3].starts_with("13  acme    member (anon)  -        sk_anon_abcd…"));
        assert!(lines[3].ends_with(r#"  {"sub":"u_42","teams":["t1","t2"]}"#));
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn refusal(plain: &[&str], json: &[&str]) -> String {
        match parse_claims(&strings(plain), &strings(json)) {
            Err(AuthError::InvalidKeyRequest(m)) => m,
            other => panic!("expected InvalidKeyRequest, got {other:?}"),
        }
    }

    #[test]
    fn claims_parse_strings_arrays_empties_and_json() {
        let claims = parse_claims(
            &strings(&["sub=u_42", "teams=t1,t2", "note=", "eq=a=b", "trail=x,"]),
            &strings(&["level=3", "flags={\"beta\":true}", "none=null", "s=\"a,b\""]),
        )
        .unwrap();
        assert_eq!(
            Value::Object(claims),
            serde_json::json!({
                "sub": "u_42",
                "teams": ["t1", "t2"],
                "note": "",
                "eq": "a=b",
                "trail": ["x", ""],
                "level": 3,
                "flags": {"beta": true},
                "none": null,
                "s": "a,b",
            })
        );
        assert!(parse_claims(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn bad_claims_are_refused_naming_the_argument() {
        assert_eq!(
            refusal(&["sub"], &[]),
            r#"--claim "sub": expected name=value"#
        );
        assert_eq!(
            refusal(&[], &["n"]),
            r#"--claim-json "n": expected name=value"#
        );
        assert!(
            refusal(&[], &["n={bad"]).starts_with("--claim-json n: not JSON ("),
            "{}",
            refusal(&[], &["n={bad"])
        );
        assert_eq!(
            refusal(&["sub=a"], &["sub=1"]),
            r#"--claim-json sub: claim "sub" is given twice"#
        );
        assert!(refusal(&["=x"], &[]).contains("1 to 64"));
        assert!(refusal(&["a b=x"], &[]).starts_with(r#"claim name "a b" contains ' '"#));
        let many: Vec<String> = (0..33).map(|i| format!("c{i}=v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            refusal(&many, &[]),
            "33 claims given; a key takes at most 32"
        );
        let big = format!("v={}", "x".repeat(5000));
        assert!(refusal(&[&big], &[]).contains("bytes of JSON; a key takes at most 4096"));
    }

    #[test]
    fn roles_are_built_in_or_custom_anon() {
        let custom = ["member".to_owned()];
        assert_eq!(
            parse_role("service", &custom).unwrap(),
            (Role::Service, None)
        );
        assert_eq!(parse_role(" anon ", &[]).unwrap(), (Role::Anon, None));
        assert_eq!(
            parse_role("member", &custom).unwrap(),
            (Role::Anon, Some("member".to_owned()))
        );
        let err = parse_role("viewer", &custom).unwrap_err().to_string();
        assert!(
            err.contains("(the config's policies name: member)"),
            "{err}"
        );
        for bad in ["Owner", "", "2x", "a b", "root!"] {
            let err = parse_role(bad, &custom).unwrap_err().to_string();
            assert!(err.starts_with("--role"), "{bad}: {err}");
            assert!(err.contains("custom role"), "{bad}: {err}");
        }
    }
}
