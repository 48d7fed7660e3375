//! `netd-proxy`'s planner: Service ports and their endpoints in, the nftables table out.
//!
//! The ruleset follows kube-proxy's nftables mode (see `docs/netd-proxy-design.md`), in one
//! `inet` table holding both families:
//!
//! ```text
//!  nat-prerouting / nat-output ─▶ services ─┬─ daddr . proto . port  vmap @service-ips-vN
//!                                           └─ daddr ∈ @nodeport-ips-vN: proto . port vmap @service-nodeports-vN
//!        service-ips:  clusterIP ─▶ service-… (or local-… for internalTrafficPolicy Local)
//!                      externalIP, LB IP ─▶ external-…   nodeport ─▶ external-…
//!        external-…:   Cluster: mark, goto service-…    Local: short-circuit pods and the host,
//!                                                        else goto local-… (client address kept)
//!        service-…:    mark traffic from outside the cluster CIDR; affinity; random pick ─▶ endpoint-…
//!        endpoint-…:   hairpin mark; affinity update; dnat to the endpoint
//!  filter input/forward/output (ct state new):
//!        no-endpoint-services / no-endpoint-nodeports ─▶ reject (or drop under Local policy)
//!        cluster-ips-check: a cluster IP on a port the service does not define ─▶ reject
//!  nat-postrouting ─▶ masquerading: marked packets are masqueraded
//!  filter prerouting / output, before DNAT (ct state new):
//!        firewall-check: a load-balancer IP with loadBalancerSourceRanges ─▶ firewall-…:
//!                        drop sources outside the ranges
//! ```
//!
//! The planner is pure: the same input gives the same table, and `netd_nft::diff` turns two
//! tables into the one transaction that moves from the first to the second.

pub mod cli;
pub mod daemon;
pub mod health;
pub mod services;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netd_nft::{Chain, Family, Hook, Set, Table};

/// The table the proxy owns.
pub const TABLE: &str = "netd-proxy";

/// The packet mark bit that asks for masquerading (kube-proxy's default bit 14).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` is the node's).
    pub local: bool,
}

/// One port of a Service, with everything that decides where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name (empty for a single unnamed port).
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `loadBalancerSourceRanges`: when set, only these sources may reach the load-balancer
    /// IPs (an empty list lets none through).
    pub source_ranges: Option<Vec<IpNet>>,
    pub endpoints: Vec<Endpoint>,
}

/// What the planner needs to know about the node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The addresses NodePorts answer on.
    pub ips: Vec<IpAddr>,
    /// The pod network: traffic from outside it to a cluster IP is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
}

/// The two families, with their nft spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn of(ip: &IpAddr) -> Fam {
        if ip.is_ipv4() { Fam::V4 } else { Fam::V6 }
    }
    fn suffix(self) -> &'static str {
        match self {
            Fam::V4 => "v4",
            Fam::V6 => "v6",
        }
    }
    /// `ip` or `ip6`, as in `ip daddr`.
    fn proto(self) -> &'static str {
        match self {
            Fam::V4 => "ip",
            Fam::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4_addr",
            Fam::V6 => "ipv6_addr",
        }
    }
    /// An address with a port, as `dnat` wants it (`[::1]:80` for IPv6).
    fn with_port(self, ip: &IpAddr, port: u16) -> String {
        match self {
            Fam::V4 => format!("{ip}:{port}"),
            Fam::V6 => format!("[{ip}]:{port}"),
        }
    }
}

/// kube-proxy's naming: a short hash of `base` keeps names unique when the readable part is cut
/// or, since nft names cannot hold `:`, when two IPv6 addresses read the same with `.` in its
/// place (`::ffff:1.2.3.4` and `::ffff:1:2:3:4`).
fn chain_name(prefix: &str, base: &str) -> String {
    // FNV-1a: stable across releases.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in base.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // nft names hold letters, digits and `_-./`: anything else (a `:` of an IPv6 address, a
    // port name the API would refuse) reads as `.` or `_`, and the hash keeps names apart.
    let readable: String = base
        .chars()
        .map(|c| match c {
            ':' => '.',
            c if c.is_ascii_alphanumeric() || "_-./".contains(c) => c,
            _ => '_',
        })
        .collect();
    let mut name = format!("{prefix}-{:08X}-{readable}", hash >> 32);
    if name.len() > 237 {
        name.truncate(234);
        name.push_str("...");
    }
    name
}

fn base_chain(kind: &str, hook: &str, priority: &str, rules: Vec<String>) -> Chain {
    Chain {
        hook: Some(Hook::new(kind, hook, priority, "accept")),
        rules,
    }
}

fn element_key(ip: &IpAddr, protocol: Protocol, port: u16) -> String {
    format!("{ip} . {} . {port}", protocol.as_str())
}

/// The endpoints traffic goes to under a policy: the ready ones, or if there are none the
/// serving ones that are terminating (so connections drain rather than fail).
fn usable(endpoints: &[&Endpoint]) -> Vec<Endpoint> {
    let ready: Vec<Endpoint> = endpoints
        .iter()
        .filter(|e| e.ready)
        .map(|e| (*e).clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| (*e).clone())
        .collect()
}

/// Builds the whole table for `services` on `node`.
pub fn plan(node: &Node, services: &[ServicePort]) -> Table {
    let mut t = Table::new(Family::Inet, TABLE);
    fixed(&mut t, node);
    for service in services {
        for fam in [Fam::V4, Fam::V6] {
            service_port(&mut t, node, service, fam);
        }
    }
    t
}

/// The base chains, dispatch chains, sets and maps every table has.
fn fixed(t: &mut Table, node: &Node) {
    let mut services = Vec::new();
    let mut endpoints_check = Vec::new();
    let mut nodeports_check = Vec::new();
    let mut cluster_ips_check = Vec::new();
    let mut firewall_check = Vec::new();
    for fam in [Fam::V4, Fam::V6] {
        let (p, s, a) = (fam.proto(), fam.suffix(), fam.addr_type());
        t.sets.insert(format!("cluster-ips-{s}"), Set::of(a));
        let mut nodeport_ips = Set::of(a);
        for ip in node.ips.iter().filter(|ip| Fam::of(ip) == fam) {
            nodeport_ips.elements.insert(ip.to_string(), String::new());
        }
        t.sets.insert(format!("nodeport-ips-{s}"), nodeport_ips);
        let key = format!("{a} . inet_proto . inet_service");
        t.sets
            .insert(format!("service-ips-{s}"), Set::map(&key, "verdict"));
        t.sets.insert(
            format!("no-endpoint-services-{s}"),
            Set::map(&key, "verdict"),
        );
        t.sets
            .insert(format!("firewall-ips-{s}"), Set::map(&key, "verdict"));
        t.sets.insert(
            format!("service-nodeports-{s}"),
            Set::map("inet_proto . inet_service", "verdict"),
        );
        t.sets.insert(
            format!("no-endpoint-nodeports-{s}"),
            Set::map("inet_proto . inet_service", "verdict"),
        );
        services.push(format!(
            "{p} daddr . meta l4proto . th dport vmap @service-ips-{s}"
        ));
        services.push(format!(
            "{p} daddr @nodeport-ips-{s} meta l4proto . th dport vmap @service-nodeports-{s}"
        ));
        endpoints_check.push(format!(
            "{p} daddr . meta l4proto . th dport vmap @no-endpoint-services-{s}"
        ));
        nodeports_check.push(format!(
            "{p} daddr @nodeport-ips-{s} meta l4proto . th dport vmap @no-endpoint-nodeports-{s}"
        ));
        cluster_ips_check.push(format!("{p} daddr @cluster-ips-{s} reject"));
        firewall_check.push(format!(
            "{p} daddr . meta l4proto . th dport vmap @firewall-ips-{s}"
        ));
    }
    let chain = |rules: Vec<String>| Chain { hook: None, rules };
    t.chains.insert("services".into(), chain(services));
    t.chains
        .insert("service-endpoints-check".into(), chain(endpoints_check));
    t.chains
        .insert("nodeport-endpoints-check".into(), chain(nodeports_check));
    t.chains
        .insert("cluster-ips-check".into(), chain(cluster_ips_check));
    t.chains
        .insert("firewall-check".into(), chain(firewall_check));
    t.chains
        .insert("reject-chain".into(), chain(vec!["reject".into()]));
    t.chains.insert(
        "mark-for-masquerade".into(),
        chain(vec![format!("mark set mark or {MASQUERADE_MARK:#x}")]),
    );
    t.chains.insert(
        "masquerading".into(),
        chain(vec![
            format!("mark and {MASQUERADE_MARK:#x} == 0 return"),
            format!("mark set mark xor {MASQUERADE_MARK:#x}"),
            "masquerade fully-random".into(),
        ]),
    );
    let new = |target: &str| format!("ct state new jump {target}");
    t.chains.insert(
        "filter-input".into(),
        base_chain(
            "filter",
            "input",
            "0",
            vec![
                new("nodeport-endpoints-check"),
                new("service-endpoints-check"),
            ],
        ),
    );
    t.chains.insert(
        "filter-forward".into(),
        base_chain(
            "filter",
            "forward",
            "0",
            vec![new("service-endpoints-check"), new("cluster-ips-check")],
        ),
    );
    t.chains.insert(
        "filter-output".into(),
        base_chain(
            "filter",
            "output",
            "0",
            vec![new("service-endpoints-check"), new("cluster-ips-check")],
        ),
    );
    // Before DNAT (dstnat is -100), so the firewall sees the load-balancer IP.
    let pre_dnat = || vec![new("firewall-check")];
    t.chains.insert(
        "filter-prerouting-pre-dnat".into(),
        base_chain("filter", "prerouting", "-110", pre_dnat()),
    );
    t.chains.insert(
        "filter-output-pre-dnat".into(),
        base_chain("filter", "output", "-110", pre_dnat()),
    );
    t.chains.insert(
        "nat-prerouting".into(),
        base_chain("nat", "prerouting", "-100", vec!["jump services".into()]),
    );
    t.chains.insert(
        "nat-output".into(),
        base_chain("nat", "output", "-100", vec!["jump services".into()]),
    );
    t.chains.insert(
        "nat-postrouting".into(),
        base_chain(
            "nat",
            "postrouting",
            "srcnat",
            vec!["jump masquerading".into()],
        ),
    );
}

/// The chains and map elements of one Service port in one family.
fn service_port(t: &mut Table, node: &Node, svc: &ServicePort, fam: Fam) {
    let in_fam = |ips: &[IpAddr]| -> Vec<IpAddr> {
        ips.iter()
            .filter(|ip| Fam::of(ip) == fam)
            .copied()
            .collect()
    };
    let cluster_ips = in_fam(&svc.cluster_ips);
    let external_ips: Vec<IpAddr> = in_fam(&svc.external_ips)
        .into_iter()
        .chain(in_fam(&svc.load_balancer_ips))
        .collect();
    let endpoints: Vec<&Endpoint> = svc
        .endpoints
        .iter()
        .filter(|e| Fam::of(&e.ip) == fam)
        .collect();
    // A family the service has no address in is not the service's (a single-stack IPv4
    // service's NodePort is not served over IPv6, as kube-proxy's per-family proxiers do).
    if cluster_ips.is_empty() && external_ips.is_empty() {
        return;
    }
    let node_port = svc
        .node_port
        .filter(|_| node.ips.iter().any(|ip| Fam::of(ip) == fam));
    let (p, s) = (fam.proto(), fam.suffix());
    let proto = svc.protocol.as_str();
    if let Some(set) = t.sets.get_mut(&format!("cluster-ips-{s}")) {
        for ip in &cluster_ips {
            set.elements.insert(ip.to_string(), String::new());
        }
    }
    let base = format!(
        "{s}/{}/{}/{proto}/{}",
        svc.namespace,
        svc.name,
        port_label(svc)
    );
    firewall(t, node, svc, fam, &base);
    let cluster = usable(&endpoints);
    let local_candidates: Vec<&Endpoint> = endpoints.iter().copied().filter(|e| e.local).collect();
    let local = usable(&local_candidates);

    let map = |t: &mut Table, name: String, key: String, value: String| {
        if let Some(set) = t.sets.get_mut(&name) {
            set.elements.insert(key, value);
        }
    };
    if cluster.is_empty() {
        // No endpoints anywhere: every address and the NodePort are refused at once.
        for ip in cluster_ips.iter().chain(&external_ips) {
            map(
                t,
                format!("no-endpoint-services-{s}"),
                element_key(ip, svc.protocol, svc.port),
                "goto reject-chain".to_string(),
            );
        }
        if let Some(np) = node_port {
            map(
                t,
                format!("no-endpoint-nodeports-{s}"),
                format!("{proto} . {np}"),
                "goto reject-chain".to_string(),
            );
        }
        return;
    }

    let service_chain = chain_name("service", &base);
    let local_chain = chain_name("local", &base);
    let external_chain = chain_name("external", &base);
    let endpoint_chain =
        |e: &Endpoint| chain_name("endpoint", &format!("{base}__{}/{}", e.ip, e.port));
    let affinity_set =
        |e: &Endpoint| chain_name("affinity", &format!("{base}__{}/{}", e.ip, e.port));

    // Which policy chains exist: the Cluster one unless only Local cluster-IP traffic uses
    // the service (kube-proxy's UsesClusterEndpoints), the Local one when a policy is Local.
    let external = !external_ips.is_empty() || node_port.is_some();
    let uses_cluster = !svc.internal_local || external;
    let uses_local = !local.is_empty() && (svc.internal_local || (svc.external_local && external));
    // Endpoint chains, and affinity sets, for every endpoint those chains use.
    let mut used: BTreeMap<String, Endpoint> = BTreeMap::new();
    let cluster_used: &[Endpoint] = if uses_cluster { &cluster } else { &[] };
    let local_used: &[Endpoint] = if uses_local { &local } else { &[] };
    for e in cluster_used.iter().chain(local_used) {
        used.insert(endpoint_chain(e), e.clone());
    }
    for (name, e) in &used {
        let mut rules = vec![format!("{p} saddr {} jump mark-for-masquerade", e.ip)];
        if let Some(timeout) = svc.affinity_timeout {
            let set = affinity_set(e);
            let mut affinity = Set::of(fam.addr_type());
            affinity.flags = vec!["dynamic".into(), "timeout".into()];
            affinity.timeout = Some(format!("{timeout}s"));
            t.sets.insert(set.clone(), affinity);
            rules.push(format!("update @{set} {{ {p} saddr }}"));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat {p} to {}",
            fam.with_port(&e.ip, e.port)
        ));
        t.chains.insert(name.clone(), Chain { hook: None, rules });
    }

    // The policy chains: one for all endpoints, one for this node's.
    let policy = |masquerade: Option<String>, endpoints: &[Endpoint]| -> Chain {
        let mut rules: Vec<String> = masquerade.into_iter().collect();
        if svc.affinity_timeout.is_some() {
            for e in endpoints {
                rules.push(format!(
                    "{p} saddr @{} goto {}",
                    affinity_set(e),
                    endpoint_chain(e)
                ));
            }
        }
        rules.extend(spread(
            &endpoints.iter().map(endpoint_chain).collect::<Vec<_>>(),
        ));
        Chain { hook: None, rules }
    };
    // Traffic to a cluster IP from outside the pod network is masqueraded, so replies come back.
    let cidrs: Vec<String> = node
        .cluster_cidrs
        .iter()
        .filter(|c| Fam::of(&c.addr()) == fam)
        .map(ToString::to_string)
        .collect();
    let outside = |ip: &IpAddr| -> Option<String> {
        (!cidrs.is_empty()).then(|| {
            format!(
                "{p} daddr {ip} {p} saddr != {{ {} }} jump mark-for-masquerade",
                cidrs.join(", ")
            )
        })
    };
    let masquerade_rule = cluster_ips.first().and_then(outside);
    if uses_cluster {
        t.chains.insert(
            service_chain.clone(),
            policy(masquerade_rule.clone(), &cluster),
        );
    }
    if uses_local {
        t.chains.insert(
            local_chain.clone(),
            policy(masquerade_rule.filter(|_| svc.internal_local), &local),
        );
    }

    // Cluster IPs: to the policy chain, or refused / dropped when Local has no endpoint here.
    for ip in &cluster_ips {
        let key = element_key(ip, svc.protocol, svc.port);
        if !svc.internal_local {
            map(
                t,
                format!("service-ips-{s}"),
                key,
                format!("goto {service_chain}"),
            );
        } else if local.is_empty() {
            map(
                t,
                format!("no-endpoint-services-{s}"),
                key,
                "drop".to_string(),
            );
        } else {
            map(
                t,
                format!("service-ips-{s}"),
                key,
                format!("goto {local_chain}"),
            );
        }
    }

    // External addresses and the NodePort go through the external chain.
    if !external {
        return;
    }
    let mut external = Vec::new();
    if svc.external_local {
        // Pods and the node itself reach the service as if the policy were Cluster; outside
        // clients reach this node's endpoints only, with their own address.
        if !cidrs.is_empty() {
            external.push(format!(
                "{p} saddr {{ {} }} goto {service_chain}",
                cidrs.join(", ")
            ));
        }
        external.push("fib saddr type local jump mark-for-masquerade".to_string());
        external.push(format!("fib saddr type local goto {service_chain}"));
        if !local.is_empty() {
            external.push(format!("goto {local_chain}"));
        }
    } else {
        external.push("jump mark-for-masquerade".to_string());
        external.push(format!("goto {service_chain}"));
    }
    t.chains.insert(
        external_chain.clone(),
        Chain {
            hook: None,
            rules: external,
        },
    );
    let no_local = svc.external_local && local.is_empty();
    for ip in &external_ips {
        let key = element_key(ip, svc.protocol, svc.port);
        map(
            t,
            format!("service-ips-{s}"),
            key.clone(),
            format!("goto {external_chain}"),
        );
        if no_local {
            map(
                t,
                format!("no-endpoint-services-{s}"),
                key,
                "drop".to_string(),
            );
        }
    }
    if let Some(np) = node_port {
        let key = format!("{proto} . {np}");
        map(
            t,
            format!("service-nodeports-{s}"),
            key.clone(),
            format!("goto {external_chain}"),
        );
        if no_local {
            map(
                t,
                format!("no-endpoint-nodeports-{s}"),
                key,
                "drop".to_string(),
            );
        }
    }
}

/// `loadBalancerSourceRanges`: traffic to the load-balancer IPs from outside the ranges is
/// dropped before DNAT. As in kube-proxy, the ranges apply per family: a family without a
/// range, or with a `/0`, is not guarded; and when a range holds a node address the
/// load-balancer IPs are allowed as sources too (a node that has the IP as a local address
/// reaches it from that address).
fn firewall(t: &mut Table, node: &Node, svc: &ServicePort, fam: Fam, base: &str) {
    let Some(ranges) = &svc.source_ranges else {
        return;
    };
    let ranges: Vec<&IpNet> = ranges
        .iter()
        .filter(|r| Fam::of(&r.addr()) == fam)
        .collect();
    if ranges.is_empty() || ranges.iter().any(|r| r.prefix_len() == 0) {
        return;
    }
    let lb_ips: Vec<&IpAddr> = svc
        .load_balancer_ips
        .iter()
        .filter(|ip| Fam::of(ip) == fam)
        .collect();
    if lb_ips.is_empty() {
        return;
    }
    let mut sources: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    if node
        .ips
        .iter()
        .any(|ip| ranges.iter().any(|r| r.contains(ip)))
    {
        sources.extend(lb_ips.iter().map(ToString::to_string));
    }
    let name = chain_name("firewall", base);
    t.chains.insert(
        name.clone(),
        Chain {
            hook: None,
            rules: vec![format!(
                "{} saddr != {{ {} }} drop",
                fam.proto(),
                sources.join(", ")
            )],
        },
    );
    if let Some(map) = t.sets.get_mut(&format!("firewall-ips-{}", fam.suffix())) {
        for ip in lb_ips {
            map.elements.insert(
                element_key(ip, svc.protocol, svc.port),
                format!("goto {name}"),
            );
        }
    }
}

/// Up to this many endpoints, a policy chain picks one with a cascade of rules; above, with an
/// anonymous verdict map.
pub const CASCADE_MAX: usize = 32;

/// The rules that send a new connection to one of `chains` at random, each equally likely.
///
/// kube-proxy uses one anonymous verdict map per policy chain (`numgen random mod N vmap {…}`).
/// The kernel looks anonymous sets up by walking a table's list of sets, so a full sync with
/// one per service grows with the square of the services: 54 s for 4k services here, against
/// 4 s with this cascade. The cascade is iptables-mode kube-proxy's: rule `i` takes the
/// connection with probability 1/(N-i), which makes every endpoint equally likely, at the cost
/// of up to N-1 rule evaluations on the first packet of a connection only (NAT rules see no
/// other). Services larger than [`CASCADE_MAX`] keep the map, which bounds that cost.
fn spread(chains: &[String]) -> Vec<String> {
    let n = chains.len();
    if n > CASCADE_MAX {
        let targets: Vec<String> = chains
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : goto {c}"))
            .collect();
        return vec![format!(
            "numgen random mod {n} vmap {{ {} }}",
            targets.join(", ")
        )];
    }
    let mut rules: Vec<String> = chains[..n.saturating_sub(1)]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("numgen random mod {} 0 goto {c}", n - i))
        .collect();
    rules.extend(chains.last().map(|c| format!("goto {c}")));
    rules
}

fn port_label(svc: &ServicePort) -> String {
    if svc.port_name.is_empty() {
        svc.port.to_string()
    } else {
        svc.port_name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges_guard_only_the_families_they_name() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let svc = |ranges: &[&str]| ServicePort {
            namespace: "ns".into(),
            name: "lb".into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            cluster_ips: vec![ip("10.96.0.1"), ip("fd00::1")],
            external_ips: Vec::new(),
            load_balancer_ips: vec![ip("203.0.113.1"), ip("2001:db8:ff::1")],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            source_ranges: Some(ranges.iter().map(|r| r.parse().unwrap()).collect()),
            endpoints: vec![Endpoint {
                ip: ip("10.244.0.5"),
                port: 80,
                ready: true,
                serving: true,
                terminating: false,
                local: true,
            }],
        };
        let guarded = |ranges: &[&str]| {
            let t = plan(&Node::default(), &[svc(ranges)]);
            (
                t.sets["firewall-ips-v4"].elements.len(),
                t.sets["firewall-ips-v6"].elements.len(),
            )
        };
        assert_eq!(guarded(&["198.51.100.0/24"]), (1, 0));
        assert_eq!(guarded(&["198.51.100.0/24", "2001:db8:1::/48"]), (1, 1));
        assert_eq!(guarded(&["0.0.0.0/0", "2001:db8:1::/48"]), (0, 1));
        assert_eq!(guarded(&[]), (0, 0));
    }

    #[test]
    fn spread_cascades_then_falls_back_to_a_map() {
        let chains = |n: usize| (0..n).map(|i| format!("e{i}")).collect::<Vec<_>>();
        assert_eq!(spread(&chains(1)), ["goto e0"]);
        assert_eq!(
            spread(&chains(3)),
            [
                "numgen random mod 3 0 goto e0",
                "numgen random mod 2 0 goto e1",
                "goto e2"
            ]
        );
        assert_eq!(spread(&chains(CASCADE_MAX)).len(), CASCADE_MAX);
        let big = spread(&chains(CASCADE_MAX + 1));
        assert_eq!(big.len(), 1);
        assert!(big[0].starts_with("numgen random mod 33 vmap { 0 : goto e0, "));
    }

    #[test]
    fn chain_names_are_stable_readable_and_bounded() {
        let a = chain_name("service", "v4/ns/web/tcp/http");
        assert!(
            a.starts_with("service-") && a.ends_with("-v4/ns/web/tcp/http"),
            "{a}"
        );
        assert_eq!(a, chain_name("service", "v4/ns/web/tcp/http"));
        assert_ne!(a, chain_name("service", "v4/ns/web/tcp/https"));
        assert!(chain_name("endpoint", &"x".repeat(400)).len() <= 237);
        let (mapped, hex) = (
            chain_name("endpoint", "v6/ns/web/tcp/http__::ffff:1.2.3.4/80"),
            chain_name("endpoint", "v6/ns/web/tcp/http__::ffff:1:2:3:4/80"),
        );
        assert_ne!(mapped, hex, "no ':' in names, and still two chains");
        assert!(!mapped.contains(':'), "{mapped}");
        // A port name the API would refuse still makes a valid, bounded name.
        let odd = chain_name("service", &format!("v4/ns/web/tcp/{}", "é ;".repeat(100)));
        assert!(odd.len() <= 237 && odd.is_ascii(), "{odd}");
        assert!(!odd.contains(' ') && !odd.contains(';'), "{odd}");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let e = |ready, serving, terminating| Endpoint {
            ip: "10.0.0.1".parse().unwrap(),
            port: 80,
            ready,
            serving,
            terminating,
            local: true,
        };
        let (r, t) = (e(true, true, false), e(false, true, true));
        assert_eq!(usable(&[&r, &t]), std::slice::from_ref(&r));
        assert_eq!(usable(&[&t]), std::slice::from_ref(&t));
        assert!(usable(&[&e(false, false, true)]).is_empty());
    }
}
