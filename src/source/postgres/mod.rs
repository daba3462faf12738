//! The PostgreSQL logical-replication source (pgoutput, protocol version 1).
//!
//! `pgoutput` decodes bytes, `value` maps text forms to JSON, `normalize`
//! turns changes into tenant-tagged events (all three pure), `watermark`
//! keeps backfill windows (pure), `messages` names the logical-message
//! prefixes; `catalog`, `setup`, `monitor` and `stream` are the I/O edges.

pub mod catalog;
pub mod messages;
pub mod monitor;
pub mod normalize;
pub mod pgoutput;
pub mod setup;
pub mod staging;
pub mod stats;
pub mod stream;
pub mod value;
mod watermark;
