//! Two validators in separate processes compute their attestations for
//! jobs on the hash encoder and the MiniLM encoders (each with its own
//! ONNX Runtime worker), and two executors in separate processes, fed the
//! same commits, reach bit-identical state roots.
//!
//! The processes share one compiled-code cache, so only the first compiles
//! and pre-initialises the encoders: that two independent pre-initialisations
//! agree is shown in the host's tests (`minilm.rs`, `languages.rs`).

use super::*;
use soma_execution::{Outcome, Router};
use soma_host::{CompiledCache, Engine};
use std::process::Command;

const CHILD_DIR: &str = "SOMA_EXECUTION_TEST_CHILD_DIR";
const CHILD_VALIDATOR: &str = "SOMA_EXECUTION_TEST_CHILD_VALIDATOR";
const CHILD_CACHE: &str = "SOMA_EXECUTION_TEST_CHILD_CACHE";

const TEXTS: &[&str] = &[
    "A man is playing a guitar on stage.",
    "Interest rates rose again this quarter.",
    "fn main() { println!(\"hello\"); }",
];

/// The second validator.
const OTHER_VALIDATOR: u8 = 1;

/// The network: validators 0 and 1 with equal stakes, the MiniLM encoders
/// and the hash encoder registered and installed in `dir/blobs`, the
/// router example routing. The same in every process (signatures are
/// deterministic).
fn network(dir: &Path) -> (Genesis, BlobStore, VerifiedPackage) {
    let store = BlobStore::open(dir.join("blobs")).unwrap();
    let l6 = minilm_package(
        soma_examples_artifacts::MINILM_L6,
        "minilm-l6",
        "all-minilm-l6-v2-int8.onnx",
        10,
    );
    let l3 = minilm_package(
        soma_examples_artifacts::MINILM_L3,
        "minilm-l3",
        "paraphrase-minilm-l3-v2.onnx",
        11,
    );
    let hash = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 12);
    let router = example_package(
        soma_examples_artifacts::ROUTER_ENCODER,
        "router-encoder",
        13,
    );
    let single = encoder_network(
        &store,
        &[(&l6, 10), (&l3, 11), (&hash, 12)],
        // Two masks: what matters here is that processes agree, not the
        // losses' precision.
        Parameters {
            shard_size: 3,
            mask_count: 2,
            ..Parameters::default()
        },
    );
    // A second validator with the same stake.
    let mut validators = single.validators().to_vec();
    validators.push(GenesisValidator {
        key: public(OTHER_VALIDATOR),
        stake: validators[0].stake,
    });
    let mut accounts = single.accounts().to_vec();
    accounts.push(GenesisAccount {
        key: public(OTHER_VALIDATOR),
        balance: 1_000_000_000,
    });
    let g = Genesis::new(
        "soma-processes".into(),
        accounts,
        validators,
        single.encoders().to_vec(),
        single.parameters().clone(),
    )
    .unwrap()
    .with_router(router.digest());
    (g, store, router)
}

/// An executor of the network's state in `dir/state`, with its router.
fn executor(dir: &Path, g: &Genesis, router: &VerifiedPackage, cache: &CompiledCache) -> Executor {
    let router =
        Router::load(&Engine::new().unwrap(), router, Some(cache), g.parameters()).unwrap();
    Executor::open(&dir.join("state"), g, Some(router)).unwrap()
}

/// The compiled-code cache the parent test shares with its children: each
/// process has its own engine and workers, but only the first compiles
/// the components (minutes of Cranelift in a debug test run otherwise).
fn child_cache() -> CompiledCache {
    let dir = std::env::var_os(CHILD_CACHE).expect("run by its parent test");
    CompiledCache::open(dir).unwrap()
}

/// The commit that submits [`TEXTS`].
fn submissions(g: &Genesis) -> Vec<Vec<u8>> {
    TEXTS
        .iter()
        .zip(0..)
        .map(|(text, nonce)| {
            let action = Action::SubmitData {
                modality: Modality::Text,
                data: text.as_bytes().to_vec(),
                payment: 1_000_000,
            };
            signed(g, SUBMITTER, nonce, 10, action)
        })
        .collect()
}

/// Runs this test binary's ignored test `name` as a child process with
/// `env`, and returns what it printed.
fn child(name: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "--nocapture", name])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{name} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The lines of `stdout` after `marker`.
fn marked<'a>(stdout: &'a str, marker: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(marker))
        .collect()
}

/// Run by the test below as a separate process: validator
/// `$CHILD_VALIDATOR` applies the submissions in its own state, computes
/// its results for every job and prints its signed attestations (hex).
#[test]
#[ignore = "a child process of two_processes_compute_and_apply_the_same_commits_to_the_same_roots"]
fn child_attests() {
    let dir = std::env::var_os(CHILD_DIR).expect("run by its parent test");
    let validator: u8 = std::env::var(CHILD_VALIDATOR).unwrap().parse().unwrap();
    let dir = Path::new(&dir);
    let (g, store, router) = network(dir);
    let cache = child_cache();
    let mut ex = executor(dir, &g, &router, &cache);
    let jobs: Vec<Digest> = apply(&mut ex, &submissions(&g))
        .receipts
        .iter()
        .map(|r| r.transaction.unwrap())
        .collect();
    let runner = JobRunner::new(Engine::new().unwrap(), store, Some(cache));
    for (id, nonce) in jobs.iter().zip(0..) {
        let job = ex.job(id).unwrap().unwrap();
        let results = runner.compute(&job, g.parameters()).unwrap();
        let action = Action::Attest { job: *id, results };
        println!(
            "attestation {}",
            hex::encode(signed(&g, validator, nonce, 10, action))
        );
    }
}

/// Run by the test below as a separate process: applies the commits in
/// `$CHILD_DIR/commits` (one per line, transactions in hex, comma
/// separated) to a fresh state and prints the root after each.
#[test]
#[ignore = "a child process of two_processes_compute_and_apply_the_same_commits_to_the_same_roots"]
fn child_applies() {
    let dir = std::env::var_os(CHILD_DIR).expect("run by its parent test");
    let dir = Path::new(&dir);
    let (g, _, router) = network(dir);
    let mut ex = executor(dir, &g, &router, &child_cache());
    let commits = std::fs::read_to_string(dir.join("commits")).unwrap();
    for line in commits.lines() {
        let transactions: Vec<Vec<u8>> = line.split(',').map(|t| hex::decode(t).unwrap()).collect();
        println!("root {}", hex::encode(apply(&mut ex, &transactions).root));
    }
}

#[test]
fn two_processes_compute_and_apply_the_same_commits_to_the_same_roots() {
    // Each validator computes in a process of its own.
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let path = |i: usize| dirs[i].path().to_str().unwrap().to_string();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache_path = cache_dir.path().to_str().unwrap();
    let mut attestations = Vec::new();
    for (i, validator) in [VALIDATOR, OTHER_VALIDATOR].into_iter().enumerate() {
        let out = child(
            "processes::child_attests",
            &[
                (CHILD_DIR, &path(i)),
                (CHILD_VALIDATOR, &validator.to_string()),
                (CHILD_CACHE, cache_path),
            ],
        );
        let mine: Vec<String> = marked(&out, "attestation ")
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(mine.len(), TEXTS.len(), "{out}");
        attestations.push(mine);
    }
    let dir = tempfile::tempdir().unwrap();
    let (g, _, _) = network(dir.path());
    let commits = [
        submissions(&g).iter().map(hex::encode).collect::<Vec<_>>(),
        attestations[0].clone(),
        attestations[1].clone(),
    ];
    let text: Vec<String> = commits.iter().map(|c| c.join(",")).collect();

    // Two executors, each in a process of its own, apply them.
    let mut roots = Vec::new();
    for dir in &dirs[2..] {
        std::fs::write(dir.path().join("commits"), text.join("\n")).unwrap();
        let dir = dir.path().to_str().unwrap();
        let out = child(
            "processes::child_applies",
            &[(CHILD_DIR, dir), (CHILD_CACHE, cache_path)],
        );
        roots.push(
            marked(&out, "root ")
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(roots[0].len(), commits.len());
    assert_eq!(roots[0], roots[1], "two processes reached different roots");

    // Every job was decided, with all three encoders in its shard run to
    // the end, and the two validators agreed.
    let (g, _, router) = network(dir.path());
    let compiled = CompiledCache::open(cache_dir.path()).unwrap();
    let mut ex = executor(dir.path(), &g, &router, &compiled);
    let mut jobs = Vec::new();
    for commit in &commits {
        let transactions: Vec<Vec<u8>> = commit.iter().map(|t| hex::decode(t).unwrap()).collect();
        let effects = apply(&mut ex, &transactions);
        assert!(effects.receipts.iter().all(|r| r.rejection.is_none()));
        jobs.extend(effects.receipts.iter().filter_map(|r| r.transaction));
    }
    assert_eq!(hex::encode(ex.root()), roots[0][commits.len() - 1]);
    for id in &jobs[..TEXTS.len()] {
        let JobStatus::Finalised(decided) = ex.job(id).unwrap().unwrap().status else {
            panic!("job {id} was not decided");
        };
        assert_eq!(decided.encoders.len(), 3);
        assert!(
            decided.encoders.iter().all(|e| e.outcome == Outcome::Ok),
            "{decided:?}"
        );
        assert!(decided.deviant.is_empty(), "{decided:?}");
    }
}
