//! A pure-WebAssembly text encoder: signed feature hashing.
//!
//! Every lower-cased word and every character trigram of a word (with `<`
//! and `>` marking its edges) is hashed to one of 384 dimensions and adds
//! ±weight there; the sum is L2-normalised. Texts that share words or word
//! pieces share dimensions, so paraphrases land closer together than
//! unrelated texts, with no model at all. It is the reference for what an
//! encoder component costs when it does all its work in wasm.

use soma_guest_sdk::{EncodeError, Encoder, EncoderInfo, Modality, text_input, vector};

/// Output dimension: the network's embedding space.
pub const DIMENSION: usize = 384;

/// Largest input accepted, in bytes.
pub const MAX_INPUT_BYTES: u32 = 64 * 1024;

const WORD_WEIGHT: f32 = 1.0;
const TRIGRAM_WEIGHT: f32 = 0.35;

/// The hash encoder; stateless.
pub struct HashEncoder;

impl Encoder for HashEncoder {
    fn new() -> Self {
        HashEncoder
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: "hash-encoder".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            dimension: DIMENSION as u32,
            modality: Modality::Text,
            max_input_bytes: MAX_INPUT_BYTES,
        }
    }

    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        (0..inputs.len())
            .map(|i| text_input(inputs, i).map(embed_text))
            .collect()
    }
}

soma_guest_sdk::export!(HashEncoder);

/// Embeds one text.
pub fn embed_text(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; DIMENSION];
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
    vector::l2_normalize(&mut v);
    v
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

/// Adds `±weight` to the dimension a feature hashes to; `kind` keeps words
/// and trigrams with the same bytes apart.
fn add_feature(v: &mut [f32], kind: u8, feature: &[u8], weight: f32) {
    let h = fnv1a(kind, feature);
    let index = (h % DIMENSION as u64) as usize;
    let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
    v[index] += sign * weight;
}

/// 64-bit FNV-1a with a final avalanche, so the sign bit is well mixed.
fn fnv1a(kind: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&kind).chain(bytes) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
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
        let v = embed_text("Hello, wörld! Ünïcode is lower-cased.");
        assert_eq!(v.len(), DIMENSION);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn case_and_punctuation_do_not_matter() {
        assert_eq!(embed_text("The Cat sat."), embed_text("the cat sat"));
    }

    #[test]
    fn trigrams_follow_character_boundaries() {
        assert_eq!(trigrams("<añb>").collect::<Vec<_>>(), ["<añ", "añb", "ñb>"]);
        assert_eq!(trigrams("<a>").collect::<Vec<_>>(), ["<a>"]);
        assert_eq!(trigrams("<>").count(), 0);
    }

    #[test]
    fn empty_text_is_the_zero_vector() {
        assert_eq!(embed_text(" ... "), vec![0.0; DIMENSION]);
    }

    #[test]
    fn paraphrases_are_closer_than_unrelated_texts() {
        let a = embed_text("A man is playing a guitar on stage.");
        let b = embed_text("On stage, a man plays the guitar.");
        let c = embed_text("Interest rates rose again this quarter.");
        assert!(
            cosine(&a, &b) > cosine(&a, &c) + 0.3,
            "{} vs {}",
            cosine(&a, &b),
            cosine(&a, &c)
        );
    }

    #[test]
    fn non_utf8_input_is_rejected_with_its_index() {
        let err = HashEncoder
            .embed(&[b"ok".to_vec(), vec![0xff, 0xfe]])
            .unwrap_err();
        match err {
            EncodeError::InvalidInput(i) => assert_eq!(i.index, 1),
            other => panic!("unexpected {other:?}"),
        }
    }
}
