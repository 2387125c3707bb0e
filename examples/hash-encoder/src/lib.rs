//! A pure-WebAssembly text encoder: signed feature hashing.
//!
//! Every lower-cased word and every character trigram of a word (with `<`
//! and `>` marking its edges) is hashed to one of 384 dimensions and adds
//! ±weight there; the sum is L2-normalised. Texts that share words or word
//! pieces share dimensions, so paraphrases land closer together than
//! unrelated texts, with no model at all. A linear alignment head, fitted
//! against `minilm-l6` and compiled in, maps that vector into the
//! network's embedding space. It is the reference for what an encoder
//! component costs when it does all its work in wasm.

use soma_guest_sdk::align::Head;
use soma_guest_sdk::{TextEncoder, hashing};

/// Output dimension: the network's embedding space.
pub const DIMENSION: usize = 384;

/// Largest input accepted, in bytes.
pub const MAX_INPUT_BYTES: u32 = 64 * 1024;

/// The alignment head into the network's space (`minilm-l6`), fitted by
/// `cargo xtask align`; none without the `aligned` feature (on by default),
/// which is how the head is fitted.
#[cfg(feature = "aligned")]
pub const HEAD: Option<&[u8]> = Some(include_bytes!("../head.bin"));
/// See above.
#[cfg(not(feature = "aligned"))]
pub const HEAD: Option<&[u8]> = None;

/// The hash encoder: hashed features, through its head.
pub struct HashEncoder {
    head: Option<Head>,
}

impl Default for HashEncoder {
    /// Parses the compiled-in head: at pre-initialisation in the host, so
    /// calls find it ready.
    fn default() -> Self {
        HashEncoder {
            head: HEAD.map(|bytes| Head::compiled_in(bytes, DIMENSION)),
        }
    }
}

impl TextEncoder for HashEncoder {
    const NAME: &'static str = "hash-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = DIMENSION as u32;
    const MAX_INPUT_BYTES: u32 = MAX_INPUT_BYTES;

    fn embed_text(&self, text: &str) -> Vec<f32> {
        match &self.head {
            Some(head) => head
                .apply_counts(&hashing::hashed_counts(text, DIMENSION))
                .expect("the head's input dimension is checked when the encoder is built"),
            None => hashing::hashed_features(text, DIMENSION),
        }
    }
}

soma_guest_sdk::export!(HashEncoder);

#[cfg(test)]
mod tests {
    use super::*;
    use soma_guest_sdk::{EncodeError, Encoder};

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn unit_length_and_dimension() {
        let v = HashEncoder::default().embed_text("Hello, wörld! Ünïcode is lower-cased.");
        assert_eq!(v.len(), DIMENSION);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn non_utf8_input_is_rejected_with_its_index() {
        let err = HashEncoder::default()
            .embed(&[b"ok".to_vec(), vec![0xff, 0xfe]])
            .unwrap_err();
        match err {
            EncodeError::InvalidInput(i) => assert_eq!(i.index, 1),
            other => panic!("unexpected {other:?}"),
        }
    }
}
