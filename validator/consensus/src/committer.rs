//! The Mysticeti commit rule: which leaders are committed, which skipped.
//!
//! A leader of round r is voted for by round r+1 blocks that support it, and
//! certified by a round r+2 block whose parents include a quorum of votes.
//! The leader is *directly committed* when a quorum of round r+2 blocks
//! certify it, *directly skipped* when a quorum of round r+1 blocks do not
//! vote for it, and otherwise decided *indirectly* by the next committed
//! leader at least three rounds later (its anchor): committed if the anchor's
//! causal history holds a certificate for it, skipped if not.

use crate::block::{BlockRef, Round};
use crate::committee::{AuthorityIndex, Committee, StakeAggregator};
use crate::dag_state::DagState;
use std::collections::BTreeMap;

/// Rounds from a leader to the round whose blocks can certify it, plus one:
/// the earliest anchor of a leader of round r is at round r + 3.
pub const WAVE_LENGTH: Round = 3;

/// The outcome for one leader slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderStatus {
    /// This block is committed.
    Commit(BlockRef),
    /// The leader of this round is skipped.
    Skip(Round),
    /// Not decided yet.
    Undecided(Round),
}

impl LeaderStatus {
    fn round(&self) -> Round {
        match self {
            LeaderStatus::Commit(b) => b.round,
            LeaderStatus::Skip(r) | LeaderStatus::Undecided(r) => *r,
        }
    }
}

/// Picks the leader of each round, with probability proportional to stake,
/// from a hash of the round: every validator computes the same schedule.
pub fn leader(committee: &Committee, round: Round) -> AuthorityIndex {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update(b"soma/leader/v1")
        .update(&round.to_le_bytes());
    let seed = u64::from_le_bytes(
        hasher.finalize().as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let mut ticket = seed % committee.total_stake();
    for authority in committee.authorities() {
        let stake = committee.stake(authority);
        if ticket < stake {
            return authority;
        }
        ticket -= stake;
    }
    unreachable!("the ticket is below the total stake")
}

/// Decides leaders over a [`DagState`], remembering between calls what it
/// learnt of votes and certificates.
///
/// Both are facts about a block's history, which never changes once the
/// block is in the DAG: which block of the leader's slot a block of the
/// next round supports, and whether a block certifies a leader block. So a
/// call after a new block still lists the blocks of each undecided round,
/// but looks up what it learnt of those it met before instead of walking
/// their histories again. What concerns decided rounds is forgotten.
#[derive(Default)]
pub struct Committer {
    /// For a block of round r+1, the block of the leader slot of round r it
    /// supports (`None`: it blames the leader).
    votes: BTreeMap<BlockRef, Option<BlockRef>>,
    /// For (leader block, block of two rounds later), whether the second
    /// certifies the first.
    certificates: BTreeMap<(BlockRef, BlockRef), bool>,
}

impl Committer {
    /// A committer that has seen nothing yet.
    pub fn new() -> Self {
        Committer::default()
    }

    /// Decides the leaders of rounds after `last_decided` (the genesis round
    /// 0 has no leader), and returns the decided prefix in round order: it
    /// stops before the first undecided leader.
    pub fn try_decide(&mut self, dag: &DagState, last_decided: Round) -> Vec<LeaderStatus> {
        self.forget_up_to(last_decided);
        let highest = dag.highest_round();
        let mut decided: Vec<LeaderStatus> = Vec::new();
        // From the highest round down, so that later decisions anchor
        // earlier ones.
        for round in (last_decided + 1..=highest.saturating_sub(2)).rev() {
            let mut status = self.try_direct_decide(dag, round);
            if let LeaderStatus::Undecided(_) = status {
                status = self.try_indirect_decide(dag, round, &decided);
            }
            decided.push(status);
        }
        decided.reverse();
        decided
            .into_iter()
            .take_while(|s| !matches!(s, LeaderStatus::Undecided(_)))
            .collect()
    }

    /// The direct rule for the leader of `round`.
    pub fn try_direct_decide(&mut self, dag: &DagState, round: Round) -> LeaderStatus {
        let committee = dag.committee();
        let author = leader(committee, round);
        for leader_block in dag.blocks_in_slot(round, author) {
            let mut certificates = StakeAggregator::new();
            for candidate in dag.blocks_at(round + 2) {
                if self.is_certificate(dag, &candidate.reference(), &leader_block.reference()) {
                    certificates.add(candidate.reference().author, committee);
                }
            }
            if certificates.reached_quorum(committee) {
                return LeaderStatus::Commit(leader_block.reference());
            }
        }
        let mut blame = StakeAggregator::new();
        for voter in dag.blocks_at(round + 1) {
            if self.vote(dag, &voter.reference()).is_none() {
                blame.add(voter.reference().author, committee);
            }
        }
        if blame.reached_quorum(committee) {
            LeaderStatus::Skip(round)
        } else {
            LeaderStatus::Undecided(round)
        }
    }

    /// The indirect rule: the first leader at least [`WAVE_LENGTH`] rounds
    /// later that is not skipped is the anchor; if it is committed, the
    /// leader of `round` is committed when the anchor's history holds a
    /// certificate for it, and skipped otherwise.
    fn try_indirect_decide(
        &mut self,
        dag: &DagState,
        round: Round,
        later: &[LeaderStatus],
    ) -> LeaderStatus {
        // `later` is in decreasing round order: look from the lowest up.
        let anchor = later
            .iter()
            .rev()
            .filter(|s| s.round() >= round + WAVE_LENGTH)
            .find(|s| !matches!(s, LeaderStatus::Skip(_)));
        let Some(LeaderStatus::Commit(anchor)) = anchor else {
            return LeaderStatus::Undecided(round);
        };
        let author = leader(dag.committee(), round);
        for leader_block in dag.blocks_in_slot(round, author) {
            let certified = dag.blocks_at(round + 2).any(|candidate| {
                dag.is_ancestor(&candidate.reference(), anchor)
                    && self.is_certificate(dag, &candidate.reference(), &leader_block.reference())
            });
            if certified {
                return LeaderStatus::Commit(leader_block.reference());
            }
        }
        LeaderStatus::Skip(round)
    }

    /// The block of the leader slot one round below `voter` that `voter`
    /// supports.
    fn vote(&mut self, dag: &DagState, voter: &BlockRef) -> Option<BlockRef> {
        let round = voter.round - 1;
        *self
            .votes
            .entry(*voter)
            .or_insert_with(|| dag.supported_block(round, leader(dag.committee(), round), voter))
    }

    /// Whether `candidate` (of round r+2) has a quorum of parents voting
    /// for `leader_block` (of round r).
    fn is_certificate(
        &mut self,
        dag: &DagState,
        candidate: &BlockRef,
        leader_block: &BlockRef,
    ) -> bool {
        if let Some(known) = self.certificates.get(&(*leader_block, *candidate)) {
            return *known;
        }
        let Some(block) = dag.get(candidate) else {
            return false;
        };
        let committee = dag.committee();
        let mut votes = StakeAggregator::new();
        for parent in block
            .block()
            .parents
            .iter()
            .filter(|p| p.round == leader_block.round + 1)
        {
            if self.vote(dag, parent) == Some(*leader_block) {
                votes.add(parent.author, committee);
            }
        }
        let certifies = votes.reached_quorum(committee);
        self.certificates
            .insert((*leader_block, *candidate), certifies);
        certifies
    }

    /// Forgets votes and certificates for leaders of `round` and below.
    fn forget_up_to(&mut self, round: Round) {
        let first_voter = BlockRef::first_of_round(round + 2);
        if self
            .votes
            .first_key_value()
            .is_some_and(|(v, _)| *v < first_voter)
        {
            self.votes = self.votes.split_off(&first_voter);
        }
        let first = BlockRef::first_of_round(round + 1);
        if self
            .certificates
            .first_key_value()
            .is_some_and(|((l, _), _)| *l < first)
        {
            self.certificates = self.certificates.split_off(&(first, first));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::VerifiedBlock;
    use crate::committee::tests::committee;
    use crate::dag_state::Acceptance;
    use crate::test_dag::TestDag;

    /// One validator's view of a [`TestDag`]: blocks accepted once their
    /// parents are, leaders decided and linearized after each block, as
    /// the core does.
    struct Replica {
        dag: DagState,
        waiting: Vec<VerifiedBlock>,
        committer: Committer,
        last_decided: Round,
        linearizer: crate::Linearizer,
        sequence: Vec<crate::CommittedSubDag>,
        decided: Vec<LeaderStatus>,
    }

    impl Replica {
        fn new(committee: &Committee) -> Replica {
            Replica {
                dag: DagState::new(committee.clone(), 1_000),
                waiting: Vec::new(),
                committer: Committer::new(),
                last_decided: 0,
                linearizer: crate::Linearizer::new([], 0, crate::linearizer::NO_COMMIT),
                sequence: Vec::new(),
                decided: Vec::new(),
            }
        }

        /// Replays `blocks` in this order.
        fn replay(committee: &Committee, blocks: &[VerifiedBlock]) -> Replica {
            let mut replica = Replica::new(committee);
            for block in blocks {
                replica.receive(block.clone());
            }
            replica
        }

        fn receive(&mut self, block: VerifiedBlock) {
            self.waiting.push(block);
            loop {
                let before = self.waiting.len();
                let dag = &mut self.dag;
                self.waiting
                    .retain(|b| matches!(dag.accept(b.clone()), Acceptance::MissingParents(_)));
                if self.waiting.len() == before {
                    break;
                }
            }
            for status in self.committer.try_decide(&self.dag, self.last_decided) {
                self.decided.push(status);
                self.last_decided = status.round();
                if let LeaderStatus::Commit(leader) = status {
                    self.sequence.push(self.linearizer.linearize(
                        &self.dag,
                        leader,
                        self.sequence.len() as u64,
                    ));
                }
            }
        }

        fn status(&self, round: Round) -> LeaderStatus {
            *self.decided.iter().find(|s| s.round() == round).unwrap()
        }
    }

    /// The letter of the leader of `round` for four equal stakes.
    fn leader_letter(round: Round) -> char {
        let (c, _) = committee(&[1, 1, 1, 1]);
        (b'A' + leader(&c, round).0 as u8) as char
    }

    /// The three letters that are not `l`.
    fn others(l: char) -> Vec<char> {
        ['A', 'B', 'C', 'D']
            .into_iter()
            .filter(|x| *x != l)
            .collect()
    }

    /// The DAG `text` describes for four equal stakes, replayed in order.
    fn replay(text: &str) -> (TestDag, Replica) {
        let dag = TestDag::parse(&[1, 1, 1, 1], text);
        let replica = Replica::replay(&dag.committee, &dag.blocks);
        (dag, replica)
    }

    /// Every validator in every round of `rounds`, all parents.
    fn full(rounds: &str) -> (TestDag, Replica) {
        replay(&format!("{rounds}: *"))
    }

    #[test]
    fn a_fully_connected_dag_commits_every_leader_in_order() {
        let (dag, replica) = full("1..10");
        let expected: Vec<LeaderStatus> = (1..=8)
            .map(|r| LeaderStatus::Commit(dag.get(&format!("L{r}"))))
            .collect();
        assert_eq!(replica.decided, expected, "decided block by block");
        let mut fresh = Committer::new();
        assert_eq!(fresh.try_decide(&replica.dag, 0), expected, "all at once");
        assert_eq!(fresh.try_decide(&replica.dag, 5), expected[5..]);
    }

    #[test]
    fn a_missing_leader_is_skipped_directly() {
        let present: Vec<String> = others(leader_letter(3))
            .into_iter()
            .map(String::from)
            .collect();
        let text = format!("1..2: *\n3: {}\n4..8: *", present.join(" "));
        let (_, replica) = replay(&text);
        assert_eq!(
            Committer::new().try_direct_decide(&replica.dag, 3),
            LeaderStatus::Skip(3)
        );
        assert_eq!(replica.status(3), LeaderStatus::Skip(3));
        assert_eq!(replica.decided.len(), 6);
        assert!(
            replica
                .decided
                .iter()
                .all(|s| s.round() == 3 || matches!(s, LeaderStatus::Commit(_)))
        );
    }

    #[test]
    fn a_weakly_supported_leader_is_decided_through_its_anchor() {
        let text = format!("1..5: *\n{}8..13: *", weak_wave(5));
        let (dag, replica) = replay(&text);
        assert_eq!(
            Committer::new().try_direct_decide(&replica.dag, 5),
            LeaderStatus::Undecided(5)
        );
        assert_eq!(replica.status(5), LeaderStatus::Commit(dag.get("L5")));
    }

    #[test]
    fn committed_leaders_linearize_every_block_exactly_once() {
        let (_, replica) = full("1..10");
        let mut seen = std::collections::BTreeSet::new();
        for subdag in &replica.sequence {
            assert_eq!(subdag.blocks.last().unwrap().reference(), subdag.leader);
            for block in &subdag.blocks {
                assert!(
                    seen.insert(block.reference()),
                    "{:?} committed twice",
                    block.reference()
                );
                assert!(replica.dag.is_ancestor(&block.reference(), &subdag.leader));
            }
        }
        // Everything from round 1 up to the last leader's round minus one
        // is committed.
        let last = replica.sequence.last().unwrap().leader.round;
        assert_eq!(
            seen.iter().filter(|r| r.round < last).count(),
            4 * (last as usize - 1)
        );
    }

    #[test]
    fn blocks_below_the_garbage_collection_round_are_never_committed() {
        let (dag, replica) = full("1..10");
        let mut linearizer = crate::Linearizer::new([], 4, crate::linearizer::NO_COMMIT);
        let subdag = linearizer.linearize(&replica.dag, dag.get("L8"), 0);
        let first = subdag.clone();
        assert_eq!(first.previous, crate::linearizer::NO_COMMIT);
        assert!(subdag.blocks.iter().all(|x| x.reference().round >= 4));
        assert_eq!(
            subdag.blocks.len(),
            4 * 4 + 1,
            "rounds 4 to 7, and the leader"
        );
        // Raising the round later forgets what was committed below it.
        linearizer.garbage_collect(6);
        let subdag = linearizer.linearize(&replica.dag, dag.get("L10"), 1);
        assert!(subdag.blocks.iter().all(|x| x.reference().round >= 8));

        // A commit read back from the store has the digest it was applied
        // under; another index or block list has another.
        let record = |index, blocks: Vec<_>, previous| crate::CommitRecord {
            index,
            leader: subdag.leader,
            blocks,
            previous,
        };
        let refs: Vec<_> = subdag.blocks.iter().map(|b| b.reference()).collect();
        let previous = subdag.previous;
        assert_eq!(record(1, refs.clone(), previous).digest(), subdag.digest());
        assert_ne!(record(2, refs.clone(), previous).digest(), subdag.digest());
        assert_ne!(
            record(1, refs[1..].to_vec(), previous).digest(),
            subdag.digest()
        );
        // Each commit chains to the one before it.
        assert_eq!(previous, first.digest());
        assert_ne!(record(1, refs, [7; 32]).digest(), subdag.digest());
    }

    #[test]
    fn an_equivocating_leader_is_committed_only_in_the_version_a_quorum_voted_for() {
        let l = leader_letter(5);
        let [a, b, c] = others(l)[..] else { panic!() };
        // The leader's own next block must name its first version; the
        // others split 2 : 2, or all vote for the second.
        for (split, voters_of_second) in [(true, vec![a, b]), (false, vec![a, b, c])] {
            let votes: Vec<String> = [a, b, c]
                .into_iter()
                .map(|x| {
                    let leader = if voters_of_second.contains(&x) {
                        "L5'"
                    } else {
                        "L5"
                    };
                    let other = if x == a { b } else { a };
                    format!("{x}={leader},{x}5,{other}5")
                })
                .collect();
            let text = format!("1..4: *\n5: * L'\n6: {} {l}\n7..12: *", votes.join(" "));
            let (dag, replica) = replay(&text);
            let status = replica.status(5);
            if split {
                assert_eq!(status, LeaderStatus::Skip(5), "2 : 2 votes");
            } else {
                assert_eq!(status, LeaderStatus::Commit(dag.get("L5'")));
            }
            let mut committed = replica.sequence.iter().flat_map(|s| &s.blocks);
            // Whichever version is decided, both may be committed later as
            // ordinary blocks of the leader's history, each once.
            let mut seen = std::collections::BTreeSet::new();
            assert!(committed.all(|x| seen.insert(x.reference())));
        }
    }

    #[test]
    fn a_leader_short_of_votes_and_of_blame_is_skipped_through_its_anchor() {
        let l = leader_letter(5);
        let [a, b, c] = others(l)[..] else { panic!() };
        // Round 6: two blocks vote for the leader, two do not: neither a
        // quorum of votes nor one of blame.
        let text = format!("1..5: *\n6: {l} {a} {b}={a}5,{b}5,{c}5 {c}={a}5,{b}5,{c}5\n7..12: *");
        let (_, replica) = replay(&text);
        assert_eq!(
            Committer::new().try_direct_decide(&replica.dag, 5),
            LeaderStatus::Undecided(5)
        );
        assert_eq!(replica.status(5), LeaderStatus::Skip(5));
        assert!(matches!(replica.status(8), LeaderStatus::Commit(_)));
    }

    /// Rounds `r+1` and `r+2` of a weakly supported leader of `r`: three
    /// votes, one certificate.
    fn weak_wave(r: Round) -> String {
        let l = leader_letter(r);
        let [n, v1, v2] = others(l)[..] else { panic!() };
        let p = r + 1;
        format!(
            "{p}: {l} {v1} {v2} {n}={v1}{r},{v2}{r},{n}{r}\n\
             {}: {l}={l}{p},{v1}{p},{v2}{p} {v1}={n}{p},{v1}{p},{v2}{p} \
             {v2}={n}{p},{v1}{p},{v2}{p} {n}={n}{p},{v1}{p},{v2}{p}\n",
            r + 2
        )
    }

    #[test]
    fn a_chain_of_undecided_anchors_is_decided_from_the_top() {
        let text = format!("1..5: *\n{}8: *\n{}11..16: *", weak_wave(5), weak_wave(8));
        let (dag, replica) = replay(&text);
        let mut committer = Committer::new();
        for r in [5, 8] {
            assert_eq!(
                committer.try_direct_decide(&replica.dag, r),
                LeaderStatus::Undecided(r)
            );
        }
        assert!(matches!(
            committer.try_direct_decide(&replica.dag, 11),
            LeaderStatus::Commit(_)
        ));
        // 11 anchors 8, which anchors 5.
        assert_eq!(replica.status(8), LeaderStatus::Commit(dag.get("L8")));
        assert_eq!(replica.status(5), LeaderStatus::Commit(dag.get("L5")));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Random DAGs delivered in random orders (parents may come after
        /// their children): every replica decides the same leaders and
        /// commits the same sequence, each block at most once.
        #[test]
        fn committer_and_linearizer_agree_whatever_the_delivery_order(seed in 0u64..u64::MAX) {
            use rand::SeedableRng;
            use rand::seq::SliceRandom;
            let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
            let dag = TestDag::random(4, 30, &mut rng);
            let in_order = Replica::replay(&dag.committee, &dag.blocks);
            proptest::prop_assert!(!in_order.sequence.is_empty());
            // What a committer remembers between blocks changes nothing.
            let at_once = Committer::new().try_decide(&in_order.dag, 0);
            proptest::prop_assert_eq!(&at_once, &in_order.decided);
            for _ in 0..3 {
                let mut shuffled = dag.blocks.clone();
                shuffled.shuffle(&mut rng);
                let replica = Replica::replay(&dag.committee, &shuffled);
                proptest::prop_assert_eq!(&replica.decided, &in_order.decided);
                proptest::prop_assert_eq!(&replica.sequence, &in_order.sequence);
            }
            let mut seen = std::collections::BTreeSet::new();
            for block in in_order.sequence.iter().flat_map(|s| &s.blocks) {
                proptest::prop_assert!(seen.insert(block.reference()));
            }
        }
    }

    #[test]
    fn leaders_follow_stake() {
        let (c, _) = committee(&[97, 1, 1, 1]);
        let heavy = (1..=1000)
            .filter(|r| leader(&c, *r) == AuthorityIndex(0))
            .count();
        assert!(heavy > 900, "{heavy}");
        let (even, _) = committee(&[1, 1, 1, 1]);
        for a in 0..4 {
            assert!((1..=1000).any(|r| leader(&even, r) == AuthorityIndex(a)));
        }
    }
}
