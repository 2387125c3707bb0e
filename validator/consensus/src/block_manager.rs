//! Between the network and the [`DagState`]: which verified blocks enter
//! the DAG now, which wait for their parents, which are refused, and which
//! parents to ask peers for.

use crate::block::{BlockRef, Round, VerifiedBlock};
use crate::dag_state::{Acceptance, DagState};
use crate::suspended::{SuspendedBlocks, WAITERS_LOOKED_AT};
use std::collections::BTreeSet;

/// Most missing parents asked for at once on behalf of one author's blocks.
pub(crate) const MISSING_PER_AUTHOR: usize = 100;

/// Blocks one author may have in one slot before more are refused, unless
/// a block waits for them: two are proof of equivocation already.
const BLOCKS_PER_SLOT: usize = 2;

/// The blocks waiting for parents, and the rules that let blocks in.
pub(crate) struct BlockManager {
    suspended: SuspendedBlocks,
    /// Most bytes of one author's blocks kept waiting (the highest go
    /// first).
    max_suspended_bytes_per_author: usize,
}

/// What offering blocks to the DAG did.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    /// Blocks that entered the DAG, each after its parents.
    pub(crate) accepted: Vec<VerifiedBlock>,
    /// Parents that blocks now waiting lack, and nobody waits for already.
    pub(crate) missing: BTreeSet<BlockRef>,
    /// Blocks refused for their author's bounds.
    pub(crate) dropped: Vec<BlockRef>,
}

impl BlockManager {
    /// No blocks waiting; each author's waiting blocks bounded at
    /// `max_suspended_bytes_per_author`.
    pub(crate) fn new(max_suspended_bytes_per_author: usize) -> BlockManager {
        BlockManager {
            suspended: SuspendedBlocks::default(),
            max_suspended_bytes_per_author,
        }
    }

    /// Number of blocks waiting for parents.
    pub(crate) fn suspended(&self) -> usize {
        self.suspended.len()
    }

    /// Whether `reference` waits for parents.
    #[cfg(test)]
    pub(crate) fn is_suspended(&self, reference: &BlockRef) -> bool {
        self.suspended.contains(reference)
    }

    /// Offers the DAG a block read back from this validator's store, which
    /// was admitted once already (so is not bounded again): it waits if a
    /// crash lost parents it was stored with.
    pub(crate) fn restore(&mut self, dag: &mut DagState, block: VerifiedBlock) {
        if let Acceptance::MissingParents(missing) = dag.accept(block.clone()) {
            self.suspended.insert(block, &missing, usize::MAX);
        }
    }

    /// Offers `blocks` from peers to the DAG: those whose parents are in
    /// enter it with every waiting block they complete, the others wait
    /// within their author's bounds.
    pub(crate) fn add_blocks(
        &mut self,
        dag: &mut DagState,
        mut blocks: Vec<VerifiedBlock>,
    ) -> Admitted {
        let mut admitted = Admitted::default();
        // Parents before children, so one pass takes in whole chains.
        blocks.sort_by_key(|b| b.reference());
        // A block that another author's block of this batch builds on,
        // directly or through blocks of its own author, is needed even
        // though it comes first. Children before parents, in one pass.
        let mut needed: BTreeSet<BlockRef> = BTreeSet::new();
        for block in blocks.iter().rev() {
            let reference = block.reference();
            let carried = needed.contains(&reference);
            needed.extend(
                block
                    .block()
                    .parents
                    .iter()
                    .filter(|p| carried || p.author != reference.author),
            );
        }
        for block in blocks {
            let reference = block.reference();
            if self.suspended.contains(&reference) {
                continue;
            }
            if self.over_slot_cap(dag, &reference, &needed) {
                admitted.dropped.push(reference);
                continue;
            }
            match dag.accept(block.clone()) {
                Acceptance::Accepted => self.accept_with_children(dag, block, &mut admitted),
                Acceptance::MissingParents(missing) => {
                    admitted.missing.extend(missing.iter().copied());
                    let cap = self.max_suspended_bytes_per_author;
                    let dropped = self.suspended.insert(block, &missing, cap);
                    admitted.dropped.extend(dropped);
                }
                Acceptance::Duplicate | Acceptance::TooOld => {}
            }
        }
        admitted
            .missing
            .retain(|p| self.suspended.lacks(p) && !dag.contains(p));
        admitted
    }

    /// Offers the DAG again the waiting blocks that lack only parents
    /// below `floor`, the retention floor just raised: the DAG counts
    /// those as present now.
    pub(crate) fn release_below(&mut self, dag: &mut DagState, floor: Round) -> Admitted {
        let mut admitted = Admitted::default();
        let mut ready = Vec::new();
        for block in self.suspended.release_below(floor) {
            self.offer_again(dag, block, &mut ready, &mut admitted.dropped);
        }
        for block in ready {
            self.accept_with_children(dag, block, &mut admitted);
        }
        admitted
    }

    /// Every parent of a waiting block that is neither known nor waiting
    /// itself, up to round `frontier`: at most [`MISSING_PER_AUTHOR`] for
    /// the blocks of each author, lowest rounds first, so that a Byzantine
    /// validator's blocks naming made-up parents cannot crowd out the
    /// parents that honest blocks wait for.
    pub(crate) fn missing(&self, dag: &DagState, frontier: Round) -> BTreeSet<BlockRef> {
        let mut quota = vec![MISSING_PER_AUTHOR; dag.committee().size()];
        let mut missing = BTreeSet::new();
        for (parent, waiting) in self.suspended.lacking() {
            if parent.round > frontier || quota.iter().all(|q| *q == 0) {
                break;
            }
            if dag.contains(parent) {
                continue;
            }
            // Charged to a waiting author with quota left, those that wait
            // through other blocks included.
            let waiter = waiting
                .iter()
                .map(|w| w.author.0 as usize)
                .find(|a| quota[*a] > 0)
                .or_else(|| {
                    let waiters = self.suspended.waiters(parent, WAITERS_LOOKED_AT);
                    waiters
                        .into_iter()
                        .map(|a| a.0 as usize)
                        .find(|a| quota[*a] > 0)
                });
            if let Some(author) = waiter {
                quota[author] -= 1;
                missing.insert(*parent);
            }
        }
        missing
    }

    /// Records `block` (just accepted) in `admitted`, then accepts every
    /// waiting block that waited for it, or for one accepted in turn.
    fn accept_with_children(
        &mut self,
        dag: &mut DagState,
        block: VerifiedBlock,
        admitted: &mut Admitted,
    ) {
        let mut ready = vec![block];
        while let Some(block) = ready.pop() {
            for child in self.suspended.take_children(&block.reference()) {
                self.offer_again(dag, child, &mut ready, &mut admitted.dropped);
            }
            admitted.accepted.push(block);
        }
    }

    /// Offers the DAG a block that waited (already admitted once, so not
    /// bounded again): into `ready` if accepted, back to wait if it still
    /// lacks parents.
    fn offer_again(
        &mut self,
        dag: &mut DagState,
        block: VerifiedBlock,
        ready: &mut Vec<VerifiedBlock>,
        dropped: &mut Vec<BlockRef>,
    ) {
        // Waiting did not make room in a full slot.
        if self.over_slot_cap(dag, &block.reference(), &BTreeSet::new()) {
            dropped.push(block.reference());
            return;
        }
        match dag.accept(block.clone()) {
            Acceptance::Accepted => ready.push(block),
            Acceptance::MissingParents(missing) => {
                self.suspended.insert(block, &missing, usize::MAX);
            }
            Acceptance::Duplicate | Acceptance::TooOld => {}
        }
    }

    /// Whether `reference` would be one block too many in its slot: the
    /// slot holds [`BLOCKS_PER_SLOT`] others already, and no block of
    /// another author (waiting here, or in `needed`) builds on it, directly
    /// or through blocks of its own author. Blocks other validators built
    /// on must be let in, or this validator could never accept what its
    /// peers accepted; the equivocator's own blocks do not count, or it
    /// could make one for each of its versions.
    fn over_slot_cap(
        &self,
        dag: &DagState,
        reference: &BlockRef,
        needed: &BTreeSet<BlockRef>,
    ) -> bool {
        let full = dag
            .blocks_in_slot(reference.round, reference.author)
            .nth(BLOCKS_PER_SLOT - 1)
            .is_some();
        full && !dag.contains(reference)
            && !needed.contains(reference)
            && !self
                .suspended
                .waiters(reference, WAITERS_LOOKED_AT)
                .iter()
                .any(|a| *a != reference.author)
    }
}
