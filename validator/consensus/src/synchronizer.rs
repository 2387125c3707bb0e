//! Fetches what a node lacks from its peers: the missing parents of
//! suspended blocks, or, for a node far behind the committee, whole rounds
//! replayed from a peer's store (catch-up). Answers are checked before they
//! reach the core: only blocks that were asked for are kept, and each is
//! verified off the async threads.

use crate::block::{BlockRef, Round, SignedBlock};
use crate::block_verifier::{self, Fresh, Verdict};
use crate::committee::{AuthorityIndex, Committee, StakeAggregator};
use crate::core::Core;
use crate::network::{self, FetchRequest, RoundsRequest};
use crate::node::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::StatusCode;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// How often a node asks a peer for what it still lacks.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Most fetches in flight at once; more wait for the next tick.
const MAX_FETCHES: usize = 8;

/// Most fetches in flight to one peer: a peer that stalls its answers
/// (pushing blocks with made-up parents to be asked for them) holds at
/// most this many of [`MAX_FETCHES`]. (With fewer than nine peers,
/// [`MAX_FETCHES`] is never the limit.)
const PEER_FETCHES: usize = 1;

/// How long one request and its answer may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's outgoing fetches.
pub(crate) struct Synchronizer {
    shared: Arc<Shared>,
    /// References asked for and not answered yet: never asked twice at once.
    in_flight: Arc<Mutex<BTreeSet<BlockRef>>>,
    fetches: Arc<Semaphore>,
    /// Fetches in flight per peer.
    per_peer: PeerSlots,
    /// Whether a rounds request is out: one at a time.
    catching_up: Arc<AtomicBool>,
    /// The peer asked last by the periodic sync; peers are asked in turn.
    turn: u32,
}

impl Synchronizer {
    pub(crate) fn new(shared: Arc<Shared>) -> Synchronizer {
        let turn = shared.authority.0;
        let peers = shared.committee.size();
        Synchronizer {
            shared,
            in_flight: Arc::default(),
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            per_peer: PeerSlots::new(peers, PEER_FETCHES),
            catching_up: Arc::default(),
            turn,
        }
    }

    /// The periodic step: asks the next peer for missing parents, and a
    /// node far behind asks another for the rounds after its DAG. The
    /// peer that sent a block may not be able (or willing) to serve its
    /// history, and honest peers drop history in time, so peers are asked
    /// in turn.
    pub(crate) fn tick(&mut self, core: &Core) {
        let missing = core.missing();
        if !missing.is_empty() {
            let peer = self.next_peer();
            self.fetch(peer, core.fetch_request(missing));
        }
        let Some(from) = core.catch_up_from() else {
            return;
        };
        if self.catching_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let peer = self.next_peer();
        let done = self.catching_up.clone();
        let shared = self.shared.clone();
        shared
            .metrics
            .catch_up_requests
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let request = RoundsRequest { from };
            let body = Bytes::from(request.encode());
            let answered = Arc::new(std::sync::OnceLock::new());
            let beyond = answered.clone();
            let blocks = ask(&shared, peer, network::ROUNDS_PATH, body, move |answer| {
                let _ = beyond.set(request.beyond_retention(&answer));
                request.select(answer)
            })
            .await;
            let gap = &shared.retention_gap;
            gap.report(
                &shared.committee,
                shared.authority,
                peer,
                from,
                answered.get().copied(),
            );
            block_verifier::deliver(blocks).await;
            done.store(false, Ordering::Release);
        });
    }

    /// Asks `peer` for the blocks of `request` not already asked for.
    pub(crate) fn fetch(&self, peer: AuthorityIndex, mut request: FetchRequest) {
        // Both are given back when the fetch ends; without them the
        // periodic sync asks again.
        let Some(slot) = self.per_peer.take(peer) else {
            return;
        };
        let Ok(permit) = self.fetches.clone().try_acquire_owned() else {
            return;
        };
        {
            let mut in_flight = lock(&self.in_flight);
            request.references.retain(|r| !in_flight.contains(r));
            // Only what goes out is in flight.
            request.references.truncate(network::MAX_FETCH_REFERENCES);
            in_flight.extend(request.references.iter().copied());
        }
        if request.references.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let in_flight = self.in_flight.clone();
        tokio::spawn(async move {
            let asked = request.references.clone();
            let body = Bytes::from(request.encode());
            let blocks = ask(&shared, peer, network::FETCH_PATH, body, move |answer| {
                request.select(answer)
            })
            .await;
            block_verifier::deliver(blocks).await;
            let mut in_flight = lock(&in_flight);
            for reference in &asked {
                in_flight.remove(reference);
            }
            drop((permit, slot));
        });
    }

    fn next_peer(&mut self) -> AuthorityIndex {
        let n = self.shared.committee.size() as u32;
        self.turn = (self.turn + 1) % n;
        if self.turn == self.shared.authority.0 {
            self.turn = (self.turn + 1) % n;
        }
        AuthorityIndex(self.turn)
    }
}

/// A count of what is in flight per peer, each under a cap.
#[derive(Clone)]
struct PeerSlots {
    taken: Arc<Vec<AtomicUsize>>,
    cap: usize,
}

/// One of a peer's slots, given back when dropped.
struct PeerSlot {
    slots: PeerSlots,
    peer: usize,
}

impl PeerSlots {
    fn new(peers: usize, cap: usize) -> PeerSlots {
        PeerSlots {
            taken: Arc::new((0..peers).map(|_| AtomicUsize::new(0)).collect()),
            cap,
        }
    }

    /// A slot of `peer`'s, if it has one free.
    fn take(&self, peer: AuthorityIndex) -> Option<PeerSlot> {
        let peer = peer.0 as usize;
        let taken = self.taken.get(peer)?;
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .ok()?;
        Some(PeerSlot {
            slots: self.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.slots.taken[self.peer].fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What peers answered to this node's rounds requests from one round,
/// and the verdict once it cannot catch up by replaying rounds: every peer
/// was asked, none served the rounds after it, and peers of more than f
/// stake (so at least one honest one) answered without them.
#[derive(Default)]
pub(crate) struct RetentionGap {
    reports: Mutex<GapReports>,
    verdict: watch::Sender<Option<Round>>,
}

/// The answers to rounds requests from `from`.
#[derive(Default)]
struct GapReports {
    from: Round,
    asked: BTreeSet<AuthorityIndex>,
    beyond: BTreeSet<AuthorityIndex>,
    served: bool,
}

impl RetentionGap {
    /// Records `peer`'s answer to a rounds request from `from`: whether it
    /// lacked the rounds this node (`me`) needs next, or `None` if it did
    /// not answer.
    fn report(
        &self,
        committee: &Committee,
        me: AuthorityIndex,
        peer: AuthorityIndex,
        from: Round,
        beyond: Option<bool>,
    ) {
        let mut reports = lock(&self.reports);
        if reports.from != from {
            *reports = GapReports {
                from,
                ..GapReports::default()
            };
        }
        reports.asked.insert(peer);
        match beyond {
            Some(true) => {
                reports.beyond.insert(peer);
            }
            Some(false) => reports.served = true,
            None => {}
        }
        let mut stake = StakeAggregator::new();
        for &peer in &reports.beyond {
            stake.add(peer, committee);
        }
        let everyone_asked = committee
            .authorities()
            .all(|a| a == me || reports.asked.contains(&a));
        if everyone_asked && !reports.served && stake.reached_validity(committee) {
            self.verdict.send_replace(Some(from));
        }
    }

    /// Waits for the verdict: the round after which this node cannot
    /// replay rounds from its peers.
    pub(crate) async fn confirmed(&self) -> Round {
        let mut verdict = self.verdict.subscribe();
        let found = verdict
            .wait_for(Option::is_some)
            .await
            .map(|v| v.unwrap_or_default());
        match found {
            Ok(round) => round,
            // The sender lives as long as this; no verdict ever comes.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Sends `body` to `path` of `peer` and returns the new blocks of the
/// answer that `select` keeps, verified. Whatever is malformed, invalid or
/// not asked for is counted as refused.
async fn ask(
    shared: &Arc<Shared>,
    peer: AuthorityIndex,
    path: &str,
    body: Bytes,
    select: impl FnOnce(Vec<SignedBlock>) -> (Vec<SignedBlock>, usize) + Send + 'static,
) -> Vec<Fresh> {
    let Some(response) = shared.client.post(peer, path, body, FETCH_TIMEOUT).await else {
        return Vec::new();
    };
    if response.status() != StatusCode::OK {
        return Vec::new();
    }
    let body = Limited::new(response.into_body(), network::MAX_FETCH_ANSWER).collect();
    let Ok(Ok(body)) = tokio::time::timeout(FETCH_TIMEOUT, body).await else {
        shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
        return Vec::new();
    };
    let body = body.to_bytes();
    let checker = shared.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let Ok(wires) = network::decode_blocks(&body) else {
            return (Vec::new(), 1);
        };
        let sent = wires.len();
        let decoded = wires
            .into_iter()
            .filter_map(|wire| SignedBlock::decode(wire).ok())
            .collect::<Vec<_>>();
        let mut refused = sent - decoded.len();
        let (wanted, left_out) = select(decoded);
        refused += left_out;
        let mut verified = Vec::new();
        for block in wanted {
            match checker.blocks.verify(block, Some(peer)) {
                Ok(Verdict::New(block)) => verified.push(block),
                Ok(Verdict::Seen) => {}
                Err(_) => refused += 1,
            }
        }
        (verified, refused)
    })
    .await;
    let (blocks, refused) = checked.unwrap_or_default();
    shared
        .metrics
        .refused
        .fetch_add(refused as u64, Ordering::Relaxed);
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::committee::tests::committee;

    #[test]
    fn a_retention_gap_is_confirmed_only_when_every_peer_was_asked_and_none_served() {
        let (c, _) = committee(&[1, 1, 1, 1]);
        let (me, peer) = (AuthorityIndex(0), AuthorityIndex);
        let verdict = |gap: &RetentionGap| *gap.verdict.borrow();
        let gap = RetentionGap::default();
        gap.report(&c, me, peer(1), 40, Some(true));
        gap.report(&c, me, peer(2), 40, Some(true));
        assert_eq!(verdict(&gap), None, "validator 3 was not asked yet");
        // Asked again from a later round: the earlier answers do not count.
        gap.report(&c, me, peer(3), 41, None);
        assert_eq!(verdict(&gap), None);
        gap.report(&c, me, peer(1), 41, Some(true));
        gap.report(&c, me, peer(2), 41, None);
        assert_eq!(verdict(&gap), None, "one peer alone may be Byzantine");

        // A peer that serves the rounds means replay can go on.
        let served = RetentionGap::default();
        for (p, beyond) in [(1, Some(true)), (2, Some(false)), (3, Some(true))] {
            served.report(&c, me, peer(p), 40, beyond);
        }
        assert_eq!(verdict(&served), None);

        gap.report(&c, me, peer(3), 41, Some(true));
        assert_eq!(verdict(&gap), Some(41));
    }

    #[test]
    fn a_peer_holds_at_most_its_slots_and_gets_them_back() {
        let slots = PeerSlots::new(3, 1);
        let first = slots.take(AuthorityIndex(1)).unwrap();
        assert!(
            slots.take(AuthorityIndex(1)).is_none(),
            "its one slot is taken"
        );
        assert!(
            slots.take(AuthorityIndex(2)).is_some(),
            "others are not held up"
        );
        assert!(slots.take(AuthorityIndex(3)).is_none(), "no such peer");
        drop(first);
        assert!(slots.take(AuthorityIndex(1)).is_some());
    }
}
