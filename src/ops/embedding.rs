//! Embedding lookup: one row of a (V, D) table per token id. Kernel:
//! `shaders/embedding.wgsl`.
//!
//! Shapes: table (V, D) f32, f16, bf16, q8 or q4, possibly chunked by rows and padded (a
//! [`Tensor::weight`] can serve both as embedding and as tied LM head); ids u32 (N);
//! out an (N, D) view. Ids must be below V: the caller validates ids that come from the
//! host, and sampled ids are below V by construction.

use bytemuck::{Pod, Zeroable};

use super::{u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    stride: u32,
    row_base: u32,
    chunk_rows: u32,
    out_stride: u32,
    out_offset: u32,
    s_stride: u32,
}

/// Records `out[r] = table[ids[r]]` (one dispatch per table chunk).
pub fn embedding(
    ctx: &Context,
    graph: &mut Graph,
    table: &Tensor,
    ids: &Tensor,
    out: View<'_>,
) -> Result<()> {
    if !table.dtype().is_float() || table.shape().len() != 2 {
        return Err(Error::mismatch(
            format!("embedding table '{}'", table.label()),
            "an f32/f16/bf16/q8/q4 (vocab, dim) matrix",
            format!("{} {:?}", table.dtype(), table.shape()),
        ));
    }
    if ids.dtype() != DType::U32 || ids.numel() != out.rows {
        return Err(Error::mismatch(
            "embedding ids",
            format!("u32 ({})", out.rows),
            format!("{} {:?}", ids.dtype(), ids.shape()),
        ));
    }
    out.check("embedding output")?;
    if out.cols != table.cols() {
        return Err(Error::mismatch(
            format!("embedding output columns for table '{}'", table.label()),
            table.cols(),
            out.cols,
        ));
    }
    let wdt = table.dtype().weight_code();
    let pipeline = ctx.pipeline("embedding", "lookup", &[("WDT", wdt)])?;
    for chunk in table.chunks() {
        let params = Params {
            rows: u32_param("embedding rows", out.rows)?,
            dim: u32_param("embedding dim", out.cols)?,
            stride: u32_param("table stride", table.stride())?,
            row_base: u32_param("chunk start", chunk.first_row)?,
            chunk_rows: u32_param("chunk rows", chunk.rows)?,
            out_stride: u32_param("stride", out.stride)?,
            out_offset: u32_param("offset", out.offset)?,
            s_stride: u32_param(
                "scale stride",
                table
                    .dtype()
                    .quant()
                    .map_or(0, |q| q.scale_row_words(table.cols())),
            )?,
        };
        let uniform = ctx.uniform("embedding params", &params)?;
        graph.dispatch_rows(
            ctx,
            &pipeline,
            &[
                uniform.as_entire_binding(),
                chunk.binding(),
                ids.binding()?,
                out.binding()?,
                chunk.scales_binding().unwrap_or_else(|| chunk.binding()),
            ],
            RowGrid::YZ {
                x: out.cols.div_ceil(64),
            },
            out.rows,
        )?;
    }
    Ok(())
}

/// CPU reference: rows of `table` (V, D) picked by `ids`.
pub fn reference(table: &[f32], dim: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gpu, gpu_with_binding_limit, round_to, Rng};
    use crate::HostData;

    /// Looks up random ids; returns the number of table chunks.
    fn check(ctx: &Context, v: usize, d: usize, dtype: DType) -> usize {
        let mut rng = Rng::new(v as u64);
        let table = rng.normal_vec(v * d, 1.0);
        let ids: Vec<u32> = (0..23)
            .map(|_| rng.below(v) as u32)
            .chain([0, v as u32 - 1])
            .collect();
        let tt = Tensor::weight(ctx, "table", &[v, d], dtype, HostData::F32(&table)).unwrap();
        let it = Tensor::from_u32(ctx, "ids", &[ids.len()], &ids).unwrap();
        let out = Tensor::zeros(ctx, "out", &[ids.len(), d], DType::F32).unwrap();
        let mut g = Graph::new();
        embedding(ctx, &mut g, &tt, &it, View::of(&out)).unwrap();
        ctx.run(&[&g]).unwrap();
        let used = if dtype != DType::F32 {
            round_to(dtype, &table, d)
        } else {
            table
        };
        assert_eq!(
            out.to_f32().unwrap(),
            reference(&used, d, &ids),
            "v={v} d={d} {dtype}"
        );
        tt.chunks().len()
    }

    #[test]
    fn looks_up_rows_in_every_weight_dtype() {
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q8, DType::Q4] {
            assert_eq!(check(gpu(), 97, 13, dtype), 1);
            assert_eq!(check(gpu(), 5, 64, dtype), 1);
        }
    }

    #[test]
    fn looks_up_rows_across_table_chunks() {
        // 4 KiB bindings: the table spans several chunks, the output fits one.
        let ctx = gpu_with_binding_limit(4096);
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q8, DType::Q4] {
            assert!(check(&ctx, 301, 20, dtype) > 1, "the table must be chunked");
        }
    }
}
