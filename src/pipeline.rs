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
        source: tokio_postgres::Error,
    },
    #[error("setting up the publication and slot failed: {0}")]
    Setup(tokio_postgres::Error),
    #[error("preflight failed; refusing to start:\n{}", list(.0))]
    Preflight(Vec<Finding>),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("source stopped: {0}")]
    Source(#[from] SourceError),
    #[error("a pipeline task failed: {0}")]
    Task(String),
}

fn list(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running pipeline.
pub struct Pipeline {
    pub durable: watch::Receiver<Arc<Durable>>,
    pub stats: Arc<SourceStats>,
    /// The webhook outbox the appender writes (for the dispatcher).
    pub outbox: crate::webhooks::Outbox,
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

/// Prepares everything and starts streaming; committed events also go live
/// to `hub` when one is given.
pub async fn start(
    config: &Config,
    shutdown: CancellationToken,
    hub: Option<Arc<Hub>>,
) -> Result<Pipeline, PipelineError> {
    let pg = config.postgres()?.clone();
    migrate(config).await?;
    let source_client = log::connect(&pg.url)
        .await
        .map_err(|source| PipelineError::Connect {
            what: "source",
            source,
        })?;
    for line in setup::setup(&source_client, &pg)
        .await
        .map_err(PipelineError::Setup)?
    {
        tracing::info!(action = %line, "setup");
    }
    let findings = setup::check(&source_client, &pg)
        .await
        .map_err(PipelineError::Setup)?;
    let blocking: Vec<Finding> = setup::blocking(&findings).into_iter().cloned().collect();
    if !blocking.is_empty() {
        return Err(PipelineError::Preflight(blocking));
    }
    for f in findings.iter().filter(|f| f.status == setup::Status::Warn) {
        tracing::warn!(subject = %f.subject, detail = %f.detail, fix = f.fix.as_deref().unwrap_or(""), "preflight");
    }
    drop(source_client);

    let (mut appender, handle) =
        Appender::start(config.state_url()?, &config.appender, hub).await?;
    let outbox = crate::webhooks::Outbox::new();
    appender.set_outbox(outbox.clone());
    let stats = Arc::new(SourceStats::default());
    let source = PgSource::new(pg, handle.clone(), stats.clone());
    let checkpoint = appender.checkpoint(&source.checkpoint_key()).await?;
    let durable = handle.durable();
    drop(handle);
    tracing::info!(
        commit_lsn = %crate::event::format_lsn(checkpoint.position.commit_lsn),
        ordinal = checkpoint.position.ordinal,
        complete = checkpoint.complete,
        "resuming from checkpoint"
    );

    let flush_deadline = CancellationToken::new();
    let appender_task = tokio::spawn(appender.run(flush_deadline.clone()));
    let source_task = tokio::spawn(source.run(checkpoint, shutdown.clone()));
    let task = tokio::spawn(async move {
        let mut appender_task = appender_task;
        let mut source_task = source_task;
        // Whichever ends first decides; a source ending means intake stopped.
        let source_result = tokio::select! {
            r = &mut source_task => r,
            r = &mut appender_task => {
                // The appender ends cleanly only once every source handle is
                // gone, i.e. the source has stopped: then its result decides.
                // It ends with an error on a fault: then stop the source.
                let appended = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(PipelineError::Log(e)),
                    Err(e) => Some(PipelineError::Task(e.to_string())),
                };
                if appended.is_some() {
                    shutdown.cancel();
                }
                let source = source_task.await;
                return match (appended, source) {
                    (Some(e), _) => Err(e),
                    (None, Ok(Ok(()))) => Ok(()),
                    (None, Ok(Err(e))) => Err(e.into()),
                    (None, Err(e)) => Err(PipelineError::Task(e.to_string())),
                };
            }
        };
        // Intake has stopped (the source task dropped its appender handle),
        // so the appender drains its queue and returns.
        let deadline = flush_deadline.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(FLUSH_DEADLINE).await;
            deadline.cancel();
        });
        let appended = appender_task.await;
        timer.abort();
        match appended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(PipelineError::Task(e.to_string())),
        }
        match source_result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(PipelineError::Task(e.to_string())),
        }
    });
    Ok(Pipeline {
        durable,
        stats,
        outbox,
        task,
    })
}
