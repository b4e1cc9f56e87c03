//! Every kind of bad input gets one clear error naming the problem — never a panic.
//! Each case copies a fixture model into a temporary directory and breaks one thing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moxe::ops::sample::Sampling;
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::testing::gpu;
use moxe::{Context, ContextOptions};
use safetensors::tensor::TensorView;
use serde_json::Value;

const FIXTURE: &str = "tests/fixtures/models/moxe_xlstm_e4_k2_standard";

/// A scratch copy of the fixture model, removed on drop.
struct ModelCopy(PathBuf);

impl ModelCopy {
    fn new(tag: &str) -> Self {
        Self::of(FIXTURE, tag)
    }

    /// A scratch copy of another fixture model.
    fn of(fixture: &str, tag: &str) -> Self {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture);
        let dst = std::env::temp_dir().join(format!("moxe-bad-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        ModelCopy(dst)
    }

    fn config(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.0.join("config.json")).unwrap()).unwrap()
    }

    fn set_config(&self, v: &Value) {
        std::fs::write(self.0.join("config.json"), v.to_string()).unwrap();
    }

    fn weights(&self) -> Vec<u8> {
        std::fs::read(self.0.join("model.safetensors")).unwrap()
    }

    fn set_weights(&self, bytes: &[u8]) {
        std::fs::write(self.0.join("model.safetensors"), bytes).unwrap();
    }

    /// Rewrites the checkpoint, letting `edit` drop or replace tensors (name, shape, f32 data).
    fn rewrite(&self, edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(Vec<usize>, Vec<f32>)>) {
        self.rewrite_full(edit, Vec::new(), &[]);
    }

    /// [`ModelCopy::rewrite`] with `extra` tensors added and `metadata` in the header.
    fn rewrite_full(
        &self,
        edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(Vec<usize>, Vec<f32>)>,
        extra: Vec<(String, Vec<usize>, Vec<f32>)>,
        metadata: &[(&str, &str)],
    ) {
        let bytes = self.weights();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in st.tensors() {
            let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            if let Some((shape, data)) = edit(&name, view.shape().to_vec(), data) {
                kept.push((name, shape, bytemuck::cast_slice(&data).to_vec()));
            }
        }
        for (name, shape, data) in extra {
            kept.push((name, shape, bytemuck::cast_slice(&data).to_vec()));
        }
        let views: Vec<(String, TensorView<'_>)> = kept
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let metadata = (!metadata.is_empty()).then(|| {
            metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        self.set_weights(&safetensors::serialize(views, metadata).unwrap());
    }

    fn load_error(&self) -> String {
        match Model::load(gpu(), &self.0, &LoadOptions::default()) {
            Ok(_) => panic!("loading {} must fail", self.0.display()),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for ModelCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn assert_mentions(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

#[test]
fn missing_tensor() {
    let m = ModelCopy::new("missing");
    m.rewrite(|name, s, d| (name != "layers.1.gate.router.weight").then_some((s, d)));
    assert_mentions(
        &m.load_error(),
        &[
            "model.safetensors",
            "missing tensor 'layers.1.gate.router.weight'",
        ],
    );
}

#[test]
fn wrong_shape() {
    let m = ModelCopy::new("shape");
    m.rewrite(|name, s, d| {
        if name == "layers.0.mixer.blocks.1.xlstm.proj_down.weight" {
            let n = d.len();
            Some((vec![n], d))
        } else {
            Some((s, d))
        }
    });
    assert_mentions(
        &m.load_error(),
        &[
            "proj_down.weight",
            "expected shape [28, 64]",
            "found [1792]",
        ],
    );
}

#[test]
fn unknown_dtype() {
    let m = ModelCopy::new("dtype");
    let mut bytes = m.weights();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec())
        .unwrap()
        .replacen("\"F32\"", "\"Q99\"", 1);
    assert_eq!(header.len(), n);
    bytes[8..8 + n].copy_from_slice(header.as_bytes());
    m.set_weights(&bytes);
    assert_mentions(
        &m.load_error(),
        &["model.safetensors", "corrupt header", "unknown dtype"],
    );
}

#[test]
fn header_lengths_past_the_file_or_past_the_reader_bound_are_told_apart() {
    let m = ModelCopy::new("header-length");
    let mut bytes = m.weights();
    // Past the end of the file (and within the bound).
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    m.set_weights(&bytes);
    assert_mentions(&m.load_error(), &["model.safetensors", "past the end"]);
    // Past the bound, however long the file.
    bytes[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    m.set_weights(&bytes);
    assert_mentions(&m.load_error(), &["model.safetensors", "100,000,000 bytes"]);
}

#[test]
fn truncated_file() {
    let m = ModelCopy::new("truncated");
    let bytes = m.weights();
    m.set_weights(&bytes[..bytes.len() - 1000]);
    assert_mentions(&m.load_error(), &["model.safetensors", "truncated"]);
}

#[test]
fn corrupt_file() {
    let m = ModelCopy::new("corrupt");
    m.set_weights(b"this is not a safetensors file at all, just text");
    assert_mentions(&m.load_error(), &["model.safetensors"]);
    // Non-finite weights are corruption too.
    let m = ModelCopy::new("nan");
    m.rewrite(|name, s, mut d| {
        if name == "token_embedding.weight" {
            d[17] = f32::NAN;
        }
        Some((s, d))
    });
    assert_mentions(
        &m.load_error(),
        &["token_embedding.weight", "element 17", "NaN"],
    );
}

#[test]
fn invalid_json() {
    let m = ModelCopy::new("json");
    std::fs::write(m.0.join("config.json"), "{\"model_type\": \"moxe\", ").unwrap();
    assert_mentions(&m.load_error(), &["config.json", "invalid JSON", "line 1"]);
}

#[test]
fn a_tokenizer_json_that_is_not_a_tokenizer() {
    let m = ModelCopy::new("tokjson");
    let path = m.0.join("tokenizer.json");
    for (text, needles) in [
        (
            r#"{"a": 1}"#,
            &["tokenizer.json", "no \"model\" object"][..],
        ),
        (
            r#"{"model": "#,
            &["tokenizer.json", "invalid JSON", "line 1"],
        ),
        (
            r#"{"model": {"type": "BPE", "vocab": 7}}"#,
            &["tokenizer.json", "the tokenizers library cannot read it"],
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        assert_mentions(&m.load_error(), needles);
    }
}

#[test]
fn odd_number_of_experts() {
    let m = ModelCopy::new("odd");
    let mut c = m.config();
    c["num_experts"] = 5.into();
    m.set_config(&c);
    assert_mentions(
        &m.load_error(),
        &["config.json", "num_experts", "even", "found 5"],
    );
}

#[test]
fn top_k_above_the_number_of_experts() {
    let m = ModelCopy::new("topk");
    let mut c = m.config();
    c["top_k_experts"] = 9.into();
    m.set_config(&c);
    assert_mentions(
        &m.load_error(),
        &["config.json", "top_k_experts", "found 9"],
    );
}

#[test]
fn a_directory_that_does_not_exist() {
    let err = Model::load(
        gpu(),
        Path::new("/no/such/model/dir"),
        &LoadOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert_mentions(&err, &["/no/such/model/dir", "does not exist"]);
}

#[test]
fn config_and_checkpoint_that_do_not_belong_together() {
    let m = ModelCopy::new("mismatch");
    let mut c = m.config();
    c["num_layers"] = 2.into();
    m.set_config(&c);
    assert_mentions(&m.load_error(), &["unexpected tensor 'layers.2."]);
}

#[test]
fn a_model_beyond_the_adapter_limits() {
    // An adapter whose storage bindings hold 256 bytes cannot hold one embedding row of
    // this model (D = 28 f32 padded to 32 = 128 bytes fits, but the mLSTM rows do not).
    let mut options = ContextOptions::from_env().unwrap();
    options.max_binding_bytes = Some(256);
    let ctx = Context::new(&options).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let err = Model::load(&ctx, &dir, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert_mentions(
        &err,
        &[
            "exceeds the adapter's limits",
            "storage binding holds at most 256 bytes",
        ],
    );
}

#[test]
fn token_ids_out_of_range() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let model = Arc::new(Model::load(gpu(), &dir, &LoadOptions::default()).unwrap());
    let mut s = Session::new(&model).unwrap();
    let err = s
        .feed(&[1, 2, 80], &Sampling::greedy())
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["token id 80", "position 2", "80 tokens"]);
    let err = s.logits(&[u32::MAX]).unwrap_err().to_string();
    assert_mentions(&err, &["out of range"]);
    // The session still works after the rejected input.
    s.feed(&[1, 2, 3], &Sampling::greedy()).unwrap();
}

#[test]
fn bad_sampling_settings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let model = Arc::new(Model::load(gpu(), &dir, &LoadOptions::default()).unwrap());
    let mut s = Session::new(&model).unwrap();
    let bad = Sampling {
        temperature: f32::NAN,
        ..Sampling::greedy()
    };
    assert_mentions(
        &s.feed(&[1], &bad).unwrap_err().to_string(),
        &["temperature"],
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_cli_quietly() {
    // `moxe info | head -1`: the reader closes the pipe before moxe writes (it enumerates the
    // adapters first); the write must end the process quietly, not panic.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .arg("info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_bad_kernel_family_is_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .args(["generate", "--prompt", "hi", "--max-tokens", "1"])
        .env("MOXE_KERNELS", "fast")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("MOXE_KERNELS must be cpu or gpu, got 'fast'"),
        "{err}"
    );
}

#[test]
fn a_layer_count_past_the_limit_is_refused_before_anything_is_listed() {
    let m = ModelCopy::new("layers");
    let mut c = m.config();
    c["num_layers"] = 5000.into();
    m.set_config(&c);
    assert_mentions(
        &m.load_error(),
        &[
            "config.json",
            "num_layers",
            "between 1 and 4096",
            "found 5000",
        ],
    );
}

#[test]
fn config_numbers_beyond_f32_are_refused() {
    let m = ModelCopy::new("f32-range");
    let mut c = m.config();
    c["gamma"] = serde_json::json!(1e39);
    m.set_config(&c);
    assert_mentions(&m.load_error(), &["config.json", "gamma", "f32", "1e39"]);
}

#[test]
fn non_finite_logits_are_an_error_not_output() {
    // Finite weights that overflow together: an LM head of 3e38 gives infinite logits.
    let m = ModelCopy::new("overflow");
    m.rewrite(|name, s, d| {
        let d = match name {
            "lm_head.weight" => vec![3e38; d.len()],
            _ => d,
        };
        Some((s, d))
    });
    let options = LoadOptions {
        dtype: Some(moxe::DType::F32),
        ..Default::default()
    };
    let model = Arc::new(Model::load(gpu(), &m.0, &options).unwrap());
    let mut s = Session::new(&model).unwrap();
    assert_mentions(
        &s.logits(&[1, 2, 3]).unwrap_err().to_string(),
        &["non-finite", "logit"],
    );
}

#[test]
fn output_files_are_replaced_only_when_asked() {
    let dir = std::env::temp_dir().join(format!("moxe-keep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("saved.txt");
    let text = dir.join("text.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog.").unwrap();
    let moxe = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .args(args)
            .output()
            .unwrap()
    };
    let (s, t) = (saved.to_str().unwrap(), text.to_str().unwrap());
    for args in [
        &["logits", "--ids", "1,2", "--out", s][..],
        &["perplexity", "--text", t, "--nll-out", s],
        &[
            "generate",
            "-p",
            "Hi",
            "--max-tokens",
            "1",
            "--save-session",
            s,
        ],
    ] {
        std::fs::write(&saved, "precious").unwrap();
        let out = moxe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} replaced the file");
        assert!(err.contains("exists: pass --force"), "{args:?}: {err}");
        assert_eq!(std::fs::read_to_string(&saved).unwrap(), "precious");
        let forced = moxe(&[args, &["--force"]].concat());
        assert!(forced.status.success(), "{args:?} --force: {forced:?}");
        assert_ne!(std::fs::read(&saved).unwrap(), b"precious");
        // Even with --force, a link, device or FIFO is not replaced by a regular file, and a
        // missing directory is named before any work.
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            let link = dir.join("link");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&saved, &link).unwrap();
            let (l, missing) = (link.to_str().unwrap(), dir.join("no/such.out"));
            for (out, needle) in [
                (l, "symbolic link"),
                ("/dev/null", "not a regular file"),
                (missing.to_str().unwrap(), "does not exist"),
            ] {
                let args: Vec<&str> = args.iter().map(|&a| if a == s { out } else { a }).collect();
                let refused = moxe(&[&args[..], &["--force"]].concat());
                let err = String::from_utf8_lossy(&refused.stderr);
                assert!(!refused.status.success(), "{args:?} --force succeeded");
                assert!(err.contains(needle), "{args:?}: {err}");
            }
            assert!(std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
            assert!(std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn outputs_never_replace_the_run_s_inputs() {
    let dir = std::env::temp_dir().join(format!("moxe-inputs-{}", std::process::id()));
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    for entry in std::fs::read_dir(&bundled).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
        }
    }
    let text = dir.join("text.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog.\n").unwrap();
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let config = model.join("config.json");
    let c = config.to_str().unwrap();
    let before = std::fs::read(&config).unwrap();
    let gen_config = model
        .join("generation_config.json")
        .to_str()
        .unwrap()
        .to_string();
    for (args, needle) in [
        (
            &["logits", "--model", m, "--ids", "1", "--out", c][..],
            "is a file of the model in",
        ),
        (
            &["perplexity", "--model", m, "--text", t, "--nll-out", c],
            "is a file of the model in",
        ),
        (
            &["perplexity", "--model", m, "--text", t, "--nll-out", t],
            "is this run's input",
        ),
        // Not there yet, but the next load would read it.
        (
            &[
                "generate",
                "--model",
                m,
                "-p",
                "Hi",
                "--save-session",
                &gen_config,
            ],
            "is a file of the model in",
        ),
        (
            &[
                "generate",
                "--model",
                m,
                "--prompt-file",
                t,
                "--save-session",
                t,
            ],
            "is this run's input",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .args(args)
            .arg("--force")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} --force succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(&config).unwrap(), before);
    assert!(!model.join("generation_config.json").exists());
    // Nor the file standard input reads.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .args([
            "perplexity",
            "--model",
            m,
            "--text",
            "-",
            "--nll-out",
            t,
            "--force",
        ])
        .stdin(std::fs::File::open(&text).unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is this run's input /dev/stdin"), "{err}");
    // A file of the user's in the model directory is theirs to replace.
    let session = model.join("chat.session");
    let s = session.to_str().unwrap();
    for force in [false, true] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .args(["generate", "--model", m, "-p", "Hi", "--max-tokens", "1"])
            .args(["--save-session", s])
            .args(force.then_some("--force"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert!(std::fs::read_to_string(&text)
        .unwrap()
        .starts_with("The quick"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn command_lines_that_cannot_mean_anything_are_named() {
    let paper = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/paper.json");
    let paper = paper.to_str().unwrap();
    for (args, needle) in [
        (
            &["generate", "-p", "Hi", "--stop", ""][..],
            "--stop is empty",
        ),
        (
            &["generate", "--lines", "-p", "Hi"],
            "--lines reads one prompt",
        ),
        (&["generate", "-p", "-", "-p", "-"], "read only once"),
        // Named: which prompt is empty, where it came from, which option a number is for.
        (
            &["generate", "-p", "Hi", "-p", ""],
            "--prompt number 2: the text is empty",
        ),
        (&["generate", "-p", "-"], "standard input gave no text"),
        (
            &["generate", "-p", "Hi", "--top-k", "-1"],
            "invalid value '-1' for '--top-k",
        ),
        (&["logits", "--ids", "-1", "--out", "x"], "for '--ids"),
        (
            &["generate", "-p", "Hi", "-p", "Ho", "--telemetry"],
            "--telemetry reports one sequence",
        ),
        (
            &["perplexity", "--text", "-", "--nll-out", "-"],
            "--nll-out -: this output goes to a file",
        ),
        (
            &["generate", "-p", "Hi", "--save-session", "no-such-dir/"],
            "names a directory",
        ),
        (
            &["generate", "-p", "Hi", "--temperature", "-1"],
            "temperature must be",
        ),
        // Neither read as greedy nor as infinity.
        (
            &["generate", "-p", "Hi", "--temperature", "1e-300"],
            "beyond the range of f32",
        ),
        (
            &["generate", "-p", "Hi", "--top-p", "1e39"],
            "beyond the range of f32",
        ),
        (
            &["generate", "-p", "Hi", "--temperature", "1e-40"],
            "temperature must be 0 (greedy)",
        ),
        (&["bench", "--prompt-tokens", "0"], "--prompt-tokens"),
        // Bounded before a model loads: a huge batch or slot count would allocate its state.
        (&["serve", "--slots", "5000"], "--slots"),
        (&["bench", "--batch", "18446744073709551614"], "--batch"),
        (&["serve", "--max-body-bytes", "10"], "--max-body-bytes"),
        (
            &["serve", "--max-prompt-tokens", "0"],
            "--max-prompt-tokens",
        ),
        (&["bench", "moe", "--dim", "0"], "--dim"),
        (&["bench", "moe", "--experts", "1"], "--experts"),
        (
            &["bench", "moe", "--dim", "8192", "--experts", "64"],
            "GiB of expert weights",
        ),
        (
            &["bench", "--config", paper, "--blocks", "99"],
            "the config has 12",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn weights_past_a_cpu_adapter_s_memory_are_refused_before_the_upload() {
    // The xLSTM-7B shape with 4096 blocks: terabytes of random weights.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/xlstm-7b.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    v["num_blocks"] = 4096.into();
    v["num_hidden_layers"] = 4096.into();
    let path = std::env::temp_dir().join(format!("moxe-huge-{}.json", std::process::id()));
    std::fs::write(&path, v.to_string()).unwrap();
    // On the CPU adapter, whose memory the host reports (a GPU's, wgpu does not).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .args([
            "bench",
            "--config",
            path.to_str().unwrap(),
            "--dtype",
            "f32",
        ])
        .args([
            "--no-reference",
            "--no-probe",
            "--batch",
            "1",
            "--repeats",
            "1",
        ])
        .env("MOXE_ADAPTER", "llvmpipe")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("no adapter matches 'llvmpipe'") {
        eprintln!("no lavapipe adapter here: {err}");
        return;
    }
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("GiB as f32") && err.contains("host memory"),
        "{err}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_on_standard_output_is_an_error_not_a_panic() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .arg("info")
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cannot write to standard output"), "{err}");
}

#[test]
fn text_inputs_are_bounded_and_a_byte_order_mark_is_not_text() {
    let moxe = |args: &[&str], stdin: std::process::Stdio| {
        std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .args(args)
            .stdin(stdin)
            .output()
            .unwrap()
    };
    let perplexity_line = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find(|l| l.starts_with("perplexity:"))
            .unwrap()
            .to_string()
    };
    let dir = std::env::temp_dir().join(format!("moxe-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (plain, bom) = (dir.join("plain.txt"), dir.join("bom.txt"));
    let text = "The quick brown fox jumps over the lazy dog. It was a bright cold day.";
    std::fs::write(&plain, text).unwrap();
    std::fs::write(&bom, format!("\u{feff}{text}")).unwrap();
    let want = perplexity_line(&moxe(
        &["perplexity", "--text", plain.to_str().unwrap()],
        std::process::Stdio::null(),
    ));
    let got = perplexity_line(&moxe(
        &["perplexity", "--text", bom.to_str().unwrap()],
        std::process::Stdio::null(),
    ));
    assert_eq!(got, want, "a byte-order mark changed the score");
    let piped = perplexity_line(&moxe(
        &["perplexity", "--text", "-"],
        std::fs::File::open(&plain).unwrap().into(),
    ));
    assert_eq!(piped, want, "--text - reads standard input");
    // An endless source is an error past the limit, not unbounded memory.
    #[cfg(target_os = "linux")]
    for args in [
        &["perplexity", "--text", "/dev/zero"][..],
        &["generate", "--prompt-file", "/dev/zero"],
    ] {
        let out = moxe(args, std::process::Stdio::null());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("MiB), the most read"),
            "{args:?}: {err}"
        );
    }
    // An empty prompt file is named.
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = moxe(
        &["generate", "--prompt-file", empty.to_str().unwrap()],
        std::process::Stdio::null(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("empty.txt") && err.contains("holds no prompt"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_non_finite_logit_fails_a_sampled_step() {
    // One row of the LM head at 3e38: that logit alone is infinite, the others finite.
    let m = ModelCopy::new("one-inf");
    m.rewrite(|name, s, mut d| {
        if name == "lm_head.weight" {
            let cols = s[1];
            d[7 * cols..8 * cols].fill(3e38);
        }
        Some((s, d))
    });
    let options = LoadOptions {
        dtype: Some(moxe::DType::F32),
        ..Default::default()
    };
    let model = Arc::new(Model::load(gpu(), &m.0, &options).unwrap());
    for sampling in [Sampling::greedy(), Sampling::default()] {
        let mut s = Session::new(&model).unwrap();
        assert_mentions(
            &s.feed(&[1, 2, 3], &sampling).unwrap_err().to_string(),
            &["non-finite", "NaN or infinite"],
        );
    }
}

const TIED: &str = "tests/fixtures/models/moxe_mlp_e8_k1_proportional_tied";

#[test]
fn a_tied_head_stored_under_either_name_loads_and_a_different_head_is_refused() {
    let f32_load = |dir: &Path| {
        let options = LoadOptions {
            dtype: Some(moxe::DType::F32),
            ..Default::default()
        };
        Model::load(gpu(), dir, &options).map(Arc::new)
    };
    let logits = |model: &Arc<Model>| Session::new(model).unwrap().logits(&[1, 2, 3]).unwrap();
    let original = ModelCopy::of(TIED, "tied-original");
    let want = logits(&f32_load(&original.0).unwrap());
    let bytes = original.weights();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let embedding = st.tensor("token_embedding.weight").unwrap();
    let shape = embedding.shape().to_vec();
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(embedding.data());
    let head = |scale: f32| {
        let v: Vec<f32> = values.iter().map(|x| x * scale).collect();
        vec![("lm_head.weight".to_string(), shape.clone(), v)]
    };
    let no_head =
        |name: &str, s: Vec<usize>, d: Vec<f32>| (name != "lm_head.weight").then_some((s, d));

    // safetensors' save_model: the shared tensor kept once, as the head, the embedding's
    // name recorded in the metadata.
    let m = ModelCopy::of(TIED, "tied-save-model");
    m.rewrite_full(
        |name, s, d| {
            (name != "token_embedding.weight" && name != "lm_head.weight").then_some((s, d))
        },
        head(1.0),
        &[
            ("token_embedding.weight", "lm_head.weight"),
            ("format", "pt"),
        ],
    );
    assert_eq!(logits(&f32_load(&m.0).unwrap()), want);
    // Other metadata whose value happens to be a tensor's name is no tensor of the model,
    // and a quantised copy does not keep it.
    let m = ModelCopy::of(TIED, "tied-metadata-note");
    m.rewrite_full(
        |name, s, d| Some((s, d)).filter(|_| name != "lm_head.weight"),
        vec![],
        &[("source_tensor", "token_embedding.weight")],
    );
    assert_eq!(logits(&f32_load(&m.0).unwrap()), want);
    let q8 = m.0.with_extension("q8");
    moxe::convert::quantize::quantize(&m.0, &q8, moxe::quant::QuantFormat::Q8, true, None).unwrap();
    assert!(f32_load(&q8).is_ok());
    std::fs::remove_dir_all(&q8).unwrap();
    // Both names stored, equal: the same model.
    let m = ModelCopy::of(TIED, "tied-both");
    m.rewrite_full(no_head, head(1.0), &[]);
    assert_eq!(logits(&f32_load(&m.0).unwrap()), want);
    // A head that differs: which one the config means is ambiguous.
    let m = ModelCopy::of(TIED, "tied-differs");
    m.rewrite_full(no_head, head(1.5), &[]);
    assert_mentions(
        &m.load_error(),
        &[
            "lm_head.weight",
            "differs from 'token_embedding.weight'",
            "tie_weights",
        ],
    );
}

#[test]
fn a_pytorch_pickle_in_place_of_safetensors_says_how_to_convert() {
    let m = ModelCopy::new("pickle");
    std::fs::remove_file(m.0.join("model.safetensors")).unwrap();
    std::fs::write(m.0.join("pytorch_model.bin"), b"PK").unwrap();
    assert_mentions(
        &m.load_error(),
        &[
            "no weights",
            "pytorch_model.bin",
            "PyTorch pickle",
            "save_pretrained",
        ],
    );
}

#[test]
fn inspect_names_special_tokens_the_files_give_as_text() {
    let m = ModelCopy::new("inspect-names");
    std::fs::write(
        m.0.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .args(["inspect", "--model"])
        .arg(&m.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(r#"special tokens: bos "<s>" (prepended), eos "</s>", pad none"#),
        "{text}"
    );
    // With a tokenizer, also what a prompt gets and what ends a generation.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .args(["inspect", "--model"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            r#"special tokens as used: a prompt gets no added token; generation ends at 0 "<|endoftext|>""#
        ),
        "{text}"
    );
}
