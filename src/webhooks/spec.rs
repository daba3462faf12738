//! An endpoint's settings, as clients give them: the one type the HTTP
//! create and PATCH handlers (and anything else that declares endpoints)
//! deserialize into and validate here, with errors that name the member at
//! fault.
//!
//! [`EndpointSpec`] is what a `POST /v1/webhooks` body holds; an
//! [`EndpointPatch`] is applied onto the stored spec and the result is
//! validated whole, so combinations (a template with batching) are judged
//! the same way whichever request made them. [`EndpointSpec::validate`]
//! checks every member without I/O; [`check_destination`] (DNS) is the one
//! asynchronous check, needed whenever the URL is new.
//!
//! Invariant: a spec that passed `validate` can be stored and dispatched:
//! every bound below holds, `max_attempts` is set, `filter` is not JSON
//! `null`, and header names are unique regardless of case.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::{schedule, ssrf, template};
use crate::auth::Role;
use crate::policy::Policies;
use crate::subscription::{Filter, TopicGlob, MAX_TOPICS};

/// Longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Bounds of `max_attempts`.
pub const MAX_ATTEMPTS: (i32, i32) = (1, 100);
/// Largest `rate_limit.per_second`.
pub const MAX_RATE: f64 = 100_000.0;
/// Bounds of `rate_limit.burst`.
pub const RATE_BURST: (i32, i32) = (1, 100_000);
/// Longest `claims`, in bytes of JSON.
pub const MAX_CLAIMS_BYTES: usize = 4096;
/// Most custom headers.
pub const MAX_HEADERS: usize = 20;
/// Longest custom header name, in characters.
pub const MAX_HEADER_NAME_CHARS: usize = 64;
/// Longest custom header value, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Header names an endpoint may not set (compared case-insensitively):
/// the Standard Webhooks signature, the body's framing, the host, the
/// hop-by-hop headers, and `user-agent`, which the dispatcher sets.
pub const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "user-agent",
];
/// Bounds of `timeout_ms`.
pub const TIMEOUT_MS: (i32, i32) = (100, 60_000);
/// Most entries of a `retry_schedule`.
pub const MAX_SCHEDULE_ENTRIES: usize = 100;
/// Longest delay of one `retry_schedule` entry: a week.
pub const MAX_SCHEDULE_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bounds of `batch.max_events`.
pub const BATCH_MAX_EVENTS: (i32, i32) = (1, 1000);
/// Bounds of `batch.max_wait_ms`.
pub const BATCH_MAX_WAIT_MS: (i32, i32) = (0, 60_000);
/// `batch.max_wait_ms` when not given.
pub const DEFAULT_BATCH_WAIT_MS: i32 = 1000;
/// `template_content_type` when not given.
pub const DEFAULT_TEMPLATE_CONTENT_TYPE: &str = "application/json";
/// Longest `template_content_type`, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;
/// Values of at most this many characters are masked whole on read.
const MASK_WHOLE_CHARS: usize = 8;

/// Why a spec was refused: the member and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct SpecError {
    pub param: String,
    pub message: String,
}

impl SpecError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// `rate_limit`: a token bucket per endpoint and process; a batch request
/// takes one token.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: i32,
}

/// `batch`: many events per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Most events in one request.
    pub max_events: i32,
    /// How long the oldest due delivery waits for others to join it.
    #[serde(default = "default_batch_wait")]
    pub max_wait_ms: i32,
}

fn default_batch_wait() -> i32 {
    DEFAULT_BATCH_WAIT_MS
}

fn yes() -> bool {
    true
}

/// An endpoint's settings. Only `url` is required; `max_attempts` not given
/// becomes the global default when validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub url: String,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub filter: Option<Value>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub max_attempts: Option<i32>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub ordered: bool,
    /// The role of the access policies the endpoint receives events as
    /// (None: service).
    #[serde(default)]
    pub role: Option<String>,
    /// The claims that role's row predicates compare with (an object).
    #[serde(default = "empty_object", deserialize_with = "object_or_null")]
    pub claims: Value,
    /// Sent on every request, as given (`null`: none).
    #[serde(default, deserialize_with = "default_if_null")]
    pub headers: BTreeMap<String, String>,
    /// None: `webhooks.timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<i32>,
    /// None: `webhooks.retry_schedule`.
    #[serde(default)]
    pub retry_schedule: Option<String>,
    #[serde(default)]
    pub batch: Option<Batch>,
    /// The body, rendered per event (see [`template`]).
    #[serde(default)]
    pub template: Option<String>,
    /// None: [`DEFAULT_TEMPLATE_CONTENT_TYPE`].
    #[serde(default)]
    pub template_content_type: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// `null` is `{}` (no claims).
fn object_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.unwrap_or_else(empty_object))
}

/// `null` is the type's default.
fn default_if_null<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What validation needs from outside the spec.
pub struct Context<'a> {
    /// The access policies (their custom roles may be named in `role`).
    pub policies: &'a Policies,
    /// `webhooks.max_attempts`.
    pub default_max_attempts: i32,
}

impl EndpointSpec {
    /// Checks every member and normalises the spec in place (`max_attempts`
    /// set, a `null` filter removed, the URL in its parsed form). The
    /// destination's addresses are [`check_destination`]'s job.
    pub fn validate(&mut self, ctx: &Context<'_>) -> Result<(), SpecError> {
        self.url = ssrf::parse_url(&self.url)
            .map_err(|e| SpecError::new("url", e.to_string()))?
            .to_string();
        check_topics(&self.topics)?;
        if self.filter.as_ref().is_some_and(Value::is_null) {
            self.filter = None;
        }
        if let Some(f) = &self.filter {
            Filter::parse(f).map_err(|e| SpecError::new("filter", e.to_string()))?;
        }
        if self.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(SpecError::new(
                "description",
                format!(
                    "at most {MAX_DESCRIPTION_BYTES} bytes, got {}",
                    self.description.len()
                ),
            ));
        }
        let attempts = *self.max_attempts.get_or_insert(ctx.default_max_attempts);
        check_range("max_attempts", attempts, MAX_ATTEMPTS)?;
        if let Some(r) = &self.rate_limit {
            check_rate(r)?;
        }
        if let Some(role) = &self.role {
            check_role(ctx.policies, role)?;
        }
        check_claims(&self.claims)?;
        check_headers(&self.headers)?;
        if let Some(t) = self.timeout_ms {
            check_range("timeout_ms", t, TIMEOUT_MS)?;
        }
        if let Some(s) = &self.retry_schedule {
            check_schedule(s)?;
        }
        if let Some(b) = &self.batch {
            check_range("batch.max_events", b.max_events, BATCH_MAX_EVENTS)?;
            check_range("batch.max_wait_ms", b.max_wait_ms, BATCH_MAX_WAIT_MS)?;
        }
        self.check_template()?;
        Ok(())
    }

    /// `max_attempts`, once validated.
    pub fn attempts(&self) -> i32 {
        self.max_attempts
            .unwrap_or(MAX_ATTEMPTS.0)
            .clamp(MAX_ATTEMPTS.0, MAX_ATTEMPTS.1)
    }

    /// The content type of the templated body.
    pub fn content_type(&self) -> &str {
        self.template_content_type
            .as_deref()
            .unwrap_or(DEFAULT_TEMPLATE_CONTENT_TYPE)
    }

    fn check_template(&self) -> Result<(), SpecError> {
        let Some(source) = &self.template else {
            if self.template_content_type.is_some() {
                return Err(SpecError::new(
                    "template_content_type",
                    "applies only to an endpoint with a template",
                ));
            }
            return Ok(());
        };
        if self.batch.is_some() {
            return Err(SpecError::new(
                "template",
                "a template renders one event per request, so it cannot be combined with batch; \
                 remove one of them",
            ));
        }
        if let Some(ct) = &self.template_content_type {
            check_content_type(ct)?;
        }
        self.parse_template(source)?;
        Ok(())
    }

    /// `source` as this endpoint's template (in the mode its content type
    /// asks for).
    pub fn parse_template(&self, source: &str) -> Result<template::Template, SpecError> {
        template::Template::parse(source, template_mode(self.content_type()))
            .map_err(|e| SpecError::new("template", e.to_string()))
    }

    /// The API's view: every setting, header values masked ([`mask`]).
    pub fn to_json(&self) -> Value {
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(mask(v))))
            .collect();
        json!({
            "url": self.url,
            "topics": self.topics,
            "filter": self.filter,
            "description": self.description,
            "enabled": self.enabled,
            "max_attempts": self.max_attempts,
            "rate_limit": self.rate_limit,
            "ordered": self.ordered,
            "role": self.role.as_deref().unwrap_or("service"),
            "claims": self.claims,
            "headers": headers,
            "timeout_ms": self.timeout_ms,
            "retry_schedule": self.retry_schedule,
            "batch": self.batch,
            "template": self.template,
            "template_content_type": self.template.as_ref().map(|_| self.content_type()),
        })
    }
}

/// How a template's output is escaped: JSON for `application/json` and
/// any `…+json` type, text otherwise.
pub fn template_mode(content_type: &str) -> template::Mode {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        template::Mode::Json
    } else {
        template::Mode::Text
    }
}

/// A header value as the API shows it: the first 2 characters and `…` for
/// values longer than 8 characters, otherwise `…` alone.
pub fn mask(value: &str) -> String {
    if value.chars().count() > MASK_WHOLE_CHARS {
        let head: String = value.chars().take(2).collect();
        format!("{head}…")
    } else {
        "…".to_owned()
    }
}

/// A PATCH: every member optional; the nullable ones (`filter`,
/// `rate_limit`, `role`, `headers`, `timeout_ms`, `retry_schedule`,
/// `batch`, `template`, `template_content_type`) are cleared by `null`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub topics: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub filter: Option<Option<Value>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub max_attempts: Option<i32>,
    #[serde(default, deserialize_with = "nullable")]
    pub rate_limit: Option<Option<RateLimit>>,
    pub ordered: Option<bool>,
    /// `null` puts the endpoint back to service.
    #[serde(default, deserialize_with = "nullable")]
    pub role: Option<Option<String>>,
    pub claims: Option<Value>,
    /// Replaces the whole map; `null` removes every header.
    #[serde(default, deserialize_with = "nullable")]
    pub headers: Option<Option<BTreeMap<String, String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub timeout_ms: Option<Option<i32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub retry_schedule: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub batch: Option<Option<Batch>>,
    /// `null` removes the template and its content type.
    #[serde(default, deserialize_with = "nullable")]
    pub template: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub template_content_type: Option<Option<String>>,
}

/// A member that is present is `Some`, even as `null` (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl EndpointPatch {
    /// `spec` with this patch's members in place of its own (validate the
    /// result).
    pub fn apply(self, mut spec: EndpointSpec) -> EndpointSpec {
        fn set<T>(slot: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        set(&mut spec.url, self.url);
        set(&mut spec.topics, self.topics);
        set(&mut spec.filter, self.filter);
        set(&mut spec.description, self.description);
        set(&mut spec.enabled, self.enabled);
        set(&mut spec.max_attempts, self.max_attempts.map(Some));
        set(&mut spec.rate_limit, self.rate_limit);
        set(&mut spec.ordered, self.ordered);
        set(&mut spec.role, self.role);
        set(&mut spec.claims, self.claims);
        set(
            &mut spec.headers,
            self.headers.map(Option::unwrap_or_default),
        );
        set(&mut spec.timeout_ms, self.timeout_ms);
        set(&mut spec.retry_schedule, self.retry_schedule);
        set(&mut spec.batch, self.batch);
        if let Some(None) = self.template {
            spec.template_content_type = None;
        }
        set(&mut spec.template, self.template);
        set(&mut spec.template_content_type, self.template_content_type);
        spec
    }
}

/// Refuses a URL whose host is, or resolves to, an address the SSRF guard
/// blocks (unless `allow_private`).
pub async fn check_destination(url: &str, allow_private: bool) -> Result<(), SpecError> {
    let parsed = ssrf::parse_url(url).map_err(|e| SpecError::new("url", e.to_string()))?;
    ssrf::check_destination(&parsed, allow_private)
        .await
        .map_err(|e| SpecError::new("url", e.to_string()))
}

fn check_range(param: &str, n: i32, (lo, hi): (i32, i32)) -> Result<(), SpecError> {
    if !(lo..=hi).contains(&n) {
        return Err(SpecError::new(
            param,
            format!("expected {lo} to {hi}, got {n}"),
        ));
    }
    Ok(())
}

/// At most [`MAX_TOPICS`] globs, each valid.
pub fn check_topics(topics: &[String]) -> Result<(), SpecError> {
    if topics.len() > MAX_TOPICS {
        return Err(SpecError::new(
            "topics",
            format!("at most {MAX_TOPICS} topic globs, got {}", topics.len()),
        ));
    }
    for (i, t) in topics.iter().enumerate() {
        TopicGlob::parse(t).map_err(|e| SpecError::new(format!("topics[{i}]"), e.to_string()))?;
    }
    Ok(())
}

fn check_rate(r: &RateLimit) -> Result<(), SpecError> {
    if !(r.per_second.is_finite() && r.per_second > 0.0 && r.per_second <= MAX_RATE) {
        return Err(SpecError::new(
            "rate_limit.per_second",
            format!("expected a number above 0 and at most {MAX_RATE}"),
        ));
    }
    if !(RATE_BURST.0..=RATE_BURST.1).contains(&r.burst) {
        return Err(SpecError::new(
            "rate_limit.burst",
            format!(
                "expected a whole number from {} to {}",
                RATE_BURST.0, RATE_BURST.1
            ),
        ));
    }
    Ok(())
}

/// A role for a reader acting for its tenant: anon, service, or a custom
/// role the policies name; never admin.
pub fn check_role(policies: &Policies, role: &str) -> Result<(), SpecError> {
    match Role::parse(role) {
        Some(Role::Admin) => Err(SpecError::new(
            "role",
            "an endpoint acts for its tenant: anon, service or a custom role, never admin",
        )),
        Some(_) => Ok(()),
        None if policies.custom_roles().iter().any(|r| r == role) => Ok(()),
        None => Err(SpecError::new(
            "role",
            format!(
                "{role:?} is not a role: expected anon, service or a custom role of the access policies ({})",
                match policies.custom_roles() {
                    r if r.is_empty() => "none configured".to_owned(),
                    r => r.join(", "),
                }
            ),
        )),
    }
}

/// Claims: a JSON object of at most [`MAX_CLAIMS_BYTES`].
pub fn check_claims(claims: &Value) -> Result<(), SpecError> {
    if !claims.is_object() {
        return Err(SpecError::new(
            "claims",
            format!(
                "expected an object of claims, got {}",
                crate::event::json::kind_of(claims)
            ),
        ));
    }
    if claims.to_string().len() > MAX_CLAIMS_BYTES {
        return Err(SpecError::new(
            "claims",
            format!("at most {MAX_CLAIMS_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

/// A `tchar` of RFC 9110 (the characters of a header name).
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Custom headers: at most [`MAX_HEADERS`], names HTTP tokens of at most
/// [`MAX_HEADER_NAME_CHARS`], unique regardless of case and not
/// [`RESERVED_HEADERS`]; values visible ASCII, spaces and tabs (not at
/// either end, where HTTP would strip them), at most
/// [`MAX_HEADER_VALUE_BYTES`].
pub fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if headers.len() > MAX_HEADERS {
        return Err(SpecError::new(
            "headers",
            format!("at most {MAX_HEADERS} headers, got {}", headers.len()),
        ));
    }
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in headers {
        let param = format!("headers.{name}");
        if name.is_empty() || name.chars().count() > MAX_HEADER_NAME_CHARS {
            return Err(SpecError::new(
                param,
                format!("a header name is 1 to {MAX_HEADER_NAME_CHARS} characters"),
            ));
        }
        if let Some(c) = name.chars().find(|c| !is_token_char(*c)) {
            return Err(SpecError::new(
                param,
                format!(
                    "{c:?} may not appear in a header name: use letters, digits and !#$%&'*+-.^_`|~"
                ),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(SpecError::new(
                param,
                format!(
                    "{name} is set by the dispatcher or by HTTP itself; an endpoint may not set {}",
                    RESERVED_HEADERS.join(", ")
                ),
            ));
        }
        if seen.contains(&lower) {
            return Err(SpecError::new(
                param,
                "given twice (header names do not depend on case)",
            ));
        }
        seen.push(lower);
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(SpecError::new(
                param,
                format!(
                    "a header value is at most {MAX_HEADER_VALUE_BYTES} bytes, got {}",
                    value.len()
                ),
            ));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
        {
            return Err(SpecError::new(
                param,
                format!(
                    "{c:?} may not appear in a header value: use visible ASCII, spaces and tabs"
                ),
            ));
        }
        if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
            return Err(SpecError::new(
                param,
                "a header value may not start or end with a space or tab (HTTP would drop them)",
            ));
        }
    }
    Ok(())
}

/// A schedule as [`schedule::parse_schedule`] reads it, of at most
/// [`MAX_SCHEDULE_ENTRIES`] delays, none longer than
/// [`MAX_SCHEDULE_DELAY`].
pub fn check_schedule(s: &str) -> Result<Vec<Duration>, SpecError> {
    let bad = |m: String| SpecError::new("retry_schedule", m);
    let delays = schedule::parse_schedule(s).map_err(bad)?;
    if delays.len() > MAX_SCHEDULE_ENTRIES {
        return Err(bad(format!(
            "at most {MAX_SCHEDULE_ENTRIES} delays, got {}",
            delays.len()
        )));
    }
    if delays.iter().any(|d| *d > MAX_SCHEDULE_DELAY) {
        return Err(bad("a delay is at most 7 days (168h)".to_owned()));
    }
    Ok(delays)
}

/// `type/subtype` with optional `; parameters`, in visible ASCII.
fn check_content_type(ct: &str) -> Result<(), SpecError> {
    let bad = || {
        SpecError::new(
            "template_content_type",
            format!(
                "expected a media type such as \"application/json\" or \"text/plain; charset=utf-8\" \
                 (at most {MAX_CONTENT_TYPE_BYTES} bytes of visible ASCII), got {ct:?}"
            ),
        )
    };
    if ct.is_empty()
        || ct.len() > MAX_CONTENT_TYPE_BYTES
        || !ct.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        return Err(bad());
    }
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return Err(bad());
    };
    let token = |s: &str| !s.is_empty() && s.chars().all(is_token_char);
    if !token(kind) || !token(sub) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> EndpointSpec {
        serde_json::from_value(v).expect("spec deserializes")
    }

    fn validate(v: Value) -> Result<EndpointSpec, SpecError> {
        let policies = Policies::default();
        let ctx = Context {
            policies: &policies,
            default_max_attempts: 8,
        };
        let mut s = spec(v);
        s.validate(&ctx).map(|()| s)
    }

    fn refused(v: Value) -> SpecError {
        validate(v.clone()).expect_err(&v.to_string())
    }

    const URL: &str = "https://example.com/hook";

    #[test]
    fn defaults_are_filled_in() {
        let s = validate(
            json!({"url": URL, "filter": null, "claims": null, "headers": null,
            "role": null, "max_attempts": null}),
        )
        .expect("valid");
        assert_eq!(s.max_attempts, Some(8));
        assert_eq!(s.filter, None);
        assert!(s.enabled);
        assert_eq!(s.claims, json!({}));
        assert!(s.headers.is_empty());
        assert_eq!((s.timeout_ms, s.batch), (None, None));
    }

    #[test]
    fn header_names_and_values_are_checked() {
        for name in [
            "webhook-id",
            "Webhook-Signature",
            "WEBHOOK-TIMESTAMP",
            "Content-Type",
            "content-length",
            "Host",
            "Connection",
            "keep-alive",
            "Transfer-Encoding",
            "TE",
            "trailer",
            "Upgrade",
            "Proxy-Authorization",
            "proxy-authenticate",
            "proxy-connection",
            "User-Agent",
        ] {
            let e = refused(json!({"url": URL, "headers": {name: "x"}}));
            assert_eq!(e.param, format!("headers.{name}"), "{e}");
            assert!(e.message.contains("may not set"), "{e}");
        }
        let bad: &[(&str, &str, &str)] = &[
            ("X Space", "v", "may not appear in a header name"),
            ("X:Colon", "v", "may not appear in a header name"),
            ("", "v", "1 to 64"),
            ("X-Ok", "line\nbreak", "may not appear in a header value"),
            ("X-Ok", "caf\u{e9}", "may not appear in a header value"),
            ("X-Ok", " padded", "start or end"),
        ];
        for (name, value, says) in bad {
            let e = refused(json!({"url": URL, "headers": {*name: *value}}));
            assert!(e.param.starts_with("headers"), "{e}");
            assert!(e.message.contains(says), "{name:?}={value:?}: {e}");
        }
        let long_name = "X".repeat(65);
        assert!(refused(json!({"url": URL, "headers": {long_name: "v"}}))
            .message
            .contains("1 to 64"));
        let e = refused(json!({"url": URL, "headers": {"X-A": "v".repeat(4097)}}));
        assert!(e.message.contains("4096"), "{e}");
        let many: BTreeMap<String, String> = (0..21)
            .map(|i| (format!("X-{i}"), "v".to_owned()))
            .collect();
        assert_eq!(
            refused(json!({"url": URL, "headers": many})).param,
            "headers"
        );
        let e = refused(json!({"url": URL, "headers": {"X-A": "1", "x-a": "2"}}));
        assert!(e.message.contains("twice"), "{e}");
        let ok = validate(json!({"url": URL, "headers": {
            "X-Secret": "s3cr3t value\twith tab",
            "Authorization": "Bearer abc",
            "x-~weird!#": "",
            "X-Long": "v".repeat(4096),
        }}))
        .expect("valid headers");
        assert_eq!(ok.headers.len(), 4);
    }

    #[test]
    fn header_values_are_masked_on_read() {
        assert_eq!(mask(""), "…");
        assert_eq!(mask("12345678"), "…");
        assert_eq!(mask("123456789"), "12…");
        let s = validate(json!({"url": URL, "headers": {"X-Secret": "Bearer topsecret"}}))
            .expect("valid");
        assert_eq!(s.to_json()["headers"], json!({"X-Secret": "Be…"}));
    }

    #[test]
    fn timeouts_schedules_and_batches_are_bounded() {
        let cases: &[(Value, &str)] = &[
            (json!({"timeout_ms": 99}), "timeout_ms"),
            (json!({"timeout_ms": 60_001}), "timeout_ms"),
            (json!({"retry_schedule": "5s,soon"}), "retry_schedule"),
            (json!({"retry_schedule": ""}), "retry_schedule"),
            (json!({"retry_schedule": "169h"}), "retry_schedule"),
            (json!({"max_attempts": 0}), "max_attempts"),
            (json!({"batch": {"max_events": 0}}), "batch.max_events"),
            (json!({"batch": {"max_events": 1001}}), "batch.max_events"),
            (
                json!({"batch": {"max_events": 10, "max_wait_ms": 60_001}}),
                "batch.max_wait_ms",
            ),
            (
                json!({"batch": {"max_events": 10, "max_wait_ms": -1}}),
                "batch.max_wait_ms",
            ),
        ];
        for (extra, param) in cases {
            let mut v = extra.clone();
            v["url"] = json!(URL);
            assert_eq!(refused(v).param, *param, "{extra}");
        }
        let many = vec!["1s"; 101].join(",");
        assert_eq!(
            refused(json!({"url": URL, "retry_schedule": many})).param,
            "retry_schedule"
        );
        let s = validate(
            json!({"url": URL, "timeout_ms": 100, "retry_schedule": "0s, 250ms,1m",
            "max_attempts": 3, "batch": {"max_events": 1000}}),
        )
        .expect("valid");
        assert_eq!(
            s.batch,
            Some(Batch {
                max_events: 1000,
                max_wait_ms: DEFAULT_BATCH_WAIT_MS
            })
        );
    }

    #[test]
    fn a_template_is_parsed_and_never_batched() {
        let e = refused(json!({"url": URL, "template": "{\"text\": {{ seq }}}",
            "batch": {"max_events": 10}}));
        assert_eq!(e.param, "template");
        assert!(e.message.contains("batch"), "{e}");
        let e = refused(json!({"url": URL, "template_content_type": "text/plain"}));
        assert_eq!(e.param, "template_content_type");
        for ct in ["", "json", "text/", "a b/c", "text/plain\u{7}"] {
            let e = refused(json!({"url": URL, "template": "x", "template_content_type": ct}));
            assert_eq!(e.param, "template_content_type", "{ct:?}");
        }
        let e = refused(json!({"url": URL, "template": "{\"text\": {{upper type}}}"}));
        assert_eq!(e.param, "template");
        assert!(e.message.contains("upper"), "{e}");
        let e = refused(json!({"url": URL, "template": "{\"text\": {{type}}"}));
        assert!(e.message.contains("not valid JSON"), "{e}");
        // Text mode for other types: the same source is fine there.
        let s = validate(json!({"url": URL, "template": "{\"text\": {{type}}",
            "template_content_type": "text/plain; charset=utf-8"}))
        .expect("a text template need not be JSON");
        assert_eq!(
            s.to_json()["template_content_type"],
            "text/plain; charset=utf-8"
        );
        let s = validate(json!({"url": URL, "template": "{\"text\": {{type}}}"})).expect("valid");
        assert_eq!(s.to_json()["template_content_type"], "application/json");
        assert_eq!(template_mode("application/json"), template::Mode::Json);
        assert_eq!(
            template_mode("Application/Vnd.Chat+JSON; charset=utf-8"),
            template::Mode::Json
        );
        assert_eq!(template_mode("text/plain"), template::Mode::Text);
    }

    #[test]
    fn a_patch_replaces_members_and_null_clears() {
        let base = validate(json!({"url": URL, "headers": {"X-A": "1", "X-B": "2"},
            "timeout_ms": 500, "batch": {"max_events": 5}, "rate_limit": {"per_second": 1, "burst": 1}}))
        .expect("valid");
        let patch: EndpointPatch = serde_json::from_value(json!({
            "headers": {"X-C": "3"}, "timeout_ms": null, "description": "d"
        }))
        .expect("patch");
        let s = patch.apply(base.clone());
        assert_eq!(s.headers.keys().collect::<Vec<_>>(), ["X-C"]);
        assert_eq!(s.timeout_ms, None);
        assert_eq!(s.description, "d");
        assert_eq!(s.batch, base.batch, "members not named are kept");
        let patch: EndpointPatch =
            serde_json::from_value(json!({"headers": null, "batch": null, "rate_limit": null}))
                .expect("patch");
        let s = patch.apply(base);
        assert!(s.headers.is_empty());
        assert_eq!((s.batch, s.rate_limit), (None, None));
        let untouched: EndpointPatch = serde_json::from_value(json!({})).expect("patch");
        assert!(untouched.headers.is_none() && untouched.batch.is_none());
    }
}
