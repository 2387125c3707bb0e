//! The MiniLM encoders: wasm tokenisation, host ONNX Runtime inference.
//!
//! These need what `cargo xtask setup` installs: ONNX Runtime
//! (`SOMA_ORT_DYLIB`) and the models (`SOMA_MODELS_DIR`).

use super::native::NativeMiniLm;
use super::{bits, cosine, engine, text};
use soma_crypto::SecretKey;
use soma_host::package::{EncoderMeta, Package, VerifiedPackage};
use soma_host::{Encoder, Engine, Error, Limits, Modality, Seed};
use std::path::PathBuf;
use std::sync::OnceLock;

const L6_MODEL: &str = "all-minilm-l6-v2-int8.onnx";
const L3_MODEL: &str = "paraphrase-minilm-l3-v2.onnx";

fn models_dir() -> PathBuf {
    let dir =
        std::env::var_os("SOMA_MODELS_DIR").expect("SOMA_MODELS_DIR is set by .cargo/config.toml");
    let dir = PathBuf::from(dir);
    assert!(
        dir.join(L6_MODEL).is_file(),
        "{} is missing: run `cargo xtask setup`",
        dir.display()
    );
    dir
}

fn model(name: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(name)).unwrap()
}

/// What the MiniLM test packages declare, under `name`.
fn meta(name: &str) -> EncoderMeta {
    EncoderMeta {
        name: name.into(),
        version: "0.1.0".into(),
        dimension: 384,
        fuel_limit: 50_000_000_000,
        modality: Modality::Text,
        // As the components' `info()` says (loading checks it): the
        // hostile encoder's own limit, or the guest SDK's sentence
        // encoders' default.
        max_input_bytes: match name {
            "hostile" => 1024,
            _ => 16 * 1024,
        },
    }
}

/// Signs `component` with the models named `models` into a package
/// declared as `name`.
fn package(component: &str, name: &str, models: &[&str]) -> VerifiedPackage {
    let blobs = models.iter().map(|m| (m.to_string(), model(m))).collect();
    package_with(component, name, blobs)
}

/// Signs `component` with `blobs` (name, bytes) into a package declared as
/// `name`.
pub(super) fn package_with(
    component: &str,
    name: &str,
    blobs: Vec<(String, Vec<u8>)>,
) -> VerifiedPackage {
    let component = std::fs::read(component).unwrap();
    Package::sign(
        &SecretKey::from_bytes(&[5; 32]),
        &meta(name),
        component,
        blobs,
    )
    .unwrap()
}

pub(super) fn l6() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let package = package(soma_examples_artifacts::MINILM_L6, "minilm-l6", &[L6_MODEL]);
        engine().load_package(&package, None).unwrap()
    })
}

fn l3() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let package = package(soma_examples_artifacts::MINILM_L3, "minilm-l3", &[L3_MODEL]);
        engine().load_package(&package, None).unwrap()
    })
}

const SENTENCES: &[&str] = &[
    "A man is playing a guitar.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "A woman is reading a book in the library.",
    "Stock markets fell sharply after the announcement.",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog.",
    "Quantum computers exploit superposition and entanglement.",
    "I love pizza with extra cheese!",
    "Die Katze schläft auf dem Sofa.",
    "El tren llega a las cinco de la tarde.",
    "Photosynthesis converts light energy into chemical energy.",
    "Please remember to water the plants while I'm away.",
    "ERROR 404: page not found",
    "a",
    "The committee postponed the vote until next Tuesday because several members were absent.",
    "Emoji 🎸🔥 and numbers 3.14159 mixed with words.",
    "Validators agree on the order of transactions with a DAG consensus.",
    "She sells seashells by the seashore.",
    "What is the capital of Australia? Canberra, not Sydney.",
    "    leading and trailing whitespace    ",
    "Long text: the history of the Roman Empire spans centuries, from the founding of the city \
     through the Republic, the rise of Augustus, the Pax Romana, the crises of the third century, \
     the division into East and West, and the eventual fall of the Western Empire in 476.",
];

/// all-MiniLM-L6-v2 natively, with ONNX Runtime's default settings.
fn native_l6(sentence: &str) -> Vec<f32> {
    static NATIVE: OnceLock<std::sync::Mutex<NativeMiniLm>> = OnceLock::new();
    let native = NATIVE.get_or_init(|| {
        let env = soma_host::worker::runtime().unwrap();
        let builder = ort::session::Session::builder(env).unwrap();
        let tokenizer = models_dir().join("tokenizer.json");
        std::sync::Mutex::new(NativeMiniLm::new(builder, &model(L6_MODEL), &tokenizer))
    });
    native.lock().unwrap().embed(sentence)
}

#[test]
fn minilm_l6_in_wasm_matches_the_native_reference() {
    let out = l6()
        .embed(&text(SENTENCES), &Limits::default(), Seed::from(0))
        .unwrap();
    for (sentence, vector) in SENTENCES.iter().zip(&out.vectors) {
        let similarity = cosine(vector, &native_l6(sentence));
        assert!(similarity >= 0.9999, "{sentence:?}: cosine {similarity}");
    }
}

#[test]
fn paraphrases_score_higher_than_unrelated_pairs_for_both_encoders() {
    let pairs = [
        (
            "A man is playing a guitar.",
            "Someone is strumming a guitar.",
            "The stock market crashed today.",
        ),
        (
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
            "Bake the bread for forty minutes.",
        ),
        (
            "The cat sleeps on the sofa.",
            "A kitten is napping on the couch.",
            "Parliament passed the budget bill.",
        ),
    ];
    for encoder in [l6(), l3()] {
        for (a, paraphrase, unrelated) in pairs {
            let v = encoder
                .embed(
                    &text(&[a, paraphrase, unrelated]),
                    &Limits::default(),
                    Seed::from(0),
                )
                .unwrap()
                .vectors;
            let (close, far) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
            assert!(
                close > far + 0.2,
                "{}: {a:?} ~ {paraphrase:?} {close} vs {unrelated:?} {far}",
                encoder.info().name
            );
        }
    }
}

/// Mean cosine between `encoder`'s vectors and `minilm-l6`'s on
/// [`SENTENCES`], text neither head was fitted on.
fn mean_cosine_to_l6(encoder: &Encoder) -> f32 {
    let limits = Limits::default();
    let reference = l6()
        .embed(&text(SENTENCES), &limits, Seed::from(0))
        .unwrap();
    let out = encoder
        .embed(&text(SENTENCES), &limits, Seed::from(0))
        .unwrap();
    let total: f32 = out
        .vectors
        .iter()
        .zip(&reference.vectors)
        .map(|(a, b)| cosine(a, b))
        .sum();
    total / SENTENCES.len() as f32
}

#[test]
fn aligned_encoders_embed_into_the_reference_space() {
    // Without their heads these are near 0.26 (minilm-l3) and 0 (hash
    // encoder): other spaces. The heads were fitted on generated sentences
    // and crate documentation (held-out mean cosines 0.78 and 0.67); these
    // short, partly multilingual sentences are further from that corpus.
    let l3 = mean_cosine_to_l6(l3());
    let hash = mean_cosine_to_l6(super::hash_encoder());
    eprintln!(
        "mean cosine with minilm-l6 on unseen text: minilm-l3 {l3:.3}, hash encoder {hash:.3}"
    );
    assert!(l3 > 0.35, "aligned minilm-l3 is {l3} from minilm-l6");
    assert!(
        hash > 0.1,
        "the aligned hash encoder is {hash} from minilm-l6"
    );
}

#[test]
fn concurrent_runs_of_one_model_go_to_a_second_worker_with_the_same_bits() {
    // A fresh engine: no other model has started a worker.
    let engine = Engine::new().unwrap();
    let package = package(soma_examples_artifacts::MINILM_L6, "minilm-l6", &[L6_MODEL]);
    let encoder = engine.load_package(&package, None).unwrap();
    let inputs = text(&SENTENCES[..8]);
    let start = std::sync::Barrier::new(2);
    let outputs: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    encoder
                        .embed(&inputs, &Limits::default(), Seed::from(0))
                        .unwrap()
                        .vectors
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(bits(&outputs[0]), bits(&outputs[1]));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(engine.running_inference_workers(), cores.min(2));
}

#[test]
fn a_batch_is_bit_identical_across_runs_and_hosts() {
    let batch = text(SENTENCES);
    let first = l6()
        .embed(&batch, &Limits::default(), Seed::from(1))
        .unwrap();
    let again = l6()
        .embed(&batch, &Limits::default(), Seed::from(1))
        .unwrap();
    assert_eq!(bits(&first.vectors), bits(&again.vectors));
    assert_eq!(first.fuel_used, again.fuel_used);
    // Another seed never changes the vectors.
    let reseeded = l6()
        .embed(&batch, &Limits::default(), Seed::from(2))
        .unwrap();
    assert_eq!(bits(&first.vectors), bits(&reseeded.vectors));

    let fresh = Engine::new().unwrap();
    let package = package(soma_examples_artifacts::MINILM_L6, "minilm-l6", &[L6_MODEL]);
    let other = fresh
        .load_package(&package, None)
        .unwrap()
        .embed(&batch, &Limits::default(), Seed::from(1))
        .unwrap();
    assert_eq!(bits(&first.vectors), bits(&other.vectors));
    assert_eq!(
        first.fuel_used, other.fuel_used,
        "pre-initialisation is deterministic"
    );
}

#[test]
fn batched_runs_stay_within_1e_5_of_single_runs_for_both_models() {
    // Sentences of many lengths: the encoder splits them into several
    // padded runs.
    let batch = text(SENTENCES);
    for (name, encoder) in [("minilm-l6", l6()), ("minilm-l3", l3())] {
        let together = encoder
            .embed(&batch, &Limits::default(), Seed::from(1))
            .unwrap();
        let mut largest = 0.0f32;
        for (sentence, batched) in SENTENCES.iter().zip(&together.vectors) {
            let alone = encoder
                .embed(&text(&[sentence]), &Limits::default(), Seed::from(1))
                .unwrap();
            let difference = alone.vectors[0]
                .iter()
                .zip(batched)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            largest = largest.max(difference);
        }
        println!("{name}: largest difference between batched and single runs: {largest:e}");
        assert!(largest < 1e-5, "{name}: {largest}");
    }
}

#[test]
fn texts_of_one_length_run_as_one_model_run() {
    // Eight copies of a sentence: one 8 × n run in a batch, eight 1 × n
    // runs apart. The plan's fuel for a run has a fixed part, so apart
    // costs at least what the plans differ by; with one run per text the
    // batch would save only instance starts, far less.
    let sentence = SENTENCES[0];
    let fuel = |texts: &[&str]| {
        l6().embed(&text(texts), &Limits::default(), Seed::from(1))
            .unwrap()
            .fuel_used
    };
    let (together, alone) = (fuel(&[sentence; 8]), fuel(&[sentence]));
    // The file pads to 128 tokens; the encoder does not pad a text alone.
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(models_dir().join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None);
    let tokens = tokenizer.encode(sentence, true).unwrap().len() as u64;
    let admitted = soma_host::model::admit(&model(L6_MODEL)).unwrap();
    let planned = |texts: u64| admitted.fuel(&vec![vec![texts, tokens]; 3]).unwrap();
    let batching_saves = (8 * planned(1)).saturating_sub(planned(8));
    assert!(batching_saves > 50_000_000, "{batching_saves}");
    assert!(
        (8 * alone).saturating_sub(together) >= batching_saves,
        "8 × {alone} apart, {together} together: saved less than {batching_saves}"
    );
}

/// The hostile encoder packaged with the L6 model, so that it can reach the
/// inference import.
fn hostile_with_model() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let package = package(soma_examples_artifacts::HOSTILE, "hostile", &[L6_MODEL]);
        engine().load_package(&package, None).unwrap()
    })
}

#[test]
fn inference_abuse_gets_typed_errors_and_the_host_keeps_serving() {
    let l6_digest = blake3::hash(&model(L6_MODEL)).to_hex().to_string();
    let l3_digest = blake3::hash(&model(L3_MODEL)).to_hex().to_string();
    let cases = [
        ("open", "0".repeat(64), "NotFound"),
        ("open", "not a digest".to_string(), "NotFound"),
        ("open", l3_digest, "NotFound"),
        ("absurd-shape", l6_digest.clone(), "TooLarge"),
        ("wrong-dtype", l6_digest.clone(), "InvalidArgument"),
        ("wrong-length", l6_digest.clone(), "InvalidArgument"),
        ("huge-tensor", l6_digest.clone(), "TooLarge"),
        ("many-sessions", l6_digest.clone(), "TooLarge"),
    ];
    for (attack, digest, code) in cases {
        let input = format!("infer:{attack}:{digest}");
        let result =
            hostile_with_model().embed(&text(&[&input]), &Limits::default(), Seed::from(0));
        match result {
            Err(Error::Refused(message)) => assert!(message.contains(code), "{attack}: {message}"),
            Err(other) => panic!("{attack}: expected a refusal with {code}, got {other}"),
            Ok(_) => panic!("{attack}: the abuse succeeded"),
        }
        l6().embed(&text(&["still serving"]), &Limits::default(), Seed::from(0))
            .unwrap();
    }
}

#[test]
fn fresh_instances_start_pre_initialised() {
    // Parsing tokenizer.json in a fresh instance costs hundreds of millions
    // of fuel; the
    // pre-initialised snapshot starts with the tokenizer built, and a short
    // sentence costs its tokenisation and inference only (~10M).
    let fuel = l6()
        .embed(&text(&["short"]), &Limits::default(), Seed::from(0))
        .unwrap()
        .fuel_used;
    assert!(fuel < 50_000_000, "{fuel}");
}

#[test]
fn inference_is_paid_for_in_fuel() {
    let short = l6()
        .embed(&text(&["short"]), &Limits::default(), Seed::from(0))
        .unwrap()
        .fuel_used;
    let long = l6()
        .embed(&text(&[SENTENCES[21]]), &Limits::default(), Seed::from(0))
        .unwrap()
        .fuel_used;
    assert!(long > short, "{long} <= {short}");
    let err = l6().embed(
        &text(&[SENTENCES[21]]),
        &Limits {
            fuel: short,
            ..Limits::default()
        },
        Seed::from(0),
    );
    assert!(matches!(err, Err(Error::FuelExhausted { .. })), "{err:?}");
}

#[test]
fn a_package_with_a_corrupt_model_fails_at_load_with_a_clear_error() {
    let mut corrupt = model(L6_MODEL);
    corrupt.truncate(corrupt.len() / 2);
    let component = std::fs::read(soma_examples_artifacts::MINILM_L6).unwrap();
    let package = Package::sign(
        &SecretKey::from_bytes(&[5; 32]),
        &meta("minilm-l6"),
        component,
        vec![(L6_MODEL.into(), corrupt)],
    )
    .unwrap();
    let Err(err) = engine().load_package(&package, None) else {
        panic!("a corrupt model loaded")
    };
    assert!(
        matches!(&err, Error::InvalidModel { name, .. } if name == L6_MODEL),
        "{err}"
    );
}
