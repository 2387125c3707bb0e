//! Hostile ONNX models, written byte by byte here (a few hundred bytes
//! each), against model admission and the inference import: each attack is
//! refused at admission or contained with the right typed error, and the
//! host serves a normal MiniLM call right after.

use super::minilm::{l6, package_with};
use super::onnx::*;
use super::{engine, text};
use soma_host::model::{AdmissionError, MAX_REFUSAL_BYTES, MAX_VALUE_NAME_BYTES, admit};
use soma_host::{Error, Limits, Seed};

fn refused(bytes: &[u8]) -> AdmissionError {
    match admit(bytes) {
        Ok(_) => panic!("the model was admitted"),
        Err(e) => e,
    }
}

#[test]
fn a_plain_model_is_admitted_and_tells_its_inputs() {
    let admitted = admit(&negate()).unwrap();
    assert_eq!(admitted.input_dims(), vec![vec![None]]);
    let rows = Pb::default()
        .msg(1, node("Neg", &["x"], &["y"], vec![]))
        .str(2, "g")
        .msg(11, value("x", FLOAT, &[Some(2), None]))
        .msg(12, value("y", FLOAT, &[Some(2), None]));
    let admitted = admit(&model(rows)).unwrap();
    assert_eq!(admitted.input_dims(), vec![vec![Some(2), None]]);
}

#[test]
fn external_data_is_refused_wherever_it_hides() {
    let initializer = model(graph(
        vec![node("Identity", &["w"], &["y"], vec![])],
        vec![external("w", "etc/passwd")],
        value("y", 2, &[Some(64)]),
    ));
    let constant = model(graph(
        vec![node(
            "Constant",
            &[],
            &["y"],
            vec![attr_tensor("value", external("", "etc/passwd"))],
        )],
        vec![],
        value("y", 2, &[Some(64)]),
    ));
    for bytes in [initializer, constant] {
        let err = refused(&bytes);
        assert!(matches!(err, AdmissionError::ExternalData(_)), "{err}");
        assert!(err.to_string().contains("external data"), "{err}");
    }
}

#[test]
fn control_flow_random_and_foreign_operators_are_refused() {
    let body = graph(vec![], vec![], y_like_x());
    let cases = [
        ("Loop", vec![attr_graph("body", body)], "::Loop"),
        (
            "RandomUniform",
            vec![attr_ints("shape", &[4])],
            "::RandomUniform",
        ),
        ("NonZero", vec![], "::NonZero"),
    ];
    for (op, attributes, named) in cases {
        let bytes = model(graph(
            vec![node(op, &["x"], &["y"], attributes)],
            vec![],
            y_like_x(),
        ));
        let err = refused(&bytes);
        assert!(
            matches!(&err, AdmissionError::Operator { op, .. } if op.ends_with(named)),
            "{op}: {err}"
        );
    }
    let foreign = model_importing(&[("", 17), ("com.microsoft", 1)], negation());
    assert!(
        matches!(refused(&foreign.0), AdmissionError::Unsupported(m) if m.contains("com.microsoft"))
    );
}

#[test]
fn names_beyond_the_bound_are_refused() {
    let named = |node_name: &str, value_name: &str| {
        let nodes = vec![
            node("Neg", &["x"], &[value_name], vec![]).str(3, node_name),
            node("Neg", &[value_name], &["y"], vec![]),
        ];
        model(graph(nodes, vec![], y_like_x()))
    };
    let at_bound = "n".repeat(MAX_VALUE_NAME_BYTES);
    let beyond = "n".repeat(MAX_VALUE_NAME_BYTES + 1);
    admit(&named(&at_bound, &at_bound)).expect("names at the bound are admitted");
    assert!(
        matches!(refused(&named(&beyond, "v")), AdmissionError::Graph(m) if m.contains("node name"))
    );
    assert!(
        matches!(refused(&named("n", &beyond)), AdmissionError::Graph(m) if m.contains("value name"))
    );
    // An unknown operator, named at the bound: the refusal quotes both
    // name and operator, each cut to MAX_REFUSAL_BYTES.
    let long_op = format!("Op{}", "x".repeat(1 << 20));
    let unknown = model(graph(
        vec![node(&long_op, &["x"], &["y"], vec![]).str(3, &at_bound)],
        vec![],
        y_like_x(),
    ));
    let AdmissionError::Operator { node, op } = refused(&unknown) else {
        panic!("refused for its operator");
    };
    assert!(node.len() <= MAX_REFUSAL_BYTES && op.len() <= MAX_REFUSAL_BYTES);
    assert!(op.starts_with("::Opxxx") && op.ends_with("xxx"), "{op}");
    assert!(node.contains(" … "));
}

#[test]
fn model_level_features_the_host_cannot_bound_are_refused() {
    let with_function = model_of(negation()).msg(25, Pb::default().str(1, "f"));
    assert!(
        matches!(refused(&with_function.0), AdmissionError::Unsupported(m) if m.contains("functions"))
    );
    let old_opset = model_importing(&[("", 9)], negation());
    assert!(
        matches!(refused(&old_opset.0), AdmissionError::Unsupported(m) if m.contains("opset 9"))
    );
    assert!(matches!(
        refused(b"\xff\xff\xff"),
        AdmissionError::Malformed(_)
    ));
}

#[test]
fn unknown_fields_are_refused_however_deep() {
    // Field 999 of a TensorProto inside an attribute inside a node.
    let t = tensor("", FLOAT, &[1], &f32s(&[1.0])).str(999, "anything");
    let bytes = model(graph(
        vec![node("Constant", &[], &["y"], vec![attr_tensor("value", t)])],
        vec![],
        value("y", FLOAT, &[Some(1)]),
    ));
    let err = refused(&bytes);
    assert!(
        matches!(&err, AdmissionError::UnknownField(path) if path == "TensorProto field 999"),
        "{err}"
    );
}

#[test]
fn constants_must_hold_exactly_what_they_declare() {
    let short = tensor("w", FLOAT, &[16], &f32s(&[1.0]));
    let huge = tensor("w", FLOAT, &[1 << 30], &f32s(&[1.0]));
    for t in [short, huge] {
        let bytes = model(graph(
            vec![node("Add", &["x", "w"], &["y"], vec![])],
            vec![t],
            y_like_x(),
        ));
        assert!(
            matches!(refused(&bytes), AdmissionError::Constant { tensor, .. } if tensor == "w")
        );
    }
}

#[test]
fn graphs_must_be_ordered_and_defined_once() {
    let unordered = model(graph(
        vec![
            node("Neg", &["t"], &["y"], vec![]),
            node("Neg", &["x"], &["t"], vec![]),
        ],
        vec![],
        y_like_x(),
    ));
    assert!(matches!(refused(&unordered), AdmissionError::Graph(m) if m.contains("topological")));
    let twice = model(graph(
        vec![
            node("Neg", &["x"], &["y"], vec![]),
            node("Abs", &["x"], &["y"], vec![]),
        ],
        vec![],
        y_like_x(),
    ));
    assert!(matches!(refused(&twice), AdmissionError::Graph(m) if m.contains("defined twice")));
    // More outputs than a run may hand over: 17 naming the same value.
    let negation = graph(
        vec![node("Neg", &["x"], &["y"], vec![])],
        vec![],
        y_like_x(),
    );
    let many = (0..16).fold(negation, |g, _| g.msg(12, y_like_x()));
    assert!(matches!(refused(&model(many)), AdmissionError::Graph(m) if m.contains("17 outputs")));
}

/// `ConstantOfShape` of 2²⁸ floats: 1 GiB of host memory for no fuel.
#[test]
fn a_constant_too_large_to_hold_is_refused() {
    let bytes = model(graph(
        vec![
            node("ConstantOfShape", &["s"], &["c"], vec![]),
            node("ReduceSum", &["c"], &["r"], vec![attr_int("keepdims", 0)]),
            node("Add", &["x", "r"], &["y"], vec![]),
        ],
        vec![tensor("s", INT64, &[1], &i64s(&[1 << 28]))],
        y_like_x(),
    ));
    let err = refused(&bytes);
    assert!(
        matches!(&err, AdmissionError::Shapes(m) if m.contains("ConstantOfShape")),
        "{err}"
    );
}

/// A constant 8192 × 8192 product: folded by ONNX Runtime at load time,
/// before any call could pay for it.
#[test]
fn constant_work_beyond_the_load_budget_is_refused() {
    let bytes = model(graph(
        vec![
            node("ConstantOfShape", &["s"], &["c"], vec![]),
            node("MatMul", &["c", "c"], &["p"], vec![]),
            node("ReduceSum", &["p"], &["r"], vec![attr_int("keepdims", 0)]),
            node("Add", &["x", "r"], &["y"], vec![]),
        ],
        vec![tensor("s", INT64, &[2], &i64s(&[8192, 8192]))],
        y_like_x(),
    ));
    let err = refused(&bytes);
    assert!(matches!(err, AdmissionError::ConstantWork { .. }), "{err}");
}

/// `Cast(x × 2⁴⁰)` to int64 hands back the bits the float grid rounds away.
#[test]
fn integer_outputs_computed_from_floats_are_refused() {
    let bytes = model(graph(
        vec![
            node("Mul", &["x", "k"], &["big"], vec![]),
            node("Cast", &["big"], &["y"], vec![attr_int("to", INT64)]),
        ],
        vec![tensor("k", FLOAT, &[], &f32s(&[1099511627776.0]))],
        value("y", INT64, &[None]),
    ));
    let err = refused(&bytes);
    assert!(
        matches!(&err, AdmissionError::Output { name, .. } if name == "y"),
        "{err}"
    );
}

/// A second `graph` field: protobuf merges repeated occurrences of a
/// message field, and two parsers that disagree on it would see two
/// different models. Admission hands ONNX Runtime its own re-encoding, so
/// whatever it accepted is all ONNX Runtime reads.
#[test]
fn onnx_runtime_reads_only_what_admission_read() {
    let evil = graph(
        vec![node("Identity", &["w"], &["y"], vec![])],
        vec![external("w", "etc/passwd")],
        value("y", 2, &[Some(64)]),
    );
    let bytes = model_of(evil).msg(7, negation()).0;
    match admit(&bytes) {
        Err(e) => assert!(matches!(e, AdmissionError::ExternalData(_)), "{e}"),
        Ok(admitted) => {
            let seen = admitted.bytes();
            assert!(!seen.windows(10).any(|w| w == b"etc/passwd"));
        }
    }
}

/// The host encoder packaged with `model` (as `model.onnx`).
fn hostile_with(model: Vec<u8>) -> Result<soma_host::Encoder, Error> {
    let package = package_with(
        soma_examples_artifacts::HOSTILE,
        "hostile",
        vec![("model.onnx".to_string(), model)],
    );
    engine().load_package(&package, None)
}

fn run(encoder: &soma_host::Encoder, n: u32, model: &[u8]) -> Result<soma_host::Embeddings, Error> {
    let digest = blake3::hash(model).to_hex();
    encoder.embed(
        &text(&[&format!("run:{n}:{digest}")]),
        &Limits::default(),
        Seed::from(0),
    )
}

fn still_serving() {
    l6().embed(&text(&["still serving"]), &Limits::default(), Seed::from(0))
        .unwrap();
}

#[test]
fn a_package_with_a_model_that_reads_host_files_does_not_load() {
    let bytes = model(graph(
        vec![node("Identity", &["w"], &["y"], vec![])],
        vec![external("w", "etc/passwd")],
        value("y", 2, &[Some(64)]),
    ));
    match hostile_with(bytes) {
        Err(Error::InvalidModel { name, message }) => {
            assert_eq!(name, "model.onnx");
            assert!(message.contains("external data"), "{message}");
        }
        Err(other) => panic!("expected an invalid model, got {other}"),
        Ok(_) => panic!("the package loaded"),
    }
    still_serving();
}

/// Memory sized by the input: admitted (small for small inputs), refused
/// as too large before ONNX Runtime runs it on a large one.
#[test]
fn a_tensor_sized_by_the_input_is_refused_before_it_is_allocated() {
    let bytes = model(graph(
        vec![
            node("Shape", &["x"], &["s"], vec![]),
            node("Mul", &["s", "mebi"], &["big"], vec![]),
            node("ConstantOfShape", &["big"], &["c"], vec![]),
            node("ReduceSum", &["c"], &["r"], vec![attr_int("keepdims", 0)]),
            node("Add", &["x", "r"], &["y"], vec![]),
        ],
        vec![tensor("mebi", INT64, &[1], &i64s(&[1 << 20]))],
        y_like_x(),
    ));
    let encoder = hostile_with(bytes.clone()).unwrap();
    let small = run(&encoder, 2, &bytes).unwrap();
    assert_eq!(&small.vectors[0][..2], &[0.0, 1.0]);
    match run(&encoder, 300, &bytes) {
        Err(Error::Refused(message)) => assert!(message.contains("TooLarge"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    still_serving();
}

#[test]
fn fuel_is_charged_for_the_planned_work_before_the_run() {
    let bytes = negate();
    let encoder = hostile_with(bytes.clone()).unwrap();
    let fuel = |n| run(&encoder, n, &bytes).unwrap().fuel_used;
    let (one, many) = (fuel(1), fuel(1 << 20));
    // A million more elements: 4 MiB in, 4 MiB out (a fuel per byte), and
    // the planned work of negating them.
    assert!(many - one > 8 << 20, "{one} vs {many}");
    let limits = Limits {
        fuel: one + (1 << 20),
        ..Limits::default()
    };
    let digest = blake3::hash(&bytes).to_hex();
    let err = encoder
        .embed(
            &text(&[&format!("run:{}:{digest}", 1 << 20)]),
            &limits,
            Seed::from(0),
        )
        .unwrap_err();
    assert!(matches!(err, Error::FuelExhausted { .. }), "{err}");
    still_serving();
}

#[test]
fn outputs_have_one_zero() {
    let bytes = negate();
    let encoder = hostile_with(bytes.clone()).unwrap();
    let out = run(&encoder, 3, &bytes).unwrap();
    // -0.0 from negating 0 comes back as +0.0.
    assert_eq!(out.vectors[0][0].to_bits(), 0.0f32.to_bits());
    assert_eq!(&out.vectors[0][1..3], &[-1.0, -2.0]);
}

/// The hostile encoder's input that runs `model` (of its package) once.
fn runs(model: &[u8]) -> Vec<Vec<u8>> {
    text(&[&format!("run:1:{}", blake3::hash(model).to_hex())])
}

/// The hostile encoder on [`slow`] in `engine` (one of the test's own:
/// killing its workers must not race other tests), and the input that runs
/// it.
fn slow_in(engine: &soma_host::Engine) -> (soma_host::Encoder, Vec<Vec<u8>>) {
    let bytes = slow();
    let package = package_with(
        soma_examples_artifacts::HOSTILE,
        "hostile",
        vec![("model.onnx".to_string(), bytes.clone())],
    );
    let encoder = engine.load_package(&package, None).unwrap();
    (encoder, runs(&bytes))
}

/// Runs `input` on `encoder` with a wall-clock limit long enough for the
/// wasm before the run (well under a millisecond; the epoch ticks every
/// 10 ms, at any moment, so the deadline falls 50 to 60 ms after the
/// start) and far too short for the run; checks that the worker's timeout
/// ends the call as this host's failure.
fn time_out(encoder: &soma_host::Encoder, input: &[Vec<u8>]) {
    let tight = Limits {
        timeout: std::time::Duration::from_millis(50),
        ..Limits::default()
    };
    let err = encoder.embed(input, &tight, Seed::from(0)).unwrap_err();
    assert!(
        matches!(&err, Error::Host(m) if m.contains("wall-clock")),
        "{err}"
    );
    assert!(!err.is_deterministic());
}

#[test]
fn a_run_past_its_wall_clock_budget_kills_the_worker_and_is_not_held_against_the_encoder() {
    let engine = soma_host::Engine::new().unwrap();
    let (encoder, input) = slow_in(&engine);
    encoder
        .embed(&input, &Limits::default(), Seed::from(0))
        .unwrap();
    time_out(&encoder, &input);
    // A fresh worker loads the model again and serves.
    let again = encoder
        .embed(&input, &Limits::default(), Seed::from(0))
        .unwrap();
    assert_eq!(again.vectors[0][0], 0.0);
}

/// An engine of its own with three inference workers, and [`slow_in`] it.
fn slow_on_three_workers() -> (soma_host::Engine, soma_host::Encoder, Vec<Vec<u8>>) {
    let engine = soma_host::Engine::new().unwrap().with_inference_workers(3);
    let (encoder, input) = slow_in(&engine);
    (engine, encoder, input)
}

/// Runs `input` on `encoder` in three threads at once; their vectors' bits.
fn three_at_once(encoder: &soma_host::Encoder, input: &[Vec<u8>]) -> Vec<Vec<u32>> {
    let start = std::sync::Barrier::new(3);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let out = encoder.embed(input, &Limits::default(), Seed::from(0));
                    out.unwrap().vectors[0]
                        .iter()
                        .map(|x| x.to_bits())
                        .collect()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// Runs [`three_at_once`] `rounds` times, or until `engine` has three
/// workers running; checks that every run gave the same bits, and returns
/// how many workers run.
fn rounds_of_three(
    engine: &soma_host::Engine,
    encoder: &soma_host::Encoder,
    input: &[Vec<u8>],
    rounds: usize,
) -> usize {
    let first = three_at_once(encoder, input);
    assert!(first.iter().all(|o| *o == first[0]), "{first:?}");
    for _ in 1..rounds {
        if engine.running_inference_workers() == 3 {
            break;
        }
        assert_eq!(three_at_once(encoder, input), first);
    }
    engine.running_inference_workers()
}

#[test]
fn runs_of_a_busy_model_spill_over_to_idle_workers_with_the_same_bits() {
    let (engine, encoder, input) = slow_on_three_workers();
    // Compiled in two workers; the third starts only when a run finds
    // both busy (each run takes far longer than the threads take to start),
    // and loads the model in the background for the runs after it.
    assert_eq!(engine.running_inference_workers(), 2);
    assert_eq!(rounds_of_three(&engine, &encoder, &input, 5), 3);
    // Now runs go to the third worker too, with the same bits.
    let again = three_at_once(&encoder, &input);
    assert!(again.iter().all(|o| *o == again[0]), "{again:?}");
}

#[test]
fn a_model_that_made_a_worker_fail_runs_only_in_its_own_workers() {
    let (engine, encoder, input) = slow_on_three_workers();
    time_out(&encoder, &input);
    // As above, but the third run waits for one of the model's own two
    // workers instead of having another load it.
    assert_eq!(rounds_of_three(&engine, &encoder, &input, 3), 2);
}

/// Nine 256 MiB tensors alive at once, then summed: each is within the
/// per-tensor cap, together they are not.
#[test]
fn a_run_that_would_hold_too_much_at_once_is_refused() {
    let expanded: Vec<String> = (0..9).map(|i| format!("e{i}")).collect();
    let mut nodes: Vec<Pb> = expanded
        .iter()
        .map(|e| node("Expand", &["x", "s"], &[e.as_str()], vec![]))
        .collect();
    let all: Vec<&str> = expanded.iter().map(String::as_str).collect();
    nodes.push(node("Sum", &all, &["t"], vec![]));
    nodes.push(node(
        "ReduceSum",
        &["t"],
        &["y"],
        vec![attr_int("keepdims", 0)],
    ));
    let bytes = model(graph(
        nodes,
        vec![tensor("s", INT64, &[2], &i64s(&[8192, 8192]))],
        value("y", FLOAT, &[]),
    ));
    let err = refused(&bytes);
    assert!(
        matches!(&err, AdmissionError::Shapes(m) if m.contains("at once")),
        "{err}"
    );
}

/// With `x` of fixed size, ONNX Runtime folds `Shape(x)` and everything
/// after it while loading: that work counts against the load budget.
#[test]
fn work_folded_from_fixed_shapes_counts_against_the_load_budget() {
    let mut nodes = vec![
        node("Shape", &["x"], &["s"], vec![]),
        node("Mul", &["s", "k"], &["big"], vec![]),
        node("ConstantOfShape", &["big"], &["c0"], vec![]),
    ];
    for i in 0..30 {
        nodes.push(node(
            "Exp",
            &[&format!("c{i}")],
            &[&format!("c{}", i + 1)],
            vec![],
        ));
    }
    nodes.push(node(
        "ReduceSum",
        &["c30"],
        &["r"],
        vec![attr_int("keepdims", 0)],
    ));
    nodes.push(node("Add", &["x", "r"], &["y"], vec![]));
    let g = nodes.into_iter().fold(Pb::default(), |g, n| g.msg(1, n));
    let g = g
        .str(2, "g")
        .msg(5, tensor("k", INT64, &[1], &i64s(&[1 << 22])))
        .msg(11, value("x", FLOAT, &[Some(1)]))
        .msg(12, value("y", FLOAT, &[Some(1)]));
    let err = refused(&model(g));
    assert!(matches!(err, AdmissionError::ConstantWork { .. }), "{err}");
}

/// ONNX Runtime keeps `DequantizeLinear` of a constant as a node, so its
/// work is charged on every run; a `Cast` of a constant is folded at load.
#[test]
fn only_work_folded_at_load_is_left_out_of_a_runs_fuel() {
    let weights = tensor("w", 2, &[1 << 20], &vec![1u8; 1 << 20]);
    let scale = tensor("scale", FLOAT, &[], &f32s(&[0.5]));
    let with = |first: Pb, inits: Vec<Pb>| {
        model(graph(
            vec![
                first,
                node("ReduceSum", &["f"], &["r"], vec![attr_int("keepdims", 0)]),
                node("Add", &["x", "r"], &["y"], vec![]),
            ],
            inits,
            y_like_x(),
        ))
    };
    let dequantized = with(
        node("DequantizeLinear", &["w", "scale"], &["f"], vec![]),
        vec![weights.clone(), scale],
    );
    let cast = with(
        node("Cast", &["w"], &["f"], vec![attr_int("to", FLOAT)]),
        vec![weights],
    );
    let fuel = |bytes: Vec<u8>, sum: f32| {
        let encoder = hostile_with(bytes.clone()).unwrap();
        let out = run(&encoder, 1, &bytes).unwrap();
        assert_eq!(out.vectors[0][0], sum);
        out.fuel_used
    };
    let (dq, folded) = (fuel(dequantized, 524_288.0), fuel(cast, 1_048_576.0));
    // Dequantizing and summing a million values: at least 4 M fuel.
    assert!(dq > folded + (4 << 20), "{dq} vs {folded}");
}

/// 600 000 empty nodes: 1.2 MB on the wire, hundreds of MB once parsed.
#[test]
fn a_model_that_would_parse_into_far_more_memory_than_its_size_is_refused() {
    let g = (0..600_000).fold(Pb::default(), |g, _| g.msg(1, Pb::default()));
    let err = refused(&model(g));
    assert!(
        matches!(&err, AdmissionError::Malformed(m) if m.contains("beyond")),
        "{err}"
    );
}

#[test]
fn the_fuel_of_a_run_is_known_before_it_runs() {
    let admitted = admit(&negate()).unwrap();
    let (small, large) = (
        admitted.fuel(&[vec![10]]).unwrap(),
        admitted.fuel(&[vec![10_000]]).unwrap(),
    );
    assert!(large > small + 10_000, "{small} vs {large}");
    assert!(admitted.fuel(&[]).is_err());
    assert!(admitted.fuel(&[vec![1, 2]]).is_err());
}

/// `y = Σx + count·weight`, the `count` weights an initializer.
fn weighted(weight: f32, count: usize) -> Vec<u8> {
    let sum =
        |from: &str, to: &str| node("ReduceSum", &[from], &[to], vec![attr_int("keepdims", 0)]);
    model(graph(
        vec![
            sum("x", "sx"),
            sum("w", "sw"),
            node("Add", &["sx", "sw"], &["y"], vec![]),
        ],
        vec![tensor(
            "w",
            FLOAT,
            &[count as i64],
            &f32s(&vec![weight; count]),
        )],
        value("y", FLOAT, &[]),
    ))
}

#[test]
fn a_worker_holds_sessions_within_its_session_memory_and_compiles_dropped_ones_again() {
    let models: Vec<Vec<u8>> = (1..=3).map(|w| weighted(w as f32, 10_000)).collect();
    let size = admit(&models[0]).unwrap().bytes().len() as u64;
    // One worker, with room for two of the three models.
    let engine = soma_host::Engine::new()
        .unwrap()
        .with_inference_workers(1)
        .with_session_memory(2 * size + size / 2);
    let blobs = (0..3).map(|i| (format!("m{i}.onnx"), models[i].clone()));
    let package = package_with(soma_examples_artifacts::HOSTILE, "hostile", blobs.collect());
    // Loading the package compiled all three in turn: the third's load
    // dropped the first.
    let encoder = engine.load_package(&package, None).unwrap();
    assert_eq!(
        (engine.inference_sessions(), engine.inference_loads()),
        (2, 3)
    );
    let run = |i: usize| {
        let out = encoder.embed(&runs(&models[i]), &Limits::default(), Seed::from(0));
        out.unwrap().vectors[0][0]
    };
    // Each model's run, and the compilations so far: a dropped model is
    // compiled again, in place of the one used longest ago.
    let steps = [
        (1, 3),
        (0, 4),
        (1, 4),
        (2, 5),
        (1, 5),
        (0, 6),
        (2, 7),
        (2, 7),
    ];
    for (i, loads) in steps {
        assert_eq!(run(i), 10_000.0 * (i + 1) as f32, "model {i}");
        let now = (engine.inference_sessions(), engine.inference_loads());
        assert_eq!(now, (2, loads), "after model {i}");
    }
    // A model larger than the whole session memory cannot run here: this
    // host's failure, not the package's; the others still run.
    let big = vec![("big.onnx".to_string(), weighted(4.0, 30_000))];
    let package = package_with(soma_examples_artifacts::HOSTILE, "hostile", big);
    let Err(err) = engine.load_package(&package, None) else {
        panic!("a model larger than the session memory was loaded");
    };
    assert!(
        matches!(&err, Error::Host(m) if m.contains("exceed")),
        "{err}"
    );
    assert!(!err.is_deterministic());
    assert_eq!(run(0), 10_000.0);
}

/// `y = x + Σ √…√0` over 2²² zeros: ONNX Runtime folds the constant part
/// while it compiles the model, which takes far longer than 50 ms (about a
/// second here).
fn slow_to_compile() -> Vec<u8> {
    let mut nodes = vec![node("ConstantOfShape", &["s"], &["c0"], vec![])];
    for i in 0..16 {
        let (from, to) = (format!("c{i}"), format!("c{}", i + 1));
        nodes.push(node("Sqrt", &[&from], &[&to], vec![]));
    }
    nodes.push(node(
        "ReduceSum",
        &["c16"],
        &["r"],
        vec![attr_int("keepdims", 0)],
    ));
    nodes.push(node("Add", &["x", "r"], &["y"], vec![]));
    model(graph(
        nodes,
        vec![tensor("s", INT64, &[1], &i64s(&[1 << 22]))],
        y_like_x(),
    ))
}

#[test]
fn a_call_whose_time_runs_out_while_its_model_compiles_again_leaves_the_session_for_the_next() {
    let (slow, small) = (slow_to_compile(), weighted(1.0, 10_000));
    // One worker, with room for the small model only: running it drops
    // the slow one.
    let size = admit(&small).unwrap().bytes().len() as u64;
    let engine = soma_host::Engine::new()
        .unwrap()
        .with_inference_workers(1)
        .with_session_memory(size);
    let blobs = vec![
        ("slow.onnx".to_string(), slow.clone()),
        ("small.onnx".to_string(), small.clone()),
    ];
    let package = package_with(soma_examples_artifacts::HOSTILE, "hostile", blobs);
    let encoder = engine.load_package(&package, None).unwrap();
    let run = |model: &[u8], limits: &Limits| encoder.embed(&runs(model), limits, Seed::from(0));
    run(&small, &Limits::default()).unwrap();
    let loads = engine.inference_loads();
    let tight = Limits {
        timeout: std::time::Duration::from_millis(50),
        ..Limits::default()
    };
    let err = run(&slow, &tight).unwrap_err();
    assert!(
        matches!(&err, Error::Host(m) if m.contains("too little of the call's wall-clock budget")),
        "{err}"
    );
    assert!(!err.is_deterministic());
    // The worker was not killed: it compiled the model once, and the next
    // call runs it.
    assert_eq!(engine.inference_loads(), loads + 1);
    let out = run(&slow, &Limits::default()).unwrap();
    assert_eq!(out.vectors[0][0], 0.0);
    assert_eq!(engine.inference_loads(), loads + 1);
}

#[test]
fn a_model_no_loaded_encoder_uses_is_freed() {
    let model = weighted(1.0, 10_000);
    let engine = soma_host::Engine::new().unwrap().with_inference_workers(1);
    // Two packages (one with a note besides) with the same model share it.
    let package = |note: &[u8]| {
        let mut blobs = vec![("m.onnx".to_string(), model.clone())];
        if !note.is_empty() {
            blobs.push(("note.txt".to_string(), note.to_vec()));
        }
        package_with(soma_examples_artifacts::HOSTILE, "hostile", blobs)
    };
    let first = engine.load_package(&package(b""), None).unwrap();
    let second = engine.load_package(&package(b"another"), None).unwrap();
    assert_eq!((engine.cached_models(), engine.inference_loads()), (1, 1));
    drop(first);
    assert_eq!(engine.cached_models(), 1);
    drop(second);
    assert_eq!(engine.cached_models(), 0);
    // Loaded again, it is admitted again; the worker still holds the
    // session, so nothing is compiled.
    let again = engine.load_package(&package(b""), None).unwrap();
    assert_eq!((engine.cached_models(), engine.inference_loads()), (1, 1));
    let out = again
        .embed(&runs(&model), &Limits::default(), Seed::from(0))
        .unwrap();
    assert_eq!(out.vectors[0][0], 10_000.0);
}
