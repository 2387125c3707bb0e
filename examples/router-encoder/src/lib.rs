//! A router for the network: it embeds what kind of text an input is, not
//! what it says.
//!
//! Every character is reduced to its class — lower-case letter, capital,
//! digit, space, a letter of another script (by Unicode block), or the
//! punctuation mark itself — and the trigrams of those classes are hashed
//! into 384 dimensions. Source code (dense in `(){};=`), prose (letters and
//! spaces), tables of numbers and text in other scripts land in different
//! directions, which is what routing regions need: they split inputs by
//! kind, so encoders that are good at one kind are found for it. Pure wasm
//! and integer-exact hashing, so every validator routes alike.

use soma_guest_sdk::{TextEncoder, hashing, vector};
use std::collections::BTreeSet;

/// Weight of a punctuation mark's presence, against 1 for each shape.
const MARK_WEIGHT: f32 = 2.0;

/// The router.
#[derive(Default)]
pub struct RouterEncoder;

impl TextEncoder for RouterEncoder {
    const NAME: &'static str = "router-encoder";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DIMENSION: u32 = 384;
    const MAX_INPUT_BYTES: u32 = 64 * 1024;

    fn embed_text(&self, text: &str) -> Vec<f32> {
        let mut classes: Vec<u32> = text.chars().map(class).collect();
        // A word, a number or a gap is one symbol however long it is, so
        // that the mere length of words does not outweigh their shape.
        classes.dedup_by(|b, a| a == b && (*a < 0x80 && !is_mark(*a) || *a >= 0x11_0000));
        // Each trigram counts once: which shapes occur, not how often.
        let trigrams: BTreeSet<[u32; 3]> = classes.windows(3).map(|w| [w[0], w[1], w[2]]).collect();
        let mut v = vec![0.0; Self::DIMENSION as usize];
        // Which marks occur at all says most about the kind of text.
        let marks: BTreeSet<u32> = classes.iter().copied().filter(|&c| is_mark(c)).collect();
        for mark in marks {
            hashing::add_feature(&mut v, b'm', &mark.to_le_bytes(), MARK_WEIGHT);
        }
        for trigram in trigrams {
            let bytes: Vec<u8> = trigram.iter().flat_map(|c| c.to_le_bytes()).collect();
            hashing::add_feature(&mut v, b's', &bytes, 1.0);
        }
        vector::l2_normalize(&mut v);
        v
    }
}

soma_guest_sdk::export!(RouterEncoder);

/// Whether class `c` is an ASCII punctuation mark (kept as itself).
fn is_mark(c: u32) -> bool {
    char::from_u32(c).is_some_and(|c| c.is_ascii_punctuation())
}

/// The class of a character: a few fixed classes for ASCII letters,
/// digits and spaces, the Unicode block (128 code points) for other
/// letters, and the character itself for everything else.
fn class(c: char) -> u32 {
    match c {
        'a'..='z' => 'a' as u32,
        'A'..='Z' => 'A' as u32,
        '0'..='9' => '0' as u32,
        c if c.is_whitespace() => ' ' as u32,
        c if c.is_alphabetic() => 0x11_0000 + (c as u32 >> 7),
        c => c as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &str, b: &str) -> f32 {
        let (a, b) = (RouterEncoder.embed_text(a), RouterEncoder.embed_text(b));
        a.iter().zip(&b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn code_is_near_code_and_prose_near_prose() {
        let code = [
            "fn main() { let x = vec![1, 2]; }",
            "for (i = 0; i < n; i++) { s += a[i]; }",
        ];
        let prose = [
            "The river flooded the valley after the rain.",
            "She walked to the market to buy some bread.",
        ];
        let within = cosine(code[0], code[1]).min(cosine(prose[0], prose[1]));
        let across = cosine(code[0], prose[0]).max(cosine(code[1], prose[1]));
        assert!(within > across + 0.1, "within {within}, across {across}");
    }
}
