//! Adversarial encoders among honest ones, all real components: each is
//! caught by the shard's honest majority, slashed, and left out of the
//! final embedding.
//!
//! The honest majority is the hash encoder run by two operators, which
//! agree exactly. Honest encoders of different models agree only as well
//! as their alignment heads map them into one space (see
//! `host/tests/all/minilm.rs`): beside two of those, a random encoder is
//! out by its loss before the outlier test, which two cannot carry.

use super::*;
use soma_execution::{EncoderScore, ONE};
use soma_host::Engine;

/// Euclidean distance between fixed-point vectors, as a float.
fn distance(a: &[i32], b: &[i32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x - y) / ONE as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn random_constant_and_copycat_encoders_are_outliers_slashed_and_left_out() {
    let sentence: &[u8] = b"The river flooded the valley after three days of rain.";
    for (component, name) in [
        (soma_examples_artifacts::RANDOM_ENCODER, "random-encoder"),
        (
            soma_examples_artifacts::CONSTANT_ENCODER,
            "constant-encoder",
        ),
        (soma_examples_artifacts::COPYCAT_ENCODER, "copycat-encoder"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        // Two operators run the hash encoder; account 11 runs the
        // adversary.
        let hash =
            |owner| example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", owner);
        let (honest_a, honest_b) = (hash(10), hash(12));
        let adversary = example_package(component, name, 11);
        let g = encoder_network(
            &store,
            &[(&honest_a, 10), (&honest_b, 12), (&adversary, 11)],
            Parameters {
                shard_size: 3,
                ..Parameters::default()
            },
        );
        let mut ex = open(&dir.path().join("state"), &g);
        let runner = JobRunner::new(Engine::new().unwrap(), store, None);
        let jobs = submit_all(&mut ex, &g, &[sentence]);
        let job = ex.job(&jobs[0]).unwrap().unwrap();
        let attested = runner.compute(&job, g.parameters()).unwrap();
        let decided = decide_all(&mut ex, &g, &runner, &jobs).remove(0);

        let score = |d: Digest| -> EncoderScore {
            decided
                .encoders
                .iter()
                .find(|e| e.package == d)
                .unwrap()
                .clone()
        };
        let embedding =
            |d: Digest| &attested[job.shard.iter().position(|&p| p == d).unwrap()].embedding;
        let bad = score(adversary.digest());
        assert!(bad.disqualified, "{name} was not disqualified: {decided:?}");
        assert_eq!(
            (bad.weight, bad.reward, bad.slashed),
            (0, 0, 1_000_000),
            "{name}"
        );
        assert_eq!(
            ex.encoder(&adversary.digest()).unwrap().unwrap().bond,
            9_000_000
        );
        let honest = [honest_a.digest(), honest_b.digest()];
        for d in honest {
            assert!(
                !score(d).disqualified,
                "{name}: an honest encoder was disqualified"
            );
        }
        assert_eq!(
            honest.iter().map(|&d| score(d).reward).sum::<u64>(),
            400_000,
            "{name}: the best honest encoder is paid"
        );
        // The final embedding is the honest one, closer to each honest
        // member than the adversary's vector is.
        let to_adversary = distance(&decided.embedding, embedding(adversary.digest()));
        for d in honest {
            let to_honest = distance(&decided.embedding, embedding(d));
            assert!(to_honest < 0.01, "{name}: {to_honest}");
            assert!(
                to_honest < to_adversary,
                "{name}: {to_honest} vs {to_adversary}"
            );
        }
        eprintln!(
            "{name}: distance from the final embedding {to_adversary:.3}, loss {} (honest {})",
            bad.loss as f64 / ONE as f64,
            score(honest[0]).loss as f64 / ONE as f64
        );
    }
}

/// A shard of two honest encoders of different models (MiniLM-L6 and the
/// hash encoder) and the random encoder: the random one's loss (about 1.0)
/// puts it out before the outlier test, which then does not run (two are
/// too few to judge), so neither honest encoder is slashed and the final
/// embedding is theirs alone. Before the loss ceiling, the random vector
/// pulled the shard's robust centre so that the hash encoder was the
/// outlier on some sentences (the demo's "A cat sleeps on the warm
/// windowsill.").
#[test]
fn beside_two_different_honest_models_a_random_encoder_is_out_by_its_loss() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let l6 = minilm_package(
        soma_examples_artifacts::MINILM_L6,
        "minilm-l6",
        "all-minilm-l6-v2-int8.onnx",
        10,
    );
    let hash = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 12);
    let random = example_package(
        soma_examples_artifacts::RANDOM_ENCODER,
        "random-encoder",
        11,
    );
    let g = encoder_network(
        &store,
        &[(&l6, 10), (&random, 11), (&hash, 12)],
        Parameters {
            shard_size: 3,
            ..Parameters::default()
        },
    );
    let mut ex = open(&dir.path().join("state"), &g);
    let runner = JobRunner::new(Engine::new().unwrap(), store, None);
    let sentences: [&[u8]; 3] = [
        b"A cat sleeps on the warm windowsill.",
        b"A man is playing a guitar.",
        b"The central bank raised interest rates.",
    ];
    let jobs = submit_all(&mut ex, &g, &sentences);
    for decided in decide_all(&mut ex, &g, &runner, &jobs) {
        let score = |d: Digest| decided.encoders.iter().find(|e| e.package == d).unwrap();
        let bad = score(random.digest());
        // A tenth of what bond it has left, job after job.
        assert!(
            bad.disqualified && bad.weight == 0 && bad.slashed >= 810_000,
            "{decided:?}"
        );
        assert!(u64::from(bad.loss) > u64::from(g.parameters().max_loss));
        for honest in [l6.digest(), hash.digest()] {
            let s = score(honest);
            assert!(
                !s.disqualified && s.slashed <= 10_000 && s.weight > 0,
                "{decided:?}"
            );
        }
    }
}
