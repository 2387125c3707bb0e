//! An adversarial encoder: the same unit vector, every coordinate equal,
//! whatever the input.
//!
//! It composes perfectly (the whole is exactly predicted by its parts, so
//! its differential loss is zero) yet says nothing: the network catches it
//! as an outlier from the honest encoders of its shard.

use soma_guest_sdk::TextEncoder;

/// The constant encoder.
#[derive(Default)]
pub struct ConstantEncoder;

impl TextEncoder for ConstantEncoder {
    const NAME: &'static str = "constant-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = 384;
    const MAX_INPUT_BYTES: u32 = 64 * 1024;

    fn embed_text(&self, _text: &str) -> Vec<f32> {
        vec![(1.0 / f64::from(Self::DIMENSION)).sqrt() as f32; Self::DIMENSION as usize]
    }
}

soma_guest_sdk::export!(ConstantEncoder);
