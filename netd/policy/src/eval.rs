//! What the policies say about one connection: the reference semantics that the ruleset is
//! checked against.
//!
//! A connection from `src` to `dst` is allowed when the source's egress allows it (if the
//! source is a pod) and the destination's ingress allows it (if the destination is a pod).
//! Each direction is decided in tiers:
//!
//! ```text
//!  AdminNetworkPolicies, lowest priority number first (then by name), rules in order:
//!      Allow ─▶ allowed    Deny ─▶ denied    Pass ─▶ skip the remaining admin rules
//!  NetworkPolicies of the pod's namespace that select it for this direction:
//!      none ─▶ next tier   some ─▶ allowed when a rule of any of them matches, else denied
//!  BaselineAdminNetworkPolicy `default`, rules in order: Allow / Deny
//!  allowed
//! ```
//!
//! Replies of an allowed connection are always allowed (the ruleset is stateful), so only the
//! first packet's direction is evaluated. A pod's own node always reaches it (kubelet probes;
//! the NetworkPolicy documentation says so). Pods that have finished (Succeeded, Failed) are
//! not pods any more: their address may already be another pod's. Host-network pods have the node's addresses: they are
//! neither selected nor matched as pods, only as addresses (ipBlock, networks, nodes).

use std::collections::BTreeMap;
use std::net::IpAddr;

use discovery::ClusterSnapshot;
use discovery::model::{ContainerPort, Pod, Protocol};
use discovery::policy::{
    AdminAction, AdminPeer, AdminPolicy, AdminRule, AdminSubject, Labels, NetworkPolicy,
    NetworkPolicyPeer, PolicyPort,
};

/// One new connection: its first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// A verdict with what decided it, for tests and for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// One line per direction that was evaluated, naming the policy and rule that decided.
    pub why: Vec<String>,
}

/// A pod as policies see it.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub labels: &'a Labels,
    pub namespace_labels: &'a Labels,
    pub ports: &'a [ContainerPort],
}

static NO_LABELS: Labels = Labels::new();

/// The cluster as the policies see it, indexed for evaluation.
#[derive(Debug)]
pub struct World<'a> {
    pods_by_ip: BTreeMap<IpAddr, PodView<'a>>,
    /// Every pod the policies can select (not host-network).
    pub(crate) pods: Vec<PodView<'a>>,
    pub(crate) network_policies: Vec<&'a NetworkPolicy>,
    /// Sorted by priority, then name.
    pub(crate) admin: Vec<&'a AdminPolicy>,
    pub(crate) baseline: Option<&'a AdminPolicy>,
    pub(crate) node_ips: Vec<(&'a Labels, &'a [IpAddr])>,
    nodes_by_name: BTreeMap<&'a str, &'a [IpAddr]>,
}

/// A direction of a pod's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

/// The other end of a connection, from one pod's point of view.
#[derive(Debug, Clone, Copy)]
struct Peer<'a> {
    ip: IpAddr,
    pod: Option<PodView<'a>>,
}

impl<'a> World<'a> {
    /// Indexes a snapshot read with [`discovery::Fields::POLICY`].
    pub fn new(snap: &'a ClusterSnapshot) -> World<'a> {
        let objects = &snap.objects;
        let mut pods = Vec::new();
        let mut pods_by_ip = BTreeMap::new();
        for pod in objects.pods.values() {
            let Some(policy) = pod.policy.as_deref() else {
                continue;
            };
            if policy.host_network || policy.finished {
                continue;
            }
            let view = PodView {
                pod,
                labels: &policy.labels,
                namespace_labels: objects
                    .policy
                    .namespace_labels
                    .get(&pod.namespace)
                    .map_or(&NO_LABELS, |l| l.as_ref()),
                ports: &policy.ports,
            };
            for ip in &pod.ips {
                pods_by_ip.insert(*ip, view);
            }
            pods.push(view);
        }
        let mut admin: Vec<&AdminPolicy> = objects.policy.admin.values().map(|p| &**p).collect();
        admin.sort_by_key(|p| (p.priority, &p.name));
        World {
            pods_by_ip,
            pods,
            network_policies: objects
                .policy
                .network_policies
                .values()
                .map(|p| &**p)
                .collect(),
            admin,
            baseline: objects.policy.baseline.get("default").map(|p| &**p),
            node_ips: objects
                .policy
                .nodes
                .values()
                .map(|n| (&n.labels, n.ips.as_slice()))
                .collect(),
            nodes_by_name: objects
                .policy
                .nodes
                .values()
                .map(|n| (n.name.as_str(), n.ips.as_slice()))
                .collect(),
        }
    }

    /// The pod with this address, if a policy can see one.
    pub fn pod(&self, ip: IpAddr) -> Option<PodView<'a>> {
        self.pods_by_ip.get(&ip).copied()
    }

    /// What the policies say about `flow`.
    pub fn decide(&self, flow: &Flow) -> Decision {
        let src = self.pod(flow.src);
        let dst = self.pod(flow.dst);
        let mut why = Vec::new();
        let mut verdict = Verdict::Allow;
        if let Some(s) = src {
            let peer = Peer {
                ip: flow.dst,
                pod: dst,
            };
            let (v, w) = self.direction(s, peer, Dir::Egress, flow, dst);
            why.push(format!("egress of {}: {w}", name(s)));
            if v == Verdict::Deny {
                verdict = Verdict::Deny;
            }
        }
        if let Some(d) = dst
            && verdict == Verdict::Allow
        {
            // NetworkPolicy: "the only allowed connections into the pod are those from the
            // pod's node and those allowed by the ingress list".
            let own_node = d
                .pod
                .policy
                .as_deref()
                .and_then(|p| p.node_name.as_deref())
                .and_then(|n| self.nodes_by_name.get(n))
                .is_some_and(|ips| ips.contains(&flow.src));
            if own_node {
                why.push(format!(
                    "ingress of {}: from its own node: allowed",
                    name(d)
                ));
                return Decision { verdict, why };
            }
            let peer = Peer {
                ip: flow.src,
                pod: src,
            };
            let (v, w) = self.direction(d, peer, Dir::Ingress, flow, Some(d));
            why.push(format!("ingress of {}: {w}", name(d)));
            verdict = v;
        }
        Decision { verdict, why }
    }

    fn direction(
        &self,
        subject: PodView<'a>,
        peer: Peer<'a>,
        dir: Dir,
        flow: &Flow,
        dst_pod: Option<PodView<'a>>,
    ) -> (Verdict, String) {
        // Admin tier.
        'admin: for p in &self.admin {
            if !subject_matches(&p.subject, subject) {
                continue;
            }
            for (i, rule) in rules(p, dir).iter().enumerate() {
                match self.admin_rule(rule, peer, flow, dst_pod) {
                    None => continue,
                    Some(AdminAction::Pass) => break 'admin,
                    Some(action) => {
                        return (
                            verdict_of(action),
                            format!(
                                "AdminNetworkPolicy {} {}[{i}]{} {action:?}",
                                p.name,
                                dir.name(),
                                rule_name(rule)
                            ),
                        );
                    }
                }
            }
        }
        // NetworkPolicy tier.
        let selecting: Vec<&NetworkPolicy> = self
            .network_policies
            .iter()
            .copied()
            .filter(|np| np_selects(np, subject, dir == Dir::Ingress))
            .collect();
        if !selecting.is_empty() {
            for np in &selecting {
                let rules = match dir {
                    Dir::Ingress => &np.ingress,
                    Dir::Egress => &np.egress,
                };
                for (i, rule) in rules.iter().enumerate() {
                    let peer_ok = rule.peers.is_empty()
                        || rule.peers.iter().any(|p| self.np_peer(np, p, peer));
                    if peer_ok && ports_match(&rule.ports, flow, dst_pod) {
                        return (
                            Verdict::Allow,
                            format!(
                                "NetworkPolicy {}/{} {}[{i}] allows",
                                np.namespace,
                                np.name,
                                dir.name()
                            ),
                        );
                    }
                }
            }
            let names: Vec<String> = selecting.iter().map(|np| np.name.clone()).collect();
            return (
                Verdict::Deny,
                format!(
                    "isolated by NetworkPolicy {} and no rule allows",
                    names.join(", ")
                ),
            );
        }
        // Baseline tier.
        if let Some(b) = self.baseline
            && subject_matches(&b.subject, subject)
        {
            for (i, rule) in rules(b, dir).iter().enumerate() {
                if let Some(action) = self.admin_rule(rule, peer, flow, dst_pod) {
                    return (
                        verdict_of(action),
                        format!(
                            "BaselineAdminNetworkPolicy {}[{i}]{} {action:?}",
                            dir.name(),
                            rule_name(rule)
                        ),
                    );
                }
            }
        }
        (Verdict::Allow, "no policy decides: allowed".into())
    }

    /// The action of `rule` when it matches, `None` when it does not. A rule with a peer this
    /// implementation does not support fails closed.
    fn admin_rule(
        &self,
        rule: &AdminRule,
        peer: Peer<'a>,
        flow: &Flow,
        dst_pod: Option<PodView<'a>>,
    ) -> Option<AdminAction> {
        let unsupported = rule
            .peers
            .iter()
            .any(|p| matches!(p, AdminPeer::Unsupported(_)));
        if unsupported && rule.action != AdminAction::Allow {
            return Some(AdminAction::Deny);
        }
        let peer_ok = rule.peers.iter().any(|p| self.admin_peer(p, peer));
        (peer_ok && ports_match(&rule.ports, flow, dst_pod)).then_some(rule.action)
    }

    fn admin_peer(&self, p: &AdminPeer, peer: Peer<'a>) -> bool {
        match p {
            AdminPeer::Namespaces(_) | AdminPeer::Pods { .. } => {
                peer.pod.is_some_and(|v| admin_peer_pod(p, v))
            }
            AdminPeer::Nodes(sel) => self
                .node_ips
                .iter()
                .any(|(labels, ips)| sel.matches(labels) && ips.contains(&peer.ip)),
            AdminPeer::Networks(nets) => nets.iter().any(|n| n.contains(&peer.ip)),
            AdminPeer::Unsupported(_) => false,
        }
    }

    fn np_peer(&self, np: &NetworkPolicy, p: &NetworkPolicyPeer, peer: Peer<'a>) -> bool {
        match p {
            NetworkPolicyPeer::Pods { .. } => peer.pod.is_some_and(|v| np_peer_pod(np, p, v)),
            NetworkPolicyPeer::IpBlock { cidr, except } => {
                cidr.contains(&peer.ip) && !except.iter().any(|e| e.contains(&peer.ip))
            }
        }
    }
}

/// Whether pod `v` is the pod peer `p` (namespaces or pods) of an admin rule.
pub(crate) fn admin_peer_pod(p: &AdminPeer, v: PodView<'_>) -> bool {
    match p {
        AdminPeer::Namespaces(ns) => ns.matches(v.namespace_labels),
        AdminPeer::Pods { namespaces, pods } => {
            namespaces.matches(v.namespace_labels) && pods.matches(v.labels)
        }
        _ => false,
    }
}

/// Whether pod `v` is the pod peer `p` of NetworkPolicy `np` (an ipBlock matches addresses,
/// not pods).
pub(crate) fn np_peer_pod(np: &NetworkPolicy, p: &NetworkPolicyPeer, v: PodView<'_>) -> bool {
    match p {
        NetworkPolicyPeer::Pods {
            namespace_selector,
            pod_selector,
        } => {
            let ns_ok = match namespace_selector {
                None => v.pod.namespace == np.namespace,
                Some(sel) => sel.matches(v.namespace_labels),
            };
            ns_ok && pod_selector.as_ref().is_none_or(|s| s.matches(v.labels))
        }
        NetworkPolicyPeer::IpBlock { .. } => false,
    }
}

/// Whether NetworkPolicy `np` isolates pod `v` in direction `ingress` (else egress).
pub(crate) fn np_selects(np: &NetworkPolicy, v: PodView<'_>, ingress: bool) -> bool {
    np.namespace == v.pod.namespace
        && if ingress {
            np.ingress_isolation
        } else {
            np.egress_isolation
        }
        && np.pod_selector.matches(v.labels)
}

fn name(v: PodView<'_>) -> String {
    format!("{}/{}", v.pod.namespace, v.pod.name)
}

fn rules(p: &AdminPolicy, dir: Dir) -> &[AdminRule] {
    match dir {
        Dir::Ingress => &p.ingress,
        Dir::Egress => &p.egress,
    }
}

fn rule_name(rule: &AdminRule) -> String {
    if rule.name.is_empty() {
        String::new()
    } else {
        format!(" ({})", rule.name)
    }
}

fn verdict_of(action: AdminAction) -> Verdict {
    match action {
        AdminAction::Allow => Verdict::Allow,
        AdminAction::Deny | AdminAction::Pass => Verdict::Deny,
    }
}

pub(crate) fn subject_matches(subject: &AdminSubject, v: PodView<'_>) -> bool {
    match subject {
        AdminSubject::Namespaces(ns) => ns.matches(v.namespace_labels),
        AdminSubject::Pods { namespaces, pods } => {
            namespaces.matches(v.namespace_labels) && pods.matches(v.labels)
        }
    }
}

/// Whether `flow` is on one of `ports` (none: every port). Named ports resolve against the
/// destination pod's container ports; toward an address that is not a pod they match nothing.
pub fn ports_match(ports: &[PolicyPort], flow: &Flow, dst_pod: Option<PodView<'_>>) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| match p {
            PolicyPort::All(proto) => *proto == flow.protocol,
            PolicyPort::Range {
                protocol,
                port,
                end,
            } => *protocol == flow.protocol && (*port..=*end).contains(&flow.port),
            PolicyPort::Named { protocol, name } => dst_pod.is_some_and(|d| {
                d.ports.iter().any(|c| {
                    c.name == *name
                        && c.port == flow.port
                        && c.protocol == flow.protocol
                        && protocol.is_none_or(|p| p == c.protocol)
                })
            }),
        })
}
