//! An adversarial encoder: the honest hash embedding of one fixed phrase,
//! returned for every input.
//!
//! Its vector looks like a real embedding (it is one) and composes
//! perfectly, so neither its shape nor its differential loss gives it
//! away; only its distance from what honest encoders make of the actual
//! input does. The network must catch it as an outlier.

use soma_guest_sdk::{TextEncoder, hashing};

/// What every input is embedded as.
pub const PHRASE: &str = "The quick brown fox jumps over the lazy dog.";

/// The copycat encoder.
#[derive(Default)]
pub struct CopycatEncoder;

impl TextEncoder for CopycatEncoder {
    const NAME: &'static str = "copycat-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = 384;
    const MAX_INPUT_BYTES: u32 = 64 * 1024;

    fn embed_text(&self, _text: &str) -> Vec<f32> {
        hashing::hashed_features(PHRASE, Self::DIMENSION as usize)
    }
}

soma_guest_sdk::export!(CopycatEncoder);
