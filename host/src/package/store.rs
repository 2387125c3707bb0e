//! The content-addressed blob store and the package registry on disk.
//!
//! ```text
//! <dir>/blobs/<digest>       one file per blob, named by its blake3
//! <dir>/packages/<digest>    signed manifest of each installed package
//! <dir>/tmp/                 where files are written before their rename
//! ```
//!
//! Writes are atomic: a file is written and synced under `tmp/`, then renamed
//! into place, so a crash leaves either the whole blob or nothing. Blob
//! reads verify the digest, so a blob damaged on disk is reported, never
//! used; [`BlobStore::manifest`] alone reads a package's manifest without
//! its blobs, for showing it, never for running it.

use super::{Manifest, Package, PackageError, VerifiedPackage};
use crate::digest::Digest;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// No blob with this digest is stored.
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
    /// The stored bytes no longer hash to their name.
    #[error("stored blob {expected} is corrupt (its bytes hash to {actual}); it was removed")]
    Corrupt {
        /// The name of the file.
        expected: Digest,
        /// The digest of what was read.
        actual: Digest,
    },
    /// A stored package no longer verifies.
    #[error("stored package {digest} is invalid: {source}")]
    InvalidPackage {
        /// Which package.
        digest: Digest,
        /// Why.
        source: PackageError,
    },
}

/// Blobs by digest, plus the manifests of installed packages. Clones
/// share the directory (writes go through `tmp/` and a rename, so
/// concurrent writers never expose a partial blob).
#[derive(Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobStore, StoreError> {
        let dir = dir.into();
        for sub in ["blobs", "packages", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_error("cannot create", &path))?;
        }
        Ok(BlobStore { dir })
    }

    /// Stores `bytes` and returns their digest; storing a blob twice is a
    /// no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomically(&self.dir.join("tmp"), &path, bytes)?;
        }
        Ok(digest)
    }

    /// Reads the blob `digest`, checking that its bytes still hash to it. A
    /// corrupt blob is deleted so that it can be fetched again.
    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = read_named(&path, digest)?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            // Best effort: the error is reported whether or not removal works.
            let _ = fs::remove_file(&path);
            return Err(StoreError::Corrupt {
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Whether the blob `digest` is stored (without verifying it).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }

    /// Whether the package `digest` is installed (without verifying it).
    pub fn has_package(&self, digest: &Digest) -> bool {
        self.dir.join("packages").join(digest.to_string()).exists()
    }

    /// Stores a verified package: its blobs first, then its signed manifest,
    /// so an installed package always has all its blobs.
    pub fn install(&self, package: &VerifiedPackage) -> Result<Digest, StoreError> {
        self.put(package.component())?;
        for (_, bytes) in package.models() {
            self.put(bytes)?;
        }
        let header = package.header();
        let digest = package.digest();
        let path = self.dir.join("packages").join(digest.to_string());
        write_atomically(&self.dir.join("tmp"), &path, &header)?;
        Ok(digest)
    }

    /// The manifest of an installed package, read without its blobs and
    /// not verified again: for showing what a package is, never for
    /// running it.
    pub fn manifest(&self, digest: &Digest) -> Result<Manifest, StoreError> {
        Ok(self.header(digest)?.1)
    }

    /// An installed package's header file and the manifest in it.
    fn header(&self, digest: &Digest) -> Result<(Vec<u8>, Manifest), StoreError> {
        let header = read_named(&self.dir.join("packages").join(digest.to_string()), digest)?;
        let manifest =
            Package::decode_header(&header).map_err(|source| StoreError::InvalidPackage {
                digest: *digest,
                source,
            })?;
        Ok((header, manifest))
    }

    /// Loads and re-verifies an installed package.
    pub fn package(&self, digest: &Digest) -> Result<VerifiedPackage, StoreError> {
        let (header, manifest) = self.header(digest)?;
        let invalid = |source| StoreError::InvalidPackage {
            digest: *digest,
            source,
        };
        let component = self.get(&manifest.component.digest)?;
        let models = manifest
            .models
            .iter()
            .map(|m| self.get(&m.blob.digest))
            .collect::<Result<_, _>>()?;
        let package = Package::from_parts(&header, component, models)
            .and_then(|p| p.verify(None))
            .map_err(invalid)?;
        if package.digest() != *digest {
            return Err(invalid(PackageError::Malformed(format!(
                "file holds package {}",
                package.digest()
            ))));
        }
        Ok(package)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join(digest.to_string())
    }
}

/// Writes `bytes` to `path` through a synced temporary file in `tmp` and a
/// rename, so that `path` never holds a partial file.
pub(crate) fn write_atomically(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let tmp_path = tmp.join(name);
    let result = (|| {
        let mut file = fs::File::create(&tmp_path).map_err(io_error("cannot create", &tmp_path))?;
        file.write_all(bytes)
            .map_err(io_error("cannot write", &tmp_path))?;
        file.sync_all()
            .map_err(io_error("cannot sync", &tmp_path))?;
        fs::rename(&tmp_path, path).map_err(io_error("cannot move into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

/// Reads the stored file `path` named after `digest`; a missing file is
/// [`StoreError::NotFound`].
fn read_named(path: &Path, digest: &Digest) -> Result<Vec<u8>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*digest)),
        Err(e) => Err(io_error("cannot read", path)(e)),
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}
