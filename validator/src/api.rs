//! The HTTP API clients use: submit signed transactions, read accounts,
//! encoders and jobs, upload packages, and `POST /v1/embeddings`, which is
//! compatible with OpenAI's embeddings API.
//!
//! Anyone can connect, so everything is bounded: open connections (more are
//! closed on arrival), the time to send headers and body, body sizes per
//! path, embedding requests in flight and each API key's requests per
//! second (429 with `Retry-After` beyond), and what one embedding request
//! may ask for. Every refusal is JSON with a
//! reason, in OpenAI's error shape: 4xx for what the client must change
//! (408 and 429 for slow or too many), 5xx when the node cannot answer
//! now.

use crate::admission::{self, Refusal};
use crate::journal::{JournalError, Recorded};
use crate::metrics;
use crate::node::Shared;
use crate::roots;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use soma_codec::Encode;
use soma_consensus::SubmitRefused;
use soma_crypto::SecretKey;
use soma_crypto::{Domain, PublicKey};
use soma_execution::{
    Action, EncoderResult, Job, JobStatus, Parameters, PinnedState, SNAPSHOT_PAGE_BYTES,
    SignedTransaction, Transaction,
};
use soma_host::package::Package;
use soma_host::{Digest, Modality};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most API connections open at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write of a response may wait for the client to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body of a JSON request.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Largest uploaded package.
pub const MAX_PACKAGE_BODY: usize = 128 << 20;

/// Embedding requests waiting for their jobs at once; more get 429.
pub const MAX_EMBEDDING_REQUESTS: usize = 64;
/// Embedding requests one API key may have waiting at once.
pub const MAX_REQUESTS_PER_KEY: usize = 8;
/// Requests one API key may make at once after a quiet spell; past them,
/// [`KEY_REQUESTS_PER_SECOND`] (429 with `Retry-After` beyond).
pub const KEY_BURST: u32 = 32;
/// Requests per second one API key may make, past [`KEY_BURST`].
pub const KEY_REQUESTS_PER_SECOND: u32 = 8;
/// Package uploads a node takes at once.
pub const MAX_UPLOADS: usize = 1;
/// Package downloads a node serves at once.
pub const MAX_DOWNLOADS: usize = 2;
/// The shortest time between two checks of an embedding request's jobs.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// Most inputs in one embedding request.
pub const MAX_INPUTS: usize = 64;
/// How long `POST /v1/embeddings` waits for its jobs.
pub const EMBEDDING_TIMEOUT: Duration = Duration::from_secs(120);

/// The one model this API serves: the network's embedding space.
const MODEL: &str = "soma";

type Reply = Response<Body>;

/// A response body. A large answer holds what bounds such answers in
/// flight (a permit of their semaphore) until its last chunk is taken,
/// which is when all but what the connection buffers is sent: a client
/// that reads slowly holds its answer's slot, not just memory. Past
/// [`SEND_DEADLINE`] the rest is not sent and the connection is closed.
pub(crate) struct Body {
    rest: Bytes,
    held: Option<(OwnedSemaphorePermit, Instant)>,
}

/// The chunks a large answer is handed to the connection in.
const SEND_CHUNK: usize = 256 << 10;
/// How long a large answer may take to send.
const SEND_DEADLINE: Duration = Duration::from_secs(300);

impl Body {
    fn new(bytes: impl Into<Bytes>) -> Body {
        Body {
            rest: bytes.into(),
            held: None,
        }
    }

    fn holding(bytes: impl Into<Bytes>, permit: OwnedSemaphorePermit) -> Body {
        Body {
            rest: bytes.into(),
            held: Some((permit, Instant::now())),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            self.held = None;
            return std::task::Poll::Ready(None);
        }
        if let Some((_, since)) = &self.held
            && since.elapsed() > SEND_DEADLINE
        {
            self.held = None;
            return std::task::Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read the answer too slowly",
            ))));
        }
        let chunk = match self.held {
            Some(_) => self.rest.len().min(SEND_CHUNK),
            None => self.rest.len(),
        };
        let chunk = self.rest.split_to(chunk);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

struct Api {
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    embedding_requests: Semaphore,
    /// Embedding requests in flight per API key (by its hash).
    per_key: Mutex<BTreeMap<[u8; 32], usize>>,
    /// Each API key's requests left (by its hash), with when they were
    /// counted: a token bucket.
    key_rates: Mutex<BTreeMap<[u8; 32], (f64, Instant)>>,
    /// Package uploads at once.
    uploads: Semaphore,
    /// Package downloads at once, until each is sent.
    downloads: Arc<Semaphore>,
    /// States pinned for peers that restore them a page at a time.
    pins: Mutex<Vec<Pin>>,
    /// Snapshot pages being read or sent at once.
    snapshot_pages: Arc<Semaphore>,
}

/// A state pinned for snapshot pages ([`Api::snapshot`]).
struct Pin {
    state: Arc<PinnedState>,
    made: Instant,
    used: Instant,
}

/// How long a pinned state serves every new snapshot. An older snapshot
/// is as good to a restoring validator (its peers vouch for the roots of
/// every commit they applied); a fresh pin per request would let clients
/// make the node keep many old versions of its state at will.
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(600);
/// How long a pinned state no page was read from is kept: a pin keeps
/// the old versions of everything apply rewrites since.
const PIN_IDLE: Duration = Duration::from_secs(120);
/// How long a pinned state is kept however much it is read: at the
/// least rate a restorer must keep up, a state of some 6 GiB restores
/// from a pin made ten minutes before it started.
const PIN_MAX_AGE: Duration = Duration::from_secs(2 * 3600);
/// Most states pinned at once: a restore that started on an older pin
/// finishes while new ones start on the newer. A pin in use is never
/// dropped for a new one.
const MAX_PINS: usize = 2;
/// Snapshot pages read or sent at once.
const MAX_SNAPSHOT_PAGES: usize = 4;
/// How long a request for a snapshot page waits for its turn.
const PAGE_QUEUE: Duration = Duration::from_secs(5);

/// Serves the API on `listener` until the process ends.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let api = Arc::new(Api {
        shared,
        connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        embedding_requests: Semaphore::new(MAX_EMBEDDING_REQUESTS),
        per_key: Mutex::default(),
        key_rates: Mutex::default(),
        uploads: Semaphore::new(MAX_UPLOADS),
        downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
        pins: Mutex::default(),
        snapshot_pages: Arc::new(Semaphore::new(MAX_SNAPSHOT_PAGES)),
    });
    let sweeper = api.clone();
    tokio::spawn(async move {
        let mut sweeps = tokio::time::interval(PIN_IDLE / 4);
        loop {
            sweeps.tick().await;
            sweeper.sweep_pins();
        }
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: back off.
                tracing::warn!("API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = api.connections.clone().try_acquire_owned() else {
            count(&api.shared.metrics.api_throttled);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let api = api.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, std::convert::Infallible>(api.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(Box::pin(stream)), service)
                .await;
        });
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::new(body.to_string()))
        .expect("a valid response")
}

/// A refusal: why, and which status says it.
struct Refused {
    status: StatusCode,
    message: String,
    /// Seconds to wait before trying again (429).
    retry_after: Option<u64>,
    /// The method the path takes (405).
    allow: Option<&'static str>,
}

/// A 429: too much at once; try again after `seconds`.
fn busy(message: String, seconds: u64) -> Refused {
    Refused {
        retry_after: Some(seconds),
        ..refused(StatusCode::TOO_MANY_REQUESTS, message)
    }
}

/// The method `path` takes, if it is a path of the API.
fn allowed(path: &str) -> Option<&'static str> {
    match path {
        "/health" | "/metrics" | "/v1/models" | "/v1/snapshot" => Some("GET"),
        "/v1/embeddings" | "/v1/transactions" | "/v1/packages" => Some("POST"),
        p if [
            "/v1/accounts/",
            "/v1/encoders/",
            "/v1/jobs/",
            "/v1/packages/",
            "/v1/roots/",
        ]
        .iter()
        .any(|prefix| p.starts_with(prefix)) =>
        {
            Some("GET")
        }
        _ => None,
    }
}

fn refused(status: StatusCode, message: impl ToString) -> Refused {
    Refused {
        status,
        message: message.to_string(),
        retry_after: None,
        allow: None,
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        let status = match refusal {
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::State(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        refused(status, refusal)
    }
}

impl Api {
    async fn handle(&self, request: Request<Incoming>) -> Reply {
        let path = request.uri().path().to_string();
        let result = match (request.method().clone(), path.as_str()) {
            (Method::GET, "/health") => Ok(self.health()),
            (Method::GET, "/metrics") => Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Body::new(metrics::render(&self.shared)))
                .expect("a valid response")),
            (Method::GET, "/v1/models") => Ok(self.models()),
            (Method::POST, "/v1/embeddings") => self.embeddings(request).await,
            (Method::POST, "/v1/transactions") => self.transaction(request).await,
            (Method::POST, "/v1/packages") => self.package(request).await,
            (Method::GET, p) if p.starts_with("/v1/accounts/") => {
                self.account(&p["/v1/accounts/".len()..])
            }
            (Method::GET, p) if p.starts_with("/v1/encoders/") => {
                self.encoder(&p["/v1/encoders/".len()..])
            }
            (Method::GET, p) if p.starts_with("/v1/jobs/") => self.job(&p["/v1/jobs/".len()..]),
            (Method::GET, p) if p.starts_with("/v1/packages/") => {
                self.download(&p["/v1/packages/".len()..]).await
            }
            (Method::GET, "/v1/snapshot") => self.snapshot(request.uri().query()).await,
            (Method::GET, p) if p.starts_with("/v1/roots/") => self.root(&p["/v1/roots/".len()..]),
            (method, path) => match allowed(path) {
                Some(allow) => Err(Refused {
                    allow: Some(allow),
                    ..refused(
                        StatusCode::METHOD_NOT_ALLOWED,
                        format!("{method} is not allowed on {path}; {allow} is"),
                    )
                }),
                None => Err(refused(
                    StatusCode::NOT_FOUND,
                    format!("no such path {path}"),
                )),
            },
        };
        result.unwrap_or_else(|r| self.refusal(r))
    }

    fn refusal(&self, r: Refused) -> Reply {
        let metrics = &self.shared.metrics;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            count(&metrics.api_throttled);
        } else if r.status.is_client_error() {
            count(&metrics.api_refused);
        }
        let kind = if r.status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        let code = r
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace(' ', "_");
        let mut reply = json_reply(
            r.status,
            &json!({"error": {"message": r.message, "type": kind, "param": null, "code": code}}),
        );
        if let Some(seconds) = r.retry_after {
            reply
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if let Some(allow) = r.allow {
            reply
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        reply
    }

    async fn body(&self, request: Request<Incoming>, limit: usize) -> Result<Bytes, Refused> {
        let body = Limited::new(request.into_body(), limit).collect();
        match tokio::time::timeout(BODY_TIMEOUT, body).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {limit} bytes"),
                ))
            }
            Ok(Err(e)) => Err(refused(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            )),
            Err(_) => Err(refused(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body was not received within {BODY_TIMEOUT:?}"),
            )),
        }
    }

    fn health(&self) -> Reply {
        let applied = *self.shared.applied.borrow();
        let halt_after = self.shared.halt_after;
        // From the same reading as `next_commit`.
        let halted = self.shared.halted_at(&applied).is_some();
        json_reply(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "chain": self.shared.chain_name,
                "chain_id": hex::encode(self.shared.chain_id),
                "next_commit": applied.next_index,
                "halt_after": halt_after,
                "halted": halted,
                "state_root": hex::encode(applied.root),
                "parameters": self.shared.parameters,
            }),
        )
    }

    fn models(&self) -> Reply {
        json_reply(
            StatusCode::OK,
            &json!({"object": "list", "data": [{
                "id": MODEL,
                "object": "model",
                "created": 0,
                "owned_by": self.shared.chain_name,
                "dimension": self.shared.parameters.dimension,
            }]}),
        )
    }

    /// `POST /v1/transactions`: a signed transaction's bytes as the body.
    async fn transaction(&self, request: Request<Incoming>) -> Result<Reply, Refused> {
        let bytes = self
            .body(request, soma_execution::MAX_TRANSACTION_BYTES as usize)
            .await?;
        let admitted = admission::admit(&self.shared, &bytes)?;
        let signed = admitted.signed;
        // On disk before the client hears it was accepted: a crash before
        // it is proposed does not lose it (see `journal`).
        let journal = &self.shared.journal;
        let priority = admitted.placement.priority;
        let recorded = journal.record(&signed, priority).map_err(|e| match e {
            JournalError::Full => busy(format!("the node cannot take the transaction now: {e}"), 5),
            JournalError::Storage(_) => {
                tracing::error!("cannot journal a transaction: {e}");
                refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the node cannot record the transaction now",
                )
            }
        })?;
        if recorded == Recorded::Outbid {
            return Err(refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "another transaction of this sender with nonce {} waits already; a \
                     replacement must pay at least an eighth more per byte",
                    signed.transaction().nonce
                ),
            ));
        }
        if let Err(refusal) = self.submit(&signed) {
            if let Err(e) = journal.undo(&signed, recorded) {
                tracing::error!("cannot take a refused transaction out of the journal: {e}");
            }
            return Err(refusal);
        }
        Ok(json_reply(
            StatusCode::ACCEPTED,
            &json!({"transaction": signed.digest().to_string()}),
        ))
    }

    fn submit(&self, signed: &SignedTransaction) -> Result<(), Refused> {
        if let Some(halt) = self.shared.halted() {
            return Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the node halted after commit {halt} for an upgrade; it takes transactions \
                     again once it is started without --halt-after"
                ),
            ));
        }
        self.shared.track(signed.digest());
        self.shared
            .submitter()
            .submit(signed.to_bytes())
            .map_err(|e| match e {
                SubmitRefused::Invalid => refused(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "the node does not admit the transaction",
                ),
                SubmitRefused::Stopping => {
                    refused(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping")
                }
                SubmitRefused::Core(e) => {
                    busy(format!("the node cannot take the transaction now: {e}"), 1)
                }
            })
    }

    /// `POST /v1/packages`: a signed package's bytes; verified and stored,
    /// so this node's attester can run the encoder once it is registered.
    async fn package(&self, request: Request<Incoming>) -> Result<Reply, Refused> {
        // Stored packages stay: only holders of an API key may add them,
        // one at a time.
        self.authorize(&request)?;
        let Ok(_upload) = self.uploads.try_acquire() else {
            return Err(busy(
                "another package is being uploaded; retry later".into(),
                5,
            ));
        };
        let bytes = self.body(request, MAX_PACKAGE_BODY).await?;
        let shared = self.shared.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let package = Package::decode(&bytes)
                .and_then(|p| p.verify(None))
                .map_err(|e| {
                    refused(
                        StatusCode::BAD_REQUEST,
                        format!("not a valid signed package: {e}"),
                    )
                })?;
            shared
                .blobs
                .install(&package)
                .map_err(|e| refused(StatusCode::SERVICE_UNAVAILABLE, e))
        })
        .await
        .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e))??;
        Ok(json_reply(
            StatusCode::CREATED,
            &json!({"package": stored.to_string()}),
        ))
    }

    /// `GET /v1/packages/<digest>`: a stored package's bytes, for peers
    /// that lack it (they verify it against the digest).
    async fn download(&self, digest: &str) -> Result<Reply, Refused> {
        let digest = parse_digest(digest)?;
        // Only what the chain registered is served: a node is no file
        // host for whatever was uploaded to it.
        if !matches!(self.shared.state.encoder(&digest), Ok(Some(_))) {
            return Err(refused(
                StatusCode::NOT_FOUND,
                format!("no registered encoder's package {digest}"),
            ));
        }
        let Ok(download) = self.downloads.clone().try_acquire_owned() else {
            return Err(busy("packages are being downloaded; retry later".into(), 5));
        };
        let blobs = self.shared.blobs.clone();
        let bytes = tokio::task::spawn_blocking(move || blobs.package(&digest).map(|p| p.encode()))
            .await
            .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e))?
            .map_err(|_| refused(StatusCode::NOT_FOUND, format!("no package {digest} here")))?;
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::holding(bytes, download))
            .expect("a valid response"))
    }

    /// `GET /v1/snapshot[?commits=<n>&after=<hex cursor>]`: a page of the
    /// state after the last applied commit, pinned there, for a validator
    /// that must restore its own (`soma restore-state`). Without a query,
    /// the first page of the newest pin (a new one if that is
    /// [`SNAPSHOT_REFRESH`] old); with one, the page after the cursor of
    /// the state pinned after `commits` commits (410 once it is no longer
    /// kept). The reader trusts the copy only for a root a quorum vouches
    /// for.
    async fn snapshot(&self, query: Option<&str>) -> Result<Reply, Refused> {
        let param = |name: &str| {
            query?
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        };
        let malformed = |what: &str| {
            refused(
                StatusCode::BAD_REQUEST,
                format!("{what}; a page is asked for with ?commits=<n>&after=<hex cursor>"),
            )
        };
        let commits = param("commits")
            .map(|c| {
                c.parse::<u64>()
                    .map_err(|_| malformed("commits is not a number"))
            })
            .transpose()?;
        let after = param("after")
            .map(|a| {
                let cursor = hex::decode(a).map_err(|_| malformed("after is not hex"))?;
                PinnedState::check_cursor(&cursor).map_err(|e| malformed(&e.to_string()))?;
                Ok::<_, Refused>(cursor)
            })
            .transpose()?;
        if after.is_some() && commits.is_none() {
            return Err(malformed("a cursor without the commits of its snapshot"));
        }
        let turn = tokio::time::timeout(PAGE_QUEUE, self.snapshot_pages.clone().acquire_owned());
        let Ok(Ok(turn)) = turn.await else {
            return Err(busy("snapshot pages are being sent; retry later".into(), 1));
        };
        let state = match commits {
            Some(commits) => self.pinned(commits)?,
            None => self.newest_pin().await?,
        };
        let page_of = state.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            page_of.page(after.as_deref(), SNAPSHOT_PAGE_BYTES)
        })
        .await
        .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .map_err(unavailable)?;
        // Only a page served keeps its pin in use.
        self.touch_pin(&state);
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::holding(bytes, turn))
            .expect("a valid response"))
    }

    /// Drops the pins no page was read from for [`PIN_IDLE`], and those
    /// older than [`PIN_MAX_AGE`].
    fn sweep_pins(&self) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.retain(|pin| pin.used.elapsed() < PIN_IDLE && pin.made.elapsed() < PIN_MAX_AGE);
    }

    /// Marks the pin of `state` as in use now.
    fn touch_pin(&self, state: &Arc<PinnedState>) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pin) = pins.iter_mut().find(|pin| Arc::ptr_eq(&pin.state, state)) {
            pin.used = Instant::now();
        }
    }

    /// The state pinned after `commits` commits, if it is still kept.
    fn pinned(&self, commits: u64) -> Result<Arc<PinnedState>, Refused> {
        self.sweep_pins();
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let pin = pins
            .iter()
            .filter(|pin| pin.state.commits() == commits)
            .max_by_key(|pin| pin.made)
            .ok_or_else(|| {
                refused(
                    StatusCode::GONE,
                    format!(
                        "the state after {commits} commits is no longer kept here; start again \
                         from /v1/snapshot"
                    ),
                )
            })?;
        Ok(pin.state.clone())
    }

    /// The newest pinned state, pinned now if there is none younger than
    /// [`SNAPSHOT_REFRESH`] and fewer than [`MAX_PINS`] are in use.
    async fn newest_pin(&self) -> Result<Arc<PinnedState>, Refused> {
        // The newest pin if it is young, or if no other may be made: every
        // pin kept is in use (the sweep dropped the idle ones), and none is
        // dropped for a new one. Older, but as good.
        let reuse = |pins: &Vec<Pin>| {
            let newest = pins.iter().max_by_key(|pin| pin.made)?;
            (newest.made.elapsed() < SNAPSHOT_REFRESH || pins.len() >= MAX_PINS)
                .then(|| newest.state.clone())
        };
        self.sweep_pins();
        if let Some(state) = reuse(&self.pins.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(state);
        }
        let reader = self.shared.state.clone();
        let state = tokio::task::spawn_blocking(move || reader.pin())
            .await
            .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e))?
            .map_err(unavailable)?;
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        // Another request pinned one meanwhile.
        if let Some(state) = reuse(&pins) {
            return Ok(state);
        }
        let state = Arc::new(state);
        let now = Instant::now();
        pins.push(Pin {
            state: state.clone(),
            made: now,
            used: now,
        });
        Ok(state)
    }

    /// `GET /v1/roots/<commits>`: this node's state root after that many
    /// commits, signed with its validator key.
    fn root(&self, commits: &str) -> Result<Reply, Refused> {
        let commits: u64 = commits.parse().ok().filter(|&c| c > 0).ok_or_else(|| {
            refused(
                StatusCode::BAD_REQUEST,
                format!("`{commits}` is not a number of commits (1 or more)"),
            )
        })?;
        let root = self
            .shared
            .state
            .root_after(commits - 1)
            .map_err(unavailable)?
            .ok_or_else(|| {
                refused(
                    StatusCode::NOT_FOUND,
                    format!("this node has not applied {commits} commits"),
                )
            })?;
        let message = roots::claim_message(&self.shared.chain_id, commits, &root);
        let signature = self.shared.key.sign(Domain::StateRoot, &message);
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "commits": commits,
                "root": hex::encode(root),
                "validator": hex::encode(self.shared.key.public_key().to_bytes()),
                "signature": hex::encode(signature.0),
            }),
        ))
    }

    fn account(&self, key: &str) -> Result<Reply, Refused> {
        let key = PublicKey::from_hex(key)
            .map_err(|e| refused(StatusCode::BAD_REQUEST, format!("`{key}`: {e}")))?;
        let state = &self.shared.state;
        let account = state.account(&key).map_err(unavailable)?;
        let validator = state.validator(&key).map_err(unavailable)?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "key": hex::encode(key.to_bytes()),
                "balance": account.balance,
                "nonce": account.nonce,
                "validator": validator.map(|v| json!({
                    "stake": v.stake,
                    "deviant_attestations": v.deviant,
                    "pending_attestations": v.pending,
                })),
            }),
        ))
    }

    fn encoder(&self, digest: &str) -> Result<Reply, Refused> {
        let package = parse_digest(digest)?;
        let encoder = self
            .shared
            .state
            .encoder(&package)
            .map_err(unavailable)?
            .ok_or_else(|| {
                refused(
                    StatusCode::NOT_FOUND,
                    format!("no encoder is registered for {package}"),
                )
            })?;
        let manifest = self.shared.blobs.manifest(&package).ok();
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "package": package.to_string(),
                "name": manifest.as_ref().map(|m| m.name.clone()),
                "version": manifest.as_ref().map(|m| m.version.clone()),
                "owner": hex::encode(encoder.owner.to_bytes()),
                "bond": encoder.bond,
                "status": encoder.status(&self.shared.parameters).name(),
                "pending_jobs": encoder.pending,
                "performance": encoder.performance.iter().map(|&p| fixed(i64::from(p))).collect::<Vec<_>>(),
            }),
        ))
    }

    fn job(&self, id: &str) -> Result<Reply, Refused> {
        let id = parse_digest(id)?;
        let job = self
            .shared
            .state
            .job(&id)
            .map_err(unavailable)?
            .ok_or_else(|| refused(StatusCode::NOT_FOUND, format!("no job {id}")))?;
        Ok(json_reply(StatusCode::OK, &self.job_json(&id, &job)?))
    }

    fn job_json(&self, id: &Digest, job: &Job) -> Result<Value, Refused> {
        let names: Vec<Option<String>> = job
            .shard
            .iter()
            .map(|d| self.shared.blobs.manifest(d).ok().map(|m| m.name))
            .collect();
        let keys = |keys: &[PublicKey]| -> Vec<String> {
            keys.iter().map(|k| hex::encode(k.to_bytes())).collect()
        };
        // All read at one instant, each distinct result once; after the
        // job, which names no attester whose attestation is not kept (they
        // only grow). Listed in the order they applied.
        let mut attested: BTreeMap<PublicKey, Vec<EncoderResult>> = (self.shared.state)
            .attestations(id)
            .map_err(unavailable)?
            .into_iter()
            .collect();
        let attestations: Vec<Value> = (job.attesters.iter())
            .map(|v| {
                let results = attested.remove(v).unwrap_or_default();
                json!({
                    "validator": hex::encode(v.to_bytes()),
                    "results": results.iter().zip(&job.shard).map(|(r, package)| json!({
                        "package": package.to_string(),
                        "outcome": r.outcome.name(),
                        "loss": fixed(i64::from(r.loss)),
                        "fuel": r.fuel,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut value = json!({
            "id": id.to_string(),
            "submitter": hex::encode(job.submitter.to_bytes()),
            "commit": job.commit,
            "data": String::from_utf8_lossy(&job.data),
            "data_bytes": job.data.len(),
            "payment": job.payment,
            "shard": job.shard.iter().zip(&names).map(|(d, name)| json!({"package": d.to_string(), "name": name})).collect::<Vec<_>>(),
            "region": job.region,
            "deadline": job.deadline,
            "attesters": keys(&job.attesters),
            "attestations": attestations,
        });
        match &job.status {
            JobStatus::Pending => value["status"] = "pending".into(),
            JobStatus::Expired { commit } => {
                value["status"] = "expired".into();
                value["expired_in_commit"] = (*commit).into();
            }
            JobStatus::Finalised(f) => {
                value["status"] = "finalised".into();
                let root = self
                    .shared
                    .state
                    .root_after(f.commit)
                    .map_err(unavailable)?;
                value["finalisation"] = json!({
                    "commit": f.commit,
                    "state_root": root.map(hex::encode),
                    "encoders": f.encoders.iter().zip(&names).map(|(e, name)| json!({
                        "package": e.package.to_string(),
                        "name": name,
                        "outcome": e.outcome.name(),
                        "loss": fixed(i64::from(e.loss)),
                        "fuel": e.fuel,
                        "weight": e.weight,
                        "disqualified": e.disqualified,
                        "slashed": e.slashed,
                        "reward": e.reward,
                    })).collect::<Vec<_>>(),
                    "embedding": floats(&f.embedding),
                    "deviant_attesters": keys(&f.deviant),
                    "validator_rewards": f.validator_rewards,
                    "to_treasury": f.to_treasury,
                });
            }
        }
        Ok(value)
    }

    /// The account of the request's API key (`Authorization: Bearer`).
    fn authorize(&self, request: &Request<Incoming>) -> Result<(&SecretKey, [u8; 32]), Refused> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let hash = token.map(|t| *blake3::hash(t.as_bytes()).as_bytes());
        let (account, hash) = hash
            .and_then(|h| self.shared.api_keys.get(&h).map(|key| (key, h)))
            .ok_or_else(|| {
                refused(
                    StatusCode::UNAUTHORIZED,
                    "an API key this node knows is required: `Authorization: Bearer <key>`",
                )
            })?;
        self.count_request(hash)?;
        Ok((account, hash))
    }

    /// Counts a request of the API key of `hash` against its rate: at
    /// most [`KEY_BURST`] at once, refilled at [`KEY_REQUESTS_PER_SECOND`].
    /// Only the node's own keys are counted, so the map stays as small as
    /// its configuration.
    fn count_request(&self, hash: [u8; 32]) -> Result<(), Refused> {
        let now = Instant::now();
        let mut rates = self.key_rates.lock().unwrap_or_else(|e| e.into_inner());
        let (left, at) = rates.entry(hash).or_insert((f64::from(KEY_BURST), now));
        let rate = f64::from(KEY_REQUESTS_PER_SECOND);
        *left = (*left + now.duration_since(*at).as_secs_f64() * rate).min(f64::from(KEY_BURST));
        *at = now;
        if *left < 1.0 {
            let wait = ((1.0 - *left) / rate).ceil().max(1.0) as u64;
            return Err(busy(
                format!(
                    "this API key made more than {KEY_BURST} requests at once and more than \
                     {KEY_REQUESTS_PER_SECOND} per second since; retry later"
                ),
                wait,
            ));
        }
        *left -= 1.0;
        Ok(())
    }

    /// `POST /v1/embeddings`: one job per input, paid from the account the
    /// bearer API key maps to, answered once every job is decided.
    async fn embeddings(&self, request: Request<Incoming>) -> Result<Reply, Refused> {
        let (account, api_key) = self.authorize(&request)?;
        let body = self.body(request, MAX_JSON_BODY).await?;
        let EmbeddingsCall { inputs, base64 } =
            EmbeddingsCall::parse(&body, &self.shared.parameters)?;
        let Ok(_permit) = self.embedding_requests.try_acquire() else {
            return Err(busy(
                format!("{MAX_EMBEDDING_REQUESTS} embedding requests are in flight; retry later"),
                1,
            ));
        };
        let _in_flight = InFlight::enter(&self.shared.metrics.embedding_requests_in_flight);
        let Some(_key_slot) = KeySlot::take(&self.per_key, api_key) else {
            return Err(busy(
                format!(
                    "this API key has {MAX_REQUESTS_PER_KEY} embedding requests in flight; \
                     retry later"
                ),
                1,
            ));
        };
        let params = &self.shared.parameters;
        let sender = account.public_key();
        let cost = u128::from(params.min_fee + params.min_job_payment) * inputs.len() as u128;
        let state = self.shared.state.account(&sender).map_err(unavailable)?;
        if cost > u128::from(state.balance) {
            return Err(refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{} inputs cost {cost} base units; the account holds {}",
                    inputs.len(),
                    state.balance
                ),
            ));
        }
        let started = Instant::now();
        let mut jobs = Vec::with_capacity(inputs.len());
        let mut nonces = NonceHold {
            shared: &self.shared,
            account: sender,
            held: 0,
        };
        for (i, input) in inputs.iter().enumerate() {
            let submitted = nonces.submit_next(state.nonce, |nonce| {
                let signed = Transaction {
                    chain_id: self.shared.chain_id,
                    sender,
                    nonce,
                    fee: params.min_fee,
                    action: Action::SubmitData {
                        modality: Modality::Text,
                        data: input.as_bytes().to_vec(),
                        payment: params.min_job_payment,
                    },
                }
                .sign(account);
                self.submit(&signed).map(|()| (nonce, signed))
            });
            let (nonce, signed) = match submitted {
                Ok(submitted) => submitted,
                Err(mut e) => {
                    if !jobs.is_empty() {
                        e.message = format!(
                            "input {i}: {}; the inputs before it were submitted as jobs {}",
                            e.message,
                            ids(&jobs)
                        );
                    }
                    return Err(e);
                }
            };
            jobs.push((signed.digest(), nonce));
        }
        let decided = self.wait_for(&sender, &jobs).await;
        let metrics = &self.shared.metrics;
        metrics
            .embedding_wait_ms
            .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        count(&metrics.embedding_waits);
        let decided = decided?;
        let data: Vec<Value> = decided
            .iter()
            .enumerate()
            .map(|(index, embedding)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = embedding
                        .iter()
                        .flat_map(|&x| (fixed(x.into()) as f32).to_le_bytes())
                        .collect();
                    Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    Value::from(floats(embedding))
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        self.shared
            .metrics
            .embeddings_served
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let tokens: usize = inputs.iter().map(|i| i.split_whitespace().count()).sum();
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "object": "list",
                "data": data,
                "model": MODEL,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "jobs": jobs.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>(),
            }),
        ))
    }

    /// Waits until every job of `jobs` (id, submission nonce) is decided;
    /// their final embeddings in order. Checks at most every
    /// [`WAIT_POLL`], however fast commits come.
    async fn wait_for(
        &self,
        sender: &PublicKey,
        jobs: &[(Digest, u64)],
    ) -> Result<Vec<Vec<i32>>, Refused> {
        let mut applied = self.shared.applied.subscribe();
        let deadline = tokio::time::Instant::now() + EMBEDDING_TIMEOUT;
        let state = &self.shared.state;
        let mut done: Vec<Option<Vec<i32>>> = vec![None; jobs.len()];
        loop {
            // The nonce first: a later read never sees less, so a job
            // missing after its nonce was used was never made.
            let nonce = state.account(sender).map_err(unavailable)?.nonce;
            for ((id, submitted_with), slot) in jobs.iter().zip(&mut done) {
                if slot.is_some() {
                    continue;
                }
                match state.job(id).map_err(unavailable)?.map(|j| j.status) {
                    Some(JobStatus::Finalised(f)) => {
                        count(&self.shared.metrics.jobs_finalised);
                        *slot = Some(f.embedding);
                    }
                    Some(JobStatus::Expired { commit }) => {
                        count(&self.shared.metrics.jobs_expired);
                        return Err(refused(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "job {id} expired in commit {commit} before enough validators \
                                 attested; its payment was returned"
                            ),
                        ));
                    }
                    Some(JobStatus::Pending) => {}
                    // Its nonce was used and it made no job: refused in
                    // apply (another transaction of the account took the
                    // nonce, or its balance moved).
                    None if nonce > *submitted_with => {
                        return Err(refused(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!("submission {id} was not applied: the account's state changed"),
                        ));
                    }
                    None => {}
                }
            }
            if done.iter().all(Option::is_some) {
                return Ok(done.into_iter().flatten().collect());
            }
            let next = async {
                applied.changed().await?;
                tokio::time::sleep(WAIT_POLL).await;
                Ok::<_, tokio::sync::watch::error::RecvError>(())
            };
            match tokio::time::timeout_at(deadline, next).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the node is stopping",
                    ));
                }
                Err(_) => {
                    return Err(refused(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "the jobs were not decided within {EMBEDDING_TIMEOUT:?}; \
                             look them up at /v1/jobs/<id>: {}",
                            ids(jobs)
                        ),
                    ));
                }
            }
        }
    }
}

/// Job ids, comma-separated.
fn ids(jobs: &[(Digest, u64)]) -> String {
    jobs.iter()
        .map(|(id, _)| id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Nonces a request holds for an account, given back when it ends.
struct NonceHold<'a> {
    shared: &'a Shared,
    account: PublicKey,
    held: usize,
}

impl NonceHold<'_> {
    /// Runs `submit` with the account's next nonce (`state_nonce` if none
    /// is handed out), which this request holds if it succeeds.
    fn submit_next<T, E>(
        &mut self,
        state_nonce: u64,
        submit: impl FnOnce(u64) -> Result<T, E>,
    ) -> Result<T, E> {
        let submitted = self
            .shared
            .submit_with_next_nonce(&self.account, state_nonce, submit);
        if submitted.is_ok() {
            self.held += 1;
        }
        submitted
    }
}

impl Drop for NonceHold<'_> {
    fn drop(&mut self) {
        for _ in 0..self.held {
            self.shared.release_nonce(&self.account);
        }
    }
}

/// One request counted in a gauge while it runs.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a AtomicU64) -> InFlight<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One of an API key's [`MAX_REQUESTS_PER_KEY`] embedding requests.
struct KeySlot<'a> {
    slots: &'a Mutex<BTreeMap<[u8; 32], usize>>,
    key: [u8; 32],
}

impl<'a> KeySlot<'a> {
    fn take(slots: &'a Mutex<BTreeMap<[u8; 32], usize>>, key: [u8; 32]) -> Option<KeySlot<'a>> {
        let mut held = slots.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(key).or_default();
        if *count >= MAX_REQUESTS_PER_KEY {
            return None;
        }
        *count += 1;
        Some(KeySlot { slots, key })
    }
}

impl Drop for KeySlot<'_> {
    fn drop(&mut self) {
        let mut held = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// A checked body of `POST /v1/embeddings`: what to embed and how to
/// answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingsCall {
    /// The texts, one job each: 1 to [`MAX_INPUTS`], none blank, none
    /// longer than the network embeds.
    pub inputs: Vec<String>,
    /// Whether vectors are answered as base64 of little-endian f32s
    /// (`encoding_format: "base64"`) rather than JSON numbers.
    pub base64: bool,
}

/// Why a request body was refused: its HTTP status and the reason given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct BadRequest {
    /// The HTTP status, a 4xx.
    pub status: StatusCode,
    /// What is wrong, for the client.
    pub reason: String,
}

impl From<BadRequest> for Refused {
    fn from(bad: BadRequest) -> Refused {
        refused(bad.status, bad.reason)
    }
}

/// The body of `POST /v1/embeddings`, as OpenAI defines it.
#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Input,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
    // Other fields OpenAI's clients send (`user`) are ignored.
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    /// Token ids, which OpenAI also takes: refused, the network embeds
    /// text (each encoder tokenises it its own way).
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl EmbeddingsCall {
    /// Parses `body` and checks it against what one request may ask of a
    /// network with `parameters`: 400 with the reason if it asks anything
    /// else, 404 for a model the network does not serve.
    pub fn parse(body: &[u8], parameters: &Parameters) -> Result<EmbeddingsCall, BadRequest> {
        let bad = |reason: String| BadRequest {
            status: StatusCode::BAD_REQUEST,
            reason,
        };
        let request: EmbeddingsRequest =
            serde_json::from_slice(body).map_err(|e| bad(format!("invalid request: {e}")))?;
        let tokens = |count: usize| {
            bad(format!(
                "input is {count} token ids; send text (each encoder tokenises it its own way)"
            ))
        };
        if let Some(model) = request.model.as_deref()
            && model != MODEL
        {
            return Err(BadRequest {
                status: StatusCode::NOT_FOUND,
                reason: format!("no model `{model}`; this network serves `{MODEL}`"),
            });
        }
        let base64 = match request.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(bad(format!(
                    "encoding_format `{other}` is not `float` or `base64`"
                )));
            }
        };
        let dimension = u64::from(parameters.dimension);
        if request.dimensions.is_some_and(|d| d != dimension) {
            return Err(bad(format!(
                "dimensions must be {dimension}, the network's embedding dimension"
            )));
        }
        let inputs = match request.input {
            Input::One(text) => vec![text],
            Input::Many(texts) => texts,
            Input::Tokens(ids) => return Err(tokens(ids.len())),
            Input::TokenBatches(batches) => {
                return Err(tokens(batches.iter().map(Vec::len).sum()));
            }
        };
        if inputs.is_empty() || inputs.len() > MAX_INPUTS {
            return Err(bad(format!(
                "input must hold 1 to {MAX_INPUTS} texts, not {}",
                inputs.len()
            )));
        }
        let max = parameters.max_data_bytes as usize;
        for (i, text) in inputs.iter().enumerate() {
            if text.trim().is_empty() {
                return Err(bad(format!("input {i} is empty")));
            }
            if text.len() > max {
                return Err(bad(format!(
                    "input {i} is {} bytes; at most {max} are embedded",
                    text.len()
                )));
            }
        }
        Ok(EmbeddingsCall { inputs, base64 })
    }
}

fn parse_digest(text: &str) -> Result<Digest, Refused> {
    Digest::from_hex(text).ok_or_else(|| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("`{text}` is not a 64-digit hex digest"),
        )
    })
}

fn unavailable(e: impl std::fmt::Display) -> Refused {
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the node's state cannot be read: {e}"),
    )
}

/// A fixed-point value in units of 2⁻¹⁶ as a float, for reading.
fn fixed(x: i64) -> f64 {
    x as f64 / 65536.0
}

/// Fixed-point values as the f32 vectors OpenAI's clients expect (exact:
/// every value is a multiple of 2⁻¹⁶ below 2⁸).
fn floats(v: &[i32]) -> Vec<f32> {
    v.iter().map(|&x| fixed(x.into()) as f32).collect()
}
