//! Finalisation: once attesters hold more than two thirds of the stake, a
//! job's result is decided from their attestations alone (DESIGN.md,
//! "Execution", steps 5 and 6).
//!
//! Per shard encoder: the outcome most stake attested, and the medians of
//! what the attesters who saw it succeed reported. Encoders whose outcome
//! is a failure, or whose median embedding is an outlier from the shard's
//! robust centre, are disqualified and slashed; the rest are averaged,
//! weighted by their loss. The payment goes to the best encoder, to the
//! attesters by stake, and the rest to the treasury; the worst qualified
//! encoder pays a small penalty. Attesters whose results deviate from the
//! medians are recorded, and past an allowance each deviation costs stake.

use crate::job::{EncoderResult, EncoderScore, Finalisation, Job, JobStatus, Outcome};
use crate::params::{Parameters, share};
use crate::scoring::{
    coordinate_median, distance, max_deviation, median, outliers, weight, weighted_unit_average,
};
use crate::state::StateError;
use crate::view::{Stop, View};
use soma_codec::DecodeError;
use soma_crypto::PublicKey;
use soma_host::Digest;
use std::collections::BTreeMap;

/// What the attesters together say about one shard encoder.
struct Verdict {
    outcome: Outcome,
    loss: u32,
    fuel: u64,
    /// The coordinate-wise median (empty unless `Ok`).
    embedding: Vec<i32>,
}

/// One attester's results, with its stake now.
struct Attested {
    validator: PublicKey,
    stake: u64,
    results: Vec<EncoderResult>,
}

/// Decides job `id` (whose attesters hold more than two thirds of the
/// stake): records the result on `job` and moves the money.
pub(crate) fn finalise(
    state: &mut View<'_>,
    params: &Parameters,
    id: &Digest,
    job: &mut Job,
    commit: u64,
) -> Result<(), Stop> {
    let mut attested = Vec::with_capacity(job.attesters.len());
    for validator in &job.attesters {
        let results = state
            .attestation(id, validator)?
            .ok_or_else(|| {
                StateError::Corrupt(DecodeError::invalid("job", "an attestation is missing"))
            })?
            .0;
        let stake = state.validator(validator)?.map_or(0, |v| v.stake);
        attested.push(Attested {
            validator: *validator,
            stake,
            results,
        });
    }
    let verdicts: Vec<Verdict> = (0..job.shard.len())
        .map(|j| verdict(&attested, j))
        .collect();

    // Outliers among the encoders that succeeded.
    let ok: Vec<usize> = (0..verdicts.len())
        .filter(|&j| verdicts[j].outcome == Outcome::Ok)
        .collect();
    let mut outlier = vec![false; verdicts.len()];
    if !ok.is_empty() {
        let embeddings: Vec<&[i32]> = ok
            .iter()
            .map(|&j| verdicts[j].embedding.as_slice())
            .collect();
        let centre = coordinate_median(&embeddings);
        let distances: Vec<u64> = embeddings.iter().map(|e| distance(e, &centre)).collect();
        let flags = outliers(
            &distances,
            params.outlier_mad_multiple,
            params.outlier_floor.into(),
        );
        for (&j, flag) in ok.iter().zip(flags) {
            outlier[j] = flag;
        }
    }
    let qualified: Vec<usize> = ok.iter().copied().filter(|&j| !outlier[j]).collect();
    let mut scores: Vec<EncoderScore> = verdicts
        .iter()
        .zip(&job.shard)
        .enumerate()
        .map(|(j, (v, package))| EncoderScore {
            package: *package,
            outcome: v.outcome,
            loss: v.loss,
            fuel: v.fuel,
            weight: if qualified.contains(&j) {
                weight(v.loss)
            } else {
                0
            },
            disqualified: v.outcome.is_failure() || outlier[j],
            slashed: 0,
            reward: 0,
        })
        .collect();
    let embedding = match qualified.is_empty() {
        true => vec![],
        false => weighted_unit_average(
            &qualified
                .iter()
                .map(|&j| (verdicts[j].embedding.as_slice(), scores[j].weight))
                .collect::<Vec<_>>(),
        ),
    };
    let best = qualified
        .iter()
        .copied()
        .min_by_key(|&j| (verdicts[j].loss, j));
    let worst = qualified
        .iter()
        .copied()
        .max_by_key(|&j| (verdicts[j].loss, j));

    // The payment: the best encoder's share, the attesters' share by
    // stake, and what is left to the treasury.
    let payment = job.payment;
    state.release_escrow(payment)?;
    let mut kept = payment;
    if let Some(best) = best {
        let reward = share(payment, params.encoder_reward_bps);
        // The owner, if the encoder was not deregistered meanwhile.
        if let Some(encoder) = state.encoder(&job.shard[best])? {
            state.credit(&encoder.owner, reward)?;
            scores[best].reward = reward;
            kept -= reward;
        }
    }
    let pool = share(payment, params.validator_reward_bps);
    let attested_stake: u128 = attested.iter().map(|a| u128::from(a.stake)).sum();
    let mut validator_rewards = 0;
    for a in &attested {
        // Nothing to share out if the attesters have since withdrawn all.
        let reward = (u128::from(pool) * u128::from(a.stake))
            .checked_div(attested_stake)
            .unwrap_or(0) as u64;
        state.credit(&a.validator, reward)?;
        validator_rewards += reward;
    }
    kept -= validator_rewards;
    state.pay_treasury(kept)?;

    // Slashes and the penalty, burned.
    for (j, score) in scores.iter_mut().enumerate() {
        let bps = match (score.disqualified, Some(j) == worst && qualified.len() > 1) {
            (true, _) => params.slash_bps,
            (false, true) => params.penalty_bps,
            (false, false) => continue,
        };
        let Some(mut encoder) = state.encoder(&score.package)? else {
            continue;
        };
        let amount = share(encoder.bond, bps);
        encoder.bond -= amount;
        state.put_encoder(&score.package, encoder);
        state.burn(amount)?;
        score.slashed = amount;
    }

    // Attesters whose results deviate from the verdicts.
    let mut deviant = Vec::new();
    for a in &attested {
        let deviates = verdicts.iter().zip(&a.results).any(|(v, r)| {
            r.outcome != Outcome::Local
                && v.outcome != Outcome::Local
                && (r.outcome != v.outcome
                    || (v.outcome == Outcome::Ok
                        && max_deviation(&r.embedding, &v.embedding)
                            > params.deviance_tolerance.into()))
        });
        if !deviates {
            continue;
        }
        deviant.push(a.validator);
        let Some(mut validator) = state.validator(&a.validator)? else {
            continue;
        };
        validator.deviant = validator.deviant.saturating_add(1);
        if validator.deviant > params.deviance_allowance {
            let amount = share(validator.stake, params.deviance_slash_bps);
            validator.stake -= amount;
            state.burn(amount)?;
        }
        state.put_validator(&a.validator, validator);
    }

    job.status = JobStatus::Finalised(Box::new(Finalisation {
        commit,
        encoders: scores,
        embedding,
        deviant,
        validator_rewards,
        to_treasury: kept,
    }));
    Ok(())
}

/// The attesters' verdict on shard encoder `j`: the outcome attested by
/// the most stake (local failures are no evidence; ties go to the lower
/// outcome), and the medians of the results with that outcome.
fn verdict(attested: &[Attested], j: usize) -> Verdict {
    let mut stake_by_outcome: BTreeMap<Outcome, u128> = BTreeMap::new();
    for a in attested
        .iter()
        .filter(|a| a.results[j].outcome != Outcome::Local)
    {
        *stake_by_outcome.entry(a.results[j].outcome).or_default() += u128::from(a.stake);
    }
    let outcome = stake_by_outcome
        .iter()
        .max_by_key(|&(outcome, stake)| (*stake, std::cmp::Reverse(*outcome)))
        .map_or(Outcome::Local, |(outcome, _)| *outcome);
    let agreeing: Vec<&EncoderResult> = attested
        .iter()
        .map(|a| &a.results[j])
        .filter(|r| r.outcome == outcome)
        .collect();
    if agreeing.is_empty() {
        return Verdict {
            outcome,
            loss: 0,
            fuel: 0,
            embedding: vec![],
        };
    }
    let fuel = median(&mut agreeing.iter().map(|r| r.fuel).collect::<Vec<_>>());
    if outcome != Outcome::Ok {
        return Verdict {
            outcome,
            loss: 0,
            fuel,
            embedding: vec![],
        };
    }
    let embeddings: Vec<&[i32]> = agreeing.iter().map(|r| r.embedding.as_slice()).collect();
    Verdict {
        outcome,
        loss: median(&mut agreeing.iter().map(|r| r.loss).collect::<Vec<_>>()),
        fuel,
        embedding: coordinate_median(&embeddings),
    }
}
