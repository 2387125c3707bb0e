//! The transactions waiting for this validator's blocks, best first.
//!
//! Consensus never reads a transaction; the node's
//! [`TransactionVerifier`](crate::TransactionVerifier) places each one it
//! admits ([`Placement`]): in a lane (a sender), at a sequence in that lane
//! (a nonce), with a priority (a fee per byte). Proposals take the lanes'
//! first transactions, highest priority first and, among equals, in the
//! order they arrived; a lane's transactions always go in sequence order,
//! so a sender's later transaction never overtakes its earlier one however
//! much more it pays. A lane whose first transaction is past the sequence
//! it is expected to continue from (a nonce gap: what comes before may
//! never come, and the chain would then refuse it without charging) waits
//! at the lowest priority, so a priority that may never be paid buys
//! nothing.
//!
//! Nothing waiting is dropped to make room: when the pool is full, new
//! transactions wait in the node's queue in front of it, and past that
//! queue the submitter is refused. A transaction at a place already taken
//! (a copy, or a replacement that does not [`outbid`] what waits) is
//! dropped, and what waits stands for it.

use crate::block::MAX_TRANSACTION_BYTES;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The least a waiting transaction counts against byte limits.
pub const MIN_TRANSACTION_COST: usize = 64;

/// What a waiting transaction counts against byte limits: its length, but
/// at least [`MIN_TRANSACTION_COST`], so empty ones are not free.
pub fn transaction_cost(transaction: &[u8]) -> usize {
    transaction.len().max(MIN_TRANSACTION_COST)
}

/// Whether a transaction of `priority` may take the place of one of
/// `held` priority in its lane: it must pay at least an eighth more (and at
/// least one unit more). Each replacement of one place then costs its
/// sender more than the one before, in a growing series, so replacing a
/// transaction again and again, which costs every validator work but its
/// sender only the last fee, runs out of balance quickly.
pub fn outbid(priority: u64, held: u64) -> bool {
    u128::from(priority) >= u128::from(held) + u128::from((held / 8).max(1))
}

/// Why a transaction was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Larger than a block may carry.
    #[error("transaction of {0} bytes is over the limit of {MAX_TRANSACTION_BYTES}")]
    TooLarge(usize),
    /// Too many transaction bytes are waiting; try again later.
    #[error("{0} bytes of transactions are already waiting to be proposed")]
    Full(usize),
    /// Its lane already holds a transaction at its sequence that it does
    /// not [`outbid`].
    #[error(
        "a transaction with sequence {0} of this sender is already waiting, and this one does not \
         pay an eighth more"
    )]
    Duplicate(u64),
}

/// Where a verifier places an admitted transaction in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The lane (for example the sender): its transactions are proposed in
    /// sequence order.
    pub lane: [u8; 32],
    /// Position in the lane (for example the nonce); a second transaction
    /// at a taken position replaces the first only if it [`outbid`]s it.
    pub sequence: u64,
    /// Across lanes, higher goes first (for example the fee per byte).
    pub priority: u64,
    /// The sequence the lane continues from, as the verifier knows it (for
    /// example the account's next nonce). The pool never lowers it, and
    /// raises it past every transaction it proposes.
    pub expected: u64,
}

impl Placement {
    /// A lane of its own (named by the transaction's digest), at the
    /// lowest priority: transactions placed so go in the order they came,
    /// and the same bytes twice wait once.
    pub fn alone(transaction: &[u8]) -> Placement {
        Placement {
            lane: *blake3::hash(transaction).as_bytes(),
            sequence: 0,
            priority: 0,
            expected: 0,
        }
    }
}

/// A waiting transaction.
#[derive(Debug)]
struct Waiting {
    sequence: u64,
    transaction: Vec<u8>,
    priority: u64,
    /// When it came, as a count: breaks ties between equal priorities.
    arrival: u64,
}

/// A lane head's place in the proposal order (smallest first).
type Rank = (Reverse<u64>, u64);

/// One sender's waiting transactions.
#[derive(Debug, Default)]
struct Lane {
    /// By sequence. Most lanes hold one transaction and none more than a
    /// verifier's window of sequences, so a sorted vector serves.
    waiting: VecDeque<Waiting>,
    /// The sequence the lane continues from.
    expected: u64,
}

impl Lane {
    /// Where `sequence` is, or would go.
    fn find(&self, sequence: u64) -> Result<usize, usize> {
        self.waiting.binary_search_by_key(&sequence, |w| w.sequence)
    }

    /// Where the lane's first transaction goes in the proposal order: by
    /// its priority if it continues the lane, else last.
    fn rank(&self) -> Option<Rank> {
        let first = self.waiting.front()?;
        let priority = if first.sequence <= self.expected {
            first.priority
        } else {
            0
        };
        Some((Reverse(priority), first.arrival))
    }
}

/// The pool: lanes of waiting transactions, bounded in bytes.
#[derive(Debug)]
pub(crate) struct Mempool {
    /// By lane; never iterated (`heads` orders the proposals), so a hash
    /// map's lookups serve.
    lanes: HashMap<[u8; 32], Lane>,
    /// Each lane's first transaction, by rank.
    heads: BTreeMap<Rank, [u8; 32]>,
    /// Sum of the waiting transactions' costs.
    bytes: usize,
    max_bytes: usize,
    arrivals: u64,
}

impl Mempool {
    /// An empty pool that holds at most `max_bytes` of transaction costs.
    pub(crate) fn new(max_bytes: usize) -> Mempool {
        Mempool {
            lanes: HashMap::new(),
            heads: BTreeMap::new(),
            bytes: 0,
            max_bytes,
            arrivals: 0,
        }
    }

    /// Costs of the waiting transactions.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a transaction of any size would fit.
    pub(crate) fn has_room(&self) -> bool {
        self.bytes + MAX_TRANSACTION_BYTES <= self.max_bytes
    }

    /// Queues `transaction` where `placement` says, or says why not.
    pub(crate) fn insert(
        &mut self,
        transaction: Vec<u8>,
        placement: Placement,
    ) -> Result<(), SubmitError> {
        if transaction.len() > MAX_TRANSACTION_BYTES {
            return Err(SubmitError::TooLarge(transaction.len()));
        }
        let cost = transaction_cost(&transaction);
        let lane = self.lanes.get(&placement.lane);
        let place = lane.map_or(Err(0), |lane| lane.find(placement.sequence));
        let replaced = lane.zip(place.ok()).map(|(lane, i)| &lane.waiting[i]);
        if let Some(old) = replaced
            && !outbid(placement.priority, old.priority)
        {
            return Err(SubmitError::Duplicate(placement.sequence));
        }
        let freed = replaced.map_or(0, |old| transaction_cost(&old.transaction));
        if self.bytes - freed + cost > self.max_bytes {
            return Err(SubmitError::Full(self.bytes));
        }
        self.arrivals += 1;
        let waiting = Waiting {
            sequence: placement.sequence,
            transaction,
            priority: placement.priority,
            arrival: self.arrivals,
        };
        let lane = self.lanes.entry(placement.lane).or_default();
        if let Some(rank) = lane.rank() {
            self.heads.remove(&rank);
        }
        lane.expected = lane.expected.max(placement.expected);
        match place {
            Ok(i) => lane.waiting[i] = waiting,
            Err(i) => lane.waiting.insert(i, waiting),
        }
        self.heads
            .insert(lane.rank().expect("just inserted"), placement.lane);
        self.bytes = self.bytes - freed + cost;
        Ok(())
    }

    /// Takes the best transactions for a proposal: at most `count`, of at
    /// most `max_bytes` together. Stops at the first that does not fit, so
    /// a large transaction is not passed over forever by small ones.
    pub(crate) fn take(&mut self, count: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut taken = Vec::new();
        let mut bytes = 0;
        while taken.len() < count
            && let Some(entry) = self.heads.first_entry()
        {
            let key = *entry.get();
            let lane = self.lanes.get_mut(&key).expect("a head's lane exists");
            let first = lane.waiting.front().expect("a lane is never empty");
            if bytes + first.transaction.len() > max_bytes {
                break;
            }
            entry.remove();
            let waiting = lane.waiting.pop_front().expect("a lane is never empty");
            bytes += waiting.transaction.len();
            self.bytes -= transaction_cost(&waiting.transaction);
            lane.expected = lane.expected.max(waiting.sequence.saturating_add(1));
            taken.push(waiting.transaction);
            match lane.rank() {
                Some(rank) => {
                    self.heads.insert(rank, key);
                }
                None => {
                    self.lanes.remove(&key);
                }
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A placement that continues its lane.
    fn at(lane: u8, sequence: u64, priority: u64) -> Placement {
        Placement {
            lane: [lane; 32],
            sequence,
            priority,
            expected: sequence,
        }
    }

    fn tx(name: &str) -> Vec<u8> {
        name.as_bytes().to_vec()
    }

    fn all(pool: &mut Mempool) -> Vec<String> {
        let taken = pool.take(usize::MAX, usize::MAX);
        assert_eq!(pool.bytes(), 0, "everything taken is uncounted");
        taken
            .into_iter()
            .map(|t| String::from_utf8(t).unwrap())
            .collect()
    }

    #[test]
    fn higher_priority_goes_first_and_equal_priorities_in_arrival_order() {
        let mut pool = Mempool::new(1 << 20);
        pool.insert(tx("a cheap"), at(1, 0, 10)).unwrap();
        pool.insert(tx("b cheap"), at(2, 0, 10)).unwrap();
        pool.insert(tx("c dear"), at(3, 0, 50)).unwrap();
        pool.insert(tx("d alone"), Placement::alone(b"d alone"))
            .unwrap();
        assert_eq!(all(&mut pool), ["c dear", "a cheap", "b cheap", "d alone"]);
    }

    #[test]
    fn a_lane_goes_in_sequence_order_whatever_its_later_transactions_pay() {
        let mut pool = Mempool::new(1 << 20);
        pool.insert(tx("a1"), at(1, 1, 90)).unwrap();
        pool.insert(tx("b0"), at(2, 0, 20)).unwrap();
        // Arrives later but comes before a1 in its lane: the lane now
        // ranks by a0's priority.
        pool.insert(tx("a0"), at(1, 0, 10)).unwrap();
        assert_eq!(all(&mut pool), ["b0", "a0", "a1"]);
    }

    #[test]
    fn a_lane_past_its_expected_sequence_waits_last_until_it_continues() {
        // Nonce 7 of an account whose next is 5: nonces 5 and 6 may never
        // come, and then 7 would be refused without paying.
        let ahead = |sequence, name: &str| {
            let placement = Placement {
                lane: [1; 32],
                sequence,
                priority: 1_000,
                expected: 5,
            };
            (tx(name), placement)
        };
        let mut pool = Mempool::new(1 << 20);
        let (t, p) = ahead(7, "a7");
        pool.insert(t, p).unwrap();
        pool.insert(tx("b"), at(2, 0, 10)).unwrap();
        pool.insert(tx("c alone"), Placement::alone(b"c alone"))
            .unwrap();
        assert_eq!(all(&mut pool), ["b", "a7", "c alone"]);

        let mut pool = Mempool::new(1 << 20);
        let (t, p) = ahead(7, "a7");
        pool.insert(t, p).unwrap();
        pool.insert(tx("b"), at(2, 0, 10)).unwrap();
        let (t, p) = ahead(5, "a5");
        pool.insert(t, p).unwrap();
        // a5 continues the lane; once it is taken, 6 is expected, and a7
        // still waits behind b.
        assert_eq!(pool.take(2, usize::MAX), [tx("a5"), tx("b")]);
        let (t, p) = ahead(6, "a6");
        pool.insert(t, p).unwrap();
        pool.insert(tx("d"), at(3, 0, 500)).unwrap();
        assert_eq!(all(&mut pool), ["a6", "a7", "d"]);
    }

    #[test]
    fn a_taken_place_is_replaced_only_by_an_eighth_more() {
        let mut pool = Mempool::new(1 << 20);
        pool.insert(tx("first"), at(1, 0, 80)).unwrap();
        for (name, priority) in [("same fee", 80), ("a little more", 89)] {
            assert_eq!(
                pool.insert(tx(name), at(1, 0, priority)),
                Err(SubmitError::Duplicate(0))
            );
        }
        pool.insert(tx("more"), at(1, 0, 90)).unwrap();
        // At the lowest priorities, one unit more.
        pool.insert(tx("low"), at(2, 0, 0)).unwrap();
        pool.insert(tx("lower"), at(2, 0, 1)).unwrap();
        assert!(!outbid(u64::MAX, u64::MAX) && outbid(u64::MAX, u64::MAX / 9 * 8));
        let other = Placement::alone(b"x");
        pool.insert(tx("x"), other).unwrap();
        assert_eq!(
            pool.insert(tx("x"), other),
            Err(SubmitError::Duplicate(0)),
            "the same bytes twice wait once"
        );
        assert_eq!(pool.bytes(), 3 * MIN_TRANSACTION_COST);
        assert_eq!(all(&mut pool), ["more", "lower", "x"]);
    }

    #[test]
    fn a_full_pool_refuses_and_keeps_what_it_holds() {
        let mut pool = Mempool::new(2 * MIN_TRANSACTION_COST);
        pool.insert(tx("a"), at(1, 0, 1)).unwrap();
        pool.insert(tx("b"), at(2, 0, 1)).unwrap();
        assert!(!pool.has_room());
        assert_eq!(
            pool.insert(tx("rich"), at(3, 0, 1_000)),
            Err(SubmitError::Full(2 * MIN_TRANSACTION_COST))
        );
        assert_eq!(
            pool.insert(vec![0; MAX_TRANSACTION_BYTES + 1], at(4, 0, 1)),
            Err(SubmitError::TooLarge(MAX_TRANSACTION_BYTES + 1))
        );
        // Replacing keeps the size: room is found.
        pool.insert(tx("a again"), at(1, 0, 2)).unwrap();
        assert_eq!(all(&mut pool), ["a again", "b"]);
    }

    #[test]
    fn a_proposal_takes_what_fits_and_stops_at_the_first_that_does_not() {
        let mut pool = Mempool::new(1 << 20);
        pool.insert(vec![1; 100], at(1, 0, 3)).unwrap();
        pool.insert(vec![2; 300], at(2, 0, 2)).unwrap();
        pool.insert(vec![3; 10], at(3, 0, 1)).unwrap();
        assert_eq!(pool.take(usize::MAX, 350), [vec![1; 100]]);
        assert_eq!(pool.take(1, usize::MAX), [vec![2; 300]]);
        assert_eq!(pool.take(5, 10), [vec![3; 10]]);
        assert_eq!(pool.bytes(), 0);
    }

    proptest! {
        /// Whatever arrives, everything kept comes out once, each lane in
        /// sequence order, and each proposal's first transaction is the
        /// best lane head there was.
        #[test]
        fn every_kept_transaction_comes_out_once_and_lanes_stay_in_order(
            arrivals in proptest::collection::vec((0u8..4, 0u64..6, 0u64..4), 0..60),
            batch in 1usize..5,
        ) {
            let mut pool = Mempool::new(1 << 20);
            let mut kept = BTreeMap::new();
            for (i, &(lane, sequence, priority)) in arrivals.iter().enumerate() {
                let bytes = format!("{lane} {sequence} {i}").into_bytes();
                if pool.insert(bytes.clone(), at(lane, sequence, priority)).is_ok() {
                    kept.insert((lane, sequence), (priority, bytes));
                }
            }
            let mut out = Vec::new();
            loop {
                let best = pool.heads.first_key_value().map(|(rank, _)| rank.0.0);
                let taken = pool.take(batch, usize::MAX);
                if taken.is_empty() {
                    break;
                }
                let first: Vec<u64> = String::from_utf8(taken[0].clone()).unwrap()
                    .split(' ').map(|n| n.parse().unwrap()).collect();
                let priority = kept[&(first[0] as u8, first[1])].0;
                prop_assert_eq!(Some(priority), best);
                out.extend(taken);
            }
            prop_assert_eq!(pool.bytes(), 0);
            let mut expected: Vec<Vec<u8>> = kept.values().map(|(_, b)| b.clone()).collect();
            let mut got = out.clone();
            expected.sort();
            got.sort();
            prop_assert_eq!(got, expected);
            for lane in 0..4u8 {
                let sequences: Vec<u64> = out.iter()
                    .map(|t| String::from_utf8(t.clone()).unwrap())
                    .filter(|t| t.starts_with(&format!("{lane} ")))
                    .map(|t| t.split(' ').nth(1).unwrap().parse().unwrap())
                    .collect();
                prop_assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{:?}", sequences);
            }
        }
    }
}
