//! State snapshots, as a peer could send them to `soma restore-state`, on
//! arbitrary bytes: never a panic. The input is a sequence of pages, each
//! behind its length (a little-endian `u32`), cut at a small size so that
//! the seeds span many pages: the first is the first page, and each page
//! asked for after it is the next. The check trusts the root the first
//! page claims (restore is told to), so the fuzzer reaches everything past
//! the quorum's vouching: a snapshot restores only if its pages follow one
//! another, are cut as the protocol cuts them, hold no more than the root
//! says, and hash to that root, and never by half. A refused one leaves no
//! state behind; a restored one verifies, has the claimed root, and, if it
//! used every page, snapshots back to the same pages.

use crate::apply::genesis;
use soma_codec::Encode;
use soma_execution::{Action, Commit, Executor, Parameters, PinnedState, Transaction};

/// Bytes a page is cut at.
const PAGE: usize = 128;

/// The pages of an input, each behind its length; what cannot be a page
/// ends them.
fn pages(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut pages = Vec::new();
    while let Some((length, rest)) = bytes.split_first_chunk::<4>() {
        let length = u32::from_le_bytes(*length) as usize;
        if length > rest.len() {
            break;
        }
        let (page, rest) = rest.split_at(length);
        pages.push(page);
        bytes = rest;
    }
    pages
}

/// The pages of `pinned`, cut at [`PAGE`], each behind its length.
fn paged(pinned: &PinnedState) -> Vec<u8> {
    let mut input = Vec::new();
    for page in pinned.pages(PAGE) {
        let page = page.expect("a page");
        input.extend((page.len() as u32).to_le_bytes());
        input.extend(page);
    }
    input
}

/// Checks one input.
pub fn check(bytes: &[u8]) {
    restores(bytes);
}

/// Checks one input; whether it restored.
fn restores(bytes: &[u8]) -> bool {
    let pages = pages(bytes);
    let Some(first) = pages.first() else {
        return false;
    };
    let Ok(claim) = Executor::snapshot_claim(first) else {
        return false;
    };
    let (commits, root) = (claim.commits, claim.root);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("state");
    let mut later = pages[1..].iter();
    let mut used = 1;
    let next = |_: &[u8]| {
        used += 1;
        later
            .next()
            .map(|page| page.to_vec())
            .ok_or("no more pages")
    };
    match Executor::restore(&path, genesis(), None, root, first, PAGE, next) {
        Err(_) => {
            assert!(!path.exists(), "a refused snapshot left a state behind");
            let partial = dir.path().join("state.partial");
            assert!(!partial.exists(), "a refused snapshot left a partial state");
            false
        }
        Ok(restored) => {
            restored.verify_state().expect("a restored state verifies");
            assert_eq!((restored.next_index(), restored.root()), (commits, root));
            if used == pages.len() {
                let pinned = restored.pin().expect("a restored state has a snapshot");
                let canonical = paged(&pinned);
                assert_eq!(
                    pages,
                    self::pages(&canonical),
                    "snapshot decoding is not canonical"
                );
            }
            true
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
                proposers: None,
            })
            .expect("the commit applies");
        seeds.push(paged(&executor.pin().expect("a pinned state")));
    }
    seeds
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seeds_restore_from_several_pages() {
        for seed in super::seeds() {
            assert!(super::pages(&seed).len() > 1);
            assert!(super::restores(&seed));
        }
    }
}
