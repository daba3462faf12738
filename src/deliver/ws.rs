//! WebSocket sessions (`GET /v1/ws`, upgraded by `http::ws`): many
//! subscriptions and publishing on one connection. The messages are in
//! `ws_protocol`; this is the session.
//!
//! Each subscription runs its own `Follower` (catch-up from the log, then
//! live) in a task that hands frames to the connection's bounded queue. A
//! connection that reads slowly fills that queue; its subscription tasks
//! then wait, their hub queues overflow, and they fall back to the log: a
//! slow client costs bounded memory and never slows anyone else.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a closing connection waits for its subscriptions' resume
/// positions.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use tokio_util::sync::CancellationToken;

use super::follow::{FollowError, Follower, Start};
use super::publish::{self, Publisher};
use super::ws_protocol::{self as proto, code, ClientMessage, ProtocolError};
use super::Streams;
use crate::auth::{self, Authenticator, CredentialSource, Identity, Role};
use crate::config::WsConfig;
use crate::event::TenantId;
use crate::metrics::HttpMetrics;

/// Frames for the client, from subscription tasks and the session.
enum Out {
    Text(Utf8Bytes),
    /// A subscription ended on its own (gap, log unavailable).
    Ended(String),
}

/// What a WebSocket session needs from the process.
#[derive(Clone)]
pub struct WsContext {
    pub streams: Streams,
    pub auth: Arc<Authenticator>,
    pub publisher: Publisher,
    pub config: WsConfig,
    /// How often an open session re-checks its credential
    /// (`auth.revocation_check_secs`).
    pub revocation_check: Duration,
    /// The captured tables (`schema.table`), for `table` selectors.
    pub captured_tables: Vec<String>,
    /// The access policies every subscription and publish is held to.
    pub policies: Arc<crate::policy::Policies>,
    /// Consumer groups, and the pool their receives and acks go through.
    pub groups: Arc<crate::groups::Groups>,
    pub groups_pool: deadpool_postgres::Pool,
    /// Live queries (`"snapshot": true`).
    pub live: Arc<super::live::Live>,
    /// The largest top-N limit (`http.max_top_rows`).
    pub max_top_rows: usize,
}

struct Session {
    ctx: WsContext,
    cloudevents: bool,
    who: Option<(Identity, TenantId)>,
    subs: HashMap<String, JoinHandle<()>>,
    /// A subscription acknowledged by the reply being written; its task
    /// starts after that, so the ack precedes its events and answers stay
    /// in request order.
    pending: Option<(String, Pending)>,
    /// Group subscriptions: the group and the deliveries held unsettled.
    groups: HashMap<String, (String, Arc<Held>)>,
    tx: mpsc::Sender<Out>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, task) in self.subs.drain() {
            task.abort();
        }
        self.ctx
            .streams
            .metrics
            .ws_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn text(s: impl Into<String>) -> Message {
    Message::Text(Utf8Bytes::from(s.into()))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Runs one WebSocket session until the client leaves, its credential
/// ends or the server shuts down. `pre` is the identity already
/// authenticated by the upgrade request, if it carried a credential.
pub async fn run(
    socket: WebSocket,
    ctx: WsContext,
    pre: Option<(Identity, TenantId)>,
    cloudevents: bool,
) {
    Box::pin(Session::run(socket, ctx, pre, cloudevents)).await
}

impl Session {
    async fn run(
        socket: WebSocket,
        ctx: WsContext,
        pre: Option<(Identity, TenantId)>,
        cloudevents: bool,
    ) {
        let cfg = ctx.config.clone();
        let (tx, mut rx) = mpsc::channel::<Out>(cfg.queue.max(1));
        ctx.streams
            .metrics
            .ws_connections
            .fetch_add(1, Ordering::Relaxed);
        let mut s = Session {
            ctx,
            cloudevents,
            who: None,
            subs: HashMap::new(),
            pending: None,
            groups: HashMap::new(),
            tx,
        };
        let (mut sink, mut stream) = socket.split();
        if let Some((identity, tenant)) = pre {
            let ok = proto::auth_ok_frame(&tenant, identity.role);
            s.who = Some((identity, tenant));
            if sink.send(text(ok)).await.is_err() {
                return;
            }
        }
        let auth_deadline = tokio::time::sleep(Duration::from_secs(cfg.auth_timeout_secs.max(1)));
        tokio::pin!(auth_deadline);
        let ping_every = Duration::from_secs(cfg.ping_secs.max(1));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        // Watches the credential from the moment one is accepted.
        let mut credential: Option<auth::CredentialWatch> = None;
        let mut heard = tokio::time::Instant::now();
        let shutdown = s.ctx.streams.shutdown.clone();
        loop {
            if credential.is_none() {
                if let Some((identity, _)) = &s.who {
                    credential = Some(s.ctx.auth.watch(identity, s.ctx.revocation_check));
                }
            }
            let reply: Option<Message> = tokio::select! {
                incoming = stream.next() => {
                    let msg = match incoming {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) if is_over_library_limit(&e) => {
                            // Its payload is not read: the only answer is
                            // a close that says why.
                            tracing::debug!(error = %e, "ws frame beyond 16 × ws.max_message_bytes; closing with 1009");
                            let _ = sink
                                .send(close(proto::CLOSE_MESSAGE_TOO_BIG, "message_too_big"))
                                .await;
                            return;
                        }
                        _ => return,
                    };
                    heard = tokio::time::Instant::now();
                    match msg {
                        // Boxed: handling (auth, subscribe, publish) needs large futures
                        // for a moment; inline they would sit in every idle connection.
                        Message::Text(t) => Box::pin(s.handle(t.as_str())).await.map(text),
                        Message::Binary(_) => Some(text(proto::error_frame(&ProtocolError::new(
                            code::BINARY_NOT_SUPPORTED,
                            "binary frames are not supported; send JSON text frames",
                        )))),
                        Message::Ping(_) | Message::Pong(_) => None,
                        Message::Close(_) => return,
                    }
                }
                Some(out) = rx.recv() => match out {
                    Out::Text(t) => Some(Message::Text(t)),
                    Out::Ended(id) => {
                        s.subs.remove(&id);
                        None
                    }
                },
                _ = &mut auth_deadline, if s.who.is_none() => {
                    let _ = sink.send(close(proto::CLOSE_AUTH_TIMEOUT, "auth_timeout")).await;
                    return;
                }
                _ = ping.tick() => {
                    if heard.elapsed() > ping_every * 2 {
                        // Nothing heard for two intervals, not even a pong.
                        return;
                    }
                    Some(Message::Ping(Bytes::new()))
                }
                Some(_) = async { Some(credential.as_mut()?.ended().await) } => {
                    let _ = sink.send(close(proto::CLOSE_CREDENTIAL_REVOKED, "credential_revoked")).await;
                    return;
                }
                _ = shutdown.cancelled() => {
                    // Each subscription reports where to resume, then ends;
                    // its frames are written until all have, or 2 s passed.
                    let deadline = tokio::time::sleep(SHUTDOWN_DRAIN);
                    tokio::pin!(deadline);
                    while !s.subs.is_empty() {
                        tokio::select! {
                            out = rx.recv() => match out {
                                Some(Out::Text(t)) => {
                                    if sink.send(Message::Text(t)).await.is_err() {
                                        return;
                                    }
                                }
                                Some(Out::Ended(id)) => {
                                    s.subs.remove(&id);
                                }
                                None => break,
                            },
                            _ = &mut deadline => break,
                        }
                    }
                    let _ = sink.send(close(proto::CLOSE_GOING_AWAY, "server_shutting_down")).await;
                    return;
                }
            };
            if let Some(m) = reply {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            match s.pending.take() {
                Some((id, Pending::Follow(follower))) => {
                    let task = tokio::spawn(Box::pin(forward(
                        id.clone(),
                        follower,
                        s.tx.clone(),
                        s.cloudevents,
                        s.ctx.streams.metrics.clone(),
                        s.ctx.streams.shutdown.clone(),
                    )));
                    s.subs.insert(id, task);
                }
                Some((id, Pending::Live(live))) => {
                    let task = tokio::spawn(Box::pin(forward_live(
                        id.clone(),
                        live,
                        s.ctx.streams.clone(),
                        s.tx.clone(),
                        s.cloudevents,
                    )));
                    s.subs.insert(id, task);
                }
                Some((id, Pending::Group(work))) => {
                    let task = tokio::spawn(Box::pin(take_work(
                        id.clone(),
                        work,
                        s.ctx.clone(),
                        s.tx.clone(),
                    )));
                    s.subs.insert(id, task);
                }
                None => {}
            }
        }
    }

    /// Answers one text frame (`None`: nothing to answer right away).
    async fn handle(&mut self, frame: &str) -> Option<String> {
        let limit = self.ctx.config.max_message_bytes;
        let parsed = if self.who.is_none() {
            proto::parse_client_before_auth(frame, limit)
        } else {
            proto::parse_client(frame, limit, &self.ctx.captured_tables)
        };
        let msg = match parsed {
            Ok(m) => m,
            Err(e) => return Some(proto::error_frame(&e)),
        };
        let result = match msg {
            ClientMessage::Ping => Ok(proto::pong_frame().to_owned()),
            ClientMessage::Auth { token } => self.auth(&token).await,
            ClientMessage::Subscribe {
                id,
                selector,
                from,
                group: None,
                snapshot,
            } => self.subscribe(id, selector, from, snapshot).await,
            ClientMessage::Subscribe {
                id,
                group: Some(group),
                ..
            } => self.subscribe_group(id, group).await,
            ClientMessage::Ack { id, deliveries } => self.settle(id, deliveries, None).await,
            ClientMessage::Nack {
                id,
                deliveries,
                delay_ms,
            } => {
                self.settle(id, deliveries, Some(delay_ms.unwrap_or(0)))
                    .await
            }
            ClientMessage::Unsubscribe { id } => match self.subs.remove(&id) {
                Some(task) => {
                    self.groups.remove(&id);
                    task.abort();
                    Ok(proto::unsubscribed_frame(&id))
                }
                None => Err(ProtocolError::new(
                    code::UNKNOWN_ID,
                    format!("no subscription {id:?} on this connection"),
                )
                .with_id(id)),
            },
            ClientMessage::Publish {
                event,
                data,
                subject,
            } => self.publish(&event, data, subject).await,
        };
        Some(result.unwrap_or_else(|e| proto::error_frame(&e)))
    }

    async fn auth(&mut self, token: &str) -> Result<String, ProtocolError> {
        if self.who.is_some() {
            return Err(ProtocolError::already_authenticated());
        }
        let identity = self
            .ctx
            .auth
            .authenticate(token, CredentialSource::Header)
            .await
            .map_err(|e| {
                let code = if matches!(e, auth::AuthError::Unavailable(_)) {
                    code::UNAVAILABLE
                } else {
                    code::AUTH_FAILED
                };
                ProtocolError::new(code, e.to_string())
            })?;
        let Some(tenant) = identity.tenant.clone() else {
            return Err(ProtocolError::new(
                code::AUTH_FAILED,
                "admin credentials are cross-tenant; a WebSocket acts for one tenant: use that tenant's key",
            ));
        };
        let ok = proto::auth_ok_frame(&tenant, identity.role);
        self.who = Some((identity, tenant));
        Ok(ok)
    }

    async fn subscribe(
        &mut self,
        id: String,
        selector: crate::subscription::Selector,
        from: Option<i64>,
        snapshot: Option<proto::LiveSubscription>,
    ) -> Result<String, ProtocolError> {
        let Some((identity, tenant)) = &self.who else {
            return Err(
                ProtocolError::new(code::NOT_AUTHENTICATED, "authenticate first").with_id(id),
            );
        };
        let viewer = self.ctx.policies.viewer(identity);
        if let Err(why) = crate::policy::check_selector(&viewer, &selector, &identity.policy_role) {
            return Err(ProtocolError::new(code::FORBIDDEN, why).with_id(id));
        }
        let access = Arc::new(crate::policy::Access {
            viewer,
            selector,
            // A live query's filter keeps its view exact, resumed or not.
            membership: snapshot.is_some(),
        });
        if self.subs.contains_key(&id) {
            return Err(ProtocolError::new(
                code::DUPLICATE_ID,
                format!("a subscription {id:?} is already open on this connection"),
            )
            .with_id(id));
        }
        let max = self.ctx.config.max_subscriptions;
        if self.subs.len() >= max {
            return Err(ProtocolError::new(
                code::TOO_MANY_SUBSCRIPTIONS,
                format!("at most {max} subscriptions per connection"),
            )
            .with_id(id));
        }
        if let Some(from) = from {
            let gap = match self.ctx.streams.pool.get().await {
                Ok(c) => crate::log::gap_at(&**c, from)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
            .map_err(|e| {
                tracing::warn!(error = %e, "ws subscribe cannot read the log");
                ProtocolError::unavailable("the log").with_id(id.clone())
            })?;
            if let Some(g) = gap {
                return Err(ProtocolError::gap(&id, g.requested, g.oldest));
            }
        }
        let ack = proto::subscribed_frame(&id);
        if let Some(live) = &snapshot {
            let Some(table) = self.ctx.live.table(&live.table) else {
                return Err(ProtocolError::new(
                    code::UNKNOWN_TABLE,
                    format!("{:?} is not a captured table", live.table),
                )
                .with_id(id));
            };
            let top = match (&live.order_by, live.limit) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(ProtocolError::new(
                        code::INVALID_MESSAGE,
                        "limit: a live query's limit needs order_by (a top-N query)",
                    )
                    .with_id(id))
                }
                (Some(o), limit) => Some(
                    super::live_top::TopSpec::parse(o, limit, self.ctx.max_top_rows).map_err(
                        |m| ProtocolError::new(code::INVALID_MESSAGE, m).with_id(id.clone()),
                    )?,
                ),
            };
            // A top-N query's window lives in its task: resumed or not, it
            // starts with its rows. Any other live query resumed with
            // `from` goes on with changes only.
            let items = match (top, from) {
                (Some(spec), _) => Some((
                    self.ctx.live.start_top(
                        self.ctx.streams.clone(),
                        tenant.clone(),
                        access.clone(),
                        table,
                        spec,
                    ),
                    true,
                )),
                (None, None) => Some((
                    self.ctx.live.start(tenant.clone(), access.clone(), table),
                    false,
                )),
                (None, Some(_)) => None,
            };
            if let Some((items, top)) = items {
                self.pending = Some((
                    id,
                    Pending::Live(LiveStart {
                        items,
                        tenant: tenant.clone(),
                        access,
                        top,
                    }),
                ));
                return Ok(ack);
            }
        }
        let follower =
            self.ctx
                .streams
                .follower(tenant.clone(), access, from.map_or(Start::Live, Start::At));
        self.pending = Some((id, Pending::Follow(follower)));
        Ok(ack)
    }

    /// `subscribe` with `group`: the group must exist for the connection's
    /// tenant; its messages are then taken as the subscription's budget
    /// allows.
    async fn subscribe_group(
        &mut self,
        id: String,
        group: proto::GroupSubscription,
    ) -> Result<String, ProtocolError> {
        let Some((identity, tenant)) = &self.who else {
            return Err(
                ProtocolError::new(code::NOT_AUTHENTICATED, "authenticate first").with_id(id),
            );
        };
        if identity.role < Role::Service {
            return Err(ProtocolError::new(
                code::FORBIDDEN,
                "consumer groups need a service key (this connection's credential is anon)",
            )
            .with_id(id));
        }
        if self.subs.contains_key(&id) {
            return Err(ProtocolError::new(
                code::DUPLICATE_ID,
                format!("a subscription {id:?} is already open on this connection"),
            )
            .with_id(id));
        }
        if self.subs.len() >= self.ctx.config.max_subscriptions {
            return Err(ProtocolError::new(
                code::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "at most {} subscriptions per connection",
                    self.ctx.config.max_subscriptions
                ),
            )
            .with_id(id));
        }
        let client = self.ctx.groups_pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, "ws group subscribe cannot reach the state database");
            ProtocolError::unavailable("the state database").with_id(id.clone())
        })?;
        let g = match self.ctx.groups.get(&**client, tenant, &group.name).await {
            Ok(g) => g,
            Err(crate::groups::GroupError::Unknown(_)) => {
                return Err(ProtocolError::new(
                    code::UNKNOWN_ID,
                    format!("no consumer group {:?} for this tenant", group.name),
                )
                .with_id(id))
            }
            Err(e) => {
                tracing::warn!(error = %e, "ws group subscribe cannot read the group");
                return Err(ProtocolError::unavailable("the state database").with_id(id));
            }
        };
        let held = Arc::new(Held::default());
        self.groups
            .insert(id.clone(), (group.name.clone(), held.clone()));
        let ack = proto::subscribed_frame(&id);
        self.pending = Some((
            id,
            Pending::Group(GroupWork {
                tenant: tenant.clone(),
                group: group.name,
                budget: group.max_in_flight,
                ack_wait: Duration::from_millis(u64::try_from(g.spec.ack_wait_ms).unwrap_or(0)),
                held,
            }),
        ));
        Ok(ack)
    }

    /// `ack` / `nack` (`delay`) of deliveries of group subscription `id`.
    async fn settle(
        &mut self,
        id: String,
        deliveries: Vec<String>,
        delay: Option<i64>,
    ) -> Result<String, ProtocolError> {
        let Some((_, tenant)) = &self.who else {
            return Err(
                ProtocolError::new(code::NOT_AUTHENTICATED, "authenticate first").with_id(id),
            );
        };
        let Some((group, held)) = self.groups.get(&id).cloned() else {
            return Err(ProtocolError::new(
                code::UNKNOWN_ID,
                format!("no group subscription {id:?} on this connection"),
            )
            .with_id(id));
        };
        let client = self.ctx.groups_pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, "ws ack cannot reach the state database");
            ProtocolError::unavailable("the state database").with_id(id.clone())
        })?;
        let done = match delay {
            None => {
                self.ctx
                    .groups
                    .ack(&client, tenant, &group, &deliveries)
                    .await
            }
            Some(ms) => {
                self.ctx
                    .groups
                    .nack(&client, tenant, &group, &deliveries, ms)
                    .await
            }
        };
        let settled = match done {
            Ok(s) => s,
            Err(crate::groups::GroupError::Invalid(e)) => {
                return Err(ProtocolError::new(code::INVALID_MESSAGE, e.to_string()).with_id(id))
            }
            Err(e) => {
                tracing::warn!(error = %e, "ws ack failed");
                return Err(ProtocolError::unavailable("the state database").with_id(id));
            }
        };
        // Whatever was sent for these tokens is no longer held (settled,
        // or unknown: expired or not this subscription's).
        held.release(&deliveries);
        let kind = if delay.is_none() { "acked" } else { "nacked" };
        Ok(proto::settled_frame(
            kind,
            &id,
            settled.done.len(),
            &settled.unknown,
        ))
    }

    async fn publish(
        &mut self,
        event: &str,
        data: serde_json::Map<String, serde_json::Value>,
        subject: Option<String>,
    ) -> Result<String, ProtocolError> {
        let Some((identity, tenant)) = &self.who else {
            return Err(ProtocolError::new(
                code::NOT_AUTHENTICATED,
                "authenticate first",
            ));
        };
        publish::may_publish(&self.ctx.policies, identity, &format!("custom/{event}"))
            .map_err(|why| ProtocolError::new(code::FORBIDDEN, why))?;
        let seq = publish::publish(&self.ctx.publisher, tenant, event, data, subject)
            .await
            .map_err(|e| ProtocolError::new(code::UNAVAILABLE, e))?;
        Ok(proto::published_frame(seq))
    }
}

/// One subscription: follows the log and live hub, queues frames for the
/// connection until it is aborted or its follower ends.
/// Ends subscription `id` with `err`: the error frame, then its end.
async fn end_with_error(tx: &mpsc::Sender<Out>, id: String, err: &ProtocolError) {
    let _ = tx
        .send(Out::Text(Utf8Bytes::from(proto::error_frame(err))))
        .await;
    let _ = tx.send(Out::Ended(id)).await;
}

/// A live query's rows and changes as event frames, `synced`, then the
/// follower from the hand-over ([`forward`]).
async fn forward_live(
    id: String,
    mut live: LiveStart,
    streams: Streams,
    tx: mpsc::Sender<Out>,
    cloudevents: bool,
) {
    use super::live::LiveItem;
    let handover = loop {
        let item = tokio::select! {
            item = live.items.recv() => item,
            _ = streams.shutdown.cancelled() => {
                // Before `synced` there is nothing to resume: the client
                // subscribes again and the read starts over.
                let err = ProtocolError::new(code::UNAVAILABLE, "the server is shutting down; subscribe again")
                    .with_id(id.clone());
                end_with_error(&tx, id, &err).await;
                return;
            }
        };
        let frame = match item {
            Some(Ok(LiveItem::Row(e) | LiveItem::Change(e))) => {
                streams.metrics.ws_events.fetch_add(1, Ordering::Relaxed);
                if cloudevents {
                    proto::cloudevents_event_frame(&e.body)
                } else {
                    proto::event_frame(&id, &e.body)
                }
            }
            Some(Ok(LiveItem::Synced(h))) => {
                let _ = tx
                    .send(Out::Text(Utf8Bytes::from(proto::synced_frame(&id, h))))
                    .await;
                if live.top {
                    continue;
                }
                break h;
            }
            Some(Err(e)) => {
                let err = ProtocolError::live(&id, &e);
                end_with_error(&tx, id, &err).await;
                return;
            }
            None => {
                let err = ProtocolError::unavailable("the live query").with_id(id.clone());
                end_with_error(&tx, id, &err).await;
                return;
            }
        };
        let Ok(text) = Utf8Bytes::try_from(frame) else {
            continue;
        };
        if tx.send(Out::Text(text)).await.is_err() {
            return;
        }
    };
    let follower = streams.follower(live.tenant, live.access, Start::At(handover + 1));
    forward(
        id,
        follower,
        tx,
        cloudevents,
        streams.metrics.clone(),
        streams.shutdown.clone(),
    )
    .await;
}

async fn forward(
    id: String,
    mut follower: Follower,
    tx: mpsc::Sender<Out>,
    cloudevents: bool,
    metrics: Arc<HttpMetrics>,
    shutdown: CancellationToken,
) {
    /// Counts the subscription while its task lives (aborted or not).
    struct Open(Arc<HttpMetrics>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.ws_subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
    }
    metrics.ws_subscriptions.fetch_add(1, Ordering::Relaxed);
    let _open = Open(metrics.clone());
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            _ = shutdown.cancelled() => {
                let frame = proto::shutdown_frame(&id, follower.position());
                let _ = tx.send(Out::Text(Utf8Bytes::from(frame))).await;
                let _ = tx.send(Out::Ended(id)).await;
                return;
            }
        };
        let frame = match next {
            Ok(e) => {
                metrics.ws_events.fetch_add(1, Ordering::Relaxed);
                metrics.ws_latency.observe_since(e.commit_micros);
                if cloudevents {
                    proto::cloudevents_event_frame(&e.body)
                } else {
                    proto::event_frame(&id, &e.body)
                }
            }
            Err(FollowError::Gap { requested, oldest }) => {
                let err = ProtocolError::new(
                    code::GAP,
                    format!("seq {requested} was pruned by retention; the oldest available is {oldest}; resubscribe"),
                )
                .with_id(id.clone());
                end_with_error(&tx, id, &err).await;
                return;
            }
            Err(FollowError::Db(e)) => {
                tracing::warn!(error = %e, "ws subscription cannot read the log; ending it");
                let err = ProtocolError::new(
                    code::UNAVAILABLE,
                    format!(
                        "the log is unavailable; resubscribe with from={}",
                        follower.position()
                    ),
                )
                .with_id(id.clone());
                end_with_error(&tx, id, &err).await;
                return;
            }
        };
        let Ok(text) = Utf8Bytes::try_from(frame) else {
            continue;
        };
        if tx.send(Out::Text(text)).await.is_err() {
            return;
        }
    }
}

/// Whether a read failed because the frame (or a fragmented message) is
/// larger than the library's limit (16 × `ws.max_message_bytes`):
/// tungstenite's capacity error. axum wraps it without exposing its type,
/// so it is told by its text (`Space limit exceeded: Message too long:
/// <size> > <max>`); a unit test pins that text to the tungstenite in
/// Cargo.lock.
fn is_over_library_limit(e: &axum::Error) -> bool {
    e.to_string().starts_with("Space limit exceeded")
}

/// What a subscription starts once its acknowledgement is written.
enum Pending {
    Follow(Follower),
    Live(LiveStart),
    Group(GroupWork),
}

/// A live query about to start: its rows and changes up to `synced`, then
/// a follower of the tenant from the hand-over.
struct LiveStart {
    items: mpsc::Receiver<Result<super::live::LiveItem, super::live::LiveError>>,
    tenant: TenantId,
    access: Arc<crate::policy::Access>,
    /// A top-N query: its changes keep coming on `items` after `synced`.
    top: bool,
}

/// A group subscription's work loop settings.
struct GroupWork {
    tenant: TenantId,
    group: String,
    /// Most unsettled deliveries at once.
    budget: i64,
    ack_wait: Duration,
    held: Arc<Held>,
}

/// The deliveries a group subscription sent and the client has not
/// settled, with when the group takes each back (then it no longer counts).
#[derive(Default)]
struct Held {
    until: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
    released: tokio::sync::Notify,
}

impl Held {
    fn count(&self) -> i64 {
        let now = tokio::time::Instant::now();
        let mut until = self.until.lock().expect("held lock is never poisoned");
        until.retain(|_, t| *t > now);
        until.len() as i64
    }

    fn hold(&self, token: String, until: tokio::time::Instant) {
        self.until
            .lock()
            .expect("held lock is never poisoned")
            .insert(token, until);
    }

    fn release(&self, tokens: &[String]) {
        let mut until = self.until.lock().expect("held lock is never poisoned");
        for t in tokens {
            until.remove(t);
        }
        drop(until);
        self.released.notify_waiters();
    }
}

/// A group subscription: takes up to its budget of messages (a long poll),
/// sends them, and takes more as the client settles them (or as the ones
/// it never settles return to the group after ack_wait).
async fn take_work(id: String, work: GroupWork, ctx: WsContext, tx: mpsc::Sender<Out>) {
    let mut durable = ctx.streams.durable.clone();
    let shutdown = ctx.streams.shutdown.clone();
    loop {
        let room = work.budget - work.held.count();
        if room <= 0 {
            let released = work.held.released.notified();
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let got = tokio::select! {
            got = ctx.groups.receive(&ctx.groups_pool, &work.tenant, &work.group, room, Duration::from_secs(20), &mut durable) => got,
            _ = shutdown.cancelled() => return,
        };
        match got {
            Ok(deliveries) => {
                let until = tokio::time::Instant::now() + work.ack_wait;
                for d in deliveries {
                    work.held.hold(d.token.clone(), until);
                    let frame = proto::group_event_frame(&id, &d.token, d.attempt, d.seq, &d.event);
                    let Ok(frame) = Utf8Bytes::try_from(frame) else {
                        continue;
                    };
                    if tx.send(Out::Text(frame)).await.is_err() {
                        return;
                    }
                }
            }
            Err(crate::groups::GroupError::Unknown(name)) => {
                let e = ProtocolError::new(
                    code::UNKNOWN_ID,
                    format!("the consumer group {name:?} was deleted"),
                )
                .with_id(id.clone());
                end_with_error(&tx, id, &e).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "a ws group subscription cannot receive; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::proto;

    #[test]
    fn a_frame_over_the_library_limit_is_told_apart_from_other_read_errors() {
        use tokio_tungstenite::tungstenite::error::{CapacityError, Error, ProtocolError};
        let too_long = axum::Error::new(Error::Capacity(CapacityError::MessageTooLong {
            size: 1_048_603,
            max_size: 1_048_576,
        }));
        assert!(super::is_over_library_limit(&too_long), "{too_long}");
        for other in [
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            Error::ConnectionClosed,
            Error::Io(std::io::Error::other("broken pipe")),
        ] {
            let e = axum::Error::new(other);
            assert!(!super::is_over_library_limit(&e), "{e}");
        }
    }

    #[test]
    fn the_readme_documents_every_error_and_close_code() {
        let readme = include_str!("../../README.md");
        for (code, _) in proto::ERROR_CODES {
            assert!(
                readme.contains(&format!("| `{code}` |")),
                "README lacks error code {code}"
            );
        }
        for (code, reason, _) in proto::CLOSE_CODES {
            assert!(
                readme.contains(&format!("| {code} | `{reason}` |")),
                "README lacks close code {code}"
            );
        }
    }
}
