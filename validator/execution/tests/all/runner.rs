//! The job runner on real example encoders: computed results, attested by
//! validators, decided by apply.

use super::*;
use soma_execution::{GenesisEncoder, Job, JobRunner, JobStatus, ONE, Outcome, RunnerError};
use soma_host::package::BlobStore;
use soma_host::{Digest, Engine};

/// Four validators (0-3); the hash encoder (owned by 10) and the hostile
/// one (owned by 11, which loops on "spin" until its 50 million fuel run
/// out) registered and installed in `store`; a submitter ([`SUBMITTER`]).
fn network(store: &BlobStore) -> (Genesis, Digest, Digest) {
    let hash = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 10);
    let hostile = component_package(soma_examples_artifacts::HOSTILE, "hostile", 11, 50_000_000);
    store.install(&hash).unwrap();
    store.install(&hostile).unwrap();
    let mut accounts: Vec<GenesisAccount> = [0, 1, 2, 3, 10, 11, SUBMITTER]
        .into_iter()
        .map(|i| GenesisAccount {
            key: public(i),
            balance: 1_000_000_000,
        })
        .collect();
    accounts.sort_by_key(|a| a.key);
    let encoders = [(&hash, 10), (&hostile, 11)]
        .into_iter()
        .map(|(p, owner)| GenesisEncoder {
            package: p.digest(),
            owner: public(owner),
            bond: 10_000_000,
        })
        .collect();
    let g = Genesis::new(
        "soma-runner".into(),
        accounts,
        (0..4)
            .map(|i| GenesisValidator {
                key: public(i),
                stake: 5_000_000,
            })
            .collect(),
        encoders,
        Parameters {
            shard_size: 2,
            ..Parameters::default()
        },
    )
    .unwrap();
    (g, hash.digest(), hostile.digest())
}

#[test]
fn validators_compute_attest_and_a_looping_encoder_is_slashed() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let (g, hash, hostile) = network(&store);
    let mut ex = open(&dir.path().join("state"), &g);
    let id = submit_all(&mut ex, &g, &[b"spin"])[0];
    let job = ex.job(&id).unwrap().unwrap();
    assert_eq!(job.shard, {
        let mut both = vec![hash, hostile];
        both.sort();
        both
    });

    let runner = JobRunner::new(Engine::new().unwrap(), store, None);
    let results = runner.compute(&job, g.parameters()).unwrap();
    // The same machine computes the same bits.
    assert_eq!(runner.compute(&job, g.parameters()).unwrap(), results);
    let by_package = |d: Digest| &results[job.shard.iter().position(|&p| p == d).unwrap()];
    assert_eq!(by_package(hash).outcome, Outcome::Ok);
    assert_eq!(by_package(hash).embedding.len(), 384);
    assert_eq!(by_package(hostile).outcome, Outcome::FuelExhausted);

    let attestations: Vec<Vec<u8>> = (0..3)
        .map(|v| {
            signed(
                &g,
                v,
                0,
                10,
                Action::Attest {
                    job: id,
                    results: results.clone(),
                },
            )
        })
        .collect();
    let effects = apply(&mut ex, &attestations);
    assert!(
        effects.receipts.iter().all(|r| r.rejection.is_none()),
        "{effects:?}"
    );
    let JobStatus::Finalised(result) = ex.job(&id).unwrap().unwrap().status else {
        panic!("not finalised");
    };
    let score = |d: Digest| {
        result
            .encoders
            .iter()
            .find(|e| e.package == d)
            .unwrap()
            .clone()
    };
    assert!(score(hostile).disqualified);
    assert_eq!(score(hostile).slashed, 1_000_000);
    assert_eq!(ex.encoder(&hostile).unwrap().unwrap().bond, 9_000_000);
    assert_eq!(score(hash).reward, 400_000);
    assert_eq!(ex.account(&public(10)).unwrap().balance, 1_000_400_000);
    // The hash encoder alone makes the embedding: its own, at unit length.
    let own = &by_package(hash).embedding;
    let cos: f64 = result
        .embedding
        .iter()
        .zip(own)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum::<f64>()
        / (ONE as f64 * ONE as f64);
    assert!(cos > 0.999, "{cos}");
}

#[test]
fn a_jobs_results_do_not_depend_on_the_runners_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let (g, _, _) = network(&store);
    let mut ex = open(&dir.path().join("state"), &g);
    let text: &[u8] = b"every shard encoder runs on the whole text and on its masked parts";
    let id = submit_all(&mut ex, &g, &[text])[0];
    let job = ex.job(&id).unwrap().unwrap();
    let engine = Engine::new().unwrap();
    // Each encoder on the whole and on two parts per mask: more tasks than
    // threads, so the threads share them out.
    assert!(g.parameters().mask_count >= 2);
    let compute = |threads| {
        JobRunner::new(engine.clone(), store.clone(), None)
            .with_threads(threads)
            .compute(&job, g.parameters())
            .unwrap()
    };
    let one = compute(1);
    assert!(one.iter().any(|r| r.outcome == Outcome::Ok && r.loss > 0));
    for threads in [2, 4] {
        assert_eq!(compute(threads), one, "{threads} threads");
    }
}

#[test]
fn jobs_computed_together_get_what_each_gets_alone_and_one_waiting_holds_up_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let (g, ..) = network(&store);
    let mut ex = open(&dir.path().join("state"), &g);
    let texts: [&[u8]; 3] = [
        b"three jobs share the runner's threads",
        b"spin",
        b"their calls are handed out together and put back in order",
    ];
    let jobs: Vec<Job> = submit_all(&mut ex, &g, &texts)
        .iter()
        .map(|id| ex.job(id).unwrap().unwrap())
        .collect();
    // A job whose shard names a package this node never received.
    let missing = Digest([9; 32]);
    let mut orphan = jobs[0].clone();
    orphan.shard = vec![missing];
    let runner = JobRunner::new(Engine::new().unwrap(), store, None).with_threads(2);
    let together = runner.compute_all(&[&jobs[0], &orphan, &jobs[1], &jobs[2]], g.parameters());
    assert_eq!(together.len(), 4);
    assert!(
        matches!(&together[1], Err(RunnerError::MissingPackage(d)) if *d == missing),
        "{:?}",
        together[1]
    );
    let alone: Vec<_> = jobs
        .iter()
        .map(|job| runner.compute(job, g.parameters()).unwrap())
        .collect();
    for (i, results) in [0, 2, 3].into_iter().zip(&alone) {
        assert_eq!(together[i].as_ref().unwrap(), results, "job {i}");
    }
    // The jobs differ, so a result put back in the wrong place would show.
    assert_ne!(alone[0], alone[2]);
    assert!(alone[1].iter().any(|r| r.outcome == Outcome::FuelExhausted));
}

#[test]
fn a_package_not_yet_received_makes_the_runner_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let (g, ..) = network(&store);
    let mut ex = open(&dir.path().join("state"), &g);
    let id = submit_all(&mut ex, &g, &[b"hello"])[0];
    let job = ex.job(&id).unwrap().unwrap();
    let empty = BlobStore::open(dir.path().join("empty")).unwrap();
    let runner = JobRunner::new(Engine::new().unwrap(), empty, None);
    let err = runner.compute(&job, g.parameters()).unwrap_err();
    assert!(
        matches!(err, RunnerError::MissingPackage(d) if job.shard.contains(&d)),
        "{err}"
    );
}

/// A package whose component is not valid WebAssembly is its author's
/// fault on every host: attested `Unloadable`, which disqualifies and
/// slashes it (a failure to compile valid code would be this host's
/// `Local` instead).
#[test]
fn a_component_that_is_not_webassembly_is_unloadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let hash = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 10);
    let meta = EncoderMeta {
        name: "junk".into(),
        version: "0.1.0".into(),
        dimension: 384,
        fuel_limit: soma_host::package::MAX_FUEL_LIMIT,
        modality: soma_host::Modality::Text,
        max_input_bytes: 1024,
    };
    let junk = package_declaring(b"\0asm\x0d\0\x01\0 not a component".to_vec(), &meta, 11);
    let g = encoder_network(
        &store,
        &[(&hash, 10), (&junk, 11)],
        Parameters {
            shard_size: 2,
            ..Parameters::default()
        },
    );
    let mut ex = open(&dir.path().join("state"), &g);
    let id = submit_all(&mut ex, &g, &[b"a few words"])[0];
    let job = ex.job(&id).unwrap().unwrap();
    let runner = JobRunner::new(Engine::new().unwrap(), store, None);
    let results = runner.compute(&job, g.parameters()).unwrap();
    let of = |d: Digest| &results[job.shard.iter().position(|&p| p == d).unwrap()];
    assert_eq!(of(junk.digest()).outcome, Outcome::Unloadable);
    assert_eq!(of(hash.digest()).outcome, Outcome::Ok);
}

#[test]
fn a_forgotten_encoder_frees_its_models_and_loads_again_when_needed() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let l3 = minilm_package(
        soma_examples_artifacts::MINILM_L3,
        "minilm-l3",
        "paraphrase-minilm-l3-v2.onnx",
        10,
    );
    store.install(&l3).unwrap();
    let engine = Engine::new().unwrap().with_inference_workers(1);
    // Compiled once: loading it again takes the cached code.
    let cache = soma_host::CompiledCache::open(dir.path().join("compiled")).unwrap();
    let runner = JobRunner::new(engine.clone(), store, Some(cache));
    assert_eq!(runner.preload(&l3.digest()).unwrap(), Outcome::Ok);
    assert_eq!(engine.cached_models(), 1);
    runner.forget(&l3.digest());
    assert_eq!(engine.cached_models(), 0);
    assert_eq!(runner.preload(&l3.digest()).unwrap(), Outcome::Ok);
    assert_eq!(engine.cached_models(), 1);
}

/// A model too large for this host's inference workers is this host's
/// limit, not the encoder's fault: attested `Local`. The runner remembers
/// the failure for a while instead of verifying and loading the package
/// again for every job, tries again once the wait is over, and waits twice
/// as long after a second failure.
#[test]
fn a_package_this_host_cannot_load_is_attested_local_and_tried_again_after_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let l3 = minilm_package(
        soma_examples_artifacts::MINILM_L3,
        "minilm-l3",
        "paraphrase-minilm-l3-v2.onnx",
        10,
    );
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    store.install(&l3).unwrap();
    // Sessions of one byte: no model fits.
    let engine = Engine::new().unwrap().with_session_memory(1);
    let wait = std::time::Duration::from_secs(2);
    let runner = JobRunner::new(engine, store, None).with_local_retry(wait);
    let preload = || runner.preload(&l3.digest()).unwrap();

    assert_eq!(preload(), Outcome::Local);
    assert_eq!(preload(), Outcome::Local);
    assert_eq!(runner.load_attempts(), 1);
    std::thread::sleep(wait);
    assert_eq!(preload(), Outcome::Local);
    assert_eq!(runner.load_attempts(), 2);
    // Now the wait is twice as long.
    std::thread::sleep(wait);
    assert_eq!(preload(), Outcome::Local);
    assert_eq!(runner.load_attempts(), 2);
}
