//! Routing on real encoders: the network's router (the router example, pure
//! wasm) puts each submission in a region, and after some decided jobs the
//! specialist — as good as the hash encoder on code, noisy on prose — is
//! chosen for code far more often than at the start, because it scores
//! well in the regions code goes to.

use super::*;
use soma_execution::{ExecutionError, Router, RouterError};
use soma_host::Engine;
use soma_host::package::MAX_FUEL_LIMIT;

const CODE: &[&str] = &[
    "fn main() { let x = vec![1, 2, 3]; println!(\"{:?}\", x); }",
    "for (int i = 0; i < n; i++) { sum += a[i]; }",
    "let total: u64 = items.iter().map(|i| i.price).sum();",
    "if (x > 0 && y < 10) { return x * y; } else { return 0; }",
    "def area(r): return 3.14159 * r ** 2  # (circle)",
    "while (queue.size() > 0) { node = queue.pop(); visit(node); }",
    "const map = new Map(); map.set(key, [value]);",
    "match result { Ok(v) => v, Err(e) => return Err(e.into()) }",
    "SELECT name, count(*) FROM users WHERE age > 30 GROUP BY name;",
    "int[] squares = IntStream.range(0, 10).map(i -> i * i).toArray();",
    "impl Display for Point { fn fmt(&self, f: &mut Formatter) -> Result { Ok(()) } }",
    "std::vector<int> v = {1, 2, 3}; std::sort(v.begin(), v.end());",
    "x = [i * 2 for i in range(10) if i % 3 == 0]",
    "function add(a, b) { return a + b; } console.log(add(2, 3));",
    "let (tx, rx) = mpsc::channel(); tx.send(42).unwrap();",
    "assert_eq!(parse(\"[1,2]\"), Ok(vec![1, 2]));",
];

const PROSE: &[&str] = &[
    "The river flooded the valley after three days of rain.",
    "She walked to the market to buy fresh bread and apples.",
    "Interest rates rose again this quarter, worrying investors.",
    "The old lighthouse still guides fishing boats home at night.",
    "Children played in the park until the sun went down.",
    "The committee will meet on Tuesday to discuss the budget.",
    "A quiet evening by the fire is all he wanted after work.",
    "The museum opened a new exhibition of early photography.",
    "Heavy snow closed the mountain pass for most of the winter.",
    "Our neighbours adopted a small grey cat from the shelter.",
    "The orchestra rehearsed the symphony for the last time.",
    "Farmers hope the late frost will not damage the harvest.",
    "He learned to speak Portuguese while living in Lisbon.",
    "The new bridge shortened the commute by twenty minutes.",
    "Tourists crowded the old town square during the festival.",
    "Scientists observed a rare comet passing close to the sun.",
];

/// Jobs per text each share is measured over: the share's standard
/// error is then about 0.01, well below the margins asserted.
const SAMPLES: usize = 128;

/// Submits each text `times` times (shards are drawn per job) and returns
/// the share of those jobs whose shard includes `encoder`.
fn chosen(ex: &mut Executor, g: &Genesis, texts: &[&str], times: usize, encoder: Digest) -> f64 {
    let data: Vec<&[u8]> = texts
        .iter()
        .flat_map(|t| std::iter::repeat_n(t.as_bytes(), times))
        .collect();
    let jobs = submit_all(ex, g, &data);
    let with = jobs
        .iter()
        .filter(|id| ex.job(id).unwrap().unwrap().shard.contains(&encoder))
        .count();
    with as f64 / jobs.len() as f64
}

/// How often the specialist was chosen, before and after training.
struct Measured {
    code_before: f64,
    code_after: f64,
    prose_before: f64,
    prose_after: f64,
    /// The specialist's routing score per region, after.
    scores: Vec<f64>,
    /// The regions of the code and of the prose texts.
    regions: (Vec<Option<u16>>, Vec<Option<u16>>),
}

/// A network of two hash encoders, the specialist, the random and the
/// constant encoder, routed by the router example into `1 << region_bits`
/// regions: how often the specialist is chosen for code and for prose
/// before and after six rounds of every text decided.
fn train(region_bits: u8) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let hash_a = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 10);
    let hash_b = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 12);
    let specialist = example_package(
        soma_examples_artifacts::SPECIALIST_ENCODER,
        "specialist-encoder",
        11,
    );
    let random = example_package(
        soma_examples_artifacts::RANDOM_ENCODER,
        "random-encoder",
        13,
    );
    let constant = example_package(
        soma_examples_artifacts::CONSTANT_ENCODER,
        "constant-encoder",
        14,
    );
    let router = example_package(
        soma_examples_artifacts::ROUTER_ENCODER,
        "router-encoder",
        15,
    );
    // No slashing: bonds stay equal, so what changes the choice of
    // encoders is routing alone.
    let parameters = Parameters {
        shard_size: 3,
        region_bits,
        routing_decay_bps: 2_000,
        slash_bps: 0,
        penalty_bps: 0,
        ..Parameters::default()
    };
    let g = encoder_network(
        &store,
        &[
            (&hash_a, 10),
            (&hash_b, 12),
            (&specialist, 11),
            (&random, 13),
            (&constant, 14),
        ],
        parameters,
    )
    .with_router(router.digest());
    let engine = Engine::new().unwrap();
    let router = Router::load(&engine, &router, None, g.parameters()).unwrap();
    let mut ex = Executor::open(&dir.path().join("state"), &g, Some(router)).unwrap();
    let runner = JobRunner::new(engine, store, None);

    let mut regions = |texts: &[&str]| {
        let data: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        let jobs = submit_all(&mut ex, &g, &data);
        jobs.iter()
            .map(|id| ex.job(id).unwrap().unwrap().region)
            .collect::<Vec<_>>()
    };
    let regions = (regions(CODE), regions(PROSE));
    let s = specialist.digest();
    let code_before = chosen(&mut ex, &g, CODE, SAMPLES, s);
    let prose_before = chosen(&mut ex, &g, PROSE, SAMPLES, s);
    for _ in 0..6 {
        let mut texts = CODE.to_vec();
        texts.extend(PROSE);
        let data: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        let jobs = submit_all(&mut ex, &g, &data);
        decide_all(&mut ex, &g, &runner, &jobs);
    }
    Measured {
        code_before,
        code_after: chosen(&mut ex, &g, CODE, SAMPLES, s),
        prose_before,
        prose_after: chosen(&mut ex, &g, PROSE, SAMPLES, s),
        scores: ex
            .encoder(&s)
            .unwrap()
            .unwrap()
            .performance
            .iter()
            .map(|&x| f64::from(x) / 65_536.0)
            .collect(),
        regions,
    }
}

#[test]
fn the_specialist_is_chosen_more_often_for_code_after_learning_where_it_is_good() {
    let routed = train(2);
    let (code, prose) = &routed.regions;
    eprintln!("regions of code {code:?}, of prose {prose:?}");
    eprintln!("specialist's scores by region: {:.2?}", routed.scores);
    let unrouted = train(0);
    for (what, m) in [("4 regions", &routed), ("1 region", &unrouted)] {
        eprintln!(
            "{what}: specialist chosen for code {:.3} before, {:.3} after; \
             for prose {:.3} before, {:.3} after",
            m.code_before, m.code_after, m.prose_before, m.prose_after
        );
    }
    // The router tells code from prose: most prose is in one region,
    // which holds little code.
    let prose_region = (0..4u16)
        .max_by_key(|&r| prose.iter().filter(|&&p| p == Some(r)).count())
        .unwrap();
    let in_prose_region =
        |texts: &[Option<u16>]| texts.iter().filter(|&&r| r == Some(prose_region)).count();
    assert!(in_prose_region(prose) * 4 >= prose.len() * 3);
    assert!(in_prose_region(code) * 4 <= code.len());
    // The specialist scores well where code goes and badly where prose
    // goes, and is chosen for code far more often than at the start.
    for r in code.iter().flatten().filter(|&&r| r != prose_region) {
        assert!(routed.scores[usize::from(*r)] > 0.75, "{:?}", routed.scores);
    }
    assert!(
        routed.scores[usize::from(prose_region)] < 0.5,
        "{:?}",
        routed.scores
    );
    assert!(routed.code_after > routed.code_before + 0.15);
    assert!(routed.prose_after < routed.code_after - 0.15);
    // One global score learns that the specialist is middling and tilts
    // nothing; regions tilt its choice toward code.
    let tilt = |m: &Measured| m.code_after - m.prose_after;
    assert!(tilt(&routed) > tilt(&unrouted) + 0.1);
}

#[test]
fn a_router_must_be_the_genesis_one_pure_wasm_and_in_the_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let router = example_package(
        soma_examples_artifacts::ROUTER_ENCODER,
        "router-encoder",
        15,
    );
    let hash = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 10);
    let g =
        encoder_network(&store, &[(&hash, 10)], Parameters::default()).with_router(router.digest());
    let engine = Engine::new().unwrap();
    let state = dir.path().join("state");

    let missing = Executor::open(&state, &g, None).err().unwrap();
    assert!(
        matches!(
            &missing,
            ExecutionError::Router(RouterError::Mismatch { given: None, .. })
        ),
        "{missing}"
    );
    let other = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 15);
    let other = Router::load(&engine, &other, None, g.parameters()).unwrap();
    let wrong = Executor::open(&state, &g, Some(other)).err().unwrap();
    assert!(
        wrong.to_string().contains(&router.digest().to_string()),
        "{wrong}"
    );

    let with_model = Package::sign(
        &key(15),
        &EncoderMeta {
            name: "router-encoder".into(),
            version: "0.1.0".into(),
            dimension: 384,
            fuel_limit: MAX_FUEL_LIMIT,
            modality: soma_host::Modality::Text,
            max_input_bytes: 64 * 1024,
        },
        std::fs::read(soma_examples_artifacts::ROUTER_ENCODER).unwrap(),
        vec![("model.onnx".into(), vec![0; 16])],
    )
    .unwrap();
    let impure = Router::load(&engine, &with_model, None, g.parameters())
        .err()
        .unwrap();
    assert!(matches!(impure, RouterError::NotPureWasm(_)), "{impure}");
    let small = Parameters {
        dimension: 128,
        ..Parameters::default()
    };
    let elsewhere = Router::load(&engine, &router, None, &small).err().unwrap();
    assert!(
        matches!(elsewhere, RouterError::Dimension { dimension: 384, .. }),
        "{elsewhere}"
    );

    let unmetered = soma_host::Engine::without_fuel_metering().unwrap();
    let err = Router::load(&unmetered, &router, None, g.parameters())
        .err()
        .unwrap();
    assert!(matches!(err, RouterError::Unmetered), "{err}");
}

#[test]
fn data_the_router_cannot_place_is_drawn_by_bond_and_moves_no_score() {
    // The hostile encoder as router: it loops on "spin" (until the fuel
    // runs out) and gives the zero vector for anything else.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let router = component_package(soma_examples_artifacts::HOSTILE, "hostile", 15, 50_000_000);
    // Judged jobs (three encoders that succeed, masks) whose decisions
    // would move scores if the jobs had a region: the random encoder is
    // an outlier.
    let hash_a = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 10);
    let hash_b = example_package(soma_examples_artifacts::HASH_ENCODER, "hash-encoder", 11);
    let random = example_package(
        soma_examples_artifacts::RANDOM_ENCODER,
        "random-encoder",
        12,
    );
    let encoders = [(&hash_a, 10), (&hash_b, 11), (&random, 12)];
    let g = encoder_network(
        &store,
        &encoders,
        Parameters {
            shard_size: 3,
            ..Parameters::default()
        },
    )
    .with_router(router.digest());
    let engine = Engine::new().unwrap();
    let loaded = Router::load(&engine, &router, None, g.parameters()).unwrap();
    let mut ex = Executor::open(&dir.path().join("state"), &g, Some(loaded)).unwrap();
    let jobs = submit_all(&mut ex, &g, &[b"spin", b"several words to mask"]);
    for id in &jobs {
        let job = ex.job(id).unwrap().unwrap();
        assert_eq!((job.region, job.shard.len()), (None, 3));
    }
    let runner = JobRunner::new(engine, store, None);
    let performance = |ex: &Executor| {
        encoders
            .iter()
            .map(|(p, _)| ex.encoder(&p.digest()).unwrap().unwrap().performance)
            .collect::<Vec<_>>()
    };
    let before = performance(&ex);
    let decided = decide_all(&mut ex, &g, &runner, &jobs);
    assert!(
        decided[1].encoders.iter().any(|e| e.disqualified),
        "{decided:?}"
    );
    assert_eq!(performance(&ex), before);
}
