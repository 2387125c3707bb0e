//! What peers send a validator's consensus, on arbitrary bytes: never a
//! panic; blocks, fetch and rounds requests that decode re-encode to the
//! same bytes (the encodings are canonical); no garbage verifies as a
//! block of the committee.

use soma_consensus::network::{FetchRequest, RoundsRequest, decode_blocks, encode_blocks};
use soma_consensus::{
    AuthorityIndex, Block, BlockRef, Committee, Protocol, SignedBlock, StateRoot, VerifiedBlock,
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
    vec![
        block.clone(),
        fetch.encode(),
        RoundsRequest { from: 12 }.encode(),
        encode_blocks([block.as_slice(), block.as_slice()]),
    ]
}
