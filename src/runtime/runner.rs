//! Step graphs: for each step shape (B sequences x N tokens, and what to do with the
//! logits) the whole model is recorded ONCE into one graph with its own input/output
//! buffers and scratch, then replayed: per step the host writes the token ids, the state
//! slots and the sampling settings, submits one command buffer, and reads back only the
//! sampled ids (or the per-token NLL, or the last tokens' logits for sampling on the host).

use std::collections::HashMap;

use super::model::Model;
use super::Scratch;
use crate::arch::moxe::MoeStep;
use crate::arch::SeqBatch;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::matmul::matmul_soft_capped;
use crate::ops::nll::nll;
use crate::ops::sample::sample;
use crate::ops::View;
use crate::tensor::{map_read, DType, HostData, Tensor};

/// What a step produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// Logits of the last token of each sequence, and one sampled id per sequence.
    Sample,
    /// Logits of every token, and the NLL of given target ids.
    Score,
    /// Logits of the last token of each sequence, read back (B, V) for the host to sample.
    Logits,
}

/// The shape of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepKey {
    pub seqs: usize,
    pub tokens: usize,
    pub output: Output,
}

/// A recorded step and its buffers.
pub(crate) struct StepGraph {
    graph: Graph,
    output: Output,
    ids: Tensor,
    slots: Tensor,
    pub(crate) logits: Tensor,
    /// Sampling settings (B * 5 words, Sample) or target ids (B * N, Score); unused by
    /// Logits.
    input: Tensor,
    /// Sampled ids (B, Sample) or token NLL (B * N, Score); unused by Logits, which reads
    /// back `logits`.
    result: Tensor,
    readback: wgpu::Buffer,
    /// The command buffer of the next run, encoded while the previous run executes.
    encoded: Option<wgpu::CommandBuffer>,
    pub(crate) moe: Vec<MoeStep>,
    _x: Tensor,
    _u: Tensor,
    _scratch: Scratch,
}

/// What came back from a step.
#[derive(Debug, Clone, Default)]
pub struct StepResult {
    /// One id per sequence (Output::Sample).
    pub sampled: Vec<u32>,
    /// One NLL per token (Output::Score).
    pub nll: Vec<f32>,
    /// The last token's logits of each sequence, (B, V) row-major (Output::Logits).
    pub logits: Vec<f32>,
}

impl StepResult {
    /// Fails when the step computed NaN or infinity: a sampled id past the vocabulary (the
    /// sampler's flag for a NaN or infinite logit), a non-finite NLL or logit.
    fn check_finite(&self, vocab: usize) -> Result<()> {
        let what = if let Some(b) = self.sampled.iter().position(|&id| id as usize >= vocab) {
            format!("a logit of sequence {b} is NaN or infinite")
        } else if let Some(i) = self.nll.iter().position(|v| !v.is_finite()) {
            format!("the NLL of token {i} of the step is {}", self.nll[i])
        } else {
            return check_logits(&self.logits, vocab);
        };
        Err(Error::NonFinite { what })
    }
}

/// Fails on a NaN or infinite value in `logits`, rows of `vocab`.
pub(crate) fn check_logits(logits: &[f32], vocab: usize) -> Result<()> {
    match logits.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::NonFinite {
            what: format!("logit {} of row {} is {}", i % vocab, i / vocab, logits[i]),
        }),
        None => Ok(()),
    }
}

/// The step graphs recorded so far, and which one ran last (for telemetry and logits).
#[derive(Default)]
pub(crate) struct Runner {
    graphs: HashMap<StepKey, StepGraph>,
    pub(crate) last: Option<StepKey>,
}

impl Runner {
    /// How many step graphs are recorded.
    #[cfg(test)]
    pub(crate) fn recorded(&self) -> usize {
        self.graphs.len()
    }

    /// The graph of `key`, recorded on first use.
    pub(crate) fn graph(&mut self, model: &Model, key: StepKey) -> Result<&mut StepGraph> {
        match self.graphs.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(record(model, key)?)),
        }
    }
}

/// How many dispatches one step of shape `key` records (the graph is recorded and dropped).
pub(crate) fn dispatches(model: &Model, key: StepKey) -> Result<usize> {
    Ok(record(model, key)?.graph.len())
}

fn record(model: &Model, key: StepKey) -> Result<StepGraph> {
    let ctx = &model.ctx;
    let (b, n) = (key.seqs, key.tokens);
    let rows = b * n;
    let (d, v) = (model.config.embedding_dim, model.vocab());
    let ids = Tensor::zeros(ctx, "step ids", &[rows], DType::U32)?;
    let slots = Tensor::zeros(ctx, "step slots", &[b], DType::U32)?;
    let x = Tensor::zeros(ctx, "residual stream", &[rows, d], DType::F32)?;
    let u = Tensor::zeros(ctx, "mixer output", &[rows, d], DType::F32)?;
    let logit_rows = match key.output {
        Output::Sample | Output::Logits => b,
        Output::Score => rows,
    };
    let logits = Tensor::zeros(ctx, "logits", &[logit_rows, v], DType::F32)?;
    let (input, result) = match key.output {
        Output::Sample => (
            Tensor::zeros(ctx, "sampling settings", &[b * 5], DType::U32)?,
            Tensor::zeros(ctx, "sampled ids", &[b], DType::U32)?,
        ),
        Output::Score => (
            Tensor::zeros(ctx, "target ids", &[rows], DType::U32)?,
            Tensor::zeros(ctx, "token nll", &[rows], DType::F32)?,
        ),
        Output::Logits => (
            Tensor::zeros(ctx, "no input", &[1], DType::U32)?,
            Tensor::zeros(ctx, "no result", &[1], DType::U32)?,
        ),
    };
    let scratch = Scratch::new(ctx, rows);
    let batch = SeqBatch {
        x: &x,
        slots: &slots,
        seqs: b,
        tokens: n,
        scratch: &scratch,
    };
    let mut graph = Graph::new();
    let recorded = model.record_body(&mut graph, &ids, &batch, &u)?;
    let (hidden, moe) = (recorded.hidden, recorded.moe);
    let cap = model.logit_soft_cap;
    // The last token of each sequence: rows n-1, 2n-1, ... (stride n rows).
    let last = View {
        tensor: hidden.tensor,
        offset: hidden.offset + (n - 1) * hidden.stride,
        stride: hidden.stride * n,
        rows: b,
        cols: d,
    };
    match key.output {
        Output::Sample => {
            matmul_soft_capped(ctx, &mut graph, model.head(), last, View::of(&logits), cap)?;
            sample(ctx, &mut graph, View::of(&logits), &input, &result, 0)?;
        }
        Output::Logits => {
            matmul_soft_capped(ctx, &mut graph, model.head(), last, View::of(&logits), cap)?;
        }
        Output::Score => {
            matmul_soft_capped(
                ctx,
                &mut graph,
                model.head(),
                hidden,
                View::of(&logits),
                cap,
            )?;
            nll(ctx, &mut graph, View::of(&logits), &input, &result)?;
        }
    }
    let read = match key.output {
        Output::Logits => &logits,
        _ => &result,
    };
    let read_bytes = (read.numel() * 4).div_ceil(16) * 16;
    let readback = ctx.scoped("allocating a read-back buffer", || {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("step read-back"),
            size: read_bytes as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })?;
    Ok(StepGraph {
        graph,
        ids,
        slots,
        output: key.output,
        logits,
        input,
        result,
        readback,
        encoded: None,
        moe,
        _x: x,
        _u: u,
        _scratch: scratch,
    })
}

impl StepGraph {
    /// Runs the step: `ids` (B * N), `slots` (B), `input` = the sampling settings (B * 5
    /// words, Sample) or the target ids (B * N, Score). With `read`, waits for the step and
    /// returns its sampled ids or NLL; without, only submits it (queue order keeps later
    /// steps after it). Once submitted, the next run's command buffer is encoded while the
    /// device works (the inputs are written with the queue, so it is the same every run):
    /// in decode the host's encoding no longer adds to each token's time.
    pub(crate) fn run(
        &mut self,
        model: &Model,
        ids: &[u32],
        slots: &[u32],
        input: &[u32],
        read: bool,
    ) -> Result<StepResult> {
        let ctx = &model.ctx;
        if ids.len() != self.ids.numel() || slots.len() != self.slots.numel() {
            return Err(Error::mismatch(
                "step inputs",
                format!(
                    "{} ids for {} sequences",
                    self.ids.numel(),
                    self.slots.numel()
                ),
                format!("{} ids for {} sequences", ids.len(), slots.len()),
            ));
        }
        let want_input = match self.output {
            Output::Logits => 0,
            _ => self.input.numel(),
        };
        if input.len() != want_input {
            let what = match self.output {
                Output::Sample => "sampling settings (words)",
                Output::Score => "target ids",
                Output::Logits => "inputs of a logits step (none)",
            };
            return Err(Error::mismatch(what, want_input, input.len()));
        }
        self.ids.write(HostData::U32(ids))?;
        self.slots.write(HostData::U32(slots))?;
        if !input.is_empty() {
            self.input.write(HostData::U32(input))?;
        }
        let source = match self.output {
            Output::Logits => &self.logits,
            _ => &self.result,
        };
        let bytes = (source.numel() * 4) as u64;
        let src = source.buffer()?;
        let copy = |enc: &mut wgpu::CommandEncoder| {
            enc.copy_buffer_to_buffer(src, 0, &self.readback, 0, bytes);
        };
        if ctx.profiling() {
            self.encoded = None;
            ctx.submit_with(&[&self.graph], copy)?;
        } else {
            let commands = match self.encoded.take() {
                Some(commands) => commands,
                None => ctx.encode(&[&self.graph], copy)?,
            };
            ctx.submit_encoded(commands)?;
            self.encoded = Some(ctx.encode(&[&self.graph], copy)?);
        }
        if !read {
            return Ok(StepResult::default());
        }
        let raw = map_read(ctx, &self.readback, bytes, "reading the step's results")?;
        let mut out = StepResult::default();
        match self.output {
            Output::Sample => out.sampled = bytemuck::pod_collect_to_vec(&raw),
            Output::Score => out.nll = bytemuck::pod_collect_to_vec(&raw),
            Output::Logits => out.logits = bytemuck::pod_collect_to_vec(&raw),
        }
        out.check_finite(model.vocab())?;
        Ok(out)
    }
}
