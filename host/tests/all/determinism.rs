//! Same component, same input, same seed: same bits, on any engine.

use super::{bits, cosine, hash_encoder, text};
use soma_host::{Engine, Error, Limits, Seed};

const SENTENCES: &[&str] = &[
    "A man is playing a guitar on stage.",
    "On stage, a man plays the guitar.",
    "Interest rates rose again this quarter.",
    "The central bank raised interest rates this quarter.",
    "Ünïcode, emoji 🎸 and punctuation… all count.",
    "",
];

#[test]
fn vectors_are_bit_identical_across_runs_and_fresh_engines() {
    let inputs = text(SENTENCES);
    let first = hash_encoder()
        .embed(&inputs, &Limits::default(), Seed::from(1))
        .unwrap();
    let again = hash_encoder()
        .embed(&inputs, &Limits::default(), Seed::from(1))
        .unwrap();
    assert_eq!(bits(&first.vectors), bits(&again.vectors));
    assert_eq!(first.fuel_used, again.fuel_used);
    assert_eq!(first.memory_bytes, again.memory_bytes);

    let wasm = std::fs::read(soma_examples_artifacts::HASH_ENCODER).unwrap();
    for _ in 0..2 {
        let fresh = Engine::new().unwrap().load(&wasm).unwrap();
        let out = fresh
            .embed(&inputs, &Limits::default(), Seed::from(1))
            .unwrap();
        assert_eq!(bits(&first.vectors), bits(&out.vectors));
        assert_eq!(first.fuel_used, out.fuel_used);
        assert_eq!(first.memory_bytes, out.memory_bytes);
    }
}

#[test]
fn the_memory_a_call_reports_is_exactly_what_it_needs() {
    let inputs = text(SENTENCES);
    let out = hash_encoder()
        .embed(&inputs, &Limits::default(), Seed::from(1))
        .unwrap();
    let page = 64 << 10;
    assert!(out.memory_bytes >= page && out.memory_bytes.is_multiple_of(page));
    let limits = |max_memory_bytes| Limits {
        max_memory_bytes,
        ..Limits::default()
    };
    let exact = hash_encoder()
        .embed(&inputs, &limits(out.memory_bytes), Seed::from(1))
        .unwrap();
    assert_eq!(bits(&exact.vectors), bits(&out.vectors));
    let Err(err) = hash_encoder().embed(&inputs, &limits(out.memory_bytes - page), Seed::from(1))
    else {
        panic!("ran in a page less than it reported");
    };
    assert!(matches!(err, Error::MemoryLimit { .. }), "{err}");
}

#[test]
fn wasm_output_matches_the_same_code_compiled_natively() {
    use soma_guest_sdk::TextEncoder;
    let native = hash_encoder::HashEncoder::default();
    for sentence in SENTENCES {
        let out = hash_encoder()
            .embed(&text(&[sentence]), &Limits::default(), Seed::from(0))
            .unwrap();
        assert_eq!(
            bits(&out.vectors),
            bits(&[native.embed_text(sentence)]),
            "{sentence:?}"
        );
    }
}

#[test]
fn a_sentence_embeds_the_same_alone_and_inside_a_batch() {
    let batch = hash_encoder()
        .embed(&text(SENTENCES), &Limits::default(), Seed::from(3))
        .unwrap();
    for (i, sentence) in SENTENCES.iter().enumerate() {
        let alone = hash_encoder()
            .embed(&text(&[sentence]), &Limits::default(), Seed::from(3))
            .unwrap();
        assert_eq!(bits(&alone.vectors)[0], bits(&batch.vectors)[i]);
    }
}

#[test]
fn paraphrases_score_higher_than_unrelated_sentences() {
    let v = hash_encoder()
        .embed(&text(SENTENCES), &Limits::default(), Seed::from(0))
        .unwrap()
        .vectors;
    let guitar_paraphrase = cosine(&v[0], &v[1]);
    let rates_paraphrase = cosine(&v[2], &v[3]);
    for unrelated in [
        cosine(&v[0], &v[2]),
        cosine(&v[0], &v[3]),
        cosine(&v[1], &v[2]),
        cosine(&v[1], &v[3]),
    ] {
        assert!(
            guitar_paraphrase > unrelated,
            "{guitar_paraphrase} <= {unrelated}"
        );
        assert!(
            rates_paraphrase > unrelated,
            "{rates_paraphrase} <= {unrelated}"
        );
    }
}

#[test]
fn output_is_unit_length_and_of_the_declared_dimension() {
    let info = hash_encoder().info();
    assert_eq!((info.name.as_str(), info.dimension), ("hash-encoder", 384));
    let out = hash_encoder()
        .embed(&text(&SENTENCES[..5]), &Limits::default(), Seed::from(0))
        .unwrap();
    for v in &out.vectors {
        assert_eq!(v.len(), 384);
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
