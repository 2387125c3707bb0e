//! The local view of the DAG: every verified block whose ancestors, down
//! to the retention floor, were all held by this validator.

use crate::block::{BlockRef, Round, VerifiedBlock};
use crate::committee::{AuthorityIndex, Committee, StakeAggregator};
use std::collections::{BTreeMap, BTreeSet};

/// What became of a block offered to the DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// It is now part of the DAG.
    Accepted,
    /// It was already there.
    Duplicate,
    /// Some of its parents are unknown: fetch them, then offer it again.
    MissingParents(Vec<BlockRef>),
    /// It is older than anything this validator still remembers; dropped.
    TooOld,
}

/// Verified blocks, indexed by reference and by slot (round, author).
///
/// A slot may hold several blocks: an equivocating author's blocks are all
/// kept, and the commit rule decides which (if any) is committed. The
/// genesis blocks are always known. Blocks below the garbage-collection
/// round are dropped, but their references are remembered for `retention`
/// more rounds, so a late block that names one as its parent can still be
/// accepted.
///
/// A block is accepted once every parent at or above the retention floor
/// is known; a parent below the floor holds nothing back, held or not (as
/// in Sui, where ancestors at or below the garbage-collection round count
/// as present). Requiring whole histories instead would stall a validator
/// for good once its floor passed a parent it never received: it refuses
/// that parent as too old however often it is sent, and each later block
/// of the parent's author, with every block naming one, waits forever.
///
/// The rule keeps every honest validator deciding alike because the floor
/// is a function of the committed sequence. A validator X takes a block B
/// without its parent P only once X's floor is above P: after committing
/// some leader C that raised the floor past P. C was decided on a DAG
/// without B, so a validator Y lagging behind can decide and commit C
/// (fetching the blocks X used) before it needs B, and by then its floor
/// has passed P too. More generally, a validator committing leader L has
/// the same floor as every other at that point of the sequence, and the
/// blocks L commits lie above the garbage-collection round, itself above
/// the floor.
pub struct DagState {
    committee: Committee,
    blocks: BTreeMap<BlockRef, VerifiedBlock>,
    genesis: BTreeSet<BlockRef>,
    /// Blocks accepted below the garbage-collection round (then dropped, or
    /// arrived late), down to the retention floor.
    collected: BTreeSet<BlockRef>,
    retention: Round,
    /// Each author's highest-round block (the first one, if it
    /// equivocated), or its genesis block.
    latest: Vec<BlockRef>,
    highest_round: Round,
    gc_round: Round,
}

impl DagState {
    /// A DAG for `committee` holding only the genesis blocks, remembering
    /// collected blocks for `retention` rounds below the
    /// garbage-collection round.
    pub fn new(committee: Committee, retention: Round) -> DagState {
        let latest: Vec<BlockRef> = committee.authorities().map(BlockRef::genesis).collect();
        DagState {
            committee,
            blocks: BTreeMap::new(),
            genesis: latest.iter().copied().collect(),
            collected: BTreeSet::new(),
            retention,
            latest,
            highest_round: 0,
            gc_round: 0,
        }
    }

    /// The committee.
    pub fn committee(&self) -> &Committee {
        &self.committee
    }

    /// Adds `block` once all its parents are known. A block below the
    /// garbage-collection round is only remembered as known.
    pub fn accept(&mut self, block: VerifiedBlock) -> Acceptance {
        let reference = block.reference();
        if reference.round < self.retention_floor() {
            return Acceptance::TooOld;
        }
        if self.contains(&reference) {
            return Acceptance::Duplicate;
        }
        let floor = self.retention_floor();
        let missing: Vec<BlockRef> = block
            .block()
            .parents
            .iter()
            .filter(|p| p.round >= floor && !self.contains(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Acceptance::MissingParents(missing);
        }
        self.insert(block);
        Acceptance::Accepted
    }

    /// Adds a block reloaded from the store without looking at its
    /// parents: it was accepted before, and its parents may be gone.
    pub fn restore(&mut self, block: VerifiedBlock) {
        if block.reference().round >= self.retention_floor() {
            self.insert(block);
        }
    }

    fn insert(&mut self, block: VerifiedBlock) {
        let reference = block.reference();
        if reference.round < self.gc_round {
            self.collected.insert(reference);
            return;
        }
        self.highest_round = self.highest_round.max(reference.round);
        let latest = &mut self.latest[reference.author.0 as usize];
        if latest.round < reference.round {
            *latest = reference;
        }
        self.blocks.insert(reference, block);
    }

    /// Whether `reference` is known: in the DAG, a genesis block, or
    /// accepted below the garbage-collection round and still remembered.
    pub fn contains(&self, reference: &BlockRef) -> bool {
        self.blocks.contains_key(reference)
            || self.genesis.contains(reference)
            || self.collected.contains(reference)
    }

    /// Drops every block below `round`, remembering their references.
    pub fn garbage_collect(&mut self, round: Round) {
        if round <= self.gc_round {
            return;
        }
        self.gc_round = round;
        let kept = self.blocks.split_off(&BlockRef::first_of_round(round));
        self.collected
            .extend(std::mem::replace(&mut self.blocks, kept).into_keys());
        self.collected = self
            .collected
            .split_off(&BlockRef::first_of_round(self.retention_floor()));
    }

    /// Blocks below this round are forgotten altogether.
    pub fn retention_floor(&self) -> Round {
        self.gc_round.saturating_sub(self.retention)
    }

    /// The lowest round still kept.
    pub fn gc_round(&self) -> Round {
        self.gc_round
    }

    /// `author`'s highest-round block (its genesis block before any).
    pub fn latest_of(&self, author: AuthorityIndex) -> BlockRef {
        self.latest[author.0 as usize]
    }

    /// Whether the blocks of `round` hold a quorum of stake (always true of
    /// the genesis round).
    pub fn has_quorum_at(&self, round: Round) -> bool {
        if round == 0 {
            return true;
        }
        let mut stake = StakeAggregator::new();
        for block in self.blocks_at(round) {
            stake.add(block.reference().author, &self.committee);
        }
        stake.reached_quorum(&self.committee)
    }

    /// The block `reference`, if known.
    pub fn get(&self, reference: &BlockRef) -> Option<&VerifiedBlock> {
        self.blocks.get(reference)
    }

    /// The highest round of any known block.
    pub fn highest_round(&self) -> Round {
        self.highest_round
    }

    /// Every known block of `round`, in (author, digest) order.
    pub fn blocks_at(&self, round: Round) -> impl Iterator<Item = &VerifiedBlock> {
        self.blocks
            .range(BlockRef::first_of_round(round)..)
            .map(|(_, b)| b)
            .take_while(move |b| b.reference().round == round)
    }

    /// Every known block of slot (`round`, `author`).
    pub fn blocks_in_slot(
        &self,
        round: Round,
        author: AuthorityIndex,
    ) -> impl Iterator<Item = &VerifiedBlock> {
        self.blocks_at(round)
            .filter(move |b| b.reference().author == author)
    }

    /// Whether `ancestor` is in the causal history of `from` (or is `from`).
    pub fn is_ancestor(&self, ancestor: &BlockRef, from: &BlockRef) -> bool {
        let mut stack = vec![*from];
        let mut seen = BTreeSet::new();
        while let Some(current) = stack.pop() {
            if current == *ancestor {
                return true;
            }
            if current.round <= ancestor.round || !seen.insert(current) {
                continue;
            }
            if let Some(block) = self.blocks.get(&current) {
                stack.extend(
                    block
                        .block()
                        .parents
                        .iter()
                        .filter(|p| p.round >= ancestor.round),
                );
            }
        }
        false
    }

    /// The block of slot (`round`, `author`) that `from` supports: the first
    /// one met walking its causal history down to `round`. An honest block
    /// supports at most one block per slot, so this is what it votes for.
    pub fn supported_block(
        &self,
        round: Round,
        author: AuthorityIndex,
        from: &BlockRef,
    ) -> Option<BlockRef> {
        // Depth-first in parent order, each block visited once.
        let mut stack = vec![*from];
        let mut seen = BTreeSet::new();
        while let Some(current) = stack.pop() {
            let Some(block) = self.blocks.get(&current).filter(|_| seen.insert(current)) else {
                continue;
            };
            let parents = &block.block().parents;
            if let Some(found) = parents
                .iter()
                .find(|p| p.round == round && p.author == author)
            {
                return Some(*found);
            }
            stack.extend(parents.iter().rev().filter(|p| p.round > round));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{Block, BlockError};
    use crate::committee::tests::committee;

    #[test]
    fn blocks_wait_for_their_parents_and_are_kept_once() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let mut dag = DagState::new(c.clone(), 1);
        let genesis: Vec<BlockRef> = c.authorities().map(BlockRef::genesis).collect();
        let block = |round, author: u32, parents: Vec<BlockRef>, tx: &[u8]| {
            let signed = Block {
                round,
                author: AuthorityIndex(author),
                parents,
                transactions: vec![tx.to_vec()],
                state_root: crate::StateRoot::default(),
            }
            .sign(&keys[author as usize], c.protocol());
            VerifiedBlock::verify(signed, &c)
        };
        let round_one: Vec<VerifiedBlock> = (0..3)
            .map(|a| block(1, a, genesis[..3].to_vec(), b"tx").unwrap())
            .collect();
        let refs: Vec<BlockRef> = round_one.iter().map(|b| b.reference()).collect();
        let child = block(2, 0, refs.clone(), b"tx").unwrap();
        assert_eq!(
            dag.accept(child.clone()),
            Acceptance::MissingParents(refs.clone())
        );
        for b in &round_one {
            assert_eq!(dag.accept(b.clone()), Acceptance::Accepted);
        }
        assert!(dag.has_quorum_at(1));
        assert!(!dag.has_quorum_at(2));
        assert_eq!(dag.accept(child.clone()), Acceptance::Accepted);
        assert_eq!(dag.accept(child.clone()), Acceptance::Duplicate);
        assert_eq!(dag.highest_round(), 2);
        assert_eq!(dag.latest_of(AuthorityIndex(0)), child.reference());
        assert_eq!(dag.latest_of(AuthorityIndex(3)), genesis[3]);
        assert!(dag.is_ancestor(&genesis[1], &child.reference()));
        assert!(!dag.is_ancestor(&genesis[3], &child.reference()));

        // An equivocating second block in the same slot is kept beside the first.
        let other = block(2, 0, refs.clone(), b"another tx").unwrap();
        assert_eq!(dag.accept(other), Acceptance::Accepted);
        assert_eq!(dag.blocks_in_slot(2, AuthorityIndex(0)).count(), 2);
        assert_eq!(dag.latest_of(AuthorityIndex(0)), child.reference());

        // A forged block never gets as far as the DAG.
        let forged = Block {
            author: AuthorityIndex(1),
            ..child.block().clone()
        }
        .sign(&keys[0], c.protocol());
        assert!(matches!(
            VerifiedBlock::verify(forged, &c),
            Err(BlockError::BadSignature(_))
        ));

        // Collected blocks stay known for `retention` rounds; above the
        // floor a block that was never held is waited for, however old.
        let late = block(1, 3, genesis.clone(), b"late").unwrap();
        let orphan = block(2, 3, vec![refs[0], refs[1], late.reference()], b"x").unwrap();
        dag.garbage_collect(2);
        assert_eq!(dag.blocks_at(1).count(), 0);
        assert!(dag.contains(&refs[0]));
        assert_eq!(
            dag.accept(orphan.clone()),
            Acceptance::MissingParents(vec![late.reference()])
        );
        // A late block below the garbage-collection round is remembered.
        assert_eq!(dag.accept(late.clone()), Acceptance::Accepted);
        assert!(dag.get(&late.reference()).is_none());
        assert_eq!(dag.accept(orphan), Acceptance::Accepted);
        assert_eq!(dag.accept(late.clone()), Acceptance::Duplicate);
        dag.garbage_collect(3);
        assert!(!dag.contains(&refs[0]));
        assert_eq!(dag.accept(late), Acceptance::TooOld);

        // Below the floor a parent holds nothing back, even one never held.
        let never_held = block(1, 3, genesis.clone(), b"never held").unwrap();
        let parents = vec![refs[0], refs[1], never_held.reference()];
        let built_on_it = block(2, 3, parents, b"y").unwrap();
        assert!(!dag.contains(&never_held.reference()));
        assert_eq!(dag.accept(built_on_it.clone()), Acceptance::Accepted);
        assert!(dag.contains(&built_on_it.reference()));
    }
}
