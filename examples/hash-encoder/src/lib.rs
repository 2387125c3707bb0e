//! A pure-WebAssembly text encoder: signed feature hashing.
//!
//! Every lower-cased word and every character trigram of a word (with `<`
//! and `>` marking its edges) is hashed to one of 384 dimensions and adds
//! ±weight there; the sum is L2-normalised. Texts that share words or word
//! pieces share dimensions, so paraphrases land closer together than
//! unrelated texts, with no model at all. It is the reference for what an
//! encoder component costs when it does all its work in wasm.

use soma_guest_sdk::{TextEncoder, hashing};

/// Output dimension: the network's embedding space.
pub const DIMENSION: usize = 384;

/// Largest input accepted, in bytes.
pub const MAX_INPUT_BYTES: u32 = 64 * 1024;

/// The hash encoder; stateless.
#[derive(Default)]
pub struct HashEncoder;

impl TextEncoder for HashEncoder {
    const NAME: &'static str = "hash-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = DIMENSION as u32;
    const MAX_INPUT_BYTES: u32 = MAX_INPUT_BYTES;

    fn embed_text(&self, text: &str) -> Vec<f32> {
        embed_text(text)
    }
}

soma_guest_sdk::export!(HashEncoder);

/// Embeds one text.
pub fn embed_text(text: &str) -> Vec<f32> {
    hashing::hashed_features(text, DIMENSION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use soma_guest_sdk::{EncodeError, Encoder};

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn unit_length_and_dimension() {
        let v = embed_text("Hello, wörld! Ünïcode is lower-cased.");
        assert_eq!(v.len(), DIMENSION);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn non_utf8_input_is_rejected_with_its_index() {
        let err = HashEncoder
            .embed(&[b"ok".to_vec(), vec![0xff, 0xfe]])
            .unwrap_err();
        match err {
            EncodeError::InvalidInput(i) => assert_eq!(i.index, 1),
            other => panic!("unexpected {other:?}"),
        }
    }
}
