//! A consensus validator on a real network: the [`Core`] in one task, an
//! HTTP server for peers, one sender per peer, and fetches of missing
//! blocks.

use crate::block::{BlockRef, MAX_TRANSACTION_BYTES, SignedBlock, VerifiedBlock};
use crate::committee::{AuthorityIndex, Committee};
use crate::core::{Core, CoreError, Outcome, Parameters, SubmitError};
use crate::linearizer::CommittedSubDag;
use crate::network::{self, FetchRequest, PeerToken, WireError};
use crate::store::{CommitRecord, FjallStore, StoreError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use soma_crypto::SecretKey;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often a validator asks a peer for blocks it still misses.
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Transactions submitted but not yet taken by the core.
const TRANSACTION_QUEUE: usize = 10_000;

/// Path where clients submit a transaction (the raw bytes as the body).
pub const TRANSACTION_PATH: &str = "/consensus/v1/transaction";
/// Path with the node's counters as JSON.
pub const STATUS_PATH: &str = "/consensus/v1/status";
/// Path listing commits: `?from=INDEX&limit=N`, one line per commit.
pub const COMMITS_PATH: &str = "/consensus/v1/commits";

/// Decides which transaction bytes a block may carry. Every validator
/// checks every transaction of every block it receives once.
pub trait TransactionVerifier: Send + Sync {
    /// Whether `transaction` is acceptable.
    fn verify(&self, transaction: &[u8]) -> bool;
}

/// Accepts any bytes: consensus alone orders opaque transactions.
pub struct AcceptAny;

impl TransactionVerifier for AcceptAny {
    fn verify(&self, _: &[u8]) -> bool {
        true
    }
}

/// How to run one validator.
pub struct NodeConfig {
    /// This validator.
    pub authority: AuthorityIndex,
    /// Its key.
    pub key: SecretKey,
    /// The committee.
    pub committee: Committee,
    /// Every validator's address, by index.
    pub addresses: Vec<SocketAddr>,
    /// Directory of the consensus store.
    pub store: PathBuf,
    /// Core tunables.
    pub parameters: Parameters,
    /// How long to wait for a round's leader before proposing without it.
    pub leader_timeout: Duration,
    /// Checks transactions in received blocks and submissions.
    pub verifier: Arc<dyn TransactionVerifier>,
}

/// Why a node stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The core failed (storage): stopping keeps it from forgetting a
    /// signed block.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The listening socket failed.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// Where.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters a node exposes.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Blocks received from peers and accepted for processing.
    pub blocks_received: AtomicU64,
    /// Peer messages refused: unauthenticated, malformed, oversized or
    /// invalid.
    pub refused: AtomicU64,
    /// Blocks dropped because their author had too many suspended.
    pub dropped: AtomicU64,
    /// Commits delivered.
    pub commits: AtomicU64,
    /// Round of the last committed leader.
    pub last_committed_round: AtomicU64,
    /// Round of this validator's last block.
    pub last_proposed_round: AtomicU64,
    /// Transactions in delivered commits.
    pub committed_transactions: AtomicU64,
}

enum Command {
    Blocks {
        blocks: Vec<VerifiedBlock>,
        from: Option<AuthorityIndex>,
    },
    Fetch {
        request: FetchRequest,
        reply: oneshot::Sender<Vec<SignedBlock>>,
    },
}

struct Shared {
    authority: AuthorityIndex,
    committee: Committee,
    verifier: Arc<dyn TransactionVerifier>,
    metrics: Metrics,
    commands: mpsc::Sender<Command>,
    transactions: mpsc::Sender<Vec<u8>>,
    store: FjallStore,
    /// The token last checked per peer.
    checked_tokens: Mutex<Vec<Option<CheckedToken>>>,
    recent: Mutex<RecentBlocks>,
    client: Client<HttpConnector, Full<Bytes>>,
    addresses: Vec<SocketAddr>,
    tokens: Vec<PeerToken>,
}

/// A peer's `soma-boot` and `soma-auth` headers, once verified (the
/// signature covers the others).
#[derive(Clone)]
struct CheckedToken {
    boot: String,
    auth: String,
}

/// A running validator.
pub struct Node {
    shared: Arc<Shared>,
    commits: mpsc::UnboundedReceiver<CommittedSubDag>,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

impl Node {
    /// Opens the store, binds the listening address and starts the tasks.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let n = config.committee.size();
        if config.addresses.len() != n {
            return Err(NodeError::Config(format!(
                "{} addresses for {n} validators",
                config.addresses.len()
            )));
        }
        let listen = *config
            .addresses
            .get(config.authority.0 as usize)
            .ok_or_else(|| NodeError::Config(format!("no validator {}", config.authority.0)))?;
        let store = FjallStore::open(&config.store)?;
        let key = SecretKey::from_bytes(&config.key.to_bytes());
        let core = Core::open(
            config.committee.clone(),
            config.authority,
            key,
            config.parameters,
            Box::new(store.clone()),
        )?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| NodeError::Listen {
                address: listen,
                source,
            })?;
        let mut boot = [0u8; 16];
        getrandom::fill(&mut boot)
            .map_err(|e| NodeError::Config(format!("no system randomness: {e}")))?;
        let tokens = config
            .committee
            .authorities()
            .map(|peer| {
                PeerToken::sign(&config.key, &config.committee, config.authority, peer, boot)
            })
            .collect();
        let (commands, inbox) = mpsc::channel(1024);
        let (transactions, submitted) = mpsc::channel(TRANSACTION_QUEUE);
        let (commit_tx, commits) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            authority: config.authority,
            committee: config.committee,
            verifier: config.verifier,
            metrics: Metrics::default(),
            commands,
            transactions,
            store,
            checked_tokens: Mutex::new(vec![None; n]),
            recent: Mutex::new(RecentBlocks::new()),
            client: Client::builder(TokioExecutor::new()).build(connector()),
            addresses: config.addresses,
            tokens,
        });
        tokio::spawn(serve(listener, shared.clone()));
        let peers: Vec<Option<mpsc::Sender<Bytes>>> = shared
            .committee
            .authorities()
            .map(|peer| {
                (peer != shared.authority).then(|| {
                    let (tx, rx) = mpsc::channel(256);
                    tokio::spawn(send_to_peer(shared.clone(), peer, rx));
                    tx
                })
            })
            .collect();
        let task = tokio::spawn(run_core(
            core,
            inbox,
            submitted,
            shared.clone(),
            peers,
            commit_tx,
            config.leader_timeout,
        ));
        Ok(Node {
            shared,
            commits,
            task,
        })
    }

    /// Checks `transaction` and queues it for this validator's next blocks.
    pub fn submit(&self, transaction: Vec<u8>) -> Result<(), SubmitRefused> {
        submit(&self.shared, transaction)
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The next committed sub-DAG; `None` once the node stopped. Commits
    /// queue until they are read.
    pub async fn next_commit(&mut self) -> Option<CommittedSubDag> {
        self.commits.recv().await
    }

    /// Waits until the node stops, which only an error does.
    pub async fn stopped(self) -> Result<(), NodeError> {
        self.task
            .await
            .unwrap_or_else(|e| Err(NodeError::Config(format!("core task failed: {e}"))))
    }
}

/// Why a submitted transaction was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitRefused {
    /// The verifier refused it.
    #[error("invalid transaction")]
    Invalid,
    /// Too large, or too many are queued.
    #[error(transparent)]
    Core(#[from] SubmitError),
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopping,
}

/// Checks a transaction and queues it for the core without waiting for it:
/// submitters never queue behind block processing.
fn submit(shared: &Shared, transaction: Vec<u8>) -> Result<(), SubmitRefused> {
    if transaction.len() > MAX_TRANSACTION_BYTES {
        return Err(SubmitError::TooLarge(transaction.len()).into());
    }
    if !shared.verifier.verify(&transaction) {
        return Err(SubmitRefused::Invalid);
    }
    shared
        .transactions
        .try_send(transaction)
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Full(TRANSACTION_QUEUE).into(),
            mpsc::error::TrySendError::Closed(_) => SubmitRefused::Stopping,
        })
}

/// The one task that owns the core.
async fn run_core(
    mut core: Core,
    mut inbox: mpsc::Receiver<Command>,
    mut submitted: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    peers: Vec<Option<mpsc::Sender<Bytes>>>,
    commits: mpsc::UnboundedSender<CommittedSubDag>,
    leader_timeout: Duration,
) -> Result<(), NodeError> {
    let broadcast = |block: &VerifiedBlock| {
        let bytes = Bytes::from(block.to_bytes());
        for peer in peers.iter().flatten() {
            // A peer that cannot keep up gets the block later by fetching.
            let _ = peer.try_send(bytes.clone());
        }
    };
    let mut deadline = tokio::time::Instant::now();
    let mut sync = tokio::time::interval(SYNC_INTERVAL);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Periodic fetches go to the other validators in turn.
    let mut sync_turn = shared.authority.0;
    loop {
        // Submissions wait here until the core's pool has room for them.
        while core.has_room_for_transactions()
            && let Ok(transaction) = submitted.try_recv()
        {
            if let Err(e) = core.submit(transaction) {
                tracing::warn!("submitted transaction dropped: {e}");
            }
        }
        let (outcome, from) = tokio::select! {
            command = inbox.recv() => match command {
                None => return Ok(()),
                Some(Command::Blocks { blocks, from }) => (core.add_blocks(blocks)?, from),
                Some(Command::Fetch { request, reply }) => {
                    let blocks = core.blocks_for(&request.references, &request.known_rounds, network::FETCH_LIMIT)?;
                    let _ = reply.send(blocks);
                    continue;
                }
            },
            _ = sync.tick() => {
                let missing = core.missing();
                if !missing.is_empty() {
                    let n = shared.committee.size() as u32;
                    sync_turn = (sync_turn + 1) % n;
                    if sync_turn == shared.authority.0 {
                        sync_turn = (sync_turn + 1) % n;
                    }
                    let request = core.fetch_request(missing);
                    tokio::spawn(fetch(shared.clone(), AuthorityIndex(sync_turn), request));
                }
                continue;
            }
            () = tokio::time::sleep_until(deadline) => {
                let outcome = core.on_leader_timeout()?;
                if outcome.proposed.is_none() {
                    // Nothing new to say: repeat the last block in case a
                    // peer missed it.
                    if let Some(last) = core.last_proposed_block() {
                        broadcast(last);
                    }
                }
                deadline = tokio::time::Instant::now() + leader_timeout;
                (outcome, None)
            }
        };
        let Outcome {
            proposed,
            committed,
            missing,
            dropped,
        } = outcome;
        let metrics = &shared.metrics;
        metrics.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        if let Some(block) = proposed {
            broadcast(&block);
            metrics
                .last_proposed_round
                .store(block.reference().round.into(), Ordering::Relaxed);
            deadline = tokio::time::Instant::now() + leader_timeout;
        }
        for subdag in committed {
            metrics.commits.fetch_add(1, Ordering::Relaxed);
            metrics
                .last_committed_round
                .store(subdag.leader.round.into(), Ordering::Relaxed);
            let transactions: usize = subdag
                .blocks
                .iter()
                .map(|b| b.block().transactions.len())
                .sum();
            metrics
                .committed_transactions
                .fetch_add(transactions as u64, Ordering::Relaxed);
            let _ = commits.send(subdag);
        }
        // What the blocks a peer just sent lack, ask that peer first.
        if let Some(peer) = from.filter(|_| !missing.is_empty()) {
            let request = core.fetch_request(missing);
            tokio::spawn(fetch(shared.clone(), peer, request));
        }
    }
}

/// HTTP connections to peers, without Nagle's delay: a block sent in two
/// writes (head, body) would otherwise wait for the peer's delayed ACK.
fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

fn post(shared: &Shared, peer: AuthorityIndex, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::builder().method(Method::POST).uri(format!(
        "http://{}{path}",
        shared.addresses[peer.0 as usize]
    ));
    for (name, value) in shared.tokens[peer.0 as usize].headers() {
        request = request.header(name, value);
    }
    request.body(Full::new(body)).expect("a valid request")
}

/// Sends this validator's blocks to one peer, in order.
async fn send_to_peer(
    shared: Arc<Shared>,
    peer: AuthorityIndex,
    mut blocks: mpsc::Receiver<Bytes>,
) {
    while let Some(block) = blocks.recv().await {
        let request = post(&shared, peer, network::BLOCK_PATH, block);
        let sent =
            tokio::time::timeout(Duration::from_secs(5), shared.client.request(request)).await;
        match sent {
            Ok(Ok(response)) => {
                let _ = response.into_body().collect().await;
            }
            // A peer that is down misses the block; it fetches it later.
            _ => tracing::debug!(peer = peer.0, "block not delivered"),
        }
    }
}

/// Asks `peer` for missing blocks and hands what verifies to the core.
async fn fetch(shared: Arc<Shared>, peer: AuthorityIndex, request: FetchRequest) {
    let request = post(
        &shared,
        peer,
        network::FETCH_PATH,
        Bytes::from(request.encode()),
    );
    let Ok(Ok(response)) =
        tokio::time::timeout(Duration::from_secs(10), shared.client.request(request)).await
    else {
        return;
    };
    if response.status() != StatusCode::OK {
        return;
    }
    let Ok(body) = Limited::new(response.into_body(), network::MAX_FETCH_ANSWER)
        .collect()
        .await
    else {
        shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let body = body.to_bytes();
    let Ok(wires) = network::decode_blocks(&body) else {
        shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut blocks = Vec::new();
    for wire in wires {
        match verify_block(&shared, body.slice_ref(wire)).await {
            Ok(block) => blocks.extend(block),
            Err(_) => {
                shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = shared
        .commands
        .send(Command::Blocks {
            blocks,
            from: Some(peer),
        })
        .await;
}

/// Decodes and verifies a block, including each of its transactions, on a
/// blocking thread (a large block takes a while). `Ok(None)`: this block was
/// verified already, or is being verified, so the copy is ignored.
async fn verify_block(shared: &Arc<Shared>, wire: Bytes) -> Result<Option<VerifiedBlock>, String> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let block = SignedBlock::decode(&wire).map_err(|e| e.to_string())?;
        let reference = block.reference();
        if !shared.lock_recent().insert(reference) {
            return Ok(None);
        }
        let verified = VerifiedBlock::verify(block, &shared.committee)
            .map_err(|e| e.to_string())
            .and_then(|block| {
                match block
                    .block()
                    .transactions
                    .iter()
                    .position(|t| !shared.verifier.verify(t))
                {
                    Some(i) => Err(format!("transaction {i} of {reference:?} is invalid")),
                    None => Ok(block),
                }
            });
        if verified.is_err() {
            // A forged copy must not keep the genuine block out.
            shared.lock_recent().remove(&reference);
        }
        verified.map(Some)
    })
    .await
    .map_err(|e| format!("verification failed: {e}"))?
}

/// Blocks verified lately (or being verified), so that the copies every
/// block arrives in (broadcast, repeats, fetch answers) are checked once.
struct RecentBlocks {
    set: BTreeSet<BlockRef>,
    order: VecDeque<BlockRef>,
}

impl RecentBlocks {
    /// How many references are remembered.
    const CAPACITY: usize = 100_000;

    fn new() -> Self {
        RecentBlocks {
            set: BTreeSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers `reference`; returns whether it is new.
    fn insert(&mut self, reference: BlockRef) -> bool {
        if !self.set.insert(reference) {
            return false;
        }
        self.order.push_back(reference);
        if self.order.len() > Self::CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        true
    }

    fn remove(&mut self, reference: &BlockRef) {
        self.set.remove(reference);
    }
}

impl Shared {
    fn lock_recent(&self) -> std::sync::MutexGuard<'_, RecentBlocks> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Small messages must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .expect("a valid response")
}

/// A refusal: counted, answered with the reason.
fn refuse(shared: &Shared, status: StatusCode, reason: impl ToString) -> Response<Full<Bytes>> {
    shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
    reply(status, reason.to_string())
}

async fn read_body(
    shared: &Shared,
    request: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(_) => Err(refuse(
            shared,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {limit} bytes"),
        )),
    }
}

fn authenticate(shared: &Shared, request: &Request<Incoming>) -> Result<AuthorityIndex, WireError> {
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let headers = network::PeerHeaders {
        peer: header(network::PEER_HEADER),
        boot: header(network::BOOT_HEADER),
        committee: header(network::COMMITTEE_HEADER),
        auth: header(network::AUTH_HEADER),
    };
    // A token checked before is accepted without another signature check.
    let known = |index: usize| {
        let tokens = shared
            .checked_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        matches!(tokens.get(index), Some(Some(t))
            if Some(t.boot.as_str()) == headers.boot && Some(t.auth.as_str()) == headers.auth)
    };
    if let Some(index) = headers
        .peer
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|i| known(*i))
    {
        return Ok(AuthorityIndex(index as u32));
    }
    let sender = PeerToken::verify(headers, shared.authority, &shared.committee)?;
    shared
        .checked_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())[sender.0 as usize] = Some(CheckedToken {
        boot: headers.boot.unwrap_or_default().to_string(),
        auth: headers.auth.unwrap_or_default().to_string(),
    });
    Ok(sender)
}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    match (request.method().clone(), path.as_str()) {
        (Method::POST, network::BLOCK_PATH) => {
            let peer = match authenticate(shared, &request) {
                Ok(peer) => peer,
                Err(e) => return refuse(shared, StatusCode::UNAUTHORIZED, e),
            };
            let body = match read_body(shared, request, network::MAX_BLOCK_BODY).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            match verify_block(shared, body).await {
                Ok(None) => reply(StatusCode::OK, ""),
                Ok(Some(block)) => {
                    shared
                        .metrics
                        .blocks_received
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = shared
                        .commands
                        .send(Command::Blocks {
                            blocks: vec![block],
                            from: Some(peer),
                        })
                        .await;
                    reply(StatusCode::OK, "")
                }
                Err(reason) => refuse(shared, StatusCode::UNPROCESSABLE_ENTITY, reason),
            }
        }
        (Method::POST, network::FETCH_PATH) => {
            if let Err(e) = authenticate(shared, &request) {
                return refuse(shared, StatusCode::UNAUTHORIZED, e);
            }
            let body = match read_body(shared, request, network::MAX_FETCH_BODY).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let request = match FetchRequest::decode(&body) {
                Ok(request) => request,
                Err(e) => return refuse(shared, StatusCode::BAD_REQUEST, e),
            };
            let (tx, rx) = oneshot::channel();
            let _ = shared
                .commands
                .send(Command::Fetch { request, reply: tx })
                .await;
            let blocks = rx.await.unwrap_or_default();
            let wires: Vec<Vec<u8>> = blocks.iter().map(|b| b.to_bytes()).collect();
            reply(
                StatusCode::OK,
                network::encode_blocks(wires.iter().map(|w| &w[..])),
            )
        }
        (Method::POST, TRANSACTION_PATH) => {
            let body = match read_body(shared, request, crate::block::MAX_TRANSACTION_BYTES).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            match submit(shared, body.to_vec()) {
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
        (Method::GET, STATUS_PATH) => {
            let m = &shared.metrics;
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let status = serde_json::json!({
                "authority": shared.authority.0,
                "commits": load(&m.commits),
                "last_committed_round": load(&m.last_committed_round),
                "last_proposed_round": load(&m.last_proposed_round),
                "committed_transactions": load(&m.committed_transactions),
                "blocks_received": load(&m.blocks_received),
                "refused": load(&m.refused),
                "dropped": load(&m.dropped),
            });
            reply(StatusCode::OK, status.to_string())
        }
        (Method::GET, COMMITS_PATH) => {
            let query = request.uri().query().unwrap_or("");
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
            match shared.store.commits(from, limit.min(10_000) as usize) {
                Ok(commits) => reply(
                    StatusCode::OK,
                    commits.iter().map(commit_line).collect::<String>(),
                ),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, format!("no {path} here")),
    }
}

/// `index leader-round leader-author blake3(blocks)` for one commit.
fn commit_line(commit: &CommitRecord) -> String {
    let mut hasher = blake3::Hasher::new();
    for block in &commit.blocks {
        hasher.update(&block.to_key());
    }
    format!(
        "{} {} {} {}\n",
        commit.index,
        commit.leader.round,
        commit.leader.author.0,
        hasher.finalize().to_hex()
    )
}
