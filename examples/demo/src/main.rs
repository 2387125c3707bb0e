//! `cargo xtask demo`: a real Soma network on this machine.
//!
//! It signs the example encoders into packages (MiniLM-L6 and MiniLM-L3
//! with their ONNX models, the pure-wasm hash encoder, and the dishonest
//! random encoder), compiles them once into the cache the validators share,
//! writes a genesis, starts four `soma node` processes on 127.0.0.1,
//! embeds sentences through the OpenAI-compatible `POST /v1/embeddings`,
//! and reports what the network decided: each job's shard, every encoder's
//! outcome and loss, the winner, slashes and penalties, the similarity of
//! the final embeddings, and the balances before and after. Then it stops
//! the validators.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use soma_crypto::SecretKey;
use soma_host::package::{EncoderMeta, Package, VerifiedPackage};
use soma_host::{CompiledCache, Engine, Limits, Modality};
use soma_validator::client::ApiClient;
use soma_validator::config::{
    ClientFile, LOCALNET_COMPILED_CACHE, Localnet, NodeFile, write_localnet,
};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SENTENCES: &[&str] = &[
    "A man is playing a guitar on stage.",
    "On stage, a man plays the guitar.",
    "The central bank raised interest rates.",
    "Interest rates were raised by the central bank.",
    "A cat sleeps on the warm windowsill.",
];

const VALIDATORS: usize = 4;

fn main() -> Result<()> {
    let soma = std::env::current_exe()?.with_file_name("soma");
    if !soma.exists() {
        bail!(
            "{} is missing: run the demo with `cargo xtask demo`, which builds it",
            soma.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("soma-demo-").tempdir()?;
    let result = run(&soma, dir.path());
    if result.is_err() {
        // Kept, so the validators' logs can be read.
        let kept = dir.keep();
        eprintln!("the network's files and logs are in {}", kept.display());
    }
    result
}

fn run(soma: &Path, dir: &Path) -> Result<()> {
    println!("Signing the example encoders into packages...");
    let packages = sign_packages(&dir.join("packages"))?;
    let net = dir.join("net");
    let paths: Vec<PathBuf> = packages.iter().map(|(path, _)| path.clone()).collect();
    let (router, encoders) = paths.split_first().expect("a router and encoders");
    let configs = write_localnet(&Localnet {
        dir: &net,
        validators: VALIDATORS,
        base_port: free_ports(2 * VALIDATORS as u16)?,
        encoders,
        router: Some(router),
    })?;
    let home = configs[0].parent().expect("a config in a directory");
    compile(&packages, &home.join(LOCALNET_COMPILED_CACHE))?;
    let client: ClientFile =
        serde_json::from_str(&std::fs::read_to_string(net.join("client.json"))?)?;
    let mut nodes = Nodes::start(soma, &configs)?;
    let apis: Vec<ApiClient> = client
        .apis
        .iter()
        .map(|&a| api(a, Some(client.api_key.clone())))
        .collect();
    wait(
        &format!("starting {VALIDATORS} validators"),
        Duration::from_secs(180),
        &mut nodes,
        || {
            apis.iter()
                .all(|a| a.get("/health").is_ok_and(|r| r.status == 200))
        },
    )?;
    let health = apis[0].get("/health")?.ok()?;
    println!(
        "{VALIDATORS} validators run chain {} (id {}…); encoders in genesis:",
        health["chain"].as_str().unwrap_or_default(),
        short(health["chain_id"].as_str().unwrap_or_default())
    );
    for (_, package) in &packages[1..] {
        println!(
            "  {:<16} {}",
            package.manifest().name,
            short(&package.digest().to_string())
        );
    }

    let accounts = accounts(&net, &client)?;
    let before = balances(&apis[0], &accounts)?;
    println!(
        "\nEmbedding {} sentences through POST /v1/embeddings:",
        SENTENCES.len()
    );
    for (i, sentence) in SENTENCES.iter().enumerate() {
        println!("  [{i}] {sentence}");
    }
    let spinner = spinner("validators computing, attesting and finalising the jobs");
    let started = Instant::now();
    let reply = apis[0]
        .post_json(
            "/v1/embeddings",
            &json!({"input": SENTENCES, "model": "soma"}),
        )
        .and_then(|a| a.ok());
    spinner.finish_and_clear();
    let reply = reply.context("the embedding request failed")?;
    println!(
        "All {} jobs finalised in {:.1} s.\n",
        SENTENCES.len(),
        started.elapsed().as_secs_f64()
    );

    for (i, id) in reply["jobs"].as_array().into_iter().flatten().enumerate() {
        let id = id.as_str().unwrap_or_default();
        let job = apis[0].get(&format!("/v1/jobs/{id}"))?.ok()?;
        report_job(i, &job);
    }
    let vectors: Vec<Vec<f64>> = reply["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            d["embedding"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect()
        })
        .collect();
    similarity(&vectors);
    let after = balances(&apis[0], &accounts)?;
    println!("\nBalances (base units):");
    for ((name, _), (b, a)) in accounts.iter().zip(before.iter().zip(&after)) {
        println!(
            "  {name:<14} {b:>16} -> {a:>16}  ({:+})",
            *a as i128 - *b as i128
        );
    }
    // Each validator checked the state roots other validators' blocks
    // carry against its own, commit by commit.
    let (mut compared, mut deviant) = (0, 0);
    for api in &apis {
        let metrics = api.get("/metrics")?.ok()?;
        let metrics = metrics.as_str().unwrap_or_default();
        compared += metric(metrics, "soma_state_roots_compared_total");
        deviant += metric(metrics, "soma_deviant_state_roots_total");
    }
    println!(
        "\nThe validators compared {compared} state roots in each other's blocks with their \
         own: {deviant} differed."
    );
    println!(
        "Paraphrases ([0]~[1], [2]~[3]) are closer than unrelated pairs. Stopping the validators."
    );
    nodes.stop();
    Ok(())
}

/// A model file in a package: (name, bytes).
type Model = (String, Vec<u8>);

/// The router first, then the encoders: (package file, package).
fn sign_packages(dir: &Path) -> Result<Vec<(PathBuf, VerifiedPackage)>> {
    std::fs::create_dir_all(dir)?;
    let models = PathBuf::from(
        std::env::var_os("SOMA_MODELS_DIR")
            .context("SOMA_MODELS_DIR is not set; run `cargo xtask setup`")?,
    );
    let model = |file: &str| -> Result<Model> {
        let path = models.join(file);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read {}; run `cargo xtask setup`", path.display()))?;
        Ok((file.to_string(), bytes))
    };
    use soma_examples_artifacts as artifacts;
    let list: Vec<(&str, &str, Vec<Model>)> = vec![
        ("router-encoder", artifacts::ROUTER_ENCODER, vec![]),
        (
            "minilm-l6",
            artifacts::MINILM_L6,
            vec![model("all-minilm-l6-v2-int8.onnx")?],
        ),
        (
            "minilm-l3",
            artifacts::MINILM_L3,
            vec![model("paraphrase-minilm-l3-v2.onnx")?],
        ),
        ("hash-encoder", artifacts::HASH_ENCODER, vec![]),
        ("random-encoder", artifacts::RANDOM_ENCODER, vec![]),
    ];
    let author = SecretKey::generate()?;
    let mut packages = Vec::new();
    for (name, component, models) in list {
        let component =
            std::fs::read(component).with_context(|| format!("cannot read {component}"))?;
        let meta = EncoderMeta {
            name: name.into(),
            version: "0.1.0".into(),
            dimension: 384,
            fuel_limit: Limits::default().fuel,
            modality: Modality::Text,
        };
        let package = Package::sign(&author, &meta, component, models)?;
        let path = dir.join(format!("{name}.somapkg"));
        std::fs::write(&path, package.encode())?;
        packages.push((path, package));
    }
    Ok(packages)
}

/// Compiles (and pre-initialises) every package into the cache the
/// validators share, so that none of them compiles during a job.
fn compile(packages: &[(PathBuf, VerifiedPackage)], cache: &Path) -> Result<()> {
    let cache = CompiledCache::open(cache)?;
    let engine = Engine::new()?;
    let bar = ProgressBar::new(packages.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} compiling {msg} [{pos}/{len}] {elapsed}")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    for (_, package) in packages {
        bar.set_message(package.manifest().name.clone());
        engine
            .load_package(package, Some(&cache))
            .with_context(|| format!("cannot load {}", package.manifest().name))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("Compiled {} packages.", packages.len());
    Ok(())
}

/// The validator processes, killed when dropped.
struct Nodes {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Nodes {
    fn start(soma: &Path, configs: &[PathBuf]) -> Result<Nodes> {
        let mut nodes = Nodes {
            children: Vec::new(),
            logs: Vec::new(),
        };
        for config in configs {
            let log = config.with_file_name("node.log");
            let child = Command::new(soma)
                .args(["node", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("cannot start {}", soma.display()))?;
            nodes.children.push(child);
            nodes.logs.push(log);
        }
        Ok(nodes)
    }

    /// An error naming the first validator that exited, with its log's end.
    fn check(&mut self) -> Result<()> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "validator {i} exited ({status}); the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn api(address: SocketAddr, key: Option<String>) -> ApiClient {
    ApiClient::new(address, key, Duration::from_secs(300))
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"),
        )
        .with_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Waits until `done`, showing `what`; fails if a validator exits or
/// `timeout` passes.
fn wait(
    what: &str,
    timeout: Duration,
    nodes: &mut Nodes,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let bar = spinner(what);
    let started = Instant::now();
    while !done() {
        if let Err(e) = nodes.check() {
            bar.finish_and_clear();
            return Err(e);
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            bail!("{what}: not done after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    Ok(())
}

/// A base port with `n` free ports after it, below Linux's ephemeral range
/// (32768 up), where an outgoing connection could take a port between
/// this check and the validator's bind.
fn free_ports(n: u16) -> Result<u16> {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (0..100)
        .map(|k| start + k * n)
        .find(|&base| (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .context("no free ports on 127.0.0.1")
}

/// The accounts the report follows: (name, hex key).
fn accounts(net: &Path, client: &ClientFile) -> Result<Vec<(String, String)>> {
    let mut accounts = vec![
        ("submitter".to_string(), client.account.clone()),
        ("encoder owner".to_string(), client.publisher.clone()),
    ];
    for i in 0..VALIDATORS {
        let config = NodeFile::read(&net.join(format!("validator-{i}/config.json")))?;
        let key_path = net.join(format!("validator-{i}")).join(&config.key_file);
        let key = soma_crypto::keyfile::read_secret_key(&key_path)?;
        accounts.push((
            format!("validator {i}"),
            hex::encode(key.public_key().to_bytes()),
        ));
    }
    Ok(accounts)
}

fn balances(api: &ApiClient, accounts: &[(String, String)]) -> Result<Vec<u64>> {
    accounts
        .iter()
        .map(|(_, key)| {
            let account = api.get(&format!("/v1/accounts/{key}"))?.ok()?;
            account["balance"]
                .as_u64()
                .context("an account without a balance")
        })
        .collect()
}

fn report_job(i: usize, job: &Value) {
    let f = &job["finalisation"];
    println!(
        "Job [{i}] {}  committed in {}, finalised in {}, {} attesters",
        short(job["id"].as_str().unwrap_or_default()),
        job["commit"],
        f["commit"],
        job["attesters"].as_array().map_or(0, Vec::len)
    );
    println!(
        "    {:<16} {:<15} {:>7} {:>7}  decision",
        "encoder", "outcome", "loss", "weight"
    );
    let encoders = f["encoders"].as_array().cloned().unwrap_or_default();
    let total: f64 = encoders.iter().filter_map(|e| e["weight"].as_f64()).sum();
    for e in &encoders {
        let decision = if e["disqualified"] == true {
            format!("disqualified, slashed {}", e["slashed"])
        } else if e["reward"].as_u64().unwrap_or(0) > 0 {
            format!("best: rewarded {}", e["reward"])
        } else if e["slashed"].as_u64().unwrap_or(0) > 0 {
            format!("worst: penalised {}", e["slashed"])
        } else {
            "qualified".to_string()
        };
        let weight = e["weight"].as_f64().unwrap_or(0.0) / total.max(1.0);
        println!(
            "    {:<16} {:<15} {:>7.4} {:>6.1}%  {decision}",
            e["name"].as_str().unwrap_or("?"),
            e["outcome"].as_str().unwrap_or("?"),
            e["loss"].as_f64().unwrap_or(0.0),
            100.0 * weight,
        );
    }
}

fn similarity(vectors: &[Vec<f64>]) {
    println!("Cosine similarity of the final embeddings:");
    print!("      ");
    for j in 0..vectors.len() {
        print!("  [{j}] ");
    }
    println!();
    for (i, a) in vectors.iter().enumerate() {
        print!("  [{i}] ");
        for b in vectors {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            print!("{dot:6.2}");
        }
        println!();
    }
}

/// The value of the unlabelled metric `name` in Prometheus text (0 if
/// absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn short(hex: &str) -> String {
    hex.chars().take(12).collect()
}
