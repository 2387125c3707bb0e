//! The `soma:encoder/inference` import: ONNX Runtime sessions over the
//! models of an encoder's own signed package.
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
    Error as WitError, ErrorCode, NamedTensor, Tensor, TensorType,
};
use crate::digest::Digest;
use crate::error::LocalFailure;
use crate::limits::HOST_FUEL_PER_BYTE;
use crate::model::{self, AdmissionError, ElemType, Graph, Plan, ShapeError, TensorInfo};
use crate::sandbox::{Sandbox, charge_fuel};
use crate::worker::Worker;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, Resource, ResourceType, WasmList, WasmStr};

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
const MIN_RUN_TIME: Duration = Duration::from_millis(10);

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
    graph: Graph,
    worker: Arc<Worker>,
}

/// Admitted models by digest, shared by every encoder of an engine, and the
/// workers that run them.
pub(crate) struct ModelCache {
    /// One cell per digest: compiling one model never holds up loads of
    /// another, and concurrent loads of one model compile it once.
    models: Mutex<BTreeMap<Digest, Arc<ModelCell>>>,
    /// One worker per core (each started on first use). A model always runs
    /// in the same one, so it is compiled once, and runs of different
    /// models (a shard's encoders) go in parallel.
    workers: Vec<Arc<Worker>>,
    placement_key: [u8; 32],
}

/// A model compiled once, or why it cannot be.
type ModelCell = OnceLock<Result<Arc<Model>, ModelError>>;

impl Default for ModelCache {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut placement_key = [0u8; 32];
        // Without randomness, placement is merely predictable.
        let _ = getrandom::fill(&mut placement_key);
        ModelCache {
            placement_key,
            models: Mutex::default(),
            workers: (0..cores.clamp(1, MAX_WORKERS))
                .map(|_| Arc::new(Worker::new()))
                .collect(),
        }
    }
}

/// Most inference workers per engine.
const MAX_WORKERS: usize = 8;

impl ModelCache {
    /// The session for `bytes` (whose digest is `digest`), admitting and
    /// compiling it on first use.
    pub(crate) fn get(&self, digest: &Digest, bytes: &[u8]) -> Result<Arc<Model>, ModelError> {
        let cell = self
            .models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(*digest)
            .or_default()
            .clone();
        let result = cell.get_or_init(|| self.compile(digest, bytes)).clone();
        if let Err(ModelError::Host(_) | ModelError::Runtime) = &result {
            // This host's trouble is not the model's: try again next time.
            let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            if models.get(digest).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                models.remove(digest);
            }
        }
        result
    }

    /// Which worker runs the model of `digest`: by a hash keyed with a
    /// secret of this process, so that no package author can choose to
    /// share a worker with another's model.
    fn worker_of(&self, digest: &Digest) -> usize {
        let hash = blake3::keyed_hash(&self.placement_key, &digest.0);
        let n = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        (n % self.workers.len() as u64) as usize
    }

    fn compile(&self, digest: &Digest, bytes: &[u8]) -> Result<Arc<Model>, ModelError> {
        // Admission is the host's own code on hostile bytes: should it ever
        // panic, the model is refused and the host keeps serving.
        let admitted = catch_unwind(|| model::admit(bytes))
            .unwrap_or_else(|_| Err(AdmissionError::Malformed("admission failed".into())))
            .map_err(ModelError::Refused)?;
        let graph = admitted.graph;
        let worker = &self.workers[self.worker_of(digest)];
        match worker.load(*digest, Arc::new(admitted.canonical)) {
            Ok(Ok(())) => Ok(Arc::new(Model {
                digest: *digest,
                graph,
                worker: worker.clone(),
            })),
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
    /// ONNX Runtime refused a model admission accepted. Whether it would
    /// on another host (or with more memory) is unknown, so this counts as
    /// a failure of this host; its text is logged at debug level (it names
    /// paths of this host).
    #[error("ONNX Runtime refused a model that admission accepted")]
    Runtime,
}

/// The models an encoder may open: those of its package, by digest.
pub(crate) type PackageModels = Arc<BTreeMap<Digest, Arc<Model>>>;

/// A session handle held by a guest.
pub struct OpenSession {
    model: Arc<Model>,
}

/// A `named-tensor` as it lies in guest memory: lifted without copying its
/// name, dimensions or data, so the host can charge for them first.
#[derive(ComponentType, Lift)]
#[component(record)]
struct GuestTensor {
    name: WasmStr,
    tensor: GuestTensorData,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct GuestTensorData {
    dimensions: WasmList<u32>,
    ty: TensorType,
    data: WasmList<u8>,
}

/// Adds `soma:encoder/inference` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    let mut inference = linker.instance("soma:encoder/inference@0.1.0")?;
    inference.resource(
        "session",
        ResourceType::host::<OpenSession>(),
        |mut store, rep| {
            let sandbox = store.data_mut();
            sandbox
                .table
                .delete(Resource::<OpenSession>::new_own(rep))?;
            sandbox.open_sessions -= 1;
            Ok(())
        },
    )?;
    inference.func_wrap("[static]session.open", |mut store, (model,): (WasmStr,)| {
        // wasmtime exposes a string's length only once it is validated in
        // place (no copy); the host charges for it before any other work.
        let text = model.to_str(&store)?;
        let cost = SESSION_OPEN_FUEL.saturating_add(text.len() as u64 * HOST_FUEL_PER_BYTE);
        let digest = Digest::from_hex(&text);
        charge_fuel(&mut store, cost)?;
        let sandbox = store.data_mut();
        let Some(model) = digest.and_then(|d| sandbox.models.get(&d)).cloned() else {
            let message = "no model with this digest in the encoder's package";
            return Ok((Err(error(ErrorCode::NotFound, message)),));
        };
        if sandbox.open_sessions >= MAX_OPEN_SESSIONS {
            let message = format!("more than {MAX_OPEN_SESSIONS} sessions open at once");
            return Ok((Err(error(ErrorCode::TooLarge, message)),));
        }
        let handle = sandbox.table.push(OpenSession { model })?;
        sandbox.open_sessions += 1;
        Ok((Ok(handle),))
    })?;
    inference.func_wrap(
        "[method]session.run",
        |mut store, (session, inputs): (Resource<OpenSession>, WasmList<GuestTensor>)| {
            let model = store.data().table.get(&session)?.model.clone();
            let planning = PLAN_FUEL_PER_NODE.saturating_mul(model.graph.nodes.len() as u64);
            charge_fuel(&mut store, RUN_BASE_FUEL.saturating_add(planning))?;
            let inputs = match read_inputs(&mut store, &inputs, &model.graph)? {
                Ok(inputs) => inputs,
                Err(e) => return Ok((Err(e),)),
            };
            let shapes = inputs.shapes();
            let planned = catch_unwind(AssertUnwindSafe(|| model.graph.plan(&shapes)));
            let Ok(planned) = planned else {
                let message = "shape inference failed on these inputs";
                return Ok((Err(error(ErrorCode::InvalidArgument, message)),));
            };
            let plan = match planned {
                Ok(plan) => plan,
                Err(e @ (ShapeError::TooLarge { .. } | ShapeError::Memory { .. })) => {
                    return Ok((Err(error(ErrorCode::TooLarge, e.to_string())),));
                }
                Err(e) => return Ok((Err(error(ErrorCode::InvalidArgument, e.to_string())),)),
            };
            charge_fuel(&mut store, plan.fuel())?;
            // The run may take what is left of the call's wall-clock budget.
            let left = store
                .data()
                .deadline
                .saturating_duration_since(Instant::now());
            Ok((run(&model, inputs, &plan, left.max(MIN_RUN_TIME))?,))
        },
    )
}

fn error(code: ErrorCode, message: impl Into<String>) -> WitError {
    WitError {
        code,
        message: message.into(),
    }
}

/// A run's inputs, copied out of guest memory in graph input order.
struct Inputs(Vec<(String, Tensor)>);

impl Inputs {
    fn shapes(&self) -> Vec<(ElemType, Vec<u64>)> {
        self.0
            .iter()
            .map(|(_, t)| {
                let dims = t.dimensions.iter().map(|&d| u64::from(d)).collect();
                (elem_type(t.ty), dims)
            })
            .collect()
    }
}

fn elem_type(ty: TensorType) -> ElemType {
    match ty {
        TensorType::Fp32 => ElemType::F32,
        TensorType::I64 => ElemType::I64,
        TensorType::I32 => ElemType::I32,
        TensorType::U8 => ElemType::U8,
    }
}

/// Charges for the inputs by their size, then checks them against the
/// limits and the graph's inputs and copies them out. The outer error is
/// the guest's fault (memory it handed over is malformed), the inner one
/// an answer to give it.
fn read_inputs(
    store: &mut StoreContextMut<'_, Sandbox>,
    list: &WasmList<GuestTensor>,
    graph: &Graph,
) -> wasmtime::Result<Result<Inputs, WitError>> {
    let too_large = |message: String| Ok(Err(error(ErrorCode::TooLarge, message)));
    let invalid = |message: String| Ok(Err(error(ErrorCode::InvalidArgument, message)));
    if list.len() > MAX_TENSORS {
        return too_large(format!(
            "{} input tensors; at most {MAX_TENSORS}",
            list.len()
        ));
    }
    let guest: Vec<GuestTensor> = list.iter(&mut *store)?.collect::<wasmtime::Result<_>>()?;
    let mut handed = 0u64;
    for t in &guest {
        // Names are validated in place (no copy) to learn their length.
        let name = t.name.to_str(&*store)?.len();
        handed += (name + 4 * t.tensor.dimensions.len() + t.tensor.data.len()) as u64;
    }
    charge_fuel(store, handed.saturating_mul(HOST_FUEL_PER_BYTE))?;
    let mut by_name = BTreeMap::new();
    let mut total_bytes = 0u64;
    for t in guest {
        let name = t.name.to_str(&*store)?;
        if name.len() > MAX_NAME_BYTES {
            return invalid(format!(
                "a tensor name is longer than {MAX_NAME_BYTES} bytes"
            ));
        }
        let name = name.into_owned();
        let dimensions = t.tensor.dimensions.as_le_slice(&*store).to_vec();
        if dimensions.len() > MAX_RANK {
            return too_large(format!(
                "`{name}` has rank {}; at most {MAX_RANK}",
                dimensions.len()
            ));
        }
        let elements = dimensions
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(u64::from(d)))
            .filter(|&n| n <= MAX_ELEMENTS);
        let Some(elements) = elements else {
            return too_large(format!("`{name}` has more than {MAX_ELEMENTS} elements"));
        };
        let expected = elements * element_size(t.tensor.ty);
        if t.tensor.data.len() as u64 != expected {
            return invalid(format!(
                "`{name}`: dimensions {dimensions:?} of {:?} need {expected} bytes, got {}",
                t.tensor.ty,
                t.tensor.data.len()
            ));
        }
        total_bytes += expected;
        if total_bytes > MAX_INPUT_BYTES {
            return too_large(format!("more than {MAX_INPUT_BYTES} bytes of input"));
        }
        let tensor = Tensor {
            dimensions,
            ty: t.tensor.ty,
            data: t.tensor.data.as_le_slice(&*store).to_vec(),
        };
        if by_name.insert(name.clone(), tensor).is_some() {
            return invalid(format!("input `{name}` is given twice"));
        }
    }
    let mut ordered = Vec::with_capacity(graph.inputs.len());
    for input in &graph.inputs {
        match by_name.remove(&input.name) {
            Some(t) => ordered.push((input.name.clone(), t)),
            None => return invalid(format!("the model needs input `{}`", input.name)),
        }
    }
    if let Some(extra) = by_name.keys().next() {
        return invalid(format!("the model has no input `{extra}`"));
    }
    Ok(Ok(Inputs(ordered)))
}

fn element_size(ty: TensorType) -> u64 {
    elem_type(ty).size()
}

/// What a call that ONNX Runtime failed ends with: always the same words,
/// since the runtime's own text names paths and states of this host.
const RUN_FAILED: &str = "ONNX Runtime failed a run that admission and planning accepted";

/// Runs a planned model in the worker. The outer error is a failure of
/// this host, which ends the encoder's call; the inner one an answer for
/// the guest.
fn run(
    model: &Model,
    inputs: Inputs,
    plan: &Plan,
    timeout: Duration,
) -> Result<Result<Vec<NamedTensor>, WitError>, LocalFailure> {
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
    let outputs = match model.worker.run(model.digest, inputs, max_reply, timeout) {
        Ok(Ok(outputs)) => outputs,
        Ok(Err(text)) => {
            // Admission and planning accepted the run; a refusal now may be
            // this host's (memory), so it is not held against the encoder.
            tracing::debug!(model = %model.digest, "ONNX Runtime failed a run: {text}");
            return Err(LocalFailure(RUN_FAILED.into()));
        }
        Err(e) => return Err(LocalFailure(e.to_string())),
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
        model.worker.restart();
        return Err(LocalFailure(
            "the inference worker's outputs differ from the host's shape inference".into(),
        ));
    }
    Ok(Ok(outputs.into_iter().map(canonical_tensor).collect()))
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
    let rounded = (x * OUTPUT_GRID).round() / OUTPUT_GRID;
    if rounded == 0.0 { 0.0 } else { rounded }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
