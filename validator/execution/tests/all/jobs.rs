//! Jobs from submission to finalisation, with hand-made attestations: the
//! job runner that computes real ones is tested with the host.

use super::*;
use soma_execution::{
    EncoderResult, EncoderStatus, GenesisEncoder, Job, JobStatus, ONE, Outcome, Rejection,
};
use soma_host::Digest;

const DIMENSION: usize = 8;
/// Validators 0..4, equal stakes.
const VALIDATORS: u8 = 4;
// Encoder owners are accounts 10, 11, ...; the submitter is SUBMITTER.

fn package(i: u8) -> Digest {
    Digest([i + 1; 32])
}

/// `encoders` encoders of equal bond, all in every shard.
fn network(encoders: u8) -> Genesis {
    let parameters = Parameters {
        dimension: DIMENSION as u16,
        shard_size: encoders.max(1),
        ..Parameters::default()
    };
    let mut accounts: Vec<GenesisAccount> = (0..VALIDATORS)
        .chain(10..10 + encoders)
        .chain([SUBMITTER])
        .map(|i| GenesisAccount {
            key: public(i),
            balance: 1_000_000_000,
        })
        .collect();
    accounts.sort_by_key(|a| a.key);
    Genesis::new(
        "soma-jobs".into(),
        accounts,
        (0..VALIDATORS)
            .map(|i| GenesisValidator {
                key: public(i),
                stake: 5_000_000,
            })
            .collect(),
        (0..encoders)
            .map(|i| GenesisEncoder {
                package: package(i),
                owner: public(10 + i),
                bond: 10_000_000,
            })
            .collect(),
        parameters,
    )
    .unwrap()
}

/// A unit-ish vector pointing mostly along axis `axis`, in fixed point.
fn vector(axis: usize, tilt: i32) -> Vec<i32> {
    let mut v = vec![tilt; DIMENSION];
    v[axis] = ONE as i32;
    v
}

fn ok(embedding: Vec<i32>, loss: u32) -> EncoderResult {
    EncoderResult {
        outcome: Outcome::Ok,
        fuel: 1_000,
        loss,
        embedding,
    }
}

fn failed(outcome: Outcome) -> EncoderResult {
    EncoderResult {
        outcome,
        fuel: 5_000,
        loss: 0,
        embedding: vec![],
    }
}

/// Submits `data` for 1 000 000 base units; returns the job id.
fn submit(ex: &mut Executor, g: &Genesis, data: &[u8]) -> Digest {
    let nonce = ex.account(&public(SUBMITTER)).unwrap().nonce;
    let action = Action::SubmitData {
        modality: Modality::Text,
        data: data.to_vec(),
        payment: 1_000_000,
    };
    let effects = apply(ex, &[signed(g, SUBMITTER, nonce, 10, action)]);
    assert_eq!(effects.receipts[0].rejection, None);
    effects.receipts[0].transaction.unwrap()
}

/// Validator `v` attests `results` for `job`; returns the refusal, if any.
fn attest(
    ex: &mut Executor,
    g: &Genesis,
    v: u8,
    job: Digest,
    results: Vec<EncoderResult>,
) -> Option<Rejection> {
    let nonce = ex.account(&public(v)).unwrap().nonce;
    let tx = signed(g, v, nonce, 10, Action::Attest { job, results });
    apply(ex, &[tx]).receipts[0].rejection
}

fn finalised(ex: &Executor, job: &Digest) -> soma_execution::Finalisation {
    match ex.job(job).unwrap().unwrap().status {
        JobStatus::Finalised(f) => *f,
        other => panic!("job {job} is not finalised: {other:?}"),
    }
}

/// Three honest encoders: near one another, the third with a higher
/// loss.
fn honest() -> Vec<EncoderResult> {
    vec![
        ok(vector(0, 300), 2_000),
        ok(vector(0, 900), 1_000),
        ok(vector(0, 600), 9_000),
    ]
}

#[test]
fn a_job_is_pending_until_more_than_two_thirds_of_the_stake_attested() {
    let g = network(3);
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let supply = ex.supply().unwrap().total();
    let job = submit(&mut ex, &g, b"a sentence to embed");
    let pending: Job = ex.job(&job).unwrap().unwrap();
    assert_eq!(pending.shard, vec![package(0), package(1), package(2)]);
    assert_eq!(ex.supply().unwrap().escrow, 1_000_000);
    for v in 0..2 {
        assert_eq!(attest(&mut ex, &g, v, job, honest()), None);
        assert_eq!(ex.job(&job).unwrap().unwrap().status, JobStatus::Pending);
    }
    assert_eq!(attest(&mut ex, &g, 2, job, honest()), None);
    let result = finalised(&ex, &job);
    assert!(
        result
            .encoders
            .iter()
            .all(|e| !e.disqualified && e.outcome == Outcome::Ok)
    );
    // The best (lowest loss) encoder's owner gets 40 %; each attester a
    // third of 40 %; the worst qualified encoder pays 0.1 % of its bond.
    assert_eq!(result.encoders[1].reward, 400_000);
    assert_eq!(ex.account(&public(11)).unwrap().balance, 1_000_400_000);
    assert_eq!(result.validator_rewards, 3 * 133_333);
    assert_eq!(result.encoders[2].slashed, 10_000);
    assert_eq!(ex.encoder(&package(2)).unwrap().unwrap().bond, 9_990_000);
    assert!(result.deviant.is_empty());
    let length: i64 = result
        .embedding
        .iter()
        .map(|&x| i64::from(x) * i64::from(x))
        .sum();
    assert!(
        (length - ONE * ONE).abs() < ONE * ONE / 100,
        "not unit length: {length}"
    );
    let supply_after = ex.supply().unwrap();
    assert_eq!(supply_after.escrow, 0);
    assert_eq!(supply_after.burned, 10_000);
    assert_eq!(supply_after.total(), supply);

    // A fourth attestation comes too late.
    assert_eq!(
        attest(&mut ex, &g, 3, job, honest()),
        Some(Rejection::JobDecided)
    );
}

#[test]
fn hardware_noise_changes_no_decision_and_garbage_is_outvoted_and_unpaid() {
    let g = network(3);
    let decide = |attesters: &[(u8, Vec<EncoderResult>)]| {
        let dir = tempfile::tempdir().unwrap();
        let mut ex = open(dir.path(), &g);
        let job = submit(&mut ex, &g, b"the same sentence");
        for (v, results) in attesters {
            assert_eq!(attest(&mut ex, &g, *v, job, results.clone()), None);
        }
        // Each attestation reads back as it was made, whether its results
        // were kept by an earlier one (all alike) or by itself (noise).
        let mut made: Vec<_> = (attesters.iter())
            .map(|(v, results)| (public(*v), results.clone()))
            .collect();
        made.sort_by_key(|(validator, _)| *validator);
        assert_eq!(ex.attestations(&job).unwrap(), made);
        let deviant = |v: u8| ex.validator(&public(v)).unwrap().unwrap().deviant;
        let balance = |v: u8| ex.account(&public(v)).unwrap().balance;
        (
            finalised(&ex, &job),
            [deviant(0), deviant(1), deviant(2)],
            balance(2),
        )
    };
    let (clean, ..) = decide(&[(0, honest()), (1, honest()), (2, honest())]);

    // Every attester off by a unit of 2⁻¹⁶ here and there, differently, as
    // CPUs with other kernels are, in embeddings and losses.
    let noisy = |v: usize| {
        let mut results = honest();
        for (j, r) in results.iter_mut().enumerate() {
            for (c, x) in r.embedding.iter_mut().enumerate() {
                *x += ((c + v) % 3) as i32 - 1;
            }
            r.loss = r.loss + ((j + v) % 3) as u32 - 1;
        }
        results
    };
    let (with_noise, deviance, _) = decide(&[(0, noisy(0)), (1, noisy(1)), (2, noisy(2))]);
    assert_eq!(deviance, [0, 0, 0]);
    let decisions = |f: &soma_execution::Finalisation| {
        let scores: Vec<_> = f
            .encoders
            .iter()
            .map(|e| (e.disqualified, e.slashed, e.reward))
            .collect();
        (
            scores,
            f.deviant.clone(),
            f.validator_rewards,
            f.to_treasury,
        )
    };
    assert_eq!(decisions(&with_noise), decisions(&clean));
    let off = with_noise
        .embedding
        .iter()
        .zip(&clean.embedding)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(off <= 2, "noise moved the result by {off} units");

    // Garbage: wrong vectors, one failure claimed where the encoder ran.
    let garbage = vec![
        ok(vector(5, -ONE as i32), 0),
        failed(Outcome::Trap),
        ok(vector(7, 77), 0),
    ];
    let (outvoted, deviance, byzantine_balance) =
        decide(&[(0, honest()), (2, garbage), (1, honest())]);
    assert_eq!(outvoted.embedding, clean.embedding);
    assert_eq!(outvoted.deviant, vec![public(2)]);
    assert_eq!(deviance, [0, 0, 1]);
    // The two honest attesters share the attesters' 40 %; the deviant one
    // paid its fee and earned nothing.
    assert_eq!(outvoted.validator_rewards, 2 * 200_000);
    assert_eq!(byzantine_balance, 1_000_000_000 - 10);

    // Honest vectors, but a loss over the ceiling claimed for the best
    // encoder, which would get it slashed: outvoted, and deviant.
    let mut lying = honest();
    lying[1].loss = g.parameters().max_loss + 1;
    let (outvoted, deviance, _) = decide(&[(0, honest()), (2, lying), (1, honest())]);
    assert_eq!(outvoted.embedding, clean.embedding);
    assert!(!outvoted.encoders[1].disqualified);
    assert_eq!((outvoted.deviant, deviance), (vec![public(2)], [0, 0, 1]));
}

#[test]
fn an_attester_cannot_withdraw_its_stake_until_the_job_is_decided() {
    let g = network(3);
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let job = submit(&mut ex, &g, b"attest, then run");
    assert_eq!(attest(&mut ex, &g, 0, job, honest()), None);
    let withdraw = |ex: &Executor| {
        let nonce = ex.account(&public(0)).unwrap().nonce;
        signed(
            &g,
            0,
            nonce,
            10,
            Action::WithdrawStake { amount: 5_000_000 },
        )
    };
    let tx = withdraw(&ex);
    assert_eq!(
        apply(&mut ex, &[tx]).receipts[0].rejection,
        Some(Rejection::StakeLocked)
    );
    for v in 1..3 {
        assert_eq!(attest(&mut ex, &g, v, job, honest()), None);
    }
    finalised(&ex, &job);
    let tx = withdraw(&ex);
    assert_eq!(apply(&mut ex, &[tx]).receipts[0].rejection, None);
    assert_eq!(ex.validator(&public(0)).unwrap().unwrap().stake, 0);
}

#[test]
fn a_third_of_the_stake_or_less_decides_nothing() {
    let g = network(3);
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let job = submit(&mut ex, &g, b"most validators timed out");
    let local = || vec![failed(Outcome::Local); 3];
    let mut accusation = honest();
    accusation[2] = failed(Outcome::Trap);
    assert_eq!(attest(&mut ex, &g, 0, job, accusation), None);
    assert_eq!(attest(&mut ex, &g, 1, job, local()), None);
    assert_eq!(attest(&mut ex, &g, 2, job, local()), None);
    let result = finalised(&ex, &job);
    // One attester of four saw anything: no verdict, nobody slashed,
    // nobody deviant, and no result confirmed, so no attester paid.
    assert!(
        result
            .encoders
            .iter()
            .all(|e| e.outcome == Outcome::Local && !e.disqualified)
    );
    assert!(
        result
            .encoders
            .iter()
            .all(|e| e.slashed == 0 && e.reward == 0)
    );
    assert!(result.embedding.is_empty());
    assert!(result.deviant.is_empty());
    assert_eq!(result.validator_rewards, 0);
    assert_eq!(result.to_treasury, 1_000_000);
    assert_eq!(ex.account(&public(0)).unwrap().balance, 1_000_000_000 - 10);
}

#[test]
fn a_shard_bond_stays_until_the_job_is_decided_and_an_undecided_job_expires() {
    let g = network(3);
    let expiry = g.parameters().job_expiry_commits;
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let supply = ex.supply().unwrap().total();
    let job = submit(&mut ex, &g, b"nobody attests");
    let deregister = |ex: &Executor| {
        let nonce = ex.account(&public(10)).unwrap().nonce;
        signed(
            &g,
            10,
            nonce,
            10,
            Action::DeregisterEncoder {
                package: package(0),
            },
        )
    };
    let tx = deregister(&ex);
    assert_eq!(
        apply(&mut ex, &[tx]).receipts[0].rejection,
        Some(Rejection::EncoderBusy)
    );
    // Commits pass; at the first after the deadline the job expires.
    while ex.next_index() <= expiry {
        apply(&mut ex, &[]);
        assert_eq!(ex.job(&job).unwrap().unwrap().status, JobStatus::Pending);
    }
    apply(&mut ex, &[]);
    assert!(matches!(
        ex.job(&job).unwrap().unwrap().status,
        JobStatus::Expired { .. }
    ));
    assert_eq!(
        ex.account(&public(SUBMITTER)).unwrap().balance,
        1_000_000_000 - 10
    );
    assert_eq!(ex.supply().unwrap().escrow, 0);
    assert_eq!(ex.supply().unwrap().total(), supply);
    let tx = deregister(&ex);
    assert_eq!(apply(&mut ex, &[tx]).receipts[0].rejection, None);
    // Attesting an expired job is too late.
    assert_eq!(
        attest(&mut ex, &g, 0, job, honest()),
        Some(Rejection::JobDecided)
    );
}

#[test]
fn outliers_and_failures_are_disqualified_slashed_and_left_out() {
    let g = network(5);
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let job = submit(&mut ex, &g, b"five encoders");
    // Encoders 0-2 agree, 3 returns something unrelated (a random or
    // constant encoder), 4 runs out of fuel.
    let results = vec![
        ok(vector(0, 500), 3_000),
        ok(vector(0, 700), 1_000),
        ok(vector(0, 600), 2_000),
        ok(vector(4, -9_000), 0),
        failed(Outcome::FuelExhausted),
    ];
    for v in 0..3 {
        assert_eq!(attest(&mut ex, &g, v, job, results.clone()), None);
    }
    let result = finalised(&ex, &job);
    let disqualified: Vec<bool> = result.encoders.iter().map(|e| e.disqualified).collect();
    assert_eq!(disqualified, [false, false, false, true, true]);
    // Slashed 10 % of the bond; the worst qualified (0) pays 0.1 %.
    let slashed: Vec<u64> = result.encoders.iter().map(|e| e.slashed).collect();
    assert_eq!(slashed, [10_000, 0, 0, 1_000_000, 1_000_000]);
    assert_eq!(result.encoders[3].weight, 0);
    // The outlier's low loss did not win it the reward.
    assert_eq!(result.encoders[1].reward, 400_000);
    // The final embedding is closer to every honest member than the
    // outlier is.
    let distance = |a: &[i32], b: &[i32]| -> i64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (i64::from(x) - i64::from(y)).pow(2))
            .sum()
    };
    let outlier = &results[3].embedding;
    for honest in &results[..3] {
        assert!(
            distance(&result.embedding, &honest.embedding) < distance(outlier, &honest.embedding)
        );
    }
}

#[test]
fn submissions_and_attestations_that_break_the_rules_are_refused() {
    let g = network(3);
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let submit_of = |ex: &Executor, modality, data: Vec<u8>, payment| {
        let nonce = ex.account(&public(SUBMITTER)).unwrap().nonce;
        signed(
            &g,
            SUBMITTER,
            nonce,
            10,
            Action::SubmitData {
                modality,
                data,
                payment,
            },
        )
    };
    let submit_tx = |ex: &Executor, data, payment| submit_of(ex, Modality::Text, data, payment);
    let too_long = vec![0; g.parameters().max_data_bytes as usize + 1];
    let tx = submit_tx(&ex, too_long, 1_000_000);
    assert_eq!(
        apply(&mut ex, &[tx]).receipts[0].rejection,
        Some(Rejection::DataTooLarge {
            max: g.parameters().max_data_bytes
        })
    );
    let tx = submit_tx(&ex, vec![b'a', 0xff, b'b'], 1_000_000);
    assert_eq!(
        apply(&mut ex, &[tx]).receipts[0].rejection,
        Some(Rejection::NotText)
    );
    // Not text, though it would be valid UTF-8: no job, nothing held.
    let tx = submit_of(&ex, Modality::Audio, b"words".to_vec(), 1_000_000);
    let before = ex.account(&public(SUBMITTER)).unwrap().balance;
    let effects = apply(&mut ex, &[tx]);
    let receipt = effects.receipts[0];
    assert_eq!(receipt.rejection, Some(Rejection::NotTextData));
    assert_eq!(ex.job(&receipt.transaction.unwrap()).unwrap(), None);
    assert_eq!(ex.account(&public(SUBMITTER)).unwrap().balance, before - 10);
    for i in 0..3 {
        assert_eq!(ex.encoder(&package(i)).unwrap().unwrap().pending, 0);
    }
    let tx = submit_tx(&ex, b"cheap".to_vec(), 999);
    assert_eq!(
        apply(&mut ex, &[tx]).receipts[0].rejection,
        Some(Rejection::PaymentTooLow {
            min: g.parameters().min_job_payment
        })
    );

    let job = submit(&mut ex, &g, b"attest me");
    let wrong_count = honest()[..2].to_vec();
    let mut wrong_dimension = honest();
    wrong_dimension[0].embedding.push(0);
    let mut failure_with_vector = honest();
    failure_with_vector[1].outcome = Outcome::Trap;
    for results in [wrong_count, wrong_dimension, failure_with_vector] {
        assert_eq!(
            attest(&mut ex, &g, 0, job, results),
            Some(Rejection::BadAttestation)
        );
    }
    assert_eq!(
        attest(&mut ex, &g, 0, Digest([0; 32]), honest()),
        Some(Rejection::UnknownJob)
    );
    assert_eq!(
        attest(&mut ex, &g, SUBMITTER, job, honest()),
        Some(Rejection::NotAValidator)
    );
    assert_eq!(attest(&mut ex, &g, 0, job, honest()), None);
    assert_eq!(
        attest(&mut ex, &g, 0, job, honest()),
        Some(Rejection::AlreadyAttested)
    );

    // Without encoders there is no job.
    let empty = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(empty.path(), &g);
    let tx = signed(
        &g,
        2,
        0,
        10,
        Action::SubmitData {
            modality: Modality::Text,
            data: b"x".to_vec(),
            payment: 5_000,
        },
    );
    assert_eq!(
        apply(&mut ex, &[tx]).receipts[0].rejection,
        Some(Rejection::NoEncoders)
    );
}

/// Every encoder's routing score in region 0 (the only one without a
/// router).
fn scores(ex: &Executor, encoders: u8) -> Vec<u32> {
    (0..encoders)
        .map(|i| ex.encoder(&package(i)).unwrap().unwrap().performance[0])
        .collect()
}

#[test]
fn routing_scores_move_on_judged_jobs_and_on_failures_only() {
    let g = network(4);
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let one = ONE as u32;
    assert_eq!(scores(&ex, 4), [one; 4]);
    let decide = |ex: &mut Executor, data: &[u8], results: Vec<EncoderResult>| {
        let job = submit(ex, &g, data);
        for v in 0..3 {
            assert_eq!(attest(ex, &g, v, job, results.clone()), None);
        }
    };
    // Judged (masks, three successes): the two best keep 1.0, the one
    // with a higher loss and the one nobody could run (no verdict) drop.
    decide(
        &mut ex,
        b"several words to mask",
        vec![
            ok(vector(0, 500), 1_000),
            ok(vector(0, 600), 1_000),
            ok(vector(0, 700), 30_000),
            failed(Outcome::Local),
        ],
    );
    let after = scores(&ex, 4);
    assert_eq!(after[..2], [one, one]);
    assert!(after[2] < one && after[2] > after[3], "{after:?}");
    assert_eq!(after[3], one - one.div_ceil(10), "{after:?}");
    // Not judged (one word: no masks, no loss): the successes stay where
    // they are; a failure and no verdict still cost.
    decide(
        &mut ex,
        b"word",
        vec![
            ok(vector(0, 500), 0),
            ok(vector(0, 600), 0),
            failed(Outcome::Trap),
            failed(Outcome::Local),
        ],
    );
    let last = scores(&ex, 4);
    assert_eq!(last[..2], after[..2]);
    assert!(last[2] < after[2] && last[3] < after[3], "{last:?}");

    // A newcomer starts at the median of the registered encoders.
    let (registration, newcomer) =
        registration_of(&g, SUBMITTER, "newcomer", 10_000_000, Modality::Text);
    let nonce = ex.account(&public(SUBMITTER)).unwrap().nonce;
    let tx = signed(&g, SUBMITTER, nonce, 10, registration);
    assert_eq!(apply(&mut ex, &[tx]).receipts[0].rejection, None);
    let mut sorted = last.clone();
    sorted.sort();
    let median = (sorted[1] + sorted[2]) / 2;
    assert_eq!(
        ex.encoder(&newcomer).unwrap().unwrap().performance,
        [median]
    );
}

/// Submits job number `n` and decides it: `trapping` traps if it is drawn,
/// the others agree (attested by validators 0-2). Returns its shard.
fn decide_with_one_trapping(
    ex: &mut Executor,
    g: &Genesis,
    n: usize,
    trapping: Digest,
) -> Vec<Digest> {
    let job = submit(ex, g, format!("job number {n}").as_bytes());
    let shard = ex.job(&job).unwrap().unwrap().shard;
    let results: Vec<EncoderResult> = shard
        .iter()
        .map(|p| match *p == trapping {
            true => failed(Outcome::Trap),
            false => ok(vector(0, 500), 1_000),
        })
        .collect();
    for v in 0..3 {
        assert_eq!(attest(ex, g, v, job, results.clone()), None);
    }
    shard
}

#[test]
fn an_encoder_registered_again_starts_no_higher_than_it_left() {
    let g = network(3);
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let (register, returning) = registration(&g, SUBMITTER, "returning", 10_000_000);
    let send = |ex: &mut Executor, action: Action| {
        let nonce = ex.account(&public(SUBMITTER)).unwrap().nonce;
        let tx = signed(&g, SUBMITTER, nonce, 10, action);
        assert_eq!(apply(ex, &[tx]).receipts[0].rejection, None);
    };
    send(&mut ex, register.clone());
    for n in 0..8 {
        decide_with_one_trapping(&mut ex, &g, n, returning);
    }
    let left = ex.encoder(&returning).unwrap().unwrap().performance;
    assert!(left[0] < (ONE * 3 / 4) as u32, "{left:?}");
    send(&mut ex, Action::DeregisterEncoder { package: returning });
    assert!(ex.encoder(&returning).unwrap().is_none());
    // Registering again is no fresh start at the median (1.0 here).
    send(&mut ex, register);
    assert_eq!(ex.encoder(&returning).unwrap().unwrap().performance, left);
}

#[test]
fn an_encoder_slashed_below_the_minimum_bond_is_drawn_into_no_new_shard_until_its_owner_adds_to_it()
{
    // A slash (10 %) takes a bond below this minimum; the minor penalty
    // of the worst qualified encoder (0.1 %) does not.
    let g = network(4);
    let parameters = Parameters {
        min_encoder_bond: 9_500_000,
        shard_size: 3,
        ..g.parameters().clone()
    };
    let g = variant(&g, "soma-underbonded", parameters);
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let hostile = package(3);
    let status = |ex: &Executor, p: Digest| ex.encoder(&p).unwrap().unwrap().status(g.parameters());
    let run = |ex: &mut Executor, n: usize| decide_with_one_trapping(ex, &g, n, hostile);
    // Account `from` adding `amount` to the hostile encoder's bond: the
    // refusal, if any.
    let add_bond = |ex: &mut Executor, from: u8, amount: u64| {
        let nonce = ex.account(&public(from)).unwrap().nonce;
        let action = Action::AddBond {
            package: hostile,
            amount,
        };
        apply(ex, &[signed(&g, from, nonce, 10, action)]).receipts[0].rejection
    };
    let mut n = 0;
    // Drawn with probability about 3/4 per job, until slashed.
    let until_slashed = |ex: &mut Executor, n: &mut usize| {
        let start = *n;
        while status(ex, hostile) == EncoderStatus::Active {
            assert!(*n < start + 30, "the hostile encoder was never drawn");
            run(ex, *n);
            *n += 1;
        }
        assert_eq!(ex.encoder(&hostile).unwrap().unwrap().bond, 9_000_000);
    };
    until_slashed(&mut ex, &mut n);
    assert_eq!(status(&ex, hostile), EncoderStatus::Underbonded);
    // Its 9 000 000 would still draw it into most shards; it is in none.
    for n in n..n + 30 {
        let shard = run(&mut ex, n);
        assert_eq!(shard, [package(0), package(1), package(2)], "job {n}");
    }
    n += 30;
    for honest in 0..3 {
        assert_eq!(status(&ex, package(honest)), EncoderStatus::Active);
    }
    // Only its owner can add to its bond; then it is drawn again (and
    // slashed again, as it still traps).
    let stranger = ex.account(&public(10)).unwrap().balance;
    assert_eq!(add_bond(&mut ex, 10, 1_000_000), Some(Rejection::NotOwner));
    assert_eq!(ex.encoder(&hostile).unwrap().unwrap().bond, 9_000_000);
    // The refusal kept its fee and nothing else.
    assert_eq!(ex.account(&public(10)).unwrap().balance, stranger - 10);
    let owner = public(13);
    let before = ex.account(&owner).unwrap().balance;
    assert_eq!(add_bond(&mut ex, 13, 1_000_000), None);
    assert_eq!(ex.account(&owner).unwrap().balance, before - 1_000_000 - 10);
    assert_eq!(ex.encoder(&hostile).unwrap().unwrap().bond, 10_000_000);
    until_slashed(&mut ex, &mut n);
    // Its owner takes back what is left.
    let before = ex.account(&owner).unwrap();
    let deregister = Action::DeregisterEncoder { package: hostile };
    let tx = signed(&g, 13, before.nonce, 10, deregister);
    assert_eq!(apply(&mut ex, &[tx]).receipts[0].rejection, None);
    assert!(ex.encoder(&hostile).unwrap().is_none());
    let after = ex.account(&owner).unwrap().balance;
    assert_eq!(after, before.balance + 9_000_000 - 10);
}
