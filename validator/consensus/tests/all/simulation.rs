//! Safety and liveness over many seeded simulation runs.

use soma_consensus::simulator::{Behaviour, Outage, SimConfig, SimReport, run};

/// The seeds every size of committee runs.
const SEEDS: std::ops::Range<u64> = 0..20;

/// Runs every seed for `validators` (a failure names the seed that
/// replays it) and checks what every run must show.
fn run_seeds(validators: usize) -> Vec<SimReport> {
    let reports: Vec<SimReport> = SEEDS
        .map(|seed| {
            run(SimConfig::random(validators, 1000, seed)).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    assert!(reports.iter().all(|r| r.crashes > 0 && r.partitions > 0));
    assert!(reports.iter().all(|r| r.commits > 0));
    assert!(reports.iter().any(|r| r.refused > 0));
    // Some validator down a minute replayed rounds from its peers' stores
    // (in a run where the others could go on without it).
    assert!(reports.iter().any(|r| r.catch_ups > 0));
    // Some run had a congested link.
    assert!(reports.iter().any(|r| r.config.slow_sender.is_some()));
    reports
}

#[test]
fn four_validators_stay_safe_and_live() {
    run_seeds(4);
}

#[test]
fn seven_validators_stay_safe_and_live() {
    run_seeds(7);
}

#[test]
fn ten_validators_stay_safe_and_live() {
    run_seeds(10);
}

#[test]
fn the_seeds_cover_every_fault() {
    let configs: Vec<SimConfig> = [4, 7, 10]
        .into_iter()
        .flat_map(|n| SEEDS.map(move |seed| SimConfig::random(n, 1000, seed)))
        .collect();
    for behaviour in Behaviour::BYZANTINE {
        assert!(
            configs.iter().any(|c| c.behaviours.contains(&behaviour)),
            "no seed has a {behaviour:?} validator"
        );
    }
    for outage in [
        Outage::Long { down_ms: 60_000 },
        Outage::Two,
        Outage::Everyone,
        Outage::BeyondRetention { down_ms: 60_000 },
    ] {
        assert!(
            configs.iter().any(|c| c.outage == outage),
            "no seed has {outage:?}"
        );
    }
    assert!(configs.iter().any(|c| c.stakes.iter().any(|s| *s > 1)));
}

/// Byzantine validators whose blocks some honest validators can accept
/// and others cannot (made-up or too old parents, garbage) while honest
/// ones crash two at a time: no honest validator is ever left unable to
/// accept its peers' blocks.
#[test]
fn parents_held_by_some_validators_only_never_stall_the_others() {
    for seed in 0..3 {
        for behaviours in [
            [Behaviour::OldParents].as_slice(),
            &[Behaviour::Garbage, Behaviour::InvalidParents],
        ] {
            let n = 3 * behaviours.len() + 1;
            let mut all = vec![Behaviour::Honest; n];
            all[..behaviours.len()].copy_from_slice(behaviours);
            let config = SimConfig {
                behaviours: all,
                stakes: vec![1; n],
                outage: Outage::Two,
                slow_sender: None,
                ..SimConfig::random(n, 1000, seed)
            };
            run(config).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// One validator down for a simulated minute, under load, far beyond the
/// 2 × gc_depth rounds its peers keep in their DAGs: it replays rounds from
/// their stores, commits the same sequence and keeps up again.
#[test]
fn a_validator_down_for_a_minute_catches_up_and_commits_the_same_sequence() {
    let config = SimConfig {
        behaviours: vec![Behaviour::Honest; 4],
        stakes: vec![1; 4],
        crashes: false,
        partitions: false,
        outage: Outage::Long { down_ms: 60_000 },
        slow_sender: None,
        ..SimConfig::random(4, 1500, 3)
    };
    let report = run(config).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.catch_ups > 0, "{report:?}");
}

/// One validator down for a simulated minute while its peers keep blocks
/// for only 2 × gc_depth rounds below their DAGs: its rounds requests come
/// back without the rounds it needs, and it resumes from a checkpoint of a
/// peer's commit log, then commits the same sequence as the others.
#[test]
fn a_validator_down_beyond_its_peers_retention_resumes_from_a_checkpoint() {
    let config = SimConfig {
        behaviours: vec![Behaviour::Honest; 4],
        stakes: vec![1; 4],
        crashes: false,
        partitions: false,
        outage: Outage::BeyondRetention { down_ms: 60_000 },
        slow_sender: None,
        ..SimConfig::random(4, 1500, 3)
    };
    let report = run(config).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.checkpoints > 0, "{report:?}");
}

/// Blocks at their byte limit, a block's worth of the largest transactions
/// from every validator in every round, through crashes, partitions and a
/// restart of the whole committee: fetch answers and recovery carry them,
/// and every honest validator commits them.
#[test]
fn blocks_at_the_size_limit_commit_through_crashes_partitions_and_restarts() {
    let reports: Vec<SimReport> = (0..3)
        .map(|seed| {
            let config = SimConfig {
                behaviours: vec![Behaviour::Honest; 4],
                stakes: vec![1; 4],
                outage: Outage::Everyone,
                large_blocks: true,
                slow_sender: None,
                ..SimConfig::random(4, 100, seed)
            };
            run(config).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    for report in &reports {
        assert!(report.crashes > 0, "{report:?}");
        // 32 transactions of 64 KiB fill a block.
        assert!(report.transactions >= 90 * 4 * 32, "{report:?}");
    }
    // A split is drawn at a random time; short runs may end before it.
    assert!(reports.iter().any(|r| r.partitions > 0));
}

/// An honest validator on a congested link: its blocks that arrive after
/// the others moved on are never built on, and fall below the
/// garbage-collection round uncommitted. Their transactions are proposed
/// again; each is committed once (the run fails on a transaction committed
/// twice, or in a block far below its author's last commit and neither
/// committed nor waiting to be proposed again).
#[test]
fn transactions_of_blocks_left_behind_are_proposed_again_and_committed_once() {
    let reports: Vec<SimReport> = (0..4)
        .map(|seed| {
            let config = SimConfig {
                behaviours: vec![Behaviour::Honest; 4],
                stakes: vec![1; 4],
                crashes: seed % 2 == 0,
                outage: Outage::None,
                partitions: false,
                slow_sender: Some(3),
                ..SimConfig::random(4, 1000, seed)
            };
            run(config).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    assert!(reports.iter().all(|r| r.resubmitted > 0), "{reports:?}");
}

#[test]
fn a_fault_free_committee_commits_every_round() {
    let config = SimConfig {
        behaviours: vec![Behaviour::Honest; 4],
        crashes: false,
        outage: Outage::None,
        partitions: false,
        slow_sender: None,
        ..SimConfig::random(4, 200, 1)
    };
    let report = run(config).unwrap();
    assert!(report.commits >= 190, "{report:?}");
}
