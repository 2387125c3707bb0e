//! Four validator processes commit the same sequence; one killed with
//! SIGKILL and restarted catches up; garbage sent to a node is refused
//! without stopping it.

use soma_consensus::network::{BLOCK_PATH, PeerToken};
use soma_consensus::{AuthorityIndex, Block, BlockRef};
use soma_crypto::SecretKey;
use soma_crypto::keyfile::read_secret_key;
use soma_validator::config::ValidatorFile;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

/// A base port with `n` free ports after it.
fn free_ports(n: u16) -> u16 {
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    (start..start + 2_000)
        .step_by(n as usize)
        .find(|base| (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("free ports")
}

/// Sends one HTTP/1.1 request; returns (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    // A server may answer (413) before it has read a large body.
    let _ = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn status(port: u16) -> Option<serde_json::Value> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    let (code, body) = http(port, "GET", "/consensus/v1/status", &[], b"");
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

fn commits(port: u16) -> Vec<String> {
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

struct Validator {
    config: PathBuf,
    port: u16,
    child: Child,
}

impl Validator {
    fn start(config: &Path, port: u16) -> Validator {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_file_name("stderr.log"))
            .unwrap();
        let child = Command::new(SOMA)
            .args(["node", "--config"])
            .arg(config)
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

fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    validators: &[Validator],
) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            let logs: Vec<String> = validators
                .iter()
                .map(|v| {
                    std::fs::read_to_string(v.config.with_file_name("stderr.log"))
                        .unwrap_or_default()
                })
                .collect();
            panic!(
                "timed out waiting for {what}; logs:\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn four_processes_commit_one_sequence_and_a_killed_one_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(4);
    let output = Command::new(SOMA)
        .args([
            "genesis",
            "--validators",
            "4",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let configs: Vec<PathBuf> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    let mut validators: Vec<Validator> = configs
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
    for (i, v) in validators.iter().enumerate() {
        let (code, body) = http(
            v.port,
            "POST",
            "/consensus/v1/transaction",
            &[],
            format!("pay {i}").as_bytes(),
        );
        assert_eq!(code, 202, "{body}");
    }
    wait_for(
        "20 commits everywhere",
        Duration::from_secs(60),
        || validators.iter().all(|v| v.committed() >= 20),
        &validators,
    );

    // Garbage, oversized, unauthenticated and wrongly signed blocks are
    // refused with a reason; the node keeps committing.
    let target = validators[0].port;
    let key1 = read_secret_key(&configs[1].with_file_name("key")).unwrap();
    let committee = ValidatorFile::read(&configs[1])
        .unwrap()
        .node_config(configs[1].parent().unwrap())
        .unwrap()
        .committee;
    let token = PeerToken::sign(
        &key1,
        &committee,
        AuthorityIndex(1),
        AuthorityIndex(0),
        [1; 16],
    );
    let auth = token.headers();
    let (code, body) = http(target, "POST", BLOCK_PATH, &[], b"garbage");
    assert_eq!(code, 401, "{body}");
    let (code, body) = http(target, "POST", BLOCK_PATH, &auth, b"garbage");
    assert_eq!((code, body.contains("malformed")), (422, true), "{body}");
    let (code, _) = http(target, "POST", BLOCK_PATH, &auth, &vec![0; 5 << 20]);
    assert_eq!(code, 413);
    let genesis: Vec<BlockRef> = (0..4)
        .map(|a| BlockRef::genesis(AuthorityIndex(a)))
        .collect();
    let block = |author| Block {
        round: 1,
        author: AuthorityIndex(author),
        parents: genesis.clone(),
        transactions: vec![b"forged".to_vec()],
        state_root: [0; 32],
    };
    // Pushed blocks must be the sender's own, and signed by it.
    let not_its_own = block(2).sign(&key1, committee.protocol());
    let (code, body) = http(target, "POST", BLOCK_PATH, &auth, &not_its_own.to_bytes());
    assert_eq!(
        (code, body.contains("block of validator 2")),
        (403, true),
        "{body}"
    );
    let stranger = SecretKey::from_bytes(&[9; 32]);
    let forged = block(1).sign(&stranger, committee.protocol());
    let (code, body) = http(target, "POST", BLOCK_PATH, &auth, &forged.to_bytes());
    assert_eq!((code, body.contains("signature")), (422, true), "{body}");
    let refused = status(target).unwrap()["refused"].as_u64().unwrap();
    assert!(refused >= 5, "{refused}");

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

    let sequences: Vec<Vec<String>> = validators.iter().map(|v| commits(v.port)).collect();
    let shortest = sequences.iter().map(Vec::len).min().unwrap();
    assert!(shortest >= 40, "{shortest}");
    for s in &sequences[1..] {
        assert_eq!(s[..shortest], sequences[0][..shortest]);
    }
    let transactions = status(validators[0].port).unwrap()["committed_transactions"]
        .as_u64()
        .unwrap();
    assert!(transactions >= 4, "{transactions}");
}

/// Runs `soma` with `args`; returns whether it succeeded, and its stderr.
fn soma(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let output = Command::new(SOMA).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn impossible_networks_and_missing_configurations_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = |args: &[&str]| {
        let mut all = vec!["genesis".as_ref(), "--dir".as_ref(), dir.path().as_os_str()];
        all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        soma(&all)
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
    assert!(!ok && stderr.contains("already exists"), "{stderr}");

    let missing = dir.path().join("nowhere/config.json");
    let (ok, stderr) = soma(&["node".as_ref(), "--config".as_ref(), missing.as_os_str()]);
    assert!(
        !ok && stderr.contains("cannot read the configuration"),
        "{stderr}"
    );
}
