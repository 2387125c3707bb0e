//! An encoder whose linear memory starts out at 768 MiB: its build script
//! has the linker declare that much as the memory's minimum, while the
//! component stays a few kilobytes. The host must refuse it as over its
//! memory limit without mapping the memory first, so that every host gives
//! the same answer (see `Limits::check_initial_memory` in the host).

use soma_guest_sdk::{EncodeError, Encoder, EncoderInfo, Modality};

/// The oversized encoder.
pub struct OversizedMemory;

impl Encoder for OversizedMemory {
    fn new() -> Self {
        OversizedMemory
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: "oversized-memory".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            dimension: 4,
            modality: Modality::Bytes,
            max_input_bytes: 16,
        }
    }

    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        Ok(inputs.iter().map(|_| vec![1.0, 0.0, 0.0, 0.0]).collect())
    }
}

soma_guest_sdk::export!(OversizedMemory);
