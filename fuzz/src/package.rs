//! Package and manifest decoding, on arbitrary bytes: never a panic;
//! whatever decodes re-encodes to the same bytes (the encoding is
//! canonical); whatever verifies was signed by the key it names.

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
    if let Ok(package) = Package::decode(bytes)
        && let Ok(verified) = package.clone().verify(None)
    {
        assert_eq!(
            verified.encode(),
            bytes,
            "package decoding is not canonical"
        );
        // Whatever verifies was signed by the key its manifest names, and
        // by no other.
        let signer = verified.manifest().signer;
        assert!(package.clone().verify(Some(&signer)).is_ok());
        let other = crate::key(9).public_key();
        if other != signer {
            assert!(
                package.verify(Some(&other)).is_err(),
                "a package verified as signed by a key that did not sign it"
            );
        }
    }
}

/// Signed packages: one with a model, one without.
pub fn seeds() -> Vec<Vec<u8>> {
    let meta = EncoderMeta {
        name: "seed".into(),
        version: "1.0.0".into(),
        dimension: 8,
        fuel_limit: 1_000_000,
        modality: Modality::Text,
    };
    // A component's header: decoding never looks inside the blobs.
    let component = b"\0asm\x0d\0\x01\0".to_vec();
    let model = ("model.onnx".to_string(), b"model bytes".to_vec());
    [vec![], vec![model]]
        .into_iter()
        .map(|models| {
            Package::sign(&crate::key(0), &meta, component.clone(), models)
                .expect("the seed package is valid")
                .encode()
        })
        .collect()
}
