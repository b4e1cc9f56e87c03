//! Checkpoint conversions, on the CPU, without the GPU.
//!
//! - [`latent`] (`moxe convert latent`): data-free conversion of dense experts into latent
//!   (MoLAE) experts by the stacked SVD per (layer, group, kind) (docs/LATENT_FORMAT.md
//!   section 5).
//! - [`quantize`] (`moxe quantize`): weight matrices to q8 or q4 (docs/QUANT_FORMAT.md).

pub mod latent;
pub mod quantize;

use std::path::{Path, PathBuf};

use crate::checkpoint::files::present;
use crate::error::{Error, Result};

/// Copies the side files of model directory `input` (tokenizer, its special tokens and
/// chat template, generation defaults: `SIDE_FILES`) that it has into a conversion's
/// output, each a regular file within the size a load reads (a FIFO would block the copy
/// for ever); a link to nothing is an error, not a file left out.
pub(crate) fn copy_side_files(input: &Path, staging: &Staging) -> Result<()> {
    for name in crate::checkpoint::dir::SIDE_FILES {
        let from = input.join(name);
        if !present(&from) {
            continue;
        }
        crate::checkpoint::files::check_regular(&from, crate::checkpoint::files::TOKENIZER_LIMIT)?;
        std::fs::copy(&from, staging.path(name))
            .map_err(|e| Error::file(&from, format!("cannot copy: {e}")))?;
    }
    Ok(())
}

/// Every file a conversion's output may hold: config.json, model.safetensors and the side
/// files (one the input lacks is removed from the output, not left from an earlier model).
fn output_files() -> Vec<&'static str> {
    ["config.json", "model.safetensors"]
        .into_iter()
        .chain(crate::checkpoint::dir::SIDE_FILES)
        .collect()
}

/// Makes the output directory of a conversion of `input` and its [`Staging`]: never the
/// input's own directory, and files already there that the conversion would replace
/// ([`output_files`]), or an earlier model's sharded checkpoint (whose weights the new
/// `model.safetensors` replaces), are an error unless `overwrite` (then they are replaced or
/// removed when the conversion commits, not before, and the commit names what it removed).
pub(crate) fn prepare_output(input: &Path, output: &Path, overwrite: bool) -> Result<Staging> {
    let files = output_files();
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(Error::InvalidArgument(format!(
                "the output directory {} is the input model's: choose another, so that the \
                 original checkpoint is kept",
                output.display()
            )));
        }
    }
    if present(output) && !output.exists() {
        return Err(Error::file(
            output,
            "the output is a symbolic link to nothing: remove it, or point it at a directory",
        ));
    }
    if output.exists() && !output.is_dir() {
        return Err(Error::file(
            output,
            "the output exists and is not a directory",
        ));
    }
    let held = |name: &str| present(&output.join(name));
    let mut clash: Vec<String> = files
        .iter()
        .filter(|f| held(f))
        .map(|f| f.to_string())
        .collect();
    let stale = sharded_weights(output);
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
    // The directories this run creates (the output and missing parents, innermost first),
    // removed again if it fails.
    let created: Vec<PathBuf> = output
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| !present(a))
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(output)
        .map_err(|e| Error::file(output, format!("cannot create the directory: {e}")))?;
    let dir = output.join(STAGING_DIR);
    if dir.exists() {
        // Left by a run that was killed: never a user's file (the name is ours).
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Error::file(&dir, format!("cannot remove: {e}")))?;
    }
    std::fs::create_dir(&dir)
        .map_err(|e| Error::file(&dir, format!("cannot create the directory: {e}")))?;
    Ok(Staging {
        output: output.to_path_buf(),
        dir,
        files: files.iter().map(|f| f.to_string()).collect(),
        stale,
        created,
        committed: false,
    })
}

/// A sharded checkpoint in `dir`, the weights of the model a conversion's
/// `model.safetensors` replaces there: its index, and the shards it names that are there.
/// Other `.safetensors` files (no load reads them) are not listed.
fn sharded_weights(dir: &Path) -> Vec<String> {
    const INDEX: &str = "model.safetensors.index.json";
    let index = dir.join(INDEX);
    if !present(&index) {
        return Vec::new();
    }
    use crate::checkpoint::weights::{plain_shard_name, read_index};
    let mut shards: Vec<String> = read_index(&index)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, file)| file)
        .filter(|f| {
            plain_shard_name(f)
                && f.ends_with(".safetensors")
                && f != "model.safetensors"
                && dir.join(f).is_file()
        })
        .collect();
    shards.sort();
    shards.dedup();
    shards.insert(0, INDEX.to_string());
    shards
}

/// The line a conversion's summary gives the files [`Staging::commit`] removed (none: empty).
pub(crate) fn removed_line(removed: &[String]) -> String {
    if removed.is_empty() {
        return String::new();
    }
    format!(
        "removed from the output directory (left by the model that was there): {}\n",
        removed.join(", ")
    )
}

/// Where a conversion writes inside its output directory until it commits.
const STAGING_DIR: &str = ".moxe-partial";

/// A conversion's output in the making: its files are written into a hidden directory inside
/// the output directory ([`Staging::path`]) and moved into place by [`Staging::commit`] once
/// the whole conversion has succeeded, so a failed run (a corrupt input found halfway, a
/// full disk) leaves the output directory as it was. Dropped without a commit, it removes
/// what it wrote, and the output directory and its parents too where the conversion
/// created them.
pub(crate) struct Staging {
    output: PathBuf,
    dir: PathBuf,
    /// The files the conversion may write: one of them it did not write is removed from the
    /// output at commit (left over from an earlier model).
    files: Vec<String>,
    /// The earlier model's sharded weights, removed at commit.
    stale: Vec<String>,
    /// Directories the run created, innermost first.
    created: Vec<PathBuf>,
    committed: bool,
}

impl Staging {
    /// The staging directory (to open the result before it commits).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where to write output file `name` until the commit.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The path output file `name` has after the commit.
    pub fn final_path(&self, name: &str) -> PathBuf {
        self.output.join(name)
    }

    /// Moves the written files into the output directory, replacing those there, and removes
    /// the stale weights and the left-over files: returns the names of the files it removed
    /// without writing a new one in their place.
    pub fn commit(mut self) -> Result<Vec<String>> {
        let remove = |name: &str| -> Result<()> {
            let path = self.output.join(name);
            std::fs::remove_file(&path)
                .map_err(|e| Error::file(&path, format!("cannot remove: {e}")))
        };
        let mut removed = Vec::new();
        for name in &self.stale {
            remove(name)?;
            removed.push(name.clone());
        }
        for name in &self.files {
            if !self.dir.join(name).exists() && self.output.join(name).exists() {
                remove(name)?;
                removed.push(name.clone());
            }
        }
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::file(&self.dir, format!("cannot list: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::file(&self.dir, format!("cannot list: {e}")))?;
            let to = self.output.join(entry.file_name());
            std::fs::rename(entry.path(), &to)
                .map_err(|e| Error::file(&to, format!("cannot move into place: {e}")))?;
        }
        std::fs::remove_dir(&self.dir)
            .map_err(|e| Error::file(&self.dir, format!("cannot remove: {e}")))?;
        self.committed = true;
        Ok(removed)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: an error here must not hide the conversion's own.
            let _ = std::fs::remove_dir_all(&self.dir);
            for dir in &self.created {
                // Only while empty: nothing another process put there meanwhile is lost.
                if std::fs::remove_dir(dir).is_err() {
                    break;
                }
            }
        }
    }
}

/// Writes `input`'s config.json to `output` with the field `key` set to `value`, every other
/// field kept.
fn write_config_with(
    input: &Path,
    output: &Path,
    key: &str,
    value: serde_json::Value,
) -> Result<()> {
    let text = crate::checkpoint::files::read_text(input, crate::checkpoint::files::JSON_LIMIT)?;
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
