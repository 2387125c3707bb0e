//! What a validator keeps on disk so that a restart never makes it sign two
//! blocks for one round: its own blocks (written durably before they are
//! sent), the blocks it accepted, kept far below the DAG's retention floor
//! so that validators that fell behind can replay them (see
//! [`Parameters::store_retention`]), and every commit (the ordered history
//! that execution replays).
//!
//! [`Parameters::store_retention`]: crate::Parameters::store_retention
//!
//! Two implementations: [`FjallStore`] for nodes and [`MemStore`] for the
//! simulation, where a "crash" keeps exactly what was written.

use crate::block::{BlockRef, Round, SignedBlock};
use crate::committee::AuthorityIndex;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Why the store failed. Any of these stops the validator: carrying on
/// could mean forgetting a block it signed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed.
    #[error("consensus store: {0}")]
    Engine(#[from] fjall::Error),
    /// Stored bytes do not decode.
    #[error("consensus store is corrupt: {0}")]
    Corrupt(String),
    /// The store was written for another chain, epoch, committee or
    /// protocol constants.
    #[error(
        "the consensus store belongs to committee {} but this node runs committee {}: \
         use the store of this chain, or a new directory",
        hex::encode(&stored[..8]),
        hex::encode(&running[..8])
    )]
    OtherCommittee {
        /// The committee digest the store was written under.
        stored: [u8; 32],
        /// The committee digest of this run.
        running: [u8; 32],
    },
    /// The store was laid out by another version of the node.
    #[error(
        "the consensus store is in format {found}, but this version of soma reads format \
         {FORMAT}: run a version that reads format {found} (the store records which blocks this \
         validator signed; do not delete it)"
    )]
    Format {
        /// The format recorded in the store.
        found: u32,
    },
}

/// One committed sub-DAG as stored: enough to rebuild the linearizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    /// Position in the committed sequence, from 0.
    pub index: u64,
    /// The committed leader.
    pub leader: BlockRef,
    /// Every block it committed, leader last.
    pub blocks: Vec<BlockRef>,
    /// The digest of the commit before it.
    pub previous: [u8; 32],
}

impl CommitRecord {
    /// The commit's digest, as [`CommittedSubDag::digest`](crate::CommittedSubDag::digest).
    pub fn digest(&self) -> [u8; 32] {
        crate::linearizer::commit_digest(
            &self.previous,
            self.index,
            &self.leader,
            self.blocks.iter().copied(),
        )
    }
}

/// Where the commit rule stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitProgress {
    /// Every leader up to this round is decided.
    pub last_decided: Round,
    /// Round of the last committed leader (0 before any).
    pub last_committed: Round,
    /// Index the next commit gets.
    pub next_index: u64,
}

/// Writes applied together, atomically.
#[derive(Debug, Default)]
pub struct StoreBatch {
    /// Newly accepted blocks (wire bytes are stored).
    pub blocks: Vec<SignedBlock>,
    /// New commits, in order.
    pub commits: Vec<CommitRecord>,
    /// The commit rule's progress after them.
    pub progress: Option<CommitProgress>,
    /// Drop blocks below this round.
    pub drop_below: Option<Round>,
    /// This validator's last block, recorded without the block (a store
    /// seeded from a [`Checkpoint`](crate::Checkpoint)).
    pub own_last: Option<BlockRef>,
}

/// Everything a validator reloads at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Stored blocks from the DAG's retention floor up, sorted by reference.
    pub blocks: Vec<SignedBlock>,
    /// The stored commits whose leaders are not garbage-collected, in
    /// order.
    pub commits: Vec<CommitRecord>,
    /// Where the commit rule stood.
    pub progress: CommitProgress,
    /// The validator's own last block, kept even after it is collected.
    pub own_last: Option<BlockRef>,
}

/// Durable consensus state.
pub trait Store: Send {
    /// Ties the store to `committee` (a [`Committee::digest`]): the first
    /// call records it, later ones refuse any other.
    ///
    /// [`Committee::digest`]: crate::Committee::digest
    fn bind(&mut self, committee: [u8; 32]) -> Result<(), StoreError>;

    /// Writes the validator's own new block and returns only once it is
    /// durable: the block may be sent after this.
    fn write_own(&mut self, block: &SignedBlock) -> Result<(), StoreError>;

    /// Writes `batch` atomically; it may become durable later.
    fn write(&mut self, batch: StoreBatch) -> Result<(), StoreError>;

    /// The stored block `reference`, if it is still kept.
    fn block(&self, reference: &BlockRef) -> Result<Option<SignedBlock>, StoreError>;

    /// Stored blocks of whole rounds from `from` up, lowest first: the
    /// first two rounds (those stored; cut at `hard_max_bytes`), then more
    /// while their total wire size stays within `max_bytes`.
    fn rounds_from(
        &self,
        from: Round,
        max_bytes: usize,
        hard_max_bytes: usize,
    ) -> Result<Vec<SignedBlock>, StoreError>;

    /// Reads back what a restart needs: the blocks from the DAG's
    /// retention floor up and the commits of leaders within `gc_depth`
    /// rounds of the last one.
    fn recover(&self, gc_depth: Round) -> Result<Recovered, StoreError>;

    /// Up to `limit` commits from index `from` on.
    fn commits(&self, from: u64, limit: usize) -> Result<Vec<CommitRecord>, StoreError>;
}

/// Collects whole rounds from `blocks` (sorted by reference) while they
/// fit in `max_bytes`; the first two rounds always, up to
/// `hard_max_bytes`. A validator catching up asks from its quorum round,
/// which it holds: the round after it must come in every answer, or rounds
/// larger than `max_bytes` would leave it asking for the same round for
/// ever.
fn whole_rounds(
    blocks: impl Iterator<Item = Result<SignedBlock, StoreError>>,
    max_bytes: usize,
    hard_max_bytes: usize,
) -> Result<Vec<SignedBlock>, StoreError> {
    let mut taken: Vec<SignedBlock> = Vec::new();
    let mut bytes = 0;
    // Where the round being collected starts in `taken`, and how many
    // rounds came before it.
    let mut round_start = 0;
    let mut rounds_before = 0;
    for block in blocks {
        let block = block?;
        if taken
            .last()
            .is_some_and(|last| last.reference().round != block.reference().round)
        {
            round_start = taken.len();
            rounds_before += 1;
        }
        bytes += block.wire_size();
        if bytes > max_bytes && rounds_before >= 2 {
            // This round does not fit whole: it is left for the next request.
            taken.truncate(round_start);
            break;
        }
        if bytes > hard_max_bytes {
            break;
        }
        taken.push(block);
    }
    Ok(taken)
}

/// A store in memory whose clones share contents: a simulated validator
/// that crashes restarts from the clone, with exactly what was written.
#[derive(Debug, Clone, Default)]
pub struct MemStore(Arc<Mutex<MemContents>>);

#[derive(Debug, Default)]
struct MemContents {
    committee: Option<[u8; 32]>,
    blocks: BTreeMap<BlockRef, SignedBlock>,
    commits: BTreeMap<u64, CommitRecord>,
    progress: CommitProgress,
    own_last: Option<BlockRef>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn contents(&self) -> std::sync::MutexGuard<'_, MemContents> {
        // A panic elsewhere cannot leave the maps half-updated: every write
        // below is a plain insert or split.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemStore {
    fn bind(&mut self, committee: [u8; 32]) -> Result<(), StoreError> {
        let stored = *self.contents().committee.get_or_insert(committee);
        check_committee(stored, committee)
    }

    fn write_own(&mut self, block: &SignedBlock) -> Result<(), StoreError> {
        let mut contents = self.contents();
        contents.blocks.insert(block.reference(), block.clone());
        contents.own_last = Some(block.reference());
        Ok(())
    }

    fn write(&mut self, batch: StoreBatch) -> Result<(), StoreError> {
        let mut contents = self.contents();
        for block in batch.blocks {
            contents.blocks.insert(block.reference(), block);
        }
        for commit in batch.commits {
            contents.commits.insert(commit.index, commit);
        }
        if let Some(progress) = batch.progress {
            contents.progress = progress;
        }
        if let Some(own) = batch.own_last {
            contents.own_last = Some(own);
        }
        if let Some(round) = batch.drop_below {
            contents.blocks = contents.blocks.split_off(&BlockRef::first_of_round(round));
        }
        Ok(())
    }

    fn block(&self, reference: &BlockRef) -> Result<Option<SignedBlock>, StoreError> {
        Ok(self.contents().blocks.get(reference).cloned())
    }

    fn rounds_from(
        &self,
        from: Round,
        max_bytes: usize,
        hard_max_bytes: usize,
    ) -> Result<Vec<SignedBlock>, StoreError> {
        let contents = self.contents();
        let blocks = contents
            .blocks
            .range(BlockRef::first_of_round(from)..)
            .map(|(_, b)| Ok(b.clone()));
        whole_rounds(blocks, max_bytes, hard_max_bytes)
    }

    fn recover(&self, gc_depth: Round) -> Result<Recovered, StoreError> {
        let contents = self.contents();
        let gc = gc_round(contents.progress.last_committed, gc_depth);
        let floor = BlockRef::first_of_round(gc.saturating_sub(gc_depth));
        let mut commits: Vec<CommitRecord> = contents
            .commits
            .values()
            .rev()
            .take_while(|c| c.leader.round >= gc)
            .cloned()
            .collect();
        commits.reverse();
        Ok(Recovered {
            blocks: contents
                .blocks
                .range(floor..)
                .map(|(_, b)| b.clone())
                .collect(),
            commits,
            progress: contents.progress,
            own_last: contents.own_last,
        })
    }

    fn commits(&self, from: u64, limit: usize) -> Result<Vec<CommitRecord>, StoreError> {
        let contents = self.contents();
        Ok(contents
            .commits
            .range(from..)
            .take(limit)
            .map(|(_, c)| c.clone())
            .collect())
    }
}

/// The store of a validator node, in a fjall database. Clones share it.
#[derive(Clone)]
pub struct FjallStore {
    db: fjall::Database,
    pub(crate) blocks: fjall::Keyspace,
    commits: fjall::Keyspace,
    meta: fjall::Keyspace,
}

const COMMITTEE: &[u8] = b"committee";
const FORMAT_KEY: &[u8] = b"format";

/// The layout of what [`FjallStore`] writes (keys, block and commit record
/// encodings): a store of another layout is refused, never misread.
const FORMAT: u32 = 1;

/// The layout of stores written before formats were recorded.
const UNRECORDED_FORMAT: u32 = 1;
const OWN_LAST: &[u8] = b"own-last";
const PROGRESS: &[u8] = b"progress";

impl FjallStore {
    /// Opens (or creates) the store in directory `path`.
    /// Refuses one of another format. A store that records a committee
    /// but no format was written before formats were recorded, in the
    /// layout of the first: it is marked so.
    pub fn open(path: &Path) -> Result<FjallStore, StoreError> {
        let db = fjall::Database::builder(path).open()?;
        let options = fjall::KeyspaceCreateOptions::default;
        let store = FjallStore {
            blocks: db.keyspace("blocks", options)?,
            commits: db.keyspace("commits", options)?,
            meta: db.keyspace("meta", options)?,
            db,
        };
        match store.meta.get(FORMAT_KEY)? {
            Some(found) => {
                let found = <[u8; 4]>::try_from(&found[..])
                    .map_err(|_| StoreError::Corrupt("the format is not 4 bytes".into()))?;
                let found = u32::from_be_bytes(found);
                if found != FORMAT {
                    return Err(StoreError::Format { found });
                }
            }
            None if store.meta.get(COMMITTEE)?.is_some() => {
                store
                    .meta
                    .insert(FORMAT_KEY, UNRECORDED_FORMAT.to_be_bytes())?;
            }
            None => {}
        }
        Ok(store)
    }
}

impl Store for FjallStore {
    fn bind(&mut self, committee: [u8; 32]) -> Result<(), StoreError> {
        let Some(stored) = self.meta.get(COMMITTEE)? else {
            let mut batch = self
                .db
                .batch()
                .durability(Some(fjall::PersistMode::SyncAll));
            batch.insert(&self.meta, COMMITTEE, committee);
            batch.insert(&self.meta, FORMAT_KEY, FORMAT.to_be_bytes());
            batch.commit()?;
            return Ok(());
        };
        let stored = stored[..]
            .try_into()
            .map_err(|_| StoreError::Corrupt("the committee digest is not 32 bytes".into()))?;
        check_committee(stored, committee)
    }

    fn write_own(&mut self, block: &SignedBlock) -> Result<(), StoreError> {
        let mut batch = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncAll));
        let reference = block.reference();
        batch.insert(&self.blocks, reference.to_key(), block.to_bytes());
        batch.insert(&self.meta, OWN_LAST, reference.to_key());
        batch.commit()?;
        Ok(())
    }

    fn write(&mut self, batch: StoreBatch) -> Result<(), StoreError> {
        let mut write = self.db.batch();
        for block in &batch.blocks {
            write.insert(&self.blocks, block.reference().to_key(), block.to_bytes());
        }
        for commit in &batch.commits {
            write.insert(
                &self.commits,
                commit.index.to_be_bytes(),
                encode_commit(commit),
            );
        }
        if let Some(progress) = batch.progress {
            write.insert(&self.meta, PROGRESS, encode_progress(&progress));
        }
        if let Some(own) = batch.own_last {
            write.insert(&self.meta, OWN_LAST, own.to_key());
        }
        if let Some(round) = batch.drop_below {
            for entry in self
                .blocks
                .range(..BlockRef::first_of_round(round).to_key())
            {
                write.remove(&self.blocks, entry.key()?);
            }
        }
        write.commit()?;
        Ok(())
    }

    fn block(&self, reference: &BlockRef) -> Result<Option<SignedBlock>, StoreError> {
        let key = reference.to_key();
        let Some(bytes) = self.blocks.get(key)? else {
            return Ok(None);
        };
        decode_block(&key, &bytes).map(Some)
    }

    fn rounds_from(
        &self,
        from: Round,
        max_bytes: usize,
        hard_max_bytes: usize,
    ) -> Result<Vec<SignedBlock>, StoreError> {
        let blocks = self
            .blocks
            .range(BlockRef::first_of_round(from).to_key()..)
            .map(|entry| {
                let (key, value) = entry.into_inner()?;
                decode_block(&key, &value)
            });
        whole_rounds(blocks, max_bytes, hard_max_bytes)
    }

    fn recover(&self, gc_depth: Round) -> Result<Recovered, StoreError> {
        let mut recovered = Recovered::default();
        if let Some(bytes) = self.meta.get(PROGRESS)? {
            recovered.progress = decode_progress(&bytes)?;
        }
        let gc = gc_round(recovered.progress.last_committed, gc_depth);
        // Older blocks are kept only to be served to peers that lag.
        let floor = BlockRef::first_of_round(gc.saturating_sub(gc_depth));
        for entry in self.blocks.range(floor.to_key()..) {
            let (key, value) = entry.into_inner()?;
            recovered.blocks.push(decode_block(&key, &value)?);
        }
        for entry in self.commits.iter().rev() {
            let (key, value) = entry.into_inner()?;
            let commit = decode_commit(&key, &value)?;
            if commit.leader.round < gc {
                break;
            }
            recovered.commits.push(commit);
        }
        recovered.commits.reverse();
        if let Some(bytes) = self.meta.get(OWN_LAST)? {
            recovered.own_last = Some(decode_ref(&bytes)?);
        }
        Ok(recovered)
    }

    fn commits(&self, from: u64, limit: usize) -> Result<Vec<CommitRecord>, StoreError> {
        let mut commits = Vec::new();
        for entry in self.commits.range(from.to_be_bytes()..).take(limit) {
            let (key, value) = entry.into_inner()?;
            commits.push(decode_commit(&key, &value)?);
        }
        Ok(commits)
    }
}

fn check_committee(stored: [u8; 32], running: [u8; 32]) -> Result<(), StoreError> {
    if stored == running {
        Ok(())
    } else {
        Err(StoreError::OtherCommittee { stored, running })
    }
}

/// The garbage-collection round after a leader of `last_committed`: blocks
/// below it are dropped.
pub(crate) fn gc_round(last_committed: Round, depth: Round) -> Round {
    last_committed.saturating_sub(depth)
}

/// A block as stored under `key`, checked to be the block of that key.
fn decode_block(key: &[u8], value: &[u8]) -> Result<SignedBlock, StoreError> {
    let block = SignedBlock::decode(value)
        .map_err(|e| StoreError::Corrupt(format!("stored block: {e}")))?;
    if block.reference().to_key()[..] != key[..] {
        return Err(StoreError::Corrupt(format!(
            "block {:?} is stored under another key",
            block.reference()
        )));
    }
    Ok(block)
}

fn decode_ref(bytes: &[u8]) -> Result<BlockRef, StoreError> {
    let bytes: &[u8; 40] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("a reference of {} bytes", bytes.len())))?;
    let (round, rest) = bytes.split_at(4);
    let (author, digest) = rest.split_at(4);
    Ok(BlockRef {
        round: u32::from_be_bytes(round.try_into().expect("4 bytes")),
        author: AuthorityIndex(u32::from_be_bytes(author.try_into().expect("4 bytes"))),
        digest: digest.try_into().expect("32 bytes"),
    })
}

fn encode_commit(commit: &CommitRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 40 * (commit.blocks.len() + 1));
    out.extend_from_slice(&commit.previous);
    out.extend_from_slice(&commit.leader.to_key());
    for block in &commit.blocks {
        out.extend_from_slice(&block.to_key());
    }
    out
}

fn decode_commit(key: &[u8], value: &[u8]) -> Result<CommitRecord, StoreError> {
    let index = u64::from_be_bytes(
        key.try_into()
            .map_err(|_| StoreError::Corrupt("a commit key is not 8 bytes".into()))?,
    );
    if value.len() < 32 + 40 || !(value.len() - 32).is_multiple_of(40) {
        return Err(StoreError::Corrupt(format!(
            "commit {index} has {} bytes",
            value.len()
        )));
    }
    let (previous, refs) = value.split_at(32);
    let mut refs = refs.chunks(40).map(decode_ref);
    let leader = refs.next().expect("non-empty")?;
    Ok(CommitRecord {
        index,
        leader,
        blocks: refs.collect::<Result<_, _>>()?,
        previous: previous.try_into().expect("32 bytes"),
    })
}

fn encode_progress(progress: &CommitProgress) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&progress.last_decided.to_be_bytes());
    out[4..8].copy_from_slice(&progress.last_committed.to_be_bytes());
    out[8..].copy_from_slice(&progress.next_index.to_be_bytes());
    out
}

fn decode_progress(bytes: &[u8]) -> Result<CommitProgress, StoreError> {
    let bytes: &[u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("commit progress is not 16 bytes".into()))?;
    Ok(CommitProgress {
        last_decided: u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")),
        last_committed: u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")),
        next_index: u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Block;
    use crate::committee::AuthorityIndex;
    use crate::committee::tests::{committee, protocol};

    /// Blocks of rounds 1 to `rounds` by 4 authors, each carrying `size`
    /// bytes of transactions, sorted by reference.
    fn rounds(rounds: u32, size: usize) -> Vec<SignedBlock> {
        let (_, keys) = committee(&[1, 1, 1, 1]);
        let mut blocks: Vec<SignedBlock> = (1..=rounds)
            .flat_map(|round| {
                keys.iter().enumerate().map(move |(author, key)| {
                    Block {
                        round,
                        author: AuthorityIndex(author as u32),
                        parents: vec![],
                        transactions: vec![vec![round as u8; size]],
                        state_root: crate::StateRoot::default(),
                    }
                    .sign(key, &protocol())
                })
            })
            .collect();
        blocks.sort_by_key(|b| b.reference());
        blocks
    }

    #[test]
    fn a_store_of_another_format_or_committee_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let open = || FjallStore::open(dir.path());
        let mut store = open().unwrap();
        store.bind([1; 32]).unwrap();
        let e = store.bind([2; 32]).unwrap_err();
        assert!(matches!(e, StoreError::OtherCommittee { .. }), "{e}");
        // Written before formats were recorded: the first format.
        store.meta.remove(FORMAT_KEY).unwrap();
        drop(store);
        let store = open().unwrap();
        assert_eq!(
            store.meta.get(FORMAT_KEY).unwrap().as_deref(),
            Some(&UNRECORDED_FORMAT.to_be_bytes()[..])
        );
        store
            .meta
            .insert(FORMAT_KEY, (FORMAT + 1).to_be_bytes())
            .unwrap();
        drop(store);
        let e = open().err().unwrap();
        assert!(
            matches!(e, StoreError::Format { found } if found == FORMAT + 1)
                && e.to_string().contains("do not delete it"),
            "{e}"
        );
    }

    #[test]
    fn an_answer_carries_two_whole_rounds_however_large_then_what_fits() {
        let blocks = rounds(4, 1000);
        let take = |max, hard| {
            let taken = whole_rounds(blocks.iter().cloned().map(Ok), max, hard).unwrap();
            let rounds: std::collections::BTreeSet<_> =
                taken.iter().map(|b| b.reference().round).collect();
            (taken.len(), rounds.into_iter().collect::<Vec<_>>())
        };
        // Rounds far over the soft limit: still the first two, whole (one
        // round would be the round the asker already holds).
        assert_eq!(take(100, usize::MAX), (8, vec![1, 2]));
        // Room for three rounds: three, never part of the fourth.
        let round = blocks[..4]
            .iter()
            .map(SignedBlock::wire_size)
            .sum::<usize>();
        assert_eq!(take(3 * round + round / 2, usize::MAX), (12, vec![1, 2, 3]));
        // The hard limit cuts even the first rounds.
        assert_eq!(take(100, round + round / 2).0, 6, "a round and a half");
    }
}
