//! `soma restore-state`: replaces a stopped validator's state with a copy
//! from a peer, when its own is lost or diverged.
//!
//! The copy (`GET /v1/snapshot` of the most advanced peer) is trusted only
//! for a root that validators of a quorum of stake vouch for, each by
//! signing it (`GET /v1/roots/<commits>`); the copy's entries must hash to
//! the state digest that root folds in. The old state is kept aside. The
//! node, started again, applies the commits after the copy's from its
//! consensus store.

use crate::client::ApiClient;
use crate::config::{NodeFile, hex_public_key};
use crate::node::{committee, load_router};
use crate::roots::claim_message;
use anyhow::{Context, Result, bail};
use soma_consensus::StakeAggregator;
use soma_crypto::{Domain, PublicKey, Signature};
use soma_execution::{Executor, Genesis};
use soma_host::package::BlobStore;
use soma_host::{CompiledCache, Engine};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a peer may take to answer, a snapshot included.
const PEER_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Restores the state of the validator configured at `config_path` (which
/// must not be running) from its peers' APIs (`peer_apis`).
pub fn restore_state(config_path: &Path) -> Result<Restored> {
    let file = NodeFile::read(config_path)?;
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let genesis_path = dir.join(&file.genesis);
    let (genesis, packages) = Genesis::from_config_file_with_packages(&genesis_path)
        .with_context(|| format!("genesis {}", genesis_path.display()))?;
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

    // The most advanced peer's copy.
    let (_, source) = peers
        .iter()
        .filter_map(|(_, _, api)| {
            let health = api.get("/health").ok()?.ok().ok()?;
            Some((health["next_commit"].as_u64()?, api))
        })
        .max_by_key(|(next, _)| *next)
        .context("no peer's API answered")?;
    let (status, snapshot) = source.get_bytes("/v1/snapshot")?;
    if status != 200 {
        bail!(
            "the peer refused its snapshot ({status}): {}",
            String::from_utf8_lossy(&snapshot)
        );
    }
    let (commits, root) = Executor::snapshot_claim(&snapshot)?;

    // Who vouches for its root. The copy came from the most advanced peer:
    // others may apply its last commits a moment later.
    let chain_id = genesis.chain_id();
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
            match vouches(api, key, &chain_id, commits, &root) {
                Ok(()) => {
                    stake.add(*index, &committee);
                    *done = true;
                }
                Err(e) => doubts.push(format!("validator {}: {e:#}", index.0)),
            }
        }
        if stake.reached_quorum(&committee) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let vouched = (stake.stake(), committee.total_stake());
    if !stake.reached_quorum(&committee) {
        bail!(
            "validators of only {} of {} stake vouch for the root {} after {commits} commits; \
             a quorum is {}; nothing was changed ({})",
            vouched.0,
            vouched.1,
            hex::encode(root),
            committee.quorum_threshold(),
            doubts.join("; ")
        );
    }

    let data = dir.join(&file.data_dir);
    let blobs = BlobStore::open(data.join("blobs"))?;
    for package in &packages {
        blobs.install(package)?;
    }
    let engine = Engine::new()?;
    let cache = CompiledCache::open(match &file.compiled_cache {
        Some(shared) => dir.join(shared),
        None => data.join("compiled"),
    })?;
    let router = load_router(&genesis, &blobs, &engine, &cache)?;
    let state = data.join("state");
    let replaced = match state.exists() {
        true => {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let aside = data.join(format!("state.replaced-{since_epoch}"));
            std::fs::rename(&state, &aside)
                .with_context(|| format!("cannot move {} aside", state.display()))?;
            Some(aside)
        }
        false => None,
    };
    if let Err(e) = Executor::restore(&state, &genesis, router, &snapshot, root) {
        if let Some(aside) = &replaced {
            let _ = std::fs::rename(aside, &state);
        }
        return Err(e).context("the peer's snapshot does not restore; nothing was changed");
    }
    Ok(Restored {
        commits,
        root,
        vouched,
        replaced,
    })
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
