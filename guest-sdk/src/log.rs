//! Diagnostics for the host operator.
//!
//! The host keeps a bounded number of messages per call and charges fuel for
//! each byte, so log sparingly: a message per batch, not per token.

pub use crate::bindings::soma::encoder::log::Level;

/// Sends one message to the host's log.
///
/// Outside a component (native builds, for tests and benchmarks) messages go
/// to standard error instead.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::soma::encoder::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}
