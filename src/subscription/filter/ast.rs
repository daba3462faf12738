//! The filter AST: what a validated filter is made of. Built only by
//! `parse` (so every value here is within the limits) and read by `eval`.

use serde_json::Value;

/// A validated filter, ready to be matched against events' `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub(super) root: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Compare(Comparison),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    /// A comparison with a claim of the subscriber's credential, in an
    /// access policy only; [`Filter::bind`] turns it into a `Compare`.
    Claim(ClaimComparison),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct ClaimComparison {
    pub(super) path: FieldPath,
    pub(super) op: ClaimOp,
    /// The claim's path in the credential's claims (`sub`, `app.teams`).
    pub(super) claim: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimOp {
    Eq,
    Neq,
    Order(OrderOp),
    In,
    Nin,
    Prefix,
    Suffix,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Comparison {
    pub(super) path: FieldPath,
    pub(super) test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct FieldPath {
    pub(super) image: Image,
    pub(super) steps: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Image {
    New,
    Old,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Test {
    Eq(Value),
    Neq(Value),
    Order(OrderOp, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Prefix(String),
    Suffix(String),
    IsNull(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OrderOp {
    Lt,
    Lte,
    Gt,
    Gte,
}
