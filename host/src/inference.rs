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
use crate::limits::charge_fuel;
use crate::sandbox::Sandbox;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, ValueType};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use wasmtime::component::{Linker, Resource, ResourceType, WasmStr};

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
/// Fuel charged for every `run`, whatever its size.
pub const RUN_BASE_FUEL: u64 = 100_000;
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
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A model compiled into an ONNX Runtime session, shared by every call.
pub(crate) struct Model {
    session: Mutex<Session>,
    /// Fuel per input element: the model size in KiB, a proxy for the work
    /// per token of a transformer.
    fuel_per_element: u64,
}

/// Compiled sessions by model digest, shared by every encoder of an engine.
#[derive(Default)]
pub(crate) struct ModelCache {
    models: Mutex<BTreeMap<Digest, Arc<Model>>>,
}

impl ModelCache {
    /// The session for `bytes` (whose digest is `digest`), compiling it on
    /// first use.
    pub(crate) fn get(&self, digest: &Digest, bytes: &[u8]) -> Result<Arc<Model>, ModelError> {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(model) = models.get(digest) {
            return Ok(model.clone());
        }
        let env = runtime().map_err(ModelError::Unavailable)?;
        let session = compile(env, bytes).map_err(ModelError::Invalid)?;
        let model = Arc::new(Model {
            session: Mutex::new(session),
            fuel_per_element: (bytes.len() as u64).div_ceil(1024),
        });
        models.insert(*digest, model.clone());
        Ok(model)
    }
}

/// Builds a session with the settings every host uses.
fn compile(env: &ort::environment::Environment, bytes: &[u8]) -> Result<Session, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    Session::builder(env)
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
        .commit_from_memory(bytes)
        .map_err(|e| text(&e))
}

/// Why a model could not be made into a session.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ModelError {
    /// The runtime library is missing: a fault of this host.
    #[error(transparent)]
    Unavailable(RuntimeUnavailable),
    /// The runtime refused the model.
    #[error("{0}")]
    Invalid(String),
}

/// The models an encoder may open: those of its package, by digest.
pub(crate) type PackageModels = Arc<BTreeMap<Digest, Arc<Model>>>;

/// A session handle held by a guest.
pub struct OpenSession {
    model: Arc<Model>,
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
        let text = truncated(&model.to_str(&store)?).to_owned();
        let digest = Digest::from_hex(&text);
        let sandbox = store.data_mut();
        let Some(model) = digest.and_then(|d| sandbox.models.get(&d)).cloned() else {
            let message = format!("no model with digest `{text}` in this encoder's package");
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
        |mut store, (session, inputs): (Resource<OpenSession>, Vec<NamedTensor>)| {
            let model = store.data().table.get(&session)?.model.clone();
            let elements = match check_inputs(&inputs) {
                Ok(elements) => elements,
                Err(e) => return Ok((Err(e),)),
            };
            charge_fuel(
                &mut store,
                RUN_BASE_FUEL.saturating_add(model.fuel_per_element.saturating_mul(elements)),
            )?;
            Ok((run(&model, inputs),))
        },
    )
}

fn error(code: ErrorCode, message: impl Into<String>) -> WitError {
    WitError {
        code,
        message: message.into(),
    }
}

fn truncated(s: &str) -> &str {
    s.char_indices().nth(80).map_or(s, |(i, _)| &s[..i])
}

/// Checks the inputs against the limits; returns their total element count.
fn check_inputs(inputs: &[NamedTensor]) -> Result<u64, WitError> {
    let too_large = |message: String| Err(error(ErrorCode::TooLarge, message));
    if inputs.len() > MAX_TENSORS {
        return too_large(format!(
            "{} input tensors; at most {MAX_TENSORS}",
            inputs.len()
        ));
    }
    let mut total_elements = 0u64;
    let mut total_bytes = 0u64;
    for input in inputs {
        let t = &input.tensor;
        if t.dimensions.len() > MAX_RANK {
            return too_large(format!(
                "`{}` has rank {}; at most {MAX_RANK}",
                input.name,
                t.dimensions.len()
            ));
        }
        let elements = t
            .dimensions
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(u64::from(d)));
        let Some(elements) = elements.filter(|&n| n <= MAX_ELEMENTS) else {
            return too_large(format!(
                "`{}` has more than {MAX_ELEMENTS} elements",
                input.name
            ));
        };
        let expected = elements * element_size(t.ty);
        if t.data.len() as u64 != expected {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!(
                    "`{}`: dimensions {:?} of {:?} need {expected} bytes, got {}",
                    input.name,
                    t.dimensions,
                    t.ty,
                    t.data.len()
                ),
            ));
        }
        total_elements += elements;
        total_bytes += expected;
    }
    if total_bytes > MAX_INPUT_BYTES {
        return too_large(format!(
            "{total_bytes} bytes of input; at most {MAX_INPUT_BYTES}"
        ));
    }
    Ok(total_elements)
}

fn element_size(ty: TensorType) -> u64 {
    match ty {
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::I64 => 8,
        TensorType::U8 => 1,
    }
}

/// Runs a model; every failure is an error for the guest.
fn run(model: &Model, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, WitError> {
    let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let value = to_ort(&input.tensor)
            .map_err(|e| error(ErrorCode::InvalidArgument, format!("`{}`: {e}", input.name)))?;
        values.push((input.name, value));
    }
    let mut session = model.session.lock().unwrap_or_else(|e| e.into_inner());
    let outputs = session
        .run(values)
        .map_err(|e| error(ErrorCode::InvalidArgument, e.to_string()))?;
    outputs
        .iter()
        .map(|(name, value)| {
            from_ort(&value)
                .map(|tensor| NamedTensor {
                    name: name.to_string(),
                    tensor,
                })
                .map_err(|e| error(ErrorCode::RuntimeError, format!("output `{name}`: {e}")))
        })
        .collect()
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
        TensorElementType::Float32 => extract(value, TensorType::Fp32, |x: f32| {
            round_to_grid(x).to_le_bytes()
        }),
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
/// bits on every host).
fn round_to_grid(x: f32) -> f32 {
    (x * OUTPUT_GRID).round() / OUTPUT_GRID
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dimensions: Vec<u32>, ty: TensorType, bytes: usize) -> NamedTensor {
        NamedTensor {
            name: "x".into(),
            tensor: Tensor {
                dimensions,
                ty,
                data: vec![0; bytes],
            },
        }
    }

    #[test]
    fn inputs_are_checked_against_the_limits() {
        assert_eq!(
            check_inputs(&[tensor(vec![2, 3], TensorType::I64, 48)]).unwrap(),
            6
        );
        let code = |r: Result<u64, WitError>| r.unwrap_err().code;
        assert_eq!(
            code(check_inputs(&[tensor(vec![2, 3], TensorType::I64, 47)])),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(check_inputs(&[tensor(vec![1; 9], TensorType::U8, 1)])),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code(check_inputs(&[tensor(
                vec![u32::MAX, u32::MAX, 2],
                TensorType::U8,
                0
            )])),
            ErrorCode::TooLarge
        );
        let many: Vec<_> = (0..=MAX_TENSORS)
            .map(|_| tensor(vec![1], TensorType::U8, 1))
            .collect();
        assert_eq!(code(check_inputs(&many)), ErrorCode::TooLarge);
    }

    #[test]
    fn rounding_is_to_a_fixed_grid() {
        assert_eq!(round_to_grid(0.5), 0.5);
        assert_eq!(round_to_grid(1.0 + 1e-7), 1.0);
        assert_eq!(round_to_grid(-3.0 / 65_536.0 + 1e-9), -3.0 / 65_536.0);
    }
}
