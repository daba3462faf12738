//! The commands behind the `sluice` binary. Each loads the config, does one
//! job, and returns a [`CliError`] that `main` turns into an exit code.

mod demo;
pub mod keys;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::event::{TenantError, TenantId};
use crate::log::{self, ReadScope};
use crate::pipeline::{self, PipelineError};
use crate::source::postgres::setup::{self, Status};

pub use demo::demo;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error("database: {0}")]
    Db(#[from] crate::pgconn::PgError),
    #[error("{doing}: {source}")]
    Doing {
        doing: &'static str,
        source: crate::pgconn::PgError,
    },
    #[error("--tenant: {0}")]
    Tenant(#[from] TenantError),
    #[error("preflight found {0} problem(s) that stop `sluice serve`")]
    CheckFailed(usize),
    #[error("{0}")]
    Demo(String),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("seq {} is older than the log's retention; the oldest available is {}: pass --from {}", .0.requested, .0.oldest, .0.oldest)]
    Gap(log::Gap),
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
}

impl From<tokio_postgres::Error> for CliError {
    fn from(e: tokio_postgres::Error) -> Self {
        CliError::Db(e.into())
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_)
            | CliError::Tenant(_)
            | CliError::Usage(_)
            | CliError::Pipeline(PipelineError::Config(_))
            | CliError::Server(crate::server::ServerError::Pipeline(PipelineError::Config(_)))
            | CliError::Auth(crate::auth::AuthError::InvalidKeyRequest(_)) => 2,
            _ => 1,
        }
    }
}

/// Logs go to stderr (stdout carries NDJSON for `tail`). `SLUICE_LOG` sets
/// the filter (default `info`), `SLUICE_LOG_FORMAT=json` the format. Colour
/// only on a terminal (a file, a pipe or a log collector gets plain text),
/// and never with `NO_COLOR` set.
pub fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if std::env::var("SLUICE_LOG_FORMAT").as_deref() == Ok("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested; stopping intake and flushing the log");
        token.cancel();
    });
}

pub async fn serve(config: Option<&Path>) -> Result<(), CliError> {
    let config = Config::from_process(config)?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let server = crate::server::start(config, shutdown).await?;
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// `sluice backfill --table …`: validates and records the backfill, then
/// follows its progress (a bar on a terminal, a line every few seconds
/// otherwise) until it ends.
pub async fn backfill(
    config: Option<&Path>,
    req: crate::backfill::Request,
    no_wait: bool,
) -> Result<(), CliError> {
    use crate::backfill::BackfillError;
    use std::io::IsTerminal;
    let config = Config::from_process(config)?;
    let pg = config.postgres()?;
    let (state, _) = pipeline::migrated_state(&config).await?;
    let source = log::connect(&pg.url).await?;
    let b = crate::backfill::create(&state, &source, pg, &req, "backfill")
        .await
        .map_err(|e| match e {
            BackfillError::Db(e) => CliError::Db(e),
            other => CliError::Usage(other.to_string()),
        })?;
    let estimate = b.rows_estimated.map_or_else(
        || "an unknown number of".to_owned(),
        |n| format!("about {n}"),
    );
    println!(
        "backfill {} of {} created ({estimate} rows); subscribe from seq {} to get the table from its beginning",
        b.id, b.table, b.from_seq
    );
    if no_wait {
        return Ok(());
    }
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let mut warned = false;
    loop {
        let now = crate::backfill::get(&state, b.id)
            .await
            .map_err(|e| match e {
                BackfillError::Db(e) => CliError::Db(e),
                other => CliError::Usage(other.to_string()),
            })?;
        let total = now.rows_estimated.unwrap_or(0).max(now.rows_read).max(1);
        let pct = (now.rows_read as f64 / total as f64 * 100.0).min(100.0);
        if terminal {
            let filled = (pct / 5.0) as usize;
            eprint!(
                "
[{}{}] {:5.1}%  {}/{} rows, {} chunks ",
                "#".repeat(filled),
                " ".repeat(20 - filled.min(20)),
                pct,
                now.rows_read,
                now.rows_estimated.map_or("?".to_owned(), |n| n.to_string()),
                now.chunks
            );
        } else if last_line.elapsed() >= Duration::from_secs(5) || now.status != "running" {
            last_line = std::time::Instant::now();
            eprintln!(
                "backfill {}: {} rows read, {} chunks, {}",
                now.id, now.rows_read, now.chunks, now.status
            );
        }
        match now.status.as_str() {
            "done" => {
                if terminal {
                    eprintln!();
                }
                println!(
                    "backfill {} done: {} rows read, {} snapshot events",
                    now.id, now.rows_read, now.rows_emitted
                );
                return Ok(());
            }
            "running" => {}
            other => {
                if terminal {
                    eprintln!();
                }
                return Err(CliError::Demo(format!(
                    "backfill {} {other}: {}",
                    now.id,
                    now.error.unwrap_or_default()
                )));
            }
        }
        if now.chunks == 0 && !warned && last_line.elapsed() >= Duration::from_secs(10) {
            warned = true;
            eprintln!("(no chunk yet: is `sluice serve` running? The leader runs backfills.)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `sluice mongo-reset <source> --accept-gap`: removes the source's
/// checkpoint so that its next start begins at the current time.
pub async fn mongo_reset(
    config: Option<&Path>,
    source: &str,
    accept_gap: bool,
) -> Result<(), CliError> {
    let config = Config::from_process(config)?;
    let Some(m) = config.source.mongo.iter().find(|m| m.name == source) else {
        let known: Vec<&str> = config
            .source
            .mongo
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        return Err(CliError::Usage(format!(
            "no MongoDB source named {source:?} in source.mongo (configured: {known:?})"
        )));
    };
    if !accept_gap {
        return Err(CliError::Usage(
            "this gives up every change between the checkpoint and now; pass --accept-gap to confirm"
                .into(),
        ));
    }
    let (client, _) = pipeline::migrated_state(&config).await?;
    let key = m.checkpoint_key();
    let row = client
        .query_opt(
            "DELETE FROM sluice.checkpoints WHERE source = $1 RETURNING resume_token, updated_at",
            &[&key],
        )
        .await?;
    match row {
        Some(r) => {
            let token: Option<Vec<u8>> = r.get(0);
            let at: chrono::DateTime<chrono::Utc> = r.get(1);
            let token = token.map_or_else(
                || "none".to_owned(),
                |t| crate::source::mongo::change_stream::describe_token(&t),
            );
            tracing::warn!(source = %key, %token, checkpointed_at = %at, "mongo checkpoint removed; the next start reads from the current time");
            println!(
                "removed the checkpoint of {key} (resume token {token}, written {at}); \
                 the next start reads from the current time, and changes since {at} are not in the log"
            );
        }
        None => println!("{key} has no checkpoint; the next start reads from the current time"),
    }
    Ok(())
}

pub async fn migrate(config: Option<&Path>) -> Result<(), CliError> {
    let config = Config::from_process(config)?;
    let applied = pipeline::migrate(&config).await?;
    if applied.is_empty() {
        println!("the log's schema is up to date");
    } else {
        println!("applied migrations {applied:?}");
    }
    Ok(())
}

async fn source_client(config: &Config) -> Result<tokio_postgres::Client, CliError> {
    let pg = config.postgres()?;
    log::connect(&pg.url).await.map_err(|source| {
        PipelineError::Connect {
            what: "source",
            source,
        }
        .into()
    })
}

pub async fn setup(config: Option<&Path>) -> Result<(), CliError> {
    let config = Config::from_process(config)?;
    let client = source_client(&config).await?;
    let done = setup::setup(&client, config.postgres()?)
        .await
        .map_err(PipelineError::Setup)?;
    if done.is_empty() {
        println!("publication and slot already set up");
    }
    for line in done {
        println!("{line}");
    }
    Ok(())
}

pub async fn check(config: Option<&Path>) -> Result<(), CliError> {
    let config = Config::from_process(config)?;
    let client = source_client(&config).await?;
    let mut findings = setup::check(&client, config.postgres()?)
        .await
        .map_err(|e| CliError::Doing {
            doing: "running the preflight checks",
            source: e.into(),
        })?;
    findings.extend(
        crate::policy::catalog::check(&client, &config)
            .await
            .map_err(|e| CliError::Doing {
                doing: "checking the access policies",
                source: e.into(),
            })?,
    );
    match log::connect(config.state_url()?).await {
        Ok(state) => {
            findings.extend(
                setup::check_state(&state)
                    .await
                    .map_err(|e| CliError::Doing {
                        doing: "checking the state database",
                        source: e.into(),
                    })?,
            )
        }
        Err(e) => findings.push(setup::Finding {
            status: Status::Fail,
            subject: "state database".into(),
            detail: format!("cannot connect: {e}"),
            fix: Some("check state.url (by default source.postgres.url)".into()),
        }),
    }
    for f in &findings {
        println!("{f}");
    }
    let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
    if failed > 0 {
        return Err(CliError::CheckFailed(failed));
    }
    Ok(())
}

pub async fn tail(
    config: Option<&Path>,
    tenant: Option<String>,
    from: i64,
    follow: bool,
) -> Result<(), CliError> {
    let config = Config::from_process(config)?;
    let scope = match tenant {
        Some(t) => ReadScope::Tenant(TenantId::new(&t)?),
        None => ReadScope::Operator,
    };
    let url = config.state_url()?.to_owned();
    let client = log::connect(&url)
        .await
        .map_err(|source| PipelineError::Connect {
            what: "state",
            source,
        })?;
    let stdout = std::io::stdout();
    let mut next = from;
    loop {
        // Checked before every read, as a follower does: pruning while
        // `--follow` waits is a gap too, never a silent skip.
        if let Some(gap) = log::gap_at(&client, next).await? {
            return Err(CliError::Gap(gap));
        }
        let events = log::read_events(&client, &scope, next, 1000).await?;
        let mut out = stdout.lock();
        for e in &events {
            let written = out.write_all(&e.body).and_then(|()| out.write_all(b"\n"));
            if let Err(err) = written {
                // A closed pipe (`sluice tail | head`) is a normal end.
                if err.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(CliError::Stdout(err));
            }
            next = e.seq + 1;
        }
        if let Err(err) = out.flush() {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(CliError::Stdout(err));
        }
        drop(out);
        if events.is_empty() {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
