//! `soma`: run a Soma validator or a local network of them.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use soma_validator::config::{Localnet, write_localnet};
use soma_validator::node::TooFarBehind;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command as Process, ExitCode};
use std::time::{Duration, Instant};

mod client_command;

#[derive(Parser)]
#[command(name = "soma", version, about = "Run Soma validators")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one validator from its configuration file until Ctrl-C.
    Node {
        /// The validator's config.json.
        #[arg(long)]
        config: PathBuf,
        /// Restore the state from peers first, as `restore-state` does
        /// (what a validator beyond its peers' retention runs itself with).
        #[arg(long)]
        restore_first: bool,
        /// Apply commits up to and including this one and no more, while
        /// still serving peers (`"halted": true` in /health): validators
        /// halted after the same commit can be upgraded together.
        #[arg(long, value_name = "COMMIT")]
        halt_after: Option<u64>,
    },
    /// Writes keys, a genesis and configurations for a network of
    /// validators on 127.0.0.1 (each then runs with `soma node --config`);
    /// prints the configuration paths.
    Genesis(NetworkArgs),
    /// Writes a network as `genesis` does and runs every validator as a
    /// process of its own until Ctrl-C.
    Localnet(NetworkArgs),
    /// Checks that a stopped validator's state is whole: its entries hash
    /// to the state digest its last root folded in.
    VerifyState {
        /// The validator's config.json.
        #[arg(long)]
        config: PathBuf,
    },
    /// Replaces a stopped validator's state with a copy from its peers
    /// (`peer_apis`), trusted for a root that validators of a quorum of
    /// stake sign; the old state is kept aside. Start the node again
    /// afterwards: it applies the commits since from its consensus store.
    RestoreState {
        /// The validator's config.json.
        #[arg(long)]
        config: PathBuf,
    },
    /// Talks to a node's API: keys, balances, transfers, stake, encoder
    /// registration, submissions and jobs.
    Client(client_command::ClientArgs),
}

#[derive(Args)]
struct NetworkArgs {
    /// Directory to write into.
    #[arg(long)]
    dir: PathBuf,
    /// Number of validators.
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Consensus port of validator 0; the others follow, then the API
    /// ports (validator i's API is at base + validators + i).
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// A signed encoder package registered at genesis (repeatable).
    #[arg(long = "encoder")]
    encoders: Vec<PathBuf>,
    /// The signed package of the network's router.
    #[arg(long)]
    router: Option<PathBuf>,
}

impl NetworkArgs {
    fn write(&self) -> Result<Vec<PathBuf>> {
        if self.encoders.is_empty() {
            eprintln!(
                "no encoder is registered at genesis (--encoder): jobs find no shard until one \
                 is registered (`soma client register-encoder`); `cargo xtask localnet` runs a \
                 network of the example encoders"
            );
        }
        write_localnet(&Localnet {
            dir: &self.dir,
            validators: self.validators,
            base_port: self.base_port,
            encoders: &self.encoders,
            router: self.router.as_deref(),
        })
    }
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
    let runtime = || tokio::runtime::Runtime::new().context("cannot start the async runtime");
    match cli.command {
        Command::Client(args) => client_command::run(args),
        Command::VerifyState { config } => {
            let commits = soma_validator::restore::verify_state(&config)?;
            println!(
                "the state after {commits} commits is whole: its entries hash to the digest its \
                 root folds in"
            );
            Ok(())
        }
        Command::RestoreState { config } => {
            println!("{}", soma_validator::restore::restore_state(&config)?);
            Ok(())
        }
        Command::Genesis(args) => {
            for path in args.write()? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Node {
            config,
            restore_first,
            halt_after,
        } => {
            if restore_first {
                let restored = soma_validator::restore::restore_state(&config)?;
                tracing::info!("{restored}");
                // Restoring by itself, it keeps only the copies it just
                // moved aside.
                match soma_validator::restore::remove_older_copies(&config, &restored) {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::info!("removed {removed} copies earlier restores had moved aside")
                    }
                    Err(e) => tracing::warn!("cannot remove copies earlier restores left: {e:#}"),
                }
            }
            let ran = runtime()?.block_on(soma_validator::node::run(&config, halt_after, async {
                let _ = tokio::signal::ctrl_c().await;
            }));
            let behind = ran
                .as_ref()
                .err()
                .and_then(|e| e.downcast_ref::<TooFarBehind>());
            match behind {
                // Restoring just now did not bring it within reach: another
                // restore would not either.
                Some(behind) if restore_first && !behind.progressed => ran.context(
                    "the state restored from peers at this start was not recent enough to catch \
                     up from; try again when more peers are up to date",
                ),
                Some(behind) if behind.restore_automatically => {
                    tracing::warn!(
                        "{behind}: restoring it from its peers and starting again \
                         (`restore_automatically` in its configuration)"
                    );
                    // A new process image: whatever this run holds (its
                    // stores, its ports, its threads) is let go at once.
                    let me = std::env::current_exe().context("cannot find the soma executable")?;
                    let mut again = Process::new(me);
                    again
                        .args(["node", "--restore-first", "--config"])
                        .arg(&config);
                    if let Some(halt) = halt_after {
                        again.args(["--halt-after", &halt.to_string()]);
                    }
                    let error = again.exec();
                    Err(error).context("cannot start this validator again to restore it")
                }
                _ => {
                    ran?;
                    tracing::info!("validator stopped");
                    Ok(())
                }
            }
        }
        Command::Localnet(args) => {
            let configs = args.write()?;
            let me = std::env::current_exe().context("cannot find the soma executable")?;
            let mut children = Vec::new();
            for (i, config) in configs.iter().enumerate() {
                let child = Process::new(&me)
                    .args(["node", "--config"])
                    .arg(config)
                    .spawn()
                    .with_context(|| format!("cannot start validator {i}"));
                match child {
                    Ok(child) => children.push(child),
                    Err(e) => {
                        stop(&mut children);
                        return Err(e);
                    }
                }
            }
            eprintln!(
                "{} validators running; clients: {}; Ctrl-C stops them",
                children.len(),
                args.dir.join("client.json").display()
            );
            let waited = runtime().map(|runtime| {
                runtime.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
            });
            let stopped = stop(&mut children);
            waited?;
            if stopped < children.len() {
                anyhow::bail!(
                    "{} of {} validators did not stop cleanly",
                    children.len() - stopped,
                    children.len()
                );
            }
            Ok(())
        }
    }
}

/// How long validators have to stop on their own before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Asks the validator processes to stop as Ctrl-C asks one (a terminal's
/// Ctrl-C has already reached them; a signal sent to this process alone
/// has not), waits up to [`STOP_GRACE`] for them, kills what is left, and
/// says how each ended; how many stopped cleanly.
fn stop(children: &mut [Child]) -> usize {
    for child in children.iter() {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) has no memory effects; the pid is a child
            // not yet waited for, so it names no other process.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut stopped = 0;
    for (i, child) in children.iter_mut().enumerate() {
        let ended = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) | Err(_) => break None,
            }
        };
        match ended {
            Some(status) if status.success() => stopped += 1,
            Some(status) => eprintln!("validator {i} ended with {status}"),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("validator {i} did not stop within {STOP_GRACE:?}: killed");
            }
        }
    }
    eprintln!("{stopped} of {} validators stopped cleanly", children.len());
    stopped
}
