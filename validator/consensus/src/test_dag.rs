//! DAGs written as text, for tests of the commit rule.
//!
//! ```text
//! 1..4: *                  every validator, every round, all parents
//! 5: A B C                 D is absent
//! 6: L L' B C D            the round's leader signs two blocks
//! 7: A=A6,B6,C6 B=L6',B6,C6 C D
//! ```
//!
//! A line is `round[..last]: block…`. A block is an author letter (`A` is
//! validator 0; `L` is the leader of the round), with `'` for its second
//! version; `*` is every validator. Parents follow `=`: `X6` or `X6'` names
//! a block of round 6 (`L6` the leader's), `*` (the default) every first
//! version of the previous round. The author's own latest block is added
//! when not named, as the rules require.

use crate::block::{Block, BlockRef, Round, VerifiedBlock};
use crate::committee::tests::committee;
use crate::committee::{AuthorityIndex, Committee, Stake};
use crate::committer::leader;
use soma_crypto::SecretKey;
use std::collections::BTreeMap;

/// Blocks built from a text description, in the order they were written.
pub(crate) struct TestDag {
    pub(crate) committee: Committee,
    keys: Vec<SecretKey>,
    /// Each block by (round, author, version).
    made: BTreeMap<(Round, u32, u8), VerifiedBlock>,
    /// Every block, parents before children.
    pub(crate) blocks: Vec<VerifiedBlock>,
}

impl TestDag {
    /// A DAG of validators with `stakes`, described by `text`.
    pub(crate) fn parse(stakes: &[Stake], text: &str) -> TestDag {
        let (committee, keys) = committee(stakes);
        let mut dag = TestDag {
            committee,
            keys,
            made: BTreeMap::new(),
            blocks: Vec::new(),
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (rounds, specs) = line.split_once(':').expect("`round: blocks`");
            let (first, last) = match rounds.split_once("..") {
                Some((a, b)) => (a.trim().parse().unwrap(), b.trim().parse().unwrap()),
                None => (
                    rounds.trim().parse().unwrap(),
                    rounds.trim().parse().unwrap(),
                ),
            };
            for round in first..=last {
                for spec in specs.split_whitespace() {
                    dag.add(round, spec);
                }
            }
        }
        dag
    }

    /// A random DAG of `rounds` rounds for equal stakes: each round a
    /// random validator or none is absent, and one may sign two versions;
    /// each block names a random quorum of the previous round (one version
    /// per author) besides its own previous block.
    pub(crate) fn random(validators: usize, rounds: Round, rng: &mut impl rand::Rng) -> TestDag {
        use rand::RngExt;
        use rand::seq::SliceRandom;
        let mut dag = TestDag::parse(&vec![1; validators], "");
        let quorum = dag.committee.quorum_threshold() as usize;
        for round in 1..=rounds {
            let absent = rng.random_range(0..validators * 2);
            let twice = rng.random_range(0..validators * 4);
            for author in (0..validators as u32).filter(|a| *a as usize != absent) {
                let versions = if author as usize == twice { 2 } else { 1 };
                for version in 0..versions {
                    let mut previous: Vec<String> = (0..validators as u32)
                        .filter(|a| *a != author)
                        .filter_map(|a| {
                            let v = u8::from(rng.random_bool(0.5));
                            let v = if dag.made.contains_key(&(round - 1, a, v)) {
                                v
                            } else {
                                0
                            };
                            dag.made.get(&(round - 1, a, v)).map(|_| {
                                let tick = if v == 1 { "'" } else { "" };
                                format!("{}{}{tick}", (b'A' + a as u8) as char, round - 1)
                            })
                        })
                        .collect();
                    previous.shuffle(rng);
                    // Its own previous block counts towards the quorum.
                    let own_in_previous = dag.made.contains_key(&(round - 1, author, 0));
                    let needed = quorum - usize::from(own_in_previous);
                    if round == 1 || previous.len() < needed {
                        dag.add_block(round, author, version, "*");
                        continue;
                    }
                    let take = rng.random_range(needed..=previous.len());
                    dag.add_block(round, author, version, &previous[..take].join(","));
                }
            }
        }
        dag
    }

    /// The block `name` (`B6`, `L6'`) as a reference.
    pub(crate) fn get(&self, name: &str) -> BlockRef {
        let (author, version, round) = self.name(name, None);
        self.made[&(round.expect("a round"), author, version)].reference()
    }

    /// The leader of `round`.
    pub(crate) fn leader(&self, round: Round) -> u32 {
        leader(&self.committee, round).0
    }

    fn add(&mut self, round: Round, spec: &str) {
        let (who, parents) = spec.split_once('=').unwrap_or((spec, "*"));
        if who == "*" {
            for author in 0..self.committee.size() as u32 {
                self.add_block(round, author, 0, parents);
            }
            return;
        }
        let (author, version, _) = self.name(who, Some(round));
        self.add_block(round, author, version, parents);
    }

    /// Parses `X`, `X'`, `X6`, `X6'` (`L` for the leader of the round).
    fn name(&self, text: &str, round: Option<Round>) -> (u32, u8, Option<Round>) {
        let version = u8::from(text.ends_with('\''));
        let text = text.trim_end_matches('\'');
        let (letter, digits) = text.split_at(1);
        let round = if digits.is_empty() {
            round
        } else {
            Some(digits.parse().expect("a round number"))
        };
        let author = match letter {
            "L" => self.leader(round.expect("the leader of a round")),
            letter => u32::from(letter.as_bytes()[0] - b'A'),
        };
        (author, version, round)
    }

    fn add_block(&mut self, round: Round, author: u32, version: u8, parents: &str) {
        let mut refs: Vec<BlockRef> = if parents == "*" {
            (0..self.committee.size() as u32)
                .filter_map(|a| self.made.get(&(round - 1, a, 0)))
                .map(|b| b.reference())
                .collect()
        } else {
            parents.split(',').map(|p| self.get(p)).collect()
        };
        if round == 1 && parents == "*" {
            refs = self
                .committee
                .authorities()
                .map(BlockRef::genesis)
                .collect();
        }
        if !refs.iter().any(|r| r.author.0 == author) {
            let own = (0..round)
                .rev()
                .find_map(|r| self.made.get(&(r, author, 0)))
                .map_or(BlockRef::genesis(AuthorityIndex(author)), |b| b.reference());
            refs.push(own);
        }
        refs.sort();
        let block = Block {
            round,
            author: AuthorityIndex(author),
            parents: refs,
            // Versions of one slot differ in content.
            transactions: vec![vec![version]],
            state_root: crate::StateRoot::default(),
        };
        let signed = block.sign(&self.keys[author as usize], self.committee.protocol());
        let verified = VerifiedBlock::verify(signed, &self.committee)
            .unwrap_or_else(|e| panic!("round {round}, author {author}: {e}"));
        self.made.insert((round, author, version), verified.clone());
        self.blocks.push(verified);
    }
}
