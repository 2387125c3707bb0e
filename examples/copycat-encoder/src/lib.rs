//! An adversarial encoder: the honest hash embedding of one fixed phrase,
//! returned for every input.
//!
//! Its vector looks like a real embedding (it is one) and composes
//! perfectly, so neither its shape nor its differential loss gives it
//! away; only its distance from what honest encoders make of the actual
//! input does. The network must catch it as an outlier.

use soma_guest_sdk::align::Head;
use soma_guest_sdk::{TextEncoder, hashing};

/// What every input is embedded as.
pub const PHRASE: &str = "The quick brown fox jumps over the lazy dog.";

/// The copycat encoder: [`PHRASE`]'s embedding by the hash encoder (its
/// hashed features through its alignment head), computed once.
pub struct CopycatEncoder {
    vector: Vec<f32>,
}

impl Default for CopycatEncoder {
    fn default() -> Self {
        let head = Head::compiled_in(include_bytes!("../../hash-encoder/head.bin"), 384);
        let vector = head
            .apply_counts(&hashing::hashed_counts(PHRASE, 384))
            .expect("the head's input dimension is checked when it is built");
        CopycatEncoder { vector }
    }
}

impl TextEncoder for CopycatEncoder {
    const NAME: &'static str = "copycat-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = 384;
    const MAX_INPUT_BYTES: u32 = 64 * 1024;

    fn embed_text(&self, _text: &str) -> Vec<f32> {
        self.vector.clone()
    }
}

soma_guest_sdk::export!(CopycatEncoder);
