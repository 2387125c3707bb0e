use super::*;
use soma_execution::{Account, ExecutionError, Rejection, StateReader, Validator};
use std::sync::atomic::{AtomicBool, Ordering};

fn transfer(to: u8, amount: u64) -> Action {
    Action::Transfer {
        to: public(to),
        amount,
    }
}

#[test]
fn a_transfer_moves_money_bumps_the_nonce_and_pays_the_fee() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(dir.path(), &g);
    let before = ex.root();
    let effects = apply(&mut ex, &[signed(&g, 2, 0, 10, transfer(3, 500))]);
    assert_eq!(effects.receipts[0].rejection, None);
    assert_eq!(effects.receipts[0].fee, 10);
    assert!(effects.receipts[0].transaction.is_some());
    assert_eq!(
        ex.account(&public(2)).unwrap(),
        Account {
            balance: 1_000_000_000 - 510,
            nonce: 1
        }
    );
    assert_eq!(ex.account(&public(3)).unwrap().balance, 1_000_000_500);
    assert_eq!(ex.supply().unwrap().treasury, 10);
    assert_ne!(ex.root(), before);
    assert_eq!(ex.receipts(0).unwrap(), effects.receipts);
}

/// Applies `tx` (after `setup`) and checks it is refused with `expected`,
/// having charged the sender (account 0 to 4) `fee` and its nonce if `fee`
/// is not 0, and changed nothing else.
fn refused(g: &Genesis, setup: &[Vec<u8>], tx: Vec<u8>, expected: Rejection, sender: u8, fee: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), g);
    if !setup.is_empty() {
        let effects = apply(&mut ex, setup);
        let applied = effects.receipts.iter().all(|r| r.rejection.is_none());
        assert!(applied, "{effects:?}");
    }
    let accounts = |ex: &Executor| {
        (0..5)
            .map(|i| ex.account(&public(i)).unwrap())
            .collect::<Vec<_>>()
    };
    let (mut after, mut supply) = (accounts(&ex), ex.supply().unwrap());
    let effects = apply(&mut ex, &[tx]);
    assert_eq!(effects.receipts[0].rejection, Some(expected));
    assert_eq!(ex.receipts(ex.next_index() - 1).unwrap(), effects.receipts);
    assert_eq!(effects.receipts[0].fee, fee, "{expected:?}");
    if fee > 0 {
        after[sender as usize].balance -= fee;
        after[sender as usize].nonce += 1;
        supply.balances -= u128::from(fee);
        supply.treasury += u128::from(fee);
    }
    assert_eq!(accounts(&ex), after, "{expected:?}");
    assert_eq!(ex.supply().unwrap(), supply, "{expected:?}");
}

#[test]
fn a_transaction_that_cannot_be_charged_changes_nothing() {
    let g = genesis();
    let other_chain = variant(&g, "elsewhere", Parameters::default());
    let min = Parameters::default().min_fee;
    let cases: Vec<(Vec<Vec<u8>>, Vec<u8>, Rejection)> = vec![
        (vec![], vec![1, 2, 3], Rejection::Malformed),
        (
            vec![],
            signed(&other_chain, 2, 0, 10, transfer(3, 1)),
            Rejection::WrongChain,
        ),
        (
            vec![signed(&g, 2, 0, 10, transfer(3, 1))],
            signed(&g, 2, 0, 10, transfer(3, 1)),
            Rejection::BadNonce {
                expected: 1,
                got: 0,
            },
        ),
        (
            vec![],
            signed(&g, 2, 5, 10, transfer(3, 1)),
            Rejection::BadNonce {
                expected: 0,
                got: 5,
            },
        ),
        (
            vec![],
            signed(&g, 2, 0, min - 1, transfer(3, 1)),
            Rejection::FeeTooLow { min },
        ),
        (
            vec![],
            signed(&g, 2, 0, u64::MAX, transfer(3, 1)),
            Rejection::InsufficientFunds {
                needed: u64::MAX,
                available: 1_000_000_000,
            },
        ),
    ];
    for (setup, tx, expected) in cases {
        refused(&g, &setup, tx, expected, 2, 0);
    }
    // A signature by someone other than the sender.
    let mut forged = signed(&g, 2, 0, 10, transfer(3, 1));
    let theirs = signed(&g, 3, 0, 10, transfer(3, 1));
    let n = forged.len();
    forged[n - 64..].copy_from_slice(&theirs[n - 64..]);
    refused(&g, &[], forged, Rejection::BadSignature, 2, 0);
}

/// Applies `transactions` as the next commit, each in a block of the
/// matching `proposers`.
fn apply_proposed(
    ex: &mut Executor,
    transactions: &[Vec<u8>],
    proposers: &[PublicKey],
) -> Result<CommitEffects, ExecutionError> {
    let index = ex.next_index();
    ex.apply(Commit {
        index,
        digest: *blake3::hash(&index.to_le_bytes()).as_bytes(),
        transactions,
        proposers: Some(proposers),
    })
}

#[test]
fn a_transaction_in_its_senders_own_block_is_authenticated_by_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(dir.path(), &g);
    // Validator 0's transfer and account 2's, each signed by someone else.
    let forge = |from: u8, nonce: u64| {
        let mut tx = signed(&g, from, nonce, 10, transfer(3, 7));
        let theirs = signed(&g, from + 1, nonce, 10, transfer(3, 7));
        let n = tx.len();
        tx[n - 64..].copy_from_slice(&theirs[n - 64..]);
        tx
    };
    let (validator, user) = (forge(0, 0), forge(2, 0));
    // In another's block, or with proposers unknown, the signature is
    // what shows the sender sent it.
    let effects = apply_proposed(
        &mut ex,
        &[validator.clone(), user.clone()],
        &[public(1), public(0)],
    )
    .unwrap();
    let bad = Some(Rejection::BadSignature);
    assert_eq!(effects.receipts[0].rejection, bad);
    assert_eq!(effects.receipts[1].rejection, bad);
    assert_eq!(
        apply(&mut ex, std::slice::from_ref(&validator)).receipts[0].rejection,
        bad
    );
    assert_eq!(ex.account(&public(0)).unwrap().nonce, 0);
    // In its sender's own block, the block's signature stands for it; an
    // account's transaction in a validator's block still needs its own.
    let effects = apply_proposed(&mut ex, &[validator, user], &[public(0), public(0)]).unwrap();
    assert_eq!(effects.receipts[0].rejection, None);
    assert_eq!(effects.receipts[1].rejection, bad);
    assert_eq!(
        ex.account(&public(0)).unwrap(),
        Account {
            balance: 1_000_000_000 - 17,
            nonce: 1
        }
    );
    assert_eq!(ex.account(&public(2)).unwrap().nonce, 0);
}

#[test]
fn a_commit_whose_proposers_do_not_match_its_transactions_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(dir.path(), &g);
    let root = ex.root();
    let txs = [
        signed(&g, 2, 0, 10, transfer(3, 1)),
        signed(&g, 2, 1, 10, transfer(3, 1)),
    ];
    let err = apply_proposed(&mut ex, &txs, &[public(0)]).unwrap_err();
    assert!(
        matches!(
            err,
            ExecutionError::Proposers {
                index: 0,
                transactions: 2,
                proposers: 1
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("2 transactions but 1 proposers"),
        "{err}"
    );
    assert_eq!((ex.next_index(), ex.root()), (0, root));
    assert_eq!(ex.account(&public(2)).unwrap().nonce, 0);
    // The same commit, whole, applies.
    let effects = apply_proposed(&mut ex, &txs, &[public(0), public(1)]).unwrap();
    assert!(effects.receipts.iter().all(|r| r.rejection.is_none()));
    assert_eq!(ex.account(&public(2)).unwrap().nonce, 2);
}

/// A network, transactions applied first, the transaction refused, why,
/// and its sender.
type Case<'a> = (&'a Genesis, Vec<Vec<u8>>, Vec<u8>, Rejection, u8);

#[test]
fn a_refused_action_pays_its_fee_and_uses_its_nonce_but_changes_nothing_else() {
    let g = genesis();
    let min = Parameters::default();
    let (register, package) = registration(&g, 2, "mine", 1_000_000);
    let (cheap, _) = registration(&g, 2, "cheap", 999_999);
    let (theirs, _) = registration(&g, 3, "theirs", 1_000_000);
    let narrow = Genesis::new(
        "narrow".into(),
        g.accounts().to_vec(),
        g.validators().to_vec(),
        vec![],
        Parameters {
            dimension: 8,
            ..Parameters::default()
        },
    )
    .unwrap();
    let (wide, _) = registration(&g, 2, "wide", 1_000_000);
    let (pictures, _) = registration_of(&g, 2, "pictures", 1_000_000, Modality::Image);
    // It would refuse the network's longest data.
    let short = EncoderMeta {
        max_input_bytes: g.parameters().max_data_bytes - 1,
        ..registered_meta(&g, "short")
    };
    let (short, _) = registration_signed(2, &short, 1_000_000);
    // Signed by account 3, sent by account 2.
    let stolen = theirs.clone();
    let mut garbled = stolen.clone();
    if let Action::RegisterEncoder { manifest, .. } = &mut garbled {
        manifest[20] ^= 1;
    }
    let cases: Vec<Case> = vec![
        (
            &g,
            vec![],
            signed(&g, 2, 0, 10, transfer(3, 1_000_000_000)),
            Rejection::InsufficientFunds {
                needed: 1_000_000_000,
                available: 999_999_990,
            },
            2,
        ),
        (
            &g,
            vec![],
            signed(&g, 2, 0, 10, Action::AddStake { amount: 1 }),
            Rejection::NotAValidator,
            2,
        ),
        (
            &g,
            vec![],
            signed(&g, 0, 0, 10, Action::WithdrawStake { amount: 5_000_001 }),
            Rejection::InsufficientStake {
                available: 5_000_000,
            },
            0,
        ),
        (
            &g,
            vec![],
            signed(&g, 0, 0, 10, Action::WithdrawStake { amount: 4_500_000 }),
            Rejection::StakeBelowMinimum {
                min: min.min_validator_stake,
            },
            0,
        ),
        (
            &g,
            vec![],
            signed(&g, 2, 0, 10, cheap),
            Rejection::BondTooLow {
                min: min.min_encoder_bond,
            },
            2,
        ),
        (
            &g,
            vec![signed(&g, 2, 0, 10, register.clone())],
            signed(&g, 2, 1, 10, register),
            Rejection::EncoderExists,
            2,
        ),
        (
            &g,
            vec![],
            signed(&g, 2, 0, 10, stolen),
            Rejection::NotPackageSigner,
            2,
        ),
        (
            &g,
            vec![],
            signed(&g, 2, 0, 10, garbled),
            Rejection::BadPackage,
            2,
        ),
        (
            &narrow,
            vec![],
            signed(&narrow, 2, 0, 10, wide),
            Rejection::WrongDimension { expected: 8 },
            2,
        ),
        (
            &g,
            vec![],
            signed(&g, 2, 0, 10, pictures),
            Rejection::NotTextEncoder,
            2,
        ),
        (
            &g,
            vec![],
            signed(
                &g,
                2,
                0,
                10,
                Action::SubmitData {
                    modality: Modality::Image,
                    data: b"\x89PNG".to_vec(),
                    payment: 1_000_000,
                },
            ),
            Rejection::NotTextData,
            2,
        ),
        (
            &g,
            vec![],
            signed(&g, 2, 0, 10, short),
            Rejection::InputLimitTooLow {
                min: g.parameters().max_data_bytes,
            },
            2,
        ),
        (
            &g,
            vec![],
            signed(&g, 2, 0, 10, Action::DeregisterEncoder { package }),
            Rejection::UnknownEncoder,
            2,
        ),
        (
            &g,
            vec![signed(&g, 3, 0, 10, theirs)],
            signed(
                &g,
                2,
                0,
                10,
                Action::DeregisterEncoder {
                    package: registration(&g, 3, "theirs", 0).1,
                },
            ),
            Rejection::NotOwner,
            2,
        ),
    ];
    for (g, setup, tx, expected, sender) in cases {
        refused(g, &setup, tx, expected, sender, 10);
    }
}

#[test]
fn a_supply_larger_than_a_u64_is_refused_at_genesis() {
    let err = Genesis::new(
        "rich".into(),
        vec![
            GenesisAccount {
                key: public(0),
                balance: 100,
            },
            GenesisAccount {
                key: public(1),
                balance: u64::MAX,
            },
        ],
        vec![GenesisValidator {
            key: public(0),
            stake: 1,
        }],
        vec![],
        Parameters::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("u64"), "{err}");
}

#[test]
fn stake_and_encoder_bonds_move_between_balance_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(dir.path(), &g);
    let (register, package) = registration(&g, 2, "mine", 2_000_000);
    let effects = apply(
        &mut ex,
        &[
            signed(&g, 0, 0, 10, Action::AddStake { amount: 1_000 }),
            signed(&g, 1, 0, 10, Action::WithdrawStake { amount: 5_000_000 }),
            signed(&g, 2, 0, 10, register),
        ],
    );
    assert!(
        effects.receipts.iter().all(|r| r.rejection.is_none()),
        "{effects:?}"
    );
    let validator = |stake| {
        Some(Validator {
            stake,
            deviant: 0,
            pending: 0,
        })
    };
    assert_eq!(ex.validator(&public(0)).unwrap(), validator(5_001_000));
    assert_eq!(ex.validator(&public(1)).unwrap(), validator(0));
    assert_eq!(
        ex.account(&public(1)).unwrap().balance,
        1_000_000_000 + 5_000_000 - 10
    );
    let encoder = ex.encoder(&package).unwrap().unwrap();
    assert_eq!((encoder.owner, encoder.bond), (public(2), 2_000_000));
    assert_eq!(
        ex.account(&public(2)).unwrap().balance,
        1_000_000_000 - 2_000_010
    );

    apply(
        &mut ex,
        &[signed(&g, 2, 1, 10, Action::DeregisterEncoder { package })],
    );
    assert_eq!(ex.encoder(&package).unwrap(), None);
    assert_eq!(ex.account(&public(2)).unwrap().balance, 1_000_000_000 - 20);
}

#[test]
fn transactions_of_one_commit_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(dir.path(), &g);
    // Account 4 starts empty: it can spend only what the first transfer
    // gives it.
    let effects = apply(
        &mut ex,
        &[
            signed(&g, 2, 0, 10, transfer(4, 100)),
            signed(&g, 4, 0, 10, transfer(3, 80)),
            signed(&g, 4, 1, 10, transfer(3, 1)),
            signed(&g, 2, 1, 10, transfer(3, 1)),
        ],
    );
    let outcomes: Vec<_> = effects.receipts.iter().map(|r| r.rejection).collect();
    assert_eq!(
        outcomes,
        [
            None,
            None,
            Some(Rejection::InsufficientFunds {
                needed: 1,
                available: 0
            }),
            None
        ]
    );
    // The refused transfer still paid its fee.
    assert_eq!(
        ex.account(&public(4)).unwrap(),
        Account {
            balance: 0,
            nonce: 2
        }
    );
}

#[test]
fn commits_apply_in_order_and_a_state_belongs_to_one_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(dir.path(), &g);
    apply(&mut ex, &[]);
    let err = ex
        .apply(Commit {
            index: 0,
            digest: [0; 32],
            transactions: &[],
            proposers: None,
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecutionError::OutOfOrder {
                expected: 1,
                got: 0
            }
        ),
        "{err}"
    );
    let err = ex
        .apply(Commit {
            index: 5,
            digest: [0; 32],
            transactions: &[],
            proposers: None,
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecutionError::OutOfOrder {
                expected: 1,
                got: 5
            }
        ),
        "{err}"
    );
    let (root, next) = (ex.root(), ex.next_index());
    drop(ex);

    let reopened = open(dir.path(), &g);
    assert_eq!((reopened.root(), reopened.next_index()), (root, next));
    drop(reopened);
    let other = variant(&g, "other", Parameters::default());
    let err = Executor::open(dir.path(), &other, None).err().unwrap();
    assert!(matches!(err, ExecutionError::WrongGenesis { .. }), "{err}");
}

#[test]
fn a_long_commit_checked_in_batches_gives_each_transaction_the_receipt_it_gets_alone() {
    // Apply checks signatures a batch ahead: a commit many batches long,
    // with malformed, forged and replayed transactions among valid ones,
    // must give each the receipt it gets in a commit of its own.
    let g = genesis();
    let mut transactions = Vec::new();
    let mut nonce = 0;
    for i in 0..60u64 {
        transactions.push(match i % 5 {
            1 => vec![i as u8; 3],
            2 => {
                let mut forged = signed(&g, 2, nonce, 10, transfer(3, i));
                let theirs = signed(&g, 3, 0, 10, transfer(3, i));
                let n = forged.len();
                forged[n - 64..].copy_from_slice(&theirs[n - 64..]);
                forged
            }
            3 => signed(&g, 2, 0, 10, transfer(3, i)),
            _ => {
                nonce += 1;
                signed(&g, 2, nonce - 1, 10, transfer(3, i))
            }
        });
    }
    let (dir, alone) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut together, mut one_by_one) = (open(dir.path(), &g), open(alone.path(), &g));
    let receipts = apply(&mut together, &transactions).receipts;
    let each: Vec<_> = transactions
        .iter()
        .flat_map(|tx| apply(&mut one_by_one, std::slice::from_ref(tx)).receipts)
        .collect();
    assert_eq!(receipts, each);
    let refused = |which: fn(&Rejection) -> bool| {
        receipts
            .iter()
            .filter(|r| r.rejection.as_ref().is_some_and(which))
            .count()
    };
    assert_eq!(refused(|r| *r == Rejection::Malformed), 12);
    assert_eq!(refused(|r| *r == Rejection::BadSignature), 12);
    assert_eq!(refused(|r| matches!(r, Rejection::BadNonce { .. })), 12);
    assert_eq!(together.account(&public(2)).unwrap().nonce, 24);
    for who in [2, 3] {
        assert_eq!(
            together.account(&public(who)).unwrap(),
            one_by_one.account(&public(who)).unwrap()
        );
    }
}

/// A reader beside apply sees whole commits, and later reads never less:
/// once the payer's nonce shows a commit applied, the account that commit
/// writes last holds its payment. (A commit's writes land in one batch,
/// which fjall shows to plain reads one write at a time.)
#[test]
fn a_reader_beside_apply_never_sees_part_of_a_commit() {
    const COMMITS: u64 = 40;
    const PAYEES: u64 = 300;
    let g = genesis();
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), &g);
    let payee = |c: u64, i: u64| {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&c.to_le_bytes());
        seed[8..16].copy_from_slice(&i.to_le_bytes());
        SecretKey::from_bytes(&seed).public_key()
    };
    // Per commit, the payee whose account is last in the commit's batch
    // (written in key order; the payer's falls among the payees').
    let last: Vec<PublicKey> = (0..COMMITS)
        .map(|c| {
            (0..PAYEES)
                .map(|i| payee(c, i))
                .max_by_key(|k| k.to_bytes())
                .unwrap()
        })
        .collect();
    let commits: Vec<Vec<Vec<u8>>> = (0..COMMITS)
        .map(|c| {
            (0..PAYEES)
                .map(|i| {
                    let to = payee(c, i);
                    signed(
                        &g,
                        2,
                        c * PAYEES + i,
                        10,
                        Action::Transfer { to, amount: 1 },
                    )
                })
                .collect()
        })
        .collect();
    let reader = StateReader::clone(&ex);
    let done = AtomicBool::new(false);
    /// Stops the checker however applying ends (a panic too).
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let checker = s.spawn(|| {
            // The commits seen applied by checks made while others were
            // still to come.
            let mut seen = std::collections::BTreeSet::new();
            loop {
                let finished = done.load(Ordering::Relaxed);
                let nonce = reader.account(&public(2)).unwrap().nonce;
                if let Some(c) = (nonce / PAYEES).checked_sub(1) {
                    let paid = reader.account(&last[c as usize]).unwrap().balance;
                    assert_eq!(paid, 1, "commit {c} seen in part");
                    if c + 1 < COMMITS {
                        seen.insert(c);
                    }
                }
                if finished {
                    return seen.len();
                }
            }
        });
        let _done = Done(&done);
        for transactions in &commits {
            apply(&mut ex, transactions);
        }
        drop(_done);
        let seen = checker.join().unwrap();
        assert!(seen >= 2, "the reader saw {seen} commits while apply ran");
    });
}
