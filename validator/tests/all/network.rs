//! A four-validator network embeds text end to end: `POST /v1/embeddings`
//! submits a job per input, every validator computes the shard in its
//! sandbox and attests through consensus, and the job is finalised with
//! the same result everywhere, the dishonest encoder slashed; a validator
//! that was down while it happened applies the commits it missed and
//! reports the same. Bad requests get a 4xx with a reason, one request
//! too many for an API key a 429 with `Retry-After`, and the `openai`
//! Python package's client gets answers it reads.

use super::localnet::{
    Session, Transfers, Validator, commits, genesis, genesis_with, http, logs, run_soma, start_all,
    status, tamper, wait_for,
};
use base64::Engine as _;
use serde_json::{Value, json};
use soma_codec::Encode;
use soma_crypto::SecretKey;
use soma_execution::{Action, Transaction};
use soma_host::package::{EncoderMeta, MAX_FUEL_LIMIT, Package};
use soma_validator::api::{KEY_BURST, MAX_REQUESTS_PER_KEY};
use soma_validator::config::{ClientFile, LOCALNET_BOND};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `component` signed by a fresh key (so each call makes another package)
/// as the encoder `name` its `info()` says it is, written to `dir/file`.
fn package(dir: &Path, component: &str, name: &str, file: &str) -> PathBuf {
    let signer = SecretKey::generate().unwrap();
    let meta = text_encoder(component);
    assert_eq!(meta.name, name, "{component} is another encoder");
    let package = Package::sign(&signer, &meta, std::fs::read(component).unwrap(), vec![]).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, package.encode()).unwrap();
    path
}

/// What the example encoder `component` (an artifact path) says of itself
/// in `info()`, as its manifest, allowed the most fuel a package may have.
fn text_encoder(component: &str) -> EncoderMeta {
    let encoder = soma_host::Engine::new()
        .unwrap()
        .load(&std::fs::read(component).unwrap())
        .unwrap();
    EncoderMeta::from_info(encoder.info(), MAX_FUEL_LIMIT)
}

/// Writes a four-validator network into `dir/net` whose genesis registers
/// a package of each (component, encoder name); its directory,
/// configurations, first port and client file.
fn network(dir: &Path, encoders: &[(&str, &str)]) -> (PathBuf, Vec<PathBuf>, u16, ClientFile) {
    let packages = dir.join("packages-in");
    std::fs::create_dir(&packages).unwrap();
    let mut args = Vec::new();
    for (i, (component, name)) in encoders.iter().enumerate() {
        args.push("--encoder".into());
        args.push(package(&packages, component, name, &format!("{i}-{name}.somapkg")).into());
    }
    let args: Vec<std::ffi::OsString> = args;
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let net = dir.join("net");
    let (configs, base) = genesis_with(&net, 4, &args);
    let client =
        serde_json::from_str(&std::fs::read_to_string(net.join("client.json")).unwrap()).unwrap();
    (net, configs, base, client)
}

/// [`network`] of three hash encoders, running, every API answering: its
/// configurations, client file and validators.
fn hash_network(dir: &Path) -> (Vec<PathBuf>, ClientFile, Vec<Validator>) {
    let hash = soma_examples_artifacts::HASH_ENCODER;
    let encoder = (hash, "hash-encoder");
    let (_, configs, base, client) = network(dir, &[encoder, encoder, encoder]);
    let validators = start_all(&configs, base);
    wait_for(
        "every API to answer",
        Duration::from_secs(60),
        || (0..4).all(|i| call(client.apis[i].port(), "GET", "/health", None, b"").0 == 200),
        &validators,
    );
    (configs, client, validators)
}

/// Sends `body` as JSON to `path` of the API at `port`; (status, JSON).
fn call(port: u16, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    // An embedding request waits for its jobs, up to the API's own limit.
    let wait = match path {
        "/v1/embeddings" => soma_validator::api::EMBEDDING_TIMEOUT + Duration::from_secs(10),
        _ => Duration::from_secs(10),
    };
    let (code, text) = Session::waiting(port, wait).request(method, path, &headers, body);
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, value)
}

/// Asserts a refusal: the status, and a reason that says `because`.
fn assert_refused(reply: (u16, Value), status: u16, because: &str) {
    let (code, body) = reply;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        code == status && message.contains(because),
        "expected {status} saying `{because}`, got {code}: {body}"
    );
}

/// The value of the unlabelled metric `name` at the API on `port`.
fn metric(port: u16, name: &str) -> u64 {
    let (code, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200, "{metrics}");
    let line = metrics.lines().find(|l| l.starts_with(&format!("{name} ")));
    line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn four_validators_embed_through_the_api_slash_the_outlier_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let hash = soma_examples_artifacts::HASH_ENCODER;
    let (net, configs, base, client) = network(
        dir.path(),
        &[
            (hash, "hash-encoder"),
            (hash, "hash-encoder"),
            (soma_examples_artifacts::RANDOM_ENCODER, "random-encoder"),
        ],
    );
    let api = |i: usize| client.apis[i].port();
    let key = client.api_key.as_str();
    let mut validators = start_all(&configs, base);
    wait_for(
        "every API to answer",
        Duration::from_secs(60),
        || (0..4).all(|i| call(api(i), "GET", "/health", None, b"").0 == 200),
        &validators,
    );

    // Refusals, each with its status and reason; none changes anything.
    let embed = |body: &[u8], key: Option<&str>| call(api(0), "POST", "/v1/embeddings", key, body);
    assert_refused(embed(br#"{"input":"a"}"#, None), 401, "API key");
    assert_refused(embed(br#"{"input":"a"}"#, Some("guess")), 401, "API key");
    assert_refused(embed(b"{", Some(key)), 400, "invalid request");
    assert_refused(
        embed(b"{\"input\":\"\xff\xfe\"}", Some(key)),
        400,
        "invalid request",
    );
    assert_refused(embed(br#"{"input":[]}"#, Some(key)), 400, "1 to 64 texts");
    assert_refused(
        embed(br#"{"input":[1,2,3]}"#, Some(key)),
        400,
        "3 token ids",
    );
    assert_refused(
        embed(br#"{"input":{"a":1}}"#, Some(key)),
        400,
        "invalid request",
    );
    assert_refused(
        embed(br#"{"input":"a","model":"gpt"}"#, Some(key)),
        404,
        "no model",
    );
    assert_refused(
        embed(br#"{"input":"a","encoding_format":"hex"}"#, Some(key)),
        400,
        "encoding_format",
    );
    assert_refused(
        embed(br#"{"input":"a","dimensions":3}"#, Some(key)),
        400,
        "384",
    );
    let long = json!({"input": "x".repeat(20_000)}).to_string();
    assert_refused(embed(long.as_bytes(), Some(key)), 400, "at most 16384");
    let huge = json!({"input": "x".repeat(2 << 20)}).to_string();
    assert_refused(embed(huge.as_bytes(), Some(key)), 413, "over");
    assert_refused(
        call(api(0), "POST", "/v1/transactions", None, b"junk"),
        400,
        "not a signed transaction",
    );
    let user = soma_crypto::keyfile::read_secret_key(&net.join(&client.account_key_file)).unwrap();
    let recipient = SecretKey::from_bytes(&[5; 32]).public_key();
    let signed = |key: &SecretKey, chain_id: [u8; 32], nonce: u64, fee: u64| {
        Transaction {
            chain_id,
            sender: key.public_key(),
            nonce,
            fee,
            action: Action::Transfer {
                to: recipient,
                amount: 1,
            },
        }
        .sign(key)
        .to_bytes()
    };
    let transfer = |chain_id: [u8; 32], fee: u64| signed(&user, chain_id, 0, fee);
    let tx = |bytes: &[u8]| call(api(0), "POST", "/v1/transactions", None, bytes);
    assert_refused(tx(&transfer([0; 32], 10)), 422, "signed for chain");
    let health = call(api(0), "GET", "/health", None, b"").1;
    let chain_id: [u8; 32] = hex::decode(health["chain_id"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    assert_refused(tx(&transfer(chain_id, 1)), 422, "below the minimum");
    let mut forged = transfer(chain_id, 10);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_refused(tx(&forged), 422, "signature");
    // Nor in this validator's own key: apply takes its blocks' word for
    // what that key sent.
    let own = soma_crypto::keyfile::read_secret_key(&net.join("validator-0/key")).unwrap();
    let mut forged = signed(&own, chain_id, 0, 10);
    *forged.last_mut().unwrap() ^= 1;
    assert_refused(tx(&forged), 422, "signature");
    assert_refused(tx(&signed(&user, chain_id, 300, 10)), 422, "too far ahead");
    // One balance does not back a window of nonces each claiming a fee
    // only the first could pay.
    let fee = soma_validator::config::LOCALNET_USER_BALANCE / 50;
    assert_refused(tx(&signed(&user, chain_id, 100, fee)), 422, "fees of");
    let pauper = SecretKey::from_bytes(&[6; 32]);
    assert_refused(tx(&signed(&pauper, chain_id, 0, 10)), 422, "balance of 0");
    let upload = |key: Option<&str>| call(api(0), "POST", "/v1/packages", key, b"not a package");
    assert_refused(upload(None), 401, "API key");
    assert_refused(upload(Some(key)), 400, "not a valid signed package");
    assert_refused(
        call(api(0), "GET", "/v1/jobs/zz", None, b""),
        400,
        "hex digest",
    );
    assert_refused(
        call(
            api(0),
            "GET",
            &format!("/v1/jobs/{}", "0".repeat(64)),
            None,
            b"",
        ),
        404,
        "no job",
    );
    assert_refused(
        call(api(0), "GET", "/v1/nothing", None, b""),
        404,
        "no such path",
    );
    assert_refused(
        call(api(0), "DELETE", "/v1/embeddings", None, b""),
        405,
        "POST is",
    );
    let account = |i: usize| {
        call(
            api(i),
            "GET",
            &format!("/v1/accounts/{}", client.account),
            None,
            b"",
        )
        .1
    };
    let balance_before = account(0)["balance"].as_u64().unwrap();
    assert_eq!(account(0)["nonce"], 0, "no refusal used a nonce");

    // Validator 3 is down while the jobs run, and loses its state: it
    // rebuilds it from its consensus store (as after a crash between a
    // commit and its apply) and from its peers.
    let stopped = validators.pop().unwrap();
    let (config3, port3) = (stopped.config.clone(), stopped.port);
    drop(stopped);
    std::fs::remove_dir_all(config3.with_file_name("data").join("state")).unwrap();

    let texts = [
        "A man is playing a guitar on stage.",
        "Interest rates rose again.",
    ];
    let (code, reply) = embed(
        json!({"input": texts, "model": "soma"})
            .to_string()
            .as_bytes(),
        Some(key),
    );
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["object"], "list");
    assert_eq!(reply["usage"]["prompt_tokens"], 12);
    let data = reply["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let embeddings: Vec<Vec<f64>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    let job_id = reply["jobs"][0].as_str().unwrap().to_string();
    let job = |i: usize| call(api(i), "GET", &format!("/v1/jobs/{job_id}"), None, b"").1;
    for e in &embeddings {
        assert_eq!(e.len(), 384, "{}", job(0));
        assert!((norm(e) - 1.0).abs() < 1e-3, "{}", norm(e));
    }
    assert_ne!(embeddings[0], embeddings[1]);

    // The same text again, as base64: another job, the same embedding (the
    // honest encoders are deterministic, and outvote the random one).
    let (code, again) = embed(
        json!({"input": texts[0], "encoding_format": "base64"})
            .to_string()
            .as_bytes(),
        Some(key),
    );
    assert_eq!(code, 200, "{again}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(again["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let floats: Vec<f32> = embeddings[0].iter().map(|&x| x as f32).collect();
    assert_eq!(decoded, floats);

    // What finalisation decided: the random encoder, whose output does
    // not compose, is disqualified and slashed; an honest one is rewarded.
    let decided = job(0);
    assert_eq!(decided["status"], "finalised", "{decided}");
    // The root it was finalised in: the same on every validator (compared
    // below with validator 3's, rebuilt from its consensus store).
    let root = decided["finalisation"]["state_root"].as_str().unwrap();
    assert_eq!(hex::decode(root).unwrap().len(), 32);
    // Each attester's results are shown, one per shard encoder.
    let attestations = decided["attestations"].as_array().unwrap();
    assert_eq!(attestations.len(), 3, "the three validators up");
    for a in attestations {
        assert_eq!(a["results"].as_array().unwrap().len(), 3, "{a}");
    }
    let scores = decided["finalisation"]["encoders"].as_array().unwrap();
    let named = |name: &'static str| scores.iter().filter(move |e| e["name"] == name);
    let random = named("random-encoder").next().unwrap();
    assert_eq!(random["disqualified"], true, "{decided}");
    assert!(random["slashed"].as_u64().unwrap() > 0, "{decided}");
    assert_eq!(named("hash-encoder").count(), 2);
    for e in named("hash-encoder") {
        assert_eq!(
            (e["outcome"].as_str(), e["disqualified"].as_bool()),
            (Some("ok"), Some(false)),
            "{decided}"
        );
    }
    assert_eq!(
        scores
            .iter()
            .map(|e| e["reward"].as_u64().unwrap())
            .filter(|&r| r > 0)
            .count(),
        1,
        "one best encoder is paid: {decided}"
    );
    let random_package = random["package"].as_str().unwrap();
    let encoder = call(
        api(0),
        "GET",
        &format!("/v1/encoders/{random_package}"),
        None,
        b"",
    )
    .1;
    let bond = encoder["bond"].as_u64().unwrap();
    assert!(bond < LOCALNET_BOND, "{bond}");
    // One slash leaves it above the minimum bond, still drawn.
    assert_eq!(encoder["status"], "active", "{encoder}");
    let spent = balance_before - account(0)["balance"].as_u64().unwrap();
    let params = soma_execution::Parameters::default();
    assert_eq!(spent, 3 * (params.min_fee + params.min_job_payment));

    // Back up, validator 3 applies what it missed and agrees. Each job is
    // awaited: the first one's finalisation says nothing of the later
    // submissions, whose payments the balances below include.
    validators.push(Validator::start(&config3, port3));
    let submitted = reply["jobs"].as_array().unwrap().iter();
    for id in submitted.chain(again["jobs"].as_array().unwrap()) {
        await_finalised(
            api(3),
            id.as_str().unwrap(),
            "validator 3 to apply the jobs",
            &validators,
        );
    }
    for i in 1..4 {
        assert_eq!(
            job(i)["finalisation"],
            decided["finalisation"],
            "validator {i}"
        );
        assert_eq!(
            account(i)["balance"],
            account(0)["balance"],
            "validator {i}"
        );
    }

    let value = |name| metric(api(0), name);
    assert_eq!(value("soma_embeddings_served_total"), 3);
    // The three submissions' commits were timed.
    assert!(value("soma_commit_latency_milliseconds_count") >= 3);
    assert!(value("soma_commit_latency_milliseconds_sum") > 0);
    assert!(value("soma_api_refused_total") >= 20);
    assert_eq!(value("soma_embedding_wait_milliseconds_count"), 2);
    // Every job it applied a finalisation of, each finalised at least a
    // commit after the one that made it; and no validator's attestation
    // deviated.
    let finalised = value("soma_finalisations_total");
    assert!(finalised >= 3, "{finalised}");
    assert_eq!(value("soma_finalisation_commits_count"), finalised);
    assert!(value("soma_finalisation_commits_sum") >= finalised);
    assert_eq!(value("soma_deviant_attestations_total"), 0);
    // Each of the three packages loaded once, and never tried again.
    assert_eq!(value("soma_package_load_attempts_total"), 3);
    // Blocks' state-root claims were compared, and matched, on every
    // validator, validator 3 (which rebuilt its state) included.
    for i in 0..4 {
        let value = |name| metric(api(i), name);
        assert!(
            value("soma_state_roots_compared_total") > 10,
            "validator {i}"
        );
        assert_eq!(value("soma_deviant_state_roots_total"), 0, "validator {i}");
    }

    // A transfer through the API; its old nonce is then refused.
    let nonce = account(0)["nonce"].as_u64().unwrap();
    let (code, body) = tx(&signed(&user, chain_id, nonce, 10));
    assert_eq!(code, 202, "{body}");
    let recipient_hex = hex::encode(recipient.to_bytes());
    wait_for(
        "the transfer to apply",
        Duration::from_secs(60),
        || {
            call(
                api(1),
                "GET",
                &format!("/v1/accounts/{recipient_hex}"),
                None,
                b"",
            )
            .1["balance"]
                == 1
        },
        &validators,
    );
    assert_refused(tx(&signed(&user, chain_id, nonce, 10)), 422, "used already");

    // `soma client`: a balance, an encoder registered with its package
    // uploaded, and a submission waited for.
    let addr = client.apis[2].to_string();
    let user_key = net.join(&client.account_key_file);
    // (success, stdout, stderr) of `soma client` with `args`.
    let run = |args: &[&std::ffi::OsStr]| {
        let client = ["client", "--api", &addr, "--api-key", key].map(std::ffi::OsStr::new);
        run_soma(&[&client[..], args].concat())
    };
    let soma = |args: &[&std::ffi::OsStr]| {
        let (ok, out, err) = run(args);
        assert!(ok, "{out}{err}");
        out
    };
    let soma_json = |args: &[&std::ffi::OsStr]| -> Value {
        let out = soma(&[args, &["--json".as_ref()]].concat());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let shown = soma(&["balance".as_ref(), client.account.as_ref()]);
    assert!(
        shown.starts_with(&format!("balance {}", account(2)["balance"])),
        "{shown}"
    );
    // `component` signed by the user as its `info()` describes it, written
    // to `file`; and its registration through `soma client`.
    let user_package = |component: &str, file: &str| {
        let meta = text_encoder(component);
        let package =
            Package::sign(&user, &meta, std::fs::read(component).unwrap(), vec![]).unwrap();
        let path = dir.path().join(file);
        std::fs::write(&path, package.encode()).unwrap();
        (package, path)
    };
    let register = |path: &Path| {
        run(&[
            "register-encoder".as_ref(),
            "--key".as_ref(),
            user_key.as_os_str(),
            "--package".as_ref(),
            path.as_os_str(),
            "--bond".as_ref(),
            "2000000".as_ref(),
        ])
    };
    let (mine, mine_path) = user_package(hash, "mine.somapkg");

    // A package that takes less input than the network's data may hold:
    // refused by the client before anything is uploaded or paid for.
    let (short, short_path) = user_package(soma_examples_artifacts::HOSTILE, "short.somapkg");
    let (ok, out, err) = register(&short_path);
    assert!(!ok, "{out}");
    assert!(
        err.contains("accepts inputs of at most 1024 bytes; the network's data may hold 16384"),
        "{err}"
    );
    let uploaded = format!("/v1/packages/{}", short.digest());
    assert_eq!(call(api(2), "GET", &uploaded, None, b"").0, 404);

    let (ok, shown, err) = register(&mine_path);
    assert!(ok, "{shown}{err}");
    assert!(shown.contains("uploaded"), "{shown}");
    let registered = format!("/v1/encoders/{}", mine.digest());
    wait_for(
        "the encoder's registration to apply",
        Duration::from_secs(60),
        || call(api(2), "GET", &registered, None, b"").0 == 200,
        &validators,
    );
    assert_eq!(
        call(api(2), "GET", &registered, None, b"").1["bond"],
        2_000_000
    );
    // Its owner adds to its bond.
    let digest = mine.digest().to_string();
    let bond_as = |key: &Path, package: &str| {
        run(&[
            "bond".as_ref(),
            "--key".as_ref(),
            key.as_os_str(),
            "--package".as_ref(),
            package.as_ref(),
            "--amount".as_ref(),
            "500000".as_ref(),
        ])
    };
    let bond = |package: &str| bond_as(&user_key, package);
    // Refused before anything is paid: not a digest, no such encoder, a
    // key that does not own it.
    let (ok, out, err) = bond("not-a-digest");
    assert!(!ok && err.contains("is not a package digest"), "{out}{err}");
    let (ok, out, err) = bond(&"1".repeat(64));
    assert!(
        !ok && err.contains("no encoder is registered"),
        "{out}{err}"
    );
    let stranger = dir.path().join("stranger.key");
    soma(&["keygen".as_ref(), "--out".as_ref(), stranger.as_os_str()]);
    let (ok, out, err) = bond_as(&stranger, &digest);
    assert!(!ok && err.contains("does not own encoder"), "{out}{err}");
    let (ok, out, err) = bond(&digest);
    assert!(ok && out.contains("bond submitted"), "{out}{err}");
    wait_for(
        "the bond to apply",
        Duration::from_secs(60),
        || call(api(2), "GET", &registered, None, b"").1["bond"] == 2_500_000,
        &validators,
    );
    // Uploaded to validator 2 only, the package reaches the others: each
    // fetches it from a peer once the registration applies, and verifies it.
    let download = format!("/v1/packages/{}", mine.digest());
    wait_for(
        "every validator to fetch the package",
        Duration::from_secs(60),
        || (0..4).all(|i| http(api(i), "GET", &download, &[], b"").0 == 200),
        &validators,
    );
    let fetched =
        soma_validator::client::ApiClient::new(client.apis[0], None, Duration::from_secs(30))
            .get_bytes(&download)
            .unwrap();
    assert_eq!(fetched, (200, mine.encode()));
    assert_refused(
        call(
            api(0),
            "GET",
            &format!("/v1/packages/{}", "1".repeat(64)),
            None,
            b"",
        ),
        404,
        "no registered encoder's package",
    );
    let shown = soma(&[
        "submit".as_ref(),
        "--key".as_ref(),
        user_key.as_os_str(),
        "a cat on a mat".as_ref(),
    ]);
    assert!(
        shown.contains("(finalised)") && shown.contains("384 dimensions"),
        "{shown}"
    );
    // What scripts read (`--json`): a new key, a transfer to it, a
    // validator's stake, a job; and mistakes as clear errors.
    let new_key = dir.path().join("new.key");
    let made = soma_json(&["keygen".as_ref(), "--out".as_ref(), new_key.as_os_str()]);
    let new_account = made["key"].as_str().unwrap().to_string();
    let sent = soma_json(&[
        "transfer".as_ref(),
        "--key".as_ref(),
        user_key.as_os_str(),
        "--to".as_ref(),
        new_account.as_ref(),
        "--amount".as_ref(),
        "1234".as_ref(),
    ]);
    assert_eq!(sent["transaction"].as_str().unwrap().len(), 64, "{sent}");
    let balance_of = |who: &std::ffi::OsStr| soma_json(&["balance".as_ref(), who]);
    wait_for(
        "the transfer to the new key to apply",
        Duration::from_secs(60),
        || balance_of(new_key.as_os_str())["balance"] == 1234,
        &validators,
    );
    let validator_key = {
        let config = soma_validator::config::NodeFile::read(&configs[0]).unwrap();
        configs[0].parent().unwrap().join(config.key_file)
    };
    let staked = || balance_of(validator_key.as_os_str())["validator"]["stake"].as_u64();
    let before = staked().expect("validator 0 has a stake");
    soma_json(&[
        "stake".as_ref(),
        "--key".as_ref(),
        validator_key.as_os_str(),
        "--amount".as_ref(),
        "5".as_ref(),
    ]);
    wait_for(
        "validator 0's stake to grow",
        Duration::from_secs(60),
        || staked() == Some(before + 5),
        &validators,
    );
    let shown = soma_json(&["job".as_ref(), job_id.as_ref()]);
    assert_eq!(
        (shown["id"].as_str(), shown["status"].as_str()),
        (Some(job_id.as_str()), Some("finalised")),
        "{shown}"
    );
    let summary = soma(&["job".as_ref(), job_id.as_ref()]);
    assert!(summary.contains("(finalised)"), "{summary}");
    for (args, because) in [
        (vec!["job", "zz"], "64-digit hex digest"),
        (
            vec!["keygen", "--out", new_key.to_str().unwrap()],
            "already exists",
        ),
        (
            vec!["balance", "nobody"],
            "neither a hex public key nor a key file",
        ),
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let (ok, _, err) = run(&args);
        assert!(!ok && err.contains(because), "{args:?}: {err}");
    }

    let (_, models) = call(api(0), "GET", "/v1/models", None, b"");
    assert_eq!(models["data"][0]["id"], "soma");

    // The `openai` package's client, as an OpenAI user would call it:
    // floats and base64, one text and a batch, and a wrong key refused.
    let from_client = openai_client(
        &format!("http://{}/v1", client.apis[1]),
        key,
        texts,
        &validators,
    );
    let close = |got: &[f64], want: &[f64]| {
        got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5)
    };
    let floats_of = |reply: &Value| -> Vec<Vec<f64>> {
        reply["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    for (call, n, tokens, base64) in [
        ("float_single", 1, 8, false),
        ("float_batch", 2, 12, false),
        ("base64_single", 1, 8, true),
        ("default_batch", 2, 12, true),
    ] {
        let reply = &from_client[call];
        assert_eq!(reply["model"], "soma", "{call}: {reply}");
        assert_eq!(reply["object"], "list", "{call}");
        assert_eq!(reply["data_objects"], json!(vec!["embedding"; n]), "{call}");
        assert_eq!(reply["sent_base64"], json!(vec![base64; n]), "{call}");
        assert_eq!(reply["prompt_tokens"], tokens, "{call}: {reply}");
        assert_eq!(reply["total_tokens"], tokens, "{call}: {reply}");
        assert_eq!(
            reply["indices"],
            json!((0..n).collect::<Vec<_>>()),
            "{call}"
        );
        if call != "base64_single" {
            let got = floats_of(reply);
            for (i, e) in got.iter().enumerate() {
                assert!(close(e, &embeddings[i]), "{call}: input {i} differs");
            }
        }
    }
    let base64 = from_client["base64_single"]["embeddings"][0]
        .as_str()
        .expect("asked for base64, the client returns the server's string");
    let decoded: Vec<f64> = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .unwrap()
        .chunks(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
        .collect();
    assert!(close(&decoded, &embeddings[0]), "base64_single differs");
    let refused = &from_client["refused"];
    assert_eq!(refused["status"], 401, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("API key"),
        "{refused}"
    );

    // One API key has at most MAX_REQUESTS_PER_KEY embedding requests
    // waiting for their jobs: one more meanwhile is told when to come
    // back, and the others are served (their transactions, submitted at
    // once, applied in nonce order).
    let auth = format!("Bearer {key}");
    // Eight texts each, so that a request waits for several jobs.
    let request = |i: usize| {
        let texts: Vec<String> = (0..8).map(|t| format!("request {i}, text {t}")).collect();
        let body = json!({ "input": texts }).to_string();
        let headers = [
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ];
        Session::waiting(api(0), Duration::from_secs(130)).exchange(
            "POST",
            "/v1/embeddings",
            &headers,
            body.as_bytes(),
        )
    };
    let (served, (status, head, body)) = std::thread::scope(|s| {
        let waiting: Vec<_> = (0..MAX_REQUESTS_PER_KEY)
            .map(|i| s.spawn(move || request(i)))
            .collect();
        let in_flight = || metric(api(0), "soma_embedding_requests_in_flight");
        wait_for(
            "every request to be in flight",
            Duration::from_secs(30),
            || in_flight() == MAX_REQUESTS_PER_KEY as u64,
            &validators,
        );
        let extra = request(MAX_REQUESTS_PER_KEY);
        let served: Vec<_> = waiting.into_iter().map(|r| r.join().unwrap()).collect();
        (served, extra)
    });
    assert_eq!(status, 429, "{head}{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{head}"
    );
    assert!(body.contains("embedding requests in flight"), "{body}");
    for (status, _, body) in &served {
        assert_eq!(*status, 200, "{body}\n{}", logs(&validators));
    }
    assert_eq!(metric(api(0), "soma_embedding_requests_in_flight"), 0);
}

/// Runs `openai_client.py` with the `openai` package set-up installed
/// against the API at `base_url`; what the client returned, as JSON.
fn openai_client(base_url: &str, key: &str, texts: [&str; 2], validators: &[Validator]) -> Value {
    let python = std::env::var_os("SOMA_OPENAI_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `openai` Python package is not installed (SOMA_OPENAI_PYTHON): \
                 run `cargo xtask setup`, which installs it from the Python package index"
            )
        });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/all/openai_client.py");
    let mut command = std::process::Command::new(python);
    // The node is on loopback: no proxy of the machine's may stand between.
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        command.env_remove(proxy).env_remove(proxy.to_lowercase());
    }
    let output = command
        .arg(script)
        .args([base_url, key])
        .args(texts)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the openai client failed ({}):\n{}\nlogs:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        logs(validators)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Reads what the server sends on `stream` until it closes it (or
/// `within` passes); the bytes read and how long it took.
fn until_closed(stream: &mut std::net::TcpStream, within: Duration) -> (String, Duration) {
    use std::io::Read;
    let started = std::time::Instant::now();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    (
        String::from_utf8_lossy(&seen).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn the_api_holds_up_against_slow_many_and_malformed_clients() {
    use soma_validator::api::{BODY_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS};
    use std::io::Write;
    use std::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = genesis_with(dir.path(), 1, &[]);
    let client: ClientFile =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("client.json")).unwrap())
            .unwrap();
    let port = client.apis[0].port();
    // A second API key, for an account that holds nothing.
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&configs[0]).unwrap()).unwrap();
    config["api_keys"]["pauper-key"] = json!("pauper.key");
    std::fs::write(&configs[0], config.to_string()).unwrap();
    let pauper = SecretKey::generate().unwrap();
    soma_crypto::keyfile::write_secret_key(&configs[0].with_file_name("pauper.key"), &pauper)
        .unwrap();
    let validators = start_all(&configs, base);
    // The API listens once the node has caught up.
    let healthy = || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && call(port, "GET", "/health", None, b"").0 == 200
    };
    wait_for("the API", Duration::from_secs(60), healthy, &validators);
    let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();

    std::thread::scope(|s| {
        // Headers never finished: closed at the header deadline.
        let headers = s.spawn(|| {
            let mut slow = connect();
            slow.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
            until_closed(&mut slow, HEADER_TIMEOUT * 3)
        });
        // A body never finished: 408 at the body deadline.
        let body = s.spawn(|| {
            let mut slow = connect();
            let head = format!(
                "POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
                 content-length: 100\r\n\r\n{{\"input\"",
                client.api_key
            );
            slow.write_all(head.as_bytes()).unwrap();
            until_closed(&mut slow, BODY_TIMEOUT * 3)
        });
        let (_, waited) = headers.join().unwrap();
        assert!(
            waited >= HEADER_TIMEOUT - Duration::from_secs(1) && waited < HEADER_TIMEOUT * 2,
            "{waited:?}"
        );
        let (answer, waited) = body.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("not received within"), "{answer}");
        assert!(
            waited >= BODY_TIMEOUT - Duration::from_secs(1),
            "{waited:?}"
        );
    });

    // Spending more than the key's account holds: refused before any job.
    assert_refused(
        call(
            port,
            "POST",
            "/v1/embeddings",
            Some("pauper-key"),
            br#"{"input":["a","b"]}"#,
        ),
        422,
        "the account holds 0",
    );

    // JSON nested past the parser's depth limit: refused, not a crash.
    let deep = format!(
        "{{\"input\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let key = Some(client.api_key.as_str());
    assert_refused(
        call(port, "POST", "/v1/embeddings", key, deep.as_bytes()),
        400,
        "invalid request",
    );

    // One key's requests past its burst are refused until its rate lets
    // more through; another key's are not.
    let malformed = |key: &str| call(port, "POST", "/v1/embeddings", Some(key), b"{");
    let mut answered = 0;
    let throttled = loop {
        let (code, body) = malformed("pauper-key");
        match code {
            400 => answered += 1,
            _ => break (code, body),
        }
        assert!(answered < 2 * KEY_BURST, "never throttled");
    };
    // One of its burst went on the request above.
    assert!(answered >= KEY_BURST - 1, "throttled after {answered}");
    assert_refused(throttled, 429, "per second");
    assert_refused(malformed(&client.api_key), 400, "invalid request");

    // At the connection cap, another connection is closed at once; the
    // API answers again once the idle ones reach their header deadline.
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = connect();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    let (answer, waited) = until_closed(&mut extra, Duration::from_secs(5));
    assert!(answer.is_empty(), "{answer}");
    assert!(
        waited < Duration::from_secs(1),
        "closed only after {waited:?}"
    );
    wait_for(
        "the API after the idle connections closed",
        HEADER_TIMEOUT * 3,
        healthy,
        &validators,
    );
    drop(held);
    assert!(metric(port, "soma_api_throttled_total") >= 1);
    assert!(healthy());
}

/// A validator killed (SIGKILL) during a stream of `/v1/embeddings`
/// requests and kept down for a minute: the other three keep finalising
/// jobs; restarted, it catches up and reports the same jobs, balances and
/// nonces; every submission was applied exactly once on every validator.
#[test]
fn a_validator_killed_during_a_stream_of_submissions_catches_up_and_nothing_runs_twice() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let (_, client, mut validators) = hash_network(dir.path());
    let api = |i: usize| client.apis[i].port();
    let key = client.api_key.as_str();

    // Three clients, each sending one sentence after another to validator
    // 0 and recording the job each request made.
    let jobs: Mutex<Vec<String>> = Mutex::default();
    let failures: Mutex<Vec<Value>> = Mutex::default();
    let stop = AtomicBool::new(false);
    let done = || jobs.lock().unwrap().len();
    /// Tells the clients to stop when dropped, also by a panic, so the
    /// scope that waits for them ends.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let (killed_at, restarted_at) = std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        for client in 0..3 {
            let (jobs, failures, stop) = (&jobs, &failures, &stop);
            scope.spawn(move || {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let text = format!("client {client} sends sentence number {n}");
                    let body = json!({"input": text}).to_string();
                    match call(api(0), "POST", "/v1/embeddings", Some(key), body.as_bytes()) {
                        (200, reply) => jobs
                            .lock()
                            .unwrap()
                            .push(reply["jobs"][0].as_str().unwrap().to_string()),
                        // Jobs that finalise fast enough bring the key to its
                        // rate limit: a client waits and goes on.
                        (429, _) => std::thread::sleep(Duration::from_secs(1)),
                        (code, reply) => failures.lock().unwrap().push(json!([code, reply])),
                    }
                }
            });
        }
        wait_for(
            "6 jobs",
            Duration::from_secs(120),
            || done() >= 6,
            &validators,
        );
        let killed = validators.pop().unwrap();
        let restart = (killed.config.clone(), killed.port);
        drop(killed);
        let killed_at = done();
        std::thread::sleep(Duration::from_secs(60));
        let restarted_at = done();
        validators.push(Validator::start(&restart.0, restart.1));
        std::thread::sleep(Duration::from_secs(10));
        (killed_at, restarted_at)
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    let jobs = jobs.into_inner().unwrap();
    eprintln!(
        "{} jobs: {killed_at} before validator 3 was killed, {} in the minute it was down",
        jobs.len(),
        restarted_at - killed_at
    );
    assert!(
        restarted_at - killed_at >= 10,
        "the three others finalised only {} jobs in a minute",
        restarted_at - killed_at
    );

    // Validator 3 catches up: every job is decided there as it is at
    // validator 0.
    let job = |i: usize, id: &str| call(api(i), "GET", &format!("/v1/jobs/{id}"), None, b"").1;
    let account = |i: usize| {
        let path = format!("/v1/accounts/{}", client.account);
        call(api(i), "GET", &path, None, b"").1
    };
    let submitted = jobs.len() as u64;
    wait_for(
        "validator 3 to apply every submission",
        Duration::from_secs(180),
        || {
            std::net::TcpStream::connect(("127.0.0.1", api(3))).is_ok()
                && account(3)["nonce"] == submitted
                && jobs.iter().all(|id| job(3, id)["status"] == "finalised")
        },
        &validators,
    );
    // It was away too long to fetch single blocks: it replayed rounds.
    let status3 = status(validators[3].port).unwrap();
    assert!(
        status3["catch_up_requests"].as_u64().unwrap() > 0,
        "{status3}"
    );
    let params = soma_execution::Parameters::default();
    let mut distinct = jobs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        jobs.len(),
        "two requests were given one job"
    );
    for i in 0..4 {
        // Each submission took one nonce and paid once: none was lost, none
        // applied twice.
        let account = account(i);
        assert_eq!(account["nonce"], submitted, "validator {i}: {account}");
        assert_eq!(
            account["balance"].as_u64().unwrap(),
            soma_validator::config::LOCALNET_USER_BALANCE
                - submitted * (params.min_fee + params.min_job_payment),
            "validator {i}"
        );
    }
    for id in &jobs {
        let decided = job(0, id);
        for i in 1..4 {
            assert_eq!(
                job(i, id)["finalisation"],
                decided["finalisation"],
                "job {id} at validator {i}"
            );
        }
    }
    for i in 0..4 {
        assert_eq!(
            metric(api(i), "soma_deviant_state_roots_total"),
            0,
            "validator {i}"
        );
    }
}

/// Embeds `text` through the API at `port` with `key`, waiting for its
/// job; the job's id.
fn submit_one(port: u16, key: &str, text: &str) -> String {
    let body = json!({ "input": text }).to_string();
    let (code, reply) = call(port, "POST", "/v1/embeddings", Some(key), body.as_bytes());
    assert_eq!(code, 200, "{reply}");
    reply["jobs"][0].as_str().unwrap().to_string()
}

/// Waits (up to two minutes) until the API at `port`, of a validator
/// that may still be starting, reports job `id` finalised.
fn await_finalised(port: u16, id: &str, what: &str, validators: &[Validator]) {
    let path = format!("/v1/jobs/{id}");
    wait_for(
        what,
        Duration::from_secs(120),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && call(port, "GET", &path, None, b"").1["status"] == "finalised"
        },
        validators,
    );
}

/// Runs `soma <command> --config <config>`.
fn soma(command: &str, config: &Path) -> (bool, String, String) {
    run_soma(&[command.as_ref(), "--config".as_ref(), config.as_os_str()])
}

/// A validator down for longer than its peers keep blocks cannot replay
/// the rounds it missed. Configured not to restore itself, it stops and
/// names `soma restore-state`; by default it restores its state from a
/// copy a quorum vouches for, seeds its consensus at the copy's last
/// commit, starts again, rejoins and agrees.
#[test]
fn a_validator_down_beyond_its_peers_retention_is_restored_and_rejoins() {
    // Peers keep blocks for 1500 rounds past the protocol's own window
    // (2 × gc_depth, 200 rounds): long enough for a restore to finish
    // within it, short enough to outlast.
    const RETENTION: u64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let hash = (soma_examples_artifacts::HASH_ENCODER, "hash-encoder");
    let (_, configs, base, client) = network(dir.path(), &[hash, hash, hash]);
    for config in &configs {
        let mut file: Value =
            serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
        file["retention_rounds"] = json!(RETENTION);
        std::fs::write(config, file.to_string()).unwrap();
    }
    let mut validators = start_all(&configs, base);
    let api = |i: usize| client.apis[i].port();
    wait_for(
        "every API to answer",
        Duration::from_secs(60),
        || (0..4).all(|i| call(api(i), "GET", "/health", None, b"").0 == 200),
        &validators,
    );
    let key = client.api_key.as_str();
    let embed = |text: &str| submit_one(api(0), key, text);
    embed("before the outage");
    let round =
        |port: u16| status(port).map_or(0, |s| s["last_committed_round"].as_u64().unwrap_or(0));
    let stopped = validators.pop().unwrap();
    let port = stopped.port;
    let left_at = round(port);
    drop(stopped);
    wait_for(
        "the others to leave validator 3's rounds behind their retention",
        Duration::from_secs(300),
        || round(base) > left_at + RETENTION + 400,
        &validators,
    );

    // Told not to restore itself, it stops and says what to run.
    let set_restore = |automatically: bool| {
        let mut file: Value =
            serde_json::from_str(&std::fs::read_to_string(&configs[3]).unwrap()).unwrap();
        file["restore_automatically"] = json!(automatically);
        std::fs::write(&configs[3], file.to_string()).unwrap();
    };
    set_restore(false);
    let mut back = Validator::start(&configs[3], port);
    wait_for(
        "validator 3 to stop",
        Duration::from_secs(120),
        || back.exited().is_some(),
        &validators,
    );
    assert!(!back.exited().unwrap().success());
    let log = std::fs::read_to_string(configs[3].with_file_name("stderr.log")).unwrap();
    assert!(
        log.contains("too far behind to catch up") && log.contains("soma restore-state"),
        "{log}"
    );
    drop(back);
    // Without its consensus store it would not know what it signed: it
    // refuses to start.
    let consensus = configs[3].with_file_name("data").join("consensus");
    let kept = consensus.with_extension("kept");
    std::fs::rename(&consensus, &kept).unwrap();
    let mut bare = Validator::start(&configs[3], port);
    wait_for(
        "validator 3 to refuse to start",
        Duration::from_secs(60),
        || bare.exited().is_some(),
        &validators,
    );
    let log = std::fs::read_to_string(configs[3].with_file_name("stderr.log")).unwrap();
    assert!(
        log.contains("may have signed blocks it no longer knows of"),
        "{log}"
    );
    drop(bare);
    std::fs::rename(&kept, &consensus).unwrap();

    // As configured by default, it restores its state and consensus store
    // from its peers by itself, and goes on.
    set_restore(true);
    validators.push(Validator::start(&configs[3], port));
    let log = || std::fs::read_to_string(configs[3].with_file_name("stderr.log")).unwrap();
    wait_for(
        "validator 3 to restore itself and serve",
        Duration::from_secs(120),
        || {
            log().contains("restored the state after")
                && std::net::TcpStream::connect(("127.0.0.1", api(3))).is_ok()
                && call(api(3), "GET", "/health", None, b"").0 == 200
        },
        &validators,
    );
    // Submitted after the restore, so that validator 3 applies it itself.
    let after = embed("after the restore");
    let job = |i: usize| call(api(i), "GET", &format!("/v1/jobs/{after}"), None, b"").1;
    let what = "validator 3 to apply the job after the restore";
    await_finalised(api(3), &after, what, &validators);
    let log = log();
    assert!(
        log.contains("restoring it from its peers and starting again")
            && log.contains("its consensus store did not reach that commit"),
        "{log}"
    );
    assert_eq!(job(3)["finalisation"], job(0)["finalisation"]);
    let account = |i: usize| {
        let path = format!("/v1/accounts/{}", client.account);
        call(api(i), "GET", &path, None, b"").1
    };
    assert_eq!(account(3), account(0));
    assert_eq!(metric(api(3), "soma_deviant_state_roots_total"), 0);
    assert!(metric(api(3), "soma_state_roots_compared_total") > 0);
    // Its commit log resumes at the checkpoint, and agrees with the others'.
    let theirs: std::collections::BTreeMap<String, String> = commits(base)
        .into_iter()
        .map(|line| (line.split(' ').next().unwrap().to_string(), line))
        .collect();
    let mine = commits(port);
    let shared: Vec<&String> = mine
        .iter()
        .filter(|line| theirs.contains_key(line.split(' ').next().unwrap()))
        .collect();
    assert!(shared.len() >= 10, "{} commits in common", shared.len());
    for line in shared {
        assert_eq!(&theirs[line.split(' ').next().unwrap()], line);
    }
}

/// A validator whose state diverged (an account's balance altered on disk)
/// restores it with `soma restore-state` from its peers' copy, trusted for
/// a root that validators of a quorum of stake sign; started again, it
/// applies what came after from its consensus store and agrees with the
/// others. While it runs, or with too few peers to vouch, nothing is
/// changed. Peers serve the copy a page at a time, and refuse pages asked
/// for wrongly with a reason.
#[test]
fn a_diverged_state_is_restored_from_a_copy_a_quorum_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, client, mut validators) = hash_network(dir.path());
    let api = |i: usize| client.apis[i].port();
    let key = client.api_key.as_str();
    let embed = |text: &str| submit_one(api(0), key, text);
    let first = embed("the first sentence");
    let config = configs[3].clone();
    let data = config.with_file_name("data");
    let restore = || soma("restore-state", &config);

    // A peer serves its state a page at a time from a pin at one commit:
    // the first page names the commit, later ones are asked for by it and
    // by the place of the last entry read (a keyspace, then a key).
    let peer =
        soma_validator::client::ApiClient::new(client.apis[0], None, Duration::from_secs(30));
    let (status, page) = peer.get_bytes("/v1/snapshot").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&page));
    // After the magic, chain id, root and previous root: the last commit.
    let commits = u64::from_le_bytes(page[104..112].try_into().unwrap()) + 1;
    let snapshot = |query: &str| format!("/v1/snapshot?{query}");
    let (status, meta) = peer
        .get_bytes(&snapshot(&format!("commits={commits}&after=07")))
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&meta));
    assert!(meta.windows(7).any(|w| w == b"genesis") && meta.len() < page.len());
    let refused = |query: &str| call(api(0), "GET", &snapshot(query), None, b"");
    assert_refused(refused("after=07"), 400, "without the commits");
    assert_refused(
        refused(&format!("commits={commits}&after=zz")),
        400,
        "not hex",
    );
    assert_refused(
        refused(&format!("commits={commits}&after=09")),
        400,
        "not a keyspace",
    );
    assert_refused(refused("commits=1&after=00"), 410, "no longer kept");
    let (ok, _, stderr) = restore();
    assert!(
        !ok && stderr.contains("stop the validator first"),
        "{stderr}"
    );

    let stopped = validators.pop().unwrap();
    let port = stopped.port;
    drop(stopped);
    let user = hex::decode(&client.account).unwrap();
    tamper(&data.join("state"), "accounts", &user, |account| {
        account[0] ^= 1
    });
    // The damage shows against the state's own root.
    let verify = || {
        let (ok, _, stderr) = soma("verify-state", &config);
        (ok, stderr)
    };
    let (ok, stderr) = verify();
    assert!(!ok && stderr.contains("entries hash to"), "{stderr}");
    let (ok, stdout, stderr) = restore();
    assert!(ok, "{stderr}");
    let (ok, stderr) = verify();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("restored the state after") && stdout.contains("30000000 of 40000000"),
        "{stdout}"
    );
    let kept: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("state.replaced-"))
        .collect();
    assert_eq!(kept.len(), 1, "the old state is kept aside");

    // Back up, it goes on from the copy and agrees.
    validators.push(Validator::start(&config, port));
    let second = embed("the second sentence");
    let job = |i: usize, id: &str| call(api(i), "GET", &format!("/v1/jobs/{id}"), None, b"").1;
    await_finalised(
        api(3),
        &second,
        "validator 3 to apply the second job",
        &validators,
    );
    await_finalised(api(0), &first, "the first job", &validators);
    assert_eq!(
        job(3, &second)["finalisation"],
        job(0, &second)["finalisation"]
    );
    // Roots are a record of the commits a node applied itself, and of the
    // copy's last (the root a quorum vouched for): if the first job was
    // decided in an earlier commit of the copy, the restored state holds it
    // whole but not the root of that commit; if in its last, or after it
    // (the copy can predate it on a loaded machine), the restored node
    // holds the same root as the others.
    let copied: u64 = stdout
        .split("restored the state after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no commit count in {stdout}"));
    let (mut restored, mut original) = (job(3, &first), job(0, &first));
    let decided_in = original["finalisation"]["commit"].as_u64().unwrap();
    let expected_root = if decided_in + 1 < copied {
        Value::Null
    } else {
        original["finalisation"]["state_root"].clone()
    };
    assert_eq!(restored["finalisation"]["state_root"], expected_root);
    restored["finalisation"]["state_root"] = Value::Null;
    original["finalisation"]["state_root"] = Value::Null;
    assert_eq!(restored, original);
    let account = |i: usize| {
        let path = format!("/v1/accounts/{}", client.account);
        call(api(i), "GET", &path, None, b"").1
    };
    assert_eq!(account(3), account(0));
    assert_eq!(metric(api(3), "soma_deviant_state_roots_total"), 0);
    assert!(metric(api(3), "soma_state_roots_compared_total") > 0);

    // With validators 1 and 2 down, validator 0 alone cannot vouch for a
    // copy: refused, and the state is left as it is.
    let restored = validators.pop().unwrap();
    drop(restored);
    validators.truncate(1);
    let (ok, _, stderr) = restore();
    assert!(
        !ok && stderr.contains("validators of only 10000000 of 40000000 stake vouch"),
        "{stderr}"
    );
    let kept_now = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("state.replaced-")
        })
        .count();
    assert_eq!(kept_now, 1, "nothing was moved");
}

/// A transaction the API accepted (202) is not lost with the process:
/// validator 3, alone and so unable to propose it, is killed (SIGKILL)
/// while it waits in its pool; started again with the others, it submits
/// it again from its journal, and it is committed once. While it waits, a
/// replacement that does not pay an eighth more is refused.
#[test]
fn a_transaction_accepted_by_a_validator_killed_before_proposing_it_is_committed_once() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = genesis(dir.path());
    let validators = start_all(&configs, base);
    let api = |i: u16| base + 4 + i;
    wait_for(
        "10 commits everywhere",
        Duration::from_secs(60),
        || (0..4).all(|i| status(base + i).is_some_and(|s| s["commits"].as_u64() >= Some(10))),
        &validators,
    );
    let mut validators = validators;
    let lone = validators.pop().unwrap();
    drop(validators);
    // Its last block is out by now; it has no quorum for another.
    std::thread::sleep(Duration::from_secs(3));
    let mut transfers = Transfers::new(dir.path());
    let accepted = transfers.next();
    let post = |bytes: &[u8]| {
        let (code, body) = http(api(3), "POST", "/v1/transactions", &[], bytes);
        (
            code,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    };
    // Sent again, the same bytes are accepted again; another transaction
    // at its nonce must pay an eighth more to take its place.
    for _ in 0..2 {
        let (code, body) = post(&accepted);
        assert_eq!(code, 202, "{body}");
    }
    let min_fee = soma_execution::Parameters::default().min_fee;
    assert_refused(post(&transfers.at(0, min_fee + 1)), 422, "an eighth more");
    assert_eq!(metric(api(3), "soma_journaled_transactions"), 1);
    drop(lone);

    let validators = start_all(&configs, base);
    let account = |i: u16, key: &soma_crypto::PublicKey| {
        let path = format!("/v1/accounts/{}", hex::encode(key.to_bytes()));
        call(api(i), "GET", &path, None, b"").1
    };
    let recipient = Transfers::recipient();
    wait_for(
        "the accepted transfer to be committed",
        Duration::from_secs(90),
        || account(0, &recipient)["balance"] == json!(1),
        &validators,
    );
    let sender = soma_crypto::keyfile::read_secret_key(&dir.path().join("accounts/user.key"))
        .unwrap()
        .public_key();
    assert_eq!(account(0, &sender)["nonce"], json!(1));
    wait_for(
        "validator 3 to forget it",
        Duration::from_secs(30),
        || metric(api(3), "soma_journaled_transactions") == 0,
        &validators,
    );
    let log = std::fs::read_to_string(configs[3].with_file_name("stderr.log")).unwrap();
    assert!(log.contains("submitted again"), "{log}");
    // Committed once: the balance stays.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(account(0, &recipient)["balance"], json!(1));
}
