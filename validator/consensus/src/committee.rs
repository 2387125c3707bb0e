//! The validator set of an epoch and quorum counting by stake.

use soma_crypto::PublicKey;
use std::collections::BTreeSet;

/// Voting power.
pub type Stake = u64;

/// A validator's position in the [`Committee`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthorityIndex(pub u32);

/// Why a committee could not be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitteeError {
    /// No validators.
    #[error("a committee needs at least one validator")]
    Empty,
    /// A validator without stake.
    #[error("validator {0} has no stake")]
    ZeroStake(u32),
    /// Total stake does not fit a u64.
    #[error("total stake overflows")]
    Overflow,
    /// Two validators share a key.
    #[error("validators {0} and {1} have the same key")]
    DuplicateKey(u32, u32),
}

/// The validators, their stakes and keys.
///
/// With total stake `n` and at most `f = (n - 1) / 3` stake Byzantine, a
/// quorum is `n - f` (at least 2f + 1) and a validity threshold `f + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committee {
    authorities: Vec<(PublicKey, Stake)>,
    total: Stake,
}

impl Committee {
    /// A committee of these (key, stake) pairs, indexed in order.
    pub fn new(authorities: Vec<(PublicKey, Stake)>) -> Result<Committee, CommitteeError> {
        if authorities.is_empty() {
            return Err(CommitteeError::Empty);
        }
        let mut total: Stake = 0;
        for (i, (key, stake)) in authorities.iter().enumerate() {
            if *stake == 0 {
                return Err(CommitteeError::ZeroStake(i as u32));
            }
            if let Some(j) = authorities[..i].iter().position(|(k, _)| k == key) {
                return Err(CommitteeError::DuplicateKey(j as u32, i as u32));
            }
            total = total.checked_add(*stake).ok_or(CommitteeError::Overflow)?;
        }
        Ok(Committee { authorities, total })
    }

    /// Number of validators.
    pub fn size(&self) -> usize {
        self.authorities.len()
    }

    /// Every validator's index, in order.
    pub fn authorities(&self) -> impl Iterator<Item = AuthorityIndex> + '_ {
        (0..self.authorities.len() as u32).map(AuthorityIndex)
    }

    /// The key of `authority`, if it is a member.
    pub fn key(&self, authority: AuthorityIndex) -> Option<&PublicKey> {
        self.authorities.get(authority.0 as usize).map(|(k, _)| k)
    }

    /// The stake of `authority` (0 for a non-member).
    pub fn stake(&self, authority: AuthorityIndex) -> Stake {
        self.authorities
            .get(authority.0 as usize)
            .map_or(0, |(_, s)| *s)
    }

    /// Total stake.
    pub fn total_stake(&self) -> Stake {
        self.total
    }

    /// Stake that makes a quorum: `n - f`, at least 2f + 1.
    pub fn quorum_threshold(&self) -> Stake {
        self.total - (self.total - 1) / 3
    }

    /// Stake that includes at least one honest validator: f + 1.
    pub fn validity_threshold(&self) -> Stake {
        (self.total - 1) / 3 + 1
    }
}

/// Adds up the stake of distinct authorities, counting each once.
#[derive(Debug, Default, Clone)]
pub struct StakeAggregator {
    seen: BTreeSet<AuthorityIndex>,
    stake: Stake,
}

impl StakeAggregator {
    /// An empty tally.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `authority`; returns whether it was new.
    pub fn add(&mut self, authority: AuthorityIndex, committee: &Committee) -> bool {
        let new = self.seen.insert(authority);
        if new {
            self.stake += committee.stake(authority);
        }
        new
    }

    /// Stake counted so far.
    pub fn stake(&self) -> Stake {
        self.stake
    }

    /// Whether the tally has reached a quorum.
    pub fn reached_quorum(&self, committee: &Committee) -> bool {
        self.stake >= committee.quorum_threshold()
    }

    /// Whether the tally has reached the validity threshold.
    pub fn reached_validity(&self, committee: &Committee) -> bool {
        self.stake >= committee.validity_threshold()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use soma_crypto::SecretKey;

    /// A committee of `stakes.len()` validators with keys from seeds 1, 2, ...
    pub(crate) fn committee(stakes: &[Stake]) -> (Committee, Vec<SecretKey>) {
        let keys: Vec<SecretKey> = (0..stakes.len())
            .map(|i| SecretKey::from_bytes(&[i as u8 + 1; 32]))
            .collect();
        let members = keys
            .iter()
            .zip(stakes)
            .map(|(k, s)| (k.public_key(), *s))
            .collect();
        (Committee::new(members).unwrap(), keys)
    }

    #[test]
    fn thresholds_follow_byzantine_bounds() {
        for (n, quorum, validity) in [(1, 1, 1), (3, 3, 1), (4, 3, 2), (7, 5, 3), (10, 7, 4)] {
            let (c, _) = committee(&vec![1; n]);
            assert_eq!(
                (c.quorum_threshold(), c.validity_threshold()),
                (quorum, validity),
                "n = {n}"
            );
            // Two quorums always intersect in more than f: in an honest validator.
            assert!(2 * c.quorum_threshold() > c.total_stake() + (c.total_stake() - 1) / 3);
        }
    }

    #[test]
    fn stake_is_counted_once_per_authority() {
        let (c, _) = committee(&[5, 1, 1, 1]);
        let mut tally = StakeAggregator::new();
        assert!(tally.add(AuthorityIndex(0), &c));
        assert!(!tally.add(AuthorityIndex(0), &c));
        assert_eq!(tally.stake(), 5);
        assert!(!tally.reached_quorum(&c), "quorum of total 8 is 6");
        tally.add(AuthorityIndex(1), &c);
        assert!(tally.reached_quorum(&c));
        assert_eq!(c.stake(AuthorityIndex(9)), 0);
    }

    #[test]
    fn malformed_committees_are_refused() {
        assert_eq!(Committee::new(vec![]), Err(CommitteeError::Empty));
        let k = SecretKey::from_bytes(&[1; 32]).public_key();
        assert_eq!(
            Committee::new(vec![(k, 0)]),
            Err(CommitteeError::ZeroStake(0))
        );
        assert_eq!(
            Committee::new(vec![(k, 1), (k, 1)]),
            Err(CommitteeError::DuplicateKey(0, 1))
        );
        let k2 = SecretKey::from_bytes(&[2; 32]).public_key();
        assert_eq!(
            Committee::new(vec![(k, u64::MAX), (k2, 1)]),
            Err(CommitteeError::Overflow)
        );
    }
}
