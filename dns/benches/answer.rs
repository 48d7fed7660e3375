//! Criterion benchmarks of the query path and of building the view, on a synthetic cluster the
//! size of the shared harness's default (100 namespaces x 100 services, 5 endpoints each, every
//! 10th headless: 10k services, 50k endpoints).
//!
//!   cargo bench -p clusterdns --bench answer
//!
//! `view/build` is the first view of a cluster; `view/update ...` is what the server does for
//! every later snapshot: the view derived from the previous one, rewriting only what the change
//! touched (the diff of the two snapshots included).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use clusterdns::view::{DnsView, ViewConfig};
use clusterdns::{Transport, handle};
use criterion::{Criterion, criterion_group, criterion_main};
use discovery::model::{
    AddressType, Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, Service, ServicePort,
    ServiceType,
};
use discovery::{ClusterSnapshot, ObjectStore};

fn cluster(namespaces: u32, services: u32, endpoints: u32) -> ClusterSnapshot {
    let mut store = ObjectStore::default();
    let mut pod = 0u32;
    for n in 0..namespaces {
        let ns = format!("ns{n}");
        store.namespaces.insert(ns.clone());
        for s in 0..services {
            let name = format!("svc{s}");
            let headless = s % 10 == 9;
            let idx = n * services + s + 16;
            let cip = IpAddr::V4(Ipv4Addr::new(
                10,
                96 + (idx >> 16) as u8,
                (idx >> 8) as u8,
                idx as u8,
            ));
            let svc = Service {
                namespace: ns.clone(),
                name: name.clone(),
                type_: ServiceType::ClusterIp,
                cluster_ips: if headless { vec![] } else { vec![cip] },
                headless,
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
            let eps = (0..endpoints)
                .map(|_| {
                    pod += 1;
                    Endpoint {
                        addresses: vec![IpAddr::V4(Ipv4Addr::new(
                            10,
                            128 + (pod >> 16) as u8,
                            (pod >> 8) as u8,
                            pod as u8,
                        ))],
                        hostname: None,
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                        target_ref: None,
                        node_name: None,
                    }
                })
                .collect();
            let slice = EndpointSlice {
                namespace: ns.clone(),
                name: format!("{name}-abcde"),
                service: Some(name.clone()),
                address_type: AddressType::V4,
                ports: vec![EndpointPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: Some(8080),
                }],
                endpoints: eps,
            };
            store.services.insert(svc.key(), Arc::new(svc));
            store.endpoint_slices.insert(slice.key(), Arc::new(slice));
        }
    }
    ClusterSnapshot::new(store, 1, 1, true)
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend(l.as_bytes());
    }
    q.push(0);
    q.extend(qtype.to_be_bytes());
    q.extend([0, 1]);
    q.extend([0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0]);
    q
}

fn benches(c: &mut Criterion) {
    let snap = cluster(100, 100, 5);
    let cfg = ViewConfig::default();
    let view = DnsView::build(&snap, &cfg).expect("view");

    let mut g = c.benchmark_group("answer");
    for (label, name, qtype) in [
        ("A hit", "svc5.ns42.svc.cluster.local", 1u16),
        ("A hit, mixed case", "SVC5.Ns42.svc.Cluster.Local", 1),
        ("AAAA nodata", "svc5.ns42.svc.cluster.local", 28),
        (
            "SRV headless with glue",
            "_http._tcp.svc9.ns42.svc.cluster.local",
            33,
        ),
        ("search-path NXDOMAIN", "svc5.ns42.ns7.svc.cluster.local", 1),
        ("PTR", "17.0.96.10.in-addr.arpa", 12),
        ("refused", "www.example.org", 1),
    ] {
        let q = query(name, qtype);
        let mut out = Vec::with_capacity(4096);
        g.bench_function(label, |b| {
            b.iter(|| black_box(handle(&view, black_box(&q), Transport::Udp, &mut out)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("view");
    g.sample_size(10);
    g.bench_function("build 10k services, 50k endpoints", |b| {
        b.iter(|| black_box(DnsView::build(&snap, &cfg).expect("view")))
    });
    // One endpoint of one service moves to another address.
    let mut store = snap.objects.clone();
    let key = store
        .endpoint_slices
        .keys()
        .nth(4321)
        .cloned()
        .expect("slice");
    let mut slice = (*store.endpoint_slices[&key]).clone();
    slice.endpoints[0].addresses = vec![IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1))];
    store.endpoint_slices.insert(key, Arc::new(slice));
    let moved = ClusterSnapshot::new(store.clone(), 2, 2, true);
    g.bench_function("update: one endpoint of one service changed", |b| {
        b.iter(|| black_box(view.update(&snap, &moved)))
    });
    // A new service with its endpoints.
    let mut grown = cluster(1, 1, 5).objects;
    let svc_key = grown.services.keys().next().cloned().expect("svc");
    let mut svc = (*grown.services[&svc_key]).clone();
    svc.namespace = "fresh".into();
    svc.cluster_ips = vec![IpAddr::V4(Ipv4Addr::new(10, 250, 1, 1))];
    store.services.insert(svc.key(), Arc::new(svc));
    for (_, s) in std::mem::take(&mut grown.endpoint_slices) {
        let mut s = (*s).clone();
        s.namespace = "fresh".into();
        store.endpoint_slices.insert(s.key(), Arc::new(s));
    }
    let added = ClusterSnapshot::new(store, 3, 3, true);
    g.bench_function("update: one service added", |b| {
        b.iter(|| black_box(view.update(&snap, &added)))
    });
    g.finish();
}

criterion_group!(answer, benches);
criterion_main!(answer);
