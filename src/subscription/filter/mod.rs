//! Subscription filters: the typed filter AST over an event's `data`
//! (`ast`), its parsing and validation from a subscriber's JSON (`parse`),
//! and its evaluation (`eval`, with the exact decimal comparison of numbers
//! and numeric strings in `decimal`). This file holds the grammar and its
//! limits; the other files implement them.
//!
//! # Grammar
//!
//! A filter is a JSON object, either a comparison or a boolean combination:
//!
//! - comparison: `{"field": "<path>", "op": "<op>", "value": <json>}`
//!   - `<path>` picks a value in the row: `new.<column>` or `old.<column>`,
//!     then further `.`-separated steps into nested JSON objects
//!     (`new.meta.tier`). A path that does not start with `new.` or `old.`
//!     reads the new row: `status` means `new.status` (so a column named
//!     `new` is written `new.new`). 1 to 8 steps after `new`/`old`, each
//!     non-empty and at most 64 bytes.
//!   - `<op>` and its `value`:
//!     - `eq`, `neq`, `lt`, `lte`, `gt`, `gte`: a scalar (string, number,
//!       boolean or null);
//!     - `in`, `nin`: an array of 1 to 100 scalars;
//!     - `prefix`, `suffix`: a string;
//!     - `is_null`: `true` (the field is null or missing) or `false` (it is
//!       present and not null).
//! - boolean: `{"and": [<filter>, …]}`, `{"or": [<filter>, …]}` (1 to 32
//!   filters each), `{"not": <filter>}`.
//!
//! Limits: nesting depth at most 8 (a lone comparison has depth 1), at most
//! 64 nodes (comparisons plus `and`/`or`/`not`), at most 4 KiB of JSON.
//! Any other key, operator or value type is an error that names where it
//! is, e.g. `filter.and[1].op: unknown operator "like"; expected one of eq,
//! neq, lt, lte, gt, gte, in, nin, prefix, suffix, is_null`.
//!
//! # Semantics
//!
//! - A missing field (or a step into something that is not an object, or
//!   `old` on an event without an old row) reads as `null`.
//! - `eq`: JSON equality, except that numbers and numeric strings (Postgres
//!   `numeric` arrives as `"150.00"`) compare as exact decimals: `"150.00"`
//!   eq `150`, `"1e2"` eq `100`, and `"1.0"` eq `"1"` (so a text column of
//!   digits compares as a number too: `"007"` eq `"7"`). `neq` is `not eq`.
//! - `lt`, `lte`, `gt`, `gte`: exact decimal comparison when both sides are
//!   numbers or numeric strings; otherwise, when both are strings, byte-wise
//!   comparison, except that two timestamps of the shape
//!   `YYYY-MM-DDTHH:MM:SS[.fraction][Z]` (both with `Z` or both without)
//!   compare their fractions as digits padded with zeros, so Sluice's
//!   timestamps, whose fractions have trailing zeros trimmed
//!   (`…:30Z` < `…:30.5Z`), compare chronologically; otherwise false (so
//!   `null`, booleans and a missing field never compare). `eq` stays exact
//!   JSON equality for timestamps: write them as Sluice does, in UTC with
//!   no trailing zeros in the fraction.
//! - `in` is `eq` against any element; `nin` is `eq` against none.
//! - `prefix`, `suffix`: the field must be a string.
//!
//! A numeric string is an optional sign, digits with an optional fraction
//! (`12`, `-0.5`, `3.`, `.5`) and an optional exponent (`1e2`, `2E-3`) of at
//! most 1 000 000; `NaN`, `Infinity`, `0x10` or `" 1"` are plain strings.
//! The comparison works on the digit text, never through `f64`, so
//! `"12345678901234567890.000000000000000001"` and
//! `"12345678901234567890"` stay different.
//!
//! Example: paid orders of 100 or more, or any order of a gold customer:
//!
//! ```json
//! {"or": [
//!   {"and": [{"field": "status", "op": "eq", "value": "paid"},
//!            {"field": "new.total", "op": "gte", "value": 100}]},
//!   {"field": "new.meta.tier", "op": "eq", "value": "gold"}
//! ]}
//! ```

mod ast;
mod bind;
mod decimal;
mod eval;
mod parse;
mod sql;

pub use ast::Filter;

/// Exact decimal order of two numbers or numeric strings (`"150.00"` and
/// `150` are equal), as the filter compares them; `None` when either is
/// not numeric.
pub fn compare_numbers(a: &serde_json::Value, b: &serde_json::Value) -> Option<std::cmp::Ordering> {
    Some(eval::numeric(a)?.cmp(&eval::numeric(b)?))
}

/// The order of two of Sluice's timestamps or dates (chronological,
/// fractions compared as digits padded with zeros), as the filter compares
/// them; other strings by bytes.
pub fn compare_times(a: &str, b: &str) -> std::cmp::Ordering {
    eval::compare_strings(a, b)
}
pub use sql::PushedColumn;

/// Largest filter accepted, in bytes of JSON.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Deepest nesting: a lone comparison has depth 1.
pub const MAX_DEPTH: usize = 8;
/// Most nodes (comparisons plus `and`/`or`/`not`).
pub const MAX_NODES: usize = 64;
/// Most filters in one `and` or `or`.
pub const MAX_CHILDREN: usize = 32;
/// Most values in one `in` or `nin`.
pub const MAX_IN_VALUES: usize = 100;
/// Most steps in a path after `new`/`old`.
pub const MAX_PATH_STEPS: usize = 8;
/// Longest path step, in bytes.
pub const MAX_STEP_BYTES: usize = 64;
/// Largest exponent magnitude of a number or numeric string compared as a
/// decimal; beyond it the value is not numeric.
pub const MAX_DECIMAL_EXPONENT: i64 = 1_000_000;

#[cfg(test)]
mod test_support;
