//! The local view of the DAG: every verified block whose ancestors are all
//! known.

use crate::block::{BlockError, BlockRef, Round, SignedBlock};
use crate::committee::{AuthorityIndex, Committee};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What became of a block offered to the DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// It is now part of the DAG.
    Accepted,
    /// It was already there.
    Duplicate,
    /// Some of its parents are unknown: fetch them, then offer it again.
    MissingParents(Vec<BlockRef>),
}

/// Verified blocks, indexed by reference and by slot (round, author).
///
/// A slot may hold several blocks: an equivocating author's blocks are all
/// kept, and the commit rule decides which (if any) is committed.
pub struct DagState {
    committee: Committee,
    blocks: BTreeMap<BlockRef, Arc<SignedBlock>>,
    highest_round: Round,
}

impl DagState {
    /// An empty DAG for `committee`.
    pub fn new(committee: Committee) -> DagState {
        DagState {
            committee,
            blocks: BTreeMap::new(),
            highest_round: 0,
        }
    }

    /// The committee.
    pub fn committee(&self) -> &Committee {
        &self.committee
    }

    /// Verifies `block` and adds it once all its parents are in the DAG.
    pub fn accept(&mut self, block: SignedBlock) -> Result<Acceptance, BlockError> {
        block.verify(&self.committee)?;
        let reference = block.reference();
        if self.blocks.contains_key(&reference) {
            return Ok(Acceptance::Duplicate);
        }
        let missing: Vec<BlockRef> = block
            .block()
            .parents
            .iter()
            .filter(|p| !self.blocks.contains_key(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Ok(Acceptance::MissingParents(missing));
        }
        self.highest_round = self.highest_round.max(reference.round);
        self.blocks.insert(reference, Arc::new(block));
        Ok(Acceptance::Accepted)
    }

    /// The block `reference`, if known.
    pub fn get(&self, reference: &BlockRef) -> Option<&Arc<SignedBlock>> {
        self.blocks.get(reference)
    }

    /// The highest round of any known block.
    pub fn highest_round(&self) -> Round {
        self.highest_round
    }

    /// Every known block of `round`, in (author, digest) order.
    pub fn blocks_at(&self, round: Round) -> impl Iterator<Item = &Arc<SignedBlock>> {
        let from = BlockRef {
            round,
            author: AuthorityIndex(0),
            digest: [0; 32],
        };
        self.blocks
            .range(from..)
            .map(|(_, b)| b)
            .take_while(move |b| b.reference().round == round)
    }

    /// Every known block of slot (`round`, `author`).
    pub fn blocks_in_slot(
        &self,
        round: Round,
        author: AuthorityIndex,
    ) -> impl Iterator<Item = &Arc<SignedBlock>> {
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
    use crate::block::Block;
    use crate::committee::tests::committee;

    #[test]
    fn blocks_wait_for_their_parents_and_are_kept_once() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let mut dag = DagState::new(c);
        let genesis: Vec<SignedBlock> = (0..4)
            .map(|a| {
                let block = Block {
                    round: 0,
                    author: AuthorityIndex(a),
                    parents: vec![],
                    transactions: vec![],
                    state_root: [0; 32],
                };
                block.sign(&keys[a as usize])
            })
            .collect();
        let child = Block {
            round: 1,
            author: AuthorityIndex(0),
            parents: genesis[..3].iter().map(|g| g.reference()).collect(),
            transactions: vec![b"tx".to_vec()],
            state_root: [0; 32],
        }
        .sign(&keys[0]);
        let missing = genesis[..3].iter().map(|g| g.reference()).collect();
        assert_eq!(
            dag.accept(child.clone()),
            Ok(Acceptance::MissingParents(missing))
        );
        for g in &genesis {
            assert_eq!(dag.accept(g.clone()), Ok(Acceptance::Accepted));
        }
        assert_eq!(dag.accept(child.clone()), Ok(Acceptance::Accepted));
        assert_eq!(dag.accept(child.clone()), Ok(Acceptance::Duplicate));
        assert_eq!(dag.highest_round(), 1);
        assert!(dag.is_ancestor(&genesis[1].reference(), &child.reference()));
        assert!(!dag.is_ancestor(&genesis[3].reference(), &child.reference()));

        // An equivocating second block in the same slot is kept beside the first.
        let mut other = child.block().clone();
        other.transactions = vec![b"another tx".to_vec()];
        assert_eq!(dag.accept(other.sign(&keys[0])), Ok(Acceptance::Accepted));
        assert_eq!(dag.blocks_in_slot(1, AuthorityIndex(0)).count(), 2);

        // A forged block changes nothing.
        let forged = Block {
            author: AuthorityIndex(1),
            ..child.block().clone()
        }
        .sign(&keys[0]);
        assert!(matches!(
            dag.accept(forged),
            Err(BlockError::BadSignature(_))
        ));
        assert_eq!(dag.blocks_at(1).count(), 2);
    }
}
