//! `moxe serve`: the OpenAI-compatible HTTP server (see `moxe::server`).

use std::time::Duration;

use clap::Args;

use moxe::runtime::LoadOptions;
use moxe::server::{ServeOptions, Server};
use moxe::Result;

use super::model_args::{load_progress, DtypeArg, ModelArgs};
use super::GpuArgs;

/// `--replicas` when not given: [`moxe::server::auto_replicas`] for a model small enough to
/// decode on one lavapipe thread (larger ones would hold a copy of big weights per core and
/// decode on lavapipe's thread pool anyway), else 1.
pub fn default_replicas(ctx: &moxe::Context, slots: usize, small_model: bool) -> usize {
    if small_model {
        moxe::server::auto_replicas(ctx, slots)
    } else {
        1
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences decoded together: each choice of each running request takes one.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=moxe::runtime::MAX_SEQUENCES as u64))]
    pub slots: usize,
    /// Copies of the model decoding side by side, each on a device of its own with its
    /// share of the slots [default: for a small model on a CPU adapter that runs each
    /// device on one thread (lavapipe with LP_NUM_THREADS=0), one per CPU core while each
    /// keeps 4 slots; else 1].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (not empty: leave
    /// both this and MOXE_API_KEY unset to serve without a key).
    #[arg(long, env = "MOXE_API_KEY")]
    pub api_key: Option<String>,
    /// Prompts that may wait for a slot (on all replicas together); a request whose prompts
    /// would pass them gets 429.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=moxe::server::MAX_QUEUE as u64))]
    pub queue: usize,
    /// MiB of host memory for the prefix-state cache (0 turns it off).
    #[arg(long, default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1 << 24))]
    pub cache_mib: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(moxe::server::MIN_BODY_BYTES as u64..=1 << 32))]
    pub max_body_bytes: usize,
    /// Longest prompt in tokens.
    #[arg(long, default_value_t = 32768, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 24))]
    pub max_prompt_tokens: usize,
    /// Largest max_tokens a request may ask for, and the default of chat completions
    /// (completions default to 16 or this, whichever is less). At least 1: a request may
    /// still ask for 0 tokens itself.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Seconds running requests may go on after SIGTERM before they are ended.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Seconds a client has to send a request's headers (from connecting, or from the
    /// previous response on a kept-alive connection), and again its body; slower ones are
    /// disconnected (headers) or answered 408 (body).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub client_timeout: u64,
    /// Let browser pages of this origin (scheme://host[:port]) call the API; repeat for more,
    /// or give * for any [default: none, no cross-origin headers].
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
}

pub fn run(gpu: &GpuArgs, args: &ServeArgs) -> Result<()> {
    let small = super::threads::for_decode(&args.model.model.join("config.json"));
    let ctx = gpu.context()?;
    let replicas = args
        .replicas
        .unwrap_or_else(|| default_replicas(&ctx, args.slots, small));
    let (bar, progress) = load_progress("loading");
    let options = ServeOptions {
        model_dir: args.model.model.clone(),
        load: LoadOptions {
            dtype: args.model.dtype.map(DtypeArg::dtype),
            progress: Some(progress),
            ..Default::default()
        },
        host: args.host.clone(),
        port: args.port,
        slots: args.slots,
        replicas,
        api_key: args.api_key.clone(),
        queue: args.queue,
        cache_bytes: args.cache_mib << 20,
        max_body_bytes: args.max_body_bytes,
        max_prompt_tokens: args.max_prompt_tokens,
        max_tokens: args.max_tokens,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        client_timeout: Duration::from_secs(args.client_timeout),
        cors_origins: args.cors_origins.clone(),
    };
    let server = Server::start(ctx, options)?;
    eprintln!(
        "moxe serve: http://{} (model {}, {} slots on {replicas} replica(s); loading, \
         GET /health says when ready)",
        server.addr(),
        args.model.model.display(),
        args.slots
    );
    let result = server.wait();
    bar.finish_and_clear();
    result
}
