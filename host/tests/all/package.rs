//! Signed packages, the blob store and the compiled-component cache.

use super::{bits, engine, text};
use proptest::prelude::*;
use soma_crypto::{Domain, SecretKey};
use soma_host::package::{
    BlobRef, EncoderMeta, MAX_MANIFEST_BYTES, MAX_MODELS, MAX_NAME_BYTES, Manifest, Package,
    PackageError, WORLD,
};
use soma_host::{
    BlobStore, CacheOutcome, CompiledCache, Digest, Error, Limits, Modality, Seed, StoreError,
};
use std::path::{Path, PathBuf};

fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

fn hash_component() -> Vec<u8> {
    std::fs::read(soma_examples_artifacts::HASH_ENCODER).unwrap()
}

/// What the hash-encoder test packages declare.
fn meta() -> EncoderMeta {
    EncoderMeta {
        name: "hash-encoder".into(),
        version: "0.1.0".into(),
        dimension: 384,
        fuel_limit: 1_000_000_000,
        modality: Modality::Text,
        max_input_bytes: hash_encoder::MAX_INPUT_BYTES,
    }
}

/// The manifest of a signed hash-encoder package, to tamper with.
fn manifest() -> Manifest {
    Package::sign(&key(1), &meta(), vec![1, 2, 3], vec![])
        .unwrap()
        .manifest()
        .clone()
}

fn models() -> Vec<(String, Vec<u8>)> {
    vec![
        ("vocab.bin".into(), vec![7; 1000]),
        ("notes.txt".into(), b"opaque data".to_vec()),
    ]
}

/// The hash encoder, signed with two model blobs, as file bytes.
fn package_bytes() -> Vec<u8> {
    Package::sign(&key(1), &meta(), hash_component(), models())
        .unwrap()
        .encode()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("soma-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Files under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What a validator does with package bytes: decode, verify, install.
fn install(store: &BlobStore, bytes: &[u8]) -> Result<Digest, PackageError> {
    let package = Package::decode(bytes)?.verify(None)?;
    Ok(store.install(&package).unwrap())
}

/// Offset of the manifest inside package bytes, and its length.
fn manifest_span(bytes: &[u8]) -> (usize, usize) {
    (
        12,
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
    )
}

#[test]
fn sign_verify_install_and_run_round_trip() {
    let dir = TempDir::new("roundtrip");
    let store = BlobStore::open(dir.path()).unwrap();
    let bytes = package_bytes();
    let digest = install(&store, &bytes).unwrap();
    let package = store.package(&digest).unwrap();
    assert_eq!(package.encode(), bytes);
    assert_eq!(package.manifest().signer, key(1).public_key());

    let encoder = engine().load_package(&package, None).unwrap();
    let out = encoder
        .embed(
            &text(&["signed and sealed"]),
            &Limits::default(),
            Seed::from(0),
        )
        .unwrap();
    let bare = engine().load(&hash_component()).unwrap();
    let expected = bare
        .embed(
            &text(&["signed and sealed"]),
            &Limits::default(),
            Seed::from(0),
        )
        .unwrap();
    assert_eq!(bits(&out.vectors), bits(&expected.vectors));
}

#[test]
fn each_kind_of_tampering_is_refused_with_its_own_error_and_nothing_stored() {
    let good = package_bytes();
    let (m_start, m_len) = manifest_span(&good);
    let sig_start = m_start + m_len;
    let component_start = sig_start + 64;
    let component_len = hash_component().len();
    let model_start = component_start + component_len;

    let flip = |offset: usize| {
        let mut bytes = good.clone();
        bytes[offset] ^= 0x10;
        bytes
    };
    // The fuel limit sits after magic, three strings and the dimension.
    let fuel_offset = m_start + 8 + (2 + 12) + (2 + 5) + (2 + WORLD.len()) + 4;
    let resigned_by_other_key = {
        let mut bytes = good.clone();
        let other = key(2).sign(Domain::EncoderPackage, &good[m_start..sig_start]);
        bytes[sig_start..component_start].copy_from_slice(&other.0);
        bytes
    };
    type Case = (&'static str, Vec<u8>, fn(&PackageError) -> bool);
    let cases: Vec<Case> = vec![
        (
            "flipped component bit",
            flip(component_start + 100),
            |e| matches!(e, PackageError::DigestMismatch { blob, .. } if blob == "component"),
        ),
        (
            "flipped model bit",
            flip(model_start + 3),
            |e| matches!(e, PackageError::DigestMismatch { blob, .. } if blob == "model `notes.txt`"),
        ),
        ("flipped manifest bit", flip(fuel_offset), |e| {
            matches!(e, PackageError::BadSignature { .. })
        }),
        ("flipped signature bit", flip(sig_start + 5), |e| {
            matches!(e, PackageError::BadSignature { .. })
        }),
        ("signed by another key", resigned_by_other_key, |e| {
            matches!(e, PackageError::BadSignature { .. })
        }),
        (
            "last model missing",
            good[..good.len() - 1000].to_vec(),
            |e| matches!(e, PackageError::MissingBlob(m) if m == "model `vocab.bin`"),
        ),
        (
            "cut inside a model",
            good[..good.len() - 10].to_vec(),
            |e| matches!(e, PackageError::Truncated { what } if what == "model `vocab.bin`"),
        ),
        (
            "cut inside the manifest",
            good[..m_start + 20].to_vec(),
            |e| matches!(e, PackageError::Truncated { what } if what == "manifest"),
        ),
        (
            "cut inside the signature",
            good[..sig_start + 10].to_vec(),
            |e| matches!(e, PackageError::Truncated { what } if what == "signature"),
        ),
        ("cut inside the header", good[..6].to_vec(), |e| {
            matches!(e, PackageError::Truncated { .. })
        }),
        ("trailing bytes", [good.clone(), vec![0]].concat(), |e| {
            matches!(e, PackageError::TrailingBytes(1))
        }),
        ("not a package", hash_component(), |e| {
            matches!(e, PackageError::BadMagic)
        }),
    ];
    for (what, bytes, expected) in cases {
        let dir = TempDir::new("tamper");
        let store = BlobStore::open(dir.path()).unwrap();
        let err = install(&store, &bytes).expect_err(what);
        assert!(expected(&err), "{what}: unexpected error {err}");
        assert!(files(dir.path()).is_empty(), "{what}: something was stored");
    }
}

#[test]
fn a_signer_other_than_the_trusted_key_is_refused() {
    let package = Package::decode(&package_bytes()).unwrap();
    let err = package.verify(Some(&key(9).public_key())).unwrap_err();
    assert!(matches!(err, PackageError::UntrustedSigner { .. }), "{err}");
    assert!(err.to_string().contains(&key(1).public_key().to_string()));
}

#[test]
fn manifests_out_of_bounds_or_of_another_world_are_refused() {
    let sign = |m: EncoderMeta, models: Vec<(String, Vec<u8>)>| {
        Package::sign(&key(1), &m, vec![1, 2, 3], models)
    };
    let other_world = Manifest {
        world: "soma:encoder/encoder@0.2.0".into(),
        ..manifest()
    };
    let err = Manifest::decode(&other_world.encode()).unwrap_err();
    assert!(
        matches!(&err, PackageError::UnsupportedWorld { found } if found.ends_with("@0.2.0")),
        "{err}"
    );
    assert!(err.to_string().contains(WORLD));

    // Longer than the limit, and longer than a length prefix can say.
    for len in [usize::from(MAX_NAME_BYTES) + 1, 70_000] {
        let err = sign(
            EncoderMeta {
                name: "n".repeat(len),
                ..meta()
            },
            vec![],
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                PackageError::TooLarge {
                    field: "encoder name",
                    ..
                }
            ),
            "{err}"
        );
    }

    let too_many = (0..=MAX_MODELS)
        .map(|i| (format!("m{i:02}"), vec![]))
        .collect();
    let err = sign(meta(), too_many).unwrap_err();
    assert!(
        matches!(
            err,
            PackageError::TooLarge {
                field: "model count",
                ..
            }
        ),
        "{err}"
    );

    let mut huge_component = manifest();
    huge_component.component = BlobRef {
        digest: Digest([0; 32]),
        size: u64::MAX,
    };
    let err = Manifest::decode(&huge_component.encode()).unwrap_err();
    assert!(
        matches!(
            err,
            PackageError::TooLarge {
                field: "component size",
                ..
            }
        ),
        "{err}"
    );

    let mut header = b"SOMAPKG1".to_vec();
    header.extend_from_slice(&(MAX_MANIFEST_BYTES + 1).to_le_bytes());
    let err = Package::decode(&header).unwrap_err();
    assert!(
        matches!(
            err,
            PackageError::TooLarge {
                field: "manifest size",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_component_that_is_not_what_its_manifest_says_is_refused_at_load() {
    let package = Package::sign(
        &key(1),
        &EncoderMeta {
            dimension: 768,
            ..meta()
        },
        hash_component(),
        vec![],
    )
    .unwrap();
    let Err(err) = engine().load_package(&package, None) else {
        panic!("mismatched package loaded")
    };
    assert!(
        matches!(&err, Error::ManifestMismatch(m) if m.contains("dimension")),
        "{err}"
    );
}

#[test]
fn a_package_signature_is_not_valid_in_any_other_domain() {
    let package = Package::sign(&key(1), &meta(), hash_component(), vec![]).unwrap();
    let (manifest_bytes, signature) = package.signed_manifest();
    let signer = key(1).public_key();
    assert!(
        signer
            .verify(Domain::EncoderPackage, manifest_bytes, signature)
            .is_ok()
    );
    assert!(
        signer
            .verify(Domain::Transaction, manifest_bytes, signature)
            .is_err()
    );
    assert!(
        signer
            .verify(Domain::Block, manifest_bytes, signature)
            .is_err()
    );
}

#[test]
fn the_blob_store_detects_and_removes_corrupt_blobs() {
    let dir = TempDir::new("blobs");
    let store = BlobStore::open(dir.path()).unwrap();
    let digest = store.put(b"some model bytes").unwrap();
    assert_eq!(store.put(b"some model bytes").unwrap(), digest);
    assert_eq!(store.get(&digest).unwrap(), b"some model bytes");
    assert_eq!(files(dir.path()).len(), 1, "no temporary files left behind");

    let path = dir.path().join("blobs").join(digest.to_string());
    std::fs::write(&path, b"some modeL bytes").unwrap();
    assert!(
        matches!(store.get(&digest), Err(StoreError::Corrupt { expected, .. }) if expected == digest)
    );
    assert!(!store.contains(&digest));
    assert!(matches!(store.get(&digest), Err(StoreError::NotFound(_))));
}

#[test]
fn a_corrupted_or_foreign_cache_entry_is_recompiled_with_identical_results() {
    let dir = TempDir::new("cache");
    let wasm = hash_component();
    let embed = |encoder: &soma_host::Encoder| {
        bits(
            &encoder
                .embed(&text(&["cache me"]), &Limits::default(), Seed::from(0))
                .unwrap()
                .vectors,
        )
    };
    let cache = CompiledCache::open(dir.path()).unwrap();
    let (first, outcome) = engine().load_cached(&wasm, &cache).unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    let expected = embed(&first);
    let (hit, outcome) = engine().load_cached(&wasm, &cache).unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(embed(&hit), expected);

    let entry = files(&dir.path().join("compiled")).pop().unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    let (recompiled, outcome) = engine().load_cached(&wasm, &cache).unwrap();
    assert_eq!(outcome, CacheOutcome::Recompiled);
    assert_eq!(embed(&recompiled), expected);
    assert_eq!(
        engine().load_cached(&wasm, &cache).unwrap().1,
        CacheOutcome::Hit
    );

    // An entry written by another node (valid code, another key) is foreign.
    let other_dir = TempDir::new("cache-other");
    let other = CompiledCache::open(other_dir.path()).unwrap();
    engine().load_cached(&wasm, &other).unwrap();
    let foreign = files(&other_dir.path().join("compiled")).pop().unwrap();
    std::fs::copy(foreign, &entry).unwrap();
    let (reloaded, outcome) = engine().load_cached(&wasm, &cache).unwrap();
    assert_eq!(outcome, CacheOutcome::Recompiled);
    assert_eq!(embed(&reloaded), expected);
}

/// Start-up runs under the package's fuel limit, and the cache must not
/// let one package's start-up stand for another's: the same component
/// with too little fuel to start is refused whether or not a package with
/// enough fuel put it in the cache first.
#[test]
fn the_cache_keeps_start_ups_under_different_limits_apart() {
    let package = |fuel_limit| {
        let signed = Package::sign(
            &key(1),
            &EncoderMeta {
                fuel_limit,
                ..meta()
            },
            hash_component(),
            vec![],
        )
        .unwrap();
        Package::decode(&signed.encode())
            .unwrap()
            .verify(None)
            .unwrap()
    };
    let (enough, starved) = (package(meta().fuel_limit), package(1_000));
    let Err(uncached) = engine().load_package(&starved, None) else {
        panic!("started on 1000 fuel")
    };
    assert!(
        matches!(uncached, Error::FuelExhausted { .. }),
        "{uncached}"
    );

    let dir = TempDir::new("cache-limits");
    let cache = CompiledCache::open(dir.path()).unwrap();
    engine().load_package(&enough, Some(&cache)).unwrap();
    let Err(cached) = engine().load_package(&starved, Some(&cache)) else {
        panic!("the cache let a starved start-up load")
    };
    assert!(matches!(cached, Error::FuelExhausted { .. }), "{cached}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Package::decode(&bytes);
        let _ = Manifest::decode(&bytes);
        let mut prefixed = b"SOMAPKG1".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = Package::decode(&prefixed);
    }

    #[test]
    fn a_mutated_package_never_panics_and_never_verifies(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let good = small_package();
        let mut bytes = good.clone();
        for (index, xor) in edits {
            let i = index.index(bytes.len());
            bytes[i] ^= xor;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let verified = Package::decode(&bytes).and_then(|p| p.verify(None));
        prop_assert!(verified.is_err() || bytes == good);
    }
}

/// A package small enough to mutate thousands of times.
fn small_package() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES
        .get_or_init(|| {
            let models = vec![("a".into(), vec![1; 16]), ("b".into(), vec![2; 16])];
            Package::sign(&key(1), &meta(), vec![0; 32], models)
                .unwrap()
                .encode()
        })
        .clone()
}

#[test]
fn a_cache_key_others_can_read_or_of_the_wrong_size_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cache-key");
    let key = dir.path().join("cache.key");
    // Created whole, private, and the same on every open.
    CompiledCache::open(dir.path()).unwrap();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = std::fs::read(&key).unwrap();
    CompiledCache::open(dir.path()).unwrap();
    assert_eq!(std::fs::read(&key).unwrap(), first);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = CompiledCache::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("readable by other users"), "{err}");

    std::fs::write(&key, b"short").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = CompiledCache::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("5 bytes, expected 32"), "{err}");
}
