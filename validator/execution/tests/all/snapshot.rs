//! The state's digest, which every root folds in, follows each commit's
//! writes: recomputed from every entry the state holds, it is the same after
//! jobs are submitted, computed, attested and decided, and after a restart;
//! an entry changed behind the executor's back is caught. A snapshot of the
//! state, pinned at one commit while apply goes on, restores elsewhere page
//! by page to the same root and goes on in step; one that does not hash to
//! the root vouched for, or whose pages do not follow one another, restores
//! nothing.

use super::*;
use soma_execution::{ExecutionError, MAX_SNAPSHOT_PAGE, PinnedState};
use soma_host::Engine;

/// A network of two hash encoders and the random one, with two jobs
/// submitted and decided in the state at `dir/state`.
fn decided_state(dir: &Path) -> (Genesis, JobRunner, Executor, Vec<Digest>) {
    let store = BlobStore::open(dir.join("blobs")).unwrap();
    let hash_a = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 10);
    let hash_b = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 11);
    let random = example_package(
        soma_examples_artifacts::RANDOM_ENCODER,
        "random-encoder",
        12,
    );
    let g = encoder_network(
        &store,
        &[(&hash_a, 10), (&hash_b, 11), (&random, 12)],
        Parameters::default(),
    );
    let mut ex = open(&dir.join("state"), &g);
    ex.verify_state().unwrap();
    let runner = JobRunner::new(Engine::new().unwrap(), store, None);
    let jobs = submit_all(&mut ex, &g, &[b"a first sentence", b"and a second one"]);
    ex.verify_state().unwrap();
    let decided = decide_all(&mut ex, &g, &runner, &jobs);
    // Slashes, rewards and routing scores were written, and the jobs'
    // deadlines deleted.
    let slashed = |f: &soma_execution::Finalisation| f.encoders.iter().any(|e| e.slashed > 0);
    assert!(decided.iter().any(slashed));
    (g, runner, ex, jobs)
}

#[test]
fn the_state_digest_follows_every_write_and_catches_a_changed_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _, ex, _) = decided_state(dir.path());
    let state = dir.path().join("state");
    ex.verify_state().unwrap();
    let root = ex.root();
    drop(ex);
    let ex = open(&state, &g);
    assert_eq!(ex.root(), root);
    ex.verify_state().unwrap();
    drop(ex);

    // One account's balance raised on disk, as a corrupt or forged copy of
    // the state would have it.
    {
        let db = fjall::Database::builder(&state).open().unwrap();
        let accounts = db
            .keyspace("accounts", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let key = public(SUBMITTER).to_bytes();
        let mut account = accounts.get(key).unwrap().unwrap().to_vec();
        account[7] ^= 0x40;
        accounts.insert(key, account).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let ex = open(&state, &g);
    let err = ex.verify_state().unwrap_err();
    assert!(err.to_string().contains("entries hash to"), "{err}");
}

/// Entries a test page is cut after: small, so that a state of a few jobs
/// takes many pages.
const TEST_PAGE: usize = 256;

/// Restores `pinned` at `path` a page of [`TEST_PAGE`] at a time, trusting
/// `root`; the pages it took.
fn restore_pages(
    path: &Path,
    g: &Genesis,
    pinned: &PinnedState,
    root: [u8; 32],
) -> Result<(Executor, usize), ExecutionError> {
    let first = pinned.page(None, TEST_PAGE).unwrap();
    let mut pages = 1;
    let restored = Executor::restore(path, g, None, root, &first, TEST_PAGE, |after| {
        pages += 1;
        pinned.page(Some(after), TEST_PAGE)
    })?;
    Ok((restored, pages))
}

#[test]
fn a_snapshot_restores_page_by_page_to_the_same_root_and_goes_on_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let (g, runner, mut ex, jobs) = decided_state(dir.path());
    let copy = dir.path().join("copy");
    let (mut restored, pages) = restore_pages(&copy, &g, &ex.pin().unwrap(), ex.root()).unwrap();
    assert!(pages > 5, "{pages} pages");
    assert_eq!(
        (restored.root(), restored.next_index()),
        (ex.root(), ex.next_index())
    );
    restored.verify_state().unwrap();
    for id in &jobs {
        assert_eq!(restored.job(id).unwrap(), ex.job(id).unwrap());
    }
    assert_eq!(
        restored.account(&public(SUBMITTER)).unwrap(),
        ex.account(&public(SUBMITTER)).unwrap()
    );
    // The whole state in one page restores alike.
    let pinned = ex.pin().unwrap();
    let whole = pinned.page(None, usize::MAX).unwrap();
    let once = dir.path().join("once");
    let never = |_: &[u8]| Err::<Vec<u8>, &str>("asked for a second page");
    let at_once = Executor::restore(&once, &g, None, ex.root(), &whole, usize::MAX, never).unwrap();
    assert_eq!(at_once.root(), ex.root());
    drop((at_once, pinned));
    // The next commits (a new job, decided) give the same roots on both.
    let more = submit_all(&mut ex, &g, &[b"a third"]);
    assert_eq!(submit_all(&mut restored, &g, &[b"a third"]), more);
    decide_all(&mut ex, &g, &runner, &more);
    decide_all(&mut restored, &g, &runner, &more);
    assert_eq!(restored.root(), ex.root());
    // And it restarts as any state does.
    let root = restored.root();
    drop(restored);
    assert_eq!(open(&copy, &g).root(), root);
}

#[test]
fn a_pinned_state_gives_the_state_of_its_commit_while_apply_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (g, runner, mut ex, _) = decided_state(dir.path());
    let (root, commits) = (ex.root(), ex.next_index());
    let pinned = ex.pin().unwrap();
    assert_eq!(pinned.commits(), commits);
    // Apply goes on: a job is submitted and decided, which rewrites
    // accounts, encoders and jobs the pinned pages hold.
    let more = submit_all(&mut ex, &g, &[b"written after the pin"]);
    decide_all(&mut ex, &g, &runner, &more);
    assert_ne!(ex.root(), root);
    let copy = dir.path().join("copy");
    let (restored, _) = restore_pages(&copy, &g, &pinned, root).unwrap();
    assert_eq!((restored.root(), restored.next_index()), (root, commits));
    restored.verify_state().unwrap();
    assert!(restored.job(&more[0]).unwrap().is_none());
}

/// Bytes of a page before its entries: magic, chain id, root, the step
/// that made the root, the lanes' digest, and the state's size.
const HEADER: usize = 8 + 32 + 32 + 136 + 32 + 16;

#[test]
fn a_snapshot_that_is_not_the_vouched_for_state_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _, mut ex, _) = decided_state(dir.path());
    let pinned = ex.pin().unwrap();
    let root = ex.root();
    let first = pinned.page(None, TEST_PAGE).unwrap();
    let copy = dir.path().join("copy");
    let refused = |first: &[u8], trusted: [u8; 32], next: &mut dyn FnMut(&[u8]) -> Vec<u8>| {
        let err = Executor::restore(&copy, &g, None, trusted, first, TEST_PAGE, |after| {
            Ok::<_, ExecutionError>(next(after))
        })
        .err()
        .unwrap();
        assert!(!copy.exists(), "a state was left behind: {err}");
        assert!(
            !dir.path().join("copy.partial").exists(),
            "a partial state was left behind: {err}"
        );
        err
    };
    let honest = |after: &[u8]| pinned.page(Some(after), TEST_PAGE).unwrap();

    // Another root than the one vouched for.
    let err = refused(&first, [7; 32], &mut |a| honest(a));
    assert!(err.to_string().contains("not the root"), "{err}");
    // A header that claims another size than the root binds.
    let mut resized = first.clone();
    resized[HEADER - 16] ^= 1;
    let err = refused(&resized, root, &mut |a| honest(a));
    assert!(err.to_string().contains("does not make the root"), "{err}");
    // One byte of one entry's value changed in the third page (its byte
    // before the last is its last entry's value's): the entries no longer
    // make the root.
    let mut pages = 0;
    let err = refused(&first, root, &mut |after| {
        let mut page = honest(after);
        pages += 1;
        if pages == 2 {
            let at = page.len() - 2;
            page[at] ^= 1;
        }
        page
    });
    assert!(err.to_string().contains("are not the state root"), "{err}");
    // A page skipped: what follows goes on after it, but the entries in
    // it are missing at the end.
    let all: Vec<Vec<u8>> = pinned.pages(TEST_PAGE).map(Result::unwrap).collect();
    assert_eq!(all[0], first);
    let mut rest = all[1..].iter().enumerate().filter(|(i, _)| *i != 2);
    let err = refused(&first, root, &mut |_| rest.next().unwrap().1.clone());
    assert!(err.to_string().contains("are not the state root"), "{err}");
    // A page sent twice: the next page must go on after the last entry.
    let err = refused(&first, root, &mut |_| first.clone());
    assert!(err.to_string().contains("does not go on"), "{err}");
    // Pages cut short, or past the largest a page may be.
    let err = refused(&first, root, &mut |a| {
        pinned.page(Some(a), TEST_PAGE / 4).unwrap()
    });
    assert!(err.to_string().contains("not cut at"), "{err}");
    let err = refused(&first, root, &mut |_| vec![0; MAX_SNAPSHOT_PAGE + 1]);
    assert!(err.to_string().contains("a page may be"), "{err}");
    // A page of another snapshot: the state pinned after one more commit.
    submit_all(&mut ex, &g, &[b"one more"]);
    let later = ex.pin().unwrap();
    let err = refused(&first, root, &mut |a| {
        later.page(Some(a), TEST_PAGE).unwrap()
    });
    assert!(err.to_string().contains("different snapshots"), "{err}");
    // The same pages under the first header: they hold more than the
    // vouched root says, and are refused as soon as they do.
    let mut more_pages = 0;
    let err = refused(&first, root, &mut |a| {
        more_pages += 1;
        let mut page = first[..HEADER].to_vec();
        page.extend_from_slice(&later.page(Some(a), TEST_PAGE).unwrap()[HEADER..]);
        page
    });
    assert!(err.to_string().contains("hold more than"), "{err}");
    assert!(more_pages > 1);
    // The peer goes away part way.
    let err = Executor::restore(&copy, &g, None, root, &first, TEST_PAGE, |_| {
        Err::<Vec<u8>, _>("connection reset")
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert!(!copy.exists() && !dir.path().join("copy.partial").exists());
    // Cut short, or not a snapshot at all.
    let err = refused(&first[..first.len() - 1], root, &mut |a| honest(a));
    assert!(matches!(err, ExecutionError::Snapshot(_)), "{err}");
    // Or of a format before this one (v2 carried attestations whole).
    for magic in [b"SOMASNv1", b"SOMASNv2"] {
        let err = refused(magic, root, &mut |a| honest(a));
        assert!(
            err.to_string().contains("not a Soma state snapshot"),
            "{err}"
        );
    }
    // Another network's genesis.
    let other = variant(&g, "other", Parameters::default());
    let err = Executor::restore(&copy, &other, None, root, &first, TEST_PAGE, |a| {
        pinned.page(Some(a), TEST_PAGE)
    })
    .err()
    .unwrap();
    assert!(matches!(err, ExecutionError::WrongGenesis { .. }), "{err}");
    // Never over a state that exists.
    let state = dir.path().join("state");
    let err = Executor::restore(&state, &g, None, root, &first, TEST_PAGE, |a| {
        pinned.page(Some(a), TEST_PAGE)
    })
    .err()
    .unwrap();
    assert!(
        matches!(err, ExecutionError::State(_)) && err.to_string().contains("only where"),
        "{err}"
    );
    // A cursor that could name no entry of a state (empty, in a keyspace
    // past the last, number 8, or too long) is refused by the peer.
    for cursor in [&b""[..], &[9, 1, 2][..], &[0; 258][..]] {
        let err = pinned.page(Some(cursor), TEST_PAGE).unwrap_err();
        assert!(matches!(err, ExecutionError::Snapshot(_)), "{err}");
    }
    // A state with nothing applied has no snapshot to give.
    let fresh = open(&dir.path().join("fresh"), &g);
    assert!(matches!(fresh.pin(), Err(ExecutionError::Snapshot(_))));
}

#[test]
fn a_state_written_before_roots_folded_in_its_size_is_upgraded_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _, ex, _) = decided_state(dir.path());
    let (root, commits) = (ex.root(), ex.next_index());
    drop(ex);
    let state = dir.path().join("state");
    let lattice_record = |change: &dyn Fn(&[u8]) -> Vec<u8>| {
        let db = fjall::Database::builder(&state).open().unwrap();
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let lattice = meta.get("lattice").unwrap().unwrap();
        meta.insert("lattice", change(&lattice)).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    };
    // The old record, the lanes alone, with one lane changed: it is
    // neither, and the state does not open.
    lattice_record(&|lattice| {
        let mut lanes = lattice[..2048].to_vec();
        lanes[0] ^= 1;
        lanes
    });
    let err = Executor::open(&state, &g, None).err().unwrap();
    assert!(err.to_string().contains("neither of this version"), "{err}");
    // The old record as it was (that lane changed back): upgraded, and
    // the state goes on.
    lattice_record(&|lattice| {
        let mut lanes = lattice[..2048].to_vec();
        lanes[0] ^= 1;
        lanes
    });
    let ex = open(&state, &g);
    assert_eq!((ex.root(), ex.next_index()), (root, commits));
    ex.verify_state().unwrap();
}
