//! Causal depthwise conv1d over B sequences of N tokens, with an optional per-sequence state
//! (the last K-1 inputs) read before and written after, and a fused activation. Kernel:
//! `shaders/conv1d.wgsl`.
//!
//! Shapes: x and y (B * N, C) views (row `b * N + n`); weight (C, K) f32 (the package's
//! Conv1d weight (C, 1, K)); bias (C) f32; state (slots, K-1, C) f32 with a u32 slot tensor
//! (B) naming each sequence's slot. Without a state the history is zero: with N = 1 that is
//! the expert form `y = w[:, K-1] * x + bias`. With a `pass` view (other columns of y's
//! tensor) the conv also copies its input there, so that a consumer reading both the input
//! and the conv output (the mLSTM's q, k, v; the sLSTM's gates) finds them in one buffer.

use bytemuck::{Pod, Zeroable};

use super::elementwise::Activation;
use super::{distinct, segments, u32_param, View};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, RowGrid};
use crate::tensor::{DType, Tensor};

/// Largest kernel size the shader supports.
pub const MAX_KERNEL: usize = 16;

/// The per-sequence history of a conv: `state` (slots, K-1, C) and the slots of the batch.
#[derive(Debug, Clone, Copy)]
pub struct ConvState<'a> {
    pub state: &'a Tensor,
    pub slots: &'a Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    channels: u32,
    tokens: u32,
    seqs: u32,
    x_stride: u32,
    x_offset: u32,
    y_stride: u32,
    y_offset: u32,
    has_state: u32,
    has_bias: u32,
    total: u32,
    first: u32,
    has_pass: u32,
    pass_offset: u32,
    _pad: [u32; 3],
}

/// Records `y = act(conv(x))` for `seqs` sequences of `x.rows / seqs` tokens, and `pass = x`
/// when given (a view of y's tensor with y's stride). `act` must be identity or silu.
#[allow(clippy::too_many_arguments)]
pub fn conv1d(
    ctx: &Context,
    graph: &mut Graph,
    weight: &Tensor,
    bias: Option<&Tensor>,
    x: View<'_>,
    y: View<'_>,
    pass: Option<View<'_>>,
    seqs: usize,
    state: Option<ConvState<'_>>,
    act: Activation,
) -> Result<()> {
    let &[c, k] = weight.shape() else {
        return Err(Error::mismatch(
            format!("conv weight '{}' shape", weight.label()),
            "(channels, kernel)",
            format!("{:?}", weight.shape()),
        ));
    };
    if weight.dtype() != DType::F32 || !(1..=MAX_KERNEL).contains(&k) {
        return Err(Error::mismatch(
            format!("conv weight '{}'", weight.label()),
            format!("f32 with kernel size 1..={MAX_KERNEL}"),
            format!("{} with kernel size {k}", weight.dtype()),
        ));
    }
    if let Some(b) = bias {
        b.expect("conv bias", &[c], DType::F32)?;
    }
    x.check("conv input")?;
    y.check("conv output")?;
    if x.cols != c || (y.rows, y.cols) != (x.rows, c) {
        return Err(Error::mismatch(
            format!("conv input/output for weight '{}'", weight.label()),
            format!("(rows, {c}) views of equal rows"),
            format!("{}x{} and {}x{}", x.rows, x.cols, y.rows, y.cols),
        ));
    }
    if seqs == 0 || x.rows % seqs != 0 {
        return Err(Error::mismatch(
            "conv sequences",
            format!("a divisor of the {} rows", x.rows),
            seqs,
        ));
    }
    let act_code = match act {
        Activation::Identity => 0.0,
        Activation::Silu => 1.0,
        other => {
            return Err(Error::InvalidArgument(format!(
                "conv1d fuses identity or silu, not {other:?}"
            )))
        }
    };
    distinct("conv", x.tensor, y.tensor)?;
    if let Some(v) = pass {
        v.check("conv input copy")?;
        if v.tensor.buffer()? != y.tensor.buffer()?
            || v.stride != y.stride
            || v.cols != c
            || v.rows != x.rows
        {
            return Err(Error::mismatch(
                "conv input copy",
                format!(
                    "a ({}, {c}) view of the output's tensor with its stride {}",
                    x.rows, y.stride
                ),
                format!(
                    "a ({}, {}) view of '{}' with stride {}",
                    v.rows,
                    v.cols,
                    v.tensor.label(),
                    v.stride
                ),
            ));
        }
    }
    // Without a state, the weight fills the (read-only) slots binding and a small placeholder
    // the (writable) state binding; neither is accessed.
    let placeholder;
    let (state_t, slots_t) = match state {
        Some(s) => {
            if s.state.cols() != c || s.state.shape().len() != 3 || s.state.shape()[1] != k - 1 {
                return Err(Error::mismatch(
                    format!("conv state '{}'", s.state.label()),
                    format!("(slots, {}, {c})", k - 1),
                    format!("{:?}", s.state.shape()),
                ));
            }
            if s.slots.dtype() != DType::U32 || s.slots.numel() != seqs {
                return Err(Error::mismatch(
                    "conv state slots",
                    format!("u32 ({seqs})"),
                    format!("{} {:?}", s.slots.dtype(), s.slots.shape()),
                ));
            }
            (s.state, s.slots)
        }
        None => {
            placeholder = Tensor::zeros(ctx, "conv placeholder", &[4], DType::F32)?;
            (&placeholder, weight)
        }
    };
    let total = x.rows / seqs;
    let base = Params {
        channels: u32_param("conv channels", c)?,
        tokens: 0,
        seqs: u32_param("conv sequences", seqs)?,
        x_stride: u32_param("stride", x.stride)?,
        x_offset: u32_param("offset", x.offset)?,
        y_stride: u32_param("stride", y.stride)?,
        y_offset: u32_param("offset", y.offset)?,
        has_state: state.is_some() as u32,
        has_bias: bias.is_some() as u32,
        total: u32_param("conv tokens", total)?,
        first: 0,
        has_pass: pass.is_some() as u32,
        pass_offset: u32_param("offset", pass.map_or(0, |v| v.offset))?,
        _pad: [0; 3],
    };
    // Four channels per invocation move as one vec4 when every row start is aligned.
    let aligned = c % 4 == 0
        && x.rows_in_quads()
        && y.rows_in_quads()
        && pass.is_none_or(|v| v.offset % 4 == 0);
    let constants = [
        ("ACT", act_code),
        ("TAPS", k as f64),
        ("VEC4", aligned as u8 as f64),
    ];
    let pipeline = ctx.pipeline("conv1d", "conv", &constants)?;
    // Long inputs run as several dispatches over token segments (llvmpipe's loop limit).
    for range in segments(total, 1, 2 * k, 2 * k) {
        let params = Params {
            tokens: range.len() as u32,
            first: range.start as u32,
            ..base
        };
        let uniform = ctx.uniform("conv params", &params)?;
        let bias_binding = match bias {
            Some(b) => b.binding()?,
            None => weight.binding()?,
        };
        graph.dispatch_rows(
            ctx,
            &pipeline,
            &[
                uniform.as_entire_binding(),
                x.binding()?,
                weight.binding()?,
                bias_binding.clone(),
                slots_t.binding()?,
                state_t.binding()?,
                y.binding()?,
                x.binding()?,
                y.binding()?,
                state_t.binding()?,
                weight.binding()?,
                bias_binding.clone(),
            ],
            RowGrid::YZ { x: c.div_ceil(256) },
            seqs,
        )?;
    }
    Ok(())
}

/// CPU reference. `x` (B * N, C), `weight` (C, K), `state` (B, K-1, C) or zeros. Returns y
/// (B * N, C) and the final state (B, K-1, C).
pub fn reference(
    weight: &[f32],
    k: usize,
    bias: Option<&[f32]>,
    x: &[f32],
    seqs: usize,
    state: Option<&[f32]>,
    act: Activation,
) -> (Vec<f32>, Vec<f32>) {
    let c = weight.len() / k;
    let n = x.len() / c / seqs;
    let mut y = vec![0.0; x.len()];
    let mut last = vec![0.0; seqs * (k - 1) * c];
    for b in 0..seqs {
        // input at time t (t may be negative: history)
        let input = |t: isize, ch: usize| -> f32 {
            if t >= 0 {
                x[(b * n + t as usize) * c + ch]
            } else {
                let j = (k as isize - 1 + t) as usize;
                state.map_or(0.0, |s| s[(b * (k - 1) + j) * c + ch])
            }
        };
        for t in 0..n {
            for ch in 0..c {
                let mut acc = bias.map_or(0.0, |bb| bb[ch] as f64);
                for j in 0..k {
                    let v = input(t as isize - (k as isize - 1) + j as isize, ch);
                    acc += weight[ch * k + j] as f64 * v as f64;
                }
                y[(b * n + t) * c + ch] = act.apply(acc as f32);
            }
        }
        for j in 0..k - 1 {
            for ch in 0..c {
                last[(b * (k - 1) + j) * c + ch] =
                    input(n as isize - (k as isize - 1) + j as isize, ch);
            }
        }
    }
    (y, last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Weights;
    use crate::testing::{assert_close, gpu, Rng};
    use std::path::Path;

    /// Runs the GPU conv; returns y and, with a state, the final state of each sequence.
    #[allow(clippy::too_many_arguments)]
    fn run(
        w: &[f32],
        k: usize,
        bias: Option<&[f32]>,
        x: &[f32],
        seqs: usize,
        state: Option<&[f32]>,
        act: Activation,
    ) -> (Vec<f32>, Vec<f32>) {
        let ctx = gpu();
        let c = w.len() / k;
        let rows = x.len() / c;
        let wt = Tensor::from_f32(ctx, "w", &[c, k], w).unwrap();
        let bt = bias.map(|b| Tensor::from_f32(ctx, "b", &[c], b).unwrap());
        let xt = Tensor::from_f32(ctx, "x", &[rows, c], x).unwrap();
        let yt = Tensor::zeros(ctx, "y", &[rows, c], DType::F32).unwrap();
        // Sequences use slots in reverse order, with a spare slot, to test the indirection.
        let slots: Vec<u32> = (0..seqs as u32).map(|b| seqs as u32 - b).collect();
        let mut st = vec![0.0; (seqs + 1) * (k - 1) * c];
        if let Some(s) = state {
            for b in 0..seqs {
                let dst = slots[b] as usize * (k - 1) * c;
                st[dst..dst + (k - 1) * c].copy_from_slice(&s[b * (k - 1) * c..][..(k - 1) * c]);
            }
        }
        let stt = Tensor::from_f32(ctx, "state", &[seqs + 1, k - 1, c], &st).unwrap();
        let slt = Tensor::from_u32(ctx, "slots", &[seqs], &slots).unwrap();
        let conv_state = state.map(|_| ConvState {
            state: &stt,
            slots: &slt,
        });
        let mut g = Graph::new();
        conv1d(
            ctx,
            &mut g,
            &wt,
            bt.as_ref(),
            View::of(&xt),
            View::of(&yt),
            None,
            seqs,
            conv_state,
            act,
        )
        .unwrap();
        ctx.run(&[&g]).unwrap();
        let all = stt.to_f32().unwrap();
        let mut last = Vec::new();
        for &slot in &slots {
            let src = slot as usize * (k - 1) * c;
            last.extend_from_slice(&all[src..src + (k - 1) * c]);
        }
        (yt.to_f32().unwrap(), last)
    }

    #[test]
    fn matches_reference_with_and_without_state() {
        let mut rng = Rng::new(8);
        for &(c, k, seqs, n, with_state, act) in &[
            (37, 4, 3, 9, true, Activation::Silu),
            (5, 1, 2, 4, true, Activation::Identity),
            (70, 3, 1, 33, false, Activation::Silu),
            (13, 7, 4, 2, true, Activation::Identity),
            // Channels in aligned fours (the vec4 path), the largest kernel, no history.
            (64, 4, 2, 5, true, Activation::Silu),
            (16, 16, 2, 20, true, Activation::Identity),
            (8, 1, 3, 3, true, Activation::Silu),
            (24, 2, 1, 7, false, Activation::Identity),
        ] {
            let w = rng.normal_vec(c * k, 0.5);
            let b = rng.normal_vec(c, 0.5);
            let x = rng.normal_vec(seqs * n * c, 1.0);
            let s = rng.normal_vec(seqs * (k - 1) * c, 1.0);
            let state = with_state.then_some(&s[..]);
            let (y, last) = run(&w, k, Some(&b), &x, seqs, state, act);
            let (wy, wlast) = reference(&w, k, Some(&b), &x, seqs, state, act);
            let what = format!("conv c={c} k={k} b={seqs} n={n}");
            assert_close(&y, &wy, 1e-5, 1e-5, &what);
            if with_state {
                assert_close(&last, &wlast, 0.0, 0.0, &what);
            }
        }
    }

    #[test]
    fn decode_steps_continue_a_prefill_exactly() {
        let (c, k, seqs, n) = (11, 4, 2, 6);
        let mut rng = Rng::new(1);
        let w = rng.normal_vec(c * k, 0.5);
        let x = rng.normal_vec(seqs * n * c, 1.0);
        let (whole, _) = reference(
            &w,
            k,
            None,
            &x,
            seqs,
            Some(&vec![0.0; seqs * (k - 1) * c]),
            Activation::Identity,
        );
        // First 4 tokens as a prefill, then 2 single-token steps.
        let split = |t0: usize, t1: usize| -> Vec<f32> {
            (0..seqs)
                .flat_map(|b| x[(b * n + t0) * c..(b * n + t1) * c].to_vec())
                .collect()
        };
        let zero = vec![0.0; seqs * (k - 1) * c];
        let (y0, mut st) = run(
            &w,
            k,
            None,
            &split(0, 4),
            seqs,
            Some(&zero),
            Activation::Identity,
        );
        let mut got: Vec<Vec<f32>> = (0..seqs)
            .map(|b| y0[b * 4 * c..(b + 1) * 4 * c].to_vec())
            .collect();
        for t in 4..n {
            let (y, s) = run(
                &w,
                k,
                None,
                &split(t, t + 1),
                seqs,
                Some(&st),
                Activation::Identity,
            );
            st = s;
            for b in 0..seqs {
                got[b].extend_from_slice(&y[b * c..(b + 1) * c]);
            }
        }
        assert_close(&got.concat(), &whole, 1e-5, 1e-5, "prefill + decode");
    }

    fn fixture(name: &str) -> Weights {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ops")
            .join(name);
        Weights::open(&path).unwrap()
    }

    /// (B, S, C) inputs of the package to (B * S, C) rows; weight (C, 1, K) to (C, K).
    fn fixture_case(f: &Weights) -> (Vec<f32>, usize, usize, usize, Vec<f32>, Vec<f32>) {
        let (x, xs) = f.f32_any("in.x").unwrap();
        let (w, ws) = f.f32_any("param.conv.weight").unwrap();
        let b = f.f32_any("param.conv.bias").unwrap().0;
        (x, xs[0], ws[2], ws[0], w, b)
    }

    #[test]
    fn matches_the_package_in_sequence_mode() {
        for (name, with_state) in [
            ("conv_seq.safetensors", false),
            ("conv_seq_state.safetensors", true),
        ] {
            let f = fixture(name);
            let (x, seqs, k, _c, w, b) = fixture_case(&f);
            let init = with_state.then(|| f.f32_any("in.conv_state").unwrap().0);
            let zeros = vec![0.0; seqs * (k - 1) * (w.len() / k)];
            let state = init.as_deref().unwrap_or(&zeros);
            let (y, last) = run(&w, k, Some(&b), &x, seqs, Some(state), Activation::Identity);
            assert_close(&y, &f.f32_any("out.y").unwrap().0, 1e-5, 1e-5, name);
            if f.contains("out.last_state") {
                assert_close(
                    &last,
                    &f.f32_any("out.last_state").unwrap().0,
                    1e-6,
                    0.0,
                    name,
                );
            }
        }
    }

    #[test]
    fn matches_the_package_in_step_mode() {
        // The package's step state is (B, K, C) with an unused first row; ours is its last K-1.
        let f = fixture("conv_step.safetensors");
        let (x, seqs, k, c, w, b) = fixture_case(&f);
        let (st, ss) = f.f32_any("in.conv_state").unwrap();
        assert_eq!(ss, vec![seqs, k, c]);
        let ours: Vec<f32> = (0..seqs)
            .flat_map(|s| st[(s * k + 1) * c..(s + 1) * k * c].to_vec())
            .collect();
        let (y, last) = run(&w, k, Some(&b), &x, seqs, Some(&ours), Activation::Identity);
        assert_close(&y, &f.f32_any("out.y").unwrap().0, 1e-5, 1e-5, "conv_step");
        let (want_state, _) = f.f32_any("out.conv_state").unwrap();
        let want: Vec<f32> = (0..seqs)
            .flat_map(|s| want_state[(s * k + 1) * c..(s + 1) * k * c].to_vec())
            .collect();
        assert_close(&last, &want, 0.0, 0.0, "conv_step state");
    }

    #[test]
    fn long_inputs_run_in_segments_with_the_right_history() {
        // 9000 tokens x kernel 7: ~126k loop iterations for one invocation, beyond what
        // llvmpipe runs; the segments take their history from the inputs before them.
        let (c, k, seqs, n) = (3, 7, 2, 9000);
        let mut rng = Rng::new(12);
        let w = rng.normal_vec(c * k, 0.5);
        let x = rng.normal_vec(seqs * n * c, 1.0);
        let s = rng.normal_vec(seqs * (k - 1) * c, 1.0);
        for state in [Some(&s[..]), None] {
            let (y, last) = run(&w, k, None, &x, seqs, state, Activation::Silu);
            let (wy, wlast) = reference(&w, k, None, &x, seqs, state, Activation::Silu);
            assert_close(&y, &wy, 1e-5, 1e-5, "long conv");
            if state.is_some() {
                assert_close(&last, &wlast, 0.0, 0.0, "long conv state");
            }
        }
    }

    #[test]
    fn copies_its_input_beside_the_output() {
        let ctx = gpu();
        let (c, k, seqs, n) = (6, 4, 2, 5);
        let mut rng = Rng::new(13);
        let w = rng.normal_vec(c * k, 0.5);
        let x = rng.normal_vec(seqs * n * c, 1.0);
        let (want, _) = reference(&w, k, None, &x, seqs, None, Activation::Silu);
        let wt = Tensor::from_f32(ctx, "w", &[c, k], &w).unwrap();
        let xt = Tensor::from_f32(ctx, "x", &[seqs * n, c], &x).unwrap();
        // y = [pad | copy | conv | pad]: 1 + c + c + 1 columns.
        let yt = Tensor::zeros(ctx, "y", &[seqs * n, 2 * c + 2], DType::F32).unwrap();
        let (copy, out) = (
            View::of(&yt).select_cols(1..1 + c),
            View::of(&yt).select_cols(1 + c..1 + 2 * c),
        );
        let mut g = Graph::new();
        conv1d(
            ctx,
            &mut g,
            &wt,
            None,
            View::of(&xt),
            out,
            Some(copy),
            seqs,
            None,
            Activation::Silu,
        )
        .unwrap();
        ctx.run(&[&g]).unwrap();
        let got = yt.to_f32().unwrap();
        for r in 0..seqs * n {
            let row = &got[r * (2 * c + 2)..(r + 1) * (2 * c + 2)];
            assert_eq!(&row[1..1 + c], &x[r * c..(r + 1) * c], "copy of row {r}");
            assert_close(
                &row[1 + c..1 + 2 * c],
                &want[r * c..(r + 1) * c],
                1e-5,
                1e-5,
                "conv",
            );
            assert_eq!(
                (row[0], row[2 * c + 1]),
                (0.0, 0.0),
                "wrote outside the views"
            );
        }
        // A copy view elsewhere than the output's tensor is refused.
        let other = Tensor::zeros(ctx, "other", &[seqs * n, c], DType::F32).unwrap();
        let err = conv1d(
            ctx,
            &mut Graph::new(),
            &wt,
            None,
            View::of(&xt),
            out,
            Some(View::of(&other)),
            seqs,
            None,
            Activation::Silu,
        )
        .unwrap_err();
        assert!(err.to_string().contains("conv input copy"), "{err}");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ctx = gpu();
        let w = Tensor::from_f32(ctx, "w", &[4, 20], &[0.0; 80]).unwrap();
        let x = Tensor::zeros(ctx, "x", &[2, 4], DType::F32).unwrap();
        let y = Tensor::zeros(ctx, "y", &[2, 4], DType::F32).unwrap();
        let err = conv1d(
            ctx,
            &mut Graph::new(),
            &w,
            None,
            View::of(&x),
            View::of(&y),
            None,
            1,
            None,
            Activation::Identity,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kernel size 1..=16"), "{err}");
        let w = Tensor::from_f32(ctx, "w", &[4, 2], &[0.0; 8]).unwrap();
        let err = conv1d(
            ctx,
            &mut Graph::new(),
            &w,
            None,
            View::of(&x),
            View::of(&y),
            None,
            3,
            None,
            Activation::Identity,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("divisor of the 2 rows"), "{err}");
    }
}
