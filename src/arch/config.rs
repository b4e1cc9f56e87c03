//! `config.json` of a model directory, parsed into typed structs and validated, and the
//! architecture it describes. Unknown fields are accepted and ignored; a missing required
//! field, a value of the wrong JSON type or a value out of range is an error naming the file
//! and the field.
//!
//! Which architecture a config describes:
//! - `"model_type": "moxe"` (or no model_type and an `xlstm` object): MoxE (MODEL.md
//!   section 7);
//! - `"model_type": "xlstm"` with an `xlstm` object: a dense stack of NeurIPS blocks (the
//!   xlstm package's `xLSTMLMModel`);
//! - `"model_type": "xlstm"` with top-level `hidden_size`/`embedding_dim` and
//!   `num_blocks`/`num_hidden_layers`: xLSTM-Large as transformers' `xLSTMForCausalLM` saves
//!   it;
//! - no model_type and the `xLSTMLargeConfig` fields at top level (`embedding_dim`,
//!   `num_heads`, `num_blocks`, `vocab_size`): xLSTM-Large as the `xlstm_large` package
//!   writes its dataclass config.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::moxe::config::{parse_moxe, MoxeConfig};
use super::xlstm::config::{parse_dense, parse_layout, parse_xlstm, DenseConfig, XlstmConfig};
use super::xlstm_large::config::{LargeConfig, LargeOrigin};
use super::Loaded;
use crate::checkpoint::json::Obj;
use crate::checkpoint::{Manifest, ParameterCounts, Weights};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// The architecture of a model and its own configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// MoxE layers (MODEL.md).
    Moxe(MoxeConfig),
    /// A dense stack of NeurIPS xLSTM blocks.
    Dense(DenseConfig),
    /// xLSTM-Large (XLSTM_LARGE.md), NX-AI's xLSTM-7B.
    Large(LargeConfig),
}

/// A whole model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// D.
    pub embedding_dim: usize,
    /// V.
    pub vocab_size: usize,
    /// Training context length (informational; the recurrent engine has no length limit).
    pub context_length: Option<usize>,
    /// Whether the LM head is the embedding.
    pub tie_weights: bool,
}

impl ModelConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::checkpoint::files::read_text(path, crate::checkpoint::files::JSON_LIMIT)?;
        Self::from_json(path, &text)
    }

    /// Parses and validates config JSON; `path` names it in errors.
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let value: Value = crate::checkpoint::files::parse_json(path, text)?;
        let root = Obj::root(path, &value)?;
        let has_xlstm = root.get("xlstm").is_some();
        let large_fields = ["embedding_dim", "num_heads", "num_blocks", "vocab_size"]
            .iter()
            .all(|k| root.get(k).is_some());
        match root.get("model_type") {
            None if has_xlstm => Self::neurips(&root, true),
            None if large_fields => LargeConfig::parse(&root, LargeOrigin::Package),
            Some(Value::String(t)) if t == "moxe" => Self::neurips(&root, true),
            Some(Value::String(t)) if t == "xlstm" && has_xlstm => Self::neurips(&root, false),
            Some(Value::String(t)) if t == "xlstm" => {
                LargeConfig::parse(&root, LargeOrigin::HuggingFace)
            }
            Some(Value::String(t)) => Err(root.error(
                "model_type",
                format!(
                    "'{t}' is not an architecture moxe runs: expected \"moxe\" (MoxE) or \
                     \"xlstm\" (the xlstm package's xLSTMLMModel, or xLSTM-Large as \
                     transformers' xLSTMForCausalLM saves it)"
                ),
            )),
            Some(other) => Err(root.error(
                "model_type",
                format!("expected a string (\"moxe\" or \"xlstm\"), found {other}"),
            )),
            None => Err(Error::file(
                path,
                "matches no supported architecture: expected \"model_type\": \"moxe\" (MoxE), \
                 \"model_type\": \"xlstm\" (with an \"xlstm\" object: the xlstm package's \
                 xLSTMLMModel; with top-level hidden_size and num_blocks: xLSTM-Large from \
                 transformers), or the xlstm_large package's xLSTMLargeConfig fields \
                 (embedding_dim, num_heads, num_blocks, vocab_size)",
            )),
        }
    }

    /// A MoxE (`moxe`) or dense config: everything but the MoxE fields is in the `xlstm`
    /// object.
    fn neurips(root: &Obj<'_>, moxe: bool) -> Result<Self> {
        let x = root.required_object("xlstm")?;
        let d = x.usize("embedding_dim")?;
        x.check_width("embedding_dim", d)?;
        let vocab_size = x.usize("vocab_size")?;
        x.check_width("vocab_size", vocab_size)?;
        // The package uses -1 for "unset".
        let context_length = match x.get("context_length") {
            None | Some(Value::Null) => None,
            Some(v) => match (v.as_i64(), v.as_u64()) {
                (Some(n), _) if n <= 0 => None,
                (_, Some(n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => {
                    return Err(x.error("context_length", format!("expected an integer, found {v}")))
                }
            },
        };
        let tie_weights = root.bool_or("tie_weights", x.bool_or("tie_weights", false)?)?;
        let architecture = if moxe {
            // The mixer holds both blocks.
            Architecture::Moxe(parse_moxe(root, parse_xlstm(&x, d, true, true)?)?)
        } else {
            let (blocks, slstm_at) = parse_layout(&x)?;
            let (slstm, mlstm) = (!slstm_at.is_empty(), slstm_at.len() < blocks);
            let xlstm = parse_xlstm(&x, d, slstm, mlstm)?;
            Architecture::Dense(parse_dense(&x, xlstm, blocks, slstm_at)?)
        };
        Ok(ModelConfig {
            architecture,
            embedding_dim: d,
            vocab_size,
            context_length,
            tie_weights,
        })
    }

    /// The MoxE part, if this is a MoxE model.
    pub fn moxe(&self) -> Option<&MoxeConfig> {
        match &self.architecture {
            Architecture::Moxe(m) => Some(m),
            _ => None,
        }
    }

    /// The NeurIPS block configuration of a MoxE or dense model.
    pub fn xlstm(&self) -> Option<&XlstmConfig> {
        match &self.architecture {
            Architecture::Moxe(m) => Some(&m.xlstm),
            Architecture::Dense(d) => Some(&d.xlstm),
            Architecture::Large(_) => None,
        }
    }

    /// The architecture's name, as `moxe inspect` prints it.
    pub fn name(&self) -> &'static str {
        match &self.architecture {
            Architecture::Moxe(m) if m.latent.is_some() => "MoxE (latent experts)",
            Architecture::Moxe(_) => "MoxE",
            Architecture::Dense(_) => "xLSTM (dense NeurIPS blocks)",
            Architecture::Large(_) => "xLSTM-Large",
        }
    }

    /// Layers (MoxE) or blocks (dense, xLSTM-Large).
    pub fn layers(&self) -> usize {
        match &self.architecture {
            Architecture::Moxe(m) => m.num_layers,
            Architecture::Dense(d) => d.num_blocks,
            Architecture::Large(l) => l.num_blocks,
        }
    }

    /// The same model with `n` layers (MoxE) or blocks (dense, xLSTM-Large): a slice of a
    /// model too large to load whole, for benchmarks.
    pub fn with_layers(&self, n: usize) -> Result<Self> {
        if n == 0 || n > self.layers() {
            return Err(Error::InvalidArgument(format!(
                "{n} blocks: the config has {} (keep between 1 and that many)",
                self.layers()
            )));
        }
        let mut c = self.clone();
        match &mut c.architecture {
            Architecture::Moxe(m) => m.num_layers = n,
            Architecture::Dense(d) => {
                d.num_blocks = n;
                d.slstm_at.retain(|&i| i < n);
            }
            Architecture::Large(l) => l.num_blocks = n,
        }
        Ok(c)
    }

    /// Parameters one token uses (all but the unselected experts).
    pub fn active_parameters(&self, counts: &ParameterCounts) -> usize {
        match &self.architecture {
            Architecture::Moxe(m) => counts.active(m.top_k, m.num_experts),
            _ => counts.total,
        }
    }

    /// f32 values of recurrent state one sequence holds (without the GPU's row padding).
    pub fn state_floats_per_sequence(&self) -> usize {
        match &self.architecture {
            Architecture::Moxe(m) => m.num_layers * m.xlstm.state_floats(true, true),
            Architecture::Dense(d) => {
                let s = d.slstm_at.len();
                s * d.xlstm.state_floats(true, false)
                    + (d.num_blocks - s) * d.xlstm.state_floats(false, true)
            }
            Architecture::Large(l) => {
                let (dk, dv) = (l.qk_head_dim(), l.v_head_dim());
                l.num_blocks * l.num_heads * (dk * dv + dk + 1)
            }
        }
    }

    /// Every tensor the configuration implies.
    pub fn manifest(&self) -> Manifest {
        match &self.architecture {
            Architecture::Moxe(m) => super::moxe::manifest(self, m),
            Architecture::Dense(d) => super::xlstm::dense::manifest(self, d),
            Architecture::Large(l) => super::xlstm_large::manifest(self, l),
        }
    }

    /// Adapts the configuration to the tensor names a checkpoint uses where an architecture
    /// accepts several namings (xLSTM-Large: the package's, transformers', `q` or `query`),
    /// and to whether an xLSTM-Large checkpoint stores its own LM head.
    pub fn adapt_to(&mut self, weights: &Weights) {
        if let Architecture::Large(l) = &mut self.architecture {
            l.adapt_naming(weights);
            // transformers' xLSTMForCausalLM does not tie (5.x saves and reads its own head
            // whatever tie_word_embeddings says): a stored head is the model's; without one
            // the embedding is.
            if weights.contains("lm_head.weight") {
                self.tie_weights = false;
            }
        }
    }

    /// Loads validated weights onto the GPU: matrices stored as `dtype`, recurrent state for
    /// `slots` sequences; `ranks` are the latent ranks the manifest check returned.
    pub(crate) fn load(
        &self,
        ctx: &Context,
        weights: &Weights,
        ranks: &BTreeMap<String, usize>,
        dtype: DType,
        slots: usize,
    ) -> Result<Loaded> {
        match &self.architecture {
            Architecture::Moxe(m) => super::moxe::load(ctx, self, m, weights, ranks, dtype, slots),
            Architecture::Dense(d) => {
                super::xlstm::dense::load(ctx, self, d, weights, dtype, slots)
            }
            Architecture::Large(l) => super::xlstm_large::load(ctx, self, l, weights, dtype, slots),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::Activation;

    const EXAMPLE: &str = r#"{
      "model_type": "moxe",
      "num_experts": 4, "top_k_experts": 2, "num_layers": 3,
      "router_type": "conditioned_addition", "expert_type": "xlstm",
      "modulation_bias": "standard", "gate_bias": true,
      "gamma": 0.7, "difficulty_threshold": 0.5,
      "post_layers_norm": false, "tie_weights": false,
      "xlstm": {
        "embedding_dim": 32, "vocab_size": 64, "context_length": 64,
        "add_post_blocks_norm": true, "bias": false, "dropout": 0.0, "pad_token_id": 1,
        "mlstm_block": {"mlstm": {"num_heads": 2, "conv1d_kernel_size": 4,
                                  "qkv_proj_blocksize": 4, "proj_factor": 2.0}},
        "slstm_block": {"slstm": {"num_heads": 2, "conv1d_kernel_size": 4,
                                  "backend": "vanilla", "bias_init": "powerlaw_blockdependent"},
                        "feedforward": {"proj_factor": 1.3, "act_fn": "swish"}}
      }
    }"#;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(Path::new("config.json"), text)
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        let mut target = &mut v;
        let parts: Vec<&str> = field.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            target = target.get_mut(*p).unwrap();
        }
        target[parts[parts.len() - 1]] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn the_spec_example_parses() {
        let c = parse(EXAMPLE).unwrap();
        let m = c.moxe().unwrap();
        assert_eq!((m.num_experts, m.top_k, m.num_layers), (4, 2, 3));
        let ml = c.xlstm().unwrap().mlstm.as_ref().unwrap();
        assert_eq!((ml.inner_dim(), ml.head_dim()), (64, 32));
        let sl = c.xlstm().unwrap().slstm.as_ref().unwrap();
        assert_eq!(sl.head_dim(), 16);
        let ffn = sl.ffn.as_ref().unwrap();
        assert_eq!((ffn.hidden(32), ffn.act), (64, Activation::Silu));
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        for (field, value, needle) in [
            ("num_experts", "3", "num_experts"),
            ("top_k_experts", "5", "top_k_experts"),
            ("num_experts", "66", "at most 64"),
            ("router_type", "\"fancy\"", "router_type"),
            (
                "xlstm.mlstm_block.mlstm.num_heads",
                "3",
                "xlstm.mlstm_block.mlstm.num_heads",
            ),
            ("xlstm.embedding_dim", "\"wide\"", "xlstm.embedding_dim"),
            ("xlstm.slstm_block.feedforward.act_fn", "\"mish\"", "act_fn"),
            ("gate_bias", "1", "gate_bias"),
            // Widths past the bound, or that a factor would wrap round (a release build's
            // unchecked product loaded 6.6e17 as an inner dim of 4096).
            (
                "xlstm.embedding_dim",
                "9223372036854775808",
                "between 1 and 1048576",
            ),
            ("xlstm.embedding_dim", "1048577", "xlstm.embedding_dim"),
            ("xlstm.vocab_size", "0", "xlstm.vocab_size"),
            (
                "xlstm.mlstm_block.mlstm.proj_factor",
                "6.588122883467698e17",
                "xlstm.mlstm_block.mlstm.proj_factor",
            ),
            (
                "xlstm.mlstm_block.mlstm.proj_factor",
                "1e300",
                "at most 1048576",
            ),
            (
                "xlstm.mlstm_block.mlstm.round_proj_up_to_multiple_of",
                "9223372036854775808",
                "round_proj_up_to_multiple_of",
            ),
            (
                "xlstm.slstm_block.feedforward.proj_factor",
                "1e30",
                "feedforward.proj_factor",
            ),
            // Heads wider than the kernels take.
            ("xlstm.embedding_dim", "1024", "head dims up to 512"),
        ] {
            let err = parse(&with(field, value)).unwrap_err().to_string();
            assert!(
                err.contains("config.json") && err.contains(needle),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn missing_required_fields_and_bad_json_are_reported() {
        let err = parse("{\"model_type\": \"moxe\"").unwrap_err().to_string();
        assert!(err.contains("invalid JSON"), "{err}");
        let err = parse(r#"{"model_type": "moxe", "xlstm": {"vocab_size": 5}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("xlstm.embedding_dim") && err.contains("missing"),
            "{err}"
        );
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        v.as_object_mut().unwrap().remove("num_experts");
        let err = parse(&v.to_string()).unwrap_err().to_string();
        assert!(
            err.contains("num_experts") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_aliases_apply() {
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        v["moe_layer_type"] = "whatever".into();
        v["eps"] = 1e-5.into();
        v.as_object_mut().unwrap().remove("tie_weights");
        v["xlstm"]["tie_weights"] = true.into();
        let c = parse(&v.to_string()).unwrap();
        assert!(c.tie_weights, "xlstm.tie_weights is an alias");
    }

    #[test]
    fn dense_models_parse_slstm_positions() {
        let dense = r#"{"model_type": "xlstm", "xlstm": {"embedding_dim": 24, "vocab_size": 64,
            "mlstm_block": {"mlstm": {"num_heads": 4}},
            "slstm_block": {"slstm": {"num_heads": 2}},
            "num_blocks": 3, "slstm_at": [1], "tie_weights": true}}"#;
        let c = parse(dense).unwrap();
        assert!(c.tie_weights);
        match &c.architecture {
            Architecture::Dense(d) => assert_eq!((d.num_blocks, d.slstm_at.clone()), (3, vec![1])),
            _ => panic!("dense expected"),
        }
        let bad = dense.replace("[1]", "[5]");
        assert!(parse(&bad).unwrap_err().to_string().contains("slstm_at"));
        // As the package builds them: a block kind no block uses is not read (5 heads do
        // not divide 24, and the sLSTM block is unused), and without an mlstm_block every
        // block is an sLSTM block.
        let unused = dense
            .replace(r#""num_heads": 2"#, r#""num_heads": 5"#)
            .replace("[1]", "[]");
        let c = parse(&unused).unwrap();
        assert!(c.xlstm().unwrap().slstm.is_none());
        let slstm_only = dense.replace(r#""mlstm_block": {"mlstm": {"num_heads": 4}},"#, "");
        match parse(&slstm_only).unwrap().architecture {
            Architecture::Dense(d) => assert_eq!(d.slstm_at, vec![0, 1, 2]),
            _ => panic!("dense expected"),
        }
        let neither = slstm_only.replace(r#""slstm_block": {"slstm": {"num_heads": 2}},"#, "");
        let err = parse(&neither).unwrap_err().to_string();
        assert!(err.contains("slstm_block is missing"), "{err}");
    }

    #[test]
    fn configs_that_match_no_architecture_say_what_is_expected() {
        let err = parse(r#"{"hidden_size": 64}"#).unwrap_err().to_string();
        assert!(
            err.contains("matches no supported architecture") && err.contains("xLSTMLargeConfig"),
            "{err}"
        );
        let err = parse(r#"{"model_type": "llama", "hidden_size": 64}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model_type") && err.contains("'llama'"),
            "{err}"
        );
        let err = parse(r#"{"model_type": 3}"#).unwrap_err().to_string();
        assert!(
            err.contains("model_type") && err.contains("expected a string"),
            "{err}"
        );
    }
}
