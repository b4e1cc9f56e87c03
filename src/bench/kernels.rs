//! Kernel benchmarks: GEMV bandwidth beside a read-bandwidth probe on the same adapter, and
//! the prefill GEMM's throughput.

use std::fmt::Write as _;

use super::time_graph;
use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::matmul::{matmul_with, MatmulKernel};
use crate::ops::probe::{probe, Pattern};
use crate::ops::View;
use crate::tensor::{DType, HostData, Tensor};
use crate::testing::Rng;

/// One GEMV (one token) or GEMM (several) measurement.
#[derive(Debug, Clone)]
pub struct GemvResult {
    pub rows: usize,
    pub cols: usize,
    pub tokens: usize,
    pub dtype: DType,
    pub kernel: MatmulKernel,
    pub seconds: f64,
    /// Weight bytes read per second.
    pub gbps: f64,
}

/// Times `y = W x` for one token with W (rows, cols) in `dtype`.
pub fn gemv(
    ctx: &Context,
    rows: usize,
    cols: usize,
    dtype: DType,
    kernel: MatmulKernel,
    budget_secs: f64,
) -> Result<GemvResult> {
    product(ctx, rows, cols, 1, dtype, kernel, budget_secs)
}

/// Times `y = x W^T` for `tokens` tokens with W (rows, cols) in `dtype`.
pub fn product(
    ctx: &Context,
    rows: usize,
    cols: usize,
    tokens: usize,
    dtype: DType,
    kernel: MatmulKernel,
    budget_secs: f64,
) -> Result<GemvResult> {
    let mut rng = Rng::new(1);
    let w = rng.uniform_vec(rows * cols, -0.01, 0.01);
    let wt = Tensor::weight(ctx, "bench w", &[rows, cols], dtype, HostData::F32(&w))?;
    drop(w);
    let x = Tensor::from_f32(
        ctx,
        "bench x",
        &[tokens, cols],
        &rng.uniform_vec(tokens * cols, -1.0, 1.0),
    )?;
    let y = Tensor::zeros(ctx, "bench y", &[tokens, rows], DType::F32)?;
    let mut g = Graph::new();
    matmul_with(
        ctx,
        &mut g,
        kernel,
        &wt,
        None,
        View::of(&x),
        View::of(&y),
        0.0,
    )?;
    let seconds = time_graph(ctx, &g, budget_secs, 3)?;
    // Data, padding and (quantised formats) block scales: every byte the GEMV reads.
    let bytes = wt.bytes() as f64;
    Ok(GemvResult {
        rows,
        cols,
        tokens,
        dtype,
        kernel,
        seconds,
        gbps: bytes / seconds / 1e9,
    })
}

/// The buffer the read probe streams: [`probe_bytes`] of ones, made once per report.
pub fn probe_source(ctx: &Context) -> Result<Tensor> {
    let words = probe_bytes(ctx) / 4 / 4 * 4;
    Tensor::from_u32(ctx, "probe src", &[words], &vec![1u32; words])
}

/// Read bandwidth (GB/s) of the probe kernel over `src` with `threads` invocations in
/// workgroups of `workgroup`.
pub fn probe_bandwidth(
    ctx: &Context,
    src: &Tensor,
    probe_config: ProbeConfig,
    budget_secs: f64,
) -> Result<f64> {
    let ProbeConfig {
        pattern,
        workgroup,
        threads,
        wide,
    } = probe_config;
    let sink = Tensor::zeros(ctx, "probe sink", &[threads], DType::U32)?;
    let mut g = Graph::new();
    probe(ctx, &mut g, pattern, workgroup, wide, src, &sink)?;
    let seconds = time_graph(ctx, &g, budget_secs, 3)?;
    Ok((src.numel() * 4) as f64 / seconds / 1e9)
}

/// Bytes the read probe streams: 64 MiB on CPU adapters (this VM's last-level cache is
/// larger, so they read cache-resident rates, as their GEMVs at these sizes do), 1 GiB on
/// GPUs (well past their L2: an H200 has 50 MiB), within the adapter's binding limit.
pub fn probe_bytes(ctx: &Context) -> usize {
    let limit = usize::try_from(ctx.max_binding_bytes()).unwrap_or(usize::MAX);
    let wanted = if ctx.is_cpu() { 64 << 20 } else { 1 << 30 };
    wanted.min(limit)
}

/// The probe's layouts on CPU adapters (access pattern, workgroup size, invocations): the
/// fastest there are among them.
const CPU_PROBES: [(Pattern, usize, usize); 4] = [
    (Pattern::Stream, 8, 256),
    (Pattern::Stream, 8, 1024),
    (Pattern::Stream, 64, 1024),
    (Pattern::Coalesced, 64, 1 << 16),
];

/// The probe's layouts on GPUs: coalesced, with enough invocations in flight to cover the
/// memory latency (a few hundred threads streaming alone leave a GPU idle).
const GPU_PROBES: [(Pattern, usize, usize); 2] = [
    (Pattern::Coalesced, 64, 1 << 16),
    (Pattern::Coalesced, 256, 1 << 20),
];

/// One configuration of the read probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    pub pattern: Pattern,
    pub workgroup: usize,
    pub threads: usize,
    /// 64-bit loads (SHADER_INT64), as the CPU adapters' matmul kernels read weights.
    pub wide: bool,
}

/// Every probe layout for this adapter, with 32-bit and (where the device has SHADER_INT64)
/// 64-bit loads.
pub fn probe_configs(ctx: &Context) -> Vec<ProbeConfig> {
    let int64 = ctx.shader_int64();
    let widths: &[bool] = if int64 { &[false, true] } else { &[false] };
    let layouts: &[(Pattern, usize, usize)] = if ctx.is_cpu() {
        &CPU_PROBES
    } else {
        &GPU_PROBES
    };
    widths
        .iter()
        .flat_map(|&wide| {
            layouts
                .iter()
                .map(move |&(pattern, workgroup, threads)| ProbeConfig {
                    pattern,
                    workgroup,
                    threads,
                    wide,
                })
        })
        .collect()
}

/// The read bandwidth (GB/s) of the probe's best configuration: the yardstick of every
/// bandwidth figure.
pub fn best_probe_bandwidth(ctx: &Context, budget_secs: f64) -> Result<f64> {
    let src = probe_source(ctx)?;
    probe_configs(ctx).into_iter().try_fold(0.0f64, |best, c| {
        Ok(best.max(probe_bandwidth(ctx, &src, c, budget_secs)?))
    })
}

/// Rounds of the probe and GEMV measurements; each figure is its best round. Interleaving
/// them keeps a slow spell of a shared machine from landing on one side of the ratio only.
const ROUNDS: usize = 3;

/// The `moxe bench kernels` report: GEMV GB/s (weight bytes read, scales included) for
/// 1024^2, 4096^2 and 10944x4096 (xLSTM-7B's FFN) in f16, bf16, q8 and q4 (and f32 at
/// 4096^2) beside the probe's read bandwidth, and each dtype's 4096^2 GEMV as a share of it.
pub fn report(ctx: &Context, budget_secs: f64) -> Result<String> {
    let mut s = String::new();
    let info = ctx.adapter_info();
    let _ = writeln!(
        s,
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    let probes = probe_configs(ctx);
    // The engine's decode kernel (marked *), and plain gemv beside it where that differs.
    let chosen = MatmulKernel::choose(ctx, 1);
    let mut kernels = vec![chosen];
    if chosen != MatmulKernel::Gemv && ctx.cpu_kernels() {
        kernels.push(MatmulKernel::Gemv);
    }
    let mut gemvs = Vec::new();
    for (rows, cols) in [(1024, 1024), (4096, 4096), (10944, 4096)] {
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q8, DType::Q4] {
            if dtype == DType::F32 && rows != 4096 {
                continue;
            }
            for &kernel in &kernels {
                gemvs.push((rows, cols, dtype, kernel));
            }
        }
    }
    let src = probe_source(ctx)?;
    let bytes = src.numel() * 4;
    let mut probe_gbps = vec![0.0f64; probes.len()];
    let mut gemv_best: Vec<Option<GemvResult>> = vec![None; gemvs.len()];
    for _ in 0..ROUNDS {
        for (best, &c) in probe_gbps.iter_mut().zip(&probes) {
            *best = best.max(probe_bandwidth(ctx, &src, c, budget_secs)?);
        }
        for (best, &(rows, cols, dtype, kernel)) in gemv_best.iter_mut().zip(&gemvs) {
            let r = gemv(ctx, rows, cols, dtype, kernel, budget_secs)?;
            if best.as_ref().is_none_or(|b| r.gbps > b.gbps) {
                *best = Some(r);
            }
        }
    }
    // The probe's best configuration is the yardstick.
    let best_probe = probe_gbps.iter().copied().fold(0.0, f64::max);
    for (gbps, c) in probe_gbps.iter().zip(probes) {
        let words = if c.wide { 64 } else { 32 };
        let _ = writeln!(
            s,
            "read probe ({:?}, workgroup {}, {} invocations, {words}-bit loads, {} MiB): {gbps:6.2} GB/s",
            c.pattern,
            c.workgroup,
            c.threads,
            bytes >> 20
        );
    }
    let _ = writeln!(
        s,
        "\n{:<14} {:>5} {:>13} {:>10} {:>9} {:>7}",
        "gemv", "dtype", "kernel", "time us", "GB/s", "probe%"
    );
    let mut shares_4096 = Vec::new();
    for r in gemv_best.into_iter().flatten() {
        let share = 100.0 * r.gbps / best_probe;
        if (r.rows, r.cols, r.kernel) == (4096, 4096, chosen) {
            shares_4096.push((r.dtype, share));
        }
        let marked = if r.kernel == chosen { "*" } else { "" };
        let _ = writeln!(
            s,
            "{:<14} {:>5} {:>13} {:>10.1} {:>9.2} {:>6.0}%",
            format!("{}x{}", r.rows, r.cols),
            r.dtype.name(),
            format!("{:?}{marked}", r.kernel).to_lowercase(),
            r.seconds * 1e6,
            r.gbps,
            share
        );
    }
    let _ = writeln!(s, "(each figure the best of {ROUNDS} interleaved rounds)");
    let share_of = |d: DType| shares_4096.iter().find(|(x, _)| *x == d).map(|x| x.1);
    if let Some(f16) = share_of(DType::F16) {
        let verdict = if f16 >= 60.0 { "meets" } else { "misses" };
        let _ = writeln!(
            s,
            "\nf16 GEMV 4096x4096 reads at {f16:.1}% of the probe ({verdict} the 60% target)"
        );
        for q in [DType::Q8, DType::Q4] {
            if let Some(share) = share_of(q) {
                let verdict = if share >= f16 { "at least" } else { "below" };
                let _ = writeln!(
                    s,
                    "{q} GEMV 4096x4096 reads at {share:.1}% of the probe ({verdict} f16's share)"
                );
            }
        }
    }
    s.push_str(&gemm_report(ctx, budget_secs)?);
    s.push_str(&super::mlstm::report(ctx, budget_secs)?);
    s.push_str(&super::slstm::report(ctx, budget_secs)?);
    Ok(s)
}

/// Tokens of the prefill GEMM measurement (a prompt chunk).
const GEMM_TOKENS: usize = 64;

/// The prefill GEMM at 4096x4096 over [`GEMM_TOKENS`] tokens in bf16 (xLSTM-7B's dtype) with
/// every many-token kernel of this kind of adapter (the engine's choice marked *), then in
/// f16, q8 and q4 with the engine's choice: time, GFLOP/s and weight bytes read per second.
fn gemm_report(ctx: &Context, budget_secs: f64) -> Result<String> {
    use MatmulKernel::*;
    let candidates: &[MatmulKernel] = if ctx.cpu_kernels() {
        &[GemmSubgroup64, GemmSubgroup, Gemm4]
    } else {
        &[Coop4, Gemm16]
    };
    let chosen = MatmulKernel::choose(ctx, GEMM_TOKENS);
    let (rows, cols) = (4096, 4096);
    let runs = candidates
        .iter()
        .filter(|k| k.available(ctx))
        .map(|&k| (DType::BF16, k))
        .chain([DType::F16, DType::Q8, DType::Q4].map(|d| (d, chosen)));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<26} {:>13} {:>10} {:>9} {:>9}",
        "gemm", "kernel", "time us", "GFLOP/s", "W GB/s"
    );
    for (dtype, kernel) in runs {
        let r = product(ctx, rows, cols, GEMM_TOKENS, dtype, kernel, budget_secs)?;
        let marked = if kernel == chosen { "*" } else { "" };
        let flops = 2.0 * (rows * cols * GEMM_TOKENS) as f64 / r.seconds / 1e9;
        let _ = writeln!(
            s,
            "{:<26} {:>13} {:>10.1} {:>9.1} {:>9.2}",
            format!("{rows}x{cols} {dtype}, {GEMM_TOKENS} tokens"),
            format!("{kernel:?}{marked}").to_lowercase(),
            r.seconds * 1e6,
            flops,
            r.gbps
        );
    }
    Ok(s)
}
