//! The NeurIPS xLSTM blocks of the official `xlstm` package (MODEL.md sections 4-5): the
//! mLSTM block, the sLSTM block with its gated feed-forward, their configuration and
//! tensors, and the dense stack of them (`xLSTMLMModel`). MoxE builds its mixer and xlstm
//! experts from the same blocks.

pub(crate) mod block;
pub mod config;
pub mod dense;
pub mod ffn;
pub(crate) mod manifest;
pub mod mlstm;
pub mod slstm;

pub use mlstm::MlstmBlock;
pub use slstm::SlstmBlock;
