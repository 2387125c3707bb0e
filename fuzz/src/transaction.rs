//! Transactions (attestations among them), on arbitrary bytes: never a
//! panic; whatever decodes re-encodes to the same bytes and fits the size
//! limit; only a transaction its sender signed verifies.

use soma_codec::{Decode, Encode};
use soma_crypto::PublicKey;
use soma_execution::{
    Action, EncoderResult, MAX_TRANSACTION_BYTES, Outcome, SignedTransaction, Transaction,
};
use soma_host::{Digest, Modality};

/// Checks one input.
pub fn check(bytes: &[u8]) {
    if let Ok(transaction) = Transaction::from_bytes(bytes) {
        assert_eq!(
            transaction.to_bytes(),
            bytes,
            "transaction decoding is not canonical"
        );
    }
    let Ok(signed) = SignedTransaction::from_bytes(bytes) else {
        return;
    };
    assert_eq!(
        signed.to_bytes(),
        bytes,
        "signed transaction decoding is not canonical"
    );
    assert!(
        bytes.len() <= MAX_TRANSACTION_BYTES as usize,
        "a transaction over the limit decoded"
    );
    if signed.verify() {
        // Only the seeds' senders can sign; re-signing reproduces the
        // bytes (ed25519 is deterministic), so the signature was theirs.
        let sender = signed.transaction().sender;
        let key = (0..4)
            .map(crate::key)
            .find(|k| k.public_key() == sender)
            .unwrap_or_else(|| {
                panic!("a transaction of {sender:?}, whose key no one here holds, verified")
            });
        let again = signed.transaction().clone().sign(&key).to_bytes();
        assert_eq!(
            again, bytes,
            "a transaction verified without its sender's signature"
        );
    }
}

fn signed(nonce: u64, action: Action) -> Vec<u8> {
    Transaction {
        chain_id: [7; 32],
        sender: crate::key(0).public_key(),
        nonce,
        fee: 10,
        action,
    }
    .sign(&crate::key(0))
    .to_bytes()
}

/// One signed transaction of every kind.
pub fn seeds() -> Vec<Vec<u8>> {
    let to: PublicKey = crate::key(1).public_key();
    let package = Digest::of(b"package");
    let package_bytes = &crate::package::seeds()[0];
    let verified = soma_host::package::Package::decode(package_bytes)
        .and_then(|p| p.verify(None))
        .expect("the seed package verifies");
    let (manifest, signature) = verified.signed_manifest();
    let (manifest, signature) = (manifest.to_vec(), *signature);
    let results = vec![
        EncoderResult {
            outcome: Outcome::Ok,
            fuel: 12_345,
            loss: 700,
            embedding: vec![-3, 0, 65_536, 12],
        },
        EncoderResult {
            outcome: Outcome::Trap,
            fuel: 99,
            loss: 0,
            embedding: vec![],
        },
    ];
    [
        Action::Transfer { to, amount: 5 },
        Action::AddStake { amount: 1_000 },
        Action::WithdrawStake { amount: 10 },
        Action::RegisterEncoder {
            manifest,
            signature,
            bond: 1_000_000,
        },
        Action::DeregisterEncoder { package },
        Action::SubmitData {
            modality: Modality::Text,
            data: b"the quick brown fox".to_vec(),
            payment: 1_000,
        },
        Action::Attest {
            job: package,
            results,
        },
        Action::AddBond {
            package,
            amount: 1_000,
        },
    ]
    .into_iter()
    .zip(0..)
    .map(|(action, nonce)| signed(nonce, action))
    .chain([largest()])
    .collect()
}

/// A submission exactly as large as a transaction may be.
fn largest() -> Vec<u8> {
    let submit = |len: usize| {
        signed(
            0,
            Action::SubmitData {
                modality: Modality::Text,
                data: vec![b'x'; len],
                payment: 1,
            },
        )
    };
    let overhead = submit(0).len();
    let largest = submit(MAX_TRANSACTION_BYTES as usize - overhead);
    assert_eq!(largest.len(), MAX_TRANSACTION_BYTES as usize);
    largest
}
