//! The state apply reads and writes, in fjall.
//!
//! ```text
//! accounts    key (32)        → u64 balance ‖ u64 nonce
//! validators  key (32)        → u64 stake ‖ u32 deviant attestations ‖ u32 undecided ones
//! encoders    package (32)    → owner (32) ‖ u64 bond ‖ u32 undecided jobs
//!                               ‖ u16 regions ‖ u32 score per region
//! jobs        job id (32)     → job (see `job.rs`)
//! attestations job id (32) ‖ validator key (32) → u8 count ‖ result digest (32) each
//! deadlines   u64 commit index (BE) ‖ job id (32) → job id: when a job expires
//! receipts    u64 commit index (BE) ‖ u32 position (BE) → receipt
//! meta        "genesis"       → the canonical genesis
//!             "applied"       → u64 next commit index ‖ state root (32)
//!             "treasury"      → u64 fees and job payments kept
//!             "escrow"        → u64 payments of undecided jobs
//!             "burned"        → u64 slashed and burned
//!             "staked"        → u64 stake of every validator together
//! results     job id (32) ‖ result digest (32) → encoder result (see `job.rs`)
//! ```
//!
//! A commit's writes are gathered in [`Changes`] (sorted, so their digest
//! is the same on every validator) and written in one batch with the
//! receipts and the new `applied` record: a crash leaves the state before
//! the commit or after it, never between.

use crate::job::{Attestation, EncoderResult, ResultDigests};
use crate::lattice::Lattice;
use crate::params::Parameters;
use crate::routing::MAX_REGION_BITS;
use crate::snapshot::{Entry, RootStep};
use fjall::Readable as _;
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};
use soma_crypto::PublicKey;
use soma_host::Digest;
use std::collections::{BTreeMap, btree_map};
use std::path::Path;

/// A key in a record of this node's state: it was checked when it entered
/// (in a transaction or the genesis), so it is not decompressed again on
/// every read. The decoders that use it ([`crate::Job`], [`Encoder`]) are
/// for this node's own store only. A key corrupted on disk is not caught
/// here; it changes what apply does with it, so this node's state root
/// parts from the others' and the root check stops it.
pub(crate) fn stored_key(r: &mut Reader<'_>, what: &'static str) -> Result<PublicKey, DecodeError> {
    r.array(what).map(PublicKey::from_stored_bytes)
}

/// Why the state store failed. Any of these stops apply: carrying on could
/// make this validator's state differ from everyone else's.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The storage engine failed.
    #[error("state store: {0}")]
    Engine(#[from] fjall::Error),
    /// Stored bytes do not decode.
    #[error("state store is corrupt: {0}")]
    Corrupt(#[from] DecodeError),
    /// The state's directory could not be set up.
    #[error("state directory {}: {source}", path.display())]
    Directory {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl StateError {
    /// The state contradicts itself: `what` should hold and does not.
    pub(crate) fn inconsistent(what: &'static str, reason: &str) -> StateError {
        StateError::Corrupt(DecodeError::invalid(what, reason))
    }
}

/// An account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Account {
    /// Base units it holds.
    pub balance: u64,
    /// The nonce its next transaction must carry.
    pub nonce: u64,
}

/// A validator's stake and record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Validator {
    /// Base units staked.
    pub stake: u64,
    /// Attestations of its that deviated from the finalised medians.
    pub deviant: u32,
    /// Its attestations of jobs not yet decided: while there are any, its
    /// stake stays (deviance may yet cost some of it).
    pub pending: u32,
}

/// A registered encoder.
///
/// Its encoding is a record of this node's state: decode only bytes this
/// node stored (its owner key is not checked again, see `stored_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoder {
    /// The account that registered it and gets its bond back.
    pub owner: PublicKey,
    /// Base units bonded.
    pub bond: u64,
    /// Undecided jobs it is in the shard of: while there are any, its bond
    /// stays (it may be slashed) and it cannot be deregistered.
    pub pending: u32,
    /// Its routing score in each region (fixed point, at most 1.0).
    pub performance: Vec<u32>,
}

/// Whether an encoder is drawn into shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderStatus {
    /// Its bond is at least the minimum: it is drawn into shards.
    Active,
    /// Slashes and penalties took its bond below the minimum: it is drawn
    /// into no new shard (a bond too small to be worth slashing cannot
    /// keep an encoder working) until its owner adds to it
    /// ([`crate::Action::AddBond`]), or deregisters it and takes back what
    /// is left.
    Underbonded,
}

impl EncoderStatus {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            EncoderStatus::Active => "active",
            EncoderStatus::Underbonded => "underbonded",
        }
    }
}

impl Encoder {
    /// Its status under the protocol's `parameters`. Derived from the bond
    /// rather than stored, so it can never disagree with it.
    pub fn status(&self, parameters: &Parameters) -> EncoderStatus {
        match self.bond >= parameters.min_encoder_bond {
            true => EncoderStatus::Active,
            false => EncoderStatus::Underbonded,
        }
    }
}

/// Where the state stands: the next commit to apply and the root after
/// the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Index of the next commit apply takes.
    pub next_index: u64,
    /// The state root after the last applied commit (or genesis).
    pub root: [u8; 32],
}

impl Encode for Account {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.balance);
        w.u64(self.nonce);
    }
}

impl Decode<'_> for Account {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Account {
            balance: r.u64("balance")?,
            nonce: r.u64("nonce")?,
        })
    }
}

impl Encode for Validator {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.stake);
        w.u32(self.deviant);
        w.u32(self.pending);
    }
}

impl Decode<'_> for Validator {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Validator {
            stake: r.u64("stake")?,
            deviant: r.u32("deviant")?,
            pending: r.u32("pending attestations")?,
        })
    }
}

impl Encode for Encoder {
    fn encode(&self, w: &mut Writer) {
        w.array(&self.owner.to_bytes());
        w.u64(self.bond);
        w.u32(self.pending);
        Scores::encode_slice(&self.performance, w);
    }
}

impl Decode<'_> for Encoder {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Encoder {
            owner: stored_key(r, "owner")?,
            bond: r.u64("bond")?,
            pending: r.u32("pending jobs")?,
            performance: Scores::decode(r)?.0,
        })
    }
}

/// Routing scores, one per region: an encoder's, and those a deregistered
/// encoder leaves behind (kept, so that registering again is no fresh
/// start).
pub(crate) struct Scores(pub(crate) Vec<u32>);

impl Scores {
    fn encode_slice(scores: &[u32], w: &mut Writer) {
        w.count16(scores.len());
        w.u32s(scores.iter().copied());
    }
}

impl Encode for Scores {
    fn encode(&self, w: &mut Writer) {
        Scores::encode_slice(&self.0, w);
    }
}

impl Decode<'_> for Scores {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count16("performance", 1 << MAX_REGION_BITS, 4)?;
        Ok(Scores(r.u32s(n, "performance")?.collect()))
    }
}

impl Encode for Applied {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.next_index);
        w.array(&self.root);
    }
}

impl Decode<'_> for Applied {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Applied {
            next_index: r.u64("next index")?,
            root: r.array("root")?,
        })
    }
}

/// A running total of base units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Amount(pub(crate) u64);

impl Encode for Amount {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.0);
    }
}

impl Decode<'_> for Amount {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.u64("amount").map(Amount)
    }
}

/// The keyspaces [`Changes`] write to. A keyspace's number names it in
/// the lattice hash and in snapshots: a new one goes last, and into
/// [`Space::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Space {
    Accounts = 0,
    Validators = 1,
    Encoders = 2,
    Jobs = 3,
    /// What each attester attested for a job, as its results' digests, by
    /// job and validator.
    Attestations = 4,
    Deadlines = 5,
    /// Routing scores of deregistered encoders, by package digest.
    Retired = 6,
    Meta = 7,
    /// Each job's distinct attested results, by job and result digest.
    Results = 8,
}

impl Space {
    /// Every keyspace of the state.
    pub(crate) const ALL: [Space; 9] = [
        Space::Accounts,
        Space::Validators,
        Space::Encoders,
        Space::Jobs,
        Space::Attestations,
        Space::Deadlines,
        Space::Retired,
        Space::Meta,
        Space::Results,
    ];
}

pub(crate) const GENESIS: &[u8] = b"genesis";
pub(crate) const APPLIED: &[u8] = b"applied";
/// The state's [`Lattice`]: like [`APPLIED`], a record of the state, not
/// an entry of it.
pub(crate) const LATTICE: &[u8] = b"lattice";
/// How the last root was made ([`RootStep`]): a record too.
pub(crate) const STEP: &[u8] = b"step";
/// The records kept beside the state's entries in its meta keyspace.
const RECORDS: [&[u8]; 3] = [APPLIED, LATTICE, STEP];

/// Whether `key` of the meta keyspace is a record, not an entry.
pub(crate) fn is_record(key: &[u8]) -> bool {
    RECORDS.contains(&key)
}
pub(crate) const TREASURY: &[u8] = b"treasury";
pub(crate) const ESCROW: &[u8] = b"escrow";
pub(crate) const BURNED: &[u8] = b"burned";
/// The stake of every validator together: kept with each change of a
/// stake, so that deciding a job reads one entry rather than every
/// validator.
pub(crate) const STAKED: &[u8] = b"staked";

/// Writes [`StateStore::fold`] hashes as one task: enough that a task
/// outweighs handing it to another core.
const FOLD_CHUNK: usize = 16;

/// Writes not yet in the store, by keyspace (indexed by its number) and
/// key (`None` deletes). One map per keyspace, so that a read looks a key
/// up as it is given rather than copying it into a compound key.
#[derive(Debug, Default)]
pub(crate) struct Changes([BTreeMap<Vec<u8>, Option<Vec<u8>>>; Space::ALL.len()]);

impl Changes {
    pub(crate) fn put(&mut self, space: Space, key: &[u8], value: &impl Encode) {
        self.put_encoded(space, key, value.to_bytes());
    }

    /// Writes a value already encoded.
    pub(crate) fn put_encoded(&mut self, space: Space, key: &[u8], value: Vec<u8>) {
        self.0[space as usize].insert(key.to_vec(), Some(value));
    }

    pub(crate) fn delete(&mut self, space: Space, key: &[u8]) {
        self.0[space as usize].insert(key.to_vec(), None);
    }

    fn get(&self, space: Space, key: &[u8]) -> Option<Option<&[u8]>> {
        self.0[space as usize]
            .get(key)
            .map(|value| value.as_deref())
    }

    /// The writes to `space`, in key order.
    pub(crate) fn entries(&self, space: Space) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.0[space as usize]
            .iter()
            .map(|(key, value)| (key.as_slice(), value.as_deref()))
    }

    /// Every write, by keyspace and key.
    fn iter(&self) -> impl Iterator<Item = (Space, &[u8], Option<&[u8]>)> {
        Space::ALL.into_iter().flat_map(|space| {
            self.entries(space)
                .map(move |(key, value)| (space, key, value))
        })
    }

    /// Takes `other`'s writes over these.
    pub(crate) fn extend(&mut self, other: Changes) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            mine.extend(theirs);
        }
    }

    /// A digest of every write, in key order: the same on every validator
    /// that made the same writes. It hashes the encoding `space ‖ key
    /// (bytes32) ‖ present ‖ value (bytes32)` of each write in turn, the
    /// small pieces gathered so that blake3 hashes whole chunks at a time,
    /// large values straight from where they are held.
    pub(crate) fn digest(&self) -> [u8; 32] {
        /// Values at least this long are hashed where they are.
        const STRAIGHT: usize = 1 << 10;
        let mut hasher = blake3::Hasher::new_derive_key("soma/state-writes/v1");
        let mut gathered = Writer::new();
        for (space, key, value) in self.iter() {
            gathered.u8(space as u8);
            gathered.bytes32(key);
            gathered.bool(value.is_some());
            let Some(value) = value else { continue };
            gathered.count32(value.len());
            if value.len() < STRAIGHT {
                gathered.raw(value);
            } else {
                hasher.update(&std::mem::take(&mut gathered).into_bytes());
                hasher.update(value);
            }
        }
        hasher.update(&gathered.into_bytes());
        *hasher.finalize().as_bytes()
    }
}

/// The state as [`StateStore::pin`] pinned it, with the records of the
/// commit it is the state after.
pub(crate) struct Pinned {
    pub(crate) applied: Applied,
    pub(crate) step: RootStep,
    pub(crate) lattice: Lattice,
    pub(crate) instant: fjall::Snapshot,
}

/// The state on disk; clones share it.
#[derive(Clone)]
pub struct StateStore {
    db: fjall::Database,
    accounts: fjall::Keyspace,
    validators: fjall::Keyspace,
    encoders: fjall::Keyspace,
    jobs: fjall::Keyspace,
    attestations: fjall::Keyspace,
    deadlines: fjall::Keyspace,
    retired: fjall::Keyspace,
    receipts: fjall::Keyspace,
    /// The state root after each commit (by index): a record for readers,
    /// not part of the root itself.
    roots: fjall::Keyspace,
    meta: fjall::Keyspace,
    results: fjall::Keyspace,
}

impl StateStore {
    /// Opens (creating if needed) the state under `path`.
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        let db = fjall::Database::builder(path).open()?;
        let options = fjall::KeyspaceCreateOptions::default;
        Ok(StateStore {
            accounts: db.keyspace("accounts", options)?,
            validators: db.keyspace("validators", options)?,
            encoders: db.keyspace("encoders", options)?,
            jobs: db.keyspace("jobs", options)?,
            attestations: db.keyspace("attestations", options)?,
            deadlines: db.keyspace("deadlines", options)?,
            retired: db.keyspace("retired", options)?,
            receipts: db.keyspace("receipts", options)?,
            roots: db.keyspace("roots", options)?,
            meta: db.keyspace("meta", options)?,
            results: db.keyspace("results", options)?,
            db,
        })
    }

    fn keyspace(&self, space: Space) -> &fjall::Keyspace {
        match space {
            Space::Accounts => &self.accounts,
            Space::Validators => &self.validators,
            Space::Encoders => &self.encoders,
            Space::Jobs => &self.jobs,
            Space::Attestations => &self.attestations,
            Space::Deadlines => &self.deadlines,
            Space::Retired => &self.retired,
            Space::Meta => &self.meta,
            Space::Results => &self.results,
        }
    }

    /// The value under `key`, decoded, as `pending` leaves it: for apply,
    /// the only writer, which reads between its own batches (readers
    /// beside it use [`StateStore::read_published`]).
    pub(crate) fn read<T: for<'a> Decode<'a>>(
        &self,
        pending: &[&Changes],
        space: Space,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        match pending_value(pending, space, key) {
            Some(value) => Ok(value.map(T::from_bytes).transpose()?),
            None => decoded(self.keyspace(space).get(key)?),
        }
    }

    /// Whether `key` holds a value as `pending` leaves it (as
    /// [`StateStore::read`] reads it, without decoding it).
    pub(crate) fn contains(
        &self,
        pending: &[&Changes],
        space: Space,
        key: &[u8],
    ) -> Result<bool, StateError> {
        match pending_value(pending, space, key) {
            Some(value) => Ok(value.is_some()),
            None => Ok(self.keyspace(space).contains_key(key)?),
        }
    }

    /// The value under `key`, decoded, as of the last batch written
    /// whole: for readers beside apply. fjall shows a batch's writes to
    /// plain reads one at a time as they land, and to a snapshot all at
    /// once, so such a read never sees part of a commit, nor less than an
    /// earlier one saw.
    pub(crate) fn read_published<T: for<'a> Decode<'a>>(
        &self,
        space: Space,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        decoded(self.db.snapshot().get(self.keyspace(space), key)?)
    }

    /// Every attestation of `job`, read at one instant: each attester
    /// (in key order) with its results, one per shard encoder in shard
    /// order. Each distinct result is read once, however many attested it.
    pub(crate) fn job_attestations(
        &self,
        job: &Digest,
    ) -> Result<Vec<(PublicKey, Vec<EncoderResult>)>, StateError> {
        let instant = self.db.snapshot();
        let mut results: BTreeMap<Digest, EncoderResult> = BTreeMap::new();
        let mut attestations = Vec::new();
        for entry in instant.prefix(&self.attestations, job.0) {
            let (key, value) = entry.into_inner()?;
            let validator = key
                .get(32..)
                .and_then(|bytes| bytes.try_into().ok())
                .map(PublicKey::from_stored_bytes)
                .ok_or_else(|| {
                    StateError::inconsistent("attestation", "its key names no validator")
                })?;
            let ResultDigests(digests) = ResultDigests::from_bytes(&value)?;
            let mut attested = Vec::with_capacity(digests.len());
            for digest in digests {
                let result = match results.entry(digest) {
                    btree_map::Entry::Occupied(read) => read.into_mut(),
                    btree_map::Entry::Vacant(unread) => unread.insert(
                        decoded(instant.get(&self.results, result_key(job, &digest))?)?
                            .ok_or_else(|| {
                                StateError::inconsistent("attestation", "a result is missing")
                            })?,
                    ),
                };
                attested.push(result.clone());
            }
            attestations.push((validator, attested));
        }
        Ok(attestations)
    }

    /// Whether the state was written by a version that kept each
    /// attestation whole: it holds attestations but no results (each
    /// attestation since names at least one, as every shard has an
    /// encoder).
    pub(crate) fn keeps_attestations_whole(&self) -> Result<bool, StateError> {
        Ok(self.results.is_empty()? && !self.attestations.is_empty()?)
    }

    /// Rewrites, where it is, a state that keeps each attestation whole
    /// ([`StateStore::keeps_attestations_whole`]): each becomes its
    /// results' digests, and each distinct result is kept once under its
    /// job, as apply keeps them now. Returns `lattice`, the state's,
    /// updated by the rewrite, which is written with it at once, durably
    /// (held in memory until then: about the size of the attestations).
    /// Validators upgraded together, each stopped after the same commit,
    /// fold in the same entries, and their next roots agree.
    pub(crate) fn keep_results_once(&self, lattice: &Lattice) -> Result<Lattice, StateError> {
        let mut changes = Changes::default();
        for entry in self.attestations.iter() {
            let (key, value) = entry.into_inner()?;
            let job = key
                .get(..32)
                .and_then(|job| job.try_into().ok())
                .map(Digest)
                .ok_or_else(|| StateError::inconsistent("attestation", "its key names no job"))?;
            let Attestation(results) = Attestation::from_bytes(&value)?;
            let mut digests = Vec::with_capacity(results.len());
            for result in &results {
                let (digest, encoding) = result.encoded();
                changes.put_encoded(Space::Results, &result_key(&job, &digest), encoding);
                digests.push(digest);
            }
            changes.put(Space::Attestations, &key, &ResultDigests(digests));
        }
        let mut upgraded = lattice.clone();
        self.fold(&mut upgraded, &changes)?;
        let mut batch = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncAll));
        self.batch_changes(&mut batch, changes);
        batch.insert(&self.meta, LATTICE, upgraded.to_bytes());
        batch.commit()?;
        Ok(upgraded)
    }

    /// `lattice` updated by `changes`: each entry they replace or delete
    /// taken away, each they write added. For the only writer, apply (or
    /// an upgrade while the state opens), as it reads plainly.
    ///
    /// Hashing entries is most of a commit's work after its transactions
    /// (two 2 KiB hashes for each entry a commit rewrites), so runs of
    /// [`FOLD_CHUNK`] writes are folded on every core; the lattice is a
    /// sum, so the parts merge to the same lanes in any order.
    pub(crate) fn fold(&self, lattice: &mut Lattice, changes: &Changes) -> Result<(), StateError> {
        use rayon::prelude::*;
        let writes: Vec<_> = changes.iter().collect();
        let folded = writes
            .par_chunks(FOLD_CHUNK)
            .map(|part| {
                let mut folded = Lattice::default();
                for &(space, key, value) in part {
                    if let Some(old) = self.keyspace(space).get(key)? {
                        folded.remove(space as u8, key, &old);
                    }
                    if let Some(value) = value {
                        folded.add(space as u8, key, value);
                    }
                }
                Ok::<_, StateError>(folded)
            })
            .try_reduce(Lattice::default, |mut a, b| {
                a.merge(&b);
                Ok(a)
            })?;
        lattice.merge(&folded);
        Ok(())
    }

    /// The lattice of every entry the state holds, read at one instant.
    pub(crate) fn lattice_of_entries(&self) -> Result<Lattice, StateError> {
        let mut lattice = Lattice::default();
        for entry in self.entries_after(&self.db.snapshot(), None) {
            let (space, key, value) = entry?;
            lattice.add(space, &key, &value);
        }
        Ok(lattice)
    }

    /// The lattice of a state whose lattice record holds its lanes alone
    /// (as versions before roots folded in the state's size wrote it):
    /// computed again from the entries, checked against the recorded
    /// lanes, and recorded whole, durably. The next root folds in the size.
    pub(crate) fn upgrade_lattice(&self) -> Result<Lattice, StateError> {
        let recorded = self.meta.get(LATTICE)?.unwrap_or_default();
        let lattice = self.lattice_of_entries()?;
        let whole = lattice.to_bytes();
        if recorded.len() != 2 * crate::lattice::LANES || whole[..recorded.len()] != *recorded {
            return Err(StateError::inconsistent(
                "lattice",
                "neither of this version nor the lanes of the state's entries",
            ));
        }
        self.meta.insert(LATTICE, whole)?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(lattice)
    }

    /// The state pinned at one instant, with the records of the commit it
    /// is the state after: `None` before any commit. Old versions of what
    /// apply overwrites meanwhile are kept while the pin lives.
    pub(crate) fn pin(&self) -> Result<Option<Pinned>, StateError> {
        let instant = self.db.snapshot();
        let record = |key: &[u8]| instant.get(&self.meta, key);
        let (Some(applied), Some(step), Some(lattice)) =
            (record(APPLIED)?, record(STEP)?, record(LATTICE)?)
        else {
            return Ok(None);
        };
        Ok(Some(Pinned {
            applied: Applied::from_bytes(&applied)?,
            step: RootStep::from_bytes(&step)?,
            lattice: Lattice::from_bytes(&lattice)?,
            instant,
        }))
    }

    /// The entries of the state as `instant` sees it (records aside), by
    /// keyspace and key, from the first after `after` (a keyspace and
    /// key) on.
    pub(crate) fn entries_after(
        &self,
        instant: &fjall::Snapshot,
        after: Option<(u8, &[u8])>,
    ) -> impl Iterator<Item = Result<Entry, StateError>> + use<> {
        use std::ops::Bound;
        let mut iters = Vec::new();
        for space in Space::ALL {
            let keyspace = self.keyspace(space);
            match after {
                Some((first, _)) if (space as u8) < first => {}
                Some((first, key)) if space as u8 == first => iters.push((
                    space,
                    instant.range(keyspace, (Bound::Excluded(key.to_vec()), Bound::Unbounded)),
                )),
                _ => iters.push((space, instant.iter(keyspace))),
            }
        }
        iters.into_iter().flat_map(|(space, iter)| {
            iter.filter_map(move |entry| match entry.into_inner() {
                Ok((key, _)) if space == Space::Meta && is_record(&key) => None,
                Ok((key, value)) => Some(Ok((space as u8, key.to_vec(), value.to_vec()))),
                Err(e) => Some(Err(e.into())),
            })
        })
    }

    /// Writes `entries` (in keyspace and key order, as
    /// [`StateStore::entries_after`] gives them, none a record) into a
    /// state being restored, not yet durably:
    /// [`StateStore::restore_records`] ends the restore.
    pub(crate) fn restore_entries(&self, entries: &[Entry]) -> Result<(), StateError> {
        let mut batch = self.db.batch();
        for (space, key, value) in entries {
            let space = Space::ALL
                .get(usize::from(*space))
                .ok_or_else(|| StateError::inconsistent("snapshot", "an unknown keyspace"))?;
            batch.insert(self.keyspace(*space), key.as_slice(), value.as_slice());
        }
        batch.commit()?;
        Ok(())
    }

    /// Writes the records of a restored state, whose entries hash to
    /// `lattice`, and makes the whole state durable.
    pub(crate) fn restore_records(
        &self,
        applied: &Applied,
        step: &RootStep,
        lattice: &Lattice,
    ) -> Result<(), StateError> {
        let mut batch = self.db.batch();
        batch.insert(&self.meta, APPLIED, applied.to_bytes());
        batch.insert(&self.meta, LATTICE, lattice.to_bytes());
        batch.insert(&self.meta, STEP, step.to_bytes());
        batch.insert(&self.roots, step.index.to_be_bytes(), applied.root);
        batch.commit()?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    /// Writes `changes`, `receipts` (under `commit`), `applied`, the
    /// state's `lattice` after them and the `step` that made the root (none
    /// at genesis) at once, durably.
    pub(crate) fn write(
        &self,
        changes: Changes,
        commit: u64,
        receipts: &[Vec<u8>],
        applied: &Applied,
        lattice: &Lattice,
        step: Option<&RootStep>,
    ) -> Result<(), StateError> {
        let mut batch = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        self.batch_changes(&mut batch, changes);
        for (position, receipt) in receipts.iter().enumerate() {
            batch.insert(
                &self.receipts,
                receipt_key(commit, position),
                receipt.as_slice(),
            );
        }
        batch.insert(&self.roots, commit.to_be_bytes(), applied.root);
        batch.insert(&self.meta, APPLIED, applied.to_bytes());
        batch.insert(&self.meta, LATTICE, lattice.to_bytes());
        if let Some(step) = step {
            batch.insert(&self.meta, STEP, step.to_bytes());
        }
        batch.commit()?;
        Ok(())
    }

    /// Adds `changes` to `batch`.
    fn batch_changes(&self, batch: &mut fjall::OwnedWriteBatch, changes: Changes) {
        for (space, writes) in Space::ALL.into_iter().zip(changes.0) {
            for (key, value) in writes {
                match value {
                    Some(value) => batch.insert(self.keyspace(space), key, value),
                    None => batch.remove(self.keyspace(space), key),
                }
            }
        }
    }

    /// The state root after commit `index`, if it was applied.
    pub(crate) fn root_after(&self, index: u64) -> Result<Option<[u8; 32]>, StateError> {
        let Some(root) = self.db.snapshot().get(&self.roots, index.to_be_bytes())? else {
            return Ok(None);
        };
        root.as_ref()
            .try_into()
            .map(Some)
            .map_err(|_| StateError::inconsistent("root", "is not 32 bytes"))
    }

    /// The receipts of commit `index`, in transaction order.
    pub(crate) fn receipts(&self, index: u64) -> Result<Vec<Vec<u8>>, StateError> {
        self.db
            .snapshot()
            .prefix(&self.receipts, index.to_be_bytes())
            .map(|entry| Ok(entry.value()?.to_vec()))
            .collect()
    }

    /// The (key, value) pairs of a keyspace below `end`, decoded, in key
    /// order (as stored: without pending changes). For apply only (plain
    /// reads).
    pub(crate) fn below<T: for<'a> Decode<'a>>(
        &self,
        space: Space,
        end: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, StateError> {
        self.keyspace(space)
            .range(..end)
            .map(|entry| {
                let (key, value) = entry.into_inner()?;
                Ok((key.to_vec(), T::from_bytes(&value)?))
            })
            .collect()
    }

    /// Every (key, value) of a keyspace, decoded, in key order, as of one
    /// published batch.
    pub(crate) fn scan<T: for<'a> Decode<'a>>(
        &self,
        space: Space,
    ) -> Result<Vec<(Vec<u8>, T)>, StateError> {
        self.db
            .snapshot()
            .iter(self.keyspace(space))
            .map(|entry| {
                let (key, value) = entry.into_inner()?;
                Ok((key.to_vec(), T::from_bytes(&value)?))
            })
            .collect()
    }
}

fn decoded<T: for<'a> Decode<'a>>(bytes: Option<fjall::Slice>) -> Result<Option<T>, StateError> {
    Ok(bytes.map(|bytes| T::from_bytes(&bytes)).transpose()?)
}

fn receipt_key(commit: u64, position: usize) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&commit.to_be_bytes());
    key[8..].copy_from_slice(&(position as u32).to_be_bytes());
    key
}

/// A job id as a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobId(pub(crate) Digest);

impl Encode for JobId {
    fn encode(&self, w: &mut Writer) {
        w.array(&self.0.0);
    }
}

impl Decode<'_> for JobId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.array("job id").map(|id| JobId(Digest(id)))
    }
}

/// The key under which job `id`'s deadline (commit index) is kept: in
/// deadline order.
pub(crate) fn deadline_key(deadline: u64, id: &Digest) -> [u8; 40] {
    let mut key = [0; 40];
    key[..8].copy_from_slice(&deadline.to_be_bytes());
    key[8..].copy_from_slice(&id.0);
    key
}

/// What the last of `pending` to write `key` left under it (`Some(None)`
/// if it deleted it), if any did.
fn pending_value<'c>(
    pending: &[&'c Changes],
    space: Space,
    key: &[u8],
) -> Option<Option<&'c [u8]>> {
    pending
        .iter()
        .rev()
        .find_map(|changes| changes.get(space, key))
}

/// A key in the attestations keyspace.
pub(crate) fn attestation_key(job: &Digest, validator: &PublicKey) -> [u8; 64] {
    job_key(job, &validator.to_bytes())
}

/// A key in the results keyspace.
pub(crate) fn result_key(job: &Digest, digest: &Digest) -> [u8; 64] {
    job_key(job, &digest.0)
}

/// A key of something of job `job`: the job, then `item`.
fn job_key(job: &Digest, item: &[u8; 32]) -> [u8; 64] {
    let mut key = [0; 64];
    key[..32].copy_from_slice(&job.0);
    key[32..].copy_from_slice(item);
    key
}

/// A key in the encoders keyspace.
pub(crate) fn encoder_key(package: &Digest) -> [u8; 32] {
    package.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value written as its bytes.
    struct Raw(Vec<u8>);

    impl Encode for Raw {
        fn encode(&self, w: &mut Writer) {
            w.raw(&self.0);
        }
    }

    /// The digest is of every write's plain encoding, in key order, however
    /// large values are fed to the hasher.
    #[test]
    fn the_writes_digest_is_of_each_write_s_plain_encoding() {
        let mut changes = Changes::default();
        changes.put(Space::Jobs, &[1; 32], &Raw(vec![9; 5_000]));
        changes.put(Space::Accounts, b"b", &Raw(vec![7; 3]));
        changes.delete(Space::Accounts, b"a");
        changes.put(Space::Jobs, &[2; 32], &Raw(vec![]));
        // In key order, whatever the order they were written in.
        let in_order = [
            (Space::Accounts, &b"a"[..], None),
            (Space::Accounts, b"b", Some(vec![7; 3])),
            (Space::Jobs, &[1; 32], Some(vec![9; 5_000])),
            (Space::Jobs, &[2; 32], Some(vec![])),
        ];
        let mut plain = Writer::new();
        for (space, key, value) in in_order {
            plain.u8(space as u8);
            plain.bytes32(key);
            plain.bool(value.is_some());
            if let Some(value) = value {
                plain.bytes32(&value);
            }
        }
        let mut hasher = blake3::Hasher::new_derive_key("soma/state-writes/v1");
        hasher.update(&plain.into_bytes());
        assert_eq!(changes.digest(), *hasher.finalize().as_bytes());
    }

    /// Snapshots and the lattice name a keyspace by its number: the list
    /// and the numbers must agree, and the numbers never change.
    #[test]
    fn every_keyspace_is_listed_at_its_number() {
        for (i, space) in Space::ALL.iter().enumerate() {
            assert_eq!(*space as usize, i);
        }
        // Names every keyspace (a new one stops this compiling until it is
        // added here, and to the list) with the number states hold it by.
        let number = |space: Space| match space {
            Space::Accounts => 0,
            Space::Validators => 1,
            Space::Encoders => 2,
            Space::Jobs => 3,
            Space::Attestations => 4,
            Space::Deadlines => 5,
            Space::Retired => 6,
            Space::Meta => 7,
            Space::Results => 8,
        };
        assert_eq!(Space::ALL.len(), 9);
        for space in Space::ALL {
            assert_eq!(space as usize, number(space));
        }
    }
}
