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
    let text = fs::read_to_string(path).map_err(io)?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyFileError::Malformed(name.clone()))?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// Creates a new file only its owner can read; fails if it exists.
pub fn private_file(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
