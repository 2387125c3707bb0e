//! Protocol parameters: fixed in genesis, the same for every validator.

use crate::routing::MAX_REGION_BITS;
use crate::scoring::ONE;
use crate::transaction::MAX_TRANSACTION_BYTES;
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};

/// The largest [`Parameters::gc_depth`].
pub(crate) const MAX_GC_DEPTH: u32 = 100_000;

/// Basis points in a whole.
pub const BPS: u16 = 10_000;

/// The parameters apply reads. Every field is part of the chain id.
/// Fixed-point fields are in units of 2⁻¹⁶.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Parameters {
    /// Least fee a transaction may offer, in base units.
    pub min_fee: u64,
    /// Least bond that registers an encoder, in base units.
    pub min_encoder_bond: u64,
    /// Least stake a validator may keep: withdrawing to below it (other
    /// than to zero) is refused.
    pub min_validator_stake: u64,
    /// Least payment for a job, in base units.
    pub min_job_payment: u64,
    /// Largest data of one submission, in bytes.
    pub max_data_bytes: u32,
    /// Encoders per job.
    pub shard_size: u8,
    /// Masked variants of the data each encoder also embeds.
    pub mask_count: u8,
    /// Commits a job may stay undecided before it expires (its payment
    /// returned).
    pub job_expiry_commits: u64,
    /// The network's embedding dimension.
    pub dimension: u16,
    /// Share of a job's payment paid to its best encoder, in basis points.
    pub encoder_reward_bps: u16,
    /// Share of a job's payment paid to its attesters (pro rata stake).
    pub validator_reward_bps: u16,
    /// The loss (fixed point) at which an embedding's weight in the final
    /// average is half what a loss of 0 would get: the smaller, the more
    /// the average (and routing) favours encoders that compose.
    pub loss_softness: u32,
    /// Share of a disqualified encoder's bond slashed per job.
    pub slash_bps: u16,
    /// Share of the worst qualified encoder's bond taken per job.
    pub penalty_bps: u16,
    /// An encoder is an outlier beyond the median distance from the
    /// shard's centre plus this many median absolute deviations (fixed
    /// point) ...
    pub outlier_mad_multiple: u32,
    /// ... and beyond this distance (fixed point).
    pub outlier_floor: u32,
    /// An encoder whose loss (fixed point) on data with masks is above
    /// this is disqualified before the outlier test: its embedding of the
    /// whole is barely more predictable from its parts' than unrelated
    /// vectors are (a random encoder's loss is 1.0 give or take 0.05 per
    /// mask; honest ones' are under 0.5). In a small shard, such an
    /// encoder would otherwise pull the robust centre away from the honest
    /// ones. A filter for output that does not compose only: an adversary
    /// that composes (a constant vector) is left to the outlier test.
    pub max_loss: u32,
    /// An attested embedding deviates beyond this largest coordinate
    /// difference from the median, and an attested loss beyond this
    /// difference from the median loss (fixed point; a loss can cost an
    /// encoder its bond); honest hardware noise is about 2⁻¹⁶.
    pub deviance_tolerance: u32,
    /// Deviant attestations a validator may make before each further one
    /// costs it stake.
    pub deviance_allowance: u32,
    /// Share of a validator's stake each deviant attestation beyond the
    /// allowance costs.
    pub deviance_slash_bps: u16,
    /// Hyperplanes that split the embedding space into routing regions
    /// (2^bits regions; used only with a router in genesis).
    pub region_bits: u8,
    /// How far one decided job moves an encoder's score in its region, in
    /// basis points of the difference.
    pub routing_decay_bps: u16,
    /// Least score (fixed point) shard selection counts an encoder with:
    /// room to explore, so a poor start is not forever.
    pub routing_floor: u32,
    /// Rounds the consensus DAG keeps below its last commit, and the most
    /// rounds a block's parent may be older than the block. It decides
    /// what each commit contains, so every validator must use the same:
    /// apply never reads it, but it is part of the chain id.
    pub gc_depth: u32,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            min_fee: 10,
            min_encoder_bond: 1_000_000,
            min_validator_stake: 1_000_000,
            min_job_payment: 1_000,
            max_data_bytes: 16 * 1024,
            shard_size: 3,
            mask_count: 4,
            job_expiry_commits: 1_000,
            dimension: 384,
            encoder_reward_bps: 4_000,
            validator_reward_bps: 4_000,
            loss_softness: (ONE / 8) as u32,
            slash_bps: 1_000,
            penalty_bps: 10,
            outlier_mad_multiple: 3 << 16,
            outlier_floor: 3 << 14,
            max_loss: (ONE * 3 / 4) as u32,
            deviance_tolerance: 1 << 6,
            deviance_allowance: 3,
            deviance_slash_bps: 10,
            region_bits: 3,
            routing_decay_bps: 1_000,
            routing_floor: (ONE / 10) as u32,
            gc_depth: 100,
        }
    }
}

impl Parameters {
    /// Refuses parameters no network can run with.
    pub(crate) fn check(&self) -> Result<(), DecodeError> {
        let invalid = |what, reason: &str| Err(DecodeError::invalid(what, reason));
        let bps = [
            ("encoder reward", self.encoder_reward_bps),
            ("validator reward", self.validator_reward_bps),
            ("slash", self.slash_bps),
            ("penalty", self.penalty_bps),
            ("deviance slash", self.deviance_slash_bps),
            ("routing decay", self.routing_decay_bps),
        ];
        if let Some((what, _)) = bps.iter().find(|(_, v)| *v > BPS) {
            return invalid(what, "more than 10 000 basis points");
        }
        if u32::from(self.encoder_reward_bps) + u32::from(self.validator_reward_bps)
            > u32::from(BPS)
        {
            return invalid("rewards", "the shares add up to more than the payment");
        }
        if self.shard_size == 0 || self.dimension == 0 || self.job_expiry_commits == 0 {
            return invalid(
                "shard",
                "shard size, dimension and job expiry must be at least 1",
            );
        }
        // Consensus needs a leader's wave (3 rounds) kept; a depth of
        // millions would hold that many rounds of blocks in memory.
        if !(3..=MAX_GC_DEPTH).contains(&self.gc_depth) {
            return invalid("gc depth", "must be from 3 to 100 000 rounds");
        }
        if self.loss_softness == 0 {
            return invalid("loss softness", "must be at least 1");
        }
        if i64::from(self.max_loss) < ONE / 2 {
            // Honest encoders that compose loosely (the specialist example
            // on prose: about 0.45) would be slashed; a constant encoder,
            // which composes perfectly, would not.
            return invalid("max loss", "must be at least 0.5");
        }
        if self.region_bits > MAX_REGION_BITS {
            return invalid("region bits", "more than 8");
        }
        if self.routing_floor == 0 || i64::from(self.routing_floor) > ONE {
            // A floor of 0 lets a region's encoders all fall out of
            // selection, and its submissions find no shard.
            return invalid("routing floor", "must be above 0 and at most 1.0");
        }
        // An attestation must fit in one transaction.
        let attestation = u64::from(self.shard_size) * (4 * u64::from(self.dimension) + 32);
        if attestation + 256 > u64::from(MAX_TRANSACTION_BYTES)
            || u64::from(self.max_data_bytes) + 256 > u64::from(MAX_TRANSACTION_BYTES)
        {
            return invalid(
                "sizes",
                "an attestation or a submission would not fit a transaction",
            );
        }
        Ok(())
    }
}

impl Encode for Parameters {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.min_fee);
        w.u64(self.min_encoder_bond);
        w.u64(self.min_validator_stake);
        w.u64(self.min_job_payment);
        w.u32(self.max_data_bytes);
        w.u8(self.shard_size);
        w.u8(self.mask_count);
        w.u64(self.job_expiry_commits);
        w.u16(self.dimension);
        w.u16(self.encoder_reward_bps);
        w.u16(self.validator_reward_bps);
        w.u32(self.loss_softness);
        w.u16(self.slash_bps);
        w.u16(self.penalty_bps);
        w.u32(self.outlier_mad_multiple);
        w.u32(self.outlier_floor);
        w.u32(self.max_loss);
        w.u32(self.deviance_tolerance);
        w.u32(self.deviance_allowance);
        w.u16(self.deviance_slash_bps);
        w.u8(self.region_bits);
        w.u16(self.routing_decay_bps);
        w.u32(self.routing_floor);
        w.u32(self.gc_depth);
    }
}

impl Decode<'_> for Parameters {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let parameters = Parameters {
            min_fee: r.u64("min fee")?,
            min_encoder_bond: r.u64("min encoder bond")?,
            min_validator_stake: r.u64("min validator stake")?,
            min_job_payment: r.u64("min job payment")?,
            max_data_bytes: r.u32("max data bytes")?,
            shard_size: r.u8("shard size")?,
            mask_count: r.u8("mask count")?,
            job_expiry_commits: r.u64("job expiry")?,
            dimension: r.u16("dimension")?,
            encoder_reward_bps: r.u16("encoder reward")?,
            validator_reward_bps: r.u16("validator reward")?,
            loss_softness: r.u32("loss softness")?,
            slash_bps: r.u16("slash")?,
            penalty_bps: r.u16("penalty")?,
            outlier_mad_multiple: r.u32("outlier multiple")?,
            outlier_floor: r.u32("outlier floor")?,
            max_loss: r.u32("max loss")?,
            deviance_tolerance: r.u32("deviance tolerance")?,
            deviance_allowance: r.u32("deviance allowance")?,
            deviance_slash_bps: r.u16("deviance slash")?,
            region_bits: r.u8("region bits")?,
            routing_decay_bps: r.u16("routing decay")?,
            routing_floor: r.u32("routing floor")?,
            gc_depth: r.u32("gc depth")?,
        };
        parameters.check()?;
        Ok(parameters)
    }
}

/// `amount` × `bps` / 10 000, rounded down.
pub(crate) fn share(amount: u64, bps: u16) -> u64 {
    (u128::from(amount) * u128::from(bps) / u128::from(BPS)) as u64
}
