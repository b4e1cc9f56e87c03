//! `config.json` of a model directory (MODEL.md section 7), parsed into typed structs and
//! validated. Unknown fields are accepted and ignored; a missing required field, a value of
//! the wrong JSON type or a value out of range is an error naming the file and the field.
//!
//! Missing optional fields take the xlstm package's defaults (e.g. 4 heads, conv kernel 4,
//! qkv block size 4, FFN proj_factor 1.3 with act_fn "gelu").

use std::path::Path;

use serde_json::Value;

use super::json::Obj;
use crate::error::{Error, Result};
use crate::ops::elementwise::Activation;

/// Largest number of experts per layer the gate kernel supports.
pub const MAX_EXPERTS: usize = 64;

/// The package's up-projection rule: `proj_factor * dim` rounded up (or down) to a multiple.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpProjection {
    pub factor: f64,
    pub round_up: bool,
    pub multiple: usize,
}

impl UpProjection {
    fn parse(o: &Obj<'_>, default_factor: f64) -> Result<Self> {
        let factor = o.f64_or("proj_factor", default_factor)?;
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(o.error(
                "proj_factor",
                format!("expected a positive number, found {factor}"),
            ));
        }
        let multiple = o.usize_or("round_proj_up_to_multiple_of", 64)?;
        if multiple == 0 {
            return Err(o.error("round_proj_up_to_multiple_of", "must be at least 1"));
        }
        Ok(UpProjection {
            factor,
            round_up: o.bool_or("round_proj_up_dim_up", true)?,
            multiple,
        })
    }

    /// The projected width for input width `dim`.
    pub fn dim(&self, dim: usize) -> usize {
        let m = self.factor * dim as f64 / self.multiple as f64;
        let m = if self.round_up { m.ceil() } else { m.floor() };
        m as usize * self.multiple
    }
}

/// Layout of the sLSTM recurrent kernel and bias stored in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlstmLayout {
    /// `_recurrent_kernel_` (NH, 4*DH, DH), `_bias_` gate-major b[g*D + h*DH + j].
    Vanilla,
    /// `_recurrent_kernel_` (NH, DH, 4*DH), `_bias_` head-major b[h*4*DH + g*DH + j].
    Cuda,
}

/// An mLSTM block (`xlstm.mlstm_block.mlstm`).
#[derive(Debug, Clone, PartialEq)]
pub struct MlstmConfig {
    pub embedding_dim: usize,
    pub num_heads: usize,
    pub conv_kernel: usize,
    pub qkv_blocksize: usize,
    pub up: UpProjection,
    /// `xlstm.bias`: biases on proj_up, q/k/v and proj_down.
    pub bias: bool,
}

impl MlstmConfig {
    /// Inner width Di (the up-projection splits into Di for the cell and Di for the gate z).
    pub fn inner_dim(&self) -> usize {
        self.up.dim(self.embedding_dim)
    }

    /// Head dim of the cell: Di / NH.
    pub fn head_dim(&self) -> usize {
        self.inner_dim() / self.num_heads
    }
}

/// The sLSTM block's gated feed-forward (`xlstm.slstm_block.feedforward`).
#[derive(Debug, Clone, PartialEq)]
pub struct FfnConfig {
    pub up: UpProjection,
    pub act: Activation,
}

impl FfnConfig {
    /// Hidden width P (proj_up has 2P outputs: act(first P) * (last P)).
    pub fn hidden(&self, embedding_dim: usize) -> usize {
        self.up.dim(embedding_dim)
    }
}

/// An sLSTM block (`xlstm.slstm_block`).
#[derive(Debug, Clone, PartialEq)]
pub struct SlstmConfig {
    pub embedding_dim: usize,
    pub num_heads: usize,
    /// 0 means no convolution (the gates i and f then read the normed input directly).
    pub conv_kernel: usize,
    pub layout: SlstmLayout,
    /// `None` when the config sets `feedforward` to null.
    pub ffn: Option<FfnConfig>,
}

impl SlstmConfig {
    /// Head dim DH = D / NH.
    pub fn head_dim(&self) -> usize {
        self.embedding_dim / self.num_heads
    }
}

/// The `xlstm` object shared by MoxE and dense models.
#[derive(Debug, Clone, PartialEq)]
pub struct XlstmConfig {
    pub embedding_dim: usize,
    pub vocab_size: usize,
    /// Training context length (informational; the recurrent engine has no length limit).
    pub context_length: Option<usize>,
    pub add_post_blocks_norm: bool,
    pub bias: bool,
    pub mlstm: Option<MlstmConfig>,
    pub slstm: Option<SlstmConfig>,
}

/// Router of a MoxE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterType {
    /// Entropy-aware gate (difficulty predictor biasing the two groups).
    ConditionedAddition,
    /// Plain softmax router.
    Standard,
}

/// How the difficulty d modulates the group bias sigma (MODEL.md section 3, as written —
/// the authors' code swaps "masked" and "proportional").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modulation {
    /// sigma = gamma * d
    Standard,
    /// sigma = gamma * relu(d - tau)
    Proportional,
    /// sigma = gamma * d * `[d > tau]`
    Masked,
}

/// What each expert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertType {
    /// mLSTM blocks for experts 0..E/2, sLSTM blocks for E/2..E.
    Xlstm,
    Mlstm,
    Slstm,
    /// SwiGLU: w2(silu(w1 x) * (w3 x)).
    Mlp,
}

/// Latent (MoLAE) experts: input projections factored through one shared matrix per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentConfig {
    /// Number of contiguous expert groups sharing a latent projection.
    pub groups: usize,
}

/// The MoxE part of a config.
#[derive(Debug, Clone, PartialEq)]
pub struct MoxeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    pub num_layers: usize,
    pub router: RouterType,
    pub expert_type: ExpertType,
    pub modulation: Modulation,
    pub gate_bias: bool,
    pub gamma: f32,
    pub difficulty_threshold: f32,
    pub post_layers_norm: bool,
    pub latent: Option<LatentConfig>,
}

/// A dense xLSTM stack (`model_type` "xlstm").
#[derive(Debug, Clone, PartialEq)]
pub struct DenseConfig {
    pub num_blocks: usize,
    /// Indices of the sLSTM blocks; the others are mLSTM blocks.
    pub slstm_at: Vec<usize>,
}

/// MoxE or dense.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    Moxe(MoxeConfig),
    Dense(DenseConfig),
}

/// A whole model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub xlstm: XlstmConfig,
    pub tie_weights: bool,
}

impl ModelConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::file(
                path,
                match e.kind() {
                    std::io::ErrorKind::NotFound => "file not found".to_string(),
                    _ => format!("cannot read: {e}"),
                },
            )
        })?;
        Self::from_json(path, &text)
    }

    /// Parses and validates config JSON; `path` names it in errors.
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::file(
                path,
                format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let root = Obj::root(path, &value)?;
        let model_type = root.choice("model_type", "moxe", &["moxe", "xlstm"])?;
        let x = root.required_object("xlstm")?;
        let xlstm = parse_xlstm(&x)?;
        let tie_weights = root.bool_or("tie_weights", x.bool_or("tie_weights", false)?)?;
        let architecture = if model_type == "moxe" {
            Architecture::Moxe(parse_moxe(&root, &xlstm)?)
        } else {
            Architecture::Dense(parse_dense(&x, &xlstm)?)
        };
        Ok(ModelConfig {
            architecture,
            xlstm,
            tie_weights,
        })
    }

    /// The MoxE part, if this is a MoxE model.
    pub fn moxe(&self) -> Option<&MoxeConfig> {
        match &self.architecture {
            Architecture::Moxe(m) => Some(m),
            Architecture::Dense(_) => None,
        }
    }
}

fn parse_xlstm(x: &Obj<'_>) -> Result<XlstmConfig> {
    let d = x.usize("embedding_dim")?;
    if d == 0 {
        return Err(x.error("embedding_dim", "must be at least 1"));
    }
    let vocab = x.usize("vocab_size")?;
    if vocab == 0 {
        return Err(x.error("vocab_size", "must be at least 1"));
    }
    let bias = x.bool_or("bias", false)?;
    // The package uses -1 for "unset".
    let context_length = match x.get("context_length") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n <= 0 => None,
            Some(n) => Some(n as usize),
            None => {
                return Err(x.error("context_length", format!("expected an integer, found {v}")))
            }
        },
    };
    let mlstm = match x.object("mlstm_block")? {
        None => None,
        Some(block) => {
            let m = block.object("mlstm")?;
            Some(parse_mlstm(
                m.as_ref().unwrap_or(&block),
                d,
                bias,
                m.is_none(),
            )?)
        }
    };
    let slstm = match x.object("slstm_block")? {
        None => None,
        Some(block) => Some(parse_slstm(&block, d)?),
    };
    Ok(XlstmConfig {
        embedding_dim: d,
        vocab_size: vocab,
        context_length,
        add_post_blocks_norm: x.bool_or("add_post_blocks_norm", true)?,
        bias,
        mlstm,
        slstm,
    })
}

/// `m` is the `mlstm` object (or, when absent, the block object, read with all defaults).
fn parse_mlstm(m: &Obj<'_>, d: usize, bias: bool, defaults_only: bool) -> Result<MlstmConfig> {
    let cfg = if defaults_only {
        MlstmConfig {
            embedding_dim: d,
            num_heads: 4,
            conv_kernel: 4,
            qkv_blocksize: 4,
            up: UpProjection {
                factor: 2.0,
                round_up: true,
                multiple: 64,
            },
            bias,
        }
    } else {
        MlstmConfig {
            embedding_dim: d,
            num_heads: m.usize_or("num_heads", 4)?,
            conv_kernel: m.usize_or("conv1d_kernel_size", 4)?,
            qkv_blocksize: m.usize_or("qkv_proj_blocksize", 4)?,
            up: UpProjection::parse(m, 2.0)?,
            bias,
        }
    };
    let di = cfg.inner_dim();
    if di == 0 {
        return Err(m.error(
            "proj_factor",
            format!("gives an inner dim of 0 for embedding_dim {d}"),
        ));
    }
    if cfg.num_heads == 0 || di % cfg.num_heads != 0 {
        return Err(m.error(
            "num_heads",
            format!("must divide the inner dim {di}, found {}", cfg.num_heads),
        ));
    }
    if cfg.qkv_blocksize == 0 || di % cfg.qkv_blocksize != 0 {
        return Err(m.error(
            "qkv_proj_blocksize",
            format!(
                "must divide the inner dim {di}, found {}",
                cfg.qkv_blocksize
            ),
        ));
    }
    if cfg.conv_kernel == 0 {
        return Err(m.error(
            "conv1d_kernel_size",
            "must be at least 1 for the mLSTM block",
        ));
    }
    Ok(cfg)
}

fn parse_slstm(block: &Obj<'_>, d: usize) -> Result<SlstmConfig> {
    let s = block.object("slstm")?;
    let (num_heads, conv_kernel, layout) = match &s {
        None => (4, 4, SlstmLayout::Vanilla),
        Some(s) => (
            s.usize_or("num_heads", 4)?,
            s.usize_or("conv1d_kernel_size", 4)?,
            match s.choice("backend", "vanilla", &["vanilla", "cuda"])? {
                "cuda" => SlstmLayout::Cuda,
                _ => SlstmLayout::Vanilla,
            },
        ),
    };
    if num_heads == 0 || d % num_heads != 0 {
        let o = s.as_ref().unwrap_or(block);
        return Err(o.error(
            "num_heads",
            format!("must divide embedding_dim {d}, found {num_heads}"),
        ));
    }
    // Absent: the package's default FFN; explicit null: no FFN.
    let ffn = match block.get("feedforward") {
        Some(Value::Null) => None,
        _ => {
            let f = block.object("feedforward")?;
            let (up, act) = match &f {
                None => (
                    UpProjection {
                        factor: 1.3,
                        round_up: true,
                        multiple: 64,
                    },
                    Activation::Gelu,
                ),
                Some(f) => {
                    let name = f.choice(
                        "act_fn",
                        "gelu",
                        &["gelu", "relu", "relu^2", "sigmoid", "swish", "selu"],
                    )?;
                    (UpProjection::parse(f, 1.3)?, Activation::from_name(name)?)
                }
            };
            if up.dim(d) == 0 {
                return Err(block.error("feedforward.proj_factor", "gives a hidden width of 0"));
            }
            Some(FfnConfig { up, act })
        }
    };
    Ok(SlstmConfig {
        embedding_dim: d,
        num_heads,
        conv_kernel,
        layout,
        ffn,
    })
}

fn parse_moxe(root: &Obj<'_>, xlstm: &XlstmConfig) -> Result<MoxeConfig> {
    let num_experts = root.usize("num_experts")?;
    if num_experts < 2 || num_experts % 2 != 0 {
        return Err(root.error(
            "num_experts",
            format!("must be even and at least 2 (two groups of experts), found {num_experts}"),
        ));
    }
    if num_experts > MAX_EXPERTS {
        return Err(root.error(
            "num_experts",
            format!("at most {MAX_EXPERTS} are supported, found {num_experts}"),
        ));
    }
    let top_k = root.usize("top_k_experts")?;
    if top_k == 0 || top_k > num_experts {
        return Err(root.error(
            "top_k_experts",
            format!("must be between 1 and num_experts ({num_experts}), found {top_k}"),
        ));
    }
    let num_layers = root.usize("num_layers")?;
    if num_layers == 0 {
        return Err(root.error("num_layers", "must be at least 1"));
    }
    let router = match root.choice(
        "router_type",
        "conditioned_addition",
        &["conditioned_addition", "standard"],
    )? {
        "standard" => RouterType::Standard,
        _ => RouterType::ConditionedAddition,
    };
    let expert_type =
        match root.choice("expert_type", "xlstm", &["xlstm", "mlstm", "slstm", "mlp"])? {
            "mlstm" => ExpertType::Mlstm,
            "slstm" => ExpertType::Slstm,
            "mlp" => ExpertType::Mlp,
            _ => ExpertType::Xlstm,
        };
    let modulation = match root.choice(
        "modulation_bias",
        "standard",
        &["standard", "proportional", "masked"],
    )? {
        "proportional" => Modulation::Proportional,
        "masked" => Modulation::Masked,
        _ => Modulation::Standard,
    };
    if xlstm.mlstm.is_none() || xlstm.slstm.is_none() {
        return Err(root.error(
            "xlstm",
            "a MoxE model needs both xlstm.mlstm_block and xlstm.slstm_block (the sequence \
             mixer is an sLSTM block then an mLSTM block)",
        ));
    }
    let gamma = root.f64_or("gamma", 0.7)?;
    let tau = root.f64_or("difficulty_threshold", 0.5)?;
    for (key, v) in [("gamma", gamma), ("difficulty_threshold", tau)] {
        if !v.is_finite() {
            return Err(root.error(key, format!("expected a finite number, found {v}")));
        }
    }
    let latent = match root.object("latent")? {
        None => None,
        Some(l) => {
            let groups = l.usize_or("groups", 2)?;
            if groups == 0 || num_experts % groups != 0 {
                return Err(l.error(
                    "groups",
                    format!("must divide num_experts ({num_experts}), found {groups}"),
                ));
            }
            if expert_type == ExpertType::Xlstm && groups % 2 != 0 {
                return Err(l.error(
                    "groups",
                    format!(
                        "must be even for xlstm experts (a group cannot mix mLSTM and sLSTM \
                         experts), found {groups}"
                    ),
                ));
            }
            Some(LatentConfig { groups })
        }
    };
    Ok(MoxeConfig {
        num_experts,
        top_k,
        num_layers,
        router,
        expert_type,
        modulation,
        gate_bias: root.bool_or("gate_bias", true)?,
        gamma: gamma as f32,
        difficulty_threshold: tau as f32,
        post_layers_norm: root.bool_or("post_layers_norm", false)?,
        latent,
    })
}

fn parse_dense(x: &Obj<'_>, xlstm: &XlstmConfig) -> Result<DenseConfig> {
    let num_blocks = x.usize_or("num_blocks", 1)?;
    if num_blocks == 0 {
        return Err(x.error("num_blocks", "must be at least 1"));
    }
    let slstm_at = match x.get("slstm_at") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s == "all" => (0..num_blocks).collect(),
        Some(Value::Array(items)) => {
            let mut at = Vec::new();
            for item in items {
                match item.as_u64().map(|v| v as usize) {
                    Some(i) if i < num_blocks => at.push(i),
                    _ => {
                        return Err(x.error(
                            "slstm_at",
                            format!(
                                "entries must be block indices below {num_blocks}, found {item}"
                            ),
                        ))
                    }
                }
            }
            at.sort_unstable();
            at.dedup();
            at
        }
        Some(other) => {
            return Err(x.error(
                "slstm_at",
                format!("expected a list of block indices or \"all\", found {other}"),
            ))
        }
    };
    if !slstm_at.is_empty() && xlstm.slstm.is_none() {
        return Err(x.error(
            "slstm_block",
            "slstm_at names sLSTM blocks but slstm_block is missing",
        ));
    }
    if slstm_at.len() < num_blocks && xlstm.mlstm.is_none() {
        return Err(x.error(
            "mlstm_block",
            "the model has mLSTM blocks but mlstm_block is missing",
        ));
    }
    Ok(DenseConfig {
        num_blocks,
        slstm_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let ml = c.xlstm.mlstm.as_ref().unwrap();
        assert_eq!((ml.inner_dim(), ml.head_dim()), (64, 32));
        let sl = c.xlstm.slstm.as_ref().unwrap();
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
    }
}
