//! The recurrent mLSTM cell kernels (`shaders/mlstm_step.wgsl`, one column of C per
//! invocation, `shaders/mlstm_step_wide.wgsl`, eight, and `shaders/mlstm_step_simd.wgsl`,
//! eight per invocation in a workgroup of eight, holding them in workgroup memory over the
//! tokens of a prefill when the heads are small): one workgroup per (head, sequence) loops
//! over the tokens. Used for decode (N = 1); over N tokens it is the
//! token-by-token form the chunkwise kernels are measured against. Long inputs are recorded
//! as several dispatches (see [`super::LOOP_BUDGET`]). `shaders/mlstm_step_tiles.wgsl`
//! spreads each head over workgroups of 32 columns instead and takes one token per pair of
//! dispatches (the tiles, then the n and m update).

use super::{bindings, params, segments, CellInputs, CellKernel, CellState};
use crate::context::Context;
use crate::error::Result;
use crate::graph::{Graph, Workgroups};
use crate::ops::View;
use crate::tensor::Tensor;

/// Records the recurrent cell over `seqs` sequences of `tokens` tokens (shapes: see
/// [`super`]) with one of the recurrent kernels.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &Context,
    graph: &mut Graph,
    kernel: CellKernel,
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
    if kernel == CellKernel::RecurrentTiles {
        return record_tiles(ctx, graph, inputs, h, state, slots, seqs, params, tokens);
    }
    // Loop iterations per token (see the shaders), with DH = max(DK, DV).
    let dh = state.qk_dim().max(state.v_dim());
    let qkv = inputs.qkv;
    // q and k as vec4 (mlstm_step_simd): every quad of a head starts on 16 bytes.
    let vec4 = state.qk_dim() % 4 == 0 && qkv.rows_in_quads();
    let dk = state.qk_dim();
    let simd = match kernel {
        CellKernel::RecurrentSimd64 => "mlstm_step_simd64",
        _ => "mlstm_step_simd",
    };
    let (shader, entry, per_token, fixed, constants) = match kernel {
        CellKernel::RecurrentWide => (
            "mlstm_step_wide",
            "step",
            21 + 2 * dh.div_ceil(64) + dh,
            1,
            vec![],
        ),
        k if k.is_simd() && tokens > 1 && holds_state(ctx, state) => (
            simd,
            "step_held",
            11 + dk / 2,
            3 * dk + 8,
            vec![("VEC4", vec4 as u8 as f64)],
        ),
        k if k.is_simd() => (
            simd,
            "step",
            7 + dh / 4 + dh.div_ceil(64) * (20 + dh / 4),
            1,
            vec![("VEC4", vec4 as u8 as f64)],
        ),
        _ => (
            "mlstm_step",
            "step",
            11 + dh.div_ceil(64) * (dh / 4 + 8),
            1,
            vec![],
        ),
    };
    let pipeline = ctx.pipeline(shader, entry, &constants)?;
    for range in segments(tokens, 1, per_token, fixed) {
        let uniform = ctx.uniform("mlstm step params", &params.segment(range))?;
        let mut resources = bindings(&uniform, inputs, &h, state, slots)?;
        if kernel.is_simd() {
            resources.push(qkv.binding()?);
        }
        graph.dispatch(
            ctx,
            &pipeline,
            &resources,
            Workgroups::grid(state.heads(), seqs, 1)?,
        )?;
    }
    Ok(())
}

/// Whether `mlstm_step_simd.wgsl`'s `step_held` fits the state's heads: it holds one
/// 8-column block of C per invocation (DV <= 64) and DK <= 64 rows (a multiple of 4) in
/// workgroup memory (16 KiB, where the device allows it). Used for more than one token
/// (prefill): on lavapipe (2026-12-04), 512 tokens of 4 heads x 64 took `step` 13.9-14.8
/// ms and `step_held` 10.1-10.2 with one token per pass over C, 5.2 with four; for one
/// token it only adds the copy.
fn holds_state(ctx: &Context, state: &CellState) -> bool {
    const HELD_ROWS: usize = 64;
    // The shader's `held`: 8 invocations x 2 HELD_ROWS vec4.
    const HELD_BYTES: u32 = 8 * 2 * HELD_ROWS as u32 * 16;
    let dk = state.qk_dim();
    dk <= HELD_ROWS
        && dk % 4 == 0
        && state.v_dim() <= HELD_ROWS
        && ctx.limits().max_compute_workgroup_storage_size >= HELD_BYTES
}

/// Columns of C per workgroup of `mlstm_step_tiles.wgsl`'s `tile`.
const TILE: usize = 32;

/// The tiled kernel: for each token, `tile` over (NH * ceil(DV / TILE), B) workgroups, then
/// `update` over (NH, B).
#[allow(clippy::too_many_arguments)]
fn record_tiles(
    ctx: &Context,
    graph: &mut Graph,
    inputs: &CellInputs<'_>,
    h: View<'_>,
    state: &CellState,
    slots: &Tensor,
    seqs: usize,
    params: super::Params,
    tokens: usize,
) -> Result<()> {
    let tile = ctx.pipeline("mlstm_step_tiles", "tile", &[])?;
    let update = ctx.pipeline("mlstm_step_tiles", "update", &[])?;
    let heads = state.heads();
    for t in 0..tokens {
        let uniform = ctx.uniform("mlstm step params", &params.segment(t..t + 1))?;
        let resources = bindings(&uniform, inputs, &h, state, slots)?;
        let tiles = heads * state.v_dim().div_ceil(TILE);
        graph.dispatch(ctx, &tile, &resources, Workgroups::grid(tiles, seqs, 1)?)?;
        graph.dispatch(ctx, &update, &resources, Workgroups::grid(heads, seqs, 1)?)?;
    }
    Ok(())
}
