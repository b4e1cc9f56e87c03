//! `moxe bench`: speed measurements on the current adapter.
//!
//! `moxe bench` measures a whole model (a checkpoint, or random weights for any config with
//! `--config`) and, when the PyTorch reference environment is present, the reference's own
//! speed on the same machine; `moxe bench kernels` and `moxe bench moe` measure single kernels.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use safetensors::Dtype;

use clap::{Args, Subcommand};

use moxe::arch::ModelConfig;
use moxe::bench::model::{run as bench_model, ModelBenchOptions};
use moxe::checkpoint::random::{random_ranks, random_weights};
use moxe::runtime::{LoadOptions, Model};
use moxe::{DType, Error, Result};

use super::model_args::{load_progress, report_load, DtypeArg, ModelArgs};
use super::GpuArgs;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: Option<BenchWhat>,
    #[command(flatten)]
    pub model: ModelBenchArgs,
    /// Seconds to spend on each kernel measurement (0 to 3600).
    #[arg(long, global = true, default_value_t = 1.0, value_parser = seconds)]
    pub seconds: f64,
}

/// A number of seconds from 0 to an hour.
fn seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=3600.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not between 0 and 3600 seconds")),
        Err(e) => Err(e.to_string()),
    }
}

/// Whole-model benchmark options.
#[derive(Debug, Args)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Random weights for this config.json instead of a checkpoint (f16 unless --dtype).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// With --config: only this many layers (MoxE) or blocks, for a model too large for
    /// this machine (figures per block scale to the whole model).
    #[arg(long, requires = "config")]
    pub blocks: Option<usize>,
    /// Skip the read-bandwidth probe (decode's weight GB/s is then shown alone).
    #[arg(long)]
    pub no_probe: bool,
    /// Prompt tokens of the timed prefill.
    #[arg(long, default_value_t = 128, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MOST_TOKENS))]
    pub prompt_tokens: usize,
    /// Timed decode steps.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MOST_TOKENS))]
    pub decode_tokens: usize,
    /// Sequences of the batched decode measurement (1 = skip; the model holds one more for
    /// the single-sequence measurements).
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..moxe::runtime::MAX_SEQUENCES as u64))]
    pub batch: usize,
    /// Decode steps timed per kernel (0 = skip the per-kernel split).
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MOST_TOKENS))]
    pub profile_tokens: usize,
    /// Also time one prefill of the prompt per kernel.
    #[arg(long)]
    pub profile_prefill: bool,
    /// Also time the batched decode steps (`--batch` sequences, at least 2) per kernel.
    #[arg(long)]
    pub profile_batch: bool,
    /// Timed runs of prefill and of decode (engine and reference); the fastest is shown.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub repeats: usize,
    /// Do not run the PyTorch reference beside the engine.
    #[arg(long)]
    pub no_reference: bool,
}

/// The most prompt, decode or profiled tokens a benchmark takes.
const MOST_TOKENS: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// GEMV bandwidth in f32, f16, bf16, q8 and q4 beside a read-bandwidth probe, the prefill
    /// GEMM, and the cell kernels.
    Kernels,
    /// The HTTP server under load: aggregate tokens/s at 1, 4 and 16 concurrent streams,
    /// and time to first token with and without a cached 1,000-token prefix.
    Serve {
        /// Model directory; default: the bundled model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Tokens each stream generates.
        #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MOST_TOKENS))]
        tokens: usize,
        /// Model replicas of the server [default: as `moxe serve` chooses].
        #[arg(long)]
        replicas: Option<usize>,
        /// Interleaved rounds over 1, 4 and 16 streams; each figure is the best round.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
        rounds: u64,
    },
    /// One MoE layer step at k = 1, 2 and E: time must grow with the active experts.
    Moe {
        /// Model width D (SwiGLU experts of hidden width 2 D).
        #[arg(long, default_value_t = 512, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=8192))]
        dim: usize,
        /// Experts E.
        #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=moxe::arch::moxe::config::MAX_EXPERTS as u64))]
        experts: usize,
        /// Tokens per step (1 = decode).
        #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
        tokens: usize,
        /// Timed steps per k.
        #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
        iters: usize,
    },
}

pub fn run(gpu: &GpuArgs, args: &BenchArgs) -> Result<()> {
    match &args.what {
        Some(BenchWhat::Kernels) => {
            let ctx = gpu.context()?;
            print!("{}", moxe::bench::kernels::report(&ctx, args.seconds)?);
        }
        Some(BenchWhat::Moe {
            dim,
            experts,
            tokens,
            iters,
        }) => {
            let ctx = gpu.context()?;
            let options = moxe::bench::moe::MoeBenchOptions {
                dim: *dim,
                experts: *experts,
                tokens: *tokens,
                top_ks: vec![1, 2, *experts],
                iters: *iters,
                ..Default::default()
            };
            print!("{}", moxe::bench::moe::moe_layer(&ctx, &options)?);
        }
        Some(BenchWhat::Serve {
            model,
            tokens,
            replicas,
            rounds,
        }) => {
            let dir = model.as_ref().unwrap_or(&args.model.model.model);
            let small = super::threads::for_decode(&dir.join("config.json"));
            let ctx = gpu.context()?;
            let slots = moxe::bench::serve::ServeBenchOptions::default().slots();
            let options = moxe::bench::serve::ServeBenchOptions {
                tokens: *tokens,
                rounds: *rounds as usize,
                replicas: Some(
                    replicas.unwrap_or_else(|| super::serve::default_replicas(&ctx, slots, small)),
                ),
                ..Default::default()
            };
            print!("{}", moxe::bench::serve::run(&ctx, dir, &options)?);
        }
        None => model(gpu, &args.model)?,
    }
    Ok(())
}

fn model(gpu: &GpuArgs, args: &ModelBenchArgs) -> Result<()> {
    // One sequence for the single-sequence measurements, `batch` for the batched one.
    let sequences = args.batch + 1;
    let config = match &args.config {
        Some(path) => path.clone(),
        None => args.model.model.join("config.json"),
    };
    super::threads::for_decode(&config);
    let model = match &args.config {
        Some(path) => random_model(gpu, path, args.blocks, args.model.dtype, sequences)?,
        None => args.model.load(gpu, sequences)?,
    };
    let options = ModelBenchOptions {
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        batch: args.batch,
        profile_tokens: args.profile_tokens,
        profile_prefill: args.profile_prefill,
        profile_batch: args.profile_batch,
        repeats: args.repeats,
        probe: !args.no_probe,
    };
    let source = match (&args.config, args.blocks) {
        (Some(p), Some(n)) => format!("random weights for {}, {n} blocks", p.display()),
        (Some(p), None) => format!("random weights for {}", p.display()),
        (None, _) => args.model.model.display().to_string(),
    };
    println!("model:       {source} ({} weights)", model.dtype());
    // Only on a CPU adapter (on a GPU the variable does nothing).
    let cpu = model.context().is_cpu();
    if let Some(n) = std::env::var_os("LP_NUM_THREADS").filter(|_| cpu) {
        println!("lavapipe:    LP_NUM_THREADS={}", n.to_string_lossy());
    }
    let report = bench_model(&model, &options)?;
    print!("{report}");
    if args.config.is_none() && !args.no_reference {
        reference(
            &args.model.model,
            args,
            report.decode_tokens_per_s,
            report.prefill_tokens_per_s,
        );
    }
    Ok(())
}

/// A model with random weights for the config at `path` (with `blocks` layers or blocks
/// when given), matrices stored as `dtype` (f16 by default).
fn random_model(
    gpu: &GpuArgs,
    path: &Path,
    blocks: Option<usize>,
    dtype: Option<DtypeArg>,
    sequences: usize,
) -> Result<Arc<Model>> {
    let mut config = ModelConfig::from_file(path)?;
    if let Some(n) = blocks {
        config = config.with_layers(n)?;
    }
    let dtype = dtype.map_or(DType::F16, DtypeArg::dtype);
    // Quantised loads quantise random bf16 values, as they would a bf16 checkpoint's.
    let stored = match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        _ => Dtype::BF16,
    };
    let weights = random_weights(&config, 1, stored);
    let ranks = random_ranks(&config);
    let ctx = gpu.context()?;
    let (bar, progress) = load_progress("loading");
    let options = LoadOptions {
        dtype: Some(dtype),
        max_sequences: sequences,
        progress: Some(progress),
        ..Default::default()
    };
    let t = Instant::now();
    let model = Model::from_parts(&ctx, config, &weights, None, &ranks, &options);
    bar.finish_and_clear();
    let model = model?;
    report_load(&ctx, &model, "random weights", t);
    Ok(Arc::new(model))
}

/// The Python of the reference environment: `MOXE_REFERENCE_PYTHON`, else `.venv/bin/python`.
fn reference_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MOXE_REFERENCE_PYTHON") {
        return Some(PathBuf::from(p));
    }
    [
        PathBuf::from(".venv/bin/python"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// Runs `reference/bench_step.py` and prints its speed beside the engine's.
fn reference(dir: &Path, args: &ModelBenchArgs, decode: f64, prefill: f64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/bench_step.py");
    let Some(python) = reference_python().filter(|_| script.exists()) else {
        println!("\nreference:   not measured (no reference environment: see reference/README.md)");
        return;
    };
    let out = Command::new(&python)
        .arg(&script)
        .arg(dir)
        .args(["--decode", &args.decode_tokens.to_string()])
        .args(["--prompt", &args.prompt_tokens.to_string()])
        .args(["--repeats", &args.repeats.to_string()])
        .output();
    let parsed = out
        .map_err(|e| Error::InvalidArgument(format!("cannot run {}: {e}", python.display())))
        .and_then(|o| {
            if !o.status.success() {
                return Err(Error::InvalidArgument(
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string(),
                ));
            }
            serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .map_err(|e| Error::InvalidArgument(e.to_string()))
        });
    match parsed {
        Ok(v) => {
            let r_decode = v["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            let r_prefill = v["prefill_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "\nPyTorch reference on this machine (torch {}, {} threads):",
                v["torch"].as_str().unwrap_or("?"),
                v["threads"]
            );
            println!(
                "  decode:    {r_decode:.1} tokens/s (step(), one sequence)  -> engine is {:.2}x",
                decode / r_decode
            );
            println!(
                "  prefill:   {r_prefill:.1} tokens/s (full-sequence forward) -> engine is {:.2}x",
                prefill / r_prefill
            );
        }
        Err(e) => println!("\nreference:   not measured ({e})"),
    }
}
