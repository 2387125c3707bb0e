//! The wasmtime side every call runs on: the deterministically configured
//! engine, the linker holding the host's imports, and fresh stores.

use crate::inference::PackageModels;
use crate::sandbox::{Sandbox, Seed, settle_debt};
use crate::{Error, Limits, imports};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Store,
    WasmFeatures,
};

/// How often the wall-clock safety net advances the epoch.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Encoder stores that can be alive at once in one engine.
pub(crate) const POOLED_INSTANCES: u32 = 64;

/// Bytes a guest may hand the host in one call of an import (a tensor, a
/// log message), copied or not: wasmtime refuses more before copying.
pub(crate) const HOSTCALL_BYTES: usize = 65 << 20;

/// Attempts at creating a component's memory images before giving up.
const IMAGE_ATTEMPTS: u32 = 5;

/// A wasmtime engine with the host's imports linked; cloning it is cheap.
#[derive(Clone)]
pub(crate) struct Runtime(Arc<Inner>);

struct Inner {
    engine: wasmtime::Engine,
    linker: Linker<Sandbox>,
    fuel_metering: bool,
    /// Failed attempts at creating memory images that a retry made good.
    image_retries: AtomicU64,
}

impl Runtime {
    /// A runtime with the deterministic configuration (fuel metering
    /// optional, to measure what it costs) and its epoch ticker running.
    pub(crate) fn new(fuel_metering: bool) -> Result<Runtime, Error> {
        let host = |e: wasmtime::Error| Error::Host(format!("{e:#}"));
        let engine = wasmtime::Engine::new(&config(fuel_metering)).map_err(host)?;
        let mut linker = Linker::new(&engine);
        imports::add_to_linker(&mut linker).map_err(host)?;
        start_epoch_ticker(&engine)
            .map_err(|e| Error::Host(format!("cannot start the epoch thread: {e}")))?;
        Ok(Runtime(Arc::new(Inner {
            engine,
            linker,
            fuel_metering,
            image_retries: AtomicU64::new(0),
        })))
    }

    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        &self.0.engine
    }

    pub(crate) fn linker(&self) -> &Linker<Sandbox> {
        &self.0.linker
    }

    pub(crate) fn fuel_metering(&self) -> bool {
        self.0.fuel_metering
    }

    /// Creates `component`'s copy-on-write memory images now, so that no
    /// instantiation has to. On Linux an image is a sealed memfd, and
    /// sealing fails (EBUSY) while the kernel holds transient references to
    /// its pages (migration, compaction): that says nothing about the
    /// component, so it is retried, and a failure that persists is this
    /// host's ([`Error::Host`]).
    pub(crate) fn prepare(&self, component: &Component) -> Result<(), Error> {
        let retries = with_retries(IMAGE_ATTEMPTS, || {
            component.initialize_copy_on_write_image()
        })?;
        self.0.image_retries.fetch_add(retries, Ordering::Relaxed);
        Ok(())
    }

    /// How many times [`Runtime::prepare`] had to retry.
    pub(crate) fn image_retries(&self) -> u64 {
        self.0.image_retries.load(Ordering::Relaxed)
    }

    /// A fresh store with a closed sandbox, `limits` applied (fuel, memory,
    /// wall-clock safety net) and randomness from `seed`.
    pub(crate) fn new_store(
        &self,
        models: PackageModels,
        limits: &Limits,
        seed: Seed,
    ) -> Result<Store<Sandbox>, Error> {
        let mut store = Store::new(&self.0.engine, Sandbox::new(seed, limits, models));
        store.limiter(|sandbox| &mut sandbox.limiter);
        store.set_hostcall_fuel(HOSTCALL_BYTES);
        store.call_hook(settle_debt);
        if self.0.fuel_metering {
            store
                .set_fuel(limits.fuel)
                .map_err(|e| Error::Host(e.to_string()))?;
        }
        store.set_epoch_deadline(epoch_ticks(limits.timeout));
        store.epoch_deadline_trap();
        Ok(store)
    }
}

/// Runs `create` until it succeeds, at most `attempts` times with growing
/// pauses (1, 4, 16, 64 ms, ...); returns how many attempts failed.
fn with_retries(
    attempts: u32,
    mut create: impl FnMut() -> wasmtime::Result<()>,
) -> Result<u64, Error> {
    let mut pause = Duration::from_millis(1);
    let mut failed = 0;
    loop {
        match create() {
            Ok(()) => return Ok(failed),
            Err(e) if failed + 1 < u64::from(attempts) => {
                failed += 1;
                tracing::warn!(
                    attempt = failed,
                    "cannot create a memory image, retrying: {e:#}"
                );
                std::thread::sleep(pause);
                pause *= 4;
            }
            Err(e) => {
                return Err(Error::Host(format!(
                    "cannot create the component's memory images ({attempts} attempts): {e:#}"
                )));
            }
        }
    }
}

/// The epoch deadline, in ticks, for a wall-clock limit.
fn epoch_ticks(timeout: Duration) -> u64 {
    let timeout = timeout.min(Limits::MAX_TIMEOUT);
    u64::try_from(timeout.as_millis() / EPOCH_TICK.as_millis() + 1).unwrap_or(u64::MAX)
}

/// Bytes of each table slot the pool resets in place instead of returning
/// to the kernel. A component's tables fit in a few pages, and without this
/// every fresh instance paid one `madvise` (with a TLB shootdown) per table
/// and page faults to touch them again: with it, one `madvise` per instance
/// is left (3 before). Linear memories stay fully decommitted: without
/// `PAGEMAP_SCAN` (see [`config`]) a kept region is reset by a blind copy
/// of its lowest bytes, which for a guest (stack at 1 MiB, heap above the
/// data) copies more than the faults cost.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Finished instances whose memory is returned to the kernel together.
const DECOMMIT_BATCH: usize = 8;

/// The WebAssembly features every host enables, and no others: a protocol
/// constant, since whether a component is valid decides whether its author
/// is slashed for it, so every validator must judge with the same set
/// rather than with its wasmtime build's defaults. WebAssembly 3.0 and the
/// component model, without threads (not deterministic), without GC types
/// and exceptions (the engine is built without a collector), and without
/// 64-bit memories and tables (the `soma:encoder` ABI addresses 32-bit
/// memory, and pre-initialisation cannot snapshot 64-bit memories).
pub const FEATURES: WasmFeatures = WasmFeatures::WASM3
    .union(WasmFeatures::COMPONENT_MODEL)
    .difference(
        WasmFeatures::THREADS
            .union(WasmFeatures::GC_TYPES)
            .union(WasmFeatures::EXCEPTIONS)
            .union(WasmFeatures::MEMORY64),
    );

fn config(fuel_metering: bool) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    // The layout of one instance decides which valid components load at
    // all (`Error::Layout`): every host sets it the same, explicitly, so
    // that no change of wasmtime's defaults moves the verdict.
    pool.max_memories_per_module(1)
        .max_tables_per_module(1)
        .max_core_instances_per_component(u32::MAX)
        .max_memories_per_component(u32::MAX)
        .max_tables_per_component(u32::MAX)
        .table_elements(100_000)
        .max_core_instance_size(1 << 20)
        .max_component_instance_size(1 << 20)
        .max_memory_size(Limits::MEMORY_CEILING as usize);
    pool.total_component_instances(POOLED_INSTANCES)
        .total_core_instances(POOLED_INSTANCES * 4)
        .total_memories(POOLED_INSTANCES * 2)
        .total_tables(POOLED_INSTANCES * 4)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        // Returning a finished instance's memory to the kernel is batched:
        // one `process_madvise` for eight instances, and so one TLB
        // shootdown where each `madvise` interrupted every other core (a
        // fresh hash-encoder instance went from 32 to 27 µs). A slot is
        // reused only once its memory is returned, so no instance sees
        // another's; the cost is up to eight finished instances' pages
        // held a while longer.
        .decommit_batch_size(DECOMMIT_BATCH)
        // Off (wasmtime 48's default, which may become `Auto`): with it,
        // a kept region is reset by copying back only its written pages,
        // which for a kept linear memory halved a fresh instance's cost;
        // but it skips a written page that is swapped out or being
        // migrated, leaving it for the next instance to read (wasmtime pull
        // request 14357), and lets a slot keep resident more than its
        // budget. It would apply to the tables' kept pages today, and to
        // memories' once they keep any.
        .pagemap_scan(Enabled::No);

    let mut config = Config::new();
    config
        .wasm_features(WasmFeatures::all(), false)
        .wasm_features(FEATURES, true)
        .consume_fuel(fuel_metering)
        .epoch_interruption(true)
        .cranelift_nan_canonicalization(true)
        .cranelift_opt_level(OptLevel::Speed)
        .shared_memory(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_image_failure_is_retried() {
        let mut calls = 0;
        let retries = with_retries(IMAGE_ATTEMPTS, || {
            calls += 1;
            match calls {
                1 | 2 => Err(wasmtime::format_err!("cannot add seals to the memfd")),
                _ => Ok(()),
            }
        });
        assert_eq!(retries.unwrap(), 2);
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_persistent_image_failure_is_the_hosts_after_every_attempt() {
        let mut calls = 0;
        let err = with_retries(IMAGE_ATTEMPTS, || {
            calls += 1;
            Err(wasmtime::format_err!("cannot add seals to the memfd"))
        })
        .unwrap_err();
        assert_eq!(calls, IMAGE_ATTEMPTS);
        match err {
            Error::Host(message) => assert!(message.contains("seals"), "{message}"),
            other => panic!("expected a host error, got {other:?}"),
        }
    }
}
