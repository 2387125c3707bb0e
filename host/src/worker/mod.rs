//! ONNX Runtime out of process: models run in a supervised worker.
//!
//! Admission ([`crate::model`]) refuses what the host can see is dangerous
//! in a model, but ONNX Runtime is still a large body of native code fed
//! attacker-chosen graphs and weights. So it runs in its own processes, the
//! `soma-inference-worker` executable, which the host starts on first use,
//! one per core (at most eight unless the engine is told otherwise),
//! placing each model on two of them by a hash keyed with a secret of the
//! host process (no author can choose a neighbour), and loading it into
//! others in the background while its runs find those busy (not for large
//! models, nor for a while after one of its runs failed a worker). Each
//! worker holds sessions for a bounded number of model bytes, dropping
//! those used longest ago to load another:
//!
//! * the worker loads ONNX Runtime, then confines itself (`confine.rs`): no
//!   files, no network, no new programs, address space capped;
//! * models and tensors reach it over its stdin and results come back over
//!   its stdout (`protocol.rs`); the host bounds every reply by what the run
//!   was planned to produce, and checks shapes and rounds values itself;
//! * a run that outlives its wall-clock budget, a crash or a broken reply
//!   kills the worker: the call in flight fails as a local error of this
//!   host (never evidence against the encoder), and the next call starts a
//!   fresh worker, which reloads the models it needs.

mod client;
mod confine;
mod pipe;
mod protocol;
mod server;

pub(crate) use client::{Blamed, Idle, RunOf, RunOutcome, Skipped, Worker, WorkerError};
pub use client::{WORKER_ENV, WORKER_NAME};
pub use confine::MEMORY_BYTES;
pub use server::{DYLIB_ENV, RuntimeUnavailable, runtime, session_builder};
use std::path::PathBuf;
use std::process::ExitCode;

/// The worker executable's `main`: `soma-inference-worker <empty
/// directory>` serves the host; `--check-confinement` reports whether this
/// machine confines the worker (files, sockets and programs out of reach).
pub fn main() -> ExitCode {
    let arg = std::env::args_os().nth(1).map(PathBuf::from);
    match arg.as_deref().and_then(|a| a.to_str()) {
        Some("--check-confinement") => return check_confinement(),
        Some(PROBE) => return probe(),
        _ => {}
    }
    let Some(external_data) = arg else {
        eprintln!("usage: {WORKER_NAME} <empty directory> | --check-confinement");
        return ExitCode::from(2);
    };
    // Everything that touches the filesystem happens before confinement:
    // loading the library, and ONNX Runtime's first session (CPU detection).
    if let Err(e) = runtime().and_then(server::warm_up) {
        eprintln!("{e}");
        return ExitCode::from(3);
    }
    if let Err(e) = confine::confine() {
        eprintln!("{e}");
        return ExitCode::from(4);
    }
    match server::serve(&external_data) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The hidden argument of the confined probe [`check_confinement`] starts.
const PROBE: &str = "--confined-probe";

/// Runs the probe in a child (a confined process cannot write to a file,
/// and this one's stdout may be one) and passes its report on.
fn check_confinement() -> ExitCode {
    let report = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .arg(PROBE)
            .stdin(std::process::Stdio::null())
            .output()
    });
    match report {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            if out.status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("cannot start the probe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Confines this process and tries what confinement must stop.
fn probe() -> ExitCode {
    let exe = std::env::current_exe().unwrap_or_default();
    if let Err(e) = confine::confine() {
        eprintln!("not confined: {e}");
        return ExitCode::FAILURE;
    }
    let parent = libc::c_long::from(std::os::unix::process::parent_id() as i32);
    // SAFETY: each call passes integers and a buffer the kernel checks; a
    // child that fork creates exits at once.
    let escapes = unsafe {
        [
            ("open a file", std::fs::File::open(&exe).is_ok()),
            (
                "create a file",
                std::fs::File::create(exe.with_extension("probe")).is_ok(),
            ),
            (
                "open a socket",
                std::net::TcpListener::bind("127.0.0.1:0").is_ok(),
            ),
            (
                "start a program",
                std::process::Command::new(&exe).output().is_ok(),
            ),
            ("fork", {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                pid > 0
            }),
            ("set up io_uring", {
                let mut params = [0u8; 120];
                libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) >= 0
            }),
            (
                "open a pidfd of the host",
                libc::syscall(libc::SYS_pidfd_open, parent, 0) >= 0,
            ),
            (
                "signal the host",
                libc::syscall(libc::SYS_tgkill, parent, parent, 0) == 0,
            ),
        ]
    };
    let mut confined = true;
    for (what, done) in escapes {
        println!("{what}: {}", if done { "ALLOWED" } else { "refused" });
        confined &= !done;
    }
    if confined {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
