//! `soma client`: keys, balances and signed transactions against a node's
//! API, readable by default and JSON with `--json`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use soma_codec::Encode;
use soma_crypto::{PublicKey, SecretKey, keyfile};
use soma_execution::{Action, Transaction};
use soma_host::Modality;
use soma_host::package::Package;
use soma_validator::client::ApiClient;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options every client command shares.
#[derive(Args)]
pub struct ClientArgs {
    /// The node's API address.
    #[arg(long, default_value = "127.0.0.1:7104", global = true)]
    api: SocketAddr,
    /// An API key the node knows (needed to upload packages).
    #[arg(long, global = true)]
    api_key: Option<String>,
    /// Print the node's JSON instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Writes a new secret key file and prints its public key.
    Keygen {
        /// Where to write it (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Shows an account: balance, nonce, stake.
    Balance {
        /// The account's hex public key, or a key file.
        account: String,
    },
    /// Sends base units to another account.
    Transfer {
        #[command(flatten)]
        signer: Signer,
        /// The recipient's hex public key.
        #[arg(long)]
        to: String,
        /// Base units to send.
        #[arg(long)]
        amount: u64,
    },
    /// Moves base units from the balance to the account's validator stake.
    Stake {
        #[command(flatten)]
        signer: Signer,
        /// Base units to stake.
        #[arg(long)]
        amount: u64,
    },
    /// Uploads a signed encoder package to the node and registers it,
    /// bonding base units (the key must be the package's signer).
    RegisterEncoder {
        #[command(flatten)]
        signer: Signer,
        /// The signed package file.
        #[arg(long)]
        package: PathBuf,
        /// Base units bonded.
        #[arg(long)]
        bond: u64,
    },
    /// Adds base units to the bond of an encoder the key owns: an encoder
    /// whose bond fell below the network's minimum is drawn into shards
    /// again once it is back at it.
    Bond {
        #[command(flatten)]
        signer: Signer,
        /// The encoder's package digest (hex).
        #[arg(long)]
        package: String,
        /// Base units added to its bond.
        #[arg(long)]
        amount: u64,
    },
    /// Submits data to embed and waits for its job to be decided.
    Submit {
        #[command(flatten)]
        signer: Signer,
        /// The text to embed.
        text: String,
        /// Base units paid for the job (the protocol's minimum if not set).
        #[arg(long)]
        payment: Option<u64>,
        /// Return once submitted instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Shows a job: shard, outcomes, losses, final embedding.
    Job {
        /// The job id (its submission's digest).
        id: String,
    },
}

/// The account that signs and pays.
#[derive(Args)]
struct Signer {
    /// The signer's secret key file.
    #[arg(long)]
    key: PathBuf,
    /// The fee offered (the protocol's minimum if not set).
    #[arg(long)]
    fee: Option<u64>,
}

/// How long `submit` waits for its job.
const JOB_WAIT: Duration = Duration::from_secs(300);

/// Runs a `soma client` command.
pub fn run(args: ClientArgs) -> Result<()> {
    let api = ApiClient::new(args.api, args.api_key.clone(), Duration::from_secs(30));
    let print = |value: &Value, summary: String| {
        if args.json {
            println!("{value:#}");
        } else {
            println!("{summary}");
        }
    };
    match args.command {
        ClientCommand::Keygen { out } => {
            let key = SecretKey::generate()?;
            keyfile::write_secret_key(&out, &key)?;
            let public = hex::encode(key.public_key().to_bytes());
            print(
                &json!({"key": public, "file": out}),
                format!("{public}\n(secret key in {})", out.display()),
            );
        }
        ClientCommand::Balance { account } => {
            let key = account_key(&account)?;
            let value = api.get(&format!("/v1/accounts/{key}"))?.ok()?;
            let stake = match value["validator"]["stake"].as_u64() {
                Some(stake) => format!(", validator stake {stake}"),
                None => String::new(),
            };
            print(
                &value,
                format!(
                    "balance {}, nonce {}{stake}",
                    value["balance"], value["nonce"]
                ),
            );
        }
        ClientCommand::Transfer { signer, to, amount } => {
            let to =
                PublicKey::from_hex(&to).with_context(|| format!("`{to}` is not a public key"))?;
            let value = send(&api, &signer, Action::Transfer { to, amount })?;
            print(
                &value,
                format!("transfer submitted: {}", value["transaction"]),
            );
        }
        ClientCommand::Stake { signer, amount } => {
            let value = send(&api, &signer, Action::AddStake { amount })?;
            print(&value, format!("stake submitted: {}", value["transaction"]));
        }
        ClientCommand::RegisterEncoder {
            signer,
            package,
            bond,
        } => {
            let bytes = std::fs::read(&package)
                .with_context(|| format!("cannot read {}", package.display()))?;
            let verified = Package::decode(&bytes)
                .and_then(|p| p.verify(None))
                .with_context(|| format!("{} is not a valid signed package", package.display()))?;
            // The network would refuse it, after the fee is paid.
            let longest = parameter(&api, "max_data_bytes")?;
            let accepts = verified.manifest().max_input_bytes;
            if u64::from(accepts) < longest {
                bail!(
                    "{}: its encoder accepts inputs of at most {accepts} bytes; the network's \
                     data may hold {longest}, so the network would refuse it",
                    package.display()
                );
            }
            api.post_bytes("/v1/packages", &bytes)?.ok()?;
            let (manifest, signature) = verified.signed_manifest();
            let action = Action::RegisterEncoder {
                manifest: manifest.to_vec(),
                signature: *signature,
                bond,
            };
            let value = send(&api, &signer, action)?;
            print(
                &value,
                format!(
                    "package {} uploaded; registration submitted: {}",
                    verified.digest(),
                    value["transaction"]
                ),
            );
        }
        ClientCommand::Bond {
            signer,
            package,
            amount,
        } => {
            let package = soma_host::Digest::from_hex(&package)
                .with_context(|| format!("`{package}` is not a package digest (64 hex digits)"))?;
            // The network would refuse these only after taking the fee.
            let encoder = api.get(&format!("/v1/encoders/{package}"))?.ok()?;
            let key = keyfile::read_secret_key(&signer.key)?;
            let signer_key = hex::encode(key.public_key().to_bytes());
            if encoder["owner"].as_str() != Some(signer_key.as_str()) {
                bail!(
                    "{} does not own encoder {package}: its owner is {}",
                    signer.key.display(),
                    encoder["owner"]
                );
            }
            let value = send(&api, &signer, Action::AddBond { package, amount })?;
            print(&value, format!("bond submitted: {}", value["transaction"]));
        }
        ClientCommand::Submit {
            signer,
            text,
            payment,
            no_wait,
        } => {
            let payment = match payment {
                Some(p) => p,
                None => parameter(&api, "min_job_payment")?,
            };
            let action = Action::SubmitData {
                modality: Modality::Text,
                data: text.into_bytes(),
                payment,
            };
            let value = send(&api, &signer, action)?;
            let id = value["transaction"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if no_wait {
                print(&value, format!("job {id} submitted"));
                return Ok(());
            }
            let job = wait_for_job(&api, &id)?;
            print(&job, job_summary(&job));
        }
        ClientCommand::Job { id } => {
            let job = api.get(&format!("/v1/jobs/{id}"))?.ok()?;
            print(&job, job_summary(&job));
        }
    }
    Ok(())
}

/// A hex public key given as itself or as a key file.
fn account_key(account: &str) -> Result<String> {
    if PublicKey::from_hex(account).is_ok() {
        return Ok(account.to_string());
    }
    let key = keyfile::read_secret_key(account.as_ref())
        .with_context(|| format!("`{account}` is neither a hex public key nor a key file"))?;
    Ok(hex::encode(key.public_key().to_bytes()))
}

/// A protocol parameter the node reports in `/health`.
fn parameter(api: &ApiClient, name: &str) -> Result<u64> {
    let health = api.get("/health")?.ok()?;
    health["parameters"][name]
        .as_u64()
        .with_context(|| format!("the node does not report the parameter {name}"))
}

/// Signs `action` as `signer` with the account's next nonce and submits it.
fn send(api: &ApiClient, signer: &Signer, action: Action) -> Result<Value> {
    let key = keyfile::read_secret_key(&signer.key)?;
    let sender = key.public_key();
    let health = api.get("/health")?.ok()?;
    let chain_id: [u8; 32] = health["chain_id"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| b.try_into().ok())
        .context("the node does not report its chain id")?;
    let account = api
        .get(&format!("/v1/accounts/{}", hex::encode(sender.to_bytes())))?
        .ok()?;
    let nonce = account["nonce"]
        .as_u64()
        .context("an account without a nonce")?;
    let fee = match signer.fee {
        Some(fee) => fee,
        None => parameter(api, "min_fee")?,
    };
    let signed = Transaction {
        chain_id,
        sender,
        nonce,
        fee,
        action,
    }
    .sign(&key);
    api.post_bytes("/v1/transactions", &signed.to_bytes())?.ok()
}

/// Waits until job `id` is decided (its submission may not be committed
/// yet: 404 until it is).
fn wait_for_job(api: &ApiClient, id: &str) -> Result<Value> {
    let started = Instant::now();
    loop {
        let answer = api.get(&format!("/v1/jobs/{id}"))?;
        if answer.status != 404 {
            let job = answer.ok()?;
            if job["status"] != "pending" {
                return Ok(job);
            }
        }
        if started.elapsed() > JOB_WAIT {
            bail!(
                "job {id} was not decided within {JOB_WAIT:?}; look it up later with `soma client job {id}`"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A job in a few lines.
fn job_summary(job: &Value) -> String {
    let mut out = format!(
        "job {} ({})",
        job["id"].as_str().unwrap_or("?"),
        job["status"].as_str().unwrap_or("?")
    );
    for e in job["finalisation"]["encoders"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "\n  {:<16} {:<15} loss {:.4}  reward {}  slashed {}{}",
            e["name"].as_str().unwrap_or("?"),
            e["outcome"].as_str().unwrap_or("?"),
            e["loss"].as_f64().unwrap_or(0.0),
            e["reward"],
            e["slashed"],
            if e["disqualified"] == true {
                "  (disqualified)"
            } else {
                ""
            }
        ));
    }
    if let Some(embedding) = job["finalisation"]["embedding"].as_array() {
        let head: Vec<String> = embedding
            .iter()
            .take(4)
            .map(|x| format!("{:.4}", x.as_f64().unwrap_or(0.0)))
            .collect();
        out.push_str(&format!(
            "\n  embedding [{}, …] ({} dimensions)",
            head.join(", "),
            embedding.len()
        ));
    }
    out
}
