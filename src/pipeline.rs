//! Wires source → appender for `sluice serve` (and `sluice demo`).
//!
//! Start-up order: migrate the log, set up the publication and slot if
//! missing, run the preflight (refusing to start on a table whose deletes
//! could not be attributed to a tenant), start the appender, load the
//! checkpoint, start the source.
//!
//! Shutdown order: stop intake (the source stops reading), let the appender
//! flush everything already queued, then return. What was read but not
//! acknowledged is re-sent by Postgres on the next start and skipped by the
//! checkpoint, so nothing is lost or doubled.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::hub::Hub;
use crate::log::{self, Appender, Durable, LogError};
use crate::source::mongo::stream::{MongoError, MongoSource};
use crate::source::mongo::MongoStatus;
use crate::source::postgres::setup::{self, Finding};
use crate::source::postgres::stats::SourceStats;
use crate::source::postgres::stream::{PgSource, SourceError};

/// How long the appender may keep retrying a flush after shutdown began.
const FLUSH_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to the {what} database: {source}")]
    Connect {
        what: &'static str,
        source: crate::pgconn::PgError,
    },
    #[error("setting up the publication and slot failed: {0}")]
    Setup(setup::SetupError),
    #[error("preflight failed; refusing to start:\n{}", setup::lines(.0))]
    Preflight(Vec<Finding>),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("source stopped: {0}")]
    Source(#[from] SourceError),
    #[error("mongo source stopped: {0}")]
    Mongo(#[from] MongoError),
    #[error(transparent)]
    Initial(#[from] crate::backfill::initial::InitialError),
    #[error("a pipeline task failed: {0}")]
    Task(String),
}

/// A running pipeline.
pub struct Pipeline {
    pub durable: watch::Receiver<Arc<Durable>>,
    pub stats: Arc<SourceStats>,
    /// One per configured MongoDB source.
    pub mongo: Vec<Arc<MongoStatus>>,
    /// The webhook outbox the appender writes (for the dispatcher).
    pub outbox: crate::webhooks::Outbox,
    /// Cancelling it stops intake; the pipeline then flushes and ends.
    pub intake: CancellationToken,
    task: JoinHandle<Result<(), PipelineError>>,
}

impl Pipeline {
    /// Waits until the pipeline stops (after `shutdown`, or on a fatal error).
    pub async fn wait(self) -> Result<(), PipelineError> {
        self.task
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))?
    }
}

/// Connects to the state database and migrates it; returns the client and
/// the versions applied.
pub async fn migrated_state(
    config: &Config,
) -> Result<(tokio_postgres::Client, Vec<i32>), PipelineError> {
    let url = config.state_url()?;
    let mut client = log::connect(url)
        .await
        .map_err(|source| PipelineError::Connect {
            what: "state",
            source,
        })?;
    let applied = log::migrate::migrate(&mut client).await?;
    Ok((client, applied))
}

/// Migrates the state database; returns the versions applied.
pub async fn migrate(config: &Config) -> Result<Vec<i32>, PipelineError> {
    Ok(migrated_state(config).await?.1)
}

/// What outlives one pipeline run in a process that may lead several times
/// (the HTTP API reads these whether or not this process leads).
#[derive(Clone)]
pub struct Shared {
    pub stats: Arc<SourceStats>,
    /// One per `source.mongo` entry, in order.
    pub mongo: Vec<Arc<MongoStatus>>,
    pub outbox: crate::webhooks::Outbox,
    /// Where the appender publishes the durable state.
    pub durable: watch::Sender<Arc<Durable>>,
    /// Events appended by this process.
    pub appended: Arc<log::AppendCounts>,
    /// Backfill chunks between the runner and the stream, and their counts.
    pub chunks: Arc<crate::backfill::Chunks>,
    pub backfill_metrics: Arc<crate::backfill::runner::BackfillMetrics>,
    /// Publishers waiting for their events to be appended.
    pub publish_waiters: Arc<crate::deliver::waiters::Waiters>,
}

impl Shared {
    pub fn new(config: &Config) -> Shared {
        Shared {
            stats: Arc::new(SourceStats::default()),
            mongo: config
                .source
                .mongo
                .iter()
                .map(|m| Arc::new(MongoStatus::new(&m.name)))
                .collect(),
            outbox: crate::webhooks::Outbox::with_policies(Arc::new(
                config.compiled_policies().unwrap_or_default(),
            )),
            durable: watch::channel(Arc::new(Durable::default())).0,
            appended: Arc::default(),
            chunks: Arc::default(),
            backfill_metrics: Arc::default(),
            publish_waiters: Arc::default(),
        }
    }
}

/// Prepares everything and starts streaming; committed events also go live
/// to `hub` when one is given.
pub async fn start(
    config: &Config,
    shutdown: CancellationToken,
    hub: Option<Arc<Hub>>,
) -> Result<Pipeline, PipelineError> {
    start_with(config, shutdown, hub, Shared::new(config)).await
}

/// [`start`] with state shared with the rest of the process.
pub async fn start_with(
    config: &Config,
    shutdown: CancellationToken,
    hub: Option<Arc<Hub>>,
    shared: Shared,
) -> Result<Pipeline, PipelineError> {
    let pg = config.postgres()?.clone();
    migrate(config).await?;
    let source_client = log::connect(&pg.url)
        .await
        .map_err(|source| PipelineError::Connect {
            what: "source",
            source,
        })?;
    // Tables configured `snapshot = "initial"` on a slot that does not
    // exist yet: the slot is created with an exported snapshot and their
    // rows appended (by an appender of their own) before anything else.
    if pg
        .tables
        .iter()
        .any(|t| t.snapshot.as_deref() == Some("initial"))
    {
        let (mut first, handle) = Appender::start_publishing(
            config.state_url()?,
            &config.appender,
            hub.clone(),
            shared.durable.clone(),
        )
        .await?;
        add_stages(&mut first, &shared);
        first.set_counts(shared.appended.clone());
        let flushing = tokio::spawn(first.run(CancellationToken::new()));
        let result =
            crate::backfill::initial::run_if_new_slot(&pg, config.state_url()?, &handle).await;
        drop(handle);
        flushing
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))??;
        for line in result? {
            tracing::info!(action = %line, "initial snapshot");
        }
    }
    for line in setup::setup(&source_client, &pg)
        .await
        .map_err(PipelineError::Setup)?
    {
        tracing::info!(action = %line, "setup");
    }
    let mut findings = setup::check(&source_client, &pg)
        .await
        .map_err(|e| PipelineError::Setup(e.into()))?;
    findings.extend(
        crate::policy::catalog::check(&source_client, config)
            .await
            .map_err(|e| PipelineError::Setup(e.into()))?,
    );
    let blocking: Vec<Finding> = setup::blocking(&findings).into_iter().cloned().collect();
    if !blocking.is_empty() {
        return Err(PipelineError::Preflight(blocking));
    }
    for f in findings.iter().filter(|f| f.status == setup::Status::Warn) {
        tracing::warn!(subject = %f.subject, detail = %f.detail, fix = f.fix.as_deref().unwrap_or(""), "preflight");
    }
    drop(source_client);

    let (mut appender, handle) = Appender::start_publishing(
        config.state_url()?,
        &config.appender,
        hub,
        shared.durable.clone(),
    )
    .await?;
    add_stages(&mut appender, &shared);
    let Shared {
        stats,
        mongo,
        outbox,
        appended,
        chunks,
        backfill_metrics,
        ..
    } = shared;
    appender.set_counts(appended);
    let pg_for_monitor = pg.clone();
    let source = PgSource::new(pg, handle.clone(), stats.clone()).with_backfills(chunks.clone());
    let checkpoint = appender.checkpoint(&source.checkpoint_key()).await?;
    let durable = handle.durable();
    // Mongo sources stop with the service, or when the Postgres source
    // stops (the appender can only finish once every source let go).
    let mongo_stop = shutdown.child_token();
    let mut mongo_tasks = Vec::new();
    for (cfg, status) in config.source.mongo.iter().zip(&mongo) {
        let source = MongoSource::new(cfg.clone(), handle.clone(), status.clone());
        let checkpoint = appender.checkpoint(&source.checkpoint_key()).await?;
        mongo_tasks.push(tokio::spawn(source.run(checkpoint, mongo_stop.clone())));
    }
    drop(handle);
    tracing::info!(
        commit_lsn = %crate::event::format_lsn(checkpoint.position.commit_lsn),
        ordinal = checkpoint.position.ordinal,
        complete = checkpoint.complete,
        "resuming from checkpoint"
    );

    let flush_deadline = CancellationToken::new();
    let appender_task = tokio::spawn(appender.run(flush_deadline.clone()));
    // The backfill runner and the monitor stop with the auxiliary sources.
    tokio::spawn(
        crate::backfill::runner::Runner {
            pg: pg_for_monitor.clone(),
            state_url: config.state_url()?.to_owned(),
            chunks,
            durable: durable.clone(),
            metrics: backfill_metrics,
        }
        .run(mongo_stop.clone()),
    );
    tokio::spawn(crate::source::postgres::monitor::run(
        pg_for_monitor,
        stats.clone(),
        mongo_stop.clone(),
    ));
    let source_task = tokio::spawn(source.run(checkpoint, shutdown.clone()));
    let intake = shutdown.clone();
    let task = tokio::spawn(run_sources(
        source_task,
        appender_task,
        flush_deadline,
        shutdown,
        mongo_stop,
        mongo_tasks,
    ));
    Ok(Pipeline {
        durable,
        stats,
        mongo,
        outbox,
        intake,
        task,
    })
}

type Task<E> = JoinHandle<Result<(), E>>;

/// What joins every append transaction, in order: backfill progress, then
/// the webhook outbox (a chunk's progress and the deliveries of its events
/// commit with them), then the publishers' waiters (told after COMMIT).
fn add_stages(appender: &mut Appender, shared: &Shared) {
    appender.add_stage(Arc::new(crate::backfill::progress::RecordProgress));
    appender.add_stage(Arc::new(shared.outbox.clone()));
    appender.add_stage(shared.publish_waiters.stage());
}

fn joined<E>(r: Result<Result<(), E>, tokio::task::JoinError>) -> Result<(), PipelineError>
where
    PipelineError: From<E>,
{
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(PipelineError::Task(e.to_string())),
    }
}

/// Stops the Mongo sources and waits for them; the first error wins.
async fn stop_mongo(
    stop: &CancellationToken,
    tasks: Vec<Task<MongoError>>,
) -> Result<(), PipelineError> {
    stop.cancel();
    let mut result = Ok(());
    for t in tasks {
        let r = joined(t.await);
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Waits for the sources and the appender, in the order that flushes
/// everything read: sources stop, then the appender drains its queue.
async fn run_sources(
    mut source_task: Task<SourceError>,
    mut appender_task: Task<LogError>,
    flush_deadline: CancellationToken,
    shutdown: CancellationToken,
    mongo_stop: CancellationToken,
    mongo_tasks: Vec<Task<MongoError>>,
) -> Result<(), PipelineError> {
    // Whichever ends first decides; the Postgres source ending means intake
    // stopped (on shutdown, or on a fatal error).
    let source_result = tokio::select! {
        r = &mut source_task => r,
        r = &mut appender_task => {
            // The appender ends cleanly only once every source handle is
            // gone, i.e. the sources have stopped: then their results
            // decide. It ends with an error on a fault: then stop them.
            let appended = joined(r);
            if appended.is_err() {
                shutdown.cancel();
            }
            let source = joined(source_task.await);
            let mongo = stop_mongo(&mongo_stop, mongo_tasks).await;
            return appended.and(source).and(mongo);
        }
    };
    // Intake has stopped: stop the other sources too, so every appender
    // handle is dropped; then the appender drains its queue and returns.
    let mongo = stop_mongo(&mongo_stop, mongo_tasks).await;
    let deadline = flush_deadline.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(FLUSH_DEADLINE).await;
        deadline.cancel();
    });
    let appended = joined(appender_task.await);
    timer.abort();
    appended.and(joined(source_result)).and(mongo)
}
