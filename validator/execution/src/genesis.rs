//! Genesis: the state a network starts from, and the chain id derived
//! from it.
//!
//! A genesis is written as a JSON config by whoever starts a network
//! ([`GenesisConfig`]); encoders in it are named by their signed package
//! files, which are verified when the config is read. [`Genesis`] is its
//! canonical form: accounts, validators and encoders sorted by key, each key
//! once, with the protocol parameters. The chain id is the blake3 of that
//! encoding: every transaction and (with consensus hardening) every block
//! is bound to it.

use crate::params::Parameters;
use crate::transaction::public_key;
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};
use soma_crypto::PublicKey;
use soma_host::package::{Package, VerifiedPackage};
use soma_host::{Digest, Modality};
use std::path::{Path, PathBuf};

/// Most entries of each kind (accounts, validators, encoders) in a genesis.
pub const MAX_GENESIS_ENTRIES: u32 = 100_000;

/// Longest chain name, in bytes.
pub const MAX_CHAIN_NAME_BYTES: u8 = 64;

const MAGIC: &[u8; 8] = b"SOMAGNv1";

/// Why a genesis cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    /// The config file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config is not valid JSON of the right shape.
    #[error("genesis config: {0}")]
    Config(String),
    /// An encoder's package does not verify.
    #[error("encoder package {}: {source}", path.display())]
    Package {
        /// The package file.
        path: PathBuf,
        /// Why.
        source: soma_host::package::PackageError,
    },
    /// The canonical bytes do not decode.
    #[error("genesis: {0}")]
    Decode(#[from] DecodeError),
}

/// An account and its starting balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisAccount {
    /// The account's key.
    pub key: PublicKey,
    /// Base units it holds.
    pub balance: u64,
}

/// A validator and its starting stake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisValidator {
    /// The validator's account key.
    pub key: PublicKey,
    /// Base units staked.
    pub stake: u64,
}

/// A registered encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisEncoder {
    /// The digest of its signed package.
    pub package: Digest,
    /// The account that owns it.
    pub owner: PublicKey,
    /// Base units bonded.
    pub bond: u64,
}

/// The canonical genesis; built only by [`Genesis::new`] (or decoding),
/// which check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    chain_name: String,
    accounts: Vec<GenesisAccount>,
    validators: Vec<GenesisValidator>,
    encoders: Vec<GenesisEncoder>,
    parameters: Parameters,
    router: Option<Digest>,
}

impl Genesis {
    /// Builds a genesis, sorting its entries; refuses a key given twice.
    /// Encoders are named by digest only: that their packages fit the
    /// network (text, its dimension, its longest data) is checked where
    /// the packages are read, from a genesis config.
    pub fn new(
        chain_name: String,
        mut accounts: Vec<GenesisAccount>,
        mut validators: Vec<GenesisValidator>,
        mut encoders: Vec<GenesisEncoder>,
        parameters: Parameters,
    ) -> Result<Genesis, GenesisError> {
        accounts.sort_by_key(|a| a.key);
        validators.sort_by_key(|v| v.key);
        encoders.sort_by_key(|e| e.package);
        let genesis = Genesis {
            chain_name,
            accounts,
            validators,
            encoders,
            parameters,
            router: None,
        };
        genesis.check().map_err(GenesisError::Decode)?;
        Ok(genesis)
    }

    /// The same genesis with `router` (a pure-wasm package's digest) as the
    /// network's router: jobs are routed to regions (see
    /// [`crate::Router`]).
    pub fn with_router(mut self, router: Digest) -> Genesis {
        self.router = Some(router);
        self
    }

    /// The network's router, if it has one.
    pub fn router(&self) -> Option<&Digest> {
        self.router.as_ref()
    }

    /// A human name for the network.
    pub fn chain_name(&self) -> &str {
        &self.chain_name
    }

    /// Starting accounts, sorted by key.
    pub fn accounts(&self) -> &[GenesisAccount] {
        &self.accounts
    }

    /// Starting validators, sorted by key.
    pub fn validators(&self) -> &[GenesisValidator] {
        &self.validators
    }

    /// Registered encoders, sorted by package digest.
    pub fn encoders(&self) -> &[GenesisEncoder] {
        &self.encoders
    }

    /// Protocol parameters.
    pub fn parameters(&self) -> &Parameters {
        &self.parameters
    }

    /// The network's identity: the blake3 of the canonical encoding.
    pub fn chain_id(&self) -> [u8; 32] {
        blake3::derive_key("soma/chain-id/v1", &self.to_bytes())
    }

    /// Reads a JSON config (see [`GenesisConfig`]); package paths are
    /// relative to the config file's directory.
    pub fn from_config_file(path: &Path) -> Result<Genesis, GenesisError> {
        Ok(Genesis::from_config_file_with_packages(path)?.0)
    }

    /// Reads a JSON config as [`Genesis::from_config_file`] does, and
    /// gives back the verified packages it names (the router's first, if
    /// any, then the encoders' in config order): what a node installs in
    /// its blob store before it computes.
    pub fn from_config_file_with_packages(
        path: &Path,
    ) -> Result<(Genesis, Vec<VerifiedPackage>), GenesisError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| GenesisError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let config: GenesisConfig = serde_json::from_slice(&read(path)?)
            .map_err(|e| GenesisError::Config(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        // A package named by the config, verified and of the network's
        // dimension.
        let package = |relative: &Path| {
            let package_path = base.join(relative);
            let package = Package::decode(&read(&package_path)?)
                .and_then(|p| p.verify(None))
                .map_err(|source| GenesisError::Package {
                    path: package_path.clone(),
                    source,
                })?;
            if package.manifest().modality != Modality::Text {
                return Err(GenesisError::Config(format!(
                    "encoder package {} is not a text encoder; the network embeds text",
                    package_path.display()
                )));
            }
            let dimension = package.manifest().dimension;
            if dimension != u32::from(config.parameters.dimension) {
                return Err(GenesisError::Config(format!(
                    "encoder package {} embeds into {dimension} dimensions; the network's are {}",
                    package_path.display(),
                    config.parameters.dimension
                )));
            }
            // The router too: data it refused would go unrouted.
            let accepts = package.manifest().max_input_bytes;
            if accepts < config.parameters.max_data_bytes {
                return Err(GenesisError::Config(format!(
                    "package {} accepts inputs of at most {accepts} bytes; the network's data \
                     may hold {} (max_data_bytes)",
                    package_path.display(),
                    config.parameters.max_data_bytes
                )));
            }
            Ok((package_path, package))
        };
        let mut packages = Vec::new();
        let router = match &config.router {
            None => None,
            Some(relative) => {
                let (path, router) = package(relative)?;
                if router.models().next().is_some() {
                    return Err(GenesisError::Config(format!(
                        "router package {} ships models; a router must be pure WebAssembly, \
                         so that every validator routes a submission alike",
                        path.display()
                    )));
                }
                let digest = router.digest();
                packages.push(router);
                Some(digest)
            }
        };
        let mut encoders = Vec::new();
        for encoder in &config.encoders {
            let (_, package) = package(&encoder.package)?;
            encoders.push(GenesisEncoder {
                package: package.digest(),
                owner: encoder.owner.0,
                bond: encoder.bond,
            });
            packages.push(package);
        }
        let genesis = Genesis::new(
            config.chain_name,
            config
                .accounts
                .into_iter()
                .map(|a| GenesisAccount {
                    key: a.key.0,
                    balance: a.balance,
                })
                .collect(),
            config
                .validators
                .into_iter()
                .map(|v| GenesisValidator {
                    key: v.key.0,
                    stake: v.stake,
                })
                .collect(),
            encoders,
            config.parameters,
        )?;
        let genesis = match router {
            Some(router) => genesis.with_router(router),
            None => genesis,
        };
        Ok((genesis, packages))
    }

    /// Limits and uniqueness; what the decoder and [`Genesis::new`] share.
    fn check(&self) -> Result<(), DecodeError> {
        if self.chain_name.is_empty() || self.chain_name.len() > usize::from(MAX_CHAIN_NAME_BYTES) {
            return Err(DecodeError::invalid(
                "chain name",
                format!("must be 1 to {MAX_CHAIN_NAME_BYTES} bytes"),
            ));
        }
        let max = MAX_GENESIS_ENTRIES as usize;
        for (what, len) in [
            ("accounts", self.accounts.len()),
            ("validators", self.validators.len()),
            ("encoders", self.encoders.len()),
        ] {
            if len > max {
                return Err(DecodeError::TooLarge {
                    what,
                    len: len as u64,
                    max: max as u64,
                });
            }
        }
        let unique = |what: &'static str, sorted: bool| match sorted {
            true => Ok(()),
            false => Err(DecodeError::invalid(what, "keys must be sorted and unique")),
        };
        unique(
            "accounts",
            self.accounts.windows(2).all(|w| w[0].key < w[1].key),
        )?;
        unique(
            "validators",
            self.validators.windows(2).all(|w| w[0].key < w[1].key),
        )?;
        unique(
            "encoders",
            self.encoders
                .windows(2)
                .all(|w| w[0].package < w[1].package),
        )?;
        self.parameters.check()?;
        // An encoder below the minimum bond would be registered but never
        // drawn: a mistake in the file.
        if self
            .encoders
            .iter()
            .any(|e| e.bond < self.parameters.min_encoder_bond)
        {
            return Err(DecodeError::invalid(
                "encoders",
                format!(
                    "every bond must be at least the minimum, {}",
                    self.parameters.min_encoder_bond
                ),
            ));
        }
        // Every amount apply handles is part of the supply: if the supply
        // fits a u64, no balance, stake, bond or total can overflow.
        let supply: u128 = self
            .accounts
            .iter()
            .map(|a| u128::from(a.balance))
            .sum::<u128>()
            + self
                .validators
                .iter()
                .map(|v| u128::from(v.stake))
                .sum::<u128>()
            + self
                .encoders
                .iter()
                .map(|e| u128::from(e.bond))
                .sum::<u128>();
        if supply > u128::from(u64::MAX) {
            return Err(DecodeError::invalid(
                "supply",
                "the total is more than a u64 holds",
            ));
        }
        if self.validators.is_empty() {
            return Err(DecodeError::invalid(
                "validators",
                "a network needs at least one",
            ));
        }
        Ok(())
    }
}

impl Encode for Genesis {
    fn encode(&self, w: &mut Writer) {
        w.raw(MAGIC);
        w.str8(&self.chain_name);
        w.count32(self.accounts.len());
        for a in &self.accounts {
            w.array(&a.key.to_bytes());
            w.u64(a.balance);
        }
        w.count32(self.validators.len());
        for v in &self.validators {
            w.array(&v.key.to_bytes());
            w.u64(v.stake);
        }
        w.count32(self.encoders.len());
        for e in &self.encoders {
            w.array(&e.package.0);
            w.array(&e.owner.to_bytes());
            w.u64(e.bond);
        }
        self.parameters.encode(w);
        w.bool(self.router.is_some());
        if let Some(router) = &self.router {
            w.array(&router.0);
        }
    }
}

impl Decode<'_> for Genesis {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.take(8, "magic")? != MAGIC {
            return Err(DecodeError::invalid("magic", "not a Soma genesis"));
        }
        let chain_name = r.str8("chain name", MAX_CHAIN_NAME_BYTES)?.to_owned();
        let n = r.count32("accounts", MAX_GENESIS_ENTRIES, 40)?;
        let accounts = (0..n)
            .map(|_| {
                Ok(GenesisAccount {
                    key: public_key(r, "account key")?,
                    balance: r.u64("balance")?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        let n = r.count32("validators", MAX_GENESIS_ENTRIES, 40)?;
        let validators = (0..n)
            .map(|_| {
                Ok(GenesisValidator {
                    key: public_key(r, "validator key")?,
                    stake: r.u64("stake")?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        let n = r.count32("encoders", MAX_GENESIS_ENTRIES, 72)?;
        let encoders = (0..n)
            .map(|_| {
                Ok(GenesisEncoder {
                    package: Digest(r.array("package")?),
                    owner: public_key(r, "owner")?,
                    bond: r.u64("bond")?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        let genesis = Genesis {
            chain_name,
            accounts,
            validators,
            encoders,
            parameters: Parameters::decode(r)?,
            router: match r.bool("router")? {
                true => Some(Digest(r.array("router")?)),
                false => None,
            },
        };
        genesis.check()?;
        Ok(genesis)
    }
}

/// The JSON form of a genesis, as a network's founder writes it.
///
/// ```json
/// {
///   "chain_name": "soma-localnet",
///   "accounts": [{ "key": "<hex public key>", "balance": 1000000000 }],
///   "validators": [{ "key": "<hex public key>", "stake": 5000000 }],
///   "encoders": [{ "package": "hash-encoder.somapkg", "owner": "<hex>", "bond": 1000000 }],
///   "router": "hash-encoder.somapkg",
///   "parameters": { "min_fee": 10, "min_encoder_bond": 1000000, "min_validator_stake": 1000000 }
/// }
/// ```
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisConfig {
    chain_name: String,
    #[serde(default)]
    accounts: Vec<AccountConfig>,
    validators: Vec<ValidatorConfig>,
    #[serde(default)]
    encoders: Vec<EncoderConfig>,
    /// A pure-wasm package that routes submissions to regions.
    #[serde(default)]
    router: Option<PathBuf>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountConfig {
    key: HexKey,
    balance: u64,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidatorConfig {
    key: HexKey,
    stake: u64,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EncoderConfig {
    package: PathBuf,
    owner: HexKey,
    bond: u64,
}

/// A public key written as hex in a config.
#[derive(Debug)]
struct HexKey(PublicKey);

impl<'de> serde::Deserialize<'de> for HexKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::from_hex(&text)
            .map(HexKey)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}
