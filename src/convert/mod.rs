//! Checkpoint conversions (`moxe convert`), on the CPU, without the GPU.
//!
//! - [`latent`]: data-free conversion of dense experts into latent (MoLAE) experts by the
//!   stacked SVD per (layer, group, kind) (docs/LATENT_FORMAT.md section 5).

pub mod latent;
