//! The example encoders in Python (`examples/python-encoder`, built with
//! componentize-py) and JavaScript (`examples/js-encoder`, componentize-js):
//! the same sandbox, the same guarantees as Rust guests. Both compute the
//! Rust guest SDK's hashed features.

const SENTENCES: &[&str] = &[
    "A man is playing a guitar on stage.",
    "On stage, a man plays the guitar.",
    "Interest rates rose again this quarter.",
    "The central bank raised interest rates this quarter.",
    "Crème brûlée, Ünïcode and emoji 🎸 count too…",
    "ΟΔΥΣΣΕΥΣ came home in 1200 BC",
    "",
];

/// The tests every example encoder in another language passes.
macro_rules! language_tests {
    ($module:ident, $artifact:expr, $name:literal) => {
        mod $module {
            use super::super::{bits, cosine, text};
            use super::SENTENCES;
            use soma_crypto::SecretKey;
            use soma_host::package::{EncoderMeta, Package};
            use soma_host::{
                CompiledCache, Encoder, Engine, Error, Limits, Modality, Seed,
            };
            use std::sync::OnceLock;

            const ARTIFACT: Option<&str> = $artifact;
            const NAME: &str = $name;

            fn component() -> Vec<u8> {
                let path = ARTIFACT.unwrap_or_else(|| {
                    panic!(
                        "the example encoder {NAME} was not built: its toolchain is missing \
                         (run `cargo xtask setup`)"
                    )
                });
                std::fs::read(path).expect("read the component")
            }

            /// Compiled code of the component, kept across test runs: it
            /// carries a whole interpreter, a minute or two to compile.
            fn cache() -> CompiledCache {
                CompiledCache::open(format!("{}/{NAME}-cache", env!("CARGO_TARGET_TMPDIR")))
                    .expect("open the compiled-component cache")
            }

            /// The encoder on the tests' shared engine.
            fn encoder() -> &'static Encoder {
                static ENCODER: OnceLock<Encoder> = OnceLock::new();
                ENCODER.get_or_init(|| {
                    super::super::engine()
                        .load_cached(&component(), &cache())
                        .expect("load the encoder")
                        .0
                })
            }

            #[test]
            fn it_describes_itself_and_embeds_into_unit_vectors_with_a_log_line() {
                let encoder = encoder();
                let info = encoder.info();
                assert_eq!(info.name, NAME);
                assert_eq!((info.dimension, info.modality), (384, Modality::Text));
                let out = encoder
                    .embed(&text(SENTENCES), &Limits::default(), Seed::from(0))
                    .unwrap();
                for (v, sentence) in out.vectors.iter().zip(SENTENCES) {
                    assert_eq!(v.len(), 384);
                    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if sentence.is_empty() {
                        assert_eq!(norm, 0.0);
                    } else {
                        assert!((norm - 1.0).abs() < 1e-5, "{sentence:?}: {norm}");
                    }
                }
                assert_eq!(out.logs.len(), 1);
                let logged = format!("embedded {} texts", SENTENCES.len());
                assert_eq!(out.logs[0].message, logged);
            }

            #[test]
            fn it_computes_the_rust_sdk_s_hashed_features_bit_for_bit() {
                let out = encoder()
                    .embed(&text(SENTENCES), &Limits::default(), Seed::from(0))
                    .unwrap();
                let rust: Vec<Vec<f32>> = SENTENCES
                    .iter()
                    .map(|s| soma_guest_sdk::hashing::hashed_features(s, 384))
                    .collect();
                assert_eq!(bits(&out.vectors), bits(&rust));
            }

            #[test]
            fn output_and_fuel_are_bit_identical_across_runs_and_fresh_engines() {
                let inputs = text(SENTENCES);
                let first = encoder()
                    .embed(&inputs, &Limits::default(), Seed::from(1))
                    .unwrap();
                let again = encoder()
                    .embed(&inputs, &Limits::default(), Seed::from(2))
                    .unwrap();
                assert_eq!(bits(&first.vectors), bits(&again.vectors));
                assert_eq!(first.fuel_used, again.fuel_used);
                // Compiled and pre-initialised again from scratch: an
                // interpreter's start-up (hash seeds, allocator state) must
                // leave the same snapshot on every validator. It costs over
                // a minute of the suite per language, and is worth it.
                let encoder = Engine::new().unwrap().load(&component()).unwrap();
                let out = encoder
                    .embed(&inputs, &Limits::default(), Seed::from(1))
                    .unwrap();
                assert_eq!(bits(&first.vectors), bits(&out.vectors));
                assert_eq!(first.fuel_used, out.fuel_used);
            }

            #[test]
            fn paraphrases_score_higher_than_unrelated_sentences() {
                let v = encoder()
                    .embed(&text(&SENTENCES[..4]), &Limits::default(), Seed::from(0))
                    .unwrap()
                    .vectors;
                let paraphrases = cosine(&v[0], &v[1]).min(cosine(&v[2], &v[3]));
                let unrelated = [(0, 2), (0, 3), (1, 2), (1, 3)]
                    .map(|(a, b)| cosine(&v[a], &v[b]))
                    .into_iter()
                    .fold(f32::MIN, f32::max);
                assert!(paraphrases > unrelated, "{paraphrases} vs {unrelated}");
            }

            #[test]
            fn running_out_of_fuel_stops_it_cleanly() {
                let limits = Limits {
                    fuel: 1_000_000,
                    ..Limits::default()
                };
                let err = encoder()
                    .embed(&text(SENTENCES), &limits, Seed::from(0))
                    .unwrap_err();
                assert!(
                    matches!(err, Error::FuelExhausted { limit: 1_000_000 }),
                    "{err}"
                );
                // The encoder is unharmed.
                assert!(
                    encoder()
                        .embed(&text(&SENTENCES[..1]), &Limits::default(), Seed::from(0))
                        .is_ok()
                );
            }

            #[test]
            fn invalid_utf8_is_refused_by_the_encoder_with_the_input_s_index() {
                let inputs = vec![b"fine".to_vec(), vec![0xff, 0xfe]];
                let err = encoder()
                    .embed(&inputs, &Limits::default(), Seed::from(0))
                    .unwrap_err();
                assert!(
                    matches!(&err, Error::Refused(m) if m.starts_with("input 1: not UTF-8")),
                    "{err}"
                );
            }

            #[test]
            fn it_signs_verifies_and_runs_as_a_package() {
                let key = SecretKey::from_bytes(&[7; 32]);
                let encoder = encoder();
                let meta = EncoderMeta::from_info(encoder.info(), 10_000_000_000);
                assert_eq!(meta.name, NAME);
                let direct = encoder
                    .embed(&text(SENTENCES), &Limits::default(), Seed::from(0))
                    .unwrap();
                let bytes = Package::sign(&key, &meta, component(), vec![])
                    .unwrap()
                    .encode();
                let package = Package::decode(&bytes)
                    .unwrap()
                    .verify(Some(&key.public_key()))
                    .unwrap();
                let encoder = super::super::engine()
                    .load_package(&package, Some(&cache()))
                    .unwrap();
                let packaged = encoder
                    .embed(&text(SENTENCES), &Limits::default(), Seed::from(0))
                    .unwrap();
                assert_eq!(bits(&direct.vectors), bits(&packaged.vectors));
                // Tampering is caught.
                let mut tampered = bytes.clone();
                let last = tampered.len() - 1;
                tampered[last] ^= 1;
                assert!(
                    Package::decode(&tampered)
                        .and_then(|p| p.verify(None))
                        .is_err(),
                    "a flipped byte verifies"
                );
            }
        }
    };
}

language_tests!(
    python,
    soma_examples_artifacts::PYTHON_ENCODER,
    "python-encoder"
);
language_tests!(
    javascript,
    soma_examples_artifacts::JS_ENCODER,
    "js-encoder"
);
