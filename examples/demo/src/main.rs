//! `cargo xtask demo`: loads the example encoders into the sandboxed host,
//! embeds a few sentences with each, and prints their cosine similarities.
//!
//! The hash encoder runs as a bare component; `minilm-l6` is first signed
//! into a package with its ONNX model, as an author would publish it, then
//! verified and loaded the way a validator does.

use anyhow::{Context, Result};
use soma_crypto::SecretKey;
use soma_host::package::{EncoderMeta, Package};
use soma_host::{Encoder, Engine, Limits, Modality, Seed};
use std::path::PathBuf;

const SENTENCES: &[&str] = &[
    "A man is playing a guitar on stage.",
    "On stage, a man plays the guitar.",
    "The central bank raised interest rates.",
    "Interest rates were raised by the central bank.",
    "A cat sleeps on the warm windowsill.",
];

fn main() -> Result<()> {
    let engine = Engine::new()?;
    for (i, sentence) in SENTENCES.iter().enumerate() {
        println!("  [{i}] {sentence}");
    }

    let path = soma_examples_artifacts::HASH_ENCODER;
    let wasm = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    show(
        &engine.load(&wasm)?,
        &format!("{} KiB component", wasm.len() / 1024),
    )?;

    println!(
        "\nSigning minilm-l6 with its ONNX model and loading the package (pre-initialising the tokenizer)..."
    );
    let package = minilm_package()?;
    let minilm = engine.load_package(&package, None)?;
    show(&minilm, &format!("package {}", package.digest()))?;

    println!(
        "\nParaphrases ([0]~[1], [2]~[3]) score higher than unrelated pairs.\n\
         Try it yourself:\n  cargo run -p soma-host -- run {path} -i \"some text\" --pretty"
    );
    Ok(())
}

/// Embeds the sentences with `encoder` and prints the similarity table.
fn show(encoder: &Encoder, what: &str) -> Result<()> {
    let info = encoder.info();
    let inputs: Vec<Vec<u8>> = SENTENCES.iter().map(|s| s.as_bytes().to_vec()).collect();
    let out = encoder.embed(&inputs, &Limits::default(), Seed::from(0))?;
    println!(
        "\n{} {} ({what}): {} dimensions, {} sentences for {} fuel",
        info.name,
        info.version,
        info.dimension,
        inputs.len(),
        out.fuel_used
    );
    print!("cosine ");
    for j in 0..SENTENCES.len() {
        print!("  [{j}] ");
    }
    println!();
    for (i, a) in out.vectors.iter().enumerate() {
        print!("  [{i}]  ");
        for b in &out.vectors {
            print!("{:5.2} ", dot(a, b));
        }
        println!();
    }
    Ok(())
}

/// minilm-l6 and its model, signed with a throw-away key.
fn minilm_package() -> Result<soma_host::package::VerifiedPackage> {
    let models = PathBuf::from(
        std::env::var_os("SOMA_MODELS_DIR")
            .context("SOMA_MODELS_DIR is not set; run `cargo xtask setup`")?,
    );
    let model_path = models.join("all-minilm-l6-v2-int8.onnx");
    let model = std::fs::read(&model_path).with_context(|| {
        format!(
            "cannot read {}; run `cargo xtask setup`",
            model_path.display()
        )
    })?;
    let component = std::fs::read(soma_examples_artifacts::MINILM_L6)?;
    let key = SecretKey::generate()?;
    let meta = EncoderMeta {
        name: "minilm-l6".into(),
        version: "0.1.0".into(),
        dimension: 384,
        fuel_limit: Limits::default().fuel,
        modality: Modality::Text,
    };
    let models = vec![("all-minilm-l6-v2-int8.onnx".to_string(), model)];
    Ok(Package::sign(&key, &meta, component, models)?)
}

/// Cosine similarity of two unit vectors.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
