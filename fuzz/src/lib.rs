//! The checks behind Soma's fuzz targets: one module per target, each with
//! a `check` that takes the fuzzer's bytes and panics on a finding, and
//! `seeds`, small real examples of what the target takes.
//!
//! A finding is more than a panic of the code under test: each check also
//! asserts what must hold of whatever the input was (canonical
//! re-encoding, no forged signature verifying, limits respected, typed
//! errors, two executors agreeing). The binaries in `fuzz_targets/` are one
//! line each, calling their check; `tests/corpus.rs` replays the committed
//! corpora and every past finding through the same checks as a plain test,
//! and `cargo xtask fuzz` runs the binaries under libFuzzer.

pub mod api;
pub mod apply;
pub mod component;
pub mod consensus;
pub mod guest_output;
pub mod model;
pub mod package;
pub mod snapshot;
pub mod transaction;

use soma_crypto::SecretKey;

/// One fuzz target.
pub struct Target {
    /// Its name: the binary in `fuzz_targets/`, and its directories under
    /// `corpus/` and `regressions/`.
    pub name: &'static str,
    /// Checks one input; panics on a finding.
    pub check: fn(&[u8]),
    /// Small real examples of its input, committed as its seed corpus.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "package",
        check: package::check,
        seeds: package::seeds,
    },
    Target {
        name: "consensus",
        check: consensus::check,
        seeds: consensus::seeds,
    },
    Target {
        name: "transaction",
        check: transaction::check,
        seeds: transaction::seeds,
    },
    Target {
        name: "api",
        check: api::check,
        seeds: api::seeds,
    },
    Target {
        name: "apply",
        check: apply::check,
        seeds: apply::seeds,
    },
    Target {
        name: "model",
        check: model::check,
        seeds: model::seeds,
    },
    Target {
        name: "component",
        check: component::check,
        seeds: component::seeds,
    },
    Target {
        name: "guest_output",
        check: guest_output::check,
        seeds: guest_output::seeds,
    },
    Target {
        name: "snapshot",
        check: snapshot::check,
        seeds: snapshot::seeds,
    },
];

/// The key of test account (or validator) `i`.
fn key(i: u8) -> SecretKey {
    SecretKey::from_bytes(&[i + 1; 32])
}

/// The variable naming the directory of the example components
/// (`<crate>.wasm`, built for `wasm32-wasip2`), which `cargo xtask fuzz`
/// sets: the fuzz build runs on the nightly toolchain, which need not have
/// the `wasm32-wasip2` target, so the components come from the stable
/// build.
pub const COMPONENTS_ENV: &str = "SOMA_FUZZ_COMPONENTS";

static COMPONENTS: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Takes the example components from `dir` rather than from
/// [`COMPONENTS_ENV`] (the corpus replay test knows where its build put
/// them). The first call in a process decides.
pub fn use_components(dir: &std::path::Path) {
    let _ = COMPONENTS.set(dir.to_path_buf());
}

/// The bytes of the example component `name` (a crate name).
fn example_component(name: &str) -> Vec<u8> {
    let dir = COMPONENTS.get_or_init(|| {
        std::env::var_os(COMPONENTS_ENV)
            .unwrap_or_else(|| {
                panic!("{COMPONENTS_ENV} must name the example components' directory")
            })
            .into()
    });
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Whether `error` is a failure of the host itself rather than a verdict
/// about the encoder: what no input may cause. A valid component the
/// compiler fails on counts: it would be attested as this host's trouble
/// and never held against its author. (Stack exhaustion is a verdict,
/// though a machine-dependent one: how deep wasm recurses depends on
/// native frame sizes.)
fn host_failed(error: &soma_host::Error) -> bool {
    matches!(
        error,
        soma_host::Error::Host(_) | soma_host::Error::Timeout { .. } | soma_host::Error::Compile(_)
    )
}

/// A process-wide encoder engine: building one per input would measure
/// engine start-up, not the code under test.
fn engine() -> &'static soma_host::Engine {
    static ENGINE: std::sync::OnceLock<soma_host::Engine> = std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| soma_host::Engine::new().expect("the host's engine configuration is valid"))
}

/// The bits of every value of `vectors`, so that NaNs compare equal.
fn bits(vectors: &[Vec<f32>]) -> Vec<Vec<u32>> {
    vectors
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}
