//! A validator's configuration file, and the generation of a local
//! network: keys, genesis and one configuration per validator.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use soma_consensus::{DEFAULT_MIN_ROUND_DELAY, Parameters as ConsensusParameters};
use soma_crypto::keyfile;
use soma_crypto::{PublicKey, SecretKey};
use soma_host::package::Package;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What `soma node --config` reads. Paths are relative to the file's
/// directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// The network's genesis config (shared by every validator; its
    /// digest is the chain id).
    pub genesis: PathBuf,
    /// This validator's secret key file: its consensus identity and the
    /// account its attestations are paid from.
    pub key_file: PathBuf,
    /// Where the node keeps its consensus store, state, blobs and compiled
    /// code.
    pub data_dir: PathBuf,
    /// Every validator's consensus address, by hex public key (this one's
    /// included: it listens there).
    pub peers: BTreeMap<String, SocketAddr>,
    /// Where the HTTP API listens.
    pub api: SocketAddr,
    /// Other validators' API addresses, by hex public key: where this node
    /// fetches encoder packages it lacks.
    #[serde(default)]
    pub peer_apis: BTreeMap<String, SocketAddr>,
    /// API keys (bearer tokens) and the secret key file of the account each
    /// one spends from in `POST /v1/embeddings`.
    #[serde(default)]
    pub api_keys: BTreeMap<String, PathBuf>,
    /// Rounds of accepted blocks the store keeps to serve validators that
    /// fell behind: one down for longer cannot catch up from this node. A
    /// node's own choice; it does not change what is committed.
    #[serde(default = "default_retention_rounds")]
    pub retention_rounds: u32,
    /// Milliseconds to wait for a round's leader.
    #[serde(default = "default_leader_timeout_ms")]
    pub leader_timeout_ms: u64,
    /// The fewest milliseconds between two of this validator's blocks.
    #[serde(default = "default_min_round_delay_ms")]
    pub min_round_delay_ms: u64,
    /// Threads the job runner uses (0: one per core).
    #[serde(default)]
    pub runner_threads: usize,
    /// Where compiled encoders are cached, if not in `data_dir`: validators
    /// of one localnet share one, so each encoder is compiled once. Only
    /// processes that trust each other may share it (loading compiled code
    /// runs it).
    #[serde(default)]
    pub compiled_cache: Option<PathBuf>,
    /// Whether a validator that finds its peers no longer keep the rounds
    /// it needs restores its state from a copy a quorum of stake vouches
    /// for and starts again by itself (as `soma node --restore-first`),
    /// rather than stopping for its operator to run `soma restore-state`.
    #[serde(default = "default_restore_automatically")]
    pub restore_automatically: bool,
}

fn default_retention_rounds() -> u32 {
    ConsensusParameters::default().store_retention
}

fn default_restore_automatically() -> bool {
    true
}

fn default_leader_timeout_ms() -> u64 {
    500
}

fn default_min_round_delay_ms() -> u64 {
    DEFAULT_MIN_ROUND_DELAY.as_millis() as u64
}

impl NodeFile {
    /// Reads a configuration file.
    pub fn read(path: &Path) -> Result<NodeFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a validator configuration", path.display()))
    }
}

/// What a client of a local network needs: where the APIs are, an API
/// key, and the account that key spends from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientFile {
    /// Every validator's API address, by index.
    pub apis: Vec<SocketAddr>,
    /// An API key every validator accepts.
    pub api_key: String,
    /// Hex public key of the account the key spends from.
    pub account: String,
    /// That account's secret key file, relative to this file.
    pub account_key_file: PathBuf,
    /// Hex public key of the account that owns the genesis encoders.
    pub publisher: String,
}

/// What [`write_localnet`] writes.
pub struct Localnet<'a> {
    /// Directory to write into.
    pub dir: &'a Path,
    /// Number of validators.
    pub validators: usize,
    /// Consensus port of validator 0; the others follow, then the API
    /// ports.
    pub base_port: u16,
    /// Signed packages of the encoders registered at genesis.
    pub encoders: &'a [PathBuf],
    /// The signed package of the network's router, if any.
    pub router: Option<&'a Path>,
}

/// Base units a localnet's user account starts with.
pub const LOCALNET_USER_BALANCE: u64 = 1_000_000_000_000;
/// Base units each localnet validator's account starts with (it pays its
/// attestations' fees).
pub const LOCALNET_VALIDATOR_BALANCE: u64 = 1_000_000_000;
/// Each localnet validator's stake.
pub const LOCALNET_STAKE: u64 = 10_000_000;
/// The directory, beside the validators' own, of the compiled-code cache
/// a localnet's validators share.
const LOCALNET_COMPILED_DIR: &str = "compiled";

/// The compiled-code cache the validators of the localnet written to `dir`
/// share: compile packages into it before they start, and none of them
/// compiles during a job.
pub fn localnet_compiled_cache(dir: &Path) -> PathBuf {
    dir.join(LOCALNET_COMPILED_DIR)
}
/// Commits a localnet job may take before it expires.
pub const LOCALNET_JOB_EXPIRY: u64 = 50_000;
/// Each localnet encoder's bond.
pub const LOCALNET_BOND: u64 = 10_000_000;

/// Writes keys, a genesis and configurations for a network of validators
/// on 127.0.0.1: `dir/genesis.json` (with the packages copied beside it),
/// `dir/client.json` and `dir/validator-<i>/config.json`; returns the
/// configuration paths.
pub fn write_localnet(net: &Localnet<'_>) -> Result<Vec<PathBuf>> {
    let n = net.validators;
    if n == 0 {
        bail!("a network needs at least one validator");
    }
    let ports = u16::try_from(2 * n).ok();
    if ports
        .and_then(|p| net.base_port.checked_add(p - 1))
        .is_none()
    {
        bail!(
            "{n} validators need {} ports from {}, past port 65535",
            2 * n,
            net.base_port
        );
    }
    let port = |i: usize| net.base_port + i as u16;
    let dir = net.dir;
    refuse_existing_network(dir)?;
    std::fs::create_dir_all(dir.join("packages"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let keys = (0..n)
        .map(|_| SecretKey::generate())
        .collect::<Result<Vec<_>, _>>()?;
    let user = SecretKey::generate()?;
    let publisher = SecretKey::generate()?;
    let hex_key = |k: &SecretKey| hex::encode(k.public_key().to_bytes());
    let accounts_dir = dir.join("accounts");
    std::fs::create_dir_all(&accounts_dir)?;
    keyfile::write_secret_key(&accounts_dir.join("user.key"), &user)?;
    keyfile::write_secret_key(&accounts_dir.join("publisher.key"), &publisher)?;

    let copy_package = |path: &Path| -> Result<String> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let package = Package::decode(&bytes)
            .and_then(|p| p.verify(None))
            .with_context(|| format!("{} is not a valid signed package", path.display()))?;
        // Two packages may carry one encoder name (signed by different
        // authors): the digest tells their files apart.
        let digest = package.digest().to_string();
        let name = format!(
            "packages/{}-{}.somapkg",
            package.manifest().name,
            &digest[..12]
        );
        std::fs::write(dir.join(&name), &bytes)?;
        Ok(name)
    };
    let mut encoders = Vec::new();
    for path in net.encoders {
        encoders.push(serde_json::json!({
            "package": copy_package(path)?,
            "owner": hex_key(&publisher),
            "bond": LOCALNET_BOND,
        }));
    }
    let mut accounts =
        vec![serde_json::json!({"key": hex_key(&user), "balance": LOCALNET_USER_BALANCE})];
    accounts
        .extend(keys.iter().map(
            |k| serde_json::json!({"key": hex_key(k), "balance": LOCALNET_VALIDATOR_BALANCE}),
        ));
    let mut genesis = serde_json::json!({
        "chain_name": "soma-localnet",
        // Rounds are fast on one machine: a job may take this many commits
        // (minutes) before it expires.
        "parameters": {"job_expiry_commits": LOCALNET_JOB_EXPIRY},
        "accounts": accounts,
        "validators": keys.iter().map(|k| serde_json::json!({"key": hex_key(k), "stake": LOCALNET_STAKE})).collect::<Vec<_>>(),
        "encoders": encoders,
    });
    if let Some(router) = net.router {
        genesis["router"] = copy_package(router)?.into();
    }
    let genesis_path = dir.join("genesis.json");
    std::fs::write(&genesis_path, serde_json::to_string_pretty(&genesis)?)?;
    // What every node will read: refused here, with the reason, rather than
    // by each node as it starts.
    let valid = soma_execution::Genesis::from_config_file(&genesis_path)
        .context("the network's genesis is not valid")?;
    crate::node::committee(&valid)?;

    // Fresh keys make each localnet a chain of its own; so does a fresh
    // API key.
    let mut token = [0u8; 24];
    getrandom::fill(&mut token).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let api_key = format!("soma-{}", hex::encode(token));
    let peers: BTreeMap<String, SocketAddr> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (hex_key(k), SocketAddr::from(([127, 0, 0, 1], port(i)))))
        .collect();
    let apis: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], port(n + i))))
        .collect();
    let client = ClientFile {
        apis: apis.clone(),
        api_key: api_key.clone(),
        account: hex_key(&user),
        account_key_file: "accounts/user.key".into(),
        publisher: hex_key(&publisher),
    };
    std::fs::write(
        dir.join("client.json"),
        serde_json::to_string_pretty(&client)?,
    )?;
    let mut paths = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let home = dir.join(format!("validator-{i}"));
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        keyfile::write_secret_key(&home.join("key"), key)?;
        let file = NodeFile {
            genesis: "../genesis.json".into(),
            key_file: "key".into(),
            data_dir: "data".into(),
            peers: peers.clone(),
            api: apis[i],
            peer_apis: keys
                .iter()
                .zip(&apis)
                .filter(|(k, _)| k.public_key() != key.public_key())
                .map(|(k, a)| (hex_key(k), *a))
                .collect(),
            api_keys: BTreeMap::from([(api_key.clone(), "../accounts/user.key".into())]),
            retention_rounds: default_retention_rounds(),
            leader_timeout_ms: default_leader_timeout_ms(),
            min_round_delay_ms: default_min_round_delay_ms(),
            runner_threads: 0,
            compiled_cache: Some(Path::new("..").join(LOCALNET_COMPILED_DIR)),
            restore_automatically: default_restore_automatically(),
        };
        let path = home.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&file)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Refuses a directory that a network was written to before: its
/// validators' stores belong to that network's chain and would not start
/// on a new genesis.
pub fn refuse_existing_network(dir: &Path) -> Result<()> {
    let genesis = dir.join("genesis.json");
    if genesis.exists() {
        bail!(
            "{} holds a network already ({} exists): remove that directory, or choose another \
             --dir",
            dir.display(),
            genesis.display()
        );
    }
    Ok(())
}

/// Reads the public key written as hex in a configuration.
pub(crate) fn hex_public_key(text: &str, what: &str) -> Result<PublicKey> {
    PublicKey::from_hex(text).with_context(|| format!("{what} `{text}` is not a public key"))
}
