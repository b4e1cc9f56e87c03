//! The gated feed-forward `y = proj_down(act(a) * b)` with `[a | b] = proj_up(x)` (the
//! first P outputs are a): the xlstm package's `GatedFeedForward` (the sLSTM block's FFN)
//! and xLSTM-Large's SwiGLU FFN.
//!
//! Shapes: proj_up (2P, D), proj_down (D, P); x and y (rows, D). The sLSTM block's FFN has
//! no biases (it never passes `xlstm.bias` on); xLSTM-Large's has them with `use_bias`. In a
//! latent sLSTM expert proj_up is factored: `proj_up.A` (2P, r) applied to `B x`, B (r, D)
//! shared by the expert's group.

use std::sync::Arc;

use super::config::FfnConfig;
use crate::arch::projection::Projection;
use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::elementwise::Activation;
use crate::ops::matmul::matmul_gated;
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::{DType, Tensor};

/// A gated feed-forward layer on the GPU.
pub struct GatedFfn {
    up: Projection,
    down: Tensor,
    down_bias: Option<Tensor>,
    act: Activation,
    hidden: usize,
}

impl GatedFfn {
    /// Loads `proj_up.weight` (2P, D) — or `proj_up.A` (2P, r) with `shared` = Some(B (r, D))
    /// — and `proj_down.weight` (D, P) from `scope`, with P from `cfg` for embedding dim
    /// `dim`; matrices stored as `dtype` (f32 or f16).
    pub fn load(
        ctx: &Context,
        scope: &Scope<'_>,
        cfg: &FfnConfig,
        dim: usize,
        dtype: DType,
        shared: Option<&Arc<Tensor>>,
    ) -> Result<Self> {
        let hidden = cfg.hidden(dim);
        let up = Projection::load(ctx, scope, "proj_up", 2 * hidden, dim, false, dtype, shared)?;
        let down = scope.matrix(ctx, "proj_down.weight", &[dim, hidden], dtype)?;
        Ok(GatedFfn::new(up, down, None, cfg.act, hidden))
    }

    /// An FFN of hidden width `hidden` from its parts: `up` (2 hidden outputs), `down`
    /// (D, hidden) and its bias (D).
    pub fn new(
        up: Projection,
        down: Tensor,
        down_bias: Option<Tensor>,
        act: Activation,
        hidden: usize,
    ) -> Self {
        GatedFfn {
            up,
            down,
            down_bias,
            act,
            hidden,
        }
    }

    /// Hidden width P.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Records `y = beta * y + ffn(x)` for the rows of `x` (rows, D); `scratch` has at least
    /// `x.rows` rows (buffer `ffn.up` (2P)). Two dispatches: the up-projection, and the
    /// down-projection reading `act(a) * b` from it ([`matmul_gated`]).
    pub fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        x: View<'_>,
        y: View<'_>,
        beta: f32,
        scratch: &Scratch,
    ) -> Result<()> {
        let up_buf = scratch.get("ffn.up", 2 * self.hidden)?;
        let up = View::of(&up_buf).select_rows(0..x.rows);
        self.up.record(ctx, graph, x, up, 0.0, scratch)?;
        let bias = self.down_bias.as_ref();
        matmul_gated(ctx, graph, &self.down, bias, self.act, up, y, beta)
    }
}

/// CPU reference: `up` (2P, D), `down` (D, P), `x` (rows, D) -> (rows, D).
pub fn reference(up: &[f32], down: &[f32], act: Activation, x: &[f32], dim: usize) -> Vec<f32> {
    let p = up.len() / dim / 2;
    let u = crate::ops::matmul::reference(up, dim, x, None);
    let h: Vec<f32> = u
        .chunks(2 * p)
        .flat_map(|r| (0..p).map(move |i| act.apply(r[i]) * r[p + i]))
        .collect();
    crate::ops::matmul::reference(down, p, &h, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::xlstm::config::UpProjection;
    use crate::checkpoint::Weights;
    use crate::testing::{assert_close, gpu, round_f16};
    use std::path::Path;

    #[test]
    fn matches_the_package_for_every_activation() {
        let ctx = gpu();
        for name in ["gelu", "relu", "relu2", "selu", "sigmoid", "swish"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/fixtures/ops/gated_ffn_{name}.safetensors"));
            let f = Weights::open(&path).unwrap();
            let meta: serde_json::Value = serde_json::from_str(&f.metadata()["config"]).unwrap();
            let cfg = FfnConfig {
                up: UpProjection {
                    factor: meta["proj_factor"].as_f64().unwrap(),
                    round_up: true,
                    multiple: 64,
                },
                act: Activation::from_name(meta["act_fn"].as_str().unwrap()).unwrap(),
            };
            let (x, xs) = f.f32_any("in.x").unwrap();
            let dim = xs[2];
            let rows = x.len() / dim;
            let want = f.f32_any("out.y").unwrap().0;
            let scope = f.scope("param.");
            let up = scope.f32("proj_up.weight", &[128, dim]).unwrap();
            let down = scope.f32("proj_down.weight", &[dim, 64]).unwrap();
            let cpu = reference(&up, &down, cfg.act, &x, dim);
            assert_close(&cpu, &want, 1e-5, 1e-5, &format!("{name} reference"));
            for dtype in [DType::F32, DType::F16] {
                let ffn = GatedFfn::load(ctx, &scope, &cfg, dim, dtype, None).unwrap();
                assert_eq!(ffn.hidden(), meta["up_dim"].as_u64().unwrap() as usize);
                let xt = Tensor::from_f32(ctx, "x", &[rows, dim], &x).unwrap();
                let yt = Tensor::zeros(ctx, "y", &[rows, dim], DType::F32).unwrap();
                let scratch = Scratch::new(ctx, rows + 3);
                let mut g = Graph::new();
                ffn.record(ctx, &mut g, View::of(&xt), View::of(&yt), 0.0, &scratch)
                    .unwrap();
                ctx.run(&[&g]).unwrap();
                let got = yt.to_f32().unwrap();
                let what = format!("gated ffn {name} {dtype}");
                if dtype == DType::F32 {
                    assert_close(&got, &want, 1e-5, 1e-5, &what);
                } else {
                    let cpu16 = reference(&round_f16(&up), &round_f16(&down), cfg.act, &x, dim);
                    assert_close(&got, &cpu16, 2e-5, 2e-5, &what);
                }
            }
        }
    }
}
