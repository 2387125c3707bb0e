//! Four validator processes commit the same sequence; one killed with
//! SIGKILL and restarted catches up, also after a minute away; garbage
//! sent to a node is refused, and an outsider's attack does not stop the
//! commits; validators halted after one commit wait there together and
//! go on from it.

use soma_consensus::network::{BLOCK_PATH, CHALLENGE_PATH, PeerToken, parse_challenge};
use soma_consensus::{AuthorityIndex, Block, BlockRef, Committee, TRANSACTION_PATH};
use soma_crypto::SecretKey;
use soma_crypto::keyfile::read_secret_key;
use soma_validator::node::committee_of;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

/// A base port with `n` free ports after it, never one handed out before
/// in this process (tests run in parallel). All below Linux's ephemeral
/// range (32768 and up): there, an outgoing connection of another test can
/// take the port of a validator that is down and about to restart.
pub(crate) fn free_ports(n: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    loop {
        let base = start + NEXT.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        assert!(base < start + 2_000, "no free ports");
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

/// Sends one HTTP/1.1 request on its own connection; returns (status,
/// body).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    Session::connect(port).request(method, path, headers, body)
}

/// One kept-alive connection: peers authenticate once per connection.
pub(crate) struct Session(TcpStream);

impl Session {
    pub(crate) fn connect(port: u16) -> Session {
        Session::waiting(port, Duration::from_secs(10))
    }

    /// A connection whose reads wait up to `timeout` for an answer.
    pub(crate) fn waiting(port: u16, timeout: Duration) -> Session {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(timeout)).unwrap();
        Session(stream)
    }

    /// A validator's token for this connection to validator `to`.
    fn authenticate(
        &mut self,
        key: &SecretKey,
        committee: &Committee,
        from: u32,
        to: u32,
    ) -> PeerToken {
        let (code, challenge) = self.request("GET", CHALLENGE_PATH, &[], b"");
        assert_eq!(code, 200, "{challenge}");
        let challenge = parse_challenge(&challenge).unwrap();
        PeerToken::sign(
            key,
            committee,
            AuthorityIndex(from),
            AuthorityIndex(to),
            challenge,
        )
    }

    /// Sends a request and reads its response (status, body); status 0 if
    /// the server closed the connection instead.
    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let (status, _, body) = self.exchange(method, path, headers, body);
        (status, body)
    }

    /// Like [`Session::request`], with the response's head (status line
    /// and headers) too.
    pub(crate) fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, String) {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        // A server may answer (413) before it has read a large body.
        let _ = self
            .0
            .write_all(request.as_bytes())
            .and_then(|()| self.0.write_all(body));
        let mut head = Vec::new();
        let mut byte = [0];
        while !head.ends_with(b"\r\n\r\n") {
            match self.0.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return (0, String::new(), String::new()),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        let _ = self.0.read_exact(&mut body);
        (status, head, String::from_utf8_lossy(&body).to_string())
    }
}

pub(crate) fn status(port: u16) -> Option<serde_json::Value> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    let (code, body) = http(port, "GET", "/consensus/v1/status", &[], b"");
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

pub(crate) fn commits(port: u16) -> Vec<String> {
    let (code, body) = http(
        port,
        "GET",
        "/consensus/v1/commits?from=0&limit=100000",
        &[],
        b"",
    );
    assert_eq!(code, 200, "{body}");
    body.lines().map(str::to_string).collect()
}

pub(crate) struct Validator {
    pub(crate) config: PathBuf,
    pub(crate) port: u16,
    child: Child,
}

impl Validator {
    pub(crate) fn start(config: &Path, port: u16) -> Validator {
        Validator::start_with(config, port, &[])
    }

    /// [`Validator::start`] with more arguments to `soma node`.
    pub(crate) fn start_with(config: &Path, port: u16, args: &[&str]) -> Validator {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_file_name("stderr.log"))
            .unwrap();
        let child = Command::new(SOMA)
            .args(["node", "--config"])
            .arg(config)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start soma node");
        Validator {
            config: config.to_path_buf(),
            port,
            child,
        }
    }

    /// How the process ended, if it has.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn committed(&self) -> u64 {
        status(self.port)
            .and_then(|s| s["commits"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    validators: &[Validator],
) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            let statuses: Vec<String> = validators
                .iter()
                .map(|v| format!("port {}: {:?}", v.port, status(v.port)))
                .collect();
            panic!(
                "timed out waiting for {what}; consensus status:\n{}\nlogs:\n{}",
                statuses.join("\n"),
                logs(validators)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the validators wrote to stderr, for a failure's message.
pub(crate) fn logs(validators: &[Validator]) -> String {
    let logs: Vec<String> = validators
        .iter()
        .map(|v| std::fs::read_to_string(v.config.with_file_name("stderr.log")).unwrap_or_default())
        .collect();
    logs.join("\n---\n")
}

/// Signed transfers from the localnet's user account, nonce after nonce.
pub(crate) struct Transfers {
    chain_id: [u8; 32],
    key: SecretKey,
    nonce: u64,
}

impl Transfers {
    pub(crate) fn new(dir: &Path) -> Transfers {
        let genesis = soma_execution::Genesis::from_config_file(&dir.join("genesis.json")).unwrap();
        Transfers {
            chain_id: genesis.chain_id(),
            key: read_secret_key(&dir.join("accounts/user.key")).unwrap(),
            nonce: 0,
        }
    }

    /// Where the transfers go (one base unit each).
    pub(crate) fn recipient() -> soma_crypto::PublicKey {
        SecretKey::from_bytes(&[7; 32]).public_key()
    }

    /// The next transfer, at the least fee.
    pub(crate) fn next(&mut self) -> Vec<u8> {
        self.nonce += 1;
        self.at(
            self.nonce - 1,
            soma_execution::Parameters::default().min_fee,
        )
    }

    /// A transfer at `nonce` paying `fee`.
    pub(crate) fn at(&self, nonce: u64, fee: u64) -> Vec<u8> {
        use soma_codec::Encode;
        let tx = soma_execution::Transaction {
            chain_id: self.chain_id,
            sender: self.key.public_key(),
            nonce,
            fee,
            action: soma_execution::Action::Transfer {
                to: Transfers::recipient(),
                amount: 1,
            },
        };
        tx.sign(&self.key).to_bytes()
    }
}

/// Writes a four-validator network into `dir`; returns its configuration
/// paths and the first port.
pub(crate) fn genesis(dir: &Path) -> (Vec<PathBuf>, u16) {
    genesis_with(dir, 4, &[])
}

/// [`genesis`] of `validators` validators, with more arguments (encoders,
/// a router).
pub(crate) fn genesis_with(
    dir: &Path,
    validators: u16,
    args: &[&std::ffi::OsStr],
) -> (Vec<PathBuf>, u16) {
    // Consensus ports, then API ports.
    let base = free_ports(2 * validators);
    let output = Command::new(SOMA)
        .args([
            "genesis",
            "--validators",
            &validators.to_string(),
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let configs = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    (configs, base)
}

/// A four-validator network in `dir`, running, with 10 commits made
/// everywhere: its first port and validators.
fn committing(dir: &Path) -> (u16, Vec<Validator>) {
    let (configs, base) = genesis(dir);
    let validators = start_all(&configs, base);
    wait_for(
        "10 commits everywhere",
        Duration::from_secs(60),
        || validators.iter().all(|v| v.committed() >= 10),
        &validators,
    );
    (base, validators)
}

/// Changes the value under `key` in `keyspace` of the stopped validator
/// state at `state` with `change`, durably: a corrupt or forged state.
pub(crate) fn tamper(state: &Path, keyspace: &str, key: &[u8], change: impl FnOnce(&mut Vec<u8>)) {
    let db = fjall::Database::builder(state).open().unwrap();
    let space = db
        .keyspace(keyspace, fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let mut value = space.get(key).unwrap().unwrap().to_vec();
    change(&mut value);
    space.insert(key, value).unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

/// Starts a validator per configuration and waits until all serve.
pub(crate) fn start_all(configs: &[PathBuf], base: u16) -> Vec<Validator> {
    let validators: Vec<Validator> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| Validator::start(c, base + i as u16))
        .collect();
    wait_for(
        "every validator to serve",
        Duration::from_secs(30),
        || validators.iter().all(|v| status(v.port).is_some()),
        &validators,
    );
    validators
}

/// Checks that every validator's commits so far are one sequence; returns
/// how long the common part is.
pub(crate) fn assert_one_sequence(validators: &[Validator]) -> usize {
    let sequences: Vec<Vec<String>> = validators.iter().map(|v| commits(v.port)).collect();
    let shortest = sequences.iter().map(Vec::len).min().unwrap();
    for s in &sequences[1..] {
        assert_eq!(s[..shortest], sequences[0][..shortest]);
    }
    shortest
}

#[test]
fn four_processes_commit_one_sequence_and_a_killed_one_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = genesis(dir.path());
    let mut validators = start_all(&configs, base);
    let mut transfers = Transfers::new(dir.path());
    for v in &validators {
        let (code, body) = http(
            v.port,
            "POST",
            "/consensus/v1/transaction",
            &[],
            &transfers.next(),
        );
        assert_eq!(code, 202, "{body}");
    }
    // Bytes that are not a signed transaction for this chain never enter
    // a block.
    let (code, body) = http(validators[0].port, "POST", TRANSACTION_PATH, &[], b"pay 5");
    assert_eq!(code, 422, "{body}");
    wait_for(
        "20 commits everywhere",
        Duration::from_secs(60),
        || validators.iter().all(|v| v.committed() >= 20),
        &validators,
    );

    // Garbage, oversized, unauthenticated and wrongly signed blocks are
    // refused with a reason; the node keeps committing.
    let target = validators[0].port;
    let committee = committee_of(&configs[1]).unwrap();
    // Committee indices follow genesis (validators sorted by key), not the
    // configuration directories.
    let index = |config: &Path| {
        let key = read_secret_key(&config.with_file_name("key")).unwrap();
        let i = (0..4).find(|&i| committee.key(AuthorityIndex(i)) == Some(&key.public_key()));
        (key, i.unwrap())
    };
    let (key1, one) = index(&configs[1]);
    let (_, zero) = index(&configs[0]);
    let other = (0..4).find(|i| ![one, zero].contains(i)).unwrap();
    let (code, body) = http(target, "POST", BLOCK_PATH, &[], b"garbage");
    assert_eq!(code, 401, "{body}");
    // Validator 1's token is good on the connection it was made for, and
    // on no other.
    let mut session = Session::connect(target);
    let token = session.authenticate(&key1, &committee, one, zero);
    let auth = token.headers();
    let (code, body) = http(target, "POST", BLOCK_PATH, &auth, b"garbage");
    assert_eq!((code, body.contains("bad token")), (401, true), "{body}");
    let (code, body) = session.request("POST", BLOCK_PATH, &auth, b"garbage");
    assert_eq!((code, body.contains("malformed")), (422, true), "{body}");
    let mut large = Session::connect(target);
    let token = large.authenticate(&key1, &committee, one, zero);
    let (code, _) = large.request("POST", BLOCK_PATH, &token.headers(), &vec![0; 5 << 20]);
    assert_eq!(code, 413);
    let genesis: Vec<BlockRef> = (0..4)
        .map(|a| BlockRef::genesis(AuthorityIndex(a)))
        .collect();
    let block = |author| Block {
        round: 1,
        author: AuthorityIndex(author),
        parents: genesis.clone(),
        transactions: vec![b"forged".to_vec()],
        state_root: soma_consensus::StateRoot::default(),
    };
    // Pushed blocks must be the sender's own, and signed by it.
    let not_its_own = block(other).sign(&key1, committee.protocol());
    let (code, body) = session.request("POST", BLOCK_PATH, &auth, &not_its_own.to_bytes());
    assert_eq!(
        (code, body.contains(&format!("block of validator {other}"))),
        (403, true),
        "{body}"
    );
    let stranger = SecretKey::from_bytes(&[9; 32]);
    let forged = block(one).sign(&stranger, committee.protocol());
    let (code, body) = session.request("POST", BLOCK_PATH, &auth, &forged.to_bytes());
    assert_eq!((code, body.contains("signature")), (422, true), "{body}");
    let refused = status(target).unwrap()["refused"].as_u64().unwrap();
    assert!(refused >= 6, "{refused}");

    // SIGKILL validator 3; the others go on without it.
    let killed = validators.pop().unwrap();
    let (config, port) = (killed.config.clone(), killed.port);
    drop(killed);
    let before = validators[0].committed();
    wait_for(
        "commits without validator 3",
        Duration::from_secs(60),
        || validators.iter().all(|v| v.committed() >= before + 20),
        &validators,
    );

    // Restarted from its store, it catches up with the others.
    validators.push(Validator::start(&config, port));
    let goal = validators[0].committed() + 10;
    wait_for(
        "validator 3 to catch up",
        Duration::from_secs(90),
        || validators[3].committed() >= goal,
        &validators,
    );

    let shortest = assert_one_sequence(&validators);
    assert!(shortest >= 40, "{shortest}");
    let transactions = status(validators[0].port).unwrap()["committed_transactions"]
        .as_u64()
        .unwrap();
    assert!(transactions >= 4, "{transactions}");
}

/// Validators started to halt after one commit apply it and no more, then
/// propose nothing and refuse transactions, and say so; one started after
/// the others halted gets there from them, and then the committee makes no
/// more commits; stopped there, they hold one state, as an upgrade needs.
/// One asked to halt at a commit it has passed refuses to start and
/// changes nothing; one at it starts halted; one behind its consensus
/// store replays it up to its halt. Started again without the switch, they
/// go on from that commit as one network.
#[test]
fn validators_halted_after_one_commit_stop_there_and_go_on_together() {
    const HALT: u64 = 12;
    let halt = HALT.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = genesis(dir.path());
    let halting =
        |i: usize| Validator::start_with(&configs[i], base + i as u16, &["--halt-after", &halt]);
    // Three are a quorum: they commit, and halt, without the fourth.
    let mut validators: Vec<Validator> = (0..3).map(halting).collect();
    // Applied, not only committed: the API's port follows the four
    // consensus ports.
    let health = |v: &Validator| -> Option<serde_json::Value> {
        TcpStream::connect(("127.0.0.1", v.port + 4)).ok()?;
        let (code, body) = http(v.port + 4, "GET", "/health", &[], b"");
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    };
    let halted = |v: &Validator| {
        health(v).is_some_and(|h| h["halted"] == true && h["next_commit"] == HALT + 1)
    };
    wait_for(
        "three validators to halt",
        Duration::from_secs(60),
        || validators.iter().all(halted),
        &validators,
    );
    // Halted, they still serve their peers: one started after they
    // halted gets there too.
    validators.push(halting(3));
    wait_for(
        "the last validator to halt",
        Duration::from_secs(60),
        || validators.iter().all(halted),
        &validators,
    );
    // Halted, none proposes: the committee makes no more rounds, and so,
    // once the blocks proposed before the last halted are in, no more
    // commits (a committee that goes on commits many a second). A
    // transaction is refused with the reason.
    let committed = || {
        validators
            .iter()
            .map(Validator::committed)
            .collect::<Vec<_>>()
    };
    wait_for(
        "commits to stop",
        Duration::from_secs(30),
        || {
            let before = committed();
            std::thread::sleep(Duration::from_secs(2));
            committed() == before
        },
        &validators,
    );
    assert!(validators.iter().all(halted), "{}", logs(&validators));
    let transfer = Transfers::new(dir.path()).next();
    let (code, body) = http(base + 4, "POST", "/v1/transactions", &[], &transfer);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("halted after commit 12"), "{body}");
    for v in &validators {
        let log = std::fs::read_to_string(v.config.with_file_name("stderr.log")).unwrap();
        assert!(
            log.contains(&format!("halted after commit {HALT}")),
            "{log}"
        );
    }
    drop(validators);

    let applied = |config: &Path| {
        let db = fjall::Database::builder(config.with_file_name("data").join("state"))
            .open()
            .unwrap();
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        meta.get(b"applied").unwrap().unwrap().to_vec()
    };
    // One root, after commit 12, everywhere.
    let states: Vec<Vec<u8>> = configs.iter().map(|c| applied(c)).collect();
    assert!(states.iter().all(|s| *s == states[0]));
    let (whole, out, _) = run_soma(&[
        "verify-state".as_ref(),
        "--config".as_ref(),
        configs[0].as_os_str(),
    ]);
    assert!(
        whole && out.contains(&format!("after {} commits", HALT + 1)),
        "{out}"
    );

    // Past it: refused, with the reason, and nothing changed.
    let (started, _, stderr) = run_soma(&[
        "node".as_ref(),
        "--config".as_ref(),
        configs[0].as_os_str(),
        "--halt-after".as_ref(),
        "5".as_ref(),
    ]);
    assert!(!started, "{stderr}");
    assert!(
        stderr.contains("has applied 13 commits, past commit 5: it can halt (`--halt-after`) only after commit 12 or a later one"),
        "{stderr}"
    );
    assert_eq!(applied(&configs[0]), states[0]);
    // At it: halted from the start.
    let again = [halting(0)];
    wait_for(
        "the validator to start halted",
        Duration::from_secs(30),
        || halted(&again[0]),
        &again,
    );
    drop(again);
    // A state behind its consensus store (here, none at all) applies
    // what the store holds up to the commit to halt after, and no more.
    let state = configs[0].with_file_name("data").join("state");
    std::fs::rename(&state, state.with_extension("aside")).unwrap();
    let behind = [Validator::start_with(
        &configs[0],
        base,
        &["--halt-after", "6"],
    )];
    wait_for(
        "the validator behind to replay to its halt",
        Duration::from_secs(30),
        || health(&behind[0]).is_some_and(|h| h["halted"] == true && h["next_commit"] == 7),
        &behind,
    );
    drop(behind);

    let validators = start_all(&configs, base);
    wait_for(
        "commits past the halt applied everywhere",
        Duration::from_secs(60),
        || {
            validators.iter().all(|v| {
                health(v).is_some_and(|h| {
                    h["halted"] == false && h["next_commit"].as_u64().is_some_and(|n| n > HALT + 10)
                })
            })
        },
        &validators,
    );
    assert!(assert_one_sequence(&validators) as u64 > HALT + 10);
}

/// Runs `soma` with `args`: whether it succeeded, its stdout and its
/// stderr.
pub(crate) fn run_soma<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let output = Command::new(SOMA).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn impossible_networks_and_missing_configurations_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = |args: &[&str]| {
        let mut all = vec!["genesis".as_ref(), "--dir".as_ref(), dir.path().as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        let (ok, _, stderr) = run_soma(&all);
        (ok, stderr)
    };
    let (ok, stderr) = genesis(&["--validators", "0"]);
    assert!(!ok && stderr.contains("at least one validator"), "{stderr}");
    let (ok, stderr) = genesis(&["--validators", "4", "--base-port", "65534"]);
    assert!(!ok && stderr.contains("past port 65535"), "{stderr}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );
    assert!(genesis(&["--validators", "1"]).0);
    let (ok, stderr) = genesis(&["--validators", "1"]);
    assert!(
        !ok && stderr.contains("holds a network already"),
        "{stderr}"
    );
    // Genesis fixes the consensus constants; one no committee can run
    // with stops the node before it opens anything.
    let genesis_file = dir.path().join("genesis.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&genesis_file).unwrap()).unwrap();
    config["parameters"]["gc_depth"] = 2.into();
    std::fs::write(&genesis_file, config.to_string()).unwrap();
    let node = dir.path().join("validator-0");
    let (ok, _, stderr) = run_soma(&[
        "node".as_ref(),
        "--config".as_ref(),
        node.join("config.json").as_os_str(),
    ]);
    assert!(
        !ok && stderr.contains("gc depth: must be from 3"),
        "{stderr}"
    );
    assert!(!node.join("data").exists(), "the node opened its store");
    // An encoder that is not a signed package is refused before any
    // validator would read it.
    let other = tempfile::tempdir().unwrap();
    let fake = other.path().join("fake.somapkg");
    std::fs::write(&fake, b"not a package").unwrap();
    let (ok, _, stderr) = run_soma(&[
        "genesis".as_ref(),
        "--dir".as_ref(),
        other.path().join("net").as_os_str(),
        "--encoder".as_ref(),
        fake.as_os_str(),
    ]);
    assert!(
        !ok && stderr.contains("is not a valid signed package"),
        "{stderr}"
    );

    let missing = dir.path().join("nowhere/config.json");
    let (ok, _, stderr) = run_soma(&["node".as_ref(), "--config".as_ref(), missing.as_os_str()]);
    assert!(
        !ok && stderr.contains("cannot read the configuration"),
        "{stderr}"
    );
}

/// What an outsider throws at one validator: more connections than it
/// takes, none finishing its headers; unauthenticated fetches; and a flood
/// of transactions, until `stop` is set.
fn attack(port: u16, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    std::thread::scope(|scope| {
        // Slow clients: a request line, then silence, reopened as the
        // server's header deadline closes them.
        scope.spawn(|| {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                held.retain(|s: &TcpStream| {
                    s.peek(&mut [0])
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
                });
                // More than the server's cap: it must make room by closing
                // strangers' connections, never its peers'.
                while held.len() < soma_consensus::MAX_CONNECTIONS + 100 {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                        break;
                    };
                    let _ = s.write_all(b"POST /consensus/v1/transaction HTTP/1.1\r\n");
                    let _ = s.set_nonblocking(true);
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        for _ in 0..2 {
            scope.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let _ = http(port, "POST", "/consensus/v1/fetch", &[], &[0; 40_000]);
                    let _ = http(
                        port,
                        "POST",
                        "/consensus/v1/transaction",
                        &[],
                        format!("flood {i}").as_bytes(),
                    );
                }
            });
        }
    });
}

/// A client that asks for the status over and over on one connection
/// (pipelined) and never reads an answer, until the server stops reading
/// from it because its answers cannot be written.
fn never_reading_client(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nonblocking(true).unwrap();
    let request = b"GET /consensus/v1/status HTTP/1.1\r\nhost: soma\r\n\r\n";
    let started = Instant::now();
    // Where in `request` the next write starts: a short write is finished
    // before another request begins.
    let mut at = 0;
    let mut stalled_since: Option<Instant> = None;
    loop {
        match stream.write(&request[at..]) {
            Ok(n) => {
                at = (at + n) % request.len();
                stalled_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Full both ways for a while: the server no longer reads.
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    return stream;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the server closed a client before it stopped reading: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server kept reading requests whose answers were not read"
        );
    }
}

/// Whether the server closed `stream`: what it had sent is read and
/// dropped, for at most a minute, and then the connection must have ended.
fn closed_by_server(mut stream: TcpStream) -> bool {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let mut buffer = vec![0; 1 << 20];
    while started.elapsed() < Duration::from_secs(60) {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
    false
}

/// Commits of `validator` over `span`, per second.
fn commit_rate(validator: &Validator, span: Duration) -> f64 {
    let before = validator.committed();
    std::thread::sleep(span);
    (validator.committed() - before) as f64 / span.as_secs_f64()
}

/// A validator killed for a minute while the others commit under load, far
/// beyond the 2 × gc_depth rounds they keep in their DAGs, catches up from
/// their stores and commits the same sequence; meanwhile an outsider
/// attacking one of them does not stop the commits.
#[test]
fn a_validator_down_for_a_minute_rejoins_and_an_outsider_does_not_stop_commits() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let (_, mut validators) = committing(dir.path());
    let killed = validators.pop().unwrap();
    let (config, port) = (killed.config.clone(), killed.port);
    let round_then = status(port).unwrap()["last_committed_round"]
        .as_u64()
        .unwrap();
    drop(killed);

    // Held through the phases below, longer than the server's deadline for
    // a write; validator 2 is not otherwise attacked, so it is not closed
    // to make room for other connections.
    let unread = never_reading_client(validators[2].port);
    let stop_load = AtomicBool::new(false);
    let stop_attack = AtomicBool::new(false);
    let (quiet, attacked) = std::thread::scope(|scope| {
        // Load: a transfer every 20 ms at validator 1.
        scope.spawn(|| {
            let mut transfers = Transfers::new(dir.path());
            while !stop_load.load(Ordering::Relaxed) {
                let (code, body) = http(
                    validators[1].port,
                    "POST",
                    TRANSACTION_PATH,
                    &[],
                    &transfers.next(),
                );
                assert_eq!(code, 202, "{body}");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let quiet = commit_rate(&validators[1], Duration::from_secs(15));
        let attacker = scope.spawn(|| attack(validators[0].port, &stop_attack));
        let attacked = commit_rate(&validators[1], Duration::from_secs(30));
        stop_attack.store(true, Ordering::Relaxed);
        attacker.join().unwrap();
        std::thread::sleep(Duration::from_secs(15));
        stop_load.store(true, Ordering::Relaxed);
        (quiet, attacked)
    });
    eprintln!(
        "commits per second at validator 1: {quiet:.1} quiet, {attacked:.1} while validator 0 \
         is attacked (ratio {:.2})",
        attacked / quiet
    );
    if attacked <= 0.5 {
        let statuses: Vec<_> = validators.iter().map(|v| status(v.port)).collect();
        wait_for(
            &format!("commits under attack, at {attacked:.2}/s ({statuses:?})"),
            Duration::ZERO,
            || false,
            &validators,
        );
    }
    let status0 = status(validators[0].port).unwrap();
    assert!(status0["throttled"].as_u64().unwrap() > 0, "{status0}");
    let status2 = status(validators[2].port).unwrap();
    assert!(
        status2["write_timeouts"].as_u64().unwrap() >= 1,
        "no write timed out: {status2}"
    );
    assert!(
        closed_by_server(unread),
        "a client that read nothing for a minute was not closed (deadline {:?})",
        soma_consensus::WRITE_TIMEOUT
    );

    let round_now = status(validators[0].port).unwrap()["last_committed_round"]
        .as_u64()
        .unwrap();
    assert!(
        round_now > round_then + 2 * u64::from(soma_execution::Parameters::default().gc_depth),
        "the others got only from round {round_then} to {round_now}"
    );

    // Back from its store, it replays what it missed and keeps up.
    validators.push(Validator::start(&config, port));
    let goal = validators[0].committed();
    wait_for(
        "validator 3 to catch up",
        Duration::from_secs(120),
        || validators[3].committed() >= goal + 5,
        &validators,
    );
    let status3 = status(port).unwrap();
    assert!(
        status3["catch_up_requests"].as_u64().unwrap() > 0,
        "{status3}"
    );
    assert!(assert_one_sequence(&validators) as u64 >= goal);
}

/// A validator whose state was corrupted on disk while it was down (its
/// recorded state root altered) notices, once it applies commits whose
/// roots the others have claimed in their blocks, that validators of a
/// quorum of stake disagree with it, and stops with an error naming the
/// commit rather than going on with a state of its own; the others keep
/// committing.
#[test]
fn a_validator_whose_state_diverged_stops_and_names_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (base, mut validators) = committing(dir.path());
    // Commits it applied before it stopped: the next it applies runs on
    // the corrupted root.
    let (code, health) = http(base + 4 + 3, "GET", "/health", &[], b"");
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let applied = health["next_commit"].as_u64().unwrap();
    let stopped = validators.pop().unwrap();
    let (config, port) = (stopped.config.clone(), stopped.port);
    drop(stopped);
    let state = config.with_file_name("data").join("state");
    tamper(&state, "meta", b"applied", |applied| {
        *applied.last_mut().unwrap() ^= 1
    });
    let mut corrupted = Validator::start(&config, port);
    let log = || std::fs::read_to_string(config.with_file_name("stderr.log")).unwrap();
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = corrupted.exited() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the corrupted validator goes on: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!exit.success());
    let log = log();
    let named: u64 = log
        .split("this node diverged: after commit ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no divergence named in {log}"));
    assert!(log.contains("quorum of stake"), "{log}");
    // A commit applied on the corrupted root, never one from before.
    assert!(named >= applied, "commit {named}, applied {applied}: {log}");
    let before = validators[0].committed();
    wait_for(
        "the others to go on committing",
        Duration::from_secs(30),
        || validators[..3].iter().all(|v| v.committed() >= before + 10),
        &validators,
    );
}

/// `soma localnet` runs its validators until it is told to stop (SIGINT,
/// as Ctrl-C sends), then has each stop cleanly rather than killing it.
#[test]
fn localnet_runs_its_validators_until_ctrl_c_and_stops_them_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(8);
    let stderr = dir.path().join("localnet.log");
    /// Sends `child` SIGINT, as Ctrl-C does, unless it has ended.
    fn interrupt(child: &mut Child) -> bool {
        match (child.try_wait(), libc::pid_t::try_from(child.id())) {
            // SAFETY: kill(2) on our child, not yet reaped, so its pid
            // names no other process.
            (Ok(None), Ok(pid)) => unsafe { libc::kill(pid, libc::SIGINT) == 0 },
            _ => false,
        }
    }
    /// Stopped, with its validators, if the test fails first.
    struct Localnet(Child);
    impl Drop for Localnet {
        fn drop(&mut self) {
            interrupt(&mut self.0);
            let _ = self.0.wait();
        }
    }
    let localnet = Command::new(SOMA)
        .args(["localnet", "--validators", "4", "--base-port"])
        .arg(base.to_string())
        .arg("--dir")
        .arg(dir.path().join("net"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut localnet = Localnet(localnet);
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let api = |i: u16| base + 4 + i;
    let committed = |i: u16| {
        TcpStream::connect(("127.0.0.1", api(i))).is_ok() && {
            let (code, body) = http(api(i), "GET", "/health", &[], b"");
            let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            code == 200 && health["next_commit"].as_u64().is_some_and(|n| n > 3)
        }
    };
    let start = Instant::now();
    while !(0..4).all(committed) {
        assert!(
            start.elapsed() < Duration::from_secs(90) && localnet.0.try_wait().unwrap().is_none(),
            "the localnet did not start committing:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    assert!(interrupt(&mut localnet.0));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = localnet.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the localnet did not stop:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = log();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("4 of 4 validators stopped cleanly"), "{log}");
    assert_eq!(log.matches("validator stopped").count(), 4, "{log}");
    for i in 0..4 {
        assert!(
            TcpStream::connect(("127.0.0.1", api(i))).is_err(),
            "validator {i}'s API still answers"
        );
    }
}
