//! Verifies blocks received from peers, once per distinct copy.
//!
//! Every block arrives several times (broadcast, repeats, fetch answers),
//! so verification results are remembered. They are keyed by reference
//! *and* signature: a copy of a genuine block with a forged signature has
//! the genuine block's reference, and keying by reference alone would let
//! it make the genuine copy look like a duplicate while it was verified.
//!
//! Blocks are never refused for the transactions they carry. Consensus
//! orders opaque bytes; execution checks each committed transaction with
//! a deterministic rule and rejects an invalid one alone. Refusing a whole
//! block for one transaction would let a check that differs between
//! validators (or over time) split them on the block, and its author would
//! resend it forever.

use crate::block::{BlockError, BlockRef, SignedBlock, VerifiedBlock};
use crate::committee::Committee;
use soma_crypto::Signature;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Decodes and verifies peers' blocks, each distinct copy once.
pub(crate) struct BlockVerifier {
    committee: Committee,
    recent: Mutex<RecentCopies>,
}

/// What a copy of a block turned out to be.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A block not seen before, now verified.
    New(VerifiedBlock),
    /// This copy was verified before (or is being verified).
    Seen,
}

impl BlockVerifier {
    /// How many copies are remembered.
    const CAPACITY: usize = 100_000;

    pub(crate) fn new(committee: Committee) -> BlockVerifier {
        BlockVerifier {
            committee,
            recent: Mutex::new(RecentCopies::default()),
        }
    }

    /// Verifies `block` (decoded from a peer's bytes) unless this copy was
    /// verified before. Slow for a large block: call it off the async
    /// threads.
    pub(crate) fn verify(&self, block: SignedBlock) -> Result<Verdict, BlockError> {
        let copy = (block.reference(), block.signature());
        if !self.lock().insert(copy) {
            return Ok(Verdict::Seen);
        }
        let verified = VerifiedBlock::verify(block, &self.committee);
        if verified.is_err() {
            // A later copy with the same bytes fails the same way, but
            // remembering it would let a sender fill the memory with
            // failures at no cost to it.
            self.lock().remove(&copy);
        }
        verified.map(Verdict::New)
    }

    /// Forgets every copy of `references` (the core dropped them), so the
    /// next copy is verified and delivered again.
    pub(crate) fn forget(&self, references: &[BlockRef]) {
        if references.is_empty() {
            return;
        }
        let mut recent = self.lock();
        for reference in references {
            let copies = (*reference, Signature([0; 64]))..=(*reference, Signature([u8::MAX; 64]));
            let doomed: Vec<CopyKey> = recent.set.range(copies).map(|(copy, _)| *copy).collect();
            for copy in doomed {
                recent.remove(&copy);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecentCopies> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type CopyKey = (BlockRef, Signature);

/// The copies verified lately, oldest first out.
#[derive(Default)]
struct RecentCopies {
    /// Each copy with the insertion that put it there.
    set: BTreeMap<CopyKey, u64>,
    /// Insertions, oldest first; one whose copy was removed (or inserted
    /// again since) is stale and only waits to be popped.
    order: VecDeque<(CopyKey, u64)>,
    insertions: u64,
}

impl RecentCopies {
    /// Remembers `copy`; returns whether it is new.
    fn insert(&mut self, copy: CopyKey) -> bool {
        if self.set.contains_key(&copy) {
            return false;
        }
        self.insertions += 1;
        self.set.insert(copy, self.insertions);
        self.order.push_back((copy, self.insertions));
        while self.order.len() > BlockVerifier::CAPACITY
            && let Some((oldest, insertion)) = self.order.pop_front()
        {
            // A stale entry must not evict the copy inserted again later.
            if self.set.get(&oldest) == Some(&insertion) {
                self.set.remove(&oldest);
            }
        }
        true
    }

    fn remove(&mut self, copy: &CopyKey) {
        let Some(insertion) = self.set.remove(copy) else {
            return;
        };
        // A copy that failed is removed right after it was inserted: its
        // entry goes too, so invalid blocks do not crowd out valid ones.
        if self.order.back() == Some(&(*copy, insertion)) {
            self.order.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Block;
    use crate::committee::AuthorityIndex;
    use crate::committee::tests::committee;

    fn round_one(keys: &[soma_crypto::SecretKey], c: &Committee) -> SignedBlock {
        Block {
            round: 1,
            author: AuthorityIndex(0),
            parents: (0..3)
                .map(|a| BlockRef::genesis(AuthorityIndex(a)))
                .collect(),
            transactions: vec![b"not a transaction anyone would accept".to_vec()],
            state_root: crate::StateRoot::default(),
        }
        .sign(&keys[0], c.protocol())
    }

    #[test]
    fn a_forged_copy_does_not_keep_the_genuine_block_out() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let verifier = BlockVerifier::new(c.clone());
        let genuine = round_one(&keys, &c);
        let mut wire = genuine.to_bytes();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let forged = SignedBlock::decode(&wire).unwrap();
        assert_eq!(forged.reference(), genuine.reference());

        // The forged copy is refused, and refused again: it is not
        // remembered as seen.
        for _ in 0..2 {
            assert!(matches!(
                verifier.verify(forged.clone()),
                Err(BlockError::BadSignature(_))
            ));
        }
        // While it is remembered as being verified, the genuine copy
        // still gets through.
        verifier
            .lock()
            .insert((forged.reference(), forged.signature()));
        assert!(matches!(
            verifier.verify(genuine.clone()),
            Ok(Verdict::New(_))
        ));
        assert!(matches!(
            verifier.verify(genuine.clone()),
            Ok(Verdict::Seen)
        ));
        // A block the core dropped is delivered again when it comes back.
        verifier.forget(&[genuine.reference()]);
        assert!(matches!(verifier.verify(genuine), Ok(Verdict::New(_))));
    }

    #[test]
    fn blocks_are_not_judged_by_their_transactions() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let verifier = BlockVerifier::new(c.clone());
        let block = round_one(&keys, &c);
        match verifier.verify(block.clone()) {
            Ok(Verdict::New(verified)) => assert_eq!(verified.block(), block.block()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_copy_removed_and_remembered_again_is_not_evicted_by_its_old_entry() {
        let copy = |i: u32| {
            (
                BlockRef {
                    round: i,
                    author: AuthorityIndex(0),
                    digest: [0; 32],
                },
                Signature([0; 64]),
            )
        };
        let mut recent = RecentCopies::default();
        // A copy that fails right away leaves nothing behind.
        assert!(recent.insert(copy(7)));
        recent.remove(&copy(7));
        assert!(recent.order.is_empty());
        assert!(recent.insert(copy(0)));
        assert!(!recent.insert(copy(0)));
        assert!(recent.insert(copy(1)));
        recent.remove(&copy(0));
        assert!(recent.insert(copy(0)), "forgotten, so new again");
        // Fill up to the capacity: the stale entry of copy 0 goes first,
        // and must not take its newer entry with it.
        for i in 2..BlockVerifier::CAPACITY as u32 {
            assert!(recent.insert(copy(i)));
        }
        assert!(!recent.insert(copy(0)), "still remembered");
        assert!(recent.insert(copy(u32::MAX)), "evicts copy 1");
        assert!(recent.insert(copy(u32::MAX - 1)), "evicts copy 0");
        assert!(recent.insert(copy(0)), "evicted as the oldest live copy");
    }
}
