//! Starting a validator's consensus at a committed index instead of at
//! genesis, for a validator whose peers no longer keep the blocks it
//! missed: its state is restored from a snapshot taken after commit N, and
//! its consensus resumes after N.
//!
//! What consensus needs there is the tail of the commit log: the commits
//! whose leaders are at most `gc_depth` rounds below N's (what a restart
//! reloads), so the linearizer never commits a block twice. Those records
//! come from a peer, so they are checked: commit digests chain (each covers
//! the one before), and N's digest is bound by the state root that a
//! quorum vouched for. The blocks themselves come afterwards, by replaying
//! rounds from the retention floor on.
//!
//! ```text
//! GET /consensus/v1/commit-records?from=I&limit=L
//!     answer: u32 count ‖ record*
//! record = u64 index ‖ previous digest (32) ‖ leader ‖ u32 count ‖ block*
//! ```

use crate::block::{BlockRef, Round};
use crate::store::{CommitProgress, CommitRecord, Store, StoreBatch, StoreError, gc_round};
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};

/// Most records one answer carries.
pub const MAX_RECORDS: usize = 2_000;

/// Most blocks one record may name: far more than any commit holds, and a
/// bound on what decoding one record allocates (besides the bytes left,
/// which the count is checked against first).
const MAX_RECORD_BLOCKS: u32 = 1 << 20;

/// Why commit records cannot seed a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// No records at all.
    #[error("no commit records")]
    Empty,
    /// Indices are not consecutive.
    #[error("commit records are not consecutive: {after} is followed by {next}")]
    Gap {
        /// An index.
        after: u64,
        /// The index that follows it in the records.
        next: u64,
    },
    /// A record does not name the digest of the one before it.
    #[error("commit {index} does not follow from the commit before it")]
    Broken {
        /// The record that breaks the chain.
        index: u64,
    },
    /// The last record is not the trusted commit.
    #[error(
        "the last commit record ({index}) has digest {}, but the trusted one is {}",
        hex::encode(.found),
        hex::encode(.trusted)
    )]
    Untrusted {
        /// Its index.
        index: u64,
        /// Its digest.
        found: [u8; 32],
        /// The digest it should have.
        trusted: [u8; 32],
    },
    /// The records do not reach back far enough.
    #[error(
        "the commit records start at commit {first} (leader round {round}); they must reach \
         below round {needed}, the garbage-collection round after the last one"
    )]
    TooShort {
        /// The first record's index.
        first: u64,
        /// Its leader's round.
        round: Round,
        /// The round the records must reach below.
        needed: Round,
    },
}

/// The tail of a commit log, checked to end in a trusted commit.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    records: Vec<CommitRecord>,
}

impl Checkpoint {
    /// Checks `records` (consecutive, oldest first): they chain, the last
    /// one has digest `trusted`, and they reach back to the first commit
    /// or below the garbage-collection round (`gc_depth` below the last
    /// leader). Records before the ones needed are dropped.
    pub fn verify(
        mut records: Vec<CommitRecord>,
        trusted: [u8; 32],
        gc_depth: Round,
    ) -> Result<Checkpoint, CheckpointError> {
        let last = records.last().ok_or(CheckpointError::Empty)?;
        let needed = gc_round(last.leader.round, gc_depth);
        if last.digest() != trusted {
            return Err(CheckpointError::Untrusted {
                index: last.index,
                found: last.digest(),
                trusted,
            });
        }
        // Checked before the chain is hashed: a reader fetching the log
        // backwards page by page learns it needs more without hashing
        // every page again.
        let first = &records[0];
        if first.index != 0 && first.leader.round >= needed {
            return Err(CheckpointError::TooShort {
                first: first.index,
                round: first.leader.round,
                needed,
            });
        }
        for pair in records.windows(2) {
            if pair[0].index.checked_add(1) != Some(pair[1].index) {
                return Err(CheckpointError::Gap {
                    after: pair[0].index,
                    next: pair[1].index,
                });
            }
            if pair[1].previous != pair[0].digest() {
                return Err(CheckpointError::Broken {
                    index: pair[1].index,
                });
            }
        }
        // What a restart reloads: the commits of leaders not collected.
        let keep = records
            .iter()
            .position(|r| r.leader.round >= needed)
            .unwrap_or(records.len() - 1);
        records.drain(..keep);
        Ok(Checkpoint { records })
    }

    /// The index of the trusted commit.
    pub fn last_index(&self) -> u64 {
        self.records.last().expect("never empty").index
    }

    /// Writes the checkpoint into `store` (new and empty) for `committee`
    /// (a [`crate::Committee::digest`]), with the reference of the
    /// validator's own last block, if it had one, so that it never signs a
    /// round twice. Consensus opened on the store resumes after the
    /// trusted commit.
    pub fn seed(
        self,
        store: &mut dyn Store,
        committee: [u8; 32],
        own_last: Option<BlockRef>,
    ) -> Result<(), StoreError> {
        store.bind(committee)?;
        let last = self.records.last().expect("never empty");
        let progress = CommitProgress {
            last_decided: last.leader.round,
            last_committed: last.leader.round,
            next_index: last.index + 1,
        };
        store.write(StoreBatch {
            commits: self.records,
            progress: Some(progress),
            own_last,
            ..StoreBatch::default()
        })
    }
}

impl Encode for CommitRecord {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.index);
        w.array(&self.previous);
        self.leader.encode(w);
        w.count32(self.blocks.len());
        self.blocks.iter().for_each(|b| b.encode(w));
    }
}

impl Decode<'_> for CommitRecord {
    fn decode(r: &mut Reader<'_>) -> Result<CommitRecord, DecodeError> {
        let index = r.u64("commit index")?;
        let previous = r.array("previous commit digest")?;
        let leader = BlockRef::decode(r)?;
        let count = r.count32(
            "committed blocks",
            MAX_RECORD_BLOCKS,
            BlockRef::ENCODED_BYTES,
        )?;
        let blocks = (0..count)
            .map(|_| BlockRef::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(CommitRecord {
            index,
            leader,
            blocks,
            previous,
        })
    }
}

/// The wire form of an answer of commit records.
pub fn encode_records(records: &[CommitRecord]) -> Vec<u8> {
    let mut w = Writer::new();
    w.count32(records.len());
    records.iter().for_each(|r| r.encode(&mut w));
    w.into_bytes()
}

/// Parses an answer of commit records (at most [`MAX_RECORDS`]).
pub fn decode_records(bytes: &[u8]) -> Result<Vec<CommitRecord>, DecodeError> {
    let mut r = Reader::new(bytes);
    let min = 8 + 32 + BlockRef::ENCODED_BYTES + 4;
    let count = r.count32("commit records", MAX_RECORDS as u32, min)?;
    let records = (0..count)
        .map(|_| CommitRecord::decode(&mut r))
        .collect::<Result<_, _>>()?;
    r.finish()?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::committee::AuthorityIndex;
    use crate::linearizer::NO_COMMIT;
    use crate::store::MemStore;

    /// `count` chained records, one leader every round from round 1.
    fn chain(count: u64) -> Vec<CommitRecord> {
        let mut previous = NO_COMMIT;
        (0..count)
            .map(|index| {
                let round = index as Round + 1;
                let leader = BlockRef {
                    round,
                    author: AuthorityIndex((index % 4) as u32),
                    digest: [index as u8; 32],
                };
                let record = CommitRecord {
                    index,
                    leader,
                    blocks: vec![leader],
                    previous,
                };
                previous = record.digest();
                record
            })
            .collect()
    }

    #[test]
    fn a_chained_tail_ending_in_the_trusted_commit_seeds_a_store() {
        let records = chain(40);
        let trusted = records[39].digest();
        let checkpoint = Checkpoint::verify(records.clone(), trusted, 10).unwrap();
        assert_eq!(checkpoint.last_index(), 39);
        let mut store = MemStore::new();
        checkpoint.seed(&mut store, [9; 32], None).unwrap();
        let recovered = store.recover(10).unwrap();
        assert_eq!(
            recovered.progress,
            CommitProgress {
                last_decided: 40,
                last_committed: 40,
                next_index: 40,
            }
        );
        // What a restart reloads: leaders from the collection round (30) on.
        assert_eq!(recovered.commits, records[29..]);
        assert!(recovered.blocks.is_empty() && recovered.own_last.is_none());
        // Bound to its committee.
        assert!(store.bind([8; 32]).is_err());

        let bytes = encode_records(&records);
        assert_eq!(decode_records(&bytes).unwrap(), records);
    }

    #[test]
    fn a_tail_that_breaks_the_chain_or_ends_elsewhere_or_stops_short_is_refused() {
        let records = chain(40);
        let trusted = records[39].digest();
        let verify = |records: Vec<CommitRecord>| Checkpoint::verify(records, trusted, 10);
        assert_eq!(verify(Vec::new()).unwrap_err(), CheckpointError::Empty);

        let mut forged = records.clone();
        let extra = forged[34].leader;
        forged[35].blocks.push(extra);
        assert_eq!(
            verify(forged).unwrap_err(),
            CheckpointError::Broken { index: 36 }
        );

        let mut gap = records.clone();
        gap.remove(20);
        assert_eq!(
            verify(gap).unwrap_err(),
            CheckpointError::Gap {
                after: 19,
                next: 21
            }
        );

        assert!(matches!(
            verify(records[..39].to_vec()).unwrap_err(),
            CheckpointError::Untrusted { index: 38, .. }
        ));
        assert_eq!(
            verify(records[30..].to_vec()).unwrap_err(),
            CheckpointError::TooShort {
                first: 30,
                round: 31,
                needed: 30
            }
        );

        // Truncated and oversized answers do not decode.
        let bytes = encode_records(&records);
        assert!(decode_records(&bytes[..bytes.len() - 1]).is_err());
        let mut huge = Writer::new();
        huge.count32(MAX_RECORDS + 1);
        assert!(decode_records(&huge.into_bytes()).is_err());
    }
}
