//! xLSTM-Large's configuration (XLSTM_LARGE.md), from either file that describes it:
//! transformers' `xLSTMConfig` (`"model_type": "xlstm"`, `hidden_size` / `embedding_dim`,
//! `num_hidden_layers` / `num_blocks`, token ids, `tie_word_embeddings`) or the xlstm_large
//! package's `xLSTMLargeConfig` as `dataclasses.asdict` writes it (no model_type). Missing
//! optional fields take that class's defaults; the PyTorch backend fields (`chunkwise_kernel`,
//! `mode`, `chunk_size`, `autocast_kernel_dtype`, `inference_state_dtype`, ...) name kernels
//! and are accepted and ignored.

use serde_json::Value;

use crate::arch::ModelConfig;
use crate::checkpoint::json::{Obj, MAX_WIDTH};
use crate::checkpoint::Weights;
use crate::error::Result;
use crate::ops::mlstm_cell::MAX_HEAD_DIM;

use crate::arch::Architecture;

/// Which file described the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LargeOrigin {
    /// transformers' `xLSTMConfig` (whose `xLSTMModel` always applies its out norm, without
    /// a bias).
    HuggingFace,
    /// The xlstm_large package's `xLSTMLargeConfig` (out norm per `add_out_norm`, with a bias
    /// when `use_bias`).
    Package,
}

/// How the q/k/v/o, gate and FFN up-projection weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// `q`, `k`, `v`, `ogate_preact`, `igate_preact`, `fgate_preact`, `proj_up_gate`,
    /// `proj_up` separately.
    Single,
    /// `qkv_opreact` = [q | k | v | o], `ifgate_preact` = [i | f], `proj_up_gate_z` =
    /// [gate | up].
    Fused,
}

/// The tensor names of a checkpoint (both layouts share `backbone.blocks.{i}.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// `backbone.embeddings.weight` (transformers) or `embedding.weight` (xlstm_large).
    pub embedding: &'static str,
    /// The single-mode q, k, v projections: `q`, `k`, `v`, or `query`, `key`, `value` (some
    /// transformers revisions).
    pub qkv: [&'static str; 3],
}

impl Naming {
    const SHORT: [&'static str; 3] = ["q", "k", "v"];
    const LONG: [&'static str; 3] = ["query", "key", "value"];
    const HF_EMBEDDING: &'static str = "backbone.embeddings.weight";
    const PACKAGE_EMBEDDING: &'static str = "embedding.weight";
}

/// An xLSTM-Large model's own fields (D and V are in [`ModelConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LargeConfig {
    pub origin: LargeOrigin,
    pub num_heads: usize,
    pub num_blocks: usize,
    /// Dqk = floor(D * qk_dim_factor).
    pub qk_dim: usize,
    /// Dv = floor(D * v_dim_factor).
    pub v_dim: usize,
    /// F = round_up(D * ffn_proj_factor, ffn_round_up_to_multiple_of).
    pub ffn_dim: usize,
    pub use_bias: bool,
    pub norm_eps: f32,
    /// The cell's denominator eps.
    pub eps: f32,
    /// Whether the out norm is applied (transformers: always).
    pub out_norm: bool,
    pub gate_soft_cap: Option<f32>,
    pub output_logit_soft_cap: Option<f32>,
    pub weight_mode: WeightMode,
    pub naming: Naming,
}

impl LargeConfig {
    /// DHQK.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_dim / self.num_heads
    }

    /// DHV.
    pub fn v_head_dim(&self) -> usize {
        self.v_dim / self.num_heads
    }

    /// Whether the out norm has a bias (the package's, with `use_bias`).
    pub fn out_norm_bias(&self) -> bool {
        self.use_bias && self.origin == LargeOrigin::Package
    }

    /// Parses the config root (`origin` says which class wrote it).
    pub(crate) fn parse(root: &Obj<'_>, origin: LargeOrigin) -> Result<ModelConfig> {
        let hf = origin == LargeOrigin::HuggingFace;
        // transformers' class defaults where its fields may be missing; the dataclass
        // requires these four.
        let dim = aliased(root, "hidden_size", "embedding_dim", hf.then_some(4096))?;
        let num_blocks = aliased(root, "num_blocks", "num_hidden_layers", hf.then_some(32))?;
        let num_heads = match hf {
            true => root.usize_or("num_heads", 8)?,
            false => root.usize("num_heads")?,
        };
        let vocab_size = match hf {
            true => root.usize_or("vocab_size", 50304)?,
            false => root.usize("vocab_size")?,
        };
        for (key, v) in [
            ("embedding_dim", dim),
            ("num_heads", num_heads),
            ("vocab_size", vocab_size),
        ] {
            root.check_width(key, v)?;
        }
        let blocks_key = match root.get("num_blocks") {
            Some(v) if !v.is_null() => "num_blocks",
            _ => "num_hidden_layers",
        };
        root.check_layers(blocks_key, num_blocks)?;
        let factor = |key: &str, default: f64| -> Result<f64> {
            let f = root.f64_or(key, default)?;
            if !(f > 0.0 && f.is_finite()) {
                return Err(root.error(key, format!("expected a positive number, found {f}")));
            }
            Ok(f)
        };
        let head_dims = |key: &str, default: f64| -> Result<usize> {
            let f = factor(key, default)?;
            // Python's int(D * f): the same f64 product, truncated.
            let total = (dim as f64 * f) as usize;
            if total == 0 || total % num_heads != 0 {
                return Err(root.error(
                    key,
                    format!(
                        "gives {total} = floor({dim} * {f}) features, which {num_heads} heads \
                         cannot share"
                    ),
                ));
            }
            if total / num_heads > MAX_HEAD_DIM {
                return Err(root.error(
                    key,
                    format!(
                        "gives heads of dim {}; moxe's mLSTM kernels support head dims up to \
                         {MAX_HEAD_DIM}",
                        total / num_heads
                    ),
                ));
            }
            Ok(total)
        };
        let qk_dim = head_dims("qk_dim_factor", 0.5)?;
        let v_dim = head_dims("v_dim_factor", 1.0)?;
        let ffn_factor = factor("ffn_proj_factor", if hf { 2.667 } else { 2.6667 })?;
        let multiple = root.usize_or("ffn_round_up_to_multiple_of", 64)?;
        if multiple == 0 {
            return Err(root.error("ffn_round_up_to_multiple_of", "must be at least 1"));
        }
        if multiple > MAX_WIDTH {
            return Err(root.error(
                "ffn_round_up_to_multiple_of",
                format!("must be at most {MAX_WIDTH}, found {multiple}"),
            ));
        }
        let ffn_dim = match dim as f64 * ffn_factor {
            w if w <= MAX_WIDTH as f64 => round_up_to_next_multiple_of(w, multiple as f64),
            w => {
                return Err(root.error(
                    "ffn_proj_factor",
                    format!(
                        "gives an FFN of width {w} for embedding_dim {dim}; at most {MAX_WIDTH}"
                    ),
                ))
            }
        };
        root.check_width("ffn_proj_factor", ffn_dim)?;
        let positive = |key: &str, default: f32| -> Result<f32> {
            let v = root.f32_or(key, default)?;
            if v <= 0.0 {
                return Err(root.error(key, format!("expected a positive number, found {v}")));
            }
            Ok(v)
        };
        let norm_eps = positive("norm_eps", 1e-6)?;
        let eps = positive("eps", 1e-6)?;
        // A cap of null means no cap (the package's soft_cap(x, None)).
        let cap = |key: &str| -> Result<Option<f32>> {
            match root.get(key) {
                Some(Value::Null) => Ok(None),
                _ => positive(key, if key == "gate_soft_cap" { 15.0 } else { 30.0 }).map(Some),
            }
        };
        let gate_soft_cap = cap("gate_soft_cap")?;
        let output_logit_soft_cap = cap("output_logit_soft_cap")?;
        let weight_mode = match root.str_or("weight_mode", "single")? {
            "single" => WeightMode::Single,
            "fused" => WeightMode::Fused,
            other => {
                return Err(root.error(
                    "weight_mode",
                    format!("unknown weight_mode '{other}': expected \"single\" or \"fused\""),
                ))
            }
        };
        // Accepted for completeness (f32 reductions are all the engine does).
        root.bool_or("norm_reduction_force_float32", true)?;
        let add_out_norm = root.bool_or("add_out_norm", true)?;
        let tie_weights = match hf {
            true => root.bool_or("tie_word_embeddings", false)?,
            false => false,
        };
        let large = LargeConfig {
            origin,
            num_heads,
            num_blocks,
            qk_dim,
            v_dim,
            ffn_dim,
            use_bias: root.bool_or("use_bias", false)?,
            norm_eps,
            eps,
            out_norm: hf || add_out_norm,
            gate_soft_cap,
            output_logit_soft_cap,
            weight_mode,
            naming: Naming {
                embedding: if hf {
                    Naming::HF_EMBEDDING
                } else {
                    Naming::PACKAGE_EMBEDDING
                },
                qkv: Naming::SHORT,
            },
        };
        Ok(ModelConfig {
            architecture: Architecture::Large(large),
            embedding_dim: dim,
            vocab_size,
            context_length: None,
            tie_weights,
        })
    }

    /// Takes the tensor names `weights` uses: transformers' or the package's embedding name,
    /// `q`/`k`/`v` or `query`/`key`/`value`.
    pub(crate) fn adapt_naming(&mut self, weights: &Weights) {
        let hf = weights.contains(Naming::HF_EMBEDDING);
        let package = weights.contains(Naming::PACKAGE_EMBEDDING);
        if hf != package {
            self.naming.embedding = if hf {
                Naming::HF_EMBEDDING
            } else {
                Naming::PACKAGE_EMBEDDING
            };
        }
        let long = format!("backbone.blocks.0.mlstm_layer.{}.weight", Naming::LONG[0]);
        if weights.contains(&long) {
            self.naming.qkv = Naming::LONG;
        }
    }
}

/// A dimension given under either of two names (transformers writes both); they must agree
/// when both are there. `default` applies when neither is.
fn aliased(root: &Obj<'_>, key: &str, alias: &str, default: Option<usize>) -> Result<usize> {
    let get = |k: &str| match root.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => root.usize(k).map(Some),
    };
    match (get(key)?, get(alias)?) {
        (Some(a), Some(b)) if a != b => {
            Err(root.error(key, format!("{key} = {a} disagrees with {alias} = {b}")))
        }
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => match default {
            Some(d) => Ok(d),
            None => root.usize(alias),
        },
    }
}

/// The package's `round_up_to_next_multiple_of(x, m)` = `int(((x + m - 1) // m) * m)`, with
/// Python's float floor division (CPython's `float_floor_div`) for bit-exact agreement.
pub fn round_up_to_next_multiple_of(x: f64, m: f64) -> usize {
    let a = x + m - 1.0;
    let rem = a % m;
    let mut div = (a - rem) / m;
    if rem != 0.0 && (m < 0.0) != (rem < 0.0) {
        div -= 1.0;
    }
    let mut floor = div.floor();
    if div - floor > 0.5 {
        floor += 1.0;
    }
    (floor * m) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(Path::new("config.json"), text)
    }

    fn large(c: &ModelConfig) -> &LargeConfig {
        match &c.architecture {
            Architecture::Large(l) => l,
            other => panic!("expected xLSTM-Large, found {other:?}"),
        }
    }

    #[test]
    fn the_7b_shapes_come_out_of_both_config_files() {
        let hf = parse(
            r#"{"model_type": "xlstm", "hidden_size": 4096, "embedding_dim": 4096,
                "num_hidden_layers": 32, "num_blocks": 32, "num_heads": 8, "vocab_size": 50304,
                "qk_dim_factor": 0.5, "v_dim_factor": 1.0, "ffn_proj_factor": 2.667,
                "weight_mode": "fused", "mode": "inference", "chunk_size": 64,
                "chunkwise_kernel": "chunkwise--triton_xl_chunk", "eos_token_id": 2}"#,
        )
        .unwrap();
        let l = large(&hf);
        assert_eq!(
            (hf.embedding_dim, hf.vocab_size, l.num_blocks),
            (4096, 50304, 32)
        );
        assert_eq!(
            (l.qk_head_dim(), l.v_head_dim(), l.ffn_dim),
            (256, 512, 10944)
        );
        assert_eq!(
            (l.weight_mode, l.origin),
            (WeightMode::Fused, LargeOrigin::HuggingFace)
        );
        assert_eq!(
            (l.gate_soft_cap, l.output_logit_soft_cap),
            (Some(15.0), Some(30.0))
        );
        assert!(l.out_norm);
        let pkg = parse(
            r#"{"embedding_dim": 4096, "num_heads": 8, "num_blocks": 32, "vocab_size": 50304,
                "add_out_norm": false, "gate_soft_cap": null}"#,
        )
        .unwrap();
        let l = large(&pkg);
        assert_eq!(
            (l.ffn_dim, l.origin, l.out_norm),
            (10944, LargeOrigin::Package, false)
        );
        assert_eq!(l.gate_soft_cap, None);
        assert_eq!(l.naming.embedding, "embedding.weight");
    }

    #[test]
    fn python_rounding_is_reproduced() {
        assert_eq!(round_up_to_next_multiple_of(4096.0 * 2.667, 64.0), 10944);
        assert_eq!(round_up_to_next_multiple_of(64.0 * 1.3, 64.0), 128);
        assert_eq!(round_up_to_next_multiple_of(128.0, 64.0), 128);
        assert_eq!(round_up_to_next_multiple_of(80.0 * 2.6667, 64.0), 256);
    }

    #[test]
    fn bad_fields_are_named() {
        let base = r#"{"embedding_dim": 64, "num_heads": 4, "num_blocks": 2, "vocab_size": 99"#;
        for (extra, needle) in [
            (
                r#", "weight_mode": "split"}"#,
                "unknown weight_mode 'split'",
            ),
            (r#", "qk_dim_factor": 0.3}"#, "qk_dim_factor"),
            (r#", "v_dim_factor": -1}"#, "v_dim_factor"),
            (r#", "norm_eps": 0}"#, "norm_eps"),
            (r#", "gate_soft_cap": "high"}"#, "gate_soft_cap"),
            (r#", "v_dim_factor": 40.0}"#, "head dims up to 512"),
            (r#", "ffn_proj_factor": 1e300}"#, "ffn_proj_factor"),
            (
                r#", "ffn_round_up_to_multiple_of": 9223372036854775808}"#,
                "ffn_round_up_to_multiple_of",
            ),
        ] {
            let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(
                err.contains("config.json") && err.contains(needle),
                "{extra}: {err}"
            );
        }
        let err = parse(r#"{"model_type": "xlstm", "hidden_size": 64, "embedding_dim": 32}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("disagrees with embedding_dim = 32"), "{err}");
        let err = parse(
            r#"{"embedding_dim": 4194304, "num_heads": 4, "num_blocks": 2, "vocab_size": 9}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("between 1 and 1048576"), "{err}");
        let err = parse(r#"{"embedding_dim": 64, "num_heads": 4, "num_blocks": 2}"#);
        assert!(err.is_err(), "the package's config requires vocab_size");
    }
}
