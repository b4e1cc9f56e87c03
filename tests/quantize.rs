//! Quantised weights (q8, q4; docs/QUANT_FORMAT.md) on whole models: `moxe quantize` writes a
//! checkpoint that loads without re-quantising and gives bit-identical logits to quantising
//! at load, for every architecture; the logits stay near the official code's golden ones;
//! every inconsistent quantised checkpoint is a clear error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moxe::checkpoint::Weights;
use moxe::convert::quantize::quantize;
use moxe::quant::QuantFormat;
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::testing::{golden_ids, gpu, max_abs_diff};
use moxe::DType;
use serde_json::Value;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One model per architecture and expert kind (the bundled MoxE model, dense NeurIPS blocks,
/// latent experts, xLSTM-Large as a sharded Hugging Face snapshot and as the package's fused
/// state dict), with golden logits where the fixture has them.
fn models() -> Vec<PathBuf> {
    [
        "models/default",
        "tests/fixtures/models/dense_xlstm",
        "tests/fixtures/models/latent_xlstm_e4_k2",
        "tests/fixtures/models/moxe_mlp_e8_k1_proportional_tied",
        "tests/fixtures/large/hf_single_bf16",
        "tests/fixtures/large/large_fused_bias_f32",
    ]
    .iter()
    .map(|p| fixture(p))
    .collect()
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moxe-quant-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn load(dir: &Path, dtype: Option<DType>) -> Arc<Model> {
    let options = LoadOptions {
        dtype,
        max_sequences: 2,
        ..Default::default()
    };
    Arc::new(Model::load(gpu(), dir, &options).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
}

fn load_error(dir: &Path) -> String {
    match Model::load(gpu(), dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The prompt's logits, then one decode step's.
fn logits(model: &Arc<Model>, prompt: &[u32]) -> Vec<f32> {
    let mut s = Session::new(model).unwrap();
    let mut out = s.logits(prompt).unwrap();
    out.extend(s.logits(&prompt[..1]).unwrap());
    out
}

fn prompt(model: &Model) -> Vec<u32> {
    let v = model.config().vocab_size as u32;
    (0..23u32).map(|i| (i * 37 + 5) % v).collect()
}

#[test]
fn quantising_to_a_file_gives_the_logits_of_quantising_at_load() {
    for src in models() {
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            let what = format!("{} {format}", src.display());
            let out = out_dir(&format!(
                "roundtrip-{}-{format}",
                src.file_name().unwrap().to_string_lossy()
            ));
            let report = quantize(&src, &out, format, false, None).unwrap();
            assert!(report.quantized > 0, "{what}: nothing quantised");
            assert!(
                report.bytes_after < report.bytes_before,
                "{what}: {report:?}"
            );
            let at_load = load(&src, Some(DType::of_quant(format)));
            let from_file = load(&out, None);
            assert_eq!(from_file.dtype(), DType::of_quant(format), "{what}");
            let p = prompt(&at_load);
            let a = logits(&at_load, &p);
            let b = logits(&from_file, &p);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{what}: logits differ by up to {}",
                max_abs_diff(&a, &b).0
            );
            // The float model differs: the weights really were quantised.
            let float = logits(&load(&src, Some(DType::F32)), &p);
            assert!(max_abs_diff(&a, &float).0 > 0.0, "{what}");
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
}

/// Per prompt position, max |logit - golden| / max |golden|: (median, max) over positions.
fn position_errors(got: &[f32], want: &[f32], positions: usize) -> (f32, f32) {
    let scale = want.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
    let v = want.len() / positions;
    let mut errs: Vec<f32> = (0..positions)
        .map(|t| max_abs_diff(&got[t * v..(t + 1) * v], &want[t * v..(t + 1) * v]).0 / scale)
        .collect();
    errs.sort_by(f32::total_cmp);
    (errs[positions / 2], errs[positions - 1])
}

#[test]
fn quantised_logits_stay_near_the_official_codes() {
    // Errors relative to max |golden logit|, median and max over the prompt's positions,
    // printed for docs/QUANT_REPORT.md. The max catches the tokens whose top-k routing a
    // perturbation flips (these fixtures' random routers have near-ties); the median is the
    // typical token's.
    println!(
        "{:<36} {:>9} {:>19} {:>19}",
        "fixture (median / max)", "f32 max", "q8", "q4"
    );
    for dir in models().into_iter().skip(1) {
        let golden = Weights::open(&dir.join("golden.safetensors")).unwrap();
        let want = golden.f32_any("prompt_logits").unwrap().0;
        let p = golden_ids(&golden, "prompt_ids");
        let err = |dtype| {
            let mut s = Session::new(&load(&dir, Some(dtype))).unwrap();
            position_errors(&s.logits(&p).unwrap(), &want, p.len())
        };
        let (f32_err, q8, q4) = (err(DType::F32), err(DType::Q8), err(DType::Q4));
        println!(
            "{:<36} {:>9.1e} {:>9.1e} {:>9.1e} {:>9.1e} {:>9.1e}",
            dir.file_name().unwrap().to_string_lossy(),
            f32_err.1,
            q8.0,
            q8.1,
            q4.0,
            q4.1
        );
        let name = dir.display();
        assert!(f32_err.1 < 1e-4, "{name}: f32 {f32_err:?}");
        assert!(q8.0 > f32_err.1 && q8.0 < 0.05, "{name}: q8 {q8:?}");
        assert!(q4.0 > q8.0, "{name}: q4 {q4:?}");
    }
}

/// A float (f32) copy of the quantised model `dir`: its quantised matrices dequantised,
/// every other tensor converted exactly.
fn dequantised_copy(dir: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let w = Weights::open(&dir.join("model.safetensors")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .names()
        .into_iter()
        .map(|n| {
            let (values, shape) = w.f32_any(n).unwrap();
            (n.to_string(), shape, bytemuck::cast_slice(&values).to_vec())
        })
        .collect();
    let views = tensors.iter().map(|(n, s, b)| {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
        (n.clone(), view.unwrap())
    });
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("quantization");
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn quantised_models_compute_what_the_float_model_does_with_dequantised_weights() {
    // The kernels dequantise exactly: every architecture's quantised model matches the f32
    // model holding the dequantised values to f32 rounding.
    for src in models() {
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            let what = format!("{} {format}", src.display());
            let tag = format!("{}-{format}", src.file_name().unwrap().to_string_lossy());
            let (quantised, float) = (out_dir(&format!("q-{tag}")), out_dir(&format!("f-{tag}")));
            quantize(&src, &quantised, format, false, None).unwrap();
            dequantised_copy(&quantised, &float);
            let q = load(&quantised, None);
            let p = prompt(&q);
            let got = logits(&q, &p);
            let want = logits(&load(&float, Some(DType::F32)), &p);
            let scale = want.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
            let err = max_abs_diff(&got, &want).0 / scale;
            assert!(err < 2e-5, "{what}: {err}");
            std::fs::remove_dir_all(&quantised).unwrap();
            std::fs::remove_dir_all(&float).unwrap();
        }
    }
}

/// Rewrites the JSON header of a safetensors file with `edit`.
fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header.as_object_mut().unwrap());
    let mut text = header.to_string();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// Edits the `moxe.quantization` metadata JSON of a quantised file.
fn edit_quant_metadata(path: &Path, edit: impl FnOnce(&mut Value)) {
    edit_header(path, |h| {
        let meta = h["__metadata__"].as_object_mut().unwrap();
        let mut info: Value =
            serde_json::from_str(meta["moxe.quantization"].as_str().unwrap()).unwrap();
        edit(&mut info);
        meta.insert("moxe.quantization".into(), Value::String(info.to_string()));
    });
}

fn quantised_copy(name: &str) -> PathBuf {
    let out = out_dir(name);
    quantize(
        &fixture("models/default"),
        &out,
        QuantFormat::Q4,
        false,
        None,
    )
    .unwrap();
    out
}

fn assert_mentions(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
}

#[test]
fn inconsistent_quantised_checkpoints_are_clear_errors() {
    let weights = |dir: &Path| dir.join("model.safetensors");
    // A newer format version.
    let dir = quantised_copy("version");
    edit_quant_metadata(&weights(&dir), |m| m["version"] = 2.into());
    assert_mentions(
        &load_error(&dir),
        &["model.safetensors", "format version 2", "reads version 1"],
    );
    // An unknown format and a block size this build does not know.
    edit_quant_metadata(&weights(&dir), |m| {
        m["version"] = 1.into();
        m["format"] = "q3".into();
    });
    assert_mentions(&load_error(&dir), &["unknown format", "q3"]);
    edit_quant_metadata(&weights(&dir), |m| {
        m["format"] = "q4".into();
        m["block"] = 64.into();
    });
    assert_mentions(&load_error(&dir), &["block size 64"]);
    std::fs::remove_dir_all(&dir).unwrap();

    // Scales missing, or data of the wrong size for the logical shape.
    let dir = quantised_copy("scales");
    let name = "token_embedding.weight";
    edit_header(&weights(&dir), |h| {
        let scales = h.remove(&format!("{name}.qscales")).unwrap();
        h.insert("stray".into(), scales);
    });
    assert_mentions(
        &load_error(&dir),
        &[&format!("'{name}.qscales' is missing")],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let dir = quantised_copy("shape");
    edit_quant_metadata(&weights(&dir), |m| {
        m["tensors"][name] = serde_json::json!([1000, 128])
    });
    assert_mentions(&load_error(&dir), &[name, "U8 [1000, 64]"]);
    std::fs::remove_dir_all(&dir).unwrap();

    // A config that says q8 beside q4 weights; a quantised model's config beside float ones.
    let dir = quantised_copy("config");
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"q4\"", "\"q8\"")).unwrap();
    assert_mentions(
        &load_error(&dir),
        &["config.json", "the config says the weights are q8", "q4"],
    );
    // A config whose block size is not the weights'.
    std::fs::write(&config, text.replace("\"block\": 32", "\"block\": 64")).unwrap();
    assert_mentions(&load_error(&dir), &["config.json", "block size 64"]);
    std::fs::write(&config, text.replace("\"q4\"", "\"q8\"")).unwrap();
    std::fs::copy(fixture("models/default/model.safetensors"), weights(&dir)).unwrap();
    assert_mentions(&load_error(&dir), &["no quantised tensors"]);
    // A config of another model: the logical shapes disagree with it.
    let dir2 = quantised_copy("other-config");
    std::fs::copy(
        fixture("tests/fixtures/models/latent_xlstm_e4_k2/config.json"),
        dir2.join("config.json"),
    )
    .unwrap();
    assert_mentions(&load_error(&dir2), &["model.safetensors", "expected shape"]);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn quantize_keeps_what_users_saved() {
    let src = fixture("models/default");
    let out = quantised_copy("keep");
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    // Into a directory holding a model: refused without overwrite, the files untouched.
    let err = quantize(&src, &out, QuantFormat::Q8, false, None)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["already holds", "model.safetensors", "--force"]);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    // Onto the input model itself: refused even with overwrite.
    let err = quantize(&out, &out, QuantFormat::Q8, true, None)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["is the input model's"]);
    // With overwrite, it is replaced; a q4 model quantises again to q8.
    let q8 = out_dir("keep-q8");
    quantize(&out, &q8, QuantFormat::Q8, false, None).unwrap();
    // The output also holds a sharded checkpoint (a load would read it instead), a side
    // file the input lacks, and files of the user's that a load never reads.
    let index = serde_json::json!({"weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "../outside.safetensors",
    }});
    std::fs::write(out.join("model.safetensors.index.json"), index.to_string()).unwrap();
    for f in [
        "model-00001-of-00002.safetensors",
        "my_logits.safetensors",
        "special_tokens_map.json",
        "notes.txt",
    ] {
        std::fs::write(out.join(f), b"saved").unwrap();
    }
    let err = quantize(&src, &out, QuantFormat::Q8, false, None)
        .unwrap_err()
        .to_string();
    assert_mentions(
        &err,
        &["model.safetensors.index.json", "model-00001-of-00002"],
    );
    assert!(!err.contains("my_logits"), "{err}");
    let report = quantize(&src, &out, QuantFormat::Q8, true, None).unwrap();
    assert_ne!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    assert_eq!(
        report.removed,
        [
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "special_tokens_map.json"
        ]
    );
    assert_mentions(&report.summary(), &["removed", "special_tokens_map.json"]);
    for kept in ["my_logits.safetensors", "notes.txt"] {
        assert_eq!(std::fs::read(out.join(kept)).unwrap(), b"saved", "{kept}");
    }
    assert!(moxe::checkpoint::ModelDir::open(&out).is_ok());
    // The latent converter needs float weights and says so.
    let err = moxe::convert::latent::convert(
        &out,
        &out_dir("keep-latent"),
        moxe::convert::latent::RankChoice::Rank(8),
        2,
        false,
    )
    .unwrap_err()
    .to_string();
    assert_mentions(&err, &["quantised", "float checkpoint"]);
    // The command line: a clear error for a missing --dtype or an unknown one.
    for args in [&["--out", "x"][..], &["--dtype", "q3", "--out", "x"]] {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .arg("quantize")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains("--dtype"), "{err}");
    }
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&q8).unwrap();
}

/// A copy of the bundled model whose last tensor in file order holds a NaN: a quantiser
/// meets it only after writing the rest.
fn float_copy_with_late_nan(name: &str) -> PathBuf {
    let out = out_dir(name);
    std::fs::create_dir_all(&out).unwrap();
    let src = fixture("models/default");
    std::fs::copy(src.join("config.json"), out.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, last) = st
        .tensors()
        .into_iter()
        .max_by_key(|(_, v)| v.data().as_ptr() as usize)
        .unwrap();
    let at = last.data().as_ptr() as usize - bytes.as_ptr() as usize;
    let mut broken = bytes.clone();
    let nan = match last.dtype() {
        safetensors::Dtype::F32 => f32::NAN.to_le_bytes().to_vec(),
        _ => vec![0xc0, 0x7f],
    };
    broken[at..at + nan.len()].copy_from_slice(&nan);
    std::fs::write(out.join("model.safetensors"), broken).unwrap();
    out
}

#[test]
fn a_failed_quantize_leaves_the_output_as_it_was() {
    let bad = float_copy_with_late_nan("late-nan");
    // Over a saved model with --force: the error, and the saved files byte for byte.
    let out = quantised_copy("kept-on-failure");
    let before: Vec<(String, Vec<u8>)> = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(out.join(f)).unwrap()))
        .collect();
    let err = quantize(&bad, &out, QuantFormat::Q8, true, None)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["NaN"]);
    for (f, bytes) in &before {
        assert!(std::fs::read(out.join(f)).unwrap() == *bytes, "{f} changed");
    }
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), before.len(), "files left behind: {left:?}");
    load(&out, None);
    // Into a new directory: nothing is left behind, so a rerun needs no --force.
    let fresh = out_dir("fresh-on-failure");
    assert!(quantize(&bad, &fresh, QuantFormat::Q4, false, None).is_err());
    assert!(!fresh.exists(), "{} left behind", fresh.display());
    // Nor the parents it created for a nested one.
    let nested = fresh.join("a/b");
    assert!(quantize(&bad, &nested, QuantFormat::Q4, false, None).is_err());
    assert!(!fresh.exists(), "{} left behind", fresh.display());
    // A link to nothing as the output is named as such.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(out_dir("nowhere"), &fresh).unwrap();
        let err = quantize(&bad, &fresh, QuantFormat::Q4, false, None)
            .unwrap_err()
            .to_string();
        assert_mentions(&err, &["symbolic link to nothing"]);
        std::fs::remove_file(&fresh).unwrap();
    }
    for dir in [bad, out] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn non_finite_block_scales_are_named_at_load() {
    let dir = quantised_copy("nan-scale");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let name = "token_embedding.weight.qscales";
    let at = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let scales = st.tensor(name).unwrap();
        // Row 1, block 0 (q4: a NaN bf16 scale in the low half of the word).
        let row = scales.shape()[1] * 4;
        scales.data().as_ptr() as usize - bytes.as_ptr() as usize + row
    };
    let mut broken = bytes;
    broken[at..at + 2].copy_from_slice(&[0xc0, 0x7f]);
    std::fs::write(&path, broken).unwrap();
    assert_mentions(
        &load_error(&dir),
        &["model.safetensors", name, "row 1, block 0", "NaN"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_scale_that_overflows_is_refused_kept_or_dequantised() {
    // Row 1, block 0 of the embedding: the largest bf16 scale (15 times it is past f32's
    // range) over codes that are all 0, so no weight the block holds is infinite yet.
    let dir = quantised_copy("huge-scale");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let name = "token_embedding.weight";
    let (scale_at, data_at) = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let at = |t: &str| {
            let v = st.tensor(t).unwrap();
            let row = v.data().len() / v.shape()[0];
            v.data().as_ptr() as usize - bytes.as_ptr() as usize + row
        };
        (at(&format!("{name}.qscales")), at(name))
    };
    bytes[scale_at..scale_at + 2].copy_from_slice(&[0x7f, 0x7f]);
    bytes[data_at..data_at + 16].fill(0);
    std::fs::write(&path, bytes).unwrap();
    assert_mentions(&load_error(&dir), &[name, "row 1, block 0"]);
    let options = LoadOptions {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    let err = Model::load(gpu(), &dir, &options)
        .err()
        .expect("loaded")
        .to_string();
    assert_mentions(&err, &[name, "row 1, block 0", "non-finite weights"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tensors_copied_as_stored_are_checked_like_a_load_checks_them() {
    // A NaN in a vector (copied unchanged by both conversions): an error naming it, not a
    // checkpoint that cannot load.
    let dir = out_dir("vector-nan");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("models/default");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (name, vector) = st
        .tensors()
        .into_iter()
        .filter(|(_, v)| v.shape().len() == 1)
        .min_by_key(|(n, _)| n.clone())
        .unwrap();
    let nan = match vector.dtype() {
        safetensors::Dtype::F32 => f32::NAN.to_le_bytes().to_vec(),
        safetensors::Dtype::F16 => vec![0x00, 0x7e],
        _ => vec![0xc0, 0x7f],
    };
    let at = vector.data().as_ptr() as usize - bytes.as_ptr() as usize + nan.len();
    let mut broken = bytes.clone();
    broken[at..at + nan.len()].copy_from_slice(&nan);
    std::fs::write(dir.join("model.safetensors"), broken).unwrap();
    let err = quantize(
        &dir,
        &out_dir("vector-nan-q4"),
        QuantFormat::Q4,
        false,
        None,
    )
    .unwrap_err()
    .to_string();
    assert_mentions(&err, &[&name, "element 1", "NaN"]);
    let err = moxe::convert::latent::convert(
        &dir,
        &out_dir("vector-nan-latent"),
        moxe::convert::latent::RankChoice::Rank(4),
        2,
        false,
    )
    .unwrap_err()
    .to_string();
    assert_mentions(&err, &[&name, "NaN"]);
    assert!(!out_dir("vector-nan-q4").exists() && !out_dir("vector-nan-latent").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_side_file_that_is_not_a_regular_file_is_an_error_not_a_hang() {
    let dir = out_dir("fifo-tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("models/default");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let fifo = dir.join("tokenizer.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let err = quantize(&dir, &out_dir("fifo-q8"), QuantFormat::Q8, false, None)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["tokenizer.json", "not a regular file"]);
    assert!(!out_dir("fifo-q8").exists());
    std::fs::remove_dir_all(dir).unwrap();
}
