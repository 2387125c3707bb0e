//! Turns each committed leader into the ordered list of blocks it commits.

use crate::block::{BlockRef, SignedBlock};
use crate::dag_state::DagState;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The blocks one committed leader commits, in the order their transactions
/// are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedSubDag {
    /// The committed leader.
    pub leader: BlockRef,
    /// Its causal history not committed before, sorted by (round, author,
    /// digest); the leader comes last.
    pub blocks: Vec<Arc<SignedBlock>>,
}

/// Remembers what was committed, so each block is committed exactly once.
#[derive(Debug, Default)]
pub struct Linearizer {
    committed: BTreeSet<BlockRef>,
}

impl Linearizer {
    /// A linearizer that has committed nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Commits `leader` and every block of its causal history not committed
    /// yet. Every honest validator calls this with the same leaders in the
    /// same order, so all get the same sequence.
    pub fn linearize(&mut self, dag: &DagState, leader: BlockRef) -> CommittedSubDag {
        let mut collected = Vec::new();
        let mut stack = vec![leader];
        while let Some(reference) = stack.pop() {
            if !self.committed.insert(reference) {
                continue;
            }
            // Blocks reach the DAG only with all their ancestors, so a
            // committed leader's history is always there.
            if let Some(block) = dag.get(&reference) {
                stack.extend(
                    block
                        .block()
                        .parents
                        .iter()
                        .filter(|p| !self.committed.contains(p)),
                );
                collected.push(block.clone());
            }
        }
        collected.sort_by_key(|b| b.reference());
        CommittedSubDag {
            leader,
            blocks: collected,
        }
    }
}
