//! The change-stream loop: opens the stream where the checkpoint says,
//! normalizes each change, and hands events with their resume tokens to the
//! appender in stream order. Reconnects with backoff, resuming after the
//! last token it handed over (the appender never drops what it accepted).
//!
//! Never restarts "from now" on its own: with no checkpoint it starts at
//! the current time and stores that position at once; a checkpoint whose
//! history is gone stops the source with an error that says what the
//! operator can do.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};
use bytes::Bytes;
use mongodb::error::ErrorKind;
use mongodb::options::FullDocumentBeforeChangeType;
use mongodb::{Client, Database};
use tokio_util::sync::CancellationToken;

use super::change_stream::{self, codes};
use super::normalize::{Control, DropReason, Normalizer, Outcome};
use super::MongoStatus;
use crate::config::MongoSourceConfig;
use crate::event::SourcePosition;
use crate::log::{AppendItem, AppenderHandle, Checkpoint, LogError};

/// How often a moved resume token is stored while no event moves it.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long one `getMore` waits for changes before returning empty.
const MAX_AWAIT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    #[error("the appender stopped: {0}")]
    Log(#[from] LogError),
}

/// Why one stream session ended.
enum Ended {
    Shutdown,
    /// `invalidate`: reopen after its token.
    Invalidated,
}

/// Why a session failed.
enum Failure {
    /// Retry with backoff.
    Transient(String),
    /// Retrying cannot help; the operator must act.
    Stuck(String),
    Log(LogError),
}

impl From<LogError> for Failure {
    fn from(e: LogError) -> Self {
        Failure::Log(e)
    }
}

pub struct MongoSource {
    cfg: MongoSourceConfig,
    key: Arc<str>,
    handle: AppenderHandle,
    status: Arc<MongoStatus>,
    normalizer: Normalizer,
    /// What the items handed to the appender lead to (by the appender's
    /// own rule, [`Checkpoint::advance`]): its token is where a reconnect
    /// resumes.
    sent: Checkpoint,
    /// The position of the last change read (stored with the next
    /// progress, even when that change is not appended).
    position: SourcePosition,
    /// Whether pre-images were requested (the server supports them).
    pre_images: bool,
    prepared: bool,
}

impl MongoSource {
    pub fn new(cfg: MongoSourceConfig, handle: AppenderHandle, status: Arc<MongoStatus>) -> Self {
        let normalizer = Normalizer::new(&cfg.event_source(), &cfg.database, &cfg.collections);
        MongoSource {
            key: cfg.checkpoint_key().into(),
            cfg,
            handle,
            status,
            normalizer,
            sent: Checkpoint::default(),
            position: SourcePosition::default(),
            pre_images: true,
            prepared: false,
        }
    }

    pub fn checkpoint_key(&self) -> Arc<str> {
        self.key.clone()
    }

    /// Streams until `shutdown`. Returns an error only when the appender is
    /// gone; a source that cannot go on parks (reported by `/readyz`)
    /// rather than stopping the service.
    pub async fn run(
        mut self,
        start: Checkpoint,
        shutdown: CancellationToken,
    ) -> Result<(), MongoError> {
        self.position = start.position;
        self.sent = start;
        let name = self.cfg.name.clone();
        match &self.sent.token {
            Some(t) => {
                tracing::info!(source = %name, token = %change_stream::describe_token(t), "mongo: resuming after the checkpointed resume token")
            }
            None => {
                tracing::info!(source = %name, "mongo: no checkpoint yet; starting at the current time")
            }
        }
        let max_backoff = Duration::from_millis(self.cfg.reconnect_max_backoff_ms);
        let mut backoff = Duration::from_millis(100);
        // Parsing a mongodb+srv:// string resolves DNS records: a failure
        // there is retried; a string that cannot be valid is not.
        let client = loop {
            match Client::with_uri_str(&self.cfg.uri).await {
                Ok(c) => break c,
                Err(e) if matches!(*e.kind, ErrorKind::InvalidArgument { .. }) => {
                    let why = format!("invalid MongoDB connection string: {e}");
                    tracing::error!(source = %name, error = %why, "mongo source cannot start");
                    MongoStatus::set(&self.status.stuck, Some(why));
                    shutdown.cancelled().await;
                    return Ok(());
                }
                Err(e) => {
                    self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %name, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "mongo: cannot resolve the connection string");
                    MongoStatus::set(&self.status.last_error, Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        };
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let result = self.session(&client, &shutdown).await;
            self.status.streaming.store(false, Ordering::Relaxed);
            match result {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::Invalidated) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Err(Failure::Log(e)) => return Err(e.into()),
                Err(Failure::Stuck(why)) => {
                    tracing::error!(source = %name, error = %why, "mongo source stopped; it will not restart by itself");
                    MongoStatus::set(&self.status.stuck, Some(why));
                    shutdown.cancelled().await;
                    return Ok(());
                }
                Err(Failure::Transient(why)) => {
                    self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %name, error = %why, retry_in_ms = backoff.as_millis() as u64,
                        "mongo change stream failed; resuming from the last token");
                    MongoStatus::set(&self.status.last_error, Some(why));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    /// Checks the server and enables pre-images once per process.
    async fn prepare(&mut self, db: &Database) -> Result<(), Failure> {
        let info = db
            .run_command(doc! { "buildInfo": 1 })
            .await
            .map_err(|e| classify(&e))?;
        let version: Vec<i32> = info
            .get_array("versionArray")
            .map(|a| {
                a.iter()
                    .filter_map(|v| match v {
                        Bson::Int32(i) => Some(*i),
                        Bson::Int64(i) => i32::try_from(*i).ok(),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.pre_images = change_stream::supports_pre_images(&version);
        let name = &self.cfg.name;
        if !self.pre_images {
            tracing::warn!(source = %name, version = ?version,
                "mongo: the server predates pre-images (MongoDB 6.0); a delete is delivered only when its tenant is in the document key, others are counted in sluice_events_dropped_total");
        } else if self.cfg.enable_pre_images {
            for c in &self.cfg.collections {
                let cmd = doc! {
                    "collMod": &c.collection,
                    "changeStreamPreAndPostImages": { "enabled": true },
                };
                match db.run_command(cmd).await {
                    Ok(_) => tracing::info!(source = %name, collection = %c.collection,
                        "mongo: pre- and post-images enabled"),
                    Err(e) => {
                        let why = if code_of(&e) == Some(codes::NAMESPACE_NOT_FOUND) {
                            "the collection does not exist yet".to_owned()
                        } else {
                            e.to_string()
                        };
                        tracing::warn!(source = %name, collection = %c.collection, error = %why,
                            "mongo: cannot enable pre-images; deletes without the tenant in their key will not be delivered (counted instead)");
                        self.status.note(format!(
                            "pre-images not enabled on {}.{}: {why}",
                            self.cfg.database, c.collection
                        ));
                    }
                }
            }
        }
        self.prepared = true;
        Ok(())
    }

    async fn session(
        &mut self,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> Result<Ended, Failure> {
        // A checkpoint that cannot be used is the operator's to resolve,
        // whether or not the server is reachable.
        let start_after = match &self.sent.token {
            Some(t) => Some(change_stream::decode_token(t).map_err(|e| {
                Failure::Stuck(format!(
                    "the checkpoint of {} holds an unusable resume token ({e}); see the README's \"MongoDB: resume point lost\"",
                    self.key
                ))
            })?),
            None => None,
        };
        let db = client.database(&self.cfg.database);
        if !self.prepared {
            tokio::select! {
                r = self.prepare(&db) => r?,
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            }
        }
        let mut watch = db
            .watch()
            .pipeline([change_stream::match_stage(
                &self.cfg.database,
                &self.cfg.collections,
            )])
            .full_document(change_stream::full_document(&self.cfg.full_document))
            .max_await_time(MAX_AWAIT);
        if self.pre_images {
            watch = watch.full_document_before_change(FullDocumentBeforeChangeType::WhenAvailable);
        }
        if let Some(token) = start_after {
            watch = watch.start_after(token);
        }
        let stream = tokio::select! {
            r = watch => r.map_err(|e| classify(&e))?,
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        let mut stream = stream.with_type::<Document>();
        self.status.streaming.store(true, Ordering::Relaxed);
        MongoStatus::set(&self.status.last_error, None);
        tracing::info!(source = %self.cfg.name, database = %self.cfg.database, "mongo change stream open");

        if self.sent.token.is_none() {
            // First start: store where "now" is before anything else, so a
            // restart before the first event resumes here, not later.
            if let Some(t) = stream.resume_token() {
                let token = change_stream::encode_token(&t).map_err(Failure::Transient)?;
                self.progress(token).await?;
            }
        }
        let mut last_progress = Instant::now();
        let mut pending: Option<Bytes> = None;
        loop {
            let next = tokio::select! {
                r = stream.next_if_any() => r,
                _ = shutdown.cancelled() => {
                    if let Some(t) = pending.take() {
                        self.progress(t).await?;
                    }
                    return Ok(Ended::Shutdown);
                }
            };
            let doc = match next {
                Ok(Some(doc)) => doc,
                Ok(None) => {
                    // An empty batch: the server's post-batch token moved
                    // past whatever it filtered out.
                    if let Some(t) = stream.resume_token() {
                        if let Ok(t) = change_stream::encode_token(&t) {
                            pending = Some(t);
                        }
                    }
                    if last_progress.elapsed() >= PROGRESS_EVERY {
                        if let Some(t) = pending.take() {
                            if self.sent.token.as_ref() != Some(&t) {
                                self.progress(t).await?;
                            }
                        }
                        last_progress = Instant::now();
                    }
                    if !stream.is_alive() {
                        return Err(Failure::Transient("the change stream cursor closed".into()));
                    }
                    continue;
                }
                Err(e) => {
                    if let Some(t) = pending.take() {
                        self.progress(t).await?;
                    }
                    return Err(classify(&e));
                }
            };
            self.status
                .last_change_micros
                .store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
            let n = match self.normalizer.normalize(&doc) {
                Ok(n) => n,
                Err(e) => {
                    self.status.dropped_other.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(source = %self.cfg.name, error = %e, "mongo: change event not understood; not appended");
                    continue;
                }
            };
            self.position = n.position;
            match n.outcome {
                Outcome::Event(mut event) => {
                    event.position = n.position;
                    self.send(AppendItem::Event {
                        source: self.key.clone(),
                        event: *event,
                        token: Some(n.token),
                    })
                    .await?;
                    pending = None;
                    self.status.events.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Dropped(reason) => {
                    self.count_drop(&reason);
                    pending = Some(n.token);
                }
                Outcome::Ignored => pending = Some(n.token),
                Outcome::Control(control) => {
                    let what = match &control {
                        Control::Invalidate => "the change stream was invalidated (the database was dropped or renamed); reopening after it".to_owned(),
                        Control::DropDatabase => format!("database {} was dropped", self.cfg.database),
                        Control::Drop { collection } => format!(
                            "captured collection {}.{collection} was dropped; a new collection of that name is captured again",
                            self.cfg.database
                        ),
                        Control::Rename { collection, to } => format!(
                            "captured collection {}.{collection} was renamed to {to}; changes under the new name are not captured unless configured",
                            self.cfg.database
                        ),
                    };
                    tracing::warn!(source = %self.cfg.name, condition = %what, "mongo");
                    self.status
                        .note(format!("{}: {what}", chrono::Utc::now().to_rfc3339()));
                    self.progress(n.token).await?;
                    pending = None;
                    if control == Control::Invalidate {
                        return Ok(Ended::Invalidated);
                    }
                }
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                if let Some(t) = pending.take() {
                    self.progress(t).await?;
                }
                last_progress = Instant::now();
            }
        }
    }

    fn count_drop(&self, reason: &DropReason) {
        let name = &self.cfg.name;
        match reason {
            DropReason::NoTenant {
                collection,
                op,
                key,
                why,
            } => {
                self.status
                    .dropped_no_tenant
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %name, %collection, %op, %key, %why, "mongo: change has no tenant; not delivered to anyone");
            }
            DropReason::DeleteWithoutPreImage { collection, key } => {
                self.status
                    .dropped_delete_without_pre_image
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %name, %collection, %key,
                    "mongo: delete without a pre-image (its tenant is unknown); not delivered to anyone");
            }
            DropReason::Unsupported { op } => {
                self.status.dropped_other.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %name, %op, "mongo: change type not captured");
            }
        }
    }

    /// Stores `token` as the checkpoint without an event.
    async fn progress(&mut self, token: Bytes) -> Result<(), LogError> {
        self.send(AppendItem::Progress {
            source: self.key.clone(),
            position: self.position,
            token,
        })
        .await
    }

    /// Hands `item` to the appender, moving `sent` past it by the item
    /// itself, so the token resumed after cannot differ from the one sent.
    /// (A failed send ends `run`, so a `sent` moved past an item that was
    /// not sent is never used.)
    async fn send(&mut self, item: AppendItem) -> Result<(), LogError> {
        self.sent.advance(&item);
        self.handle.send(item).await
    }
}

fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// What a driver error means for the loop.
fn classify(e: &mongodb::error::Error) -> Failure {
    match code_of(e) {
        Some(codes::CHANGE_STREAM_HISTORY_LOST) => Failure::Stuck(format!(
            "the checkpointed resume token is no longer in the oplog (ChangeStreamHistoryLost: {e}); \
             changes between it and now are gone from the server. Sluice will not skip them silently: \
             see the README's \"MongoDB: resume point lost\" for the options"
        )),
        Some(codes::CHANGE_STREAM_FATAL_ERROR) | Some(codes::INVALID_RESUME_TOKEN) => {
            Failure::Stuck(format!(
                "the change stream cannot resume from the checkpoint ({e}); \
                 see the README's \"MongoDB: resume point lost\""
            ))
        }
        _ => Failure::Transient(e.to_string()),
    }
}
