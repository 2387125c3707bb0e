//! Soma's consensus: a Mysticeti-style uncertified DAG.
//!
//! Every validator proposes one signed [`Block`] per round, referencing at
//! least a quorum (2f+1 by stake) of the previous round's blocks. Consensus
//! orders the opaque transaction bytes in those blocks; it never interprets
//! them, and never calls the encoder host or the executor.
//!
//! Built so far: the [`Committee`] with typed stake counting; blocks with
//! their canonical encoding and full verification; the [`DagState`]; and
//! the Mysticeti commit rule ([`Committer`]: direct commit, direct skip,
//! indirect decision through an anchor); and the [`Linearizer`] that turns
//! committed leaders into ordered sub-DAGs. Persistence, the proposer,
//! networking and the simulation come next.

mod block;
mod committee;
mod committer;
mod core;
mod dag_state;
mod linearizer;
pub mod network;
mod node;
pub mod simulator;
mod store;

pub use block::{Block, BlockError, BlockRef, Round, SignedBlock, VerifiedBlock};
pub use committee::{AuthorityIndex, Committee, CommitteeError, Stake, StakeAggregator};
pub use committer::{Committer, LeaderStatus, WAVE_LENGTH, leader};
pub use core::{Core, CoreError, Outcome, Parameters, SubmitError};
pub use dag_state::{Acceptance, DagState};
pub use linearizer::{CommittedSubDag, Linearizer};
pub use node::{
    AcceptAny, COMMITS_PATH, Metrics, Node, NodeConfig, NodeError, STATUS_PATH, SubmitRefused,
    TRANSACTION_PATH, TransactionVerifier,
};
pub use store::{
    CommitProgress, CommitRecord, FjallStore, MemStore, Recovered, Store, StoreBatch, StoreError,
};
