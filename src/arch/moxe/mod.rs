//! MoxE ("Mixture of xLSTM Experts with Entropy-Aware Routing", MODEL.md): layers of a
//! mixer (an sLSTM block then an mLSTM block, optional post norm) and a mixture of experts
//! behind the entropy-aware router; experts dense or latent (MoLAE, LATENT.md).

pub mod config;
pub mod latent;
pub mod manifest;
pub mod mlp_expert;
pub mod moe;
pub mod telemetry;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use config::MoxeConfig;
pub use mlp_expert::MlpExpert;
pub use moe::{MoeLayer, MoeStep};
pub use telemetry::RouterTelemetry;

pub(crate) use manifest::manifest;

use config::ExpertType;
use latent::LatentMlpExpert;
use manifest::{expert_kind, Kind};

use crate::arch::xlstm::block::{load_mlstm, load_slstm, Block};
use crate::arch::xlstm::dense::load_embedding_and_head;
use crate::arch::{Expert, Loaded, ModelConfig, Network, Recorded, SeqBatch};
use crate::checkpoint::{Scope, Weights};
use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::layer_norm::{layer_norm, Norm};
use crate::ops::View;
use crate::tensor::{DType, Tensor};

/// One MoxE layer: mixer (sLSTM block, mLSTM block, optional post norm) and experts.
struct MoxeLayer {
    mixer: [Block; 2],
    post_norm: Option<Tensor>,
    moe: MoeLayer,
}

/// The layers of a MoxE model on the GPU.
struct Moxe {
    layers: Vec<MoxeLayer>,
    /// `norm.weight` with `post_layers_norm`.
    final_norm: Option<Tensor>,
}

/// Loads a MoxE model with state for `slots` sequences.
pub(crate) fn load(
    ctx: &Context,
    cfg: &ModelConfig,
    m: &MoxeConfig,
    weights: &Weights,
    ranks: &BTreeMap<String, usize>,
    dtype: DType,
    slots: usize,
) -> Result<Loaded> {
    let (embedding, lm_head) = load_embedding_and_head(ctx, cfg, weights, dtype)?;
    let d = cfg.embedding_dim;
    let root = weights.scope("");
    let x = &m.xlstm;
    let mut layers = Vec::with_capacity(m.num_layers);
    for l in 0..m.num_layers {
        let s = root.scope(&format!("layers.{l}."));
        let mixer = [
            Block::load(ctx, x, &s.scope("mixer.blocks.0."), true, dtype, slots)?,
            Block::load(ctx, x, &s.scope("mixer.blocks.1."), false, dtype, slots)?,
        ];
        let post_norm = x
            .add_post_blocks_norm
            .then(|| s.vector(ctx, "mixer.post_blocks_norm.weight", &[d]))
            .transpose()?;
        let moe = load_moe(ctx, d, m, &root, l, ranks, dtype)?;
        layers.push(MoxeLayer {
            mixer,
            post_norm,
            moe,
        });
    }
    let final_norm = m
        .post_layers_norm
        .then(|| root.vector(ctx, "norm.weight", &[d]))
        .transpose()?;
    Ok(Loaded {
        embedding,
        lm_head,
        logit_soft_cap: None,
        network: Box::new(Moxe { layers, final_norm }),
    })
}

/// The gate and E experts of MoxE layer `layer` (with the group stage of a latent layer of
/// mlp experts). Latent xlstm experts get their group's shared B (one GPU tensor per (group,
/// kind)).
fn load_moe(
    ctx: &Context,
    d: usize,
    m: &MoxeConfig,
    root: &Scope<'_>,
    layer: usize,
    ranks: &BTreeMap<String, usize>,
    dtype: DType,
) -> Result<MoeLayer> {
    let e = m.num_experts;
    let groups = m.latent.map(|l| l.groups);
    let s = root.scope(&format!("layers.{layer}."));
    let mut experts: Vec<Box<dyn Expert>> = Vec::with_capacity(e);
    if let (Some(g), ExpertType::Mlp) = (groups, m.expert_type) {
        // The experts read u itself: B_g u runs once per group hit in the group stage.
        let (stage, group_ranks) = latent::load_mlp_stage(ctx, root, layer, g, d, ranks, dtype)?;
        for x in 0..e {
            let es = s.scope(&format!("experts.{x}."));
            let r = group_ranks[latent::group_of(x, e, g)];
            experts.push(Box::new(LatentMlpExpert::load(ctx, &es, d, r, dtype)?));
        }
        return MoeLayer::load(ctx, &s, m, d, experts)?.with_group_stage(stage);
    }
    let mut shared: BTreeMap<String, Arc<Tensor>> = BTreeMap::new();
    for x in 0..e {
        let es = s.scope(&format!("experts.{x}."));
        let kind = expert_kind(m.expert_type, x, e);
        let b = match (groups, kind) {
            (Some(g), Kind::Mlstm | Kind::Slstm) => {
                let name = match kind {
                    Kind::Mlstm => "xlstm.proj_up",
                    _ => "ffn.proj_up",
                };
                let key = latent::shared_key(layer, latent::group_of(x, e, g), name);
                if !shared.contains_key(&key) {
                    let r = latent::rank_of(ranks, &key)?;
                    let b = root.matrix(ctx, &format!("{key}.B"), &[r, d], dtype)?;
                    shared.insert(key.clone(), Arc::new(b));
                }
                shared.get(&key).cloned()
            }
            _ => None,
        };
        let expert: Box<dyn Expert> = match kind {
            Kind::Mlp => Box::new(MlpExpert::load(ctx, &es, d, dtype)?),
            Kind::Mlstm => Box::new(load_mlstm(ctx, &m.xlstm, &es, dtype, b.as_ref())?),
            Kind::Slstm => Box::new(load_slstm(ctx, &m.xlstm, &es, dtype, b.as_ref())?),
        };
        experts.push(expert);
    }
    MoeLayer::load(ctx, &s, m, d, experts)
}

impl Network for Moxe {
    fn record<'a>(
        &'a self,
        ctx: &Context,
        graph: &mut Graph,
        batch: &SeqBatch<'a>,
        u: &'a Tensor,
    ) -> Result<Recorded<'a>> {
        let x = batch.x;
        let mut moe = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            for b in &layer.mixer {
                b.record(ctx, graph, batch)?;
            }
            // The MoE reads post_blocks_norm(x) (x itself without the norm; the layer may
            // write its output over its input) and its output replaces x as the next layer's
            // input.
            let input = match &layer.post_norm {
                Some(w) => {
                    layer_norm(ctx, graph, &Norm::xlstm(w), View::of(x), View::of(u), 0.0)?;
                    View::of(u)
                }
                None => View::of(x),
            };
            moe.push(
                layer
                    .moe
                    .record(ctx, graph, input, View::of(x), batch.scratch)?,
            );
        }
        let hidden = match &self.final_norm {
            Some(w) => {
                layer_norm(ctx, graph, &Norm::xlstm(w), View::of(x), View::of(u), 0.0)?;
                View::of(u)
            }
            None => View::of(x),
        };
        Ok(Recorded { hidden, moe })
    }

    fn state_tensors(&self) -> Vec<&Tensor> {
        self.layers
            .iter()
            .flat_map(|l| l.mixer.iter())
            .flat_map(Block::state_tensors)
            .collect()
    }
}
