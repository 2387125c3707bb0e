//! The HTTP server of a node: blocks pushed by their authors, fetches and
//! rounds requests from peers, transactions and status from clients.
//!
//! Everything here is bounded, because anyone can connect: a cap on open
//! connections (at the cap, a connection no validator authenticated on
//! makes room, the oldest of the address holding the most, and no peer
//! may hold more than [`PEER_CONNECTIONS`]), a
//! deadline for request headers and one for the body, one for each write
//! of a response (a client that stops reading is closed), body sizes per path,
//! one fetch served at a time per peer (from the store, on a blocking
//! thread, never on the core task), a rate per source address for
//! transactions (in bytes), and a closed connection after a failed peer
//! authentication.

use crate::block::{MAX_TRANSACTION_BYTES, SignedBlock};
use crate::block_verifier::{self, Verdict};
use crate::committee::AuthorityIndex;
use crate::mempool::SubmitError;
use crate::network::{self, FetchRequest, PeerToken, RoundsRequest, WireError};
use crate::node::{
    COMMIT_RECORDS_PATH, COMMITS_PATH, STATUS_PATH, Shared, SubmitRefused, TRANSACTION_PATH, submit,
};
use crate::store::{CommitRecord, Store, StoreError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Most connections open at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 512;
/// Most connections one peer may hold; its oldest are closed beyond.
pub const PEER_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write of a response may wait for the client to read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Transaction bytes one source address may submit per second (and at
/// once); each transaction counts at least `MIN_TRANSACTION_CHARGE`.
pub const TRANSACTION_BYTES_PER_SECOND: u32 = 4 << 20;
/// What the smallest transaction costs of a source's rate.
const MIN_TRANSACTION_CHARGE: u32 = 512;
/// Requests reading the commit log at once.
const COMMIT_READERS: usize = 2;
/// Most commits one request to the commit log lists.
const MAX_COMMITS_LISTED: usize = 10_000;
/// Source addresses whose submission rates are tracked.
const TRACKED_SOURCES: usize = 10_000;

/// The server's own state beside what the node shares.
struct Service {
    shared: Arc<Shared>,
    /// Per peer, whether a fetch of theirs is being served.
    serving: Vec<AtomicBool>,
    rates: Mutex<SourceRates>,
    /// Open connections by the order they were accepted in.
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    /// Reads of the commit log at once.
    commit_readers: Semaphore,
}

/// One accepted connection: its challenge, and the peer that proved
/// itself on it.
struct Connection {
    source: IpAddr,
    challenge: [u8; 16],
    peer: std::sync::OnceLock<AuthorityIndex>,
    /// Ends the connection's task, to make room for another.
    abort: std::sync::OnceLock<tokio::task::AbortHandle>,
}

/// Removes a connection from [`Service::open`] however its task ends.
struct Opened<'a>(&'a Service, u64);

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        self.0.lock_open().remove(&self.1);
    }
}

/// A peer's fetch being served, until dropped: by the handler if it ends
/// (or hyper drops it because the client went away) before the store is
/// read, else by the blocking task that reads it, so that a peer that
/// hangs up cannot start another walk while one runs.
struct Serving {
    service: Arc<Service>,
    peer: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.service.serving[self.peer].store(false, Ordering::Release);
    }
}

/// Accepts connections until the listener fails for good.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let n = shared.committee.size();
    let service = Arc::new(Service {
        shared,
        serving: (0..n).map(|_| AtomicBool::new(false)).collect(),
        rates: Mutex::new(SourceRates::default()),
        open: Mutex::default(),
        commit_readers: Semaphore::new(COMMIT_READERS),
    });
    let mut next_id = 0u64;
    loop {
        let (stream, source) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of
                // spinning on the error.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !service.make_room() {
            service.count(&service.shared.metrics.throttled);
            continue;
        }
        let mut challenge = [0; 16];
        if let Err(e) = getrandom::fill(&mut challenge) {
            tracing::warn!("no randomness for a connection's challenge: {e}");
            continue;
        }
        let connection = Arc::new(Connection {
            source: source.ip(),
            challenge,
            peer: std::sync::OnceLock::new(),
            abort: std::sync::OnceLock::new(),
        });
        let id = next_id;
        next_id += 1;
        service.lock_open().insert(id, connection.clone());
        // Small messages must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let service = service.clone();
        let task = tokio::spawn({
            let connection = connection.clone();
            async move {
                let _opened = Opened(&service, id);
                let handler = service.clone();
                let source = source.ip();
                let http = hyper::service::service_fn(move |request| {
                    let service = handler.clone();
                    let connection = connection.clone();
                    async move {
                        let response = service.handle(request, source, &connection).await;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(Box::pin(stream)), http)
                    .await;
                if served.is_err_and(|e| write_timed_out(&e)) {
                    service.count(&service.shared.metrics.write_timeouts);
                }
            }
        });
        let _ = connection.abort.set(task.abort_handle());
    }
}

/// Whether a connection ended because a response could not be written
/// within [`WRITE_TIMEOUT`] (the only timeout that surfaces as an I/O error).
fn write_timed_out(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = e.source();
    }
    false
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .expect("a valid response")
}

impl Service {
    fn lock_open(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether another connection may open: below the cap, or after
    /// closing the oldest one no peer authenticated on, from the address
    /// that holds the most of those.
    fn make_room(&self) -> bool {
        let mut open = self.lock_open();
        if open.len() < MAX_CONNECTIONS {
            return true;
        }
        let mut strangers: BTreeMap<IpAddr, (usize, u64)> = BTreeMap::new();
        for (id, connection) in open.iter().filter(|(_, c)| c.peer.get().is_none()) {
            let entry = strangers.entry(connection.source).or_insert((0, *id));
            entry.0 += 1;
        }
        let busiest = strangers.values().max_by_key(|(count, _)| *count);
        let Some(&(_, oldest)) = busiest else {
            return false;
        };
        self.close(&mut open, oldest);
        true
    }

    /// Ends connection `id`'s task.
    fn close(&self, open: &mut BTreeMap<u64, Arc<Connection>>, id: u64) {
        if let Some(closed) = open.remove(&id)
            && let Some(abort) = closed.abort.get()
        {
            abort.abort();
        }
        self.count(&self.shared.metrics.throttled);
    }

    /// Keeps at most [`PEER_CONNECTIONS`] connections per peer: a peer
    /// (honest or not) cannot hold the server's connections.
    fn limit_peer(&self, peer: AuthorityIndex) {
        let mut open = self.lock_open();
        let theirs: Vec<u64> = open
            .iter()
            .filter(|(_, c)| c.peer.get() == Some(&peer))
            .map(|(id, _)| *id)
            .collect();
        let excess = theirs.len().saturating_sub(PEER_CONNECTIONS);
        for id in &theirs[..excess] {
            self.close(&mut open, *id);
        }
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A refusal: counted, answered with the reason.
    fn refuse(&self, status: StatusCode, reason: impl ToString) -> Response<Full<Bytes>> {
        self.count(&self.shared.metrics.refused);
        reply(status, reason.to_string())
    }

    /// A failed peer authentication: refused, and the connection closed,
    /// so that each attempt costs the sender a new connection.
    fn unauthorized(&self, e: WireError) -> Response<Full<Bytes>> {
        let mut response = self.refuse(StatusCode::UNAUTHORIZED, e);
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        response
    }

    async fn read_body(
        &self,
        request: Request<Incoming>,
        limit: usize,
    ) -> Result<Bytes, Response<Full<Bytes>>> {
        let body = Limited::new(request.into_body(), limit).collect();
        match tokio::time::timeout(BODY_TIMEOUT, body).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(_)) => Err(self.refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {limit} bytes"),
            )),
            Err(_) => Err(self.refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {BODY_TIMEOUT:?}"),
            )),
        }
    }

    /// The peer `connection` belongs to: proved by the request's token
    /// once, remembered for the connection's life.
    fn authenticate(
        &self,
        request: &Request<Incoming>,
        connection: &Connection,
    ) -> Result<AuthorityIndex, WireError> {
        if let Some(peer) = connection.peer.get() {
            return Ok(*peer);
        }
        let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        let headers = network::PeerHeaders {
            peer: header(network::PEER_HEADER),
            committee: header(network::COMMITTEE_HEADER),
            auth: header(network::AUTH_HEADER),
        };
        let shared = &self.shared;
        let sender = PeerToken::verify(
            headers,
            shared.authority,
            &shared.committee,
            connection.challenge,
        )?;
        let peer = *connection.peer.get_or_init(|| sender);
        self.limit_peer(peer);
        Ok(peer)
    }

    async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        source: IpAddr,
        connection: &Connection,
    ) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        match (request.method().clone(), path.as_str()) {
            (Method::GET, network::CHALLENGE_PATH) => {
                reply(StatusCode::OK, hex::encode(connection.challenge))
            }
            (Method::POST, network::BLOCK_PATH) => self.take_block(request, connection).await,
            (Method::POST, network::FETCH_PATH) => {
                self.answer(
                    request,
                    connection,
                    network::MAX_FETCH_BODY,
                    |body, store| {
                        let request = FetchRequest::decode(body)?;
                        Ok(request.answer(store, network::FETCH_LIMIT)?)
                    },
                )
                .await
            }
            (Method::POST, network::ROUNDS_PATH) => {
                self.answer(request, connection, 4, |body, store| {
                    Ok(RoundsRequest::decode(body)?.answer(store)?)
                })
                .await
            }
            (Method::POST, TRANSACTION_PATH) => self.take_transaction(request, source).await,
            (Method::GET, STATUS_PATH) => reply(StatusCode::OK, self.status().to_string()),
            (Method::GET, COMMITS_PATH) => {
                let query = request.uri().query().unwrap_or("");
                self.commit_log(query, MAX_COMMITS_LISTED, |commits| {
                    commits.iter().map(commit_line).collect::<String>().into()
                })
                .await
            }
            (Method::GET, COMMIT_RECORDS_PATH) => {
                let query = request.uri().query().unwrap_or("");
                self.commit_log(query, crate::MAX_RECORDS, |commits| {
                    crate::encode_records(commits).into()
                })
                .await
            }
            _ => reply(StatusCode::NOT_FOUND, format!("no {path} here")),
        }
    }

    /// A block pushed by its author.
    async fn take_block(
        &self,
        request: Request<Incoming>,
        connection: &Connection,
    ) -> Response<Full<Bytes>> {
        let peer = match self.authenticate(&request, connection) {
            Ok(peer) => peer,
            Err(e) => return self.unauthorized(e),
        };
        let body = match self.read_body(request, network::MAX_BLOCK_BODY).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let block = match SignedBlock::decode(&body) {
            Ok(block) => block,
            Err(e) => return self.refuse(StatusCode::UNPROCESSABLE_ENTITY, e),
        };
        // Others' blocks come by fetching, where only what was asked for is
        // taken: a pushed block must be its sender's own.
        if block.block().author != peer {
            return self.refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "validator {} pushed a block of validator {}",
                    peer.0,
                    block.block().author.0
                ),
            );
        }
        let shared = self.shared.clone();
        let verdict =
            tokio::task::spawn_blocking(move || shared.blocks.verify(block, Some(peer))).await;
        match verdict {
            Ok(Ok(Verdict::Seen)) => reply(StatusCode::OK, ""),
            Ok(Ok(Verdict::New(block))) => {
                self.count(&self.shared.metrics.blocks_received);
                block_verifier::deliver(vec![block]).await;
                reply(StatusCode::OK, "")
            }
            Ok(Err(e)) => self.refuse(StatusCode::UNPROCESSABLE_ENTITY, e),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    /// Answers a peer's fetch or rounds request from the store, one at a
    /// time per peer.
    async fn answer(
        self: &Arc<Self>,
        request: Request<Incoming>,
        connection: &Connection,
        limit: usize,
        answer: impl FnOnce(&[u8], &dyn Store) -> Result<Vec<SignedBlock>, AnswerError> + Send + 'static,
    ) -> Response<Full<Bytes>> {
        let peer = match self.authenticate(&request, connection) {
            Ok(peer) => peer,
            Err(e) => return self.unauthorized(e),
        };
        let serving = &self.serving[peer.0 as usize];
        if serving.swap(true, Ordering::AcqRel) {
            self.count(&self.shared.metrics.throttled);
            return reply(
                StatusCode::TOO_MANY_REQUESTS,
                "one fetch at a time per validator",
            );
        }
        let serving = Serving {
            service: self.clone(),
            peer: peer.0 as usize,
        };
        let body = match self.read_body(request, limit).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let store = self.shared.store.clone();
        let answered = tokio::task::spawn_blocking(move || {
            let _serving = serving;
            let blocks = answer(&body, &store)?;
            let wires: Vec<Vec<u8>> = blocks.iter().map(|b| b.to_bytes()).collect();
            Ok::<_, AnswerError>(network::encode_blocks(wires.iter().map(|w| &w[..])))
        })
        .await;
        match answered {
            Ok(Ok(bytes)) => reply(StatusCode::OK, bytes),
            Ok(Err(AnswerError::Wire(e))) => self.refuse(StatusCode::BAD_REQUEST, e),
            Ok(Err(AnswerError::Store(e))) => {
                reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn take_transaction(
        &self,
        request: Request<Incoming>,
        source: IpAddr,
    ) -> Response<Full<Bytes>> {
        let body = match self.read_body(request, MAX_TRANSACTION_BYTES).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let cost = (body.len() as u32).max(MIN_TRANSACTION_CHARGE);
        let allowed =
            self.rates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(source, cost, Instant::now());
        if !allowed {
            self.count(&self.shared.metrics.throttled);
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", "1")
                .body(Full::new(Bytes::from(format!(
                    "over {TRANSACTION_BYTES_PER_SECOND} transaction bytes per second from {source}"
                ))))
                .expect("a valid response");
        }
        match submit(&self.shared, body.to_vec()) {
            Ok(()) => reply(StatusCode::ACCEPTED, ""),
            Err(e @ SubmitRefused::Invalid) => {
                reply(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            Err(e @ SubmitRefused::Core(SubmitError::TooLarge(_))) => {
                reply(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    fn status(&self) -> serde_json::Value {
        let m = &self.shared.metrics;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "authority": self.shared.authority.0,
            "commits": load(&m.commits),
            "last_committed_round": load(&m.last_committed_round),
            "last_proposed_round": load(&m.last_proposed_round),
            "committed_transactions": load(&m.committed_transactions),
            "blocks_received": load(&m.blocks_received),
            "refused": load(&m.refused),
            "throttled": load(&m.throttled),
            "dropped": load(&m.dropped),
            "catch_up_requests": load(&m.catch_up_requests),
            "write_timeouts": load(&m.write_timeouts),
        })
    }

    /// Up to `max` commits of the log from `from=` (at most `limit=`),
    /// read on a blocking thread and answered in the form `format` gives.
    async fn commit_log(
        &self,
        query: &str,
        max: usize,
        format: impl FnOnce(&[CommitRecord]) -> Bytes + Send + 'static,
    ) -> Response<Full<Bytes>> {
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::parse::<u64>)
        };
        let (Ok(from), Ok(limit)) = (
            param("from").unwrap_or(Ok(0)),
            param("limit").unwrap_or(Ok(1000)),
        ) else {
            return reply(StatusCode::BAD_REQUEST, "from and limit are integers");
        };
        let Ok(_reading) = self.commit_readers.try_acquire() else {
            self.count(&self.shared.metrics.throttled);
            return reply(StatusCode::TOO_MANY_REQUESTS, "the commit log is busy");
        };
        let store = self.shared.store.clone();
        let limit = (limit as usize).min(max);
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>(format(&store.commits(from, limit)?))
        })
        .await;
        match read {
            Ok(Ok(body)) => reply(StatusCode::OK, body),
            Ok(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// Why a fetch could not be answered.
enum AnswerError {
    Wire(WireError),
    Store(StoreError),
}

impl From<WireError> for AnswerError {
    fn from(e: WireError) -> Self {
        AnswerError::Wire(e)
    }
}

impl From<StoreError> for AnswerError {
    fn from(e: StoreError) -> Self {
        AnswerError::Store(e)
    }
}

/// `index leader-round leader-author digest` for one commit.
fn commit_line(commit: &CommitRecord) -> String {
    format!(
        "{} {} {} {}\n",
        commit.index,
        commit.leader.round,
        commit.leader.author.0,
        hex::encode(commit.digest())
    )
}

/// A token bucket of bytes per source address, refilled at
/// [`TRANSACTION_BYTES_PER_SECOND`].
#[derive(Default)]
struct SourceRates {
    buckets: BTreeMap<IpAddr, (f64, Instant)>,
}

impl SourceRates {
    /// Takes `cost` bytes from `source`'s bucket; whether they were there.
    fn take(&mut self, source: IpAddr, cost: u32, now: Instant) -> bool {
        let rate = f64::from(TRANSACTION_BYTES_PER_SECOND);
        let refill =
            |(tokens, at): &(f64, Instant)| (tokens + rate * (now - *at).as_secs_f64()).min(rate);
        if self.buckets.len() >= TRACKED_SOURCES && !self.buckets.contains_key(&source) {
            // A full bucket is the same as no entry: forget those.
            self.buckets.retain(|_, bucket| refill(bucket) < rate);
            if self.buckets.len() >= TRACKED_SOURCES {
                return false;
            }
        }
        let bucket = self.buckets.entry(source).or_insert((rate, now));
        let tokens = refill(bucket);
        let allowed = tokens >= f64::from(cost);
        *bucket = (
            if allowed {
                tokens - f64::from(cost)
            } else {
                tokens
            },
            now,
        );
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_gets_its_own_rate_in_bytes() {
        let mut rates = SourceRates::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        let large = 64 << 10;
        for _ in 0..TRANSACTION_BYTES_PER_SECOND / large {
            assert!(rates.take(a, large, start));
        }
        assert!(!rates.take(a, large, start), "the burst is spent");
        assert!(
            rates.take(b, large, start),
            "another source is not held back"
        );
        // 10 ms later there is room for 40 KiB: small ones, no large one.
        let later = start + Duration::from_millis(10);
        assert!(!rates.take(a, large, later));
        let small = MIN_TRANSACTION_CHARGE;
        let refilled = TRANSACTION_BYTES_PER_SECOND / 100 / small;
        let taken = (0..1_000).filter(|_| rates.take(a, small, later)).count();
        assert_eq!(taken, refilled as usize);
    }
}
