//! The HTTP endpoints: health, models, completions, chat completions (plain and streamed as
//! server-sent events), tokenize, detokenize and metrics; API-key checking and per-request
//! metrics around them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::{StreamExt, StreamMap};

use super::api::{
    parse, ApiError, ChatRequest, Common, CompletionRequest, DetokenizeRequest, Plan, PromptInput,
    TokenizeRequest, Unsupported,
};
use super::chat::{RenderError, Turn};
use super::engine::{Event, Job, Rejected};
use super::listen::BodyTimedOut;
use super::{AppState, Ready};
use crate::runtime::generate::Finish;
use crate::runtime::sampler::Sampled;
use crate::runtime::Tokenizer;

/// The endpoints metrics are counted under (others count as "other").
const ENDPOINTS: [&str; 8] = [
    "/health",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/tokenize",
    "/detokenize",
    "/metrics",
    "/v1/models/",
];

/// Counts every response by endpoint and status.
pub(crate) async fn count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let endpoint = ENDPOINTS
        .iter()
        .find(|e| **e == path || (e.ends_with('/') && path.starts_with(**e)))
        .copied()
        .unwrap_or("other");
    let response = next.run(req).await;
    s.metrics.request(endpoint, response.status().as_u16());
    response
}

/// Requires `Authorization: Bearer KEY` when the server has a key (not for /health).
pub(crate) async fn authorize(
    State(s): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &s.api_key {
        if req.uri().path() != "/health" {
            // The scheme's case is free (RFC 9110); the key's bytes are compared in a time
            // that does not depend on where they first differ.
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim_start());
            if !given.is_some_and(|g| same_bytes(g.as_bytes(), key.as_bytes())) {
                let mut response = ApiError::status(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "missing or wrong API key: send 'Authorization: Bearer KEY'",
                )
                .into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return response;
            }
        }
    }
    next.run(req).await
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn not_found(req: Request) -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no endpoint {} {} (see GET /v1/models, GET /v1/models/{{id}}, POST \
             /v1/completions, POST /v1/chat/completions, POST /tokenize, POST /detokenize, \
             GET /health, GET /metrics)",
            req.method(),
            req.uri().path()
        ),
    )
}

pub(crate) async fn wrong_method() -> ApiError {
    ApiError::status(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that HTTP method",
    )
}

pub(crate) async fn health(State(s): State<Arc<AppState>>) -> Response {
    match s.phase() {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": if e.code == "loading" { "loading" } else { "error" }, "message": e.message})),
        )
            .into_response(),
    }
}

/// The served model as `/v1/models` lists it.
fn model_object(s: &AppState) -> Value {
    json!({
        "id": s.model_id,
        "object": "model",
        "created": s.started,
        "owned_by": "moxe",
    })
}

pub(crate) async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&s)]}))
}

/// `GET /v1/models/{id}`: the served model, or 404.
pub(crate) async fn model(
    State(s): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError {
        param: Some("model".into()),
        ..ApiError::invalid(None, e.body_text())
    })?;
    if id != s.model_id {
        return Err(ApiError {
            param: Some("model".into()),
            ..ApiError::status(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "model '{id}' is not served here; this server serves '{}'",
                    s.model_id
                ),
            )
        });
    }
    Ok(Json(model_object(&s)))
}

pub(crate) async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.text(),
    )
        .into_response()
}

/// A body whose declared length (`Content-Length`) is past `--max-body-bytes` is a 413 before
/// any of it is read: a client that sent `Expect: 100-continue` is answered at once instead
/// of being told to upload it.
pub(crate) async fn refuse_declared_large_body(
    State(s): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body as u64) {
        return too_large(&s).into_response();
    }
    next.run(req).await
}

fn too_large(state: &AppState) -> ApiError {
    ApiError::status(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!(
            "the request body exceeds {} bytes (--max-body-bytes)",
            state.max_body
        ),
    )
}

/// The body, or a JSON error when it is too large or unreadable.
fn body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        // The body failed for want of time (super::listen::with_body_deadline).
        _ if crate::error::caused_by::<BodyTimedOut>(&e) => ApiError::status(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            BodyTimedOut(state.client_timeout).to_string(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => too_large(state),
        status => ApiError::status(status, "invalid_request_error", e.body_text()),
    })
}

fn tokenizer(ready: &Ready) -> &Tokenizer {
    ready
        .model
        .tokenizer()
        .expect("checked when the server started")
}

pub(crate) async fn tokenize(
    State(s): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let ready = s.phase()?;
    let req: TokenizeRequest = parse(&body(&s, raw)?)?;
    let t = tokenizer(&ready);
    let ids = match req.add_special_tokens.unwrap_or(true) {
        true => t.encode(&req.prompt),
        false => t.encode_continuation(&req.prompt),
    }
    .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?;
    Ok(Json(json!({"tokens": ids, "count": ids.len()})))
}

pub(crate) async fn detokenize(
    State(s): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let ready = s.phase()?;
    let req: DetokenizeRequest = parse(&body(&s, raw)?)?;
    let text = tokenizer(&ready)
        .decode(&req.tokens)
        .map_err(|e| ApiError::invalid(Some("tokens"), e.to_string()))?;
    Ok(Json(json!({"prompt": text})))
}

/// Checks the requested model name against the one served.
fn check_model(s: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        // 404 as OpenAI's API answers a model it does not have.
        Some(m) if *m != s.model_id => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "model_not_found",
            ..ApiError::invalid(
                Some("model"),
                format!(
                    "model '{m}' is not served here; this server serves '{}'",
                    s.model_id
                ),
            )
        }),
        _ => Ok(()),
    }
}

/// Checks a prompt's length against the limit.
/// Checks a prompt's length; `param` is the request field it came from (`prompt`, or
/// `messages` rendered by the chat template).
fn check_prompt(s: &AppState, ids: &[u32], param: &str) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid(Some(param), "the prompt has no tokens"));
    }
    if ids.len() > s.limits.max_prompt_tokens {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt has {} tokens, more than this server's limit of {} \
                 (--max-prompt-tokens)",
                ids.len(),
                s.limits.max_prompt_tokens
            ),
        ));
    }
    Ok(())
}

/// Which endpoint's format a response takes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

pub(crate) async fn completions(
    State(s): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ready = s.phase()?;
    let raw = body(&s, raw)?;
    let req: CompletionRequest = parse(&raw)?;
    let common: Common = parse(&raw)?;
    check_model(&s, &common.model)?;
    parse::<Unsupported>(&raw)?.check()?;
    if req.suffix.is_some() {
        return Err(ApiError::invalid(
            Some("suffix"),
            "suffix (insertion) is not supported",
        ));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid(
            Some("best_of"),
            "best_of other than 1 is not supported",
        ));
    }
    let top = match req.logprobs {
        None => None,
        Some(l) if !(0..=20).contains(&l) => {
            return Err(ApiError::invalid(
                Some("logprobs"),
                format!("logprobs must be in 0..=20, got {l}"),
            ))
        }
        Some(l) => Some(l as usize),
    };
    if req.echo && top.is_some() {
        return Err(ApiError::invalid(
            Some("echo"),
            "echo together with logprobs (the prompt's log probabilities) is not supported",
        ));
    }
    let t = tokenizer(&ready);
    let plan = common.plan(
        16,
        common.max_tokens,
        top.unwrap_or(0),
        &s.limits,
        ready.model.vocab(),
    )?;
    let encode = |text: &str| {
        t.encode(text)
            .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))
    };
    // Each prompt's ids, and its text when given as text (echoed as given: decoding would
    // drop its special tokens).
    let (prompts, texts): (Vec<Vec<u32>>, Vec<Option<String>>) = match req.prompt {
        PromptInput::Text(p) => (vec![encode(&p)?], vec![Some(p)]),
        PromptInput::Texts(ps) => (
            ps.iter().map(|p| encode(p)).collect::<Result<_, _>>()?,
            ps.into_iter().map(Some).collect(),
        ),
        PromptInput::Ids(ids) => (vec![ids], vec![None]),
        PromptInput::IdLists(lists) => {
            let n = lists.len();
            (lists, vec![None; n])
        }
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid(
            Some("prompt"),
            "the prompt list is empty",
        ));
    }
    // Also for max_tokens 0: a request never asks for more choices than the server holds.
    s.limits.check_capacity(prompts.len(), plan.n)?;
    for p in &prompts {
        check_prompt(&s, p, "prompt")?;
        crate::runtime::tokenizer::check_ids(p, ready.model.vocab())
            .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?;
    }
    let echo: Vec<String> = match req.echo {
        true => prompts
            .iter()
            .zip(texts)
            .map(|(p, text)| text.unwrap_or_else(|| t.decode(p).unwrap_or_default()))
            .collect(),
        false => vec![String::new(); prompts.len()],
    };
    let logprobs = top.is_some();
    run(&s, &ready, Kind::Completion, prompts, plan, echo, logprobs).await
}

pub(crate) async fn chat(
    State(s): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ready = s.phase()?;
    let raw = body(&s, raw)?;
    let req: ChatRequest = parse(&raw)?;
    let common: Common = parse(&raw)?;
    check_model(&s, &common.model)?;
    parse::<Unsupported>(&raw)?.check()?;
    if ready.chat.is_none() {
        return Err(ApiError::invalid(
            Some("messages"),
            "this model has no chat template (tokenizer_config.json has no chat_template): \
             use /v1/completions with a prompt",
        ));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages is empty"));
    }
    let top = match (req.logprobs, req.top_logprobs) {
        (_, Some(k)) if !(0..=20).contains(&k) => {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                format!("top_logprobs must be in 0..=20, got {k}"),
            ))
        }
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                "top_logprobs needs logprobs: true",
            ))
        }
        (true, k) => k.unwrap_or(0) as usize,
        (false, None) => 0,
    };
    if let (Some(a), Some(b)) = (req.max_completion_tokens, common.max_tokens) {
        if a != b {
            return Err(ApiError::invalid(
                Some("max_completion_tokens"),
                format!(
                    "max_completion_tokens ({a}) and max_tokens ({b}) differ: give one \
                     (max_completion_tokens replaces max_tokens) or the same value in both"
                ),
            ));
        }
    }
    for (i, m) in req.messages.iter().enumerate() {
        if m.role == "tool" || m.role == "function" {
            return Err(ApiError::invalid(
                Some(&format!("messages[{i}].role")),
                format!(
                    "messages with role '{}' are not supported (this server has no tool \
                     calling and generates plain text)",
                    m.role
                ),
            ));
        }
        for (field, value) in [
            ("tool_calls", &m.tool_calls),
            ("function_call", &m.function_call),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
            {
                return Err(ApiError::invalid(
                    Some(&format!("messages[{i}].{field}")),
                    format!(
                        "{field} in messages are not supported (this server has no tool \
                         calling and generates plain text)"
                    ),
                ));
            }
        }
    }
    let max_tokens = req.max_completion_tokens.or(common.max_tokens);
    let plan = common.plan(
        s.limits.max_tokens,
        max_tokens,
        top,
        &s.limits,
        ready.model.vocab(),
    )?;
    let messages: Vec<Turn> = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(Turn {
                role: m.role.clone(),
                content: m.text(i)?,
                name: m.name.clone(),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    // The template runs on its budget (instructions and output), off the async workers.
    let text = {
        let ready = ready.clone();
        tokio::task::spawn_blocking(move || {
            let template = ready.chat.as_ref().expect("checked above");
            template.render(&messages)
        })
        .await
        .map_err(|_| {
            ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "chat_template_error",
                "the chat template's rendering failed",
            )
        })?
        .map_err(|e| match e {
            RenderError::Refused(m) => ApiError::invalid(Some("messages"), m),
            RenderError::Broken(m) => {
                ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "chat_template_error", m)
            }
        })?
    };
    let ids = tokenizer(&ready)
        .encode_continuation(&text)
        .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
    check_prompt(&s, &ids, "messages")?;
    run(
        &s,
        &ready,
        Kind::Chat,
        vec![ids],
        plan,
        vec![String::new()],
        req.logprobs,
    )
    .await
}

/// A response's identity: id, creation time, object names.
struct Identity {
    id: String,
    created: u64,
    kind: Kind,
    model: String,
}

impl Identity {
    /// A response's identity: its id is the time and a count of the responses before it,
    /// unique within the server whatever the clock's resolution.
    fn new(kind: Kind, model: &str) -> Self {
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let created = now.as_secs();
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        Identity {
            id: format!("{prefix}-{created:x}{:08x}{count:x}", now.subsec_nanos()),
            created,
            kind,
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }
}

/// One choice's accumulated output.
#[derive(Default)]
struct ChoiceOut {
    text: String,
    tokens: Vec<(Sampled, String)>,
    /// Tokens generated (`tokens` less those a stop string cut).
    generated: usize,
    finish: Option<&'static str>,
}

/// The tokens at the end of `tokens` that gave no text: where a stop string ended the
/// choice, the tokens it cut whole (their text was held back as a possible match, then
/// dropped with it), which the logprobs leave out as the text does.
fn cut_by_stop(tokens: &[(Sampled, String)]) -> usize {
    tokens
        .iter()
        .rev()
        .take_while(|(_, t)| t.is_empty())
        .count()
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::MaxTokens => "length",
        Finish::Eos | Finish::Stop => "stop",
    }
}

/// Submits one job per prompt and answers plainly or as a stream.
async fn run(
    s: &Arc<AppState>,
    ready: &Arc<Ready>,
    kind: Kind,
    prompts: Vec<Vec<u32>>,
    plan: Plan,
    echo: Vec<String>,
    logprobs: bool,
) -> Result<Response, ApiError> {
    let mut receivers = Vec::with_capacity(prompts.len());
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    if plan.max_tokens == 0 {
        // Nothing to generate (as `moxe generate --max-tokens 0`): every choice ends at
        // once, at its length limit, and the engine is not asked.
        for _ in &prompts {
            let (tx, rx) = unbounded_channel();
            let _ = tx.send(Event::Prefilled { cached: 0 });
            for choice in 0..plan.n {
                let _ = tx.send(Event::Finished {
                    choice,
                    reason: Finish::MaxTokens,
                });
            }
            receivers.push(rx);
        }
    } else {
        let mut jobs = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let (tx, rx) = unbounded_channel();
            jobs.push(Job {
                prompt,
                n: plan.n,
                max_tokens: plan.max_tokens,
                settings: plan.settings.clone(),
                stop: plan.stop.clone(),
                stop_at_eos: plan.stop_at_eos,
                events: tx,
                arrived: Instant::now(),
            });
            receivers.push(rx);
        }
        match ready.engine.submit(jobs) {
            Ok(()) => {}
            Err(Rejected::Busy { waiting, more }) => {
                return Err(ApiError::status(
                    StatusCode::TOO_MANY_REQUESTS,
                    "server_busy",
                    format!(
                        "{waiting} prompts already wait for a slot and this request would add \
                         {more} more, past the queue's {} (--queue): retry later",
                        s.limits.queue
                    ),
                ))
            }
            Err(Rejected::Closed) => {
                return Err(ApiError::status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the server is shutting down",
                ))
            }
        }
    }
    let id = Identity::new(kind, &s.model_id);
    let out = Output {
        id,
        n: plan.n,
        logprobs,
        echo,
        prompt_tokens,
        include_usage: plan.include_usage,
        tokenizer_ready: ready.clone(),
    };
    if plan.stream {
        Ok(out.stream(receivers).into_response())
    } else {
        // A client that goes away drops this future, and with it the receivers: the
        // engine cancels the jobs.
        Ok(Json(out.collect(receivers).await?).into_response())
    }
}

/// How the events of a request's jobs become a response.
struct Output {
    id: Identity,
    n: usize,
    logprobs: bool,
    echo: Vec<String>,
    prompt_tokens: usize,
    include_usage: bool,
    tokenizer_ready: Arc<Ready>,
}

impl Output {
    fn tokenizer(&self) -> &Tokenizer {
        tokenizer(&self.tokenizer_ready)
    }

    /// Waits for every choice and builds the plain response.
    async fn collect(self, receivers: Vec<UnboundedReceiver<Event>>) -> Result<Value, ApiError> {
        let mut choices: Vec<ChoiceOut> = (0..receivers.len() * self.n)
            .map(|_| ChoiceOut::default())
            .collect();
        let mut cached = 0;
        for (p, mut rx) in receivers.into_iter().enumerate() {
            choices[p * self.n].text = self.echo[p].clone();
            for c in 1..self.n {
                choices[p * self.n + c].text = self.echo[p].clone();
            }
            let mut open = self.n;
            while open > 0 {
                let Some(event) = rx.recv().await else {
                    return Err(engine_gone());
                };
                match event {
                    Event::Prefilled { cached: c } => cached += c,
                    Event::Token {
                        choice,
                        piece,
                        sampled,
                    } => {
                        let out = &mut choices[p * self.n + choice];
                        out.text += &piece.text;
                        out.tokens.push((sampled, piece.text));
                        out.generated += 1;
                    }
                    Event::Finished { choice, reason } => {
                        let out = &mut choices[p * self.n + choice];
                        if reason == Finish::Stop {
                            let keep = out.tokens.len() - cut_by_stop(&out.tokens);
                            out.tokens.truncate(keep);
                        }
                        out.finish = Some(finish_reason(reason));
                        open -= 1;
                    }
                    Event::Failed(message) => return Err(failed(message)),
                }
            }
        }
        let completion_tokens: usize = choices.iter().map(|c| c.generated).sum();
        let list: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| self.choice_json(i, c))
            .collect();
        Ok(json!({
            "id": self.id.id,
            "object": self.id.object(false),
            "created": self.id.created,
            "model": self.id.model,
            "choices": list,
            "usage": usage(self.prompt_tokens, completion_tokens, cached),
        }))
    }

    fn choice_json(&self, index: usize, c: &ChoiceOut) -> Value {
        let echo = self.echo[index / self.n].chars().count();
        let logprobs = self.logprobs_json(&c.tokens, echo);
        match self.id.kind {
            Kind::Completion => json!({
                "index": index,
                "text": c.text,
                "logprobs": logprobs,
                "finish_reason": c.finish,
            }),
            Kind::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs,
                "finish_reason": c.finish,
            }),
        }
    }

    /// The `logprobs` object of `tokens` (each with the text it completed; null unless
    /// asked for). A token is named by its own bytes (as text where they are UTF-8, else as
    /// `bytes:\xNN..`, part of a character); `offset` is the character offset in the
    /// choice's text of the first token's text (completions' `text_offset`).
    fn logprobs_json(&self, tokens: &[(Sampled, String)], offset: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let t = self.tokenizer();
        let name = |id: u32| token_name(&t.token_bytes(id));
        match self.id.kind {
            Kind::Completion => {
                let mut at = offset;
                let mut offsets = Vec::new();
                for (_, text) in tokens {
                    offsets.push(at);
                    at += text.chars().count();
                }
                json!({
                    "tokens": tokens.iter().map(|(s, _)| name(s.id)).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.0.logprob).collect::<Vec<_>>(),
                    // The most likely tokens and, as the legacy API has it, always the
                    // sampled one (up to logprobs + 1 entries).
                    "top_logprobs": tokens.iter().map(|(s, _)| {
                        s.top.iter().chain([&(s.id, s.logprob)]).map(|&(id, lp)| (name(id), json!(lp))).collect::<BTreeMap<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Kind::Chat => {
                let entry = |id: u32, lp: f32| {
                    let bytes = t.token_bytes(id);
                    json!({"token": token_name(&bytes), "logprob": lp, "bytes": bytes})
                };
                json!({"content": tokens.iter().map(|(s, _)| {
                    let mut e = entry(s.id, s.logprob);
                    e["top_logprobs"] = s.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                    e
                }).collect::<Vec<_>>()})
            }
        }
    }

    /// A chunk of the stream for choice `index`: `text` (and `role` first for chat), and
    /// the token that completed it, its text starting at character `offset` of the choice.
    fn chunk(
        &self,
        index: usize,
        text: &str,
        tokens: (&[(Sampled, String)], usize),
        finish: Option<&str>,
        first: bool,
    ) -> Value {
        let logprobs = match tokens {
            ([], _) => Value::Null,
            (tokens, offset) => self.logprobs_json(tokens, offset),
        };
        let choice = match self.id.kind {
            Kind::Completion => json!({
                "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
            }),
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if !text.is_empty() || first {
                    delta.insert("content".into(), json!(text));
                }
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id.id,
            "object": self.id.object(true),
            "created": self.id.created,
            "model": self.id.model,
            "choices": [choice],
        })
    }

    /// Streams the events as server-sent events, ending with `[DONE]`. A client that goes
    /// away closes the stream, whose task then drops the jobs' receivers, waiting or not:
    /// the engine cancels them.
    fn stream(self, receivers: Vec<UnboundedReceiver<Event>>) -> impl IntoResponse {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
        tokio::spawn(async move {
            let send = |v: Value| SseEvent::default().data(v.to_string());
            let mut map = StreamMap::new();
            let jobs = receivers.len();
            for (p, r) in receivers.into_iter().enumerate() {
                map.insert(p, UnboundedReceiverStream::new(r));
            }
            let mut first = vec![true; jobs * self.n];
            // Per choice, tokens that gave no text yet: sent with the next text, or at the
            // end, or dropped with the stop string that held them back.
            let mut pending: Vec<Vec<(Sampled, String)>> = vec![Vec::new(); jobs * self.n];
            // Characters each choice's text has so far (for `text_offset`).
            let mut chars = vec![0; jobs * self.n];
            let mut open = jobs * self.n;
            let (mut completion_tokens, mut cached) = (0, 0);
            let mut error = None;
            while open > 0 {
                // A client that leaves before the next event (queued, or while its prompt
                // is read) is noticed at once, not at the next send.
                let next = tokio::select! {
                    next = map.next() => next,
                    () = tx.closed() => return, // dropping `map` cancels the jobs
                };
                let Some((p, event)) = next else {
                    error = Some(engine_gone());
                    break;
                };
                let message = match event {
                    Event::Prefilled { cached: c } => {
                        cached += c;
                        continue;
                    }
                    Event::Token {
                        choice,
                        piece,
                        sampled,
                    } => {
                        let i = p * self.n + choice;
                        completion_tokens += 1;
                        if piece.text.is_empty() && !first[i] {
                            pending[i].push((sampled, piece.text));
                            continue;
                        }
                        let mut text = String::new();
                        if first[i] {
                            text += &self.echo[p];
                            chars[i] += self.echo[p].chars().count();
                        }
                        text += &piece.text;
                        let at = chars[i];
                        chars[i] += piece.text.chars().count();
                        let mut tokens = std::mem::take(&mut pending[i]);
                        tokens.push((sampled, piece.text));
                        let v = self.chunk(i, &text, (&tokens, at), None, first[i]);
                        first[i] = false;
                        v
                    }
                    Event::Finished { choice, reason } => {
                        open -= 1;
                        // A choice that ends before its first token (max_tokens 0) still
                        // opens with its echo and, for chat, its role.
                        let i = p * self.n + choice;
                        let text = if first[i] { self.echo[p].as_str() } else { "" };
                        let mut tokens = std::mem::take(&mut pending[i]);
                        if reason == Finish::Stop {
                            tokens.clear();
                        }
                        let finish = Some(finish_reason(reason));
                        let v = self.chunk(i, text, (&tokens, chars[i]), finish, first[i]);
                        first[i] = false;
                        v
                    }
                    Event::Failed(message) => {
                        error = Some(failed(message));
                        break;
                    }
                };
                if tx.send(Ok(send(message))).await.is_err() {
                    return; // the client has gone: dropping `map` cancels the jobs
                }
            }
            if let Some(e) = error {
                // The error as the stream's last event, then its end as ever.
                let _ = tx.send(Ok(send(e.body()))).await;
            } else if self.include_usage {
                let v = json!({
                    "id": self.id.id,
                    "object": self.id.object(true),
                    "created": self.id.created,
                    "model": self.id.model,
                    "choices": [],
                    "usage": usage(self.prompt_tokens, completion_tokens, cached),
                });
                let _ = tx.send(Ok(send(v))).await;
            }
            let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
        });
        Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
    }
}

/// A token's name in logprobs: its bytes as text where they are UTF-8, else OpenAI's
/// `bytes:\xNN..` (a token that is part of a character).
fn token_name(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => bytes.iter().fold("bytes:".to_string(), |mut s, b| {
            s += &format!("\\x{b:02x}");
            s
        }),
    }
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn failed(message: String) -> ApiError {
    let status = if message.contains("shutting down") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    ApiError::status(status, "engine_error", message)
}

fn engine_gone() -> ApiError {
    ApiError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the engine stopped before the request finished",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_are_unique_however_fast_they_are_made() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| Identity::new(Kind::Completion, "m").id)
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.starts_with("cmpl-")));
    }
}
