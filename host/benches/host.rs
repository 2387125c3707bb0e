//! Host benchmarks: `cargo xtask bench` runs them; they write their section
//! of BENCHMARKS.md to `target/bench/host.md`.
//!
//! Every figure is a ratio of two criterion medians measured in this run, on
//! this machine, so that it means the same on a laptop and in CI:
//!
//! * fresh pooled instance of the hash encoder + one trivial `embed`,
//!   through the sandbox ÷ a minimal component (the constant encoder) with
//!   bare wasmtime (default WASI context, no limits, no fuel, no
//!   pre-initialisation); the absolute median is checked against 10 µs;
//! * fresh hash-encoder calls on every core at once ÷ on one thread;
//! * the hash encoder as a component ÷ the same Rust compiled natively;
//! * the hash encoder with fuel metering ÷ without;
//! * loading a component by compiling it ÷ from the compiled-component cache;
//! * minilm-l6 through the component ÷ natively (batch 1, and 32 texts in
//!   one call on both sides: padded runs), 32 texts in one call ÷ one call
//!   each, and a fresh instance's start ÷ one inference;
//! * the Rust, Python and JavaScript hash encoders side by side.
//!
//! A failed iteration does not end the run: its error is recorded and its
//! figures are reported as failed.

use criterion::{BenchmarkId, Criterion};
use serde_json::Value;
use soma_guest_sdk::TextEncoder;
use soma_host::{CacheOutcome, CompiledCache, Encoder, Engine, Limits, Seed};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sentences in [`corpus`].
const SENTENCES: usize = 64;

/// Sentences of the hash-encoder batch: varied lengths, some non-ASCII.
fn corpus() -> Vec<Vec<u8>> {
    let base = [
        "A man is playing a guitar on stage.",
        "The central bank raised interest rates for the third time this year, citing inflation.",
        "Ünïcode text with accents, emoji 🎸 and punctuation… all count.",
        "Short.",
        "Distributed validators agree on the order of transactions with a DAG consensus protocol.",
    ];
    (0..SENTENCES)
        .map(|i| format!("{} #{i}", base[i % base.len()]).into_bytes())
        .collect()
}

/// Memory-image creations the load benchmarks' engine had to retry.
static LOAD_IMAGE_RETRIES: AtomicU64 = AtomicU64::new(0);

/// Iterations that failed, by criterion id: how many, and the first error.
static FAILURES: Mutex<BTreeMap<String, (u64, String)>> = Mutex::new(BTreeMap::new());

/// `result`'s value, or `None` with its error recorded against the
/// benchmark `id`: one failed iteration marks its figures failed in the
/// report instead of ending the run.
fn ok<T, E: std::fmt::Display>(id: &str, result: Result<T, E>) -> Option<T> {
    result
        .map_err(|e| {
            let mut failures = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
            let entry = failures
                .entry(id.to_string())
                .or_insert_with(|| (0, e.to_string()));
            entry.0 += 1;
        })
        .ok()
}

/// Why a figure cannot be trusted: the first of its benchmarks with failed
/// iterations.
fn failure(f: &Figure) -> Option<String> {
    first_failure(
        [Some(f.measured), f.minus, Some(f.baseline)]
            .into_iter()
            .flatten(),
    )
}

/// The first of the benchmarks `ids` with failed iterations: how many, and
/// the first error.
fn first_failure<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let failures = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    ids.into_iter().find_map(|id| {
        let (count, error) = failures.get(id)?;
        Some(format!(
            "{count} iterations of `{id}` failed, first with: {error}"
        ))
    })
}

fn load(engine: &Engine, path: &str) -> Encoder {
    engine.load(&std::fs::read(path).unwrap()).unwrap()
}

fn instantiate(c: &mut Criterion) {
    let engine = Engine::new().unwrap();
    // A trivial call: the hash encoder on an empty batch.
    let hash = load(&engine, soma_examples_artifacts::HASH_ENCODER);
    let trivial: Vec<Vec<u8>> = vec![];
    // The baseline: a minimal component (the constant encoder builds no
    // state) in wasmtime with its defaults.
    let bare = bare::Bare::new(soma_examples_artifacts::CONSTANT_ENCODER);

    let mut group = c.benchmark_group("instantiate");
    group.bench_function("soma", |b| {
        b.iter(|| {
            ok(
                "instantiate/soma",
                hash.embed(black_box(&trivial), &Limits::default(), Seed::from(1)),
            )
        })
    });
    group.bench_function("bare-wasmtime", |b| {
        b.iter(|| bare.embed(black_box(&trivial)))
    });
    group.finish();
}

/// Cores this machine gives the process.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Fresh hash-encoder calls on one sentence on every core at once against
/// one thread: how far the host itself scales, which bounds the job
/// runner's parallelism (execution section).
fn scaling(c: &mut Criterion) {
    let engine = Engine::new().unwrap();
    let hash = load(&engine, soma_examples_artifacts::HASH_ENCODER);
    let sentence = vec![corpus().swap_remove(1)];
    let call = |id: &str| {
        ok(
            id,
            hash.embed(black_box(&sentence), &Limits::default(), Seed::from(1)),
        )
    };
    let mut group = c.benchmark_group("scaling");
    group.bench_function("one-thread", |b| b.iter(|| call("scaling/one-thread")));
    // Each sample starts its other threads afresh, beside the calling
    // thread, as a job runner's or a server's threads may start at any
    // time: the pool must not make the speed depend on which threads
    // started when. An iteration is one call per core, timed as one call,
    // from when every thread has started until the last is done.
    group.bench_function("every-core", |b| {
        b.iter_custom(|iters| {
            let started = std::sync::Barrier::new(cores());
            let calls = || {
                for _ in 0..iters {
                    call("scaling/every-core");
                }
            };
            let start = std::thread::scope(|s| {
                for _ in 1..cores() {
                    s.spawn(|| {
                        started.wait();
                        calls();
                    });
                }
                started.wait();
                let start = std::time::Instant::now();
                calls();
                start
            });
            start.elapsed() / cores() as u32
        })
    });
    group.finish();
}

fn hash_encoder(c: &mut Criterion) {
    let metered = load(
        &Engine::new().unwrap(),
        soma_examples_artifacts::HASH_ENCODER,
    );
    let unmetered = load(
        &Engine::without_fuel_metering().unwrap(),
        soma_examples_artifacts::HASH_ENCODER,
    );
    let batch = corpus();
    let texts: Vec<&str> = batch
        .iter()
        .map(|b| std::str::from_utf8(b).unwrap())
        .collect();

    let mut group = c.benchmark_group("hash-encoder");
    for (id, encoder) in [("wasm-fuel", &metered), ("wasm-no-fuel", &unmetered)] {
        let figure = format!("hash-encoder/{id}");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                ok(
                    &figure,
                    encoder.embed(black_box(&batch), &Limits::default(), Seed::from(1)),
                )
            })
        });
    }
    let native = hash_encoder::HashEncoder::default();
    group.bench_function(BenchmarkId::from_parameter("native"), |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| native.embed_text(black_box(t)))
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

fn compiled_cache(c: &mut Criterion) {
    let engine = Engine::new().unwrap();
    let dir = std::env::temp_dir().join(format!("soma-bench-cache-{}", std::process::id()));
    let cache = CompiledCache::open(&dir).unwrap();
    let largest = soma_examples_artifacts::ALL
        .iter()
        .max_by_key(|(_, path)| std::fs::metadata(path).unwrap().len())
        .unwrap();
    let mut group = c.benchmark_group("load");
    // Compiling (and pre-initialising) the largest component takes seconds.
    group.sample_size(10);
    for (name, path) in [
        ("hash-encoder", soma_examples_artifacts::HASH_ENCODER),
        ("largest", largest.1),
    ] {
        let wasm = std::fs::read(path).unwrap();
        let (compile, cached) = (
            format!("load/{name}-compile"),
            format!("load/{name}-cached"),
        );
        ok(&cached, engine.load_cached(&wasm, &cache));
        group.bench_function(format!("{name}-compile"), |b| {
            b.iter(|| ok(&compile, engine.load(black_box(&wasm))))
        });
        group.bench_function(format!("{name}-cached"), |b| {
            b.iter(|| {
                let loaded = engine.load_cached(black_box(&wasm), &cache);
                let hit = loaded.and_then(|(encoder, outcome)| match outcome {
                    CacheOutcome::Hit => Ok(encoder),
                    outcome => Err(soma_host::Error::Host(format!("cache {outcome:?}"))),
                });
                ok(&cached, hit)
            })
        });
    }
    group.finish();
    LOAD_IMAGE_RETRIES.store(engine.memory_image_retries(), Ordering::Relaxed);
    println!(
        "largest example component: {} ({} bytes)",
        largest.0,
        std::fs::metadata(largest.1).unwrap().len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The example encoders that compute the same hashed features in Rust,
/// Python and JavaScript: (language, crate name, component if built).
const LANGUAGES: &[(&str, &str, Option<&str>)] = &[
    (
        "Rust",
        "hash-encoder",
        Some(soma_examples_artifacts::HASH_ENCODER),
    ),
    (
        "Python",
        "python-encoder",
        soma_examples_artifacts::PYTHON_ENCODER,
    ),
    (
        "JavaScript",
        "js-encoder",
        soma_examples_artifacts::JS_ENCODER,
    ),
];

/// The criterion id of the languages figure `id` of the encoder `name`.
fn language_id(name: &str, id: &str) -> String {
    format!("languages/{name}-{id}")
}

/// Fuel per sentence of each built language encoder on the corpus (less an
/// empty call), by crate name. Fuel is deterministic, so one run tells it.
static LANGUAGE_FUEL: Mutex<BTreeMap<&str, f64>> = Mutex::new(BTreeMap::new());

/// Each language's encoder: a fresh instance with an empty `embed`, and the
/// 64-sentence corpus.
fn languages(c: &mut Criterion) {
    let engine = Engine::new().unwrap();
    // The Python and JavaScript components carry an interpreter each: a
    // minute to compile, so their compiled code is kept between runs.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cache = CompiledCache::open(workspace.join("target/bench/compiled")).unwrap();
    let batch = corpus();
    let limits = Limits::default();
    let mut group = c.benchmark_group("languages");
    group.sample_size(10);
    for &(_, name, path) in LANGUAGES {
        let Some(path) = path else { continue };
        let (start, corpus) = (
            language_id(name, "instantiate"),
            language_id(name, "corpus"),
        );
        let loaded = std::fs::read(path)
            .map_err(|e| format!("{path}: {e}"))
            .and_then(|wasm| engine.load_cached(&wasm, &cache).map_err(|e| e.to_string()));
        let Some((encoder, _)) = ok(&start, loaded) else {
            continue;
        };
        let fuel = |inputs: &[Vec<u8>]| {
            let out = encoder.embed(inputs, &limits, Seed::from(1));
            ok(&corpus, out).map(|out| out.fuel_used)
        };
        if let (Some(all), Some(none)) = (fuel(&batch), fuel(&[])) {
            let per_sentence = all.saturating_sub(none) as f64 / SENTENCES as f64;
            LANGUAGE_FUEL.lock().unwrap().insert(name, per_sentence);
        }
        for (id, inputs) in [("instantiate", &[][..]), ("corpus", &batch[..])] {
            let figure = language_id(name, id);
            group.bench_function(format!("{name}-{id}"), |b| {
                b.iter(|| {
                    ok(
                        &figure,
                        encoder.embed(black_box(inputs), &limits, Seed::from(1)),
                    )
                })
            });
        }
    }
    group.finish();
}

/// The languages table: every built encoder next to the Rust one.
fn languages_report(dir: &Path) -> String {
    let mut md = String::from(
        "\n### Encoders by language\n\n\
         The same hashed features (the guest SDK's `hashing::hashed_features`; the Rust encoder \
         computes them as integer counts, `hashing::hashed_counts`) from the Rust `hash-encoder`, the Python `python-encoder` (componentize-py) and the JavaScript \
         `js-encoder` (componentize-js), each as a component in the sandbox. The Rust encoder also maps \
         them through its alignment head (a 384 × 384 matrix of 8-bit weights), which the others do \
         not. \
         Per sentence: the 64-sentence corpus less an empty call, ÷ 64. Ratios are against the \
         Rust encoder.\n\n\
         | Encoder | Fresh instance + empty `embed` | ÷ Rust | Time per sentence | ÷ Rust | Fuel per sentence | ÷ Rust |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let fuel = LANGUAGE_FUEL.lock().unwrap();
    let figures = |name: &str| -> Result<(f64, f64, f64), String> {
        let (start, corpus) = (
            language_id(name, "instantiate"),
            language_id(name, "corpus"),
        );
        if let Some(failed) = first_failure([start.as_str(), corpus.as_str()]) {
            return Err(failed);
        }
        let fuel = *fuel.get(name).ok_or("its fuel was not measured")?;
        let start = median_ns(dir, &start);
        let per_sentence = (median_ns(dir, &corpus) - start) / SENTENCES as f64;
        Ok((start, per_sentence, fuel))
    };
    let rust = figures(LANGUAGES[0].1).map_err(|e| format!("the Rust encoder failed: {e}"));
    for &(language, name, path) in LANGUAGES {
        let figures = path.map(|_| figures(name));
        let row = match (figures, rust.clone()) {
            (None, _) => format!(
                "| {language} (`{name}`) | not built: its toolchain is missing (`cargo xtask setup`) | | | | | |"
            ),
            (Some(Err(e)), _) | (_, Err(e)) => {
                format!("| {language} (`{name}`) | failed: {e} | | | | | |")
            }
            (Some(Ok((start, sentence, fuel))), Ok((rust_start, rust_sentence, rust_fuel))) => {
                format!(
                    "| {language} (`{name}`) | {} | {} | {} | {} | {fuel:.0} | {} |",
                    human(start),
                    ratio(start / rust_start),
                    human(sentence),
                    ratio(sentence / rust_sentence),
                    ratio(fuel / rust_fuel),
                )
            }
        };
        md += &row;
        md.push('\n');
    }
    md
}

#[path = "../tests/all/native.rs"]
mod native;

/// The component at `path`, signed with one model as the encoder its
/// `info()` says it is, loaded in a fresh engine.
fn packaged(path: &str, (model_name, model): (&str, &[u8])) -> Encoder {
    let key = soma_crypto::SecretKey::from_bytes(&[1; 32]);
    let component = std::fs::read(path).unwrap();
    let engine = Engine::new().unwrap();
    let info = engine.load(&component).unwrap().info().clone();
    let meta =
        soma_host::package::EncoderMeta::from_info(&info, soma_host::package::MAX_FUEL_LIMIT);
    let blobs = vec![(model_name.to_string(), model.to_vec())];
    let package = soma_host::package::Package::sign(&key, &meta, component, blobs).unwrap();
    engine.load_package(&package, None).unwrap()
}

/// minilm-l6 through the component ÷ the same model natively, with the
/// worker's ONNX Runtime settings.
fn minilm(c: &mut Criterion) {
    let models = PathBuf::from(
        std::env::var_os("SOMA_MODELS_DIR").expect("SOMA_MODELS_DIR (cargo xtask setup)"),
    );
    let model = std::fs::read(models.join("all-minilm-l6-v2-int8.onnx")).unwrap();
    let l6 = packaged(
        soma_examples_artifacts::MINILM_L6,
        ("all-minilm-l6-v2-int8.onnx", &model),
    );
    let env = soma_host::worker::runtime().unwrap();
    let builder = soma_host::worker::session_builder(env).unwrap();
    let mut native = native::NativeMiniLm::new(builder, &model, &models.join("tokenizer.json"));

    let batch = corpus();
    let texts: Vec<&str> = batch
        .iter()
        .map(|b| std::str::from_utf8(b).unwrap())
        .collect();
    let one = vec![batch[1].clone()];
    let limits = Limits {
        fuel: u64::MAX / 2,
        ..Limits::default()
    };
    let mut group = c.benchmark_group("minilm-l6");
    // Iterations of the 32-text figures take up to half a second.
    group.sample_size(20);
    group.bench_function("wasm-batch1", |b| {
        b.iter(|| {
            ok(
                "minilm-l6/wasm-batch1",
                l6.embed(black_box(&one), &limits, Seed::from(1)),
            )
        })
    });
    group.bench_function("native-batch1", |b| {
        b.iter(|| native.embed(black_box(texts[1])))
    });
    group.bench_function("wasm-batch32", |b| {
        b.iter(|| {
            ok(
                "minilm-l6/wasm-batch32",
                l6.embed(black_box(&batch[..32]), &limits, Seed::from(1)),
            )
        })
    });
    group.bench_function("native-batch32", |b| {
        b.iter(|| native.embed_batch(black_box(&texts[..32])))
    });
    group.bench_function("native-singles32", |b| {
        b.iter(|| {
            texts[..32]
                .iter()
                .map(|text| native.embed(black_box(text)))
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("wasm-singles32", |b| {
        b.iter(|| {
            batch[..32]
                .chunks(1)
                .map(|one| {
                    ok(
                        "minilm-l6/wasm-singles32",
                        l6.embed(black_box(one), &limits, Seed::from(1)),
                    )
                })
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("fresh-instance", |b| {
        b.iter(|| {
            ok(
                "minilm-l6/fresh-instance",
                l6.embed(&[], &limits, Seed::from(1)),
            )
        })
    });
    group.finish();
}

#[path = "../tests/all/onnx.rs"]
#[allow(dead_code)]
mod onnx;

/// The hostile encoder with a one-node model: a call that runs it, and the
/// same call without inference. Their difference is the worker's round trip.
fn worker(c: &mut Criterion) {
    let model = onnx::negate();
    let encoder = packaged(soma_examples_artifacts::HOSTILE, ("model.onnx", &model));
    let run = vec![format!("run:1:{}", blake3::hash(&model).to_hex()).into_bytes()];
    let none = vec![b"hello".to_vec()];
    let mut group = c.benchmark_group("worker");
    group.bench_function("round-trip", |b| {
        b.iter(|| {
            ok(
                "worker/round-trip",
                encoder.embed(black_box(&run), &Limits::default(), Seed::from(1)),
            )
        })
    });
    group.bench_function("no-inference", |b| {
        b.iter(|| {
            ok(
                "worker/no-inference",
                encoder.embed(black_box(&none), &Limits::default(), Seed::from(1)),
            )
        })
    });
    group.finish();
}

/// One row of the fuel-versus-time table.
struct FuelRow {
    model: &'static str,
    batch: u64,
    sequence: u64,
    fuel: u64,
    ns: f64,
}

/// Fuel the host charges for a MiniLM run (planned from shapes) against the
/// time native ONNX Runtime takes for it (the worker's settings, in this
/// process; median of 15 runs), across input sizes and both models.
fn fuel_versus_time(models: &Path) -> Vec<FuelRow> {
    let env = soma_host::worker::runtime().unwrap();
    let mut rows = Vec::new();
    for (model, file) in [
        ("minilm-l6 (int8)", "all-minilm-l6-v2-int8.onnx"),
        ("minilm-l3", "paraphrase-minilm-l3-v2.onnx"),
    ] {
        let bytes = std::fs::read(models.join(file)).unwrap();
        let admitted = soma_host::model::admit(&bytes).unwrap();
        let mut session = soma_host::worker::session_builder(env)
            .unwrap()
            .commit_from_memory(admitted.bytes())
            .unwrap();
        let names: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        for (batch, sequence) in [(1, 8), (1, 32), (1, 128), (1, 256), (8, 128), (32, 128)] {
            let n = (batch * sequence) as usize;
            let input = |name: &str| {
                let data: Vec<i64> = match name {
                    "input_ids" => (0..n as i64).map(|i| 1000 + i % 20_000).collect(),
                    "attention_mask" => vec![1; n],
                    _ => vec![0; n],
                };
                let tensor =
                    ort::value::Tensor::from_array(([batch as usize, sequence as usize], data));
                (name.to_string(), tensor.unwrap().into_dyn())
            };
            let mut times: Vec<f64> = (0..17)
                .map(|_| {
                    let inputs: Vec<_> = names.iter().map(|n| input(n)).collect();
                    let start = std::time::Instant::now();
                    black_box(session.run(inputs).unwrap());
                    start.elapsed().as_nanos() as f64
                })
                .skip(2)
                .collect();
            times.sort_by(f64::total_cmp);
            let dims = vec![vec![batch, sequence]; names.len()];
            rows.push(FuelRow {
                model,
                batch,
                sequence,
                fuel: admitted.fuel(&dims).unwrap(),
                ns: times[times.len() / 2],
            });
        }
    }
    rows
}

/// The fuel-versus-time table and its spread.
fn fuel_report(rows: &[FuelRow]) -> String {
    let mut md = String::from(
        "\n### Inference fuel against time\n\n\
         Fuel charged for a model run (static shape inference over the admitted graph) ÷ the \
         time native ONNX Runtime takes for the same run, on this machine. A tight spread means \
         fuel prices inference as time would, without measuring time.\n\n\
         | Model | Batch × tokens | Fuel | Time | Fuel per µs |\n|---|---|---|---|---|\n",
    );
    let per_us: Vec<f64> = rows.iter().map(|r| r.fuel as f64 / (r.ns / 1e3)).collect();
    for (r, rate) in rows.iter().zip(&per_us) {
        writeln!(
            md,
            "| {} | {} × {} | {} | {} | {rate:.0} |",
            r.model,
            r.batch,
            r.sequence,
            r.fuel,
            human(r.ns)
        )
        .unwrap();
    }
    let (lo, hi) = per_us
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    writeln!(
        md,
        "\nSpread (highest ÷ lowest fuel per µs): {:.2}× (target ≤ 2×: {}).",
        hi / lo,
        if hi / lo <= 2.0 { "met" } else { "**missed**" }
    )
    .unwrap();
    md
}

/// The same component driven by wasmtime with defaults: the baseline for
/// what the sandbox adds to a fresh instance.
mod bare {
    use wasmtime::component::{Component, Linker, ResourceTable};
    use wasmtime::{Config, Engine, InstanceAllocationStrategy, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    wasmtime::component::bindgen!({ path: "../wit", world: "encoder" });

    struct State {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    pub struct Bare {
        engine: Engine,
        pre: EncoderPre<State>,
    }

    impl Bare {
        pub fn new(path: &str) -> Bare {
            let mut config = Config::new();
            config.allocation_strategy(InstanceAllocationStrategy::pooling());
            let engine = Engine::new(&config).unwrap();
            let component = Component::from_file(&engine, path).unwrap();
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
            let pre = EncoderPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
            Bare { engine, pre }
        }

        pub fn embed(&self, inputs: &[Vec<u8>]) -> Vec<Vec<f32>> {
            let state = State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            };
            let mut store = Store::new(&self.engine, state);
            let encoder = self.pre.instantiate(&mut store).unwrap();
            encoder.call_embed(&mut store, inputs).unwrap().unwrap()
        }
    }
}

/// One line of BENCHMARKS.md: `measured` ÷ `baseline`, both criterion ids.
struct Figure {
    name: &'static str,
    measured: &'static str,
    /// A benchmark whose median is taken off the measured one, to isolate
    /// what the measured one adds.
    minus: Option<&'static str>,
    baseline: &'static str,
    /// Items per iteration of (measured, baseline) when the figure
    /// compares throughputs: both columns then show items per second, and
    /// the ratio is measured throughput ÷ baseline throughput.
    items: Option<(u32, u32)>,
    target: &'static str,
    meets: fn(ratio: f64, measured_ns: f64) -> bool,
    /// What limits this figure, printed when the target is missed.
    limited_by: &'static str,
}

const FIGURES: &[Figure] = &[
    Figure {
        name: "Inference worker round trip (a call running a one-node model − the same call without inference) ÷ one batch-1 minilm-l6 inference",
        measured: "worker/round-trip",
        minus: Some("worker/no-inference"),
        baseline: "minilm-l6/native-batch1",
        items: None,
        target: "≤ 0.05",
        limited_by: "each run crosses two pipes and two threads and is framed and copied on both sides; shared memory for tensors would remove the copies.",
        meets: |ratio, _| ratio <= 0.05,
    },
    Figure {
        name: "Fresh pooled instance of the hash encoder + one trivial `embed` in the sandbox ÷ a minimal component (the constant encoder) in bare wasmtime",
        minus: None,
        measured: "instantiate/soma",
        baseline: "instantiate/bare-wasmtime",
        items: None,
        target: "median ≤ 10 µs",
        limited_by: "a pooled slot keeps up to 256 KiB of an instance's written pages resident and copies them back from the image in place, where `PAGEMAP_SCAN` finds them (wasmtime as patched in third_party/wasmtime): on a 2-vCPU AVX-512 VM that took this row from 16 µs to 8 µs, against 17 µs for bare wasmtime. Where the ioctl is missing (Linux before 6.7) or KSM may merge the host's pages, slots keep nothing, and about half the time is the kernel: faulting the copy-on-write memory image back in, and `madvise` returning the last instance's pages (a `madvise` per region, or on Linux 6.14 and later one `process_madvise` per eight regions, a few instances' memories and tables). Closing it there needs fewer touched pages per instance (a smaller guest stack, so that a small kept region covers stack and data) or reusing instances, which the fresh-instance rule forbids.",
        meets: |_, ns| ns <= 10_000.0,
    },
    Figure {
        name: "Fresh hash-encoder calls on one sentence, one thread per core at once (the calling thread and threads started beside it): calls/s ÷ on one thread",
        minus: None,
        measured: "scaling/every-core",
        baseline: "scaling/one-thread",
        items: Some((1, 1)),
        target: "≥ 0.8 × cores",
        limited_by: "instances running at once in one process share its page tables, its open files (the `PAGEMAP_SCAN` file that resets them) and the engine's pool and loaded code: on a 2-vCPU AVX-512 VM, in one session's timings, the same loops ran 1.94× as fast in two processes as in one, 1.88× with an engine per thread, 1.83× with the encoder loaded once per thread, and 1.73× sharing one encoder. Before the pool's shards followed CPUs (third_party/wasmtime/README.soma.md), a thread started beside the caller took the caller's shard in about half of the runs, and those ran 1.2×.",
        meets: |ratio, _| ratio >= 0.8 * cores() as f64,
    },
    Figure {
        name: "Hash encoder, 64 sentences: wasm component ÷ native Rust",
        minus: None,
        measured: "hash-encoder/wasm-fuel",
        baseline: "hash-encoder/native",
        items: None,
        target: "≤ 1.5×",
        limited_by: "perf over 8 s of batches on each side (wasmtime's perf map for the component): the alignment head (`Head::apply_counts`) is most of both sides' time; what wasm adds to it is per loop iteration (fuel and the epoch deadline are checked on each, and their out-of-line calls make Cranelift keep the sums on the stack between iterations) and per float operation (each is followed by NaN canonicalisation, which makes a running sum of squares a long chain). So the head adds four inputs per iteration and tests eight counts for zero at once, scales its sums in `f32` by one reciprocal of the norm, and `l2_normalize` sums squares in eight running sums: on a 2-vCPU AVX-512 VM this took the component from 752 to 511 µs and native code from 431 to 378 µs (1.75× to 1.35×), in one session's runs. Before that, 8-bit heads with integer sums took this ratio from 4.30× to 1.66–1.71× on the same machine, much of it because native code, built for baseline x86-64 (SSE2), has no 32-bit integer vector multiply and emulates one (objdump), while wasm's `i32x4.mul` compiles to one `pmulld`. Left untried: multiplying in 16 bits (`pmaddwd`, wasm's `i32x4.dot_i16x8_s`) when every count fits, which would speed native code more than the component.",
        meets: |ratio, _| ratio <= 1.5,
    },
    Figure {
        name: "Hash encoder, 64 sentences: fuel metering on ÷ off",
        minus: None,
        measured: "hash-encoder/wasm-fuel",
        baseline: "hash-encoder/wasm-no-fuel",
        items: None,
        target: "≤ 1.25×",
        limited_by: "fuel metering adds a counter update per basic block; tight byte loops pay it most.",
        meets: |ratio, _| ratio <= 1.25,
    },
    Figure {
        name: "minilm-l6, batch 1: embeddings/s through the component ÷ native ort",
        minus: None,
        measured: "minilm-l6/wasm-batch1",
        baseline: "minilm-l6/native-batch1",
        items: Some((1, 1)),
        target: "≥ 0.95",
        limited_by: "the component adds to the same ONNX Runtime run a fresh instance (the fresh-instance row), the worker round trip (the round-trip row; on a VM about a third of it is two wake-ups across processes, each a pipe write that interrupts a sleeping vCPU and costs the writer some 15 µs), tokenisation in wasm, and copying and rounding tensors. On a 2-vCPU AVX-512 VM, in one session's runs: 0.89–0.93× with Hugging Face `tokenizers` in wasm (a sentence took it some 110 µs, a third of that in its allocator); 0.96× once plans were kept per input shape, the worker's pipes were read and written on the calling thread (two wake-ups fewer) and outputs were rounded without a libm call; 0.96–0.98× with the SDK's own WordPiece tokenizer, the margin over the target being about the spread between runs.",
        meets: |ratio, _| ratio >= 0.95,
    },
    Figure {
        name: "minilm-l6, batch 32: embeddings/s through the component ÷ native ort",
        minus: None,
        measured: "minilm-l6/wasm-batch32",
        baseline: "minilm-l6/native-batch32",
        items: Some((32, 32)),
        target: "≥ 0.95",
        limited_by: "the component adds a fresh instance, tokenisation in wasm and copying tensors across the component boundary to the same ONNX Runtime runs. On a 2-vCPU AVX-512 VM, in one session's runs: 0.93–0.95× with Hugging Face `tokenizers` in wasm (3.5 ms of a 107 ms call tokenised the 32 texts); 0.97–0.99× with the SDK's own WordPiece tokenizer and outputs read in place in the guest instead of copied; 0.955× once runs took at most 512 tokens, which made both sides faster, native code more (it pays no round trip per run).",
        meets: |ratio, _| ratio >= 0.95,
    },
    Figure {
        name: "minilm-l6 through the component, the same 32 texts: embeddings/s in one batch ÷ one call each",
        minus: None,
        measured: "minilm-l6/wasm-batch32",
        baseline: "minilm-l6/wasm-singles32",
        items: Some((32, 32)),
        target: "≥ 2.0",
        limited_by: "a batch runs in fewer, padded model runs (the SDK's `batches`: a cost model per run, and at most 512 tokens a run, where timings of every batch and length up to 32 × 128 put a text's least cost); what remains is ONNX Runtime's own gain from batching with the worker's settings (one thread per run) on this CPU: natively, the same texts in the same runs gain the ratio in the line below the table, and the component gains more only because batching also saves it costs it pays per call (a fresh instance, a worker round trip, planning and framing a run). With one thread, a batched token costs no less than a single one: in the fuel-against-time table a text of 128 tokens takes about as long alone as in a run of 8, and longer in a run of 32. So batching saves only each run's fixed cost (about 1.7 ms here), and 2.0× would need the 32 texts in half the time of their singles, less than native ONNX Runtime takes for the same runs. The issue's premise, native ONNX Runtime 2.5× faster per text at batch 32, does not hold with these settings on this machine. What would close it: more threads per run, or other kernels, which the one-thread-per-run rule and determinism across validators would first have to allow.",
        meets: |ratio, _| ratio >= 2.0,
    },
    Figure {
        name: "minilm-l6: fresh pre-initialised instance and an empty `embed` ÷ one batch-1 inference",
        minus: None,
        measured: "minilm-l6/fresh-instance",
        baseline: "minilm-l6/wasm-batch1",
        items: None,
        target: "≤ 0.1",
        limited_by: "a fresh instance of a 3.6 MB component maps and faults in its snapshot memory.",
        meets: |ratio, _| ratio <= 0.1,
    },
    Figure {
        name: "Load the hash encoder: compile ÷ from the compiled cache",
        minus: None,
        measured: "load/hash-encoder-compile",
        baseline: "load/hash-encoder-cached",
        items: None,
        target: "≥ 50×",
        limited_by: "perf of cached loads: about 70 % of the time is the kernel, reading the compiled artifact from its file into memory, writing the component's initial memory into a new copy-on-write image (a memfd), and faulting in fresh buffers; hashing the artifact to check that it is the one this node recorded (blake3 on one core) is about a sixth. Linking the component and calling `info()` are a few per cent. Hashing on every core would cut the second; mapping the file instead of copying it would cut the first only if the check still covered exactly the bytes loaded, which a mapping of a file another process can write does not.",
        meets: |ratio, _| ratio >= 50.0,
    },
    Figure {
        name: "Load the largest example component: compile ÷ from the compiled cache",
        minus: None,
        measured: "load/largest-compile",
        baseline: "load/largest-cached",
        items: None,
        target: "≥ 50×",
        limited_by: "perf of cached loads: about 70 % of the time is the kernel, reading the compiled artifact from its file into memory, writing the component's initial memory into a new copy-on-write image (a memfd), and faulting in fresh buffers; hashing the artifact to check that it is the one this node recorded (blake3 on one core) is about a sixth. Linking the component and calling `info()` are a few per cent. Hashing on every core would cut the second; mapping the file instead of copying it would cut the first only if the check still covered exactly the bytes loaded, which a mapping of a file another process can write does not.",
        meets: |ratio, _| ratio >= 50.0,
    },
];

/// Median time per iteration, in nanoseconds, of a criterion benchmark.
fn median_ns(dir: &Path, id: &str) -> f64 {
    let file = dir.join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let json: Value = serde_json::from_str(&text).unwrap();
    json["median"]["point_estimate"].as_f64().unwrap()
}

/// A figure's measured median, less the median it subtracts.
fn measured_ns(dir: &Path, f: &Figure) -> f64 {
    median_ns(dir, f.measured) - f.minus.map_or(0.0, |m| median_ns(dir, m))
}

/// A ratio with three significant digits, so that small ones do not print
/// as `0.00×`.
fn ratio(r: f64) -> String {
    let decimals = if r.abs() >= 100.0 || r == 0.0 || !r.is_finite() {
        0
    } else {
        (2 - r.abs().log10().floor() as i32).max(0) as usize
    };
    format!("{r:.decimals$}×")
}

fn human(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.0} ns"),
        ns if ns < 1e6 => format!("{:.1} µs", ns / 1e3),
        ns => format!("{:.2} ms", ns / 1e6),
    }
}

fn report(dir: &Path) -> String {
    let mut md = String::from(
        "## Encoder host\n\n\
         Criterion medians.\n\n\
         | Figure | Ratio | Measured | Baseline | Target | Met |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut missed = Vec::new();
    let mut failed = Vec::new();
    for f in FIGURES {
        if let Some(reason) = failure(f) {
            writeln!(
                md,
                "| {} | failed | – | – | {} | **failed** |",
                f.name, f.target
            )
            .unwrap();
            failed.push((f, reason));
            continue;
        }
        let (measured, baseline) = (measured_ns(dir, f), median_ns(dir, f.baseline));
        let (r, shown) = match f.items {
            None => (measured / baseline, [human(measured), human(baseline)]),
            Some((measured_items, baseline_items)) => {
                let per_second = |items: u32, ns: f64| f64::from(items) * 1e9 / ns;
                let rates = [
                    per_second(measured_items, measured),
                    per_second(baseline_items, baseline),
                ];
                (
                    rates[0] / rates[1],
                    rates.map(|rate| format!("{rate:.1}/s")),
                )
            }
        };
        let met = if (f.meets)(r, measured) {
            "yes"
        } else {
            missed.push(f);
            "**no**"
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {met} |",
            f.name,
            ratio(r),
            shown[0],
            shown[1],
            f.target
        )
        .unwrap();
    }
    if !failed.is_empty() {
        md += "\n### Failed figures\n\n";
        for (f, reason) in failed {
            writeln!(md, "- **{}**: {reason}", f.name).unwrap();
        }
    }
    if !missed.is_empty() {
        md += "\n### Missed targets\n\n";
        for f in missed {
            writeln!(md, "- **{}**: {}", f.name, f.limited_by).unwrap();
        }
    }
    // What the batch ÷ singles row is measured against: ONNX Runtime's
    // own gain from batching on this CPU.
    let native =
        median_ns(dir, "minilm-l6/native-singles32") / median_ns(dir, "minilm-l6/native-batch32");
    writeln!(
        md,
        "\nThe same 32 texts natively (tokenizers and ONNX Runtime from Rust, in the same \
         runs): embeddings/s in one batch ÷ one call each: {}, ONNX Runtime's own gain from \
         batching on this CPU.",
        ratio(native)
    )
    .unwrap();
    writeln!(
        md,
        "\nMemory images the load benchmarks had to retry creating: {}.",
        LOAD_IMAGE_RETRIES.load(Ordering::Relaxed)
    )
    .unwrap();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(
        md,
        "\nMachine: {} {}, {cpus} CPUs.",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
    .unwrap();
    md
}

fn main() {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = workspace.join("target/criterion");
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    instantiate(&mut c);
    scaling(&mut c);
    hash_encoder(&mut c);
    languages(&mut c);
    compiled_cache(&mut c);
    minilm(&mut c);
    worker(&mut c);
    c.final_summary();
    let models = PathBuf::from(
        std::env::var_os("SOMA_MODELS_DIR").expect("SOMA_MODELS_DIR (cargo xtask setup)"),
    );
    let md = report(&out) + &languages_report(&out) + &fuel_report(&fuel_versus_time(&models));
    let sections = workspace.join("target/bench");
    std::fs::create_dir_all(&sections).unwrap();
    std::fs::write(sections.join("host.md"), &md).unwrap();
    println!("\n{md}");
}
