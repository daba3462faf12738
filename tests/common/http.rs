//! A small HTTP/1.1 client for the tests: plain requests, and streaming
//! responses (chunked) read as SSE events or NDJSON lines. Written here so
//! the tests speak the wire protocol without another large dependency; the
//! independent-client test uses Python's httpx-sse.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An open response whose body is read incrementally.
pub struct Stream {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Decoded body bytes not yet consumed.
    pending: Vec<u8>,
    done: bool,
}

async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Stream {
    let sock = TcpStream::connect(addr).await.expect("connect to sluice");
    send(BufReader::new(sock), "GET", addr, path, headers, true).await
}

/// A request with any method and no body, answered in full.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let sock = TcpStream::connect(addr).await.expect("connect to sluice");
    let mut s = send(BufReader::new(sock), method, addr, path, headers, true).await;
    let mut body = Vec::new();
    while let Some(chunk) = s.chunk().await {
        body.extend_from_slice(&chunk);
    }
    Response {
        status: s.status,
        headers: s.headers,
        body,
    }
}

/// Like `stream`, but the request is the second one on a kept-alive
/// connection: `GET {first}` goes first and its (Content-Length) answer is
/// read and dropped.
pub async fn stream_second(
    addr: SocketAddr,
    first: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Stream {
    let sock = TcpStream::connect(addr).await.expect("connect to sluice");
    let mut s = send(BufReader::new(sock), "GET", addr, first, &[], false).await;
    let len: usize = s
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("the first answer has a Content-Length");
    let mut body = vec![0u8; len];
    s.reader
        .read_exact(&mut body)
        .await
        .expect("first answer's body");
    send(s.reader, "GET", addr, path, headers, true).await
}

async fn send(
    mut reader: BufReader<TcpStream>,
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    close: bool,
) -> Stream {
    let connection = if close { "close" } else { "keep-alive" };
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    reader
        .get_mut()
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    let (status, hdrs) = read_head(&mut reader).await;
    let chunked = hdrs
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    Stream {
        reader,
        status,
        headers: hdrs,
        chunked,
        pending: Vec::new(),
        done: false,
    }
}

/// Reads an answer's status line and headers, up to the blank line that
/// ends them; a line that is no header fails the test.
pub async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            return (status, headers);
        }
        let (k, v) = l
            .split_once(':')
            .unwrap_or_else(|| panic!("not a header line: {l:?}"));
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut s = open(addr, path, headers).await;
    let mut body = Vec::new();
    while let Some(chunk) = s.chunk().await {
        body.extend_from_slice(&chunk);
    }
    Response {
        status: s.status,
        headers: s.headers,
        body,
    }
}

pub async fn stream(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Stream {
    open(addr, path, headers).await
}

/// One SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of body, or None at the end.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if !self.chunked {
            let mut buf = vec![0u8; 16 * 1024];
            let n = self.reader.read(&mut buf).await.ok()?;
            if n == 0 {
                self.done = true;
                return None;
            }
            buf.truncate(n);
            return Some(buf);
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).await.ok()? == 0 {
            self.done = true;
            return None;
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).ok()?;
        if size == 0 {
            self.done = true;
            return None;
        }
        let mut buf = vec![0u8; size + 2];
        self.reader.read_exact(&mut buf).await.ok()?;
        buf.truncate(size);
        Some(buf)
    }

    /// Reads until `pending` holds `delim`; returns what came before it.
    async fn until(&mut self, delim: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(pos) = self.pending.windows(delim.len()).position(|w| w == delim) {
                let out = self.pending[..pos].to_vec();
                self.pending.drain(..pos + delim.len());
                return Some(out);
            }
            let c = self.chunk().await?;
            self.pending.extend_from_slice(&c);
        }
    }

    /// The next SSE event with data (comments and `retry:` skipped).
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let block = self.until(b"\n\n").await?;
            let text = String::from_utf8(block).expect("SSE is UTF-8");
            let mut ev = SseEvent {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    ev.id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    ev.event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(v);
                    has_data = true;
                }
            }
            if has_data {
                return Some(ev);
            }
        }
    }

    /// Like `next_event`, failing the test after `patience`.
    pub async fn expect_event(&mut self, patience: Duration) -> SseEvent {
        tokio::time::timeout(patience, self.next_event())
            .await
            .expect("an SSE event within the patience window")
            .expect("the stream ended early")
    }

    /// The next SSE block as sent (comments such as `: keepalive`
    /// included), or None at the end.
    pub async fn next_block(&mut self) -> Option<String> {
        let block = self.until(b"\n\n").await?;
        Some(String::from_utf8(block).expect("SSE is UTF-8"))
    }

    /// The next NDJSON line.
    pub async fn next_line(&mut self) -> Option<String> {
        let l = self.until(b"\n").await?;
        Some(String::from_utf8(l).expect("NDJSON is UTF-8"))
    }
}

/// Polls `/readyz` until `done` holds for its status and body.
pub async fn readyz_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let r = get(addr, "/readyz", &[]).await;
        let body = r.json();
        if done(r.status, &body) {
            return body;
        }
        assert!(
            start.elapsed() < super::PATIENCE,
            "readyz never showed {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
