//! The OpenAI-compatible request bodies, their validation, and the JSON errors. Every
//! problem with a request is an [`ApiError`] naming the field (`param`), answered as
//! `{"error": {"message", "type", "param", "code"}}` with a 4xx status.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::runtime::sampler::SamplerSettings;

/// A request the server refuses, and why.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: &'static str,
}

impl ApiError {
    /// 400: the request is malformed or out of range.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.map(str::to_string),
            code: "invalid_request_error",
        }
    }

    /// Another status with a code.
    pub fn status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code,
        }
    }

    /// The error's JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": if self.status.is_server_error() { "server_error" } else { "invalid_request_error" },
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    /// The body as JSON; a 429 (every slot and queue place taken) or 503 (loading, shutting
    /// down) says when to retry: a second, the order of a request's time on the slots.
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// Parses a JSON body into `T`, naming the field of the first problem.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        // JSON's grammar has no bound on numbers: one past f64 is a value error.
        let range = text.starts_with("number out of range");
        let syntax = !range
            && matches!(
                inner.classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            );
        let at = (path != "." && path != "?").then_some(path);
        // A missing or repeated field is named by the message, inside the path's object.
        let field = ["missing field `", "duplicate field `"]
            .iter()
            .find_map(|p| text.strip_prefix(p)?.split('`').next())
            .map(|f| match &at {
                Some(p) => format!("{p}.{f}"),
                None => f.to_string(),
            });
        let param = if syntax { None } else { field.or(at) };
        let message = match &param {
            _ if syntax => format!("the body is not valid JSON: {inner}"),
            None if range => format!("invalid request body: {inner}"),
            Some(p) => format!("field '{p}': {inner}"),
            None => format!("invalid request body: {inner}"),
        };
        ApiError {
            param,
            ..ApiError::invalid(None, message)
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(None, format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// A prompt: text, texts, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a string, a list of strings, a list of token ids or a list of lists of token ids"
)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default, deserialize_with = "null_as_default")]
    pub include_usage: bool,
}

/// An optional field given as `null` reads as its default, as OpenAI's API allows.
pub fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// `seed`: OpenAI's is a signed 64-bit integer; unsigned ones up to 2^64 - 1 are taken too
/// (a negative seed draws as its two's complement bits).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(
    untagged,
    expecting = "expected an integer (signed or unsigned 64-bit)"
)]
pub enum Seed {
    Unsigned(u64),
    Signed(i64),
}

impl Seed {
    pub fn bits(self) -> u64 {
        match self {
            Seed::Unsigned(v) => v,
            Seed::Signed(v) => v as u64,
        }
    }
}

/// The sampling and length fields shared by both completion endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub stop: Option<StopInput>,
    pub seed: Option<Seed>,
    pub n: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Generate past the end-of-sequence token (vLLM's extension).
    #[serde(default, deserialize_with = "null_as_default")]
    pub ignore_eos: bool,
    /// The end user, for the client's own records: read only to check that it is a string.
    #[serde(rename = "user")]
    _user: Option<String>,
}

/// `POST /v1/completions`: the fields beside [`Common`] (a body is read as both, so that
/// an error names its field).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    /// Log probabilities of the `logprobs` most likely tokens at each step (0 to 20).
    pub logprobs: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub echo: bool,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
}

/// OpenAI request fields for what this server cannot do (it generates plain text: no tool
/// calls, structured output or audio). A body is read as this too, and each field is refused
/// unless its value asks for nothing (see [`Unsupported::check`]).
#[derive(Debug, Default, Deserialize)]
pub struct Unsupported {
    tools: Option<Value>,
    tool_choice: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    parallel_tool_calls: Option<Value>,
    response_format: Option<Value>,
    modalities: Option<Value>,
    audio: Option<Value>,
    prediction: Option<Value>,
    web_search_options: Option<Value>,
    // Extensions of other servers (vLLM) that would change the output.
    min_tokens: Option<Value>,
    repetition_penalty: Option<Value>,
    stop_token_ids: Option<Value>,
    include_stop_str_in_output: Option<Value>,
    use_beam_search: Option<Value>,
    guided_json: Option<Value>,
    guided_regex: Option<Value>,
    guided_choice: Option<Value>,
    guided_grammar: Option<Value>,
}

const PLAIN: &str = "(this server generates plain text)";

/// Whether a field's value asks for nothing (the default of the server that defines it).
type NoOp = fn(&Value) -> bool;

impl Unsupported {
    /// Refuses each field that asks for something; accepts the no-op values (`tools: []`,
    /// `tool_choice: "none"`, `response_format: {"type": "text"}`, `modalities: ["text"]`).
    pub fn check(&self) -> Result<(), ApiError> {
        let refuse = |param: &str, what: &str| {
            Err(ApiError::invalid(Some(param), format!("{what} {PLAIN}")))
        };
        let empty = |v: &Value| v.as_array().is_some_and(Vec::is_empty);
        if self.tools.as_ref().is_some_and(|v| !empty(v)) {
            return refuse("tools", "tools are not supported");
        }
        if self.functions.as_ref().is_some_and(|v| !empty(v)) {
            return refuse("functions", "functions are not supported");
        }
        if self.tool_choice.as_ref().is_some_and(|v| v != "none") {
            return refuse(
                "tool_choice",
                "tool_choice other than \"none\" is not supported",
            );
        }
        if self.function_call.as_ref().is_some_and(|v| v != "none") {
            return refuse(
                "function_call",
                "function_call other than \"none\" is not supported",
            );
        }
        if self.parallel_tool_calls.is_some() {
            return refuse(
                "parallel_tool_calls",
                "parallel_tool_calls is not supported",
            );
        }
        if let Some(v) = &self.response_format {
            match v.get("type").and_then(Value::as_str) {
                Some("text") => {}
                Some(kind) => {
                    return refuse(
                        "response_format",
                        &format!("response_format type '{kind}' is not supported"),
                    )
                }
                None => {
                    return refuse(
                        "response_format",
                        "response_format other than {\"type\": \"text\"} is not supported",
                    )
                }
            }
        }
        if let Some(v) = &self.modalities {
            let text_only = v.as_array().is_some_and(|m| m.iter().all(|x| x == "text"));
            if !text_only {
                return refuse(
                    "modalities",
                    "modalities other than [\"text\"] are not supported",
                );
            }
        }
        if self.audio.is_some() {
            return refuse("audio", "audio output is not supported");
        }
        if self.prediction.is_some() {
            return refuse(
                "prediction",
                "prediction (predicted outputs) is not supported",
            );
        }
        if self.web_search_options.is_some() {
            return refuse("web_search_options", "web search is not supported");
        }
        // Each accepted at the value that asks for nothing.
        let extensions: [(&str, &Option<Value>, NoOp); 5] = [
            ("min_tokens", &self.min_tokens, |v| v.as_f64() == Some(0.0)),
            ("repetition_penalty", &self.repetition_penalty, |v| {
                v.as_f64() == Some(1.0)
            }),
            ("stop_token_ids", &self.stop_token_ids, |v| {
                v.as_array().is_some_and(Vec::is_empty)
            }),
            (
                "include_stop_str_in_output",
                &self.include_stop_str_in_output,
                |v| v == false,
            ),
            ("use_beam_search", &self.use_beam_search, |v| v == false),
        ];
        for (param, value, no_op) in extensions {
            if value.as_ref().is_some_and(|v| !no_op(v)) {
                return refuse(
                    param,
                    &format!("{param} (an extension of other servers) is not supported"),
                );
            }
        }
        for (param, value) in [
            ("guided_json", &self.guided_json),
            ("guided_regex", &self.guided_regex),
            ("guided_choice", &self.guided_choice),
            ("guided_grammar", &self.guided_grammar),
        ] {
            if value.is_some() {
                return refuse(
                    param,
                    "guided decoding (structured output) is not supported",
                );
            }
        }
        Ok(())
    }
}

/// One chat message; `content` is text or a list of text parts. `tool_calls` and
/// `function_call` are read only to refuse them.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    /// The participant's name, handed to the chat template as `message.name`.
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub function_call: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a string or a list of content parts ({\"type\": \"text\", \"text\": ...})"
)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `POST /v1/chat/completions`: the fields beside [`Common`].
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_completion_tokens: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub prompt: String,
    /// Add BOS/EOS as a sequence start does (default true).
    pub add_special_tokens: Option<bool>,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}

/// The server's limits on what a request may ask.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_prompt_tokens: usize,
    pub max_tokens: usize,
    pub max_n: usize,
    /// Each replica's slots (`--slots` shared out over `--replicas`).
    pub replica_slots: Vec<usize>,
    /// Requests (jobs: one per prompt) that may wait for a slot (`--queue`).
    pub queue: usize,
}

impl Limits {
    /// Refuses a request whose `prompts` prompts of `n` choices each could never be held
    /// at once (running on the slots, or waiting in the queue): a retry would not help.
    pub fn check_capacity(&self, prompts: usize, n: usize) -> Result<(), ApiError> {
        let running: usize = self.replica_slots.iter().map(|s| s / n).sum();
        let held = running + self.queue;
        if prompts <= held {
            return Ok(());
        }
        Err(ApiError::invalid(
            Some("prompt"),
            format!(
                "{prompts} prompts x n={n} choices need {} sequences; this server holds at \
                 most {} at once ({} running on its slots (--slots {}, --replicas {}) and {} \
                 waiting (--queue {})): send at most {held} prompts with n={n} per request",
                prompts * n,
                held * n,
                running * n,
                self.replica_slots.iter().sum::<usize>(),
                self.replica_slots.len(),
                self.queue * n,
                self.queue,
            ),
        ))
    }
}

/// What a completion asks for, checked: choices, length, stop strings, sampling.
#[derive(Debug, Clone)]
pub struct Plan {
    pub n: usize,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
    pub settings: SamplerSettings,
    pub stream: bool,
    pub include_usage: bool,
}

impl Common {
    /// Checks every field against its range, `limits` and the vocabulary.
    pub fn plan(
        &self,
        default_max_tokens: usize,
        max_tokens: Option<i64>,
        top_logprobs: usize,
        limits: &Limits,
        vocab: usize,
    ) -> Result<Plan, ApiError> {
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "stream_options is only allowed with stream: true",
            ));
        }
        let max_tokens = match max_tokens {
            None => default_max_tokens.min(limits.max_tokens),
            Some(m) if m < 0 => {
                return Err(ApiError::invalid(
                    Some("max_tokens"),
                    format!("max_tokens must be >= 0, got {m}"),
                ))
            }
            Some(m) if m as usize > limits.max_tokens => {
                return Err(ApiError::invalid(
                    Some("max_tokens"),
                    format!(
                        "max_tokens {m} exceeds this server's limit of {} (--max-tokens)",
                        limits.max_tokens
                    ),
                ))
            }
            Some(m) => m as usize,
        };
        let n = match self.n {
            None => 1,
            Some(n) if n < 1 || n as usize > limits.max_n => {
                return Err(ApiError::invalid(
                    Some("n"),
                    format!(
                        "n must be in 1..={} (the slots of one model replica), got {n}",
                        limits.max_n
                    ),
                ))
            }
            Some(n) => n as usize,
        };
        let top_k = match self.top_k {
            None | Some(-1) => 0,
            Some(k) if k < 0 => {
                return Err(ApiError::invalid(
                    Some("top_k"),
                    format!("top_k must be >= 0 (or -1 for none), got {k}"),
                ))
            }
            Some(k) => k as usize,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s.clone()],
            Some(StopInput::Many(v)) => v.clone(),
        };
        if stop.iter().any(String::is_empty) || stop.len() > 16 {
            return Err(ApiError::invalid(
                Some("stop"),
                "stop must be up to 16 non-empty strings",
            ));
        }
        let mut logit_bias = Vec::new();
        for (key, &bias) in self.logit_bias.iter().flatten() {
            let id: u32 = key.parse().map_err(|_| {
                ApiError::invalid(
                    Some("logit_bias"),
                    format!("logit_bias keys must be token ids, got '{key}'"),
                )
            })?;
            logit_bias.push((id, bias));
        }
        logit_bias.sort_by_key(|b| b.0);
        let settings = SamplerSettings {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias,
            seed: self.seed.map(Seed::bits),
            top_logprobs,
        };
        settings.validate(vocab).map_err(|e| {
            // The sampler's messages start with the field ("logit_bias[5] must be ...").
            let message = match e {
                crate::error::Error::InvalidArgument(m) => m,
                other => other.to_string(),
            };
            let param = message
                .split_whitespace()
                .next()
                .map(|w| w.split('[').next().unwrap_or(w).to_string());
            ApiError {
                param,
                ..ApiError::invalid(None, message)
            }
        })?;
        Ok(Plan {
            n,
            max_tokens,
            stop,
            stop_at_eos: !self.ignore_eos,
            settings,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

impl Message {
    /// The message's text (the text parts of a list, joined); `index` is its place in
    /// `messages`, for the errors. Only text parts are taken: any other part, a text part
    /// without text, or an empty list of parts is an error.
    pub fn text(&self, index: usize) -> Result<String, ApiError> {
        let parts = match &self.content {
            None => return Ok(String::new()),
            Some(Content::Text(t)) => return Ok(t.clone()),
            Some(Content::Parts(parts)) => parts,
        };
        if parts.is_empty() {
            return Err(ApiError::invalid(
                Some(&format!("messages[{index}].content")),
                "content is an empty list",
            ));
        }
        let mut text = String::new();
        for (i, part) in parts.iter().enumerate() {
            let param = format!("messages[{index}].content[{i}]");
            match (part.kind.as_str(), &part.text) {
                ("text", Some(t)) => text += t,
                ("text", None) => {
                    return Err(ApiError::invalid(Some(&param), "text part has no 'text'"))
                }
                (kind, _) => {
                    return Err(ApiError::invalid(
                        Some(&param),
                        format!("content part type '{kind}' is not supported (text only)"),
                    ))
                }
            }
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_unavailable_say_when_to_retry() {
        let retry = |status| {
            ApiError::status(status, "x", "y")
                .into_response()
                .headers()
                .get(axum::http::header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(retry(StatusCode::TOO_MANY_REQUESTS).as_deref(), Some("1"));
        assert_eq!(retry(StatusCode::SERVICE_UNAVAILABLE).as_deref(), Some("1"));
        assert_eq!(retry(StatusCode::BAD_REQUEST), None);
    }
}
