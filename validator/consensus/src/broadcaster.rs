//! Sends this validator's blocks to every peer, one ordered queue each.

use crate::block::VerifiedBlock;
use crate::committee::AuthorityIndex;
use crate::network::BLOCK_PATH;
use crate::node::Shared;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Blocks waiting to go to one peer; a peer that cannot keep up misses
/// the rest and fetches them later.
const QUEUE: usize = 256;

/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The per-peer queues of a node's outgoing blocks.
pub(crate) struct Broadcaster {
    peers: Vec<Option<mpsc::Sender<Bytes>>>,
}

/// Starts one sender task per peer.
pub(crate) fn start(shared: &Arc<Shared>) -> Broadcaster {
    let peers = shared
        .committee
        .authorities()
        .map(|peer| {
            (peer != shared.authority).then(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(send_to_peer(shared.clone(), peer, rx));
                tx
            })
        })
        .collect();
    Broadcaster { peers }
}

impl Broadcaster {
    /// Queues `block` for every peer without waiting.
    pub(crate) fn send(&self, block: &VerifiedBlock) {
        let bytes = Bytes::from(block.to_bytes());
        for peer in self.peers.iter().flatten() {
            let _ = peer.try_send(bytes.clone());
        }
    }
}

/// Sends this validator's blocks to one peer, in order.
async fn send_to_peer(
    shared: Arc<Shared>,
    peer: AuthorityIndex,
    mut blocks: mpsc::Receiver<Bytes>,
) {
    while let Some(block) = blocks.recv().await {
        match shared
            .client
            .post(peer, BLOCK_PATH, block, PUSH_TIMEOUT)
            .await
        {
            Some(response) => {
                // A peer that never finishes its answer holds up only its
                // own queue, and not for long.
                let _ = tokio::time::timeout(PUSH_TIMEOUT, response.into_body().collect()).await;
            }
            // A peer that is down misses the block; it fetches it later.
            None => tracing::debug!(peer = peer.0, "block not delivered"),
        }
    }
}
