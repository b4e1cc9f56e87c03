//! GPU operations. Each op is one file here plus one `.wgsl` file in `shaders/`; each has a
//! CPU reference (`reference`) and GPU tests against it in the same file.
//!
//! Ops do not run anything: they RECORD dispatches into a [`Graph`](crate::Graph) (building
//! their bind groups and parameter uniforms once), and the graph is replayed every step.
//! Activations are f32 and addressed through [`View`]s (strided 2-D windows), so splits and
//! concatenations cost no copies.

pub mod conv1d;
pub mod elementwise;
pub mod embedding;
pub mod gate;
pub mod group_route;
pub mod layer_norm;
pub mod matmul;
pub mod mlstm_cell;
pub mod mlstm_expert;
pub mod moe_rows;
pub mod nll;
pub mod probe;
pub mod route;
pub mod router_stats;
pub mod sample;
pub mod skip_gate;
pub mod slstm_cell;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// A 2-D window of an f32 tensor: `rows` rows of `cols` elements; element (r, c) is element
/// `offset + r * stride + c` of the tensor's buffer.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub tensor: &'a Tensor,
    pub offset: usize,
    pub stride: usize,
    pub rows: usize,
    pub cols: usize,
}

impl<'a> View<'a> {
    /// The whole tensor as `rows() x cols()`.
    pub fn of(tensor: &'a Tensor) -> Self {
        View {
            tensor,
            offset: 0,
            stride: tensor.stride(),
            rows: tensor.rows(),
            cols: tensor.cols(),
        }
    }

    /// The whole (contiguous) tensor seen as `rows x cols` (same element count).
    pub fn reshaped(tensor: &'a Tensor, rows: usize, cols: usize) -> Result<Self> {
        if rows * cols != tensor.numel() || tensor.stride() != tensor.cols() {
            return Err(Error::mismatch(
                format!("view of tensor '{}' as {rows}x{cols}", tensor.label()),
                format!("a contiguous tensor of {} elements", rows * cols),
                format!("{:?} with row stride {}", tensor.shape(), tensor.stride()),
            ));
        }
        Ok(View {
            tensor,
            offset: 0,
            stride: cols,
            rows,
            cols,
        })
    }

    /// Columns `range` of every row.
    pub fn select_cols(self, range: Range<usize>) -> Self {
        View {
            offset: self.offset + range.start,
            cols: range.len(),
            ..self
        }
    }

    /// Whether every row starts on a 16-byte boundary (offset and stride multiples of 4
    /// elements), so kernels may move its quads as vec4s.
    pub fn rows_in_quads(&self) -> bool {
        self.offset % 4 == 0 && self.stride % 4 == 0
    }

    /// Rows `range`.
    pub fn select_rows(self, range: Range<usize>) -> Self {
        View {
            offset: self.offset + range.start * self.stride,
            rows: range.len(),
            ..self
        }
    }

    /// Checks that the view is an in-bounds window of a single-buffer f32 tensor.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        let t = self.tensor;
        if t.dtype() != DType::F32 {
            return Err(Error::mismatch(
                format!("{what} ('{}') dtype", t.label()),
                "f32",
                t.dtype(),
            ));
        }
        t.buffer()?;
        let end = if self.rows == 0 || self.cols == 0 {
            self.offset
        } else {
            self.offset + (self.rows - 1) * self.stride + self.cols
        };
        if end > t.rows() * t.stride() || (self.rows > 1 && self.stride < self.cols) {
            return Err(Error::mismatch(
                format!("{what} window of tensor '{}' {:?}", t.label(), t.shape()),
                format!("at most {} elements", t.rows() * t.stride()),
                format!(
                    "{} rows x {} cols, stride {}, offset {} (ends at {end})",
                    self.rows, self.cols, self.stride, self.offset
                ),
            ));
        }
        Ok(())
    }

    /// The underlying buffer as a binding.
    pub(crate) fn binding(&self) -> Result<wgpu::BindingResource<'a>> {
        self.tensor.binding()
    }
}

/// Fails when an op would read and write the same buffer (a data race, and a usage
/// conflict wgpu rejects).
pub(crate) fn distinct(what: &str, input: &Tensor, output: &Tensor) -> Result<()> {
    if input.buffer()? == output.buffer()? {
        return Err(Error::InvalidArgument(format!(
            "{what}: input '{}' and output '{}' share a buffer; use separate tensors",
            input.label(),
            output.label()
        )));
    }
    Ok(())
}

/// How many loop iterations one shader invocation may run. llvmpipe (lavapipe) ends every
/// loop of an invocation once all its loops together have iterated 65535 times
/// (`LP_MAX_TGSI_LOOP_ITERATIONS`), silently: kernels that loop over tokens are therefore
/// dispatched once per segment of tokens whose counted iterations (documented in each
/// shader) stay below this budget, half the limit for margin. Short dispatches also keep
/// GPU drivers' watchdogs away.
pub const LOOP_BUDGET: usize = 32_000;

/// Splits `tokens` into segments of whole `unit`s (the last may be partial) such that
/// `fixed + units * unit_cost` loop iterations stay within [`LOOP_BUDGET`].
pub fn segments(tokens: usize, unit: usize, unit_cost: usize, fixed: usize) -> Vec<Range<usize>> {
    let units = (LOOP_BUDGET.saturating_sub(fixed) / unit_cost.max(1)).max(1);
    let len = units * unit;
    (0..tokens.div_ceil(len))
        .map(|s| s * len..((s + 1) * len).min(tokens))
        .collect()
}

/// Converts a size to u32 for a kernel parameter, failing clearly past 2^32.
pub(crate) fn u32_param(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Limit {
        what: format!("{what} = {v}"),
        detail: "kernel parameters are 32-bit".into(),
    })
}
