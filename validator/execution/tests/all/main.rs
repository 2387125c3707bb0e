//! Integration tests of the state machine: real fjall state in temporary
//! directories, real signed transactions.

mod apply;
mod conservation;
mod genesis;
mod jobs;
mod restart;
mod runner;

use soma_crypto::{PublicKey, SecretKey};
use soma_execution::{
    Action, Commit, CommitEffects, Executor, Genesis, GenesisAccount, GenesisValidator, Parameters,
    Transaction,
};
use soma_host::Digest;
use soma_host::package::{EncoderMeta, Package};
use std::path::Path;

/// The key of test account `i`.
pub fn key(i: u8) -> SecretKey {
    SecretKey::from_bytes(&[i + 1; 32])
}

pub fn public(i: u8) -> PublicKey {
    key(i).public_key()
}

/// Accounts 0..4 with 1 000 000 000 each; accounts 0 and 1 validators
/// with 5 000 000 staked.
pub fn genesis() -> Genesis {
    Genesis::new(
        "soma-test".into(),
        (0..4)
            .map(|i| GenesisAccount {
                key: public(i),
                balance: 1_000_000_000,
            })
            .collect(),
        (0..2)
            .map(|i| GenesisValidator {
                key: public(i),
                stake: 5_000_000,
            })
            .collect(),
        vec![],
        Parameters::default(),
    )
    .unwrap()
}

/// A transaction of account `from` with `nonce`, signed.
pub fn signed(genesis: &Genesis, from: u8, nonce: u64, fee: u64, action: Action) -> Vec<u8> {
    use soma_codec::Encode;
    Transaction {
        chain_id: genesis.chain_id(),
        sender: public(from),
        nonce,
        fee,
        action,
    }
    .sign(&key(from))
    .to_bytes()
}

/// Applies `transactions` as the executor's next commit.
pub fn apply(executor: &mut Executor, transactions: &[Vec<u8>]) -> CommitEffects {
    let index = executor.next_index();
    executor
        .apply(Commit {
            index,
            digest: *blake3::hash(&index.to_le_bytes()).as_bytes(),
            transactions,
        })
        .unwrap()
}

/// `g` under another name or with other parameters.
pub fn variant(g: &Genesis, name: &str, parameters: Parameters) -> Genesis {
    Genesis::new(
        name.into(),
        g.accounts().to_vec(),
        g.validators().to_vec(),
        g.encoders().to_vec(),
        parameters,
    )
    .unwrap()
}

/// Account `owner` registering its package `name` (signed by it, of the
/// network's dimension) with `bond`; and the package's digest.
pub fn registration(g: &Genesis, owner: u8, name: &str, bond: u64) -> (Action, Digest) {
    let meta = EncoderMeta {
        name: name.into(),
        version: "1.0.0".into(),
        dimension: u32::from(g.parameters().dimension),
        fuel_limit: 1_000_000,
        modality: soma_host::Modality::Text,
    };
    let package = Package::sign(&key(owner), &meta, name.as_bytes().to_vec(), vec![]).unwrap();
    let (manifest, signature) = package.signed_manifest();
    let action = Action::RegisterEncoder {
        manifest: manifest.to_vec(),
        signature: *signature,
        bond,
    };
    (action, package.digest())
}

pub fn open(dir: &Path, genesis: &Genesis) -> Executor {
    Executor::open(dir, genesis, None).unwrap()
}
