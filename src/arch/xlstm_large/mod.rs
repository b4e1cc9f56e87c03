//! xLSTM-Large (XLSTM_LARGE.md): the architecture of NX-AI's xLSTM-7B, loaded from a
//! Hugging Face snapshot as downloaded or from the xlstm_large package's own state dict, in
//! either weight mode.
//!
//! ```text
//! x = embedding[ids]
//! for each block: x += mLSTMLayer(RMSNorm(x));  x += SwiGLU(RMSNorm(x))     (block.rs)
//! logits = softcap(RMSNorm_out(x) @ lm_head^T, output_logit_soft_cap)
//! ```
//! Tensor names: `backbone.embeddings.weight` (transformers) or `embedding.weight` (the
//! package), `backbone.blocks.{i}.*`, `backbone.out_norm.weight`, `lm_head.weight`.

mod block;
pub mod config;

pub use config::{LargeConfig, LargeOrigin, WeightMode};

use block::LargeBlock;

use crate::arch::{Loaded, ModelConfig, Network, Recorded, SeqBatch};
use crate::checkpoint::{Manifest, RandomInit, Weights};
use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::layer_norm::{layer_norm, Norm};
use crate::ops::View;
use crate::tensor::{DType, Tensor};

/// The tensors of an xLSTM-Large model under `cfg`'s naming and weight mode.
pub(crate) fn manifest(cfg: &ModelConfig, l: &LargeConfig) -> Manifest {
    let (d, v) = (cfg.embedding_dim, cfg.vocab_size);
    let (nh, qk, vd, f) = (l.num_heads, l.qk_dim, l.v_dim, l.ffn_dim);
    let mut m = Manifest::default();
    m.add_matrix(l.naming.embedding.into(), &[v, d]);
    let norm = |m: &mut Manifest, name: String, n: usize, bias: bool| {
        m.add_init(format!("{name}.weight"), &[n], RandomInit::One);
        if bias {
            m.add(format!("{name}.bias"), &[n]);
        }
    };
    let linear = |m: &mut Manifest, name: String, out: usize, inp: usize, bias: bool| {
        m.add_matrix(format!("{name}.weight"), &[out, inp]);
        if bias {
            m.add(format!("{name}.bias"), &[out]);
        }
    };
    let b = l.use_bias;
    for i in 0..l.num_blocks {
        let p = format!("backbone.blocks.{i}.");
        norm(&mut m, format!("{p}norm_mlstm"), d, b);
        let ml = format!("{p}mlstm_layer.");
        match l.weight_mode {
            WeightMode::Single => {
                let [q, k, vv] = l.naming.qkv;
                linear(&mut m, format!("{ml}{q}"), qk, d, b);
                linear(&mut m, format!("{ml}{k}"), qk, d, b);
                linear(&mut m, format!("{ml}{vv}"), vd, d, b);
                linear(&mut m, format!("{ml}ogate_preact"), vd, d, b);
                linear(&mut m, format!("{ml}igate_preact"), nh, d, true);
                linear(&mut m, format!("{ml}fgate_preact"), nh, d, true);
            }
            WeightMode::Fused => {
                linear(&mut m, format!("{ml}qkv_opreact"), 2 * qk + 2 * vd, d, b);
                linear(&mut m, format!("{ml}ifgate_preact"), 2 * nh, d, true);
            }
        }
        norm(&mut m, format!("{ml}multihead_norm"), vd, b);
        linear(&mut m, format!("{ml}out_proj"), d, vd, b);
        norm(&mut m, format!("{p}norm_ffn"), d, b);
        match l.weight_mode {
            WeightMode::Single => {
                linear(&mut m, format!("{p}ffn.proj_up_gate"), f, d, b);
                linear(&mut m, format!("{p}ffn.proj_up"), f, d, b);
            }
            WeightMode::Fused => linear(&mut m, format!("{p}ffn.proj_up_gate_z"), 2 * f, d, b),
        }
        linear(&mut m, format!("{p}ffn.proj_down"), d, f, b);
    }
    if l.out_norm {
        norm(&mut m, "backbone.out_norm".into(), d, l.out_norm_bias());
    }
    if cfg.tie_weights {
        m.copies
            .insert("lm_head.weight".into(), l.naming.embedding.into());
    } else {
        m.add_matrix("lm_head.weight".into(), &[v, d]);
    }
    m
}

/// The blocks and out norm of an xLSTM-Large model on the GPU.
struct Large {
    blocks: Vec<LargeBlock>,
    out_norm: Option<(Tensor, Option<Tensor>)>,
    norm_eps: f32,
}

/// Loads an xLSTM-Large model with state for `slots` sequences.
pub(crate) fn load(
    ctx: &Context,
    cfg: &ModelConfig,
    l: &LargeConfig,
    weights: &Weights,
    dtype: DType,
    slots: usize,
) -> Result<Loaded> {
    let (d, v) = (cfg.embedding_dim, cfg.vocab_size);
    let root = weights.scope("");
    let embedding = root.matrix(ctx, l.naming.embedding, &[v, d], dtype)?;
    let mut blocks = Vec::with_capacity(l.num_blocks);
    for i in 0..l.num_blocks {
        let s = root.scope(&format!("backbone.blocks.{i}."));
        blocks.push(LargeBlock::load(ctx, l, d, &s, dtype, slots)?);
    }
    let out_norm = match l.out_norm {
        true => Some((
            root.vector(ctx, "backbone.out_norm.weight", &[d])?,
            l.out_norm_bias()
                .then(|| root.vector(ctx, "backbone.out_norm.bias", &[d]))
                .transpose()?,
        )),
        false => None,
    };
    let lm_head = match cfg.tie_weights {
        true => None,
        false => Some(root.matrix(ctx, "lm_head.weight", &[v, d], dtype)?),
    };
    Ok(Loaded {
        embedding,
        lm_head,
        logit_soft_cap: l.output_logit_soft_cap,
        network: Box::new(Large {
            blocks,
            out_norm,
            norm_eps: l.norm_eps,
        }),
    })
}

impl Network for Large {
    fn record<'a>(
        &'a self,
        ctx: &Context,
        graph: &mut Graph,
        batch: &SeqBatch<'a>,
        u: &'a Tensor,
    ) -> Result<Recorded<'a>> {
        for b in &self.blocks {
            b.record(ctx, graph, batch)?;
        }
        let hidden = match &self.out_norm {
            Some((w, bias)) => {
                let norm = Norm::rms(w, bias.as_ref(), self.norm_eps);
                layer_norm(ctx, graph, &norm, View::of(batch.x), View::of(u), 0.0)?;
                View::of(u)
            }
            None => View::of(batch.x),
        };
        Ok(Recorded {
            hidden,
            moe: Vec::new(),
        })
    }

    fn state_tensors(&self) -> Vec<&Tensor> {
        self.blocks
            .iter()
            .flat_map(LargeBlock::state_tensors)
            .collect()
    }
}
