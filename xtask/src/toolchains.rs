//! Toolchains for the example encoders written in other languages than
//! Rust: componentize-py for the Python encoder, installed from the Python
//! package index into a virtual environment under `.cache/soma/`
//! (git-ignored), at a pinned version.
//!
//! A toolchain that cannot be had is not an error of set-up: the Rust
//! examples build without it, and the example build says what is missing.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The componentize-py release the Python example is built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// Where the componentize-py environment lives, under `.cache/`.
const VENV: &str = "soma/componentize-py";

/// Installs componentize-py unless the pinned version is already there;
/// says why, and goes on, when it cannot.
pub fn install(cache: &Path) -> Result<()> {
    let venv = cache.join(VENV);
    if installed_version(&venv).as_deref() == Some(COMPONENTIZE_PY) {
        return Ok(());
    }
    if let Err(e) = install_componentize_py(&venv) {
        eprintln!(
            "xtask: warning: the Python example encoder will not be built: {e:#}\n\
             xtask: the Rust examples build without it; its tests fail until this is fixed."
        );
    }
    Ok(())
}

/// The `componentize-py` program in `venv`.
fn program(venv: &Path) -> PathBuf {
    venv.join("bin").join("componentize-py")
}

fn installed_version(venv: &Path) -> Option<String> {
    let out = Command::new(program(venv)).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "componentize-py 0.25.1"
    out.status
        .success()
        .then(|| text.split_whitespace().nth(1).map(str::to_string))
        .flatten()
}

fn install_componentize_py(venv: &Path) -> Result<()> {
    eprintln!(
        "xtask: installing componentize-py {COMPONENTIZE_PY} from the Python package index into {}",
        venv.display()
    );
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .status()
        .with_context(|| format!("cannot run {} -m venv", python.to_string_lossy()))?;
    if !status.success() {
        bail!("`python3 -m venv` failed ({status}); install Python 3 with its venv module");
    }
    let status = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("componentize-py=={COMPONENTIZE_PY}"))
        .status()
        .context("cannot run pip in the new virtual environment")?;
    if !status.success() {
        bail!(
            "`pip install componentize-py=={COMPONENTIZE_PY}` failed ({status}); check access to the Python package index"
        );
    }
    match installed_version(venv) {
        Some(v) if v == COMPONENTIZE_PY => Ok(()),
        other => {
            bail!("componentize-py reports version {other:?} after installing {COMPONENTIZE_PY}")
        }
    }
}
