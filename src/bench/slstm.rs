//! sLSTM cell prefill speed: tokens/s of the cell kernel (the recurrence over a sequence,
//! after the input projections), on random weights.

use std::fmt::Write;

use super::time_graph;
use crate::context::Context;
use crate::error::Result;
use crate::ops::slstm_cell::RandomCell;
use crate::tensor::DType;

/// The sLSTM lines of `moxe bench kernels`: prefill tokens/s of the cell for one sequence
/// of 512 tokens with 4 heads of dim 32 (D = 128) and of dim 256 (D = 1024), with the
/// recurrent kernel R stored in f32 and in f16.
pub fn report(ctx: &Context, budget_secs: f64) -> Result<String> {
    let tokens = 512;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<26} {:>15} {:>10} {:>12}",
        "slstm cell prefill", "R", "time ms", "tokens/s"
    );
    for head_dim in [32, 256] {
        for dtype in [DType::F32, DType::F16] {
            let cell = RandomCell::new(ctx, 1, 4, head_dim, tokens, dtype)?;
            let seconds = time_graph(ctx, cell.graph(), budget_secs, 2)?;
            let place = if cell.uses_workgroup_memory(ctx) {
                "workgroup"
            } else {
                "storage"
            };
            let _ = writeln!(
                s,
                "{:<26} {:>15} {:>10.2} {:>12.0}",
                format!("B 1 x {tokens}, NH 4 x DH {head_dim}"),
                format!("{dtype} {place}"),
                seconds * 1e3,
                tokens as f64 / seconds
            );
        }
    }
    Ok(s)
}
