//! `moxe serve`: an OpenAI-compatible HTTP server (axum on tokio) over one model, with
//! continuous batching and a prefix-state cache.
//!
//! - [`api`]: request bodies, validation and JSON errors;
//! - `routes`: the endpoints (`/health`, `/v1/models`, `/v1/models/{id}`, `/v1/completions`,
//!   `/v1/chat/completions`, `/tokenize`, `/detokenize`, `/metrics`);
//! - `engine`: the thread that owns the model's slots and runs the steps;
//! - `cache`: prompt-prefix states under a byte budget;
//! - `chat`: chat templates; `metrics`: the Prometheus metrics.
//!
//! The server binds first and loads the model in the background (`/health` answers 503
//! until it is ready). SIGTERM or Ctrl-C stops it gracefully: no new requests, running ones
//! finish or are ended at the deadline, then it exits.

pub mod api;
mod cache;
mod chat;
pub mod client;
mod engine;
mod listen;
mod metrics;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::oneshot;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::runtime::MAX_SEQUENCES;
use crate::runtime::{LoadOptions, Model};
use api::{ApiError, Limits};
use chat::{Budget, ChatTemplate};
use engine::{EngineHandle, EngineOptions};
use metrics::Metrics;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model_dir: PathBuf,
    /// Weight dtype and prefill chunk (`max_sequences` is set to `slots`).
    pub load: LoadOptions,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Sequences decoded together (each choice of each running request takes one), over
    /// all replicas.
    pub slots: usize,
    /// Copies of the model, each on a device of its own with its share of the slots and an
    /// engine thread that decodes its sequences beside the others (see [`auto_replicas`]).
    pub replicas: usize,
    /// Required as `Authorization: Bearer KEY` when set (it may not be empty).
    pub api_key: Option<String>,
    /// Prompts that may wait for a slot; a request whose prompts would pass them gets 429.
    pub queue: usize,
    /// Host bytes of the prefix-state cache (0 turns it off).
    pub cache_bytes: usize,
    pub max_body_bytes: usize,
    pub max_prompt_tokens: usize,
    /// The largest `max_tokens` a request may ask for (at least 1), and chat completions'
    /// default.
    pub max_tokens: usize,
    /// How long running requests may go on after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a client has to send a request's headers (from the connection's opening
    /// or the previous response), and again its body.
    pub client_timeout: Duration,
    /// Origins (`scheme://host[:port]`) whose browser pages may call the API (CORS), or
    /// `*` for any; empty (the default) sends no cross-origin headers.
    pub cors_origins: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            model_dir: crate::checkpoint::default_model_dir(),
            load: LoadOptions::default(),
            host: "127.0.0.1".into(),
            port: 8080,
            slots: 4,
            replicas: 1,
            api_key: None,
            queue: 64,
            cache_bytes: 1 << 30,
            max_body_bytes: 1 << 20,
            max_prompt_tokens: 32768,
            max_tokens: 4096,
            shutdown_grace: Duration::from_secs(30),
            client_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
        }
    }
}

/// The CORS layer for `origins` (see [`ServeOptions::cors_origins`]): none for an empty
/// list; preflights answered for GET and POST with the headers clients send.
fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>> {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins == ["*"] {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                let rest = o
                    .strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"));
                match rest {
                    Some(host) if !host.is_empty() && !host.contains('/') => {
                        HeaderValue::from_str(o)
                            .map_err(|_| format!("'{o}' is not a valid header value"))
                    }
                    _ => Err(format!(
                        "'{o}' is not an origin: give scheme://host[:port] (no path), or * alone \
                         for any"
                    )),
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidArgument(format!("--cors-origin: {e}")))?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(3600)),
    ))
}

/// The loaded model and what serves it.
pub(crate) struct Ready {
    pub model: Arc<Model>,
    pub engine: EngineHandle,
    pub chat: Option<ChatTemplate>,
}

/// The server's shared state.
pub(crate) struct AppState {
    phase: RwLock<Phase>,
    pub api_key: Option<String>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub model_id: String,
    pub max_body: usize,
    pub client_timeout: Duration,
    pub started: u64,
    pub cors: Option<tower_http::cors::CorsLayer>,
}

enum Phase {
    Loading,
    Ready(Arc<Ready>),
    Failed(String),
}

impl AppState {
    /// The ready model, or the 503 that says why there is none.
    pub fn phase(&self) -> std::result::Result<Arc<Ready>, ApiError> {
        match &*self.phase.read().expect("phase poisoned") {
            Phase::Ready(r) => Ok(r.clone()),
            Phase::Loading => Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "loading",
                "the model is still loading",
            )),
            Phase::Failed(e) => Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "load_failed",
                format!("the model failed to load: {e}"),
            )),
        }
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Binds `options.host:port` and starts serving on a thread of its own; the model loads
    /// in the background on `ctx`.
    pub fn start(ctx: Context, options: ServeOptions) -> Result<Server> {
        if options.slots == 0 || options.slots > MAX_SEQUENCES {
            return Err(Error::InvalidArgument(format!(
                "--slots must be between 1 and {MAX_SEQUENCES}, got {}",
                options.slots
            )));
        }
        if options.max_prompt_tokens == 0 {
            return Err(Error::InvalidArgument(
                "--max-prompt-tokens must be at least 1: every prompt has a token".into(),
            ));
        }
        if options.max_body_bytes < MIN_BODY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "--max-body-bytes must be at least {MIN_BODY_BYTES}, got {}",
                options.max_body_bytes
            )));
        }
        if options.replicas == 0 || options.replicas > options.slots {
            return Err(Error::InvalidArgument(format!(
                "--replicas must be between 1 and the slots ({}), got {}",
                options.slots, options.replicas
            )));
        }
        if options.queue > MAX_QUEUE {
            return Err(Error::InvalidArgument(format!(
                "--queue must be at most {MAX_QUEUE}, got {}",
                options.queue
            )));
        }
        if options.max_tokens == 0 {
            return Err(Error::InvalidArgument(
                "--max-tokens must be at least 1: it is the largest max_tokens a request may \
                 ask for (a request may still ask for 0)"
                    .into(),
            ));
        }
        let hour = Duration::from_secs(3600);
        if options.client_timeout.is_zero() || options.client_timeout > hour {
            return Err(Error::InvalidArgument(format!(
                "--client-timeout must be between 1 ms and 3600 s, got {:?}",
                options.client_timeout
            )));
        }
        if options.shutdown_grace > 24 * hour {
            return Err(Error::InvalidArgument(format!(
                "--shutdown-grace must be at most a day, got {:?}",
                options.shutdown_grace
            )));
        }
        if options
            .api_key
            .as_ref()
            .is_some_and(|k| k.trim().is_empty())
        {
            return Err(Error::InvalidArgument(
                "the API key (--api-key or MOXE_API_KEY) is empty or blank, which no client \
                 could send: give a key, or unset both to serve without one"
                    .into(),
            ));
        }
        let cors = cors_layer(&options.cors_origins)?;
        let addr = format!("{}:{}", options.host, options.port);
        let listener = std::net::TcpListener::bind(&addr)
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {addr}: {e}")))?;
        let model_id = options
            .model_dir
            .canonicalize()
            .unwrap_or_else(|_| options.model_dir.clone())
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let state = Arc::new(AppState {
            phase: RwLock::new(Phase::Loading),
            api_key: options.api_key.clone(),
            limits: Limits {
                max_prompt_tokens: options.max_prompt_tokens,
                max_tokens: options.max_tokens,
                // A request's choices run on one replica.
                max_n: options.slots / options.replicas,
                replica_slots: (0..options.replicas)
                    .map(|i| replica_slots(options.slots, options.replicas, i))
                    .collect(),
                queue: options.queue,
            },
            metrics: Arc::new(Metrics::new()),
            model_id,
            max_body: options.max_body_bytes,
            client_timeout: options.client_timeout,
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cors,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("moxe-server".into())
            .spawn(move || serve(ctx, options, state, listener, stop_rx))
            .map_err(|e| Error::InvalidArgument(format!("cannot start the server thread: {e}")))?;
        Ok(Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully (as SIGTERM does) and waits for the server to exit.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait_inner()
    }

    /// Waits until the server exits (after SIGTERM or Ctrl-C, or a failed model load).
    pub fn wait(mut self) -> Result<()> {
        self.wait_inner()
    }

    fn wait_inner(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(Error::InvalidArgument("the server thread panicked".into()))
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.wait_inner();
    }
}

/// The router over `state`.
fn router(state: Arc<AppState>) -> Router {
    let max_body = state.max_body;
    let router = Router::new()
        .route("/health", get(routes::health))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{*id}", get(routes::model))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::refuse_declared_large_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.client_timeout,
            listen::with_body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::count,
        ));
    // Outermost: a browser's preflight is answered before the key or the method is checked.
    let router = match state.cors.clone() {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

/// The server thread: a tokio runtime serving `listener` until stopped.
fn serve(
    ctx: Context,
    options: ServeOptions,
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    stop: oneshot::Receiver<()>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start the async runtime: {e}")))?;
    // A failed load ends the server with its error.
    let (failed_tx, failed_rx) = oneshot::channel::<Error>();
    let loader = {
        let state = state.clone();
        let options = options.clone();
        std::thread::Builder::new()
            .name("moxe-load".into())
            .spawn(move || match load(&ctx, &options, &state) {
                Ok(engine) => Some(engine),
                Err(e) => {
                    log::error!("{e}");
                    *state.phase.write().expect("phase poisoned") = Phase::Failed(e.to_string());
                    let _ = failed_tx.send(e);
                    None
                }
            })
            .map_err(|e| Error::InvalidArgument(format!("cannot start the loader: {e}")))?
    };
    let failure = Arc::new(Mutex::new(None));
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::InvalidArgument(format!("cannot listen: {e}")))?;
        let app = router(state.clone());
        let grace = options.shutdown_grace;
        let signal_state = state.clone();
        let failure_slot = failure.clone();
        let shutdown = async move {
            tokio::select! {
                _ = stop => {}
                _ = terminate() => log::info!("stopping: finishing running requests"),
                Ok(e) = failed_rx => { *failure_slot.lock().expect("failure poisoned") = Some(e); }
            }
            if let Ok(ready) = signal_state.phase() {
                ready.engine.drain(Instant::now() + grace);
            }
        };
        // Running requests end at the grace; their clients then have a client timeout to
        // read what is left.
        let drain = grace + options.client_timeout;
        listen::serve(listener, app, shutdown, options.client_timeout, drain).await;
        Ok(())
    });
    // Dropping the state's engine handle lets the engine threads finish.
    let engines = loader.join().ok().flatten();
    *state.phase.write().expect("phase poisoned") = Phase::Failed("stopped".into());
    for thread in engines.into_iter().flatten() {
        let _ = thread.join();
    }
    if let Some(e) = failure.lock().expect("failure poisoned").take() {
        return Err(e);
    }
    result
}

/// Loads the model (once per replica, the first on `ctx`, the others on replicas of it)
/// and starts the engines; returns their threads.
fn load(
    ctx: &Context,
    options: &ServeOptions,
    state: &AppState,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut models = Vec::new();
    for i in 0..options.replicas {
        // The slots shared out as evenly as they go.
        let load = LoadOptions {
            max_sequences: replica_slots(options.slots, options.replicas, i),
            ..options.load.clone()
        };
        let ctx = if i == 0 { ctx.clone() } else { ctx.replica()? };
        let model = Arc::new(Model::load(&ctx, &options.model_dir, &load)?);
        model.require_tokenizer()?;
        // The step graphs' pipelines before the server says it is ready, not at the
        // first request (the engine samples on the host, from the logits).
        model.prepare_steps(crate::runtime::runner::Output::Logits)?;
        models.push(model);
    }
    let chat = ChatTemplate::of_model(
        &options.model_dir,
        Budget::for_bodies_of(options.max_body_bytes),
    )?;
    let model = models[0].clone();
    let (engine, threads) = engine::start(
        models,
        EngineOptions {
            queue_limit: options.queue,
            cache_bytes: options.cache_bytes,
        },
        state.metrics.clone(),
    )?;
    *state.phase.write().expect("phase poisoned") = Phase::Ready(Arc::new(Ready {
        model,
        engine,
        chat,
    }));
    Ok(threads)
}

/// Replica `i`'s share of `slots` over `replicas` (shared out as evenly as they go).
fn replica_slots(slots: usize, replicas: usize, i: usize) -> usize {
    slots / replicas + usize::from(i < slots % replicas)
}

/// The replicas `moxe serve` uses unless told: on a CPU adapter whose driver runs each
/// device's work on a single thread of its own (lavapipe with `LP_NUM_THREADS=0`, which the
/// CLI sets for small models), where one device would leave the other cores idle, one per
/// core as long as each keeps [`MIN_REPLICA_SLOTS`] slots (so a request's `n` choices, which
/// share one replica, may still number that many); one elsewhere. Each replica holds its
/// own copy of the weights.
pub fn auto_replicas(ctx: &Context, slots: usize) -> usize {
    let single_thread = std::env::var("LP_NUM_THREADS").is_ok_and(|v| v.trim() == "0");
    if !(ctx.is_cpu() && single_thread) {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.min(slots / MIN_REPLICA_SLOTS).max(1)
}

/// The most prompts that may wait for a slot (`--queue`).
pub const MAX_QUEUE: usize = 1 << 20;

/// The smallest request body limit a server takes: any smaller refuses every request.
pub const MIN_BODY_BYTES: usize = 1024;

/// The fewest slots [`auto_replicas`] leaves a replica.
pub const MIN_REPLICA_SLOTS: usize = 4;

/// SIGTERM or Ctrl-C.
async fn terminate() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
