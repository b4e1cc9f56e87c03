//! The mLSTM block's output gate with its learnable skip, `y = (h + w * xc) * silu(z)`
//! (MODEL.md section 5). Kernel: `shaders/skip_gate.wgsl`.
//!
//! Shapes: h, xc, z and y are (rows, cols) views; w is (cols) f32.

use bytemuck::{Pod, Zeroable};

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
    _pad: [u32; 2],
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
        _pad: [0; 2],
    };
    let pipeline = ctx.pipeline("skip_gate", "skip_gate", &[])?;
    let uniform = ctx.uniform("skip gate params", &params)?;
    graph.dispatch_rows(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            h.binding()?,
            xc.binding()?,
            z.binding()?,
            w.binding()?,
            y.binding()?,
        ],
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
    }
}
