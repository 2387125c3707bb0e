//! Which submitted transactions a node lets into its blocks.
//!
//! Admission is a node's own filter, not a rule of the chain: apply checks
//! every committed transaction again, deterministically, and a transaction
//! admitted here may still be refused there (its sender's balance may have
//! moved in between). Admission keeps out what can only waste block space:
//! bytes that are not a signed transaction for this chain, bad signatures,
//! fees below the minimum or beyond the balance, and nonces already used.
//!
//! One check here is also what keeps this validator's own account safe:
//! apply takes a transaction in a block its sender proposed as sent by that
//! sender (the block's signature stands for its own), so a transaction
//! naming this validator as sender enters the chain authenticated only by
//! this node's signature check on admission.

use crate::node::Shared;
use soma_codec::Decode;
use soma_consensus::{MIN_TRANSACTION_COST, Placement, TransactionVerifier};
use soma_execution::{Action, MAX_TRANSACTION_BYTES, SignedTransaction};
use std::sync::Arc;

/// How far ahead of an account's next nonce a transaction's may be.
pub const NONCE_WINDOW: u64 = 256;

/// Why a node does not admit a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Longer than any transaction may be.
    #[error("the transaction is {0} bytes; at most {MAX_TRANSACTION_BYTES} are allowed")]
    TooLarge(usize),
    /// The bytes do not decode as a signed transaction.
    #[error("not a signed transaction: {0}")]
    Malformed(String),
    /// Signed for another network.
    #[error("signed for chain {0}, not this one")]
    WrongChain(String),
    /// The signature does not verify for the sender.
    #[error("the signature does not verify for the sender")]
    BadSignature,
    /// The nonce was used already.
    #[error("nonce {got} was used already; the account's next nonce is {next}")]
    StaleNonce {
        /// The account's next nonce.
        next: u64,
        /// The transaction's.
        got: u64,
    },
    /// The nonce is further ahead of the account's next than
    /// [`NONCE_WINDOW`].
    #[error("nonce {got} is too far ahead; the account's next nonce is {next}")]
    FutureNonce {
        /// The account's next nonce.
        next: u64,
        /// The transaction's.
        got: u64,
    },
    /// The fee is below the protocol's minimum.
    #[error("the fee {fee} is below the minimum of {min}")]
    FeeTooLow {
        /// The transaction's fee.
        fee: u64,
        /// The minimum.
        min: u64,
    },
    /// The sender cannot pay the fee.
    #[error("the fee {fee} is more than the account's balance of {balance}")]
    InsufficientFunds {
        /// The transaction's fee.
        fee: u64,
        /// The sender's balance.
        balance: u64,
    },
    /// The sender could not pay this fee after as many fees for the nonces
    /// before it.
    #[error(
        "nonce {got} is {ahead} after the account's next, and {ahead} fees of {fee} before it \
         and this one would be more than its balance of {balance}"
    )]
    FeesBeyondBalance {
        /// The transaction's nonce.
        got: u64,
        /// How far ahead of the account's next nonce it is.
        ahead: u64,
        /// The transaction's fee.
        fee: u64,
        /// The sender's balance.
        balance: u64,
    },
    /// The node's state could not be read.
    #[error("the node's state cannot be read: {0}")]
    State(String),
}

/// Checks `bytes` against the node's state; the decoded transaction and
/// its place in the pool if it may enter a block.
pub(crate) fn admit(shared: &Shared, bytes: &[u8]) -> Result<Admitted, Refusal> {
    if bytes.len() > MAX_TRANSACTION_BYTES as usize {
        return Err(Refusal::TooLarge(bytes.len()));
    }
    let signed =
        SignedTransaction::from_bytes(bytes).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let tx = signed.transaction();
    if tx.chain_id != shared.chain_id {
        return Err(Refusal::WrongChain(hex::encode(tx.chain_id)));
    }
    let min = shared.parameters.min_fee;
    if tx.fee < min {
        return Err(Refusal::FeeTooLow { fee: tx.fee, min });
    }
    // Never skipped, not even for this validator's own key: its blocks
    // vouch for every transaction they carry from that key (see above).
    if !signed.verify() {
        return Err(Refusal::BadSignature);
    }
    let account = shared
        .state
        .account(&tx.sender)
        .map_err(|e| Refusal::State(e.to_string()))?;
    if tx.nonce < account.nonce {
        return Err(Refusal::StaleNonce {
            next: account.nonce,
            got: tx.nonce,
        });
    }
    // Apply refuses a nonce out of order without charging a fee, so one
    // far ahead could be sent again and again for free.
    if tx.nonce - account.nonce > NONCE_WINDOW {
        return Err(Refusal::FutureNonce {
            next: account.nonce,
            got: tx.nonce,
        });
    }
    if tx.fee > account.balance {
        return Err(Refusal::InsufficientFunds {
            fee: tx.fee,
            balance: account.balance,
        });
    }
    // Apply refuses a fee the balance cannot cover without charging it:
    // without this, one balance would back a whole window of nonces, each
    // claiming the priority of a fee only the first could pay.
    let ahead = tx.nonce - account.nonce;
    if u128::from(tx.fee) * u128::from(ahead + 1) > u128::from(account.balance) {
        return Err(Refusal::FeesBeyondBalance {
            got: tx.nonce,
            ahead,
            fee: tx.fee,
            balance: account.balance,
        });
    }
    let attests = matches!(tx.action, Action::Attest { .. })
        && shared
            .state
            .validator(&tx.sender)
            .map_err(|e| Refusal::State(e.to_string()))?
            .is_some();
    let placement = placement(&signed, bytes.len(), account.nonce, attests);
    Ok(Admitted { signed, placement })
}

/// A transaction that may enter a block, and where it waits for one.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The transaction.
    pub(crate) signed: SignedTransaction,
    /// Its place in the pool.
    pub(crate) placement: Placement,
}

/// Where an admitted transaction of `bytes` bytes waits for a block: in
/// its sender's lane at its nonce (continuing from the account's `next`
/// nonce), so a sender's transactions are proposed in nonce order, ranked
/// against other senders' by fee per byte of block space. A validator's
/// attestation goes before everything else: jobs finalise on attestations,
/// and user traffic that outbid them would let jobs expire.
fn placement(signed: &SignedTransaction, bytes: usize, next: u64, attests: bool) -> Placement {
    let tx = signed.transaction();
    // Fee per byte in 16.16 fixed point: fees that differ by less than a
    // unit per byte still rank apart.
    let per_byte = (u128::from(tx.fee) << 16) / bytes.max(MIN_TRANSACTION_COST) as u128;
    Placement {
        lane: tx.sender.to_bytes(),
        sequence: tx.nonce,
        priority: if attests {
            u64::MAX
        } else {
            u64::try_from(per_byte).unwrap_or(u64::MAX - 1)
        },
        expected: next,
    }
}

/// The consensus hook: peers' and clients' submissions pass [`admit`].
pub(crate) struct Admission(pub(crate) Arc<Shared>);

impl TransactionVerifier for Admission {
    fn verify(&self, transaction: &[u8]) -> Option<Placement> {
        admit(&self.0, transaction).ok().map(|a| a.placement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use soma_crypto::SecretKey;
    use soma_execution::{Action, Transaction};

    fn signed(key: &SecretKey, nonce: u64, fee: u64, action: Action) -> SignedTransaction {
        Transaction {
            chain_id: [1; 32],
            sender: key.public_key(),
            nonce,
            fee,
            action,
        }
        .sign(key)
    }

    #[test]
    fn transactions_wait_in_their_senders_lane_at_their_nonce_ranked_by_fee_per_byte() {
        use soma_codec::Encode;
        let alice = SecretKey::from_bytes(&[1; 32]);
        let transfer = Action::Transfer {
            to: SecretKey::from_bytes(&[2; 32]).public_key(),
            amount: 5,
        };
        let place = |t: &SignedTransaction| placement(t, t.to_bytes().len(), 7, false);
        let cheap = signed(&alice, 7, 10, transfer.clone());
        let dear = signed(&alice, 7, 11, transfer);
        let large = signed(
            &alice,
            8,
            11,
            Action::SubmitData {
                modality: soma_host::Modality::Text,
                data: vec![b'x'; 4_000],
                payment: 1_000,
            },
        );
        assert_eq!(place(&cheap).lane, alice.public_key().to_bytes());
        assert_eq!((place(&cheap).sequence, place(&large).sequence), (7, 8));
        assert!(place(&dear).priority > place(&cheap).priority);
        // The same fee for far more block space ranks lower.
        assert!(place(&large).priority < place(&cheap).priority / 10);
        assert!(place(&large).priority > 0);
        assert_eq!(place(&large).expected, 7);
        // A validator's attestation outranks any fee.
        let attestation = signed(
            &alice,
            7,
            10,
            Action::Attest {
                job: soma_host::Digest([3; 32]),
                results: vec![],
            },
        );
        let size = attestation.to_bytes().len();
        assert_eq!(placement(&attestation, size, 7, true).priority, u64::MAX);
        assert!(
            place(&signed(
                &alice,
                7,
                u64::MAX,
                Action::Transfer {
                    to: alice.public_key(),
                    amount: 1
                }
            ))
            .priority
                < u64::MAX
        );
    }
}
