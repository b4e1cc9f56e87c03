//! The recurrent mLSTM cell kernel (`shaders/mlstm_step.wgsl`): one workgroup per (head,
//! sequence) loops over the tokens; each invocation owns columns of C. Used for decode
//! (N = 1); over N tokens it is the token-by-token reference the chunkwise kernel is
//! measured against. Long inputs are recorded as several dispatches (see
//! [`super::LOOP_BUDGET`]).

use super::{params, segments, CellInputs, MlstmState};
use crate::context::Context;
use crate::error::Result;
use crate::graph::{Graph, Workgroups};
use crate::ops::View;
use crate::tensor::Tensor;

/// Records the recurrent cell over `seqs` sequences of `tokens` tokens (shapes: see
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
    let pipeline = ctx.pipeline("mlstm_step", "step", &[])?;
    // Loop iterations per token (see the shader).
    let dh = state.head_dim();
    let per_token = 11 + dh.div_ceil(64) * (dh / 4 + 8);
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
