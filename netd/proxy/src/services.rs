//! Discovery's snapshot to the planner's [`ServicePort`]s, by kube-proxy's rules for which
//! Services and endpoints count.
//!
//! - A Service without a cluster IP (headless, ExternalName) is not proxied.
//! - An endpoint belongs to a Service port when its slice names the same port name and
//!   protocol; its first address is used, and an address seen in two slices counts once (the
//!   copy that is not terminating, when one is).
//! - `ready` and `serving` default to true when unset, `terminating` to false.
//! - `externalTrafficPolicy: Local` applies only to services reachable from outside (NodePort,
//!   LoadBalancer, or with externalIPs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use discovery::ClusterSnapshot;
use discovery::model::{self, AddressType, ServiceType};
use ipnet::IpNet;

use crate::health::ServiceHealth;
use crate::{Endpoint, Protocol, ServicePort};

/// What the snapshot says about the Service ports, and what in it could not be used.
#[derive(Debug, Default)]
pub struct Mapped {
    pub ports: Vec<ServicePort>,
    /// One line per problem, naming the object and the field.
    pub warnings: Vec<String>,
}

fn protocol(p: model::Protocol) -> Protocol {
    match p {
        model::Protocol::Tcp => Protocol::Tcp,
        model::Protocol::Udp => Protocol::Udp,
        model::Protocol::Sctp => Protocol::Sctp,
    }
}

/// The Service ports of `snap` as the proxy on `node_name` sees them. The snapshot must have
/// been read with [`discovery::Fields::TRAFFIC`]; without it, every service is ClusterIP-only.
pub fn service_ports(snap: &ClusterSnapshot, node_name: &str) -> Mapped {
    let mut out = Mapped::default();
    for svc in snap.objects.services.values() {
        if svc.type_ == ServiceType::ExternalName || svc.cluster_ips.is_empty() {
            continue;
        }
        let default = model::ServiceTraffic::default();
        let traffic = svc.traffic.as_deref().unwrap_or(&default);
        for problem in &traffic.problems {
            out.warnings
                .push(format!("Service {}: {problem}", svc.key()));
        }
        let externally_reachable =
            matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer)
                || !traffic.external_ips.is_empty();
        let source_ranges = (!traffic.source_ranges.is_empty()).then(|| {
            let mut ranges = Vec::new();
            for (i, text) in traffic.source_ranges.iter().enumerate() {
                match text.trim().parse::<IpNet>() {
                    Ok(net) => ranges.push(net.trunc()),
                    Err(_) => out.warnings.push(format!(
                        "Service {}: spec.loadBalancerSourceRanges[{i}] {text:?} is not a CIDR; \
                         ignored",
                        svc.key()
                    )),
                }
            }
            ranges
        });
        let slices = snap.slices_of(svc);
        for port in &svc.ports {
            let mut seen: BTreeMap<(IpAddr, u16), usize> = BTreeMap::new();
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for slice in slices {
                if slice.address_type == AddressType::Fqdn {
                    continue;
                }
                let Some(target) = slice
                    .ports
                    .iter()
                    .find(|p| p.name == port.name && p.protocol == port.protocol)
                    .and_then(|p| p.port)
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let Some(ip) = ep.addresses.first().copied() else {
                        continue;
                    };
                    let endpoint = Endpoint {
                        ip,
                        port: target,
                        ready: ep.is_ready(),
                        serving: ep.serving != Some(false),
                        terminating: ep.terminating == Some(true),
                        local: ep.node_name.as_deref() == Some(node_name),
                    };
                    match seen.get(&(ip, target)) {
                        // A reused address: the copy that is not terminating wins.
                        Some(&i) if endpoints[i].terminating && !endpoint.terminating => {
                            endpoints[i] = endpoint;
                        }
                        Some(_) => {}
                        None => {
                            seen.insert((ip, target), endpoints.len());
                            endpoints.push(endpoint);
                        }
                    }
                }
            }
            endpoints.sort_by_key(|e: &Endpoint| (e.ip, e.port));
            out.ports.push(ServicePort {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                port_name: port.name.clone(),
                protocol: protocol(port.protocol),
                port: port.port,
                node_port: port.node_port,
                cluster_ips: svc.cluster_ips.clone(),
                external_ips: traffic.external_ips.clone(),
                load_balancer_ips: traffic.load_balancer_ips.clone(),
                affinity_timeout: traffic.affinity_timeout,
                external_local: traffic.external_local && externally_reachable,
                internal_local: traffic.internal_local,
                source_ranges: source_ranges.clone(),
                endpoints,
            });
        }
    }
    out
}

/// The health check ports this node serves: one per LoadBalancer Service with
/// `externalTrafficPolicy: Local` and a `healthCheckNodePort`, with its ready endpoints on
/// `node_name`.
pub fn health_checks(snap: &ClusterSnapshot, node_name: &str) -> BTreeMap<u16, ServiceHealth> {
    let mut out = BTreeMap::new();
    for svc in snap.objects.services.values() {
        let Some(traffic) = svc.traffic.as_deref() else {
            continue;
        };
        let Some(port) = traffic.health_check_node_port else {
            continue;
        };
        if svc.type_ != ServiceType::LoadBalancer || !traffic.external_local {
            continue;
        }
        let local: BTreeSet<IpAddr> = snap
            .slices_of(svc)
            .iter()
            .flat_map(|slice| &slice.endpoints)
            .filter(|ep| ep.is_ready() && ep.node_name.as_deref() == Some(node_name))
            .filter_map(|ep| ep.addresses.first().copied())
            .collect();
        out.insert(
            port,
            ServiceHealth {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                local_endpoints: local.len(),
            },
        );
    }
    out
}

/// One UDP conntrack entry: the original direction's tuple, and the source of the reply
/// direction (the endpoint, when the entry was DNATed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UdpEntry {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub reply_src: IpAddr,
}

/// Parses `conntrack -L -p udp` output; lines that are not UDP entries are skipped.
pub fn parse_conntrack(text: &str) -> Vec<UdpEntry> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "udp" {
                return None;
            }
            let (mut src, mut dst, mut sport, mut dport, mut reply_src) =
                (None, None, None, None, None);
            for w in words {
                let (k, v) = w.split_once('=').unwrap_or((w, ""));
                match k {
                    "src" if src.is_none() => src = v.parse().ok(),
                    "src" if reply_src.is_none() => reply_src = v.parse().ok(),
                    "dst" if dst.is_none() => dst = v.parse().ok(),
                    "sport" if sport.is_none() => sport = v.parse().ok(),
                    "dport" if dport.is_none() => dport = v.parse().ok(),
                    _ => {}
                }
            }
            Some(UdpEntry {
                src: src?,
                dst: dst?,
                sport: sport?,
                dport: dport?,
                reply_src: reply_src?,
            })
        })
        .collect()
}

/// The UDP entries to delete, as kube-proxy's `CleanStaleEntries` decides: an entry to a
/// service address and port (or to a node address and a NodePort) whose reply does not come
/// from a serving endpoint of that port. UDP has no connection to end, so without this a
/// client that keeps its source port keeps reaching an endpoint that is gone, or (when the
/// service had no endpoint) keeps matching the entry of its refused first packet, which skips
/// DNAT. It looks at the entries themselves, so it also covers what changed while the proxy
/// was not running.
pub fn stale_udp_entries<'e>(
    entries: &'e [UdpEntry],
    ports: &[ServicePort],
    node_ips: &[IpAddr],
) -> Vec<&'e UdpEntry> {
    let mut serving: BTreeMap<(IpAddr, u16), BTreeSet<IpAddr>> = BTreeMap::new();
    let mut node_ports: BTreeMap<u16, BTreeSet<IpAddr>> = BTreeMap::new();
    for p in ports.iter().filter(|p| p.protocol == Protocol::Udp) {
        let eps: BTreeSet<IpAddr> = p
            .endpoints
            .iter()
            .filter(|e| e.ready || (e.serving && e.terminating))
            .map(|e| e.ip)
            .collect();
        for ip in p
            .cluster_ips
            .iter()
            .chain(&p.external_ips)
            .chain(&p.load_balancer_ips)
        {
            serving.entry((*ip, p.port)).or_default().extend(&eps);
        }
        if let Some(np) = p.node_port {
            node_ports.entry(np).or_default().extend(&eps);
        }
    }
    entries
        .iter()
        .filter(|e| {
            let eps = serving.get(&(e.dst, e.dport)).or_else(|| {
                node_ips
                    .contains(&e.dst)
                    .then(|| node_ports.get(&e.dport))
                    .flatten()
            });
            eps.is_some_and(|eps| !eps.contains(&e.reply_src))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use discovery::{Fields, ObjectStore};

    use super::*;

    fn snapshot(yaml: &str) -> ClusterSnapshot {
        let parsed =
            discovery::manifests::parse_manifest_with(Path::new("t.yaml"), yaml, Fields::TRAFFIC);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let mut store = ObjectStore::default();
        for obj in parsed.objects {
            store.insert(obj);
        }
        ClusterSnapshot::new(store, 1, 1, true)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, protocol: TCP, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: TCP}
endpoints:
- {addresses: [10.244.0.11, 10.244.0.99], nodeName: node-a}
- {addresses: [10.244.0.10], nodeName: node-b, conditions: {ready: false, terminating: true}}
- {addresses: [10.244.0.12], nodeName: node-b, conditions: {ready: false, terminating: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- {addresses: [10.244.0.11], nodeName: node-a}
- {addresses: [10.244.0.12], nodeName: node-a}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-c, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: FQDN
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- {addresses: [web.example]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: inside, namespace: shop}
spec: {clusterIP: 10.96.0.11, externalTrafficPolicy: Local, ports: [{port: 80}],
       loadBalancerSourceRanges: [10.0.0.0/8, not-a-cidr]}
"#;

    #[test]
    fn ports_endpoints_and_locality_follow_kube_proxy() {
        let mapped = service_ports(&snapshot(CLUSTER), "node-a");
        let names: Vec<(&str, &str)> = mapped
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port_name.as_str()))
            .collect();
        // Headless and ExternalName services are not proxied.
        assert_eq!(names, [("inside", ""), ("web", "http"), ("web", "dns")]);
        let http = &mapped.ports[1];
        assert_eq!(http.node_port, Some(30080));
        assert!(http.external_local);
        // First address only, once across slices (the copy that is not terminating), the FQDN
        // slice ignored, sorted.
        let eps: Vec<(IpAddr, u16, bool, bool, bool)> = http
            .endpoints
            .iter()
            .map(|e| (e.ip, e.port, e.ready, e.terminating, e.local))
            .collect();
        assert_eq!(
            eps,
            [
                (ip("10.244.0.10"), 8080, false, true, false),
                (ip("10.244.0.11"), 8080, true, false, true),
                (ip("10.244.0.12"), 8080, true, false, true),
            ]
        );
        // Unset serving means serving, as in kube-proxy.
        assert!(http.endpoints.iter().all(|e| e.serving));
        // The slice's "dns" port is TCP; the service's is UDP: no endpoints.
        assert!(mapped.ports[2].endpoints.is_empty());
        // Local external policy means nothing for a service no one outside can reach.
        let inside = &mapped.ports[0];
        assert!(!inside.external_local);
        assert_eq!(
            inside.source_ranges,
            Some(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(mapped.warnings.len(), 1, "{:?}", mapped.warnings);
        assert!(
            mapped.warnings[0].contains("shop/inside")
                && mapped.warnings[0].contains("loadBalancerSourceRanges[1]"),
            "{:?}",
            mapped.warnings
        );
    }

    fn udp_port(node_port: Option<u16>, endpoints: &[&str]) -> ServicePort {
        ServicePort {
            namespace: "ns".into(),
            name: "dns".into(),
            port_name: "dns".into(),
            protocol: Protocol::Udp,
            port: 53,
            node_port,
            cluster_ips: vec![ip("10.96.0.10")],
            external_ips: vec![ip("192.0.2.50")],
            load_balancer_ips: Vec::new(),
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            source_ranges: None,
            endpoints: endpoints
                .iter()
                .map(|e| Endpoint {
                    ip: ip(e),
                    port: 5353,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: true,
                })
                .collect(),
        }
    }

    const CONNTRACK: &str = "\
udp      17 25 src=10.244.0.20 dst=10.96.0.10 sport=40000 dport=53 src=10.244.0.1 dst=10.244.0.20 sport=5353 dport=40000 mark=0 use=1
udp      17 25 src=10.244.0.21 dst=10.96.0.10 sport=40001 dport=53 src=10.244.0.2 dst=10.244.0.21 sport=5353 dport=40001 mark=0 use=1
udp      17 28 src=10.244.0.22 dst=10.96.0.10 sport=40002 dport=53 [UNREPLIED] src=10.96.0.10 dst=10.244.0.22 sport=53 dport=40002 mark=0 use=1
udp      17 25 src=198.51.100.9 dst=192.0.2.1 sport=5000 dport=30053 src=10.244.0.9 dst=192.0.2.1 sport=5353 dport=5000 mark=0 use=1
udp      17 25 src=10.244.0.20 dst=10.96.0.11 sport=40000 dport=53 src=10.244.0.7 dst=10.244.0.20 sport=53 dport=40000 mark=0 use=1
udp      17 25 src=10.244.0.20 dst=192.0.2.50 sport=1 dport=54 src=10.244.0.7 dst=10.244.0.20 sport=54 dport=1 mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.244.0.20 dst=10.96.0.10 sport=1 dport=53 src=10.244.0.9 dst=10.244.0.20 sport=53 dport=1 [ASSURED] mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 7 flow entries have been shown.
";

    #[test]
    fn conntrack_listing_parses_udp_entries_only() {
        let entries = parse_conntrack(CONNTRACK);
        assert_eq!(entries.len(), 6);
        assert_eq!(
            entries[2],
            UdpEntry {
                src: ip("10.244.0.22"),
                dst: ip("10.96.0.10"),
                sport: 40002,
                dport: 53,
                reply_src: ip("10.96.0.10"),
            }
        );
    }

    #[test]
    fn stale_udp_entries_are_those_not_answered_by_a_serving_endpoint() {
        let entries = parse_conntrack(CONNTRACK);
        let ports = [udp_port(Some(30053), &["10.244.0.1"])];
        let stale: Vec<(u16, IpAddr)> = stale_udp_entries(&entries, &ports, &[ip("192.0.2.1")])
            .iter()
            .map(|e| (e.sport, e.reply_src))
            .collect();
        assert_eq!(
            stale,
            [
                // To an endpoint that no longer serves.
                (40001, ip("10.244.0.2")),
                // A refused packet's entry, now that there is an endpoint.
                (40002, ip("10.96.0.10")),
                // Through the NodePort, to an endpoint that no longer serves.
                (5000, ip("10.244.0.9")),
            ],
            "entries to other addresses or ports, and TCP, are left alone"
        );
        // Without a node address the NodePort entry is not the proxy's.
        assert_eq!(stale_udp_entries(&entries, &ports, &[]).len(), 2);
        // A terminating endpoint that still serves keeps its flows.
        let mut draining = udp_port(None, &["10.244.0.1", "10.244.0.2"]);
        draining.endpoints[1].ready = false;
        draining.endpoints[1].terminating = true;
        assert_eq!(stale_udp_entries(&entries, &[draining], &[]).len(), 1);
    }
}
