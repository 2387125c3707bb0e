//! Turns each committed leader into the ordered list of blocks it commits.

use crate::block::{BlockRef, Round, VerifiedBlock};
use crate::dag_state::DagState;
use std::collections::BTreeSet;

/// The blocks one committed leader commits, in the order their transactions
/// are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedSubDag {
    /// The committed leader.
    pub leader: BlockRef,
    /// Its causal history not committed before and not below the
    /// garbage-collection round, sorted by (round, author, digest); the
    /// leader comes last.
    pub blocks: Vec<VerifiedBlock>,
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
}

impl Linearizer {
    /// A linearizer that remembers `committed` blocks as committed and
    /// commits nothing below `gc_round`.
    pub fn new(committed: impl IntoIterator<Item = BlockRef>, gc_round: Round) -> Self {
        Linearizer {
            committed: committed.into_iter().collect(),
            gc_round,
        }
    }

    /// Commits `leader` and every block of its causal history not committed
    /// yet. Every honest validator calls this with the same leaders in the
    /// same order, so all get the same sequence.
    pub fn linearize(&mut self, dag: &DagState, leader: BlockRef) -> CommittedSubDag {
        let mut collected = Vec::new();
        let mut stack = vec![leader];
        while let Some(reference) = stack.pop() {
            if reference.round < self.gc_round || !self.committed.insert(reference) {
                continue;
            }
            // Blocks reach the DAG only with all their ancestors, so a
            // committed leader's history is there down to the
            // garbage-collection round (genesis blocks have no content).
            if let Some(block) = dag.get(&reference) {
                stack.extend(block.block().parents.iter().copied());
                collected.push(block.clone());
            }
        }
        collected.sort_by_key(|b| b.reference());
        CommittedSubDag {
            leader,
            blocks: collected,
        }
    }

    /// Stops committing blocks below `round` and forgets them.
    pub fn garbage_collect(&mut self, round: Round) {
        if round > self.gc_round {
            self.gc_round = round;
            self.committed = self.committed.split_off(&BlockRef::first_of_round(round));
        }
    }
}
