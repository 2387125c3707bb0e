//! `soma`: run a Soma validator or a local network of them.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use soma_consensus::Node;
use soma_validator::config::{ValidatorFile, write_localnet};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "soma", version, about = "Run Soma validators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one validator from its configuration file until killed.
    Node {
        /// The validator's config.json.
        #[arg(long)]
        config: PathBuf,
    },
    /// Writes keys and configurations for a network of validators on
    /// 127.0.0.1 (each then runs with `soma node --config`).
    Genesis {
        /// Directory to write into (validator-<i>/ per validator).
        #[arg(long)]
        dir: PathBuf,
        /// Number of validators.
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Port of validator 0; the others follow.
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Genesis {
            dir,
            validators,
            base_port,
        } => {
            for path in write_localnet(&dir, validators, base_port)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Node { config } => {
            let file = ValidatorFile::read(&config)?;
            let dir = config.parent().map(PathBuf::from).unwrap_or_default();
            let node_config = file.node_config(&dir)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async move {
                let mut node = Node::start(node_config).await?;
                tracing::info!(authority = file.authority, "validator running");
                loop {
                    tokio::select! {
                        commit = node.next_commit() => match commit {
                            Some(subdag) => tracing::debug!(leader = ?subdag.leader, blocks = subdag.blocks.len(), "committed"),
                            None => break,
                        },
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
                node.stopped().await.context("validator stopped")
            })
        }
    }
}
