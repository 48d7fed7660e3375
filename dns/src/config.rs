//! The config file (`--config FILE`): zones forwarded to upstreams, the default upstreams, and
//! the cache. YAML, unknown fields are errors naming the field, every field documented here.
//!
//! ```yaml
//! servers:                      # zones sent to specific upstreams; longest suffix wins
//! - name: corp
//!   zones: [corp.example.com, 10.in-addr.arpa]
//!   forward:
//!     upstreams: ["192.0.2.53", "192.0.2.54:5353", "tls://192.0.2.55:853"]
//!     policy: round_robin       # random | round_robin | sequential (default random)
//!     tls: {server_name: dns.corp.example.com, ca_file: /etc/corp-ca.pem}
//! upstream_resolvers:           # everything else (default: the nameservers of /etc/resolv.conf)
//!   upstreams: ["/etc/resolv.conf"]
//!   policy: sequential
//! cache:
//!   max_ttl: 1h                 # cap on positive TTLs
//!   max_negative_ttl: 30s       # cap on negative TTLs (RFC 2308)
//!   serve_stale: 1h             # 0 disables; RFC 8767
//!   capacity: 100000            # entries
//! ```
//!
//! Raw serde structs ([`FileConfig`]) are validated into [`ForwardConfig`], which the forwarder
//! uses: addresses parsed, `/etc/resolv.conf` read, TLS roots loaded, zones in wire form.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::wire::name_to_wire;

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Zones sent to their own upstreams.
    #[serde(default)]
    pub servers: Vec<ServerBlock>,
    /// Where every other name goes; default: the nameservers of `/etc/resolv.conf`.
    #[serde(default)]
    pub upstream_resolvers: Option<ForwardSpec>,
    #[serde(default)]
    pub cache: CacheSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerBlock {
    /// A name for logs and metrics.
    pub name: String,
    /// The zones this block forwards (longest suffix wins across blocks).
    pub zones: Vec<String>,
    pub forward: ForwardSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    /// `IP`, `IP:PORT`, `[IPv6]:PORT`, `tls://IP[:PORT]` (DNS over TLS, port 853 by default),
    /// or a path to a resolv.conf whose nameservers are used.
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub policy: Policy,
    /// For `tls://` upstreams: the name their certificate must carry, and the CA to trust
    /// (default: the system's roots).
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// A random upstream first, then the others.
    #[default]
    Random,
    /// Each query starts at the next upstream.
    RoundRobin,
    /// Always the first healthy one, in the order written.
    Sequential,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub server_name: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Cap on the TTL of cached positive answers.
    #[serde(default = "default_max_ttl", deserialize_with = "duration")]
    pub max_ttl: Duration,
    /// Cap on the TTL of cached negative answers (taken from the SOA, RFC 2308).
    #[serde(default = "default_max_negative_ttl", deserialize_with = "duration")]
    pub max_negative_ttl: Duration,
    /// How long past expiry an answer may be served when every upstream fails (RFC 8767);
    /// `0` disables.
    #[serde(default, deserialize_with = "duration")]
    pub serve_stale: Duration,
    /// Most entries kept.
    #[serde(default = "default_capacity")]
    pub capacity: u64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            max_ttl: default_max_ttl(),
            max_negative_ttl: default_max_negative_ttl(),
            serve_stale: Duration::ZERO,
            capacity: default_capacity(),
        }
    }
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_negative_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_capacity() -> u64 {
    100_000
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(0) => Ok(Duration::ZERO),
        Raw::Secs(n) => Err(serde::de::Error::custom(format!(
            "{n} has no unit: write it like {n}s, 500ms or 1h"
        ))),
        Raw::Text(s) if s == "0" => Ok(Duration::ZERO),
        Raw::Text(s) => humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like 30s, 500ms or 1h: {e}"
            ))
        }),
    }
}

/// A config that cannot be used, with what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// How an upstream is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP, and TCP when the UDP reply is truncated.
    Plain,
    /// DNS over TLS (RFC 7858).
    Tls,
}

/// One upstream, resolved.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl UpstreamSpec {
    /// How logs and metrics name it: `192.0.2.53:53`, `tls://192.0.2.55:853`.
    pub fn label(&self) -> String {
        match self.transport {
            Transport::Plain => self.addr.to_string(),
            Transport::Tls => format!("tls://{}", self.addr),
        }
    }
}

/// A group of upstreams, resolved.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub name: String,
    pub upstreams: Vec<UpstreamSpec>,
    pub policy: Policy,
    /// For TLS upstreams.
    pub tls: Option<Arc<TlsClient>>,
}

/// What TLS upstreams are checked against.
#[derive(Debug)]
pub struct TlsClient {
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub config: Arc<rustls::ClientConfig>,
}

/// The forwarding config, validated and resolved.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// `(zone in lower-case wire form, group)`, longest zone first.
    pub zones: Vec<(Vec<u8>, Arc<GroupSpec>)>,
    /// Everything else; `None` when no upstream could be found.
    pub default: Option<Arc<GroupSpec>>,
    pub cache: CacheSpec,
}

fn parse_upstream(field: &str, s: &str, out: &mut Vec<UpstreamSpec>) -> Result<(), ConfigError> {
    if s.starts_with('/') {
        let text = std::fs::read_to_string(s).map_err(|e| invalid(field, format!("{s}: {e}")))?;
        let before = out.len();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("nameserver")
                && let Some(ip) = words.next()
            {
                // A zone index (fe80::1%eth0) cannot be used from here: skip such entries.
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    out.push(UpstreamSpec {
                        addr: SocketAddr::new(ip, 53),
                        transport: Transport::Plain,
                    });
                }
            }
        }
        if out.len() == before {
            return Err(invalid(field, format!("{s} names no nameserver")));
        }
        return Ok(());
    }
    let (rest, transport, port) = match s.strip_prefix("tls://") {
        Some(r) => (r, Transport::Tls, 853),
        None => (s.strip_prefix("dns://").unwrap_or(s), Transport::Plain, 53),
    };
    let addr = rest
        .parse::<SocketAddr>()
        .or_else(|_| rest.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, port)))
        .map_err(|_| {
            invalid(
                field,
                format!("{s:?} is not IP, IP:PORT, tls://IP[:PORT] or a resolv.conf path"),
            )
        })?;
    out.push(UpstreamSpec { addr, transport });
    Ok(())
}

const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn tls_client(field: &str, spec: &TlsSpec) -> Result<Arc<TlsClient>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca_file {
        Some(path) => {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
                invalid(
                    format!("{field}.ca_file"),
                    format!("{}: {e}", path.display()),
                )
            })?;
            for c in certs {
                let c = c.map_err(|e| {
                    invalid(
                        format!("{field}.ca_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                roots.add(c).map_err(|e| {
                    invalid(
                        format!("{field}.ca_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(invalid(
                    format!("{field}.ca_file"),
                    format!("{}: no certificate", path.display()),
                ));
            }
        }
        None => {
            // The system bundle, where Debian, Fedora and Alpine keep it.
            for path in SYSTEM_CA_BUNDLES {
                if let Ok(certs) = rustls::pki_types::CertificateDer::pem_file_iter(path) {
                    for c in certs.flatten() {
                        let _ = roots.add(c);
                    }
                }
            }
            if roots.is_empty() {
                return Err(invalid(
                    format!("{field}.ca_file"),
                    "no system CA certificates found; set ca_file",
                ));
            }
        }
    }
    let server_name =
        rustls::pki_types::ServerName::try_from(spec.server_name.clone()).map_err(|e| {
            invalid(
                format!("{field}.server_name"),
                format!("{:?}: {e}", spec.server_name),
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(field, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(TlsClient {
        server_name,
        config: Arc::new(config),
    }))
}

fn group(field: &str, name: &str, spec: &ForwardSpec) -> Result<GroupSpec, ConfigError> {
    if spec.upstreams.is_empty() {
        return Err(invalid(
            format!("{field}.upstreams"),
            "at least one upstream is needed",
        ));
    }
    let mut upstreams = Vec::new();
    for (i, u) in spec.upstreams.iter().enumerate() {
        parse_upstream(&format!("{field}.upstreams[{i}]"), u, &mut upstreams)?;
    }
    let has_tls = upstreams.iter().any(|u| u.transport == Transport::Tls);
    let tls = match (&spec.tls, has_tls) {
        (Some(t), _) => Some(tls_client(&format!("{field}.tls"), t)?),
        (None, true) => {
            return Err(invalid(
                format!("{field}.tls"),
                "tls:// upstreams need tls.server_name (the name their certificate carries)",
            ));
        }
        (None, false) => None,
    };
    Ok(GroupSpec {
        name: name.to_string(),
        upstreams,
        policy: spec.policy,
        tls,
    })
}

impl FileConfig {
    /// Parses the YAML text of a config file; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str::<FileConfig>(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates and resolves. `extra_upstreams` (`--upstream`) replace
    /// `upstream_resolvers.upstreams`.
    pub fn resolve(&self, extra_upstreams: &[String]) -> Result<ForwardConfig, ConfigError> {
        let mut zones = Vec::new();
        for (i, b) in self.servers.iter().enumerate() {
            let field = format!("servers[{i}]");
            if b.zones.is_empty() {
                return Err(invalid(
                    format!("{field}.zones"),
                    "at least one zone is needed",
                ));
            }
            let g = Arc::new(group(&format!("{field}.forward"), &b.name, &b.forward)?);
            for (j, z) in b.zones.iter().enumerate() {
                let w = name_to_wire(z)
                    .map_err(|e| invalid(format!("{field}.zones[{j}]"), e.to_string()))?;
                if zones.iter().any(|(o, _): &(Vec<u8>, _)| *o == w) {
                    return Err(invalid(
                        format!("{field}.zones[{j}]"),
                        format!("{z:?} is listed twice"),
                    ));
                }
                zones.push((w, Arc::clone(&g)));
            }
        }
        zones.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));

        let default = if extra_upstreams == ["off"] {
            None
        } else if !extra_upstreams.is_empty() {
            let spec = ForwardSpec {
                upstreams: extra_upstreams.to_vec(),
                policy: self
                    .upstream_resolvers
                    .as_ref()
                    .map(|u| u.policy)
                    .unwrap_or_default(),
                tls: self.upstream_resolvers.as_ref().and_then(|u| u.tls.clone()),
            };
            Some(Arc::new(group("--upstream", "default", &spec)?))
        } else {
            match &self.upstream_resolvers {
                Some(spec) => Some(Arc::new(group("upstream_resolvers", "default", spec)?)),
                None => {
                    let spec = ForwardSpec {
                        upstreams: vec!["/etc/resolv.conf".into()],
                        policy: Policy::Sequential,
                        tls: None,
                    };
                    // No resolv.conf (or none in it) is not an error: nothing outside the zone
                    // is forwarded, and names there get REFUSED.
                    group("upstream_resolvers", "default", &spec)
                        .ok()
                        .map(Arc::new)
                }
            }
        };

        if self.cache.capacity == 0 {
            return Err(invalid("cache.capacity", "must be at least 1"));
        }
        for (field, d, max_days) in [
            ("cache.max_ttl", self.cache.max_ttl, 7),
            ("cache.max_negative_ttl", self.cache.max_negative_ttl, 1),
            ("cache.serve_stale", self.cache.serve_stale, 7),
        ] {
            if d > Duration::from_secs(max_days * 86400) {
                return Err(invalid(
                    field,
                    format!("{d:?} is longer than {max_days} day(s)"),
                ));
            }
        }
        Ok(ForwardConfig {
            zones,
            default,
            cache: self.cache.clone(),
        })
    }
}

/// The entry of the longest zone containing `lname` (`zones` sorted longest first), else
/// `default`.
pub fn longest_zone<'a, T>(
    zones: &'a [(Vec<u8>, T)],
    default: Option<&'a T>,
    lname: &[u8],
) -> Option<&'a T> {
    zones
        .iter()
        .find(|(z, _)| crate::wire::is_subdomain(lname, z))
        .map(|(_, g)| g)
        .or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route<'a>(f: &'a ForwardConfig, lname: &[u8]) -> Option<&'a Arc<GroupSpec>> {
        longest_zone(&f.zones, f.default.as_ref(), lname)
    }

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("c.yaml"), text)
    }

    #[test]
    fn the_documented_shape_parses() {
        let c = parse(
            "servers:\n- name: corp\n  zones: [corp.example.com, 10.in-addr.arpa]\n  forward:\n    upstreams: [\"192.0.2.53\", \"192.0.2.54:5353\", \"[2001:db8::1]:53\"]\n    policy: round_robin\n\
             upstream_resolvers:\n  upstreams: [\"198.51.100.1\"]\n  policy: sequential\n\
             cache:\n  max_ttl: 1h\n  max_negative_ttl: 30s\n  serve_stale: 1h\n  capacity: 100000\n",
        )
        .expect("parses");
        let f = c.resolve(&[]).expect("resolves");
        assert_eq!(f.zones.len(), 2);
        let g = route(&f, b"\x01a\x04corp\x07example\x03com\x00").expect("routed");
        assert_eq!(
            (g.name.as_str(), g.policy, g.upstreams.len()),
            ("corp", Policy::RoundRobin, 3)
        );
        assert_eq!(g.upstreams[1].addr.port(), 5353);
        assert_eq!(
            route(&f, b"\x07example\x03org\x00")
                .expect("default")
                .upstreams[0]
                .label(),
            "198.51.100.1:53"
        );
        assert_eq!(f.cache.serve_stale, Duration::from_secs(3600));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("servers:\n- name: x\n  zones: [a]\n  forwrd: {}\n").expect_err("typo");
        assert!(e.to_string().contains("unknown field `forwrd`"), "{e}");
        let e = parse("cache: {max_ttl: 30}\n").expect_err("unitless");
        assert!(e.to_string().contains("30 has no unit"), "{e}");
        let c = parse("servers:\n- name: x\n  zones: [a]\n  forward: {upstreams: [\"nope\"]}\n")
            .expect("parses");
        let e = c.resolve(&[]).expect_err("bad upstream");
        assert_eq!(
            e.to_string(),
            "servers[0].forward.upstreams[0]: \"nope\" is not IP, IP:PORT, tls://IP[:PORT] or a resolv.conf path"
        );
        let c = parse(
            "servers:\n- name: x\n  zones: [a]\n  forward: {upstreams: [\"tls://192.0.2.1\"]}\n",
        )
        .expect("parses");
        let e = c.resolve(&[]).expect_err("tls without name");
        assert!(
            e.to_string()
                .starts_with("servers[0].forward.tls: tls:// upstreams need"),
            "{e}"
        );
        let e = parse(
            "upstream_resolvers: {upstreams: [\"192.0.2.1\"]}\ncache: {serve_stale: 2000y}\n",
        )
        .expect("parses")
        .resolve(&[])
        .expect_err("too long");
        assert!(e.to_string().starts_with("cache.serve_stale: "), "{e}");
        let e = parse("cache: {capacity: 0}\n")
            .expect("parses")
            .resolve(&[])
            .expect_err("capacity");
        assert_eq!(e.to_string(), "cache.capacity: must be at least 1");
    }

    #[test]
    fn resolv_conf_and_flag_upstreams() {
        let dir = tempfile::tempdir().expect("tmp");
        let rc = dir.path().join("resolv.conf");
        std::fs::write(
            &rc,
            "search a.b\nnameserver 192.0.2.10\nnameserver fe80::1%eth0\nnameserver 2001:db8::2\n",
        )
        .expect("write");
        let c = FileConfig {
            upstream_resolvers: Some(ForwardSpec {
                upstreams: vec![rc.display().to_string()],
                policy: Policy::Sequential,
                tls: None,
            }),
            ..FileConfig::default()
        };
        let f = c.resolve(&[]).expect("resolves");
        let labels: Vec<String> = f
            .default
            .expect("default")
            .upstreams
            .iter()
            .map(UpstreamSpec::label)
            .collect();
        assert_eq!(labels, ["192.0.2.10:53", "[2001:db8::2]:53"]);
        let f = c.resolve(&["127.0.0.1:5300".into()]).expect("flag wins");
        assert_eq!(
            f.default.expect("default").upstreams[0].label(),
            "127.0.0.1:5300"
        );
    }
}
