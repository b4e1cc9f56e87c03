//! The tensors of a checkpoint: one safetensors file, or the shards a Hugging Face index
//! (`model.safetensors.index.json`) or the xlstm_large package (`model_0.safetensors`, ..)
//! spread them over. Files are memory-mapped: a tensor's bytes go from the page cache straight
//! into the GPU buffer that holds it ([`Scope::matrix`]), converted row by row, so loading
//! needs no second copy of the checkpoint in memory.
//!
//! Every header field and tensor is validated before anything reaches the GPU, and every
//! problem names the file, the tensor, and expected vs found. Float tensors may be stored as
//! f32, f16 or bf16; values are checked to be finite as they are read (a NaN in a checkpoint
//! would otherwise surface as silent garbage).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use safetensors::tensor::{Dtype, SafeTensorError};
use safetensors::SafeTensors;

use super::values::{convert_row, random_row, RandomInit};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::quant::QuantFormat;
use crate::tensor::{DType, Tensor};

/// Called with the bytes of weight matrices written to the GPU so far and the total expected.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Where one file's bytes are.
enum Storage {
    Bytes(Vec<u8>),
    Mapped(memmap2::Mmap),
    /// Random values made on demand (benchmarks need no checkpoint).
    Random(u64),
}

/// One safetensors file (or the random source).
struct Shard {
    path: PathBuf,
    storage: Storage,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    metadata: HashMap<String, String>,
    /// Names read through a metadata alias (`save_model`'s dropped names), not stored.
    aliases: std::collections::HashSet<String>,
}

impl Shard {
    fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Bytes(b) => b,
            Storage::Mapped(m) => m,
            Storage::Random(_) => &[],
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) shard: usize,
    pub(crate) dtype: Dtype,
    /// The logical shape (of a quantised tensor: of its weights, not of its packed bytes).
    pub(crate) shape: Vec<usize>,
    /// The data's byte range in the shard's data section.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// How a random source makes this tensor's values.
    pub(crate) init: RandomInit,
    /// A quantised tensor: its format and its scales' byte range.
    pub(crate) quant: Option<(QuantFormat, usize, usize)>,
}

/// Whether an index's shard `file` is a plain file name of the index's directory (never a
/// path elsewhere).
pub fn plain_shard_name(file: &str) -> bool {
    !(file.contains('/') || file.contains('\\') || matches!(file, "" | "." | ".."))
}

/// The index of a sharded checkpoint: its tensors, each with the shard file that holds it
/// as the index gives it ([`plain_shard_name`] tells whether it may be read).
pub fn read_index(index: &Path) -> Result<Vec<(String, String)>> {
    let text = super::files::read_text(index, super::files::JSON_LIMIT)?;
    let value: serde_json::Value = super::files::parse_json(index, &text)?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            Error::file(
                index,
                "no \"weight_map\" object (tensor name -> shard file): not a safetensors index",
            )
        })?;
    map.iter()
        .map(|(name, file)| {
            let file = file.as_str().ok_or_else(|| {
                Error::file(
                    index,
                    format!("weight_map.\"{name}\": expected a shard file name, found {file}"),
                )
            })?;
            Ok((name.clone(), file.to_string()))
        })
        .collect()
}

/// FNV-1a's offset basis: the digest of nothing.
pub(crate) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes` continued from `h`.
pub(crate) fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// `bytes` into digest `h`: all of them up to 1 KiB, else 64 windows of 16 spread over them.
fn sample_digest(h: u64, bytes: &[u8]) -> u64 {
    if bytes.len() <= 1024 {
        return fnv1a(h, bytes);
    }
    (0..64).fold(h, |h, i| {
        let at = i * (bytes.len() - 16) / 63;
        fnv1a(h, &bytes[at..at + 16])
    })
}

/// A checkpoint's tensors (one or several files).
pub struct Weights {
    /// The file naming the checkpoint in errors (the index of a sharded one).
    path: PathBuf,
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    /// Upload progress: the callback and the total bytes expected.
    progress: Mutex<Option<(ProgressFn, u64)>>,
    uploaded: std::sync::atomic::AtomicU64,
}

fn header_error(e: SafeTensorError, file_len: usize) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("not a safetensors file: {file_len} bytes is too short for the 8-byte header length")
        }
        // The safetensors crate's bound on headers (every reader built on it refuses these).
        SafeTensorError::HeaderTooLarge => {
            "the header length field gives a header of more than 100,000,000 bytes, the most a \
             safetensors reader takes (a corrupt or not a safetensors file)"
                .to_string()
        }
        SafeTensorError::InvalidHeaderLength => format!(
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

fn read_error(path: &Path, e: std::io::Error) -> Error {
    Error::file(
        path,
        match e.kind() {
            std::io::ErrorKind::NotFound => "file not found".to_string(),
            _ => format!("cannot read: {e}"),
        },
    )
}

/// Parses a file's header: its tensors (shard index `shard`) and metadata.
fn parse_shard(
    path: PathBuf,
    storage: Storage,
    shard: usize,
) -> Result<(Shard, Vec<(String, Entry)>)> {
    let bytes = match &storage {
        Storage::Bytes(b) => &b[..],
        Storage::Mapped(m) => &m[..],
        Storage::Random(_) => unreachable!("random sources have no header"),
    };
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| {
        let message =
            super::header::diagnose(bytes).unwrap_or_else(|| header_error(e, bytes.len()));
        Error::file(&path, message)
    })?;
    let entries = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let init = RandomInit::default_for(info.shape.len());
            let entry = Entry {
                shard,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: info.data_offsets.0,
                end: info.data_offsets.1,
                init,
                quant: None,
            };
            (name, entry)
        })
        .collect();
    let mut entries: Vec<(String, Entry)> = entries;
    let shard_metadata = metadata.metadata().clone().unwrap_or_default();
    // safetensors' `save_model` stores a tensor shared by two names once and records the
    // dropped name in the metadata, as `"dropped": "kept"`: the dropped name reads the kept
    // tensor.
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|(n, e)| (n.as_str(), e)).collect();
    let aliases: Vec<(String, Entry)> = shard_metadata
        .iter()
        .filter(|(dropped, _)| !by_name.contains_key(dropped.as_str()))
        .filter_map(|(dropped, kept)| {
            Some((dropped.clone(), (*by_name.get(kept.as_str())?).clone()))
        })
        .collect();
    let alias_names = aliases.iter().map(|(n, _)| n.clone()).collect();
    entries.extend(aliases);
    let shard = Shard {
        path,
        data_start: 8 + header_len,
        metadata: shard_metadata,
        aliases: alias_names,
        storage,
    };
    let entries = super::quantized::join(&shard.path, &shard.metadata, entries)?;
    Ok((shard, entries))
}

fn map_file(path: &Path) -> Result<Storage> {
    super::files::check_regular(path, u64::MAX)?;
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    // SAFETY: the map is read-only; like every reader of memory-mapped checkpoints we assume
    // that no other process truncates or rewrites the file while the model loads.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| read_error(path, e))?;
    Ok(Storage::Mapped(map))
}

impl Weights {
    fn new(path: PathBuf, shards: Vec<Shard>, entries: HashMap<String, Entry>) -> Self {
        Weights {
            path,
            shards,
            entries,
            progress: Mutex::new(None),
            uploaded: Default::default(),
        }
    }

    /// Opens and validates one safetensors file (memory-mapped).
    pub fn open(path: &Path) -> Result<Self> {
        let storage = map_file(path)?;
        let (shard, entries) = parse_shard(path.to_path_buf(), storage, 0)?;
        Ok(Self::new(
            path.to_path_buf(),
            vec![shard],
            entries.into_iter().collect(),
        ))
    }

    /// Validates safetensors `bytes` held in memory; `path` names them in errors.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let (shard, entries) = parse_shard(path.clone(), Storage::Bytes(bytes), 0)?;
        Ok(Self::new(path, vec![shard], entries.into_iter().collect()))
    }

    /// Opens the shards a Hugging Face `model.safetensors.index.json` names. A shard file
    /// that is missing, an index entry whose shard lacks the tensor, or a malformed index is
    /// an error naming the file.
    pub fn open_index(index: &Path) -> Result<Self> {
        let map = read_index(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: BTreeMap<String, usize> = BTreeMap::new();
        let mut wanted: Vec<(String, usize)> = Vec::with_capacity(map.len());
        for (name, file) in map {
            if !plain_shard_name(&file) {
                return Err(Error::file(
                    index,
                    format!(
                        "weight_map.\"{name}\": shard '{file}' is not a file name in the model \
                         directory"
                    ),
                ));
            }
            let n = files.len();
            let shard = *files.entry(file).or_insert(n);
            wanted.push((name, shard));
        }
        let mut shards: Vec<Option<Shard>> = (0..files.len()).map(|_| None).collect();
        let mut held: Vec<HashMap<String, Entry>> = vec![HashMap::new(); files.len()];
        for (file, &i) in &files {
            let path = dir.join(file);
            if !super::files::present(&path) {
                return Err(Error::file(
                    index,
                    format!(
                        "shard '{file}' is missing from {} (an incomplete download?)",
                        dir.display()
                    ),
                ));
            }
            let (shard, entries) = parse_shard(path.clone(), map_file(&path)?, i)?;
            shards[i] = Some(shard);
            held[i] = entries.into_iter().collect();
        }
        let mut entries = HashMap::with_capacity(wanted.len());
        for (name, shard) in wanted {
            let entry = held[shard].remove(&name).ok_or_else(|| {
                let file = files
                    .iter()
                    .find(|(_, &i)| i == shard)
                    .map_or("?", |(f, _)| f.as_str());
                Error::file(
                    index,
                    format!("names tensor '{name}' in shard '{file}', which does not hold it"),
                )
            })?;
            entries.insert(name, entry);
        }
        // A tensor the index does not assign (a second copy, or a shard of another download).
        for (file, &i) in &files {
            let shard = shards[i].as_ref().expect("every shard opened");
            let stored = held[i].keys().filter(|n| !shard.aliases.contains(*n));
            if let Some(name) = stored.min() {
                return Err(Error::file(
                    index,
                    format!(
                        "shard '{file}' holds tensor '{name}', which weight_map does not assign \
                         to it (an index and shards of different checkpoints?)"
                    ),
                ));
            }
        }
        let shards = shards
            .into_iter()
            .map(|s| s.expect("every shard opened"))
            .collect();
        Ok(Self::new(index.to_path_buf(), shards, entries))
    }

    /// Opens `files` together, as one checkpoint whose tensors they split between them (the
    /// xlstm_large package's `model_0.safetensors`, `model_1.safetensors`, ..). A tensor in
    /// two files is an error.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let (shard, list) = parse_shard(path.clone(), map_file(path)?, i)?;
            for (name, entry) in list {
                if let Some(first) = entries.get(&name) {
                    return Err(Error::file(
                        path,
                        format!(
                            "tensor '{name}' is also in '{}': shards must not overlap",
                            files[first.shard].display()
                        ),
                    ));
                }
                entries.insert(name, entry);
            }
            shards.push(shard);
        }
        let path = files.first().cloned().unwrap_or_default();
        Ok(Self::new(path, shards, entries))
    }

    /// Random weights with the names and shapes `tensors` lists (name, shape, stored dtype,
    /// how to draw the values), made on demand from `seed` when read.
    pub fn random(seed: u64, tensors: Vec<(String, Vec<usize>, Dtype, RandomInit)>) -> Self {
        let shard = Shard {
            path: PathBuf::from("<random weights>"),
            storage: Storage::Random(seed),
            data_start: 0,
            metadata: HashMap::new(),
            aliases: Default::default(),
        };
        let mut entries = HashMap::new();
        let mut at = 0;
        for (name, shape, dtype, init) in tensors {
            let bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            entries.insert(
                name,
                Entry {
                    shard: 0,
                    dtype,
                    shape,
                    start: at,
                    end: at + bytes,
                    init,
                    quant: None,
                },
            );
            at += bytes;
        }
        Self::new(PathBuf::from("<random weights>"), vec![shard], entries)
    }

    /// The checkpoint these weights came from (the index file of a sharded checkpoint).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file that holds `name` (for a sharded checkpoint, its shard).
    pub fn file_of(&self, name: &str) -> &Path {
        self.entries
            .get(name)
            .map_or(&self.path, |e| &self.shards[e.shard].path)
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

    /// Whether `name` is read through a metadata alias (safetensors' `save_model` keeps a
    /// shared tensor once and maps the dropped name to the kept one), not stored itself.
    pub fn is_alias(&self, name: &str) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| self.shards[e.shard].aliases.contains(name))
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

    /// The stored dtype of a tensor (of a quantised one: U8, its packed data's).
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// The format of a quantised tensor; `None` for float (or missing) tensors.
    pub fn quant(&self, name: &str) -> Option<QuantFormat> {
        self.entries.get(name).and_then(|e| e.quant.map(|q| q.0))
    }

    /// The quantisation formats of the tensors (empty for a float checkpoint).
    pub fn quant_formats(&self) -> std::collections::BTreeSet<&'static str> {
        self.entries
            .values()
            .filter_map(|e| e.quant.map(|q| q.0.name()))
            .collect()
    }

    /// Bytes of the stored tensor `name` (a quantised one's data and scales).
    pub fn stored_bytes(&self, name: &str) -> u64 {
        self.entries.get(name).map_or(0, |e| {
            let scales = e.quant.map_or(0, |(_, start, end)| end - start);
            (e.end - e.start + scales) as u64
        })
    }

    /// Whether tensors `a` and `b` hold the same values (as stored, or as f32 where their
    /// storage differs); both must be present, with the same shape.
    pub fn same_values(&self, a: &str, b: &str) -> Result<bool> {
        let (ea, eb) = (self.entry(a)?, self.entry(b)?);
        if ea.quant.is_none() && eb.quant.is_none() && ea.dtype == eb.dtype {
            return Ok(self.raw(a, ea)? == self.raw(b, eb)?);
        }
        let cols = *ea.shape.last().unwrap_or(&1);
        let rows: usize = ea.shape[..ea.shape.len().saturating_sub(1)]
            .iter()
            .product();
        let (mut ra, mut rb) = (vec![0u8; 4 * cols], vec![0u8; 4 * cols]);
        for r in 0..rows {
            self.fill_rows(a, r..r + 1, DType::F32, cols, &mut ra)?;
            self.fill_rows(b, r..r + 1, DType::F32, cols, &mut rb)?;
            if ra != rb {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A tensor as stored: dtype, shape and little-endian bytes (for copying it unchanged;
    /// its values are checked finite, as a load checks them).
    pub fn raw_tensor(&self, name: &str) -> Result<(Dtype, &[usize], &[u8])> {
        let e = self.entry(name)?;
        if let Some((format, ..)) = e.quant {
            return Err(Error::file(
                &self.shards[e.shard].path,
                format!(
                    "tensor '{name}' is quantised ({format}); this needs the float checkpoint \
                     it was quantised from"
                ),
            ));
        }
        let bytes = self.raw(name, e)?;
        // A copy is checked as a load checks it: every value finite.
        super::values::check_finite(bytes, e.dtype).map_err(|(i, what)| {
            Error::file(
                &self.shards[e.shard].path,
                format!("tensor '{name}': element {i} {what}"),
            )
        })?;
        Ok((e.dtype, &e.shape, bytes))
    }

    /// The `__metadata__` map of the (first) file's header.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.shards[0].metadata
    }

    /// Reports the bytes of matrices [`Weights::fill_rows`] writes from now on to
    /// `progress`, out of `total`.
    pub fn set_progress(&self, progress: Option<ProgressFn>, total: u64) {
        *self.progress.lock().expect("progress poisoned") = progress.map(|p| (p, total));
        self.uploaded.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts `bytes` more of work done towards the progress set by
    /// [`Weights::set_progress`] ([`Weights::fill_rows`] counts the bytes it writes).
    pub(crate) fn report(&self, bytes: u64) {
        let done = self
            .uploaded
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            + bytes;
        if let Some((p, total)) = self.progress.lock().expect("progress poisoned").as_ref() {
            p(done, *total);
        }
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| Error::file(&self.path, format!("missing tensor '{name}'")))
    }

    /// A digest of the checkpoint as stored, to tell two apart cheaply: every tensor's name,
    /// dtype and shape, and a sample of its bytes (64 windows of 16 bytes spread over its
    /// data and scales, all of them when fewer than 1 KiB), or the random source's seed.
    pub fn digest(&self) -> u64 {
        let mut names = self.names();
        names.sort_unstable();
        let mut h = FNV_START;
        for name in names {
            let e = &self.entries[name];
            h = fnv1a(h, name.as_bytes());
            h = fnv1a(h, format!("{:?} {:?}", e.dtype, e.shape).as_bytes());
            let shard = &self.shards[e.shard];
            if let Storage::Random(seed) = shard.storage {
                h = fnv1a(h, &seed.to_le_bytes());
                continue;
            }
            let data = &shard.bytes()[shard.data_start..];
            let scales = e.quant.map(|(_, s0, s1)| (s0, s1));
            for (a, b) in std::iter::once((e.start, e.end)).chain(scales) {
                h = sample_digest(h, &data[a..b]);
            }
        }
        h
    }

    fn raw(&self, name: &str, e: &Entry) -> Result<&[u8]> {
        let shard = &self.shards[e.shard];
        if let Storage::Random(_) = shard.storage {
            return Err(Error::InvalidArgument(format!(
                "tensor '{name}' of random weights has no stored bytes"
            )));
        }
        Ok(&shard.bytes()[shard.data_start + e.start..shard.data_start + e.end])
    }

    fn float_dtype(&self, name: &str, e: &Entry) -> Result<()> {
        if e.quant.is_some() {
            return Ok(());
        }
        match e.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
            other => Err(Error::file(
                &self.shards[e.shard].path,
                format!("tensor '{name}': expected dtype F32, F16 or BF16, found {other:?}"),
            )),
        }
    }

    /// Checks that `name` exists with `shape` and a float dtype.
    pub fn check_float(&self, name: &str, shape: &[usize]) -> Result<()> {
        let e = self.entry(name)?;
        if e.shape != shape {
            return Err(Error::file(
                &self.shards[e.shard].path,
                format!(
                    "tensor '{name}': expected shape {shape:?}, found {:?}",
                    e.shape
                ),
            ));
        }
        self.float_dtype(name, e)
    }

    /// Writes rows `rows` of the float (or quantised) tensor `name` (rows x `cols` as stored,
    /// `cols` its last dim) into `out` as `dtype`: F32, F16 or BF16 rows `stride` elements
    /// apart, or for Q8 and Q4 each row's quantised data then its scales ([`crate::quant`];
    /// `stride` unused). Values are checked to be finite, and within f16's range when
    /// converted to f16. A quantised tensor loaded in its own format is copied as stored.
    pub fn fill_rows(
        &self,
        name: &str,
        rows: Range<usize>,
        dtype: DType,
        stride: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let e = self.entry(name)?;
        self.float_dtype(name, e)?;
        let cols = *e.shape.last().unwrap_or(&1);
        let path = &self.shards[e.shard].path;
        let element_error = |r: usize| {
            move |(col, what): (usize, String)| {
                Error::file(
                    path,
                    format!("tensor '{name}': element {} {what}", r * cols + col),
                )
            }
        };
        if let Some(target) = dtype.quant() {
            let (row_bytes, data_bytes) = (target.row_bytes(cols), target.data_row_bytes(cols));
            let out = &mut out[..rows.len() * row_bytes];
            for_each_row(rows.clone(), row_bytes, out, |r, dst| {
                if e.quant.map(|q| q.0) == Some(target) {
                    return self.quantized_row(name, e, r, dst);
                }
                let mut values = vec![0u8; 4 * cols];
                self.row_as(name, e, r, DType::F32, &mut values)
                    .map_err(element_error(r))?;
                let (data, s) = dst.split_at_mut(data_bytes);
                let row: Vec<f32> = bytemuck::pod_collect_to_vec(&values);
                let mut scales = vec![0u32; target.scale_row_words(cols)];
                target.quantize_row(&row, data, &mut scales);
                s.copy_from_slice(bytemuck::cast_slice(&scales));
                Ok(())
            })?;
            self.report((rows.len() * row_bytes) as u64);
            return Ok(());
        }
        let esize = dtype.size();
        let row_bytes = stride * esize;
        for_each_row(rows.clone(), row_bytes, out, |r, dst| {
            self.row_as(name, e, r, dtype, &mut dst[..cols * esize])
                .map_err(element_error(r))
        })?;
        self.report((rows.len() * cols * esize) as u64);
        Ok(())
    }

    /// Row `r` of tensor `name` converted into `dst` as the float type `dtype` (cols
    /// elements).
    fn row_as(
        &self,
        name: &str,
        e: &Entry,
        r: usize,
        dtype: DType,
        dst: &mut [u8],
    ) -> std::result::Result<(), super::values::Problem> {
        let cols = *e.shape.last().unwrap_or(&1);
        let shard = &self.shards[e.shard];
        if let Storage::Random(seed) = shard.storage {
            random_row(seed, name, e.init, &e.shape, r, e.dtype, dst, dtype);
            return Ok(());
        }
        let bytes = &shard.bytes()[shard.data_start..];
        match e.quant {
            Some((q, s0, _)) => {
                let (db, sw) = (q.data_row_bytes(cols), q.scale_row_words(cols));
                let data = &bytes[e.start + r * db..e.start + (r + 1) * db];
                let scales: Vec<u32> =
                    bytemuck::pod_collect_to_vec(&bytes[s0 + r * 4 * sw..s0 + (r + 1) * 4 * sw]);
                // As strict as a load that keeps the blocks (quantized_row).
                if let Some((b, what)) = q.bad_scale(&scales, cols) {
                    return Err((
                        b * crate::quant::BLOCK,
                        format!(
                            "(row {r}, block {b}): {what} gives non-finite weights (corrupt data)"
                        ),
                    ));
                }
                let values = q.dequantize_row(data, &scales, cols);
                convert_row(bytemuck::cast_slice(&values), Dtype::F32, dst, dtype)
            }
            None => {
                let size = e.dtype.bitsize() / 8;
                let src = &bytes[e.start + r * cols * size..e.start + (r + 1) * cols * size];
                convert_row(src, e.dtype, dst, dtype)
            }
        }
    }

    /// Row `r` of the quantised tensor `name` as stored: its data then its scales.
    fn quantized_row(&self, name: &str, e: &Entry, r: usize, dst: &mut [u8]) -> Result<()> {
        let (q, s0, _) = e.quant.expect("a quantised entry");
        let cols = *e.shape.last().unwrap_or(&1);
        let (db, sb) = (q.data_row_bytes(cols), 4 * q.scale_row_words(cols));
        let bytes = self.raw(name, e)?;
        let shard = &self.shards[e.shard];
        let all = &shard.bytes()[shard.data_start..];
        let scales = &all[s0 + r * sb..s0 + (r + 1) * sb];
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(scales);
        if let Some((b, what)) = q.bad_scale(&words, cols) {
            return Err(Error::file(
                &shard.path,
                format!(
                    "tensor '{name}{}': row {r}, block {b}: {what} gives non-finite weights \
                     (corrupt weights)",
                    super::quantized::SCALES_SUFFIX
                ),
            ));
        }
        dst[..db].copy_from_slice(&bytes[r * db..(r + 1) * db]);
        dst[db..].copy_from_slice(scales);
        Ok(())
    }

    /// A float tensor as f32 with its shape, without a shape check.
    pub fn f32_any(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let e = self.entry(name)?;
        self.float_dtype(name, e)?;
        let numel: usize = e.shape.iter().product();
        let cols = (*e.shape.last().unwrap_or(&1)).max(1);
        let rows = if numel == 0 { 0 } else { numel / cols };
        let mut bytes = vec![0u8; numel * 4];
        let progress = self.progress.lock().expect("progress poisoned").take();
        let filled = self.fill_rows(name, 0..rows, DType::F32, cols, &mut bytes);
        *self.progress.lock().expect("progress poisoned") = progress;
        filled?;
        Ok((bytemuck::pod_collect_to_vec(&bytes), e.shape.clone()))
    }

    /// A float tensor as f32, checked to have `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.check_float(name, shape)?;
        Ok(self.f32_any(name)?.0)
    }

    /// An integer tensor (I32, I64, U32) as i64 with its shape.
    pub fn ints(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let e = self.entry(name)?;
        let raw = self.raw(name, e)?;
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
                    &self.shards[e.shard].path,
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

/// Rows of a matrix made by stacking stored tensors: part `i` is the stored tensor
/// `parts[i].0`, contributing its `parts[i].1` rows.
fn fill_stacked(
    weights: &Weights,
    parts: &[(String, usize)],
    rows: Range<usize>,
    dtype: DType,
    stride: usize,
    row_bytes: usize,
    out: &mut [u8],
) -> Result<()> {
    let mut base = 0;
    for (name, n) in parts {
        let part = base..base + n;
        let lo = rows.start.max(part.start);
        let hi = rows.end.min(part.end);
        if lo < hi {
            let at = (lo - rows.start) * row_bytes;
            weights.fill_rows(
                name,
                lo - base..hi - base,
                dtype,
                stride,
                &mut out[at..(hi - rows.start) * row_bytes],
            )?;
        }
        base += n;
    }
    Ok(())
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

    /// The underlying checkpoint.
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

    /// An f32 GPU vector made by concatenating the vectors `parts` (name and length); a
    /// `None` name contributes zeros (e.g. the missing biases of a fused projection).
    pub fn vectors(
        &self,
        ctx: &Context,
        label: &str,
        parts: &[(Option<&str>, usize)],
    ) -> Result<Tensor> {
        let mut values = Vec::new();
        for (name, n) in parts {
            match name {
                Some(name) => values.extend(self.f32(name, &[*n])?),
                None => values.extend(std::iter::repeat_n(0.0, *n)),
            }
        }
        Tensor::from_f32(ctx, &self.name(label), &[values.len()], &values)
    }

    /// A GPU weight matrix of `name` with shape `shape`, stored as `dtype` (f32, f16, bf16,
    /// or quantised as q8 or q4 where rows are a block long: [`DType::for_rows`]), streamed
    /// from the checkpoint row by row. Values beyond f16's range are an error when storing
    /// as f16.
    pub fn matrix(
        &self,
        ctx: &Context,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let full = self.name(name);
        self.weights.check_float(&full, shape)?;
        let dtype = dtype.for_rows(*shape.last().unwrap_or(&1));
        Tensor::weight_with(ctx, &full, shape, dtype, &mut |rows, out| {
            self.weights.fill_rows(
                &full,
                rows,
                dtype,
                crate::tensor::weight_stride(shape, dtype),
                out,
            )
        })
    }

    /// A GPU weight matrix (rows, cols) made by stacking the 2-D tensors `parts` (name and
    /// rows, each with `cols` columns) row-wise, e.g. separate q, k, v projections as one
    /// fused matrix; streamed like [`Scope::matrix`].
    pub fn stacked_matrix(
        &self,
        ctx: &Context,
        label: &str,
        parts: &[(&str, usize)],
        cols: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let full: Vec<(String, Vec<usize>)> = parts
            .iter()
            .map(|(name, rows)| (self.name(name), vec![*rows, cols]))
            .collect();
        let rows: usize = parts.iter().map(|p| p.1).sum();
        self.stacked(ctx, label, &full, &[rows, cols], dtype)
    }

    /// A headwise weight (P NH, O, I) made by stacking the P headwise tensors `names`, each
    /// (NH, O, I) = `shape` (for [`crate::ops::matmul::headwise_stacked`]).
    pub fn stacked_headwise(
        &self,
        ctx: &Context,
        label: &str,
        names: &[&str],
        shape: [usize; 3],
        dtype: DType,
    ) -> Result<Tensor> {
        let full: Vec<(String, Vec<usize>)> = names
            .iter()
            .map(|name| (self.name(name), shape.to_vec()))
            .collect();
        let [heads, o, i] = shape;
        self.stacked(ctx, label, &full, &[names.len() * heads, o, i], dtype)
    }

    /// Stacks the tensors `parts` (full name, stored shape) along their rows (all dims but
    /// the last) into one GPU weight of `shape`.
    fn stacked(
        &self,
        ctx: &Context,
        label: &str,
        parts: &[(String, Vec<usize>)],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        for (name, part_shape) in parts {
            self.weights.check_float(name, part_shape)?;
        }
        let rows: Vec<(String, usize)> = parts
            .iter()
            .map(|(name, s)| (name.clone(), s[..s.len() - 1].iter().product()))
            .collect();
        let dtype = dtype.for_rows(*shape.last().unwrap_or(&1));
        let stride = crate::tensor::weight_stride(shape, dtype);
        let row_bytes = crate::tensor::fill_row_bytes(shape, dtype);
        Tensor::weight_with(ctx, &self.name(label), shape, dtype, &mut |range, out| {
            fill_stacked(self.weights, &rows, range, dtype, stride, row_bytes, out)
        })
    }
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("files", &self.shards.len())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// Tensors of at least this many bytes are filled on every core.
const PARALLEL_FILL_BYTES: usize = 1 << 20;

/// Calls `fill(r, dst)` for every row `r` of `rows`, `dst` being its `row_bytes` of `out`
/// (rows laid out from the start of `out`; the last may be shorter). Rows are independent
/// (read and converted, drawn, or quantised one by one), so a large tensor's rows are split
/// over the cores in contiguous runs. The error of the lowest failing run is returned.
fn for_each_row<F>(rows: Range<usize>, row_bytes: usize, out: &mut [u8], fill: F) -> Result<()>
where
    F: Fn(usize, &mut [u8]) -> Result<()> + Sync,
{
    let n = rows.len();
    let used = (n * row_bytes).min(out.len());
    let out = &mut out[..used];
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = if out.len() >= PARALLEL_FILL_BYTES {
        cores.min(n)
    } else {
        1
    };
    let run = |first: usize, part: &mut [u8]| {
        part.chunks_mut(row_bytes.max(1))
            .enumerate()
            .try_for_each(|(i, dst)| fill(first + i, dst))
    };
    if threads <= 1 {
        return run(rows.start, out);
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let mut rest = out;
        let workers: Vec<_> = (0..n)
            .step_by(per)
            .map(|lo| {
                let take = ((n.min(lo + per) - lo) * row_bytes).min(rest.len());
                let (part, tail) = std::mem::take(&mut rest).split_at_mut(take);
                rest = tail;
                let run = &run;
                s.spawn(move || run(rows.start + lo, part))
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a row worker panicked"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

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
    fn bf16_matrices_stay_exact_on_the_gpu() {
        // Values with bf16's full 8-bit exponent range, tiny to huge: f16 would lose them.
        let vals = [1.0e-30f32, -3.5e20, 0.123, -7.0e-8, 65536.0, 1.0];
        let b: Vec<u8> = vals
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect();
        let w = Weights::from_bytes(
            "m.safetensors".into(),
            file(&[("w", Dtype::BF16, vec![2, 3], b)]),
        )
        .unwrap();
        let ctx = crate::testing::gpu();
        let t = w.scope("").matrix(ctx, "w", &[2, 3], DType::BF16).unwrap();
        assert_eq!(t.dtype(), DType::BF16);
        let want: Vec<f32> = vals.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        assert_eq!(t.to_f32().unwrap(), want);
        let err = w
            .scope("")
            .matrix(ctx, "w", &[2, 3], DType::F16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'w'") && err.contains("f16 range"), "{err}");
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
    fn stacked_matrices_concatenate_rows_of_several_tensors() {
        let bytes = file(&[
            (
                "a",
                Dtype::F32,
                vec![2, 3],
                f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ),
            (
                "b",
                Dtype::BF16,
                vec![1, 3],
                [7.0f32, 8.0, 9.0]
                    .iter()
                    .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                    .collect(),
            ),
        ]);
        let w = Weights::from_bytes("m.safetensors".into(), bytes).unwrap();
        let ctx = crate::testing::gpu();
        let t = w
            .scope("")
            .stacked_matrix(ctx, "ab", &[("a", 2), ("b", 1)], 3, DType::F32)
            .unwrap();
        assert_eq!(t.shape(), &[3, 3]);
        assert_eq!(
            t.to_f32().unwrap(),
            (1..=9).map(|v| v as f32).collect::<Vec<_>>()
        );
        let err = w
            .scope("")
            .stacked_matrix(ctx, "ab", &[("a", 2), ("b", 2)], 3, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'b'") && err.contains("expected shape [2, 3]"),
            "{err}"
        );
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

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("moxe-weights-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn sharded_checkpoints_read_through_their_index() {
        let dir = TempDir::new("index");
        std::fs::write(
            dir.0.join("s1.safetensors"),
            file(&[("a", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))]),
        )
        .unwrap();
        std::fs::write(
            dir.0.join("s2.safetensors"),
            file(&[("b", Dtype::F32, vec![1], f32_bytes(&[3.0]))]),
        )
        .unwrap();
        let index = dir.0.join("model.safetensors.index.json");
        let write_index = |map: &str| {
            std::fs::write(
                &index,
                format!("{{\"metadata\": {{}}, \"weight_map\": {map}}}"),
            )
            .unwrap()
        };
        write_index(r#"{"a": "s1.safetensors", "b": "s2.safetensors"}"#);
        let w = Weights::open_index(&index).unwrap();
        assert_eq!(w.names(), vec!["a", "b"]);
        assert_eq!(w.f32("b", &[1]).unwrap(), vec![3.0]);
        assert!(w.file_of("b").ends_with("s2.safetensors"));

        write_index(r#"{"a": "s1.safetensors", "c": "s2.safetensors"}"#);
        let err = Weights::open_index(&index).unwrap_err().to_string();
        assert!(
            err.contains("index.json") && err.contains("'c'") && err.contains("does not hold it"),
            "{err}"
        );
        write_index(r#"{"a": "s1.safetensors", "b": "s3.safetensors"}"#);
        let err = Weights::open_index(&index).unwrap_err().to_string();
        assert!(err.contains("shard 's3.safetensors' is missing"), "{err}");
        // A second copy of 'a' in the shard that holds 'b'.
        std::fs::write(
            dir.0.join("s3.safetensors"),
            file(&[
                ("a", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0])),
                ("b", Dtype::F32, vec![1], f32_bytes(&[3.0])),
            ]),
        )
        .unwrap();
        let err = Weights::open_index(&index).unwrap_err().to_string();
        assert!(
            err.contains("shard 's3.safetensors' holds tensor 'a', which weight_map does not"),
            "{err}"
        );
        write_index(r#"{"a": "../s1.safetensors"}"#);
        let err = Weights::open_index(&index).unwrap_err().to_string();
        assert!(err.contains("not a file name"), "{err}");
        std::fs::write(&index, "{\"weights\": {}}").unwrap();
        let err = Weights::open_index(&index).unwrap_err().to_string();
        assert!(err.contains("weight_map"), "{err}");
    }

    #[test]
    fn random_weights_are_deterministic_and_shaped() {
        let w = Weights::random(
            7,
            vec![
                ("m".into(), vec![4, 6], Dtype::BF16, RandomInit::Uniform),
                ("g".into(), vec![6], Dtype::F32, RandomInit::One),
            ],
        );
        let (a, shape) = w.f32_any("m").unwrap();
        assert_eq!(shape, vec![4, 6]);
        assert_eq!(a, w.f32_any("m").unwrap().0);
        let bound = (3.0f32 / 6.0).sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|&v| v != a[0]));
        assert_eq!(w.f32("g", &[6]).unwrap(), vec![1.0; 6]);
        assert!(w.is_half("m"));
    }

    #[test]
    fn large_tensors_fill_on_all_cores_as_row_by_row() {
        // 1000 x 2000 is past PARALLEL_FILL_BYTES in every dtype, so whole fills split over
        // threads; one-row fills never do.
        let (rows, cols) = (1000, 2000);
        let w = Weights::random(
            3,
            vec![(
                "m".into(),
                vec![rows, cols],
                Dtype::BF16,
                RandomInit::Uniform,
            )],
        );
        for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
            let row_bytes = match dtype.quant() {
                Some(q) => q.row_bytes(cols),
                None => cols * dtype.size(),
            };
            let mut whole = vec![0u8; rows * row_bytes];
            w.fill_rows("m", 0..rows, dtype, cols, &mut whole).unwrap();
            let mut one_by_one = vec![0u8; rows * row_bytes];
            for (r, dst) in one_by_one.chunks_mut(row_bytes).enumerate() {
                w.fill_rows("m", r..r + 1, dtype, cols, dst).unwrap();
            }
            assert!(whole.len() >= PARALLEL_FILL_BYTES, "{dtype:?}");
            assert!(whole == one_by_one, "{dtype:?}: parallel fill differs");
        }
    }
}
