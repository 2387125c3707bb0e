//! Soma's state machine: accounts, validators, encoders and embedding jobs
//! in fjall, the transactions that change them, and [`Executor::apply`],
//! which turns a committed, ordered list of transactions into new state and
//! a state root; and the [`JobRunner`], which computes a validator's
//! results for a job in the encoder host (outside the state machine).
//!
//! Apply is a pure function of the prior state and the commit (DESIGN.md,
//! "Execution"): integer money, sorted iteration, no clock, no host calls.
//! Every validator that applies the same commits reaches the same root, and
//! a transaction that breaks a rule changes nothing but its [`Receipt`].
//!
//! ```no_run
//! use soma_execution::{Commit, Executor, Genesis, Router};
//! use soma_host::{Engine, package::BlobStore};
//!
//! let genesis = Genesis::from_config_file("genesis.json".as_ref())?;
//! // The network's router, if genesis names one, routes submissions.
//! let blobs = BlobStore::open("blobs")?;
//! let router = match genesis.router() {
//!     Some(digest) => Some(Router::load(
//!         &Engine::new()?,
//!         &blobs.package(digest)?,
//!         None,
//!         genesis.parameters(),
//!     )?),
//!     None => None,
//! };
//! let mut executor = Executor::open("state".as_ref(), &genesis, router)?;
//! let transactions: Vec<Vec<u8>> = vec![/* signed transactions, in commit order */];
//! let effects = executor.apply(Commit {
//!     index: 0,
//!     digest: [0; 32],
//!     transactions: &transactions,
//!     // The validator whose block carried each, if known.
//!     proposers: None,
//! })?;
//! println!("root {}", hex::encode(effects.root));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod executor;
mod finalise;
mod genesis;
mod job;
mod lattice;
mod params;
mod receipt;
mod routing;
mod runner;
mod scoring;
mod shard;
mod snapshot;
mod state;
mod transaction;
mod view;

pub use executor::{
    Commit, CommitEffects, ExecutionError, Executor, PinnedState, SnapshotClaim, StateReader,
    Supply,
};
pub use genesis::{
    Genesis, GenesisAccount, GenesisConfig, GenesisEncoder, GenesisError, GenesisValidator,
    MAX_CHAIN_NAME_BYTES, MAX_GENESIS_ENTRIES,
};
pub use job::{EncoderResult, EncoderScore, Finalisation, Job, JobStatus, Outcome};
pub use params::{BPS, Parameters};
pub use receipt::{Receipt, Rejection};
pub use routing::{MAX_REGION_BITS, Router, RouterError};
pub use runner::{JobRunner, LOCAL_RETRY, MAX_LOCAL_RETRY, RunnerError};
pub use scoring::ONE;
pub use snapshot::{ENTRY_OVERHEAD, MAX_SNAPSHOT_PAGE, SNAPSHOT_PAGE_BYTES};
pub use state::{Account, Encoder, EncoderStatus, StateError, Validator};
pub use transaction::{Action, MAX_TRANSACTION_BYTES, SignedTransaction, Transaction};
