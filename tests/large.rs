//! xLSTM-Large (NX-AI's xLSTM-7B architecture) against golden outputs of the official code
//! (tests/fixtures/large, made by reference/make_large_fixtures.py): a Hugging Face snapshot
//! as transformers saves it (sharded, bf16, tokenizer and generation config) and the
//! xlstm_large package's own state dicts in both weight modes. Prompt logits through the
//! chunked prefill, 16 decode steps continuing from the prompt's state, greedy generation,
//! sessions, other tensor namings, and one clear error for each kind of bad checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moxe::arch::Architecture;
use moxe::checkpoint::{ModelDir, Weights};
use moxe::ops::sample::Sampling;
use moxe::runtime::generate::GenerateOptions;
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::testing::{assert_close_rel_max, golden_ids, gpu, gpu_kernels, max_abs_diff};
use moxe::{Context, DType};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/large")
}

fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("golden.safetensors").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "xLSTM-Large fixtures: {dirs:?}");
    dirs
}

struct Golden {
    prompt: Vec<u32>,
    prompt_logits: Vec<f32>,
    decode: Vec<u32>,
    decode_logits: Vec<f32>,
    info: serde_json::Value,
}

fn golden(dir: &Path) -> Golden {
    let w = Weights::open(&dir.join("golden.safetensors")).unwrap();
    let ids = |n: &str| golden_ids(&w, n);
    Golden {
        prompt: ids("prompt_ids"),
        decode: ids("decode_ids"),
        prompt_logits: w.f32_any("prompt_logits").unwrap().0,
        decode_logits: w.f32_any("decode_logits").unwrap().0,
        info: serde_json::from_str(&w.metadata()["config"]).unwrap(),
    }
}

fn load(dir: &Path, dtype: Option<DType>) -> Arc<Model> {
    load_on(gpu(), dir, dtype)
}

fn load_on(ctx: &Context, dir: &Path, dtype: Option<DType>) -> Arc<Model> {
    let options = LoadOptions {
        dtype,
        max_sequences: 3,
        ..Default::default()
    };
    Arc::new(Model::load(ctx, dir, &options).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
}

/// Prompt logits (prefill in chunks of 64, 32, ... tokens), then the decode logits one token
/// at a time from the prompt's state.
fn run(model: &Arc<Model>, g: &Golden) -> (Vec<f32>, Vec<f32>) {
    let mut s = Session::new(model).unwrap();
    let prompt = s.logits(&g.prompt).unwrap();
    let mut decode = Vec::new();
    for &id in &g.decode {
        decode.extend(s.logits(&[id]).unwrap());
    }
    (prompt, decode)
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
    max_abs_diff(got, want).0 / scale
}

#[test]
fn logits_match_the_official_code_within_1e5() {
    logits_match_on(gpu());
}

#[test]
fn the_gpu_kernels_match_the_official_code_within_1e5() {
    // The kernel variants a GPU chooses (on this adapter, whatever it is), same tolerance.
    logits_match_on(gpu_kernels());
}

fn logits_match_on(ctx: &Context) {
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let g = golden(&dir);
        assert!(
            g.info["gate_cap_share"].as_f64().unwrap() > 0.0
                && g.info["logit_cap_share"].as_f64().unwrap() > 0.0,
            "{name}: the soft caps must bind in the fixture"
        );
        // As stored (bf16 kept exact), and widened to f32.
        for dtype in [None, Some(DType::F32)] {
            let model = load_on(ctx, &dir, dtype);
            let (prompt, decode) = run(&model, &g);
            let family = if ctx.cpu_kernels() { "CPU" } else { "GPU" };
            eprintln!(
                "{name} ({}, {family} kernels): relative error prompt {:.2e}, decode {:.2e}",
                model.dtype(),
                rel_err(&prompt, &g.prompt_logits),
                rel_err(&decode, &g.decode_logits)
            );
            let what = format!("{name} {} ({family} kernels)", model.dtype());
            assert_close_rel_max(&prompt, &g.prompt_logits, 1e-5, &format!("{what}: prompt"));
            assert_close_rel_max(&decode, &g.decode_logits, 1e-5, &format!("{what}: decode"));
        }
    }
}

#[test]
fn bf16_checkpoints_load_as_bf16() {
    for dir in fixtures() {
        let stored = golden(&dir).info["case"]["dtype"]
            .as_str()
            .unwrap()
            .to_string();
        let model = load(&dir, None);
        let want = if stored == "bfloat16" {
            DType::BF16
        } else {
            DType::F32
        };
        assert_eq!(model.dtype(), want, "{}", dir.display());
    }
}

#[test]
fn greedy_generation_reproduces_the_reference_tokens() {
    for dir in fixtures() {
        let g = golden(&dir);
        let model = load(&dir, None);
        let mut s = Session::new(&model).unwrap();
        let greedy = Sampling::greedy();
        let mut next = s.feed(&g.prompt, &greedy).unwrap();
        let mut got = vec![next];
        for _ in 1..g.decode.len() {
            next = s.feed(&[next], &greedy).unwrap();
            got.push(next);
        }
        assert_eq!(got, g.decode, "{}: greedy tokens", dir.display());
    }
}

#[test]
fn the_snapshot_tokenizer_adds_bos_and_follows_the_generation_config() {
    let dir = root().join("hf_single_bf16");
    let g = golden(&dir);
    let model = load(&dir, None);
    let text = g.info["prompt_text"].as_str().unwrap();
    let tok = model.require_tokenizer().unwrap();
    assert_eq!(
        tok.encode(text).unwrap(),
        g.prompt,
        "transformers' tokenizer ids"
    );
    assert_eq!(g.prompt[0], 0, "BOS first");
    assert_eq!(tok.eos(), &[2]);
    let d = model.generation_defaults();
    assert_eq!(
        (d.temperature, d.top_k, d.max_new_tokens),
        (Some(0.7), Some(40), Some(48))
    );
    // Generating from the text reads the same ids: the first token is the golden's.
    let mut s = Session::new(&model).unwrap();
    let opts = GenerateOptions {
        max_tokens: 3,
        ..Default::default()
    };
    let ids: Vec<u32> = s
        .generate(text, &opts)
        .unwrap()
        .map(|p| p.unwrap().id)
        .collect();
    assert_eq!(ids, g.decode[..3]);
}

#[test]
fn sessions_save_resume_and_fork_exactly() {
    let dir = root().join("large_single_bf16");
    let g = golden(&dir);
    let model = load(&dir, None);
    let (half, rest) = g.prompt.split_at(g.prompt.len() / 2);
    let mut s = Session::new(&model).unwrap();
    s.logits(half).unwrap();
    let fork = s.fork().unwrap();
    let path = std::env::temp_dir().join(format!("moxe-large-{}.session", std::process::id()));
    s.save(&path).unwrap();
    let want = s.logits(rest).unwrap();
    drop(s);
    for mut other in [fork, Session::load(&model, &path).unwrap()] {
        assert_eq!(other.logits(rest).unwrap(), want);
    }
    std::fs::remove_file(&path).unwrap();
    // Scoring: the NLL of the golden's first decode token after the prompt.
    let mut s = Session::new(&model).unwrap();
    let mut targets = g.prompt[1..].to_vec();
    targets.push(g.decode[0]);
    let nll = s.score(&g.prompt, &targets).unwrap();
    assert_eq!(nll.len(), g.prompt.len());
    assert!(nll.iter().all(|v| v.is_finite() && *v >= 0.0));
}

#[test]
fn batches_decode_like_single_sequences() {
    let dir = root().join("large_fused_bias_f32");
    let g = golden(&dir);
    let model = load(&dir, None);
    let greedy = Sampling::greedy();
    let mut a = Session::new(&model).unwrap();
    let mut b = Session::new(&model).unwrap();
    let ta = a.feed(&g.prompt, &greedy).unwrap();
    let tb = b.feed(&g.prompt[..40], &greedy).unwrap();
    let mut solo = Session::new(&model).unwrap();
    let want_b = solo.feed(&g.prompt[..40], &greedy).unwrap();
    assert_eq!(tb, want_b);
    let got = model
        .step_batch(&mut [&mut a, &mut b], &[ta, tb], &[greedy, greedy])
        .unwrap();
    assert_eq!(got[0], g.decode[1], "batched decode of the golden prompt");
    assert_eq!(got[1], solo.feed(&[want_b], &greedy).unwrap());
}

/// A scratch copy of a fixture directory, removed on drop.
struct Copy(PathBuf);

impl Copy {
    fn new(fixture: &str, tag: &str) -> Self {
        let src = root().join(fixture);
        let dst = std::env::temp_dir().join(format!("moxe-large-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
        Copy(dst)
    }

    fn edit_json(&self, file: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.0.join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
    }

    /// Rewrites one safetensors file of the copy, renaming tensors with `rename`.
    fn rename_tensors(&self, file: &str, rename: impl Fn(&str) -> String) {
        let path = self.0.join(file);
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (rename(&n), v))
            .collect();
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn error(&self) -> String {
        let dir_error = ModelDir::open(&self.0).err().map(|e| e.to_string());
        let load_error = Model::load(gpu(), &self.0, &LoadOptions::default())
            .err()
            .map(|e| e.to_string());
        assert_eq!(dir_error, load_error, "the error comes before the GPU");
        load_error.unwrap_or_else(|| panic!("{} must not load", self.0.display()))
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mentions(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "the error should mention {n:?}: {err}");
    }
}

#[test]
fn query_key_value_naming_loads_the_same_model() {
    let copy = Copy::new("hf_single_bf16", "qkv-names");
    let index = copy.0.join("model.safetensors.index.json");
    let long = |n: &str| {
        n.replace("mlstm_layer.q.", "mlstm_layer.query.")
            .replace("mlstm_layer.k.", "mlstm_layer.key.")
            .replace("mlstm_layer.v.", "mlstm_layer.value.")
    };
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, long(&text)).unwrap();
    for e in std::fs::read_dir(&copy.0).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("model-") {
            copy.rename_tensors(&name, long);
        }
    }
    let g = golden(&copy.0);
    let (prompt, _) = run(&load(&copy.0, None), &g);
    assert_close_rel_max(&prompt, &g.prompt_logits, 1e-5, "query/key/value naming");
}

#[test]
fn a_package_state_dict_under_transformers_names_loads() {
    // The package's names with the embedding renamed as transformers saves it.
    let copy = Copy::new("large_single_bf16", "hf-names");
    copy.rename_tensors("model.safetensors", |n| {
        n.replace("embedding.weight", "backbone.embeddings.weight")
    });
    let dir = ModelDir::open(&copy.0).unwrap();
    match &dir.config.architecture {
        Architecture::Large(l) => assert_eq!(l.naming.embedding, "backbone.embeddings.weight"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_shard_is_named() {
    let copy = Copy::new("hf_single_bf16", "no-shard");
    std::fs::remove_file(copy.0.join("model-00003-of-00010.safetensors")).unwrap();
    mentions(
        &copy.error(),
        &["model-00003-of-00010.safetensors", "missing", "index.json"],
    );
}

#[test]
fn an_index_naming_a_shard_outside_the_directory_is_named() {
    for (i, shard) in ["", ".", "..", "../model-00001-of-00010.safetensors"]
        .into_iter()
        .enumerate()
    {
        let copy = Copy::new("hf_single_bf16", &format!("outside-{i}"));
        copy.edit_json("model.safetensors.index.json", |v| {
            v["weight_map"]["backbone.blocks.9.norm_ffn.weight"] = shard.into();
        });
        mentions(
            &copy.error(),
            &[
                "index.json",
                "backbone.blocks.9.norm_ffn.weight",
                "not a file name in the model directory",
            ],
        );
    }
}

#[test]
fn an_index_naming_a_tensor_no_shard_holds_is_named() {
    let copy = Copy::new("hf_single_bf16", "bad-index");
    copy.edit_json("model.safetensors.index.json", |v| {
        v["weight_map"]["backbone.blocks.9.norm_ffn.weight"] =
            "model-00001-of-00010.safetensors".into();
    });
    mentions(
        &copy.error(),
        &[
            "backbone.blocks.9.norm_ffn.weight",
            "model-00001-of-00010.safetensors",
            "does not hold",
        ],
    );
}

#[test]
fn shapes_that_disagree_with_the_config_are_named() {
    let copy = Copy::new("large_fused_bias_f32", "shape");
    copy.edit_json("config.json", |v| v["ffn_proj_factor"] = 3.0.into());
    mentions(
        &copy.error(),
        &[
            "backbone.blocks.0.ffn.proj_up_gate_z.weight",
            "expected shape [384, 64]",
            "[256, 64]",
        ],
    );
    let copy = Copy::new("large_single_bf16", "heads");
    copy.edit_json("config.json", |v| v["qk_dim_factor"] = 0.25.into());
    mentions(
        &copy.error(),
        &["mlstm_layer.q.weight", "expected shape [20, 80]"],
    );
}

#[test]
fn an_unknown_weight_mode_is_named() {
    let copy = Copy::new("large_fused_bias_f32", "mode");
    copy.edit_json("config.json", |v| v["weight_mode"] = "fusedv2".into());
    mentions(
        &copy.error(),
        &["config.json", "weight_mode", "fusedv2", "single"],
    );
    // The wrong one of the two modes: the tensors it expects are missing.
    let copy = Copy::new("large_fused_bias_f32", "mode2");
    copy.edit_json("config.json", |v| v["weight_mode"] = "single".into());
    mentions(&copy.error(), &["missing tensor", "mlstm_layer.q.weight"]);
}

#[test]
fn a_config_of_no_supported_architecture_is_named() {
    let copy = Copy::new("hf_single_bf16", "arch");
    copy.edit_json("config.json", |v| {
        v["model_type"] = "mamba".into();
    });
    mentions(&copy.error(), &["config.json", "model_type", "'mamba'"]);
    let copy = Copy::new("large_single_bf16", "arch2");
    copy.edit_json("config.json", |v| {
        v.as_object_mut().unwrap().remove("num_blocks");
    });
    mentions(&copy.error(), &["matches no supported architecture"]);
}

#[test]
fn bad_generation_and_tokenizer_configs_are_named() {
    let copy = Copy::new("hf_single_bf16", "gen");
    copy.edit_json("generation_config.json", |v| {
        v["eos_token_id"] = 5000.into()
    });
    mentions(&copy.error(), &["eos_token_id 5000", "320 tokens"]);
    let copy = Copy::new("hf_single_bf16", "tok");
    copy.edit_json("tokenizer_config.json", |v| {
        v["eos_token"] = "<|nope|>".into()
    });
    std::fs::remove_file(copy.0.join("generation_config.json")).unwrap();
    copy.edit_json("config.json", |v| {
        v.as_object_mut().unwrap().remove("eos_token_id");
    });
    let err = Model::load(gpu(), &copy.0, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    mentions(&err, &["tokenizer", "<|nope|>"]);
}

/// Rewrites `file` of `copy`: `edit(name, bytes)` gives each tensor's new bytes, or `None` to drop it.
fn rewrite_shard(copy: &Copy, file: &str, edit: impl Fn(&str, &[u8]) -> Option<Vec<u8>>) {
    let path = copy.0.join(file);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| {
            edit(&n, v.data()).map(|data| (n, v.dtype(), v.shape().to_vec(), data))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = kept
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), view)
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn a_stored_head_is_the_model_s_even_where_the_config_says_tied() {
    // transformers' xLSTMForCausalLM keeps its own lm_head whatever tie_word_embeddings says
    // (5.x saves and reads it): a stored head is used; without one, the embedding is.
    let tied = Copy::new("hf_single_bf16", "tied-flag");
    tied.edit_json("config.json", |v| v["tie_word_embeddings"] = true.into());
    let g = golden(&tied.0);
    let (prompt, _) = run(&load(&tied.0, None), &g);
    assert_close_rel_max(&prompt, &g.prompt_logits, 1e-5, "tied flag, stored head");

    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tied.0.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shard_of = |n: &str| index["weight_map"][n].as_str().unwrap().to_string();
    let (head_shard, embedding_shard) = (
        shard_of("lm_head.weight"),
        shard_of("backbone.embeddings.weight"),
    );
    tied.edit_json("model.safetensors.index.json", |v| {
        v["weight_map"]
            .as_object_mut()
            .unwrap()
            .remove("lm_head.weight");
    });
    rewrite_shard(&tied, &head_shard, |n, b| {
        (n != "lm_head.weight").then(|| b.to_vec())
    });
    let (without, _) = run(&load(&tied.0, None), &g);
    // The same as an untied model whose stored head is a copy of the embedding.
    let copied = Copy::new("hf_single_bf16", "head-copied");
    let st_bytes = std::fs::read(copied.0.join(&embedding_shard)).unwrap();
    let embedding = safetensors::SafeTensors::deserialize(&st_bytes)
        .unwrap()
        .tensor("backbone.embeddings.weight")
        .unwrap()
        .data()
        .to_vec();
    rewrite_shard(&copied, &head_shard, |n, b| {
        Some(match n {
            "lm_head.weight" => embedding.clone(),
            _ => b.to_vec(),
        })
    });
    let (want, _) = run(&load(&copied.0, None), &g);
    assert_eq!(without, want, "a tied head is the embedding");
    assert!(rel_err(&without, &g.prompt_logits) > 1e-2);
}
