//! `cargo xtask demo`: loads the hash encoder component into the sandboxed
//! host, embeds a few sentences, and prints their cosine similarities.

use anyhow::{Context, Result};
use soma_host::{Engine, Limits, Seed};

const SENTENCES: &[&str] = &[
    "A man is playing a guitar on stage.",
    "On stage, a man plays the guitar.",
    "The central bank raised interest rates.",
    "Interest rates were raised by the central bank.",
    "A cat sleeps on the warm windowsill.",
];

fn main() -> Result<()> {
    let path = soma_examples_artifacts::HASH_ENCODER;
    let wasm = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    let engine = Engine::new()?;
    let encoder = engine.load(&wasm)?;
    let info = encoder.info();
    println!(
        "Loaded {} {} ({} KiB component): {} dimensions, {:?} input",
        info.name,
        info.version,
        wasm.len() / 1024,
        info.dimension,
        info.modality
    );

    let inputs: Vec<Vec<u8>> = SENTENCES.iter().map(|s| s.as_bytes().to_vec()).collect();
    let out = encoder.embed(&inputs, &Limits::default(), Seed::from(0))?;
    println!(
        "Embedded {} sentences in the sandbox for {} fuel.\n",
        inputs.len(),
        out.fuel_used
    );

    for (i, sentence) in SENTENCES.iter().enumerate() {
        println!("  [{i}] {sentence}");
    }
    print!("\ncosine ");
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
    println!(
        "\nParaphrases ([0]~[1], [2]~[3]) score higher than unrelated pairs.\n\
         Try it yourself:\n  cargo run -p soma-host -- run {path} -i \"some text\" --pretty"
    );
    Ok(())
}

/// Cosine similarity of two unit vectors.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
