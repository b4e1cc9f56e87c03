//! A MoxE layer's mixture of experts (MODEL.md sections 2 and 3): the router, sparse expert
//! dispatch decided and executed on the GPU, and the router telemetry.
//!
//! One [`MoeLayer::record`] records, into the caller's graph, for u (N, D):
//! 1. the router matmul `logits = u [W_r; w_d]^T + [b_r; b_d]` (N, E [+1]);
//! 2. the fused gate ([`ops::gate`](crate::ops::gate)): p, top-k, weights, per-token terms;
//! 3. routing ([`ops::route`](crate::ops::route)): per-expert token counts, a token-order
//!    prefix sum and each (token, choice)'s row in its expert's region;
//! 4. the indirect-dispatch arguments of every expert kernel, computed on the GPU from the
//!    counts ([`DynamicRows`](crate::graph::DynamicRows)), so an expert that receives no tokens runs zero workgroups;
//! 5. per dispatch chunk: gather of the token rows into the expert regions, every expert
//!    (any [`Expert`]) over its region inside a dynamic-rows section, and the weighted
//!    combine into `out`.
//!
//! Nothing is read back during a step. The buffers of one recording (and its telemetry)
//! belong to the returned [`MoeStep`], which runs the telemetry reduction
//! ([`ops::router_stats`](crate::ops::router_stats)) over them when the telemetry is read,
//! not at every step; the expert regions come from the shared [`Scratch`],
//! so all layers reuse them.
//!
//! Expert regions: E regions of C rows, region e at rows `e * C ..`, where C (the dispatch
//! chunk) is N unless E * N * D floats exceed one storage binding; then the tokens are
//! dispatched in chunks of C (a multiple of 64) tokens, one after another in the same graph.
//!
//! A latent layer of mlp experts ([`MoeLayer::with_group_stage`]) adds a group stage
//! ([`GroupStage`]): the shared projections B_g u run once per token per group hit, and the
//! experts' input regions hold latent rows (width R) instead of token rows (width D).

mod groups;
mod step;
#[cfg(test)]
mod tests;

pub use groups::{GroupStage, GroupStep};
pub use step::MoeStep;

use crate::arch::moxe::config::{MoxeConfig, RouterType};
use crate::arch::Expert;
use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::gate::{self, GateSpec, Router};
use crate::ops::group_route::group_route;
use crate::ops::matmul::matmul;
use crate::ops::moe_rows::{combine, gather, relay};
use crate::ops::route::{route, RouteLayout, BLOCK_TOKENS};
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::{DType, Tensor};

/// Indirect dispatches one expert may record per chunk (the size of the table of GPU-written
/// dispatch arguments; unused entries cost nothing but 44 bytes).
pub const EXPERT_DISPATCH_BUDGET: usize = 64;

/// Host copies of a router's weights (E experts, dimension D).
#[derive(Debug, Clone, Copy)]
pub struct GateWeights<'a> {
    /// W_r (E, D), row-major.
    pub router: &'a [f32],
    /// b_r (E), with `gate_bias`.
    pub router_bias: Option<&'a [f32]>,
    /// (w_d (D), b_d) of the difficulty predictor: required by the entropy-aware gate,
    /// absent for the standard router.
    pub predictor: Option<(&'a [f32], f32)>,
}

/// A mixture-of-experts layer: router weights on the GPU and E experts.
pub struct MoeLayer {
    spec: GateSpec,
    dim: usize,
    /// [W_r; w_d] (E [+1], D), always f32: routing decisions are discrete and the matrix is
    /// small.
    router: Tensor,
    /// [b_r or 0; b_d] (E [+1]); None for a standard router without bias.
    router_bias: Option<Tensor>,
    experts: Vec<Box<dyn Expert>>,
    /// The shared projections of a latent layer whose experts read latent rows.
    groups: Option<GroupStage>,
}

/// The gate spec of a MoxE config.
pub fn gate_spec(cfg: &MoxeConfig) -> Result<GateSpec> {
    let router = match cfg.router {
        RouterType::Standard => Router::Standard,
        RouterType::ConditionedAddition => Router::Conditioned {
            modulation: cfg.modulation,
            gamma: cfg.gamma,
            tau: cfg.difficulty_threshold,
        },
    };
    GateSpec::new(cfg.num_experts, cfg.top_k, router)
}

impl MoeLayer {
    /// Loads the gate of layer `scope` (e.g. `"layers.0."`: `gate.router.weight` (E, D),
    /// `gate.router.bias` (E) with `gate_bias`, `gate.entropy_predictor.weight` (1, D) and
    /// `.bias` (1) for the entropy-aware gate) and takes its E `experts`, expert e at index e.
    pub fn load(
        ctx: &Context,
        scope: &Scope<'_>,
        cfg: &MoxeConfig,
        d: usize,
        experts: Vec<Box<dyn Expert>>,
    ) -> Result<Self> {
        let spec = gate_spec(cfg)?;
        let e = spec.experts;
        let router = scope.f32("gate.router.weight", &[e, d])?;
        let bias = match cfg.gate_bias {
            true => Some(scope.f32("gate.router.bias", &[e])?),
            false => None,
        };
        let predictor = match spec.router.has_predictor() {
            true => Some((
                scope.f32("gate.entropy_predictor.weight", &[1, d])?,
                scope.f32("gate.entropy_predictor.bias", &[1])?[0],
            )),
            false => None,
        };
        let weights = GateWeights {
            router: &router,
            router_bias: bias.as_deref(),
            predictor: predictor.as_ref().map(|(w, b)| (w.as_slice(), *b)),
        };
        Self::new(ctx, &scope.name("gate."), spec, d, &weights, experts)
    }

    /// A layer from host gate weights; `label` names its GPU tensors.
    pub fn new(
        ctx: &Context,
        label: &str,
        spec: GateSpec,
        d: usize,
        weights: &GateWeights<'_>,
        experts: Vec<Box<dyn Expert>>,
    ) -> Result<Self> {
        let e = spec.experts;
        if experts.len() != e {
            return Err(Error::mismatch(
                format!("experts of MoE layer '{label}'"),
                e,
                experts.len(),
            ));
        }
        if d == 0 {
            return Err(Error::InvalidArgument(format!(
                "MoE layer '{label}' needs a positive dimension"
            )));
        }
        let check = |what: &str, got: usize, want: usize| match got == want {
            true => Ok(()),
            false => Err(Error::mismatch(
                format!("MoE layer '{label}' {what} elements"),
                want,
                got,
            )),
        };
        check("router weight", weights.router.len(), e * d)?;
        let mut matrix = weights.router.to_vec();
        let mut bias = match weights.router_bias {
            Some(b) => {
                check("router bias", b.len(), e)?;
                b.to_vec()
            }
            None => vec![0.0; e],
        };
        match (spec.router.has_predictor(), weights.predictor) {
            (true, Some((w, b))) => {
                check("difficulty predictor weight", w.len(), d)?;
                matrix.extend_from_slice(w);
                bias.push(b);
            }
            (true, None) => {
                return Err(Error::InvalidArgument(format!(
                    "MoE layer '{label}': the entropy-aware gate needs a difficulty predictor"
                )))
            }
            (false, Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "MoE layer '{label}': the standard router has no difficulty predictor"
                )))
            }
            (false, None) => {}
        }
        let rows = spec.logit_cols();
        let router = Tensor::weight(
            ctx,
            &format!("{label}router"),
            &[rows, d],
            DType::F32,
            crate::HostData::F32(&matrix),
        )?;
        let has_bias = weights.router_bias.is_some() || spec.router.has_predictor();
        let router_bias = match has_bias {
            true => Some(Tensor::from_f32(
                ctx,
                &format!("{label}router bias"),
                &[rows],
                &bias,
            )?),
            false => None,
        };
        Ok(MoeLayer {
            spec,
            dim: d,
            router,
            router_bias,
            experts,
            groups: None,
        })
    }

    /// Makes this a latent layer with a group stage: the experts then read the latent rows
    /// (rows, R) of their tokens' groups instead of the token rows (G groups of E / G
    /// contiguous experts).
    pub fn with_group_stage(mut self, stage: GroupStage) -> Result<Self> {
        let (e, g) = (self.spec.experts, stage.groups());
        if e % g != 0 {
            return Err(Error::InvalidArgument(format!(
                "latent groups ({g}) must divide the experts ({e})"
            )));
        }
        self.groups = Some(stage);
        Ok(self)
    }

    /// Columns of the experts' input rows: D, or R with a group stage.
    fn expert_cols(&self) -> usize {
        self.groups.as_ref().map_or(self.dim, GroupStage::width)
    }

    /// E, K and the router kind.
    pub fn spec(&self) -> &GateSpec {
        &self.spec
    }

    /// D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The dispatch chunk for N tokens on this context: N, or the largest multiple of 64
    /// tokens whose E expert regions of max(D, R) floats fit one storage binding.
    pub fn dispatch_chunk(&self, ctx: &Context, tokens: usize) -> Result<usize> {
        let row_bytes = (self.spec.experts * self.dim.max(self.expert_cols()) * 4) as u64;
        let fit = (ctx.max_binding_bytes() / row_bytes) as usize;
        if tokens <= fit {
            return Ok(tokens);
        }
        match fit / BLOCK_TOKENS * BLOCK_TOKENS {
            0 => Err(Error::Limit {
                what: format!(
                    "MoE expert regions for {BLOCK_TOKENS} tokens ({} experts x {} floats)",
                    self.spec.experts,
                    self.dim.max(self.expert_cols())
                ),
                detail: format!(
                    "they need {} bytes but one storage binding holds {}",
                    BLOCK_TOKENS as u64 * row_bytes,
                    ctx.max_binding_bytes()
                ),
            }),
            chunk => Ok(chunk),
        }
    }

    /// Records the layer for the N tokens of `u` (N, D) into `graph`, writing `out` (N, D)
    /// (which may be `u` itself). `scratch` must have at least as many rows as the dispatch
    /// chunk ([`MoeLayer::dispatch_chunk`], at most N). Returns the recording's buffers,
    /// telemetry included.
    pub fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        u: View<'_>,
        out: View<'_>,
        scratch: &Scratch,
    ) -> Result<MoeStep> {
        u.check("MoE input")?;
        out.check("MoE output")?;
        let (n, d) = (u.rows, self.dim);
        if u.cols != d || out.cols != d || out.rows != n {
            return Err(Error::mismatch(
                "MoE input and output",
                format!("two ({n}, {d}) views"),
                format!("({}, {}) and ({}, {})", u.rows, u.cols, out.rows, out.cols),
            ));
        }
        let chunk = self.dispatch_chunk(ctx, n)?;
        if scratch.rows() < chunk {
            return Err(Error::mismatch(
                "scratch rows for the MoE experts",
                format!("at least {chunk} (the dispatch chunk)"),
                scratch.rows(),
            ));
        }
        let (e, k) = (self.spec.experts, self.spec.top_k);
        let layout = RouteLayout::new(n, e, k, chunk)?;
        let mut step = MoeStep::allocate(ctx, &self.spec, layout, d, self.expert_cols(), scratch)?;
        let mut groups = match &self.groups {
            Some(stage) => Some(stage.allocate(ctx, &layout, d, scratch)?),
            None => None,
        };
        matmul(
            ctx,
            graph,
            &self.router,
            self.router_bias.as_ref(),
            u,
            View::of(&step.logits),
            0.0,
        )?;
        gate::gate(
            ctx,
            graph,
            &self.spec,
            View::of(&step.logits),
            &step.gate_outputs(),
        )?;
        route(
            ctx,
            graph,
            &layout,
            &step.topk_idx,
            &step.topk_prob,
            &step.route,
        )?;
        step.dynamic.record_fill(ctx, graph)?;
        if let Some(gs) = &groups {
            group_route(ctx, graph, &layout, &step.topk_idx, &gs.route)?;
            gs.record_fill(ctx, graph)?;
        }
        for c in 0..layout.chunks() {
            let tokens = layout.chunk_tokens(c);
            match (&self.groups, &mut groups) {
                (Some(stage), Some(gs)) => {
                    let slots = &gs.route.slots;
                    gather(ctx, graph, u, slots, tokens.clone(), &gs.regions_in)?;
                    stage.record_projections(ctx, graph, gs, &layout, c)?;
                    let (latent, slots) = (&gs.regions_latent, &gs.route.slots);
                    let expert_slots = &step.route.slots;
                    relay(
                        ctx,
                        graph,
                        latent,
                        slots,
                        expert_slots,
                        tokens.clone(),
                        &step.regions_in,
                    )?;
                }
                _ => gather(
                    ctx,
                    graph,
                    u,
                    &step.route.slots,
                    tokens.clone(),
                    &step.regions_in,
                )?,
            }
            for (x, expert) in self.experts.iter().enumerate() {
                let rows = x * chunk..(x + 1) * chunk;
                let input = View::of(&step.regions_in).select_rows(rows.clone());
                let output = View::of(&step.regions_out).select_rows(rows);
                let what = format!(
                    "expert {x} of a MoE layer ({EXPERT_DISPATCH_BUDGET} per expert and chunk)"
                );
                let section = step
                    .dynamic
                    .record_section(graph, c * e + x, &what, |graph| {
                        expert.record(ctx, graph, input, output, scratch)
                    })?;
                step.expert_dispatches.push(section);
            }
            combine(
                ctx,
                graph,
                &step.regions_out,
                &step.route.slots,
                &step.topk_weight,
                tokens,
                out,
            )?;
        }
        step.dynamic.finish()?;
        if let Some(gs) = &groups {
            gs.finish()?;
        }
        step.groups = groups;
        Ok(step)
    }
}

/// CPU reference of a whole layer for u (N, D): the gate's decisions and
/// `out[t] = sum_j w[t, j] * expert(idx[t, j], u[t])` (an expert maps one row (D) to (D)).
pub fn reference(
    spec: &GateSpec,
    d: usize,
    weights: &GateWeights<'_>,
    u: &[f32],
    expert: impl Fn(usize, &[f32]) -> Vec<f32>,
) -> (gate::GateReference, Vec<f32>) {
    let mut matrix = weights.router.to_vec();
    let mut bias = weights
        .router_bias
        .map_or(vec![0.0; spec.experts], <[f32]>::to_vec);
    if let Some((w, b)) = weights.predictor {
        matrix.extend_from_slice(w);
        bias.push(b);
    }
    let logits = crate::ops::matmul::reference(&matrix, d, u, Some(&bias));
    let g = gate::reference(spec, &logits);
    let k = spec.top_k;
    let mut out = vec![0.0f32; u.len()];
    for (t, row) in u.chunks(d).enumerate() {
        for j in 0..k {
            let y = expert(g.topk_idx[t * k + j] as usize, row);
            let w = g.topk_weight[t * k + j];
            for (o, v) in out[t * d..(t + 1) * d].iter_mut().zip(y) {
                *o += w * v;
            }
        }
    }
    (g, out)
}
