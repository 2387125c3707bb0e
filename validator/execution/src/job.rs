//! Embedding jobs: what a submission creates, what validators attest about
//! it, and what finalisation records.

use crate::state::stored_key;
use soma_codec::{Decode, DecodeError, Encode, Reader, Writer};
use soma_crypto::PublicKey;
use soma_host::Digest;

/// How one shard encoder's run on a job ended, as a validator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// It returned an embedding.
    Ok,
    /// It ran out of fuel.
    FuelExhausted,
    /// It trapped.
    Trap,
    /// It hit a per-call resource limit: memory, or the count of
    /// instances, memories and tables.
    MemoryLimit,
    /// Its output broke the contract (count, dimension, NaN).
    InvalidOutput,
    /// It refused the input.
    Refused,
    /// This validator could not run it (timeout, host error, worker
    /// crash): no evidence about the encoder.
    Local,
    /// Its package does not load: the component or a model is refused, or
    /// the component is not the encoder its manifest describes.
    Unloadable,
}

impl Outcome {
    /// Every outcome, in code order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::FuelExhausted,
        Outcome::Trap,
        Outcome::MemoryLimit,
        Outcome::InvalidOutput,
        Outcome::Refused,
        Outcome::Local,
        Outcome::Unloadable,
    ];

    /// Its name in reports and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::FuelExhausted => "fuel_exhausted",
            Outcome::Trap => "trap",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::InvalidOutput => "invalid_output",
            Outcome::Refused => "refused",
            Outcome::Local => "local",
            Outcome::Unloadable => "unloadable",
        }
    }

    /// Whether the outcome is a deterministic failure of the encoder,
    /// which disqualifies and slashes it.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::Local)
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Result<Outcome, DecodeError> {
        Outcome::ALL
            .get(usize::from(code))
            .copied()
            .ok_or_else(|| DecodeError::invalid("outcome", format!("unknown code {code}")))
    }
}

/// One validator's result for one shard encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderResult {
    /// How the run ended.
    pub outcome: Outcome,
    /// Fuel the run used.
    pub fuel: u64,
    /// Differential loss, in units of 2⁻¹⁶ (0 unless `Ok`).
    pub loss: u32,
    /// The embedding of the whole input, in units of 2⁻¹⁶ (empty unless
    /// `Ok`).
    pub embedding: Vec<i32>,
}

impl Encode for EncoderResult {
    fn encode(&self, w: &mut Writer) {
        w.u8(self.outcome.code());
        w.u64(self.fuel);
        w.u32(self.loss);
        write_embedding(w, &self.embedding);
    }
}

impl Decode<'_> for EncoderResult {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let outcome = Outcome::from_code(r.u8("outcome")?)?;
        let fuel = r.u64("fuel")?;
        let loss = r.u32("loss")?;
        let embedding = read_embedding(r)?;
        Ok(EncoderResult {
            outcome,
            fuel,
            loss,
            embedding,
        })
    }
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for attestations of more than two thirds of the stake.
    Pending,
    /// Decided.
    Finalised(Box<Finalisation>),
    /// Not decided by its deadline: the payment went back to the
    /// submitter, and nobody was paid or slashed.
    Expired {
        /// The commit that expired it.
        commit: u64,
    },
}

/// A job: the data to embed, the shard that embeds it, and its result.
///
/// Its encoding is a record of this node's state: decode only bytes this
/// node stored (keys in it are not checked again, see `stored_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Who submitted and paid.
    pub submitter: PublicKey,
    /// The commit that created it.
    pub commit: u64,
    /// The data.
    pub data: Vec<u8>,
    /// The payment held until finalisation.
    pub payment: u64,
    /// The shard's encoders (package digests), in digest order.
    pub shard: Vec<Digest>,
    /// Seed of the masks the job runner applies.
    pub seed: [u8; 32],
    /// The routing region the router put the data in; `None` if it could
    /// not place it (the shard was drawn by bond alone, and the job moves
    /// no routing score).
    pub region: Option<u16>,
    /// The last commit at whose end it may still be undecided.
    pub deadline: u64,
    /// Validators whose attestations were applied, in commit order.
    pub attesters: Vec<PublicKey>,
    /// Pending or decided.
    pub status: JobStatus,
}

/// What finalisation decided about one shard encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderScore {
    /// The encoder.
    pub package: Digest,
    /// The outcome most stake attested.
    pub outcome: Outcome,
    /// Median attested loss (if `Ok`).
    pub loss: u32,
    /// Median attested fuel.
    pub fuel: u64,
    /// Its weight in the final embedding (0 if not qualified).
    pub weight: u64,
    /// Whether it was disqualified (a failure, a loss above the ceiling,
    /// or an outlier).
    pub disqualified: bool,
    /// Base units taken from its bond (slash or penalty; burned).
    pub slashed: u64,
    /// Base units paid to its owner.
    pub reward: u64,
}

/// What finalisation decided about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finalisation {
    /// The commit that finalised it.
    pub commit: u64,
    /// Per shard encoder, in shard order.
    pub encoders: Vec<EncoderScore>,
    /// The final embedding, unit length in units of 2⁻¹⁶ (empty if no
    /// encoder qualified).
    pub embedding: Vec<i32>,
    /// Attesters whose results deviated from the medians.
    pub deviant: Vec<PublicKey>,
    /// Base units of the payment paid to attesters.
    pub validator_rewards: u64,
    /// Base units of the payment left to the treasury.
    pub to_treasury: u64,
}

impl Encode for Job {
    fn encode(&self, w: &mut Writer) {
        w.array(&self.submitter.to_bytes());
        w.u64(self.commit);
        w.bytes32(&self.data);
        w.u64(self.payment);
        w.count8(self.shard.len());
        self.shard.iter().for_each(|d| w.array(&d.0));
        w.array(&self.seed);
        w.bool(self.region.is_some());
        if let Some(region) = self.region {
            w.u16(region);
        }
        w.u64(self.deadline);
        w.count32(self.attesters.len());
        self.attesters.iter().for_each(|k| w.array(&k.to_bytes()));
        match &self.status {
            JobStatus::Pending => w.u8(0),
            JobStatus::Finalised(f) => {
                w.u8(1);
                f.encode(w);
            }
            JobStatus::Expired { commit } => {
                w.u8(2);
                w.u64(*commit);
            }
        }
    }
}

impl Decode<'_> for Job {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let submitter = stored_key(r, "submitter")?;
        let commit = r.u64("commit")?;
        let data = r.bytes32("data", u32::MAX)?.to_vec();
        let payment = r.u64("payment")?;
        let n = r.count8("shard", u8::MAX)?;
        let shard = (0..n)
            .map(|_| r.array("shard").map(Digest))
            .collect::<Result<_, _>>()?;
        let seed = r.array("seed")?;
        let region = match r.bool("routed")? {
            true => Some(r.u16("region")?),
            false => None,
        };
        let deadline = r.u64("deadline")?;
        let n = r.count32("attesters", u32::MAX, 32)?;
        let attesters = (0..n)
            .map(|_| stored_key(r, "attester"))
            .collect::<Result<_, _>>()?;
        let status = match r.u8("status")? {
            0 => JobStatus::Pending,
            1 => JobStatus::Finalised(Box::new(Finalisation::decode(r)?)),
            2 => JobStatus::Expired {
                commit: r.u64("expired")?,
            },
            tag => return Err(DecodeError::invalid("status", format!("unknown tag {tag}"))),
        };
        Ok(Job {
            submitter,
            commit,
            data,
            payment,
            shard,
            seed,
            region,
            deadline,
            attesters,
            status,
        })
    }
}

impl Encode for Finalisation {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.commit);
        w.count8(self.encoders.len());
        for e in &self.encoders {
            w.array(&e.package.0);
            w.u8(e.outcome.code());
            w.u32(e.loss);
            w.u64(e.fuel);
            w.u64(e.weight);
            w.bool(e.disqualified);
            w.u64(e.slashed);
            w.u64(e.reward);
        }
        write_embedding(w, &self.embedding);
        w.count32(self.deviant.len());
        self.deviant.iter().for_each(|k| w.array(&k.to_bytes()));
        w.u64(self.validator_rewards);
        w.u64(self.to_treasury);
    }
}

impl Decode<'_> for Finalisation {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let commit = r.u64("commit")?;
        let n = r.count8("scores", u8::MAX)?;
        let encoders = (0..n)
            .map(|_| {
                Ok(EncoderScore {
                    package: Digest(r.array("package")?),
                    outcome: Outcome::from_code(r.u8("outcome")?)?,
                    loss: r.u32("loss")?,
                    fuel: r.u64("fuel")?,
                    weight: r.u64("weight")?,
                    disqualified: r.bool("disqualified")?,
                    slashed: r.u64("slashed")?,
                    reward: r.u64("reward")?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        let embedding = read_embedding(r)?;
        let n = r.count32("deviant", u32::MAX, 32)?;
        let deviant = (0..n)
            .map(|_| stored_key(r, "deviant"))
            .collect::<Result<_, _>>()?;
        Ok(Finalisation {
            commit,
            encoders,
            embedding,
            deviant,
            validator_rewards: r.u64("validator rewards")?,
            to_treasury: r.u64("to treasury")?,
        })
    }
}

/// A validator's attestation: one result per shard encoder, in shard
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attestation(pub(crate) Vec<EncoderResult>);

/// An attestation as the state keeps it: the digest of each result, in
/// shard order. Each distinct result of a job is kept once, under the job
/// and that digest: honest validators attest a pure-wasm encoder's results
/// bit for bit alike (and an ONNX model's alike on like hardware), so a
/// job's attestations mostly repeat a few results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultDigests(pub(crate) Vec<Digest>);

impl EncoderResult {
    /// Its encoding, and the digest (of that encoding) it is kept under.
    pub(crate) fn encoded(&self) -> (Digest, Vec<u8>) {
        let encoding = self.to_bytes();
        let digest = blake3::derive_key("soma/encoder-result/v1", &encoding);
        (Digest(digest), encoding)
    }
}

/// Writes an embedding: its length (`u16`) and its fixed-point values.
fn write_embedding(w: &mut Writer, embedding: &[i32]) {
    w.count16(embedding.len());
    w.u32s(embedding.iter().map(|&x| x as u32));
}

/// Reads what [`write_embedding`] wrote.
fn read_embedding(r: &mut Reader<'_>) -> Result<Vec<i32>, DecodeError> {
    let n = r.count16("embedding", u16::MAX, 4)?;
    Ok(r.u32s(n, "embedding")?.map(|x| x as i32).collect())
}

impl Attestation {
    /// Writes `results` as an attestation, without owning them.
    pub(crate) fn encode_results(results: &[EncoderResult], w: &mut Writer) {
        w.count8(results.len());
        results.iter().for_each(|r| r.encode(w));
    }
}

impl Encode for ResultDigests {
    fn encode(&self, w: &mut Writer) {
        w.count8(self.0.len());
        self.0.iter().for_each(|digest| w.array(&digest.0));
    }
}

impl Decode<'_> for ResultDigests {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count8("results", u8::MAX)?;
        (0..n)
            .map(|_| r.array("result digest").map(Digest))
            .collect::<Result<_, _>>()
            .map(ResultDigests)
    }
}

impl Decode<'_> for Attestation {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count8("results", u8::MAX)?;
        (0..n)
            .map(|_| EncoderResult::decode(r))
            .collect::<Result<_, _>>()
            .map(Attestation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_listed_in_code_order_with_distinct_names() {
        for (code, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(usize::from(outcome.code()), code);
            assert_eq!(Outcome::from_code(outcome.code()).unwrap(), *outcome);
        }
        assert!(Outcome::from_code(Outcome::ALL.len() as u8).is_err());
        let mut names: Vec<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Outcome::ALL.len());
    }
}
