//! Architectures: what a `config.json` describes, the tensors it implies, and its blocks on
//! the GPU, each recording its dispatches into command graphs.
//!
//! - [`config`]: [`ModelConfig`], which of the architectures a config describes, and the
//!   dispatch from an [`Architecture`] to its module;
//! - [`xlstm`]: the NeurIPS xLSTM blocks of the `xlstm` package (mLSTM, sLSTM, gated FFN)
//!   and the dense stack of them (`xLSTMLMModel`);
//! - [`moxe`]: MoxE layers (the mixer, the entropy-aware router, sparse and latent experts);
//! - [`xlstm_large`]: xLSTM-Large, the architecture of NX-AI's xLSTM-7B.
//!
//! Adding an architecture means adding its module (config parsing, manifest, blocks and a
//! [`Network`]) and one variant of [`Architecture`].
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
pub mod moxe;
pub mod projection;
pub mod xlstm;
pub mod xlstm_large;

pub use config::{Architecture, ModelConfig};

use crate::context::Context;
use crate::error::Result;
use crate::graph::Graph;
use crate::ops::View;
use crate::runtime::Scratch;
use crate::tensor::Tensor;
use moxe::MoeStep;

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

/// What a [`Network`] recorded for one step.
pub struct Recorded<'a> {
    /// The final hidden states (B * N, D), the LM head's input.
    pub hidden: View<'a>,
    /// The MoE layers' recordings, in layer order (empty for dense architectures).
    pub moe: Vec<MoeStep>,
}

/// The body of a model on the GPU (everything between the embedding and the LM head), with
/// the recurrent state of every sequence slot.
pub trait Network: Send + Sync {
    /// Records the body over `batch`, whose residual stream `batch.x` holds the embeddings;
    /// `u` is a second (B * N, D) buffer for a final norm's output.
    fn record<'a>(
        &'a self,
        ctx: &Context,
        graph: &mut Graph,
        batch: &SeqBatch<'a>,
        u: &'a Tensor,
    ) -> Result<Recorded<'a>>;

    /// The recurrent state tensors, each with the sequence slot as its first dimension and a
    /// single buffer (zero is the fresh state).
    fn state_tensors(&self) -> Vec<&Tensor>;
}

/// A model's weights on the GPU, as an architecture loads them.
pub struct Loaded {
    /// (V, D) token embedding, in the weight layout so that it can serve as a tied LM head.
    pub embedding: Tensor,
    /// (V, D) LM head; `None` when tied to the embedding.
    pub lm_head: Option<Tensor>,
    /// `c` of the logits' soft cap `c tanh(logits / c)`, if any.
    pub logit_soft_cap: Option<f32>,
    pub network: Box<dyn Network>,
}
