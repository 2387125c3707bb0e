//! What the host grants a guest: the linker glue of every import, over the
//! per-call data of [`crate::sandbox::Sandbox`].
//!
//! Each import charges fuel before it works (see [`crate::sandbox`]); the
//! data it reads and records (models, logs, captured output) lives in the
//! sandbox and in [`crate::inference`] and [`crate::log`], which know
//! nothing of the linker.

mod inference;
mod log;
mod wasi;

pub use wasi::WASI_CALL_FUEL;

use crate::sandbox::Sandbox;
use wasmtime::component::Linker;

/// Links every import the `encoder` world may use.
pub(crate) fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    log::add_to_linker(linker)?;
    inference::add_to_linker(linker)
}
