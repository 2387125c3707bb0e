//! The closed, deterministic world one encoder call runs in.
//!
//! Rust's standard library makes every `wasm32-wasip2` component import WASI
//! (cli, filesystem, random, clocks, io, sockets), so the host must link it.
//! It links it *closed*: no preopened directories, no environment, no
//! arguments, no sockets or name lookup, stdin empty, clocks frozen at fixed
//! values, randomness from a generator seeded by the call, and stdout and
//! stderr captured up to a cap. Everything an encoder can observe is a
//! function of its inputs and the seed.

use crate::inference::PackageModels;
use crate::limits::{Limiter, Limits};
use crate::log::LogBuffer;
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Wall-clock time every encoder sees: 2026-01-01T00:00:00Z.
pub const FIXED_WALL_CLOCK: Duration = Duration::from_secs(1_767_225_600);

/// Monotonic-clock reading every encoder sees, in nanoseconds. Time does not
/// pass inside the sandbox: the clock never moves and sleeps end at once.
pub const FIXED_MONOTONIC_CLOCK: u64 = 0;

/// Bytes of stdout (and, separately, stderr) kept per call; later writes
/// succeed but are discarded.
pub const OUTPUT_CAPTURE_BYTES: usize = 64 * 1024;

/// Largest single request for random bytes; larger requests trap.
const MAX_RANDOM_REQUEST: u64 = 1 << 20;

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
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// The models of the encoder's package, by digest.
    pub(crate) models: PackageModels,
    /// Inference sessions the guest holds open.
    pub(crate) open_sessions: u32,
    pub(crate) limiter: Limiter,
    pub(crate) log: LogBuffer,
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
}

impl Sandbox {
    /// A fresh, closed sandbox for one call.
    pub(crate) fn new(seed: Seed, limits: &Limits, models: PackageModels) -> Self {
        let stdout = CapturedOutput::new(OUTPUT_CAPTURE_BYTES);
        let stderr = CapturedOutput::new(OUTPUT_CAPTURE_BYTES);
        let insecure_seed = seed.derive("insecure-seed");
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FixedWallClock)
            .secure_random(ChaCha20Rng::from_seed(seed.derive("secure")))
            .insecure_random(ChaCha20Rng::from_seed(seed.derive("insecure")))
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
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds WASI 0.2 to `linker`, closed as described in the module docs.
pub(crate) fn add_wasi_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    // wasmtime-wasi sleeps on the real clock, and a guest subscribing to a
    // far-away instant would block the host thread where epoch interruption
    // cannot reach it. Replace the monotonic clock with a frozen one.
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<Sandbox, FrozenClock<'static>>(linker, |s| {
        FrozenClock(&mut s.table)
    })?;
    linker.allow_shadowing(false);
    Ok(())
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

/// An in-memory stdout/stderr that keeps the first `cap` bytes and silently
/// drops the rest, so a chatty encoder neither fails nor grows the host.
#[derive(Clone)]
pub(crate) struct CapturedOutput(Arc<Mutex<Capture>>);

struct Capture {
    bytes: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl CapturedOutput {
    fn new(cap: usize) -> Self {
        CapturedOutput(Arc::new(Mutex::new(Capture {
            bytes: Vec::new(),
            cap,
            dropped: 0,
        })))
    }

    fn append(&self, data: &[u8]) {
        let mut capture = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let keep = data.len().min(capture.cap - capture.bytes.len());
        capture.bytes.extend_from_slice(&data[..keep]);
        capture.dropped += (data.len() - keep) as u64;
    }

    /// What was kept, lossily decoded, with a note if anything was dropped.
    pub(crate) fn text(&self) -> String {
        let capture = self.0.lock().unwrap_or_else(|e| e.into_inner());
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
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
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
        let out = CapturedOutput::new(4);
        out.append(b"abc");
        out.append(b"defg");
        assert_eq!(out.text(), "abcd\n[3 more bytes dropped]");
    }

    #[test]
    fn seeds_derive_distinct_streams() {
        let a = Seed::from(1);
        assert_eq!(a, Seed::from(1));
        assert_ne!(a, Seed::from(2));
        assert_ne!(a.derive("secure"), a.derive("insecure"));
    }
}
