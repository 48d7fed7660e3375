//! The stripped object model: only the fields that DNS and the node daemons read.
//!
//! Every source (the Kubernetes API, a manifests directory) converts k8s-openapi objects into
//! these types at ingestion, through the `TryFrom` impls below, so no k8s-openapi type travels
//! past this crate and both sources agree on every conversion rule.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as disc;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Namespace and name of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why an object could not be converted into the model. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {reason}")]
pub struct ConvertError {
    pub kind: &'static str,
    /// `namespace/name`, or just the name, or `<unnamed>`.
    pub object: String,
    pub reason: String,
}

/// What a consumer needs kept beyond what DNS reads. Fields nobody asked for are neither
/// parsed nor stored, so the DNS server pays no memory for the node daemons' fields, and a bad
/// value in a field a consumer does not read never costs it the object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields {
    /// What the service proxy routes by: node ports, external and load-balancer addresses,
    /// session affinity, traffic policies, and each endpoint's node.
    pub traffic: bool,
    /// What the policy daemon matches on: labels of Namespaces and Pods, each pod's node,
    /// container ports and host networking; and the policy kinds and Nodes themselves.
    pub policy: bool,
}

impl Fields {
    /// What the service proxy reads.
    pub const TRAFFIC: Fields = Fields {
        traffic: true,
        policy: false,
    };
    /// What the policy daemon reads.
    pub const POLICY: Fields = Fields {
        traffic: false,
        policy: true,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Only with [`Fields::policy`]; empty otherwise.
    pub labels: crate::policy::Labels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("TCP") => Ok(Self::Tcp),
            Some("UDP") => Ok(Self::Udp),
            Some("SCTP") => Ok(Self::Sctp),
            Some(other) => Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
        }
    }

    /// The SRV label for this protocol, without the underscore.
    pub fn srv_label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty when the port is unnamed (only allowed for single-port services).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// `nodePort` of a NodePort or LoadBalancer service ([`Fields::traffic`] only).
    pub node_port: Option<u16>,
}

/// How a Service's traffic is routed: kept only with [`Fields::traffic`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTraffic {
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`, except ingresses with `ipMode: Proxy` (the load
    /// balancer proxies to the node, so the address must not be captured on the node).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP`, with `sessionAffinityConfig.clientIP.timeoutSeconds`
    /// (default 10800).
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `spec.loadBalancerSourceRanges`, as written.
    pub source_ranges: Vec<String>,
    /// `spec.healthCheckNodePort` (LoadBalancer services with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// Addresses that were skipped, each naming its field (the rest of the Service is kept,
    /// as kube-proxy drops such entries one at a time).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub type_: ServiceType,
    /// The cluster IPs, primary first. Empty for headless and ExternalName services.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    pub ip_families: Vec<IpFamily>,
    pub ports: Vec<ServicePort>,
    /// The target of an ExternalName service, without a trailing dot.
    pub external_name: Option<String>,
    pub publish_not_ready_addresses: bool,
    /// Routing fields, with [`Fields::traffic`]; `None` otherwise.
    pub traffic: Option<Box<ServiceTraffic>>,
}

impl Service {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    V4,
    V6,
    Fqdn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    /// Unset means "all ports" in the API; DNS gives such a port no SRV record.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Parsed addresses; empty for FQDN slices (which DNS does not serve).
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    /// `conditions.ready`; `None` (unset) means ready.
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub target_ref: Option<TargetRef>,
    /// `nodeName` ([`Fields::traffic`] only).
    pub node_name: Option<Box<str>>,
}

impl Endpoint {
    /// Ready as the API defines it: unset counts as ready.
    pub fn is_ready(&self) -> bool {
        self.ready != Some(false)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label; slices without it belong to no service.
    pub service: Option<String>,
    pub address_type: AddressType,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// What policies match on, with [`Fields::policy`]; `None` otherwise.
    pub policy: Option<Box<PodPolicy>>,
}

/// A named container port, for policies that name ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What policies match a pod on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPolicy {
    pub labels: crate::policy::Labels,
    pub node_name: Option<String>,
    /// Named container ports (unnamed ones cannot be named by a policy).
    pub ports: Vec<ContainerPort>,
    /// `spec.hostNetwork`: the pod has the node's addresses, and policies do not select it.
    pub host_network: bool,
    /// `status.phase` is Succeeded or Failed: the pod is done, and its address may already
    /// belong to another pod.
    pub finished: bool,
}

impl Pod {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

/// Any object of a kind the model knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    NetworkPolicy(crate::policy::NetworkPolicy),
    AdminNetworkPolicy(crate::policy::AdminPolicy),
    BaselineAdminNetworkPolicy(crate::policy::AdminPolicy),
    Node(crate::policy::Node),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "Namespace",
            Self::Service(_) => "Service",
            Self::EndpointSlice(_) => "EndpointSlice",
            Self::Pod(_) => "Pod",
            Self::NetworkPolicy(_) => "NetworkPolicy",
            Self::AdminNetworkPolicy(_) => "AdminNetworkPolicy",
            Self::BaselineAdminNetworkPolicy(_) => "BaselineAdminNetworkPolicy",
            Self::Node(_) => "Node",
        }
    }

    /// Kind, namespace (empty for cluster-scoped kinds) and name: what makes two objects the same.
    pub fn identity(&self) -> (&'static str, &str, &str) {
        match self {
            Self::Namespace(n) => ("Namespace", "", &n.name),
            Self::Service(s) => ("Service", &s.namespace, &s.name),
            Self::EndpointSlice(s) => ("EndpointSlice", &s.namespace, &s.name),
            Self::Pod(p) => ("Pod", &p.namespace, &p.name),
            Self::NetworkPolicy(p) => ("NetworkPolicy", &p.namespace, &p.name),
            Self::AdminNetworkPolicy(p) => ("AdminNetworkPolicy", "", &p.name),
            Self::BaselineAdminNetworkPolicy(p) => ("BaselineAdminNetworkPolicy", "", &p.name),
            Self::Node(n) => ("Node", "", &n.name),
        }
    }
}

/// Namespace used for namespaced objects that name none, as kubectl does.
pub const DEFAULT_NAMESPACE: &str = "default";

pub(crate) struct Meta {
    pub(crate) kind: &'static str,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl Meta {
    pub(crate) fn of(
        kind: &'static str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        namespaced: bool,
    ) -> Result<Self, ConvertError> {
        let namespace = if namespaced {
            meta.namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
        } else {
            String::new()
        };
        let name = meta.name.clone().unwrap_or_default();
        let this = Self {
            kind,
            namespace,
            name,
        };
        if this.name.is_empty() {
            return Err(this.err("metadata.name is missing"));
        }
        // Services and Namespaces are DNS labels in names; other kinds allow dots.
        if !is_dns_label(&this.name) && matches!(kind, "Service" | "Namespace") {
            return Err(this.err(format!(
                "metadata.name {:?} is not a DNS label (lower-case letters, digits and '-', at most 63)",
                this.name
            )));
        }
        if namespaced && !is_dns_label(&this.namespace) {
            return Err(this.err(format!(
                "metadata.namespace {:?} is not a DNS label",
                this.namespace
            )));
        }
        Ok(this)
    }

    pub(crate) fn err(&self, reason: impl Into<String>) -> ConvertError {
        let object = match (self.namespace.is_empty(), self.name.is_empty()) {
            (_, true) => "<unnamed>".to_string(),
            (true, false) => self.name.clone(),
            (false, false) => format!("{}/{}", self.namespace, self.name),
        };
        ConvertError {
            kind: self.kind,
            object,
            reason: reason.into(),
        }
    }
}

/// RFC 1123 label as Kubernetes validates names of Services and Namespaces.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn parse_ip(meta: &Meta, field: &str, s: &str) -> Result<IpAddr, ConvertError> {
    s.parse()
        .map_err(|_| meta.err(format!("{field} {s:?} is not an IP address")))
}

fn parse_port(meta: &Meta, field: &str, p: i32) -> Result<u16, ConvertError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| meta.err(format!("{field} {p} is not a port (1..65535)")))
}

impl TryFrom<&core::Namespace> for Namespace {
    type Error = ConvertError;

    fn try_from(ns: &core::Namespace) -> Result<Self, Self::Error> {
        Namespace::convert(ns, Fields::default())
    }
}

impl Namespace {
    pub fn convert(ns: &core::Namespace, fields: Fields) -> Result<Self, ConvertError> {
        let meta = Meta::of("Namespace", &ns.metadata, false)?;
        let mut labels = crate::policy::Labels::new();
        if fields.policy {
            labels = ns.metadata.labels.clone().unwrap_or_default();
            // The API server sets this label on every namespace; manifests may leave it out.
            labels
                .entry("kubernetes.io/metadata.name".into())
                .or_insert_with(|| meta.name.clone());
        }
        Ok(Self {
            name: meta.name,
            labels,
        })
    }
}

impl TryFrom<&core::Service> for Service {
    type Error = ConvertError;

    fn try_from(svc: &core::Service) -> Result<Self, Self::Error> {
        Service::convert(svc, Fields::default())
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

impl Service {
    /// Converts a Service, keeping what `fields` asks for beyond DNS.
    pub fn convert(svc: &core::Service, fields: Fields) -> Result<Self, ConvertError> {
        let meta = Meta::of("Service", &svc.metadata, true)?;
        let default_spec = core::ServiceSpec::default();
        let spec = svc.spec.as_ref().unwrap_or(&default_spec);
        let type_ = match spec.type_.as_deref() {
            None | Some("ClusterIP") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => {
                return Err(meta.err(format!("spec.type {other:?} is not a Service type")));
            }
        };

        // clusterIPs wins over clusterIP; the API server keeps clusterIPs[0] == clusterIP.
        let raw_ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
            _ => Vec::new(),
        };
        let headless = raw_ips.first().is_some_and(|ip| *ip == "None");
        let mut cluster_ips = Vec::new();
        if type_ != ServiceType::ExternalName && !headless {
            for (i, ip) in raw_ips.iter().enumerate() {
                cluster_ips.push(parse_ip(&meta, &format!("spec.clusterIPs[{i}]"), ip)?);
            }
        }

        let mut ip_families = Vec::new();
        for (i, f) in spec.ip_families.iter().flatten().enumerate() {
            ip_families.push(match f.as_str() {
                "IPv4" => IpFamily::V4,
                "IPv6" => IpFamily::V6,
                other => {
                    return Err(meta.err(format!(
                        "spec.ipFamilies[{i}] {other:?} is not IPv4 or IPv6"
                    )));
                }
            });
        }
        if ip_families.is_empty() {
            ip_families = cluster_ips.iter().map(IpFamily::of).collect();
        }

        let mut ports = Vec::with_capacity(spec.ports.as_ref().map_or(0, Vec::len));
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let protocol = Protocol::parse(p.protocol.as_deref())
                .map_err(|e| meta.err(format!("spec.ports[{i}]: {e}")))?;
            let port = parse_port(&meta, &format!("spec.ports[{i}].port"), p.port)?;
            let node_port = match p.node_port {
                Some(n)
                    if fields.traffic
                        && matches!(type_, ServiceType::NodePort | ServiceType::LoadBalancer) =>
                {
                    Some(parse_port(&meta, &format!("spec.ports[{i}].nodePort"), n)?)
                }
                _ => None,
            };
            ports.push(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol,
                port,
                node_port,
            });
        }
        let traffic = if fields.traffic && type_ != ServiceType::ExternalName {
            Some(Box::new(service_traffic(&meta, svc, spec, type_)?))
        } else {
            None
        };

        let external_name = if type_ == ServiceType::ExternalName {
            let name = spec
                .external_name
                .as_deref()
                .unwrap_or("")
                .trim_end_matches('.');
            if name.is_empty() {
                return Err(meta.err("spec.externalName is required for type ExternalName"));
            }
            Some(name.to_ascii_lowercase())
        } else {
            None
        };

        Ok(Self {
            namespace: meta.namespace,
            name: meta.name,
            type_,
            cluster_ips,
            headless,
            ip_families,
            ports,
            external_name,
            publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
            traffic,
        })
    }
}

fn service_traffic(
    meta: &Meta,
    svc: &core::Service,
    spec: &core::ServiceSpec,
    type_: ServiceType,
) -> Result<ServiceTraffic, ConvertError> {
    let mut problems = Vec::new();
    let mut address = |field: String, text: &str| {
        let ip = parse_ip_sloppy(text);
        if ip.is_none() {
            problems.push(format!("{field} {text:?} is not an IP address; skipped"));
        }
        ip
    };
    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.extend(address(format!("spec.externalIPs[{i}]"), ip));
    }
    let mut load_balancer_ips = Vec::new();
    if type_ == ServiceType::LoadBalancer {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            // An ingress with only a hostname has no address to capture.
            let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            let ip = address(format!("status.loadBalancer.ingress[{i}].ip"), ip);
            if ing.ip_mode.as_deref() != Some("Proxy") {
                load_balancer_ips.extend(ip);
            }
        }
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            Some(match t {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t @ 1..=86400) => t as u32,
                Some(t) => {
                    return Err(meta.err(format!(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds {t} is not in 1..86400"
                    )));
                }
            })
        }
        Some(other) => {
            return Err(meta.err(format!(
                "spec.sessionAffinity {other:?} is not None or ClientIP"
            )));
        }
    };
    let policy = |field: &str, value: Option<&str>| match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(meta.err(format!("spec.{field} {other:?} is not Cluster or Local"))),
    };
    Ok(ServiceTraffic {
        external_ips,
        load_balancer_ips,
        affinity_timeout,
        external_local: policy(
            "externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?,
        internal_local: policy(
            "internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?,
        source_ranges: spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        health_check_node_port: match spec.health_check_node_port {
            Some(p) => Some(parse_port(meta, "spec.healthCheckNodePort", p)?),
            None => None,
        },
        problems,
    })
}

/// An address as the API server stores it: also IPv4 with leading zeros (`010.0.0.1` is
/// 10.0.0.1, as Kubernetes' `ParseIPSloppy` reads it; older API servers accepted them).
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 4
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(parts) {
        *o = p.parse().ok()?;
    }
    Some(IpAddr::from(octets))
}

impl TryFrom<&disc::EndpointSlice> for EndpointSlice {
    type Error = ConvertError;

    fn try_from(slice: &disc::EndpointSlice) -> Result<Self, Self::Error> {
        EndpointSlice::convert(slice, Fields::default())
    }
}

impl EndpointSlice {
    /// Converts an EndpointSlice, keeping what `fields` asks for beyond DNS.
    pub fn convert(slice: &disc::EndpointSlice, fields: Fields) -> Result<Self, ConvertError> {
        let meta = Meta::of("EndpointSlice", &slice.metadata, true)?;
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::V4,
            "IPv6" => AddressType::V6,
            "FQDN" => AddressType::Fqdn,
            other => {
                return Err(meta.err(format!("addressType {other:?} is not IPv4, IPv6 or FQDN")));
            }
        };
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|s| !s.is_empty())
            .cloned();

        let mut ports = Vec::with_capacity(slice.ports.as_ref().map_or(0, Vec::len));
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let protocol = Protocol::parse(p.protocol.as_deref())
                .map_err(|e| meta.err(format!("ports[{i}]: {e}")))?;
            let port = match p.port {
                Some(n) => Some(parse_port(&meta, &format!("ports[{i}].port"), n)?),
                None => None,
            };
            ports.push(EndpointPort {
                name: p.name.clone().unwrap_or_default(),
                protocol,
                port,
            });
        }

        // Sized up front: slices are the bulk of a cluster's objects, and growth would leave
        // up to half of each list unused for the life of the object.
        let mut endpoints = Vec::with_capacity(slice.endpoints.as_ref().map_or(0, Vec::len));
        for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
            let mut addresses = Vec::with_capacity(ep.addresses.len());
            if address_type != AddressType::Fqdn {
                for (j, a) in ep.addresses.iter().enumerate() {
                    let ip = parse_ip(&meta, &format!("endpoints[{i}].addresses[{j}]"), a)?;
                    let family_ok = match address_type {
                        AddressType::V4 => ip.is_ipv4(),
                        AddressType::V6 => ip.is_ipv6(),
                        AddressType::Fqdn => true,
                    };
                    if !family_ok {
                        return Err(meta.err(format!(
                            "endpoints[{i}].addresses[{j}] {a:?} does not match addressType {}",
                            slice.address_type
                        )));
                    }
                    addresses.push(ip);
                }
            }
            let hostname = ep.hostname.clone().filter(|h| !h.is_empty());
            if let Some(h) = &hostname
                && !is_dns_label(h)
            {
                return Err(meta.err(format!("endpoints[{i}].hostname {h:?} is not a DNS label")));
            }
            let conditions = ep.conditions.as_ref();
            let target_ref = ep.target_ref.as_ref().map(|r| TargetRef {
                kind: r.kind.clone().unwrap_or_default(),
                namespace: r
                    .namespace
                    .clone()
                    .unwrap_or_else(|| meta.namespace.clone()),
                name: r.name.clone().unwrap_or_default(),
            });
            endpoints.push(Endpoint {
                addresses,
                hostname,
                ready: conditions.and_then(|c| c.ready),
                serving: conditions.and_then(|c| c.serving),
                terminating: conditions.and_then(|c| c.terminating),
                target_ref,
                node_name: ep
                    .node_name
                    .as_deref()
                    .filter(|n| fields.traffic && !n.is_empty())
                    .map(Box::from),
            });
        }

        Ok(Self {
            namespace: meta.namespace,
            name: meta.name,
            service,
            address_type,
            ports,
            endpoints,
        })
    }
}

impl TryFrom<&core::Pod> for Pod {
    type Error = ConvertError;

    fn try_from(pod: &core::Pod) -> Result<Self, Self::Error> {
        Pod::convert(pod, Fields::default())
    }
}

impl Pod {
    pub fn convert(pod: &core::Pod, fields: Fields) -> Result<Self, ConvertError> {
        let meta = Meta::of("Pod", &pod.metadata, true)?;
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        // podIPs[0] == podIP when both are set; fall back to podIP for older objects.
        match status
            .and_then(|s| s.pod_ips.as_ref())
            .filter(|v| !v.is_empty())
        {
            Some(list) => {
                for (i, p) in list.iter().enumerate() {
                    ips.push(parse_ip(&meta, &format!("status.podIPs[{i}].ip"), &p.ip)?);
                }
            }
            None => {
                if let Some(ip) = status
                    .and_then(|s| s.pod_ip.as_deref())
                    .filter(|s| !s.is_empty())
                {
                    ips.push(parse_ip(&meta, "status.podIP", ip)?);
                }
            }
        }
        let policy = if fields.policy {
            let spec = pod.spec.as_ref();
            let mut ports = Vec::new();
            let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
            for (c, container) in containers.enumerate() {
                for (i, p) in container.ports.iter().flatten().enumerate() {
                    let Some(name) = p.name.clone().filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    let field = format!("spec.containers[{c}].ports[{i}]");
                    ports.push(ContainerPort {
                        name,
                        protocol: Protocol::parse(p.protocol.as_deref())
                            .map_err(|e| meta.err(format!("{field}: {e}")))?,
                        port: parse_port(
                            &meta,
                            &format!("{field}.containerPort"),
                            p.container_port,
                        )?,
                    });
                }
            }
            Some(Box::new(PodPolicy {
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                node_name: spec
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty()),
                ports,
                host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                finished: matches!(
                    status.and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                ),
            }))
        } else {
            None
        };
        Ok(Self {
            namespace: meta.namespace,
            name: meta.name,
            ips,
            policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Result<Service, ConvertError> {
        let s: core::Service = serde_json::from_value(v).expect("valid Service JSON");
        Service::try_from(&s)
    }

    #[test]
    fn service_defaults_namespace_and_parses_dual_stack() {
        let s = svc(json!({
            "metadata": {"name": "web"},
            "spec": {"clusterIPs": ["10.0.0.1", "fd00::1"], "ipFamilies": ["IPv4", "IPv6"],
                     "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .expect("converts");
        assert_eq!(s.namespace, "default");
        assert_eq!(
            s.cluster_ips,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(s.ip_families, vec![IpFamily::V4, IpFamily::V6]);
        assert_eq!(s.ports[1].protocol, Protocol::Udp);
        assert!(!s.headless);
    }

    #[test]
    fn headless_and_external_name() {
        let h = svc(
            json!({"metadata": {"name": "h", "namespace": "ns"}, "spec": {"clusterIP": "None"}}),
        )
        .expect("converts");
        assert!(h.headless);
        assert!(h.cluster_ips.is_empty());
        let e = svc(json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "Example.COM."}}))
            .expect("converts");
        assert_eq!(e.external_name.as_deref(), Some("example.com"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = svc(json!({"metadata": {"name": "web", "namespace": "a"}, "spec": {"clusterIP": "10.0.0.300"}}))
            .expect_err("bad IP");
        assert_eq!(
            e.to_string(),
            "Service a/web: spec.clusterIPs[0] \"10.0.0.300\" is not an IP address"
        );
        let e = svc(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 70000}]}}))
            .expect_err("port");
        assert!(e.to_string().contains("spec.ports[0].port 70000"), "{e}");
        let e = svc(json!({"metadata": {}})).expect_err("no name");
        assert_eq!(e.to_string(), "Service <unnamed>: metadata.name is missing");
        let e = svc(json!({"metadata": {"name": "Web"}})).expect_err("upper case");
        assert!(e.to_string().contains("not a DNS label"), "{e}");
    }

    #[test]
    fn endpoint_slice_conditions_and_family_check() {
        let s: disc::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "hostname": "web-0"},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "terminating": true}}
            ]
        }))
        .expect("valid");
        let m = EndpointSlice::try_from(&s).expect("converts");
        assert_eq!(m.service.as_deref(), Some("web"));
        assert!(m.endpoints[0].is_ready());
        assert!(!m.endpoints[1].is_ready());
        assert_eq!(m.endpoints[1].terminating, Some(true));

        let bad: disc::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x"}, "addressType": "IPv6",
            "endpoints": [{"addresses": ["10.1.0.1"]}]
        }))
        .expect("valid");
        let e = EndpointSlice::try_from(&bad).expect_err("family mismatch");
        assert!(
            e.to_string().contains("does not match addressType IPv6"),
            "{e}"
        );
    }

    fn traffic(v: serde_json::Value) -> Result<Service, ConvertError> {
        let s: core::Service = serde_json::from_value(v).expect("valid Service JSON");
        Service::convert(&s, Fields::TRAFFIC)
    }

    #[test]
    fn traffic_fields_are_kept_only_when_asked() {
        let v = json!({
            "metadata": {"name": "lb", "namespace": "ns"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.5",
                     "ports": [{"port": 80, "nodePort": 30080}],
                     "externalIPs": ["192.0.2.7"],
                     "sessionAffinity": "ClientIP",
                     "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                     "loadBalancerSourceRanges": ["198.51.100.0/24"]},
            "status": {"loadBalancer": {"ingress": [
                {"ip": "203.0.113.1"}, {"hostname": "lb.example"},
                {"ip": "203.0.113.2", "ipMode": "Proxy"}]}}
        });
        let dns = svc(v.clone()).expect("converts");
        assert_eq!(dns.traffic, None);
        assert_eq!(dns.ports[0].node_port, None);

        let s = traffic(v).expect("converts");
        assert_eq!(s.ports[0].node_port, Some(30080));
        let t = s.traffic.expect("kept");
        assert_eq!(t.external_ips, vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);
        // The hostname-only ingress has no address; the Proxy-mode one is not captured.
        assert_eq!(
            t.load_balancer_ips,
            vec!["203.0.113.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(t.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(t.external_local && t.internal_local);
        assert_eq!(t.source_ranges, vec!["198.51.100.0/24".to_string()]);

        // A nodePort on a ClusterIP service is not one.
        let c = traffic(json!({"metadata": {"name": "c"},
            "spec": {"clusterIP": "10.0.0.6", "ports": [{"port": 80, "nodePort": 30081}]}}))
        .expect("converts");
        assert_eq!(c.ports[0].node_port, None);
    }

    #[test]
    fn bad_traffic_fields_are_named_but_never_cost_dns_the_service() {
        for (spec, field) in [
            (
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
                "timeoutSeconds 0",
            ),
            (json!({"sessionAffinity": "Sticky"}), "spec.sessionAffinity"),
            (
                json!({"externalTrafficPolicy": "Nearest"}),
                "spec.externalTrafficPolicy",
            ),
            (
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 0}]}),
                "spec.ports[0].nodePort",
            ),
        ] {
            let v = json!({"metadata": {"name": "s"}, "spec": spec});
            let e = traffic(v.clone()).expect_err("bad field");
            assert!(e.to_string().contains(field), "{e} should name {field}");
            svc(v).expect("DNS does not read the field");
        }
    }

    #[test]
    fn a_bad_address_is_skipped_and_named_keeping_the_service() {
        let s = traffic(json!({"metadata": {"name": "s"},
            "spec": {"type": "LoadBalancer", "externalIPs": ["nope", "010.000.0.1", "192.0.2.1"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3"}, {"ip": "203.0.113.1"}]}}}))
        .expect("converts");
        let t = s.traffic.expect("kept");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.external_ips, [ip("10.0.0.1"), ip("192.0.2.1")]);
        assert_eq!(t.load_balancer_ips, [ip("203.0.113.1")]);
        assert_eq!(t.problems.len(), 2, "{:?}", t.problems);
        assert!(t.problems[0].starts_with("spec.externalIPs[0] \"nope\""));
        assert!(t.problems[1].starts_with("status.loadBalancer.ingress[0].ip \"1.2.3\""));
        assert_eq!(parse_ip_sloppy("256.0.0.1"), None);
        assert_eq!(parse_ip_sloppy("1.2.3.4.5"), None);
    }

    #[test]
    fn endpoint_node_name_is_kept_only_when_asked() {
        let s: disc::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.1"], "nodeName": "node-a"}]
        }))
        .expect("valid");
        assert_eq!(
            EndpointSlice::try_from(&s).expect("converts").endpoints[0].node_name,
            None
        );
        assert_eq!(
            EndpointSlice::convert(&s, Fields::TRAFFIC)
                .expect("converts")
                .endpoints[0]
                .node_name
                .as_deref(),
            Some("node-a")
        );
    }

    #[test]
    fn pod_ips_fall_back_to_pod_ip() {
        let p: core::Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"}, "status": {"podIP": "10.2.0.9"}
        }))
        .expect("valid");
        assert_eq!(
            Pod::try_from(&p).expect("converts").ips,
            vec!["10.2.0.9".parse::<IpAddr>().unwrap()]
        );
    }
}
