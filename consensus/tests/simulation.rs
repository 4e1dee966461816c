//! Deterministic simulation of the consensus engine (see `sim/mod.rs`).
//!
//! - `sim_seeds`: `RTCHAIN_SIM_SEEDS` seeds (default 1,000) from `RTCHAIN_SIM_SEED_START`
//!   (default 0); every invariant checked at every step; liveness after healing.
//! - `sim_replay`: replays one seed with a trace: `RTCHAIN_SIM_SEED=123 cargo test -p
//!   rtchain-consensus --test simulation sim_replay -- --nocapture` (add
//!   `RTCHAIN_SIM_NEGATIVE=1` for a negative-control seed).
//! - `sim_negative_control`: f+1 twinned keys must produce a safety violation.
//! - `sim_latency_50us_links`: finalization latency on the fast path.

mod sim;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sim::{Cpu, MS, Outcome, Scenario, US, quantile, run};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn replay_command(seed: u64, negative: bool) -> String {
    format!(
        "{}RTCHAIN_SIM_SEED={seed} cargo test -p rtchain-consensus --test simulation sim_replay -- --nocapture",
        if negative {
            "RTCHAIN_SIM_NEGATIVE=1 "
        } else {
            ""
        }
    )
}

/// Runs `make(seed)` for every seed on all cores; returns (seed, outcome) in seed order.
fn run_many(seeds: std::ops::Range<u64>, make: fn(u64) -> Scenario) -> Vec<(u64, Outcome)> {
    let next = AtomicU64::new(seeds.start);
    let results = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let out = run(&make(seed), false);
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((seed, out));
                }
            });
        }
    });
    let mut r = results.into_inner().unwrap_or_else(|e| e.into_inner());
    r.sort_by_key(|(s, _)| *s);
    r
}

#[test]
fn sim_seeds() {
    let count = env_u64("RTCHAIN_SIM_SEEDS").unwrap_or(1000);
    let start = env_u64("RTCHAIN_SIM_SEED_START").unwrap_or(0);
    let t0 = Instant::now();
    let results = run_many(start..start + count, Scenario::random);
    let elapsed = t0.elapsed();
    let mut failures = Vec::new();
    let (
        mut steps,
        mut virt,
        mut restarts,
        mut torn,
        mut eq,
        mut badsig,
        mut malformed,
        mut rejected,
        mut blocks,
    ) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for (seed, out) in &results {
        steps += out.steps;
        virt += out.end_ns;
        restarts += out.restarts;
        torn += out.torn_slots;
        eq += out.equivocations;
        badsig += out.invalid_signatures;
        malformed += out.malformed;
        rejected += out.rejected_commitments;
        blocks += out.min_height;
        if !out.violations.is_empty() {
            failures.push((*seed, out.violations.clone()));
        }
    }
    println!(
        "simulated {count} seeds (from {start}) in {:.1}s: {steps} steps, {:.1}s virtual time, {blocks} blocks finalized (min per seed summed), \
         {restarts} crashes/restarts, {torn} torn log slots, {eq} equivocations seen, {badsig} bad signatures, {malformed} malformed, \
         {rejected} rejected commitments",
        elapsed.as_secs_f64(),
        virt as f64 / 1e9,
    );
    for (seed, v) in &failures {
        println!(
            "seed {seed} FAILED: {}\n  {}\n  replay: {}",
            Scenario::random(*seed).describe(),
            v.join("\n  "),
            replay_command(*seed, false)
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed (replay commands above)",
        failures.len()
    );
}

#[test]
fn sim_replay() {
    let Some(seed) = env_u64("RTCHAIN_SIM_SEED") else {
        println!("set RTCHAIN_SIM_SEED to replay a seed");
        return;
    };
    let negative = env_u64("RTCHAIN_SIM_NEGATIVE") == Some(1);
    let sc = if negative {
        Scenario::negative_control(seed)
    } else {
        Scenario::random(seed)
    };
    println!("{}", sc.describe());
    let out = run(&sc, true);
    println!(
        "steps {} end {:.3}ms min height {} violations {:?}",
        out.steps,
        out.end_ns as f64 / MS as f64,
        out.min_height,
        out.violations
    );
    if !negative {
        assert!(
            out.violations.is_empty(),
            "seed {seed} violated an invariant"
        );
    }
}

/// With f+1 keys run twice (twins) and a partition splitting each pair, the checker must catch
/// two blocks finalized at one height. If it never does, the checker is blind.
#[test]
fn sim_negative_control() {
    let seeds = 0..16;
    let results = run_many(seeds.clone(), Scenario::negative_control);
    let caught: Vec<u64> = results
        .iter()
        .filter(|(_, o)| o.safety_violation)
        .map(|(s, _)| *s)
        .collect();
    println!(
        "negative control (n=4, 2 twinned keys, split partition): {} of {} seeds report a safety violation",
        caught.len(),
        seeds.end - seeds.start
    );
    if let Some((s, o)) = results.iter().find(|(_, o)| o.safety_violation) {
        println!(
            "  e.g. seed {s}: {}\n  replay: {}",
            o.violations[0],
            replay_command(*s, true)
        );
    }
    assert!(
        !caught.is_empty(),
        "the checker missed every violation of the negative control"
    );
}

/// Fast path with 50 us links: proposal sent -> block delivered on each validator.
#[test]
fn sim_latency_50us_links() {
    let link = 50 * US;
    for (label, cpu, sync_ns) in [
        ("zero processing", Cpu::Zero, 0),
        ("measured CPU", Cpu::Measured, 0),
        ("measured CPU + 90us fdatasync", Cpu::Measured, 90 * US),
    ] {
        let sc = Scenario::clean(4, link, 200, cpu, sync_ns);
        let mut out = run(&sc, false);
        assert!(out.violations.is_empty(), "{:?}", out.violations);
        assert!(out.min_height >= 200);
        let lat = &mut out.finalize_latency_ns;
        let n = lat.len();
        let (p50, p99) = (quantile(lat, 0.5), quantile(lat, 0.99));
        println!(
            "latency, 4 validators, 50us links, {label}: proposal->finalized p50 {:.1}us ({:.2} delays) p99 {:.1}us ({:.2} delays) over {n} deliveries",
            p50 as f64 / 1e3,
            p50 as f64 / link as f64,
            p99 as f64 / 1e3,
            p99 as f64 / link as f64,
        );
        if cpu == Cpu::Zero {
            // Exactly three message delays: proposal, notarize votes, finalize votes.
            assert_eq!(p50, 3 * link);
        }
    }
}
