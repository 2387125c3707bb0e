//! A loaded encoder component and its calls.

use crate::error::{InvalidOutput, LocalFailure};
use crate::inference::PackageModels;
use crate::info::{EncoderInfo, MAX_DIMENSION, Modality};
use crate::log::LogRecord;
use crate::runtime::{HOSTCALL_BYTES, POOLED_INSTANCES, Runtime};
use crate::sandbox::{Sandbox, Seed};
use crate::{Error, Limits};
use serde::Serialize;
use std::sync::{Condvar, Mutex};
use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use crate::bindings;
use bindings::soma::encoder::types as wit;

/// Most inputs one `embed` call accepts.
pub const MAX_BATCH: usize = 4096;

/// Calls of one encoder that run at once: a quarter of the engine's pooled
/// instances, so that no encoder can take them all. Further calls wait for
/// one to end.
pub const MAX_CONCURRENT_CALLS: usize = (POOLED_INSTANCES / 4) as usize;

/// Bytes of an encoder's own error message kept in [`Error::Refused`].
pub const MAX_REFUSAL_BYTES: usize = 1024;

/// The result of a successful `embed` call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embeddings {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Fuel the call consumed (0 on an engine without metering).
    pub fuel_used: u64,
    /// Bytes of linear memory the instance held when the call returned, as
    /// wasmtime reported each memory's size to the store's limiter: memories
    /// only grow, so this is the most the call held, and never above
    /// [`Limits::max_memory_bytes`].
    pub memory_bytes: u64,
    /// Messages the encoder logged (at most [`crate::log::MAX_LOG_RECORDS`]).
    pub logs: Vec<LogRecord>,
    /// Messages dropped beyond that bound.
    pub logs_dropped: u64,
    /// What the encoder wrote to stdout, capped.
    pub stdout: String,
    /// What the encoder wrote to stderr, capped.
    pub stderr: String,
}

/// A compiled encoder component, ready to be called.
///
/// Every call runs in a fresh store and instance: no state survives from one
/// call to the next, and a call that traps leaves nothing behind.
pub struct Encoder {
    runtime: Runtime,
    pre: bindings::EncoderPre<Sandbox>,
    info: EncoderInfo,
    models: PackageModels,
    slots: Slots,
}

/// A counting semaphore over an encoder's concurrent calls.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// A call's slot, given back when dropped.
struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot and takes it.
    fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

impl Encoder {
    /// Links `component` against the host's world and reads its info.
    pub(crate) fn link(
        runtime: Runtime,
        component: &Component,
        models: PackageModels,
        limits: &Limits,
    ) -> Result<Self, Error> {
        runtime.prepare(component)?;
        let incompatible = |e: wasmtime::Error| Error::Incompatible(format!("{e:#}"));
        let instance_pre = runtime
            .linker()
            .instantiate_pre(component)
            .map_err(incompatible)?;
        let pre = bindings::EncoderPre::new(instance_pre).map_err(incompatible)?;
        let info = run(
            &runtime,
            &pre,
            &models,
            limits,
            Seed::default(),
            |encoder, store| encoder.call_info(store),
        )?
        .0;
        let info = EncoderInfo::check(info)?;
        Ok(Encoder {
            runtime,
            pre,
            info,
            models,
            slots: Slots::new(MAX_CONCURRENT_CALLS),
        })
    }

    /// What the encoder declared when it was loaded.
    pub fn info(&self) -> &EncoderInfo {
        &self.info
    }

    /// Embeds a batch in a fresh sandbox under `limits`; `seed` fixes what
    /// the encoder's randomness returns.
    pub fn embed(
        &self,
        inputs: &[Vec<u8>],
        limits: &Limits,
        seed: Seed,
    ) -> Result<Embeddings, Error> {
        self.check_inputs(inputs)?;
        let _slot = self.slots.take();
        // What a well-formed answer can take to lift: the vectors, their
        // list headers, and an error message. wasmtime stops lifting past
        // this, so vectors that alias one huge buffer cost nothing.
        let dimension = self.info.dimension as usize;
        let answer = inputs.len() * (4 * dimension + 8) + (64 << 10);
        let (result, fuel_used, sandbox) = run(
            &self.runtime,
            &self.pre,
            &self.models,
            limits,
            seed,
            |encoder, store| {
                store.set_hostcall_fuel(answer.max(HOSTCALL_BYTES));
                encoder.call_embed(store, inputs)
            },
        )?;
        let vectors = result.map_err(|e| Error::Refused(describe(e)))?;
        check_output(&vectors, inputs.len(), self.info.dimension as usize)?;
        Ok(Embeddings {
            vectors,
            fuel_used,
            memory_bytes: sandbox.limiter.memory_in_use as u64,
            logs: sandbox.log.records,
            logs_dropped: sandbox.log.dropped,
            stdout: sandbox.stdout.text(),
            stderr: sandbox.stderr.text(),
        })
    }

    fn check_inputs(&self, inputs: &[Vec<u8>]) -> Result<(), Error> {
        if inputs.len() > MAX_BATCH {
            return Err(Error::InvalidInput(format!(
                "batch of {} inputs exceeds the limit of {MAX_BATCH}",
                inputs.len()
            )));
        }
        let max = self.info.max_input_bytes as usize;
        match inputs.iter().position(|input| input.len() > max) {
            Some(i) => Err(Error::InvalidInput(format!(
                "input {i} has {} bytes; {} accepts at most {max}",
                inputs[i].len(),
                self.info.name
            ))),
            None => Ok(()),
        }
    }
}

/// Instantiates the encoder in a fresh store and runs `call` on it,
/// turning every failure into an [`Error`]. Returns the call's result, the
/// fuel used, and the store's data for the logs and captured output.
fn run<R>(
    runtime: &Runtime,
    pre: &bindings::EncoderPre<Sandbox>,
    models: &PackageModels,
    limits: &Limits,
    seed: Seed,
    call: impl FnOnce(&bindings::Encoder, &mut Store<Sandbox>) -> wasmtime::Result<R>,
) -> Result<(R, u64, Sandbox), Error> {
    limits.check_initial_memory(pre.instance_pre().component())?;
    let mut store = runtime.new_store(models.clone(), limits, seed)?;
    let value = match pre.instantiate(&mut store) {
        Ok(encoder) => {
            call(&encoder, &mut store).map_err(|e| classify_call(e, store.data(), limits))?
        }
        Err(e) => return Err(classify(e, store.data(), limits)),
    };
    let fuel_used = match runtime.fuel_metering() {
        true => limits.fuel - store.get_fuel().unwrap_or(0),
        false => 0,
    };
    Ok((value, fuel_used, store.into_data()))
}

/// Names the failure of a call of an export. Besides what [`classify`]
/// tells apart, an error raised while no wasm was running is the canonical
/// ABI refusing what the guest handed back (invalid UTF-8, a list out of
/// bounds or larger than a well-formed answer can be): the guest's fault.
pub(crate) fn classify_call(error: wasmtime::Error, sandbox: &Sandbox, limits: &Limits) -> Error {
    let during_wasm = error.downcast_ref::<LocalFailure>().is_some()
        || raised_by_wasm(&error)
        || sandbox.limiter.refused;
    if during_wasm {
        classify(error, sandbox, limits)
    } else {
        Error::InvalidOutput(InvalidOutput::Malformed(error.root_cause().to_string()))
    }
}

/// Whether `error` ended running wasm: a trap, an exit, or a host
/// function's error (which carries the wasm backtrace it interrupted).
fn raised_by_wasm(error: &wasmtime::Error) -> bool {
    error.downcast_ref::<Trap>().is_some()
        || error.downcast_ref::<wasmtime_wasi::I32Exit>().is_some()
        || error.downcast_ref::<wasmtime::WasmBacktrace>().is_some()
}

/// Whether instantiating went past the store's count of instances,
/// memories or tables ([`Limits::max_instances`]). wasmtime checks those
/// counts itself, without the limiter's growth hooks, so only its words
/// (the version is pinned; a test holds them) tell this deterministic
/// refusal apart from a failure of this host.
fn too_many_instances(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|e| e.to_string().starts_with("resource limit exceeded: "))
}

/// Names the failure of a call: which limit was hit, or what trapped.
pub(crate) fn classify(error: wasmtime::Error, sandbox: &Sandbox, limits: &Limits) -> Error {
    if let Some(local) = error.downcast_ref::<LocalFailure>() {
        return Error::Host(local.to_string());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return Error::FuelExhausted { limit: limits.fuel },
        Some(Trap::Interrupt) => {
            return Error::Timeout {
                after: limits.timeout.min(Limits::MAX_TIMEOUT),
            };
        }
        Some(Trap::StackOverflow) => return Error::StackExhausted,
        _ => {}
    }
    if sandbox.limiter.refused {
        return Error::MemoryLimit {
            limit_bytes: limits.max_memory_bytes,
        };
    }
    if too_many_instances(&error) {
        return Error::InstanceLimit {
            limit: limits.max_instances,
        };
    }
    if raised_by_wasm(&error) {
        let message = match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => format!("the encoder exited with status {}", exit.0),
            // The full error leads with a wasm backtrace; the root cause is
            // what happened.
            None => error.root_cause().to_string(),
        };
        Error::Trap {
            message,
            stderr: sandbox.stderr.text(),
        }
    } else {
        Error::Host(format!("{error:#}"))
    }
}

/// The encoder's own error, its message cut to [`MAX_REFUSAL_BYTES`].
fn describe(error: wit::EncodeError) -> String {
    let (prefix, reason) = match &error {
        wit::EncodeError::InvalidInput(i) => (format!("input {}: ", i.index), &i.reason),
        wit::EncodeError::Internal(reason) => (String::new(), reason),
    };
    let mut end = reason.len().min(MAX_REFUSAL_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if end < reason.len() { " [cut]" } else { "" };
    format!("{prefix}{}{cut}", &reason[..end])
}

fn check_output(
    vectors: &[Vec<f32>],
    inputs: usize,
    dimension: usize,
) -> Result<(), InvalidOutput> {
    if vectors.len() != inputs {
        return Err(InvalidOutput::WrongCount {
            expected: inputs,
            actual: vectors.len(),
        });
    }
    for (index, vector) in vectors.iter().enumerate() {
        if vector.len() != dimension {
            return Err(InvalidOutput::WrongDimension {
                index,
                expected: dimension,
                actual: vector.len(),
            });
        }
        if let Some(position) = vector.iter().position(|x| !x.is_finite()) {
            return Err(InvalidOutput::NonFinite {
                index,
                position,
                value: vector[position],
            });
        }
    }
    Ok(())
}

impl EncoderInfo {
    /// Converts the WIT record, refusing values no encoder may declare.
    fn check(info: wit::EncoderInfo) -> Result<Self, Error> {
        let invalid = |reason: String| Err(Error::InvalidInfo(reason));
        if info.name.is_empty() || info.name.len() > 128 {
            return invalid(format!(
                "name must be 1 to 128 bytes, got {}",
                info.name.len()
            ));
        }
        if info.version.is_empty() || info.version.len() > 64 {
            return invalid(format!(
                "version must be 1 to 64 bytes, got {}",
                info.version.len()
            ));
        }
        if info.dimension == 0 || info.dimension > MAX_DIMENSION {
            return invalid(format!(
                "dimension must be 1 to {MAX_DIMENSION}, got {}",
                info.dimension
            ));
        }
        if info.max_input_bytes == 0 {
            return invalid("max-input-bytes must be at least 1".into());
        }
        Ok(EncoderInfo {
            name: info.name,
            version: info.version,
            dimension: info.dimension,
            modality: match info.modality {
                wit::Modality::Text => Modality::Text,
                wit::Modality::Image => Modality::Image,
                wit::Modality::Audio => Modality::Audio,
                wit::Modality::Bytes => Modality::Bytes,
            },
            max_input_bytes: info.max_input_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_checks_name_the_first_problem() {
        let ok = vec![vec![0.0; 3]; 2];
        assert!(check_output(&ok, 2, 3).is_ok());
        assert!(matches!(
            check_output(&ok, 3, 3),
            Err(InvalidOutput::WrongCount {
                expected: 3,
                actual: 2
            })
        ));
        assert!(matches!(
            check_output(&[vec![0.0; 3], vec![0.0; 2]], 2, 3),
            Err(InvalidOutput::WrongDimension {
                index: 1,
                expected: 3,
                actual: 2
            })
        ));
        assert!(matches!(
            check_output(&[vec![0.0, f32::INFINITY, 0.0]], 1, 3),
            Err(InvalidOutput::NonFinite {
                index: 0,
                position: 1,
                ..
            })
        ));
    }
}
