//! Verifies blocks received from peers, once per distinct copy.
//!
//! Every block arrives several times (broadcast, repeats, fetch answers),
//! so verification results are remembered. They are keyed by reference
//! *and* signature: a copy of a genuine block with a forged signature has
//! the genuine block's reference, and keying by reference alone would let
//! it make the genuine copy look like a duplicate while it was verified.
//!
//! A copy counts as seen from the moment its verification starts, so
//! verifying it once is enough, but only as long as it is on its way to
//! the core or there: a verified block whose push was cancelled with its
//! connection still goes to the core if the core has room at once, and
//! is forgotten otherwise (as when the core is gone), or every later copy
//! (repeats, fetch answers) would be taken for a duplicate and the block
//! lost to this node for good.
//!
//! Blocks are never refused for the transactions they carry. Consensus
//! orders opaque bytes; execution checks each committed transaction with
//! a deterministic rule and rejects an invalid one alone. Refusing a whole
//! block for one transaction would let a check that differs between
//! validators (or over time) split them on the block, and its author would
//! resend it forever.

use crate::block::{BlockError, BlockRef, SignedBlock, VerifiedBlock};
use crate::committee::{AuthorityIndex, Committee};
use crate::core_thread::Command;
use soma_crypto::Signature;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Verifies peers' blocks, each distinct copy once, and hands them to the
/// core.
pub(crate) struct BlockVerifier {
    committee: Committee,
    copies: Arc<Copies>,
}

/// The copies remembered, and the core they are verified for.
struct Copies {
    recent: Mutex<RecentCopies>,
    core: mpsc::Sender<Command>,
}

/// What a copy of a block turned out to be.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A block not seen before, now verified, to hand to the core with
    /// [`deliver`].
    New(Fresh),
    /// This copy was verified before (or is on its way to the core).
    Seen,
}

impl BlockVerifier {
    /// How many copies are remembered.
    const CAPACITY: usize = 100_000;

    /// A verifier for the core whose inbox `core` feeds.
    pub(crate) fn new(committee: Committee, core: mpsc::Sender<Command>) -> BlockVerifier {
        BlockVerifier {
            committee,
            copies: Arc::new(Copies {
                recent: Mutex::default(),
                core,
            }),
        }
    }

    /// Verifies `block` (decoded from the bytes of peer `from`, if a peer
    /// sent it) unless this copy was verified before. Call it off the
    /// async threads.
    pub(crate) fn verify(
        &self,
        block: SignedBlock,
        from: Option<AuthorityIndex>,
    ) -> Result<Verdict, BlockError> {
        let copy = (block.reference(), block.signature());
        let Some(insertion) = self.lock().insert(copy) else {
            return Ok(Verdict::Seen);
        };
        // Dropped without a block, on a failure (or a panic), it forgets
        // the copy: a later copy with the same bytes fails the same way,
        // but remembering it would let a sender fill the memory with
        // failures at no cost to it.
        let mut fresh = Fresh {
            block: None,
            delivered: false,
            from,
            copy,
            insertion,
            copies: self.copies.clone(),
        };
        fresh.block = Some(VerifiedBlock::verify(block, &self.committee)?);
        Ok(Verdict::New(fresh))
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
        self.copies.lock()
    }
}

impl Copies {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecentCopies> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A block verified by this node and not yet handed to its core. Dropped
/// before [`deliver`] hands it over (its push cancelled with its
/// connection), it goes to the core if the core has room at once, and its
/// copy is forgotten otherwise, so that the next copy is verified and
/// delivered again.
pub(crate) struct Fresh {
    /// The block, once verified.
    block: Option<VerifiedBlock>,
    /// Whether the core has it.
    delivered: bool,
    from: Option<AuthorityIndex>,
    copy: CopyKey,
    insertion: u64,
    copies: Arc<Copies>,
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh")
            .field("block", &self.copy.0)
            .field("from", &self.from)
            .field("delivered", &self.delivered)
            .finish()
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if self.delivered {
            return;
        }
        let from = self.from;
        let handed_over = self.block.take().is_some_and(|block| {
            let blocks = vec![block];
            self.copies
                .core
                .try_send(Command::Blocks { blocks, from })
                .is_ok()
        });
        if !handed_over {
            self.copies
                .lock()
                .remove_insertion(&self.copy, self.insertion);
        }
    }
}

/// Hands `blocks`, verified for one sender, to the core. Cancelled while
/// it waits for room, each block goes to the core on its own if there is
/// room at once, and is forgotten otherwise; with the core gone, none
/// stays seen.
pub(crate) async fn deliver(mut blocks: Vec<Fresh>) {
    let Some(first) = blocks.first() else {
        return;
    };
    let (core, from) = (first.copies.core.clone(), first.from);
    let verified = blocks.iter().filter_map(|f| f.block.clone()).collect();
    let sent = core.send(Command::Blocks {
        blocks: verified,
        from,
    });
    if sent.await.is_ok() {
        for fresh in &mut blocks {
            fresh.delivered = true;
        }
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
    /// Remembers `copy`; returns its insertion if it is new.
    fn insert(&mut self, copy: CopyKey) -> Option<u64> {
        if self.set.contains_key(&copy) {
            return None;
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
        Some(self.insertions)
    }

    /// Forgets `copy` if `insertion` put it there: a copy evicted and
    /// remembered again since belongs to another verification.
    fn remove_insertion(&mut self, copy: &CopyKey, insertion: u64) {
        if self.set.get(copy) == Some(&insertion) {
            self.remove(copy);
        }
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

    /// A verifier for a core with `room` in its inbox, and that inbox.
    fn verifier(c: &Committee, room: usize) -> (BlockVerifier, mpsc::Receiver<Command>) {
        let (core, inbox) = mpsc::channel(room);
        (BlockVerifier::new(c.clone(), core), inbox)
    }

    #[test]
    fn a_forged_copy_does_not_keep_the_genuine_block_out() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let (verifier, _inbox) = verifier(&c, 1);
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
                verifier.verify(forged.clone(), None),
                Err(BlockError::BadSignature(_))
            ));
        }
        // While it is remembered as being verified, the genuine copy
        // still gets through.
        verifier
            .lock()
            .insert((forged.reference(), forged.signature()));
        assert!(matches!(
            verifier.verify(genuine.clone(), None),
            Ok(Verdict::New(_))
        ));
        // The core had room for it.
        assert!(matches!(
            verifier.verify(genuine.clone(), None),
            Ok(Verdict::Seen)
        ));
        // A block the core dropped is delivered again when it comes back.
        verifier.forget(&[genuine.reference()]);
        assert!(matches!(
            verifier.verify(genuine, None),
            Ok(Verdict::New(_))
        ));
    }

    /// A push cancelled while its block waits for room in the core's
    /// inbox (its connection closed), or a block for a core that is gone,
    /// must not make the next copy look like a duplicate: the block would
    /// never reach the core, and a committee of exactly a quorum would
    /// wait for it forever.
    #[tokio::test]
    async fn a_copy_that_never_reached_the_core_is_verified_and_delivered_again() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let (verifier, mut inbox) = verifier(&c, 1);
        let block = round_one(&keys, &c);
        let from = Some(AuthorityIndex(0));
        let fresh = || match verifier.verify(block.clone(), from) {
            Ok(Verdict::New(fresh)) => fresh,
            other => panic!("{other:?}"),
        };
        let delivered = |command: Option<Command>| match command {
            Some(Command::Blocks { blocks, from: f }) => {
                assert_eq!((blocks[0].block(), f), (block.block(), from));
            }
            None => panic!("nothing delivered"),
        };
        // The core's inbox is full (of a first copy): the next push
        // waits, and is cancelled.
        deliver(vec![fresh()]).await;
        verifier.forget(&[block.reference()]);
        let wait = std::time::Duration::from_millis(20);
        let cancelled = tokio::time::timeout(wait, deliver(vec![fresh()])).await;
        assert!(cancelled.is_err(), "the inbox is full");
        // Forgotten: verified again (meanwhile another copy is taken for
        // one on its way), and this time delivered.
        let again = fresh();
        assert!(matches!(
            verifier.verify(block.clone(), from),
            Ok(Verdict::Seen)
        ));
        delivered(inbox.try_recv().ok());
        deliver(vec![again]).await;
        delivered(inbox.try_recv().ok());
        assert!(matches!(
            verifier.verify(block.clone(), from),
            Ok(Verdict::Seen)
        ));

        // Verified for a push cancelled before its delivery began (the
        // verification ran on, off the async threads): the core has room,
        // so it gets the block all the same.
        verifier.forget(&[block.reference()]);
        drop(fresh());
        delivered(inbox.try_recv().ok());
        assert!(matches!(
            verifier.verify(block.clone(), from),
            Ok(Verdict::Seen)
        ));

        // A core that is gone gets nothing, and the copy is forgotten.
        verifier.forget(&[block.reference()]);
        drop(inbox);
        deliver(vec![fresh()]).await;
        fresh();
    }

    #[test]
    fn blocks_are_not_judged_by_their_transactions() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let (verifier, _inbox) = verifier(&c, 1);
        let block = round_one(&keys, &c);
        match verifier.verify(block.clone(), None) {
            Ok(Verdict::New(verified)) => {
                assert_eq!(verified.block.as_ref().unwrap().block(), block.block())
            }
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
        assert!(recent.insert(copy(7)).is_some());
        recent.remove(&copy(7));
        assert!(recent.order.is_empty());
        let first = recent.insert(copy(0)).unwrap();
        assert!(recent.insert(copy(0)).is_none());
        assert!(recent.insert(copy(1)).is_some());
        recent.remove(&copy(0));
        assert!(recent.insert(copy(0)).is_some(), "forgotten, so new again");
        // The first verification, dropped late, leaves the second's alone.
        recent.remove_insertion(&copy(0), first);
        assert!(recent.insert(copy(0)).is_none());
        // Fill up to the capacity: the stale entry of copy 0 goes first,
        // and must not take its newer entry with it.
        for i in 2..BlockVerifier::CAPACITY as u32 {
            assert!(recent.insert(copy(i)).is_some());
        }
        assert!(recent.insert(copy(0)).is_none(), "still remembered");
        assert!(recent.insert(copy(u32::MAX)).is_some(), "evicts copy 1");
        assert!(recent.insert(copy(u32::MAX - 1)).is_some(), "evicts copy 0");
        assert!(
            recent.insert(copy(0)).is_some(),
            "evicted as the oldest live copy"
        );
    }
}
