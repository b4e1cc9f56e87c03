//! The NeurIPS xLSTM blocks' configuration: the `xlstm` object of a MoxE or dense config
//! (MODEL.md section 7), parsed and validated. Missing optional fields take the xlstm
//! package's defaults (e.g. 4 heads, conv kernel 4, qkv block size 4, FFN proj_factor 1.3
//! with act_fn "gelu").

use serde_json::Value;

use crate::checkpoint::json::{Obj, MAX_WIDTH};
use crate::error::Result;
use crate::ops::elementwise::Activation;

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
        o.check_width("round_proj_up_to_multiple_of", multiple)?;
        Ok(UpProjection {
            factor,
            round_up: o.bool_or("round_proj_up_dim_up", true)?,
            multiple,
        })
    }

    /// [`UpProjection::dim`] for a config being read: a width of 0 or past [`MAX_WIDTH`]
    /// is an error naming `o`'s field `key` (before the rounding could overflow).
    fn checked_dim(&self, o: &Obj<'_>, key: &str, dim: usize) -> Result<usize> {
        let width = self.factor * dim as f64;
        if width > MAX_WIDTH as f64 {
            return Err(o.error(
                key,
                format!(
                    "gives a width of {width:.3e} for embedding_dim {dim}; at most {MAX_WIDTH}"
                ),
            ));
        }
        let d = self.dim(dim);
        if d == 0 || d > MAX_WIDTH {
            return Err(o.error(
                key,
                format!(
                    "gives a width of {d} for embedding_dim {dim} (rounded to a multiple of \
                     {}); expected 1 to {MAX_WIDTH}",
                    self.multiple
                ),
            ));
        }
        Ok(d)
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

/// The blocks of the `xlstm` object shared by MoxE and dense models (the model-level fields
/// of that object, vocabulary and context length, are in
/// [`ModelConfig`](crate::arch::ModelConfig)).
#[derive(Debug, Clone, PartialEq)]
pub struct XlstmConfig {
    pub embedding_dim: usize,
    pub add_post_blocks_norm: bool,
    pub bias: bool,
    pub mlstm: Option<MlstmConfig>,
    pub slstm: Option<SlstmConfig>,
}

impl XlstmConfig {
    /// f32 state values per sequence of an sLSTM block (`slstm`) and / or an mLSTM block
    /// (`mlstm`): cell state and conv history.
    pub fn state_floats(&self, slstm: bool, mlstm: bool) -> usize {
        let mut n = 0;
        if let (true, Some(s)) = (slstm, &self.slstm) {
            n += 4 * s.embedding_dim + s.conv_kernel.saturating_sub(1) * s.embedding_dim;
        }
        if let (true, Some(m)) = (mlstm, &self.mlstm) {
            let (nh, dh) = (m.num_heads, m.head_dim());
            n += nh * (dh * dh + dh + 1) + m.conv_kernel.saturating_sub(1) * m.inner_dim();
        }
        n
    }
}

/// A dense xLSTM stack (`model_type` "xlstm" with an `xlstm` object: the package's
/// `xLSTMLMModel`).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseConfig {
    pub num_blocks: usize,
    /// Indices of the sLSTM blocks; the others are mLSTM blocks.
    pub slstm_at: Vec<usize>,
    pub xlstm: XlstmConfig,
}

/// Parses the blocks of the `xlstm` object `x` for embedding dim `d`: the sLSTM and the
/// mLSTM block where the model has such blocks (`slstm`, `mlstm`); a block object the
/// model does not use is not read (the package builds only the blocks it places).
pub(crate) fn parse_xlstm(x: &Obj<'_>, d: usize, slstm: bool, mlstm: bool) -> Result<XlstmConfig> {
    let bias = x.bool_or("bias", false)?;
    let object = |key: &str, used: bool| match used {
        true => x.object(key),
        false => Ok(None),
    };
    let mlstm = match object("mlstm_block", mlstm)? {
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
    let slstm = match object("slstm_block", slstm)? {
        None => None,
        Some(block) => Some(parse_slstm(&block, d)?),
    };
    Ok(XlstmConfig {
        embedding_dim: d,
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
    let di = cfg.up.checked_dim(m, "proj_factor", d)?;
    if cfg.num_heads == 0 || di % cfg.num_heads != 0 {
        return Err(m.error(
            "num_heads",
            format!("must divide the inner dim {di}, found {}", cfg.num_heads),
        ));
    }
    if di / cfg.num_heads > crate::ops::mlstm_cell::MAX_HEAD_DIM {
        return Err(m.error(
            "num_heads",
            format!(
                "{} heads of the inner dim {di} are {} wide; moxe's mLSTM kernels support head \
                 dims up to {}",
                cfg.num_heads,
                di / cfg.num_heads,
                crate::ops::mlstm_cell::MAX_HEAD_DIM
            ),
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
    let o = s.as_ref().unwrap_or(block);
    if num_heads == 0 || d % num_heads != 0 {
        return Err(o.error(
            "num_heads",
            format!("must divide embedding_dim {d}, found {num_heads}"),
        ));
    }
    if d / num_heads > crate::ops::slstm_cell::MAX_HEAD_DIM {
        return Err(o.error(
            "num_heads",
            format!(
                "{num_heads} heads of embedding_dim {d} are {} wide; moxe's sLSTM kernels \
                 support head dims up to {}",
                d / num_heads,
                crate::ops::slstm_cell::MAX_HEAD_DIM
            ),
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
            up.checked_dim(block, "feedforward.proj_factor", d)?;
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

/// A dense stack's block count and sLSTM block indices, from the `xlstm` object `x`, as
/// the package's `xLSTMBlockStackConfig` sets them: without an `mlstm_block` every block is
/// an sLSTM block, whatever `slstm_at` says.
pub(crate) fn parse_layout(x: &Obj<'_>) -> Result<(usize, Vec<usize>)> {
    let num_blocks = x.usize_or("num_blocks", 1)?;
    x.check_layers("num_blocks", num_blocks)?;
    let all = matches!(x.get("mlstm_block"), None | Some(Value::Null));
    let slstm_at = match x.get("slstm_at") {
        _ if all => (0..num_blocks).collect(),
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
    Ok((num_blocks, slstm_at))
}

/// A dense stack of `num_blocks` blocks, sLSTM at `slstm_at` ([`parse_layout`]), with the
/// blocks `xlstm` of the `xlstm` object `x`.
pub(crate) fn parse_dense(
    x: &Obj<'_>,
    xlstm: XlstmConfig,
    num_blocks: usize,
    slstm_at: Vec<usize>,
) -> Result<DenseConfig> {
    if !slstm_at.is_empty() && xlstm.slstm.is_none() {
        return Err(x.error(
            "slstm_block",
            "the stack has sLSTM blocks (slstm_at, or no mlstm_block) but slstm_block is \
             missing",
        ));
    }
    Ok(DenseConfig {
        num_blocks,
        slstm_at,
        xlstm,
    })
}
