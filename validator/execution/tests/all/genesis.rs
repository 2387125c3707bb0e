use super::*;
use soma_execution::{GenesisError, Rejection};
use soma_host::package::{EncoderMeta, MAX_FUEL_LIMIT, Package};

fn package(dir: &Path) -> (String, soma_host::Digest) {
    package_of(dir, "encoder.somapkg", 384)
}

/// A signed package of `dimension` written to `dir/file`.
fn package_of(dir: &Path, file: &str, dimension: u32) -> (String, soma_host::Digest) {
    let meta = EncoderMeta {
        name: "genesis-encoder".into(),
        version: "1.0.0".into(),
        dimension,
        fuel_limit: MAX_FUEL_LIMIT,
        modality: soma_host::Modality::Text,
        max_input_bytes: Parameters::default().max_data_bytes,
    };
    let package = Package::sign(&key(9), &meta, b"component bytes".to_vec(), vec![]).unwrap();
    std::fs::write(dir.join(file), package.encode()).unwrap();
    (file.into(), package.digest())
}

fn config(package: &str) -> serde_json::Value {
    serde_json::json!({
        "chain_name": "soma-genesis-test",
        "accounts": [
            { "key": public(0).to_string(), "balance": 1_000_000_000u64 },
            { "key": public(1).to_string(), "balance": 5u64 },
        ],
        "validators": [{ "key": public(0).to_string(), "stake": 2_000_000u64 }],
        "encoders": [{ "package": package, "owner": public(1).to_string(), "bond": 1_000_000u64 }],
        "parameters": { "min_fee": 1, "min_encoder_bond": 1_000_000u64, "min_validator_stake": 1u64 },
    })
}

fn read(dir: &Path, config: &serde_json::Value) -> Result<Genesis, GenesisError> {
    let path = dir.join("genesis.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    Genesis::from_config_file(&path)
}

#[test]
fn a_genesis_config_with_a_signed_package_starts_a_state() {
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = package(dir.path());
    let g = read(dir.path(), &config(&file)).unwrap();
    assert_eq!(g.encoders()[0].package, digest);
    let ex = open(&dir.path().join("state"), &g);
    let encoder = ex.encoder(&digest).unwrap().unwrap();
    assert_eq!((encoder.owner, encoder.bond), (public(1), 1_000_000));
    assert_eq!(ex.account(&public(1)).unwrap().balance, 5);
    assert_eq!(
        ex.supply().unwrap().total(),
        1_000_000_005 + 2_000_000 + 1_000_000
    );
    // The owner can take its genesis bond back.
    let mut ex = ex;
    let effects = apply(
        &mut ex,
        &[signed(
            &g,
            1,
            0,
            1,
            Action::DeregisterEncoder { package: digest },
        )],
    );
    assert_eq!(effects.receipts[0].rejection, None);
    assert_eq!(ex.account(&public(1)).unwrap().balance, 1_000_004);
}

#[test]
fn a_genesis_and_its_chain_id_are_canonical() {
    use soma_codec::{Decode, Encode};
    let g = genesis();
    let bytes = g.to_bytes();
    assert_eq!(Genesis::from_bytes(&bytes).unwrap(), g);
    // Any parameter is part of the chain id, and so of every signature.
    let cheaper = variant(
        &g,
        g.chain_name(),
        Parameters {
            min_fee: 9,
            ..Parameters::default()
        },
    );
    assert_ne!(cheaper.chain_id(), g.chain_id());
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &cheaper);
    let tx = signed(&g, 2, 0, 10, Action::AddStake { amount: 1 });
    assert_eq!(
        apply(&mut ex, &[tx]).receipts[0].rejection,
        Some(Rejection::WrongChain)
    );
}

#[test]
fn bad_genesis_configs_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = package(dir.path());
    let mut duplicate = config(&file);
    duplicate["accounts"][1]["key"] = duplicate["accounts"][0]["key"].clone();
    let err = read(dir.path(), &duplicate).unwrap_err();
    assert!(err.to_string().contains("sorted and unique"), "{err}");

    let mut bad_key = config(&file);
    bad_key["validators"][0]["key"] = "00".into();
    let err = read(dir.path(), &bad_key).unwrap_err();
    assert!(matches!(err, GenesisError::Config(_)), "{err}");

    let mut unknown = config(&file);
    unknown["parameters"]["free_money"] = 1.into();
    assert!(matches!(
        read(dir.path(), &unknown),
        Err(GenesisError::Config(_))
    ));

    // The consensus depth is fixed here, within what consensus can run.
    for depth in [2, 1_000_000] {
        let mut deep = config(&file);
        deep["parameters"]["gc_depth"] = depth.into();
        let err = read(dir.path(), &deep).unwrap_err();
        assert!(err.to_string().contains("gc depth"), "{err}");
    }

    // A loss ceiling so low that honest encoders which compose loosely
    // would be slashed.
    let mut strict = config(&file);
    strict["parameters"]["max_loss"] = (soma_execution::ONE / 4).into();
    let err = read(dir.path(), &strict).unwrap_err();
    assert!(err.to_string().contains("max loss"), "{err}");

    // Data longer than the encoder accepts.
    let mut long = config(&file);
    long["parameters"]["max_data_bytes"] = 20_000.into();
    let err = read(dir.path(), &long).unwrap_err();
    assert!(
        err.to_string()
            .contains("accepts inputs of at most 16384 bytes; the network's data may hold 20000"),
        "{err}"
    );

    // An encoder that could never be drawn.
    let mut small = config(&file);
    small["encoders"][0]["bond"] = 999_999.into();
    let err = read(dir.path(), &small).unwrap_err();
    assert!(
        err.to_string().contains("at least the minimum, 1000000"),
        "{err}"
    );

    let mut no_validators = config(&file);
    no_validators["validators"] = serde_json::json!([]);
    let err = read(dir.path(), &no_validators).unwrap_err();
    assert!(err.to_string().contains("at least one"), "{err}");

    std::fs::write(
        dir.path().join("tampered.somapkg"),
        b"SOMAPKG1 and then nothing",
    )
    .unwrap();
    let err = read(dir.path(), &config("tampered.somapkg")).unwrap_err();
    assert!(matches!(err, GenesisError::Package { .. }), "{err}");

    let err = read(dir.path(), &config("missing.somapkg")).unwrap_err();
    assert!(matches!(err, GenesisError::Read { .. }), "{err}");

    let (narrow, _) = package_of(dir.path(), "narrow.somapkg", 8);
    let err = read(dir.path(), &config(&narrow)).unwrap_err();
    assert!(err.to_string().contains("8 dimensions"), "{err}");

    // A router must be pure wasm: its output must not depend on the CPU.
    let meta = EncoderMeta {
        name: "router".into(),
        version: "1.0.0".into(),
        dimension: 384,
        fuel_limit: MAX_FUEL_LIMIT,
        modality: soma_host::Modality::Text,
        max_input_bytes: Parameters::default().max_data_bytes,
    };
    let models = vec![("model.onnx".into(), vec![0; 8])];
    let impure = Package::sign(&key(9), &meta, b"component".to_vec(), models).unwrap();
    std::fs::write(dir.path().join("impure.somapkg"), impure.encode()).unwrap();
    let mut routed = config(&file);
    routed["router"] = "impure.somapkg".into();
    let err = read(dir.path(), &routed).unwrap_err();
    assert!(err.to_string().contains("pure WebAssembly"), "{err}");
    routed["router"] = narrow.into();
    let err = read(dir.path(), &routed).unwrap_err();
    assert!(err.to_string().contains("8 dimensions"), "{err}");
}

#[test]
fn a_router_named_in_the_config_is_part_of_the_chain_id() {
    use soma_codec::{Decode, Encode};
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = package(dir.path());
    let plain = read(dir.path(), &config(&file)).unwrap();
    assert_eq!(plain.router(), None);
    let mut routed = config(&file);
    routed["router"] = file.clone().into();
    let routed = read(dir.path(), &routed).unwrap();
    assert_eq!(routed.router(), Some(&digest));
    assert_ne!(routed.chain_id(), plain.chain_id());
    assert_eq!(Genesis::from_bytes(&routed.to_bytes()).unwrap(), routed);
}
