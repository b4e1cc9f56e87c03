//! Latent experts (docs/LATENT_FORMAT.md): where the shared projections B_g x run (once per
//! token per group hit for mlp experts, once per (token, selected expert) for xlstm experts),
//! read back from the GPU-written routing of a whole-model step; and `moxe convert latent`
//! against the reference's conversion fixtures and the dense goldens. (The latent fixtures'
//! logits, decode, greedy tokens and telemetry are checked with every other model in
//! tests/models.rs.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moxe::checkpoint::Weights;
use moxe::convert::latent::{convert, ConversionReport, RankChoice};
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::testing::{assert_close, assert_close_rel_max, golden_ids, gpu};
use moxe::DType;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(dir: &Path) -> Arc<Model> {
    let options = LoadOptions {
        dtype: Some(DType::F32),
        max_sequences: 2,
        ..Default::default()
    };
    Arc::new(Model::load(gpu(), dir, &options).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
}

/// Per group: (distinct tokens that chose an expert of the group, (token, expert) pairs).
fn group_hits(topk: &[u32], k: usize, experts: usize, groups: usize) -> Vec<(u32, u32)> {
    let size = experts / groups;
    let mut out = vec![(0, 0); groups];
    for choices in topk.chunks(k) {
        let hit: BTreeSet<usize> = choices.iter().map(|&e| e as usize / size).collect();
        for g in hit {
            out[g].0 += 1;
        }
        for &e in choices {
            out[e as usize / size].1 += 1;
        }
    }
    out
}

/// Feeds the first 32 prompt tokens (one prefill step) of a fixture to a fresh session.
fn prefill(model: &Arc<Model>, golden: &Weights) -> usize {
    let n = 32;
    let mut s = Session::new(model).unwrap();
    s.logits(&golden_ids(golden, "prompt_ids")[..n]).unwrap();
    n
}

#[test]
fn mlp_shared_projections_run_once_per_group_hit_per_token() {
    let dir = fixture("models/latent_mlp_e4_k2");
    let golden = Weights::open(&dir.join("golden.safetensors")).unwrap();
    let weights = Weights::open(&dir.join("model.safetensors")).unwrap();
    let model = load(&dir);
    let n = prefill(&model, &golden);
    let tel = model.last_telemetry().unwrap();
    let (e, k, g, d) = (4, 2, 2, 16);
    let mut double_hits = 0;
    model
        .with_last_moe_steps(|steps| {
            assert_eq!(steps.len(), 2);
            for (l, step) in steps.iter().enumerate() {
                let topk = &tel[l].topk_idx;
                let hits = group_hits(topk, k, e, g);
                let stage = step
                    .group_stage()
                    .expect("a latent mlp layer has a group stage");
                // The rows each B_g multiplied, as the GPU counted them: one per token per
                // group hit, not one per (token, expert).
                let rows = stage.read_rows()?;
                let want: Vec<u32> = hits.iter().map(|h| h.0).collect();
                assert_eq!(rows, want, "layer {l}: group rows");
                double_hits += hits.iter().map(|h| h.1 - h.0).sum::<u32>();
                // Every B_g dispatch the GPU ran has work exactly when its group has rows.
                for (x, grids) in stage.read_grids()?.iter().enumerate() {
                    assert!(!grids.is_empty(), "layer {l} group {x}: no B dispatch");
                    for grid in grids {
                        let work = grid.iter().product::<u32>() > 0;
                        assert_eq!(work, rows[x] > 0, "layer {l} group {x}: grid {grid:?}");
                    }
                }
                // Each choice's group row is its token's: both choices of a token in one group
                // read the same B_g u.
                let slots = stage.read_slots()?;
                for (t, c) in topk.chunks(k).enumerate() {
                    let same = c[0] as usize / (e / g) == c[1] as usize / (e / g);
                    assert_eq!(
                        same,
                        slots[t * k] == slots[t * k + 1],
                        "layer {l} token {t}"
                    );
                }
            }
            // The last layer's group rows hold B_g u_t for the tokens that hit g, in order
            // (u = the layer input, the golden mixer output).
            let l = steps.len() - 1;
            let (_, latent) = steps[l].group_stage().unwrap().regions();
            let latent_rows = latent.to_f32()?;
            let width = latent.cols();
            let u = golden.f32_any(&format!("hidden.{l}.mixer")).unwrap().0;
            let topk = &tel[l].topk_idx;
            for x in 0..g {
                let b = |kind: &str| {
                    let name = format!("layers.{l}.experts.latent.{x}.{kind}.B");
                    weights.f32_any(&name).unwrap().0
                };
                let stacked: Vec<f32> = b("w1").into_iter().chain(b("w3")).collect();
                let tokens: Vec<usize> = (0..n)
                    .filter(|&t| {
                        topk[t * k..][..k]
                            .iter()
                            .any(|&c| c as usize / (e / g) == x)
                    })
                    .collect();
                let r = stacked.len() / d;
                for (i, &t) in tokens.iter().enumerate() {
                    let want = moxe::ops::matmul::reference(&stacked, d, &u[t * d..][..d], None);
                    let got = &latent_rows[(x * n + i) * width..][..r];
                    assert_close(got, &want, 1e-4, 1e-4, &format!("group {x} row {i}"));
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        double_hits > 0,
        "the fixture must route some token to two experts of one group"
    );
}

#[test]
fn xlstm_shared_projections_run_once_per_token_and_selected_expert() {
    let dir = fixture("models/latent_xlstm_e4_k2");
    let golden = Weights::open(&dir.join("golden.safetensors")).unwrap();
    let model = load(&dir);
    prefill(&model, &golden);
    let tel = model.last_telemetry().unwrap();
    let (e, k, g) = (4, 2, 2);
    model
        .with_last_moe_steps(|steps| {
            for (l, step) in steps.iter().enumerate() {
                // The factored matrices read expert-specific inputs: B_g runs inside each
                // expert, over that expert's GPU-counted rows, so the group's B products are
                // its (token, expert) pairs.
                assert!(step.group_stage().is_none(), "layer {l}");
                let rows = step.read_expert_rows()?;
                let hits = group_hits(&tel[l].topk_idx, k, e, g);
                for (x, &(_, pairs)) in hits.iter().enumerate() {
                    let got: u32 = rows[x * (e / g)..(x + 1) * (e / g)].iter().sum();
                    assert_eq!(got, pairs, "layer {l} group {x}");
                }
            }
            Ok(())
        })
        .unwrap();
}

/// A fresh output directory under the system temp dir.
fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moxe-latent-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |a, &b| a.max(b.abs()))
}

#[test]
fn full_rank_conversion_reproduces_the_dense_logits() {
    for (name, d) in [
        ("moxe_xlstm_e4_k2_standard", 28),
        ("moxe_mlp_e8_k1_proportional_tied", 26),
    ] {
        let src = fixture(&format!("models/{name}"));
        let out = out_dir(&format!("full-{name}"));
        let report = convert(&src, &out, RankChoice::Rank(d), 2, false).unwrap();
        assert!(report.slots.iter().all(|s| s.rank == s.full_rank));
        let golden = Weights::open(&src.join("golden.safetensors")).unwrap();
        let model = load(&out);
        let mut s = Session::new(&model).unwrap();
        let prompt = s.logits(&golden_ids(&golden, "prompt_ids")).unwrap();
        let want = golden.f32_any("prompt_logits").unwrap().0;
        assert_close_rel_max(&prompt, &want, 1e-4, &format!("{name}: full-rank latent"));
        let mut decode = Vec::new();
        for id in golden_ids(&golden, "decode_ids") {
            decode.extend(s.logits(&[id]).unwrap());
        }
        let want = golden.f32_any("decode_logits").unwrap().0;
        assert_close_rel_max(&decode, &want, 1e-4, &format!("{name}: decode"));
        eprintln!(
            "{name}: full-rank conversion, max |logit| {:.3}",
            max_abs(&prompt)
        );
        drop(s);
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// The cases of a conversion fixture: (choice, rank, rel_err, expert_rel_err, params_after,
/// expert_params_after).
struct Case {
    choice: RankChoice,
    rank: Vec<u32>,
    rel_err: Vec<f32>,
    expert_rel_err: Vec<f32>,
    params: (usize, usize),
}

fn cases(w: &Weights) -> (Vec<Case>, serde_json::Value) {
    let meta: serde_json::Value = serde_json::from_str(&w.metadata()["config"]).unwrap();
    let list = meta["cases"].as_array().unwrap();
    let cases = list
        .iter()
        .enumerate()
        .map(|(c, m)| Case {
            choice: match m.get("rank") {
                Some(r) => RankChoice::Rank(r.as_u64().unwrap() as usize),
                None => RankChoice::Energy(m["energy"].as_f64().unwrap()),
            },
            rank: golden_ids(w, &format!("case.{c}.rank")),
            rel_err: w.f32_any(&format!("case.{c}.rel_err")).unwrap().0,
            expert_rel_err: w.f32_any(&format!("case.{c}.expert_rel_err")).unwrap().0,
            params: (
                m["params_after"].as_u64().unwrap() as usize,
                m["expert_params_after"].as_u64().unwrap() as usize,
            ),
        })
        .collect();
    (cases, meta)
}

/// ||W_e - A_e B||_F / ||W_e||_F of every expert, from the written latent file and the dense
/// source (the products, never A or B alone: their signs are arbitrary).
fn product_errors(report: &ConversionReport, dense: &Weights, latent: &Weights) -> Vec<f64> {
    let mut out = Vec::new();
    for s in &report.slots {
        let b = latent
            .f32_any(&format!(
                "layers.{}.experts.latent.{}.{}.B",
                s.layer, s.group, s.kind
            ))
            .unwrap()
            .0;
        for e in s.experts.clone() {
            let a = latent
                .f32_any(&format!("layers.{}.experts.{e}.{}.A", s.layer, s.kind))
                .unwrap()
                .0;
            let w = dense
                .f32_any(&format!("layers.{}.experts.{e}.{}.weight", s.layer, s.kind))
                .unwrap()
                .0;
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for o in 0..s.out {
                for j in 0..s.dim {
                    let ab: f64 = (0..s.rank)
                        .map(|i| a[o * s.rank + i] as f64 * b[i * s.dim + j] as f64)
                        .sum();
                    let x = w[o * s.dim + j] as f64;
                    diff += (x - ab).powi(2);
                    norm += x * x;
                }
            }
            out.push((diff / norm).sqrt());
        }
    }
    out
}

#[test]
fn conversion_agrees_with_the_reference_and_errors_grow_as_the_rank_falls() {
    for name in [
        "moxe_xlstm_e4_k2_standard",
        "moxe_mlp_e8_k1_proportional_tied",
    ] {
        let fx = Weights::open(&fixture(&format!("conversion/latent_{name}.safetensors"))).unwrap();
        let (cases, meta) = cases(&fx);
        let src = fixture(&format!("models/{name}"));
        let dense = Weights::open(&src.join("model.safetensors")).unwrap();
        let mut by_rank: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
        for (c, case) in cases.iter().enumerate() {
            let what = format!("{name} case {c} ({:?})", case.choice);
            let out = out_dir(&format!("case{c}-{name}"));
            let report = convert(&src, &out, case.choice, 2, false).unwrap();
            let slots = meta["slots"].as_array().unwrap();
            assert_eq!(report.slots.len(), slots.len(), "{what}");
            for (i, (s, m)) in report.slots.iter().zip(slots).enumerate() {
                assert_eq!(s.layer as u64, m["layer"].as_u64().unwrap(), "{what}");
                assert_eq!(s.group as u64, m["group"].as_u64().unwrap(), "{what}");
                assert_eq!(s.kind, m["kind"].as_str().unwrap(), "{what}");
                assert_eq!(
                    s.full_rank as u64,
                    m["full_rank"].as_u64().unwrap(),
                    "{what}"
                );
                let sv: Vec<f32> = s.singular_values.iter().map(|&v| v as f32).collect();
                let want = fx.f32_any(&format!("slot.{i}.singular_values")).unwrap().0;
                assert_close(
                    &sv,
                    &want,
                    1e-5,
                    1e-5,
                    &format!("{what} slot {i} singular values"),
                );
            }
            let ranks: Vec<u32> = report.slots.iter().map(|s| s.rank as u32).collect();
            assert_eq!(ranks, case.rank, "{what}: ranks");
            let rel: Vec<f32> = report.slots.iter().map(|s| s.rel_err as f32).collect();
            assert_close(&rel, &case.rel_err, 1e-5, 1e-4, &format!("{what}: rel_err"));
            let reported: Vec<f64> = report
                .slots
                .iter()
                .flat_map(|s| s.expert_rel_err.clone())
                .collect();
            let latent = Weights::open(&out.join("model.safetensors")).unwrap();
            let products = product_errors(&report, &dense, &latent);
            for (what2, v) in [("reported", &reported), ("A.B products", &products)] {
                let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                let tol = if what2 == "reported" { 1e-5 } else { 2e-5 };
                assert_close(
                    &v,
                    &case.expert_rel_err,
                    tol,
                    1e-3,
                    &format!("{what}: {what2}"),
                );
            }
            assert_eq!(
                (report.after.total, report.after.experts),
                case.params,
                "{what}: parameters after"
            );
            assert_eq!(
                (report.before.total, report.before.experts),
                (
                    meta["params_before"].as_u64().unwrap() as usize,
                    meta["expert_params_before"].as_u64().unwrap() as usize
                ),
                "{what}: parameters before"
            );
            if let RankChoice::Rank(r) = case.choice {
                let stacked = report.slots.iter().map(|s| s.rel_err).collect();
                by_rank.push((r, stacked, reported));
            }
            std::fs::remove_dir_all(&out).unwrap();
        }
        // Ranks D, 3D/4, D/2, D/4: every stacked and per-expert error grows as the rank falls.
        by_rank.sort_by_key(|x| std::cmp::Reverse(x.0));
        assert_eq!(by_rank.len(), 4, "{name}");
        for pair in by_rank.windows(2) {
            let (hi, lo) = (&pair[0], &pair[1]);
            for (what, a, b) in [("stacked", &hi.1, &lo.1), ("per expert", &hi.2, &lo.2)] {
                for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                    assert!(
                        y > x,
                        "{name} {what} {i}: error at rank {} ({y}) not above rank {} ({x})",
                        lo.0,
                        hi.0
                    );
                }
            }
        }
    }
}

#[test]
fn convert_cli_writes_a_loadable_model_and_prints_the_report() {
    let src = fixture("models/moxe_xlstm_e4_k2_standard");
    let out = out_dir("cli");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .args(["convert", "latent", "--energy", "0.9", "--model"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        text.contains("xlstm.proj_up") && text.contains("ffn.proj_up"),
        "{text}"
    );
    assert!(text.contains("all parameters:"), "{text}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["latent"]["groups"], 2);
    load(&out);
    // Bad choices are errors, not panics.
    for args in [&["--rank", "0"][..], &["--energy", "1.5"]] {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .args(["convert", "latent"])
            .args(args)
            .arg("--model")
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains("error:"), "{err}");
    }
    // Converting a latent model again, or with groups that do not divide E, is refused.
    let again =
        moxe::convert::latent::convert(&out, &out_dir("again"), RankChoice::Rank(4), 2, false);
    assert!(again
        .unwrap_err()
        .to_string()
        .contains("already has latent"));
    let odd = moxe::convert::latent::convert(&src, &out_dir("odd"), RankChoice::Rank(4), 3, false);
    assert!(odd.unwrap_err().to_string().contains("must divide"));
    // Writing over the input model (here a copy of the fixture) is refused, leaving it intact.
    let copy = out_dir("in_place");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), copy.join(f)).unwrap();
    }
    let before = std::fs::read(copy.join("model.safetensors")).unwrap();
    let in_place = moxe::convert::latent::convert(&copy, &copy, RankChoice::Rank(4), 2, true);
    assert!(in_place
        .unwrap_err()
        .to_string()
        .contains("is the input model's"));
    assert_eq!(
        std::fs::read(copy.join("model.safetensors")).unwrap(),
        before
    );
    std::fs::remove_dir_all(&copy).unwrap();
    // Converting into a directory that holds a model is refused without --force.
    let taken = moxe::convert::latent::convert(&src, &out, RankChoice::Rank(4), 2, false);
    let err = taken.unwrap_err().to_string();
    assert!(
        err.contains("already holds") && err.contains("--force"),
        "{err}"
    );
    moxe::convert::latent::convert(&src, &out, RankChoice::Rank(4), 2, true).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn conversions_carry_the_tokenizer_chat_template_and_generation_defaults() {
    // A model directory with the side files a load reads (its vocabulary is too small for
    // the bundled tokenizer; tokenizer.json is copied by the same code).
    let src = out_dir("sides-src");
    std::fs::create_dir_all(&src).unwrap();
    let fixture_dir = fixture("models/moxe_xlstm_e4_k2_standard");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir.join(f), src.join(f)).unwrap();
    }
    let sides = [
        ("tokenizer_config.json", r#"{"add_bos_token": false}"#),
        ("generation_config.json", r#"{"temperature": 0.5}"#),
        ("special_tokens_map.json", r#"{}"#),
        (
            "chat_template.jinja",
            "{% for m in messages %}{{ m.content }}{% endfor %}",
        ),
    ];
    for (f, text) in sides {
        std::fs::write(src.join(f), text).unwrap();
    }
    let latent = out_dir("sides-latent");
    convert(&src, &latent, RankChoice::Rank(8), 2, false).unwrap();
    let quantised = out_dir("sides-q8");
    moxe::convert::quantize::quantize(&src, &quantised, moxe::quant::QuantFormat::Q8, false, None)
        .unwrap();
    for out in [&latent, &quantised] {
        for f in moxe::checkpoint::dir::SIDE_FILES {
            assert_eq!(
                std::fs::read(out.join(f)).ok(),
                std::fs::read(src.join(f)).ok(),
                "{} {f}",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).unwrap();
    }
    std::fs::remove_dir_all(&src).unwrap();
}
