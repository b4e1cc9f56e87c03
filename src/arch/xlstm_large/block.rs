//! One xLSTM-Large block (XLSTM_LARGE.md) on the GPU, recorded for B sequences of N tokens:
//!
//! ```text
//! a = RMSNorm_mlstm(x)                                        (rows, D)
//! p = a [Wq; Wk; Wv; Wo; Wi; Wf]^T + b                        (rows, 2 Dqk + 2 Dv + 2 NH)
//! h = cell(q, k, v, softcap(i), softcap(f))                   (rows, Dv); state C, n, m
//! x += out_proj( sigmoid(o) * MultiHeadLayerNorm(h) )
//! b = RMSNorm_ffn(x)
//! x += proj_down( silu(b Wg^T) * (b Wu^T) )                   SwiGLU of width F
//! ```
//! The six input projections are one matrix (rows stacked at load, from single or fused
//! weights) and one matmul; the gates' soft cap is applied inside the cell kernel, the
//! output gate inside the multi-head norm, and the SwiGLU inside the down-projection's
//! loads: eight dispatches per block at decode (nine with the tiled cell of GPUs). Every
//! matrix is stored in the load dtype (f32, f16 or bf16); vectors and the state are f32.

use super::config::{LargeConfig, WeightMode};
use crate::arch::projection::Projection;
use crate::arch::xlstm::ffn::GatedFfn;
use crate::arch::SeqBatch;
use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::elementwise::Activation;
use crate::ops::layer_norm::{layer_norm, layer_norm_gated, Norm};
use crate::ops::matmul::matmul;
use crate::ops::mlstm_cell::{self, CellInputs, CellKernel, CellState};
use crate::ops::View;
use crate::tensor::{DType, Tensor};

/// A norm's weight and optional bias.
struct NormWeights {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl NormWeights {
    /// `{name}.weight` and, with `bias`, `{name}.bias` (both (n)).
    fn load(ctx: &Context, s: &Scope<'_>, name: &str, n: usize, bias: bool) -> Result<Self> {
        Ok(NormWeights {
            weight: s.vector(ctx, &format!("{name}.weight"), &[n])?,
            bias: bias
                .then(|| s.vector(ctx, &format!("{name}.bias"), &[n]))
                .transpose()?,
        })
    }

    /// RMSNorm over the whole row.
    fn rms(&self, eps: f32) -> Norm<'_> {
        Norm::rms(&self.weight, self.bias.as_ref(), eps)
    }
}

/// An xLSTM-Large block's weights and the state of every sequence slot.
pub(crate) struct LargeBlock {
    cfg: LargeConfig,
    dim: usize,
    norm_mlstm: NormWeights,
    /// [q | k | v | o | i | f] rows (2 Dqk + 2 Dv + 2 NH, D).
    proj: Tensor,
    /// Biases of `proj` (zeros where a projection has none).
    proj_bias: Tensor,
    multihead_norm: NormWeights,
    out_proj: Tensor,
    out_proj_bias: Option<Tensor>,
    norm_ffn: NormWeights,
    ffn: GatedFfn,
    state: CellState,
}

impl LargeBlock {
    /// Loads block `s` (`backbone.blocks.{i}.`) with state for `slots` sequences.
    pub(crate) fn load(
        ctx: &Context,
        cfg: &LargeConfig,
        dim: usize,
        s: &Scope<'_>,
        dtype: DType,
        slots: usize,
    ) -> Result<Self> {
        let (d, nh, qk, v, f) = (dim, cfg.num_heads, cfg.qk_dim, cfg.v_dim, cfg.ffn_dim);
        let bias = cfg.use_bias;
        let m = s.scope("mlstm_layer.");
        let rows = 2 * qk + 2 * v + 2 * nh;
        let (proj, proj_bias) = match cfg.weight_mode {
            WeightMode::Single => {
                let [q, k, vv] = cfg.naming.qkv.map(String::from);
                let names = [
                    (q, qk),
                    (k, qk),
                    (vv, v),
                    ("ogate_preact".to_string(), v),
                    ("igate_preact".to_string(), nh),
                    ("fgate_preact".to_string(), nh),
                ];
                let weights: Vec<(String, usize)> = names
                    .iter()
                    .map(|(n, r)| (format!("{n}.weight"), *r))
                    .collect();
                let parts: Vec<(&str, usize)> =
                    weights.iter().map(|(n, r)| (n.as_str(), *r)).collect();
                let biases: Vec<(String, usize)> = names
                    .iter()
                    .map(|(n, r)| (format!("{n}.bias"), *r))
                    .collect();
                let bias_parts: Vec<(Option<&str>, usize)> = biases
                    .iter()
                    .enumerate()
                    .map(|(i, (n, r))| ((bias || i >= 4).then_some(n.as_str()), *r))
                    .collect();
                (
                    m.stacked_matrix(ctx, "{q,k,v,o,i,f}.weight", &parts, d, dtype)?,
                    m.vectors(ctx, "{q,k,v,o,i,f}.bias", &bias_parts)?,
                )
            }
            WeightMode::Fused => (
                m.stacked_matrix(
                    ctx,
                    "{qkv_opreact,ifgate_preact}.weight",
                    &[
                        ("qkv_opreact.weight", 2 * qk + 2 * v),
                        ("ifgate_preact.weight", 2 * nh),
                    ],
                    d,
                    dtype,
                )?,
                m.vectors(
                    ctx,
                    "{qkv_opreact,ifgate_preact}.bias",
                    &[
                        (bias.then_some("qkv_opreact.bias"), 2 * qk + 2 * v),
                        (Some("ifgate_preact.bias"), 2 * nh),
                    ],
                )?,
            ),
        };
        debug_assert_eq!(proj.rows(), rows);
        let ffn_up = match cfg.weight_mode {
            WeightMode::Single => {
                let up = s.stacked_matrix(
                    ctx,
                    "ffn.{proj_up_gate,proj_up}.weight",
                    &[("ffn.proj_up_gate.weight", f), ("ffn.proj_up.weight", f)],
                    d,
                    dtype,
                )?;
                let up_bias = bias
                    .then(|| {
                        s.vectors(
                            ctx,
                            "ffn.{proj_up_gate,proj_up}.bias",
                            &[
                                (Some("ffn.proj_up_gate.bias"), f),
                                (Some("ffn.proj_up.bias"), f),
                            ],
                        )
                    })
                    .transpose()?;
                Projection::dense(up, up_bias)
            }
            WeightMode::Fused => Projection::load(
                ctx,
                &s.scope("ffn."),
                "proj_up_gate_z",
                2 * f,
                d,
                bias,
                dtype,
                None,
            )?,
        };
        let down = s.matrix(ctx, "ffn.proj_down.weight", &[d, f], dtype)?;
        let down_bias = bias
            .then(|| s.vector(ctx, "ffn.proj_down.bias", &[d]))
            .transpose()?;
        Ok(LargeBlock {
            cfg: cfg.clone(),
            dim,
            norm_mlstm: NormWeights::load(ctx, s, "norm_mlstm", d, bias)?,
            proj,
            proj_bias,
            multihead_norm: NormWeights::load(ctx, &m, "multihead_norm", v, bias)?,
            out_proj: m.matrix(ctx, "out_proj.weight", &[d, v], dtype)?,
            out_proj_bias: bias
                .then(|| m.vector(ctx, "out_proj.bias", &[d]))
                .transpose()?,
            norm_ffn: NormWeights::load(ctx, s, "norm_ffn", d, bias)?,
            ffn: GatedFfn::new(ffn_up, down, down_bias, Activation::Silu, f),
            state: CellState::new(ctx, slots, nh, cfg.qk_head_dim(), cfg.v_head_dim())?,
        })
    }

    /// The state tensors (C, n, m), each with the slot as its first dimension.
    pub(crate) fn state_tensors(&self) -> Vec<&Tensor> {
        vec![&self.state.c, &self.state.n, &self.state.m]
    }

    /// Records the block over `batch`: `batch.x += block(x)`, continuing each sequence's
    /// state.
    pub(crate) fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        batch: &SeqBatch<'_>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (d, nh, qk, v) = (self.dim, cfg.num_heads, cfg.qk_dim, cfg.v_dim);
        let rows = batch.seqs * batch.tokens;
        let scratch = batch.scratch;
        fn view(t: &Tensor, rows: usize) -> View<'_> {
            View::of(t).select_rows(0..rows)
        }
        let a_buf = scratch.get("large.a", d)?;
        let p_buf = scratch.get("large.proj", 2 * qk + 2 * v + 2 * nh)?;
        let h_buf = scratch.get("large.h", v)?;
        let hn_buf = scratch.get("large.hn", v)?;
        let (a, p) = (view(&a_buf, rows), view(&p_buf, rows));
        let (h, hn) = (view(&h_buf, rows), view(&hn_buf, rows));
        let x = View::of(batch.x);

        layer_norm(ctx, graph, &self.norm_mlstm.rms(cfg.norm_eps), x, a, 0.0)?;
        matmul(ctx, graph, &self.proj, Some(&self.proj_bias), a, p, 0.0)?;
        let inputs = CellInputs {
            qkv: p.select_cols(0..2 * qk + v),
            gates: p.select_cols(2 * qk + 2 * v..2 * qk + 2 * v + 2 * nh),
            gate_cap: cfg.gate_soft_cap.unwrap_or(0.0),
            eps: cfg.eps,
        };
        let kernel = CellKernel::choose(ctx, batch.tokens, cfg.qk_head_dim().max(cfg.v_head_dim()));
        mlstm_cell::record(
            ctx,
            graph,
            kernel,
            &inputs,
            h,
            &self.state,
            batch.slots,
            batch.seqs,
            batch.tokens,
        )?;
        let mhln = Norm::heads(
            &self.multihead_norm.weight,
            self.multihead_norm.bias.as_ref(),
            nh,
            cfg.norm_eps,
        );
        // hn = MultiHeadNorm(h) * sigmoid(o), one dispatch.
        let o = p.select_cols(2 * qk + v..2 * qk + 2 * v);
        layer_norm_gated(ctx, graph, &mhln, h, hn, o)?;
        matmul(
            ctx,
            graph,
            &self.out_proj,
            self.out_proj_bias.as_ref(),
            hn,
            x,
            1.0,
        )?;

        layer_norm(ctx, graph, &self.norm_ffn.rms(cfg.norm_eps), x, a, 0.0)?;
        self.ffn.record(ctx, graph, a, x, 1.0, scratch)
    }
}
