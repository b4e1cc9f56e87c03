//! Typed access to a JSON object with errors that name the file and the field path.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Most layers (blocks) a config may declare: far above any trained xLSTM (xLSTM-7B has 32),
/// and low enough that the tensors a config implies are listed in moments.
pub const MAX_LAYERS: usize = 4096;

/// Widest vector a config may declare (embedding, projection or vocabulary): 16 times
/// xLSTM-7B's FFN and 20 times its vocabulary, and low enough that a width's products and
/// f64 roundings stay exact.
pub const MAX_WIDTH: usize = 1 << 20;

/// A JSON object at `path` (e.g. `xlstm.mlstm_block.mlstm`) inside `file`.
#[derive(Clone)]
pub(crate) struct Obj<'a> {
    file: &'a Path,
    path: String,
    map: &'a Map<String, Value>,
}

/// A JSON value as an error shows it: scalars as written, containers by kind.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl<'a> Obj<'a> {
    /// The root object of a parsed document.
    pub fn root(file: &'a Path, value: &'a Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Obj {
                file,
                path: String::new(),
                map,
            }),
            other => Err(Error::file(
                file,
                format!(
                    "expected a JSON object at the top level, found {}",
                    describe(other)
                ),
            )),
        }
    }

    fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An error about field `key`.
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        Error::file(
            self.file,
            format!("field '{}': {message}", self.field_path(key)),
        )
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> Error {
        self.error(
            key,
            format!("expected {expected}, found {}", describe(found)),
        )
    }

    /// The raw value of `key`, if present (null counts as present).
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// A nested object; `None` when absent or null.
    pub fn object(&self, key: &str) -> Result<Option<Obj<'a>>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                file: self.file,
                path: self.field_path(key),
                map,
            })),
            Some(other) => Err(self.wrong(key, "an object", other)),
        }
    }

    /// A required nested object.
    pub fn required_object(&self, key: &str) -> Result<Obj<'a>> {
        self.object(key)?
            .ok_or_else(|| self.error(key, "required object is missing"))
    }

    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.map.get(key) {
            None => Err(self.error(key, "required field is missing")),
            Some(v) => self.as_usize(key, v),
        }
    }

    /// An optional non-negative integer with a default.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => self.as_usize(key, v),
        }
    }

    fn as_usize(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// An optional number with a default.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    /// An optional number with a default that f32 holds as a finite value (the kernels
    /// compute in f32, where a larger magnitude would be infinite).
    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        let v = self.f64_or(key, default as f64)?;
        if !v.is_finite() || v.abs() > f32::MAX as f64 {
            return Err(self.error(
                key,
                format!("expected a finite number within f32's range (|x| <= 3.4e38), found {v:e}"),
            ));
        }
        Ok(v as f32)
    }

    /// A count of layers or blocks already read as `n` under `key`: at least 1 and at most
    /// [`MAX_LAYERS`].
    /// Checks a width (an embedding, a projection, a vocabulary): 1 to [`MAX_WIDTH`].
    pub fn check_width(&self, key: &str, n: usize) -> Result<()> {
        if n == 0 || n > MAX_WIDTH {
            return Err(self.error(key, format!("must be between 1 and {MAX_WIDTH}, found {n}")));
        }
        Ok(())
    }

    pub fn check_layers(&self, key: &str, n: usize) -> Result<()> {
        if n == 0 || n > MAX_LAYERS {
            return Err(self.error(
                key,
                format!("must be between 1 and {MAX_LAYERS}, found {n}"),
            ));
        }
        Ok(())
    }

    /// An optional boolean with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.wrong(key, "true or false", v)),
        }
    }

    /// An optional string with a default.
    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.wrong(key, "a string", v)),
        }
    }

    /// An optional string that must be one of `allowed`.
    pub fn choice(&self, key: &str, default: &'a str, allowed: &[&str]) -> Result<&'a str> {
        let s = self.str_or(key, default)?;
        if allowed.contains(&s) {
            Ok(s)
        } else {
            Err(self.error(
                key,
                format!("expected one of {}, found \"{s}\"", allowed.join(", ")),
            ))
        }
    }
}
