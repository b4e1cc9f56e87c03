//! The chunkwise-parallel mLSTM cell kernel (`shaders/mlstm_chunk.wgsl`) for prefill: chunks
//! of [`CHUNK`] tokens, the cumulative log-forget form inside a chunk and the (C, n, m)
//! recurrence between chunks, starting from each sequence's state and writing the final state
//! back, so that a prefill followed by decode steps equals the token-by-token recurrence.
//!
//! Records two dispatches per segment of tokens (see [`super::LOOP_BUDGET`]): the chunk
//! kernel (one workgroup per 64-column block of C, head and sequence; the q and k of a chunk
//! stream through workgroup memory in tiles, so only n bounds the head dim: DH <= 512), then
//! a commit of the final n and m.

use super::{params, segments, CellInputs, MlstmState};
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
/// [`super`]).
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &Context,
    graph: &mut Graph,
    inputs: &CellInputs<'_>,
    h: View<'_>,
    state: &MlstmState,
    slots: &Tensor,
    seqs: usize,
    tokens: usize,
) -> Result<()> {
    let params = params(inputs, &h, state, slots, seqs, tokens)?;
    if seqs == 0 || tokens == 0 {
        return Ok(());
    }
    let chunk = ctx.pipeline("mlstm_chunk", "chunk", &[])?;
    let commit = ctx.pipeline("mlstm_chunk", "commit", &[])?;
    let dh = state.head_dim();
    let blocks = dh.div_ceil(BLOCK);
    // Loop iterations per chunk and per dispatch (see the shader).
    let per_chunk = 544 + 405 * dh.div_ceil(32) + 34 * blocks;
    for range in segments(tokens, CHUNK, per_chunk, 12 + blocks) {
        let uniform = ctx.uniform("mlstm chunk params", &params.segment(range))?;
        let resources = [
            uniform.as_entire_binding(),
            inputs.qkv.binding()?,
            inputs.gates.binding()?,
            slots.binding()?,
            h.binding()?,
            state.c.binding()?,
            state.n.binding()?,
            state.m.binding()?,
            state.pending.binding()?,
        ];
        graph.dispatch(
            ctx,
            &chunk,
            &resources,
            Workgroups::grid(blocks, state.heads(), seqs)?,
        )?;
        graph.dispatch(
            ctx,
            &commit,
            &resources,
            Workgroups::grid(state.heads(), seqs, 1)?,
        )?;
    }
    Ok(())
}
