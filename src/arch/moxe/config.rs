//! The MoxE part of a config (MODEL.md section 7): experts, router and modulation, latent
//! groups, parsed and validated.

use super::super::xlstm::config::XlstmConfig;
use crate::checkpoint::json::Obj;
use crate::error::Result;

/// Largest number of experts per layer the gate kernel supports.
pub const MAX_EXPERTS: usize = 64;

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
    /// The mixer's sLSTM and mLSTM blocks (and the xlstm experts').
    pub xlstm: XlstmConfig,
}

/// Parses the MoxE fields of the config root with the blocks of its `xlstm` object.
pub(crate) fn parse_moxe(root: &Obj<'_>, xlstm: XlstmConfig) -> Result<MoxeConfig> {
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
    root.check_layers("num_layers", num_layers)?;
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
    let gamma = root.f32_or("gamma", 0.7)?;
    let tau = root.f32_or("difficulty_threshold", 0.5)?;
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
        gamma,
        difficulty_threshold: tau,
        post_layers_norm: root.bool_or("post_layers_norm", false)?,
        latent,
        xlstm,
    })
}
