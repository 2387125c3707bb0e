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

use anyhow::{Context, Result};
use soma_codec::Decode;
use soma_execution::{SignedTransaction, StateReader};
use soma_host::Digest;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

/// The accepted transactions waiting for their commit.
pub(crate) struct Journal {
    db: fjall::Database,
    pending: fjall::Keyspace,
    /// The digests `pending` holds, so that a commit looks up only its own
    /// transactions that this node journaled.
    digests: Mutex<BTreeSet<Digest>>,
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    pub(crate) fn open(path: &Path) -> Result<Journal> {
        let db = fjall::Database::builder(path)
            .open()
            .with_context(|| format!("cannot open the journal at {}", path.display()))?;
        let pending = db.keyspace("pending", fjall::KeyspaceCreateOptions::default)?;
        let digests = pending
            .iter()
            .map(|entry| {
                let key = entry.key()?;
                let digest: [u8; 32] = key[..]
                    .try_into()
                    .context("a journal key is not a transaction digest")?;
                Ok(Digest(digest))
            })
            .collect::<Result<BTreeSet<Digest>>>()?;
        Ok(Journal {
            db,
            pending,
            digests: Mutex::new(digests),
        })
    }

    /// Records `signed` before the client is told it was accepted.
    pub(crate) fn record(&self, signed: &SignedTransaction) -> Result<()> {
        use soma_codec::Encode;
        let digest = signed.digest();
        self.pending.insert(digest.0, signed.to_bytes())?;
        self.db.persist(fjall::PersistMode::Buffer)?;
        self.lock().insert(digest);
        Ok(())
    }

    /// Forgets `digest`: committed, or never to be.
    pub(crate) fn forget(&self, digest: &Digest) -> Result<()> {
        if self.lock().remove(digest) {
            self.pending.remove(digest.0)?;
        }
        Ok(())
    }

    /// Transactions waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The transactions waiting whose nonces `state` has not used yet;
    /// those it has (committed, or overtaken by another transaction of
    /// the sender) are forgotten. Undecodable entries are forgotten too.
    pub(crate) fn waiting(&self, state: &StateReader) -> Result<Vec<SignedTransaction>> {
        let mut waiting = Vec::new();
        for entry in self.pending.iter() {
            let (key, bytes) = entry.into_inner()?;
            let transaction = SignedTransaction::from_bytes(&bytes).ok().filter(|t| {
                state
                    .account(&t.transaction().sender)
                    .is_ok_and(|a| a.nonce <= t.transaction().nonce)
            });
            match transaction {
                Some(transaction) => waiting.push(transaction),
                None => {
                    self.pending.remove(key.clone())?;
                    if let Ok(digest) = <[u8; 32]>::try_from(&key[..]) {
                        self.lock().remove(&Digest(digest));
                    }
                }
            }
        }
        Ok(waiting)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<Digest>> {
        self.digests.lock().unwrap_or_else(|e| e.into_inner())
    }
}
