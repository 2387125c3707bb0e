//! Blocks: what each validator proposes once per round.
//!
//! ```text
//! block    = "SOMABLK1" ‖ u32 round ‖ u32 author ‖ u16 parent count ‖ parent*
//!            ‖ u32 transaction count ‖ (u32 length ‖ bytes)* ‖ state root (32)
//! parent   = u32 round ‖ u32 author ‖ digest (32)
//! wire     = block ‖ signature (64)
//! ```
//!
//! Integers are little-endian; decoding is canonical (it refuses anything
//! [`Block::encode`] would not produce) and checks every length against a
//! limit before allocating. A block's digest is the blake3 of its encoding;
//! its signature is the author's, in [`Domain::Block`], over
//! `chain id ‖ u64 epoch ‖ digest` (see [`Protocol`]), so a block signed
//! for one network or epoch verifies in no other.
//!
//! Round 0 holds one genesis block per validator. They are implied by the
//! committee (fixed content, so fixed digests) and never signed or sent:
//! every validator starts with all of them.

use crate::committee::{AuthorityIndex, Committee, Protocol, StakeAggregator};
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};
use soma_crypto::{Domain, SecretKey, Signature};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A consensus round; round 0 holds the genesis blocks.
pub type Round = u32;

/// Most transactions in a block.
pub const MAX_TRANSACTIONS: usize = 10_000;
/// Largest transaction, in bytes.
pub const MAX_TRANSACTION_BYTES: usize = 64 * 1024;
/// Largest encoded block, in bytes.
pub const MAX_BLOCK_BYTES: usize = 4 << 20;

const MAGIC: &[u8; 8] = b"SOMABLK1";

/// Names a block: who proposed it, in which round, and its digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockRef {
    /// Round of the block.
    pub round: Round,
    /// Its author.
    pub author: AuthorityIndex,
    /// blake3 of its encoding.
    pub digest: [u8; 32],
}

impl BlockRef {
    /// Bytes of a reference's wire form: round, author, digest.
    pub const ENCODED_BYTES: usize = 4 + 4 + 32;

    /// The reference of `author`'s genesis block.
    pub fn genesis(author: AuthorityIndex) -> BlockRef {
        BlockRef {
            round: 0,
            author,
            digest: *blake3::hash(&Block::genesis(author).encode()).as_bytes(),
        }
    }

    /// The smallest reference of `round`: ranges from it cover the round
    /// and every later one.
    pub fn first_of_round(round: Round) -> BlockRef {
        BlockRef {
            round,
            author: AuthorityIndex(0),
            digest: [0; 32],
        }
    }

    /// The key bytes that sort like the reference: round and author
    /// big-endian, then the digest.
    pub fn to_key(&self) -> [u8; 40] {
        let mut key = [0; 40];
        key[..4].copy_from_slice(&self.round.to_be_bytes());
        key[4..8].copy_from_slice(&self.author.0.to_be_bytes());
        key[8..].copy_from_slice(&self.digest);
        key
    }
}

impl fmt::Debug for BlockRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = hex::encode(&self.digest[..4]);
        write!(f, "B{}({},{short})", self.round, self.author.0)
    }
}

/// Why a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The bytes are not a block.
    #[error("malformed block: {0}")]
    Malformed(String),
    /// A length exceeds its limit.
    #[error("{field} is {size}, over the limit of {max}")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The author is not in the committee.
    #[error("author {0} is not in the committee")]
    UnknownAuthor(u32),
    /// The signature does not verify under the author's key.
    #[error("signature of {0:?} does not verify")]
    BadSignature(BlockRef),
    /// The parents break the DAG rules.
    #[error("parents of {block:?}: {reason}")]
    InvalidParents {
        /// The block.
        block: BlockRef,
        /// Which rule.
        reason: String,
    },
}

/// The content of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Its round.
    pub round: Round,
    /// Its author.
    pub author: AuthorityIndex,
    /// Blocks of earlier rounds it references, sorted by (round, author).
    pub parents: Vec<BlockRef>,
    /// Opaque transaction bytes, in the author's order.
    pub transactions: Vec<Vec<u8>>,
    /// The author's state after the last commit it applied.
    pub state_root: StateRoot,
}

/// A validator's executed state as its blocks carry it: the state root
/// after applying the first `commits` commits. Consensus only carries it;
/// the node compares it with its own to detect divergence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateRoot {
    /// How many commits were applied (0: none yet, no claim).
    pub commits: u64,
    /// The state root after them.
    pub root: [u8; 32],
}

/// A block with its author's signature, as it travels and is stored.
/// Cheap to clone: a block of megabytes is handed to the store, the DAG
/// and fetch answers without being copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBlock {
    block: Arc<Block>,
    encoding: Arc<[u8]>,
    signature: Signature,
    reference: BlockRef,
}

impl Block {
    /// The genesis block of `author`.
    pub fn genesis(author: AuthorityIndex) -> Block {
        Block {
            round: 0,
            author,
            parents: vec![],
            transactions: vec![],
            state_root: StateRoot::default(),
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.u32(self.round);
        w.u32(self.author.0);
        w.count16(self.parents.len());
        for parent in &self.parents {
            parent.encode(&mut w);
        }
        w.count32(self.transactions.len());
        for tx in &self.transactions {
            w.bytes32(tx);
        }
        w.u64(self.state_root.commits);
        w.array(&self.state_root.root);
        w.into_bytes()
    }

    /// Parses a canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Block, BlockError> {
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(BlockError::TooLarge {
                field: "block",
                size: bytes.len(),
                max: MAX_BLOCK_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        if r.take(8, "magic")? != MAGIC {
            return Err(BlockError::Malformed("bad magic bytes".into()));
        }
        let round = r.u32("round")?;
        let author = AuthorityIndex(r.u32("author")?);
        // A count the input cannot hold is refused before anything is
        // allocated for it.
        let parent_count = r.count16("parents", u16::MAX, BlockRef::ENCODED_BYTES)?;
        let mut parents = Vec::with_capacity(parent_count);
        for _ in 0..parent_count {
            parents.push(BlockRef::decode(&mut r)?);
        }
        if parents
            .windows(2)
            .any(|w| (w[0].round, w[0].author) >= (w[1].round, w[1].author))
        {
            return Err(BlockError::Malformed(
                "parents are not sorted by (round, author) without repeats".into(),
            ));
        }
        let tx_count = r.count32("transaction count", MAX_TRANSACTIONS as u32, 4)?;
        let mut transactions = Vec::with_capacity(tx_count);
        for _ in 0..tx_count {
            transactions.push(
                r.bytes32("transaction", MAX_TRANSACTION_BYTES as u32)?
                    .to_vec(),
            );
        }
        let state_root = StateRoot {
            commits: r.u64("applied commits")?,
            root: r.array("state root")?,
        };
        if !r.is_empty() {
            return Err(BlockError::Malformed(format!(
                "{} bytes after the state root",
                r.remaining()
            )));
        }
        Ok(Block {
            round,
            author,
            parents,
            transactions,
            state_root,
        })
    }

    /// Signs the block as `key` (which must be its author's) for the
    /// chain and epoch of `protocol`.
    pub fn sign(self, key: &SecretKey, protocol: &Protocol) -> SignedBlock {
        let encoding = self.encode();
        let unsigned = SignedBlock::assemble(self, encoding.into(), Signature([0; 64]));
        let signature = key.sign(Domain::Block, &unsigned.signed_message(protocol));
        SignedBlock {
            signature,
            ..unsigned
        }
    }
}

impl SignedBlock {
    fn assemble(block: Block, encoding: Arc<[u8]>, signature: Signature) -> SignedBlock {
        let reference = BlockRef {
            round: block.round,
            author: block.author,
            digest: *blake3::hash(&encoding).as_bytes(),
        };
        SignedBlock {
            block: Arc::new(block),
            encoding,
            signature,
            reference,
        }
    }

    /// What the author signs: the block's digest bound to a chain and an
    /// epoch (the digest already covers every byte of the block).
    fn signed_message(&self, protocol: &Protocol) -> [u8; 72] {
        let mut message = [0; 72];
        message[..32].copy_from_slice(&protocol.chain_id);
        message[32..40].copy_from_slice(&protocol.epoch.to_le_bytes());
        message[40..].copy_from_slice(&self.reference.digest);
        message
    }

    /// Parses wire bytes; checks the form only (see [`VerifiedBlock::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<SignedBlock, BlockError> {
        let Some(split) = bytes.len().checked_sub(64) else {
            return Err(BlockError::Malformed("shorter than a signature".into()));
        };
        let (encoding, signature) = bytes.split_at(split);
        let block = Block::decode(encoding)?;
        let signature = Signature(signature.try_into().expect("64 bytes"));
        Ok(SignedBlock::assemble(block, Arc::from(encoding), signature))
    }

    /// The wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.encoding[..], &self.signature.0].concat()
    }

    /// The length of [`SignedBlock::to_bytes`].
    pub fn wire_size(&self) -> usize {
        self.encoding.len() + self.signature.0.len()
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// Its reference.
    pub fn reference(&self) -> BlockRef {
        self.reference
    }

    /// The author's signature.
    pub fn signature(&self) -> Signature {
        self.signature
    }

    /// Checks everything that can be checked without the rest of the DAG
    /// (see [`VerifiedBlock::verify`]).
    fn verify(&self, committee: &Committee) -> Result<(), BlockError> {
        let block = &self.block;
        let key = committee
            .key(block.author)
            .ok_or(BlockError::UnknownAuthor(block.author.0))?;
        let message = self.signed_message(committee.protocol());
        key.verify(Domain::Block, &message, &self.signature)
            .map_err(|_| BlockError::BadSignature(self.reference))?;
        let invalid = |reason: &str| {
            Err(BlockError::InvalidParents {
                block: self.reference,
                reason: reason.to_string(),
            })
        };
        if block.round == 0 {
            return invalid("genesis blocks are implied by the committee, never sent");
        }
        if block.parents.iter().any(|p| p.round >= block.round) {
            return invalid("a parent is not from an earlier round");
        }
        // Whether an old parent is still held differs between validators;
        // a bound on age makes validity the same everywhere. Genesis
        // blocks are held by all, so they stay allowed at any age.
        let gc_depth = committee.protocol().gc_depth;
        if block
            .parents
            .iter()
            .any(|p| p.round > 0 && block.round - p.round > gc_depth)
        {
            return invalid("a parent is more than gc_depth rounds older than the block");
        }
        if block
            .parents
            .iter()
            .any(|p| committee.key(p.author).is_none())
        {
            return invalid("a parent's author is not in the committee");
        }
        if block
            .parents
            .iter()
            .any(|p| p.round == 0 && *p != BlockRef::genesis(p.author))
        {
            return invalid("a round-0 parent is not a genesis block");
        }
        let mut authors = StakeAggregator::new();
        if !block
            .parents
            .iter()
            .all(|p| authors.add(p.author, committee))
        {
            return invalid("two parents by the same author");
        }
        if !block.parents.iter().any(|p| p.author == block.author) {
            return invalid("the author's own previous block is missing");
        }
        let mut previous_round = StakeAggregator::new();
        for parent in block.parents.iter().filter(|p| p.round + 1 == block.round) {
            previous_round.add(parent.author, committee);
        }
        if !previous_round.reached_quorum(committee) {
            return invalid("less than a quorum of stake from the previous round");
        }
        Ok(())
    }
}

/// A block that passed every check that needs no other block: only these
/// enter the DAG. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBlock(Arc<SignedBlock>);

impl VerifiedBlock {
    /// Verifies `block` for `committee`: the author is a member and signed
    /// it for the committee's chain and epoch; it is not a genesis block;
    /// it references only earlier rounds, none more than the protocol's
    /// `gc_depth` below its own (genesis blocks aside), genesis blocks as
    /// they are, at most one block per author, its
    /// author's own previous block, and a quorum of stake from the round
    /// just before it.
    pub fn verify(block: SignedBlock, committee: &Committee) -> Result<VerifiedBlock, BlockError> {
        block.verify(committee)?;
        Ok(VerifiedBlock(Arc::new(block)))
    }

    /// Signs `block` as `key`. The caller builds it by the rules, so it is
    /// not checked again.
    pub(crate) fn sign_own(block: Block, key: &SecretKey, committee: &Committee) -> VerifiedBlock {
        VerifiedBlock(Arc::new(block.sign(key, committee.protocol())))
    }
}

impl Deref for VerifiedBlock {
    type Target = SignedBlock;

    fn deref(&self) -> &SignedBlock {
        &self.0
    }
}

impl Encode for BlockRef {
    fn encode(&self, w: &mut Writer) {
        w.u32(self.round);
        w.u32(self.author.0);
        w.array(&self.digest);
    }
}

impl Decode<'_> for BlockRef {
    fn decode(r: &mut Reader<'_>) -> Result<BlockRef, DecodeError> {
        Ok(BlockRef {
            round: r.u32("parent round")?,
            author: AuthorityIndex(r.u32("parent author")?),
            digest: r.array("parent digest")?,
        })
    }
}

impl From<DecodeError> for BlockError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLarge { what, len, max } => BlockError::TooLarge {
                field: what,
                size: usize::try_from(len).unwrap_or(usize::MAX),
                max: usize::try_from(max).unwrap_or(usize::MAX),
            },
            e => BlockError::Malformed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::committee::tests::{committee, protocol};
    use proptest::prelude::*;

    fn genesis(n: u32) -> Vec<BlockRef> {
        (0..n)
            .map(|a| BlockRef::genesis(AuthorityIndex(a)))
            .collect()
    }

    fn round_one(author: u32, parents: &[BlockRef], keys: &[SecretKey]) -> SignedBlock {
        let mut parents = parents.to_vec();
        parents.sort();
        Block {
            round: 1,
            author: AuthorityIndex(author),
            parents,
            transactions: vec![b"transfer 5".to_vec(), vec![]],
            state_root: StateRoot {
                commits: 3,
                root: [7; 32],
            },
        }
        .sign(&keys[author as usize], &protocol())
    }

    #[test]
    fn a_signed_block_round_trips_and_verifies() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let g = genesis(4);
        let block = round_one(0, &g[..3], &keys);
        let decoded = SignedBlock::decode(&block.to_bytes()).unwrap();
        assert_eq!(decoded, block);
        assert_eq!(decoded.verify(&c), Ok(()));
        assert_eq!(
            VerifiedBlock::verify(decoded, &c).unwrap().reference(),
            block.reference()
        );
    }

    #[test]
    fn invalid_blocks_are_refused_with_the_rule_they_break() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let g = genesis(4);
        let parents_error = |b: SignedBlock| match VerifiedBlock::verify(b, &c) {
            Err(BlockError::InvalidParents { reason, .. }) => reason,
            other => panic!("expected invalid parents, got {other:?}"),
        };
        assert!(parents_error(round_one(0, &g[..2], &keys)).contains("quorum"));
        assert!(parents_error(round_one(3, &g[..3], &keys)).contains("own previous block"));
        let mut fake_genesis = g[..3].to_vec();
        fake_genesis[1].digest[0] ^= 1;
        assert!(parents_error(round_one(0, &fake_genesis, &keys)).contains("genesis"));

        let forged = round_one(0, &g[..3], &keys[1..]);
        assert!(matches!(
            forged.verify(&c),
            Err(BlockError::BadSignature(_))
        ));

        let mut wire = round_one(0, &g[..3], &keys).to_bytes();
        wire[12] ^= 1; // the author field
        assert!(matches!(
            SignedBlock::decode(&wire).unwrap().verify(&c),
            Err(BlockError::BadSignature(_))
        ));

        let stranger = Block::genesis(AuthorityIndex(9)).sign(&keys[0], &protocol());
        assert_eq!(stranger.verify(&c), Err(BlockError::UnknownAuthor(9)));

        let sent_genesis = Block::genesis(AuthorityIndex(0)).sign(&keys[0], &protocol());
        assert!(parents_error(sent_genesis).contains("genesis"));
    }

    #[test]
    fn a_block_verifies_only_on_the_chain_and_epoch_it_was_signed_for() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let block = round_one(0, &genesis(4)[..3], &keys);
        let members: Vec<_> = c.authorities().map(|a| (*c.key(a).unwrap(), 1)).collect();
        let p = protocol();
        for other in [
            Protocol {
                chain_id: [1; 32],
                ..p
            },
            Protocol { epoch: 1, ..p },
        ] {
            let elsewhere = Committee::new(members.clone(), other).unwrap();
            assert_eq!(
                block.verify(&elsewhere),
                Err(BlockError::BadSignature(block.reference()))
            );
        }
        assert_eq!(block.verify(&c), Ok(()));
    }

    #[test]
    fn a_parent_older_than_the_gc_depth_makes_a_block_invalid() {
        let (c, keys) = committee(&[1, 1, 1, 1]);
        let depth = c.protocol().gc_depth;
        let at = |round, author| BlockRef {
            round,
            author: AuthorityIndex(author),
            digest: [round as u8; 32],
        };
        let block = |own_parent: BlockRef| {
            let round = depth + 2;
            let mut parents = vec![
                own_parent,
                at(round - 1, 1),
                at(round - 1, 2),
                at(round - 1, 3),
            ];
            parents.sort();
            Block {
                round,
                author: AuthorityIndex(0),
                parents,
                transactions: vec![],
                state_root: StateRoot::default(),
            }
            .sign(&keys[0], c.protocol())
        };
        // Its own block from exactly gc_depth rounds before is still fine,
        // one round older is not; the genesis block is fine at any age.
        assert_eq!(block(at(2, 0)).verify(&c), Ok(()));
        assert!(matches!(
            block(at(1, 0)).verify(&c),
            Err(BlockError::InvalidParents { reason, .. }) if reason.contains("gc_depth")
        ));
        assert_eq!(
            block(BlockRef::genesis(AuthorityIndex(0))).verify(&c),
            Ok(())
        );
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let (_, keys) = committee(&[1, 1, 1, 1]);
        let g = genesis(4);
        let mut unsorted = round_one(0, &g[..3], &keys).block().clone();
        unsorted.parents.swap(0, 1);
        assert!(matches!(
            Block::decode(&unsorted.encode()),
            Err(BlockError::Malformed(_))
        ));
        let mut trailing = Block::genesis(AuthorityIndex(0)).encode();
        trailing.push(0);
        assert!(matches!(
            Block::decode(&trailing),
            Err(BlockError::Malformed(_))
        ));
        let oversized = Block {
            transactions: vec![vec![0; MAX_TRANSACTION_BYTES + 1]],
            ..Block::genesis(AuthorityIndex(0))
        };
        assert!(matches!(
            Block::decode(&oversized.encode()),
            Err(BlockError::TooLarge {
                field: "transaction",
                ..
            })
        ));
    }

    #[test]
    fn keys_sort_like_references() {
        let mut refs = genesis(3);
        refs.push(BlockRef {
            round: 1,
            author: AuthorityIndex(0),
            digest: [0; 32],
        });
        refs.push(BlockRef {
            round: 256,
            author: AuthorityIndex(0),
            digest: [0; 32],
        });
        let mut by_key = refs.clone();
        by_key.sort_by_key(|r| r.to_key());
        refs.sort();
        assert_eq!(by_key, refs);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SignedBlock::decode(&bytes);
            let mut prefixed = MAGIC.to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = SignedBlock::decode(&prefixed);
        }

        #[test]
        fn a_mutated_block_never_verifies(index in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let (c, keys) = committee(&[1, 1, 1, 1]);
            let mut wire = round_one(0, &genesis(4)[..3], &keys).to_bytes();
            let i = index.index(wire.len());
            wire[i] ^= xor;
            let verified = SignedBlock::decode(&wire).map(|b| b.verify(&c));
            prop_assert!(!matches!(verified, Ok(Ok(()))));
        }
    }
}
