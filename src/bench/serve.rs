//! `moxe bench serve`: the HTTP server under load, in-process on a loopback port: aggregate
//! generated tokens/s at 1, 4 and 16 concurrent streams (the best of interleaved rounds),
//! and the time to first token of a continuation of a 1,000-token prompt with its prefix
//! cached and without.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::runtime::LoadOptions;
use crate::server::client::{self, Timed};
use crate::server::{auto_replicas, ServeOptions, Server};

/// Settings of the serving benchmark.
#[derive(Debug, Clone)]
pub struct ServeBenchOptions {
    /// Concurrent streams per round.
    pub streams: Vec<usize>,
    /// Tokens each stream generates.
    pub tokens: usize,
    /// Interleaved rounds over the stream counts; each count's figure is its best round, so
    /// a slow spell of a shared machine does not land on one side of a ratio only.
    pub rounds: usize,
    /// Prompt tokens of the cached prefix.
    pub prefix: usize,
    /// Timed repetitions of each time-to-first-token measurement (the median is shown).
    pub repeats: usize,
    /// Model replicas of the server (None: [`auto_replicas`]).
    pub replicas: Option<usize>,
}

impl Default for ServeBenchOptions {
    fn default() -> Self {
        ServeBenchOptions {
            streams: vec![1, 4, 16],
            tokens: 64,
            rounds: 3,
            prefix: 1000,
            repeats: 5,
            replicas: None,
        }
    }
}

impl ServeBenchOptions {
    /// The server's slots: one per stream of the largest round.
    pub fn slots(&self) -> usize {
        self.streams.iter().copied().max().unwrap_or(1)
    }
}

fn failed(what: &str, t: &Timed) -> Error {
    Error::InvalidArgument(format!(
        "{what}: status {}: {}",
        t.status,
        t.body.chars().take(300).collect::<String>()
    ))
}

/// Prompt ids `0..n` of a pseudo-random text over the vocabulary, different per `seed`.
fn ids(n: usize, seed: u32, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503)))
                % (vocab - 10)
                + 10
        })
        .collect()
}

/// Runs the benchmark on the model at `dir`; returns the report.
pub fn run(ctx: &Context, dir: &Path, options: &ServeBenchOptions) -> Result<String> {
    let vocab = crate::arch::ModelConfig::from_file(&dir.join("config.json"))?.vocab_size as u32;
    let slots = options.slots();
    let replicas = options
        .replicas
        .unwrap_or_else(|| auto_replicas(ctx, slots));
    let server = Server::start(
        ctx.clone(),
        ServeOptions {
            model_dir: dir.to_path_buf(),
            load: LoadOptions::default(),
            port: 0,
            slots,
            replicas,
            max_prompt_tokens: options.prefix * 2 + 64,
            ..ServeOptions::default()
        },
    )?;
    let addr = server.addr();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start the async runtime: {e}")))?;
    let report = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match client::call(addr, "GET", "/health", "", None).await {
                Ok((200, _)) => break,
                Ok((_, body)) if body.contains("\"error\"") => {
                    return Err(Error::InvalidArgument(format!("the server failed: {body}")))
                }
                _ if Instant::now() > deadline => {
                    return Err(Error::InvalidArgument(
                        "the model did not load in 10 minutes".into(),
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            "moxe serve on {} with {slots} slots on {replicas} replica(s): {} generated \
             tokens per stream, sampled (temperature 0.8), EOS ignored",
            dir.display(),
            options.tokens
        );
        // Warm up every batch shape the rounds use.
        for &n in &options.streams {
            streams(addr, n, options.tokens.min(4), vocab).await?;
        }
        // rates[i][r]: aggregate tokens/s of stream count i in round r.
        let mut rates = vec![Vec::new(); options.streams.len()];
        for _ in 0..options.rounds.max(1) {
            for (&n, rates) in options.streams.iter().zip(&mut rates) {
                let (tokens, secs) = streams(addr, n, options.tokens, vocab).await?;
                rates.push(tokens as f64 / secs);
            }
        }
        let best = |r: &[f64]| r.iter().copied().fold(0.0, f64::max);
        let base = best(&rates[0]);
        let _ = writeln!(
            s,
            "\n{:>8} {:>14} {:>10}  each round (tokens/s)",
            "streams", "aggregate/s", "vs first"
        );
        for (&n, rates) in options.streams.iter().zip(&rates) {
            let rounds: Vec<String> = rates.iter().map(|r| format!("{r:.1}")).collect();
            let _ = writeln!(
                s,
                "{n:>8} {:>14.1} {:>9.2}x  {}",
                best(rates),
                best(rates) / base,
                rounds.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "(each figure the best of {} interleaved rounds)",
            options.rounds.max(1)
        );
        let (cached, uncached) = first_token_times(addr, options, vocab).await?;
        let _ = writeln!(
            s,
            "\ntime to first token after a {}-token prompt + 16 new tokens (median of {}):\n  \
             prefix cached:   {:>8.1} ms\n  no cached prefix: {:>7.1} ms  ({:.1}x slower)",
            options.prefix,
            options.repeats,
            cached * 1e3,
            uncached * 1e3,
            uncached / cached
        );
        Ok(s)
    });
    server.shutdown()?;
    report
}

/// `n` concurrent streams of `tokens` tokens each; returns (tokens generated, seconds).
async fn streams(
    addr: std::net::SocketAddr,
    n: usize,
    tokens: usize,
    vocab: u32,
) -> Result<(usize, f64)> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let body = json!({"prompt": ids(16, i as u32 + 1, vocab), "max_tokens": tokens,
                "temperature": 0.8, "seed": i, "stream": true, "ignore_eos": true})
            .to_string();
            tokio::spawn(async move { client::stream(addr, "/v1/completions", &body).await })
        })
        .collect();
    let mut generated = 0;
    for t in tasks {
        let timed = t
            .await
            .map_err(|e| Error::InvalidArgument(format!("a stream panicked: {e}")))?
            .map_err(Error::InvalidArgument)?;
        if timed.status != 200 {
            return Err(failed("a benchmark stream", &timed));
        }
        // Every token event but the finish and [DONE] carries one token.
        generated += client::events(&timed.body)
            .iter()
            .filter(|e| e.contains("\"finish_reason\":null"))
            .count();
    }
    Ok((generated, start.elapsed().as_secs_f64()))
}

/// Median time to first token of a prefix + 16-token prompt, with the prefix cached and
/// with a prefix never seen before.
async fn first_token_times(
    addr: std::net::SocketAddr,
    options: &ServeBenchOptions,
    vocab: u32,
) -> Result<(f64, f64)> {
    let ask = |prompt: &[u32]| {
        json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "stream": true}).to_string()
    };
    let (mut cached, mut uncached) = (Vec::new(), Vec::new());
    for r in 0..options.repeats as u32 {
        let prefix = ids(options.prefix, 1000 + r, vocab);
        let mut cont = prefix.clone();
        cont.extend(ids(16, 2000 + r, vocab));
        // The prefix, read once: its state is cached.
        let first = client::stream(addr, "/v1/completions", &ask(&prefix))
            .await
            .map_err(Error::InvalidArgument)?;
        if first.status != 200 {
            return Err(failed("the prefix request", &first));
        }
        let hit = client::stream(addr, "/v1/completions", &ask(&cont))
            .await
            .map_err(Error::InvalidArgument)?;
        cached.push(hit.first_event.as_secs_f64());
        // A different prefix of the same length, never seen: all of it is prefilled.
        let mut fresh = ids(options.prefix, 3000 + r, vocab);
        fresh.extend(ids(16, 2000 + r, vocab));
        let miss = client::stream(addr, "/v1/completions", &ask(&fresh))
            .await
            .map_err(Error::InvalidArgument)?;
        uncached.push(miss.first_event.as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(cached), median(uncached)))
}
