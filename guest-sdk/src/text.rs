//! Pieces of sentence-embedding text encoders (feature `text`).

use crate::EncodeError;
use crate::align::Head;
use crate::inference::{NamedTensor, Session, Tensor};
use crate::vector::l2_normalize;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

/// Longest input, in tokens, as sentence-transformers truncates for the
/// MiniLM family.
pub const MAX_TOKENS: usize = 256;

/// The model inputs for one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, with the special tokens.
    pub input_ids: Vec<i64>,
    /// 1 for every real token.
    pub attention_mask: Vec<i64>,
    /// Segment ids (all 0 for one sentence).
    pub token_type_ids: Vec<i64>,
}

/// A WordPiece/BPE tokenizer configured as sentence-transformers uses it:
/// no padding, truncation at [`MAX_TOKENS`].
pub struct TextTokenizer(Tokenizer);

impl TextTokenizer {
    /// Parses a Hugging Face `tokenizer.json`.
    pub fn from_json(json: &[u8]) -> Result<TextTokenizer, String> {
        let mut tokenizer = Tokenizer::from_bytes(json).map_err(|e| e.to_string())?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..TruncationParams::default()
            }))
            .map_err(|e| e.to_string())?;
        Ok(TextTokenizer(tokenizer))
    }

    /// Tokenises one text, adding the model's special tokens.
    pub fn encode(&self, text: &str) -> Result<Encoding, String> {
        let encoding = self.0.encode(text, true).map_err(|e| e.to_string())?;
        let widen = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect();
        Ok(Encoding {
            input_ids: widen(encoding.get_ids()),
            attention_mask: widen(encoding.get_attention_mask()),
            token_type_ids: widen(encoding.get_type_ids()),
        })
    }
}

/// Where an ONNX sentence-transformer graph leaves the sentence vector.
#[derive(Debug, Clone, Copy)]
pub enum Pooling {
    /// The named output holds token vectors (`1 × tokens × dim`): average
    /// them over the attention mask.
    MeanOfTokens(&'static str),
    /// The named output already holds the pooled vector (`1 × dim`).
    Pooled(&'static str),
}

/// A sentence-transformer served by the host, described by constants: the
/// whole encoder is [`SentenceEncoder`] over a type implementing this.
///
/// ```no_run
/// use soma_guest_sdk::text::{Pooling, SentenceTransformer};
///
/// pub struct MyModel;
///
/// impl SentenceTransformer for MyModel {
///     const NAME: &'static str = "my-model";
///     const VERSION: &'static str = "0.1.0";
///     const MODEL: &'static str = "b2a68b34a45c28477ee9619f6f1ed03064209e3c3dae66aac2cedc4ee59c286d";
///     const TOKENIZER: &'static [u8] = b"{}"; // include_bytes!("tokenizer.json")
///     const TOKEN_TYPE_IDS: bool = true;
///     const POOLING: Pooling = Pooling::MeanOfTokens("last_hidden_state");
/// }
///
/// soma_guest_sdk::export!(soma_guest_sdk::text::SentenceEncoder<MyModel>);
/// ```
pub trait SentenceTransformer: Send + Sync + 'static {
    /// Encoder name.
    const NAME: &'static str;
    /// Encoder version.
    const VERSION: &'static str;
    /// blake3 digest of the ONNX model in the package.
    const MODEL: &'static str;
    /// The Hugging Face `tokenizer.json`, compiled in.
    const TOKENIZER: &'static [u8];
    /// Whether the graph takes a `token_type_ids` input.
    const TOKEN_TYPE_IDS: bool;
    /// Where the sentence vector comes from.
    const POOLING: Pooling;
    /// Dimension of the model's vectors (the encoder's output dimension
    /// is the head's, if it has one).
    const DIMENSION: usize = 384;
    /// Largest input, in bytes.
    const MAX_INPUT_BYTES: u32 = 16 * 1024;
    /// An alignment head file ([`crate::align`]) compiled in, mapping the
    /// model's vectors into the network's space; `None` for the reference
    /// model itself.
    const HEAD: Option<&'static [u8]> = None;
}

/// The encoder for a [`SentenceTransformer`]: tokenise, run the ONNX model
/// of the package, pool, L2-normalise, and apply the alignment head if it
/// has one.
pub struct SentenceEncoder<T> {
    tokenizer: TextTokenizer,
    head: Option<Head>,
    model: std::marker::PhantomData<T>,
}

impl<T: SentenceTransformer> crate::Encoder for SentenceEncoder<T> {
    fn new() -> Self {
        // The tokenizer is compiled in: failing to parse it is a build bug,
        // caught when the host pre-initialises the component.
        let tokenizer =
            TextTokenizer::from_json(T::TOKENIZER).expect("the compiled-in tokenizer.json parses");
        let head = T::HEAD.map(|bytes| Head::parse(bytes).expect("the compiled-in head parses"));
        SentenceEncoder {
            tokenizer,
            head,
            model: std::marker::PhantomData,
        }
    }

    fn info(&self) -> crate::EncoderInfo {
        crate::EncoderInfo {
            name: T::NAME.into(),
            version: T::VERSION.into(),
            dimension: self.head.as_ref().map_or(T::DIMENSION, Head::output) as u32,
            modality: crate::Modality::Text,
            max_input_bytes: T::MAX_INPUT_BYTES,
        }
    }

    /// One model run per input, so that a text gets the same vector
    /// whatever else is in its batch.
    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        let session = Session::open(T::MODEL).map_err(|e| {
            EncodeError::Internal(format!(
                "cannot open the model: {:?}: {}",
                e.code, e.message
            ))
        })?;
        (0..inputs.len())
            .map(|i| self.embed_one(&session, inputs, i))
            .collect()
    }
}

impl<T: SentenceTransformer> SentenceEncoder<T> {
    fn embed_one(
        &self,
        session: &Session,
        inputs: &[Vec<u8>],
        i: usize,
    ) -> Result<Vec<f32>, EncodeError> {
        let text = crate::text_input(inputs, i)?;
        let encoding = self
            .tokenizer
            .encode(text)
            .map_err(|e| EncodeError::invalid_input(i, e))?;
        let dims = [1, encoding.input_ids.len() as u32];
        let mut feed = vec![
            Tensor::from_i64(&dims, &encoding.input_ids).named("input_ids"),
            Tensor::from_i64(&dims, &encoding.attention_mask).named("attention_mask"),
        ];
        if T::TOKEN_TYPE_IDS {
            feed.push(Tensor::from_i64(&dims, &encoding.token_type_ids).named("token_type_ids"));
        }
        let outputs = session.run(&feed).map_err(|e| {
            EncodeError::Internal(format!("inference failed: {:?}: {}", e.code, e.message))
        })?;
        let (name, per_token) = match T::POOLING {
            Pooling::MeanOfTokens(name) => (name, true),
            Pooling::Pooled(name) => (name, false),
        };
        let values = NamedTensor::find(&outputs, name)
            .and_then(Tensor::to_f32)
            .ok_or_else(|| {
                EncodeError::Internal(format!("the model has no fp32 output `{name}`"))
            })?;
        let mut vector = if per_token {
            mean_pool(&values, &encoding.attention_mask, T::DIMENSION)
        } else {
            values
        };
        if vector.len() != T::DIMENSION {
            return Err(EncodeError::Internal(format!(
                "output `{name}` has {} values, expected {}",
                vector.len(),
                T::DIMENSION
            )));
        }
        l2_normalize(&mut vector);
        match &self.head {
            None => Ok(vector),
            Some(head) => head.apply(&vector).ok_or_else(|| {
                EncodeError::Internal(format!(
                    "the alignment head takes {} values, the model gives {}",
                    head.input(),
                    vector.len()
                ))
            }),
        }
    }
}

/// Averages the rows of `hidden` (`tokens × dim`, row-major) whose mask is
/// non-zero.
pub fn mean_pool(hidden: &[f32], mask: &[i64], dim: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; dim];
    let mut count = 0.0f32;
    for (row, &m) in hidden.chunks_exact(dim).zip(mask) {
        if m != 0 {
            for (s, x) in sum.iter_mut().zip(row) {
                *s += x;
            }
            count += 1.0;
        }
    }
    if count > 0.0 {
        for s in &mut sum {
            *s /= count;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::mean_pool;

    #[test]
    fn mean_pooling_skips_masked_rows() {
        let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        assert_eq!(mean_pool(&hidden, &[1, 1, 0], 2), vec![2.0, 3.0]);
        assert_eq!(mean_pool(&hidden, &[0, 0, 0], 2), vec![0.0, 0.0]);
    }
}
