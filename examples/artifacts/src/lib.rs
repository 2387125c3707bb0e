//! Paths of the example encoder components, compiled from source for
//! `wasm32-wasip2` by this crate's build script.
//!
//! Tests and benchmarks depend on this crate to get real components without
//! any manual build step.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
