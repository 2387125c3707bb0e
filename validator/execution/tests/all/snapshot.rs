//! The state's digest, which every root folds in, follows each commit's
//! writes: recomputed from every entry the state holds, it is the same after
//! jobs are submitted, computed, attested and decided, and after a restart;
//! an entry changed behind the executor's back is caught. A snapshot of the
//! state restores elsewhere to the same root and goes on in step; one that
//! does not hash to the root vouched for restores nothing.

use super::*;
use soma_execution::ExecutionError;
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

#[test]
fn a_snapshot_restores_to_the_same_root_and_goes_on_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let (g, runner, mut ex, jobs) = decided_state(dir.path());
    let snapshot = ex.snapshot().unwrap();
    let copy = dir.path().join("copy");
    let mut restored = Executor::restore(&copy, &g, None, &snapshot, ex.root()).unwrap();
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
fn a_snapshot_that_is_not_the_vouched_for_state_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _, ex, _) = decided_state(dir.path());
    let snapshot = ex.snapshot().unwrap();
    let root = ex.root();
    let copy = dir.path().join("copy");
    let refused = |bytes: &[u8], trusted: [u8; 32]| {
        let err = Executor::restore(&copy, &g, None, bytes, trusted)
            .err()
            .unwrap();
        assert!(!copy.exists(), "a state was left behind: {err}");
        err
    };

    // Another root than the one vouched for.
    let err = refused(&snapshot, [7; 32]);
    assert!(err.to_string().contains("not the root"), "{err}");
    // One byte of one entry's value changed (the last byte of the
    // snapshot is the last entry's value's): the entries no longer make
    // the root.
    let mut forged = snapshot.clone();
    *forged.last_mut().unwrap() ^= 1;
    let err = refused(&forged, root);
    assert!(err.to_string().contains("are not the state root"), "{err}");
    // Cut short, or not a snapshot at all.
    let err = refused(&snapshot[..snapshot.len() - 1], root);
    assert!(matches!(err, ExecutionError::Snapshot(_)), "{err}");
    let err = refused(b"SOMASNv2", root);
    assert!(
        err.to_string().contains("not a Soma state snapshot"),
        "{err}"
    );
    // Another network's genesis.
    let other = variant(&g, "other", Parameters::default());
    let err = Executor::restore(&copy, &other, None, &snapshot, root)
        .err()
        .unwrap();
    assert!(matches!(err, ExecutionError::WrongGenesis { .. }), "{err}");
    // Never over a state that exists.
    let err = Executor::restore(&dir.path().join("state"), &g, None, &snapshot, root)
        .err()
        .unwrap();
    assert!(err.to_string().contains("exists"), "{err}");
    // A state with nothing applied has no snapshot to give.
    let fresh = open(&dir.path().join("fresh"), &g);
    assert!(matches!(fresh.snapshot(), Err(ExecutionError::Snapshot(_))));
}
