//! A dense stack of NeurIPS blocks (the xlstm package's `xLSTMLMModel`): embedding, sLSTM
//! and mLSTM blocks at the configured positions, the post-blocks LayerNorm, LM head.
//! Tensor names as the package's state_dict: `token_embedding.weight`,
//! `xlstm_block_stack.blocks.{i}.*`, `xlstm_block_stack.post_blocks_norm.weight`,
//! `lm_head.weight`.

use super::block::Block;
use super::config::DenseConfig;
use super::manifest;
use crate::arch::{Loaded, ModelConfig, Network, Recorded, SeqBatch};
use crate::checkpoint::{Manifest, Weights};
use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::layer_norm::{layer_norm, Norm};
use crate::ops::View;
use crate::tensor::{DType, Tensor};

/// The tensors of a dense model, with the embedding and head every NeurIPS model has.
pub(crate) fn manifest(cfg: &ModelConfig, dense: &DenseConfig) -> Manifest {
    let mut m = Manifest::default();
    embedding_and_head(&mut m, cfg);
    let x = &dense.xlstm;
    for i in 0..dense.num_blocks {
        let p = format!("xlstm_block_stack.blocks.{i}.");
        if dense.slstm_at.contains(&i) {
            manifest::slstm(&mut m, &p, x.slstm.as_ref().expect("validated by config"));
        } else {
            manifest::mlstm(&mut m, &p, x.mlstm.as_ref().expect("validated by config"));
        }
    }
    if x.add_post_blocks_norm {
        m.add(
            "xlstm_block_stack.post_blocks_norm.weight".into(),
            &[cfg.embedding_dim],
        );
    }
    m
}

/// `token_embedding.weight` and, unless tied, `lm_head.weight` (both (V, D)).
pub(crate) fn embedding_and_head(m: &mut Manifest, cfg: &ModelConfig) {
    let (d, v) = (cfg.embedding_dim, cfg.vocab_size);
    m.add_matrix("token_embedding.weight".into(), &[v, d]);
    if cfg.tie_weights {
        m.copies
            .insert("lm_head.weight".into(), "token_embedding.weight".into());
    } else {
        m.add_matrix("lm_head.weight".into(), &[v, d]);
    }
}

/// Loads `token_embedding.weight` and the untied `lm_head.weight` as `dtype`.
pub(crate) fn load_embedding_and_head(
    ctx: &Context,
    cfg: &ModelConfig,
    weights: &Weights,
    dtype: DType,
) -> Result<(Tensor, Option<Tensor>)> {
    let (d, v) = (cfg.embedding_dim, cfg.vocab_size);
    let root = weights.scope("");
    let embedding = root.matrix(ctx, "token_embedding.weight", &[v, d], dtype)?;
    let head = match cfg.tie_weights {
        true => None,
        false => Some(root.matrix(ctx, "lm_head.weight", &[v, d], dtype)?),
    };
    Ok((embedding, head))
}

/// The blocks of a dense model on the GPU.
struct Dense {
    blocks: Vec<Block>,
    post_norm: Option<Tensor>,
}

/// Loads a dense model with state for `slots` sequences.
pub(crate) fn load(
    ctx: &Context,
    cfg: &ModelConfig,
    dense: &DenseConfig,
    weights: &Weights,
    dtype: DType,
    slots: usize,
) -> Result<Loaded> {
    let (embedding, lm_head) = load_embedding_and_head(ctx, cfg, weights, dtype)?;
    let root = weights.scope("");
    let mut blocks = Vec::with_capacity(dense.num_blocks);
    for i in 0..dense.num_blocks {
        let s = root.scope(&format!("xlstm_block_stack.blocks.{i}."));
        let slstm = dense.slstm_at.contains(&i);
        blocks.push(Block::load(ctx, &dense.xlstm, &s, slstm, dtype, slots)?);
    }
    let post_norm = dense
        .xlstm
        .add_post_blocks_norm
        .then(|| {
            root.vector(
                ctx,
                "xlstm_block_stack.post_blocks_norm.weight",
                &[cfg.embedding_dim],
            )
        })
        .transpose()?;
    Ok(Loaded {
        embedding,
        lm_head,
        logit_soft_cap: None,
        network: Box::new(Dense { blocks, post_norm }),
    })
}

impl Network for Dense {
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
        let hidden = match &self.post_norm {
            Some(w) => {
                layer_norm(
                    ctx,
                    graph,
                    &Norm::xlstm(w),
                    View::of(batch.x),
                    View::of(u),
                    0.0,
                )?;
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
        self.blocks.iter().flat_map(Block::state_tensors).collect()
    }
}
