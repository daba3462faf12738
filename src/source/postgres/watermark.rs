//! Backfill watermark windows on the replication stream.
//!
//! A backfill chunk is read between a low and a high watermark (logical
//! messages the runner writes around its read). The stream opens a window
//! at the low watermark and notes every row changed until the high one;
//! there it emits the chunk as events of the high watermark's transaction,
//! minus the rows changed inside the window (their change events are at
//! least as new).
//!
//! Invariant: a chunk is emitted only when its whole window was seen in
//! this session and every change in it is accounted for; otherwise
//! (window opened in an earlier session, a TRUNCATE, a change whose row is
//! unknown, too many changes to remember) it is not emitted and the runner
//! reads it again. Memory stays bounded: at most [`MAX_WINDOWS`] windows of
//! at most [`MAX_WINDOW_KEYS`] subjects each.
//!
//! Boundary: pure bookkeeping; the session (`stream`) reads the marks,
//! takes the chunk from the runner and sends the item.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::normalize::{Normalizer, Outcome, TxContext, SUBS_PER_CHANGE};
use super::pgoutput::{Message, OldTuple};
use crate::backfill::Chunk;
use crate::event::{Audience, PendingEvent, SourcePosition};
use crate::log::batch::PreBatch;
use crate::log::AppendItem;

/// Open backfill windows kept at most (the runner has at most a few chunks
/// in flight; more means some high watermarks will never come).
pub(super) const MAX_WINDOWS: usize = 16;
/// Changed rows remembered per window; a window that saw more is given up
/// and its chunk read again (memory stays bounded under any write load).
pub(super) const MAX_WINDOW_KEYS: usize = 1_000_000;

/// The changes seen between a backfill chunk's watermarks.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Subjects (`schema.table/key`) of changed rows.
    changed: HashSet<String>,
    /// A TRUNCATE or an unattributable change happened, or too many rows
    /// changed to remember: the chunk is read again rather than emitted.
    truncated: bool,
}

impl Window {
    fn note(&mut self, subject: &str) {
        if self.truncated {
            return;
        }
        if self.changed.len() >= MAX_WINDOW_KEYS {
            self.changed = HashSet::new();
            self.truncated = true;
            return;
        }
        self.changed.insert(subject.to_owned());
    }

    fn give_up(&mut self) {
        self.truncated = true;
    }
}

/// The open windows of one session, by chunk nonce: only windows whose low
/// watermark was read in this session count.
#[derive(Debug, Default)]
pub(super) struct Windows {
    by_nonce: HashMap<u64, Window>,
}

impl Windows {
    pub(super) fn is_empty(&self) -> bool {
        self.by_nonce.is_empty()
    }

    /// A low watermark: opens the window of chunk `nonce`.
    pub(super) fn open(&mut self, nonce: u64) {
        // Windows whose high watermark never comes (the runner failed
        // between the two) must not pile up.
        if self.by_nonce.len() >= MAX_WINDOWS {
            self.by_nonce.clear();
        }
        self.by_nonce.insert(nonce, Window::default());
    }

    /// A high watermark: closes the window of chunk `nonce`, returning it
    /// if its chunk may be emitted. `None`: the low watermark was read in
    /// an earlier session (or never), or the window was given up (a
    /// TRUNCATE intervened, ...): the runner reads the chunk again.
    pub(super) fn close(&mut self, nonce: u64) -> Option<Window> {
        self.by_nonce.remove(&nonce).filter(|w| !w.truncated)
    }

    /// Records the rows one change (`msg`, normalized to `outcomes`)
    /// changed, in every open window.
    pub(super) fn note_change(
        &mut self,
        msg: &Message,
        outcomes: &[Outcome],
        normalizer: &Normalizer,
    ) {
        if self.is_empty() {
            return;
        }
        self.note_outcomes(outcomes);
        // An update that moved the row to another key changed the old
        // key's row too.
        if let Some(subject) = old_key_subject(msg, normalizer) {
            self.note_subject(&subject);
        }
    }

    /// Records the rows `outcomes` changed in every open window.
    fn note_outcomes(&mut self, outcomes: &[Outcome]) {
        for o in outcomes {
            match o {
                Outcome::Event(e) => match (&e.audience, &e.subject) {
                    (Audience::TenantsOfRelation(_), _) => self.give_up_all(),
                    (_, Some(subject)) => self.note_subject(subject),
                    _ => {}
                },
                // A change with no deliverable event (no tenant) still
                // changed the row; its key is unknown here, so the chunk is
                // read again.
                Outcome::Dropped(_) => self.give_up_all(),
                Outcome::Ignored => {}
            }
        }
    }

    fn note_subject(&mut self, subject: &str) {
        for w in self.by_nonce.values_mut() {
            w.note(subject);
        }
    }

    fn give_up_all(&mut self) {
        self.by_nonce.values_mut().for_each(Window::give_up);
    }
}

/// The subject of the old key of an update that carries one (the row's
/// key changed, or the table's replica identity is FULL).
fn old_key_subject(msg: &Message, normalizer: &Normalizer) -> Option<String> {
    let Message::Update(u) = msg else {
        return None;
    };
    let Some(OldTuple::Key(old) | OldTuple::Full(old)) = &u.old else {
        return None;
    };
    normalizer.subject_of(u.relation_id, old)
}

/// The high watermark's item: the chunk's events (its `dropped` already
/// taken out by the caller) minus the rows changed in `window`, stamped as
/// changes of the high watermark's transaction `tx` after the `changes` it
/// has had so far (which this advances).
pub(super) fn chunk_item(
    source: Arc<str>,
    chunk: Chunk,
    window: &Window,
    tx: &TxContext,
    changes: &mut u64,
) -> AppendItem {
    let (mut events, batches) = unchanged_rows(chunk.events, chunk.batches, window);
    restamp(&mut events, tx, changes);
    AppendItem::BackfillChunk {
        source,
        events,
        batches,
        backfill: chunk.backfill,
        after: chunk.after,
        last_key: chunk.last_key,
        rows_read: chunk.rows_read,
    }
}

/// The events whose rows did not change inside `window`, with their
/// record batches while those still match them (`None`: the appender
/// builds them again).
fn unchanged_rows(
    mut events: Vec<PendingEvent>,
    batches: Vec<PreBatch>,
    window: &Window,
) -> (Vec<PendingEvent>, Option<Vec<PreBatch>>) {
    if window.changed.is_empty() {
        return (events, Some(batches));
    }
    let read = events.len();
    events.retain(|e| {
        e.subject
            .as_ref()
            .is_some_and(|s| !window.changed.contains(s))
    });
    if events.len() != read {
        // Built for the events as read.
        return (events, None);
    }
    (events, Some(batches))
}

/// Gives `events` the positions, time and transaction of changes of `tx`
/// following its first `changes`.
fn restamp(events: &mut [PendingEvent], tx: &TxContext, changes: &mut u64) {
    for e in events {
        *changes += 1;
        e.position = SourcePosition {
            commit_lsn: tx.commit_lsn,
            ordinal: changes.saturating_mul(SUBS_PER_CHANGE),
        };
        e.time_micros = tx.commit_time_micros;
        e.time = tx.time.clone();
        e.txid = Some(u64::from(tx.xid));
        e.lsn = Some(tx.commit_lsn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{JsonText, TenantId};
    use crate::source::postgres::normalize::DropReason;

    fn event(subject: Option<&str>, audience: Audience) -> PendingEvent {
        PendingEvent {
            audience,
            position: SourcePosition::default(),
            source: "/sluice/pg/main".into(),
            event_type: "row.inserted".into(),
            topic: "tables/public.t/insert".into(),
            subject: subject.map(str::to_owned),
            time_micros: 0,
            time: "1970-01-01T00:00:00.000000Z".into(),
            txid: None,
            lsn: None,
            data: JsonText::parse("{}".into()).expect("json"),
            relation: None,
            ext: None,
        }
    }

    fn row(subject: &str) -> PendingEvent {
        event(
            Some(subject),
            Audience::Tenant(TenantId::new("a").expect("valid")),
        )
    }

    fn outcomes(subjects: &[&str]) -> Vec<Outcome> {
        subjects.iter().map(|s| Outcome::Event(row(s))).collect()
    }

    fn subjects(events: &[PendingEvent]) -> Vec<&str> {
        events.iter().filter_map(|e| e.subject.as_deref()).collect()
    }

    #[test]
    fn a_window_collects_the_subjects_changed_inside_it() {
        let mut windows = Windows::default();
        // Nothing is noted while no window is open.
        windows.note_outcomes(&outcomes(&["public.t/0"]));
        windows.open(1);
        windows.note_outcomes(&outcomes(&["public.t/1", "public.t/2"]));
        windows.open(2);
        windows.note_outcomes(&[Outcome::Ignored]);
        windows.note_outcomes(&outcomes(&["public.t/3"]));
        let w1 = windows.close(1).expect("usable");
        let mut seen: Vec<_> = w1.changed.iter().map(String::as_str).collect();
        seen.sort_unstable();
        assert_eq!(seen, ["public.t/1", "public.t/2", "public.t/3"]);
        let w2 = windows.close(2).expect("usable");
        assert_eq!(
            w2.changed.iter().map(String::as_str).collect::<Vec<_>>(),
            ["public.t/3"]
        );
        assert!(windows.is_empty());
    }

    #[test]
    fn a_window_opened_in_another_session_is_not_usable() {
        let mut windows = Windows::default();
        assert!(windows.close(7).is_none());
        windows.open(1);
        assert!(windows.close(1).is_some());
        // Closed once.
        assert!(windows.close(1).is_none());
    }

    #[test]
    fn a_truncate_or_an_unattributable_change_gives_up_every_open_window() {
        for outcome in [
            Outcome::Event(event(None, Audience::TenantsOfRelation("public.t".into()))),
            Outcome::Dropped(DropReason::UnknownRelation(7)),
        ] {
            let mut windows = Windows::default();
            windows.open(1);
            windows.open(2);
            windows.note_outcomes(&[outcome]);
            assert!(windows.close(1).is_none());
            assert!(windows.close(2).is_none());
            // A window opened after it is not affected.
            windows.open(3);
            assert!(windows.close(3).is_some());
        }
    }

    #[test]
    fn an_event_without_a_subject_changes_no_row_in_the_window() {
        let mut windows = Windows::default();
        windows.open(1);
        windows.note_outcomes(&[Outcome::Event(event(
            None,
            Audience::Tenant(TenantId::new("a").expect("valid")),
        ))]);
        let w = windows.close(1).expect("usable");
        assert!(w.changed.is_empty());
    }

    #[test]
    fn a_window_that_overflows_is_given_up() {
        let mut w = Window {
            changed: (0..MAX_WINDOW_KEYS)
                .map(|i| format!("public.t/{i}"))
                .collect(),
            truncated: false,
        };
        w.note("public.t/again");
        assert!(w.truncated);
        // Its memory is released, and it stays given up.
        assert!(w.changed.is_empty());
        w.note("public.t/more");
        assert!(w.changed.is_empty());
        let mut windows = Windows::default();
        windows.open(1);
        windows.by_nonce.insert(1, w);
        assert!(windows.close(1).is_none());
    }

    #[test]
    fn too_many_open_windows_are_all_forgotten() {
        let mut windows = Windows::default();
        for n in 0..MAX_WINDOWS as u64 {
            windows.open(n);
        }
        assert_eq!(windows.by_nonce.len(), MAX_WINDOWS);
        windows.open(100);
        assert_eq!(windows.by_nonce.len(), 1);
        assert!(windows.close(0).is_none());
        assert!(windows.close(100).is_some());
    }

    #[test]
    fn rows_changed_in_the_window_are_left_out_of_the_chunk() {
        let mut windows = Windows::default();
        windows.open(1);
        windows.note_outcomes(&outcomes(&["public.t/2"]));
        let w = windows.close(1).expect("usable");
        let read = vec![row("public.t/1"), row("public.t/2"), row("public.t/3")];
        let (kept, batches) = unchanged_rows(read, Vec::new(), &w);
        assert_eq!(subjects(&kept), ["public.t/1", "public.t/3"]);
        // The batches were built for the rows as read.
        assert!(batches.is_none());
    }

    #[test]
    fn a_chunk_untouched_by_the_window_keeps_its_batches() {
        let mut w = Window::default();
        let read = || vec![row("public.t/1"), row("public.t/3")];
        let (kept, batches) = unchanged_rows(read(), Vec::new(), &w);
        assert_eq!(subjects(&kept), ["public.t/1", "public.t/3"]);
        assert!(batches.is_some());
        // Changes to other rows do not matter either.
        w.note("public.t/2");
        let (kept, batches) = unchanged_rows(read(), Vec::new(), &w);
        assert_eq!(kept.len(), 2);
        assert!(batches.is_some());
    }

    #[test]
    fn a_row_without_a_subject_is_left_out_once_anything_changed() {
        let mut w = Window::default();
        w.note("public.t/2");
        let read = vec![
            row("public.t/1"),
            event(None, Audience::Tenant(TenantId::new("a").expect("valid"))),
        ];
        let (kept, batches) = unchanged_rows(read, Vec::new(), &w);
        assert_eq!(subjects(&kept), ["public.t/1"]);
        assert!(batches.is_none());
    }

    #[test]
    fn the_chunk_is_stamped_as_changes_of_the_high_watermarks_transaction() {
        let tx = TxContext::new(42, 1_000, 1_700_000_000_000_000);
        let mut changes = 3;
        let chunk = Chunk {
            backfill: 9,
            events: vec![row("public.t/1"), row("public.t/2")],
            batches: Vec::new(),
            dropped: Vec::new(),
            rows_read: 2,
            after: None,
            last_key: vec![Some("2".into())],
        };
        let item = chunk_item(
            "pg/main".into(),
            chunk,
            &Window::default(),
            &tx,
            &mut changes,
        );
        assert_eq!(changes, 5);
        let AppendItem::BackfillChunk {
            source,
            events,
            batches,
            backfill,
            rows_read,
            last_key,
            after,
        } = item
        else {
            panic!("a backfill chunk");
        };
        assert_eq!(&*source, "pg/main");
        assert_eq!((backfill, rows_read), (9, 2));
        assert_eq!(last_key, vec![Some("2".to_owned())]);
        assert!(after.is_none());
        assert!(batches.is_some());
        let ordinals: Vec<_> = events.iter().map(|e| e.position.ordinal).collect();
        assert_eq!(ordinals, [4 * SUBS_PER_CHANGE, 5 * SUBS_PER_CHANGE]);
        for e in &events {
            assert_eq!(e.position.commit_lsn, 1_000);
            assert_eq!(e.time_micros, tx.commit_time_micros);
            assert_eq!(e.time, tx.time);
            assert_eq!(e.txid, Some(42));
            assert_eq!(e.lsn, Some(1_000));
        }
    }
}
