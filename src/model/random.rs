//! Random weights for any configuration (benchmarks need no checkpoint): an in-memory
//! safetensors file built from the configuration's manifest, written straight into one
//! buffer so even a large model is held once.
//!
//! Values keep activations of order one: matrices uniform with variance 1/fan_in, norm
//! offsets and biases zero, latent ranks a quarter of the input width.

use std::collections::BTreeMap;
use std::path::PathBuf;

use half::f16;

use super::config::ModelConfig;
use super::manifest::{Dim, Manifest};
use super::weights::Weights;
use crate::error::Result;
use crate::testing::Rng;

/// Random weights for `config` (matrices stored as f16 when `half`, else f32).
pub fn random_weights(config: &ModelConfig, seed: u64, half: bool) -> Result<Weights> {
    let manifest = Manifest::of(config);
    let d = config.xlstm.embedding_dim;
    let rank = (d / 4).max(1);
    let mut entries = Vec::new();
    let mut offset = 0usize;
    for t in &manifest.tensors {
        let shape: Vec<usize> = t
            .shape
            .iter()
            .map(|dim| match dim {
                Dim::Fixed(n) => *n,
                Dim::Rank(_) => rank,
            })
            .collect();
        let matrix = shape.len() >= 2;
        let elem = if matrix && half { 2 } else { 4 };
        let bytes = shape.iter().product::<usize>() * elem;
        entries.push((t.name.clone(), shape, matrix, elem, offset));
        offset += bytes;
    }
    let mut header = String::from("{");
    for (i, (name, shape, _, elem, start)) in entries.iter().enumerate() {
        let bytes = shape.iter().product::<usize>() * elem;
        let dtype = if *elem == 2 { "F16" } else { "F32" };
        if i > 0 {
            header.push(',');
        }
        header += &format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{}]}}",
            start + bytes
        );
    }
    header.push('}');
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let data_start = 8 + header.len();
    let mut file = vec![0u8; data_start + offset];
    file[..8].copy_from_slice(&(header.len() as u64).to_le_bytes());
    file[8..data_start].copy_from_slice(header.as_bytes());
    let mut rng = Rng::new(seed);
    for (_, shape, matrix, elem, start) in &entries {
        if !matrix {
            continue; // norm offsets and biases stay zero
        }
        let fan_in = *shape.last().expect("matrices have dims");
        let a = (3.0 / fan_in as f32).sqrt();
        let n: usize = shape.iter().product();
        let out = &mut file[data_start + start..data_start + start + n * elem];
        for chunk in out.chunks_exact_mut(*elem) {
            let v = (2.0 * rng.uniform() - 1.0) * a;
            if *elem == 2 {
                chunk.copy_from_slice(&f16::from_f32(v).to_le_bytes());
            } else {
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    Weights::from_bytes(PathBuf::from("<random weights>"), file)
}

/// The latent ranks [`random_weights`] uses, by shared-projection key.
pub fn random_ranks(config: &ModelConfig) -> BTreeMap<String, usize> {
    let rank = (config.xlstm.embedding_dim / 4).max(1);
    Manifest::of(config)
        .tensors
        .iter()
        .flat_map(|t| t.shape.iter())
        .filter_map(|d| match d {
            Dim::Rank(k) => Some((k.clone(), rank)),
            Dim::Fixed(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn random_weights_pass_the_manifest_check() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        for name in [
            "moxe_xlstm_e8_k2_masked_cuda",
            "dense_xlstm",
            "latent_mlp_e4_k2",
        ] {
            let config = ModelConfig::from_file(&dir.join(name).join("config.json")).unwrap();
            for half in [false, true] {
                let w = random_weights(&config, 1, half).unwrap();
                let ranks = Manifest::of(&config).check(&w).unwrap();
                assert_eq!(ranks, random_ranks(&config), "{name}");
                assert_eq!(w.is_half("token_embedding.weight"), half);
            }
        }
    }
}
