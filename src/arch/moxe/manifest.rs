//! The tensors of a MoxE model (MODEL.md section 7): per layer the mixer's sLSTM and mLSTM
//! blocks, the router, the experts (dense or latent) and a latent layer's shared bases.

use std::collections::BTreeSet;

use super::config::{ExpertType, MoxeConfig, RouterType};
use super::latent;
use crate::arch::xlstm::dense::embedding_and_head;
use crate::arch::xlstm::manifest as blocks;
use crate::arch::ModelConfig;
use crate::checkpoint::{Dim, Manifest};

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

/// The manifest of a MoxE model.
pub(crate) fn manifest(cfg: &ModelConfig, moxe: &MoxeConfig) -> Manifest {
    let d = cfg.embedding_dim;
    let mut m = Manifest::default();
    embedding_and_head(&mut m, cfg);
    let x = &moxe.xlstm;
    let ml = x.mlstm.as_ref().expect("validated by config");
    let sl = x.slstm.as_ref().expect("validated by config");
    for l in 0..moxe.num_layers {
        let p = format!("layers.{l}.");
        blocks::slstm(&mut m, &format!("{p}mixer.blocks.0."), sl);
        blocks::mlstm(&mut m, &format!("{p}mixer.blocks.1."), ml);
        if x.add_post_blocks_norm {
            m.add(format!("{p}mixer.post_blocks_norm.weight"), &[d]);
        }
        let e = moxe.num_experts;
        m.add(format!("{p}gate.router.weight"), &[e, d]);
        if moxe.gate_bias {
            m.add(format!("{p}gate.router.bias"), &[e]);
        }
        if moxe.router == RouterType::ConditionedAddition {
            m.add(format!("{p}gate.entropy_predictor.weight"), &[1, d]);
            m.add(format!("{p}gate.entropy_predictor.bias"), &[1]);
        }
        let groups = moxe.latent.map(|lat| lat.groups);
        for i in 0..e {
            let ep = format!("{p}experts.{i}.");
            let latent = groups.map(|g| latent::shared_key(l, latent::group_of(i, e, g), ""));
            match expert_kind(moxe.expert_type, i, e) {
                Kind::Mlp => mlp(&mut m, &ep, d, latent.as_ref()),
                Kind::Mlstm => blocks::mlstm_expert(&mut m, &ep, ml, latent.as_ref()),
                Kind::Slstm => blocks::slstm_expert(&mut m, &ep, sl, latent.as_ref()),
            }
        }
        if groups.is_some() {
            latent_bases(&mut m, &p, d);
        }
    }
    if moxe.post_layers_norm {
        m.add("norm.weight".into(), &[d]);
    }
    m
}

/// A SwiGLU expert: w1 and w3 (2D, D) dense or factored, w2 (D, 2D).
fn mlp(m: &mut Manifest, ep: &str, d: usize, latent: Option<&String>) {
    blocks::factored(m, ep, "w1", 2 * d, d, latent);
    blocks::factored(m, ep, "w3", 2 * d, d, latent);
    m.add_matrix(format!("{ep}w2.weight"), &[d, 2 * d]);
}

/// The shared B (r, D) of every (group, factored kind) of latent layer `p`.
fn latent_bases(m: &mut Manifest, p: &str, d: usize) {
    let kinds: BTreeSet<String> = m
        .tensors
        .iter()
        .filter_map(|t| match t.shape.last() {
            Some(Dim::Rank(key)) if key.starts_with(&format!("{p}experts.latent.")) => {
                Some(key.clone())
            }
            _ => None,
        })
        .collect();
    for key in kinds {
        m.add_matrix_dims(
            format!("{key}.B"),
            vec![Dim::Rank(key.clone()), Dim::Fixed(d)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Architecture;
    use crate::checkpoint::Weights;
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
            let m = cfg.manifest();
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
        let err = fewer.manifest().check(&w).unwrap_err().to_string();
        assert!(err.contains("unexpected tensor 'layers.1."), "{err}");
        // One layer more: layer 2 is missing.
        let mut more = cfg.clone();
        if let Architecture::Moxe(m) = &mut more.architecture {
            m.num_layers = 3;
        }
        let err = more.manifest().check(&w).unwrap_err().to_string();
        assert!(err.contains("missing tensor 'layers.2."), "{err}");
        // A different width: shapes disagree.
        let mut wide = cfg.clone();
        wide.vocab_size = 65;
        let err = wide.manifest().check(&w).unwrap_err().to_string();
        assert!(
            err.contains("token_embedding.weight") && err.contains("expected shape [65, 26]"),
            "{err}"
        );
    }
}
