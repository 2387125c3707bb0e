//! Model admission, on arbitrary bytes and on mutations of a real model:
//! never a panic; the fuel a run is planned to cost never falls as the
//! input grows; whatever admission accepts loads in ONNX Runtime (in the
//! inference worker) without crashing it or being refused by it, and runs
//! there when it takes what the hostile encoder sends (one fp32 vector
//! `x`; a mutated MiniLM wants token ids, so the host refuses that call
//! before the worker sees it). A run that happens was charged at least
//! the fuel its plan costs: planned work that saturates (more than any
//! fuel limit buys) can never run.
//!
//! The first byte chooses the model. If it is 1 modulo 8, the rest of the
//! input is a list of patches (little-endian u32 offset, then a byte to
//! xor there) applied to the MiniLM-L6 int8 model that `cargo xtask setup`
//! installs in `$SOMA_MODELS_DIR` (a slow input: the model is 22 MB);
//! otherwise the rest is the model.

use soma_host::model::admit;
use soma_host::package::{EncoderMeta, Package};
use soma_host::{CompiledCache, Engine, Limits, Seed};
use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};

/// Input lengths a run is planned (and, for the first two, made) with.
const LENGTHS: [u64; 6] = [1, 2, 3, 5, 8, 64];

/// The real model mutations start from.
fn real_model() -> &'static [u8] {
    static MODEL: OnceLock<Vec<u8>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::var_os("SOMA_MODELS_DIR")
            .expect("SOMA_MODELS_DIR names the models `cargo xtask setup` installs");
        let path = std::path::Path::new(&dir).join("all-minilm-l6-v2-int8.onnx");
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    })
}

/// The model the input stands for.
fn model(bytes: &[u8]) -> Option<Cow<'_, [u8]>> {
    let (&mode, rest) = bytes.split_first()?;
    if mode % 8 != 1 {
        return Some(Cow::Borrowed(rest));
    }
    let mut model = real_model().to_vec();
    for patch in rest.chunks_exact(5) {
        let offset = u32::from_le_bytes([patch[0], patch[1], patch[2], patch[3]]) as usize;
        let len = model.len();
        model[offset % len] ^= patch[4];
    }
    Some(Cow::Owned(model))
}

/// Checks one input.
pub fn check(bytes: &[u8]) {
    let Some(model) = model(bytes) else {
        return;
    };
    let Ok(admitted) = admit(&model) else {
        return;
    };
    let declared = admitted.input_dims();
    let mut planned = Vec::with_capacity(LENGTHS.len());
    let mut charged = 0;
    for n in LENGTHS {
        let dims: Vec<Vec<u64>> = declared
            .iter()
            .map(|input| input.iter().map(|d| d.unwrap_or(n)).collect())
            .collect();
        let fuel = admitted.fuel(&dims);
        if let Ok(fuel) = fuel {
            assert!(
                fuel >= charged,
                "a run of length {n} costs {fuel}, less than a shorter one ({charged})"
            );
            charged = fuel;
        }
        planned.push(fuel);
    }
    // Loaded and run by the hostile encoder, which feeds `x` = 0, 1, ..
    // as fp32: whatever the model wants, the host must answer with a
    // verdict about the encoder, never a failure of its own.
    let package = package(model.into_owned());
    let digest = blake3::hash(package.models().next().expect("one model").1).to_hex();
    let encoder = match engine().load_package(&package, Some(compiled())) {
        Ok(encoder) => encoder,
        Err(e) => {
            assert!(
                !crate::host_failed(&e),
                "an admitted model broke the host at load: {e}"
            );
            return;
        }
    };
    for (n, planned) in LENGTHS.iter().zip(&planned).take(2) {
        let input = format!("run:{n}:{digest}").into_bytes();
        match encoder.embed(&[input], &Limits::default(), Seed::from(0)) {
            // The encoder answers only if its run succeeded, which takes a
            // single input of the dimensions planned above.
            Ok(out) => match planned {
                Ok(fuel) => assert!(
                    out.fuel_used >= *fuel,
                    "a run of length {n} planned to cost {fuel} was charged {}",
                    out.fuel_used
                ),
                Err(e) => panic!("a run of length {n} that cannot be planned ran: {e}"),
            },
            Err(e) => assert!(
                !crate::host_failed(&e),
                "an admitted model made the host fail: {e}"
            ),
        }
    }
}

/// Models loaded before the engine is replaced: an engine keeps every
/// model it loaded (in its cache and in its workers), which a long run
/// would otherwise fill memory with.
const MODELS_PER_ENGINE: usize = 16;

/// An engine for this target's models, replaced every
/// [`MODELS_PER_ENGINE`] calls.
fn engine() -> Arc<Engine> {
    static ENGINE: Mutex<Option<(Arc<Engine>, usize)>> = Mutex::new(None);
    let mut held = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    if held
        .as_ref()
        .is_none_or(|(_, used)| *used >= MODELS_PER_ENGINE)
    {
        let engine = Engine::new().expect("the host's engine configuration is valid");
        *held = Some((Arc::new(engine), 0));
    }
    let (engine, used) = held.as_mut().expect("set above");
    *used += 1;
    engine.clone()
}

/// Compiled code of the hostile encoder, kept across inputs (compiling it
/// would otherwise take most of each input's time).
fn compiled() -> &'static CompiledCache {
    static CACHE: OnceLock<(tempfile::TempDir, CompiledCache)> = OnceLock::new();
    let (_, cache) = CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cache = CompiledCache::open(dir.path()).expect("a cache in an empty directory");
        (dir, cache)
    });
    cache
}

/// The hostile example encoder packaged with `model`.
fn package(model: Vec<u8>) -> soma_host::package::VerifiedPackage {
    static COMPONENT: OnceLock<(Vec<u8>, EncoderMeta)> = OnceLock::new();
    let (component, meta) = COMPONENT.get_or_init(|| {
        let bytes = crate::example_component("hostile");
        let encoder = crate::engine()
            .load(&bytes)
            .expect("the hostile encoder loads");
        let meta = EncoderMeta::from_info(encoder.info(), soma_host::package::MAX_FUEL_LIMIT);
        (bytes, meta)
    });
    Package::sign(
        &crate::key(0),
        meta,
        component.clone(),
        vec![("model.onnx".into(), model)],
    )
    .expect("a package of one model is valid")
}

/// Protobuf fields, enough to write small ONNX models.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(mut self, mut v: u64) -> Pb {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }

    fn int(self, field: u64, v: i64) -> Pb {
        self.varint(field << 3).varint(v as u64)
    }

    fn bytes(self, field: u64, b: &[u8]) -> Pb {
        let mut pb = self.varint((field << 3) | 2).varint(b.len() as u64);
        pb.0.extend_from_slice(b);
        pb
    }

    fn msg(self, field: u64, m: Pb) -> Pb {
        self.bytes(field, &m.0)
    }
}

const FLOAT: i64 = 1;

/// A float tensor `name` of one free dimension, as a graph input or output.
fn vector(name: &str) -> Pb {
    let shape = Pb::default().msg(1, Pb::default().bytes(2, b"n"));
    let tensor = Pb::default().int(1, FLOAT).msg(2, shape);
    Pb::default()
        .bytes(1, name.as_bytes())
        .msg(2, Pb::default().msg(1, tensor))
}

/// An IR 8, opset 17 model from `x` to `y` of `nodes` (operator, inputs,
/// output) and float scalar `constants`.
fn onnx(nodes: &[(&str, &[&str], &str)], constants: &[(&str, f32)]) -> Vec<u8> {
    let mut graph = Pb::default();
    for (op, inputs, output) in nodes {
        let node = inputs
            .iter()
            .fold(Pb::default(), |n, i| n.bytes(1, i.as_bytes()));
        graph = graph.msg(1, node.bytes(2, output.as_bytes()).bytes(4, op.as_bytes()));
    }
    graph = graph.bytes(2, b"g");
    for (name, value) in constants {
        let tensor = Pb::default()
            .int(1, 1)
            .int(2, FLOAT)
            .bytes(8, name.as_bytes());
        graph = graph.msg(5, tensor.bytes(9, &value.to_le_bytes()));
    }
    let graph = graph.msg(11, vector("x")).msg(12, vector("y"));
    let opset = Pb::default().bytes(1, b"").int(2, 17);
    Pb::default().int(1, 8).msg(8, opset).msg(7, graph).0
}

/// Small models admission accepts, and a patch of the real model.
pub fn seeds() -> Vec<Vec<u8>> {
    let models = [
        onnx(&[("Neg", &["x"], "y")], &[]),
        onnx(&[("Add", &["x", "c"], "y")], &[("c", 0.5)]),
        onnx(&[("Neg", &["x"], "t"), ("Exp", &["t"], "y")], &[]),
        onnx(&[("Mul", &["x", "x"], "t"), ("Sqrt", &["t"], "y")], &[]),
    ];
    let mut seeds: Vec<Vec<u8>> = models.into_iter().map(|m| [vec![0], m].concat()).collect();
    seeds.push(vec![1, 0x10, 0x27, 0, 0, 0x01]);
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_models_are_admitted_and_run_in_the_worker() {
        crate::use_components(
            std::path::Path::new(soma_examples_artifacts::HOSTILE)
                .parent()
                .unwrap(),
        );
        let seeds = seeds();
        for seed in seeds.iter().filter(|s| s[0] % 8 != 1) {
            let model = model(seed).unwrap().into_owned();
            admit(&model).unwrap();
            let package = package(model);
            let digest = blake3::hash(package.models().next().unwrap().1).to_hex();
            let encoder = engine().load_package(&package, Some(compiled())).unwrap();
            let out = encoder
                .embed(
                    &[format!("run:3:{digest}").into_bytes()],
                    &Limits::default(),
                    Seed::from(0),
                )
                .unwrap();
            assert_ne!(out.vectors[0][..3], [0.0; 3], "the model did not run");
        }
    }
}
