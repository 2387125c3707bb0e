//! Every fuzz target's committed corpus and past findings, replayed
//! through the target's check as a plain test; and the seeds each target
//! writes, held to be committed and current.
//!
//! `SOMA_FUZZ_WRITE_SEEDS=1 cargo test -p soma-fuzz` writes missing seeds
//! into `corpus/<target>/` (after a format change, say).

use soma_fuzz::TARGETS;
use std::path::{Path, PathBuf};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target)
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The name a seed is committed under: the start of its blake3.
fn seed_name(bytes: &[u8]) -> String {
    format!("seed-{}", &blake3::hash(bytes).to_hex()[..16])
}

#[test]
fn every_target_has_a_binary_and_a_corpus() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets");
    let mut binaries: Vec<String> = files(&targets)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    binaries.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(binaries, names);
    let mut replayed = REPLAYED.to_vec();
    replayed.sort();
    assert_eq!(replayed, names, "every target needs its replay test below");
    for target in TARGETS {
        assert!(
            !files(&dir("corpus", target.name)).is_empty(),
            "{} has no corpus",
            target.name
        );
    }
}

#[test]
fn the_seeds_are_committed_and_current() {
    let write = std::env::var_os("SOMA_FUZZ_WRITE_SEEDS").is_some();
    for target in TARGETS {
        let corpus = dir("corpus", target.name);
        let seeds = (target.seeds)();
        let current: Vec<String> = seeds.iter().map(|s| seed_name(s)).collect();
        for file in files(&corpus) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("seed-") || current.contains(&name) {
                continue;
            }
            if write {
                std::fs::remove_file(&file).unwrap();
            } else {
                panic!(
                    "{} is a seed {} no longer writes: run `SOMA_FUZZ_WRITE_SEEDS=1 cargo test \
                     -p soma-fuzz` and commit the change",
                    file.display(),
                    target.name
                );
            }
        }
        for seed in seeds {
            let path = corpus.join(seed_name(&seed));
            if write && !path.exists() {
                std::fs::create_dir_all(&corpus).unwrap();
                std::fs::write(&path, &seed).unwrap();
            }
            assert!(
                path.exists(),
                "{} lacks its seed {}: run `SOMA_FUZZ_WRITE_SEEDS=1 cargo test -p soma-fuzz` \
                 and commit it",
                target.name,
                path.display()
            );
        }
    }
}

/// One test per target, so a failure names it and they run in parallel.
macro_rules! replays {
    ($($name:ident),*) => {
    /// The targets with a replay test.
    const REPLAYED: &[&str] = &[$(stringify!($name)),*];
    $(
        #[test]
        fn $name() {
            let components = Path::new(soma_examples_artifacts::HOSTILE).parent().unwrap();
            soma_fuzz::use_components(components);
            let target = TARGETS.iter().find(|t| t.name == stringify!($name)).unwrap();
            for kind in ["corpus", "regressions"] {
                for file in files(&dir(kind, target.name)) {
                    let bytes = std::fs::read(&file).unwrap();
                    let replay = std::panic::catch_unwind(|| (target.check)(&bytes));
                    assert!(replay.is_ok(), "{} fails on {}", target.name, file.display());
                }
            }
        }
    )*};
}

replays!(
    package,
    consensus,
    transaction,
    api,
    apply,
    model,
    component,
    guest_output,
    snapshot
);
