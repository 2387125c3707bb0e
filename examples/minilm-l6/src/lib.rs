//! `minilm-l6`: the network's reference encoder, all-MiniLM-L6-v2
//! (quantised to int8), tokenised in wasm and run on the host's ONNX Runtime.
//!
//! Its package ships the model `all-minilm-l6-v2-int8.onnx`; the tokenizer
//! (`tokenizer.json`, shared by the MiniLM family) is compiled into the
//! component from `$SOMA_MODELS_DIR`, where `cargo xtask setup` puts it.

use soma_guest_sdk::text::{Pooling, SentenceModel, TextTokenizer};
use soma_guest_sdk::{EncodeError, Encoder, EncoderInfo, Modality};

/// blake3 of `all-minilm-l6-v2-int8.onnx`, as recorded by `xtask`.
pub const MODEL_DIGEST: &str = "b2a68b34a45c28477ee9619f6f1ed03064209e3c3dae66aac2cedc4ee59c286d";

const TOKENIZER: &[u8] = include_bytes!(concat!(env!("SOMA_MODELS_DIR"), "/tokenizer.json"));

/// The encoder.
pub struct MiniLmL6(SentenceModel);

impl Encoder for MiniLmL6 {
    fn new() -> Self {
        MiniLmL6(SentenceModel {
            tokenizer: TextTokenizer::from_json(TOKENIZER)
                .expect("the tokenizer compiled in is valid"),
            model: MODEL_DIGEST,
            dimension: 384,
            token_type_ids: true,
            pooling: Pooling::MeanOfTokens("last_hidden_state"),
        })
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: "minilm-l6".into(),
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

soma_guest_sdk::export!(MiniLmL6);
