//! How many threads lavapipe (Mesa's CPU Vulkan driver) uses, chosen per model for decode.
//!
//! lavapipe splits every dispatch over a pool of threads and joins them before the next
//! one. On a 2-core machine the join costs tens of microseconds per dispatch, more than a
//! small model's kernels take, so a decode step of the bundled model (about 160 dispatches)
//! runs about 3x faster on one thread; a model whose weights are tens of MB per layer is
//! bandwidth-bound and decodes faster with the pool. Measurements behind the threshold are
//! in the README ("Speed").
//!
//! The driver reads `LP_NUM_THREADS` once, when the first Vulkan instance is created, so
//! the choice is made in the binary before any context exists. A user's own
//! `LP_NUM_THREADS` is always kept. Other drivers ignore the variable.

use std::collections::BTreeMap;
use std::path::Path;

use moxe::arch::ModelConfig;
use moxe::checkpoint::ParameterCounts;

/// Below this many bytes of weights read per token per layer, decode runs on one thread.
const SINGLE_THREAD_BELOW: usize = 8 << 20;

/// Weight bytes a decode step reads per layer (f16 matrices; unresolved latent ranks
/// count as 0, so latent models are under-estimated).
fn active_bytes_per_layer(config: &ModelConfig) -> usize {
    let counts = ParameterCounts::of(&config.manifest(), &BTreeMap::new());
    2 * config.active_parameters(&counts) / config.layers().max(1)
}

/// Sets `LP_NUM_THREADS=0` (lavapipe runs dispatches on the calling thread) for a model
/// small enough that decode is dominated by per-dispatch cost, unless the user chose.
/// Returns whether the model is that small (whatever the user chose). A config that
/// cannot be read is left to the loader to report.
pub fn for_decode(config_path: &Path) -> bool {
    let Ok(config) = ModelConfig::from_file(config_path) else {
        return false;
    };
    let bytes = active_bytes_per_layer(&config);
    let small = bytes < SINGLE_THREAD_BELOW;
    if small && std::env::var_os("LP_NUM_THREADS").is_none() {
        log::info!(
            "{:.1} MB of weights per layer and token: lavapipe (if used) runs on one thread \
             (LP_NUM_THREADS=0; set LP_NUM_THREADS to choose)",
            bytes as f64 / 1e6
        );
        // Called from `main`'s thread before any other thread or GPU instance exists.
        std::env::set_var("LP_NUM_THREADS", "0");
    }
    small
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_model_is_small_and_the_paper_config_is_not() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let small = ModelConfig::from_file(&root.join("models/default/config.json")).unwrap();
        let paper = ModelConfig::from_file(&root.join("configs/paper.json")).unwrap();
        assert!(active_bytes_per_layer(&small) < SINGLE_THREAD_BELOW);
        assert!(active_bytes_per_layer(&paper) > 4 * SINGLE_THREAD_BELOW);
    }
}
