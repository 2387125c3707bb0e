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

/// Decides leaders over a [`DagState`].
pub struct Committer<'a> {
    dag: &'a DagState,
}

impl<'a> Committer<'a> {
    /// A committer reading `dag`.
    pub fn new(dag: &'a DagState) -> Self {
        Committer { dag }
    }

    fn committee(&self) -> &Committee {
        self.dag.committee()
    }

    /// Decides the leaders of rounds after `last_decided` (the genesis round
    /// 0 has no leader), and returns the decided prefix in round order: it
    /// stops before the first undecided leader.
    pub fn try_decide(&self, last_decided: Round) -> Vec<LeaderStatus> {
        let highest = self.dag.highest_round();
        let mut decided: Vec<LeaderStatus> = Vec::new();
        // From the highest round down, so that later decisions anchor
        // earlier ones.
        for round in (last_decided + 1..=highest.saturating_sub(2)).rev() {
            let mut status = self.try_direct_decide(round);
            if let LeaderStatus::Undecided(_) = status {
                status = self.try_indirect_decide(round, &decided);
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
    pub fn try_direct_decide(&self, round: Round) -> LeaderStatus {
        let author = leader(self.committee(), round);
        for leader_block in self.dag.blocks_in_slot(round, author) {
            let mut certificates = StakeAggregator::new();
            for candidate in self.dag.blocks_at(round + 2) {
                if self.is_certificate(&candidate.reference(), &leader_block.reference()) {
                    certificates.add(candidate.reference().author, self.committee());
                }
            }
            if certificates.reached_quorum(self.committee()) {
                return LeaderStatus::Commit(leader_block.reference());
            }
        }
        let mut blame = StakeAggregator::new();
        for voter in self.dag.blocks_at(round + 1) {
            if self
                .dag
                .supported_block(round, author, &voter.reference())
                .is_none()
            {
                blame.add(voter.reference().author, self.committee());
            }
        }
        if blame.reached_quorum(self.committee()) {
            LeaderStatus::Skip(round)
        } else {
            LeaderStatus::Undecided(round)
        }
    }

    /// The indirect rule: the first leader at least [`WAVE_LENGTH`] rounds
    /// later that is not skipped is the anchor; if it is committed, the
    /// leader of `round` is committed when the anchor's history holds a
    /// certificate for it, and skipped otherwise.
    fn try_indirect_decide(&self, round: Round, later: &[LeaderStatus]) -> LeaderStatus {
        // `later` is in decreasing round order: look from the lowest up.
        let anchor = later
            .iter()
            .rev()
            .filter(|s| s.round() >= round + WAVE_LENGTH)
            .find(|s| !matches!(s, LeaderStatus::Skip(_)));
        let Some(LeaderStatus::Commit(anchor)) = anchor else {
            return LeaderStatus::Undecided(round);
        };
        let author = leader(self.committee(), round);
        for leader_block in self.dag.blocks_in_slot(round, author) {
            let certified = self.dag.blocks_at(round + 2).any(|candidate| {
                self.dag.is_ancestor(&candidate.reference(), anchor)
                    && self.is_certificate(&candidate.reference(), &leader_block.reference())
            });
            if certified {
                return LeaderStatus::Commit(leader_block.reference());
            }
        }
        LeaderStatus::Skip(round)
    }

    /// Whether `candidate` (of round r+2) has a quorum of parents voting
    /// for `leader_block` (of round r).
    fn is_certificate(&self, candidate: &BlockRef, leader_block: &BlockRef) -> bool {
        let Some(block) = self.dag.get(candidate) else {
            return false;
        };
        let mut votes = StakeAggregator::new();
        for parent in block
            .block()
            .parents
            .iter()
            .filter(|p| p.round == leader_block.round + 1)
        {
            let supported =
                self.dag
                    .supported_block(leader_block.round, leader_block.author, parent);
            if supported == Some(*leader_block) {
                votes.add(parent.author, self.committee());
            }
        }
        votes.reached_quorum(self.committee())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{Block, VerifiedBlock};
    use crate::committee::tests::committee;
    use crate::dag_state::Acceptance;
    use crate::test_dag::TestDag;
    use soma_crypto::SecretKey;

    /// Builds DAGs round by round for 4 equal-stake validators.
    struct Builder {
        keys: Vec<SecretKey>,
        dag: DagState,
        /// The block of each (round, author) this builder made.
        made: std::collections::BTreeMap<(Round, u32), BlockRef>,
    }

    impl Builder {
        fn new() -> Builder {
            let (c, keys) = committee(&[1, 1, 1, 1]);
            let mut b = Builder {
                keys,
                dag: DagState::new(c, 0),
                made: Default::default(),
            };
            for author in 0..4 {
                b.made
                    .insert((0, author), BlockRef::genesis(AuthorityIndex(author)));
            }
            b
        }

        /// `author` proposes at `round`, referencing the previous round's
        /// blocks of `parents` (plus its own latest block).
        fn propose(&mut self, round: Round, author: u32, parents: &[u32]) {
            let mut refs: Vec<BlockRef> = parents
                .iter()
                .map(|p| self.made[&(round - 1, *p)])
                .collect();
            if !parents.contains(&author) && round > 0 {
                let own = (0..round)
                    .rev()
                    .find_map(|r| self.made.get(&(r, author)))
                    .copied()
                    .unwrap();
                refs.push(own);
            }
            refs.sort();
            let block = Block {
                round,
                author: AuthorityIndex(author),
                parents: refs,
                transactions: vec![],
                state_root: [0; 32],
            };
            let signed = VerifiedBlock::verify(
                block.sign(&self.keys[author as usize], self.dag.committee().protocol()),
                self.dag.committee(),
            )
            .unwrap();
            self.made.insert((round, author), signed.reference());
            assert_eq!(self.dag.accept(signed), Acceptance::Accepted);
        }

        /// Every validator proposes at each of `rounds`, referencing all of
        /// the previous round.
        fn full_rounds(&mut self, rounds: std::ops::RangeInclusive<Round>) {
            for round in rounds {
                let previous: Vec<u32> = (0..4)
                    .filter(|a| self.made.contains_key(&(round - 1, *a)))
                    .collect();
                for author in 0..4 {
                    self.propose(round, author, &previous);
                }
            }
        }

        fn leader(&self, round: Round) -> u32 {
            leader(self.dag.committee(), round).0
        }
    }

    #[test]
    fn a_fully_connected_dag_commits_every_leader_in_order() {
        let mut b = Builder::new();
        b.full_rounds(1..=10);
        let decided = Committer::new(&b.dag).try_decide(0);
        let expected: Vec<LeaderStatus> = (1..=8)
            .map(|r| LeaderStatus::Commit(b.made[&(r, b.leader(r))]))
            .collect();
        assert_eq!(decided, expected);
        assert_eq!(Committer::new(&b.dag).try_decide(5), expected[5..]);
    }

    #[test]
    fn a_missing_leader_is_skipped_directly() {
        let mut b = Builder::new();
        b.full_rounds(1..=2);
        let absent = b.leader(3);
        let present: Vec<u32> = (0..4).filter(|a| *a != absent).collect();
        for author in &present {
            b.propose(3, *author, &[0, 1, 2, 3]);
        }
        for author in 0..4 {
            b.propose(4, author, &present);
        }
        b.full_rounds(5..=8);
        assert_eq!(
            Committer::new(&b.dag).try_direct_decide(3),
            LeaderStatus::Skip(3)
        );
        let decided = Committer::new(&b.dag).try_decide(0);
        assert_eq!(decided[2], LeaderStatus::Skip(3));
        assert!(
            decided
                .iter()
                .enumerate()
                .all(|(i, s)| i == 2 || matches!(s, LeaderStatus::Commit(_)))
        );
    }

    #[test]
    fn a_weakly_supported_leader_is_decided_through_its_anchor() {
        let mut b = Builder::new();
        b.full_rounds(1..=4);
        let r = 5;
        b.full_rounds(r..=r);
        let l = b.leader(r);
        let others: Vec<u32> = (0..4).filter(|a| *a != l).collect();
        // Round r+1: three validators vote for the leader, one does not.
        let non_voter = others[0];
        for author in 0..4 {
            let parents: Vec<u32> = if author == non_voter {
                others.clone()
            } else {
                vec![0, 1, 2, 3]
            };
            b.propose(r + 1, author, &parents);
        }
        // Round r+2: only one block certifies (references the three
        // voters); the others reference two voters and the non-voter.
        let voters: Vec<u32> = (0..4).filter(|a| *a != non_voter).collect();
        for author in 0..4 {
            let parents: Vec<u32> = if author == voters[0] {
                voters.clone()
            } else {
                let mut p = vec![non_voter];
                p.extend(voters.iter().filter(|v| **v != voters[0]).take(2));
                p
            };
            b.propose(r + 2, author, &parents);
        }
        b.full_rounds(r + 3..=r + 8);

        let committer = Committer::new(&b.dag);
        assert_eq!(committer.try_direct_decide(r), LeaderStatus::Undecided(r));
        let decided = committer.try_decide(0);
        assert_eq!(
            decided[(r - 1) as usize],
            LeaderStatus::Commit(b.made[&(r, l)])
        );
    }

    #[test]
    fn committed_leaders_linearize_every_block_exactly_once_in_a_fixed_order() {
        let mut b = Builder::new();
        b.full_rounds(1..=10);
        let leaders: Vec<BlockRef> = Committer::new(&b.dag)
            .try_decide(0)
            .into_iter()
            .map(|s| match s {
                LeaderStatus::Commit(l) => l,
                other => panic!("{other:?}"),
            })
            .collect();
        let sequence = |dag: &DagState| {
            let mut linearizer = crate::Linearizer::new([], 0);
            leaders
                .iter()
                .map(|l| linearizer.linearize(dag, *l))
                .collect::<Vec<_>>()
        };
        let subdags = sequence(&b.dag);
        let mut seen = std::collections::BTreeSet::new();
        for subdag in &subdags {
            assert_eq!(subdag.blocks.last().unwrap().reference(), subdag.leader);
            for block in &subdag.blocks {
                assert!(
                    seen.insert(block.reference()),
                    "{:?} committed twice",
                    block.reference()
                );
                assert!(b.dag.is_ancestor(&block.reference(), &subdag.leader));
            }
        }
        // Everything from round 1 up to the last leader's round minus one
        // is committed.
        let last = leaders.last().unwrap().round;
        assert_eq!(
            seen.iter().filter(|r| r.round < last).count(),
            4 * (last as usize - 1)
        );
        assert_eq!(sequence(&b.dag), subdags, "linearization is deterministic");
    }

    #[test]
    fn blocks_below_the_garbage_collection_round_are_never_committed() {
        let mut b = Builder::new();
        b.full_rounds(1..=10);
        let leader = b.made[&(8, b.leader(8))];
        let mut linearizer = crate::Linearizer::new([], 4);
        let subdag = linearizer.linearize(&b.dag, leader);
        assert!(subdag.blocks.iter().all(|x| x.reference().round >= 4));
        assert_eq!(
            subdag.blocks.len(),
            4 * 4 + 1,
            "rounds 4 to 7, and the leader"
        );
        // Raising the round later forgets what was committed below it.
        linearizer.garbage_collect(6);
        let next = b.made[&(10, b.leader(10))];
        let subdag = linearizer.linearize(&b.dag, next);
        assert!(subdag.blocks.iter().all(|x| x.reference().round >= 8));
    }

    /// One validator's view of a [`TestDag`]: blocks accepted once their
    /// parents are, leaders decided and linearized after each block, as
    /// the core does.
    struct Replica {
        dag: DagState,
        waiting: Vec<VerifiedBlock>,
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
                last_decided: 0,
                linearizer: crate::Linearizer::new([], 0),
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
            for status in Committer::new(&self.dag).try_decide(self.last_decided) {
                self.decided.push(status);
                self.last_decided = status.round();
                if let LeaderStatus::Commit(leader) = status {
                    self.sequence
                        .push(self.linearizer.linearize(&self.dag, leader));
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
            let dag = TestDag::parse(&[1, 1, 1, 1], &text);
            let replica = Replica::replay(&dag.committee, &dag.blocks);
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
        let dag = TestDag::parse(&[1, 1, 1, 1], &text);
        let replica = Replica::replay(&dag.committee, &dag.blocks);
        assert_eq!(
            Committer::new(&replica.dag).try_direct_decide(5),
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
        let dag = TestDag::parse(&[1, 1, 1, 1], &text);
        let replica = Replica::replay(&dag.committee, &dag.blocks);
        let committer = Committer::new(&replica.dag);
        for r in [5, 8] {
            assert_eq!(committer.try_direct_decide(r), LeaderStatus::Undecided(r));
        }
        assert!(matches!(
            committer.try_direct_decide(11),
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
