//! Whole-model speed: prefill and decode tokens/s, GPU memory, and the decode time split by
//! kernel (timestamp queries), on the current adapter.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::error::Result;
use crate::ops::sample::Sampling;
use crate::runtime::{Model, Session};
use crate::testing::Rng;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ModelBenchOptions {
    /// Prompt tokens per timed prefill.
    pub prompt_tokens: usize,
    /// Timed decode steps.
    pub decode_tokens: usize,
    /// Sequences decoded together in the batched measurement (1 = skip it).
    pub batch: usize,
    /// Decode steps timed per kernel with timestamp queries (0 = skip).
    pub profile_tokens: usize,
    /// Also time one prefill of the prompt per kernel.
    pub profile_prefill: bool,
    /// Also time the batched decode steps per kernel (with `batch` > 1).
    pub profile_batch: bool,
    /// Timed runs of prefill and of decode; the fastest is reported (shared machines are
    /// noisy).
    pub repeats: usize,
    /// Measure the read probe too, to state decode's weight bandwidth as a share of it.
    pub probe: bool,
}

/// Measured speeds.
#[derive(Debug, Clone)]
pub struct ModelBenchReport {
    pub adapter: String,
    pub parameters: usize,
    pub active_parameters: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// (batch, tokens/s summed over the batch).
    pub batch_decode: Option<(usize, f64)>,
    pub gpu_bytes: u64,
    pub state_bytes_per_sequence: u64,
    /// Bytes of weights one decode step reads.
    pub decode_weight_bytes: u64,
    /// Kernel dispatches in one decode step.
    pub decode_dispatches: usize,
    /// The read probe's GB/s, when measured.
    pub probe_gbps: Option<f64>,
    /// Per-kernel table of the profiled decode steps, and the steps it covers.
    pub profile: Option<(String, usize)>,
    /// Per-kernel table of one profiled prefill, and its prompt tokens.
    pub prefill_profile: Option<(String, usize)>,
    /// Per-kernel table of the profiled batched decode steps: (table, sequences, steps).
    pub batch_profile: Option<(String, usize, usize)>,
}

fn random_ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// Runs the measurements (after a warm-up that compiles every pipeline used).
pub fn run(model: &Arc<Model>, options: &ModelBenchOptions) -> Result<ModelBenchReport> {
    let ctx = model.context();
    let vocab = model.vocab();
    let mut rng = Rng::new(7);
    let greedy = Sampling::greedy();
    let prompt = random_ids(&mut rng, options.prompt_tokens.max(1), vocab);

    // Warm-up: the same prefill chunk shapes and a few decode steps.
    {
        let mut s = Session::new(model)?;
        let mut next = s.feed(&prompt, &greedy)?;
        for _ in 0..3 {
            next = s.feed(&[next], &greedy)?;
        }
    }

    let (mut prefill, mut decode) = (0f64, 0f64);
    let mut s = Session::new(model)?;
    let mut next = 0;
    for run in 0..options.repeats.max(1) {
        if run > 0 {
            drop(s);
            s = Session::new(model)?;
        }
        let t = Instant::now();
        next = s.feed(&prompt, &greedy)?;
        prefill = prefill.max(prompt.len() as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        for _ in 0..options.decode_tokens {
            next = s.feed(&[next], &greedy)?;
        }
        decode = decode.max(options.decode_tokens as f64 / t.elapsed().as_secs_f64());
    }

    let mut batch_profile = None;
    let batch_decode = if options.batch > 1 {
        let mut sessions = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..options.batch {
            let mut s = Session::new(model)?;
            tokens.push(s.feed(&random_ids(&mut rng, 8, vocab), &greedy)?);
            sessions.push(s);
        }
        let sampling = vec![greedy; options.batch];
        let mut step = |tokens: &mut Vec<u32>| -> Result<()> {
            let mut refs: Vec<&mut Session> = sessions.iter_mut().collect();
            *tokens = model.step_batch(&mut refs, tokens, &sampling)?;
            Ok(())
        };
        step(&mut tokens)?;
        let t = Instant::now();
        let steps = options.decode_tokens.div_ceil(options.batch).max(4);
        for _ in 0..steps {
            step(&mut tokens)?;
        }
        let tokens_per_s = (steps * options.batch) as f64 / t.elapsed().as_secs_f64();
        if options.profile_batch {
            batch_profile = profiled(model, || (0..steps).try_for_each(|_| step(&mut tokens)))?
                .map(|table| (table, options.batch, steps));
        }
        Some((options.batch, tokens_per_s))
    } else {
        None
    };

    let profile = if options.profile_tokens > 0 {
        profiled(model, || {
            (0..options.profile_tokens).try_for_each(|_| {
                next = s.feed(&[next], &greedy)?;
                Ok(())
            })
        })?
        .map(|t| (t, options.profile_tokens))
    } else {
        None
    };

    let prefill_profile = if options.profile_prefill {
        let mut fresh = Session::new(model)?;
        profiled(model, || fresh.feed(&prompt, &greedy).map(drop))?.map(|t| (t, prompt.len()))
    } else {
        None
    };

    let params = model.parameters();
    let probe_gbps = match options.probe {
        true => Some(crate::bench::kernels::best_probe_bandwidth(ctx, 0.5)?),
        false => None,
    };
    Ok(ModelBenchReport {
        adapter: format!(
            "{} ({:?})",
            ctx.adapter_info().name,
            ctx.adapter_info().backend
        ),
        parameters: params.total,
        active_parameters: model.config().active_parameters(&params),
        prefill_tokens_per_s: prefill,
        decode_tokens_per_s: decode,
        batch_decode,
        gpu_bytes: ctx.allocated_bytes(),
        state_bytes_per_sequence: model.state_bytes_per_sequence(),
        decode_weight_bytes: model.decode_weight_bytes(),
        decode_dispatches: model.decode_dispatches()?,
        probe_gbps,
        profile,
        prefill_profile,
        batch_profile,
    })
}

/// Runs `work` with every dispatch timed, and returns the per-kernel table (`None` when
/// nothing ran).
fn profiled(model: &Model, work: impl FnOnce() -> Result<()>) -> Result<Option<String>> {
    let ctx = model.context();
    let was = ctx.profiling();
    ctx.reset_profile();
    ctx.set_profiling(true);
    let result = work();
    ctx.set_profiling(was);
    result?;
    Ok(ctx.profile_report())
}

impl fmt::Display for ModelBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(f, "adapter:     {}", self.adapter)?;
        writeln!(
            f,
            "parameters:  {:.2} M ({:.2} M active per token)",
            self.parameters as f64 / 1e6,
            self.active_parameters as f64 / 1e6
        )?;
        writeln!(
            f,
            "GPU memory:  {:.1} MiB allocated (weights, state, buffers)",
            mib(self.gpu_bytes)
        )?;
        let state = self.state_bytes_per_sequence;
        match state >= 1 << 20 {
            true => writeln!(f, "state:       {:.1} MiB per sequence", mib(state))?,
            false => writeln!(
                f,
                "state:       {:.1} KiB per sequence",
                state as f64 / 1024.0
            )?,
        }
        writeln!(f, "prefill:     {:.1} tokens/s", self.prefill_tokens_per_s)?;
        writeln!(
            f,
            "decode:      {:.1} tokens/s (one sequence; {} dispatches per step)",
            self.decode_tokens_per_s, self.decode_dispatches
        )?;
        let weight_gbps = self.decode_weight_bytes as f64 * self.decode_tokens_per_s / 1e9;
        let share = match self.probe_gbps {
            Some(p) => format!(
                " = {:.0}% of the read probe's {p:.2} GB/s",
                100.0 * weight_gbps / p
            ),
            None => String::new(),
        };
        writeln!(
            f,
            "weights:     {:.1} MiB read per decode token: {weight_gbps:.2} GB/s{share}",
            mib(self.decode_weight_bytes)
        )?;
        if let Some((b, tps)) = self.batch_decode {
            writeln!(f, "decode:      {tps:.1} tokens/s ({b} sequences together)")?;
        }
        if let Some((table, steps)) = &self.profile {
            writeln!(f, "\ndecode time by kernel over {steps} tokens:\n{table}")?;
        }
        if let Some((table, sequences, steps)) = &self.batch_profile {
            writeln!(
                f,
                "\nbatched decode time by kernel, {steps} steps of {sequences} sequences:\n{table}"
            )?;
        }
        if let Some((table, tokens)) = &self.prefill_profile {
            writeln!(
                f,
                "\nprefill time by kernel, one {tokens}-token prompt:\n{table}"
            )?;
        }
        Ok(())
    }
}
