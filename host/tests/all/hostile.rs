//! Hostile components are contained with the right typed error, and the
//! host serves a normal call right after each one.

use super::{engine, hash_encoder, hostile, text};
use soma_host::{
    Embeddings, Error, FIXED_WALL_CLOCK, HOST_FUEL_PER_BYTE, InvalidOutput, Limits,
    MAX_REFUSAL_BYTES, MAX_SNAPSHOT_MEMORY, OUTPUT_CAPTURE_BYTES, Seed, WASI_CALL_FUEL,
    log::{LOG_FUEL_PER_CALL, MAX_LOG_RECORDS},
};
use std::time::Duration;

/// Runs the hostile encoder in `mode`, then checks the host still serves
/// both the hostile encoder (with a harmless input) and the hash encoder.
fn attack(mode: &str, limits: &Limits) -> Result<Embeddings, Error> {
    let result = hostile().embed(&text(&[mode]), limits, Seed::from(9));
    let calm = hostile()
        .embed(&text(&["hello"]), &Limits::default(), Seed::from(9))
        .unwrap();
    assert_eq!(calm.vectors, vec![vec![0.0; 384]]);
    hash_encoder()
        .embed(&text(&["still serving"]), &Limits::default(), Seed::from(9))
        .unwrap();
    result
}

/// The error of a call expected to fail, without printing 384-float vectors
/// if it did not.
fn failure(result: Result<Embeddings, Error>) -> Error {
    match result {
        Ok(out) => panic!("expected a failure, got {} vectors", out.vectors.len()),
        Err(err) => err,
    }
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    // The safety net is far away: reaching it instead of the fuel limit would
    // be a `Timeout`, and fail this test.
    let limits = Limits {
        fuel: 500_000_000,
        timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let err = failure(attack("spin", &limits));
    assert!(
        matches!(err, Error::FuelExhausted { limit: 500_000_000 }),
        "{err}"
    );
    assert!(err.is_deterministic());
}

#[test]
fn the_wall_clock_safety_net_stops_a_call_and_is_not_held_against_the_encoder() {
    let limits = Limits {
        fuel: u64::MAX,
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let err = failure(attack("spin", &limits));
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(!err.is_deterministic());
}

#[test]
fn unbounded_memory_growth_hits_the_memory_limit() {
    let limits = Limits {
        max_memory_bytes: 64 << 20,
        ..Limits::default()
    };
    let err = failure(attack("grow-memory", &limits));
    assert!(
        matches!(err, Error::MemoryLimit { limit_bytes } if limit_bytes == 64 << 20),
        "{err}"
    );
}

#[test]
fn a_call_sees_nothing_an_earlier_call_wrote() {
    // (calls counted before, pages found marked, own marks read back) of a
    // fresh instance: 160 wasm pages grown, every other 4 KiB marked.
    let fresh = (0.0, 0.0, 1280.0);
    let remember = || {
        let out = hostile()
            .embed(&text(&["remember"]), &Limits::default(), Seed::from(9))
            .unwrap();
        (out.vectors[0][0], out.vectors[0][1], out.vectors[0][2])
    };
    // Calls one after another reuse the pool's slots; calls at once on
    // several threads each take their own and hand them back in turn.
    for call in 0..4 {
        assert_eq!(remember(), fresh, "sequential call {call}");
    }
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..8).map(|_| remember()).collect::<Vec<_>>()))
            .collect();
        for thread in threads {
            for seen in thread.join().unwrap() {
                assert_eq!(seen, fresh, "a call on one of several threads");
            }
        }
    });
}

#[test]
fn a_panic_is_a_trap_that_carries_the_panic_message() {
    let err = failure(attack("panic", &Limits::default()));
    let Error::Trap { message, stderr } = &err else {
        panic!("expected a trap, got {err}")
    };
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        stderr.contains("hostile encoder panicked on purpose"),
        "{stderr}"
    );
    assert!(err.to_string().contains("panicked on purpose"));
}

#[test]
fn files_environment_arguments_sockets_and_names_are_invisible() {
    let out = attack("probe-sandbox", &Limits::default()).unwrap();
    let v = &out.vectors[0];
    let seen = [
        "file read",
        "dir listed",
        "env vars",
        "args",
        "socket opened",
        "name resolved",
    ];
    for (i, what) in seen.iter().enumerate() {
        assert_eq!(v[i], 0.0, "{what}: {}", v[i]);
    }
    assert!(
        out.logs[0].message.contains("file_read: 0.0"),
        "{:?}",
        out.logs
    );
}

#[test]
fn clocks_are_frozen_at_the_fixed_values() {
    let out = attack("probe-sandbox", &Limits::default()).unwrap();
    let v = &out.vectors[0];
    assert_eq!(v[6], 0.0, "wall clock moved between two readings");
    assert_eq!(v[7], 0.0, "monotonic clock moved between two readings");
    assert_eq!(v[8], FIXED_WALL_CLOCK.as_secs() as f32);
}

#[test]
fn nan_output_is_invalid() {
    let err = failure(attack("nan", &Limits::default()));
    assert!(
        matches!(
            err,
            Error::InvalidOutput(InvalidOutput::NonFinite {
                index: 0,
                position: 7,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn wrong_dimension_is_invalid() {
    let err = failure(attack("wrong-dimension", &Limits::default()));
    assert!(
        matches!(
            err,
            Error::InvalidOutput(InvalidOutput::WrongDimension {
                index: 0,
                expected: 384,
                actual: 3
            })
        ),
        "{err}"
    );
}

#[test]
fn an_extra_vector_is_invalid() {
    let err = failure(attack("too-many", &Limits::default()));
    assert!(
        matches!(
            err,
            Error::InvalidOutput(InvalidOutput::WrongCount {
                expected: 1,
                actual: 2
            })
        ),
        "{err}"
    );
}

#[test]
fn flooding_stdout_and_the_log_is_capped_and_paid_for() {
    let out = attack("flood-output", &Limits::default()).unwrap();
    assert!(
        out.stdout.len() < OUTPUT_CAPTURE_BYTES + 100,
        "{}",
        out.stdout.len()
    );
    assert!(out.stdout.ends_with(&format!(
        "[{} more bytes dropped]",
        (1 << 20) - OUTPUT_CAPTURE_BYTES
    )));
    assert_eq!(out.logs.len(), MAX_LOG_RECORDS);
    assert_eq!(out.logs_dropped, 10_000 - MAX_LOG_RECORDS as u64);
    // Every log call is paid for, kept or dropped.
    assert!(
        out.fuel_used > 10_000 * LOG_FUEL_PER_CALL,
        "{}",
        out.fuel_used
    );
    let err = failure(attack(
        "flood-output",
        &Limits {
            fuel: out.fuel_used / 2,
            ..Limits::default()
        },
    ));
    assert!(matches!(err, Error::FuelExhausted { .. }), "{err}");
}

#[test]
fn a_component_of_another_world_is_incompatible_and_named() {
    let wasm = std::fs::read(soma_examples_artifacts::OTHER_WORLD).unwrap();
    let Err(err) = engine().load(&wasm) else {
        panic!("loaded a component of another world")
    };
    let Error::Incompatible(message) = &err else {
        panic!("expected incompatible, got {err}")
    };
    assert!(
        message.contains("embed") || message.contains("info"),
        "{message}"
    );
    assert!(err.to_string().contains("soma:encoder"), "{err}");
}

#[test]
fn bytes_that_are_not_a_component_are_invalid() {
    for garbage in [&b""[..], b"\0asm\x01\0\0\0", b"not wasm at all"] {
        let Err(err) = engine().load(garbage) else {
            panic!("garbage loaded")
        };
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert!(err.is_deterministic(), "{err}");
    }
}

/// Why the engine refuses a component that instantiates `module` alone.
fn refusal_of(module: &wasm_encoder::Module) -> Error {
    let mut instances = wasm_encoder::InstanceSection::new();
    instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    let mut component = wasm_encoder::Component::new();
    component
        .section(&wasm_encoder::ModuleSection(module))
        .section(&instances);
    match engine().load(&component.finish()) {
        Err(err) => err,
        Ok(_) => panic!("a component of this module loaded"),
    }
}

/// A memory of one page, 32- or 64-bit.
fn one_page(memory64: bool) -> wasm_encoder::MemoryType {
    wasm_encoder::MemoryType {
        minimum: 1,
        maximum: None,
        memory64,
        shared: false,
        page_size_log2: None,
    }
}

/// Function bodies are validated with the rest, before compiling (the
/// compiler would only meet them later, as its own failure).
#[test]
fn a_component_whose_code_does_not_validate_is_invalid() {
    use wasm_encoder::{CodeSection, Function, FunctionSection, Module, TypeSection, ValType};
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut code = CodeSection::new();
    // Returns nothing where an i32 is due.
    code.function(Function::new([]).instruction(&wasm_encoder::Instruction::End));
    let mut module = Module::new();
    module.section(&types).section(&functions).section(&code);
    let err = refusal_of(&module);
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("type mismatch")),
        "{err}"
    );
}

/// 64-bit memories are outside the protocol's features (`soma:encoder`
/// addresses 32-bit memory; pre-initialisation cannot snapshot them).
#[test]
fn a_component_with_a_64_bit_memory_is_invalid() {
    let mut memories = wasm_encoder::MemorySection::new();
    memories.memory(one_page(true));
    let err = refusal_of(wasm_encoder::Module::new().section(&memories));
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("memory64")),
        "{err}"
    );
}

/// A valid component whose core module needs more of an instance than the
/// pinned layout gives is refused alike on every host, in wasmtime's words
/// (which `Error::Layout` relies on).
#[test]
fn a_component_beyond_the_instance_layout_is_refused_as_its_own() {
    use wasm_encoder::{MemorySection, Module, RefType, TableSection, TableType};
    let table = |minimum| TableType {
        element_type: RefType::FUNCREF,
        table64: false,
        minimum,
        maximum: None,
        shared: false,
    };
    let two_memories = {
        let mut memories = MemorySection::new();
        memories.memory(one_page(false)).memory(one_page(false));
        Module::new().section(&memories).clone()
    };
    let two_tables = {
        let mut tables = TableSection::new();
        tables.table(table(1)).table(table(1));
        Module::new().section(&tables).clone()
    };
    let long_table = {
        let mut tables = TableSection::new();
        tables.table(table(100_001));
        Module::new().section(&tables).clone()
    };
    for (module, words) in [
        (two_memories, "defined memories count of 2"),
        (two_tables, "defined tables count of 2"),
        (long_table, "minimum element size of 100001"),
    ] {
        let err = refusal_of(&module);
        assert!(
            matches!(&err, Error::Layout(m) if m.contains(words)),
            "{words}: {err}"
        );
        assert!(err.is_deterministic(), "{err}");
    }
}

#[test]
fn oversized_inputs_and_batches_are_refused_before_running() {
    let too_long = vec![b'a'; 1025];
    let err = failure(hostile().embed(&[too_long], &Limits::default(), Seed::from(0)));
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("input 0 has 1025 bytes")),
        "{err}"
    );
    let too_many = vec![b"x".to_vec(); soma_host::MAX_BATCH + 1];
    let err = failure(hostile().embed(&too_many, &Limits::default(), Seed::from(0)));
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("batch")),
        "{err}"
    );
}

#[test]
fn an_encoder_refusal_is_reported_with_its_reason() {
    let err = failure(hash_encoder().embed(&[vec![0xff, 0xfe]], &Limits::default(), Seed::from(0)));
    assert!(
        matches!(&err, Error::Refused(m) if m.contains("input 0") && m.contains("UTF-8")),
        "{err}"
    );
}

#[test]
fn randomness_is_a_function_of_the_seed() {
    let random_bits = |seed: u64| {
        hostile()
            .embed(
                &text(&["probe-sandbox"]),
                &Limits::default(),
                Seed::from(seed),
            )
            .unwrap()
            .vectors[0][9]
    };
    assert_eq!(random_bits(1), random_bits(1));
    assert_ne!(random_bits(1), random_bits(2));
}

#[test]
fn a_malformed_answer_is_the_encoders_fault_not_the_hosts() {
    for mode in ["bad-utf8-error", "aliased-vectors"] {
        let err = failure(attack(mode, &Limits::default()));
        assert!(
            matches!(err, Error::InvalidOutput(InvalidOutput::Malformed(_))),
            "{mode}: {err}"
        );
        assert!(err.is_deterministic(), "{mode}");
    }
}

#[test]
fn an_encoders_error_message_is_cut() {
    let err = failure(attack("huge-error", &Limits::default()));
    let Error::Refused(message) = &err else {
        panic!("expected a refusal, got {err}")
    };
    assert!(message.len() <= MAX_REFUSAL_BYTES + 8, "{}", message.len());
    assert!(message.ends_with("[cut]"));
}

#[test]
fn a_start_up_that_leaves_too_much_memory_is_refused_at_load() {
    let wasm = std::fs::read(soma_examples_artifacts::BLOATED_START).unwrap();
    let Err(err) = engine().load(&wasm) else {
        panic!("a 160 MiB start-up snapshot was taken")
    };
    assert!(
        matches!(err, Error::MemoryLimit { limit_bytes } if limit_bytes == MAX_SNAPSHOT_MEMORY as u64),
        "{err}"
    );
    hash_encoder()
        .embed(&text(&["still serving"]), &Limits::default(), Seed::from(9))
        .unwrap();
}

#[test]
fn a_memory_that_starts_over_the_limit_is_the_encoders_memory_limit() {
    let wasm = std::fs::read(soma_examples_artifacts::OVERSIZED_MEMORY).unwrap();
    let Err(err) = engine().load(&wasm) else {
        panic!("a component whose memory starts at 768 MiB loaded under a 512 MiB limit")
    };
    assert!(
        matches!(err, Error::MemoryLimit { limit_bytes } if limit_bytes == 512 << 20),
        "{err}"
    );
    hash_encoder()
        .embed(&text(&["still serving"]), &Limits::default(), Seed::from(9))
        .unwrap();
}

#[test]
fn a_poll_over_a_huge_list_of_handles_is_paid_for_first() {
    let out = attack("poll-flood", &Limits::default()).unwrap();
    assert_eq!(out.vectors[0][0], 90_000.0);
    // 256 fuel per handle, on top of building the list.
    assert!(out.fuel_used > 23_000_000, "{}", out.fuel_used);
    let err = failure(attack(
        "poll-flood",
        &Limits {
            fuel: 20_000_000,
            ..Limits::default()
        },
    ));
    assert!(matches!(err, Error::FuelExhausted { .. }), "{err}");
}

#[test]
fn every_wasi_call_is_paid_for_as_it_returns() {
    let fuel = |n: u64| {
        let out = attack(&format!("wasi-calls:{n}"), &Limits::default()).unwrap();
        assert_eq!(out.vectors[0][0], n as f32);
        out.fuel_used
    };
    // Per round: two WASI calls, 8 random bytes, and a few instructions.
    let rounds = 10_000;
    let extra = fuel(rounds) - fuel(0);
    let charged = rounds * (2 * WASI_CALL_FUEL + 8 * HOST_FUEL_PER_BYTE);
    assert!(
        (charged..charged + rounds * 100).contains(&extra),
        "{rounds} rounds cost {extra} fuel; the host charges {charged}"
    );
    // Paid as it goes: the call stops on fuel, not on the wall clock.
    let err = failure(attack(
        "wasi-calls:4000000000",
        &Limits {
            fuel: 50_000_000,
            timeout: Duration::from_secs(600),
            ..Limits::default()
        },
    ));
    assert!(matches!(err, Error::FuelExhausted { .. }), "{err}");
}

#[test]
fn host_work_paid_while_the_guest_allocates_its_result_is_not_lost() {
    // Each 1 MiB result is lowered through the guest's allocator, which
    // grows memory: the debt must survive that nested libcall.
    let fuel = |n: u64| {
        let out = attack(&format!("random-mib:{n}"), &Limits::default()).unwrap();
        assert_eq!(out.vectors[0][0], n as f32);
        out.fuel_used
    };
    let extra = fuel(8) - fuel(0);
    let charged = 8 * ((1 << 20) * HOST_FUEL_PER_BYTE + WASI_CALL_FUEL);
    assert!(
        extra >= charged,
        "8 MiB of random bytes cost {extra} fuel; the host charges {charged}"
    );
}

#[test]
fn one_encoder_cannot_take_every_pooled_instance() {
    // More calls at once than the engine has pooled instances: without a
    // per-encoder cap, some fail for want of an instance (a host error).
    let limits = Limits {
        fuel: 20_000_000,
        timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    std::thread::scope(|s| {
        let spinners: Vec<_> = (0..80)
            .map(|_| s.spawn(|| hostile().embed(&text(&["spin"]), &limits, Seed::from(1))))
            .collect();
        hash_encoder()
            .embed(&text(&["still serving"]), &Limits::default(), Seed::from(9))
            .unwrap();
        for spinner in spinners {
            let err = failure(spinner.join().unwrap());
            assert!(matches!(err, Error::FuelExhausted { .. }), "{err}");
        }
    });
}

#[test]
fn more_instances_than_a_call_allows_is_the_encoders_limit_not_the_hosts() {
    // Every component instantiates at least one core module; the hash
    // encoder's a few, well within the default limit.
    let limits = Limits {
        max_instances: 1,
        ..Limits::default()
    };
    let err = failure(hash_encoder().embed(&text(&["x"]), &limits, Seed::from(1)));
    assert!(matches!(err, Error::InstanceLimit { limit: 1 }), "{err}");
    assert!(err.is_deterministic());
    hash_encoder()
        .embed(&text(&["x"]), &Limits::default(), Seed::from(1))
        .unwrap();
}

#[test]
fn start_up_work_runs_on_the_fuel_a_load_is_given() {
    let wasm = std::fs::read(soma_examples_artifacts::HASH_ENCODER).unwrap();
    let starved = Limits {
        fuel: 1_000,
        ..Limits::default()
    };
    match engine().load_with(&wasm, &starved) {
        Err(Error::FuelExhausted { limit: 1_000 }) => {}
        other => panic!(
            "expected the start-up to run out of fuel: {:?}",
            other.err()
        ),
    }
    engine().load_with(&wasm, &Limits::default()).unwrap();
}
