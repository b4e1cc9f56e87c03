//! Per-group token lists of a latent MoE layer (docs/LATENT_FORMAT.md section 4), built on
//! the GPU from the routing: the E experts form G contiguous groups of s = E / G experts
//! (expert e is in group e / s), and a token that chose one or more experts of group g gets
//! ONE row in group g's region — the row where the group's shared projection B_g u is
//! computed once for that token. Kernel: `shaders/group_route.wgsl` (entry points `count`,
//! `scan`, `scatter`, the same scheme as [`route`](super::route)).
//!
//! Layout: the dispatch chunks of the layer's [`RouteLayout`]; each chunk has a region of C
//! rows per group: rows `g * C .. (g + 1) * C` of a (G * C, cols) buffer. Token t of chunk c
//! that hits group g has the row `g * C + (tokens of chunk c before t that hit g)`, and every
//! choice (t, j) records the row of its token in its expert's group: `slots[t, j]`.
//! `chunk_counts[c, g]` is the number of distinct tokens of chunk c that hit group g — the row
//! count of the group's indirect dispatches.
//!
//! Shapes: topk_idx (N, K) u32 with K distinct experts per token; outputs block_counts,
//! block_offsets (N/64 blocks, G) u32, chunk_counts (chunks, G) u32, slots (N, K) u32.

use bytemuck::{Pod, Zeroable};

use super::route::RouteLayout;
use super::u32_param;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, Workgroups};
use crate::tensor::{DType, Tensor};

/// The GPU buffers of the group routing (see the module documentation for shapes).
pub struct GroupRouteBuffers {
    /// G.
    pub groups: usize,
    pub block_counts: Tensor,
    pub block_offsets: Tensor,
    pub chunk_counts: Tensor,
    pub slots: Tensor,
}

impl GroupRouteBuffers {
    /// Buffers for `groups` groups of the experts of `layout`; `groups` must divide E.
    pub fn new(ctx: &Context, layout: &RouteLayout, groups: usize) -> Result<Self> {
        if groups == 0 || layout.experts % groups != 0 {
            return Err(Error::InvalidArgument(format!(
                "latent groups ({groups}) must divide the experts ({})",
                layout.experts
            )));
        }
        let b = layout.blocks();
        Ok(GroupRouteBuffers {
            groups,
            block_counts: Tensor::zeros(ctx, "moe group block counts", &[b, groups], DType::U32)?,
            block_offsets: Tensor::zeros(ctx, "moe group block offsets", &[b, groups], DType::U32)?,
            chunk_counts: Tensor::zeros(
                ctx,
                "moe group row counts",
                &[layout.chunks(), groups],
                DType::U32,
            )?,
            slots: Tensor::zeros(
                ctx,
                "moe group slots",
                &[layout.tokens, layout.top_k],
                DType::U32,
            )?,
        })
    }

    /// Rows of the group-region buffers: G * C.
    pub fn region_rows(&self, layout: &RouteLayout) -> usize {
        self.groups * layout.chunk
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    top_k: u32,
    chunk: u32,
    blocks: u32,
    chunks: u32,
    groups: u32,
    group_size: u32,
    _pad: u32,
}

/// Records count, scan and scatter of the group rows for the top-k choices `topk_idx`.
pub fn group_route(
    ctx: &Context,
    graph: &mut Graph,
    layout: &RouteLayout,
    topk_idx: &Tensor,
    out: &GroupRouteBuffers,
) -> Result<()> {
    let (n, k, g) = (layout.tokens, layout.top_k, out.groups);
    topk_idx.expect("group routing top-k indices", &[n, k], DType::U32)?;
    let b = layout.blocks();
    out.block_counts
        .expect("group block counts", &[b, g], DType::U32)?;
    out.block_offsets
        .expect("group block offsets", &[b, g], DType::U32)?;
    out.chunk_counts
        .expect("group chunk counts", &[layout.chunks(), g], DType::U32)?;
    out.slots.expect("group slots", &[n, k], DType::U32)?;
    let params = Params {
        n: u32_param("routed tokens", n)?,
        top_k: k as u32,
        chunk: u32_param("dispatch chunk", layout.chunk)?,
        blocks: u32_param("routing blocks", b)?,
        chunks: u32_param("dispatch chunks", layout.chunks())?,
        groups: g as u32,
        group_size: (layout.experts / g) as u32,
        _pad: 0,
    };
    let uniform = ctx.uniform("group route params", &params)?;
    let resources = [
        uniform.as_entire_binding(),
        topk_idx.binding()?,
        out.block_counts.binding()?,
        out.block_offsets.binding()?,
        out.chunk_counts.binding()?,
        out.slots.binding()?,
    ];
    for (entry, groups) in [("count", b), ("scan", layout.chunks()), ("scatter", b)] {
        let pipeline = ctx.pipeline("group_route", entry, &[])?;
        graph.dispatch(ctx, &pipeline, &resources, Workgroups::linear(groups))?;
    }
    Ok(())
}

/// CPU reference: `(slots (N, K), chunk_counts (chunks, G))` for top-k choices `idx` (N, K)
/// and `groups` groups.
pub fn reference(layout: &RouteLayout, groups: usize, idx: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let (k, c) = (layout.top_k, layout.chunk);
    let size = layout.experts / groups;
    let mut slots = vec![0u32; idx.len()];
    let mut counts = vec![0u32; layout.chunks() * groups];
    for (t, choices) in idx.chunks(k).enumerate() {
        let chunk = t / c;
        for g in 0..groups {
            let hit: Vec<usize> = (0..k)
                .filter(|&j| choices[j] as usize / size == g)
                .collect();
            if hit.is_empty() {
                continue;
            }
            let n = &mut counts[chunk * groups + g];
            for j in hit {
                slots[t * k + j] = (g * c) as u32 + *n;
            }
            *n += 1;
        }
    }
    (slots, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gpu, Rng};

    /// K distinct experts per token, uniformly drawn.
    fn random_choices(rng: &mut Rng, n: usize, e: usize, k: usize) -> Vec<u32> {
        let mut idx = Vec::with_capacity(n * k);
        for _ in 0..n {
            let mut pool: Vec<u32> = (0..e as u32).collect();
            for j in 0..k {
                pool.swap(j, j + rng.below(e - j));
                idx.push(pool[j]);
            }
        }
        idx
    }

    #[test]
    fn rows_are_one_per_token_and_group_hit() {
        let ctx = gpu();
        for (i, &(n, e, k, g, chunk)) in [
            (1, 4, 2, 2, 1),
            (5, 2, 2, 1, 5),
            (63, 4, 2, 2, 63),
            (130, 8, 3, 4, 64),
            (300, 8, 2, 2, 300),
            (200, 64, 8, 8, 128),
        ]
        .iter()
        .enumerate()
        {
            let layout = RouteLayout::new(n, e, k, chunk).unwrap();
            let mut rng = Rng::new(40 + i as u64);
            let idx = random_choices(&mut rng, n, e, k);
            let it = Tensor::from_u32(ctx, "idx", &[n, k], &idx).unwrap();
            let bufs = GroupRouteBuffers::new(ctx, &layout, g).unwrap();
            let mut graph = Graph::new();
            group_route(ctx, &mut graph, &layout, &it, &bufs).unwrap();
            ctx.run(&[&graph]).unwrap();
            let what = format!("N={n} E={e} k={k} G={g} chunk={chunk}");
            let (slots, counts) = reference(&layout, g, &idx);
            assert_eq!(bufs.slots.to_u32().unwrap(), slots, "{what}: slots");
            assert_eq!(bufs.chunk_counts.to_u32().unwrap(), counts, "{what}");
            // Rows = distinct (token, group) hits, never (token, expert) pairs.
            let s = e / g;
            let mut hits = vec![0u32; layout.chunks() * g];
            for (t, ch) in idx.chunks(k).enumerate() {
                let mut gs: Vec<usize> = ch.iter().map(|&x| x as usize / s).collect();
                gs.sort_unstable();
                gs.dedup();
                for x in gs {
                    hits[t / layout.chunk * g + x] += 1;
                }
            }
            assert_eq!(counts, hits, "{what}: reference");
        }
    }

    #[test]
    fn choices_in_one_group_share_the_row() {
        // Token 0 picks experts 0 and 1 (both group 0), token 1 experts 3 and 0.
        let layout = RouteLayout::new(2, 4, 2, 2).unwrap();
        let (slots, counts) = reference(&layout, 2, &[0, 1, 3, 0]);
        assert_eq!(slots, vec![0, 0, 2, 1]);
        assert_eq!(counts, vec![2, 1]);
    }

    #[test]
    fn bad_groups_are_typed_errors() {
        let ctx = gpu();
        let layout = RouteLayout::new(4, 6, 2, 4).unwrap();
        let err = GroupRouteBuffers::new(ctx, &layout, 4)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("must divide"), "{err}");
        let bufs = GroupRouteBuffers::new(ctx, &layout, 3).unwrap();
        let wrong = Tensor::zeros(ctx, "idx", &[4, 1], DType::U32).unwrap();
        let err = group_route(ctx, &mut Graph::new(), &layout, &wrong, &bufs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("top-k indices"), "{err}");
    }
}
