//! Sentences for fitting alignment heads, from text already on the machine
//! at build time: the documentation (READMEs and crate-level doc comments)
//! of the crates `Cargo.lock` names, in cargo's registry sources.
//!
//! The lock file fixes which crates and versions are read, and they are
//! read in a fixed order, so every machine gets the same corpus.

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Up to `limit` distinct prose sentences from the documentation of the
/// registry crates in `lock`.
pub fn from_registry(lock: &Path, limit: usize) -> Result<Vec<String>> {
    let lock_text =
        std::fs::read_to_string(lock).with_context(|| format!("cannot read {}", lock.display()))?;
    let sources = registry_sources()?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, version) in registry_packages(&lock_text) {
        let Some(dir) = sources
            .iter()
            .map(|s| s.join(format!("{name}-{version}")))
            .find(|d| d.is_dir())
        else {
            continue;
        };
        let mut text = std::fs::read_to_string(dir.join("README.md")).unwrap_or_default();
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap_or_default();
        for line in lib.lines() {
            if let Some(doc) = line.trim_start().strip_prefix("//!") {
                text.push_str(doc);
                text.push('\n');
            }
        }
        for sentence in sentences(&text) {
            if out.len() == limit {
                return Ok(out);
            }
            if seen.insert(sentence.clone()) {
                out.push(sentence);
            }
        }
    }
    if out.is_empty() {
        bail!(
            "no documentation found in cargo's registry sources; run `cargo fetch --locked` first"
        );
    }
    Ok(out)
}

/// `(name, version)` of every package `Cargo.lock` takes from a registry.
fn registry_packages(lock: &str) -> Vec<(String, String)> {
    let mut packages = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|rest| rest.trim().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        };
        let from_registry = field("source ").is_some_and(|s| s.starts_with("registry+"));
        if let (true, Some(name), Some(version)) =
            (from_registry, field("name "), field("version "))
        {
            packages.push((name, version));
        }
    }
    packages.sort();
    packages
}

/// The directories cargo unpacks registry crates into.
fn registry_sources() -> Result<Vec<PathBuf>> {
    let home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
                .join(".cargo")
        }
    };
    let src = home.join("registry/src");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&src)
        .with_context(|| format!("cannot read {}", src.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The prose sentences of a Markdown text: outside code blocks, headings,
/// tables and lists; 6 to 40 words, starting with a capital and ending
/// with a full stop, and made mostly of letters.
fn sentences(markdown: &str) -> Vec<String> {
    let mut paragraphs = Vec::new();
    let mut current = String::new();
    let mut in_code = false;
    for line in markdown.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let skip = in_code
            || line.is_empty()
            || line.starts_with(['#', '|', '-', '*', '>', '<', '[', '!', '='])
            || line.chars().next().is_some_and(|c| c.is_ascii_digit());
        if skip {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            continue;
        }
        current.push_str(line);
        current.push(' ');
    }
    paragraphs.push(current);
    let mut out = Vec::new();
    for paragraph in paragraphs {
        for piece in paragraph.split_inclusive(". ") {
            let s = piece.trim();
            let words = s.split_whitespace().count();
            let letters = s.chars().filter(|c| c.is_alphabetic() || *c == ' ').count();
            let prose = s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.ends_with('.')
                && (6..=40).contains(&words)
                && letters * 100 >= s.chars().count() * 90
                && !s.contains("http");
            if prose {
                out.push(s.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_is_kept_and_code_and_markup_are_not() {
        let text = "# Title\n\nThis crate parses configuration files quickly and safely. It has no \
                    dependencies at all.\n\n```rust\nlet x = Foo::new();\n```\n\n| a | b |\n\n\
                    - a list item that is long enough to be a sentence.\n\
                    See https://example.com for more details about it.\n";
        assert_eq!(
            sentences(text),
            [
                "This crate parses configuration files quickly and safely.",
                "It has no dependencies at all."
            ]
        );
    }

    #[test]
    fn registry_packages_are_read_from_the_lock_file() {
        let lock = "[[package]]\nname = \"b\"\nversion = \"1.0.0\"\nsource = \"registry+https://x\"\n\n\
                    [[package]]\nname = \"local\"\nversion = \"0.1.0\"\n\n\
                    [[package]]\nname = \"a\"\nversion = \"0.2.0\"\nsource = \"registry+https://x\"\n";
        assert_eq!(
            registry_packages(lock),
            [("a".into(), "0.2.0".into()), ("b".into(), "1.0.0".into())]
        );
    }
}
