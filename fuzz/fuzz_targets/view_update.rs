//! The incremental view against the full build, driven by arbitrary bytes: each byte group is
//! one change to a small cluster (services of every kind, slices sharing addresses, namespaces,
//! pods), and after every change the updated view must hold exactly the records of a view built
//! from scratch. `tests/tests/view_diff.rs` runs the same check over seeded random sequences.
#![no_main]

use std::net::IpAddr;

use clusterdns::view::{DnsView, PodMode, ViewConfig};
use discovery::model::{
    AddressType, Endpoint, EndpointPort, EndpointSlice, IpFamily, Namespace, Object, ObjectKey,
    Pod, Protocol, Service, ServicePort, ServiceType,
};
use discovery::{ClusterSnapshot, ObjectStore};
use libfuzzer_sys::fuzz_target;

const NS: [&str; 3] = ["a", "b", "kube-system"];
const SVC: [&str; 3] = ["web", "db", "kube-dns"];

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
}

fn ip(b: u8) -> IpAddr {
    if b & 0x80 != 0 {
        IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(b & 3)])
    } else {
        IpAddr::from([10, 0, (b >> 3) & 1, b & 7])
    }
}

fn change(store: &mut ObjectStore, input: &mut Bytes<'_>) -> Option<()> {
    let op = input.byte()?;
    let a = input.byte()?;
    let b = input.byte()?;
    let ns = NS[usize::from(a) % NS.len()].to_string();
    let name = SVC[usize::from(a >> 2) % SVC.len()].to_string();
    match op % 8 {
        0 | 1 => {
            let mut svc = Service {
                namespace: ns,
                name,
                type_: ServiceType::ClusterIp,
                cluster_ips: vec![ip(b)],
                headless: false,
                ip_families: vec![IpFamily::V4],
                ports: vec![ServicePort {
                    name: ["", "http", "dns"][usize::from(b >> 4) % 3].into(),
                    protocol: [Protocol::Tcp, Protocol::Udp][usize::from(b >> 6) % 2],
                    port: u16::from(b % 5),
                    node_port: None,
                }],
                external_name: None,
                publish_not_ready_addresses: a & 0x40 != 0,
                traffic: None,
            };
            match op >> 3 & 3 {
                1 => {
                    svc.headless = true;
                    svc.cluster_ips.clear();
                }
                2 => {
                    svc.type_ = ServiceType::ExternalName;
                    svc.cluster_ips.clear();
                    svc.external_name = Some(match b % 4 {
                        0 => "example.com".into(),
                        1 => "10.1.2.3".into(),
                        _ => format!("{}.{}.svc.cluster.local", SVC[usize::from(b >> 2) % 3], NS[usize::from(b >> 4) % 3]),
                    });
                }
                _ => {}
            }
            store.insert(Object::Service(svc));
        }
        2 => {
            store.services.remove(&ObjectKey::new(ns, name));
        }
        3 | 4 => {
            let endpoints = (0..b % 4)
                .map(|i| Endpoint {
                    addresses: vec![ip(b.wrapping_add(i * 37))],
                    hostname: (op & 0x10 != 0 && i == 0).then(|| "host".to_string()),
                    ready: [None, Some(true), Some(false)].get(usize::from(op >> 5) % 3).copied().flatten(),
                    serving: None,
                    terminating: None,
                    target_ref: None,
                    node_name: None,
                })
                .collect();
            store.insert(Object::EndpointSlice(EndpointSlice {
                namespace: ns,
                name: format!("{name}-{}", a >> 6),
                service: Some(name),
                address_type: AddressType::V4,
                ports: vec![EndpointPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: Some(80),
                }],
                endpoints,
            }));
        }
        5 => {
            store
                .endpoint_slices
                .remove(&ObjectKey::new(ns, format!("{name}-{}", a >> 6)));
        }
        6 => {
            if !store.namespaces.remove(&ns) {
                store.insert(Object::Namespace(Namespace { name: ns, labels: Default::default() }));
            }
        }
        _ => {
            let key = ObjectKey::new(ns.clone(), format!("p{}", b % 4));
            if store.pods.remove(&key).is_none() {
                store.insert(Object::Pod(Pod {
                    namespace: ns,
                    name: key.name,
                    ips: vec![ip(b)],
                    policy: None,
                }));
            }
        }
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let cfg = ViewConfig {
        pods: [PodMode::Verified, PodMode::Insecure, PodMode::Disabled][usize::from(input.byte().unwrap_or(0)) % 3],
        ..ViewConfig::default()
    };
    let mut store = ObjectStore::default();
    let mut snap = ClusterSnapshot::new(store.clone(), 1, 1, true);
    let mut view = DnsView::build(&snap, &cfg).expect("view");
    for step in 0..64u64 {
        if change(&mut store, &mut input).is_none() {
            break;
        }
        let next = ClusterSnapshot::new(store.clone(), step + 2, step as u32 + 2, true);
        view = view.update(&snap, &next);
        snap = next;
        let full = DnsView::build(&snap, &cfg).expect("view");
        assert!(view.dump() == full.dump(), "step {step}: the updated view differs from a full build");
        assert_eq!(view.len(), full.len());
    }
});
