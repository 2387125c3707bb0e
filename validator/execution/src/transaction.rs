//! Transactions: what an account asks the state machine to do, signed.
//!
//! ```text
//! signed      = u32 length ‖ transaction ‖ signature (64)
//! transaction = "SOMATXv2" ‖ chain id (32) ‖ sender (32) ‖ u64 nonce ‖ u64 fee ‖ action
//! action      = 0 ‖ recipient (32) ‖ u64 amount      transfer
//!             | 1 ‖ u64 amount                        add validator stake
//!             | 2 ‖ u64 amount                        withdraw validator stake
//!             | 3 ‖ u32 length ‖ manifest ‖ signature (64) ‖ u64 bond
//!                                                     register an encoder
//!             | 4 ‖ package digest (32)               deregister it
//!             | 5 ‖ u8 modality ‖ u64 payment ‖ u32 length ‖ data
//!                                                     submit data to embed
//!             | 6 ‖ job (32) ‖ attestation            a validator's results
//!             | 7 ‖ package digest (32) ‖ u64 amount  add to an encoder's bond
//! modality    = 0 text | 1 image | 2 audio | 3 bytes
//! attestation = u8 count ‖ (u8 outcome ‖ u64 fuel ‖ u32 loss ‖ u16 n ‖ i32 embedding * n)*
//! ```
//!
//! The encoding is canonical ([`soma_codec`]); the signature is the
//! sender's, in [`Domain::Transaction`], over the transaction's bytes, which
//! carry the chain id: a transaction never verifies on another network.

use crate::job::{Attestation, EncoderResult};
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};
use soma_crypto::{Domain, PublicKey, SecretKey, Signature};
use soma_host::{Digest, Modality};

/// Largest signed transaction, in bytes.
pub const MAX_TRANSACTION_BYTES: u32 = 64 * 1024;

/// Version 2 added the modality of submitted data.
const MAGIC: &[u8; 8] = b"SOMATXv2";

/// What a transaction does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Moves `amount` from the sender to `to`.
    Transfer {
        /// The recipient's account.
        to: PublicKey,
        /// Base units moved.
        amount: u64,
    },
    /// Moves `amount` from the sender's balance to its validator stake.
    AddStake {
        /// Base units staked.
        amount: u64,
    },
    /// Moves `amount` of the sender's validator stake back to its balance.
    WithdrawStake {
        /// Base units withdrawn.
        amount: u64,
    },
    /// Registers the encoder of a signed package, bonding `bond`. The
    /// sender must be the package's signer: the signed manifest proves it
    /// (the package is named by the manifest's digest).
    RegisterEncoder {
        /// The package's canonical manifest bytes.
        manifest: Vec<u8>,
        /// The signer's signature over them.
        signature: Signature,
        /// Base units bonded.
        bond: u64,
    },
    /// Deregisters an encoder the sender owns, returning its bond.
    DeregisterEncoder {
        /// The package's digest.
        package: Digest,
    },
    /// Moves `amount` from the sender's balance to the bond of an encoder
    /// it owns: what makes an encoder whose bond slashes and penalties
    /// wore below the minimum active again.
    AddBond {
        /// The package's digest.
        package: Digest,
        /// Base units added.
        amount: u64,
    },
    /// Asks the network to embed `data`, paying `payment` (held until the
    /// job is decided). The job's id is this transaction's digest.
    SubmitData {
        /// What kind of data it is. The network embeds one modality, text
        /// (every encoder it admits is a text encoder); apply refuses the
        /// others, so that admitting one later needs no new transaction
        /// encoding.
        modality: Modality,
        /// What to embed.
        data: Vec<u8>,
        /// Base units paid for the job.
        payment: u64,
    },
    /// A validator's results for a job: one per shard encoder, in shard
    /// order.
    Attest {
        /// The job.
        job: Digest,
        /// The results.
        results: Vec<EncoderResult>,
    },
}

/// A transaction before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The network it is for (the digest of its genesis).
    pub chain_id: [u8; 32],
    /// The account that signs and pays.
    pub sender: PublicKey,
    /// The sender's next nonce: transactions of one account apply in
    /// nonce order, each once.
    pub nonce: u64,
    /// Base units paid to the network for applying it.
    pub fee: u64,
    /// What it does.
    pub action: Action,
}

impl Transaction {
    /// Signs the transaction as `key`, which must be the sender's.
    pub fn sign(self, key: &SecretKey) -> SignedTransaction {
        let bytes = self.to_bytes();
        let signature = key.sign(Domain::Transaction, &bytes);
        SignedTransaction {
            digest: Digest::of(&bytes),
            transaction: self,
            bytes,
            signature,
        }
    }
}

/// A transaction with its sender's signature (not yet checked: see
/// [`SignedTransaction::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTransaction {
    transaction: Transaction,
    bytes: Vec<u8>,
    signature: Signature,
    digest: Digest,
}

impl SignedTransaction {
    /// The transaction.
    pub fn transaction(&self) -> &Transaction {
        &self.transaction
    }

    /// Its identity: the blake3 of the unsigned transaction's bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Whether the sender signed exactly these bytes.
    pub fn verify(&self) -> bool {
        self.transaction
            .sender
            .verify(Domain::Transaction, &self.bytes, &self.signature)
            .is_ok()
    }
}

/// A committed transaction as far as its bytes alone decide: decoded,
/// whether its sender signed it, and an attestation's results hashed. All
/// are pure functions of the bytes, so apply checks a commit's
/// transactions on every core (see [`check_all`]) before it takes them in
/// order.
pub(crate) struct Checked {
    /// The transaction.
    pub(crate) signed: SignedTransaction,
    /// Whether its sender is shown to have sent it: its sender proposed
    /// the block that carried it, or [`SignedTransaction::verify`] holds
    /// (false, unchecked, for a transaction of another chain).
    pub(crate) authenticated: bool,
    /// An authenticated attestation's results, each as its digest and
    /// encoding ([`EncoderResult::encoded`]), in the attestation's order:
    /// hashing them is a large part of what applying an attestation costs,
    /// done here off apply's thread. Empty for any other transaction.
    pub(crate) results: Vec<(Digest, Vec<u8>)>,
}

/// A committed transaction's bytes and, if known, the validator that
/// proposed the block carrying it.
pub(crate) struct Proposed<'a> {
    /// The bytes.
    pub(crate) bytes: &'a [u8],
    /// The proposer.
    pub(crate) proposer: Option<&'a PublicKey>,
}

/// Fewest transactions whose checks are spread across cores: below, the
/// hand-over to other threads costs more than it saves.
const PARALLEL_CHECKS: usize = 2;

/// Decodes and authenticates `transactions`, and hashes the results of
/// authenticated attestations, in order: `None` for bytes that are no
/// transaction. Signature checks are most of what applying a
/// transaction costs; they run on every core. One for another chain than
/// `chain` is refused for that before its signature matters, and one its
/// sender proposed needs none (the block's signature holds for it): their
/// signatures are not checked.
pub(crate) fn check_all(transactions: &[Proposed<'_>], chain: &[u8; 32]) -> Vec<Option<Checked>> {
    use rayon::prelude::*;
    let check = |proposed: &Proposed<'_>| {
        let signed = SignedTransaction::from_bytes(proposed.bytes).ok()?;
        let tx = signed.transaction();
        let authenticated =
            tx.chain_id == *chain && (proposed.proposer == Some(&tx.sender) || signed.verify());
        // Only an authenticated transaction is charged and acted on: others
        // cost no hashing.
        let results = match &tx.action {
            Action::Attest { results, .. } if authenticated => {
                results.iter().map(EncoderResult::encoded).collect()
            }
            _ => Vec::new(),
        };
        Some(Checked {
            signed,
            authenticated,
            results,
        })
    };
    match transactions.len() < PARALLEL_CHECKS {
        true => transactions.iter().map(check).collect(),
        false => transactions.par_iter().map(check).collect(),
    }
}

impl Encode for SignedTransaction {
    fn encode(&self, w: &mut Writer) {
        w.bytes32(&self.bytes);
        w.array(&self.signature.0);
    }
}

impl Decode<'_> for SignedTransaction {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bytes = r.bytes32("transaction", MAX_TRANSACTION_BYTES - 4 - 64)?;
        let transaction = Transaction::from_bytes(bytes)?;
        Ok(SignedTransaction {
            transaction,
            digest: Digest::of(bytes),
            bytes: bytes.to_vec(),
            signature: Signature(r.array("signature")?),
        })
    }
}

const TRANSFER: u8 = 0;
const ADD_STAKE: u8 = 1;
const WITHDRAW_STAKE: u8 = 2;
const REGISTER_ENCODER: u8 = 3;
const DEREGISTER_ENCODER: u8 = 4;
const SUBMIT_DATA: u8 = 5;
const ATTEST: u8 = 6;
const ADD_BOND: u8 = 7;

impl Encode for Transaction {
    fn encode(&self, w: &mut Writer) {
        w.raw(MAGIC);
        w.array(&self.chain_id);
        w.array(&self.sender.to_bytes());
        w.u64(self.nonce);
        w.u64(self.fee);
        match &self.action {
            Action::Transfer { to, amount } => {
                w.u8(TRANSFER);
                w.array(&to.to_bytes());
                w.u64(*amount);
            }
            Action::AddStake { amount } => {
                w.u8(ADD_STAKE);
                w.u64(*amount);
            }
            Action::WithdrawStake { amount } => {
                w.u8(WITHDRAW_STAKE);
                w.u64(*amount);
            }
            Action::RegisterEncoder {
                manifest,
                signature,
                bond,
            } => {
                w.u8(REGISTER_ENCODER);
                w.bytes32(manifest);
                w.array(&signature.0);
                w.u64(*bond);
            }
            Action::DeregisterEncoder { package } => {
                w.u8(DEREGISTER_ENCODER);
                w.array(&package.0);
            }
            Action::AddBond { package, amount } => {
                w.u8(ADD_BOND);
                w.array(&package.0);
                w.u64(*amount);
            }
            Action::SubmitData {
                modality,
                data,
                payment,
            } => {
                w.u8(SUBMIT_DATA);
                w.u8(modality.code());
                w.u64(*payment);
                w.bytes32(data);
            }
            Action::Attest { job, results } => {
                w.u8(ATTEST);
                w.array(&job.0);
                Attestation::encode_results(results, w);
            }
        }
    }
}

impl Decode<'_> for Transaction {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.take(8, "magic")? != MAGIC {
            return Err(DecodeError::invalid("magic", "not a Soma transaction"));
        }
        let chain_id = r.array("chain id")?;
        let sender = public_key(r, "sender")?;
        let nonce = r.u64("nonce")?;
        let fee = r.u64("fee")?;
        let action = match r.u8("action")? {
            TRANSFER => Action::Transfer {
                to: public_key(r, "recipient")?,
                amount: r.u64("amount")?,
            },
            ADD_STAKE => Action::AddStake {
                amount: r.u64("amount")?,
            },
            WITHDRAW_STAKE => Action::WithdrawStake {
                amount: r.u64("amount")?,
            },
            REGISTER_ENCODER => Action::RegisterEncoder {
                manifest: r.bytes32("manifest", MAX_TRANSACTION_BYTES)?.to_vec(),
                signature: Signature(r.array("package signature")?),
                bond: r.u64("bond")?,
            },
            DEREGISTER_ENCODER => Action::DeregisterEncoder {
                package: Digest(r.array("package")?),
            },
            ADD_BOND => Action::AddBond {
                package: Digest(r.array("package")?),
                amount: r.u64("amount")?,
            },
            SUBMIT_DATA => Action::SubmitData {
                modality: modality(r)?,
                payment: r.u64("payment")?,
                data: r.bytes32("data", MAX_TRANSACTION_BYTES)?.to_vec(),
            },
            ATTEST => Action::Attest {
                job: Digest(r.array("job")?),
                results: Attestation::decode(r)?.0,
            },
            tag => return Err(DecodeError::invalid("action", format!("unknown tag {tag}"))),
        };
        Ok(Transaction {
            chain_id,
            sender,
            nonce,
            fee,
            action,
        })
    }
}

/// A public key that is a valid ed25519 point.
pub(crate) fn public_key(r: &mut Reader<'_>, what: &'static str) -> Result<PublicKey, DecodeError> {
    PublicKey::from_bytes(&r.array(what)?)
        .map_err(|_| DecodeError::invalid(what, "not an ed25519 public key"))
}

/// A modality by its code.
fn modality(r: &mut Reader<'_>) -> Result<Modality, DecodeError> {
    let code = r.u8("modality")?;
    Modality::from_code(code)
        .ok_or_else(|| DecodeError::invalid("modality", format!("unknown code {code}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(key: &SecretKey) -> Transaction {
        Transaction {
            chain_id: [9; 32],
            sender: key.public_key(),
            nonce: 3,
            fee: 10,
            action: Action::Transfer {
                to: SecretKey::from_bytes(&[2; 32]).public_key(),
                amount: 500,
            },
        }
    }

    #[test]
    fn a_signed_transaction_round_trips_and_verifies() {
        let key = SecretKey::from_bytes(&[1; 32]);
        let signed = transfer(&key).sign(&key);
        let bytes = signed.to_bytes();
        let decoded = SignedTransaction::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, signed);
        assert!(decoded.verify());
        assert_eq!(decoded.to_bytes(), bytes);
    }

    #[test]
    fn a_changed_byte_or_another_signer_does_not_verify() {
        let key = SecretKey::from_bytes(&[1; 32]);
        let mut bytes = transfer(&key).sign(&key).to_bytes();
        // The last byte of the amount.
        let at = bytes.len() - 64 - 1;
        bytes[at] ^= 1;
        assert!(!SignedTransaction::from_bytes(&bytes).unwrap().verify());
        let other = SecretKey::from_bytes(&[3; 32]);
        assert!(!transfer(&key).sign(&other).verify());
    }

    #[test]
    fn unknown_actions_and_trailing_bytes_are_refused() {
        let key = SecretKey::from_bytes(&[1; 32]);
        let tx = transfer(&key).to_bytes();
        let mut unknown = tx.clone();
        unknown[8 + 32 + 32 + 8 + 8] = 9;
        assert!(matches!(
            Transaction::from_bytes(&unknown),
            Err(DecodeError::Invalid { what: "action", .. })
        ));
        let mut longer = tx.clone();
        longer.push(0);
        assert_eq!(
            Transaction::from_bytes(&longer),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_submission_keeps_its_modality_and_an_unknown_one_does_not_decode() {
        let key = SecretKey::from_bytes(&[1; 32]);
        let submission = |modality| Transaction {
            action: Action::SubmitData {
                modality,
                data: b"words".to_vec(),
                payment: 7,
            },
            ..transfer(&key)
        };
        for modality in Modality::ALL {
            let bytes = submission(modality).to_bytes();
            assert_eq!(Transaction::from_bytes(&bytes), Ok(submission(modality)));
        }
        let mut unknown = submission(Modality::Text).to_bytes();
        // The byte after the action's tag.
        unknown[8 + 32 + 32 + 8 + 8 + 1] = Modality::ALL.len() as u8;
        assert!(matches!(
            Transaction::from_bytes(&unknown),
            Err(DecodeError::Invalid {
                what: "modality",
                ..
            })
        ));
    }
}
