//! An input projection `y = beta * y + W x (+ bias)` whose matrix is stored dense or, in a
//! latent (MoLAE) expert, factored as `A B` with B shared by the expert's group
//! (docs/LATENT_FORMAT.md).

use std::sync::Arc;

use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::matmul::matmul;
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::{DType, Tensor};

/// An expert input projection `y = beta * y + W x (+ bias)` with W (out, D) stored dense
/// (`{name}.weight`) or factored (`{name}.A` (out, r) times a shared B (r, D)).
pub struct Projection {
    matrix: Matrix,
    bias: Option<Tensor>,
}

enum Matrix {
    Dense(Tensor),
    Latent { b: Arc<Tensor>, a: Tensor },
}

impl Projection {
    /// A dense projection of the weight `w` (out, D) and its bias (out).
    pub fn dense(w: Tensor, bias: Option<Tensor>) -> Self {
        Projection {
            matrix: Matrix::Dense(w),
            bias,
        }
    }

    /// Loads `{name}.weight` (out, D) — or, with `shared` = Some(B (r, D)), `{name}.A`
    /// (out, r) — and `{name}.bias` (out) when `bias`; matrices stored as `dtype`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ctx: &Context,
        scope: &Scope<'_>,
        name: &str,
        out: usize,
        d: usize,
        bias: bool,
        dtype: DType,
        shared: Option<&Arc<Tensor>>,
    ) -> Result<Self> {
        let matrix = match shared {
            None => {
                Matrix::Dense(scope.matrix(ctx, &format!("{name}.weight"), &[out, d], dtype)?)
            }
            Some(b) => {
                if b.cols() != d {
                    return Err(Error::mismatch(
                        format!("shared projection '{}' columns", b.label()),
                        d,
                        b.cols(),
                    ));
                }
                let a = scope.matrix(ctx, &format!("{name}.A"), &[out, b.rows()], dtype)?;
                Matrix::Latent { b: b.clone(), a }
            }
        };
        let bias = match bias {
            true => Some(scope.vector(ctx, &format!("{name}.bias"), &[out])?),
            false => None,
        };
        Ok(Projection { matrix, bias })
    }

    /// Records `y = beta * y + W x (+ bias)` for the rows of `x` (rows, D) into `y`
    /// (rows, out). A factored W runs `h = B x` into the scratch buffer `latent.h` (rows, r),
    /// then `A h`: `scratch` needs at least `x.rows` rows.
    pub fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        x: View<'_>,
        y: View<'_>,
        beta: f32,
        scratch: &Scratch,
    ) -> Result<()> {
        let bias = self.bias.as_ref();
        match &self.matrix {
            Matrix::Dense(w) => matmul(ctx, graph, w, bias, x, y, beta),
            Matrix::Latent { b, a } => {
                if scratch.rows() < x.rows {
                    return Err(Error::mismatch(
                        "scratch rows for a latent projection",
                        format!("at least {}", x.rows),
                        scratch.rows(),
                    ));
                }
                let h = scratch.get("latent.h", b.rows())?;
                let h = View::of(&h).select_rows(0..x.rows);
                matmul(ctx, graph, b, None, x, h, 0.0)?;
                matmul(ctx, graph, a, bias, h, y, beta)
            }
        }
    }
}
