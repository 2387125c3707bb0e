use super::*;
use soma_execution::{Account, ExecutionError, Rejection, Validator};
use soma_host::Digest;

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

/// Applies one transaction and checks it is refused with `expected` and
/// changed no account, stake, bond or fee.
fn refused(g: &Genesis, setup: &[Vec<u8>], tx: Vec<u8>, expected: Rejection) {
    let dir = tempfile::tempdir().unwrap();
    let mut ex = open(dir.path(), g);
    if !setup.is_empty() {
        let effects = apply(&mut ex, setup);
        assert!(
            effects.receipts.iter().all(|r| r.rejection.is_none()),
            "{effects:?}"
        );
    }
    let accounts = |ex: &Executor| {
        (0..5)
            .map(|i| ex.account(&public(i)).unwrap())
            .collect::<Vec<_>>()
    };
    let (before, supply) = (accounts(&ex), ex.supply().unwrap());
    let effects = apply(&mut ex, &[tx]);
    assert_eq!(effects.receipts[0].rejection, Some(expected));
    assert_eq!(accounts(&ex), before);
    assert_eq!(ex.supply().unwrap(), supply);
}

#[test]
fn every_broken_rule_is_refused_and_changes_nothing() {
    let g = genesis();
    let other_chain = Genesis {
        chain_name: "elsewhere".into(),
        ..g.clone()
    };
    let package = Digest([7; 32]);
    let register = |bond| Action::RegisterEncoder { package, bond };
    let min = Parameters::default();
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
            signed(&g, 2, 0, 9, transfer(3, 1)),
            Rejection::FeeTooLow { min: min.min_fee },
        ),
        (
            vec![],
            signed(&g, 2, 0, 10, transfer(3, 1_000_000_000)),
            Rejection::InsufficientFunds {
                needed: 1_000_000_010,
                available: 1_000_000_000,
            },
        ),
        (
            vec![],
            signed(&g, 2, 0, u64::MAX, transfer(3, 1)),
            Rejection::InsufficientFunds {
                needed: u64::MAX,
                available: 1_000_000_000,
            },
        ),
        (
            vec![],
            signed(&g, 2, 0, 10, Action::AddStake { amount: 1 }),
            Rejection::NotAValidator,
        ),
        (
            vec![],
            signed(&g, 0, 0, 10, Action::WithdrawStake { amount: 5_000_001 }),
            Rejection::InsufficientStake {
                available: 5_000_000,
            },
        ),
        (
            vec![],
            signed(&g, 0, 0, 10, Action::WithdrawStake { amount: 4_500_000 }),
            Rejection::StakeBelowMinimum {
                min: min.min_validator_stake,
            },
        ),
        (
            vec![],
            signed(&g, 2, 0, 10, register(999_999)),
            Rejection::BondTooLow {
                min: min.min_encoder_bond,
            },
        ),
        (
            vec![signed(&g, 2, 0, 10, register(1_000_000))],
            signed(&g, 3, 0, 10, register(1_000_000)),
            Rejection::EncoderExists,
        ),
        (
            vec![],
            signed(&g, 2, 0, 10, Action::DeregisterEncoder { package }),
            Rejection::UnknownEncoder,
        ),
        (
            vec![signed(&g, 2, 0, 10, register(1_000_000))],
            signed(&g, 3, 0, 10, Action::DeregisterEncoder { package }),
            Rejection::NotOwner,
        ),
    ];
    for (setup, tx, expected) in cases {
        refused(&g, &setup, tx, expected);
    }
    // A signature by someone other than the sender.
    let mut forged = signed(&g, 2, 0, 10, transfer(3, 1));
    let theirs = signed(&g, 3, 0, 10, transfer(3, 1));
    let n = forged.len();
    forged[n - 64..].copy_from_slice(&theirs[n - 64..]);
    refused(&g, &[], forged, Rejection::BadSignature);
}

#[test]
fn a_transfer_that_would_overflow_the_recipient_is_refused() {
    let g = Genesis::new(
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
    .unwrap();
    refused(
        &g,
        &[],
        signed(&g, 0, 0, 10, transfer(1, 50)),
        Rejection::Overflow,
    );
}

#[test]
fn stake_and_encoder_bonds_move_between_balance_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(dir.path(), &g);
    let package = Digest([9; 32]);
    let effects = apply(
        &mut ex,
        &[
            signed(&g, 0, 0, 10, Action::AddStake { amount: 1_000 }),
            signed(&g, 1, 0, 10, Action::WithdrawStake { amount: 5_000_000 }),
            signed(
                &g,
                2,
                0,
                10,
                Action::RegisterEncoder {
                    package,
                    bond: 2_000_000,
                },
            ),
        ],
    );
    assert!(
        effects.receipts.iter().all(|r| r.rejection.is_none()),
        "{effects:?}"
    );
    assert_eq!(
        ex.validator(&public(0)).unwrap(),
        Some(Validator {
            stake: 5_001_000,
            deviant: 0
        })
    );
    assert_eq!(
        ex.validator(&public(1)).unwrap(),
        Some(Validator {
            stake: 0,
            deviant: 0
        })
    );
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
fn transactions_of_one_commit_see_each_other_and_a_refusal_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis();
    let mut ex = open(dir.path(), &g);
    // Account 4 starts empty: it can spend only what the first transfer
    // gives it, and only once.
    let effects = apply(
        &mut ex,
        &[
            signed(&g, 2, 0, 10, transfer(4, 100)),
            signed(&g, 4, 0, 10, transfer(3, 90)),
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
                needed: 11,
                available: 0
            }),
            None
        ]
    );
    assert_eq!(
        ex.account(&public(4)).unwrap(),
        Account {
            balance: 0,
            nonce: 1
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
    let other = Genesis {
        chain_name: "other".into(),
        ..g
    };
    let err = Executor::open(dir.path(), &other).err().unwrap();
    assert!(matches!(err, ExecutionError::WrongGenesis { .. }), "{err}");
}
