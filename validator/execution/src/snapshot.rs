//! A copy of the whole state after a commit, for a validator whose own
//! state is lost or diverged: it restores the copy and applies the commits
//! after it.
//!
//! A snapshot is read a page at a time from a state pinned at one commit,
//! so neither side ever holds the whole state in memory. Every page carries
//! the root after that commit and how that root was made from the one
//! before ([`RootStep`]: everything but the state's digest, which the
//! receiver computes from the entries itself), then the next entries in
//! keyspace and key order, and whether they are the last. A receiver
//! trusts a snapshot only for a root that validators of a quorum of stake
//! vouch for; once the last page is in, its entries cannot differ from the
//! state they applied, short of a collision of the state's lattice hash.

use crate::lattice::{Lattice, StateSize, state_digest};
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};

/// Names the format of snapshots and of the state they carry (v3: a job's
/// results attested alike kept once).
const MAGIC: &[u8; 8] = b"SOMASNv3";

/// Longest key of a state entry (the longest the state writes is 64).
const MAX_KEY_BYTES: u32 = 256;

/// Largest value of a state entry.
const MAX_VALUE_BYTES: u32 = 16 << 20;

/// Bytes an entry takes in a page besides its key and value: its keyspace
/// and two lengths.
pub const ENTRY_OVERHEAD: usize = 9;

/// Encoded entries a page is cut after, when it has more to say.
pub const SNAPSHOT_PAGE_BYTES: usize = 4 << 20;

/// Largest encoded page: a page cut at [`SNAPSHOT_PAGE_BYTES`] may end in
/// one entry of the largest size, and a page cut at a smaller size too. A
/// receiver refuses a larger one before decoding it.
pub const MAX_SNAPSHOT_PAGE: usize =
    SNAPSHOT_PAGE_BYTES + MAX_VALUE_BYTES as usize + MAX_KEY_BYTES as usize + 1024;

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
        self.root_with(&lattice.digest())
    }

    /// The root after the commit, with the state's digest after it.
    pub(crate) fn root_with(&self, state_digest: &[u8; 32]) -> [u8; 32] {
        let mut w = Writer::new();
        w.array(&self.previous);
        w.u64(self.index);
        w.array(&self.commit);
        w.array(&self.receipts);
        w.array(&self.writes);
        w.array(state_digest);
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

/// The bytes that name the place of an entry, for asking for the page
/// after it: its keyspace, then its key.
pub(crate) fn cursor(space: u8, key: &[u8]) -> Vec<u8> {
    let mut cursor = Vec::with_capacity(1 + key.len());
    cursor.push(space);
    cursor.extend_from_slice(key);
    cursor
}

/// The keyspace and key a [`cursor`] names, if it could name an entry of a
/// state with `spaces` keyspaces.
pub(crate) fn parse_cursor(cursor: &[u8], spaces: usize) -> Result<(u8, &[u8]), DecodeError> {
    let (&space, key) = cursor
        .split_first()
        .ok_or_else(|| DecodeError::invalid("cursor", "empty"))?;
    if usize::from(space) >= spaces {
        return Err(DecodeError::invalid(
            "cursor",
            "not a keyspace of the state",
        ));
    }
    if key.len() > MAX_KEY_BYTES as usize {
        return Err(DecodeError::invalid("cursor", "longer than any key"));
    }
    Ok((space, key))
}

/// What every page of one snapshot says alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// The chain it belongs to.
    pub(crate) chain_id: [u8; 32],
    /// The root after its commit.
    pub(crate) root: [u8; 32],
    /// How that root was made.
    pub(crate) step: RootStep,
    /// The digest of the state's lattice lanes after the commit.
    pub(crate) lanes: [u8; 32],
    /// How much the state holds after the commit.
    pub(crate) size: StateSize,
}

impl Header {
    /// The root this header's parts make: a receiver checks it against
    /// the vouched root before it takes any entry, and so knows how much
    /// the whole snapshot holds.
    pub(crate) fn made_root(&self) -> [u8; 32] {
        self.step.root_with(&state_digest(&self.lanes, self.size))
    }
}

/// The decoded form of one page of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    /// The snapshot it is a page of.
    pub(crate) header: Header,
    /// The next entries, by keyspace and key, each once.
    pub(crate) entries: Vec<Entry>,
    /// Whether no entries follow these.
    pub(crate) last: bool,
}

impl Encode for Page {
    fn encode(&self, w: &mut Writer) {
        w.array(MAGIC);
        w.array(&self.header.chain_id);
        w.array(&self.header.root);
        self.header.step.encode(w);
        w.array(&self.header.lanes);
        w.u64(self.header.size.entries);
        w.u64(self.header.size.bytes);
        w.count32(self.entries.len());
        for (space, key, value) in &self.entries {
            w.u8(*space);
            w.bytes32(key);
            w.bytes32(value);
        }
        w.bool(self.last);
    }
}

impl<'a> Decode<'a> for Page {
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        if &r.array::<8>("magic")? != MAGIC {
            return Err(DecodeError::invalid("magic", "not a Soma state snapshot"));
        }
        let header = Header {
            chain_id: r.array("chain id")?,
            root: r.array("root")?,
            step: RootStep::decode(r)?,
            lanes: r.array("lattice lanes digest")?,
            size: StateSize {
                entries: r.u64("state entries")?,
                bytes: r.u64("state bytes")?,
            },
        };
        // Each entry takes at least 9 bytes: a count beyond what is left
        // is refused before anything is allocated for it.
        let count = r.count32("entries", (MAX_SNAPSHOT_PAGE / ENTRY_OVERHEAD) as u32, 9)?;
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
        let last = r.bool("last")?;
        Ok(Page {
            header,
            entries,
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Executor;

    /// A page of a snapshot of the state after commit `index`, its root
    /// made as a peer would make it.
    fn page_after(index: u64) -> Vec<u8> {
        let step = RootStep {
            previous: [1; 32],
            index,
            commit: [2; 32],
            receipts: [3; 32],
            writes: [4; 32],
        };
        let (lanes, size) = ([5; 32], StateSize::default());
        let header = Header {
            chain_id: [6; 32],
            root: step.root_with(&state_digest(&lanes, size)),
            step,
            lanes,
            size,
        };
        let page = Page {
            header,
            entries: vec![],
            last: true,
        };
        page.to_bytes()
    }

    /// A fuzz finding: a snapshot of the last commit index would claim a
    /// count of commits past `u64::MAX`. It is refused as it decodes.
    #[test]
    fn a_snapshot_after_the_last_commit_index_is_refused() {
        let err = Executor::snapshot_claim(&page_after(u64::MAX))
            .err()
            .unwrap();
        assert!(err.to_string().contains("past the last commit"), "{err}");
        let claim = Executor::snapshot_claim(&page_after(u64::MAX - 1)).unwrap();
        assert_eq!(claim.commits, u64::MAX);
    }
}
