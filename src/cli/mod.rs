//! Command-line interface: argument parsing and one module per command.

pub(crate) mod bench;
mod convert;
mod generate;
mod info;
mod inspect;
mod logits;
mod model_args;
mod perplexity;
mod quantize;
mod serve;
mod threads;

use std::path::Path;

use clap::{Args, Parser, Subcommand};

use moxe::{Backend, Result};

/// Run MoxE language models on any GPU (Vulkan, Metal, DX12, OpenGL) through wgpu.
#[derive(Debug, Parser)]
#[command(name = "moxe", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where to run.
#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// Graphics API: auto, vulkan, metal, dx12 or gl.
    #[arg(long, global = true, env = "MOXE_BACKEND", default_value = "auto")]
    pub backend: Backend,
    /// Adapter index (as `moxe info` lists them) or a substring of its name.
    #[arg(long, global = true, env = "MOXE_ADAPTER")]
    pub adapter: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every GPU adapter with its backend, type, driver, limits and features.
    Info,
    /// Generate text from a prompt (streamed), or from several prompts as one batch.
    Generate(generate::GenerateArgs),
    /// Per-token NLL and perplexity of a text file.
    Perplexity(perplexity::PerplexityArgs),
    /// Write the logits after each of a list of token ids to a safetensors file.
    Logits(logits::LogitsArgs),
    /// Measure speed on the current adapter.
    Bench(bench::BenchArgs),
    /// Convert checkpoints (on the CPU): `moxe convert latent` factors dense experts.
    Convert(convert::ConvertArgs),
    /// Serve the model over HTTP with OpenAI's API (completions, chat, streaming),
    /// continuous batching and a prefix-state cache.
    Serve(serve::ServeArgs),
    /// Quantise a model's weight matrices to q8 or q4 into a new model directory (on the
    /// CPU); it loads without re-quantising.
    Quantize(quantize::QuantizeArgs),
    /// Show a model's configuration, parameter counts and memory, without the GPU.
    Inspect {
        /// Model directory (also accepted as --model); default: the bundled model.
        #[arg(conflicts_with = "model")]
        dir: Option<std::path::PathBuf>,
        /// Model directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long, default_value_os_t = moxe::checkpoint::default_model_dir())]
        model: std::path::PathBuf,
    },
}

impl GpuArgs {
    /// A GPU context on the chosen backend and adapter.
    pub fn context(&self) -> Result<moxe::Context> {
        moxe::Context::new(&moxe::ContextOptions {
            backend: self.backend,
            adapter: self.adapter.clone(),
            max_binding_bytes: None,
            kernels: moxe::context::KernelFamily::from_env()?,
            features_off: wgpu::Features::empty(),
        })
    }
}

/// Fails when the output file `path` (given by option `flag`) exists, unless `force` (a
/// file the user saved is only replaced when asked), or cannot be written as a whole file
/// (a directory, link, device or FIFO, or a missing directory: `check_target`), or is one
/// of the run's inputs, even with `force`: a file the `model` directory's load reads, or
/// one of `inputs`. Checked before any work, so a refused run costs nothing.
fn check_output_file(
    path: &Path,
    flag: &str,
    force: bool,
    model: &Path,
    inputs: &[&Path],
) -> Result<()> {
    if path.as_os_str() == "-" {
        return Err(moxe::Error::InvalidArgument(format!(
            "{flag} -: this output goes to a file, not standard output; give a file path"
        )));
    }
    let exists = moxe::checkpoint::output::check_target(path)
        .map_err(|e| moxe::Error::InvalidArgument(format!("{flag}: {e}")))?;
    // Also a model file not there yet: the next load would read what this run writes.
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let model_file = match (
        parent.canonicalize(),
        model.canonicalize(),
        path.file_name(),
    ) {
        (Ok(parent), Ok(dir), Some(name)) => {
            parent == dir
                && name
                    .to_str()
                    .is_some_and(|name| moxe::checkpoint::dir::is_model_file(&dir, name))
        }
        _ => false,
    };
    if model_file {
        return Err(moxe::Error::file(
            path,
            format!(
                "is a file of the model in {}: {flag} never writes a file its load reads; \
                 choose another path",
                model.display()
            ),
        ));
    }
    if !exists {
        return Ok(());
    }
    if let Some(input) = inputs.iter().find(|i| same_file(path, i)) {
        return Err(moxe::Error::file(
            path,
            format!(
                "is this run's input {}: {flag} does not replace it; choose another path",
                input.display()
            ),
        ));
    }
    if !force {
        return Err(moxe::Error::file(
            path,
            format!("exists: pass --force to replace it, or choose another {flag} path"),
        ));
    }
    Ok(())
}

/// Whether paths `a` and `b` name one existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Reads UTF-8 text of at most `limit` bytes from `reader` (a file at `path`, or standard
/// input when `path` is `None`): an endless source (`/dev/zero`, a FIFO that never closes
/// fed by a runaway writer) is an error once past the limit, not unbounded memory.
fn read_text(reader: impl std::io::Read, path: Option<&Path>, limit: u64) -> Result<String> {
    let mut text =
        moxe::checkpoint::files::read_utf8(reader, limit).map_err(|message| match path {
            Some(p) => moxe::Error::file(p, message),
            None => moxe::Error::InvalidArgument(format!("standard input: {message}")),
        })?;
    // A byte-order mark is not text (editors on Windows write one).
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// [`read_text`] of the file at `path`.
fn read_text_file(path: &Path, limit: u64) -> Result<String> {
    let file = std::fs::File::open(path)
        .map_err(|e| moxe::Error::file(path, format!("cannot read: {e}")))?;
    read_text(file, Some(path), limit)
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info => info::run(&cli.gpu),
        Command::Generate(args) => generate::run(&cli.gpu, &args),
        Command::Perplexity(args) => perplexity::run(&cli.gpu, &args),
        Command::Logits(args) => logits::run(&cli.gpu, &args),
        Command::Bench(args) => bench::run(&cli.gpu, &args),
        Command::Convert(args) => convert::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Serve(args) => serve::run(&cli.gpu, &args),
        Command::Inspect { dir, model } => inspect::run(dir.as_ref().unwrap_or(&model)),
    }
}
