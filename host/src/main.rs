//! `soma-host`: run Soma encoder components from the command line.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use soma_host::{Engine, Limits, Seed};
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run Soma encoder components in the deterministic sandbox.
#[derive(Parser)]
#[command(name = "soma-host", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed inputs with an encoder component and print the result as JSON.
    ///
    /// Inputs come from --input and --file, in that order; with neither,
    /// each non-empty line of standard input is one input. The JSON holds the
    /// encoder's info, one vector per input, the fuel used, and what the
    /// encoder logged.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The encoder component (a `.wasm` file built for wasm32-wasip2).
    component: PathBuf,

    /// A text input; repeat for a batch.
    #[arg(short, long = "input", value_name = "TEXT")]
    inputs: Vec<String>,

    /// A file whose whole content is one input; repeat for a batch.
    #[arg(short, long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Fuel for the call: roughly the number of wasm instructions it may run.
    #[arg(long, default_value_t = Limits::default().fuel)]
    fuel: u64,

    /// Linear memory the encoder may use, in bytes (suffixes KiB, MiB, GiB).
    #[arg(long, value_name = "BYTES", default_value = "512MiB", value_parser = parse_bytes)]
    max_memory: u64,

    /// Seed of the encoder's random source; the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Wall-clock safety limit in seconds (fuel is the real budget).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().timeout.as_secs())]
    timeout: u64,

    /// Pretty-print the JSON.
    #[arg(long)]
    pretty: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let limits = Limits {
        fuel: args.fuel,
        max_memory_bytes: args.max_memory,
        timeout: Duration::from_secs(args.timeout),
        ..Limits::default()
    };
    if limits.max_memory_bytes > Limits::MEMORY_CEILING {
        bail!("--max-memory may be at most {} bytes", Limits::MEMORY_CEILING);
    }
    let wasm = std::fs::read(&args.component)
        .with_context(|| format!("cannot read component {}", args.component.display()))?;
    let inputs = read_inputs(&args)?;
    if inputs.is_empty() {
        bail!("no inputs: pass --input TEXT, --file FILE, or lines on standard input");
    }

    let engine = Engine::new()?;
    let encoder = engine
        .load(&wasm)
        .with_context(|| format!("cannot load {}", args.component.display()))?;
    let out = encoder.embed(&inputs, &limits, Seed::from(args.seed))?;

    let json = serde_json::json!({
        "encoder": encoder.info(),
        "fuel_used": out.fuel_used,
        "embeddings": out.vectors,
        "logs": out.logs,
        "logs_dropped": out.logs_dropped,
        "stdout": out.stdout,
        "stderr": out.stderr,
    });
    let text = if args.pretty { serde_json::to_string_pretty(&json)? } else { json.to_string() };
    println!("{text}");
    Ok(())
}

fn read_inputs(args: &RunArgs) -> Result<Vec<Vec<u8>>> {
    let mut inputs: Vec<Vec<u8>> = args.inputs.iter().map(|s| s.as_bytes().to_vec()).collect();
    for file in &args.files {
        inputs.push(std::fs::read(file).with_context(|| format!("cannot read input file {}", file.display()))?);
    }
    if args.inputs.is_empty() && args.files.is_empty() {
        let mut stdin = Vec::new();
        std::io::stdin().read_to_end(&mut stdin).context("cannot read standard input")?;
        for line in stdin.lines() {
            let line = line.context("standard input is not UTF-8 text")?;
            if !line.trim().is_empty() {
                inputs.push(line.into_bytes());
            }
        }
    }
    Ok(inputs)
}

/// Parses `1048576`, `64KiB`, `256MiB` or `2GiB`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a byte count like 256MiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => return Err(format!("unknown unit `{other}` (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_parse_with_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        assert!(parse_bytes("12MB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("lots").is_err());
    }
}
