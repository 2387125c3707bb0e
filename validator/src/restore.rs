//! `soma verify-state` checks a stopped validator's state against its own
//! root; `soma restore-state` replaces it with a copy from a peer, when it
//! is lost or diverged.
//!
//! The copy (`GET /v1/snapshot` of the most advanced peer) is trusted only
//! for a root that validators of a quorum of stake vouch for, each by
//! signing it (`GET /v1/roots/<commits>`); the copy's entries must hash to
//! the state digest that root folds in. The old state is kept aside. The
//! node, started again, applies the commits after the copy's from its
//! consensus store.

use crate::client::ApiClient;
use crate::config::hex_public_key;
use crate::node::{Host, committee, read_config};
use crate::roots::claim_message;
use anyhow::{Context, Result, bail};
use soma_consensus::{AuthorityIndex, Committee, StakeAggregator};
use soma_crypto::{Domain, PublicKey, Signature};
use soma_execution::Executor;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a peer may take to answer a question.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a peer may take to send its snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

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
    let _consensus =
        soma_consensus::FjallStore::open(&data.join("consensus")).with_context(|| {
            format!(
                "cannot open {}: stop the validator first",
                data.join("consensus").display()
            )
        })?;

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
    let chain_id = genesis.chain_id();
    let mut failures = Vec::new();
    let mut chosen = None;
    for (_, source) in candidates {
        match copy_from(source, &peers, &committee, &chain_id) {
            Ok(copy) => {
                chosen = Some(copy);
                break;
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let Some(Trusted {
        snapshot,
        commits,
        root,
        vouched,
    }) = chosen
    else {
        bail!(
            "no peer's copy could be trusted; nothing was changed: {}",
            failures.join("; ")
        );
    };

    let router = Host::open(dir, &file, &genesis, &packages)?.router;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Restored beside the state, then swapped in: until the swap, the old
    // state is where it was.
    let staged = data.join(format!("state.restored-{since_epoch}"));
    drop(
        Executor::restore(&staged, &genesis, router, &snapshot, root)
            .context("the peer's snapshot does not restore; nothing was changed")?,
    );
    let state = data.join("state");
    let replaced = match state.exists() {
        true => {
            let aside = data.join(format!("state.replaced-{since_epoch}"));
            std::fs::rename(&state, &aside)
                .with_context(|| format!("cannot move {} aside", state.display()))?;
            Some(aside)
        }
        false => None,
    };
    if let Err(e) = std::fs::rename(&staged, &state) {
        if let Some(aside) = &replaced {
            std::fs::rename(aside, &state).with_context(|| {
                format!(
                    "cannot move {} back after failing to move the copy in ({e}); \
                     the copy is at {}",
                    aside.display(),
                    staged.display()
                )
            })?;
        }
        return Err(e).context("cannot move the restored state into place; nothing was changed");
    }
    Ok(Restored {
        commits,
        root,
        vouched,
        replaced,
    })
}

/// `source`'s snapshot, if validators of a quorum of stake among `peers`
/// vouch for the root it claims.
fn copy_from(
    source: &ApiClient,
    peers: &[(PublicKey, AuthorityIndex, ApiClient)],
    committee: &Committee,
    chain_id: &[u8; 32],
) -> Result<Trusted> {
    let (status, snapshot) = source
        .with_timeout(SNAPSHOT_TIMEOUT)
        .get_bytes("/v1/snapshot")?;
    if status != 200 {
        bail!(
            "a peer refused its snapshot ({status}): {}",
            String::from_utf8_lossy(&snapshot)
        );
    }
    let (commits, root) = Executor::snapshot_claim(&snapshot)?;
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
        snapshot,
        commits,
        root,
        vouched,
    })
}

/// A peer's snapshot that a quorum vouches for.
struct Trusted {
    snapshot: Vec<u8>,
    commits: u64,
    root: [u8; 32],
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
