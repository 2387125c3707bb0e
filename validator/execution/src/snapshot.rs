//! A copy of the whole state after a commit, for a validator whose own
//! state is lost or diverged: it restores the copy and applies the commits
//! after it.
//!
//! A snapshot carries every state entry, the root after its commit, and
//! how that root was made from the one before ([`RootStep`]: everything
//! but the state's digest, which the receiver computes from the entries
//! itself). A receiver trusts a snapshot only for a root that validators
//! of a quorum of stake vouch for; its entries then cannot differ from the
//! state they applied, short of a collision of the state's lattice hash.

use crate::lattice::Lattice;
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};

const MAGIC: &[u8; 8] = b"SOMASNv1";

/// Most entries a snapshot may hold.
const MAX_SNAPSHOT_ENTRIES: u32 = 50_000_000;

/// Longest key of a state entry (the longest the state writes is 64).
const MAX_KEY_BYTES: u32 = 256;

/// Largest value of a state entry.
const MAX_VALUE_BYTES: u32 = 16 << 20;

/// How the root after commit `index` was made from the root before it:
/// the commit and its effects, less the state's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RootStep {
    /// The root before the commit.
    pub(crate) previous: [u8; 32],
    /// The commit's index.
    pub(crate) index: u64,
    /// The consensus digest of the commit.
    pub(crate) commit: [u8; 32],
    /// Digest of the commit's receipts.
    pub(crate) receipts: [u8; 32],
    /// Digest of the commit's writes.
    pub(crate) writes: [u8; 32],
}

impl RootStep {
    /// The root after the commit, with the state's lattice after it.
    pub(crate) fn root(&self, lattice: &Lattice) -> [u8; 32] {
        let mut w = Writer::new();
        w.array(&self.previous);
        w.u64(self.index);
        w.array(&self.commit);
        w.array(&self.receipts);
        w.array(&self.writes);
        w.array(&lattice.digest());
        blake3::derive_key("soma/state-root/v1", &w.into_bytes())
    }
}

impl Encode for RootStep {
    fn encode(&self, w: &mut Writer) {
        w.array(&self.previous);
        w.u64(self.index);
        w.array(&self.commit);
        w.array(&self.receipts);
        w.array(&self.writes);
    }
}

impl Decode<'_> for RootStep {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let previous = r.array("previous root")?;
        let index = r.u64("commit index")?;
        // The state after it has applied index + 1 commits.
        if index == u64::MAX {
            return Err(DecodeError::invalid("commit index", "past the last commit"));
        }
        Ok(RootStep {
            previous,
            index,
            commit: r.array("commit digest")?,
            receipts: r.array("receipts digest")?,
            writes: r.array("writes digest")?,
        })
    }
}

/// One state entry: keyspace, key, value.
pub(crate) type Entry = (u8, Vec<u8>, Vec<u8>);

/// The decoded form of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The chain it belongs to.
    pub(crate) chain_id: [u8; 32],
    /// The root after its commit.
    pub(crate) root: [u8; 32],
    /// How that root was made.
    pub(crate) step: RootStep,
    /// Every entry, by keyspace and key, each once.
    pub(crate) entries: Vec<Entry>,
}

impl Encode for Snapshot {
    fn encode(&self, w: &mut Writer) {
        w.array(MAGIC);
        w.array(&self.chain_id);
        w.array(&self.root);
        self.step.encode(w);
        w.count32(self.entries.len());
        for (space, key, value) in &self.entries {
            w.u8(*space);
            w.bytes32(key);
            w.bytes32(value);
        }
    }
}

impl<'a> Decode<'a> for Snapshot {
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        if &r.array::<8>("magic")? != MAGIC {
            return Err(DecodeError::invalid("magic", "not a Soma state snapshot"));
        }
        let chain_id = r.array("chain id")?;
        let root = r.array("root")?;
        let step = RootStep::decode(r)?;
        // Each entry takes at least 9 bytes: a count beyond what is left
        // is refused before anything is allocated for it.
        let count = r.count32("entries", MAX_SNAPSHOT_ENTRIES, 9)?;
        // An entry in memory is several times its smallest encoding: what
        // is reserved ahead is capped, the rest grows with what decodes.
        let mut entries: Vec<Entry> = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let entry = (
                r.u8("keyspace")?,
                r.bytes32("key", MAX_KEY_BYTES)?.to_vec(),
                r.bytes32("value", MAX_VALUE_BYTES)?.to_vec(),
            );
            if let Some(last) = entries.last()
                && (last.0, &last.1) >= (entry.0, &entry.1)
            {
                return Err(DecodeError::invalid(
                    "entries",
                    "not sorted by keyspace and key, each once",
                ));
            }
            entries.push(entry);
        }
        Ok(Snapshot {
            chain_id,
            root,
            step,
            entries,
        })
    }
}
