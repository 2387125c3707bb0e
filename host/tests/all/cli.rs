//! The `soma-host` command line: real runs and clear failures.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// `soma-host` as a user runs it: without the `SOMA_ORT_DYLIB` that cargo
/// sets, so it must find the ONNX Runtime that `cargo xtask setup`
/// installed by itself.
fn soma_host(args: &[&str], stdin: &str) -> Output {
    soma_host_with(args, stdin, None)
}

/// [`soma_host`] with `SOMA_ORT_DYLIB` set to `dylib`.
fn soma_host_with(args: &[&str], stdin: &str, dylib: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_soma-host"));
    command.env_remove("SOMA_ORT_DYLIB");
    if let Some(dylib) = dylib {
        command.env("SOMA_ORT_DYLIB", dylib);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

const HASH: &str = soma_examples_artifacts::HASH_ENCODER;

#[test]
fn run_prints_info_vectors_and_fuel() {
    let out = json(&soma_host(
        &["run", HASH, "-i", "hello world", "--input", "good morning"],
        "",
    ));
    assert_eq!(out["encoder"]["name"], "hash-encoder");
    assert_eq!(out["encoder"]["dimension"], 384);
    assert_eq!(out["encoder"]["modality"], "text");
    let vectors = out["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].as_array().unwrap().len(), 384);
    assert!(out["fuel_used"].as_u64().unwrap() > 0);
    assert!(out["memory_bytes"].as_u64().unwrap() >= 64 << 10);
}

#[test]
fn run_reads_files_and_stdin_lines() {
    let dir = std::env::temp_dir().join(format!("soma-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("input.txt");
    std::fs::write(&file, "hello world").unwrap();
    let from_file = json(&soma_host(
        &["run", HASH, "--file", file.to_str().unwrap()],
        "",
    ));
    let from_stdin = json(&soma_host(&["run", HASH], "hello world\n\nsecond line\n"));
    let from_arg = json(&soma_host(&["run", HASH, "-i", "hello world"], ""));
    assert_eq!(from_stdin["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(from_file["embeddings"][0], from_arg["embeddings"][0]);
    assert_eq!(from_stdin["embeddings"][0], from_arg["embeddings"][0]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_component_is_a_clear_error() {
    let out = soma_host(&["run", "/nonexistent/encoder.wasm", "-i", "x"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read component /nonexistent/encoder.wasm"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_input_file_is_a_clear_error() {
    let out = soma_host(&["run", HASH, "--file", "/nonexistent/input.txt"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read input file /nonexistent/input.txt"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_inputs_is_a_clear_error() {
    let out = soma_host(&["run", HASH], "\n  \n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no inputs"), "{}", stderr(&out));
}

#[test]
fn bad_arguments_are_rejected_with_usage() {
    for (args, expected) in [
        (&["run"][..], "<COMPONENT>"),
        (
            &["run", HASH, "--fuel", "lots"],
            "invalid value 'lots' for '--fuel <FUEL>'",
        ),
        (&["run", HASH, "--max-memory", "12MB"], "unknown unit `MB`"),
        (
            &["run", HASH, "--frobnicate"],
            "unexpected argument '--frobnicate'",
        ),
        (&["fly"], "unrecognized subcommand 'fly'"),
    ] {
        let out = soma_host(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn an_encoder_failure_exits_non_zero_with_the_reason() {
    let out = soma_host(
        &[
            "run",
            soma_examples_artifacts::HOSTILE,
            "-i",
            "spin",
            "--fuel",
            "1000000",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ran out of fuel (limit 1000000)"),
        "{}",
        stderr(&out)
    );
    let out = soma_host(
        &["run", soma_examples_artifacts::OTHER_WORLD, "-i", "x"],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a soma:encoder@0.1.0 encoder"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_explains_every_flag() {
    let out = soma_host(&["run", "--help"], "");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--input",
        "--file",
        "--fuel",
        "--max-memory",
        "--seed",
        "--timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

/// A scratch directory for one CLI test.
fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("soma-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn keygen_sign_verify_inspect_and_run_a_package() {
    let dir = scratch("package");
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let model = p("tokens.bin");
    std::fs::write(&model, vec![42u8; 3000]).unwrap();

    let out = soma_host(&["keygen", "--out", &p("author.key")], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("author.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = soma_host(&["keygen", "--out", &p("author.key")], "");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );

    let signed = soma_host(
        &[
            "sign",
            "--key",
            &p("author.key"),
            "--component",
            HASH,
            "--model",
            &model,
            "--out",
            &p("enc.somapkg"),
        ],
        "",
    );
    assert!(signed.status.success(), "{}", stderr(&signed));
    let digest = String::from_utf8(signed.stdout).unwrap().trim().to_string();

    let verified = soma_host(&["verify", &p("enc.somapkg"), "--trusted-key", &public], "");
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(String::from_utf8_lossy(&verified.stdout).contains(&digest));

    let inspect = soma_host(&["inspect", &p("enc.somapkg")], "");
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let text = String::from_utf8(inspect.stdout.clone()).unwrap();
    for line in [
        format!("package     {digest}"),
        "encoder     hash-encoder 0.1.0".into(),
        "world       soma:encoder/encoder@0.1.0".into(),
        "dimension   384".into(),
        // Read from the component's `info()` by `sign`.
        format!("max input   {} bytes", hash_encoder::MAX_INPUT_BYTES),
        format!("signer      {public}"),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("2.9 KiB  tokens.bin"), "{text}");
    assert_eq!(
        soma_host(&["inspect", &p("enc.somapkg")], "").stdout,
        inspect.stdout,
        "inspect is stable"
    );
    let manifest = json(&soma_host(&["inspect", &p("enc.somapkg"), "--json"], ""));
    assert_eq!(manifest["digest"], digest);
    assert_eq!(manifest["manifest"]["models"][0]["blob"]["size"], 3000);
    assert_eq!(
        manifest["manifest"]["max_input_bytes"],
        hash_encoder::MAX_INPUT_BYTES
    );

    let cache = p("cache");
    for _ in 0..2 {
        let run = json(&soma_host(
            &[
                "run",
                &p("enc.somapkg"),
                "--trusted-key",
                &public,
                "--cache-dir",
                &cache,
                "-i",
                "hi",
            ],
            "",
        ));
        assert_eq!(
            run["embeddings"][0],
            json(&soma_host(&["run", HASH, "-i", "hi"], ""))["embeddings"][0]
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_tampered_or_untrusted_package_is_refused_before_running() {
    let dir = scratch("refused");
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    assert!(soma_host(&["keygen", "-o", &p("k")], "").status.success());
    assert!(
        soma_host(&["sign", "-k", &p("k"), "-c", HASH, "-o", &p("pkg")], "")
            .status
            .success()
    );

    let other = soma_host(&["keygen", "-o", &p("other")], "");
    let other_public = String::from_utf8(other.stdout).unwrap().trim().to_string();
    let out = soma_host(
        &["run", &p("pkg"), "--trusted-key", &other_public, "-i", "x"],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not by the trusted key"),
        "{}",
        stderr(&out)
    );

    let mut bytes = std::fs::read(p("pkg")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(p("pkg"), bytes).unwrap();
    for args in [&["verify", &p("pkg")][..], &["run", &p("pkg"), "-i", "x"]] {
        let out = soma_host(args, "");
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("component does not match the manifest"),
            "{}",
            stderr(&out)
        );
    }
    let out = soma_host(&["verify", "--trusted-key", "xyz", &p("pkg")], "");
    assert!(
        stderr(&out).contains("--trusted-key is not a public key"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_minilm_package_runs_from_the_command_line_as_the_readme_shows() {
    let dir = scratch("minilm");
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let models = std::path::PathBuf::from(std::env::var_os("SOMA_MODELS_DIR").unwrap());
    let model = models.join("all-minilm-l6-v2-int8.onnx");
    assert!(
        soma_host(&["keygen", "--out", &p("author.key")], "")
            .status
            .success()
    );
    let signed = soma_host(
        &[
            "sign",
            "--key",
            &p("author.key"),
            "--component",
            soma_examples_artifacts::MINILM_L6,
            "--model",
            model.to_str().unwrap(),
            "--out",
            &p("minilm-l6.somapkg"),
        ],
        "",
    );
    assert!(signed.status.success(), "{}", stderr(&signed));
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = json(&soma_host(
            &[
                "run",
                &p("minilm-l6.somapkg"),
                "--cache-dir",
                &p("cache"),
                "-i",
                "A man is playing a guitar.",
            ],
            "",
        ));
        assert_eq!(out["encoder"]["name"], "minilm-l6");
        assert_eq!(out["embeddings"][0].as_array().unwrap().len(), 384);
        runs.push(out["embeddings"].clone());
    }
    assert_eq!(
        runs[0], runs[1],
        "a cached second run gives the same vector"
    );
    let missing = p("nowhere/libonnxruntime.so");
    let out = soma_host_with(
        &[
            "run",
            &p("minilm-l6.somapkg"),
            "-i",
            "A man is playing a guitar.",
        ],
        "",
        Some(&missing),
    );
    assert!(!out.status.success());
    let error = stderr(&out);
    assert!(
        error.contains(&missing) && error.contains("no such file (from SOMA_ORT_DYLIB)"),
        "{error}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_absurd_timeout_is_cut_to_the_longest_allowed() {
    let out = json(&soma_host(
        &["run", HASH, "--timeout", "18446744073709551615", "-i", "hi"],
        "",
    ));
    assert_eq!(out["embeddings"].as_array().unwrap().len(), 1);
}
