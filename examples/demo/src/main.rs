//! `cargo xtask demo`: a real Soma network on this machine.
//!
//! It starts four validators of the example encoders ([`Network`]),
//! embeds sentences through the OpenAI-compatible `POST /v1/embeddings`,
//! and reports what the network decided: each job's shard, every encoder's
//! outcome and loss, the winner, slashes and penalties, the similarity of
//! the final embeddings, and the balances before and after. Then it stops
//! the validators.
//!
//! `cargo xtask localnet` (this program's `localnet` mode) starts the same
//! kind of network and leaves it running for clients until Ctrl-C.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use soma_demo::{Network, spinner};
use soma_validator::client::ApiClient;
use soma_validator::config::{ClientFile, NodeFile};
use std::path::{Path, PathBuf};
use std::time::Instant;

const SENTENCES: &[&str] = &[
    "A man is playing a guitar on stage.",
    "On stage, a man plays the guitar.",
    "The central bank raised interest rates.",
    "Interest rates were raised by the central bank.",
    "A cat sleeps on the warm windowsill.",
];

const VALIDATORS: usize = 4;

#[derive(Parser)]
#[command(
    name = "soma-demo",
    about = "Runs a Soma network of the example encoders on this machine"
)]
struct Cli {
    /// What to run; without one, the demo.
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Signs and compiles the example encoders, then runs `soma localnet`
    /// with them registered at genesis until Ctrl-C.
    Localnet {
        /// Directory for the packages and the network (keys, genesis,
        /// configurations, data); must not hold a network already.
        #[arg(long, default_value = "target/localnet")]
        dir: PathBuf,
        /// Number of validators.
        #[arg(long, default_value_t = VALIDATORS)]
        validators: usize,
        /// Consensus port of validator 0; the others follow, then the API
        /// ports.
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let soma = std::env::current_exe()?.with_file_name("soma");
    if !soma.exists() {
        bail!(
            "{} is missing: run this with `cargo xtask demo` or `cargo xtask localnet`, which \
             build it",
            soma.display()
        );
    }
    match cli.mode {
        None => soma_demo::in_scratch_dir("soma-demo-", |dir| run(&soma, dir)),
        Some(Mode::Localnet {
            dir,
            validators,
            base_port,
        }) => localnet(&soma, &dir, validators, base_port),
    }
}

/// Becomes `soma localnet` on the example encoders' packages, so that
/// Ctrl-C reaches it and its validators alone, and they stop cleanly.
fn localnet(soma: &Path, dir: &Path, validators: usize, base_port: u16) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let net = dir.join("net");
    soma_validator::config::refuse_existing_network(&net)?;
    let packages = soma_demo::example_packages(&dir.join("packages"), &net)?;
    let (router, encoders) = packages.split_first().context("a router and encoders")?;
    let mut command = std::process::Command::new(soma);
    command
        .arg("localnet")
        .arg("--dir")
        .arg(&net)
        .arg("--validators")
        .arg(validators.to_string())
        .arg("--base-port")
        .arg(base_port.to_string())
        .arg("--router")
        .arg(&router.0);
    for (path, _) in encoders {
        command.arg("--encoder").arg(path);
    }
    let error = command.exec();
    Err(error).with_context(|| format!("cannot run {}", soma.display()))
}

fn run(soma: &Path, dir: &Path) -> Result<()> {
    let Network {
        mut nodes,
        dir: net,
        packages,
        client,
        apis,
    } = Network::start(soma, dir, VALIDATORS)?;
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
