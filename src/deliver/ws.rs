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
}

struct Session {
    ctx: WsContext,
    cloudevents: bool,
    who: Option<(Identity, TenantId)>,
    subs: HashMap<String, JoinHandle<()>>,
    /// A subscription acknowledged by the reply being written; its task
    /// starts after that, so the ack precedes its events and answers stay
    /// in request order.
    pending: Option<(String, Follower)>,
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
            if let Some((id, follower)) = s.pending.take() {
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
            ClientMessage::Subscribe { id, selector, from } => {
                self.subscribe(id, selector, from).await
            }
            ClientMessage::Unsubscribe { id } => match self.subs.remove(&id) {
                Some(task) => {
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
        let access = Arc::new(crate::policy::Access { viewer, selector });
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
        let follower =
            self.ctx
                .streams
                .follower(tenant.clone(), access, from.map_or(Start::Live, Start::At));
        let ack = proto::subscribed_frame(&id);
        self.pending = Some((id, follower));
        Ok(ack)
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
        // Service publishes anywhere no policy says otherwise; anon and
        // custom roles only where a topics policy allows publishing.
        let topic = format!("custom/{event}");
        let viewer = self.ctx.policies.viewer(identity);
        let allowed = if viewer.is_open() {
            identity.role >= Role::Service
        } else {
            viewer.may_publish(&topic)
        };
        if !allowed {
            return Err(ProtocolError::new(
                code::FORBIDDEN,
                if identity.role < Role::Service && viewer.is_open() {
                    "publishing needs a service key (this connection's credential is anon)"
                        .to_owned()
                } else {
                    format!(
                        "role {:?} may not publish on {topic}: no access policy with publish = true covers it",
                        identity.policy_role
                    )
                },
            ));
        }
        let seq = publish::publish(&self.ctx.publisher, tenant, event, data, subject)
            .await
            .map_err(|e| ProtocolError::new(code::UNAVAILABLE, e))?;
        Ok(proto::published_frame(seq))
    }
}

/// One subscription: follows the log and live hub, queues frames for the
/// connection until it is aborted or its follower ends.
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
                let _ = tx
                    .send(Out::Text(Utf8Bytes::from(proto::error_frame(&err))))
                    .await;
                let _ = tx.send(Out::Ended(id)).await;
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
                let _ = tx
                    .send(Out::Text(Utf8Bytes::from(proto::error_frame(&err))))
                    .await;
                let _ = tx.send(Out::Ended(id)).await;
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
