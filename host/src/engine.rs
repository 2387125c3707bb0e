//! The process-wide wasmtime engine, configured for deterministic execution.

use crate::cache::{CacheOutcome, CompiledCache};
use crate::digest::Digest;
use crate::encoder::Encoder;
use crate::package::VerifiedPackage;
use crate::sandbox::{self, Sandbox};
use crate::{Error, Limits, log};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the wall-clock safety net advances the epoch.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Encoder stores that can be alive at once in one engine.
const POOLED_INSTANCES: u32 = 64;

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
        start_epoch_ticker(&engine)
            .map_err(|e| Error::Host(format!("cannot start the epoch thread: {e}")))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                engine,
                linker,
                fuel_metering,
            }),
        })
    }

    /// Compiles a component, checks that it implements the `encoder` world
    /// and reads its [`crate::EncoderInfo`].
    pub fn load(&self, component: &[u8]) -> Result<Encoder, Error> {
        let component = Component::new(&self.inner.engine, component)
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        Encoder::link(self.clone(), &component, &Limits::default())
    }

    /// Like [`Engine::load`], but takes the compiled code from `cache` when
    /// this node compiled the component before, and stores it otherwise.
    pub fn load_cached(
        &self,
        component: &[u8],
        cache: &CompiledCache,
    ) -> Result<(Encoder, CacheOutcome), Error> {
        let (compiled, outcome) =
            cache.component(&self.inner.engine, &Digest::of(component), component)?;
        Ok((
            Encoder::link(self.clone(), &compiled, &Limits::default())?,
            outcome,
        ))
    }

    /// Loads the component of a verified package and checks that it is the
    /// encoder the manifest describes.
    pub fn load_package(
        &self,
        package: &VerifiedPackage,
        cache: Option<&CompiledCache>,
    ) -> Result<Encoder, Error> {
        let encoder = match cache {
            Some(cache) => self.load_cached(package.component(), cache)?.0,
            None => self.load(package.component())?,
        };
        package
            .manifest()
            .check_info(encoder.info())
            .map_err(Error::ManifestMismatch)?;
        Ok(encoder)
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<Sandbox> {
        &self.inner.linker
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
