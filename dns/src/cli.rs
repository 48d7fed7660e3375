//! The `clusterdns` command line: flags parsed raw by clap, then validated into [`ServeConfig`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::view::{PodMode, ViewConfig};
use crate::{ServeConfig, ServerConfig, Source};

/// Exit code for bad usage (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for an unusable input such as a missing manifests directory (EX_NOINPUT).
pub const EXIT_NOINPUT: u8 = 66;
/// Exit code for a config file that does not parse or validate (EX_DATAERR).
pub const EXIT_DATAERR: u8 = 65;

#[derive(Debug, Parser)]
#[command(
    name = "clusterdns",
    version,
    about = "Authoritative DNS for the Kubernetes cluster domain"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the cluster domain over UDP and TCP.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address and port to answer on, UDP and TCP. Repeat the flag (or separate with commas)
    /// for several.
    #[arg(
        long,
        env = "CLUSTERDNS_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:53",
        value_name = "ADDR:PORT"
    )]
    pub listen: Vec<SocketAddr>,

    /// Directory of Kubernetes manifests (YAML or JSON, searched recursively) to serve instead
    /// of the Kubernetes API. It is watched: changes are answered within a second.
    #[arg(
        long,
        env = "CLUSTERDNS_MANIFESTS",
        value_name = "DIR",
        conflicts_with = "kubeconfig"
    )]
    pub manifests: Option<PathBuf>,

    /// Kubeconfig file for the Kubernetes API. Without it (and without --manifests) the pod's
    /// service account is used when running in a cluster (KUBERNETES_SERVICE_HOST is set).
    #[arg(long, env = "CLUSTERDNS_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Serve only these namespaces (comma-separated or repeated); the API is then watched per
    /// namespace and Namespace objects are not read. Default: all.
    #[arg(
        long,
        env = "CLUSTERDNS_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS,..."
    )]
    pub namespaces: Vec<String>,

    /// Name endpoints that have no hostname after their pod (`targetRef`), as CoreDNS's
    /// `endpoint_pod_names`, instead of after their address.
    #[arg(long, env = "CLUSTERDNS_ENDPOINT_POD_NAMES")]
    pub endpoint_pod_names: bool,

    /// How long to wait at start for the first complete list of every watched kind. Until then
    /// cluster names that would be NXDOMAIN answer SERVFAIL; after it, the server answers from
    /// what it has. Written like `500ms`, `5s`, `1m`.
    #[arg(long, env = "CLUSTERDNS_STARTUP_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub startup_timeout: Duration,

    /// The cluster domain the server is authoritative for.
    #[arg(
        long,
        env = "CLUSTERDNS_CLUSTER_DOMAIN",
        default_value = "cluster.local",
        value_name = "NAME"
    )]
    pub cluster_domain: String,

    /// TTL of every cluster record, and the SOA minimum (how long negative answers are cached).
    #[arg(long, env = "CLUSTERDNS_TTL", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600), value_name = "SECONDS")]
    pub ttl: u32,

    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: `disabled`, `insecure` (any well-formed
    /// address) or `verified` (only addresses of pods in that namespace).
    #[arg(
        long,
        env = "CLUSTERDNS_PODS",
        default_value = "verified",
        value_name = "MODE"
    )]
    pub pods: PodMode,

    /// The Service whose cluster IPs `ns.dns.<zone>` answers with; the listen addresses when it
    /// does not exist.
    #[arg(long, env = "CLUSTERDNS_DNS_SERVICE", default_value = "kube-system/kube-dns", value_parser = parse_ns_name, value_name = "NS/NAME")]
    pub dns_service: (String, String),

    /// Config file (YAML) with the forwarded zones, the default upstreams and the cache; reloaded
    /// when it changes and on SIGHUP. See README "Forwarding".
    #[arg(long, env = "CLUSTERDNS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Default upstream for names outside the cluster (repeatable): `IP`, `IP:PORT`,
    /// `tls://IP[:PORT]` or a resolv.conf path; replaces `upstream_resolvers.upstreams` of the
    /// config file. `off`: no default upstreams. Without it and without a config file, the
    /// nameservers of /etc/resolv.conf.
    #[arg(
        long,
        env = "CLUSTERDNS_UPSTREAM",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub upstream: Vec<String>,

    /// Where to serve `/health`, `/ready` and `/metrics` (plain HTTP); `off` for nowhere.
    #[arg(long, env = "CLUSTERDNS_ADMIN_LISTEN", default_value = "0.0.0.0:8080", value_parser = parse_admin, value_name = "ADDR:PORT|off")]
    pub admin_listen: AdminListen,

    /// After SIGTERM, how long to keep answering (with `/ready` failing) before stopping, so
    /// that clients and load balancers move away first.
    #[arg(long, env = "CLUSTERDNS_LAMEDUCK", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub lameduck: Duration,

    /// Log format on stderr: `text` or `json` (one object per line).
    #[arg(long, env = "CLUSTERDNS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], value_name = "FORMAT")]
    pub log_format: String,

    /// Log queries (target `clusterdns::query`, level info): `--query-log` logs every query,
    /// `--query-log=0.01` about one in a hundred. Off by default.
    #[arg(long, env = "CLUSTERDNS_QUERY_LOG", num_args = 0..=1, default_missing_value = "1", value_parser = parse_fraction, value_name = "FRACTION")]
    pub query_log: Option<f64>,

    /// Most TCP connections open at once; more wait in the accept queue.
    #[arg(
        long,
        env = "CLUSTERDNS_TCP_MAX_CONNECTIONS",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub tcp_max_connections: usize,

    /// A TCP connection without a complete query for this long is closed (also a slowloris
    /// that sends a length prefix and stops).
    #[arg(long, env = "CLUSTERDNS_TCP_IDLE_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub tcp_idle_timeout: Duration,

    /// Response rate limiting on UDP: responses per second per client network (/24, IPv6 /56);
    /// 0 is off. Past it responses are dropped, every --rrl-slip-th sent truncated.
    #[arg(long, env = "CLUSTERDNS_RRL", default_value_t = 0, value_name = "RATE")]
    pub rrl: u32,

    /// With --rrl, every N-th limited response is sent truncated (TC) instead of dropped, so
    /// real clients retry over TCP; 0 drops them all.
    #[arg(
        long,
        env = "CLUSTERDNS_RRL_SLIP",
        default_value_t = 2,
        value_name = "N"
    )]
    pub rrl_slip: u32,

    /// With --rrl, limit answers from the cluster's own zones too (by default only forwarded
    /// and refused names are limited).
    #[arg(long, env = "CLUSTERDNS_RRL_CLUSTER")]
    pub rrl_cluster: bool,

    /// UDP sockets and threads per listen address (SO_REUSEPORT), each receiving and sending in
    /// batches of up to 32, worker N taking the datagrams received on the Nth CPU this process
    /// may use (SO_INCOMING_CPU); 0 means one per CPU.
    #[arg(
        long,
        env = "CLUSTERDNS_UDP_WORKERS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub udp_workers: usize,
}

/// `--admin-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

fn parse_admin(s: &str) -> Result<AdminListen, String> {
    if s == "off" {
        return Ok(AdminListen(None));
    }
    s.parse()
        .map(|a| AdminListen(Some(a)))
        .map_err(|_| format!("{s:?} is not ADDR:PORT or off"))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{s:?} is not a fraction in (0, 1]")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 5s or 1m: {e}"))
}

fn parse_ns_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// A flag combination that cannot work, named.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(
        "no discovery source: pass --manifests DIR or --kubeconfig PATH, or run in a pod (KUBERNETES_SERVICE_HOST is not set)"
    )]
    NoSource,
    #[error("--namespaces: {0:?} is not a namespace name")]
    Namespace(String),
    #[error("--cluster-domain {0:?}: {1}")]
    Zone(String, crate::wire::NameError),
    #[error("--cluster-domain must not be the root")]
    RootZone,
}

impl ServeArgs {
    /// Validates the flags into a config.
    pub fn into_config(self) -> Result<ServeConfig, UsageError> {
        for ns in &self.namespaces {
            if !discovery::model::is_dns_label(ns) {
                return Err(UsageError::Namespace(ns.clone()));
            }
        }
        let source = Source::from_flags(
            self.manifests,
            self.kubeconfig,
            discovery::kubernetes::KubeOptions {
                namespaces: self.namespaces.clone(),
                pods: self.pods == PodMode::Verified,
                ..Default::default()
            },
        )
        .ok_or(UsageError::NoSource)?;
        let zone = self
            .cluster_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if zone.is_empty() {
            return Err(UsageError::RootZone);
        }
        crate::wire::name_to_wire(&zone)
            .map_err(|e| UsageError::Zone(self.cluster_domain.clone(), e))?;
        let fallback_ns_ips: Vec<IpAddr> = self
            .listen
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let query_log_every = self
            .query_log
            .map_or(0, |f| (1.0 / f).round().max(1.0) as u64);
        let mut server = ServerConfig {
            listen: self.listen,
            query_log_every,
            tcp_max_connections: self.tcp_max_connections.max(1),
            tcp_idle_timeout: self.tcp_idle_timeout,
            rrl: (self.rrl > 0).then(|| {
                std::sync::Arc::new(crate::rrl::Rrl::new(
                    self.rrl,
                    self.rrl_slip,
                    self.rrl_cluster,
                ))
            }),
            ..ServerConfig::default()
        };
        if self.udp_workers > 0 {
            server.udp_workers = self.udp_workers;
        }
        Ok(ServeConfig {
            server,
            view: ViewConfig {
                zone,
                ttl: self.ttl,
                pods: self.pods,
                dns_service: self.dns_service,
                fallback_ns_ips,
                namespaces: (!self.namespaces.is_empty())
                    .then(|| self.namespaces.into_iter().collect()),
                endpoint_pod_names: self.endpoint_pod_names,
            },
            source,
            startup_timeout: self.startup_timeout,
            admin_listen: self.admin_listen.0,
            forward: Some(crate::reload::ForwardSource {
                config: self.config,
                upstreams: self.upstream,
            }),
        })
    }
}

/// The log filter when `RUST_LOG` is not set. kube-client logs an ERROR line for every failed
/// request, retries included; discovery logs each failure streak once, with its context.
pub const DEFAULT_LOG_FILTER: &str = "info,kube_client::client::builder=off";

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP is acknowledged.
async fn serve(cfg: ServeConfig, lameduck: Duration) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let running = crate::start(cfg).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
                        _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                running.reload();
            }
        }
    }
    running.graceful_shutdown(lameduck).await;
    Ok(())
}

/// Parses the command line, runs it and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let Command::Serve(args) = cli.command;
    let (lameduck, log_format) = (args.lameduck, args.log_format.clone());
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clusterdns: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(&log_format);
    crate::metrics::count_panics();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clusterdns: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cfg, lameduck)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clusterdns: error: {}", error_chain(&e));
            if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                ExitCode::from(EXIT_DATAERR)
            } else if e.downcast_ref::<discovery::StartError>().is_some() {
                ExitCode::from(EXIT_NOINPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `e` and its causes, each once: an error whose message already ends with its cause's (the
/// `{source}` in a `thiserror` message) does not repeat it, as `{:#}` would.
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.ends_with(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
