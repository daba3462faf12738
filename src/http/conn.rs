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
//!
//! Heads that cannot be parsed at all (larger than `MAX_HEAD_BYTES`, first
//! request or later, or malformed) are refused by hyper itself, which
//! answers them with a bare status line. The socket wrapper handed to hyper
//! ([`Replay`]) recognises those answers and writes the API's JSON error in
//! their place, so a client gets the same JSON whichever layer refused it.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ApiError, AppState};
use crate::deliver::sse::{SseSession, RESPONSE_HEADERS};

/// The largest request head, by the first-request reader here and by hyper
/// for every later request; larger is a 431 with the JSON error. Defined
/// in `config`, which bounds `http.max_query_bytes` by it.
pub use crate::config::MAX_HEAD_BYTES;
/// After a refused head, the rest of the request is read and dropped (up
/// to this much, for at most `DRAIN_TIMEOUT`) before the socket closes, so
/// that the client reads the answer instead of a connection reset.
const DRAIN_BYTES: usize = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A client must send its request head within this long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The most request headers looked at on the lean path.
const MAX_HEADERS: usize = 64;
/// Frames at hand are written together up to about this many bytes.
const COALESCE_BYTES: usize = 64 * 1024;
use super::sse::SUBSCRIBE_PATH;

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
        let opened = Box::pin(super::sse::open(&state, &sub.headers, sub.query(&head))).await;
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
        max_query_bytes: state.config.http.max_query_bytes,
        cors_any: cors_allows_any(&state.config.http.cors_origins),
        refused: None,
    });
    let mut conn = Box::pin(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_header_size(MAX_HEAD_BYTES)
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

fn cors_allows_any(origins: &str) -> bool {
    origins.split(',').any(|o| o.trim() == "*")
}

/// The JSON error for a head hyper refused with `status` (its automatic
/// answers carry no body).
fn refused_head(status: u16, max_query_bytes: usize) -> ApiError {
    match status {
        431 | 414 => ApiError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "request_head_too_large",
            param: None,
            message: format!(
                "the request line and headers are larger than {MAX_HEAD_BYTES} bytes; \
                 query strings may be at most {max_query_bytes} bytes (http.max_query_bytes)"
            ),
            extra: None,
        },
        _ => ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "malformed_request",
            param: None,
            message:
                "the request is not valid HTTP/1.1 (request line or a header cannot be parsed)"
                    .to_owned(),
            extra: None,
        },
    }
}

/// A complete HTTP/1.1 answer carrying `err`, closing the connection.
fn raw_error_response(err: &ApiError, cors_any: bool) -> Bytes {
    let body = err.body().to_string();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        err.status.as_u16(),
        err.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if cors_any {
        out.push_str("access-control-allow-origin: *\r\n");
    }
    out.push_str("date: ");
    out.push_str(&httpdate::fmt_http_date(std::time::SystemTime::now()));
    out.push_str("\r\n\r\n");
    out.push_str(&body);
    Bytes::from(out)
}

/// The status of one of hyper's automatic answers to a head it could not
/// parse: a status line of 400, 414 or 431 whose head ends with no body.
/// Every answer of the API's own has a body (errors are JSON), and a body
/// never starts with a status line, so nothing else matches.
fn hyper_refusal(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status = match rest.get(..4)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let bodyless = head.split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("content-length") && value.trim() == "0"
        })
    });
    bodyless.then_some(status)
}

/// A refused head's JSON answer being written in place of hyper's.
struct Refused {
    answer: Bytes,
    /// Bytes of hyper's answer to report written once `answer` is out.
    replaces: usize,
    /// Set once the answer is out: the rest of the request is drained.
    drained: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A socket with bytes already read from it put back in front, and
/// hyper's bodiless refusals replaced by the API's JSON errors.
struct Replay {
    prefix: Bytes,
    inner: TcpStream,
    max_query_bytes: usize,
    cors_any: bool,
    refused: Option<Box<Refused>>,
}

impl Replay {
    /// Writes through, unless `first` is one of hyper's refusals: then the
    /// JSON answer goes out instead and `total` (hyper's bytes) is
    /// reported written once it has.
    fn poll_write_or_replace(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        total: usize,
        write: impl FnOnce(&mut TcpStream, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.refused.is_none() {
            let Some(status) = hyper_refusal(first) else {
                return write(&mut self.inner, cx);
            };
            let answer =
                raw_error_response(&refused_head(status, self.max_query_bytes), self.cors_any);
            self.refused = Some(Box::new(Refused {
                answer,
                replaces: first.len().min(total),
                drained: 0,
                deadline: None,
            }));
        }
        let Some(refused) = self.refused.as_mut() else {
            return write(&mut self.inner, cx);
        };
        if refused.answer.is_empty() && refused.replaces == 0 {
            // Nothing hyper writes after its refusal goes out.
            return Poll::Ready(Ok(total));
        }
        while !refused.answer.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &refused.answer))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = refused.answer.split_to(n);
        }
        Poll::Ready(Ok(std::mem::take(&mut refused.replaces)))
    }
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
        self.poll_write_or_replace(cx, buf, buf.len(), |inner, cx| {
            Pin::new(inner).poll_write(cx, buf)
        })
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first: &[u8] = bufs.first().map_or(&[], |b| b);
        let total = bufs.iter().map(|b| b.len()).sum();
        self.poll_write_or_replace(cx, first, total, |inner, cx| {
            Pin::new(inner).poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(refused) = this.refused.as_mut() {
            // The client may still be sending the head we refused; closing
            // with unread bytes would reset the connection under its read.
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let deadline = refused
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(DRAIN_TIMEOUT)));
            let mut scratch = [0u8; 4096];
            loop {
                if refused.drained >= DRAIN_BYTES || deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
                let mut rb = ReadBuf::new(&mut scratch);
                match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => refused.drained += rb.filled().len(),
                    Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_bodiless_refusals_are_replaced() {
        let date = "date: Thu, 03 Dec 2026 10:00:00 GMT";
        for (status, reason) in [
            (400, "Bad Request"),
            (414, "URI Too Long"),
            (431, "Request Header Fields Too Large"),
        ] {
            let head = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n{date}\r\n\r\n");
            assert_eq!(hyper_refusal(head.as_bytes()), Some(status), "{head}");
        }
        for other in [
            // The API's own errors have a body.
            format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 90\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n{date}\r\n\r\n"),
            // A chunk of a body, an incomplete head.
            "1f\r\n{\"seq\":1}".to_owned(),
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n".to_owned(),
        ] {
            assert_eq!(hyper_refusal(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn a_refused_head_is_answered_with_the_json_error_naming_the_limits() {
        let answer = raw_error_response(&refused_head(431, 8192), true);
        let text = std::str::from_utf8(&answer).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(v["error"]["status"], 431);
        assert_eq!(v["error"]["code"], "request_head_too_large");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("8192")),
            "{v}"
        );
    }
}
