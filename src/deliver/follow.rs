//! Following a tenant's events from a position: catch up from the log, then
//! go live through the hub, and fall back to the log whenever the hub lets
//! the subscriber go (its queue overflowed). Shared by SSE, NDJSON tails
//! and WebSocket subscriptions. Each catch-up read applies the one
//! retention-gap rule (`log::position`), so a subscriber that falls behind
//! retention gets `FollowError::Gap`, never a silent skip.
//!
//! Invariant: events come out in seq order, each at most once, none missing.
//! The subscriber registers with the hub *before* each final log read, so an
//! event committed after that read is in the live queue and one committed
//! before it is in the read; the overlap is dropped by seq.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::event::{Committed, TenantId};
use crate::hub::{Hub, Subscription};
use crate::log::{self, LogQuery, ReadScope};
use crate::policy::Access;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("the log no longer holds seq {requested}: retention pruned it; the oldest available is {oldest}")]
    Gap { requested: i64, oldest: i64 },
    #[error("reading the log: {0}")]
    Db(String),
}

/// Where a follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this seq (inclusive).
    At(i64),
    /// With the next event appended after now.
    Live,
}

enum Mode {
    CatchUp { registered: Option<Subscription> },
    Live(Subscription),
}

pub struct Follower {
    hub: Arc<Hub>,
    pool: deadpool_postgres::Pool,
    tenant: TenantId,
    access: Arc<Access>,
    /// The next seq this follower may deliver.
    next: i64,
    page: i64,
    buffer: VecDeque<Arc<Committed>>,
    /// Every log row below this seq has been read (delivered or skipped).
    scanned: i64,
    mode: Mode,
    /// How often this follower fell back to the log.
    pub catchups: u64,
    /// The log's durable head, to skip a needless read when going live.
    durable: tokio::sync::watch::Receiver<Arc<crate::log::Durable>>,
}

impl Follower {
    /// `durable` tells the log's head (used for `Start::Live`).
    pub fn new(
        hub: Arc<Hub>,
        pool: deadpool_postgres::Pool,
        durable: tokio::sync::watch::Receiver<Arc<crate::log::Durable>>,
        tenant: TenantId,
        access: Arc<Access>,
        start: Start,
        page: i64,
    ) -> Follower {
        let head = durable.borrow().last_seq;
        let (next, mode) = match start {
            Start::At(seq) => (seq.max(1), Mode::CatchUp { registered: None }),
            // Registering now and reading the log from head+1 closes the
            // window between "now" and the registration.
            Start::Live => (head + 1, Mode::CatchUp { registered: None }),
        };
        Follower {
            hub,
            pool,
            tenant,
            access,
            next,
            page: page.max(1),
            buffer: VecDeque::new(),
            scanned: 0,
            mode,
            catchups: 0,
            durable,
        }
    }

    /// The next seq this follower would deliver (its resume position).
    pub fn position(&self) -> i64 {
        self.next
    }

    /// The next event if one is at hand (buffered from the log or queued
    /// live), without waiting or reading the log.
    pub fn try_next(&mut self) -> Option<Arc<Committed>> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                if e.seq >= self.next {
                    self.next = e.seq + 1;
                    return Some(e);
                }
                continue;
            }
            let Mode::Live(sub) = &mut self.mode else {
                return None;
            };
            // A closed queue (lagged) is left for `next` to handle.
            let e = sub.rx.try_recv().ok()?;
            if e.seq >= self.next {
                self.next = e.seq + 1;
                return Some(e);
            }
        }
    }

    /// Waits for the next event.
    pub async fn next(&mut self) -> Result<Arc<Committed>, FollowError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                if e.seq >= self.next {
                    self.next = e.seq + 1;
                    return Ok(e);
                }
                continue;
            }
            match &mut self.mode {
                Mode::Live(sub) => match sub.rx.recv().await {
                    Some(e) if e.seq < self.next => continue,
                    Some(e) => {
                        self.next = e.seq + 1;
                        return Ok(e);
                    }
                    None => {
                        // Lagged: the hub let us go. Read the rest from the log.
                        self.catchups += 1;
                        self.mode = Mode::CatchUp { registered: None };
                    }
                },
                Mode::CatchUp { registered } => {
                    self.next = self.next.max(self.scanned);
                    if registered.is_none() {
                        *registered =
                            Some(self.hub.subscribe(self.tenant.clone(), self.access.clone()));
                    }
                    // The durable head is published before the hub publishes,
                    // so if it has not reached `next` since we registered,
                    // every later event comes through the hub: no read needed
                    // (a fan-out of fresh subscribers costs no queries).
                    let head = self.durable.borrow().last_seq;
                    let exhausted = if self.buffer.is_empty() && head < self.next {
                        true
                    } else {
                        // Boxed: the read's state (pool checkout, query) is
                        // large and only exists while it runs; inline it
                        // would sit in every open stream's future.
                        Box::pin(self.read_page_retrying()).await?
                    };
                    if exhausted {
                        if let Mode::CatchUp { registered } = &mut self.mode {
                            if let Some(sub) = registered.take() {
                                self.mode = Mode::Live(sub);
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`Self::read_page`], waiting out a state database that cannot be
    /// reached (restart, network cut): the subscriber stays connected (its
    /// transport keeps sending heartbeats) and goes on where it was when
    /// the database answers again. Cancel-safe: a page changes the
    /// follower only once it was read.
    async fn read_page_retrying(&mut self) -> Result<bool, FollowError> {
        let mut backoff = std::time::Duration::from_millis(100);
        let mut warned = false;
        loop {
            match self.read_page().await {
                Err(FollowError::Db(e)) => {
                    if !warned {
                        tracing::warn!(error = %e, "a subscriber cannot read the log; retrying until the state database answers");
                        warned = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Reads one page from the log into the buffer; true when the log had
    /// nothing more.
    async fn read_page(&mut self) -> Result<bool, FollowError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| FollowError::Db(e.to_string()))?;
        let pruned = log::pruned_through(&**client)
            .await
            .map_err(|e| FollowError::Db(e.to_string()))?;
        if let Some(g) = log::gap(self.next, pruned) {
            return Err(FollowError::Gap {
                requested: g.requested,
                oldest: g.oldest,
            });
        }
        let scope = ReadScope::Tenant(self.tenant.clone());
        let q = LogQuery {
            from: self.next,
            limit: self.page,
            ..LogQuery::default()
        };
        let rows = log::query_events(&**client, &scope, &q)
            .await
            .map_err(|e| FollowError::Db(e.to_string()))?;
        let exhausted = (rows.len() as i64) < self.page;
        if let Some(last) = rows.last() {
            // Rows the selector skips still count as read.
            self.scanned = self.scanned.max(last.seq + 1);
        }
        for row in rows {
            // The same policy and selector as the live path applies.
            if let Some(shown) = self.access.admit_one(&Arc::new(row)) {
                self.buffer.push_back(shown);
            }
        }
        Ok(exhausted)
    }
}
