//! The policy objects the node daemons read: label selectors, NetworkPolicy
//! (networking.k8s.io/v1), AdminNetworkPolicy and BaselineAdminNetworkPolicy
//! (policy.networking.k8s.io/v1alpha1), and Nodes. Stripped at ingestion, like the rest of the
//! model: every field is checked here, and errors name the field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{ConvertError, ObjectKey, Protocol};

/// An object's labels.
pub type Labels = BTreeMap<String, String>;

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A label selector: every `matchLabels` pair and every requirement must hold. The empty
/// selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.requirements.is_empty()
    }

    /// Converts an API selector; `field` names it in errors.
    pub fn convert(s: &meta::LabelSelector, field: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for (i, e) in s.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            let at = format!("{field}.matchExpressions[{i}]");
            requirements.push(match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!("{at}: operator {} needs values", e.operator));
                }
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!("{at}: operator {} takes no values", e.operator));
                }
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => {
                    return Err(format!(
                        "{at}.operator {other:?} is not In, NotIn, Exists or DoesNotExist"
                    ));
                }
            });
        }
        Ok(LabelSelector {
            match_labels: s.match_labels.clone().unwrap_or_default(),
            requirements,
        })
    }
}

/// A port of a policy rule: a number with an optional range end, or a name resolved against the
/// destination pod's container ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPort {
    /// `port`..=`end` (a single port when they are equal).
    Range {
        protocol: Protocol,
        port: u16,
        end: u16,
    },
    /// Every port of the protocol.
    All(Protocol),
    /// A container port of the destination pod, by name; with a protocol (NetworkPolicy), the
    /// container port must have it too; without (AdminNetworkPolicy), its own protocol counts.
    Named {
        protocol: Option<Protocol>,
        name: String,
    },
}

/// A NetworkPolicy peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPolicyPeer {
    /// Pods: `pod_selector` in the policy's namespace when `namespace_selector` is `None`, in
    /// the namespaces it selects otherwise (`None` pod selector: every pod there).
    Pods {
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
    },
    /// Addresses in `cidr` but in none of `except`.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

/// One ingress or egress rule: it matches when a peer matches (no peers: any peer) and a port
/// matches (no ports: any port).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkPolicyRule {
    pub peers: Vec<NetworkPolicyPeer>,
    pub ports: Vec<PolicyPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// `policyTypes` contains Ingress (defaulted: always).
    pub ingress_isolation: bool,
    /// `policyTypes` contains Egress (defaulted: when there are egress rules).
    pub egress_isolation: bool,
    pub ingress: Vec<NetworkPolicyRule>,
    pub egress: Vec<NetworkPolicyRule>,
}

impl NetworkPolicy {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

fn protocol(p: Option<&str>, field: &str) -> Result<Protocol, String> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!("{field} {other:?} is not TCP, UDP or SCTP")),
    }
}

fn port_number(n: i32, field: &str) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{field} {n} is not a port (1..65535)"))
}

/// A CIDR as the API accepts it: host bits are allowed and cleared (`10.0.0.1/8` is
/// 10.0.0.0/8), as the API server's legacy `ParseCIDRSloppy` reads ipBlocks.
pub fn parse_cidr(text: &str, field: &str) -> Result<IpNet, String> {
    let net: IpNet = text
        .trim()
        .parse()
        .map_err(|_| format!("{field} {text:?} is not a CIDR"))?;
    Ok(net.trunc())
}

fn np_port(p: &net::NetworkPolicyPort, field: &str) -> Result<PolicyPort, String> {
    let protocol = protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?;
    Ok(match &p.port {
        None => PolicyPort::All(protocol),
        Some(IntOrString::Int(n)) => {
            let port = port_number(*n, &format!("{field}.port"))?;
            let end = match p.end_port {
                Some(e) => port_number(e, &format!("{field}.endPort"))?,
                None => port,
            };
            if end < port {
                return Err(format!("{field}.endPort {end} is below port {port}"));
            }
            PolicyPort::Range {
                protocol,
                port,
                end,
            }
        }
        Some(IntOrString::String(name)) => {
            if p.end_port.is_some() {
                return Err(format!("{field}.endPort needs a numeric port"));
            }
            // A number written as a string is a number (the API server's IntOrString rule).
            match name.parse::<i32>() {
                Ok(n) => {
                    let port = port_number(n, &format!("{field}.port"))?;
                    PolicyPort::Range {
                        protocol,
                        port,
                        end: port,
                    }
                }
                Err(_) => PolicyPort::Named {
                    protocol: Some(protocol),
                    name: name.clone(),
                },
            }
        }
    })
}

fn np_peer(p: &net::NetworkPolicyPeer, field: &str) -> Result<NetworkPolicyPeer, String> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (Some(block), None, None) => {
            let cidr = parse_cidr(&block.cidr, &format!("{field}.ipBlock.cidr"))?;
            let mut except = Vec::new();
            for (i, e) in block.except.iter().flatten().enumerate() {
                let net = parse_cidr(e, &format!("{field}.ipBlock.except[{i}]"))?;
                if !cidr.contains(&net) {
                    return Err(format!(
                        "{field}.ipBlock.except[{i}] {e:?} is not inside {}",
                        block.cidr
                    ));
                }
                except.push(net);
            }
            Ok(NetworkPolicyPeer::IpBlock { cidr, except })
        }
        (Some(_), _, _) => Err(format!(
            "{field}: ipBlock cannot be combined with namespaceSelector or podSelector"
        )),
        (None, None, None) => Err(format!(
            "{field}: a peer needs podSelector, namespaceSelector or ipBlock"
        )),
        (None, ns, pods) => Ok(NetworkPolicyPeer::Pods {
            namespace_selector: ns
                .as_ref()
                .map(|s| LabelSelector::convert(s, &format!("{field}.namespaceSelector")))
                .transpose()?,
            pod_selector: pods
                .as_ref()
                .map(|s| LabelSelector::convert(s, &format!("{field}.podSelector")))
                .transpose()?,
        }),
    }
}

fn np_rule(
    peers: Option<&Vec<net::NetworkPolicyPeer>>,
    ports: Option<&Vec<net::NetworkPolicyPort>>,
    field: &str,
    peer_field: &str,
) -> Result<NetworkPolicyRule, String> {
    let mut rule = NetworkPolicyRule::default();
    for (i, p) in peers.into_iter().flatten().enumerate() {
        rule.peers
            .push(np_peer(p, &format!("{field}.{peer_field}[{i}]"))?);
    }
    for (i, p) in ports.into_iter().flatten().enumerate() {
        rule.ports.push(np_port(p, &format!("{field}.ports[{i}]"))?);
    }
    Ok(rule)
}

impl NetworkPolicy {
    pub fn convert(np: &net::NetworkPolicy) -> Result<NetworkPolicy, ConvertError> {
        let meta = crate::model::Meta::of("NetworkPolicy", &np.metadata, true)?;
        let err = |reason: String| meta.err(reason);
        let default_spec = net::NetworkPolicySpec::default();
        let spec = np.spec.as_ref().unwrap_or(&default_spec);
        let pod_selector = spec
            .pod_selector
            .as_ref()
            .map(|s| LabelSelector::convert(s, "spec.podSelector"))
            .transpose()
            .map_err(err)?
            .unwrap_or_default();
        let mut ingress = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            ingress.push(
                np_rule(
                    r.from.as_ref(),
                    r.ports.as_ref(),
                    &format!("spec.ingress[{i}]"),
                    "from",
                )
                .map_err(err)?,
            );
        }
        let mut egress = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            egress.push(
                np_rule(
                    r.to.as_ref(),
                    r.ports.as_ref(),
                    &format!("spec.egress[{i}]"),
                    "to",
                )
                .map_err(err)?,
            );
        }
        let (ingress_isolation, egress_isolation) = match &spec.policy_types {
            Some(types) if !types.is_empty() => {
                let (mut i, mut e) = (false, false);
                for (n, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => i = true,
                        "Egress" => e = true,
                        other => {
                            return Err(meta.err(format!(
                                "spec.policyTypes[{n}] {other:?} is not Ingress or Egress"
                            )));
                        }
                    }
                }
                (i, e)
            }
            _ => (true, !egress.is_empty()),
        };
        Ok(NetworkPolicy {
            namespace: meta.namespace,
            name: meta.name,
            pod_selector,
            ingress_isolation,
            egress_isolation,
            ingress,
            egress,
        })
    }
}

/// A Node, for AdminNetworkPolicy `nodes` peers: its labels and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// `status.addresses` of type InternalIP and ExternalIP.
    pub ips: Vec<IpAddr>,
}

impl Node {
    pub fn convert(node: &core::Node) -> Result<Node, ConvertError> {
        let meta = crate::model::Meta::of("Node", &node.metadata, false)?;
        let mut ips = Vec::new();
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, a) in addresses.into_iter().flatten().enumerate() {
            if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                let ip = a.address.parse().map_err(|_| {
                    meta.err(format!(
                        "status.addresses[{i}].address {:?} is not an IP address",
                        a.address
                    ))
                })?;
                ips.push(ip);
            }
        }
        Ok(Node {
            name: meta.name,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            ips,
        })
    }
}

/// What an admin rule does with the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Allowed, whatever NetworkPolicy says.
    Allow,
    /// Denied, whatever NetworkPolicy says.
    Deny,
    /// Decided by NetworkPolicy, then the baseline (AdminNetworkPolicy only).
    Pass,
}

/// The pods an admin policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminSubject {
    /// Every pod in the selected namespaces.
    Namespaces(LabelSelector),
    /// The selected pods in the selected namespaces.
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
}

/// An admin rule peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminPeer {
    /// Every pod in the selected namespaces.
    Namespaces(LabelSelector),
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
    /// The addresses of the selected Nodes (egress only).
    Nodes(LabelSelector),
    /// Addresses in these CIDRs, pods' included (egress only).
    Networks(Vec<IpNet>),
    /// A peer this implementation does not support (`domainNames`, or a field from a newer
    /// API): fails closed, matching nothing in an Allow rule and everything in a Deny or Pass
    /// rule, which then denies.
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRule {
    pub name: String,
    pub action: AdminAction,
    pub peers: Vec<AdminPeer>,
    /// No ports: every port.
    pub ports: Vec<PolicyPort>,
}

/// An AdminNetworkPolicy (with a priority) or the BaselineAdminNetworkPolicy `default`
/// (without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPolicy {
    pub name: String,
    /// 0..=1000, lower first; `None` for the baseline.
    pub priority: Option<u32>,
    pub subject: AdminSubject,
    pub ingress: Vec<AdminRule>,
    pub egress: Vec<AdminRule>,
    /// Peers that could not be read and fail closed, each naming its field (the API server
    /// does not validate the selectors and CIDRs inside these CRDs).
    pub problems: Vec<String>,
}

/// The v1alpha1 wire format (sigs.k8s.io/network-policy-api v0.1.x), which k8s-openapi does not
/// have.
mod wire {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Policy {
        #[serde(default)]
        pub metadata: meta::ObjectMeta,
        pub spec: Option<Spec>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Spec {
        pub priority: Option<i64>,
        pub subject: Option<Subject>,
        pub ingress: Option<Vec<Rule>>,
        pub egress: Option<Vec<Rule>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Subject {
        pub namespaces: Option<meta::LabelSelector>,
        pub pods: Option<Pods>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Pods {
        pub namespace_selector: Option<meta::LabelSelector>,
        pub pod_selector: Option<meta::LabelSelector>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Rule {
        pub name: Option<String>,
        pub action: Option<String>,
        pub from: Option<Vec<Peer>>,
        pub to: Option<Vec<Peer>>,
        pub ports: Option<Vec<Port>>,
    }

    /// A label selector that refuses keys it does not know: a peer of an older API version
    /// (`namespaces: {namespaceSelector: …}`) must not read as the empty selector, which
    /// selects everything.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct StrictSelector {
        pub match_labels: Option<std::collections::BTreeMap<String, String>>,
        pub match_expressions: Option<Vec<meta::LabelSelectorRequirement>>,
    }

    impl StrictSelector {
        pub fn into_api(self) -> meta::LabelSelector {
            meta::LabelSelector {
                match_labels: self.match_labels,
                match_expressions: self.match_expressions,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct StrictPods {
        pub namespace_selector: Option<StrictSelector>,
        pub pod_selector: Option<StrictSelector>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Peer {
        pub namespaces: Option<serde_json::Value>,
        pub pods: Option<serde_json::Value>,
        pub nodes: Option<serde_json::Value>,
        pub networks: Option<Vec<String>>,
        /// Everything else (`domainNames`, newer fields): unsupported, fails closed.
        #[serde(flatten)]
        pub other: std::collections::BTreeMap<String, serde_json::Value>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Port {
        pub port_number: Option<PortNumber>,
        pub named_port: Option<String>,
        pub port_range: Option<PortRange>,
    }

    #[derive(Deserialize)]
    pub struct PortNumber {
        pub protocol: Option<String>,
        pub port: i32,
    }

    #[derive(Deserialize)]
    pub struct PortRange {
        pub protocol: Option<String>,
        pub start: i32,
        pub end: i32,
    }
}

fn required_selector(
    s: Option<&meta::LabelSelector>,
    field: &str,
) -> Result<LabelSelector, String> {
    LabelSelector::convert(s.ok_or_else(|| format!("{field} is required"))?, field)
}

fn admin_pods(p: &wire::Pods, field: &str) -> Result<(LabelSelector, LabelSelector), String> {
    Ok((
        required_selector(
            p.namespace_selector.as_ref(),
            &format!("{field}.namespaceSelector"),
        )?,
        required_selector(p.pod_selector.as_ref(), &format!("{field}.podSelector"))?,
    ))
}

fn admin_peer(p: &wire::Peer, field: &str, egress: bool) -> Result<AdminPeer, String> {
    let mut set: Vec<&str> = Vec::new();
    if p.namespaces.is_some() {
        set.push("namespaces");
    }
    if p.pods.is_some() {
        set.push("pods");
    }
    if p.nodes.is_some() {
        set.push("nodes");
    }
    if p.networks.is_some() {
        set.push("networks");
    }
    set.extend(p.other.keys().map(String::as_str));
    if set.len() != 1 {
        return Err(format!(
            "{field}: a peer needs exactly one of namespaces, pods, nodes or networks (has {})",
            if set.is_empty() {
                "none".to_string()
            } else {
                set.join(", ")
            }
        ));
    }
    if !egress && (p.nodes.is_some() || p.networks.is_some()) {
        return Err(format!("{field}: {} peers are for egress only", set[0]));
    }
    // Past the structure (which the CRD validates), a peer that cannot be read fails closed
    // rather than costing the whole policy: the API server does not check what is inside.
    let peer = || -> Result<AdminPeer, String> {
        let selector = |v: &serde_json::Value, at: &str| -> Result<LabelSelector, String> {
            let strict: wire::StrictSelector =
                serde_json::from_value(v.clone()).map_err(|e| format!("{at}: {e}"))?;
            LabelSelector::convert(&strict.into_api(), at)
        };
        Ok(if let Some(v) = &p.namespaces {
            AdminPeer::Namespaces(selector(v, &format!("{field}.namespaces"))?)
        } else if let Some(v) = &p.pods {
            let at = format!("{field}.pods");
            let pods: wire::StrictPods =
                serde_json::from_value(v.clone()).map_err(|e| format!("{at}: {e}"))?;
            let ns = pods
                .namespace_selector
                .ok_or_else(|| format!("{at}.namespaceSelector is required"))?;
            let ps = pods
                .pod_selector
                .ok_or_else(|| format!("{at}.podSelector is required"))?;
            AdminPeer::Pods {
                namespaces: LabelSelector::convert(
                    &ns.into_api(),
                    &format!("{at}.namespaceSelector"),
                )?,
                pods: LabelSelector::convert(&ps.into_api(), &format!("{at}.podSelector"))?,
            }
        } else if let Some(v) = &p.nodes {
            AdminPeer::Nodes(selector(v, &format!("{field}.nodes"))?)
        } else if let Some(nets) = &p.networks {
            if nets.is_empty() {
                return Err(format!("{field}.networks needs at least one CIDR"));
            }
            let mut out = Vec::new();
            for (i, n) in nets.iter().enumerate() {
                out.push(parse_cidr(n, &format!("{field}.networks[{i}]"))?);
            }
            AdminPeer::Networks(out)
        } else {
            AdminPeer::Unsupported(format!("{field}: {} is not supported", set[0]))
        })
    };
    Ok(peer().unwrap_or_else(AdminPeer::Unsupported))
}

fn admin_port(p: &wire::Port, field: &str) -> Result<PolicyPort, String> {
    match (&p.port_number, &p.named_port, &p.port_range) {
        (Some(n), None, None) => {
            let protocol = protocol(
                n.protocol.as_deref(),
                &format!("{field}.portNumber.protocol"),
            )?;
            let port = port_number(n.port, &format!("{field}.portNumber.port"))?;
            Ok(PolicyPort::Range {
                protocol,
                port,
                end: port,
            })
        }
        (None, Some(name), None) => Ok(PolicyPort::Named {
            // A named port carries the protocol of the container port it names.
            protocol: None,
            name: name.clone(),
        }),
        (None, None, Some(r)) => {
            let protocol = protocol(
                r.protocol.as_deref(),
                &format!("{field}.portRange.protocol"),
            )?;
            let port = port_number(r.start, &format!("{field}.portRange.start"))?;
            let end = port_number(r.end, &format!("{field}.portRange.end"))?;
            if end < port {
                return Err(format!(
                    "{field}.portRange: end {end} is below start {port}"
                ));
            }
            Ok(PolicyPort::Range {
                protocol,
                port,
                end,
            })
        }
        _ => Err(format!(
            "{field}: needs exactly one of portNumber, namedPort or portRange"
        )),
    }
}

impl AdminPolicy {
    /// Converts an AdminNetworkPolicy (`baseline` false) or a BaselineAdminNetworkPolicy
    /// from its JSON.
    pub fn convert(value: serde_json::Value, baseline: bool) -> Result<AdminPolicy, ConvertError> {
        let kind = if baseline {
            "BaselineAdminNetworkPolicy"
        } else {
            "AdminNetworkPolicy"
        };
        let wire: wire::Policy = serde_json::from_value(value).map_err(|e| ConvertError {
            kind,
            object: "<unparsed>".into(),
            reason: e.to_string(),
        })?;
        let meta = crate::model::Meta::of(kind, &wire.metadata, false)?;
        let err = |reason: String| meta.err(reason);
        if baseline && meta.name != "default" {
            return Err(err(format!(
                "metadata.name {:?}: the only BaselineAdminNetworkPolicy is named \"default\"",
                meta.name
            )));
        }
        let spec = wire.spec.ok_or_else(|| err("spec is required".into()))?;
        let priority = match (baseline, spec.priority) {
            (true, None) => None,
            (true, Some(_)) => return Err(err("spec.priority: a baseline has none".into())),
            (false, Some(p @ 0..=1000)) => Some(p as u32),
            (false, Some(p)) => return Err(err(format!("spec.priority {p} is not in 0..1000"))),
            (false, None) => return Err(err("spec.priority is required".into())),
        };
        let subject = spec
            .subject
            .as_ref()
            .ok_or_else(|| "spec.subject is required".to_string())
            .and_then(|s| match (&s.namespaces, &s.pods) {
                (Some(ns), None) => Ok(AdminSubject::Namespaces(LabelSelector::convert(
                    ns,
                    "spec.subject.namespaces",
                )?)),
                (None, Some(p)) => {
                    let (namespaces, pods) = admin_pods(p, "spec.subject.pods")?;
                    Ok(AdminSubject::Pods { namespaces, pods })
                }
                _ => Err("spec.subject needs exactly one of namespaces or pods".into()),
            })
            .map_err(err)?;
        let mut problems = Vec::new();
        let mut rules =
            |rules: &Option<Vec<wire::Rule>>, dir: &str| -> Result<Vec<AdminRule>, String> {
                let egress = dir == "egress";
                let mut out = Vec::new();
                for (i, r) in rules.iter().flatten().enumerate() {
                    let field = format!("spec.{dir}[{i}]");
                    let action = match r.action.as_deref() {
                        Some("Allow") => AdminAction::Allow,
                        Some("Deny") => AdminAction::Deny,
                        Some("Pass") if !baseline => AdminAction::Pass,
                        Some(other) => {
                            return Err(format!(
                                "{field}.action {other:?} is not {}",
                                if baseline {
                                    "Allow or Deny"
                                } else {
                                    "Allow, Deny or Pass"
                                }
                            ));
                        }
                        None => return Err(format!("{field}.action is required")),
                    };
                    let (peers, peer_field) = if egress {
                        (r.to.as_ref(), "to")
                    } else {
                        (r.from.as_ref(), "from")
                    };
                    let peers = peers
                        .filter(|p| !p.is_empty())
                        .ok_or_else(|| format!("{field}.{peer_field} needs at least one peer"))?;
                    let mut rule = AdminRule {
                        name: r.name.clone().unwrap_or_default(),
                        action,
                        peers: Vec::new(),
                        ports: Vec::new(),
                    };
                    for (j, p) in peers.iter().enumerate() {
                        let peer = admin_peer(p, &format!("{field}.{peer_field}[{j}]"), egress)?;
                        if let AdminPeer::Unsupported(why) = &peer {
                            problems.push(format!("{why}; the peer fails closed"));
                        }
                        rule.peers.push(peer);
                    }
                    for (j, p) in r.ports.iter().flatten().enumerate() {
                        rule.ports
                            .push(admin_port(p, &format!("{field}.ports[{j}]"))?);
                    }
                    out.push(rule);
                }
                Ok(out)
            };
        let ingress = rules(&spec.ingress, "ingress").map_err(err)?;
        let egress = rules(&spec.egress, "egress").map_err(err)?;
        Ok(AdminPolicy {
            name: meta.name.clone(),
            priority,
            subject,
            ingress,
            egress,
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::model::{Fields, Object};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(v: serde_json::Value) -> Result<LabelSelector, String> {
        LabelSelector::convert(&serde_json::from_value(v).expect("selector JSON"), "sel")
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let s = selector(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "canary", "operator": "DoesNotExist"},
                                 {"key": "zone", "operator": "NotIn", "values": ["x"]}]}))
        .expect("valid");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "b"), ("zone", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])), "In needs the key");
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("zone", "x")])));
        assert!(
            LabelSelector::default().matches(&Labels::new()),
            "empty selects all"
        );
        let e = selector(json!({"matchExpressions": [{"key": "k", "operator": "Has"}]}))
            .expect_err("bad operator");
        assert!(
            e.contains("sel.matchExpressions[0].operator \"Has\""),
            "{e}"
        );
        let e = selector(json!({"matchExpressions": [{"key": "k", "operator": "In"}]}))
            .expect_err("no values");
        assert!(e.contains("needs values"), "{e}");
    }

    fn np(v: serde_json::Value) -> Result<NetworkPolicy, ConvertError> {
        NetworkPolicy::convert(&serde_json::from_value(v).expect("NetworkPolicy JSON"))
    }

    #[test]
    fn network_policy_defaults_and_ports() {
        let p = np(json!({"metadata": {"name": "p", "namespace": "a"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [
                {"port": 80}, {"port": 8000, "endPort": 8080, "protocol": "UDP"},
                {"port": "http"}, {"port": "53", "protocol": "SCTP"}, {"protocol": "UDP"}]}]}}))
        .expect("converts");
        assert!(p.ingress_isolation && !p.egress_isolation);
        assert_eq!(
            p.ingress[0].ports,
            [
                PolicyPort::Range {
                    protocol: Protocol::Tcp,
                    port: 80,
                    end: 80
                },
                PolicyPort::Range {
                    protocol: Protocol::Udp,
                    port: 8000,
                    end: 8080
                },
                PolicyPort::Named {
                    protocol: Some(Protocol::Tcp),
                    name: "http".into()
                },
                PolicyPort::Range {
                    protocol: Protocol::Sctp,
                    port: 53,
                    end: 53
                },
                PolicyPort::All(Protocol::Udp),
            ]
        );
        assert!(p.ingress[0].peers.is_empty(), "no from: every peer");
        // Egress rules make the policy isolate egress; an empty egress list does not.
        let e = np(json!({"metadata": {"name": "p"}, "spec": {"egress": [{}]}})).expect("ok");
        assert!(e.ingress_isolation && e.egress_isolation);
        let e = np(json!({"metadata": {"name": "p"}, "spec": {"egress": []}})).expect("ok");
        assert!(!e.egress_isolation);
        let e = np(json!({"metadata": {"name": "p"}, "spec": {"policyTypes": ["Egress"]}}))
            .expect("ok");
        assert!(!e.ingress_isolation && e.egress_isolation);
    }

    #[test]
    fn network_policy_errors_name_the_field() {
        for (spec, field) in [
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "spec.ingress[0].from[0].ipBlock.except[0] \"11.0.0.0/16\" is not inside",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.egress[0].to[0]: ipBlock cannot be combined",
            ),
            (
                json!({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "spec.egress[0].ports[0].endPort 80 is below port 90",
            ),
            (
                json!({"policyTypes": ["Both"]}),
                "spec.policyTypes[0] \"Both\"",
            ),
        ] {
            let e = np(json!({"metadata": {"name": "p", "namespace": "a"}, "spec": spec}))
                .expect_err("invalid");
            assert!(e.to_string().contains(field), "{e} should say {field}");
        }
    }

    fn anp(v: serde_json::Value, baseline: bool) -> Result<AdminPolicy, ConvertError> {
        AdminPolicy::convert(v, baseline)
    }

    #[test]
    fn admin_policies_convert_with_their_rules() {
        let p = anp(
            json!({"metadata": {"name": "cluster-control"},
                "spec": {"priority": 10, "subject": {"namespaces": {}},
                    "ingress": [{"name": "pass-monitoring", "action": "Pass",
                                 "from": [{"namespaces": {"matchLabels": {"team": "mon"}}}]}],
                    "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}],
                                "ports": [{"portRange": {"start": 1, "end": 1024}}, {"namedPort": "dns"}]},
                               {"action": "Allow", "to": [{"domainNames": ["*.example.com"]}]}]}}),
            false,
        )
        .expect("converts");
        assert_eq!(p.priority, Some(10));
        assert_eq!(p.ingress[0].action, AdminAction::Pass);
        assert_eq!(
            p.egress[0].ports[0],
            PolicyPort::Range {
                protocol: Protocol::Tcp,
                port: 1,
                end: 1024
            }
        );
        assert_eq!(
            p.egress[1].peers,
            [AdminPeer::Unsupported(
                "spec.egress[1].to[0]: domainNames is not supported".into()
            )],
            "fails closed"
        );
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        // An older API's peer shape, and a selector the API server would have refused, fail
        // closed instead of selecting everything or losing the policy.
        let old = anp(
            json!({"metadata": {"name": "old"}, "spec": {"priority": 2, "subject": {"namespaces": {}},
                "ingress": [{"action": "Allow", "from": [{"namespaces": {"namespaceSelector": {"matchLabels": {"team": "mon"}}}}]},
                            {"action": "Deny", "from": [{"namespaces": {"matchExpressions": [{"key": "k", "operator": "In", "values": []}]}}]}]}}),
            false,
        )
        .expect("converts");
        assert!(matches!(old.ingress[0].peers[0], AdminPeer::Unsupported(_)));
        assert!(matches!(old.ingress[1].peers[0], AdminPeer::Unsupported(_)));
        assert_eq!(old.problems.len(), 2, "{:?}", old.problems);
        let b = anp(
            json!({"metadata": {"name": "default"}, "spec": {"subject": {"pods": {
                "namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}},
                "ingress": [{"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]}]}}),
            true,
        )
        .expect("converts");
        assert_eq!(b.priority, None);
    }

    #[test]
    fn admin_policy_errors_name_the_field() {
        let base = |spec: serde_json::Value| json!({"metadata": {"name": "x"}, "spec": spec});
        for (v, baseline, field) in [
            (
                base(json!({"priority": 1001, "subject": {"namespaces": {}}})),
                false,
                "spec.priority 1001",
            ),
            (
                base(json!({"subject": {"namespaces": {}}})),
                false,
                "spec.priority is required",
            ),
            (
                json!({"metadata": {"name": "other"}, "spec": {"subject": {"namespaces": {}}}}),
                true,
                "named \"default\"",
            ),
            (
                json!({"metadata": {"name": "default"}, "spec": {"subject": {"namespaces": {}},
                    "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}}),
                true,
                "spec.ingress[0].action \"Pass\" is not Allow or Deny",
            ),
            (
                base(json!({"priority": 1, "subject": {"namespaces": {}},
                    "ingress": [{"action": "Allow", "from": [{"networks": ["10.0.0.0/8"]}]}]})),
                false,
                "spec.ingress[0].from[0]: networks peers are for egress only",
            ),
            (
                base(json!({"priority": 1, "subject": {"namespaces": {}},
                    "egress": [{"action": "Allow", "to": []}]})),
                false,
                "spec.egress[0].to needs at least one peer",
            ),
            (
                base(json!({"priority": 1, "subject": {"pods": {"podSelector": {}}}})),
                false,
                "spec.subject.pods.namespaceSelector is required",
            ),
        ] {
            let e = anp(v, baseline).expect_err("invalid");
            assert!(e.to_string().contains(field), "{e} should say {field}");
        }
    }

    #[test]
    fn policy_kinds_are_read_only_when_asked() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: a}
spec: {podSelector: {}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: first}
spec: {priority: 1, subject: {namespaces: {}}}
---
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: x}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a.example, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}, {type: Hostname, address: node-a}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec:
  nodeName: node-a.example
  containers: [{name: c, ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]}]
status: {podIP: 10.244.0.5}
"#;
        let dns = crate::manifests::parse_manifest(Path::new("x.yaml"), text);
        assert!(dns.errors.is_empty(), "{:?}", dns.errors);
        let kinds: Vec<&str> = dns.objects.iter().map(Object::kind).collect();
        assert_eq!(kinds, ["Namespace", "Pod"], "DNS skips the policy kinds");
        let Object::Namespace(ns) = &dns.objects[0] else {
            panic!("namespace")
        };
        assert!(ns.labels.is_empty(), "DNS keeps no labels");

        let p = crate::manifests::parse_manifest_with(Path::new("x.yaml"), text, Fields::POLICY);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let kinds: Vec<&str> = p.objects.iter().map(Object::kind).collect();
        assert_eq!(
            kinds,
            [
                "NetworkPolicy",
                "AdminNetworkPolicy",
                "Namespace",
                "Node",
                "Pod"
            ]
        );
        let Object::Namespace(ns) = &p.objects[2] else {
            panic!("namespace")
        };
        assert_eq!(
            ns.labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("a")
        );
        let Object::Node(node) = &p.objects[3] else {
            panic!("node")
        };
        assert_eq!(node.ips, ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        let Object::Pod(pod) = &p.objects[4] else {
            panic!("pod")
        };
        let policy = pod.policy.as_deref().expect("policy fields");
        assert_eq!(policy.node_name.as_deref(), Some("node-a.example"));
        assert_eq!(policy.ports.len(), 1, "only named ports");
        assert_eq!(policy.labels.get("app").map(String::as_str), Some("web"));
    }
}
