//! A model directory, read and validated without touching the GPU: `config.json`, the
//! weights (`model.safetensors`; else the shards of a Hugging Face snapshot named by
//! `model.safetensors.index.json`; else the xlstm_large package's `model_0.safetensors`,
//! `model_1.safetensors`, ..), and optionally `tokenizer.json`, `tokenizer_config.json`
//! and `generation_config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::generation::GenerationDefaults;
use super::manifest::{Dim, Manifest};
use super::weights::Weights;
use crate::arch::ModelConfig;
use crate::error::{Error, Result};

/// A validated model directory (its weights memory-mapped).
pub struct ModelDir {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weights: Weights,
    pub manifest: Manifest,
    /// Latent ranks by shared-projection key (empty for dense experts).
    pub ranks: BTreeMap<String, usize>,
    /// `tokenizer.json`, when the directory has one.
    pub tokenizer: Option<PathBuf>,
    /// Special tokens and sampling defaults of the tokenizer and generation config files.
    pub generation: GenerationDefaults,
}

impl ModelDir {
    /// Reads `config.json` and the weights of `path` and checks every tensor against the
    /// configuration.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::file(path, "model directory does not exist"));
        }
        if !path.is_dir() {
            return Err(Error::file(
                path,
                "not a directory: a model is a directory with config.json, model.safetensors \
                 (or a sharded checkpoint with model.safetensors.index.json) and tokenizer.json",
            ));
        }
        let mut config = ModelConfig::from_file(&path.join("config.json"))?;
        let weights = open_weights(path)?;
        super::quantized::check_config(&path.join("config.json"), &weights)?;
        config.adapt_to(&weights);
        let manifest = config.manifest();
        let ranks = manifest.check(&weights)?;
        let tokenizer = Some(path.join("tokenizer.json")).filter(|p| super::files::present(p));
        let generation = GenerationDefaults::read(path)?;
        generation.check_ids(path, config.vocab_size)?;
        Ok(ModelDir {
            path: path.to_path_buf(),
            config,
            weights,
            manifest,
            ranks,
            tokenizer,
            generation,
        })
    }

    /// Parameter counts.
    pub fn parameters(&self) -> ParameterCounts {
        ParameterCounts::of(&self.manifest, &self.ranks)
    }
}

/// The files of a model directory read beside config.json and the weights, when present:
/// the tokenizer, its special tokens and chat template, and the generation defaults.
pub const SIDE_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Whether `name` is a file a load of the model directory `dir` reads: config.json, a side
/// file, or weights (model.safetensors, the index and the shards it names, model_N).
pub fn is_model_file(dir: &Path, name: &str) -> bool {
    let numbered = name
        .strip_prefix("model_")
        .and_then(|n| n.strip_suffix(".safetensors"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let fixed = [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ];
    if numbered || fixed.contains(&name) || SIDE_FILES.contains(&name) {
        return true;
    }
    // A shard the index names (an unreadable index names none).
    super::weights::read_index(&dir.join("model.safetensors.index.json"))
        .is_ok_and(|entries| entries.iter().any(|(_, shard)| shard == name))
}

/// The weights of model directory `dir`, in whichever layout it has; where it has two, as
/// transformers picks: `model.safetensors` before a sharded checkpoint.
pub fn open_weights(dir: &Path) -> Result<Weights> {
    let single = dir.join("model.safetensors");
    if super::files::present(&single) {
        return Weights::open(&single);
    }
    let index = dir.join("model.safetensors.index.json");
    if super::files::present(&index) {
        return Weights::open_index(&index);
    }
    let numbered: Vec<PathBuf> = (0..)
        .map(|n| dir.join(format!("model_{n}.safetensors")))
        .take_while(|p| super::files::present(p))
        .collect();
    if !numbered.is_empty() {
        // A gap is a missing file, not the end of the list.
        let next = numbered.len();
        if let Some(later) = (next + 1..next + 1024)
            .map(|n| dir.join(format!("model_{n}.safetensors")))
            .find(|p| super::files::present(p))
        {
            return Err(Error::file(
                dir,
                format!(
                    "has {} but not model_{next}.safetensors: the files model_0, model_1, .. \
                     must have no gap (an incomplete copy?)",
                    later.file_name().unwrap_or_default().to_string_lossy()
                ),
            ));
        }
        return Weights::open_files(&numbered);
    }
    let expected = "no weights: expected model.safetensors, a sharded checkpoint \
         (model.safetensors.index.json and the model-*.safetensors shards it names), or \
         model_0.safetensors, model_1.safetensors, ..";
    // PyTorch pickles are not read (loading one runs code): say how to convert them.
    let pickled = [
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "model.pt",
        "model.pth",
    ]
    .into_iter()
    .find(|f| super::files::present(&dir.join(f)));
    Err(Error::file(
        dir,
        match pickled {
            Some(f) => format!(
                "{expected}; found {f}, a PyTorch pickle, which moxe does not read: save \
                 the model as safetensors first (transformers: from_pretrained then \
                 save_pretrained; a state dict: safetensors.torch.save_model)"
            ),
            None => expected.to_string(),
        },
    ))
}

/// Parameter counts of a model.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCounts {
    pub total: usize,
    /// In expert tensors (including shared latent projections).
    pub experts: usize,
    /// In weight matrices (stored in the load dtype; everything else keeps its own).
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
                    Dim::Fixed(n) => *n,
                    Dim::Rank(k) => ranks.get(k).copied().unwrap_or(0),
                })
                .product();
            counts.total += n;
            if t.name.contains(".experts.") {
                counts.experts += n;
            }
            if t.matrix {
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

    /// Weight bytes when matrices are stored in `matrix_bits` bits per element (vectors
    /// in f32).
    pub fn bytes(&self, matrix_bits: usize) -> usize {
        self.in_matrices * matrix_bits / 8 + (self.total - self.in_matrices) * 4
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
    fn layouts_are_picked_as_transformers_picks_them_and_broken_ones_are_named() {
        let weights =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/model.safetensors");
        let dir = std::env::temp_dir().join(format!("moxe-layouts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let error = |dir: &Path| open_weights(dir).err().unwrap().to_string();
        // model.safetensors wins over an index beside it (even one naming missing shards).
        std::fs::copy(&weights, dir.join("model.safetensors")).unwrap();
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        assert!(open_weights(&dir)
            .unwrap()
            .contains("token_embedding.weight"));
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        assert!(error(&dir).contains("model-00001-of-00002.safetensors"));
        std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
        // The package's numbered files: a gap is named.
        std::fs::copy(&weights, dir.join("model_0.safetensors")).unwrap();
        std::fs::copy(&weights, dir.join("model_2.safetensors")).unwrap();
        let err = error(&dir);
        assert!(
            err.contains("model_2.safetensors but not model_1.safetensors"),
            "{err}"
        );
        // A link to nothing is a broken file, not an absent one.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/nonexistent/blob", dir.join("model.safetensors")).unwrap();
            let err = error(&dir);
            assert!(err.contains("symbolic link to nothing"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
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
