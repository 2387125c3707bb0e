//! `minilm-l3`: paraphrase-MiniLM-L3-v2, tokenised in wasm and run on the
//! host's ONNX Runtime. Its graph pools itself: output `461` is the masked
//! mean of the token vectors, which the SDK normalises and maps through
//! the alignment head `head.bin` into `minilm-l6`'s space (the network's).
//!
//! Its package ships the model `paraphrase-minilm-l3-v2.onnx`; the tokenizer (`tokenizer.json`,
//! shared by the MiniLM family) is compiled in from `$SOMA_MODELS_DIR`,
//! where `cargo xtask setup` puts it.

use soma_guest_sdk::text::{Pooling, SentenceTransformer};

/// The model, as the SDK's sentence encoder sees it.
pub struct MiniLmL3;

impl SentenceTransformer for MiniLmL3 {
    const NAME: &'static str = "minilm-l3";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    /// blake3 of `paraphrase-minilm-l3-v2.onnx`, as recorded by `xtask`.
    const MODEL: &'static str = "4ee3252c0fd21359e0471332a0fd8f759186510ed63e9eb87b1ad7e85387dcc0";
    const TOKENIZER: &'static [u8] =
        include_bytes!(concat!(env!("SOMA_MODELS_DIR"), "/tokenizer.json"));
    const TOKEN_TYPE_IDS: bool = false;
    const POOLING: Pooling = Pooling::Pooled("461");
    /// Into `minilm-l6`'s space, fitted by `cargo xtask align`; none
    /// without the `aligned` feature (on by default), which is how the head
    /// is fitted.
    const HEAD: Option<&'static [u8]> = if cfg!(feature = "aligned") {
        Some(include_bytes!("../head.bin"))
    } else {
        None
    };
}

soma_guest_sdk::export!(soma_guest_sdk::text::SentenceEncoder<MiniLmL3>);
