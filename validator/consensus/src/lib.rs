//! Soma's consensus: a Mysticeti-style uncertified DAG.
//!
//! Every validator proposes one signed [`Block`] per round, referencing at
//! least a quorum (2f+1 by stake) of the previous round's blocks. Consensus
//! orders the opaque transaction bytes in those blocks; it never interprets
//! them, and never calls the encoder host or the executor.
//!
//! The pieces, one per file: the [`Committee`] with typed stake counting;
//! blocks with their canonical encoding and verification
//! ([`VerifiedBlock`]); the [`DagState`], and the rules for which
//! received blocks enter it, wait for parents or are refused
//! (`block_manager`); the Mysticeti commit rule
//! ([`Committer`]: direct commit, direct skip, indirect decision through
//! an anchor); the [`Linearizer`]; the [`Store`] (fjall on nodes, memory in
//! the simulation); the pool of transactions waiting for a proposal, in
//! lanes the node's verifier places them in ([`Placement`]); the I/O-free
//! [`Core`] that proposes and commits; the
//! [`Node`] that runs it over TCP with hyper; the [`Checkpoint`] a
//! validator resumes from when its peers no longer keep what it missed;
//! and the [`simulator`].

mod authority_service;
mod block;
mod block_manager;
mod block_verifier;
mod broadcaster;
mod checkpoint;
mod committee;
mod committer;
mod core;
mod core_thread;
mod dag_state;
mod linearizer;
mod mempool;
pub mod network;
mod node;
mod peer_client;
pub mod simulator;
mod store;
mod suspended;
mod synchronizer;
#[cfg(test)]
mod test_dag;

pub use authority_service::{
    BODY_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS, TRANSACTION_BYTES_PER_SECOND, WRITE_TIMEOUT,
};
pub use block::{Block, BlockError, BlockRef, Round, SignedBlock, StateRoot, VerifiedBlock};
pub use checkpoint::{Checkpoint, CheckpointError, MAX_RECORDS, decode_records, encode_records};
pub use committee::{
    AuthorityIndex, Committee, CommitteeError, MIN_GC_DEPTH, Protocol, Stake, StakeAggregator,
};
pub use committer::{Committer, LeaderStatus, WAVE_LENGTH, leader};
pub use core::{CATCH_UP_LAG, Core, CoreError, Outcome, Parameters};
pub use dag_state::{Acceptance, DagState};
pub use linearizer::{CommittedSubDag, Linearizer, NO_COMMIT};
pub use mempool::{MIN_TRANSACTION_COST, Placement, SubmitError, outbid, transaction_cost};
pub use node::{
    AcceptAny, COMMIT_RECORDS_PATH, COMMITS_PATH, DEFAULT_MIN_ROUND_DELAY, Metrics, Node,
    NodeConfig, NodeError, STATUS_PATH, SubmitRefused, Submitter, TRANSACTION_PATH,
    TransactionVerifier,
};
pub use store::{
    CommitProgress, CommitRecord, FjallStore, MemStore, Recovered, Store, StoreBatch, StoreError,
};
