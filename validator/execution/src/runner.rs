//! The job runner (compute, outside the state machine): runs each shard
//! encoder of a job in the host on the data and on masked variants of it,
//! measures each encoder's differential loss, and gives this validator's
//! results for its attestation (DESIGN.md, "Execution", steps 2 to 4).
//!
//! Results need not be bit-identical across validators (ONNX Runtime is
//! not, across CPUs); finalisation takes medians. They are deterministic on
//! one machine: fixed seeds, fixed input order, and arithmetic that is
//! exact IEEE (no libm); calls run in parallel, and each result is kept in
//! its shard and variant place.
//!
//! Every variant is embedded in a call of its own, in a fresh sandbox: an
//! encoder never sees the whole and its parts together, so it cannot answer
//! every part with its embedding of the whole to fake a loss of zero.
//!
//! The differential loss asks whether an encoder composes: its embedding of
//! the whole should be predictable from its embeddings of a masked part
//! and of the rest. For each of K masks (a seeded third of the words, or a
//! byte range for data that is not text) the prediction is the
//! length-weighted sum of the two parts' embeddings, and the loss is one
//! minus its cosine with the whole's embedding, averaged over the masks.
//! Masks come from the job's seed, which no submitter or encoder controls.

use crate::job::{EncoderResult, Job, Outcome};
use crate::params::Parameters;
use crate::scoring::ONE;
use soma_host::package::BlobStore;
use soma_host::{CompiledCache, Digest, Encoder, Engine, Error, Limits, Seed, StoreError};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why a job cannot be computed yet.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A shard encoder's package has not reached this node: compute waits
    /// for it (apply never does).
    #[error("package {0} is not in the blob store yet")]
    MissingPackage(Digest),
    /// The blob store failed.
    #[error(transparent)]
    Store(StoreError),
}

/// Runs jobs' shard encoders for this validator.
pub struct JobRunner {
    engine: Engine,
    store: BlobStore,
    cache: Option<CompiledCache>,
    /// What it knows of each package it was asked for.
    loaded: Mutex<BTreeMap<Digest, Known>>,
    /// How long a package this host failed to load is attested `Local`
    /// before it is tried again (doubled for each failure in a row, up to
    /// [`MAX_LOCAL_RETRY`]).
    local_retry: Duration,
    /// Loads tried so far.
    load_attempts: AtomicU64,
    /// Bumped by every [`JobRunner::forget`]: a load that saw another
    /// value when it started does not record its result, so that a
    /// package forgotten meanwhile stays forgotten.
    forgets: AtomicU64,
    /// Threads that run a job's calls.
    threads: usize,
    /// The threads besides the caller's, started for the first job that
    /// needs them and kept (starting threads for each job cost as much as
    /// a share of its calls); none if they could not be started.
    pool: OnceLock<Option<rayon::ThreadPool>>,
}

/// What a runner knows of a package.
enum Known {
    /// Loaded, or unloadable for a reason of its own (on every host).
    Settled(Result<Arc<Loaded>, Outcome>),
    /// This host failed to load it, `failures` times in a row; attested
    /// `Local` until `retry`. Loading runs admission, compiles models and
    /// may wait out a worker's load budget: trying for every job would
    /// have a package that fails here cost every batch that.
    Failing { failures: u32, retry: Instant },
}

/// First wait before a package this host failed to load is tried again.
pub const LOCAL_RETRY: Duration = Duration::from_secs(10);

/// Longest wait before a package this host failed to load is tried again:
/// jobs meanwhile are attested `Local` for it, which routing counts as a
/// poor result when most of the stake attests so.
pub const MAX_LOCAL_RETRY: Duration = Duration::from_secs(300);

struct Loaded {
    encoder: Encoder,
    /// The manifest's fuel limit for one call.
    fuel: u64,
}

/// A job ready for its calls.
struct Prepared<'a> {
    job: &'a Job,
    /// Per shard encoder, in shard order: loaded, or why it cannot be.
    encoders: Vec<Result<Arc<Loaded>, Outcome>>,
    /// The calls each loaded encoder gets: one per variant.
    inputs: usize,
    masks: u8,
    /// Made by the first call that needs them, on whichever thread runs
    /// it, rather than all on the calling thread before any call starts.
    variants: OnceLock<Variants>,
    seed: Seed,
}

impl Prepared<'_> {
    fn variants(&self) -> &Variants {
        self.variants.get_or_init(|| {
            let variants = Variants::of(&self.job.data, &self.job.seed, self.masks);
            // The calls were laid out by this count.
            assert_eq!(variants.inputs.len(), self.inputs, "variants as counted");
            variants
        })
    }
}

/// A batch's calls and results: each is made by whichever thread gets to
/// it, and kept in its place, so that the order of results never depends
/// on the threads.
struct Work<'a> {
    /// Per call, in order: job, shard encoder, variant.
    calls: Vec<Task<'a>>,
    /// Per loaded shard encoder of each job, in the same order.
    groups: Vec<Group>,
}

/// One encoder's call on one variant of a job.
struct Task<'a> {
    job: &'a Prepared<'a>,
    loaded: &'a Loaded,
    input: usize,
    group: usize,
    outcome: OnceLock<Call>,
}

/// One encoder's calls on a job: the `len` calls from `first`.
struct Group {
    first: usize,
    len: usize,
    /// Calls not made yet: the thread that makes the last one makes the
    /// result, while the other threads go on with other calls.
    remaining: AtomicUsize,
    result: OnceLock<EncoderResult>,
}

impl<'a> Work<'a> {
    fn of(jobs: &'a [Result<Prepared<'a>, RunnerError>]) -> Work<'a> {
        let (mut calls, mut groups) = (Vec::new(), Vec::new());
        for job in jobs.iter().flatten() {
            for loaded in job.encoders.iter().flatten() {
                let group = groups.len();
                groups.push(Group {
                    first: calls.len(),
                    len: job.inputs,
                    remaining: AtomicUsize::new(job.inputs),
                    result: OnceLock::new(),
                });
                calls.extend((0..job.inputs).map(|input| Task {
                    job,
                    loaded,
                    input,
                    group,
                    outcome: OnceLock::new(),
                }));
            }
        }
        Work { calls, groups }
    }

    /// Makes call `i`, and its encoder's result if it is the last of them.
    fn run(&self, i: usize, params: &Parameters) {
        let task = &self.calls[i];
        let variants = task.job.variants();
        let input = &variants.inputs[task.input];
        // A call's panic is caught (this host's failure), and the other
        // calls go on.
        let call = catch_unwind(AssertUnwindSafe(|| call(task.loaded, input, task.job.seed)));
        let first = task
            .outcome
            .set(call.unwrap_or(Err((Outcome::Local, 0))))
            .is_ok();
        debug_assert!(first, "call {i} made twice");
        let group = &self.groups[task.group];
        // Acquire: the other calls of the group, made on other threads,
        // are seen set.
        if group.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let calls = self.calls[group.first..][..group.len].iter().map(|task| {
                task.outcome
                    .get()
                    .expect("a call is set before it is counted")
            });
            let made = group.result.set(result(calls, variants, params)).is_ok();
            debug_assert!(made, "a group's result made twice");
        }
    }
}

impl JobRunner {
    /// A runner loading packages from `store` (compiled code cached in
    /// `cache`, if given) into `engine`, using every core.
    pub fn new(engine: Engine, store: BlobStore, cache: Option<CompiledCache>) -> JobRunner {
        JobRunner {
            engine,
            store,
            cache,
            loaded: Mutex::default(),
            local_retry: LOCAL_RETRY,
            load_attempts: AtomicU64::new(0),
            forgets: AtomicU64::new(0),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pool: OnceLock::new(),
        }
    }

    /// The same runner using `threads` threads (at least one) for a job's
    /// calls: to leave cores to consensus, or to measure.
    pub fn with_threads(mut self, threads: usize) -> JobRunner {
        self.threads = threads.max(1);
        self.pool = OnceLock::new();
        self
    }

    /// The same runner waiting `first` (instead of [`LOCAL_RETRY`]) before
    /// it tries again to load a package this host failed to load.
    pub fn with_local_retry(mut self, first: Duration) -> JobRunner {
        self.local_retry = first;
        self
    }

    /// How many times it tried to load a package (loaded, refused, or
    /// failed here): a count that keeps rising under steady work means
    /// packages fail to load on this host and are tried again (the node
    /// reports it in its metrics).
    pub fn load_attempts(&self) -> u64 {
        self.load_attempts.load(Ordering::Relaxed)
    }

    /// This validator's results for `job`: one per shard encoder, in shard
    /// order. Every call (each encoder on each variant) is a task; the
    /// runner's threads (one per core by default) share the tasks out, and
    /// each result is kept in its place, so scheduling never changes what
    /// is attested.
    pub fn compute(
        &self,
        job: &Job,
        params: &Parameters,
    ) -> Result<Vec<EncoderResult>, RunnerError> {
        self.compute_all(&[job], params)
            .pop()
            .expect("one result per job")
    }

    /// [`JobRunner::compute`] for several jobs at once, their results in
    /// the order of `jobs`: the calls of every job are shared out together,
    /// so no core waits at the end of one job for the others to finish it.
    /// A job that cannot be computed yet does not hold up the others.
    pub fn compute_all(
        &self,
        jobs: &[&Job],
        params: &Parameters,
    ) -> Vec<Result<Vec<EncoderResult>, RunnerError>> {
        // Each package is looked up once per batch.
        let mut encoders_of: BTreeMap<Digest, Result<Arc<Loaded>, Outcome>> = BTreeMap::new();
        let prepared: Vec<Result<Prepared, RunnerError>> = jobs
            .iter()
            .map(|&job| {
                let encoders = job
                    .shard
                    .iter()
                    .map(|package| match encoders_of.get(package) {
                        Some(known) => Ok(known.clone()),
                        None => {
                            let loaded = self.encoder(package)?;
                            encoders_of.insert(*package, loaded.clone());
                            Ok(loaded)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Prepared {
                    job,
                    encoders,
                    inputs: Variants::count(&job.data, params.mask_count),
                    masks: params.mask_count,
                    variants: OnceLock::new(),
                    seed: sandbox_seed(job),
                })
            })
            .collect();
        let work = Work::of(&prepared);
        self.share_out(work.calls.len(), |i| work.run(i, params));
        let Work { calls, groups } = work;
        drop(calls);
        let mut groups = groups.into_iter();
        let results = prepared
            .into_iter()
            .map(|job| {
                let job = job?;
                Ok(job
                    .encoders
                    .iter()
                    .map(|encoder| match encoder {
                        Ok(_) => groups
                            .next()
                            .and_then(|group| group.result.into_inner())
                            .expect("every group's last call made its result"),
                        Err(outcome) => failed(*outcome, 0),
                    })
                    .collect())
            })
            .collect();
        debug_assert!(groups.next().is_none(), "every group's result was used");
        results
    }

    /// Runs `task(i)` for every `i` below `count` on the runner's threads,
    /// each taking the next until none is left; returns once all have run.
    fn share_out(&self, count: usize, task: impl Fn(usize) + Sync) {
        let next = AtomicUsize::new(0);
        let work = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                task(i);
            }
        };
        // The calling thread works too, from the start: a job's calls are
        // short, and handing all of them to other threads and waiting costs
        // a share of them in wake-ups.
        let helpers = match self.threads.min(count) {
            0 | 1 => None,
            threads => self.pool().map(|pool| (pool, threads - 1)),
        };
        match helpers {
            Some((pool, helpers)) => pool.in_place_scope(|s| {
                for _ in 0..helpers {
                    s.spawn(|_| work());
                }
                work();
            }),
            None => work(),
        }
    }

    /// The calls every shard encoder of `job` gets: the sandbox's seed, and
    /// the inputs in the order their results are combined (the whole data,
    /// then each mask's part and rest), one input per call. For tools that
    /// replay or time a job's calls.
    pub fn calls(job: &Job, params: &Parameters) -> (Seed, Vec<Vec<u8>>) {
        let variants = Variants::of(&job.data, &job.seed, params.mask_count);
        (sandbox_seed(job), variants.inputs)
    }

    /// Loads (compiles, pre-initialises) the encoder of `package` ahead of
    /// its first job, so that job does not wait for it; the outcome
    /// compute would attest if it does not load.
    pub fn preload(&self, package: &Digest) -> Result<Outcome, RunnerError> {
        Ok(match self.encoder(package)? {
            Ok(_) => Outcome::Ok,
            Err(outcome) => outcome,
        })
    }

    /// Drops the loaded encoder of `package` (deregistered: no job will
    /// need it), freeing its compiled code and, unless another encoder
    /// uses them, its models. It is loaded again if it is needed again.
    pub fn forget(&self, package: &Digest) {
        let mut known = self.lock();
        self.forgets.fetch_add(1, Ordering::Relaxed);
        known.remove(package);
    }

    /// The loaded encoder of `package`, loading it on first use; `Err`
    /// inside if it cannot be loaded: `Unloadable` for a reason of its own,
    /// `Local` for this host's (tried again after a wait, see
    /// [`Known::Failing`]).
    fn encoder(&self, package: &Digest) -> Result<Result<Arc<Loaded>, Outcome>, RunnerError> {
        let now = Instant::now();
        let (seen, forgets) = {
            let known = self.lock();
            let failures = match known.get(package) {
                Some(Known::Settled(known)) => return Ok(known.clone()),
                Some(Known::Failing { retry, .. }) if now < *retry => {
                    return Ok(Err(Outcome::Local));
                }
                Some(Known::Failing { failures, .. }) => *failures,
                None => 0,
            };
            (failures, self.forgets.load(Ordering::Relaxed))
        };
        let verified = match self.store.package(package) {
            Ok(verified) => verified,
            Err(StoreError::NotFound(_)) => return Err(RunnerError::MissingPackage(*package)),
            Err(e) => return Err(RunnerError::Store(e)),
        };
        self.load_attempts.fetch_add(1, Ordering::Relaxed);
        let loaded = match self.engine.load_package(&verified, self.cache.as_ref()) {
            Ok(encoder) => Ok(Arc::new(Loaded {
                encoder,
                fuel: verified.manifest().fuel_limit,
            })),
            // This host's trouble (compiling can fail for want of memory
            // here): tried again after a wait.
            Err(e) if !e.is_deterministic() => {
                let failures = seen.saturating_add(1);
                let wait = retry_wait(self.local_retry, failures);
                tracing::warn!(
                    %package,
                    "cannot load the encoder on this host, so its calls are attested as local \
                     failures; trying again in {wait:?}: {e}"
                );
                // The wait runs from the failure: a load may take minutes.
                let failed = Instant::now();
                let retry = failed.checked_add(wait).unwrap_or(failed);
                let failing = Known::Failing { failures, retry };
                if let Some(settled) = self.record(package, forgets, seen, failing) {
                    return Ok(settled);
                }
                return Ok(Err(Outcome::Local));
            }
            Err(_) => Err(Outcome::Unloadable),
        };
        let settled = Known::Settled(loaded.clone());
        Ok(self
            .record(package, forgets, seen, settled)
            .unwrap_or(loaded))
    }

    /// Records what a load of `package` found, which started when the
    /// runner had seen `forgets` forgets and `seen` failures of it in a
    /// row, unless that changed meanwhile: a package forgotten stays
    /// forgotten, and what another thread's load recorded stands. Gives
    /// what another load settled, for the caller to use instead.
    fn record(
        &self,
        package: &Digest,
        forgets: u64,
        seen: u32,
        found: Known,
    ) -> Option<Result<Arc<Loaded>, Outcome>> {
        let mut known = self.lock();
        if self.forgets.load(Ordering::Relaxed) != forgets {
            return None;
        }
        match known.get(package) {
            Some(Known::Settled(settled)) => Some(settled.clone()),
            Some(Known::Failing { failures, .. }) if *failures != seen => None,
            _ => {
                known.insert(*package, found);
                None
            }
        }
    }

    /// The runner's threads besides the caller's, started on first use;
    /// none for a runner of one thread, or, for the rest of the runner's
    /// life, if they could not be started then (the calling thread does
    /// every call: results do not depend on it).
    fn pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool
            .get_or_init(|| {
                if self.threads < 2 {
                    return None;
                }
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.threads - 1)
                    .thread_name(|i| format!("soma-runner-{i}"))
                    .build()
                    .inspect_err(|e| {
                        tracing::warn!("job runner: cannot start its other threads, so it runs on one from now on: {e}")
                    })
                    .ok()
            })
            .as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Digest, Known>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long to wait after the `failures`-th local failure in a row to load
/// a package: `first`, doubled for each failure before it, at most
/// [`MAX_LOCAL_RETRY`].
fn retry_wait(first: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    first.saturating_mul(1 << doublings).min(MAX_LOCAL_RETRY)
}

/// The seed of the sandbox of every call of `job`.
fn sandbox_seed(job: &Job) -> Seed {
    Seed(blake3::derive_key("soma/job-sandbox/v1", &job.seed))
}

/// One call's outcome: the vector and the fuel used, or the attested
/// failure with the fuel it used.
type Call = Result<(Vec<f32>, u64), (Outcome, u64)>;

/// One encoder on one input, in a fresh sandbox, retried once if this host
/// failed it.
fn call(loaded: &Loaded, input: &Vec<u8>, seed: Seed) -> Call {
    let limits = Limits {
        fuel: loaded.fuel,
        ..Limits::default()
    };
    let batch = std::slice::from_ref(input);
    let mut outcome = loaded.encoder.embed(batch, &limits, seed);
    if matches!(&outcome, Err(e) if !e.is_deterministic()) {
        outcome = loaded.encoder.embed(batch, &limits, seed);
    }
    match outcome {
        Ok(mut embeddings) => Ok((embeddings.vectors.swap_remove(0), embeddings.fuel_used)),
        Err(e) => Err((outcome_of(&e), fuel_of(&e, &limits))),
    }
}

/// An encoder's result from its calls on the whole and each variant, in
/// order: the first failure, if any, is the outcome.
fn result<'c>(
    calls: impl ExactSizeIterator<Item = &'c Call>,
    variants: &Variants,
    params: &Parameters,
) -> EncoderResult {
    let mut vectors = Vec::with_capacity(calls.len());
    let mut fuel = 0u64;
    for call in calls {
        match call {
            Ok((vector, used)) => {
                fuel = fuel.saturating_add(*used);
                vectors.push(vector.as_slice());
            }
            Err((outcome, used)) => return failed(*outcome, fuel.saturating_add(*used)),
        }
    }
    if vectors[0].len() != usize::from(params.dimension) {
        return failed(Outcome::InvalidOutput, fuel);
    }
    EncoderResult {
        outcome: Outcome::Ok,
        fuel,
        loss: fixed_loss(variants.loss(&vectors)),
        embedding: vectors[0].iter().map(|&x| fixed(x)).collect(),
    }
}

fn failed(outcome: Outcome, fuel: u64) -> EncoderResult {
    EncoderResult {
        outcome,
        fuel,
        loss: 0,
        embedding: vec![],
    }
}

/// The attested outcome of a failed call.
fn outcome_of(error: &Error) -> Outcome {
    match error {
        Error::FuelExhausted { .. } => Outcome::FuelExhausted,
        Error::MemoryLimit { .. } | Error::InstanceLimit { .. } => Outcome::MemoryLimit,
        Error::Trap { .. } => Outcome::Trap,
        Error::InvalidOutput(_) => Outcome::InvalidOutput,
        Error::Refused(_) => Outcome::Refused,
        // The host refused the input before the encoder ran (too long for
        // it): no evidence against the encoder. A network admits only
        // encoders that take its longest data (at registration and from a
        // genesis config), so this is a genesis built otherwise.
        Error::InvalidInput(_) => Outcome::Local,
        e if !e.is_deterministic() => Outcome::Local,
        // Load-time errors do not come from a call.
        _ => Outcome::Unloadable,
    }
}

/// Fuel a failed call used, as far as the host tells.
fn fuel_of(error: &Error, limits: &Limits) -> u64 {
    match error {
        Error::FuelExhausted { .. } => limits.fuel,
        _ => 0,
    }
}

/// `x` on the fixed-point grid (2⁻¹⁶), rounded half away from zero,
/// saturating; NaN is 0.
///
/// Without `f64::round`, which is a call into the platform's libm on
/// x86-64 without SSE4.1 (and apply must not call libm): `x · 2¹⁶` is exact
/// in `f64`, and so is adding a half of its sign wherever the sum fits an
/// `i32` (an `f32` has 24 significant bits), except below a half in
/// magnitude, where it rounds to at most `1 − 2⁻²⁵`; `as` truncates
/// towards zero, and saturates.
pub(crate) fn fixed(x: f32) -> i32 {
    let y = f64::from(x) * ONE as f64;
    (y + 0.5f64.copysign(y)) as i32
}

/// `loss` on the fixed-point grid (2⁻¹⁶), rounded half up, clamped to
/// `u32` (NaN is 0). Without libm, as [`fixed`]: below 2³² a value less its
/// integer part is exact.
fn fixed_loss(loss: f64) -> u32 {
    let y = (loss * ONE as f64).clamp(0.0, f64::from(u32::MAX));
    let whole = y as u64;
    let rounded = whole + u64::from(y - whole as f64 >= 0.5);
    rounded.min(u64::from(u32::MAX)) as u32
}

/// How a job's data is split into masked parts.
enum Masking<'a> {
    /// Text of two words or more: by words.
    Words(&'a str),
    /// Other data of two bytes or more: by byte ranges.
    Bytes,
    /// Too short to split: no masks, so no loss.
    None,
}

impl Masking<'_> {
    fn of(data: &[u8]) -> Masking<'_> {
        match std::str::from_utf8(data) {
            // The words are split out only when the variants are made.
            Ok(text) if text.split_whitespace().nth(1).is_some() => Masking::Words(text),
            Ok(_) => Masking::None,
            Err(_) if data.len() >= 2 => Masking::Bytes,
            Err(_) => Masking::None,
        }
    }
}

/// Whether the job runner measures a loss on `data` with `masks` masks:
/// without one, every encoder's loss is 0 and says nothing.
pub(crate) fn has_masks(data: &[u8], masks: u8) -> bool {
    masks > 0 && !matches!(Masking::of(data), Masking::None)
}

/// The inputs of one job's calls: the whole, then each mask's part and
/// rest; and each part's share of the whole.
struct Variants {
    inputs: Vec<Vec<u8>>,
    /// Per mask, the part's and the rest's lengths (in words or bytes).
    sizes: Vec<(f64, f64)>,
}

impl Variants {
    /// The whole and `masks` masked variants of `data`, from `seed`. Data
    /// too short to split has no variants (its loss is 0).
    fn of(data: &[u8], seed: &[u8; 32], masks: u8) -> Variants {
        let mut inputs = vec![data.to_vec()];
        let mut sizes = Vec::new();
        let masking = Masking::of(data);
        let words: Vec<&str> = match masking {
            Masking::Words(text) => text.split_whitespace().collect(),
            Masking::Bytes | Masking::None => Vec::new(),
        };
        for k in 0..masks {
            let (part, rest, size) = match &masking {
                Masking::Words(_) => split_words(&words, seed, k),
                Masking::Bytes => split_bytes(data, seed, k),
                Masking::None => break,
            };
            inputs.push(part);
            inputs.push(rest);
            sizes.push(size);
        }
        Variants { inputs, sizes }
    }

    /// How many inputs [`Variants::of`] makes of `data`, known before they
    /// are made.
    fn count(data: &[u8], masks: u8) -> usize {
        match Masking::of(data) {
            Masking::None => 1,
            Masking::Words(_) | Masking::Bytes => 1 + 2 * usize::from(masks),
        }
    }

    /// The mean over masks of 1 − cos(whole, |part|·e(part) + |rest|·e(rest)).
    /// A mask whose whole or prediction is the zero vector is no evidence
    /// either way (an honest encoder may answer zero for input it cannot
    /// read, and a loss decides slashing): the mean is over the others,
    /// and 0 if there are none.
    fn loss(&self, vectors: &[impl AsRef<[f32]>]) -> f64 {
        let whole = vectors[0].as_ref();
        let losses: Vec<f64> = self
            .sizes
            .iter()
            .enumerate()
            .filter_map(|(k, &(part_size, rest_size))| {
                let (part, rest) = (vectors[1 + 2 * k].as_ref(), vectors[2 + 2 * k].as_ref());
                let predicted: Vec<f64> = part
                    .iter()
                    .zip(rest)
                    .map(|(&p, &r)| part_size * f64::from(p) + rest_size * f64::from(r))
                    .collect();
                Some((1.0 - cosine(whole, &predicted)?).max(0.0))
            })
            .collect();
        match losses.is_empty() {
            true => 0.0,
            false => losses.iter().sum::<f64>() / losses.len() as f64,
        }
    }
}

/// The cosine of `a` and `b` (over the shorter's length), unless either
/// is the zero vector.
///
/// Each sum is kept in [`LANES`] running sums, term `i` into sum
/// `i % LANES`, and those are added in order: one fixed order, so the
/// result is the same on every machine, and one that vectorises, where a
/// single running sum makes each addition wait for the one before.
fn cosine(a: &[f32], b: &[f64]) -> Option<f64> {
    // The host gives every vector of a call the encoder's dimension.
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    // Per lane: a·b, a·a, b·b.
    let mut sums = [[0.0f64; LANES]; 3];
    let mut add = |lane: usize, x: f32, y: f64| {
        let x = f64::from(x);
        sums[0][lane] += x * y;
        sums[1][lane] += x * x;
        sums[2][lane] += y * y;
    };
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (xs, ys) in chunks_a.zip(chunks_b) {
        for lane in 0..LANES {
            add(lane, xs[lane], ys[lane]);
        }
    }
    for (lane, (&x, &y)) in rest_a.iter().zip(rest_b).enumerate() {
        add(lane, x, y);
    }
    let [dot, a_a, b_b] = sums.map(|lanes| lanes.iter().fold(0.0, |total, sum| total + sum));
    if a_a == 0.0 || b_b == 0.0 {
        return None;
    }
    Some(dot / (a_a.sqrt() * b_b.sqrt()))
}

/// Running sums [`cosine`] keeps per sum: four 128-bit vectors of `f64`.
const LANES: usize = 8;

/// Whether mask `k` takes item `i`: a third of the items, by the seed.
fn masked(seed: &[u8; 32], k: u8, i: usize) -> bool {
    let mut input = [0u8; 9];
    input[0] = k;
    input[1..].copy_from_slice(&(i as u64).to_le_bytes());
    blake3::keyed_hash(seed, &input).as_bytes()[0] < 86
}

/// Mask `k` of a text: the masked words and the rest, each joined by
/// spaces, and their word counts. Neither side is ever empty.
fn split_words(words: &[&str], seed: &[u8; 32], k: u8) -> (Vec<u8>, Vec<u8>, (f64, f64)) {
    let mut take: Vec<bool> = (0..words.len()).map(|i| masked(seed, k, i)).collect();
    let flip = usize::from(k) % words.len();
    if take.iter().all(|&t| t) || take.iter().all(|&t| !t) {
        take[flip] = !take[flip];
    }
    let join = |side: bool| -> Vec<u8> {
        let chosen: Vec<&str> = words
            .iter()
            .zip(&take)
            .filter(|&(_, &t)| t == side)
            .map(|(w, _)| *w)
            .collect();
        chosen.join(" ").into_bytes()
    };
    let parts = take.iter().filter(|&&t| t).count();
    let size = (parts as f64, (words.len() - parts) as f64);
    (join(true), join(false), size)
}

/// Mask `k` of bytes: a seeded range of about a third, and the rest.
fn split_bytes(data: &[u8], seed: &[u8; 32], k: u8) -> (Vec<u8>, Vec<u8>, (f64, f64)) {
    let n = data.len();
    let mut draw = [0u8; 8];
    draw.copy_from_slice(&blake3::keyed_hash(seed, &[b'b', k]).as_bytes()[..8]);
    let len = (n / 3).max(1);
    let start = (u64::from_le_bytes(draw) % (n - len + 1) as u64) as usize;
    let part = data[start..start + len].to_vec();
    let rest = [&data[..start], &data[start + len..]].concat();
    let rest = if rest.is_empty() {
        data[..1].to_vec()
    } else {
        rest
    };
    let size = (part.len() as f64, rest.len() as f64);
    (part, rest, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_records_what_it_found_only_if_nothing_changed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let runner = JobRunner::new(Engine::new().unwrap(), store, None);
        let package = Digest([1; 32]);
        let failing = |failures| Known::Failing {
            failures,
            retry: Instant::now(),
        };
        let unloadable = || Known::Settled(Err(Outcome::Unloadable));
        let failures = |runner: &JobRunner| match runner.lock().get(&package) {
            None => None,
            Some(Known::Failing { failures, .. }) => Some(*failures),
            Some(Known::Settled(_)) => Some(u32::MAX),
        };
        let forgets = runner.forgets.load(Ordering::Relaxed);
        // Forgotten during the load: nothing is recorded.
        runner.forget(&package);
        assert!(runner.record(&package, forgets, 0, failing(1)).is_none());
        assert_eq!(failures(&runner), None);
        // Nothing changed: recorded.
        let forgets = runner.forgets.load(Ordering::Relaxed);
        assert!(runner.record(&package, forgets, 0, failing(1)).is_none());
        assert_eq!(failures(&runner), Some(1));
        // Another load failed meanwhile, after this one started: its
        // record stands.
        runner.record(&package, forgets, 1, failing(2));
        assert!(runner.record(&package, forgets, 1, unloadable()).is_none());
        assert_eq!(failures(&runner), Some(2));
        // Another load settled it: that stands, and is what a later load
        // that failed here is given.
        assert!(runner.record(&package, forgets, 2, unloadable()).is_none());
        let given = runner.record(&package, forgets, 0, failing(1));
        assert!(matches!(given, Some(Err(Outcome::Unloadable))));
        assert_eq!(failures(&runner), Some(u32::MAX));
    }

    #[test]
    fn a_package_failing_here_waits_twice_as_long_each_time_up_to_a_bound() {
        let first = Duration::from_secs(10);
        let waits: Vec<u64> = (1..=8).map(|n| retry_wait(first, n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_wait(first, u32::MAX), MAX_LOCAL_RETRY);
        assert_eq!(retry_wait(Duration::ZERO, 5), Duration::ZERO);
        assert_eq!(retry_wait(Duration::MAX, 1), MAX_LOCAL_RETRY);
    }

    const SEED: [u8; 32] = [7; 32];

    #[test]
    fn text_masks_split_the_words_into_two_non_empty_sides() {
        let text = b"the quick brown fox jumps over the lazy dog";
        let v = Variants::of(text, &SEED, 4);
        assert_eq!(v.inputs.len(), 9);
        assert_eq!(v.inputs[0], text);
        for (k, &(part, rest)) in v.sizes.iter().enumerate() {
            assert!(part >= 1.0 && rest >= 1.0);
            assert_eq!(part + rest, 9.0);
            let words = |i: usize| {
                std::str::from_utf8(&v.inputs[i])
                    .unwrap()
                    .split(' ')
                    .count() as f64
            };
            assert_eq!((words(1 + 2 * k), words(2 + 2 * k)), (part, rest));
        }
        // Another seed, other masks; the same seed, the same ones.
        assert_ne!(Variants::of(text, &[8; 32], 4).inputs, v.inputs);
        assert_eq!(Variants::of(text, &SEED, 4).inputs, v.inputs);
        // Two words still split; one cannot.
        for (text, count) in [(&b"two words"[..], 9), (b"single", 1), (b" ", 1), (b"", 1)] {
            assert_eq!(Variants::of(text, &SEED, 4).inputs.len(), count);
            assert_eq!(Variants::count(text, 4), count);
        }
        assert_eq!(Variants::count(b"two words", 0), 1);
    }

    #[test]
    fn byte_masks_split_the_data_into_a_range_and_the_rest() {
        let data: Vec<u8> = (0..=255).chain(0..44).map(|b| b as u8 ^ 0x80).collect();
        assert!(std::str::from_utf8(&data).is_err());
        let v = Variants::of(&data, &SEED, 3);
        assert_eq!((v.inputs.len(), Variants::count(&data, 3)), (7, 7));
        assert_eq!(Variants::count(&[0xff], 3), 1);
        for k in 0..3 {
            let (part, rest) = (&v.inputs[1 + 2 * k], &v.inputs[2 + 2 * k]);
            assert_eq!(part.len() + rest.len(), data.len());
            assert_eq!(part.len(), 100);
        }
    }

    /// Vectors for `v`'s inputs from `embed` (of the input's text).
    fn vectors(v: &Variants, embed: impl Fn(&str) -> Vec<f32>) -> Vec<Vec<f32>> {
        v.inputs
            .iter()
            .map(|i| embed(std::str::from_utf8(i).unwrap()))
            .collect()
    }

    /// A bag of words: each word a fixed direction, the text their mean.
    fn bag_of_words(text: &str) -> Vec<f32> {
        let mut sum = [0f32; 16];
        let words: Vec<&str> = text.split_whitespace().collect();
        for w in &words {
            sum[blake3::hash(w.as_bytes()).as_bytes()[0] as usize % 16] += 1.0;
        }
        sum.iter().map(|x| x / words.len() as f32).collect()
    }

    #[test]
    fn a_compositional_encoder_has_no_loss_and_an_arbitrary_one_a_large_one() {
        let v = Variants::of(b"a b c d e f g h i j k l", &SEED, 4);
        assert!(v.loss(&vectors(&v, bag_of_words)) < 1e-6);
        // Unrelated directions for every input: a random encoder.
        let random = |text: &str| -> Vec<f32> {
            let h = blake3::hash(text.as_bytes());
            h.as_bytes()[..16]
                .iter()
                .map(|&b| f32::from(b) - 127.5)
                .collect()
        };
        assert!(v.loss(&vectors(&v, random)) > 0.3);
        // A constant encoder composes perfectly: the outlier test, not the
        // loss, catches it.
        assert!(v.loss(&vectors(&v, |_| vec![1.0; 16])) < 1e-6);
        // Zero vectors are no evidence: masks where the whole or the
        // prediction is zero are left out, and with none left the loss is 0.
        assert_eq!(v.loss(&vectors(&v, |_| vec![0.0; 16])), 0.0);
        let zero_for_a = |text: &str| match text.contains('a') {
            true => vec![0.0; 16],
            false => random(text),
        };
        // The whole holds `a`: every mask is left out.
        assert_eq!(v.loss(&vectors(&v, zero_for_a)), 0.0);
        let parts_zero = |text: &str| match text.split_whitespace().count() < 12 {
            true => vec![0.0; 16],
            false => vec![1.0; 16],
        };
        assert_eq!(v.loss(&vectors(&v, parts_zero)), 0.0);
    }

    #[test]
    fn the_cosine_sums_every_term_in_its_lane_then_the_lanes_in_order() {
        for n in 1..=20 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() + 0.1).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.91).cos() - 0.2).collect();
            // Term `i` into lane `i % LANES`, the lanes added in order.
            let lanes = |term: &dyn Fn(usize) -> f64| {
                let mut sums = [0.0f64; LANES];
                for i in 0..n {
                    sums[i % LANES] += term(i);
                }
                sums.iter().fold(0.0, |total, sum| total + sum)
            };
            let x = |i: usize| f64::from(a[i]);
            let dot = lanes(&|i| x(i) * b[i]);
            let expected = dot / (lanes(&|i| x(i) * x(i)).sqrt() * lanes(&|i| b[i] * b[i]).sqrt());
            assert_eq!(cosine(&a, &b), Some(expected), "{n} terms");
            // And a cosine, as a plain sum gives it.
            let plain: f64 = (0..n).map(|i| x(i) * b[i]).sum::<f64>()
                / ((0..n).map(|i| x(i) * x(i)).sum::<f64>().sqrt()
                    * (0..n).map(|i| b[i] * b[i]).sum::<f64>().sqrt());
            assert!((expected - plain).abs() < 1e-12, "{n} terms");
        }
        assert_eq!(cosine(&[0.0; 9], &[1.0; 9]), None);
    }

    #[test]
    fn fixed_point_rounds_to_the_grid_and_saturates() {
        assert_eq!(fixed(1.0), ONE as i32);
        assert_eq!(fixed(-0.5), -(ONE as i32) / 2);
        assert_eq!(fixed(1.0 / 131_072.0 + 1e-9), 1);
        assert_eq!(fixed(1e30), i32::MAX);
        assert_eq!(fixed(-1e30), i32::MIN);
        assert_eq!(fixed(f32::NAN), 0);
        // The same as `round` at every tie of the grid near zero, either
        // side of it, and over a stride through every bit pattern.
        let rounded = |x: f32| (f64::from(x) * ONE as f64).round() as i32;
        let ties = (-4096i32..4096).map(|k| (k as f32 + 0.5) / ONE as f32);
        let around = ties.flat_map(|t| [t.next_down(), t, t.next_up()]);
        let stride = (0..=u32::MAX).step_by(65_537).map(f32::from_bits);
        for x in around.chain(stride) {
            assert_eq!(fixed(x), rounded(x), "{x:e}");
        }
        assert_eq!(fixed_loss(-1.0), 0);
        assert_eq!(fixed_loss(2.0), 2 * ONE as u32);
        assert_eq!(fixed_loss(1e30), u32::MAX);
        assert_eq!(fixed_loss(f64::NAN), 0);
        // The same as `round` at ties of the grid, either side of them,
        // and over a stride of losses.
        let rounded =
            |loss: f64| (loss * ONE as f64).round().clamp(0.0, f64::from(u32::MAX)) as u32;
        let ties = (0..4096).map(|k| (f64::from(k) + 0.5) / ONE as f64);
        let around = ties.flat_map(|t| [t.next_down(), t, t.next_up()]);
        let stride = (0..100_000).map(|i| f64::from(i) * 0.000_713_17);
        for loss in around.chain(stride) {
            assert_eq!(fixed_loss(loss), rounded(loss), "{loss:e}");
        }
    }
}
