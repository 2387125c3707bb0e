//! `soma-host`: run Soma encoder components from the command line.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use soma_crypto::keyfile;
use soma_crypto::{PublicKey, SecretKey};
use soma_host::package::{self, EncoderMeta, Package, VerifiedPackage};
use soma_host::{CompiledCache, Engine, Limits, Seed};
use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
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

    /// Generate an ed25519 signing key for packages.
    ///
    /// Writes the secret key as hex to a new file only you can read (an
    /// existing file is never overwritten) and prints the public key.
    Keygen {
        /// Where to write the secret key.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
    },

    /// Package an encoder component with its models and sign it.
    ///
    /// Name, version, dimension and modality are read from the component's
    /// own `info()`, so the manifest always describes the code it ships.
    Sign(SignArgs),

    /// Check a package's signature and blobs.
    Verify {
        /// The package file.
        package: PathBuf,
        /// Accept only packages signed by this public key (hex).
        #[arg(long, value_name = "PUBLIC_KEY")]
        trusted_key: Option<String>,
    },

    /// Show what a package contains, after verifying it.
    Inspect {
        /// The package file.
        package: PathBuf,
        /// Print the manifest as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct SignArgs {
    /// The secret key file written by `keygen`.
    #[arg(short, long, value_name = "FILE")]
    key: PathBuf,
    /// The encoder component (`.wasm`).
    #[arg(short, long, value_name = "FILE")]
    component: PathBuf,
    /// A model file to ship; repeat for several. The package names it by its
    /// file name.
    #[arg(short, long = "model", value_name = "FILE")]
    models: Vec<PathBuf>,
    /// Most fuel one `embed` call of this encoder may use.
    #[arg(long, default_value_t = Limits::default().fuel)]
    fuel_limit: u64,
    /// Where to write the package.
    #[arg(short, long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The encoder: a signed package, or a bare component (a `.wasm` file
    /// built for wasm32-wasip2).
    component: PathBuf,

    /// For a package: accept only this signer (hex public key).
    #[arg(long, value_name = "PUBLIC_KEY")]
    trusted_key: Option<String>,

    /// Keep compiled code here and reuse it on later runs.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// A text input; repeat for a batch.
    #[arg(short, long = "input", value_name = "TEXT")]
    inputs: Vec<String>,

    /// A file whose whole content is one input; repeat for a batch.
    #[arg(short, long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Fuel for the call: roughly the number of wasm instructions it may
    /// run. Defaults to a package's fuel limit, or 20 billion.
    #[arg(long)]
    fuel: Option<u64>,

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
        Command::Keygen { out } => keygen(&out),
        Command::Sign(args) => sign(args),
        Command::Verify {
            package,
            trusted_key,
        } => verify(&package, trusted_key.as_deref()).map(|p| {
            println!(
                "OK: package {} ({} {}) signed by {}",
                p.digest(),
                p.manifest().name,
                p.manifest().version,
                p.manifest().signer
            );
        }),
        Command::Inspect { package, json } => inspect(&package, json),
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
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("cannot read component {}", args.component.display()))?;
    let inputs = read_inputs(&args)?;
    if inputs.is_empty() {
        bail!("no inputs: pass --input TEXT, --file FILE, or lines on standard input");
    }
    if args.max_memory > Limits::MEMORY_CEILING {
        bail!(
            "--max-memory may be at most {} bytes",
            Limits::MEMORY_CEILING
        );
    }
    let cache = args
        .cache_dir
        .as_ref()
        .map(CompiledCache::open)
        .transpose()?;

    let engine = Engine::new()?;
    if std::io::stderr().is_terminal() {
        // Compiling and pre-initialising a large encoder takes seconds.
        eprintln!("soma-host: loading {} ...", args.component.display());
    }
    let loading = || format!("cannot load {}", args.component.display());
    let (encoder, package_fuel) = if package::is_package(&bytes) {
        let package = verify_bytes(&bytes, &args.component, args.trusted_key.as_deref())?;
        let fuel = package.manifest().fuel_limit;
        (
            engine
                .load_package(&package, cache.as_ref())
                .with_context(loading)?,
            Some(fuel),
        )
    } else {
        if args.trusted_key.is_some() {
            bail!(
                "--trusted-key needs a signed package; {} is a bare component",
                args.component.display()
            );
        }
        let encoder = match &cache {
            Some(cache) => engine.load_cached(&bytes, cache).map(|(e, _)| e),
            None => engine.load(&bytes),
        };
        (encoder.with_context(loading)?, None)
    };
    let limits = Limits {
        fuel: args.fuel.or(package_fuel).unwrap_or(Limits::default().fuel),
        max_memory_bytes: args.max_memory,
        timeout: Duration::from_secs(args.timeout),
        ..Limits::default()
    };
    let out = encoder.embed(&inputs, &limits, Seed::from(args.seed))?;

    let json = serde_json::json!({
        "encoder": encoder.info(),
        "fuel_used": out.fuel_used,
        "memory_bytes": out.memory_bytes,
        "embeddings": out.vectors,
        "logs": out.logs,
        "logs_dropped": out.logs_dropped,
        "stdout": out.stdout,
        "stderr": out.stderr,
    });
    let text = if args.pretty {
        serde_json::to_string_pretty(&json)?
    } else {
        json.to_string()
    };
    println!("{text}");
    Ok(())
}

fn keygen(out: &Path) -> Result<()> {
    let key = SecretKey::generate()?;
    keyfile::write_secret_key(out, &key)?;
    println!("{}", key.public_key());
    eprintln!(
        "secret key written to {} (keep it private); public key above",
        out.display()
    );
    Ok(())
}

fn sign(args: SignArgs) -> Result<()> {
    let key = keyfile::read_secret_key(&args.key)?;
    let component = std::fs::read(&args.component)
        .with_context(|| format!("cannot read component {}", args.component.display()))?;
    let mut models = Vec::new();
    for path in &args.models {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("model path {} has no UTF-8 file name", path.display()))?;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
        models.push((name.to_string(), bytes));
    }
    let encoder = Engine::new()?
        .load(&component)
        .with_context(|| format!("{} is not a loadable encoder", args.component.display()))?;
    let meta = EncoderMeta::from_info(encoder.info(), args.fuel_limit);
    let package = Package::sign(&key, &meta, component, models)?;
    std::fs::write(&args.out, package.encode())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{}", package.digest());
    eprintln!(
        "signed package {} written to {}",
        package.manifest().name,
        args.out.display()
    );
    Ok(())
}

fn verify(path: &Path, trusted_key: Option<&str>) -> Result<VerifiedPackage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read package {}", path.display()))?;
    verify_bytes(&bytes, path, trusted_key)
}

fn verify_bytes(bytes: &[u8], path: &Path, trusted_key: Option<&str>) -> Result<VerifiedPackage> {
    let trusted = trusted_key
        .map(PublicKey::from_hex)
        .transpose()
        .context("--trusted-key is not a public key")?;
    let refused = || format!("package {} refused", path.display());
    Package::decode(bytes)
        .and_then(|p| p.verify(trusted.as_ref()))
        .with_context(refused)
}

fn inspect(path: &Path, json: bool) -> Result<()> {
    let package = verify(path, None)?;
    let m = package.manifest();
    if json {
        let value = serde_json::json!({ "digest": package.digest(), "manifest": m });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("package     {}", package.digest());
    println!("encoder     {} {}", m.name, m.version);
    println!("world       {}", m.world);
    println!("dimension   {}", m.dimension);
    println!("modality    {:?}", m.modality);
    println!("fuel limit  {}", m.fuel_limit);
    println!("max input   {} bytes", m.max_input_bytes);
    println!("signer      {}", m.signer);
    println!(
        "component   {}  {}",
        m.component.digest,
        human_size(m.component.size)
    );
    for model in &m.models {
        println!(
            "model       {}  {}  {}",
            model.blob.digest,
            human_size(model.blob.size),
            model.name
        );
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 10 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}

fn read_inputs(args: &RunArgs) -> Result<Vec<Vec<u8>>> {
    let mut inputs: Vec<Vec<u8>> = args.inputs.iter().map(|s| s.as_bytes().to_vec()).collect();
    for file in &args.files {
        inputs.push(
            std::fs::read(file)
                .with_context(|| format!("cannot read input file {}", file.display()))?,
        );
    }
    if args.inputs.is_empty() && args.files.is_empty() {
        let mut stdin = Vec::new();
        std::io::stdin()
            .read_to_end(&mut stdin)
            .context("cannot read standard input")?;
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
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count like 256MiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => return Err(format!("unknown unit `{other}` (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
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
