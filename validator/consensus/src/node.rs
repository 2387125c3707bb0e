//! A consensus validator on a real network, in pieces of one file each:
//! the task that owns the [`Core`] (`core_thread`), the HTTP server peers
//! and clients talk to (`authority_service`), the sender of this
//! validator's blocks (`broadcaster`), the fetching of what it lacks
//! (`synchronizer`) and the check of peers' blocks (`block_verifier`).
//! This file starts them and holds what they share.

use crate::block::{MAX_TRANSACTION_BYTES, StateRoot, VerifiedBlock};
use crate::block_verifier::BlockVerifier;
use crate::committee::{AuthorityIndex, Committee};
use crate::core::{Core, CoreError, Parameters};
use crate::core_thread::{self, Timing};
use crate::linearizer::CommittedSubDag;
use crate::mempool::{Placement, SubmitError, transaction_cost};
use crate::peer_client::PeerClient;
use crate::store::{FjallStore, Store, StoreError};
use crate::synchronizer::{RetentionGap, Synchronizer};
use crate::{authority_service, broadcaster};
use soma_crypto::SecretKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Transactions submitted but not yet taken by the core, and their bytes.
const TRANSACTION_QUEUE: usize = 10_000;
const TRANSACTION_QUEUE_BYTES: usize = 16 << 20;

/// The shortest time between two of a validator's blocks unless configured
/// otherwise: at most 200 rounds a second. (With 10 ms, the consensus
/// benchmark measured commit latency on loopback at about 51 ms; with 5 ms,
/// about 29 ms.)
pub const DEFAULT_MIN_ROUND_DELAY: Duration = Duration::from_millis(5);

/// Path where clients submit a transaction (the raw bytes as the body).
pub const TRANSACTION_PATH: &str = "/consensus/v1/transaction";
/// Path with the node's counters as JSON.
pub const STATUS_PATH: &str = "/consensus/v1/status";
/// Path listing commits: `?from=INDEX&limit=N`, one line per commit.
pub const COMMITS_PATH: &str = "/consensus/v1/commits";

/// Where a node serves its commit log as [`CommitRecord`](crate::CommitRecord)s
/// (`?from=I&limit=L`), for a validator seeding a [`Checkpoint`](crate::Checkpoint).
pub const COMMIT_RECORDS_PATH: &str = "/consensus/v1/commit-records";

/// Decides which submitted transactions this node admits into its blocks.
///
/// It gates admission only: blocks from peers are never refused for their
/// transactions, because a check that differed between validators (or
/// changed with their state) would split them on the block. Execution
/// checks every committed transaction with a deterministic rule and
/// rejects an invalid one alone. That rule may take a block's signature
/// for the transactions its author sent, so a verifier is also what keeps
/// transactions forged in this node's key out of its blocks.
pub trait TransactionVerifier: Send + Sync {
    /// Where `transaction` waits for this node's blocks, if it may.
    fn verify(&self, transaction: &[u8]) -> Option<Placement>;
}

/// Accepts any bytes: consensus alone orders opaque transactions. Only for
/// a committee whose keys hold nothing an execution could spend: see
/// [`TransactionVerifier`].
pub struct AcceptAny;

impl TransactionVerifier for AcceptAny {
    fn verify(&self, transaction: &[u8]) -> Option<Placement> {
        Some(Placement::alone(transaction))
    }
}

/// How to run one validator.
pub struct NodeConfig {
    /// This validator.
    pub authority: AuthorityIndex,
    /// Its key.
    pub key: SecretKey,
    /// The committee, with the chain's protocol constants.
    pub committee: Committee,
    /// Every validator's address, by index.
    pub addresses: Vec<SocketAddr>,
    /// Directory of the consensus store.
    pub store: PathBuf,
    /// Core tunables.
    pub parameters: Parameters,
    /// How long to wait for a round's leader, from the moment the round
    /// has a quorum, before proposing without it.
    pub leader_timeout: Duration,
    /// The shortest time between two of this validator's blocks, so that
    /// an idle committee does not race through empty rounds (and fill
    /// every store with them).
    pub min_round_delay: Duration,
    /// Admits submitted transactions.
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
    /// Peer messages refused: unauthenticated, malformed, oversized,
    /// invalid, or blocks in an answer that were not asked for.
    pub refused: AtomicU64,
    /// Requests turned away because their sender had too many in flight
    /// or the server too many connections.
    pub throttled: AtomicU64,
    /// Blocks dropped: too many bytes suspended for their author, or too
    /// many blocks in one slot.
    pub dropped: AtomicU64,
    /// Commits delivered.
    pub commits: AtomicU64,
    /// Round of the last committed leader.
    pub last_committed_round: AtomicU64,
    /// Round of this validator's last block.
    pub last_proposed_round: AtomicU64,
    /// Transactions in delivered commits.
    pub committed_transactions: AtomicU64,
    /// Rounds requests sent while catching up.
    pub catch_up_requests: AtomicU64,
    /// Transactions of this node's own blocks that were never committed,
    /// submitted again (whether admitted or not).
    pub resubmitted: AtomicU64,
    /// Bytes of transactions submitted here and not yet in a block: the
    /// core's pool and what waits to enter it.
    pub mempool_bytes: AtomicU64,
    /// Connections closed because a response waited longer than
    /// [`WRITE_TIMEOUT`](crate::WRITE_TIMEOUT) for the client to read.
    pub write_timeouts: AtomicU64,
}

/// What the tasks of one node share.
pub(crate) struct Shared {
    pub(crate) authority: AuthorityIndex,
    pub(crate) committee: Committee,
    pub(crate) verifier: Arc<dyn TransactionVerifier>,
    pub(crate) metrics: Metrics,
    pub(crate) transactions: mpsc::Sender<(Vec<u8>, Placement)>,
    /// Bytes sent on `transactions` and not yet taken by the core.
    pub(crate) queued_bytes: AtomicUsize,
    pub(crate) store: FjallStore,
    /// Verifies peers' blocks and hands them to the core.
    pub(crate) blocks: BlockVerifier,
    /// Authenticated connections to the peers.
    pub(crate) client: PeerClient,
    /// What the next proposals carry as their author's executed state.
    pub(crate) state_root: std::sync::Mutex<StateRoot>,
    /// Whether peers dropped the rounds this node needs to catch up.
    pub(crate) retention_gap: RetentionGap,
    /// Whether this node proposes no more blocks ([`Node::stop_proposing`]).
    pub(crate) proposals_stopped: AtomicBool,
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
        let (commands, inbox) = mpsc::channel(1024);
        let (transactions, submitted) = mpsc::channel(TRANSACTION_QUEUE);
        let (commit_tx, commits) = mpsc::unbounded_channel();
        let client = PeerClient::new(
            &config.key,
            config.committee.clone(),
            config.authority,
            config.addresses,
        );
        let shared = Arc::new(Shared {
            authority: config.authority,
            blocks: BlockVerifier::new(config.committee.clone(), commands),
            committee: config.committee,
            verifier: config.verifier,
            metrics: Metrics::default(),
            transactions,
            queued_bytes: AtomicUsize::new(0),
            store,
            client,
            state_root: std::sync::Mutex::default(),
            retention_gap: RetentionGap::default(),
            proposals_stopped: AtomicBool::new(false),
        });
        tokio::spawn(authority_service::serve(listener, shared.clone()));
        let broadcaster = broadcaster::start(&shared);
        let synchronizer = Synchronizer::new(shared.clone());
        let task = tokio::spawn(core_thread::run(
            core,
            core_thread::Channels {
                inbox,
                submitted,
                commits: commit_tx,
            },
            shared.clone(),
            broadcaster,
            synchronizer,
            Timing {
                leader_timeout: config.leader_timeout,
                min_round_delay: config.min_round_delay,
            },
        ));
        Ok(Node {
            shared,
            commits,
            task,
        })
    }

    /// A handle that submits transactions to this node from any thread, so
    /// that many submitters verify their transactions in parallel.
    pub fn submitter(&self) -> Submitter {
        Submitter(self.shared.clone())
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

    /// Up to `limit` commits from index `from` on, read back from the
    /// store: what a consumer that fell behind the commits delivered (say,
    /// an executor killed between a commit and its apply) replays first.
    /// Blocks are kept for the store's retention window; a commit whose
    /// blocks are gone is an error naming it.
    pub async fn committed(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<CommittedSubDag>, NodeError> {
        let shared = self.shared.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut subdags = Vec::new();
            for record in shared.store.commits(from, limit)? {
                let mut blocks = Vec::with_capacity(record.blocks.len());
                for reference in &record.blocks {
                    let block = shared.store.block(reference)?.ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "block {reference:?} of commit {} is no longer stored",
                            record.index
                        ))
                    })?;
                    blocks.push(
                        VerifiedBlock::verify(block, &shared.committee).map_err(|e| {
                            StoreError::Corrupt(format!(
                                "stored block {reference:?} does not verify: {e}"
                            ))
                        })?,
                    );
                }
                subdags.push(CommittedSubDag {
                    index: record.index,
                    leader: record.leader,
                    blocks,
                    previous: record.previous,
                });
            }
            Ok::<_, StoreError>(subdags)
        });
        match read.await {
            Ok(result) => Ok(result?),
            Err(e) => Err(NodeError::Config(format!("reading commits failed: {e}"))),
        }
    }

    /// Sets the executed state this node's next blocks carry (the node
    /// that applies commits calls it after each).
    pub fn set_state_root(&self, state: StateRoot) {
        *self
            .shared
            .state_root
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Has this node propose no more blocks, from its next step on, for
    /// the rest of this run. It still takes in, stores and serves blocks,
    /// and commits what its peers' blocks decide: peers can fetch from it
    /// every round it holds. When every validator stops, the committee
    /// makes no more rounds, so nothing more is committed, and nothing it
    /// holds is dropped, however long it waits (a node halted for an
    /// upgrade).
    pub fn stop_proposing(&self) {
        self.shared.proposals_stopped.store(true, Ordering::Release);
    }

    /// Waits until this node cannot catch up by replaying rounds: it
    /// asked every peer for the rounds after the returned one, none served
    /// them, and peers of more than f stake (so at least one honest one)
    /// answered that they no longer keep them. A
    /// [`Checkpoint`](crate::Checkpoint) with a state restored at its
    /// commit brings it back.
    pub fn beyond_retention(&self) -> impl Future<Output = crate::Round> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.retention_gap.confirmed().await }
    }

    /// Waits until the node stops, which only an error does.
    pub async fn stopped(self) -> Result<(), NodeError> {
        self.task
            .await
            .unwrap_or_else(|e| Err(NodeError::Config(format!("core task failed: {e}"))))
    }
}

/// Submits transactions to a running node; cheap to clone.
#[derive(Clone)]
pub struct Submitter(Arc<Shared>);

impl Submitter {
    /// The node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Checks `transaction` (on the calling thread) and queues it for the
    /// node's next blocks.
    pub fn submit(&self, transaction: Vec<u8>) -> Result<(), SubmitRefused> {
        submit(&self.0, transaction)
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
pub(crate) fn submit(shared: &Shared, transaction: Vec<u8>) -> Result<(), SubmitRefused> {
    if transaction.len() > MAX_TRANSACTION_BYTES {
        return Err(SubmitError::TooLarge(transaction.len()).into());
    }
    // Room is reserved before the signature is checked: a submitter told
    // to come back later has cost no verification.
    let size = transaction_cost(&transaction);
    let queued = shared.queued_bytes.fetch_add(size, Ordering::AcqRel);
    let mut reservation = Reservation {
        queued_bytes: &shared.queued_bytes,
        size,
        kept: false,
    };
    if queued + size > TRANSACTION_QUEUE_BYTES || shared.transactions.capacity() == 0 {
        return Err(SubmitError::Full(queued).into());
    }
    let Some(placement) = shared.verifier.verify(&transaction) else {
        return Err(SubmitRefused::Invalid);
    };
    shared
        .transactions
        .try_send((transaction, placement))
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Full(queued).into(),
            mpsc::error::TrySendError::Closed(_) => SubmitRefused::Stopping,
        })?;
    reservation.kept = true;
    Ok(())
}

/// Queue bytes taken for one submission, given back when dropped unless
/// the transaction was queued (also when the verifier panics).
struct Reservation<'a> {
    queued_bytes: &'a AtomicUsize,
    size: usize,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.queued_bytes.fetch_sub(self.size, Ordering::AcqRel);
        }
    }
}
