//! The random subscriptions of the isolation tests (SSE and WebSocket): a
//! few topic globs and filters, and an independent evaluation of each.

#![allow(dead_code)]

use serde_json::Value;

/// Topic globs ("" = every topic); `topic_ok` evaluates them.
pub const TOPICS: &[&str] = &[
    "",
    "tables/public.items/*",
    "tables/public.items/insert",
    "**/insert",
    "tables/**",
];
/// Filters ("" = none); `filter_ok` evaluates them, independently of
/// Sluice's filter code.
pub const FILTERS: &[&str] = &[
    "",
    r#"{"field":"new.color","op":"in","value":["red","blue"]}"#,
    r#"{"field":"new.n","op":"gt","value":5}"#,
    r#"{"or":[{"field":"new.color","op":"eq","value":"red"},{"field":"new.n","op":"lt","value":3}]}"#,
    r#"{"not":{"field":"new.color","op":"eq","value":"green"}}"#,
];

pub fn topic_ok(t: usize, topic: &str) -> bool {
    match t {
        0 => true,
        1 => topic.starts_with("tables/public.items/"),
        2 => topic == "tables/public.items/insert",
        3 => topic.ends_with("/insert"),
        _ => topic.starts_with("tables/"),
    }
}

pub fn filter_ok(f: usize, data: &Value) -> bool {
    let new = &data["new"];
    let color = new["color"].as_str();
    let n = new["n"].as_i64();
    match f {
        0 => true,
        1 => matches!(color, Some("red" | "blue")),
        2 => n.is_some_and(|n| n > 5),
        3 => color == Some("red") || n.is_some_and(|n| n < 3),
        _ => color != Some("green"),
    }
}
