//! LayerNorm, MultiHeadLayerNorm (group norm with one group per head) and RMSNorm. Kernel:
//! `shaders/layer_norm.wgsl`.
//!
//! Shapes: x and y are (rows, cols) views; `group` divides `cols` (group == cols is a
//! LayerNorm); weight and bias are (cols) f32.

use bytemuck::{Pod, Zeroable};

use super::{distinct, u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid};
use crate::tensor::{DType, Tensor};

/// A normalisation's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Norm<'a> {
    /// Per-channel scale (cols), or none for gamma = 1.
    pub weight: Option<&'a Tensor>,
    /// Whether `weight` holds offsets (gamma = 1 + weight), as in the xlstm package.
    pub weight_offset: bool,
    /// Per-channel shift (cols), or none.
    pub bias: Option<&'a Tensor>,
    /// Elements normalised together (cols for LayerNorm, head dim for group norm).
    pub group: usize,
    pub eps: f32,
    /// Subtract the mean (LayerNorm); without, `x / sqrt(mean(x^2) + eps)` (RMSNorm).
    pub center: bool,
}

impl<'a> Norm<'a> {
    /// The xlstm package's LayerNorm: offset weight, no bias, eps 1e-5, over `cols`.
    pub fn xlstm(weight: &'a Tensor) -> Self {
        Norm {
            weight: Some(weight),
            weight_offset: true,
            bias: None,
            group: weight.numel(),
            eps: 1e-5,
            center: true,
        }
    }

    /// The xlstm package's MultiHeadLayerNorm over `heads` groups.
    pub fn xlstm_heads(weight: &'a Tensor, heads: usize) -> Self {
        Norm {
            group: weight.numel() / heads.max(1),
            ..Norm::xlstm(weight)
        }
    }

    /// xLSTM-Large's RMSNorm over the whole row: gamma stored directly, optional bias.
    pub fn rms(weight: &'a Tensor, bias: Option<&'a Tensor>, eps: f32) -> Self {
        Norm {
            weight: Some(weight),
            weight_offset: false,
            bias,
            group: weight.numel(),
            eps,
            center: false,
        }
    }

    /// xLSTM-Large's MultiHeadLayerNorm: LayerNorm over each of `heads` groups, gamma stored
    /// directly, optional bias.
    pub fn heads(weight: &'a Tensor, bias: Option<&'a Tensor>, heads: usize, eps: f32) -> Self {
        Norm {
            group: weight.numel() / heads.max(1),
            center: true,
            ..Norm::rms(weight, bias, eps)
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    group: u32,
    x_stride: u32,
    x_offset: u32,
    y_stride: u32,
    y_offset: u32,
    eps: f32,
    has_weight: u32,
    weight_offset: u32,
    has_bias: u32,
    beta: f32,
    center: u32,
    side: u32,
    side_offset: u32,
    side_stride: u32,
}

/// What a norm does with its side view (the shader's `side`).
#[derive(Clone, Copy)]
enum Side<'a> {
    None,
    /// Receives the input x.
    Copy(View<'a>),
    /// Holds gates o: the output is `norm(x) * sigmoid(o)`.
    Gate(View<'a>),
}

impl<'a> Side<'a> {
    fn view(self) -> Option<View<'a>> {
        match self {
            Side::None => None,
            Side::Copy(v) | Side::Gate(v) => Some(v),
        }
    }

    fn code(self) -> u32 {
        match self {
            Side::None => 0,
            Side::Copy(_) => 1,
            Side::Gate(_) => 2,
        }
    }
}

/// The normalisation kernels (entry points of `layer_norm.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKernel {
    /// One workgroup of 64 per (row, group), reducing in workgroup memory: GPUs.
    Coop,
    /// One workgroup of 8 per (row, group), vec4 reads: CPU adapters.
    Lanes,
}

impl NormKernel {
    /// All kernels (for tests).
    pub const ALL: [NormKernel; 2] = [NormKernel::Coop, NormKernel::Lanes];

    /// The kernel for this adapter.
    pub fn choose(ctx: &Context) -> Self {
        if ctx.cpu_kernels() {
            NormKernel::Lanes
        } else {
            NormKernel::Coop
        }
    }
}

/// Records `y = beta * y + norm(x)`.
pub fn layer_norm(
    ctx: &Context,
    graph: &mut Graph,
    norm: &Norm<'_>,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
) -> Result<()> {
    layer_norm_with(ctx, graph, NormKernel::choose(ctx), norm, x, y, beta)
}

/// Records `y = norm(x)` and `copy = x` in one dispatch (an expert's residual stream starts
/// as its input while the input is normed for the block).
pub fn layer_norm_copying(
    ctx: &Context,
    graph: &mut Graph,
    norm: &Norm<'_>,
    x: View<'_>,
    y: View<'_>,
    copy: View<'_>,
) -> Result<()> {
    let kernel = NormKernel::choose(ctx);
    record(ctx, graph, kernel, norm, x, y, 0.0, Side::Copy(copy))
}

/// Records `y = norm(x) * sigmoid(gate)` in one dispatch (xLSTM-Large's output gate applied
/// to its multi-head norm); `gate` has x's shape.
pub fn layer_norm_gated(
    ctx: &Context,
    graph: &mut Graph,
    norm: &Norm<'_>,
    x: View<'_>,
    y: View<'_>,
    gate: View<'_>,
) -> Result<()> {
    let kernel = NormKernel::choose(ctx);
    record(ctx, graph, kernel, norm, x, y, 0.0, Side::Gate(gate))
}

/// [`layer_norm`] with an explicit kernel.
pub fn layer_norm_with(
    ctx: &Context,
    graph: &mut Graph,
    kernel: NormKernel,
    norm: &Norm<'_>,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
) -> Result<()> {
    record(ctx, graph, kernel, norm, x, y, beta, Side::None)
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    graph: &mut Graph,
    kernel: NormKernel,
    norm: &Norm<'_>,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
    side: Side<'_>,
) -> Result<()> {
    x.check("norm input")?;
    y.check("norm output")?;
    if (x.rows, x.cols) != (y.rows, y.cols) {
        return Err(Error::mismatch(
            "norm output shape",
            format!("{} x {}", x.rows, x.cols),
            format!("{} x {}", y.rows, y.cols),
        ));
    }
    if norm.group == 0 || x.cols % norm.group != 0 {
        return Err(Error::mismatch(
            "norm group size",
            format!("a divisor of {}", x.cols),
            norm.group,
        ));
    }
    for (what, t) in [("norm weight", norm.weight), ("norm bias", norm.bias)] {
        if let Some(t) = t {
            t.expect(what, &[x.cols], DType::F32)?;
        }
    }
    distinct("norm", x.tensor, y.tensor)?;
    let side_name = match side {
        Side::Gate(_) => "norm gate",
        _ => "norm input copy",
    };
    if let Some(c) = side.view() {
        c.check(side_name)?;
        if (c.rows, c.cols) != (x.rows, x.cols) {
            return Err(Error::mismatch(
                format!("{side_name} shape"),
                format!("{} x {}", x.rows, x.cols),
                format!("{} x {}", c.rows, c.cols),
            ));
        }
        distinct(side_name, x.tensor, c.tensor)?;
    }
    let groups = x.cols / norm.group;
    let (entry, groups_x) = match kernel {
        NormKernel::Coop => ("norm_coop", groups),
        NormKernel::Lanes => ("norm_lanes", groups),
    };
    let x4 = x.rows_in_quads() && norm.group % 4 == 0;
    let params = Params {
        rows: u32_param("rows", x.rows)?,
        cols: u32_param("cols", x.cols)?,
        group: u32_param("group", norm.group)?,
        x_stride: u32_param("stride", x.stride)?,
        x_offset: u32_param("offset", x.offset)?,
        y_stride: u32_param("stride", y.stride)?,
        y_offset: u32_param("offset", y.offset)?,
        eps: norm.eps,
        has_weight: norm.weight.is_some() as u32,
        weight_offset: norm.weight_offset as u32,
        has_bias: norm.bias.is_some() as u32,
        beta,
        center: norm.center as u32,
        side: side.code(),
        side_offset: u32_param("offset", side.view().map_or(0, |c| c.offset))?,
        side_stride: u32_param("stride", side.view().map_or(0, |c| c.stride))?,
    };
    let y4 = x4 && y.rows_in_quads() && side.view().is_none_or(|c| c.rows_in_quads());
    let constants = [("X4", x4 as u8 as f64), ("Y4", y4 as u8 as f64)];
    // norm_lanes' eight invocations sum by one subgroupAdd where one subgroup holds them.
    let module = match kernel == NormKernel::Lanes && ctx.subgroup_holds(8) {
        true => "layer_norm_subgroup",
        false => "layer_norm",
    };
    let pipeline = ctx.pipeline(module, entry, &constants)?;
    let uniform = ctx.uniform("norm params", &params)?;
    let weight = norm.weight.map_or(x.tensor, |w| w);
    let bias = norm.bias.map_or(x.tensor, |b| b);
    graph.dispatch_rows(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            x.binding()?,
            weight.binding()?,
            bias.binding()?,
            y.binding()?,
            x.binding()?,
            // Without a side view, y again (never used through this binding).
            side.view().unwrap_or(y).binding()?,
            weight.binding()?,
            bias.binding()?,
            y.binding()?,
            side.view().unwrap_or(y).binding()?,
        ],
        RowGrid::YZ { x: groups_x },
        x.rows,
    )
}

/// CPU reference (f64 statistics): normalise each group of each row of `x` (rows, cols);
/// without `center`, RMSNorm (the mean is taken as 0).
#[allow(clippy::too_many_arguments)]
pub fn reference(
    x: &[f32],
    cols: usize,
    group: usize,
    weight: Option<&[f32]>,
    weight_offset: bool,
    bias: Option<&[f32]>,
    eps: f32,
    center: bool,
) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(cols).zip(y.chunks_mut(cols)) {
        for (g, (xg, yg)) in xr.chunks(group).zip(yr.chunks_mut(group)).enumerate() {
            let n = group as f64;
            let mean = match center {
                true => xg.iter().map(|&v| v as f64).sum::<f64>() / n,
                false => 0.0,
            };
            let var = xg.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for (j, (xv, yv)) in xg.iter().zip(yg.iter_mut()).enumerate() {
                let c = g * group + j;
                let gamma =
                    weight.map_or(1.0, |w| w[c] as f64 + if weight_offset { 1.0 } else { 0.0 });
                let beta = bias.map_or(0.0, |b| b[c] as f64);
                *yv = ((*xv as f64 - mean) * inv * gamma + beta) as f32;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::HostData;
    use crate::testing::{assert_close, gpu, Rng};

    fn check(rows: usize, cols: usize, group: usize, offset: bool, bias: bool, beta: f32) {
        check_norm(rows, cols, group, offset, bias, beta, true);
    }

    fn check_norm(
        rows: usize,
        cols: usize,
        group: usize,
        offset: bool,
        bias: bool,
        beta: f32,
        center: bool,
    ) {
        let ctx = gpu();
        let mut rng = Rng::new((rows * 131 + cols) as u64);
        // A large common offset checks that the variance is computed stably.
        let x: Vec<f32> = rng
            .normal_vec(rows * cols, 3.0)
            .iter()
            .map(|v| v + 50.0)
            .collect();
        let w = rng.normal_vec(cols, 0.3);
        let b = rng.normal_vec(cols, 0.3);
        let y0 = rng.normal_vec(rows * cols, 1.0);
        let xt = Tensor::from_f32(ctx, "x", &[rows, cols], &x).unwrap();
        let wt = Tensor::from_f32(ctx, "w", &[cols], &w).unwrap();
        let bt = Tensor::from_f32(ctx, "b", &[cols], &b).unwrap();
        let yt = Tensor::from_f32(ctx, "y", &[rows, cols], &y0).unwrap();
        let norm = Norm {
            weight: Some(&wt),
            weight_offset: offset,
            bias: bias.then_some(&bt),
            group,
            eps: 1e-5,
            center,
        };
        let mut want = reference(
            &x,
            cols,
            group,
            Some(&w),
            offset,
            bias.then_some(&b[..]),
            1e-5,
            center,
        );
        for (v, o) in want.iter_mut().zip(&y0) {
            *v += beta * o;
        }
        for kernel in NormKernel::ALL {
            yt.write(HostData::F32(&y0)).unwrap();
            let mut g = Graph::new();
            let (x, y) = (View::of(&xt), View::of(&yt));
            layer_norm_with(ctx, &mut g, kernel, &norm, x, y, beta).unwrap();
            ctx.run(&[&g]).unwrap();
            let what =
                format!("norm {kernel:?} rows={rows} cols={cols} group={group} center={center}");
            assert_close(&yt.to_f32().unwrap(), &want, 2e-5, 2e-5, &what);
        }
    }

    #[test]
    fn layer_norm_matches_reference() {
        check(1, 1, 1, true, false, 0.0);
        check(2, 128, 128, true, false, 1.0);
        check(3, 37, 37, true, false, 0.0);
        check(7, 1024, 1024, false, true, 1.0);
        check(2, 130, 130, true, true, 0.0);
    }

    #[test]
    fn norm_copies_its_input_on_every_kernel() {
        let ctx = gpu();
        // Odd and vec4-aligned shapes; the copy lands in a window of a wider buffer.
        for (rows, cols, group) in [(3, 37, 37), (4, 128, 32)] {
            let mut rng = Rng::new(cols as u64);
            let x = rng.normal_vec(rows * cols, 2.0);
            let w = rng.normal_vec(cols, 0.3);
            let xt = Tensor::from_f32(ctx, "x", &[rows, cols], &x).unwrap();
            let wt = Tensor::from_f32(ctx, "w", &[cols], &w).unwrap();
            let want = reference(&x, cols, group, Some(&w), true, None, 1e-5, true);
            for kernel in NormKernel::ALL {
                let yt = Tensor::zeros(ctx, "y", &[rows, cols], DType::F32).unwrap();
                let ct = Tensor::zeros(ctx, "copy", &[rows, cols + 3], DType::F32).unwrap();
                let norm = Norm {
                    group,
                    ..Norm::xlstm(&wt)
                };
                let copy = View::of(&ct).select_cols(2..2 + cols);
                let mut g = Graph::new();
                let (xv, yv) = (View::of(&xt), View::of(&yt));
                record(ctx, &mut g, kernel, &norm, xv, yv, 0.0, Side::Copy(copy)).unwrap();
                ctx.run(&[&g]).unwrap();
                let what = format!("{kernel:?} {rows}x{cols}/{group}");
                assert_close(&yt.to_f32().unwrap(), &want, 2e-5, 2e-5, &what);
                let got = ct.to_f32().unwrap();
                for r in 0..rows {
                    let row = &got[r * (cols + 3)..(r + 1) * (cols + 3)];
                    assert_eq!(
                        &row[2..2 + cols],
                        &x[r * cols..(r + 1) * cols],
                        "{what} copy"
                    );
                    assert_eq!((row[0], row[1], row[cols + 2]), (0.0, 0.0, 0.0), "{what}");
                }
            }
        }
    }

    #[test]
    fn gated_norm_matches_the_norm_times_sigmoid_of_the_gate_on_every_kernel() {
        let ctx = gpu();
        // Heads of an odd width (scalar path) and of a multiple of 4 (vec4 path); the gates
        // are a window of a wider buffer, as xLSTM-Large's o is of its projection.
        for (rows, cols, group, left) in [(3, 21, 7, 1), (2, 64, 16, 4)] {
            let mut rng = Rng::new(cols as u64 + 9);
            let x = rng.normal_vec(rows * cols, 2.0);
            let w = rng.normal_vec(cols, 0.3);
            let b = rng.normal_vec(cols, 0.3);
            let width = left + cols + 2;
            let o = rng.normal_vec(rows * width, 3.0);
            let xt = Tensor::from_f32(ctx, "x", &[rows, cols], &x).unwrap();
            let wt = Tensor::from_f32(ctx, "w", &[cols], &w).unwrap();
            let bt = Tensor::from_f32(ctx, "b", &[cols], &b).unwrap();
            let ot = Tensor::from_f32(ctx, "o", &[rows, width], &o).unwrap();
            let norm = Norm::heads(&wt, Some(&bt), cols / group, 1e-6);
            let normed = reference(&x, cols, group, Some(&w), false, Some(&b), 1e-6, true);
            let sigmoid = crate::ops::elementwise::Activation::Sigmoid;
            let want: Vec<f32> = (0..rows * cols)
                .map(|e| normed[e] * sigmoid.apply(o[(e / cols) * width + left + e % cols]))
                .collect();
            for kernel in NormKernel::ALL {
                let yt = Tensor::zeros(ctx, "y", &[rows, cols], DType::F32).unwrap();
                let gate = View::of(&ot).select_cols(left..left + cols);
                let mut g = Graph::new();
                let (xv, yv) = (View::of(&xt), View::of(&yt));
                record(ctx, &mut g, kernel, &norm, xv, yv, 0.0, Side::Gate(gate)).unwrap();
                ctx.run(&[&g]).unwrap();
                let what = format!("gated {kernel:?} {rows}x{cols}/{group}");
                assert_close(&yt.to_f32().unwrap(), &want, 2e-5, 2e-5, &what);
            }
        }
    }

    #[test]
    fn group_norm_matches_reference() {
        check(3, 36, 9, true, false, 0.0);
        check(5, 44, 11, true, false, 1.0);
        check(2, 1024, 256, true, false, 0.0);
        check(1, 12, 1, true, false, 0.0);
    }

    #[test]
    fn rms_norm_matches_reference() {
        check_norm(3, 37, 37, false, false, 0.0, false);
        check_norm(2, 4096, 4096, false, true, 1.0, false);
        check_norm(5, 130, 130, false, true, 0.0, false);
        check_norm(4, 96, 24, false, true, 0.0, true);
    }

    #[test]
    fn bad_group_is_a_clear_error() {
        let ctx = gpu();
        let x = Tensor::zeros(ctx, "x", &[2, 10], DType::F32).unwrap();
        let y = Tensor::zeros(ctx, "y", &[2, 10], DType::F32).unwrap();
        let norm = Norm {
            weight: None,
            weight_offset: false,
            bias: None,
            group: 3,
            eps: 1e-5,
            center: true,
        };
        let err = layer_norm(
            ctx,
            &mut Graph::new(),
            &norm,
            View::of(&x),
            View::of(&y),
            0.0,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("divisor of 10"), "{err}");
    }
}
