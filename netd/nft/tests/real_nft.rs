//! The scripts against the real nft, in a network namespace of their own: a full render, then
//! a chain of diffs, each checked against what `nft -j list table` says the kernel holds.

use std::process::Command;

use netd_nft::{Applier, Chain, Family, Hook, Nft, Set, Table, diff, render};

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

/// Chains with their rule counts, and sets with their element counts.
type Shape = (Vec<(String, usize)>, Vec<(String, usize)>);

/// A namespace for the test, removed on drop.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("nft{}-{n}", std::process::id());
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("ip")
                .success()
        );
        Ns(name)
    }

    fn apply(&self, script: &str) {
        if let Err(err) = Nft::in_netns(&self.0).apply(script) {
            panic!("{err}\n{script}");
        }
    }

    /// What the kernel holds: chain name to rule count, set name to elements (as nft prints them).
    fn state(&self, table: &Table) -> Shape {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "nft",
                "-j",
                "list",
                "table",
                table.family.as_str(),
                &table.name,
            ])
            .output()
            .expect("nft list");
        let listing: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        let mut chains = std::collections::BTreeMap::<String, usize>::new();
        let mut sets = std::collections::BTreeMap::<String, usize>::new();
        for item in listing["nftables"].as_array().expect("list") {
            if let Some(name) = item["chain"]["name"].as_str() {
                chains.entry(name.to_string()).or_default();
            }
            if let Some(name) = item["rule"]["chain"].as_str() {
                *chains.entry(name.to_string()).or_default() += 1;
            }
            for kind in ["set", "map"] {
                if let Some(name) = item[kind]["name"].as_str() {
                    sets.insert(
                        name.to_string(),
                        item[kind]["elem"].as_array().map_or(0, Vec::len),
                    );
                }
            }
        }
        (chains.into_iter().collect(), sets.into_iter().collect())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn expected(table: &Table) -> Shape {
    (
        table
            .chains
            .iter()
            .map(|(n, c)| (n.clone(), c.rules.len()))
            .collect(),
        table
            .sets
            .iter()
            .map(|(n, s)| (n.clone(), s.elements.len()))
            .collect(),
    )
}

/// A proxy-like table with `services` services, each a chain and a map element.
fn services(services: u32, port: u16) -> Table {
    let mut t = Table::new(Family::Inet, "netd-test");
    t.chains.insert(
        "prerouting".into(),
        Chain {
            hook: Some(Hook::new("nat", "prerouting", "dstnat", "accept")),
            rules: vec!["ip daddr . meta l4proto . th dport vmap @services".into()],
        },
    );
    let mut map = Set::map("ipv4_addr . inet_proto . inet_service", "verdict");
    for i in 0..services {
        let chain = format!("svc-{i}");
        t.chains.insert(
            chain.clone(),
            Chain {
                hook: None,
                rules: vec![format!(
                    "meta l4proto tcp dnat ip to 10.244.0.{}:{port}",
                    i % 250 + 1
                )],
            },
        );
        map.elements.insert(
            format!("10.96.0.{} . tcp . 80", i % 250 + 1),
            format!("goto {chain}"),
        );
    }
    t.sets.insert("services".into(), map);
    let mut pods = Set::of("ipv4_addr");
    pods.flags = vec!["interval".into()];
    pods.elements.insert("10.244.0.0/16".into(), String::new());
    t.sets.insert("pods".into(), pods);
    t
}

#[test]
fn renders_and_diffs_are_what_the_kernel_ends_up_holding() {
    if !can_run() {
        return;
    }
    let ns = Ns::new();
    let first = services(5, 8080);
    ns.apply(&render(&first).expect("render"));
    assert_eq!(ns.state(&first), expected(&first));
    // Fewer services, others changed, one new; then back; then the same again (empty diff).
    let steps = [
        services(3, 8080),
        services(4, 9090),
        services(6, 9090),
        services(6, 9090),
    ];
    let mut applied = first;
    for step in steps {
        let script = diff(&applied, &step).expect("diff");
        if applied == step {
            assert!(script.is_empty());
        }
        ns.apply(&script);
        assert_eq!(ns.state(&step), expected(&step), "after:\n{script}");
        applied = step;
    }
    // Something else changed the table behind our back: a full render repairs it.
    ns.apply("add chain inet netd-test stray\nflush chain inet netd-test svc-1\n");
    ns.apply(&render(&applied).expect("render"));
    assert_eq!(ns.state(&applied), expected(&applied));
}

#[test]
fn the_nft_applier_reports_what_nft_refused() {
    if !can_run() {
        return;
    }
    // Outside any namespace of ours, a script nft rejects at parse time changes nothing.
    let err = Nft::default()
        .apply("add rule inet no-such-table no-such-chain frobnicate\n")
        .unwrap_err();
    assert!(
        err.to_string().contains("nft refused the transaction"),
        "{err}"
    );
}

#[test]
fn an_interval_set_can_trade_elements_for_a_range_that_covers_them() {
    if !can_run() {
        return;
    }
    let ns = Ns::new();
    let table = |elements: &[&str]| {
        let mut t = Table::new(Family::Inet, "netd-test");
        let mut set = Set::of("ipv4_addr");
        set.flags = vec!["interval".into()];
        for e in elements {
            set.elements.insert(e.to_string(), String::new());
        }
        t.sets.insert("peers".into(), set);
        t
    };
    let before = table(&["10.0.0.1", "10.0.0.2", "10.0.1.0/24"]);
    ns.apply(&render(&before).expect("render"));
    // The new range overlaps the old elements: nft refuses the overlap unless they go first.
    let after = table(&["10.0.0.0/16"]);
    ns.apply(&diff(&before, &after).expect("diff"));
    assert_eq!(ns.state(&after), expected(&after));
}
