//! An encoder for routing experiments: as good as the hash encoder on
//! source code, noisy on prose.
//!
//! On text that looks like code (many of `{}()[];=<>`) it returns exactly
//! the hash encoder's vector (hashed features through the hash encoder's
//! alignment head). On anything else it adds to that vector a
//! strong component along one axis picked by hashing the whole text: still
//! near what honest encoders return (it is not an outlier), but its
//! embedding of a text no longer follows from its embeddings of the text's
//! parts, so its differential loss is high and its weight low. Routing
//! should learn to pick it for code and to avoid it for prose.

use soma_guest_sdk::align::Head;
use soma_guest_sdk::{TextEncoder, hashing, vector};

/// Length of the noise added to a prose text's unit vector.
pub const NOISE: f32 = 0.8;

/// The hash encoder's alignment head: on code, this encoder is the hash
/// encoder.
const HEAD: &[u8] = include_bytes!("../../hash-encoder/head.bin");

/// The specialist encoder.
pub struct SpecialistEncoder {
    head: Head,
}

impl Default for SpecialistEncoder {
    fn default() -> Self {
        SpecialistEncoder {
            head: Head::compiled_in(HEAD, Self::DIMENSION as usize),
        }
    }
}

impl TextEncoder for SpecialistEncoder {
    const NAME: &'static str = "specialist-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = 384;
    const MAX_INPUT_BYTES: u32 = 64 * 1024;

    fn embed_text(&self, text: &str) -> Vec<f32> {
        let counts = hashing::hashed_counts(text, Self::DIMENSION as usize);
        let mut v = self
            .head
            .apply_counts(&counts)
            .expect("the head's input dimension is checked when the encoder is built");
        if !looks_like_code(text) {
            hashing::add_feature(&mut v, b'p', text.as_bytes(), NOISE);
            vector::l2_normalize(&mut v);
        }
        v
    }
}

soma_guest_sdk::export!(SpecialistEncoder);

/// Whether at least one in twenty of the text's visible characters is
/// code punctuation.
pub fn looks_like_code(text: &str) -> bool {
    let visible = text.chars().filter(|c| !c.is_whitespace()).count();
    let symbols = text.chars().filter(|c| "{}()[];=<>".contains(*c)).count();
    visible > 0 && symbols * 20 >= visible
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_and_prose_are_told_apart() {
        assert!(looks_like_code("fn main() { let x = vec![1, 2]; }"));
        assert!(looks_like_code("for (i = 0; i < n; i++) sum += a[i];"));
        assert!(!looks_like_code(
            "The committee met on Tuesday to discuss the budget."
        ));
        assert!(!looks_like_code(""));
    }

    #[test]
    fn code_gets_the_hash_embedding_and_prose_a_noisy_one() {
        let code = "let total = items.iter().map(|x| x.price).sum();";
        let specialist = SpecialistEncoder::default();
        let hash = |text| {
            specialist
                .head
                .apply_counts(&hashing::hashed_counts(text, 384))
                .unwrap()
        };
        assert_eq!(specialist.embed_text(code), hash(code));
        let text = "A quiet walk along the river.";
        let honest = hash(text);
        let cosine: f32 = specialist
            .embed_text(text)
            .iter()
            .zip(&honest)
            .map(|(x, y)| x * y)
            .sum();
        assert!((0.6..0.95).contains(&cosine), "{cosine}");
    }
}
