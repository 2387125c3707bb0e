//! all-MiniLM-L6-v2 run natively (Hugging Face tokenizers and ONNX Runtime
//! from Rust, mean pooling, L2 normalisation): the reference the wasm
//! encoder is tested against, and its baseline in the benchmarks.

use ort::session::Session;
use ort::session::builder::SessionBuilder;
use ort::value::Tensor;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

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
        let encoding = self.tokenizer.encode(sentence, true).unwrap();
        let n = encoding.get_ids().len();
        let tensor = |v: &[u32]| {
            Tensor::from_array(([1, n], v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>()))
                .unwrap()
        };
        let outputs = self
            .session
            .run(ort::inputs![
                "input_ids" => tensor(encoding.get_ids()),
                "attention_mask" => tensor(encoding.get_attention_mask()),
                "token_type_ids" => tensor(encoding.get_type_ids()),
            ])
            .unwrap();
        let (_, hidden) = outputs["last_hidden_state"]
            .try_extract_tensor::<f32>()
            .unwrap();
        let mut mean = vec![0.0f32; 384];
        for row in hidden.chunks_exact(384) {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += x / n as f32;
            }
        }
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
        mean.iter().map(|x| x / norm).collect()
    }
}
