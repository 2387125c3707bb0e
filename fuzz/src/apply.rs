//! Apply, on transaction streams the fuzzer writes: two executors fed the
//! same commits (one of them reopened from its store after each) produce
//! the same effects and state roots; money is conserved (the supply, burns
//! included, never changes); the total stake apply keeps is the sum of
//! the validators' stakes; a transaction that applied never applies again.
//!
//! The input is read as operations, each: what and who (one byte: `% 11`
//! is 0–1 transfer, 2 add stake, 3 withdraw stake, 4 register an encoder,
//! 5 deregister one, 6 submit data, 7 attest the last job, 8 end the
//! commit, 9 add to an encoder's bond, 10 raw bytes; `/ 11 % 5` the
//! account, and account 4 holds
//! nothing), the amount's size (one byte: up to 85 a u16, up to 170 a
//! million plus a u32, else a u64), the amount (little-endian), the fee
//! (one byte: 0 is `u64::MAX`, else 9 to 20) and the nonce (one byte,
//! `% 16`: 0 skips ahead, 1 repeats the last, else the next; `/ 16 % 8 %
//! 5` the account whose block proposed it; at 192 or more its signature
//! is forged). A forged transaction must not apply unless its sender
//! proposed it (the block's signature stands for its own); in another's
//! block it is refused for its signature and charges nothing.
//!
//! Raw bytes take the amount's low byte as their length and go into the
//! commit as they are, as a peer could put garbage into a block; account
//! 0 proposed them.

use soma_codec::Encode;
use soma_crypto::PublicKey;
use soma_execution::{
    Action, Commit, CommitEffects, EncoderResult, Executor, Genesis, GenesisAccount,
    GenesisValidator, ONE, Outcome, Parameters, Rejection, Transaction,
};
use soma_host::package::{EncoderMeta, Package};
use soma_host::{Digest, Modality};
use std::sync::OnceLock;

/// Accounts the operations name; the last holds nothing at genesis.
const ACCOUNTS: u8 = 5;
/// Operations read from one input, so that every input runs quickly.
const MAX_OPERATIONS: usize = 96;
/// Commits one input makes.
const MAX_COMMITS: usize = 8;

/// Accounts 0..4 funded, 0 and 1 validators.
pub(crate) fn genesis() -> &'static Genesis {
    static GENESIS: OnceLock<Genesis> = OnceLock::new();
    GENESIS.get_or_init(|| {
        let public = |i: u8| crate::key(i).public_key();
        Genesis::new(
            "soma-fuzz".into(),
            (0..ACCOUNTS - 1)
                .map(|i| GenesisAccount {
                    key: public(i),
                    balance: 1_000_000_000,
                })
                .collect(),
            (0..2)
                .map(|i| GenesisValidator {
                    key: public(i),
                    stake: 5_000_000,
                })
                .collect(),
            vec![],
            // Jobs expire within the few commits an input makes, so that
            // refunds are checked too.
            Parameters {
                job_expiry_commits: 2,
                ..Parameters::default()
            },
        )
        .expect("the fuzz genesis is valid")
    })
}

/// The registration of account `owner`'s package `name`, and its digest.
fn registration(owner: u8, name: &str, bond: u64) -> (Action, Digest) {
    let meta = EncoderMeta {
        name: name.into(),
        version: "1.0.0".into(),
        dimension: u32::from(genesis().parameters().dimension),
        fuel_limit: 1_000_000,
        modality: Modality::Text,
        max_input_bytes: genesis().parameters().max_data_bytes,
    };
    let package = Package::sign(&crate::key(owner), &meta, name.as_bytes().to_vec(), vec![])
        .expect("the package is valid");
    let (manifest, signature) = package.signed_manifest();
    let action = Action::RegisterEncoder {
        manifest: manifest.to_vec(),
        signature: *signature,
        bond,
    };
    (action, package.digest())
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> u64 {
        let n = n.min(self.0.len());
        let mut le = [0; 8];
        le[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(le)
    }
}

/// What an attestation of `job` (with `shard` encoders) says, steered by
/// `amount`.
fn attestation(job: Digest, shard: usize, amount: u64) -> Action {
    let result = |k: usize| match (amount % 3 + k as u64) % 3 {
        0 => EncoderResult {
            outcome: Outcome::Trap,
            fuel: amount,
            loss: 0,
            embedding: vec![],
        },
        n => EncoderResult {
            outcome: Outcome::Ok,
            fuel: amount,
            loss: (amount % 70_000) as u32,
            embedding: vec![
                (n as i32 - 1) * ONE as i32 / 20;
                usize::from(genesis().parameters().dimension)
            ],
        },
    };
    Action::Attest {
        job,
        results: (0..shard).map(result).collect(),
    }
}

fn apply(
    executor: &mut Executor,
    transactions: &[Vec<u8>],
    proposers: &[PublicKey],
) -> CommitEffects {
    let index = executor.next_index();
    executor
        .apply(Commit {
            index,
            digest: *blake3::hash(&index.to_le_bytes()).as_bytes(),
            transactions,
            proposers: Some(proposers),
        })
        .expect("apply fails only when its store does")
}

/// Checks one input.
pub fn check(bytes: &[u8]) {
    let g = genesis();
    let dirs =
        [tempfile::tempdir(), tempfile::tempdir()].map(|d| d.expect("a temporary directory"));
    let open =
        |dir: &tempfile::TempDir| Executor::open(dir.path(), g, None).expect("a fresh state opens");
    let (mut first, mut second) = (open(&dirs[0]), open(&dirs[1]));
    assert_eq!(first.root(), second.root());
    let supply = first.supply().expect("supply").total();
    let mut input = Input(bytes);
    let mut nonces = vec![0u64; ACCOUNTS as usize];
    // The last submitted job, and its shard's size, for attestations.
    let mut job: Option<(Digest, usize)> = None;
    let mut replay: Option<(Vec<u8>, PublicKey)> = None;
    let mut operations = 0;
    for _ in 0..MAX_COMMITS {
        let (mut transactions, mut proposers): (Vec<Vec<u8>>, Vec<PublicKey>) =
            replay.take().into_iter().unzip();
        // Which transactions carry a forged signature, and their senders.
        let mut forged: Vec<Option<PublicKey>> = vec![None; transactions.len()];
        let replayed = !transactions.is_empty();
        while operations < MAX_OPERATIONS
            && let Some(op) = input.byte()
        {
            operations += 1;
            let from = op / 11 % ACCOUNTS;
            let amount = match input.byte().unwrap_or(0) {
                0..=85 => input.take(2),
                86..=170 => 1_000_000 + input.take(4),
                _ => input.take(8),
            };
            let fee = match input.byte().unwrap_or(1) {
                0 => u64::MAX,
                b => 9 + u64::from(b % 12),
            };
            let nonce_byte = input.byte().unwrap_or(2);
            let nonce_rule = nonce_byte % 16;
            let proposer = crate::key(nonce_byte / 16 % 8 % ACCOUNTS).public_key();
            let name = format!("p{}", amount % 2);
            let action = match op % 11 {
                0 | 1 => Action::Transfer {
                    to: crate::key(((amount % 5) as u8 + from) % ACCOUNTS).public_key(),
                    amount,
                },
                2 => Action::AddStake { amount },
                3 => Action::WithdrawStake { amount },
                4 => registration(from, &name, amount).0,
                5 => Action::DeregisterEncoder {
                    package: registration((amount % 5) as u8, &name, 0).1,
                },
                6 => Action::SubmitData {
                    // Mostly text; the rest is refused.
                    modality: Modality::from_code((amount % 8) as u8).unwrap_or(Modality::Text),
                    data: amount.to_le_bytes().to_vec(),
                    payment: amount,
                },
                7 => {
                    let (id, shard) = job.unwrap_or((Digest::of(b"no job"), 1));
                    attestation(id, shard, amount)
                }
                8 => break,
                9 => Action::AddBond {
                    package: registration((amount % 5) as u8, &name, 0).1,
                    amount,
                },
                _ => {
                    let len = (amount & 0xff) as usize;
                    let raw = &input.0[..len.min(input.0.len())];
                    transactions.push(raw.to_vec());
                    proposers.push(crate::key(0).public_key());
                    forged.push(None);
                    input.0 = &input.0[raw.len()..];
                    continue;
                }
            };
            let next = &mut nonces[from as usize];
            let nonce = match nonce_rule {
                0 => *next + 7,
                1 => next.saturating_sub(1),
                _ => *next,
            };
            *next = (*next).max(nonce + 1);
            let transaction = Transaction {
                chain_id: g.chain_id(),
                sender: crate::key(from).public_key(),
                nonce,
                fee,
                action,
            };
            let mut bytes = transaction.sign(&crate::key(from)).to_bytes();
            let forge = nonce_byte >= 192;
            if forge {
                // The signature is the last 64 bytes.
                *bytes.last_mut().expect("a signed transaction") ^= 1;
            }
            transactions.push(bytes);
            proposers.push(proposer);
            forged.push(forge.then(|| crate::key(from).public_key()));
        }
        let effects = apply(&mut first, &transactions, &proposers);
        assert_eq!(
            apply(&mut second, &transactions, &proposers),
            effects,
            "two executors disagree"
        );
        for ((receipt, forger), proposer) in effects.receipts.iter().zip(&forged).zip(&proposers) {
            if let Some(sender) = forger.filter(|sender| sender != proposer) {
                assert!(
                    receipt.rejection == Some(Rejection::BadSignature) && receipt.fee == 0,
                    "a signature forged for {sender:?} counted in another's block: {receipt:?}"
                );
            }
        }
        // The second reads its state back from disk each time: what was
        // persisted must be what the first holds in memory.
        drop(second);
        second = open(&dirs[1]);
        assert_eq!(first.root(), second.root());
        if replayed {
            assert!(
                matches!(
                    effects.receipts[0].rejection,
                    Some(Rejection::BadNonce { .. })
                ),
                "a transaction applied twice: {:?}",
                effects.receipts[0]
            );
        }
        let now = first.supply().expect("supply");
        assert_eq!(now.total(), supply, "money was made or lost");
        assert_eq!(
            u128::from(first.total_stake().expect("total stake")),
            now.stakes,
            "the kept total stake is not the validators' sum"
        );
        // Every attestation of the job attested to reads back whole, and
        // the same from the store the second reads back.
        if let Some((id, shard)) = job
            && let Some(tracked) = first.job(&id).expect("job")
        {
            let read = first.attestations(&id).expect("attestations");
            let mut attesters: Vec<_> = read.iter().map(|(attester, _)| *attester).collect();
            let mut tracked_attesters = tracked.attesters.clone();
            tracked_attesters.sort();
            attesters.sort();
            assert_eq!(
                attesters, tracked_attesters,
                "the attestations of {id} are not its attesters'"
            );
            assert!(
                read.iter().all(|(_, results)| results.len() == shard),
                "an attestation of {id} does not read back whole: {read:?}"
            );
            let reread = second.attestations(&id).expect("attestations");
            assert_eq!(read, reread, "attestations read back otherwise from disk");
        }
        for receipt in &effects.receipts {
            if let Some(id) = receipt.transaction.filter(|_| receipt.rejection.is_none())
                && let Some(submitted) = first.job(&id).expect("job")
            {
                job = Some((id, submitted.shard.len()));
            }
        }
        // Nonces as the state has them: a skipped one leaves a gap.
        for (i, nonce) in nonces.iter_mut().enumerate() {
            *nonce = first
                .account(&crate::key(i as u8).public_key())
                .expect("account")
                .nonce;
        }
        replay = effects
            .receipts
            .iter()
            .position(|r| r.rejection.is_none())
            .map(|i| (transactions[i].clone(), proposers[i]));
        if input.0.is_empty() || operations >= MAX_OPERATIONS {
            break;
        }
    }
}

/// Streams that transfer, stake, register an encoder, add to its bond
/// (its owner, and another account), submit data and attest, over several
/// commits, and one with garbage among them.
pub fn seeds() -> Vec<Vec<u8>> {
    // What, by whom, a u16 amount, fee 14, the nonce byte.
    let with_nonce = |what: u8, who: u8, amount: u16, nonce: u8| {
        [
            &[what + 11 * who, 0][..],
            &amount.to_le_bytes(),
            &[5, nonce],
        ]
        .concat()
    };
    // The same, the next nonce, proposed by account 0.
    let small = |what: u8, who: u8, amount: u16| with_nonce(what, who, amount, 2);
    // What, by whom, a million plus a u32, fee 14, the next nonce.
    let large = |what: u8, who: u8, extra: u32| {
        [&[what + 11 * who, 100][..], &extra.to_le_bytes(), &[5, 2]].concat()
    };
    let end = small(8, 0, 0);
    let transfer = small(0, 1, 100);
    let garbage = [small(10, 0, 4), b"junk".to_vec()].concat();
    vec![
        [
            transfer.clone(),
            small(2, 0, 500),
            end.clone(),
            small(3, 0, 200),
            transfer.clone(),
        ]
        .concat(),
        [
            large(4, 0, 0),
            large(4, 1, 7),
            large(4, 2, 1),
            end.clone(),
            // Its bytes, "@A" and zeros, are text.
            small(6, 3, 0x4140),
            // 10: account 0's package "p0".
            small(9, 0, 10),
            small(9, 1, 10),
            end.clone(),
            small(7, 0, 1),
            small(7, 1, 2),
            end,
            small(5, 0, 0),
        ]
        .concat(),
        [garbage, transfer, small(0, 4, 9)].concat(),
        // Transfers with forged signatures: account 0's in its own block
        // (0xd2: proposer 13 % 8 % 5 = 0) applies, account 1's in account
        // 4's (0xc2: 12 % 8 % 5 = 4) does not.
        [with_nonce(0, 0, 100, 0xd2), with_nonce(0, 1, 100, 0xc2)].concat(),
    ]
}
