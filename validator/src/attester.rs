//! Compute (DESIGN.md, "Execution", steps 2 to 4): a thread that runs
//! every new job's shard in the host and submits this validator's
//! attestation through consensus, paid from the validator's account.
//!
//! Apply never waits for it. A job whose package this node lacks waits
//! here (and is retried) while apply goes on; an attestation that is not
//! applied within [`RESUBMIT_AFTER`] commits (refused by a full queue, or
//! lost with a crash) is submitted again, renumbered from the account's
//! next nonce if a nonce before it was never used.

use crate::client::ApiClient;
use crate::node::Shared;
use soma_codec::Encode;
use soma_crypto::{PublicKey, SecretKey};
use soma_execution::{
    Action, EncoderResult, Job, JobRunner, JobStatus, Outcome, RunnerError, SignedTransaction,
    Transaction,
};
use soma_host::Digest;
use soma_host::package::Package;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

/// Commits an attestation may take to be applied before it is submitted
/// again.
pub(crate) const RESUBMIT_AFTER: u64 = 50;
/// How long a peer may take to send a package.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Packages asked for again at most (the first wanted are kept): each
/// costs a request to every peer per retry.
const MAX_WANTED: usize = 64;
/// Commits between two attempts at jobs waiting for a package.
const RETRY_EVERY: u64 = 20;
/// Most jobs computed together.
const MAX_JOBS_AT_ONCE: usize = 64;

/// What the attester is told.
pub(crate) enum Work {
    /// A job to compute and attest (if it still needs this validator).
    Job(Digest),
    /// Commit `index` was applied.
    Applied(u64),
    /// An encoder was registered: fetch its package from peers if this
    /// node lacks it.
    Fetch(Digest),
    /// An encoder was deregistered: drop what was loaded of its package.
    Forget(Digest),
}

/// Starts the attester on `inbox`, after loading the `preload` encoders
/// and with the pending jobs this validator has not attested (a restarted
/// node picks up where it stopped).
pub(crate) fn start(
    shared: Arc<Shared>,
    runner: JobRunner,
    key: SecretKey,
    preload: Vec<Digest>,
    peer_apis: Vec<SocketAddr>,
    inbox: mpsc::Receiver<Work>,
) -> std::io::Result<()> {
    let backlog = match shared.state.pending_jobs() {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!("cannot list pending jobs: {e}");
            Vec::new()
        }
    };
    let mut attester = Attester {
        me: key.public_key(),
        key,
        shared,
        runner,
        next_nonce: 0,
        in_flight: BTreeMap::new(),
        waiting: Vec::new(),
        wanted: Vec::new(),
        peer_apis,
    };
    std::thread::Builder::new()
        .name("attester".into())
        .spawn(move || {
            // Compiled before the first job rather than during it.
            for package in preload {
                match attester.runner.preload(&package) {
                    Ok(Outcome::Ok) => tracing::info!(%package, "encoder loaded"),
                    Ok(outcome) => {
                        tracing::warn!(%package, outcome = outcome.name(), "encoder not loaded")
                    }
                    Err(e) => tracing::warn!(%package, "encoder not loaded: {e}"),
                }
            }
            attester.count_loads();
            attester.attest(&backlog);
            attester.run(inbox)
        })?;
    Ok(())
}

/// An attestation submitted and not yet applied.
struct InFlight {
    job: Digest,
    results: Vec<EncoderResult>,
    /// The last commit applied when it was (re)submitted.
    submitted_at: u64,
}

struct Attester {
    shared: Arc<Shared>,
    runner: JobRunner,
    key: SecretKey,
    me: PublicKey,
    /// The nonce of the next attestation.
    next_nonce: u64,
    /// By nonce.
    in_flight: BTreeMap<u64, InFlight>,
    /// Jobs that could not be computed yet (a package missing).
    waiting: Vec<Digest>,
    /// Packages of registered encoders no peer has sent yet.
    wanted: Vec<Digest>,
    /// Peers' APIs, asked for packages this node lacks.
    peer_apis: Vec<SocketAddr>,
}

impl Attester {
    /// Brings the node's count of package loads up to the runner's.
    fn count_loads(&self) {
        self.shared
            .metrics
            .package_load_attempts
            .store(self.runner.load_attempts(), Ordering::Relaxed);
    }

    fn run(&mut self, inbox: mpsc::Receiver<Work>) {
        let mut next = inbox.recv().ok();
        while let Some(work) = next.take() {
            match work {
                Work::Job(job) => {
                    // The jobs queued right behind it (those of one commit,
                    // a backlog at start-up) are computed with it, their
                    // calls shared out together, up to a bound so that the
                    // work queued behind them is not held up for long.
                    let mut jobs = vec![job];
                    while jobs.len() < MAX_JOBS_AT_ONCE {
                        match inbox.try_recv() {
                            Ok(Work::Job(job)) => jobs.push(job),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.attest(&jobs);
                }
                Work::Applied(index) => self.applied(index),
                Work::Fetch(package) => {
                    if !self.fetch(&package) {
                        self.want(package);
                    }
                }
                Work::Forget(package) => self.runner.forget(&package),
            }
            if next.is_none() {
                next = inbox.recv().ok();
            }
        }
    }

    /// Computes the jobs of `ids`, [`MAX_JOBS_AT_ONCE`] at a time, and
    /// submits their attestations, except for jobs decided or attested by
    /// this validator already.
    fn attest(&mut self, ids: &[Digest]) {
        for batch in ids.chunks(MAX_JOBS_AT_ONCE) {
            self.attest_batch(batch);
        }
        self.count_loads();
    }

    /// [`Attester::attest`] for at most [`MAX_JOBS_AT_ONCE`] jobs, whose
    /// calls are shared out together.
    fn attest_batch(&mut self, ids: &[Digest]) {
        let mut jobs: Vec<(Digest, Job)> = Vec::with_capacity(ids.len());
        for &id in ids {
            if !jobs.iter().any(|(seen, _)| *seen == id)
                && let Some(job) = self.needed(&id)
            {
                jobs.push((id, job));
            }
        }
        let batch: Vec<&Job> = jobs.iter().map(|(_, job)| job).collect();
        let mut computed = self.runner.compute_all(&batch, &self.shared.parameters);
        // Packages the batch lacked are fetched, and the jobs that needed
        // them computed again, together. A package already wanted is asked
        // for once per retry, not once per job that needs it.
        let mut again = Vec::new();
        for (i, result) in computed.iter().enumerate() {
            if let Err(RunnerError::MissingPackage(package)) = result
                && !self.wanted.contains(package)
            {
                match self.fetch(package) {
                    true => again.push(i),
                    false => self.want(*package),
                }
            }
        }
        if !again.is_empty() {
            let jobs_again: Vec<&Job> = again.iter().map(|&i| batch[i]).collect();
            let recomputed = self
                .runner
                .compute_all(&jobs_again, &self.shared.parameters);
            for (i, result) in again.into_iter().zip(recomputed) {
                computed[i] = result;
            }
        }
        for ((id, _), computed) in jobs.iter().zip(computed) {
            let id = *id;
            let results = match computed {
                Ok(results) => results,
                Err(e @ RunnerError::MissingPackage(_)) => {
                    tracing::info!(job = %id, "waiting: {e}");
                    self.waiting.push(id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job = %id, "cannot compute the job: {e}");
                    self.waiting.push(id);
                    continue;
                }
            };
            for result in &results {
                self.shared.metrics.encoder_outcomes[result.outcome as usize]
                    .fetch_add(1, Ordering::Relaxed);
            }
            // The batch took a while: a job decided meanwhile would only
            // cost an attestation's fee.
            if self.needed(&id).is_some() {
                self.send(id, results);
            }
        }
    }

    /// The job of `id` if this validator still has to attest it: pending,
    /// not attested, not in flight and not waiting.
    fn needed(&self, id: &Digest) -> Option<Job> {
        if self.in_flight.values().any(|f| f.job == *id) || self.waiting.contains(id) {
            return None;
        }
        let job = match self.shared.state.job(id) {
            Ok(Some(job)) => job,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(job = %id, "cannot read the job: {e}");
                return None;
            }
        };
        (job.status == JobStatus::Pending && !job.attesters.contains(&self.me)).then_some(job)
    }

    /// Submits `results` for `job` under this validator's next nonce.
    fn send(&mut self, job: Digest, results: Vec<EncoderResult>) {
        let at = self.shared.applied.borrow().next_index;
        let nonce = self.next_nonce.max(self.account_nonce());
        self.next_nonce = nonce + 1;
        let attestation = InFlight {
            job,
            results,
            submitted_at: at,
        };
        self.submit(nonce, &attestation);
        self.in_flight.insert(nonce, attestation);
    }

    /// Fetches `package` from the first peer that has it, verifies it and
    /// stores it; whether this node now holds it.
    fn fetch(&self, package: &Digest) -> bool {
        let blobs = &self.shared.blobs;
        if blobs.has_package(package) {
            return true;
        }
        for peer in &self.peer_apis {
            let client = ApiClient::new(*peer, None, FETCH_TIMEOUT);
            let fetched = client
                .get_bytes(&format!("/v1/packages/{package}"))
                .and_then(|(status, bytes)| {
                    if status != 200 {
                        anyhow::bail!("answered {status}");
                    }
                    let verified = Package::decode(&bytes)?.verify(None)?;
                    if verified.digest() != *package {
                        anyhow::bail!("sent package {} instead", verified.digest());
                    }
                    Ok(blobs.install(&verified)?)
                });
            match fetched {
                Ok(_) => {
                    tracing::info!(%package, %peer, "package fetched");
                    return true;
                }
                Err(e) => tracing::debug!(%package, %peer, "package not fetched: {e:#}"),
            }
        }
        false
    }

    fn account_nonce(&self) -> u64 {
        match self.shared.state.account(&self.me) {
            Ok(account) => account.nonce,
            Err(e) => {
                tracing::warn!("cannot read the validator's account: {e}");
                0
            }
        }
    }

    fn sign(&self, nonce: u64, attestation: &InFlight) -> SignedTransaction {
        Transaction {
            chain_id: self.shared.chain_id,
            sender: self.me,
            nonce,
            fee: self.shared.parameters.min_fee,
            action: Action::Attest {
                job: attestation.job,
                results: attestation.results.clone(),
            },
        }
        .sign(&self.key)
    }

    fn submit(&self, nonce: u64, attestation: &InFlight) {
        let bytes = self.sign(nonce, attestation).to_bytes();
        match self.shared.submitter().submit(bytes) {
            Ok(()) => {
                self.shared
                    .metrics
                    .attestations_submitted
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Submitted again after RESUBMIT_AFTER commits.
            Err(e) => tracing::warn!(job = %attestation.job, "attestation not queued: {e}"),
        }
    }

    /// After commit `index`: forgets attestations whose nonces were used,
    /// submits again those that waited too long, and retries jobs that were
    /// waiting.
    fn applied(&mut self, index: u64) {
        let nonce = self.account_nonce();
        let later = self.in_flight.split_off(&nonce);
        let used = std::mem::replace(&mut self.in_flight, later);
        // A used nonce is not an applied attestation: another transaction
        // of this key may have taken it (one signed before a restart).
        // A job still pending without this validator's attestation gets
        // the same results again, under a new nonce.
        for (_, attestation) in used {
            let needed = self.shared.state.job(&attestation.job).is_ok_and(|job| {
                job.is_some_and(|j| {
                    j.status == JobStatus::Pending && !j.attesters.contains(&self.me)
                })
            });
            if needed {
                self.send(attestation.job, attestation.results);
            }
        }
        let stale = self
            .in_flight
            .values()
            .next()
            .is_some_and(|first| index >= first.submitted_at + RESUBMIT_AFTER);
        if stale {
            // Renumbered from the account's next nonce: a nonce handed out
            // and never applied would otherwise block every later one.
            let attestations = std::mem::take(&mut self.in_flight);
            for (i, (_, mut attestation)) in attestations.into_iter().enumerate() {
                let renumbered = nonce + i as u64;
                attestation.submitted_at = index;
                self.submit(renumbered, &attestation);
                self.in_flight.insert(renumbered, attestation);
            }
            self.next_nonce = nonce + self.in_flight.len() as u64;
        }
        if index.is_multiple_of(RETRY_EVERY) {
            self.retry();
        }
    }

    /// Notes `package` as wanted: asked for again every [`RETRY_EVERY`]
    /// commits (if fewer than [`MAX_WANTED`] are).
    fn want(&mut self, package: Digest) {
        if !self.wanted.contains(&package) && self.wanted.len() < MAX_WANTED {
            self.wanted.push(package);
        }
    }

    /// Asks peers again for the wanted packages of encoders still
    /// registered, then attests the jobs that were waiting (`attest` drops
    /// those that no longer need this validator).
    fn retry(&mut self) {
        let wanted = std::mem::take(&mut self.wanted);
        // Packages of deregistered encoders are no longer wanted (one whose
        // registration cannot be read now stays).
        self.wanted = wanted
            .into_iter()
            .filter(|p| !matches!(self.shared.state.encoder(p), Ok(None)))
            .filter(|p| !self.fetch(p))
            .collect();
        let waiting = std::mem::take(&mut self.waiting);
        self.attest(&waiting);
    }
}
