//! mLSTM cell benchmarks: prefill tokens per second of the recurrent and the chunkwise
//! kernels on random inputs.

use std::fmt::Write as _;

use super::time_graph;
use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::mlstm_cell::{record, CellInputs, CellKernel, CellState};
use crate::ops::View;
use crate::tensor::{DType, Tensor};
use crate::testing::Rng;

/// One prefill measurement.
#[derive(Debug, Clone)]
pub struct PrefillResult {
    pub kernel: CellKernel,
    pub seqs: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Tokens per sequence.
    pub tokens: usize,
    /// Seconds per prefill of all sequences.
    pub seconds: f64,
    /// Tokens (all sequences) per second.
    pub tokens_per_sec: f64,
}

/// Times the cell alone (`kernel`) over a prefill of `seqs` sequences of `tokens` tokens with
/// `heads` heads of dim `head_dim`, on random q, k, v and gate pre-activations. Each replay
/// continues the state of the previous one, as a long prompt would.
pub fn cell_prefill(
    ctx: &Context,
    kernel: CellKernel,
    seqs: usize,
    heads: usize,
    head_dim: usize,
    tokens: usize,
    budget_secs: f64,
) -> Result<PrefillResult> {
    let rows = seqs * tokens;
    let di = heads * head_dim;
    let mut rng = Rng::new(2);
    let qkv = Tensor::from_f32(
        ctx,
        "bench qkv",
        &[rows, 3 * di],
        &rng.normal_vec(rows * 3 * di, 1.0),
    )?;
    let mut gate_values = rng.normal_vec(rows * 2 * heads, 2.0);
    for (i, g) in gate_values.iter_mut().enumerate() {
        if i % (2 * heads) >= heads {
            *g += 3.0;
        }
    }
    let gates = Tensor::from_f32(ctx, "bench gates", &[rows, 2 * heads], &gate_values)?;
    let h = Tensor::zeros(ctx, "bench h", &[rows, di], DType::F32)?;
    let state = CellState::new(ctx, seqs, heads, head_dim, head_dim)?;
    let slot_ids: Vec<u32> = (0..seqs as u32).collect();
    let slots = Tensor::from_u32(ctx, "bench slots", &[seqs], &slot_ids)?;
    let inputs = CellInputs::new(View::of(&qkv), View::of(&gates));
    let mut g = Graph::new();
    record(
        ctx,
        &mut g,
        kernel,
        &inputs,
        View::of(&h),
        &state,
        &slots,
        seqs,
        tokens,
    )?;
    let seconds = time_graph(ctx, &g, budget_secs, 2)?;
    Ok(PrefillResult {
        kernel,
        seqs,
        heads,
        head_dim,
        tokens,
        seconds,
        tokens_per_sec: rows as f64 / seconds,
    })
}

/// The mLSTM lines of `moxe bench kernels`: prefill tokens/s of every cell kernel for one
/// sequence of 512 tokens with 4 heads of dim 64 (D = 128) and of dim 512 (D = 1024); `*`
/// marks the kernels [`CellKernel::choose`] picks on this adapter for decode and prefill.
pub fn report(ctx: &Context, budget_secs: f64) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<26} {:>15} {:>10} {:>12}",
        "mlstm cell prefill", "kernel", "time ms", "tokens/s"
    );
    for head_dim in [64, 512] {
        let chosen = [
            CellKernel::choose(ctx, 1, head_dim),
            CellKernel::choose(ctx, 512, head_dim),
        ];
        for kernel in CellKernel::all_available(ctx) {
            let r = cell_prefill(ctx, kernel, 1, 4, head_dim, 512, budget_secs)?;
            let mark = if chosen.contains(&kernel) { "*" } else { " " };
            let _ = writeln!(
                s,
                "{:<26} {:>14}{mark} {:>10.2} {:>12.0}",
                format!("B 1 x 512, NH 4 x DH {head_dim}"),
                format!("{kernel:?}").to_lowercase(),
                r.seconds * 1e3,
                r.tokens_per_sec
            );
        }
    }
    Ok(s)
}
