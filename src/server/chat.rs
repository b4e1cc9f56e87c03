//! Chat templates: the Jinja template of a model's `tokenizer_config.json` (`chat_template`,
//! a string or a list of named templates of which `default` is used), rendered with
//! minijinja as transformers' `apply_chat_template` renders it: `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`, Python string
//! methods, blocks trimmed.

use std::path::Path;

use minijinja::{Environment, ErrorKind};
use serde_json::Value;

use crate::error::{Error, Result};

/// A model's chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The template of model directory `dir`; `None` when it has none.
    pub fn of_model(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("invalid JSON: {e}")))?;
        let source = match &config["chat_template"] {
            Value::String(s) => s.clone(),
            Value::Array(list) => {
                let named = |want: &str| {
                    list.iter()
                        .find(|t| t["name"] == want)
                        .and_then(|t| t["template"].as_str())
                };
                match named("default") {
                    Some(s) => s.to_string(),
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        let token = |key: &str| match &config[key] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| Error::file(&path, format!("chat_template does not parse: {e}")))?;
        Ok(Some(ChatTemplate {
            env,
            bos: token("bos_token"),
            eos: token("eos_token"),
        }))
    }

    /// The prompt text of `messages` ([{role, content}]), ending with the assistant's turn
    /// opened; the template's own exceptions come back as the error text.
    pub fn render(&self, messages: &[(String, String)]) -> std::result::Result<String, String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid").to_string(),
                _ => e.to_string(),
            })
    }
}
