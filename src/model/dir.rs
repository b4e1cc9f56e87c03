//! A model directory: `config.json`, `model.safetensors`, optional `tokenizer.json`
//! (MODEL.md section 7), read and validated without touching the GPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::ModelConfig;
use super::manifest::Manifest;
use super::weights::Weights;
use crate::error::{Error, Result};

/// A validated model directory, held in host memory.
pub struct ModelDir {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weights: Weights,
    pub manifest: Manifest,
    /// Latent ranks by shared-projection key (empty for dense experts).
    pub ranks: BTreeMap<String, usize>,
    /// `tokenizer.json`, when the directory has one.
    pub tokenizer: Option<PathBuf>,
}

impl ModelDir {
    /// Reads `config.json` and `model.safetensors` of `path` and checks every tensor against
    /// the configuration.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::file(path, "model directory does not exist"));
        }
        if !path.is_dir() {
            return Err(Error::file(
                path,
                "not a directory: a model is a directory with config.json, model.safetensors \
                 and tokenizer.json",
            ));
        }
        let config = ModelConfig::from_file(&path.join("config.json"))?;
        let weights = Weights::open(&path.join("model.safetensors"))?;
        let manifest = Manifest::of(&config);
        let ranks = manifest.check(&weights)?;
        let tokenizer = Some(path.join("tokenizer.json")).filter(|p| p.exists());
        Ok(ModelDir {
            path: path.to_path_buf(),
            config,
            weights,
            manifest,
            ranks,
            tokenizer,
        })
    }

    /// Parameter counts.
    pub fn parameters(&self) -> ParameterCounts {
        ParameterCounts::of(&self.manifest, &self.ranks)
    }
}

/// Parameter counts of a model.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCounts {
    pub total: usize,
    /// In expert tensors (including shared latent projections).
    pub experts: usize,
    /// In tensors of rank >= 2 (stored as f16 in an f16 model; vectors stay f32).
    pub in_matrices: usize,
}

impl ParameterCounts {
    /// Counts of the tensors of `manifest` with latent `ranks` resolved.
    pub fn of(manifest: &Manifest, ranks: &BTreeMap<String, usize>) -> Self {
        let mut counts = ParameterCounts::default();
        for t in &manifest.tensors {
            let n: usize = t
                .shape
                .iter()
                .map(|d| match d {
                    super::manifest::Dim::Fixed(n) => *n,
                    super::manifest::Dim::Rank(k) => ranks.get(k).copied().unwrap_or(0),
                })
                .product();
            counts.total += n;
            if t.name.contains(".experts.") {
                counts.experts += n;
            }
            if t.shape.len() >= 2 {
                counts.in_matrices += n;
            }
        }
        counts
    }

    /// Parameters a token uses: everything outside the experts plus `k / E` of the experts
    /// (the mean over experts; every token runs k of E).
    pub fn active(&self, k: usize, e: usize) -> usize {
        self.total - self.experts + self.experts * k / e.max(1)
    }

    /// Weight bytes when matrices are stored in `matrix_bytes` bytes per element.
    pub fn bytes(&self, matrix_bytes: usize) -> usize {
        self.in_matrices * matrix_bytes + (self.total - self.in_matrices) * 4
    }
}

/// The bundled default model: `models/default` of the working directory, else of the
/// source tree the binary was built from.
pub fn default_model_dir() -> PathBuf {
    let local = PathBuf::from("models/default");
    if local.join("config.json").exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_directories_are_reported() {
        let err = ModelDir::open(Path::new("/no/such/model"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("/no/such/model") && err.contains("does not exist"),
            "{err}"
        );
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = ModelDir::open(&file).err().unwrap().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let empty = std::env::temp_dir().join(format!("moxe-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = ModelDir::open(&empty).err().unwrap().to_string();
        assert!(
            err.contains("config.json") && err.contains("file not found"),
            "{err}"
        );
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn counts_parameters_of_a_fixture() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/moxe_mlp_e8_k1_proportional_tied");
        let m = ModelDir::open(&dir).unwrap();
        let c = m.parameters();
        // 8 SwiGLU experts of 3 * 2 * 26 * 26 per layer, 2 layers.
        assert_eq!(c.experts, 2 * 8 * 3 * 2 * 26 * 26);
        assert_eq!(
            c.total,
            m.weights
                .names()
                .iter()
                .map(|n| m.weights.shape(n).unwrap().iter().product::<usize>())
                .sum::<usize>()
        );
        assert_eq!(c.active(1, 8), c.total - c.experts + c.experts / 8);
    }
}
