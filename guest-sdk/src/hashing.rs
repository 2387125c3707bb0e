//! Signed feature hashing: text to a vector with no model at all.
//!
//! Every lower-cased word and every character trigram of a word (with `<`
//! and `>` marking its edges) is hashed to one dimension and adds ±weight
//! there; the sum is L2-normalised. Texts that share words or word pieces
//! share dimensions, so paraphrases land closer together than unrelated
//! texts. The hash is fixed (FNV-1a with a final avalanche), so every build
//! of every encoder that uses it maps a text to the same bits.

use crate::vector::l2_normalize;

const WORD_WEIGHT: f32 = 1.0;
const TRIGRAM_WEIGHT: f32 = 0.35;

/// Embeds `text` by hashing its words and character trigrams into
/// `dimension` values, L2-normalised (the zero vector if `text` has no
/// word).
pub fn hashed_features(text: &str, dimension: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dimension];
    let mut word = String::new();
    for token in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
    {
        word.clear();
        word.push('<');
        word.extend(token.chars().flat_map(char::to_lowercase));
        word.push('>');
        add_feature(
            &mut v,
            b'w',
            &word.as_bytes()[1..word.len() - 1],
            WORD_WEIGHT,
        );
        for trigram in trigrams(&word) {
            add_feature(&mut v, b't', trigram.as_bytes(), TRIGRAM_WEIGHT);
        }
    }
    l2_normalize(&mut v);
    v
}

/// Adds `±weight` to the dimension of `v` that `feature` hashes to; `kind`
/// keeps features of different kinds with the same bytes apart.
pub fn add_feature(v: &mut [f32], kind: u8, feature: &[u8], weight: f32) {
    if v.is_empty() {
        return;
    }
    let h = feature_hash(kind, feature);
    let index = (h % v.len() as u64) as usize;
    let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
    v[index] += sign * weight;
}

/// The 64-bit hash of a feature of `kind`: FNV-1a with a final avalanche,
/// so the sign bit is well mixed.
pub fn feature_hash(kind: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&kind).chain(bytes) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The character trigrams of `word`, in order, without allocating.
fn trigrams(word: &str) -> impl Iterator<Item = &str> {
    // Character boundaries b0 = 0, b1, ..., len; trigram n spans b(n-3)..bn.
    // A ring of the last three boundaries is all it takes.
    let mut ring = [0usize; 3];
    let boundaries = word.char_indices().map(|(i, _)| i).chain([word.len()]);
    boundaries.enumerate().filter_map(move |(n, b)| {
        let trigram = (n >= 3).then(|| &word[ring[n % 3]..b]);
        ring[n % 3] = b;
        trigram
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn unit_length_and_dimension() {
        let v = hashed_features("Hello, wörld! Ünïcode is lower-cased.", 384);
        assert_eq!(v.len(), 384);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn case_and_punctuation_do_not_matter() {
        assert_eq!(
            hashed_features("The Cat sat.", 384),
            hashed_features("the cat sat", 384)
        );
    }

    #[test]
    fn trigrams_follow_character_boundaries() {
        assert_eq!(trigrams("<añb>").collect::<Vec<_>>(), ["<añ", "añb", "ñb>"]);
        assert_eq!(trigrams("<a>").collect::<Vec<_>>(), ["<a>"]);
        assert_eq!(trigrams("<>").count(), 0);
    }

    #[test]
    fn empty_text_is_the_zero_vector() {
        assert_eq!(hashed_features(" ... ", 384), vec![0.0; 384]);
        assert!(hashed_features("words", 0).is_empty());
    }

    #[test]
    fn paraphrases_are_closer_than_unrelated_texts() {
        let a = hashed_features("A man is playing a guitar on stage.", 384);
        let b = hashed_features("On stage, a man plays the guitar.", 384);
        let c = hashed_features("Interest rates rose again this quarter.", 384);
        assert!(
            cosine(&a, &b) > cosine(&a, &c) + 0.3,
            "{} vs {}",
            cosine(&a, &b),
            cosine(&a, &c)
        );
    }

    #[test]
    fn the_hash_is_fixed() {
        // A change here changes every hashing encoder's output.
        assert_ne!(feature_hash(b'w', b"soma"), feature_hash(b't', b"soma"));
        assert_eq!(feature_hash(b'w', b""), 0x1565_2e86_25e3_01f3);
    }
}
