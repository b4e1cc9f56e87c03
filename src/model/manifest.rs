//! The tensors a configuration implies — name and shape of each — and the check of a
//! checkpoint against them, run before anything reaches the GPU.
//!
//! A missing tensor, a wrong shape, a non-float dtype, a non-finite value, or a tensor the
//! configuration has no place for (e.g. a layer past `num_layers`) is an error naming the
//! file and the tensor. Latent-expert ranks are read from the shapes and must agree within a
//! group.

use std::collections::{BTreeMap, BTreeSet};

use super::config::{Architecture, ExpertType, MlstmConfig, ModelConfig, SlstmConfig, SlstmLayout};
use super::latent;
use super::weights::Weights;
use crate::error::{Error, Result};

/// One dimension of an expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A latent rank: any size >= 1, the same for every tensor naming this key.
    Rank(String),
}

/// One expected tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    pub shape: Vec<Dim>,
}

/// Every tensor of a model, and the ones allowed but unused.
#[derive(Debug, Default)]
pub struct Manifest {
    pub tensors: Vec<Expected>,
    /// Present or not, these are ignored (e.g. `lm_head.weight` of a tied model).
    pub ignored: BTreeSet<String>,
}

impl Manifest {
    fn add(&mut self, name: String, shape: &[usize]) {
        self.tensors.push(Expected {
            name,
            shape: shape.iter().map(|&d| Dim::Fixed(d)).collect(),
        });
    }

    fn add_dims(&mut self, name: String, shape: Vec<Dim>) {
        self.tensors.push(Expected { name, shape });
    }

    /// The manifest of `cfg`.
    pub fn of(cfg: &ModelConfig) -> Self {
        let x = &cfg.xlstm;
        let (d, v) = (x.embedding_dim, x.vocab_size);
        let mut m = Manifest::default();
        m.add("token_embedding.weight".into(), &[v, d]);
        if cfg.tie_weights {
            m.ignored.insert("lm_head.weight".into());
        } else {
            m.add("lm_head.weight".into(), &[v, d]);
        }
        match &cfg.architecture {
            Architecture::Dense(dense) => {
                for i in 0..dense.num_blocks {
                    let p = format!("xlstm_block_stack.blocks.{i}.");
                    if dense.slstm_at.contains(&i) {
                        m.slstm(&p, x.slstm.as_ref().expect("validated by config"));
                    } else {
                        m.mlstm(&p, x.mlstm.as_ref().expect("validated by config"));
                    }
                }
                if x.add_post_blocks_norm {
                    m.add("xlstm_block_stack.post_blocks_norm.weight".into(), &[d]);
                }
            }
            Architecture::Moxe(moxe) => {
                let ml = x.mlstm.as_ref().expect("validated by config");
                let sl = x.slstm.as_ref().expect("validated by config");
                for l in 0..moxe.num_layers {
                    let p = format!("layers.{l}.");
                    m.slstm(&format!("{p}mixer.blocks.0."), sl);
                    m.mlstm(&format!("{p}mixer.blocks.1."), ml);
                    if x.add_post_blocks_norm {
                        m.add(format!("{p}mixer.post_blocks_norm.weight"), &[d]);
                    }
                    let e = moxe.num_experts;
                    m.add(format!("{p}gate.router.weight"), &[e, d]);
                    if moxe.gate_bias {
                        m.add(format!("{p}gate.router.bias"), &[e]);
                    }
                    if moxe.router == super::config::RouterType::ConditionedAddition {
                        m.add(format!("{p}gate.entropy_predictor.weight"), &[1, d]);
                        m.add(format!("{p}gate.entropy_predictor.bias"), &[1]);
                    }
                    let groups = moxe.latent.map(|lat| lat.groups);
                    for i in 0..e {
                        let ep = format!("{p}experts.{i}.");
                        let latent =
                            groups.map(|g| latent::shared_key(l, latent::group_of(i, e, g), ""));
                        match expert_kind(moxe.expert_type, i, e) {
                            Kind::Mlp => m.mlp(&ep, d, latent.as_ref()),
                            Kind::Mlstm => m.mlstm_expert(&ep, ml, latent.as_ref()),
                            Kind::Slstm => m.slstm_expert(&ep, sl, latent.as_ref()),
                        }
                    }
                    if groups.is_some() {
                        m.latent_bases(&p, d);
                    }
                }
                if moxe.post_layers_norm {
                    m.add("norm.weight".into(), &[d]);
                }
            }
        }
        m
    }

    fn slstm(&mut self, p: &str, c: &SlstmConfig) {
        self.slstm_common(p, c);
        if let Some(ffn) = &c.ffn {
            self.add(
                format!("{p}ffn.proj_up.weight"),
                &[2 * ffn.hidden(c.embedding_dim), c.embedding_dim],
            );
        }
    }

    fn slstm_common(&mut self, p: &str, c: &SlstmConfig) {
        let (d, nh, dh) = (c.embedding_dim, c.num_heads, c.head_dim());
        self.add(format!("{p}xlstm_norm.weight"), &[d]);
        if c.conv_kernel > 0 {
            self.add(
                format!("{p}xlstm.conv1d.conv.weight"),
                &[d, 1, c.conv_kernel],
            );
            self.add(format!("{p}xlstm.conv1d.conv.bias"), &[d]);
        }
        for g in ["f", "i", "z", "o"] {
            self.add(format!("{p}xlstm.{g}gate.weight"), &[nh, dh, dh]);
        }
        let r = match c.layout {
            SlstmLayout::Vanilla => [nh, 4 * dh, dh],
            SlstmLayout::Cuda => [nh, dh, 4 * dh],
        };
        self.add(format!("{p}xlstm.slstm_cell._recurrent_kernel_"), &r);
        self.add(format!("{p}xlstm.slstm_cell._bias_"), &[4 * d]);
        self.add(format!("{p}xlstm.group_norm.weight"), &[d]);
        if let Some(ffn) = &c.ffn {
            self.add(format!("{p}ffn_norm.weight"), &[d]);
            self.add(format!("{p}ffn.proj_down.weight"), &[d, ffn.hidden(d)]);
        }
    }

    fn mlstm(&mut self, p: &str, c: &MlstmConfig) {
        self.mlstm_common(p, c);
        self.add(
            format!("{p}xlstm.proj_up.weight"),
            &[2 * c.inner_dim(), c.embedding_dim],
        );
    }

    fn mlstm_common(&mut self, p: &str, c: &MlstmConfig) {
        let (d, di, nh, bs) = (c.embedding_dim, c.inner_dim(), c.num_heads, c.qkv_blocksize);
        self.add(format!("{p}xlstm_norm.weight"), &[d]);
        if c.bias {
            self.add(format!("{p}xlstm.proj_up.bias"), &[2 * di]);
        }
        self.add(
            format!("{p}xlstm.conv1d.conv.weight"),
            &[di, 1, c.conv_kernel],
        );
        self.add(format!("{p}xlstm.conv1d.conv.bias"), &[di]);
        for q in ["q", "k", "v"] {
            self.add(format!("{p}xlstm.{q}_proj.weight"), &[di / bs, bs, bs]);
            if c.bias {
                self.add(format!("{p}xlstm.{q}_proj.bias"), &[di]);
            }
        }
        for g in ["igate", "fgate"] {
            self.add(format!("{p}xlstm.mlstm_cell.{g}.weight"), &[nh, 3 * di]);
            self.add(format!("{p}xlstm.mlstm_cell.{g}.bias"), &[nh]);
        }
        self.add(format!("{p}xlstm.mlstm_cell.outnorm.weight"), &[di]);
        self.add(format!("{p}xlstm.learnable_skip"), &[di]);
        self.add(format!("{p}xlstm.proj_down.weight"), &[d, di]);
        if c.bias {
            self.add(format!("{p}xlstm.proj_down.bias"), &[d]);
        }
    }

    /// A factored matrix `kind` of expert prefix `ep` with `out` rows: dense `.weight`, or
    /// the latent `.A` (out, r_g).
    fn factored(&mut self, ep: &str, kind: &str, out: usize, d: usize, latent: Option<&String>) {
        match latent {
            None => self.add(format!("{ep}{kind}.weight"), &[out, d]),
            Some(lp) => self.add_dims(
                format!("{ep}{kind}.A"),
                vec![Dim::Fixed(out), Dim::Rank(format!("{lp}{kind}"))],
            ),
        }
    }

    fn mlp(&mut self, ep: &str, d: usize, latent: Option<&String>) {
        self.factored(ep, "w1", 2 * d, d, latent);
        self.factored(ep, "w3", 2 * d, d, latent);
        self.add(format!("{ep}w2.weight"), &[d, 2 * d]);
    }

    fn mlstm_expert(&mut self, ep: &str, c: &MlstmConfig, latent: Option<&String>) {
        self.mlstm_common(ep, c);
        self.factored(
            ep,
            "xlstm.proj_up",
            2 * c.inner_dim(),
            c.embedding_dim,
            latent,
        );
    }

    fn slstm_expert(&mut self, ep: &str, c: &SlstmConfig, latent: Option<&String>) {
        self.slstm_common(ep, c);
        if let Some(ffn) = &c.ffn {
            let out = 2 * ffn.hidden(c.embedding_dim);
            self.factored(ep, "ffn.proj_up", out, c.embedding_dim, latent);
        }
    }

    /// The shared B (r, D) of every (group, factored kind) of a latent layer.
    fn latent_bases(&mut self, p: &str, d: usize) {
        let kinds: Vec<String> = self
            .tensors
            .iter()
            .filter_map(|t| match t.shape.last() {
                Some(Dim::Rank(key)) if key.starts_with(&format!("{p}experts.latent.")) => {
                    Some(key.clone())
                }
                _ => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for key in kinds {
            self.add_dims(
                format!("{key}.B"),
                vec![Dim::Rank(key.clone()), Dim::Fixed(d)],
            );
        }
    }

    /// Checks every expected tensor in `w` (presence, shape, float dtype, finite values) and
    /// that `w` holds nothing unexpected. Returns the latent ranks by key.
    pub fn check(&self, w: &Weights) -> Result<BTreeMap<String, usize>> {
        let mut ranks: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut expected = BTreeSet::new();
        for t in &self.tensors {
            expected.insert(t.name.as_str());
            let Some(found) = w.shape(&t.name) else {
                return Err(Error::file(
                    w.path(),
                    format!("missing tensor '{}'", t.name),
                ));
            };
            let shape_text = || {
                let dims: Vec<String> = t
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => n.to_string(),
                        Dim::Rank(_) => "r".into(),
                    })
                    .collect();
                format!("[{}]", dims.join(", "))
            };
            let matches = found.len() == t.shape.len()
                && t.shape.iter().zip(found).all(|(d, &f)| match d {
                    Dim::Fixed(n) => *n == f,
                    Dim::Rank(_) => f >= 1,
                });
            if !matches {
                return Err(Error::file(
                    w.path(),
                    format!(
                        "tensor '{}': expected shape {}, found {found:?}",
                        t.name,
                        shape_text()
                    ),
                ));
            }
            for (d, &f) in t.shape.iter().zip(found) {
                if let Dim::Rank(key) = d {
                    match ranks.get(key) {
                        Some((r, first)) if *r != f => {
                            return Err(Error::file(
                                w.path(),
                                format!(
                                    "tensor '{}': latent rank {f} disagrees with rank {r} of '{first}' \
                                     (one shared projection per group)",
                                    t.name
                                ),
                            ))
                        }
                        Some(_) => {}
                        None => {
                            ranks.insert(key.clone(), (f, t.name.clone()));
                        }
                    }
                }
            }
            // Dtype and finiteness.
            w.f32_any(&t.name)?;
        }
        for name in w.names() {
            if !expected.contains(name) && !self.ignored.contains(name) {
                return Err(Error::file(
                    w.path(),
                    format!(
                        "unexpected tensor '{name}': config.json describes no such parameter \
                         (wrong config for this checkpoint?)"
                    ),
                ));
            }
        }
        Ok(ranks.into_iter().map(|(k, (r, _))| (k, r)).collect())
    }
}

/// What expert `i` of `e` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mlstm,
    Slstm,
    Mlp,
}

/// The block type of expert `i` among `e` experts of type `et`.
pub fn expert_kind(et: ExpertType, i: usize, e: usize) -> Kind {
    match et {
        ExpertType::Mlp => Kind::Mlp,
        ExpertType::Mlstm => Kind::Mlstm,
        ExpertType::Slstm => Kind::Slstm,
        ExpertType::Xlstm if i < e / 2 => Kind::Mlstm,
        ExpertType::Xlstm => Kind::Slstm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture_dir(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
    }

    #[test]
    fn every_fixture_checkpoint_matches_its_manifest() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let dir = entry.unwrap().path();
            let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
            let w = Weights::open(&dir.join("model.safetensors")).unwrap();
            let m = Manifest::of(&cfg);
            let ranks = m
                .check(&w)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            assert_eq!(
                ranks.is_empty(),
                cfg.moxe().and_then(|c| c.latent).is_none(),
                "{}",
                dir.display()
            );
            n += 1;
        }
        assert!(n >= 6, "found {n} fixture models");
    }

    #[test]
    fn mismatches_are_reported_by_name() {
        let dir = fixture_dir("moxe_mlp_e8_k1_proportional_tied");
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let w = Weights::open(&dir.join("model.safetensors")).unwrap();
        // One layer fewer in the config: layer 1's tensors are unexpected.
        let mut fewer = cfg.clone();
        if let Architecture::Moxe(m) = &mut fewer.architecture {
            m.num_layers = 1;
        }
        let err = Manifest::of(&fewer).check(&w).unwrap_err().to_string();
        assert!(err.contains("unexpected tensor 'layers.1."), "{err}");
        // One layer more: layer 2 is missing.
        let mut more = cfg.clone();
        if let Architecture::Moxe(m) = &mut more.architecture {
            m.num_layers = 3;
        }
        let err = Manifest::of(&more).check(&w).unwrap_err().to_string();
        assert!(err.contains("missing tensor 'layers.2."), "{err}");
        // A different width: shapes disagree.
        let mut wide = cfg.clone();
        wide.xlstm.vocab_size = 65;
        let err = Manifest::of(&wide).check(&w).unwrap_err().to_string();
        assert!(
            err.contains("token_embedding.weight") && err.contains("expected shape [65, 26]"),
            "{err}"
        );
    }
}
