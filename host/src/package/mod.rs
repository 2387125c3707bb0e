//! Signed encoder packages.
//!
//! A package is what an encoder author publishes and a validator loads: a
//! [`Manifest`] describing the encoder and naming every blob by digest and
//! size, an ed25519 signature over the manifest, and the blobs themselves
//! (the component, then the models in manifest order).
//!
//! ```text
//! package  = "SOMAPKG1" ‖ u32 manifest length ‖ manifest ‖ signature (64)
//!            ‖ component bytes ‖ model bytes ...
//! manifest = "SOMAMFv2" ‖ str name ‖ str version ‖ str world ‖ u32 dimension
//!            ‖ u64 fuel limit ‖ u8 modality ‖ u32 max input bytes ‖ blob component
//!            ‖ u16 model count ‖ (str name ‖ blob)* ‖ signer key (32)
//! blob     = digest (32) ‖ u64 size        str = u16 length ‖ UTF-8
//! ```
//!
//! Integers are little-endian. The encoding is canonical: decoding refuses
//! anything [`Manifest::encode`] would not produce (unsorted or duplicate
//! model names, trailing bytes, out-of-range values), so a manifest has one
//! byte string and one digest. The package digest is the blake3 of the
//! manifest bytes; the signature is by the manifest's signer over them in
//! [`Domain::EncoderPackage`]. Every length is checked against a limit
//! before anything is allocated for it.
//!
//! Installed packages and their blobs live in a [`BlobStore`]; what the
//! engine compiled from their components, in a [`CompiledCache`].

mod cache;
mod store;

pub use crate::model::MAX_MODEL_BYTES;
pub use cache::{CacheOutcome, CompiledCache};
pub use store::{BlobStore, StoreError};

use crate::digest::Digest;
use crate::info::{EncoderInfo, Modality};
use serde::Serialize;
use soma_codec::{DecodeError, Reader, Writer};
use soma_crypto::{Domain, PublicKey, SecretKey, Signature};
use std::fmt;

/// The WIT world every package's component must implement.
pub const WORLD: &str = "soma:encoder/encoder@0.1.0";

/// Largest manifest, in bytes.
pub const MAX_MANIFEST_BYTES: u32 = 64 * 1024;
/// Most models in one package.
pub const MAX_MODELS: u16 = 16;
/// Largest component, in bytes.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// Largest sum of the component and the models, in bytes.
pub const MAX_PACKAGE_BYTES: u64 = 1 << 30;
/// Highest fuel limit a manifest may declare: the network-wide ceiling on
/// one call's deterministic work.
pub const MAX_FUEL_LIMIT: u64 = 100_000_000_000;
/// Longest name (of the encoder or of a model), in bytes.
pub const MAX_NAME_BYTES: u16 = 128;
/// Longest version or world string, in bytes.
pub const MAX_VERSION_BYTES: u16 = 64;

const PACKAGE_MAGIC: &[u8; 8] = b"SOMAPKG1";
const MANIFEST_MAGIC: &[u8; 8] = b"SOMAMFv2";
/// The manifest format before it carried the input limit: refused with a
/// way out, since its signature covers no limit to take.
const MANIFEST_MAGIC_V1: &[u8; 8] = b"SOMAMFv1";

/// Why a package was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// The bytes do not start like a package (or a manifest).
    #[error("not a Soma encoder package (bad magic bytes)")]
    BadMagic,
    /// A manifest in the first format, which signed no input limit.
    #[error(
        "the package was signed in the first manifest format, which has no input limit; \
         sign its component again with this version's `soma-host sign`"
    )]
    OldFormat,
    /// The bytes end before `what` is complete.
    #[error("package is truncated: it ends inside the {what}")]
    Truncated {
        /// The part that is cut short.
        what: String,
    },
    /// Bytes follow the last blob.
    #[error("package has {0} unexpected bytes after its last blob")]
    TrailingBytes(u64),
    /// The manifest names a blob whose bytes are absent.
    #[error("manifest names the {0}, but the package does not contain it")]
    MissingBlob(String),
    /// A length or count exceeds its limit.
    #[error("{field} is {size}, over the limit of {max}")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A manifest field is not in canonical form.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// The package targets a world this host does not implement.
    #[error("package targets world `{found}`; this host implements `{WORLD}`")]
    UnsupportedWorld {
        /// The world the manifest names.
        found: String,
    },
    /// The signer field is not a valid ed25519 key.
    #[error("manifest signer is not a valid ed25519 public key")]
    InvalidSigner,
    /// The signature does not verify under the manifest's signer.
    #[error("package signature does not verify for signer {signer}")]
    BadSignature {
        /// The claimed signer.
        signer: PublicKey,
    },
    /// The package verifies but was signed by a key the caller does not trust.
    #[error("package is signed by {signer}, not by the trusted key {trusted}")]
    UntrustedSigner {
        /// Who signed it.
        signer: PublicKey,
        /// Whom the caller trusts.
        trusted: PublicKey,
    },
    /// A blob's bytes do not hash to the digest the manifest records.
    #[error("{blob} does not match the manifest: digest {actual}, expected {expected}")]
    DigestMismatch {
        /// Which blob.
        blob: String,
        /// Digest in the manifest.
        expected: Digest,
        /// Digest of the bytes.
        actual: Digest,
    },
}

/// A blob named by digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlobRef {
    /// blake3 of the bytes.
    pub digest: Digest,
    /// Length of the bytes.
    pub size: u64,
}

impl BlobRef {
    /// The reference to `bytes`.
    pub fn to(bytes: &[u8]) -> BlobRef {
        BlobRef {
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// A model blob shipped in a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRef {
    /// The file name the author gave it, e.g. `model.onnx`.
    pub name: String,
    /// Its bytes.
    pub blob: BlobRef,
}

/// What a package declares about its encoder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Encoder name; must equal what the component's `info()` says.
    pub name: String,
    /// Encoder version; must equal what the component's `info()` says.
    pub version: String,
    /// The WIT world, [`WORLD`].
    pub world: String,
    /// Output dimension; must equal the component's.
    pub dimension: u32,
    /// Most fuel one `embed` call of this encoder may use.
    pub fuel_limit: u64,
    /// Input kind; must equal the component's.
    pub modality: Modality,
    /// Largest input one `embed` call accepts, in bytes; must equal the
    /// component's. Signed so that a network can refuse, without running
    /// it, an encoder that would refuse some of the data it takes.
    pub max_input_bytes: u32,
    /// The component.
    pub component: BlobRef,
    /// The models, sorted by name.
    pub models: Vec<ModelRef>,
    /// The key that signs the package.
    #[serde(serialize_with = "serialize_display")]
    pub signer: PublicKey,
}

fn serialize_display<S: serde::Serializer>(v: &impl fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Manifest {
    /// The canonical bytes of the manifest.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MANIFEST_MAGIC);
        w.str16(&self.name);
        w.str16(&self.version);
        w.str16(&self.world);
        w.u32(self.dimension);
        w.u64(self.fuel_limit);
        w.u8(self.modality.code());
        w.u32(self.max_input_bytes);
        put_blob(&mut w, &self.component);
        w.count16(self.models.len());
        for model in &self.models {
            w.str16(&model.name);
            put_blob(&mut w, &model.blob);
        }
        w.array(&self.signer.to_bytes());
        w.into_bytes()
    }

    /// Refuses strings and lists longer than their length prefix allows,
    /// before encoding (the decoder checks everything else).
    fn check_lengths(&self) -> Result<(), PackageError> {
        let fields = [
            ("encoder name", &self.name, MAX_NAME_BYTES),
            ("version", &self.version, MAX_VERSION_BYTES),
            ("world", &self.world, MAX_VERSION_BYTES),
        ];
        let models = self
            .models
            .iter()
            .map(|m| ("model name", &m.name, MAX_NAME_BYTES));
        for (field, value, max) in fields.into_iter().chain(models) {
            if value.len() > usize::from(max) {
                return Err(too_large(field, value.len() as u64, max.into()));
            }
        }
        if self.models.len() > usize::from(MAX_MODELS) {
            return Err(too_large(
                "model count",
                self.models.len() as u64,
                MAX_MODELS.into(),
            ));
        }
        Ok(())
    }

    /// Parses canonical manifest bytes.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, PackageError> {
        if bytes.len() as u64 > u64::from(MAX_MANIFEST_BYTES) {
            return Err(too_large(
                "manifest size",
                bytes.len() as u64,
                u64::from(MAX_MANIFEST_BYTES),
            ));
        }
        let mut r = Reader::new(bytes);
        match r.take(8, "manifest")? {
            magic if magic == MANIFEST_MAGIC => {}
            magic if magic == MANIFEST_MAGIC_V1 => return Err(PackageError::OldFormat),
            _ => return Err(PackageError::BadMagic),
        }
        let name = read_name(&mut r, "encoder name", MAX_NAME_BYTES)?;
        let version = read_name(&mut r, "version", MAX_VERSION_BYTES)?;
        let world = read_name(&mut r, "world", MAX_VERSION_BYTES)?;
        let dimension = r.u32("manifest")?;
        let fuel_limit = r.u64("manifest")?;
        if fuel_limit > MAX_FUEL_LIMIT {
            return Err(too_large("fuel limit", fuel_limit, MAX_FUEL_LIMIT));
        }
        let code = r.u8("manifest")?;
        let modality = Modality::from_code(code)
            .ok_or_else(|| PackageError::Malformed(format!("unknown modality code {code}")))?;
        let max_input_bytes = r.u32("manifest")?;
        let component = read_blob(&mut r, "component size", MAX_COMPONENT_BYTES)?;
        let count = r.count16("model count", MAX_MODELS, 2 + 32 + 8)?;
        let mut models: Vec<ModelRef> = Vec::with_capacity(count);
        for _ in 0..count {
            let name = read_name(&mut r, "model name", MAX_NAME_BYTES)?;
            if models.last().is_some_and(|prev| prev.name >= name) {
                return Err(PackageError::Malformed(format!(
                    "model names must be unique and sorted; `{name}` is out of place"
                )));
            }
            models.push(ModelRef {
                name,
                blob: read_blob(&mut r, "model size", MAX_MODEL_BYTES)?,
            });
        }
        let total = models
            .iter()
            .fold(component.size, |sum, m| sum.saturating_add(m.blob.size));
        if total > MAX_PACKAGE_BYTES {
            return Err(too_large("package size", total, MAX_PACKAGE_BYTES));
        }
        let signer = PublicKey::from_bytes(&r.array("manifest")?)
            .map_err(|_| PackageError::InvalidSigner)?;
        if !r.is_empty() {
            return Err(PackageError::Malformed(format!(
                "{} bytes after the signer key",
                r.remaining()
            )));
        }
        if world != WORLD {
            return Err(PackageError::UnsupportedWorld { found: world });
        }
        if dimension == 0 {
            return Err(PackageError::Malformed("dimension is 0".into()));
        }
        if max_input_bytes == 0 {
            return Err(PackageError::Malformed("max input bytes is 0".into()));
        }
        Ok(Manifest {
            name,
            version,
            world,
            dimension,
            fuel_limit,
            modality,
            max_input_bytes,
            component,
            models,
            signer,
        })
    }

    /// Checks that a component's `info()` agrees with this manifest, saying
    /// which field differs if not.
    pub fn check_info(&self, info: &EncoderInfo) -> Result<(), String> {
        let differs = |field: &str, manifest: &dyn fmt::Debug, component: &dyn fmt::Debug| {
            Err(format!(
                "{field}: manifest says {manifest:?}, component says {component:?}"
            ))
        };
        if self.name != info.name {
            return differs("name", &self.name, &info.name);
        }
        if self.version != info.version {
            return differs("version", &self.version, &info.version);
        }
        if self.dimension != info.dimension {
            return differs("dimension", &self.dimension, &info.dimension);
        }
        if self.modality != info.modality {
            return differs("modality", &self.modality, &info.modality);
        }
        if self.max_input_bytes != info.max_input_bytes {
            return differs(
                "max input bytes",
                &self.max_input_bytes,
                &info.max_input_bytes,
            );
        }
        Ok(())
    }

    /// The package digest: blake3 of the canonical manifest bytes.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.encode())
    }
}

/// What an author declares about an encoder; [`Package::sign`] completes the
/// manifest (world, blob digests and sizes, signer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderMeta {
    /// Encoder name; must equal what the component's `info()` says.
    pub name: String,
    /// Encoder version; must equal what the component's `info()` says.
    pub version: String,
    /// Output dimension; must equal the component's.
    pub dimension: u32,
    /// Most fuel one `embed` call of this encoder may use.
    pub fuel_limit: u64,
    /// Input kind; must equal the component's.
    pub modality: Modality,
    /// Largest input one call accepts, in bytes; must equal the
    /// component's.
    pub max_input_bytes: u32,
}

impl EncoderMeta {
    /// The declaration matching a component's own `info()`.
    pub fn from_info(info: &EncoderInfo, fuel_limit: u64) -> EncoderMeta {
        EncoderMeta {
            name: info.name.clone(),
            version: info.version.clone(),
            dimension: info.dimension,
            fuel_limit,
            modality: info.modality,
            max_input_bytes: info.max_input_bytes,
        }
    }
}

/// A package as read from bytes: parsed, not yet verified.
#[derive(Debug, Clone)]
pub struct Package {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signature: Signature,
    component: Vec<u8>,
    models: Vec<Vec<u8>>,
}

/// A package whose signature and blobs have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedPackage(Package);

impl Package {
    /// Builds and signs a package for the encoder `meta` describes. Model
    /// names must be unique; they are sorted here.
    pub fn sign(
        key: &SecretKey,
        meta: &EncoderMeta,
        component: Vec<u8>,
        mut models: Vec<(String, Vec<u8>)>,
    ) -> Result<VerifiedPackage, PackageError> {
        models.sort_by(|a, b| a.0.cmp(&b.0));
        let manifest = Manifest {
            name: meta.name.clone(),
            version: meta.version.clone(),
            world: WORLD.into(),
            dimension: meta.dimension,
            fuel_limit: meta.fuel_limit,
            modality: meta.modality,
            max_input_bytes: meta.max_input_bytes,
            component: BlobRef::to(&component),
            models: models
                .iter()
                .map(|(name, bytes)| ModelRef {
                    name: name.clone(),
                    blob: BlobRef::to(bytes),
                })
                .collect(),
            signer: key.public_key(),
        };
        manifest.check_lengths()?;
        let manifest_bytes = manifest.encode();
        // Round-trip through the decoder so that a package this function
        // produces is always one the decoder accepts.
        let manifest = Manifest::decode(&manifest_bytes)?;
        let signature = key.sign(Domain::EncoderPackage, &manifest_bytes);
        let models = models.into_iter().map(|(_, bytes)| bytes).collect();
        Package {
            manifest,
            manifest_bytes,
            signature,
            component,
            models,
        }
        .verify(None)
    }

    /// Parses package bytes; checks the form, not the signature or digests.
    pub fn decode(bytes: &[u8]) -> Result<Package, PackageError> {
        let mut r = Reader::new(bytes);
        let (manifest, manifest_bytes, signature) = read_header(&mut r)?;
        let component = read_blob_bytes(&mut r, "component", manifest.component.size)?.to_vec();
        let mut models = Vec::with_capacity(manifest.models.len());
        for model in &manifest.models {
            let what = format!("model `{}`", model.name);
            models.push(read_blob_bytes(&mut r, &what, model.blob.size)?.to_vec());
        }
        r.finish()?;
        Ok(Package {
            manifest,
            manifest_bytes: manifest_bytes.to_vec(),
            signature,
            component,
            models,
        })
    }

    /// Parses a package header alone (what [`VerifiedPackage::header`]
    /// writes): the blobs are stored elsewhere.
    pub(crate) fn decode_header(bytes: &[u8]) -> Result<Manifest, PackageError> {
        Ok(parse_header(bytes)?.0)
    }

    /// Reassembles a package from its header and its blobs (the component,
    /// then the models in manifest order), without copying the blobs.
    pub(crate) fn from_parts(
        header: &[u8],
        component: Vec<u8>,
        models: Vec<Vec<u8>>,
    ) -> Result<Package, PackageError> {
        let (manifest, manifest_bytes, signature) = parse_header(header)?;
        if models.len() != manifest.models.len() {
            return Err(PackageError::Malformed(format!(
                "{} model blobs for {} models",
                models.len(),
                manifest.models.len()
            )));
        }
        Ok(Package {
            manifest,
            manifest_bytes: manifest_bytes.to_vec(),
            signature,
            component,
            models,
        })
    }

    /// The parsed manifest (unverified until [`Package::verify`]).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Checks the signature (and, with `trusted`, the signer) and every
    /// blob's digest.
    pub fn verify(self, trusted: Option<&PublicKey>) -> Result<VerifiedPackage, PackageError> {
        let signer = self.manifest.signer;
        signer
            .verify(
                Domain::EncoderPackage,
                &self.manifest_bytes,
                &self.signature,
            )
            .map_err(|_| PackageError::BadSignature { signer })?;
        if let Some(trusted) = trusted.filter(|t| **t != signer) {
            return Err(PackageError::UntrustedSigner {
                signer,
                trusted: *trusted,
            });
        }
        check_blob("component", &self.manifest.component, &self.component)?;
        for (model, bytes) in self.manifest.models.iter().zip(&self.models) {
            check_blob(&format!("model `{}`", model.name), &model.blob, bytes)?;
        }
        Ok(VerifiedPackage(self))
    }
}

impl VerifiedPackage {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.0.manifest
    }

    /// The package digest.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.0.manifest_bytes)
    }

    /// The component bytes.
    pub fn component(&self) -> &[u8] {
        &self.0.component
    }

    /// Each model's reference and bytes, in manifest order.
    pub fn models(&self) -> impl Iterator<Item = (&ModelRef, &[u8])> {
        self.0
            .manifest
            .models
            .iter()
            .zip(self.0.models.iter().map(Vec::as_slice))
    }

    /// The canonical manifest bytes and the signature over them.
    pub fn signed_manifest(&self) -> (&[u8], &Signature) {
        (&self.0.manifest_bytes, &self.0.signature)
    }

    /// The package file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(&self.0.component);
        for model in &self.0.models {
            out.extend_from_slice(model);
        }
        out
    }

    /// The package without its blobs: magic, manifest and signature.
    pub(crate) fn header(&self) -> Vec<u8> {
        let p = &self.0;
        let mut w = Writer::new();
        w.raw(PACKAGE_MAGIC);
        w.bytes32(&p.manifest_bytes);
        w.array(&p.signature.0);
        w.into_bytes()
    }
}

/// Parses a header that must stand alone (no blobs after it).
fn parse_header(bytes: &[u8]) -> Result<(Manifest, &[u8], Signature), PackageError> {
    let mut r = Reader::new(bytes);
    let header = read_header(&mut r)?;
    r.finish()?;
    Ok(header)
}

/// Reads magic, manifest and signature.
fn read_header<'a>(r: &mut Reader<'a>) -> Result<(Manifest, &'a [u8], Signature), PackageError> {
    if r.take(8, "package header")? != PACKAGE_MAGIC {
        return Err(PackageError::BadMagic);
    }
    let manifest_bytes = match r.bytes32("manifest size", MAX_MANIFEST_BYTES) {
        Err(DecodeError::Truncated { .. }) => return Err(truncated("manifest")),
        bytes => bytes?,
    };
    let manifest = Manifest::decode(manifest_bytes)?;
    let signature = Signature(r.array("signature")?);
    Ok((manifest, manifest_bytes, signature))
}

/// Whether `bytes` start like a package (as opposed to a bare component).
pub fn is_package(bytes: &[u8]) -> bool {
    bytes.starts_with(PACKAGE_MAGIC)
}

fn check_blob(what: &str, expected: &BlobRef, bytes: &[u8]) -> Result<(), PackageError> {
    let actual = Digest::of(bytes);
    if actual != expected.digest {
        return Err(PackageError::DigestMismatch {
            blob: what.into(),
            expected: expected.digest,
            actual,
        });
    }
    Ok(())
}

fn too_large(field: &'static str, size: u64, max: u64) -> PackageError {
    PackageError::TooLarge { field, size, max }
}

fn put_blob(w: &mut Writer, blob: &BlobRef) {
    w.array(&blob.digest.0);
    w.u64(blob.size);
}

fn truncated(what: &str) -> PackageError {
    PackageError::Truncated { what: what.into() }
}

/// A non-empty UTF-8 string of at most `max` bytes.
fn read_name(r: &mut Reader<'_>, what: &'static str, max: u16) -> Result<String, PackageError> {
    let name = r.str16(what, max)?;
    if name.is_empty() {
        return Err(PackageError::Malformed(format!("{what} is empty")));
    }
    Ok(name.to_owned())
}

fn read_blob(r: &mut Reader<'_>, what: &'static str, max: u64) -> Result<BlobRef, PackageError> {
    let digest = Digest(r.array("manifest")?);
    let size = r.u64("manifest")?;
    if size > max {
        return Err(too_large(what, size, max));
    }
    Ok(BlobRef { digest, size })
}

/// The `size` bytes of a blob named `what`: missing if none are left,
/// truncated if some are.
fn read_blob_bytes<'a>(
    r: &mut Reader<'a>,
    what: &str,
    size: u64,
) -> Result<&'a [u8], PackageError> {
    if r.is_empty() && size > 0 {
        return Err(PackageError::MissingBlob(what.into()));
    }
    match usize::try_from(size) {
        Ok(size) if size <= r.remaining() => Ok(r.take(size, "blob")?),
        _ => Err(truncated(what)),
    }
}

impl From<DecodeError> for PackageError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated { what } => truncated(what),
            DecodeError::TooLarge { what, len, max } => too_large(what, len, max),
            DecodeError::TrailingBytes(n) => PackageError::TrailingBytes(n),
            e @ (DecodeError::NotUtf8 { .. } | DecodeError::Invalid { .. }) => {
                PackageError::Malformed(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "enc".into(),
            version: "1.0.0".into(),
            world: WORLD.into(),
            dimension: 384,
            fuel_limit: 1_000_000,
            modality: Modality::Text,
            max_input_bytes: 4096,
            component: BlobRef::to(b""),
            models: vec![],
            signer: SecretKey::from_bytes(&[0; 32]).public_key(),
        }
    }

    fn signed() -> VerifiedPackage {
        let models = vec![
            ("b.onnx".into(), b"model b".to_vec()),
            ("a.onnx".into(), b"model a".to_vec()),
        ];
        let m = manifest();
        let meta = EncoderMeta {
            name: m.name,
            version: m.version,
            dimension: m.dimension,
            fuel_limit: m.fuel_limit,
            modality: m.modality,
            max_input_bytes: m.max_input_bytes,
        };
        Package::sign(
            &SecretKey::from_bytes(&[7; 32]),
            &meta,
            b"component".to_vec(),
            models,
        )
        .unwrap()
    }

    #[test]
    fn packages_round_trip_and_sort_models() {
        let package = signed();
        assert_eq!(package.manifest().models[0].name, "a.onnx");
        let decoded = Package::decode(&package.encode())
            .unwrap()
            .verify(None)
            .unwrap();
        assert_eq!(decoded.manifest(), package.manifest());
        assert_eq!(decoded.digest(), package.digest());
        let models: Vec<_> = decoded
            .models()
            .map(|(m, b)| (m.name.as_str(), b))
            .collect();
        assert_eq!(
            models,
            [("a.onnx", &b"model a"[..]), ("b.onnx", &b"model b"[..])]
        );
    }

    #[test]
    fn non_canonical_manifests_are_refused() {
        let mut m = manifest();
        m.models = vec![
            ModelRef {
                name: "b".into(),
                blob: BlobRef::to(b""),
            },
            ModelRef {
                name: "a".into(),
                blob: BlobRef::to(b""),
            },
        ];
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(PackageError::Malformed(_))
        ));
        let mut bytes = manifest().encode();
        bytes.push(0);
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(PackageError::Malformed(_))
        ));
    }

    #[test]
    fn the_input_limit_is_signed_and_must_be_positive() {
        let mut m = manifest();
        m.max_input_bytes = 100;
        assert_eq!(Manifest::decode(&m.encode()).unwrap().max_input_bytes, 100);
        assert_ne!(m.digest(), manifest().digest());
        m.max_input_bytes = 0;
        assert_eq!(
            Manifest::decode(&m.encode()),
            Err(PackageError::Malformed("max input bytes is 0".into()))
        );
    }

    #[test]
    fn a_first_format_manifest_is_refused_with_what_to_do() {
        // The first format: no input limit after the modality.
        let mut bytes = manifest().encode();
        let limit_at = bytes.len() - (32 + 8 + 2 + 32) - 4;
        bytes.drain(limit_at..limit_at + 4);
        bytes[..8].copy_from_slice(MANIFEST_MAGIC_V1);
        let err = Manifest::decode(&bytes).unwrap_err();
        assert_eq!(err, PackageError::OldFormat);
        assert!(err.to_string().contains("soma-host sign"), "{err}");
    }

    #[test]
    fn an_input_limit_other_than_the_components_is_named() {
        let m = manifest();
        let mut info = EncoderInfo {
            name: m.name.clone(),
            version: m.version.clone(),
            dimension: m.dimension,
            modality: m.modality,
            max_input_bytes: m.max_input_bytes,
        };
        assert_eq!(m.check_info(&info), Ok(()));
        info.max_input_bytes = 16;
        assert_eq!(
            m.check_info(&info),
            Err("max input bytes: manifest says 4096, component says 16".into())
        );
    }
}
