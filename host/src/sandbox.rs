//! The closed, deterministic world one encoder call runs in.
//!
//! Rust's standard library makes every `wasm32-wasip2` component import WASI
//! (cli, filesystem, random, clocks, io, sockets), so the host must link it.
//! It links it *closed*: no preopened directories, no environment, no
//! arguments, no sockets or name lookup, stdin empty, clocks frozen at fixed
//! values, randomness from a generator seeded by the call, and stdout and
//! stderr captured up to a cap. Everything an encoder can observe is a
//! function of its inputs and the seed.
//!
//! This module holds the per-call data ([`Sandbox`]) and how host work is
//! paid for: directly ([`charge_fuel`]) by imports that can reach the store,
//! and as [`Debt`] by WASI implementations that cannot, settled as each host
//! call returns ([`settle_debt`]). The imports themselves are linked by the
//! `imports` module.

use crate::inference::PackageModels;
use crate::limits::{HOST_FUEL_PER_BYTE, Limiter, Limits};
use crate::log::LogBuffer;
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, StoreContextMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder};

/// Wall-clock time every encoder sees: 2026-01-01T00:00:00Z.
pub const FIXED_WALL_CLOCK: Duration = Duration::from_secs(1_767_225_600);

/// Monotonic-clock reading every encoder sees, in nanoseconds. Time does not
/// pass inside the sandbox: the clock never moves and sleeps end at once.
pub const FIXED_MONOTONIC_CLOCK: u64 = 0;

/// Bytes of stdout (and, separately, stderr) kept per call; later writes
/// succeed but are discarded.
pub const OUTPUT_CAPTURE_BYTES: usize = 64 * 1024;

/// Bytes one write to stdout or stderr may carry: what `check-write`
/// permits. A write beyond its permit traps (WASI says the guest must ask).
const WRITE_PERMIT: usize = 64 * 1024;

/// Bytes stdout (and, separately, stderr) accept per call, kept or not;
/// writing more traps.
pub const MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// Largest single request for random bytes; larger requests trap.
const MAX_RANDOM_REQUEST: u64 = 1 << 20;

/// Charges `cost` units of fuel for work the host does on a guest's behalf,
/// trapping with [`wasmtime::Trap::OutOfFuel`] if the guest cannot pay. On
/// an engine without metering this does nothing.
pub(crate) fn charge_fuel(
    store: &mut StoreContextMut<'_, Sandbox>,
    cost: u64,
) -> wasmtime::Result<()> {
    let Ok(fuel) = store.get_fuel() else {
        return Ok(());
    };
    if cost > fuel {
        store.set_fuel(0)?;
        return Err(wasmtime::Trap::OutOfFuel.into());
    }
    store.set_fuel(fuel - cost)
}

/// The store's call hook: the guest pays the [`Debt`] a host call ran up
/// as the call returns, or earlier if the host calls back into wasm first
/// (to allocate a result), so host work is paid for as it is done and a
/// guest that only calls WASI runs out of fuel as surely as one that
/// computes.
///
/// Fuel is only ever changed on these two transitions: compiled wasm keeps
/// its fuel counter in a register across wasmtime's own libcalls
/// (`memory.grow`, `table.grow`) and writes it back after them, so a change
/// made while one runs would be lost. Libcalls run up no debt, and any debt
/// is settled before wasm runs again, so none is owed when they return.
pub(crate) fn settle_debt(
    mut store: StoreContextMut<'_, Sandbox>,
    hook: CallHook,
) -> wasmtime::Result<()> {
    if !matches!(hook, CallHook::ReturningFromHost | CallHook::CallingWasm) {
        return Ok(());
    }
    match store.data().debt.take() {
        0 => Ok(()),
        owed => charge_fuel(&mut store, owed),
    }
}

/// Fuel owed for host work done inside WASI implementations (each call,
/// output written, random bytes generated), which cannot reach the store to
/// charge it there. Each such piece of work is bounded per request, and
/// [`settle_debt`] collects it when the call returns.
#[derive(Clone, Default)]
pub(crate) struct Debt(Arc<AtomicU64>);

impl Debt {
    /// Records `fuel` owed.
    pub(crate) fn add(&self, fuel: u64) {
        self.0.fetch_add(fuel, Ordering::Relaxed);
    }

    /// Records `bytes` handled for the guest.
    pub(crate) fn add_bytes(&self, bytes: usize) {
        self.add((bytes as u64).saturating_mul(HOST_FUEL_PER_BYTE));
    }

    /// Takes what is owed, leaving nothing.
    pub(crate) fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

/// The seed of one call's randomness. Equal seeds give equal random streams,
/// which keeps guests whose work depends on randomness (hash maps, for
/// instance) deterministic, fuel included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seed(pub [u8; 32]);

impl From<u64> for Seed {
    fn from(seed: u64) -> Self {
        Seed(blake3::derive_key(
            "soma/sandbox-seed/v1",
            &seed.to_le_bytes(),
        ))
    }
}

impl Seed {
    fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("soma/sandbox-random/v1");
        hasher.update(&self.0).update(purpose.as_bytes());
        *hasher.finalize().as_bytes()
    }
}

/// Per-call store data: the WASI context and everything the host records.
pub(crate) struct Sandbox {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// The models of the encoder's package, by digest.
    pub(crate) models: PackageModels,
    /// Inference sessions the guest holds open.
    pub(crate) open_sessions: u32,
    pub(crate) limiter: Limiter,
    pub(crate) log: LogBuffer,
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
    /// Fuel owed for WASI calls, output written and random bytes drawn.
    pub(crate) debt: Debt,
    /// When the call's wall-clock budget ends; inference runs stop there too.
    pub(crate) deadline: Instant,
}

impl Sandbox {
    /// A fresh, closed sandbox for one call.
    pub(crate) fn new(seed: Seed, limits: &Limits, models: PackageModels) -> Self {
        let debt = Debt::default();
        let stdout = CapturedOutput::new(OUTPUT_CAPTURE_BYTES, debt.clone());
        let stderr = CapturedOutput::new(OUTPUT_CAPTURE_BYTES, debt.clone());
        let insecure_seed = seed.derive("insecure-seed");
        let random = |purpose| Metered {
            rng: ChaCha20Rng::from_seed(seed.derive(purpose)),
            debt: debt.clone(),
        };
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FixedWallClock)
            .secure_random(random("secure"))
            .insecure_random(random("insecure"))
            .insecure_random_seed(u128::from_le_bytes(insecure_seed[..16].try_into().unwrap()))
            .max_random_size(MAX_RANDOM_REQUEST)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Sandbox {
            wasi,
            table: ResourceTable::new(),
            models,
            open_sessions: 0,
            limiter: Limiter::new(limits),
            log: LogBuffer::default(),
            stdout,
            stderr,
            debt,
            deadline: Instant::now() + limits.timeout.min(Limits::MAX_TIMEOUT),
        }
    }
}

/// A random generator that bills the guest for every byte it draws.
struct Metered {
    rng: ChaCha20Rng,
    debt: Debt,
}

impl rand::TryRng for Metered {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.debt.add_bytes(4);
        self.rng.try_next_u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.debt.add_bytes(8);
        self.rng.try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.debt.add_bytes(dst.len());
        self.rng.try_fill_bytes(dst)
    }
}

struct FixedWallClock;

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        FIXED_WALL_CLOCK
    }
}

/// An in-memory stdout/stderr that keeps the first `cap` bytes and drops
/// the rest, so a chatty encoder neither fails nor grows the host. Every
/// byte is billed to the guest, and a call may write at most
/// [`MAX_OUTPUT_BYTES`].
#[derive(Clone)]
pub(crate) struct CapturedOutput(Arc<Mutex<Capture>>);

struct Capture {
    bytes: Vec<u8>,
    cap: usize,
    dropped: u64,
    /// What the last `check-write` permitted and no write has used yet.
    permit: usize,
    debt: Debt,
}

impl CapturedOutput {
    fn new(cap: usize, debt: Debt) -> Self {
        CapturedOutput(Arc::new(Mutex::new(Capture {
            bytes: Vec::new(),
            cap,
            dropped: 0,
            permit: 0,
            debt,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Capture> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps what fits of `data`, bills it, and refuses it whole if the
    /// call's output allowance is spent.
    fn append(&self, data: &[u8]) -> Result<(), String> {
        let mut capture = self.lock();
        let written = capture.bytes.len() as u64 + capture.dropped;
        if written + data.len() as u64 > MAX_OUTPUT_BYTES {
            return Err(format!(
                "wrote more than {MAX_OUTPUT_BYTES} bytes of output in one call"
            ));
        }
        capture.debt.add_bytes(data.len());
        let keep = data.len().min(capture.cap - capture.bytes.len());
        capture.bytes.extend_from_slice(&data[..keep]);
        capture.dropped += (data.len() - keep) as u64;
        Ok(())
    }

    /// What was kept, lossily decoded, with a note if anything was dropped.
    pub(crate) fn text(&self) -> String {
        let capture = self.lock();
        let mut text = String::from_utf8_lossy(&capture.bytes).into_owned();
        if capture.dropped > 0 {
            text += &format!("\n[{} more bytes dropped]", capture.dropped);
        }
        text
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let permit = std::mem::take(&mut self.lock().permit);
        if bytes.len() > permit {
            return Err(StreamError::trap(&format!(
                "wrote {} bytes where check-write permitted {permit}",
                bytes.len()
            )));
        }
        self.append(&bytes).map_err(|e| StreamError::trap(&e))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.lock().permit = WRITE_PERMIT;
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_keeps_the_head_and_counts_the_rest() {
        let debt = Debt::default();
        let out = CapturedOutput::new(4, debt.clone());
        out.append(b"abc").unwrap();
        out.append(b"defg").unwrap();
        assert_eq!(out.text(), "abcd\n[3 more bytes dropped]");
        assert_eq!(debt.take(), 7 * crate::HOST_FUEL_PER_BYTE);
    }

    #[test]
    fn a_write_beyond_its_permit_traps() {
        let mut out = CapturedOutput::new(4, Debt::default());
        assert!(out.write(Bytes::from_static(b"x")).is_err());
        let permit = out.check_write().unwrap();
        assert!(out.write(Bytes::from(vec![0; permit + 1])).is_err());
        out.check_write().unwrap();
        out.write(Bytes::from(vec![0; permit])).unwrap();
        // A permit is used once.
        assert!(out.write(Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn seeds_derive_distinct_streams() {
        let a = Seed::from(1);
        assert_eq!(a, Seed::from(1));
        assert_ne!(a, Seed::from(2));
        assert_ne!(a.derive("secure"), a.derive("insecure"));
    }
}
