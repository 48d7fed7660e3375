//! `netd-proxy`'s command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use crate::Node;
use crate::daemon::{Config, StartError};

pub use netd_node::EXIT_NOINPUT;
pub use netd_node::EXIT_USAGE;

/// The service proxy: load-balances Services over their endpoints with nftables, on this node.
///
/// It owns the table `inet netd-proxy` and never touches another. The table follows
/// kube-proxy's nftables mode; every change is one atomic transaction that rewrites only what
/// the change touched.
#[derive(Debug, Parser)]
#[command(name = "netd-proxy", version)]
pub struct Args {
    /// Directory of Kubernetes manifests (YAML or JSON, searched recursively) to read instead
    /// of the Kubernetes API. It is watched: changes are programmed within a second.
    #[arg(
        long,
        env = "NETD_PROXY_MANIFESTS",
        value_name = "DIR",
        conflicts_with = "kubeconfig"
    )]
    pub manifests: Option<PathBuf>,

    /// Kubeconfig file for the Kubernetes API. Without it (and without --manifests) the pod's
    /// service account is used when running in a cluster (KUBERNETES_SERVICE_HOST is set).
    #[arg(long, env = "NETD_PROXY_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// This node's name: endpoints whose `nodeName` is this are local (for the Local traffic
    /// policies).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: String,

    /// An address NodePorts answer on (repeatable, or comma-separated; one per family is
    /// usual). Without any, NodePorts are not served on this node.
    #[arg(
        long = "node-ip",
        env = "NETD_PROXY_NODE_IPS",
        value_delimiter = ',',
        value_name = "IP"
    )]
    pub node_ips: Vec<IpAddr>,

    /// The pod network (repeatable, one per family): traffic to a cluster IP from outside it
    /// is masqueraded so that replies come back through this node. Without it, such traffic is
    /// not masqueraded.
    #[arg(
        long = "cluster-cidr",
        env = "NETD_PROXY_CLUSTER_CIDRS",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub cluster_cidrs: Vec<IpNet>,

    /// On SIGTERM, remove the table. By default the rules stay in place, so Services keep
    /// working while the proxy restarts.
    #[arg(long, env = "NETD_PROXY_CLEANUP_ON_EXIT")]
    pub cleanup_on_exit: bool,

    /// Do not set `net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding` and
    /// `net.bridge.bridge-nf-call-ip{,6}tables` at start (when the node's setup owns them).
    #[arg(long, env = "NETD_PROXY_NO_SYSCTLS")]
    pub no_sysctls: bool,

    /// Where to serve `/healthz` and `/livez` (plain HTTP; 200 once the rules are programmed
    /// and the last sync succeeded, else 503); `off` for nowhere. kube-proxy's port.
    #[arg(long, env = "NETD_PROXY_HEALTHZ_LISTEN", default_value = "0.0.0.0:10256", value_parser = parse_listen, value_name = "ADDR:PORT|off")]
    pub healthz_listen: Listen,

    /// How often to check that the table is still there (someone may delete or flush it), and
    /// rewrite it when it is not; `0s` for never. The whole table is also rewritten hourly.
    #[arg(long, env = "NETD_PROXY_CHECK_PERIOD", default_value = "60s", value_parser = netd_node::parse_period, value_name = "DURATION")]
    pub check_period: Duration,

    /// Log format on stderr: `text` or `json` (one object per line).
    #[arg(long, env = "NETD_PROXY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], value_name = "FORMAT")]
    pub log_format: String,
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?} is not ADDR:PORT or off"))
}

/// A flag combination that cannot work, named.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(
        "no discovery source: pass --manifests DIR or --kubeconfig PATH, or run in a pod (KUBERNETES_SERVICE_HOST is not set)"
    )]
    NoSource,
    #[error("--node-name must not be empty")]
    NodeName,
    #[error("--cluster-cidr {0}: has host bits set (did you mean {1}?)")]
    Cidr(IpNet, IpNet),
}

impl Args {
    /// Validates the flags into a config.
    pub fn into_config(self) -> Result<Config, UsageError> {
        if self.node_name.trim().is_empty() {
            return Err(UsageError::NodeName);
        }
        for cidr in &self.cluster_cidrs {
            if cidr.trunc() != *cidr {
                return Err(UsageError::Cidr(*cidr, cidr.trunc()));
            }
        }
        let source = discovery::Source::from_flags(self.manifests, self.kubeconfig, kube_options())
            .ok_or(UsageError::NoSource)?
            .with_fields(discovery::Fields::TRAFFIC);
        let mut ips = self.node_ips;
        ips.sort();
        ips.dedup();
        Ok(Config {
            source,
            node_name: self.node_name,
            node: Node {
                ips,
                cluster_cidrs: self.cluster_cidrs,
            },
            cleanup_on_exit: self.cleanup_on_exit,
            sysctls: !self.no_sysctls,
            healthz: self.healthz_listen.0,
            check_period: (!self.check_period.is_zero()).then_some(self.check_period),
        })
    }
}

/// What the proxy watches in the Kubernetes API: Namespaces, Services and EndpointSlices (not
/// Pods), keeping the traffic fields.
pub fn kube_options() -> discovery::kubernetes::KubeOptions {
    discovery::kubernetes::KubeOptions {
        pods: false,
        fields: discovery::Fields::TRAFFIC,
        ..Default::default()
    }
}

/// Parses the command line, runs the daemon until SIGTERM or SIGINT, and maps the outcome to an
/// exit code.
pub fn main() -> ExitCode {
    let args: Args = match netd_node::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let log_format = args.log_format.clone();
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netd-proxy: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    netd_node::init_logging(&log_format);
    if cfg.node.ips.is_empty() {
        tracing::warn!("no --node-ip: NodePorts are not served on this node");
    }
    if cfg.node.cluster_cidrs.is_empty() {
        tracing::warn!(
            "no --cluster-cidr: traffic to cluster IPs from outside the pod network is not masqueraded"
        );
    }
    netd_node::main(
        "netd-proxy",
        |shutdown| async move {
            crate::daemon::run(cfg, shutdown).await?;
            Ok(())
        },
        |e| matches!(e.downcast_ref(), Some(StartError::Source(_))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut full = vec!["netd-proxy"];
        full.extend_from_slice(args);
        Args::try_parse_from(full)
            .map_err(|e| e.to_string())?
            .into_config()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_make_the_config() {
        let cfg = parse(&[
            "--manifests",
            "/tmp/m",
            "--node-name",
            "n1",
            "--node-ip",
            "192.0.2.1,2001:db8::1",
            "--node-ip",
            "192.0.2.1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--cleanup-on-exit",
        ])
        .expect("valid");
        assert_eq!(cfg.node_name, "n1");
        assert_eq!(cfg.node.ips.len(), 2, "deduplicated: {:?}", cfg.node.ips);
        assert!(cfg.cleanup_on_exit && cfg.sysctls);
        assert_eq!(cfg.healthz, Some("0.0.0.0:10256".parse().expect("addr")));
        match cfg.source {
            discovery::Source::Manifests { dir, watch } => {
                assert_eq!(dir, PathBuf::from("/tmp/m"));
                assert_eq!(watch.fields, discovery::Fields::TRAFFIC);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_flags_are_named() {
        let e = parse(&[
            "--manifests",
            "/m",
            "--node-name",
            "n",
            "--cluster-cidr",
            "10.244.1.0/16",
        ])
        .expect_err("host bits");
        assert!(e.contains("10.244.0.0/16"), "{e}");
        let e = parse(&["--manifests", "/m", "--node-name", " "]).expect_err("empty name");
        assert!(e.contains("--node-name"), "{e}");
        let e = parse(&["--manifests", "/m", "--node-name", "n", "--node-ip", "x"])
            .expect_err("bad IP");
        assert!(e.contains("--node-ip"), "{e}");
        let off = parse(&[
            "--manifests",
            "/m",
            "--node-name",
            "n",
            "--healthz-listen",
            "off",
        ])
        .expect("off");
        assert_eq!(off.healthz, None);
        let e = parse(&[
            "--manifests",
            "/m",
            "--node-name",
            "n",
            "--healthz-listen",
            "10256",
        ])
        .expect_err("no address");
        assert!(e.contains("--healthz-listen"), "{e}");
        let e = parse(&[
            "--manifests",
            "/m",
            "--kubeconfig",
            "/k",
            "--node-name",
            "n",
        ])
        .expect_err("two sources");
        assert!(e.contains("--kubeconfig"), "{e}");
    }
}
