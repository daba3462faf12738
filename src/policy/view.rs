//! Applying policies to events: a subscriber's [`Viewer`] (its role's
//! rules, its claims bound in) decides per event whether it sees the event,
//! and as what: unchanged, with hidden columns removed, or, for an update
//! that moves a row into or out of its predicate, as `row.entered` (the
//! visible `new`) or `row.left` (the key and the visible `old`).
//!
//! An [`EventView`] holds one event while it is offered to subscribers: its
//! `data` is parsed at most once, and each rewritten form (per rule and
//! form) is built once and shared by every subscriber it goes to, so the
//! cost of an event does not grow with the subscribers who see it.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{Columns, Rule, Target};
use crate::event::Committed;
use crate::subscription::{Filter, Selector};

/// A rule with one credential's claims bound into its predicate.
#[derive(Debug, Clone)]
pub struct BoundRule {
    rule: Arc<Rule>,
    rows: Rows,
}

#[derive(Debug, Clone)]
enum Rows {
    All,
    /// A claim the predicate needs is missing or of the wrong type.
    Nothing,
    Where(Filter),
}

impl BoundRule {
    pub fn bind(rule: Arc<Rule>, claims: &Map<String, Value>) -> BoundRule {
        let rows = match &rule.rows {
            None => Rows::All,
            Some(f) => match f.bind(claims) {
                Some(b) => Rows::Where(b),
                None => Rows::Nothing,
            },
        };
        BoundRule { rule, rows }
    }

    fn passes(&self, row: Option<&Value>) -> bool {
        match &self.rows {
            Rows::All => true,
            Rows::Nothing => false,
            Rows::Where(f) => f.matches_row(row),
        }
    }

    /// The form in which the event goes to this subscriber, if at all.
    fn form(&self, event_type: &str, data: Option<&Value>) -> Option<Form> {
        if matches!(self.rows, Rows::All) {
            return Some(Form::Same);
        }
        if matches!(self.rows, Rows::Nothing) {
            return None;
        }
        let data = data?;
        let new = data.get("new");
        let old = data.get("old");
        match Change::of(event_type) {
            Change::Appears => self.passes(new).then_some(Form::Same),
            Change::Goes => self.passes(old).then_some(Form::Same),
            Change::Moves => {
                let before = match (old, new) {
                    (Some(o), _) => self.passes(Some(o)),
                    // No old row: only the key could have told, and the
                    // key did not change (else Postgres sends it).
                    (None, n) => self.passes(n),
                };
                let after = match new {
                    Some(n) => self.passes(Some(n)),
                    // A document update without its post-image: as before.
                    None => before,
                };
                match (before, after) {
                    (true, true) => Some(Form::Same),
                    (false, true) => Some(Form::Entered),
                    (true, false) => Some(Form::Left),
                    (false, false) => None,
                }
            }
            // A truncate empties the table: every subscriber of it must
            // drop its rows.
            Change::Clears => Some(Form::Same),
        }
    }
}

enum Change {
    Appears,
    Moves,
    Goes,
    Clears,
}

impl Change {
    fn of(event_type: &str) -> Change {
        use crate::event::types::*;
        match event_type {
            UPDATED | DOC_UPDATED | DOC_REPLACED => Change::Moves,
            DELETED | DOC_DELETED => Change::Goes,
            TRUNCATED => Change::Clears,
            INSERTED | SNAPSHOT | DOC_INSERTED => Change::Appears,
            _ => Change::Appears,
        }
    }
}

/// How an event is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// As it is (hidden columns removed).
    Same,
    /// The row starts matching: `row.entered` with the visible `new`.
    Entered,
    /// The row stops matching: `row.left` with the key and visible `old`.
    Left,
}

/// What one credential may see.
#[derive(Debug, Clone)]
pub struct Viewer {
    scoped: Option<Scoped>,
}

#[derive(Debug, Clone)]
struct Scoped {
    rules: Vec<BoundRule>,
    /// Tables without a rule: seen (service) or not (anon, custom roles).
    default_allow: bool,
}

enum Decision<'a> {
    Open,
    Deny,
    Rule(&'a BoundRule),
}

/// An equality the hub can look a subscriber up by: a column and the
/// values (of the subscriber's claims) a visible row's column equals.
pub type IndexKey = (String, Vec<String>);

/// Where the hub finds a subscriber: which events can reach it at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routes {
    /// Any event of its tenant.
    Everything,
    /// Only events of these tables and collections (`tables/public.todos`),
    /// each with the equality the hub may look it up by (column, values),
    /// and custom events if `custom`.
    Some {
        targets: Vec<(String, Option<IndexKey>)>,
        custom: bool,
    },
}

impl Viewer {
    /// Sees everything of its tenant, as it is.
    pub fn open() -> Viewer {
        Viewer { scoped: None }
    }

    pub(super) fn scoped(rules: Vec<BoundRule>, default_allow: bool) -> Viewer {
        Viewer {
            scoped: Some(Scoped {
                rules,
                default_allow,
            }),
        }
    }

    pub fn is_open(&self) -> bool {
        self.scoped.is_none()
    }

    fn decide(&self, topic: &str) -> Decision<'_> {
        let Some(s) = &self.scoped else {
            return Decision::Open;
        };
        let rule = match route_of(topic) {
            Some(route) => s.rules.iter().find(|b| match &b.rule.target {
                Target::Table(t) => route.strip_prefix("tables/") == Some(t.as_str()),
                Target::Collection(c) => route.strip_prefix("collections/") == Some(c.as_str()),
                Target::Topics(_) => false,
            }),
            None => s.rules.iter().find(|b| match &b.rule.target {
                Target::Topics(globs) => globs.iter().any(|g| g.matches(topic)),
                _ => false,
            }),
        };
        match rule {
            Some(b) => Decision::Rule(b),
            None if s.default_allow => Decision::Open,
            None => Decision::Deny,
        }
    }

    /// Whether events of the table or collection `route`
    /// (`tables/public.todos`) may reach this viewer at all.
    pub fn may_subscribe_route(&self, route: &str) -> bool {
        match self.decide(&format!("{route}/insert")) {
            Decision::Open => true,
            Decision::Deny => false,
            Decision::Rule(b) => b.rule.subscribe,
        }
    }

    /// Whether anything at all may reach this viewer.
    pub fn may_subscribe_anything(&self) -> bool {
        match &self.scoped {
            None => true,
            Some(s) => s.default_allow || s.rules.iter().any(|b| b.rule.subscribe),
        }
    }

    /// Whether this viewer may publish a custom event on `topic`
    /// (`custom/<name>`): a topics rule with `publish`, or service where no
    /// rule speaks of the topic.
    pub fn may_publish(&self, topic: &str) -> bool {
        match self.decide(topic) {
            Decision::Open => true,
            Decision::Deny => false,
            Decision::Rule(b) => b.rule.publish,
        }
    }

    /// Which events can reach this viewer (the hub indexes it by them).
    pub fn routes(&self) -> Routes {
        let Some(s) = &self.scoped else {
            return Routes::Everything;
        };
        if s.default_allow {
            return Routes::Everything;
        }
        let mut targets = Vec::new();
        let mut custom = false;
        for b in &s.rules {
            if !b.rule.subscribe || matches!(b.rows, Rows::Nothing) {
                continue;
            }
            match b.rule.target.route() {
                Some(route) => {
                    let key = match &b.rows {
                        Rows::Where(f) => f.index_key().map(|(c, vs)| {
                            (c.to_owned(), vs.into_iter().map(str::to_owned).collect())
                        }),
                        _ => None,
                    };
                    targets.push((route, key));
                }
                None => custom = true,
            }
        }
        Routes::Some { targets, custom }
    }
}

/// `tables/public.todos` of `tables/public.todos/update` (tables and
/// collections); `None` for custom events.
pub fn route_of(topic: &str) -> Option<&str> {
    if !(topic.starts_with("tables/") || topic.starts_with("collections/")) {
        return None;
    }
    topic.rsplit_once('/').map(|(route, _)| route)
}

/// A subscriber's whole view: its viewer (the policy) and its selector
/// (what it asked for), applied in that order.
#[derive(Debug, Clone)]
pub struct Access {
    pub viewer: Viewer,
    pub selector: Selector,
    /// The selector's filter decides membership of a live query's view
    /// rather than which events pass ([`Access::admit`]).
    pub membership: bool,
}

impl Access {
    /// Everything the selector asks for, with no policy (admin reads,
    /// tests).
    pub fn open(selector: Selector) -> Access {
        Access {
            viewer: Viewer::open(),
            selector,
            membership: false,
        }
    }

    /// Whether the policy shows `column` of the table `route`
    /// (`tables/public.todos`) to this subscriber whole (neither hidden nor
    /// masked), so a test on it reads what the row holds.
    pub fn shows_column(&self, route: &str, column: &str) -> bool {
        match self.viewer.decide(&format!("{route}/insert")) {
            Decision::Open => true,
            Decision::Deny => false,
            Decision::Rule(b) => b.rule.columns.shows(column),
        }
    }

    /// The event as this subscriber sees it, if it does.
    ///
    /// With `membership` (a live query), the filter says which rows are in
    /// the subscriber's view, and the events keep that view exact without
    /// any per-subscriber state: a row that appears passes if its new row
    /// does; an update whose new row passes goes as it is (an upsert), one
    /// whose new row fails goes as `row.left` (unless the old row is known
    /// and failed too: it was never in the view); a delete or truncate
    /// always goes (removing a row the view does not hold changes nothing).
    pub fn admit(&self, view: &mut EventView<'_>) -> Option<Arc<Committed>> {
        if self.membership && self.selector.filter.is_some() {
            return self.admit_member(view);
        }
        self.admit_filtered(view, &self.selector)
    }

    fn admit_member(&self, view: &mut EventView<'_>) -> Option<Arc<Committed>> {
        use crate::event::types::{DELETED, ENTERED, INSERTED, LEFT, SNAPSHOT, TRUNCATED, UPDATED};
        let filter = self.selector.filter.as_ref()?;
        let unfiltered = Selector {
            topics: self.selector.topics.clone(),
            filter: None,
        };
        let event = self.admit_filtered(view, &unfiltered)?;
        let data = event.data();
        let passes = |image: &str| filter.matches_row(data.as_ref().and_then(|d| d.get(image)));
        match &*event.event_type {
            INSERTED | SNAPSHOT | ENTERED => passes("new").then_some(event),
            UPDATED => {
                if passes("new") {
                    return Some(event);
                }
                let old_failed = data
                    .as_ref()
                    .and_then(|d| d.get("old"))
                    .is_some_and(|o| !filter.matches_row(Some(o)));
                if old_failed {
                    return None;
                }
                rewrite(&event, &Columns::All, Form::Left).map(|m| m.event)
            }
            DELETED | TRUNCATED | LEFT => Some(event),
            _ => filter.matches(data.as_ref()?).then_some(event),
        }
    }

    fn admit_filtered(
        &self,
        view: &mut EventView<'_>,
        selector: &Selector,
    ) -> Option<Arc<Committed>> {
        let event = view.event;
        match self.viewer.decide(&event.topic) {
            Decision::Deny => None,
            Decision::Open => selector
                .matches_ref(&event.topic, || view.data())
                .then(|| event.clone()),
            Decision::Rule(b) => {
                if !b.rule.subscribe || !selector.matches_topic(&event.topic) {
                    return None;
                }
                let form = b.form(&event.event_type, view.data())?;
                if form == Form::Same && b.rule.columns == Columns::All {
                    return self
                        .selector
                        .matches_ref(&event.topic, || view.data())
                        .then(|| event.clone());
                }
                let made = view.made(&b.rule, form)?;
                selector
                    .matches_ref(&made.event.topic, || Some(&made.data))
                    .then(|| made.event.clone())
            }
        }
    }

    /// [`Access::admit`] for one subscriber alone.
    pub fn admit_one(&self, event: &Arc<Committed>) -> Option<Arc<Committed>> {
        self.admit(&mut EventView::new(event))
    }
}

/// One event while it is offered to subscribers.
pub struct EventView<'a> {
    pub event: &'a Arc<Committed>,
    data: Option<Option<Value>>,
    made: Vec<(usize, Form, Option<Made>)>,
}

struct Made {
    event: Arc<Committed>,
    data: Value,
}

impl<'a> EventView<'a> {
    pub fn new(event: &'a Arc<Committed>) -> EventView<'a> {
        EventView {
            event,
            data: None,
            made: Vec::new(),
        }
    }

    /// The event's `data`, parsed once.
    pub fn data(&mut self) -> Option<&Value> {
        self.data.get_or_insert_with(|| self.event.data()).as_ref()
    }

    fn made(&mut self, rule: &Rule, form: Form) -> Option<&Made> {
        let at = match self
            .made
            .iter()
            .position(|(i, f, _)| *i == rule.index && *f == form)
        {
            Some(at) => at,
            None => {
                let made = rewrite(self.event, &rule.columns, form);
                self.made.push((rule.index, form, made));
                self.made.len() - 1
            }
        };
        self.made[at].2.as_ref()
    }
}

/// The event in `form` with the columns `columns` hides removed.
fn rewrite(event: &Committed, columns: &Columns, form: Form) -> Option<Made> {
    let mut envelope: Value = serde_json::from_slice(&event.body).ok()?;
    let obj = envelope.as_object_mut()?;
    let mut event_type = event.event_type.clone();
    {
        let data = obj.get_mut("data")?.as_object_mut()?;
        let doc = data.contains_key("collection");
        match form {
            Form::Same => {}
            Form::Entered => {
                for k in ["old", "changed", "update"] {
                    data.remove(k);
                }
                data.insert("op".into(), "entered".into());
                event_type = if doc {
                    "doc.entered"
                } else {
                    crate::event::types::ENTERED
                }
                .into();
            }
            Form::Left => {
                for k in ["new", "changed", "unchanged", "update"] {
                    data.remove(k);
                }
                data.insert("op".into(), "left".into());
                event_type = if doc {
                    "doc.left"
                } else {
                    crate::event::types::LEFT
                }
                .into();
            }
        }
        mask(data, columns);
    }
    obj.insert("type".into(), Value::from(&*event_type));
    let data = obj.get("data").cloned().unwrap_or(Value::Null);
    let body = serde_json::to_string(&envelope).ok()?;
    Some(Made {
        event: Arc::new(Committed {
            seq: event.seq,
            tenant: event.tenant.clone(),
            topic: event.topic.clone(),
            event_type,
            body: Bytes::from(body),
            commit_micros: event.commit_micros,
        }),
        data,
    })
}

/// Removes hidden columns from `new`, `old`, `changed`, `unchanged` and a
/// document update's description; `key` stays whole.
fn mask(data: &mut Map<String, Value>, columns: &Columns) {
    if *columns == Columns::All {
        return;
    }
    let top = |path: &str| columns.shows(path.split('.').next().unwrap_or(path));
    for image in ["new", "old"] {
        if let Some(Value::Object(row)) = data.get_mut(image) {
            row.retain(|k, _| columns.shows(k));
        }
    }
    for list in ["changed", "unchanged"] {
        if let Some(Value::Array(names)) = data.get_mut(list) {
            names.retain(|n| n.as_str().is_none_or(top));
        }
    }
    if let Some(Value::Object(update)) = data.get_mut("update") {
        if let Some(Value::Object(set)) = update.get_mut("updated_fields") {
            set.retain(|k, _| top(k));
        }
        if let Some(Value::Array(removed)) = update.get_mut("removed_fields") {
            removed.retain(|n| n.as_str().is_none_or(top));
        }
        if let Some(Value::Array(truncated)) = update.get_mut("truncated_arrays") {
            truncated.retain(|t| t.get("field").and_then(Value::as_str).is_none_or(top));
        }
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
