//! Router telemetry of one MoE step (MODEL.md section 3): group shares, expert token counts
//! and loads, and the four auxiliary losses L_d, L_g, L_z, L_lb, as means over the step's N
//! tokens. Computed on the GPU every step from what the gate and the routing wrote; read
//! back only when asked. Kernel: `shaders/router_stats.wgsl` (one workgroup, fixed-order
//! sums).
//!
//! Shapes: gate stats (N, [`STAT_COLS`]); the routing's block
//! partials (blocks, E); outputs `summary` (SUMMARY_HEAD + E) f32 =
//! `[L_d, L_g, L_z, L_lb, P_m, P_s, 0, 0, u_0 .. u_{E-1}]` and `counts` (E) u32.

use bytemuck::{Pod, Zeroable};

use super::gate::STAT_COLS;
use super::route::{RouteBuffers, RouteLayout};
use crate::context::Context;
use crate::error::Result;
use crate::graph::{Graph, Workgroups};
use crate::tensor::{DType, Tensor};

/// Values before the expert loads in the summary buffer.
pub const SUMMARY_HEAD: usize = 8;

/// The per-step router statistics of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterSummary {
    /// `[L_d, L_g, L_z, L_lb]`.
    pub losses: [f32; 4],
    /// `[P_m, P_s]`: mean probability mass on the mLSTM and the sLSTM group.
    pub group_shares: [f32; 2],
    /// (E) tokens routed to each expert.
    pub expert_counts: Vec<u32>,
    /// (E) u_e: the raw top-k probability mass on e over N K.
    pub expert_loads: Vec<f32>,
}

impl RouterSummary {
    /// Parses the two buffers the kernel writes.
    pub fn from_buffers(summary: &[f32], counts: &[u32]) -> Self {
        RouterSummary {
            losses: [summary[0], summary[1], summary[2], summary[3]],
            group_shares: [summary[4], summary[5]],
            expert_counts: counts.to_vec(),
            expert_loads: summary[SUMMARY_HEAD..].to_vec(),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    experts: u32,
    top_k: u32,
    blocks: u32,
    has_predictor: u32,
    _pad: [u32; 3],
}

/// Records the reduction. `has_predictor` is false for the standard router (L_d = 0).
#[allow(clippy::too_many_arguments)]
pub fn router_stats(
    ctx: &Context,
    graph: &mut Graph,
    layout: &RouteLayout,
    has_predictor: bool,
    stats: &Tensor,
    route: &RouteBuffers,
    summary: &Tensor,
    counts: &Tensor,
) -> Result<()> {
    let (n, e, b) = (layout.tokens, layout.experts, layout.blocks());
    stats.expect("router stats input", &[n, STAT_COLS], DType::F32)?;
    route
        .block_counts
        .expect("router stats block counts", &[b, e], DType::U32)?;
    route
        .block_loads
        .expect("router stats block loads", &[b, e], DType::F32)?;
    summary.expect("router summary", &[SUMMARY_HEAD + e], DType::F32)?;
    counts.expect("router expert counts", &[e], DType::U32)?;
    let params = Params {
        n: super::u32_param("telemetry tokens", n)?,
        experts: e as u32,
        top_k: layout.top_k as u32,
        blocks: b as u32,
        has_predictor: has_predictor as u32,
        _pad: [0; 3],
    };
    // One SIMD group on CPU adapters (its barriers are cheap there), 256 invocations on GPUs.
    let wg = if ctx.cpu_kernels() { 8.0 } else { 256.0 };
    let pipeline = ctx.pipeline("router_stats", "main", &[("WG", wg)])?;
    let uniform = ctx.uniform("router stats params", &params)?;
    graph.dispatch(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            stats.binding()?,
            route.block_counts.binding()?,
            route.block_loads.binding()?,
            summary.binding()?,
            counts.binding()?,
        ],
        Workgroups::Direct([1, 1, 1]),
    )
}

/// Per-token inputs of the CPU reference (N tokens, K choices each).
pub struct TokenTerms<'a> {
    pub difficulty: &'a [f32],
    pub entropy: &'a [f32],
    pub lse: &'a [f32],
    pub p_mlstm: &'a [f32],
    pub p_slstm: &'a [f32],
    /// (N, K) selected experts.
    pub topk_idx: &'a [u32],
    /// (N, K) raw probabilities of the selected experts.
    pub topk_prob: &'a [f32],
}

/// CPU reference (f64 sums) for E experts.
pub fn reference(experts: usize, has_predictor: bool, t: &TokenTerms<'_>) -> RouterSummary {
    let n = t.difficulty.len();
    let k = t.topk_idx.len() / n;
    let mean = |f: &dyn Fn(usize) -> f64| (0..n).map(f).sum::<f64>() / n as f64;
    let l_d = if has_predictor {
        mean(&|i| (t.difficulty[i] as f64 - t.entropy[i] as f64).powi(2))
    } else {
        0.0
    };
    let pm = mean(&|i| t.p_mlstm[i] as f64);
    let ps = mean(&|i| t.p_slstm[i] as f64);
    let l_g = pm * (2.0 * pm + 1e-8).ln() + ps * (2.0 * ps + 1e-8).ln();
    let l_z = mean(&|i| (t.lse[i] as f64).powi(2));
    let mut counts = vec![0u32; experts];
    let mut sums = vec![0f64; experts];
    for (&x, &p) in t.topk_idx.iter().zip(t.topk_prob) {
        counts[x as usize] += 1;
        sums[x as usize] += p as f64;
    }
    let loads: Vec<f64> = sums.iter().map(|s| s / (n * k) as f64).collect();
    let e = experts as f64;
    let l_lb = e * loads.iter().map(|u| (u - 1.0 / e).powi(2)).sum::<f64>() / e;
    RouterSummary {
        losses: [l_d as f32, l_g as f32, l_z as f32, l_lb as f32],
        group_shares: [pm as f32, ps as f32],
        expert_counts: counts,
        expert_loads: loads.iter().map(|&u| u as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::ops::gate::tests::{gate_case, Outs, GATE_FIXTURES};
    use crate::ops::gate::{self, GateSpec, Router, STAT_COLS};
    use crate::ops::matmul::matmul;
    use crate::ops::route::route;
    use crate::ops::View;
    use crate::testing::{assert_close, gpu, Rng};
    use crate::HostData;

    /// Runs the router (matmul, gate, route, stats) on the GPU for u (N, D) and returns the
    /// gate outputs and the summary.
    fn run(
        spec: &GateSpec,
        d: usize,
        u: &[f32],
        weight: &[f32],
        bias: &[f32],
        chunk: usize,
    ) -> (Outs, RouterSummary) {
        let ctx = gpu();
        let (cols, n, e) = (spec.logit_cols(), u.len() / d, spec.experts);
        let layout = RouteLayout::new(n, e, spec.top_k, chunk).unwrap();
        let wt = Tensor::weight(ctx, "w", &[cols, d], DType::F32, HostData::F32(weight)).unwrap();
        let bt = Tensor::from_f32(ctx, "b", &[cols], bias).unwrap();
        let ut = Tensor::from_f32(ctx, "u", &[n, d], u).unwrap();
        let lt = Tensor::zeros(ctx, "logits", &[n, cols], DType::F32).unwrap();
        let outs = Outs::new(ctx, spec, n);
        let bufs = RouteBuffers::new(ctx, &layout).unwrap();
        let summary = Tensor::zeros(ctx, "summary", &[SUMMARY_HEAD + e], DType::F32).unwrap();
        let counts = Tensor::zeros(ctx, "counts", &[e], DType::U32).unwrap();
        let mut g = Graph::new();
        matmul(
            ctx,
            &mut g,
            &wt,
            Some(&bt),
            View::of(&ut),
            View::of(&lt),
            0.0,
        )
        .unwrap();
        gate::gate(ctx, &mut g, spec, View::of(&lt), &outs.outputs()).unwrap();
        route(ctx, &mut g, &layout, &outs.idx, &outs.prob, &bufs).unwrap();
        let has = spec.router.has_predictor();
        router_stats(
            ctx,
            &mut g,
            &layout,
            has,
            &outs.stats,
            &bufs,
            &summary,
            &counts,
        )
        .unwrap();
        ctx.run(&[&g]).unwrap();
        let s = RouterSummary::from_buffers(&summary.to_f32().unwrap(), &counts.to_u32().unwrap());
        (outs, s)
    }

    fn assert_summary(got: &RouterSummary, want: &RouterSummary, what: &str) {
        assert_eq!(got.expert_counts, want.expert_counts, "{what}: counts");
        assert_close(
            &got.expert_loads,
            &want.expert_loads,
            1e-6,
            1e-5,
            &format!("{what}: loads"),
        );
        assert_close(
            &got.group_shares,
            &want.group_shares,
            1e-6,
            1e-5,
            &format!("{what}: shares"),
        );
        assert_close(
            &got.losses,
            &want.losses,
            1e-6,
            1e-5,
            &format!("{what}: losses"),
        );
    }

    #[test]
    fn matches_reference_over_many_blocks() {
        let mut rng = Rng::new(9);
        let modulation = crate::arch::moxe::config::Modulation::Masked;
        for (router, e, k, n, chunk) in [
            (Router::Standard, 4, 1, 1, 1),
            (
                Router::Conditioned {
                    modulation,
                    gamma: 0.7,
                    tau: 0.5,
                },
                8,
                2,
                700,
                128,
            ),
            (
                Router::Conditioned {
                    modulation,
                    gamma: 2.0,
                    tau: 0.3,
                },
                64,
                5,
                300,
                300,
            ),
        ] {
            let spec = GateSpec::new(e, k, router).unwrap();
            let d = 19;
            let cols = spec.logit_cols();
            let u = rng.normal_vec(n * d, 1.0);
            let w = rng.normal_vec(cols * d, 0.5);
            let b = rng.normal_vec(cols, 0.3);
            let (outs, got) = run(&spec, d, &u, &w, &b, chunk);
            let idx = outs.idx.to_u32().unwrap();
            let prob = outs.prob.to_f32().unwrap();
            let col = |c: usize| outs.stat(c);
            let (dd, ent, lse, pm, ps) = (
                col(gate::STAT_DIFFICULTY),
                col(gate::STAT_ENTROPY),
                col(gate::STAT_LSE),
                col(gate::STAT_P_MLSTM),
                col(gate::STAT_P_SLSTM),
            );
            let terms = TokenTerms {
                difficulty: &dd,
                entropy: &ent,
                lse: &lse,
                p_mlstm: &pm,
                p_slstm: &ps,
                topk_idx: &idx,
                topk_prob: &prob,
            };
            let want = reference(e, router.has_predictor(), &terms);
            assert_summary(&got, &want, &format!("{router:?} E={e} k={k} N={n}"));
            assert_eq!(got.expert_counts.iter().sum::<u32>() as usize, n * k);
            assert_eq!(STAT_COLS, 8);
        }
    }

    #[test]
    fn telemetry_matches_every_gate_fixture() {
        for name in GATE_FIXTURES {
            let c = gate_case(name);
            let (_, got) = run(&c.spec, c.d, &c.u, &c.weight, &c.bias, usize::MAX);
            let f = |t: &str| c.w.f32_any(&format!("out.{t}")).unwrap().0;
            let counts: Vec<u32> =
                c.w.ints("out.expert_counts")
                    .unwrap()
                    .0
                    .iter()
                    .map(|&x| x as u32)
                    .collect();
            let losses = f("losses");
            let shares = f("group_shares");
            let want = RouterSummary {
                losses: [losses[0], losses[1], losses[2], losses[3]],
                group_shares: [shares[0], shares[1]],
                expert_counts: counts,
                expert_loads: f("expert_loads"),
            };
            assert_summary(&got, &want, name);
        }
    }
}
