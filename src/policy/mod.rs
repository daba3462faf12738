//! Access policies: what a credential may see inside its tenant.
//!
//! The config's `[[policies]]` say, per role (anon, service, or a custom
//! role named by a JWT's role claim or an API key) and per captured table,
//! MongoDB collection or custom-event topic glob, whether the role may
//! subscribe and publish, which rows it sees (a filter whose comparisons
//! may take a claim of the credential: `{"field": "new.owner_id", "op":
//! "eq", "claim": "sub"}`) and which columns.
//!
//! - No policies configured: every credential of a tenant sees all of the
//!   tenant's events (the behaviour before policies; `sluice check` warns).
//! - With policies: a role sees a table only through a policy for it;
//!   without one, anon and custom roles see nothing of it and service sees
//!   all of it. Admin credentials are never restricted.
//!
//! A subscriber's [`Viewer`] is its role's rules with its own claims bound
//! in (`view`); every transport, catch-up from the log, exports and
//! webhooks apply it the same way, and the client's own topics and filter
//! apply after it, to what it lets through, so they only ever narrow.
//!
//! Invariant: what a viewer lets through holds no row its predicate
//! refuses and no column its mask hides (`key` excepted: a row's identity
//! is what a client keeps its view by).

pub mod catalog;
pub mod view;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::auth::{Identity, Role};
pub use crate::config::PolicyConfig;
use crate::subscription::{Filter, TopicGlob};

pub use view::{Access, EventView, Viewer};

/// What a rule is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `schema.table`
    Table(String),
    /// `database.collection`
    Collection(String),
    /// Custom-event topic globs.
    Topics(Vec<TopicGlob>),
}

impl Target {
    /// The topic prefix of a table's or collection's events
    /// (`tables/public.todos`), the hub's routing key.
    pub fn route(&self) -> Option<String> {
        match self {
            Target::Table(t) => Some(format!("tables/{t}")),
            Target::Collection(c) => Some(format!("collections/{c}")),
            Target::Topics(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Table(t) => format!("table {t}"),
            Target::Collection(c) => format!("collection {c}"),
            Target::Topics(g) => format!(
                "topics {}",
                g.iter()
                    .map(TopicGlob::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The columns a rule lets through.
#[derive(Debug, Clone, PartialEq)]
pub enum Columns {
    All,
    Only(Vec<String>),
    Hide(Vec<String>),
}

impl Columns {
    /// Whether `column` (a top-level field name) is visible.
    pub fn shows(&self, column: &str) -> bool {
        match self {
            Columns::All => true,
            Columns::Only(keep) => keep.iter().any(|c| c == column),
            Columns::Hide(hide) => !hide.iter().any(|c| c == column),
        }
    }
}

/// One compiled policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Position in `policies` (names it in errors and descriptions).
    pub index: usize,
    pub role: Arc<str>,
    pub target: Target,
    pub subscribe: bool,
    pub publish: bool,
    /// Unbound: claims are given per credential.
    pub rows: Option<Filter>,
    /// The predicate as configured (for descriptions).
    pub rows_source: Option<Value>,
    pub columns: Columns,
}

/// The compiled policies of the config.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    rules: Vec<Arc<Rule>>,
}

/// Why the policies are invalid: the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        key: key.into(),
        message: message.into(),
    }
}

/// Longest column name in `columns`/`hide_columns`, in bytes (Postgres
/// truncates identifiers at 63).
const MAX_COLUMN_BYTES: usize = 63;

impl Policies {
    /// Compiles and checks `policies`: `tables` are the captured tables
    /// (`schema.table`), `collections` the captured MongoDB collections
    /// (`database.collection`). Every error names its key.
    pub fn compile(
        cfgs: &[PolicyConfig],
        tables: &[String],
        collections: &[String],
    ) -> Result<Policies, PolicyError> {
        let mut rules = Vec::with_capacity(cfgs.len());
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (i, c) in cfgs.iter().enumerate() {
            let at = format!("policies[{i}]");
            let rule = compile_one(i, c, &at, tables, collections)?;
            let what = rule.target.describe();
            if let Some(first) = seen.insert((c.role.clone(), what.clone()), i) {
                return Err(err(
                    at,
                    format!(
                        "a second policy for role {:?} on {what} (the first is policies[{first}]); one policy per role and target: combine their rows with \"or\"",
                        c.role
                    ),
                ));
            }
            rules.push(Arc::new(rule));
        }
        Ok(Policies { rules })
    }

    /// Whether any policy is configured (otherwise everyone of a tenant
    /// sees all of it).
    pub fn active(&self) -> bool {
        !self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// The custom roles the policies name (beside anon and service), in
    /// the order they first appear: the role names JWTs and API keys may
    /// carry.
    pub fn custom_roles(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.rules {
            if Role::parse(&r.role).is_none() && !out.iter().any(|o| **o == *r.role) {
                out.push(r.role.to_string());
            }
        }
        out
    }

    /// The viewer of one credential: its role's rules with its claims
    /// bound in.
    pub fn viewer(&self, identity: &Identity) -> Viewer {
        if !self.active() || identity.role == Role::Admin {
            return Viewer::open();
        }
        let rules = self
            .rules
            .iter()
            .filter(|r| *r.role == *identity.policy_role)
            .map(|r| view::BoundRule::bind(r.clone(), &identity.claims))
            .collect();
        Viewer::scoped(rules, identity.role == Role::Service)
    }

    /// The viewer of a server-side reader acting as `role` (None: service)
    /// with `claims` for `tenant`: a webhook endpoint or a consumer group.
    /// `None` for admin, which no reader of one tenant may act as.
    pub fn viewer_as(
        &self,
        tenant: &crate::event::TenantId,
        role: Option<&str>,
        claims: &Value,
    ) -> Option<Viewer> {
        let name = role.unwrap_or("service");
        let privilege = match Role::parse(name) {
            Some(Role::Admin) => return None,
            Some(r) => r,
            None => Role::Anon,
        };
        let claims = match claims {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        Some(self.viewer(&Identity {
            tenant: Some(tenant.clone()),
            role: privilege,
            policy_role: name.into(),
            claims: Arc::new(claims),
            credential: crate::auth::CredentialId::ApiKey { id: 0 },
        }))
    }

    /// The effective policy of every table and collection (and custom
    /// topics) per role, for `sluice check` and `GET /v1/policies`.
    pub fn describe(&self, tables: &[String], collections: &[String]) -> Value {
        let mut roles: Vec<String> = vec!["anon".into(), "service".into()];
        roles.extend(self.custom_roles());
        let mut targets: Vec<Target> = tables
            .iter()
            .map(|t| Target::Table(t.clone()))
            .chain(collections.iter().map(|c| Target::Collection(c.clone())))
            .collect();
        for r in &self.rules {
            if matches!(r.target, Target::Topics(_)) && !targets.contains(&r.target) {
                targets.push(r.target.clone());
            }
        }
        let entries: Vec<Value> = targets
            .iter()
            .map(|target| {
                let per_role: serde_json::Map<String, Value> = roles
                    .iter()
                    .map(|role| (role.clone(), self.effective(role, target)))
                    .collect();
                let mut m = serde_json::Map::new();
                let (kind, name) = match target {
                    Target::Table(t) => ("table", Value::from(t.as_str())),
                    Target::Collection(c) => ("collection", Value::from(c.as_str())),
                    Target::Topics(g) => (
                        "topics",
                        Value::from(g.iter().map(|g| g.as_str().to_owned()).collect::<Vec<_>>()),
                    ),
                };
                m.insert(kind.into(), name);
                m.insert("roles".into(), Value::Object(per_role));
                Value::Object(m)
            })
            .collect();
        serde_json::json!({
            "active": self.active(),
            "admin": "admin credentials see everything",
            "policies": entries,
        })
    }

    fn effective(&self, role: &str, target: &Target) -> Value {
        if !self.active() {
            return serde_json::json!({"subscribe": true, "rows": "all", "columns": "all", "why": "no policies are configured"});
        }
        let rule = self
            .rules
            .iter()
            .find(|r| *r.role == *role && r.target == *target);
        match rule {
            Some(r) => {
                let mut m = serde_json::Map::new();
                m.insert("subscribe".into(), r.subscribe.into());
                if matches!(r.target, Target::Topics(_)) {
                    m.insert("publish".into(), r.publish.into());
                }
                m.insert(
                    "rows".into(),
                    r.rows_source.clone().unwrap_or_else(|| "all".into()),
                );
                m.insert(
                    "columns".into(),
                    match &r.columns {
                        Columns::All => "all".into(),
                        Columns::Only(c) => serde_json::json!({"only": c}),
                        Columns::Hide(c) => serde_json::json!({"hide": c}),
                    },
                );
                m.insert("why".into(), format!("policies[{}]", r.index).into());
                Value::Object(m)
            }
            None if role == "service" => {
                serde_json::json!({"subscribe": true, "rows": "all", "columns": "all", "why": "no policy: service sees every table"})
            }
            None => serde_json::json!({"subscribe": false, "why": "no policy: denied"}),
        }
    }
}

/// Refuses a subscription its viewer would deliver nothing to for policy
/// reasons: a role no policy lets subscribe to anything, or a selector
/// naming one table or collection (`table=public.secrets`, topic
/// `tables/public.secrets/*`) the role may not see. Other globs only
/// narrow what the policy lets through.
pub fn check_selector(
    viewer: &Viewer,
    selector: &crate::subscription::Selector,
    role: &str,
) -> Result<(), String> {
    if !viewer.may_subscribe_anything() {
        return Err(format!(
            "role {role:?} may not subscribe: no access policy grants it a table, collection or topic"
        ));
    }
    for glob in &selector.topics {
        let g = glob.as_str();
        let Some(route) = g.strip_suffix("/*") else {
            continue;
        };
        let named = (route.starts_with("tables/") || route.starts_with("collections/"))
            && !route.contains('*')
            && route.matches('/').count() == 1;
        if named && !viewer.may_subscribe_route(route) {
            let (kind, name) = route.split_once('/').unwrap_or(("table", route));
            let kind = kind.trim_end_matches('s');
            return Err(format!(
                "role {role:?} may not subscribe to {kind} {name}: no access policy grants it"
            ));
        }
    }
    Ok(())
}

fn compile_one(
    index: usize,
    c: &PolicyConfig,
    at: &str,
    tables: &[String],
    collections: &[String],
) -> Result<Rule, PolicyError> {
    match Role::parse(&c.role) {
        Some(Role::Admin) => {
            return Err(err(
                format!("{at}.role"),
                "admin credentials are never restricted; policies are for anon, service and custom roles",
            ))
        }
        Some(_) => {}
        None => crate::auth::keys::check_custom_role(&c.role)
            .map_err(|e| err(format!("{at}.role"), e.to_string()))?,
    }
    let targets = [
        c.table.is_some(),
        c.collection.is_some(),
        c.topics.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() != 1 {
        return Err(err(
            at,
            "give exactly one of table (\"schema.table\"), collection (\"database.collection\") or topics ([\"custom/…\"])",
        ));
    }
    let target = if let Some(t) = &c.table {
        if !tables.contains(t) {
            return Err(err(
                format!("{at}.table"),
                format!(
                    "{t:?} is not a captured table; captured: {}",
                    list_or_none(tables)
                ),
            ));
        }
        Target::Table(t.clone())
    } else if let Some(coll) = &c.collection {
        if !collections.contains(coll) {
            return Err(err(
                format!("{at}.collection"),
                format!(
                    "{coll:?} is not a captured collection; captured: {}",
                    list_or_none(collections)
                ),
            ));
        }
        Target::Collection(coll.clone())
    } else {
        let topics = c.topics.as_deref().unwrap_or_default();
        if topics.is_empty() {
            return Err(err(
                format!("{at}.topics"),
                "expected at least one topic glob, e.g. [\"custom/chat.*\"]",
            ));
        }
        let mut globs = Vec::with_capacity(topics.len());
        for (j, t) in topics.iter().enumerate() {
            let key = format!("{at}.topics[{j}]");
            let g = TopicGlob::parse(t).map_err(|e| err(&key, e.to_string()))?;
            if !t.starts_with("custom/") {
                return Err(err(
                    key,
                    format!("{t:?}: topic policies are for custom events (topics under custom/); use table or collection for rows"),
                ));
            }
            globs.push(g);
        }
        Target::Topics(globs)
    };
    if c.publish && !matches!(target, Target::Topics(_)) {
        return Err(err(
            format!("{at}.publish"),
            "publishing is of custom events: only a policy with topics may set publish",
        ));
    }
    let mut rows_source = None;
    let rows = match &c.rows {
        None => None,
        Some(_) if matches!(target, Target::Topics(_)) => {
            return Err(err(
                format!("{at}.rows"),
                "custom events have no rows: a topics policy takes no rows predicate",
            ))
        }
        Some(v) => {
            let parsed;
            let v = match v {
                Value::String(s) => {
                    parsed = serde_json::from_str::<Value>(s)
                        .map_err(|e| err(format!("{at}.rows"), format!("not valid JSON: {e}")))?;
                    &parsed
                }
                v => v,
            };
            rows_source = Some(v.clone());
            Some(Filter::parse_policy(v).map_err(|e| err(format!("{at}.rows"), e.to_string()))?)
        }
    };
    let columns = match (&c.columns, &c.hide_columns) {
        (Some(_), Some(_)) => {
            return Err(err(
                at,
                "give columns (the only columns shown) or hide_columns (the columns never shown), not both",
            ))
        }
        (Some(_), _) | (_, Some(_)) if matches!(target, Target::Topics(_)) => {
            return Err(err(
                at,
                "custom events have no columns: a topics policy takes no columns or hide_columns",
            ))
        }
        (Some(list), None) => Columns::Only(check_columns(list, &format!("{at}.columns"))?),
        (None, Some(list)) => {
            Columns::Hide(check_columns(list, &format!("{at}.hide_columns"))?)
        }
        (None, None) => Columns::All,
    };
    Ok(Rule {
        index,
        role: c.role.as_str().into(),
        target,
        subscribe: c.subscribe,
        publish: c.publish,
        rows,
        rows_source,
        columns,
    })
}

fn check_columns(list: &[String], key: &str) -> Result<Vec<String>, PolicyError> {
    for (i, c) in list.iter().enumerate() {
        if c.is_empty() || c.len() > MAX_COLUMN_BYTES {
            return Err(err(
                format!("{key}[{i}]"),
                format!("expected a column name of 1 to {MAX_COLUMN_BYTES} bytes, got {c:?}"),
            ));
        }
        if list[..i].contains(c) {
            return Err(err(format!("{key}[{i}]"), format!("{c:?} is listed twice")));
        }
    }
    Ok(list.to_vec())
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
