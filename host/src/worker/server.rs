//! The worker's side: ONNX Runtime sessions, served over stdin/stdout.

use super::protocol::{ProtocolError, Reply, Request, read_frame};
use crate::bindings::soma::encoder::inference::{NamedTensor, Tensor, TensorType};
use crate::digest::Digest;
use crate::model::MAX_TENSOR_BYTES;
use ort::logging::LogLevel;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, ValueType};
use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "SOMA_ORT_DYLIB";

/// Largest request the worker reads: a model and its framing.
const MAX_REQUEST_BYTES: u64 = crate::model::MAX_MODEL_BYTES + (1 << 20);

/// Why ONNX Runtime could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ONNX Runtime is not available: {0}")]
pub struct RuntimeUnavailable(pub String);

static RUNTIME: OnceLock<Result<ort::environment::Environment, RuntimeUnavailable>> =
    OnceLock::new();

/// Set by the host for its worker when the library it names was found by
/// searching: the worker then loads it only if it is still the library
/// set-up installs.
const DYLIB_VERIFY_ENV: &str = "SOMA_ORT_DYLIB_VERIFY";

/// Largest file taken for the ONNX Runtime library (1.32 is about 20 MB).
const MAX_DYLIB_BYTES: u64 = 256 << 20;

/// Where ONNX Runtime's shared library is looked for, in order, when
/// `SOMA_ORT_DYLIB` is not set: beside this executable, then where `cargo
/// xtask setup` installed it in the checkout this crate was built from (so
/// `cargo run`, test binaries and `cargo install --path host` find it
/// without the variable). Only the library set-up installs (Linux x86-64)
/// is taken from these places; any other needs the variable.
fn dylib_candidates() -> Vec<PathBuf> {
    let name = format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(&name)));
    beside_exe.into_iter().chain([setup_dylib(&name)]).collect()
}

/// Where `cargo xtask setup` puts the library `name` in this checkout.
fn setup_dylib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/soma/onnxruntime")
        .join(name)
}

/// blake3 of the library `cargo xtask setup` installs (ONNX Runtime 1.32.0
/// from the `onnxruntime` wheel). A library found by searching is loaded
/// only if it is this file: whoever can write to a searched directory could
/// otherwise plant code that runs before the worker confines itself.
const SETUP_DYLIB_BLAKE3: &str = "b9ca235169118134f48a14c831d0cb389470e1d98b78942aea77c99d90cf8d98";

/// The ONNX Runtime library to load, and whether it must be the library
/// set-up installs.
#[derive(Debug, Clone)]
pub(crate) struct Dylib {
    /// Its path.
    pub(crate) path: PathBuf,
    /// Whether it was found by searching (its digest is checked on load).
    pub(crate) searched: bool,
}

impl Dylib {
    /// Sets `command`'s environment so that it loads this library, checked
    /// the same way.
    pub(crate) fn pass_to(&self, command: &mut std::process::Command) {
        command.env(DYLIB_ENV, &self.path);
        if self.searched {
            command.env(DYLIB_VERIFY_ENV, "1");
        }
    }
}

/// The ONNX Runtime library this process uses: the one `SOMA_ORT_DYLIB`
/// names, or else the first of [`dylib_candidates`] that is the library
/// set-up installs (searched once per process).
pub(crate) fn dylib() -> Result<Dylib, RuntimeUnavailable> {
    static SEARCHED: OnceLock<Result<PathBuf, RuntimeUnavailable>> = OnceLock::new();
    match std::env::var_os(DYLIB_ENV) {
        Some(path) => Ok(Dylib {
            path: PathBuf::from(path),
            searched: std::env::var_os(DYLIB_VERIFY_ENV).is_some(),
        }),
        None => SEARCHED
            .get_or_init(|| find_dylib(&dylib_candidates()))
            .clone()
            .map(|path| Dylib {
                path,
                searched: true,
            }),
    }
}

/// `path` opened, if it is a regular file of at most [`MAX_DYLIB_BYTES`]
/// whose bytes, read through the returned handle, are the library set-up
/// installs.
fn open_setup_dylib(path: &Path) -> Result<std::fs::File, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > MAX_DYLIB_BYTES {
        return Err("not a library file".into());
    }
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::io::Read::take(&mut file, MAX_DYLIB_BYTES))
        .map_err(|e| e.to_string())?;
    match hasher.finalize().to_hex().as_str() == SETUP_DYLIB_BLAKE3 {
        true => Ok(file),
        false => Err(format!(
            "not the library set-up installs: set {DYLIB_ENV} to use it"
        )),
    }
}

/// The first of `candidates` that is the library set-up installs; the
/// error says where it looked and what it found there.
fn find_dylib(candidates: &[PathBuf]) -> Result<PathBuf, RuntimeUnavailable> {
    let mut looked = Vec::new();
    for path in candidates {
        match open_setup_dylib(path) {
            Ok(_) => return Ok(path.clone()),
            Err(e) if path.exists() => looked.push(format!("{} ({e})", path.display())),
            Err(_) => looked.push(path.display().to_string()),
        }
    }
    Err(RuntimeUnavailable(format!(
        "libonnxruntime (1.32) is not installed: looked in {}; run `cargo xtask setup` \
         in the Soma checkout, or point {DYLIB_ENV} at the library",
        looked.join(", ")
    )))
}

/// The process's ONNX Runtime environment, loaded on first use from the
/// library `dylib` finds. A searched library is loaded through the handle its digest
/// was checked on, so it cannot be swapped in between. The host never
/// calls it for encoders (their models run in the worker); it is public
/// for native baselines.
pub fn runtime() -> Result<&'static ort::environment::Environment, RuntimeUnavailable> {
    RUNTIME
        .get_or_init(|| {
            let Dylib { path, searched } = dylib()?;
            let unavailable =
                |e: &dyn std::fmt::Display| RuntimeUnavailable(format!("{}: {e}", path.display()));
            if !path.is_file() {
                return Err(unavailable(&format!("no such file (from {DYLIB_ENV})")));
            }
            // Held open until the library is loaded from it.
            let checked = match searched {
                true => Some(open_setup_dylib(&path).map_err(|e| unavailable(&e))?),
                false => None,
            };
            let load_from = match &checked {
                #[cfg(target_os = "linux")]
                Some(file) => {
                    use std::os::fd::AsRawFd;
                    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
                }
                _ => path.clone(),
            };
            ort::init_from(&load_from)
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

/// Compiles and runs a one-node model, so that everything ONNX Runtime
/// initialises lazily (CPU detection reads `/proc` and `/sys`) is done
/// before the worker confines itself.
pub(crate) fn warm_up(_: &ort::environment::Environment) -> Result<(), RuntimeUnavailable> {
    use crate::model::proto;
    use protobuf::Message;
    let mut x = proto::ValueInfoProto::new();
    x.set_name("x".into());
    let mut tensor = proto::type_proto::Tensor::new();
    tensor.set_elem_type(1);
    let mut dim = proto::tensor_shape_proto::Dimension::new();
    dim.set_dim_value(1);
    tensor.shape.mut_or_insert_default().dim.push(dim);
    x.type_.mut_or_insert_default().set_tensor_type(tensor);
    let mut y = x.clone();
    y.set_name("y".into());
    let mut node = proto::NodeProto::new();
    node.set_op_type("Neg".into());
    node.input.push("x".into());
    node.output.push("y".into());
    let mut model = proto::ModelProto::new();
    model.set_ir_version(8);
    let mut opset = proto::OperatorSetIdProto::new();
    opset.set_version(17);
    model.opset_import.push(opset);
    let graph = model.graph.mut_or_insert_default();
    graph.node.push(node);
    graph.input.push(x);
    graph.output.push(y);
    let failed =
        |e: String| RuntimeUnavailable(format!("ONNX Runtime fails a one-node model: {e}"));
    let bytes = model.write_to_bytes().map_err(|e| failed(e.to_string()))?;
    let mut session = compile(&bytes, Path::new(".")).map_err(failed)?;
    let input = NamedTensor {
        name: "x".into(),
        tensor: Tensor {
            dimensions: vec![1],
            ty: TensorType::Fp32,
            data: 1.0f32.to_le_bytes().to_vec(),
        },
    };
    run(&mut session, vec![input]).map(drop).map_err(failed)
}

/// Serves requests on stdin until it closes: the inference worker's main
/// loop. `external_data` names an empty directory ONNX Runtime is told
/// holds external data. Returns an error only if the pipes fail.
pub(crate) fn serve(external_data: &Path) -> Result<(), ProtocolError> {
    let mut input = BufReader::new(io::stdin().lock());
    let mut output = BufWriter::new(io::stdout().lock());
    let mut sessions: BTreeMap<Digest, Session> = BTreeMap::new();
    loop {
        let body = match read_frame(&mut input, MAX_REQUEST_BYTES) {
            Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        };
        let reply = match Request::decode(&body)? {
            Request::Load { digest, model } => match compile(model, external_data) {
                Ok(session) => {
                    sessions.insert(digest, session);
                    Reply::Done(vec![])
                }
                Err(e) => Reply::Refused(e),
            },
            Request::Run { digest, inputs } => match sessions.get_mut(&digest) {
                Some(session) => run(session, inputs).map_or_else(Reply::Refused, Reply::Done),
                None => Reply::Refused(format!("no session for {digest}")),
            },
            Request::Unload { digest } => {
                sessions.remove(&digest);
                Reply::Done(vec![])
            }
        };
        reply.write(&mut output)?;
    }
}

/// A session builder with the settings every worker uses: CPU only without
/// the arena (memory is given back after each run), one thread, sequential,
/// deterministic compute, basic optimisations, no memory pattern, quiet,
/// constant folding capped. Public so that native baselines measure the
/// runtime the worker runs.
pub fn session_builder(env: &ort::environment::Environment) -> ort::Result<SessionBuilder> {
    Ok(Session::builder(env)?
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])?
        .with_optimization_level(GraphOptimizationLevel::Level1)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?
        .with_parallel_execution(false)?
        .with_deterministic_compute(true)?
        .with_memory_pattern(false)?
        .with_log_level(LogLevel::Fatal)?
        .with_config_entry(
            "optimization.constant_folding_max_output_size_in_bytes",
            MAX_TENSOR_BYTES.to_string(),
        )?)
}

/// Compiles an admitted model into a session, told that external data
/// lives in `external_data` (an empty directory).
fn compile(model: &[u8], external_data: &Path) -> Result<Session, String> {
    let env = runtime().map_err(|e| e.to_string())?;
    let compiled = session_builder(env).and_then(|builder| {
        builder
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                external_data.to_string_lossy(),
            )?
            .commit_from_memory(model)
    });
    compiled.map_err(|e| e.to_string())
}

/// Runs a session; the outputs are ONNX Runtime's, unrounded.
fn run(session: &mut Session, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, String> {
    let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let value = to_ort(&input.tensor).map_err(|e| format!("`{}`: {e}", input.name))?;
        values.push((input.name, value));
    }
    let outputs = session.run(values).map_err(|e| e.to_string())?;
    outputs
        .iter()
        .map(|(name, value)| {
            from_ort(&value)
                .map(|tensor| NamedTensor {
                    name: name.to_string(),
                    tensor,
                })
                .map_err(|e| format!("output `{name}`: {e}"))
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
        TensorElementType::Float32 => extract(value, TensorType::Fp32, f32::to_le_bytes),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_digest_is_the_one_set_up_installs() {
        let assets = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../xtask/src/assets.rs"
        ));
        assert!(
            assets.contains(SETUP_DYLIB_BLAKE3),
            "xtask pins another library"
        );
    }

    #[test]
    fn only_the_library_set_up_installs_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("libonnxruntime.so");
        std::fs::write(&planted, b"\x7fELF not the real library").unwrap();
        let missing = dir.path().join("nowhere/libonnxruntime.so");
        let error = find_dylib(&[missing.clone(), planted.clone()])
            .unwrap_err()
            .0;
        assert!(error.contains(&missing.display().to_string()), "{error}");
        assert!(
            error.contains(&format!(
                "{} (not the library set-up installs",
                planted.display()
            )),
            "{error}"
        );
        let not_a_file = open_setup_dylib(dir.path()).unwrap_err();
        assert_eq!(not_a_file, "not a library file");
        // The installed one is found, after the impostor.
        let installed = setup_dylib("libonnxruntime.so");
        assert_eq!(
            find_dylib(&[planted, installed.clone()]).unwrap(),
            installed
        );
    }
}
