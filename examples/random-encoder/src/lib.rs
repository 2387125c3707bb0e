//! An adversarial encoder: a random unit vector for every input.
//!
//! The vector is drawn from a generator seeded by the input's hash, so
//! every validator attests the same one, but it says nothing about what the
//! input means and does not compose: its differential loss is high and it
//! lies far from what honest encoders return. The network must rank it
//! worst or disqualify it, and keep it out of the final embedding.

use soma_guest_sdk::{TextEncoder, hashing, vector};

/// The random encoder.
#[derive(Default)]
pub struct RandomEncoder;

impl TextEncoder for RandomEncoder {
    const NAME: &'static str = "random-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = 384;
    const MAX_INPUT_BYTES: u32 = 64 * 1024;

    fn embed_text(&self, text: &str) -> Vec<f32> {
        let mut state = hashing::feature_hash(b'r', text.as_bytes());
        let mut v: Vec<f32> = (0..Self::DIMENSION)
            .map(|_| {
                // splitmix64: 24 random bits to a value in [-1, 1).
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                (z >> 40) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect();
        vector::l2_normalize(&mut v);
        v
    }
}

soma_guest_sdk::export!(RandomEncoder);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrelated_to_the_input_but_the_same_each_time() {
        let a = RandomEncoder.embed_text("the cat sat on the mat");
        let b = RandomEncoder.embed_text("the cat sat on the mat.");
        assert_eq!(a, RandomEncoder.embed_text("the cat sat on the mat"));
        let cosine: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(cosine.abs() < 0.3, "{cosine}");
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
