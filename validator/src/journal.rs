//! Transactions this node accepted from clients (`202 Accepted`) and has
//! not seen committed yet, kept on disk: a node killed before it proposed
//! them submits them again when it starts, so an accepted transaction is
//! not lost with the process.
//!
//! Each is written, and handed to the operating system, before the client
//! hears it was accepted, so it survives the process being killed; a power
//! failure may still lose the last ones (their clients see them never
//! committed and sign them again). Submitting one twice executes it at
//! most once: apply refuses a nonce used already.
//!
//! One transaction per sender and nonce, as in the pool: a replacement that
//! [`outbid`]s the one it replaces takes its place. An entry goes
//! once its bytes are committed (applied or refused), once another
//! transaction uses its nonce, or once admission refuses it. The journal
//! holds at most [`MAX_JOURNALED`] transactions and [`MAX_JOURNAL_BYTES`].

use soma_codec::{Decode, Encode};
use soma_consensus::outbid;
use soma_crypto::PublicKey;
use soma_execution::{SignedTransaction, StateReader};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Most transactions the journal holds; past it, the API asks clients to
/// come back later.
pub(crate) const MAX_JOURNALED: usize = 100_000;

/// Most bytes of transactions the journal holds (as much as the pool).
pub(crate) const MAX_JOURNAL_BYTES: usize = 64 << 20;

/// A journal entry's key: the sender's public key, then the nonce (big
/// endian). Its value: the pool priority (big endian), then the signed
/// transaction.
type Key = [u8; 40];

/// Why a transaction was not journaled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    /// It holds as many transactions or bytes as it may.
    #[error("accepted transactions waiting for their commit fill the journal")]
    Full,
    /// The storage engine failed.
    #[error("the transaction journal: {0}")]
    Storage(#[from] fjall::Error),
}

/// What [`Journal::record`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Added it.
    Added,
    /// Put it in the place of these bytes (with their priority), which
    /// paid less.
    Replaced(Vec<u8>),
    /// Holds these bytes already.
    Held,
    /// Kept what it holds for the sender and nonce, which these bytes do
    /// not [`outbid`].
    Outbid,
}

/// The accepted transactions waiting for their commit.
pub(crate) struct Journal {
    db: fjall::Database,
    pending: fjall::Keyspace,
    /// What `pending` holds: apply looks up only what this node journaled.
    held: Mutex<Held>,
}

/// The size of each entry the journal holds, and their sum.
#[derive(Default)]
struct Held {
    sizes: BTreeMap<Key, usize>,
    bytes: usize,
}

impl Held {
    /// Notes that `key` now holds `size` bytes.
    fn set(&mut self, key: Key, size: usize) {
        let old = self.sizes.insert(key, size).unwrap_or(0);
        self.bytes = self.bytes - old + size;
    }

    /// Notes that `key` holds nothing now.
    fn remove(&mut self, key: &Key) {
        if let Some(size) = self.sizes.remove(key) {
            self.bytes -= size;
        }
    }
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

/// An entry's priority and transaction bytes, if it is well formed.
fn split(value: &[u8]) -> Option<(u64, &[u8])> {
    let (priority, transaction) = value.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*priority), transaction))
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    pub(crate) fn open(path: &Path) -> Result<Journal, JournalError> {
        let db = fjall::Database::builder(path).open()?;
        let pending = db.keyspace("pending", fjall::KeyspaceCreateOptions::default)?;
        let mut held = Held::default();
        for entry in pending.iter() {
            let (key, value) = entry.into_inner()?;
            // What is not an entry of this journal, `waiting` removes.
            if let Ok(key) = Key::try_from(&key[..]) {
                held.set(key, value.len());
            }
        }
        Ok(Journal {
            db,
            pending,
            held: Mutex::new(held),
        })
    }

    /// Records `signed`, placed in the pool at `priority`, before the
    /// client is told it was accepted: in the place of a transaction of
    /// its sender and nonce that it [`outbid`]s, as the pool does.
    pub(crate) fn record(
        &self,
        signed: &SignedTransaction,
        priority: u64,
    ) -> Result<Recorded, JournalError> {
        let key = key_of(signed);
        let bytes = signed.to_bytes();
        let mut value = priority.to_be_bytes().to_vec();
        value.extend(&bytes);
        let mut held = self.lock();
        let old = match held.sizes.get(&key) {
            Some(_) => self.pending.get(key)?,
            None => None,
        };
        match old.as_deref().and_then(split) {
            Some((_, same)) if same == bytes => return Ok(Recorded::Held),
            Some((kept, _)) if !outbid(priority, kept) => return Ok(Recorded::Outbid),
            _ => {}
        }
        let freed = old.as_ref().map_or(0, |o| o.len());
        if old.is_none() && held.sizes.len() >= MAX_JOURNALED
            || held.bytes - freed + value.len() > MAX_JOURNAL_BYTES
        {
            return Err(JournalError::Full);
        }
        let size = value.len();
        self.pending.insert(key, value)?;
        self.db.persist(fjall::PersistMode::Buffer)?;
        held.set(key, size);
        Ok(match old {
            Some(old) => Recorded::Replaced(old.to_vec()),
            None => Recorded::Added,
        })
    }

    /// Undoes what [`Journal::record`] did for `signed` (its submission
    /// failed), unless the entry changed since.
    pub(crate) fn undo(
        &self,
        signed: &SignedTransaction,
        recorded: Recorded,
    ) -> Result<(), JournalError> {
        match recorded {
            Recorded::Held | Recorded::Outbid => Ok(()),
            Recorded::Added => self.withdraw(signed),
            Recorded::Replaced(old) => {
                let bytes = signed.to_bytes();
                self.settle(key_of(signed), |held| held == &bytes[..], Some(old))
            }
        }
    }

    /// If `done` says so of the transaction the entry at `key` holds (or
    /// the entry does not decode), puts `then` in its place, or removes it
    /// if `then` is `None`.
    fn settle(
        &self,
        key: Key,
        done: impl FnOnce(&[u8]) -> bool,
        then: Option<Vec<u8>>,
    ) -> Result<(), JournalError> {
        let mut held = self.lock();
        if !held.sizes.contains_key(&key) {
            return Ok(());
        }
        let value = self.pending.get(key)?;
        if value
            .as_ref()
            .and_then(|v| split(v))
            .is_none_or(|(_, t)| done(t))
        {
            match then {
                Some(value) => {
                    held.set(key, value.len());
                    self.pending.insert(key, value)?;
                }
                None => {
                    held.remove(&key);
                    self.pending.remove(key)?;
                }
            }
        }
        Ok(())
    }

    /// Notes a committed transaction: if applied, its nonce is used and
    /// whatever the journal holds there can never apply; if refused, the
    /// journal forgets it only if it holds these very bytes.
    pub(crate) fn committed(
        &self,
        signed: &SignedTransaction,
        applied: bool,
    ) -> Result<(), JournalError> {
        // Encoded only for what the journal holds: apply calls this for
        // every committed transaction.
        self.settle(
            key_of(signed),
            |held| applied || held == &signed.to_bytes()[..],
            None,
        )
    }

    /// Forgets `signed` if it is what the journal holds (admission refuses
    /// it now).
    pub(crate) fn withdraw(&self, signed: &SignedTransaction) -> Result<(), JournalError> {
        let bytes = signed.to_bytes();
        self.settle(key_of(signed), |held| held == &bytes[..], None)
    }

    /// Transactions waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().sizes.len()
    }

    /// The transactions waiting whose nonces `state` has not used yet, in
    /// sender and nonce order; those it has used are forgotten, and so are
    /// entries that do not decode.
    pub(crate) fn waiting(
        &self,
        state: &StateReader,
    ) -> Result<Vec<SignedTransaction>, JournalError> {
        let mut waiting = Vec::new();
        for entry in self.pending.iter() {
            let (key, value) = entry.into_inner()?;
            let transaction = split(&value)
                .and_then(|(_, t)| SignedTransaction::from_bytes(t).ok())
                .filter(|t| key[..] == key_of(t)[..]);
            let unused = transaction.as_ref().is_some_and(|t| {
                state
                    .account(&t.transaction().sender)
                    .is_ok_and(|a| a.nonce <= t.transaction().nonce)
            });
            match transaction {
                Some(transaction) if unused => waiting.push(transaction),
                _ => {
                    let mut held = self.lock();
                    self.pending.remove(key.clone())?;
                    if let Ok(key) = Key::try_from(&key[..]) {
                        held.remove(&key);
                    }
                }
            }
        }
        Ok(waiting)
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
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
            let value = journal
                .pending
                .get(key(&alice.public_key(), nonce))
                .unwrap();
            value.map(|v| {
                let (_, t) = split(&v).unwrap();
                SignedTransaction::from_bytes(t).unwrap().transaction().fee
            })
        };
        let journal = Journal::open(dir.path()).unwrap();
        // Priorities here are eight times the fee.
        let first = transfer(&alice, 0, 10);
        assert_eq!(journal.record(&first, 80).unwrap(), Recorded::Added);
        assert_eq!(journal.record(&first, 80).unwrap(), Recorded::Held);
        // Less, or less than an eighth more, does not replace it.
        for fee in [5, 11] {
            let cheaper = transfer(&alice, 0, fee);
            let recorded = journal.record(&cheaper, 8 * fee).unwrap();
            assert_eq!(recorded, Recorded::Outbid);
            // Undoing what did not change the journal changes nothing.
            journal.undo(&cheaper, recorded).unwrap();
        }
        assert_eq!(held(&journal, 0), Some(10));
        let dearer = transfer(&alice, 0, 20);
        let replaced = journal.record(&dearer, 160).unwrap();
        assert!(matches!(replaced, Recorded::Replaced(_)));
        // A replacement whose submission failed gives the place back.
        journal.undo(&dearer, replaced).unwrap();
        assert_eq!(held(&journal, 0), Some(10));
        journal.record(&dearer, 160).unwrap();
        let next = transfer(&alice, 1, 10);
        journal.record(&next, 10).unwrap();
        assert_eq!((held(&journal, 0), journal.len()), (Some(20), 2));
        // A refused copy of other bytes leaves what it holds.
        journal.committed(&first, false).unwrap();
        journal.withdraw(&first).unwrap();
        assert_eq!(held(&journal, 0), Some(20));
        drop(journal);

        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.len(), 2);
        // Another transaction applied at nonce 0 uses it up.
        journal.committed(&first, true).unwrap();
        journal.committed(&next, false).unwrap();
        assert_eq!(
            (held(&journal, 0), held(&journal, 1), journal.len()),
            (None, None, 0)
        );
        assert_eq!(journal.lock().bytes, 0, "no bytes counted");
    }
}
