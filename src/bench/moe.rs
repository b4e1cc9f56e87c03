//! Sparse-dispatch benchmark: one MoE layer step (SwiGLU experts, random weights) at several
//! top-k on the same adapter. A sparse dispatch does work in proportion to the N * k routed
//! rows, so the step time grows with k (and with the number of experts that receive
//! tokens); a dense-with-masking dispatch would cost the same at every k.
//!
//! The k values are timed round-robin (one step of each in turn) so that a change in the
//! machine's load affects all of them alike; each step is one submit and a wait.

use std::fmt;
use std::time::Instant;

use crate::arch::moxe::config::Modulation;
use crate::arch::moxe::moe::{GateWeights, MoeLayer, MoeStep};
use crate::arch::moxe::MlpExpert;
use crate::arch::Expert;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::gate::{GateSpec, Router};
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::{DType, Tensor};
use crate::testing::Rng;

/// What to time.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeBenchOptions {
    /// D (the SwiGLU hidden width is 2 D).
    pub dim: usize,
    /// E.
    pub experts: usize,
    /// N tokens per step (1 = decode).
    pub tokens: usize,
    /// The top-k values to compare.
    pub top_ks: Vec<usize>,
    /// Expert weight type (f32 or f16).
    pub dtype: DType,
    /// Untimed steps per k before timing.
    pub warmup: usize,
    /// Timed steps per k.
    pub iters: usize,
}

impl Default for MoeBenchOptions {
    /// D 512, E 8, one token, k = 1, 2, E, f32, 3 warm-up and 20 timed steps.
    fn default() -> Self {
        MoeBenchOptions {
            dim: 512,
            experts: 8,
            tokens: 1,
            top_ks: vec![1, 2, 8],
            dtype: DType::F32,
            warmup: 3,
            iters: 20,
        }
    }
}

/// The timing of one top-k.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeBenchRow {
    pub top_k: usize,
    /// Experts that received at least one token (in the last timed step).
    pub active_experts: usize,
    /// Routed rows, N * k: the expert work a sparse dispatch does.
    pub routed_rows: usize,
    /// Median step time, milliseconds.
    pub median_ms: f64,
    /// Fastest step, milliseconds.
    pub min_ms: f64,
}

/// Timings of one MoE layer step at each top-k.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeBenchReport {
    /// Adapter name and backend.
    pub adapter: String,
    pub options: MoeBenchOptions,
    pub rows: Vec<MoeBenchRow>,
}

impl MoeBenchReport {
    /// Median time of row `i` over the median time of the first row.
    pub fn ratio(&self, i: usize) -> f64 {
        self.rows[i].median_ms / self.rows[0].median_ms
    }
}

impl fmt::Display for MoeBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "MoE layer step on {}: D {}, {} SwiGLU experts (hidden {}, {}), {} token(s), \
             median of {} steps",
            self.adapter,
            o.dim,
            o.experts,
            2 * o.dim,
            o.dtype,
            o.tokens,
            o.iters
        )?;
        writeln!(
            f,
            "{:>5} {:>14} {:>12} {:>11} {:>11} {:>13}",
            "top-k", "active experts", "routed rows", "median ms", "min ms", "vs first k"
        )?;
        for (i, r) in self.rows.iter().enumerate() {
            writeln!(
                f,
                "{:>5} {:>14} {:>12} {:>11.3} {:>11.3} {:>12.2}x",
                r.top_k,
                r.active_experts,
                r.routed_rows,
                r.median_ms,
                r.min_ms,
                self.ratio(i)
            )?;
        }
        Ok(())
    }
}

/// The most expert weight bytes (host and device together) the benchmark allocates.
const MAX_WEIGHT_BYTES: u64 = 8 << 30;

/// One recorded configuration.
struct Case {
    top_k: usize,
    graph: Graph,
    step: MoeStep,
    times: Vec<f64>,
}

/// Times one MoE layer step at each of `options.top_ks` on `ctx`'s adapter.
pub fn moe_layer(ctx: &Context, options: &MoeBenchOptions) -> Result<MoeBenchReport> {
    let (d, e, n) = (options.dim, options.experts, options.tokens);
    if options.top_ks.is_empty() || options.iters == 0 || n == 0 {
        return Err(Error::InvalidArgument(
            "the MoE benchmark needs at least one top-k, one timed step and one token".into(),
        ));
    }
    let gate = Router::Conditioned {
        modulation: Modulation::Standard,
        gamma: 0.7,
        tau: 0.5,
    };
    let specs = options
        .top_ks
        .iter()
        .map(|&k| GateSpec::new(e, k, gate))
        .collect::<Result<Vec<_>>>()?;
    let hidden = 2 * d;
    // Host copies in f32 plus one device copy per top-k, before anything is allocated.
    let weights_each = 3 * (hidden as u64) * (d as u64) * e as u64;
    let bytes = weights_each * (4 + specs.len() as u64 * options.dtype.size() as u64);
    if bytes > MAX_WEIGHT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "the MoE benchmark at D {d} with {e} experts and {} top-k values would hold {:.1} GiB \
             of expert weights (host and device), more than its {} GiB: lower the width or the experts",
            specs.len(),
            bytes as f64 / (1u64 << 30) as f64,
            MAX_WEIGHT_BYTES >> 30
        )));
    }
    let mut rng = Rng::new(2026);
    let (s1, s2) = (1.0 / (d as f32).sqrt(), 1.0 / (hidden as f32).sqrt());
    let experts: Vec<[Vec<f32>; 3]> = (0..e)
        .map(|_| {
            [
                rng.normal_vec(hidden * d, s1),
                rng.normal_vec(d * hidden, s2),
                rng.normal_vec(hidden * d, s1),
            ]
        })
        .collect();
    let router = rng.normal_vec(e * d, s1);
    let bias = rng.normal_vec(e, 0.1);
    let predictor = rng.normal_vec(d, s1);
    let weights = GateWeights {
        router: &router,
        router_bias: Some(&bias),
        predictor: Some((&predictor, 0.0)),
    };
    let u = Tensor::from_f32(ctx, "bench u", &[n, d], &rng.normal_vec(n * d, 1.0))?;
    let out = Tensor::zeros(ctx, "bench out", &[n, d], DType::F32)?;
    let scratch = Scratch::new(ctx, n);
    let mut cases = Vec::new();
    for spec in specs {
        let k = spec.top_k;
        let mlps = experts
            .iter()
            .enumerate()
            .map(|(x, [w1, w2, w3])| {
                let label = format!("bench.experts.{x}.");
                let m = MlpExpert::from_host(ctx, &label, d, hidden, w1, w2, w3, options.dtype)?;
                Ok(Box::new(m) as Box<dyn Expert>)
            })
            .collect::<Result<Vec<_>>>()?;
        let layer = MoeLayer::new(ctx, "bench.gate.", spec, d, &weights, mlps)?;
        let mut graph = Graph::new();
        let step = layer.record(ctx, &mut graph, View::of(&u), View::of(&out), &scratch)?;
        for _ in 0..options.warmup {
            ctx.run(&[&graph])?;
        }
        cases.push(Case {
            top_k: k,
            graph,
            step,
            times: Vec::with_capacity(options.iters),
        });
    }
    for _ in 0..options.iters {
        for case in &mut cases {
            let start = Instant::now();
            ctx.run(&[&case.graph])?;
            case.times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let info = ctx.adapter_info();
    let mut rows = Vec::new();
    for mut case in cases {
        case.times.sort_by(f64::total_cmp);
        let telemetry = case.step.read_telemetry()?;
        rows.push(MoeBenchRow {
            top_k: case.top_k,
            active_experts: telemetry.active_experts(),
            routed_rows: n * case.top_k,
            median_ms: case.times[case.times.len() / 2],
            min_ms: case.times[0],
        });
    }
    Ok(MoeBenchReport {
        adapter: format!("{} ({:?})", info.name, info.backend),
        options: options.clone(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::gpu;

    #[test]
    fn reports_every_top_k_with_its_routed_rows() {
        let options = MoeBenchOptions {
            dim: 16,
            experts: 4,
            tokens: 3,
            top_ks: vec![1, 4],
            dtype: DType::F32,
            warmup: 1,
            iters: 2,
        };
        let report = moe_layer(gpu(), &options).unwrap();
        assert_eq!(report.rows.len(), 2);
        assert_eq!(report.rows[1].active_experts, 4, "k = E uses every expert");
        assert_eq!(report.rows[1].routed_rows, 12);
        assert!(report
            .rows
            .iter()
            .all(|r| r.min_ms > 0.0 && r.min_ms <= r.median_ms));
        let text = report.to_string();
        assert!(
            text.contains("4 SwiGLU experts") && text.contains("top-k"),
            "{text}"
        );
        let bad = MoeBenchOptions {
            top_ks: vec![],
            ..options.clone()
        };
        assert!(moe_layer(gpu(), &bad).is_err());
        let one_expert = MoeBenchOptions {
            experts: 1,
            top_ks: vec![1],
            ..options.clone()
        };
        let err = moe_layer(gpu(), &one_expert).unwrap_err().to_string();
        assert!(err.contains("between 2 and 64 experts, got 1"), "{err}");
        // Refused before a byte is generated: 64 experts at D 8192 are hundreds of GiB.
        let huge = MoeBenchOptions {
            dim: 8192,
            experts: 64,
            ..options
        };
        let err = moe_layer(gpu(), &huge).unwrap_err().to_string();
        assert!(
            err.contains("D 8192 with 64 experts") && err.contains("GiB"),
            "{err}"
        );
    }

    /// Prints the benchmark at D 512, E 8 for N = 1 and 64 tokens:
    /// `cargo test --release --lib bench::moe -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run it explicitly"]
    fn print_sparse_dispatch_benchmark() {
        for tokens in [1, 64] {
            let options = MoeBenchOptions {
                tokens,
                ..MoeBenchOptions::default()
            };
            println!("{}", moe_layer(gpu(), &options).unwrap());
        }
    }
}
