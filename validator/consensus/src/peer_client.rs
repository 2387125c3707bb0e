//! Connections to peers, each authenticated once (see [`crate::network`]):
//! a new connection fetches the peer's challenge for it, signs it, and
//! sends that token with every request it carries.

use crate::committee::{AuthorityIndex, Committee};
use crate::network::{self, PeerToken};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use soma_crypto::SecretKey;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Connections kept open per peer.
const POOL: usize = 8;

/// How long connecting and fetching the challenge may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's connections to its peers.
pub(crate) struct PeerClient {
    key: SecretKey,
    committee: Committee,
    me: AuthorityIndex,
    addresses: Vec<SocketAddr>,
    /// Per peer, open connections (some may be busy with a response).
    pools: Vec<Mutex<Vec<Connection>>>,
}

/// One authenticated HTTP/1.1 connection.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    token: PeerToken,
}

impl PeerClient {
    pub(crate) fn new(
        key: &SecretKey,
        committee: Committee,
        me: AuthorityIndex,
        addresses: Vec<SocketAddr>,
    ) -> PeerClient {
        PeerClient {
            key: SecretKey::from_bytes(&key.to_bytes()),
            pools: addresses.iter().map(|_| Mutex::default()).collect(),
            committee,
            me,
            addresses,
        }
    }

    /// Sends `body` to `path` of `peer`; the response, unless none came
    /// within `timeout`.
    pub(crate) async fn post(
        &self,
        peer: AuthorityIndex,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Option<Response<Incoming>> {
        tokio::time::timeout(timeout, self.send(peer, path, body))
            .await
            .ok()
            .flatten()
    }

    async fn send(
        &self,
        peer: AuthorityIndex,
        path: &str,
        body: Bytes,
    ) -> Option<Response<Incoming>> {
        let mut connection = match self.take_ready(peer) {
            Some(connection) => connection,
            None => tokio::time::timeout(CONNECT_TIMEOUT, self.connect(peer))
                .await
                .ok()??,
        };
        let mut request = Request::builder().method(Method::POST).uri(path).header(
            hyper::header::HOST,
            self.addresses[peer.0 as usize].to_string(),
        );
        for (name, value) in connection.token.headers() {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).expect("a valid request");
        let response = connection.sender.send_request(request).await.ok()?;
        // Ready again once the caller has read the body.
        let mut pool = self.pool(peer);
        if pool.len() < POOL {
            pool.push(connection);
        }
        Some(response)
    }

    /// An open connection to `peer` that can take a request now; closed
    /// ones are dropped, busy ones stay.
    fn take_ready(&self, peer: AuthorityIndex) -> Option<Connection> {
        let mut pool = self.pool(peer);
        pool.retain(|c| !c.sender.is_closed());
        let ready = pool.iter().position(|c| c.sender.is_ready())?;
        Some(pool.swap_remove(ready))
    }

    fn pool(&self, peer: AuthorityIndex) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.pools[peer.0 as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a connection to `peer` and signs its challenge.
    async fn connect(&self, peer: AuthorityIndex) -> Option<Connection> {
        let address = self.addresses[peer.0 as usize];
        let stream = tokio::net::TcpStream::connect(address).await.ok()?;
        // Small messages must not wait for Nagle's algorithm.
        stream.set_nodelay(true).ok()?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(Method::GET)
            .uri(network::CHALLENGE_PATH)
            .header(hyper::header::HOST, address.to_string())
            .body(Full::default())
            .expect("a valid request");
        let response = sender.send_request(request).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = Limited::new(response.into_body(), 64)
            .collect()
            .await
            .ok()?
            .to_bytes();
        let challenge = network::parse_challenge(std::str::from_utf8(&body).ok()?).ok()?;
        let token = PeerToken::sign(&self.key, &self.committee, self.me, peer, challenge);
        Some(Connection { sender, token })
    }
}
