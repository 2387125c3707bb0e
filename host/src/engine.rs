//! The process-wide wasmtime engine, configured for deterministic execution.

use crate::cache::{CacheOutcome, CompiledCache};
use crate::digest::Digest;
use crate::encoder::Encoder;
use crate::inference::{self, ModelCache, ModelError, PackageModels};
use crate::package::VerifiedPackage;
use crate::sandbox::{self, Sandbox};
use crate::{Error, Limits, log, preinit};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the wall-clock safety net advances the epoch.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Encoder stores that can be alive at once in one engine.
pub(crate) const POOLED_INSTANCES: u32 = 64;

/// Compiles and runs encoder components.
///
/// One engine serves a whole process; cloning it is cheap. Its
/// configuration is part of consensus: fuel metering on, NaN
/// canonicalisation on, threads off, deterministic relaxed SIMD.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: wasmtime::Engine,
    linker: Linker<Sandbox>,
    models: ModelCache,
    fuel_metering: bool,
}

impl Engine {
    /// An engine with the deterministic configuration every validator uses.
    pub fn new() -> Result<Engine, Error> {
        Engine::build(true)
    }

    /// The same engine without fuel metering, to measure what metering
    /// costs. Calls on it ignore [`Limits::fuel`] and report no fuel used:
    /// never use it where cost must be agreed on.
    pub fn without_fuel_metering() -> Result<Engine, Error> {
        Engine::build(false)
    }

    fn build(fuel_metering: bool) -> Result<Engine, Error> {
        let host = |e: wasmtime::Error| Error::Host(format!("{e:#}"));
        let engine = wasmtime::Engine::new(&config(fuel_metering)).map_err(host)?;
        let mut linker = Linker::new(&engine);
        sandbox::add_wasi_to_linker(&mut linker).map_err(host)?;
        log::add_to_linker(&mut linker).map_err(host)?;
        inference::add_to_linker(&mut linker).map_err(host)?;
        start_epoch_ticker(&engine)
            .map_err(|e| Error::Host(format!("cannot start the epoch thread: {e}")))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                engine,
                linker,
                models: ModelCache::default(),
                fuel_metering,
            }),
        })
    }

    /// Compiles a component, checks that it implements the `encoder` world
    /// and reads its [`crate::EncoderInfo`].
    pub fn load(&self, component: &[u8]) -> Result<Encoder, Error> {
        let compiled = self.compile(component, &Limits::default())?;
        Encoder::link(
            self.clone(),
            &compiled,
            PackageModels::default(),
            &Limits::default(),
        )
    }

    /// Like [`Engine::load`], but takes the compiled code from `cache` when
    /// this node compiled the component before, and stores it otherwise.
    pub fn load_cached(
        &self,
        component: &[u8],
        cache: &CompiledCache,
    ) -> Result<(Encoder, CacheOutcome), Error> {
        let (compiled, outcome) = self.compile_cached(component, cache, &Limits::default())?;
        let encoder = Encoder::link(
            self.clone(),
            &compiled,
            PackageModels::default(),
            &Limits::default(),
        )?;
        Ok((encoder, outcome))
    }

    /// Loads a verified package: admits its ONNX models (blobs named
    /// `*.onnx`, see [`crate::model`]) and compiles them into inference
    /// sessions, loads its component, and checks that the component is the
    /// encoder the manifest describes. Start-up work (pre-initialisation and
    /// `info()`) runs on the manifest's fuel limit.
    pub fn load_package(
        &self,
        package: &VerifiedPackage,
        cache: Option<&CompiledCache>,
    ) -> Result<Encoder, Error> {
        let mut models = BTreeMap::new();
        for (model, bytes) in package.models().filter(|(m, _)| m.name.ends_with(".onnx")) {
            let session =
                self.inner
                    .models
                    .get(&model.blob.digest, bytes)
                    .map_err(|e| match e {
                        ModelError::Host(e) => Error::Host(e),
                        // Whether ONNX Runtime would refuse it elsewhere (or
                        // with more memory) is unknown: not the model's fault.
                        e @ ModelError::Runtime => {
                            Error::Host(format!("model `{}`: {e}", model.name))
                        }
                        e @ ModelError::Refused(_) => Error::InvalidModel {
                            name: model.name.clone(),
                            message: e.to_string(),
                        },
                    })?;
            models.insert(model.blob.digest, session);
        }
        let limits = Limits {
            fuel: package.manifest().fuel_limit,
            ..Limits::default()
        };
        let compiled = match cache {
            Some(cache) => self.compile_cached(package.component(), cache, &limits)?.0,
            None => self.compile(package.component(), &limits)?,
        };
        let encoder = Encoder::link(self.clone(), &compiled, Arc::new(models), &limits)?;
        package
            .manifest()
            .check_info(encoder.info())
            .map_err(Error::ManifestMismatch)?;
        Ok(encoder)
    }

    /// Pre-initialises (under `limits`) and compiles `wasm`.
    fn compile(&self, wasm: &[u8], limits: &Limits) -> Result<Component, Error> {
        Component::new(&self.inner.engine, self.preinitialized(wasm, limits)?)
            .map_err(|e| Error::Compile(format!("{e:#}")))
    }

    /// Like [`Engine::compile`], through `cache`: keyed by the digest of
    /// `wasm`, holding the compiled snapshot.
    fn compile_cached(
        &self,
        wasm: &[u8],
        cache: &CompiledCache,
        limits: &Limits,
    ) -> Result<(Component, CacheOutcome), Error> {
        cache.component(&self.inner.engine, &Digest::of(wasm), || {
            self.preinitialized(wasm, limits)
        })
    }

    /// `wasm` with its start-up done, or as it is if it cannot be
    /// pre-initialised.
    fn preinitialized(&self, wasm: &[u8], limits: &Limits) -> Result<Vec<u8>, Error> {
        Ok(preinit::preinitialize(self, wasm, limits)?.unwrap_or_else(|| wasm.to_vec()))
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<Sandbox> {
        &self.inner.linker
    }

    /// The epoch deadline, in ticks, for a wall-clock limit.
    pub(crate) fn epoch_ticks(&self, timeout: Duration) -> u64 {
        let timeout = timeout.min(Limits::MAX_TIMEOUT);
        u64::try_from(timeout.as_millis() / EPOCH_TICK.as_millis() + 1).unwrap_or(u64::MAX)
    }

    pub(crate) fn fuel_metering(&self) -> bool {
        self.inner.fuel_metering
    }
}

fn config(fuel_metering: bool) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOLED_INSTANCES)
        .total_core_instances(POOLED_INSTANCES * 4)
        .total_memories(POOLED_INSTANCES * 2)
        .total_tables(POOLED_INSTANCES * 4)
        .max_memory_size(Limits::MEMORY_CEILING as usize)
        .table_elements(100_000);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(fuel_metering)
        .epoch_interruption(true)
        .cranelift_nan_canonicalization(true)
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_threads(false)
        .shared_memory(false)
        .wasm_relaxed_simd(true)
        .relaxed_simd_deterministic(true)
        .parallel_compilation(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the
/// engine lives, so that stores can carry a wall-clock deadline.
fn start_epoch_ticker(engine: &wasmtime::Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("soma-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(())
}
