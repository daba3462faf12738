//! `sluice serve`: the pipeline (source → appender → log), the live hub, the
//! HTTP API and retention, started together and stopped in order.
//!
//! Shutdown order: stop intake and flush the log (the pipeline), then end
//! open streams with their resume position and stop accepting requests,
//! then stop retention.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Authenticator};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::leader::{self, Leadership, Role};
use crate::pipeline::{self, PipelineError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("authentication setup: {0}")]
    Auth(#[from] AuthError),
    #[error("cannot create the state database pool: {0}")]
    Pool(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Http(String),
    #[error("cannot reconcile the webhook endpoints declared in the configuration: {0}")]
    Declared(String),
}

/// A running server.
pub struct Server {
    /// Where the HTTP API listens (useful with port 0).
    pub addr: SocketAddr,
    pub state: AppState,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|e| ServerError::Http(e.to_string()))?
    }
}

/// A pool of state-database connections.
pub fn pool(url: &str, size: usize) -> Result<deadpool_postgres::Pool, ServerError> {
    pool_with(url, size, None)
}

/// What live queries read: the source (its own connections for the reads,
/// the publish pool for the heartbeat) and the log.
fn live_config(
    config: &Config,
    source: &deadpool_postgres::Pool,
    log: &deadpool_postgres::Pool,
    durable: &tokio::sync::watch::Receiver<Arc<crate::log::Durable>>,
) -> Result<crate::deliver::live::LiveConfig, ServerError> {
    let pg = config.postgres().map_err(PipelineError::from)?;
    Ok(crate::deliver::live::LiveConfig {
        source_url: pg.url.clone(),
        source: source.clone(),
        log: log.clone(),
        durable: durable.clone(),
        event_source: pg.event_source(),
        checkpoint_key: pg.checkpoint_key(),
        max_rows: config.http.max_snapshot_rows,
        share: Duration::from_millis(config.http.live_share_ms),
        statement_timeout_ms: pg.backfill_statement_timeout_ms,
        tables: pg
            .tables
            .iter()
            .map(|t| (t.table.clone(), t.into()))
            .collect(),
    })
}

/// A pool whose connections run with `options` (`-c name=value …`).
pub fn pool_with(
    url: &str,
    size: usize,
    options: Option<&str>,
) -> Result<deadpool_postgres::Pool, ServerError> {
    let mut session = crate::pgconn::Session::named("sluice-http");
    if let Some(o) = options {
        session = session.with_options(o);
    }
    let mgr = crate::pgconn::pool_manager(
        url,
        session,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    )
    .map_err(|e| ServerError::Pool(e.to_string()))?;
    deadpool_postgres::Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| ServerError::Pool(e.to_string()))
}

/// Pending connections the kernel queues before `accept` (the default,
/// 128, drops connects in a reconnect storm of thousands of clients).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Applies the webhook endpoints the configuration declares, and says
/// what changed (`webhooks::declared`).
async fn reconcile_declared(config: &Config, state_url: &str) -> Result<(), ServerError> {
    let declared = config.declared_webhooks().map_err(PipelineError::from)?;
    let mut client = crate::log::connect(state_url)
        .await
        .map_err(|e| ServerError::Declared(crate::pgconn::error_chain(&e)))?;
    let report = crate::webhooks::declared::reconcile(
        &mut client,
        &declared,
        config.webhooks.secret_overlap_secs as f64,
    )
    .await
    .map_err(|e| ServerError::Declared(crate::pgconn::describe(&e)))?;
    for e in &report.created {
        tracing::info!(endpoint = %e, "declared webhook endpoint created");
    }
    for e in &report.updated {
        tracing::info!(endpoint = %e, "declared webhook endpoint updated");
    }
    for e in &report.disabled {
        tracing::warn!(endpoint = %e, "webhook endpoint removed from the configuration: disabled (not deleted; delete it through the API once no longer needed)");
    }
    Ok(())
}

/// Starts everything; `shutdown` stops it.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Server, ServerError> {
    let config = Arc::new(config);
    let hub = Hub::new(config.hub.subscriber_queue);
    let intake = CancellationToken::new();
    let state_url = config.state_url().map_err(PipelineError::from)?.to_owned();
    // Standbys serve the log too: its schema must exist before anything.
    pipeline::migrate(&config).await?;
    reconcile_declared(&config, &state_url).await?;
    let shared = pipeline::Shared::new(&config);
    let role = Arc::new(Role::default());
    let durable = shared.durable.subscribe();
    // The first process to take the leader lock runs the sources now, so
    // start-up errors (preflight, connection) stop `serve` at once; one
    // that finds the lock taken stands by.
    let lock = leader::try_lock(&state_url)
        .await
        .map_err(|source| PipelineError::Connect {
            what: "state",
            source,
        })?;
    let running = match &lock {
        Some(_) => Some(
            pipeline::start_with(
                &config,
                intake.child_token(),
                Some(hub.clone()),
                shared.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let policies = Arc::new(config.compiled_policies().map_err(PipelineError::from)?);
    let auth =
        Arc::new(Authenticator::new(&state_url, &config.auth, &policies.custom_roles()).await?);
    let streams = CancellationToken::new();
    let state_pool = pool(&state_url, config.http.db_pool_size)?;
    let publish_pool = pool(
        &config.postgres().map_err(PipelineError::from)?.url,
        config.http.db_pool_size,
    )?;
    let live = Arc::new(crate::deliver::live::Live::new(live_config(
        &config,
        &publish_pool,
        &state_pool,
        &durable,
    )?));
    let state = AppState {
        config: config.clone(),
        pool: state_pool,
        hub,
        auth,
        durable,
        source: shared.stats.clone(),
        mongo: shared.mongo.clone(),
        role: role.clone(),
        appended: shared.appended.clone(),
        backfill_metrics: shared.backfill_metrics.clone(),
        metrics: Arc::default(),
        shutdown: streams.clone(),
        outbox: shared.outbox.clone(),
        webhook_metrics: Arc::default(),
        publish_pool,
        publish_waiters: shared.publish_waiters.clone(),
        live,
        groups: Arc::new(crate::groups::Groups::new(policies.clone())),
        groups_pool: pool_with(
            &state_url,
            config.http.db_pool_size,
            Some("-c synchronous_commit=off"),
        )?,
        policies,
    };
    let dispatcher = crate::webhooks::dispatch::Dispatcher::new(
        // Asynchronous commit: a dispatcher write lost to a Postgres crash
        // only means a delivery is sent again (at least once holds), and
        // it spares every claim and record a WAL flush.
        pool_with(&state_url, 4, Some("-c synchronous_commit=off"))?,
        &shared.outbox,
        &config.webhooks,
        state.webhook_metrics.clone(),
    )
    .map_err(ServerError::Pool)?;
    let dispatch_stop = CancellationToken::new();
    let dispatch_task = tokio::spawn(dispatcher.run(dispatch_stop.clone()));
    let listener = listen(&config.http.listen).map_err(|source| ServerError::Listen {
        addr: config.http.listen.clone(),
        source,
    })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.http.listen.clone(),
            source,
        })?;
    tracing::info!(%addr, "http api listening");
    let http_stop = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(listener, state.clone(), http_stop.clone()));
    let retention_stop = CancellationToken::new();
    let retention_task = tokio::spawn(crate::log::retention::run(
        state_url,
        Duration::from_secs(config.log.retention_hours.saturating_mul(3600)),
        Duration::from_secs(config.log.prune_interval_secs),
        retention_stop.clone(),
    ));
    let leadership = Leadership {
        config: config.clone(),
        hub: state.hub.clone(),
        shared,
        role,
    };
    let leading = tokio::spawn(leadership.run(lock, running, intake.clone()));
    let task = tokio::spawn(async move {
        let mut flushed = Box::pin(async move {
            leading
                .await
                .map_err(|e| PipelineError::Task(e.to_string()))?
        });
        let pipeline_result = tokio::select! {
            _ = shutdown.cancelled() => {
                intake.cancel();
                flushed.await
            }
            r = &mut flushed => r,
        };
        streams.cancel();
        http_stop.cancel();
        let http_result = http_task.await;
        retention_stop.cancel();
        let _ = retention_task.await;
        dispatch_stop.cancel();
        let _ = dispatch_task.await;
        pipeline_result?;
        match http_result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Http(e.to_string())),
            Err(e) => Err(ServerError::Http(e.to_string())),
        }
    });
    Ok(Server { addr, state, task })
}
