//! The planner's output for one scenario per behaviour, as golden `nft -f` scripts in
//! `tests/golden/` (`UPDATE_GOLDEN=1` rewrites them after a deliberate change). Each script is
//! also applied to the real nft in a network namespace of its own, so a golden file can never
//! hold a ruleset the kernel refuses.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use netd_nft::{Applier, Nft};
use netd_proxy::{Endpoint, Node, Protocol, ServicePort, plan};

fn node() -> Node {
    Node {
        ips: vec![
            "192.0.2.1".parse().expect("address"),
            "2001:db8::1".parse().expect("address"),
        ],
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("address"),
            "fd00:10:244::/56".parse().expect("address"),
        ],
    }
}

fn ep(ip: &str, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("address"),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        local,
    }
}

fn service(name: &str, cluster_ip: &str, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        namespace: "shop".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        node_port: None,
        cluster_ips: vec![cluster_ip.parse().expect("address")],
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        source_ranges: None,
        endpoints,
    }
}

fn scenarios() -> Vec<(&'static str, Vec<ServicePort>)> {
    let two = || vec![ep("10.244.1.10", true), ep("10.244.2.10", false)];
    let mut nodeport = service("nodeport", "10.96.0.11", two());
    nodeport.node_port = Some(30080);
    nodeport.external_ips = vec!["198.51.100.7".parse::<IpAddr>().expect("address")];
    nodeport.load_balancer_ips = vec!["203.0.113.9".parse::<IpAddr>().expect("address")];
    let mut local = nodeport.clone();
    local.name = "local".into();
    local.external_local = true;
    let mut local_none = local.clone();
    local_none.name = "local-none".into();
    local_none.endpoints = vec![ep("10.244.2.10", false)];
    let mut internal = service("internal", "10.96.0.12", two());
    internal.internal_local = true;
    let mut internal_none = service(
        "internal-none",
        "10.96.0.13",
        vec![ep("10.244.2.10", false)],
    );
    internal_none.internal_local = true;
    let mut affinity = service("sticky", "10.96.0.14", two());
    affinity.affinity_timeout = Some(10800);
    let mut terminating = service("draining", "10.96.0.15", vec![ep("10.244.1.10", true)]);
    terminating.endpoints[0].ready = false;
    terminating.endpoints[0].terminating = true;
    let mut dual = service(
        "dual",
        "10.96.0.16",
        vec![ep("10.244.1.10", true), ep("fd00:10:244:1::10", true)],
    );
    dual.cluster_ips
        .push("fd00:10:96::16".parse().expect("address"));
    let mut ranges = nodeport.clone();
    ranges.name = "ranges".into();
    ranges.source_ranges = Some(vec![
        "198.51.100.0/24".parse().expect("range"),
        // Holds the node's address: the load-balancer IP becomes an allowed source too.
        "192.0.2.0/24".parse().expect("range"),
    ]);
    let mut udp = service("dns", "10.96.0.10", two());
    udp.protocol = Protocol::Udp;
    udp.port = 53;
    udp.port_name = "dns".into();
    vec![
        ("cluster-ip", vec![service("web", "10.96.0.10", two())]),
        (
            "no-endpoints",
            vec![service("empty", "10.96.0.10", Vec::new())],
        ),
        ("nodeport-external-lb", vec![nodeport]),
        ("external-local", vec![local]),
        ("external-local-no-local-endpoint", vec![local_none]),
        ("internal-local", vec![internal, internal_none]),
        ("session-affinity", vec![affinity]),
        ("terminating-fallback", vec![terminating]),
        ("dual-stack", vec![dual]),
        ("udp", vec![udp]),
        ("source-ranges", vec![ranges]),
        // More endpoints than a cascade takes: an anonymous verdict map.
        (
            "many-endpoints",
            vec![service(
                "big",
                "10.96.0.17",
                (0..=netd_proxy::CASCADE_MAX)
                    .map(|i| ep(&format!("10.244.3.{}", i + 1), false))
                    .collect(),
            )],
        ),
    ]
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.nft"))
}

#[test]
fn every_scenario_renders_its_golden_script() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    for (name, services) in scenarios() {
        let script = netd_nft::render(&plan(&node(), &services)).expect("valid names");
        let path = golden(name);
        if update {
            std::fs::write(&path, &script).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(script, expected, "{name} differs from {}", path.display());
    }
}

fn can_run() -> bool {
    let root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    let tools = ["ip", "nft"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    let why = "needs root, ip and nft (apt-get install iproute2 nftables)";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}; CI must have them"
    );
    eprintln!("SKIP: {why}");
    false
}

/// A network namespace for one test, removed when dropped (also when the test fails).
struct Ns(String);

impl Ns {
    fn new(prefix: &str) -> Ns {
        let name = format!("{prefix}{}", std::process::id());
        let added = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(added.expect("ip").success(), "ip netns add {name}");
        Ns(name)
    }

    fn apply(&self, script: &str) -> Result<(), String> {
        Nft::in_netns(&self.0)
            .apply(script)
            .map_err(|e| e.to_string())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_kernel_accepts_every_plan_and_every_diff_between_them() {
    if !can_run() {
        return;
    }
    let ns = Ns::new("proxyplan");
    let mut applied: Option<netd_nft::Table> = None;
    for (name, services) in scenarios() {
        let table = plan(&node(), &services);
        let full = netd_nft::render(&table).expect("render");
        ns.apply(&full)
            .unwrap_or_else(|e| panic!("{name}: nft refused the full script:\n{e}"));
        // And the way there from the previous scenario, as one transaction.
        if let Some(before) = &applied {
            ns.apply(&netd_nft::render(before).expect("render"))
                .expect("back");
            let step = netd_nft::diff(before, &table).expect("diff");
            ns.apply(&step)
                .unwrap_or_else(|e| panic!("{name}: nft refused the diff:\n{step}\n{e}"));
        }
        applied = Some(table);
    }
}

#[test]
fn changing_one_service_rewrites_only_its_own_chains_and_elements() {
    let services: Vec<ServicePort> = (0..50)
        .map(|i| {
            service(
                &format!("svc{i}"),
                &format!("10.96.1.{i}"),
                vec![ep(&format!("10.244.1.{i}"), true)],
            )
        })
        .collect();
    let before = plan(&node(), &services);
    let mut changed = services.clone();
    changed[7].endpoints.push(ep("10.244.9.9", false));
    let after = plan(&node(), &changed);
    let script = netd_nft::diff(&before, &after).expect("diff");
    for line in script.lines() {
        assert!(
            line.contains("shop/svc7/"),
            "a change to svc7 touched something else: {line}"
        );
    }
    assert!(script.contains("numgen random mod 2"), "{script}");
    assert_eq!(netd_nft::diff(&after, &after).expect("diff"), "");
}

#[test]
fn changes_to_one_service_apply_as_diffs_on_the_kernel() {
    if !can_run() {
        return;
    }
    // One service through the changes a user makes to it, each applied as a diff.
    let base = || {
        let mut s = service(
            "web",
            "10.96.0.20",
            vec![ep("10.244.1.10", true), ep("10.244.2.10", false)],
        );
        s.node_port = Some(30090);
        s
    };
    let mut steps = vec![base()];
    let mut sticky = base();
    sticky.affinity_timeout = Some(10800);
    steps.push(sticky.clone());
    sticky.affinity_timeout = Some(3600);
    steps.push(sticky);
    let mut local = base();
    local.external_local = true;
    steps.push(local.clone());
    local.endpoints.retain(|e| !e.local);
    steps.push(local);
    let mut internal = base();
    internal.internal_local = true;
    internal.node_port = None;
    steps.push(internal);
    let mut empty = base();
    empty.endpoints.clear();
    steps.push(empty);
    steps.push(base());
    let ns = Ns::new("proxystep");
    let mut applied = plan(&node(), &steps[..1]);
    ns.apply(&netd_nft::render(&applied).expect("render"))
        .expect("first");
    for (i, step) in steps.iter().enumerate().skip(1) {
        let table = plan(&node(), std::slice::from_ref(step));
        let script = netd_nft::diff(&applied, &table).expect("diff");
        ns.apply(&script)
            .unwrap_or_else(|e| panic!("step {i}: nft refused:\n{script}\n{e}"));
        applied = table;
    }
}
