//! The one task that owns a node's [`Core`]: it takes verified blocks and
//! submitted transactions in, runs the leader timer, and hands what each
//! step produced to the broadcaster, the synchronizer and the commit
//! stream. Nothing slow runs here: blocks arrive verified, and fetches are
//! served from the store by the authority service.

use crate::block::VerifiedBlock;
use crate::broadcaster::Broadcaster;
use crate::committee::AuthorityIndex;
use crate::core::{Core, Outcome};
use crate::linearizer::CommittedSubDag;
use crate::mempool::{Placement, SubmitError, transaction_cost};
use crate::node::{NodeError, Shared, submit};
use crate::synchronizer::{SYNC_INTERVAL, Synchronizer};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// What other tasks ask of the core.
pub(crate) enum Command {
    /// Verified blocks, from a peer if `from` is set.
    Blocks {
        blocks: Vec<VerifiedBlock>,
        from: Option<AuthorityIndex>,
    },
}

/// The core task's clocks.
pub(crate) struct Timing {
    /// How long to wait for a round's leader once the round has a quorum.
    pub(crate) leader_timeout: Duration,
    /// The shortest time between two of this node's blocks.
    pub(crate) min_round_delay: Duration,
}

/// The core task's channels.
pub(crate) struct Channels {
    pub(crate) inbox: mpsc::Receiver<Command>,
    pub(crate) submitted: mpsc::Receiver<(Vec<u8>, Placement)>,
    pub(crate) commits: mpsc::UnboundedSender<CommittedSubDag>,
}

/// Runs the core until its inbox closes or storage fails.
pub(crate) async fn run(
    mut core: Core,
    mut channels: Channels,
    shared: Arc<Shared>,
    broadcaster: Broadcaster,
    mut synchronizer: Synchronizer,
    timing: Timing,
) -> Result<(), NodeError> {
    // At start the node acts as after a timeout: it proposes if it may, or
    // sends its last block again.
    let mut deadline = tokio::time::Instant::now();
    // While proposals are held, when they are let go.
    let mut release: Option<tokio::time::Instant> = None;
    let mut sync = tokio::time::interval(SYNC_INTERVAL);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        core.set_state_root(*shared.state_root.lock().unwrap_or_else(|e| e.into_inner()));
        // Held for good: nothing lets them go again.
        if shared.proposals_stopped.load(Ordering::Acquire) {
            core.hold_proposals();
            release = None;
        }
        let mempool =
            core.pending_transaction_bytes() + shared.queued_bytes.load(Ordering::Acquire);
        shared
            .metrics
            .mempool_bytes
            .store(mempool as u64, Ordering::Relaxed);
        // Submissions wait here until the core's pool has room for them.
        while core.has_room_for_transactions()
            && let Ok((transaction, placement)) = channels.submitted.try_recv()
        {
            shared
                .queued_bytes
                .fetch_sub(transaction_cost(&transaction), Ordering::AcqRel);
            match core.submit(transaction, placement) {
                Ok(()) => {}
                // A copy, or a resubmission that pays no more: what waits
                // already stands for it.
                Err(e @ SubmitError::Duplicate(_)) => {
                    tracing::debug!("submitted transaction not queued: {e}")
                }
                Err(e) => tracing::warn!("submitted transaction dropped: {e}"),
            }
        }
        let (outcome, from) = tokio::select! {
            command = channels.inbox.recv() => match command {
                None => return Ok(()),
                Some(Command::Blocks { blocks, from }) => (core.add_blocks(blocks)?, from),
            },
            _ = sync.tick() => {
                synchronizer.tick(&core);
                continue;
            }
            () = tokio::time::sleep_until(release.unwrap_or(deadline)), if release.is_some() => {
                release = None;
                (core.release_proposals()?, None)
            }
            () = tokio::time::sleep_until(deadline) => {
                let outcome = core.on_leader_timeout()?;
                if outcome.proposed.is_none()
                    && let Some(last) = core.last_proposed_block()
                {
                    // Nothing new to say: repeat the last block in case a
                    // peer missed it.
                    broadcaster.send(last);
                }
                deadline = tokio::time::Instant::now() + timing.leader_timeout;
                (outcome, None)
            }
        };
        let Outcome {
            proposed,
            committed,
            missing,
            dropped,
            quorum_round,
            uncommitted,
        } = outcome;
        let metrics = &shared.metrics;
        metrics
            .dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        // Copies of these must reach the core again if they are needed.
        shared.blocks.forget(&dropped);
        if let Some(block) = proposed {
            broadcaster.send(&block);
            if !timing.min_round_delay.is_zero() {
                core.hold_proposals();
                release = Some(tokio::time::Instant::now() + timing.min_round_delay);
            }
            metrics
                .last_proposed_round
                .store(block.reference().round.into(), Ordering::Relaxed);
        }
        if !uncommitted.is_empty() {
            resubmit(&shared, uncommitted);
        }
        // The wait for a round's leader starts when the round has a quorum.
        if quorum_round.is_some() {
            deadline = tokio::time::Instant::now() + timing.leader_timeout;
        }
        for subdag in committed {
            metrics.commits.fetch_add(1, Ordering::Relaxed);
            metrics
                .last_committed_round
                .store(subdag.leader.round.into(), Ordering::Relaxed);
            let transactions: usize = subdag
                .blocks
                .iter()
                .map(|b| b.block().transactions.len())
                .sum();
            metrics
                .committed_transactions
                .fetch_add(transactions as u64, Ordering::Relaxed);
            let _ = channels.commits.send(subdag);
        }
        // What the blocks a peer just sent lack, ask that peer first; a
        // validator far behind replays rounds instead (on the next tick).
        if let Some(peer) = from.filter(|_| !missing.is_empty())
            && core.catch_up_from().is_none()
        {
            synchronizer.fetch(peer, core.fetch_request(missing));
        }
    }
}

/// Submits the transactions of this node's uncommitted blocks again, off
/// the core task (the verifier checks signatures). The verifier decides
/// afresh against the state the node has applied: one whose sender's nonce
/// was used there is refused (one used by a commit not yet applied is
/// committed again, and refused by apply).
fn resubmit(shared: &Arc<Shared>, transactions: Vec<Vec<u8>>) {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let count = transactions.len();
        let admitted = transactions
            .into_iter()
            .map(|transaction| submit(&shared, transaction))
            .filter(Result::is_ok)
            .count();
        shared
            .metrics
            .resubmitted
            .fetch_add(count as u64, Ordering::Relaxed);
        tracing::info!(
            "{count} transactions of own blocks that were never committed submitted again; \
             {admitted} admitted"
        );
    });
}
