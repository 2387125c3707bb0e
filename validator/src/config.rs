//! A validator's configuration file and the generation of a local
//! network's configurations.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use soma_consensus::{
    AcceptAny, AuthorityIndex, Committee, DEFAULT_MIN_ROUND_DELAY, NodeConfig, Parameters, Protocol,
};
use soma_crypto::keyfile;
use soma_crypto::{PublicKey, SecretKey};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One member of the committee as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Hex ed25519 public key.
    pub key: String,
    /// Voting stake.
    pub stake: u64,
    /// Where it listens.
    pub address: SocketAddr,
}

/// The chain the committee runs: every validator's file must say the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainFile {
    /// Hex chain id (the digest of genesis).
    pub id: String,
    /// The committee's epoch.
    pub epoch: u64,
    /// Rounds kept below the last commit; the oldest a parent may be.
    pub gc_depth: u32,
}

/// What `soma node --config` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidatorFile {
    /// The chain and its consensus constants.
    pub chain: ChainFile,
    /// This validator's index in `committee`.
    pub authority: u32,
    /// Its secret key file, relative to the configuration file.
    pub key_file: PathBuf,
    /// Its consensus store directory, relative to the configuration file.
    pub store: PathBuf,
    /// Milliseconds to wait for a round's leader.
    pub leader_timeout_ms: u64,
    /// The fewest milliseconds between two of this validator's blocks.
    #[serde(default = "default_min_round_delay_ms")]
    pub min_round_delay_ms: u64,
    /// The committee, in index order.
    pub committee: Vec<Member>,
}

fn default_min_round_delay_ms() -> u64 {
    DEFAULT_MIN_ROUND_DELAY.as_millis() as u64
}

impl ValidatorFile {
    /// Reads a configuration file.
    pub fn read(path: &Path) -> Result<ValidatorFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a validator configuration", path.display()))
    }

    /// The node configuration this file describes, with paths resolved
    /// against `dir` (the file's directory).
    pub fn node_config(&self, dir: &Path) -> Result<NodeConfig> {
        let mut members = Vec::new();
        for (i, member) in self.committee.iter().enumerate() {
            let key = PublicKey::from_hex(&member.key)
                .with_context(|| format!("committee member {i} has an invalid key"))?;
            members.push((key, member.stake));
        }
        let chain_id = hex::decode(&self.chain.id)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .context("chain.id is not 32 hex bytes")?;
        let protocol = Protocol {
            chain_id,
            epoch: self.chain.epoch,
            gc_depth: self.chain.gc_depth,
        };
        let committee = Committee::new(members, protocol).context("invalid committee")?;
        let key_path = dir.join(&self.key_file);
        let key = keyfile::read_secret_key(&key_path)?;
        if committee.key(AuthorityIndex(self.authority)) != Some(&key.public_key()) {
            bail!(
                "{} is not the key of committee member {}",
                key_path.display(),
                self.authority
            );
        }
        Ok(NodeConfig {
            authority: AuthorityIndex(self.authority),
            key,
            committee,
            addresses: self.committee.iter().map(|m| m.address).collect(),
            store: dir.join(&self.store),
            parameters: Parameters::default(),
            leader_timeout: Duration::from_millis(self.leader_timeout_ms),
            min_round_delay: Duration::from_millis(self.min_round_delay_ms),
            verifier: Arc::new(AcceptAny),
        })
    }
}

/// Writes keys and configurations for `validators` validators on
/// 127.0.0.1 from `base_port` into `dir/validator-<i>/config.json`;
/// returns the configuration paths.
pub fn write_localnet(dir: &Path, validators: usize, base_port: u16) -> Result<Vec<PathBuf>> {
    if validators == 0 {
        bail!("a network needs at least one validator");
    }
    let fits = u16::try_from(validators - 1)
        .ok()
        .and_then(|n| base_port.checked_add(n))
        .is_some();
    if !fits {
        bail!("{validators} validators from port {base_port} run past port 65535");
    }
    let keys = (0..validators)
        .map(|_| SecretKey::generate())
        .collect::<Result<Vec<_>, _>>()?;
    let committee: Vec<Member> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Member {
            key: hex::encode(k.public_key().to_bytes()),
            stake: 1,
            // Checked above: every port fits.
            address: SocketAddr::from(([127, 0, 0, 1], base_port + i as u16)),
        })
        .collect();
    // The chain id is the digest of this genesis, the committee of fresh
    // keys: each localnet is a chain of its own, and nothing signed for one
    // replays on another.
    let mut genesis = blake3::Hasher::new_derive_key("soma/localnet-genesis/v1");
    for member in &committee {
        genesis.update(member.key.as_bytes());
    }
    let chain = ChainFile {
        id: genesis.finalize().to_hex().to_string(),
        epoch: 0,
        gc_depth: Protocol::DEFAULT_GC_DEPTH,
    };
    let mut paths = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let home = dir.join(format!("validator-{i}"));
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        keyfile::write_secret_key(&home.join("key"), key)?;
        let file = ValidatorFile {
            chain: chain.clone(),
            authority: i as u32,
            key_file: "key".into(),
            store: "consensus".into(),
            leader_timeout_ms: 500,
            min_round_delay_ms: default_min_round_delay_ms(),
            committee: committee.clone(),
        };
        let path = home.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&file)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}
