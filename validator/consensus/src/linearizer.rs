//! Turns each committed leader into the ordered list of blocks it commits.

use crate::block::{BlockRef, Round, VerifiedBlock};
use crate::committee::AuthorityIndex;
use crate::dag_state::DagState;
use std::collections::BTreeSet;

/// The blocks one committed leader commits, in the order their transactions
/// are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedSubDag {
    /// Its position in the committed sequence, from 0.
    pub index: u64,
    /// The committed leader.
    pub leader: BlockRef,
    /// Its causal history not committed before and not below the
    /// garbage-collection round, sorted by (round, author, digest); the
    /// leader comes last.
    pub blocks: Vec<VerifiedBlock>,
    /// The digest of the commit before it ([`NO_COMMIT`] for the first):
    /// each digest covers the whole sequence up to its commit.
    pub previous: [u8; 32],
}

impl CommittedSubDag {
    /// The commit's digest: what execution binds its effects to, the same
    /// on every validator that commits the same sequence.
    pub fn digest(&self) -> [u8; 32] {
        commit_digest(
            &self.previous,
            self.index,
            &self.leader,
            self.blocks.iter().map(|b| b.reference()),
        )
    }

    /// The committed transactions, each with the author of its block, in
    /// the order they apply: block by block, each block's in its own order.
    pub fn transactions(&self) -> impl Iterator<Item = (AuthorityIndex, &[u8])> {
        self.blocks.iter().flat_map(|b| {
            let author = b.reference().author;
            b.block()
                .transactions
                .iter()
                .map(move |t| (author, t.as_slice()))
        })
    }
}

/// What the first commit names as the commit before it.
pub const NO_COMMIT: [u8; 32] = [0; 32];

/// The digest of commit `index` of `leader` with `blocks` (in commit
/// order), after the commit of digest `previous`. The chain lets a
/// validator that trusts one commit's digest (a state root a quorum
/// vouches for binds it) check every commit before it.
pub(crate) fn commit_digest(
    previous: &[u8; 32],
    index: u64,
    leader: &BlockRef,
    blocks: impl Iterator<Item = BlockRef>,
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("soma/commit/v2");
    hasher.update(previous);
    hasher.update(&index.to_be_bytes());
    hasher.update(&leader.to_key());
    for block in blocks {
        hasher.update(&block.to_key());
    }
    *hasher.finalize().as_bytes()
}

/// Remembers what was committed, so each block is committed exactly once.
///
/// Blocks below the garbage-collection round are never committed. That
/// round is a function of the committed sequence, so every honest
/// validator leaves out the same blocks.
#[derive(Debug, Default)]
pub struct Linearizer {
    committed: BTreeSet<BlockRef>,
    gc_round: Round,
    last_digest: [u8; 32],
}

impl Linearizer {
    /// A linearizer that remembers `committed` blocks as committed,
    /// commits nothing below `gc_round`, and chains its first commit to
    /// the commit of digest `last_digest` ([`NO_COMMIT`] at genesis).
    pub fn new(
        committed: impl IntoIterator<Item = BlockRef>,
        gc_round: Round,
        last_digest: [u8; 32],
    ) -> Self {
        Linearizer {
            committed: committed.into_iter().collect(),
            gc_round,
            last_digest,
        }
    }

    /// Commits `leader` and every block of its causal history not committed
    /// yet. Every honest validator calls this with the same leaders in the
    /// same order, so all get the same sequence; `index` is the commit's
    /// position in it.
    pub fn linearize(&mut self, dag: &DagState, leader: BlockRef, index: u64) -> CommittedSubDag {
        let mut collected = Vec::new();
        let mut stack = vec![leader];
        while let Some(reference) = stack.pop() {
            if reference.round < self.gc_round || !self.committed.insert(reference) {
                continue;
            }
            // Blocks reach the DAG only with all their ancestors down to
            // the retention floor, below the garbage-collection round, so
            // a committed leader's history is there down to that round
            // (genesis blocks have no content).
            if let Some(block) = dag.get(&reference) {
                stack.extend(block.block().parents.iter().copied());
                collected.push(block.clone());
            }
        }
        collected.sort_by_key(|b| b.reference());
        let subdag = CommittedSubDag {
            index,
            leader,
            blocks: collected,
            previous: self.last_digest,
        };
        self.last_digest = subdag.digest();
        subdag
    }

    /// Whether `block` (at or above the garbage-collection round) was
    /// committed.
    pub fn is_committed(&self, block: &BlockRef) -> bool {
        self.committed.contains(block)
    }

    /// Stops committing blocks below `round` and forgets them.
    pub fn garbage_collect(&mut self, round: Round) {
        if round > self.gc_round {
            self.gc_round = round;
            self.committed = self.committed.split_off(&BlockRef::first_of_round(round));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{Block, StateRoot};
    use crate::committee::tests::committee;

    #[test]
    fn each_committed_transaction_comes_with_the_author_of_its_block() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let block = |author: u32, transactions: &[&[u8]]| {
            let block = Block {
                round: 1,
                author: AuthorityIndex(author),
                parents: (0..4)
                    .map(|a| BlockRef::genesis(AuthorityIndex(a)))
                    .collect(),
                transactions: transactions.iter().map(|t| t.to_vec()).collect(),
                state_root: StateRoot::default(),
            };
            VerifiedBlock::sign_own(block, &keys[author as usize], &c)
        };
        let blocks = vec![block(2, &[b"a", b"b"]), block(0, &[]), block(1, &[b"c"])];
        let subdag = CommittedSubDag {
            index: 0,
            leader: blocks[2].reference(),
            blocks,
            previous: NO_COMMIT,
        };
        let pairs: Vec<(AuthorityIndex, &[u8])> = subdag.transactions().collect();
        assert_eq!(
            pairs,
            [
                (AuthorityIndex(2), &b"a"[..]),
                (AuthorityIndex(2), &b"b"[..]),
                (AuthorityIndex(1), &b"c"[..]),
            ]
        );
    }
}
