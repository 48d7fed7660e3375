//! The admin endpoint: `/health`, `/ready`, `/metrics` over plain HTTP/1.1.
//!
//! - `/health`: 200 while the process runs and every DNS listener is up; 503 otherwise.
//! - `/ready`: 200 once discovery has listed everything and the listeners are up; 503 with a
//!   one-line reason before that, and at once when shutdown begins (the lameduck period).
//! - `/metrics`: the Prometheus text format (see [`crate::metrics`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::server::Liveness;
use crate::view::DnsView;

/// What the endpoint reports on.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub view: Arc<ArcSwap<DnsView>>,
    pub metrics: Arc<Metrics>,
    pub liveness: Liveness,
    /// Set when shutdown begins: `/ready` fails from then on.
    pub shutting_down: Arc<AtomicBool>,
}

impl AdminState {
    /// `Ok` when ready, else the reason.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::Relaxed) {
            Err("shutting down")
        } else if !self.liveness.is_running() {
            Err("dns listeners are not running")
        } else if !self.view.load().listed {
            Err("discovery has not synced yet")
        } else {
            Ok(())
        }
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn route(state: &AdminState, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match req.uri().path() {
        "/health" if state.liveness.is_running() => text(StatusCode::OK, "ok\n".into(), PLAIN),
        "/health" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "dns listeners are not running\n".into(),
            PLAIN,
        ),
        "/ready" => match state.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), PLAIN),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                PLAIN,
            ),
        },
        "/metrics" => text(
            StatusCode::OK,
            state.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /health, /ready or /metrics\n".into(),
            PLAIN,
        ),
    }
}

/// Serves the admin endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: AdminState) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept error");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = route(&state, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
