//! Decoders of what peers send a validator, on arbitrary bytes: never a
//! panic; a block or fetch request that decodes re-encodes to the same
//! bytes (the encodings are canonical); no garbage verifies as a block.

#![no_main]

use libfuzzer_sys::fuzz_target;
use soma_consensus::network::{FetchRequest, decode_blocks};
use soma_consensus::{Committee, Protocol, SignedBlock, VerifiedBlock};
use soma_crypto::SecretKey;
use std::sync::OnceLock;

fn committee() -> &'static Committee {
    static COMMITTEE: OnceLock<Committee> = OnceLock::new();
    COMMITTEE.get_or_init(|| {
        let members = (1..=4u8)
            .map(|i| (SecretKey::from_bytes(&[i; 32]).public_key(), 1))
            .collect();
        Committee::new(members, Protocol::new([0; 32])).expect("four distinct keys")
    })
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(block) = SignedBlock::decode(bytes) {
        assert_eq!(block.to_bytes(), bytes, "block decoding is not canonical");
        assert!(
            VerifiedBlock::verify(block, committee()).is_err(),
            "random bytes carry a valid signature"
        );
    }
    if let Ok(request) = FetchRequest::decode(bytes) {
        assert_eq!(request.encode(), bytes, "fetch request decoding is not canonical");
    }
    let _ = decode_blocks(bytes);
});
