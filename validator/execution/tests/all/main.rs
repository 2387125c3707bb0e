//! Integration tests of the state machine: real fjall state in temporary
//! directories, real signed transactions.

mod adversaries;
mod apply;
mod conservation;
mod genesis;
mod jobs;
mod processes;
mod restart;
mod routing;
mod runner;
mod snapshot;

use soma_crypto::{PublicKey, SecretKey};
use soma_execution::{
    Action, Commit, CommitEffects, Executor, Finalisation, Genesis, GenesisAccount, GenesisEncoder,
    GenesisValidator, JobRunner, JobStatus, Parameters, Transaction,
};
use soma_host::package::{BlobStore, EncoderMeta, Package, VerifiedPackage};
use soma_host::{Digest, EncoderInfo, Engine, Modality};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

/// The key of test account `i`.
pub fn key(i: u8) -> SecretKey {
    SecretKey::from_bytes(&[i + 1; 32])
}

pub fn public(i: u8) -> PublicKey {
    key(i).public_key()
}

/// Accounts 0..4 with 1 000 000 000 each; accounts 0 and 1 validators
/// with 5 000 000 staked.
pub fn genesis() -> Genesis {
    Genesis::new(
        "soma-test".into(),
        (0..4)
            .map(|i| GenesisAccount {
                key: public(i),
                balance: 1_000_000_000,
            })
            .collect(),
        (0..2)
            .map(|i| GenesisValidator {
                key: public(i),
                stake: 5_000_000,
            })
            .collect(),
        vec![],
        Parameters::default(),
    )
    .unwrap()
}

/// A transaction of account `from` with `nonce`, signed.
pub fn signed(genesis: &Genesis, from: u8, nonce: u64, fee: u64, action: Action) -> Vec<u8> {
    use soma_codec::Encode;
    Transaction {
        chain_id: genesis.chain_id(),
        sender: public(from),
        nonce,
        fee,
        action,
    }
    .sign(&key(from))
    .to_bytes()
}

/// Applies `transactions` as the executor's next commit.
pub fn apply(executor: &mut Executor, transactions: &[Vec<u8>]) -> CommitEffects {
    let index = executor.next_index();
    executor
        .apply(Commit {
            index,
            digest: *blake3::hash(&index.to_le_bytes()).as_bytes(),
            transactions,
            proposers: None,
        })
        .unwrap()
}

/// `g` under another name or with other parameters.
pub fn variant(g: &Genesis, name: &str, parameters: Parameters) -> Genesis {
    Genesis::new(
        name.into(),
        g.accounts().to_vec(),
        g.validators().to_vec(),
        g.encoders().to_vec(),
        parameters,
    )
    .unwrap()
}

/// Account `owner` registering its package `name` (signed by it, a text
/// encoder of the network's dimension) with `bond`; and the package's
/// digest.
pub fn registration(g: &Genesis, owner: u8, name: &str, bond: u64) -> (Action, Digest) {
    registration_of(g, owner, name, bond, Modality::Text)
}

/// [`registration`] of an encoder of `modality`.
pub fn registration_of(
    g: &Genesis,
    owner: u8,
    name: &str,
    bond: u64,
    modality: Modality,
) -> (Action, Digest) {
    let meta = EncoderMeta {
        modality,
        ..registered_meta(g, name)
    };
    registration_signed(owner, &meta, bond)
}

/// What [`registration`] signs for `name` (a package whose component is
/// never run: apply reads only the manifest), fit for the network `g`.
pub fn registered_meta(g: &Genesis, name: &str) -> EncoderMeta {
    EncoderMeta {
        name: name.into(),
        version: "1.0.0".into(),
        dimension: u32::from(g.parameters().dimension),
        fuel_limit: 1_000_000,
        modality: Modality::Text,
        max_input_bytes: g.parameters().max_data_bytes,
    }
}

/// The registration by account `owner` of a package declaring `meta`,
/// with `bond`; and the package's digest.
pub fn registration_signed(owner: u8, meta: &EncoderMeta, bond: u64) -> (Action, Digest) {
    let name = &meta.name;
    let package = Package::sign(&key(owner), meta, name.as_bytes().to_vec(), vec![]).unwrap();
    let (manifest, signature) = package.signed_manifest();
    let action = Action::RegisterEncoder {
        manifest: manifest.to_vec(),
        signature: *signature,
        bond,
    };
    (action, package.digest())
}

pub fn open(dir: &Path, genesis: &Genesis) -> Executor {
    Executor::open(dir, genesis, None).unwrap()
}

/// What the component at `path` says of itself (`info()`): loaded once
/// per path in this process.
fn info_of(path: &str) -> EncoderInfo {
    static KNOWN: Mutex<BTreeMap<String, EncoderInfo>> = Mutex::new(BTreeMap::new());
    // A test that failed elsewhere while holding the lock left the map whole.
    let known = || KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(info) = known().get(path) {
        return info.clone();
    }
    // Loaded without the lock, so that tests do not wait on each other's
    // compiles (two may load the same component once each).
    let component = std::fs::read(path).unwrap();
    let info = Engine::new()
        .unwrap()
        .load(&component)
        .unwrap()
        .info()
        .clone();
    known().insert(path.into(), info.clone());
    info
}

/// `component` signed by account `owner` as the text encoder `name` (what
/// its `info()` says it is), allowed `fuel` per call.
pub fn component_package(component: &str, name: &str, owner: u8, fuel: u64) -> VerifiedPackage {
    let meta = EncoderMeta::from_info(&info_of(component), fuel);
    assert_eq!(meta.name, name, "{component} is another encoder");
    package_declaring(std::fs::read(component).unwrap(), &meta, owner)
}

/// `component` signed by account `owner` as whatever `meta` declares.
pub fn package_declaring(component: Vec<u8>, meta: &EncoderMeta, owner: u8) -> VerifiedPackage {
    Package::sign(&key(owner), meta, component, vec![]).unwrap()
}

/// An example `component` as the text encoder `name`, signed by account
/// `owner` and allowed the most fuel a package may have.
pub fn example_package(component: &str, name: &str, owner: u8) -> VerifiedPackage {
    component_package(component, name, owner, soma_host::package::MAX_FUEL_LIMIT)
}

/// A package of the MiniLM encoder `component` (an artifact path) named
/// `name` with the model `model_file` (of those `cargo xtask setup`
/// fetched), signed by account `owner`.
pub fn minilm_package(component: &str, name: &str, model_file: &str, owner: u8) -> VerifiedPackage {
    let dir = std::env::var_os("SOMA_MODELS_DIR").expect("SOMA_MODELS_DIR is set by cargo");
    let model = std::fs::read(Path::new(&dir).join(model_file)).unwrap();
    let meta = EncoderMeta {
        name: name.into(),
        version: "0.1.0".into(),
        dimension: 384,
        fuel_limit: soma_host::package::MAX_FUEL_LIMIT,
        modality: Modality::Text,
        // The guest SDK's sentence encoders' default, which the MiniLM
        // examples keep (loading checks it against `info()`).
        max_input_bytes: 16 * 1024,
    };
    Package::sign(
        &key(owner),
        &meta,
        std::fs::read(component).unwrap(),
        vec![(model_file.into(), model)],
    )
    .unwrap()
}

/// The one validator of [`encoder_network`].
pub const VALIDATOR: u8 = 0;

/// The submitter of [`encoder_network`].
pub const SUBMITTER: u8 = 20;

/// A network of one validator ([`VALIDATOR`], holding all the stake) and a
/// funded [`SUBMITTER`], with `encoders` (package, owner) registered with
/// a bond of 10 000 000 each and installed in `store`.
pub fn encoder_network(
    store: &BlobStore,
    encoders: &[(&VerifiedPackage, u8)],
    parameters: Parameters,
) -> Genesis {
    let mut holders = vec![VALIDATOR, SUBMITTER];
    holders.extend(encoders.iter().map(|&(_, owner)| owner));
    holders.sort();
    holders.dedup();
    let accounts = holders
        .into_iter()
        .map(|i| GenesisAccount {
            key: public(i),
            // Enough for thousands of jobs.
            balance: if i == SUBMITTER {
                1_000_000_000_000
            } else {
                1_000_000_000
            },
        })
        .collect();
    let encoders = encoders
        .iter()
        .map(|&(package, owner)| {
            store.install(package).unwrap();
            GenesisEncoder {
                package: package.digest(),
                owner: public(owner),
                bond: 10_000_000,
            }
        })
        .collect();
    let validators = vec![GenesisValidator {
        key: public(VALIDATOR),
        stake: 5_000_000,
    }];
    Genesis::new(
        "soma-encoders".into(),
        accounts,
        validators,
        encoders,
        parameters,
    )
    .unwrap()
}

/// [`SUBMITTER`]'s submissions of `data`, 1 000 000 base units each, in one
/// commit; returns the job ids.
pub fn submit_all(executor: &mut Executor, genesis: &Genesis, data: &[&[u8]]) -> Vec<Digest> {
    let nonce = executor.account(&public(SUBMITTER)).unwrap().nonce;
    let transactions: Vec<Vec<u8>> = data
        .iter()
        .zip(nonce..)
        .map(|(data, nonce)| {
            let action = Action::SubmitData {
                modality: Modality::Text,
                data: data.to_vec(),
                payment: 1_000_000,
            };
            signed(genesis, SUBMITTER, nonce, 10, action)
        })
        .collect();
    apply(executor, &transactions)
        .receipts
        .into_iter()
        .map(|r| {
            assert_eq!(r.rejection, None);
            r.transaction.unwrap()
        })
        .collect()
}

/// [`VALIDATOR`] computes `jobs` with `runner` and attests them in one
/// commit, which decides them; returns their finalisations.
pub fn decide_all(
    executor: &mut Executor,
    genesis: &Genesis,
    runner: &JobRunner,
    jobs: &[Digest],
) -> Vec<Finalisation> {
    let nonce = executor.account(&public(VALIDATOR)).unwrap().nonce;
    let attestations: Vec<Vec<u8>> = jobs
        .iter()
        .zip(nonce..)
        .map(|(id, nonce)| {
            let job = executor.job(id).unwrap().unwrap();
            let results = runner.compute(&job, genesis.parameters()).unwrap();
            let action = Action::Attest { job: *id, results };
            signed(genesis, VALIDATOR, nonce, 10, action)
        })
        .collect();
    let effects = apply(executor, &attestations);
    assert!(effects.receipts.iter().all(|r| r.rejection.is_none()));
    jobs.iter()
        .map(|id| match executor.job(id).unwrap().unwrap().status {
            JobStatus::Finalised(f) => *f,
            other => panic!("job {id} is not decided: {other:?}"),
        })
        .collect()
}
