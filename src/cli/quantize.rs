//! `moxe quantize`: a model directory with its weight matrices in q8 or q4.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use moxe::convert::quantize::quantize;
use moxe::quant::QuantFormat;
use moxe::Result;

use super::model_args::load_progress;

/// The quantised format to write.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// int8 with a scale per block of 32 weights (9 bits per weight).
    Q8,
    /// 4-bit with a scale and minimum per block of 32 weights (5 bits per weight).
    Q4,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Model directory to quantise (float weights, or quantised ones to re-quantise);
    /// default: the bundled model.
    #[arg(long, default_value_os_t = moxe::checkpoint::default_model_dir())]
    pub model: PathBuf,
    /// The format of the weight matrices (docs/QUANT_FORMAT.md).
    #[arg(long, value_enum)]
    pub dtype: FormatArg,
    /// Output directory (created; a model already there is kept unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the files of a model already in --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &QuantizeArgs) -> Result<()> {
    let format = match args.dtype {
        FormatArg::Q8 => QuantFormat::Q8,
        FormatArg::Q4 => QuantFormat::Q4,
    };
    let (bar, progress) = load_progress("quantising");
    let report = quantize(&args.model, &args.out, format, args.force, Some(progress));
    bar.finish_and_clear();
    print!("{}", report?.summary());
    Ok(())
}
