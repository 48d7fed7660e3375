//! `netd-policy`'s command line and daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::eval::World;
use crate::plan::{TABLE, plan};

pub use netd_node::EXIT_NOINPUT;
pub use netd_node::EXIT_USAGE;

/// Network policy on this node: enforces NetworkPolicy, AdminNetworkPolicy and
/// BaselineAdminNetworkPolicy for the pods scheduled here, with nftables.
///
/// It owns the table `inet netd-policy` and never touches another. Every change is one atomic
/// transaction that rewrites only the rules and set elements it touched.
#[derive(Debug, Parser)]
#[command(name = "netd-policy", version)]
pub struct Args {
    /// Directory of Kubernetes manifests (YAML or JSON, searched recursively) to read instead
    /// of the Kubernetes API. It is watched: changes are enforced within a second.
    #[arg(
        long,
        env = "NETD_POLICY_MANIFESTS",
        value_name = "DIR",
        conflicts_with = "kubeconfig"
    )]
    pub manifests: Option<PathBuf>,

    /// Kubeconfig file for the Kubernetes API. Without it (and without --manifests) the pod's
    /// service account is used when running in a cluster (KUBERNETES_SERVICE_HOST is set).
    #[arg(long, env = "NETD_POLICY_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// This node's name: policies are enforced for the pods whose `spec.nodeName` is this.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: String,

    /// On SIGTERM, remove the table (and with it every policy on this node). By default the
    /// rules stay in place, so pods stay protected while the daemon restarts.
    #[arg(long, env = "NETD_POLICY_CLEANUP_ON_EXIT")]
    pub cleanup_on_exit: bool,

    /// How often to check that the table is still there (someone may delete or flush it), and
    /// rewrite it when it is not; `0s` for never. The whole table is also rewritten hourly.
    #[arg(long, env = "NETD_POLICY_CHECK_PERIOD", default_value = "60s", value_parser = netd_node::parse_period, value_name = "DURATION")]
    pub check_period: Duration,

    /// Log format on stderr: `text` or `json` (one object per line).
    #[arg(long, env = "NETD_POLICY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], value_name = "FORMAT")]
    pub log_format: String,
}

/// What the policy daemon watches in the Kubernetes API (Namespaces, Pods, Nodes and the
/// policy kinds; not Services or EndpointSlices), keeping the policy fields.
pub fn kube_options() -> discovery::kubernetes::KubeOptions {
    discovery::kubernetes::KubeOptions {
        pods: true,
        services: false,
        fields: discovery::Fields::POLICY,
        ..Default::default()
    }
}

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: discovery::Source,
    pub node_name: String,
    pub cleanup_on_exit: bool,
    pub check_period: Option<Duration>,
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
}

impl Args {
    pub fn into_config(self) -> Result<Config, UsageError> {
        if self.node_name.trim().is_empty() {
            return Err(UsageError::NodeName);
        }
        let source = discovery::Source::from_flags(self.manifests, self.kubeconfig, kube_options())
            .ok_or(UsageError::NoSource)?;
        Ok(Config {
            source,
            node_name: self.node_name,
            cleanup_on_exit: self.cleanup_on_exit,
            check_period: (!self.check_period.is_zero()).then_some(self.check_period),
        })
    }
}

struct Enforcer {
    node_name: String,
    /// Problems already logged, so each is logged once while it lasts.
    problems: std::collections::BTreeSet<String>,
}

impl netd_node::Planner for Enforcer {
    fn plan(&mut self, snap: &discovery::ClusterSnapshot) -> netd_nft::Table {
        let policy = &snap.objects.policy;
        let problems: std::collections::BTreeSet<String> = policy
            .admin
            .values()
            .map(|p| ("AdminNetworkPolicy", p))
            .chain(
                policy
                    .baseline
                    .values()
                    .map(|p| ("BaselineAdminNetworkPolicy", p)),
            )
            .flat_map(|(kind, p)| {
                p.problems
                    .iter()
                    .map(move |w| format!("{kind} {}: {w}", p.name))
            })
            .collect();
        for w in problems.difference(&self.problems) {
            tracing::warn!("{w}");
        }
        self.problems = problems;
        let world = World::new(snap);
        plan(&world, &self.node_name)
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] discovery::StartError),
    #[error("{0}")]
    Nft(String),
    #[error(transparent)]
    Stopped(#[from] netd_node::DiscoveryStopped),
}

/// Runs until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    netd_node::nft_is_there().map_err(RunError::Nft)?;
    let snapshots = cfg.source.start().await?;
    let opts = netd_node::Options {
        table: TABLE,
        check_chain: "forward",
        check_text: "jump egress",
        check_period: cfg.check_period,
        cleanup_on_exit: cfg.cleanup_on_exit,
    };
    let mut enforcer = Enforcer {
        node_name: cfg.node_name,
        problems: Default::default(),
    };
    netd_node::run(opts, snapshots, &mut enforcer, shutdown).await?;
    Ok(())
}

/// Parses the command line, runs until SIGTERM or SIGINT, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let args: Args = match netd_node::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let log_format = args.log_format.clone();
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netd-policy: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    netd_node::init_logging(&log_format);
    netd_node::main(
        "netd-policy",
        |shutdown| async move {
            run(cfg, shutdown).await?;
            Ok(())
        },
        |e| matches!(e.downcast_ref(), Some(RunError::Source(_))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut full = vec!["netd-policy"];
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
            "/m",
            "--node-name",
            "n1",
            "--check-period",
            "0s",
        ])
        .expect("valid");
        assert_eq!(cfg.node_name, "n1");
        assert_eq!(cfg.check_period, None);
        match cfg.source {
            discovery::Source::Manifests { watch, .. } => {
                assert_eq!(watch.fields, discovery::Fields::POLICY);
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&["--manifests", "/m", "--node-name", ""]).expect_err("empty");
        assert!(e.contains("--node-name"), "{e}");
        let e = parse(&[
            "--manifests",
            "/m",
            "--node-name",
            "n",
            "--check-period",
            "soon",
        ])
        .expect_err("period");
        assert!(e.contains("--check-period"), "{e}");
    }
}
