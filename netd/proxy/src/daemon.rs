//! The `netd-proxy` daemon: snapshots in, one nftables transaction per change out.
//!
//! ```text
//!  discovery (Fields::TRAFFIC) ─watch─▶ service_ports ─▶ plan ─▶ diff(applied, wanted) ─▶ nft -f -
//!                                                                  │ after a failure: render (whole)
//!                                       conntrack cleaner (own task) ◀─ ports applied last
//!                                       conntrack -L, stale UDP entries deleted
//! ```
//!
//! Nothing is programmed before discovery has listed everything once, so a restart never
//! empties a working ruleset. A failed transaction changes nothing (nft applies all or
//! nothing); the next attempt rewrites the whole table, after a backoff, even without a new
//! snapshot.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use netd_nft::{Applier, Nft, Table};

use crate::health::{HealthChecks, ProxyHealth, serve_healthz};
use crate::services::{UdpEntry, health_checks, parse_conntrack, service_ports, stale_udp_entries};
use crate::{Node, Protocol, ServicePort, TABLE, plan};

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: discovery::Source,
    /// Which endpoints are this node's (`nodeName`).
    pub node_name: String,
    pub node: Node,
    /// Remove the table on SIGTERM instead of leaving the rules in place.
    pub cleanup_on_exit: bool,
    /// Set the forwarding and bridge sysctls at start.
    pub sysctls: bool,
    /// Where to serve `/healthz` and `/livez`; `None` for nowhere.
    pub healthz: Option<SocketAddr>,
    /// How often to check that the table is still there; `None` for never.
    pub check_period: Option<Duration>,
}

/// Why the daemon could not start, or stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Source(#[from] discovery::StartError),
    #[error("discovery stopped; the rules are left as they were")]
    DiscoveryStopped,
    #[error("setting {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
    #[error("nft: {0}")]
    Nft(String),
    #[error("--healthz-listen {addr}: {source}")]
    Healthz {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The sysctls bridged pod traffic needs: forwarding, and bridged packets through nftables
/// (so that a reply from a pod to a pod on the same bridge meets its conntrack entry and is
/// un-NATed).
const SYSCTLS: [(&str, bool); 4] = [
    ("/proc/sys/net/ipv4/ip_forward", true),
    ("/proc/sys/net/ipv6/conf/all/forwarding", true),
    ("/proc/sys/net/bridge/bridge-nf-call-iptables", false),
    ("/proc/sys/net/bridge/bridge-nf-call-ip6tables", false),
];

fn set_sysctls() -> Result<(), StartError> {
    for (path, required) in SYSCTLS {
        if !Path::new(path).exists() && !required {
            tracing::warn!(
                path,
                "missing: load br_netfilter (modprobe br_netfilter), or pod-to-service \
                 traffic between pods on one bridge is not un-NATed"
            );
            continue;
        }
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        std::fs::write(path, "1").map_err(|source| StartError::Sysctl {
            path: path.to_string(),
            source,
        })?;
        tracing::info!(path, "set to 1");
    }
    Ok(())
}

/// Runs until `shutdown` resolves. Returns an error only when the daemon cannot start.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    if Command::new("nft").arg("-v").output().is_err() {
        return Err(StartError::Nft(
            "the nft binary is not on PATH (apt-get install nftables)".into(),
        ));
    }
    if cfg.sysctls {
        set_sysctls()?;
    }
    let conntrack = Command::new("conntrack").arg("-V").output().is_ok();
    if !conntrack {
        tracing::warn!(
            "conntrack is not on PATH (apt-get install conntrack): UDP flows to removed \
             endpoints are not cleared"
        );
    }
    let health = Arc::new(RwLock::new(ProxyHealth::default()));
    if let Some(addr) = cfg.healthz {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Healthz { addr, source })?;
        tokio::spawn(serve_healthz(listener, Arc::clone(&health)));
    }
    let mut snapshots = cfg.source.start().await?;
    tokio::pin!(shutdown);
    let (cleaner, programmed) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    if conntrack {
        tokio::spawn(clean_conntrack(programmed, cfg.node.ips.clone()));
    }
    let mut syncer = Syncer {
        node_name: cfg.node_name.clone(),
        node: cfg.node.clone(),
        applied: None,
        warnings: BTreeSet::new(),
        cleaner,
        failures: 0,
        health,
        health_checks: HealthChecks::default(),
    };
    let mut outcome = Ok(());
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut checks = cfg.check_period.map(|p| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut last_full = Instant::now();
    // Something to program: a new snapshot, a retry, or a table found damaged.
    let mut pending = true;
    loop {
        let snap = snapshots.borrow_and_update().clone();
        if !snap.synced {
            tracing::debug!(
                generation = snap.generation,
                "waiting for discovery to list everything"
            );
        } else if pending {
            if syncer.applied.is_none() {
                last_full = Instant::now();
            }
            retry_at = match syncer.sync(&snap).await {
                Ok(()) => None,
                Err(backoff) => Some(tokio::time::Instant::now() + backoff),
            };
            pending = retry_at.is_some();
        }
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let check = async {
            match checks.as_mut() {
                Some(i) => i.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    outcome = Err(StartError::DiscoveryStopped);
                    break;
                }
                pending = true;
            }
            () = retry => pending = true,
            _ = check => {
                if syncer.applied.is_none() {
                    continue;
                }
                if last_full.elapsed() >= FULL_SYNC_EVERY {
                    tracing::info!("hourly full rewrite");
                    syncer.applied = None;
                    pending = true;
                } else if let Err(why) = tokio::task::spawn_blocking(table_is_there).await.unwrap_or_else(|e| Err(e.to_string())) {
                    tracing::warn!(%why, "the table is gone or damaged; rewriting it");
                    syncer.applied = None;
                    pending = true;
                }
            }
            () = &mut shutdown => break,
        }
    }
    if cfg.cleanup_on_exit {
        let script = format!("add table inet {TABLE}\ndelete table inet {TABLE}\n");
        match tokio::task::spawn_blocking(move || Nft::default().apply(&script)).await {
            Ok(Ok(())) => tracing::info!(table = TABLE, "removed the table"),
            Ok(Err(e)) => tracing::error!(error = %e, "could not remove the table"),
            Err(e) => tracing::error!(error = %e, "could not remove the table"),
        }
    } else {
        tracing::info!(table = TABLE, "stopping; the rules stay in place");
    }
    outcome
}

/// Even when nothing seems wrong, the whole table is rewritten this often, so a change someone
/// else made to a chain the check does not look at does not last (kube-proxy does the same).
const FULL_SYNC_EVERY: Duration = Duration::from_secs(3600);

/// Whether the table and its dispatch chain are there: a cheap look (a tenth of a second at
/// 10k services) that catches a table deleted or flushed by someone else.
fn table_is_there() -> Result<(), String> {
    let out = Command::new("nft")
        .args(["list", "chain", "inet", TABLE, "services"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    if !String::from_utf8_lossy(&out.stdout).contains("vmap @service-ips-v4") {
        return Err("the services chain has lost its rules".into());
    }
    Ok(())
}

struct Syncer {
    node_name: String,
    node: Node,
    /// The table as the kernel has it, when the last transaction succeeded.
    applied: Option<Arc<Table>>,
    /// Warnings already logged, so each is logged once while it lasts.
    warnings: BTreeSet<String>,
    /// The Service ports programmed last, for the conntrack cleaner.
    cleaner: tokio::sync::watch::Sender<Arc<Vec<ServicePort>>>,
    failures: u32,
    health: Arc<RwLock<ProxyHealth>>,
    health_checks: HealthChecks,
}

impl Syncer {
    /// Programs `snap`. On failure returns how long to wait before the next attempt.
    async fn sync(&mut self, snap: &discovery::ClusterSnapshot) -> Result<(), Duration> {
        let started = Instant::now();
        let mapped = service_ports(snap, &self.node_name);
        let warnings: BTreeSet<String> = mapped.warnings.into_iter().collect();
        for w in warnings.difference(&self.warnings) {
            tracing::warn!("{w}");
        }
        self.warnings = warnings;
        let table = Arc::new(plan(&self.node, &mapped.ports));
        let planned = started.elapsed();
        let script = match &self.applied {
            Some(old) => netd_nft::diff(old, &table),
            None => netd_nft::render(&table),
        };
        let script = match script {
            Ok(s) => s,
            Err(e) => {
                // A name the planner made is not valid nft: a bug, not a passing failure.
                tracing::error!(error = %e, "the planned table is not valid; not applied");
                return Err(self.failed());
            }
        };
        let full = self.applied.is_none();
        let lines = script.lines().count();
        let result = tokio::task::spawn_blocking(move || Nft::default().apply(&script)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "nft transaction failed; the table is unchanged, retrying with a full rewrite");
                self.applied = None;
                return Err(self.failed());
            }
            Err(e) => {
                tracing::error!(error = %e, "nft transaction failed");
                self.applied = None;
                return Err(self.failed());
            }
        }
        self.failures = 0;
        let counts = table.counts();
        tracing::info!(
            generation = snap.generation,
            services = mapped.ports.len(),
            full,
            lines,
            chains = counts.chains,
            rules = counts.rules,
            elements = counts.elements,
            plan_ms = planned.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "synced"
        );
        self.applied = Some(table);
        self.cleaner.send_replace(Arc::new(mapped.ports));
        self.health_checks
            .update(&health_checks(snap, &self.node_name))
            .await;
        self.health
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .synced();
        Ok(())
    }

    fn failed(&mut self) -> Duration {
        self.health
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .failed();
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(500 << self.failures.min(6)).min(Duration::from_secs(30))
    }
}

/// Deletes stale UDP conntrack entries after each sync, off the sync loop: a slow or large
/// conntrack table never delays programming. Syncs that come while it works are coalesced.
async fn clean_conntrack(
    mut programmed: tokio::sync::watch::Receiver<Arc<Vec<ServicePort>>>,
    node_ips: Vec<IpAddr>,
) {
    while programmed.changed().await.is_ok() {
        let ports = Arc::clone(&programmed.borrow_and_update());
        let node_ips = node_ips.clone();
        let _ = tokio::task::spawn_blocking(move || clean_once(&ports, &node_ips)).await;
    }
}

fn clean_once(ports: &[ServicePort], node_ips: &[IpAddr]) {
    if !ports.iter().any(|p| p.protocol == Protocol::Udp) {
        return;
    }
    for family in ["ipv4", "ipv6"] {
        let listing = match Command::new("conntrack")
            .args(["-L", "-f", family, "-p", "udp"])
            .output()
        {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => {
                tracing::warn!(
                    family,
                    "conntrack -L failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "conntrack could not run");
                return;
            }
        };
        let entries = parse_conntrack(&listing);
        for entry in stale_udp_entries(&entries, ports, node_ips) {
            let args = conntrack_delete_args(entry);
            match Command::new("conntrack").args(&args).output() {
                Ok(out) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    // The entry may have gone by itself since the listing.
                    if out.status.success() || stderr.contains(" 0 flow entries") {
                        tracing::debug!(?entry, "stale UDP entry deleted");
                    } else {
                        tracing::warn!(?args, "conntrack -D failed: {}", stderr.trim());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "conntrack could not run"),
            }
        }
    }
}

/// The `conntrack -D` arguments that delete exactly `entry` (its original tuple).
pub fn conntrack_delete_args(entry: &UdpEntry) -> Vec<String> {
    let family = if entry.dst.is_ipv4() { "ipv4" } else { "ipv6" };
    [
        "-D",
        "-f",
        family,
        "-p",
        "udp",
        "-s",
        &entry.src.to_string(),
        "-d",
        &entry.dst.to_string(),
        "--sport",
        &entry.sport.to_string(),
        "--dport",
        &entry.dport.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_deletes_exactly_one_entry() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let args = conntrack_delete_args(&UdpEntry {
            src: ip("fd00:244::20"),
            dst: ip("fd00::10"),
            sport: 40000,
            dport: 53,
            reply_src: ip("fd00:244::5"),
        });
        assert_eq!(
            args,
            [
                "-D",
                "-f",
                "ipv6",
                "-p",
                "udp",
                "-s",
                "fd00:244::20",
                "-d",
                "fd00::10",
                "--sport",
                "40000",
                "--dport",
                "53"
            ]
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut s = Syncer {
            node_name: String::new(),
            node: Node::default(),
            applied: None,
            warnings: BTreeSet::new(),
            cleaner: tokio::sync::watch::channel(Arc::new(Vec::new())).0,
            failures: 0,
            health: Arc::default(),
            health_checks: HealthChecks::default(),
        };
        let waits: Vec<Duration> = (0..10).map(|_| s.failed()).collect();
        assert_eq!(waits[0], Duration::from_secs(1));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(waits[9], Duration::from_secs(30));
    }
}
