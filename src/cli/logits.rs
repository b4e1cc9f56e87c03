//! `moxe logits`: the logits after each of a list of token ids, to a safetensors file.

use std::path::PathBuf;

use clap::Args;
use safetensors::tensor::{Dtype, TensorView};

use moxe::runtime::Session;
use moxe::{Error, Result};

use super::model_args::ModelArgs;
use super::GpuArgs;

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_negative_numbers = true
    )]
    pub ids: Vec<u32>,
    /// Output file: `logits` (N, V) f32 and `ids` (N) i32.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(gpu: &GpuArgs, args: &LogitsArgs) -> Result<()> {
    super::check_output_file(&args.out, "--out", args.force, &args.model.model, &[])?;
    let model = args.model.load(gpu, 1)?;
    let mut s = Session::new(&model)?;
    let logits = s.logits(&args.ids)?;
    let ids: Vec<i32> = args.ids.iter().map(|&i| i as i32).collect();
    let (n, v) = (args.ids.len(), model.vocab());
    let enc =
        |e: safetensors::SafeTensorError| Error::file(&args.out, format!("cannot encode: {e}"));
    let views = vec![
        (
            "logits".to_string(),
            TensorView::new(Dtype::F32, vec![n, v], bytemuck::cast_slice(&logits)).map_err(enc)?,
        ),
        (
            "ids".to_string(),
            TensorView::new(Dtype::I32, vec![n], bytemuck::cast_slice(&ids)).map_err(enc)?,
        ),
    ];
    let data = safetensors::serialize(views, None).map_err(enc)?;
    moxe::checkpoint::output::write_atomically(&args.out, &data)?;
    println!("wrote {} ({n} x {v} logits)", args.out.display());
    Ok(())
}
