//! Safety and liveness over many seeded simulation runs.

use soma_consensus::simulator::{Behaviour, SimConfig, SimReport, run};

fn run_seeds(validators: usize, rounds: u32, seeds: std::ops::Range<u64>) -> Vec<SimReport> {
    seeds
        .map(|seed| {
            run(SimConfig::random(validators, rounds, seed)).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

#[test]
fn four_validators_stay_safe_and_live_over_twenty_seeds() {
    let reports = run_seeds(4, 1000, 0..20);
    assert!(reports.iter().all(|r| r.commits > 0));
}

#[test]
fn seven_validators_stay_safe_and_live_over_twenty_seeds() {
    let reports = run_seeds(7, 1000, 0..20);
    assert!(reports.iter().all(|r| r.commits > 0));
}

#[test]
fn a_fault_free_committee_commits_every_round() {
    let config = SimConfig {
        behaviours: vec![Behaviour::Honest; 4],
        crashes: false,
        partitions: false,
        ..SimConfig::random(4, 200, 1)
    };
    let report = run(config).unwrap();
    println!("{report:?}");
    assert!(report.commits >= 190, "{report:?}");
}

#[test]
#[ignore]
fn one_seed_from_the_environment() {
    let seed: u64 = std::env::var("SEED").unwrap().parse().unwrap();
    let n: usize = std::env::var("N").unwrap().parse().unwrap();
    let rounds: u32 = std::env::var("ROUNDS").unwrap().parse().unwrap();
    let config = SimConfig::random(n, rounds, seed);
    println!("{config:?}");
    let start = std::time::Instant::now();
    println!("{:?} in {:?}", run(config), start.elapsed());
}
