//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` under libFuzzer
//! with cargo-fuzz and the nightly toolchain, installing what is missing.
//!
//! Each target starts from its committed corpus (`fuzz/corpus/<target>`)
//! and grows a scratch copy under `target/fuzz/corpus/`, so that a long run
//! leaves the committed seeds alone; findings land in
//! `target/fuzz/artifacts/<target>/`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Every target: the binaries in `fuzz/fuzz_targets/`, by name.
fn all_targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| {
            e.ok()?
                .path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    targets.sort();
    Ok(targets)
}

/// Linux's shared-memory file system.
const TMPFS: &str = "/dev/shm";

/// What one target's run found.
struct Report {
    target: String,
    executions: Option<u64>,
    per_second: Option<u64>,
    coverage: Option<u64>,
    features: Option<u64>,
    corpus: Option<u64>,
    findings: Vec<PathBuf>,
    failed: Option<String>,
}

/// Runs `targets` (all if empty) for `seconds` each with `sanitizer`.
pub fn run(root: &Path, seconds: u64, sanitizer: &str, targets: &[String]) -> Result<()> {
    let all = all_targets(root)?;
    if let Some(unknown) = targets.iter().find(|t| !all.contains(t)) {
        bail!(
            "no fuzz target `{unknown}`; the targets are {}",
            all.join(", ")
        );
    }
    let targets = if targets.is_empty() {
        all
    } else {
        targets.to_vec()
    };
    install(root)?;
    // The fuzz binaries are built elsewhere, by another toolchain: the
    // inference worker (for the `model` target) and the example components
    // (built for wasm32-wasip2, which only the stable toolchain is sure to
    // have) come from the stable build, and the targets are told where.
    let worker = crate::build_worker()?;
    crate::cargo(&["build", "--locked", "--package", "soma-examples-artifacts"])?;
    let components = root
        .join("target/guests")
        .join(crate::WASM_TARGET)
        .join("release");
    let ort = root.join(".cache/soma/onnxruntime/libonnxruntime.so");
    let needed = [
        worker.clone(),
        components.join("hostile.wasm"),
        components.join("scripted_encoder.wasm"),
        ort.clone(),
    ];
    if let Some(missing) = needed.iter().find(|p| !p.is_file()) {
        bail!(
            "{} is missing after the build and set-up (is CARGO_TARGET_DIR set? the fuzz \
             targets expect the stable build in target/)",
            missing.display()
        );
    }
    eprintln!(
        "xtask: building the fuzz targets (nightly, sanitizer {sanitizer}; the first build takes minutes)"
    );
    let status = nightly(root)
        .args([
            "fuzz",
            "build",
            "--debug-assertions",
            "--sanitizer",
            sanitizer,
        ])
        .status()
        .context("cannot run cargo +nightly fuzz")?;
    if !status.success() {
        bail!("cargo +nightly fuzz build failed ({status})");
    }
    let mut reports = Vec::new();
    for target in &targets {
        reports.push(run_target(
            root,
            target,
            seconds,
            sanitizer,
            &worker,
            &components,
        )?);
    }
    println!(
        "\n{:<14} {:>12} {:>8} {:>8} {:>8} {:>8}  result",
        "target", "executions", "exec/s", "cov", "ft", "corpus"
    );
    let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    for r in &reports {
        let result = match (&r.failed, r.findings.is_empty()) {
            (Some(reason), _) => reason.clone(),
            (None, true) => "no finding".to_string(),
            (None, false) => format!("{} finding(s)", r.findings.len()),
        };
        println!(
            "{:<14} {:>12} {:>8} {:>8} {:>8} {:>8}  {result}",
            r.target,
            show(r.executions),
            show(r.per_second),
            show(r.coverage),
            show(r.features),
            show(r.corpus),
        );
    }
    let bad: Vec<&Report> = reports
        .iter()
        .filter(|r| r.failed.is_some() || !r.findings.is_empty())
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    for r in &bad {
        for finding in &r.findings {
            println!("{}: {}", r.target, finding.display());
        }
    }
    println!(
        "to replay a finding as a test: copy it into fuzz/regressions/<target>/, then\n  \
         cargo build -p soma-host --bin soma-inference-worker && cargo test -p soma-fuzz --test corpus"
    );
    bail!(
        "{} of {} targets found something or failed to run",
        bad.len(),
        reports.len()
    )
}

/// Checks that the nightly toolchain is there and installs cargo-fuzz.
fn install(root: &Path) -> Result<()> {
    let nightly_rustc = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output();
    if !nightly_rustc.is_ok_and(|o| o.status.success()) {
        bail!(
            "fuzzing needs the nightly toolchain (libFuzzer's instrumentation is unstable): \
             install it with `rustup toolchain install nightly` and run this again"
        );
    }
    let has_fuzz = nightly(root)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_fuzz {
        eprintln!("xtask: installing cargo-fuzz with `cargo install cargo-fuzz --locked`");
        let status = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("cannot run cargo install")?;
        if !status.success() {
            bail!(
                "`cargo install cargo-fuzz --locked` failed ({status}); install cargo-fuzz by hand \
                 and run this again"
            );
        }
    }
    Ok(())
}

/// `cargo +nightly` in `root`, without what the outer cargo set for itself.
fn nightly(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command.arg("+nightly").current_dir(root);
    for var in [
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs one target for `seconds`, its libFuzzer output in
/// `target/fuzz/<target>.log`.
fn run_target(
    root: &Path,
    target: &str,
    seconds: u64,
    sanitizer: &str,
    worker: &Path,
    components: &Path,
) -> Result<Report> {
    let work = root.join("target/fuzz");
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let log_path = work.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)?;
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let started = Instant::now();
    let cache = root.join(".cache/soma");
    let mut child = nightly(root)
        .args([
            "fuzz",
            "run",
            "--debug-assertions",
            "--sanitizer",
            sanitizer,
            target,
        ])
        .arg(&corpus)
        .arg(root.join("fuzz/corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=60")
        // Inputs of any length from the start: the slow targets (apply,
        // model, component) would otherwise spend a whole run on inputs of
        // a few dozen bytes while libFuzzer grows its length limit.
        .arg("-len_control=0")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .envs(unset([
            ("SOMA_INFERENCE_WORKER", worker.to_path_buf()),
            ("SOMA_FUZZ_COMPONENTS", components.to_path_buf()),
            (
                "SOMA_ORT_DYLIB",
                cache.join("onnxruntime/libonnxruntime.so"),
            ),
            ("SOMA_MODELS_DIR", cache.join("models")),
        ]))
        // Scratch state (the `apply` target opens two stores per input)
        // on tmpfs where there is one: the target measures apply, not the
        // disk's fsync.
        .envs(unset(
            Path::new(TMPFS)
                .is_dir()
                .then(|| ("TMPDIR", PathBuf::from(TMPFS))),
        ))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot run cargo +nightly fuzz run")?;
    let mut reported = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        let elapsed = started.elapsed().as_secs();
        if elapsed >= reported + 60 {
            reported = elapsed;
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let status = text
                .lines()
                .rfind(|l| l.starts_with('#'))
                .unwrap_or("building");
            eprintln!("xtask: {target}: {elapsed} of {seconds} s: {status}");
        }
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    // What libFuzzer wrote as a finding (a crash, timeout, leak or
    // running out of memory); slow units are written the same way but are
    // not findings.
    let findings: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            Some(PathBuf::from(
                l.split("Test unit written to ").nth(1)?.trim(),
            ))
        })
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("slow-unit-"))
        })
        .collect();
    let stat = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .next_back()
            .and_then(|v| v.trim().parse().ok())
    };
    // libFuzzer's last status line: `#N DONE cov: C ft: F corp: K/...`.
    let last = text
        .lines()
        .rfind(|l| l.starts_with('#') && l.contains("cov:"));
    let field = |name: &str| {
        let line = last?;
        let rest = &line[line.find(name)? + name.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    let failed = (!status.success() && findings.is_empty()).then(|| {
        format!(
            "stopped ({status}) after {:.0} s without a finding: see {}",
            started.elapsed().as_secs_f64(),
            log_path.display()
        )
    });
    Ok(Report {
        target: target.to_string(),
        executions: stat("number_of_executed_units"),
        per_second: stat("average_exec_per_sec"),
        coverage: field("cov: "),
        features: field("ft: "),
        corpus: field("corp: "),
        findings,
        failed,
    })
}

/// The variables of `vars` the environment does not set already (what is
/// set wins, as in `.cargo/config.toml`).
fn unset<'a>(
    vars: impl IntoIterator<Item = (&'a str, PathBuf)>,
) -> impl Iterator<Item = (&'a str, PathBuf)> {
    vars.into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
}
