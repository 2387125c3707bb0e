//! Compiles every example component from source for `wasm32-wasip2` with a
//! nested `cargo build`, the way wasmtime builds its test programs, and
//! writes their paths into `$OUT_DIR/artifacts.rs`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest crates under `examples/`, built as components.
const GUESTS: &[&str] = &[
    "hash-encoder",
    "hostile",
    "bloated-start",
    "oversized-memory",
    "other-world",
    "minilm-l6",
    "minilm-l3",
    "random-encoder",
    "constant-encoder",
    "copycat-encoder",
    "specialist-encoder",
    "router-encoder",
    "scripted-encoder",
];

/// Example encoders in other languages: (crate-like name, source file,
/// the variable naming the tool that `cargo xtask setup` installs). Each is
/// built only when its tool is there.
const OTHER_GUESTS: &[(&str, &str, &str)] = &[
    ("python-encoder", "app.py", "SOMA_COMPONENTIZE_PY"),
    ("js-encoder", "app.js", "SOMA_COMPONENTIZE_JS"),
];

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.ancestors().nth(2).unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let cargo = env::var_os("CARGO").unwrap();

    // `.cargo/config.toml` holds the guests' rustflags (simd128).
    for dir in ["wit", "guest-sdk", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    for guest in GUESTS {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join("examples").join(guest).display()
        );
    }

    // The MiniLM encoders compile in the tokenizer that `cargo xtask setup`
    // fetches.
    println!("cargo:rerun-if-env-changed=SOMA_MODELS_DIR");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS");
    match env::var_os("SOMA_MODELS_DIR").map(PathBuf::from) {
        Some(models) if models.join("tokenizer.json").is_file() => {
            println!(
                "cargo:rerun-if-changed={}",
                models.join("tokenizer.json").display()
            );
        }
        _ => panic!(
            "the MiniLM example encoders need tokenizer.json from $SOMA_MODELS_DIR (.cache/soma/models).\n\
             Run `cargo xtask setup` to fetch it, then build again."
        ),
    }

    check_target_installed();

    // `OUT_DIR` is `<target>/<profile>/build/<pkg>/out`: sharing one guest
    // target directory across profiles builds each guest once.
    let guest_target = out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(&out_dir)
        .join("guests");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&guest_target);
    for guest in GUESTS {
        cmd.args(["--package", guest]);
    }
    // The outer build's flags are for the host, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("failed to run cargo for the example components");
    if !status.success() {
        panic!("building the example components for {TARGET} failed (see the cargo output above)");
    }

    let release = guest_target.join(TARGET).join("release");
    let mut generated = String::new();
    let mut all = String::from(
        "/// Every example component: (crate name, path).\npub const ALL: &[(&str, &str)] = &[\n",
    );
    for guest in GUESTS {
        let file = release.join(format!("{}.wasm", guest.replace('-', "_")));
        assert!(
            file.exists(),
            "cargo built {guest} but {} is missing",
            file.display()
        );
        generated += &format!(
            "/// Path of the `{guest}` example component.\npub const {}: &str = {:?};\n",
            guest.replace('-', "_").to_uppercase(),
            file.display().to_string(),
        );
        all += &format!(
            "    ({guest:?}, {}),\n",
            guest.replace('-', "_").to_uppercase()
        );
    }
    generated += &all;
    generated += "];\n";
    for &(guest, source, tool) in OTHER_GUESTS {
        let built = build_other(&workspace, &guest_target, guest, source, tool);
        generated += &format!(
            "/// Path of the `{guest}` example component, if its toolchain was installed.\npub const {}: Option<&str> = {:?};\n",
            guest.replace('-', "_").to_uppercase(),
            built.map(|p| p.display().to_string()),
        );
    }
    std::fs::write(out_dir.join("artifacts.rs"), generated).unwrap();
}

/// Builds `examples/<guest>/<source>` into a component under
/// `guest_target` with the tool named by `$<tool>`, or says why it cannot
/// and returns `None`.
fn build_other(
    workspace: &Path,
    guest_target: &Path,
    guest: &str,
    source: &str,
    tool: &str,
) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={tool}");
    let program = env::var_os(tool).map(PathBuf::from);
    if let Some(program) = &program {
        // Watched even while missing, so that installing it later rebuilds.
        println!("cargo:rerun-if-changed={}", program.display());
    }
    let Some(program) = program.filter(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        println!(
            "cargo:warning=the example encoder `{guest}` is not built: its toolchain (${tool}) is \
             missing or broken (run `cargo xtask setup`)"
        );
        return None;
    };
    let dir = workspace.join("examples").join(guest);
    println!("cargo:rerun-if-changed={}", dir.join(source).display());
    let out = guest_target
        .join("other")
        .join(format!("{}.wasm", guest.replace('-', "_")));
    let wit = workspace.join("wit");
    // These builds are slow and not reproducible (a rebuild has another
    // digest, so compiled code cached for it is useless): build only when
    // something it is built from changed, not whenever a Rust guest did.
    let mut inputs = vec![dir.join(source), program.clone()];
    inputs.extend(
        std::fs::read_dir(&wit)
            .unwrap()
            .map(|entry| entry.unwrap().path()),
    );
    if newer_than_all(&out, &inputs) {
        return Some(out);
    }
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut cmd = Command::new(&program);
    if source.ends_with(".py") {
        cmd.arg("-d")
            .arg(&wit)
            .args(["-w", "encoder", "componentize", "app", "-p"])
            .arg(&dir);
    } else {
        // No wasi:http, which the sandbox does not grant.
        cmd.arg(dir.join(source)).arg("-w").arg(&wit).args([
            "-n",
            "encoder",
            "-d",
            "http",
            "fetch-event",
        ]);
    }
    let status = cmd
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if !status.success() {
        panic!(
            "{} failed to build {guest} ({status}; see its output above)",
            program.display()
        );
    }
    Some(out)
}

/// Whether `out` exists and was written after every one of `inputs`.
fn newer_than_all(out: &Path, inputs: &[PathBuf]) -> bool {
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let Some(built) = modified(out) else {
        return false;
    };
    inputs
        .iter()
        .all(|i| modified(i).is_some_and(|t| t < built))
}

/// Fails with a message saying how to install the target, instead of
/// cargo's "can't find crate for `std`".
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .expect("failed to run rustc");
    let libdir = String::from_utf8_lossy(&output.stdout);
    let installed = output.status.success() && Path::new(libdir.trim()).is_dir();
    if !installed {
        panic!(
            "the Rust standard library for {TARGET} is not installed.\n\
             Run `cargo xtask setup` (or `rustup target add {TARGET}`) and build again."
        );
    }
}
