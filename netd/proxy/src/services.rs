//! Discovery's snapshot to the planner's [`ServicePort`]s, by kube-proxy's rules for which
//! Services and endpoints count.
//!
//! - A Service without a cluster IP (headless, ExternalName) is not proxied.
//! - An endpoint belongs to a Service port when its slice names the same port name and
//!   protocol; its first address is used, and an address seen in two slices counts once.
//! - `ready` and `serving` default to true when unset, `terminating` to false.
//! - `externalTrafficPolicy: Local` applies only to services reachable from outside (NodePort,
//!   LoadBalancer, or with externalIPs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use discovery::ClusterSnapshot;
use discovery::model::{self, AddressType, ServiceType};
use ipnet::IpNet;

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
                         it allows no one",
                        svc.key()
                    )),
                }
            }
            ranges
        });
        let slices = snap.slices_of(svc);
        for port in &svc.ports {
            let mut seen = BTreeSet::new();
            let mut endpoints = Vec::new();
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
                    if !seen.insert((ip, target)) {
                        continue;
                    }
                    let ready = ep.is_ready();
                    endpoints.push(Endpoint {
                        ip,
                        port: target,
                        ready,
                        serving: ep.serving.unwrap_or(ready),
                        terminating: ep.terminating == Some(true),
                        local: ep.node_name.as_deref() == Some(node_name),
                    });
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

/// What one UDP conntrack deletion matches: flows to `dst` (a service address) or, without
/// one, to the NodePort `port` on any node address; to any endpoint, or only to `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlow {
    pub dst: Option<IpAddr>,
    pub port: u16,
    pub endpoint: Option<IpAddr>,
}

/// The UDP conntrack entries to delete after moving from `old` to `new`, as kube-proxy does:
/// UDP has no connection to end, so without this a client keeps sending to an endpoint that is
/// gone, or (for a service that had no endpoint) keeps hitting the entry of its refused first
/// packet, for as long as it keeps sending.
///
/// - An endpoint that served a UDP port and no longer does: its flows through every service
///   address and the NodePort.
/// - A UDP port that had no endpoint to serve it and now has: every flow to it.
/// - A UDP port that is gone: every flow to it.
pub fn stale_udp_flows(old: &[ServicePort], new: &[ServicePort]) -> BTreeSet<StaleFlow> {
    let (old, new) = (udp_ports(old), udp_ports(new));
    let serving = |p: &ServicePort| -> BTreeSet<IpAddr> {
        p.endpoints
            .iter()
            .filter(|e| e.ready || (e.serving && e.terminating))
            .map(|e| e.ip)
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut flush = |p: &ServicePort, endpoint: Option<IpAddr>| {
        for dst in p
            .cluster_ips
            .iter()
            .chain(&p.external_ips)
            .chain(&p.load_balancer_ips)
        {
            out.insert(StaleFlow {
                dst: Some(*dst),
                port: p.port,
                endpoint,
            });
        }
        if let Some(np) = p.node_port {
            out.insert(StaleFlow {
                dst: None,
                port: np,
                endpoint,
            });
        }
    };
    for (k, now) in &new {
        let before = old.get(k).map(|p| serving(p)).unwrap_or_default();
        let after = serving(now);
        if before.is_empty() && !after.is_empty() {
            flush(now, None);
        }
        for gone in before.difference(&after) {
            flush(now, Some(*gone));
        }
    }
    for (k, was) in &old {
        if !new.contains_key(k) {
            flush(was, None);
        }
    }
    out
}

type PortKey<'a> = (&'a str, &'a str, &'a str);

/// The UDP Service ports by namespace, name and port name.
fn udp_ports(ports: &[ServicePort]) -> BTreeMap<PortKey<'_>, &ServicePort> {
    ports
        .iter()
        .filter(|p| p.protocol == Protocol::Udp)
        .map(|p| {
            (
                (p.namespace.as_str(), p.name.as_str(), p.port_name.as_str()),
                p,
            )
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
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- {addresses: [10.244.0.11], nodeName: node-a}
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
        // First address only, once across slices, the FQDN slice ignored, sorted.
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
            ]
        );
        // Unset serving follows ready.
        assert!(!http.endpoints[0].serving && http.endpoints[1].serving);
        // The slice's "dns" port is TCP; the service's is UDP: no endpoints.
        assert!(mapped.ports[2].endpoints.is_empty());
        // Local external policy means nothing for a service no one outside can reach.
        let inside = &mapped.ports[0];
        assert!(!inside.external_local);
        assert_eq!(
            inside.source_ranges,
            Some(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(mapped.warnings.len(), 1);
        assert!(
            mapped.warnings[0].contains("shop/inside")
                && mapped.warnings[0].contains("loadBalancerSourceRanges[1]"),
            "{:?}",
            mapped.warnings
        );
    }

    fn udp_port(name: &str, node_port: Option<u16>, endpoints: &[&str]) -> ServicePort {
        ServicePort {
            namespace: "ns".into(),
            name: name.into(),
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

    fn flow(dst: Option<&str>, port: u16, endpoint: Option<&str>) -> StaleFlow {
        StaleFlow {
            dst: dst.map(ip),
            port,
            endpoint: endpoint.map(ip),
        }
    }

    #[test]
    fn stale_udp_flows_are_those_of_removed_endpoints_new_endpoints_and_removed_ports() {
        let before = [udp_port("dns", Some(30053), &["10.244.0.1", "10.244.0.2"])];
        let unchanged = stale_udp_flows(&before, &before);
        assert!(unchanged.is_empty());

        let one_gone = [udp_port("dns", Some(30053), &["10.244.0.2"])];
        assert_eq!(
            stale_udp_flows(&before, &one_gone),
            BTreeSet::from([
                flow(Some("10.96.0.10"), 53, Some("10.244.0.1")),
                flow(Some("192.0.2.50"), 53, Some("10.244.0.1")),
                flow(None, 30053, Some("10.244.0.1")),
            ])
        );

        let none = [udp_port("dns", None, &[])];
        let first = [udp_port("dns", None, &["10.244.0.3"])];
        assert_eq!(
            stale_udp_flows(&none, &first),
            BTreeSet::from([
                flow(Some("10.96.0.10"), 53, None),
                flow(Some("192.0.2.50"), 53, None),
            ])
        );

        assert_eq!(
            stale_udp_flows(&first, &[]),
            BTreeSet::from([
                flow(Some("10.96.0.10"), 53, None),
                flow(Some("192.0.2.50"), 53, None),
            ])
        );

        let mut tcp = before.clone();
        tcp[0].protocol = Protocol::Tcp;
        assert!(
            stale_udp_flows(&tcp, &[]).is_empty(),
            "TCP connections end on their own"
        );
    }
}
