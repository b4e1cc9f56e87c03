//! The group stage of a latent MoE layer whose experts read the layer input u itself (mlp
//! experts, docs/LATENT_FORMAT.md section 4): per dispatch chunk,
//! 1. every token's row is gathered ONCE into the region of each group it hit
//!    ([`group_route`](crate::ops::group_route) gives the rows);
//! 2. per group, one matmul `latent = u B_g^T` over the group's rows, inside a dynamic-rows
//!    section counted by the GPU-written group row counts (no tokens, no work);
//! 3. the latent rows are relayed into the experts' regions (one per (token, choice)), where
//!    each selected expert applies only its A's.
//!
//! Shapes: B_g (R_g, D) per group (the stacked bases of its factored kinds); group input
//! regions (G * C, D); group latent regions (G * C, R) and expert input regions (E * C, R)
//! with R = max_g R_g.

use std::ops::Range;
use std::sync::Arc;

use super::EXPERT_DISPATCH_BUDGET;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{DynamicRows, Graph};
use crate::ops::group_route::GroupRouteBuffers;
use crate::ops::matmul::matmul;
use crate::ops::route::RouteLayout;
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::Tensor;

/// The shared projections of a latent layer: one stacked B_g (R_g, D) per group.
pub struct GroupStage {
    bases: Vec<Tensor>,
    width: usize,
}

impl GroupStage {
    /// A stage from the G stacked bases (each (R_g, D)).
    pub fn new(bases: Vec<Tensor>, d: usize) -> Result<Self> {
        if bases.is_empty() {
            return Err(Error::InvalidArgument(
                "a latent group stage needs at least one group".into(),
            ));
        }
        for b in &bases {
            if b.cols() != d || b.rows() == 0 {
                return Err(Error::mismatch(
                    format!("shared projection '{}'", b.label()),
                    format!("(r, {d}) with r >= 1"),
                    format!("{:?}", b.shape()),
                ));
            }
        }
        let width = bases.iter().map(Tensor::rows).max().unwrap_or(0);
        Ok(GroupStage { bases, width })
    }

    /// G.
    pub fn groups(&self) -> usize {
        self.bases.len()
    }

    /// R: the width of the latent rows the experts read (the widest group's R_g).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Allocates the buffers of one recording.
    pub(super) fn allocate(
        &self,
        ctx: &Context,
        layout: &RouteLayout,
        d: usize,
        scratch: &Scratch,
    ) -> Result<GroupStep> {
        let route = GroupRouteBuffers::new(ctx, layout, self.groups())?;
        let rows = route.region_rows(layout);
        let capacity = layout.chunks() * self.groups() * EXPERT_DISPATCH_BUDGET;
        Ok(GroupStep {
            dynamic: DynamicRows::new(ctx, &route.chunk_counts, capacity)?,
            dispatches: Vec::with_capacity(layout.chunks() * self.groups()),
            regions_in: scratch.get_rows("moe.group_in", rows, d)?,
            regions_latent: scratch.get_rows("moe.group_latent", rows, self.width)?,
            route,
        })
    }

    /// Records step 2 for chunk `c`: `latent[g] = in[g] B_g^T` over each group's rows.
    pub(super) fn record_projections(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        step: &mut GroupStep,
        layout: &RouteLayout,
        c: usize,
    ) -> Result<()> {
        let (g_count, chunk) = (self.groups(), layout.chunk);
        for (g, b) in self.bases.iter().enumerate() {
            let rows = g * chunk..(g + 1) * chunk;
            let input = View::of(&step.regions_in).select_rows(rows.clone());
            let latent = View::of(&step.regions_latent)
                .select_rows(rows)
                .select_cols(0..b.rows());
            let what = format!("shared projection {g} of a MoE layer");
            let section = step
                .dynamic
                .record_section(graph, c * g_count + g, &what, |graph| {
                    matmul(ctx, graph, b, None, input, latent, 0.0)
                })?;
            step.dispatches.push(section);
        }
        Ok(())
    }
}

/// The buffers of the group stage of one recorded MoE step.
pub struct GroupStep {
    /// Group rows of every (token, choice), counts per (chunk, group).
    pub(super) route: GroupRouteBuffers,
    /// Indirect dispatch arguments of the shared projections, from the group row counts.
    pub(super) dynamic: Arc<DynamicRows>,
    /// Registered dispatch indices of (chunk c, group g), at index c * G + g.
    pub(super) dispatches: Vec<Range<usize>>,
    /// (G * C, D) the tokens' rows, once per group hit; (G * C, R) their latent rows.
    pub(super) regions_in: Arc<Tensor>,
    pub(super) regions_latent: Arc<Tensor>,
}

impl GroupStep {
    /// Records the fill of the dispatch arguments (after the group routing).
    pub(super) fn record_fill(&self, ctx: &Context, graph: &mut Graph) -> Result<()> {
        self.dynamic.record_fill(ctx, graph)
    }

    /// Uploads the registered grids.
    pub(super) fn finish(&self) -> Result<()> {
        self.dynamic.finish()
    }

    /// Reads the rows each (chunk, group) shared projection multiplied in the last run, at
    /// index c * G + g: the distinct tokens of chunk c that hit group g.
    pub fn read_rows(&self) -> Result<Vec<u32>> {
        self.route.chunk_counts.to_u32()
    }

    /// Reads the group row of every (token, choice) (N, K) of the last run.
    pub fn read_slots(&self) -> Result<Vec<u32>> {
        self.route.slots.to_u32()
    }

    /// Reads the workgroup grids the GPU wrote for the shared-projection dispatches of the
    /// last run: one list per (chunk c, group g) at index c * G + g.
    pub fn read_grids(&self) -> Result<Vec<Vec<[u32; 3]>>> {
        self.dynamic.read_sections(&self.dispatches)
    }

    /// The group input regions (G * C, D) and latent regions (G * C, R) of this recording.
    pub fn regions(&self) -> (&Tensor, &Tensor) {
        (&self.regions_in, &self.regions_latent)
    }
}
