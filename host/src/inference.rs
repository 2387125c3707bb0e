//! ONNX Runtime sessions over the models of an encoder's own signed
//! package: what the `soma:encoder/inference` import runs (its linker glue,
//! which reads and charges for what the guest hands over, is the host's
//! `imports` module).
//!
//! Every model was admitted first ([`crate::model`]) and runs in the
//! inference worker ([`crate::worker`]). A `run` is checked against fixed
//! limits and the model's declared inputs, planned by static shape
//! inference, and charged fuel for the planned work and the bytes that cross
//! before anything runs. The worker's outputs must have the planned shapes;
//! floats come back rounded to a grid of 2⁻¹⁶ with one zero and one NaN.
//! The grid hides last-bit kernel noise on one machine; across CPUs outputs
//! still differ slightly, which validators settle through attestations
//! (DESIGN.md, "Execution"). The runtime's own error text never reaches the
//! guest: it names paths and states of this host.

use crate::bindings::soma::encoder::inference::{
    Error as WitError, NamedTensor, Tensor, TensorType,
};
use crate::digest::Digest;
use crate::error::LocalFailure;
use crate::model::{self, AdmissionError, ElemType, Graph, ShapeError, TensorInfo};
use crate::worker::{Blamed, Idle, RunOf, RunOutcome, Skipped, Worker, WorkerError};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Most sessions one call may hold open at once.
pub const MAX_OPEN_SESSIONS: u32 = 16;
/// Most tensors in one `run`'s inputs.
pub const MAX_TENSORS: usize = 16;
/// Highest tensor rank.
pub const MAX_RANK: usize = 8;
/// Most elements in one input tensor.
pub const MAX_ELEMENTS: u64 = 1 << 24;
/// Most bytes of input data in one `run`.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;
/// Longest input name.
pub const MAX_NAME_BYTES: usize = 256;
/// Fuel charged for every `run`, whatever its size.
pub const RUN_BASE_FUEL: u64 = 100_000;
/// Least wall-clock time left in a call for a run to start.
pub(crate) const MIN_RUN_TIME: Duration = Duration::from_millis(10);

/// Fuel charged per node of the model for planning a run.
pub const PLAN_FUEL_PER_NODE: u64 = 256;
/// Fuel charged for every `session.open`.
pub const SESSION_OPEN_FUEL: u64 = 1_000;
/// Outputs are rounded to multiples of 2⁻¹⁶.
pub const OUTPUT_GRID: f32 = 65_536.0;

/// A model admitted and compiled into a session in the inference worker.
pub(crate) struct Model {
    digest: Digest,
    /// What the host knows of the graph: shapes and work for any inputs.
    pub(crate) graph: Graph,
    /// The admitted graph's bytes: the only copy, which every load into a
    /// worker (first, spill-over, or again after a restart or a dropped
    /// session) is given.
    canonical: Arc<Vec<u8>>,
    /// The workers that compiled it, in order of preference (see
    /// [`run_somewhere`]; a worker may since have dropped the session, and
    /// compiles it again when it next runs it).
    workers: Vec<Arc<Worker>>,
    /// The other workers, so that a busy model uses every core, not just
    /// its replicas'.
    spill: Arc<Spill>,
    /// Where its cache's workers name models that failed them outside a
    /// run.
    blamed: Arc<Blamed>,
    /// Plans of input shapes it ran on.
    plans: Plans,
}

/// The types and dimensions of a run's inputs, in graph input order.
pub(crate) type Shapes = Vec<(ElemType, Vec<u64>)>;

/// What a run needs of its plan: the fuel it is charged and the outputs it
/// must give.
pub(crate) struct Planned {
    pub(crate) fuel: u64,
    pub(crate) outputs: Vec<TensorInfo>,
}

/// Most input shapes a model keeps plans for. An encoder runs its model on
/// few shapes (its batches' lengths, a job's masked variants), and planning
/// a batch-1 MiniLM run costs a few per cent of running it.
const KEPT_PLANS: usize = 256;

/// The plans of input shapes a model ran on, so that a run on the same
/// shapes again does not plan again. A plan is a function of the graph and
/// the shapes alone, so a kept one charges the same fuel. Only plans that
/// succeeded are kept: a refusal's text can be large (it names the model's
/// node), and a hostile model could otherwise have the host hold many.
#[derive(Default)]
struct Plans(Mutex<BTreeMap<Shapes, Arc<Planned>>>);

impl Plans {
    /// The plan of a run of `graph` on inputs of `shapes`, kept or made
    /// now; `None` if shape inference panicked. When [`KEPT_PLANS`] are
    /// kept, a new one replaces one of them (the smallest shapes).
    fn get_or_plan(
        &self,
        graph: &Graph,
        shapes: Shapes,
    ) -> Option<Result<Arc<Planned>, ShapeError>> {
        let plans = || self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = plans().get(&shapes) {
            return Some(Ok(kept.clone()));
        }
        // Planning is the host's own code on hostile graphs and shapes.
        let plan = match catch_unwind(AssertUnwindSafe(|| graph.plan(&shapes))).ok()? {
            Ok(plan) => plan,
            Err(e) => return Some(Err(e)),
        };
        let planned = Arc::new(Planned {
            fuel: plan.fuel(),
            outputs: plan.outputs,
        });
        let mut plans = plans();
        if plans.len() >= KEPT_PLANS && !plans.contains_key(&shapes) {
            plans.pop_first();
        }
        plans.insert(shapes, planned.clone());
        Some(Ok(planned))
    }

    /// How many plans are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The workers a model may spill over to, and whether it may now.
struct Spill {
    /// In order of preference; the first `warmed` were loaded with the
    /// model (and compile it again when they run it after dropping it).
    workers: Vec<Arc<Worker>>,
    /// How many of `workers` the model was loaded into.
    warmed: AtomicUsize,
    /// Whether a load into the next of `workers` is under way.
    warming: AtomicBool,
    /// Runs the model must complete before it may spill over again: set
    /// when a run of it ended in a failure of its worker (a crash, a
    /// timeout, a broken or misshapen reply), a spill worker could not
    /// load it, or a worker it ran in last died of itself or failed
    /// dropping its session, so that a model that fails workers takes down
    /// no more than its replicas and the spill workers that hold its
    /// session already.
    contained: AtomicU32,
}

/// Clean runs a model that failed a worker completes in its replicas
/// before it may spill over again.
const CONTAINED_RUNS: u32 = 1_000;

/// Largest model (admitted bytes) that spills over: every worker that
/// holds a session pays for it in memory, from its capped address space.
const MAX_SPILL_BYTES: usize = 128 << 20;

impl Model {
    /// The plan of a run on inputs of `shapes` (see [`Plans`]); `None` if
    /// shape inference panicked.
    pub(crate) fn plan(&self, shapes: Shapes) -> Option<Result<Arc<Planned>, ShapeError>> {
        self.plans.get_or_plan(&self.graph, shapes)
    }

    /// Keeps the model to its replicas for [`CONTAINED_RUNS`] runs.
    fn contain(&self, why: &str) {
        let before = self.spill.contained.swap(CONTAINED_RUNS, Ordering::Relaxed);
        if before == 0 && !self.spill.workers.is_empty() {
            tracing::warn!(model = %self.digest, "{why}: the model runs only in its own workers for its next {CONTAINED_RUNS} runs");
        }
    }

    /// Whether its runs may go to other workers than its replicas: not
    /// while it is contained, nor once a worker named it for failing it
    /// outside a run, which contains it.
    fn may_spill(&self) -> bool {
        if self.blamed.take(&self.digest) {
            self.contain(
                "it failed a worker outside a run (dropping its session, or after answering)",
            );
        }
        self.spill.contained.load(Ordering::Relaxed) == 0
    }

    /// Counts a clean run towards the end of a containment.
    fn ran_cleanly(&self) {
        let _ = self
            .spill
            .contained
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Loads the model into the next spill worker on a thread of its own,
    /// unless one is loading it already: a call never waits for a spill
    /// worker's first compilation, and a model that cannot be loaded there
    /// is contained.
    fn warm_next(self: &Arc<Self>) {
        let spill = &self.spill;
        if spill.warmed.load(Ordering::Acquire) >= spill.workers.len()
            || spill.warming.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let model = self.clone();
        let started = std::thread::Builder::new()
            .name("soma-model-warm".into())
            .spawn(move || {
                let spill = &model.spill;
                let next = spill.warmed.load(Ordering::Acquire);
                match spill.workers[next].load(model.digest, &model.canonical) {
                    Ok(Ok(())) => {
                        spill.warmed.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(Err(text)) => {
                        tracing::debug!(model = %model.digest, "a spill worker refused the model: {text}");
                        model.contain("a spill worker refused the model");
                    }
                    Err(e) => model.contain(&format!("a spill worker failed loading it: {e}")),
                }
                spill.warming.store(false, Ordering::Release);
            });
        if started.is_err() {
            spill.warming.store(false, Ordering::Release);
        }
    }
}

/// Admitted models by digest, shared by every encoder of an engine, and the
/// workers that run them.
pub(crate) struct ModelCache {
    /// One cell per digest: compiling one model never holds up loads of
    /// another, and concurrent loads of one model compile it once.
    models: Mutex<BTreeMap<Digest, Arc<ModelCell>>>,
    /// One worker per core by default (each started on first use). A model
    /// is compiled in [`REPLICAS`] of them when first used, and loaded into
    /// the others, one at a time in the background, while its runs find
    /// those busy: concurrent runs of one model (a job's variants, several
    /// jobs) go in parallel, and so do runs of different models (a shard's
    /// encoders).
    workers: Vec<Arc<Worker>>,
    placement_key: [u8; 32],
    /// Shared with its workers and models (see [`Model::may_spill`]).
    blamed: Arc<Blamed>,
    /// Most admitted model bytes each worker holds sessions for.
    session_bytes: u64,
    /// How long a refusal is remembered ([`REFUSALS_KEPT`]).
    refusals_kept: Duration,
}

/// A model compiled once, or why it cannot be.
#[derive(Default)]
struct ModelCell {
    /// Held weakly: a model that no loaded encoder uses any more is freed
    /// (its sessions go as workers need the room), and compiled again if
    /// an encoder needs it again.
    compiled: OnceLock<Result<Weak<Model>, ModelError>>,
    /// When it was decided: a refusal is kept for [`REFUSALS_KEPT`].
    decided: OnceLock<Instant>,
}

impl ModelCell {
    /// Whether the cache still needs it: a model some loaded encoder
    /// uses, a refusal younger than `kept`, or one being decided.
    fn live(&self, kept: Duration) -> bool {
        match self.compiled.get() {
            Some(Ok(model)) => model.strong_count() > 0,
            Some(Err(_)) => self.decided.get().is_none_or(|at| at.elapsed() < kept),
            None => true,
        }
    }
}

/// How long a refused model's refusal is kept, so that packages that use
/// it fail at once: admitting the model again would cost every load. Then
/// it goes, so that the refusals of models no package uses any more do not
/// pile up.
const REFUSALS_KEPT: Duration = Duration::from_secs(600);

impl Default for ModelCache {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ModelCache::new(cores.min(DEFAULT_MAX_WORKERS), DEFAULT_SESSION_BYTES)
    }
}

/// Admitted model bytes each inference worker holds sessions for by
/// default: two of the largest models admission takes
/// ([`model::MAX_MODEL_BYTES`]). A session costs up to about twice its
/// model's bytes (the weights, and pre-packed copies of some), and a run
/// may hold [`model::MAX_LIVE_BYTES`] of tensors besides: together within
/// the worker's address space ([`crate::worker::MEMORY_BYTES`]), with room
/// for the runtime itself.
pub const DEFAULT_SESSION_BYTES: u64 = 2 << 30;

/// Most inference workers an engine starts by default.
const DEFAULT_MAX_WORKERS: usize = 8;

/// Most inference workers an engine may be given.
pub const MAX_WORKERS: usize = 256;

/// Workers a model is compiled in when first used, so that its first
/// concurrent runs find a second session ready; further ones load it on
/// demand (each holds its own session, so memory grows with use).
const REPLICAS: usize = 2;

impl ModelCache {
    /// A cache whose models run in `workers` worker processes (at least
    /// one, at most [`MAX_WORKERS`]), each holding sessions for at most
    /// `session_bytes` of admitted models at once.
    pub(crate) fn new(workers: usize, session_bytes: u64) -> ModelCache {
        let mut placement_key = [0u8; 32];
        // Without randomness, placement is merely predictable.
        let _ = getrandom::fill(&mut placement_key);
        let blamed = Arc::new(Blamed::default());
        ModelCache {
            placement_key,
            models: Mutex::default(),
            workers: (0..workers.clamp(1, MAX_WORKERS))
                .map(|_| Arc::new(Worker::new(session_bytes, blamed.clone())))
                .collect(),
            blamed,
            session_bytes,
            refusals_kept: REFUSALS_KEPT,
        }
    }

    /// How many worker processes it runs models in.
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Most admitted model bytes each worker holds sessions for.
    pub(crate) fn session_bytes(&self) -> u64 {
        self.session_bytes
    }

    /// The session for `bytes` (whose digest is `digest`), admitting and
    /// compiling it on first use.
    pub(crate) fn get(&self, digest: &Digest, bytes: &[u8]) -> Result<Arc<Model>, ModelError> {
        loop {
            let cell = {
                let mut models = self.lock();
                // Cells of models no encoder uses any more, and old
                // refusals, go.
                models.retain(|_, cell| cell.live(self.refusals_kept));
                self.blamed.retain(|named| models.contains_key(named));
                models.entry(*digest).or_default().clone()
            };
            // The strong reference, for the caller that compiles it.
            let mut compiled = None;
            let result = cell
                .compiled
                .get_or_init(|| {
                    let result = self.compile(digest, bytes).map(|model| {
                        let weak = Arc::downgrade(&model);
                        compiled = Some(model);
                        weak
                    });
                    let _ = cell.decided.set(Instant::now());
                    result
                })
                .clone();
            let result = match result {
                Ok(weak) => match compiled.or_else(|| weak.upgrade()) {
                    Some(model) => Ok(model),
                    // Freed since: compile it again.
                    None => {
                        self.forget(digest, &cell);
                        continue;
                    }
                },
                Err(e) => Err(e),
            };
            if let Err(ModelError::Host(_) | ModelError::Runtime) = &result {
                // This host's trouble is not the model's: try again next
                // time. (A model too large for the session memory is kept
                // refused for [`REFUSALS_KEPT`]: it stays too large, and
                // admitting it again would cost every load.)
                self.forget(digest, &cell);
            }
            return result;
        }
    }

    /// Removes `cell` as the cell of `digest`, unless another replaced it.
    fn forget(&self, digest: &Digest, cell: &Arc<ModelCell>) {
        let mut models = self.lock();
        if models.get(digest).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            models.remove(digest);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Digest, Arc<ModelCell>>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many models it keeps: those some loaded encoder uses, and those
    /// refused in the last [`REFUSALS_KEPT`].
    pub(crate) fn cached(&self) -> usize {
        self.lock()
            .values()
            .filter(|cell| cell.compiled.get().is_some() && cell.live(self.refusals_kept))
            .count()
    }

    /// Every worker in the order the model of `digest` prefers them: from
    /// one chosen by a hash keyed with a secret of this process, so that no
    /// package author can choose to share workers with another's model.
    /// Under load models share workers: what keeps them apart is the
    /// worker's confinement, not placement.
    fn workers_of(&self, digest: &Digest) -> Vec<Arc<Worker>> {
        let hash = blake3::keyed_hash(&self.placement_key, &digest.0);
        let n = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        let count = self.workers.len();
        let first = (n % count as u64) as usize;
        (0..count)
            .map(|i| self.workers[(first + i) % count].clone())
            .collect()
    }

    /// How many worker processes are running.
    pub(crate) fn running_workers(&self) -> usize {
        self.workers.iter().filter(|w| w.is_running()).count()
    }

    /// How many sessions the workers hold together (waiting for busy ones).
    pub(crate) fn sessions(&self) -> usize {
        self.workers.iter().map(|w| w.sessions()).sum()
    }

    /// How many models the workers compiled so far, together.
    pub(crate) fn loads(&self) -> u64 {
        self.workers.iter().map(|w| w.loads()).sum()
    }

    fn compile(&self, digest: &Digest, bytes: &[u8]) -> Result<Arc<Model>, ModelError> {
        // Admission is the host's own code on hostile bytes: should it ever
        // panic, the model is refused and the host keeps serving.
        let admitted = catch_unwind(|| model::admit(bytes))
            .unwrap_or_else(|_| Err(AdmissionError::Malformed("admission failed".into())))
            .map_err(ModelError::Refused)?;
        if admitted.canonical.len() as u64 > self.session_bytes {
            return Err(ModelError::TooLarge {
                bytes: admitted.canonical.len() as u64,
                session_bytes: self.session_bytes,
            });
        }
        let graph = admitted.graph;
        let canonical = Arc::new(admitted.canonical);
        let mut order = self.workers_of(digest);
        let mut spill = order.split_off(REPLICAS.min(order.len()));
        if canonical.len() > MAX_SPILL_BYTES {
            spill.clear();
        }
        let mut replicas = order.into_iter();
        let first = replicas.next().expect("at least one worker");
        match first.load(*digest, &canonical) {
            Ok(Ok(())) => {
                // Every replica compiles the model now, under the load's
                // budget, not in the middle of some call's run; one that
                // cannot is left out.
                let mut workers = vec![first];
                for worker in replicas {
                    match worker.load(*digest, &canonical) {
                        Ok(Ok(())) => workers.push(worker),
                        Ok(Err(text)) => {
                            tracing::debug!(model = %digest, "a replica refused the model: {text}")
                        }
                        Err(e) => tracing::debug!(model = %digest, "a replica failed: {e}"),
                    }
                }
                Ok(Arc::new(Model {
                    digest: *digest,
                    graph,
                    canonical,
                    workers,
                    spill: Arc::new(Spill {
                        workers: spill,
                        warmed: AtomicUsize::new(0),
                        warming: AtomicBool::new(false),
                        contained: AtomicU32::new(0),
                    }),
                    blamed: self.blamed.clone(),
                    plans: Plans::default(),
                }))
            }
            Ok(Err(text)) => {
                tracing::debug!(model = %digest, "ONNX Runtime refused an admitted model: {text}");
                Err(ModelError::Runtime)
            }
            Err(e) => Err(ModelError::Host(e.to_string())),
        }
    }
}

/// Why a model could not be made into a session.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ModelError {
    /// The worker could not be started or died: a fault of this host.
    #[error("{0}")]
    Host(String),
    /// Admission refused the model.
    #[error(transparent)]
    Refused(AdmissionError),
    /// The admitted model is larger than the session memory of this
    /// host's workers: a limit of this host, not of the protocol.
    #[error(
        "the model's {bytes} admitted bytes exceed the {session_bytes} bytes of sessions an inference worker of this host may hold"
    )]
    TooLarge { bytes: u64, session_bytes: u64 },
    /// ONNX Runtime refused a model admission accepted. Whether it would
    /// on another host (or with more memory) is unknown, so this counts as
    /// a failure of this host; its text is logged at debug level (it names
    /// paths of this host).
    #[error("ONNX Runtime refused a model that admission accepted")]
    Runtime,
}

/// The models an encoder may open: those of its package, by digest.
pub(crate) type PackageModels = Arc<BTreeMap<Digest, PackageModel>>;

/// A model as one package uses it: what a session of the package's
/// encoder holds.
#[derive(Clone)]
pub(crate) struct PackageModel {
    pub(crate) model: Arc<Model>,
    /// The package's, shared by all its models.
    failures: Arc<PackageFailures>,
}

impl PackageModel {
    /// `model` as used by the package whose failures are `failures`.
    pub(crate) fn new(model: Arc<Model>, failures: &Arc<PackageFailures>) -> PackageModel {
        PackageModel {
            model,
            failures: failures.clone(),
        }
    }
}

/// The runs of a package's models that failed their worker (a crash or a
/// timeout in the run or in compiling it for the run, outputs unlike the
/// plan, or a crash found after the run answered), paced: over time they
/// take about a tenth of one worker, and past a few at once the package's
/// runs are held off, failing at once as this host's failures. Counted by
/// package, not by model, since anyone may ship a copy of another's model
/// and must not be able to hold off its runs; and each registered package
/// is bonded, so many packages cost their author.
///
/// Not charged to anyone (the model is only contained): a worker that
/// fails dropping a session to make room, since it may be failing from an
/// earlier run's damage, which would charge whoever's session was oldest
/// (and a package whose models push each other out pays for compiling
/// them first); and loads outside runs, when a package is loaded (a model
/// that fails its first worker fails the package's load, which the job
/// runner retries only after a growing wait). What cannot be told apart:
/// a run that damages the worker's heap and still answers, where the
/// crash comes in the next request, which is charged for it; this takes
/// an exploitable fault in ONNX Runtime, and containment keeps such a
/// model to its own [`REPLICAS`] workers.
pub(crate) struct PackageFailures {
    /// Named in the log when its runs are held off.
    package: Digest,
    /// When its failures will be paid off (a generic cell rate algorithm's
    /// theoretical arrival time): each moves it [`FAILURE_WEIGHT`] times
    /// the failure's cost past now, or past itself if that is later.
    paid_off: Mutex<Instant>,
}

/// How many times its cost a failure sets back its package.
const FAILURE_WEIGHT: u32 = 10;

/// What a failure costs besides the time the request had in the worker:
/// starting the worker again and compiling the sessions it held.
const RESTART_COST: Duration = Duration::from_secs(1);

/// How far behind a package may be and still run: two quick crashes (of
/// under a quarter second each, costing about [`RESTART_COST`] ×
/// [`FAILURE_WEIGHT`]), so that a crash on an unlucky input holds nothing
/// off; the third holds the package off.
const FAILURE_ALLOWANCE: Duration = Duration::from_secs(25);

/// Furthest behind a package gets: a run that timed out on a long budget
/// holds its package off for at most this, less [`FAILURE_ALLOWANCE`].
const MAX_BEHIND: Duration = Duration::from_secs(600);

impl PackageFailures {
    /// No failures yet of the package of digest `package`.
    pub(crate) fn new(package: Digest) -> PackageFailures {
        PackageFailures {
            package,
            paid_off: Mutex::new(Instant::now()),
        }
    }

    /// How much longer its runs are held off at `now`, if they are.
    fn held_off(&self, now: Instant) -> Option<Duration> {
        let behind = self.lock().saturating_duration_since(now);
        behind
            .checked_sub(FAILURE_ALLOWANCE)
            .filter(|wait| !wait.is_zero())
    }

    /// Counts a failure of a run of `model` whose request had `ran` in its
    /// worker.
    pub(crate) fn failed(&self, model: &Digest, ran: Duration) {
        let now = Instant::now();
        let was_held = self.held_off(now).is_some();
        let cost = ran
            .saturating_add(RESTART_COST)
            .saturating_mul(FAILURE_WEIGHT);
        {
            let mut paid_off = self.lock();
            let from = (*paid_off).max(now);
            *paid_off = (from + cost.min(MAX_BEHIND)).min(now + MAX_BEHIND);
        }
        if let (false, Some(wait)) = (was_held, self.held_off(now)) {
            tracing::warn!(
                %model,
                package = %self.package,
                "the package's runs failed inference workers too often: held off for {}s",
                wait.as_secs_f64().ceil()
            );
        }
    }

    /// How far behind it is now.
    #[cfg(test)]
    pub(crate) fn behind(&self) -> Duration {
        self.lock().saturating_duration_since(Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.paid_off.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A run's inputs, copied out of guest memory in graph input order.
pub(crate) struct Inputs(pub(crate) Vec<(String, Tensor)>);

impl Inputs {
    pub(crate) fn shapes(&self) -> Shapes {
        self.0
            .iter()
            .map(|(_, t)| {
                let dims = t.dimensions.iter().map(|&d| u64::from(d)).collect();
                (elem_type(t.ty), dims)
            })
            .collect()
    }
}

pub(crate) fn elem_type(ty: TensorType) -> ElemType {
    match ty {
        TensorType::Fp32 => ElemType::F32,
        TensorType::I64 => ElemType::I64,
        TensorType::I32 => ElemType::I32,
        TensorType::U8 => ElemType::U8,
    }
}

/// What a call that ONNX Runtime failed ends with: always the same words,
/// since the runtime's own text names paths and states of this host.
const RUN_FAILED: &str = "ONNX Runtime failed a run that admission and planning accepted";

/// Runs a planned model in the worker, unless the package's runs are held
/// off ([`PackageFailures`]). The outer error is a failure of this host,
/// which ends the encoder's call; the inner one an answer for the guest.
pub(crate) fn run(
    used: &PackageModel,
    inputs: Inputs,
    plan: &Planned,
    timeout: Duration,
) -> Result<Result<Vec<NamedTensor>, WitError>, LocalFailure> {
    let model = &used.model;
    if let Some(wait) = used.failures.held_off(Instant::now()) {
        return Err(LocalFailure(format!(
            "this package's runs failed inference workers too often and are held off for another {}s",
            wait.as_secs_f64().ceil()
        )));
    }
    let names: Vec<&str> = model
        .graph
        .outputs
        .iter()
        .map(|&id| model.graph.names[id].as_str())
        .collect();
    // The reply holds the planned outputs and their framing, nothing more.
    let framing: u64 = names.iter().map(|n| n.len() as u64 + 64).sum();
    let max_reply = plan.outputs.iter().map(TensorInfo::bytes).sum::<u64>() + framing + 16;
    let inputs = inputs
        .0
        .into_iter()
        .map(|(name, tensor)| NamedTensor { name, tensor })
        .collect();
    let (worker, outcome) = run_somewhere(used, inputs, max_reply, timeout);
    let outputs = match outcome {
        Ok(Ok(outputs)) => outputs,
        Ok(Err(text)) => {
            // Admission and planning accepted the run; a refusal now may be
            // this host's (memory), so it is not held against the encoder.
            tracing::debug!(model = %model.digest, "ONNX Runtime failed a run: {text}");
            return Err(LocalFailure(RUN_FAILED.into()));
        }
        Err(e) => {
            // The worker charged it to the package (see `Worker::run`).
            if matches!(e, WorkerError::Died(_) | WorkerError::Timeout(_)) {
                model.contain("a run of it failed its worker");
            }
            return Err(LocalFailure(e.to_string()));
        }
    };
    let fits = outputs.len() == plan.outputs.len()
        && outputs
            .iter()
            .zip(&plan.outputs)
            .zip(&names)
            .all(|((out, planned), name)| {
                let dims: Vec<u64> = out
                    .tensor
                    .dimensions
                    .iter()
                    .map(|&d| u64::from(d))
                    .collect();
                out.name == *name
                    && dims == planned.dims
                    && elem_type(out.tensor.ty) == planned.ty
                    && out.tensor.data.len() as u64 == planned.bytes()
            });
    if !fits {
        // Shape inference or the worker is wrong: neither is the encoder's
        // doing, and a worker that answers wrongly is not trusted again.
        tracing::warn!(model = %model.digest, "a run's outputs differ from the host's shape inference");
        worker.restart();
        model.contain("its outputs differed from shape inference");
        used.failures.failed(&model.digest, Duration::ZERO);
        return Err(LocalFailure(
            "the inference worker's outputs differ from the host's shape inference".into(),
        ));
    }
    model.ran_cleanly();
    Ok(Ok(outputs.into_iter().map(canonical_tensor).collect()))
}

/// Runs `model` in its first idle worker that holds its session (its own,
/// then, unless it is contained, another that loaded it), else, if none of
/// those is busy, in the first of them (which compiles it again), else
/// waits for its first one; returns the worker it ran in, and how the run
/// ended. Finding one busy, it has the next worker load it.
fn run_somewhere(
    used: &PackageModel,
    mut inputs: Vec<NamedTensor>,
    max_reply: u64,
    timeout: Duration,
) -> (&Worker, RunOutcome) {
    let model = &used.model;
    let of = RunOf {
        digest: model.digest,
        model: &model.canonical,
        package: &used.failures,
    };
    let spilling = model.may_spill();
    let warmed = match spilling {
        true => model.spill.warmed.load(Ordering::Acquire),
        false => 0,
    };
    let candidates = || model.workers.iter().chain(&model.spill.workers[..warmed]);
    let mut busy = false;
    for worker in candidates() {
        match worker.run_if_idle(of, inputs, max_reply, timeout, Idle::Holding) {
            Ok(outcome) => return (worker, outcome),
            Err((back, skipped)) => {
                inputs = back;
                busy |= skipped == Skipped::Busy;
            }
        }
    }
    // Compiled again in an idle worker only when none of these is busy:
    // a busy one may hold the session and be free in a moment, and
    // compiling while it might would have models keep evicting one another
    // from idle workers. (Which busy worker holds what is not known without
    // waiting for it, so a busy one that does not hold it holds this back
    // too, and the run waits for the first worker.)
    if !busy {
        for worker in candidates() {
            match worker.run_if_idle(of, inputs, max_reply, timeout, Idle::Any) {
                Ok(outcome) => return (worker, outcome),
                Err((back, _)) => inputs = back,
            }
        }
    }
    if spilling {
        model.warm_next();
    }
    let first = &model.workers[0];
    let outcome = first.run(of, inputs, max_reply, timeout);
    (first, outcome)
}

/// `t` with every float rounded by [`canonical`].
fn canonical_tensor(mut t: NamedTensor) -> NamedTensor {
    if t.tensor.ty == TensorType::Fp32 {
        for chunk in t.tensor.data.chunks_exact_mut(4) {
            let x = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
            chunk.copy_from_slice(&canonical(x).to_le_bytes());
        }
    }
    t
}

/// Rounds to the nearest multiple of 2⁻¹⁶ (exact IEEE operations: the same
/// bits on every host), with one zero and one NaN: their signs and payloads
/// are whatever the kernel's instructions left.
fn canonical(x: f32) -> f32 {
    if x.is_nan() {
        return f32::NAN;
    }
    if x.abs() >= 256.0 {
        // Already on the grid (a float this large has no bits below 2⁻¹⁵),
        // and scaling it could overflow.
        return x;
    }
    // `f32::round` (half away from zero) by integer truncation, which
    // compiles to vector instructions on every x86-64 where `round` is a
    // call per value. Every step is exact: scaling by a power of two,
    // `|scaled| < 2²⁴` converted to and from an integer, and the fraction.
    let scaled = x * OUTPUT_GRID;
    let whole = scaled as i32;
    let fraction = scaled - whole as f32;
    let nearest = whole + i32::from(fraction >= 0.5) - i32::from(fraction <= -0.5);
    // An integer zero converts to +0: one zero.
    nearest as f32 / OUTPUT_GRID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_kept_for_a_while_then_go() {
        let mut cache = ModelCache::new(1, 1 << 20);
        let refuse = |cache: &ModelCache, junk: u8| {
            let bytes = [junk; 16];
            let result = cache.get(&Digest::of(&bytes), &bytes);
            assert!(
                matches!(result, Err(ModelError::Refused(_))),
                "{:?}",
                result.err()
            );
        };
        refuse(&cache, 1);
        refuse(&cache, 2);
        refuse(&cache, 1);
        assert_eq!(cache.cached(), 2);
        assert_eq!(cache.lock().len(), 2);
        // Once old enough they go, at the next look-up (which keeps its
        // own refusal until the one after).
        cache.refusals_kept = Duration::ZERO;
        assert_eq!(cache.cached(), 0);
        refuse(&cache, 3);
        assert_eq!(cache.lock().len(), 1);
        // A refusal went, not the model: it is refused again.
        refuse(&cache, 1);
        assert_eq!(cache.lock().len(), 1);
    }

    #[test]
    fn outputs_are_rounded_to_a_fixed_grid_with_one_zero_and_one_nan() {
        assert_eq!(canonical(0.5), 0.5);
        assert_eq!(canonical(1.0 + 1e-7), 1.0);
        assert_eq!(canonical(-3.0 / 65_536.0 + 1e-9), -3.0 / 65_536.0);
        assert_eq!(canonical(-1e-9).to_bits(), 0.0f32.to_bits());
        assert_eq!(canonical(-0.0).to_bits(), 0.0f32.to_bits());
        let odd_nan = f32::from_bits(0xffc0_0001);
        assert_eq!(canonical(odd_nan).to_bits(), f32::NAN.to_bits());
        assert_eq!(canonical(f32::INFINITY), f32::INFINITY);
        assert_eq!(canonical(f32::MAX), f32::MAX);
        assert_eq!(canonical(-1e34), -1e34);
    }

    #[test]
    fn a_model_whose_session_fails_its_worker_when_dropped_is_contained() {
        let (a, b) = (
            model::testing::identity("a", Some(2)),
            model::testing::identity("b", Some(2)),
        );
        let room = [&a, &b]
            .map(|m| model::admit(m).expect("admitted").canonical.len())
            .into_iter()
            .max()
            .unwrap();
        // One worker, with room for one of the two sessions. (The worker
        // executable is built with the workspace's integration tests, by
        // `cargo xtask test`.)
        let cache = ModelCache::new(1, room as u64);
        let first = cache.get(&Digest::of(&a), &a).expect("a loads");
        assert!(first.may_spill());
        // Loading `b` drops `a`'s session, and the worker hangs doing it.
        cache.workers[0].set_unload_timeout(Duration::from_millis(200));
        cache.workers[0].freezes();
        let second = cache.get(&Digest::of(&b), &b).expect("b loads");
        assert!(second.may_spill());
        assert!(!first.may_spill());
        assert_eq!(
            first.spill.contained.load(Ordering::Relaxed),
            CONTAINED_RUNS
        );
        // Named once: it is free again once it has served its containment.
        first.spill.contained.store(0, Ordering::Relaxed);
        assert!(first.may_spill());
    }

    #[test]
    fn a_package_whose_runs_fail_their_worker_is_held_off_alone() {
        let (a, b) = (
            model::testing::identity("paced a", Some(2)),
            model::testing::identity("paced b", Some(2)),
        );
        // One worker. (Its executable is built with the workspace's
        // integration tests, by `cargo xtask test`.)
        let cache = ModelCache::new(1, 1 << 20);
        let [a, b] = [a, b].map(|m| cache.get(&Digest::of(&m), &m).expect("loads"));
        // Ours uses both models; theirs a copy of one of them.
        let ours = Arc::new(PackageFailures::new(Digest::of(b"ours")));
        let theirs = Arc::new(PackageFailures::new(Digest::of(b"theirs")));
        let (our_a, our_b) = (
            PackageModel::new(a.clone(), &ours),
            PackageModel::new(b, &ours),
        );
        let their_a = PackageModel::new(a.clone(), &theirs);
        let plan = a
            .plan(vec![(ElemType::F32, vec![2])])
            .expect("no panic")
            .expect("plans");
        let attempt = |used: &PackageModel, timeout| {
            let x = Tensor {
                dimensions: vec![2],
                ty: TensorType::Fp32,
                data: 0.5f32.to_le_bytes().repeat(2),
            };
            run(used, Inputs(vec![("x".into(), x)]), &plan, timeout)
        };
        let ample = Duration::from_secs(60);
        let ran = |outcome: Result<Result<Vec<NamedTensor>, WitError>, LocalFailure>| {
            let outputs = outcome.expect("no local failure").expect("runs");
            assert_eq!(outputs[0].tensor.data, 0.5f32.to_le_bytes().repeat(2));
        };
        // Runs that time out in a hung worker, of either model, are let
        // through at first (each run before starts the worker the last one
        // had killed)...
        for used in [&our_a, &our_b, &our_a] {
            ran(attempt(used, ample));
            cache.workers[0].freezes();
            let failed = attempt(used, Duration::from_millis(100)).expect_err("times out");
            assert!(failed.0.contains("wall-clock budget"), "{}", failed.0);
        }
        // ...then the package's runs of both fail at once, without a worker.
        for used in [&our_a, &our_b] {
            let held = attempt(used, ample).expect_err("held off");
            assert!(held.0.contains("held off for another"), "{}", held.0);
        }
        assert_eq!(cache.running_workers(), 0);
        // Another package's runs of the same model go on.
        ran(attempt(&their_a, ample));
        // Once it has paid off, the package's runs go on too.
        *ours.lock() = Instant::now();
        ran(attempt(&our_b, ample));
        // A worker that crashes after answering is charged to the package
        // whose run it answered, not to the one whose request finds it gone.
        let theirs_before = *theirs.lock();
        *ours.lock() = Instant::now();
        let before = Instant::now();
        ran(attempt(&our_a, ample));
        cache.workers[0].signalled(libc::SIGABRT);
        ran(attempt(&their_a, ample));
        assert!(ours.lock().duration_since(before) >= RESTART_COST * FAILURE_WEIGHT);
        assert_eq!(*theirs.lock(), theirs_before);
    }

    #[test]
    fn plans_are_kept_for_shapes_that_ran_up_to_a_bound() {
        let graph = model::admit(&model::testing::identity("plans", None))
            .expect("admitted")
            .graph;
        let shapes = |n: u64| vec![(ElemType::F32, vec![n])];
        let plans = Plans::default();
        let plan = |shapes| plans.get_or_plan(&graph, shapes).expect("no panic");
        let first = plan(shapes(3)).expect("plans");
        assert_eq!(first.fuel, graph.plan(&shapes(3)).unwrap().fuel());
        assert_eq!(first.outputs[0].dims, vec![3]);
        assert!(Arc::ptr_eq(&first, &plan(shapes(3)).unwrap()));
        assert_eq!(plans.len(), 1);
        // A refusal is not kept.
        let refused = plan(vec![(ElemType::I64, vec![3])]);
        assert!(matches!(refused, Err(ShapeError::Inputs(_))));
        assert_eq!(plans.len(), 1);
        // At most KEPT_PLANS, each still right.
        for n in 0..2 * KEPT_PLANS as u64 {
            assert_eq!(plan(shapes(n)).unwrap().outputs[0].dims, vec![n]);
        }
        assert_eq!(plans.len(), KEPT_PLANS);
        let again = plan(shapes(3)).unwrap();
        assert_eq!(again.fuel, first.fuel);
        assert_eq!(plans.len(), KEPT_PLANS);
    }

    #[test]
    fn rounding_to_the_grid_is_round_half_away_from_zero() {
        let reference = |x: f32| {
            if x.is_nan() {
                return f32::NAN;
            }
            if x.abs() >= 256.0 {
                return x;
            }
            let rounded = (x * OUTPUT_GRID).round() / OUTPUT_GRID;
            if rounded == 0.0 { 0.0 } else { rounded }
        };
        // Ties, and the floats either side of them, in every binade that
        // rounds; then a stride through all 2³² bit patterns.
        let ties = (-(1i32 << 23)..(1 << 23)).step_by(97).flat_map(|k| {
            let tie = (k as f32 + 0.5) / OUTPUT_GRID;
            [tie, tie.next_down(), tie.next_up()]
        });
        let strided = (0..=u32::MAX).step_by(4099).map(f32::from_bits);
        for x in ties.chain(strided) {
            assert_eq!(canonical(x).to_bits(), reference(x).to_bits(), "{x:e}");
        }
    }
}
