//! Tools from other languages, at pinned versions under `.cache/soma/`
//! (git-ignored): componentize-py for the Python encoder, from the Python
//! package index into a virtual environment, and componentize-js for the
//! JavaScript encoder, from the npm registry; and the `openai` Python
//! package, whose client the node's tests point at `/v1/embeddings`.
//!
//! A tool that cannot be had is not an error of set-up: the Rust examples
//! build without it, and what needs it says what is missing.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

/// A Python package pinned into a virtual environment of its own.
struct PythonTool {
    /// What it is for, in messages.
    purpose: &'static str,
    /// Its virtual environment, under `.cache/`.
    venv: &'static str,
    /// What pip installs, without resolving anything else: `name==version`
    /// lines (comments start with `#`), dependencies included.
    requirements: &'static str,
    /// The version `version_command` must print.
    version: &'static str,
    /// A program in the environment's `bin` and its arguments, which print
    /// the installed version as their last word.
    version_command: &'static [&'static str],
}

/// The componentize-py release the Python example is built with.
const COMPONENTIZE_PY: PythonTool = PythonTool {
    purpose: "the Python example encoder",
    venv: "soma/componentize-py",
    requirements: "componentize-py==0.25.1",
    version: "0.25.1",
    // "componentize-py 0.25.1"
    version_command: &["componentize-py", "--version"],
};

/// The OpenAI client the node's API is tested with.
const OPENAI: PythonTool = PythonTool {
    purpose: "the OpenAI client test of the node's API",
    venv: "soma/openai",
    requirements: include_str!("openai-requirements.txt"),
    version: "3.57.0",
    version_command: &["python", "-c", "import openai; print(openai.__version__)"],
};

/// The componentize-js release the JavaScript example is built with.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// Where componentize-js is installed, under `.cache/`.
const NODE_PREFIX: &str = "soma/componentize-js";

/// Installs each toolchain unless its pinned version is already there;
/// says why, and goes on, when one cannot be had.
pub fn install(cache: &Path) -> Result<()> {
    for tool in [COMPONENTIZE_PY, OPENAI] {
        if let Err(e) = tool.install(cache) {
            warn(tool.purpose, &e);
        }
    }
    let prefix = cache.join(NODE_PREFIX);
    if installed_js_version(&prefix).as_deref() != Some(COMPONENTIZE_JS)
        && let Err(e) = install_componentize_js(&prefix)
    {
        warn("the JavaScript example encoder", &e);
    }
    Ok(())
}

fn warn(purpose: &str, error: &anyhow::Error) {
    eprintln!(
        "xtask: warning: {purpose} cannot be had: {error:#}\n\
         xtask: everything else builds without it; its tests fail until this is fixed."
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

impl PythonTool {
    /// The version installed in `venv`, if any.
    fn installed_version(&self, venv: &Path) -> Option<String> {
        let (program, args) = self.version_command.split_first()?;
        let out = Command::new(venv.join("bin").join(program))
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        out.status
            .success()
            .then(|| text.split_whitespace().last().map(str::to_string))
            .flatten()
    }

    /// Installs the pinned version unless it is there already.
    fn install(&self, cache: &Path) -> Result<()> {
        let venv = cache.join(self.venv);
        let version = self.version;
        if self.installed_version(&venv).as_deref() == Some(version) {
            return Ok(());
        }
        let pins: Vec<&str> = self
            .requirements
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        eprintln!(
            "xtask: installing {} from the Python package index into {}",
            pins.join(" "),
            venv.display()
        );
        let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
        let status = Command::new(&python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .with_context(|| format!("cannot run {} -m venv", python.to_string_lossy()))?;
        if !status.success() {
            bail!("`python3 -m venv` failed ({status}); install Python 3 with its venv module");
        }
        let status = Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .args(&pins)
            .status()
            .context("cannot run pip in the new virtual environment")?;
        if !status.success() {
            bail!(
                "`pip install {}` failed ({status}); check access to the Python package index",
                pins.join(" ")
            );
        }
        match self.installed_version(&venv) {
            Some(v) if v == version => Ok(()),
            other => bail!(
                "`{}` printed version {other:?} after installing {version}",
                self.version_command.join(" ")
            ),
        }
    }
}
