//! An encoder that attacks its host.
//!
//! The first input of a batch names the misbehaviour; the host's tests call
//! it with each one and check that the sandbox contains it with the right
//! error and keeps serving. Any other input gets a well-formed zero vector.
//!
//! | input            | what the encoder does                                  |
//! |------------------|--------------------------------------------------------|
//! | `spin`           | loops forever                                          |
//! | `grow-memory`    | allocates until allocation fails                       |
//! | `panic`          | panics                                                 |
//! | `probe-sandbox`  | tries files, environment, arguments, sockets, clocks,   |
//! |                  | randomness, and reports what it saw (see [`Probe`])    |
//! | `nan`            | returns a NaN                                          |
//! | `wrong-dimension`| returns 3 values instead of 384                        |
//! | `too-many`       | returns one vector more than it was given inputs       |
//! | `flood-output`   | writes 1 MiB to stdout and 10 000 log messages         |
//! | `poll-flood`     | polls one pollable 90 000 times in one call             |
//! | `wasi-calls:<n>` | reads the clock and draws 8 random bytes, `n` times    |
//! | `random-mib:<n>` | draws 1 MiB of random bytes `n` times, keeping each    |
//! |                  | (so every result is allocated in newly grown memory)   |
//! | `remember`       | reports what an earlier call left in the memory, and   |
//! |                  | leaves marks of its own for the next call to find      |
//! | `bad-utf8-error` | refuses the batch with a message that is not UTF-8     |
//! | `huge-error`     | refuses the batch with a 10 MB message                  |
//! | `aliased-vectors`| returns 64 vectors of 16 Mi values, all one buffer     |
//! | `infer:<attack>:<digest>` | abuses the inference import (see [`infer`])   |
//! | `run:<n>:<digest>` | runs a (hostile) model on `x` = [0, 1, .., n-1] as fp32 |
//! |                  | and returns its first output's first 384 values        |

use soma_guest_sdk::inference::{Error as InferenceError, Session, Tensor, TensorType};
use soma_guest_sdk::log::{Level, log};
use soma_guest_sdk::{EncodeError, Encoder, EncoderInfo, Modality};
use std::io::Write;

/// Output dimension claimed by `info`.
pub const DIMENSION: usize = 384;

/// The hostile encoder.
pub struct Hostile;

impl Encoder for Hostile {
    fn new() -> Self {
        Hostile
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            dimension: DIMENSION as u32,
            modality: Modality::Text,
            max_input_bytes: 1024,
        }
    }

    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        let zeros = || vec![0.0f32; DIMENSION];
        let mut out: Vec<Vec<f32>> = inputs.iter().map(|_| zeros()).collect();
        match inputs.first().map(Vec::as_slice) {
            Some(b"spin") => spin(),
            Some(b"grow-memory") => grow_memory(),
            Some(b"panic") => panic!("hostile encoder panicked on purpose"),
            Some(b"probe-sandbox") => out[0] = Probe::run().to_vector(),
            Some(b"nan") => out[0][7] = f32::NAN,
            Some(b"wrong-dimension") => out[0].truncate(3),
            Some(b"too-many") => out.push(zeros()),
            Some(b"poll-flood") => {
                let ready = wasip2::clocks::monotonic_clock::subscribe_duration(0);
                let list = vec![&ready; 90_000];
                out[0][0] = wasip2::io::poll::poll(&list).len() as f32;
            }
            Some(other) if other.starts_with(b"wasi-calls:") => {
                let n: u32 = std::str::from_utf8(&other[11..]).unwrap().parse().unwrap();
                let mut mix = 0u64;
                for _ in 0..n {
                    mix ^= wasip2::clocks::monotonic_clock::now();
                    mix ^= wasip2::random::random::get_random_u64();
                }
                out[0][0] = n as f32;
                out[0][1] = (mix & 1) as f32;
            }
            Some(other) if other.starts_with(b"random-mib:") => {
                let n: u32 = std::str::from_utf8(&other[11..]).unwrap().parse().unwrap();
                let kept: Vec<Vec<u8>> = (0..n)
                    .map(|_| wasip2::random::random::get_random_bytes(1 << 20))
                    .collect();
                out[0][0] = kept.len() as f32;
                out[0][1] = kept.iter().map(|b| f32::from(b[0])).sum();
            }
            Some(b"remember") => out[0][..3].copy_from_slice(&remember()),
            Some(b"bad-utf8-error") => {
                // SAFETY: deliberately not UTF-8: the host must not trust it.
                let reason = unsafe { String::from_utf8_unchecked(vec![b'a', 0xff, 0xfe]) };
                return Err(EncodeError::Internal(reason));
            }
            Some(b"huge-error") => return Err(EncodeError::Internal("e".repeat(10_000_000))),
            Some(b"aliased-vectors") => return Ok(aliased_vectors()),
            Some(b"flood-output") => flood_output(),
            Some(other) if other.starts_with(b"run:") => {
                let text = String::from_utf8_lossy(other);
                let mut parts = text.splitn(3, ':').skip(1);
                let n = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
                out[0] = run_model(n, parts.next().unwrap_or(""))
                    .map_err(|e| EncodeError::Internal(format!("{:?}: {}", e.code, e.message)))?;
            }
            Some(other) if other.starts_with(b"infer:") => {
                let text = String::from_utf8_lossy(other);
                let mut parts = text.splitn(3, ':').skip(1);
                let (attack, digest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                infer(attack, digest)
                    .map_err(|e| EncodeError::Internal(format!("{:?}: {}", e.code, e.message)))?;
            }
            _ => {}
        }
        Ok(out)
    }
}

soma_guest_sdk::export!(Hostile);

/// 64 vectors that all claim the same 64 MiB buffer: 4 GiB if the host
/// copied each. The buffer is leaked so that no vector owns it.
fn aliased_vectors() -> Vec<Vec<f32>> {
    let len = 16 << 20;
    let buffer = Box::leak(vec![0.0f32; len].into_boxed_slice()).as_mut_ptr();
    (0..64)
        // SAFETY: deliberately aliased, and never freed by this encoder: the
        // host must refuse the answer before it copies it.
        .map(|_| unsafe { Vec::from_raw_parts(buffer, len, len) })
        .collect()
}

/// Where `remember`'s count of calls starts: not zero, so that the count
/// lives in the component's initial memory image, not in zeroed memory.
const FIRST_CALL: u32 = 1000;

/// Calls of `remember` in this instance, from [`FIRST_CALL`].
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(FIRST_CALL);

/// Wasm pages `remember` grows the memory by (10 MiB).
const REMEMBER_PAGES: usize = 160;

/// What an earlier call left for this one: the calls of `remember` this
/// instance's static data counted before, and how many 4 KiB pages of
/// [`REMEMBER_PAGES`] newly grown wasm pages held a mark when it found
/// them. Then leaves its own mark on every other one (so that the written
/// pages are many separate runs), for the next call to find, and reads the
/// marks back: the third value, how many it finds, shows the first two are
/// read where a mark would be. In a fresh instance they are 0, 0 and half
/// the pages.
fn remember() -> [f32; 3] {
    let earlier = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) - FIRST_CALL;
    let start = grow(REMEMBER_PAGES);
    let pages = || (0..REMEMBER_PAGES * 65536 / 4096).map(|page| (page, start + page * 4096));
    let mark = |page: usize| 0x5eed_0000 | page as u32;
    // SAFETY: the pages were just grown for this function alone, and wasm
    // memory is always readable and writable.
    let read = |at: usize| unsafe { (at as *const u32).read_volatile() };
    let marked = pages().filter(|&(_, at)| read(at) != 0).count();
    for (page, at) in pages().step_by(2) {
        // SAFETY: as above.
        unsafe { (at as *mut u32).write_volatile(mark(page)) };
    }
    let found = pages().filter(|&(page, at)| read(at) == mark(page)).count();
    [earlier as f32, marked as f32, found as f32]
}

/// The address of `pages` wasm pages newly added to the memory.
#[cfg(target_arch = "wasm32")]
fn grow(pages: usize) -> usize {
    let first = core::arch::wasm32::memory_grow(0, pages);
    assert_ne!(first, usize::MAX, "cannot grow the memory");
    first * 65536
}

/// The encoder runs as a component only; the workspace builds it natively
/// too.
#[cfg(not(target_arch = "wasm32"))]
fn grow(_pages: usize) -> usize {
    unreachable!("the hostile encoder grows only a wasm memory")
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn grow_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the allocation is real.
        hoard.push(vec![1u8; 1 << 20]);
    }
}

/// Runs the model with `digest` on one fp32 input `x` of `n` elements
/// (0, 1, ...); returns the first output as floats, cut or padded to 384.
pub fn run_model(n: u32, digest: &str) -> Result<Vec<f32>, InferenceError> {
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let outputs = Session::open(digest)?.run(&[Tensor::from_f32(&[n], &x).named("x")])?;
    let mut values = outputs
        .first()
        .and_then(|o| o.tensor.to_f32())
        .unwrap_or_default();
    values.resize(DIMENSION, 0.0);
    Ok(values)
}

/// Abuses the inference import on the model with `digest` (which a test
/// packages with this component); returns the host's error.
///
/// * `open`: just opens it (to try digests that are not in the package);
/// * `absurd-shape`: dimensions whose product overflows;
/// * `wrong-dtype`: `fp32` ids where the model wants `i64`;
/// * `wrong-length`: data shorter than the dimensions say;
/// * `huge-tensor`: more elements than the host accepts;
/// * `many-sessions`: opens sessions without closing them.
pub fn infer(attack: &str, digest: &str) -> Result<(), InferenceError> {
    let session = Session::open(digest)?;
    let ids = |t: Tensor| vec![t.named("input_ids")];
    match attack {
        "open" => Ok(()),
        "absurd-shape" => {
            let t = Tensor {
                dimensions: vec![u32::MAX, u32::MAX, u32::MAX],
                ty: TensorType::I64,
                data: vec![],
            };
            session.run(&ids(t)).map(drop)
        }
        "wrong-dtype" => session
            .run(&ids(Tensor::from_f32(&[1, 2], &[101.0, 102.0])))
            .map(drop),
        "wrong-length" => {
            let t = Tensor {
                dimensions: vec![1, 1000],
                ty: TensorType::I64,
                data: vec![0; 16],
            };
            session.run(&ids(t)).map(drop)
        }
        "huge-tensor" => {
            let t = Tensor {
                dimensions: vec![1, 1 << 25],
                ty: TensorType::U8,
                data: vec![0; 1 << 25],
            };
            session.run(&ids(t)).map(drop)
        }
        "many-sessions" => {
            let mut open = vec![session];
            for _ in 0..10_000 {
                open.push(Session::open(digest)?);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn flood_output() {
    let line = [b'x'; 1023];
    let mut stdout = std::io::stdout();
    for _ in 0..1024 {
        // The host caps captured output; a refused write is not our problem.
        let _ = stdout
            .write_all(&line)
            .and_then(|()| stdout.write_all(b"\n"));
    }
    for i in 0..10_000 {
        log(Level::Info, &format!("flood {i}"));
    }
}

/// What the sandbox let the encoder see. Every field is 0 in a closed
/// sandbox, except the clock readings, which are the host's fixed values.
#[derive(Debug)]
pub struct Probe {
    /// 1 if any file could be read.
    pub file_read: f32,
    /// 1 if the working directory could be listed.
    pub dir_listed: f32,
    /// Number of environment variables visible.
    pub env_vars: f32,
    /// Number of command-line arguments visible.
    pub args: f32,
    /// 1 if a TCP connection could be opened.
    pub socket_opened: f32,
    /// 1 if a host name resolved.
    pub name_resolved: f32,
    /// Difference between two wall-clock readings, in nanoseconds.
    pub wall_clock_delta_ns: f32,
    /// Difference between two monotonic-clock readings, in nanoseconds.
    pub monotonic_delta_ns: f32,
    /// Wall-clock reading, in whole seconds since the Unix epoch.
    pub wall_clock_secs: f32,
    /// 24 bits of a hash keyed by the standard library's random hash-map
    /// keys: a window onto the host's random source.
    pub random_bits: f32,
}

impl Probe {
    /// Tries every way out of the sandbox it knows.
    pub fn run() -> Probe {
        use std::hash::{BuildHasher, RandomState};
        use std::net::{TcpStream, ToSocketAddrs};
        use std::time::{Instant, SystemTime, UNIX_EPOCH};

        let flag = |ok: bool| if ok { 1.0 } else { 0.0 };
        let wall_a = SystemTime::now();
        let mono_a = Instant::now();
        let file_read = [
            "/etc/passwd",
            "/proc/self/environ",
            "Cargo.toml",
            "./secret",
        ]
        .iter()
        .any(|p| std::fs::read(p).is_ok());
        let dir_listed = std::fs::read_dir(".").is_ok() || std::fs::read_dir("/").is_ok();
        let socket_opened =
            TcpStream::connect("127.0.0.1:80").is_ok() || TcpStream::connect("1.1.1.1:443").is_ok();
        let name_resolved = "localhost:80".to_socket_addrs().is_ok();
        spin_briefly();
        let wall_b = SystemTime::now();
        let mono_b = Instant::now();
        let probe = Probe {
            file_read: flag(file_read),
            dir_listed: flag(dir_listed),
            env_vars: std::env::vars_os().count() as f32,
            args: std::env::args_os().count() as f32,
            socket_opened: flag(socket_opened),
            name_resolved: flag(name_resolved),
            wall_clock_delta_ns: wall_b
                .duration_since(wall_a)
                .map_or(-1.0, |d| d.as_nanos() as f32),
            monotonic_delta_ns: (mono_b - mono_a).as_nanos() as f32,
            wall_clock_secs: wall_b
                .duration_since(UNIX_EPOCH)
                .map_or(-1.0, |d| d.as_secs() as f32),
            random_bits: (RandomState::new().hash_one(0u8) >> 40) as f32,
        };
        log(Level::Info, &format!("{probe:?}"));
        probe
    }

    /// Packs the observations into the first dimensions of an embedding.
    pub fn to_vector(&self) -> Vec<f32> {
        let mut v = vec![0.0; DIMENSION];
        v[..10].copy_from_slice(&[
            self.file_read,
            self.dir_listed,
            self.env_vars,
            self.args,
            self.socket_opened,
            self.name_resolved,
            self.wall_clock_delta_ns,
            self.monotonic_delta_ns,
            self.wall_clock_secs,
            self.random_bits,
        ]);
        v
    }
}

/// Burns some instructions so a real clock would visibly advance.
fn spin_briefly() {
    let mut x = 0u64;
    for i in 0..1_000_000u64 {
        x = std::hint::black_box(x ^ i);
    }
}
