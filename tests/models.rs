//! Whole-model golden tests against the official-package reference (tests/fixtures/models):
//! prompt logits through the prefill path, 16 decode steps continuing from the prompt's
//! state, greedy generation reproducing the reference's tokens, and router telemetry —
//! for every fixture configuration (the latent-expert ones included), in f32 and f16.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moxe::checkpoint::Weights;
use moxe::ops::sample::Sampling;
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::testing::{
    assert_close_rel_max, golden_ids, gpu, gpu_kernels, gpu_without_subgroups, max_abs_diff,
};
use moxe::{Context, DType};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("golden.safetensors").exists())
        .collect();
    dirs.sort();
    dirs
}

struct Golden {
    prompt: Vec<u32>,
    prompt_logits: Vec<f32>,
    decode: Vec<u32>,
    decode_logits: Vec<f32>,
    vocab: usize,
    w: Weights,
}

fn golden(dir: &Path) -> Golden {
    let w = Weights::open(&dir.join("golden.safetensors")).unwrap();
    let ids = |n: &str| golden_ids(&w, n);
    let (prompt_logits, shape) = w.f32_any("prompt_logits").unwrap();
    Golden {
        prompt: ids("prompt_ids"),
        decode: ids("decode_ids"),
        prompt_logits,
        decode_logits: w.f32_any("decode_logits").unwrap().0,
        vocab: shape[1],
        w,
    }
}

/// max |got - want| / max |want| (printed with --nocapture; the README quotes these).
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
    max_abs_diff(got, want).0 / scale
}

fn load(dir: &Path, dtype: DType) -> Arc<Model> {
    load_on(gpu(), dir, dtype)
}

fn load_on(ctx: &Context, dir: &Path, dtype: DType) -> Arc<Model> {
    let options = LoadOptions {
        dtype: Some(dtype),
        max_sequences: 4,
        ..Default::default()
    };
    Arc::new(Model::load(ctx, dir, &options).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
}

/// Prompt logits, then decode logits one token at a time from the prompt's state.
fn run(model: &Arc<Model>, g: &Golden) -> (Vec<f32>, Vec<f32>) {
    let mut s = Session::new(model).unwrap();
    let prompt = s.logits(&g.prompt).unwrap();
    let mut decode = Vec::new();
    for &id in &g.decode {
        decode.extend(s.logits(&[id]).unwrap());
    }
    (prompt, decode)
}

#[test]
fn f32_logits_match_the_reference_for_every_fixture() {
    f32_logits_match_on(gpu());
}

#[test]
fn the_gpu_kernels_match_the_reference_for_every_fixture() {
    // The kernel variants a GPU chooses (on this adapter, whatever it is), same tolerance.
    f32_logits_match_on(gpu_kernels());
}

#[test]
fn the_paths_without_subgroups_match_the_reference_for_every_fixture() {
    // The CPU family as an adapter without subgroups runs it (same tolerance).
    f32_logits_match_on(gpu_without_subgroups());
}

fn f32_logits_match_on(ctx: &Context) {
    let dirs = fixtures();
    assert!(dirs.len() >= 6, "fixture models: {dirs:?}");
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let g = golden(dir);
        let model = load_on(ctx, dir, DType::F32);
        let (prompt, decode) = run(&model, &g);
        let family = if ctx.cpu_kernels() { "CPU" } else { "GPU" };
        let name = format!("{name} ({family} kernels)");
        eprintln!(
            "{name}: f32 relative error prompt {:.2e}, decode {:.2e}",
            rel_err(&prompt, &g.prompt_logits),
            rel_err(&decode, &g.decode_logits)
        );
        assert_close_rel_max(
            &prompt,
            &g.prompt_logits,
            1e-4,
            &format!("{name}: prompt logits"),
        );
        assert_close_rel_max(
            &decode,
            &g.decode_logits,
            1e-4,
            &format!("{name}: decode logits"),
        );
        assert_eq!(prompt.len(), g.prompt.len() * g.vocab);
    }
}

#[test]
fn f16_logits_stay_within_the_stated_tolerance() {
    // f16 storage of every weight matrix (vectors stay f32): measured worst case is listed in
    // the README; the bound here is 2e-2 of the largest logit.
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let g = golden(&dir);
        let (prompt, decode) = run(&load(&dir, DType::F16), &g);
        eprintln!(
            "{name}: f16 relative error prompt {:.2e}, decode {:.2e}",
            rel_err(&prompt, &g.prompt_logits),
            rel_err(&decode, &g.decode_logits)
        );
        assert_close_rel_max(
            &prompt,
            &g.prompt_logits,
            2e-2,
            &format!("{name}: f16 prompt"),
        );
        assert_close_rel_max(
            &decode,
            &g.decode_logits,
            2e-2,
            &format!("{name}: f16 decode"),
        );
    }
}

#[test]
fn greedy_generation_reproduces_the_reference_tokens() {
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let g = golden(&dir);
        let model = load(&dir, DType::F32);
        let mut s = Session::new(&model).unwrap();
        let greedy = Sampling::greedy();
        let mut next = s.feed(&g.prompt, &greedy).unwrap();
        let mut got = vec![next];
        for _ in 1..g.decode.len() {
            next = s.feed(&[next], &greedy).unwrap();
            got.push(next);
        }
        assert_eq!(got, g.decode, "{name}: greedy tokens");
    }
}

#[test]
fn prompt_telemetry_matches_the_reference() {
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let g = golden(&dir);
        if !g.w.contains("telemetry.0.losses") {
            continue; // dense model
        }
        let model = load(&dir, DType::F32);
        let mut s = Session::new(&model).unwrap();
        // Telemetry describes the last step: feed a prefix that is one prefill chunk (a power
        // of two), whose tokens are the first tokens of the reference's prompt.
        let n = (1usize << g.prompt.len().ilog2()).min(model.options().prefill_chunk);
        let chunk = &g.prompt[..n];
        s.logits(chunk).unwrap();
        let tel = s.telemetry().unwrap();
        for (l, t) in tel.iter().enumerate() {
            let want = |k: &str| g.w.f32_any(&format!("telemetry.{l}.{k}")).unwrap().0;
            let rows = chunk.len();
            let kk = t.top_k;
            let idx: Vec<u32> =
                g.w.ints(&format!("telemetry.{l}.topk_idx"))
                    .unwrap()
                    .0
                    .iter()
                    .map(|&v| v as u32)
                    .collect();
            assert_eq!(
                t.topk_idx,
                idx[..rows * kk],
                "{name} layer {l}: top-k experts"
            );
            let close = |got: &[f32], want: &[f32], what: &str| {
                moxe::testing::assert_close(
                    got,
                    want,
                    1e-4,
                    1e-3,
                    &format!("{name} layer {l}: {what}"),
                )
            };
            close(&t.difficulty, &want("difficulty")[..rows], "difficulty");
            close(&t.entropy, &want("entropy")[..rows], "entropy");
            close(
                &t.topk_weight,
                &want("topk_weight")[..rows * kk],
                "top-k weights",
            );
        }
    }
}
