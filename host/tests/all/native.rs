//! all-MiniLM-L6-v2 run natively (Hugging Face tokenizers and ONNX Runtime
//! from Rust, mean pooling, L2 normalisation): the reference the wasm
//! encoder is tested against, and its baseline in the benchmarks.

use ort::session::Session;
use ort::session::builder::SessionBuilder;
use ort::value::Tensor;
use std::path::Path;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

/// The native pipeline.
pub struct NativeMiniLm {
    session: Session,
    tokenizer: Tokenizer,
}

impl NativeMiniLm {
    /// Builds the session from `builder` (which fixes the runtime settings)
    /// and the tokenizer as sentence-transformers configures it.
    pub fn new(builder: SessionBuilder, model: &[u8], tokenizer: &Path) -> NativeMiniLm {
        let session = { builder }.commit_from_memory(model).unwrap();
        let mut tokenizer = Tokenizer::from_file(tokenizer).unwrap();
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..Default::default()
            }))
            .unwrap();
        NativeMiniLm { session, tokenizer }
    }

    /// The unit-length embedding of one sentence.
    pub fn embed(&mut self, sentence: &str) -> Vec<f32> {
        self.embed_batch(&[sentence]).remove(0)
    }

    /// The unit-length embeddings of `sentences`, in the padded runs the
    /// guest SDK's sentence encoder would make of them.
    pub fn embed_batch(&mut self, sentences: &[&str]) -> Vec<Vec<f32>> {
        // One at a time, on this thread, as the component tokenises.
        let encodings: Vec<Encoding> = sentences
            .iter()
            .map(|s| self.tokenizer.encode(*s, true).unwrap())
            .collect();
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut vectors = vec![Vec::new(); sentences.len()];
        for batch in soma_guest_sdk::text::batches(&lengths, soma_guest_sdk::text::MAX_BATCH) {
            let members: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            for (i, vector) in batch.into_iter().zip(self.run(&members)) {
                vectors[i] = vector;
            }
        }
        vectors
    }

    /// One run over `batch`, padded to its longest text.
    fn run(&mut self, batch: &[&Encoding]) -> Vec<Vec<f32>> {
        let n = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let tensor = |field: fn(&Encoding) -> &[u32]| {
            let values: Vec<i64> = batch
                .iter()
                .flat_map(|e| {
                    let v = field(e);
                    v.iter()
                        .map(|&x| i64::from(x))
                        .chain(std::iter::repeat_n(0, n - v.len()))
                })
                .collect();
            Tensor::from_array(([batch.len(), n], values)).unwrap()
        };
        let outputs = self
            .session
            .run(ort::inputs![
                "input_ids" => tensor(Encoding::get_ids),
                "attention_mask" => tensor(Encoding::get_attention_mask),
                "token_type_ids" => tensor(Encoding::get_type_ids),
            ])
            .unwrap();
        let (_, hidden) = outputs["last_hidden_state"]
            .try_extract_tensor::<f32>()
            .unwrap();
        hidden
            .chunks_exact(n * 384)
            .zip(batch)
            .map(|(rows, encoding)| {
                let tokens = encoding.get_ids().len() as f32;
                let mut mean = vec![0.0f32; 384];
                for row in rows.chunks_exact(384).take(encoding.get_ids().len()) {
                    for (m, x) in mean.iter_mut().zip(row) {
                        *m += x / tokens;
                    }
                }
                let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
                mean.iter().map(|x| x / norm).collect()
            })
            .collect()
    }
}
