//! A deterministic simulation of a committee: one seed fixes every message
//! delay, reordering, partition, crash and Byzantine act, so a failing seed
//! replays exactly.
//!
//! Every validator runs the real [`Core`] over a [`MemStore`]; messages are
//! wire bytes, decoded and verified on receipt like on a real network. The
//! run checks safety as it goes (honest committed sequences are prefixes
//! of one another, each block is committed once, no honest validator signs
//! two blocks for one round, crashes included) and liveness at the end
//! (every honest validator commits a leader of the target round, including
//! one that was down for a minute and had to catch up, and one down so
//! long that it resumed from a checkpoint).

use crate::block::{Block, BlockRef, MAX_TRANSACTION_BYTES, Round, SignedBlock, VerifiedBlock};
use crate::checkpoint::Checkpoint;
use crate::committee::{AuthorityIndex, Committee, Protocol, Stake};
use crate::core::{Core, Outcome, Parameters};
use crate::linearizer::CommittedSubDag;
use crate::mempool::Placement;
use crate::network::{FETCH_LIMIT, FetchRequest, RoundsRequest};
use crate::store::{MemStore, Store};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use soma_crypto::SecretKey;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// How a simulated validator behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Follows the protocol (and may crash and restart).
    Honest,
    /// Signs two blocks per round and sends each to half of the committee.
    Equivocate,
    /// Sends blocks whose parents do not exist.
    InvalidParents,
    /// Follows the protocol but also sprays malformed, oversized and
    /// wrongly signed bytes, and answers fetches with garbage.
    Garbage,
    /// Never sends anything.
    Silent,
    /// Names its own block from more than `gc_depth` rounds back as its
    /// parent. Such blocks are invalid everywhere; before that rule, some
    /// validators still held the parent and others did not.
    OldParents,
    /// Sends many large, validly signed versions of each of its blocks.
    Flood,
}

impl Behaviour {
    /// Every Byzantine behaviour.
    pub const BYZANTINE: [Behaviour; 6] = [
        Behaviour::Equivocate,
        Behaviour::InvalidParents,
        Behaviour::Garbage,
        Behaviour::Silent,
        Behaviour::OldParents,
        Behaviour::Flood,
    ];
}

/// A disruption beyond the random single crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// None.
    None,
    /// One honest validator is down this long, far beyond what its peers
    /// keep in their DAGs, and must catch up from their stores.
    Long {
        /// Simulated milliseconds.
        down_ms: u64,
    },
    /// Two honest validators crash at once.
    Two,
    /// One honest validator is down this long while its peers keep blocks
    /// for only 2 × `gc_depth` rounds below their DAGs: it cannot replay
    /// what it missed, and resumes from a [`Checkpoint`] of a peer's commit
    /// log (with the peer's state at that commit, as a restored snapshot).
    BeyondRetention {
        /// Simulated milliseconds.
        down_ms: u64,
    },
    /// The whole committee crashes and restarts.
    Everyone,
}

/// How often a validator asks a peer for missing blocks.
const SYNC_INTERVAL_MS: u64 = 200;

/// Simulated time a running honest validator may go without committing:
/// longer than any partition, and than catching up after the longest
/// outage takes.
pub const STALL_LIMIT_MS: u64 = 120_000;

/// The protocol constant of the simulated chain: small, so that a minute
/// down is far beyond what peers keep in their DAGs.
const GC_DEPTH: Round = 50;

/// Most wire bytes of blocks whose verification results are kept.
const VERIFIED_CACHE_BYTES: usize = 256 << 20;

/// Versions of each block a flooder sends, and their payload.
const FLOOD_VERSIONS: usize = 8;
const FLOOD_BYTES: usize = 16 << 10;

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Behaviour of each validator.
    pub behaviours: Vec<Behaviour>,
    /// Stake of each validator; Byzantine ones hold at most f.
    pub stakes: Vec<Stake>,
    /// The run succeeds when every honest validator has committed a leader
    /// of this round.
    pub rounds: Round,
    /// Honest validators crash and restart from their stores.
    pub crashes: bool,
    /// One larger disruption.
    pub outage: Outage,
    /// The network splits in two now and then, and heals.
    pub partitions: bool,
    /// Message delay bounds, in simulated milliseconds.
    pub latency_ms: (u64, u64),
    /// How long a validator waits for a round's leader.
    pub leader_timeout_ms: u64,
    /// Honest validators submit a block's worth of transactions of the
    /// largest size with every block, so blocks, fetch answers and
    /// restarts run at their byte limits (about 30 MB of memory per round
    /// of 4 validators: keep such runs short).
    pub large_blocks: bool,
    /// A validator whose messages are held up for seconds every other ten
    /// seconds (a congested link): the others move on without it, and its
    /// blocks of those times arrive below their garbage-collection round.
    pub slow_sender: Option<usize>,
}

impl SimConfig {
    /// A run of `validators` for `rounds` whose faults are drawn from
    /// `seed`: equal or unequal stakes, Byzantine validators of random
    /// behaviours holding at most f stake, crashes, partitions, one of
    /// the [`Outage`]s, and in one run of four a congested link.
    pub fn random(validators: usize, rounds: Round, seed: u64) -> SimConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let stakes: Vec<Stake> = if rng.random_bool(0.5) {
            vec![1; validators]
        } else {
            (0..validators).map(|_| rng.random_range(1..=4)).collect()
        };
        let total: Stake = stakes.iter().sum();
        let f = (total - 1) / 3;
        let wanted = rng.random_range(0..=(validators - 1) / 3);
        let mut behaviours = vec![Behaviour::Honest; validators];
        let mut indices: Vec<usize> = (0..validators).collect();
        indices.shuffle(&mut rng);
        let mut byzantine_stake = 0;
        for &i in indices.iter().take(wanted) {
            if byzantine_stake + stakes[i] <= f {
                byzantine_stake += stakes[i];
                behaviours[i] =
                    Behaviour::BYZANTINE[rng.random_range(0..Behaviour::BYZANTINE.len())];
            }
        }
        let outage = match rng.random_range(0..5) {
            0 => Outage::None,
            1 => Outage::Long { down_ms: 60_000 },
            2 => Outage::Two,
            3 => Outage::BeyondRetention { down_ms: 60_000 },
            _ => Outage::Everyone,
        };
        // Drawn last, so that the draws above stay what they were.
        let slow_sender = rng
            .random_bool(0.25)
            .then(|| rng.random_range(0..validators));
        SimConfig {
            seed,
            behaviours,
            stakes,
            rounds,
            crashes: true,
            outage,
            partitions: true,
            latency_ms: (1, 80),
            leader_timeout_ms: 250,
            large_blocks: false,
            slow_sender,
        }
    }
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The configuration that ran.
    pub config: SimConfig,
    /// Simulated time, in milliseconds.
    pub elapsed_ms: u64,
    /// Commits of the honest validator that committed the most.
    pub commits: usize,
    /// Transactions those commits carry.
    pub transactions: usize,
    /// Messages delivered.
    pub messages: u64,
    /// Received messages refused as malformed or invalid.
    pub refused: u64,
    /// Crashes (each followed by a restart).
    pub crashes: u64,
    /// Rounds requests of validators catching up.
    pub catch_ups: u64,
    /// Validators resumed from a checkpoint.
    pub checkpoints: u64,
    /// Partitions (each healed).
    pub partitions: u64,
    /// Transactions of honest validators' own blocks that were never
    /// committed, submitted again.
    pub resubmitted: u64,
    /// Of those, how many the pool had no room for (dropped).
    pub resubmit_dropped: u64,
}

/// Why a run failed: the seed reproduces it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimFailure {
    /// Two honest validators committed different sequences.
    #[error("seed {seed}: validators {a} and {b} diverge at commit {index}")]
    Divergence {
        /// The seed.
        seed: u64,
        /// One validator.
        a: u32,
        /// The other.
        b: u32,
        /// First differing commit.
        index: usize,
    },
    /// An honest validator signed two blocks for one round.
    #[error("seed {seed}: honest validator {author} signed two blocks in round {round}")]
    Equivocation {
        /// The seed.
        seed: u64,
        /// Who.
        author: u32,
        /// Which round.
        round: Round,
    },
    /// A validator committed an honest validator's transaction twice.
    #[error("seed {seed}: validator {validator} committed transaction {transaction:?} twice")]
    TransactionTwice {
        /// The seed.
        seed: u64,
        /// Who.
        validator: u32,
        /// The transaction, up to its padding.
        transaction: String,
    },
    /// An honest validator's transaction in one of its blocks far below
    /// its last commit was neither committed nor returned to its pool.
    #[error(
        "seed {seed}: validator {validator}'s transaction in its block of round {round} was never \
         committed, and is not waiting to be proposed again"
    )]
    TransactionLost {
        /// The seed.
        seed: u64,
        /// Whose.
        validator: u32,
        /// The round of its last block carrying it.
        round: Round,
    },
    /// A validator committed a block twice.
    #[error("seed {seed}: validator {validator} committed {block:?} twice")]
    CommittedTwice {
        /// The seed.
        seed: u64,
        /// Who.
        validator: u32,
        /// Which block.
        block: BlockRef,
    },
    /// Some honest validator did not reach the target round in time.
    #[error(
        "seed {seed}: after {elapsed_ms} ms validator {validator} has committed up to round {reached} of {target}; {validators}"
    )]
    Stalled {
        /// The seed.
        seed: u64,
        /// Who.
        validator: u32,
        /// Its last committed leader's round.
        reached: Round,
        /// The target.
        target: Round,
        /// Simulated time spent.
        elapsed_ms: u64,
        /// Where each validator stands.
        validators: String,
    },
    /// A running honest validator committed nothing for
    /// [`STALL_LIMIT_MS`] of simulated time.
    #[error(
        "seed {seed}: validator {validator} has committed nothing since round {reached} (at {since_ms} ms) for {STALL_LIMIT_MS} ms; {validators}"
    )]
    NoProgress {
        /// The seed.
        seed: u64,
        /// Who.
        validator: u32,
        /// Its last committed leader's round.
        reached: Round,
        /// Simulated time when it committed that round (or restarted).
        since_ms: u64,
        /// Where each validator stands.
        validators: String,
    },
    /// The configuration cannot run.
    #[error("{0}")]
    Config(String),
    /// A core failed (only storage can fail, and the memory store cannot).
    #[error("seed {seed}: validator {validator}: {reason}")]
    Core {
        /// The seed.
        seed: u64,
        /// Who.
        validator: u32,
        /// The error.
        reason: String,
    },
}

#[derive(Debug, Clone)]
enum Message {
    Block(Vec<u8>),
    Fetch(FetchRequest),
    Rounds(RoundsRequest),
    Blocks(Vec<Vec<u8>>),
    /// An honest peer's answer to a rounds request.
    RoundsAnswer(RoundsRequest, Vec<Vec<u8>>),
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        message: Message,
    },
    Timeout {
        node: usize,
        generation: u64,
    },
    /// Ask a peer for missing blocks.
    Sync {
        node: usize,
        incarnation: u64,
    },
    Crash(usize),
    Restart {
        node: usize,
        /// Whether the random crash process goes on from this restart.
        next_crash: bool,
    },
    Outage,
    Split,
    Heal,
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Node {
    behaviour: Behaviour,
    core: Option<Core>,
    store: MemStore,
    /// Invalidates timers set before a crash or a newer timer.
    generation: u64,
    /// Counts starts: a sync loop belongs to one run of the validator.
    incarnation: u64,
    /// Commits this validator delivered, across restarts.
    sequence: Vec<(BlockRef, Vec<BlockRef>)>,
    transactions: usize,
    /// Stands in for execution: a hash chain over the commits, carried in
    /// the validator's blocks as their state root.
    state_root: [u8; 32],
    /// The references of the blocks it proposed (for old-parent attacks).
    proposed: Vec<BlockRef>,
    /// blake3 of the transactions in its core's pool: submitted, or
    /// returned uncommitted, and not in a block of its since.
    in_pool: BTreeSet<[u8; 32]>,
    /// blake3 of each transaction it put in a block, and the round of the
    /// last such block.
    in_blocks: BTreeMap<[u8; 32], Round>,
    /// Its last committed round, and when it was first seen there.
    progress_mark: (Round, u64),
}

impl Node {
    /// What its blocks carry: the commits it delivered and its chain.
    fn executed(&self) -> crate::StateRoot {
        crate::StateRoot {
            commits: self.sequence.len() as u64,
            root: self.state_root,
        }
    }
}

struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    committee: Committee,
    keys: Vec<SecretKey>,
    params: Parameters,
    nodes: Vec<Node>,
    /// Side of each validator while the network is split.
    side: Option<Vec<bool>>,
    /// A validator kept down by a long outage.
    held_down: Option<usize>,
    /// Verification results by blake3 of the wire bytes: verification is
    /// a pure function of the bytes, so validators share the work.
    /// Emptied when it holds [`VERIFIED_CACHE_BYTES`], which changes
    /// nothing but the time a run takes.
    verified: BTreeMap<[u8; 32], Option<VerifiedBlock>>,
    /// Wire bytes of the blocks in `verified`.
    verified_bytes: usize,
    /// The one block each honest validator signed per round.
    signed: BTreeMap<(u32, Round), [u8; 32]>,
    /// blake3 of each transaction of honest authors' blocks that the first
    /// honest validator committed: resubmission must never commit one
    /// twice (each such transaction is unique).
    committed_transactions: BTreeSet<[u8; 32]>,
    /// blake3 of each transaction of honest authors' blocks that an honest
    /// validator committed.
    committed_anywhere: BTreeSet<[u8; 32]>,
    report: SimReport,
}

/// Runs one simulation to the end.
pub fn run(config: SimConfig) -> Result<SimReport, SimFailure> {
    let n = config.behaviours.len();
    let keys: Vec<SecretKey> = (0..n)
        .map(|i| {
            let seed = blake3::derive_key("soma/sim-key/v1", &(i as u64).to_le_bytes());
            SecretKey::from_bytes(&seed)
        })
        .collect();
    let protocol = Protocol {
        gc_depth: GC_DEPTH,
        ..Protocol::new(*blake3::hash(b"soma simulation").as_bytes())
    };
    let members = keys
        .iter()
        .map(|k| k.public_key())
        .zip(config.stakes.iter().copied());
    let committee = Committee::new(members.collect(), protocol)
        .map_err(|e| SimFailure::Config(format!("seed {}: {e}", config.seed)))?;
    // Small enough that floods hit the bound, and below the largest blocks.
    let mut params = Parameters {
        max_suspended_bytes_per_author: 1 << 20,
        ..Parameters::default()
    };
    if let Outage::BeyondRetention { .. } = config.outage {
        // The least a store keeps.
        params.store_retention = 0;
    }
    let mut sim = Sim {
        rng: ChaCha8Rng::seed_from_u64(config.seed),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        nodes: Vec::new(),
        side: None,
        held_down: None,
        verified: BTreeMap::new(),
        verified_bytes: 0,
        signed: BTreeMap::new(),
        report: SimReport {
            config: config.clone(),
            elapsed_ms: 0,
            commits: 0,
            transactions: 0,
            messages: 0,
            refused: 0,
            crashes: 0,
            catch_ups: 0,
            checkpoints: 0,
            partitions: 0,
            resubmitted: 0,
            resubmit_dropped: 0,
        },
        committed_transactions: BTreeSet::new(),
        committed_anywhere: BTreeSet::new(),
        committee,
        keys,
        params,
        config,
    };
    for i in 0..n {
        let store = MemStore::new();
        let behaviour = sim.config.behaviours[i];
        sim.nodes.push(Node {
            behaviour,
            core: None,
            store,
            generation: 0,
            incarnation: 0,
            sequence: Vec::new(),
            transactions: 0,
            state_root: [0; 32],
            proposed: Vec::new(),
            in_pool: BTreeSet::new(),
            in_blocks: BTreeMap::new(),
            progress_mark: (0, 0),
        });
    }
    for i in 0..n {
        sim.start(i)?;
    }
    if sim.config.crashes {
        let at = sim.rng.random_range(500..3_000);
        let victim = sim.random_honest();
        sim.schedule(at, Event::Crash(victim));
    }
    if sim.config.partitions {
        let at = sim.rng.random_range(500..5_000);
        sim.schedule(at, Event::Split);
    }
    if sim.config.outage != Outage::None {
        let at = sim.rng.random_range(1_000..3_000);
        sim.schedule(at, Event::Outage);
    }
    let deadline = u64::from(sim.config.rounds) * 1_000 + 60_000;
    while let Some(Reverse(next)) = sim.queue.pop() {
        sim.now = next.at;
        if sim.now > deadline || sim.done() {
            break;
        }
        sim.handle(next.event)?;
    }
    sim.finish()
}

impl Sim {
    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    /// Stops `node` (if running): what it wrote stays in its store, what
    /// waited in its pool is gone.
    fn crash(&mut self, node: usize) {
        if self.nodes[node].core.take().is_some() {
            let node = &mut self.nodes[node];
            node.generation += 1;
            for lost in std::mem::take(&mut node.in_pool) {
                node.in_blocks.remove(&lost);
            }
            self.report.crashes += 1;
        }
    }

    fn outage(&mut self) {
        let restart = |node| Event::Restart {
            node,
            next_crash: false,
        };
        match self.config.outage {
            Outage::None => {}
            Outage::Long { down_ms } | Outage::BeyondRetention { down_ms } => {
                let victim = self.random_honest();
                self.crash(victim);
                self.held_down = Some(victim);
                self.schedule(down_ms, restart(victim));
            }
            Outage::Two => {
                let first = self.random_honest();
                let second = self.honest().find(|&i| i != first);
                for node in [Some(first), second].into_iter().flatten() {
                    self.crash(node);
                    let downtime = self.rng.random_range(100..3_000);
                    self.schedule(downtime, restart(node));
                }
            }
            Outage::Everyone => {
                let downtime = self.rng.random_range(100..3_000);
                for node in 0..self.nodes.len() {
                    self.crash(node);
                    self.schedule(downtime, restart(node));
                }
            }
        }
    }

    fn honest(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].behaviour == Behaviour::Honest)
    }

    fn random_honest(&mut self) -> usize {
        let honest: Vec<usize> = self.honest().collect();
        honest[self.rng.random_range(0..honest.len())]
    }

    fn done(&self) -> bool {
        self.honest().all(|i| {
            self.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.progress().last_committed >= self.config.rounds)
        })
    }

    fn core_failure(&self, node: usize, reason: impl ToString) -> SimFailure {
        SimFailure::Core {
            seed: self.config.seed,
            validator: node as u32,
            reason: reason.to_string(),
        }
    }

    /// Opens `node`'s core from its store and arms its timer.
    fn start(&mut self, node: usize) -> Result<(), SimFailure> {
        let key = SecretKey::from_bytes(&self.keys[node].to_bytes());
        let mut core = Core::open(
            self.committee.clone(),
            AuthorityIndex(node as u32),
            key,
            self.params.clone(),
            Box::new(self.nodes[node].store.clone()),
        )
        .map_err(|e| self.core_failure(node, e))?;
        core.set_state_root(self.nodes[node].executed());
        self.nodes[node].progress_mark = (core.progress().last_committed, self.now);
        self.nodes[node].core = Some(core);
        self.nodes[node].incarnation += 1;
        let incarnation = self.nodes[node].incarnation;
        self.schedule(SYNC_INTERVAL_MS, Event::Sync { node, incarnation });
        // A restarted validator acts at once, as after a timeout: it
        // proposes if it may, or sends its last block again.
        self.timeout(node)
    }

    fn arm_timer(&mut self, node: usize) {
        self.nodes[node].generation += 1;
        let generation = self.nodes[node].generation;
        let jitter = self.rng.random_range(0..50);
        self.schedule(
            self.config.leader_timeout_ms + jitter,
            Event::Timeout { node, generation },
        );
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        if from == to {
            return;
        }
        let (low, high) = self.config.latency_ms;
        let mut delay = self.rng.random_range(low..=high);
        // Every other ten seconds, what it sends takes five seconds more.
        if self.config.slow_sender == Some(from) && (self.now / 10_000) % 2 == 1 {
            delay += 5_000;
        }
        self.schedule(delay, Event::Deliver { from, to, message });
    }

    fn broadcast(&mut self, from: usize, message: Message) {
        for to in 0..self.nodes.len() {
            self.send(from, to, message.clone());
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), SimFailure> {
        match event {
            Event::Deliver { from, to, message } => {
                let cut = self.side.as_ref().is_some_and(|s| s[from] != s[to]);
                if !cut && self.nodes[to].core.is_some() {
                    self.report.messages += 1;
                    self.deliver(from, to, message)?;
                }
            }
            Event::Timeout { node, generation } => {
                if self.nodes[node].generation == generation && self.nodes[node].core.is_some() {
                    self.timeout(node)?;
                }
            }
            Event::Sync { node, incarnation } => {
                let running =
                    self.nodes[node].incarnation == incarnation && self.nodes[node].core.is_some();
                if running {
                    self.check_progress(node)?;
                    self.sync(node);
                    self.schedule(SYNC_INTERVAL_MS, Event::Sync { node, incarnation });
                }
            }
            Event::Crash(node) => {
                self.crash(node);
                let downtime = self.rng.random_range(100..3_000);
                self.schedule(
                    downtime,
                    Event::Restart {
                        node,
                        next_crash: true,
                    },
                );
            }
            Event::Restart { node, next_crash } => {
                if !next_crash && self.held_down == Some(node) {
                    self.held_down = None;
                }
                if self.held_down != Some(node) {
                    self.start(node)?;
                }
                if next_crash {
                    let next = self.rng.random_range(1_000..15_000);
                    let victim = self.random_honest();
                    self.schedule(next, Event::Crash(victim));
                }
            }
            Event::Outage => self.outage(),
            Event::Split => {
                let mut side: Vec<bool> = (0..self.nodes.len())
                    .map(|_| self.rng.random_bool(0.5))
                    .collect();
                side[0] = true;
                self.side = Some(side);
                self.report.partitions += 1;
                let duration = self.rng.random_range(200..4_000);
                self.schedule(duration, Event::Heal);
            }
            Event::Heal => {
                self.side = None;
                let next = self.rng.random_range(2_000..20_000);
                self.schedule(next, Event::Split);
            }
        }
        Ok(())
    }

    /// Decodes and verifies wire bytes, sharing results between validators.
    fn verify(&mut self, bytes: &[u8]) -> Option<VerifiedBlock> {
        let digest = *blake3::hash(bytes).as_bytes();
        if let Some(result) = self.verified.get(&digest) {
            return result.clone();
        }
        let result = SignedBlock::decode(bytes)
            .and_then(|b| VerifiedBlock::verify(b, &self.committee))
            .ok();
        if self.verified_bytes + bytes.len() > VERIFIED_CACHE_BYTES {
            self.verified.clear();
            self.verified_bytes = 0;
        }
        self.verified_bytes += bytes.len();
        self.verified.insert(digest, result.clone());
        result
    }

    fn deliver(&mut self, from: usize, to: usize, message: Message) -> Result<(), SimFailure> {
        let blocks = match message {
            Message::Block(bytes) => vec![bytes],
            Message::Blocks(blocks) => blocks,
            Message::RoundsAnswer(request, blocks) => {
                let signed: Vec<SignedBlock> = blocks
                    .iter()
                    .filter_map(|b| SignedBlock::decode(b).ok())
                    .collect();
                if request.beyond_retention(&signed) {
                    return self.resume_from_checkpoint(to, from);
                }
                blocks
            }
            Message::Fetch(request) => return self.answer(to, from, Ok(&request)),
            Message::Rounds(request) => return self.answer(to, from, Err(request)),
        };
        let mut verified = Vec::new();
        for bytes in &blocks {
            match self.verify(bytes) {
                Some(block) => verified.push(block),
                None => self.report.refused += 1,
            }
        }
        let core = self.nodes[to]
            .core
            .as_mut()
            .expect("delivered to a running node");
        let outcome = core
            .add_blocks(verified)
            .map_err(|e| self.core_failure(to, e))?;
        self.act(to, Some(from), outcome)
    }

    /// Answers a fetch (`Ok`) or a rounds request (`Err`).
    fn answer(
        &mut self,
        node: usize,
        requester: usize,
        request: Result<&FetchRequest, RoundsRequest>,
    ) -> Result<(), SimFailure> {
        match self.nodes[node].behaviour {
            Behaviour::Silent => {}
            Behaviour::Garbage | Behaviour::InvalidParents => {
                let junk = self.garbage(node);
                self.send(node, requester, Message::Blocks(junk));
            }
            Behaviour::Honest
            | Behaviour::Equivocate
            | Behaviour::OldParents
            | Behaviour::Flood => {
                let store = &self.nodes[node].store;
                let blocks = match &request {
                    Ok(fetch) => fetch.answer(store, FETCH_LIMIT),
                    Err(rounds) => rounds.answer(store),
                }
                .map_err(|e| self.core_failure(node, e))?;
                if !blocks.is_empty() {
                    let wires = blocks.iter().map(|b| b.to_bytes()).collect();
                    let message = match request {
                        Err(rounds) if self.nodes[node].behaviour == Behaviour::Honest => {
                            Message::RoundsAnswer(rounds, wires)
                        }
                        _ => Message::Blocks(wires),
                    };
                    self.send(node, requester, message);
                }
            }
        }
        Ok(())
    }

    /// Fails the run as soon as a running honest validator has committed
    /// nothing for [`STALL_LIMIT_MS`], rather than at the deadline (hours
    /// of simulated time away on long runs).
    fn check_progress(&mut self, node: usize) -> Result<(), SimFailure> {
        let Some(core) = self.nodes[node].core.as_ref() else {
            return Ok(());
        };
        let reached = core.progress().last_committed;
        let (round, since) = self.nodes[node].progress_mark;
        if reached != round {
            self.nodes[node].progress_mark = (reached, self.now);
        } else if self.nodes[node].behaviour == Behaviour::Honest
            && self.now - since > STALL_LIMIT_MS
            && reached < self.config.rounds
        {
            return Err(SimFailure::NoProgress {
                seed: self.config.seed,
                validator: node as u32,
                reached,
                since_ms: since,
                validators: self.describe(),
            });
        }
        Ok(())
    }

    /// `node` learned from honest `source` that its peers no longer keep
    /// the rounds it needs: as an operator would with `soma
    /// restore-state`, it takes the source's state (here, its delivered
    /// commits) and restarts on a store seeded with a checkpoint of the
    /// source's commit log at that state's last commit.
    fn resume_from_checkpoint(&mut self, node: usize, source: usize) -> Result<(), SimFailure> {
        if self.nodes[node].behaviour != Behaviour::Honest {
            return Ok(());
        }
        let store = &self.nodes[source].store;
        let records = store
            .commits(0, usize::MAX)
            .map_err(|e| self.core_failure(source, e))?;
        let Some(trusted) = records.last().map(|r| r.digest()) else {
            return Ok(());
        };
        let checkpoint = Checkpoint::verify(records, trusted, GC_DEPTH)
            .map_err(|e| self.core_failure(node, e))?;
        let own_last = self.nodes[node]
            .store
            .recover(GC_DEPTH)
            .map_err(|e| self.core_failure(node, e))?
            .own_last;
        let mut seeded = MemStore::new();
        checkpoint
            .seed(&mut seeded, self.committee.digest(), own_last)
            .map_err(|e| self.core_failure(node, e))?;
        let (sequence, transactions, state_root) = {
            let source = &self.nodes[source];
            (
                source.sequence.clone(),
                source.transactions,
                source.state_root,
            )
        };
        // What it delivered itself must be a prefix of the source's.
        let own = &self.nodes[node].sequence;
        if sequence.len() <= own.len() {
            return Ok(());
        }
        if let Some(index) = own.iter().zip(&sequence).position(|(a, b)| a != b) {
            return Err(SimFailure::Divergence {
                seed: self.config.seed,
                a: node as u32,
                b: source as u32,
                index,
            });
        }
        self.crash(node);
        let restored = &mut self.nodes[node];
        // Its blocks go with its old store.
        restored.in_blocks.clear();
        restored.store = seeded;
        restored.sequence = sequence;
        restored.transactions = transactions;
        restored.state_root = state_root;
        self.report.checkpoints += 1;
        self.start(node)
    }

    /// Asks a random peer for every missing parent, and, if far behind,
    /// another for the next rounds.
    fn sync(&mut self, node: usize) {
        let core = self.nodes[node].core.as_ref().expect("running");
        let missing = core.missing();
        let mut messages = Vec::new();
        if let Some(from) = core.catch_up_from() {
            messages.push(Message::Rounds(RoundsRequest { from }));
            self.report.catch_ups += 1;
        }
        if !missing.is_empty() {
            messages.push(Message::Fetch(core.fetch_request(missing)));
        }
        let n = self.nodes.len();
        for message in messages {
            let peer = (node + self.rng.random_range(1..n)) % n;
            self.send(node, peer, message);
        }
    }

    fn timeout(&mut self, node: usize) -> Result<(), SimFailure> {
        let core = self.nodes[node].core.as_mut().expect("running");
        let outcome = core
            .on_leader_timeout()
            .map_err(|e| self.core_failure(node, e))?;
        if outcome.proposed.is_none() && self.nodes[node].behaviour == Behaviour::Honest {
            // Nothing new: resend the last block, in case a partition ate it.
            let last = self.nodes[node]
                .core
                .as_ref()
                .and_then(|c| c.last_proposed_block().cloned());
            if let Some(last) = last {
                self.broadcast(node, Message::Block(last.to_bytes()));
            }
        }
        if self.nodes[node].behaviour == Behaviour::Garbage {
            let junk = self.garbage(node);
            for bytes in junk {
                self.broadcast(node, Message::Block(bytes));
            }
        }
        self.act(node, None, outcome)?;
        self.arm_timer(node);
        Ok(())
    }

    /// Sends what a step produced, records commits and checks safety.
    fn act(
        &mut self,
        node: usize,
        peer: Option<usize>,
        outcome: Outcome,
    ) -> Result<(), SimFailure> {
        let mut submitted = Vec::new();
        if let Some(block) = &outcome.proposed {
            self.record_signed(node, block)?;
            self.send_proposal(node, block);
            let round = block.reference().round;
            let state = &mut self.nodes[node];
            for transaction in &block.block().transactions {
                let digest = *blake3::hash(transaction).as_bytes();
                state.in_pool.remove(&digest);
                state.in_blocks.insert(digest, round);
            }
            // Each validator submits a transaction per block (or a block's
            // worth), so commits carry payload.
            let count = if self.config.large_blocks {
                self.params.max_block_transaction_bytes / MAX_TRANSACTION_BYTES
            } else {
                1
            };
            for i in 0..count {
                let mut transaction = format!("tx {node} {round} {i}").into_bytes();
                if self.config.large_blocks {
                    transaction.resize(MAX_TRANSACTION_BYTES, 0);
                }
                submitted.push(transaction);
            }
        }
        // As the node's driver does (through its verifier): one the pool
        // has no room for is dropped, as by a crash.
        let honest = self.nodes[node].behaviour == Behaviour::Honest;
        let fresh = submitted.len();
        submitted.extend(outcome.uncommitted);
        let state = &mut self.nodes[node];
        let core = state.core.as_mut().expect("running");
        for (i, transaction) in submitted.into_iter().enumerate() {
            let digest = *blake3::hash(&transaction).as_bytes();
            let placement = Placement::alone(&transaction);
            let queued = core.submit(transaction, placement).is_ok();
            if queued {
                state.in_pool.insert(digest);
            } else {
                state.in_blocks.remove(&digest);
            }
            if honest && i >= fresh {
                self.report.resubmitted += 1;
                self.report.resubmit_dropped += u64::from(!queued);
            }
        }
        // The wait for a round's leader starts when the round has a quorum.
        if outcome.quorum_round.is_some() {
            self.arm_timer(node);
        }
        // What the blocks a peer just sent lack, ask that peer first (a
        // validator far behind replays rounds instead).
        let core = self.nodes[node].core.as_ref().expect("running");
        if let Some(peer) = peer.filter(|_| !outcome.missing.is_empty())
            && core.catch_up_from().is_none()
        {
            let request = core.fetch_request(outcome.missing);
            self.send(node, peer, Message::Fetch(request));
        }
        self.record_commits(node, outcome.committed)
    }

    fn send_proposal(&mut self, node: usize, block: &VerifiedBlock) {
        self.nodes[node].proposed.push(block.reference());
        let protocol = *self.committee.protocol();
        match self.nodes[node].behaviour {
            Behaviour::Honest | Behaviour::Garbage => {
                self.broadcast(node, Message::Block(block.to_bytes()));
            }
            Behaviour::Silent => {}
            Behaviour::OldParents => {
                let round = block.reference().round;
                let old = self.nodes[node]
                    .proposed
                    .iter()
                    .rev()
                    .find(|r| r.round + GC_DEPTH < round)
                    .copied();
                let mut aged = block.block().clone();
                if let Some(old) = old {
                    let own = aged
                        .parents
                        .iter_mut()
                        .find(|p| p.author.0 as usize == node)
                        .expect("a block names its author's previous one");
                    *own = old;
                    aged.parents.sort();
                }
                let aged = aged.sign(&self.keys[node], &protocol).to_bytes();
                self.broadcast(node, Message::Block(aged));
            }
            Behaviour::Flood => {
                self.broadcast(node, Message::Block(block.to_bytes()));
                for version in 0..FLOOD_VERSIONS {
                    let mut copy = block.block().clone();
                    copy.transactions.push(vec![version as u8; FLOOD_BYTES]);
                    let copy = copy.sign(&self.keys[node], &protocol).to_bytes();
                    self.broadcast(node, Message::Block(copy));
                }
            }
            Behaviour::Equivocate => {
                let mut twin = block.block().clone();
                twin.transactions.push(b"equivocation".to_vec());
                let twin = twin.sign(&self.keys[node], &protocol).to_bytes();
                for to in 0..self.nodes.len() {
                    let bytes = if to % 2 == 0 {
                        block.to_bytes()
                    } else {
                        twin.clone()
                    };
                    self.send(node, to, Message::Block(bytes));
                }
            }
            Behaviour::InvalidParents => {
                let mut fake = block.block().clone();
                let other = fake
                    .parents
                    .iter_mut()
                    .find(|p| p.round + 1 == fake.round && p.author.0 as usize != node);
                if let Some(parent) = other {
                    parent.digest = self.rng.random();
                }
                self.broadcast(
                    node,
                    Message::Block(
                        fake.sign(&self.keys[node], self.committee.protocol())
                            .to_bytes(),
                    ),
                );
            }
        }
    }

    /// Malformed, truncated, oversized and wrongly signed blocks.
    fn garbage(&mut self, node: usize) -> Vec<Vec<u8>> {
        let len = self.rng.random_range(0..300);
        let random: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
        let mut junk = vec![random];
        if self.rng.random_range(0..100) == 0 {
            junk.push(vec![0; crate::block::MAX_BLOCK_BYTES + 65]);
        }
        if let Some(last) = self.nodes[node]
            .core
            .as_ref()
            .and_then(|c| c.last_proposed_block())
        {
            let wire = last.to_bytes();
            junk.push(wire[..wire.len() / 2].to_vec());
            let victim = AuthorityIndex(((node + 1) % self.nodes.len()) as u32);
            let forged = Block {
                author: victim,
                ..last.block().clone()
            };
            junk.push(
                forged
                    .sign(&self.keys[node], self.committee.protocol())
                    .to_bytes(),
            );
        }
        junk
    }

    fn record_signed(&mut self, node: usize, block: &VerifiedBlock) -> Result<(), SimFailure> {
        if self.nodes[node].behaviour != Behaviour::Honest {
            return Ok(());
        }
        let digest = block.reference().digest;
        let previous = *self
            .signed
            .entry((node as u32, block.reference().round))
            .or_insert(digest);
        if previous != digest {
            return Err(SimFailure::Equivocation {
                seed: self.config.seed,
                author: node as u32,
                round: block.reference().round,
            });
        }
        Ok(())
    }

    fn record_commits(
        &mut self,
        node: usize,
        committed: Vec<CommittedSubDag>,
    ) -> Result<(), SimFailure> {
        let first_honest = self.honest().next() == Some(node);
        let honest_committer = self.nodes[node].behaviour == Behaviour::Honest;
        for subdag in committed {
            let honest_transactions = subdag
                .blocks
                .iter()
                .filter(|b| {
                    self.nodes[b.reference().author.0 as usize].behaviour == Behaviour::Honest
                })
                .flat_map(|b| &b.block().transactions);
            for transaction in honest_transactions.filter(|_| honest_committer) {
                let digest = *blake3::hash(transaction).as_bytes();
                self.committed_anywhere.insert(digest);
                if first_honest && !self.committed_transactions.insert(digest) {
                    let end = transaction
                        .iter()
                        .position(|b| *b == 0)
                        .unwrap_or(transaction.len());
                    return Err(SimFailure::TransactionTwice {
                        seed: self.config.seed,
                        validator: node as u32,
                        transaction: String::from_utf8_lossy(&transaction[..end]).into_owned(),
                    });
                }
            }
            let refs: Vec<BlockRef> = subdag.blocks.iter().map(|b| b.reference()).collect();
            self.nodes[node].transactions += subdag
                .blocks
                .iter()
                .map(|b| b.block().transactions.len())
                .sum::<usize>();
            let mut chain = blake3::Hasher::new();
            chain.update(&self.nodes[node].state_root);
            for block in &refs {
                chain.update(&block.to_key());
            }
            self.nodes[node].state_root = *chain.finalize().as_bytes();
            self.nodes[node].sequence.push((subdag.leader, refs));
        }
        let root = self.nodes[node].executed();
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.set_state_root(root);
        }
        Ok(())
    }

    /// One line per validator: behaviour, DAG height, last proposal,
    /// commit progress and suspended blocks.
    fn describe(&self) -> String {
        let lines: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| match &node.core {
                None => format!("{i} {:?} down", node.behaviour),
                Some(core) => format!(
                    "{i} {:?}: highest round {}, proposed {:?}, {:?}, {} suspended",
                    node.behaviour,
                    core.dag().highest_round(),
                    core.last_proposed(),
                    core.progress(),
                    core.suspended()
                ),
            })
            .collect();
        lines.join("; ")
    }

    /// Final safety checks and the liveness verdict.
    fn finish(mut self) -> Result<SimReport, SimFailure> {
        let seed = self.config.seed;
        let honest: Vec<usize> = self.honest().collect();
        for &i in &honest {
            let mut seen = BTreeSet::new();
            for (_, blocks) in &self.nodes[i].sequence {
                for block in blocks {
                    if !seen.insert(*block) {
                        return Err(SimFailure::CommittedTwice {
                            seed,
                            validator: i as u32,
                            block: *block,
                        });
                    }
                }
            }
        }
        for (x, &a) in honest.iter().enumerate() {
            for &b in &honest[x + 1..] {
                let (sa, sb) = (&self.nodes[a].sequence, &self.nodes[b].sequence);
                if let Some(index) = sa.iter().zip(sb).position(|(p, q)| p != q) {
                    return Err(SimFailure::Divergence {
                        seed,
                        a: a as u32,
                        b: b as u32,
                        index,
                    });
                }
            }
        }
        for &i in &honest {
            let reached = self.nodes[i]
                .core
                .as_ref()
                .map_or(0, |c| c.progress().last_committed);
            if reached < self.config.rounds {
                return Err(SimFailure::Stalled {
                    seed,
                    validator: i as u32,
                    reached,
                    target: self.config.rounds,
                    elapsed_ms: self.now,
                    validators: self.describe(),
                });
            }
        }
        // Every transaction in an honest validator's block far enough below
        // its last commit was committed, or returned to its pool.
        for &i in &honest {
            let node = &self.nodes[i];
            let Some(core) = &node.core else { continue };
            let decided_below = core.progress().last_committed.saturating_sub(2 * GC_DEPTH);
            let lost = node.in_blocks.iter().find(|(digest, round)| {
                **round < decided_below
                    && !node.in_pool.contains(*digest)
                    && !self.committed_anywhere.contains(*digest)
            });
            if let Some((_, &round)) = lost {
                return Err(SimFailure::TransactionLost {
                    seed,
                    validator: i as u32,
                    round,
                });
            }
        }
        let best = honest
            .iter()
            .max_by_key(|i| self.nodes[**i].sequence.len())
            .copied()
            .expect("at least one honest validator");
        self.report.elapsed_ms = self.now;
        self.report.commits = self.nodes[best].sequence.len();
        self.report.transactions = self.nodes[best].transactions;
        Ok(self.report)
    }
}
