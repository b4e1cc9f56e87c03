//! Special tokens and generation defaults, as a Hugging Face snapshot's files give them:
//! `generation_config.json` (bos/eos/pad ids, `do_sample`, `temperature`, `top_k`, `top_p`,
//! `max_new_tokens`), `config.json` (bos/eos/pad ids) and `tokenizer_config.json`
//! (`add_bos_token`, `add_eos_token`, the bos/eos tokens as strings). Where two files give
//! the same id, generation_config.json wins over config.json, as in transformers'
//! `generate`. Every file is optional; a file that is present must be valid JSON with fields
//! of the right types.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::ops::sample::Sampling;

/// What the checkpoint's files say about special tokens and sampling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub bos: Option<u32>,
    /// End-of-sequence ids (transformers accepts one id or a list).
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
    /// Prepend BOS to encoded text (`add_bos_token`), unless the tokenizer's post-processor
    /// already does.
    pub add_bos: bool,
    /// Append EOS to encoded text (`add_eos_token`).
    pub add_eos: bool,
    /// The bos / eos tokens as text (`tokenizer_config.json`): the tokens `add_bos` and
    /// `add_eos` add (before the ids), and the end of generation where no eos id is given.
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// `do_sample`: false means greedy decoding.
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !super::files::present(path) {
        return Ok(None);
    }
    let text = super::files::read_text(path, super::files::JSON_LIMIT)?;
    super::files::parse_json(path, &text).map(Some)
}

/// A field of a JSON object, named in errors as `file: field`.
struct Field<'a> {
    file: &'a Path,
    key: &'a str,
    value: &'a Value,
}

impl Field<'_> {
    fn error(&self, expected: &str) -> Error {
        Error::file(
            self.file,
            format!(
                "field '{}': expected {expected}, found {}",
                self.key, self.value
            ),
        )
    }

    fn id(&self) -> Result<u32> {
        self.value
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| self.error("a token id (an integer from 0 to 4294967295)"))
    }

    /// One id or a list of ids.
    fn ids(&self) -> Result<Vec<u32>> {
        match self.value {
            Value::Array(items) => items
                .iter()
                .map(|value| Field { value, ..*self }.id())
                .collect(),
            _ => Ok(vec![self.id()?]),
        }
    }

    fn bool(&self) -> Result<bool> {
        self.value
            .as_bool()
            .ok_or_else(|| self.error("true or false"))
    }

    fn f32(&self) -> Result<f32> {
        match self.value.as_f64() {
            Some(v) if v.is_finite() => Ok(v as f32),
            _ => Err(self.error("a number")),
        }
    }

    fn usize(&self) -> Result<usize> {
        self.value
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| self.error("a non-negative integer"))
    }

    /// A token as text: a string, or an object with a `content` string (AddedToken).
    fn token(&self) -> Result<String> {
        match self.value {
            Value::String(s) => Ok(s.clone()),
            Value::Object(o) => match o.get("content") {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(self.error("a token string or an object with \"content\"")),
            },
            _ => Err(self.error("a token string")),
        }
    }
}

/// The non-null fields of `value` (an object) by key.
fn fields<'a>(file: &'a Path, value: &'a Value) -> Result<Vec<Field<'a>>> {
    let map = value
        .as_object()
        .ok_or_else(|| Error::file(file, "expected a JSON object at the top level"))?;
    Ok(map
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(key, value)| Field { file, key, value })
        .collect())
}

impl GenerationDefaults {
    /// Reads the files of model directory `dir` (each optional).
    pub fn read(dir: &Path) -> Result<Self> {
        let mut d = GenerationDefaults::default();
        let tokenizer_config = dir.join("tokenizer_config.json");
        if let Some(v) = read_json(&tokenizer_config)? {
            for f in fields(&tokenizer_config, &v)? {
                match f.key {
                    "add_bos_token" => d.add_bos = f.bool()?,
                    "add_eos_token" => d.add_eos = f.bool()?,
                    "bos_token" => d.bos_token = Some(f.token()?),
                    "eos_token" => d.eos_token = Some(f.token()?),
                    _ => {}
                }
            }
        }
        // config.json first, then generation_config.json over it.
        for name in ["config.json", "generation_config.json"] {
            let path = dir.join(name);
            let Some(v) = read_json(&path)? else {
                continue;
            };
            for f in fields(&path, &v)? {
                match f.key {
                    "bos_token_id" => d.bos = Some(f.id()?),
                    "eos_token_id" => d.eos = f.ids()?,
                    "pad_token_id" => d.pad = Some(f.id()?),
                    _ if name == "config.json" => {}
                    "do_sample" => d.do_sample = Some(f.bool()?),
                    "temperature" => d.temperature = Some(f.f32()?),
                    "top_k" => d.top_k = Some(f.usize()?.min(u32::MAX as usize) as u32),
                    "top_p" => d.top_p = Some(f.f32()?),
                    "max_new_tokens" => d.max_new_tokens = Some(f.usize()?),
                    _ => {}
                }
            }
            // The sampler's own range checks, at load and naming the file.
            let sampling = Sampling {
                temperature: d.temperature.unwrap_or(0.0),
                top_p: d.top_p.unwrap_or(1.0),
                ..Sampling::greedy()
            };
            sampling
                .validate()
                .map_err(|e| Error::file(&path, e.to_string()))?;
        }
        Ok(d)
    }

    /// Checks that every id is below `vocab`; `dir` names the model in the error.
    pub fn check_ids(&self, dir: &Path, vocab: usize) -> Result<()> {
        let fields = [
            ("bos_token_id", self.bos.as_slice()),
            ("eos_token_id", self.eos.as_slice()),
            ("pad_token_id", self.pad.as_slice()),
        ];
        for (field, ids) in fields {
            if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::file(
                    dir,
                    format!(
                        "{field} {id} (generation_config.json, else config.json) is out of \
                         range: the model has {vocab} tokens"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str, files: &[(&str, &str)]) -> Dir {
        let p = std::env::temp_dir().join(format!("moxe-gen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        for (name, text) in files {
            std::fs::write(p.join(name), text).unwrap();
        }
        Dir(p)
    }

    #[cfg(unix)]
    #[test]
    fn a_side_file_linked_to_nothing_is_an_error_not_absent() {
        // A Hugging Face snapshot whose blob is gone: the BOS rule must not vanish silently.
        for name in ["tokenizer_config.json", "generation_config.json"] {
            let d = dir(&format!("dangling-{name}"), &[("config.json", "{}")]);
            std::os::unix::fs::symlink("/nonexistent/blob", d.0.join(name)).unwrap();
            let err = GenerationDefaults::read(&d.0).unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains("symbolic link to nothing"),
                "{err}"
            );
        }
    }

    #[test]
    fn generation_config_wins_over_config_and_tokens_are_read() {
        let d = dir(
            "ok",
            &[
                (
                    "config.json",
                    r#"{"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}"#,
                ),
                (
                    "generation_config.json",
                    r#"{"eos_token_id": [2, 7], "do_sample": true, "temperature": 0.7,
                        "top_k": 40, "top_p": 0.9, "max_new_tokens": 48, "pad_token_id": null}"#,
                ),
                (
                    "tokenizer_config.json",
                    r#"{"add_bos_token": true, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}"#,
                ),
            ],
        );
        let g = GenerationDefaults::read(&d.0).unwrap();
        assert_eq!(
            (g.bos, g.eos.clone(), g.pad),
            (Some(0), vec![2, 7], Some(1))
        );
        assert!(g.add_bos && !g.add_eos);
        assert_eq!(g.bos_token.as_deref(), Some("<s>"));
        assert_eq!(g.eos_token.as_deref(), Some("</s>"));
        assert_eq!(
            (g.do_sample, g.temperature, g.top_k, g.top_p),
            (Some(true), Some(0.7), Some(40), Some(0.9))
        );
        assert_eq!(g.max_new_tokens, Some(48));
        assert!(g.check_ids(&d.0, 8).is_ok());
        let err = g.check_ids(&d.0, 5).unwrap_err().to_string();
        assert!(
            err.contains("eos_token_id 7") && err.contains("5 tokens"),
            "{err}"
        );
        assert_eq!(
            GenerationDefaults::read(&d.0.join("nowhere")).unwrap(),
            GenerationDefaults::default()
        );
    }

    #[test]
    fn bad_fields_name_the_file_and_field() {
        for (file, text, needle) in [
            (
                "generation_config.json",
                r#"{"eos_token_id": "two"}"#,
                "eos_token_id",
            ),
            (
                "generation_config.json",
                r#"{"temperature": "hot"}"#,
                "temperature",
            ),
            (
                "generation_config.json",
                r#"{"temperature": -1}"#,
                "temperature must be 0 (greedy) or a finite number",
            ),
            (
                "generation_config.json",
                r#"{"top_p": 5}"#,
                "top_p must be in (0, 1]",
            ),
            (
                "tokenizer_config.json",
                r#"{"add_bos_token": 1}"#,
                "add_bos_token",
            ),
            ("config.json", r#"{"bos_token_id": -1}"#, "bos_token_id"),
            ("generation_config.json", "{not json", "invalid JSON"),
        ] {
            let d = dir("bad", &[(file, text)]);
            let err = GenerationDefaults::read(&d.0).unwrap_err().to_string();
            assert!(err.contains(file) && err.contains(needle), "{err}");
        }
    }
}
