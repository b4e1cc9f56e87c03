//! Reading safetensors files: every header field and tensor is validated before anything
//! reaches the GPU, and every problem names the file, the tensor, and expected vs found.
//!
//! Float tensors may be stored as f32, f16 or bf16; they are read as f32 and checked to be
//! finite (a NaN in a checkpoint would otherwise surface as silent garbage).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensorError};
use safetensors::SafeTensors;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::{DType, HostData, Tensor};

struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A parsed safetensors file held in memory.
pub struct Weights {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    entries: HashMap<String, Entry>,
    metadata: HashMap<String, String>,
}

fn header_error(e: SafeTensorError, file_len: usize) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("not a safetensors file: {file_len} bytes is too short for the 8-byte header length")
        }
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength => format!(
            "not a safetensors file or truncated: the header length field points past the end \
             of the {file_len}-byte file"
        ),
        SafeTensorError::InvalidHeader(e) => format!("corrupt header: not UTF-8 ({e})"),
        SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
            format!("corrupt header: {e} (unknown dtype or malformed JSON)")
        }
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "truncated or corrupt: the header's tensor offsets do not match the file size \
             ({file_len} bytes)"
        ),
        SafeTensorError::InvalidOffset(name) => {
            format!("corrupt header: tensor '{name}' has invalid data offsets")
        }
        SafeTensorError::TensorInvalidInfo => {
            "corrupt header: a tensor's byte size does not match its dtype and shape".into()
        }
        other => format!("invalid safetensors file: {other}"),
    }
}

impl Weights {
    /// Reads and validates a safetensors file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::file(
                path,
                match e.kind() {
                    std::io::ErrorKind::NotFound => "file not found".to_string(),
                    _ => format!("cannot read: {e}"),
                },
            )
        })?;
        Self::from_bytes(path.to_path_buf(), bytes)
    }

    /// Validates safetensors `bytes`; `path` names them in errors.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::file(&path, header_error(e, bytes.len())))?;
        let entries = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: info.data_offsets.0,
                    end: info.data_offsets.1,
                };
                (name, entry)
            })
            .collect();
        Ok(Weights {
            path,
            data_start: 8 + header_len,
            entries,
            metadata: metadata.metadata().clone().unwrap_or_default(),
            bytes,
        })
    }

    /// The file these weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Whether `name` is stored in a 16-bit float type (f16 or bf16).
    pub fn is_half(&self, name: &str) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| matches!(e.dtype, Dtype::F16 | Dtype::BF16))
    }

    /// The stored dtype of a tensor.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// A tensor as stored: dtype, shape and little-endian bytes (for copying it unchanged).
    pub fn raw_tensor(&self, name: &str) -> Result<(Dtype, &[usize], &[u8])> {
        let e = self.entry(name)?;
        Ok((e.dtype, &e.shape, self.raw(e)))
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| Error::file(&self.path, format!("missing tensor '{name}'")))
    }

    fn raw(&self, e: &Entry) -> &[u8] {
        &self.bytes[self.data_start + e.start..self.data_start + e.end]
    }

    /// A float tensor as f32 with its shape, without a shape check.
    pub fn f32_any(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let e = self.entry(name)?;
        let raw = self.raw(e);
        let values: Vec<f32> = match e.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::file(
                    &self.path,
                    format!("tensor '{name}': expected dtype F32, F16 or BF16, found {other:?}"),
                ))
            }
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::file(
                &self.path,
                format!(
                    "tensor '{name}': element {i} is {} (corrupt weights)",
                    values[i]
                ),
            ));
        }
        Ok((values, e.shape.clone()))
    }

    /// A float tensor as f32, checked to have `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        if e.shape != shape {
            return Err(Error::file(
                &self.path,
                format!(
                    "tensor '{name}': expected shape {shape:?}, found {:?}",
                    e.shape
                ),
            ));
        }
        Ok(self.f32_any(name)?.0)
    }

    /// An integer tensor (I32, I64, U32) as i64 with its shape.
    pub fn ints(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let e = self.entry(name)?;
        let raw = self.raw(e);
        let values = match e.dtype {
            Dtype::I32 => raw
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::U32 => raw
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            other => {
                return Err(Error::file(
                    &self.path,
                    format!("tensor '{name}': expected an integer dtype, found {other:?}"),
                ))
            }
        };
        Ok((values, e.shape.clone()))
    }

    /// A view of the tensors under `prefix` (e.g. `"layers.0.mixer.blocks.0."`).
    pub fn scope(&self, prefix: &str) -> Scope<'_> {
        Scope {
            weights: self,
            prefix: prefix.to_string(),
        }
    }
}

/// The tensors of one module: names are relative to a prefix.
#[derive(Clone)]
pub struct Scope<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> Scope<'a> {
    /// The full tensor name of `name`.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A nested scope.
    pub fn scope(&self, prefix: &str) -> Scope<'a> {
        Scope {
            weights: self.weights,
            prefix: self.name(prefix),
        }
    }

    /// The underlying file.
    pub fn weights(&self) -> &'a Weights {
        self.weights
    }

    /// Whether `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.weights.contains(&self.name(name))
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&'a [usize]> {
        self.weights.shape(&self.name(name))
    }

    /// f32 values of `name`, checked to have `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.weights.f32(&self.name(name), shape)
    }

    /// An f32 GPU vector (biases, norm weights) of `name` with shape `shape`.
    pub fn vector(&self, ctx: &Context, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.name(name);
        let values = self.weights.f32(&full, shape)?;
        Tensor::from_f32(ctx, &full, shape, &values)
    }

    /// A GPU weight matrix of `name` with shape `shape`, stored as `dtype` (f32 or f16).
    /// Values beyond f16's range are an error when storing as f16.
    pub fn matrix(
        &self,
        ctx: &Context,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let full = self.name(name);
        let values = self.weights.f32(&full, shape)?;
        // Beyond f16's range a value would become an infinity.
        if dtype == DType::F16 {
            if let Some(i) = values.iter().position(|v| v.abs() > f16::MAX.to_f32()) {
                return Err(Error::file(
                    self.weights.path(),
                    format!(
                        "tensor '{full}': element {i} = {} is beyond the f16 range (65504); \
                         load it as f32 (--dtype f32)",
                        values[i]
                    ),
                ));
            }
        }
        Tensor::weight(ctx, &full, shape, dtype, HostData::F32(&values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_f32_f16_and_bf16_as_f32() {
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        let b: Vec<u8> = [0.5f32, 3.0]
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect();
        let bytes = file(&[
            ("a", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0])),
            ("h", Dtype::F16, vec![2], h),
            ("b", Dtype::BF16, vec![1, 2], b),
        ]);
        let w = Weights::from_bytes("m.safetensors".into(), bytes).unwrap();
        assert_eq!(w.f32("a", &[2]).unwrap(), vec![1.0, 2.0]);
        assert_eq!(w.f32("h", &[2]).unwrap(), vec![1.5, -2.0]);
        assert_eq!(w.f32("b", &[1, 2]).unwrap(), vec![0.5, 3.0]);
    }

    #[test]
    fn values_beyond_f16_are_refused_when_storing_f16() {
        let bytes = file(&[("w", Dtype::F32, vec![1, 2], f32_bytes(&[1.0, 70000.0]))]);
        let w = Weights::from_bytes("m.safetensors".into(), bytes).unwrap();
        let ctx = crate::testing::gpu();
        let err = w
            .scope("")
            .matrix(ctx, "w", &[1, 2], DType::F16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'w'") && err.contains("70000") && err.contains("--dtype f32"),
            "{err}"
        );
        assert!(w.scope("").matrix(ctx, "w", &[1, 2], DType::F32).is_ok());
    }

    #[test]
    fn problems_name_file_tensor_and_expectation() {
        let bytes = file(&[
            (
                "w",
                Dtype::F32,
                vec![2, 2],
                f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
            ),
            ("nan", Dtype::F32, vec![2], f32_bytes(&[1.0, f32::NAN])),
            ("i", Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec()),
        ]);
        let w = Weights::from_bytes("m.safetensors".into(), bytes.clone()).unwrap();
        let err = w.f32("w", &[4]).unwrap_err().to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("expected shape [4], found [2, 2]"),
            "{err}"
        );
        let err = w.f32("missing", &[1]).unwrap_err().to_string();
        assert!(err.contains("missing tensor 'missing'"), "{err}");
        let err = w.f32_any("nan").unwrap_err().to_string();
        assert!(err.contains("'nan'") && err.contains("NaN"), "{err}");
        let err = w.f32_any("i").unwrap_err().to_string();
        assert!(
            err.contains("expected dtype F32, F16 or BF16, found I64"),
            "{err}"
        );
        assert_eq!(w.ints("i").unwrap().0, vec![7]);

        let truncated = bytes[..bytes.len() - 3].to_vec();
        let err = Weights::from_bytes("m.safetensors".into(), truncated)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = Weights::from_bytes("m.safetensors".into(), vec![1, 2, 3])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
        let mut garbage = bytes.clone();
        garbage[8..16].copy_from_slice(b"not json");
        let err = Weights::from_bytes("m.safetensors".into(), garbage)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("corrupt header"), "{err}");
        let err = Weights::open(Path::new("/no/such/model.safetensors"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("/no/such/model.safetensors: file not found"),
            "{err}"
        );
    }
}
