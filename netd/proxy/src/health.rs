//! HTTP health endpoints, as kube-proxy serves them.
//!
//! - **Service health checks.** A LoadBalancer Service with `externalTrafficPolicy: Local` has
//!   a `healthCheckNodePort`. Cloud load balancers probe it on every node and send traffic only
//!   to nodes that answer 200, which are the nodes with a ready endpoint of the Service: the
//!   others drop that traffic (the Local policy). Answers 200 or 503 with kube-proxy's JSON.
//! - **The proxy's own** `/healthz` and `/livez` on `--healthz-listen` (kube-proxy's port
//!   10256): 200 once the ruleset is programmed and the last sync succeeded, 503 before the
//!   first sync and after a failed one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a health check port reports for its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the Service on this node.
    pub local_endpoints: usize,
}

impl ServiceHealth {
    fn response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "service": {"namespace": self.namespace, "name": self.name},
            "localEndpoints": self.local_endpoints,
            "serviceProxyHealthy": true,
        });
        let status = if self.local_endpoints > 0 {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, &body)
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        "X-Content-Type-Options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    r
}

/// Serves HTTP/1 on `listener` with `handle` until the task is aborted.
async fn serve<F>(listener: TcpListener, handle: F)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = handle(&req);
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

/// The health check listeners, one per `healthCheckNodePort`, on every address of the node.
#[derive(Debug, Default)]
pub struct HealthChecks {
    listeners: BTreeMap<u16, (JoinHandle<()>, Arc<RwLock<ServiceHealth>>)>,
}

impl HealthChecks {
    /// Serves exactly `wanted`: new ports are opened, gone ones closed, the rest answer with
    /// the new counts. A port that cannot be opened is logged and tried again next time.
    pub async fn update(&mut self, wanted: &BTreeMap<u16, ServiceHealth>) {
        self.listeners.retain(|port, (task, _)| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
                tracing::info!(port, "health check port closed");
            }
            keep
        });
        for (port, health) in wanted {
            if let Some((_, current)) = self.listeners.get(port) {
                *current.write().unwrap_or_else(|e| e.into_inner()) = health.clone();
                continue;
            }
            // [::] takes IPv4 too (bindv6only is off by default on Linux).
            let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port));
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let current = Arc::new(RwLock::new(health.clone()));
                    let shared = Arc::clone(&current);
                    let task = tokio::spawn(serve(listener, move |_| {
                        shared.read().unwrap_or_else(|e| e.into_inner()).response()
                    }));
                    tracing::info!(port, service = %format!("{}/{}", health.namespace, health.name), "health check port open");
                    self.listeners.insert(*port, (task, current));
                }
                Err(e) => tracing::warn!(
                    port,
                    service = %format!("{}/{}", health.namespace, health.name),
                    error = %e,
                    "cannot open the health check port"
                ),
            }
        }
    }
}

/// The proxy's own health: whether the last sync succeeded, and when one last did.
#[derive(Debug, Default)]
pub struct ProxyHealth {
    last_synced: Option<SystemTime>,
    failing: bool,
}

impl ProxyHealth {
    pub fn synced(&mut self) {
        self.last_synced = Some(SystemTime::now());
        self.failing = false;
    }

    pub fn failed(&mut self) {
        self.failing = true;
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let healthy = self.last_synced.is_some() && !self.failing;
        let body = serde_json::json!({
            "lastUpdated": self.last_synced.map(secs),
            "currentTime": secs(SystemTime::now()),
            "healthy": healthy,
        });
        json(
            if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            &body,
        )
    }
}

/// Serves `/healthz` and `/livez` from `health` on `listener` until the task is aborted.
pub async fn serve_healthz(listener: TcpListener, health: Arc<RwLock<ProxyHealth>>) {
    serve(listener, move |req| match req.uri().path() {
        "/healthz" | "/livez" => health.read().unwrap_or_else(|e| e.into_inner()).response(),
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not found; try /healthz"}),
        ),
    })
    .await
}
