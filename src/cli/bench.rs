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
    /// One MoE layer step at k = 1, 2 and E: time must grow with the active experts.
    Moe {
        /// Model width D (SwiGLU experts of hidden width 2 D).
        #[arg(long, default_value_t = 512)]
        dim: usize,
        /// Experts E.
        #[arg(long, default_value_t = 8)]
        experts: usize,
        /// Tokens per step (1 = decode).
        #[arg(long, default_value_t = 1)]
        tokens: usize,
        /// Timed steps per k.
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
}

pub fn run(gpu: &GpuArgs, args: &BenchArgs) -> Result<()> {
    let ctx = gpu.context()?;
    match args.what {
        BenchWhat::Kernels => print!("{}", moxe::bench::kernels::report(&ctx, args.seconds)?),
        BenchWhat::Moe {
            dim,
            experts,
            tokens,
            iters,
        } => {
            let options = moxe::bench::moe::MoeBenchOptions {
                dim,
                experts,
                tokens,
                top_ks: vec![1, 2, experts],
                iters,
                ..Default::default()
            };
            print!("{}", moxe::bench::moe::moe_layer(&ctx, &options)?);
        }
    }
    Ok(())
}
