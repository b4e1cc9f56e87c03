//! GPU tensors: storage buffers with a shape and a dtype, upload and read-back, and
//! automatic splitting of tensors larger than one storage binding into row chunks.
//!
//! Layout: a tensor of shape `[d0, .., dn-1, cols]` is `rows = d0 * .. * dn-1` rows of
//! `cols` elements, stored row after row with `stride >= cols` elements per row (the padding
//! is zero). Dense tensors have `stride == cols` (rounded up to even for f16). Weight
//! matrices made with [`Tensor::weight`] have `stride` rounded up to a multiple of 8, so
//! kernels can read rows with aligned 16-byte vector loads in both f32 and packed f16.
//!
//! f16 and bf16 elements are stored as pairs packed in `u32` (element `2i` in the low half),
//! which is the same byte layout as `array<f16>`; kernels unpack f16 with
//! `unpack2x16float` (so f16 weights work on adapters without the SHADER_F16 feature) and
//! bf16 with a shift (`shaders/common/weights.wgsl`): bf16 checkpoints stay exact.
//!
//! Quantised weight matrices (q8, q4: [`crate::quant`]) keep each chunk's quantised data
//! first and its block scales after it (at an offset aligned for a binding), so that a
//! kernel binds the two regions of one buffer separately.
//!
//! A tensor whose bytes exceed [`Context::max_binding_bytes`] is split into chunks of whole
//! rows, each its own buffer; ops that read such a tensor record one dispatch per chunk.

use std::ops::Range;

use half::{bf16, f16};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::quant::QuantFormat;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    /// IEEE half, stored as pairs packed in u32.
    F16,
    /// bfloat16 (the top half of an f32), stored as pairs packed in u32.
    BF16,
    /// int8 weights with a scale per block of 32 ([`crate::quant`]); weight matrices only.
    Q8,
    /// 4-bit weights with a scale and minimum per block of 32; weight matrices only.
    Q4,
    U32,
    I32,
}

impl DType {
    /// Bytes per element (for q8 and q4: of the quantised data, rounded up; see
    /// [`DType::bits`]).
    pub fn size(self) -> usize {
        self.bits().div_ceil(8)
    }

    /// Bits per stored element (quantised formats: without their scales).
    pub fn bits(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 16,
            DType::Q8 => 8,
            DType::Q4 => 4,
            _ => 32,
        }
    }

    /// Bits a weight matrix element takes on the device, its block's scale word shared
    /// out (q8: 8 + 32/32, q4: 4 + 32/32); others as [`DType::bits`].
    pub fn device_bits(self) -> usize {
        match self {
            DType::Q8 | DType::Q4 => self.bits() + 32 / crate::quant::BLOCK,
            _ => self.bits(),
        }
    }

    /// Lower-case name (`f32`, `f16`, `bf16`, `q8`, `q4`, `u32`, `i32`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }

    /// Whether this holds real numbers (a float or quantised type).
    pub fn is_float(self) -> bool {
        !matches!(self, DType::U32 | DType::I32)
    }

    /// The quantised format, for q8 and q4.
    pub fn quant(self) -> Option<QuantFormat> {
        match self {
            DType::Q8 => Some(QuantFormat::Q8),
            DType::Q4 => Some(QuantFormat::Q4),
            _ => None,
        }
    }

    /// The dtype of a quantised format.
    pub fn of_quant(format: QuantFormat) -> Self {
        match format {
            QuantFormat::Q8 => DType::Q8,
            QuantFormat::Q4 => DType::Q4,
        }
    }

    /// The dtype a weight matrix with rows of `cols` elements is stored in when `self` is
    /// asked for: rows shorter than a quantisation block (the 4x4 blocks of the NeurIPS
    /// mLSTM's q/k/v projections) are not quantised ([`DType::unquantized`]).
    pub fn for_rows(self, cols: usize) -> Self {
        match self.quant() {
            Some(_) if cols < crate::quant::BLOCK => self.unquantized(),
            _ => self,
        }
    }

    /// What stands in for a quantised format where a matrix is not quantised: f32, so that
    /// a quantised model computes exactly what the float model does with the dequantised
    /// weights (such matrices are small: sLSTM's R, 4x4 q/k/v blocks). Other dtypes are
    /// themselves.
    pub fn unquantized(self) -> Self {
        match self.quant() {
            Some(_) => DType::F32,
            None => self,
        }
    }

    /// The `WDT` override of kernels that read weight matrices
    /// (`shaders/common/weights.wgsl`): 0 f32, 1 f16, 2 bf16, 3 q8, 4 q4.
    pub fn weight_code(self) -> f64 {
        match self {
            DType::F16 => 1.0,
            DType::BF16 => 2.0,
            DType::Q8 => 3.0,
            DType::Q4 => 4.0,
            _ => 0.0,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Host-side data to upload.
#[derive(Debug, Clone, Copy)]
pub enum HostData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    U32(&'a [u32]),
    I32(&'a [i32]),
}

impl HostData<'_> {
    fn len(&self) -> usize {
        match self {
            HostData::F32(d) => d.len(),
            HostData::F16(d) => d.len(),
            HostData::U32(d) => d.len(),
            HostData::I32(d) => d.len(),
        }
    }
}

/// One buffer of a tensor, holding rows `first_row .. first_row + rows`.
#[derive(Debug)]
pub struct Chunk {
    pub buffer: wgpu::Buffer,
    pub first_row: usize,
    pub rows: usize,
    /// Quantised chunks: where the block scales start and their bytes (the data before).
    scales: Option<(u64, u64)>,
}

impl Chunk {
    /// The chunk as a binding: the whole buffer, or a quantised chunk's data.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        match self.scales {
            None => self.buffer.as_entire_binding(),
            Some((offset, _)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.buffer,
                offset: 0,
                size: std::num::NonZeroU64::new(offset),
            }),
        }
    }

    /// A quantised chunk's block scales as a binding; `None` for other chunks.
    pub fn scales_binding(&self) -> Option<wgpu::BindingResource<'_>> {
        self.scales.map(|(offset, size)| {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.buffer,
                offset,
                size: std::num::NonZeroU64::new(size),
            })
        })
    }

    /// The row range this chunk holds.
    pub fn row_range(&self) -> Range<usize> {
        self.first_row..self.first_row + self.rows
    }
}

/// A GPU tensor. See the module documentation for the layout.
pub struct Tensor {
    ctx: Context,
    label: String,
    shape: Vec<usize>,
    dtype: DType,
    stride: usize,
    chunks: Vec<Chunk>,
    bytes: u64,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("label", &self.label)
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("stride", &self.stride)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

/// How rows lie in a chunk's buffer: `data` bytes each, and for quantised tensors `scale`
/// bytes each in a second region after the data (aligned to `align` for its binding).
/// A fill writes each row as its data followed by its scales.
struct RowLayout {
    data: usize,
    scale: usize,
    align: u64,
}

impl RowLayout {
    fn of(ctx: &Context, dtype: DType, stride: usize, cols: usize) -> Self {
        match dtype.quant() {
            None => RowLayout {
                data: stride * dtype.size(),
                scale: 0,
                align: 0,
            },
            Some(q) => RowLayout {
                data: q.data_row_bytes(cols),
                scale: 4 * q.scale_row_words(cols),
                align: ctx.limits().min_storage_buffer_offset_alignment.max(16) as u64,
            },
        }
    }

    /// Bytes of one row as a fill writes it.
    fn row_bytes(&self) -> usize {
        self.data + self.scale
    }

    /// The buffer size of a chunk of `n` rows (never empty, a multiple of 16) and, when
    /// quantised, its scales' (offset, bytes).
    fn chunk(&self, n: usize) -> (u64, Option<(u64, u64)>) {
        let data = (n * self.data) as u64;
        if self.scale == 0 {
            return (data.max(16).div_ceil(16) * 16, None);
        }
        let offset = data.max(16).div_ceil(self.align) * self.align;
        let scales = (n * self.scale) as u64;
        (offset + scales.max(16), Some((offset, scales.max(16))))
    }

    /// Copies filled rows (data then scales of each) of a chunk from row `r0` on into the
    /// mapped buffer.
    fn copy_rows(
        &self,
        view: &mut wgpu::BufferViewMut,
        scales: Option<(u64, u64)>,
        r0: usize,
        rows: &[u8],
    ) {
        match scales {
            None => {
                let at = r0 * self.data;
                view.slice(at..at + rows.len()).copy_from_slice(rows);
            }
            Some((offset, _)) => {
                let n = rows.len() / self.row_bytes();
                let mut data = Vec::with_capacity(n * self.data);
                let mut scale = Vec::with_capacity(n * self.scale);
                for row in rows.chunks_exact(self.row_bytes()) {
                    data.extend_from_slice(&row[..self.data]);
                    scale.extend_from_slice(&row[self.data..]);
                }
                let at = r0 * self.data;
                view.slice(at..at + data.len()).copy_from_slice(&data);
                let at = offset as usize + r0 * self.scale;
                view.slice(at..at + scale.len()).copy_from_slice(&scale);
            }
        }
    }
}

/// Bytes of rows staged at once while a weight's buffer is filled.
const FILL_BLOCK_BYTES: usize = 8 << 20;

/// Usage of every tensor buffer.
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        Some((&cols, rest)) => (rest.iter().product(), cols),
        None => (1, 1),
    }
}

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

impl Tensor {
    /// A dense tensor of zeros.
    pub fn zeros(ctx: &Context, label: &str, shape: &[usize], dtype: DType) -> Result<Self> {
        let (_, cols) = rows_cols(shape);
        let stride = if dtype.size() == 2 {
            round_up(cols, 2)
        } else {
            cols
        };
        Self::allocate(ctx, label, shape, dtype, stride, USAGE, None)
    }

    /// A tensor of zeros whose rows are padded to a multiple of 8 elements, like a weight
    /// matrix, so kernels can access rows with aligned 16-byte vector loads (recurrent state).
    pub fn zeros_aligned(
        ctx: &Context,
        label: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Self> {
        let (_, cols) = rows_cols(shape);
        Self::allocate(ctx, label, shape, dtype, round_up(cols, 8), USAGE, None)
    }

    /// A dense tensor holding `data` (`data.len()` must equal the product of `shape`).
    /// Float data may be uploaded as F32 or F16 (`dtype`); integer data keeps its type.
    pub fn from_host(
        ctx: &Context,
        label: &str,
        shape: &[usize],
        dtype: DType,
        data: HostData<'_>,
    ) -> Result<Self> {
        let (_, cols) = rows_cols(shape);
        let stride = if dtype.size() == 2 {
            round_up(cols, 2)
        } else {
            cols
        };
        Self::with_host_data(ctx, label, shape, dtype, stride, USAGE, data)
    }

    /// Shorthand for a dense f32 tensor from `data`.
    pub fn from_f32(ctx: &Context, label: &str, shape: &[usize], data: &[f32]) -> Result<Self> {
        Self::from_host(ctx, label, shape, DType::F32, HostData::F32(data))
    }

    /// Shorthand for a dense u32 tensor from `data`.
    pub fn from_u32(ctx: &Context, label: &str, shape: &[usize], data: &[u32]) -> Result<Self> {
        Self::from_host(ctx, label, shape, DType::U32, HostData::U32(data))
    }

    /// A weight matrix (rows padded to a multiple of 8 elements) in `dtype` (F32, F16, BF16,
    /// or Q8 / Q4 where rows are a block long: [`DType::for_rows`]).
    pub fn weight(
        ctx: &Context,
        label: &str,
        shape: &[usize],
        dtype: DType,
        data: HostData<'_>,
    ) -> Result<Self> {
        check_weight_dtype(label, dtype)?;
        let dtype = dtype.for_rows(rows_cols(shape).1);
        Self::with_host_data(
            ctx,
            label,
            shape,
            dtype,
            weight_stride(shape, dtype),
            USAGE,
            data,
        )
    }

    /// A weight matrix like [`Tensor::weight`] whose bytes `fill(rows, out)` writes straight
    /// into the GPU buffer: rows `rows` of the matrix in `dtype`, each
    /// [`weight_stride`]`(shape, dtype)` elements apart (the padding is already zero; a
    /// quantised row is its data then its scales, as [`crate::quant`] lays them out). Large
    /// matrices stream from a checkpoint this way without a host copy.
    pub fn weight_with(
        ctx: &Context,
        label: &str,
        shape: &[usize],
        dtype: DType,
        fill: Fill<'_>,
    ) -> Result<Self> {
        check_weight_dtype(label, dtype)?;
        let stride = weight_stride(shape, dtype);
        Self::allocate(ctx, label, shape, dtype, stride, USAGE, Some(fill))
    }

    fn with_host_data(
        ctx: &Context,
        label: &str,
        shape: &[usize],
        dtype: DType,
        stride: usize,
        usage: wgpu::BufferUsages,
        data: HostData<'_>,
    ) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            return Err(Error::mismatch(
                format!("data for tensor '{label}' of shape {shape:?}"),
                format!("{numel} elements"),
                format!("{} elements", data.len()),
            ));
        }
        check_kind(label, dtype, &data)?;
        let (_, cols) = rows_cols(shape);
        let mut fill = |rows: Range<usize>, out: &mut [u8]| {
            write_rows(out, &data, rows, cols, stride, dtype);
            Ok(())
        };
        Self::allocate(ctx, label, shape, dtype, stride, usage, Some(&mut fill))
    }

    /// A buffer of `count` indirect dispatch argument triples (x, y, z), also usable as a
    /// u32 storage tensor of shape `[count, 3]`.
    pub fn indirect_args(ctx: &Context, label: &str, count: usize) -> Result<Self> {
        Self::allocate(
            ctx,
            label,
            &[count, 3],
            DType::U32,
            3,
            USAGE | wgpu::BufferUsages::INDIRECT,
            None,
        )
    }

    fn allocate(
        ctx: &Context,
        label: &str,
        shape: &[usize],
        dtype: DType,
        stride: usize,
        usage: wgpu::BufferUsages,
        mut fill: Option<Fill<'_>>,
    ) -> Result<Self> {
        let (rows, cols) = rows_cols(shape);
        let layout = RowLayout::of(ctx, dtype, stride, cols);
        let limit = ctx.max_binding_bytes();
        let rows_per_chunk = limit
            .saturating_sub(layout.align)
            .checked_div(layout.row_bytes() as u64)
            .map_or(rows.max(1), |r| r as usize);
        if rows_per_chunk == 0 {
            return Err(Error::Limit {
                what: format!("tensor '{label}' of shape {shape:?} ({dtype})"),
                detail: format!(
                    "one row is {} bytes but a storage binding holds at most {limit} bytes",
                    layout.row_bytes()
                ),
            });
        }
        let mut chunks = Vec::new();
        let mut bytes = 0u64;
        let mut first = 0usize;
        let operation = format!("allocating tensor '{label}' of shape {shape:?} ({dtype})");
        loop {
            let n = rows_per_chunk.min(rows - first);
            let (size, scales) = layout.chunk(n);
            let buffer = ctx.scoped(&operation, || {
                ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage,
                    mapped_at_creation: fill.is_some(),
                })
            })?;
            if let Some(fill) = fill.as_mut() {
                {
                    let mut view =
                        buffer
                            .slice(..)
                            .get_mapped_range_mut()
                            .map_err(|e| Error::Device {
                                operation: operation.clone(),
                                message: e.to_string(),
                            })?;
                    // Mapped memory is write-only: rows are made in a bounded staging block
                    // and copied in, so a large matrix never has a second full copy.
                    let block = (FILL_BLOCK_BYTES / layout.row_bytes()).max(1);
                    let mut staging = Vec::new();
                    for r0 in (0..n).step_by(block) {
                        let r1 = (r0 + block).min(n);
                        staging.clear();
                        staging.resize((r1 - r0) * layout.row_bytes(), 0u8);
                        fill(first + r0..first + r1, &mut staging)?;
                        layout.copy_rows(&mut view, scales, r0, &staging);
                    }
                }
                buffer.unmap();
                ctx.note_staged(size)?;
            }
            bytes += size;
            chunks.push(Chunk {
                buffer,
                first_row: first,
                rows: n,
                scales,
            });
            first += n;
            if first >= rows {
                break;
            }
        }
        ctx.track_alloc(bytes);
        Ok(Tensor {
            ctx: ctx.clone(),
            label: label.to_string(),
            shape: shape.to_vec(),
            dtype,
            stride,
            chunks,
            bytes,
        })
    }

    /// The tensor's name (used in error messages and GPU labels).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Product of all dims but the last.
    pub fn rows(&self) -> usize {
        rows_cols(&self.shape).0
    }

    /// The last dim.
    pub fn cols(&self) -> usize {
        rows_cols(&self.shape).1
    }

    /// Elements between consecutive rows on the GPU.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Bytes of GPU memory held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The row chunks (one unless the tensor exceeds a storage binding).
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The single buffer of an unchunked tensor. Ops that accept chunked tensors iterate
    /// [`Tensor::chunks`] instead.
    pub fn buffer(&self) -> Result<&wgpu::Buffer> {
        match self.chunks.as_slice() {
            [one] => Ok(&one.buffer),
            many => Err(Error::Limit {
                what: format!("tensor '{}' ({} chunks)", self.label, many.len()),
                detail: "this operation needs it in one storage binding".into(),
            }),
        }
    }

    /// The whole (single-chunk) tensor as a binding.
    pub fn binding(&self) -> Result<wgpu::BindingResource<'_>> {
        Ok(self.buffer()?.as_entire_binding())
    }

    /// Checks shape and dtype, naming `what` in the error.
    pub fn expect(&self, what: &str, shape: &[usize], dtype: DType) -> Result<()> {
        if self.shape != shape || self.dtype != dtype {
            return Err(Error::mismatch(
                format!("{what} ('{}')", self.label),
                format!("{shape:?} {dtype}"),
                format!("{:?} {}", self.shape, self.dtype),
            ));
        }
        Ok(())
    }

    /// Overwrites the tensor with dense host data (same element count and kind).
    pub fn write(&self, data: HostData<'_>) -> Result<()> {
        if data.len() != self.numel() {
            return Err(Error::mismatch(
                format!("data written to tensor '{}'", self.label),
                format!("{} elements", self.numel()),
                format!("{} elements", data.len()),
            ));
        }
        self.write_rows(0, data)
    }

    /// Overwrites whole rows `first_row ..` with dense host data (a multiple of `cols()`
    /// elements), keeping the row padding.
    pub fn write_rows(&self, first_row: usize, data: HostData<'_>) -> Result<()> {
        check_kind(&self.label, self.dtype, &data)?;
        if self.dtype.quant().is_some() {
            return Err(Error::InvalidArgument(format!(
                "tensor '{}' is quantised ({}): its rows are written when it is made",
                self.label, self.dtype
            )));
        }
        let cols = self.cols();
        let n = data.len() / cols.max(1);
        if data.len() != n * cols || first_row + n > self.rows() {
            return Err(Error::mismatch(
                format!("rows written to tensor '{}' {:?}", self.label, self.shape),
                format!("whole rows of {cols} within {} rows", self.rows()),
                format!("{} elements from row {first_row}", data.len()),
            ));
        }
        let rows = first_row..first_row + n;
        for c in &self.chunks {
            let lo = rows.start.max(c.first_row);
            let hi = rows.end.min(c.first_row + c.rows);
            if lo >= hi {
                continue;
            }
            let mut staging = vec![0u8; (hi - lo) * self.stride * self.dtype.size()];
            let part = match data {
                HostData::F32(d) => {
                    HostData::F32(&d[(lo - first_row) * cols..(hi - first_row) * cols])
                }
                HostData::F16(d) => {
                    HostData::F16(&d[(lo - first_row) * cols..(hi - first_row) * cols])
                }
                HostData::U32(d) => {
                    HostData::U32(&d[(lo - first_row) * cols..(hi - first_row) * cols])
                }
                HostData::I32(d) => {
                    HostData::I32(&d[(lo - first_row) * cols..(hi - first_row) * cols])
                }
            };
            write_rows(
                &mut staging,
                &part,
                0..hi - lo,
                cols,
                self.stride,
                self.dtype,
            );
            let padded = staging.len().div_ceil(4) * 4;
            staging.resize(padded, 0);
            let offset = ((lo - c.first_row) * self.row_bytes()) as u64;
            self.ctx.queue().write_buffer(&c.buffer, offset, &staging);
        }
        Ok(())
    }

    /// Bytes between consecutive rows on the GPU (of a quantised tensor: of its data).
    pub fn row_bytes(&self) -> usize {
        match self.dtype.quant() {
            Some(q) => q.data_row_bytes(self.cols()),
            None => self.stride * self.dtype.size(),
        }
    }

    /// Rows `rows` of a quantised tensor, dequantised.
    fn quantized_rows_to_f32(&self, q: QuantFormat, rows: Range<usize>) -> Result<Vec<f32>> {
        let cols = self.cols();
        let (db, sw) = (q.data_row_bytes(cols), q.scale_row_words(cols));
        let operation = format!("reading back tensor '{}'", self.label);
        let mut out = Vec::with_capacity(rows.len() * cols);
        for c in &self.chunks {
            let lo = rows.start.max(c.first_row);
            let hi = rows.end.min(c.first_row + c.rows);
            let Some((offset, _)) = c.scales.filter(|_| lo < hi) else {
                continue;
            };
            let at = |row: usize, bytes: usize| ((row - c.first_row) * bytes) as u64;
            let len = ((hi - lo) * db) as u64;
            let data = read_buffer(&self.ctx, &c.buffer, at(lo, db), len, &operation)?;
            let len = ((hi - lo) * 4 * sw) as u64;
            let scales = read_buffer(
                &self.ctx,
                &c.buffer,
                offset + at(lo, 4 * sw),
                len,
                &operation,
            )?;
            let scales: Vec<u32> = bytemuck::pod_collect_to_vec(&scales);
            out.extend(crate::quant::dequantize(q, &data, &scales, cols));
        }
        Ok(out)
    }

    /// Reads rows `rows` back as raw element bytes, dense (padding dropped).
    fn read_bytes(&self, rows: Range<usize>) -> Result<Vec<u8>> {
        let esize = self.dtype.size();
        let row_bytes = self.stride * esize;
        let mut out = Vec::with_capacity(rows.len() * self.cols() * esize);
        let ctx = &self.ctx;
        let operation = format!("reading back tensor '{}'", self.label);
        for c in &self.chunks {
            let lo = rows.start.max(c.first_row);
            let hi = rows.end.min(c.first_row + c.rows);
            if lo >= hi {
                continue;
            }
            let start = ((lo - c.first_row) * row_bytes) as u64;
            let len = ((hi - lo) * row_bytes) as u64;
            let aligned_start = start / 4 * 4;
            let aligned_len = (start + len).div_ceil(4) * 4 - aligned_start;
            let bytes = read_buffer(ctx, &c.buffer, aligned_start, aligned_len, &operation)?;
            let skip = (start - aligned_start) as usize;
            for r in 0..hi - lo {
                let o = skip + r * row_bytes;
                out.extend_from_slice(&bytes[o..o + self.cols() * esize]);
            }
        }
        Ok(out)
    }

    /// Reads the whole tensor back as f32 (f16 is widened).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.rows_to_f32(0..self.rows())
    }

    /// Reads rows `rows` back as f32 (16-bit types are widened, quantised ones dequantised).
    pub fn rows_to_f32(&self, rows: Range<usize>) -> Result<Vec<f32>> {
        if let Some(q) = self.dtype.quant() {
            return self.quantized_rows_to_f32(q, rows);
        }
        let bytes = self.read_bytes(rows)?;
        match self.dtype {
            DType::F32 => Ok(bytemuck::pod_collect_to_vec(&bytes)),
            DType::F16 => Ok(bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            DType::BF16 => Ok(bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => Err(Error::mismatch(
                format!("read-back of tensor '{}' as f32", self.label),
                "a float tensor",
                other,
            )),
        }
    }

    /// Reads the whole tensor back as u32 (U32 or I32 tensors).
    pub fn to_u32(&self) -> Result<Vec<u32>> {
        if self.dtype.is_float() {
            return Err(Error::mismatch(
                format!("read-back of tensor '{}' as u32", self.label),
                "an integer tensor",
                self.dtype,
            ));
        }
        Ok(bytemuck::pod_collect_to_vec(
            &self.read_bytes(0..self.rows())?,
        ))
    }

    /// Reads the whole tensor back as i32 (U32 or I32 tensors).
    pub fn to_i32(&self) -> Result<Vec<i32>> {
        Ok(self.to_u32()?.into_iter().map(|x| x as i32).collect())
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        self.ctx.track_free(self.bytes);
    }
}

/// Writes rows `rows` of dense host data into `dst` (which starts at row `rows.start`),
/// converting to `dtype` and padding each row to `stride` elements with zeros.
fn write_rows(
    dst: &mut [u8],
    data: &HostData<'_>,
    rows: Range<usize>,
    cols: usize,
    stride: usize,
    dtype: DType,
) {
    if let Some(q) = dtype.quant() {
        // Each row as its quantised data then its scales (see `RowLayout`).
        let (db, sw) = (q.data_row_bytes(cols), q.scale_row_words(cols));
        let mut scales = vec![0u32; sw];
        for (i, r) in rows.enumerate() {
            let row: Vec<f32> = match data {
                HostData::F32(d) => d[r * cols..(r + 1) * cols].to_vec(),
                HostData::F16(d) => d[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|x| x.to_f32())
                    .collect(),
                _ => unreachable!("host data kind checked by check_kind"),
            };
            let out = &mut dst[i * (db + 4 * sw)..(i + 1) * (db + 4 * sw)];
            let (d, s) = out.split_at_mut(db);
            q.quantize_row(&row, d, &mut scales);
            s.copy_from_slice(bytemuck::cast_slice(&scales));
        }
        return;
    }
    let esize = dtype.size();
    for (i, r) in rows.enumerate() {
        let src = r * cols..(r + 1) * cols;
        let out = &mut dst[i * stride * esize..][..cols * esize];
        match (data, dtype) {
            (HostData::F32(d), DType::F32) => out.copy_from_slice(bytemuck::cast_slice(&d[src])),
            (HostData::F32(d), DType::F16) => {
                for (o, &x) in out.chunks_exact_mut(2).zip(&d[src]) {
                    o.copy_from_slice(&f16::from_f32(x).to_le_bytes());
                }
            }
            (HostData::F32(d), DType::BF16) => {
                for (o, &x) in out.chunks_exact_mut(2).zip(&d[src]) {
                    o.copy_from_slice(&bf16::from_f32(x).to_le_bytes());
                }
            }
            (HostData::F16(d), DType::F16) => out.copy_from_slice(bytemuck::cast_slice(&d[src])),
            (HostData::F16(d), DType::F32) => {
                for (o, &x) in out.chunks_exact_mut(4).zip(&d[src]) {
                    o.copy_from_slice(&x.to_f32().to_le_bytes());
                }
            }
            (HostData::F16(d), DType::BF16) => {
                for (o, &x) in out.chunks_exact_mut(2).zip(&d[src]) {
                    o.copy_from_slice(&bf16::from_f32(x.to_f32()).to_le_bytes());
                }
            }
            (HostData::U32(d), _) => out.copy_from_slice(bytemuck::cast_slice(&d[src])),
            (HostData::I32(d), _) => out.copy_from_slice(bytemuck::cast_slice(&d[src])),
            // Kind mismatches are rejected before any write.
            _ => unreachable!("host data kind checked by check_kind"),
        }
    }
}

/// Writes rows `rows` of a weight matrix into its buffer (see [`Tensor::weight_with`]).
pub type Fill<'a> = &'a mut dyn FnMut(Range<usize>, &mut [u8]) -> Result<()>;

/// Elements between the rows of a weight matrix of `shape` in `dtype`: the columns rounded
/// up to a multiple of 8, so kernels read rows with aligned 16-byte vector loads (of 32 for
/// quantised formats: whole blocks).
pub fn weight_stride(shape: &[usize], dtype: DType) -> usize {
    let cols = rows_cols(shape).1;
    match dtype.quant() {
        Some(q) => q.stride(cols),
        None => round_up(cols, 8),
    }
}

/// Bytes of one row of a weight matrix of `shape` in `dtype` as a [`Fill`] writes it:
/// `weight_stride` elements, or for quantised formats the row's data then its scale words.
pub fn fill_row_bytes(shape: &[usize], dtype: DType) -> usize {
    match dtype.quant() {
        Some(q) => q.row_bytes(rows_cols(shape).1),
        None => weight_stride(shape, dtype) * dtype.size(),
    }
}

fn check_weight_dtype(label: &str, dtype: DType) -> Result<()> {
    if !dtype.is_float() {
        return Err(Error::mismatch(
            format!("weight '{label}' dtype"),
            "f32, f16 or bf16",
            dtype,
        ));
    }
    Ok(())
}

/// Host data fits a tensor of `dtype`: floats for float tensors, u32 / i32 for those.
fn check_kind(label: &str, dtype: DType, data: &HostData<'_>) -> Result<()> {
    let host_is_float = matches!(data, HostData::F32(_) | HostData::F16(_));
    let host_matches = match data {
        HostData::U32(_) => dtype == DType::U32,
        HostData::I32(_) => dtype == DType::I32,
        _ => true,
    };
    if host_is_float != dtype.is_float() || !host_matches {
        return Err(Error::mismatch(
            format!("data for tensor '{label}'"),
            format!("{dtype} data"),
            "data of another type",
        ));
    }
    Ok(())
}

/// Copies `len` bytes at `offset` of `buffer` (both multiples of 4) to the host.
pub(crate) fn read_buffer(
    ctx: &Context,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: u64,
    operation: &str,
) -> Result<Vec<u8>> {
    let staging = ctx.scoped(operation, || {
        let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back staging"),
            size: len.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, len);
        ctx.queue().submit([enc.finish()]);
        staging
    })?;
    map_read(ctx, &staging, len, operation)
}

/// Maps a MAP_READ buffer after the work writing it was submitted, and copies it out.
pub(crate) fn map_read(
    ctx: &Context,
    staging: &wgpu::Buffer,
    len: u64,
    operation: &str,
) -> Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging
        .slice(..len.max(4))
        .map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
    ctx.wait(operation)?;
    // Another thread polling the same device may be the one running the callback, so it can
    // arrive an instant after our wait returns.
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .map_err(|_| Error::Device {
            operation: operation.to_string(),
            message: "the buffer was not mapped after the device finished".into(),
        })?
        .map_err(|e| Error::Device {
            operation: operation.to_string(),
            message: e.to_string(),
        })?;
    let out = {
        let view = staging
            .slice(..len.max(4))
            .get_mapped_range()
            .map_err(|e| Error::Device {
                operation: operation.to_string(),
                message: e.to_string(),
            })?;
        view[..len as usize].to_vec()
    };
    staging.unmap();
    Ok(out)
}
