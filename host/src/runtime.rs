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
/// to the kernel: its lowest bytes, or with `PAGEMAP_SCAN` its first
/// written pages. A component's tables fit in a few pages, and without this
/// every fresh instance paid one `madvise` (with a TLB shootdown) per table
/// and page faults to touch them again.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Bytes of a finished instance's written linear memory that its slot
/// copies back from the image in place, where `PAGEMAP_SCAN` finds the
/// written pages (Linux 6.7 and later); written pages beyond it are
/// returned to the kernel. Kept pages stay mapped, so the next instance
/// in the slot takes no page faults on them, and nothing is unmapped, so
/// no other core's TLB needs flushing: a fresh hash-encoder instance went
/// from 16 to 8 µs, and jobs on two cores stopped waiting on each other's
/// shootdowns (a slot reused for another component still remaps its
/// image). At most this much written memory per pooled memory stays
/// resident (32 MiB for the pool's 128 memories, besides finished slots
/// whose pages wait in a decommit batch); pages an instance only read stay
/// mapped as well, but they are the image's own pages or the zero page,
/// shared.
///
/// Not more, because a kept page is copied back on every reset, whether
/// the instance wrote it again or not (the scan cannot tell): after one
/// batch of 32 MiniLM texts filled a 1 MiB budget, every later fresh
/// MiniLM instance in that slot cost 80 µs, against 19 µs with this one.
///
/// Without the ioctl, memories keep nothing: a kept region would be reset
/// by a blind copy of its lowest bytes, which for a guest (stack at 1 MiB,
/// heap above the data) copies more than the faults cost.
const MEMORY_KEEP_RESIDENT: usize = 256 << 10;

/// Regions of finished instances' memories and tables returned to the
/// kernel together.
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

/// Whether finished instances' written pages can be found with
/// `PAGEMAP_SCAN` and reset in place ([`MEMORY_KEEP_RESIDENT`]).
///
/// Not while KSM may merge this process's pages (systemd's `MemoryKSM=`
/// turns it on for a whole process): with the kernel's `use_zero_pages`,
/// a written page that the guest zeroed can be merged into the zero page,
/// which the scan skips as unwritten, so the next instance would read
/// zeros where its image has data. Merging is turned off for the process
/// first; where that fails, slots keep nothing.
fn pagemap_reset() -> bool {
    if !PoolingAllocationConfig::is_pagemap_scan_available() {
        return false;
    }
    // SAFETY: `prctl` with these arguments only changes this process's KSM
    // setting; the unused arguments must be zero.
    let merging_off = unsafe { libc::prctl(libc::PR_SET_MEMORY_MERGE, 0, 0, 0, 0) } == 0
        // A kernel without KSM knows no such option: nothing can merge.
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL);
    if !merging_off {
        tracing::warn!(
            "cannot turn off KSM merging for this process ({}): encoder instances \
             will return their memory to the kernel after every call, which is slower",
            std::io::Error::last_os_error()
        );
    }
    merging_off
}

fn config(fuel_metering: bool) -> Config {
    let pagemap = pagemap_reset();
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
        // one `process_madvise` (Linux 6.14 and later) for eight regions (a
        // few instances' memories and tables), and so one TLB shootdown
        // where each `madvise` interrupted every other core (a fresh
        // hash-encoder instance went from 32 to 27 µs, before slots kept
        // written pages). A slot is reused only once its memory is
        // returned, so no instance sees another's; the cost is up to eight
        // regions held a while longer.
        .decommit_batch_size(DECOMMIT_BATCH)
        // A slot keeps written pages only where `PAGEMAP_SCAN` finds them
        // (wasmtime as patched in third_party/wasmtime, whose scan also
        // returns written pages that are swapped out or being migrated to
        // the kernel, and whose slots keep no more than this budget).
        .pagemap_scan(if pagemap { Enabled::Yes } else { Enabled::No })
        .linear_memory_keep_resident(if pagemap { MEMORY_KEEP_RESIDENT } else { 0 });

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

    /// Swap space for a test's lifetime: the machine's own, or else a swap
    /// file this process adds (which needs root) and removes again. `Err`
    /// says why there is none.
    struct Swap {
        added: Option<std::ffi::CString>,
        _dir: tempfile::TempDir,
    }

    impl Swap {
        fn ensure() -> Result<Swap, String> {
            let dir =
                tempfile::tempdir().map_err(|e| format!("no directory for a swap file: {e}"))?;
            let active = std::fs::read_to_string("/proc/swaps")
                .map(|swaps| swaps.lines().count() > 1)
                .unwrap_or(false);
            if active {
                return Ok(Swap {
                    added: None,
                    _dir: dir,
                });
            }
            let file = dir.path().join("swap");
            std::fs::write(&file, vec![0u8; 16 << 20])
                .and_then(|()| {
                    std::fs::set_permissions(
                        &file,
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                })
                .map_err(|e| format!("cannot write a swap file: {e}"))?;
            let made = std::process::Command::new("mkswap")
                .arg(&file)
                .output()
                .map_err(|e| format!("cannot run mkswap: {e}"))?;
            if !made.status.success() {
                return Err(format!(
                    "mkswap failed: {}",
                    String::from_utf8_lossy(&made.stderr)
                ));
            }
            let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `path` is a NUL-terminated path that outlives the call.
            if unsafe { libc::swapon(path.as_ptr(), 0) } != 0 {
                return Err(format!(
                    "cannot add a swap file (this needs root, and a file system that \
                     takes swap files): {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(Swap {
                added: Some(path),
                _dir: dir,
            })
        }
    }

    impl Drop for Swap {
        fn drop(&mut self) {
            if let Some(path) = &self.added {
                // SAFETY: as for `swapon`.
                if unsafe { libc::swapoff(path.as_ptr()) } != 0 {
                    eprintln!(
                        "cannot remove the test's swap file {path:?}: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
    }

    fn page_size() -> usize {
        // SAFETY: `sysconf` has no preconditions.
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
    }

    /// The `/proc/self/pagemap` entries of the `pages` pages from `address`
    /// on, read at once.
    fn pagemap_entries(address: usize, pages: usize) -> Vec<u64> {
        use std::os::unix::fs::FileExt;
        let mut entries = vec![0u8; pages * 8];
        std::fs::File::open("/proc/self/pagemap")
            .and_then(|f| f.read_exact_at(&mut entries, (address / page_size() * 8) as u64))
            .expect("cannot read /proc/self/pagemap");
        entries
            .chunks_exact(8)
            .map(|entry| u64::from_le_bytes(entry.try_into().unwrap()))
            .collect()
    }

    /// Bits of a pagemap entry: the page is present, swapped out, or a page
    /// of a file (the image) or shared.
    const PAGE_PRESENT: u64 = 1 << 63;
    const PAGE_SWAPPED: u64 = 1 << 62;
    const PAGE_FILE: u64 = 1 << 61;

    fn swapped_out(address: usize) -> bool {
        pagemap_entries(address, 1)[0] & PAGE_SWAPPED != 0
    }

    fn present(address: usize) -> bool {
        pagemap_entries(address, 1)[0] & PAGE_PRESENT != 0
    }

    /// Offsets in the test module's memory: a page of its image, a page
    /// beyond the image, and a page nothing touches (far enough from both
    /// for 64 KiB pages or folios).
    const IN_IMAGE: usize = 0;
    const BEYOND_IMAGE: usize = 64 << 10;
    const UNTOUCHED: usize = 192 << 10;

    /// A module whose one memory (4 pages, exported) starts with 4 KiB of
    /// `IMAGE_BYTE`, so that it has a memory image.
    fn module_with_an_image() -> Vec<u8> {
        use wasm_encoder::{ConstExpr, DataSection, ExportKind, ExportSection, MemorySection};
        let mut memories = MemorySection::new();
        memories.memory(wasm_encoder::MemoryType {
            minimum: 4,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut exports = ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0);
        let mut data = DataSection::new();
        data.active(0, &ConstExpr::i32_const(0), vec![IMAGE_BYTE; 4096]);
        let mut module = wasm_encoder::Module::new();
        module.section(&memories).section(&exports).section(&data);
        module.finish()
    }

    const IMAGE_BYTE: u8 = 0x11;

    /// Whether this host's slots keep written pages, saying why not when
    /// they do not (the tests of kept pages then have nothing to test).
    fn slots_keep_pages() -> bool {
        let keep = pagemap_reset();
        if !keep {
            eprintln!(
                "skipped: slots keep nothing resident here (no PAGEMAP_SCAN, or KSM merging \
                 could not be turned off)"
            );
        }
        keep
    }

    /// Instantiates `module` until an instance lands in the slot whose
    /// memory is at `base` (any slot for `None`; finished slots come back in
    /// batches), hands it to `use_it`, and returns where its memory is.
    fn in_slot(
        engine: &wasmtime::Engine,
        module: &wasmtime::Module,
        base: Option<usize>,
        use_it: &mut dyn FnMut(&mut Store<()>, wasmtime::Memory),
    ) -> usize {
        for _ in 0..POOLED_INSTANCES * 4 {
            let mut store = Store::new(engine, ());
            let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
            let memory = instance.get_memory(&mut store, "memory").unwrap();
            let here = memory.data_ptr(&store) as usize;
            if base.is_none_or(|base| base == here) {
                use_it(&mut store, memory);
                return here;
            }
        }
        panic!("no later instance reused the first one's slot: this test means nothing");
    }

    /// The fresh-instance rule where a slot keeps written pages resident:
    /// a page written by one instance and then swapped out (so not present
    /// when the slot is reset) is still reset. wasmtime 48.0.8 as published
    /// skipped it, and this test read `0xAB` back.
    #[test]
    fn a_written_page_swapped_out_is_reset_for_the_next_instance() {
        if !slots_keep_pages() {
            return;
        }
        let _swap = match Swap::ensure() {
            Ok(swap) => swap,
            Err(why) => {
                eprintln!("skipped: no swap space to page a written page out: {why}");
                return;
            }
        };
        let engine = wasmtime::Engine::new(&config(false)).unwrap();
        let module = wasmtime::Module::new(&engine, module_with_an_image()).unwrap();

        let mut swapped = true;
        let base = in_slot(&engine, &module, None, &mut |store, memory| {
            let base = memory.data_ptr(&*store) as usize;
            for offset in [IN_IMAGE, BEYOND_IMAGE] {
                memory.data_mut(&mut *store)[offset] = 0xAB;
                // SAFETY: the page lies in the instance's memory, which is
                // mapped and which nothing else uses; paging it out keeps
                // its contents.
                let paged = unsafe {
                    libc::madvise(
                        (base + offset) as *mut libc::c_void,
                        page_size(),
                        libc::MADV_PAGEOUT,
                    )
                };
                assert_eq!(paged, 0, "{}", std::io::Error::last_os_error());
                swapped &= swapped_out(base + offset);
            }
        });
        if !swapped {
            eprintln!(
                "skipped: the kernel did not swap the pages out (swap full, or none for this cgroup)"
            );
            return;
        }
        in_slot(&engine, &module, Some(base), &mut |store, memory| {
            // Untouched pages are left alone: resetting them would copy
            // the whole budget back on every reset.
            assert!(!present(base + UNTOUCHED), "an untouched page was reset");
            let data = memory.data(&*store);
            assert_eq!(
                data[IN_IMAGE], IMAGE_BYTE,
                "a page of the image kept a write"
            );
            assert_eq!(
                data[BEYOND_IMAGE], 0,
                "a page beyond the image kept a write"
            );
        });
    }

    /// A slot never holds more written pages than its budget, even when an
    /// instance that grew its memory left kept pages above the next
    /// instance's size (hidden, where a scan of the accessible memory alone
    /// never found them again).
    #[test]
    fn a_slot_keeps_no_more_than_its_budget_of_written_pages() {
        if !slots_keep_pages() {
            return;
        }
        let page = page_size();
        let budget = MEMORY_KEEP_RESIDENT / page;
        let engine = wasmtime::Engine::new(&config(false)).unwrap();
        let module = wasmtime::Module::new(&engine, module_with_an_image()).unwrap();
        // The first grows its memory by 40 wasm pages and writes twice the
        // budget there: its reset keeps a budget's worth, which the next
        // instance (4 wasm pages) hides.
        let grown = 4 * (64 << 10);
        let base = in_slot(&engine, &module, None, &mut |store, memory| {
            memory.grow(&mut *store, 40).unwrap();
            for p in 0..2 * budget {
                memory.data_mut(&mut *store)[grown + p * page] = 0xAB;
            }
        });
        // The second writes every page of its own 4 wasm pages, below the
        // hidden ones.
        in_slot(&engine, &module, Some(base), &mut |store, memory| {
            for p in 0..grown / page {
                memory.data_mut(&mut *store)[p * page] = 0xCD;
            }
        });
        // Return every finished slot (batches) and look at the slot.
        for _ in 0..POOLED_INSTANCES * 4 {
            let mut store = Store::new(&engine, ());
            wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        }
        // Present and anonymous: written (nothing here only reads a page,
        // which could map the zero page).
        let written = pagemap_entries(base, grown / page + 2 * budget)
            .into_iter()
            .filter(|entry| entry & PAGE_PRESENT != 0 && entry & PAGE_FILE == 0)
            .count();
        assert!(
            written <= budget,
            "the slot holds {written} written pages, more than its budget of {budget}"
        );
        // And what the slot kept reads as the image again, also where a
        // grown memory exposes pages that were kept while hidden.
        in_slot(&engine, &module, Some(base), &mut |store, memory| {
            memory.grow(&mut *store, 40).unwrap();
            let data = memory.data(&*store);
            assert!(
                data[..4096].iter().all(|b| *b == IMAGE_BYTE),
                "the image was not restored"
            );
            assert!(
                data[4096..].iter().all(|b| *b == 0),
                "a kept page kept a write"
            );
        });
    }
}
