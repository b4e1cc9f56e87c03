use std::path::Path;

use super::*;
use crate::arch::xlstm::config::UpProjection;
use crate::checkpoint::Weights;
use crate::graph::DynamicRows;
use crate::testing::{assert_close, assert_close_rel_max, gpu, max_abs_diff};
use crate::HostData;

fn fixture(name: &str) -> Weights {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ops")
        .join(format!("{name}.safetensors"));
    Weights::open(&path).unwrap()
}

/// The block configuration recorded in a fixture's metadata.
fn config(f: &Weights) -> MlstmConfig {
    let meta: serde_json::Value = serde_json::from_str(&f.metadata()["config"]).unwrap();
    let x = &meta["xlstm"];
    let m = &x["mlstm_block"]["mlstm"];
    let int = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    MlstmConfig {
        embedding_dim: int(&x["embedding_dim"]),
        num_heads: int(&m["num_heads"]),
        conv_kernel: int(&m["conv1d_kernel_size"]),
        qkv_blocksize: int(&m["qkv_proj_blocksize"]),
        up: UpProjection {
            factor: m["proj_factor"].as_f64().unwrap(),
            round_up: true,
            multiple: 64,
        },
        bias: x["bias"].as_bool().unwrap(),
    }
}

/// Output of the block over x (B, S, D): the first `prefill` tokens of every sequence in one
/// prefill graph, then one recorded decode graph replayed for each further token. Sequences
/// use slots in reverse order with a spare slot. Returns y (B, S, D), the state and slots.
fn prefill_then_decode(
    block: &MlstmBlock,
    x: &[f32],
    seqs: usize,
    prefill: usize,
) -> (Vec<f32>, MlstmState, Vec<u32>) {
    let ctx = gpu();
    let d = block.config().embedding_dim;
    let tokens = x.len() / d / seqs;
    let state = block.new_state(ctx, seqs + 1).unwrap();
    let slots: Vec<u32> = (0..seqs as u32).map(|b| seqs as u32 - b).collect();
    let slot_t = Tensor::from_u32(ctx, "slots", &[seqs], &slots).unwrap();
    let scratch = Scratch::new(ctx, seqs * prefill);
    let rows_of = |t0: usize, t1: usize| -> Vec<f32> {
        (0..seqs)
            .flat_map(|b| x[(b * tokens + t0) * d..(b * tokens + t1) * d].to_vec())
            .collect()
    };
    let xp = Tensor::from_f32(ctx, "x", &[seqs * prefill, d], &rows_of(0, prefill)).unwrap();
    let mut g = Graph::new();
    let batch = SeqBatch {
        x: &xp,
        slots: &slot_t,
        seqs,
        tokens: prefill,
        scratch: &scratch,
    };
    block.record(ctx, &mut g, &batch, &state).unwrap();
    ctx.run(&[&g]).unwrap();
    let yp = xp.to_f32().unwrap();
    let mut y: Vec<Vec<f32>> = (0..seqs)
        .map(|b| yp[b * prefill * d..(b + 1) * prefill * d].to_vec())
        .collect();
    let xd = Tensor::zeros(ctx, "x step", &[seqs, d], DType::F32).unwrap();
    let mut g = Graph::new();
    let batch = SeqBatch {
        x: &xd,
        slots: &slot_t,
        seqs,
        tokens: 1,
        scratch: &scratch,
    };
    block.record(ctx, &mut g, &batch, &state).unwrap();
    for t in prefill..tokens {
        xd.write(HostData::F32(&rows_of(t, t + 1))).unwrap();
        ctx.run(&[&g]).unwrap();
        let yt = xd.to_f32().unwrap();
        for (b, yb) in y.iter_mut().enumerate() {
            yb.extend_from_slice(&yt[b * d..(b + 1) * d]);
        }
    }
    (y.concat(), state, slots)
}

/// The slots' rows of a state tensor of `per` elements per slot, in batch order.
fn gather(t: &Tensor, slots: &[u32], per: usize) -> Vec<f32> {
    let all = t.to_f32().unwrap();
    slots
        .iter()
        .flat_map(|&s| all[s as usize * per..(s as usize + 1) * per].to_vec())
        .collect()
}

/// Runs a block fixture in `dtype`; returns max |y - out.y| / max |out.y| and checks the
/// final state against the package's step() state within `state_tol`.
fn block_case(name: &str, dtype: DType, state_tol: f32) -> f32 {
    let ctx = gpu();
    let f = fixture(name);
    let cfg = config(&f);
    let block = MlstmBlock::load(ctx, &f.scope("param."), &cfg, dtype).unwrap();
    let (x, shape) = f.f32_any("in.x").unwrap();
    let (seqs, tokens) = (shape[0], shape[1]);
    // A 64+ token prompt: all but the last 16 tokens through the prefill path.
    let (y, state, slots) = prefill_then_decode(&block, &x, seqs, tokens - 16);
    let want = f.f32_any("out.y").unwrap().0;
    let scale = want.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
    let rel = max_abs_diff(&y, &want).0 / scale;
    assert!(
        y.iter().all(|v| v.is_finite()),
        "{name} {dtype}: non-finite"
    );
    let (nh, dh, di, k) = (
        cfg.num_heads,
        cfg.head_dim(),
        cfg.inner_dim(),
        cfg.conv_kernel,
    );
    let cell = &state.cell;
    let what = |s: &str| format!("{name} {dtype}: {s}");
    for (key, got) in [
        ("out.C", gather(&cell.c, &slots, nh * dh * dh)),
        ("out.n", gather(&cell.n, &slots, nh * dh)),
        ("out.m", gather(&cell.m, &slots, nh)),
    ] {
        assert_close_rel_max(&got, &f.f32_any(key).unwrap().0, state_tol, &what(key));
    }
    // The package's step conv state is (B, K, Di); ours holds its last K-1 rows.
    let step_conv = f.f32_any("out.conv_state").unwrap().0;
    let want_conv: Vec<f32> = (0..seqs)
        .flat_map(|b| step_conv[(b * k + 1) * di..(b + 1) * k * di].to_vec())
        .collect();
    let got_conv = gather(state.conv.as_ref().unwrap(), &slots, (k - 1) * di);
    assert_close_rel_max(&got_conv, &want_conv, state_tol, &what("conv state"));
    rel
}

#[test]
fn prefill_then_decode_matches_the_package_in_f32() {
    for name in ["mlstm_block", "mlstm_block_large", "mlstm_block_nh1_bias"] {
        let rel = block_case(name, DType::F32, 1e-4);
        assert!(rel <= 1e-4, "{name} f32: max |diff| = {rel} x max|y|");
    }
}

#[test]
fn prefill_then_decode_matches_the_package_in_f16() {
    // Measured on lavapipe: 1.3e-3, 3.2e-3 and 7.7e-4 x max|y| (f16 rounding of the
    // matrices, the gate matrix included).
    for name in ["mlstm_block", "mlstm_block_large", "mlstm_block_nh1_bias"] {
        let rel = block_case(name, DType::F16, 2e-2);
        assert!(rel <= 5e-3, "{name} f16: max |diff| = {rel} x max|y|");
    }
}

/// The expert fixture: input (N, D) and the package's output.
fn expert_case() -> (MlstmBlock, Vec<f32>, Vec<f32>, usize) {
    let f = fixture("mlstm_expert");
    let cfg = config(&f);
    let block = MlstmBlock::load(gpu(), &f.scope("param."), &cfg, DType::F32).unwrap();
    let x = f.f32_any("in.x").unwrap().0;
    let y = f.f32_any("out.y").unwrap().0;
    (block, x, y, cfg.embedding_dim)
}

#[test]
fn expert_matches_the_package() {
    let ctx = gpu();
    let (block, x, want, d) = expert_case();
    let rows = x.len() / d;
    let xt = Tensor::from_f32(ctx, "x", &[rows, d], &x).unwrap();
    let yt = Tensor::zeros(ctx, "y", &[rows, d], DType::F32).unwrap();
    let scratch = Scratch::new(ctx, rows);
    let mut g = Graph::new();
    Expert::record(&block, ctx, &mut g, View::of(&xt), View::of(&yt), &scratch).unwrap();
    ctx.run(&[&g]).unwrap();
    assert_close_rel_max(&yt.to_f32().unwrap(), &want, 1e-4, "mlstm_expert");
}

#[test]
fn expert_in_a_dynamic_rows_section_computes_the_counted_rows() {
    let ctx = gpu();
    let (block, x, want, d) = expert_case();
    let rows = x.len() / d;
    let count = 13;
    let xt = Tensor::from_f32(ctx, "x", &[rows, d], &x).unwrap();
    let yt = Tensor::zeros(ctx, "y", &[rows, d], DType::F32).unwrap();
    let counts = Tensor::from_u32(ctx, "counts", &[2], &[0, count as u32]).unwrap();
    let dynamic = DynamicRows::new(ctx, &counts, 32).unwrap();
    let scratch = Scratch::new(ctx, rows);
    let mut g = Graph::new();
    dynamic.record_fill(ctx, &mut g).unwrap();
    g.set_dynamic_rows(Some((&dynamic, 1)));
    Expert::record(&block, ctx, &mut g, View::of(&xt), View::of(&yt), &scratch).unwrap();
    g.set_dynamic_rows(None);
    dynamic.finish().unwrap();
    ctx.run(&[&g]).unwrap();
    let got = yt.to_f32().unwrap();
    assert_close(
        &got[..count * d],
        &want[..count * d],
        2e-5,
        1e-4,
        "counted rows",
    );
}

#[test]
fn shape_errors_are_typed() {
    let ctx = gpu();
    let f = fixture("mlstm_block");
    let cfg = config(&f);
    let block = MlstmBlock::load(ctx, &f.scope("param."), &cfg, DType::F32).unwrap();
    // Wrong dims: the loader names the tensor and both shapes.
    let wrong = MlstmConfig {
        qkv_blocksize: 8,
        ..cfg.clone()
    };
    let err = MlstmBlock::load(ctx, &f.scope("param."), &wrong, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("q_proj.weight") && err.contains("[16, 8, 8]"),
        "{err}"
    );
    let state = block.new_state(ctx, 2).unwrap();
    let scratch = Scratch::new(ctx, 4);
    let x = Tensor::zeros(ctx, "x", &[4, cfg.embedding_dim], DType::F32).unwrap();
    let slots = Tensor::from_u32(ctx, "slots", &[2], &[0, 1]).unwrap();
    let mut g = Graph::new();
    let batch = SeqBatch {
        x: &x,
        slots: &slots,
        seqs: 2,
        tokens: 3,
        scratch: &scratch,
    };
    let err = block
        .record(ctx, &mut g, &batch, &state)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mLSTM block input") && err.contains("[6, 36]"),
        "{err}"
    );
    let batch = SeqBatch { tokens: 2, ..batch };
    let small = Scratch::new(ctx, 3);
    let err = block
        .record(
            ctx,
            &mut g,
            &SeqBatch {
                scratch: &small,
                ..batch
            },
            &state,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("scratch rows"), "{err}");
    assert!(g.is_empty());
}

/// The package's mLSTMCell (gates from cat[q, k, v], the cell, the out-norm) composed from
/// the engine's ops, with every cell kernel, against the `mlstm_cell` fixture.
#[test]
fn cell_with_gates_and_outnorm_matches_the_package() {
    let ctx = gpu();
    let f = fixture("mlstm_cell");
    let meta: serde_json::Value = serde_json::from_str(&f.metadata()["config"]).unwrap();
    let (di, nh) = (
        meta["inner_dim"].as_u64().unwrap() as usize,
        meta["num_heads"].as_u64().unwrap() as usize,
    );
    let dh = di / nh;
    let shape = f.shape("in.q").unwrap().to_vec();
    let (seqs, tokens) = (shape[0], shape[1]);
    let rows = seqs * tokens;
    let parts: Vec<Vec<f32>> = ["in.q", "in.k", "in.v"]
        .iter()
        .map(|n| f.f32_any(n).unwrap().0)
        .collect();
    let qkv: Vec<f32> = (0..rows)
        .flat_map(|r| {
            parts
                .iter()
                .flat_map(move |p| p[r * di..(r + 1) * di].to_vec())
        })
        .collect();
    let mut gw = f.f32("param.igate.weight", &[nh, 3 * di]).unwrap();
    gw.extend(f.f32("param.fgate.weight", &[nh, 3 * di]).unwrap());
    let mut gb = f.f32("param.igate.bias", &[nh]).unwrap();
    gb.extend(f.f32("param.fgate.bias", &[nh]).unwrap());
    let qkv_t = Tensor::from_f32(ctx, "qkv", &[rows, 3 * di], &qkv).unwrap();
    let gw_t = Tensor::weight(
        ctx,
        "gates",
        &[2 * nh, 3 * di],
        DType::F32,
        HostData::F32(&gw),
    )
    .unwrap();
    let gb_t = Tensor::from_f32(ctx, "gate bias", &[2 * nh], &gb).unwrap();
    let norm_t = Tensor::from_f32(
        ctx,
        "outnorm",
        &[di],
        &f.f32("param.outnorm.weight", &[di]).unwrap(),
    )
    .unwrap();
    let gates_t = Tensor::zeros(ctx, "gate pre-activations", &[rows, 2 * nh], DType::F32).unwrap();
    let h_t = Tensor::zeros(ctx, "h", &[rows, di], DType::F32).unwrap();
    let y_t = Tensor::zeros(ctx, "y", &[rows, di], DType::F32).unwrap();
    let slot_ids: Vec<u32> = (0..seqs as u32).collect();
    let slots = Tensor::from_u32(ctx, "slots", &[seqs], &slot_ids).unwrap();
    let want_y = f.f32_any("out.y").unwrap().0;
    let want_step = f.f32_any("out.y_step").unwrap().0;
    for kernel in CellKernel::all_available(ctx) {
        let state = CellState::new(ctx, seqs, nh, dh, dh).unwrap();
        let mut g = Graph::new();
        let (qv, gv) = (View::of(&qkv_t), View::of(&gates_t));
        matmul(ctx, &mut g, &gw_t, Some(&gb_t), qv, gv, 0.0).unwrap();
        let inputs = CellInputs::new(qv, gv);
        let h = View::of(&h_t);
        mlstm_cell::record(
            ctx, &mut g, kernel, &inputs, h, &state, &slots, seqs, tokens,
        )
        .unwrap();
        let norm = Norm::xlstm_heads(&norm_t, nh);
        layer_norm(ctx, &mut g, &norm, h, View::of(&y_t), 0.0).unwrap();
        ctx.run(&[&g]).unwrap();
        let y = y_t.to_f32().unwrap();
        let what = |s: &str| format!("mlstm_cell {kernel:?}: {s}");
        assert_close_rel_max(&y, &want_step, 1e-4, &what("y_step"));
        assert_close_rel_max(&y, &want_y, 1e-4, &what("y (parallel form)"));
        for (key, got) in [
            ("out.C", state.c.to_f32().unwrap()),
            ("out.n", state.n.to_f32().unwrap()),
            ("out.m", state.m.to_f32().unwrap()),
        ] {
            assert_close_rel_max(&got, &f.f32_any(key).unwrap().0, 1e-4, &what(key));
        }
    }
}

#[test]
fn state_tensors_are_per_slot_and_reset_clears_one_slot() {
    let ctx = gpu();
    let f = fixture("mlstm_block");
    let cfg = config(&f);
    let block = MlstmBlock::load(ctx, &f.scope("param."), &cfg, DType::F32).unwrap();
    let (x, _) = f.f32_any("in.x").unwrap();
    let d = cfg.embedding_dim;
    // Two sequences of 8 tokens (slots 2 and 1 of 3).
    let x: Vec<f32> = (0..2)
        .flat_map(|b| x[b * 64 * d..(b * 64 + 8) * d].to_vec())
        .collect();
    let (_, state, slots) = prefill_then_decode(&block, &x, 2, 8);
    let tensors = state.tensors();
    assert_eq!(tensors.len(), 4);
    assert!(tensors.iter().all(|t| t.shape()[0] == 3));
    state.reset(ctx, slots[0] as usize).unwrap();
    for t in tensors {
        let per = t.numel() / 3;
        let all = t.to_f32().unwrap();
        let slot = |s: u32| &all[s as usize * per..(s as usize + 1) * per];
        assert!(slot(slots[0]).iter().all(|&v| v == 0.0), "{}", t.label());
        assert!(slot(slots[1]).iter().any(|&v| v != 0.0), "{}", t.label());
    }
}
