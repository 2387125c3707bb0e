//! Soma's consensus: a Mysticeti-style uncertified DAG.
//!
//! Every validator proposes one signed [`Block`] per round, referencing at
//! least a quorum (2f+1 by stake) of the previous round's blocks. Consensus
//! orders the opaque transaction bytes in those blocks; it never interprets
//! them, and never calls the encoder host or the executor.
//!
//! Built so far: the [`Committee`] with typed stake counting, and blocks
//! with their canonical encoding and full verification. The DAG state, the
//! commit rule, the linearizer, persistence and networking come next.

mod block;
mod committee;

pub use block::{Block, BlockError, BlockRef, Round, SignedBlock};
pub use committee::{AuthorityIndex, Committee, CommitteeError, Stake, StakeAggregator};
