//! The `soma-host` command line: real runs and clear failures.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn soma_host(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_soma-host"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
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
    let out = json(&soma_host(&["run", HASH, "-i", "hello world", "--input", "good morning"], ""));
    assert_eq!(out["encoder"]["name"], "hash-encoder");
    assert_eq!(out["encoder"]["dimension"], 384);
    assert_eq!(out["encoder"]["modality"], "text");
    let vectors = out["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].as_array().unwrap().len(), 384);
    assert!(out["fuel_used"].as_u64().unwrap() > 0);
}

#[test]
fn run_reads_files_and_stdin_lines() {
    let dir = std::env::temp_dir().join(format!("soma-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("input.txt");
    std::fs::write(&file, "hello world").unwrap();
    let from_file = json(&soma_host(&["run", HASH, "--file", file.to_str().unwrap()], ""));
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
    assert!(stderr(&out).contains("cannot read component /nonexistent/encoder.wasm"), "{}", stderr(&out));
}

#[test]
fn a_missing_input_file_is_a_clear_error() {
    let out = soma_host(&["run", HASH, "--file", "/nonexistent/input.txt"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read input file /nonexistent/input.txt"), "{}", stderr(&out));
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
        (&["run", HASH, "--fuel", "lots"], "invalid value 'lots' for '--fuel <FUEL>'"),
        (&["run", HASH, "--max-memory", "12MB"], "unknown unit `MB`"),
        (&["run", HASH, "--frobnicate"], "unexpected argument '--frobnicate'"),
        (&["fly"], "unrecognized subcommand 'fly'"),
    ] {
        let out = soma_host(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn an_encoder_failure_exits_non_zero_with_the_reason() {
    let out = soma_host(&["run", soma_examples_artifacts::HOSTILE, "-i", "spin", "--fuel", "1000000"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ran out of fuel (limit 1000000)"), "{}", stderr(&out));
    let out = soma_host(&["run", soma_examples_artifacts::OTHER_WORLD, "-i", "x"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not a soma:encoder@0.1.0 encoder"), "{}", stderr(&out));
}

#[test]
fn help_explains_every_flag() {
    let out = soma_host(&["run", "--help"], "");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--input", "--file", "--fuel", "--max-memory", "--seed", "--timeout"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
