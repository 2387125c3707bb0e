//! `soma-align`: fits an encoder's alignment head into the network's
//! embedding space.
//!
//! Both encoders (the reference, `minilm-l6` on the Soma network, and the
//! source to align, built without a head) run in the Soma host on a corpus
//! of sentences; a ridge regression from the source's vectors to the
//! reference's gives the head, which `soma_guest_sdk::align` reads. The
//! last sentences are held out: the report says how close the aligned
//! source comes to the reference on text it was not fitted on.
//!
//! ```text
//! soma-align --reference minilm-l6.somapkg --source minilm-l3-raw.somapkg --out head.bin \
//!     [--source other.somapkg --out other-head.bin ...]
//! ```

mod corpus;
mod ridge;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use soma_host::package::Package;
use soma_host::{Encoder, Engine, Limits, Seed};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Fit an alignment head from a source encoder to a reference encoder.
#[derive(Parser)]
#[command(name = "soma-align", version, about, long_about = None)]
struct Args {
    /// The reference encoder's signed package (the network's space).
    #[arg(long, value_name = "PACKAGE")]
    reference: PathBuf,
    /// The signed package of an encoder to align, built without a head;
    /// repeat for several (the reference runs once for all).
    #[arg(long = "source", value_name = "PACKAGE", required = true)]
    sources: Vec<PathBuf>,
    /// Sentences to fit on, one per line, besides the generated ones.
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Generated sentences (everyday statements, questions, requests).
    #[arg(long, default_value_t = 3_000)]
    sentences: usize,
    /// Seed of the generated corpus.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sentences held out from fitting, to judge the head.
    #[arg(long, default_value_t = 500)]
    held_out: usize,
    /// Where to write the head of each source, in the same order.
    #[arg(short, long = "out", value_name = "FILE", required = true)]
    outs: Vec<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soma-align: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let mut sentences = corpus::generate(args.sentences, args.seed);
    if let Some(path) = &args.corpus {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read corpus {}", path.display()))?;
        sentences.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    // A fixed shuffle, so that what is held out is drawn from every source.
    sentences.sort_by_cached_key(|s| soma_guest_sdk::hashing::feature_hash(b'c', s.as_bytes()));
    sentences.dedup();
    // Fitting needs more pairs than dimensions, beyond what is held out.
    if sentences.len() < args.held_out + 1_000 {
        bail!(
            "{} sentences: need at least {} (1 000 to fit beyond the {} held out)",
            sentences.len(),
            args.held_out + 1_000,
            args.held_out
        );
    }
    if args.sources.len() != args.outs.len() {
        bail!(
            "{} sources and {} outputs: give one --out per --source",
            args.sources.len(),
            args.outs.len()
        );
    }
    let engine = Engine::new()?;
    let reference = load(&engine, &args.reference)?;
    let ys = embed_all(&reference, &sentences, "reference")?;
    let split = sentences.len() - args.held_out;
    println!(
        "reference {} ({} dimensions), {} sentences: {} to fit, {} held out",
        reference.info().name,
        reference.info().dimension,
        sentences.len(),
        split,
        args.held_out
    );
    for (source, out) in args.sources.iter().zip(&args.outs) {
        let source = load(&engine, source)?;
        let xs = embed_all(&source, &sentences, "source")?;
        let fit = ridge::fit(&xs[..split], &ys[..split], split / 10).map_err(anyhow::Error::msg)?;
        let held_out = ridge::mean_cosine(&fit.head, &xs[split..], &ys[split..]);
        std::fs::write(out, fit.head.to_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
        let raw = match xs[0].len() == ys[0].len() {
            true => {
                let total: f64 = xs[split..]
                    .iter()
                    .zip(&ys[split..])
                    .map(|(x, y)| ridge::cosine(x, y))
                    .sum();
                format!("{:.4} unaligned, ", total / args.held_out as f64)
            }
            false => String::new(),
        };
        println!(
            "{} ({} dimensions): ridge λ = {} (validation mean cosine {:.4}); \
             held-out mean cosine with the reference {raw}{held_out:.4} aligned; head written to {}",
            source.info().name,
            source.info().dimension,
            fit.lambda,
            fit.validation_cosine,
            out.display()
        );
    }
    Ok(())
}

/// Loads a signed package into `engine`.
fn load(engine: &Engine, path: &Path) -> Result<Encoder> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let package = Package::decode(&bytes)
        .and_then(|p| p.verify(None))
        .with_context(|| format!("{} is not a valid package", path.display()))?;
    engine
        .load_package(&package, None)
        .with_context(|| format!("cannot load {}", path.display()))
}

/// Every sentence's vector from `encoder`, in batches, with progress.
fn embed_all(encoder: &Encoder, sentences: &[String], what: &str) -> Result<Vec<Vec<f32>>> {
    const BATCH: usize = 32;
    let bar = ProgressBar::new(sentences.len() as u64).with_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} sentences, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    let mut out = Vec::with_capacity(sentences.len());
    for batch in sentences.chunks(BATCH) {
        let inputs: Vec<Vec<u8>> = batch.iter().map(|s| s.as_bytes().to_vec()).collect();
        let embeddings = encoder
            .embed(&inputs, &Limits::default(), Seed::from(0))
            .with_context(|| format!("the {what} encoder failed on a batch"))?;
        out.extend(embeddings.vectors);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}
