//! The SwiGLU MLP expert (`expert_type` "mlp", MODEL.md section 6):
//! `y = w2(silu(w1 x) * (w3 x))`, no bias, no residual.
//!
//! Shapes: w1, w3 (H, D), w2 (D, H) with H = 2 D in MoxE checkpoints (any H is accepted);
//! tensor names `layers.{l}.experts.{e}.w{1,2,3}.weight`. w1 and w3 are stacked into one
//! (2 H, D) matrix so the expert runs as two dispatches: one matmul to (rows, 2 H), and the
//! down projection reading it through the gated activation
//! ([`matmul_gated`](crate::ops::matmul::matmul_gated)).

use crate::arch::Expert;
use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::elementwise::{Activation, Binary};
use crate::ops::matmul::{matmul, matmul_gated};
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::{DType, HostData, Tensor};

/// A SwiGLU expert on the GPU.
pub struct MlpExpert {
    /// [w1; w3] (2 H, D).
    w13: Tensor,
    /// (D, H).
    w2: Tensor,
    dim: usize,
    hidden: usize,
}

impl MlpExpert {
    /// Loads `w1.weight`, `w2.weight`, `w3.weight` under `scope` (e.g.
    /// `"layers.0.experts.3."`) for embedding dim `d`, stored as `dtype` (f32 or f16).
    pub fn load(ctx: &Context, scope: &Scope<'_>, d: usize, dtype: DType) -> Result<Self> {
        let hidden = match scope.shape("w1.weight") {
            Some(&[h, _]) => h,
            Some(other) => {
                return Err(Error::file(
                    scope.weights().path(),
                    format!(
                        "tensor '{}': expected shape [hidden, {d}], found {other:?}",
                        scope.name("w1.weight")
                    ),
                ))
            }
            None => {
                return Err(Error::file(
                    scope.weights().path(),
                    format!("missing tensor '{}'", scope.name("w1.weight")),
                ))
            }
        };
        Ok(MlpExpert {
            w13: scope.stacked_matrix(
                ctx,
                "w1|w3",
                &[("w1.weight", hidden), ("w3.weight", hidden)],
                d,
                dtype,
            )?,
            w2: scope.matrix(ctx, "w2.weight", &[d, hidden], dtype)?,
            dim: d,
            hidden,
        })
    }

    /// An expert from host weights: w1, w3 (H, D) and w2 (D, H), row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn from_host(
        ctx: &Context,
        label: &str,
        d: usize,
        hidden: usize,
        w1: &[f32],
        w2: &[f32],
        w3: &[f32],
        dtype: DType,
    ) -> Result<Self> {
        if d == 0 || hidden == 0 {
            return Err(Error::InvalidArgument(format!(
                "MLP expert '{label}' needs positive dims, got D = {d}, H = {hidden}"
            )));
        }
        for (name, w, want) in [
            ("w1", w1, hidden * d),
            ("w2", w2, d * hidden),
            ("w3", w3, hidden * d),
        ] {
            if w.len() != want {
                return Err(Error::mismatch(
                    format!("MLP expert '{label}' {name} elements"),
                    want,
                    w.len(),
                ));
            }
        }
        let w13: Vec<f32> = w1.iter().chain(w3).copied().collect();
        Ok(MlpExpert {
            w13: Tensor::weight(
                ctx,
                &format!("{label}w1|w3"),
                &[2 * hidden, d],
                dtype,
                HostData::F32(&w13),
            )?,
            w2: Tensor::weight(
                ctx,
                &format!("{label}w2"),
                &[d, hidden],
                dtype,
                HostData::F32(w2),
            )?,
            dim: d,
            hidden,
        })
    }

    /// D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// H.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
}

impl Expert for MlpExpert {
    fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        input: View<'_>,
        output: View<'_>,
        scratch: &Scratch,
    ) -> Result<()> {
        let w13 = &self.w13;
        record_swiglu(
            ctx,
            graph,
            scratch,
            "the MLP expert",
            &self.w2,
            output,
            input.rows,
            |graph, up| matmul(ctx, graph, w13, None, input, up, 0.0),
        )
    }
}

/// Records the SwiGLU tail `output = w2 (silu(up[:, ..H]) * up[:, H..])` of an expert over
/// `rows` rows, after `fill_up` records what writes `up` (rows, 2H) = [w1 x | w3 x] into
/// scratch. H = w2's columns. `what` names the expert in errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_swiglu(
    ctx: &Context,
    graph: &mut Graph,
    scratch: &Scratch,
    what: &str,
    w2: &Tensor,
    output: View<'_>,
    rows: usize,
    fill_up: impl FnOnce(&mut Graph, View<'_>) -> Result<()>,
) -> Result<()> {
    let h = w2.cols();
    if scratch.rows() < rows {
        return Err(Error::mismatch(
            format!("scratch rows for {what}"),
            format!("at least {rows}"),
            scratch.rows(),
        ));
    }
    let up = scratch.get("mlp_expert.up", 2 * h)?;
    let up = View::of(&up).select_rows(0..rows);
    fill_up(graph, up)?;
    matmul_gated(ctx, graph, w2, None, Activation::Silu, up, output, 0.0)
}

/// The E SwiGLU experts of a layer: `experts.{e}.` under `layer` (e.g. `"layers.0."`).
pub fn mlp_experts(
    ctx: &Context,
    layer: &Scope<'_>,
    experts: usize,
    d: usize,
    dtype: DType,
) -> Result<Vec<Box<dyn Expert>>> {
    (0..experts)
        .map(|e| {
            let expert = MlpExpert::load(ctx, &layer.scope(&format!("experts.{e}.")), d, dtype)?;
            Ok(Box::new(expert) as Box<dyn Expert>)
        })
        .collect()
}

/// CPU reference (f64 accumulation): x (N, D) -> (N, D).
pub fn reference(w1: &[f32], w2: &[f32], w3: &[f32], d: usize, x: &[f32]) -> Vec<f32> {
    let hidden = w1.len() / d;
    let a = crate::ops::matmul::reference(w1, d, x, None);
    let b = crate::ops::matmul::reference(w3, d, x, None);
    let g: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(&a, &b)| Binary::Glu(Activation::Silu).apply(a, b))
        .collect();
    crate::ops::matmul::reference(w2, hidden, &g, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Weights;
    use crate::testing::{assert_close, assert_close_rel_max, gpu, round_f16, Rng};

    fn run(expert: &MlpExpert, x: &[f32], rows: usize) -> Vec<f32> {
        let ctx = gpu();
        let d = expert.dim();
        let xt = Tensor::from_f32(ctx, "x", &[rows, d], x).unwrap();
        let yt = Tensor::zeros(ctx, "y", &[rows, d], DType::F32).unwrap();
        let scratch = Scratch::new(ctx, rows + 3);
        let mut g = Graph::new();
        expert
            .record(ctx, &mut g, View::of(&xt), View::of(&yt), &scratch)
            .unwrap();
        ctx.run(&[&g]).unwrap();
        yt.to_f32().unwrap()
    }

    #[test]
    fn matches_reference_in_f32_and_f16() {
        let ctx = gpu();
        let mut rng = Rng::new(8);
        for (d, h, rows) in [(13, 26, 1), (37, 74, 9), (8, 5, 4)] {
            let w1 = rng.normal_vec(h * d, 1.0 / (d as f32).sqrt());
            let w2 = rng.normal_vec(d * h, 1.0 / (h as f32).sqrt());
            let w3 = rng.normal_vec(h * d, 1.0 / (d as f32).sqrt());
            let x = rng.normal_vec(rows * d, 1.0);
            for dtype in [DType::F32, DType::F16] {
                let e = MlpExpert::from_host(ctx, "e.", d, h, &w1, &w2, &w3, dtype).unwrap();
                let r = |w: &[f32]| {
                    if dtype == DType::F16 {
                        round_f16(w)
                    } else {
                        w.to_vec()
                    }
                };
                let want = reference(&r(&w1), &r(&w2), &r(&w3), d, &x);
                let what = format!("D={d} H={h} rows={rows} {dtype}");
                assert_close(&run(&e, &x, rows), &want, 2e-5, 2e-5, &what);
            }
        }
    }

    #[test]
    fn matches_the_swiglu_fixture() {
        let ctx = gpu();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ops/swiglu.safetensors");
        let w = Weights::open(&path).unwrap();
        let e = MlpExpert::load(ctx, &w.scope("param."), 30, DType::F32).unwrap();
        assert_eq!(e.hidden(), 60);
        let (x, _) = w.f32_any("in.x").unwrap();
        let want = w.f32("out.y", &[21, 30]).unwrap();
        assert_close_rel_max(&run(&e, &x, 21), &want, 1e-5, "swiglu fixture");
    }

    #[test]
    fn bad_weights_and_scratch_are_typed_errors() {
        let ctx = gpu();
        let err = MlpExpert::from_host(
            ctx,
            "e.",
            4,
            8,
            &[0.0; 32],
            &[0.0; 31],
            &[0.0; 32],
            DType::F32,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("w2 elements"), "{err}");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ops/swiglu.safetensors");
        let w = Weights::open(&path).unwrap();
        let err = MlpExpert::load(ctx, &w.scope("param."), 31, DType::F32)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("w1.weight") && err.contains("[60, 31]"),
            "{err}"
        );
        let err = MlpExpert::load(ctx, &w.scope("nothing."), 30, DType::F32)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing tensor 'nothing.w1.weight'"), "{err}");
        let e = MlpExpert::load(ctx, &w.scope("param."), 30, DType::F32).unwrap();
        let x = Tensor::zeros(ctx, "x", &[4, 30], DType::F32).unwrap();
        let err = e
            .record(
                ctx,
                &mut Graph::new(),
                View::of(&x),
                View::of(&x),
                &Scratch::new(ctx, 2),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("scratch rows"), "{err}");
    }
}
