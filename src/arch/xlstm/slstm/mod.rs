//! The sLSTM block of the xlstm package (MODEL.md section 4), for B sequences at once and as
//! a stateless expert.
//!
//! Stateful form ([`SlstmBlock::record`]), for x (B * N, D) updated in place:
//! ```text
//! xn = LayerNorm(x);  xc = silu(conv(xn)) (xc = xn without a conv)
//! pre = [headwise(fgate, xc) | headwise(igate, xc) | headwise(zgate, xn) | headwise(ogate, xn)]
//!       (one stacked dispatch over [xn | xc])
//! h = sLSTMCell(pre);  x += GroupNorm(h);  x += GatedFFN(LayerNorm_ffn(x))
//! ```
//! (the parameter NAMED fgate drives the input gate and igate the forget gate).
//!
//! Expert form ([`Expert`]): each token is a length-1 sequence with zero state, where the
//! cell reduces to `h = sigmoid(raw_o) * tanh(raw_z)` with `raw = pre + bias`: the input and
//! forget gates, and so the conv that only feeds them, drop out and are not computed.
//! A latent expert's FFN proj_up is factored, `A (B x)` with B shared by its group
//! ([`SlstmBlock::load_expert`]).

use std::sync::Arc;

use super::config::{SlstmConfig, SlstmLayout};
use super::ffn::GatedFfn;
use crate::arch::{Expert, SeqBatch};
use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::conv1d::{conv1d, ConvState};
use crate::ops::elementwise::{binary, Activation, Binary};
use crate::ops::layer_norm::{layer_norm, layer_norm_copying, Norm};
use crate::ops::matmul::{headwise_stacked, Projections};
use crate::ops::slstm_cell::{
    bias_cuda_to_vanilla, check_weight_dtype, slstm_cell, CellState, CellWeights,
};
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::{DType, Tensor};

/// The causal conv of the block: weight (D, K) and bias (D), f32.
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

/// The FFN half of the block.
struct Ffn {
    norm: Tensor,
    ffn: GatedFfn,
}

/// An sLSTM block on the GPU.
pub struct SlstmBlock {
    dim: usize,
    heads: usize,
    conv_kernel: usize,
    norm: Tensor,
    conv: Option<Conv>,
    /// The headwise (NH, DH, DH) weights of fgate, igate, zgate and ogate stacked:
    /// (4 NH, DH, DH), producing the pre-activations in the cell's order.
    gates: Tensor,
    cell: CellWeights,
    /// Cell bias of the z and o gates (2 D), for the expert form.
    bias_zo: Tensor,
    group_norm: Tensor,
    ffn: Option<Ffn>,
}

/// The recurrent state of an sLSTM block for a number of slots.
pub struct SlstmState {
    /// (slots, 4, D) f32: `[h, c, n, m]` of each slot.
    pub cell: Tensor,
    /// (slots, K-1, D) f32: the last K-1 normed inputs of each slot, oldest first; `None`
    /// when the block has no conv or K = 1.
    pub conv: Option<Tensor>,
}

impl SlstmBlock {
    /// Loads a block from `scope` (the package's tensor names relative to the block) with
    /// matrices (the gates, R, the FFN) stored as `dtype` (R in 16 bits when `dtype` is
    /// quantised).
    pub fn load(ctx: &Context, scope: &Scope<'_>, cfg: &SlstmConfig, dtype: DType) -> Result<Self> {
        Self::load_expert(ctx, scope, cfg, dtype, None)
    }

    /// [`SlstmBlock::load`], with `shared` = Some(B (r, D)) for a latent expert: the FFN's
    /// proj_up is then `ffn.proj_up.A` (2P, r) applied to `B x`.
    pub fn load_expert(
        ctx: &Context,
        scope: &Scope<'_>,
        cfg: &SlstmConfig,
        dtype: DType,
        shared: Option<&Arc<Tensor>>,
    ) -> Result<Self> {
        let (d, heads) = (cfg.embedding_dim, cfg.num_heads);
        if heads == 0 || d == 0 || d % heads != 0 {
            return Err(Error::mismatch(
                format!("sLSTM block '{}' heads", scope.name("")),
                format!("a divisor of the embedding dim {d}"),
                heads,
            ));
        }
        let dh = d / heads;
        // The recurrent kernel R is read by the cell kernel itself, in 16 bits at least.
        let r_dtype = dtype.unquantized();
        check_weight_dtype(ctx, &scope.name(""), r_dtype)?;
        let conv = match cfg.conv_kernel {
            0 => None,
            k => {
                let w = scope.f32("xlstm.conv1d.conv.weight", &[d, 1, k])?;
                Some(Conv {
                    weight: Tensor::from_f32(
                        ctx,
                        &scope.name("xlstm.conv1d.conv.weight"),
                        &[d, k],
                        &w,
                    )?,
                    bias: scope.vector(ctx, "xlstm.conv1d.conv.bias", &[d])?,
                })
            }
        };
        let gates = scope.stacked_headwise(
            ctx,
            "xlstm.{f,i,z,o}gate.weight",
            &[
                "xlstm.fgate.weight",
                "xlstm.igate.weight",
                "xlstm.zgate.weight",
                "xlstm.ogate.weight",
            ],
            [heads, dh, dh],
            dtype,
        )?;
        let r_shape = match cfg.layout {
            SlstmLayout::Vanilla => [heads, 4 * dh, dh],
            SlstmLayout::Cuda => [heads, dh, 4 * dh],
        };
        let r = scope.f32("xlstm.slstm_cell._recurrent_kernel_", &r_shape)?;
        let bias = scope.f32("xlstm.slstm_cell._bias_", &[4 * d])?;
        let cell = CellWeights::new(
            ctx,
            &scope.name("xlstm.slstm_cell"),
            heads,
            dh,
            &r,
            &bias,
            cfg.layout,
            r_dtype,
        )?;
        let gate_major = match cfg.layout {
            SlstmLayout::Vanilla => bias,
            SlstmLayout::Cuda => bias_cuda_to_vanilla(&bias, heads, dh),
        };
        let bias_name = scope.name("xlstm.slstm_cell._bias_");
        let ffn = match &cfg.ffn {
            None => None,
            Some(f) => Some(Ffn {
                norm: scope.vector(ctx, "ffn_norm.weight", &[d])?,
                ffn: GatedFfn::load(ctx, &scope.scope("ffn."), f, d, dtype, shared)?,
            }),
        };
        Ok(SlstmBlock {
            dim: d,
            heads,
            conv_kernel: cfg.conv_kernel,
            norm: scope.vector(ctx, "xlstm_norm.weight", &[d])?,
            conv,
            gates,
            cell,
            bias_zo: Tensor::from_f32(ctx, &bias_name, &[2 * d], &gate_major[2 * d..])?,
            group_norm: scope.vector(ctx, "xlstm.group_norm.weight", &[d])?,
            ffn,
        })
    }

    /// Embedding dim D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// A zero state for `slots` sequences.
    pub fn new_state(&self, ctx: &Context, slots: usize) -> Result<SlstmState> {
        let d = self.dim;
        let conv = match self.conv_kernel {
            0 | 1 => None,
            k => Some(Tensor::zeros(
                ctx,
                "sLSTM conv state",
                &[slots, k - 1, d],
                DType::F32,
            )?),
        };
        Ok(SlstmState {
            cell: Tensor::zeros(ctx, "sLSTM cell state", &[slots, 4, d], DType::F32)?,
            conv,
        })
    }

    /// Records the block over `batch` (B sequences of N tokens) in one graph segment,
    /// starting from and updating each sequence's slot of `state`; `batch.x` (B * N, D) is
    /// updated in place.
    pub fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        batch: &SeqBatch<'_>,
        state: &SlstmState,
    ) -> Result<()> {
        let d = self.dim;
        let rows = batch.seqs * batch.tokens;
        let x = View::of(batch.x);
        if (x.rows, x.cols) != (rows, d) {
            return Err(Error::mismatch(
                format!("sLSTM block input '{}'", batch.x.label()),
                format!("({} sequences x {} tokens, {d})", batch.seqs, batch.tokens),
                format!("{:?}", batch.x.shape()),
            ));
        }
        let scratch = batch.scratch;
        let buf = |name: &'static str, cols: usize| scratch.get(name, cols);
        let (xn_buf, xnc_buf, pre_buf, h_buf) = (
            buf("slstm.xn", d)?,
            buf("slstm.xnc", 2 * d)?,
            buf("slstm.pre", 4 * d)?,
            buf("slstm.h", d)?,
        );
        let (xn, pre, h) = (
            first_rows(&xn_buf, rows),
            first_rows(&pre_buf, rows),
            first_rows(&h_buf, rows),
        );
        layer_norm(ctx, graph, &Norm::xlstm(&self.norm), x, xn, 0.0)?;
        // The gates read xc (i, f) and xn (z, o) in one dispatch: the conv writes
        // [xn | xc] side by side.
        let (gate_in, xc_col) = match &self.conv {
            None => (xn, 0),
            Some(conv) => {
                let xnc = first_rows(&xnc_buf, rows);
                // A kernel of 1 has no history.
                let conv_state = match (&state.conv, self.conv_kernel) {
                    (_, 1) => None,
                    (Some(s), _) => Some(ConvState {
                        state: s,
                        slots: batch.slots,
                    }),
                    (None, k) => {
                        return Err(Error::InvalidArgument(format!(
                            "sLSTM state without a conv state for a block with conv kernel {k}"
                        )))
                    }
                };
                conv1d(
                    ctx,
                    graph,
                    &conv.weight,
                    Some(&conv.bias),
                    xn,
                    xnc.select_cols(d..2 * d),
                    Some(xnc.select_cols(0..d)),
                    batch.seqs,
                    conv_state,
                    Activation::Silu,
                )?;
                (xnc, d)
            }
        };
        let parts = Projections {
            parts: 4,
            first: 0,
            sources: &[xc_col, xc_col, 0, 0],
        };
        headwise_stacked(ctx, graph, &self.gates, &parts, None, gate_in, pre, 0.0)?;
        let cell_state = CellState {
            state: &state.cell,
            slots: batch.slots,
        };
        slstm_cell(ctx, graph, &self.cell, pre, h, batch.seqs, cell_state)?;
        let group_norm = Norm::xlstm_heads(&self.group_norm, self.heads);
        layer_norm(ctx, graph, &group_norm, h, x, 1.0)?;
        self.record_ffn(ctx, graph, x, xn, scratch)
    }

    /// `x += ffn(LayerNorm_ffn(x))`, using `xn` (rows of x) as the normed input.
    fn record_ffn(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        x: View<'_>,
        xn: View<'_>,
        scratch: &Scratch,
    ) -> Result<()> {
        let Some(ffn) = &self.ffn else {
            return Ok(());
        };
        layer_norm(ctx, graph, &Norm::xlstm(&ffn.norm), x, xn, 0.0)?;
        ffn.ffn.record(ctx, graph, xn, x, 1.0, scratch)
    }
}

/// The first `rows` rows of a scratch buffer.
fn first_rows(t: &Tensor, rows: usize) -> View<'_> {
    View::of(t).select_rows(0..rows)
}

impl Expert for SlstmBlock {
    fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        input: View<'_>,
        output: View<'_>,
        scratch: &Scratch,
    ) -> Result<()> {
        let d = self.dim;
        if input.cols != d || (output.rows, output.cols) != (input.rows, d) {
            return Err(Error::mismatch(
                "sLSTM expert input/output",
                format!("(rows, {d}) views of equal rows"),
                format!(
                    "{}x{} and {}x{}",
                    input.rows, input.cols, output.rows, output.cols
                ),
            ));
        }
        let rows = input.rows;
        let (xn_buf, zo_buf, h_buf) = (
            scratch.get("slstm.xn", d)?,
            scratch.get("slstm.pre", 2 * d)?,
            scratch.get("slstm.h", d)?,
        );
        let (xn, zo, h) = (
            first_rows(&xn_buf, rows),
            first_rows(&zo_buf, rows),
            first_rows(&h_buf, rows),
        );
        let (z, o) = (zo.select_cols(0..d), zo.select_cols(d..2 * d));
        // output = input + GroupNorm(h): the norm of the input also copies it to output.
        layer_norm_copying(ctx, graph, &Norm::xlstm(&self.norm), input, xn, output)?;
        // zgate and ogate, the stack's last two projections.
        let parts = Projections {
            parts: 4,
            first: 2,
            sources: &[0, 0],
        };
        let bias = Some(&self.bias_zo);
        headwise_stacked(ctx, graph, &self.gates, &parts, bias, xn, zo, 0.0)?;
        binary(
            ctx,
            graph,
            Binary::Gate(Activation::Sigmoid, Activation::Tanh),
            o,
            z,
            h,
        )?;
        let group_norm = Norm::xlstm_heads(&self.group_norm, self.heads);
        layer_norm(ctx, graph, &group_norm, h, output, 1.0)?;
        self.record_ffn(ctx, graph, output, xn, scratch)
    }
}

#[cfg(test)]
mod tests;
