//! Read-bandwidth probe: the plainest possible read of a buffer, as a yardstick for the
//! throughput of real kernels on the same adapter. Kernel: `shaders/bandwidth_probe.wgsl`.
//!
//! Shapes: src is any tensor whose byte size is a multiple of 16 (read as `vec4<u32>`, or as
//! `vec2<u64>` with SHADER_INT64, as the CPU adapters' matmul kernels read weights); sink is
//! (threads) u32 and receives each invocation's XOR of what it read.

use bytemuck::{Pod, Zeroable};

use super::u32_param;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, Workgroups};
use crate::tensor::{DType, Tensor};

/// How the probe's invocations walk the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Each invocation reads one contiguous span (CPU adapters' best case).
    Stream,
    /// Invocations read interleaved vec4s (GPUs' best case).
    Coalesced,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    span: u32,
    threads: u32,
    groups_x: u32,
}

/// Records one probe pass over `src` with `sink.numel()` invocations in workgroups of
/// `workgroup` (8, 64 or 256), loading 64-bit words when `wide` (SHADER_INT64).
pub fn probe(
    ctx: &Context,
    graph: &mut Graph,
    pattern: Pattern,
    workgroup: usize,
    wide: bool,
    src: &Tensor,
    sink: &Tensor,
) -> Result<()> {
    if !matches!(workgroup, 8 | 64 | 256) {
        return Err(Error::InvalidArgument(format!(
            "probe workgroup must be 8, 64 or 256, got {workgroup}"
        )));
    }
    let bytes = src.numel() * src.dtype().size();
    if bytes % 16 != 0 || src.chunks().len() != 1 {
        return Err(Error::mismatch(
            format!("probe source '{}'", src.label()),
            "one buffer, a multiple of 16 bytes",
            format!("{bytes} bytes in {} chunks", src.chunks().len()),
        ));
    }
    if sink.dtype() != DType::U32 {
        return Err(Error::mismatch("probe sink dtype", "u32", sink.dtype()));
    }
    if wide && !ctx.shader_int64() {
        return Err(Error::Limit {
            what: "the 64-bit read probe".into(),
            detail: "it needs the SHADER_INT64 feature, which this device lacks".into(),
        });
    }
    let n = bytes / 16;
    let threads = sink.numel();
    let groups = threads.div_ceil(workgroup);
    let groups_x = groups.min(crate::graph::MAX_GROUPS_PER_DIM as usize);
    let params = Params {
        n: u32_param("probe vec4 count", n)?,
        span: u32_param("probe span", n.div_ceil(threads))?,
        threads: u32_param("probe threads", threads)?,
        groups_x: groups_x as u32,
    };
    let entry = match pattern {
        Pattern::Stream => "stream",
        Pattern::Coalesced => "coalesced",
    };
    let shader = if wide {
        "bandwidth_probe64"
    } else {
        "bandwidth_probe"
    };
    let pipeline = ctx.pipeline(shader, entry, &[("WG", workgroup as f64)])?;
    let uniform = ctx.uniform("probe params", &params)?;
    let mut resources = vec![uniform.as_entire_binding(), src.binding()?, sink.binding()?];
    if wide {
        // The source again, as 64-bit words.
        resources.push(src.binding()?);
    }
    graph.dispatch(ctx, &pipeline, &resources, Workgroups::linear(groups))
}

/// CPU reference: the sink value of every invocation for `src` given as u32 words.
pub fn reference(src: &[u32], pattern: Pattern, threads: usize) -> Vec<u32> {
    let vecs: Vec<&[u32]> = src.chunks(4).collect();
    let n = vecs.len();
    let span = n.div_ceil(threads);
    (0..threads)
        .map(|i| {
            let indices: Vec<usize> = match pattern {
                Pattern::Stream => (i * span..((i + 1) * span).min(n)).collect(),
                Pattern::Coalesced => (i..n).step_by(threads).collect(),
            };
            indices
                .into_iter()
                .fold(0u32, |acc, j| acc ^ vecs[j].iter().fold(0, |a, b| a ^ b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gpu, Rng};

    #[test]
    fn both_patterns_read_every_element() {
        let ctx = gpu();
        let mut rng = Rng::new(9);
        let words: Vec<u32> = (0..4 * 1000).map(|_| rng.next_u64() as u32).collect();
        let src = Tensor::from_u32(ctx, "src", &[words.len()], &words).unwrap();
        let int64 = ctx.shader_int64();
        for pattern in [Pattern::Stream, Pattern::Coalesced] {
            for workgroup in [8, 64] {
                for wide in [false, true].into_iter().filter(|&w| !w || int64) {
                    let threads = 130;
                    let sink = Tensor::zeros(ctx, "sink", &[threads], DType::U32).unwrap();
                    let mut g = Graph::new();
                    probe(ctx, &mut g, pattern, workgroup, wide, &src, &sink).unwrap();
                    ctx.run(&[&g]).unwrap();
                    let want = reference(&words, pattern, threads);
                    let what = format!("{pattern:?} {workgroup} wide {wide}");
                    assert_eq!(sink.to_u32().unwrap(), want, "{what}");
                }
            }
        }
    }
}
