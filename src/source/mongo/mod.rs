//! The MongoDB source: one database-level change stream per configured
//! source, filtered to its collections and to changes whose tenant can be
//! read, normalized into the same envelope and the same log as Postgres
//! changes. The resume token is the checkpoint, stored in the transaction
//! that appends the events it covers.

pub mod change_stream;
#[cfg(test)]
mod fixtures;
pub mod normalize;
pub mod stream;
pub mod value;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::Mutex;

/// How many notable conditions (drops, renames, invalidations) are kept
/// for `/readyz`.
const CONDITIONS_KEPT: usize = 8;

/// A Mongo source's state, shared with `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct MongoStatus {
    pub name: String,
    pub streaming: AtomicBool,
    pub reconnects: AtomicU64,
    pub events: AtomicU64,
    /// Changes with no usable tenant value: delivered to no one.
    pub dropped_no_tenant: AtomicU64,
    /// Deletes with no pre-image and no tenant in the key: delivered to no
    /// one.
    pub dropped_delete_without_pre_image: AtomicU64,
    /// Malformed or unsupported change events.
    pub dropped_other: AtomicU64,
    /// Wall time (µs since the Unix epoch) of the last change read.
    pub last_change_micros: AtomicI64,
    /// Why the source cannot stream and will not recover by itself (for
    /// example its resume point fell off the oplog). `/readyz` fails.
    pub stuck: Mutex<Option<String>>,
    /// The last transient error, cleared when streaming resumes.
    pub last_error: Mutex<Option<String>>,
    /// Recent notable conditions, newest last.
    pub conditions: Mutex<Vec<String>>,
}

impl MongoStatus {
    pub fn new(name: &str) -> MongoStatus {
        MongoStatus {
            name: name.to_owned(),
            ..MongoStatus::default()
        }
    }

    pub fn note(&self, condition: String) {
        let mut c = self.conditions.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() == CONDITIONS_KEPT {
            c.remove(0);
        }
        c.push(condition);
    }

    pub fn conditions(&self) -> Vec<String> {
        self.conditions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stuck(&self) -> Option<String> {
        self.stuck.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(slot: &Mutex<Option<String>>, v: Option<String>) {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}
