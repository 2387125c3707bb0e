//! An encoder whose start-up fills 160 MiB of memory and keeps it: the host
//! pre-initialises encoders by snapshotting their memory after start-up, and
//! must refuse a snapshot this large with an error, not crash or write a
//! huge compiled image.

use soma_guest_sdk::{EncodeError, Encoder, EncoderInfo, Modality};

/// What start-up leaves behind.
const BALLAST_BYTES: usize = 160 << 20;

/// The bloated encoder.
pub struct BloatedStart {
    ballast: Vec<u8>,
}

impl Encoder for BloatedStart {
    fn new() -> Self {
        // Non-zero bytes, so that every page is real and in the snapshot.
        BloatedStart {
            ballast: vec![7; BALLAST_BYTES],
        }
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: "bloated-start".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            dimension: 4,
            modality: Modality::Bytes,
            max_input_bytes: 16,
        }
    }

    fn embed(&self, inputs: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, EncodeError> {
        let level = f32::from(self.ballast[0]);
        Ok(inputs.iter().map(|_| vec![level, 0.0, 0.0, 0.0]).collect())
    }
}

soma_guest_sdk::export!(BloatedStart);
