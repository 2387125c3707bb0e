//! `minilm-l6`: the network's reference encoder, all-MiniLM-L6-v2
//! (quantised to int8), tokenised in wasm and run on the host's ONNX Runtime.
//!
//! Its package ships the model `all-minilm-l6-v2-int8.onnx`; the tokenizer (`tokenizer.json`,
//! shared by the MiniLM family) is compiled in from `$SOMA_MODELS_DIR`,
//! where `cargo xtask setup` puts it.

use soma_guest_sdk::text::{Pooling, SentenceTransformer};

/// The model, as the SDK's sentence encoder sees it.
pub struct MiniLmL6;

impl SentenceTransformer for MiniLmL6 {
    const NAME: &'static str = "minilm-l6";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    /// blake3 of `all-minilm-l6-v2-int8.onnx`, as recorded by `xtask`.
    const MODEL: &'static str = "b2a68b34a45c28477ee9619f6f1ed03064209e3c3dae66aac2cedc4ee59c286d";
    const TOKENIZER: &'static [u8] =
        include_bytes!(concat!(env!("SOMA_MODELS_DIR"), "/tokenizer.json"));
    const TOKEN_TYPE_IDS: bool = true;
    const POOLING: Pooling = Pooling::MeanOfTokens("last_hidden_state");
}

soma_guest_sdk::export!(soma_guest_sdk::text::SentenceEncoder<MiniLmL6>);
