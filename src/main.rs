//! The `sluice` binary: parses the command line, starts logging, and hands
//! over to the library. Exit codes: 0 success, 1 runtime failure, 2 bad
//! configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// glibc's allocator spent a quarter of the ingest profile in malloc/free of
// short-lived event buffers; mimalloc's thread-local free lists do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Change-data-capture from Postgres into a tenant-isolated event log"
)]
struct Cli {
    /// TOML config file (every key can also be set as SLUICE_<KEY>).
    #[arg(long, short, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: replicate, normalize, append.
    Serve,
    /// Apply the log's schema migrations and exit.
    Migrate,
    /// Create the publication and replication slot (idempotent).
    Setup,
    /// Preflight: wal_level, privileges, publication, slot, and per table
    /// whether deletes can be attributed to a tenant.
    Check,
    /// Print the log as NDJSON on stdout (operator tool: reads the log directly).
    Tail {
        /// Only this tenant's events.
        #[arg(long)]
        tenant: Option<String>,
        /// First seq to print (inclusive; 0 and 1 both start at the beginning).
        #[arg(long, default_value_t = 1, value_parser = sluice::log::parse_from)]
        from: i64,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
    },
    /// Manage API keys (stored hashed in the state database).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Backfill a captured table: its existing rows become row.snapshot
    /// events, consistent with the change stream. The running `sluice
    /// serve` (the leader) reads it; this command records it and shows its
    /// progress.
    Backfill {
        /// The captured table, `schema.table`.
        #[arg(long)]
        table: String,
        /// Only rows matching this SQL predicate (checked before anything
        /// runs; read-only).
        #[arg(long = "where")]
        predicate: Option<String>,
        /// Rows per chunk (default 10000).
        // Negative numbers reach the range check (and its message), not
        // clap's "unexpected argument".
        #[arg(long, allow_negative_numbers = true)]
        chunk_size: Option<i32>,
        /// Pause between chunks, in milliseconds.
        #[arg(long, allow_negative_numbers = true)]
        throttle_ms: Option<i32>,
        /// Print the backfill's id and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Forget a MongoDB source's resume point, after its history was lost
    /// (ChangeStreamHistoryLost). The next start reads from the current
    /// time: changes in between are NOT in the log. Stop `sluice serve`
    /// first.
    MongoReset {
        /// The source's `name` in `source.mongo`.
        source: String,
        /// Required: confirms that the changes since the checkpoint are
        /// given up.
        #[arg(long)]
        accept_gap: bool,
    },
    /// Run a throwaway Postgres with a demo table and print events as changes happen.
    Demo {
        /// Keep running after the scripted changes (Ctrl-C to stop).
        #[arg(long)]
        keep_running: bool,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; it is printed once and only its hash is stored.
    Create {
        /// The tenant the key acts for (not for admin keys).
        #[arg(long)]
        tenant: Option<String>,
        /// anon (read/subscribe, browser-safe), service (its tenant's
        /// publish, webhooks, exports), admin (operator, cross-tenant), or
        /// a custom role of the policies (privilege anon).
        #[arg(long)]
        role: String,
        /// A label to recognise the key by.
        #[arg(long)]
        name: Option<String>,
        /// A claim for access policies, name=value (repeatable); a value
        /// with a comma is an array of strings, `name=` the empty string.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        /// A claim whose value is any JSON, name=<json> (repeatable).
        #[arg(long = "claim-json", value_name = "NAME=JSON")]
        claims_json: Vec<String>,
    },
    /// List keys (never the keys themselves: their prefixes).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id: new requests fail at once, open streams end
    /// within auth.revocation_check_secs.
    Revoke { id: i64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice::cli::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = cli.config.as_deref();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => sluice::cli::serve(config).await,
            Command::Migrate => sluice::cli::migrate(config).await,
            Command::Setup => sluice::cli::setup(config).await,
            Command::Check => sluice::cli::check(config).await,
            Command::Tail {
                tenant,
                from,
                follow,
            } => sluice::cli::tail(config, tenant, from, follow).await,
            Command::Backfill {
                table,
                predicate,
                chunk_size,
                throttle_ms,
                no_wait,
            } => {
                let req = sluice::backfill::Request {
                    table,
                    predicate,
                    chunk_size,
                    throttle_ms,
                };
                sluice::cli::backfill(config, req, no_wait).await
            }
            Command::MongoReset { source, accept_gap } => {
                sluice::cli::mongo_reset(config, &source, accept_gap).await
            }
            Command::Keys { action } => match action {
                KeysAction::Create {
                    tenant,
                    role,
                    name,
                    claims,
                    claims_json,
                } => {
                    sluice::cli::keys::create(config, tenant, role, name, &claims, &claims_json)
                        .await
                }
                KeysAction::List { tenant } => sluice::cli::keys::list(config, tenant).await,
                KeysAction::Revoke { id } => sluice::cli::keys::revoke(config, id).await,
            },
            Command::Demo { keep_running } => sluice::cli::demo(keep_running).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {}", sluice::pgconn::error_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
