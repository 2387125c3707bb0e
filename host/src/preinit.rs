//! Pre-initialisation: run an encoder's start-up work once and snapshot it.
//!
//! Every call runs in a fresh instance, so an encoder that parses a
//! tokenizer or builds tables at start-up would pay for it on every call
//! (tens of milliseconds and hundreds of millions of fuel for MiniLM's
//! `tokenizer.json`). Instead the host calls `info()` once, which makes the
//! SDK build the encoder (`Encoder::new`), and snapshots the instance's
//! memories and globals into a new component with `wasmtime-wizer`. Fresh
//! instances of the snapshot start with the encoder already built.
//!
//! The start-up run is itself sandboxed and deterministic (fixed seed, frozen
//! clocks, fuel), so every host produces the same snapshot bytes.

use crate::bindings;
use crate::encoder::{classify, classify_call};
use crate::inference::PackageModels;
use crate::runtime::Runtime;
use crate::sandbox::{Sandbox, Seed};
use crate::{Error, Limits};
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use wasmtime::Store;
use wasmtime::component::{Component, Instance, Lift, WasmList};
use wasmtime_wizer::ComponentInstanceState;
use wasmtime_wizer::Wizer;

/// The export run before the snapshot: `info()`, which builds the encoder.
const INIT_CALL: &str = "info()";

/// Most linear memory an encoder's start-up may leave for the snapshot: it
/// becomes part of the compiled code every instance starts from.
pub const MAX_SNAPSHOT_MEMORY: usize = 96 << 20;

/// Returns `wasm` with its start-up work done (run under `limits`), or
/// `None` when the component cannot be pre-initialised (it is then used as
/// it is, and any problem with it is reported when it is linked).
pub(crate) fn preinitialize(
    runtime: &Runtime,
    wasm: &[u8],
    limits: &Limits,
) -> Result<Option<Vec<u8>>, Error> {
    let mut wizer = Wizer::new();
    wizer.init_func(INIT_CALL).keep_init_func(true);
    // wizer asserts on inputs it does not expect; a hostile component must
    // get an error, never take the host down.
    let instrumented = catch_unwind(AssertUnwindSafe(|| wizer.instrument_component(wasm)));
    let Ok(Ok((cx, instrumented))) = instrumented else {
        return Ok(None);
    };
    // wizer writes invalid code for some valid components (it checks only
    // in debug builds, by panicking): as deterministic as a refusal, so it
    // is one, the same on every host.
    if !valid(&instrumented) {
        return Ok(None);
    }
    // The instrumentation's accessors (a function per memory and mutable
    // global, in a core instance of their own) may take the component past
    // the instance layout: it is then judged as it is. Any other failure
    // is this host's trouble (out of memory, say); going on without a
    // snapshot would run start-up in every call here alone and change what
    // this host attests.
    let component = match Component::new(runtime.engine(), &instrumented) {
        Ok(component) => component,
        Err(e) if format!("{e:#}").contains(crate::error::BEYOND_LAYOUT) => return Ok(None),
        Err(e) => return Err(Error::Compile(format!("pre-initialisation: {e:#}"))),
    };
    if component.get_export(None, "info").is_none() {
        return Ok(None);
    }
    // Whether it links is the component's doing; whether it can be
    // instantiated now (memory, pooled slots) is this host's.
    let incompatible = |e: wasmtime::Error| Error::Incompatible(format!("{e:#}"));
    let pre = runtime
        .linker()
        .instantiate_pre(&component)
        .and_then(bindings::EncoderPre::new)
        .map_err(incompatible)?;
    runtime.prepare(&component)?;
    limits.check_initial_memory(&component)?;
    let mut store = runtime.new_store(PackageModels::default(), limits, Seed::default())?;
    let instance = match pre.instance_pre().instantiate(&mut store) {
        Ok(instance) => instance,
        Err(e) => match classify(e, store.data(), limits) {
            // The instrumentation adds a core instance of its own, which the
            // snapshot drops: a component at the limit is judged as it is.
            Error::InstanceLimit { .. } => return Ok(None),
            other => return Err(other),
        },
    };
    // As for any call: what the canonical ABI refuses in the answer is
    // the guest's fault.
    let init = bindings::Encoder::new(&mut store, &instance)
        .and_then(|encoder| encoder.call_info(&mut store).map(drop));
    if let Err(e) = init {
        return Err(classify_call(e, store.data(), limits));
    }
    let memory = store.data().limiter.memory_in_use;
    // As deterministic as the start-up itself: the encoder's own limit.
    if memory > MAX_SNAPSHOT_MEMORY {
        return Err(Error::MemoryLimit {
            limit_bytes: MAX_SNAPSHOT_MEMORY as u64,
        });
    }
    // A growth `info()` was refused and coped with is no verdict about
    // the accessors below.
    store.data_mut().limiter.refused = false;
    let mut state = Snapshotting {
        store: &mut store,
        instance,
        failed: None,
        read: BTreeMap::new(),
    };
    let snapshot = catch_unwind(AssertUnwindSafe(|| {
        block_on(wizer.snapshot_component(&cx, &mut state))
    }));
    if let Some((accessor, e)) = state.failed {
        // An accessor of a memory grows it by a page to answer, which fails
        // alike on every host when the memory is at its maximum or at the
        // store's limit: the component is then used as it is. What only
        // this host met (a deadline, its own failure) is its trouble.
        return match classify(e, store.data(), limits) {
            e if e.is_deterministic() => Ok(None),
            e => Err(Error::Host(format!(
                "cannot snapshot the initialised encoder: reading {accessor}: {e}"
            ))),
        };
    }
    match snapshot {
        // wizer checks what it rewrote only in debug builds (by panicking).
        Ok(Ok(snapshot)) if valid(&snapshot) => Ok(Some(snapshot)),
        // wizer, a function of the component's bytes alone, refused,
        // asserted on or broke it: the same on every host.
        _ => Ok(None),
    }
}

/// Whether wizer's output is valid with the protocol's features.
fn valid(wasm: &[u8]) -> bool {
    wasmparser::Validator::new_with_features(crate::FEATURES)
        .validate_all(wasm)
        .is_ok()
}

/// What the snapshot reads the instance's state through: the accessors
/// wizer's instrumentation exported. The first failure of one is kept
/// (with the accessor's name), and the snapshot is thrown away.
struct Snapshotting<'a> {
    store: &'a mut Store<Sandbox>,
    instance: Instance,
    failed: Option<(String, wasmtime::Error)>,
    /// Bytes each memory accessor answered first: wizer reads a memory
    /// twice and indexes the second answer by the first.
    read: BTreeMap<String, usize>,
}

impl Snapshotting<'_> {
    fn call<R: Lift + 'static, T: Default>(
        &mut self,
        instance: &str,
        func: &str,
        with: impl FnOnce(&Store<Sandbox>, R) -> T,
    ) -> T {
        let store = &mut *self.store;
        let value = self
            .instance
            .get_export(&mut *store, None, instance)
            .and_then(|(_, exported)| self.instance.get_export(&mut *store, Some(&exported), func))
            .ok_or_else(|| wasmtime::format_err!("no export {instance}#{func}"))
            .and_then(|(_, index)| self.instance.get_typed_func::<(), (R,)>(&mut *store, index))
            .and_then(|f| f.call(&mut *store, ()));
        match value {
            Ok((value,)) => with(store, value),
            Err(e) => {
                self.failed.get_or_insert((format!("{instance}#{func}"), e));
                T::default()
            }
        }
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let accessor = format!("{instance}#{func}");
        let mut contents = Some(contents);
        let answered = self.call(instance, func, |store, list: WasmList<u8>| {
            let bytes = list.as_le_slice(store);
            if let Some(contents) = contents.take() {
                contents(bytes);
            }
            Some(bytes.len())
        });
        match answered {
            Some(len) => {
                self.read.entry(accessor).or_insert(len);
            }
            // A failed read (the snapshot is thrown away) still answers, as
            // long as the first, so that wizer goes on without asserting.
            None => {
                let len = self.read.get(&accessor).copied().unwrap_or(0);
                if let Some(contents) = contents {
                    contents(&vec![0; len]);
                }
            }
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, v| v)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, v| v)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, v: f32| v.to_bits())
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, v: f64| v.to_bits())
    }
}

/// Runs a future that never waits: everything above is synchronous, the
/// `async` only comes from wizer's interface.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_at_the_instance_limit_is_used_as_it_is_not_refused() {
        // The hash encoder instantiates three core modules; instrumented,
        // four.
        let runtime = Runtime::new(true).unwrap();
        let wasm = std::fs::read(soma_examples_artifacts::HASH_ENCODER).unwrap();
        let limits = |max_instances| Limits {
            max_instances,
            ..Limits::default()
        };
        assert!(
            preinitialize(&runtime, &wasm, &limits(4))
                .unwrap()
                .is_some()
        );
        assert!(
            preinitialize(&runtime, &wasm, &limits(3))
                .unwrap()
                .is_none()
        );
    }
}
