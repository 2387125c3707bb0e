//! Finalisation: once attesters hold more than two thirds of the stake, a
//! job's result is decided from their attestations alone (DESIGN.md,
//! "Execution", steps 5 and 6).
//!
//! Per shard encoder: the outcome attested by the most stake, if that is
//! more than a third of all stake (else there is no verdict: a few
//! attesters cannot decide alone), and the stake-weighted medians of what
//! the attesters who saw that outcome reported. Encoders whose outcome is a
//! failure, whose loss is above the ceiling (their output does not
//! compose), or whose median embedding is an outlier from the robust
//! centre of the rest (judged only among three or more), are disqualified
//! and slashed; the rest are averaged, weighted by their loss. The payment goes
//! to the best encoder, to the attesters whose results held (by stake),
//! and the rest to the treasury; the worst qualified encoder, if worse than
//! the best, pays a small penalty. Attesters whose results deviate from the
//! verdicts are recorded, are not paid, and past an allowance lose stake.

use crate::job::{EncoderResult, EncoderScore, Finalisation, Job, JobStatus, Outcome};
use crate::params::{Parameters, share};
use crate::routing;
use crate::runner::has_masks;
use crate::scoring::{
    ONE, coordinate_median, distance, max_deviation, outliers, weight, weighted_coordinate_median,
    weighted_median, weighted_unit_average,
};
use crate::state::{StateError, Validator};
use crate::view::{Stop, View};
use soma_crypto::PublicKey;
use soma_host::Digest;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Fewest successful encoders among which one can be judged an outlier.
const MIN_FOR_OUTLIERS: usize = 3;

/// What the attesters together say about one shard encoder.
struct Verdict<'r> {
    outcome: Outcome,
    loss: u32,
    fuel: u64,
    /// The coordinate-wise median (empty unless `Ok`): an attested
    /// embedding itself when most of the stake attested it.
    embedding: Cow<'r, [i32]>,
}

/// One attester's results, with its record and stake now.
struct Attested<'r> {
    validator: PublicKey,
    /// Its record, if it still is a validator.
    record: Option<Validator>,
    stake: u64,
    results: Vec<&'r EncoderResult>,
}

/// The attestation that completes a job, as its transaction carries it
/// (with its results' digests): the others are read back from the state.
pub(crate) struct Completing<'a> {
    pub(crate) validator: &'a PublicKey,
    pub(crate) digests: &'a [Digest],
    pub(crate) results: &'a [EncoderResult],
}

/// Decides job `id` (whose attesters, the last of them `completing`'s,
/// hold more than two thirds of `total_stake`) in commit `commit`: records
/// the result on `job` and moves the money.
pub(crate) fn finalise(
    state: &mut View<'_>,
    params: &Parameters,
    id: &Digest,
    job: &mut Job,
    commit: u64,
    completing: &Completing<'_>,
    total_stake: u128,
) -> Result<(), Stop> {
    // Each distinct result is read once, however many attested it, and
    // none that the completing attestation carries.
    let mut results: BTreeMap<Digest, Cow<'_, EncoderResult>> = (completing.digests.iter())
        .zip(completing.results)
        .map(|(digest, result)| (*digest, Cow::Borrowed(result)))
        .collect();
    let mut digests = Vec::with_capacity(job.attesters.len());
    for validator in &job.attesters {
        if validator == completing.validator {
            digests.push(Cow::Borrowed(completing.digests));
            continue;
        }
        let attestation = state
            .attestation(id, validator)?
            .ok_or_else(|| StateError::inconsistent("job", "an attestation is missing"))?;
        for digest in &attestation.0 {
            if !results.contains_key(digest) {
                let result = state
                    .result(id, digest)?
                    .ok_or_else(|| StateError::inconsistent("job", "a result is missing"))?;
                results.insert(*digest, Cow::Owned(result));
            }
        }
        digests.push(Cow::Owned(attestation.0));
    }
    let mut attested = Vec::with_capacity(job.attesters.len());
    for (validator, digests) in job.attesters.iter().zip(&digests) {
        let record = state.validator(validator)?;
        attested.push(Attested {
            validator: *validator,
            stake: record.as_ref().map_or(0, |v| v.stake),
            record,
            results: digests.iter().map(|digest| &*results[digest]).collect(),
        });
    }
    let verdicts: Vec<Verdict> = (0..job.shard.len())
        .map(|j| verdict(&attested, j, total_stake))
        .collect();

    // Among the encoders that succeeded, those whose loss says their
    // output does not compose are out first (only data with masks has a
    // loss), then outliers among the rest.
    let ok: Vec<usize> = (0..verdicts.len())
        .filter(|&j| verdicts[j].outcome == Outcome::Ok)
        .collect();
    let masked = has_masks(&job.data, params.mask_count);
    let mut outlier: Vec<bool> = verdicts
        .iter()
        .map(|v| masked && v.outcome == Outcome::Ok && v.loss > params.max_loss)
        .collect();
    let composing: Vec<usize> = ok.iter().copied().filter(|&j| !outlier[j]).collect();
    if composing.len() >= MIN_FOR_OUTLIERS {
        let embeddings: Vec<&[i32]> = composing.iter().map(|&j| &*verdicts[j].embedding).collect();
        let centre = coordinate_median(&embeddings);
        let distances: Vec<u64> = embeddings.iter().map(|e| distance(e, &centre)).collect();
        let flags = outliers(
            &distances,
            params.outlier_mad_multiple,
            params.outlier_floor.into(),
        );
        for (&j, flag) in composing.iter().zip(flags) {
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
                weight(v.loss, params.loss_softness)
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
                .map(|&j| (&*verdicts[j].embedding, scores[j].weight))
                .collect::<Vec<_>>(),
        ),
    };
    // Equal losses are ranked by a draw from the job's seed, not by digest
    // (which owners could grind).
    let rank = |j: usize| {
        (
            verdicts[j].loss,
            *blake3::keyed_hash(&job.seed, &job.shard[j].0).as_bytes(),
        )
    };
    let best = qualified.iter().copied().min_by_key(|&j| rank(j));
    let worst = qualified
        .iter()
        .copied()
        .max_by_key(|&j| rank(j))
        .filter(|&w| best.is_some_and(|b| verdicts[w].loss > verdicts[b].loss));

    // Attesters whose results deviate from the verdicts; every attester's
    // stake is free again.
    let mut deviant = Vec::new();
    // Nothing wrote a validator since their records were read.
    for a in &attested {
        let Some(mut validator) = a.record else {
            continue;
        };
        validator.pending = validator.pending.saturating_sub(1);
        let deviates = verdicts.iter().zip(&a.results).any(|(v, r)| {
            r.outcome != Outcome::Local
                && v.outcome != Outcome::Local
                && (r.outcome != v.outcome
                    || (v.outcome == Outcome::Ok
                        && (max_deviation(&r.embedding, &v.embedding)
                            > params.deviance_tolerance.into()
                            || r.loss.abs_diff(v.loss) > params.deviance_tolerance)))
        });
        if deviates {
            deviant.push(a.validator);
            validator.deviant = validator.deviant.saturating_add(1);
            if validator.deviant > params.deviance_allowance {
                let amount = share(validator.stake, params.deviance_slash_bps);
                validator.stake -= amount;
                state.burn(amount)?;
            }
        }
        state.put_validator(&a.validator, validator)?;
    }

    // The payment: the best encoder's share; the attesters' share, by
    // stake, to those whose results held; the rest to the treasury.
    let payment = job.payment;
    state.release_escrow(payment)?;
    let mut kept = payment;
    if let Some(best) = best {
        let reward = share(payment, params.encoder_reward_bps);
        let encoder = state
            .encoder(&job.shard[best])?
            .ok_or_else(|| StateError::inconsistent("job", "a shard encoder is missing"))?;
        state.credit(&encoder.owner, reward)?;
        scores[best].reward = reward;
        kept -= reward;
    }
    // Paid: attesters not deviant whose results confirmed some verdict.
    let earns = |a: &Attested| {
        !deviant.contains(&a.validator)
            && verdicts
                .iter()
                .zip(&a.results)
                .any(|(v, r)| v.outcome != Outcome::Local && r.outcome == v.outcome)
    };
    let pool = share(payment, params.validator_reward_bps);
    let earning_stake: u128 = attested
        .iter()
        .filter(|a| earns(a))
        .map(|a| u128::from(a.stake))
        .sum();
    let mut validator_rewards = 0;
    for a in attested.iter().filter(|a| earns(a)) {
        let reward = (u128::from(pool) * u128::from(a.stake))
            .checked_div(earning_stake)
            .unwrap_or(0) as u64;
        state.credit(&a.validator, reward)?;
        validator_rewards += reward;
    }
    kept -= validator_rewards;
    state.pay_treasury(kept)?;

    // Slashes and the penalty, burned; routing scores in the job's region
    // move toward how each encoder did; the shard's bonds are free again.
    // Losses say how an encoder did only when the data had masks and
    // three succeeded (the outlier test could run); a failure or a
    // disqualification always does.
    let best_weight = scores.iter().map(|s| s.weight).max().unwrap_or(0);
    let judged = masked && ok.len() >= MIN_FOR_OUTLIERS;
    for (j, score) in scores.iter_mut().enumerate() {
        let mut encoder = state
            .encoder(&score.package)?
            .ok_or_else(|| StateError::inconsistent("job", "a shard encoder is missing"))?;
        encoder.pending = encoder.pending.saturating_sub(1);
        // No verdict (no validator could run it) counts as failing too: an
        // encoder must not escape judgement by making itself unrunnable.
        let sample = match score.outcome {
            outcome if outcome.is_failure() || outcome == Outcome::Local => Some(0),
            _ if score.disqualified => Some(0),
            _ if judged => Some(routing_sample(score, best_weight)),
            _ => None,
        };
        if let (Some(sample), Some(region)) = (sample, job.region) {
            let region = encoder
                .performance
                .get_mut(usize::from(region))
                .ok_or_else(|| StateError::inconsistent("job", "its region has no score"))?;
            *region = routing::update(*region, sample, params.routing_decay_bps);
        }
        let bps = match (score.disqualified, Some(j) == worst) {
            (true, _) => params.slash_bps,
            (false, true) => params.penalty_bps,
            (false, false) => 0,
        };
        let amount = share(encoder.bond, bps);
        encoder.bond -= amount;
        state.put_encoder(&score.package, encoder);
        state.burn(amount)?;
        score.slashed = amount;
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

/// How a successful encoder did on a judged job, for routing: 0 if it was
/// an outlier; else its loss weight relative to the best encoder's (fixed
/// point, the best scoring 1.0).
fn routing_sample(score: &EncoderScore, best_weight: u64) -> u32 {
    match score.disqualified || best_weight == 0 {
        true => 0,
        false => (u128::from(score.weight) * ONE as u128 / u128::from(best_weight)) as u32,
    }
}

/// The attesters' verdict on shard encoder `j`: the outcome attested by
/// the most stake (local failures are no evidence; ties go to the lower
/// outcome) if that is more than a third of `total_stake`, and the
/// stake-weighted medians of the results with that outcome. Without such
/// an outcome, there is no verdict (`Local`).
fn verdict<'r>(attested: &[Attested<'r>], j: usize, total_stake: u128) -> Verdict<'r> {
    let none = |outcome| Verdict {
        outcome,
        loss: 0,
        fuel: 0,
        embedding: Cow::Borrowed(&[]),
    };
    let mut stake_by_outcome: BTreeMap<Outcome, u128> = BTreeMap::new();
    for a in attested
        .iter()
        .filter(|a| a.results[j].outcome != Outcome::Local)
    {
        *stake_by_outcome.entry(a.results[j].outcome).or_default() += u128::from(a.stake);
    }
    let winner = stake_by_outcome
        .iter()
        .max_by_key(|&(outcome, stake)| (*stake, std::cmp::Reverse(*outcome)));
    let outcome = match winner {
        Some((&outcome, &stake)) if stake * 3 > total_stake => outcome,
        _ => return none(Outcome::Local),
    };
    let agreeing: Vec<(&EncoderResult, u64)> = attested
        .iter()
        .map(|a| (a.results[j], a.stake))
        .filter(|(r, _)| r.outcome == outcome)
        .collect();
    let median_of = |value: fn(&EncoderResult) -> i64| {
        weighted_median(
            &mut agreeing
                .iter()
                .map(|&(r, w)| (value(r), w))
                .collect::<Vec<_>>(),
        )
    };
    let fuel = median_of(|r| r.fuel.min(i64::MAX as u64) as i64) as u64;
    if outcome != Outcome::Ok {
        return Verdict {
            fuel,
            ..none(outcome)
        };
    }
    let embeddings: Vec<(&[i32], u64)> = agreeing
        .iter()
        .map(|&(r, w)| (r.embedding.as_slice(), w))
        .collect();
    Verdict {
        outcome,
        loss: median_of(|r| i64::from(r.loss)) as u32,
        fuel,
        embedding: weighted_coordinate_median(&embeddings),
    }
}
