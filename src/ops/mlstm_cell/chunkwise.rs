//! The chunkwise-parallel mLSTM cell kernel (`shaders/mlstm_chunk.wgsl`) for prefill: chunks
//! of [`CHUNK`] tokens, the cumulative log-forget form inside a chunk and the (C, n, m)
//! recurrence between chunks, starting from each sequence's state and writing the final state
//! back, so that a prefill followed by decode steps equals the token-by-token recurrence.
//!
//! Two kernels, recorded once per segment of tokens (see [`super::LOOP_BUDGET`]); in both
//! the q and k of a chunk stream through workgroup memory in tiles, so only n (held in
//! workgroup memory) bounds the head dim: DH <= 512.
//! - `shaders/mlstm_chunk.wgsl`: one workgroup per 64-column block of C, head and sequence,
//!   one column per invocation, then a commit dispatch of the final n and m;
//! - `shaders/mlstm_chunk_wide.wgsl`: one workgroup per head and sequence, eight columns
//!   per invocation.

use super::{bindings, params, segments, CellInputs, CellState};
use crate::context::Context;
use crate::error::Result;
use crate::graph::{Graph, Workgroups};
use crate::ops::View;
use crate::tensor::Tensor;

/// Tokens per chunk.
pub const CHUNK: usize = 32;

/// Columns of C per workgroup.
const BLOCK: usize = 64;

/// Records the chunkwise cell over `seqs` sequences of `tokens` tokens (shapes: see
/// [`super`]), with the wide kernel when `wide`.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &Context,
    graph: &mut Graph,
    wide: bool,
    inputs: &CellInputs<'_>,
    h: View<'_>,
    state: &CellState,
    slots: &Tensor,
    seqs: usize,
    tokens: usize,
) -> Result<()> {
    let params = params(inputs, &h, state, slots, seqs, tokens)?;
    if seqs == 0 || tokens == 0 {
        return Ok(());
    }
    // Workgroups per head: blocks of C's DV columns.
    let blocks = state.v_dim().div_ceil(BLOCK);
    // Loop iterations per chunk and per dispatch (see the shaders), DH = max(DK, DV).
    let dh = state.qk_dim().max(state.v_dim());
    let (tiles, dh_blocks) = (dh.div_ceil(32), dh.div_ceil(BLOCK));
    let (shader, per_chunk, fixed) = if wide {
        (
            "mlstm_chunk_wide",
            1008 + 380 * tiles + 34 * dh_blocks,
            11 + dh_blocks,
        )
    } else {
        (
            "mlstm_chunk",
            544 + 405 * tiles + 34 * dh_blocks,
            12 + dh_blocks,
        )
    };
    let chunk = ctx.pipeline(shader, "chunk", &[])?;
    for range in segments(tokens, CHUNK, per_chunk, fixed) {
        let uniform = ctx.uniform("mlstm chunk params", &params.segment(range))?;
        let mut resources = bindings(&uniform, inputs, &h, state, slots)?;
        if wide {
            let grid = Workgroups::grid(state.heads(), seqs, 1)?;
            graph.dispatch(ctx, &chunk, &resources, grid)?;
        } else {
            resources.push(state.pending.binding()?);
            let grid = Workgroups::grid(blocks, state.heads(), seqs)?;
            graph.dispatch(ctx, &chunk, &resources, grid)?;
            let commit = ctx.pipeline(shader, "commit", &[])?;
            let grid = Workgroups::grid(state.heads(), seqs, 1)?;
            graph.dispatch(ctx, &commit, &resources, grid)?;
        }
    }
    Ok(())
}
