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
use std::time::Duration;

use netd_nft::Table;

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
    netd_node::nft_is_there().map_err(StartError::Nft)?;
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
    let snapshots = cfg.source.start().await?;
    let (cleaner, programmed) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    if conntrack {
        tokio::spawn(clean_conntrack(programmed, cfg.node.ips.clone()));
    }
    let mut syncer = Syncer {
        node_name: cfg.node_name.clone(),
        node: cfg.node.clone(),
        ports: Arc::new(Vec::new()),
        warnings: BTreeSet::new(),
        cleaner,
        health,
        health_checks: HealthChecks::default(),
    };
    let opts = netd_node::Options {
        table: TABLE,
        check_chain: "services",
        check_text: "vmap @service-ips-v4",
        check_period: cfg.check_period,
        cleanup_on_exit: cfg.cleanup_on_exit,
    };
    netd_node::run(opts, snapshots, &mut syncer, shutdown)
        .await
        .map_err(|_| StartError::DiscoveryStopped)
}

struct Syncer {
    node_name: String,
    node: Node,
    /// The Service ports of the last plan.
    ports: Arc<Vec<ServicePort>>,
    /// Warnings already logged, so each is logged once while it lasts.
    warnings: BTreeSet<String>,
    /// The Service ports programmed last, for the conntrack cleaner.
    cleaner: tokio::sync::watch::Sender<Arc<Vec<ServicePort>>>,
    health: Arc<RwLock<ProxyHealth>>,
    health_checks: HealthChecks,
}

impl netd_node::Planner for Syncer {
    fn plan(&mut self, snap: &discovery::ClusterSnapshot) -> Table {
        let mapped = service_ports(snap, &self.node_name);
        let warnings: BTreeSet<String> = mapped.warnings.into_iter().collect();
        for w in warnings.difference(&self.warnings) {
            tracing::warn!("{w}");
        }
        self.warnings = warnings;
        tracing::debug!(service_ports = mapped.ports.len(), "planned");
        let table = plan(&self.node, &mapped.ports);
        self.ports = Arc::new(mapped.ports);
        table
    }

    async fn applied(&mut self, snap: &discovery::ClusterSnapshot, _: &Table) {
        self.cleaner.send_replace(Arc::clone(&self.ports));
        self.health_checks
            .update(&health_checks(snap, &self.node_name))
            .await;
        self.health
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .synced();
    }

    fn failed(&mut self) {
        self.health
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .failed();
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
}
