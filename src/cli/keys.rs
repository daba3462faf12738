//! `sluice keys create|list|revoke`: API keys in the state database. Each
//! command applies the migrations first, so it works on a fresh database.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
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

/// Creates a key and prints it, once.
pub async fn create(
    config: Option<&Path>,
    tenant: Option<String>,
    role: String,
    name: Option<String>,
) -> Result<(), CliError> {
    let role = Role::parse(role.trim()).ok_or_else(|| {
        AuthError::InvalidKeyRequest(format!("--role {role:?}: expected anon, service or admin"))
    })?;
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
    let (info, key) = auth::create_key(&client, tenant.as_ref(), role, name.as_deref()).await?;
    let mut text = format!(
        "created {} key {} for {}{}\n",
        info.role,
        info.id,
        info.tenant
            .as_deref()
            .map_or_else(|| "all tenants".to_owned(), |t| format!("tenant {t}")),
        info.name
            .as_deref()
            .map(|n| format!(", named {n:?}"))
            .unwrap_or_default(),
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
        "id", "tenant", "role", "name", "prefix", "created", "revoked",
    ];
    let rows: Vec<[String; 7]> = keys
        .iter()
        .map(|k| {
            [
                k.id.to_string(),
                k.tenant.clone().unwrap_or_else(|| "-".to_owned()),
                k.role.to_string(),
                k.name.clone().unwrap_or_else(|| "-".to_owned()),
                format!("{}…", k.prefix),
                timestamp(&k.created_at),
                k.revoked_at
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), timestamp),
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
            },
            KeyInfo {
                id: 12,
                tenant: None,
                role: Role::Admin,
                name: None,
                prefix: "sk_admin_xyz".into(),
                created_at: t("2026-01-02T03:04:05Z"),
                revoked_at: Some(t("2026-02-01T00:00:00Z")),
            },
        ];
        let out = table(&keys);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("id  tenant  role     name     prefix"));
        assert!(lines[1].starts_with("1   acme    service  backend  sk_service_A…"));
        assert!(lines[2].starts_with("12  -       admin    -        sk_admin_xyz…"));
        assert!(lines[2].ends_with("2026-02-01 00:00:00Z"));
        assert!(lines[1].ends_with(" -"));
    }
}
