//! Accepting connections, and the lean path for SSE.
//!
//! Every connection's first request head is read here (a small buffer,
//! bounded by `MAX_HEAD_BYTES` and `HEAD_TIMEOUT`). A connection whose first
//! request is `GET /v1/events/subscribe` that opens successfully is streamed
//! by `stream_sse`: after the response head it keeps nothing per connection
//! but the socket and the `SseSession`, and writes each frame straight to
//! the socket as an HTTP/1.1 chunk. Everything else (other routes, errors,
//! odd requests, later requests on a kept-alive connection) goes to hyper
//! and the axum router, with the bytes already read replayed in front of
//! the socket.
//!
//! Why: hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the
//! whole life of a connection, which alone is the 16 KiB per-connection
//! budget of 10,000 idle SSE subscribers. Errors never take the lean path:
//! a subscription that fails to open is replayed through axum, so every
//! error answer comes from one place.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AppState;
use crate::deliver::sse::{SseSession, RESPONSE_HEADERS};

/// The largest request head read before handing the connection to hyper
/// (which answers 431 to anything larger than it accepts).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must send its request head within this long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The most request headers looked at on the lean path.
const MAX_HEADERS: usize = 64;
/// Frames at hand are written together up to about this many bytes.
const COALESCE_BYTES: usize = 64 * 1024;
const SUBSCRIBE_PATH: &str = "/v1/events/subscribe";

/// Serves the API on `listener` until `shutdown`, then waits for open
/// connections: requests in flight finish, idle kept-alive connections
/// close (streams are ended before, by `AppState::shutdown`).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Without TCP_NODELAY small SSE frames wait for the client's delayed
        // ACK (40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        tracker.spawn(handle(tcp, state.clone(), app.clone(), shutdown.clone()));
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn handle(tcp: TcpStream, state: AppState, app: Router, shutdown: CancellationToken) {
    let mut head = Vec::with_capacity(1024);
    let mut tcp = tcp;
    let read = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp, &mut head)) => r,
        _ = shutdown.cancelled() => return,
    };
    let subscription = match read {
        Ok(Ok(sub)) => sub,
        // Closed, failed or too slow before a whole head arrived.
        Ok(Err(_)) | Err(_) if head.is_empty() => return,
        Ok(Err(_)) | Err(_) => None,
    };
    if let Some(sub) = subscription {
        // On an error the request is replayed through axum, which answers it.
        // (Futures awaited here are boxed: the task's size is that of its
        // largest state, and it lives as long as the stream.)
        let opened = Box::pin(SseSession::open(&state, &sub.headers, sub.query(&head))).await;
        if let Ok(session) = opened {
            let cors = super::cors::allow_origin(&state.config.http.cors_origins, &sub.headers);
            drop((head, sub, app));
            Box::pin(stream_sse(tcp, session, cors, shutdown)).await;
            return;
        }
    }
    let io = TokioIo::new(Replay {
        prefix: Bytes::from(head),
        inner: tcp,
    });
    let mut conn = Box::pin(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .serve_connection(io, TowerToHyperService::new(app))
            .with_upgrades(),
    );
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// A request the lean path may serve: `GET /v1/events/subscribe` over
/// HTTP/1.1 without a body.
struct Subscribe {
    headers: HeaderMap,
    /// The query string's range in the head.
    query: Option<(usize, usize)>,
}

impl Subscribe {
    fn query<'a>(&self, head: &'a [u8]) -> Option<&'a str> {
        let (from, to) = self.query?;
        std::str::from_utf8(head.get(from..to)?).ok()
    }
}

/// Reads one request head into `buf`: `Some` for a lean candidate, `None`
/// for anything else (hyper takes it, bytes and all). An error when the
/// head never completed.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Subscribe>> {
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD_BYTES {
                return Ok(None);
            }
            buf.reserve(buf.len());
        }
        if tcp.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) => return Ok(lean_candidate(&req, buf)),
            // Malformed, or more headers than we look at: hyper decides.
            Err(_) => return Ok(None),
        }
    }
}

fn lean_candidate(req: &httparse::Request<'_, '_>, buf: &[u8]) -> Option<Subscribe> {
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let target = req.path?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if path != SUBSCRIBE_PATH {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body on a GET, or an upgrade: hyper's business.
        if name == axum::http::header::CONTENT_LENGTH
            || name == axum::http::header::TRANSFER_ENCODING
            || name == axum::http::header::UPGRADE
        {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let query = match query {
        Some(q) => {
            // `q` borrows from `buf`: its offset there.
            let from = (q.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
            Some((from, from + q.len()))
        }
        None => None,
    };
    Some(Subscribe { headers, query })
}

/// Streams an opened session on the raw socket as a chunked HTTP/1.1
/// response, until the session ends, the client goes away or the server
/// stops.
async fn stream_sse(
    tcp: TcpStream,
    mut session: SseSession,
    cors: Option<HeaderValue>,
    stop: CancellationToken,
) {
    let mut head = String::with_capacity(256);
    head.push_str("HTTP/1.1 200 OK\r\n");
    for (name, value) in RESPONSE_HEADERS {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if let Some(origin) = cors.as_ref().and_then(|v| v.to_str().ok()) {
        head.push_str("access-control-allow-origin: ");
        head.push_str(origin);
        head.push_str("\r\nvary: origin\r\n");
    }
    head.push_str("transfer-encoding: chunked\r\ndate: ");
    head.push_str(&httpdate::fmt_http_date(std::time::SystemTime::now()));
    head.push_str("\r\n\r\n");
    let first = session.retry_hint();
    let mut out = Vec::with_capacity(head.len() + first.len() + 16);
    out.extend_from_slice(head.as_bytes());
    push_chunk(&mut out, &first);
    drop(head);
    if write_or_stop(&tcp, &out, &stop).await.is_err() {
        return;
    }
    drop(out);
    loop {
        let frame = tokio::select! {
            f = session.next_frame() => f,
            _ = client_gone(&tcp) => return,
        };
        let Some(frame) = frame else {
            // The stream is over (shutdown, gap, revoked): end the body.
            let _ = write_or_stop(&tcp, b"0\r\n\r\n", &stop).await;
            return;
        };
        if frame.is_empty() {
            continue;
        }
        let result = match session.try_next_frame() {
            None => {
                let size = format!("{:x}\r\n", frame.len());
                write_slices(
                    &tcp,
                    &mut [
                        IoSlice::new(size.as_bytes()),
                        IoSlice::new(&frame),
                        IoSlice::new(b"\r\n"),
                    ],
                    &stop,
                )
                .await
            }
            Some(second) => {
                // A burst: frames at hand go out in one write.
                let mut out = Vec::with_capacity(frame.len() + second.len() + 32);
                push_chunk(&mut out, &frame);
                push_chunk(&mut out, &second);
                while out.len() < COALESCE_BYTES {
                    let Some(more) = session.try_next_frame() else {
                        break;
                    };
                    push_chunk(&mut out, &more);
                }
                write_or_stop(&tcp, &out, &stop).await
            }
        };
        if result.is_err() {
            return;
        }
    }
}

fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

async fn write_or_stop(tcp: &TcpStream, data: &[u8], stop: &CancellationToken) -> io::Result<()> {
    write_slices(tcp, &mut [IoSlice::new(data)], stop).await
}

/// Writes every byte of `slices`; gives up when the server stops accepting
/// (a client that reads nothing must not hold up shutdown; streams were
/// told to end before, so their last frame is written when the client
/// reads at all).
async fn write_slices(
    tcp: &TcpStream,
    mut slices: &mut [IoSlice<'_>],
    stop: &CancellationToken,
) -> io::Result<()> {
    while !slices.is_empty() {
        tokio::select! {
            biased;
            r = tcp.writable() => r?,
            _ = stop.cancelled() => return Err(io::ErrorKind::Interrupted.into()),
        }
        match tcp.try_write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves when the client closed its side or the socket failed. Anything
/// the client sends on a stream is read and ignored.
async fn client_gone(tcp: &TcpStream) {
    let mut scratch = [0u8; 64];
    loop {
        if tcp.readable().await.is_err() {
            return;
        }
        match tcp.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

/// A socket with bytes already read from it put back in front.
struct Replay {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            if self.prefix.is_empty() {
                // Let the head's buffer go.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
