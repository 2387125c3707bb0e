//! `soma verify-state` checks a stopped validator's state against its own
//! root; `soma restore-state` replaces it with a copy from a peer, when it
//! is lost or diverged.
//!
//! The copy (`GET /v1/snapshot` of the most advanced peer) is trusted only
//! for a root that validators of a quorum of stake vouch for, each by
//! signing it (`GET /v1/roots/<commits>`); the copy's entries must hash to
//! the state digest that root folds in. The old state is kept aside. The
//! node, started again, applies the commits after the copy's from its
//! consensus store; if that store does not reach the copy's last commit
//! (the validator was down longer than its peers keep blocks), it is put
//! aside too and a new one is seeded with the tail of a peer's commit log
//! (`/consensus/v1/commit-records`), checked to end in the digest of the
//! commit the vouched root binds ([`Checkpoint`]). Consensus then resumes
//! after that commit.

use crate::client::ApiClient;
use crate::config::hex_public_key;
use crate::node::{Host, committee, read_config};
use crate::roots::claim_message;
use anyhow::{Context, Result, bail};
use soma_consensus::{
    AuthorityIndex, COMMIT_RECORDS_PATH, Checkpoint, CheckpointError, CommitRecord, Committee,
    FjallStore, MAX_RECORDS, Round, StakeAggregator, Store, decode_records,
};
use soma_crypto::{Domain, PublicKey, Signature};
use soma_execution::{
    ENTRY_OVERHEAD, ExecutionError, Executor, MAX_SNAPSHOT_PAGE, SNAPSHOT_PAGE_BYTES, SnapshotClaim,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a peer may take to answer a question.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a peer may take to send a page of its snapshot.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for peers to vouch for the copy's root.
const VOUCH_WAIT: Duration = Duration::from_secs(10);

/// What [`restore_state`] did.
#[derive(Debug)]
pub struct Restored {
    /// Commits the restored state has applied.
    pub commits: u64,
    /// Its root.
    pub root: [u8; 32],
    /// Stake of the validators that vouched for the root, and the total.
    pub vouched: (u64, u64),
    /// Where the state it replaced was moved, if there was one.
    pub replaced: Option<PathBuf>,
    /// Where the consensus store it replaced by one seeded at the copy's
    /// last commit was moved, if it did.
    pub consensus_replaced: Option<PathBuf>,
}

impl std::fmt::Display for Restored {
    /// What was restored and what it replaced, one line each.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored the state after {} commits (root {}), vouched for by validators of {} of \
             {} stake",
            self.commits,
            hex::encode(self.root),
            self.vouched.0,
            self.vouched.1
        )?;
        if let Some(old) = &self.replaced {
            write!(f, "\nthe state it replaced is at {}", old.display())?;
        }
        if let Some(old) = &self.consensus_replaced {
            write!(
                f,
                "\nits consensus store did not reach that commit: a new one resumes after it (the \
                 old one is at {})",
                old.display()
            )?;
        }
        Ok(())
    }
}

/// Checks that the state of the stopped validator configured at
/// `config_path` is whole: every entry it holds hashes to the state digest
/// its last root folded in. Reads the whole state; the commits it has
/// applied.
pub fn verify_state(config_path: &Path) -> Result<u64> {
    let (file, dir, genesis, packages) = read_config(config_path)?;
    let router = Host::open(dir, &file, &genesis, &packages)?.router;
    let state = dir.join(&file.data_dir).join("state");
    if !state.exists() {
        bail!("there is no state at {}", state.display());
    }
    let executor = Executor::open(&state, &genesis, router)
        .with_context(|| format!("cannot open {} (stop the validator first)", state.display()))?;
    executor.verify_state()?;
    Ok(executor.next_index())
}

/// Restores the state of the validator configured at `config_path` (which
/// must not be running: its consensus store is held meanwhile) from its
/// peers' APIs (`peer_apis`). Every validator but this one counts toward
/// the quorum: with four of equal stake, all three others must vouch.
pub fn restore_state(config_path: &Path) -> Result<Restored> {
    let (file, dir, genesis, packages) = read_config(config_path)?;
    let committee = committee(&genesis)?;
    let peers = file
        .peer_apis
        .iter()
        .map(|(key, address)| {
            let key = hex_public_key(key, "peer_apis")?;
            let index = committee
                .authorities()
                .find(|&a| committee.key(a) == Some(&key))
                .with_context(|| format!("peer_apis names {key:?}, not a genesis validator"))?;
            Ok((key, index, ApiClient::new(*address, None, PEER_TIMEOUT)))
        })
        .collect::<Result<Vec<_>>>()?;
    if peers.is_empty() {
        bail!("the configuration names no peer_apis to restore the state from");
    }

    // Holding the consensus store proves the validator is not running
    // (it holds it while it does), and keeps it from starting meanwhile.
    let data = dir.join(&file.data_dir);
    let consensus_path = data.join("consensus");
    let consensus = FjallStore::open(&consensus_path).with_context(|| {
        format!(
            "cannot open {}: stop the validator first",
            consensus_path.display()
        )
    })?;
    let gc_depth = committee.protocol().gc_depth;
    let recovered = consensus.recover(gc_depth)?;

    // The most advanced peers first; a copy is taken only once a quorum
    // vouches for its root, so a peer that lies about its progress or its
    // state costs one try.
    let mut candidates: Vec<(u64, &ApiClient)> = peers
        .iter()
        .filter_map(|(_, _, api)| {
            let health = api.get("/health").ok()?.ok().ok()?;
            Some((health["next_commit"].as_u64()?, api))
        })
        .collect();
    if candidates.is_empty() {
        bail!("no peer's API answered");
    }
    candidates.sort_by_key(|(next, _)| std::cmp::Reverse(*next));
    remove_unfinished(&data)?;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Restored beside the state, then swapped in: until the swap, the old
    // state is where it was. Restoring checks the copy against the vouched
    // root, which binds the digest of the copy's last commit.
    let staged = data.join(format!("state.restored-{since_epoch}"));
    let chain_id = genesis.chain_id();
    let mut failures = Vec::new();
    let mut chosen = None;
    for (_, source) in candidates {
        let peer = source.address();
        let trusted = match copy_from(source, &peers, &committee, &chain_id) {
            Ok(trusted) => trusted,
            Err(e) => {
                failures.push(format!("{peer}: {e:#}"));
                continue;
            }
        };
        let claim = trusted.claim;
        tracing::info!(
            "restoring the state after {} commits from {peer}: {} entries, {} MiB",
            claim.commits,
            claim.entries,
            claim.bytes >> 20
        );
        let router = Host::open(dir, &file, &genesis, &packages)?.router;
        // The root binds how much the state holds: a peer that sends it
        // slower than this, or sends more, costs one bounded try.
        let wire = claim
            .bytes
            .saturating_add(claim.entries.saturating_mul(ENTRY_OVERHEAD as u64));
        let deadline = Instant::now() + PAGE_TIMEOUT + Duration::from_secs(wire / MIN_RESTORE_RATE);
        let mut read = (1, trusted.first_page.len());
        let restored = Executor::restore(
            &staged,
            &genesis,
            router,
            claim.root,
            &trusted.first_page,
            SNAPSHOT_PAGE_BYTES,
            |after| {
                let page = next_page(source, claim.commits, after, deadline)
                    .map_err(|e| format!("{e:#}"))?;
                read = (read.0 + 1, read.1 + page.len());
                if read.0 % PAGES_PER_REPORT == 0 {
                    tracing::info!(
                        "restoring: {} pages, {} MiB of the snapshot read",
                        read.0,
                        read.1 >> 20
                    );
                }
                Ok::<_, String>(page)
            },
        );
        match restored {
            Ok(restored) => {
                drop(restored);
                tracing::info!(
                    "restored the state from {} pages, {} MiB",
                    read.0,
                    read.1 >> 20
                );
                chosen = Some(trusted);
                break;
            }
            // The peer's doing: try the next.
            Err(e @ (ExecutionError::Snapshot(_) | ExecutionError::WrongGenesis { .. })) => {
                failures.push(format!("{peer}: its snapshot does not restore: {e}"))
            }
            // This node's: another peer's copy would fare no better.
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot write the restored state at {}; nothing was changed",
                    staged.display()
                )));
            }
        }
    }
    let Some(Trusted { claim, vouched, .. }) = chosen else {
        bail!(
            "no peer's copy could be trusted; nothing was changed: {}",
            failures.join("; ")
        );
    };
    let (commits, root) = (claim.commits, claim.root);
    // A consensus log that does not reach the copy is replaced by one
    // seeded at its last commit, made beside it while the old one is held.
    let seeded = match recovered.progress.next_index < commits {
        true => {
            let consensus_peers: Vec<(AuthorityIndex, ApiClient)> = peers
                .iter()
                .filter_map(|(key, index, _)| {
                    let address = file.peers.get(&hex::encode(key.to_bytes()))?;
                    Some((*index, ApiClient::new(*address, None, PEER_TIMEOUT)))
                })
                .collect();
            let path = data.join(format!("consensus.seeded-{since_epoch}"));
            let made = checkpoint_from_peers(&consensus_peers, &claim, gc_depth).and_then(|c| {
                let mut store = FjallStore::open(&path)?;
                c.seed(&mut store, committee.digest(), recovered.own_last)?;
                Ok(())
            });
            if let Err(e) = made {
                let _ = std::fs::remove_dir_all(&staged);
                let _ = std::fs::remove_dir_all(&path);
                return Err(e.context("nothing was changed"));
            }
            Some(path)
        }
        false => None,
    };
    let replaced = match swap_in(&staged, &data.join("state"), since_epoch) {
        Ok(replaced) => replaced,
        Err(e) => {
            if let Some(seeded) = &seeded {
                let _ = std::fs::remove_dir_all(seeded);
            }
            return Err(e.context("cannot move the restored state into place; nothing was changed"));
        }
    };
    drop(consensus);
    let consensus_replaced = match seeded {
        Some(seeded) => swap_in(&seeded, &consensus_path, since_epoch).with_context(|| {
            format!(
                "the state is restored, but the consensus store seeded at its last commit ({}) \
                 could not replace the old one: move it to {} by hand",
                seeded.display(),
                consensus_path.display()
            )
        })?,
        None => None,
    };
    Ok(Restored {
        commits,
        root,
        vouched,
        replaced,
        consensus_replaced,
    })
}

/// Removes the copies that restores before `restored` moved aside in the
/// data directory of the validator configured at `config_path`, keeping
/// the ones `restored` moved: what a validator that restores itself does,
/// so that its copies do not pile up. How many it removed.
pub fn remove_older_copies(config_path: &Path, restored: &Restored) -> Result<usize> {
    let (file, dir, _, _) = read_config(config_path)?;
    let kept = [&restored.replaced, &restored.consensus_replaced];
    let removed = remove_named(
        &dir.join(&file.data_dir),
        &["state.replaced-", "consensus.replaced-"],
        |path| !kept.iter().any(|k| k.as_deref() == Some(path)),
    )?;
    Ok(removed.len())
}

/// Removes what a restore killed before it finished left in `data`: a
/// staged state and a seeded consensus store, which nothing else uses (the
/// caller holds the consensus store, so no restore runs beside it).
fn remove_unfinished(data: &Path) -> Result<()> {
    for path in remove_named(data, &["state.restored-", "consensus.seeded-"], |_| true)? {
        tracing::info!(
            "removed {}, left by a restore that did not finish",
            path.display()
        );
    }
    Ok(())
}

/// Removes the directories in `data` whose names start with one of
/// `prefixes` and that `remove` chooses; which.
fn remove_named(
    data: &Path,
    prefixes: &[&str],
    remove: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(data).with_context(|| format!("cannot read {}", data.display()))?;
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if prefixes.iter().any(|p| name.starts_with(p)) && remove(&path) {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Moves `staged` to `target`, and what was at `target` (if anything)
/// aside to `<target>.replaced-<since_epoch>`, which it returns. If the
/// second move fails, the first is undone: `target` is as it was.
fn swap_in(staged: &Path, target: &Path, since_epoch: u64) -> Result<Option<PathBuf>> {
    let aside = match target.exists() {
        true => {
            let name = target.file_name().unwrap_or_default().to_string_lossy();
            let aside = target.with_file_name(format!("{name}.replaced-{since_epoch}"));
            std::fs::rename(target, &aside)
                .with_context(|| format!("cannot move {} aside", target.display()))?;
            Some(aside)
        }
        false => None,
    };
    if let Err(e) = std::fs::rename(staged, target) {
        if let Some(aside) = &aside {
            std::fs::rename(aside, target).with_context(|| {
                format!(
                    "cannot move {} back after failing to move {} in ({e})",
                    aside.display(),
                    staged.display()
                )
            })?;
        }
        return Err(e).with_context(|| format!("cannot move {} in", staged.display()));
    }
    Ok(aside)
}

/// Most pages of commit records read from one peer.
const MAX_RECORD_PAGES: usize = 64;

/// A checkpoint at the last commit of `claim` from the first of
/// `peers` whose commit log reaches it with the digest the claim's root
/// binds.
fn checkpoint_from_peers(
    peers: &[(AuthorityIndex, ApiClient)],
    claim: &SnapshotClaim,
    gc_depth: Round,
) -> Result<Checkpoint> {
    let mut failures = Vec::new();
    for (index, peer) in peers {
        match checkpoint_from(peer, claim, gc_depth) {
            Ok(checkpoint) => return Ok(checkpoint),
            Err(e) => failures.push(format!("validator {}: {e:#}", index.0)),
        }
    }
    bail!(
        "this validator's consensus store ends before commit {} and no peer's commit log gave a \
         checkpoint there: {}",
        claim.commits - 1,
        failures.join("; ")
    )
}

/// The tail of `peer`'s commit log up to the claim's last commit, read
/// backwards a page at a time until it reaches below the
/// garbage-collection round.
fn checkpoint_from(peer: &ApiClient, claim: &SnapshotClaim, gc_depth: Round) -> Result<Checkpoint> {
    let mut records: Vec<CommitRecord> = Vec::new();
    let mut end = claim.commits;
    for _ in 0..MAX_RECORD_PAGES {
        let from = end.saturating_sub(MAX_RECORDS as u64);
        let path = format!("{COMMIT_RECORDS_PATH}?from={from}&limit={}", end - from);
        let (status, body) = peer.get_bytes(&path)?;
        if status != 200 {
            bail!("it refused its commit log ({status})");
        }
        let mut page = decode_records(&body).context("its commit records do not decode")?;
        page.retain(|r| r.index < end);
        if page.first().map(|r| r.index) != Some(from) {
            bail!("its commit log does not hold commits {from} to {}", end - 1);
        }
        page.append(&mut records);
        records = page;
        match Checkpoint::verify(records.clone(), claim.last_commit, gc_depth) {
            Err(CheckpointError::TooShort { .. }) if from > 0 => end = from,
            verified => return Ok(verified?),
        }
    }
    bail!("its commit log reaches back too far to read")
}

/// The first page of `source`'s snapshot, if validators of a quorum of
/// stake among `peers` vouch for the root it claims.
fn copy_from(
    source: &ApiClient,
    peers: &[(PublicKey, AuthorityIndex, ApiClient)],
    committee: &Committee,
    chain_id: &[u8; 32],
) -> Result<Trusted> {
    let first_page = page(source, "/v1/snapshot", None)?;
    let claim = Executor::snapshot_claim(&first_page)?;
    let (commits, root) = (claim.commits, claim.root);
    // The copy came from the most advanced peer: others may apply its
    // last commits a moment later.
    let mut stake = StakeAggregator::new();
    let mut vouched_by = vec![false; peers.len()];
    let mut doubts = Vec::new();
    let deadline = std::time::Instant::now() + VOUCH_WAIT;
    loop {
        doubts.clear();
        for ((key, index, api), done) in peers.iter().zip(&mut vouched_by) {
            if *done {
                continue;
            }
            match vouches(api, key, chain_id, commits, &root) {
                Ok(()) => {
                    stake.add(*index, committee);
                    *done = true;
                }
                Err(e) => doubts.push(format!("validator {}: {e:#}", index.0)),
            }
        }
        if stake.reached_quorum(committee) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let vouched = (stake.stake(), committee.total_stake());
    if !stake.reached_quorum(committee) {
        bail!(
            "validators of only {} of {} stake vouch for the root {} after {commits} commits, \
             a quorum is {} ({})",
            vouched.0,
            vouched.1,
            hex::encode(root),
            committee.quorum_threshold(),
            doubts.join("; ")
        );
    }
    Ok(Trusted {
        first_page,
        claim,
        vouched,
    })
}

/// Tries to read a snapshot page of a peer that is busy or whose answer
/// failed, within the restore's deadline.
const PAGE_TRIES: usize = 10;

/// The least rate, in bytes of encoded entries per second, at which a
/// peer must send its snapshot (after [`PAGE_TIMEOUT`] of grace).
const MIN_RESTORE_RATE: u64 = 1 << 20;

/// The page of `source`'s snapshot at `path`, by `deadline` if given.
fn page(source: &ApiClient, path: &str, deadline: Option<Instant>) -> Result<Vec<u8>> {
    let source = source.with_max_body(MAX_SNAPSHOT_PAGE);
    let mut trouble = String::new();
    for _ in 0..PAGE_TRIES {
        let left = deadline.map_or(PAGE_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            bail!(
                "the peer sends its snapshot slower than {} KiB/s ({trouble})",
                MIN_RESTORE_RATE >> 10
            );
        }
        let source = source.with_timeout(left.min(PAGE_TIMEOUT));
        // Page requests change nothing: a busy peer, a failed exchange or
        // a peer that cannot read its state now is asked again.
        match source.get_bytes(path) {
            Ok((200, page)) => return Ok(page),
            Ok((status @ (429 | 503), reason)) => {
                trouble = format!("{status}: {}", String::from_utf8_lossy(&reason))
            }
            Ok((status, reason)) => bail!(
                "the peer refused a page of its snapshot ({status}): {}",
                String::from_utf8_lossy(&reason)
            ),
            Err(e) => trouble = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("no page of the peer's snapshot after {PAGE_TRIES} tries: {trouble}")
}

/// The page of `source`'s snapshot after `commits` commits that follows
/// the entry `after` names.
fn next_page(source: &ApiClient, commits: u64, after: &[u8], deadline: Instant) -> Result<Vec<u8>> {
    let path = format!(
        "/v1/snapshot?commits={commits}&after={}",
        hex::encode(after)
    );
    page(source, &path, Some(deadline))
}

/// Pages of a snapshot between two progress reports.
const PAGES_PER_REPORT: usize = 16;

/// A peer's snapshot that a quorum vouches for.
struct Trusted {
    /// Its first page, which says what it claims.
    first_page: Vec<u8>,
    claim: SnapshotClaim,
    /// Stake that vouched, and the total.
    vouched: (u64, u64),
}

/// Whether the validator of `key` signs, at `api`, that the root of chain
/// `chain_id` after `commits` commits is `root`.
fn vouches(
    api: &ApiClient,
    key: &PublicKey,
    chain_id: &[u8; 32],
    commits: u64,
    root: &[u8; 32],
) -> Result<()> {
    let claim = api.get(&format!("/v1/roots/{commits}"))?.ok()?;
    let field = |name: &str| {
        claim[name]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .with_context(|| format!("no hex `{name}` in {claim}"))
    };
    if field("root")? != root {
        bail!("it has root {} there", claim["root"]);
    }
    let signature: [u8; 64] = field("signature")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a signature is 64 bytes"))?;
    key.verify(
        Domain::StateRoot,
        &claim_message(chain_id, commits, root),
        &Signature(signature),
    )
    .context("its signature does not verify")
}
