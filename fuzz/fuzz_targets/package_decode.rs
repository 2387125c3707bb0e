//! Package and manifest decoding on arbitrary bytes: never a panic, and
//! whatever decodes re-encodes to the same bytes (the encoding is canonical).

#![no_main]

use libfuzzer_sys::fuzz_target;
use soma_host::package::{Manifest, Package};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(manifest) = Manifest::decode(bytes) {
        assert_eq!(manifest.encode(), bytes, "manifest decoding is not canonical");
    }
    if let Ok(package) = Package::decode(bytes) {
        if let Ok(verified) = package.verify(None) {
            assert_eq!(verified.encode(), bytes, "package decoding is not canonical");
        }
    }
});
