//! A minimal HTTP/1 client (hyper) for talking to a running server: `moxe bench serve` and
//! the tests use it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> hyper::Request<Full<Bytes>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    req.body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request")
}

/// One request: the status and the body text. `key` is sent as a bearer token.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> Result<(u16, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .request(request(addr, method, path, body, key))
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// A streamed response as it arrived.
pub struct Timed {
    pub status: u16,
    /// From sending to the first `data:` event, and to the end.
    pub first_event: Duration,
    pub total: Duration,
    pub body: String,
}

/// A POST whose response is a server-sent event stream, timed.
pub async fn stream(addr: SocketAddr, path: &str, body: &str) -> Result<Timed, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let start = Instant::now();
    let resp = client
        .request(request(addr, "POST", path, body, None))
        .await
        .map_err(|e| format!("POST {path}: {e}"))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("POST {path}: {e}"))?;
        if let Some(data) = frame.data_ref() {
            text += &String::from_utf8_lossy(data);
            if first.is_none() && text.contains("data: ") {
                first = Some(start.elapsed());
            }
        }
    }
    let total = start.elapsed();
    Ok(Timed {
        status,
        first_event: first.unwrap_or(total),
        total,
        body: text,
    })
}

/// The data payloads of a server-sent event stream (`[DONE]` included).
pub fn events(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}
