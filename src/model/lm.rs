//! A whole language model on the GPU: embedding, MoxE layers (or a dense xLSTM stack),
//! optional final norm, LM head; the recurrent state of up to `max_sequences` sequences;
//! and the step graphs that run it.
//!
//! `Model` is `Send + Sync`: sessions on several threads share one model; steps are
//! serialised inside (one GPU queue).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::config::{Architecture, ExpertType, ModelConfig, MoxeConfig};
use super::dir::{ModelDir, ParameterCounts};
use super::latent::{self, LatentMlpExpert};
use super::manifest::{expert_kind, Kind};
use super::mlp_expert::MlpExpert;
use super::mlstm::{MlstmBlock, MlstmState};
use super::moe::MoeLayer;
use super::runner::Runner;
use super::slstm::{SlstmBlock, SlstmState};
use super::tokenizer::Tokenizer;
use super::weights::{Scope, Weights};
use super::{Expert, SeqBatch};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::layer_norm::{layer_norm, Norm};
use crate::ops::View;
use crate::tensor::{DType, HostData, Tensor};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Storage of weight matrices: `None` keeps the checkpoint's (f16 when it stores f16 or
    /// bf16 matrices, else f32).
    pub dtype: Option<DType>,
    /// Sequences whose state the model holds at once (sessions, batch members).
    pub max_sequences: usize,
    /// Prompt tokens per prefill submission (a power of two; longer prompts are split so
    /// that no single submission runs for seconds).
    pub prefill_chunk: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            max_sequences: 8,
            prefill_chunk: 64,
        }
    }
}

/// One named state array of one sequence (a block's state tensor without its slot dim).
pub(crate) struct StateArray {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Vec<f32>,
}

/// A recurrent block with its weights.
pub(crate) enum Block {
    S(Box<SlstmBlock>),
    M(Box<MlstmBlock>),
}

/// The state of one block for every sequence slot.
pub(crate) enum BlockState {
    S(Box<SlstmState>),
    M(Box<MlstmState>),
}

impl BlockState {
    /// The state tensors; each has the slot as its first dimension.
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        match self {
            BlockState::S(s) => std::iter::once(&s.cell).chain(s.conv.as_ref()).collect(),
            BlockState::M(m) => m.tensors(),
        }
    }
}

impl Block {
    fn new_state(&self, ctx: &Context, slots: usize) -> Result<BlockState> {
        Ok(match self {
            Block::S(b) => BlockState::S(Box::new(b.new_state(ctx, slots)?)),
            Block::M(b) => BlockState::M(Box::new(b.new_state(ctx, slots)?)),
        })
    }

    pub(crate) fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        batch: &SeqBatch<'_>,
        state: &BlockState,
    ) -> Result<()> {
        match (self, state) {
            (Block::S(b), BlockState::S(s)) => b.record(ctx, graph, batch, s),
            (Block::M(b), BlockState::M(s)) => b.record(ctx, graph, batch, s),
            _ => Err(Error::InvalidArgument(
                "block and state kinds differ".into(),
            )),
        }
    }
}

/// One MoxE layer: mixer (sLSTM block, mLSTM block, optional post norm) and experts.
pub(crate) struct MoxeLayer {
    pub(crate) mixer: [Block; 2],
    pub(crate) post_norm: Option<Tensor>,
    pub(crate) moe: MoeLayer,
}

/// The body of the model.
pub(crate) enum Body {
    Moxe(Vec<MoxeLayer>),
    Dense {
        blocks: Vec<Block>,
        post_norm: Option<Tensor>,
    },
}

/// A loaded model. See the module documentation.
pub struct Model {
    pub(crate) ctx: Context,
    pub(crate) config: ModelConfig,
    pub(crate) tokenizer: Option<Tokenizer>,
    /// (V, D) embedding, in the weight layout so that it can serve as the tied LM head.
    pub(crate) embedding: Tensor,
    /// (V, D), `None` when tied to the embedding.
    pub(crate) lm_head: Option<Tensor>,
    pub(crate) body: Body,
    /// `norm.weight` of a MoxE model with `post_layers_norm`.
    pub(crate) final_norm: Option<Tensor>,
    /// One per block, in recording order.
    pub(crate) states: Vec<BlockState>,
    pub(crate) options: LoadOptions,
    pub(crate) dtype: DType,
    pub(crate) params: ParameterCounts,
    free_slots: Mutex<Vec<usize>>,
    pub(crate) runner: Mutex<Runner>,
}

impl Model {
    /// Loads the model directory `path` (config.json, model.safetensors, optional
    /// tokenizer.json). Everything is validated before anything reaches the GPU.
    pub fn load(ctx: &Context, path: &Path, options: &LoadOptions) -> Result<Self> {
        let dir = ModelDir::open(path)?;
        let tokenizer = match &dir.tokenizer {
            Some(p) => Some(Tokenizer::open(p, dir.config.xlstm.vocab_size)?),
            None => None,
        };
        Self::from_parts(
            ctx,
            dir.config,
            &dir.weights,
            tokenizer,
            &dir.ranks,
            options,
        )
    }

    /// Builds a model from validated weights (e.g. random weights for benchmarks); `ranks`
    /// are the latent ranks [`Manifest::check`](super::manifest::Manifest::check) returned.
    pub fn from_parts(
        ctx: &Context,
        config: ModelConfig,
        weights: &Weights,
        tokenizer: Option<Tokenizer>,
        ranks: &BTreeMap<String, usize>,
        options: &LoadOptions,
    ) -> Result<Self> {
        let params = ParameterCounts::of(&super::manifest::Manifest::of(&config), ranks);
        if options.max_sequences == 0 {
            return Err(Error::InvalidArgument(
                "max_sequences must be at least 1".into(),
            ));
        }
        if !options.prefill_chunk.is_power_of_two() || options.prefill_chunk > 4096 {
            return Err(Error::InvalidArgument(format!(
                "prefill_chunk must be a power of two up to 4096, got {}",
                options.prefill_chunk
            )));
        }
        let dtype = options
            .dtype
            .unwrap_or_else(|| stored_matrix_dtype(weights));
        if dtype == DType::F16 && !ctx.supports_f16_weights() {
            return Err(Error::Limit {
                what: "f16 weights".into(),
                detail: "this adapter has no unpack2x16float (SHADER_F16_IN_F32); load with f32"
                    .into(),
            });
        }
        let x = &config.xlstm;
        let (d, v) = (x.embedding_dim, x.vocab_size);
        let root = weights.scope("");
        let oom = |e: Error| with_size_hint(e, &params, dtype);
        let embedding = root
            .matrix(ctx, "token_embedding.weight", &[v, d], dtype)
            .map_err(oom)?;
        let lm_head = if config.tie_weights {
            None
        } else {
            Some(
                root.matrix(ctx, "lm_head.weight", &[v, d], dtype)
                    .map_err(oom)?,
            )
        };
        let (body, final_norm) = match &config.architecture {
            Architecture::Dense(dense) => {
                let mut blocks = Vec::new();
                for i in 0..dense.num_blocks {
                    let s = root.scope(&format!("xlstm_block_stack.blocks.{i}."));
                    blocks.push(
                        load_block(ctx, &config, &s, dense.slstm_at.contains(&i), dtype)
                            .map_err(oom)?,
                    );
                }
                let post_norm = x
                    .add_post_blocks_norm
                    .then(|| root.vector(ctx, "xlstm_block_stack.post_blocks_norm.weight", &[d]))
                    .transpose()?;
                (Body::Dense { blocks, post_norm }, None)
            }
            Architecture::Moxe(m) => {
                let mut layers = Vec::new();
                for l in 0..m.num_layers {
                    let s = root.scope(&format!("layers.{l}."));
                    let mixer = [
                        load_block(ctx, &config, &s.scope("mixer.blocks.0."), true, dtype)
                            .map_err(oom)?,
                        load_block(ctx, &config, &s.scope("mixer.blocks.1."), false, dtype)
                            .map_err(oom)?,
                    ];
                    let post_norm = x
                        .add_post_blocks_norm
                        .then(|| s.vector(ctx, "mixer.post_blocks_norm.weight", &[d]))
                        .transpose()?;
                    let moe = load_moe(ctx, &config, m, &root, l, ranks, dtype).map_err(oom)?;
                    layers.push(MoxeLayer {
                        mixer,
                        post_norm,
                        moe,
                    });
                }
                let norm = m
                    .post_layers_norm
                    .then(|| root.vector(ctx, "norm.weight", &[d]))
                    .transpose()?;
                (Body::Moxe(layers), norm)
            }
        };
        let slots = options.max_sequences;
        let states = blocks_of(&body)
            .map(|b| b.new_state(ctx, slots))
            .collect::<Result<Vec<_>>>()
            .map_err(oom)?;
        Ok(Model {
            ctx: ctx.clone(),
            config,
            tokenizer,
            embedding,
            lm_head,
            body,
            final_norm,
            states,
            options: options.clone(),
            dtype,
            params,
            free_slots: Mutex::new((0..slots).rev().collect()),
            runner: Mutex::new(Runner::default()),
        })
    }

    /// The GPU context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer, if the model directory has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The tokenizer, or an error explaining that text needs one.
    pub fn require_tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "this model directory has no tokenizer.json: pass token ids instead of text".into(),
            )
        })
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.config.xlstm.vocab_size
    }

    /// Storage type of the weight matrices.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Parameter counts.
    pub fn parameters(&self) -> ParameterCounts {
        self.params
    }

    /// Load options in effect.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Bytes of recurrent state one sequence holds (constant, whatever its length).
    pub fn state_bytes_per_sequence(&self) -> u64 {
        self.states
            .iter()
            .flat_map(|s| s.tensors())
            .map(|t| self.slot_range(t, 0).1)
            .sum()
    }

    /// Takes a free state slot, zeroed.
    pub(crate) fn take_slot(&self) -> Result<usize> {
        let slot = self
            .free_slots
            .lock()
            .expect("slot list poisoned")
            .pop()
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "all {} sequence slots of the model are in use \
                     (LoadOptions::max_sequences); drop a session first",
                    self.options.max_sequences
                ))
            })?;
        self.clear_slot(slot)?;
        Ok(slot)
    }

    /// Returns a slot to the free list.
    pub(crate) fn release_slot(&self, slot: usize) {
        self.free_slots
            .lock()
            .expect("slot list poisoned")
            .push(slot);
    }

    /// The rows of `slot` in a state tensor (whose first dimension is the slot).
    fn slot_rows(&self, t: &Tensor, slot: usize) -> std::ops::Range<usize> {
        let per = t.rows() / self.options.max_sequences;
        slot * per..(slot + 1) * per
    }

    /// The byte range (offset, size) of `slot` in a state tensor.
    fn slot_range(&self, t: &Tensor, slot: usize) -> (u64, u64) {
        let rows = self.slot_rows(t, slot);
        let row = t.row_bytes() as u64;
        (rows.start as u64 * row, rows.len() as u64 * row)
    }

    /// Zeroes the state of `slot`.
    pub(crate) fn clear_slot(&self, slot: usize) -> Result<()> {
        self.ctx.scoped("clearing a sequence state", || {
            let mut enc = self
                .ctx
                .device()
                .create_command_encoder(&Default::default());
            for t in self.states.iter().flat_map(|s| s.tensors()) {
                let (offset, size) = self.slot_range(t, slot);
                let buffer = t.buffer().expect("state tensors are single buffers");
                enc.clear_buffer(buffer, offset, Some(size));
            }
            self.ctx.queue().submit([enc.finish()]);
        })
    }

    /// Copies the state of slot `from` into slot `to` (through a staging buffer: WebGPU
    /// copies cannot stay inside one buffer).
    pub(crate) fn copy_slot(&self, from: usize, to: usize) -> Result<()> {
        let bytes: u64 = self.state_bytes_per_sequence();
        self.ctx.scoped("copying a sequence state", || {
            let staging = self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("state copy"),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self
                .ctx
                .device()
                .create_command_encoder(&Default::default());
            let mut at = 0;
            for t in self.states.iter().flat_map(|s| s.tensors()) {
                let (src, size) = self.slot_range(t, from);
                let buffer = t.buffer().expect("state tensors are single buffers");
                enc.copy_buffer_to_buffer(buffer, src, &staging, at, size);
                at += size;
            }
            let mut at = 0;
            for t in self.states.iter().flat_map(|s| s.tensors()) {
                let (dst, size) = self.slot_range(t, to);
                let buffer = t.buffer().expect("state tensors are single buffers");
                enc.copy_buffer_to_buffer(&staging, at, buffer, dst, size);
                at += size;
            }
            self.ctx.queue().submit([enc.finish()]);
        })
    }

    /// The state of `slot` as named f32 arrays (for saving a session).
    pub(crate) fn read_slot(&self, slot: usize) -> Result<Vec<StateArray>> {
        let mut out = Vec::new();
        for (i, state) in self.states.iter().enumerate() {
            for (j, t) in state.tensors().into_iter().enumerate() {
                let values = t.rows_to_f32(self.slot_rows(t, slot))?;
                out.push(StateArray {
                    name: format!("block{i}.state{j}"),
                    shape: t.shape()[1..].to_vec(),
                    values,
                });
            }
        }
        Ok(out)
    }

    /// Writes named state arrays (as [`Model::read_slot`] returns them) into `slot`.
    pub(crate) fn write_slot(
        &self,
        slot: usize,
        arrays: &BTreeMap<String, StateArray>,
    ) -> Result<()> {
        for (i, state) in self.states.iter().enumerate() {
            for (j, t) in state.tensors().into_iter().enumerate() {
                let name = format!("block{i}.state{j}");
                let want = &t.shape()[1..];
                let StateArray { shape, values, .. } = arrays.get(&name).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "session state lacks '{name}' (saved from another model?)"
                    ))
                })?;
                if shape.as_slice() != want {
                    return Err(Error::mismatch(
                        format!("session state '{name}'"),
                        format!("{want:?}"),
                        format!("{shape:?} (saved from another model?)"),
                    ));
                }
                if values.len() != want.iter().product::<usize>() {
                    return Err(Error::mismatch(
                        format!("session state '{name}' values"),
                        want.iter().product::<usize>(),
                        values.len(),
                    ));
                }
                t.write_rows(self.slot_rows(t, slot).start, HostData::F32(values))?;
            }
        }
        Ok(())
    }

    /// Records the model body over `batch`: embedding of `ids` into `batch.x`, every layer,
    /// the final norm. Returns the view holding the final hidden states (B * N, D) and the
    /// per-layer MoE recordings (for telemetry).
    pub(crate) fn record_body<'a>(
        &'a self,
        graph: &mut Graph,
        ids: &Tensor,
        batch: &SeqBatch<'a>,
        u: &'a Tensor,
    ) -> Result<(View<'a>, Vec<super::moe::MoeStep>)> {
        let ctx = &self.ctx;
        let x = batch.x;
        crate::ops::embedding::embedding(ctx, graph, &self.embedding, ids, View::of(x))?;
        let mut blocks = self.states.iter();
        let mut moe_steps = Vec::new();
        match &self.body {
            Body::Dense {
                blocks: bs,
                post_norm,
            } => {
                for b in bs {
                    b.record(
                        ctx,
                        graph,
                        batch,
                        blocks.next().expect("one state per block"),
                    )?;
                }
                if let Some(w) = post_norm {
                    layer_norm(ctx, graph, &Norm::xlstm(w), View::of(x), View::of(u), 0.0)?;
                    return Ok((View::of(u), moe_steps));
                }
            }
            Body::Moxe(layers) => {
                for layer in layers {
                    for b in &layer.mixer {
                        b.record(
                            ctx,
                            graph,
                            batch,
                            blocks.next().expect("one state per block"),
                        )?;
                    }
                    // The MoE reads post_blocks_norm(x) (x itself without the norm; the
                    // layer may write its output over its input) and its output replaces x
                    // as the next layer's input.
                    let input = match &layer.post_norm {
                        Some(w) => {
                            layer_norm(ctx, graph, &Norm::xlstm(w), View::of(x), View::of(u), 0.0)?;
                            View::of(u)
                        }
                        None => View::of(x),
                    };
                    moe_steps.push(layer.moe.record(
                        ctx,
                        graph,
                        input,
                        View::of(x),
                        batch.scratch,
                    )?);
                }
                if let Some(w) = &self.final_norm {
                    layer_norm(ctx, graph, &Norm::xlstm(w), View::of(x), View::of(u), 0.0)?;
                    return Ok((View::of(u), moe_steps));
                }
            }
        }
        Ok((View::of(x), moe_steps))
    }

    /// The LM head weight (the embedding when tied).
    pub(crate) fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embedding)
    }
}

/// Every block of the body, in recording order.
fn blocks_of(body: &Body) -> Box<dyn Iterator<Item = &Block> + '_> {
    match body {
        Body::Dense { blocks, .. } => Box::new(blocks.iter()),
        Body::Moxe(layers) => Box::new(layers.iter().flat_map(|l| l.mixer.iter())),
    }
}

/// The gate and E experts of MoxE layer `layer` (with the group stage of a latent layer of
/// mlp experts). Latent xlstm experts get their group's shared B (one GPU tensor per (group,
/// kind)).
fn load_moe(
    ctx: &Context,
    config: &ModelConfig,
    m: &MoxeConfig,
    root: &Scope<'_>,
    layer: usize,
    ranks: &BTreeMap<String, usize>,
    dtype: DType,
) -> Result<MoeLayer> {
    let (e, d) = (m.num_experts, config.xlstm.embedding_dim);
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
            Kind::Mlstm => Box::new(load_mlstm(ctx, config, &es, dtype, b.as_ref())?),
            Kind::Slstm => Box::new(load_slstm(ctx, config, &es, dtype, b.as_ref())?),
        };
        experts.push(expert);
    }
    MoeLayer::load(ctx, &s, m, d, experts)
}

fn load_slstm(
    ctx: &Context,
    c: &ModelConfig,
    s: &Scope<'_>,
    dtype: DType,
    shared: Option<&Arc<Tensor>>,
) -> Result<SlstmBlock> {
    let cfg = c
        .xlstm
        .slstm
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("no slstm_block config".into()))?;
    SlstmBlock::load_expert(ctx, s, cfg, dtype, shared)
}

fn load_mlstm(
    ctx: &Context,
    c: &ModelConfig,
    s: &Scope<'_>,
    dtype: DType,
    shared: Option<&Arc<Tensor>>,
) -> Result<MlstmBlock> {
    let cfg = c
        .xlstm
        .mlstm
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("no mlstm_block config".into()))?;
    MlstmBlock::load_expert(ctx, s, cfg, dtype, shared)
}

fn load_block(
    ctx: &Context,
    c: &ModelConfig,
    s: &Scope<'_>,
    slstm: bool,
    dtype: DType,
) -> Result<Block> {
    Ok(if slstm {
        Block::S(Box::new(load_slstm(ctx, c, s, dtype, None)?))
    } else {
        Block::M(Box::new(load_mlstm(ctx, c, s, dtype, None)?))
    })
}

/// f16 when the checkpoint stores its matrices in f16 or bf16, else f32.
fn stored_matrix_dtype(w: &Weights) -> DType {
    let half = w
        .names()
        .iter()
        .any(|n| w.shape(n).is_some_and(|s| s.len() >= 2) && w.is_half(n));
    if half {
        DType::F16
    } else {
        DType::F32
    }
}

/// Adds the model's expected size to an out-of-memory error.
fn with_size_hint(e: Error, params: &ParameterCounts, dtype: DType) -> Error {
    match e {
        Error::OutOfMemory { operation } => Error::OutOfMemory {
            operation: format!(
                "{operation} (the model's weights need about {:.1} MiB as {dtype}; try \
                 --dtype f16 or a smaller model)",
                params.bytes(dtype.size()) as f64 / (1024.0 * 1024.0)
            ),
        },
        other => other,
    }
}
