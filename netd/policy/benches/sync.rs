//! The policy table at scale, on the real nft in a network namespace of its own (root,
//! iproute2, nftables): N pods on this node in 50 namespaces and N NetworkPolicies (ingress
//! from namespace and pod selectors, ipBlocks, ports and ranges, some egress), plus 10
//! AdminNetworkPolicies and a baseline. Prints rule, set and element counts, the full sync,
//! and the update latency (plan, diff, apply) of one policy changed, one pod relabelled and
//! one namespace relabelled.
//!
//! `cargo bench -p netd-policy --bench sync [-- N...]` (default 1000).

use std::path::Path;
use std::time::{Duration, Instant};

use discovery::{ClusterSnapshot, Fields, ObjectStore};
use netd_nft::{Applier, Nft, Table};
use netd_policy::eval::World;
use netd_policy::plan::plan;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![1000] } else { sizes };
    if !netd_testnet::can_run(&[]) {
        return;
    }
    let ns = netd_testnet::Ns::new("policybench");
    println!(
        "{:>6} {:>9} {:>6} {:>6} {:>9} {:>9} {:>10} {:>15} {:>15} {:>17}",
        "pods",
        "policies",
        "rules",
        "sets",
        "elements",
        "plan",
        "full sync",
        "policy changed",
        "pod relabelled",
        "namespace relabel"
    );
    for n in sizes {
        let base = manifests(n, &Changes::default());
        let (table, plan_time) = planned(&base);
        let counts = table.counts();
        let full = apply(&ns.name, &netd_nft::render(&table).expect("render"));
        let mut updates = Vec::new();
        for change in [
            Changes {
                policy: true,
                ..Changes::default()
            },
            Changes {
                pod: true,
                ..Changes::default()
            },
            Changes {
                namespace: true,
                ..Changes::default()
            },
        ] {
            let started = Instant::now();
            let (next, _) = planned(&manifests(n, &change));
            let script = netd_nft::diff(&table, &next).expect("diff");
            let computed = started.elapsed();
            let took = computed + apply(&ns.name, &script);
            updates.push(format!("{} ({} lines)", ms(took), script.lines().count()));
            // Back to the base for the next change.
            apply(&ns.name, &netd_nft::diff(&next, &table).expect("diff"));
        }
        println!(
            "{:>6} {:>9} {:>6} {:>6} {:>9} {:>9} {:>10} {:>15} {:>15} {:>17}",
            n,
            n + 11,
            counts.rules,
            counts.sets,
            counts.elements,
            ms(plan_time),
            ms(full),
            updates[0],
            updates[1],
            updates[2]
        );
    }
}

#[derive(Default)]
struct Changes {
    /// Policy 0 gains a port.
    policy: bool,
    /// Pod 0 takes another app label.
    pod: bool,
    /// Namespace 1 joins another team.
    namespace: bool,
}

/// The cluster as manifests: 50 namespaces in 5 teams; `n` pods (10 apps) on node-1; `n`
/// NetworkPolicies; 10 AdminNetworkPolicies; the baseline.
fn manifests(n: usize, change: &Changes) -> String {
    let mut out = String::new();
    for i in 0..50 {
        let team = if change.namespace && i == 1 { 9 } else { i % 5 };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{i}, labels: {{team: t{team}}}}}\n"
        ));
    }
    for i in 0..n {
        let app = if change.pod && i == 0 { 7 } else { i % 10 };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, labels: {{app: a{app}}}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c, ports: [{{name: http, containerPort: 80}}]}}]}}\n\
             status: {{podIP: 10.{}.{}.{}}}\n",
            i % 50,
            128 + i / 65536,
            i / 256 % 256,
            i % 256
        ));
    }
    for i in 0..n {
        let extra = if change.policy && i == 0 {
            ", {port: 9443}"
        } else {
            ""
        };
        let egress = if i % 4 == 0 {
            format!(
                "  egress: [{{to: [{{ipBlock: {{cidr: 172.{}.0.0/16, except: [172.{}.1.0/24]}}}}], ports: [{{port: 443}}]}}]\n",
                16 + i % 16,
                16 + i % 16
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: ns{}}}\nspec:\n  podSelector: {{matchLabels: {{app: a{}}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: a{}}}}}}}, {{ipBlock: {{cidr: 192.168.{}.0/24}}}}]\n    ports: [{{port: http}}, {{port: 8000, endPort: 8090}}{extra}]\n{egress}",
            i % 50,
            i % 10,
            i % 5,
            (i + 1) % 10,
            i % 256
        ));
    }
    for i in 0..10 {
        out.push_str(&format!(
            "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: anp{i}}}\nspec:\n  priority: {i}\n  subject: {{namespaces: {{matchLabels: {{team: t{}}}}}}}\n  ingress: [{{action: Pass, from: [{{namespaces: {{matchLabels: {{team: t{}}}}}}}]}}]\n  egress: [{{action: Deny, to: [{{networks: [203.0.{i}.0/24]}}]}}]\n",
            i % 5,
            (i + 2) % 5
        ));
    }
    out.push_str(
        "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n",
    );
    out
}

fn planned(text: &str) -> (Table, Duration) {
    let parsed =
        discovery::manifests::parse_manifest_with(Path::new("bench.yaml"), text, Fields::POLICY);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors.first());
    let mut store = ObjectStore::default();
    for o in parsed.objects {
        store.insert(o);
    }
    let snap = ClusterSnapshot::new(store, 1, 1, true);
    let started = Instant::now();
    let table = plan(&World::new(&snap), "node-1");
    (table, started.elapsed())
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
