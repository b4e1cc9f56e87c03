//! Helpers for headless kernel tests: a shared GPU context, a deterministic random number
//! generator, and tolerant comparison. Used by the engine's own tests and available to
//! users who test their shaders against CPU references the same way.

use std::sync::OnceLock;

use crate::context::{Context, ContextOptions};

/// The process-wide test context (backend and adapter from `MOXE_BACKEND` / `MOXE_ADAPTER`).
/// Panics with the reason if no adapter can be created: a GPU test cannot run without one.
pub fn gpu() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let options = ContextOptions::from_env().expect("MOXE_BACKEND");
        Context::new(&options).unwrap_or_else(|e| panic!("no GPU context for tests: {e}"))
    })
}

/// A shared context on the same adapter as [`gpu`] that chooses the GPU family of kernels
/// whatever the adapter: on a CPU adapter it runs the GPU paths (coalesced GEMVs, prefill
/// GEMM, cooperative norms, the tiled mLSTM step), so their results are checked without a
/// GPU.
pub fn gpu_kernels() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let mut options = ContextOptions::from_env().expect("MOXE_BACKEND");
        options.kernels = Some(crate::context::KernelFamily::Gpu);
        Context::new(&options).unwrap_or_else(|e| panic!("no GPU context for tests: {e}"))
    })
}

/// A shared context on the same adapter as [`gpu`] without the SUBGROUP feature: on an
/// adapter that has subgroups it runs the paths of adapters that do not (the plain GEMVs,
/// the recurrent-wide and chunkwise mLSTM cells, the norms', sLSTM cell's and sampler's
/// sums through workgroup memory).
pub fn gpu_without_subgroups() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let mut options = ContextOptions::from_env().expect("MOXE_BACKEND");
        options.features_off = wgpu::Features::SUBGROUP;
        Context::new(&options).unwrap_or_else(|e| panic!("no GPU context for tests: {e}"))
    })
}

/// A fresh context whose storage bindings hold at most `bytes`, so tensors of a few hundred
/// elements are split into chunks.
pub fn gpu_with_binding_limit(bytes: u64) -> Context {
    let mut options = ContextOptions::from_env().expect("MOXE_BACKEND");
    options.max_binding_bytes = Some(bytes);
    Context::new(&options).unwrap_or_else(|e| panic!("no GPU context for tests: {e}"))
}

/// SplitMix64: small, fast, deterministic across platforms.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// `n` normal values with standard deviation `std`.
    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn uniform_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.uniform()).collect()
    }
}

/// Rounds every value through f16 (what an f16 weight holds).
pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// `v`, rows of `cols`, as a weight matrix of `dtype` stores it (f16 and bf16 rounded, q8
/// and q4 quantised and dequantised, f32 unchanged).
pub fn round_to(dtype: crate::DType, v: &[f32], cols: usize) -> Vec<f32> {
    match dtype.for_rows(cols) {
        crate::DType::F16 => round_f16(v),
        crate::DType::BF16 => v
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect(),
        d => match d.quant() {
            Some(q) => crate::quant::round_trip(q, v, cols),
            None => v.to_vec(),
        },
    }
}

/// Largest |got - want| and the index where it occurs.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> (f32, usize) {
    got.iter()
        .zip(want)
        .enumerate()
        .map(|(i, (g, w))| ((g - w).abs(), i))
        .fold(
            (0.0, 0),
            |a, b| if b.0 > a.0 || b.0.is_nan() { b } else { a },
        )
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise, with no NaN or infinity
/// where `want` is finite; the panic message names `what`, the worst index and values.
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g == w);
        if !ok || (w.is_finite() && !g.is_finite()) {
            let (worst, at) = max_abs_diff(got, want);
            panic!(
                "{what}: element {i}: got {g}, want {w} (|diff| {}); worst |diff| {worst} at {at} \
                 (got {}, want {}); tolerance {atol} + {rtol} * |want|",
                (g - w).abs(),
                got[at],
                want[at]
            );
        }
    }
}

/// Asserts `max |got - want| <= tol * max |want|` (the golden-test criterion).
pub fn assert_close_rel_max(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
    let (worst, at) = max_abs_diff(got, want);
    assert!(
        worst <= tol * scale && got.iter().all(|g| g.is_finite()),
        "{what}: max |diff| {worst} at {at} (got {}, want {}) exceeds {tol} x max|want| = {}",
        got[at],
        want[at],
        tol * scale
    );
}

/// W = A B (f64 accumulation): A (out, r), B (r, D) -> (out, D), row-major.
pub fn product(a: &[f32], b: &[f32], r: usize, d: usize) -> Vec<f32> {
    let out = a.len() / r;
    (0..out * d)
        .map(|i| {
            let (o, j) = (i / d, i % d);
            (0..r)
                .map(|k| a[o * r + k] as f64 * b[k * d + j] as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

/// The integer tensor `name` of a golden file as token ids.
pub fn golden_ids(w: &crate::checkpoint::Weights, name: &str) -> Vec<u32> {
    let (values, _) = w
        .ints(name)
        .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
    values.into_iter().map(|v| v as u32).collect()
}
