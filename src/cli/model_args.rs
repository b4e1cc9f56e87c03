//! Options every model command shares, and loading with them.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use moxe::model::{LoadOptions, Model};
use moxe::{DType, Result};

use super::GpuArgs;

/// Storage type of the weight matrices.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json); default: the
    /// bundled model.
    #[arg(long, default_value_os_t = moxe::model::dir::default_model_dir())]
    pub model: PathBuf,
    /// Convert weight matrices at load (default: as stored in the checkpoint).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

impl ModelArgs {
    /// Loads the model on the chosen GPU, holding state for `sequences` sequences.
    pub fn load(&self, gpu: &GpuArgs, sequences: usize) -> Result<Arc<Model>> {
        let ctx = gpu.context()?;
        let options = LoadOptions {
            dtype: self.dtype.map(|d| match d {
                DtypeArg::F32 => DType::F32,
                DtypeArg::F16 => DType::F16,
            }),
            max_sequences: sequences.max(1),
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let model = Model::load(&ctx, &self.model, &options)?;
        log::info!(
            "loaded {} in {:.2} s ({} weights, {:.1} MiB on the GPU)",
            self.model.display(),
            t.elapsed().as_secs_f64(),
            model.dtype(),
            ctx.allocated_bytes() as f64 / (1024.0 * 1024.0)
        );
        Ok(Arc::new(model))
    }
}
