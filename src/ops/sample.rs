//! Sampling the next token on the GPU: greedy, temperature, top-k, top-p, seeded. Kernel:
//! `shaders/sample.wgsl`. Only the sampled ids (B u32) need to come back to the host.
//!
//! Shapes: logits a (B, V) view; settings u32 (B * 5) written per step with
//! [`settings_words`]; out u32 (>= out_offset + B).

use bytemuck::{Pod, Zeroable};

use super::{u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, Workgroups};
use crate::tensor::{DType, Tensor};

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = no limit).
    pub top_k: u32,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = all).
    pub top_p: f32,
    /// The same seed (and prompt) gives the same text.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::greedy()
    }
}

impl Sampling {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Checks the ranges: temperature 0 (greedy) or a finite normal number (the kernel
    /// takes its reciprocal in f32), top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        if !(t == 0.0 || (t.is_finite() && t >= f32::MIN_POSITIVE)) {
            return Err(Error::InvalidArgument(format!(
                "temperature must be 0 (greedy) or a finite number >= {:e}, got {t:?}",
                f32::MIN_POSITIVE
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }

    fn seed32(&self) -> u32 {
        (self.seed ^ (self.seed >> 32)) as u32
    }
}

/// The settings words of one sequence at decode step `step` (the step varies the draw).
pub fn settings_words(s: &Sampling, step: u32) -> [u32; 5] {
    [
        s.temperature.to_bits(),
        s.top_k,
        s.top_p.to_bits(),
        s.seed32(),
        step,
    ]
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    vocab: u32,
    seqs: u32,
    logits_stride: u32,
    logits_offset: u32,
    out_offset: u32,
    _pad: [u32; 3],
}

/// Invocations per sequence for this adapter: one SIMD group on CPU adapters (reducing by
/// subgroup operations where the adapter has them), 256 on GPUs.
pub fn threads_for(ctx: &Context) -> u32 {
    if ctx.cpu_kernels() {
        8
    } else {
        256
    }
}

/// Records sampling one id per row of `logits` into `out[out_offset + b]`.
pub fn sample(
    ctx: &Context,
    graph: &mut Graph,
    logits: View<'_>,
    settings: &Tensor,
    out: &Tensor,
    out_offset: usize,
) -> Result<()> {
    sample_with(
        ctx,
        graph,
        threads_for(ctx),
        logits,
        settings,
        out,
        out_offset,
    )
}

/// [`sample`] with `threads` invocations per sequence (a power of two, 1 to 256).
pub fn sample_with(
    ctx: &Context,
    graph: &mut Graph,
    threads: u32,
    logits: View<'_>,
    settings: &Tensor,
    out: &Tensor,
    out_offset: usize,
) -> Result<()> {
    if !threads.is_power_of_two() || threads > 256 {
        return Err(Error::InvalidArgument(format!(
            "sampling threads must be a power of two up to 256, got {threads}"
        )));
    }
    logits.check("sampling logits")?;
    let seqs = logits.rows;
    if settings.dtype() != DType::U32 || settings.numel() < seqs * 5 {
        return Err(Error::mismatch(
            "sampling settings",
            format!("u32 with at least {} words", seqs * 5),
            format!("{} {:?}", settings.dtype(), settings.shape()),
        ));
    }
    if out.dtype() != DType::U32 || out.numel() < out_offset + seqs {
        return Err(Error::mismatch(
            "sampled ids buffer",
            format!("u32 with at least {} elements", out_offset + seqs),
            format!("{} {:?}", out.dtype(), out.shape()),
        ));
    }
    let params = Params {
        vocab: u32_param("vocab", logits.cols)?,
        seqs: u32_param("sequences", seqs)?,
        logits_stride: u32_param("stride", logits.stride)?,
        logits_offset: u32_param("offset", logits.offset)?,
        out_offset: u32_param("offset", out_offset)?,
        _pad: [0; 3],
    };
    // Every row starts on 16 bytes: quads of logits load as one vec4.
    let v4 = logits.rows_in_quads();
    let constants = [("THREADS", threads as f64), ("V4", v4 as u8 as f64)];
    // One subgroup holds the workgroup: reduce with subgroup operations, no barriers.
    let module = match ctx.subgroup_holds(threads) {
        true => "sample_subgroup",
        false => "sample",
    };
    let pipeline = ctx.pipeline(module, "sample", &constants)?;
    let uniform = ctx.uniform("sample params", &params)?;
    graph.dispatch(
        ctx,
        &pipeline,
        &[
            uniform.as_entire_binding(),
            logits.binding()?,
            settings.binding()?,
            out.binding()?,
            logits.binding()?,
        ],
        Workgroups::grid(seqs, 1, 1)?,
    )
}

fn hash(x: u32) -> u32 {
    let h = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let h = ((h >> ((h >> 28) + 4)) ^ h).wrapping_mul(277_803_737);
    (h >> 22) ^ h
}

/// The uniform draw in [0, 1) the kernel uses at `step` (independent of the batch row).
pub fn draw(s: &Sampling, step: u32) -> f32 {
    let r = hash(s.seed32() ^ hash(step));
    (r >> 8) as f32 / 16_777_216.0
}

/// What the kernel writes for a row holding a NaN or infinite logit (past any vocabulary).
pub const NON_FINITE: u32 = u32::MAX;

/// CPU reference of the kernel's rule (computed in f64): the id drawn for one row, or
/// [`NON_FINITE`].
pub fn reference(logits: &[f32], s: &Sampling, step: u32) -> u32 {
    if logits.iter().any(|v| !v.is_finite()) {
        return NON_FINITE;
    }
    let argmax = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if s.temperature <= 0.0 || s.top_k == 1 {
        return argmax();
    }
    let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let w: Vec<f64> = logits
        .iter()
        .map(|&v| ((v as f64 - m) / s.temperature as f64).exp())
        .collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut keep = vec![true; logits.len()];
    if s.top_k > 0 && (s.top_k as usize) < logits.len() {
        let kth = logits[order[s.top_k as usize - 1]];
        for (k, &v) in keep.iter_mut().zip(logits) {
            *k = v >= kth;
        }
    }
    let total: f64 = (0..w.len()).filter(|&i| keep[i]).map(|i| w[i]).sum();
    if s.top_p < 1.0 {
        // Smallest prefix of the sorted kept ids reaching top_p of the mass; ties kept.
        let mut acc = 0.0;
        let mut cut = f64::INFINITY;
        for &i in order.iter().filter(|&&i| keep[i]) {
            acc += w[i];
            if acc >= s.top_p as f64 * total {
                cut = w[i];
                break;
            }
        }
        for (k, &wi) in keep.iter_mut().zip(&w) {
            *k = *k && wi >= cut;
        }
    }
    let kept: f64 = (0..w.len()).filter(|&i| keep[i]).map(|i| w[i]).sum();
    let u = draw(s, step) as f64 * kept;
    let mut acc = 0.0;
    let mut last = 0;
    for i in (0..w.len()).filter(|&i| keep[i]) {
        acc += w[i];
        last = i;
        if u < acc {
            return i as u32;
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gpu, gpu_without_subgroups, Rng};

    /// Samples every row of `logits` (B, V) on the GPU with per-row settings, with each
    /// workgroup size, and with 8 invocations on a device without subgroups (where
    /// [`gpu`] has them, 8 reduce by subgroup operations and the others through workgroup
    /// memory): all must agree.
    fn run(logits: &[f32], v: usize, settings: &[(Sampling, u32)]) -> Vec<u32> {
        let ids: Vec<Vec<u32>> = [8, 64, 256]
            .iter()
            .map(|&t| run_with(gpu(), t, logits, v, settings))
            .collect();
        for (t, other) in [64, 256].iter().zip(&ids[1..]) {
            assert_eq!(&ids[0], other, "{t} threads disagree with 8");
        }
        let plain = run_with(gpu_without_subgroups(), 8, logits, v, settings);
        assert_eq!(ids[0], plain, "8 threads without subgroups disagree");
        ids.into_iter().next().unwrap()
    }

    fn run_with(
        ctx: &Context,
        threads: u32,
        logits: &[f32],
        v: usize,
        settings: &[(Sampling, u32)],
    ) -> Vec<u32> {
        let b = settings.len();
        let lt = Tensor::from_f32(ctx, "logits", &[b, v], logits).unwrap();
        let words: Vec<u32> = settings
            .iter()
            .flat_map(|(s, st)| settings_words(s, *st))
            .collect();
        let st = Tensor::from_u32(ctx, "settings", &[words.len()], &words).unwrap();
        let out = Tensor::zeros(ctx, "ids", &[b + 1], DType::U32).unwrap();
        let mut g = Graph::new();
        sample_with(ctx, &mut g, threads, View::of(&lt), &st, &out, 1).unwrap();
        ctx.run(&[&g]).unwrap();
        out.to_u32().unwrap()[1..].to_vec()
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_the_lower_id() {
        let v = 1000;
        let mut rng = Rng::new(3);
        let mut logits = rng.normal_vec(3 * v, 2.0);
        logits[517] = 50.0;
        logits[v + 999] = 50.0;
        logits[2 * v + 10] = 60.0;
        logits[2 * v + 700] = 60.0;
        let greedy = Sampling::greedy();
        let k1 = Sampling {
            temperature: 1.0,
            top_k: 1,
            ..Sampling::greedy()
        };
        let got = run(&logits, v, &[(greedy, 0), (greedy, 0), (k1, 5)]);
        assert_eq!(got, vec![517, 999, 10]);
    }

    #[test]
    fn a_row_with_a_nan_or_infinite_logit_is_flagged_whatever_the_settings() {
        let v = 301;
        let mut rng = Rng::new(9);
        let clean = rng.normal_vec(v, 2.0);
        let mut logits = Vec::new();
        for (i, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
            .iter()
            .enumerate()
        {
            let mut row = clean.clone();
            row[37 + 100 * i] = *bad;
            logits.extend(row);
        }
        logits.extend(&clean);
        let draw = Sampling {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.8,
            seed: 4,
        };
        for s in [Sampling::greedy(), draw] {
            let settings = vec![(s, 3); 4];
            let got = run(&logits, v, &settings);
            let want: Vec<u32> = logits.chunks(v).map(|row| reference(row, &s, 3)).collect();
            assert_eq!(got, want);
            assert_eq!(&got[..3], &[NON_FINITE; 3]);
            assert!((got[3] as usize) < v);
        }
    }

    #[test]
    fn draws_match_the_reference_rule() {
        let v = 777;
        let mut rng = Rng::new(5);
        let logits = rng.normal_vec(v, 2.5);
        // Quantised logits: ties at the top-k and top-p thresholds, where the searches
        // cannot stop early.
        let tied: Vec<f32> = logits.iter().map(|x| (x * 2.0).round() / 2.0).collect();
        check_draws(&logits);
        check_draws(&tied);
        // A row length of whole quads (rows load as vec4).
        check_draws(&logits[..776]);
        check_draws(&tied[..776]);
    }

    fn check_draws(logits: &[f32]) {
        let v = logits.len();
        let mut cases = Vec::new();
        for step in 0..40u32 {
            let s = Sampling {
                temperature: [0.7, 1.0, 1.3][step as usize % 3],
                top_k: [0, 40, 5, 200][step as usize % 4],
                top_p: [1.0, 0.9, 0.5][step as usize % 3],
                seed: 1234 + step as u64 / 7,
            };
            cases.push((s, step));
        }
        let rows: Vec<f32> = cases.iter().flat_map(|_| logits.to_vec()).collect();
        let got = run(&rows, v, &cases);
        for (b, ((s, step), id)) in cases.iter().zip(&got).enumerate() {
            assert_eq!(*id, reference(logits, s, *step), "case {b}: {s:?}");
        }
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        // p = softmax([ln 1, ln 2, ln 3, ln 4]) = [0.1, 0.2, 0.3, 0.4].
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let n = 4000;
        let s = Sampling {
            temperature: 1.0,
            seed: 99,
            ..Sampling::greedy()
        };
        let rows: Vec<f32> = (0..n).flat_map(|_| logits.clone()).collect();
        let cases: Vec<(Sampling, u32)> = (0..n).map(|i| (s, i as u32)).collect();
        let got = run(&rows, 4, &cases);
        for (id, want) in [0.1, 0.2, 0.3, 0.4].iter().enumerate() {
            let f = got.iter().filter(|&&g| g == id as u32).count() as f64 / n as f64;
            assert!(
                (f - want).abs() < 0.03,
                "id {id}: frequency {f}, want {want}"
            );
        }
        // top_k 2 keeps ids 2 and 3 only; top_p 0.35 keeps id 3 only.
        let k2 = Sampling { top_k: 2, ..s };
        let p35 = Sampling { top_p: 0.35, ..s };
        let small: Vec<(Sampling, u32)> = (0..200)
            .map(|i| (if i % 2 == 0 { k2 } else { p35 }, i))
            .collect();
        let rows: Vec<f32> = (0..200).flat_map(|_| logits.clone()).collect();
        for (i, id) in run(&rows, 4, &small).iter().enumerate() {
            if i % 2 == 0 {
                assert!(*id >= 2, "top_k 2 picked {id}");
            } else {
                assert_eq!(*id, 3, "top_p 0.35 picked {id}");
            }
        }
    }

    #[test]
    fn settings_are_validated() {
        let bad = Sampling {
            temperature: -1.0,
            ..Sampling::greedy()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        // A subnormal temperature's reciprocal overflows f32.
        let tiny = Sampling {
            temperature: 1e-39,
            ..Sampling::default()
        };
        assert!(tiny.validate().is_err());
        let small = Sampling {
            temperature: 1e-37,
            ..Sampling::default()
        };
        small.validate().unwrap();
        let bad = Sampling {
            top_p: 0.0,
            ..Sampling::greedy()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
    }
}
