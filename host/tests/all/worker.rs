//! The inference worker: confined, and its absence a clear host error.

use std::process::Command;

#[test]
fn the_worker_cannot_reach_files_sockets_or_programs() {
    let out = Command::new(env!("CARGO_BIN_EXE_soma-inference-worker"))
        .arg("--check-confinement")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for what in [
        "open a file",
        "create a file",
        "open a socket",
        "start a program",
    ] {
        assert!(report.contains(&format!("{what}: refused")), "{report}");
    }
}

#[test]
fn a_missing_worker_is_a_host_error_that_says_what_to_do() {
    let models = std::path::PathBuf::from(std::env::var_os("SOMA_MODELS_DIR").unwrap());
    let dir = std::env::temp_dir().join(format!("soma-missing-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let package = dir.join("l6.somapkg");
    let soma_host = || Command::new(env!("CARGO_BIN_EXE_soma-host"));
    let key = dir.join("author.key");
    assert!(
        soma_host()
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap()
            .status
            .success()
    );
    let signed = soma_host()
        .args(["sign", "--key"])
        .arg(&key)
        .args(["--component", soma_examples_artifacts::MINILM_L6, "--model"])
        .arg(models.join("all-minilm-l6-v2-int8.onnx"))
        .arg("--out")
        .arg(&package)
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let out = soma_host()
        .arg("run")
        .arg(&package)
        .args(["-i", "hello"])
        .env(soma_host::worker::WORKER_ENV, dir.join("no-such-worker"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("inference worker") && stderr.contains("no-such-worker"),
        "{stderr}"
    );
}
