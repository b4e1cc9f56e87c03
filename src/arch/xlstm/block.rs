//! A NeurIPS block of either kind with its recurrent state: how the dense stack and the
//! MoxE mixer hold their blocks.

use std::sync::Arc;

use super::config::XlstmConfig;
use super::mlstm::{MlstmBlock, MlstmState};
use super::slstm::{SlstmBlock, SlstmState};
use crate::arch::SeqBatch;
use crate::checkpoint::Scope;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::tensor::{DType, Tensor};

/// A recurrent block with its weights and its state for every sequence slot.
pub(crate) enum Block {
    S(Box<SlstmBlock>, Box<SlstmState>),
    M(Box<MlstmBlock>, Box<MlstmState>),
}

impl Block {
    /// Loads the sLSTM (`slstm`) or mLSTM block under `s`, with state for `slots` sequences.
    pub(crate) fn load(
        ctx: &Context,
        c: &XlstmConfig,
        s: &Scope<'_>,
        slstm: bool,
        dtype: DType,
        slots: usize,
    ) -> Result<Self> {
        Ok(if slstm {
            let b = load_slstm(ctx, c, s, dtype, None)?;
            let state = b.new_state(ctx, slots)?;
            Block::S(Box::new(b), Box::new(state))
        } else {
            let b = load_mlstm(ctx, c, s, dtype, None)?;
            let state = b.new_state(ctx, slots)?;
            Block::M(Box::new(b), Box::new(state))
        })
    }

    /// The state tensors; each has the slot as its first dimension.
    pub(crate) fn state_tensors(&self) -> Vec<&Tensor> {
        match self {
            Block::S(_, s) => std::iter::once(&s.cell).chain(s.conv.as_ref()).collect(),
            Block::M(_, m) => m.tensors(),
        }
    }

    /// Records the block over `batch` (`batch.x += block(x)`).
    pub(crate) fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        batch: &SeqBatch<'_>,
    ) -> Result<()> {
        match self {
            Block::S(b, s) => b.record(ctx, graph, batch, s),
            Block::M(b, s) => b.record(ctx, graph, batch, s),
        }
    }
}

/// An sLSTM block or expert under `s` (`shared` = the latent group's B of its FFN proj_up).
pub(crate) fn load_slstm(
    ctx: &Context,
    c: &XlstmConfig,
    s: &Scope<'_>,
    dtype: DType,
    shared: Option<&Arc<Tensor>>,
) -> Result<SlstmBlock> {
    let cfg = c
        .slstm
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("no slstm_block config".into()))?;
    SlstmBlock::load_expert(ctx, s, cfg, dtype, shared)
}

/// An mLSTM block or expert under `s` (`shared` = the latent group's B of its proj_up).
pub(crate) fn load_mlstm(
    ctx: &Context,
    c: &XlstmConfig,
    s: &Scope<'_>,
    dtype: DType,
    shared: Option<&Arc<Tensor>>,
) -> Result<MlstmBlock> {
    let cfg = c
        .mlstm
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("no mlstm_block config".into()))?;
    MlstmBlock::load_expert(ctx, s, cfg, dtype, shared)
}
