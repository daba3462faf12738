//! `POST /v1/events` (one event, or `{"events": […]}`) and its alias
//! `POST /v1/events/publish` (`{"topic", "data"}`): custom events published
//! by a backend, through Postgres like every custom event
//! (`deliver::publish`), answered `201` with each event's seq once it is
//! in the log. An `Idempotency-Key` makes a retried request answer as the
//! first did and append nothing new.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{request, ApiError, AppState};
use crate::auth::Role;
use crate::deliver::publish::{self, Idempotency, Publication, PublishError, Published};
use crate::event::Extensions;

/// Largest request body, in bytes.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Most events in one request.
pub const MAX_EVENTS: usize = 1000;
/// Longest `Idempotency-Key`.
pub const MAX_KEY_BYTES: usize = 255;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", post(events))
        .route("/v1/events/publish", post(alias))
        // The body is read here, under MAX_BODY_BYTES, so an oversized one
        // gets this API's 413 rather than the framework's.
        .layer(DefaultBodyLimit::disable())
}

async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    handle(state, headers, raw, body, parse_events).await
}

async fn alias(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    handle(state, headers, raw, body, parse_alias).await
}

/// What a parsed body is: its events, and whether it was one event (the
/// answer is then that event's object, not a list).
struct Request {
    events: Vec<Publication>,
    single: bool,
}

async fn handle(
    state: AppState,
    headers: HeaderMap,
    raw: Option<String>,
    body: Body,
    parse: fn(&Value) -> Result<Request, ApiError>,
) -> Result<Response, ApiError> {
    let (_, identity, tenant) = request(&state, &headers, raw.as_deref(), &[], Role::Anon).await?;
    let key = idempotency_key(&headers)?;
    let bytes = read_body(&headers, body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_param("body", format!("not valid JSON: {e}")))?;
    let req = parse(&value)?;
    for e in &req.events {
        publish::may_publish(&state.policies, &identity, &e.topic())
            .map_err(ApiError::forbidden)?;
    }
    let idem = key.map(|key| Idempotency {
        key,
        request_hash: Sha256::digest(&bytes).to_vec(),
    });
    let single = req.single;
    let types = req_types(&req.events);
    let answer = move |seqs: &[i64]| answer(&types, seqs, single);
    let publisher = state.publisher();
    let outcome = publish::publish_all(
        &publisher,
        &tenant,
        &req.events,
        idem.as_ref().map(|i| (i, &answer as &publish::Answer)),
    )
    .await
    .map_err(publish_error)?;
    Ok(match outcome {
        Published::Appended(seqs) => (StatusCode::CREATED, Json(answer(&seqs))).into_response(),
        Published::Replayed(v) => {
            let mut resp = (StatusCode::CREATED, Json(v)).into_response();
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            resp
        }
        Published::Committed => (
            StatusCode::ACCEPTED,
            Json(json!({
                "committed": true,
                "message": "the events are committed to Postgres but not yet in the log (the pipeline is behind); they will be delivered: do not publish them again",
            })),
        )
            .into_response(),
    })
}

/// (type, topic) of each event, for the answer.
fn req_types(events: &[Publication]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (format!("custom.{}", e.name), e.topic()))
        .collect()
}

/// The 201 body: `{"seq","id","type","topic"}` for one event, `{"events":
/// [those]}` for a list.
fn answer(types: &[(String, String)], seqs: &[i64], single: bool) -> Value {
    let items: Vec<Value> = types
        .iter()
        .zip(seqs)
        .map(|((t, topic), seq)| json!({"seq": seq, "id": seq.to_string(), "type": t, "topic": topic}))
        .collect();
    match (single, items.first()) {
        (true, Some(one)) => one.clone(),
        _ => json!({ "events": items }),
    }
}

fn publish_error(e: PublishError) -> ApiError {
    let (status, code) = match e {
        PublishError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        PublishError::InProgress => (StatusCode::CONFLICT, "idempotency_in_progress"),
        PublishError::KeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
    };
    ApiError {
        status,
        code,
        param: matches!(e, PublishError::KeyReused).then(|| "Idempotency-Key".to_owned()),
        message: e.to_string(),
        extra: None,
    }
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut all = headers.get_all("idempotency-key").iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    let bad = |m: String| ApiError::bad_param("Idempotency-Key", m);
    if all.next().is_some() {
        return Err(bad("give the header once".to_owned()));
    }
    let s = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= MAX_KEY_BYTES && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            bad(format!(
                "expected 1 to {MAX_KEY_BYTES} visible ASCII characters (no spaces), found {} bytes",
                v.len()
            ))
        })?;
    Ok(Some(s.to_owned()))
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let too_big = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "body_too_large",
        param: Some("body".to_owned()),
        message: format!(
            "the body is larger than {MAX_BODY_BYTES} bytes; send fewer events per request"
        ),
        extra: None,
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_big());
    }
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_param("body", format!("the body could not be read: {e}")))?;
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(axum::body::Bytes::from(out))
}

/// The members of an object, or a 400 naming `at`.
fn object<'a>(v: &'a Value, at: &str, what: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| {
        ApiError::bad_param(
            at,
            format!("expected {what}, found {}", crate::event::json::kind_of(v)),
        )
    })
}

fn only(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_param(
            &join(at, k),
            format!("unknown member; expected one of {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn join(at: &str, member: &str) -> String {
    if at.is_empty() {
        member.to_owned()
    } else {
        format!("{at}.{member}")
    }
}

/// `{"type","data","subject"?,"correlation_id"?,"attributes"?}` or
/// `{"events":[those]}`.
fn parse_events(v: &Value) -> Result<Request, ApiError> {
    let obj = object(
        v,
        "body",
        "a JSON object: one event, or {\"events\": [...]}",
    )?;
    let Some(list) = obj.get("events") else {
        return Ok(Request {
            events: vec![event(obj, "")?],
            single: true,
        });
    };
    only(obj, &["events"], "")?;
    let list = list.as_array().ok_or_else(|| {
        ApiError::bad_param(
            "events",
            format!(
                "expected an array of 1 to {MAX_EVENTS} events, found {}",
                crate::event::json::kind_of(list)
            ),
        )
    })?;
    if list.is_empty() || list.len() > MAX_EVENTS {
        return Err(ApiError::bad_param(
            "events",
            format!(
                "expected an array of 1 to {MAX_EVENTS} events, found {}",
                list.len()
            ),
        ));
    }
    let events = list
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("events[{i}]");
            event(object(e, &at, "an event object")?, &at)
        })
        .collect::<Result<_, _>>()?;
    Ok(Request {
        events,
        single: false,
    })
}

fn event(obj: &Map<String, Value>, at: &str) -> Result<Publication, ApiError> {
    only(
        obj,
        &["type", "data", "subject", "correlation_id", "attributes"],
        at,
    )?;
    let name = match obj.get("type") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ApiError::bad_param(
                &join(at, "type"),
                format!(
                    "expected {}, found {}",
                    publish::NAME_WANTED,
                    crate::event::json::kind_of(other)
                ),
            ))
        }
        None => {
            return Err(ApiError::bad_param(
                &join(at, "type"),
                format!("missing: {}", publish::NAME_WANTED),
            ))
        }
    };
    publish::check_name(name).map_err(|e| ApiError::bad_param(&join(at, "type"), e))?;
    rest(obj, at, name.clone())
}

/// `data`, `subject`, `correlation_id`, `attributes` of one event.
fn rest(obj: &Map<String, Value>, at: &str, name: String) -> Result<Publication, ApiError> {
    let data = match obj.get("data") {
        Some(d @ Value::Object(_)) => d.clone(),
        Some(other) => {
            return Err(ApiError::bad_param(
                &join(at, "data"),
                format!(
                    "expected a JSON object, found {}",
                    crate::event::json::kind_of(other)
                ),
            ))
        }
        None => {
            return Err(ApiError::bad_param(
                &join(at, "data"),
                "missing: the event's data, a JSON object",
            ))
        }
    };
    let subject = match obj.get("subject") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            publish::check_subject(v).map_err(|e| ApiError::bad_param(&join(at, "subject"), e))?,
        ),
    };
    let ext = Extensions::new(obj.get("correlation_id"), obj.get("attributes")).map_err(|e| {
        // The message starts with the member it is about.
        let member = e.split(':').next().unwrap_or("attributes");
        let member = member.split('.').next().unwrap_or(member);
        ApiError::bad_param(&join(at, member), e)
    })?;
    Ok(Publication {
        name,
        data,
        subject,
        ext,
    })
}

/// `{"topic": "custom/<name>" or "<name>", "data", "subject"?}`.
fn parse_alias(v: &Value) -> Result<Request, ApiError> {
    let obj = object(v, "body", "a JSON object {\"topic\", \"data\"}")?;
    only(obj, &["topic", "data", "subject"], "")?;
    let topic = match obj.get("topic") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ApiError::bad_param(
                "topic",
                format!(
                    "expected a string, custom/<name> or <name>, found {}",
                    crate::event::json::kind_of(other)
                ),
            ))
        }
        None => {
            return Err(ApiError::bad_param(
                "topic",
                "missing: the topic to publish on, custom/<name> or <name>",
            ))
        }
    };
    let name = match topic.split_once('/') {
        None => topic.as_str(),
        Some(("custom", name)) => name,
        Some(_) => {
            return Err(ApiError::bad_param(
                "topic",
                format!(
                    "only custom topics can be published (custom/<name>); {} is not one",
                    crate::deliver::ws_protocol::echo(topic)
                ),
            ))
        }
    };
    publish::check_name(name).map_err(|e| ApiError::bad_param("topic", e))?;
    Ok(Request {
        events: vec![rest(obj, "", name.to_owned())?],
        single: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<Request, ApiError>) -> (String, String) {
        let e = r.err().expect("an error");
        (e.param.unwrap_or_default(), e.message)
    }

    #[test]
    fn one_event_or_a_list() {
        let one = parse_events(
            &json!({"type": "order.shipped", "data": {"o": 1}, "subject": "o-1",
            "correlation_id": "c", "attributes": {"a": "b"}}),
        )
        .expect("valid");
        assert!(one.single);
        assert_eq!(one.events[0].name, "order.shipped");
        assert_eq!(one.events[0].subject.as_deref(), Some("o-1"));
        assert_eq!(
            one.events[0].ext.as_ref().map(|e| e.as_str()),
            Some(r#"{"correlation_id":"c","attributes":{"a":"b"}}"#)
        );
        let list = parse_events(&json!({"events": [
            {"type": "a", "data": {}}, {"type": "b", "data": {"x": 1}}
        ]}))
        .expect("valid");
        assert!(!list.single);
        assert_eq!(list.events.len(), 2);
        assert_eq!(list.events[1].name, "b");
    }

    #[test]
    fn errors_name_the_member_at_fault() {
        let cases = [
            (json!([]), "body", "expected a JSON object"),
            (json!({"data": {}}), "type", "missing: an event name"),
            (json!({"type": "a b", "data": {}}), "type", "found \"a b\""),
            (json!({"type": "a"}), "data", "missing"),
            (json!({"type": "a", "data": 1}), "data", "found a number"),
            (
                json!({"type": "a", "data": {}, "tenant": "x"}),
                "tenant",
                "unknown member",
            ),
            (
                json!({"type": "a", "data": {}, "subject": ""}),
                "subject",
                "found an empty string",
            ),
            (
                json!({"type": "a", "data": {}, "correlation_id": 1}),
                "correlation_id",
                "expected a string",
            ),
            (
                json!({"type": "a", "data": {}, "attributes": {"k": 1}}),
                "attributes",
                "attributes.k: expected a string",
            ),
            (json!({"events": []}), "events", "found 0"),
            (json!({"events": {}}), "events", "found an object"),
            (
                json!({"events": [{"type": "a", "data": {}}], "type": "b"}),
                "type",
                "unknown member",
            ),
            (
                json!({"events": [{"type": "a", "data": {}}, {"type": "", "data": {}}]}),
                "events[1].type",
                "found an empty string",
            ),
            (
                json!({"events": [{"type": "a", "data": {}}, 3]}),
                "events[1]",
                "expected an event object",
            ),
        ];
        for (body, param, message) in cases {
            let (p, m) = err(parse_events(&body));
            assert_eq!(p, param, "{body}: {m}");
            assert!(m.contains(message), "{body}: {m}");
        }
        let many: Vec<Value> = (0..=MAX_EVENTS)
            .map(|_| json!({"type": "a", "data": {}}))
            .collect();
        let (p, m) = err(parse_events(&json!({ "events": many })));
        assert_eq!(p, "events");
        assert!(m.contains("found 1001"), "{m}");
    }

    #[test]
    fn the_alias_takes_a_custom_topic_or_a_bare_name() {
        for topic in ["custom/chat.message", "chat.message"] {
            let r = parse_alias(&json!({"topic": topic, "data": {"t": "hi"}})).expect("valid");
            assert_eq!(r.events[0].name, "chat.message");
            assert_eq!(r.events[0].topic(), "custom/chat.message");
        }
        let (p, m) = err(parse_alias(
            &json!({"topic": "tables/public.t/insert", "data": {}}),
        ));
        assert_eq!(p, "topic");
        assert!(m.contains("only custom topics"), "{m}");
        let (p, _) = err(parse_alias(&json!({"topic": "custom/", "data": {}})));
        assert_eq!(p, "topic");
        let (p, _) = err(parse_alias(&json!({"topic": "x", "data": {}, "type": "y"})));
        assert_eq!(p, "type");
    }

    #[test]
    fn the_answer_is_one_object_or_a_list() {
        let t = vec![("custom.a".to_owned(), "custom/a".to_owned())];
        assert_eq!(
            answer(&t, &[7], true),
            json!({"seq": 7, "id": "7", "type": "custom.a", "topic": "custom/a"})
        );
        assert_eq!(
            answer(&t, &[7], false),
            json!({"events": [{"seq": 7, "id": "7", "type": "custom.a", "topic": "custom/a"}]})
        );
    }

    #[test]
    fn the_name_rule_is_stated_with_its_bound() {
        assert!(publish::NAME_WANTED
            .contains(&crate::source::postgres::normalize::MAX_CUSTOM_NAME.to_string()));
    }
}
