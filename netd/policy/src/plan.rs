//! The policies as one nftables table (`inet netd-policy`), for the pods on one node.
//!
//! ```text
//!  forward (filter): established, related ─▶ accept (replies of allowed connections)
//!     saddr ∈ @local ─▶ jump egress      daddr ∈ @local ─▶ jump ingress
//!  input (filter): the same, egress only (pods reaching the node)
//!  egress / ingress:          admin rules in order:  Allow ─▶ return   Deny ─▶ drop
//!                                                    Pass ─▶ goto DIR-np
//!                             goto DIR-np
//!  DIR-np:                    pod vmap @DIR-isolated ─▶ goto DIR-np-rules
//!                             goto DIR-baseline
//!  DIR-np-rules:              NetworkPolicy rules: match ─▶ return;  then drop
//!  DIR-baseline:              baseline rules in order: Allow ─▶ return, Deny ─▶ drop
//! ```
//!
//! Every rule is one set lookup per side, never a rule per pod pair: the subjects (this
//! node's pods a policy selects), the peers (pods anywhere, CIDRs, node addresses, as merged
//! address ranges), the ports (`protocol . port` ranges), and for named ports the exact
//! `address . protocol . port` of each destination pod. A connection passes when its egress
//! (if its source is a local pod) and its ingress (if its destination is) both return.
//!
//! The table follows [`crate::eval`]'s semantics; the traffic tests compare the two.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use discovery::model::Protocol;
use discovery::policy::{AdminAction, AdminPeer, AdminRule, NetworkPolicyPeer, PolicyPort};
use ipnet::IpNet;
use netd_nft::{Chain, Family, Hook, Set, Table};

use crate::eval::{Dir, PodView, World, admin_peer_pod, np_peer_pod, np_selects, subject_matches};

/// The table the policy daemon owns.
pub const TABLE: &str = "netd-policy";

/// The two families: `ip` or `ip6`, the address type, and the set suffix.
const FAMILIES: [(&str, &str, &str); 2] = [("ip", "ipv4_addr", "v4"), ("ip6", "ipv6_addr", "v6")];

fn v4(ip: &IpAddr) -> bool {
    ip.is_ipv4()
}

/// Addresses as merged, sorted ranges per family.
#[derive(Debug, Default, Clone)]
struct Addresses {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

fn bounds(net: &IpNet) -> (bool, u128, u128) {
    match net {
        IpNet::V4(n) => (
            true,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (false, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

impl Addresses {
    fn add_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self
                .v4
                .push((u128::from(u32::from(a)), u128::from(u32::from(a)))),
            IpAddr::V6(a) => self.v6.push((u128::from(a), u128::from(a))),
        }
    }

    fn add_net(&mut self, net: &IpNet) {
        let (is_v4, lo, hi) = bounds(net);
        if is_v4 { &mut self.v4 } else { &mut self.v6 }.push((lo, hi));
    }

    /// `net` without the `except` blocks.
    fn add_net_except(&mut self, net: &IpNet, except: &[IpNet]) {
        let (is_v4, lo, hi) = bounds(net);
        let mut pieces = vec![(lo, hi)];
        for e in except {
            let (e_v4, elo, ehi) = bounds(e);
            if e_v4 != is_v4 {
                continue;
            }
            pieces = pieces
                .into_iter()
                .flat_map(|(a, b)| {
                    let mut out = Vec::new();
                    if ehi < a || elo > b {
                        out.push((a, b));
                    } else {
                        if elo > a {
                            out.push((a, elo - 1));
                        }
                        if ehi < b {
                            out.push((ehi + 1, b));
                        }
                    }
                    out
                })
                .collect();
        }
        if is_v4 { &mut self.v4 } else { &mut self.v6 }.extend(pieces);
    }

    fn merged(ranges: &[(u128, u128)]) -> Vec<(u128, u128)> {
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::new();
        for (lo, hi) in sorted {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        out
    }

    /// The nft elements of one family (`"v4"` or `"v6"`).
    fn elements(&self, suffix: &str) -> Vec<String> {
        let is_v4 = suffix == "v4";
        let show = |n: u128| -> String {
            if is_v4 {
                std::net::Ipv4Addr::from(n as u32).to_string()
            } else {
                std::net::Ipv6Addr::from(n).to_string()
            }
        };
        Self::merged(if is_v4 { &self.v4 } else { &self.v6 })
            .into_iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    show(lo)
                } else {
                    format!("{}-{}", show(lo), show(hi))
                }
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn contains(&self, ip: &IpAddr) -> bool {
        let (ranges, n) = match ip {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(*a))),
            IpAddr::V6(a) => (&self.v6, u128::from(*a)),
        };
        ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&n))
    }
}

/// A set name of at most about 200 bytes with only the characters nft names take: the policy's
/// names stay readable, and a hash of the exact text keeps long or odd names apart.
fn set_prefix(kind: &str, names: &[&str]) -> String {
    let text = names.join("/");
    let readable: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-./".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if readable == text && text.len() <= 160 {
        return format!("{kind}/{text}");
    }
    // FNV-1a, stable across releases.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let cut: String = readable.chars().take(140).collect();
    format!("{kind}/{cut}-{hash:016x}")
}

/// A rule's ports: numeric ranges per protocol, and named ports.
#[derive(Debug, Default)]
struct Ports {
    /// `None`: every port and every protocol (no `ports` in the rule).
    numeric: Option<BTreeMap<&'static str, Vec<(u128, u128)>>>,
    named: Vec<(Option<Protocol>, String)>,
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn ports_of(ports: &[PolicyPort]) -> Ports {
    if ports.is_empty() {
        return Ports::default();
    }
    let mut numeric: BTreeMap<&'static str, Vec<(u128, u128)>> = BTreeMap::new();
    let mut named = Vec::new();
    for p in ports {
        match p {
            PolicyPort::All(pr) => numeric.entry(proto(*pr)).or_default().push((0, 65535)),
            PolicyPort::Range {
                protocol,
                port,
                end,
            } => numeric
                .entry(proto(*protocol))
                .or_default()
                .push((u128::from(*port), u128::from(*end))),
            PolicyPort::Named { protocol, name } => named.push((*protocol, name.clone())),
        }
    }
    Ports {
        numeric: Some(numeric),
        named,
    }
}

/// The `address . protocol . port` elements of the named ports on `pods`.
fn named_targets(
    named: &[(Option<Protocol>, String)],
    pods: &[PodView<'_>],
    suffix: &str,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for pod in pods {
        for (protocol, name) in named {
            for c in pod
                .ports
                .iter()
                .filter(|c| c.name == *name && protocol.is_none_or(|p| p == c.protocol))
            {
                for ip in pod.pod.ips.iter().filter(|ip| v4(ip) == (suffix == "v4")) {
                    out.insert(format!("{ip} . {} . {}", proto(c.protocol), c.port));
                }
            }
        }
    }
    out.into_iter().collect()
}

struct Planner<'w, 'a> {
    world: &'w World<'a>,
    local: Vec<PodView<'a>>,
    table: Table,
}

/// What one policy rule compiles from.
struct RuleSpec<'p, 'a> {
    /// Set name prefix, unique per rule.
    name: String,
    /// This node's pods the rule applies to.
    subjects: Vec<PodView<'a>>,
    peers: Addresses,
    ports: &'p [PolicyPort],
    /// `return`, `drop` or `goto …`.
    verdict: String,
}

impl<'w, 'a> Planner<'w, 'a> {
    fn set(&mut self, name: &str, key: &str, interval: bool, elements: Vec<String>) {
        let mut set = Set::of(key);
        if interval {
            set.flags = vec!["interval".into()];
        }
        for e in elements {
            set.elements.insert(e, String::new());
        }
        self.table.sets.insert(name.to_string(), set);
    }

    fn addresses_of(pods: &[PodView<'_>]) -> Addresses {
        let mut a = Addresses::default();
        for p in pods {
            for ip in &p.pod.ips {
                a.add_ip(*ip);
            }
        }
        a
    }

    /// The nft rules of one policy rule, per family, with their sets.
    fn rule(&mut self, dir: Dir, spec: RuleSpec<'_, 'a>) -> Vec<String> {
        let mut out = Vec::new();
        if spec.subjects.is_empty() || spec.peers.is_empty() {
            return out;
        }
        let subjects = Self::addresses_of(&spec.subjects);
        let ports = ports_of(spec.ports);
        for (p, addr_type, suffix) in FAMILIES {
            let subject_elements = subjects.elements(suffix);
            let peer_elements = spec.peers.elements(suffix);
            if subject_elements.is_empty() || peer_elements.is_empty() {
                continue;
            }
            let subject_set = format!("{}/subjects-{suffix}", spec.name);
            let peer_set = format!("{}/peers-{suffix}", spec.name);
            self.set(&subject_set, addr_type, true, subject_elements);
            self.set(&peer_set, addr_type, true, peer_elements);
            let (src, dst) = match dir {
                Dir::Ingress => (&peer_set, &subject_set),
                Dir::Egress => (&subject_set, &peer_set),
            };
            let verdict = &spec.verdict;
            match &ports.numeric {
                None => out.push(format!("{p} saddr @{src} {p} daddr @{dst} {verdict}")),
                Some(numeric) => {
                    if !numeric.is_empty() {
                        let ports_set = format!("{}/ports", spec.name);
                        let elements = numeric
                            .iter()
                            .flat_map(|(pr, ranges)| {
                                Addresses::merged(ranges).into_iter().map(move |(lo, hi)| {
                                    if lo == hi {
                                        format!("{pr} . {lo}")
                                    } else {
                                        format!("{pr} . {lo}-{hi}")
                                    }
                                })
                            })
                            .collect();
                        self.set(&ports_set, "inet_proto . inet_service", true, elements);
                        out.push(format!(
                            "{p} saddr @{src} {p} daddr @{dst} meta l4proto . th dport @{ports_set} {verdict}"
                        ));
                    }
                    if !ports.named.is_empty() {
                        // On egress the destinations are the pods among the peers, whether a
                        // selector or an address block (ipBlock, networks) names them.
                        let in_peers: Vec<PodView<'a>> = self
                            .world
                            .pods
                            .iter()
                            .copied()
                            .filter(|v| v.pod.ips.iter().any(|ip| spec.peers.contains(ip)))
                            .collect();
                        let destinations = match dir {
                            Dir::Ingress => &spec.subjects,
                            Dir::Egress => &in_peers,
                        };
                        let targets = named_targets(&ports.named, destinations, suffix);
                        if !targets.is_empty() {
                            let named_set = format!("{}/named-{suffix}", spec.name);
                            self.set(
                                &named_set,
                                &format!("{addr_type} . inet_proto . inet_service"),
                                false,
                                targets,
                            );
                            // The destination side is in the named set itself.
                            out.push(format!(
                                "{p} saddr @{src} {p} daddr . meta l4proto . th dport @{named_set} {verdict}"
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// The peers of an admin rule: pods anywhere, node addresses, networks.
    fn admin_peers(&self, rule: &AdminRule) -> Addresses {
        let mut addresses = Addresses::default();
        let mut pods = Vec::new();
        for peer in &rule.peers {
            match peer {
                AdminPeer::Namespaces(_) | AdminPeer::Pods { .. } => {
                    for v in &self.world.pods {
                        if admin_peer_pod(peer, *v) {
                            pods.push(*v);
                        }
                    }
                }
                AdminPeer::Nodes(sel) => {
                    for (labels, ips) in &self.world.node_ips {
                        if sel.matches(labels) {
                            for ip in *ips {
                                addresses.add_ip(*ip);
                            }
                        }
                    }
                }
                AdminPeer::Networks(nets) => {
                    for n in nets {
                        addresses.add_net(n);
                    }
                }
                AdminPeer::Unsupported(_) => {}
            }
        }
        let pod_addresses = Self::addresses_of(&pods);
        addresses.v4.extend(pod_addresses.v4);
        addresses.v6.extend(pod_addresses.v6);
        addresses
    }

    fn everything() -> Addresses {
        let mut a = Addresses::default();
        a.add_net(&"0.0.0.0/0".parse().expect("net"));
        a.add_net(&"::/0".parse().expect("net"));
        a
    }

    /// The admin rules of one policy (or the baseline) in one direction.
    fn admin_rules(
        &mut self,
        dir: Dir,
        prefix: &str,
        rules: &[AdminRule],
        subjects: Vec<PodView<'a>>,
        np_chain: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let unsupported = rule
                .peers
                .iter()
                .any(|p| matches!(p, AdminPeer::Unsupported(_)));
            let name = format!("{prefix}/{}/{i}", dir.name());
            let spec = if unsupported && rule.action != AdminAction::Allow {
                // Fails closed: every peer, every port.
                RuleSpec {
                    name,
                    subjects: subjects.clone(),
                    peers: Self::everything(),
                    ports: &[],
                    verdict: "drop".into(),
                }
            } else {
                RuleSpec {
                    name,
                    subjects: subjects.clone(),
                    peers: self.admin_peers(rule),
                    ports: &rule.ports,
                    verdict: match rule.action {
                        AdminAction::Allow => "return".into(),
                        AdminAction::Deny => "drop".into(),
                        AdminAction::Pass => format!("goto {np_chain}"),
                    },
                }
            };
            out.extend(self.rule(dir, spec));
        }
        out
    }

    fn direction(&mut self, dir: Dir) {
        let d = dir.name();
        let np_chain = format!("{d}-np");
        let np_rules_chain = format!("{d}-np-rules");
        let baseline_chain = format!("{d}-baseline");
        // Admin tier.
        let mut admin = Vec::new();
        let policies = self.world.admin.clone();
        for p in policies {
            let subjects: Vec<PodView<'a>> = self
                .local
                .iter()
                .copied()
                .filter(|v| subject_matches(&p.subject, *v))
                .collect();
            let rules = match dir {
                Dir::Ingress => &p.ingress,
                Dir::Egress => &p.egress,
            };
            admin.extend(self.admin_rules(
                dir,
                &set_prefix("anp", &[&p.name]),
                rules,
                subjects,
                &np_chain,
            ));
        }
        admin.push(format!("goto {np_chain}"));
        self.table.chains.insert(d.to_string(), chain(admin));

        // NetworkPolicy tier: the isolated pods, then the rules.
        let mut isolated: BTreeSet<IpAddr> = BTreeSet::new();
        let mut np_rules = Vec::new();
        let nps = self.world.network_policies.clone();
        for np in nps {
            let subjects: Vec<PodView<'a>> = self
                .local
                .iter()
                .copied()
                .filter(|v| np_selects(np, *v, dir == Dir::Ingress))
                .collect();
            if subjects.is_empty() {
                continue;
            }
            for v in &subjects {
                isolated.extend(v.pod.ips.iter().copied());
            }
            let rules = match dir {
                Dir::Ingress => &np.ingress,
                Dir::Egress => &np.egress,
            };
            for (i, rule) in rules.iter().enumerate() {
                let peers = if rule.peers.is_empty() {
                    Self::everything()
                } else {
                    let mut addresses = Addresses::default();
                    let mut pods = Vec::new();
                    for peer in &rule.peers {
                        match peer {
                            NetworkPolicyPeer::Pods { .. } => pods.extend(
                                self.world
                                    .pods
                                    .iter()
                                    .copied()
                                    .filter(|v| np_peer_pod(np, peer, *v)),
                            ),
                            NetworkPolicyPeer::IpBlock { cidr, except } => {
                                addresses.add_net_except(cidr, except);
                            }
                        }
                    }
                    let pod_addresses = Self::addresses_of(&pods);
                    addresses.v4.extend(pod_addresses.v4);
                    addresses.v6.extend(pod_addresses.v6);
                    addresses
                };
                np_rules.extend(self.rule(
                    dir,
                    RuleSpec {
                        name: format!("{}/{d}/{i}", set_prefix("np", &[&np.namespace, &np.name])),
                        subjects: subjects.clone(),
                        peers,
                        ports: &rule.ports,
                        verdict: "return".into(),
                    },
                ));
            }
        }
        np_rules.push("drop".into());
        self.table
            .chains
            .insert(np_rules_chain.clone(), chain(np_rules));
        let mut dispatch = Vec::new();
        for (p, addr_type, suffix) in FAMILIES {
            let map_name = format!("{d}-isolated-{suffix}");
            let mut map = Set::map(addr_type, "verdict");
            for ip in isolated.iter().filter(|ip| v4(ip) == (suffix == "v4")) {
                map.elements
                    .insert(ip.to_string(), format!("goto {np_rules_chain}"));
            }
            self.table.sets.insert(map_name.clone(), map);
            let side = match dir {
                Dir::Ingress => "daddr",
                Dir::Egress => "saddr",
            };
            dispatch.push(format!("{p} {side} vmap @{map_name}"));
        }
        dispatch.push(format!("goto {baseline_chain}"));
        self.table.chains.insert(np_chain.clone(), chain(dispatch));

        // Baseline tier; falling off its end returns: allowed.
        let mut baseline = Vec::new();
        if let Some(b) = self.world.baseline {
            let subjects: Vec<PodView<'a>> = self
                .local
                .iter()
                .copied()
                .filter(|v| subject_matches(&b.subject, *v))
                .collect();
            let rules = match dir {
                Dir::Ingress => &b.ingress,
                Dir::Egress => &b.egress,
            };
            baseline = self.admin_rules(dir, "banp", rules, subjects, &np_chain);
        }
        self.table.chains.insert(baseline_chain, chain(baseline));
    }
}

fn chain(rules: Vec<String>) -> Chain {
    Chain { hook: None, rules }
}

/// The table that enforces the policies for the pods on `node_name`.
pub fn plan(world: &World<'_>, node_name: &str) -> Table {
    let local: Vec<PodView<'_>> = world
        .pods
        .iter()
        .copied()
        .filter(|v| v.pod.policy.as_deref().and_then(|p| p.node_name.as_deref()) == Some(node_name))
        .collect();
    let mut planner = Planner {
        world,
        local,
        table: Table::new(Family::Inet, TABLE),
    };
    let local_addresses = Planner::addresses_of(&planner.local);
    // Neighbour discovery is not a connection (conntrack does not track it); without it an
    // isolated pod loses all IPv6.
    let mut entry = vec![
        "ct state established,related accept".to_string(),
        "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } ip6 hoplimit 255 accept".to_string(),
    ];
    for (p, addr_type, suffix) in FAMILIES {
        planner.set(
            &format!("local-{suffix}"),
            addr_type,
            true,
            local_addresses.elements(suffix),
        );
        entry.push(format!("{p} saddr @local-{suffix} jump egress"));
    }
    for (p, _, suffix) in FAMILIES {
        entry.push(format!("{p} daddr @local-{suffix} jump ingress"));
    }
    planner.direction(Dir::Egress);
    planner.direction(Dir::Ingress);
    // Pods reaching the node itself are checked for egress (the input hook); the node
    // reaching its pods is not checked (kubelet probes must pass, as in most plugins).
    let input: Vec<String> = entry
        .iter()
        .filter(|r| !r.contains("jump ingress"))
        .cloned()
        .collect();
    for (hook, rules) in [("forward", entry), ("input", input)] {
        planner.table.chains.insert(
            hook.to_string(),
            Chain {
                hook: Some(Hook::new("filter", hook, "0", "accept")),
                rules,
            },
        );
    }
    planner.table
}
