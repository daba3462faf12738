//! Sluice: change-data-capture from PostgreSQL (pgoutput) into a durable,
//! tenant-isolated event log.
//!
//! The modules follow the pipeline: `source` reads and decodes changes,
//! `event` is the envelope, `log` appends and reads the durable log,
//! `pipeline` wires them together for `sluice serve`.

pub mod auth;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod event;
pub mod http;
pub mod hub;
pub mod leader;
pub mod log;
pub mod metrics;
pub mod pgconn;
pub mod pipeline;
pub mod server;
pub mod source;
pub mod sql;
pub mod subscription;
pub mod webhooks;
