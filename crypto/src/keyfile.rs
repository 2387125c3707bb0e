//! Secret keys on disk: hex text in a file only its owner can read.

use crate::SecretKey;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file exists; keys are never overwritten.
    #[error("{0} already exists; refusing to overwrite a key (delete it first if you mean to)")]
    Exists(String),
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file does not hold a hex-encoded 32-byte key.
    #[error("{0} does not hold a secret key (expected 64 hex characters)")]
    Malformed(String),
    /// Others may read the file.
    #[error("{0} is readable by other users; run `chmod 600` on it")]
    TooOpen(String),
    /// No randomness for a new key.
    #[error("cannot generate a key: {0}")]
    Crypto(#[from] crate::Error),
}

/// Writes `key` to a new file at `path` with mode 0600.
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), KeyFileError> {
    let name = path.display().to_string();
    let mut file = private_file(path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => KeyFileError::Exists(name.clone()),
        _ => KeyFileError::Io {
            path: name.clone(),
            source,
        },
    })?;
    let text = format!("{}\n", hex::encode(key.to_bytes()));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyFileError::Io { path: name, source })
}

/// Reads a key written by [`write_secret_key`], refusing a file others can read.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, KeyFileError> {
    let name = path.display().to_string();
    let text = String::from_utf8_lossy(&read_private(path)?).into_owned();
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyFileError::Malformed(name.clone()))?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// Reads a file that only its owner may read, refusing one others can.
pub fn read_private(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let name = path.display().to_string();
    let io = |source| KeyFileError::Io {
        path: name.clone(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if fs::metadata(path).map_err(io)?.permissions().mode() & 0o077 != 0 {
            return Err(KeyFileError::TooOpen(name));
        }
    }
    fs::read(path).map_err(io)
}

/// Creates `path` holding `bytes`, readable by its owner only, all at once:
/// the file appears complete or not at all. Returns `false`, writing
/// nothing, if the file already exists.
pub fn create_private(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = private_file(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    });
    let _ = fs::remove_file(&tmp);
    linked
}

/// Creates a new file only its owner can read; fails if it exists.
pub fn private_file(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
