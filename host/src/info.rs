//! What an encoder says about itself.

use serde::Serialize;

/// Largest dimension an encoder may declare.
pub const MAX_DIMENSION: u32 = 65_536;

/// What an encoder says about itself (`info()` in the WIT world).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncoderInfo {
    /// Short machine-friendly name.
    pub name: String,
    /// The encoder's own version.
    pub version: String,
    /// Length of every vector.
    pub dimension: u32,
    /// What the inputs are.
    pub modality: Modality,
    /// Largest single input, in bytes.
    pub max_input_bytes: u32,
}

/// Kind of input an encoder expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// UTF-8 text.
    Text,
    /// Encoded images.
    Image,
    /// Encoded audio.
    Audio,
    /// Arbitrary bytes.
    Bytes,
}
