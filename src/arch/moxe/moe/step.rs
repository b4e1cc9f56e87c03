//! The buffers of one recorded MoE step ([`MoeLayer::record`](super::MoeLayer::record)):
//! router outputs, routing, telemetry, and the GPU-written dispatch arguments of the experts.

use std::ops::Range;
use std::sync::Arc;

use super::{GroupStep, EXPERT_DISPATCH_BUDGET};
use crate::arch::moxe::telemetry::RouterTelemetry;
use crate::context::Context;
use crate::error::Result;
use crate::graph::DynamicRows;
use crate::graph::Graph;
use crate::ops::gate::{self, GateOutputs, GateSpec, STAT_COLS};
use crate::ops::route::{RouteBuffers, RouteLayout};
use crate::ops::router_stats::{router_stats, RouterSummary, SUMMARY_HEAD};
use crate::runtime::Scratch;
use crate::tensor::{DType, Tensor};

/// The buffers of one recorded MoE step: routing, telemetry, and the GPU-written dispatch
/// arguments of the experts. Valid after the graph it was recorded into has run.
pub struct MoeStep {
    ctx: Context,
    /// The telemetry reduction over this step's buffers (router_stats), recorded once and
    /// run only when the telemetry is read.
    telemetry: Graph,
    pub(super) spec: GateSpec,
    pub(super) layout: RouteLayout,
    /// (N, E [+1]) router logits.
    pub(super) logits: Tensor,
    /// (N, E) p.
    pub(super) probs: Tensor,
    /// (N, K) u32 chosen experts.
    pub(super) topk_idx: Tensor,
    /// (N, K) renormalised weights.
    pub(super) topk_weight: Tensor,
    /// (N, K) raw probabilities of the chosen experts.
    pub(super) topk_prob: Tensor,
    /// (N, STAT_COLS) per-token router terms.
    pub(super) stats: Tensor,
    /// Counts, offsets and slots of the routing.
    pub(super) route: RouteBuffers,
    /// (SUMMARY_HEAD + E) losses, shares and loads.
    pub(super) summary: Tensor,
    /// (E) u32 tokens per expert.
    pub(super) counts: Tensor,
    /// Indirect dispatch arguments of the experts, from the per-chunk counts.
    pub(super) dynamic: Arc<DynamicRows>,
    /// Registered dispatch indices of (chunk c, expert e), at index c * E + e.
    pub(super) expert_dispatches: Vec<Range<usize>>,
    /// (E * C, D) expert inputs ((E * C, R) latent rows in a latent layer with a group
    /// stage) and (E * C, D) outputs, from the shared scratch.
    pub(super) regions_in: Arc<Tensor>,
    pub(super) regions_out: Arc<Tensor>,
    /// The group stage's buffers in a latent layer of mlp experts.
    pub(super) groups: Option<GroupStep>,
}

impl MoeStep {
    pub(super) fn allocate(
        ctx: &Context,
        spec: &GateSpec,
        layout: RouteLayout,
        d: usize,
        in_cols: usize,
        scratch: &Scratch,
    ) -> Result<Self> {
        let (n, e, k) = (layout.tokens, layout.experts, layout.top_k);
        let f32s = |label: &str, shape: &[usize]| Tensor::zeros(ctx, label, shape, DType::F32);
        let route = RouteBuffers::new(ctx, &layout)?;
        let capacity = layout.chunks() * e * EXPERT_DISPATCH_BUDGET;
        let dynamic = DynamicRows::new(ctx, &route.chunk_counts, capacity)?;
        let mut step = MoeStep {
            ctx: ctx.clone(),
            telemetry: Graph::new(),
            spec: *spec,
            layout,
            logits: f32s("moe router logits", &[n, spec.logit_cols()])?,
            probs: f32s("moe router probs", &[n, e])?,
            topk_idx: Tensor::zeros(ctx, "moe top-k experts", &[n, k], DType::U32)?,
            topk_weight: f32s("moe top-k weights", &[n, k])?,
            topk_prob: f32s("moe top-k probs", &[n, k])?,
            stats: f32s("moe router stats", &[n, STAT_COLS])?,
            route,
            summary: f32s("moe router summary", &[SUMMARY_HEAD + e])?,
            counts: Tensor::zeros(ctx, "moe expert counts", &[e], DType::U32)?,
            dynamic,
            expert_dispatches: Vec::with_capacity(layout.chunks() * e),
            regions_in: scratch.get_rows("moe.expert_in", layout.region_rows(), in_cols)?,
            regions_out: scratch.get_rows("moe.expert_out", layout.region_rows(), d)?,
            groups: None,
        };
        router_stats(
            ctx,
            &mut step.telemetry,
            &step.layout,
            spec.router.has_predictor(),
            &step.stats,
            &step.route,
            &step.summary,
            &step.counts,
        )?;
        Ok(step)
    }

    pub(super) fn gate_outputs(&self) -> GateOutputs<'_> {
        GateOutputs {
            probs: &self.probs,
            topk_idx: &self.topk_idx,
            topk_weight: &self.topk_weight,
            topk_prob: &self.topk_prob,
            stats: &self.stats,
        }
    }

    /// N tokens, E experts, K, and the dispatch chunk C.
    pub fn layout(&self) -> &RouteLayout {
        &self.layout
    }

    /// Reads the router telemetry of the last run of this recording (blocks until the
    /// device is idle; call it only when telemetry is wanted). Its summary (losses, loads,
    /// counts) is reduced here, from the step's per-token terms and routing, rather than by
    /// every step.
    pub fn read_telemetry(&self) -> Result<RouterTelemetry> {
        self.ctx.run(&[&self.telemetry])?;
        let stats = self.stats.to_f32()?;
        let col = |c: usize| -> Vec<f32> { stats.chunks(STAT_COLS).map(|r| r[c]).collect() };
        let summary = RouterSummary::from_buffers(&self.summary.to_f32()?, &self.counts.to_u32()?);
        Ok(RouterTelemetry::new(
            self.spec.top_k,
            col(gate::STAT_DIFFICULTY),
            col(gate::STAT_ENTROPY),
            self.probs.to_f32()?,
            self.topk_idx.to_u32()?,
            self.topk_weight.to_f32()?,
            summary,
        ))
    }

    /// Reads the router logits (N, E [+1]) of the last run: z, then the difficulty
    /// pre-activation for the entropy-aware gate.
    pub fn read_logits(&self) -> Result<Vec<f32>> {
        self.logits.to_f32()
    }

    /// Reads the rows each (chunk, expert) was given by the GPU, at index c * E + e.
    pub fn read_expert_rows(&self) -> Result<Vec<u32>> {
        self.route.chunk_counts.to_u32()
    }

    /// Reads the workgroup grids the GPU wrote for every expert dispatch of the last run:
    /// one list per (chunk c, expert e) at index c * E + e, in recording order. An expert
    /// that received no tokens has a zero dimension in every grid.
    pub fn read_expert_grids(&self) -> Result<Vec<Vec<[u32; 3]>>> {
        self.dynamic.read_sections(&self.expert_dispatches)
    }

    /// The table of GPU-written dispatch arguments of the experts.
    pub fn dynamic_rows(&self) -> &DynamicRows {
        &self.dynamic
    }

    /// The group stage of a latent layer of mlp experts: its GPU-written row counts, slots
    /// and dispatch grids.
    pub fn group_stage(&self) -> Option<&GroupStep> {
        self.groups.as_ref()
    }

    /// The expert input and output regions (E * C, D) of this recording (shared with every
    /// layer recorded on the same scratch; the input holds (E * C, R) latent rows in a
    /// latent layer with a group stage).
    pub fn expert_regions(&self) -> (&Tensor, &Tensor) {
        (&self.regions_in, &self.regions_out)
    }
}
