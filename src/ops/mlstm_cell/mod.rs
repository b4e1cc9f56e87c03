//! The mLSTM cell (MODEL.md section 5) over B sequences of N tokens, continuing each
//! sequence's recurrent state in place. Two kernels compute the same recurrence:
//! - [`step`]: the recurrent form, the token loop inside the kernel (decode, N = 1);
//! - [`chunkwise`]: the chunkwise-parallel form in chunks of [`chunkwise::CHUNK`] tokens
//!   (prefill).
//!
//! Shapes (NH heads; q and k of head dim DK, v and h of head dim DV — equal in the NeurIPS
//! blocks, DK = DV / 2 in xLSTM-7B; rows = B * N with row `b * N + t`):
//! - inputs: `qkv` a (rows, NH (2 DK + DV)) view `[q | k | v]`, head h at columns `h * DK ..`
//!   of q and k and `h * DV ..` of v; `gates` a (rows, 2 NH) view `[i | f]` of gate
//!   pre-activations, soft-capped in the kernel when [`CellInputs::gate_cap`] is set;
//! - output: `h` a (rows, NH DV) view, h~ of each head (before the out-norm);
//! - state ([`CellState`]): C (slots, NH, DK, DV), n (slots, NH, DK), m (slots, NH), all f32,
//!   stabilised by m (the true C is `C * exp(m)`), indexed by a u32 slot tensor (B). The zero
//!   state (C = 0, n = 0, m = 0) is the fresh state, as in the package's `step()` and
//!   mlstm_kernels' inference wrappers.
//!
//! The kernels scale k by 1 / sqrt(DK) (the NeurIPS cell); xLSTM-Large's kernels scale q
//! instead, which gives the same h from a state whose C and n are sqrt(DK) times larger.
//!
//! Sequences of one batch must name distinct slots.

pub mod chunkwise;
pub mod step;

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::{u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::tensor::{DType, HostData, Tensor};

/// Largest head dim (DK and DV) the cell kernels support.
pub const MAX_HEAD_DIM: usize = 512;

/// The `eps` of the package's denominator `max(|q.n|, exp(-m)) + eps` (the NeurIPS cell's;
/// xLSTM-Large configs give their own).
pub const EPS: f32 = 1e-6;

/// Which kernel computes the cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKernel {
    /// Token by token, one column of C per invocation (`mlstm_step.wgsl`).
    Recurrent,
    /// Token by token, eight columns of C per invocation (`mlstm_step_wide.wgsl`).
    RecurrentWide,
    /// Token by token, one workgroup of 8 invocations per head, reducing by subgroupAdd
    /// without barriers (`mlstm_step_simd.wgsl`): CPU adapters whose subgroups hold the
    /// workgroup ([`CellKernel::available`]).
    RecurrentSimd,
    /// RecurrentSimd reading and writing C through a 64-bit view
    /// (`shaders/common/state64.wgsl`, SHADER_INT64): CPU adapters, where every storage access
    /// costs per vector component (the paper config's decode step at DH 512 on lavapipe,
    /// 2026-12-04: 2.77-2.86 -> 2.36-2.39 ms a block).
    RecurrentSimd64,
    /// One token per pair of dispatches, each head's columns of C spread over workgroups
    /// of 32 columns (`mlstm_step_tiles.wgsl`): GPUs, decode at DH >= 128.
    RecurrentTiles,
    /// Chunks of [`chunkwise::CHUNK`] tokens, one column of C per invocation, 64-column blocks
    /// spread over workgroups (`mlstm_chunk.wgsl`).
    Chunkwise,
    /// Chunks of [`chunkwise::CHUNK`] tokens, eight columns of C per invocation, one
    /// workgroup per head (`mlstm_chunk_wide.wgsl`).
    ChunkwiseWide,
}

impl CellKernel {
    /// Every kernel (for tests and benchmarks).
    pub const ALL: [CellKernel; 7] = [
        CellKernel::Recurrent,
        CellKernel::RecurrentWide,
        CellKernel::RecurrentSimd,
        CellKernel::RecurrentSimd64,
        CellKernel::RecurrentTiles,
        CellKernel::Chunkwise,
        CellKernel::ChunkwiseWide,
    ];

    /// The kernel for `tokens` tokens per sequence and heads of dim `head_dim`: recurrent for
    /// decode (one SIMD group per head on CPU adapters; on GPUs one column per invocation,
    /// and from DH = 128 on each head's columns spread over workgroups: the H200 profile
    /// timed mlstm_step_wide, one workgroup per head, at 132 us per block at DH = 512; the
    /// tiled kernel is not yet measured on a GPU), chunkwise otherwise (eight columns per invocation on CPU adapters,
    /// where loads are the cost; one column per invocation and several workgroups per head
    /// on GPUs, for parallelism). On CPU adapters heads of dim <= 64 prefill with the
    /// recurrent SIMD kernel too: `moxe bench kernels` on lavapipe times it 1.4x faster than
    /// chunkwise-wide over 512 tokens at DH 64 (5x slower at DH 512). Measured on lavapipe,
    /// see the shaders.
    /// Where one subgroup cannot hold the SIMD kernel's workgroup of 8, CPU adapters decode
    /// with the recurrent-wide kernel and prefill chunkwise-wide.
    pub fn choose(ctx: &Context, tokens: usize, head_dim: usize) -> Self {
        let decode = tokens <= 1;
        let simd = [CellKernel::RecurrentSimd64, CellKernel::RecurrentSimd]
            .into_iter()
            .find(|k| k.available(ctx));
        match (ctx.cpu_kernels(), decode, head_dim) {
            (true, true, _) | (true, false, ..=64) if simd.is_some() => simd.unwrap(),
            (true, true, _) => CellKernel::RecurrentWide,
            (true, false, _) => CellKernel::ChunkwiseWide,
            (false, true, ..=127) => CellKernel::Recurrent,
            (false, true, _) => CellKernel::RecurrentTiles,
            (false, false, _) => CellKernel::Chunkwise,
        }
    }

    /// The kernels this device can run (for tests and benchmarks).
    pub fn all_available(ctx: &Context) -> impl Iterator<Item = CellKernel> + '_ {
        CellKernel::ALL.into_iter().filter(|k| k.available(ctx))
    }

    /// Whether the device can run this kernel: the SIMD kernel sums across its workgroup of
    /// 8 with subgroup operations, so it needs one subgroup to hold the workgroup (a fixed
    /// subgroup size of at least 8); its 64-bit form needs SHADER_INT64 too.
    pub fn available(self, ctx: &Context) -> bool {
        match self {
            CellKernel::RecurrentSimd => ctx.subgroup_holds(8),
            CellKernel::RecurrentSimd64 => ctx.subgroup_holds(8) && ctx.shader_int64(),
            _ => true,
        }
    }

    /// Whether this is the SIMD kernel (`mlstm_step_simd.wgsl`), in either form.
    pub fn is_simd(self) -> bool {
        matches!(
            self,
            CellKernel::RecurrentSimd | CellKernel::RecurrentSimd64
        )
    }

    /// Whether this is one of the chunkwise kernels.
    pub fn is_chunkwise(self) -> bool {
        matches!(self, CellKernel::Chunkwise | CellKernel::ChunkwiseWide)
    }

    fn is_wide(self) -> bool {
        matches!(self, CellKernel::RecurrentWide | CellKernel::ChunkwiseWide)
    }
}

/// Recurrent state of the mLSTM cells of one block, one slot per sequence.
pub struct CellState {
    /// C (slots, NH, DK, DV), rows padded to a multiple of 8 elements
    /// ([`Tensor::zeros_aligned`]).
    pub c: Tensor,
    /// n (slots, NH, DK).
    pub n: Tensor,
    /// m (slots, NH).
    pub m: Tensor,
    /// Final (n, m) of a chunkwise prefill before they are committed: (slots, NH, DK + 1).
    pending: Tensor,
}

impl CellState {
    /// Zero (fresh) state for `slots` sequences of `heads` heads with q and k of dim
    /// `qk_dim` (DK) and v of dim `v_dim` (DV).
    pub fn new(
        ctx: &Context,
        slots: usize,
        heads: usize,
        qk_dim: usize,
        v_dim: usize,
    ) -> Result<Self> {
        let dims = 1..=MAX_HEAD_DIM;
        if slots == 0 || heads == 0 || !dims.contains(&qk_dim) || !dims.contains(&v_dim) {
            return Err(Error::InvalidArgument(format!(
                "mLSTM state of {slots} slots, {heads} heads with q/k of dim {qk_dim} and v of \
                 dim {v_dim}: need at least one slot and head and head dims of \
                 1..={MAX_HEAD_DIM}"
            )));
        }
        let state = CellState {
            c: Tensor::zeros_aligned(ctx, "mlstm C", &[slots, heads, qk_dim, v_dim], DType::F32)?,
            n: Tensor::zeros(ctx, "mlstm n", &[slots, heads, qk_dim], DType::F32)?,
            m: Tensor::zeros(ctx, "mlstm m", &[slots, heads], DType::F32)?,
            pending: Tensor::zeros(
                ctx,
                "mlstm pending n, m",
                &[slots, heads, qk_dim + 1],
                DType::F32,
            )?,
        };
        // Every kernel binds the state whole.
        for t in [&state.c, &state.n, &state.m, &state.pending] {
            t.buffer()?;
        }
        Ok(state)
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.c.shape()[0]
    }

    /// NH.
    pub fn heads(&self) -> usize {
        self.c.shape()[1]
    }

    /// DK: the head dim of q and k (the rows of C).
    pub fn qk_dim(&self) -> usize {
        self.c.shape()[2]
    }

    /// DV: the head dim of v and h (the columns of C).
    pub fn v_dim(&self) -> usize {
        self.c.shape()[3]
    }

    /// Resets slot `slot` to the fresh (zero) state (queued before the next submission).
    pub fn reset(&self, ctx: &Context, slot: usize) -> Result<()> {
        if slot >= self.slots() {
            return Err(Error::mismatch(
                "mLSTM state slot",
                format!("below {}", self.slots()),
                slot,
            ));
        }
        for t in [&self.c, &self.n, &self.m] {
            let per_slot = (t.rows() / self.slots() * t.stride() * 4) as u64;
            let zeros = vec![0u8; per_slot as usize];
            ctx.queue()
                .write_buffer(t.buffer()?, slot as u64 * per_slot, &zeros);
        }
        Ok(())
    }

    /// Overwrites the whole state (C, n, m in the shapes above, flattened).
    pub fn write(&self, c: &[f32], n: &[f32], m: &[f32]) -> Result<()> {
        self.c.write(HostData::F32(c))?;
        self.n.write(HostData::F32(n))?;
        self.m.write(HostData::F32(m))
    }
}

/// The inputs of a cell over `seqs` sequences of `tokens` tokens. See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct CellInputs<'a> {
    /// `[q | k | v]` (rows, NH (2 DK + DV)).
    pub qkv: View<'a>,
    /// `[i | f]` gate pre-activations (rows, 2 NH).
    pub gates: View<'a>,
    /// c of the soft cap `c tanh(x / c)` the kernel applies to i and f; 0 for none.
    pub gate_cap: f32,
    /// The denominator's eps.
    pub eps: f32,
}

impl<'a> CellInputs<'a> {
    /// The NeurIPS cell's inputs: no gate cap, eps [`EPS`].
    pub fn new(qkv: View<'a>, gates: View<'a>) -> Self {
        CellInputs {
            qkv,
            gates,
            gate_cap: 0.0,
            eps: EPS,
        }
    }
}

/// Kernel parameters of every cell kernel (`Params` of `shaders/common/mlstm_cell.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct Params {
    heads: u32,
    v_dim: u32,
    tokens: u32,
    seqs: u32,
    slots: u32,
    scale: f32,
    eps: f32,
    token_base: u32,
    seg_tokens: u32,
    qkv_offset: u32,
    qkv_stride: u32,
    gate_offset: u32,
    gate_stride: u32,
    h_offset: u32,
    h_stride: u32,
    c_stride: u32,
    qk_dim: u32,
    gate_cap: f32,
    _pad: [u32; 2],
}

impl Params {
    /// The parameters of the dispatch covering tokens `range` of every sequence.
    pub(crate) fn segment(&self, range: Range<usize>) -> Self {
        Params {
            token_base: range.start as u32,
            seg_tokens: range.len() as u32,
            ..*self
        }
    }
}

pub use super::{segments, LOOP_BUDGET};

/// The bindings 0-7 every cell kernel declares alike (`shaders/common/mlstm_cell.wgsl`): the
/// parameters, qkv, gates, slots, h, then the state's C, n and m.
pub(crate) fn bindings<'a>(
    uniform: &'a wgpu::Buffer,
    inputs: &CellInputs<'a>,
    h: &View<'a>,
    state: &'a CellState,
    slots: &'a Tensor,
) -> Result<Vec<wgpu::BindingResource<'a>>> {
    Ok(vec![
        uniform.as_entire_binding(),
        inputs.qkv.binding()?,
        inputs.gates.binding()?,
        slots.binding()?,
        h.binding()?,
        state.c.binding()?,
        state.n.binding()?,
        state.m.binding()?,
    ])
}

/// Checks the views, slots and state against each other and builds the kernel parameters.
pub(crate) fn params(
    inputs: &CellInputs<'_>,
    h: &View<'_>,
    state: &CellState,
    slots: &Tensor,
    seqs: usize,
    tokens: usize,
) -> Result<Params> {
    let (nh, dk, dv) = (state.heads(), state.qk_dim(), state.v_dim());
    let rows = seqs * tokens;
    inputs.qkv.check("mLSTM cell qkv")?;
    inputs.gates.check("mLSTM cell gates")?;
    h.check("mLSTM cell output")?;
    for (what, view, cols) in [
        ("mLSTM cell qkv", &inputs.qkv, nh * (2 * dk + dv)),
        ("mLSTM cell gates", &inputs.gates, 2 * nh),
        ("mLSTM cell output", h, nh * dv),
    ] {
        if (view.rows, view.cols) != (rows, cols) {
            return Err(Error::mismatch(
                format!(
                    "{what} ('{}') for {seqs} x {tokens} tokens",
                    view.tensor.label()
                ),
                format!("{rows} x {cols}"),
                format!("{} x {}", view.rows, view.cols),
            ));
        }
    }
    if slots.dtype() != DType::U32 || slots.numel() != seqs {
        return Err(Error::mismatch(
            format!("mLSTM slots ('{}')", slots.label()),
            format!("u32 ({seqs})"),
            format!("{} {:?}", slots.dtype(), slots.shape()),
        ));
    }
    if seqs > state.slots() {
        return Err(Error::mismatch(
            "mLSTM batch size",
            format!("at most the state's {} slots", state.slots()),
            seqs,
        ));
    }
    for input in [inputs.qkv.tensor, inputs.gates.tensor] {
        super::distinct("mLSTM cell", input, h.tensor)?;
    }
    for (what, v) in [("gate cap", inputs.gate_cap), ("eps", inputs.eps)] {
        if !(v >= 0.0 && v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "mLSTM cell {what} must be finite and >= 0, got {v}"
            )));
        }
    }
    Ok(Params {
        heads: u32_param("mLSTM heads", nh)?,
        v_dim: u32_param("mLSTM v head dim", dv)?,
        tokens: u32_param("mLSTM tokens", tokens)?,
        seqs: u32_param("mLSTM sequences", seqs)?,
        slots: u32_param("mLSTM slots", state.slots())?,
        scale: 1.0 / (dk as f32).sqrt(),
        eps: inputs.eps,
        token_base: 0,
        seg_tokens: u32_param("mLSTM tokens", tokens)?,
        qkv_offset: u32_param("qkv offset", inputs.qkv.offset)?,
        qkv_stride: u32_param("qkv stride", inputs.qkv.stride)?,
        gate_offset: u32_param("gate offset", inputs.gates.offset)?,
        gate_stride: u32_param("gate stride", inputs.gates.stride)?,
        h_offset: u32_param("output offset", h.offset)?,
        h_stride: u32_param("output stride", h.stride)?,
        c_stride: u32_param("state C stride", state.c.stride())?,
        qk_dim: u32_param("mLSTM q/k head dim", dk)?,
        gate_cap: inputs.gate_cap,
        _pad: [0; 2],
    })
}

/// Records the cell over `seqs` sequences of `tokens` tokens with `kernel`, reading and
/// updating the state slots named by `slots` (u32 (B)).
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
    if !kernel.available(ctx) {
        return Err(Error::Limit {
            what: format!("the {kernel:?} mLSTM cell kernel"),
            detail: "it needs subgroups of one fixed size of at least 8, which this device lacks"
                .into(),
        });
    }
    if kernel.is_chunkwise() {
        let wide = kernel.is_wide();
        chunkwise::record(ctx, graph, wide, inputs, h, state, slots, seqs, tokens)
    } else {
        step::record(ctx, graph, kernel, inputs, h, state, slots, seqs, tokens)
    }
}

/// One sequence and head of the cell state, for the CPU reference (f64).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadState {
    /// C (DK, DV), row-major.
    pub c: Vec<f64>,
    /// n (DK).
    pub n: Vec<f64>,
    pub m: f64,
}

impl HeadState {
    /// The fresh state of a head with q, k of dim `qk_dim` and v of dim `v_dim`.
    pub fn zeros(qk_dim: usize, v_dim: usize) -> Self {
        HeadState {
            c: vec![0.0; qk_dim * v_dim],
            n: vec![0.0; qk_dim],
            m: 0.0,
        }
    }
}

/// `c tanh(x / c)`, or `x` when `c` is 0.
pub fn soft_cap(x: f64, c: f64) -> f64 {
    if c > 0.0 {
        c * (x / c).tanh()
    } else {
        x
    }
}

/// `log(sigmoid(x))`, computed stably.
pub fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// CPU reference of one recurrent step (MODEL.md section 5, XLSTM_LARGE.md) in f64: updates
/// `s` with the token's `q`, `k` (DK), `v` (DV) and gate pre-activations (soft-capped by
/// `gate_cap` unless it is 0), and returns h~ (DV). `eps` is the denominator's.
#[allow(clippy::too_many_arguments)]
pub fn reference_step(
    s: &mut HeadState,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    i_pre: f32,
    f_pre: f32,
    gate_cap: f32,
    eps: f32,
) -> Vec<f32> {
    let (dk, dv) = (q.len(), v.len());
    let scale = 1.0 / (dk as f64).sqrt();
    let i_pre = soft_cap(i_pre as f64, gate_cap as f64);
    let lf = log_sigmoid(soft_cap(f_pre as f64, gate_cap as f64));
    let m = (lf + s.m).max(i_pre);
    let fa = (lf + s.m - m).exp();
    let ia = (i_pre - m).exp();
    let mut qn = 0.0;
    for a in 0..dk {
        let kk = k[a] as f64 * scale;
        s.n[a] = fa * s.n[a] + ia * kk;
        qn += q[a] as f64 * s.n[a];
        for (c, &vb) in s.c[a * dv..(a + 1) * dv].iter_mut().zip(v) {
            *c = fa * *c + ia * kk * vb as f64;
        }
    }
    s.m = m;
    let den = qn.abs().max((-m).exp()) + eps as f64;
    (0..dv)
        .map(|b| {
            let num: f64 = (0..dk).map(|a| q[a] as f64 * s.c[a * dv + b]).sum();
            (num / den) as f32
        })
        .collect()
}

/// The shape of a cell for the CPU reference: NH heads, DK, DV, the gate cap (0 = none) and
/// the denominator's eps.
#[derive(Debug, Clone, Copy)]
pub struct CellShape {
    pub heads: usize,
    pub qk_dim: usize,
    pub v_dim: usize,
    pub gate_cap: f32,
    pub eps: f32,
}

impl CellShape {
    /// The NeurIPS cell: DK = DV = `head_dim`, no cap, eps [`EPS`].
    pub fn square(heads: usize, head_dim: usize) -> Self {
        CellShape {
            heads,
            qk_dim: head_dim,
            v_dim: head_dim,
            gate_cap: 0.0,
            eps: EPS,
        }
    }
}

/// CPU reference of the cell over one batch, in f64. `qkv` (B * N, NH (2 DK + DV)) and
/// `gates` (B * N, 2 NH) as in the module docs; `states[b * NH + h]` is updated in place.
/// Returns h~ (B * N, NH DV).
pub fn reference(
    qkv: &[f32],
    gates: &[f32],
    shape: CellShape,
    tokens: usize,
    states: &mut [HeadState],
) -> Vec<f32> {
    let (heads, dk, dv) = (shape.heads, shape.qk_dim, shape.v_dim);
    let width = heads * (2 * dk + dv);
    let rows = qkv.len() / width;
    let seqs = rows / tokens.max(1);
    let mut h = vec![0.0; rows * heads * dv];
    for b in 0..seqs {
        for t in 0..tokens {
            let row = b * tokens + t;
            let x = &qkv[row * width..(row + 1) * width];
            for hd in 0..heads {
                let out = reference_step(
                    &mut states[b * heads + hd],
                    &x[hd * dk..][..dk],
                    &x[heads * dk + hd * dk..][..dk],
                    &x[2 * heads * dk + hd * dv..][..dv],
                    gates[row * 2 * heads + hd],
                    gates[row * 2 * heads + heads + hd],
                    shape.gate_cap,
                    shape.eps,
                );
                h[row * heads * dv + hd * dv..][..dv].copy_from_slice(&out);
            }
        }
    }
    h
}

#[cfg(test)]
mod tests;
