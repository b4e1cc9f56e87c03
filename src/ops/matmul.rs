//! Matrix products with a weight matrix: `y = beta * y + bias + x W^T` (GEMV for one token,
//! GEMM for many), dense or block-diagonal ("headwise"). Kernels: `shaders/matmul.wgsl` and, where
//! the adapter has subgroups, `shaders/gemv_subgroup.wgsl` (registered twice: weights read as
//! 32-bit words, or as 64-bit words where the device has SHADER_INT64).
//!
//! Shapes (dense): W (M, K) f32, f16 or bf16 made with [`Tensor::weight`] (possibly chunked by
//! rows); x a (T, K) view; y a (T, M) view; bias (M) f32.
//! Shapes (headwise): W (NH, O, I) — NH blocks of an (O, I) matrix; x a (T, NH * I) view;
//! y a (T, NH * O) view; y[t, h*O + o] = sum_i x[t, h*I + i] W[h, o, i] (+ bias[h*O + o]).

use bytemuck::{Pod, Zeroable};

use super::elementwise::Activation;
use super::{distinct, u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid, MAX_GROUPS_PER_DIM};
use crate::tensor::{DType, Tensor};

/// The matmul kernel variants (entry points of `matmul.wgsl` and `gemv_subgroup.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKernel {
    /// One invocation per (4 rows, token) streaming its rows: CPU adapters, few tokens.
    Gemv,
    /// Gemv with the inputs loaded once per subgroup and shared by broadcasts
    /// (`shaders/gemv_subgroup.wgsl`): CPU adapters with one subgroup size of at least 8,
    /// dense weights, few tokens.
    GemvSubgroup,
    /// One invocation per (4 rows, 4 tokens): CPU adapters, many tokens.
    Gemm4,
    /// Gemm4 with the inputs loaded once per subgroup and shared by broadcasts, and each
    /// weight block loaded once for the four tokens, or for eight in its pair kernels
    /// ([`MatmulKernel::pairs`]) (`shaders/gemv_subgroup.wgsl`): CPU adapters as for
    /// GemvSubgroup, dense weights, many tokens.
    GemmSubgroup,
    /// GemvSubgroup and GemmSubgroup reading their weights as 64-bit words
    /// (`shaders/common/words64.wgsl`, SHADER_INT64): CPU adapters, where every storage load
    /// costs per vector component.
    GemvSubgroup64,
    GemmSubgroup64,
    /// One workgroup per (row, 4 tokens), cooperative coalesced reads: GPUs, many tokens.
    Coop4,
    /// One workgroup per (8 rows, token), 32 invocations per row reading it together, one
    /// barrier: GPUs, one token.
    Rows8,
    /// One workgroup per (32 rows, 16 tokens), W and x staged in workgroup memory 32 inputs
    /// at a time, each weight read once per 16 tokens: GPUs, more than 8 tokens, dense
    /// weights.
    Gemm16,
}

impl MatmulKernel {
    /// The variant suited to this adapter and token count for a dense weight.
    pub fn choose(ctx: &Context, tokens: usize) -> Self {
        use MatmulKernel::*;
        let preferred: &[MatmulKernel] = match (ctx.cpu_kernels(), tokens) {
            (true, 0..=2) => &[GemvSubgroup64, GemvSubgroup, Gemv],
            (true, _) => &[GemmSubgroup64, GemmSubgroup, Gemm4],
            (false, 0..=1) => &[Rows8],
            (false, 2..=8) => &[Coop4],
            (false, _) => &[Gemm16],
        };
        let first = preferred.iter().find(|k| k.available(ctx));
        *first.unwrap_or(&preferred[preferred.len() - 1])
    }

    /// The variant for a block-diagonal weight, whose rows read different inputs (so
    /// the subgroup kernels, which share one input row across their subgroup, do not apply).
    fn choose_headwise(ctx: &Context, tokens: usize) -> Self {
        match Self::choose(ctx, tokens) {
            MatmulKernel::GemvSubgroup | MatmulKernel::GemvSubgroup64 => MatmulKernel::Gemv,
            MatmulKernel::GemmSubgroup | MatmulKernel::GemmSubgroup64 => MatmulKernel::Gemm4,
            MatmulKernel::Gemm16 => MatmulKernel::Coop4,
            kernel => kernel,
        }
    }

    /// Whether the variant reads one input row for all its rows, so dense weights only (the
    /// subgroup kernels and Gemm16).
    pub fn dense_only(self) -> bool {
        self.is_subgroup() || self == MatmulKernel::Gemm16
    }

    /// Whether the variant shares its inputs across a subgroup (dense weights only, and the
    /// SUBGROUP feature).
    pub fn is_subgroup(self) -> bool {
        matches!(
            self,
            MatmulKernel::GemvSubgroup
                | MatmulKernel::GemmSubgroup
                | MatmulKernel::GemvSubgroup64
                | MatmulKernel::GemmSubgroup64
        )
    }

    /// Whether the variant reads its weights as 64-bit words (SHADER_INT64).
    fn is_wide(self) -> bool {
        matches!(
            self,
            MatmulKernel::GemvSubgroup64 | MatmulKernel::GemmSubgroup64
        )
    }

    /// Whether the device can run this variant.
    pub fn available(self, ctx: &Context) -> bool {
        (!self.is_subgroup() || ctx.subgroup_holds(8)) && (!self.is_wide() || ctx.shader_int64())
    }

    /// Tokens one workgroup covers (the row grid's `per`), with the subgroup GEMM's pair
    /// kernels when `pairs` ([`MatmulKernel::pairs`]); `pairs` true gives the most that
    /// any of the variant's entry points covers.
    pub fn tokens_per_workgroup(self, pairs: bool) -> usize {
        match self {
            MatmulKernel::Gemv
            | MatmulKernel::GemvSubgroup
            | MatmulKernel::GemvSubgroup64
            | MatmulKernel::Rows8 => 1,
            MatmulKernel::GemmSubgroup | MatmulKernel::GemmSubgroup64 if pairs => 8,
            MatmulKernel::Gemm4
            | MatmulKernel::GemmSubgroup
            | MatmulKernel::GemmSubgroup64
            | MatmulKernel::Coop4 => 4,
            MatmulKernel::Gemm16 => 16,
        }
    }

    /// Whether the subgroup GEMM takes its pair kernels (`gemm_pairs*` in
    /// `shaders/gemv_subgroup.wgsl`: two rows and eight tokens per invocation, each weight
    /// block loaded once for eight tokens) for `tokens` tokens: f32/f16/bf16 weights of more
    /// than 8 rows and more than four tokens. At four or fewer the four-token kernels waste
    /// less on tokens past T; quantised rows keep `gemm`, whose held blocks of 32 weights
    /// were as fast in an A/B of the two forms (2026-12-04). `tokens` is the capacity where
    /// rows are counted on the GPU (MoE experts), so an expert given four rows or fewer of
    /// a larger batch still computes eight.
    fn pairs(self, dtype: DType, shape: RowShape, tokens: usize) -> bool {
        matches!(
            self,
            MatmulKernel::GemmSubgroup | MatmulKernel::GemmSubgroup64
        ) && dtype.quant().is_none()
            && shape != RowShape::Few
            && tokens > 4
    }

    /// Invocations per workgroup of the row-streaming kernels: one SIMD subgroup on CPU
    /// adapters (8 on llvmpipe, where it read fastest), exactly one subgroup for
    /// the subgroup kernels, 64 elsewhere. (Coop4 is always 64, Rows8 and Gemm16 256.)
    fn workgroup(self, ctx: &Context) -> usize {
        match (self, ctx.fixed_subgroup_size()) {
            (kernel, Some(size)) if kernel.is_subgroup() => size as usize,
            (MatmulKernel::Coop4, _) => 64,
            (MatmulKernel::Rows8 | MatmulKernel::Gemm16, _) => 256,
            _ if ctx.cpu_kernels() => 8,
            _ => 64,
        }
    }

    /// (registry module, entry point): the `_glu` modules read gated inputs
    /// (`shaders/common/inputs_glu.wgsl`); `shape` picks the subgroup kernels' entry points
    /// for short or few rows ([`RowShape`]), `pairs` the subgroup GEMM's for two rows and
    /// eight tokens per invocation ([`MatmulKernel::pairs`]).
    fn entry(self, gated: bool, shape: RowShape, pairs: bool) -> (&'static str, &'static str) {
        use MatmulKernel::*;
        let module = match (self, gated) {
            (Gemv | Gemm4 | Coop4 | Rows8 | Gemm16, false) => "matmul",
            (Gemv | Gemm4 | Coop4 | Rows8 | Gemm16, true) => "matmul_glu",
            (GemvSubgroup | GemmSubgroup, false) => "gemv_subgroup",
            (GemvSubgroup | GemmSubgroup, true) => "gemv_subgroup_glu",
            (GemvSubgroup64 | GemmSubgroup64, false) => "gemv_subgroup64",
            (GemvSubgroup64 | GemmSubgroup64, true) => "gemv_subgroup64_glu",
        };
        let entry = match (self, shape) {
            (Gemv, _) => "gemv",
            (Gemm4, _) => "gemm4",
            (Coop4, _) => "coop4",
            (Rows8, _) => "rows8",
            (Gemm16, _) => "gemm16",
            (GemvSubgroup | GemvSubgroup64, RowShape::Any | RowShape::Medium) => "main",
            (GemvSubgroup | GemvSubgroup64, RowShape::Short) => "main_short",
            (GemvSubgroup | GemvSubgroup64, RowShape::Few) => "main_few",
            (GemmSubgroup | GemmSubgroup64, RowShape::Few) => "gemm_few",
            (GemmSubgroup | GemmSubgroup64, RowShape::Any) if pairs => "gemm_pairs",
            (GemmSubgroup | GemmSubgroup64, RowShape::Short) if pairs => "gemm_pairs_short",
            (GemmSubgroup | GemmSubgroup64, RowShape::Medium) if pairs => "gemm_pairs_medium",
            (GemmSubgroup | GemmSubgroup64, RowShape::Any) => "gemm",
            (GemmSubgroup | GemmSubgroup64, RowShape::Short) => "gemm_short",
            (GemmSubgroup | GemmSubgroup64, RowShape::Medium) => "gemm_medium",
        };
        (module, entry)
    }

    /// All variants (for tests and benchmarks; check [`MatmulKernel::available`]).
    pub const ALL: [MatmulKernel; 9] = [
        MatmulKernel::Gemv,
        MatmulKernel::GemvSubgroup,
        MatmulKernel::Gemm4,
        MatmulKernel::GemmSubgroup,
        MatmulKernel::GemvSubgroup64,
        MatmulKernel::GemmSubgroup64,
        MatmulKernel::Coop4,
        MatmulKernel::Rows8,
        MatmulKernel::Gemm16,
    ];
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    k: u32,
    m: u32,
    t: u32,
    w_stride: u32,
    x_stride: u32,
    x_offset: u32,
    y_stride: u32,
    y_offset: u32,
    row_base: u32,
    beta: f32,
    has_bias: u32,
    groups_x: u32,
    head_rows: u32,
    cap: f32,
    s_stride: u32,
    proj_rows: u32,
    proj_cols: [u32; 4],
    w_row0: u32,
    glu_cols: u32,
    _pad: [u32; 2],
}

/// Records `y = beta * y + bias + x W^T` with the kernel [`MatmulKernel::choose`] picks.
pub fn matmul(
    ctx: &Context,
    graph: &mut Graph,
    w: &Tensor,
    bias: Option<&Tensor>,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
) -> Result<()> {
    let kernel = MatmulKernel::choose(ctx, x.rows);
    matmul_with(ctx, graph, kernel, w, bias, x, y, beta)
}

/// Records `y = softcap(x W^T, cap)` with `softcap(v, c) = c tanh(v / c)` (no cap when
/// `cap` is `None`): an LM head whose logits are soft-capped (xLSTM-Large).
pub fn matmul_soft_capped(
    ctx: &Context,
    graph: &mut Graph,
    w: &Tensor,
    x: View<'_>,
    y: View<'_>,
    cap: Option<f32>,
) -> Result<()> {
    let kernel = MatmulKernel::choose(ctx, x.rows);
    let epilogue = Epilogue {
        cap: cap.unwrap_or(0.0),
        ..Epilogue::new(None, 0.0)
    };
    record(ctx, graph, kernel, w, x, y, &epilogue, None)
}

/// Records `y = beta * y + bias + g W^T` for W (M, K) with the gated inputs
/// `g[t, k] = act(x[t, k]) * x[t, K + k]` read from x (T, 2K): a gated FFN's down-projection
/// reading its up-projection's output `[a | b]` in place, with the GLU `act(a) * b` fused
/// into the product's loads instead of a dispatch of its own.
#[allow(clippy::too_many_arguments)]
pub fn matmul_gated(
    ctx: &Context,
    graph: &mut Graph,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
) -> Result<()> {
    let kernel = MatmulKernel::choose(ctx, x.rows);
    let epilogue = Epilogue {
        gated: Some(act),
        ..Epilogue::new(bias, beta)
    };
    record(ctx, graph, kernel, w, x, y, &epilogue, None)
}

/// What the kernel fuses around each product `v = g W^T`: the inputs g read gated
/// (`act(a) * b`, see [`matmul_gated`]) or as they are, and after the product
/// `y = beta * y + softcap(v + bias, cap)` (no cap when `cap` is 0).
struct Epilogue<'a> {
    gated: Option<Activation>,
    bias: Option<&'a Tensor>,
    beta: f32,
    cap: f32,
}

impl<'a> Epilogue<'a> {
    fn new(bias: Option<&'a Tensor>, beta: f32) -> Self {
        Epilogue {
            gated: None,
            bias,
            beta,
            cap: 0.0,
        }
    }
}

/// Records the block-diagonal product `y = beta * y + bias + headwise(W, x)` with W of shape
/// (NH, O, I) (the xlstm package's `LinearHeadwiseExpand` weight).
pub fn headwise(
    ctx: &Context,
    graph: &mut Graph,
    w: &Tensor,
    bias: Option<&Tensor>,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
) -> Result<()> {
    let parts = Projections {
        parts: 1,
        first: 0,
        sources: &[0],
    };
    headwise_stacked(ctx, graph, w, &parts, bias, x, y, beta)
}

/// Which projections of a stacked headwise weight (P NH, O, I) a product computes, and where
/// their inputs are.
pub struct Projections<'a> {
    /// P: how many headwise weights of NH heads the tensor stacks.
    pub parts: usize,
    /// The first projection computed.
    pub first: usize,
    /// The first input column of each projection computed (at most 4).
    pub sources: &'a [usize],
}

/// Several headwise projections in one dispatch: projections `first .. first + S` (S =
/// `sources.len()`, at most 4) of W (P NH, O, I), which stacks P block-diagonal weights of NH
/// heads each. Projection `first + s` reads the NH I input columns that start at column
/// `sources[s]` of x, and y (T, S NH O) receives the products side by side:
/// `y[t, s NH O + h O + o] = sum_i W[(first + s) NH + h, o, i] x[t, sources[s] + h I + i]`
/// (+ bias (S NH O), + beta y). How the mLSTM block computes q, k and v, and the sLSTM block
/// its four gates, with one kernel launch.
#[allow(clippy::too_many_arguments)]
pub fn headwise_stacked(
    ctx: &Context,
    graph: &mut Graph,
    w: &Tensor,
    parts: &Projections<'_>,
    bias: Option<&Tensor>,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
) -> Result<()> {
    let kernel = MatmulKernel::choose_headwise(ctx, x.rows);
    record_headwise(ctx, graph, kernel, w, parts, bias, x, y, beta)
}

/// [`headwise_stacked`] with an explicit kernel variant.
#[allow(clippy::too_many_arguments)]
fn record_headwise(
    ctx: &Context,
    graph: &mut Graph,
    kernel: MatmulKernel,
    w: &Tensor,
    parts: &Projections<'_>,
    bias: Option<&Tensor>,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
) -> Result<()> {
    let &[blocks, o, i] = w.shape() else {
        return Err(Error::mismatch(
            format!("headwise weight '{}' rank", w.label()),
            "3 dims (heads, out, in)",
            format!("{:?}", w.shape()),
        ));
    };
    let (p, sources) = (parts.parts, parts.sources);
    if p == 0
        || blocks % p != 0
        || !(1..=4).contains(&sources.len())
        || parts.first + sources.len() > p
    {
        return Err(Error::mismatch(
            format!("stacked headwise weight '{}' {:?}", w.label(), w.shape()),
            format!("{p} projections dividing its first dim, of which at most 4 computed"),
            format!(
                "projections {} .. {}",
                parts.first,
                parts.first + sources.len()
            ),
        ));
    }
    let heads = blocks / p;
    // The shader finds each row's head with a float division, exact below 2^22 rows.
    if blocks * o >= 1 << 22 {
        return Err(Error::Limit {
            what: format!("headwise weight '{}' with {} rows", w.label(), blocks * o),
            detail: "at most 2^22 rows".into(),
        });
    }
    for &c in sources {
        if c + heads * i > x.cols {
            return Err(Error::mismatch(
                format!("headwise input columns for weight '{}'", w.label()),
                format!("at least {} (source at column {c})", c + heads * i),
                x.cols,
            ));
        }
    }
    let mut cols = [0u32; 4];
    for (dst, &c) in cols.iter_mut().zip(sources) {
        *dst = u32_param("headwise source column", c)?;
    }
    let layout = Heads {
        head_rows: o,
        proj_rows: heads * o,
        first_row: parts.first * heads * o,
        rows: sources.len() * heads * o,
        cols,
        aligned: i % 4 == 0 && sources.iter().all(|c| c % 4 == 0),
    };
    let epilogue = Epilogue::new(bias, beta);
    record(ctx, graph, kernel, w, x, y, &epilogue, Some(&layout))
}

/// How a block-diagonal weight reads its inputs: row r belongs to projection
/// `r / proj_rows` and, within it, head `(r % proj_rows) / head_rows`, whose I inputs start
/// at column `cols[projection] + head * I`.
struct Heads {
    head_rows: usize,
    proj_rows: usize,
    /// The first weight row read, and the rows computed from there.
    first_row: usize,
    rows: usize,
    cols: [u32; 4],
    /// Every head's inputs start at a multiple of 4 columns.
    aligned: bool,
}

/// [`matmul`] with an explicit kernel variant.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    ctx: &Context,
    graph: &mut Graph,
    kernel: MatmulKernel,
    w: &Tensor,
    bias: Option<&Tensor>,
    x: View<'_>,
    y: View<'_>,
    beta: f32,
) -> Result<()> {
    record(
        ctx,
        graph,
        kernel,
        w,
        x,
        y,
        &Epilogue::new(bias, beta),
        None,
    )
}

/// Shared recorder; `heads` = Some for a block-diagonal weight.
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    graph: &mut Graph,
    kernel: MatmulKernel,
    w: &Tensor,
    x: View<'_>,
    y: View<'_>,
    epilogue: &Epilogue<'_>,
    heads: Option<&Heads>,
) -> Result<()> {
    let (bias, beta) = (epilogue.bias, epilogue.beta);
    if !(epilogue.cap >= 0.0 && epilogue.cap.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "soft cap of '{}' must be positive and finite, got {}",
            w.label(),
            epilogue.cap
        )));
    }
    let (m, k) = (heads.map_or(w.rows(), |h| h.rows), w.cols());
    // Headwise inputs were checked against their sources by the caller; gated inputs are
    // [a | b], K columns each.
    let x_cols = match (heads, epilogue.gated) {
        (Some(_), _) => x.cols,
        (None, Some(_)) => 2 * k,
        (None, None) => k,
    };
    if !w.dtype().is_float() || w.stride() % 8 != 0 {
        return Err(Error::mismatch(
            format!("matmul weight '{}'", w.label()),
            "an f32/f16/bf16/q8/q4 matrix made with Tensor::weight (rows padded to 8)",
            format!("{} with row stride {}", w.dtype(), w.stride()),
        ));
    }
    x.check("matmul input")?;
    y.check("matmul output")?;
    if x.cols != x_cols {
        return Err(Error::mismatch(
            format!(
                "matmul input columns for weight '{}' {:?}",
                w.label(),
                w.shape()
            ),
            x_cols,
            x.cols,
        ));
    }
    if heads.is_some() && epilogue.gated.is_some() {
        return Err(Error::InvalidArgument(format!(
            "gated inputs are for dense weights, not the headwise '{}'",
            w.label()
        )));
    }
    if heads.is_some() && kernel.dense_only() {
        return Err(Error::InvalidArgument(format!(
            "matmul kernel {kernel:?} reads dense weights only, not the headwise '{}'",
            w.label()
        )));
    }
    if heads.is_some() && w.chunks().len() > 1 {
        return Err(Error::Limit {
            what: format!("headwise weight '{}'", w.label()),
            detail: "it must fit one storage binding".into(),
        });
    }
    if y.cols != m || y.rows != x.rows {
        return Err(Error::mismatch(
            format!("matmul output for weight '{}' {:?}", w.label(), w.shape()),
            format!("{} x {m}", x.rows),
            format!("{} x {}", y.rows, y.cols),
        ));
    }
    if let Some(b) = bias {
        b.expect(&format!("bias of '{}'", w.label()), &[m], DType::F32)?;
    }
    distinct("matmul", x.tensor, y.tensor)?;
    if !kernel.available(ctx) {
        return Err(Error::Limit {
            what: format!("matmul kernel {kernel:?} for weight '{}'", w.label()),
            detail: "it needs the SUBGROUP feature with one subgroup size of at least 8 \
                     (and SHADER_INT64 for the 64-bit variants)"
                .into(),
        });
    }
    let t = x.rows;
    let wg = kernel.workgroup(ctx);
    // Block starts are c + k with k a multiple of 8 and c = head * K: aligned when the
    // view's offset and stride are, and K too for headwise weights.
    // Gates start K columns after their inputs: aligned when K is too.
    let x4 = x.rows_in_quads()
        && heads.is_none_or(|h| h.aligned)
        && (epilogue.gated.is_none() || k % 4 == 0);
    let shape = RowShape::of(kernel, w.dtype(), m, k);
    let pairs = kernel.pairs(w.dtype(), shape, t);
    let gated = epilogue.gated.map(|act| ("GLU", act.code() + 1.0));
    let constants: Vec<(&str, f64)> = [
        ("WDT", w.dtype().weight_code()),
        ("HEADS", heads.is_some() as u8 as f64),
        (
            "ROW_COLS",
            heads.is_some_and(|h| h.head_rows % 4 != 0) as u8 as f64,
        ),
        ("WG", wg as f64),
        ("X4", x4 as u8 as f64),
    ]
    .into_iter()
    .chain(gated)
    .collect();
    let (shader, entry) = kernel.entry(gated.is_some(), shape, pairs);
    let pipeline = ctx.pipeline(shader, entry, &constants)?;
    for chunk in w.chunks() {
        let rows = heads.map_or(chunk.rows, |h| h.rows);
        let (grid, groups_x) = match kernel {
            MatmulKernel::Coop4 | MatmulKernel::Rows8 | MatmulKernel::Gemm16 => {
                // Workgroups of 1 (Coop4), 8 (Rows8) or 32 (Gemm16) rows in (x, y), tokens
                // in z.
                let (row_groups, per) = match kernel {
                    MatmulKernel::Coop4 => (rows, 4),
                    MatmulKernel::Rows8 => (rows.div_ceil(8), 1),
                    _ => (rows.div_ceil(32), 16),
                };
                let gx = row_groups.min(MAX_GROUPS_PER_DIM as usize);
                (
                    RowGrid::Z {
                        x: gx,
                        y: row_groups.div_ceil(gx),
                        per,
                    },
                    gx,
                )
            }
            // The row-streaming kernels.
            _ => (
                RowGrid::Y {
                    x: row_groups(kernel, rows, k, wg, shape, pairs),
                    per: kernel.tokens_per_workgroup(pairs),
                },
                0,
            ),
        };
        let params = Params {
            k: u32_param("matmul K", k)?,
            m: u32_param("matmul rows", rows)?,
            t: u32_param("matmul tokens", t)?,
            w_stride: u32_param("weight stride", w.stride())?,
            x_stride: u32_param("input stride", x.stride)?,
            x_offset: u32_param("input offset", x.offset)?,
            y_stride: u32_param("output stride", y.stride)?,
            y_offset: u32_param("output offset", y.offset)?,
            row_base: u32_param("row base", chunk.first_row)?,
            beta,
            has_bias: bias.is_some() as u32,
            groups_x: groups_x as u32,
            head_rows: u32_param("head rows", heads.map_or(0, |h| h.head_rows))?,
            cap: epilogue.cap,
            s_stride: u32_param(
                "scale stride",
                w.dtype().quant().map_or(0, |q| q.scale_row_words(k)),
            )?,
            proj_rows: u32_param("projection rows", heads.map_or(0, |h| h.proj_rows))?,
            proj_cols: heads.map_or([0; 4], |h| h.cols),
            w_row0: u32_param("first weight row", heads.map_or(0, |h| h.first_row))?,
            glu_cols: if epilogue.gated.is_some() {
                u32_param("gate column", k)?
            } else {
                0
            },
            _pad: [0; 2],
        };
        let uniform = ctx.uniform("matmul params", &params)?;
        let bias_binding = match bias {
            Some(b) => b.binding()?,
            None => x.binding()?,
        };
        let mut resources = vec![
            uniform.as_entire_binding(),
            chunk.binding(),
            x.binding()?,
            bias_binding,
            y.binding()?,
            x.binding()?,
            chunk.scales_binding().unwrap_or_else(|| chunk.binding()),
        ];
        if kernel.is_wide() {
            // The weights again, as 64-bit words.
            resources.push(chunk.binding());
        }
        graph.dispatch_rows(ctx, &pipeline, &resources, grid, t)?;
    }
    Ok(())
}

/// Which entry points the subgroup kernels take for a weight's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowShape {
    Any,
    /// `*_short`: dense rows of 64 or 128 weights, whose inputs are loaded once per
    /// workgroup.
    Short,
    /// `*_few`: at most 8 rows, K split over the lanes.
    Few,
    /// `gemm_medium` (the subgroup GEMMs only): dense rows of 192 or 256 weights, whose
    /// inputs are loaded once per workgroup.
    Medium,
}

impl RowShape {
    fn of(kernel: MatmulKernel, dtype: DType, rows: usize, k: usize) -> Self {
        match kernel.is_subgroup() {
            true if rows <= 8 => RowShape::Few,
            true if dtype.quant().is_none() && (k == 64 || k == 128) => RowShape::Short,
            true if dtype.quant().is_none()
                && (k == 192 || k == 256)
                && matches!(
                    kernel,
                    MatmulKernel::GemmSubgroup | MatmulKernel::GemmSubgroup64
                ) =>
            {
                RowShape::Medium
            }
            _ => RowShape::Any,
        }
    }
}

/// Workgroups along the rows of a streaming kernel (row groups of four rows per invocation,
/// or two with `pairs`). The GEMVs' workgroups loop over row groups (and the subgroup GEMM's
/// over short rows, `gemm_short`, `gemm_medium` and their pair forms; `*_few` is one
/// workgroup per token or four), so on CPU
/// adapters (where a workgroup's start-up costs microseconds) short rows go several groups
/// to a workgroup: each gets at least MIN_WORK weights.
fn row_groups(
    kernel: MatmulKernel,
    rows: usize,
    k: usize,
    wg: usize,
    shape: RowShape,
    pairs: bool,
) -> usize {
    const MIN_WORK: usize = 4096 * 32;
    let groups = rows.div_ceil(if pairs { 2 } else { 4 } * wg);
    if shape == RowShape::Few {
        return 1;
    }
    let looping = match kernel {
        MatmulKernel::GemvSubgroup | MatmulKernel::GemvSubgroup64 | MatmulKernel::Gemv => true,
        MatmulKernel::GemmSubgroup | MatmulKernel::GemmSubgroup64 => {
            matches!(shape, RowShape::Short | RowShape::Medium)
        }
        _ => false,
    };
    match looping {
        true => groups.min((rows * k).div_ceil(MIN_WORK)).max(1),
        false => groups,
    }
}

/// CPU reference, accumulated in f64: `x (T, K) W (M, K)^T + bias`, returned as (T, M).
pub fn reference(w: &[f32], k: usize, x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (m, t) = (w.len() / k, x.len() / k);
    let mut y = vec![0.0f32; t * m];
    for ti in 0..t {
        for o in 0..m {
            let mut acc = bias.map_or(0.0, |b| b[o] as f64);
            for j in 0..k {
                acc += x[ti * k + j] as f64 * w[o * k + j] as f64;
            }
            y[ti * m + o] = acc as f32;
        }
    }
    y
}

/// CPU reference of [`headwise`]: W (NH, O, I), x (T, NH * I) -> (T, NH * O).
pub fn headwise_reference(w: &[f32], heads: usize, o: usize, x: &[f32]) -> Vec<f32> {
    let i = w.len() / (heads * o);
    let t = x.len() / (heads * i);
    let mut y = vec![0.0f32; t * heads * o];
    for ti in 0..t {
        for h in 0..heads {
            let xs = &x[ti * heads * i + h * i..][..i];
            let ws = &w[h * o * i..(h + 1) * o * i];
            let part = reference(ws, i, xs, None);
            y[ti * heads * o + h * o..][..o].copy_from_slice(&part);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu, round_to, Rng};
    use crate::HostData;

    #[allow(clippy::too_many_arguments)]
    fn check(
        ctx: &Context,
        kernel: MatmulKernel,
        dtype: DType,
        m: usize,
        k: usize,
        t: usize,
        with_bias: bool,
        beta: f32,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let w = rng.normal_vec(m * k, 1.0 / (k as f32).sqrt());
        let x = rng.normal_vec(t * k, 1.0);
        let b = rng.normal_vec(m, 0.5);
        let y0 = rng.normal_vec(t * m, 1.0);
        let wt = Tensor::weight(ctx, "w", &[m, k], dtype, HostData::F32(&w)).unwrap();
        let xt = Tensor::from_f32(ctx, "x", &[t, k], &x).unwrap();
        let bt = Tensor::from_f32(ctx, "b", &[m], &b).unwrap();
        let yt = Tensor::from_f32(ctx, "y", &[t, m], &y0).unwrap();
        let mut g = Graph::new();
        matmul_with(
            ctx,
            &mut g,
            kernel,
            &wt,
            with_bias.then_some(&bt),
            View::of(&xt),
            View::of(&yt),
            beta,
        )
        .unwrap();
        ctx.run(&[&g]).unwrap();
        let w_used = round_to(dtype, &w, k);
        let mut want = reference(&w_used, k, &x, with_bias.then_some(&b[..]));
        for (v, y) in want.iter_mut().zip(&y0) {
            *v += beta * y;
        }
        let got = yt.to_f32().unwrap();
        let what = format!("{kernel:?} {dtype} m={m} k={k} t={t}");
        assert_close(&got, &want, 2e-5, 2e-5, &what);
    }

    #[test]
    fn all_kernels_match_reference_on_odd_shapes() {
        let ctx = gpu();
        let shapes = [
            (1, 1, 1),
            (7, 13, 1),
            (65, 37, 3),
            (130, 100, 5),
            (33, 257, 9),
            (200, 64, 2),
            (41, 1030, 2),
            // One token over many spans of 128 and a tail (the quantised GEMV's held words).
            (45, 1030, 1),
            (70, 100, 21),
            // Short rows whose inputs the subgroup kernels load once per workgroup (`*_short`).
            (100, 192, 1),
            (37, 128, 2),
            (45, 128, 11),
            (300, 64, 6),
            // (Past four tokens the subgroup GEMM takes its pair kernels, `gemm_pairs*`.)
            // Rows of 192 or 256 weights, whose inputs the subgroup GEMM loads once per
            // workgroup (`gemm_medium`; `gemm_pairs_medium` past four tokens).
            (70, 256, 7),
            (33, 192, 5),
            (33, 192, 4),
            (70, 256, 19),
            // At most 8 rows, K split over the lanes (`*_few`).
            (8, 768, 1),
            (5, 203, 6),
        ];
        for (i, &(m, k, t)) in shapes.iter().enumerate() {
            for kernel in MatmulKernel::ALL.into_iter().filter(|k| k.available(ctx)) {
                for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q8, DType::Q4] {
                    let bias = i % 2 == 0;
                    let beta = if i % 3 == 0 { 1.0 } else { 0.0 };
                    check(ctx, kernel, dtype, m, k, t, bias, beta, 17 + i as u64);
                }
            }
        }
    }

    #[test]
    fn pair_kernels_give_the_bits_of_the_four_token_ones() {
        // The first four of six tokens through `gemm_pairs*` and alone through the
        // four-token kernels: each row is summed in the same order.
        let ctx = gpu();
        let mut rng = Rng::new(23);
        let kernels = [MatmulKernel::GemmSubgroup64, MatmulKernel::GemmSubgroup];
        for kernel in kernels.into_iter().filter(|k| k.available(ctx)) {
            for (m, k) in [(37, 100), (45, 128), (33, 256)] {
                for dtype in [DType::F32, DType::F16, DType::BF16] {
                    assert!(kernel.pairs(dtype, RowShape::of(kernel, dtype, m, k), 6));
                    let w = rng.normal_vec(m * k, 1.0 / (k as f32).sqrt());
                    let x = rng.normal_vec(6 * k, 1.0);
                    let wt = Tensor::weight(ctx, "w", &[m, k], dtype, HostData::F32(&w)).unwrap();
                    let run = |t: usize| {
                        let xt = Tensor::from_f32(ctx, "x", &[t, k], &x[..t * k]).unwrap();
                        let yt = Tensor::zeros(ctx, "y", &[t, m], DType::F32).unwrap();
                        let mut g = Graph::new();
                        let (x, y) = (View::of(&xt), View::of(&yt));
                        matmul_with(ctx, &mut g, kernel, &wt, None, x, y, 0.0).unwrap();
                        ctx.run(&[&g]).unwrap();
                        yt.to_f32().unwrap()
                    };
                    let (six, four) = (run(6), run(4));
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    let what = format!("{kernel:?} {dtype} m={m} k={k}");
                    assert_eq!(bits(&six[..4 * m]), bits(&four), "{what}");
                }
            }
        }
    }

    const DTYPES: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::Q8, DType::Q4];

    #[test]
    fn gated_inputs_match_the_reference_on_every_kernel() {
        // x is [a | b] (K columns each) inside a wider buffer, from column `left`; K not a
        // multiple of 8 (a partial last block, gates unaligned) and a multiple of 8 (whole
        // blocks, vec4 loads when the view is aligned).
        let ctx = gpu();
        let mut rng = Rng::new(41);
        let cases = [
            (37, 13, 3, 1),
            (64, 40, 1, 0),
            (9, 96, 6, 4),
            (130, 33, 2, 4),
            // `gemm_pairs_medium` and `gemm_medium` (K = 256), as the gated FFNs'
            // down-projections use them.
            (40, 256, 6, 0),
            (40, 256, 3, 0),
        ];
        for (i, &(m, k, t, left)) in cases.iter().enumerate() {
            let act = [Activation::Gelu, Activation::Silu][i % 2];
            let width = left + 2 * k + 3;
            let wide = rng.normal_vec(t * width, 1.5);
            let w = rng.normal_vec(m * k, 1.0 / (k as f32).sqrt());
            let b = rng.normal_vec(m, 0.5);
            let y0 = rng.normal_vec(t * m, 1.0);
            let gated: Vec<f32> = (0..t)
                .flat_map(|r| {
                    let row = &wide[r * width + left..][..2 * k];
                    (0..k).map(move |j| act.apply(row[j]) * row[k + j])
                })
                .collect();
            let xt = Tensor::from_f32(ctx, "x", &[t, width], &wide).unwrap();
            let bt = Tensor::from_f32(ctx, "b", &[m], &b).unwrap();
            let kernels = MatmulKernel::ALL.into_iter().filter(|k| k.available(ctx));
            for (j, kernel) in kernels.enumerate() {
                // Each kernel sees every weight dtype across the cases, two per case (each
                // pipeline compiles in about a second on lavapipe).
                for dtype in [DTYPES[(i + j) % 5], DTYPES[(i + j + 2) % 5]] {
                    let wt = Tensor::weight(ctx, "w", &[m, k], dtype, HostData::F32(&w)).unwrap();
                    let yt = Tensor::from_f32(ctx, "y", &[t, m], &y0).unwrap();
                    let mut g = Graph::new();
                    let xv = View::of(&xt).select_cols(left..left + 2 * k);
                    let beta = (i % 2) as f32;
                    let epilogue = Epilogue {
                        gated: Some(act),
                        ..Epilogue::new(Some(&bt), beta)
                    };
                    record(ctx, &mut g, kernel, &wt, xv, View::of(&yt), &epilogue, None).unwrap();
                    ctx.run(&[&g]).unwrap();
                    let mut want = reference(&round_to(dtype, &w, k), k, &gated, Some(&b));
                    for (v, y) in want.iter_mut().zip(&y0) {
                        *v += beta * y;
                    }
                    let what = format!("gated {act:?} {kernel:?} {dtype} m={m} k={k} t={t}");
                    assert_close(&yt.to_f32().unwrap(), &want, 2e-5, 2e-5, &what);
                }
            }
        }
        // The input must be [a | b]: 2 K columns.
        let wt = Tensor::weight(ctx, "w", &[4, 8], DType::F32, HostData::F32(&[0.0; 32])).unwrap();
        let xt = Tensor::zeros(ctx, "x", &[1, 8], DType::F32).unwrap();
        let yt = Tensor::zeros(ctx, "y", &[1, 4], DType::F32).unwrap();
        let err = matmul_gated(
            ctx,
            &mut Graph::new(),
            &wt,
            None,
            Activation::Silu,
            View::of(&xt),
            View::of(&yt),
            0.0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected 16"), "{err}");
    }

    #[test]
    fn chunked_weights_give_the_same_result() {
        // A 1 KiB binding limit forces weights of a few hundred elements into many chunks.
        let ctx = crate::testing::gpu_with_binding_limit(1024);
        for kernel in MatmulKernel::ALL.into_iter().filter(|k| k.available(&ctx)) {
            for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q8, DType::Q4] {
                check(&ctx, kernel, dtype, 53, 24, 3, true, 0.0, 5);
                // Past four tokens: the subgroup GEMM's pair kernels (y within one binding).
                check(&ctx, kernel, dtype, 45, 24, 5, false, 1.0, 6);
            }
        }
        let w = Tensor::weight(
            &ctx,
            "w",
            &[53, 24],
            DType::F32,
            HostData::F32(&[0.0; 53 * 24]),
        )
        .unwrap();
        assert!(w.chunks().len() > 1, "the test must exercise chunking");
    }

    #[test]
    fn views_read_and_write_sub_windows() {
        // x is columns 3..3+K of a wider buffer; y is columns 2..2+M of another.
        let ctx = gpu();
        let (m, k, t) = (9, 10, 3);
        let mut rng = Rng::new(3);
        let w = rng.normal_vec(m * k, 0.3);
        let wide = rng.normal_vec(t * 20, 1.0);
        let wt = Tensor::weight(ctx, "w", &[m, k], DType::F32, HostData::F32(&w)).unwrap();
        let xt = Tensor::from_f32(ctx, "x", &[t, 20], &wide).unwrap();
        let x: Vec<f32> = (0..t)
            .flat_map(|r| wide[r * 20 + 3..r * 20 + 3 + k].to_vec())
            .collect();
        let want = reference(&w, k, &x, None);
        for kernel in MatmulKernel::ALL.into_iter().filter(|k| k.available(ctx)) {
            let yt = Tensor::zeros(ctx, "y", &[t, 15], DType::F32).unwrap();
            let mut g = Graph::new();
            let xv = View::of(&xt).select_cols(3..3 + k);
            let yv = View::of(&yt).select_cols(2..2 + m);
            matmul_with(ctx, &mut g, kernel, &wt, None, xv, yv, 0.0).unwrap();
            ctx.run(&[&g]).unwrap();
            let got = yt.to_f32().unwrap();
            for r in 0..t {
                assert_close(
                    &got[r * 15 + 2..r * 15 + 2 + m],
                    &want[r * m..(r + 1) * m],
                    1e-5,
                    1e-5,
                    &format!("{kernel:?} view"),
                );
                assert!(
                    got[r * 15..r * 15 + 2].iter().all(|&v| v == 0.0),
                    "{kernel:?} wrote outside the window"
                );
            }
        }
    }

    #[test]
    fn headwise_matches_reference() {
        let ctx = gpu();
        // (heads, out, in, tokens): the xlstm shapes (qkv blocks of 4, sLSTM heads) and odd ones.
        for (n, &(heads, o, i, t)) in [
            (4, 4, 4, 3),
            (2, 9, 9, 1),
            (3, 5, 7, 6),
            (8, 4, 4, 9),
            (3, 8, 13, 5),
        ]
        .iter()
        .enumerate()
        {
            for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q8, DType::Q4] {
                let mut rng = Rng::new(n as u64);
                let w = rng.normal_vec(heads * o * i, 0.5);
                let x = rng.normal_vec(t * heads * i, 1.0);
                let wt =
                    Tensor::weight(ctx, "hw", &[heads, o, i], dtype, HostData::F32(&w)).unwrap();
                let xt = Tensor::from_f32(ctx, "x", &[t, heads * i], &x).unwrap();
                let yt = Tensor::zeros(ctx, "y", &[t, heads * o], DType::F32).unwrap();
                let mut g = Graph::new();
                headwise(ctx, &mut g, &wt, None, View::of(&xt), View::of(&yt), 0.0).unwrap();
                ctx.run(&[&g]).unwrap();
                let want = headwise_reference(&round_to(dtype, &w, i), heads, o, &x);
                let what = format!("headwise {heads}x{o}x{i} t={t} {dtype}");
                assert_close(&yt.to_f32().unwrap(), &want, 2e-5, 2e-5, &what);
            }
        }
    }

    #[test]
    fn stacked_headwise_projections_match_the_reference_on_every_kernel() {
        let ctx = gpu();
        // (parts, heads, out, in, first, sources): q/k/v-like (aligned), odd shapes, and the
        // sLSTM expert's last two of four.
        type Case = (usize, usize, usize, usize, usize, &'static [usize]);
        let cases: [Case; 3] = [
            (3, 4, 4, 4, 0, &[16, 16, 0]),
            (4, 3, 5, 7, 1, &[2, 30, 9]),
            (4, 2, 32, 32, 2, &[0, 0]),
        ];
        for (n, &(parts, heads, o, i, first, sources)) in cases.iter().enumerate() {
            let cols = sources.iter().max().unwrap() + heads * i + 3;
            let out = sources.len() * heads * o;
            for dtype in [DType::F32, DType::F16, DType::Q8] {
                for t in [1, 5] {
                    let mut rng = Rng::new(100 + n as u64);
                    let w = rng.normal_vec(parts * heads * o * i, 0.5);
                    let x = rng.normal_vec(t * cols, 1.0);
                    let bias = rng.normal_vec(out, 1.0);
                    let shape = [parts * heads, o, i];
                    let wt = Tensor::weight(ctx, "hw", &shape, dtype, HostData::F32(&w)).unwrap();
                    let xt = Tensor::from_f32(ctx, "x", &[t, cols], &x).unwrap();
                    let bt = Tensor::from_f32(ctx, "b", &[out], &bias).unwrap();
                    let wr = round_to(dtype, &w, i);
                    let block = heads * o * i;
                    let mut want = vec![0.0f32; t * out];
                    for (s, &c) in sources.iter().enumerate() {
                        let ws = &wr[(first + s) * block..(first + s + 1) * block];
                        let xs: Vec<f32> = (0..t)
                            .flat_map(|r| x[r * cols + c..r * cols + c + heads * i].to_vec())
                            .collect();
                        let part = headwise_reference(ws, heads, o, &xs);
                        for r in 0..t {
                            for j in 0..heads * o {
                                let b = s * heads * o + j;
                                want[r * out + b] = part[r * heads * o + j] + bias[b];
                            }
                        }
                    }
                    let projections = Projections {
                        parts,
                        first,
                        sources,
                    };
                    let what = format!("stacked headwise case {n} {dtype} t={t}");
                    for kernel in MatmulKernel::ALL.into_iter().filter(|k| k.available(ctx)) {
                        let yt = Tensor::zeros(ctx, "y", &[t, out], DType::F32).unwrap();
                        let mut g = Graph::new();
                        let (xv, yv) = (View::of(&xt), View::of(&yt));
                        let b = Some(&bt);
                        if kernel.dense_only() {
                            let err = record_headwise(
                                ctx,
                                &mut g,
                                kernel,
                                &wt,
                                &projections,
                                b,
                                xv,
                                yv,
                                0.0,
                            )
                            .unwrap_err();
                            assert!(err.to_string().contains("dense weights only"), "{err}");
                            continue;
                        }
                        record_headwise(ctx, &mut g, kernel, &wt, &projections, b, xv, yv, 0.0)
                            .unwrap();
                        ctx.run(&[&g]).unwrap();
                        let w = format!("{what} {kernel:?}");
                        assert_close(&yt.to_f32().unwrap(), &want, 2e-5, 2e-5, &w);
                    }
                }
            }
        }
        // Bad stacks are errors naming the weight.
        let wt = Tensor::weight(
            ctx,
            "qkv",
            &[6, 4, 4],
            DType::F32,
            HostData::F32(&[0.0; 96]),
        )
        .unwrap();
        let xt = Tensor::zeros(ctx, "x", &[1, 8], DType::F32).unwrap();
        let yt = Tensor::zeros(ctx, "y", &[1, 48], DType::F32).unwrap();
        for (parts, first, sources) in [(4, 0, &[0usize][..]), (3, 2, &[0, 0]), (3, 0, &[0, 0, 8])]
        {
            let p = Projections {
                parts,
                first,
                sources,
            };
            let (xv, yv) = (View::of(&xt), View::of(&yt));
            let err = headwise_stacked(ctx, &mut Graph::new(), &wt, &p, None, xv, yv, 0.0)
                .unwrap_err()
                .to_string();
            assert!(err.contains("'qkv'"), "{err}");
        }
    }

    #[test]
    fn soft_capped_products_match_the_reference_on_every_kernel() {
        let ctx = gpu();
        let (m, k, t, cap) = (37, 21, 5, 30.0f32);
        let mut rng = Rng::new(41);
        // Products far beyond the cap (|v| up to ~100) and near zero.
        let w = rng.normal_vec(m * k, 8.0);
        let x = rng.normal_vec(t * k, 1.0);
        let wt = Tensor::weight(ctx, "head", &[m, k], DType::BF16, HostData::F32(&w)).unwrap();
        let xt = Tensor::from_f32(ctx, "x", &[t, k], &x).unwrap();
        let want: Vec<f32> = reference(&round_to(DType::BF16, &w, k), k, &x, None)
            .iter()
            .map(|&v| (cap as f64 * (v as f64 / cap as f64).tanh()) as f32)
            .collect();
        assert!(want.iter().any(|v| v.abs() > 25.0), "the cap must bind");
        for kernel in MatmulKernel::ALL.into_iter().filter(|k| k.available(ctx)) {
            let yt = Tensor::zeros(ctx, "y", &[t, m], DType::F32).unwrap();
            let mut g = Graph::new();
            let epilogue = Epilogue {
                cap,
                ..Epilogue::new(None, 0.0)
            };
            record(
                ctx,
                &mut g,
                kernel,
                &wt,
                View::of(&xt),
                View::of(&yt),
                &epilogue,
                None,
            )
            .unwrap();
            ctx.run(&[&g]).unwrap();
            let what = format!("{kernel:?} soft cap");
            assert_close(&yt.to_f32().unwrap(), &want, 1e-5, 1e-5, &what);
        }
    }

    #[test]
    fn shape_errors_are_typed() {
        let ctx = gpu();
        let w =
            Tensor::weight(ctx, "proj", &[4, 8], DType::F32, HostData::F32(&[0.0; 32])).unwrap();
        let x = Tensor::zeros(ctx, "x", &[2, 7], DType::F32).unwrap();
        let y = Tensor::zeros(ctx, "y", &[2, 4], DType::F32).unwrap();
        let err = matmul(
            ctx,
            &mut Graph::new(),
            &w,
            None,
            View::of(&x),
            View::of(&y),
            0.0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("proj") && err.contains("expected 8, got 7"),
            "{err}"
        );
        let err = matmul(
            ctx,
            &mut Graph::new(),
            &w,
            None,
            View::of(&y),
            View::of(&y),
            0.0,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("input columns"), "{err}");
    }
}
