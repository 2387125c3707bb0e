//! Safety and liveness over many seeded simulation runs.

use soma_consensus::simulator::{Behaviour, SimConfig, SimReport, run};

/// Runs each seed (a failure names the seed that replays it) and checks
/// the seeds exercised every kind of fault.
fn run_seeds(validators: usize, rounds: u32, seeds: std::ops::Range<u64>) -> Vec<SimReport> {
    let reports: Vec<SimReport> = seeds
        .map(|seed| {
            run(SimConfig::random(validators, rounds, seed)).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    for behaviour in [
        Behaviour::Equivocate,
        Behaviour::InvalidParents,
        Behaviour::Garbage,
        Behaviour::Silent,
    ] {
        assert!(
            reports
                .iter()
                .any(|r| r.config.behaviours.contains(&behaviour)),
            "no seed had a {behaviour:?} validator"
        );
    }
    assert!(reports.iter().all(|r| r.crashes > 0 && r.partitions > 0));
    assert!(reports.iter().any(|r| r.refused > 0));
    reports
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

/// Seeds where a validator withheld its own history while honest ones
/// crashed: before blocks built on withheld history were refused outright,
/// an honest validator a few commits behind could never accept its peers'
/// blocks again (in two of them the whole committee stalled).
#[test]
fn withheld_history_never_stalls_a_lagging_validator() {
    for (validators, seed) in [(4, 137), (4, 207), (7, 172), (7, 183), (7, 186)] {
        let config = SimConfig::random(validators, 1000, seed);
        assert!(config.behaviours.contains(&Behaviour::Garbage));
        run(config).unwrap_or_else(|e| panic!("{e}"));
    }
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
    assert!(report.commits >= 190, "{report:?}");
}
