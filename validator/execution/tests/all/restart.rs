//! A process killed (SIGKILL) while applying restarts to the root of the
//! last commit it wrote, and goes on to the same final root.

use super::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const COMMITS: u64 = 40;
const CHILD_DIR: &str = "SOMA_EXECUTION_TEST_CHILD_DIR";

/// Commit `k`: 100 transfers from account `k % 4`, nonces following on
/// from its earlier commits.
fn commit(g: &Genesis, k: u64) -> Vec<Vec<u8>> {
    let from = (k % 4) as u8;
    let base = (k / 4) * 100;
    (0..100)
        .map(|i| {
            let to = public((from + 1 + (i % 3) as u8) % 4);
            signed(
                g,
                from,
                base + i,
                10,
                Action::Transfer { to, amount: 1 + i },
            )
        })
        .collect()
}

/// Applies commits from wherever the state stands up to [`COMMITS`].
fn apply_rest(executor: &mut Executor, g: &Genesis) {
    while executor.next_index() < COMMITS {
        let k = executor.next_index();
        apply(executor, &commit(g, k));
    }
}

/// Run by the test below as a separate process, to be killed.
#[test]
#[ignore = "a child process of a_process_killed_while_applying_restarts_to_the_same_root"]
fn child_applies_commits() {
    let dir = std::env::var_os(CHILD_DIR).expect("run by its parent test");
    let g = genesis();
    apply_rest(&mut open(Path::new(&dir), &g), &g);
}

#[test]
fn a_process_killed_while_applying_restarts_to_the_same_root() {
    let g = genesis();
    let reference = tempfile::tempdir().unwrap();
    let mut ex = open(reference.path(), &g);
    let mut roots = vec![ex.root()];
    while ex.next_index() < COMMITS {
        let k = ex.next_index();
        roots.push(apply(&mut ex, &commit(&g, k)).root);
    }

    let dir = tempfile::tempdir().unwrap();
    let (mut kills, mut midway) = (0, 0);
    for delay_ms in [30, 90, 150, 250, 400, 600, 900] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "restart::child_applies_commits"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let ex = open(dir.path(), &g);
        let next = ex.next_index() as usize;
        midway += usize::from(0 < next && next < COMMITS as usize);
        assert_eq!(
            ex.root(),
            roots[next],
            "after a kill at {delay_ms} ms, commit {next}"
        );
    }
    assert!(
        kills > 0 && midway > 0,
        "no kill landed between the first commit and the last"
    );
    let mut ex = open(dir.path(), &g);
    apply_rest(&mut ex, &g);
    assert_eq!(ex.root(), roots[COMMITS as usize]);
}

/// A process killed while it first created its state leaves at most the
/// side directory the state is made in: the next start clears it and makes
/// the state whole.
#[test]
fn a_state_half_made_by_a_killed_first_start_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let half = path.with_extension("creating");
    std::fs::create_dir_all(half.join("keyspaces")).unwrap();
    std::fs::write(half.join("keyspaces/0"), b"cut short").unwrap();
    let g = genesis();
    let ex = open(&path, &g);
    assert_eq!(ex.next_index(), 0);
    assert!(!half.exists());
    ex.verify_state().unwrap();
}
