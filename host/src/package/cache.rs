//! The compiled-component cache.
//!
//! Compiling a component takes milliseconds to seconds; loading its compiled
//! form takes microseconds. But loading compiled code is `unsafe`: the bytes
//! are machine code the process will jump into. So the cache only ever loads
//! bytes this node compiled itself: each entry carries a keyed blake3 MAC,
//! under a secret key that never leaves this node's data directory, over the
//! component digest, the engine's compatibility hash and the compiled bytes.
//! An entry that is corrupt, truncated, written by someone else or made by an
//! incompatible engine fails the check (or deserialisation) and is discarded
//! and recompiled.
//!
//! ```text
//! <dir>/cache.key                             32 random bytes, mode 0600
//! <dir>/compiled/<digest>-<engine hash>.cwasm MAC (32) ‖ compiled component
//! ```

use super::store::{StoreError, write_atomically};
use crate::digest::Digest;
use soma_crypto::keyfile::{KeyFileError, create_private, read_private};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// How a component was obtained from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A valid entry was loaded.
    Hit,
    /// There was no entry: the component was compiled and stored.
    Miss,
    /// The entry was invalid: it was discarded, and the component compiled
    /// and stored again.
    Recompiled,
}

/// Compiled components on disk, keyed by (component digest, engine).
pub struct CompiledCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl CompiledCache {
    /// Opens (creating if needed) the cache under `dir`, creating the node's
    /// cache key on first use.
    pub fn open(dir: impl Into<PathBuf>) -> Result<CompiledCache, StoreError> {
        let dir = dir.into();
        for sub in ["compiled", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| StoreError::Io {
                action: "cannot create",
                path,
                source,
            })?;
        }
        let key = load_or_create_key(&dir.join("cache.key"))?;
        Ok(CompiledCache { dir, key })
    }

    /// The compiled component stored for `digest` and `engine` when a valid
    /// entry exists; else the compilation of what `source` returns (the
    /// component to compile for that digest), stored for next time.
    pub(crate) fn component(
        &self,
        engine: &wasmtime::Engine,
        digest: &Digest,
        source: impl FnOnce() -> Result<Vec<u8>, crate::Error>,
    ) -> Result<(Component, CacheOutcome), crate::Error> {
        let engine_hash = engine_hash(engine);
        let path = self
            .dir
            .join("compiled")
            .join(format!("{digest}-{engine_hash:016x}.cwasm"));
        let outcome = match fs::read(&path) {
            Ok(entry) => match self.load(engine, digest, engine_hash, &entry) {
                Some(component) => return Ok((component, CacheOutcome::Hit)),
                None => {
                    tracing::warn!(path = %path.display(), "discarding invalid compiled-component cache entry");
                    let _ = fs::remove_file(&path);
                    CacheOutcome::Recompiled
                }
            },
            Err(_) => CacheOutcome::Miss,
        };
        let compiled = engine
            .precompile_component(&source()?)
            .map_err(|e| crate::Error::Compile(format!("{e:#}")))?;
        // Loading checks the instance layout, as compiling does uncached.
        // SAFETY: these bytes were produced by `precompile_component` on this
        // very engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &compiled) }
            .map_err(|e| crate::Error::compiling("", &e))?;
        let mut entry = self.mac(digest, engine_hash, &compiled).to_vec();
        entry.extend_from_slice(&compiled);
        // A cache that cannot be written is slower, not broken.
        if let Err(e) = write_atomically(&self.dir.join("tmp"), &path, &entry) {
            tracing::warn!("cannot write compiled-component cache entry: {e}");
        }
        Ok((component, outcome))
    }

    /// Deserialises an entry if and only if its MAC proves this node wrote it.
    fn load(
        &self,
        engine: &wasmtime::Engine,
        digest: &Digest,
        engine_hash: u64,
        entry: &[u8],
    ) -> Option<Component> {
        let (mac, compiled) = entry.split_first_chunk::<32>()?;
        if blake3::Hash::from(*mac) != blake3::Hash::from(self.mac(digest, engine_hash, compiled)) {
            return None;
        }
        // SAFETY: the MAC, under a key only this node holds, shows that this
        // node wrote exactly these bytes from `precompile_component` for this
        // component and this engine configuration.
        unsafe { Component::deserialize(engine, compiled) }.ok()
    }

    fn mac(&self, digest: &Digest, engine_hash: u64, compiled: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher
            .update(&digest.0)
            .update(&engine_hash.to_le_bytes())
            .update(compiled);
        *hasher.finalize().as_bytes()
    }
}

/// What else decides an entry's bytes: entries hold pre-initialised
/// snapshots, and a host release may pre-initialise differently.
const PRODUCER: &str = concat!("soma-host ", env!("CARGO_PKG_VERSION"), ", preinit v1");

/// Identifies the engine configuration (and host release) compiled code is
/// valid for.
fn engine_hash(engine: &wasmtime::Engine) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    PRODUCER.hash(&mut hasher);
    hasher.finish()
}

fn load_or_create_key(path: &Path) -> Result<[u8; 32], StoreError> {
    let fail = |action, source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let read = || match read_private(path) {
        Ok(bytes) => bytes.try_into().map(Some).map_err(|b: Vec<u8>| {
            let found = io::Error::other(format!("{} bytes, expected 32", b.len()));
            fail("invalid cache key in", found)
        }),
        Err(KeyFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(fail(
            "cannot use the cache key",
            io::Error::other(e.to_string()),
        )),
    };
    if let Some(key) = read()? {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| fail("cannot generate", io::Error::other(e.to_string())))?;
    // Created whole or not at all; if another process won the race, its key
    // is the one.
    if create_private(path, &key).map_err(|e| fail("cannot create", e))? {
        return Ok(key);
    }
    read()?.ok_or_else(|| fail("cannot read", io::ErrorKind::NotFound.into()))
}
