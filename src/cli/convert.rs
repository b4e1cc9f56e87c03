//! `moxe convert`: checkpoint conversions on the CPU.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use moxe::convert::latent::{convert, RankChoice};
use moxe::Result;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(subcommand)]
    pub what: ConvertWhat,
}

#[derive(Debug, Subcommand)]
pub enum ConvertWhat {
    /// Dense experts -> latent experts (MoLAE), data-free: the stacked SVD of every
    /// (layer, group, factored matrix); prints the relative Frobenius errors and the
    /// parameter counts before and after.
    Latent(LatentArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("choice").required(true).args(["rank", "energy"])))]
pub struct LatentArgs {
    /// Rank r of every shared projection (capped at the full rank).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Smallest rank keeping this fraction of the squared singular values, per
    /// (layer, group, matrix), in (0, 1].
    #[arg(long)]
    pub energy: Option<f64>,
    /// Groups G of contiguous experts sharing a projection (must divide the experts; even for
    /// xlstm experts).
    #[arg(long, default_value_t = 2)]
    pub groups: usize,
    /// Dense-expert model directory; default: the bundled model.
    #[arg(long, default_value_os_t = moxe::checkpoint::default_model_dir())]
    pub model: PathBuf,
    /// Output directory (created; a model already there is kept unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace config.json, model.safetensors and tokenizer.json already in --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    match &args.what {
        ConvertWhat::Latent(a) => {
            let choice = match (a.rank, a.energy) {
                (Some(r), None) => RankChoice::Rank(r),
                (None, Some(e)) => RankChoice::Energy(e),
                _ => {
                    return Err(moxe::Error::InvalidArgument(
                        "give exactly one of --rank and --energy".into(),
                    ))
                }
            };
            let report = convert(&a.model, &a.out, choice, a.groups, a.force)?;
            print!("{}", report.table());
            println!("wrote {}", a.out.display());
            Ok(())
        }
    }
}
