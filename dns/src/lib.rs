//! clusterdns: authoritative DNS for the Kubernetes cluster domain.
//!
//! ```text
//!  discovery ──Arc<ClusterSnapshot>──> view::DnsView::update ──ArcSwap──> server (UDP, TCP)
//!                                       (off the query path:       └─> answer::handle
//!                                        what changed only)              (pure, no locks)
//! ```
//!
//! - [`wire`]: the strict, allocation-free query parser and name helpers.
//! - [`view`]: every answer of the zone precomputed as wire bytes, updated per changed service.
//! - [`answer`]: query bytes to reply bytes against one view.
//! - [`server`]: sockets, workers and the task that swaps views in.
//! - [`metrics`]: what the server measures.
//! - [`admin`]: `/health`, `/ready` and `/metrics`.
//! - [`cli`]: the `clusterdns` command line.

pub mod admin;
pub mod answer;
pub mod cli;
pub mod config;
pub mod forward;
pub mod metrics;
pub mod reload;
pub mod rrl;
pub mod server;
pub mod view;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;

pub use answer::{Answer, Transport, answer, handle};
pub use metrics::Metrics;
pub use server::{Server, ServerConfig};
pub use view::{DnsView, PodMode, ViewConfig};

pub use discovery::Source;

/// Everything `clusterdns serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub server: ServerConfig,
    pub view: ViewConfig,
    pub source: Source,
    /// How long to wait for the first full sync before answering from what is listed so far.
    pub startup_timeout: Duration,
    /// Where to serve `/health`, `/ready` and `/metrics`; `None` for nowhere.
    pub admin_listen: Option<SocketAddr>,
    /// Forwarding; `None` answers REFUSED outside the served zones.
    pub forward: Option<reload::ForwardSource>,
}

/// A running server with its discovery source and admin endpoint.
#[derive(Debug)]
pub struct Running {
    pub server: Server,
    pub view: Arc<ArcSwap<DnsView>>,
    pub metrics: Arc<Metrics>,
    admin: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    shutting_down: Arc<AtomicBool>,
    updater: tokio::task::JoinHandle<()>,
    /// The config file and the forwarder it made.
    pub reloader: Option<Arc<reload::Reloader>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Where the admin endpoint listens.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.0)
    }

    /// Reloads the config file (SIGHUP); a bad file keeps the running config.
    pub fn reload(&self) {
        match &self.reloader {
            Some(r) => {
                let _ = r.reload();
            }
            None => tracing::info!("reload: no forwarding configured, nothing to reload"),
        }
    }

    /// Starts the lameduck period: `/ready` fails from now on, DNS keeps answering.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Stops answering: UDP workers stop, TCP connections finish their query in flight (within
    /// the drain time), the admin endpoint closes.
    pub async fn shutdown(self) {
        self.begin_shutdown();
        self.updater.abort();
        for t in &self.background {
            t.abort();
        }
        self.server.shutdown().await;
        if let Some((_, task)) = self.admin {
            task.abort();
        }
    }

    /// What SIGTERM does: fail `/ready`, keep answering for `lameduck` so that load balancers
    /// and clients move away, then stop.
    pub async fn graceful_shutdown(self, lameduck: Duration) {
        self.begin_shutdown();
        tracing::info!(lameduck = ?lameduck, "shutting down: not ready, still answering");
        tokio::time::sleep(lameduck).await;
        self.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Starts discovery, builds the first view, then opens the sockets. A manifests directory is
/// read whole before the first query; the Kubernetes API is listed while the server already
/// answers (cluster names that would be NXDOMAIN get SERVFAIL until it has synced, or until
/// `startup_timeout`). Must be called inside a tokio runtime.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<Running> {
    let mut snapshots = cfg.source.start().await?;
    // The config first: a bad file stops the start before anything listens.
    let reloader = match &cfg.forward {
        Some(src) => Some(Arc::new(reload::Reloader::load(src.clone())?)),
        None => None,
    };
    let forwarder = reloader
        .as_ref()
        .map(|r| Arc::clone(&r.forwarder))
        .unwrap_or_else(|| Arc::new(arc_swap::ArcSwapOption::empty()));
    let deadline = tokio::time::Instant::now() + cfg.startup_timeout;
    let first = snapshots.borrow_and_update().clone();
    let vcfg = cfg.view.clone();
    let started = std::time::Instant::now();
    let snap = Arc::clone(&first);
    let view = tokio::task::spawn_blocking(move || DnsView::build(&snap, &vcfg))
        .await
        .context("building the first dns view")??;
    tracing::info!(
        names = view.len(),
        synced = view.synced,
        build_ms = started.elapsed().as_millis() as u64,
        "dns view built"
    );
    let view = Arc::new(ArcSwap::from_pointee(view));
    let metrics = Arc::new(Metrics::new(&cfg.view.zone));
    let updater = tokio::spawn(server::run_view_updater(
        snapshots,
        first,
        Arc::clone(&view),
        Arc::clone(&metrics),
        Some(deadline),
    ));
    let mut background = Vec::new();
    if let Some(r) = &reloader {
        background.push(tokio::spawn(reload::run_health(Arc::clone(&r.forwarder))));
        if let Some(path) = &r.source.config {
            background.push(tokio::spawn(reload::watch_config(
                Arc::clone(r),
                path.clone(),
            )));
        }
    }
    metrics.set_forwarding(reloader.clone());
    let server = match Server::start(
        &cfg.server,
        Arc::clone(&view),
        Arc::clone(&forwarder),
        Arc::clone(&metrics),
    ) {
        Ok(s) => s,
        Err(e) => {
            updater.abort();
            background.iter().for_each(|t| t.abort());
            return Err(e.into());
        }
    };
    let shutting_down = Arc::new(AtomicBool::new(false));
    let admin = match cfg.admin_listen {
        Some(addr) => {
            let listener = match admin::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    updater.abort();
                    background.iter().for_each(|t| t.abort());
                    server.shutdown().await;
                    return Err(anyhow::anyhow!("cannot listen on {addr} (admin): {e}"));
                }
            };
            let bound = listener.local_addr()?;
            let state = admin::AdminState {
                view: Arc::clone(&view),
                metrics: Arc::clone(&metrics),
                liveness: server.liveness(),
                shutting_down: Arc::clone(&shutting_down),
            };
            tracing::info!(%bound, "admin endpoint listening (/health, /ready, /metrics)");
            Some((bound, tokio::spawn(admin::serve(listener, state))))
        }
        None => None,
    };
    Ok(Running {
        server,
        view,
        metrics,
        admin,
        shutting_down,
        updater,
        reloader,
        background,
    })
}
