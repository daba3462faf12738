//! Delivery of the log to clients: the transport logic of SSE, NDJSON
//! tails and exports, and WebSocket sessions (frames, sessions, following
//! the log), plus publishing a custom event. Every path reads the same
//! envelopes, scoped to the tenant of the credential.
//!
//! Boundary: no HTTP here (no axum extractors, routers or `AppState`).
//! `http` authenticates and parses a request, then hands a session what it
//! needs: a [`Streams`] context, the tenant, a selector, a start position
//! and the credential's watch.

pub mod follow;
pub mod live;
pub mod live_top;
pub mod ndjson;
pub mod publish;
pub mod sse;
pub mod waiters;
pub mod ws;
pub mod ws_protocol;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::event::TenantId;
use crate::hub::Hub;
use crate::log::Durable;
use crate::metrics::HttpMetrics;
use crate::policy::Access;
use follow::{Follower, Start};

/// What every stream needs from the process: where to read the log, the
/// live hub, the durable head, the counters it keeps, and when to stop.
#[derive(Clone)]
pub struct Streams {
    /// The state database (the log).
    pub pool: deadpool_postgres::Pool,
    pub hub: Arc<Hub>,
    pub durable: watch::Receiver<Arc<Durable>>,
    pub metrics: Arc<HttpMetrics>,
    /// Fires on shutdown: open streams end with their resume position.
    pub shutdown: CancellationToken,
    /// Most log rows one read returns (`http.page_limit`).
    pub page_limit: i64,
    /// Silence after which a stream sends a keepalive (`http.heartbeat_secs`).
    pub heartbeat: Duration,
}

impl Streams {
    /// A follower of `tenant`'s events as `access` shows them, from `start`.
    pub fn follower(&self, tenant: TenantId, access: Arc<Access>, start: Start) -> Follower {
        Follower::new(
            self.hub.clone(),
            self.pool.clone(),
            self.durable.clone(),
            tenant,
            access,
            start,
            self.page_limit,
        )
    }
}
