//! What peers send a validator's consensus, on arbitrary bytes: never a
//! panic; blocks, fetch and rounds requests and commit records that decode
//! re-encode to the same bytes (the encodings are canonical); no garbage
//! verifies as a block of the committee; commit records that chain to
//! their last digest make a checkpoint ending there, others are refused.

use soma_consensus::network::{FetchRequest, RoundsRequest, decode_blocks, encode_blocks};
use soma_consensus::{
    AuthorityIndex, Block, BlockRef, Checkpoint, CommitRecord, Committee, NO_COMMIT, Protocol,
    SignedBlock, StateRoot, VerifiedBlock, decode_records, encode_records,
};
use std::sync::OnceLock;

fn protocol() -> Protocol {
    Protocol::new([7; 32])
}

/// The four validators of keys 0..4, equal stake.
fn committee() -> &'static Committee {
    static COMMITTEE: OnceLock<Committee> = OnceLock::new();
    COMMITTEE.get_or_init(|| {
        let members = (0..4).map(|i| (crate::key(i).public_key(), 1)).collect();
        Committee::new(members, protocol()).expect("four distinct keys")
    })
}

/// Checks one input.
pub fn check(bytes: &[u8]) {
    if let Ok(block) = SignedBlock::decode(bytes) {
        assert_eq!(block.to_bytes(), bytes, "block decoding is not canonical");
        if let Ok(verified) = VerifiedBlock::verify(block.clone(), committee()) {
            // Only a block signed by its author's key verifies: re-signing
            // what decoded reproduces it exactly (ed25519 is deterministic).
            let author = verified.block().author;
            let signed = block
                .block()
                .clone()
                .sign(&crate::key(author.0 as u8), &protocol());
            assert_eq!(
                signed.to_bytes(),
                bytes,
                "a block verified without its author's signature"
            );
        }
    }
    if let Ok(request) = FetchRequest::decode(bytes) {
        assert_eq!(
            request.encode(),
            bytes,
            "fetch request decoding is not canonical"
        );
    }
    if let Ok(request) = RoundsRequest::decode(bytes) {
        assert_eq!(
            request.encode(),
            bytes,
            "rounds request decoding is not canonical"
        );
    }
    if let Ok(blocks) = decode_blocks(bytes) {
        assert_eq!(
            encode_blocks(blocks),
            bytes,
            "a block list does not re-encode"
        );
    }
    if let Ok(records) = decode_records(bytes) {
        assert_eq!(
            encode_records(&records),
            bytes,
            "commit records do not re-encode"
        );
        if let Some(last) = records.last() {
            let trusted = last.digest();
            if let Ok(checkpoint) = Checkpoint::verify(records.clone(), trusted, 3) {
                assert_eq!(checkpoint.last_index(), last.index);
            }
        }
    }
}

/// A genuine round-1 block, a fetch request, a rounds request and a fetch
/// answer.
pub fn seeds() -> Vec<Vec<u8>> {
    let block = Block {
        round: 1,
        author: AuthorityIndex(0),
        parents: (0..4)
            .map(|i| BlockRef::genesis(AuthorityIndex(i)))
            .collect(),
        transactions: vec![b"a transaction".to_vec(), vec![]],
        state_root: StateRoot {
            commits: 3,
            root: [5; 32],
        },
    }
    .sign(&crate::key(0), &protocol());
    let block = block.to_bytes();
    let fetch = FetchRequest {
        references: vec![BlockRef::genesis(AuthorityIndex(1))],
        known_rounds: vec![0, 1, 0, 2],
    };
    let leader = BlockRef {
        round: 2,
        author: AuthorityIndex(1),
        digest: [3; 32],
    };
    let first = CommitRecord {
        index: 0,
        leader,
        blocks: vec![BlockRef::genesis(AuthorityIndex(0)), leader],
        previous: NO_COMMIT,
    };
    let second = CommitRecord {
        index: 1,
        leader: BlockRef { round: 4, ..leader },
        blocks: vec![BlockRef { round: 4, ..leader }],
        previous: first.digest(),
    };
    vec![
        block.clone(),
        fetch.encode(),
        RoundsRequest { from: 12 }.encode(),
        encode_blocks([block.as_slice(), block.as_slice()]),
        encode_records(&[first, second]),
    ]
}
