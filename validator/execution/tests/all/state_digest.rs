//! The state's digest, which every root folds in, follows each commit's
//! writes: recomputed from every entry the state holds, it is the same after
//! jobs are submitted, computed, attested and decided, and after a restart;
//! an entry changed behind the executor's back is caught.

use super::*;
use soma_host::Engine;

#[test]
fn the_state_digest_follows_every_write_and_catches_a_changed_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
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
    let state = dir.path().join("state");
    let mut ex = open(&state, &g);
    ex.verify_state().unwrap();
    let runner = JobRunner::new(Engine::new().unwrap(), store, None);
    let jobs = submit_all(&mut ex, &g, &[b"a first sentence", b"and a second one"]);
    ex.verify_state().unwrap();
    let decided = decide_all(&mut ex, &g, &runner, &jobs);
    // Slashes, rewards and routing scores were written, and a job deleted
    // from the deadlines.
    assert!(
        decided
            .iter()
            .any(|f| f.encoders.iter().any(|e| e.slashed > 0))
    );
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
