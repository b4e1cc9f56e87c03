//! The sLSTM cell (MODEL.md section 4) over B sequences of N tokens, the token loop inside
//! the kernel: one workgroup per (head, sequence). Kernel: `shaders/slstm_cell.wgsl`.
//!
//! Shapes: gate pre-activations `pre` a (B * N, 4 * D) view, gate-major `[i | f | z | o]`
//! with index `h * DH + j` inside each gate, row `b * N + n`; output `y` a (B * N, D) view
//! of h (before the group norm); state (slots, 4, D) f32 = `[h, c, n, m]` per slot with a
//! u32 slot tensor (B) naming each sequence's slot.
//!
//! The recurrent matrix R (block-diagonal, one (4 * DH, DH) block per head) is held in f32
//! or f16 in the layout of the kernel variant ([`CellKernel`]): columns `R[h, k, g*DH + j]`
//! (the package's cuda layout; coalesced reads on GPUs, and copied into workgroup memory
//! where the head's R fits) or rows `R[h, g*DH + j, k]` (the vanilla layout, padded; one
//! contiguous stream per invocation, the fast pattern on CPU adapters). The bias is held
//! gate-major (the vanilla layout). [`CellWeights::new`] converts from either checkpoint
//! layout.

use bytemuck::{Pod, Zeroable};

use super::{distinct, segments, u32_param, View};
use crate::arch::xlstm::config::SlstmLayout;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid};
use crate::tensor::{DType, HostData, Tensor};

/// Largest workgroup the kernel uses.
const MAX_WORKGROUP: usize = 256;
/// Hidden units one invocation can own (the shader's `MAX_UNITS`).
const MAX_UNITS: usize = 4;
/// Largest head dim the kernel supports.
pub const MAX_HEAD_DIM: usize = MAX_WORKGROUP * MAX_UNITS;

/// `r` (heads, rows, cols) with each head's matrix transposed: (heads, cols, rows).
pub fn transpose_heads(r: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; r.len()];
    for h in 0..heads {
        let base = h * rows * cols;
        for i in 0..rows {
            for j in 0..cols {
                out[base + j * rows + i] = r[base + i * cols + j];
            }
        }
    }
    out
}

/// A vanilla (gate-major, `b[g*D + h*DH + j]`) bias in the cuda (head-major,
/// `b[h*4*DH + g*DH + j]`) layout.
pub fn bias_vanilla_to_cuda(b: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let d = heads * head_dim;
    let mut out = vec![0.0; b.len()];
    for h in 0..heads {
        for g in 0..4 {
            for j in 0..head_dim {
                out[h * 4 * head_dim + g * head_dim + j] = b[g * d + h * head_dim + j];
            }
        }
    }
    out
}

/// A cuda (head-major) bias in the vanilla (gate-major) layout.
pub fn bias_cuda_to_vanilla(b: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let d = heads * head_dim;
    let mut out = vec![0.0; b.len()];
    for h in 0..heads {
        for g in 0..4 {
            for j in 0..head_dim {
                out[g * d + h * head_dim + j] = b[h * 4 * head_dim + g * head_dim + j];
            }
        }
    }
    out
}

/// The cell kernel variants (the `ROWS` and `SHARED` overrides of the shader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKernel {
    /// R in the columns layout; in workgroup memory when the head's R fits there.
    Columns,
    /// R in the rows layout, streamed by each invocation.
    Rows,
}

impl CellKernel {
    /// The variant suited to this adapter: rows on CPU adapters (where workgroup memory is
    /// ordinary memory, and rows measured 1.7-3.5x faster than columns, with or without
    /// workgroup memory, for head dims 16-256 on lavapipe), columns on GPUs.
    pub fn choose(ctx: &Context) -> Self {
        if ctx.cpu_kernels() {
            CellKernel::Rows
        } else {
            CellKernel::Columns
        }
    }

    /// Both variants (for tests and benchmarks).
    pub const ALL: [CellKernel; 2] = [CellKernel::Columns, CellKernel::Rows];
}

/// Invocations per workgroup of `slstm_cell_subgroup`.
const SUBGROUP_WORKGROUP: usize = 8;

/// Whether the cell shares h by subgroup shuffles (`slstm_cell_subgroup`, no barriers)
/// rather than through workgroup memory: the rows layout, on a device whose subgroups hold
/// a workgroup of 8 (a fixed subgroup size of at least 8), for heads of at most 8 x
/// MAX_UNITS units. On lavapipe (`moxe bench --profile-batch --batch 8`, 2026-12-04) it cut
/// the bundled model's cell (4 heads of 32) from ~31 to ~24 us per decode step, and from
/// ~221 to ~140 us for 8 sequences at once.
fn shares_h_by_subgroup(ctx: &Context, rows: bool, head_dim: usize) -> bool {
    rows && head_dim <= SUBGROUP_WORKGROUP * MAX_UNITS
        && ctx.subgroup_holds(SUBGROUP_WORKGROUP as u32)
}

/// Whether one head's R (f32) and h fit the adapter's workgroup memory.
fn fits_workgroup_memory(ctx: &Context, head_dim: usize) -> bool {
    let bytes = (4 * head_dim * head_dim + head_dim) * 4;
    bytes as u64 <= ctx.limits().max_compute_workgroup_storage_size as u64
}

/// The recurrent kernel and bias of one sLSTM cell on the GPU, in the layout of its kernel.
pub struct CellWeights {
    /// R, f32, f16 or bf16: columns (NH, DH, 4 * DH) or rows (NH * 4 * DH, DH) padded to 8.
    r: Tensor,
    /// (4 * D) f32, gate-major.
    bias: Tensor,
    heads: usize,
    head_dim: usize,
    kernel: CellKernel,
}

impl CellWeights {
    /// Uploads `_recurrent_kernel_` `r` and `_bias_` `bias` stored in `layout`: vanilla
    /// `r` (NH, 4*DH, DH) and gate-major bias, or cuda `r` (NH, DH, 4*DH) and head-major bias
    /// (both (4 * NH * DH)), for the kernel [`CellKernel::choose`] picks. R is stored as
    /// `dtype` (f32, f16 or bf16); the bias stays f32.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &Context,
        label: &str,
        heads: usize,
        head_dim: usize,
        r: &[f32],
        bias: &[f32],
        layout: SlstmLayout,
        dtype: DType,
    ) -> Result<Self> {
        let kernel = CellKernel::choose(ctx);
        Self::with_kernel(ctx, label, heads, head_dim, r, bias, layout, dtype, kernel)
    }

    /// [`CellWeights::new`] for an explicit kernel variant.
    #[allow(clippy::too_many_arguments)]
    pub fn with_kernel(
        ctx: &Context,
        label: &str,
        heads: usize,
        head_dim: usize,
        r: &[f32],
        bias: &[f32],
        layout: SlstmLayout,
        dtype: DType,
        kernel: CellKernel,
    ) -> Result<Self> {
        if heads == 0 || !(1..=MAX_HEAD_DIM).contains(&head_dim) {
            return Err(Error::mismatch(
                format!("sLSTM cell '{label}' heads and head dim"),
                format!("at least one head of dim 1..={MAX_HEAD_DIM}"),
                format!("{heads} heads of dim {head_dim}"),
            ));
        }
        let d = heads * head_dim;
        for (what, len, want) in [
            ("recurrent kernel", r.len(), 4 * d * head_dim),
            ("bias", bias.len(), 4 * d),
        ] {
            if len != want {
                return Err(Error::mismatch(
                    format!("sLSTM cell '{label}' {what} ({heads} heads of dim {head_dim})"),
                    format!("{want} elements"),
                    format!("{len} elements"),
                ));
            }
        }
        check_weight_dtype(ctx, label, dtype)?;
        let four = 4 * head_dim;
        // Rows is the vanilla layout, columns the cuda one.
        let host = match (layout, kernel) {
            (SlstmLayout::Vanilla, CellKernel::Rows) | (SlstmLayout::Cuda, CellKernel::Columns) => {
                r.to_vec()
            }
            (SlstmLayout::Vanilla, CellKernel::Columns) => {
                transpose_heads(r, heads, four, head_dim)
            }
            (SlstmLayout::Cuda, CellKernel::Rows) => transpose_heads(r, heads, head_dim, four),
        };
        let bias = match layout {
            SlstmLayout::Vanilla => bias.to_vec(),
            SlstmLayout::Cuda => bias_cuda_to_vanilla(bias, heads, head_dim),
        };
        let r_label = format!("{label} recurrent kernel");
        let r = match kernel {
            CellKernel::Columns => Tensor::from_host(
                ctx,
                &r_label,
                &[heads, head_dim, four],
                dtype,
                HostData::F32(&host),
            )?,
            CellKernel::Rows => Tensor::weight(
                ctx,
                &r_label,
                &[heads * four, head_dim],
                dtype,
                HostData::F32(&host),
            )?,
        };
        Ok(CellWeights {
            r,
            bias: Tensor::from_f32(ctx, &format!("{label} bias"), &[4 * d], &bias)?,
            heads,
            head_dim,
            kernel,
        })
    }

    /// NH.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// DH.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// D = NH * DH.
    pub fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The gate-major bias (4 * D) f32.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Storage type of R.
    pub fn dtype(&self) -> DType {
        self.r.dtype()
    }

    /// The kernel variant these weights are laid out for.
    pub fn kernel(&self) -> CellKernel {
        self.kernel
    }

    /// Whether R is held in workgroup memory on this adapter (else streamed).
    pub fn uses_workgroup_memory(&self, ctx: &Context) -> bool {
        self.kernel == CellKernel::Columns && fits_workgroup_memory(ctx, self.head_dim)
    }
}

/// Fails unless `dtype` is f32, bf16, or f16 on an adapter that can read f16 weights.
pub(crate) fn check_weight_dtype(ctx: &Context, label: &str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::BF16 => Ok(()),
        DType::F16 if ctx.supports_f16_weights() => Ok(()),
        DType::F16 => Err(Error::Limit {
            what: format!("f16 weights of '{label}'"),
            detail: "the adapter cannot unpack f16 (no SHADER_F16_IN_F32)".into(),
        }),
        other => Err(Error::mismatch(
            format!("weight dtype of '{label}'"),
            "f32, f16 or bf16",
            other,
        )),
    }
}

/// The recurrent state of a batch: `state` (slots, 4, D) f32 and the slots (u32, B).
#[derive(Debug, Clone, Copy)]
pub struct CellState<'a> {
    pub state: &'a Tensor,
    pub slots: &'a Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    seqs: u32,
    dim: u32,
    pre_stride: u32,
    pre_offset: u32,
    y_stride: u32,
    y_offset: u32,
    total: u32,
    first: u32,
    _pad: [u32; 3],
}

/// Records the cell over `seqs` sequences of `pre.rows / seqs` tokens, starting from and
/// updating `state`, writing h to `y`.
pub fn slstm_cell(
    ctx: &Context,
    graph: &mut Graph,
    w: &CellWeights,
    pre: View<'_>,
    y: View<'_>,
    seqs: usize,
    state: CellState<'_>,
) -> Result<()> {
    let d = w.dim();
    pre.check("sLSTM cell pre-activations")?;
    y.check("sLSTM cell output")?;
    if pre.cols != 4 * d || (y.rows, y.cols) != (pre.rows, d) {
        return Err(Error::mismatch(
            format!("sLSTM cell views ({} heads of dim {})", w.heads, w.head_dim),
            format!("pre (rows, {}) and y (rows, {d})", 4 * d),
            format!("pre {}x{} and y {}x{}", pre.rows, pre.cols, y.rows, y.cols),
        ));
    }
    if seqs == 0 || pre.rows % seqs != 0 {
        return Err(Error::mismatch(
            "sLSTM cell sequences",
            format!("a divisor of the {} rows", pre.rows),
            seqs,
        ));
    }
    let s = state.state;
    if s.dtype() != DType::F32 || s.shape().len() != 3 || s.shape()[1..] != [4, d] {
        return Err(Error::mismatch(
            format!("sLSTM state '{}'", s.label()),
            format!("(slots, 4, {d}) f32"),
            format!("{:?} {}", s.shape(), s.dtype()),
        ));
    }
    if state.slots.dtype() != DType::U32 || state.slots.numel() != seqs {
        return Err(Error::mismatch(
            "sLSTM state slots",
            format!("u32 ({seqs})"),
            format!("{} {:?}", state.slots.dtype(), state.slots.shape()),
        ));
    }
    distinct("sLSTM cell", pre.tensor, y.tensor)?;
    distinct("sLSTM cell", pre.tensor, s)?;
    distinct("sLSTM cell", s, y.tensor)?;
    if pre.rows == 0 {
        return Ok(());
    }
    let dh = w.head_dim;
    let rows = w.kernel == CellKernel::Rows;
    let shared = w.uses_workgroup_memory(ctx);
    // The subgroup variant does not order the SHARED copy of R (columns only) either.
    let by_subgroup = !shared && shares_h_by_subgroup(ctx, rows, dh);
    let workgroup = match by_subgroup {
        true => SUBGROUP_WORKGROUP,
        false => dh.next_multiple_of(8).min(MAX_WORKGROUP),
    };
    let stride = w.r.stride();
    let units = dh.div_ceil(workgroup);
    let per_token = if rows {
        // The row loop reads R as blocks of 8 (16-bit pairs) or 4 (f32) of the padded stride.
        let blocks = stride / if w.r.dtype().size() == 2 { 8 } else { 4 };
        units * (blocks * 5 + 4)
    } else {
        units * (dh + 4)
    };
    let fixed = if shared { 4 * dh * dh / workgroup } else { 0 } + 3 * units + 1;
    let total = pre.rows / seqs;
    let base = Params {
        tokens: 0,
        seqs: u32_param("sLSTM sequences", seqs)?,
        dim: u32_param("sLSTM dim", d)?,
        pre_stride: u32_param("stride", pre.stride)?,
        pre_offset: u32_param("offset", pre.offset)?,
        y_stride: u32_param("stride", y.stride)?,
        y_offset: u32_param("offset", y.offset)?,
        total: u32_param("sLSTM tokens", total)?,
        first: 0,
        _pad: [0; 3],
    };
    let constants = [
        ("DH", dh as f64),
        ("WG", workgroup as f64),
        ("UNITS", units as f64),
        ("WDT", w.r.dtype().weight_code()),
        ("ROWS", f64::from(rows)),
        ("RSTRIDE", stride as f64),
        ("SHARED", f64::from(shared)),
        ("RS_LEN", if shared { (4 * dh * dh) as f64 } else { 1.0 }),
        ("HS_LEN", if rows { 1.0 } else { dh as f64 }),
        ("HS4_LEN", if rows { (stride / 4) as f64 } else { 1.0 }),
    ];
    let module = match by_subgroup {
        true => "slstm_cell_subgroup",
        false => "slstm_cell",
    };
    let pipeline = ctx.pipeline(module, "cell", &constants)?;
    // Long inputs run as several dispatches over token segments; the state carries over.
    for range in segments(total, 1, per_token, fixed) {
        let params = Params {
            tokens: range.len() as u32,
            first: range.start as u32,
            ..base
        };
        let uniform = ctx.uniform("sLSTM cell params", &params)?;
        graph.dispatch_rows(
            ctx,
            &pipeline,
            &[
                uniform.as_entire_binding(),
                pre.binding()?,
                w.r.binding()?,
                w.bias.binding()?,
                state.slots.binding()?,
                s.binding()?,
                y.binding()?,
            ],
            RowGrid::YZ { x: w.heads },
            seqs,
        )?;
    }
    Ok(())
}

/// A recorded cell dispatch over random weights and inputs, for `moxe bench kernels`: `seqs`
/// sequences of `tokens` tokens through `heads` heads of dim `head_dim` from a zero state.
/// Each [`Context::run`] of [`RandomCell::graph`] is one prefill of `seqs * tokens` tokens.
pub struct RandomCell {
    graph: Graph,
    y: Tensor,
    weights: CellWeights,
}

impl RandomCell {
    /// Builds the weights (R stored as `dtype`), inputs, state and graph.
    pub fn new(
        ctx: &Context,
        seqs: usize,
        heads: usize,
        head_dim: usize,
        tokens: usize,
        dtype: DType,
    ) -> Result<Self> {
        let d = heads * head_dim;
        let rows = seqs * tokens;
        let mut rng = crate::testing::Rng::new(0x5157);
        let r = rng.normal_vec(4 * d * head_dim, 1.0 / (head_dim as f32).sqrt());
        let bias = rng.normal_vec(4 * d, 1.0);
        let weights = CellWeights::new(
            ctx,
            "random sLSTM cell",
            heads,
            head_dim,
            &r,
            &bias,
            SlstmLayout::Vanilla,
            dtype,
        )?;
        let pre = Tensor::from_f32(
            ctx,
            "random sLSTM pre-activations",
            &[rows, 4 * d],
            &rng.normal_vec(rows * 4 * d, 1.0),
        )?;
        let y = Tensor::zeros(ctx, "random sLSTM h", &[rows, d], DType::F32)?;
        let state = Tensor::zeros(ctx, "random sLSTM state", &[seqs, 4, d], DType::F32)?;
        let slot_ids: Vec<u32> = (0..seqs).map(|b| b as u32).collect();
        let slots = Tensor::from_u32(ctx, "random sLSTM slots", &[seqs], &slot_ids)?;
        let mut graph = Graph::new();
        let cell_state = CellState {
            state: &state,
            slots: &slots,
        };
        slstm_cell(
            ctx,
            &mut graph,
            &weights,
            View::of(&pre),
            View::of(&y),
            seqs,
            cell_state,
        )?;
        Ok(RandomCell { graph, y, weights })
    }

    /// The recorded dispatch. Each run continues from the state the previous one left, so
    /// every run does the same work.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The output h (B * N, D) of the last run.
    pub fn output(&self) -> &Tensor {
        &self.y
    }

    /// Whether R sits in workgroup memory on this adapter.
    pub fn uses_workgroup_memory(&self, ctx: &Context) -> bool {
        self.weights.uses_workgroup_memory(ctx)
    }
}

/// CPU reference in f64. `r` vanilla (NH, 4*DH, DH), `bias` gate-major (4 * D), `pre`
/// (B * N, 4 * D), `state` (B, 4, D) updated in place. Returns h (B * N, D).
pub fn reference(
    r: &[f32],
    bias: &[f32],
    heads: usize,
    pre: &[f32],
    seqs: usize,
    state: &mut [f32],
) -> Vec<f32> {
    let d = bias.len() / 4;
    let dh = d / heads;
    let n_tok = pre.len() / (4 * d) / seqs;
    let logsig = |x: f64| x.min(0.0) - (-x.abs()).exp().ln_1p();
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut y = vec![0.0f32; seqs * n_tok * d];
    for b in 0..seqs {
        let st = &mut state[b * 4 * d..(b + 1) * 4 * d];
        let mut hv: Vec<f64> = st[..d].iter().map(|&v| v as f64).collect();
        let mut c: Vec<f64> = st[d..2 * d].iter().map(|&v| v as f64).collect();
        let mut n: Vec<f64> = st[2 * d..3 * d].iter().map(|&v| v as f64).collect();
        let mut m: Vec<f64> = st[3 * d..].iter().map(|&v| v as f64).collect();
        for t in 0..n_tok {
            let row = b * n_tok + t;
            let mut next = vec![0.0f64; d];
            for h in 0..heads {
                for j in 0..dh {
                    let o = h * dh + j;
                    let mut raw = [0.0f64; 4];
                    for (g, rg) in raw.iter_mut().enumerate() {
                        let mut acc = pre[row * 4 * d + g * d + o] as f64 + bias[g * d + o] as f64;
                        let rrow = &r[(h * 4 * dh + g * dh + j) * dh..][..dh];
                        for (k, &rv) in rrow.iter().enumerate() {
                            acc += hv[h * dh + k] * rv as f64;
                        }
                        *rg = acc;
                    }
                    let logfpm = m[o] + logsig(raw[1]);
                    let mn = if n[o] == 0.0 {
                        raw[0]
                    } else {
                        raw[0].max(logfpm)
                    };
                    let ig = (raw[0] - mn).exp().min(1.0);
                    let fg = (logfpm - mn).exp().min(1.0);
                    c[o] = fg * c[o] + ig * raw[2].tanh();
                    n[o] = fg * n[o] + ig;
                    m[o] = mn;
                    next[o] = sigmoid(raw[3]) * c[o] / n[o];
                    y[row * d + o] = next[o] as f32;
                }
            }
            hv = next;
        }
        for (i, v) in [hv, c, n, m].iter().enumerate() {
            for (dst, &src) in st[i * d..(i + 1) * d].iter_mut().zip(v) {
                *dst = src as f32;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Weights;
    use crate::testing::{assert_close, gpu, round_f16, Rng};
    use std::path::Path;

    /// A cell case: weights in the vanilla layout, inputs, and the initial state (B, 4, D).
    struct Case {
        heads: usize,
        r: Vec<f32>,
        bias: Vec<f32>,
        pre: Vec<f32>,
        seqs: usize,
        state: Vec<f32>,
    }

    impl Case {
        fn random(
            heads: usize,
            dh: usize,
            seqs: usize,
            tokens: usize,
            warm: bool,
            seed: u64,
        ) -> Self {
            let d = heads * dh;
            let mut rng = Rng::new(seed);
            let mut state = vec![0.0; seqs * 4 * d];
            if warm {
                for b in 0..seqs {
                    let s = &mut state[b * 4 * d..(b + 1) * 4 * d];
                    s[..2 * d].copy_from_slice(&rng.normal_vec(2 * d, 0.5));
                    s[2 * d..3 * d].copy_from_slice(&rng.uniform_vec(d, 0.5, 3.0));
                    s[3 * d..].copy_from_slice(&rng.normal_vec(d, 2.0));
                }
            }
            Case {
                heads,
                r: rng.normal_vec(4 * d * dh, 1.0 / (dh as f32).sqrt()),
                bias: rng.normal_vec(4 * d, 1.0),
                pre: rng.normal_vec(seqs * tokens * 4 * d, 2.0),
                seqs,
                state,
            }
        }

        fn dim(&self) -> usize {
            self.bias.len() / 4
        }

        /// The CPU reference (R rounded as `dtype` stores it): y and the final state.
        fn reference(&self, dtype: DType) -> (Vec<f32>, Vec<f32>) {
            let r = if dtype == DType::F16 {
                round_f16(&self.r)
            } else {
                self.r.clone()
            };
            let mut state = self.state.clone();
            let y = reference(&r, &self.bias, self.heads, &self.pre, self.seqs, &mut state);
            (y, state)
        }

        /// Runs the kernel with R stored in `layout` and `dtype`. Sequences use slots in
        /// reverse order with a spare slot, to test the indirection.
        fn run(
            &self,
            layout: SlstmLayout,
            dtype: DType,
            kernel: CellKernel,
        ) -> (Vec<f32>, Vec<f32>) {
            let ctx = gpu();
            let (d, seqs) = (self.dim(), self.seqs);
            let dh = d / self.heads;
            let (r, bias) = match layout {
                SlstmLayout::Vanilla => (self.r.clone(), self.bias.clone()),
                SlstmLayout::Cuda => (
                    transpose_heads(&self.r, self.heads, 4 * dh, dh),
                    bias_vanilla_to_cuda(&self.bias, self.heads, dh),
                ),
            };
            let w = CellWeights::with_kernel(
                ctx, "cell", self.heads, dh, &r, &bias, layout, dtype, kernel,
            )
            .unwrap();
            assert_eq!(w.kernel(), kernel);
            let rows = self.pre.len() / (4 * d);
            let slots: Vec<u32> = (0..seqs as u32).map(|b| seqs as u32 - b).collect();
            let mut st = vec![0.0; (seqs + 1) * 4 * d];
            for (b, &slot) in slots.iter().enumerate() {
                st[slot as usize * 4 * d..][..4 * d]
                    .copy_from_slice(&self.state[b * 4 * d..(b + 1) * 4 * d]);
            }
            let pt = Tensor::from_f32(ctx, "pre", &[rows, 4 * d], &self.pre).unwrap();
            let yt = Tensor::zeros(ctx, "y", &[rows, d], DType::F32).unwrap();
            let stt = Tensor::from_f32(ctx, "state", &[seqs + 1, 4, d], &st).unwrap();
            let slt = Tensor::from_u32(ctx, "slots", &[seqs], &slots).unwrap();
            let mut g = Graph::new();
            let state = CellState {
                state: &stt,
                slots: &slt,
            };
            slstm_cell(ctx, &mut g, &w, View::of(&pt), View::of(&yt), seqs, state).unwrap();
            ctx.run(&[&g]).unwrap();
            let all = stt.to_f32().unwrap();
            let last = slots
                .iter()
                .flat_map(|&s| all[s as usize * 4 * d..][..4 * d].to_vec())
                .collect();
            (yt.to_f32().unwrap(), last)
        }

        /// Checks every kernel variant in f32 and f16 against the reference.
        fn check(&self, atol: f32, what: &str) {
            for kernel in CellKernel::ALL {
                for dtype in [DType::F32, DType::F16] {
                    let (y, state) = self.run(SlstmLayout::Vanilla, dtype, kernel);
                    let (wy, wstate) = self.reference(dtype);
                    let what = format!("{what} {kernel:?} {dtype}");
                    assert_close(&y, &wy, atol, atol, &format!("{what} h"));
                    assert_close(&state, &wstate, atol, atol, &format!("{what} state"));
                }
            }
        }
    }

    #[test]
    fn matches_reference_on_random_shapes() {
        // (heads, head dim, sequences, tokens, warm state); on CPU adapters with subgroups
        // heads of up to 32 share h by subgroup shuffles (28: a partial last unit per
        // invocation), larger ones through workgroup memory.
        let shapes = [
            (1, 7, 1, 5, false),
            (3, 10, 3, 9, true),
            (8, 5, 3, 4, true),
            (2, 28, 2, 5, true),
            (1, 32, 2, 3, true),
            (2, 33, 1, 6, false),
            (1, 45, 3, 3, true),
            (2, 70, 1, 4, true),
            (1, 300, 1, 2, true),
        ];
        for (i, &(heads, dh, seqs, n, warm)) in shapes.iter().enumerate() {
            let case = Case::random(heads, dh, seqs, n, warm, 40 + i as u64);
            case.check(2e-5, &format!("{heads}x{dh} b={seqs} n={n}"));
        }
    }

    #[test]
    fn paper_scale_head_dim_256() {
        // D = 1024 with 4 heads: R of one head is 1 MiB in f32, too large for workgroup
        // memory, so both variants stream it.
        let ctx = gpu();
        let case = Case::random(4, 256, 2, 3, true, 7);
        let w = |kernel| {
            let (r, b) = (&case.r, &case.bias);
            CellWeights::with_kernel(
                ctx,
                "big",
                4,
                256,
                r,
                b,
                SlstmLayout::Vanilla,
                DType::F32,
                kernel,
            )
            .unwrap()
        };
        assert!(!w(CellKernel::Columns).uses_workgroup_memory(ctx));
        assert!(!w(CellKernel::Rows).uses_workgroup_memory(ctx));
        case.check(5e-5, "D=1024 NH=4");
    }

    fn fixture(name: &str) -> Weights {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ops")
            .join(name);
        Weights::open(&path).unwrap()
    }

    /// (4, B, D) package states to (B, 4, D) and back (the same transpose).
    fn swap_state(s: &[f32], outer: usize, inner: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0.0; s.len()];
        for a in 0..outer {
            for b in 0..inner {
                out[(b * outer + a) * d..][..d].copy_from_slice(&s[(a * inner + b) * d..][..d]);
            }
        }
        out
    }

    /// A fixture case and the package's h (B * S, D) and final state (B, 4, D).
    fn fixture_case(name: &str) -> (Case, Vec<f32>, Vec<f32>) {
        let f = fixture(name);
        let (pre, xs) = f.f32_any("in.x").unwrap();
        let (r, rs) = f.f32_any("param._recurrent_kernel_").unwrap();
        let bias = f.f32_any("param._bias_").unwrap().0;
        let (seqs, tokens, heads, dh) = (xs[0], xs[1], rs[0], rs[2]);
        let d = heads * dh;
        let state = if f.contains("in.state") {
            swap_state(&f.f32_any("in.state").unwrap().0, 4, seqs, d)
        } else {
            vec![0.0; seqs * 4 * d]
        };
        // y (B, NH, S, DH) to rows (B * S, D).
        let (y, _) = f.f32_any("out.y").unwrap();
        let mut want = vec![0.0; seqs * tokens * d];
        for b in 0..seqs {
            for h in 0..heads {
                for t in 0..tokens {
                    want[(b * tokens + t) * d + h * dh..][..dh]
                        .copy_from_slice(&y[((b * heads + h) * tokens + t) * dh..][..dh]);
                }
            }
        }
        let want_state = swap_state(&f.f32_any("out.state").unwrap().0, 4, seqs, d);
        let case = Case {
            heads,
            r,
            bias,
            pre,
            seqs,
            state,
        };
        (case, want, want_state)
    }

    #[test]
    fn matches_the_package() {
        for name in ["slstm_cell", "slstm_cell_state", "slstm_cell_large"] {
            let (case, want, want_state) = fixture_case(&format!("{name}.safetensors"));
            for kernel in CellKernel::ALL {
                let (y, state) = case.run(SlstmLayout::Vanilla, DType::F32, kernel);
                let what = format!("{name} {kernel:?}");
                assert_close(&y, &want, 1e-5, 1e-5, &what);
                // m is a log-space value (|m| up to ~50 in the large case): relative tolerance.
                assert_close(&state, &want_state, 1e-5, 1e-5, &what);
            }
            // The f64 reference agrees with the package too.
            let (wy, _) = case.reference(DType::F32);
            assert_close(&wy, &want, 1e-5, 1e-5, &format!("{name} reference"));
        }
    }

    #[test]
    fn cuda_layout_gives_identical_results() {
        let (case, _, _) = fixture_case("slstm_cell_state.safetensors");
        for kernel in CellKernel::ALL {
            for dtype in [DType::F32, DType::F16] {
                let vanilla = case.run(SlstmLayout::Vanilla, dtype, kernel);
                let cuda = case.run(SlstmLayout::Cuda, dtype, kernel);
                assert_eq!(vanilla, cuda, "{kernel:?} {dtype}");
            }
        }
    }

    #[test]
    fn long_inputs_stay_under_llvmpipes_loop_limit() {
        // 3000 tokens of head dim 64 in one call: about 130k loop iterations for one
        // invocation, twice what llvmpipe runs before silently ending its loops. The op splits
        // the tokens into segments; every token must still be right.
        let case = Case::random(2, 64, 1, 3000, true, 31);
        case.check(1e-4, "3000 tokens, DH 64");
    }

    #[test]
    fn long_sequences_with_huge_gates_stay_finite() {
        // 4096 tokens, pre-activations up to |50|; sequence 0 is fresh, sequence 1 continues
        // a state whose odd units have n == 0 (the per-element stabiliser rule).
        let (heads, dh, tokens) = (2, 6, 4096);
        let d = heads * dh;
        let mut case = Case::random(heads, dh, 2, tokens, true, 99);
        let mut rng = Rng::new(5);
        case.pre = rng.uniform_vec(case.pre.len(), -50.0, 50.0);
        for v in case.state[..4 * d].iter_mut() {
            *v = 0.0;
        }
        for j in (1..d).step_by(2) {
            case.state[4 * d + d + j] = 0.0;
            case.state[4 * d + 2 * d + j] = 0.0;
        }
        let (wy, wstate) = case.reference(DType::F32);
        for kernel in CellKernel::ALL {
            let (y, state) = case.run(SlstmLayout::Vanilla, DType::F32, kernel);
            assert!(
                y.iter().chain(&state).all(|v| v.is_finite()),
                "{kernel:?}: non-finite"
            );
            assert_close(&y, &wy, 1e-4, 1e-4, &format!("4096 tokens {kernel:?} h"));
            let what = format!("4096 tokens {kernel:?} state");
            assert_close(&state, &wstate, 1e-4, 1e-4, &what);
        }
    }

    #[test]
    fn the_stabiliser_start_rule_is_per_element() {
        // One token: sequence 0 is fresh; in sequence 1 the even units continue (n > 0) and
        // the odd ones start (n == 0), so m must be raw_i for exactly the fresh elements.
        let (heads, dh) = (2, 5);
        let d = heads * dh;
        let mut case = Case::random(heads, dh, 2, 1, true, 3);
        for v in case.state[..4 * d].iter_mut() {
            *v = 0.0;
        }
        for j in (1..d).step_by(2) {
            case.state[4 * d + d + j] = 0.0;
            case.state[4 * d + 2 * d + j] = 0.0;
        }
        let (wy, wstate) = case.reference(DType::F32);
        let (y, state) = case.run(SlstmLayout::Vanilla, DType::F32, CellKernel::Rows);
        assert_close(&y, &wy, 1e-5, 1e-5, "h");
        assert_close(&state, &wstate, 1e-5, 1e-5, "state");
        let columns = case.run(SlstmLayout::Vanilla, DType::F32, CellKernel::Columns);
        assert_close(&columns.1, &wstate, 1e-5, 1e-5, "columns state");
        // The m of a fresh element is its raw input-gate value.
        let raw_i = |b: usize, o: usize| {
            let h = o / dh;
            let hprev = &case.state[b * 4 * d + h * dh..][..dh];
            let rrow = &case.r[(h * 4 * dh + o % dh) * dh..][..dh];
            case.pre[b * 4 * d + o]
                + case.bias[o]
                + hprev.iter().zip(rrow).map(|(a, b)| a * b).sum::<f32>()
        };
        for (b, o) in (0..d)
            .map(|o| (0, o))
            .chain((1..d).step_by(2).map(|o| (1, o)))
        {
            let m = state[b * 4 * d + 3 * d + o];
            assert!(
                (m - raw_i(b, o)).abs() < 1e-5,
                "sequence {b} unit {o}: m {m}"
            );
        }
    }

    #[test]
    fn random_cell_runs_for_benchmarks() {
        let ctx = gpu();
        let cell = RandomCell::new(ctx, 2, 3, 9, 5, DType::F16).unwrap();
        assert_eq!(cell.uses_workgroup_memory(ctx), !ctx.cpu_kernels());
        ctx.run(&[cell.graph()]).unwrap();
        let y = cell.output().to_f32().unwrap();
        assert_eq!(y.len(), 2 * 5 * 27);
        assert!(y.iter().all(|v| v.is_finite() && v.abs() < 1.0) && y.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let ctx = gpu();
        let err = CellWeights::new(
            ctx,
            "c",
            2,
            3,
            &[0.0; 10],
            &[0.0; 24],
            SlstmLayout::Vanilla,
            DType::F32,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("recurrent kernel") && err.contains("72 elements"),
            "{err}"
        );
        let err = CellWeights::new(
            ctx,
            "c",
            1,
            2000,
            &[],
            &[],
            SlstmLayout::Vanilla,
            DType::F32,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("dim 1..=1024"), "{err}");
        let w = CellWeights::new(
            ctx,
            "c",
            2,
            3,
            &[0.0; 72],
            &[0.0; 24],
            SlstmLayout::Vanilla,
            DType::F32,
        )
        .unwrap();
        let pre = Tensor::zeros(ctx, "pre", &[4, 24], DType::F32).unwrap();
        let y = Tensor::zeros(ctx, "y", &[4, 6], DType::F32).unwrap();
        let st = Tensor::zeros(ctx, "st", &[2, 4, 6], DType::F32).unwrap();
        let slots = Tensor::from_u32(ctx, "slots", &[3], &[0, 1, 0]).unwrap();
        let state = CellState {
            state: &st,
            slots: &slots,
        };
        let mut g = Graph::new();
        let err = slstm_cell(ctx, &mut g, &w, View::of(&pre), View::of(&y), 3, state)
            .unwrap_err()
            .to_string();
        assert!(err.contains("divisor of the 4 rows"), "{err}");
        let err = slstm_cell(ctx, &mut g, &w, View::of(&pre), View::of(&y), 2, state)
            .unwrap_err()
            .to_string();
        assert!(err.contains("slots") && err.contains("u32 (2)"), "{err}");
        let err = slstm_cell(ctx, &mut g, &w, View::of(&y), View::of(&y), 2, state)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pre (rows, 24)"), "{err}");
        assert!(g.is_empty());
    }
}
