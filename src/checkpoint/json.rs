//! Typed access to a JSON object with errors that name the file and the field path.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A JSON object at `path` (e.g. `xlstm.mlstm_block.mlstm`) inside `file`.
#[derive(Clone)]
pub(crate) struct Obj<'a> {
    file: &'a Path,
    path: String,
    map: &'a Map<String, Value>,
}

fn describe(v: &Value) -> String {
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
