//! An encoder for routing experiments: as good as the hash encoder on
//! source code, noise on prose.
//!
//! On text that looks like code (many of `{}()[];=<>`) it returns exactly
//! the hash encoder's vector; on anything else, a vector with one non-zero
//! coordinate picked by hashing the whole text, which neither composes
//! nor agrees with anyone. Routing should learn to pick it for code and to
//! avoid it for prose.

use soma_guest_sdk::{TextEncoder, hashing};

/// The specialist encoder.
#[derive(Default)]
pub struct SpecialistEncoder;

impl TextEncoder for SpecialistEncoder {
    const NAME: &'static str = "specialist-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = 384;
    const MAX_INPUT_BYTES: u32 = 64 * 1024;

    fn embed_text(&self, text: &str) -> Vec<f32> {
        let dimension = Self::DIMENSION as usize;
        if looks_like_code(text) {
            return hashing::hashed_features(text, dimension);
        }
        let mut v = vec![0.0; dimension];
        hashing::add_feature(&mut v, b'p', text.as_bytes(), 1.0);
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
    fn code_gets_the_hash_embedding_and_prose_a_single_coordinate() {
        let code = "let total = items.iter().map(|x| x.price).sum();";
        assert_eq!(
            SpecialistEncoder.embed_text(code),
            hashing::hashed_features(code, 384)
        );
        let prose = SpecialistEncoder.embed_text("A quiet walk along the river.");
        assert_eq!(prose.iter().filter(|x| **x != 0.0).count(), 1);
    }
}
