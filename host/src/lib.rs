//! The Soma encoder host: runs untrusted encoder components in a metered,
//! deterministic sandbox.
//!
//! An encoder is a WebAssembly component implementing the
//! `soma:encoder/encoder` world (see `wit/encoder.wit`). The host compiles it
//! with one process-wide [`Engine`], checks that it implements the world,
//! and runs every call in a fresh store with its own [`Limits`] and a closed
//! WASI context, so that:
//!
//! * every host that runs the same component on the same inputs with the
//!   same [`Seed`] gets bit-identical vectors and the same fuel use;
//! * whatever the component does (loop, allocate, trap, probe the host), the
//!   call ends with a typed [`Error`] and the host serves the next call.
//!
//! ```no_run
//! use soma_host::{Engine, Limits, Seed};
//!
//! let engine = Engine::new()?;
//! let encoder = engine.load(&std::fs::read("hash_encoder.wasm").unwrap())?;
//! let out = encoder.embed(&[b"hello world".to_vec()], &Limits::default(), Seed::from(7))?;
//! assert_eq!(out.vectors[0].len(), encoder.info().dimension as usize);
//! # Ok::<(), soma_host::Error>(())
//! ```

mod bindings;
mod digest;
mod encoder;
mod engine;
mod error;
mod imports;
pub mod inference;
mod info;
mod limits;
pub mod log;
pub mod model;
pub mod package;
mod preinit;
mod runtime;
mod sandbox;
pub mod worker;

pub use digest::Digest;
pub use encoder::{Embeddings, Encoder, MAX_BATCH, MAX_CONCURRENT_CALLS, MAX_REFUSAL_BYTES};
pub use engine::Engine;
pub use error::{Error, InvalidOutput};
pub use imports::WASI_CALL_FUEL;
pub use info::{EncoderInfo, MAX_DIMENSION, Modality};
pub use limits::{HOST_FUEL_PER_BYTE, Limits};
pub use package::{BlobStore, CacheOutcome, CompiledCache, StoreError};
pub use preinit::MAX_SNAPSHOT_MEMORY;
pub use runtime::FEATURES;
pub use sandbox::{FIXED_MONOTONIC_CLOCK, FIXED_WALL_CLOCK, OUTPUT_CAPTURE_BYTES, Seed};
