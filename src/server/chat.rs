//! Chat templates: the Jinja template of a model's `tokenizer_config.json` (`chat_template`,
//! a string or a list of named templates of which `default` is used), rendered with
//! minijinja as transformers' `apply_chat_template` renders it: `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`, `strftime_now`,
//! Python string methods, `{% break %}`/`{% continue %}`, blocks trimmed; transformers'
//! `{% generation %}` marks (assistant spans for training masks) render their content.
//!
//! A template comes with the model, so it is run on a budget: at most [`Budget::fuel`]
//! instructions and [`Budget::output`] bytes of output, beyond which the request gets an
//! error (and the server goes on) rather than a CPU pinned or the memory exhausted.

use std::io::Write;
use std::path::Path;

use minijinja::{Environment, ErrorKind};
use serde_json::Value;

use crate::error::{Error, Result};

/// What one rendering may spend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Template instructions (minijinja's fuel: about one per expression step, loop
    /// iteration or piece of output).
    pub fuel: u64,
    /// Bytes of rendered prompt.
    pub output: usize,
}

impl Budget {
    /// The budget of a server taking request bodies of up to `max_body_bytes`: 10 million
    /// instructions and 16 MiB of output, or more for larger bodies (20 instructions and 4
    /// bytes of output per body byte), so that every conversation a body can hold fits
    /// with room to spare.
    pub fn for_bodies_of(max_body_bytes: usize) -> Self {
        Budget {
            fuel: 10_000_000u64.max(20u64.saturating_mul(max_body_bytes as u64)),
            output: (16usize << 20).max(max_body_bytes.saturating_mul(4)),
        }
    }
}

/// One message of a conversation, as the template sees it.
pub(crate) struct Turn {
    pub role: String,
    pub content: String,
    pub name: Option<String>,
}

/// Why a conversation did not render.
#[derive(Debug)]
pub(crate) enum RenderError {
    /// The template refused the conversation (its `raise_exception`) or it is too large
    /// for the budget: the client's to change.
    Refused(String),
    /// The template itself failed (the model's to fix).
    Broken(String),
}

/// A model's chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    budget: Budget,
}

/// An output that fails once more than `limit` bytes have been written to it.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("the output limit is reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// The template of model directory `dir`, rendered within `budget`; `None` when it has
    /// none.
    pub fn of_model(dir: &Path, budget: Budget) -> Result<Option<Self>> {
        use crate::checkpoint::files::{present, read_text, JSON_LIMIT};
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if present(&config_path) {
            let text = read_text(&config_path, JSON_LIMIT)?;
            serde_json::from_str(&text)
                .map_err(|e| Error::file(&config_path, format!("invalid JSON: {e}")))?
        } else {
            Value::Null
        };
        // As transformers reads them: a chat_template.jinja file beside the config replaces
        // the config's own chat_template.
        let jinja = dir.join("chat_template.jinja");
        let (path, source) =
            if present(&jinja) {
                let source = read_text(&jinja, JSON_LIMIT)?;
                (jinja, source)
            } else {
                match &config["chat_template"] {
                    Value::Null => return Ok(None),
                    Value::String(s) => (config_path, s.clone()),
                    Value::Array(list) => {
                        let default = list
                            .iter()
                            .find(|t| t["name"] == "default")
                            .map(|t| &t["template"]);
                        match default {
                            Some(Value::String(s)) => (config_path, s.clone()),
                            Some(_) => return Err(Error::file(
                                &config_path,
                                "chat_template: the entry named \"default\" has no template string",
                            )),
                            None => return Err(Error::file(
                                &config_path,
                                "chat_template lists named templates but none named \"default\", \
                                 the one a chat request uses",
                            )),
                        }
                    }
                    other => {
                        return Err(Error::file(
                            &config_path,
                            format!(
                            "chat_template must be a string or a list of named templates, found {}",
                            crate::checkpoint::json::describe(other)
                        ),
                        ))
                    }
                }
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
        env.set_fuel(Some(budget.fuel));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message).with_source(Raised))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", generation_marks_as_ifs(&source))
            .map_err(|e| Error::file(&path, format!("chat_template does not parse: {e}")))?;
        Ok(Some(ChatTemplate {
            env,
            bos: token("bos_token"),
            eos: token("eos_token"),
            budget,
        }))
    }

    /// The prompt text of `messages`, ending with the assistant's turn opened. The error
    /// is a message for the client: the template's own exception or the budget exceeded
    /// ([`RenderError::Refused`]), or another failure of the template.
    pub fn render(&self, messages: &[Turn]) -> std::result::Result<String, RenderError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut v = serde_json::json!({"role": m.role, "content": m.content});
                if let Some(name) = &m.name {
                    v["name"] = Value::from(name.as_str());
                }
                v
            })
            .collect();
        let broken = |e: &dyn std::fmt::Display| {
            RenderError::Broken(format!("the model's chat template failed: {e}"))
        };
        let template = self.env.get_template("chat").map_err(|e| broken(&e))?;
        let mut out = Capped {
            out: Vec::new(),
            limit: self.budget.output,
            exceeded: false,
        };
        let rendered = template.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            },
            &mut out,
        );
        match rendered {
            Ok(_) => String::from_utf8(out.out).map_err(|_| broken(&"its output is not UTF-8")),
            Err(_) if out.exceeded => Err(RenderError::Refused(format!(
                "the chat template exceeded its limits (its output passed {} bytes)",
                self.budget.output
            ))),
            Err(e) if matches!(e.kind(), ErrorKind::OutOfFuel) => {
                Err(RenderError::Refused(format!(
                    "the chat template exceeded its limits (it ran more than {} instructions)",
                    self.budget.fuel
                )))
            }
            Err(e) if crate::error::caused_by::<Raised>(&e) => Err(RenderError::Refused(format!(
                "the chat template says: {}",
                e.detail().unwrap_or("invalid")
            ))),
            Err(e) => Err(broken(&e)),
        }
    }
}

/// Marks the errors of the template's own `raise_exception` (their source).
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

/// transformers' `strftime_now(format)`: the local time now, formatted as C's strftime.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    use std::fmt::Write;
    let items: Vec<_> = chrono::format::StrftimeItems::new(&format).collect();
    let mut out = String::new();
    write!(
        out,
        "{}",
        chrono::Local::now().format_with_items(items.into_iter())
    )
    .map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: '{format}' is not a strftime format"),
        )
    })?;
    Ok(out)
}

/// The template with transformers' `{% generation %}` / `{% endgeneration %}` marks as
/// `{% if true %}` / `{% endif %}` (same whitespace control): rendering, they only mark
/// the assistant's spans, which minijinja does not know.
fn generation_marks_as_ifs(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out += &rest[..start + 2];
        rest = &rest[start + 2..];
        let control = rest.len() - rest.trim_start_matches(['-', '+']).len();
        let body = &rest[control..];
        let word = body.trim_start();
        let lead = body.len() - word.len();
        let ends = |w: &str| {
            word.strip_prefix(w).is_some_and(|after| {
                after.starts_with(|c: char| c.is_whitespace() || c == '-' || c == '+' || c == '%')
            })
        };
        let swap = if ends("endgeneration") {
            Some(("endgeneration", "endif"))
        } else if ends("generation") {
            Some(("generation", "if true"))
        } else {
            None
        };
        if let Some((from, to)) = swap {
            out += &rest[..control + lead];
            out += to;
            rest = &word[from.len()..];
        }
    }
    out + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory holding `files` (name, contents) only.
    fn dir_with(name: &str, files: &[(&str, String)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("moxe-chat-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
        dir
    }

    fn rendered(dir: &Path) -> String {
        let template = ChatTemplate::of_model(dir, Budget::for_bodies_of(1 << 20))
            .unwrap()
            .expect("a template");
        let turn = Turn {
            role: "user".into(),
            content: "hi".into(),
            name: None,
        };
        template.render(&[turn]).unwrap()
    }

    fn error(dir: &Path) -> String {
        match ChatTemplate::of_model(dir, Budget::for_bodies_of(1 << 20)) {
            Ok(t) => panic!("{}: read as {:?}", dir.display(), t.is_some()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_template_is_found_where_transformers_finds_it() {
        let config = |template: serde_json::Value| {
            (
                "tokenizer_config.json",
                serde_json::json!({"chat_template": template}).to_string(),
            )
        };
        let from_config = "config: {{ messages[0]['content'] }}";
        // chat_template.jinja beside the config replaces the config's template.
        let jinja = dir_with(
            "jinja",
            &[
                config(from_config.into()),
                (
                    "chat_template.jinja",
                    "file: {{ messages[0]['content'] }}".into(),
                ),
            ],
        );
        assert_eq!(rendered(&jinja), "file: hi");
        std::fs::remove_file(jinja.join("tokenizer_config.json")).unwrap();
        assert_eq!(
            rendered(&jinja),
            "file: hi",
            "no tokenizer_config.json needed"
        );
        // A named list: its "default" entry.
        let named = serde_json::json!([{"name": "tool_use", "template": "no"},
                                       {"name": "default", "template": from_config}]);
        let named = dir_with("named", &[config(named)]);
        assert_eq!(rendered(&named), "config: hi");
        // None at all, or null: no template.
        let none = dir_with("none", &[config(serde_json::Value::Null)]);
        assert!(
            ChatTemplate::of_model(&none, Budget::for_bodies_of(1 << 20))
                .unwrap()
                .is_none()
        );
        // Present but unusable: errors naming the file, not "no template".
        let number = dir_with("number", &[config(3.into())]);
        assert!(error(&number).contains("chat_template must be a string"));
        let no_default = serde_json::json!([{"name": "tool_use", "template": "x"}]);
        let no_default = dir_with("no-default", &[config(no_default)]);
        assert!(error(&no_default).contains("none named \"default\""));
        #[cfg(unix)]
        {
            let broken = dir_with("broken", &[]);
            std::os::unix::fs::symlink("/nonexistent/blob", broken.join("chat_template.jinja"))
                .unwrap();
            assert!(error(&broken).contains("symbolic link to nothing"));
            std::fs::remove_dir_all(&broken).unwrap();
        }
        for d in [jinja, named, none, number, no_default] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
