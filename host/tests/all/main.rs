//! Integration tests of the host against real components compiled from
//! `examples/` by `soma-examples-artifacts`.

mod cli;
mod determinism;
mod hostile;
mod languages;
mod minilm;
mod models;
mod native;
mod onnx;
mod package;
mod worker;

use soma_host::{Encoder, Engine};
use std::sync::OnceLock;

/// One engine for the tests that do not need a fresh one.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new().expect("engine"))
}

fn load(path: &str) -> Encoder {
    engine()
        .load(&std::fs::read(path).expect("read component"))
        .expect("load component")
}

fn hash_encoder() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| load(soma_examples_artifacts::HASH_ENCODER))
}

fn hostile() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| load(soma_examples_artifacts::HOSTILE))
}

fn text(inputs: &[&str]) -> Vec<Vec<u8>> {
    inputs.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn bits(vectors: &[Vec<f32>]) -> Vec<Vec<u32>> {
    vectors
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}
