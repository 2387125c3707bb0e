//! The `soma:encoder/inference` import: ONNX Runtime sessions over the
//! models of an encoder's own signed package.
//!
//! Determinism comes from four choices: sessions are configured the same
//! everywhere (CPU, one thread, sequential, deterministic compute, basic
//! graph optimisations only, since the extended levels pick CPU-specific
//! kernels); each `run` is charged fuel from the model size and the input
//! shapes before it runs, never from time; tensors are checked against fixed
//! limits before anything is handed to the runtime; and every floating-point
//! output is rounded to a grid of 2⁻¹⁶ so that last-bit kernel differences do
//! not reach the encoder.
//!
//! ONNX Runtime is a shared library loaded once per process from the path in
//! `SOMA_ORT_DYLIB` (which `.cargo/config.toml` points at the copy
//! `cargo xtask setup` installs).

use crate::bindings::soma::encoder::inference::{
    Error as WitError, ErrorCode, NamedTensor, Tensor, TensorType,
};
use crate::digest::Digest;
use crate::limits::{HOST_FUEL_PER_BYTE, charge_fuel};
use crate::model::{
    self, AdmissionError, ElemType, Graph, MAX_TENSOR_BYTES, Plan, ShapeError, TensorInfo,
};
use crate::sandbox::Sandbox;
use ort::logging::LogLevel;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, ValueType};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
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
/// Fuel charged for every `session.open`.
pub const SESSION_OPEN_FUEL: u64 = 1_000;
/// Work units (see the model's cost rules) bought by one unit of fuel.
pub const WORK_PER_FUEL: u64 = 8;
/// Outputs are rounded to multiples of 2⁻¹⁶.
pub const OUTPUT_GRID: f32 = 65_536.0;

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "SOMA_ORT_DYLIB";

/// Why ONNX Runtime could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ONNX Runtime is not available: {0}")]
pub struct RuntimeUnavailable(pub String);

static RUNTIME: OnceLock<Result<ort::environment::Environment, RuntimeUnavailable>> =
    OnceLock::new();

/// The process's ONNX Runtime environment, loaded on first use from the
/// library `SOMA_ORT_DYLIB` names.
pub fn runtime() -> Result<&'static ort::environment::Environment, RuntimeUnavailable> {
    RUNTIME
        .get_or_init(|| {
            let path = std::env::var_os(DYLIB_ENV).map(PathBuf::from).ok_or_else(|| {
                RuntimeUnavailable(format!(
                    "{DYLIB_ENV} is not set; run `cargo xtask setup`, or point {DYLIB_ENV} at libonnxruntime.so (1.32)"
                ))
            })?;
            let unavailable =
                |e: &dyn std::fmt::Display| RuntimeUnavailable(format!("{}: {e}", path.display()));
            ort::init_from(&path)
                .map_err(|e| unavailable(&e))?
                .with_name("soma")
                .with_telemetry(false)
                .build()
                .map_err(|e| unavailable(&e))
                .inspect(|env| env.set_log_level(LogLevel::Fatal))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A model admitted and compiled into an ONNX Runtime session.
pub(crate) struct Model {
    session: Mutex<Session>,
    /// What the host knows of the graph: shapes and work for any inputs.
    graph: Graph,
}

/// Compiled sessions by model digest, shared by every encoder of an engine.
#[derive(Default)]
pub(crate) struct ModelCache {
    /// One cell per digest: compiling one model never holds up loads of
    /// another, and concurrent loads of one model compile it once.
    models: Mutex<BTreeMap<Digest, Arc<ModelCell>>>,
}

/// A model compiled once, or why it cannot be.
type ModelCell = OnceLock<Result<Arc<Model>, ModelError>>;

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
        cell.get_or_init(|| {
            let admitted = model::admit(bytes).map_err(ModelError::Refused)?;
            let env = runtime().map_err(ModelError::Unavailable)?;
            let session = compile(env, &admitted.canonical).map_err(|e| {
                tracing::debug!(model = %digest, "ONNX Runtime refused an admitted model: {e}");
                ModelError::Runtime
            })?;
            Ok(Arc::new(Model {
                session: Mutex::new(session),
                graph: admitted.graph,
            }))
        })
        .clone()
    }
}

/// An empty directory, private to this process, that ONNX Runtime is told
/// holds external data: a second lock on a door admission already shut.
fn no_external_data() -> Result<&'static std::path::Path, String> {
    static DIR: OnceLock<Result<tempfile::TempDir, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("soma-no-external-data")
            .tempdir()
            .map_err(|e| format!("cannot create an empty directory: {e}"))
    })
    .as_ref()
    .map(|d| d.path())
    .map_err(Clone::clone)
}

/// Builds a session with the settings every host uses.
fn compile(env: &ort::environment::Environment, bytes: &[u8]) -> Result<Session, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let folder = no_external_data()?.to_string_lossy().into_owned();
    Session::builder(env)
        .map_err(|e| text(&e))?
        // CPU only, without the arena: memory is given back after each run.
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
        .map_err(|e| text(&e))?
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .map_err(|e| text(&e))?
        .with_intra_threads(1)
        .map_err(|e| text(&e))?
        .with_inter_threads(1)
        .map_err(|e| text(&e))?
        .with_parallel_execution(false)
        .map_err(|e| text(&e))?
        .with_deterministic_compute(true)
        .map_err(|e| text(&e))?
        .with_memory_pattern(false)
        .map_err(|e| text(&e))?
        .with_log_level(LogLevel::Fatal)
        .map_err(|e| text(&e))?
        .with_config_entry(
            "session.model_external_initializers_file_folder_path",
            folder,
        )
        .map_err(|e| text(&e))?
        .with_config_entry(
            "optimization.constant_folding_max_output_size_in_bytes",
            MAX_TENSOR_BYTES.to_string(),
        )
        .map_err(|e| text(&e))?
        .commit_from_memory(bytes)
        .map_err(|e| text(&e))
}

/// Why a model could not be made into a session.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ModelError {
    /// The runtime library is missing: a fault of this host.
    #[error(transparent)]
    Unavailable(RuntimeUnavailable),
    /// Admission refused the model.
    #[error(transparent)]
    Refused(AdmissionError),
    /// ONNX Runtime refused a model admission accepted (its text is logged
    /// at debug level: it names paths of this host).
    #[error("ONNX Runtime cannot load the model")]
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
            charge_fuel(&mut store, RUN_BASE_FUEL)?;
            let inputs = match read_inputs(&mut store, &inputs, &model.graph)? {
                Ok(inputs) => inputs,
                Err(e) => return Ok((Err(e),)),
            };
            let plan = match model.graph.plan(&inputs.shapes()) {
                Ok(plan) => plan,
                Err(e @ ShapeError::TooLarge { .. }) => {
                    return Ok((Err(error(ErrorCode::TooLarge, e.to_string())),));
                }
                Err(e) => return Ok((Err(error(ErrorCode::InvalidArgument, e.to_string())),)),
            };
            let output_bytes: u64 = plan.outputs.iter().map(TensorInfo::bytes).sum();
            // The constant part was folded when the model was loaded
            // (admission bounds it); each run pays for the rest.
            let work = plan.work - plan.constant_work;
            charge_fuel(
                &mut store,
                (work / WORK_PER_FUEL).saturating_add(output_bytes * HOST_FUEL_PER_BYTE),
            )?;
            Ok((run(&model, inputs, &plan),))
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

/// What a guest is told when ONNX Runtime fails: always the same words,
/// since the runtime's own text names paths and states of this host.
const RUN_FAILED: &str = "the model failed to run on these inputs";

/// Runs a planned model; every failure is an error for the guest.
fn run(model: &Model, inputs: Inputs, plan: &Plan) -> Result<Vec<NamedTensor>, WitError> {
    let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.0.len());
    for (name, tensor) in inputs.0 {
        let value = to_ort(&tensor).map_err(|e| {
            tracing::debug!("cannot build input `{name}` for ONNX Runtime: {e}");
            error(ErrorCode::RuntimeError, RUN_FAILED)
        })?;
        values.push((name, value));
    }
    let mut session = model.session.lock().unwrap_or_else(|e| e.into_inner());
    let outputs = session.run(values).map_err(|e| {
        tracing::debug!("ONNX Runtime failed a run: {e}");
        error(ErrorCode::RuntimeError, RUN_FAILED)
    })?;
    let mut result = Vec::with_capacity(plan.outputs.len());
    for ((name, value), planned) in outputs.iter().zip(&plan.outputs) {
        let tensor = from_ort(&value).map_err(|e| {
            tracing::debug!("output `{name}`: {e}");
            error(ErrorCode::RuntimeError, RUN_FAILED)
        })?;
        let dims: Vec<u64> = tensor.dimensions.iter().map(|&d| u64::from(d)).collect();
        if dims != planned.dims || elem_type(tensor.ty) != planned.ty {
            tracing::warn!(
                "output `{name}` is {:?} {dims:?}; shape inference planned {:?} {:?}",
                tensor.ty,
                planned.ty,
                planned.dims
            );
            return Err(error(
                ErrorCode::RuntimeError,
                "the model's outputs differ from the host's shape inference",
            ));
        }
        result.push(NamedTensor {
            name: name.to_string(),
            tensor,
        });
    }
    Ok(result)
}

fn to_ort(t: &Tensor) -> ort::Result<DynValue> {
    let shape: Vec<i64> = t.dimensions.iter().map(|&d| i64::from(d)).collect();
    let bytes = &t.data;
    Ok(match t.ty {
        TensorType::Fp32 => {
            ort::value::Tensor::from_array((shape, decode(bytes, f32::from_le_bytes)))?.into_dyn()
        }
        TensorType::I64 => {
            ort::value::Tensor::from_array((shape, decode(bytes, i64::from_le_bytes)))?.into_dyn()
        }
        TensorType::I32 => {
            ort::value::Tensor::from_array((shape, decode(bytes, i32::from_le_bytes)))?.into_dyn()
        }
        TensorType::U8 => ort::value::Tensor::from_array((shape, bytes.clone()))?.into_dyn(),
    })
}

fn decode<T, const N: usize>(bytes: &[u8], from_le: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| from_le(c.try_into().expect("chunks of N")))
        .collect()
}

fn from_ort(value: &DynValue) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err("not a tensor".into());
    };
    match ty {
        TensorElementType::Float32 => {
            extract(value, TensorType::Fp32, |x: f32| canonical(x).to_le_bytes())
        }
        TensorElementType::Int64 => extract(value, TensorType::I64, i64::to_le_bytes),
        TensorElementType::Int32 => extract(value, TensorType::I32, i32::to_le_bytes),
        TensorElementType::Uint8 => extract(value, TensorType::U8, |x: u8| [x]),
        other => Err(format!("element type {other:?} is not supported")),
    }
}

/// Copies an ONNX Runtime tensor of element type `T` out as `ty`, each
/// element turned into little-endian bytes by `to_le`.
fn extract<T: PrimitiveTensorElementType + Copy, const N: usize>(
    value: &DynValue,
    ty: TensorType,
    to_le: impl Fn(T) -> [u8; N],
) -> Result<Tensor, String> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
    let dimensions = shape
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| format!("dimension {d}")))
        .collect::<Result<_, _>>()?;
    Ok(Tensor {
        dimensions,
        ty,
        data: data.iter().flat_map(|&x| to_le(x)).collect(),
    })
}

/// Rounds to the nearest multiple of 2⁻¹⁶ (exact IEEE operations: the same
/// bits on every host), with one zero and one NaN: their signs and payloads
/// are whatever the kernel's instructions left.
fn canonical(x: f32) -> f32 {
    if x.is_nan() {
        return f32::NAN;
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
    }
}
