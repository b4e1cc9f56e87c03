//! Quantised checkpoints as `moxe quantize` writes them (docs/QUANT_FORMAT.md): every
//! quantised matrix `name` is two safetensors tensors, its packed data `name` (U8, (rows,
//! data bytes per row)) and its block scales `name.qscales` (U32, (rows, scale words per
//! row)), and the header's `__metadata__["moxe.quantization"]` is JSON naming the format
//! version, the format, the block size and the logical shape of every quantised tensor.
//!
//! Reading joins each pair into one logical tensor of its weights' shape, so the manifest
//! checks it like any other; everything inconsistent is an error naming file and tensor.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::Dtype;
use serde_json::{json, Value};

use super::weights::Entry;
use crate::error::{Error, Result};
use crate::quant::{QuantFormat, BLOCK};

/// The metadata key describing the quantised tensors of a file.
pub const METADATA_KEY: &str = "moxe.quantization";
/// The suffix of a quantised tensor's scales.
pub const SCALES_SUFFIX: &str = ".qscales";
/// The version of the format this build reads and writes.
pub const VERSION: u64 = 1;
/// The config.json key of a quantised model (`moxe quantize` adds it).
pub const CONFIG_KEY: &str = "quantization";

/// The value of [`CONFIG_KEY`] for `format`.
pub fn config_entry(format: QuantFormat) -> Value {
    json!({"format": format.name(), "version": VERSION, "block": BLOCK})
}

/// Checks a config.json's [`CONFIG_KEY`] (when present) against the weights: this build's
/// version, and the format of the quantised tensors. (A float config beside quantised
/// weights is fine: the weights say what they are.)
pub(crate) fn check_config(config: &Path, weights: &super::Weights) -> Result<()> {
    let Ok(text) = super::files::read_text(config, super::files::JSON_LIMIT) else {
        return Ok(()); // ModelConfig::from_file has reported it
    };
    let Ok(value) = serde_json::from_str::<Value>(&text) else {
        return Ok(());
    };
    let Some(entry) = value.get(CONFIG_KEY) else {
        return Ok(());
    };
    let bad = |what: String| Error::file(config, format!("\"{CONFIG_KEY}\": {what}"));
    let version = entry["version"]
        .as_u64()
        .ok_or_else(|| bad(format!("no \"version\" (expected {VERSION})")))?;
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, but this moxe reads version {VERSION} (quantised by a \
             newer moxe? update moxe, or quantise the float checkpoint with this one)"
        )));
    }
    let format = entry["format"].as_str().unwrap_or_default();
    if QuantFormat::from_name(format).is_none() {
        return Err(bad(format!(
            "unknown format {} (expected \"q8\" or \"q4\")",
            entry["format"]
        )));
    }
    if let Some(block) = entry
        .get("block")
        .filter(|b| b.as_u64() != Some(BLOCK as u64))
    {
        return Err(bad(format!(
            "block size {block}, but this moxe's {format} blocks hold {BLOCK} weights (the \
             weights' own metadata says so too)"
        )));
    }
    let found = weights.quant_formats();
    if found.len() != 1 || !found.contains(format) {
        let held = match found.len() {
            0 => "no quantised tensors".to_string(),
            _ => found.into_iter().collect::<Vec<_>>().join(" and "),
        };
        return Err(bad(format!(
            "the config says the weights are {format}, but {} holds {held} (a config from \
             another checkpoint?)",
            weights.path().display()
        )));
    }
    Ok(())
}

/// Joins the data and scales of each quantised tensor that `metadata` lists into one
/// logical entry; files without the key are returned as they are.
pub(crate) fn join(
    path: &Path,
    metadata: &HashMap<String, String>,
    entries: Vec<(String, Entry)>,
) -> Result<Vec<(String, Entry)>> {
    let Some(text) = metadata.get(METADATA_KEY) else {
        return Ok(entries);
    };
    let bad = |what: String| Error::file(path, format!("quantised checkpoint: {what}"));
    let info: Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("metadata '{METADATA_KEY}' is not JSON: {e}")))?;
    let version = info["version"]
        .as_u64()
        .ok_or_else(|| bad("no format version".into()))?;
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, but this moxe reads version {VERSION} (quantised by a \
             newer moxe? re-quantise it with this one)"
        )));
    }
    let format = info["format"]
        .as_str()
        .and_then(QuantFormat::from_name)
        .ok_or_else(|| {
            bad(format!(
                "unknown format {} (expected \"q8\" or \"q4\")",
                info["format"]
            ))
        })?;
    if info["block"].as_u64() != Some(BLOCK as u64) {
        return Err(bad(format!(
            "block size {}, expected {BLOCK}",
            info["block"]
        )));
    }
    let shapes = info["tensors"]
        .as_object()
        .ok_or_else(|| bad("no \"tensors\" map of logical shapes".into()))?;
    let mut map: BTreeMap<String, Entry> = entries.into_iter().collect();
    for (name, shape) in shapes {
        let shape: Vec<usize> = shape
            .as_array()
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .ok_or_else(|| bad(format!("shape of '{name}' is not a list of sizes: {shape}")))?;
        let cols = *shape
            .last()
            .ok_or_else(|| bad(format!("'{name}' has no dims")))?;
        let rows: usize = shape[..shape.len() - 1].iter().product();
        let scales = map
            .remove(&format!("{name}{SCALES_SUFFIX}"))
            .ok_or_else(|| bad(format!("tensor '{name}{SCALES_SUFFIX}' is missing")))?;
        let data = map
            .get_mut(name)
            .ok_or_else(|| bad(format!("tensor '{name}' is missing")))?;
        let want_data = [rows, format.data_row_bytes(cols)];
        let want_scales = [rows, format.scale_row_words(cols)];
        if data.dtype != Dtype::U8 || data.shape != want_data {
            return Err(bad(format!(
                "tensor '{name}': {format} of {shape:?} is U8 {want_data:?}, found {:?} {:?}",
                data.dtype, data.shape
            )));
        }
        if scales.dtype != Dtype::U32 || scales.shape != want_scales {
            return Err(bad(format!(
                "tensor '{name}{SCALES_SUFFIX}': {format} of {shape:?} is U32 {want_scales:?}, \
                 found {:?} {:?}",
                scales.dtype, scales.shape
            )));
        }
        data.shape = shape;
        data.quant = Some((format, scales.start, scales.end));
    }
    if let Some(stray) = map.keys().find(|n| n.ends_with(SCALES_SUFFIX)) {
        return Err(bad(format!(
            "tensor '{stray}' belongs to no listed quantised tensor"
        )));
    }
    Ok(map.into_iter().collect())
}

/// A tensor to write.
pub enum Planned {
    /// A float tensor copied as stored.
    Float(Dtype, Vec<usize>),
    /// A quantised matrix of this logical shape.
    Quantized(Vec<usize>),
}

/// Writes a safetensors file of `tensors` to `out`: quantised ones as data and scales in
/// `format`, named in the metadata. `bytes(name, planned)` makes one tensor's bytes at a
/// time (a quantised one's data followed by its scales), so the file streams out.
pub fn write(
    out: &Path,
    format: QuantFormat,
    tensors: &[(String, Planned)],
    mut bytes: impl FnMut(&str, &Planned) -> Result<Vec<u8>>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut logical = serde_json::Map::new();
    let mut at = 0usize;
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut place = |name: &str, dtype: &str, shape: &[usize], size: usize| {
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + size]}),
        );
        at += size;
    };
    for (name, t) in tensors {
        match t {
            Planned::Float(d, shape) => {
                let size = shape.iter().product::<usize>() * d.bitsize() / 8;
                place(name, dtype_name(*d), shape, size);
                sizes.push(size);
            }
            Planned::Quantized(shape) => {
                let cols = *shape.last().unwrap_or(&1);
                let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
                let (db, sw) = (format.data_row_bytes(cols), format.scale_row_words(cols));
                place(name, "U8", &[rows, db], rows * db);
                let sname = format!("{name}{SCALES_SUFFIX}");
                place(&sname, "U32", &[rows, sw], 4 * rows * sw);
                logical.insert(name.clone(), json!(shape));
                sizes.push(rows * (db + 4 * sw));
            }
        }
    }
    let meta = json!({
        "version": VERSION,
        "format": format.name(),
        "block": BLOCK,
        "tensors": logical,
    });
    header.insert(
        "__metadata__".into(),
        json!({"format": "pt", METADATA_KEY: meta.to_string()}),
    );
    let mut text = Value::Object(header).to_string();
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let write_error = |e: std::io::Error| Error::file(out, format!("cannot write: {e}"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(write_error)?);
    file.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    for ((name, t), size) in tensors.iter().zip(sizes) {
        let b = bytes(name, t)?;
        if b.len() != size {
            return Err(Error::InvalidArgument(format!(
                "tensor '{name}' made {} bytes, its header says {size}",
                b.len()
            )));
        }
        file.write_all(&b).map_err(write_error)?;
    }
    file.flush().map_err(write_error)
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::I32 => "I32",
        Dtype::I64 => "I64",
        Dtype::U32 => "U32",
        Dtype::U8 => "U8",
        _ => "F32",
    }
}
