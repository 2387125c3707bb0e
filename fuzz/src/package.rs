//! Package and manifest decoding, on arbitrary bytes: never a panic;
//! whatever decodes re-encodes to the same bytes (the encoding is
//! canonical); only a package its signer signed verifies.

use soma_host::Modality;
use soma_host::package::{EncoderMeta, Manifest, Package};

/// Checks one input.
pub fn check(bytes: &[u8]) {
    if let Ok(manifest) = Manifest::decode(bytes) {
        assert_eq!(
            manifest.encode(),
            bytes,
            "manifest decoding is not canonical"
        );
    }
    let Ok(verified) = Package::decode(bytes).and_then(|p| p.verify(None)) else {
        return;
    };
    assert_eq!(
        verified.encode(),
        bytes,
        "package decoding is not canonical"
    );
    // Only the seeds' signer can sign; signing what decoded again
    // reproduces the bytes (ed25519 is deterministic), so the signature
    // was theirs.
    let manifest = verified.manifest();
    let key = crate::key(0);
    assert_eq!(
        manifest.signer,
        key.public_key(),
        "a package of a key no one here holds verified"
    );
    let meta = EncoderMeta {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        dimension: manifest.dimension,
        fuel_limit: manifest.fuel_limit,
        modality: manifest.modality,
        max_input_bytes: manifest.max_input_bytes,
    };
    let models = verified
        .models()
        .map(|(model, bytes)| (model.name.clone(), bytes.to_vec()))
        .collect();
    let again = Package::sign(&key, &meta, verified.component().to_vec(), models)
        .expect("what verified signs again");
    assert_eq!(
        again.encode(),
        bytes,
        "a package verified without its signer's signature"
    );
}

/// Signed packages, one with a model and one without, and a manifest.
pub fn seeds() -> Vec<Vec<u8>> {
    let meta = EncoderMeta {
        name: "seed".into(),
        version: "1.0.0".into(),
        dimension: 8,
        fuel_limit: 1_000_000,
        modality: Modality::Text,
        max_input_bytes: 1024,
    };
    // A component's header: decoding never looks inside the blobs.
    let component = b"\0asm\x0d\0\x01\0".to_vec();
    let model = ("model.onnx".to_string(), b"model bytes".to_vec());
    let packages: Vec<_> = [vec![], vec![model]]
        .into_iter()
        .map(|models| {
            Package::sign(&crate::key(0), &meta, component.clone(), models)
                .expect("the seed package is valid")
        })
        .collect();
    let manifest = packages[1].signed_manifest().0.to_vec();
    packages
        .iter()
        .map(|p| p.encode())
        .chain([manifest])
        .collect()
}
