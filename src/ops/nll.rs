//! Per-token negative log-likelihood (for perplexity): `nll[r] = logsumexp(logits[r]) -
//! logits[r, target[r]]`. Kernel: `shaders/nll.wgsl`.
//!
//! Shapes: logits an (N, V) view; targets u32 (N), each below V (validated by the caller);
//! nll f32 (N).

use bytemuck::{Pod, Zeroable};

use super::{u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, Workgroups};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    vocab: u32,
    rows: u32,
    logits_stride: u32,
    logits_offset: u32,
}

/// Records the NLL of `targets` under `logits`.
pub fn nll(
    ctx: &Context,
    graph: &mut Graph,
    logits: View<'_>,
    targets: &Tensor,
    out: &Tensor,
) -> Result<()> {
    logits.check("nll logits")?;
    let rows = logits.rows;
    if targets.dtype() != DType::U32 || targets.numel() != rows {
        return Err(Error::mismatch(
            "nll targets",
            format!("u32 ({rows})"),
            format!("{} {:?}", targets.dtype(), targets.shape()),
        ));
    }
    out.expect("nll output", &[rows], DType::F32)?;
    if rows == 0 {
        return Ok(());
    }
    let params = Params {
        vocab: u32_param("vocab", logits.cols)?,
        rows: u32_param("rows", rows)?,
        logits_stride: u32_param("stride", logits.stride)?,
        logits_offset: u32_param("offset", logits.offset)?,
    };
    let pipeline = ctx.pipeline("nll", "nll_rows", &[])?;
    let uniform = ctx.uniform("nll params", &params)?;
    graph.dispatch(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            logits.binding()?,
            targets.binding()?,
            out.binding()?,
        ],
        Workgroups::linear(rows),
    )
}

/// CPU reference (f64).
pub fn reference(logits: &[f32], vocab: usize, targets: &[u32]) -> Vec<f32> {
    logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &t)| {
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            (s.ln() + m - row[t as usize] as f64) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gpu, Rng};

    #[test]
    fn matches_reference() {
        let ctx = gpu();
        for &(rows, v) in &[(1, 1), (5, 300), (3, 4099)] {
            let mut rng = Rng::new(v as u64);
            let logits = rng.normal_vec(rows * v, 4.0);
            let targets: Vec<u32> = (0..rows).map(|_| rng.below(v) as u32).collect();
            let lt = Tensor::from_f32(ctx, "logits", &[rows, v], &logits).unwrap();
            let tt = Tensor::from_u32(ctx, "targets", &[rows], &targets).unwrap();
            let out = Tensor::zeros(ctx, "nll", &[rows], DType::F32).unwrap();
            let mut g = Graph::new();
            nll(ctx, &mut g, View::of(&lt), &tt, &out).unwrap();
            ctx.run(&[&g]).unwrap();
            let want = reference(&logits, v, &targets);
            assert_close(
                &out.to_f32().unwrap(),
                &want,
                2e-5,
                2e-6,
                &format!("nll {rows}x{v}"),
            );
        }
    }
}
