//! Soma's one signature rule.
//!
//! Every signature in Soma (encoder packages, transactions, blocks, peer authentication) is
//! ed25519 over `blake3(domain tag ‖ message)`, checked with
//! [`ed25519_dalek::VerifyingKey::verify_strict`]. Validators must accept
//! exactly the same signatures or they fork, so this crate is the only place
//! that signs or verifies.
//!
//! The domain tag makes a signature valid for one kind of message only: a
//! package signature can never be replayed as a transaction signature. No tag
//! is a prefix of another, so `tag ‖ message` is unambiguous.

pub mod keyfile;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use std::fmt;

/// What a signature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    /// An encoder package manifest.
    EncoderPackage,
    /// A transaction.
    Transaction,
    /// A consensus block.
    Block,
    /// A validator proving its identity to a peer.
    PeerAuth,
    /// A validator vouching for the state root after a number of commits.
    StateRoot,
}

impl Domain {
    /// Every domain, for tests that check they are kept apart.
    pub const ALL: [Domain; 5] = [
        Domain::EncoderPackage,
        Domain::Transaction,
        Domain::Block,
        Domain::PeerAuth,
        Domain::StateRoot,
    ];

    /// The tag hashed in front of the message.
    pub fn tag(self) -> &'static str {
        match self {
            Domain::EncoderPackage => "soma/encoder-package/v1",
            Domain::Transaction => "soma/tx/v1",
            Domain::Block => "soma/block/v1",
            Domain::PeerAuth => "soma/peer-auth/v1",
            Domain::StateRoot => "soma/state-root-claim/v1",
        }
    }

    /// The 32 bytes actually signed for `message` in this domain.
    pub fn signing_digest(self, message: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.tag().as_bytes()).update(message);
        *hasher.finalize().as_bytes()
    }
}

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes are not a valid ed25519 public key.
    #[error("invalid ed25519 public key")]
    InvalidPublicKey,
    /// The signature does not verify for this key, domain and message.
    #[error("signature does not verify")]
    BadSignature,
    /// Text that should be hex-encoded key or signature bytes is not.
    #[error("expected {expected} hex-encoded bytes: {reason}")]
    BadHex {
        /// Number of bytes expected.
        expected: usize,
        /// What was wrong.
        reason: String,
    },
    /// The operating system's random source failed.
    #[error("cannot read the system random source: {0}")]
    Randomness(String),
}

/// An ed25519 secret key.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Randomness(e.to_string()))?;
        Ok(SecretKey::from_bytes(&seed))
    }

    /// The key with these 32 secret bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message` for `domain`.
    pub fn sign(&self, domain: Domain, message: &[u8]) -> Signature {
        Signature(self.0.sign(&domain.signing_digest(message)).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public_key())
    }
}

/// An ed25519 public key: 32 bytes checked to encode a curve point when
/// they came in ([`PublicKey::from_bytes`]), or read back from a record this
/// process stored after such a check ([`PublicKey::from_stored_bytes`]).
///
/// Kept compressed so that keys are cheap to copy and to carry in errors;
/// the point is decompressed (and so checked again) for a verification,
/// unless this thread decompressed the same bytes lately and holds the
/// point in its small cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

/// Slots of each thread's cache of decompressed keys.
const DECOMPRESSED_SLOTS: usize = 64;

thread_local! {
    /// Keys this thread decompressed lately, each in the slot its bytes
    /// pick. Decompressing costs about a tenth of a verification, and a
    /// transaction's sender is decompressed when it is decoded and again
    /// when its signature is checked, on the same thread; validators sign
    /// most transactions (attestations), a few keys again and again. A
    /// slot holds the point of exactly the bytes it was made from, so a
    /// hit gives what decompressing would.
    static DECOMPRESSED: std::cell::RefCell<[Option<VerifyingKey>; DECOMPRESSED_SLOTS]> =
        const { std::cell::RefCell::new([None; DECOMPRESSED_SLOTS]) };
}

/// The curve point `bytes` encode, if they encode one.
fn decompress(bytes: &[u8; 32]) -> Result<VerifyingKey, Error> {
    DECOMPRESSED.with_borrow_mut(|slots| {
        let slot = &mut slots[decompressed_slot(bytes)];
        if let Some(key) = slot.filter(|key| key.as_bytes() == bytes) {
            return Ok(key);
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| Error::InvalidPublicKey)?;
        *slot = Some(key);
        Ok(key)
    })
}

/// The cache slot of the key encoded as `bytes`: by its first byte, the
/// low byte of a coordinate of a point derived from a hash, so spread
/// evenly. A sender that picks keys to fill others' slots costs them only
/// the decompressions the cache would have saved.
fn decompressed_slot(bytes: &[u8; 32]) -> usize {
    usize::from(bytes[0]) % DECOMPRESSED_SLOTS
}

impl PublicKey {
    /// Parses 32 bytes, refusing those that are not a curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        decompress(bytes).map(|_| PublicKey(*bytes))
    }

    /// Takes 32 bytes that were a checked key when this process stored them
    /// (a record read back from its own state), without decompressing the
    /// point again: that costs about a tenth of a verification, and state
    /// records carry several keys. Never use it for bytes from outside.
    /// Bytes that are not a point (a corrupted store) fail every
    /// verification with [`Error::InvalidPublicKey`].
    pub fn from_stored_bytes(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    /// Parses the 64-character hex form [`fmt::Display`] prints.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        PublicKey::from_bytes(&decode_hex(text)?)
    }

    /// The 32 bytes of the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Checks that `signature` signs `message` for `domain` under this key,
    /// with ed25519-dalek's strict rule (no small-order keys or
    /// non-canonical encodings).
    pub fn verify(
        &self,
        domain: Domain,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), Error> {
        let key = decompress(&self.0)?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(&domain.signing_digest(message), &signature)
            .map_err(|_| Error::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

fn decode_hex<const N: usize>(text: &str) -> Result<[u8; N], Error> {
    let bad = |reason: String| Error::BadHex {
        expected: N,
        reason,
    };
    let bytes = hex::decode(text.trim()).map_err(|e| bad(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("got {} bytes", b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signature_verifies_for_its_key_domain_and_message_only() {
        let sig = key(1).sign(Domain::EncoderPackage, b"manifest");
        let pk = key(1).public_key();
        assert_eq!(pk.verify(Domain::EncoderPackage, b"manifest", &sig), Ok(()));
        assert_eq!(
            pk.verify(Domain::EncoderPackage, b"manifesT", &sig),
            Err(Error::BadSignature)
        );
        assert_eq!(
            key(2)
                .public_key()
                .verify(Domain::EncoderPackage, b"manifest", &sig),
            Err(Error::BadSignature)
        );
    }

    #[test]
    fn a_stored_key_verifies_as_the_checked_one_and_a_corrupted_one_never_does() {
        let sig = key(1).sign(Domain::Transaction, b"tx");
        let stored = PublicKey::from_stored_bytes(key(1).public_key().to_bytes());
        assert_eq!(stored, key(1).public_key());
        assert_eq!(stored.verify(Domain::Transaction, b"tx", &sig), Ok(()));
        let not_a_point = (0..=u8::MAX)
            .map(|b| [b; 32])
            .find(|bytes| PublicKey::from_bytes(bytes).is_err())
            .expect("some repeated byte is not a curve point");
        assert_eq!(
            PublicKey::from_stored_bytes(not_a_point).verify(Domain::Transaction, b"tx", &sig),
            Err(Error::InvalidPublicKey)
        );
    }

    #[test]
    fn keys_sharing_a_cache_slot_each_verify_as_themselves() {
        let slot = |k: &PublicKey| decompressed_slot(&k.0);
        let first = key(1).public_key();
        let n = (2..=u8::MAX)
            .find(|&n| slot(&key(n).public_key()) == slot(&first))
            .expect("one of keys 2 to 255 shares the slot of key 1");
        let second = key(n).public_key();
        let (by_first, by_second) = (
            key(1).sign(Domain::Transaction, b"tx"),
            key(n).sign(Domain::Transaction, b"tx"),
        );
        // Each evicts the other, in turn, twice.
        for _ in 0..2 {
            assert_eq!(first.verify(Domain::Transaction, b"tx", &by_first), Ok(()));
            assert_eq!(
                first.verify(Domain::Transaction, b"tx", &by_second),
                Err(Error::BadSignature)
            );
            assert_eq!(
                second.verify(Domain::Transaction, b"tx", &by_second),
                Ok(())
            );
            assert_eq!(
                second.verify(Domain::Transaction, b"tx", &by_first),
                Err(Error::BadSignature)
            );
        }
        // Bytes that are no point, in the slot of a key just used, are
        // still refused.
        assert_eq!(
            second.verify(Domain::Transaction, b"tx", &by_second),
            Ok(())
        );
        let not_a_point = (0..=u8::MAX)
            .map(|b| {
                let mut bytes = second.0;
                bytes[2..].fill(b);
                bytes
            })
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .expect("some filling is not a curve point");
        assert_eq!(
            PublicKey::from_bytes(&not_a_point),
            Err(Error::InvalidPublicKey)
        );
        assert_eq!(
            PublicKey::from_stored_bytes(not_a_point).verify(
                Domain::Transaction,
                b"tx",
                &by_second
            ),
            Err(Error::InvalidPublicKey)
        );
    }

    #[test]
    fn domains_are_separated() {
        for signed in Domain::ALL {
            let sig = key(3).sign(signed, b"the same bytes");
            for checked in Domain::ALL {
                let result = key(3).public_key().verify(checked, b"the same bytes", &sig);
                assert_eq!(
                    result.is_ok(),
                    signed == checked,
                    "{signed:?} checked as {checked:?}"
                );
            }
        }
        // Not a prefix of one another, so tag ‖ message cannot collide.
        for a in Domain::ALL {
            for b in Domain::ALL {
                assert!(a == b || !a.tag().starts_with(b.tag()));
            }
        }
    }

    #[test]
    fn strict_verification_refuses_a_small_order_key() {
        // The identity point: a small-order key that lax verification
        // accepts with a crafted signature.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let pk = PublicKey::from_bytes(&identity).unwrap();
        let mut sig = [0u8; 64];
        sig[0] = 1;
        assert_eq!(
            pk.verify(Domain::Transaction, b"anything", &Signature(sig)),
            Err(Error::BadSignature)
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let pk = key(4).public_key();
        assert_eq!(PublicKey::from_hex(&pk.to_string()), Ok(pk));
        assert!(matches!(
            PublicKey::from_hex("abcd"),
            Err(Error::BadHex { expected: 32, .. })
        ));
        assert!(matches!(
            PublicKey::from_hex("zz"),
            Err(Error::BadHex { .. })
        ));
    }
}
