//! Runs many seeded consensus simulations (`cargo xtask sim`) and prints
//! any failing seed with the command that replays it.

use clap::Parser;
use soma_consensus::simulator::{SimConfig, run};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(about = "Seeded consensus simulations: safety and liveness over many runs")]
struct Args {
    /// Committee sizes to simulate.
    #[arg(long, value_delimiter = ',', default_values_t = [4, 7, 10])]
    validators: Vec<usize>,
    /// Seeds per committee size.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Rounds each run must commit.
    #[arg(long, default_value_t = 1000)]
    rounds: u32,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs: Vec<(usize, u64)> = args
        .validators
        .iter()
        .flat_map(|&n| (args.first_seed..args.first_seed + args.seeds).map(move |s| (n, s)))
        .collect();
    let total = jobs.len() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (jobs, next, failures) = (&jobs, next.clone(), failures.clone());
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(n, seed)) = jobs.get(i as usize) else { break };
                    if let Err(e) = run(SimConfig::random(n, args.rounds, seed)) {
                        eprintln!("FAILED: {e}");
                        eprintln!(
                            "  replay: cargo xtask sim --validators {n} --first-seed {seed} --seeds 1 --rounds {}",
                            args.rounds
                        );
                        failures.lock().unwrap().push(e);
                    }
                    if (i + 1) % 50 == 0 {
                        eprintln!("{} / {total} runs, {:.0?}", i + 1, start.elapsed());
                    }
                }
            });
        }
    });
    let failures = failures.lock().unwrap();
    println!(
        "{total} runs ({} seeds × {:?} validators × {} rounds) in {:.0?}: {} failed",
        args.seeds,
        args.validators,
        args.rounds,
        start.elapsed(),
        failures.len()
    );
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
