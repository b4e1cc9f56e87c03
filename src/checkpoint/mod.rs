//! Checkpoint formats and their validation, all without touching the GPU: model
//! directories ([`dir`]: MoxE and dense xLSTM checkpoints, Hugging Face snapshots as
//! downloaded, the xlstm_large package's state dicts), safetensors files and shards
//! ([`weights`]), the tensors a configuration implies ([`manifest`]), the generation
//! defaults and special tokens of the tokenizer and generation config files
//! ([`generation`]), quantised checkpoints ([`quantized`]), the safe reading of text files
//! ([`files`]), random weights for any
//! configuration ([`random`]), and the files written for a user, whole or not at all
//! ([`output`]).

pub mod dir;
pub mod files;
pub mod generation;
mod header;
pub(crate) mod json;
pub mod manifest;
pub mod output;
pub mod quantized;
pub mod random;
pub mod values;
pub mod weights;

pub use dir::{default_model_dir, ModelDir, ParameterCounts};
pub use generation::GenerationDefaults;
pub use manifest::{Dim, Expected, Manifest};
pub use values::RandomInit;
pub use weights::{ProgressFn, Scope, Weights};
