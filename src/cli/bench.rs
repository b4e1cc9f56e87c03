//! `moxe bench`: speed measurements on the current adapter.

use clap::{Args, Subcommand};

use moxe::Result;

use super::GpuArgs;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
    /// Seconds to spend on each measurement.
    #[arg(long, global = true, default_value_t = 1.0)]
    pub seconds: f64,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// GEMV bandwidth in f32 and f16 beside a read-bandwidth probe.
    Kernels,
}

pub fn run(gpu: &GpuArgs, args: &BenchArgs) -> Result<()> {
    let ctx = gpu.context()?;
    match args.what {
        BenchWhat::Kernels => print!("{}", moxe::bench::kernels::report(&ctx, args.seconds)?),
    }
    Ok(())
}
