//! WASI 0.2 as the sandbox grants it: wasmtime-wasi over the closed
//! [`WasiCtx`](wasmtime_wasi::WasiCtx) of [`Sandbox`], with the clock frozen,
//! `poll` charged per handle, and every call billed [`WASI_CALL_FUEL`].

use crate::sandbox::{FIXED_MONOTONIC_CLOCK, Sandbox, charge_fuel};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, WasmList};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{WasiCtxView, WasiView};

/// Fuel every WASI call costs on top of the bytes it handles: the host's
/// work of crossing into wasmtime-wasi and back, which otherwise only the
/// few instructions around the call would pay for.
pub const WASI_CALL_FUEL: u64 = 256;

impl WasiView for Sandbox {
    /// wasmtime-wasi asks for the context once per call of a WASI
    /// function, so this is where every such call is billed.
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.debt.add(WASI_CALL_FUEL);
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds WASI 0.2 to `linker`, closed as described in [`crate::sandbox`].
pub(super) fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    // wasmtime-wasi sleeps on the real clock, and a guest subscribing to a
    // far-away instant would block the host thread where epoch interruption
    // cannot reach it. Replace the monotonic clock with a frozen one.
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<Sandbox, FrozenClock<'static>>(linker, |s| {
        s.debt.add(WASI_CALL_FUEL);
        FrozenClock(&mut s.table)
    })?;
    // wasmtime-wasi's poll works through every handle of the list, which a
    // guest can make millions long for a few instructions: this one charges
    // per handle first.
    linker.instance(POLL_INTERFACE)?.func_wrap(
        "poll",
        |mut store: wasmtime::StoreContextMut<'_, Sandbox>,
         (list,): (WasmList<Resource<DynPollable>>,)| {
            let handles = list.len() as u64;
            charge_fuel(
                &mut store,
                POLL_FUEL_PER_HANDLE.saturating_mul(handles) + 1_000,
            )?;
            if handles == 0 {
                wasmtime::bail!("empty poll list");
            }
            // Lifting checks that each handle is a pollable the guest holds.
            for handle in list.iter(&mut store)? {
                handle?;
            }
            // Every pollable of this sandbox is ready at once: clocks are
            // frozen, output is captured, stdin is empty, there are no
            // sockets or files.
            Ok(((0..handles as u32).collect::<Vec<u32>>(),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The `wasi:io/poll` interface wasmtime-wasi implements.
const POLL_INTERFACE: &str = "wasi:io/poll@0.2.12";

/// Fuel charged per handle in a `poll` list.
const POLL_FUEL_PER_HANDLE: u64 = 256;

/// `wasi:clocks/monotonic-clock` with time standing still.
struct FrozenClock<'a>(&'a mut ResourceTable);

impl HasData for FrozenClock<'static> {
    type Data<'a> = FrozenClock<'a>;
}

impl monotonic_clock::Host for FrozenClock<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(FIXED_MONOTONIC_CLOCK)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1)
    }

    fn subscribe_instant(
        &mut self,
        _when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.elapsed()
    }

    fn subscribe_duration(
        &mut self,
        _duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.elapsed()
    }
}

impl FrozenClock<'_> {
    /// Every wait is over as soon as it starts.
    fn elapsed(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let ready = self.0.push(Elapsed)?;
        wasmtime_wasi::p2::subscribe(self.0, ready)
    }
}

struct Elapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for Elapsed {
    async fn ready(&mut self) {}
}
