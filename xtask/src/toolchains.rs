//! Toolchains for the example encoders written in other languages than
//! Rust, at pinned versions under `.cache/soma/` (git-ignored):
//! componentize-py for the Python encoder, from the Python package index
//! into a virtual environment, and componentize-js for the JavaScript
//! encoder, from the npm registry.
//!
//! A toolchain that cannot be had is not an error of set-up: the Rust
//! examples build without it, and the example build says what is missing.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The componentize-py release the Python example is built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The componentize-js release the JavaScript example is built with.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// Where the componentize-py environment lives, under `.cache/`.
const VENV: &str = "soma/componentize-py";

/// Where componentize-js is installed, under `.cache/`.
const NODE_PREFIX: &str = "soma/componentize-js";

/// Installs each toolchain unless its pinned version is already there;
/// says why, and goes on, when one cannot be had.
pub fn install(cache: &Path) -> Result<()> {
    let venv = cache.join(VENV);
    if installed_version(&venv).as_deref() != Some(COMPONENTIZE_PY)
        && let Err(e) = install_componentize_py(&venv)
    {
        warn("Python", &e);
    }
    let prefix = cache.join(NODE_PREFIX);
    if installed_js_version(&prefix).as_deref() != Some(COMPONENTIZE_JS)
        && let Err(e) = install_componentize_js(&prefix)
    {
        warn("JavaScript", &e);
    }
    Ok(())
}

fn warn(language: &str, error: &anyhow::Error) {
    eprintln!(
        "xtask: warning: the {language} example encoder will not be built: {error:#}\n\
         xtask: the Rust examples build without it; its tests fail until this is fixed."
    );
}

/// The version of componentize-js installed under `prefix`, if any.
fn installed_js_version(prefix: &Path) -> Option<String> {
    let out = Command::new(prefix.join("node_modules/.bin/componentize-js"))
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn install_componentize_js(prefix: &Path) -> Result<()> {
    eprintln!(
        "xtask: installing componentize-js {COMPONENTIZE_JS} from the npm registry into {} \
         (about 400 MB)",
        prefix.display()
    );
    std::fs::create_dir_all(prefix)?;
    let status = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(prefix)
        .arg(format!(
            "@bytecodealliance/componentize-js@{COMPONENTIZE_JS}"
        ))
        .status()
        .context("cannot run npm; install Node.js 20 or later with npm")?;
    if !status.success() {
        bail!(
            "`npm install @bytecodealliance/componentize-js@{COMPONENTIZE_JS}` failed ({status}); \
             check access to the npm registry"
        );
    }
    match installed_js_version(prefix) {
        Some(v) if v == COMPONENTIZE_JS => Ok(()),
        other => {
            bail!("componentize-js reports version {other:?} after installing {COMPONENTIZE_JS}")
        }
    }
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
