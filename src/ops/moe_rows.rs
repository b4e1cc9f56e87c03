//! Row movement of sparse expert dispatch: `gather` copies each token's row into the
//! regions of the experts it was routed to, `combine` forms
//! `out[t] = sum_j w[t, j] * expert_out[slot(t, j)]` (j ascending, no residual), and `relay`
//! moves rows between two region layouts (`dst[slot(t, j)] = src[src_slot(t, j)]`: a latent
//! layer's group rows into its experts' regions). All run over the tokens of one dispatch
//! chunk. Kernel: `shaders/moe_rows.wgsl`.
//!
//! Shapes: x / out (N, D) views; slots (N, K) u32 from [`route`](super::route::route) (or
//! [`group_route`](super::group_route::group_route)); weights (N, K) f32; regions a dense
//! (rows, D) f32 tensor (E * C rows for experts, G * C for groups; C = chunk tokens).

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::{u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    cols: u32,
    top_k: u32,
    first: u32,
    src_stride: u32,
    src_offset: u32,
    dst_stride: u32,
    dst_offset: u32,
}

/// Checks the shared arguments; returns K.
fn check(rows: View<'_>, slots: &Tensor, tokens: &Range<usize>, regions: &Tensor) -> Result<usize> {
    rows.check("token rows")?;
    let n = rows.rows;
    let k = slots.cols();
    slots.expect("expert slots", &[n, k], DType::U32)?;
    regions.expect("expert regions", &[regions.rows(), rows.cols], DType::F32)?;
    regions.buffer()?;
    if tokens.start > tokens.end || tokens.end > n {
        return Err(Error::mismatch(
            "dispatch chunk tokens",
            format!("a range within 0..{n}"),
            format!("{tokens:?}"),
        ));
    }
    Ok(k)
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    graph: &mut Graph,
    entry: &'static str,
    src: (&Tensor, usize, usize),
    dst: (&Tensor, usize, usize),
    slots: &Tensor,
    src_slots: &Tensor,
    weights: &Tensor,
    tokens: Range<usize>,
    cols: usize,
) -> Result<()> {
    if tokens.is_empty() || cols == 0 {
        return Ok(());
    }
    let params = Params {
        tokens: u32_param("chunk tokens", tokens.len())?,
        cols: u32_param("row width", cols)?,
        top_k: slots.cols() as u32,
        first: u32_param("first chunk token", tokens.start)?,
        src_stride: u32_param("source stride", src.2)?,
        src_offset: u32_param("source offset", src.1)?,
        dst_stride: u32_param("destination stride", dst.2)?,
        dst_offset: u32_param("destination offset", dst.1)?,
    };
    // Four columns per invocation where every row starts on a 16-byte boundary.
    let vec4 = [cols, src.1, src.2, dst.1, dst.2]
        .iter()
        .all(|v| v % 4 == 0);
    let pipeline = ctx.pipeline("moe_rows", entry, &[("VEC4", vec4 as u8 as f64)])?;
    let uniform = ctx.uniform("moe rows params", &params)?;
    let per = if vec4 { 4 } else { 1 };
    let grid = RowGrid::YZ {
        x: cols.div_ceil(64 * per),
    };
    graph.dispatch(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            src.0.binding()?,
            slots.binding()?,
            weights.binding()?,
            dst.0.binding()?,
            src_slots.binding()?,
            src.0.binding()?,
            dst.0.binding()?,
        ],
        grid.workgroups(tokens.len())?,
    )
}

/// Records `regions[slots[t, j]] = x[t]` for every token t in `tokens` and choice j.
pub fn gather(
    ctx: &Context,
    graph: &mut Graph,
    x: View<'_>,
    slots: &Tensor,
    tokens: Range<usize>,
    regions: &Tensor,
) -> Result<()> {
    check(x, slots, &tokens, regions)?;
    super::distinct("gather", x.tensor, regions)?;
    let d = x.cols;
    record(
        ctx,
        graph,
        "gather",
        (x.tensor, x.offset, x.stride),
        (regions, 0, d),
        slots,
        slots,
        slots,
        tokens,
        d,
    )
}

/// Records `out[t] = sum_j weights[t, j] * regions[slots[t, j]]` for every token t in
/// `tokens`.
pub fn combine(
    ctx: &Context,
    graph: &mut Graph,
    regions: &Tensor,
    slots: &Tensor,
    weights: &Tensor,
    tokens: Range<usize>,
    out: View<'_>,
) -> Result<()> {
    let k = check(out, slots, &tokens, regions)?;
    weights.expect("expert weights", &[out.rows, k], DType::F32)?;
    super::distinct("combine", regions, out.tensor)?;
    let d = out.cols;
    record(
        ctx,
        graph,
        "combine",
        (regions, 0, d),
        (out.tensor, out.offset, out.stride),
        slots,
        slots,
        weights,
        tokens,
        d,
    )
}

/// Records `dst[slots[t, j]] = src[src_slots[t, j]]` for every token t in `tokens` and choice
/// j: src and dst are dense region tensors of equal width; both slot tensors are (N, K).
pub fn relay(
    ctx: &Context,
    graph: &mut Graph,
    src: &Tensor,
    src_slots: &Tensor,
    slots: &Tensor,
    tokens: Range<usize>,
    dst: &Tensor,
) -> Result<()> {
    let (n, k) = (slots.rows(), slots.cols());
    slots.expect("expert slots", &[n, k], DType::U32)?;
    src_slots.expect("source slots", &[n, k], DType::U32)?;
    let d = dst.cols();
    dst.expect("expert regions", &[dst.rows(), d], DType::F32)?;
    src.expect("source regions", &[src.rows(), d], DType::F32)?;
    if tokens.start > tokens.end || tokens.end > n {
        return Err(Error::mismatch(
            "dispatch chunk tokens",
            format!("a range within 0..{n}"),
            format!("{tokens:?}"),
        ));
    }
    super::distinct("relay", src, dst)?;
    record(
        ctx,
        graph,
        "relay",
        (src, 0, d),
        (dst, 0, d),
        slots,
        src_slots,
        slots,
        tokens,
        d,
    )
}

/// CPU reference of [`gather`]: x (N, D) dense, slots (N, K), regions (E * C, D).
pub fn gather_reference(
    x: &[f32],
    d: usize,
    slots: &[u32],
    top_k: usize,
    tokens: Range<usize>,
    regions: &mut [f32],
) {
    for t in tokens {
        for &s in &slots[t * top_k..(t + 1) * top_k] {
            let s = s as usize;
            regions[s * d..(s + 1) * d].copy_from_slice(&x[t * d..(t + 1) * d]);
        }
    }
}

/// CPU reference of [`combine`]: slots and weights (N, K); returns the rows of `tokens`,
/// (tokens.len(), D).
pub fn combine_reference(
    regions: &[f32],
    d: usize,
    slots: &[u32],
    weights: &[f32],
    top_k: usize,
    tokens: Range<usize>,
) -> Vec<f32> {
    let mut out = vec![0.0f32; tokens.len() * d];
    for (r, t) in tokens.enumerate() {
        let row = &mut out[r * d..(r + 1) * d];
        for j in 0..top_k {
            let (s, w) = (slots[t * top_k + j] as usize, weights[t * top_k + j]);
            for (o, &v) in row.iter_mut().zip(&regions[s * d..(s + 1) * d]) {
                *o += w * v;
            }
        }
    }
    out
}

/// CPU reference of [`relay`]: src and dst dense regions of width `d`, slots (N, K).
pub fn relay_reference(
    src: &[f32],
    d: usize,
    src_slots: &[u32],
    slots: &[u32],
    tokens: Range<usize>,
    top_k: usize,
    dst: &mut [f32],
) {
    for i in tokens.start * top_k..tokens.end * top_k {
        let (s, t) = (src_slots[i] as usize, slots[i] as usize);
        dst[t * d..(t + 1) * d].copy_from_slice(&src[s * d..(s + 1) * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gate::tests::{gate_case, GATE_FIXTURES};
    use crate::ops::route::{self, RouteLayout};
    use crate::testing::{assert_close, gpu, Rng};

    const POISON: f32 = -1234.5;

    /// Random distinct top-k choices and their slots for `layout`.
    fn routing(rng: &mut Rng, layout: &RouteLayout) -> (Vec<u32>, Vec<u32>) {
        let (n, e, k) = (layout.tokens, layout.experts, layout.top_k);
        let mut idx = Vec::with_capacity(n * k);
        for _ in 0..n {
            let mut pool: Vec<u32> = (0..e as u32).collect();
            for j in 0..k {
                let r = j + rng.below(e - j);
                pool.swap(j, r);
                idx.push(pool[j]);
            }
        }
        let (slots, _) = route::reference(layout, &idx);
        (idx, slots)
    }

    #[test]
    fn gather_and_combine_match_reference_per_chunk() {
        let ctx = gpu();
        let mut rng = Rng::new(21);
        // The last two: rows of whole quads in aligned views (four columns per invocation).
        let cases: [(usize, usize, usize, usize, usize, usize); 5] = [
            (1, 4, 2, 1, 37, 1),
            (130, 8, 2, 64, 70, 1),
            (9, 64, 64, 9, 3, 1),
            (130, 8, 2, 64, 128, 4),
            (5, 4, 3, 5, 12, 4),
        ];
        for &(n, e, k, chunk, d, left) in &cases {
            let layout = RouteLayout::new(n, e, k, chunk).unwrap();
            let (_, slots) = routing(&mut rng, &layout);
            let rows = layout.region_rows();
            // x is columns left..left+D of a wider buffer, out columns ol..ol+D of another.
            let (wx, ol) = ((d + left + 2).next_multiple_of(left), 2 * left.min(2));
            let wo = d + 2 * ol;
            let wide = rng.normal_vec(n * wx, 1.0);
            let xt = Tensor::from_f32(ctx, "x", &[n, wx], &wide).unwrap();
            let x: Vec<f32> = wide
                .chunks(wx)
                .flat_map(|r| r[left..left + d].to_vec())
                .collect();
            let st = Tensor::from_u32(ctx, "slots", &[n, k], &slots).unwrap();
            let weights = rng.uniform_vec(n * k, 0.0, 1.0);
            let wt = Tensor::from_f32(ctx, "w", &[n, k], &weights).unwrap();
            let expert_out = rng.normal_vec(rows * d, 1.0);
            let ot = Tensor::from_f32(ctx, "expert out", &[rows, d], &expert_out).unwrap();
            let out = Tensor::from_f32(ctx, "out", &[n, wo], &vec![POISON; n * wo]).unwrap();
            let what = format!("N={n} E={e} k={k} chunk={chunk} D={d}");
            for c in 0..layout.chunks() {
                let tokens = layout.chunk_tokens(c);
                let it = Tensor::from_f32(ctx, "in", &[rows, d], &vec![POISON; rows * d]).unwrap();
                let mut g = Graph::new();
                let xv = View::of(&xt).select_cols(left..left + d);
                gather(ctx, &mut g, xv, &st, tokens.clone(), &it).unwrap();
                let ov = View::of(&out).select_cols(ol..ol + d);
                combine(ctx, &mut g, &ot, &st, &wt, tokens.clone(), ov).unwrap();
                ctx.run(&[&g]).unwrap();
                let mut want = vec![POISON; rows * d];
                gather_reference(&x, d, &slots, k, tokens.clone(), &mut want);
                let got = it.to_f32().unwrap();
                assert_eq!(got, want, "{what}: gather chunk {c}");
            }
            let got = out.to_f32().unwrap();
            let want = combine_reference(&expert_out, d, &slots, &weights, k, 0..n);
            for t in 0..n {
                let row = &got[t * wo..(t + 1) * wo];
                assert_close(
                    &row[ol..ol + d],
                    &want[t * d..(t + 1) * d],
                    1e-6,
                    1e-6,
                    &what,
                );
                assert!(
                    row[..ol].iter().chain(&row[ol + d..]).all(|&v| v == POISON),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn relay_moves_group_rows_into_expert_regions() {
        let ctx = gpu();
        let mut rng = Rng::new(5);
        // D = 8: four columns per invocation.
        let cases = [
            (7, 4, 2, 2, 7, 5),
            (130, 8, 3, 4, 64, 9),
            (20, 4, 2, 2, 20, 8),
        ];
        for &(n, e, k, g, chunk, d) in &cases {
            let layout = RouteLayout::new(n, e, k, chunk).unwrap();
            let (idx, slots) = routing(&mut rng, &layout);
            let (group_slots, _) = crate::ops::group_route::reference(&layout, g, &idx);
            let src = rng.normal_vec(g * layout.chunk * d, 1.0);
            let st = Tensor::from_f32(ctx, "group rows", &[g * layout.chunk, d], &src).unwrap();
            let rows = layout.region_rows();
            let dt = Tensor::from_f32(ctx, "regions", &[rows, d], &vec![POISON; rows * d]).unwrap();
            let gs = Tensor::from_u32(ctx, "group slots", &[n, k], &group_slots).unwrap();
            let es = Tensor::from_u32(ctx, "slots", &[n, k], &slots).unwrap();
            let mut want = vec![POISON; rows * d];
            let what = format!("N={n} E={e} k={k} G={g} chunk={chunk}");
            for c in 0..layout.chunks() {
                let tokens = layout.chunk_tokens(c);
                dt.write(crate::HostData::F32(&vec![POISON; rows * d]))
                    .unwrap();
                let mut graph = Graph::new();
                relay(ctx, &mut graph, &st, &gs, &es, tokens.clone(), &dt).unwrap();
                ctx.run(&[&graph]).unwrap();
                want.fill(POISON);
                relay_reference(&src, d, &group_slots, &slots, tokens, k, &mut want);
                assert_eq!(dt.to_f32().unwrap(), want, "{what}: chunk {c}");
            }
        }
    }

    #[test]
    fn combine_matches_every_gate_fixture() {
        let ctx = gpu();
        for name in GATE_FIXTURES {
            let c = gate_case(name);
            let (e, k, d) = (c.spec.experts, c.spec.top_k, c.d);
            let n = c.u.len() / d;
            let layout = RouteLayout::new(n, e, k, n).unwrap();
            let idx: Vec<u32> =
                c.w.ints("out.topk_idx")
                    .unwrap()
                    .0
                    .iter()
                    .map(|&i| i as u32)
                    .collect();
            let weights = c.w.f32_any("out.topk_weight").unwrap().0;
            let (slots, _) = route::reference(&layout, &idx);
            // Region row slot(t, j) holds expert idx[t, j]'s output for token t.
            let (all, _) = c.w.f32_any("in.expert_out").unwrap();
            let mut regions = vec![POISON; layout.region_rows() * d];
            for (i, (&x, &s)) in idx.iter().zip(&slots).enumerate() {
                let (t, x, s) = (i / k, x as usize, s as usize);
                regions[s * d..(s + 1) * d].copy_from_slice(&all[(x * n + t) * d..][..d]);
            }
            let rt =
                Tensor::from_f32(ctx, "regions", &[layout.region_rows(), d], &regions).unwrap();
            let st = Tensor::from_u32(ctx, "slots", &[n, k], &slots).unwrap();
            let wt = Tensor::from_f32(ctx, "w", &[n, k], &weights).unwrap();
            let out = Tensor::zeros(ctx, "y", &[n, d], DType::F32).unwrap();
            let mut g = Graph::new();
            combine(ctx, &mut g, &rt, &st, &wt, 0..n, View::of(&out)).unwrap();
            ctx.run(&[&g]).unwrap();
            let want = c.w.f32_any("out.y").unwrap().0;
            assert_close(
                &out.to_f32().unwrap(),
                &want,
                1e-6,
                1e-5,
                &format!("{name}: y"),
            );
        }
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let ctx = gpu();
        let x = Tensor::zeros(ctx, "x", &[3, 4], DType::F32).unwrap();
        let slots = Tensor::zeros(ctx, "slots", &[3, 2], DType::U32).unwrap();
        let regions = Tensor::zeros(ctx, "regions", &[6, 5], DType::F32).unwrap();
        let err = gather(ctx, &mut Graph::new(), View::of(&x), &slots, 0..3, &regions)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expert regions"), "{err}");
        let regions = Tensor::zeros(ctx, "regions", &[6, 4], DType::F32).unwrap();
        let err = gather(ctx, &mut Graph::new(), View::of(&x), &slots, 1..4, &regions)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk tokens"), "{err}");
        let w = Tensor::zeros(ctx, "w", &[3, 1], DType::F32).unwrap();
        let err = combine(
            ctx,
            &mut Graph::new(),
            &regions,
            &slots,
            &w,
            0..3,
            View::of(&x),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expert weights"), "{err}");
    }
}
