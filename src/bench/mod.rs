//! Benchmarks: measured on the current adapter and printed by `moxe bench`.

pub mod kernels;
pub mod mlstm;
pub mod model;
pub mod moe;
pub mod serve;
pub mod slstm;

use std::time::Instant;

use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;

/// Seconds per replay of `graph`: one warm-up run, then enough runs to fill about
/// `budget_secs` (at least `min_runs`) in up to five batches, each submitted together and
/// waited for; the best batch's time per run (the one least disturbed by other work on
/// the machine).
pub fn time_graph(ctx: &Context, graph: &Graph, budget_secs: f64, min_runs: usize) -> Result<f64> {
    ctx.run(&[graph])?;
    let t0 = Instant::now();
    ctx.run(&[graph])?;
    let once = t0.elapsed().as_secs_f64().max(1e-6);
    let runs = ((budget_secs / once) as usize).max(min_runs).max(1);
    let batches = runs.min(5);
    let per_batch = runs / batches;
    let mut best = f64::INFINITY;
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..per_batch {
            ctx.submit(&[graph])?;
        }
        ctx.wait("benchmark")?;
        best = best.min(t.elapsed().as_secs_f64() / per_batch as f64);
    }
    Ok(best)
}
