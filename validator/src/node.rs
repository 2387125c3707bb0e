//! One validator: consensus orders transactions, the executor applies each
//! commit in order, the attester computes every new job and submits this
//! validator's attestation through consensus, and the HTTP API serves
//! clients. This file starts them and holds what they share.

use crate::admission::Admission;
use crate::attester::{self, Work};
use crate::config::{NodeFile, hex_public_key};
use crate::journal::Journal;
use crate::metrics::NodeMetrics;
use crate::roots::RootWatch;
use crate::{api, config};
use anyhow::{Context, Result, bail};
use soma_codec::{Decode, Encode};
use soma_consensus::{
    AuthorityIndex, CommittedSubDag, Committee, Node, NodeConfig,
    Parameters as ConsensusParameters, Protocol, Round, StateRoot, SubmitRefused, Submitter,
};
use soma_crypto::{PublicKey, SecretKey, keyfile};
use soma_execution::{
    Action, Commit, Executor, Genesis, JobStatus, Parameters, Router, SignedTransaction,
    StateReader,
};
use soma_host::Digest;
use soma_host::package::{BlobStore, VerifiedPackage};
use soma_host::{CompiledCache, Engine};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Commits read back from the consensus store at once while catching up.
const REPLAY_BATCH: usize = 256;

/// Every this many commits the journal's transactions are submitted again
/// (see [`Shared::resubmit_journaled`]).
const JOURNAL_SWEEP: u64 = 1_000;

/// Where the state stands, as the API and waiters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Index of the next commit to apply.
    pub(crate) next_index: u64,
    /// The state root after the last applied commit.
    pub(crate) root: [u8; 32],
}

/// What the node's tasks share.
pub(crate) struct Shared {
    pub(crate) chain_id: [u8; 32],
    pub(crate) chain_name: String,
    pub(crate) parameters: Parameters,
    /// Reads of the state; they never wait for apply.
    pub(crate) state: StateReader,
    pub(crate) blobs: BlobStore,
    /// This validator's key: it vouches for its state roots with it.
    pub(crate) key: SecretKey,
    /// The last applied commit; waiters watch it.
    pub(crate) applied: watch::Sender<Applied>,
    /// Set once consensus runs (admission, which consensus calls, needs the
    /// rest of this first).
    submitter: OnceLock<Submitter>,
    /// API keys by the blake3 of the key, and the account each spends from.
    pub(crate) api_keys: BTreeMap<[u8; 32], SecretKey>,
    /// Nonces this node hands out per account it signs for.
    nonces: Mutex<BTreeMap<PublicKey, Nonces>>,
    /// When transactions submitted through the API were submitted, until
    /// they are committed (at most [`TRACKED_SUBMISSIONS`]).
    submitted: Mutex<Submissions>,
    /// Transactions accepted through the API and not seen committed yet.
    pub(crate) journal: Journal,
    /// Whether the journal's transactions are being submitted again.
    sweeping: AtomicBool,
    pub(crate) metrics: NodeMetrics,
    /// The last commit this node applies, if it halts after one.
    pub(crate) halt_after: Option<u64>,
}

/// Submissions through the API waiting to be committed, and when they
/// were made.
#[derive(Default)]
struct Submissions {
    at: BTreeMap<Digest, Instant>,
    /// When entries were last dropped for age.
    pruned: Option<Instant>,
}

/// Submissions whose commit latency is measured at once.
const TRACKED_SUBMISSIONS: usize = 10_000;
/// How long a submission is waited for before it is no longer measured.
const FORGET_SUBMISSIONS_AFTER: Duration = Duration::from_secs(600);

/// The nonces handed out for one account.
struct Nonces {
    /// The next one.
    next: u64,
    /// Handed out to requests still running.
    outstanding: usize,
}

impl Shared {
    /// The commit this node halted after, once it has applied it.
    pub(crate) fn halted(&self) -> Option<u64> {
        self.halted_at(&self.applied.borrow())
    }

    /// The commit this node halted after, if it had when `applied` was
    /// the last commit applied.
    pub(crate) fn halted_at(&self, applied: &Applied) -> Option<u64> {
        self.halt_after.filter(|&halt| applied.next_index > halt)
    }

    /// What queues transactions in this node's consensus.
    pub(crate) fn submitter(&self) -> &Submitter {
        self.submitter
            .get()
            .expect("consensus starts before anything submits")
    }

    fn lock_nonces(&self) -> MutexGuard<'_, BTreeMap<PublicKey, Nonces>> {
        self.nonces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `submit` with the nonce of the next transaction this node
    /// signs for `account` (whose state nonce is `state_nonce`): after
    /// every nonce it handed out, and never one the state used. The nonce
    /// is taken only if `submit` succeeds, and must then be given back
    /// with [`Shared::release_nonce`] when its request ends.
    ///
    /// The account's nonces are held meanwhile, so that concurrent
    /// requests queue its transactions in nonce order (one queued after a
    /// later nonce would be refused in apply), and a refused submission
    /// leaves no gap that would stall every later one.
    pub(crate) fn submit_with_next_nonce<T, E>(
        &self,
        account: &PublicKey,
        state_nonce: u64,
        submit: impl FnOnce(u64) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut nonces = self.lock_nonces();
        let entry = nonces.entry(*account).or_insert(Nonces {
            next: state_nonce,
            outstanding: 0,
        });
        let nonce = entry.next.max(state_nonce);
        let submitted = submit(nonce);
        if submitted.is_ok() {
            entry.next = nonce + 1;
            entry.outstanding += 1;
        } else if entry.outstanding == 0 {
            nonces.remove(account);
        }
        submitted
    }

    /// Notes that `transaction` was submitted now, to measure how long it
    /// takes to be committed.
    pub(crate) fn track(&self, transaction: Digest) {
        let mut submitted = self.submitted.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Those never committed (refused in apply, or dropped) go, at most
        // once a minute: a full map of recent ones is not rescanned for
        // every submission.
        if submitted.at.len() >= TRACKED_SUBMISSIONS
            && submitted
                .pruned
                .is_none_or(|p| now - p > Duration::from_secs(60))
        {
            submitted
                .at
                .retain(|_, at| now - *at < FORGET_SUBMISSIONS_AFTER);
            submitted.pruned = Some(now);
        }
        if submitted.at.len() < TRACKED_SUBMISSIONS {
            submitted.at.insert(transaction, now);
        }
    }

    /// Submits again the journaled transactions whose nonces the state has
    /// not used (forgetting the others, and those consensus refuses now):
    /// at start, where the process before may have died with them in its
    /// pool, and now and then, for any its pool dropped. Those still in the
    /// pool are copies it ignores. How many were submitted, and forgotten.
    pub(crate) fn resubmit_journaled(&self) -> Result<(usize, usize)> {
        let before = self.journal.len();
        let mut submitted = 0;
        for transaction in self.journal.waiting(&self.state)? {
            match self.submitter().submit(transaction.to_bytes()) {
                Ok(()) => submitted += 1,
                Err(SubmitRefused::Invalid) => self.journal.withdraw(&transaction)?,
                // Full, or stopping: it stays for the next time.
                Err(_) => {}
            }
        }
        Ok((submitted, before.saturating_sub(self.journal.len())))
    }

    /// Ends a request's hold on a nonce of `account`. Once no request holds
    /// one, the account's next nonce comes from the state again: a nonce
    /// handed out and never committed (a dropped transaction) leaves no
    /// gap that would block the account for good.
    pub(crate) fn release_nonce(&self, account: &PublicKey) {
        let mut nonces = self.lock_nonces();
        if let Some(entry) = nonces.get_mut(account) {
            entry.outstanding = entry.outstanding.saturating_sub(1);
            if entry.outstanding == 0 {
                nonces.remove(account);
            }
        }
    }
}

/// Opens the transaction journal at `path`; one that does not open is
/// moved aside (the journal is an aid: the validator runs without what it
/// held) and a new one made.
fn open_journal(path: &Path) -> Result<Journal> {
    match Journal::open(path) {
        Ok(journal) => Ok(journal),
        Err(e) => {
            let aside = path.with_extension(format!(
                "unreadable-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
            ));
            tracing::error!(
                "the transaction journal does not open ({e}); moved to {}, starting a new one",
                aside.display()
            );
            std::fs::rename(path, &aside)
                .with_context(|| format!("cannot move {} aside", path.display()))?;
            Journal::open(path).context("cannot make a new transaction journal")
        }
    }
}

/// Reads the validator configuration at `config_path` and the genesis it
/// names (with its packages, verified): the configuration, the directory
/// its paths are relative to, the genesis and the packages.
pub(crate) fn read_config(
    config_path: &Path,
) -> Result<(NodeFile, &Path, Genesis, Vec<VerifiedPackage>)> {
    let file = NodeFile::read(config_path)?;
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let genesis_path = dir.join(&file.genesis);
    let (genesis, packages) = Genesis::from_config_file_with_packages(&genesis_path)
        .with_context(|| format!("genesis {}", genesis_path.display()))?;
    Ok((file, dir, genesis, packages))
}

/// Why a validator stopped when its peers no longer keep the rounds it
/// needs to catch up: only a state restored from a copy a quorum vouches
/// for lets it go on.
#[derive(Debug, thiserror::Error)]
#[error(
    "this validator is too far behind to catch up: it holds round {round}, and its peers no \
     longer keep the rounds after it (they keep `retention_rounds`); `soma restore-state \
     --config {}` restores its state from a copy a quorum vouches for",
    .config.display()
)]
pub struct TooFarBehind {
    /// The highest round it holds.
    pub round: Round,
    /// Its configuration file.
    pub config: PathBuf,
    /// Whether its configuration lets it restore itself.
    pub restore_automatically: bool,
    /// Whether this run applied commits before it fell behind (if not, a
    /// restore just before it did not bring it within reach).
    pub progressed: bool,
}

/// Runs the validator configured by `config_path` until `stop` resolves
/// or a part of it fails. Given `halt_after`, it applies no commit after
/// that one and proposes no more blocks, but goes on serving its peers, so
/// that every validator gets there; it refuses transactions and reports
/// in `/health` that it halted.
pub async fn run(
    config_path: &Path,
    halt_after: Option<u64>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let (file, dir, genesis, packages) = read_config(config_path)?;
    let key = keyfile::read_secret_key(&dir.join(&file.key_file))?;
    let me = key.public_key();
    let committee = committee(&genesis)?;
    let authority = (0..committee.size())
        .map(|i| AuthorityIndex(i as u32))
        .find(|&i| committee.key(i) == Some(&me))
        .with_context(|| {
            format!(
                "{} is not the key of a genesis validator",
                dir.join(&file.key_file).display()
            )
        })?;
    let addresses = genesis
        .validators()
        .iter()
        .map(|v| {
            file.peers
                .get(&hex::encode(v.key.to_bytes()))
                .copied()
                .with_context(|| {
                    format!(
                        "peers has no address for validator {}",
                        hex::encode(v.key.to_bytes())
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    for (field, peers) in [("peers", &file.peers), ("peer_apis", &file.peer_apis)] {
        for peer in peers.keys() {
            let key = hex_public_key(peer, "peer")?;
            if !genesis.validators().iter().any(|v| v.key == key) {
                bail!("{field} names {peer}, which is not a genesis validator");
            }
        }
    }

    let data = dir.join(&file.data_dir);
    let Host {
        blobs,
        engine,
        cache,
        router,
    } = Host::open(dir, &file, &genesis, &packages)?;
    let executor = Executor::open(&data.join("state"), &genesis, router)?;
    let started_at = executor.next_index();
    if let Some(halt) = halt_after.filter(|&halt| started_at > halt.saturating_add(1)) {
        bail!(
            "this validator has applied {started_at} commits, past commit {halt}: it can halt \
             (`--halt-after`) only after commit {} or a later one",
            started_at - 1
        );
    }
    // A validator that lost its consensus store no longer knows which
    // blocks it signed: started on a new one, it could sign a round twice.
    if executor.next_index() > 0 && !data.join("consensus").exists() {
        bail!(
            "{} is missing, but the state has applied {} commits: this validator may have \
             signed blocks it no longer knows of; put its consensus store back, or keep it \
             stopped until the committee has moved past the rounds it signed and run \
             `soma restore-state --config {}`",
            data.join("consensus").display(),
            executor.next_index(),
            config_path.display()
        );
    }
    let mut api_keys = BTreeMap::new();
    for (token, key_file) in &file.api_keys {
        let account = keyfile::read_secret_key(&dir.join(key_file))?;
        api_keys.insert(*blake3::hash(token.as_bytes()).as_bytes(), account);
    }
    let (applied, _) = watch::channel(Applied {
        next_index: executor.next_index(),
        root: executor.root(),
    });
    let shared = Arc::new(Shared {
        chain_id: genesis.chain_id(),
        chain_name: genesis.chain_name().to_string(),
        parameters: genesis.parameters().clone(),
        state: StateReader::clone(&executor),
        blobs: blobs.clone(),
        key: SecretKey::from_bytes(&key.to_bytes()),
        applied,
        submitter: OnceLock::new(),
        api_keys,
        nonces: Mutex::default(),
        submitted: Mutex::default(),
        journal: open_journal(&data.join("journal"))?,
        sweeping: AtomicBool::new(false),
        metrics: NodeMetrics::default(),
        halt_after,
    });

    let committee_for_roots = committee.clone();
    let mut node = Node::start(NodeConfig {
        authority,
        key: SecretKey::from_bytes(&key.to_bytes()),
        committee,
        addresses,
        store: data.join("consensus"),
        parameters: ConsensusParameters {
            store_retention: file.retention_rounds,
            ..ConsensusParameters::default()
        },
        leader_timeout: Duration::from_millis(file.leader_timeout_ms),
        min_round_delay: Duration::from_millis(file.min_round_delay_ms),
        verifier: Arc::new(Admission(shared.clone())),
    })
    .await?;
    let _ = shared.submitter.set(node.submitter());
    let (work, inbox) = std::sync::mpsc::channel();
    let mut applier = Applier {
        shared: shared.clone(),
        executor: Arc::new(Mutex::new(executor)),
        work,
        roots: RootWatch::new(committee_for_roots.clone()),
        committee: committee_for_roots,
        me: authority,
    };
    tokio::pin!(stop);
    // Commits this node's consensus recorded before the executor applied
    // them (a crash between the two) come first, before clients and the
    // attester see the state.
    let mut progress = tokio::select! {
        caught_up = applier.catch_up(&node, None) => caught_up?,
        () = &mut stop => return Ok(()),
    };

    let journaled = shared.clone();
    match tokio::task::spawn_blocking(move || journaled.resubmit_journaled()).await {
        Ok(Ok((0, 0))) => {}
        Ok(Ok((resubmitted, forgotten))) => tracing::info!(
            resubmitted,
            forgotten,
            "transactions accepted before the last stop and not committed then: submitted again"
        ),
        Ok(Err(e)) => tracing::warn!("cannot submit the journal's transactions again: {e:#}"),
        Err(e) => tracing::warn!("the journal task failed: {e}"),
    }

    let listener = tokio::net::TcpListener::bind(file.api)
        .await
        .with_context(|| format!("cannot listen for the API on {}", file.api))?;
    tokio::spawn(api::serve(listener, shared.clone()));
    let mut runner = soma_execution::JobRunner::new(engine, blobs, Some(cache));
    if file.runner_threads > 0 {
        runner = runner.with_threads(file.runner_threads);
    }
    // Genesis encoders deregistered since are not loaded again.
    let preload = genesis
        .encoders()
        .iter()
        .map(|e| e.package)
        .filter(|p| !matches!(shared.state.encoder(p), Ok(None)))
        .collect();
    let peer_apis = file.peer_apis.values().copied().collect();
    attester::start(shared.clone(), runner, key, preload, peer_apis, inbox)?;
    tracing::info!(
        authority = authority.0,
        api = %file.api,
        next_commit = shared.applied.borrow().next_index,
        "validator running"
    );
    let beyond_retention = node.beyond_retention();
    tokio::pin!(beyond_retention);
    loop {
        tokio::select! {
            commit = node.next_commit() => match commit {
                // What consensus commits after the halt (blocks proposed
                // before the others halted) waits in its store, for the
                // node started again to apply.
                Some(_) if progress == Progress::Halted => {}
                Some(subdag) => progress = applier.catch_up(&node, Some(subdag)).await?,
                None => break,
            },
            round = &mut beyond_retention => {
                return Err(TooFarBehind {
                    round,
                    config: config_path.to_path_buf(),
                    restore_automatically: file.restore_automatically,
                    progressed: shared.applied.borrow().next_index > started_at,
                }
                .into())
            }
            () = &mut stop => return Ok(()),
        }
    }
    node.stopped().await.context("consensus stopped")
}

/// What runs a node's encoders: its blob store (holding the genesis
/// packages), the engine, the compiled-code cache and the network's router.
pub(crate) struct Host {
    pub(crate) blobs: BlobStore,
    pub(crate) engine: Engine,
    pub(crate) cache: CompiledCache,
    pub(crate) router: Option<Router>,
}

impl Host {
    /// Opens the host of the node configured by `file` (in `dir`), with
    /// the verified genesis `packages` installed.
    pub(crate) fn open(
        dir: &Path,
        file: &NodeFile,
        genesis: &Genesis,
        packages: &[VerifiedPackage],
    ) -> Result<Host> {
        let data = dir.join(&file.data_dir);
        let blobs = BlobStore::open(data.join("blobs"))?;
        for package in packages {
            blobs.install(package)?;
        }
        let engine = Engine::new()?;
        let cache = CompiledCache::open(match &file.compiled_cache {
            Some(shared) => dir.join(shared),
            None => data.join("compiled"),
        })?;
        let router = match genesis.router() {
            Some(digest) => Some(Router::load(
                &engine,
                &blobs.package(digest)?,
                Some(&cache),
                genesis.parameters(),
            )?),
            None => None,
        };
        Ok(Host {
            blobs,
            engine,
            cache,
            router,
        })
    }
}

/// The committee genesis names, with the chain's protocol constants.
pub fn committee(genesis: &Genesis) -> Result<Committee> {
    let protocol = Protocol {
        chain_id: genesis.chain_id(),
        epoch: 0,
        gc_depth: genesis.parameters().gc_depth,
    };
    let members = genesis
        .validators()
        .iter()
        .map(|v| (v.key, v.stake))
        .collect();
    Committee::new(members, protocol).context("the genesis validators are not a valid committee")
}

/// Applies commits to the state, in order, once each, and tells waiters
/// and the attester.
struct Applier {
    shared: Arc<Shared>,
    /// Only apply takes it, on a blocking thread.
    executor: Arc<Mutex<Executor>>,
    work: std::sync::mpsc::Sender<Work>,
    /// This node's roots against those its peers' blocks claim.
    roots: RootWatch,
    /// Whose blocks carried a commit's transactions.
    committee: Committee,
    /// This validator.
    me: AuthorityIndex,
}

/// Whether a node goes on applying commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// It applies the next commit when it comes.
    Going,
    /// It has applied the commit it was to halt after, and applies no more.
    Halted,
}

impl Applier {
    /// Applies every commit up to and including `subdag` (or every commit
    /// the consensus store holds, if `None`), reading back from the store
    /// what was not delivered to the executor, and none past the commit to
    /// halt after.
    async fn catch_up(&mut self, node: &Node, subdag: Option<CommittedSubDag>) -> Result<Progress> {
        loop {
            if self.progress(node) == Progress::Halted {
                return Ok(Progress::Halted);
            }
            let next = self.shared.applied.borrow().next_index;
            match subdag {
                Some(ref s) if s.index < next => return Ok(Progress::Going),
                Some(s) if s.index == next => {
                    self.apply(node, s).await?;
                    return Ok(self.progress(node));
                }
                _ => {}
            }
            let missed = node.committed(next, REPLAY_BATCH).await.with_context(|| {
                format!("cannot read commit {next} back from the consensus store")
            })?;
            if missed.is_empty() {
                return match subdag {
                    Some(s) => bail!(
                        "commit {} was delivered, but commit {next} is not in the consensus store",
                        s.index
                    ),
                    None => Ok(Progress::Going),
                };
            }
            let halt = self.shared.halt_after.unwrap_or(u64::MAX);
            for missed in missed.into_iter().take_while(|m| m.index <= halt) {
                self.apply(node, missed).await?;
            }
        }
    }

    /// [`Progress::Halted`] once the commit to halt after is applied; then
    /// `node` proposes no more.
    fn progress(&self, node: &Node) -> Progress {
        match self.shared.halted() {
            Some(halt) => {
                node.stop_proposing();
                tracing::info!(
                    "halted after commit {halt}, as `--halt-after` asked: it applies no more \
                     commits, proposes no more blocks and takes no transactions, and goes on \
                     serving its peers; once every validator reports `\"halted\": true` in \
                     /health, stop them, upgrade them and start them without the switch"
                );
                Progress::Halted
            }
            None => Progress::Going,
        }
    }

    /// Applies one commit on a blocking thread; checks the state roots its
    /// blocks claim against this node's, and has this node's next blocks
    /// claim the new one.
    async fn apply(&mut self, node: &Node, subdag: CommittedSubDag) -> Result<()> {
        let index = subdag.index;
        // Its own blocks' claims tell this node nothing.
        let claims: Vec<(AuthorityIndex, StateRoot)> = subdag
            .blocks
            .iter()
            .map(|b| (b.reference().author, b.block().state_root))
            .filter(|(author, _)| *author != self.me)
            .collect();
        let executor = self.executor.clone();
        let shared = self.shared.clone();
        let committee = self.committee.clone();
        let (effects, work, attested) = tokio::task::spawn_blocking(move || {
            // Each transaction with the key that signed its block: a
            // validator's own transactions (its attestations) need no
            // check of their own.
            let (mut transactions, mut proposers) = (Vec::new(), Vec::new());
            for (author, transaction) in subdag.transactions() {
                // A verified block's author is always a member.
                let key = committee.key(author).with_context(|| {
                    format!("commit {index} has a block of {author:?}, who is not in the committee")
                })?;
                transactions.push(transaction.to_vec());
                proposers.push(*key);
            }
            let mut executor = executor.lock().unwrap_or_else(|e| e.into_inner());
            let effects = executor.apply(Commit {
                index: subdag.index,
                digest: subdag.digest(),
                transactions: &transactions,
                proposers: Some(&proposers),
            })?;
            // What the attester does about applied transactions: a
            // submission made a job under its digest; a registration names
            // a package to have before the encoder's first job; a
            // deregistration one it no longer needs loaded.
            let mut work = Vec::new();
            // Jobs an applied attestation may have finalised.
            let mut attested = Vec::new();
            for (bytes, receipt) in transactions.iter().zip(&effects.receipts) {
                let Ok(signed) = SignedTransaction::from_bytes(bytes) else {
                    continue;
                };
                let applied = receipt.rejection.is_none();
                // The journal is an aid: its trouble never stops apply.
                if let Err(e) = shared.journal.committed(&signed, applied) {
                    tracing::warn!("cannot update the transaction journal: {e}");
                }
                if !applied {
                    continue;
                }
                match &signed.transaction().action {
                    Action::SubmitData { .. } => work.push(Work::Job(signed.digest())),
                    Action::RegisterEncoder { manifest, .. } => {
                        work.push(Work::Fetch(Digest::of(manifest)));
                    }
                    Action::DeregisterEncoder { package } => work.push(Work::Forget(*package)),
                    Action::Attest { job, .. } => attested.push(*job),
                    _ => {}
                }
            }
            attested.sort();
            attested.dedup();
            Ok::<_, anyhow::Error>((effects, work, attested))
        })
        .await
        .context("the apply task failed")?
        .with_context(|| format!("cannot apply commit {index}"))?;
        let metrics = &self.shared.metrics;
        metrics.commits_applied.fetch_add(1, Ordering::Relaxed);
        {
            let mut submitted = self
                .shared
                .submitted
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for receipt in &effects.receipts {
                let counter = match receipt.rejection {
                    None => &metrics.transactions_applied,
                    Some(_) => &metrics.transactions_rejected,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some(at) = receipt.transaction.and_then(|d| submitted.at.remove(&d)) {
                    let waited = at.elapsed().as_millis() as u64;
                    metrics
                        .commit_latency_ms
                        .fetch_add(waited, Ordering::Relaxed);
                    metrics.commit_latency_count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for id in attested {
            let Ok(Some(job)) = self.shared.state.job(&id) else {
                continue;
            };
            if let JobStatus::Finalised(decided) = &job.status
                && decided.commit == index
            {
                metrics.finalisations.fetch_add(1, Ordering::Relaxed);
                metrics
                    .finalisation_commits
                    .fetch_add(index.saturating_sub(job.commit), Ordering::Relaxed);
                metrics
                    .deviant_attestations
                    .fetch_add(decided.deviant.len() as u64, Ordering::Relaxed);
            }
        }
        if (index + 1).is_multiple_of(JOURNAL_SWEEP)
            && self.shared.journal.len() > 0
            && !self.shared.sweeping.swap(true, Ordering::AcqRel)
        {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = shared.resubmit_journaled() {
                    tracing::warn!("cannot submit the journal's transactions again: {e:#}");
                }
                shared.sweeping.store(false, Ordering::Release);
            });
        }
        let judged = self.roots.observe(index + 1, effects.root, claims)?;
        metrics
            .state_roots_compared
            .fetch_add(judged.compared as u64, Ordering::Relaxed);
        if judged.deviant > 0 {
            tracing::warn!(
                commit = index,
                deviant = judged.deviant,
                "blocks claim other state roots than this node's"
            );
            metrics
                .deviant_state_roots
                .fetch_add(judged.deviant as u64, Ordering::Relaxed);
        }
        node.set_state_root(StateRoot {
            commits: index + 1,
            root: effects.root,
        });
        self.shared.applied.send_replace(Applied {
            next_index: index + 1,
            root: effects.root,
        });
        let stopped = || anyhow::anyhow!("the attester stopped; see the log above");
        for work in work {
            self.work.send(work).map_err(|_| stopped())?;
        }
        self.work.send(Work::Applied(index)).map_err(|_| stopped())
    }
}

/// The committee a configuration's validator runs in, read without
/// starting anything (tools and tests sign blocks for it).
pub fn committee_of(config_path: &Path) -> Result<Committee> {
    let file = config::NodeFile::read(config_path)?;
    let dir = config_path.parent().unwrap_or(Path::new("."));
    committee(&Genesis::from_config_file(&dir.join(&file.genesis))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Genesis fixes the depth (execution cannot depend on consensus); a
    /// network written with the defaults runs at consensus's own.
    #[test]
    fn genesis_and_consensus_default_to_one_gc_depth() {
        assert_eq!(Parameters::default().gc_depth, Protocol::DEFAULT_GC_DEPTH);
    }
}
