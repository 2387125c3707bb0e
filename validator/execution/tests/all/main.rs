//! Integration tests of the state machine: real fjall state in temporary
//! directories, real signed transactions.

mod apply;
mod conservation;
mod genesis;
mod jobs;
mod restart;

use soma_crypto::{PublicKey, SecretKey};
use soma_execution::{
    Action, Commit, CommitEffects, Executor, Genesis, GenesisAccount, GenesisValidator, Parameters,
    Transaction,
};
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

pub fn open(dir: &Path, genesis: &Genesis) -> Executor {
    Executor::open(dir, genesis).unwrap()
}
