//! Loading and reloading the config file: at start a bad file is an error naming the field; on
//! change (the file, or SIGHUP) a bad file is logged and the running config kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::config::{ConfigError, FileConfig};
use crate::forward::Forwarder;

/// Where forwarding comes from.
#[derive(Debug, Clone, Default)]
pub struct ForwardSource {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--upstream ADDR` (replaces `upstream_resolvers.upstreams`); `["off"]` forwards nothing
    /// by default.
    pub upstreams: Vec<String>,
}

/// Keeps the forwarder in step with the config file.
#[derive(Debug)]
pub struct Reloader {
    pub source: ForwardSource,
    pub forwarder: Arc<ArcSwapOption<Forwarder>>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl Reloader {
    /// Loads the config; an error names the file or the field.
    pub fn load(source: ForwardSource) -> Result<Self, ConfigError> {
        let fwd = build(&source, None)?;
        Ok(Self {
            source,
            forwarder: Arc::new(ArcSwapOption::from(fwd.map(Arc::new))),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// Reloads the config: on success the new forwarder is swapped in (queries in flight finish
    /// on the old one; the cache is kept unless its capacity changed), on failure the running
    /// config stays and the error is logged.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let old = self.forwarder.load_full();
        match build(&self.source, old.as_ref().map(|f| Arc::clone(&f.cache))) {
            Ok(fwd) => {
                self.forwarder.store(fwd.map(Arc::new));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(config = ?self.source.config, "config reloaded");
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "config reload failed; keeping the running config");
                Err(e)
            }
        }
    }
}

fn build(
    source: &ForwardSource,
    cache: Option<Arc<crate::forward::Cache>>,
) -> Result<Option<Forwarder>, ConfigError> {
    let file = match &source.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let cfg = file.resolve(&source.upstreams)?;
    if cfg.zones.is_empty() && cfg.default.is_none() {
        return Ok(None);
    }
    for g in cfg.zones.iter().map(|(_, g)| g).chain(cfg.default.as_ref()) {
        let ups: Vec<String> = g.upstreams.iter().map(|u| u.label()).collect();
        tracing::info!(group = %g.name, upstreams = ?ups, policy = ?g.policy, "forwarding");
    }
    Ok(Some(Forwarder::new(cfg, cache)))
}

/// Probes down upstreams every [`crate::forward::HEALTH_INTERVAL`], forever.
pub async fn run_health(forwarder: Arc<ArcSwapOption<Forwarder>>) {
    let mut tick = tokio::time::interval(crate::forward::HEALTH_INTERVAL);
    loop {
        tick.tick().await;
        if let Some(f) = forwarder.load_full() {
            f.probe_down().await;
        }
    }
}

/// Reloads when the config file changes (its directory is watched, so editors that replace the
/// file and ConfigMap updates, which swap a symlink, are both seen). Runs until dropped.
pub async fn watch_config(reloader: Arc<Reloader>, path: PathBuf) {
    use notify::Watcher;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watched = path.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
            && ev.paths.iter().any(|p| {
                p == &watched
                    || p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".."))
            })
        {
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; SIGHUP still reloads it");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; SIGHUP still reloads");
        return;
    }
    let mut last = std::fs::read(&path).ok();
    while rx.recv().await.is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        let now = std::fs::read(&path).ok();
        if now == last {
            continue;
        }
        last = now;
        let _ = reloader.reload();
    }
}
