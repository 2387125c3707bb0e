//! Verified blocks that wait for their parents, bounded per author.

use crate::block::{BlockRef, Round, VerifiedBlock};
use crate::committee::AuthorityIndex;
use std::collections::{BTreeMap, BTreeSet};

/// Blocks waiting for parents, in reference (round-first) order.
///
/// Each author may have at most a fixed number waiting. When one more
/// arrives, the author's highest-round block goes: lower blocks are closer
/// to what the DAG holds, and a validator catching up must always be able
/// to take the next block it needs, or it would wait forever behind
/// blocks it cannot accept yet.
#[derive(Default)]
pub(crate) struct SuspendedBlocks {
    blocks: BTreeMap<BlockRef, VerifiedBlock>,
    by_author: BTreeMap<AuthorityIndex, BTreeSet<BlockRef>>,
}

impl SuspendedBlocks {
    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn contains(&self, reference: &BlockRef) -> bool {
        self.blocks.contains_key(reference)
    }

    /// Adds `block`, keeping at most `cap` per author; returns whether a
    /// block (possibly this one) was dropped for it.
    pub(crate) fn insert(&mut self, block: VerifiedBlock, cap: usize) -> bool {
        let reference = block.reference();
        let mine = self.by_author.entry(reference.author).or_default();
        mine.insert(reference);
        self.blocks.insert(reference, block);
        if mine.len() <= cap {
            return false;
        }
        let highest = mine.pop_last().expect("over the cap, so not empty");
        self.blocks.remove(&highest);
        true
    }

    pub(crate) fn remove(&mut self, reference: &BlockRef) {
        if self.blocks.remove(reference).is_some()
            && let Some(mine) = self.by_author.get_mut(&reference.author)
        {
            mine.remove(reference);
        }
    }

    /// Every waiting block, lowest round first.
    pub(crate) fn blocks(&self) -> impl Iterator<Item = &VerifiedBlock> {
        self.blocks.values()
    }

    /// Forgets blocks below `round`.
    pub(crate) fn drop_below(&mut self, round: Round) {
        self.blocks = self.blocks.split_off(&BlockRef::first_of_round(round));
        for mine in self.by_author.values_mut() {
            *mine = mine.split_off(&BlockRef::first_of_round(round));
        }
    }
}
