//! Apply: the state machine. A pure function of the prior state and a
//! committed, ordered list of transactions.
//!
//! A transaction that passes the checks that make it chargeable (see
//! [`crate::Receipt`]) pays its fee; its action then applies whole or not
//! at all, and its receipt says which. After each commit the state root extends a hash chain over the
//! commit and its effects:
//!
//! ```text
//! root(n) = blake3_derive("soma/state-root/v1",
//!             root(n-1) ‖ u64 n ‖ commit digest ‖ digest(receipts) ‖ digest(writes)
//!             ‖ digest(lattice of the state after commit n))
//! ```
//!
//! so two validators agree on a root only if they applied the same commits
//! with the same outcomes and the same writes, and a root pins down the
//! whole state after its commit (see [`crate::lattice`]).

use crate::genesis::Genesis;
use crate::job::{EncoderResult, Job, JobStatus, Outcome};
use crate::lattice::Lattice;
use crate::params::Parameters;
use crate::receipt::{Receipt, Rejection};
use crate::routing::{Router, RouterError};
use crate::snapshot::{
    ENTRY_OVERHEAD, Header, MAX_SNAPSHOT_PAGE, Page, RootStep, cursor, parse_cursor,
};
use crate::state::{
    APPLIED, Account, Amount, Applied, BURNED, Changes, ESCROW, Encoder, GENESIS, JobId, LATTICE,
    STAKED, Space, StateError, StateStore, TREASURY, Validator, encoder_key, is_record,
};
use crate::transaction::{Action, Checked, Proposed, check_all};
use crate::view::{Stop, View};
use crate::{finalise, routing, shard};
use soma_codec::{Decode, DecodeError, Encode, Writer};
use soma_crypto::{Domain, PublicKey, Signature};
use soma_host::Digest;
use soma_host::Modality;
use soma_host::package::Manifest;
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
    /// The router is not the genesis one, or this node could not run it.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A state snapshot cannot be made or restored.
    #[error("state snapshot: {0}")]
    Snapshot(String),
    /// A commit's proposers do not match its transactions one for one.
    #[error("commit {index} has {transactions} transactions but {proposers} proposers")]
    Proposers {
        /// The commit's index.
        index: u64,
        /// Its transactions.
        transactions: usize,
        /// The proposers given.
        proposers: usize,
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
    /// Who proposed each of `transactions`: the validator whose signed
    /// block carried it, one key per transaction, if the caller knows.
    ///
    /// A transaction in a block its own sender proposed is authenticated
    /// by the block's signature, which covers the transaction's bytes and
    /// which consensus checked before the block could be committed: its own
    /// signature is not checked again. Most such transactions are
    /// attestations (every validator attests every job), so a commit of
    /// them applies without a signature check each. Without proposers,
    /// every signature is checked.
    ///
    /// This decides what applies, so every validator must give the same:
    /// the authors of the commit's blocks (which its digest binds), from
    /// the committee that signed them.
    pub proposers: Option<&'a [PublicKey]>,
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

/// Money by where it is held. Their sum, burned included, never changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Supply {
    /// Account balances.
    pub balances: u128,
    /// Validator stakes.
    pub stakes: u128,
    /// Encoder bonds.
    pub bonds: u128,
    /// Fees and job payments kept by the network.
    pub treasury: u128,
    /// Payments of jobs not yet decided.
    pub escrow: u128,
    /// Slashed or burned.
    pub burned: u128,
}

impl Supply {
    /// Everything that exists, burned included: the genesis supply.
    pub fn total(&self) -> u128 {
        self.balances + self.stakes + self.bonds + self.treasury + self.escrow + self.burned
    }
}

/// What a snapshot says of itself ([`Executor::snapshot_claim`]); trusted
/// only once [`Executor::restore`] accepted it for a vouched root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotClaim {
    /// The commits applied in the state.
    pub commits: u64,
    /// The root after them.
    pub root: [u8; 32],
    /// The consensus digest of the last of them, which the root binds:
    /// it anchors the commit log a restored validator resumes from.
    pub last_commit: [u8; 32],
    /// Entries the state holds, which the root binds too.
    pub entries: u64,
    /// Bytes of their keys and values, which the root binds too.
    pub bytes: u64,
}

/// Applies commits to its state (`StateStore`, in fjall).
pub struct Executor {
    store: StateStore,
    reader: StateReader,
    chain_id: [u8; 32],
    parameters: Parameters,
    router: Option<Router>,
    /// Regions each encoder keeps a routing score for.
    regions: usize,
    applied: Applied,
    /// The lattice of the state after the last applied commit.
    lattice: Lattice,
}

impl std::ops::Deref for Executor {
    type Target = StateReader;

    fn deref(&self) -> &StateReader {
        &self.reader
    }
}

impl Executor {
    /// Opens the state at `path`, creating it from `genesis` if it is new;
    /// an existing state must have been created from the same genesis.
    /// `router` is the genesis router, loaded (`None` if genesis has none).
    pub fn open(
        path: &Path,
        genesis: &Genesis,
        router: Option<Router>,
    ) -> Result<Executor, ExecutionError> {
        if genesis.router() != router.as_ref().map(Router::package).as_ref() {
            return Err(RouterError::Mismatch {
                expected: genesis.router().copied(),
                given: router.as_ref().map(Router::package),
            }
            .into());
        }
        let chain_id = genesis.chain_id();
        let regions = routing::regions(genesis.parameters(), genesis.router());
        // A new state is made beside `path` and moved there whole: a
        // process killed while the store is being created leaves no half
        // made store behind, which the engine may not open again.
        if path
            .read_dir()
            .map_or(true, |mut entries| entries.next().is_none())
        {
            let creating = path.with_extension("creating");
            if creating.exists() {
                std::fs::remove_dir_all(&creating).map_err(|source| StateError::Directory {
                    path: creating.clone(),
                    source,
                })?;
            }
            initialise(&StateStore::open(&creating)?, genesis, regions)?;
            std::fs::rename(&creating, path).map_err(|source| StateError::Directory {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let store = StateStore::open(path)?;
        let (applied, lattice) = match store.read::<Genesis>(&[], Space::Meta, GENESIS)? {
            Some(stored) if stored.chain_id() == chain_id => {
                let missing = |what| StateError::inconsistent(what, "missing from the state");
                let applied = store
                    .read::<Applied>(&[], Space::Meta, APPLIED)?
                    .ok_or_else(|| missing("applied"))?;
                let lattice = match store.read::<Lattice>(&[], Space::Meta, LATTICE) {
                    // Written by a version whose lattice was its lanes
                    // alone, before roots folded in the state's size.
                    Err(StateError::Corrupt(DecodeError::Truncated { .. })) => {
                        store.upgrade_lattice()?
                    }
                    read => read?.ok_or_else(|| missing("lattice"))?,
                };
                // Written by a version that kept each attestation whole.
                let lattice = match store.keeps_attestations_whole()? {
                    true => store.keep_results_once(&lattice)?,
                    false => lattice,
                };
                (applied, lattice)
            }
            Some(stored) => {
                return Err(ExecutionError::WrongGenesis {
                    stored: hex::encode(stored.chain_id()),
                    given: hex::encode(chain_id),
                });
            }
            None => {
                return Err(StateError::inconsistent("genesis", "missing from the state").into());
            }
        };
        Ok(Executor {
            reader: StateReader {
                store: store.clone(),
            },
            store,
            chain_id,
            parameters: genesis.parameters().clone(),
            router,
            regions,
            applied,
            lattice,
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

    /// What a snapshot whose first page is `first_page` claims. Checks
    /// only that the page decodes and that its header makes the root it
    /// claims: that root is to be vouched for, and [`Executor::restore`]
    /// checks the rest against it.
    pub fn snapshot_claim(first_page: &[u8]) -> Result<SnapshotClaim, ExecutionError> {
        let page = decode_page(first_page)?;
        if page.header.made_root() != page.header.root {
            return Err(refused(
                "its header does not make the root it claims".into(),
            ));
        }
        Ok(SnapshotClaim {
            commits: page.header.step.index + 1,
            root: page.header.root,
            last_commit: page.header.step.commit,
            entries: page.header.size.entries,
            bytes: page.header.size.bytes,
        })
    }

    /// Restores a state at `path` from a peer's snapshot
    /// ([`PinnedState`]), if its root is `trusted_root`: the root after a
    /// commit that validators of a quorum of stake vouch for. The snapshot
    /// starts with `first_page`; `next_page` fetches the page after an
    /// entry, named by the cursor it is given (an opaque byte string for
    /// [`PinnedState::page`]). Pages must be cut at `page_bytes` as
    /// [`PinnedState::page`] cuts them.
    ///
    /// The first page's header must make the vouched root before any entry
    /// is taken, which also vouches for how many entries and bytes the
    /// whole state holds: a peer that sends more is refused as soon as it
    /// does. The entries of all pages must hash to the state digest the
    /// root folds in. The state is written and opened beside `path` (at
    /// `<path>.partial`) and only then moved there: nothing is left at
    /// `path` unless the whole state was restored.
    pub fn restore<E: std::fmt::Display>(
        path: &Path,
        genesis: &Genesis,
        router: Option<Router>,
        trusted_root: [u8; 32],
        first_page: &[u8],
        page_bytes: usize,
        next_page: impl FnMut(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Executor, ExecutionError> {
        // What goes wrong with this node's directories is this node's
        // trouble, not the snapshot's.
        let local = |path: &Path, source: std::io::Error| StateError::Directory {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            return Err(local(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a state is restored only where there is none",
                ),
            )
            .into());
        }
        let first = decode_page(first_page)?;
        let header = first.header.clone();
        if header.chain_id != genesis.chain_id() {
            return Err(ExecutionError::WrongGenesis {
                stored: hex::encode(header.chain_id),
                given: hex::encode(genesis.chain_id()),
            });
        }
        if header.root != trusted_root {
            return Err(refused(format!(
                "its root {} is not the root {} vouched for",
                hex::encode(header.root),
                hex::encode(trusted_root)
            )));
        }
        if header.made_root() != trusted_root {
            return Err(refused(format!(
                "its header (state of {} entries, {} bytes) does not make the root {} vouched for",
                header.size.entries,
                header.size.bytes,
                hex::encode(trusted_root)
            )));
        }
        // Written beside `path`, opened there, and only then moved into
        // place whole: a crash part way leaves only the side directory,
        // which the next try clears.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let partial = path.with_file_name(format!("{name}.partial"));
        let clear = |partial: &Path| match partial.exists() {
            true => std::fs::remove_dir_all(partial).map_err(|e| local(partial, e)),
            false => Ok(()),
        };
        clear(&partial)?;
        let applied = Applied {
            next_index: header.step.index + 1,
            root: trusted_root,
        };
        let staged = StateStore::open(&partial)
            .map_err(ExecutionError::from)
            .and_then(|store| {
                let lattice = write_pages(&store, first, page_bytes, next_page)?;
                if header.step.root(&lattice) != trusted_root {
                    return Err(refused(format!(
                        "its entries (state digest {}) are not the state root {} was made with",
                        hex::encode(lattice.digest()),
                        hex::encode(trusted_root)
                    )));
                }
                Ok(store.restore_records(&applied, &header.step, &lattice)?)
            })
            .and_then(|()| Executor::open(&partial, genesis, router))
            .and_then(|mut staged| match staged.applied == applied {
                true => Ok(staged.router.take()),
                false => Err(refused(
                    "the restored state does not open as written".into(),
                )),
            });
        let router = match staged {
            Ok(router) => router,
            Err(e) => {
                // What says why matters more than a side directory left
                // behind, which the next restore clears first.
                let _ = clear(&partial);
                return Err(e);
            }
        };
        std::fs::rename(&partial, path).map_err(|e| local(path, e))?;
        Executor::open(path, genesis, router)
    }

    /// Recomputes the state's digest from every entry it holds and checks
    /// it is the one recorded with the last commit (or with an upgrade
    /// since, as it opened): the state on disk is whole and untouched.
    /// Reads the whole state.
    pub fn verify_state(&self) -> Result<(), ExecutionError> {
        let entries = self.store.lattice_of_entries()?;
        if entries != self.lattice {
            return Err(StateError::inconsistent(
                "state",
                &format!(
                    "its entries hash to {}, but the last root folded in {}",
                    hex::encode(entries.digest()),
                    hex::encode(self.lattice.digest())
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Applies the next commit: every transaction in order, then one
    /// durable write of all their effects and the new root. Signatures
    /// (of transactions their senders did not propose) are checked, and the
    /// commit's writes hashed, on rayon's global pool, so call it from
    /// outside that pool. A commit whose proposers do not match its
    /// transactions is an error, and changes nothing.
    pub fn apply(&mut self, commit: Commit<'_>) -> Result<CommitEffects, ExecutionError> {
        if commit.index != self.applied.next_index {
            return Err(ExecutionError::OutOfOrder {
                expected: self.applied.next_index,
                got: commit.index,
            });
        }
        if let Some(proposers) = commit.proposers
            && proposers.len() != commit.transactions.len()
        {
            return Err(ExecutionError::Proposers {
                index: commit.index,
                transactions: commit.transactions.len(),
                proposers: proposers.len(),
            });
        }
        let mut changes = Changes::default();
        self.expire_jobs(&commit, &mut changes)?;
        let receipts = self.apply_transactions(&commit, &mut changes)?;
        let encoded: Vec<Vec<u8>> = receipts.iter().map(Encode::to_bytes).collect();
        let mut lattice = self.lattice.clone();
        // Both hash every write: side by side on the pool.
        let (folded, writes) = rayon::join(
            || self.store.fold(&mut lattice, &changes),
            || changes.digest(),
        );
        folded?;
        let step = RootStep {
            previous: self.applied.root,
            index: commit.index,
            commit: commit.digest,
            receipts: receipts_digest(&encoded),
            writes,
        };
        let root = step.root(&lattice);
        let applied = Applied {
            next_index: commit.index + 1,
            root,
        };
        self.store.write(
            changes,
            commit.index,
            &encoded,
            &applied,
            &lattice,
            Some(&step),
        )?;
        self.applied = applied;
        self.lattice = lattice;
        Ok(CommitEffects {
            index: commit.index,
            root,
            receipts,
        })
    }

    /// Applies a commit's transactions in order, each batch decoded and
    /// authenticated on every core while the batch before it applies.
    fn apply_transactions(
        &self,
        commit: &Commit<'_>,
        changes: &mut Changes,
    ) -> Result<Vec<Receipt>, ExecutionError> {
        let mut receipts = Vec::with_capacity(commit.transactions.len());
        let chain = self.chain_id;
        let proposed: Vec<Proposed<'_>> = commit
            .transactions
            .iter()
            .enumerate()
            .map(|(i, bytes)| Proposed {
                bytes,
                proposer: commit.proposers.map(|p| &p[i]),
            })
            .collect();
        pipelined(
            &proposed,
            |batch| check_all(batch, &chain),
            |checked| {
                receipts.push(self.apply_transaction(commit, changes, checked)?);
                Ok::<_, ExecutionError>(())
            },
        )?;
        Ok(receipts)
    }

    /// Expires the jobs whose deadline ended before `commit`: each
    /// payment goes back to its submitter, the shard's bonds are freed, and
    /// nobody is paid or slashed.
    fn expire_jobs(&self, commit: &Commit<'_>, changes: &mut Changes) -> Result<(), StateError> {
        let mut pending = Changes::default();
        let mut state = View {
            store: &self.store,
            changes,
            pending: &mut pending,
        };
        let due = self
            .store
            .below::<JobId>(Space::Deadlines, &commit.index.to_be_bytes())?;
        for (key, JobId(id)) in due {
            let job = state.job(&id)?;
            let Some(mut job) = job.filter(|j| j.status == JobStatus::Pending) else {
                return Err(StateError::inconsistent(
                    "deadline",
                    "its job is not pending",
                ));
            };
            let expired = expire(&mut state, &mut job, commit.index);
            match expired {
                Ok(()) => {}
                Err(Stop::Store(e)) => return Err(e),
                // Returning escrowed money cannot overflow a supply that
                // fits a u64.
                Err(Stop::Refused(_)) => {
                    return Err(StateError::inconsistent("refund", "it would overflow"));
                }
                Err(Stop::Router(_)) => {
                    return Err(StateError::inconsistent("expiry", "it ran the router"));
                }
            }
            state.put_job(&id, &job);
            state.pending.delete(Space::Deadlines, &key);
        }
        changes.extend(pending);
        Ok(())
    }

    /// Applies one transaction to `changes`: its fee (if it passes the
    /// checks that make it chargeable), then its action (if the action
    /// breaks no rule). Only a failure of this node (the store, or running
    /// the router) is an error.
    fn apply_transaction(
        &self,
        commit: &Commit<'_>,
        changes: &mut Changes,
        checked: Option<Checked>,
    ) -> Result<Receipt, ExecutionError> {
        let Some(checked) = checked else {
            return Ok(Receipt {
                transaction: None,
                rejection: Some(Rejection::Malformed),
                fee: 0,
            });
        };
        let signed = &checked.signed;
        let receipt = |rejection, fee| Receipt {
            transaction: Some(signed.digest()),
            rejection,
            fee,
        };
        let fee = signed.transaction().fee;
        for (step, charged) in [(Step::Charge, 0), (Step::Act, fee)] {
            let mut pending = Changes::default();
            let mut view = View {
                store: &self.store,
                changes,
                pending: &mut pending,
            };
            let outcome = match step {
                Step::Charge => self.charge(&mut view, &checked),
                Step::Act => self.act(&mut view, commit, &checked),
            };
            match outcome {
                Ok(()) => changes.extend(pending),
                Err(Stop::Refused(rejection)) => return Ok(receipt(Some(rejection), charged)),
                Err(Stop::Store(e)) => return Err(e.into()),
                Err(Stop::Router(e)) => return Err(e.into()),
            }
        }
        Ok(receipt(None, fee))
    }

    /// Checks what makes a transaction chargeable (chain, signature, nonce,
    /// fee) and charges it: the fee to the treasury, the nonce used.
    fn charge(&self, state: &mut View<'_>, checked: &Checked) -> Result<(), Stop> {
        let tx = checked.signed.transaction();
        let params = &self.parameters;
        if tx.chain_id != self.chain_id {
            Err(Rejection::WrongChain)?;
        }
        if !checked.authenticated {
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
        if tx.fee > sender.balance {
            Err(Rejection::InsufficientFunds {
                needed: tx.fee,
                available: sender.balance,
            })?;
        }
        sender.balance -= tx.fee;
        sender.nonce += 1;
        state.put_account(&tx.sender, sender);
        state.pay_treasury(tx.fee)
    }

    /// The protocol's rules for a charged transaction's action. Writes go
    /// to `state` as they are decided; a refusal discards all of them.
    fn act(
        &self,
        state: &mut View<'_>,
        commit: &Commit<'_>,
        checked: &Checked,
    ) -> Result<(), Stop> {
        let signed = &checked.signed;
        let tx = signed.transaction();
        let params = &self.parameters;
        // What leaves the sender's balance.
        let moved = match &tx.action {
            Action::Transfer { amount, .. }
            | Action::AddStake { amount }
            | Action::AddBond { amount, .. } => *amount,
            Action::RegisterEncoder { bond, .. } => *bond,
            Action::SubmitData { payment, .. } => *payment,
            Action::WithdrawStake { .. }
            | Action::DeregisterEncoder { .. }
            | Action::Attest { .. } => 0,
        };
        // Nothing moved leaves the account as the charge left it.
        if moved > 0 {
            let mut sender = state.account(&tx.sender)?;
            if moved > sender.balance {
                Err(Rejection::InsufficientFunds {
                    needed: moved,
                    available: sender.balance,
                })?;
            }
            sender.balance -= moved;
            state.put_account(&tx.sender, sender);
        }
        match &tx.action {
            &Action::Transfer { to, amount } => state.credit(&to, amount),
            &Action::AddStake { amount } => {
                let mut validator = state
                    .validator(&tx.sender)?
                    .ok_or(Rejection::NotAValidator)?;
                validator.stake = validator
                    .stake
                    .checked_add(amount)
                    .ok_or(Rejection::Overflow)?;
                state.put_validator(&tx.sender, validator)?;
                Ok(())
            }
            &Action::WithdrawStake { amount } => {
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
                if validator.pending > 0 {
                    Err(Rejection::StakeLocked)?;
                }
                if left != 0 && left < params.min_validator_stake {
                    Err(Rejection::StakeBelowMinimum {
                        min: params.min_validator_stake,
                    })?;
                }
                validator.stake = left;
                state.put_validator(&tx.sender, validator)?;
                state.credit(&tx.sender, amount)
            }
            Action::RegisterEncoder {
                manifest,
                signature,
                bond,
            } => {
                let package = self.check_package(&tx.sender, manifest, signature)?;
                if *bond < params.min_encoder_bond {
                    Err(Rejection::BondTooLow {
                        min: params.min_encoder_bond,
                    })?;
                }
                if state.encoder(&package)?.is_some() {
                    Err(Rejection::EncoderExists)?;
                }
                // A newcomer starts where the registered encoders' median is:
                // neither a free top score nor a penalty for being new. One
                // that was registered before starts no higher than it left.
                let mut performance = state.median_performance(self.regions, params)?;
                if let Some(left) = state.retired_scores(&package)? {
                    for (score, left) in performance.iter_mut().zip(left) {
                        *score = (*score).min(left);
                    }
                }
                let encoder = Encoder {
                    owner: tx.sender,
                    bond: *bond,
                    pending: 0,
                    performance,
                };
                state.put_encoder(&package, encoder);
                Ok(())
            }
            &Action::DeregisterEncoder { package } => {
                let encoder = state.encoder(&package)?.ok_or(Rejection::UnknownEncoder)?;
                if encoder.owner != tx.sender {
                    Err(Rejection::NotOwner)?;
                }
                if encoder.pending > 0 {
                    Err(Rejection::EncoderBusy)?;
                }
                state.put_retired_scores(&package, &encoder.performance);
                state.delete_encoder(&package);
                state.credit(&tx.sender, encoder.bond)
            }
            &Action::AddBond { package, amount } => {
                let mut encoder = state.encoder(&package)?.ok_or(Rejection::UnknownEncoder)?;
                if encoder.owner != tx.sender {
                    Err(Rejection::NotOwner)?;
                }
                encoder.bond = encoder
                    .bond
                    .checked_add(amount)
                    .ok_or(Rejection::Overflow)?;
                state.put_encoder(&package, encoder);
                Ok(())
            }
            Action::SubmitData {
                modality,
                data,
                payment,
            } => {
                if *modality != Modality::Text {
                    Err(Rejection::NotTextData)?;
                }
                self.submit(state, commit, signed.digest(), &tx.sender, data, *payment)
            }
            Action::Attest { job, results } => {
                self.attest(state, commit, job, &tx.sender, results, &checked.results)
            }
        }
    }

    /// The digest of the package a registration names, once its manifest
    /// is shown to be signed by `sender`, to embed into the network's
    /// space and to accept any data the network takes.
    fn check_package(
        &self,
        sender: &PublicKey,
        manifest: &[u8],
        signature: &Signature,
    ) -> Result<Digest, Rejection> {
        let decoded = Manifest::decode(manifest).map_err(|_| Rejection::BadPackage)?;
        decoded
            .signer
            .verify(Domain::EncoderPackage, manifest, signature)
            .map_err(|_| Rejection::BadPackage)?;
        if decoded.signer != *sender {
            return Err(Rejection::NotPackageSigner);
        }
        if decoded.dimension != u32::from(self.parameters.dimension) {
            return Err(Rejection::WrongDimension {
                expected: self.parameters.dimension,
            });
        }
        if decoded.modality != Modality::Text {
            return Err(Rejection::NotTextEncoder);
        }
        // Any active encoder may be in any job's shard, and one that
        // refused the data could not be judged on it. (Leaving it out of
        // such shards instead would leave long data to the few encoders
        // that take it, too few for the outlier test.)
        if decoded.max_input_bytes < self.parameters.max_data_bytes {
            return Err(Rejection::InputLimitTooLow {
                min: self.parameters.max_data_bytes,
            });
        }
        Ok(Digest::of(manifest))
    }

    /// Creates the job `id`: checks the submission and picks its shard,
    /// seeded by the commit and the job.
    fn submit(
        &self,
        state: &mut View<'_>,
        commit: &Commit<'_>,
        id: Digest,
        submitter: &PublicKey,
        data: &[u8],
        payment: u64,
    ) -> Result<(), Stop> {
        let params = &self.parameters;
        if data.len() > params.max_data_bytes as usize {
            Err(Rejection::DataTooLarge {
                max: params.max_data_bytes,
            })?;
        }
        if payment < params.min_job_payment {
            Err(Rejection::PaymentTooLow {
                min: params.min_job_payment,
            })?;
        }
        // Text encoders refuse anything else, which would count against
        // every one of them.
        if std::str::from_utf8(data).is_err() {
            Err(Rejection::NotText)?;
        }
        let mut seed_input = commit.digest.to_vec();
        seed_input.extend_from_slice(&id.0);
        let seed = blake3::derive_key("soma/job-seed/v1", &seed_input);
        let region = match &self.router {
            Some(router) => router.region(data, params.region_bits)?,
            None => Some(0),
        };
        let candidates = state.shard_candidates(region, params)?;
        let shard = shard::select(&candidates, params.shard_size.into(), &seed);
        if shard.is_empty() {
            Err(Rejection::NoEncoders)?;
        }
        state.hold_in_escrow(payment)?;
        // The shard's bonds stay until the job is decided or expires.
        for package in &shard {
            let mut encoder = state.encoder(package)?.ok_or(Rejection::UnknownEncoder)?;
            encoder.pending = encoder.pending.checked_add(1).ok_or(Rejection::Overflow)?;
            state.put_encoder(package, encoder);
        }
        let deadline = commit.index.saturating_add(params.job_expiry_commits);
        state.put_deadline(deadline, &id);
        let job = Job {
            submitter: *submitter,
            commit: commit.index,
            data: data.to_vec(),
            payment,
            shard,
            seed,
            region,
            deadline,
            attesters: vec![],
            status: JobStatus::Pending,
        };
        state.put_job(&id, &job);
        Ok(())
    }

    /// Records a validator's attestation for a job, and finalises the job
    /// once attesters hold more than two thirds of the stake.
    fn attest(
        &self,
        state: &mut View<'_>,
        commit: &Commit<'_>,
        id: &Digest,
        validator: &PublicKey,
        results: &[EncoderResult],
        encoded: &[(Digest, Vec<u8>)],
    ) -> Result<(), Stop> {
        let dimension = usize::from(self.parameters.dimension);
        let mut record = state.validator(validator)?.unwrap_or_default();
        if record.stake == 0 {
            Err(Rejection::NotAValidator)?;
        }
        let mut job = state.job(id)?.ok_or(Rejection::UnknownJob)?;
        if job.status != JobStatus::Pending {
            Err(Rejection::JobDecided)?;
        }
        if job.attesters.contains(validator) {
            Err(Rejection::AlreadyAttested)?;
        }
        let well_formed = results.len() == job.shard.len()
            && results.iter().all(|r| match r.outcome {
                Outcome::Ok => r.embedding.len() == dimension,
                _ => r.embedding.is_empty() && r.loss == 0,
            });
        if !well_formed {
            Err(Rejection::BadAttestation)?;
        }
        debug_assert_eq!(encoded.len(), results.len(), "checked with its results");
        let digests = state.put_attestation(id, validator, encoded)?;
        job.attesters.push(*validator);
        // Its stake stays until the job is decided or expires.
        record.pending = record.pending.checked_add(1).ok_or(Rejection::Overflow)?;
        state.put_validator(validator, record)?;
        let mut attested = 0u128;
        for attester in &job.attesters {
            attested += u128::from(state.validator(attester)?.map_or(0, |v| v.stake));
        }
        let total = u128::from(state.total_stake()?);
        if attested * 3 > total * 2 {
            let completing = finalise::Completing {
                validator,
                digests: &digests.0,
                results,
            };
            finalise::finalise(
                state,
                &self.parameters,
                id,
                &mut job,
                commit.index,
                &completing,
                total,
            )?;
            state.delete_deadline(job.deadline, id);
        }
        state.put_job(id, &job);
        Ok(())
    }
}

/// Items [`pipelined`] checks together while the batch before them applies.
const CHECK_BATCH: usize = 16;

/// Runs `apply` on what `check` makes of each of `items`, in order. Past
/// one batch, a scoped thread checks each batch of [`CHECK_BATCH`] while
/// the one before it applies, so `apply` waits only when the checks fall
/// behind; at most three batches are held checked at once (one applying,
/// one handed over, one being checked). An error from `apply` is returned
/// at once and stops the checks within two batches. Without a thread to
/// be had (a process limit), the checks run in line.
///
/// `check` may use rayon's global pool while this thread waits: this must
/// not run on a thread of that pool.
fn pipelined<T: Sync, C: Send, E>(
    items: &[T],
    check: impl Fn(&[T]) -> Vec<C> + Sync,
    mut apply: impl FnMut(C) -> Result<(), E>,
) -> Result<(), E> {
    let mut apply_batch = |batch: Vec<C>| batch.into_iter().try_for_each(&mut apply);
    std::thread::scope(|scope| {
        let (send, checked) = std::sync::mpsc::sync_channel(1);
        let check = &check;
        let ahead = (items.len() > CHECK_BATCH).then(|| {
            std::thread::Builder::new()
                .name("soma-check".into())
                .spawn_scoped(scope, move || {
                    for batch in items.chunks(CHECK_BATCH) {
                        // Apply stopped on an error: nothing more to check.
                        if send.send(check(batch)).is_err() {
                            break;
                        }
                    }
                })
        });
        match ahead {
            Some(Ok(_)) => checked.into_iter().try_for_each(&mut apply_batch),
            // One batch, or no thread to be had: checked in line.
            _ => items
                .chunks(CHECK_BATCH)
                .try_for_each(|batch| apply_batch(check(batch))),
        }
    })
}

/// A refused snapshot, for `reason`.
fn refused(reason: String) -> ExecutionError {
    ExecutionError::Snapshot(reason)
}

/// Decodes a page of a snapshot, refusing one larger than any page may be
/// before decoding it.
fn decode_page(bytes: &[u8]) -> Result<Page, ExecutionError> {
    if bytes.len() > MAX_SNAPSHOT_PAGE {
        return Err(refused(format!(
            "a page of {} bytes, over the {MAX_SNAPSHOT_PAGE} a page may be",
            bytes.len()
        )));
    }
    Page::from_bytes(bytes).map_err(|e| refused(e.to_string()))
}

/// Writes the entries of `first` and of the pages after it, fetched with
/// `next_page`, into `store`, checking that every page is of the same
/// snapshot, cut at `page_bytes`, and goes on after the entry the one
/// before ended with, and that the entries never hold more than the
/// header says the state does; their lattice.
fn write_pages<E: std::fmt::Display>(
    store: &StateStore,
    first: Page,
    page_bytes: usize,
    mut next_page: impl FnMut(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<Lattice, ExecutionError> {
    let header = first.header.clone();
    let mut page = first;
    let mut lattice = Lattice::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let entries = lattice.size().entries;
        if page.header != header {
            return Err(refused(
                "its pages are of different snapshots (a peer that pinned a new one \
                 meanwhile?)"
                    .into(),
            ));
        }
        if let (Some(after), Some((space, key, _))) = (&after, page.entries.first())
            && cursor(*space, key) <= *after
        {
            return Err(refused(format!(
                "the page after {entries} entries does not go on after them"
            )));
        }
        // Cut as the peer must cut it: once its entries reach
        // `page_bytes`, and not before unless none are left.
        let sizes: Vec<usize> = page
            .entries
            .iter()
            .map(|(_, key, value)| ENTRY_OVERHEAD + key.len() + value.len())
            .collect();
        let before_last: usize = sizes.iter().rev().skip(1).sum();
        let whole = before_last + sizes.last().copied().unwrap_or(0);
        if before_last >= page_bytes || (!page.last && whole < page_bytes) {
            return Err(refused(format!(
                "the page after {entries} entries is not cut at {page_bytes} bytes"
            )));
        }
        for (space, key, value) in &page.entries {
            if usize::from(*space) >= Space::ALL.len() {
                return Err(refused(format!(
                    "an entry of keyspace {space}, which is none"
                )));
            }
            if Space::ALL[usize::from(*space)] == Space::Meta && is_record(key) {
                return Err(refused("an entry in the place of a record".into()));
            }
            lattice.add(*space, key, value);
        }
        let size = lattice.size();
        if size.entries > header.size.entries || size.bytes > header.size.bytes {
            return Err(refused(format!(
                "its pages hold more than the {} entries of {} bytes its vouched root says",
                header.size.entries, header.size.bytes
            )));
        }
        store.restore_entries(&page.entries)?;
        if page.last {
            return Ok(lattice);
        }
        // Not the last, so cut at `page_bytes` above: it holds entries.
        let Some((space, key, _)) = page.entries.last() else {
            return Err(refused(format!(
                "the page after {} entries is empty and not the last",
                size.entries
            )));
        };
        let next = cursor(*space, key);
        let entries = size.entries;
        let bytes = next_page(&next).map_err(|e| {
            refused(format!(
                "the page after {entries} entries cannot be had: {e}"
            ))
        })?;
        page = decode_page(&bytes).map_err(|e| match e {
            ExecutionError::Snapshot(reason) => {
                refused(format!("the page after {entries} entries: {reason}"))
            }
            e => e,
        })?;
        after = Some(next);
    }
}

/// The state after one commit, pinned ([`StateReader::pin`]) and read a
/// page at a time by a validator that restores it.
pub struct PinnedState {
    store: StateStore,
    instant: fjall::Snapshot,
    header: Header,
}

impl std::fmt::Debug for PinnedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedState")
            .field("commits", &self.commits())
            .field("root", &hex::encode(self.header.root))
            .finish()
    }
}

impl PinnedState {
    /// The commits applied in the pinned state.
    pub fn commits(&self) -> u64 {
        self.header.step.index + 1
    }

    /// Checks that `cursor` could name an entry of a state, as
    /// [`PinnedState::page`] does first: a client's cursor can be refused
    /// before any work for it.
    pub fn check_cursor(cursor: &[u8]) -> Result<(), ExecutionError> {
        parse_cursor(cursor, Space::ALL.len())
            .map(|_| ())
            .map_err(|e| refused(e.to_string()))
    }

    /// The encoded page of the snapshot that holds the entries after
    /// `after` (the cursor [`Executor::restore`] asks with; `None` for the
    /// first page), cut once it holds `max_bytes` of entries (at least one,
    /// if any are left: [`crate::SNAPSHOT_PAGE_BYTES`] keeps a page under
    /// [`crate::MAX_SNAPSHOT_PAGE`]).
    /// A cursor that could not name an entry is refused as
    /// [`ExecutionError::Snapshot`].
    pub fn page(&self, after: Option<&[u8]>, max_bytes: usize) -> Result<Vec<u8>, ExecutionError> {
        Ok(self.decoded_page(after, max_bytes)?.to_bytes())
    }

    /// Every page of the snapshot in order, each cut at `max_bytes` as
    /// [`PinnedState::page`] cuts it: as a restorer asks for them.
    pub fn pages(
        &self,
        max_bytes: usize,
    ) -> impl Iterator<Item = Result<Vec<u8>, ExecutionError>> + '_ {
        let mut after: Option<Option<Vec<u8>>> = Some(None);
        std::iter::from_fn(move || {
            let page = self.decoded_page(after.take()?.as_deref(), max_bytes);
            if let Ok(page) = &page
                && !page.last
            {
                after = page
                    .entries
                    .last()
                    .map(|(space, key, _)| Some(cursor(*space, key)));
            }
            Some(page.map(|page| page.to_bytes()))
        })
    }

    fn decoded_page(&self, after: Option<&[u8]>, max_bytes: usize) -> Result<Page, ExecutionError> {
        let after = after
            .map(|after| parse_cursor(after, Space::ALL.len()))
            .transpose()
            .map_err(|e| refused(e.to_string()))?;
        let mut iter = self.store.entries_after(&self.instant, after).peekable();
        let mut entries = Vec::new();
        let mut bytes = 0;
        for entry in iter.by_ref() {
            let entry = entry?;
            bytes += ENTRY_OVERHEAD + entry.1.len() + entry.2.len();
            entries.push(entry);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(Page {
            header: self.header.clone(),
            entries,
            last: iter.peek().is_none(),
        })
    }
}

/// Reads of the applied state. Cheap to clone and usable from any thread
/// while apply runs: each commit's writes land in one batch, and a read of
/// a record sees the state after some whole commit, never less than an
/// earlier read saw (reads of several records are not one snapshot, but a
/// record read after another reflects at least the same commits). An
/// [`Executor`] dereferences to its reader.
#[derive(Clone)]
pub struct StateReader {
    store: StateStore,
}

impl StateReader {
    /// The state after the last applied commit, pinned while apply goes
    /// on, for a validator whose own state is lost or diverged to restore
    /// a page at a time (see [`Executor::restore`]).
    pub fn pin(&self) -> Result<PinnedState, ExecutionError> {
        let pinned = self
            .store
            .pin()?
            .ok_or_else(|| refused("no commit applied yet".into()))?;
        // A state upgraded where it opened holds entries its last root did
        // not fold in: no root vouches for them until the next commit's.
        if pinned.step.root(&pinned.lattice) != pinned.applied.root {
            return Err(refused(
                "the state was upgraded since its last commit: a copy is served after the next"
                    .into(),
            ));
        }
        let genesis = self
            .store
            .read_published::<Genesis>(Space::Meta, GENESIS)?
            .ok_or_else(|| StateError::inconsistent("genesis", "missing from the state"))?;
        Ok(PinnedState {
            store: self.store.clone(),
            instant: pinned.instant,
            header: Header {
                chain_id: genesis.chain_id(),
                root: pinned.applied.root,
                step: pinned.step,
                lanes: pinned.lattice.lanes_digest(),
                size: pinned.lattice.size(),
            },
        })
    }

    /// The account of `key` (empty if it never received anything).
    pub fn account(&self, key: &PublicKey) -> Result<Account, ExecutionError> {
        Ok(self
            .store
            .read_published(Space::Accounts, &key.to_bytes())?
            .unwrap_or_default())
    }

    /// The validator record of `key`, if it is a validator.
    pub fn validator(&self, key: &PublicKey) -> Result<Option<Validator>, ExecutionError> {
        Ok(self
            .store
            .read_published(Space::Validators, &key.to_bytes())?)
    }

    /// The stake of every validator together, as apply counts it when it
    /// decides a job.
    pub fn total_stake(&self) -> Result<u64, ExecutionError> {
        let (changes, mut pending) = (Changes::default(), Changes::default());
        let view = View {
            store: &self.store,
            changes: &changes,
            pending: &mut pending,
        };
        Ok(view.total_stake()?)
    }

    /// The encoder registered for `package`, if any.
    pub fn encoder(&self, package: &Digest) -> Result<Option<Encoder>, ExecutionError> {
        Ok(self
            .store
            .read_published(Space::Encoders, &encoder_key(package))?)
    }

    /// The receipts of an applied commit.
    pub fn receipts(&self, index: u64) -> Result<Vec<Receipt>, ExecutionError> {
        self.store
            .receipts(index)?
            .iter()
            .map(|bytes| Ok(Receipt::from_bytes(bytes).map_err(StateError::from)?))
            .collect()
    }

    /// The job `id`, if one was submitted.
    pub fn job(&self, id: &Digest) -> Result<Option<Job>, ExecutionError> {
        Ok(self.store.read_published(Space::Jobs, &id.0)?)
    }

    /// The attestations of job `job` that applied, read at one instant:
    /// each attester (ordered by key) with what it attested, one result
    /// per shard encoder in shard order.
    pub fn attestations(
        &self,
        job: &Digest,
    ) -> Result<Vec<(PublicKey, Vec<EncoderResult>)>, ExecutionError> {
        Ok(self.store.job_attestations(job)?)
    }

    /// The state root after commit `index`, if this node applied it.
    pub fn root_after(&self, index: u64) -> Result<Option<[u8; 32]>, ExecutionError> {
        Ok(self.store.root_after(index)?)
    }

    /// The jobs still waiting for attestations, by deadline: what a job
    /// runner that restarted has left to compute.
    pub fn pending_jobs(&self) -> Result<Vec<Digest>, ExecutionError> {
        Ok(self
            .store
            .scan::<JobId>(Space::Deadlines)?
            .into_iter()
            .map(|(_, JobId(id))| id)
            .collect())
    }

    /// Where all the money is. Each keyspace is read at its own instant:
    /// while apply runs, the parts may be of different commits.
    pub fn supply(&self) -> Result<Supply, ExecutionError> {
        let sum = |values: Vec<u64>| values.into_iter().map(u128::from).sum::<u128>();
        let accounts = self.store.scan::<Account>(Space::Accounts)?;
        let validators = self.store.scan::<Validator>(Space::Validators)?;
        let encoders = self.store.scan::<Encoder>(Space::Encoders)?;
        let total = |key| -> Result<u128, StateError> {
            Ok(self
                .store
                .read::<Amount>(&[], Space::Meta, key)?
                .unwrap_or_default()
                .0
                .into())
        };
        Ok(Supply {
            balances: sum(accounts.into_iter().map(|(_, a)| a.balance).collect()),
            stakes: sum(validators.into_iter().map(|(_, v)| v.stake).collect()),
            bonds: sum(encoders.into_iter().map(|(_, e)| e.bond).collect()),
            treasury: total(TREASURY)?,
            escrow: total(ESCROW)?,
            burned: total(BURNED)?,
        })
    }
}

/// Writes the genesis state; returns where apply starts.
fn initialise(
    store: &StateStore,
    genesis: &Genesis,
    regions: usize,
) -> Result<(Applied, Lattice), StateError> {
    let mut changes = Changes::default();
    for a in genesis.accounts() {
        let account = Account {
            balance: a.balance,
            nonce: 0,
        };
        changes.put(Space::Accounts, &a.key.to_bytes(), &account);
    }
    let mut staked = 0u64;
    for v in genesis.validators() {
        changes.put(
            Space::Validators,
            &v.key.to_bytes(),
            &Validator {
                stake: v.stake,
                deviant: 0,
                pending: 0,
            },
        );
        // The genesis supply fits a u64, so its stakes do.
        staked = staked
            .checked_add(v.stake)
            .ok_or_else(|| StateError::inconsistent("genesis", "its stakes exceed a u64"))?;
    }
    changes.put(Space::Meta, STAKED, &Amount(staked));
    for e in genesis.encoders() {
        let encoder = Encoder {
            owner: e.owner,
            bond: e.bond,
            pending: 0,
            performance: routing::initial_performance(regions),
        };
        changes.put(Space::Encoders, &encoder_key(&e.package), &encoder);
    }
    changes.put(Space::Meta, GENESIS, genesis);
    let applied = Applied {
        next_index: 0,
        root: blake3::derive_key("soma/state-root/v1/genesis", &genesis.chain_id()),
    };
    let mut lattice = Lattice::default();
    store.fold(&mut lattice, &changes)?;
    store.write(changes, 0, &[], &applied, &lattice, None)?;
    Ok((applied, lattice))
}

/// The digest of a commit's encoded receipts, in order.
fn receipts_digest(receipts: &[Vec<u8>]) -> [u8; 32] {
    let mut w = Writer::new();
    w.count32(receipts.len());
    receipts.iter().for_each(|r| w.bytes32(r));
    *blake3::hash(&w.into_bytes()).as_bytes()
}

/// The two steps of a transaction, each kept or discarded whole.
#[derive(Clone, Copy)]
enum Step {
    /// The checks that make it chargeable, and the charge.
    Charge,
    /// Its action.
    Act,
}

/// Expires `job`: the payment back to the submitter, the shard's bonds
/// freed.
fn expire(state: &mut View<'_>, job: &mut Job, commit: u64) -> Result<(), Stop> {
    state.release_escrow(job.payment)?;
    state.credit(&job.submitter, job.payment)?;
    for package in &job.shard {
        if let Some(mut encoder) = state.encoder(package)? {
            encoder.pending = encoder.pending.saturating_sub(1);
            state.put_encoder(package, encoder);
        }
    }
    for attester in &job.attesters {
        if let Some(mut validator) = state.validator(attester)? {
            validator.pending = validator.pending.saturating_sub(1);
            state.put_validator(attester, validator)?;
        }
    }
    job.status = JobStatus::Expired { commit };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::{GenesisAccount, GenesisEncoder, GenesisValidator};
    use crate::job::{Attestation, ResultDigests};
    use crate::state::STEP;
    use crate::transaction::Transaction;
    use soma_crypto::SecretKey;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Copies directory `from` to `to`.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            match entry.file_type().unwrap().is_dir() {
                true => copy_dir(&entry.path(), &target),
                false => drop(std::fs::copy(entry.path(), target).unwrap()),
            }
        }
    }

    #[test]
    fn a_state_that_kept_each_attestation_whole_is_upgraded_where_it_opens() {
        let keys: Vec<SecretKey> = (1..=8u8).map(|i| SecretKey::from_bytes(&[i; 32])).collect();
        let mut accounts: Vec<GenesisAccount> = (keys.iter())
            .map(|k| GenesisAccount {
                key: k.public_key(),
                balance: 1 << 40,
            })
            .collect();
        accounts.sort_by_key(|a| a.key);
        let validators = (keys[..4].iter())
            .map(|k| GenesisValidator {
                key: k.public_key(),
                stake: 5_000_000,
            })
            .collect();
        let encoders = (5..8)
            .map(|i| GenesisEncoder {
                package: Digest([i as u8; 32]),
                owner: keys[i].public_key(),
                bond: 1 << 30,
            })
            .collect();
        let genesis = Genesis::new(
            "soma-upgrade".into(),
            accounts,
            validators,
            encoders,
            Parameters::default(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (state, reference) = (dir.path().join("state"), dir.path().join("reference"));
        let mut ex = Executor::open(&state, &genesis, None).unwrap();
        let commit = |ex: &mut Executor, txs: &[(usize, Action)]| {
            let mut nonces: Vec<u64> = (keys.iter())
                .map(|k| ex.account(&k.public_key()).unwrap().nonce)
                .collect();
            let transactions: Vec<Vec<u8>> = (txs.iter())
                .map(|(from, action)| {
                    nonces[*from] += 1;
                    let tx = Transaction {
                        chain_id: genesis.chain_id(),
                        sender: keys[*from].public_key(),
                        nonce: nonces[*from] - 1,
                        fee: 10,
                        action: action.clone(),
                    };
                    tx.sign(&keys[*from]).to_bytes()
                })
                .collect();
            let index = ex.next_index();
            let effects = (ex.apply(Commit {
                index,
                digest: *blake3::hash(&index.to_le_bytes()).as_bytes(),
                transactions: &transactions,
                proposers: None,
            }))
            .unwrap();
            assert!(effects.receipts.iter().all(|r| r.rejection.is_none()));
            effects
        };
        let submit = |n: u8| Action::SubmitData {
            modality: soma_host::Modality::Text,
            data: format!("sentence {n} with a few words in it").into_bytes(),
            payment: 1_000_000,
        };
        let effects = commit(&mut ex, &[(4, submit(0)), (4, submit(1))]);
        let jobs: Vec<Digest> = effects
            .receipts
            .iter()
            .map(|r| r.transaction.unwrap())
            .collect();
        let result = |tilt: i32| EncoderResult {
            outcome: Outcome::Ok,
            fuel: 1_000,
            loss: 100,
            embedding: (0..384).map(|i| (i * 37 + tilt) % 2_000 - 1_000).collect(),
        };
        let alike = vec![result(0), result(11), result(22)];
        let noisy = vec![result(1), result(11), result(22)];
        let attest = |job: Digest, results: &Vec<EncoderResult>| Action::Attest {
            job,
            results: results.clone(),
        };
        // One job decided, from results alike and not; one still pending.
        let attested = [
            (0, jobs[0], &alike),
            (1, jobs[0], &noisy),
            (0, jobs[1], &alike),
        ];
        for (v, job, results) in attested {
            commit(&mut ex, &[(v, attest(job, results))]);
        }
        commit(&mut ex, &[(2, attest(jobs[0], &alike))]);
        assert!(matches!(
            ex.job(&jobs[1]).unwrap().unwrap().status,
            JobStatus::Pending
        ));
        let lattice = ex.lattice.clone();
        drop(ex);
        copy_dir(&state, &reference);

        // The state as the earlier version wrote it: every attestation
        // whole, no results, and a lattice of those entries.
        let store = StateStore::open(&state).unwrap();
        let kept = store.job_attestations(&jobs[0]).unwrap();
        assert!(kept.contains(&(keys[1].public_key(), noisy.clone())));
        let mut old = Changes::default();
        let mut attested_jobs: Vec<Digest> = (store.scan::<ResultDigests>(Space::Attestations))
            .unwrap()
            .into_iter()
            .map(|(key, _)| Digest(key[..32].try_into().unwrap()))
            .collect();
        attested_jobs.dedup();
        for job in attested_jobs {
            for (validator, results) in store.job_attestations(&job).unwrap() {
                let mut w = Writer::new();
                Attestation::encode_results(&results, &mut w);
                let key = crate::state::attestation_key(&job, &validator);
                old.put_encoded(Space::Attestations, &key, w.into_bytes());
            }
        }
        for (key, _) in store.scan::<EncoderResult>(Space::Results).unwrap() {
            old.delete(Space::Results, &key);
        }
        let applied = store
            .read::<Applied>(&[], Space::Meta, APPLIED)
            .unwrap()
            .unwrap();
        let last = applied.next_index - 1;
        store
            .write(old, last, &[], &applied, &lattice, None)
            .unwrap();
        // Its last root folded in the lattice of those entries.
        let whole = store.lattice_of_entries().unwrap();
        assert_ne!(whole, lattice);
        let step = store
            .read::<RootStep>(&[], Space::Meta, STEP)
            .unwrap()
            .unwrap();
        let old_root = step.root(&whole);
        let applied = Applied {
            root: old_root,
            ..applied
        };
        let write = store.write(Changes::default(), last, &[], &applied, &whole, Some(&step));
        write.unwrap();
        assert!(store.keeps_attestations_whole().unwrap());
        drop(store);

        // Opened, it is upgraded to what this version would have written,
        // reads back each attestation as it was, and goes on to the states
        // the never-downgraded copy reaches (its roots chain on from the
        // old root).
        let upgraded = Executor::open(&state, &genesis, None).unwrap();
        assert_eq!(upgraded.lattice, lattice);
        // Recorded durably, as it is: opened again, it is not rewritten.
        drop(upgraded);
        assert!(
            !StateStore::open(&state)
                .unwrap()
                .keeps_attestations_whole()
                .unwrap()
        );
        let mut upgraded = Executor::open(&state, &genesis, None).unwrap();
        assert_eq!((upgraded.root(), &upgraded.lattice), (old_root, &lattice));
        upgraded.verify_state().unwrap();
        // No root vouches for its entries until the next commit's.
        let err = upgraded.pin().err().unwrap();
        assert!(err.to_string().contains("upgraded since"), "{err}");
        for (v, job, results) in attested {
            let read = upgraded.attestations(&job).unwrap();
            let validator = keys[v].public_key();
            assert!(read.contains(&(validator, results.clone())), "{read:?}");
        }
        let mut reference = Executor::open(&reference, &genesis, None).unwrap();
        let last = [(1, attest(jobs[1], &noisy)), (2, attest(jobs[1], &alike))];
        let receipts = commit(&mut upgraded, &last).receipts;
        assert_eq!(commit(&mut reference, &last).receipts, receipts);
        assert_eq!(upgraded.lattice, reference.lattice);
        assert_ne!(reference.root(), upgraded.root());
        assert!(matches!(
            upgraded.job(&jobs[1]).unwrap().unwrap().status,
            JobStatus::Finalised(_)
        ));
        upgraded.pin().unwrap();
    }

    #[test]
    fn genesis_keeps_the_total_stake_of_its_validators() {
        let validators = [(1u8, 5_000_000), (2, 7_000_000)]
            .map(|(i, stake)| GenesisValidator {
                key: soma_crypto::SecretKey::from_bytes(&[i; 32]).public_key(),
                stake,
            })
            .to_vec();
        let genesis = Genesis::new(
            "soma-staked".into(),
            vec![],
            validators,
            vec![],
            Parameters::default(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let executor = Executor::open(dir.path(), &genesis, None).unwrap();
        let kept = executor
            .store
            .read::<Amount>(&[], Space::Meta, STAKED)
            .unwrap();
        assert_eq!(kept, Some(Amount(12_000_000)));
    }

    #[test]
    fn pipelined_applies_in_order_and_stops_checking_soon_after_an_error() {
        for n in [0, 1, CHECK_BATCH, CHECK_BATCH + 1, 10 * CHECK_BATCH + 3] {
            let items: Vec<usize> = (0..n).collect();
            let mut applied = Vec::new();
            let done = pipelined(
                &items,
                |batch| batch.iter().map(|x| x * 2).collect(),
                |x| {
                    applied.push(x);
                    Ok::<_, ()>(())
                },
            );
            assert_eq!(done, Ok(()));
            assert_eq!(applied, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
        // Apply fails in the second batch of many: the error comes back,
        // and at most two batches beyond it were checked.
        let items: Vec<usize> = (0..100 * CHECK_BATCH).collect();
        let checked = AtomicUsize::new(0);
        let failed = pipelined(
            &items,
            |batch| {
                checked.fetch_add(batch.len(), Ordering::Relaxed);
                batch.to_vec()
            },
            |x| match x == CHECK_BATCH + 3 {
                true => Err(x),
                false => Ok(()),
            },
        );
        assert_eq!(failed, Err(CHECK_BATCH + 3));
        assert!(checked.into_inner() <= 4 * CHECK_BATCH);
    }
}
