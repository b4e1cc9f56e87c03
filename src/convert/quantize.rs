//! `moxe quantize`: a model directory with its weight matrices quantised to q8 or q4
//! (docs/QUANT_FORMAT.md), on the CPU, streamed tensor by tensor from the memory-mapped
//! checkpoint.
//!
//! The matrices quantised are exactly those a load with `--dtype q8|q4` quantises: the
//! manifest's weight matrices ([`crate::checkpoint::Expected::matrix`]) whose rows hold at
//! least one block ([`DType::for_rows`]), each row quantised by the same
//! [`crate::quant::QuantFormat::quantize_row`]. Every other tensor is copied as stored, so
//! loading the result gives bit-identical logits to quantising the original at load.

use std::path::{Path, PathBuf};
use std::time::Instant;

use safetensors::tensor::Dtype;

use super::prepare_output;
use crate::checkpoint::quantized::{self, Planned};
use crate::checkpoint::{ModelDir, ProgressFn, Weights};
use crate::error::{Error, Result};
use crate::quant::QuantFormat;
use crate::tensor::{weight_stride, DType};

/// What a quantisation did.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub format: QuantFormat,
    /// Matrices quantised, and tensors copied as stored.
    pub quantized: usize,
    pub copied: usize,
    /// Weight bytes on disk before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub seconds: f64,
    /// The weights file written.
    pub weights: PathBuf,
    /// Files of an earlier model in the output directory removed with `overwrite` (a
    /// sharded checkpoint's index and shards, side files the input lacks).
    pub removed: Vec<String>,
}

impl QuantizeReport {
    /// A few lines for people.
    pub fn summary(&self) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        format!(
            "quantised {} matrices to {} and copied {} other tensors in {:.1} s\n\
             weights: {:.3} GiB -> {:.3} GiB ({:.2}x smaller) in {}\n",
            self.quantized,
            self.format,
            self.copied,
            self.seconds,
            gib(self.bytes_before),
            gib(self.bytes_after),
            self.bytes_before as f64 / self.bytes_after.max(1) as f64,
            self.weights.display()
        ) + &super::removed_line(&self.removed)
    }
}

/// Quantises the model directory `input` into `output` (created; with `overwrite` false,
/// existing files there are an error): `model.safetensors` with the quantised matrices,
/// `config.json` with a `"quantization"` entry, and the tokenizer and generation files.
/// `progress(done, total)` follows the weight bytes read.
pub fn quantize(
    input: &Path,
    output: &Path,
    format: QuantFormat,
    overwrite: bool,
    progress: Option<ProgressFn>,
) -> Result<QuantizeReport> {
    let started = Instant::now();
    let dir = ModelDir::open(input)?;
    let staging = prepare_output(input, output, overwrite)?;
    let weights_path = staging.path("model.safetensors");

    let w = &dir.weights;
    let target = DType::of_quant(format);
    let names = dir.manifest.kept(w);
    let plan: Vec<(String, Planned)> = names
        .iter()
        .map(|&name| {
            let shape = w.shape(name).expect("listed").to_vec();
            let cols = *shape.last().unwrap_or(&1);
            let quantize = dir.manifest.is_matrix(name) && target.for_rows(cols) == target;
            let planned = match (quantize, w.dtype(name)) {
                (true, _) => Planned::Quantized(shape),
                // A quantised tensor the model does not read as a matrix (a hand-made
                // file): it is dequantised to f32.
                (false, _) if w.quant(name).is_some() => Planned::Float(Dtype::F32, shape),
                (false, Some(d)) => Planned::Float(d, shape),
                (false, None) => unreachable!("listed tensors have a dtype"),
            };
            (name.to_string(), planned)
        })
        .collect();
    let bytes_before: u64 = names.iter().map(|n| w.stored_bytes(n)).sum();
    let work: u64 = plan
        .iter()
        .map(|(name, p)| planned_bytes(w, name, p, format))
        .sum();
    w.set_progress(progress, work);
    let result = quantized::write(&weights_path, format, &plan, |name, planned| {
        let shape = match planned {
            Planned::Float(_, _) if w.quant(name).is_none() => {
                let bytes = w.raw_tensor(name)?.2.to_vec();
                w.report(bytes.len() as u64);
                return Ok(bytes);
            }
            Planned::Float(_, shape) => shape,
            Planned::Quantized(shape) => shape,
        };
        let dtype = match planned {
            Planned::Float(..) => DType::F32,
            Planned::Quantized(_) => target,
        };
        tensor_bytes(&dir, name, shape, dtype)
    });
    w.set_progress(None, 0);
    result?;
    write_config(
        &input.join("config.json"),
        &staging.path("config.json"),
        format,
    )?;
    super::copy_side_files(input, &staging)?;
    // The result must load: check it the way every load does.
    ModelDir::open(staging.dir())?;
    let bytes_after = std::fs::metadata(&weights_path)
        .map_err(|e| Error::file(&weights_path, format!("cannot read: {e}")))?
        .len();
    let weights_path = staging.final_path("model.safetensors");
    let removed = staging.commit()?;
    Ok(QuantizeReport {
        format,
        quantized: plan
            .iter()
            .filter(|(_, p)| matches!(p, Planned::Quantized(_)))
            .count(),
        copied: plan
            .iter()
            .filter(|(_, p)| matches!(p, Planned::Float(..)))
            .count(),
        bytes_before,
        bytes_after,
        seconds: started.elapsed().as_secs_f64(),
        weights: weights_path,
        removed,
    })
}

/// The bytes [`quantize`] produces for a planned tensor (what its progress counts).
fn planned_bytes(w: &Weights, name: &str, planned: &Planned, format: QuantFormat) -> u64 {
    match planned {
        Planned::Quantized(shape) => {
            let rows: usize = shape[..shape.len() - 1].iter().product();
            (rows * format.row_bytes(*shape.last().unwrap_or(&1))) as u64
        }
        Planned::Float(_, shape) if w.quant(name).is_some() => {
            let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
            (rows * weight_stride(shape, DType::F32) * 4) as u64
        }
        Planned::Float(..) => w.stored_bytes(name),
    }
}

/// The bytes of tensor `name` (of `shape`) as `dtype`: f32 values, or a quantised matrix's
/// data rows followed by its scale rows (the order [`quantized::write`] takes).
fn tensor_bytes(dir: &ModelDir, name: &str, shape: &[usize], dtype: DType) -> Result<Vec<u8>> {
    let w = &dir.weights;
    let cols = *shape.last().unwrap_or(&1);
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    let stride = weight_stride(shape, dtype);
    let row_bytes = crate::tensor::fill_row_bytes(shape, dtype);
    // Rows in pieces of about 16 MiB, so a 7B embedding never needs two copies at once.
    let per = ((16 << 20) / row_bytes.max(1)).max(1);
    let mut buf = vec![0u8; per.min(rows.max(1)) * row_bytes];
    let Some(q) = dtype.quant() else {
        let mut out = Vec::with_capacity(rows * cols * 4);
        for start in (0..rows).step_by(per) {
            let end = (start + per).min(rows);
            let part = &mut buf[..(end - start) * row_bytes];
            w.fill_rows(name, start..end, dtype, stride, part)?;
            for row in part.chunks_exact(row_bytes) {
                out.extend_from_slice(&row[..cols * 4]);
            }
        }
        return Ok(out);
    };
    let (db, sb) = (q.data_row_bytes(cols), 4 * q.scale_row_words(cols));
    let mut data = Vec::with_capacity(rows * db);
    let mut scales = Vec::with_capacity(rows * sb);
    for start in (0..rows).step_by(per) {
        let end = (start + per).min(rows);
        let part = &mut buf[..(end - start) * row_bytes];
        w.fill_rows(name, start..end, dtype, stride, part)?;
        for row in part.chunks_exact(row_bytes) {
            data.extend_from_slice(&row[..db]);
            scales.extend_from_slice(&row[db..]);
        }
    }
    data.extend_from_slice(&scales);
    Ok(data)
}

/// config.json with `"quantization": {"format", "version", "block"}` added, every other
/// field kept.
fn write_config(input: &Path, output: &Path, format: QuantFormat) -> Result<()> {
    super::write_config_with(
        input,
        output,
        quantized::CONFIG_KEY,
        quantized::config_entry(format),
    )
}
