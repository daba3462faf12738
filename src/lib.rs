//! Sluice: change-data-capture from PostgreSQL (pgoutput) and MongoDB
//! change streams into a durable, tenant-isolated event log, delivered over
//! SSE, WebSocket, NDJSON and webhooks.
//!
//! The modules follow the data, bottom to top:
//! - `event` (the envelope and its contract types), `config`, `pgconn` (every
//!   Postgres connection), `sql` (quoting);
//! - `source` reads and decodes changes (`source::postgres`: pgoutput,
//!   values, normalize, the replication stream and backfill watermarks;
//!   `source::mongo`), `backfill` reads existing rows in chunks;
//! - `log` appends (one writer, stages joining its transaction) and reads
//!   the durable log; `hub` fans committed events out live;
//! - `subscription` (topics, filters), `auth` (keys, JWTs), `deliver` (the
//!   follower and the SSE / NDJSON / WebSocket transports), `webhooks` (outbox,
//!   dispatch, signatures);
//! - `http` (the API, the top layer), `pipeline` / `server` / `leader` (start-up,
//!   shutdown, HA) and `cli` (one function per command).
//!
//! ARCHITECTURE.md has the code map with each module's invariant and
//! boundary.

pub mod auth;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod event;
pub(crate) mod groups;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod leader;
pub mod log;
pub(crate) mod metrics;
pub mod pgconn;
pub mod pgrepl;
pub mod pipeline;
pub(crate) mod policy;
pub mod server;
pub mod source;
pub(crate) mod sql;
pub(crate) mod subscription;
pub mod webhooks;
