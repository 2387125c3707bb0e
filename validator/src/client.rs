//! A small blocking client of a node's HTTP API, for `soma client`, the
//! demo and scripts: one connection per request, JSON in and out.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest response the client reads: a package or a page of a state
/// snapshot at most, and its head.
const MAX_RESPONSE: u64 = {
    let body = if crate::api::MAX_PACKAGE_BODY > soma_execution::MAX_SNAPSHOT_PAGE {
        crate::api::MAX_PACKAGE_BODY
    } else {
        soma_execution::MAX_SNAPSHOT_PAGE
    };
    body as u64 + (1 << 20)
};

/// A node's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    address: SocketAddr,
    api_key: Option<String>,
    timeout: Duration,
    max_response: u64,
}

/// An answer: its status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, parsed as JSON (a string if it is not JSON).
    pub body: Value,
}

impl Answer {
    /// The body if the status is 2xx; otherwise an error with the node's
    /// reason.
    pub fn ok(self) -> Result<Value> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let reason = self.body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| self.body.to_string());
        bail!("the node answered {}: {reason}", self.status)
    }
}

impl ApiClient {
    /// A client of the API at `address`, sending `api_key` as the bearer
    /// token if given, waiting at most `timeout` for each whole answer.
    pub fn new(address: SocketAddr, api_key: Option<String>, timeout: Duration) -> ApiClient {
        ApiClient {
            address,
            api_key,
            timeout,
            max_response: MAX_RESPONSE,
        }
    }

    /// The address of the API.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The same client, reading answers of at most `bytes` bytes of body
    /// (and a head) instead of the largest the API sends.
    pub fn with_max_body(&self, bytes: usize) -> ApiClient {
        ApiClient {
            max_response: (bytes as u64 + (1 << 20)).min(MAX_RESPONSE),
            ..self.clone()
        }
    }

    /// The same client, waiting at most `timeout` for each whole answer.
    pub fn with_timeout(&self, timeout: Duration) -> ApiClient {
        ApiClient {
            timeout,
            ..self.clone()
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Answer> {
        self.request("GET", path, "application/json", &[])
    }

    /// `GET path`, for bytes that are not JSON (a package): the status and
    /// the body.
    pub fn get_bytes(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        self.exchange("GET", path, "application/octet-stream", &[])
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Answer> {
        self.request(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    /// `POST path` with raw bytes (a signed transaction, a package).
    pub fn post_bytes(&self, path: &str, body: &[u8]) -> Result<Answer> {
        self.request("POST", path, "application/octet-stream", body)
    }

    fn request(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Result<Answer> {
        let (status, body) = self.exchange(method, path, content_type, body)?;
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(Answer { status, body })
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let failed = || format!("{method} http://{}{path}", self.address);
        let mut stream = TcpStream::connect_timeout(&self.address, Duration::from_secs(5))
            .with_context(|| format!("cannot reach the node at {}", self.address))?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\
             content-type: {content_type}\r\ncontent-length: {}\r\n",
            self.address,
            body.len()
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .with_context(failed)?;
        // The deadline is for the whole answer: a peer that sends a byte
        // now and then cannot hold the caller.
        let deadline = Instant::now() + self.timeout;
        let mut response = Vec::new();
        let mut chunk = vec![0; 64 << 10];
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
                .with_context(|| {
                    format!("{}: no whole answer within {:?}", failed(), self.timeout)
                })?;
            stream.set_read_timeout(Some(left))?;
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    bail!("{}: no whole answer within {:?}", failed(), self.timeout)
                }
                Err(e) => return Err(e).with_context(failed),
            };
            if n == 0 {
                break;
            }
            if (response.len() + n) as u64 > self.max_response {
                bail!(
                    "{}: the answer is over {} bytes",
                    failed(),
                    self.max_response
                );
            }
            response.extend_from_slice(&chunk[..n]);
        }
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .with_context(|| format!("{}: no complete response", failed()))?;
        let status = std::str::from_utf8(&response[..split])
            .ok()
            .and_then(|head| head.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: no status in the response", failed()))?;
        response.drain(..split + 4);
        Ok((status, response))
    }
}
