//! `moxe serve` end to end: the server on an ephemeral loopback port, talked to over real
//! HTTP (hyper's client in `moxe::server::client`, and raw TCP to hang up mid-stream): every endpoint, streaming,
//! batched runs equal to solo runs, cancellation, the queue, bad requests, the API key, the
//! prefix cache, model replicas, chat templates and a graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use moxe::runtime::LoadOptions;
use moxe::server::{client, ServeOptions, Server};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default")
}

fn start(options: ServeOptions) -> Server {
    let ctx = moxe::testing::gpu().clone();
    let server = Server::start(
        ctx,
        ServeOptions {
            port: 0,
            load: LoadOptions::default(),
            ..options
        },
    )
    .unwrap();
    let addr = server.addr();
    let deadline = Instant::now() + Duration::from_secs(120);
    let rt = runtime();
    while rt.block_on(call(addr, "GET", "/health", None, None)).0 != 200 {
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn options() -> ServeOptions {
    ServeOptions {
        model_dir: bundled(),
        slots: 4,
        ..ServeOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One request over HTTP; returns the status and the body text.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> (u16, String) {
    client::call(addr, method, path, body.unwrap_or(""), key)
        .await
        .unwrap()
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = call(addr, "POST", path, Some(&body.to_string()), None).await;
    (status, parse(&text))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A streamed completion's text per choice, and its finish reasons.
fn streamed(text: &str) -> (Vec<String>, Vec<String>) {
    let ev = client::events(text);
    assert_eq!(ev.last().copied(), Some("[DONE]"), "{text}");
    let mut texts = vec![String::new(); 4];
    let mut finish = Vec::new();
    for e in &ev[..ev.len() - 1] {
        let v = parse(e);
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            let piece = c["text"]
                .as_str()
                .or(c["delta"]["content"].as_str())
                .unwrap_or("");
            texts[i] += piece;
            if let Some(f) = c["finish_reason"].as_str() {
                finish.push(f.to_string());
            }
        }
    }
    (texts, finish)
}

#[test]
fn every_endpoint_answers() {
    let server = start(options());
    let addr = server.addr();
    runtime().block_on(async {
        let (s, body) = call(addr, "GET", "/health", None, None).await;
        assert_eq!((s, parse(&body)["status"].clone()), (200, json!("ok")));
        let (s, body) = call(addr, "GET", "/v1/models", None, None).await;
        assert_eq!(s, 200);
        assert_eq!(parse(&body)["data"][0]["id"], "default");
        let (s, t) = post(
            addr,
            "/tokenize",
            json!({"prompt": "It was the best of times"}),
        )
        .await;
        assert_eq!(s, 200, "{t}");
        let ids = t["tokens"].clone();
        assert_eq!(
            t["count"].as_u64().unwrap() as usize,
            ids.as_array().unwrap().len()
        );
        let (s, d) = post(addr, "/detokenize", json!({"tokens": ids})).await;
        assert_eq!(
            (s, d["prompt"].clone()),
            (200, json!("It was the best of times"))
        );
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"model": "default", "prompt": "It was the best of times", "max_tokens": 12,
                   "temperature": 0, "logprobs": 2}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(c["usage"]["completion_tokens"], 12);
        let lp = &c["choices"][0]["logprobs"];
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 12);
        assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
        // Sampled hot, each token is in its top_logprobs whether or not it is among the
        // most likely (up to logprobs + 1 entries).
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 20, "temperature": 1.8, "seed": 0,
                   "logprobs": 1}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
        let lp = &c["choices"][0]["logprobs"];
        for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
            let top = top.as_object().unwrap();
            let token = lp["tokens"][i].as_str().unwrap();
            assert_eq!(top.get(token), Some(&lp["token_logprobs"][i]), "{lp}");
            assert!((1..=2).contains(&top.len()), "{lp}");
        }
        // Token ids as the prompt, several prompts, n choices, echo.
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": [[5, 6, 7], [8, 9]], "max_tokens": 3, "n": 2, "seed": 1,
                   "temperature": 1.0}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 4);
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "Once", "max_tokens": 2, "echo": true, "temperature": 0}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
        assert!(c["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Once"));
        let (s, text) = call(addr, "GET", "/metrics", None, None).await;
        assert_eq!(s, 200);
        for name in [
            "moxe_requests_total",
            "moxe_prompt_tokens_total",
            "moxe_generated_tokens_total",
            "moxe_queue_depth",
            "moxe_busy_slots",
            "moxe_time_to_first_token_seconds_bucket",
            "moxe_token_latency_seconds_bucket",
            "moxe_prefix_cache_hits_total",
        ] {
            assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
        }
    });
    server.shutdown().unwrap();
}

#[test]
fn streams_equal_plain_responses_and_batched_runs_equal_solo_runs() {
    let server = start(options());
    let addr = server.addr();
    let prompts = [
        "The sea was calm",
        "She opened the letter",
        "In the morning the",
        "He said nothing, but",
    ];
    let request = |p: &str, seed: u64, stream: bool| {
        json!({"prompt": p, "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "top_k": 50,
               "seed": seed, "stream": stream, "ignore_eos": true})
    };
    runtime().block_on(async {
        // Solo, one after another, plain.
        let mut solo = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let (s, c) = post(addr, "/v1/completions", request(p, i as u64, false)).await;
            assert_eq!(s, 200, "{c}");
            solo.push(c["choices"][0]["text"].as_str().unwrap().to_string());
        }
        // All at once, streamed: batched together by the engine.
        let tasks: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let body = request(p, i as u64, true).to_string();
                tokio::spawn(async move {
                    call(addr, "POST", "/v1/completions", Some(&body), None).await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (s, text) = t.await.unwrap();
            assert_eq!(s, 200, "{text}");
            let (texts, finish) = streamed(&text);
            assert_eq!(
                texts[0], solo[i],
                "prompt {i}: batched stream differs from solo"
            );
            assert_eq!(finish, vec!["length"]);
        }
    });
    server.shutdown().unwrap();
}

/// The first choice's text of each completion request, sent one after another.
async fn one_by_one(addr: SocketAddr, bodies: &[Value]) -> Vec<Value> {
    let mut texts = Vec::new();
    for body in bodies {
        let (s, c) = post(addr, "/v1/completions", body.clone()).await;
        assert_eq!(s, 200, "{c}");
        texts.push(c["choices"][0]["text"].clone());
    }
    texts
}

/// The first choice's text of each completion request, all sent at once.
async fn all_at_once(addr: SocketAddr, bodies: &[Value]) -> Vec<Value> {
    let tasks: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| tokio::spawn(async move { post(addr, "/v1/completions", body).await }))
        .collect();
    let mut texts = Vec::new();
    for t in tasks {
        let (s, c) = t.await.unwrap();
        assert_eq!(s, 200, "{c}");
        texts.push(c["choices"][0]["text"].clone());
    }
    texts
}

#[test]
fn prompts_read_together_continue_as_prompts_read_alone() {
    // Without the prefix cache, which would serve the repeated prompts without a prefill.
    let server = start(ServeOptions {
        cache_bytes: 0,
        ..options()
    });
    let addr = server.addr();
    // Four prompts of 140 ids (a 128-id chunk, then 12): arriving together, their chunks
    // are prefilled in batched steps.
    let prompt = |p: u32| -> Vec<u32> {
        (0..140u32)
            .map(|i| (i * 53 + p * 977) % 4000 + 30)
            .collect()
    };
    let request = |p: u32| {
        json!({"prompt": prompt(p), "max_tokens": 12, "temperature": 0.8, "seed": p,
               "ignore_eos": true})
    };
    runtime().block_on(async {
        let bodies: Vec<Value> = (0..4).map(request).collect();
        let solo = one_by_one(addr, &bodies).await;
        for _ in 0..2 {
            assert_eq!(all_at_once(addr, &bodies).await, solo);
        }
    });
    server.shutdown().unwrap();
}

/// Sends a streaming request over raw TCP, reads its first event, and hangs up.
/// Sends a streamed completion over a raw connection and returns it once the first event
/// has arrived (the request is running): dropping the connection hangs up.
async fn running_stream(addr: SocketAddr, body: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("data: ") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first event: {got}");
        got += &String::from_utf8_lossy(&buf[..n]);
    }
    tcp
}

async fn busy_slots(addr: SocketAddr) -> u64 {
    gauge(addr, "moxe_busy_slots ").await
}

async fn gauge(addr: SocketAddr, name: &str) -> u64 {
    let (_, text) = call(addr, "GET", "/metrics", None, None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_client_that_hangs_up_frees_its_slots_and_a_full_queue_is_429() {
    let server = start(ServeOptions {
        slots: 2,
        queue: 1,
        ..options()
    });
    let addr = server.addr();
    let long = json!({"prompt": "Long ago", "max_tokens": 4000, "ignore_eos": true,
                      "stream": true, "n": 2})
    .to_string();
    runtime().block_on(async {
        drop(running_stream(addr, &long).await);
        let deadline = Instant::now() + Duration::from_secs(10);
        while busy_slots(addr).await != 0 {
            assert!(Instant::now() < deadline, "the slots were never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Both slots are free again: a request needing both runs.
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "Hi", "max_tokens": 2, "n": 2}),
        )
        .await;
        assert_eq!(s, 200, "{c}");

        // One request holds both slots, one waits, the next finds the queue full.
        let first = running_stream(addr, &long).await;
        let waiting = tokio::spawn({
            let long = long.clone();
            async move { call(addr, "POST", "/v1/completions", Some(&long), None).await }
        });
        while gauge(addr, "moxe_queue_depth ").await != 1 {
            if waiting.is_finished() {
                let (s, body) = waiting.await.unwrap();
                panic!("the second request did not wait: {s} {body:.300}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (s, e) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 1}),
        )
        .await;
        assert_eq!(s, 429, "{e}");
        assert_eq!(e["error"]["code"], "server_busy");
        // A waiting client that hangs up leaves the queue at once, streamed or not (a
        // stream's place was kept until its first event).
        waiting.abort();
        let queue_empties = || async {
            let deadline = Instant::now() + Duration::from_secs(5);
            while gauge(addr, "moxe_queue_depth ").await != 0 {
                assert!(
                    Instant::now() < deadline,
                    "the queue kept a client that left"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Still the first request's two slots: nobody else ran.
            assert_eq!(busy_slots(addr).await, 2);
        };
        queue_empties().await;
        let body = json!({"prompt": "x", "max_tokens": 1, "stream": true}).to_string();
        let mut queued = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        queued.write_all(req.as_bytes()).await.unwrap();
        while gauge(addr, "moxe_queue_depth ").await != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(queued);
        queue_empties().await;
        drop(first);
    });
    server.shutdown().unwrap();
}

#[test]
fn bad_requests_get_4xx_errors_naming_the_problem() {
    let server = start(ServeOptions {
        max_prompt_tokens: 50,
        max_tokens: 100,
        max_body_bytes: 4096,
        ..options()
    });
    let addr = server.addr();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/completions",
            "{\"prompt\": \"x\",".into(),
            400,
            "not valid JSON",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": "hot"}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": -1}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": -5}).to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 101}).to_string(),
            400,
            "--max-tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "top_p": 0}).to_string(),
            400,
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "n": 0}).to_string(),
            400,
            "\"n\"",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "n": 5}).to_string(),
            400,
            "\"n\"",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "min_p": 2}).to_string(),
            400,
            "min_p",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "presence_penalty": 9}).to_string(),
            400,
            "presence_penalty",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logit_bias": {"99999": 1}}).to_string(),
            400,
            "logit_bias",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logit_bias": {"a": 1}}).to_string(),
            400,
            "logit_bias",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 30}).to_string(),
            400,
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "model": "gpt-4"}).to_string(),
            404,
            "model_not_found",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 99999]}).to_string(),
            400,
            "out of range",
        ),
        (
            "/v1/completions",
            json!({"prompt": ""}).to_string(),
            400,
            "no tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "word ".repeat(80)}).to_string(),
            400,
            "--max-prompt-tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(5000)}).to_string(),
            413,
            "--max-body-bytes",
        ),
        (
            "/v1/completions",
            json!({"max_tokens": 3}).to_string(),
            400,
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "stop": ["", "a"]}).to_string(),
            400,
            "stop",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
            400,
            "chat template",
        ),
        (
            "/detokenize",
            json!({"tokens": [1, -2]}).to_string(),
            400,
            "tokens",
        ),
        ("/v1/nothing", "{}".into(), 404, "no endpoint"),
        // A missing field is the param; a value of the wrong shape says what is expected.
        (
            "/v1/completions",
            json!({"max_tokens": 1}).to_string(),
            400,
            "\"param\":\"prompt\"",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, "a"]}).to_string(),
            400,
            "a list of lists of token ids",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "stop": 5}).to_string(),
            400,
            "a string or a list of strings",
        ),
        (
            "/v1/completions",
            "{\"prompt\": \"x\", \"temperature\": 1e400}".into(),
            400,
            "\"param\":\"temperature\"",
        ),
        // Other servers' extensions that would change the output.
        (
            "/v1/completions",
            json!({"prompt": "x", "min_tokens": 4}).to_string(),
            400,
            "\"param\":\"min_tokens\"",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "repetition_penalty": 1.2}).to_string(),
            400,
            "\"param\":\"repetition_penalty\"",
        ),
    ];
    runtime().block_on(async {
        for (path, body, status, needle) in cases {
            let (s, text) = call(addr, "POST", path, Some(&body), None).await;
            let v = parse(&text);
            assert_eq!(s, status, "{path} {body}: {text}");
            assert!(v["error"]["message"].is_string(), "{text}");
            assert!(
                text.contains(needle),
                "{path} {body}: expected {needle:?} in {text}"
            );
        }
        let (s, text) = call(addr, "GET", "/v1/completions", None, None).await;
        assert_eq!(s, 405, "{text}");
        // A body declared too large is refused before it is sent, not invited by a 100.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             expect: 100-continue\r\ncontent-length: 2000000\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("no answer before the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    });
    server.shutdown().unwrap();
}

/// A raw request's answer, lower-cased (status line and headers included).
async fn raw(addr: SocketAddr, request: String) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

#[test]
fn browser_pages_of_the_allowed_origins_may_call_the_api() {
    let server = start(ServeOptions {
        cors_origins: vec!["http://localhost:3000".into()],
        api_key: Some("sesame".into()),
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        // The preflight is answered before the key is asked for.
        let preflight = |origin: &str| {
            format!(
                "OPTIONS /v1/completions HTTP/1.1\r\nhost: {addr}\r\norigin: {origin}\r\n\
                 access-control-request-method: POST\r\n\
                 access-control-request-headers: authorization, content-type\r\n\
                 connection: close\r\n\r\n"
            )
        };
        let answer = raw(addr, preflight("http://localhost:3000")).await;
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(
            answer.contains("access-control-allow-origin: http://localhost:3000")
                && answer.contains("access-control-allow-headers: authorization,content-type"),
            "{answer}"
        );
        let answer = raw(addr, preflight("http://evil.example")).await;
        assert!(!answer.contains("access-control-allow-origin"), "{answer}");
        // The request itself carries the header.
        let get = "GET /v1/models HTTP/1.1\r\nhost: x\r\norigin: http://localhost:3000\r\n\
                   authorization: Bearer sesame\r\nconnection: close\r\n\r\n";
        let answer = raw(addr, get.to_string()).await;
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains("access-control-allow-origin: http://localhost:3000"));
    });
    server.shutdown().unwrap();
    // Without origins, no cross-origin headers; a malformed origin is refused at startup.
    let plain = start(options());
    let addr = plain.addr();
    runtime().block_on(async {
        let get = "GET /v1/models HTTP/1.1\r\nhost: x\r\norigin: http://localhost:3000\r\n\
                   connection: close\r\n\r\n";
        assert!(!raw(addr, get.to_string()).await.contains("access-control"));
    });
    plain.shutdown().unwrap();
    for bad in [
        "localhost:3000",
        "http://a.example/path",
        "http://",
        "*, http://a",
    ] {
        let err = Server::start(
            moxe::testing::gpu().clone(),
            ServeOptions {
                cors_origins: bad.split(", ").map(String::from).collect(),
                port: 0,
                ..options()
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{bad} accepted"))
        .to_string();
        assert!(err.contains("--cors-origin"), "{bad}: {err}");
    }
}

#[test]
fn an_api_key_is_required_when_set() {
    let server = start(ServeOptions {
        api_key: Some("sesame".into()),
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        assert_eq!(call(addr, "GET", "/health", None, None).await.0, 200);
        let (s, text) = call(addr, "GET", "/v1/models", None, None).await;
        assert_eq!(s, 401, "{text}");
        assert!(text.contains("API key"));
        assert_eq!(
            call(addr, "GET", "/v1/models", None, Some("wrong")).await.0,
            401
        );
        assert_eq!(
            call(addr, "GET", "/v1/models", None, Some("sesame"))
                .await
                .0,
            200
        );
        // The scheme in any case; a refusal names the scheme it wants.
        let models = |authorization: &str| {
            format!(
                "GET /v1/models HTTP/1.1\r\nhost: {addr}\r\n{authorization}connection: close\r\n\r\n"
            )
        };
        assert!(raw(addr, models("authorization: bearer sesame\r\n"))
            .await
            .starts_with("http/1.1 200"));
        for refused in ["", "authorization: basic sesame\r\n", "authorization: sesame\r\n"] {
            let answer = raw(addr, models(refused)).await;
            assert!(answer.starts_with("http/1.1 401"), "{refused}: {answer}");
            assert!(answer.contains("www-authenticate: bearer"), "{answer}");
        }
    });
    server.shutdown().unwrap();
}

#[test]
fn a_cached_prefix_continues_exactly() {
    let cached = start(options());
    let fresh = start(ServeOptions {
        cache_bytes: 0,
        ..options()
    });
    // 150 prompt ids (not a multiple of the 128-token prefill chunk), then 20 more.
    let head: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % 4000 + 50).collect();
    let mut whole = head.clone();
    whole.extend((0..20u32).map(|i| (i * 13 + 7) % 4000 + 50));
    let ask =
        |ids: &[u32]| json!({"prompt": ids, "max_tokens": 8, "temperature": 0, "logprobs": 1});
    runtime().block_on(async {
        let (s, first) = post(cached.addr(), "/v1/completions", ask(&head)).await;
        assert_eq!(s, 200, "{first}");
        assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let (s, hit) = post(cached.addr(), "/v1/completions", ask(&whole)).await;
        assert_eq!(s, 200, "{hit}");
        assert_eq!(hit["usage"]["prompt_tokens_details"]["cached_tokens"], 150);
        let (_, miss) = post(fresh.addr(), "/v1/completions", ask(&whole)).await;
        assert_eq!(miss["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        // The same greedy tokens, and log probabilities equal to f32 rounding.
        let c = |v: &Value| v["choices"][0].clone();
        assert_eq!(c(&hit)["text"], c(&miss)["text"]);
        let lp = |v: &Value| -> Vec<f64> {
            c(v)["logprobs"]["token_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        for (a, b) in lp(&hit).iter().zip(lp(&miss)) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // The whole prompt again: all of it from the cache, the same answer.
        let (_, again) = post(cached.addr(), "/v1/completions", ask(&whole)).await;
        assert_eq!(
            again["usage"]["prompt_tokens_details"]["cached_tokens"],
            170
        );
        assert_eq!(c(&again)["text"], c(&hit)["text"]);
        let (_, text) = call(cached.addr(), "GET", "/metrics", None, None).await;
        assert!(text.contains("moxe_prefix_cache_hits_total 2"), "{text}");
    });
    cached.shutdown().unwrap();
    fresh.shutdown().unwrap();
}

#[test]
fn replicas_decode_side_by_side_exactly_and_share_the_prefix_cache() {
    let server = start(ServeOptions {
        replicas: 2,
        ..options()
    });
    let fresh = start(ServeOptions {
        cache_bytes: 0,
        ..options()
    });
    let addr = server.addr();
    let head: Vec<u32> = (0..100u32).map(|i| (i * 41 + 3) % 4000 + 50).collect();
    let mut whole = head.clone();
    whole.extend((0..12u32).map(|i| (i * 17 + 5) % 4000 + 50));
    let greedy = |ids: &[u32]| json!({"prompt": ids, "max_tokens": 8, "temperature": 0});
    let sampled = |p: &str, seed: u64| {
        json!({"prompt": p, "max_tokens": 16, "temperature": 0.9, "seed": seed,
               "ignore_eos": true})
    };
    let long = json!({"prompt": "Long ago", "max_tokens": 4000, "ignore_eos": true,
                      "stream": true})
    .to_string();
    runtime().block_on(async {
        // Two slots per replica: three choices do not fit one.
        let (s, e) = post(addr, "/v1/completions", json!({"prompt": "x", "n": 3})).await;
        assert_eq!(s, 400, "{e}");
        assert_eq!(e["error"]["param"], "n");

        // Seeded requests one at a time (each on the first replica), then four at once
        // (two per replica): the same text.
        let prompts = [
            "The sea was calm",
            "She opened",
            "In the morning",
            "He said",
        ];
        let bodies: Vec<Value> = (0..4).map(|i| sampled(prompts[i], i as u64)).collect();
        let solo = one_by_one(addr, &bodies).await;
        assert_eq!(all_at_once(addr, &bodies).await, solo);

        // A prefix cached by the first replica continues on the second (the first is busy
        // with a long stream), exactly as a prefill of the whole prompt.
        let (s, first) = post(addr, "/v1/completions", greedy(&head)).await;
        assert_eq!(s, 200, "{first}");
        let busy = running_stream(addr, &long).await;
        let (s, hit) = post(addr, "/v1/completions", greedy(&whole)).await;
        assert_eq!(s, 200, "{hit}");
        assert_eq!(hit["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        let (_, miss) = post(fresh.addr(), "/v1/completions", greedy(&whole)).await;
        assert_eq!(hit["choices"][0]["text"], miss["choices"][0]["text"]);

        // Hanging up frees the slot: the gauges are the sum over the replicas.
        drop(busy);
        let deadline = Instant::now() + Duration::from_secs(10);
        while busy_slots(addr).await != 0 {
            assert!(Instant::now() < deadline, "the slots were never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(gauge(addr, "moxe_queue_depth ").await, 0);
    });
    server.shutdown().unwrap();
    fresh.shutdown().unwrap();
}

#[test]
fn chat_completions_follow_the_models_template() {
    let dir = std::env::temp_dir().join(format!("moxe-serve-chat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(bundled().join(f), dir.join(f)).unwrap();
    }
    let template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first message \
                    must be the user\\'s') }}{% endif %}{% for m in messages %}{{ m['role'] | upper \
                    }}: {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt \
                    %}ASSISTANT:{% endif %}";
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"chat_template": template, "eos_token": "<|endoftext|>"}).to_string(),
    )
    .unwrap();
    let server = start(ServeOptions {
        model_dir: dir.clone(),
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        let ask = |stream: bool| {
            json!({"messages": [{"role": "user", "content": "  Tell me of the sea. "}],
                   "max_tokens": 10, "temperature": 0, "stream": stream, "logprobs": true,
                   "top_logprobs": 2})
        };
        let (s, c) = post(addr, "/v1/chat/completions", ask(false)).await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["choices"][0]["message"]["role"], "assistant");
        let text = c["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .unwrap()
                .len(),
            10
        );
        // The template's rendering is the prompt.
        let (_, t) = post(
            addr,
            "/tokenize",
            json!({"prompt": "USER: Tell me of the sea.\nASSISTANT:", "add_special_tokens": false}),
        )
        .await;
        assert_eq!(c["usage"]["prompt_tokens"], t["count"]);
        let (s, body) = call(
            addr,
            "POST",
            "/v1/chat/completions",
            Some(&ask(true).to_string()),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (texts, finish) = streamed(&body);
        assert_eq!(texts[0], text);
        assert_eq!(finish, vec!["length"]);
        assert!(body.contains("\"role\":\"assistant\""));
        // The template's own exception is the error.
        let bad = json!({"messages": [{"role": "system", "content": "x"}]});
        let (s, e) = post(addr, "/v1/chat/completions", bad).await;
        assert_eq!(s, 400, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("must be the user's"),
            "{e}"
        );
    });
    server.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shutdown_finishes_running_requests_then_stops() {
    let server = start(ServeOptions {
        shutdown_grace: Duration::from_secs(60),
        ..options()
    });
    let addr = server.addr();
    let rt = runtime();
    let running = rt.spawn(async move {
        post(
            addr,
            "/v1/completions",
            json!({"prompt": "Far away", "max_tokens": 200, "ignore_eos": true}),
        )
        .await
    });
    rt.block_on(async {
        while busy_slots(addr).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    server.shutdown().unwrap();
    let (s, c) = rt.block_on(running).unwrap();
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["usage"]["completion_tokens"], 200);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
}

/// A copy of the bundled model in a temporary directory of its own, with `template` as its
/// chat template.
fn model_with_template(name: &str, template: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moxe-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(bundled().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"chat_template": template}).to_string(),
    )
    .unwrap();
    dir
}

/// The plain chat template of the tests below: each message as `role: content`.
const PLAIN_TEMPLATE: &str =
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:";

#[test]
fn a_chat_template_that_runs_away_gets_an_error_and_the_server_goes_on() {
    // The first message picks the runaway: 10^10 loop iterations, or 36 MB of output.
    let template = "{% if messages[0]['content'] == 'loop' %}{% for i in range(100000) %}\
                    {% for j in range(100000) %}x{% endfor %}{% endfor %}\
                    {% elif messages[0]['content'] == 'big' %}{% set s = 'ab ' * 1000 %}\
                    {% for i in range(12000) %}{{ s }}{% endfor %}\
                    {% else %}user: {{ messages[0]['content'] }}\nassistant:{% endif %}";
    let dir = model_with_template("runaway", template);
    let server = start(ServeOptions {
        model_dir: dir.clone(),
        ..options()
    });
    let addr = server.addr();
    let ask = |content: &str| json!({"messages": [{"role": "user", "content": content}], "max_tokens": 3});
    runtime().block_on(async {
        for (content, limit) in [("loop", "instructions"), ("big", "bytes")] {
            let started = Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(60),
                post(addr, "/v1/chat/completions", ask(content)),
            )
            .await;
            let Ok((s, e)) = answer else {
                panic!("the '{content}' template was still rendering after 60 s");
            };
            assert_eq!(s, 400, "{e}");
            assert_eq!(e["error"]["param"], "messages", "{e}");
            let message = e["error"]["message"].as_str().unwrap();
            assert!(
                message.starts_with("the chat template exceeded its limits")
                    && message.contains(limit),
                "{e}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{content}: {:?}",
                started.elapsed()
            );
        }
        // The server goes on serving.
        let (s, c) = post(addr, "/v1/chat/completions", ask("Hello")).await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["usage"]["completion_tokens"], 3);
    });
    server.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn max_tokens_0_generates_nothing_and_a_server_limit_of_0_is_refused() {
    let dir = model_with_template("zero", PLAIN_TEMPLATE);
    let server = start(ServeOptions {
        model_dir: dir.clone(),
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        // Plain: no text (but the echo), finish "length", no completion tokens.
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "Once upon", "max_tokens": 0, "n": 2}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
        for choice in c["choices"].as_array().unwrap() {
            assert_eq!(choice["text"], "", "{c}");
            assert_eq!(choice["finish_reason"], "length", "{c}");
        }
        assert_eq!(c["choices"].as_array().unwrap().len(), 2, "{c}");
        assert_eq!(c["usage"]["completion_tokens"], 0, "{c}");
        assert!(c["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{c}");
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "Once upon", "max_tokens": 0, "echo": true}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["choices"][0]["text"], "Once upon", "{c}");
        // A prompt text is echoed as given, its special tokens included.
        let prompt = "Once<|endoftext|> upon";
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": [prompt, "a"], "max_tokens": 0, "echo": true}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["choices"][0]["text"], prompt, "{c}");
        assert_eq!(c["choices"][1]["text"], "a", "{c}");
        let chat = |stream: bool| {
            let mut body = json!({"messages": [{"role": "user", "content": "Hello"}],
                                  "max_tokens": 0, "stream": stream});
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            body
        };
        let (s, c) = post(addr, "/v1/chat/completions", chat(false)).await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["choices"][0]["message"]["content"], "", "{c}");
        assert_eq!(c["choices"][0]["message"]["role"], "assistant", "{c}");
        assert_eq!(c["choices"][0]["finish_reason"], "length", "{c}");
        assert_eq!(c["usage"]["completion_tokens"], 0, "{c}");
        let (s, c) = post(
            addr,
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hello"}],
                   "max_completion_tokens": 0}),
        )
        .await;
        assert_eq!(
            (s, c["usage"]["completion_tokens"].clone()),
            (200, json!(0)),
            "{c}"
        );
        // Streamed: one chunk per choice, empty, finished at its length; usage says 0.
        let stream = |path: &str, body: Value| {
            let body = body.to_string();
            let path = path.to_string();
            async move {
                let (s, text) = call(addr, "POST", &path, Some(&body), None).await;
                assert_eq!(s, 200, "{text}");
                text
            }
        };
        let text = stream(
            "/v1/completions",
            json!({"prompt": "Once upon", "max_tokens": 0, "stream": true, "echo": true,
                   "stream_options": {"include_usage": true}}),
        )
        .await;
        let (texts, finish) = streamed(&text);
        assert_eq!(texts[0], "Once upon", "{text}");
        assert_eq!(finish, vec!["length"], "{text}");
        assert!(text.contains("\"completion_tokens\":0"), "{text}");
        let text = stream("/v1/chat/completions", chat(true)).await;
        let (texts, finish) = streamed(&text);
        assert_eq!(texts[0], "", "{text}");
        assert_eq!(finish, vec!["length"], "{text}");
        assert!(text.contains("\"role\":\"assistant\""), "{text}");
        assert!(text.contains("\"completion_tokens\":0"), "{text}");
        // Still 400 when out of range, and still the prompt is checked.
        let (s, e) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "", "max_tokens": 0}),
        )
        .await;
        assert_eq!(
            (s, e["error"]["param"].clone()),
            (400, json!("prompt")),
            "{e}"
        );
    });
    server.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    // A server whose requests could ask for no more than 0 tokens is refused at startup.
    let refused = Server::start(
        moxe::testing::gpu().clone(),
        ServeOptions {
            port: 0,
            max_tokens: 0,
            ..options()
        },
    );
    let message = refused
        .err()
        .expect("--max-tokens 0 was accepted")
        .to_string();
    assert!(
        message.contains("--max-tokens must be at least 1"),
        "{message}"
    );
}

#[test]
fn sampler_errors_name_their_field() {
    let server = start(options());
    let addr = server.addr();
    let cases = [
        (json!({"temperature": -1}), "temperature"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"min_p": -0.5}), "min_p"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
        (json!({"logit_bias": {"99999": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 500}}), "logit_bias"),
    ];
    runtime().block_on(async {
        for (fields, param) in cases {
            let mut body = json!({"prompt": "x", "max_tokens": 3});
            for (k, v) in fields.as_object().unwrap() {
                body[k] = v.clone();
            }
            let (s, e) = post(addr, "/v1/completions", body.clone()).await;
            assert_eq!(s, 400, "{body}: {e}");
            assert_eq!(e["error"]["param"], param, "{body}: {e}");
            let message = e["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(param), "{body}: {e}");
            assert!(!message.contains("invalid argument"), "{body}: {e}");
        }
    });
    server.shutdown().unwrap();
}

#[test]
fn an_empty_api_key_is_refused_at_startup() {
    for key in ["", "  "] {
        let refused = Server::start(
            moxe::testing::gpu().clone(),
            ServeOptions {
                port: 0,
                api_key: Some(key.into()),
                ..options()
            },
        );
        let message = refused
            .err()
            .unwrap_or_else(|| panic!("the API key {key:?} was accepted"))
            .to_string();
        assert!(
            message.contains("--api-key") && message.contains("MOXE_API_KEY"),
            "{message}"
        );
        assert!(message.contains("empty"), "{message}");
    }
}

#[test]
fn chat_content_parts_other_than_text_are_refused() {
    let dir = model_with_template("parts", PLAIN_TEMPLATE);
    let server = start(ServeOptions {
        model_dir: dir.clone(),
        ..options()
    });
    let addr = server.addr();
    let ask = |content: Value| {
        json!({"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": content}],
               "max_tokens": 2, "temperature": 0})
    };
    let cases = [
        (
            json!([{"type": "text", "text": "Look"},
                   {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]),
            "messages[1].content[1]",
            "content part type 'image_url' is not supported (text only)",
        ),
        (
            json!([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]),
            "messages[1].content[0]",
            "content part type 'input_audio' is not supported (text only)",
        ),
        (
            json!([{"type": "text"}]),
            "messages[1].content[0]",
            "text part has no 'text'",
        ),
        (json!([]), "messages[1].content", "content is an empty list"),
    ];
    runtime().block_on(async {
        for (content, param, message) in cases {
            let (s, e) = post(addr, "/v1/chat/completions", ask(content.clone())).await;
            assert_eq!(s, 400, "{content}: {e}");
            assert_eq!(e["error"]["param"], param, "{content}: {e}");
            assert_eq!(e["error"]["message"], message, "{content}: {e}");
        }
        // Text parts are joined, as the same text given whole.
        let parts =
            json!([{"type": "text", "text": "Tell me "}, {"type": "text", "text": "of the sea."}]);
        let (s, a) = post(addr, "/v1/chat/completions", ask(parts)).await;
        assert_eq!(s, 200, "{a}");
        let (s, b) = post(
            addr,
            "/v1/chat/completions",
            ask(json!("Tell me of the sea.")),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(a["usage"]["prompt_tokens"], b["usage"]["prompt_tokens"]);
        assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    });
    server.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_openai_features_are_refused_naming_the_field() {
    let dir = model_with_template("unsupported", PLAIN_TEMPLATE);
    let server = start(ServeOptions {
        model_dir: dir.clone(),
        ..options()
    });
    let addr = server.addr();
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {}}});
    let call = json!([{"id": "c1", "type": "function",
                       "function": {"name": "f", "arguments": "{}"}}]);
    let user = json!({"role": "user", "content": "Tell me of the sea."});
    // (extra fields or messages, param, start of the message)
    let cases = [
        (json!({"tools": [tool]}), "tools", "tools are not supported"),
        (
            json!({"tool_choice": "auto"}),
            "tool_choice",
            "tool_choice other than",
        ),
        (
            json!({"functions": [{"name": "f", "parameters": {}}]}),
            "functions",
            "functions are not supported",
        ),
        (
            json!({"function_call": {"name": "f"}}),
            "function_call",
            "function_call other than",
        ),
        (
            json!({"parallel_tool_calls": true}),
            "parallel_tool_calls",
            "parallel_tool_calls is not supported",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
            "response_format type 'json_object' is not supported",
        ),
        (
            json!({"response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": {}}}}),
            "response_format",
            "response_format type 'json_schema' is not supported",
        ),
        (
            json!({"modalities": ["text", "audio"]}),
            "modalities",
            "modalities other than",
        ),
        (
            json!({"audio": {"voice": "alloy", "format": "wav"}}),
            "audio",
            "audio output is not supported",
        ),
        (
            json!({"prediction": {"type": "content", "content": "x"}}),
            "prediction",
            "prediction (predicted outputs) is not supported",
        ),
        (
            json!({"messages": [user, {"role": "assistant", "content": "ok", "tool_calls": call}]}),
            "messages[1].tool_calls",
            "tool_calls in messages are not supported",
        ),
        (
            json!({"messages": [user, {"role": "tool", "content": "42", "tool_call_id": "c1"}]}),
            "messages[1].role",
            "messages with role 'tool' are not supported",
        ),
        (
            json!({"messages": [user, {"role": "function", "name": "f", "content": "42"}]}),
            "messages[1].role",
            "messages with role 'function' are not supported",
        ),
        (
            json!({"max_tokens": 2, "max_completion_tokens": 3}),
            "max_completion_tokens",
            "max_completion_tokens (3) and max_tokens (2) differ",
        ),
    ];
    let ask = |extra: &Value| {
        let mut body = json!({"messages": [user], "max_tokens": 2, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    runtime().block_on(async {
        for (extra, param, message) in &cases {
            let (s, e) = post(addr, "/v1/chat/completions", ask(extra)).await;
            assert_eq!(s, 400, "{extra}: {e}");
            assert_eq!(e["error"]["param"], *param, "{extra}: {e}");
            assert_eq!(e["error"]["code"], "invalid_request_error", "{extra}: {e}");
            let m = e["error"]["message"].as_str().unwrap();
            assert!(m.starts_with(message), "{extra}: {e}");
        }
        // The legacy endpoint refuses them too.
        let (s, e) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 2,
                   "response_format": {"type": "json_object"}}),
        )
        .await;
        assert_eq!(
            (s, e["error"]["param"].clone()),
            (400, json!("response_format"))
        );
        // Values that ask for nothing are accepted.
        let harmless = [
            json!({"response_format": {"type": "text"}}),
            json!({"modalities": ["text"]}),
            json!({"tool_choice": "none"}),
            json!({"tools": null, "tool_choice": "none", "function_call": "none"}),
            json!({"max_tokens": 2, "max_completion_tokens": 2}),
            json!({"messages": [user, {"role": "assistant", "content": "ok", "tool_calls": []},
                                user]}),
        ];
        for extra in &harmless {
            let (s, c) = post(addr, "/v1/chat/completions", ask(extra)).await;
            assert_eq!(s, 200, "{extra}: {c}");
        }
    });
    server.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_prompt_list_the_server_can_never_hold_is_400_up_front() {
    let server = start(ServeOptions {
        slots: 2,
        queue: 2,
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        // 2 running and 2 waiting at most: 5 prompts can never be held.
        let prompts = |k: usize| json!(vec!["It was the best of times"; k]);
        let (s, e) = post(
            addr,
            "/v1/completions",
            json!({"prompt": prompts(5), "max_tokens": 2}),
        )
        .await;
        assert_eq!(s, 400, "{e}");
        assert_eq!(e["error"]["param"], "prompt", "{e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(
            m.starts_with("5 prompts x n=1 choices need 5 sequences"),
            "{e}"
        );
        // Nothing to generate or not, a request holds no more than the server does.
        let (s, e) = post(
            addr,
            "/v1/completions",
            json!({"prompt": prompts(5), "max_tokens": 0}),
        )
        .await;
        assert_eq!(s, 400, "{e}");
        assert!(m.contains("--slots") && m.contains("--queue"), "{e}");
        // With n=2 one runs (both slots) and 2 wait: 4 prompts can never be held.
        let (s, e) = post(
            addr,
            "/v1/completions",
            json!({"prompt": prompts(4), "n": 2, "max_tokens": 2}),
        )
        .await;
        assert_eq!(s, 400, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("4 prompts x n=2 choices need 8 sequences"),
            "{e}"
        );
        // Nothing was queued: the server is idle and takes the next request.
        assert_eq!(gauge(addr, "moxe_queue_depth ").await, 0);
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": prompts(2), "max_tokens": 2}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 2);
        // A list as large as the server holds is taken whole on an idle server, every
        // time: two prompts start at once and two wait (the jobs are placed together, not
        // counted as waiting one by one before the engine starts any).
        for _ in 0..5 {
            let (s, c) = post(
                addr,
                "/v1/completions",
                json!({"prompt": prompts(4), "max_tokens": 2}),
            )
            .await;
            assert_eq!(s, 200, "{c}");
            assert_eq!(c["choices"].as_array().unwrap().len(), 4);
        }
    });
    server.shutdown().unwrap();
}

#[test]
fn a_model_is_retrieved_by_id() {
    let server = start(options());
    let addr = server.addr();
    runtime().block_on(async {
        let (s, list) = call(addr, "GET", "/v1/models", None, None).await;
        assert_eq!(s, 200);
        let (s, one) = call(addr, "GET", "/v1/models/default", None, None).await;
        assert_eq!(s, 200, "{one}");
        assert_eq!(parse(&one), parse(&list)["data"][0]);
        let (s, e) = call(addr, "GET", "/v1/models/other", None, None).await;
        assert_eq!(s, 404, "{e}");
        let e = parse(&e);
        assert_eq!(e["error"]["code"], "model_not_found", "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("model 'other' is not served here"),
            "{e}"
        );
    });
    server.shutdown().unwrap();
}

#[test]
fn a_stream_ended_by_an_error_still_ends_with_done() {
    let server = start(ServeOptions {
        shutdown_grace: Duration::from_millis(0),
        ..options()
    });
    let addr = server.addr();
    let rt = runtime();
    let body = json!({"prompt": "Far away", "max_tokens": 4000, "ignore_eos": true,
                      "stream": true})
    .to_string();
    let running =
        rt.spawn(async move { call(addr, "POST", "/v1/completions", Some(&body), None).await });
    rt.block_on(async {
        while busy_slots(addr).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    server.shutdown().unwrap();
    let (s, text) = rt.block_on(running).unwrap();
    assert_eq!(s, 200, "{text}");
    let ev = client::events(&text);
    assert_eq!(ev.last().copied(), Some("[DONE]"), "{text:.300}");
    let error = parse(ev[ev.len() - 2]);
    assert_eq!(error["error"]["code"], "engine_error", "{error}");
}

#[test]
fn logprobs_name_each_token_s_bytes_and_offsets_count_characters() {
    let dir = model_with_template("logprobs", PLAIN_TEMPLATE);
    let server = start(ServeOptions {
        model_dir: dir.clone(),
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        // Tokens 129 and 104 are the two bytes of "é" (the bias forces them in turn: the
        // presence penalty takes the first back once drawn).
        let forced = json!({"prompt": "Caf", "max_tokens": 2, "temperature": 0,
                            "logit_bias": {"129": 50, "104": 49}, "presence_penalty": 2});
        let mut body = forced.clone();
        body["logprobs"] = json!(1);
        let (s, c) = post(addr, "/v1/completions", body).await;
        assert_eq!(s, 200, "{c}");
        let choice = &c["choices"][0];
        assert_eq!(choice["text"], "é", "{c}");
        let lp = &choice["logprobs"];
        assert_eq!(lp["tokens"], json!(["bytes:\\xc3", "bytes:\\xa9"]), "{c}");
        assert_eq!(lp["text_offset"], json!([0, 0]), "{c}");
        let mut chat = forced.clone();
        chat.as_object_mut().unwrap().remove("prompt");
        chat["messages"] = json!([{"role": "user", "content": "Caf"}]);
        chat["logprobs"] = json!(true);
        let (s, c) = post(addr, "/v1/chat/completions", chat).await;
        assert_eq!(s, 200, "{c}");
        let content = &c["choices"][0]["logprobs"]["content"];
        assert_eq!(content[0]["bytes"], json!([0xc3]), "{c}");
        assert_eq!(content[1]["bytes"], json!([0xa9]), "{c}");

        // Streamed offsets are those of the plain response, in characters of the text
        // (the echoed prompt included).
        let body = json!({"prompt": "Naïve", "max_tokens": 12, "seed": 3, "temperature": 1.2,
                          "logprobs": 2, "echo": false});
        let (_, plain) = post(addr, "/v1/completions", body.clone()).await;
        let plain = &plain["choices"][0]["logprobs"];
        let mut stream = body.clone();
        stream["stream"] = json!(true);
        let (_, text) = call(
            addr,
            "POST",
            "/v1/completions",
            Some(&stream.to_string()),
            None,
        )
        .await;
        // A chunk may carry several tokens (those that gave no text ride with the next).
        let streamed_logprobs = |text: &str, key: &str| -> Value {
            let ev = client::events(text);
            ev[..ev.len() - 1]
                .iter()
                .flat_map(|e| {
                    parse(e)["choices"][0]["logprobs"][key]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect()
        };
        assert_eq!(
            streamed_logprobs(&text, "text_offset"),
            plain["text_offset"],
            "{text:.500}"
        );
        assert_eq!(streamed_logprobs(&text, "tokens"), plain["tokens"]);

        // A stop string that starts inside a token: the logprobs end with the token the
        // text ends in (the tokens it cut whole are left out, streamed or not), while
        // usage counts every token generated.
        let base = json!({"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0,
                          "logprobs": 1});
        let (_, free) = post(addr, "/v1/completions", base.clone()).await;
        let toks: Vec<String> = free["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let whole: String = toks.concat();
        assert_eq!(
            whole, free["choices"][0]["text"],
            "tokens add up to the text"
        );
        let (j, stop, kept) = (0..toks.len() - 2)
            .find_map(|j| {
                let plain = |t: &String| !t.starts_with("bytes:");
                if toks[j].chars().count() < 2 || !toks[j..j + 3].iter().all(plain) {
                    return None;
                }
                let first: String = toks[j].chars().take(1).collect();
                let kept = toks[..j].concat() + &first;
                let stop = toks[j][first.len()..].to_string() + &toks[j + 1] + &toks[j + 2];
                (whole.find(&stop) == Some(kept.len())).then_some((j, stop, kept))
            })
            .expect("a token of two characters or more and two after it");
        let mut body = base.clone();
        body["stop"] = json!(stop);
        let (_, c) = post(addr, "/v1/completions", body.clone()).await;
        let choice = &c["choices"][0];
        assert_eq!(
            (choice["text"].as_str(), choice["finish_reason"].as_str()),
            (Some(kept.as_str()), Some("stop")),
            "{c}"
        );
        assert_eq!(choice["logprobs"]["tokens"], json!(toks[..=j]), "{c}");
        assert_eq!(c["usage"]["completion_tokens"], j + 3, "{c}");
        body["stream"] = json!(true);
        let (_, text) = call(
            addr,
            "POST",
            "/v1/completions",
            Some(&body.to_string()),
            None,
        )
        .await;
        assert_eq!(
            streamed_logprobs(&text, "tokens"),
            json!(toks[..=j]),
            "{text:.800}"
        );
    });
    server.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn openai_s_optional_forms_are_taken_and_unknown_features_refused() {
    // A template reading names, with loop controls, transformers' generation marks and the
    // date.
    let template = "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}\
                    {% generation %}{{ m.get('name', m['role']) }}: {{ m['content'] }}\n\
                    {% endgeneration %}{% endfor %}{{ strftime_now('%Y') }} assistant:";
    let dir = model_with_template("optional", template);
    let server = start(ServeOptions {
        model_dir: dir.clone(),
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        let base = json!({"prompt": "Hi", "max_tokens": 2, "seed": -1, "stream": null,
                          "echo": null, "ignore_eos": null, "user": "u1"});
        let (s, c) = post(addr, "/v1/completions", base.clone()).await;
        assert_eq!(s, 200, "{c}");
        let mut same = base.clone();
        same["seed"] = json!(u64::MAX);
        let (_, d) = post(addr, "/v1/completions", same).await;
        assert_eq!(
            c["choices"][0]["text"], d["choices"][0]["text"],
            "-1 is 2^64 - 1"
        );
        for (field, value) in [
            ("user", json!(123)),
            ("stream_options", json!({"include_usage": true})),
        ] {
            let mut bad = base.clone();
            bad[field] = value;
            let (s, e) = post(addr, "/v1/completions", bad).await;
            assert_eq!((s, e["error"]["param"].as_str()), (400, Some(field)), "{e}");
        }
        // The name reaches the template; the system message is skipped by `continue`.
        let chat = json!({"messages": [{"role": "system", "content": "S"},
                                       {"role": "user", "name": "ada", "content": "Hi"}],
                          "max_tokens": 1, "logprobs": null});
        let (s, c) = post(addr, "/v1/chat/completions", chat.clone()).await;
        assert_eq!(s, 200, "{c}");
        let prompt_tokens = c["usage"]["prompt_tokens"].as_u64().unwrap();
        let rendered = format!("ada: Hi\n{} assistant:", this_year());
        let (_, t) = post(
            addr,
            "/tokenize",
            json!({"prompt": rendered, "add_special_tokens": false}),
        )
        .await;
        assert_eq!(
            t["tokens"].as_array().unwrap().len() as u64,
            prompt_tokens,
            "{t}"
        );
        let mut web = chat.clone();
        web["web_search_options"] = json!({});
        let (s, e) = post(addr, "/v1/chat/completions", web).await;
        assert_eq!(
            (s, e["error"]["param"].as_str()),
            (400, Some("web_search_options"))
        );
        // A bad path is a JSON error too.
        let (s, body) = call(addr, "GET", "/v1/models/%ff", None, None).await;
        assert_eq!(s, 400);
        assert_eq!(parse(&body)["error"]["param"], "model", "{body}");
    });
    server.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The year now, as `strftime_now('%Y')` renders it.
fn this_year() -> String {
    let out = std::process::Command::new("date")
        .arg("+%Y")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_template_that_fails_is_the_server_s_error_and_one_that_refuses_the_client_s() {
    let template = "{% if messages[0]['content'] == 'bad' %}{{ raise_exception('no bad') }}\
                    {% endif %}{% if messages[0]['content'] == 'broken' %}{{ nope() }}{% endif %}\
                    {{ messages[0]['content'] }}";
    let dir = model_with_template("fails", template);
    let server = start(ServeOptions {
        model_dir: dir.clone(),
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        let ask = |content: &str| {
            json!({"messages": [{"role": "user", "content": content}],
                                          "max_tokens": 1})
        };
        let (s, e) = post(addr, "/v1/chat/completions", ask("bad")).await;
        assert_eq!(s, 400, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("no bad"),
            "{e}"
        );
        let (s, e) = post(addr, "/v1/chat/completions", ask("broken")).await;
        assert_eq!(s, 500, "{e}");
        assert_eq!(e["error"]["code"], "chat_template_error", "{e}");
        let (s, c) = post(addr, "/v1/chat/completions", ask("fine")).await;
        assert_eq!(s, 200, "{c}");
    });
    server.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clients_that_send_too_slowly_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(ServeOptions {
        client_timeout: Duration::from_secs(1),
        ..options()
    });
    let addr = server.addr();
    runtime().block_on(async {
        // Headers never finished: the connection is closed.
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), half.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection was held open");
        // A body that never comes: 408, naming the setting.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"prompt\"",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
            .await
            .expect("no answer to a slow body")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("--client-timeout"), "{text}");
        // The server goes on.
        let (s, c) = post(
            addr,
            "/v1/completions",
            json!({"prompt": "Hi", "max_tokens": 1}),
        )
        .await;
        assert_eq!(s, 200, "{c}");
    });
    server.shutdown().unwrap();
}
