//! The runtime: a loaded [`Model`] (weights, state slots, step graphs), [`Session`]s over
//! its sequences (prefill, decode, scoring, save / resume / fork), text generation, the
//! tokenizer, and the scratch buffers a step's blocks share.

mod continuation;
pub mod generate;
pub mod model;
pub mod runner;
pub(crate) mod sampler;
pub mod scratch;
pub mod session;
pub mod tokenizer;

pub use model::{LoadOptions, Model, MAX_SEQUENCES};
pub use scratch::Scratch;
pub use session::{Session, Snapshot};
pub use tokenizer::Tokenizer;
