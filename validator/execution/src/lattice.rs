//! A digest of the whole state that one commit's writes update in time
//! proportional to the writes, not to the state: a lattice hash.
//!
//! Each (keyspace, key, value) entry hashes (blake3 in extended-output mode)
//! to [`LANES`] 16-bit lanes; the state's lattice is the lane-wise sum,
//! wrapping, of its entries' hashes. A write subtracts the entry it
//! replaces and adds the new one, so the lattice depends only on which
//! entries the state holds, never on the order they were written in.
//! Finding two different states with one lattice is as hard as a short
//! vector problem over the lanes (Bellare and Micciancio's LtHash, with the
//! parameters of Lewi et al., "Securing Update Propagation with Homomorphic
//! Hashing", 2019: 1024 lanes of 16 bits).
//!
//! The state root folds in the lattice's [`Lattice::digest`]: a digest of
//! the lanes and of how many entries and bytes the state holds. So a root
//! pins down the whole state after its commit, and its size: a copy of a
//! state can be checked against a root that validators of a quorum of
//! stake vouch for, and held to that size while it arrives.

use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};

/// Lanes of a lattice.
pub(crate) const LANES: usize = 1024;

/// The lattice hash of a set of state entries, with how many entries and
/// bytes of keys and values the set holds.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Lattice {
    lanes: Box<[u16; LANES]>,
    size: StateSize,
}

/// How much a state holds: what a copy of it may be held to before its
/// entries are all in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StateSize {
    /// Entries.
    pub(crate) entries: u64,
    /// Bytes of their keys and values.
    pub(crate) bytes: u64,
}

impl Default for Lattice {
    fn default() -> Self {
        Lattice {
            lanes: Box::new([0; LANES]),
            size: StateSize::default(),
        }
    }
}

impl std::fmt::Debug for Lattice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lattice({})", hex::encode(self.digest()))
    }
}

impl Lattice {
    /// Adds the entry `key` → `value` of keyspace `space`.
    pub(crate) fn add(&mut self, space: u8, key: &[u8], value: &[u8]) {
        self.fold(space, key, value, false);
    }

    /// Takes away an entry added before.
    pub(crate) fn remove(&mut self, space: u8, key: &[u8], value: &[u8]) {
        self.fold(space, key, value, true);
    }

    /// Adds the entries `other` added and takes away those it took away:
    /// lattices of disjoint sets of writes, folded on different threads,
    /// sum to the lattice of all of them, in any order.
    pub(crate) fn merge(&mut self, other: &Lattice) {
        for (sum, lane) in self.lanes.iter_mut().zip(other.lanes.iter()) {
            *sum = sum.wrapping_add(*lane);
        }
        self.size.entries = self.size.entries.wrapping_add(other.size.entries);
        self.size.bytes = self.size.bytes.wrapping_add(other.size.bytes);
    }

    /// Adds an entry's lanes and size, or (`negated`) their negation.
    fn fold(&mut self, space: u8, key: &[u8], value: &[u8], negated: bool) {
        let sign = |x: u64| if negated { x.wrapping_neg() } else { x };
        let lanes = entry_lanes(space, key, value);
        for (sum, lane) in self.lanes.iter_mut().zip(lanes.iter()) {
            *sum = sum.wrapping_add(sign(u64::from(*lane)) as u16);
        }
        self.size.entries = self.size.entries.wrapping_add(sign(1));
        let bytes = (key.len() + value.len()) as u64;
        self.size.bytes = self.size.bytes.wrapping_add(sign(bytes));
    }

    /// How much the state holds.
    pub(crate) fn size(&self) -> StateSize {
        self.size
    }

    /// The digest of the lanes alone.
    pub(crate) fn lanes_digest(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("soma/state-lattice-digest/v1");
        for lane in self.lanes.iter() {
            hasher.update(&lane.to_le_bytes());
        }
        *hasher.finalize().as_bytes()
    }

    /// The 32-byte digest the state root folds in: of the lanes and the
    /// size, so that a root vouches for how much its state holds.
    pub(crate) fn digest(&self) -> [u8; 32] {
        state_digest(&self.lanes_digest(), self.size)
    }
}

/// The digest of a state whose lanes have digest `lanes` and that holds
/// `size` ([`Lattice::digest`]).
pub(crate) fn state_digest(lanes: &[u8; 32], size: StateSize) -> [u8; 32] {
    let mut w = Writer::new();
    w.array(lanes);
    w.u64(size.entries);
    w.u64(size.bytes);
    blake3::derive_key("soma/state-digest/v2", &w.into_bytes())
}

/// An entry's lanes.
fn entry_lanes(space: u8, key: &[u8], value: &[u8]) -> [u16; LANES] {
    let mut hasher = blake3::Hasher::new_derive_key("soma/state-entry/v1");
    // Lengths first, so that no two entries' inputs run together.
    hasher.update(&[space]);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(&(value.len() as u64).to_le_bytes());
    hasher.update(value);
    let mut bytes = [0u8; 2 * LANES];
    hasher.finalize_xof().fill(&mut bytes);
    let mut lanes = [0u16; LANES];
    for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
        *lane = u16::from_le_bytes([pair[0], pair[1]]);
    }
    lanes
}

impl Encode for Lattice {
    fn encode(&self, w: &mut Writer) {
        for lane in self.lanes.iter() {
            w.u16(*lane);
        }
        w.u64(self.size.entries);
        w.u64(self.size.bytes);
    }
}

impl Decode<'_> for Lattice {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut lattice = Lattice::default();
        for lane in lattice.lanes.iter_mut() {
            *lane = r.u16("lattice lane")?;
        }
        lattice.size = StateSize {
            entries: r.u64("state entries")?,
            bytes: r.u64("state bytes")?,
        };
        Ok(lattice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries_that_differ_anywhere_hash_apart() {
        let base = entry_lanes(1, b"key", b"value");
        assert_ne!(base, entry_lanes(2, b"key", b"value"));
        assert_ne!(base, entry_lanes(1, b"kez", b"value"));
        assert_ne!(base, entry_lanes(1, b"key", b"valuf"));
        // The boundary between key and value is part of the entry.
        assert_ne!(entry_lanes(1, b"ke", b"yvalue"), base);
    }

    #[test]
    fn lattices_of_parts_merge_into_the_lattice_of_the_whole() {
        let mut whole = Lattice::default();
        whole.add(0, b"a", b"1");
        whole.add(1, b"b", b"2");
        whole.remove(0, b"a", b"1");
        let (mut first, mut second) = (Lattice::default(), Lattice::default());
        first.remove(0, b"a", b"1");
        second.add(1, b"b", b"2");
        first.add(0, b"a", b"1");
        second.merge(&first);
        assert_eq!(second, whole);
        assert_eq!(
            second.size(),
            StateSize {
                entries: 1,
                bytes: 2
            }
        );
    }

    #[test]
    fn a_lattice_round_trips_through_its_encoding() {
        let mut lattice = Lattice::default();
        lattice.add(0, b"a", b"1");
        let decoded = Lattice::from_bytes(&lattice.to_bytes()).unwrap();
        assert_eq!(decoded, lattice);
        assert!(Lattice::from_bytes(&lattice.to_bytes()[1..]).is_err());
    }

    proptest! {
        /// The lattice of a state is the same whatever order its entries
        /// were written, overwritten and deleted in.
        #[test]
        fn the_lattice_depends_on_the_entries_alone(
            writes in proptest::collection::vec((0u8..3, 0u8..8, proptest::option::of(0u8..4)), 0..80),
        ) {
            let mut state = std::collections::BTreeMap::new();
            let mut incremental = Lattice::default();
            for (space, key, value) in writes {
                if let Some(old) = state.remove(&(space, key)) {
                    incremental.remove(space, &[key], &[old]);
                }
                if let Some(value) = value {
                    incremental.add(space, &[key], &[value]);
                    state.insert((space, key), value);
                }
            }
            let mut fresh = Lattice::default();
            // Added in reverse order.
            for ((space, key), value) in state.iter().rev() {
                fresh.add(*space, &[*key], &[*value]);
            }
            prop_assert_eq!(incremental.digest(), fresh.digest());
            prop_assert_eq!(state.is_empty(), incremental == Lattice::default());
            let size = StateSize { entries: state.len() as u64, bytes: 2 * state.len() as u64 };
            prop_assert_eq!(incremental.size(), size);
        }
    }
}
