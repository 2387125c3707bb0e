//! Apply: the state machine. A pure function of the prior state and a
//! committed, ordered list of transactions.
//!
//! Each transaction either applies whole or changes nothing but its
//! receipt. After each commit the state root extends a hash chain over the
//! commit and its effects:
//!
//! ```text
//! root(n) = blake3_derive("soma/state-root/v1",
//!             root(n-1) ‖ u64 n ‖ commit digest ‖ digest(receipts) ‖ digest(writes))
//! ```
//!
//! so two validators agree on a root only if they applied the same commits
//! with the same outcomes and the same writes.

use crate::genesis::Genesis;
use crate::params::Parameters;
use crate::receipt::{Receipt, Rejection};
use crate::state::{
    APPLIED, Account, Applied, Changes, Encoder, GENESIS, Space, StateError, StateStore, TREASURY,
    Treasury, Validator, encoder_key,
};
use crate::transaction::{Action, SignedTransaction};
use soma_codec::{Decode, Encode, Writer};
use soma_crypto::PublicKey;
use soma_host::Digest;
use std::path::Path;

/// Why apply (or opening the state) failed. None of these is caused by a
/// transaction: those are refused in their receipts.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The state on disk was started from another genesis.
    #[error("the state was created for chain {stored}, not for this genesis ({given})")]
    WrongGenesis {
        /// Chain id of the stored state.
        stored: String,
        /// Chain id of the genesis given.
        given: String,
    },
    /// A commit other than the next one was given.
    #[error("commit {got} given; the next commit to apply is {expected}")]
    OutOfOrder {
        /// The next index.
        expected: u64,
        /// The index given.
        got: u64,
    },
}

/// One committed sub-DAG's transactions, in commit order.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// Its position in the committed sequence, from 0.
    pub index: u64,
    /// The consensus digest of the commit.
    pub digest: [u8; 32],
    /// The transactions' bytes, as consensus ordered them.
    pub transactions: &'a [Vec<u8>],
}

/// What a commit did to the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEffects {
    /// The commit's index.
    pub index: u64,
    /// The state root after it.
    pub root: [u8; 32],
    /// One receipt per transaction, in order.
    pub receipts: Vec<Receipt>,
}

/// Money by where it is held: the sum is the supply, which only slashing
/// and burning may change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Supply {
    /// Account balances.
    pub balances: u128,
    /// Validator stakes.
    pub stakes: u128,
    /// Encoder bonds.
    pub bonds: u128,
    /// Fees collected.
    pub treasury: u128,
}

impl Supply {
    /// Everything.
    pub fn total(&self) -> u128 {
        self.balances + self.stakes + self.bonds + self.treasury
    }
}

/// Applies commits to a [`StateStore`].
pub struct Executor {
    store: StateStore,
    chain_id: [u8; 32],
    parameters: Parameters,
    applied: Applied,
}

impl Executor {
    /// Opens the state at `path`, creating it from `genesis` if it is new;
    /// an existing state must have been created from the same genesis.
    pub fn open(path: &Path, genesis: &Genesis) -> Result<Executor, ExecutionError> {
        let store = StateStore::open(path)?;
        let chain_id = genesis.chain_id();
        let applied = match store.read::<Genesis>(&[], Space::Meta, GENESIS)? {
            Some(stored) if stored.chain_id() == chain_id => store
                .read::<Applied>(&[], Space::Meta, APPLIED)?
                .ok_or_else(|| StateError::Corrupt(missing("applied")))?,
            Some(stored) => {
                return Err(ExecutionError::WrongGenesis {
                    stored: hex::encode(stored.chain_id()),
                    given: hex::encode(chain_id),
                });
            }
            None => initialise(&store, genesis)?,
        };
        Ok(Executor {
            store,
            chain_id,
            parameters: genesis.parameters.clone(),
            applied,
        })
    }

    /// The chain id transactions must carry.
    pub fn chain_id(&self) -> [u8; 32] {
        self.chain_id
    }

    /// Index of the next commit to apply.
    pub fn next_index(&self) -> u64 {
        self.applied.next_index
    }

    /// The state root after the last applied commit.
    pub fn root(&self) -> [u8; 32] {
        self.applied.root
    }

    /// Applies the next commit: every transaction in order, then one
    /// durable write of all their effects and the new root.
    pub fn apply(&mut self, commit: Commit<'_>) -> Result<CommitEffects, ExecutionError> {
        if commit.index != self.applied.next_index {
            return Err(ExecutionError::OutOfOrder {
                expected: self.applied.next_index,
                got: commit.index,
            });
        }
        let mut changes = Changes::default();
        let mut receipts = Vec::with_capacity(commit.transactions.len());
        for bytes in commit.transactions {
            let mut pending = Changes::default();
            let receipt = self.apply_transaction(&changes, &mut pending, bytes)?;
            if receipt.rejection.is_none() {
                changes.extend(pending);
            }
            receipts.push(receipt);
        }
        let encoded: Vec<Vec<u8>> = receipts.iter().map(Encode::to_bytes).collect();
        let root = next_root(&self.applied.root, &commit, &encoded, &changes);
        let applied = Applied {
            next_index: commit.index + 1,
            root,
        };
        self.store
            .write(changes, commit.index, &encoded, &applied)?;
        self.applied = applied;
        Ok(CommitEffects {
            index: commit.index,
            root,
            receipts,
        })
    }

    /// Applies one transaction's effects to `pending` (over `changes`),
    /// or says why it is refused; only a store failure is an error.
    fn apply_transaction(
        &self,
        changes: &Changes,
        pending: &mut Changes,
        bytes: &[u8],
    ) -> Result<Receipt, StateError> {
        let Ok(signed) = SignedTransaction::from_bytes(bytes) else {
            return Ok(Receipt {
                transaction: None,
                rejection: Some(Rejection::Malformed),
            });
        };
        let mut view = View {
            store: &self.store,
            changes,
            pending,
        };
        let rejection = match self.execute(&mut view, &signed) {
            Ok(()) => None,
            Err(Stop::Refused(rejection)) => Some(rejection),
            Err(Stop::Store(e)) => return Err(e),
        };
        Ok(Receipt {
            transaction: Some(signed.digest()),
            rejection,
        })
    }

    /// The protocol's rules for one transaction. Writes go to `state` as
    /// they are decided; a refusal discards all of them.
    fn execute(&self, state: &mut View<'_>, signed: &SignedTransaction) -> Result<(), Stop> {
        let tx = signed.transaction();
        let params = &self.parameters;
        if tx.chain_id != self.chain_id {
            Err(Rejection::WrongChain)?;
        }
        if !signed.verify() {
            Err(Rejection::BadSignature)?;
        }
        let mut sender = state.account(&tx.sender)?;
        if tx.nonce != sender.nonce {
            Err(Rejection::BadNonce {
                expected: sender.nonce,
                got: tx.nonce,
            })?;
        }
        if tx.fee < params.min_fee {
            Err(Rejection::FeeTooLow {
                min: params.min_fee,
            })?;
        }
        // What leaves the sender's balance: the fee, and what the action
        // moves out of it.
        let moved = match tx.action {
            Action::Transfer { amount, .. } | Action::AddStake { amount } => amount,
            Action::RegisterEncoder { bond, .. } => bond,
            Action::WithdrawStake { .. } | Action::DeregisterEncoder { .. } => 0,
        };
        let needed = tx.fee.saturating_add(moved);
        if needed > sender.balance {
            Err(Rejection::InsufficientFunds {
                needed,
                available: sender.balance,
            })?;
        }
        sender.balance -= needed;
        sender.nonce += 1;
        state.put_account(&tx.sender, sender);
        let treasury = state.treasury()?.checked_add(tx.fee);
        state.set_treasury(treasury.ok_or(Rejection::Overflow)?);
        match tx.action {
            Action::Transfer { to, amount } => state.credit(&to, amount),
            Action::AddStake { amount } => {
                let mut validator = state
                    .validator(&tx.sender)?
                    .ok_or(Rejection::NotAValidator)?;
                validator.stake = validator
                    .stake
                    .checked_add(amount)
                    .ok_or(Rejection::Overflow)?;
                state.put_validator(&tx.sender, validator);
                Ok(())
            }
            Action::WithdrawStake { amount } => {
                let mut validator = state
                    .validator(&tx.sender)?
                    .ok_or(Rejection::NotAValidator)?;
                let left =
                    validator
                        .stake
                        .checked_sub(amount)
                        .ok_or(Rejection::InsufficientStake {
                            available: validator.stake,
                        })?;
                if left != 0 && left < params.min_validator_stake {
                    Err(Rejection::StakeBelowMinimum {
                        min: params.min_validator_stake,
                    })?;
                }
                validator.stake = left;
                state.put_validator(&tx.sender, validator);
                state.credit(&tx.sender, amount)
            }
            Action::RegisterEncoder { package, bond } => {
                if bond < params.min_encoder_bond {
                    Err(Rejection::BondTooLow {
                        min: params.min_encoder_bond,
                    })?;
                }
                if state.encoder(&package)?.is_some() {
                    Err(Rejection::EncoderExists)?;
                }
                let owner = tx.sender;
                state.put_encoder(&package, Encoder { owner, bond });
                Ok(())
            }
            Action::DeregisterEncoder { package } => {
                let encoder = state.encoder(&package)?.ok_or(Rejection::UnknownEncoder)?;
                if encoder.owner != tx.sender {
                    Err(Rejection::NotOwner)?;
                }
                state.delete_encoder(&package);
                state.credit(&tx.sender, encoder.bond)
            }
        }
    }

    /// The account of `key` (empty if it never received anything).
    pub fn account(&self, key: &PublicKey) -> Result<Account, ExecutionError> {
        Ok(self
            .store
            .read(&[], Space::Accounts, &key.to_bytes())?
            .unwrap_or_default())
    }

    /// The validator record of `key`, if it is a validator.
    pub fn validator(&self, key: &PublicKey) -> Result<Option<Validator>, ExecutionError> {
        Ok(self.store.read(&[], Space::Validators, &key.to_bytes())?)
    }

    /// The encoder registered for `package`, if any.
    pub fn encoder(&self, package: &Digest) -> Result<Option<Encoder>, ExecutionError> {
        Ok(self
            .store
            .read(&[], Space::Encoders, &encoder_key(package))?)
    }

    /// The receipts of an applied commit.
    pub fn receipts(&self, index: u64) -> Result<Vec<Receipt>, ExecutionError> {
        self.store
            .receipts(index)?
            .iter()
            .map(|bytes| Ok(Receipt::from_bytes(bytes).map_err(StateError::from)?))
            .collect()
    }

    /// Where all the money is.
    pub fn supply(&self) -> Result<Supply, ExecutionError> {
        let sum = |values: Vec<u64>| values.into_iter().map(u128::from).sum::<u128>();
        let accounts = self.store.scan::<Account>(Space::Accounts)?;
        let validators = self.store.scan::<Validator>(Space::Validators)?;
        let encoders = self.store.scan::<Encoder>(Space::Encoders)?;
        Ok(Supply {
            balances: sum(accounts.into_iter().map(|(_, a)| a.balance).collect()),
            stakes: sum(validators.into_iter().map(|(_, v)| v.stake).collect()),
            bonds: sum(encoders.into_iter().map(|(_, e)| e.bond).collect()),
            treasury: self
                .store
                .read::<Treasury>(&[], Space::Meta, TREASURY)?
                .unwrap_or_default()
                .0
                .into(),
        })
    }
}

/// Why a transaction stops: refused (its receipt says why), or the store
/// failed (apply stops).
enum Stop {
    Refused(Rejection),
    Store(StateError),
}

impl From<Rejection> for Stop {
    fn from(rejection: Rejection) -> Self {
        Stop::Refused(rejection)
    }
}

impl From<StateError> for Stop {
    fn from(e: StateError) -> Self {
        Stop::Store(e)
    }
}

/// The state as one transaction sees it: the store, the commit's earlier
/// transactions' writes, and its own.
struct View<'a> {
    store: &'a StateStore,
    changes: &'a Changes,
    pending: &'a mut Changes,
}

impl View<'_> {
    fn get<T: for<'b> Decode<'b>>(
        &self,
        space: Space,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        self.store.read(&[self.changes, &*self.pending], space, key)
    }

    fn account(&self, key: &PublicKey) -> Result<Account, StateError> {
        Ok(self
            .get(Space::Accounts, &key.to_bytes())?
            .unwrap_or_default())
    }

    fn put_account(&mut self, key: &PublicKey, account: Account) {
        self.pending.put(Space::Accounts, &key.to_bytes(), &account);
    }

    /// Adds `amount` to the balance of `key`.
    fn credit(&mut self, key: &PublicKey, amount: u64) -> Result<(), Stop> {
        let mut account = self.account(key)?;
        account.balance = account
            .balance
            .checked_add(amount)
            .ok_or(Rejection::Overflow)?;
        self.put_account(key, account);
        Ok(())
    }

    fn validator(&self, key: &PublicKey) -> Result<Option<Validator>, StateError> {
        self.get(Space::Validators, &key.to_bytes())
    }

    fn put_validator(&mut self, key: &PublicKey, validator: Validator) {
        self.pending
            .put(Space::Validators, &key.to_bytes(), &validator);
    }

    fn encoder(&self, package: &Digest) -> Result<Option<Encoder>, StateError> {
        self.get(Space::Encoders, &encoder_key(package))
    }

    fn put_encoder(&mut self, package: &Digest, encoder: Encoder) {
        self.pending
            .put(Space::Encoders, &encoder_key(package), &encoder);
    }

    fn delete_encoder(&mut self, package: &Digest) {
        self.pending.delete(Space::Encoders, &encoder_key(package));
    }

    fn treasury(&self) -> Result<u64, StateError> {
        Ok(self
            .get::<Treasury>(Space::Meta, TREASURY)?
            .unwrap_or_default()
            .0)
    }

    fn set_treasury(&mut self, amount: u64) {
        self.pending.put(Space::Meta, TREASURY, &Treasury(amount));
    }
}

/// Writes the genesis state; returns where apply starts.
fn initialise(store: &StateStore, genesis: &Genesis) -> Result<Applied, StateError> {
    let mut changes = Changes::default();
    for a in &genesis.accounts {
        let account = Account {
            balance: a.balance,
            nonce: 0,
        };
        changes.put(Space::Accounts, &a.key.to_bytes(), &account);
    }
    for v in &genesis.validators {
        changes.put(
            Space::Validators,
            &v.key.to_bytes(),
            &Validator { stake: v.stake },
        );
    }
    for e in &genesis.encoders {
        let encoder = Encoder {
            owner: e.owner,
            bond: e.bond,
        };
        changes.put(Space::Encoders, &encoder_key(&e.package), &encoder);
    }
    changes.put(Space::Meta, GENESIS, genesis);
    let applied = Applied {
        next_index: 0,
        root: blake3::derive_key("soma/state-root/v1/genesis", &genesis.chain_id()),
    };
    store.write(changes, 0, &[], &applied)?;
    Ok(applied)
}

/// The root after `commit`, from the root before it.
fn next_root(
    previous: &[u8; 32],
    commit: &Commit<'_>,
    receipts: &[Vec<u8>],
    writes: &Changes,
) -> [u8; 32] {
    let mut w = Writer::new();
    w.count32(receipts.len());
    receipts.iter().for_each(|r| w.bytes32(r));
    let receipts = blake3::hash(&w.into_bytes());
    let mut w = Writer::new();
    w.array(previous);
    w.u64(commit.index);
    w.array(&commit.digest);
    w.array(receipts.as_bytes());
    w.array(&writes.digest());
    blake3::derive_key("soma/state-root/v1", &w.into_bytes())
}

fn missing(what: &'static str) -> soma_codec::DecodeError {
    soma_codec::DecodeError::invalid(what, "missing from the state")
}
