//! Access policies' row predicates: giving a predicate the claims of one
//! credential ([`Filter::bind`]), and what the hub and start-up checks
//! read from a predicate (the columns it reads, the claims it needs, the
//! one equality the hub can index subscribers by).

use serde_json::{Map, Value};

use super::ast::{ClaimComparison, ClaimOp, Comparison, Filter, Image, Node, Test};
use super::eval::numeric;
use super::MAX_IN_VALUES;

/// Most values a list claim (`"op": "in", "claim": "teams"`) may hold; a
/// longer one denies (as a claim of the wrong type does).
pub const MAX_CLAIM_VALUES: usize = 10 * MAX_IN_VALUES;

impl Filter {
    /// Whether some comparison gives a claim rather than a value.
    pub fn has_claims(&self) -> bool {
        fn walk(n: &Node) -> bool {
            match n {
                Node::Claim(_) => true,
                Node::Compare(_) => false,
                Node::And(c) | Node::Or(c) => c.iter().any(walk),
                Node::Not(inner) => walk(inner),
            }
        }
        walk(&self.root)
    }

    /// The predicate for a credential with these claims: every claim
    /// comparison becomes a comparison with the claim's value. `None` when
    /// a claim is missing, `null`, or of a type its operator cannot take
    /// (an object; an array for anything but `in`/`nin`; a non-string for
    /// `prefix`/`suffix`): the whole predicate then denies every row, so a
    /// `not` around a missing claim never turns into "everything".
    pub fn bind(&self, claims: &Map<String, Value>) -> Option<Filter> {
        Some(Filter {
            root: bind_node(&self.root, claims)?,
        })
    }

    /// The columns (first path steps) the predicate reads, each once, in
    /// the order they appear.
    pub fn columns(&self) -> Vec<&str> {
        fn walk<'a>(n: &'a Node, out: &mut Vec<&'a str>) {
            let step = match n {
                Node::Compare(c) => c.path.steps.first(),
                Node::Claim(c) => c.path.steps.first(),
                Node::And(c) | Node::Or(c) => {
                    c.iter().for_each(|c| walk(c, out));
                    None
                }
                Node::Not(inner) => {
                    walk(inner, out);
                    None
                }
            };
            if let Some(s) = step {
                if !out.contains(&s.as_str()) {
                    out.push(s);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// The claim paths the predicate compares with (`sub`, `app.teams`).
    pub fn claim_paths(&self) -> Vec<String> {
        fn walk(n: &Node, out: &mut Vec<String>) {
            match n {
                Node::Claim(c) => {
                    let p = c.claim.join(".");
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                Node::Compare(_) => {}
                Node::And(c) | Node::Or(c) => c.iter().for_each(|c| walk(c, out)),
                Node::Not(inner) => walk(inner, out),
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// An equality every passing row must satisfy and that the hub can
    /// look subscribers up by: the predicate is (or is an `and` holding)
    /// `new.<column> eq "<s>"` or `new.<column> in ["<s>", …]` where every
    /// value is a string that is not numeric. Such values compare as exact
    /// strings (see the module doc), so a row passes only if its column is
    /// a string equal to one of them. Returns the column and the values.
    pub fn index_key(&self) -> Option<(&str, Vec<&str>)> {
        fn key(n: &Node) -> Option<(&str, Vec<&str>)> {
            match n {
                Node::Compare(Comparison { path, test }) => {
                    if path.image != Image::New || path.steps.len() != 1 {
                        return None;
                    }
                    let values: Vec<&Value> = match test {
                        Test::Eq(v) => vec![v],
                        Test::In(vs) => vs.iter().collect(),
                        _ => return None,
                    };
                    let strings = values
                        .into_iter()
                        .map(|v| match v {
                            Value::String(s) if numeric(v).is_none() => Some(s.as_str()),
                            _ => None,
                        })
                        .collect::<Option<Vec<&str>>>()?;
                    Some((path.steps[0].as_str(), strings))
                }
                Node::And(children) => children.iter().find_map(key),
                _ => None,
            }
        }
        key(&self.root)
    }
}

fn bind_node(n: &Node, claims: &Map<String, Value>) -> Option<Node> {
    Some(match n {
        Node::Compare(c) => Node::Compare(c.clone()),
        Node::And(c) => Node::And(
            c.iter()
                .map(|c| bind_node(c, claims))
                .collect::<Option<_>>()?,
        ),
        Node::Or(c) => Node::Or(
            c.iter()
                .map(|c| bind_node(c, claims))
                .collect::<Option<_>>()?,
        ),
        Node::Not(inner) => Node::Not(Box::new(bind_node(inner, claims)?)),
        Node::Claim(c) => Node::Compare(bind_claim(c, claims)?),
    })
}

fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut cur = claims.get(first)?;
    for step in rest {
        cur = cur.as_object()?.get(step)?;
    }
    Some(cur)
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

fn bind_claim(c: &ClaimComparison, claims: &Map<String, Value>) -> Option<Comparison> {
    let v = lookup(claims, &c.claim)?;
    let list = || -> Option<Vec<Value>> {
        match v {
            Value::Array(items)
                if items.len() <= MAX_CLAIM_VALUES && items.iter().all(is_scalar) =>
            {
                Some(items.clone())
            }
            v if is_scalar(v) => Some(vec![v.clone()]),
            _ => None,
        }
    };
    let scalar = || is_scalar(v).then(|| v.clone());
    let string = || match v {
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    let test = match c.op {
        ClaimOp::Eq => Test::Eq(scalar()?),
        ClaimOp::Neq => Test::Neq(scalar()?),
        ClaimOp::Order(op) => Test::Order(op, scalar()?),
        ClaimOp::In => Test::In(list()?),
        ClaimOp::Nin => Test::Nin(list()?),
        ClaimOp::Prefix => Test::Prefix(string()?),
        ClaimOp::Suffix => Test::Suffix(string()?),
    };
    Some(Comparison {
        path: c.path.clone(),
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: Value) -> Filter {
        Filter::parse_policy(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("claims are an object"),
        }
    }

    #[test]
    fn a_bound_claim_compares_like_a_value() {
        let p = policy(json!({"field": "new.owner_id", "op": "eq", "claim": "sub"}));
        assert!(p.has_claims());
        let b = p.bind(&claims(json!({"sub": "u_1"}))).expect("bound");
        assert!(b.matches_row(Some(&json!({"owner_id": "u_1"}))));
        assert!(!b.matches_row(Some(&json!({"owner_id": "u_2"}))));
        assert!(!b.matches_row(None));
        // Numbers in claims compare as decimals, like values.
        let b = p.bind(&claims(json!({"sub": 7}))).expect("bound");
        assert!(b.matches_row(Some(&json!({"owner_id": "7.0"}))));
    }

    #[test]
    fn list_claims_take_in_and_a_scalar_is_a_list_of_one() {
        let p = policy(json!({"field": "team_id", "op": "in", "claim": "app.teams"}));
        let b = p
            .bind(&claims(json!({"app": {"teams": ["t1", "t2"]}})))
            .expect("bound");
        assert!(b.matches_row(Some(&json!({"team_id": "t2"}))));
        assert!(!b.matches_row(Some(&json!({"team_id": "t3"}))));
        let b = p
            .bind(&claims(json!({"app": {"teams": "t3"}})))
            .expect("bound");
        assert!(b.matches_row(Some(&json!({"team_id": "t3"}))));
        let b = p
            .bind(&claims(json!({"app": {"teams": []}})))
            .expect("bound");
        assert!(!b.matches_row(Some(&json!({"team_id": "t3"}))));
    }

    #[test]
    fn a_missing_or_mistyped_claim_denies_the_whole_predicate() {
        let p = policy(json!({"not": {"field": "owner_id", "op": "eq", "claim": "sub"}}));
        for bad in [
            json!({}),
            json!({"sub": null}),
            json!({"sub": {"id": 1}}),
            json!({"sub": ["u_1"]}),
        ] {
            assert!(p.bind(&claims(bad.clone())).is_none(), "{bad}");
        }
        let p = policy(json!({"field": "team_id", "op": "in", "claim": "teams"}));
        assert!(p.bind(&claims(json!({"teams": [["nested"]]}))).is_none());
        assert!(p.bind(&claims(json!({"teams": [{"a": 1}]}))).is_none());
        let p = policy(json!({"field": "email", "op": "suffix", "claim": "domain"}));
        assert!(p.bind(&claims(json!({"domain": 5}))).is_none());
        assert!(p.bind(&claims(json!({"domain": "@acme.io"}))).is_some());
    }

    #[test]
    fn an_unbound_claim_comparison_never_passes() {
        let p = policy(json!({"field": "owner_id", "op": "eq", "claim": "sub"}));
        assert!(!p.matches_row(Some(&json!({"owner_id": "x"}))));
    }

    #[test]
    fn policies_refuse_old_and_subscriptions_refuse_claims() {
        let e = Filter::parse_policy(&json!({"field": "old.owner_id", "op": "eq", "claim": "sub"}))
            .expect_err("old refused");
        assert!(e.to_string().contains("not \"old.owner_id\""), "{e}");
        let e = Filter::parse(&json!({"field": "owner_id", "op": "eq", "claim": "sub"}))
            .expect_err("claim refused");
        assert!(e.to_string().starts_with("filter.claim: "), "{e}");
        let e = Filter::parse_policy(
            &json!({"field": "owner_id", "op": "eq", "claim": "sub", "value": 1}),
        )
        .expect_err("both refused");
        assert_eq!(
            e.to_string(),
            "filter: give either \"value\" or \"claim\", not both"
        );
        let e =
            Filter::parse_policy(&json!({"and": [{"field": "a", "op": "is_null", "claim": "x"}]}))
                .expect_err("is_null refused");
        assert!(e.to_string().starts_with("filter.and[0].op: "), "{e}");
        let e = Filter::parse_policy(&json!({"field": "a", "op": "eq", "claim": "x..y"}))
            .expect_err("bad path");
        assert!(e.to_string().contains("empty step"), "{e}");
    }

    #[test]
    fn columns_claims_and_index_keys() {
        let p = policy(json!({"and": [
            {"field": "new.owner_id", "op": "eq", "claim": "sub"},
            {"not": {"field": "meta.hidden", "op": "eq", "value": true}},
            {"field": "owner_id", "op": "neq", "value": "x"}
        ]}));
        assert_eq!(p.columns(), vec!["owner_id", "meta"]);
        assert_eq!(p.claim_paths(), vec!["sub".to_owned()]);
        assert_eq!(p.index_key(), None, "unbound: no value yet");
        let b = p.bind(&claims(json!({"sub": "u_1"}))).expect("bound");
        assert_eq!(b.index_key(), Some(("owner_id", vec!["u_1"])));
        // A numeric claim compares as a decimal: not indexable.
        let b = p.bind(&claims(json!({"sub": "42"}))).expect("bound");
        assert_eq!(b.index_key(), None);
        let p = policy(json!({"field": "team_id", "op": "in", "claim": "teams"}));
        let b = p
            .bind(&claims(json!({"teams": ["a", "b"]})))
            .expect("bound");
        assert_eq!(b.index_key(), Some(("team_id", vec!["a", "b"])));
        let p = policy(json!({"or": [{"field": "a", "op": "eq", "claim": "sub"}]}));
        let b = p.bind(&claims(json!({"sub": "u"}))).expect("bound");
        assert_eq!(b.index_key(), None, "or: not one equality");
    }
}
