//! The connection loop: each accepted TCP connection served over HTTP/1.1 by hyper, with the
//! limits axum's own `serve` leaves out, so that clients that send slowly or not at all
//! cannot hold connections (and the process's file descriptors) for ever:
//!
//! - a request's headers must arrive within the client timeout of the connection opening
//!   or of the previous response (an idle keep-alive connection is closed then too);
//! - its body within the client timeout of the headers ([`with_body_deadline`], a 408).
//!
//! Stopping (the `shutdown` future) stops accepting, lets every connection finish its
//! request in flight and closes it, waiting at most a given time (a client that stops
//! reading its stream would hold the server open for ever).

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use http_body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// Serves `app` on `listener` until `shutdown` completes, then waits up to `drain` for the
/// open connections to finish their requests; a client has `timeout` to send a request's
/// headers.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    timeout: Duration,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // One connection's failure (reset before it was taken): the next.
                Err(e) if connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: the connections open now must close
                    // (they time out) before another is taken.
                    log::warn!("cannot accept a connection: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                        _ = &mut shutdown => break,
                    }
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("connection ended: {e}");
            }
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!(
            "stopping with connections still open after {} s",
            drain.as_secs()
        );
    }
}

/// Whether an accept error concerns only the connection being accepted.
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Middleware: a request body that has not arrived `timeout` after the headers ends in an
/// error ([`BodyTimedOut`]), which the handlers answer with a 408.
pub(crate) async fn with_body_deadline(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = Body::new(Deadline {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        timeout,
    });
    next.run(Request::from_parts(parts, body)).await
}

/// The error of a request body that did not arrive within its time.
#[derive(Debug)]
pub(crate) struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s of its headers (--client-timeout)",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// A body that fails with [`BodyTimedOut`] once `sleep` (of `timeout`) has elapsed.
struct Deadline {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
