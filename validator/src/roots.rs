//! Divergence detection. Every block carries its author's state root after
//! some number of applied commits; a node compares those claims with its
//! own roots. A validator whose root differs is counted as deviant; if
//! validators of a quorum of stake agree on another root than this node's
//! for the same commit, this node is the one that diverged, and it stops
//! with an error naming the commit instead of going on silently.

use soma_consensus::{AuthorityIndex, Committee, StakeAggregator, StateRoot};
use std::collections::{BTreeMap, BTreeSet};

/// What a validator signs ([`soma_crypto::Domain::StateRoot`]) to vouch
/// that the state root of chain `chain_id` after `commits` commits is
/// `root`.
pub(crate) fn claim_message(chain_id: &[u8; 32], commits: u64, root: &[u8; 32]) -> Vec<u8> {
    [&chain_id[..], &commits.to_le_bytes(), &root[..]].concat()
}

/// Commits of roots and claims kept, behind and ahead of this node's.
pub(crate) const WINDOW: u64 = 1_000;

/// This node's state differs from what a quorum of stake executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node diverged: after commit {last} its state root is {mine}, but validators of a \
     quorum of stake have {theirs}; stop it and restore its state from a healthy validator",
    last = .commits - 1,
    mine = hex::encode(.mine),
    theirs = hex::encode(.theirs)
)]
pub(crate) struct Divergence {
    /// Commits applied when the roots were taken.
    pub(crate) commits: u64,
    /// This node's root.
    pub(crate) mine: [u8; 32],
    /// The quorum's root.
    pub(crate) theirs: [u8; 32],
}

/// What [`RootWatch::observe`] compared.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Judged {
    /// Claims newly compared with this node's roots.
    pub(crate) compared: usize,
    /// Of those, the ones that differ.
    pub(crate) deviant: usize,
}

/// Claims: by commit count, root, and who claimed it.
type Claims = BTreeMap<u64, BTreeMap<[u8; 32], BTreeSet<AuthorityIndex>>>;

/// This node's recent roots and the roots its peers' blocks claimed.
pub(crate) struct RootWatch {
    committee: Committee,
    mine: BTreeMap<u64, [u8; 32]>,
    claims: Claims,
}

impl RootWatch {
    pub(crate) fn new(committee: Committee) -> RootWatch {
        RootWatch {
            committee,
            mine: BTreeMap::new(),
            claims: BTreeMap::new(),
        }
    }

    /// Records this node's `root` after `commits` commits and the `claims`
    /// carried by the blocks of the commit just applied: how many claims
    /// were newly compared with this node's roots, and how many of those
    /// disagree.
    pub(crate) fn observe(
        &mut self,
        commits: u64,
        root: [u8; 32],
        claims: impl IntoIterator<Item = (AuthorityIndex, StateRoot)>,
    ) -> Result<Judged, Divergence> {
        let floor = commits.saturating_sub(WINDOW);
        self.mine.insert(commits, root);
        self.mine = self.mine.split_off(&floor);
        self.claims = self.claims.split_off(&floor);
        let mut judged = Judged::default();
        // Claims made before this node got here are judged now.
        for (claimed, authors) in self.claims.get(&commits).into_iter().flatten() {
            judged.compared += authors.len();
            if *claimed != root {
                judged.deviant += authors.len();
            }
        }
        let mut touched = BTreeSet::from([commits]);
        for (author, claim) in claims {
            if claim.commits == 0 || claim.commits < floor || claim.commits > commits + WINDOW {
                continue;
            }
            let new = self
                .claims
                .entry(claim.commits)
                .or_default()
                .entry(claim.root)
                .or_default()
                .insert(author);
            if let Some(mine) = self.mine.get(&claim.commits).filter(|_| new) {
                judged.compared += 1;
                if *mine != claim.root {
                    judged.deviant += 1;
                    touched.insert(claim.commits);
                }
            }
        }
        for commits in touched {
            self.check(commits)?;
        }
        Ok(judged)
    }

    /// Whether a quorum of stake claims another root than this node's
    /// after `commits` commits.
    fn check(&self, commits: u64) -> Result<(), Divergence> {
        let (Some(roots), Some(mine)) = (self.claims.get(&commits), self.mine.get(&commits)) else {
            return Ok(());
        };
        for (theirs, authors) in roots.iter().filter(|(r, _)| *r != mine) {
            let mut stake = StakeAggregator::new();
            for author in authors {
                stake.add(*author, &self.committee);
            }
            if stake.reached_quorum(&self.committee) {
                return Err(Divergence {
                    commits,
                    mine: *mine,
                    theirs: *theirs,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use soma_consensus::Protocol;
    use soma_crypto::SecretKey;

    fn committee() -> Committee {
        let members = (1..=4)
            .map(|i| (SecretKey::from_bytes(&[i; 32]).public_key(), 1))
            .collect();
        Committee::new(members, Protocol::new([1; 32])).unwrap()
    }

    fn claim(author: u32, commits: u64, root: u8) -> (AuthorityIndex, StateRoot) {
        (
            AuthorityIndex(author),
            StateRoot {
                commits,
                root: [root; 32],
            },
        )
    }

    #[test]
    fn agreeing_roots_pass_and_a_deviant_minority_is_counted() {
        let mut watch = RootWatch::new(committee());
        let judged = |compared, deviant| Ok(Judged { compared, deviant });
        // Claims for a commit this node has not reached wait for it.
        let early = [claim(0, 2, 2), claim(1, 2, 9)];
        assert_eq!(watch.observe(1, [1; 32], early), judged(0, 0));
        // Judged once it gets there: 1 claimed 9.
        assert_eq!(watch.observe(2, [2; 32], [claim(2, 2, 2)]), judged(3, 1));
        // Once each: the same claim again is not counted again.
        let again = [claim(1, 2, 9), claim(3, 2, 8)];
        assert_eq!(watch.observe(3, [3; 32], again), judged(1, 1));
        // Claims of no commit, or outside the window, are ignored.
        let ignored = [claim(0, 0, 7), claim(1, 5000, 7)];
        assert_eq!(watch.observe(4, [4; 32], ignored), judged(0, 0));
    }

    #[test]
    fn a_quorum_on_another_root_means_this_node_diverged() {
        let mut watch = RootWatch::new(committee());
        watch.observe(1, [1; 32], []).unwrap();
        let deviant = Judged {
            compared: 2,
            deviant: 2,
        };
        let two = [claim(0, 1, 5), claim(1, 1, 5)];
        assert_eq!(watch.observe(2, [2; 32], two), Ok(deviant));
        let stopped = watch.observe(3, [3; 32], [claim(2, 1, 5)]).unwrap_err();
        assert_eq!(
            stopped,
            Divergence {
                commits: 1,
                mine: [1; 32],
                theirs: [5; 32]
            }
        );
        assert!(stopped.to_string().contains("after commit 0"), "{stopped}");
    }
}
