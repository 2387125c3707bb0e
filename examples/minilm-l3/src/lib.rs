//! `minilm-l3`: paraphrase-MiniLM-L3-v2, tokenised in wasm and run on the
//! host's ONNX Runtime. Its graph pools itself: output `461` is the masked
//! mean of the token vectors, which the SDK normalises.
//!
//! Its package ships the model `paraphrase-minilm-l3-v2.onnx`; the tokenizer
//! is compiled in from `$SOMA_MODELS_DIR`, where `cargo xtask setup` puts it.

use soma_guest_sdk::text::{Pooling, SentenceModel, TextTokenizer};
use soma_guest_sdk::{EncodeError, Encoder, EncoderInfo, Modality};

/// blake3 of `paraphrase-minilm-l3-v2.onnx`, as recorded by `xtask`.
pub const MODEL_DIGEST: &str = "4ee3252c0fd21359e0471332a0fd8f759186510ed63e9eb87b1ad7e85387dcc0";

const TOKENIZER: &[u8] = include_bytes!(concat!(env!("SOMA_MODELS_DIR"), "/tokenizer.json"));

/// The encoder.
pub struct MiniLmL3(SentenceModel);

impl Encoder for MiniLmL3 {
    fn new() -> Self {
        MiniLmL3(SentenceModel {
            tokenizer: TextTokenizer::from_json(TOKENIZER)
                .expect("the tokenizer compiled in is valid"),
            model: MODEL_DIGEST,
            dimension: 384,
            token_type_ids: false,
            pooling: Pooling::Pooled("461"),
        })
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: "minilm-l3".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            dimension: 384,
            modality: Modality::Text,
            max_input_bytes: 16 * 1024,
        }
    }

    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        self.0.embed(inputs)
    }
}

soma_guest_sdk::export!(MiniLmL3);
