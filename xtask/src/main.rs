//! `cargo xtask`: the project's set-up, demo, test and benchmark commands.
//!
//! Every command first runs `setup`, so a newcomer on a fresh machine needs
//! nothing but a Rust toolchain installed with rustup.

mod assets;
mod corpus;
mod fuzz;
mod toolchains;

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
    /// and rustfmt, the ONNX Runtime library and the models, and the
    /// toolchains of the Python and JavaScript example encoders.
    Setup,
    /// Set up, start a four-validator network on this machine, embed
    /// sentences through its API and report what it decided.
    Demo,
    /// Set up, then run a network of the example encoders on this machine
    /// (`soma localnet` with them registered) until Ctrl-C; arguments go to
    /// its `localnet` mode (`--dir`, `--validators`, `--base-port`).
    Localnet {
        /// Passed on to `soma-demo localnet`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, and run every test of the workspace.
    Test,
    /// Set up, run the benchmarks and write BENCHMARKS.md.
    Bench,
    /// Refit the alignment heads of the example encoders that ship one
    /// (`minilm-l3`, `hash-encoder`) against `minilm-l6`, the network's
    /// space, and write them to `examples/<encoder>/head.bin`.
    Align,
    /// Run the fuzz targets of `fuzz/` under libFuzzer (nightly toolchain;
    /// installs cargo-fuzz if missing) and report executions, coverage and
    /// findings; fails if anything was found.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// The sanitizer to build with (`none`, `address`, ...). Without one
        /// the targets run about twice as fast; a panic, an abort or a
        /// broken check is still a finding.
        #[arg(long, default_value = "none")]
        sanitizer: String,
        /// Targets to run (all if none; they are the files of
        /// `fuzz/fuzz_targets/`).
        targets: Vec<String>,
    },
    /// Run thousands of seeded consensus simulations, optimised (arguments
    /// go to `consensus-sim`; see `cargo xtask sim -- --help`).
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
        Task::Demo => {
            build_node(&[])?;
            cargo(&["run", "--locked", "--package", "soma-demo"])
        }
        Task::Localnet { args } => {
            build_node(&[])?;
            // Replaced by the network, so that Ctrl-C reaches only it and
            // its validators, which then stop cleanly.
            use std::os::unix::process::CommandExt;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let error = Command::new(cargo)
                .args([
                    "run",
                    "--locked",
                    "--package",
                    "soma-demo",
                    "--",
                    "localnet",
                ])
                .args(&args)
                .current_dir(workspace())
                .exec();
            Err(error).context("cannot run cargo run --package soma-demo")
        }
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
                "--release",
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
        Task::Fuzz {
            seconds,
            sanitizer,
            targets,
        } => fuzz::run(&workspace(), seconds, &sanitizer, &targets),
        Task::Align => align(),
        Task::Bench => {
            build_node(&["--release"])?;
            for (package, bench) in BENCHES {
                cargo(&["bench", "--locked", "--package", package, "--bench", bench])?;
            }
            write_benchmarks()
        }
    }
}

/// Builds the debug inference worker, which `soma-align` finds beside
/// itself and the fuzz targets are told of; its path.
fn build_worker() -> Result<PathBuf> {
    cargo(&[
        "build",
        "--locked",
        "--package",
        "soma-host",
        "--bin",
        "soma-inference-worker",
    ])?;
    Ok(workspace().join("target/debug/soma-inference-worker"))
}

/// Builds what the demo and the localnet benchmark start beside their own
/// executables: `soma` (the validators) and the inference worker that
/// every process running ONNX models (the demo and the validators alike)
/// starts; `profile` selects the release build.
fn build_node(profile: &[&str]) -> Result<()> {
    let mut args = vec!["build", "--locked"];
    args.extend(profile);
    args.extend([
        "--package",
        "soma-validator",
        "--bin",
        "soma",
        "--package",
        "soma-host",
        "--bin",
        "soma-inference-worker",
    ]);
    cargo(&args)
}

/// Every benchmark `cargo xtask bench` runs: (package, bench target). Each
/// writes its section to `target/bench/<bench>.md`.
const BENCHES: [(&str, &str); 4] = [
    ("soma-host", "host"),
    ("soma-consensus", "consensus"),
    ("soma-execution", "execution"),
    ("soma-demo", "localnet"),
];

/// Encoders with an alignment head: (crate, model file in `.cache/soma/models`).
const ALIGNED: [(&str, Option<&str>); 2] = [
    ("minilm-l3", Some("paraphrase-minilm-l3-v2.onnx")),
    ("hash-encoder", None),
];

/// The reference of the network's space: (crate, model file).
const REFERENCE: (&str, Option<&str>) = ("minilm-l6", Some("all-minilm-l6-v2-int8.onnx"));

/// Builds the encoders without their heads, packages them with a throwaway
/// key, and fits each head with `soma-align`.
fn align() -> Result<()> {
    let root = workspace();
    let dir = root.join("target/align");
    let guests = dir.join("guests");
    let mut build = vec![
        "build",
        "--locked",
        "--release",
        "--target",
        WASM_TARGET,
        "--no-default-features",
        "--target-dir",
    ];
    let guests_arg = guests
        .to_str()
        .context("the target directory is not UTF-8")?;
    build.push(guests_arg);
    for (name, _) in ALIGNED.iter().chain([&REFERENCE]) {
        build.extend(["--package", name]);
    }
    eprintln!("xtask: building the encoders without their heads");
    cargo(&build)?;
    let key = dir.join("key");
    match std::fs::remove_file(&key) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", key.display()));
        }
        _ => {}
    }
    let path = |p: &Path| p.to_str().map(String::from).context("a path is not UTF-8");
    // The `soma-host` CLI, built like the tests build it.
    let soma_host = |args: &[&str]| {
        let mut run = vec![
            "run",
            "--locked",
            "--quiet",
            "--package",
            "soma-host",
            "--bin",
            "soma-host",
            "--",
        ];
        run.extend(args);
        cargo(&run)
    };
    soma_host(&["keygen", "--out", &path(&key)?])?;
    let package = |(name, model): (&str, Option<&str>)| -> Result<PathBuf> {
        let component = guests
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let out = dir.join(format!("{name}.somapkg"));
        let (key, component, out_arg) = (path(&key)?, path(&component)?, path(&out)?);
        let mut args = vec![
            "sign",
            "--key",
            &key,
            "--component",
            &component,
            "--out",
            &out_arg,
        ];
        let model = model.map(|m| root.join(".cache/soma/models").join(m));
        let model = model.as_deref().map(path).transpose()?;
        if let Some(model) = &model {
            args.extend(["--model", model]);
        }
        soma_host(&args)?;
        Ok(out)
    };
    cargo(&["fetch", "--locked"])?;
    let corpus = corpus::from_registry(&root.join("Cargo.lock"), 12_000)?;
    let corpus_file = dir.join("corpus.txt");
    std::fs::write(&corpus_file, corpus.join("\n"))
        .with_context(|| format!("cannot write {}", corpus_file.display()))?;
    eprintln!(
        "xtask: {} sentences from the documentation of the locked crates in {}",
        corpus.len(),
        corpus_file.display()
    );
    let reference = package(REFERENCE)?;
    let mut args = vec![
        "run".to_string(),
        "--locked".into(),
        "--package".into(),
        "soma-align".into(),
        "--".into(),
        "--reference".into(),
        path(&reference)?,
        "--corpus".into(),
        path(&corpus_file)?,
    ];
    for encoder in ALIGNED {
        let head = root.join("examples").join(encoder.0).join("head.bin");
        args.extend(["--source".into(), path(&package(encoder)?)?]);
        args.extend(["--out".into(), path(&head)?]);
    }
    eprintln!("xtask: fitting the heads");
    // `soma-align` runs the MiniLM models in the worker beside it.
    build_worker()?;
    cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(())
}

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
/// standard library, clippy and rustfmt for `test`, the ONNX Runtime
/// library and models (see [`assets`]), and the toolchains of the Python
/// and JavaScript example encoders (see [`toolchains`]).
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
    let cache = workspace().join(".cache");
    assets::install(&cache)?;
    toolchains::install(&cache)
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
