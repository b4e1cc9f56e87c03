//! A whole language model on the GPU: embedding, the architecture's network (its blocks
//! and the recurrent state of up to `max_sequences` sequences), LM head; and the step
//! graphs that run it.
//!
//! `Model` is `Send + Sync`: sessions on several threads share one model; steps are
//! serialised inside (one GPU queue).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use safetensors::tensor::Dtype;

use super::runner::Runner;
use super::tokenizer::Tokenizer;
use crate::arch::{ModelConfig, Network, Recorded, SeqBatch};
use crate::checkpoint::{GenerationDefaults, ModelDir, ParameterCounts, ProgressFn, Weights};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::View;
use crate::tensor::{DType, HostData, Tensor};

/// The most sequences a model holds state for ([`LoadOptions::max_sequences`]): the
/// server's slots and a benchmark's batch are bounded by it.
pub const MAX_SEQUENCES: usize = 4096;

/// How to load a model.
#[derive(Clone)]
pub struct LoadOptions {
    /// Storage of weight matrices (f32, f16 or bf16): `None` keeps the checkpoint's (f32
    /// when it mixes 16-bit types).
    pub dtype: Option<DType>,
    /// Sequences whose state the model holds at once (sessions, batch members).
    pub max_sequences: usize,
    /// Prompt tokens per prefill submission (a power of two; longer prompts are split so
    /// that no single submission runs for seconds). Default 128: on lavapipe the bundled
    /// model prefilled 128-token prompts 3-4% faster than in chunks of 64 (2026-12-04, four
    /// runs each, interleaved), each chunk paying every kernel's dispatch once.
    pub prefill_chunk: usize,
    /// Told the bytes of weight matrices written to the GPU so far and the total, as they
    /// stream (for a progress bar on large models).
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("dtype", &self.dtype)
            .field("max_sequences", &self.max_sequences)
            .field("prefill_chunk", &self.prefill_chunk)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            max_sequences: 8,
            prefill_chunk: 128,
            progress: None,
        }
    }
}

/// One named state array of one sequence (a state tensor without its slot dim).
#[derive(Clone)]
pub(crate) struct StateArray {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Vec<f32>,
}

/// A loaded model. See the module documentation.
pub struct Model {
    pub(crate) ctx: Context,
    pub(crate) config: ModelConfig,
    pub(crate) tokenizer: Option<Tokenizer>,
    /// Special tokens and sampling defaults of the model directory's files.
    pub(crate) generation: GenerationDefaults,
    /// (V, D) embedding, in the weight layout so that it can serve as the tied LM head.
    pub(crate) embedding: Tensor,
    /// (V, D), `None` when tied to the embedding.
    pub(crate) lm_head: Option<Tensor>,
    /// `c` of the logits' soft cap `c tanh(logits / c)`, if any.
    pub(crate) logit_soft_cap: Option<f32>,
    /// The body, with the recurrent state of every sequence slot.
    pub(crate) network: Box<dyn Network>,
    pub(crate) options: LoadOptions,
    pub(crate) dtype: DType,
    pub(crate) params: ParameterCounts,
    /// [`Weights::digest`] of the checkpoint it was loaded from (session files carry it).
    pub(crate) weights_digest: u64,
    free_slots: Mutex<Vec<usize>>,
    runner: Mutex<Runner>,
}

impl Model {
    /// Loads the model directory `path` (config.json, the weights, and optionally
    /// tokenizer.json, tokenizer_config.json and generation_config.json). Everything is
    /// validated before anything reaches the GPU; the weights then stream from the
    /// memory-mapped files to the GPU (`options.progress` is told how far it got).
    pub fn load(ctx: &Context, path: &Path, options: &LoadOptions) -> Result<Self> {
        let dir = ModelDir::open(path)?;
        let tokenizer = match &dir.tokenizer {
            Some(p) => Some(Tokenizer::open(p, dir.config.vocab_size, &dir.generation)?),
            None => None,
        };
        let mut model = Self::from_parts(
            ctx,
            dir.config,
            &dir.weights,
            tokenizer,
            &dir.ranks,
            options,
        )?;
        model.generation = dir.generation;
        Ok(model)
    }

    /// Builds a model from validated weights (e.g. random weights for benchmarks); `ranks`
    /// are the latent ranks [`Manifest::check`](crate::checkpoint::Manifest::check) returned.
    pub fn from_parts(
        ctx: &Context,
        config: ModelConfig,
        weights: &Weights,
        tokenizer: Option<Tokenizer>,
        ranks: &BTreeMap<String, usize>,
        options: &LoadOptions,
    ) -> Result<Self> {
        ctx.check_limits()?;
        let params = ParameterCounts::of(&config.manifest(), ranks);
        if options.max_sequences == 0 || options.max_sequences > MAX_SEQUENCES {
            return Err(Error::InvalidArgument(format!(
                "max_sequences must be between 1 and {MAX_SEQUENCES}, got {}",
                options.max_sequences
            )));
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
        if !dtype.is_float() {
            return Err(Error::mismatch(
                "weight dtype",
                "f32, f16, bf16, q8 or q4",
                dtype,
            ));
        }
        if dtype == DType::F16 && !ctx.supports_f16_weights() {
            return Err(Error::Limit {
                what: "f16 weights".into(),
                detail: "this adapter has no unpack2x16float (SHADER_F16_IN_F32); load with f32 \
                         or bf16"
                    .into(),
            });
        }
        // On a CPU adapter the weights take host memory: a model that cannot fit is refused
        // before the upload, not killed by the system halfway.
        let need = params.bytes(dtype.device_bits()) as u64;
        if let Some(available) = ctx.cpu_memory_available().filter(|&a| need > a) {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(Error::Limit {
                what: format!(
                    "loading the model's weights ({:.1} GiB as {dtype})",
                    gib(need)
                ),
                detail: format!(
                    "this CPU adapter keeps them in host memory, of which {:.1} GiB is \
                     available: load with a smaller --dtype (q8, q4) or on a larger machine",
                    gib(available)
                ),
            });
        }
        let matrix_bytes = (params.in_matrices * dtype.bits() / 8) as u64;
        weights.set_progress(options.progress.clone(), matrix_bytes);
        let slots = options.max_sequences;
        let loaded = config.load(ctx, weights, ranks, dtype, slots);
        weights.set_progress(None, 0);
        let loaded = loaded.map_err(|e| with_size_hint(e, &params, dtype, slots))?;
        Ok(Model {
            ctx: ctx.clone(),
            config,
            tokenizer,
            generation: GenerationDefaults::default(),
            embedding: loaded.embedding,
            lm_head: loaded.lm_head,
            logit_soft_cap: loaded.logit_soft_cap,
            network: loaded.network,
            options: options.clone(),
            dtype,
            params,
            weights_digest: weights.digest(),
            free_slots: Mutex::new((0..slots).rev().collect()),
            runner: Mutex::new(Runner::default()),
        })
    }

    /// The step graphs, locked. A panic while they were held (in a caller's closure, say)
    /// leaves them as recorded, so the lock is taken back rather than poisoning the model.
    pub(crate) fn runner(&self) -> std::sync::MutexGuard<'_, Runner> {
        self.runner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
                "this model directory has no tokenizer.json, which text needs: add the \
                 model's tokenizer.json (token ids work without it: `moxe logits --ids`, or the \
                 server's prompts given as lists of ids)"
                    .into(),
            )
        })
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.config.vocab_size
    }

    /// Special tokens and sampling defaults from the model directory's tokenizer and
    /// generation config files (empty for a model built from parts).
    pub fn generation_defaults(&self) -> &GenerationDefaults {
        &self.generation
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
        self.network
            .state_tensors()
            .into_iter()
            .map(|t| self.slot_range(t, 0).1)
            .sum()
    }

    /// Kernel dispatches in one decode step of one sequence (sampling included; a MoE
    /// layer's experts all count, those without tokens running zero workgroups).
    pub fn decode_dispatches(&self) -> Result<usize> {
        let key = super::runner::StepKey {
            seqs: 1,
            tokens: 1,
            output: super::runner::Output::Sample,
        };
        super::runner::dispatches(self, key)
    }

    /// Records ahead of time the step graphs one sequence's feeds use: the decode step
    /// and a prompt chunk of every length a feed cuts (powers of two up to
    /// `prefill_chunk`), ending in `output` (`Sample` for [`Session::feed`](super::Session::feed),
    /// `Logits` for host sampling), compiling their pipelines. For interactive use right
    /// after loading, so that the first request does not wait for them (batches of other
    /// sizes record graphs of their own, mostly from the same pipelines); a graph is
    /// otherwise recorded the first time its shape runs.
    pub fn prepare_steps(&self, output: super::runner::Output) -> Result<()> {
        let mut runner = self.runner();
        let mut tokens = 1;
        while tokens <= self.options.prefill_chunk {
            let key = super::runner::StepKey {
                seqs: 1,
                tokens,
                output,
            };
            runner.graph(self, key)?;
            tokens *= 2;
        }
        Ok(())
    }

    /// Bytes of weights one decode step reads: every matrix (the experts' k of E), the
    /// embedding's one row unless it is also the LM head, and the f32 vectors.
    pub fn decode_weight_bytes(&self) -> u64 {
        let p = &self.params;
        let active = self.config.active_parameters(p);
        let vectors = p.total - p.in_matrices;
        let mut matrices = active.saturating_sub(vectors);
        if self.lm_head.is_some() {
            matrices -= self.embedding.numel() - self.config.embedding_dim;
        }
        (matrices * self.dtype.bits() / 8 + vectors * 4) as u64
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
            for t in self.network.state_tensors() {
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
            for t in self.network.state_tensors() {
                let (src, size) = self.slot_range(t, from);
                let buffer = t.buffer().expect("state tensors are single buffers");
                enc.copy_buffer_to_buffer(buffer, src, &staging, at, size);
                at += size;
            }
            let mut at = 0;
            for t in self.network.state_tensors() {
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
        for (i, t) in self.network.state_tensors().into_iter().enumerate() {
            let values = t.rows_to_f32(self.slot_rows(t, slot))?;
            out.push(StateArray {
                name: format!("state{i}"),
                shape: t.shape()[1..].to_vec(),
                values,
            });
        }
        Ok(out)
    }

    /// Writes named state arrays (as [`Model::read_slot`] returns them) into `slot`.
    pub(crate) fn write_slot(
        &self,
        slot: usize,
        arrays: &BTreeMap<String, StateArray>,
    ) -> Result<()> {
        let tensors = self.network.state_tensors();
        let known = |name: &str| {
            name.strip_prefix("state")
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i < tensors.len() && name == format!("state{i}"))
        };
        if let Some(name) = arrays.keys().find(|n| !known(n)) {
            return Err(Error::InvalidArgument(format!(
                "session state has an array '{name}' this model does not have (saved from \
                 another model or a modified file?)"
            )));
        }
        for (i, t) in tensors.into_iter().enumerate() {
            {
                let name = format!("state{i}");
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

    /// Records the model body over `batch`: embedding of `ids` into `batch.x`, then the
    /// network. Returns the final hidden states (B * N, D) and the MoE recordings.
    pub(crate) fn record_body<'a>(
        &'a self,
        graph: &mut Graph,
        ids: &Tensor,
        batch: &SeqBatch<'a>,
        u: &'a Tensor,
    ) -> Result<Recorded<'a>> {
        let x = View::of(batch.x);
        crate::ops::embedding::embedding(&self.ctx, graph, &self.embedding, ids, x)?;
        self.network.record(&self.ctx, graph, batch, u)
    }

    /// The LM head weight (the embedding when tied).
    pub(crate) fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embedding)
    }
}

/// The dtype the checkpoint stores its matrices in: a quantised checkpoint's format (loaded
/// without re-quantising), bf16 and f16 kept as they are; f32 when it stores f32 or mixes
/// float types.
fn stored_matrix_dtype(w: &Weights) -> DType {
    let names = w.names();
    let matrices = || {
        names
            .iter()
            .filter(|n| w.shape(n).is_some_and(|s| s.len() >= 2))
    };
    if let Some(q) = matrices().find_map(|n| w.quant(n)) {
        return DType::of_quant(q);
    }
    let mut stored = matrices().filter_map(|n| w.dtype(n));
    match stored.next() {
        Some(first) if stored.all(|d| d == first) => match first {
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            _ => DType::F32,
        },
        _ => DType::F32,
    }
}

/// Adds the model's expected size to an out-of-memory error, and the sequences its state
/// is held for to a limit error.
fn with_size_hint(e: Error, params: &ParameterCounts, dtype: DType, slots: usize) -> Error {
    match e {
        // The state of every sequence is one tensor per kind: many sequences can pass a
        // binding limit that one fits.
        Error::Limit { what, detail } if slots > 1 => Error::Limit {
            what,
            detail: format!(
                "{detail} (the recurrent state is held for {slots} sequences \
                 (LoadOptions::max_sequences, --slots): fewer may fit)"
            ),
        },
        Error::OutOfMemory { operation } => Error::OutOfMemory {
            operation: format!(
                "{operation} (the model's weights need about {:.1} MiB as {dtype}; try \
                 a 16-bit --dtype or a smaller model)",
                params.bytes(dtype.device_bits()) as f64 / (1024.0 * 1024.0)
            ),
        },
        other => other,
    }
}
