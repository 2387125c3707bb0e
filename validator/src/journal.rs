//! Transactions this node accepted from clients (`202 Accepted`) and has
//! not seen applied yet, kept on disk: a node killed before it proposed
//! them submits them again when it starts, so an accepted transaction is
//! not lost with the process.
//!
//! Each is written, and handed to the operating system, before the client
//! hears it was accepted, so it survives the process being killed; a power
//! failure may still lose the last ones (their clients see them never
//! committed and sign them again). Submitting one twice executes it at
//! most once: apply refuses a nonce used already.
//!
//! One transaction per sender and nonce, as in the pool: a replacement
//! that pays more takes the place of the one it replaces. So the journal
//! holds at most a nonce window per funded sender, and never more than
//! [`MAX_JOURNALED`] transactions.

use soma_codec::{Decode, Encode};
use soma_crypto::PublicKey;
use soma_execution::{SignedTransaction, StateReader};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Most transactions the journal holds; past it, the API asks clients to
/// come back later.
pub(crate) const MAX_JOURNALED: usize = 100_000;

/// A journal entry's key: the sender's public key, then the nonce (big
/// endian).
type Key = [u8; 40];

/// Why a transaction was not journaled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    /// It holds [`MAX_JOURNALED`] transactions already.
    #[error("{MAX_JOURNALED} accepted transactions wait for their commit already")]
    Full,
    /// The storage engine failed.
    #[error("the transaction journal: {0}")]
    Storage(#[from] fjall::Error),
}

/// The accepted transactions waiting to be applied.
pub(crate) struct Journal {
    db: fjall::Database,
    pending: fjall::Keyspace,
    /// The keys `pending` holds, so that apply looks up only the
    /// transactions this node journaled.
    keys: Mutex<BTreeSet<Key>>,
}

fn key(sender: &PublicKey, nonce: u64) -> Key {
    let mut key = [0; 40];
    key[..32].copy_from_slice(&sender.to_bytes());
    key[32..].copy_from_slice(&nonce.to_be_bytes());
    key
}

fn key_of(signed: &SignedTransaction) -> Key {
    key(&signed.transaction().sender, signed.transaction().nonce)
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    pub(crate) fn open(path: &Path) -> Result<Journal, JournalError> {
        let db = fjall::Database::builder(path).open()?;
        let pending = db.keyspace("pending", fjall::KeyspaceCreateOptions::default)?;
        let mut keys = BTreeSet::new();
        for entry in pending.iter() {
            // A key of another length is no entry of this journal;
            // `waiting` removes it.
            if let Ok(key) = Key::try_from(&entry.key()?[..]) {
                keys.insert(key);
            }
        }
        Ok(Journal {
            db,
            pending,
            keys: Mutex::new(keys),
        })
    }

    /// Records `signed` before the client is told it was accepted, in the
    /// place of a transaction of its sender and nonce that pays a lower
    /// fee (one that pays as much or more stays).
    pub(crate) fn record(&self, signed: &SignedTransaction) -> Result<(), JournalError> {
        let key = key_of(signed);
        let mut keys = self.lock();
        if keys.contains(&key) {
            let kept = self.pending.get(key)?;
            let outbid = kept
                .and_then(|bytes| SignedTransaction::from_bytes(&bytes).ok())
                .is_some_and(|kept| kept.transaction().fee >= signed.transaction().fee);
            if outbid {
                return Ok(());
            }
        } else if keys.len() >= MAX_JOURNALED {
            return Err(JournalError::Full);
        }
        self.pending.insert(key, signed.to_bytes())?;
        self.db.persist(fjall::PersistMode::Buffer)?;
        keys.insert(key);
        Ok(())
    }

    /// Forgets the transaction of `sender` at `nonce`: that nonce was used.
    pub(crate) fn forget(&self, sender: &PublicKey, nonce: u64) -> Result<(), JournalError> {
        let key = key(sender, nonce);
        if self.lock().remove(&key) {
            self.pending.remove(key)?;
        }
        Ok(())
    }

    /// Forgets `signed`, if it is what the journal holds at its sender and
    /// nonce (its submission failed).
    pub(crate) fn withdraw(&self, signed: &SignedTransaction) -> Result<(), JournalError> {
        let key = key_of(signed);
        let mut keys = self.lock();
        let held = self
            .pending
            .get(key)?
            .is_some_and(|bytes| bytes[..] == signed.to_bytes()[..]);
        if held {
            self.pending.remove(key)?;
            keys.remove(&key);
        }
        Ok(())
    }

    /// Transactions waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The transactions waiting whose nonces `state` has not used yet;
    /// those it has (applied, or overtaken by another transaction of the
    /// sender) are forgotten, and so are entries that do not decode.
    pub(crate) fn waiting(
        &self,
        state: &StateReader,
    ) -> Result<Vec<SignedTransaction>, JournalError> {
        let mut waiting = Vec::new();
        for entry in self.pending.iter() {
            let (key, bytes) = entry.into_inner()?;
            let transaction = SignedTransaction::from_bytes(&bytes)
                .ok()
                .filter(|t| key[..] == key_of(t)[..])
                .filter(|t| {
                    state
                        .account(&t.transaction().sender)
                        .is_ok_and(|a| a.nonce <= t.transaction().nonce)
                });
            match transaction {
                Some(transaction) => waiting.push(transaction),
                None => {
                    let mut keys = self.lock();
                    self.pending.remove(key.clone())?;
                    if let Ok(key) = Key::try_from(&key[..]) {
                        keys.remove(&key);
                    }
                }
            }
        }
        Ok(waiting)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<Key>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use soma_crypto::SecretKey;
    use soma_execution::{Action, Transaction};

    fn transfer(key: &SecretKey, nonce: u64, fee: u64) -> SignedTransaction {
        Transaction {
            chain_id: [1; 32],
            sender: key.public_key(),
            nonce,
            fee,
            action: Action::Transfer {
                to: key.public_key(),
                amount: 1,
            },
        }
        .sign(key)
    }

    #[test]
    fn one_transaction_per_sender_and_nonce_the_best_paying_kept_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let alice = SecretKey::from_bytes(&[1; 32]);
        let held = |journal: &Journal, nonce| {
            let bytes = journal
                .pending
                .get(key(&alice.public_key(), nonce))
                .unwrap();
            bytes.map(|b| SignedTransaction::from_bytes(&b).unwrap().transaction().fee)
        };
        let journal = Journal::open(dir.path()).unwrap();
        journal.record(&transfer(&alice, 0, 10)).unwrap();
        journal.record(&transfer(&alice, 0, 5)).unwrap();
        assert_eq!(
            held(&journal, 0),
            Some(10),
            "a cheaper replacement is not kept"
        );
        let dearer = transfer(&alice, 0, 20);
        journal.record(&dearer).unwrap();
        journal.record(&transfer(&alice, 1, 10)).unwrap();
        assert_eq!((held(&journal, 0), journal.len()), (Some(20), 2));
        // Withdrawing what it no longer holds leaves what it holds.
        journal.withdraw(&transfer(&alice, 0, 10)).unwrap();
        assert_eq!(held(&journal, 0), Some(20));
        drop(journal);

        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.len(), 2);
        journal.withdraw(&dearer).unwrap();
        journal.forget(&alice.public_key(), 1).unwrap();
        assert_eq!(
            (held(&journal, 0), held(&journal, 1), journal.len()),
            (None, None, 0)
        );
    }
}
