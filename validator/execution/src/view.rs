//! The state as one transaction sees it: the store, the writes of the
//! commit's earlier transactions, and its own pending writes, which a
//! refusal discards whole.

use crate::job::{EncoderResult, Job, ResultDigests};
use crate::params::Parameters;
use crate::receipt::Rejection;
use crate::routing::{RouterError, selection_weight};
use crate::scoring::{ONE, median};
use crate::state::{
    Account, Amount, BURNED, Changes, ESCROW, Encoder, EncoderStatus, JobId, STAKED, Scores, Space,
    StateError, StateStore, TREASURY, Validator, attestation_key, deadline_key, encoder_key,
    result_key,
};
use soma_codec::{Decode, Encode};
use soma_crypto::PublicKey;
use soma_host::Digest;
use std::collections::BTreeMap;

/// Why a transaction stops: refused (its receipt says why), or this node
/// failed (the store, or running the router): apply stops.
pub(crate) enum Stop {
    Refused(Rejection),
    Store(StateError),
    Router(RouterError),
}

impl From<Rejection> for Stop {
    fn from(rejection: Rejection) -> Self {
        Stop::Refused(rejection)
    }
}

impl From<RouterError> for Stop {
    fn from(e: RouterError) -> Self {
        Stop::Router(e)
    }
}

impl From<StateError> for Stop {
    fn from(e: StateError) -> Self {
        Stop::Store(e)
    }
}

pub(crate) struct View<'a> {
    pub(crate) store: &'a StateStore,
    pub(crate) changes: &'a Changes,
    pub(crate) pending: &'a mut Changes,
}

impl View<'_> {
    fn get<T: for<'b> Decode<'b>>(
        &self,
        space: Space,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        self.store.read(&[self.changes, &*self.pending], space, key)
    }

    fn put(&mut self, space: Space, key: &[u8], value: &impl Encode) {
        self.pending.put(space, key, value);
    }

    /// Every entry of `space`, with this transaction's view of pending
    /// writes, in key order.
    fn scan<T: for<'b> Decode<'b>>(
        &self,
        space: Space,
    ) -> Result<BTreeMap<Vec<u8>, T>, StateError> {
        let mut entries: BTreeMap<Vec<u8>, T> = self.store.scan(space)?.into_iter().collect();
        for changes in [self.changes, &*self.pending] {
            for (key, value) in changes.entries(space) {
                match value {
                    Some(bytes) => entries.insert(
                        key.to_vec(),
                        T::from_bytes(bytes).map_err(StateError::from)?,
                    ),
                    None => entries.remove(key),
                };
            }
        }
        Ok(entries)
    }

    pub(crate) fn account(&self, key: &PublicKey) -> Result<Account, StateError> {
        Ok(self
            .get(Space::Accounts, &key.to_bytes())?
            .unwrap_or_default())
    }

    pub(crate) fn put_account(&mut self, key: &PublicKey, account: Account) {
        self.put(Space::Accounts, &key.to_bytes(), &account);
    }

    /// Adds `amount` to the balance of `key`.
    pub(crate) fn credit(&mut self, key: &PublicKey, amount: u64) -> Result<(), Stop> {
        let mut account = self.account(key)?;
        account.balance = account
            .balance
            .checked_add(amount)
            .ok_or(Rejection::Overflow)?;
        self.put_account(key, account);
        Ok(())
    }

    pub(crate) fn validator(&self, key: &PublicKey) -> Result<Option<Validator>, StateError> {
        self.get(Space::Validators, &key.to_bytes())
    }

    /// Writes `validator` under `key`, and the total stake with its change.
    pub(crate) fn put_validator(
        &mut self,
        key: &PublicKey,
        validator: Validator,
    ) -> Result<(), StateError> {
        let before = self.validator(key)?.map_or(0, |v| v.stake);
        let kept = self.get::<Amount>(Space::Meta, STAKED)?;
        if before != validator.stake || kept.is_none() {
            let total = match kept {
                Some(Amount(total)) => total,
                None => self.total_stake()?,
            };
            let total = total
                .checked_sub(before)
                .and_then(|rest| rest.checked_add(validator.stake))
                .ok_or_else(|| {
                    StateError::inconsistent("staked", "the total stake would leave the supply")
                })?;
            self.put(Space::Meta, STAKED, &Amount(total));
        }
        self.put(Space::Validators, &key.to_bytes(), &validator);
        Ok(())
    }

    /// The stake of every validator: the total kept beside them, or their
    /// sum in a state written before it was kept.
    pub(crate) fn total_stake(&self) -> Result<u64, StateError> {
        if let Some(Amount(total)) = self.get(Space::Meta, STAKED)? {
            return Ok(total);
        }
        let sum: u128 = self
            .scan::<Validator>(Space::Validators)?
            .values()
            .map(|v| u128::from(v.stake))
            .sum();
        u64::try_from(sum)
            .map_err(|_| StateError::inconsistent("validators", "their stakes exceed the supply"))
    }

    pub(crate) fn encoder(&self, package: &Digest) -> Result<Option<Encoder>, StateError> {
        self.get(Space::Encoders, &encoder_key(package))
    }

    pub(crate) fn put_encoder(&mut self, package: &Digest, encoder: Encoder) {
        self.put(Space::Encoders, &encoder_key(package), &encoder);
    }

    /// The routing scores `package` left when it was deregistered.
    pub(crate) fn retired_scores(&self, package: &Digest) -> Result<Option<Vec<u32>>, StateError> {
        Ok(self
            .get::<Scores>(Space::Retired, &encoder_key(package))?
            .map(|s| s.0))
    }

    pub(crate) fn put_retired_scores(&mut self, package: &Digest, scores: &[u32]) {
        self.put(
            Space::Retired,
            &encoder_key(package),
            &Scores(scores.to_vec()),
        );
    }

    pub(crate) fn delete_encoder(&mut self, package: &Digest) {
        self.pending.delete(Space::Encoders, &encoder_key(package));
    }

    /// Every active encoder with its weight in shard selection for
    /// `region` (its bond scaled by its score there, never below the
    /// routing floor; just its bond for data the router could not place),
    /// in digest order.
    pub(crate) fn shard_candidates(
        &self,
        region: Option<u16>,
        parameters: &Parameters,
    ) -> Result<Vec<(Digest, u64)>, StateError> {
        self.scan::<Encoder>(Space::Encoders)?
            .into_iter()
            .filter(|(_, e)| e.status(parameters) == EncoderStatus::Active)
            .map(|(key, e)| {
                let package = key
                    .try_into()
                    .map_err(|_| StateError::inconsistent("encoder", "a key is not a digest"))?;
                let weight = match region {
                    None => e.bond,
                    Some(region) => {
                        let score = *e.performance.get(usize::from(region)).ok_or_else(|| {
                            StateError::inconsistent("encoder", "it has no score for a region")
                        })?;
                        selection_weight(e.bond, score, parameters.routing_floor)
                    }
                };
                Ok((Digest(package), weight))
            })
            .collect()
    }

    /// Per region, the median score of the active encoders (1.0 where
    /// there are none): where a newly registered encoder starts. Those not
    /// drawn any more keep scores that no longer move.
    pub(crate) fn median_performance(
        &self,
        regions: usize,
        parameters: &Parameters,
    ) -> Result<Vec<u32>, StateError> {
        let encoders = self.scan::<Encoder>(Space::Encoders)?;
        Ok((0..regions)
            .map(|r| {
                let mut scores: Vec<i64> = encoders
                    .values()
                    .filter(|e| e.status(parameters) == EncoderStatus::Active)
                    .filter_map(|e| e.performance.get(r).map(|&s| i64::from(s)))
                    .collect();
                match scores.is_empty() {
                    true => ONE as u32,
                    false => median(&mut scores) as u32,
                }
            })
            .collect())
    }

    pub(crate) fn job(&self, id: &Digest) -> Result<Option<Job>, StateError> {
        self.get(Space::Jobs, &id.0)
    }

    pub(crate) fn put_job(&mut self, id: &Digest, job: &Job) {
        self.put(Space::Jobs, &id.0, job);
    }

    pub(crate) fn put_deadline(&mut self, deadline: u64, id: &Digest) {
        self.put(Space::Deadlines, &deadline_key(deadline, id), &JobId(*id));
    }

    pub(crate) fn delete_deadline(&mut self, deadline: u64, id: &Digest) {
        self.pending
            .delete(Space::Deadlines, &deadline_key(deadline, id));
    }

    /// What `validator` attested for `job`: its results' digests.
    pub(crate) fn attestation(
        &self,
        job: &Digest,
        validator: &PublicKey,
    ) -> Result<Option<ResultDigests>, StateError> {
        self.get(Space::Attestations, &attestation_key(job, validator))
    }

    /// The result of `job` with digest `digest`, if one was attested.
    pub(crate) fn result(
        &self,
        job: &Digest,
        digest: &Digest,
    ) -> Result<Option<EncoderResult>, StateError> {
        self.get(Space::Results, &result_key(job, digest))
    }

    /// Records `validator`'s attestation for `job` of the results
    /// `encoded` ([`EncoderResult::encoded`]): their digests, and each
    /// result the job does not hold yet. Returns the digests.
    pub(crate) fn put_attestation(
        &mut self,
        job: &Digest,
        validator: &PublicKey,
        encoded: &[(Digest, Vec<u8>)],
    ) -> Result<ResultDigests, StateError> {
        let mut digests = Vec::with_capacity(encoded.len());
        for (digest, encoding) in encoded {
            let key = result_key(job, digest);
            let pending = [self.changes, &*self.pending];
            if !self.store.contains(&pending, Space::Results, &key)? {
                self.pending
                    .put_encoded(Space::Results, &key, encoding.clone());
            }
            digests.push(*digest);
        }
        let digests = ResultDigests(digests);
        self.put(
            Space::Attestations,
            &attestation_key(job, validator),
            &digests,
        );
        Ok(digests)
    }

    /// A running total kept under `key` in the meta keyspace.
    fn amount(&self, key: &[u8]) -> Result<u64, StateError> {
        Ok(self.get::<Amount>(Space::Meta, key)?.unwrap_or_default().0)
    }

    /// Adds `delta` to the total under `key`, refusing an overflow.
    fn add_amount(&mut self, key: &[u8], delta: u64) -> Result<(), Stop> {
        let total = self
            .amount(key)?
            .checked_add(delta)
            .ok_or(Rejection::Overflow)?;
        self.put(Space::Meta, key, &Amount(total));
        Ok(())
    }

    /// Takes `delta` from the total under `key`; it was added before, so
    /// it cannot underflow in a consistent state.
    fn sub_amount(&mut self, key: &[u8], delta: u64) -> Result<(), Stop> {
        let total = self.amount(key)?.checked_sub(delta);
        let total = total
            .ok_or_else(|| StateError::inconsistent("totals", "a total would fall below zero"))?;
        self.put(Space::Meta, key, &Amount(total));
        Ok(())
    }

    pub(crate) fn pay_treasury(&mut self, amount: u64) -> Result<(), Stop> {
        self.add_amount(TREASURY, amount)
    }

    pub(crate) fn burn(&mut self, amount: u64) -> Result<(), Stop> {
        self.add_amount(BURNED, amount)
    }

    pub(crate) fn hold_in_escrow(&mut self, amount: u64) -> Result<(), Stop> {
        self.add_amount(ESCROW, amount)
    }

    pub(crate) fn release_escrow(&mut self, amount: u64) -> Result<(), Stop> {
        self.sub_amount(ESCROW, amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use soma_crypto::SecretKey;

    fn validator(stake: u64, pending: u32) -> Validator {
        Validator {
            stake,
            deviant: 0,
            pending,
        }
    }

    #[test]
    fn the_total_stake_follows_every_change_and_is_counted_where_none_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let [a, b] = [1u8, 2].map(|i| SecretKey::from_bytes(&[i; 32]).public_key());
        // Validators as a state written before the total was kept has them.
        let mut earlier = Changes::default();
        earlier.put(Space::Validators, &a.to_bytes(), &validator(5, 0));
        earlier.put(Space::Validators, &b.to_bytes(), &validator(7, 0));
        let mut pending = Changes::default();
        let mut view = View {
            store: &store,
            changes: &earlier,
            pending: &mut pending,
        };
        assert_eq!(view.total_stake().unwrap(), 12);
        let kept = |view: &View<'_>| view.get::<Amount>(Space::Meta, STAKED).unwrap();
        assert_eq!(kept(&view), None);

        // A change of something else than the stake starts keeping it.
        view.put_validator(&b, validator(7, 1)).unwrap();
        assert_eq!(kept(&view), Some(Amount(12)));
        view.put_validator(&a, validator(9, 0)).unwrap();
        assert_eq!(view.total_stake().unwrap(), 16);
        view.put_validator(&b, validator(0, 1)).unwrap();
        assert_eq!(view.total_stake().unwrap(), 9);
        // A new validator adds its stake.
        let c = SecretKey::from_bytes(&[3; 32]).public_key();
        view.put_validator(&c, validator(4, 0)).unwrap();
        assert_eq!(view.total_stake().unwrap(), 13);
        assert_eq!(kept(&view), Some(Amount(13)));
        // With a total kept, a change of something else writes none.
        let mut written = Changes::default();
        written.put(Space::Validators, &a.to_bytes(), &validator(9, 0));
        written.put(Space::Meta, STAKED, &Amount(9));
        let mut pending = Changes::default();
        let mut view = View {
            store: &store,
            changes: &written,
            pending: &mut pending,
        };
        view.put_validator(&a, validator(9, 3)).unwrap();
        assert_eq!(view.pending.entries(Space::Meta).count(), 0);
    }

    #[test]
    fn a_result_attested_alike_by_many_is_kept_once_and_read_back_by_each() {
        use crate::job::Outcome;
        use crate::lattice::Lattice;
        use crate::state::Applied;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let [a, b, c] = [1u8, 2, 3].map(|i| SecretKey::from_bytes(&[i; 32]).public_key());
        let job = Digest([7; 32]);
        let ok = |x: i32| EncoderResult {
            outcome: Outcome::Ok,
            fuel: 10,
            loss: 5,
            embedding: vec![x; 4],
        };
        let trapped = EncoderResult {
            outcome: Outcome::Trap,
            fuel: 3,
            loss: 0,
            embedding: vec![],
        };
        let kept = |changes: &Changes| changes.entries(Space::Results).count();
        let nothing = Changes::default();
        let attest = |changes: &Changes, pending: &mut Changes, v, results: &[EncoderResult]| {
            let mut view = View {
                store: &store,
                changes,
                pending,
            };
            let encoded: Vec<_> = results.iter().map(EncoderResult::encoded).collect();
            view.put_attestation(&job, v, &encoded).unwrap();
        };

        // The first attestation keeps its results; its commit is stored.
        let mut first = Changes::default();
        attest(&nothing, &mut first, &a, &[ok(1), trapped.clone()]);
        assert_eq!(kept(&first), 2);
        let applied = Applied {
            next_index: 1,
            root: [0; 32],
        };
        store
            .write(first, 0, &[], &applied, &Lattice::default(), None)
            .unwrap();
        // Later ones keep only the results the job does not hold yet:
        // stored, written by an earlier transaction of the commit, or by
        // their own.
        let mut earlier = Changes::default();
        attest(&nothing, &mut earlier, &b, &[ok(1), ok(2)]);
        assert_eq!(kept(&earlier), 1);
        let mut pending = Changes::default();
        let c_results = [ok(2), trapped.clone(), ok(3), ok(3)];
        attest(&earlier, &mut pending, &c, &c_results);
        assert_eq!(kept(&pending), 1);

        // Each attestation reads back whole, as it was attested.
        let view = View {
            store: &store,
            changes: &earlier,
            pending: &mut pending,
        };
        for (v, results) in [
            (a, &[ok(1), trapped][..]),
            (b, &[ok(1), ok(2)]),
            (c, &c_results),
        ] {
            let digests = view.attestation(&job, &v).unwrap().unwrap();
            let read: Vec<EncoderResult> = (digests.0.iter())
                .map(|digest| view.result(&job, digest).unwrap().unwrap())
                .collect();
            assert_eq!(read, results);
        }
        // Another job holds none of them.
        let digests = view.attestation(&job, &a).unwrap().unwrap();
        assert_eq!(view.result(&Digest([8; 32]), &digests.0[0]).unwrap(), None);
    }

    #[test]
    fn a_kept_total_below_a_validators_stake_is_a_corrupt_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let a = SecretKey::from_bytes(&[1; 32]).public_key();
        let mut corrupt = Changes::default();
        corrupt.put(Space::Validators, &a.to_bytes(), &validator(5, 0));
        corrupt.put(Space::Meta, STAKED, &Amount(3));
        let mut pending = Changes::default();
        let mut view = View {
            store: &store,
            changes: &corrupt,
            pending: &mut pending,
        };
        let refused = view.put_validator(&a, validator(0, 0));
        assert!(
            matches!(refused, Err(StateError::Corrupt(_))),
            "{refused:?}"
        );
        assert_eq!(view.validator(&a).unwrap(), Some(validator(5, 0)));
    }
}
