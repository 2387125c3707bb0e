//! The validator set of an epoch, the protocol constants it runs, and
//! quorum counting by stake.

use crate::block::Round;
use crate::committer::WAVE_LENGTH;
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
    /// The garbage-collection depth is too small for the commit rule.
    #[error("gc_depth {0} is below the minimum of {MIN_GC_DEPTH}")]
    GcDepth(Round),
}

/// The smallest [`Protocol::gc_depth`]: a leader's wave must fit.
pub const MIN_GC_DEPTH: Round = WAVE_LENGTH;

/// What every validator of a chain shares besides the validator set: what
/// signatures are bound to, and the constants that decide what each commit
/// contains. A node that used values of its own would sign for another
/// chain or commit other sub-DAGs than its peers, so these come from
/// genesis, never from a node's own settings, and peers check at the
/// handshake that they agree (see [`Committee::digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// The digest of the chain's genesis: signed into every block and peer
    /// token, so nothing replays across networks.
    pub chain_id: [u8; 32],
    /// The epoch this committee serves: signed likewise, so nothing
    /// replays across epochs.
    pub epoch: u64,
    /// How many rounds below the last committed leader blocks are kept in
    /// the DAG. It decides what a commit may still include, and it is the
    /// oldest a block's parent may be: a parent more than `gc_depth`
    /// rounds below its child makes the child invalid for everyone.
    pub gc_depth: Round,
}

impl Protocol {
    /// The garbage-collection depth of a chain unless its genesis says
    /// otherwise.
    pub const DEFAULT_GC_DEPTH: Round = 100;

    /// A chain `chain_id` at epoch 0 with the default constants.
    pub fn new(chain_id: [u8; 32]) -> Protocol {
        Protocol {
            chain_id,
            epoch: 0,
            gc_depth: Protocol::DEFAULT_GC_DEPTH,
        }
    }
}

/// The validators, their stakes and keys.
///
/// With total stake `n` and at most `f = (n - 1) / 3` stake Byzantine, a
/// quorum is `n - f` (at least 2f + 1) and a validity threshold `f + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committee {
    authorities: Vec<(PublicKey, Stake)>,
    total: Stake,
    protocol: Protocol,
    digest: [u8; 32],
}

impl Committee {
    /// A committee of these (key, stake) pairs, indexed in order, running
    /// `protocol`.
    pub fn new(
        authorities: Vec<(PublicKey, Stake)>,
        protocol: Protocol,
    ) -> Result<Committee, CommitteeError> {
        if authorities.is_empty() {
            return Err(CommitteeError::Empty);
        }
        if protocol.gc_depth < MIN_GC_DEPTH {
            return Err(CommitteeError::GcDepth(protocol.gc_depth));
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
        let mut hasher = blake3::Hasher::new_derive_key("soma/committee/v1");
        hasher.update(&protocol.chain_id);
        hasher.update(&protocol.epoch.to_le_bytes());
        hasher.update(&protocol.gc_depth.to_le_bytes());
        for (key, stake) in &authorities {
            hasher.update(&key.to_bytes());
            hasher.update(&stake.to_le_bytes());
        }
        let digest = *hasher.finalize().as_bytes();
        Ok(Committee {
            authorities,
            total,
            protocol,
            digest,
        })
    }

    /// The protocol constants the committee runs.
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }

    /// Commits to everything validators must agree on: the chain, the
    /// epoch, the protocol constants and every member's key and stake. Two
    /// validators with different digests cannot run together; peers
    /// compare it when they connect, and a store remembers the one it was
    /// written under.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
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
        (Committee::new(members, protocol()).unwrap(), keys)
    }

    /// The protocol of the test chain.
    pub(crate) fn protocol() -> Protocol {
        Protocol::new([0xc4; 32])
    }

    /// The test committee of `stakes` with another garbage-collection depth.
    pub(crate) fn with_gc_depth(c: &Committee, gc_depth: Round) -> Committee {
        let members = c.authorities.clone();
        Committee::new(
            members,
            Protocol {
                gc_depth,
                ..*c.protocol()
            },
        )
        .unwrap()
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
        let p = protocol();
        assert_eq!(Committee::new(vec![], p), Err(CommitteeError::Empty));
        let k = SecretKey::from_bytes(&[1; 32]).public_key();
        assert_eq!(
            Committee::new(vec![(k, 0)], p),
            Err(CommitteeError::ZeroStake(0))
        );
        assert_eq!(
            Committee::new(vec![(k, 1), (k, 1)], p),
            Err(CommitteeError::DuplicateKey(0, 1))
        );
        let k2 = SecretKey::from_bytes(&[2; 32]).public_key();
        assert_eq!(
            Committee::new(vec![(k, u64::MAX), (k2, 1)], p),
            Err(CommitteeError::Overflow)
        );
        let shallow = Protocol { gc_depth: 2, ..p };
        assert_eq!(
            Committee::new(vec![(k, 1)], shallow),
            Err(CommitteeError::GcDepth(2))
        );
    }

    #[test]
    fn the_digest_covers_chain_epoch_constants_and_members() {
        let (c, _) = committee(&[1, 1, 1, 1]);
        let members = c.authorities.clone();
        let p = *c.protocol();
        let variants = [
            Protocol {
                chain_id: [1; 32],
                ..p
            },
            Protocol { epoch: 1, ..p },
            Protocol {
                gc_depth: p.gc_depth + 1,
                ..p
            },
        ];
        for other in variants {
            let d = Committee::new(members.clone(), other).unwrap().digest();
            assert_ne!(d, c.digest(), "{other:?}");
        }
        let mut restaked = members.clone();
        restaked[0].1 = 2;
        assert_ne!(Committee::new(restaked, p).unwrap().digest(), c.digest());
        assert_eq!(Committee::new(members, p).unwrap().digest(), c.digest());
    }
}
