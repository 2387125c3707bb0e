//! `cargo xtask`: the project's set-up, demo, test and benchmark commands.
//!
//! Every command first runs `setup`, so a newcomer on a fresh machine needs
//! nothing but a Rust toolchain installed with rustup.

mod assets;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Soma's development tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs: the wasm32-wasip2 Rust target, clippy
    /// and rustfmt, the ONNX Runtime library and the models.
    Setup,
    /// Set up, build the example encoders and show them at work.
    Demo,
    /// Set up, check formatting and lints, and run every test of the workspace.
    Test,
    /// Set up, run the benchmarks and write BENCHMARKS.md.
    Bench,
    /// Run thousands of seeded consensus simulations (arguments go to
    /// `consensus-sim`; see `cargo xtask sim -- --help`).
    Sim {
        /// Passed on to `consensus-sim`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Consensus simulations need none of the encoder assets.
    if !matches!(cli.task, Task::Sim { .. }) {
        setup()?;
    }
    match cli.task {
        Task::Setup => Ok(()),
        Task::Demo => cargo(&["run", "--locked", "--package", "soma-demo"]),
        Task::Test => {
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&["test", "--workspace", "--locked"])
        }
        Task::Sim { args } => {
            let mut command = vec![
                "run",
                "--locked",
                "--package",
                "soma-consensus",
                "--bin",
                "consensus-sim",
                "--",
            ];
            command.extend(args.iter().map(String::as_str));
            cargo(&command)
        }
        Task::Bench => {
            for (package, bench) in BENCHES {
                cargo(&["bench", "--locked", "--package", package, "--bench", bench])?;
            }
            write_benchmarks()
        }
    }
}

/// Every benchmark `cargo xtask bench` runs: (package, bench target). Each
/// writes its section to `target/bench/<bench>.md`.
const BENCHES: [(&str, &str); 3] = [
    ("soma-host", "host"),
    ("soma-consensus", "consensus"),
    ("soma-execution", "execution"),
];

/// Assembles BENCHMARKS.md from the sections the benchmarks wrote.
fn write_benchmarks() -> Result<()> {
    let root = workspace();
    let mut md = String::from(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench`. Every ratio compares two figures measured in the same \
         run on the same machine.\n\n",
    );
    for (_, bench) in BENCHES {
        let path = root.join("target/bench").join(format!("{bench}.md"));
        let section = std::fs::read_to_string(&path)
            .with_context(|| format!("the {bench} benchmark wrote no {}", path.display()))?;
        md.push_str(&section);
        md.push('\n');
    }
    std::fs::write(root.join("BENCHMARKS.md"), md).context("cannot write BENCHMARKS.md")?;
    Ok(())
}

/// Installs what the build needs and is missing: the `wasm32-wasip2`
/// standard library, clippy and rustfmt for `test`, and the ONNX Runtime
/// library and models (see [`assets`]).
fn setup() -> Result<()> {
    if !target_installed()? {
        rustup(
            &["target", "add", WASM_TARGET],
            &format!("the Rust target {WASM_TARGET}"),
        )?;
        if !target_installed()? {
            bail!(
                "rustup reported success, but the {WASM_TARGET} standard library is still missing"
            );
        }
    }
    let has = |tool: &str| {
        Command::new("cargo")
            .args([tool, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("clippy") || !has("fmt") {
        rustup(
            &["component", "add", "clippy", "rustfmt"],
            "clippy and rustfmt",
        )?;
    }
    assets::install(&workspace().join(".cache"))
}

/// Runs rustup to install `what`, explaining how to do it by hand if that fails.
fn rustup(args: &[&str], what: &str) -> Result<()> {
    eprintln!("xtask: installing {what} with `rustup {}`", args.join(" "));
    match Command::new("rustup")
        .args(args)
        .current_dir(workspace())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => bail!(
            "`rustup {}` failed ({s}); install {what} for the toolchain in use and run this again",
            args.join(" ")
        ),
        Err(e) => bail!(
            "cannot run rustup ({e}); install Rust with rustup (https://rustup.rs) or add {what} to your toolchain by hand"
        ),
    }
}

fn target_installed() -> Result<bool> {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .current_dir(workspace())
        .output()
        .context("cannot run rustc")?;
    let libdir = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && Path::new(libdir.trim()).is_dir())
}

/// Runs cargo in the workspace root, failing if it fails.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace())
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
