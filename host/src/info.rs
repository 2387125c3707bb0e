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

impl Modality {
    /// Every modality, in the order of their codes.
    pub const ALL: [Modality; 4] = [
        Modality::Text,
        Modality::Image,
        Modality::Audio,
        Modality::Bytes,
    ];

    /// The byte that stands for it in manifests and transactions.
    pub fn code(self) -> u8 {
        match self {
            Modality::Text => 0,
            Modality::Image => 1,
            Modality::Audio => 2,
            Modality::Bytes => 3,
        }
    }

    /// The modality a byte stands for, if any.
    pub fn from_code(code: u8) -> Option<Modality> {
        Modality::ALL.get(usize::from(code)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_modality_is_the_one_its_code_stands_for() {
        for (i, modality) in Modality::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(modality.code()), i);
            assert_eq!(Modality::from_code(modality.code()), Some(modality));
        }
        assert_eq!(Modality::from_code(Modality::ALL.len() as u8), None);
        // Manifests and transactions carry these bytes.
        assert_eq!(Modality::ALL.map(Modality::code), [0, 1, 2, 3]);
    }
}
