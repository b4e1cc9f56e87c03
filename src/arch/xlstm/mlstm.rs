//! The mLSTM block of the xlstm package (MODEL.md section 5), recorded as one graph segment
//! for B sequences of N tokens (prefill with the chunkwise cell, decode with the recurrent
//! one), and as a stateless expert (every token a length-1 sequence with zero state).
//!
//! ```text
//! xn = LayerNorm(x);  [xm | z] = proj_up(xn)            (rows, 2 Di)
//! xc = silu(CausalConv1d(xm))                            per-slot conv state (slots, K-1, Di)
//! q, k = headwise(q_proj | k_proj, xc);  v = headwise(v_proj, xm)      -> qkv (rows, 3 Di)
//!                          (one stacked dispatch over [xm | xc], which the conv writes)
//! [i | f] = [igate; fgate](qkv)                          (rows, 2 NH)
//! h~ = cell(q, k, v, i, f)                               per-slot state C, n, m
//! h  = (MultiHeadLayerNorm(h~) + learnable_skip * xc) * silu(z)
//! x += proj_down(h)                                      in place (beta = 1)
//! ```
//! Every matrix (proj_up, q/k/v, the stacked input/forget gates, proj_down) is stored in
//! the dtype given at load (f32 or f16); vectors (norms, biases, skip, conv) stay f32.
//! A latent expert's proj_up is factored, `A (B x)` with B shared by its group
//! ([`MlstmBlock::load_expert`], [`Projection`]).

use std::sync::Arc;

use crate::arch::projection::Projection;
use crate::arch::xlstm::config::MlstmConfig;
use crate::arch::{Expert, SeqBatch};
use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::conv1d::{conv1d, ConvState};
use crate::ops::elementwise::Activation;
use crate::ops::layer_norm::{layer_norm, layer_norm_copying, Norm};
use crate::ops::matmul::{headwise_stacked, matmul, Projections};
use crate::ops::mlstm_cell::{self, CellInputs, CellKernel, CellState};
use crate::ops::mlstm_expert::mlstm_expert;
use crate::ops::skip_gate::norm_skip_gate;
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::{DType, Tensor};

/// A weight matrix and its optional bias.
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `name.weight` of `shape`, and `name.bias` (`bias_len`) when `bias`.
    fn load(
        ctx: &Context,
        scope: &Scope<'_>,
        name: &str,
        shape: &[usize],
        bias_len: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Self> {
        Ok(Linear {
            weight: scope.matrix(ctx, &format!("{name}.weight"), shape, dtype)?,
            bias: if bias {
                Some(scope.vector(ctx, &format!("{name}.bias"), &[bias_len])?)
            } else {
                None
            },
        })
    }
}

/// The parameters of one mLSTM block on the GPU.
pub struct MlstmBlock {
    cfg: MlstmConfig,
    norm: Tensor,
    proj_up: Projection,
    conv_weight: Tensor,
    conv_bias: Tensor,
    /// q_proj, k_proj and v_proj stacked: (3 Di / bs, bs, bs), biases (3 Di).
    qkv: Linear,
    /// `[igate; fgate]` weights (2 NH, 3 Di) and biases (2 NH).
    gates: Linear,
    outnorm: Tensor,
    skip: Tensor,
    proj_down: Linear,
}

/// The recurrent state of one block: conv history and cell state, one slot per sequence.
pub struct MlstmState {
    /// The last K-1 inputs of the conv, oldest first: (slots, K-1, Di); `None` when K = 1.
    pub conv: Option<Tensor>,
    pub cell: CellState,
}

impl MlstmState {
    /// The state tensors, each with the slot as its first dimension: C (rows padded, see
    /// [`CellState::c`]), n, m and the conv history.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let cell = &self.cell;
        [&cell.c, &cell.n, &cell.m]
            .into_iter()
            .chain(self.conv.as_ref())
            .collect()
    }

    /// Resets slot `slot` to the fresh (zero) state (queued before the next submission).
    pub fn reset(&self, ctx: &Context, slot: usize) -> Result<()> {
        self.cell.reset(ctx, slot)?;
        if let Some(conv) = &self.conv {
            let per_slot = (conv.rows() / self.cell.slots() * conv.stride() * 4) as u64;
            ctx.queue().write_buffer(
                conv.buffer()?,
                slot as u64 * per_slot,
                &vec![0u8; per_slot as usize],
            );
        }
        Ok(())
    }
}

impl MlstmBlock {
    /// Loads the block's tensors from `scope` (the package's names: `xlstm_norm.weight`,
    /// `xlstm.proj_up.weight`, ...), matrices in `dtype` (f32 or f16).
    pub fn load(ctx: &Context, scope: &Scope<'_>, cfg: &MlstmConfig, dtype: DType) -> Result<Self> {
        Self::load_expert(ctx, scope, cfg, dtype, None)
    }

    /// [`MlstmBlock::load`], with `shared` = Some(B (r, D)) for a latent expert: proj_up is
    /// then `xlstm.proj_up.A` (2 Di, r) applied to `B x`.
    pub fn load_expert(
        ctx: &Context,
        scope: &Scope<'_>,
        cfg: &MlstmConfig,
        dtype: DType,
        shared: Option<&Arc<Tensor>>,
    ) -> Result<Self> {
        if dtype == DType::F16 && !ctx.supports_f16_weights() {
            return Err(Error::Limit {
                what: "f16 weights".into(),
                detail: "this device cannot unpack f16 in shaders".into(),
            });
        }
        let (d, di, nh) = (cfg.embedding_dim, cfg.inner_dim(), cfg.num_heads);
        let (bs, k) = (cfg.qkv_blocksize, cfg.conv_kernel);
        let x = scope.scope("xlstm.");
        let cell = x.scope("mlstm_cell.");
        let qkv = ["q_proj", "k_proj", "v_proj"];
        let qkv = Linear {
            weight: x.stacked_headwise(
                ctx,
                "{q,k,v}_proj.weight",
                &qkv.map(|p| format!("{p}.weight"))
                    .each_ref()
                    .map(String::as_str),
                [di / bs, bs, bs],
                dtype,
            )?,
            bias: if cfg.bias {
                let mut b = Vec::with_capacity(3 * di);
                for p in qkv {
                    b.extend(x.f32(&format!("{p}.bias"), &[di])?);
                }
                Some(Tensor::from_f32(
                    ctx,
                    &x.name("{q,k,v}_proj.bias"),
                    &[3 * di],
                    &b,
                )?)
            } else {
                None
            },
        };
        let mut gate_b = cell.f32("igate.bias", &[nh])?;
        gate_b.extend(cell.f32("fgate.bias", &[nh])?);
        let conv_weight = x.f32("conv1d.conv.weight", &[di, 1, k])?;
        Ok(MlstmBlock {
            cfg: cfg.clone(),
            norm: scope.vector(ctx, "xlstm_norm.weight", &[d])?,
            proj_up: Projection::load(ctx, &x, "proj_up", 2 * di, d, cfg.bias, dtype, shared)?,
            conv_weight: Tensor::from_f32(
                ctx,
                &x.name("conv1d.conv.weight"),
                &[di, k],
                &conv_weight,
            )?,
            conv_bias: x.vector(ctx, "conv1d.conv.bias", &[di])?,
            qkv,
            gates: Linear {
                weight: cell.stacked_matrix(
                    ctx,
                    "{i,f}gate.weight",
                    &[("igate.weight", nh), ("fgate.weight", nh)],
                    3 * di,
                    dtype,
                )?,
                bias: Some(Tensor::from_f32(
                    ctx,
                    &cell.name("{i,f}gate.bias"),
                    &[2 * nh],
                    &gate_b,
                )?),
            },
            outnorm: cell.vector(ctx, "outnorm.weight", &[di])?,
            skip: x.vector(ctx, "learnable_skip", &[di])?,
            proj_down: Linear::load(ctx, &x, "proj_down", &[d, di], d, cfg.bias, dtype)?,
        })
    }

    /// The block's configuration.
    pub fn config(&self) -> &MlstmConfig {
        &self.cfg
    }

    /// A fresh (zero) state for `slots` sequences.
    pub fn new_state(&self, ctx: &Context, slots: usize) -> Result<MlstmState> {
        let cfg = &self.cfg;
        let conv = if cfg.conv_kernel > 1 {
            let shape = [slots, cfg.conv_kernel - 1, cfg.inner_dim()];
            Some(Tensor::zeros(ctx, "mlstm conv state", &shape, DType::F32)?)
        } else {
            None
        };
        Ok(MlstmState {
            conv,
            cell: CellState::new(ctx, slots, cfg.num_heads, cfg.head_dim(), cfg.head_dim())?,
        })
    }

    /// Records the block for the batch's B sequences of N tokens: `batch.x += block(x)`,
    /// continuing each sequence's state in `state` (slots from `batch.slots`). N > 1 uses
    /// a chunkwise cell kernel, N = 1 a recurrent one ([`CellKernel::choose`]).
    pub fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        batch: &SeqBatch<'_>,
        state: &MlstmState,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let rows = batch.seqs * batch.tokens;
        batch
            .x
            .expect("mLSTM block input", &[rows, cfg.embedding_dim], DType::F32)?;
        if (state.cell.heads(), state.cell.v_dim()) != (cfg.num_heads, cfg.head_dim()) {
            return Err(Error::mismatch(
                "mLSTM block state",
                format!("{} heads of dim {}", cfg.num_heads, cfg.head_dim()),
                format!("{} heads of dim {}", state.cell.heads(), state.cell.v_dim()),
            ));
        }
        let x = View::of(batch.x);
        let kernel = CellKernel::choose(ctx, batch.tokens, cfg.head_dim());
        self.record_rows(ctx, graph, x, x, batch.scratch, |graph, b| {
            conv1d(
                ctx,
                graph,
                &self.conv_weight,
                Some(&self.conv_bias),
                b.xm,
                b.xc,
                Some(b.xmc.select_cols(0..b.xm.cols)),
                batch.seqs,
                state.conv.as_ref().map(|conv| ConvState {
                    state: conv,
                    slots: batch.slots,
                }),
                Activation::Silu,
            )?;
            b.record_qkv(ctx, graph)?;
            let inputs = CellInputs::new(b.qkv, b.gates);
            mlstm_cell::record(
                ctx,
                graph,
                kernel,
                &inputs,
                b.h,
                &state.cell,
                batch.slots,
                batch.seqs,
                batch.tokens,
            )
        })
    }

    /// Records the parts shared by the block and the expert over the rows of `input`,
    /// ending with `output += proj_down(h)`; `middle` records the conv, q/k/v and cell.
    /// When `output` is not `input` (the expert), the input norm also copies input to
    /// output, so that `output = input + proj_down(h)`.
    fn record_rows(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        input: View<'_>,
        output: View<'_>,
        scratch: &Scratch,
        middle: impl FnOnce(&mut Graph, &Buffers<'_>) -> Result<()>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let rows = input.rows;
        if scratch.rows() < rows {
            return Err(Error::mismatch(
                "mLSTM block scratch rows",
                format!("at least {rows}"),
                scratch.rows(),
            ));
        }
        let (d, di, nh) = (cfg.embedding_dim, cfg.inner_dim(), cfg.num_heads);
        let get = |name, cols| -> Result<_> { scratch.get(name, cols) };
        let (xn, up, xmc) = (
            get("mlstm.xn", d)?,
            get("mlstm.up", 2 * di)?,
            get("mlstm.xmc", 2 * di)?,
        );
        let (qkv, gates, h, hn) = (
            get("mlstm.qkv", 3 * di)?,
            get("mlstm.gates", 2 * nh)?,
            get("mlstm.h", di)?,
            get("mlstm.hn", di)?,
        );
        fn view(t: &Tensor, rows: usize) -> View<'_> {
            View::of(t).select_rows(0..rows)
        }
        let up_v = view(&up, rows);
        let b = Buffers {
            block: self,
            xmc: view(&xmc, rows),
            xm: up_v.select_cols(0..di),
            xc: view(&xmc, rows).select_cols(di..2 * di),
            qkv: view(&qkv, rows),
            gates: view(&gates, rows),
            h: view(&h, rows),
        };
        let norm = Norm::xlstm(&self.norm);
        match input.tensor.buffer()? != output.tensor.buffer()? {
            true => layer_norm_copying(ctx, graph, &norm, input, view(&xn, rows), output)?,
            false => layer_norm(ctx, graph, &norm, input, view(&xn, rows), 0.0)?,
        }
        self.proj_up
            .record(ctx, graph, view(&xn, rows), up_v, 0.0, scratch)?;
        middle(graph, &b)?;
        // h = (MultiHeadLayerNorm(h~) + skip * xc) * silu(z), one dispatch, into hn.
        let norm = Norm::xlstm_heads(&self.outnorm, nh);
        let (z, hn) = (up_v.select_cols(di..2 * di), view(&hn, rows));
        norm_skip_gate(ctx, graph, &norm, b.h, &self.skip, b.xc, z, hn)?;
        let bias = self.proj_down.bias.as_ref();
        matmul(ctx, graph, &self.proj_down.weight, bias, hn, output, 1.0)
    }
}

/// The scratch views of one recording.
struct Buffers<'a> {
    block: &'a MlstmBlock,
    /// [xm | xc] (rows, 2 Di): the conv's input copy and output, q/k/v's input.
    xmc: View<'a>,
    /// The first half of the up-projection (rows, Di).
    xm: View<'a>,
    /// silu(conv(xm)) (rows, Di).
    xc: View<'a>,
    /// [q | k | v] (rows, 3 Di).
    qkv: View<'a>,
    /// [i | f] pre-activations (rows, 2 NH).
    gates: View<'a>,
    /// The cell output h~ (rows, Di).
    h: View<'a>,
}

impl Buffers<'_> {
    /// q, k and v from xc and xm (one stacked headwise product), then the gate
    /// pre-activations from them.
    fn record_qkv(&self, ctx: &Context, graph: &mut Graph) -> Result<()> {
        let blk = self.block;
        let di = blk.cfg.inner_dim();
        let qkv = &blk.qkv;
        let parts = Projections {
            parts: 3,
            first: 0,
            sources: &[di, di, 0],
        };
        let bias = qkv.bias.as_ref();
        headwise_stacked(
            ctx,
            graph,
            &qkv.weight,
            &parts,
            bias,
            self.xmc,
            self.qkv,
            0.0,
        )?;
        let g = &blk.gates;
        matmul(
            ctx,
            graph,
            &g.weight,
            g.bias.as_ref(),
            self.qkv,
            self.gates,
            0.0,
        )
    }
}

impl Expert for MlstmBlock {
    /// `output = input + block(input)` with every row a length-1 sequence from the zero
    /// state (the package's parallel form).
    fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        input: View<'_>,
        output: View<'_>,
        scratch: &Scratch,
    ) -> Result<()> {
        let d = self.cfg.embedding_dim;
        for (what, v) in [
            ("mLSTM expert input", &input),
            ("mLSTM expert output", &output),
        ] {
            if v.cols != d || v.rows != input.rows {
                return Err(Error::mismatch(
                    what,
                    format!("{} x {d}", input.rows),
                    format!("{} x {}", v.rows, v.cols),
                ));
            }
        }
        let nh = self.cfg.num_heads;
        self.record_rows(ctx, graph, input, output, scratch, |graph, b| {
            conv1d(
                ctx,
                graph,
                &self.conv_weight,
                Some(&self.conv_bias),
                b.xm,
                b.xc,
                Some(b.xmc.select_cols(0..b.xm.cols)),
                b.xm.rows,
                None,
                Activation::Silu,
            )?;
            b.record_qkv(ctx, graph)?;
            mlstm_expert(ctx, graph, nh, b.qkv, b.gates.select_cols(0..nh), b.h)
        })
    }
}

#[cfg(test)]
mod tests;
