//! Full sync and one-service update on the real nft, in a network namespace of its own (root,
//! iproute2, nftables; otherwise it says SKIP): the planner's table for N services with 10 endpoints each, applied in
//! full, then one service changed and applied as a diff, against the naive way of applying the
//! whole table again. Prints rule and element counts.
//!
//! `cargo bench -p netd-proxy --bench sync [-- N...]` (default 1000 10000).

use std::time::{Duration, Instant};

use netd_nft::{Applier, Nft};
use netd_proxy::{Endpoint, Node, Protocol, ServicePort, plan};

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 10000]
    } else {
        sizes
    };
    if !netd_testnet::can_run(&[]) {
        return;
    }
    let ns = netd_testnet::Ns::new("proxybench");
    let node = Node {
        ips: vec!["192.0.2.1".parse().expect("ip")],
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
    };
    println!(
        "{:>8} {:>8} {:>8} {:>9} {:>12} {:>12} {:>14} {:>12} {:>14}",
        "services",
        "chains",
        "rules",
        "elements",
        "plan",
        "full sync",
        "update (diff)",
        "diff lines",
        "naive rewrite"
    );
    for n in sizes {
        let services = cluster(n);
        let started = Instant::now();
        let table = plan(&node, &services);
        let planned = started.elapsed();
        let counts = table.counts();
        let full = netd_nft::render(&table).expect("render");
        let full_time = apply(&ns.name, &full);
        // One service gains an endpoint: plan again, diff, apply.
        let mut changed = services.clone();
        changed[(n / 2) as usize]
            .endpoints
            .push(endpoint(250, 250, false));
        let started = Instant::now();
        let new_table = plan(&node, &changed);
        let script = netd_nft::diff(&table, &new_table).expect("diff");
        let computed = started.elapsed();
        let update_time = computed + apply(&ns.name, &script);
        // The naive way: the whole table again.
        let naive = netd_nft::render(&new_table).expect("render");
        let naive_time = apply(&ns.name, &naive);
        println!(
            "{:>8} {:>8} {:>8} {:>9} {:>12} {:>12} {:>14} {:>12} {:>14}",
            n,
            counts.chains,
            counts.rules,
            counts.elements,
            ms(planned),
            ms(full_time),
            ms(update_time),
            script.lines().count(),
            ms(naive_time)
        );
    }
}

fn endpoint(i: u32, j: u32, local: bool) -> Endpoint {
    Endpoint {
        ip: format!(
            "10.{}.{}.{}",
            100 + i / 65536 % 100,
            i / 256 % 256,
            (i % 256) ^ j
        )
        .parse()
        .expect("ip"),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        local,
    }
}

/// `n` ClusterIP services, 10 endpoints each (one on this node).
fn cluster(n: u32) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            namespace: format!("ns{}", i % 50),
            name: format!("svc{i}"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            cluster_ips: vec![
                format!("10.96.{}.{}", i / 256, i % 256)
                    .parse()
                    .expect("ip"),
            ],
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            source_ranges: None,
            endpoints: (0..10).map(|j| endpoint(i, j, j == 0)).collect(),
        })
        .collect()
}

fn apply(ns: &str, script: &str) -> Duration {
    let started = Instant::now();
    if let Err(err) = Nft::in_netns(ns).apply(script) {
        panic!("{err}");
    }
    started.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
