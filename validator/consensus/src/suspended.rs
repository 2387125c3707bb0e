//! Verified blocks that wait for their parents, bounded in bytes per
//! author and indexed by what they wait for.

use crate::block::{BlockRef, Round, VerifiedBlock};
use crate::committee::AuthorityIndex;
use std::collections::{BTreeMap, BTreeSet};

/// Blocks waiting for parents, in reference (round-first) order.
///
/// Each author's waiting blocks may take at most a fixed number of bytes
/// (a count would let large blocks take far more memory than small
/// ones). When more arrive, the author's highest-round blocks that no
/// other author's block waits for go first, then its highest-round blocks:
/// lower blocks are closer to what the DAG holds, and a validator catching
/// up must always be able to take the next block it needs, or it would
/// wait forever behind blocks it cannot accept yet. (Without the first
/// rule, an equivocator's copies that nobody builds on could push out the
/// one version honest blocks build on, each time it is fetched.)
///
/// Each block is filed under the parents it lacks, so accepting a block
/// looks only at the blocks that named it, however many wait.
#[derive(Default)]
pub(crate) struct SuspendedBlocks {
    blocks: BTreeMap<BlockRef, VerifiedBlock>,
    by_author: BTreeMap<AuthorityIndex, Waiting>,
    /// For each lacking parent, the waiting blocks that name it.
    waiting_on: BTreeMap<BlockRef, BTreeSet<BlockRef>>,
}

/// Waiting blocks looked at to find who needs a block.
pub(crate) const WAITERS_LOOKED_AT: usize = 1_000;

/// Of an author's waiting blocks over its bound, how many (highest first)
/// are looked at for one that no other author needs: a bounded cost per
/// block, however many wait.
const EVICTION_CANDIDATES: usize = 16;

/// One author's waiting blocks and their wire bytes.
#[derive(Default)]
struct Waiting {
    blocks: BTreeSet<BlockRef>,
    bytes: usize,
}

impl SuspendedBlocks {
    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn contains(&self, reference: &BlockRef) -> bool {
        self.blocks.contains_key(reference)
    }

    /// Adds `block`, which lacks the parents `missing`, keeping at most
    /// `max_bytes` of blocks per author (or a single block); returns the
    /// blocks (possibly this one) dropped for it.
    pub(crate) fn insert(
        &mut self,
        block: VerifiedBlock,
        missing: &[BlockRef],
        max_bytes: usize,
    ) -> Vec<BlockRef> {
        let reference = block.reference();
        let mine = self.by_author.entry(reference.author).or_default();
        if mine.blocks.insert(reference) {
            mine.bytes += block.wire_size();
        }
        self.blocks.insert(reference, block);
        for parent in missing {
            self.waiting_on
                .entry(*parent)
                .or_default()
                .insert(reference);
        }
        let mut dropped = Vec::new();
        // The lowest block is kept even over the bound, so that a bound
        // below the largest block cannot leave a block that arrived
        // before its parents nowhere to wait.
        while let Some(mine) = self.by_author.get(&reference.author)
            && mine.bytes > max_bytes
            && mine.blocks.len() > 1
            && let Some(highest) = mine.blocks.last().copied()
        {
            let unwanted = mine
                .blocks
                .iter()
                .skip(1)
                .rev()
                .take(EVICTION_CANDIDATES)
                .find(|r| !self.needed_by_others(r));
            let victim = unwanted.copied().unwrap_or(highest);
            self.remove(&victim);
            dropped.push(victim);
        }
        dropped
    }

    /// Takes out the blocks that named `parent` (just accepted): each now
    /// lacks one parent fewer, and may be accepted in turn.
    pub(crate) fn take_children(&mut self, parent: &BlockRef) -> Vec<VerifiedBlock> {
        let Some(children) = self.waiting_on.remove(parent) else {
            return Vec::new();
        };
        children
            .iter()
            .filter_map(|child| self.remove(child))
            .collect()
    }

    /// Whether a waiting block lacks `parent`, and `parent` is not waiting
    /// itself: a block to fetch.
    pub(crate) fn lacks(&self, parent: &BlockRef) -> bool {
        self.waiting_on.contains_key(parent) && !self.blocks.contains_key(parent)
    }

    /// The authors of the waiting blocks that need `reference`: those
    /// that name it, and those that name a waiting block that needs it in
    /// turn (an honest block may build on an equivocator's block that
    /// builds on one of its versions). At most `limit` waiting blocks are
    /// looked at.
    pub(crate) fn waiters(&self, reference: &BlockRef, limit: usize) -> BTreeSet<AuthorityIndex> {
        self.waiting_authors(reference, limit).0
    }

    /// [`SuspendedBlocks::waiters`], and whether the search looked at
    /// every waiting block that needs `reference`.
    fn waiting_authors(
        &self,
        reference: &BlockRef,
        limit: usize,
    ) -> (BTreeSet<AuthorityIndex>, bool) {
        let mut authors = BTreeSet::new();
        let mut stack = vec![*reference];
        let mut seen = BTreeSet::new();
        while let Some(parent) = stack.pop() {
            for child in self.waiting_on.get(&parent).into_iter().flatten() {
                if seen.len() == limit {
                    return (authors, false);
                }
                if seen.insert(*child) {
                    authors.insert(child.author);
                    stack.push(*child);
                }
            }
        }
        (authors, true)
    }

    /// Whether a waiting block of another author than `reference`'s needs
    /// it; a search cut short at [`WAITERS_LOOKED_AT`] blocks counts as
    /// needed.
    fn needed_by_others(&self, reference: &BlockRef) -> bool {
        let (authors, complete) = self.waiting_authors(reference, WAITERS_LOOKED_AT);
        !complete || authors.iter().any(|a| *a != reference.author)
    }

    /// Every parent [`SuspendedBlocks::lacks`], lowest first, with the
    /// blocks waiting for it.
    pub(crate) fn lacking(&self) -> impl Iterator<Item = (&BlockRef, &BTreeSet<BlockRef>)> {
        self.waiting_on.iter().filter(|(p, _)| self.lacks(p))
    }

    /// Removes `reference` (and its entries under the parents it lacks).
    pub(crate) fn remove(&mut self, reference: &BlockRef) -> Option<VerifiedBlock> {
        let block = self.blocks.remove(reference)?;
        if let Some(mine) = self.by_author.get_mut(&reference.author)
            && mine.blocks.remove(reference)
        {
            mine.bytes -= block.wire_size();
        }
        for parent in &block.block().parents {
            if let Some(children) = self.waiting_on.get_mut(parent) {
                children.remove(reference);
                if children.is_empty() {
                    self.waiting_on.remove(parent);
                }
            }
        }
        Some(block)
    }

    /// Forgets blocks below `round`, and takes out those waiting for a
    /// parent below it: the DAG no longer waits for such a parent, so they
    /// are to be offered to it again.
    pub(crate) fn release_below(&mut self, round: Round) -> Vec<VerifiedBlock> {
        let first = BlockRef::first_of_round(round);
        let doomed: Vec<BlockRef> = self.blocks.range(..first).map(|(r, _)| *r).collect();
        for reference in &doomed {
            self.remove(reference);
        }
        let released: BTreeSet<BlockRef> = self
            .waiting_on
            .range(..first)
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        released.iter().filter_map(|r| self.remove(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Block;
    use crate::committee::tests::committee;

    #[test]
    fn blocks_are_filed_under_what_they_lack_and_bounded_per_author() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let absent = |round, author: u32| BlockRef {
            round,
            author: AuthorityIndex(author),
            digest: [author as u8; 32],
        };
        let block = |round, author: u32| {
            let parents = (0..3).map(|a| absent(round - 1, a)).collect();
            let signed = Block {
                round,
                author: AuthorityIndex(author),
                parents,
                transactions: vec![],
                state_root: crate::StateRoot::default(),
            }
            .sign(&keys[author as usize], c.protocol());
            VerifiedBlock::verify(signed, &c).unwrap()
        };
        let mut suspended = SuspendedBlocks::default();
        let low = block(5, 0);
        let high = block(6, 0);
        let cap = high.wire_size();
        assert!(
            suspended
                .insert(high.clone(), &[absent(5, 0)], cap)
                .is_empty()
        );
        // Over the cap the author's highest block goes, whichever arrived.
        assert_eq!(
            suspended.insert(low.clone(), &[absent(4, 1), absent(4, 2)], cap),
            [high.reference()]
        );
        assert!(!suspended.contains(&high.reference()));
        assert_eq!(
            suspended.by_author[&AuthorityIndex(0)].bytes,
            low.wire_size()
        );
        assert_eq!(
            suspended.lacking().map(|(p, _)| *p).collect::<Vec<_>>(),
            [absent(4, 1), absent(4, 2)]
        );

        // Its lacking parents each hand it back once.
        assert!(suspended.take_children(&absent(5, 0)).is_empty());
        let children = suspended.take_children(&absent(4, 1));
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].reference(), low.reference());
        assert_eq!(suspended.len(), 0);
        assert_eq!(suspended.lacking().count(), 0);

        // Below the floor a block goes; one waiting for a parent below it
        // comes out, to be offered again.
        suspended.insert(high.clone(), &[absent(5, 0)], cap);
        suspended.insert(low.clone(), &[absent(4, 1)], usize::MAX);
        let released = suspended.release_below(6);
        assert_eq!(
            released.iter().map(|b| b.reference()).collect::<Vec<_>>(),
            [high.reference()]
        );
        assert_eq!(suspended.len(), 0);
        assert_eq!(suspended.by_author[&AuthorityIndex(0)].bytes, 0);
        assert_eq!(suspended.lacking().count(), 0);

        // A block larger than the bound may still wait, alone.
        assert!(
            suspended
                .insert(high.clone(), &[absent(5, 0)], 1)
                .is_empty()
        );
        assert_eq!(
            suspended.insert(block(7, 0), &[absent(6, 1)], 1).len(),
            1,
            "a second one does not"
        );
        assert!(suspended.contains(&high.reference()));
    }

    #[test]
    fn over_the_bound_a_block_others_wait_for_outlasts_higher_ones_nobody_needs() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let absent = |round, author: u32| BlockRef {
            round,
            author: AuthorityIndex(author),
            digest: [author as u8; 32],
        };
        let block = |round, author: u32, tag: u8| {
            let signed = Block {
                round,
                author: AuthorityIndex(author),
                parents: (0..3).map(|a| absent(round - 1, a)).collect(),
                transactions: vec![vec![tag]],
                state_root: crate::StateRoot::default(),
            }
            .sign(&keys[author as usize], c.protocol());
            VerifiedBlock::verify(signed, &c).unwrap()
        };
        let (low, copy, needed) = (block(5, 0, 0), block(6, 0, 1), block(7, 0, 0));
        let honest = block(8, 1, 0);
        let mut suspended = SuspendedBlocks::default();
        let cap = low.wire_size() + needed.wire_size();
        suspended.insert(honest, &[needed.reference()], cap);
        suspended.insert(low.clone(), &[absent(4, 0)], cap);
        suspended.insert(copy.clone(), &[absent(5, 2)], cap);
        // The highest block is the one an honest block waits for: the copy
        // below it, which nobody builds on, goes instead.
        assert_eq!(
            suspended.insert(needed.clone(), &[absent(6, 1)], cap),
            [copy.reference()]
        );
        assert!(suspended.contains(&needed.reference()) && suspended.contains(&low.reference()));
    }
}
