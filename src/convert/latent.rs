//! Data-free conversion of a dense-expert MoxE checkpoint into latent experts
//! (docs/LATENT_FORMAT.md section 5): for each layer, group g (contiguous experts
//! e_1..e_s) and factored kind of that group, in float64,
//!
//! ```text
//! M   = [W_{e_1}; ...; W_{e_s}]        (s * out, D)
//! M   = U S V^T                        thin SVD (faer), s_1 >= s_2 >= ...
//! B_g = V_r^T                          (r, D)
//! A_e = W_e B_g^T                      (out, r)
//! ```
//!
//! with r = min(R, full) (`--rank R`) or the smallest r whose leading squared singular values
//! reach E of the total (`--energy E`). Every other tensor is copied unchanged (bytes and
//! dtype); A and B take the dtype of the matrix they replace.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use faer::Mat;
use safetensors::tensor::{Dtype, TensorView};

use crate::arch::moxe::config::ExpertType;
use crate::arch::moxe::latent::shared_key;
use crate::arch::moxe::manifest::{expert_kind, Kind};
use crate::arch::{Architecture, ModelConfig};
use crate::checkpoint::{ModelDir, ParameterCounts};
use crate::error::{Error, Result};

/// How the rank of each (layer, group, kind) is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankChoice {
    /// r = min(R, full rank).
    Rank(usize),
    /// The smallest r with sum_{j<=r} s_j^2 >= E * sum_j s_j^2 (0 < E <= 1).
    Energy(f64),
}

impl RankChoice {
    /// The rank for singular values `s` (descending).
    pub fn rank(self, s: &[f64]) -> usize {
        let full = s.len();
        match self {
            RankChoice::Rank(r) => r.clamp(1, full.max(1)),
            RankChoice::Energy(e) => {
                let total: f64 = s.iter().map(|v| v * v).sum();
                if total == 0.0 {
                    return 1;
                }
                let mut cum = 0.0;
                let below = s
                    .iter()
                    .take_while(|v| {
                        cum += *v * *v;
                        cum / total < e
                    })
                    .count();
                (below + 1).clamp(1, full.max(1))
            }
        }
    }

    fn check(self) -> Result<()> {
        match self {
            RankChoice::Rank(0) => Err(Error::InvalidArgument("--rank must be at least 1".into())),
            RankChoice::Energy(e) if !(e > 0.0 && e <= 1.0) => Err(Error::InvalidArgument(
                format!("--energy must be in (0, 1], got {e}"),
            )),
            _ => Ok(()),
        }
    }
}

/// The result for one (layer, group, kind).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotReport {
    pub layer: usize,
    pub group: usize,
    /// The factored matrix inside the expert: `w1`, `w3`, `xlstm.proj_up` or `ffn.proj_up`.
    pub kind: &'static str,
    /// The group's experts.
    pub experts: std::ops::Range<usize>,
    /// out and D of each W_e.
    pub out: usize,
    pub dim: usize,
    /// The chosen rank r and the full rank min(s * out, D).
    pub rank: usize,
    pub full_rank: usize,
    /// Singular values of the stacked M, descending.
    pub singular_values: Vec<f64>,
    /// sum_{j<=r} s_j^2 / sum_j s_j^2.
    pub energy: f64,
    /// ||M - [A_1; ...; A_s] B||_F / ||M||_F = sqrt(discarded s_j^2 / all s_j^2).
    pub rel_err: f64,
    /// ||W_e - A_e B||_F / ||W_e||_F per expert of the group.
    pub expert_rel_err: Vec<f64>,
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionReport {
    pub slots: Vec<SlotReport>,
    /// Parameters as stored in the engine files (a tied LM head is not stored).
    pub before: ParameterCounts,
    pub after: ParameterCounts,
    /// Files of an earlier model in the output directory removed with `overwrite`.
    pub removed: Vec<String>,
}

impl ConversionReport {
    /// The table `moxe convert latent` prints: per (layer, group, kind) the rank, the kept
    /// energy and the relative Frobenius errors; then the parameter counts.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "layer  group  kind           experts  out x D      rank/full  energy    rel_err    per-expert rel_err\n",
        );
        for x in &self.slots {
            let experts = format!("{}-{}", x.experts.start, x.experts.end - 1);
            let per: Vec<String> = x
                .expert_rel_err
                .iter()
                .map(|e| format!("{e:.3e}"))
                .collect();
            let _ = writeln!(
                s,
                "{:5}  {:5}  {:13}  {:7}  {:4} x {:<4}  {:4}/{:<4}  {:.6}  {:.3e}  {}",
                x.layer,
                x.group,
                x.kind,
                experts,
                x.out,
                x.dim,
                x.rank,
                x.full_rank,
                x.energy,
                x.rel_err,
                per.join(" ")
            );
        }
        let (b, a) = (self.before, self.after);
        let _ = writeln!(
            s,
            "expert parameters: {} -> {} ({:.3}x)",
            b.experts,
            a.experts,
            a.experts as f64 / b.experts.max(1) as f64
        );
        let _ = writeln!(
            s,
            "all parameters:    {} -> {} ({:.3}x)",
            b.total,
            a.total,
            a.total as f64 / b.total.max(1) as f64
        );
        s + &super::removed_line(&self.removed)
    }
}

/// One factored slot of the dense model: the dense tensor names of its experts.
struct Slot {
    layer: usize,
    group: usize,
    kind: &'static str,
    experts: std::ops::Range<usize>,
}

/// The factored kinds of an expert.
fn kinds(kind: Kind, has_ffn: bool) -> &'static [&'static str] {
    match kind {
        Kind::Mlp => &["w1", "w3"],
        Kind::Mlstm => &["xlstm.proj_up"],
        Kind::Slstm if has_ffn => &["ffn.proj_up"],
        Kind::Slstm => &[],
    }
}

/// Every (layer, group, kind) of `cfg` with `groups` groups, in that order.
fn slots(cfg: &ModelConfig, groups: usize) -> Result<Vec<Slot>> {
    let Architecture::Moxe(m) = &cfg.architecture else {
        return Err(Error::InvalidArgument(
            "latent conversion needs a MoxE model (model_type \"moxe\"), not a dense xLSTM".into(),
        ));
    };
    if m.latent.is_some() {
        return Err(Error::InvalidArgument(
            "the model already has latent experts".into(),
        ));
    }
    let e = m.num_experts;
    if groups == 0 || e % groups != 0 {
        return Err(Error::InvalidArgument(format!(
            "--groups ({groups}) must divide the number of experts ({e})"
        )));
    }
    if m.expert_type == ExpertType::Xlstm && groups % 2 != 0 {
        return Err(Error::InvalidArgument(format!(
            "--groups must be even for xlstm experts (a group cannot mix mLSTM and sLSTM experts), \
             got {groups}"
        )));
    }
    let has_ffn = m.xlstm.slstm.as_ref().is_some_and(|s| s.ffn.is_some());
    let size = e / groups;
    let mut out = Vec::new();
    for layer in 0..m.num_layers {
        for group in 0..groups {
            let experts = group * size..(group + 1) * size;
            for &kind in kinds(expert_kind(m.expert_type, experts.start, e), has_ffn) {
                out.push(Slot {
                    layer,
                    group,
                    kind,
                    experts: experts.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// A new tensor of the converted file.
struct Written {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn encode(values: &[f64], dtype: Dtype, shape: Vec<usize>) -> Written {
    let bytes = match dtype {
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
    };
    let dtype = match dtype {
        Dtype::F16 | Dtype::BF16 => dtype,
        _ => Dtype::F32,
    };
    Written {
        dtype,
        shape,
        bytes,
    }
}

/// Factorises one slot: returns its report and the tensors B (r, D) and A_e (out, r).
fn factorize(
    dir: &ModelDir,
    slot: &Slot,
    choice: RankChoice,
) -> Result<(SlotReport, Vec<(String, Written)>)> {
    let w = &dir.weights;
    let dense = |e: usize| format!("layers.{}.experts.{e}.{}.weight", slot.layer, slot.kind);
    let mut mats = Vec::new();
    let (mut out, mut dim, mut dtype) = (0, 0, Dtype::F32);
    for e in slot.experts.clone() {
        let name = dense(e);
        let (values, shape) = w.f32_any(&name)?;
        let [o, d] = shape[..] else {
            return Err(Error::file(
                w.path(),
                format!("tensor '{name}': expected a matrix, found shape {shape:?}"),
            ));
        };
        (out, dim, dtype) = (o, d, w.dtype(&name).unwrap_or(Dtype::F32));
        mats.push(values);
    }
    let s = slot.experts.len();
    let m = Mat::<f64>::from_fn(s * out, dim, |i, j| {
        mats[i / out][(i % out) * dim + j] as f64
    });
    let svd = m.thin_svd().map_err(|e| {
        Error::InvalidArgument(format!(
            "SVD of layer {} group {} {} did not converge: {e:?}",
            slot.layer, slot.group, slot.kind
        ))
    })?;
    let sv: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let v = svd.V();
    let full = sv.len();
    let r = choice.rank(&sv);
    // B (r, D): the top r right singular vectors as rows.
    let b: Vec<f64> = (0..r)
        .flat_map(|i| (0..dim).map(move |j| v[(j, i)]))
        .collect();
    let key = shared_key(slot.layer, slot.group, slot.kind);
    let mut tensors = vec![(format!("{key}.B"), encode(&b, dtype, vec![r, dim]))];
    let mut expert_rel_err = Vec::with_capacity(s);
    for (x, e) in slot.experts.clone().enumerate() {
        let we = &mats[x];
        // A_e = W_e B^T (out, r).
        let mut a = vec![0.0f64; out * r];
        for o in 0..out {
            let row = &we[o * dim..(o + 1) * dim];
            for i in 0..r {
                let bi = &b[i * dim..(i + 1) * dim];
                a[o * r + i] = row.iter().zip(bi).map(|(&x, &y)| x as f64 * y).sum();
            }
        }
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for o in 0..out {
            for j in 0..dim {
                let approx: f64 = (0..r).map(|i| a[o * r + i] * b[i * dim + j]).sum();
                let x = we[o * dim + j] as f64;
                diff += (x - approx) * (x - approx);
                norm += x * x;
            }
        }
        expert_rel_err.push(diff.sqrt() / norm.sqrt().max(1e-300));
        let name = format!("layers.{}.experts.{e}.{}.A", slot.layer, slot.kind);
        tensors.push((name, encode(&a, dtype, vec![out, r])));
    }
    let e2: Vec<f64> = sv.iter().map(|v| v * v).collect();
    let total: f64 = e2.iter().sum();
    let kept: f64 = e2[..r].iter().sum();
    let report = SlotReport {
        layer: slot.layer,
        group: slot.group,
        kind: slot.kind,
        experts: slot.experts.clone(),
        out,
        dim,
        rank: r,
        full_rank: full,
        energy: if total > 0.0 { kept / total } else { 1.0 },
        rel_err: if total > 0.0 {
            // abs: an empty f64 sum is -0.0, which would print as "-0.000e0".
            (e2[r..].iter().sum::<f64>() / total).sqrt().abs()
        } else {
            0.0
        },
        singular_values: sv,
        expert_rel_err,
    };
    Ok((report, tensors))
}

/// Converts the dense-expert model directory `input` into a latent one at `output`
/// (config.json with `"latent": {"groups": G}`, model.safetensors, the side files copied
/// when present), checks the result against its manifest, and returns the report. Files already
/// in `output` are an error unless `overwrite`.
pub fn convert(
    input: &Path,
    output: &Path,
    choice: RankChoice,
    groups: usize,
    overwrite: bool,
) -> Result<ConversionReport> {
    choice.check()?;
    let dir = ModelDir::open(input)?;
    let staging = super::prepare_output(input, output, overwrite)?;
    let slots = slots(&dir.config, groups)?;
    let mut reports = Vec::with_capacity(slots.len());
    let mut new: BTreeMap<String, Written> = BTreeMap::new();
    let mut replaced = std::collections::BTreeSet::new();
    for slot in &slots {
        let (report, tensors) = factorize(&dir, slot, choice)?;
        for e in slot.experts.clone() {
            replaced.insert(format!(
                "layers.{}.experts.{e}.{}.weight",
                slot.layer, slot.kind
            ));
        }
        new.extend(tensors);
        reports.push(report);
    }
    write_config(
        &dir.path.join("config.json"),
        &staging.path("config.json"),
        groups,
    )?;
    write_weights(&dir, &replaced, &new, &staging.path("model.safetensors"))?;
    super::copy_side_files(input, &staging)?;
    let after = ModelDir::open(staging.dir())?.parameters();
    let removed = staging.commit()?;
    Ok(ConversionReport {
        slots: reports,
        before: dir.parameters(),
        after,
        removed,
    })
}

/// config.json with `"latent": {"groups": G}` added, every other field kept.
fn write_config(input: &Path, output: &Path, groups: usize) -> Result<()> {
    super::write_config_with(
        input,
        output,
        "latent",
        serde_json::json!({ "groups": groups }),
    )
}

/// model.safetensors: every tensor of `dir` but the `replaced` ones, byte for byte, plus `new`.
fn write_weights(
    dir: &ModelDir,
    replaced: &std::collections::BTreeSet<String>,
    new: &BTreeMap<String, Written>,
    path: &Path,
) -> Result<()> {
    let w = &dir.weights;
    let bad = |e: safetensors::SafeTensorError| Error::file(path, format!("cannot write: {e}"));
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    for name in dir.manifest.kept(w) {
        if replaced.contains(name) {
            continue;
        }
        let (dtype, shape, bytes) = w.raw_tensor(name)?;
        views.push((
            name.to_string(),
            TensorView::new(dtype, shape.to_vec(), bytes).map_err(bad)?,
        ));
    }
    for (name, t) in new {
        views.push((
            name.clone(),
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes).map_err(bad)?,
        ));
    }
    let metadata = Some(w.metadata().clone()).filter(|m| !m.is_empty());
    safetensors::serialize_to_file(views, metadata, path).map_err(bad)
}
