//! Elementwise activations and binary ops over strided views. Kernel:
//! `shaders/elementwise.wgsl`.
//!
//! Shapes: every view is (rows, cols) and all views of one call have the same shape.

use bytemuck::{Pod, Zeroable};

use super::{distinct, u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid};

/// An activation function (the `act_fn` names of the xlstm package are accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// x * sigmoid(x) ("swish" in the xlstm package).
    Silu,
    /// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)).
    Gelu,
    Relu,
    /// relu(x)^2.
    Relu2,
    Sigmoid,
    Selu,
    Tanh,
}

impl Activation {
    /// Parses an xlstm `act_fn` name: gelu, relu, relu^2, sigmoid, swish/silu, selu.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "identity" | "linear" => Activation::Identity,
            "swish" | "silu" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            "relu^2" => Activation::Relu2,
            "sigmoid" => Activation::Sigmoid,
            "selu" => Activation::Selu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown activation '{other}': expected one of gelu, relu, relu^2, sigmoid, \
                     swish, selu"
                )))
            }
        })
    }

    /// The `ACT` override value of the shader.
    pub(crate) fn code(self) -> f64 {
        match self {
            Activation::Identity => 0.0,
            Activation::Silu => 1.0,
            Activation::Gelu => 2.0,
            Activation::Relu => 3.0,
            Activation::Relu2 => 4.0,
            Activation::Sigmoid => 5.0,
            Activation::Selu => 6.0,
            Activation::Tanh => 7.0,
        }
    }

    /// CPU reference of the activation (computed in f64).
    pub fn apply(self, x: f32) -> f32 {
        let x = x as f64;
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        (match self {
            Activation::Identity => x,
            Activation::Silu => x * sigmoid(x),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::Relu => x.max(0.0),
            Activation::Relu2 => x.max(0.0).powi(2),
            Activation::Sigmoid => sigmoid(x),
            Activation::Selu => {
                let (alpha, scale) = (1.673_263_242_354_377_2, 1.050_700_987_355_480_5);
                scale * if x > 0.0 { x } else { alpha * x.exp_m1() }
            }
            Activation::Tanh => x.tanh(),
        }) as f32
    }
}

/// A binary elementwise operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// a + b
    Add,
    /// a * b
    Mul,
    /// act(a) * b (gated linear unit)
    Glu(Activation),
    /// f(a) * g(b), e.g. the stateless sLSTM cell's sigmoid(o) * tanh(z)
    Gate(Activation, Activation),
}

impl Binary {
    /// CPU reference.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Mul => a * b,
            Binary::Glu(act) => act.apply(a) * b,
            Binary::Gate(f, g) => f.apply(a) * g.apply(b),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    a_stride: u32,
    a_offset: u32,
    b_stride: u32,
    b_offset: u32,
    y_stride: u32,
    y_offset: u32,
}

fn same_shape(what: &str, a: &View<'_>, b: &View<'_>) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(Error::mismatch(
            format!("{what} ('{}' vs '{}')", a.tensor.label(), b.tensor.label()),
            format!("{} x {}", a.rows, a.cols),
            format!("{} x {}", b.rows, b.cols),
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    graph: &mut Graph,
    entry: &'static str,
    constants: &[(&'static str, f64)],
    a: View<'_>,
    b: View<'_>,
    y: View<'_>,
) -> Result<()> {
    if y.cols == 0 {
        return Ok(());
    }
    let params = Params {
        rows: u32_param("rows", y.rows)?,
        cols: u32_param("cols", y.cols)?,
        a_stride: u32_param("stride", a.stride)?,
        a_offset: u32_param("offset", a.offset)?,
        b_stride: u32_param("stride", b.stride)?,
        b_offset: u32_param("offset", b.offset)?,
        y_stride: u32_param("stride", y.stride)?,
        y_offset: u32_param("offset", y.offset)?,
    };
    let pipeline = ctx.pipeline("elementwise", entry, constants)?;
    let uniform = ctx.uniform("elementwise params", &params)?;
    graph.dispatch_rows(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            a.binding()?,
            b.binding()?,
            y.binding()?,
        ],
        RowGrid::YZ {
            x: y.cols.div_ceil(64),
        },
        y.rows,
    )
}

/// Records `y = act(a)`.
pub fn unary(
    ctx: &Context,
    graph: &mut Graph,
    act: Activation,
    a: View<'_>,
    y: View<'_>,
) -> Result<()> {
    a.check("activation input")?;
    y.check("activation output")?;
    same_shape("activation output shape", &a, &y)?;
    distinct("activation", a.tensor, y.tensor)?;
    record(ctx, graph, "unary", &[("ACT", act.code())], a, a, y)
}

/// Records `y = op(a, b)`.
pub fn binary(
    ctx: &Context,
    graph: &mut Graph,
    op: Binary,
    a: View<'_>,
    b: View<'_>,
    y: View<'_>,
) -> Result<()> {
    a.check("elementwise input a")?;
    b.check("elementwise input b")?;
    y.check("elementwise output")?;
    same_shape("elementwise input b shape", &a, &b)?;
    same_shape("elementwise output shape", &a, &y)?;
    distinct("elementwise", a.tensor, y.tensor)?;
    distinct("elementwise", b.tensor, y.tensor)?;
    let id = Activation::Identity;
    let (code, act, act_b) = match op {
        Binary::Add => (0.0, id, id),
        Binary::Mul => (1.0, id, id),
        Binary::Glu(act) => (2.0, act, id),
        Binary::Gate(f, g) => (3.0, f, g),
    };
    record(
        ctx,
        graph,
        "binary",
        &[("OP", code), ("ACT", act.code()), ("ACT_B", act_b.code())],
        a,
        b,
        y,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu, Rng};
    use crate::{DType, Tensor};

    const ALL: [Activation; 8] = [
        Activation::Identity,
        Activation::Silu,
        Activation::Gelu,
        Activation::Relu,
        Activation::Relu2,
        Activation::Sigmoid,
        Activation::Selu,
        Activation::Tanh,
    ];

    #[test]
    fn activations_match_reference() {
        let ctx = gpu();
        let (rows, cols) = (3, 1001);
        let mut rng = Rng::new(11);
        // Wide range including large magnitudes where naive formulas overflow.
        let mut a = rng.uniform_vec(rows * cols, -12.0, 12.0);
        a[..6].copy_from_slice(&[-90.0, 90.0, -1e-4, 1e-4, 0.0, -30.0]);
        let at = Tensor::from_f32(ctx, "a", &[rows, cols], &a).unwrap();
        for act in ALL {
            let yt = Tensor::zeros(ctx, "y", &[rows, cols], DType::F32).unwrap();
            let mut g = Graph::new();
            unary(ctx, &mut g, act, View::of(&at), View::of(&yt)).unwrap();
            ctx.run(&[&g]).unwrap();
            let want: Vec<f32> = a.iter().map(|&v| act.apply(v)).collect();
            // GELU must match torch's exact erf form to 1e-6.
            let atol = if act == Activation::Gelu { 1e-6 } else { 2e-6 };
            assert_close(
                &yt.to_f32().unwrap(),
                &want,
                atol,
                2e-6,
                &format!("{act:?}"),
            );
        }
    }

    #[test]
    fn gelu_is_within_1e6_of_exact_on_a_fine_grid() {
        let ctx = gpu();
        let a: Vec<f32> = (0..40001).map(|i| -20.0 + i as f32 * 1e-3).collect();
        let at = Tensor::from_f32(ctx, "a", &[1, a.len()], &a).unwrap();
        let yt = Tensor::zeros(ctx, "y", &[1, a.len()], DType::F32).unwrap();
        let mut g = Graph::new();
        unary(ctx, &mut g, Activation::Gelu, View::of(&at), View::of(&yt)).unwrap();
        ctx.run(&[&g]).unwrap();
        let want: Vec<f32> = a.iter().map(|&v| Activation::Gelu.apply(v)).collect();
        assert_close(&yt.to_f32().unwrap(), &want, 1e-6, 0.0, "gelu grid");
    }

    #[test]
    fn binary_ops_on_views_match_reference() {
        let ctx = gpu();
        let (rows, cols) = (5, 37);
        let mut rng = Rng::new(2);
        // a and b are the two halves of one (rows, 2 * cols) buffer, like a split projection.
        let ab = rng.normal_vec(rows * 2 * cols, 2.0);
        let abt = Tensor::from_f32(ctx, "ab", &[rows, 2 * cols], &ab).unwrap();
        let a = View::of(&abt).select_cols(0..cols);
        let b = View::of(&abt).select_cols(cols..2 * cols);
        for op in [
            Binary::Add,
            Binary::Mul,
            Binary::Glu(Activation::Gelu),
            Binary::Glu(Activation::Silu),
            Binary::Gate(Activation::Sigmoid, Activation::Tanh),
            Binary::Gate(Activation::Identity, Activation::Gelu),
        ] {
            let yt = Tensor::zeros(ctx, "y", &[rows, cols], DType::F32).unwrap();
            let mut g = Graph::new();
            binary(ctx, &mut g, op, a, b, View::of(&yt)).unwrap();
            ctx.run(&[&g]).unwrap();
            let want: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    let (r, c) = (i / cols, i % cols);
                    op.apply(ab[r * 2 * cols + c], ab[r * 2 * cols + cols + c])
                })
                .collect();
            assert_close(&yt.to_f32().unwrap(), &want, 2e-6, 2e-6, &format!("{op:?}"));
        }
    }

    #[test]
    fn many_rows_use_the_third_grid_dimension() {
        // 70,000 rows exceed one grid dimension (65,535).
        let ctx = gpu();
        let rows = 70_000;
        let a: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let at = Tensor::from_f32(ctx, "a", &[rows, 1], &a).unwrap();
        let yt = Tensor::zeros(ctx, "y", &[rows, 1], DType::F32).unwrap();
        let mut g = Graph::new();
        unary(ctx, &mut g, Activation::Relu, View::of(&at), View::of(&yt)).unwrap();
        ctx.run(&[&g]).unwrap();
        assert_eq!(yt.to_f32().unwrap(), a);
    }

    #[test]
    fn unknown_activation_is_a_clear_error() {
        let err = Activation::from_name("mish").unwrap_err().to_string();
        assert!(err.contains("mish") && err.contains("gelu"), "{err}");
    }
}
