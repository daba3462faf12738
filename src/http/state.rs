//! `AppState`: what every handler may use. Built once by `server`; the
//! handlers hand the few parts a transport needs to the domain code below
//! (`deliver`, `webhooks`, `backfill`), which never sees this type.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::deliver::Streams;
use crate::hub::Hub;
use crate::log::Durable;
use crate::source::postgres::stats::SourceStats;

/// Everything a handler may use.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: deadpool_postgres::Pool,
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub durable: watch::Receiver<Arc<Durable>>,
    pub source: Arc<SourceStats>,
    /// One per configured MongoDB source.
    pub mongo: Vec<Arc<crate::source::mongo::MongoStatus>>,
    /// Whether this process leads (runs the sources) or stands by.
    pub role: Arc<crate::leader::Role>,
    /// Events this process appended, per source and type.
    pub appended: Arc<crate::log::AppendCounts>,
    pub backfill_metrics: Arc<crate::backfill::runner::BackfillMetrics>,
    pub metrics: Arc<crate::metrics::HttpMetrics>,
    /// Fires on shutdown: open streams end with their resume position.
    pub shutdown: CancellationToken,
    /// The webhook outbox (to wake the dispatcher after a replay).
    pub outbox: crate::webhooks::Outbox,
    pub webhook_metrics: Arc<crate::webhooks::dispatch::WebhookMetrics>,
    /// Connections to the source database, for publishing custom events.
    pub publish_pool: deadpool_postgres::Pool,
    /// Publishers waiting for their events, told by this process's appender.
    pub publish_waiters: Arc<crate::deliver::waiters::Waiters>,
    /// Live queries (current rows, then changes).
    pub live: Arc<crate::deliver::live::Live>,
    /// The access policies (compiled from `config.policies`).
    pub policies: Arc<crate::policy::Policies>,
    /// Consumer groups.
    pub groups: Arc<crate::groups::Groups>,
    /// The state database with asynchronous commit, for consumer groups'
    /// receives and acknowledgements: one lost to a Postgres crash only
    /// means a delivery comes again (at least once holds), and each spares
    /// a WAL flush.
    pub groups_pool: deadpool_postgres::Pool,
}

impl AppState {
    /// A connection to the state database, or the 503 every handler
    /// answers when there is none.
    pub async fn state_db(&self) -> Result<deadpool_postgres::Object, super::ApiError> {
        self.db("the state database").await
    }

    /// [`AppState::state_db`] for reading the log (its 503 says "the log").
    pub async fn log_db(&self) -> Result<deadpool_postgres::Object, super::ApiError> {
        self.db("the log").await
    }

    async fn db(&self, what: &str) -> Result<deadpool_postgres::Object, super::ApiError> {
        self.pool
            .get()
            .await
            .map_err(|e| super::ApiError::unavailable(what, &e))
    }

    /// The captured tables (`schema.table`).
    pub fn captured_tables(&self) -> Vec<String> {
        self.config.captured_tables()
    }

    /// What `identity` sees of what `selector` asks for: its policy, then
    /// the selector. A 403 when the policy lets nothing through at all, or
    /// the selector names a table or collection the policy denies it (an
    /// empty stream would look like a quiet table).
    pub fn access(
        &self,
        identity: &crate::auth::Identity,
        selector: crate::subscription::Selector,
    ) -> Result<crate::policy::Access, super::ApiError> {
        let viewer = self.policies.viewer(identity);
        crate::policy::check_selector(&viewer, &selector, &identity.policy_role)
            .map_err(super::ApiError::forbidden)?;
        Ok(crate::policy::Access {
            viewer,
            selector,
            membership: false,
        })
    }

    /// The table of a live query: exactly one `table` (`param` names the
    /// parameter in errors) and no other topic or collection.
    pub fn live_table(
        &self,
        param: &str,
        tables: &[String],
        others: usize,
    ) -> Result<crate::deliver::live::LiveTable, super::ApiError> {
        let [table] = tables else {
            return Err(super::ApiError::bad_param(
                param,
                format!(
                    "a live query (snapshot=true) reads exactly one table; {} given",
                    tables.len()
                ),
            ));
        };
        if others > 0 {
            return Err(super::ApiError::bad_param(
                param,
                "a live query (snapshot=true) takes one table and no topic or collection",
            ));
        }
        self.live.table(table).ok_or_else(|| {
            super::ApiError::bad_param(
                param,
                format!(
                    "unknown table {table:?}; captured tables: {}",
                    self.captured_tables().join(", ")
                ),
            )
        })
    }

    /// A top-N live query's spec from `order_by` and `limit` (`limit_param`
    /// names the limit in errors), if one was asked for.
    pub fn top_spec(
        &self,
        order_by: Option<&str>,
        limit: Option<i64>,
        snapshot: bool,
        limit_param: &str,
    ) -> Result<Option<crate::deliver::live_top::TopSpec>, super::ApiError> {
        let Some(order_by) = order_by else {
            if limit.is_some() && snapshot {
                return Err(super::ApiError::bad_param(
                    limit_param,
                    "limit in a live query needs order_by (a top-N query)",
                ));
            }
            return Ok(None);
        };
        if !snapshot {
            return Err(super::ApiError::bad_param(
                "order_by",
                "order_by is for live queries: add snapshot=true",
            ));
        }
        crate::deliver::live_top::TopSpec::parse(order_by, limit, self.config.http.max_top_rows)
            .map(Some)
            .map_err(|m| {
                let param = if m.starts_with("limit") || m.contains("needs limit") {
                    limit_param
                } else {
                    "order_by"
                };
                super::ApiError::bad_param(param, m)
            })
    }

    /// What publishing custom events needs.
    pub fn publisher(&self) -> crate::deliver::publish::Publisher {
        crate::deliver::publish::Publisher {
            source: self.publish_pool.clone(),
            log: self.pool.clone(),
            durable: self.durable.clone(),
            waiters: self.publish_waiters.clone(),
        }
    }

    /// The log's last seq now.
    pub fn head(&self) -> i64 {
        self.durable.borrow().last_seq
    }

    /// What the streams of `deliver` need from this state.
    pub fn streams(&self) -> Streams {
        Streams {
            pool: self.pool.clone(),
            hub: self.hub.clone(),
            durable: self.durable.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            page_limit: self.config.http.page_limit,
            heartbeat: Duration::from_secs(self.config.http.heartbeat_secs.max(1)),
        }
    }
}
