//! Protocol parameters: fixed in genesis, the same for every validator.

use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};

/// The parameters apply reads. Every field is part of the chain id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    /// Least fee a transaction may offer, in base units.
    pub min_fee: u64,
    /// Least bond that registers an encoder, in base units.
    pub min_encoder_bond: u64,
    /// Least stake a validator may keep: withdrawing to below it (other
    /// than to zero) is refused.
    pub min_validator_stake: u64,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            min_fee: 10,
            min_encoder_bond: 1_000_000,
            min_validator_stake: 1_000_000,
        }
    }
}

impl Encode for Parameters {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.min_fee);
        w.u64(self.min_encoder_bond);
        w.u64(self.min_validator_stake);
    }
}

impl Decode<'_> for Parameters {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Parameters {
            min_fee: r.u64("min fee")?,
            min_encoder_bond: r.u64("min encoder bond")?,
            min_validator_stake: r.u64("min validator stake")?,
        })
    }
}
