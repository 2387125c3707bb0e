//! Localnet benchmark: `cargo xtask bench` runs it; it writes its section
//! of BENCHMARKS.md to `target/bench/localnet.md`.
//!
//! The demo's network — four `soma node` processes on this machine with the
//! example encoders (MiniLM-L6, MiniLM-L3, the hash encoder, the dishonest
//! random encoder) and the router — serves `POST /v1/embeddings` to
//! [`CONCURRENCY`] clients, one sentence per request, through validator
//! 0's API. Requests per second and latency percentiles are measured at
//! the clients.
//!
//! Every validator computes every job, so on one machine the network's
//! budget is what the host alone computes for the same jobs, ÷ the number
//! of validators. (Not a strict ceiling: a job finalises on a quorum's
//! attestations, and a validator that finds it decided skips it.) After
//! the run the same jobs (read from validator 0's state: same data, shard
//! and masks) are computed again by a job runner in this process, one
//! after another on every core; the figure is the network's jobs/s ÷ that
//! budget.

use anyhow::{Context, Result, bail};
use serde_json::json;
use soma_demo::Network;
use soma_execution::{Executor, Genesis, JobRunner, Router};
use soma_host::package::BlobStore;
use soma_host::{CompiledCache, Digest, Engine};
use soma_validator::config::{NodeFile, localnet_compiled_cache};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const VALIDATORS: usize = 4;
/// Requests in flight at once: the API's limit per key.
const CONCURRENCY: usize = soma_validator::api::MAX_REQUESTS_PER_KEY;
/// Requests measured, after [`WARM_UP`] that load the encoders.
const REQUESTS: usize = 64;
const WARM_UP: usize = 4;
const TARGET: f64 = 0.5;

/// Sentences of different lengths, so jobs are not all alike.
const SENTENCES: &[&str] = &[
    "A man is playing a guitar on stage.",
    "The central bank raised interest rates again this quarter, worrying investors.",
    "A cat sleeps on the warm windowsill.",
    "Heavy snow closed the mountain pass for most of the winter, and the villages beyond it \
     were cut off until the spring thaw.",
    "Scientists observed a rare comet.",
    "The orchestra rehearsed the symphony for the last time before the opening night.",
];

fn main() -> Result<()> {
    // `cargo bench` runs this from `target/release/deps`; `cargo xtask
    // bench` builds `soma` into `target/release` first.
    let soma = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("no target directory")?
        .join("soma");
    if !soma.exists() {
        bail!(
            "{} is missing: run the benchmarks with `cargo xtask bench`, which builds it",
            soma.display()
        );
    }
    let md = soma_demo::in_scratch_dir("soma-bench-", |dir| measure(&soma, dir))?;
    let sections = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&sections)?;
    std::fs::write(sections.join("localnet.md"), &md)?;
    println!("\n{md}");
    Ok(())
}

/// Runs the network, then the host alone; the section's markdown.
fn measure(soma: &Path, dir: &Path) -> Result<String> {
    let mut network = Network::start(soma, dir, VALIDATORS)?;
    let served = serve(&network);
    network.nodes.stop();
    let served = served?;
    let host = host_alone(&network, &served.jobs)?;
    Ok(report(&served, host))
}

/// What the clients saw.
struct Served {
    /// The jobs the measured requests made.
    jobs: Vec<Digest>,
    /// Each measured request's latency, sorted.
    latencies: Vec<Duration>,
    /// From the first measured request sent to the last answered.
    elapsed: Duration,
}

/// One embedding request of sentence `i`: its job and latency.
fn embed(network: &Network, i: usize) -> Result<(Digest, Duration)> {
    let started = Instant::now();
    let reply = network.apis[0]
        .post_json(
            "/v1/embeddings",
            &json!({ "input": SENTENCES[i % SENTENCES.len()] }),
        )?
        .ok()
        .with_context(|| format!("request {i}"))?;
    let job = reply["jobs"][0]
        .as_str()
        .and_then(Digest::from_hex)
        .context("a reply without its job")?;
    Ok((job, started.elapsed()))
}

/// Sends [`REQUESTS`] requests from [`CONCURRENCY`] clients after the
/// warm-up.
fn serve(network: &Network) -> Result<Served> {
    let bar = soma_demo::spinner("warming up: the validators load the encoders");
    for i in 0..WARM_UP {
        embed(network, i)?;
    }
    bar.finish_and_clear();
    let bar = indicatif::ProgressBar::new(REQUESTS as u64);
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= REQUESTS {
                            return Ok(());
                        }
                        let answered = embed(network, i)?;
                        done.lock().expect("no client panics").push(answered);
                        bar.inc(1);
                    }
                })
            })
            .collect();
        clients
            .into_iter()
            .try_for_each(|c| c.join().expect("no client panics"))
    })?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let done = done.into_inner().expect("no client panics");
    let mut latencies: Vec<Duration> = done.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    Ok(Served {
        jobs: done.into_iter().map(|(job, _)| job).collect(),
        latencies,
        elapsed,
    })
}

/// The time this machine's host takes to compute `jobs` alone, with a job
/// runner on every core and the encoders already loaded.
fn host_alone(network: &Network, jobs: &[Digest]) -> Result<Duration> {
    let (genesis, packages) =
        Genesis::from_config_file_with_packages(&network.dir.join("genesis.json"))?;
    let engine = Engine::new()?;
    let validator = network.dir.join("validator-0");
    let config = NodeFile::read(&validator.join("config.json"))?;
    let cache = CompiledCache::open(localnet_compiled_cache(&network.dir))?;
    let router = packages.first().context("the network has a router")?;
    let router = Router::load(&engine, router, Some(&cache), genesis.parameters())?;
    let state = validator.join(&config.data_dir).join("state");
    let executor = Executor::open(&state, &genesis, Some(router))?;
    let blobs_dir = tempfile::tempdir()?;
    let blobs = BlobStore::open(blobs_dir.path())?;
    for package in &packages {
        blobs.install(package)?;
    }
    let runner = JobRunner::new(engine, blobs, Some(cache));
    let jobs = jobs
        .iter()
        .map(|id| {
            executor
                .job(id)?
                .with_context(|| format!("job {id} is not in the state"))
        })
        .collect::<Result<Vec<_>>>()?;
    for package in jobs.iter().flat_map(|j| &j.shard) {
        runner.preload(package)?;
    }
    let started = Instant::now();
    for job in &jobs {
        runner.compute(job, genesis.parameters())?;
    }
    Ok(started.elapsed())
}

fn report(served: &Served, host: Duration) -> String {
    let jobs = served.jobs.len() as f64;
    let rate = jobs / served.elapsed.as_secs_f64();
    let budget = jobs / host.as_secs_f64() / VALIDATORS as f64;
    let ratio = rate / budget;
    let percentile = |p: f64| {
        let i = ((served.latencies.len() as f64 * p).ceil() as usize).max(1) - 1;
        served.latencies[i].as_secs_f64() * 1e3
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut md = format!(
        "## Localnet\n\n\
         The demo's network (four `soma node` processes, MiniLM-L6, MiniLM-L3, the hash encoder, \
         the random encoder and the router) on this machine's {cores} cores: {REQUESTS} requests \
         of one sentence each to `POST /v1/embeddings` from {CONCURRENCY} clients at once. The \
         baseline is what the host alone computes for the same jobs on every core, ÷ {VALIDATORS} \
         (every validator computes every job).\n\n\
         | Figure | Ratio | Measured | Baseline | Target | Met |\n\
         |---|---|---|---|---|---|\n"
    );
    writeln!(
        md,
        "| Jobs finalised per second through the API ÷ the host's jobs per second ÷ {VALIDATORS} | {ratio:.2}× | \
         {rate:.2}/s | {budget:.2}/s | ≥ {TARGET} | {} |",
        if ratio >= TARGET { "yes" } else { "**no**" }
    )
    .expect("writing to a string");
    writeln!(
        md,
        "\nRequests per second: {rate:.2}; latency p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms. The \
         host computed the {} jobs alone in {:.1} s.",
        percentile(0.5),
        percentile(0.9),
        percentile(1.0),
        served.jobs.len(),
        host.as_secs_f64()
    )
    .expect("writing to a string");
    md
}
