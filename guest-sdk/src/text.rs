//! Pieces of sentence-embedding text encoders (feature `text`).

use crate::EncodeError;
use crate::align::Head;
use crate::inference::{NamedTensor, Session, Tensor};
use crate::vector::l2_normalize;
use crate::wordpiece::WordPiece;
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
pub struct TextTokenizer(Kind);

enum Kind {
    /// BERT's WordPiece configuration, computed by this crate: the same
    /// ids as `tokenizers`, several times faster in wasm.
    WordPiece(WordPiece),
    /// Any other, through `tokenizers`.
    General(Box<Tokenizer>),
}

impl TextTokenizer {
    /// Parses a Hugging Face `tokenizer.json`. `tokenizers` reads every
    /// file, so that one it refuses is refused whichever tokenizer then
    /// runs it.
    pub fn from_json(json: &[u8]) -> Result<TextTokenizer, String> {
        // Dropped before WordPiece is built, so that the two are never in
        // memory at once (start-up memory is kept in the snapshot).
        drop(Self::general(json)?);
        match WordPiece::from_json(json) {
            Some(wordpiece) => Ok(TextTokenizer(Kind::WordPiece(wordpiece))),
            None => Self::general(json),
        }
    }

    /// Whether this is the crate's own WordPiece tokenizer.
    #[cfg(test)]
    pub(crate) fn is_wordpiece(&self) -> bool {
        matches!(self.0, Kind::WordPiece(_))
    }

    /// The tokenizer `json` describes, through `tokenizers` whatever it is.
    pub(crate) fn general(json: &[u8]) -> Result<TextTokenizer, String> {
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
        Ok(TextTokenizer(Kind::General(Box::new(tokenizer))))
    }

    /// Tokenises one text, adding the model's special tokens.
    pub fn encode(&self, text: &str) -> Result<Encoding, String> {
        let widen = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect();
        match &self.0 {
            Kind::WordPiece(wordpiece) => {
                let ids = wordpiece.encode(text, MAX_TOKENS);
                Ok(Encoding {
                    attention_mask: vec![1; ids.len()],
                    token_type_ids: vec![0; ids.len()],
                    input_ids: widen(&ids),
                })
            }
            Kind::General(tokenizer) => {
                let encoding = tokenizer.encode(text, true).map_err(|e| e.to_string())?;
                Ok(Encoding {
                    input_ids: widen(encoding.get_ids()),
                    attention_mask: widen(encoding.get_attention_mask()),
                    token_type_ids: widen(encoding.get_type_ids()),
                })
            }
        }
    }
}

/// Where an ONNX sentence-transformer graph leaves the sentence vector.
#[derive(Debug, Clone, Copy)]
pub enum Pooling {
    /// The named output holds token vectors (`texts × tokens × dim`):
    /// average each text's over its attention mask.
    MeanOfTokens(&'static str),
    /// The named output already holds the pooled vectors (`texts × dim`);
    /// the graph must leave out padding itself (its attention mask is 0).
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
    /// Most texts per model run, up to [`MAX_BATCH`]: 1 for a graph
    /// exported with a fixed batch of one.
    const BATCH: usize = MAX_BATCH;
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

    /// Texts of similar length run together, padded to the longest of
    /// their batch ([`batches`]): a batch of short texts costs little more
    /// than one. A text's vector depends on its batch only through the
    /// kernels' summation order (measured: at most 1.6e-6). A text the
    /// tokenizer gives no tokens for pools, without a run, to the zero
    /// vector (the mean of no tokens), which then goes through the head.
    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        const {
            assert!(
                T::BATCH >= 1 && T::BATCH <= MAX_BATCH,
                "BATCH is 1..=MAX_BATCH"
            )
        };
        let encodings = (0..inputs.len())
            .map(|i| {
                let text = crate::text_input(inputs, i)?;
                self.tokenizer
                    .encode(text)
                    .map_err(|e| EncodeError::invalid_input(i, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if encodings.is_empty() {
            return Ok(Vec::new());
        }
        let session = Session::open(T::MODEL).map_err(|e| {
            EncodeError::Internal(format!(
                "cannot open the model: {:?}: {}",
                e.code, e.message
            ))
        })?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.input_ids.len()).collect();
        let mut vectors = vec![Vec::new(); encodings.len()];
        for batch in batches(&lengths, T::BATCH) {
            if lengths[batch[0]] == 0 {
                // The texts without tokens: a group of their own.
                for i in batch {
                    vectors[i] = self.finish(vec![0.0; T::DIMENSION])?;
                }
                continue;
            }
            let members: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            for (i, vector) in batch.into_iter().zip(self.run(&session, &members)?) {
                vectors[i] = self.finish(vector)?;
            }
        }
        Ok(vectors)
    }
}

/// Most texts one model run takes.
pub const MAX_BATCH: usize = 32;

/// Most tokens, padding included, one model run takes. With one thread per
/// run, a text costs least in runs of 256 to 512 tokens and more in larger
/// ones, whatever its length (measured natively with the host's worker
/// settings on a 2-vCPU AVX-512 VM, per text: 8 tokens, 2.7 ms alone and
/// 1.2 ms in a run of 32; 64 tokens, 11.5 ms alone, 10.1 ms in a run of 4
/// and 13.7 ms in a run of 32; 128 tokens, 24.2 ms alone, 23.5 ms in a run
/// of 4 and 32.0 ms in a run of 16).
pub const MAX_BATCH_TOKENS: usize = 512;

/// What one model run costs beyond its tokens, in tokens: a MiniLM run of
/// 1 × 8 tokens takes about as long as 15 more tokens would (BENCHMARKS.md,
/// inference fuel against time), so merging runs pays while it pads less
/// than that.
pub const RUN_COST_TOKENS: usize = 16;

/// Splits texts of `lengths` tokens into model runs, returning positions in
/// `lengths`. Texts are sorted by length (ties by position, so the split
/// depends only on the lengths) and cut into consecutive runs of at most
/// `max_batch` (clamped to 1..=[`MAX_BATCH`]) texts and [`MAX_BATCH_TOKENS`]
/// once padded to their longest (a longer text runs alone), choosing the
/// cuts that minimise padded tokens plus [`RUN_COST_TOKENS`] per run: short
/// and long texts are not padded to each other's length when that costs
/// more than a run. Texts of no tokens, if any, come first, in a group of
/// their own: there is nothing to run for them.
pub fn batches(lengths: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
    let max_batch = max_batch.clamp(1, MAX_BATCH);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let empty = order.iter().take_while(|&&i| lengths[i] == 0).count();
    let (empty, order) = order.split_at(empty);
    let length = |k: usize| lengths[order[k]];
    // cheapest[j]: the least cost of the first j sorted texts, and where
    // its last run starts.
    let mut cheapest: Vec<(usize, usize)> = vec![(0, 0)];
    for j in 1..=order.len() {
        let longest = length(j - 1);
        let best = (j.saturating_sub(max_batch)..j)
            .filter(|&i| i + 1 == j || (j - i).saturating_mul(longest) <= MAX_BATCH_TOKENS)
            .map(|i| {
                let run = RUN_COST_TOKENS.saturating_add((j - i).saturating_mul(longest));
                (cheapest[i].0.saturating_add(run), i)
            })
            .min()
            .expect("a text can always run alone");
        cheapest.push(best);
    }
    let mut batches = Vec::new();
    let mut end = order.len();
    while end > 0 {
        let start = cheapest[end].1;
        batches.push(order[start..end].to_vec());
        end = start;
    }
    if !empty.is_empty() {
        batches.push(empty.to_vec());
    }
    batches.reverse();
    batches
}

impl<T: SentenceTransformer> SentenceEncoder<T> {
    /// Runs the model once on `batch`, padded to its longest text (padding
    /// is masked out of attention and pooling), and returns one pooled
    /// vector per text.
    fn run(&self, session: &Session, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>, EncodeError> {
        let length = batch.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
        let padded = |field: fn(&Encoding) -> &Vec<i64>| -> Vec<i64> {
            batch
                .iter()
                .flat_map(|e| {
                    let values = field(e);
                    values
                        .iter()
                        .copied()
                        .chain(std::iter::repeat_n(0, length - values.len()))
                })
                .collect()
        };
        let dims = [batch.len() as u32, length as u32];
        let mask = padded(|e| &e.attention_mask);
        let mut feed = vec![
            Tensor::from_i64(&dims, &padded(|e| &e.input_ids)).named("input_ids"),
            Tensor::from_i64(&dims, &mask).named("attention_mask"),
        ];
        if T::TOKEN_TYPE_IDS {
            feed.push(
                Tensor::from_i64(&dims, &padded(|e| &e.token_type_ids)).named("token_type_ids"),
            );
        }
        let outputs = session.run(&feed).map_err(|e| {
            EncodeError::Internal(format!("inference failed: {:?}: {}", e.code, e.message))
        })?;
        let (name, per_token) = match T::POOLING {
            Pooling::MeanOfTokens(name) => (name, true),
            Pooling::Pooled(name) => (name, false),
        };
        let values = NamedTensor::find(&outputs, name)
            .and_then(Tensor::as_f32)
            .ok_or_else(|| {
                EncodeError::Internal(format!("the model has no fp32 output `{name}`"))
            })?;
        let per_text = if per_token {
            length * T::DIMENSION
        } else {
            T::DIMENSION
        };
        if values.len() != batch.len() * per_text {
            return Err(EncodeError::Internal(format!(
                "output `{name}` has {} values, expected {} ({} texts of {per_text})",
                values.len(),
                batch.len() * per_text,
                batch.len()
            )));
        }
        Ok(values
            .chunks_exact(per_text)
            .zip(mask.chunks_exact(length))
            .map(|(values, mask)| match per_token {
                true => mean_pool(values, mask, T::DIMENSION),
                false => values.to_vec(),
            })
            .collect())
    }

    /// Normalises a pooled vector and applies the alignment head.
    fn finish(&self, mut vector: Vec<f32>) -> Result<Vec<f32>, EncodeError> {
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
    use super::{MAX_BATCH, batches, mean_pool};

    fn batches_of(lengths: &[usize]) -> Vec<Vec<usize>> {
        batches(lengths, MAX_BATCH)
    }

    #[test]
    fn batches_group_similar_lengths_within_both_bounds() {
        assert!(batches_of(&[]).is_empty());
        // Graphs of a fixed batch of one; texts without tokens first.
        assert_eq!(batches(&[7, 7], 1), vec![vec![0], vec![1]]);
        assert_eq!(batches_of(&[3, 0, 0]), vec![vec![1, 2], vec![0]]);
        assert_eq!(batches_of(&[9, 3, 9, 5]), vec![vec![1, 3, 0, 2]]);
        // 40 short texts: two runs, every text once, in order.
        let short = batches_of(&[10; 40]);
        assert_eq!(short.iter().map(Vec::len).collect::<Vec<_>>(), [8, 32]);
        assert_eq!(short.concat(), (0..40).collect::<Vec<_>>());
        // Long texts: the token bound decides (512 / 128 = 4 per run),
        // and a text longer than the bound still runs, alone.
        let long = batches_of(&[128; 10]);
        assert_eq!(long.iter().map(Vec::len).collect::<Vec<_>>(), [2, 4, 4]);
        assert_eq!(batches_of(&[1024, 1]), vec![vec![1], vec![0]]);
        // A long text closes the batch of short ones it would overfill.
        let mixed = batches_of(&[200, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20]);
        assert_eq!(mixed, vec![(1..=10).collect::<Vec<_>>(), vec![0]]);
    }

    #[test]
    fn batches_pad_short_texts_to_long_ones_only_when_a_run_costs_more() {
        // 16 texts of 5 tokens and 16 of 30: padding the short ones to 30
        // costs 400 tokens, a second run 16: two runs.
        let lengths: Vec<usize> = (0..32).map(|i| if i % 2 == 0 { 5 } else { 30 }).collect();
        let split = batches_of(&lengths);
        assert_eq!(split.len(), 2);
        assert!(split[0].iter().all(|&i| lengths[i] == 5));
        assert!(split[1].iter().all(|&i| lengths[i] == 30));
        // Lengths 10 and 11: one token of padding each is cheaper than a run.
        assert_eq!(batches_of(&[10, 11, 10, 11]).len(), 1);
    }

    #[test]
    fn mean_pooling_skips_masked_rows() {
        let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        assert_eq!(mean_pool(&hidden, &[1, 1, 0], 2), vec![2.0, 3.0]);
        assert_eq!(mean_pool(&hidden, &[0, 0, 0], 2), vec![0.0, 0.0]);
    }
}
