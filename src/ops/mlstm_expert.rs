//! The mLSTM cell of an expert (kernel `shaders/mlstm_expert.wgsl`): every row is its own
//! length-1 sequence with zero state, in the package's parallel form,
//! `h~ = (q . kk) v / (max(|q . kk|, exp(-i)) + 1e-6)` per head with `kk = k / sqrt(DH)`;
//! the forget gate has no effect. Row-wise, so it runs inside dynamic-rows sections.
//!
//! Shapes (NH heads of dim DH, Di = NH * DH): `qkv` a (rows, 3 Di) view `[q | k | v]`;
//! `igate` a (rows, NH) view of input-gate pre-activations; `h` a (rows, Di) view.

use bytemuck::{Pod, Zeroable};

use super::mlstm_cell::EPS;
use super::{distinct, u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    heads: u32,
    head_dim: u32,
    rows: u32,
    per: u32,
    scale: f32,
    eps: f32,
    qkv_offset: u32,
    qkv_stride: u32,
    gate_offset: u32,
    gate_stride: u32,
    h_offset: u32,
    h_stride: u32,
}

/// Records h~ of `heads` heads for every row of `qkv`.
pub fn mlstm_expert(
    ctx: &Context,
    graph: &mut Graph,
    heads: usize,
    qkv: View<'_>,
    igate: View<'_>,
    h: View<'_>,
) -> Result<()> {
    qkv.check("mLSTM expert qkv")?;
    igate.check("mLSTM expert input gates")?;
    h.check("mLSTM expert output")?;
    if heads == 0 || h.cols % heads != 0 {
        return Err(Error::mismatch(
            "mLSTM expert heads",
            format!("a divisor of the {} output columns", h.cols),
            heads,
        ));
    }
    let rows = h.rows;
    for (what, view, cols) in [
        ("mLSTM expert qkv", &qkv, 3 * h.cols),
        ("mLSTM expert input gates", &igate, heads),
    ] {
        if (view.rows, view.cols) != (rows, cols) {
            return Err(Error::mismatch(
                format!("{what} ('{}')", view.tensor.label()),
                format!("{rows} x {cols}"),
                format!("{} x {}", view.rows, view.cols),
            ));
        }
    }
    distinct("mLSTM expert", qkv.tensor, h.tensor)?;
    distinct("mLSTM expert", igate.tensor, h.tensor)?;
    let head_dim = h.cols / heads;
    let per = (64 / heads).max(1);
    let params = Params {
        heads: u32_param("mLSTM expert heads", heads)?,
        head_dim: u32_param("mLSTM expert head dim", head_dim)?,
        rows: u32_param("mLSTM expert rows", rows)?,
        per: per as u32,
        scale: 1.0 / (head_dim as f32).sqrt(),
        eps: EPS,
        qkv_offset: u32_param("qkv offset", qkv.offset)?,
        qkv_stride: u32_param("qkv stride", qkv.stride)?,
        gate_offset: u32_param("gate offset", igate.offset)?,
        gate_stride: u32_param("gate stride", igate.stride)?,
        h_offset: u32_param("output offset", h.offset)?,
        h_stride: u32_param("output stride", h.stride)?,
    };
    // Four elements per access where every head starts on a 16-byte boundary.
    let v4 = head_dim % 4 == 0 && qkv.rows_in_quads() && h.rows_in_quads();
    let pipeline = ctx.pipeline("mlstm_expert", "expert", &[("V4", v4 as u8 as f64)])?;
    let uniform = ctx.uniform("mlstm expert params", &params)?;
    graph.dispatch_rows(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            qkv.binding()?,
            igate.binding()?,
            h.binding()?,
            qkv.binding()?,
            h.binding()?,
        ],
        RowGrid::Y {
            x: (per * heads).div_ceil(64),
            per,
        },
        rows,
    )
}

/// CPU reference (f64): `qkv` (rows, 3 Di), `igate` (rows, NH) -> h~ (rows, Di).
pub fn reference(qkv: &[f32], igate: &[f32], heads: usize) -> Vec<f32> {
    let rows = igate.len() / heads;
    let di = qkv.len() / rows / 3;
    let dh = di / heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut h = vec![0.0; rows * di];
    for r in 0..rows {
        let x = &qkv[r * 3 * di..(r + 1) * 3 * di];
        for hd in 0..heads {
            let at = |p: usize, j: usize| x[p * di + hd * dh + j] as f64;
            let qk = (0..dh).map(|j| at(0, j) * at(1, j)).sum::<f64>() * scale;
            let i = igate[r * heads + hd] as f64;
            let coef = qk / (qk.abs().max((-i).exp()) + EPS as f64);
            for j in 0..dh {
                h[r * di + hd * dh + j] = (coef * at(2, j)) as f32;
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::DynamicRows;
    use crate::testing::{assert_close, gpu, Rng};
    use crate::{DType, Tensor};

    /// Runs the kernel on `qkv` inside a wider buffer and gates at an offset; returns h~.
    fn run(qkv: &[f32], igate: &[f32], heads: usize, count: Option<u32>) -> Vec<f32> {
        let ctx = gpu();
        let rows = igate.len() / heads;
        let w = qkv.len() / rows;
        let qt = Tensor::from_f32(ctx, "qkv", &[rows, w], qkv).unwrap();
        // The gates sit in columns 1.. of rows of NH + 2.
        let gw: Vec<f32> = igate
            .chunks(heads)
            .flat_map(|g| [vec![9.0], g.to_vec(), vec![9.0]].concat())
            .collect();
        let gt = Tensor::from_f32(ctx, "gates", &[rows, heads + 2], &gw).unwrap();
        let ht = Tensor::from_f32(ctx, "h", &[rows, w / 3], &vec![-7.0; rows * w / 3]).unwrap();
        let mut g = Graph::new();
        let counts = count.map(|c| Tensor::from_u32(ctx, "count", &[1], &[c]).unwrap());
        let dynamic = counts
            .as_ref()
            .map(|c| DynamicRows::new(ctx, c, 1).unwrap());
        if let Some(d) = &dynamic {
            d.record_fill(ctx, &mut g).unwrap();
            g.set_dynamic_rows(Some((d, 0)));
        }
        let gv = View::of(&gt).select_cols(1..1 + heads);
        mlstm_expert(ctx, &mut g, heads, View::of(&qt), gv, View::of(&ht)).unwrap();
        g.set_dynamic_rows(None);
        if let Some(d) = &dynamic {
            d.finish().unwrap();
        }
        ctx.run(&[&g]).unwrap();
        ht.to_f32().unwrap()
    }

    #[test]
    fn matches_reference_on_random_shapes() {
        let mut rng = Rng::new(21);
        // (rows, heads, head dim): odd head dims, up to 8 heads, and the paper's 512.
        for &(rows, heads, dh) in &[(1, 1, 5), (3, 2, 12), (37, 8, 7), (3, 4, 130), (2, 4, 512)] {
            let qkv = rng.normal_vec(rows * 3 * heads * dh, 1.0);
            let mut igate = rng.normal_vec(rows * heads, 3.0);
            // Saturated gates: exp(-i) overflows to infinity for i < -88.
            igate[0] = -100.0;
            if igate.len() > 1 {
                igate[1] = 90.0;
            }
            let got = run(&qkv, &igate, heads, None);
            let want = reference(&qkv, &igate, heads);
            let what = format!("expert rows={rows} heads={heads} dh={dh}");
            assert_close(&got, &want, 1e-5, 1e-4, &what);
        }
    }

    #[test]
    fn four_element_accesses_give_the_bits_of_single_ones() {
        // Head dims of multiples of 4 in aligned views take the vec4 path; the same values
        // one column into a wider buffer take the scalar one: the same sums in the same order.
        let ctx = gpu();
        let mut rng = Rng::new(23);
        let (rows, heads, dh) = (5, 4, 64);
        let w = 3 * heads * dh;
        let qkv = rng.normal_vec(rows * w, 1.0);
        let igate = rng.normal_vec(rows * heads, 2.0);
        let aligned = run(&qkv, &igate, heads, None);
        let shifted: Vec<f32> = qkv
            .chunks(w)
            .flat_map(|r| [vec![5.0], r.to_vec()].concat())
            .collect();
        let qt = Tensor::from_f32(ctx, "qkv", &[rows, w + 1], &shifted).unwrap();
        let gt = Tensor::from_f32(ctx, "gates", &[rows, heads], &igate).unwrap();
        let ht = Tensor::zeros(ctx, "h", &[rows, heads * dh], DType::F32).unwrap();
        let mut g = Graph::new();
        let qv = View::of(&qt).select_cols(1..1 + w);
        mlstm_expert(ctx, &mut g, heads, qv, View::of(&gt), View::of(&ht)).unwrap();
        ctx.run(&[&g]).unwrap();
        assert_eq!(ht.to_f32().unwrap(), aligned);
    }

    #[test]
    fn dynamic_rows_compute_only_the_counted_rows() {
        let mut rng = Rng::new(22);
        let (rows, heads, dh) = (40, 3, 6);
        let qkv = rng.normal_vec(rows * 3 * heads * dh, 1.0);
        let igate = rng.normal_vec(rows * heads, 1.0);
        let want = reference(&qkv, &igate, heads);
        let di = heads * dh;
        for count in [0usize, 5, 40] {
            let got = run(&qkv, &igate, heads, Some(count as u32));
            let what = format!("count {count}");
            assert_close(&got[..count * di], &want[..count * di], 1e-5, 1e-4, &what);
            // Workgroups cover 21 rows (64 / 3); rows of groups past the count are untouched.
            let covered = count.div_ceil(21) * 21;
            assert!(
                got[covered.min(rows) * di..].iter().all(|&v| v == -7.0),
                "count {count}: rows past the count were computed"
            );
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let ctx = gpu();
        let qkv = Tensor::zeros(ctx, "qkv", &[2, 12], DType::F32).unwrap();
        let gates = Tensor::zeros(ctx, "gates", &[2, 2], DType::F32).unwrap();
        let h = Tensor::zeros(ctx, "h", &[2, 4], DType::F32).unwrap();
        let mut g = Graph::new();
        let err = mlstm_expert(
            ctx,
            &mut g,
            3,
            View::of(&qkv),
            View::of(&gates),
            View::of(&h),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("divisor of the 4"), "{err}");
        let err = mlstm_expert(
            ctx,
            &mut g,
            2,
            View::of(&qkv).select_cols(0..11),
            View::of(&gates),
            View::of(&h),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expected 2 x 12"), "{err}");
        assert!(g.is_empty());
    }
}
