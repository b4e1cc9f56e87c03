//! The recurrent mLSTM cell kernels (`shaders/mlstm_step.wgsl`, one column of C per
//! invocation, and `shaders/mlstm_step_wide.wgsl`, eight): one workgroup per (head,
//! sequence) loops over the tokens. Used for decode (N = 1); over N tokens it is the
//! token-by-token form the chunkwise kernels are measured against. Long inputs are recorded
//! as several dispatches (see [`super::LOOP_BUDGET`]).

use super::{params, segments, CellInputs, CellState};
use crate::context::Context;
use crate::error::Result;
use crate::graph::{Graph, Workgroups};
use crate::ops::View;
use crate::tensor::Tensor;

/// Records the recurrent cell over `seqs` sequences of `tokens` tokens (shapes: see
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
    // Loop iterations per token (see the shaders).
    let dh = state.head_dim();
    let (shader, per_token) = if wide {
        ("mlstm_step_wide", 21 + 2 * dh.div_ceil(64) + dh)
    } else {
        ("mlstm_step", 11 + dh.div_ceil(64) * (dh / 4 + 8))
    };
    let pipeline = ctx.pipeline(shader, "step", &[])?;
    for range in segments(tokens, 1, per_token, 1) {
        let uniform = ctx.uniform("mlstm step params", &params.segment(range))?;
        graph.dispatch(
            ctx,
            &pipeline,
            &[
                uniform.as_entire_binding(),
                inputs.qkv.binding()?,
                inputs.gates.binding()?,
                slots.binding()?,
                h.binding()?,
                state.c.binding()?,
                state.n.binding()?,
                state.m.binding()?,
            ],
            Workgroups::grid(state.heads(), seqs, 1)?,
        )?;
    }
    Ok(())
}
