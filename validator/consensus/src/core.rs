//! One validator's consensus logic, free of I/O and clocks: blocks in,
//! proposals and commits out. The simulation and the network node both
//! drive this same type.

use crate::block::{Block, BlockRef, MAX_TRANSACTIONS, Round, VerifiedBlock};
use crate::block_manager::BlockManager;
use crate::committee::{AuthorityIndex, Committee};
use crate::committer::{Committer, LeaderStatus, leader};
use crate::dag_state::{Acceptance, DagState};
use crate::linearizer::{CommittedSubDag, Linearizer};
use crate::mempool::{Mempool, Placement, SubmitError};
use crate::network::FetchRequest;
use crate::store::{CommitProgress, CommitRecord, Store, StoreBatch, StoreError, gc_round};
use soma_crypto::SecretKey;
use std::collections::{BTreeMap, BTreeSet};

/// A node's own tunables of the consensus core: none of them changes what
/// is committed (those are in the committee's [`Protocol`]).
///
/// [`Protocol`]: crate::Protocol
#[derive(Debug, Clone)]
pub struct Parameters {
    /// Most transactions in one proposal.
    pub max_block_transactions: usize,
    /// Most transaction bytes in one proposal.
    pub max_block_transaction_bytes: usize,
    /// Most bytes of transactions waiting to be proposed.
    pub max_pending_transaction_bytes: usize,
    /// Most bytes of one author's blocks kept while their parents are
    /// fetched (the highest go first).
    pub max_suspended_bytes_per_author: usize,
    /// Rounds of accepted blocks the store keeps below the
    /// garbage-collection round, to serve validators that fell behind: one
    /// down for longer than this many rounds cannot catch up through
    /// consensus. At least 2 × `gc_depth`: a validator a few commits
    /// behind has its retention floor 2 × `gc_depth` below its own last
    /// commit, and must still be able to fetch what it lacks above it.
    pub store_retention: Round,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            max_block_transactions: MAX_TRANSACTIONS,
            max_block_transaction_bytes: 2 << 20,
            max_pending_transaction_bytes: 64 << 20,
            max_suspended_bytes_per_author: 64 << 20,
            // An hour at the fastest pace the default minimum round delay
            // allows (200 rounds a second); longer at a slower pace.
            store_retention: 720_000,
        }
    }
}

/// Why the core could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Storage failed; the validator must stop.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key does not belong to the committee member it claims to be.
    #[error("the key is not the key of validator {0} in the committee")]
    NotThisMember(u32),
}

/// What one step of the core produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// This validator's new block, to broadcast (already stored).
    pub proposed: Option<VerifiedBlock>,
    /// Newly committed sub-DAGs, in order (already stored).
    pub committed: Vec<CommittedSubDag>,
    /// Missing parents of the blocks just suspended: fetch them from the
    /// sender (see [`Core::missing`] for all of them).
    pub missing: BTreeSet<BlockRef>,
    /// Blocks dropped: their author had too many bytes suspended, or too
    /// many blocks in one slot. A driver that skips copies of blocks it
    /// has seen must take these again.
    pub dropped: Vec<BlockRef>,
    /// The highest round holding a quorum of stake, if this step raised
    /// it: the wait for that round's leader starts now.
    pub quorum_round: Option<Round>,
    /// Transactions of this validator's blocks that fell below the
    /// garbage-collection round uncommitted, so no commit will ever carry
    /// them (no committed leader's history reached those blocks in time):
    /// the driver submits them again, through its verifier, since what
    /// they spend may have changed meanwhile. A sender's later transaction
    /// in a later block of this validator may have been committed before
    /// them, and so out of order.
    ///
    /// Only as durable as the pool: if the validator stops before it
    /// proposes them again, they are gone unless the node keeps them
    /// elsewhere (it journals what its API accepted).
    pub uncommitted: Vec<Vec<u8>>,
}

/// Rounds a validator may lag behind the committee and still propose;
/// further behind it catches up first (see [`Core::catch_up_from`]).
pub const CATCH_UP_LAG: Round = 20;

/// A validator's consensus state machine.
pub struct Core {
    me: AuthorityIndex,
    key: SecretKey,
    params: Parameters,
    dag: DagState,
    blocks: BlockManager,
    committer: Committer,
    linearizer: Linearizer,
    progress: CommitProgress,
    last_proposed: BlockRef,
    /// Per author, the highest round of its blocks this validator has
    /// referenced so far.
    referenced: Vec<Round>,
    /// Per author, the highest round of a verified block received from it.
    seen: Vec<Round>,
    /// This validator's blocks that carry transactions and are neither
    /// committed nor below the garbage-collection round yet.
    own_pending: BTreeMap<BlockRef, VerifiedBlock>,
    quorum_round: Round,
    transactions: Mempool,
    /// Whether the driver holds proposals back (a minimum time between
    /// rounds, which a clock-free core cannot keep itself).
    proposals_held: bool,
    /// Whether the leader timed out while proposals were held.
    timed_out_while_held: bool,
    state_root: crate::StateRoot,
    store: Box<dyn Store>,
}

impl Core {
    /// Starts validator `me` of `committee` from what `store` holds (an
    /// empty store starts at genesis).
    pub fn open(
        committee: Committee,
        me: AuthorityIndex,
        key: SecretKey,
        params: Parameters,
        mut store: Box<dyn Store>,
    ) -> Result<Core, CoreError> {
        if committee.key(me) != Some(&key.public_key()) {
            return Err(CoreError::NotThisMember(me.0));
        }
        store.bind(committee.digest())?;
        let gc_depth = committee.protocol().gc_depth;
        let recovered = store.recover(gc_depth)?;
        let gc_round = gc_round(recovered.progress.last_committed, gc_depth);
        let mut dag = DagState::new(committee, gc_depth);
        dag.garbage_collect(gc_round);
        let committed = recovered
            .commits
            .iter()
            .flat_map(|c| c.blocks.iter().copied());
        let last_digest = recovered
            .commits
            .last()
            .map_or(crate::linearizer::NO_COMMIT, CommitRecord::digest);
        let linearizer = Linearizer::new(committed, gc_round, last_digest);
        let n = dag.committee().size();
        let max_pending = params.max_pending_transaction_bytes;
        let max_suspended = params.max_suspended_bytes_per_author;
        let mut core = Core {
            me,
            key,
            params,
            last_proposed: recovered.own_last.unwrap_or(BlockRef::genesis(me)),
            dag,
            blocks: BlockManager::new(max_suspended),
            committer: Committer::new(),
            linearizer,
            progress: recovered.progress,
            referenced: vec![0; n],
            seen: vec![0; n],
            own_pending: BTreeMap::new(),
            quorum_round: 0,
            transactions: Mempool::new(max_pending),
            proposals_held: false,
            timed_out_while_held: false,
            state_root: crate::StateRoot::default(),
            store,
        };
        for block in recovered.blocks {
            let reference = block.reference();
            let block = VerifiedBlock::verify(block, core.dag.committee()).map_err(|e| {
                StoreError::Corrupt(format!("stored block {reference:?} does not verify: {e}"))
            })?;
            // Blocks below the garbage-collection round are only
            // remembered. The others were accepted in an order that put
            // parents first, and sorted by round they still do, except for
            // any whose parents were lost in a crash, which wait to be
            // fetched.
            if reference.round < core.dag.gc_round() {
                core.dag.restore(block);
                continue;
            }
            // The pool did not survive a restart, but the blocks did:
            // their transactions come back if they are never committed
            // (whether they are in the DAG or wait for lost parents).
            if reference.author == me
                && !block.block().transactions.is_empty()
                && !core.linearizer.is_committed(&reference)
            {
                core.own_pending.insert(reference, block.clone());
            }
            core.blocks.restore(&mut core.dag, block);
        }
        core.quorum_round = core.highest_quorum_round();
        Ok(core)
    }

    /// The DAG as this validator knows it.
    pub fn dag(&self) -> &DagState {
        &self.dag
    }

    /// Where the commit rule stands.
    pub fn progress(&self) -> CommitProgress {
        self.progress
    }

    /// The reference of this validator's last block.
    pub fn last_proposed(&self) -> BlockRef {
        self.last_proposed
    }

    /// This validator's last block, if it is still kept.
    pub fn last_proposed_block(&self) -> Option<&VerifiedBlock> {
        self.dag.get(&self.last_proposed)
    }

    /// Number of blocks waiting for parents.
    pub fn suspended(&self) -> usize {
        self.blocks.suspended()
    }

    /// Sets the executed state carried by the next proposals.
    pub fn set_state_root(&mut self, root: crate::StateRoot) {
        self.state_root = root;
    }

    /// Bytes of the transactions waiting for this validator's blocks
    /// (each counted at least at its minimum cost).
    pub fn pending_transaction_bytes(&self) -> usize {
        self.transactions.bytes()
    }

    /// Whether [`Core::submit`] would take another transaction.
    pub fn has_room_for_transactions(&self) -> bool {
        self.transactions.has_room()
    }

    /// Queues a transaction for a coming proposal, where `placement`
    /// says: proposals take the best lanes first, each lane in sequence
    /// order.
    pub fn submit(
        &mut self,
        transaction: Vec<u8>,
        placement: Placement,
    ) -> Result<(), SubmitError> {
        self.transactions.insert(transaction, placement)
    }

    /// Adds verified blocks from peers, then commits and proposes what
    /// they allow.
    pub fn add_blocks(&mut self, blocks: Vec<VerifiedBlock>) -> Result<Outcome, CoreError> {
        for block in &blocks {
            let reference = block.reference();
            let seen = &mut self.seen[reference.author.0 as usize];
            *seen = (*seen).max(reference.round);
        }
        let admitted = self.blocks.add_blocks(&mut self.dag, blocks);
        let mut outcome = Outcome {
            missing: admitted.missing,
            dropped: admitted.dropped,
            ..Outcome::default()
        };
        self.step(admitted.accepted, false, &mut outcome)?;
        Ok(outcome)
    }

    /// The round a committee has reached, as far as this validator can
    /// tell: the highest round that validators of more than f stake (so
    /// at least one honest one) have sent blocks of.
    pub fn committee_round(&self) -> Round {
        let committee = self.dag.committee();
        let mut rounds: Vec<(Round, AuthorityIndex)> = committee
            .authorities()
            .map(|a| (self.seen[a.0 as usize].max(self.dag.latest_of(a).round), a))
            .collect();
        rounds.sort_unstable_by(|x, y| y.cmp(x));
        let mut stake = crate::committee::StakeAggregator::new();
        for (round, author) in rounds {
            stake.add(author, committee);
            if stake.reached_validity(committee) {
                return round;
            }
        }
        0
    }

    /// Where to start replaying rounds from peers' stores when this
    /// validator lags more than [`CATCH_UP_LAG`] rounds behind the
    /// committee; `None` when it keeps up. It proposes nothing meanwhile:
    /// blocks of rounds the others have left behind help no one, and its
    /// own chain would then start below what they still accept. It never
    /// starts below the retention floor: a store seeded from commit
    /// records holds no blocks, and blocks below the floor it would refuse.
    pub fn catch_up_from(&self) -> Option<Round> {
        let from = self.quorum_round.max(self.dag.retention_floor());
        (self.committee_round() > from + CATCH_UP_LAG).then_some(from)
    }

    /// The leader of the round this validator waits on did not show up in
    /// time: propose without it if a quorum allows.
    pub fn on_leader_timeout(&mut self) -> Result<Outcome, CoreError> {
        self.timed_out_while_held |= self.proposals_held;
        let mut outcome = Outcome::default();
        self.step(Vec::new(), true, &mut outcome)?;
        Ok(outcome)
    }

    /// Holds proposals back until [`Core::release_proposals`]: a driver
    /// does so for a minimum time after each of its blocks, so that an
    /// idle committee does not race through empty rounds.
    pub fn hold_proposals(&mut self) {
        self.proposals_held = true;
    }

    /// Lets proposals go again, and proposes now if a quorum and the
    /// round's leader allow.
    pub fn release_proposals(&mut self) -> Result<Outcome, CoreError> {
        self.proposals_held = false;
        let timed_out = std::mem::take(&mut self.timed_out_while_held);
        let mut outcome = Outcome::default();
        self.step(Vec::new(), timed_out, &mut outcome)?;
        Ok(outcome)
    }

    /// A request for `missing` blocks that also tells the peer, per
    /// author, the round of the highest block this validator holds (or,
    /// if lower, the round below its retention floor: it could not take
    /// older blocks).
    pub fn fetch_request(&self, missing: BTreeSet<BlockRef>) -> FetchRequest {
        let floor = self.dag.retention_floor().saturating_sub(1);
        FetchRequest {
            references: missing.into_iter().collect(),
            known_rounds: self
                .dag
                .committee()
                .authorities()
                .map(|a| self.dag.latest_of(a).round.max(floor))
                .collect(),
        }
    }

    /// Every parent of a suspended block that is neither known nor
    /// suspended itself. Drivers ask peers for these now and then, in turn:
    /// the peer that sent a block may not be able (or willing) to serve
    /// its history, and honest peers garbage-collect it in time. While
    /// catching up only those near the DAG's frontier: a hole there holds
    /// back everything above it, and replayed rounds bring the rest.
    ///
    /// A bounded number of parents for the blocks of each author, lowest
    /// rounds first: a Byzantine validator's blocks naming made-up parents
    /// cannot crowd out the parents that honest blocks wait for.
    pub fn missing(&self) -> BTreeSet<BlockRef> {
        let frontier = match self.catch_up_from() {
            Some(from) => from.saturating_add(CATCH_UP_LAG),
            None => Round::MAX,
        };
        self.blocks.missing(&self.dag, frontier)
    }

    /// Stores newly accepted blocks with the commits they allow, then
    /// proposes if it can, and commits again with the new block.
    fn step(
        &mut self,
        accepted: Vec<VerifiedBlock>,
        leader_timed_out: bool,
        outcome: &mut Outcome,
    ) -> Result<(), CoreError> {
        self.store_and_commit(accepted, outcome)?;
        if let Some(block) = self.try_propose(leader_timed_out)? {
            outcome.proposed = Some(block);
            self.store_and_commit(Vec::new(), outcome)?;
        }
        Ok(())
    }

    /// Stores `accepted` with the commits they allow. A commit that raises
    /// the retention floor frees the suspended blocks that waited for
    /// parents below it: those the DAG now takes are stored too, and may
    /// allow more commits.
    fn store_and_commit(
        &mut self,
        mut accepted: Vec<VerifiedBlock>,
        outcome: &mut Outcome,
    ) -> Result<(), CoreError> {
        let mut batch = StoreBatch::default();
        loop {
            batch
                .blocks
                .extend(accepted.drain(..).map(|b| (*b).clone()));
            let floor = self.dag.retention_floor();
            let committed = self.try_commit(&mut batch, &mut outcome.uncommitted);
            outcome.committed.extend(committed);
            if self.dag.retention_floor() == floor {
                break;
            }
            let floor = self.dag.retention_floor();
            let released = self.blocks.release_below(&mut self.dag, floor);
            outcome.dropped.extend(released.dropped);
            accepted = released.accepted;
            if accepted.is_empty() {
                break;
            }
        }
        self.store.write(batch)?;
        self.raise_quorum_round(outcome);
        Ok(())
    }

    fn raise_quorum_round(&mut self, outcome: &mut Outcome) {
        let round = self.highest_quorum_round();
        if round > self.quorum_round {
            self.quorum_round = round;
            outcome.quorum_round = Some(round);
        }
    }

    /// Decides leaders, linearizes the committed ones and collects garbage;
    /// records all of it in `batch`.
    fn try_commit(
        &mut self,
        batch: &mut StoreBatch,
        uncommitted: &mut Vec<Vec<u8>>,
    ) -> Vec<CommittedSubDag> {
        let decided = self
            .committer
            .try_decide(&self.dag, self.progress.last_decided);
        if decided.is_empty() {
            return Vec::new();
        }
        let mut committed = Vec::new();
        for status in decided {
            match status {
                LeaderStatus::Commit(leader) => {
                    let subdag =
                        self.linearizer
                            .linearize(&self.dag, leader, self.progress.next_index);
                    batch.commits.push(CommitRecord {
                        index: self.progress.next_index,
                        leader,
                        blocks: subdag.blocks.iter().map(|b| b.reference()).collect(),
                        previous: subdag.previous,
                    });
                    self.progress.next_index += 1;
                    self.progress.last_committed = leader.round;
                    self.progress.last_decided = leader.round;
                    for block in &subdag.blocks {
                        self.own_pending.remove(&block.reference());
                    }
                    // Collected between commits, so what each commit leaves
                    // out depends only on the commits before it.
                    let gc = gc_round(leader.round, self.gc_depth());
                    self.linearizer.garbage_collect(gc);
                    let kept = self.own_pending.split_off(&BlockRef::first_of_round(gc));
                    let lost = std::mem::replace(&mut self.own_pending, kept);
                    uncommitted.extend(
                        lost.into_values()
                            .flat_map(|b| b.block().transactions.clone()),
                    );
                    committed.push(subdag);
                }
                LeaderStatus::Skip(round) => self.progress.last_decided = round,
                LeaderStatus::Undecided(_) => unreachable!("try_decide returns decided leaders"),
            }
        }
        let gc = gc_round(self.progress.last_committed, self.gc_depth());
        if gc > self.dag.gc_round() {
            self.dag.garbage_collect(gc);
            let kept = self.params.store_retention.max(2 * self.gc_depth());
            batch.drop_below = Some(gc.saturating_sub(kept));
        }
        batch.progress = Some(self.progress);
        committed
    }

    /// Proposes a block for the round after the highest round with a
    /// quorum, once that round's leader is in (or its wait timed out).
    fn try_propose(&mut self, leader_timed_out: bool) -> Result<Option<VerifiedBlock>, CoreError> {
        if self.proposals_held {
            return Ok(None);
        }
        if self.last_proposed.round >= self.dag.gc_round()
            && !self.dag.contains(&self.last_proposed)
        {
            // Our own last block waits for fetched parents after a crash.
            return Ok(None);
        }
        let quorum_round = self.quorum_round;
        if quorum_round < self.last_proposed.round || self.catch_up_from().is_some() {
            return Ok(None);
        }
        let round = quorum_round + 1;
        if !leader_timed_out && self.waits_for_leader(quorum_round) {
            return Ok(None);
        }
        let block = Block {
            round,
            author: self.me,
            parents: self.choose_parents(quorum_round),
            transactions: self.take_transactions(),
            state_root: self.state_root,
        };
        let block = VerifiedBlock::sign_own(block, &self.key, self.dag.committee());
        self.store.write_own(&block)?;
        let accepted = self.dag.accept(block.clone());
        debug_assert_eq!(accepted, Acceptance::Accepted, "own block {block:?}");
        self.last_proposed = block.reference();
        if !block.block().transactions.is_empty() {
            self.own_pending.insert(block.reference(), block.clone());
        }
        for parent in &block.block().parents {
            let seen = &mut self.referenced[parent.author.0 as usize];
            *seen = (*seen).max(parent.round);
        }
        Ok(Some(block))
    }

    /// Whether the leader of `round` may still send its block: it has not,
    /// it is not this validator, and no later block of its is in the DAG.
    /// A later block in the DAG without one in the slot means the leader
    /// skipped the round (its own previous block is older), which an
    /// honest validator does when its quorum grows by two rounds at once,
    /// while its proposals were held, say; it never signs a round it moved
    /// past, and waiting for one would cost a whole leader timeout. Blocks
    /// merely received are no such proof: a later block that waits for its
    /// parents may well name the leader's block of `round`.
    fn waits_for_leader(&self, round: Round) -> bool {
        let author = leader(self.dag.committee(), round);
        round > 0
            && author != self.me
            && self.dag.blocks_in_slot(round, author).next().is_none()
            && self.dag.latest_of(author).round <= round
    }

    /// One parent per author: our own last block (unless it is older than
    /// the garbage-collection depth), and every other author's
    /// block of `round`, or else its latest block newer than what we
    /// referenced before (so slow validators' blocks still get in).
    fn choose_parents(&self, round: Round) -> Vec<BlockRef> {
        let committee = self.dag.committee();
        if round == 0 {
            return committee.authorities().map(BlockRef::genesis).collect();
        }
        // A silent author is looked for only a few rounds back.
        const LOOK_BACK: Round = 10;
        let mut parents: Vec<BlockRef> = committee
            .authorities()
            .filter_map(|author| {
                if author == self.me {
                    // After a long absence our last block may be forgotten
                    // by peers (and by us); our genesis block is known to
                    // all and names us as well.
                    let recent = self.last_proposed.round + self.gc_depth() > round;
                    return Some(if recent {
                        self.last_proposed
                    } else {
                        BlockRef::genesis(self.me)
                    });
                }
                // No parent older than the protocol allows.
                let look_back = LOOK_BACK.min(self.gc_depth());
                let floor = self.referenced[author.0 as usize].max(round.saturating_sub(look_back));
                (floor + 1..=round)
                    .rev()
                    .find_map(|r| self.dag.blocks_in_slot(r, author).next())
                    .map(|b| b.reference())
            })
            .collect();
        parents.sort();
        parents
    }

    /// The highest round whose blocks in the DAG hold a quorum of stake.
    fn highest_quorum_round(&self) -> Round {
        let mut round = self.dag.highest_round();
        while !self.dag.has_quorum_at(round) {
            round -= 1;
        }
        round
    }

    fn gc_depth(&self) -> Round {
        self.dag.committee().protocol().gc_depth
    }

    fn take_transactions(&mut self) -> Vec<Vec<u8>> {
        self.transactions.take(
            self.params.max_block_transactions,
            self.params.max_block_transaction_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Checkpoint;
    use crate::block::MAX_TRANSACTION_BYTES;
    use crate::block_manager::MISSING_PER_AUTHOR;
    use crate::committee::tests::{committee, with_gc_depth};
    use crate::mempool::MIN_TRANSACTION_COST;
    use crate::network::{FETCH_LIMIT, RoundsRequest};
    use crate::store::{FjallStore, MemStore};

    fn open(c: &Committee, keys: &[SecretKey], me: u32, store: Box<dyn Store>) -> Core {
        open_with(c, keys, me, Parameters::default(), store)
    }

    fn open_with(
        c: &Committee,
        keys: &[SecretKey],
        me: u32,
        params: Parameters,
        store: Box<dyn Store>,
    ) -> Core {
        let key = SecretKey::from_bytes(&keys[me as usize].to_bytes());
        Core::open(c.clone(), AuthorityIndex(me), key, params, store).unwrap()
    }

    /// A core for every member: validator 0 on a fjall store in `fjall`
    /// if given, the others (and otherwise all) in memory.
    fn open_all(
        c: &Committee,
        keys: &[SecretKey],
        params: &Parameters,
        fjall: Option<&std::path::Path>,
    ) -> Vec<Core> {
        (0..keys.len() as u32)
            .map(|i| {
                let store: Box<dyn Store> = match fjall {
                    Some(dir) if i == 0 => Box::new(FjallStore::open(dir).unwrap()),
                    _ => Box::new(MemStore::new()),
                };
                open_with(c, keys, i, params.clone(), store)
            })
            .collect()
    }

    /// A core for every member, each on its own of `stores` (kept by the
    /// caller, so that a member can be reopened on what it wrote).
    fn open_on(
        c: &Committee,
        keys: &[SecretKey],
        params: &Parameters,
        stores: &[MemStore],
    ) -> Vec<Core> {
        (0..keys.len() as u32)
            .map(|i| {
                open_with(
                    c,
                    keys,
                    i,
                    params.clone(),
                    Box::new(stores[i as usize].clone()),
                )
            })
            .collect()
    }

    /// Runs `rounds` rounds in lockstep: every new block reaches everyone.
    /// It starts as after a timeout: each proposes if it can, or else
    /// sends its last block again.
    fn lockstep(cores: &mut [Core], rounds: usize) -> Vec<Vec<CommittedSubDag>> {
        let mut committed = vec![Vec::new(); cores.len()];
        let mut inbox: Vec<VerifiedBlock> = Vec::new();
        for (i, core) in cores.iter_mut().enumerate() {
            let outcome = core.on_leader_timeout().unwrap();
            inbox.extend(outcome.proposed.or(core.last_proposed_block().cloned()));
            committed[i].extend(outcome.committed);
        }
        for _ in 0..rounds {
            let sent = std::mem::take(&mut inbox);
            for (i, core) in cores.iter_mut().enumerate() {
                let outcome = core.add_blocks(sent.clone()).unwrap();
                assert!(outcome.missing.is_empty());
                inbox.extend(outcome.proposed);
                committed[i].extend(outcome.committed);
            }
        }
        committed
    }

    #[test]
    fn a_restarted_validator_resumes_without_signing_a_round_twice() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let dir = tempfile::tempdir().unwrap();
        let mut cores = open_all(&c, &keys, &Parameters::default(), Some(dir.path()));
        cores[0]
            .submit(b"pay 5".to_vec(), Placement::alone(b"pay 5"))
            .unwrap();
        let committed = lockstep(&mut cores, 12);
        assert!(committed[0].len() >= 8, "{}", committed[0].len());
        assert!(committed.iter().all(|c| *c == committed[0]));
        assert!(
            committed[0]
                .iter()
                .flat_map(|s| &s.blocks)
                .any(|b| b.block().transactions == [b"pay 5".to_vec()])
        );

        let before = (
            cores[0].last_proposed(),
            cores[0].progress(),
            cores[0].dag().highest_round(),
        );
        drop(cores.remove(0));
        let store = FjallStore::open(dir.path()).unwrap();
        let mut restarted = open(&c, &keys, 0, Box::new(store));
        assert_eq!(
            (
                restarted.last_proposed(),
                restarted.progress(),
                restarted.dag().highest_round()
            ),
            before
        );
        // Its round is already signed: a timeout proposes nothing new.
        let outcome = restarted.on_leader_timeout().unwrap();
        assert!(outcome.proposed.is_none() && outcome.committed.is_empty());

        // It goes on with the others, and commits what they commit.
        cores.insert(0, restarted);
        let more = lockstep(&mut cores, 6);
        assert!(!more[0].is_empty());
        assert!(more.iter().all(|c| *c == more[0]));
        assert!(more[0][0].leader.round > before.1.last_committed);
    }

    /// Adds `blocks`, and lets the leader's wait time out if that
    /// proposes nothing: one round of a committee where a leader may be
    /// missing.
    fn add_or_time_out(core: &mut Core, blocks: Vec<VerifiedBlock>) -> Outcome {
        let mut outcome = core.add_blocks(blocks).unwrap();
        if outcome.proposed.is_none() {
            let late = core.on_leader_timeout().unwrap();
            outcome.proposed = late.proposed;
            outcome.committed.extend(late.committed);
            outcome.uncommitted.extend(late.uncommitted);
        }
        outcome
    }

    #[test]
    fn transactions_of_own_blocks_nobody_built_on_come_back_once_and_commit_once() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let c = with_gc_depth(&c, 3);
        let stores: Vec<MemStore> = (0..4).map(|_| MemStore::new()).collect();
        let mut cores = open_on(&c, &keys, &Parameters::default(), &stores);
        cores[3]
            .submit(b"pay 7".to_vec(), Placement::alone(b"pay 7"))
            .unwrap();
        let carries = |s: &CommittedSubDag| {
            s.blocks
                .iter()
                .any(|b| b.block().transactions.contains(&b"pay 7".to_vec()))
        };

        // Validator 3's blocks reach no one: the others commit without it.
        let mut inbox: Vec<VerifiedBlock> = Vec::new();
        let mut uncommitted = Vec::new();
        let mut committed = 0;
        for round in 0..20 {
            let sent = std::mem::take(&mut inbox);
            for (i, core) in cores.iter_mut().enumerate() {
                let outcome = add_or_time_out(core, sent.clone());
                assert!(!outcome.committed.iter().any(carries));
                committed += outcome.committed.len();
                if i == 3 {
                    uncommitted.extend(outcome.uncommitted);
                } else {
                    assert!(outcome.uncommitted.is_empty());
                    inbox.extend(outcome.proposed);
                }
            }
            // Its pool is lost in a restart, but its blocks are not.
            if round == 2 {
                assert!(uncommitted.is_empty());
                cores[3] = open(&c, &keys, 3, Box::new(stores[3].clone()));
            }
        }
        assert!(committed > 20, "{committed}");
        assert_eq!(uncommitted, [b"pay 7".to_vec()]);

        // Submitted again, and heard this time, it is committed once.
        cores[3]
            .submit(b"pay 7".to_vec(), Placement::alone(b"pay 7"))
            .unwrap();
        let own = AuthorityIndex(3);
        let kept: Vec<VerifiedBlock> = (0..=cores[3].last_proposed().round)
            .flat_map(|r| cores[3].dag().blocks_in_slot(r, own).cloned())
            .collect();
        inbox.extend(kept);
        let mut carried = 0;
        for _ in 0..20 {
            let sent = std::mem::take(&mut inbox);
            for core in cores.iter_mut() {
                let outcome = add_or_time_out(core, sent.clone());
                assert!(outcome.uncommitted.is_empty());
                carried += outcome.committed.iter().filter(|s| carries(s)).count();
                inbox.extend(outcome.proposed);
            }
        }
        assert_eq!(carried, 4, "once on each validator");
    }

    #[test]
    fn history_withheld_from_everyone_holds_its_author_back_until_the_floor_passes_it() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let c = with_gc_depth(&c, 3);
        let params = Parameters::default();
        let mut cores = open_all(&c, &keys, &params, None);
        let mut committed = vec![Vec::new(); 4];
        let mut inbox: Vec<VerifiedBlock> = Vec::new();
        for core in &mut cores {
            inbox.extend(core.on_leader_timeout().unwrap().proposed);
        }
        // Validator 3 keeps its round-3 block to itself, and goes on.
        let withheld = |b: &VerifiedBlock| {
            b.reference().author == AuthorityIndex(3) && b.reference().round == 3
        };
        let builds_on_later_blocks_of_3 = |b: &VerifiedBlock| {
            b.block()
                .parents
                .iter()
                .any(|p| p.author == AuthorityIndex(3) && p.round > 3)
        };
        let mut built_on_again = false;
        let mut rounds_without_progress = 0;
        while committed[0].len() < 30 {
            let sent = std::mem::take(&mut inbox);
            for (i, core) in cores.iter_mut().enumerate() {
                let blocks = sent
                    .iter()
                    .filter(|b| i == 3 || !withheld(b))
                    .cloned()
                    .collect();
                let mut outcome = core.add_blocks(blocks).unwrap();
                if outcome.proposed.is_none() {
                    // Leaders are not waited for: a round goes on as soon
                    // as a quorum is in.
                    let later = core.on_leader_timeout().unwrap();
                    outcome.committed.extend(later.committed);
                    outcome.proposed = later.proposed;
                }
                if let Some(block) = &outcome.proposed
                    && i != 3
                {
                    // The withholder's later blocks wait for the withheld
                    // one until the floor passes it; then they are taken,
                    // and built on again.
                    if core.dag().retention_floor() <= 3 {
                        assert!(!builds_on_later_blocks_of_3(block), "{block:?}");
                    }
                    built_on_again |= builds_on_later_blocks_of_3(block);
                }
                inbox.extend(outcome.proposed);
                committed[i].extend(outcome.committed);
            }
            rounds_without_progress = if inbox.is_empty() {
                rounds_without_progress + 1
            } else {
                0
            };
            assert!(rounds_without_progress < 3, "the committee stalled");
        }
        assert!(
            built_on_again,
            "the withholder's later blocks were never taken"
        );
        assert!(
            committed[0]
                .iter()
                .flat_map(|s| &s.blocks)
                .any(|b| b.reference().author == AuthorityIndex(3) && b.reference().round > 3),
            "none of the withholder's later blocks was committed"
        );
        // All four commit one sequence.
        for sequence in &committed[1..] {
            let common = sequence.len().min(committed[0].len());
            assert_eq!(sequence[..common], committed[0][..common]);
        }
    }

    #[test]
    fn the_store_serves_blocks_far_below_the_dag_and_a_restart_reloads_only_the_dag() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let c = with_gc_depth(&c, 3);
        let params = Parameters {
            store_retention: 8,
            ..Parameters::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut cores = open_all(&c, &keys, &params, Some(dir.path()));
        let committed = lockstep(&mut cores, 30);
        let core = cores.remove(0);
        let (gc, floor) = (core.dag().gc_round(), core.dag().retention_floor());
        let kept = gc - 8;
        assert!(kept > 1 && kept < floor, "{kept} {floor} {gc}");
        let of_round = |round| {
            committed[0]
                .iter()
                .flat_map(|s| &s.blocks)
                .find(|b| b.reference().round == round)
                .unwrap()
        };
        drop(core);
        let store = FjallStore::open(dir.path()).unwrap();
        // The requester holds everything below the block it asks for.
        let serve = |block: &VerifiedBlock| {
            let request = FetchRequest {
                references: vec![block.reference()],
                known_rounds: vec![block.reference().round - 1; 4],
            };
            request.answer(&store, 10).unwrap()
        };
        for round in [gc, floor - 1, kept] {
            let block = of_round(round);
            assert_eq!(serve(block), [(**block).clone()], "round {round}");
        }
        assert!(serve(of_round(kept - 1)).is_empty());
        // Whole rounds from the lowest kept one on, in order.
        let rounds = RoundsRequest { from: kept - 5 }.answer(&store).unwrap();
        assert_eq!(rounds[0].reference().round, kept);
        assert!(
            rounds
                .windows(2)
                .all(|w| w[0].reference() < w[1].reference())
        );
        assert_eq!(
            rounds
                .iter()
                .filter(|b| b.reference().round == kept)
                .count(),
            4
        );

        // A restart takes back the DAG, not the whole store.
        let restarted = open(&c, &keys, 0, Box::new(store));
        let below = of_round(floor - 1).reference();
        assert!(!restarted.dag().contains(&below));
        assert!(restarted.dag().contains(&of_round(floor).reference()));
    }

    #[test]
    fn a_validator_far_behind_replays_rounds_proposes_nothing_meanwhile_and_rejoins() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let c = with_gc_depth(&c, 3);
        let params = Parameters::default();
        let stores: Vec<MemStore> = (0..4).map(|_| MemStore::new()).collect();
        let mut cores = open_on(&c, &keys, &params, &stores);
        let first = lockstep(&mut cores, 5);
        let mut reference = first[0].clone();
        let mut its_commits = first[3].clone();
        drop(cores.pop());
        // The others go on far beyond what the laggard's DAG reaches.
        for _ in 0..(4 * CATCH_UP_LAG) {
            reference.extend(lockstep(&mut cores, 1).swap_remove(0));
        }
        let mut back = open_with(&c, &keys, 3, params, Box::new(stores[3].clone()));
        let resumed_at = back.progress().next_index as usize;
        // It hears the others' latest blocks, so it knows it is behind.
        let tips: Vec<VerifiedBlock> = cores
            .iter()
            .map(|c| c.last_proposed_block().unwrap().clone())
            .collect();
        let mut outcome = back.add_blocks(tips.clone()).unwrap();
        let mut commits = std::mem::take(&mut outcome.committed);
        let mut replays = 0;
        while let Some(from) = back.catch_up_from() {
            assert!(outcome.proposed.is_none(), "proposed while behind");
            let request = RoundsRequest { from };
            let (answer, left_out) = request.select(request.answer(&stores[0]).unwrap());
            assert_eq!(left_out, 0);
            let answer = answer
                .into_iter()
                .map(|b| VerifiedBlock::verify(b, &c).unwrap())
                .collect();
            outcome = back.add_blocks(answer).unwrap();
            commits.append(&mut outcome.committed);
            replays += 1;
            assert!(replays < 100, "no progress from {from}");
        }
        assert!(replays >= 1);
        // Caught up: the same commits as everyone, then its own blocks again.
        // (It holds the others' last blocks, which they have not all
        // exchanged yet, so it may be a commit ahead.)
        let common = commits.len().min(reference.len() - resumed_at);
        assert!(common + resumed_at + 2 >= reference.len(), "{common}");
        assert_eq!(
            commits[..common],
            reference[resumed_at..resumed_at + common]
        );
        cores.push(back);
        // Round 86's leader was the laggard, absent then: the others go on
        // after their leader timeouts (which each lockstep starts with).
        let mut after = vec![Vec::new(); 4];
        for _ in 0..4 {
            for (all, new) in after.iter_mut().zip(lockstep(&mut cores, 3)) {
                all.extend(new);
            }
        }
        assert!(!after[0].is_empty() && !after[3].is_empty());
        reference.extend_from_slice(&after[0]);
        its_commits.extend(commits);
        its_commits.extend_from_slice(&after[3]);
        let common = reference.len().min(its_commits.len());
        assert_eq!(reference[..common], its_commits[..common]);
        // Its new blocks are committed by the others.
        let its_blocks = after[0]
            .iter()
            .flat_map(|s| &s.blocks)
            .filter(|b| b.reference().author == AuthorityIndex(3));
        assert!(its_blocks.count() > 2);
    }

    #[test]
    fn a_validator_beyond_its_peers_retention_resumes_from_a_checkpoint() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let c = with_gc_depth(&c, 3);
        let params = Parameters {
            store_retention: 10,
            ..Parameters::default()
        };
        let stores: Vec<MemStore> = (0..4).map(|_| MemStore::new()).collect();
        let mut cores = open_on(&c, &keys, &params, &stores);
        let mut reference = lockstep(&mut cores, 5).swap_remove(0);
        drop(cores.pop());
        for _ in 0..(4 * CATCH_UP_LAG) {
            reference.extend(lockstep(&mut cores, 1).swap_remove(0));
        }
        let tips: Vec<VerifiedBlock> = cores
            .iter()
            .map(|c| c.last_proposed_block().unwrap().clone())
            .collect();
        let replay = |core: &mut Core| {
            let request = RoundsRequest {
                from: core.catch_up_from().expect("behind"),
            };
            let (answer, _) = request.select(request.answer(&stores[0]).unwrap());
            let beyond = request.beyond_retention(&answer);
            let answer = answer
                .into_iter()
                .map(|b| VerifiedBlock::verify(b, &c).unwrap())
                .collect();
            (beyond, core.add_blocks(answer).unwrap())
        };

        // Back on its own store, it needs rounds its peers dropped.
        let mut stale = open_with(&c, &keys, 3, params.clone(), Box::new(stores[3].clone()));
        stale.add_blocks(tips.clone()).unwrap();
        let (beyond, outcome) = replay(&mut stale);
        assert!(beyond && outcome.committed.is_empty());

        // Seeded from the peers' commit log, checked against the last
        // commit's digest (what a restored state root binds), it replays
        // rounds from its floor and commits what they committed next.
        let records = stores[0].commits(0, usize::MAX).unwrap();
        let trusted = records[records.len() - 5].digest();
        let resumed_at = records.len() - 4;
        let tail = records[..resumed_at].to_vec();
        let checkpoint = Checkpoint::verify(tail, trusted, 3).unwrap();
        let own_last = stores[3].recover(3).unwrap().own_last.unwrap();
        let seeded = MemStore::new();
        checkpoint
            .seed(&mut seeded.clone(), c.digest(), Some(own_last))
            .unwrap();
        let mut back = open_with(&c, &keys, 3, params, Box::new(seeded));
        assert_eq!(back.last_proposed(), own_last);
        let mut commits = back.add_blocks(tips).unwrap().committed;
        for asked in 0.. {
            assert!(asked < 100, "no progress");
            let mut outcome = if back.catch_up_from().is_some() {
                let (beyond, outcome) = replay(&mut back);
                assert!(!beyond);
                outcome
            } else {
                // Not far behind: what its peers' blocks lack, it fetches.
                let missing = back.missing();
                if missing.is_empty() {
                    break;
                }
                let request = back.fetch_request(missing);
                let answer = request.answer(&stores[0], FETCH_LIMIT).unwrap();
                let blocks = request.select(answer).0.into_iter();
                let blocks = blocks.map(|b| VerifiedBlock::verify(b, &c).unwrap());
                back.add_blocks(blocks.collect()).unwrap()
            };
            commits.append(&mut outcome.committed);
        }
        assert_eq!(reference.len(), records.len());
        let common = commits.len().min(reference.len() - resumed_at);
        assert!(common >= 3, "{common}");
        assert_eq!(
            commits[..common],
            reference[resumed_at..resumed_at + common]
        );
    }

    #[test]
    fn a_validator_back_after_its_last_block_was_forgotten_builds_on_its_genesis_block() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let c = with_gc_depth(&c, 3);
        let params = Parameters::default();
        let stores: Vec<MemStore> = (0..4).map(|_| MemStore::new()).collect();
        let mut cores = open_on(&c, &keys, &params, &stores);
        lockstep(&mut cores, 5);
        let gone = cores.pop().unwrap();
        let last = gone.last_proposed();
        drop(gone);
        // The others go on until they forget everything before validator
        // 3's last block, which never reached them: they could not accept
        // that block any more.
        while cores[0].dag().retention_floor() < last.round {
            lockstep(&mut cores, 1);
        }
        assert!(!cores[0].dag().contains(&last));

        let mut back = open_with(&c, &keys, 3, params, Box::new(stores[3].clone()));
        let tips = cores.iter().map(|c| c.last_proposed()).collect();
        let request = back.fetch_request(tips);
        let answer = request.answer(&stores[0], 1_000).unwrap();
        let answer = answer
            .into_iter()
            .map(|b| VerifiedBlock::verify(b, &c).unwrap())
            .collect();
        let outcome = back.add_blocks(answer).unwrap();
        assert!(outcome.missing.is_empty() && !outcome.committed.is_empty());
        let block = match outcome.proposed {
            Some(block) => block,
            None => back.on_leader_timeout().unwrap().proposed.unwrap(),
        };
        for core in &mut cores {
            let outcome = core.add_blocks(vec![block.clone()]).unwrap();
            assert!(outcome.missing.is_empty(), "{:?}", outcome.missing);
            assert!(core.dag().contains(&block.reference()));
        }
        let genesis = BlockRef::genesis(AuthorityIndex(3));
        assert!(block.block().parents.contains(&genesis));
    }

    #[test]
    fn a_corrupt_store_another_committee_or_a_wrong_key_stops_the_start_with_a_reason() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let key0 = || SecretKey::from_bytes(&keys[0].to_bytes());
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        store
            .blocks
            .insert(
                BlockRef::first_of_round(3).to_key(),
                b"not a block".to_vec(),
            )
            .unwrap();
        let key = SecretKey::from_bytes(&keys[0].to_bytes());
        let error = Core::open(
            c.clone(),
            AuthorityIndex(0),
            key,
            Parameters::default(),
            Box::new(store),
        )
        .err()
        .unwrap();
        assert!(
            matches!(error, CoreError::Store(StoreError::Corrupt(ref m)) if m.contains("stored block")),
            "{error}"
        );

        // A store written under other protocol constants is refused: this
        // node would commit other sub-DAGs than its peers.
        let dir = tempfile::tempdir().unwrap();
        let store = || Box::new(FjallStore::open(dir.path()).unwrap());
        drop(
            Core::open(
                c.clone(),
                AuthorityIndex(0),
                key0(),
                Parameters::default(),
                store(),
            )
            .unwrap(),
        );
        let deeper = with_gc_depth(&c, 200);
        let error = Core::open(
            deeper,
            AuthorityIndex(0),
            key0(),
            Parameters::default(),
            store(),
        )
        .err()
        .unwrap();
        assert!(
            matches!(error, CoreError::Store(StoreError::OtherCommittee { .. })),
            "{error}"
        );
        assert!(
            Core::open(
                c.clone(),
                AuthorityIndex(0),
                key0(),
                Parameters::default(),
                store()
            )
            .is_ok()
        );

        let key = SecretKey::from_bytes(&keys[1].to_bytes());
        let error = Core::open(
            c,
            AuthorityIndex(0),
            key,
            Parameters::default(),
            Box::new(MemStore::new()),
        )
        .err()
        .unwrap();
        assert!(matches!(error, CoreError::NotThisMember(0)));
    }

    #[test]
    fn an_equivocator_gets_two_blocks_per_slot_unless_a_block_waits_for_more() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let mut core = open(&c, &keys, 0, Box::new(MemStore::new()));
        let genesis: Vec<BlockRef> = c.authorities().map(BlockRef::genesis).collect();
        let block = |author: u32, round, parents: Vec<BlockRef>, tx: u8| {
            let block = Block {
                round,
                author: AuthorityIndex(author),
                parents,
                transactions: vec![vec![tx]],
                state_root: crate::StateRoot::default(),
            };
            VerifiedBlock::verify(block.sign(&keys[author as usize], c.protocol()), &c).unwrap()
        };
        let versions: Vec<VerifiedBlock> =
            (0..4).map(|i| block(1, 1, genesis.clone(), i)).collect();
        let outcome = core.add_blocks(versions.clone()).unwrap();
        assert_eq!(outcome.dropped.len(), 2);
        let kept = core.dag().blocks_in_slot(1, AuthorityIndex(1)).count();
        assert_eq!(kept, 2);
        let refused = versions
            .iter()
            .find(|v| !core.dag().contains(&v.reference()))
            .unwrap();

        // Another validator built on a refused version: its block waits
        // for it, and then the version is taken after all.
        let (two, three) = (
            block(2, 1, genesis.clone(), 0),
            block(3, 1, genesis.clone(), 0),
        );
        core.add_blocks(vec![two.clone(), three.clone()]).unwrap();
        let mut parents = vec![two.reference(), refused.reference(), three.reference()];
        parents.sort();
        let child = block(2, 2, parents, 9);
        let outcome = core.add_blocks(vec![child.clone()]).unwrap();
        assert_eq!(outcome.missing, BTreeSet::from([refused.reference()]));
        let outcome = core.add_blocks(vec![refused.clone()]).unwrap();
        assert!(outcome.dropped.is_empty());
        assert!(core.dag().contains(&child.reference()));
        assert_eq!(core.dag().blocks_in_slot(1, AuthorityIndex(1)).count(), 3);

        // The equivocator's own blocks do not make a version needed (it
        // could make one for each), unless another author builds on them.
        let versions: Vec<VerifiedBlock> =
            (5..8).map(|i| block(1, 1, genesis.clone(), i)).collect();
        let mut parents = vec![two.reference(), versions[0].reference(), three.reference()];
        parents.sort();
        let own = block(1, 2, parents, 0);
        core.add_blocks(vec![own.clone()]).unwrap();
        let outcome = core.add_blocks(vec![versions[0].clone()]).unwrap();
        assert_eq!(outcome.dropped, [versions[0].reference()]);
        let mut parents = vec![two.reference(), refused.reference(), three.reference()];
        parents.sort();
        let third = block(3, 2, parents, 4);
        core.add_blocks(vec![third.clone()]).unwrap();
        let mut parents = vec![own.reference(), child.reference(), third.reference()];
        parents.sort();
        let grandchild = block(2, 3, parents, 2);
        core.add_blocks(vec![grandchild.clone()]).unwrap();
        core.add_blocks(vec![versions[0].clone()]).unwrap();
        assert!(core.dag().contains(&grandchild.reference()));
        // Another author's block of the same batch makes a version needed,
        // though the version comes first.
        let mut parents = vec![two.reference(), versions[1].reference(), three.reference()];
        parents.sort();
        let other_child = block(3, 2, parents, 1);
        let outcome = core
            .add_blocks(vec![versions[1].clone(), other_child.clone()])
            .unwrap();
        assert!(outcome.dropped.is_empty());
        assert!(core.dag().contains(&other_child.reference()));
    }

    #[test]
    fn one_author_s_made_up_parents_do_not_crowd_out_what_others_wait_for() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let mut core = open(&c, &keys, 0, Box::new(MemStore::new()));
        let made_up = |round: Round, author: u32, tag: u8| BlockRef {
            round,
            author: AuthorityIndex(author),
            digest: [tag; 32],
        };
        let block = |round: Round, author: u32, tag: u8| {
            let parents = (0..4).map(|a| made_up(round - 1, a, tag)).collect();
            let block = Block {
                round,
                author: AuthorityIndex(author),
                parents,
                transactions: vec![],
                state_root: crate::StateRoot::default(),
            };
            VerifiedBlock::verify(block.sign(&keys[author as usize], c.protocol()), &c).unwrap()
        };
        // Validator 1 sends two blocks a round naming 120 parents no one
        // has, all below the one block validator 2 sends (and not so far
        // ahead that validator 0 would rather catch up).
        let flood: Vec<VerifiedBlock> = (2..17)
            .flat_map(|r| [block(r, 1, 1), block(r, 1, 2)])
            .collect();
        core.add_blocks(flood).unwrap();
        core.add_blocks(vec![block(18, 2, 3)]).unwrap();
        assert!(core.catch_up_from().is_none());
        let missing = core.missing();
        assert_eq!(missing.len(), MISSING_PER_AUTHOR + 4, "{missing:?}");
        assert!((0..4).all(|a| missing.contains(&made_up(17, a, 3))));
    }

    #[test]
    fn a_leader_that_skipped_its_round_is_not_waited_for() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let mut cores = open_all(&c, &keys, &Parameters::default(), None);
        let l = leader(&c, 1).0 as usize;
        let receiver = (l + 1) % 4;
        // Everyone but the leader proposes round 1.
        let first: Vec<VerifiedBlock> = (0..4)
            .filter(|i| *i != l)
            .map(|i| cores[i].on_leader_timeout().unwrap().proposed.unwrap())
            .collect();
        let outcome = cores[receiver].add_blocks(first.clone()).unwrap();
        assert_eq!(outcome.quorum_round, Some(1));
        assert!(outcome.proposed.is_none(), "the leader is waited for");
        // The leader gets there late, and goes straight to round 2.
        let skipped = cores[l].add_blocks(first).unwrap().proposed.unwrap();
        assert_eq!(skipped.reference().round, 2);
        let outcome = cores[receiver].add_blocks(vec![skipped]).unwrap();
        let proposed = outcome.proposed.expect("no wait for a round-1 block");
        assert_eq!(proposed.reference().round, 2);
    }

    #[test]
    fn a_leader_held_past_its_own_round_does_not_wait_for_itself() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let mut cores = open_all(&c, &keys, &Parameters::default(), None);
        let l = leader(&c, 2).0 as usize;
        let first: Vec<VerifiedBlock> = cores
            .iter_mut()
            .map(|core| core.on_leader_timeout().unwrap().proposed.unwrap())
            .collect();
        // The leader of round 2 holds its proposals (its minimum round
        // delay) while the others reach round 2.
        cores[l].hold_proposals();
        let second: Vec<VerifiedBlock> = (0..4)
            .filter(|i| *i != l)
            .map(|i| {
                cores[i]
                    .add_blocks(first.clone())
                    .unwrap()
                    .proposed
                    .unwrap()
            })
            .collect();
        assert!(cores[l].add_blocks(first).unwrap().proposed.is_none());
        assert!(cores[l].add_blocks(second).unwrap().proposed.is_none());
        let released = cores[l].release_proposals().unwrap();
        let proposed = released
            .proposed
            .expect("no wait for its own round-2 block");
        assert_eq!(proposed.reference().round, 3);
    }

    #[test]
    fn the_quorum_round_is_reported_when_it_rises_so_the_leader_wait_starts_there() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let mut cores = open_all(&c, &keys, &Parameters::default(), None);
        let first: Vec<VerifiedBlock> = cores
            .iter_mut()
            .map(|core| core.on_leader_timeout().unwrap().proposed.unwrap())
            .collect();
        // Round 1's leader is not among the first three blocks validator 0
        // gets: the round has a quorum, but it waits for the leader.
        let leader = leader(&c, 1);
        let others: Vec<VerifiedBlock> = first
            .iter()
            .filter(|b| b.reference().author != leader)
            .take(3)
            .cloned()
            .collect();
        let receiver = if leader == AuthorityIndex(0) { 1 } else { 0 };
        let outcome = cores[receiver].add_blocks(others).unwrap();
        assert_eq!(outcome.quorum_round, Some(1));
        assert!(outcome.proposed.is_none(), "the leader is waited for");
        // Nothing new: no restart of the wait. Held proposals wait for
        // their release.
        cores[receiver].hold_proposals();
        let outcome = cores[receiver].add_blocks(first.clone()).unwrap();
        assert_eq!(outcome.quorum_round, None);
        assert!(outcome.proposed.is_none(), "held");
        let outcome = cores[receiver].release_proposals().unwrap();
        assert!(outcome.proposed.is_some(), "the leader came");
    }

    #[test]
    fn transactions_and_suspended_blocks_are_bounded() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let key = SecretKey::from_bytes(&keys[0].to_bytes());
        let params = Parameters {
            max_pending_transaction_bytes: 2 * MIN_TRANSACTION_COST,
            // Three of the blocks below.
            max_suspended_bytes_per_author: 3 * 246,
            ..Parameters::default()
        };
        let mut core = Core::open(
            c.clone(),
            AuthorityIndex(0),
            key,
            params,
            Box::new(MemStore::new()),
        )
        .unwrap();
        assert_eq!(
            core.submit(vec![0; MAX_TRANSACTION_BYTES + 1], Placement::alone(b"")),
            Err(SubmitError::TooLarge(MAX_TRANSACTION_BYTES + 1))
        );
        core.submit(vec![1], Placement::alone(&[1])).unwrap();
        core.submit(vec![2], Placement::alone(&[2])).unwrap();
        assert_eq!(
            core.submit(vec![], Placement::alone(&[])),
            Err(SubmitError::Full(2 * MIN_TRANSACTION_COST))
        );

        // Validator 1 sends blocks whose parents no one has.
        let unknown = |round| BlockRef {
            round,
            author: AuthorityIndex(2),
            digest: [9; 32],
        };
        let orphan = |round: Round, i: u8| {
            let mut parents = vec![
                BlockRef {
                    round: round - 1,
                    author: AuthorityIndex(0),
                    digest: [i; 32],
                },
                BlockRef {
                    round: round - 1,
                    author: AuthorityIndex(1),
                    digest: [i; 32],
                },
                unknown(round - 1),
            ];
            parents.sort();
            let block = Block {
                round,
                author: AuthorityIndex(1),
                parents,
                transactions: vec![],
                state_root: crate::StateRoot::default(),
            };
            VerifiedBlock::verify(block.sign(&keys[1], c.protocol()), &c).unwrap()
        };
        assert_eq!(orphan(6, 0).wire_size(), 246);
        let outcome = core
            .add_blocks((0..5).map(|i| orphan(6, i)).collect())
            .unwrap();
        assert_eq!(outcome.dropped.len(), 2);
        assert_eq!(core.suspended(), 3);
        assert!(outcome.missing.contains(&unknown(5)));
        assert_eq!(outcome.missing.len(), 7, "{:?}", outcome.missing);
        assert!(outcome.committed.is_empty());

        // A lower block still gets in: the author's highest one goes.
        let lower = orphan(5, 9);
        let outcome = core.add_blocks(vec![lower.clone()]).unwrap();
        assert_eq!((outcome.dropped.len(), core.suspended()), (1, 3));
        assert!(core.blocks.is_suspended(&lower.reference()));
    }
}
