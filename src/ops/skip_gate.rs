//! The mLSTM block's output gate with its learnable skip, `y = (h + w * xc) * silu(z)`
//! (MODEL.md section 5), optionally with h first normalised per head (the cell output's
//! MultiHeadLayerNorm, [`norm_skip_gate`]: one dispatch for both). Kernel:
//! `shaders/skip_gate.wgsl`.
//!
//! Shapes: h, xc, z and y are (rows, cols) views; w is (cols) f32.

use bytemuck::{Pod, Zeroable};

use super::layer_norm::Norm;
use super::{distinct, u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    h_offset: u32,
    h_stride: u32,
    xc_offset: u32,
    xc_stride: u32,
    z_offset: u32,
    z_stride: u32,
    y_offset: u32,
    y_stride: u32,
    group: u32,
    eps: f32,
    has_weight: u32,
    weight_offset: u32,
    center: u32,
    _pad: [u32; 1],
}

/// Records `y = (h + w * xc) * silu(z)`.
pub fn skip_gate(
    ctx: &Context,
    graph: &mut Graph,
    h: View<'_>,
    w: &Tensor,
    xc: View<'_>,
    z: View<'_>,
    y: View<'_>,
) -> Result<()> {
    record(ctx, graph, None, h, w, xc, z, y)
}

/// Records `y = (norm(h) + w * xc) * silu(z)` with `norm` a group norm without bias (the
/// mLSTM cell output's MultiHeadLayerNorm, [`Norm::xlstm_heads`]).
#[allow(clippy::too_many_arguments)]
pub fn norm_skip_gate(
    ctx: &Context,
    graph: &mut Graph,
    norm: &Norm<'_>,
    h: View<'_>,
    w: &Tensor,
    xc: View<'_>,
    z: View<'_>,
    y: View<'_>,
) -> Result<()> {
    record(ctx, graph, Some(norm), h, w, xc, z, y)
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    graph: &mut Graph,
    norm: Option<&Norm<'_>>,
    h: View<'_>,
    w: &Tensor,
    xc: View<'_>,
    z: View<'_>,
    y: View<'_>,
) -> Result<()> {
    for (what, v) in [
        ("skip gate h", &h),
        ("skip gate xc", &xc),
        ("skip gate z", &z),
        ("skip gate output", &y),
    ] {
        v.check(what)?;
        if (v.rows, v.cols) != (h.rows, h.cols) {
            return Err(Error::mismatch(
                format!("{what} ('{}')", v.tensor.label()),
                format!("{} x {}", h.rows, h.cols),
                format!("{} x {}", v.rows, v.cols),
            ));
        }
        if what != "skip gate output" {
            distinct("skip gate", v.tensor, y.tensor)?;
        }
    }
    w.expect("skip gate weight", &[h.cols], DType::F32)?;
    if let Some(n) = norm {
        if n.group == 0 || h.cols % n.group != 0 || n.bias.is_some() {
            return Err(Error::mismatch(
                "skip gate norm",
                format!("groups dividing {} columns, no bias", h.cols),
                format!("groups of {} with bias {}", n.group, n.bias.is_some()),
            ));
        }
        if let Some(nw) = n.weight {
            nw.expect("skip gate norm weight", &[h.cols], DType::F32)?;
        }
    }
    if h.cols == 0 {
        return Ok(());
    }
    let params = Params {
        rows: u32_param("rows", h.rows)?,
        cols: u32_param("cols", h.cols)?,
        h_offset: u32_param("offset", h.offset)?,
        h_stride: u32_param("stride", h.stride)?,
        xc_offset: u32_param("offset", xc.offset)?,
        xc_stride: u32_param("stride", xc.stride)?,
        z_offset: u32_param("offset", z.offset)?,
        z_stride: u32_param("stride", z.stride)?,
        y_offset: u32_param("offset", y.offset)?,
        y_stride: u32_param("stride", y.stride)?,
        group: u32_param("norm group", norm.map_or(0, |n| n.group))?,
        eps: norm.map_or(0.0, |n| n.eps),
        has_weight: norm.is_some_and(|n| n.weight.is_some()) as u32,
        weight_offset: norm.is_some_and(|n| n.weight_offset) as u32,
        center: norm.is_some_and(|n| n.center) as u32,
        _pad: [0; 1],
    };
    let uniform = ctx.uniform("skip gate params", &params)?;
    let norm_weight = norm.and_then(|n| n.weight).unwrap_or(w);
    let buffers = [
        h.binding()?,
        xc.binding()?,
        z.binding()?,
        w.binding()?,
        y.binding()?,
        norm_weight.binding()?,
    ];
    // The buffers as scalar arrays (bindings 1-6), then again as vec4 arrays (7-12).
    let resources: Vec<_> = std::iter::once(uniform.as_entire_binding())
        .chain(buffers.iter().cloned())
        .chain(buffers.iter().cloned())
        .collect();
    if let Some(n) = norm {
        // One SIMD group per (row, head) on CPU adapters, where every load loops over the
        // lanes; 64 invocations on GPUs.
        let wg = if ctx.cpu_kernels() { 8 } else { 64 };
        let q4 = n.group % 4 == 0 && [h, xc, z, y].iter().all(|v| v.rows_in_quads());
        let constants = [("WG", wg as f64), ("Q4", q4 as u8 as f64)];
        // The norm's sums by one subgroupAdd where one subgroup holds the workgroup.
        let module = match ctx.subgroup_holds(wg) {
            true => "skip_gate_subgroup",
            false => "skip_gate",
        };
        let pipeline = ctx.pipeline(module, "norm_skip_gate", &constants)?;
        let grid = RowGrid::YZ {
            x: h.cols / n.group,
        };
        return graph.dispatch_rows(ctx, &pipeline, &resources, grid, h.rows);
    }
    let pipeline = ctx.pipeline("skip_gate", "skip_gate", &[])?;
    graph.dispatch_rows(
        ctx,
        &pipeline,
        &resources,
        RowGrid::YZ {
            x: h.cols.div_ceil(64),
        },
        h.rows,
    )
}

/// CPU reference over dense (rows, cols) data.
pub fn reference(h: &[f32], w: &[f32], xc: &[f32], z: &[f32]) -> Vec<f32> {
    let cols = w.len();
    (0..h.len())
        .map(|i| {
            let silu = super::elementwise::Activation::Silu.apply(z[i]) as f64;
            ((h[i] as f64 + w[i % cols] as f64 * xc[i] as f64) * silu) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu, Rng};

    #[test]
    fn matches_reference_on_views() {
        let ctx = gpu();
        let mut rng = Rng::new(31);
        for &(rows, cols) in &[(1, 1), (3, 37), (70, 130)] {
            // h and xc are the two halves of one buffer; z sits at an offset of another.
            let hx = rng.normal_vec(rows * 2 * cols, 2.0);
            let mut zz = rng.normal_vec(rows * (cols + 1), 3.0);
            zz[1] = 100.0;
            if zz.len() > 2 {
                zz[2] = -100.0;
            }
            let w = rng.uniform_vec(cols, 0.5, 1.5);
            let hxt = Tensor::from_f32(ctx, "hx", &[rows, 2 * cols], &hx).unwrap();
            let zt = Tensor::from_f32(ctx, "z", &[rows, cols + 1], &zz).unwrap();
            let wt = Tensor::from_f32(ctx, "w", &[cols], &w).unwrap();
            let yt = Tensor::zeros(ctx, "y", &[rows, cols], DType::F32).unwrap();
            let mut g = Graph::new();
            let hv = View::of(&hxt).select_cols(0..cols);
            let xv = View::of(&hxt).select_cols(cols..2 * cols);
            let zv = View::of(&zt).select_cols(1..cols + 1);
            skip_gate(ctx, &mut g, hv, &wt, xv, zv, View::of(&yt)).unwrap();
            ctx.run(&[&g]).unwrap();
            let pick = |v: &[f32], w: usize, off: usize| -> Vec<f32> {
                v.chunks(w)
                    .flat_map(|r| r[off..off + cols].to_vec())
                    .collect()
            };
            let want = reference(
                &pick(&hx, 2 * cols, 0),
                &w,
                &pick(&hx, 2 * cols, cols),
                &pick(&zz, cols + 1, 1),
            );
            let what = format!("skip gate {rows}x{cols}");
            assert_close(&yt.to_f32().unwrap(), &want, 1e-5, 1e-5, &what);
        }
    }

    #[test]
    fn the_head_norm_fused_before_the_gate_matches_the_references() {
        let ctx = gpu();
        let mut rng = Rng::new(32);
        // (rows, cols, group): the bundled model's heads, odd groups, one wide head.
        for &(rows, cols, group) in &[(1, 256, 64), (5, 30, 10), (2, 512, 512)] {
            let h = rng.normal_vec(rows * cols, 3.0);
            let xc = rng.normal_vec(rows * cols, 1.0);
            let z = rng.normal_vec(rows * cols, 2.0);
            let w = rng.uniform_vec(cols, 0.5, 1.5);
            let nw = rng.normal_vec(cols, 0.2);
            let t = |name, v: &[f32]| Tensor::from_f32(ctx, name, &[rows, cols], v).unwrap();
            let (ht, xt, zt) = (t("h", &h), t("xc", &xc), t("z", &z));
            let wt = Tensor::from_f32(ctx, "w", &[cols], &w).unwrap();
            let nwt = Tensor::from_f32(ctx, "norm", &[cols], &nw).unwrap();
            let yt = Tensor::zeros(ctx, "y", &[rows, cols], DType::F32).unwrap();
            let norm = Norm::xlstm_heads(&nwt, cols / group);
            let mut g = Graph::new();
            let v = View::of;
            norm_skip_gate(ctx, &mut g, &norm, v(&ht), &wt, v(&xt), v(&zt), v(&yt)).unwrap();
            ctx.run(&[&g]).unwrap();
            let hn = crate::ops::layer_norm::reference(
                &h,
                cols,
                group,
                Some(&nw),
                true,
                None,
                norm.eps,
                true,
            );
            let want = reference(&hn, &w, &xc, &z);
            let what = format!("norm skip gate {rows}x{cols}/{group}");
            assert_close(&yt.to_f32().unwrap(), &want, 2e-5, 2e-5, &what);
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let ctx = gpu();
        let a = Tensor::zeros(ctx, "a", &[2, 4], DType::F32).unwrap();
        let y = Tensor::zeros(ctx, "y", &[2, 4], DType::F32).unwrap();
        let w = Tensor::zeros(ctx, "w", &[3], DType::F32).unwrap();
        let mut g = Graph::new();
        let v = View::of(&a);
        let err = skip_gate(ctx, &mut g, v, &w, v, v, View::of(&y))
            .unwrap_err()
            .to_string();
        assert!(err.contains("skip gate weight"), "{err}");
        let err = skip_gate(ctx, &mut g, v, &w, v, v.select_cols(0..3), View::of(&y))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("skip gate z") && err.contains("2 x 4"),
            "{err}"
        );
        let err = skip_gate(ctx, &mut g, v, &w, v, v, v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("share a buffer"), "{err}");
        let w4 = Tensor::zeros(ctx, "w4", &[4], DType::F32).unwrap();
        let norm = Norm {
            group: 3,
            ..Norm::xlstm(&w4)
        };
        let err = norm_skip_gate(ctx, &mut g, &norm, v, &w4, v, v, View::of(&y))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("skip gate norm") && err.contains("groups of 3"),
            "{err}"
        );
    }
}
