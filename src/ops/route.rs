//! Per-expert token lists of a MoE layer, built on the GPU: counts, a deterministic prefix
//! sum in token order, and the position of every (token, choice) in its expert's list.
//! Kernel: `shaders/route.wgsl` (entry points `count`, `scan`, `scatter`, and `single`, the
//! three in one dispatch for a step of one block).
//!
//! Layout ([`RouteLayout`]): the N tokens of a step are dispatched in chunks of C tokens
//! (C = N unless the expert regions of N tokens would not fit one storage binding). Each
//! chunk has a region of C rows per expert: rows `e * C .. (e + 1) * C` of a (E * C, D)
//! buffer. Token t of chunk c routed to expert e as its j-th choice gets the row
//! `slots[t, j] = e * C + (tokens of chunk c before t routed to e)`; `chunk_counts[c, e]` is
//! how many rows of region e chunk c fills — the row count of expert e's indirect dispatch.
//!
//! Shapes: topk_idx (N, K) u32 with K distinct experts per token, topk_prob (N, K) f32;
//! outputs block_counts, block_offsets (N/64 blocks, E) u32, block_loads (blocks, E) f32
//! (per-block sums of the raw top-k probabilities, for the telemetry), chunk_counts
//! (chunks, E) u32, slots (N, K) u32.

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::u32_param;
use crate::arch::moxe::config::MAX_EXPERTS;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, Workgroups};
use crate::tensor::{DType, Tensor};

/// Tokens per block of the count and scatter kernels.
pub const BLOCK_TOKENS: usize = 64;

/// How the N tokens of a step are split into dispatch chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLayout {
    /// N.
    pub tokens: usize,
    /// E.
    pub experts: usize,
    /// K.
    pub top_k: usize,
    /// C: tokens per chunk (rows per expert region).
    pub chunk: usize,
}

impl RouteLayout {
    /// A checked layout; `chunk` is clamped to N, and must be a multiple of
    /// [`BLOCK_TOKENS`] when it is smaller.
    pub fn new(tokens: usize, experts: usize, top_k: usize, chunk: usize) -> Result<Self> {
        if tokens == 0 {
            return Err(Error::InvalidArgument(
                "a MoE step needs at least one token".into(),
            ));
        }
        if !(1..=MAX_EXPERTS).contains(&experts) || top_k == 0 || top_k > experts {
            return Err(Error::InvalidArgument(format!(
                "routing needs 1 <= top-k ({top_k}) <= experts ({experts}) <= {MAX_EXPERTS}"
            )));
        }
        if chunk < tokens && (chunk == 0 || chunk % BLOCK_TOKENS != 0) {
            return Err(Error::InvalidArgument(format!(
                "a dispatch chunk smaller than the step ({tokens} tokens) must be a positive \
                 multiple of {BLOCK_TOKENS} tokens, got {chunk}"
            )));
        }
        Ok(RouteLayout {
            tokens,
            experts,
            top_k,
            chunk: chunk.min(tokens),
        })
    }

    /// Blocks of [`BLOCK_TOKENS`] tokens.
    pub fn blocks(&self) -> usize {
        self.tokens.div_ceil(BLOCK_TOKENS)
    }

    /// Dispatch chunks.
    pub fn chunks(&self) -> usize {
        self.tokens.div_ceil(self.chunk)
    }

    /// The tokens of chunk `c`.
    pub fn chunk_tokens(&self, c: usize) -> Range<usize> {
        c * self.chunk..((c + 1) * self.chunk).min(self.tokens)
    }

    /// Rows of the expert-region buffers: E * C.
    pub fn region_rows(&self) -> usize {
        self.experts * self.chunk
    }
}

/// The GPU buffers routing writes (see the module documentation for shapes).
pub struct RouteBuffers {
    pub block_counts: Tensor,
    pub block_loads: Tensor,
    pub block_offsets: Tensor,
    pub chunk_counts: Tensor,
    pub slots: Tensor,
}

impl RouteBuffers {
    /// Buffers for `layout`.
    pub fn new(ctx: &Context, layout: &RouteLayout) -> Result<Self> {
        let (b, e) = (layout.blocks(), layout.experts);
        Ok(RouteBuffers {
            block_counts: Tensor::zeros(ctx, "moe block counts", &[b, e], DType::U32)?,
            block_loads: Tensor::zeros(ctx, "moe block loads", &[b, e], DType::F32)?,
            block_offsets: Tensor::zeros(ctx, "moe block offsets", &[b, e], DType::U32)?,
            chunk_counts: Tensor::zeros(
                ctx,
                "moe expert row counts",
                &[layout.chunks(), e],
                DType::U32,
            )?,
            slots: Tensor::zeros(ctx, "moe slots", &[layout.tokens, layout.top_k], DType::U32)?,
        })
    }

    fn check(&self, layout: &RouteLayout) -> Result<()> {
        let (b, e) = (layout.blocks(), layout.experts);
        self.block_counts
            .expect("block counts", &[b, e], DType::U32)?;
        self.block_loads
            .expect("block loads", &[b, e], DType::F32)?;
        self.block_offsets
            .expect("block offsets", &[b, e], DType::U32)?;
        self.chunk_counts
            .expect("chunk counts", &[layout.chunks(), e], DType::U32)?;
        self.slots
            .expect("slots", &[layout.tokens, layout.top_k], DType::U32)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    experts: u32,
    top_k: u32,
    chunk: u32,
    blocks: u32,
    chunks: u32,
    _pad: [u32; 2],
}

/// Records count, scan and scatter (or `single` for a step of one block) for the top-k
/// choices `topk_idx` / `topk_prob`.
pub fn route(
    ctx: &Context,
    graph: &mut Graph,
    layout: &RouteLayout,
    topk_idx: &Tensor,
    topk_prob: &Tensor,
    out: &RouteBuffers,
) -> Result<()> {
    let (n, k) = (layout.tokens, layout.top_k);
    topk_idx.expect("routing top-k indices", &[n, k], DType::U32)?;
    topk_prob.expect("routing top-k probs", &[n, k], DType::F32)?;
    out.check(layout)?;
    let params = Params {
        n: u32_param("routed tokens", n)?,
        experts: layout.experts as u32,
        top_k: k as u32,
        chunk: u32_param("dispatch chunk", layout.chunk)?,
        blocks: u32_param("routing blocks", layout.blocks())?,
        chunks: u32_param("dispatch chunks", layout.chunks())?,
        _pad: [0; 2],
    };
    let uniform = ctx.uniform("route params", &params)?;
    let resources = [
        uniform.as_entire_binding(),
        topk_idx.binding()?,
        topk_prob.binding()?,
        out.block_counts.binding()?,
        out.block_loads.binding()?,
        out.block_offsets.binding()?,
        out.chunk_counts.binding()?,
        out.slots.binding()?,
    ];
    // A step of one block (decode) needs one dispatch, not three.
    let passes: &[(&str, usize)] = if layout.blocks() == 1 {
        &[("single", 1)]
    } else {
        &[
            ("count", layout.blocks()),
            ("scan", layout.chunks()),
            ("scatter", layout.blocks()),
        ]
    };
    for &(entry, groups) in passes {
        let pipeline = ctx.pipeline("route", entry, &[])?;
        graph.dispatch(ctx, &pipeline, &resources, Workgroups::linear(groups))?;
    }
    Ok(())
}

/// CPU reference: `(slots (N, K), chunk_counts (chunks, E))` for top-k choices `idx` (N, K).
pub fn reference(layout: &RouteLayout, idx: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let (e, k, c) = (layout.experts, layout.top_k, layout.chunk);
    let mut slots = vec![0u32; idx.len()];
    let mut counts = vec![0u32; layout.chunks() * e];
    for (i, &x) in idx.iter().enumerate() {
        let chunk = i / k / c;
        let n = &mut counts[chunk * e + x as usize];
        slots[i] = (x as usize * c) as u32 + *n;
        *n += 1;
    }
    (slots, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu, Rng};

    /// Random top-k choices: K distinct experts per token, drawn from a skewed distribution
    /// so some experts get no tokens.
    fn random_choices(rng: &mut Rng, n: usize, e: usize, k: usize) -> Vec<u32> {
        let mut idx = Vec::with_capacity(n * k);
        for _ in 0..n {
            let mut pool: Vec<u32> = (0..e as u32).collect();
            for j in 0..k {
                // Prefer low indices: experts near E are rarely picked unless k is large.
                let r = rng.below(pool.len() - j).min(rng.below(pool.len() - j));
                pool.swap(j, j + r);
                idx.push(pool[j]);
            }
        }
        idx
    }

    fn check(n: usize, e: usize, k: usize, chunk: usize, seed: u64) {
        let ctx = gpu();
        let layout = RouteLayout::new(n, e, k, chunk).unwrap();
        let mut rng = Rng::new(seed);
        let idx = random_choices(&mut rng, n, e, k);
        let prob = rng.uniform_vec(n * k, 0.0, 1.0);
        let it = Tensor::from_u32(ctx, "idx", &[n, k], &idx).unwrap();
        let pt = Tensor::from_f32(ctx, "prob", &[n, k], &prob).unwrap();
        let bufs = RouteBuffers::new(ctx, &layout).unwrap();
        let mut g = Graph::new();
        route(ctx, &mut g, &layout, &it, &pt, &bufs).unwrap();
        ctx.run(&[&g]).unwrap();
        let what = format!("N={n} E={e} k={k} chunk={chunk}");
        let (slots, counts) = reference(&layout, &idx);
        assert_eq!(bufs.slots.to_u32().unwrap(), slots, "{what}: slots");
        assert_eq!(
            bufs.chunk_counts.to_u32().unwrap(),
            counts,
            "{what}: counts"
        );
        let mut loads = vec![0.0f32; layout.blocks() * e];
        let mut block_counts = vec![0u32; layout.blocks() * e];
        for (i, (&x, &p)) in idx.iter().zip(&prob).enumerate() {
            let b = i / k / BLOCK_TOKENS;
            loads[b * e + x as usize] += p;
            block_counts[b * e + x as usize] += 1;
        }
        assert_eq!(bufs.block_counts.to_u32().unwrap(), block_counts, "{what}");
        let got = bufs.block_loads.to_f32().unwrap();
        assert_close(&got, &loads, 1e-5, 1e-5, &format!("{what}: loads"));
    }

    #[test]
    fn positions_follow_token_order_in_every_layout() {
        for (i, &(n, e, k, chunk)) in [
            (1, 2, 1, 1),
            (1, 8, 8, 1),
            (63, 4, 2, 63),
            (65, 8, 1, 65),
            (300, 8, 2, 300),
            (300, 8, 2, 64),
            (1000, 64, 3, 192),
            (130, 64, 64, 128),
        ]
        .iter()
        .enumerate()
        {
            check(n, e, k, chunk, i as u64);
        }
    }

    #[test]
    fn reference_counts_every_choice_once() {
        let layout = RouteLayout::new(5, 3, 2, 5).unwrap();
        let idx = [0, 2, 2, 1, 0, 1, 2, 0, 1, 2];
        let (slots, counts) = reference(&layout, &idx);
        assert_eq!(counts, vec![3, 3, 4]);
        assert_eq!(slots, vec![0, 10, 11, 5, 1, 6, 12, 2, 7, 13]);
    }

    #[test]
    fn bad_layouts_are_typed_errors() {
        assert!(RouteLayout::new(0, 4, 1, 1).is_err());
        assert!(RouteLayout::new(10, 4, 5, 10).is_err());
        let err = RouteLayout::new(200, 4, 1, 100).unwrap_err().to_string();
        assert!(err.contains("multiple of 64"), "{err}");
        assert_eq!(RouteLayout::new(10, 4, 1, 64).unwrap().chunk, 10);
    }
}
