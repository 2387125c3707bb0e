//! State snapshots, as a peer could send them to `soma restore-state`, on
//! arbitrary bytes: never a panic. The input is the first page, and the
//! page after each later cursor is the same input again, so pages that do
//! not follow one another are reached too. The check trusts the root a
//! snapshot claims (restore is told to), so the fuzzer reaches everything
//! past the quorum's vouching: a snapshot restores only if its entries
//! hash to that root, and never by half. A refused one leaves no state
//! behind; a restored one verifies, has the claimed root, and its own
//! snapshot in one page is the same bytes.

use crate::apply::genesis;
use soma_codec::Encode;
use soma_execution::{Action, Commit, Executor, Parameters, Transaction};

/// Bytes a page is cut at: none, so a whole state is one page (and a
/// later page, being the input again, never goes on after the first).
const PAGE: usize = usize::MAX;

/// Checks one input.
pub fn check(bytes: &[u8]) {
    let Ok(claim) = Executor::snapshot_claim(bytes) else {
        return;
    };
    let (commits, root) = (claim.commits, claim.root);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("state");
    let again = |_: &[u8]| Ok::<_, &str>(bytes.to_vec());
    match Executor::restore(&path, genesis(), None, root, bytes, PAGE, again) {
        Err(_) => {
            assert!(!path.exists(), "a refused snapshot left a state behind");
            let partial = dir.path().join("state.partial");
            assert!(!partial.exists(), "a refused snapshot left a partial state");
        }
        Ok(restored) => {
            restored.verify_state().expect("a restored state verifies");
            assert_eq!((restored.next_index(), restored.root()), (commits, root));
            assert_eq!(
                restored
                    .pin()
                    .and_then(|pinned| pinned.page(None, PAGE))
                    .expect("a restored state has a snapshot"),
                bytes,
                "snapshot decoding is not canonical"
            );
        }
    }
}

/// Snapshots of the fuzz genesis after one and after two commits of
/// transfers.
pub fn seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let g = genesis();
    let mut executor = Executor::open(&dir.path().join("state"), g, None).expect("a new state");
    let transfer = |from: u8, nonce: u64, amount: u64| {
        Transaction {
            chain_id: g.chain_id(),
            sender: crate::key(from).public_key(),
            nonce,
            fee: Parameters::default().min_fee,
            action: Action::Transfer {
                to: crate::key(3).public_key(),
                amount,
            },
        }
        .sign(&crate::key(from))
        .to_bytes()
    };
    let mut seeds = Vec::new();
    for index in 0..2 {
        let transactions = vec![transfer(0, index, 5), transfer(1, index, 7)];
        executor
            .apply(Commit {
                index,
                digest: [index as u8; 32],
                transactions: &transactions,
            })
            .expect("the commit applies");
        let pinned = executor.pin().expect("a pinned state");
        seeds.push(pinned.page(None, PAGE).expect("a snapshot"));
    }
    seeds
}
