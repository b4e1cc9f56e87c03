//! Random weights for any configuration (benchmarks need no checkpoint): the tensors of the
//! configuration's manifest, their values drawn on demand as they are read, so even a 7B
//! model is never held in host memory.
//!
//! Values keep activations of order one: matrices uniform with variance 1/fan_in; biases and
//! norm offsets zero, norm weights stored directly one; latent ranks a quarter of the input
//! width.

use std::collections::BTreeMap;

use safetensors::tensor::Dtype;

use super::manifest::Dim;
use super::weights::Weights;
use crate::arch::ModelConfig;

/// Random weights for `config`, matrices stored as `matrix_dtype` (F32, F16 or BF16).
pub fn random_weights(config: &ModelConfig, seed: u64, matrix_dtype: Dtype) -> Weights {
    let rank = (config.embedding_dim / 4).max(1);
    let tensors = config
        .manifest()
        .tensors
        .into_iter()
        .map(|t| {
            let shape: Vec<usize> = t
                .shape
                .iter()
                .map(|dim| match dim {
                    Dim::Fixed(n) => *n,
                    Dim::Rank(_) => rank,
                })
                .collect();
            let dtype = if t.matrix { matrix_dtype } else { Dtype::F32 };
            (t.name, shape, dtype, t.init)
        })
        .collect();
    Weights::random(seed, tensors)
}

/// The latent ranks [`random_weights`] uses, by shared-projection key.
pub fn random_ranks(config: &ModelConfig) -> BTreeMap<String, usize> {
    let rank = (config.embedding_dim / 4).max(1);
    config
        .manifest()
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
            for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                let w = random_weights(&config, 1, dtype);
                let ranks = config.manifest().check(&w).unwrap();
                assert_eq!(ranks, random_ranks(&config), "{name}");
                assert_eq!(w.dtype("token_embedding.weight"), Some(dtype));
            }
        }
    }
}
