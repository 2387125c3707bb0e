//! Properties over random transaction streams: money is conserved, no
//! transaction applies twice, and two executors agree on every root.

use super::*;
use proptest::prelude::*;
use soma_execution::{EncoderResult, ONE, Outcome, Rejection};
use soma_host::Digest;

/// One random transaction: sender, what it does, how much, its fee, and
/// whether its nonce is off.
#[derive(Debug, Clone)]
struct Op {
    from: u8,
    kind: u8,
    amount: u64,
    fee: u64,
    skew_nonce: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0u8..5,
        0u8..8,
        prop_oneof![0u64..2_000, 900_000u64..6_000_000, Just(u64::MAX)],
        prop_oneof![9u64..20, Just(u64::MAX)],
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(from, kind, amount, fee, skew_nonce)| Op {
            from,
            kind,
            amount,
            fee,
            skew_nonce,
        })
}

/// The action `op` stands for; attestations are for `job` (with a shard
/// of `shard` encoders), if one was submitted.
fn action(g: &Genesis, op: &Op, job: Option<(Digest, usize)>) -> Action {
    // Two packages per account, so registrations collide, and
    // deregistrations of any account's, so some are refused.
    let name = format!("p{}", op.amount % 2);
    let (register, _) = registration(g, op.from, &name, op.amount);
    let (_, package) = registration(g, (op.amount % 5) as u8, &name, 0);
    match op.kind {
        0 | 1 => Action::Transfer {
            to: public(((op.amount % 5) as u8 + op.from) % 5),
            amount: op.amount,
        },
        2 => Action::AddStake { amount: op.amount },
        3 => Action::WithdrawStake { amount: op.amount },
        4 => register,
        5 => Action::DeregisterEncoder { package },
        6 => Action::SubmitData {
            data: op.amount.to_le_bytes().to_vec(),
            payment: op.amount,
        },
        _ => {
            let (job, shard) = job.unwrap_or((package, 1));
            let result = |k: usize| match (op.amount % 3 + k as u64) % 3 {
                0 => EncoderResult {
                    outcome: Outcome::Trap,
                    fuel: op.amount,
                    loss: 0,
                    embedding: vec![],
                },
                n => EncoderResult {
                    outcome: Outcome::Ok,
                    fuel: op.amount,
                    loss: (op.amount % 70_000) as u32,
                    embedding: vec![(n as i32 - 1) * ONE as i32 / 20; 384],
                },
            };
            Action::Attest {
                job,
                results: (0..shard).map(result).collect(),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn money_is_conserved_nothing_applies_twice_and_executors_agree(
        commits in proptest::collection::vec(proptest::collection::vec(op(), 0..12), 1..6)
    ) {
        let g = genesis();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut first, mut second) = (open(a.path(), &g), open(b.path(), &g));
        prop_assert_eq!(first.root(), second.root());
        let supply = first.supply().unwrap().total();
        let mut replay: Option<Vec<u8>> = None;
        let mut job: Option<(Digest, usize)> = None;
        for ops in commits {
            let mut nonces: Vec<u64> = (0..5).map(|i| first.account(&public(i)).unwrap().nonce).collect();
            let mut transactions: Vec<Vec<u8>> = replay.take().into_iter().collect();
            let replayed = !transactions.is_empty();
            for op in &ops {
                let nonce = nonces[op.from as usize] + u64::from(op.skew_nonce) * 7;
                transactions.push(signed(&g, op.from, nonce, op.fee, action(&g, op, job)));
                nonces[op.from as usize] += 1;
            }
            let effects = apply(&mut first, &transactions);
            prop_assert_eq!(&apply(&mut second, &transactions), &effects);
            if replayed {
                let is_bad_nonce = matches!(effects.receipts[0].rejection, Some(Rejection::BadNonce { .. }));
                prop_assert!(is_bad_nonce, "a replay applied: {:?}", effects.receipts[0]);
            }
            // The last job submitted, for the next commit's attestations.
            for receipt in &effects.receipts {
                if let Some(id) = receipt.transaction.filter(|_| receipt.rejection.is_none())
                    && let Some(submitted) = first.job(&id).unwrap()
                {
                    job = Some((id, submitted.shard.len()));
                }
            }
            replay = effects
                .receipts
                .iter()
                .position(|r| r.rejection.is_none())
                .map(|i| transactions[i].clone());
            prop_assert_eq!(first.supply().unwrap().total(), supply);
        }
    }
}
