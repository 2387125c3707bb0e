//! The host's side: starts the worker, talks to it, and replaces it when it
//! dies or runs past its wall-clock budget.

use super::pipe::{self, Until};
use super::protocol::{ProtocolError, Reply, Request, read_frame};
use crate::bindings::soma::encoder::inference::NamedTensor;
use crate::digest::Digest;
use crate::inference::{MIN_RUN_TIME, PackageFailures};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

/// Environment variable naming the worker executable; by default the host
/// looks for `soma-inference-worker` beside its own executable (and, from
/// cargo's `deps` directory, one directory up).
pub const WORKER_ENV: &str = "SOMA_INFERENCE_WORKER";

/// The worker executable's file name.
pub const WORKER_NAME: &str = "soma-inference-worker";

/// Wall-clock budget for compiling a model in the worker.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Wall-clock budget for dropping a session in the worker.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the worker's stderr kept to explain its death.
const STDERR_KEPT: usize = 4096;

/// A failure of this host, not of the encoder or its model: the call in
/// flight fails as a local error.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum WorkerError {
    /// The worker could not be started.
    #[error("cannot start the inference worker: {0}")]
    Spawn(String),
    /// The worker died or broke the protocol; the next request starts a
    /// fresh one.
    #[error("the inference worker failed: {0}")]
    Died(String),
    /// The worker ran past its wall-clock budget and was killed; the next
    /// request starts a fresh one.
    #[error("the inference worker exceeded its wall-clock budget of {0:?} and was restarted")]
    Timeout(Duration),
    /// Too little of the call's wall-clock budget was left to start the
    /// run: it went on waiting for the worker, or on compiling the model
    /// again there (which the worker keeps for the next run).
    #[error("too little of the call's wall-clock budget was left to start its inference run")]
    OutOfTime,
}

/// Why [`Worker::run_if_idle`] gave a run back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skipped {
    /// The worker is busy.
    Busy,
    /// The worker is idle but does not hold the model's session.
    NoSession,
}

/// Which idle worker will do for a run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Idle {
    /// One that holds the model's session: the run compiles nothing.
    Holding,
    /// Any: one that dropped the session compiles the model again first.
    Any,
}

/// One supervised worker process, started on first use. Requests are
/// served one at a time.
pub(crate) struct Worker {
    state: Mutex<State>,
    /// Models compiled in it so far, counted apart from `state` so that it
    /// can be read while the worker is busy.
    loads: Arc<AtomicU64>,
}

/// What a run ends with: the outputs, ONNX Runtime's refusal, or a failure
/// of the worker.
pub(crate) type RunOutcome = Result<Result<Vec<NamedTensor>, String>, WorkerError>;

struct State {
    process: Option<Process>,
    /// Where it names the models that fail it outside a run (see
    /// [`Blamed`]).
    blamed: Arc<Blamed>,
    /// The empty directory the worker is told holds external data.
    external_data: Option<tempfile::TempDir>,
    /// Most admitted model bytes the worker holds sessions for at once.
    session_bytes: u64,
    /// How long dropping a session may take ([`UNLOAD_TIMEOUT`]).
    unload_timeout: Duration,
    /// Requests served, to tell which session was used longest ago.
    clock: u64,
    /// The worker's count of models compiled.
    loads: Arc<AtomicU64>,
}

struct Process {
    child: Child,
    /// Its stdin and stdout, non-blocking: a request is written and its
    /// reply read on the caller's thread, neither past the call's deadline
    /// (`pipe.rs`). Anything the worker wrote before a request (a reply
    /// written ahead) fails that request: a worker out of step with the
    /// protocol is replaced.
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The sessions it holds.
    loaded: BTreeMap<Digest, Held>,
    /// The model it was last asked to load or run, and the package whose
    /// run that was (none for a load outside a run).
    last_run: Option<(Digest, Weak<PackageFailures>)>,
}

/// A model to run, and the package it runs for, which is charged with the
/// run's failures of the worker.
#[derive(Clone, Copy)]
pub(crate) struct RunOf<'a> {
    pub(crate) digest: Digest,
    /// Its admitted bytes, compiled first if the worker does not hold its
    /// session.
    pub(crate) model: &'a [u8],
    pub(crate) package: &'a Arc<PackageFailures>,
}

/// A session a worker holds.
struct Held {
    /// When it was last used (see [`State::clock`]).
    used: u64,
    /// Its model's admitted bytes.
    bytes: u64,
}

impl Worker {
    /// A worker that holds sessions for at most `session_bytes` of
    /// admitted model bytes at once, dropping those used longest ago to
    /// load another (a dropped one is compiled again when next run); a
    /// model that fails it outside a run is named in `blamed`.
    pub(crate) fn new(session_bytes: u64, blamed: Arc<Blamed>) -> Worker {
        let loads = Arc::new(AtomicU64::new(0));
        Worker {
            state: Mutex::new(State {
                process: None,
                blamed,
                external_data: None,
                session_bytes,
                unload_timeout: UNLOAD_TIMEOUT,
                clock: 0,
                loads: loads.clone(),
            }),
            loads,
        }
    }

    /// Compiles `model` in the worker under `digest`, unless it holds that
    /// session already. The outer error is a failure of this host, the
    /// inner one ONNX Runtime's refusal.
    pub(crate) fn load(
        &self,
        digest: Digest,
        model: &[u8],
    ) -> Result<Result<(), String>, WorkerError> {
        let mut state = self.lock();
        state.reap();
        if state.holds(&digest) {
            state.used(digest);
            return Ok(Ok(()));
        }
        state.load_into_process(digest, model, None)
    }

    /// Kills the worker; the next request starts a fresh one.
    pub(crate) fn restart(&self) {
        let mut state = self.lock();
        if let Some(mut process) = state.process.take() {
            process.kill();
        }
    }

    /// Runs a model (`of`) on `inputs`, accepting a reply of at most
    /// `max_reply` bytes. The run must end within `timeout` from now,
    /// waiting for a busy worker included. A compilation has its own
    /// budget; the run after it starts only if at least half of what was
    /// left when the worker was free still is (see
    /// [`WorkerError::OutOfTime`]). A crash or timeout of the worker, in
    /// the run or in compiling the model for it, is charged to the package
    /// ([`PackageFailures`]) by the time the request had in the worker; so
    /// is a crash found before the next request, after the run answered.
    pub(crate) fn run(
        &self,
        of: RunOf<'_>,
        inputs: Vec<NamedTensor>,
        max_reply: u64,
        timeout: Duration,
    ) -> RunOutcome {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        state.reap();
        state.run(of, inputs, max_reply, deadline)
    }

    /// [`Worker::run`] if the worker is idle and will do (`idle`); the
    /// inputs back, and why, if not.
    pub(crate) fn run_if_idle(
        &self,
        of: RunOf<'_>,
        inputs: Vec<NamedTensor>,
        max_reply: u64,
        timeout: Duration,
        idle: Idle,
    ) -> Result<RunOutcome, (Vec<NamedTensor>, Skipped)> {
        let deadline = Instant::now() + timeout;
        let Some(mut state) = self.try_lock() else {
            return Err((inputs, Skipped::Busy));
        };
        state.reap();
        if matches!(idle, Idle::Holding) && !state.holds(&of.digest) {
            return Err((inputs, Skipped::NoSession));
        }
        Ok(state.run(of, inputs, max_reply, deadline))
    }

    /// Whether the worker process is running (a busy worker is).
    pub(crate) fn is_running(&self) -> bool {
        self.try_lock().is_none_or(|state| state.process.is_some())
    }

    /// How many sessions the worker holds (waiting for it if it is busy).
    pub(crate) fn sessions(&self) -> usize {
        self.lock().process.as_ref().map_or(0, |p| p.loaded.len())
    }

    /// How many models it compiled so far (first loads, and again after a
    /// restart or once a session was dropped).
    pub(crate) fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The worker's state, taken over if a holder panicked.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's state if no one holds it.
    fn try_lock(&self) -> Option<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl State {
    /// [`Worker::run`], to end by `deadline`, on a worker reaped by the
    /// caller (see [`State::reap`]).
    fn run(
        &mut self,
        of: RunOf<'_>,
        inputs: Vec<NamedTensor>,
        max_reply: u64,
        deadline: Instant,
    ) -> RunOutcome {
        let RunOf { digest, model, .. } = of;
        let before = deadline.saturating_duration_since(Instant::now());
        // Compiling it again (after a restart, or once its session was
        // dropped) has the budget of any load.
        let compiles = !self.holds(&digest);
        if compiles && let Err(refused) = self.load_into_process(digest, model, Some(of.package))? {
            return Ok(Err(refused));
        }
        self.used(digest);
        // A run cut off for want of time costs the worker and every session
        // in it. So a call whose time ran out (or, after compiling, half
        // ran out) fails before the run, leaving the worker and the session
        // for the next call (the job runner retries a local failure once).
        let needed = match compiles {
            true => (before / 2).max(MIN_RUN_TIME),
            false => MIN_RUN_TIME,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left < needed {
            return Err(WorkerError::OutOfTime);
        }
        let request = Request::Run { digest, inputs };
        match self.exchange_for(&request, digest, Some(of.package), max_reply, left)? {
            Reply::Done(outputs) => Ok(Ok(outputs)),
            Reply::Refused(text) => Ok(Err(text)),
        }
    }

    /// The running worker, started if there is none.
    fn process(&mut self) -> Result<&mut Process, WorkerError> {
        if self.process.is_none() {
            if self.external_data.is_none() {
                let dir = tempfile::Builder::new()
                    .prefix("soma-no-external-data")
                    .tempdir()
                    .map_err(|e| {
                        WorkerError::Spawn(format!("cannot create an empty directory: {e}"))
                    })?;
                self.external_data = Some(dir);
            }
            let dir = self.external_data.as_ref().expect("just created").path();
            self.process = Some(Process::spawn(dir)?);
        }
        Ok(self.process.as_mut().expect("just started"))
    }

    /// Drops the worker if it exited since its last request: the next
    /// request starts a fresh one, which holds no sessions, rather than
    /// failing against the dead one, which would blame the model it names.
    /// A worker killed from outside (`SIGKILL`, as an out-of-memory killer
    /// does) blames no one; one that crashed of itself after answering (a
    /// model's damage found when its outputs were freed) names the model
    /// it loaded or ran last, and charges the package whose run that was,
    /// as a crash during the request would.
    fn reap(&mut self) {
        let Some(process) = self.process.as_mut() else {
            return;
        };
        let Ok(Some(status)) = process.child.try_wait() else {
            return;
        };
        let mut gone = self.process.take().expect("checked above");
        let crashed = status.signal().is_some_and(|signal| {
            [
                libc::SIGABRT,
                libc::SIGBUS,
                libc::SIGFPE,
                libc::SIGILL,
                libc::SIGSEGV,
                libc::SIGSYS,
                libc::SIGTRAP,
            ]
            .contains(&signal)
        });
        if crashed && let Some((model, package)) = gone.last_run.take() {
            self.blamed.name(model);
            if let Some(package) = package.upgrade() {
                package.failed(&model, Duration::ZERO);
            }
        }
        let why = gone.died("it exited between requests");
        tracing::warn!("the inference worker is replaced: {why}");
    }

    /// Whether the running worker holds the session of `digest`.
    fn holds(&self, digest: &Digest) -> bool {
        self.process
            .as_ref()
            .is_some_and(|p| p.loaded.contains_key(digest))
    }

    /// Compiles `model` into the session of `digest` in the running worker
    /// (started if need be), making room for it first; for a run of
    /// `package`'s, if `package` is given.
    fn load_into_process(
        &mut self,
        digest: Digest,
        model: &[u8],
        package: Option<&Arc<PackageFailures>>,
    ) -> Result<Result<(), String>, WorkerError> {
        let bytes = model.len() as u64;
        self.make_room(digest, bytes)?;
        let request = Request::Load { digest, model };
        match self.exchange_for(&request, digest, package, 1 << 20, LOAD_TIMEOUT)? {
            Reply::Done(_) => {
                self.loads.fetch_add(1, Ordering::Relaxed);
                self.clock += 1;
                let used = self.clock;
                self.process()?.loaded.insert(digest, Held { used, bytes });
                Ok(Ok(()))
            }
            Reply::Refused(text) => Ok(Err(text)),
        }
    }

    /// Records that the session of `digest`, if the worker holds it, was
    /// used now.
    fn used(&mut self, digest: Digest) {
        self.clock += 1;
        let now = self.clock;
        if let Some(held) = self
            .process
            .as_mut()
            .and_then(|p| p.loaded.get_mut(&digest))
        {
            held.used = now;
        }
    }

    /// Drops the sessions used longest ago until the model of `digest`, of
    /// `bytes`, fits beside the others in the worker's session memory. A
    /// worker that fails dropping one is replaced by a fresh one, which
    /// holds none.
    fn make_room(&mut self, digest: Digest, bytes: u64) -> Result<(), WorkerError> {
        self.process()?;
        loop {
            let loaded = &self.process.as_ref().expect("started above").loaded;
            // A session of `digest` itself is replaced by the load.
            let others = loaded.iter().filter(|&(d, _)| *d != digest);
            let held: u64 = others.clone().map(|(_, h)| h.bytes).sum();
            let oldest = others.min_by_key(|(_, h)| h.used).map(|(&d, _)| d);
            let Some(oldest) = oldest.filter(|_| held + bytes > self.session_bytes) else {
                return Ok(());
            };
            let failure =
                match self.exchange(&Request::Unload { digest: oldest }, 64, self.unload_timeout) {
                    Ok(Reply::Done(outputs)) if outputs.is_empty() => {
                        self.process()?.loaded.remove(&oldest);
                        continue;
                    }
                    Ok(_) => {
                        let mut process = self.process.take().expect("it just answered");
                        process.died("it answered an unload with something else")
                    }
                    Err(e) => e,
                };
            // Whatever made the worker fail, it was not the model about to
            // load (nor, so, the call that wants it): a fresh worker holds
            // no sessions, so there is room, and the load goes ahead there.
            // The model being dropped is named, as a run that fails its
            // worker names its model (the worker was alive when last
            // checked, just before: see `reap`): it may fail every worker
            // that holds its session.
            self.blamed.name(oldest);
            tracing::warn!(
                dropping = %oldest,
                "the inference worker failed dropping a session to make room, so a fresh one \
                 takes the load: {failure}"
            );
            return Ok(());
        }
    }

    /// [`State::exchange`] of a request to load or run the model of
    /// `digest`, which the worker remembers as its last (see
    /// [`State::reap`]); for a run of `package`'s, if `package` is given,
    /// which a failure of the worker is charged to by the time the request
    /// had in it.
    fn exchange_for(
        &mut self,
        request: &Request,
        digest: Digest,
        package: Option<&Arc<PackageFailures>>,
        max_reply: u64,
        timeout: Duration,
    ) -> Result<Reply, WorkerError> {
        let weak = package.map_or_else(Weak::new, Arc::downgrade);
        self.process()?.last_run = Some((digest, weak));
        let started = Instant::now();
        let result = self.exchange(request, max_reply, timeout);
        if let (Some(package), Err(WorkerError::Died(_) | WorkerError::Timeout(_))) =
            (package, &result)
        {
            package.failed(&digest, started.elapsed());
        }
        result
    }

    /// Sends `request` and waits for the reply; on any failure the worker
    /// is killed, so that the next request starts a fresh one.
    fn exchange(
        &mut self,
        request: &Request,
        max_reply: u64,
        timeout: Duration,
    ) -> Result<Reply, WorkerError> {
        let process = self.process()?;
        let result = process.exchange(request, max_reply, timeout);
        if result.is_err()
            && let Some(mut dead) = self.process.take()
        {
            dead.kill();
        }
        result
    }
}

/// Models that failed a worker outside a run: while their session was
/// dropped, or by a crash after the worker answered their load or run.
/// Named by the workers of one cache until the cache contains each (see
/// `inference::Model::may_spill`) or frees it; at most [`MAX_BLAMED`] at
/// once, each of which took a worker's death to name.
#[derive(Default)]
pub(crate) struct Blamed(Mutex<BTreeSet<Digest>>);

/// Most models [`Blamed`] holds; past it, a model is not named.
const MAX_BLAMED: usize = 1024;

impl Blamed {
    /// Names the model of `digest` for failing a worker outside a run.
    pub(crate) fn name(&self, digest: Digest) {
        let mut named = self.lock();
        if named.len() < MAX_BLAMED {
            named.insert(digest);
        } else {
            tracing::warn!(model = %digest, "{MAX_BLAMED} models are named for failing their workers already: this one is not");
        }
    }

    /// Forgets the models `keep` says no.
    pub(crate) fn retain(&self, keep: impl Fn(&Digest) -> bool) {
        self.lock().retain(keep);
    }

    /// Whether `digest` was named, and forgets it.
    pub(crate) fn take(&self, digest: &Digest) -> bool {
        self.lock().remove(digest)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<Digest>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Process {
    fn spawn(external_data: &Path) -> Result<Process, WorkerError> {
        let path = worker_path().map_err(WorkerError::Spawn)?;
        // The worker sees nothing of this process's environment but where
        // ONNX Runtime is (ONNX Runtime reads settings from variables).
        let mut command = Command::new(&path);
        command.env_clear().arg(external_data);
        // Resolved here, so the worker (possibly elsewhere) loads the same
        // library; a missing one is reported by the worker, on stderr, as
        // it exits.
        if let Ok(dylib) = super::server::dylib() {
            dylib.pass_to(&mut command);
        }
        Process::start(command)
    }

    /// Starts `command` with piped stdin, stdout and stderr, as a worker.
    fn start(mut command: Command) -> Result<Process, WorkerError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let program = Path::new(command.get_program()).display();
                WorkerError::Spawn(format!("{program}: {e}"))
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr_pipe = child.stderr.take().expect("piped");
        for end in [stdin.as_fd(), stdout.as_fd()] {
            pipe::set_nonblocking(&end)
                .map_err(|e| WorkerError::Spawn(format!("cannot set up its pipes: {e}")))?;
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let kept = stderr.clone();
        std::thread::Builder::new()
            .name("soma-worker-stderr".into())
            .spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stderr_pipe.read(&mut buf) {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    let room = STDERR_KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            })
            .map_err(|e| WorkerError::Spawn(format!("cannot start a reader thread: {e}")))?;
        Ok(Process {
            child,
            stdin,
            stdout,
            stderr,
            loaded: BTreeMap::new(),
            last_run: None,
        })
    }

    fn exchange(
        &mut self,
        request: &Request,
        max_reply: u64,
        timeout: Duration,
    ) -> Result<Reply, WorkerError> {
        let deadline = Instant::now() + timeout;
        match self.stdout.read(&mut [0u8; 1]) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Ok(0) => return Err(self.died("its stdout closed")),
            Ok(_) => return Err(self.died("it wrote before it was asked")),
            Err(e) => return Err(self.died(&format!("its stdout: {e}"))),
        }
        let mut frame = Vec::new();
        request
            .write(&mut frame)
            .expect("writing to memory does not fail");
        let mut stdin = Until {
            file: &mut self.stdin,
            deadline,
        };
        let reply = match stdin.write_all(&frame) {
            Ok(()) => read_frame(
                &mut Until {
                    file: &mut self.stdout,
                    deadline,
                },
                max_reply,
            ),
            Err(e) => Err(e.into()),
        };
        match reply {
            Ok(body) => Reply::decode(&body).map_err(|e| self.died(&e.to_string())),
            Err(ProtocolError::Io(e)) if e.kind() == ErrorKind::TimedOut => {
                Err(WorkerError::Timeout(timeout))
            }
            Err(e) => Err(self.died(&e.to_string())),
        }
    }

    /// Describes the worker's death: what went wrong, its exit status and
    /// what it wrote to stderr.
    fn died(&mut self, what: &str) -> WorkerError {
        self.kill();
        let status = self
            .child
            .try_wait()
            .ok()
            .flatten()
            .map_or(String::new(), |s| format!(" ({s})"));
        // Give the stderr reader a moment to collect the last words.
        std::thread::sleep(Duration::from_millis(20));
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let said = String::from_utf8_lossy(&stderr);
        let said = said.trim();
        // What the worker says is the model's to choose: quoted, escaped.
        WorkerError::Died(if said.is_empty() {
            format!("{what}{status}")
        } else {
            format!("{what}{status}: {said:?}")
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the worker executable is: `SOMA_INFERENCE_WORKER`, or beside this
/// executable, or one directory up.
fn worker_path() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(WORKER_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let here = exe.parent().ok_or("this executable has no directory")?;
    let name = format!("{WORKER_NAME}{}", std::env::consts::EXE_SUFFIX);
    // One directory up only from cargo's `deps`, where it puts test and
    // benchmark executables: nowhere else may a neighbour plant a worker.
    let cargo_bins = here
        .parent()
        .filter(|_| here.file_name().is_some_and(|n| n == "deps"));
    [Some(here), cargo_bins]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "`{name}` is not beside {} (build it with `cargo build -p soma-host`, or set {WORKER_ENV})",
                exe.display()
            )
        })
}

#[cfg(test)]
impl Worker {
    /// Kills the worker process from outside, as an out-of-memory killer
    /// would, while the host still counts on it.
    pub(crate) fn dies_unseen(&self) {
        let mut state = self.lock();
        let process = state.process.as_mut().expect("running");
        process.child.kill().expect("the worker can be killed");
        process.child.wait().expect("and waited for");
    }

    /// Gives dropping a session `timeout` instead of [`UNLOAD_TIMEOUT`].
    pub(crate) fn set_unload_timeout(&self, timeout: Duration) {
        self.lock().unload_timeout = timeout;
    }

    /// Stops the worker process (`SIGSTOP`): it takes requests and never
    /// answers, as a worker hung in a model would.
    pub(crate) fn freezes(&self) {
        self.signalled(libc::SIGSTOP);
    }

    /// Sends `signal` to the worker process, and, unless it only stops it,
    /// waits for it to end.
    pub(crate) fn signalled(&self, signal: libc::c_int) {
        let mut state = self.lock();
        let child = &mut state.process.as_mut().expect("running").child;
        // SAFETY: a signal to a child this worker owns and has not reaped.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "the worker can be signalled");
        if signal != libc::SIGSTOP {
            while child.try_wait().expect("waitable").is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::identity;

    #[test]
    fn a_worker_that_writes_before_it_is_asked_is_replaced() {
        // A "worker" that writes a byte at once, then reads whatever comes.
        let mut command = Command::new("sh");
        command.args(["-c", "printf x; exec cat >/dev/null"]);
        let mut process = Process::start(command).expect("sh starts");
        // Until the byte has arrived, the request would go through.
        let arrived = Instant::now() + Duration::from_secs(10);
        let mut poll = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&process.stdout),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack.
        while unsafe { libc::poll(&mut poll, 1, 100) } == 0 {
            assert!(Instant::now() < arrived, "the byte never came");
        }
        let unload = Request::Unload {
            digest: Digest::of(b"m"),
        };
        let failed = process.exchange(&unload, 64, Duration::from_secs(10));
        assert!(
            matches!(&failed, Err(WorkerError::Died(m)) if m.contains("wrote before it was asked")),
            "{failed:?}"
        );
    }

    /// Models `a` and `b`, their digests, and a worker with room for one
    /// of their sessions, or for both, that names models in the set given
    /// back. (The worker executable is built with the workspace's
    /// integration tests, by `cargo xtask test`, beside this test's.)
    fn fixture(room_for_both: bool) -> (Vec<u8>, Vec<u8>, Digest, Digest, Arc<Blamed>, Worker) {
        let (a, b) = (identity("a", Some(2)), identity("b", Some(2)));
        let room = match room_for_both {
            true => a.len() + b.len(),
            false => a.len().max(b.len()),
        };
        let blamed = Arc::new(Blamed::default());
        let worker = Worker::new(room as u64, blamed.clone());
        let (digest_a, digest_b) = (Digest::of(&a), Digest::of(&b));
        (a, b, digest_a, digest_b, blamed, worker)
    }

    /// Runs `model` (of `digest`) for a package of its own, with no inputs:
    /// refused, since the model names one; returns the package.
    fn refused_run(worker: &Worker, digest: Digest, model: &[u8]) -> Arc<PackageFailures> {
        let package = Arc::new(PackageFailures::new(digest));
        let of = RunOf {
            digest,
            model,
            package: &package,
        };
        let ran = worker.run(of, vec![], 1 << 20, Duration::from_secs(60));
        assert!(matches!(ran, Ok(Err(_))), "{ran:?}");
        package
    }

    #[test]
    fn a_worker_that_died_while_idle_is_replaced_blaming_no_model() {
        let (a, b, digest_a, digest_b, blamed, worker) = fixture(false);
        assert!(matches!(worker.load(digest_a, &a), Ok(Ok(()))));
        worker.dies_unseen();
        // Loading `b` would drop `a`: the dead worker is replaced instead.
        let loaded = worker.load(digest_b, &b);
        assert!(matches!(loaded, Ok(Ok(()))), "{loaded:?}");
        assert_eq!(worker.loads(), 2);
        assert_eq!(worker.sessions(), 1);
        assert!(!blamed.take(&digest_a));
        // A run of a model it held goes ahead too, compiled again (and
        // refused: it names no input).
        worker.dies_unseen();
        let package = refused_run(&worker, digest_b, &b);
        assert_eq!(worker.loads(), 3);
        // Killed from outside after that run: still no one is named.
        worker.dies_unseen();
        assert!(matches!(worker.load(digest_b, &b), Ok(Ok(()))));
        assert!(!blamed.take(&digest_b));
        assert_eq!(package.behind(), Duration::ZERO);
    }

    #[test]
    fn a_worker_that_crashed_of_itself_between_requests_names_the_model_it_served_last() {
        let (a, b, digest_a, digest_b, blamed, worker) = fixture(true);
        assert!(matches!(worker.load(digest_a, &a), Ok(Ok(()))));
        let package = refused_run(&worker, digest_b, &b);
        // It aborts after answering, as a model's heap damage would.
        worker.signalled(libc::SIGABRT);
        assert!(matches!(worker.load(digest_a, &a), Ok(Ok(()))));
        assert!(blamed.take(&digest_b));
        assert!(!blamed.take(&digest_a));
        // The package whose run it answered is charged.
        let behind = package.behind();
        assert!(behind > Duration::ZERO);
        // After answering a load outside a run, it names the model loaded
        // and charges no one.
        worker.signalled(libc::SIGABRT);
        assert!(matches!(worker.load(digest_b, &b), Ok(Ok(()))));
        assert!(blamed.take(&digest_a));
        assert!(package.behind() <= behind);
    }

    #[test]
    fn a_worker_that_fails_dropping_a_session_is_replaced_and_the_load_goes_ahead() {
        let (a, b, digest_a, digest_b, blamed, worker) = fixture(false);
        let first = worker.load(digest_a, &a);
        assert!(matches!(first, Ok(Ok(()))), "{first:?}");
        assert_eq!(worker.loads(), 1);
        // Loading `b` must drop `a` first, and the worker hangs doing it.
        worker.set_unload_timeout(Duration::from_millis(200));
        worker.freezes();
        let loaded = worker.load(digest_b, &b);
        assert!(matches!(loaded, Ok(Ok(()))), "{loaded:?}");
        assert_eq!(worker.loads(), 2);
        let state = worker.lock();
        assert!(state.holds(&digest_b) && !state.holds(&digest_a));
        drop(state);
        // `a` is named, once; `b` is not.
        assert!(!blamed.take(&digest_b));
        assert!(blamed.take(&digest_a));
        assert!(!blamed.take(&digest_a));
    }
}
