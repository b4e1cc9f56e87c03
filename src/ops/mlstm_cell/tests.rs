use std::path::Path;

use super::*;
use crate::checkpoint::Weights;
use crate::testing::{assert_close, assert_close_rel_max, gpu, Rng};

/// A batch for the cell: `qkv` (B * N, NH (2 DK + DV)), `gates` (B * N, 2 NH).
struct Case {
    seqs: usize,
    shape: CellShape,
    tokens: usize,
    qkv: Vec<f32>,
    gates: Vec<f32>,
}

impl Case {
    fn random(rng: &mut Rng, seqs: usize, shape: CellShape, tokens: usize, gate_std: f32) -> Self {
        let rows = seqs * tokens;
        let heads = shape.heads;
        let qkv = rng.normal_vec(rows * width(&shape), 1.0);
        let mut gates = rng.normal_vec(rows * 2 * heads, gate_std);
        // Forget gates mostly open, as after training.
        for r in 0..rows {
            for g in &mut gates[r * 2 * heads + heads..(r + 1) * 2 * heads] {
                *g += 2.0;
            }
        }
        Case {
            seqs,
            shape,
            tokens,
            qkv,
            gates,
        }
    }

    /// Tokens `t0..t1` of every sequence, as a case of its own.
    fn slice(&self, t0: usize, t1: usize) -> Case {
        let rows = |w: usize, v: &[f32]| -> Vec<f32> {
            (0..self.seqs)
                .flat_map(|b| v[(b * self.tokens + t0) * w..(b * self.tokens + t1) * w].to_vec())
                .collect()
        };
        Case {
            tokens: t1 - t0,
            qkv: rows(width(&self.shape), &self.qkv),
            gates: rows(2 * self.shape.heads, &self.gates),
            ..*self
        }
    }

    fn reference(&self, states: &mut [HeadState]) -> Vec<f32> {
        reference(&self.qkv, &self.gates, self.shape, self.tokens, states)
    }
}

/// Columns of qkv: NH (2 DK + DV).
fn width(shape: &CellShape) -> usize {
    shape.heads * (2 * shape.qk_dim + shape.v_dim)
}

/// xLSTM-Large's cell: DK != DV, gates soft-capped at 15, eps 1e-6.
fn large(heads: usize, qk_dim: usize, v_dim: usize) -> CellShape {
    CellShape {
        heads,
        qk_dim,
        v_dim,
        gate_cap: 15.0,
        eps: 1e-6,
    }
}

/// Warm states: the reference run from zero over a few random tokens.
fn warm_states(rng: &mut Rng, seqs: usize, shape: CellShape) -> Vec<HeadState> {
    let mut states = vec![HeadState::zeros(shape.qk_dim, shape.v_dim); seqs * shape.heads];
    Case::random(rng, seqs, shape, 3, 2.0).reference(&mut states);
    states
}

/// The GPU side: a state with a spare slot, sequences in reverse slot order, and the inputs
/// inside wider buffers (offsets and strides that are not the dense ones).
struct Gpu {
    state: CellState,
    slots: Vec<u32>,
    slot_tensor: Tensor,
}

impl Gpu {
    fn new(seqs: usize, shape: CellShape, init: &[HeadState]) -> Self {
        let ctx = gpu();
        let state = CellState::new(ctx, seqs + 1, shape.heads, shape.qk_dim, shape.v_dim).unwrap();
        let slots: Vec<u32> = (0..seqs as u32).map(|b| seqs as u32 - b).collect();
        let g = Gpu {
            slot_tensor: Tensor::from_u32(ctx, "slots", &[seqs], &slots).unwrap(),
            state,
            slots,
        };
        g.load(init);
        g
    }

    fn load(&self, states: &[HeadState]) {
        let (nh, dk, dv) = (self.state.heads(), self.state.qk_dim(), self.state.v_dim());
        let total = self.state.slots() * nh;
        let (mut c, mut n, mut m) = (
            vec![0.0; total * dk * dv],
            vec![0.0; total * dk],
            vec![0.0; total],
        );
        for (b, &slot) in self.slots.iter().enumerate() {
            for hd in 0..nh {
                let s = &states[b * nh + hd];
                let at = slot as usize * nh + hd;
                for (dst, src) in c[at * dk * dv..][..dk * dv].iter_mut().zip(&s.c) {
                    *dst = *src as f32;
                }
                for (dst, src) in n[at * dk..][..dk].iter_mut().zip(&s.n) {
                    *dst = *src as f32;
                }
                m[at] = s.m as f32;
            }
        }
        self.state.write(&c, &n, &m).unwrap();
    }

    /// (C, n, m) of each sequence in batch order, flattened as (B, NH, ..).
    fn read(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (nh, dk, dv) = (self.state.heads(), self.state.qk_dim(), self.state.v_dim());
        let (c, n, m) = (
            self.state.c.to_f32().unwrap(),
            self.state.n.to_f32().unwrap(),
            self.state.m.to_f32().unwrap(),
        );
        let (mut oc, mut on, mut om) = (Vec::new(), Vec::new(), Vec::new());
        for &slot in &self.slots {
            let s = slot as usize * nh;
            oc.extend_from_slice(&c[s * dk * dv..(s + nh) * dk * dv]);
            on.extend_from_slice(&n[s * dk..(s + nh) * dk]);
            om.extend_from_slice(&m[s..s + nh]);
        }
        (oc, on, om)
    }

    /// Runs `kernel` over the case; returns h~ (B * N, NH DV).
    fn run(&self, kernel: CellKernel, case: &Case) -> Vec<f32> {
        let ctx = gpu();
        let (nh, w) = (case.shape.heads, width(&case.shape));
        let rows = case.seqs * case.tokens;
        // qkv at columns 1.. of rows of W + 2; gates at columns 2.. of rows of 2 NH + 3.
        let widen = |v: &[f32], w: usize, off: usize, extra: usize| -> Vec<f32> {
            v.chunks(w)
                .flat_map(|r| {
                    let mut row = vec![7.0; w + extra];
                    row[off..off + w].copy_from_slice(r);
                    row
                })
                .collect()
        };
        let qkv_t =
            Tensor::from_f32(ctx, "qkv", &[rows, w + 2], &widen(&case.qkv, w, 1, 2)).unwrap();
        let gates_t = Tensor::from_f32(
            ctx,
            "gates",
            &[rows, 2 * nh + 3],
            &widen(&case.gates, 2 * nh, 2, 3),
        )
        .unwrap();
        let h_t = Tensor::zeros(ctx, "h", &[rows, nh * case.shape.v_dim], DType::F32).unwrap();
        let inputs = CellInputs {
            qkv: View::of(&qkv_t).select_cols(1..1 + w),
            gates: View::of(&gates_t).select_cols(2..2 + 2 * nh),
            gate_cap: case.shape.gate_cap,
            eps: case.shape.eps,
        };
        let mut g = Graph::new();
        record(
            ctx,
            &mut g,
            kernel,
            &inputs,
            View::of(&h_t),
            &self.state,
            &self.slot_tensor,
            case.seqs,
            case.tokens,
        )
        .unwrap();
        ctx.run(&[&g]).unwrap();
        h_t.to_f32().unwrap()
    }
}

fn flatten(states: &[HeadState]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    (
        states.iter().flat_map(|s| f(&s.c)).collect(),
        states.iter().flat_map(|s| f(&s.n)).collect(),
        states.iter().map(|s| s.m as f32).collect(),
    )
}

/// Checks h~ and the final state of `kernel` against the f64 reference.
fn check(kernel: CellKernel, case: &Case, init: &[HeadState], tol: f32, what: &str) {
    let gpu_side = Gpu::new(case.seqs, case.shape, init);
    let got = gpu_side.run(kernel, case);
    let mut states = init.to_vec();
    let want = case.reference(&mut states);
    let what = format!(
        "{what} {kernel:?} B={} {:?} N={}",
        case.seqs, case.shape, case.tokens
    );
    assert_close_rel_max(&got, &want, tol, &format!("{what}: h"));
    let (c, n, m) = gpu_side.read();
    let (wc, wn, wm) = flatten(&states);
    assert_close_rel_max(&c, &wc, tol, &format!("{what}: C"));
    assert_close_rel_max(&n, &wn, tol, &format!("{what}: n"));
    assert_close(&m, &wm, 1e-4, 1e-5, &format!("{what}: m"));
}

#[test]
fn all_kernels_match_the_reference_on_random_shapes() {
    let mut rng = Rng::new(5);
    // (B, shape, N): head dims that are not multiples of 4, several 64-column blocks, a
    // partial last chunk, one token; q/k narrower or wider than v, with soft-capped gates.
    for &(seqs, shape, tokens) in &[
        (1, CellShape::square(1, 7), 5),
        (3, CellShape::square(2, 12), 33),
        (1, CellShape::square(8, 3), 70),
        (3, CellShape::square(4, 65), 40),
        (2, CellShape::square(3, 130), 1),
        (2, large(2, 8, 24), 45),
        (1, large(3, 10, 20), 70),
        (2, large(1, 64, 136), 33),
        (1, large(2, 20, 6), 9),
        (3, large(2, 16, 32), 1),
    ] {
        let gate_std = if shape.gate_cap > 0.0 { 12.0 } else { 2.0 };
        let case = Case::random(&mut rng, seqs, shape, tokens, gate_std);
        let init = warm_states(&mut rng, seqs, shape);
        for kernel in CellKernel::all_available(gpu()) {
            check(kernel, &case, &init, 1e-4, "random");
        }
    }
}

#[test]
fn the_held_prefill_handles_every_tail_and_several_segments() {
    // step_held (the SIMD kernel over several tokens, DK <= 64) takes four tokens per pass over
    // C and the rest one at a time: every remainder, and a prompt long enough to be cut
    // into several dispatches (LOOP_BUDGET), whose later segments start mid-prompt.
    let mut rng = Rng::new(12);
    let shape = CellShape::square(4, 64);
    for kernel in CellKernel::all_available(gpu()).filter(|k| k.is_simd()) {
        for tokens in [2, 3, 4, 5, 6, 7, 8, 1500] {
            let case = Case::random(&mut rng, 2, shape, tokens, 2.0);
            let init = warm_states(&mut rng, 2, shape);
            check(kernel, &case, &init, 1e-4, "held tails");
        }
    }
}

#[test]
fn all_kernels_match_at_paper_scale() {
    // D = 1024 with 4 heads: Di = 2048, DH = 512 (one head here to keep the reference fast).
    // The chunkwise kernels see 400 tokens, the recurrent ones the first 64: several
    // dispatches each (see LOOP_BUDGET).
    let mut rng = Rng::new(6);
    let shape = CellShape::square(1, 512);
    let case = Case::random(&mut rng, 1, shape, 400, 2.0);
    let init = warm_states(&mut rng, 1, shape);
    let mut states = init.clone();
    let short = case.slice(0, 64);
    let mut want_short = short.reference(&mut states);
    let short_state = flatten(&states);
    want_short.extend(case.slice(64, 400).reference(&mut states));
    let (want_long, long_state) = (want_short, flatten(&states));
    for kernel in CellKernel::all_available(gpu()) {
        let (case, want, (wc, wn, wm)) = if kernel.is_chunkwise() {
            (&case, &want_long[..], &long_state)
        } else {
            (&short, &want_long[..64 * 512], &short_state)
        };
        let gpu_side = Gpu::new(1, shape, &init);
        let got = gpu_side.run(kernel, case);
        let what = format!("paper scale {kernel:?}");
        assert_close_rel_max(&got, want, 1e-4, &format!("{what}: h"));
        let (c, n, m) = gpu_side.read();
        assert_close_rel_max(&c, wc, 1e-4, &format!("{what}: C"));
        assert_close_rel_max(&n, wn, 1e-4, &format!("{what}: n"));
        assert_close(&m, wm, 1e-4, 1e-5, &format!("{what}: m"));
    }
}

#[test]
fn prefill_then_decode_equals_the_recurrence() {
    let mut rng = Rng::new(7);
    for shape in [CellShape::square(2, 20), large(2, 12, 28)] {
        prefill_then_decode(&mut rng, shape);
    }
}

fn prefill_then_decode(rng: &mut Rng, shape: CellShape) {
    let seqs = 3;
    let case = Case::random(rng, seqs, shape, 45, 3.0);
    let zeros = vec![HeadState::zeros(shape.qk_dim, shape.v_dim); seqs * shape.heads];
    let mut states = zeros.clone();
    let want = case.reference(&mut states);
    let (wc, _, wm) = flatten(&states);
    let di = shape.heads * shape.v_dim;
    for (prefill, decode) in [
        (CellKernel::Chunkwise, CellKernel::Recurrent),
        (CellKernel::ChunkwiseWide, CellKernel::RecurrentWide),
        (CellKernel::ChunkwiseWide, CellKernel::RecurrentSimd),
        (CellKernel::RecurrentSimd64, CellKernel::RecurrentSimd64),
    ]
    .into_iter()
    .filter(|(prefill, decode)| prefill.available(gpu()) && decode.available(gpu()))
    {
        let gpu_side = Gpu::new(seqs, shape, &zeros);
        let mut got = vec![Vec::new(); seqs];
        let mut collect = |h: Vec<f32>, n: usize| {
            for (b, g) in got.iter_mut().enumerate() {
                g.extend_from_slice(&h[b * n * di..(b + 1) * n * di]);
            }
        };
        collect(gpu_side.run(prefill, &case.slice(0, 37)), 37);
        for t in 37..45 {
            collect(gpu_side.run(decode, &case.slice(t, t + 1)), 1);
        }
        let what = format!("{prefill:?} + {decode:?} {shape:?}");
        assert_close_rel_max(&got.concat(), &want, 1e-4, &format!("{what}: h"));
        let (c, _, m) = gpu_side.read();
        assert_close_rel_max(&c, &wc, 1e-4, &format!("{what}: C"));
        assert_close(&m, &wm, 1e-4, 1e-5, &format!("{what}: m"));
    }
}

/// The f64 reference for one sequence, with the condition number of every (token, head)
/// output: how much f32 rounding of the sums q^T C and q . n can move h~ relative to the
/// head's largest |h~| (large where those sums cancel, e.g. q nearly orthogonal to n).
fn reference_with_conditioning(case: &Case) -> (Vec<f32>, Vec<f32>) {
    let (nh, dh) = (case.shape.heads, case.shape.qk_dim);
    assert_eq!(dh, case.shape.v_dim, "a square cell");
    let di = nh * dh;
    let mut states = vec![HeadState::zeros(dh, dh); nh];
    let (mut h, mut cond) = (Vec::new(), Vec::new());
    for t in 0..case.tokens {
        let x = &case.qkv[t * 3 * di..(t + 1) * 3 * di];
        for hd in 0..nh {
            let part = |p: usize| &x[p * di + hd * dh..][..dh];
            let s = &mut states[hd];
            let g = &case.gates[t * 2 * nh..];
            let (q, k, v) = (part(0), part(1), part(2));
            let out = reference_step(s, q, k, v, g[hd], g[nh + hd], 0.0, EPS);
            let qn: f64 = (0..dh).map(|a| q[a] as f64 * s.n[a]).sum();
            let qn_abs: f64 = (0..dh).map(|a| (q[a] as f64 * s.n[a]).abs()).sum();
            let den = qn.abs().max((-s.m).exp()) + EPS as f64;
            let (mut num_abs, mut num_max) = (0.0f64, 0.0f64);
            for b in 0..dh {
                let col = (0..dh).map(|a| q[a] as f64 * s.c[a * dh + b]);
                num_abs = num_abs.max(col.clone().map(f64::abs).sum());
                num_max = num_max.max(col.sum::<f64>().abs());
            }
            let kappa = qn_abs / den + num_abs / num_max.max(1e-30);
            h.extend_from_slice(&out);
            cond.push(kappa.min(1e6) as f32);
        }
    }
    (h, cond)
}

#[test]
fn long_sequences_with_extreme_gates_stay_finite() {
    // 4096 tokens; gate pre-activations of both signs up to |60|, with long stretches of
    // closed forget gates and of saturated input gates.
    let mut rng = Rng::new(8);
    let (heads, head_dim, tokens) = (2, 9, 4096);
    let shape = CellShape::square(heads, head_dim);
    let mut case = Case::random(&mut rng, 1, shape, tokens, 1.0);
    for (r, row) in case.gates.chunks_mut(2 * heads).enumerate() {
        let phase = (r / 512) % 4;
        for (g, v) in row.iter_mut().enumerate() {
            let forget = g >= heads;
            *v = match (phase, forget) {
                (0, _) => rng.uniform() * 120.0 - 60.0,
                (1, true) => -40.0 - 20.0 * rng.uniform(),
                (1, false) => 50.0 + 10.0 * rng.uniform(),
                (2, true) => 60.0,
                (2, false) => -60.0 + 5.0 * rng.normal(),
                _ => 30.0 * rng.normal(),
            };
        }
    }
    let (want, cond) = reference_with_conditioning(&case);
    let zeros = vec![HeadState::zeros(head_dim, head_dim); heads];
    let mut states = zeros.clone();
    case.reference(&mut states);
    for kernel in CellKernel::all_available(gpu()) {
        let gpu_side = Gpu::new(1, shape, &zeros);
        let got = gpu_side.run(kernel, &case);
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{kernel:?}: non-finite h"
        );
        // h~ ranges over many orders of magnitude: compare each head of each token to its
        // own scale, widened by its condition number.
        for (i, ((g, w), kappa)) in got
            .chunks(head_dim)
            .zip(want.chunks(head_dim))
            .zip(&cond)
            .enumerate()
        {
            let scale = w.iter().fold(1e-30f32, |a, &b| a.max(b.abs()));
            let tol = 1e-4 * kappa.max(1.0) * scale;
            let what = format!("{kernel:?} token {} head {}", i / heads, i % heads);
            assert_close(g, w, tol, 0.0, &what);
        }
        let (c, n, m) = gpu_side.read();
        assert!(c.iter().chain(&n).chain(&m).all(|v| v.is_finite()));
        let (_, _, wm) = flatten(&states);
        assert_close(&m, &wm, 1e-3, 1e-5, &format!("{kernel:?}: m"));
    }
}

fn fixture(name: &str) -> Weights {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ops")
        .join(name);
    Weights::open(&path).unwrap()
}

/// (B, NH, S, X) -> (B * S, NH * X): the package's per-head layout to rows.
fn heads_to_rows(v: &[f32], shape: &[usize]) -> Vec<f32> {
    let (b, nh, s, x) = (shape[0], shape[1], shape[2], shape[3]);
    let mut out = vec![0.0; v.len()];
    for bi in 0..b {
        for h in 0..nh {
            for t in 0..s {
                for e in 0..x {
                    out[((bi * s + t) * nh + h) * x + e] = v[((bi * nh + h) * s + t) * x + e];
                }
            }
        }
    }
    out
}

#[test]
fn all_kernels_match_the_package_fixtures() {
    for name in ["mlstm_cell_kernel", "mlstm_cell_kernel_large"] {
        let f = fixture(&format!("{name}.safetensors"));
        let shape = f.shape("in.q").unwrap().to_vec();
        let (seqs, heads, tokens, head_dim) = (shape[0], shape[1], shape[2], shape[3]);
        let di = heads * head_dim;
        let parts: Vec<Vec<f32>> = ["in.q", "in.k", "in.v"]
            .iter()
            .map(|n| heads_to_rows(&f.f32_any(n).unwrap().0, &shape))
            .collect();
        let gate_shape = [seqs, heads, tokens, 1];
        let i = heads_to_rows(&f.f32_any("in.igate_preact").unwrap().0, &gate_shape);
        let fg = heads_to_rows(&f.f32_any("in.fgate_preact").unwrap().0, &gate_shape);
        let rows = seqs * tokens;
        let cell = CellShape::square(heads, head_dim);
        let case = Case {
            seqs,
            shape: cell,
            tokens,
            qkv: (0..rows)
                .flat_map(|r| {
                    parts
                        .iter()
                        .flat_map(move |p| p[r * di..(r + 1) * di].to_vec())
                })
                .collect(),
            gates: (0..rows)
                .flat_map(|r| {
                    [
                        &i[r * heads..(r + 1) * heads],
                        &fg[r * heads..(r + 1) * heads],
                    ]
                })
                .flatten()
                .copied()
                .collect(),
        };
        let want = heads_to_rows(&f.f32_any("out.h_recurrent").unwrap().0, &shape);
        let zeros = vec![HeadState::zeros(head_dim, head_dim); seqs * heads];
        for kernel in CellKernel::all_available(gpu()) {
            let gpu_side = Gpu::new(seqs, cell, &zeros);
            let got = gpu_side.run(kernel, &case);
            let what = format!("{name} {kernel:?}");
            assert_close_rel_max(&got, &want, 1e-4, &format!("{what}: h"));
            let (c, n, m) = gpu_side.read();
            for (key, got) in [("out.C", c), ("out.n", n), ("out.m", m)] {
                let want = f.f32_any(key).unwrap().0;
                assert_close_rel_max(&got, &want, 1e-4, &format!("{what}: {key}"));
            }
        }
    }
}

#[test]
fn reset_clears_one_slot() {
    let ctx = gpu();
    let mut rng = Rng::new(9);
    let shape = CellShape::square(2, 5);
    let init = warm_states(&mut rng, 2, shape);
    let gpu_side = Gpu::new(2, shape, &init);
    // Sequence 0 lives in slot 2, sequence 1 in slot 1.
    gpu_side.state.reset(ctx, 2).unwrap();
    let (c, n, m) = gpu_side.read();
    let (wc, wn, wm) = flatten(&init);
    assert!(c[..50]
        .iter()
        .chain(&n[..10])
        .chain(&m[..2])
        .all(|&v| v == 0.0));
    assert_eq!(
        (&c[50..], &n[10..], &m[2..]),
        (&wc[50..], &wn[10..], &wm[2..])
    );
    let err = gpu_side.state.reset(ctx, 3).unwrap_err().to_string();
    assert!(err.contains("below 3"), "{err}");
}

#[test]
fn bad_shapes_are_typed_errors() {
    let ctx = gpu();
    let err = CellState::new(ctx, 1, 1, 513, 8).err().unwrap().to_string();
    assert!(err.contains("1..=512"), "{err}");
    let err = CellState::new(ctx, 1, 1, 8, 0).err().unwrap().to_string();
    assert!(err.contains("1..=512"), "{err}");
    let state = CellState::new(ctx, 2, 2, 4, 4).unwrap();
    let qkv = Tensor::zeros(ctx, "qkv", &[3, 24], DType::F32).unwrap();
    let gates = Tensor::zeros(ctx, "gates", &[3, 4], DType::F32).unwrap();
    let h = Tensor::zeros(ctx, "h", &[3, 8], DType::F32).unwrap();
    let slots = Tensor::from_u32(ctx, "slots", &[3], &[0, 1, 0]).unwrap();
    let inputs = CellInputs::new(View::of(&qkv), View::of(&gates));
    let mut g = Graph::new();
    let err = record(
        ctx,
        &mut g,
        CellKernel::Chunkwise,
        &inputs,
        View::of(&h),
        &state,
        &slots,
        3,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at most the state's 2 slots"), "{err}");
    let err = record(
        ctx,
        &mut g,
        CellKernel::Recurrent,
        &inputs,
        View::of(&h),
        &state,
        &slots,
        1,
        3,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mLSTM slots"), "{err}");
    let bad = CellInputs {
        gates: View::of(&qkv).select_cols(0..4),
        ..inputs
    };
    let one = Tensor::from_u32(ctx, "slots", &[1], &[0]).unwrap();
    let err = record(
        ctx,
        &mut g,
        CellKernel::Recurrent,
        &bad,
        View::of(&h).select_rows(0..2),
        &state,
        &one,
        1,
        3,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("output") && err.contains("3 x 8"), "{err}");
    assert!(g.is_empty());
}

#[test]
fn segments_stay_within_the_loop_budget() {
    // Three chunks of 32 fit 32,000 iterations at 10,000 per chunk.
    assert_eq!(segments(100, 32, 10_000, 0), vec![0..96, 96..100]);
    assert_eq!(segments(96, 32, 10_000, 0), vec![0..96]);
    // A unit over the budget still makes progress, one unit at a time.
    assert_eq!(segments(3, 1, 50_000, 0), vec![0..1, 1..2, 2..3]);
    assert!(segments(0, 1, 10, 0).is_empty());
}
