//! A webhook receiver for the tests: a raw HTTP/1.1 server that records
//! every request and answers as a policy says (a status, a status with
//! `Retry-After`, no answer at all, or a dropped connection), so failures
//! of every kind can be staged.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How to answer one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Status(u16),
    /// A status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// Say nothing for this long, then close.
    Hang(Duration),
    /// Close the connection without answering.
    Close,
    /// Wait this long, then answer with the status.
    Slow(Duration, u16),
}

/// One received request.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: Instant,
    /// What it was answered.
    pub answer: Answer,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// The event's seq (from the envelope body).
    pub fn seq(&self) -> i64 {
        let v: serde_json::Value = serde_json::from_str(&self.body).expect("JSON body");
        v["seq"].as_i64().expect("seq")
    }

    /// The seqs of the envelopes a batch body (a JSON array) holds, in
    /// body order.
    pub fn seqs(&self) -> Vec<i64> {
        let v: serde_json::Value = serde_json::from_str(&self.body).expect("JSON body");
        v.as_array()
            .expect("a batch body is an array")
            .iter()
            .map(|e| e["seq"].as_i64().expect("seq"))
            .collect()
    }
}

/// Decides the answer from the request and how many requests with the same
/// `webhook-id` came before it (0 for the first).
pub type Policy = Arc<dyn Fn(&Received, usize) -> Answer + Send + Sync>;

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Received>>>,
    policy: Arc<Mutex<Policy>>,
}

impl Receiver {
    pub async fn start(policy: Policy) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let r = Receiver {
            addr,
            log: Arc::default(),
            policy: Arc::new(Mutex::new(policy)),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.serve(sock).await });
            }
        });
        r
    }

    /// Always 200.
    pub async fn ok() -> Receiver {
        Receiver::start(Arc::new(|_, _| Answer::Status(200))).await
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.policy.lock().expect("lock") = policy;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().expect("lock").clone()
    }

    /// Requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| match r.answer {
                Answer::Status(s) | Answer::Slow(_, s) => (200..300).contains(&s),
                _ => false,
            })
            .collect()
    }

    /// Waits until `done` holds for the log, failing after `patience`.
    pub async fn wait_until(
        &self,
        patience: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) {
        let start = Instant::now();
        loop {
            if done(&self.received()) {
                return;
            }
            assert!(
                start.elapsed() < patience,
                "receiver: {what} did not happen within {patience:?}; got {} requests",
                self.received().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn serve(&self, sock: TcpStream) {
        let mut reader = BufReader::new(sock);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut headers = HashMap::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            let mut req = Received {
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                at: Instant::now(),
                answer: Answer::Close,
            };
            let answer = {
                let mut log = self.log.lock().expect("lock");
                let id = req.header("webhook-id").to_owned();
                let before = log.iter().filter(|r| r.header("webhook-id") == id).count();
                let policy = self.policy.lock().expect("lock").clone();
                req.answer = policy(&req, before);
                log.push(req.clone());
                req.answer
            };
            let (status, extra) = match answer {
                Answer::Status(s) => (s, String::new()),
                Answer::RetryAfter(s, secs) => (s, format!("retry-after: {secs}\r\n")),
                Answer::Hang(d) => {
                    tokio::time::sleep(d).await;
                    return;
                }
                Answer::Close => return,
                Answer::Slow(d, s) => {
                    tokio::time::sleep(d).await;
                    (s, String::new())
                }
            };
            let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{extra}\r\nok");
            if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}
