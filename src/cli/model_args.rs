//! Options every model command shares, and loading with them: a progress bar while a large
//! checkpoint streams to the GPU, and a report of the load time and memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use moxe::checkpoint::ProgressFn;
use moxe::runtime::{LoadOptions, Model};
use moxe::{Context, DType, Result};

use super::GpuArgs;

/// Storage type of the weight matrices.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
    /// int8 with a scale per block of 32 weights (docs/QUANT_FORMAT.md).
    Q8,
    /// 4-bit with a scale and minimum per block of 32 weights.
    Q4,
}

impl DtypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
            DtypeArg::Q8 => DType::Q8,
            DtypeArg::Q4 => DType::Q4,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory: config.json and model.safetensors (or a Hugging Face snapshot as
    /// downloaded, sharded), optionally tokenizer.json; default: the bundled model.
    #[arg(long, default_value_os_t = moxe::checkpoint::default_model_dir())]
    pub model: PathBuf,
    /// Convert (or quantise) weight matrices at load (default: as stored in the
    /// checkpoint).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

/// Loads shorter than this many bytes of weights show no progress bar or report.
const REPORT_ABOVE: u64 = 256 << 20;

/// A progress bar on stderr ("{what} weights", hidden where stderr is not a terminal) for work above
/// [`REPORT_ABOVE`] bytes.
pub fn load_progress(what: &str) -> (ProgressBar, ProgressFn) {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} weights [{{bar:40}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, {{eta}} left)"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let shown = bar.clone();
    let progress: ProgressFn = Arc::new(move |done, total| {
        if total > REPORT_ABOVE && shown.is_hidden() && shown.position() == 0 {
            shown.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        shown.set_length(total);
        shown.set_position(done);
    });
    (bar, progress)
}

/// Prints how long a load took and what it holds (stderr), for models above
/// [`REPORT_ABOVE`] bytes of weights; smaller ones log it (`RUST_LOG=info`).
pub fn report_load(ctx: &Context, model: &Model, what: &str, started: Instant) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let text = format!(
        "loaded {what} in {:.1} s: {} weights, {:.1} MiB on the GPU, {:.1} MiB of state per \
         sequence ({} sequences)",
        started.elapsed().as_secs_f64(),
        model.dtype(),
        mib(ctx.allocated_bytes()),
        mib(model.state_bytes_per_sequence()),
        model.options().max_sequences
    );
    if ctx.allocated_bytes() > REPORT_ABOVE {
        eprintln!("{text}");
    } else {
        log::info!("{text}");
    }
}

impl ModelArgs {
    /// Loads the model on the chosen GPU, holding state for `sequences` sequences.
    pub fn load(&self, gpu: &GpuArgs, sequences: usize) -> Result<Arc<Model>> {
        let ctx = gpu.context()?;
        let (bar, progress) = load_progress("loading");
        let options = LoadOptions {
            dtype: self.dtype.map(DtypeArg::dtype),
            max_sequences: sequences.max(1),
            progress: Some(progress),
            ..Default::default()
        };
        let t = Instant::now();
        let model = Model::load(&ctx, &self.model, &options);
        bar.finish_and_clear();
        let model = model?;
        report_load(&ctx, &model, &self.model.display().to_string(), t);
        Ok(Arc::new(model))
    }
}
