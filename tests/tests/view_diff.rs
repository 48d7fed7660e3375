//! The incremental view against the full build. The server updates its view from the previous
//! one ([`DnsView::update`]), rewriting only what a change touched; a full build
//! ([`DnsView::build`]) works everything out from the snapshot alone. After every step of long
//! random sequences of changes (services of every kind appearing, changing and going, endpoints
//! shared between services, namespaces and pods coming and going, ExternalName chains into the
//! zone), both must hold exactly the same records, and every case of the DNS case table must get
//! the same reply bytes from both. Seeded, so a failure reproduces.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use clusterdns::view::{DnsView, PodMode, ViewConfig};
use clusterdns::wire::wire_to_string;
use clusterdns::{Transport, handle};
use discovery::ClusterSnapshot;
use discovery::manifests::ManifestsDir;
use discovery::model::{
    AddressType, Endpoint, EndpointPort, EndpointSlice, IpFamily, Object, Pod, Protocol, Service,
    ServicePort, ServiceType, TargetRef,
};
use discovery::snapshot::ObjectStore;
use integration::{case_query, fixture_cluster, load_cases};

const NAMESPACES: &[&str] = &["a", "b", "c", "kube-system"];
const SERVICES: &[&str] = &["web", "db", "api", "kube-dns", "cache"];

/// Asserts that `updated` (from an update) and a full build of `snap` hold the same records.
fn assert_same(updated: &DnsView, snap: &ClusterSnapshot, cfg: &ViewConfig, step: &str) {
    let full = DnsView::build(snap, cfg).expect("full build");
    let (a, b) = (updated.dump(), full.dump());
    if a != b {
        let names: BTreeSet<_> = a.keys().chain(b.keys()).collect();
        let diffs: Vec<String> = names
            .into_iter()
            .filter(|n| a.get(*n) != b.get(*n))
            .take(5)
            .map(|n| {
                format!(
                    "{} (updated {}, built {})",
                    wire_to_string(n),
                    a.get(n).map_or("absent", |_| "present"),
                    b.get(n).map_or("absent", |_| "present"),
                )
            })
            .collect();
        panic!("{step}: the updated view differs from a full build at {diffs:?}");
    }
    assert_eq!(updated.len(), full.len(), "{step}: name count");
    assert_eq!(
        updated.len(),
        a.len(),
        "{step}: name count against the records"
    );
    assert_eq!(updated.pod_ips, full.pod_ips, "{step}: pod addresses");
    for (u, f) in updated.zones.iter().zip(&full.zones) {
        assert_eq!(u.soa_tail, f.soa_tail, "{step}: SOA");
    }
    assert_eq!(
        (updated.synced, updated.generation),
        (full.synced, full.generation),
        "{step}: flags"
    );
}

struct World {
    rng: fastrand::Rng,
    store: ObjectStore,
    generation: u64,
}

impl World {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.usize(..from.len())]
    }

    /// A small pool, so that addresses are shared between services and pods.
    fn ip(&mut self) -> IpAddr {
        if self.rng.u8(..5) == 0 {
            format!("fd00::{:x}", self.rng.u8(1..6))
                .parse()
                .expect("v6")
        } else {
            format!("10.0.{}.{}", self.rng.u8(..2), self.rng.u8(1..8))
                .parse()
                .expect("v4")
        }
    }

    fn service(&mut self) -> Service {
        let namespace = self.pick(NAMESPACES).to_string();
        let name = self.pick(SERVICES).to_string();
        let kind = self.rng.u8(..6);
        let mut svc = Service {
            namespace,
            name,
            type_: ServiceType::ClusterIp,
            cluster_ips: Vec::new(),
            headless: false,
            ip_families: vec![IpFamily::V4],
            ports: Vec::new(),
            external_name: None,
            publish_not_ready_addresses: self.rng.u8(..8) == 0,
            traffic: None,
        };
        match kind {
            0 => {
                svc.type_ = ServiceType::ExternalName;
                let target = match self.rng.u8(..6) {
                    0 => "example.com".to_string(),
                    1 => "10.1.2.3".to_string(),
                    2 => "bad..name".to_string(),
                    3 => format!(
                        "1-2-3-4.{}.pod.cluster.local",
                        self.pick(NAMESPACES).to_uppercase()
                    ),
                    _ => format!(
                        "{}.{}.svc.Cluster.Local",
                        self.pick(SERVICES),
                        self.pick(NAMESPACES)
                    ),
                };
                svc.external_name = Some(target);
                return svc;
            }
            1 | 2 => svc.headless = true,
            _ => {
                svc.cluster_ips.push(self.ip());
                if self.rng.bool() {
                    svc.cluster_ips.push(self.ip());
                }
            }
        }
        for _ in 0..self.rng.usize(..3) {
            svc.ports.push(ServicePort {
                name: self.pick(&["", "http", "dns", "metrics"]).to_string(),
                protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][self.rng.usize(..3)],
                port: self.rng.u16(1..5),
                node_port: None,
            });
        }
        svc
    }

    fn slice(&mut self) -> EndpointSlice {
        let namespace = self.pick(NAMESPACES).to_string();
        let service = self.pick(SERVICES);
        let name = format!("{service}-{}", self.rng.u8(..3));
        let mut endpoints = Vec::new();
        for _ in 0..self.rng.usize(..4) {
            let addresses = (0..1 + self.rng.usize(..2)).map(|_| self.ip()).collect();
            endpoints.push(Endpoint {
                addresses,
                hostname: match self.rng.u8(..4) {
                    0 => Some(format!("host-{}", self.rng.u8(..3))),
                    _ => None,
                },
                ready: [None, Some(true), Some(false)][self.rng.usize(..3)],
                serving: None,
                terminating: None,
                target_ref: self.rng.bool().then(|| TargetRef {
                    kind: "Pod".into(),
                    namespace: "x".into(),
                    name: format!("pod-{}", self.rng.u8(..4)),
                }),
                node_name: None,
            });
        }
        EndpointSlice {
            namespace,
            name,
            service: (self.rng.u8(..10) > 0).then(|| service.to_string()),
            address_type: AddressType::V4,
            ports: (0..self.rng.usize(..3))
                .map(|_| EndpointPort {
                    name: self.pick(&["", "http", "dns"]).to_string(),
                    protocol: Protocol::Tcp,
                    port: (self.rng.u8(..6) > 0).then(|| self.rng.u16(1..5)),
                })
                .collect(),
            endpoints,
        }
    }

    fn pod(&mut self) -> Pod {
        Pod {
            namespace: self.pick(NAMESPACES).to_string(),
            name: format!("pod-{}", self.rng.u8(..6)),
            ips: (0..self.rng.usize(..3)).map(|_| self.ip()).collect(),
            policy: None,
        }
    }

    /// One random change to the objects.
    fn change(&mut self) {
        let s = &mut self.store;
        match self.rng.u8(..12) {
            0..=2 => {
                let svc = self.service();
                self.store.insert(Object::Service(svc));
            }
            3 => {
                if let Some(k) = nth_key(&mut self.rng, s.services.keys()) {
                    s.services.remove(&k);
                }
            }
            4..=6 => {
                let slice = self.slice();
                self.store.insert(Object::EndpointSlice(slice));
            }
            7 => {
                if let Some(k) = nth_key(&mut self.rng, s.endpoint_slices.keys()) {
                    s.endpoint_slices.remove(&k);
                }
            }
            8 => {
                let ns = self.pick(NAMESPACES).to_string();
                if !self.store.namespaces.remove(&ns) {
                    self.store.namespaces.insert(ns);
                }
            }
            9 => {
                let pod = self.pod();
                self.store.insert(Object::Pod(pod));
            }
            10 => {
                if let Some(k) = nth_key(&mut self.rng, s.pods.keys()) {
                    s.pods.remove(&k);
                }
            }
            _ => {
                // The same values in new allocations: not a change.
                let keys: Vec<_> = s.services.keys().cloned().collect();
                for k in keys {
                    let copy = Arc::new((*s.services[&k]).clone());
                    s.services.insert(k, copy);
                }
            }
        }
    }

    fn snapshot(&mut self) -> ClusterSnapshot {
        self.generation += 1;
        ClusterSnapshot::new(
            self.store.clone(),
            self.generation,
            self.generation as u32,
            self.generation > 3,
        )
    }
}

fn nth_key<'a, K: Clone + 'a>(
    rng: &mut fastrand::Rng,
    keys: impl ExactSizeIterator<Item = &'a K>,
) -> Option<K> {
    let n = keys.len();
    if n == 0 {
        return None;
    }
    let i = rng.usize(..n);
    keys.into_iter().nth(i).cloned()
}

fn run_random(seed: u64, steps: usize, cfg: &ViewConfig) {
    let mut w = World {
        rng: fastrand::Rng::with_seed(seed),
        store: ObjectStore::default(),
        generation: 0,
    };
    let mut snap = w.snapshot();
    let mut view = DnsView::build(&snap, cfg).expect("view");
    for step in 0..steps {
        for _ in 0..1 + w.rng.usize(..3) {
            w.change();
        }
        let next = w.snapshot();
        view = view.update(&snap, &next);
        snap = next;
        assert_same(&view, &snap, cfg, &format!("seed {seed} step {step}"));
    }
    // Everything goes: only the fixed names are left, as in a view of nothing.
    let empty = ClusterSnapshot::new(ObjectStore::default(), w.generation + 1, 1, true);
    let view = view.update(&snap, &empty);
    assert_same(&view, &empty, cfg, &format!("seed {seed} emptied"));
}

#[test]
fn updates_match_full_builds_verified_pods() {
    run_random(1, 1500, &ViewConfig::default());
}

#[test]
fn updates_match_full_builds_every_option() {
    let configs = [
        ViewConfig {
            pods: PodMode::Insecure,
            endpoint_pod_names: true,
            ..ViewConfig::default()
        },
        ViewConfig {
            pods: PodMode::Disabled,
            namespaces: Some(["a".to_string(), "kube-system".to_string()].into()),
            ..ViewConfig::default()
        },
        ViewConfig {
            zone: "Example.Test".into(),
            dns_service: ("b".into(), "db".into()),
            fallback_ns_ips: vec!["10.9.9.9".parse().expect("ip")],
            ..ViewConfig::default()
        },
    ];
    for (i, cfg) in configs.iter().enumerate() {
        run_random(100 + i as u64, 700, cfg);
    }
}

/// The fixture cluster put together one object at a time, in a shuffled order, then taken apart
/// again: the same records as a full build at every step, and at the end the same reply bytes
/// for every case of the table.
#[test]
fn case_table_replies_match_after_one_object_at_a_time() {
    let mut dir = ManifestsDir::open(fixture_cluster()).expect("fixture dir");
    assert!(dir.scan().errors.is_empty());
    let all = dir.objects();
    let mut objects: Vec<Object> = Vec::new();
    objects.extend(all.namespaces.iter().map(|n| {
        Object::Namespace(discovery::model::Namespace {
            name: n.clone(),
            labels: Default::default(),
        })
    }));
    objects.extend(
        all.services
            .values()
            .map(|s| Object::Service((**s).clone())),
    );
    objects.extend(
        all.endpoint_slices
            .values()
            .map(|s| Object::EndpointSlice((**s).clone())),
    );
    objects.extend(all.pods.values().map(|p| Object::Pod((**p).clone())));
    fastrand::Rng::with_seed(7).shuffle(&mut objects);

    let cfg = ViewConfig::default();
    let mut store = ObjectStore::default();
    let mut snap = ClusterSnapshot::new(store.clone(), 1, 1, true);
    let mut view = DnsView::build(&snap, &cfg).expect("view");
    for (i, obj) in objects.iter().enumerate() {
        store.insert(obj.clone());
        let next = ClusterSnapshot::new(store.clone(), i as u64 + 2, 42, true);
        view = view.update(&snap, &next);
        snap = next;
        assert_same(&view, &snap, &cfg, &format!("after adding object {i}"));
    }
    let full = DnsView::build(&snap, &cfg).expect("view");
    let cases = load_cases("contract.cases");
    assert!(cases.len() > 50, "the case table is there");
    for c in &cases {
        let q = case_query(c, 9);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        handle(&view, &q, Transport::Udp, &mut a);
        handle(&full, &q, Transport::Udp, &mut b);
        assert_eq!(a, b, "line {}: {} {}", c.line, c.qname, c.qtype);
    }

    for (i, obj) in objects.iter().enumerate() {
        let (kind, ns, name) = obj.identity();
        let key = discovery::model::ObjectKey::new(ns, name);
        match kind {
            "Namespace" => {
                store.namespaces.remove(name);
            }
            "Service" => {
                store.services.remove(&key);
            }
            "EndpointSlice" => {
                store.endpoint_slices.remove(&key);
            }
            _ => {
                store.pods.remove(&key);
            }
        }
        let next = ClusterSnapshot::new(store.clone(), 1000 + i as u64, 43, true);
        view = view.update(&snap, &next);
        snap = next;
        assert_same(&view, &snap, &cfg, &format!("after removing object {i}"));
    }
}

/// A headless service `svc-<i>` in `ns-<i % 10>` with five named endpoints and an SRV port.
fn big_service(i: u32) -> (Service, EndpointSlice) {
    let namespace = format!("ns-{}", i % 10);
    let name = format!("svc-{i}");
    let svc = Service {
        namespace: namespace.clone(),
        name: name.clone(),
        type_: ServiceType::ClusterIp,
        cluster_ips: Vec::new(),
        headless: true,
        ip_families: vec![IpFamily::V4],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
        }],
        external_name: None,
        publish_not_ready_addresses: false,
        traffic: None,
    };
    let endpoints = (0..5u32)
        .map(|e| {
            let n = i * 5 + e;
            Endpoint {
                addresses: vec![IpAddr::from([10, 128, (n >> 8) as u8, n as u8])],
                hostname: Some(format!("host-{e}")),
                ready: None,
                serving: None,
                terminating: None,
                target_ref: None,
                node_name: None,
            }
        })
        .collect();
    let slice = EndpointSlice {
        namespace,
        name: format!("{name}-abcde"),
        service: Some(name),
        address_type: AddressType::V4,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: Some(8080),
        }],
        endpoints,
    };
    (svc, slice)
}

/// A full build writes its records in chunks and frees each once it is copied into the shards;
/// a cluster whose records span many chunks must give the same view as the same cluster added
/// one service at a time (each update small enough for one chunk).
#[test]
fn a_full_build_over_many_arena_chunks_matches_one_service_at_a_time() {
    let cfg = ViewConfig::default();
    let mut store = ObjectStore::default();
    for ns in 0..10 {
        store.insert(Object::Namespace(discovery::model::Namespace {
            name: format!("ns-{ns}"),
            labels: Default::default(),
        }));
    }
    let mut snap = ClusterSnapshot::new(store.clone(), 1, 7, true);
    let mut view = DnsView::build(&snap, &cfg).expect("view");
    for i in 0..2000 {
        let (svc, slice) = big_service(i);
        store.insert(Object::Service(svc));
        store.insert(Object::EndpointSlice(slice));
        let next = ClusterSnapshot::new(store.clone(), u64::from(i) + 2, 7, true);
        view = view.update(&snap, &next);
        snap = next;
    }
    // 2000 services, 10k endpoints: 26k names, megabytes of records, many chunks.
    assert!(view.len() > 25_000, "{} names", view.len());
    assert_same(&view, &snap, &cfg, "2000 services added one at a time");
}
