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
/// [`WORD_WEIGHT`] and [`TRIGRAM_WEIGHT`] as whole numbers.
const WORD_COUNT: i32 = 20;
const TRIGRAM_COUNT: i32 = 7;

/// Embeds `text` by hashing its words and character trigrams into
/// `dimension` values, L2-normalised (the zero vector if `text` has no
/// word).
pub fn hashed_features(text: &str, dimension: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dimension];
    for_each_feature(text, |kind, feature| {
        let weight = match kind {
            b'w' => WORD_WEIGHT,
            _ => TRIGRAM_WEIGHT,
        };
        add_feature(&mut v, kind, feature, weight)
    });
    l2_normalize(&mut v);
    v
}

/// The same features as [`hashed_features`] before it normalises them,
/// in whole numbers: each word adds ±20 and each trigram ±7 (the same
/// 1 : 0.35). An alignment head sums these exactly, in integers
/// ([`crate::align::Head::apply_counts`]). A count saturates at the `i32`
/// bounds, which a text needs over 150 MB to reach (a byte adds
/// at most some 14).
pub fn hashed_counts(text: &str, dimension: usize) -> Vec<i32> {
    let mut v = vec![0i32; dimension];
    if dimension > 0 {
        for_each_feature(text, |kind, feature| {
            let (index, negative) = bucket(kind, feature, dimension);
            let weight = match kind {
                b'w' => WORD_COUNT,
                _ => TRIGRAM_COUNT,
            };
            v[index] = match negative {
                true => v[index].saturating_sub(weight),
                false => v[index].saturating_add(weight),
            };
        });
    }
    v
}

/// Calls `f` with each feature of `text` and its kind: `b'w'` and each
/// lower-cased word, then `b't'` and each of the word's trigrams.
fn for_each_feature(text: &str, mut f: impl FnMut(u8, &[u8])) {
    let mut word = Vec::new();
    for token in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
    {
        marked_lowercase(token, &mut word);
        f(b'w', &word[1..word.len() - 1]);
        for_each_trigram(&word, |trigram| f(b't', trigram));
    }
}

/// `token` lower-cased, between `<` and `>`, as UTF-8 in `word`.
fn marked_lowercase(token: &str, word: &mut Vec<u8>) {
    word.clear();
    word.push(b'<');
    if token.is_ascii() {
        // Most words: lower-casing is per byte, with no Unicode tables.
        word.extend(token.bytes().map(|b| b.to_ascii_lowercase()));
    } else {
        let mut utf8 = [0; 4];
        for c in token.chars().flat_map(char::to_lowercase) {
            word.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
    word.push(b'>');
}

/// Calls `f` on each character trigram of the UTF-8 `word`, in order.
fn for_each_trigram(word: &[u8], mut f: impl FnMut(&[u8])) {
    if word.is_ascii() {
        // Every character is one byte.
        word.windows(3).for_each(f);
        return;
    }
    // Character boundaries b0 = 0, b1, ..., len; trigram n spans b(n-3)..bn.
    // A ring of the last three boundaries is all it takes.
    let mut ring = [0usize; 3];
    let starts = (0..word.len()).filter(|&i| !is_continuation(word[i]));
    for (n, b) in starts.chain([word.len()]).enumerate() {
        if n >= 3 {
            f(&word[ring[n % 3]..b]);
        }
        ring[n % 3] = b;
    }
}

/// Whether `byte` continues a UTF-8 character rather than starting one.
fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

/// Adds `±weight` to the dimension of `v` that `feature` hashes to; `kind`
/// keeps features of different kinds with the same bytes apart.
pub fn add_feature(v: &mut [f32], kind: u8, feature: &[u8], weight: f32) {
    if v.is_empty() {
        return;
    }
    let (index, negative) = bucket(kind, feature, v.len());
    let sign = if negative { -1.0 } else { 1.0 };
    v[index] += sign * weight;
}

/// The dimension of `dimension > 0` that `feature` of `kind` hashes to,
/// and whether it subtracts there.
fn bucket(kind: u8, feature: &[u8], dimension: usize) -> (usize, bool) {
    let h = feature_hash(kind, feature);
    ((h % dimension as u64) as usize, h >> 63 != 0)
}

/// The 64-bit hash of a feature of `kind`: FNV-1a with a final avalanche,
/// so the sign bit is well mixed.
pub fn feature_hash(kind: u8, bytes: &[u8]) -> u64 {
    let step = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    let mut h = step(0xcbf2_9ce4_8422_2325, kind);
    for &b in bytes {
        h = step(h, b);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
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

    fn trigrams(word: &str) -> Vec<String> {
        let mut all = Vec::new();
        for_each_trigram(word.as_bytes(), |t| {
            all.push(String::from_utf8(t.to_vec()).unwrap())
        });
        all
    }

    #[test]
    fn trigrams_follow_character_boundaries() {
        assert_eq!(trigrams("<añb>"), ["<añ", "añb", "ñb>"]);
        assert_eq!(trigrams("<😀ab>"), ["<😀a", "😀ab", "ab>"]);
        assert_eq!(trigrams("<abc>"), ["<ab", "abc", "bc>"]);
        assert_eq!(trigrams("<a>"), ["<a>"]);
        assert!(trigrams("<>").is_empty());
    }

    #[test]
    fn ascii_words_are_lowered_as_unicode_lowers_them() {
        let mut word = Vec::new();
        for token in ["ABCxyz09", "MiXeD", "Ünïcode", "\u{212A}elvin"] {
            marked_lowercase(token, &mut word);
            let lowered: String = token.chars().flat_map(char::to_lowercase).collect();
            assert_eq!(word, format!("<{lowered}>").into_bytes(), "{token}");
        }
        // The Kelvin sign lowers to an ASCII `k`: its trigrams are bytes.
        marked_lowercase("\u{212A}", &mut word);
        assert_eq!(trigrams(std::str::from_utf8(&word).unwrap()), ["<k>"]);
    }

    #[test]
    fn empty_text_is_the_zero_vector() {
        assert_eq!(hashed_features(" ... ", 384), vec![0.0; 384]);
        assert!(hashed_features("words", 0).is_empty());
        assert_eq!(hashed_counts(" ... ", 384), vec![0; 384]);
        assert!(hashed_counts("words", 0).is_empty());
    }

    #[test]
    fn counts_are_the_features_before_normalising() {
        let once = hashed_counts("words", 384);
        let thrice: Vec<i32> = once.iter().map(|c| 3 * c).collect();
        assert_eq!(hashed_counts("Words, words: WORDS", 384), thrice);
        // One word and its five trigrams, one dimension each unless two
        // collide.
        assert_eq!(once.iter().map(|c| c.abs()).sum::<i32>(), 20 + 5 * 7);
        let text = "Ünïcode words, words and more words: the counts add up.";
        let counts = hashed_counts(text, 64);
        let mut from_counts: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
        l2_normalize(&mut from_counts);
        let features = hashed_features(text, 64);
        for (a, b) in from_counts.iter().zip(&features) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
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
