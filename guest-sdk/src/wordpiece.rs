//! BERT's WordPiece tokenizer, as Hugging Face `tokenizers` configures it
//! from a `tokenizer.json` (feature `text`), without its bookkeeping.
//!
//! `tokenizers` tracks, for every character, where it came from in the
//! input, through every step, in allocations of its own: in wasm that made
//! tokenising a sentence cost more than embedding it outside the model.
//! This module computes the same token ids for the configuration BERT-style
//! sentence-transformers ship (a `BertNormalizer`, the `BertPreTokenizer`,
//! a `WordPiece` model, special tokens around the text), with no offsets.
//! [`crate::text::TextTokenizer`] uses it when a `tokenizer.json` is of that
//! kind and `tokenizers` otherwise; the tests check it against `tokenizers`.
//!
//! Character classes come from the crates `tokenizers` uses
//! (`unicode_categories`, `unicode-normalization-alignments`, the standard
//! library), so that both agree on every character.

use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::Value;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

/// A BERT WordPiece tokenizer read from a `tokenizer.json`.
#[derive(Debug)]
pub(crate) struct WordPiece {
    /// Every vocabulary entry: what the first piece of a word is looked up
    /// in.
    vocab: FxHashMap<Box<str>, u32>,
    /// The entries that start with the continuing-subword prefix (`##`),
    /// without it: what later pieces are looked up in, with no string
    /// built per look-up.
    continuing: FxHashMap<Box<str>, u32>,
    unknown: u32,
    /// Words of more characters are unknown.
    max_word_chars: usize,
    /// Added tokens, matched in the raw text before normalisation, as
    /// `tokenizers` matches them (leftmost, then longest), and their ids
    /// by pattern.
    added: Option<(AhoCorasick, Vec<u32>)>,
    /// Special tokens put before and after the text.
    first: u32,
    last: u32,
    normalizer: Normalizer,
}

/// The `BertNormalizer`'s steps, in the order it runs them.
#[derive(Debug, Clone, Copy)]
struct Normalizer {
    clean_text: bool,
    chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

impl WordPiece {
    /// The tokenizer `json` describes, or `None` if it is not a BERT
    /// WordPiece configuration this module computes exactly as
    /// `tokenizers` does (or not valid JSON).
    pub(crate) fn from_json(json: &[u8]) -> Option<WordPiece> {
        let config: Value = serde_json::from_slice(json).ok()?;
        let normalizer = &config["normalizer"];
        let flag = |name: &str| normalizer[name].as_bool();
        let lowercase = flag("lowercase")?;
        let normalizer = Normalizer {
            clean_text: flag("clean_text")?,
            chinese_chars: flag("handle_chinese_chars")?,
            strip_accents: match &normalizer["strip_accents"] {
                Value::Null => lowercase,
                other => other.as_bool()?,
            },
            lowercase,
        };
        if config["normalizer"]["type"] != "BertNormalizer"
            || config["pre_tokenizer"] != serde_json::json!({ "type": "BertPreTokenizer" })
        {
            return None;
        }

        let model = &config["model"];
        if model["type"] != "WordPiece" {
            return None;
        }
        let prefix = model["continuing_subword_prefix"].as_str()?;
        let max_word_chars = usize::try_from(model["max_input_chars_per_word"].as_u64()?).ok()?;
        let mut vocab = FxHashMap::default();
        let mut continuing = FxHashMap::default();
        for (token, id) in model["vocab"].as_object()? {
            let id = u32::try_from(id.as_u64()?).ok()?;
            if let Some(rest) = token.strip_prefix(prefix) {
                continuing.insert(rest.into(), id);
            }
            vocab.insert(token.as_str().into(), id);
        }
        let unknown = *vocab.get(model["unk_token"].as_str()?)?;

        // Added tokens that are matched in the raw text, as they are: no
        // stripping of spaces around them, no whole-word rule. Each must be
        // a vocabulary entry of the id the file gives it, once: `tokenizers`
        // takes an added token's id from the vocabulary, or numbers those
        // outside it after the vocabulary, and skips repeated ones.
        let mut contents = Vec::new();
        let mut seen = FxHashSet::default();
        let mut ids = Vec::new();
        for token in config["added_tokens"].as_array()? {
            let plain = ["normalized", "lstrip", "rstrip", "single_word"]
                .iter()
                .all(|flag| token[flag] == false);
            let content = token["content"].as_str().filter(|c| !c.is_empty())?;
            let id = u32::try_from(token["id"].as_u64()?).ok()?;
            if !plain || vocab.get(content) != Some(&id) || !seen.insert(content) {
                return None;
            }
            contents.push(content);
            ids.push(id);
        }
        let added = match contents.is_empty() {
            true => None,
            false => {
                let matcher = AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&contents)
                    .ok()?;
                Some((matcher, ids))
            }
        };

        // The template for one text: a special token, the text, a special
        // token, all of type 0.
        let processor = &config["post_processor"];
        if processor["type"] != "TemplateProcessing" {
            return None;
        }
        let single = processor["single"].as_array()?;
        let special = |piece: &Value| -> Option<u32> {
            let piece = &piece["SpecialToken"];
            if piece["type_id"] != 0 {
                return None;
            }
            let ids = processor["special_tokens"][piece["id"].as_str()?]["ids"].as_array()?;
            match ids.as_slice() {
                [id] => u32::try_from(id.as_u64()?).ok(),
                _ => None,
            }
        };
        let text = serde_json::json!({ "Sequence": { "id": "A", "type_id": 0 } });
        let [first, sequence, last] = single.as_slice() else {
            return None;
        };
        if *sequence != text {
            return None;
        }
        Some(WordPiece {
            vocab,
            continuing,
            unknown,
            max_word_chars,
            added,
            first: special(first)?,
            last: special(last)?,
            normalizer,
        })
    }

    /// The token ids of `text`, with the special tokens around it, and the
    /// text's own tokens truncated so that there are at most `max_tokens`
    /// in all.
    pub(crate) fn encode(&self, text: &str, max_tokens: usize) -> Vec<u32> {
        let mut ids = vec![self.first];
        let mut normalized = String::new();
        let mut scratch = String::new();
        let mut plain = |piece: &str, ids: &mut Vec<u32>| {
            self.normalizer
                .normalize(piece, &mut normalized, &mut scratch);
            for word in words(&normalized) {
                self.tokenize_word(word, ids);
            }
        };
        let mut start = 0;
        if let Some((matcher, added)) = &self.added {
            for found in matcher.find_iter(text) {
                plain(&text[start..found.start()], &mut ids);
                ids.push(added[found.pattern().as_usize()]);
                start = found.end();
            }
        }
        plain(&text[start..], &mut ids);
        // `tokenizers` keeps the first tokens of the text, and room for the
        // last special token.
        ids.truncate(max_tokens.saturating_sub(1).max(1));
        ids.push(self.last);
        ids
    }

    /// WordPiece: the longest vocabulary entry at the start of the word,
    /// then the longest continuing entry after it, and so on; a word that
    /// cannot be covered, or is too long, is one unknown token.
    fn tokenize_word(&self, word: &str, ids: &mut Vec<u32>) {
        if word.chars().count() > self.max_word_chars {
            ids.push(self.unknown);
            return;
        }
        let before = ids.len();
        let mut start = 0;
        while start < word.len() {
            let table = if start == 0 {
                &self.vocab
            } else {
                &self.continuing
            };
            let mut end = word.len();
            let found = loop {
                if let Some(&id) = table.get(&word[start..end]) {
                    break Some(id);
                }
                let last = word[start..end].chars().next_back().expect("not empty");
                end -= last.len_utf8();
                if end == start {
                    break None;
                }
            };
            match found {
                Some(id) => ids.push(id),
                None => {
                    ids.truncate(before);
                    ids.push(self.unknown);
                    return;
                }
            }
            start = end;
        }
    }
}

impl Normalizer {
    /// Normalises `text` into `out`, as `BertNormalizer` does: control
    /// characters out and whitespace to spaces, spaces around CJK
    /// ideographs, then decomposition (NFD) with non-spacing marks left out,
    /// then lowercase. `scratch` is working space.
    fn normalize(&self, text: &str, out: &mut String, scratch: &mut String) {
        out.clear();
        for c in text.chars() {
            if self.clean_text && (c == '\0' || c == '\u{fffd}' || is_control(c)) {
                continue;
            }
            let c = if self.clean_text && is_whitespace(c) {
                ' '
            } else {
                c
            };
            if self.chinese_chars && is_chinese_char(c) {
                out.extend([' ', c, ' ']);
            } else {
                out.push(c);
            }
        }
        // Decomposition leaves ASCII as it is, and ASCII has no marks.
        if self.strip_accents && !out.is_ascii() {
            scratch.clear();
            scratch.extend(
                out.nfd()
                    .map(|(c, _)| c)
                    .filter(|c| !c.is_mark_nonspacing()),
            );
            std::mem::swap(out, scratch);
        }
        if self.lowercase {
            if out.is_ascii() {
                out.make_ascii_lowercase();
            } else {
                scratch.clear();
                // Character by character, as `tokenizers` does (so no
                // final-sigma rule, unlike `str::to_lowercase`).
                scratch.extend(out.chars().flat_map(char::to_lowercase));
                std::mem::swap(out, scratch);
            }
        }
    }
}

/// The words of normalised text, as `BertPreTokenizer` splits it: at
/// whitespace (left out), and around every punctuation character (each a
/// word of its own).
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace)
        .flat_map(split_punctuation)
        .filter(|word| !word.is_empty())
}

/// `chunk`, cut before and after every punctuation character.
fn split_punctuation(chunk: &str) -> impl Iterator<Item = &str> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let word = match rest.char_indices().find(|&(_, c)| is_punctuation(c)) {
            None => rest,
            Some((0, c)) => &rest[..c.len_utf8()],
            Some((at, _)) => &rest[..at],
        };
        rest = &rest[word.len()..];
        Some(word)
    })
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && !c.is_ascii_graphic() && c != ' ' && c.is_other()
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || (!c.is_ascii() && c.is_punctuation())
}

fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::WordPiece;
    use crate::text::{Encoding, MAX_TOKENS, TextTokenizer};
    use proptest::prelude::*;

    /// The MiniLM family's `tokenizer.json`, which `cargo xtask setup`
    /// fetches.
    fn minilm_json() -> Vec<u8> {
        let dir = std::env::var_os("SOMA_MODELS_DIR")
            .expect("SOMA_MODELS_DIR is set (by .cargo/config.toml; run `cargo xtask setup`)");
        let path = std::path::Path::new(&dir).join("tokenizer.json");
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask setup`)", path.display()))
    }

    /// Both tokenizers for one configuration: this module's, and
    /// `tokenizers`.
    struct Both {
        fast: TextTokenizer,
        reference: TextTokenizer,
    }

    impl Both {
        fn new(json: &[u8]) -> Both {
            let fast = TextTokenizer::from_json(json).expect("parses");
            assert!(fast.is_wordpiece(), "read as WordPiece");
            Both {
                fast,
                reference: TextTokenizer::general(json).expect("parses"),
            }
        }

        fn agree(&self, text: &str) -> Result<(), String> {
            let fast: Encoding = self.fast.encode(text)?;
            let reference = self.reference.encode(text)?;
            match fast == reference {
                true => Ok(()),
                false => Err(format!(
                    "{text:?}: WordPiece {:?}, tokenizers {:?}",
                    fast.input_ids, reference.input_ids
                )),
            }
        }
    }

    /// Texts where the steps of the pipeline matter.
    const EDGES: &[&str] = &[
        "",
        " ",
        "\t\n\r ",
        "A man is playing a guitar on stage.",
        "Hey friend!     How are you?!?",
        "Ünïcode text with accents, emoji 🎸 and punctuation… all count.",
        "Café naïve façade résumé Ångström",
        "野口里佳 Noguchi Rika 㐀𠀀 한국어 日本語のテキスト",
        "ΣΊΣΥΦΟΣ Σίσυφος ΟΔΥΣΣΕΥΣ",
        "İstanbul ıi ß ẞ ﬁ Å Ω K",
        "नमस्ते दुनिया, हिन्दी में पाठ।",
        "مرحبا بالعالم، هذا نص عربي.",
        "สวัสดีชาวโลก ภาษาไทย",
        "zero\u{200b}width\u{200d}joiner\u{feff}bom\u{00ad}soft",
        "nul\0here \u{fffd} replacement \u{7f} del \u{1} \u{9f}",
        "private\u{e000}use \u{f8ff}",
        "e\u{301}\u{302}\u{323} o\u{308}\u{304} combining",
        "[CLS] [SEP] [PAD] [MASK] [UNK]",
        "x[SEP]y[[MASK]]z [sep] [Sep] [SEP",
        "[SEP][SEP]",
        "  [CLS]leading and trailing[SEP]  ",
        "well-known, state-of-the-art: e.g. U.S.A. (1999) $5.00 50% #tag @user",
        "~`!@#$%^&*()_+-={}|[]\\:\";'<>?,./",
        "«quotes» „low“ ‘single’ — dash – en · middle ¿question¡",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "1234567890 3.14159 1e-10 0x1F",
        "https://example.com/path?query=1&b=2 user@example.com",
        "🎸🎸🎸 👩‍👩‍👧 🇫🇷 ❤️",
        "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ",
        "mixedCASE CamelCase snake_case kebab-case",
    ];

    #[test]
    fn the_minilm_tokenizer_is_read_as_wordpiece_and_gives_the_same_ids() {
        let both = Both::new(&minilm_json());
        for text in EDGES {
            both.agree(text).unwrap();
        }
        // Too long for a word (100 characters): one unknown token.
        both.agree(&"a".repeat(101)).unwrap();
        both.agree(&"é".repeat(100)).unwrap();
        // Truncation at MAX_TOKENS, special tokens kept.
        let long = EDGES.join(" ").repeat(8);
        both.agree(&long).unwrap();
        let ids = both.fast.encode(&long).unwrap().input_ids;
        assert_eq!(ids.len(), MAX_TOKENS);
        assert_eq!((ids[0], ids[MAX_TOKENS - 1]), (101, 102));
    }

    #[test]
    fn other_configurations_go_through_tokenizers() {
        let others = [
            minilm_changed(|j| j["pre_tokenizer"] = serde_json::json!({ "type": "Whitespace" })),
            minilm_changed(|j| j["added_tokens"][1]["lstrip"] = true.into()),
            minilm_changed(|j| j["added_tokens"][2]["normalized"] = true.into()),
            minilm_changed(|j| j["model"]["type"] = "BPE".into()),
            minilm_changed(|j| {
                j["post_processor"] = serde_json::json!({
                    "type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]
                })
            }),
        ];
        for json in others {
            assert!(WordPiece::from_json(&json).is_none());
        }
        // Flags of the normaliser are followed, not just the default ones.
        for edit in [
            &(|j: &mut serde_json::Value| j["normalizer"]["lowercase"] = false.into())
                as &dyn Fn(&mut serde_json::Value),
            &|j| j["normalizer"]["strip_accents"] = false.into(),
            &|j| j["normalizer"]["handle_chinese_chars"] = false.into(),
            &|j| j["normalizer"]["clean_text"] = false.into(),
        ] {
            let both = Both::new(&minilm_changed(edit));
            for text in EDGES {
                both.agree(text).unwrap();
            }
        }
        assert!(WordPiece::from_json(b"not json").is_none());
    }

    /// The MiniLM `tokenizer.json` after `edit`.
    fn minilm_changed(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut json: serde_json::Value = serde_json::from_slice(&minilm_json()).unwrap();
        edit(&mut json);
        serde_json::to_vec(&json).unwrap()
    }

    /// An added token matched in the raw text as it is, anywhere.
    fn added(content: &str, id: u64) -> serde_json::Value {
        serde_json::json!({
            "id": id, "content": content, "special": false, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false
        })
    }

    /// The MiniLM tokenizer with some 2000 of its vocabulary's entries
    /// added as tokens too: words, pieces, continuations, punctuation and
    /// non-ASCII characters, matched inside words.
    fn many_added() -> Vec<u8> {
        minilm_changed(|j| {
            let vocab = j["model"]["vocab"].as_object().unwrap();
            let chosen = [
                "the", "ing", "a", "re", "##s", "##tion", "α", "日", "ß", "«", "-",
            ];
            let mut many: Vec<serde_json::Value> = chosen
                .iter()
                .map(|w| added(w, vocab[*w].as_u64().expect("in the vocabulary")))
                .collect();
            many.extend(
                vocab
                    .iter()
                    .skip(5000)
                    .step_by(7)
                    .take(2000)
                    .filter(|(w, _)| !chosen.contains(&w.as_str()))
                    .map(|(w, id)| added(w, id.as_u64().unwrap())),
            );
            j["added_tokens"].as_array_mut().unwrap().extend(many);
        })
    }

    #[test]
    fn added_tokens_are_taken_only_as_tokenizers_numbers_them() {
        let push = |token: serde_json::Value| {
            minilm_changed(|j| j["added_tokens"].as_array_mut().unwrap().push(token))
        };
        // An id other than the vocabulary's, a token outside the
        // vocabulary, and one given twice: `tokenizers` numbers these its
        // own way, so they go through it.
        for json in [
            push(added("hello", 1)),
            push(added("zzzqqq", 40_000)),
            push(added("[SEP]", 102)),
        ] {
            assert!(WordPiece::from_json(&json).is_none());
            let both = TextTokenizer::from_json(&json).expect("tokenizers reads it");
            assert!(!both.is_wordpiece());
        }
        let both = Both::new(&many_added());
        for text in EDGES {
            both.agree(text).unwrap();
        }
        // Edge settings of the model.
        for edit in [
            &(|j: &mut serde_json::Value| j["model"]["max_input_chars_per_word"] = 0.into())
                as &dyn Fn(&mut serde_json::Value),
            &|j| j["model"]["max_input_chars_per_word"] = 3.into(),
            &|j| j["model"]["continuing_subword_prefix"] = "".into(),
        ] {
            let both = Both::new(&minilm_changed(edit));
            for text in EDGES {
                both.agree(text).unwrap();
            }
        }
    }

    #[test]
    fn a_file_tokenizers_refuses_is_refused() {
        let json = minilm_changed(|j| j["version"] = "2.0".into());
        assert!(
            WordPiece::from_json(&json).is_some(),
            "WordPiece alone reads it"
        );
        assert!(TextTokenizer::from_json(&json).is_err());
    }

    /// Characters from every class the pipeline treats apart.
    fn text() -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            4 => "[a-zA-Z]{1,12}",
            2 => "[ \t\n\r]{1,3}",
            2 => "[[:punct:]]",
            1 => "[0-9]{1,4}",
            1 => "[àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÉÎØÜßæœ]{1,4}",
            1 => "[\u{0300}-\u{036f}]",
            1 => "[\u{4e00}-\u{4e40}\u{3400}-\u{3410}\u{20000}-\u{20010}]{1,3}",
            1 => "[\u{0900}-\u{097f}\u{0600}-\u{06ff}\u{0e00}-\u{0e7f}]{1,4}",
            1 => "[\u{0370}-\u{03ff}\u{0400}-\u{04ff}]{1,6}",
            1 => "[\u{0}-\u{1f}\u{7f}-\u{9f}\u{200b}-\u{200f}\u{fffd}\u{e000}\u{feff}]",
            1 => "[\u{2000}-\u{206f}\u{3000}-\u{303f}\u{ff00}-\u{ffef}]",
            1 => "[\u{1f300}-\u{1f6ff}]",
            1 => prop::sample::select(vec!["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "[SE", "##"])
                .prop_map(String::from),
            1 => any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(pieces, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn wordpiece_agrees_with_tokenizers_on_any_text(text in text()) {
            thread_local! {
                static BOTH: Both = Both::new(&minilm_json());
            }
            BOTH.with(|both| both.agree(&text)).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn wordpiece_agrees_with_tokenizers_beside_many_added_tokens(text in text()) {
            thread_local! {
                static BOTH: Both = Both::new(&many_added());
            }
            BOTH.with(|both| both.agree(&text)).map_err(TestCaseError::fail)?;
        }
    }
}
