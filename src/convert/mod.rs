//! Checkpoint conversions, on the CPU, without the GPU.
//!
//! - [`latent`] (`moxe convert latent`): data-free conversion of dense experts into latent
//!   (MoLAE) experts by the stacked SVD per (layer, group, kind) (docs/LATENT_FORMAT.md
//!   section 5).
//! - [`quantize`] (`moxe quantize`): weight matrices to q8 or q4 (docs/QUANT_FORMAT.md).

pub mod latent;
pub mod quantize;

use std::path::Path;

use crate::error::{Error, Result};

/// Makes the output directory of a conversion of `input`: never the input's own, and files
/// already there that the conversion would replace (`files`), or weights that a load would
/// read instead of the new `model.safetensors`, are an error unless `overwrite`, when the
/// latter are removed.
pub(crate) fn prepare_output(
    input: &Path,
    output: &Path,
    files: &[&str],
    overwrite: bool,
) -> Result<()> {
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(Error::InvalidArgument(format!(
                "the output directory {} is the input model's: choose another, so that the \
                 original checkpoint is kept",
                output.display()
            )));
        }
    }
    if output.exists() && !output.is_dir() {
        return Err(Error::file(
            output,
            "the output exists and is not a directory",
        ));
    }
    let present = |name: &str| output.join(name).exists();
    let mut clash: Vec<String> = files
        .iter()
        .filter(|f| present(f))
        .map(|f| f.to_string())
        .collect();
    // Other weight layouts a load would prefer or mix up with model.safetensors.
    let stale: Vec<String> = match std::fs::read_dir(output) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n == "model.safetensors.index.json"
                    || (n.ends_with(".safetensors") && n != "model.safetensors")
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    clash.extend(stale.iter().cloned());
    if !clash.is_empty() && !overwrite {
        return Err(Error::file(
            output,
            format!(
                "already holds {}: pass --force to replace them, or choose another directory",
                clash.join(", ")
            ),
        ));
    }
    std::fs::create_dir_all(output)
        .map_err(|e| Error::file(output, format!("cannot create the directory: {e}")))?;
    for name in stale {
        let path = output.join(&name);
        std::fs::remove_file(&path)
            .map_err(|e| Error::file(&path, format!("cannot remove: {e}")))?;
    }
    Ok(())
}

/// Writes `input`'s config.json to `output` with the field `key` set to `value`, every other
/// field kept.
fn write_config_with(
    input: &Path,
    output: &Path,
    key: &str,
    value: serde_json::Value,
) -> Result<()> {
    let text = std::fs::read_to_string(input)
        .map_err(|e| Error::file(input, format!("cannot read: {e}")))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(input, format!("invalid JSON: {e}")))?;
    let Some(obj) = config.as_object_mut() else {
        return Err(Error::file(input, "the config is not a JSON object"));
    };
    obj.insert(key.into(), value);
    let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
    std::fs::write(output, text + "\n")
        .map_err(|e| Error::file(output, format!("cannot write: {e}")))
}
