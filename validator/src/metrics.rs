//! The node's counters, and `/metrics` in the Prometheus text format.

use crate::node::Shared;
use soma_execution::Outcome;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of execution, compute and the API (consensus keeps its own).
#[derive(Debug, Default)]
pub(crate) struct NodeMetrics {
    pub(crate) commits_applied: AtomicU64,
    /// Milliseconds from submission through the API to commit, summed,
    /// and how many were measured.
    pub(crate) commit_latency_ms: AtomicU64,
    pub(crate) commit_latency_count: AtomicU64,
    pub(crate) transactions_applied: AtomicU64,
    pub(crate) transactions_rejected: AtomicU64,
    pub(crate) attestations_submitted: AtomicU64,
    /// The job runner's tries to load an encoder package.
    pub(crate) package_load_attempts: AtomicU64,
    /// Blocks' state-root claims compared with this node's roots.
    pub(crate) state_roots_compared: AtomicU64,
    /// Of those, the ones that differ.
    pub(crate) deviant_state_roots: AtomicU64,
    /// This node's encoder runs by outcome, indexed by `Outcome as usize`.
    pub(crate) encoder_outcomes: [AtomicU64; Outcome::ALL.len()],
    pub(crate) jobs_finalised: AtomicU64,
    pub(crate) jobs_expired: AtomicU64,
    /// Jobs the applied commits finalised, the commits each took from the
    /// one that made it (summed), and the deviant attestations
    /// finalisation recorded.
    pub(crate) finalisations: AtomicU64,
    pub(crate) finalisation_commits: AtomicU64,
    pub(crate) deviant_attestations: AtomicU64,
    /// Milliseconds `POST /v1/embeddings` waited for its jobs (decided or
    /// not), summed, and how many requests waited.
    pub(crate) embedding_wait_ms: AtomicU64,
    pub(crate) embedding_waits: AtomicU64,
    pub(crate) embeddings_served: AtomicU64,
    /// `POST /v1/embeddings` requests running (within the node-wide
    /// limit).
    pub(crate) embedding_requests_in_flight: AtomicU64,
    /// API requests answered with a 4xx.
    pub(crate) api_refused: AtomicU64,
    /// API requests turned away: connection cap or too many in flight.
    pub(crate) api_throttled: AtomicU64,
}

/// The Prometheus text exposition of `shared`'s counters and its
/// consensus's.
pub(crate) fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP soma_{name} {help}\n# TYPE soma_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "soma_{name}{labels} {value}");
        }
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let m = &shared.metrics;
    let consensus = shared.submitter().metrics();
    let applied = *shared.applied.borrow();
    metric(
        "commits_total",
        "counter",
        "Commits consensus delivered.",
        &[("", load(&consensus.commits))],
    );
    metric(
        "commits_applied_total",
        "counter",
        "Commits the executor applied since the node started.",
        &[("", load(&m.commits_applied))],
    );
    metric(
        "commit_latency_milliseconds",
        "summary",
        "Time from a transaction's submission through the API to its commit.",
        &[
            ("_sum", load(&m.commit_latency_ms)),
            ("_count", load(&m.commit_latency_count)),
        ],
    );
    metric(
        "mempool_bytes",
        "gauge",
        "Bytes of transactions submitted here and not yet in a block.",
        &[("", load(&consensus.mempool_bytes))],
    );
    metric(
        "journaled_transactions",
        "gauge",
        "Transactions accepted through the API and not yet seen committed, kept on disk.",
        &[("", shared.journal.len() as u64)],
    );
    metric(
        "next_commit_index",
        "gauge",
        "Index of the next commit to apply.",
        &[("", applied.next_index)],
    );
    metric(
        "last_committed_round",
        "gauge",
        "Round of the last committed leader.",
        &[("", load(&consensus.last_committed_round))],
    );
    metric(
        "transactions_total",
        "counter",
        "Committed transactions by what apply did with them.",
        &[
            ("{result=\"applied\"}", load(&m.transactions_applied)),
            ("{result=\"rejected\"}", load(&m.transactions_rejected)),
        ],
    );
    let outcomes: Vec<(String, u64)> = Outcome::ALL
        .iter()
        .map(|o| {
            (
                format!("{{outcome=\"{}\"}}", o.name()),
                load(&m.encoder_outcomes[*o as usize]),
            )
        })
        .collect();
    let outcomes: Vec<(&str, u64)> = outcomes.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "encoder_runs_total",
        "counter",
        "Shard encoder runs this validator computed, by outcome.",
        &outcomes,
    );
    metric(
        "state_roots_compared_total",
        "counter",
        "State roots in committed blocks compared with this node's for the same commit.",
        &[("", load(&m.state_roots_compared))],
    );
    metric(
        "deviant_state_roots_total",
        "counter",
        "State roots in committed blocks that differ from this node's for the same commit.",
        &[("", load(&m.deviant_state_roots))],
    );
    metric(
        "package_load_attempts_total",
        "counter",
        "Times the job runner tried to load an encoder package (loaded, refused, or failed on this host); one that keeps rising under steady work means packages fail to load here and are tried again.",
        &[("", load(&m.package_load_attempts))],
    );
    metric(
        "attestations_submitted_total",
        "counter",
        "Attestations this validator submitted (resubmissions included).",
        &[("", load(&m.attestations_submitted))],
    );
    metric(
        "jobs_total",
        "counter",
        "Jobs the API waited for, by how they ended.",
        &[
            ("{status=\"finalised\"}", load(&m.jobs_finalised)),
            ("{status=\"expired\"}", load(&m.jobs_expired)),
        ],
    );
    metric(
        "embeddings_served_total",
        "counter",
        "Embeddings returned by POST /v1/embeddings.",
        &[("", load(&m.embeddings_served))],
    );
    metric(
        "embedding_wait_milliseconds",
        "summary",
        "Time POST /v1/embeddings waited for its jobs, decided or not.",
        &[
            ("_sum", load(&m.embedding_wait_ms)),
            ("_count", load(&m.embedding_waits)),
        ],
    );
    metric(
        "finalisations_total",
        "counter",
        "Jobs finalised by the commits this node applied.",
        &[("", load(&m.finalisations))],
    );
    metric(
        "finalisation_commits",
        "summary",
        "Commits from the one that made a job to the one that finalised it.",
        &[
            ("_sum", load(&m.finalisation_commits)),
            ("_count", load(&m.finalisations)),
        ],
    );
    metric(
        "deviant_attestations_total",
        "counter",
        "Attestations finalisation found deviating from the medians.",
        &[("", load(&m.deviant_attestations))],
    );
    metric(
        "embedding_requests_in_flight",
        "gauge",
        "POST /v1/embeddings requests running (within the node-wide limit).",
        &[("", load(&m.embedding_requests_in_flight))],
    );
    metric(
        "api_refused_total",
        "counter",
        "API requests refused with a 4xx.",
        &[("", load(&m.api_refused))],
    );
    metric(
        "api_throttled_total",
        "counter",
        "API requests or connections turned away for load.",
        &[("", load(&m.api_throttled))],
    );
    metric(
        "consensus_refused_total",
        "counter",
        "Peer messages and submissions consensus refused.",
        &[("", load(&consensus.refused))],
    );
    metric(
        "consensus_dropped_blocks_total",
        "counter",
        "Blocks consensus dropped for bounds.",
        &[("", load(&consensus.dropped))],
    );
    out
}
