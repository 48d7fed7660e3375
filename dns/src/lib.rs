//! clusterdns: authoritative DNS for the Kubernetes cluster domain.
//!
//! ```text
//!  discovery ──Arc<ClusterSnapshot>──> view::DnsView::build ──ArcSwap──> server (UDP, TCP)
//!                                       (off the query path)              └─> answer::handle
//!                                                                               (pure, no locks)
//! ```
//!
//! - [`wire`]: the strict, allocation-free query parser and name helpers.
//! - [`view`]: every answer of the zone precomputed as wire bytes from one snapshot.
//! - [`answer`]: query bytes to reply bytes against one view.
//! - [`server`]: sockets, workers and the task that swaps views in.
//! - [`cli`]: the `clusterdns` command line.

pub mod answer;
pub mod cli;
pub mod server;
pub mod view;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;

pub use answer::{Answer, Transport, answer, handle};
pub use server::{Server, ServerConfig};
pub use view::{DnsView, PodMode, ViewConfig};

/// Everything `clusterdns serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub server: ServerConfig,
    pub view: ViewConfig,
    pub manifests: PathBuf,
    pub watch: discovery::manifests::WatchOptions,
}

/// A running server with its discovery source.
#[derive(Debug)]
pub struct Running {
    pub server: Server,
    pub view: Arc<ArcSwap<DnsView>>,
    updater: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        self.updater.abort();
        self.server.shutdown().await;
    }
}

/// Starts discovery, builds the first view, then opens the sockets: the first query already
/// sees the whole manifests directory. Must be called inside a tokio runtime.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<Running> {
    let mut snapshots = discovery::manifests::watch_dir(&cfg.manifests, cfg.watch.clone())?;
    let first = snapshots.borrow_and_update().clone();
    let vcfg = cfg.view.clone();
    let started = std::time::Instant::now();
    let view = tokio::task::spawn_blocking(move || DnsView::build(&first, &vcfg))
        .await
        .context("building the first dns view")??;
    tracing::info!(
        names = view.names.len(),
        build_ms = started.elapsed().as_millis() as u64,
        "dns view built"
    );
    let view = Arc::new(ArcSwap::from_pointee(view));
    let updater = tokio::spawn(server::run_view_updater(
        snapshots,
        cfg.view.clone(),
        Arc::clone(&view),
    ));
    let server = match Server::start(&cfg.server, Arc::clone(&view)) {
        Ok(s) => s,
        Err(e) => {
            updater.abort();
            return Err(e.into());
        }
    };
    Ok(Running {
        server,
        view,
        updater,
    })
}
