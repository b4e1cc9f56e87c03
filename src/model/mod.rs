//! The model runtime: configuration, weights, and the blocks of a MoxE / xLSTM model, each
//! recording its dispatches into command graphs.
//!
//! Conventions shared by every block:
//! - activations are f32, one row per token; a batch of B sequences of N tokens is
//!   `B * N` rows with row `b * N + n`;
//! - the residual stream is updated in place (`x += block(x)`): blocks end with ops that
//!   accumulate (`beta = 1`) into it;
//! - recurrent state lives in per-block state tensors with one slot per sequence; a step
//!   names the slot of each of its B sequences in a u32 tensor, so sessions keep their state
//!   where it is and batches are any set of sessions;
//! - experts see each token alone (a length-1 sequence with zero state), so an expert is a
//!   row-wise function and runs over any gathered set of rows.

pub mod config;
pub mod dir;
pub mod ffn;
pub mod generate;
mod json;
pub mod latent;
pub mod lm;
pub mod manifest;
pub mod mlp_expert;
pub mod mlstm;
pub mod moe;
pub mod random;
pub mod runner;
pub mod scratch;
pub mod session;
pub mod slstm;
pub mod telemetry;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use lm::{LoadOptions, Model};
pub use mlp_expert::MlpExpert;
pub use moe::{MoeLayer, MoeStep};
pub use scratch::Scratch;
pub use session::Session;
pub use telemetry::RouterTelemetry;
pub use weights::{Scope, Weights};

use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::View;
use crate::tensor::Tensor;

/// B sequences of N tokens each, as a stateful block sees them.
pub struct SeqBatch<'a> {
    /// Residual stream (B * N, D), row `b * N + n`; updated in place.
    pub x: &'a Tensor,
    /// State slot of each sequence: u32 (B).
    pub slots: &'a Tensor,
    /// B.
    pub seqs: usize,
    /// N.
    pub tokens: usize,
    /// Intermediate buffers with at least B * N rows.
    pub scratch: &'a Scratch,
}

/// An expert: a row-wise function of tokens (each token its own length-1 sequence with zero
/// state). Inside a dynamic-rows section of the graph only the counted rows are computed.
pub trait Expert: Send + Sync {
    /// Records `output = expert(input)` for the rows of `input` (rows, D) into `output`
    /// (rows, D). `scratch` has at least `input.rows` rows.
    fn record(
        &self,
        ctx: &Context,
        graph: &mut Graph,
        input: View<'_>,
        output: View<'_>,
        scratch: &Scratch,
    ) -> Result<()>;
}
